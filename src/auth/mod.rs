//! Who is asking: SMART on FHIR bearer tokens checked at the edge, and what their
//! scopes let the client do. `PASSERELLE_AUTH=smart` checks every request's token
//! against the configured issuer; `none` serves anyone (development, said loudly
//! at start); unset, the server serves anyone only while it listens on loopback.

pub mod scopes;
pub mod token;

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
                let settings = SmartSettings {
                    issuer: need("PASSERELLE_AUTH_ISSUER", parts.issuer),
                    audience: need("PASSERELLE_AUTH_AUDIENCE", parts.audience),
                    jwks_url: need("PASSERELLE_AUTH_JWKS_URL", parts.jwks_url),
                    authorize_url: given(parts.authorize_url),
                    token_url: given(parts.token_url),
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

/// The client behind a verified token.
#[derive(Debug, Clone)]
pub struct Principal {
    /// `client_id` (or `azp`).
    pub client: Option<String>,
    pub subject: Option<String>,
    /// `fhirUser`: the Practitioner, PractitionerRole or Patient using the client.
    pub fhir_user: Option<String>,
    /// The launch context's patient id.
    pub patient: Option<String>,
    pub grants: Vec<Grant>,
}

impl Principal {
    pub fn from_claims(claims: token::Claims) -> Principal {
        let mut grants = scopes::parse_scopes(&claims.scopes());
        // `patient/` scopes mean nothing without a patient in context.
        let patient = claims
            .patient
            .map(|p| p.strip_prefix("Patient/").map_or(p.clone(), str::to_owned))
            .filter(|p| !p.is_empty());
        if patient.is_none() {
            grants.retain(|g| g.context != Context::Patient);
        }
        Principal {
            client: claims.client_id.or(claims.azp),
            subject: claims.sub,
            fhir_user: claims.fhir_user,
            patient,
            grants,
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
            Decision::Denied => Err(FhirError::Forbidden(format!(
                "the token's scopes do not allow '{}' on {res_type}",
                interaction.letter()
            ))),
            Decision::Restricted(_) => Err(FhirError::Forbidden(format!(
                "the token's scopes allow '{}' on {res_type} only for the resources of a search restriction (?…): search with it",
                interaction.letter()
            ))),
        }
    }

    /// The patient of a `patient/` context.
    pub fn patient(&self) -> Option<&str> {
        match self {
            Access::Token(principal) => principal.patient.as_deref(),
            Access::Open => None,
        }
    }
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
    for (name, value) in params {
        let base = name.split(':').next().unwrap_or_default();
        match base {
            "_include" => {
                for include in value.split(',') {
                    let parts: Vec<&str> = include.split(':').collect();
                    let targets: Vec<String> = match parts.as_slice() {
                        [_, _, target] => vec![(*target).to_owned()],
                        [source, param] => table
                            .get(source, param)
                            .map(|p| p.targets.clone())
                            .unwrap_or_default(),
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
            "_has" => {
                // `_has:Type:param:…`
                let source = name.split(':').nth(1).unwrap_or(EVERY_TYPE);
                reached.push((source.to_owned(), Interaction::Search));
            }
            _ if name.contains('.') => {
                // `param:Type.chained` or `param.chained`: the type named, else
                // the parameter's targets.
                let first = base.split('.').next().unwrap_or_default();
                let named = name
                    .split('.')
                    .next()
                    .and_then(|head| head.split_once(':'))
                    .map(|(_, t)| t.to_owned());
                let targets = match named {
                    Some(t) => vec![t],
                    None => table
                        .get(res_type, first)
                        .map(|p| p.targets.clone())
                        .unwrap_or_else(|| vec![EVERY_TYPE.to_owned()]),
                };
                reached.extend(targets.into_iter().map(|t| (t, Interaction::Search)));
            }
            _ => {}
        }
    }
    reached
}

#[cfg(test)]
mod tests {
    use super::*;

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
