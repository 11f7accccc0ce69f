//! The HTTP side of delivery: a reqwest client that never connects to an address
//! the endpoint policy forbids (checked on every resolved address, so a name that
//! resolves to 127.0.0.1 is refused too), follows no redirect and uses no proxy;
//! and the HMAC-SHA256 signature of each body.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use sha2::Sha256;

use crate::subscription::EndpointPolicy;

/// The header carrying `sha256=<hex>` of the body, keyed with the subscription's secret.
pub const SIGNATURE_HEADER: &str = "x-passerelle-signature";
/// `<subscription id>/<event number>` (or `first-last` for a batch): receivers
/// drop what they have already seen.
pub const EVENT_ID_HEADER: &str = "x-passerelle-event-id";

struct PolicyResolver {
    policy: EndpointPolicy,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|a| !policy.forbids(a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(format!(
                    "{host} resolves to no address the endpoint policy allows (loopback, private and link-local are refused)"
                )
                .into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

pub fn http_client(policy: EndpointPolicy, timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(PolicyResolver { policy }))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("Passerelle/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// `sha256=<hex>` of `body` keyed with `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_rfc_4231() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
