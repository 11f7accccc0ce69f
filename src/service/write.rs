//! The one place every change to a resource goes through, whatever the interaction
//! (create, update, PATCH, delete, one request's or a transaction's entries written
//! together): locks, precondition checks, the no-op check, the server's `meta`,
//! index rows, the stored versions and the facts for subscriptions all happen here,
//! inside the caller's database transaction, in a few statements whatever the
//! number of changes (plus one per Subscription filed). Authorisation will join
//! here too.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Duration, DurationRound, Utc};
use deadpool_postgres::Transaction;
use serde_json::Value;

use super::notices::{
    self, Ack, Coordinated, Declared, Documented, GpChange, Population, Published, Referral,
    StayWritten, TeamChange,
};
use super::notify;
use crate::coordination;
use crate::error::{FhirError, FhirResult, Issue};
use crate::fhir;
use crate::limits::MAX_SEARCH_PARAMETER_CODE;
use crate::search::index::{self, IndexRows};
use crate::search::params::ParamTable;
use crate::store::{self, Method, NewVersion};
use crate::subscription::Interaction;

/// What a change does to one resource.
#[derive(Debug)]
pub enum ChangeKind {
    /// A new resource with a server-assigned id.
    Create,
    /// Write a version at a known id; creates the resource if it does not exist.
    Update,
    /// Write a version computed from the current one (PATCH).
    Patch,
    Delete,
}

#[derive(Debug)]
pub struct Change {
    pub res_type: String,
    pub res_id: String,
    pub kind: ChangeKind,
    /// The validated resource for create and update.
    pub resource: Option<Value>,
    /// `If-Match`: the version the client expects to replace.
    pub if_match: Option<i64>,
    /// The client writing a Subscription (`auth::Access::owner`), kept as its
    /// owner; none for other types, the server's own writes and open access.
    pub owner: Option<Value>,
}

impl Change {
    /// Names the client that writes the change, when it is a Subscription: its
    /// notifications are then held to what that client may see.
    pub fn written_by(mut self, access: &crate::auth::Access) -> Change {
        if self.res_type == "Subscription" {
            self.owner = access.owner();
        }
        self
    }

    /// A new resource with a server-assigned id.
    pub fn create(res_type: &str, resource: Value) -> Change {
        Change {
            res_type: res_type.to_owned(),
            res_id: uuid::Uuid::new_v4().to_string(),
            kind: ChangeKind::Create,
            resource: Some(resource),
            if_match: None,
            owner: None,
        }
    }

    /// A version at a known id, creating the resource if it does not exist.
    pub fn update(
        res_type: &str,
        res_id: String,
        resource: Value,
        if_match: Option<i64>,
    ) -> Change {
        Change {
            res_type: res_type.to_owned(),
            res_id,
            kind: ChangeKind::Update,
            resource: Some(resource),
            if_match,
            owner: None,
        }
    }
}

/// The result of a change.
#[derive(Debug, Clone)]
pub struct Written {
    pub res_type: String,
    pub res_id: String,
    pub version_id: i64,
    pub last_updated: DateTime<Utc>,
    /// True when the change brought the resource into existence (201).
    pub created: bool,
    /// The stored resource as JSON text; `None` after a delete.
    pub json: Option<String>,
}

/// The instant of a new version: the database's clock (one clock for every
/// instance, and never earlier than the transaction's start, which the history
/// horizon relies on), but always after the previous version of the resource.
fn next_instant(now: DateTime<Utc>, previous: Option<DateTime<Utc>>) -> DateTime<Utc> {
    let now = now.duration_trunc(Duration::microseconds(1)).unwrap_or(now);
    match previous {
        Some(p) if p >= now => p + Duration::microseconds(1),
        _ => now,
    }
}

/// The stored form of a version: the resource with the server's `id` and `meta`,
/// as JSON text, and its index rows.
fn stamped(
    params: &ParamTable,
    res_type: &str,
    res_id: &str,
    version_id: i64,
    last_updated: DateTime<Utc>,
    mut resource: Value,
) -> FhirResult<(String, IndexRows)> {
    fhir::stamp(&mut resource, res_id, version_id, last_updated);
    let mut index = index::extract(params, res_type, &resource);
    index.circle = coordination::access::circle_rows(res_type, &resource);
    let json = serde_json::to_string(&resource)
        .map_err(|e| FhirError::Internal(format!("serialising a resource: {e}")))?;
    Ok((json, index))
}

/// The version a change writes, decided before it is stamped.
struct NextVersion {
    version_id: i64,
    last_updated: DateTime<Utc>,
    method: Method,
    /// Whether the resource existed (not deleted) before.
    live: bool,
    subscription: Option<Box<crate::subscription::Spec>>,
}

/// A change whose outcome is decided: nothing to write, or the next version and
/// its resource (`None` for a delete).
enum Step {
    Unchanged(Written),
    Write(NextVersion, Option<Value>),
}

/// A failure of changes written together: at the position of the change that
/// failed among those given, or of the whole statement (a lock or a write that
/// no one change can be blamed for).
#[derive(Debug)]
pub struct Failed {
    pub position: Option<usize>,
    pub error: FhirError,
}

fn at(position: usize) -> impl Fn(FhirError) -> Failed {
    move |error| Failed {
        position: Some(position),
        error,
    }
}

fn whole(error: FhirError) -> Failed {
    Failed {
        position: None,
        error,
    }
}

/// Applies one change inside `tx`: [`apply_all`] with one change.
pub async fn apply(
    tx: &Transaction<'_>,
    rules: &super::Rules,
    now: DateTime<Utc>,
    change: Change,
    facts: &mut Vec<notify::Fact>,
) -> FhirResult<Written> {
    let mut written = apply_all(tx, rules, now, vec![change], facts)
        .await
        .map_err(|f| f.error)?;
    written
        .pop()
        .ok_or_else(|| FhirError::Internal("a change without a result".to_owned()))
}

/// Applies changes inside `tx`, each resource at most once: two statements lock
/// the rows of those that may exist (and claim the new ids of updates), one reads the current versions that updates
/// may repeat (an update that changes nothing writes no version, as HAPI does: a
/// record pushed twice stays at its version), one writes every new version with
/// its index rows. `now` is the database clock read once for the transaction
/// (`store::clock`). What was written is added to `facts`, which the caller hands
/// to `notify::record_events` before it commits.
#[tracing::instrument(skip_all, fields(changes = changes.len()))]
pub async fn apply_all(
    tx: &Transaction<'_>,
    rules: &super::Rules,
    now: DateTime<Utc>,
    changes: Vec<Change>,
    facts: &mut Vec<notify::Fact>,
) -> Result<Vec<Written>, Failed> {
    let (written, mut derived) = apply_round(tx, rules, now, changes, false, facts).await?;
    // What the server derives is written in the same transaction, each derived
    // change answering for the change it came from. The longest chain today: a
    // stay admitted on a referral completes its Task, which completes the request,
    // which ends its requester's Subscription. The bound keeps a rule from looping.
    for _ in 0..MAX_DERIVATION_ROUNDS {
        if derived.is_empty() {
            break;
        }
        let (origins, changes): (Vec<usize>, Vec<Change>) = derived.into_iter().unzip();
        let (_, next) = apply_round(tx, rules, now, changes, true, facts)
            .await
            .map_err(|f| Failed {
                position: f.position.map(|p| origins[p]),
                error: f.error,
            })?;
        derived = next.into_iter().map(|(p, c)| (origins[p], c)).collect();
    }
    if !derived.is_empty() {
        return Err(whole(FhirError::Internal(
            "derived writes did not settle".to_owned(),
        )));
    }
    Ok(written)
}

/// Rounds of derived writes after the changes asked for.
const MAX_DERIVATION_ROUNDS: usize = 4;

/// Writes `changes` (`derived`: the server's own) and returns what they derive,
/// each with the position of the change it comes from.
async fn apply_round(
    tx: &Transaction<'_>,
    rules: &super::Rules,
    now: DateTime<Utc>,
    changes: Vec<Change>,
    derived: bool,
    facts: &mut Vec<notify::Fact>,
) -> Result<(Vec<Written>, Vec<(usize, Change)>), Failed> {
    // Callers give each resource once (a transaction refuses an entry that changes
    // a resource again, R4's overlap rule): two versions of one resource in one
    // statement would collide on the primary key.
    debug_assert!({
        let mut seen = HashSet::new();
        changes
            .iter()
            .all(|c| seen.insert((c.res_type.as_str(), c.res_id.as_str())))
    });
    // A fresh server-assigned id has no row to lock; the version table's primary
    // key still refuses a duplicate.
    let keys: Vec<store::LockKey<'_>> = changes
        .iter()
        .filter(|c| !matches!(c.kind, ChangeKind::Create))
        .map(|c| store::LockKey {
            res_type: &c.res_type,
            res_id: &c.res_id,
            // An update may create the resource; a PATCH or a delete may not.
            claim: matches!(c.kind, ChangeKind::Update),
        })
        .collect();
    let currents = store::lock_all(tx, &keys).await.map_err(whole)?;
    drop(keys);
    let mut steps = Vec::with_capacity(changes.len());
    let mut repeats = Vec::new();
    for (position, mut change) in changes.into_iter().enumerate() {
        let current = currents
            .get(&(change.res_type.clone(), change.res_id.clone()))
            .copied();
        let step = decide(rules, now, &mut change, current, derived).map_err(at(position))?;
        if let (Step::Write(next, resource), Some(cur)) = (&step, current) {
            // A delete's previous version matters only to the coordination rules.
            let compared = resource.is_some()
                || matches!(
                    change.res_type.as_str(),
                    "Patient" | "Appointment" | "CareTeam" | "Group"
                );
            if next.live && compared {
                repeats.push((position, cur.version_id));
            }
        }
        steps.push((change, step));
    }
    let previous = unchanged(tx, &mut steps, &repeats).await.map_err(whole)?;
    let found = coordinate(rules, now, &steps, &previous)?;
    let written = write_steps(tx, rules, steps, facts).await?;
    if found.is_empty() {
        return Ok((written, Vec::new()));
    }
    // Who is told is read after this round's writes, which it may depend on (a
    // transaction writing the patient's GP, or the discharge, with the stay).
    let derived = notices::notices(tx, rules, now, found).await?;
    Ok((written, derived))
}

/// What the coordination rules make of the changes about to be written:
/// refusals (409, naming the rule), the events stays declare, the GPs patients
/// gain or lose, and the acknowledgements claimed.
fn coordinate(
    rules: &super::Rules,
    now: DateTime<Utc>,
    steps: &[(Change, Step)],
    previous: &HashMap<usize, Value>,
) -> Result<Coordinated, Failed> {
    let mut found = Coordinated::default();
    for (position, (change, step)) in steps.iter().enumerate() {
        let Step::Write(next, resource) = step else {
            continue;
        };
        let previous = previous.get(&position);
        match change.res_type.as_str() {
            "Encounter" => {
                if let Some(encounter) = resource.as_ref().filter(|e| rules.stays.is_stay(e)) {
                    found.stays.push(StayWritten {
                        position,
                        encounter_id: change.res_id.clone(),
                        encounter: encounter.clone(),
                    });
                }
                let declarations = coordination::encounter_declarations(
                    &rules.stays,
                    &change.res_id,
                    previous,
                    resource.as_ref(),
                    now,
                )
                .map_err(|refusal| at(position)(FhirError::Conflict(refusal.message)))?;
                if let Some(encounter) = resource.as_ref().filter(|_| !declarations.is_empty()) {
                    let admitted = declarations.iter().any(|d| {
                        coordination::nde::EventType::of_request(d)
                            == Some(coordination::nde::EventType::Admission)
                    });
                    if admitted {
                        found.admitted_on.extend(
                            coordination::referral::requests_of_stay(encounter)
                                .into_iter()
                                .map(|request_id| (position, request_id.to_owned())),
                        );
                    }
                    found
                        .declared
                        .extend(declarations.into_iter().map(|declaration| Declared {
                            position,
                            encounter: encounter.clone(),
                            declaration,
                        }));
                }
            }
            "Patient" => {
                let (added, removed) = coordination::recipients::general_practitioner_changes(
                    previous,
                    resource.as_ref(),
                );
                if !added.is_empty() || !removed.is_empty() {
                    found.gps.push(GpChange {
                        position,
                        patient_id: change.res_id.clone(),
                        patient: resource.clone(),
                        added,
                        removed,
                    });
                }
            }
            // Filed once: a document updated later is no new event.
            "DocumentReference" if !next.live => {
                let Some(document) = resource.as_ref() else {
                    continue;
                };
                let filed = document["status"] != "entered-in-error";
                if let Some(encounter_id) =
                    coordination::nde::document_stay(document).filter(|_| filed)
                {
                    found.documents.push(Documented {
                        position,
                        document_id: change.res_id.clone(),
                        document: document.clone(),
                        encounter_id: encounter_id.to_owned(),
                    });
                }
            }
            // Declared once: a declaration updated later is no new event.
            "CommunicationRequest" if !next.live => {
                if let Some(declaration) = resource
                    .as_ref()
                    .filter(|r| coordination::nde::is_declaration(r))
                {
                    found.published.push(Published {
                        position,
                        declaration_id: change.res_id.clone(),
                        declaration: declaration.clone(),
                    });
                }
            }
            "CarePlan" => {
                coordination::careplan::check(previous, resource.as_ref())
                    .map_err(|refusal| at(position)(FhirError::Conflict(refusal)))?;
                if let Some(plan) = resource.as_ref() {
                    found
                        .plans
                        .push((position, change.res_id.clone(), plan.clone()));
                    if coordination::population::group_of(plan).is_some() {
                        found.populations.push(Population::Plan {
                            position,
                            plan_id: change.res_id.clone(),
                            plan: plan.clone(),
                        });
                    }
                }
            }
            "Group" => {
                let members = |g: Option<&Value>| {
                    g.map(|g| coordination::population::current_members(g, now))
                };
                if members(previous) != members(resource.as_ref()) {
                    found.populations.push(Population::Group {
                        position,
                        group_id: change.res_id.clone(),
                    });
                }
            }
            "CareTeam" => {
                let members = |t: Option<&Value>| -> HashSet<String> {
                    t.map(|t| coordination::circle::current_members(t, now))
                        .unwrap_or_default()
                        .into_iter()
                        .collect()
                };
                let (before, after) = (members(previous), members(resource.as_ref()));
                if before != after {
                    let sorted = |set: HashSet<&String>| {
                        let mut list: Vec<String> = set.into_iter().cloned().collect();
                        list.sort();
                        list
                    };
                    found.teams.push(TeamChange {
                        position,
                        team_id: change.res_id.clone(),
                        joined: sorted(after.difference(&before).collect()),
                        left: sorted(before.difference(&after).collect()),
                    });
                }
            }
            "Appointment" => {
                let booking = coordination::appointment::booking(previous, resource.as_ref());
                if !booking.taken.is_empty() || !booking.freed.is_empty() {
                    found.bookings.push((position, booking));
                    let patient = resource
                        .as_ref()
                        .or(previous)
                        .and_then(coordination::appointment::patient_of);
                    if let Some(patient_id) = patient {
                        found
                            .appointments_of
                            .push((position, patient_id.to_owned()));
                    }
                }
            }
            "ServiceRequest" => {
                found.referrals.push(Referral::Request {
                    position,
                    request_id: change.res_id.clone(),
                    request: resource.clone(),
                });
            }
            "Task" => {
                coordination::referral::check(previous, resource.as_ref()).map_err(|refusal| {
                    let message = format!("{}: {}", refusal.rule, refusal.message);
                    at(position)(match refusal.conflict {
                        true => FhirError::Conflict(message),
                        false => {
                            FhirError::Unprocessable(vec![
                                Issue::new("business-rule", message).at("Task.statusReason")
                            ])
                        }
                    })
                })?;
                let referral = resource
                    .as_ref()
                    .and_then(|task| Some((coordination::referral::request_of(task)?, task)));
                if let Some((request_id, task)) = referral {
                    found.referrals.push(Referral::Task {
                        position,
                        request_id: request_id.to_owned(),
                        task: task.clone(),
                    });
                }
            }
            // An answer to a request (tele-expertise), filed once.
            "Communication" | "DiagnosticReport" if !next.live => {
                let answer = format!("{}/{}", change.res_type, change.res_id);
                let answered = resource
                    .as_ref()
                    .map(coordination::referral::answered_requests)
                    .unwrap_or_default();
                found.answers.extend(
                    answered
                        .into_iter()
                        .map(|request_id| (position, request_id.to_owned(), answer.clone())),
                );
            }
            _ => {}
        }
        // Acknowledgements: a Task's focus, a Communication's basedOn.
        if matches!(change.res_type.as_str(), "Task" | "Communication") {
            let by = format!("{}/{}", change.res_type, change.res_id);
            for claim in resource
                .as_ref()
                .map(|r| coordination::acknowledgement::claims(&change.res_type, r))
                .unwrap_or_default()
            {
                found.acks.push(Ack {
                    position,
                    by: by.clone(),
                    claim,
                });
            }
        }
    }
    Ok(found)
}

/// How a refused `If-Match` starts its message, followed by the version expected
/// and the current one: the loader reads them to tell a step already taken.
pub const STALE_VERSION: &str = "If-Match expected version";

/// What one change does, given the current state of its resource; takes the
/// change's resource into the step.
fn decide(
    rules: &super::Rules,
    now: DateTime<Utc>,
    change: &mut Change,
    current: Option<store::Current>,
    derived: bool,
) -> FhirResult<Step> {
    let (res_type, res_id) = (&change.res_type, &change.res_id);
    if let Some(expected) = change.if_match {
        let actual = current.filter(|c| !c.deleted).map(|c| c.version_id);
        if actual != Some(expected) {
            return Err(FhirError::PreconditionFailed(format!(
                "{STALE_VERSION} {expected} of {res_type}/{res_id}, but the current version is {}",
                actual.map_or_else(|| "absent".to_owned(), |v| v.to_string())
            )));
        }
    }
    let method = match change.kind {
        ChangeKind::Create => Method::Post,
        ChangeKind::Update => Method::Put,
        ChangeKind::Patch => Method::Patch,
        ChangeKind::Delete => Method::Delete,
    };
    let live = current.is_some_and(|c| !c.deleted);
    let mut subscription = None;
    match (change.resource.as_mut(), method) {
        // Deleting what is absent or already deleted changes nothing.
        (None, Method::Delete) if !live => {
            return Ok(Step::Unchanged(Written {
                version_id: current.map_or(0, |c| c.version_id),
                last_updated: current.map_or_else(Utc::now, |c| c.last_updated),
                res_type: res_type.clone(),
                res_id: res_id.clone(),
                created: false,
                json: None,
            }));
        }
        (None, Method::Delete) => {}
        (None, _) => return Err(FhirError::Internal("a write without a resource".to_owned())),
        // The server's part of a Subscription (status, secret) is set before the
        // no-op check, so that writing the same subscription again is a no-op.
        (Some(resource), _) if res_type == "Subscription" => {
            let params = rules.catalog.params.current();
            subscription = Some(Box::new(crate::subscription::prepare(
                resource,
                res_id,
                &rules.endpoints,
                &rules.catalog.definitions(&params),
            )?));
        }
        (Some(resource), _) if res_type == "SearchParameter" => {
            check_search_parameter(resource)?;
        }
        (Some(resource), _) if res_type == "Endpoint" => {
            coordination::recipients::check_endpoint(resource, &rules.endpoints).map_err(
                |message| {
                    FhirError::Unprocessable(vec![
                        Issue::new("value", message).at("Endpoint.address")
                    ])
                },
            )?;
        }
        (Some(_), _) => {}
    }
    if let Some(resource) = change.resource.as_ref() {
        // Profiles it claims or its type requires (a Subscription's secret was
        // taken out above, as it is never stored in the resource).
        rules
            .profiles
            .check_write(resource, derived)
            .map_err(FhirError::Unprocessable)?;
    }
    let next = NextVersion {
        version_id: current.map_or(1, |c| c.version_id + 1),
        last_updated: next_instant(now, current.map(|c| c.last_updated)),
        method,
        live,
        subscription,
    };
    Ok(Step::Write(next, change.resource.take()))
}

/// Turns into [`Step::Unchanged`] the updates whose resource is the current
/// version's, the server's `id` and `meta` aside (`repeats`: their positions and
/// current versions), reading those versions in one query. Returns, by position,
/// the versions that the coordination rules compare with what replaces them.
async fn unchanged(
    tx: &Transaction<'_>,
    steps: &mut [(Change, Step)],
    repeats: &[(usize, i64)],
) -> FhirResult<HashMap<usize, Value>> {
    let mut previous = HashMap::new();
    let keys: Vec<(&str, &str, i64)> = repeats
        .iter()
        .map(|&(p, v)| (steps[p].0.res_type.as_str(), steps[p].0.res_id.as_str(), v))
        .collect();
    let stored = store::read_versions(tx, &keys).await?;
    drop(keys);
    let mut by_key: HashMap<(String, String), store::StoredVersion> = stored
        .into_iter()
        .map(|v| ((v.res_type.clone(), v.res_id.clone()), v))
        .collect();
    for &(p, _) in repeats {
        let (change, step) = &mut steps[p];
        let Some(stored) = by_key.remove(&(change.res_type.clone(), change.res_id.clone())) else {
            continue;
        };
        let Step::Write(next, candidate) = step else {
            continue;
        };
        let Some(Ok(current)) = stored.json.as_deref().map(serde_json::from_str::<Value>) else {
            continue;
        };
        // A secret given again may be a new one: that write goes through.
        let new_secret = next
            .subscription
            .as_ref()
            .is_some_and(|spec| !spec.secret_generated);
        let current = fhir::without_server_meta(current);
        let Some(candidate) = candidate else {
            previous.insert(p, current);
            continue;
        };
        if !new_secret && current == fhir::without_server_meta(candidate.clone()) {
            *step = Step::Unchanged(Written {
                res_type: stored.res_type,
                res_id: stored.res_id,
                version_id: stored.version_id,
                last_updated: stored.last_updated,
                created: false,
                json: stored.json,
            });
        } else if matches!(
            change.res_type.as_str(),
            "Encounter" | "Patient" | "Task" | "Appointment" | "CarePlan" | "CareTeam" | "Group"
        ) {
            previous.insert(p, current);
        }
    }
    Ok(previous)
}

/// A version stamped, indexed and ready to be written.
struct Ready {
    change: Change,
    next: NextVersion,
    json: Option<String>,
    index: IndexRows,
}

/// What a change comes to before the statement that writes the versions.
enum Outcome {
    Unchanged(Written),
    Ready(Box<Ready>),
}

/// Stamps and indexes the versions to write, writes them in one statement, files
/// the subscriptions among them and records the facts.
async fn write_steps(
    tx: &Transaction<'_>,
    rules: &super::Rules,
    steps: Vec<(Change, Step)>,
    facts: &mut Vec<notify::Fact>,
) -> Result<Vec<Written>, Failed> {
    let params = rules.catalog.params.current();
    let mut outcomes = Vec::with_capacity(steps.len());
    for (position, (change, step)) in steps.into_iter().enumerate() {
        outcomes.push(match step {
            Step::Unchanged(w) => Outcome::Unchanged(w),
            Step::Write(next, resource) => {
                let (json, index) = match resource {
                    Some(r) => {
                        let (json, index) = stamped(
                            &params,
                            &change.res_type,
                            &change.res_id,
                            next.version_id,
                            next.last_updated,
                            r,
                        )
                        .map_err(at(position))?;
                        (Some(json), index)
                    }
                    None => (None, IndexRows::default()),
                };
                Outcome::Ready(Box::new(Ready {
                    change,
                    next,
                    json,
                    index,
                }))
            }
        });
    }
    let news: Vec<NewVersion<'_>> = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Ready(r) => Some(r),
            Outcome::Unchanged(_) => None,
        })
        .map(|r| NewVersion {
            res_type: &r.change.res_type,
            res_id: &r.change.res_id,
            version_id: r.next.version_id,
            last_updated: r.next.last_updated,
            method: r.next.method,
            json: r.json.as_deref(),
            index: &r.index,
        })
        .collect();
    store::write_versions(tx, &news).await.map_err(whole)?;
    drop(news);
    let mut written = Vec::with_capacity(outcomes.len());
    for (position, outcome) in outcomes.into_iter().enumerate() {
        let r = match outcome {
            Outcome::Unchanged(w) => {
                written.push(w);
                continue;
            }
            Outcome::Ready(ready) => *ready,
        };
        let mut json = r.json;
        if r.change.res_type == "Subscription" {
            let spec = r.next.subscription.as_deref();
            let keeps_secret = spec.is_some_and(|s| s.secret_generated) && r.next.live;
            let filing = notify::Filing {
                sub_id: &r.change.res_id,
                spec,
                keeps_secret,
                owner: r.change.owner.as_ref(),
            };
            notify::file_subscription(tx, &rules.catalog, &filing)
                .await
                .map_err(at(position))?;
            // The writer that set the secret gets it back, this once.
            if let (Some(spec), Some(text), false) = (spec, json.as_deref(), keeps_secret) {
                let stored: Value = serde_json::from_str(text)
                    .map_err(|e| at(position)(FhirError::Internal(e.to_string())))?;
                let answer = crate::subscription::with_secret(stored, &spec.channel.secret);
                json = Some(answer.to_string());
            }
        }
        let interaction = match (&json, r.next.live) {
            (None, _) => Interaction::Delete,
            (Some(_), false) => Interaction::Create,
            (Some(_), true) => Interaction::Update,
        };
        facts.push(notify::Fact {
            res_type: r.change.res_type.clone(),
            res_id: r.change.res_id.clone(),
            version_id: r.next.version_id,
            last_updated: r.next.last_updated,
            interaction,
            rows: json.is_some().then_some(r.index),
        });
        written.push(Written {
            created: json.is_some() && !r.next.live,
            res_type: r.change.res_type,
            res_id: r.change.res_id,
            version_id: r.next.version_id,
            last_updated: r.next.last_updated,
            json,
        });
    }
    Ok(written)
}

/// Refuses a SearchParameter beyond the limits: its expression is compiled at every
/// start and by every instance, its code is stored in every index row. One outside
/// the server's FHIRPath subset is stored and reported as not used.
fn check_search_parameter(resource: &Value) -> FhirResult<()> {
    let too_costly = |message: String, at: &str| {
        FhirError::Unprocessable(vec![Issue::new("too-costly", message).at(at)])
    };
    let code = resource["code"].as_str().unwrap_or_default();
    if code.chars().count() > MAX_SEARCH_PARAMETER_CODE {
        return Err(too_costly(
            format!("a code is at most {MAX_SEARCH_PARAMETER_CODE} characters"),
            "SearchParameter.code",
        ));
    }
    let expression = resource["expression"].as_str().unwrap_or_default();
    crate::fhir::fhirpath::check_depth(expression)
        .map_err(|e| too_costly(e.0, "SearchParameter.expression"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_move_forward_in_time() {
        let future = Utc::now() + Duration::hours(1);
        assert_eq!(
            next_instant(Utc::now(), Some(future)),
            future + Duration::microseconds(1)
        );
        let past = Utc::now() - Duration::hours(1);
        assert!(next_instant(Utc::now(), Some(past)) > past + Duration::minutes(59));
    }
}
