//! CORS, for browser apps (a SMART app runs in the practitioner's browser, on
//! another origin than the server): `PASSERELLE_CORS_ORIGINS` names the origins
//! allowed (or `*` in development). A preflight from an allowed origin is
//! answered here, before authentication (browsers send no token with it); every
//! answer to an allowed origin says so and exposes the headers a FHIR client
//! reads. An origin not allowed gets no CORS header: the browser keeps the
//! answer from the app.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::state::AppState;

/// The origins browser apps may call the server from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CorsOrigins {
    /// No CORS headers at all (the default).
    #[default]
    None,
    /// Any origin (`*`: development).
    Any,
    /// These origins (`https://app.example.fr`), exactly.
    List(Vec<String>),
}

/// What a FHIR client reads of an answer besides the simple headers.
const EXPOSED: &str =
    "ETag, Location, Content-Location, Last-Modified, WWW-Authenticate, Retry-After";

/// What a preflight allows when it names no headers.
const ALLOWED_HEADERS: &str =
    "Authorization, Content-Type, Accept, If-Match, If-None-Exist, If-None-Match, If-Modified-Since, Prefer, X-Break-Glass";

const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE";

impl CorsOrigins {
    /// `PASSERELLE_CORS_ORIGINS`: empty, `*`, or origins separated by commas or
    /// spaces, each `scheme://host[:port]` without a path. Pure.
    pub fn parse(text: &str) -> Result<CorsOrigins, String> {
        let origins: Vec<&str> = text
            .split([',', ' '])
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .collect();
        if origins.is_empty() {
            return Ok(CorsOrigins::None);
        }
        if origins == ["*"] {
            return Ok(CorsOrigins::Any);
        }
        let mut list = Vec::with_capacity(origins.len());
        for origin in origins {
            // A browser's Origin has no trailing slash; a deployer's may.
            let origin = origin.strip_suffix('/').unwrap_or(origin);
            let rest = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"));
            match rest {
                Some(host) if !host.is_empty() && !host.contains(['/', '*', '?', '#']) => {
                    list.push(origin.to_owned())
                }
                _ => {
                    return Err(format!(
                        "PASSERELLE_CORS_ORIGINS: '{origin}' is not an origin (https://host[:port]), nor '*' alone"
                    ))
                }
            }
        }
        Ok(CorsOrigins::List(list))
    }

    /// The `Access-Control-Allow-Origin` for a request from `origin`, if allowed.
    fn allow(&self, origin: &str) -> Option<&str> {
        match self {
            CorsOrigins::None => None,
            CorsOrigins::Any => Some("*"),
            CorsOrigins::List(list) => list.iter().find(|o| *o == origin).map(String::as_str),
        }
    }
}

/// The CORS headers of an answer to an allowed origin.
fn decorate(headers: &mut HeaderMap, allow_origin: &str) {
    if let Ok(value) = HeaderValue::from_str(allow_origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    }
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED),
    );
}

/// The middleware: preflights answered, answers to allowed origins decorated.
pub async fn cors(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Some(allow_origin) = origin
        .as_deref()
        .and_then(|o| state.settings.cors.allow(o))
        .map(str::to_owned)
    else {
        return next.run(req).await;
    };
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let asked_headers = req
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .cloned()
            .unwrap_or(HeaderValue::from_static(ALLOWED_HEADERS));
        let mut answer = StatusCode::NO_CONTENT.into_response();
        let headers = answer.headers_mut();
        decorate(headers, &allow_origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOWED_METHODS),
        );
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked_headers);
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        return answer;
    }
    let mut answer = next.run(req).await;
    decorate(answer.headers_mut(), &allow_origin);
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_origins_are_allowed() {
        assert_eq!(CorsOrigins::parse(""), Ok(CorsOrigins::None));
        assert_eq!(CorsOrigins::parse(" * "), Ok(CorsOrigins::Any));
        let list =
            CorsOrigins::parse("https://app.example.fr, http://localhost:3000/").expect("origins");
        assert_eq!(
            list.allow("https://app.example.fr"),
            Some("https://app.example.fr")
        );
        assert_eq!(
            list.allow("http://localhost:3000"),
            Some("http://localhost:3000")
        );
        assert_eq!(list.allow("https://evil.example"), None);
        assert_eq!(CorsOrigins::Any.allow("https://any.example"), Some("*"));
        assert_eq!(CorsOrigins::None.allow("https://app.example.fr"), None);
        for bad in [
            "app.example.fr",
            "https://",
            "https://a.fr/path",
            "*, https://a.fr",
            "https://*.fr",
        ] {
            assert!(CorsOrigins::parse(bad).is_err(), "{bad}");
        }
    }
}
