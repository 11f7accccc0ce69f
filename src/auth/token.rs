//! Bearer tokens (JWT) of the configured authorisation server: the signature
//! checked against its JWKS (fetched, kept, fetched again when a token names a
//! key it does not hold), then `iss`, `aud`, `exp` and `nbf`. The cryptography is
//! `jsonwebtoken`'s; `alg: none` and HMAC (a shared secret, not a server's key)
//! are never accepted.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

use super::SmartSettings;

/// The signature algorithms accepted: RSA and elliptic curves.
const ACCEPTED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 30;

/// The JWKS is fetched again for an unknown key at most this often, so that
/// tokens naming made-up keys cannot make the server hammer the issuer.
const MIN_REFETCH: Duration = Duration::from_secs(10);

/// Tokens verified and remembered at most (then forgotten all at once).
const MAX_VERIFIED: usize = 4096;

/// Why a token is refused (401).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a well-formed signed JWT: {0}")]
    Malformed(String),
    #[error("tokens signed with {0:?} are not accepted (RS256, ES256 and their kin are)")]
    Algorithm(Algorithm),
    #[error("the token's signing key (kid {0:?}) is not among the issuer's keys")]
    UnknownKey(Option<String>),
    #[error("the issuer's keys could not be fetched: {0}")]
    Keys(String),
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token was not issued by the configured issuer")]
    Issuer,
    #[error("the token is not meant for this server (aud)")]
    Audience,
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token is invalid: {0}")]
    Invalid(String),
}

impl TokenError {
    /// The keys that could not be fetched are the server's problem, not the
    /// token's: 503, the token kept.
    pub fn is_server_side(&self) -> bool {
        matches!(self, TokenError::Keys(_))
    }
}

/// A `scope` claim: a space-separated string, or an array (`scp`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum ScopeClaim {
    Text(String),
    List(Vec<String>),
}

/// The claims of a verified token that the server uses.
#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    /// Checked by the signature's verification, and again at each reuse of a
    /// token remembered.
    exp: Option<i64>,
    nbf: Option<i64>,
    pub sub: Option<String>,
    pub client_id: Option<String>,
    pub azp: Option<String>,
    scope: Option<ScopeClaim>,
    scp: Option<ScopeClaim>,
    #[serde(rename = "fhirUser")]
    pub fhir_user: Option<String>,
    /// The launch context's patient (SMART `patient`).
    pub patient: Option<String>,
}

impl Claims {
    /// The granted scopes, space-separated.
    pub fn scopes(&self) -> String {
        match self.scope.as_ref().or(self.scp.as_ref()) {
            Some(ScopeClaim::Text(text)) => text.clone(),
            Some(ScopeClaim::List(list)) => list.join(" "),
            None => String::new(),
        }
    }
}

/// The issuer's keys, as last fetched.
struct Keys {
    set: JwkSet,
    fetched: Option<Instant>,
    /// Why the last fetch failed, if it did: said again until the next one.
    failed: Option<String>,
}

/// Verifies tokens for one configured issuer.
pub struct Verifier {
    settings: SmartSettings,
    client: reqwest::Client,
    keys: RwLock<Keys>,
    /// One fetch at a time.
    fetching: Mutex<()>,
    /// Tokens verified, by their text: a client sends the same token with every
    /// request until it expires, and verifying its signature again (the key
    /// decoded from its JWK, an RSA or EC check) was most of what authenticating
    /// a request cost. Its times are checked at each reuse; all are forgotten
    /// when the keys are fetched again (a withdrawn key stops its tokens).
    verified: std::sync::Mutex<HashMap<String, Claims>>,
}

impl Verifier {
    pub fn new(settings: SmartSettings) -> Self {
        Verifier {
            settings,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            keys: RwLock::new(Keys {
                set: JwkSet { keys: Vec::new() },
                fetched: None,
                failed: None,
            }),
            fetching: Mutex::new(()),
            verified: std::sync::Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &SmartSettings {
        &self.settings
    }

    /// Fetches the JWKS, unless it was fetched less than [`MIN_REFETCH`] ago.
    async fn refresh(&self) -> Result<(), TokenError> {
        let _one = self.fetching.lock().await;
        {
            let keys = self.keys.read().await;
            if keys.fetched.is_some_and(|at| at.elapsed() < MIN_REFETCH) {
                // Fetched a moment ago: its keys stand, or its failure does.
                return match &keys.failed {
                    Some(e) => Err(TokenError::Keys(e.clone())),
                    None => Ok(()),
                };
            }
        }
        let fetched = async {
            let response = self
                .client
                .get(&self.settings.jwks_url)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("the JWKS URL answered {}", response.status()));
            }
            response.json::<JwkSet>().await.map_err(|e| e.to_string())
        }
        .await;
        let mut keys = self.keys.write().await;
        keys.fetched = Some(Instant::now());
        match fetched {
            Ok(set) => {
                keys.set = set;
                keys.failed = None;
                self.remembered().clear();
                Ok(())
            }
            Err(e) => {
                tracing::warn!(url = %self.settings.jwks_url, error = %e, "JWKS not fetched");
                keys.failed = Some(e.clone());
                Err(TokenError::Keys(e))
            }
        }
    }

    /// The keys that may have signed a token with this header.
    async fn candidates(&self, kid: Option<&str>) -> Vec<Jwk> {
        let keys = self.keys.read().await;
        keys.set
            .keys
            .iter()
            .filter(|k| kid.is_none() || k.common.key_id.as_deref() == kid)
            .cloned()
            .collect()
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, HashMap<String, Claims>> {
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The claims of a token verified before, while its times still hold.
    fn recall(&self, token: &str) -> Option<Claims> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let leeway = LEEWAY_SECONDS as i64;
        let mut remembered = self.remembered();
        let claims = remembered.get(token)?;
        let current = claims.exp.is_some_and(|exp| now < exp + leeway)
            && claims.nbf.is_none_or(|nbf| nbf - leeway <= now);
        if current {
            return Some(claims.clone());
        }
        // Out of its times: verified again, it is refused with the reason.
        remembered.remove(token);
        None
    }

    fn remember(&self, token: &str, claims: &Claims) {
        let mut remembered = self.remembered();
        if remembered.len() >= MAX_VERIFIED {
            remembered.clear();
        }
        remembered.insert(token.to_owned(), claims.clone());
    }

    /// Verifies a token (or recalls it verified) and returns its claims.
    pub async fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        if let Some(claims) = self.recall(token) {
            return Ok(claims);
        }
        let claims = self.verify_signed(token).await?;
        self.remember(token, &claims);
        Ok(claims)
    }

    /// Verifies a token's signature, issuer, audience and times.
    async fn verify_signed(&self, token: &str) -> Result<Claims, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenError::Malformed(e.to_string()))?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(TokenError::Algorithm(header.alg));
        }
        let kid = header.kid.as_deref();
        let mut keys = self.candidates(kid).await;
        if keys.is_empty() {
            self.refresh().await?;
            keys = self.candidates(kid).await;
        }
        if keys.is_empty() {
            return Err(TokenError::UnknownKey(header.kid.clone()));
        }
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let mut last = TokenError::UnknownKey(header.kid.clone());
        for jwk in keys {
            // A key published for one algorithm is used for that one only.
            let declared = jwk
                .common
                .key_algorithm
                .map(|a| format!("{a:?}"))
                .filter(|a| *a != format!("{:?}", header.alg));
            if declared.is_some() {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => last = refusal(e),
            }
        }
        Err(last)
    }
}

fn refusal(error: jsonwebtoken::errors::Error) -> TokenError {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidIssuer => TokenError::Issuer,
        ErrorKind::InvalidAudience => TokenError::Audience,
        ErrorKind::InvalidSignature => TokenError::Signature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            TokenError::Invalid("the key does not match the token's algorithm".to_owned())
        }
        _ => TokenError::Invalid(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_token_is_recalled_only_while_its_times_hold() {
        let verifier = Verifier::new(SmartSettings {
            issuer: "https://auth.example.fr".to_owned(),
            audience: "https://passerelle.example.fr/fhir".to_owned(),
            jwks_url: "https://auth.example.fr/certs".to_owned(),
            authorize_url: None,
            token_url: None,
            client_organizations: Default::default(),
        });
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let claims = |exp: i64, nbf: Option<i64>| {
            serde_json::from_value::<Claims>(
                serde_json::json!({"exp": exp, "nbf": nbf, "scope": "system/*.rs"}),
            )
            .expect("claims")
        };
        verifier.remember("current", &claims(now + 60, Some(now - 5)));
        verifier.remember("expired", &claims(now - 60, None));
        verifier.remember("not-yet", &claims(now + 600, Some(now + 300)));
        let recalled = verifier.recall("current").expect("recalled");
        assert_eq!(recalled.scopes(), "system/*.rs");
        assert!(verifier.recall("expired").is_none());
        assert!(verifier.recall("not-yet").is_none());
        assert!(verifier.recall("never-seen").is_none());
        // A token out of its times is forgotten (verified again, it is refused
        // with the reason); the others stay until the keys change.
        assert_eq!(verifier.remembered().len(), 1);
    }
}
