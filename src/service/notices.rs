//! Who is told of a stay's events, inside the write's transaction: for each event
//! declared, the patient's GPs and care-circle members that an Endpoint reaches
//! each get their standing NdE Subscription (written again, a no-op when
//! unchanged) and a notification request based on it, which that Subscription
//! delivers through the outbox; for each declaration written, the NdE subscribers
//! whose criteria select it get a notification request based on theirs. The
//! standing Subscriptions also follow the patient's `generalPractitioner`: made
//! for a GP added (when reachable), put `off` for a GP removed. What to write is
//! decided by `coordination`; this reads what it needs.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use serde_json::{json, Value};

use super::write::Failed;
use super::{populations, Change, Rules};
use crate::coordination::recipients::{self, Recipient};
use crate::coordination::{acknowledgement, appointment, careplan, circle, nde, referral};
use crate::error::{FhirError, FhirResult, Issue};
use crate::search::{self, Handling};
use crate::store;

/// An event declared by a write: the change it came from, the stay, and the
/// declaration.
pub(super) struct Declared {
    pub position: usize,
    pub encounter: Value,
    pub declaration: Value,
}

/// The GPs a write of `Patient/{patient_id}` added and removed.
pub(super) struct GpChange {
    pub position: usize,
    pub patient_id: String,
    /// The new version (none for a delete).
    pub patient: Option<Value>,
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// A stay written: its CareTeam follows it.
pub(super) struct StayWritten {
    pub position: usize,
    pub encounter_id: String,
    pub encounter: Value,
}

/// A write that claims to acknowledge a notification request.
pub(super) struct Ack {
    pub position: usize,
    /// `Task/…` or `Communication/…`.
    pub by: String,
    pub claim: acknowledgement::Claim,
}

/// A DocumentReference filed about a stay: a DOC event if the stay is over.
pub(super) struct Documented {
    pub position: usize,
    pub document_id: String,
    pub document: Value,
    pub encounter_id: String,
}

/// An event declaration written (derived here, or an emitter's): the NdE
/// subscribers that select it get a notification request.
pub(super) struct Published {
    pub position: usize,
    pub declaration_id: String,
    pub declaration: Value,
}

/// A referral's request or fulfilment Task written.
pub(super) enum Referral {
    /// The ServiceRequest (none once deleted): its requester's Subscription follows.
    Request {
        position: usize,
        request_id: String,
        request: Option<Value>,
    },
    /// Its Task: the request's status follows.
    Task {
        position: usize,
        request_id: String,
        task: Value,
    },
}

/// A CareTeam whose members changed: the members of the plans it follows change
/// with it.
pub(super) struct TeamChange {
    pub position: usize,
    pub team_id: String,
    pub joined: Vec<String>,
    pub left: Vec<String>,
}

/// A population's follow-up written: its members' plans follow.
pub(super) enum Population {
    /// A CarePlan about a Group.
    Plan {
        position: usize,
        plan_id: String,
        plan: Value,
    },
    /// A Group whose members changed: its open population plans follow.
    Group { position: usize, group_id: String },
}

/// What the coordination rules found in one round of changes.
#[derive(Default)]
pub(super) struct Coordinated {
    pub declared: Vec<Declared>,
    pub referrals: Vec<Referral>,
    /// Stays admitted on ServiceRequests (`Encounter.basedOn`): their Tasks complete.
    pub admitted_on: Vec<(usize, String)>,
    /// Answers filed to ServiceRequests (request id, `Communication/…` or
    /// `DiagnosticReport/…`): their Tasks complete.
    pub answers: Vec<(usize, String, String)>,
    /// CarePlans written: the members of their care teams follow them.
    pub plans: Vec<(usize, String, Value)>,
    pub teams: Vec<TeamChange>,
    pub populations: Vec<Population>,
    /// The slots Appointments take and free.
    pub bookings: Vec<(usize, appointment::Booking)>,
    /// The patients of the Appointments booked or cancelled: their care circle
    /// follows their appointments.
    pub appointments_of: Vec<(usize, String)>,
    pub published: Vec<Published>,
    pub documents: Vec<Documented>,
    pub gps: Vec<GpChange>,
    pub stays: Vec<StayWritten>,
    pub acks: Vec<Ack>,
}

impl Coordinated {
    pub fn is_empty(&self) -> bool {
        self.declared.is_empty()
            && self.referrals.is_empty()
            && self.admitted_on.is_empty()
            && self.answers.is_empty()
            && self.bookings.is_empty()
            && self.appointments_of.is_empty()
            && self.plans.is_empty()
            && self.teams.is_empty()
            && self.populations.is_empty()
            && self.published.is_empty()
            && self.documents.is_empty()
            && self.gps.is_empty()
            && self.stays.is_empty()
            && self.acks.is_empty()
    }
}

/// The current resources a round's coordination reads, fetched together.
#[derive(Default)]
struct Known(HashMap<(String, String), Value>);

impl Known {
    /// Reads those of `keys` not known yet, in one query.
    async fn fetch(&mut self, tx: &Transaction<'_>, keys: &[(String, String)]) -> FhirResult<()> {
        let missing: Vec<(&str, &str)> = keys
            .iter()
            .filter(|k| !self.0.contains_key(*k))
            .map(|(t, id)| (t.as_str(), id.as_str()))
            .collect();
        for found in current_all(tx, &missing).await? {
            self.learn(found);
        }
        Ok(())
    }

    fn learn(&mut self, resource: Value) {
        if let (Some(t), Some(id)) = (resource["resourceType"].as_str(), resource["id"].as_str()) {
            let key = (t.to_owned(), id.to_owned());
            self.0.insert(key, resource);
        }
    }

    fn get(&self, res_type: &str, id: &str) -> Option<&Value> {
        self.0.get(&(res_type.to_owned(), id.to_owned()))
    }
}

fn key(res_type: &str, id: &str) -> (String, String) {
    (res_type.to_owned(), id.to_owned())
}

/// The patient of a stay (`Encounter.subject`), by id.
fn patient_of(encounter: &Value) -> Option<&str> {
    encounter["subject"]["reference"]
        .as_str()
        .and_then(|r| r.strip_prefix("Patient/"))
}

/// What the round's coordination reads, known before anything is decided.
fn wanted(found: &Coordinated) -> Vec<(String, String)> {
    let mut keys = Vec::new();
    keys.extend(
        found
            .documents
            .iter()
            .map(|d| key("Encounter", &d.encounter_id)),
    );
    keys.extend(
        found
            .acks
            .iter()
            .filter(|a| !a.claim.request_id.is_empty())
            .map(|a| key("CommunicationRequest", &a.claim.request_id)),
    );
    for gp in &found.gps {
        keys.push(key("CareTeam", &circle::circle_id(&gp.patient_id)));
        keys.extend(gp.removed.iter().map(|removed| {
            key(
                "Subscription",
                &recipients::standing_subscription_id(&gp.patient_id, removed),
            )
        }));
    }
    keys.extend(
        found
            .stays
            .iter()
            .map(|s| key("CareTeam", &circle::stay_team_id(&s.encounter_id))),
    );
    for (_, patient_id) in &found.appointments_of {
        keys.push(key("Patient", patient_id));
        keys.push(key("CareTeam", &circle::circle_id(patient_id)));
    }
    for (_, _, plan) in &found.plans {
        keys.extend(
            careplan::care_teams(plan)
                .into_iter()
                .map(|team| key("CareTeam", team)),
        );
    }
    for written in &found.referrals {
        keys.push(match written {
            Referral::Task { request_id, .. } => key("ServiceRequest", request_id),
            Referral::Request { request_id, .. } => key(
                "Subscription",
                &referral::requester_subscription_id(request_id),
            ),
        });
    }
    for patient_id in found
        .declared
        .iter()
        .filter_map(|d| patient_of(&d.encounter))
    {
        keys.push(key("Patient", patient_id));
        keys.push(key("CareTeam", &circle::circle_id(patient_id)));
    }
    keys
}

/// The documents this transaction filed about the stays it discharges, in an
/// earlier flush than the discharge (a transaction writes POSTs before PUTs, and
/// a conditional entry flushes what came before it): filed "with the discharge",
/// they are DOC events too. Those of this round (`documents`) are already known.
async fn letters_before_discharge(
    tx: &Transaction<'_>,
    declared: &[Declared],
) -> FhirResult<Vec<Documented>> {
    let mut found = Vec::new();
    for event in declared {
        if nde::EventType::of_request(&event.declaration) != Some(nde::EventType::Discharge) {
            continue;
        }
        let Some(encounter_id) = event.declaration["encounter"]["reference"]
            .as_str()
            .and_then(|r| r.strip_prefix("Encounter/"))
        else {
            continue;
        };
        let filed = store::created_here_referring(
            tx,
            "DocumentReference",
            "encounter",
            "Encounter",
            encounter_id,
        )
        .await?;
        for version in filed {
            let Some(document) = version
                .json
                .as_deref()
                .and_then(|j| serde_json::from_str::<Value>(j).ok())
            else {
                continue;
            };
            if document["status"] != "entered-in-error" {
                found.push(Documented {
                    position: event.position,
                    document_id: version.res_id,
                    document,
                    encounter_id: encounter_id.to_owned(),
                });
            }
        }
    }
    Ok(found)
}

/// The DOC events of documents filed about stays that are finished (in this
/// round's writes too).
fn documents_declared(
    known: &Known,
    rules: &Rules,
    now: DateTime<Utc>,
    documents: Vec<Documented>,
) -> Vec<Declared> {
    let mut declared = Vec::new();
    for doc in documents {
        let Some(encounter) = known.get("Encounter", &doc.encounter_id) else {
            continue;
        };
        let over = crate::coordination::stay::Status::of(encounter)
            == Some(crate::coordination::stay::Status::Finished);
        if !over || !rules.stays.is_stay(encounter) {
            continue;
        }
        if let Some(declaration) = nde::document_declaration(
            &doc.document_id,
            &doc.document,
            &doc.encounter_id,
            encounter,
            now,
        ) {
            declared.push(Declared {
                position: doc.position,
                encounter: encounter.clone(),
                declaration,
            });
        }
    }
    declared
}

/// How to reach each of `references` that an Endpoint the policy allows reaches
/// (one query for them all), by reference.
pub(super) async fn reachable(
    tx: &Transaction<'_>,
    rules: &Rules,
    references: &[String],
) -> FhirResult<HashMap<String, Recipient>> {
    let wanted: Vec<&str> = references.iter().map(String::as_str).collect();
    let held = store::endpoints_of(tx, &wanted).await?;
    let mut found = HashMap::new();
    for (n, reference) in references.iter().enumerate() {
        // The first Endpoint, in the holders' order, that takes callbacks.
        let Some(address) = held
            .iter()
            .filter(|(of, active, _)| *of == n && *active != false)
            .find_map(|(_, _, endpoint)| recipients::callback_address(endpoint))
        else {
            continue;
        };
        // An Endpoint refused by the policy is refused when written; one written
        // before the policy changed is skipped, not fatal to the write.
        let refusal = match address.starts_with("mailto:") {
            true => rules.endpoints.mail_refusal(address),
            false => rules.endpoints.refusal(address),
        };
        if let Some(reason) = refusal {
            tracing::warn!(%reference, %address, %reason, "endpoint not usable");
            continue;
        }
        found.insert(
            reference.clone(),
            Recipient {
                reference: Some(reference.clone()),
                address: address.to_owned(),
            },
        );
    }
    Ok(found)
}

fn standing_change(patient_id: &str, recipient: &Recipient, sub_id: &str) -> Change {
    let subscription = recipients::standing_subscription(patient_id, recipient, sub_id);
    Change::update("Subscription", sub_id.to_owned(), subscription, None)
}

/// The current resources of `res_type` that match `criteria`, at most `max`.
pub(super) async fn found_by(
    tx: &Transaction<'_>,
    rules: &Rules,
    res_type: &str,
    criteria: &[(&str, String)],
    max: usize,
) -> FhirResult<Vec<Value>> {
    let params = rules.catalog.params.current();
    let criteria: Vec<(String, String)> = criteria
        .iter()
        .map(|(name, value)| ((*name).to_owned(), value.clone()))
        .collect();
    let plan = search::parse(&params, res_type, &criteria, Handling::Strict)?;
    let ids = store::matching_ids(tx, &plan, max).await?;
    let keys: Vec<(&str, &str)> = ids.iter().map(|id| (res_type, id.as_str())).collect();
    current_all(tx, &keys).await
}

/// The current JSON of the resources `keys` (type, id) that exist, in one query.
pub(super) async fn current_all(
    tx: &Transaction<'_>,
    keys: &[(&str, &str)],
) -> FhirResult<Vec<Value>> {
    Ok(store::read_current(tx, keys)
        .await?
        .iter()
        .filter_map(|v| serde_json::from_str(v.json.as_deref()?).ok())
        .collect())
}

/// What one round's coordination brings with it: acknowledged requests
/// completed (their timers stopped), standing Subscriptions made or ended, the
/// event declarations, and notification requests (their timers started), each
/// with the position of the change it comes from. A standing Subscription is
/// changed at most once. What it reads is read together: the resources it needs
/// (with the documents filed earlier in the transaction, pipelined), then the
/// endpoints of every recipient.
pub(super) async fn notices(
    tx: &Transaction<'_>,
    rules: &Rules,
    now: DateTime<Utc>,
    mut found: Coordinated,
) -> Result<Vec<(usize, Change)>, Failed> {
    let whole = |error| Failed {
        position: None,
        error,
    };
    let mut changes = slots(tx, &found.bookings).await?;
    let mut known = Known::default();
    for event in &found.declared {
        known.learn(event.encounter.clone());
    }
    let keys = wanted(&found);
    let (letters, (), team_plans) = tokio::try_join!(
        letters_before_discharge(tx, &found.declared),
        known.fetch(tx, &keys),
        populations::plans_of_teams(tx, rules, &found.teams),
    )
    .map_err(whole)?;
    let mut documents = std::mem::take(&mut found.documents);
    for letter in letters {
        if !documents
            .iter()
            .any(|d| d.document_id == letter.document_id)
        {
            documents.push(letter);
        }
    }
    let mut declared = std::mem::take(&mut found.declared);
    declared.extend(documents_declared(&known, rules, now, documents));
    // The patients of documents filed after their stay, and the Subscriptions of
    // those who left the care team of a plan, not read yet.
    let mut more: Vec<(String, String)> = declared
        .iter()
        .filter_map(|d| patient_of(&d.encounter))
        .flat_map(|p| [key("Patient", p), key("CareTeam", &circle::circle_id(p))])
        .collect();
    for (n, plan_id, _) in &team_plans {
        more.extend(found.teams[*n].left.iter().map(|member| {
            key(
                "Subscription",
                &careplan::follower_subscription_id(plan_id, member),
            )
        }));
    }
    known.fetch(tx, &more).await.map_err(whole)?;
    changes.extend(
        populations::member_plans(tx, rules, now, &found.populations)
            .await
            .map_err(whole)?,
    );

    changes.extend(acknowledgements(tx, &known, now, &found.acks).await?);
    changes.extend(care_teams(&known, now, &found));
    changes.extend(completed_tasks(tx, rules, &found).await.map_err(whole)?);
    let audience = audience(&known, now, &declared);
    let mut wanted_endpoints: Vec<String> =
        found.gps.iter().flat_map(|g| g.added.clone()).collect();
    wanted_endpoints.extend(audience.iter().flat_map(|(_, members)| members.clone()));
    let followers = plan_followers(&known, now, &found.plans);
    for (_, patient_id) in &found.appointments_of {
        wanted_endpoints.extend(circle_of(&known, now, patient_id).unwrap_or_default());
    }
    wanted_endpoints.extend(followers.iter().flat_map(|(_, members)| members.clone()));
    wanted_endpoints.extend(
        team_plans
            .iter()
            .flat_map(|(n, _, _)| found.teams[*n].joined.clone()),
    );
    wanted_endpoints.extend(found.referrals.iter().filter_map(|r| {
        match r {
            Referral::Request {
                request: Some(request),
                ..
            } => request["requester"]["reference"]
                .as_str()
                .map(str::to_owned),
            _ => None,
        }
    }));
    wanted_endpoints.sort();
    wanted_endpoints.dedup();
    let reached = reachable(tx, rules, &wanted_endpoints)
        .await
        .map_err(whole)?;
    changes.extend(referrals(&known, &reached, now, &found.referrals));
    changes.extend(plan_subscriptions(&reached, now, &found.plans, &followers));
    changes.extend(team_followers(&known, &reached, &found.teams, &team_plans));
    changes.extend(appointment_followers(
        &known,
        &reached,
        now,
        &found.appointments_of,
    ));
    let standing = standing_subscriptions(&known, &reached, &found.gps);
    let mut written: HashSet<String> = standing.iter().map(|(_, c)| c.res_id.clone()).collect();
    changes.extend(standing);
    let mut requests = requests(&known, &reached, &declared, &audience, &mut written);
    requests.extend(
        subscriber_requests(tx, rules, &found.published)
            .await
            .map_err(whole)?,
    );
    // A deployer's `999999999h` is a century: never due, and still a date the
    // database stores.
    let century = std::time::Duration::from_secs(100 * 365 * 86_400);
    let due = chrono::Duration::from_std(rules.acks.escalate_after.min(century))
        .map_or(now, |after| now + after);
    let timers: Vec<(String, DateTime<Utc>)> = requests
        .iter()
        .filter(|(_, c)| c.res_type == "CommunicationRequest")
        .map(|(_, c)| (c.res_id.clone(), due))
        .collect();
    crate::store::acknowledgements::schedule(tx, &timers)
        .await
        .map_err(whole)?;
    changes.extend(requests);
    changes.extend(declared.into_iter().map(|d| {
        (
            d.position,
            Change::create("CommunicationRequest", d.declaration),
        )
    }));
    // A plan and its care team written together may both make a follower's
    // Subscription.
    Ok(last_of_each(changes))
}

/// The care circles of the patients whose GPs changed, and the CareTeams of the
/// stays written, where they change.
fn care_teams(known: &Known, now: DateTime<Utc>, found: &Coordinated) -> Vec<(usize, Change)> {
    let update =
        |position, res_id, team| (position, Change::update("CareTeam", res_id, team, None));
    let mut changes = Vec::new();
    for gp in &found.gps {
        let id = circle::circle_id(&gp.patient_id);
        let gps = gp
            .patient
            .as_ref()
            .map(recipients::general_practitioners)
            .unwrap_or_default();
        if let Some(circle) = circle::care_circle(
            &gp.patient_id,
            gp.patient.as_ref(),
            known.get("CareTeam", &id),
            &gps,
            now,
        ) {
            changes.push(update(gp.position, id, circle));
        }
    }
    for stay in &found.stays {
        let id = circle::stay_team_id(&stay.encounter_id);
        let previous = known.get("CareTeam", &id);
        if let Some(team) = circle::stay_team(&stay.encounter_id, &stay.encounter, previous, now) {
            changes.push(update(stay.position, id, team));
        }
    }
    changes
}

/// How long a referral's requester, or a plan's care team, still hears of it
/// once it is over (a correction to `entered-in-error`).
const FOLLOW_UP_AFTER_CLOSE: chrono::Duration = chrono::Duration::days(1);

/// A kept Subscription once what it follows is over: it ends a day later (not
/// `off` at once: the change that closed it is matched at the end of the same
/// transaction, and must still be sent).
fn ending(mut subscription: Value, now: DateTime<Utc>) -> Value {
    subscription["end"] = json!(crate::fhir::datetime::format_instant(
        now + FOLLOW_UP_AFTER_CLOSE
    ));
    subscription
}

/// What referrals written bring with them: the request's status following its
/// Task (completed, revoked), and the Subscription through which the requester
/// (when `reached`) hears of every change of the Task, kept while the request is
/// active, [`ending`] once it is over.
fn referrals(
    known: &Known,
    reached: &HashMap<String, Recipient>,
    now: DateTime<Utc>,
    written: &[Referral],
) -> Vec<(usize, Change)> {
    let mut changes = Vec::new();
    for written in written {
        match written {
            Referral::Task {
                position,
                request_id,
                task,
            } => {
                let followed = known
                    .get("ServiceRequest", request_id)
                    .and_then(|request| referral::followed_request(request, task));
                if let Some(request) = followed {
                    changes.push((
                        *position,
                        Change::update("ServiceRequest", request_id.clone(), request, None),
                    ));
                }
            }
            Referral::Request {
                position,
                request_id,
                request,
            } => {
                let sub_id = referral::requester_subscription_id(request_id);
                let requester = request
                    .as_ref()
                    .filter(|r| r["status"] == "active")
                    .and_then(|r| r["requester"]["reference"].as_str())
                    .and_then(|r| reached.get(r));
                match (requester, known.get("Subscription", &sub_id)) {
                    (Some(recipient), _) => changes.push((
                        *position,
                        Change::update(
                            "Subscription",
                            sub_id,
                            recipients::referral_subscription(request_id, recipient),
                            None,
                        ),
                    )),
                    (None, Some(kept)) if kept["status"] != "off" && kept["end"].is_null() => {
                        let ended = ending(kept.clone(), now);
                        changes.push((
                            *position,
                            Change::update("Subscription", sub_id, ended, None),
                        ));
                    }
                    (None, _) => {}
                }
            }
        }
    }
    changes
}

/// The current members of the care teams of each plan written (by its index).
fn plan_followers(
    known: &Known,
    now: DateTime<Utc>,
    plans: &[(usize, String, Value)],
) -> Vec<(usize, Vec<String>)> {
    plans
        .iter()
        .enumerate()
        .map(|(n, (_, _, plan))| {
            let mut members: Vec<String> = careplan::care_teams(plan)
                .into_iter()
                .filter_map(|team| known.get("CareTeam", team))
                .flat_map(|team| circle::current_members(team, now))
                .collect();
            members.sort();
            members.dedup();
            (n, members)
        })
        .collect()
}

/// The Subscriptions through which the reachable members of a plan's care teams
/// hear of each of its changes: kept while the plan is open, [`ending`] once it
/// closes.
fn plan_subscriptions(
    reached: &HashMap<String, Recipient>,
    now: DateTime<Utc>,
    plans: &[(usize, String, Value)],
    followers: &[(usize, Vec<String>)],
) -> Vec<(usize, Change)> {
    let mut changes = Vec::new();
    for (n, members) in followers {
        let (position, plan_id, plan) = &plans[*n];
        for member in members {
            let Some(recipient) = reached.get(member) else {
                continue;
            };
            let mut sub = careplan::follower_subscription(plan_id, recipient);
            if !careplan::is_open(plan) {
                sub = ending(sub, now);
            }
            let id = careplan::follower_subscription_id(plan_id, member);
            changes.push((*position, Change::update("Subscription", id, sub, None)));
        }
    }
    changes
}

/// When the care team of open plans changes: those who joined and an Endpoint
/// reaches follow the plans; the Subscriptions of those who left are put `off`
/// (they no longer care for the patient: not even the change is sent to them).
fn team_followers(
    known: &Known,
    reached: &HashMap<String, Recipient>,
    teams: &[TeamChange],
    team_plans: &[(usize, String, Value)],
) -> Vec<(usize, Change)> {
    let mut changes = Vec::new();
    for (n, plan_id, _) in team_plans {
        let team = &teams[*n];
        for member in &team.joined {
            if let Some(recipient) = reached.get(member) {
                let id = careplan::follower_subscription_id(plan_id, member);
                let sub = careplan::follower_subscription(plan_id, recipient);
                changes.push((team.position, Change::update("Subscription", id, sub, None)));
            }
        }
        for member in &team.left {
            let id = careplan::follower_subscription_id(plan_id, member);
            if let Some(kept) = known
                .get("Subscription", &id)
                .filter(|s| s["status"] != "off")
            {
                let mut off = kept.clone();
                off["status"] = json!("off");
                changes.push((team.position, Change::update("Subscription", id, off, None)));
            }
        }
    }
    changes
}

/// The Slots the `bookings` take (busy) and free, locked before they are read so
/// that of two bookings racing for one slot the second sees it busy: 409.
async fn slots(
    tx: &Transaction<'_>,
    bookings: &[(usize, appointment::Booking)],
) -> Result<Vec<(usize, Change)>, Failed> {
    let mut changes = Vec::new();
    if bookings.is_empty() {
        return Ok(changes);
    }
    let whole = |error| Failed {
        position: None,
        error,
    };
    let mut ids: Vec<&str> = bookings
        .iter()
        .flat_map(|(_, b)| b.taken.iter().chain(&b.freed).map(String::as_str))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let keys: Vec<store::LockKey<'_>> = ids
        .iter()
        .map(|id| store::LockKey {
            res_type: "Slot",
            res_id: id,
            claim: false,
        })
        .collect();
    store::lock_all(tx, &keys).await.map_err(whole)?;
    let read: Vec<(&str, &str)> = ids.iter().map(|id| ("Slot", *id)).collect();
    let mut known: HashMap<String, Value> = current_all(tx, &read)
        .await
        .map_err(whole)?
        .into_iter()
        .filter_map(|s| Some((s["id"].as_str()?.to_owned(), s)))
        .collect();
    for (position, booking) in bookings {
        let at = |error| Failed {
            position: Some(*position),
            error,
        };
        for id in &booking.freed {
            if let Some(free) = known.get(id).and_then(appointment::free) {
                known.insert(id.clone(), free.clone());
                changes.push((*position, Change::update("Slot", id.clone(), free, None)));
            }
        }
        for id in &booking.taken {
            let Some(slot) = known.get(id) else {
                return Err(at(FhirError::Unprocessable(vec![Issue::new(
                    "not-found",
                    format!("the appointment's Slot/{id} does not exist"),
                )
                .at("Appointment.slot")])));
            };
            let busy = appointment::take(slot).map_err(|why| {
                at(FhirError::Conflict(format!(
                    "slot-taken: Slot/{id} cannot be booked: {why}"
                )))
            })?;
            known.insert(id.clone(), busy.clone());
            changes.push((*position, Change::update("Slot", id.clone(), busy, None)));
        }
    }
    // One change per slot: the last state (freed then taken again in one write).
    Ok(last_of_each(changes))
}

/// One change per resource, the last one (a round writes each resource once).
fn last_of_each(changes: Vec<(usize, Change)>) -> Vec<(usize, Change)> {
    let mut last: HashMap<(String, String), usize> = HashMap::new();
    for (n, (_, change)) in changes.iter().enumerate() {
        last.insert((change.res_type.clone(), change.res_id.clone()), n);
    }
    changes
        .into_iter()
        .enumerate()
        .filter(|(n, (_, c))| last.get(&(c.res_type.clone(), c.res_id.clone())) == Some(n))
        .map(|(_, c)| c)
        .collect()
}

/// Tasks of one referral looked at when its stay is admitted.
const MAX_REFERRAL_TASKS: usize = 20;

/// The fulfilment Tasks that stays admitted on ServiceRequests, and answers to
/// them, complete.
async fn completed_tasks(
    tx: &Transaction<'_>,
    rules: &Rules,
    found: &Coordinated,
) -> FhirResult<Vec<(usize, Change)>> {
    let mut changes = Vec::new();
    let by_admission = found.admitted_on.iter().map(|(p, r)| (*p, r, None));
    let by_answer = found
        .answers
        .iter()
        .map(|(p, r, answer)| (*p, r, Some(answer.as_str())));
    for (position, request_id, answer) in by_admission.chain(by_answer) {
        let criteria = [("based-on", format!("ServiceRequest/{request_id}"))];
        for task in found_by(tx, rules, "Task", &criteria, MAX_REFERRAL_TASKS).await? {
            let done = match answer {
                Some(answer) => referral::answered_task(&task, answer),
                None => referral::completed_by_admission(&task),
            };
            if let (Some(id), Some(done)) = (task["id"].as_str(), done) {
                changes.push((position, Change::update("Task", id.to_owned(), done, None)));
            }
        }
    }
    Ok(changes)
}

/// The notification requests acknowledged by `acks`, completed; an explicit
/// acknowledgement of something that is not a notification request is refused.
async fn acknowledgements(
    tx: &Transaction<'_>,
    known: &Known,
    now: DateTime<Utc>,
    acks: &[Ack],
) -> Result<Vec<(usize, Change)>, Failed> {
    let mut changes = Vec::new();
    let mut completed = HashSet::new();
    for ack in acks {
        let at = |error| Failed {
            position: Some(ack.position),
            error,
        };
        let request = known
            .get("CommunicationRequest", &ack.claim.request_id)
            .filter(|r| acknowledgement::is_notification_request(r));
        let Some(request) = request else {
            if ack.claim.explicit {
                return Err(at(FhirError::Unprocessable(vec![Issue::new(
                    "business-rule",
                    format!(
                        "an acknowledgement's focus must be a notification request the server sent; CommunicationRequest/{} is not one",
                        ack.claim.request_id
                    ),
                )
                .at("Task.focus")])));
            }
            continue;
        };
        if !completed.insert(ack.claim.request_id.clone()) {
            continue;
        }
        if let Some(done) = acknowledgement::acknowledged(request.clone(), &ack.by, now) {
            crate::store::acknowledgements::acknowledged(tx, &ack.claim.request_id)
                .await
                .map_err(at)?;
            let id = ack.claim.request_id.clone();
            changes.push((
                ack.position,
                Change::update("CommunicationRequest", id, done, None),
            ));
        }
    }
    Ok(changes)
}

/// The standing Subscriptions the GP changes `gps` make (for those `reached`) or
/// end.
fn standing_subscriptions(
    known: &Known,
    reached: &HashMap<String, Recipient>,
    gps: &[GpChange],
) -> Vec<(usize, Change)> {
    let mut changes = Vec::new();
    let mut standing = HashSet::new();
    for change in gps {
        for gp in &change.removed {
            let sub_id = recipients::standing_subscription_id(&change.patient_id, gp);
            if !standing.insert(sub_id.clone()) {
                continue;
            }
            let Some(sub) = known.get("Subscription", &sub_id) else {
                continue;
            };
            if sub["status"] != "off" {
                let mut off = sub.clone();
                off["status"] = json!("off");
                changes.push((
                    change.position,
                    Change::update("Subscription", sub_id, off, None),
                ));
            }
        }
        for gp in &change.added {
            let Some(recipient) = reached.get(gp) else {
                continue;
            };
            let sub_id = recipients::standing_subscription_id(&change.patient_id, gp);
            if standing.insert(sub_id.clone()) {
                changes.push((
                    change.position,
                    standing_change(&change.patient_id, recipient, &sub_id),
                ));
            }
        }
    }
    changes
}

/// Who hears of each event `declared` (by its index): the patient's GPs and the
/// other current members of the patient's care circle.
fn audience(known: &Known, now: DateTime<Utc>, declared: &[Declared]) -> Vec<(usize, Vec<String>)> {
    declared
        .iter()
        .enumerate()
        .filter_map(|(n, event)| Some((n, circle_of(known, now, patient_of(&event.encounter)?)?)))
        .collect()
}

/// The patient's GPs and the other current members of the patient's care
/// circle; `None` when the patient is unknown.
fn circle_of(known: &Known, now: DateTime<Utc>, patient_id: &str) -> Option<Vec<String>> {
    let patient = known.get("Patient", patient_id)?;
    let mut members = recipients::general_practitioners(patient);
    let circle = known.get("CareTeam", &circle::circle_id(patient_id));
    for member in circle
        .map(|c| circle::current_members(c, now))
        .unwrap_or_default()
    {
        if !members.contains(&member) {
            members.push(member);
        }
    }
    Some(members)
}

/// The Subscriptions through which the reachable members of the care circle of
/// each patient whose appointment was booked or cancelled hear of the patient's
/// appointments (written again, a no-op when unchanged).
fn appointment_followers(
    known: &Known,
    reached: &HashMap<String, Recipient>,
    now: DateTime<Utc>,
    appointments_of: &[(usize, String)],
) -> Vec<(usize, Change)> {
    let mut changes = Vec::new();
    let mut written = HashSet::new();
    for (position, patient_id) in appointments_of {
        for member in circle_of(known, now, patient_id).unwrap_or_default() {
            let Some(recipient) = reached.get(&member) else {
                continue;
            };
            let id = appointment::follower_subscription_id(patient_id, &member);
            if written.insert(id.clone()) {
                let sub = appointment::follower_subscription(patient_id, recipient);
                changes.push((*position, Change::update("Subscription", id, sub, None)));
            }
        }
    }
    changes
}

/// The notification requests of the events `declared` to their `audience` that
/// an Endpoint reaches, with the standing Subscriptions they need that are not
/// `written` yet.
fn requests(
    known: &Known,
    reached: &HashMap<String, Recipient>,
    declared: &[Declared],
    audience: &[(usize, Vec<String>)],
    written: &mut HashSet<String>,
) -> Vec<(usize, Change)> {
    let mut changes = Vec::new();
    for (n, members) in audience {
        let event = &declared[*n];
        let Some(patient_id) = patient_of(&event.encounter) else {
            continue;
        };
        let Some(patient) = known.get("Patient", patient_id) else {
            continue;
        };
        for member in members {
            let Some(recipient) = reached.get(member) else {
                continue;
            };
            let sub_id = recipients::standing_subscription_id(patient_id, member);
            if written.insert(sub_id.clone()) {
                changes.push((
                    event.position,
                    standing_change(patient_id, recipient, &sub_id),
                ));
            }
            let request = nde::notification_request(
                &event.declaration,
                &sub_id,
                recipient,
                Some(&event.encounter),
                Some(patient),
            );
            changes.push((
                event.position,
                Change::create("CommunicationRequest", request),
            ));
        }
    }
    changes
}

/// A resource a declaration references in `field` (`subject`, `encounter`): one
/// it contains, or the server's current version.
fn referenced<'a>(known: &'a Known, declaration: &'a Value, field: &str) -> Option<&'a Value> {
    let reference = declaration[field]["reference"].as_str()?;
    match reference.strip_prefix('#') {
        Some(local) => crate::fhir::contained(declaration, local),
        None => {
            let (res_type, id) = reference.split_once('/')?;
            known.get(res_type, id)
        }
    }
}

/// The notification requests of the declarations `published` for the NdE
/// subscribers whose criteria select them (evaluated by the database, where this
/// transaction's declarations are already written).
async fn subscriber_requests(
    tx: &Transaction<'_>,
    rules: &Rules,
    published: &[Published],
) -> FhirResult<Vec<(usize, Change)>> {
    if published.is_empty() {
        return Ok(Vec::new());
    }
    let selecting = store::subscriptions::selecting(tx).await?;
    if selecting.is_empty() {
        return Ok(Vec::new());
    }
    let params = rules.catalog.params.current();
    let ids = published
        .iter()
        .map(|p| p.declaration_id.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let mut chosen: Vec<(&str, HashSet<String>)> = Vec::new();
    for (sub_id, selects) in &selecting {
        let mut selected: Option<HashSet<String>> = None;
        for criteria in selects {
            let mut query = search::parse_criteria(criteria);
            query.push(("_id".to_owned(), ids.clone()));
            // Criteria that no longer compile (a parameter deleted) select nothing.
            let plan = match search::parse(
                &params,
                "CommunicationRequest",
                &query,
                Handling::Strict,
            ) {
                Ok(plan) => plan,
                Err(e) => {
                    tracing::warn!(%sub_id, error = %e, "NdE subscriber criteria no longer apply");
                    selected = Some(HashSet::new());
                    break;
                }
            };
            let found: HashSet<String> = store::matching_ids(tx, &plan, published.len())
                .await?
                .into_iter()
                .collect();
            selected = Some(match selected {
                None => found,
                Some(before) => before.intersection(&found).cloned().collect(),
            });
        }
        if let Some(selected) = selected.filter(|s| !s.is_empty()) {
            chosen.push((sub_id, selected));
        }
    }
    // The subscribers, and the stays and patients of the events, read together.
    let mut known = Known::default();
    let mut keys: Vec<(String, String)> = chosen
        .iter()
        .map(|(id, _)| key("Subscription", id))
        .collect();
    keys.extend(published.iter().flat_map(|event| {
        ["encounter", "subject"].into_iter().filter_map(|field| {
            let (res_type, id) = event.declaration[field]["reference"]
                .as_str()?
                .split_once('/')?;
            Some(key(res_type, id))
        })
    }));
    known.fetch(tx, &keys).await?;
    let mut changes = Vec::new();
    for event in published {
        let encounter = referenced(&known, &event.declaration, "encounter");
        let patient = referenced(&known, &event.declaration, "subject");
        for (sub_id, selected) in &chosen {
            let Some(subscription) = known.get("Subscription", sub_id) else {
                continue;
            };
            let selects_event = selected.contains(&event.declaration_id);
            let Some(recipient) = recipients::subscriber(subscription).filter(|_| selects_event)
            else {
                continue;
            };
            let request = nde::notification_request(
                &event.declaration,
                sub_id,
                &recipient,
                encounter,
                patient,
            );
            changes.push((
                event.position,
                Change::create("CommunicationRequest", request),
            ));
        }
    }
    Ok(changes)
}
