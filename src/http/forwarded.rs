//! The public address of a request behind a reverse proxy: `Forwarded` (RFC 7239)
//! and `X-Forwarded-Proto`/`-Host`/`-Prefix`, believed only from the proxies
//! listed in `PASSERELLE_TRUSTED_PROXIES` (anyone else could make the server
//! write links to a host of their choosing). Pure.

use std::net::IpAddr;

use axum::http::{header, HeaderMap};

/// Addresses and CIDR blocks of the proxies whose forwarding headers count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// `10.0.0.5,10.1.0.0/16,::1`; empty: none.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut blocks = Vec::new();
        for item in text.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (address, bits) = match item.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (item, None),
            };
            let address: IpAddr = address
                .parse()
                .map_err(|_| format!("'{item}' is not an IP address or CIDR block"))?;
            let address = address.to_canonical();
            let max = if address.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                None => max,
                Some(b) => b
                    .parse::<u8>()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| format!("'{item}': the prefix length must be 0 to {max}"))?,
            };
            blocks.push((address, bits));
        }
        Ok(TrustedProxies(blocks))
    }

    pub fn trusts(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.0
            .iter()
            .any(|&(block, bits)| within(peer, block, bits))
    }
}

fn within(peer: IpAddr, block: IpAddr, bits: u8) -> bool {
    let (peer, block, width) = match (peer, block) {
        (IpAddr::V4(p), IpAddr::V4(b)) => (u32::from(p) as u128, u32::from(b) as u128, 32),
        (IpAddr::V6(p), IpAddr::V6(b)) => (u128::from(p), u128::from(b), 128),
        _ => return false,
    };
    let shift = width - u32::from(bits);
    shift >= width || (peer >> shift) == (block >> shift)
}

/// The FHIR base a client used, as `scheme://host[prefix]/fhir`: from the
/// forwarding headers when `peer` is a trusted proxy, from `Host` otherwise.
pub fn public_base(headers: &HeaderMap, peer: Option<IpAddr>, trusted: &TrustedProxies) -> String {
    let host_header = header_str(headers, header::HOST.as_str())
        .filter(|h| is_authority(h))
        .unwrap_or("localhost");
    let mut origin = Origin {
        scheme: "http",
        host: host_header.to_owned(),
        prefix: String::new(),
    };
    if peer.is_some_and(|p| trusted.trusts(p)) {
        origin.apply_forwarded(headers);
    }
    format!("{}://{}{}/fhir", origin.scheme, origin.host, origin.prefix)
}

struct Origin {
    scheme: &'static str,
    host: String,
    prefix: String,
}

impl Origin {
    /// What the proxy says the client saw. `Forwarded` comes first; each value is
    /// checked, and one that is not a scheme, an authority or a path is ignored.
    fn apply_forwarded(&mut self, headers: &HeaderMap) {
        let forwarded = header_str(headers, "forwarded").map(last_forwarded_element);
        let proto = forwarded
            .as_ref()
            .and_then(|f| f.proto.clone())
            .or_else(|| last_value(headers, "x-forwarded-proto"));
        let host = forwarded
            .as_ref()
            .and_then(|f| f.host.clone())
            .or_else(|| last_value(headers, "x-forwarded-host"));
        match proto.as_deref().map(str::to_ascii_lowercase).as_deref() {
            Some("https") => self.scheme = "https",
            Some("http") => self.scheme = "http",
            _ => {}
        }
        if let Some(host) = host.filter(|h| is_authority(h)) {
            self.host = host;
        }
        if let Some(prefix) = last_value(headers, "x-forwarded-prefix").filter(|p| is_prefix(p)) {
            self.prefix = prefix.trim_end_matches('/').to_owned();
        }
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The last of a comma-separated header's values: the one the trusted peer set
/// (a proxy that appends leaves the client's own values before it).
fn last_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let value = header_str(headers, name)?.rsplit(',').next()?.trim();
    (!value.is_empty()).then(|| value.to_owned())
}

#[derive(Debug, Default, PartialEq, Eq)]
struct ForwardedElement {
    proto: Option<String>,
    host: Option<String>,
}

/// `proto` and `host` of the last element of a `Forwarded` header (the trusted
/// peer's; RFC 7239 proxies append theirs).
fn last_forwarded_element(value: &str) -> ForwardedElement {
    let mut element = ForwardedElement::default();
    let last = value.rsplit(',').next().unwrap_or("");
    for pair in last.split(';') {
        let Some((key, raw)) = pair.split_once('=') else {
            continue;
        };
        let value = raw.trim().trim_matches('"').to_owned();
        match key.trim().to_ascii_lowercase().as_str() {
            "proto" => element.proto = Some(value),
            "host" => element.host = Some(value),
            _ => {}
        }
    }
    element
}

/// A host with an optional port, nothing that would change a link's meaning.
fn is_authority(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 255
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']' | '_'))
}

/// A path prefix such as `/passerelle`.
fn is_prefix(text: &str) -> bool {
    text.starts_with('/')
        && text.len() <= 255
        && !text.contains("//")
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '-' | '_' | '.' | '~'))
        && !text.split('/').any(|segment| segment == "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().expect("header value"));
        }
        map
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().expect("ip"))
    }

    #[test]
    fn proxies_by_address_and_block() {
        let trusted = TrustedProxies::parse("10.0.0.5, 192.168.0.0/16,::1").expect("parse");
        assert!(trusted.trusts("10.0.0.5".parse().expect("ip")));
        assert!(!trusted.trusts("10.0.0.6".parse().expect("ip")));
        assert!(trusted.trusts("192.168.40.1".parse().expect("ip")));
        assert!(!trusted.trusts("192.169.0.1".parse().expect("ip")));
        assert!(trusted.trusts("::1".parse().expect("ip")));
        // An IPv4 peer seen on an IPv6 socket.
        assert!(trusted.trusts("::ffff:10.0.0.5".parse().expect("ip")));
        assert!(TrustedProxies::parse("0.0.0.0/0")
            .expect("parse")
            .trusts("8.8.8.8".parse().expect("ip")));
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("proxy.local").is_err());
        assert_eq!(
            TrustedProxies::parse("").expect("empty"),
            TrustedProxies::default()
        );
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        let trusted = TrustedProxies::parse("127.0.0.1").expect("parse");
        let h = headers(&[
            ("host", "10.1.1.1:8080"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "fhir.chu-limoges.fr"),
            ("x-forwarded-prefix", "/passerelle/"),
        ]);
        assert_eq!(
            public_base(&h, ip("127.0.0.1"), &trusted),
            "https://fhir.chu-limoges.fr/passerelle/fhir"
        );
        assert_eq!(
            public_base(&h, ip("203.0.113.9"), &trusted),
            "http://10.1.1.1:8080/fhir"
        );
        assert_eq!(public_base(&h, None, &trusted), "http://10.1.1.1:8080/fhir");
    }

    #[test]
    fn forwarded_comes_first_and_bad_values_are_ignored() {
        let trusted = TrustedProxies::parse("127.0.0.1").expect("parse");
        let h = headers(&[
            ("host", "backend:8080"),
            (
                "forwarded",
                "for=192.0.2.60;host=evil.example, for=10.0.0.1;proto=https;host=\"dac.example.fr:8443\"",
            ),
            ("x-forwarded-host", "other.example.fr"),
        ]);
        assert_eq!(
            public_base(&h, ip("127.0.0.1"), &trusted),
            "https://dac.example.fr:8443/fhir"
        );
        let bad = headers(&[
            ("host", "backend:8080"),
            ("x-forwarded-proto", "javascript"),
            ("x-forwarded-host", "evil.example/path?"),
            ("x-forwarded-prefix", "/../admin"),
        ]);
        assert_eq!(
            public_base(&bad, ip("127.0.0.1"), &trusted),
            "http://backend:8080/fhir"
        );
    }

    #[test]
    fn a_bad_host_header_gives_localhost() {
        let h = headers(&[("host", "a b")]);
        assert_eq!(
            public_base(&h, None, &TrustedProxies::default()),
            "http://localhost/fhir"
        );
    }
}
