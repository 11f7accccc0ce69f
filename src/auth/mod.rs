//! Who is asking: SMART on FHIR bearer tokens checked at the edge, and what their
//! scopes let the client do. `PASSERELLE_AUTH=smart` checks every request's token
//! against the configured issuer; `none` serves anyone (development, said loudly
//! at start); unset, the server serves anyone only while it listens on loopback.

pub mod scopes;
pub mod token;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::error::{FhirError, FhirResult};
use scopes::{Context, Decision, Grant, Interaction};

/// The authorisation server a `smart` deployment trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmartSettings {
    /// `iss` of its tokens (and the SMART configuration's `issuer`).
    pub issuer: String,
    /// The `aud` its tokens carry for this server.
    pub audience: String,
    /// Where its signing keys are published.
    pub jwks_url: String,
    /// Its authorisation and token endpoints, for the SMART configuration.
    pub authorize_url: Option<String>,
    pub token_url: Option<String>,
    /// `system/` clients held to organisations (`client_id` → `Organization`
    /// ids): such a client sees the records of the patients in whose care circle
    /// one of its organisations is, as a practitioner sees her circles'.
    pub client_organizations: BTreeMap<String, Vec<String>>,
}

/// `PASSERELLE_AUTH_CLIENT_ORGANIZATIONS`: `client=org,org;client=org`, each
/// organisation an id or `Organization/{id}`. Pure.
pub fn parse_client_organizations(text: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut lists = BTreeMap::new();
    for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = |why: &str| {
            format!("PASSERELLE_AUTH_CLIENT_ORGANIZATIONS: '{entry}' {why} (expected client=Organization/id,…)")
        };
        let (client, organizations) = entry.split_once('=').ok_or_else(|| bad("has no '='"))?;
        let client = client.trim();
        if client.is_empty() {
            return Err(bad("names no client"));
        }
        let mut ids = Vec::new();
        for organization in organizations.split(',').map(str::trim) {
            let id = organization
                .strip_prefix("Organization/")
                .unwrap_or(organization);
            if id.is_empty() || id.contains('/') || id.contains(char::is_whitespace) {
                return Err(bad(&format!("names '{organization}', not an Organization")));
            }
            ids.push(id.to_owned());
        }
        if lists.insert(client.to_owned(), ids).is_some() {
            return Err(bad("names its client twice"));
        }
    }
    Ok(lists)
}

/// How the server authenticates, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AuthSetting {
    /// `PASSERELLE_AUTH=smart`.
    Smart(SmartSettings),
    /// `PASSERELLE_AUTH=none`: anyone, on purpose.
    None,
    /// Nothing said: anyone, on loopback only.
    #[default]
    Unset,
}

/// The `PASSERELLE_AUTH*` settings as given.
#[derive(Debug, Default)]
pub struct AuthParts {
    pub mode: Option<String>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub jwks_url: Option<String>,
    pub authorize_url: Option<String>,
    pub token_url: Option<String>,
    pub client_organizations: Option<String>,
}

impl AuthSetting {
    /// The setting the parts make, or what is wrong with them. Pure.
    pub fn from_parts(parts: AuthParts) -> Result<AuthSetting, String> {
        let given = |v: Option<String>| v.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        match given(parts.mode).as_deref() {
            None => Ok(AuthSetting::Unset),
            Some("none") => Ok(AuthSetting::None),
            Some("smart") => {
                let mut missing = Vec::new();
                let mut need = |name: &str, value: Option<String>| {
                    let value = given(value);
                    if value.is_none() {
                        missing.push(name.to_owned());
                    }
                    value.unwrap_or_default()
                };
                let client_organizations = parse_client_organizations(
                    parts.client_organizations.as_deref().unwrap_or(""),
                )?;
                let settings = SmartSettings {
                    issuer: need("PASSERELLE_AUTH_ISSUER", parts.issuer),
                    audience: need("PASSERELLE_AUTH_AUDIENCE", parts.audience),
                    jwks_url: need("PASSERELLE_AUTH_JWKS_URL", parts.jwks_url),
                    authorize_url: given(parts.authorize_url),
                    token_url: given(parts.token_url),
                    client_organizations,
                };
                match missing.is_empty() {
                    true => Ok(AuthSetting::Smart(settings)),
                    false => Err(format!(
                        "PASSERELLE_AUTH=smart needs {}",
                        missing.join(", ")
                    )),
                }
            }
            Some(other) => Err(format!(
                "PASSERELLE_AUTH must be smart or none, not '{other}'"
            )),
        }
    }

    /// Whether the server may start listening on `listen` with this setting:
    /// without authentication configured, only on loopback. Pure.
    pub fn check_listen(&self, listen: SocketAddr) -> Result<(), String> {
        match self {
            AuthSetting::Unset if !listen.ip().is_loopback() => Err(format!(
                "refusing to serve health data without authentication on {listen}: set PASSERELLE_AUTH=smart (with PASSERELLE_AUTH_ISSUER, PASSERELLE_AUTH_AUDIENCE and PASSERELLE_AUTH_JWKS_URL), or PASSERELLE_AUTH=none to serve anyone on purpose, or listen on a loopback address"
            )),
            _ => Ok(()),
        }
    }
}

/// What the HTTP layer checks requests with.
pub enum Guard {
    /// Anyone may ask anything.
    Open,
    Smart(Box<token::Verifier>),
}

impl Guard {
    pub fn new(setting: &AuthSetting) -> Arc<Guard> {
        Arc::new(match setting {
            AuthSetting::Smart(settings) => {
                Guard::Smart(Box::new(token::Verifier::new(settings.clone())))
            }
            AuthSetting::None | AuthSetting::Unset => Guard::Open,
        })
    }

    pub fn smart(&self) -> Option<&SmartSettings> {
        match self {
            Guard::Smart(verifier) => Some(verifier.settings()),
            Guard::Open => None,
        }
    }
}

/// The client behind a verified token. Kept, serialised, as the owner of the
/// Subscriptions it writes (`subscription.owner`): they notify what it may see.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Principal {
    /// `client_id` (or `azp`).
    pub client: Option<String>,
    pub subject: Option<String>,
    /// `fhirUser`: the Practitioner, PractitionerRole or Patient using the client.
    pub fhir_user: Option<String>,
    /// The launch context's patient id.
    pub patient: Option<String>,
    pub grants: Vec<Grant>,
    /// The organisations a `system/` client is held to
    /// (`SmartSettings::client_organizations`); none: not held.
    #[serde(default)]
    pub organizations: Option<Vec<String>>,
}

impl Principal {
    /// The client of verified claims, held to its organisations if `settings`
    /// name any for it.
    pub fn from_claims(claims: token::Claims, settings: &SmartSettings) -> Principal {
        let mut grants = scopes::parse_scopes(&claims.scopes());
        // `patient/` scopes mean nothing without a patient in context.
        let patient = claims
            .patient
            .map(|p| p.strip_prefix("Patient/").map_or(p.clone(), str::to_owned))
            .filter(|p| !p.is_empty());
        if patient.is_none() {
            grants.retain(|g| g.context != Context::Patient);
        }
        let client = claims.client_id.or(claims.azp);
        let organizations = client
            .as_ref()
            .and_then(|c| settings.client_organizations.get(c))
            .cloned();
        Principal {
            client,
            subject: claims.sub,
            fhir_user: claims.fhir_user,
            patient,
            grants,
            organizations,
        }
    }
}

/// Who a request comes from, as far as the server can tell.
#[derive(Debug, Clone)]
pub enum Access {
    /// Authentication is off: anyone may do anything.
    Open,
    Token(Arc<Principal>),
}

impl Access {
    /// What the client may do of `interaction` on `res_type` (`*`: on every type).
    pub fn decide(&self, res_type: &str, interaction: Interaction) -> Decision<'_> {
        match self {
            Access::Open => Decision::Allowed(Context::System),
            Access::Token(principal) => scopes::decide(&principal.grants, res_type, interaction),
        }
    }

    /// The context in which the client may do `interaction` on `res_type`, or
    /// 403. A scope restricted to a query (`?category=…`) serves searches only.
    pub fn require(&self, res_type: &str, interaction: Interaction) -> FhirResult<Context> {
        match self.decide(res_type, interaction) {
            Decision::Allowed(context) => Ok(context),
            Decision::Denied => Err(denied(res_type, interaction)),
            Decision::Restricted(_) => Err(FhirError::Forbidden(format!(
                "the token's scopes allow '{}' on {res_type} only for the resources of a search restriction (?…): search with it",
                interaction.letter()
            ))),
        }
    }

    /// The client as the owner of a Subscription it writes (`told_of` reads it
    /// back); none when authentication is off.
    pub fn owner(&self) -> Option<serde_json::Value> {
        match self {
            Access::Token(principal) => serde_json::to_value(principal.as_ref()).ok(),
            Access::Open => None,
        }
    }

    /// A Subscription owner as stored (`owner`).
    pub fn of_owner(owner: serde_json::Value) -> Option<Access> {
        serde_json::from_value::<Principal>(owner)
            .ok()
            .map(|p| Access::Token(Arc::new(p)))
    }

    /// The patient of a `patient/` context.
    pub fn patient(&self) -> Option<&str> {
        match self {
            Access::Token(principal) => principal.patient.as_deref(),
            Access::Open => None,
        }
    }
}

fn denied(res_type: &str, interaction: Interaction) -> FhirError {
    FhirError::Forbidden(format!(
        "the token's scopes do not allow '{}' on {res_type}",
        interaction.letter()
    ))
}

/// Every type, for what spans them all (system history, `$export`).
pub const EVERY_TYPE: &str = "*";

/// The types a search reaches beyond its own: those of `_include` and
/// `_revinclude` (read), chained parameters and `_has` (searched through).
pub fn search_reaches(
    res_type: &str,
    params: &[(String, String)],
    table: &crate::search::params::ParamTable,
) -> Vec<(String, Interaction)> {
    let mut reached = Vec::new();
    let mut through = false;
    for (name, value) in params {
        let base = name.split(':').next().unwrap_or_default();
        match base {
            "_include" => {
                for include in value.split(',') {
                    let parts: Vec<&str> = include.split(':').collect();
                    let targets: Vec<String> = match parts.as_slice() {
                        [_, _, target] => vec![(*target).to_owned()],
                        // `Type:*`, or a parameter the table does not know:
                        // whatever it may reach.
                        [source, param] => table
                            .get(source, param)
                            .map(|p| p.targets.clone())
                            .unwrap_or_else(|| vec![EVERY_TYPE.to_owned()]),
                        _ => vec![EVERY_TYPE.to_owned()],
                    };
                    reached.extend(targets.into_iter().map(|t| (t, Interaction::Read)));
                }
            }
            "_revinclude" => {
                for include in value.split(',') {
                    let source = include.split(':').next().unwrap_or(EVERY_TYPE);
                    reached.push((source.to_owned(), Interaction::Read));
                }
            }
            "_has" => through = true,
            _ if name.contains('.') => through = true,
            _ => {}
        }
    }
    // Chains and `_has`, at every depth, as the search will run them (a search
    // that does not parse runs nothing).
    if through {
        if let Ok(plan) =
            crate::search::parse(table, res_type, params, crate::search::Handling::Lenient)
        {
            for condition in &plan.conditions {
                reached.extend(
                    condition
                        .searched_through()
                        .into_iter()
                        .map(|t| (t.to_owned(), Interaction::Search)),
                );
            }
        }
    }
    reached
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token's client as a subscription stores it, read back.
    fn owner(scope: &str, fhir_user: Option<&str>, patient: Option<&str>) -> Access {
        let written = Access::Token(Arc::new(Principal {
            client: Some("app".to_owned()),
            subject: None,
            fhir_user: fhir_user.map(str::to_owned),
            patient: patient.map(str::to_owned),
            grants: scopes::parse_scopes(scope),
            organizations: None,
        }));
        Access::of_owner(written.owner().expect("a token's client")).expect("read back")
    }

    #[test]
    fn system_clients_held_to_organisations() {
        let lists =
            parse_client_organizations(" dac-75=Organization/dac-75, dac-92 ; dmp= ehpad-1 ")
                .expect("read");
        assert_eq!(lists["dac-75"], ["dac-75", "dac-92"]);
        assert_eq!(lists["dmp"], ["ehpad-1"]);
        assert_eq!(parse_client_organizations(""), Ok(BTreeMap::new()));
        for bad in ["dac-75", "=x", "a=", "a=Patient/p1", "a=x;a=y", "a=b c"] {
            assert!(parse_client_organizations(bad).is_err(), "{bad}");
        }
        let mut held = Principal {
            client: Some("dac-75".to_owned()),
            subject: None,
            fhir_user: None,
            patient: None,
            grants: scopes::parse_scopes("system/*.rs"),
            organizations: Some(vec!["dac-75".to_owned()]),
        };
        let circle = Holder::Circle(vec![("Organization".to_owned(), "dac-75".to_owned())]);
        let access = Access::Token(Arc::new(held.clone()));
        let held_as = |access: &Access, t: &str, i: Interaction, glass: bool| {
            holder(access, t, i, glass).expect("a holder")
        };
        assert_eq!(
            held_as(&access, "Encounter", Interaction::Search, false),
            circle
        );
        // Directory data is nobody's record; breaking the glass is a practitioner's.
        assert_eq!(
            held_as(&access, "Organization", Interaction::Read, false),
            Holder::Free
        );
        assert_eq!(
            held_as(&access, "Encounter", Interaction::Read, true),
            circle
        );
        held.organizations = None;
        let free = Access::Token(Arc::new(held));
        assert_eq!(
            held_as(&free, "Encounter", Interaction::Read, false),
            Holder::Free
        );
    }

    #[test]
    fn whose_subscriptions_a_client_sees() {
        let gp = owner("user/*.cruds", Some("Practitioner/gp1"), None);
        let written = gp.owner().expect("an owner");
        assert!(owns(&gp, Some(&written)));
        let colleague = owner("user/*.cruds", Some("Practitioner/gp2"), None);
        assert!(!owns(&colleague, Some(&written)));
        // One app, two patients' launches, no fhirUser: not each other's.
        let app = owner("patient/*.rs", None, Some("p1"));
        let other_launch = owner("patient/*.rs", None, Some("p2"));
        assert!(owns(&app, app.owner().as_ref()));
        assert!(!owns(&other_launch, app.owner().as_ref()));
        assert!(
            !owns(&gp, None),
            "the server's own subscriptions are nobody's"
        );
        assert!(!sees_every_subscription(&gp));
        assert!(sees_every_subscription(&owner("system/*.rs", None, None)));
        assert!(sees_every_subscription(&Access::Open));
        // A backend that cannot read records is no administrator.
        assert!(!sees_every_subscription(&owner(
            "system/Subscription.cruds",
            None,
            None
        )));
    }

    #[test]
    fn what_a_subscription_owner_is_told_of() {
        let circle = |id: &str| Holder::Circle(vec![("Practitioner".to_owned(), id.to_owned())]);
        let cases: Vec<(Access, &str, Option<Holder>)> = vec![
            (
                owner("system/*.read", None, None),
                "Encounter",
                Some(Holder::Free),
            ),
            (owner("system/Patient.read", None, None), "Encounter", None),
            (
                owner("system/*.rs", None, None),
                "Observation",
                Some(Holder::Free),
            ),
            (
                owner("patient/*.read", None, Some("p1")),
                "Encounter",
                Some(Holder::Patient("p1".to_owned())),
            ),
            // Directory data is nobody's record.
            (
                owner("patient/*.read", None, Some("p1")),
                "Practitioner",
                Some(Holder::Free),
            ),
            // patient/ scopes without a patient grant nothing.
            (owner("patient/*.read", None, None), "Encounter", None),
            (
                owner("user/*.read", Some("Practitioner/gp1"), None),
                "CommunicationRequest",
                Some(circle("gp1")),
            ),
            (
                owner(
                    "user/*.read",
                    Some("https://h.example/fhir/Practitioner/gp1"),
                    None,
                ),
                "Encounter",
                Some(circle("gp1")),
            ),
            // A user/ client that names no user is told nothing of records.
            (owner("user/*.read", None, None), "Encounter", None),
            // Write-only: nothing.
            (owner("system/*.cud", None, None), "Encounter", None),
        ];
        for (access, res_type, expected) in cases {
            let told = told_of(&access, res_type);
            assert_eq!(
                told.clone().map(|(h, _)| h),
                expected,
                "{access:?} {res_type}"
            );
            assert!(told.is_none_or(|(_, query)| query.is_empty()));
        }
        // Restricted to a search: what matches it; by two searches: nothing.
        let labs = owner(
            "patient/Observation.rs?category=laboratory",
            None,
            Some("p1"),
        );
        assert_eq!(
            told_of(&labs, "Observation"),
            Some((
                Holder::Patient("p1".to_owned()),
                vec![("category".to_owned(), "laboratory".to_owned())]
            ))
        );
        let two = owner(
            "system/Observation.rs?category=laboratory system/Observation.rs?status=final",
            None,
            None,
        );
        assert_eq!(told_of(&two, "Observation"), None);
        // Open access has no owner to keep; an owner that no longer reads is none.
        assert!(Access::Open.owner().is_none());
        assert!(Access::of_owner(serde_json::json!({"grants": "?"})).is_none());
    }

    fn parts(mode: &str) -> AuthParts {
        AuthParts {
            mode: Some(mode.to_owned()),
            issuer: Some("https://auth.example.fr/realms/sante".to_owned()),
            audience: Some("https://passerelle.example.fr/fhir".to_owned()),
            jwks_url: Some("https://auth.example.fr/realms/sante/certs".to_owned()),
            ..AuthParts::default()
        }
    }

    #[test]
    fn settings_and_where_the_server_may_listen() {
        let public: SocketAddr = "0.0.0.0:8080".parse().unwrap_or_else(|_| unreachable!());
        let loopback: SocketAddr = "127.0.0.1:8080".parse().unwrap_or_else(|_| unreachable!());
        let unset = AuthSetting::from_parts(AuthParts::default());
        assert_eq!(unset, Ok(AuthSetting::Unset));
        assert!(AuthSetting::Unset.check_listen(loopback).is_ok());
        let refused = AuthSetting::Unset.check_listen(public).unwrap_err();
        assert!(refused.contains("PASSERELLE_AUTH=smart"), "{refused}");
        assert!(AuthSetting::None.check_listen(public).is_ok());
        let smart = AuthSetting::from_parts(parts("smart")).expect("complete");
        assert!(smart.check_listen(public).is_ok());
        let mut incomplete = parts("smart");
        incomplete.jwks_url = Some(" ".to_owned());
        incomplete.audience = None;
        let missing = AuthSetting::from_parts(incomplete).unwrap_err();
        assert!(
            missing.contains("PASSERELLE_AUTH_AUDIENCE, PASSERELLE_AUTH_JWKS_URL"),
            "{missing}"
        );
        assert!(AuthSetting::from_parts(parts("oauth")).is_err());
        assert_eq!(
            AuthSetting::from_parts(parts("none")),
            Ok(AuthSetting::None)
        );
    }
}

/// Whose records a client may see of a type, once its scopes allow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// Every resource of the type (`system/` scopes, directory types).
    Free,
    /// The record of one patient (`patient/` scopes, or `user/` scopes of a
    /// patient's own app).
    Patient(String),
    /// The records of the patients whose care circle names these members now
    /// (`user/` scopes of a practitioner, `fhirUser`).
    Circle(Vec<(String, String)>),
}

impl Holder {
    /// The records a search by this holder reaches; `None`: every one.
    pub fn reach(&self) -> Option<crate::search::compartment::Reach<'_>> {
        use crate::search::compartment::Reach;
        match self {
            Holder::Free => None,
            Holder::Patient(patient) => Some(Reach::Patient(patient)),
            Holder::Circle(members) => Some(Reach::Circle(members)),
        }
    }
}

/// Who a `user/` token stands for, as members of care circles.
fn user_members(access: &Access) -> FhirResult<Holder> {
    let Access::Token(principal) = access else {
        return Ok(Holder::Free);
    };
    let user = principal.fhir_user.as_deref().unwrap_or_default();
    // fhirUser may be absolute: its last two segments name the resource.
    let mut segments = user.rsplit('/');
    let (id, t) = (
        segments.next().unwrap_or_default(),
        segments.next().unwrap_or_default(),
    );
    match t {
        "Patient" => Ok(Holder::Patient(id.to_owned())),
        "Practitioner" | "PractitionerRole" if !id.is_empty() => {
            Ok(Holder::Circle(vec![(t.to_owned(), id.to_owned())]))
        }
        _ => Err(FhirError::Forbidden(
            "user/ scopes on a patient's record need a fhirUser claim naming a Practitioner, PractitionerRole or Patient".to_owned(),
        )),
    }
}

/// Refuses a request (`method`, by REST or in a Bundle) changing a `res_type`
/// resource that a client held to patients' records or care circles may not
/// change: roles decide whose circles a practitioner is in (a role's
/// practitioner is her), so such a token does not write them.
pub fn may_change(access: &Access, method: &str, res_type: &str) -> FhirResult<()> {
    if res_type == "PractitionerRole"
        && !matches!(method, "GET" | "HEAD")
        && holder(access, "Patient", Interaction::Read, false)? != Holder::Free
    {
        return Err(FhirError::Forbidden(
            "a token held to patients' records or care circles does not write PractitionerRoles: a role's practitioner is in the circles that name it".to_owned(),
        ));
    }
    Ok(())
}

/// Whose records of `res_type` the client may see for `interaction`. A
/// practitioner who breaks the glass (a reason given) sees any record, audited.
pub fn holder(
    access: &Access,
    res_type: &str,
    interaction: Interaction,
    break_glass: bool,
) -> FhirResult<Holder> {
    use crate::auth::scopes::{Context, Decision};
    // Every type: held as the widest record type is.
    let res_type = match res_type {
        EVERY_TYPE => "Patient",
        t => t,
    };
    if !crate::search::compartment::in_patient_compartment(res_type) {
        return Ok(Holder::Free);
    }
    let context = match access.decide(res_type, interaction) {
        Decision::Allowed(context) => context,
        Decision::Restricted(list) => match list.first() {
            Some((context, _)) => *context,
            None => return Err(denied(res_type, interaction)),
        },
        Decision::Denied => return Err(denied(res_type, interaction)),
    };
    match context {
        Context::System => Ok(match access {
            Access::Token(principal) => match &principal.organizations {
                Some(ids) => Holder::Circle(
                    ids.iter()
                        .map(|id| ("Organization".to_owned(), id.clone()))
                        .collect(),
                ),
                None => Holder::Free,
            },
            Access::Open => Holder::Free,
        }),
        Context::Patient => Ok(Holder::Patient(
            access.patient().unwrap_or_default().to_owned(),
        )),
        Context::User => match user_members(access)? {
            Holder::Circle(_) if break_glass => Ok(Holder::Free),
            held => Ok(held),
        },
    }
}

/// Whether a client sees every Subscription: one held by its scopes alone (a
/// backend, or authentication off). Any other sees those it wrote
/// ([`owns`]): a Subscription's channel holds its receiver's headers, and its
/// events the resources it was told of.
pub fn sees_every_subscription(access: &Access) -> bool {
    matches!(
        holder(access, "Patient", Interaction::Read, false),
        Ok(Holder::Free)
    )
}

/// Whether the client wrote what is stored with `owner` (a Subscription, an
/// export): the same client, for the same user (`sub` and `fhirUser`) and the
/// same patient in context.
pub fn owns(access: &Access, owner: Option<&serde_json::Value>) -> bool {
    let (Some(key), Some(owner)) = (owner_key(access), owner) else {
        return false;
    };
    key.iter()
        .all(|(field, value)| owner[field.as_str()].as_str() == value.as_deref())
}

/// What makes a client the owner of a Subscription ([`owns`]): the fields of its
/// filed owner (`Access::owner`) and their values, the same client for the same
/// user and launch patient; `None` without a token.
pub fn owner_key(access: &Access) -> Option<Vec<(String, Option<String>)>> {
    let Access::Token(principal) = access else {
        return None;
    };
    Some(vec![
        ("client".to_owned(), principal.client.clone()),
        ("subject".to_owned(), principal.subject.clone()),
        ("fhir_user".to_owned(), principal.fhir_user.clone()),
        ("patient".to_owned(), principal.patient.clone()),
    ])
}

/// Whose resources of `res_type` a subscription's owner (its stored `Principal`)
/// may be told of: those of the holder, and with a scope restricted to a search
/// (`?category=…`), those that match it (its query). `None` when its scopes do
/// not let it read the type, or restrict it by several searches.
pub fn told_of(owner: &Access, res_type: &str) -> Option<(Holder, Vec<(String, String)>)> {
    let query = match owner.decide(res_type, Interaction::Read) {
        Decision::Allowed(_) => Vec::new(),
        Decision::Restricted(list) if list.len() == 1 => list[0].1.to_vec(),
        Decision::Restricted(_) | Decision::Denied => return None,
    };
    match holder(owner, res_type, Interaction::Read, false) {
        // patient/ scopes without a patient in context grant nothing.
        Ok(Holder::Patient(patient)) if patient.is_empty() => None,
        held => held.ok().map(|h| (h, query)),
    }
}
