//! Which callback endpoints the server may call (SSRF policy): by default `https`
//! to public addresses only. Checked when a Subscription is written (the URL as
//! written) and again at delivery on every address the name resolves to. Pure.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, Copy, Default)]
pub struct EndpointPolicy {
    /// `http://` and loopback, private or link-local addresses allowed
    /// (`PASSERELLE_ALLOW_INSECURE_ENDPOINTS=true`): tests and development only.
    pub allow_insecure: bool,
    /// An SMTP server is configured (`PASSERELLE_SMTP_URL`): `mailto:` endpoints
    /// (email channels, secure-mail Endpoints) are accepted.
    pub email: bool,
}

/// The address of a `mailto:` URL (`mailto:dr.lenoir@medecin.mssante.fr`): one
/// address, a local part and a domain, nothing else.
pub fn mail_address(endpoint: &str) -> Option<&str> {
    let address = endpoint.strip_prefix("mailto:")?;
    let (local, domain) = address.split_once('@')?;
    let plain = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c))
    };
    (plain(local) && plain(domain) && domain.contains('.')).then_some(address)
}

impl EndpointPolicy {
    /// Why the server refuses to write to `mailto:` `endpoint`, if it does.
    pub fn mail_refusal(&self, endpoint: &str) -> Option<String> {
        if !self.email {
            return Some(
                "no SMTP server is configured (PASSERELLE_SMTP_URL): notices by secure mail are refused"
                    .to_owned(),
            );
        }
        match mail_address(endpoint) {
            Some(_) => None,
            None => Some(format!("'{endpoint}' is not a mailto: address")),
        }
    }

    /// Why the server refuses to call `endpoint`, if it does.
    pub fn refusal(&self, endpoint: &str) -> Option<String> {
        let url = match url::Url::parse(endpoint) {
            Ok(url) => url,
            Err(e) => return Some(format!("'{endpoint}' is not a valid URL: {e}")),
        };
        match url.scheme() {
            "https" => {}
            "http" if self.allow_insecure => {}
            "http" => {
                return Some(format!(
                    "'{endpoint}' is not https; plain http endpoints are refused unless \
                     PASSERELLE_ALLOW_INSECURE_ENDPOINTS=true"
                ))
            }
            other => return Some(format!("the endpoint scheme '{other}' is not supported")),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Some("credentials in the endpoint URL are refused; use channel.header".into());
        }
        let forbidden = match url.host() {
            None => return Some(format!("'{endpoint}' has no host")),
            Some(url::Host::Ipv4(ip)) => self.forbids(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.forbids(IpAddr::V6(ip)),
            Some(url::Host::Domain(name)) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                !self.allow_insecure && (name == "localhost" || name.ends_with(".localhost"))
            }
        };
        forbidden.then(|| {
            format!(
                "'{endpoint}' is a loopback, private or link-local address; refused unless \
                 PASSERELLE_ALLOW_INSECURE_ENDPOINTS=true"
            )
        })
    }

    /// True when delivery must not connect to `ip`.
    pub fn forbids(&self, ip: IpAddr) -> bool {
        !self.allow_insecure && !is_public(ip)
    }
}

/// Globally routable unicast: not loopback, private, link-local, shared (CGNAT),
/// unspecified, multicast, broadcast or documentation space.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || first == 0x2001 && ip.segments()[1] == 0x0db8) // documentation
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_default_only_public_https() {
        let strict = EndpointPolicy::default();
        assert_eq!(strict.refusal("https://dac-pays-de-loire.fr/hook"), None);
        assert_eq!(strict.refusal("https://93.184.216.34/hook"), None);
        for refused in [
            "http://dac.example.fr/hook",
            "https://127.0.0.1/hook",
            "https://10.0.0.8/hook",
            "https://192.168.1.10:8443/hook",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/hook",
            "https://[fd00::1]/hook",
            "https://[::ffff:127.0.0.1]/hook",
            "https://localhost/hook",
            "https://100.64.0.1/hook",
            "ftp://dac.example.fr/hook",
            "https://user:pw@dac.example.fr/hook",
            "not a url",
        ] {
            assert!(
                strict.refusal(refused).is_some(),
                "{refused} should be refused"
            );
        }
    }

    #[test]
    fn mail_endpoints_need_an_smtp_server_and_one_address() {
        let mail = EndpointPolicy {
            allow_insecure: false,
            email: true,
        };
        assert_eq!(
            mail.mail_refusal("mailto:dr.lenoir@medecin.mssante.fr"),
            None
        );
        assert!(mail.mail_refusal("mailto:a@b.fr,c@d.fr").is_some());
        assert!(mail.mail_refusal("mailto:nobody").is_some());
        assert!(mail.mail_refusal("https://cabinet.example/hook").is_some());
        assert!(EndpointPolicy::default()
            .mail_refusal("mailto:dr.lenoir@medecin.mssante.fr")
            .unwrap()
            .contains("PASSERELLE_SMTP_URL"));
    }

    #[test]
    fn insecure_mode_allows_http_and_loopback() {
        let dev = EndpointPolicy {
            allow_insecure: true,
            email: false,
        };
        assert_eq!(dev.refusal("http://127.0.0.1:8080/hook"), None);
        assert_eq!(dev.refusal("http://localhost/hook"), None);
        assert!(dev.refusal("ftp://127.0.0.1/").is_some());
        assert!(!dev.forbids("10.1.2.3".parse().expect("ip")));
        assert!(EndpointPolicy::default().forbids("10.1.2.3".parse().expect("ip")));
    }
}
