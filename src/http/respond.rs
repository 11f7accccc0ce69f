//! Turning results into HTTP responses: headers of versioned resources, Bundles of
//! stored JSON, OperationOutcomes, and the JSON or XML rendering.

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::negotiate::Negotiated;
use crate::error::FhirError;
use crate::fhir::{datetime, Format, FHIR_VERSION};

/// A response before rendering: the body, if any, is FHIR JSON text, or with
/// `raw_type` a body of that type sent as it is (bulk export manifests and files).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Option<String>,
    pub raw_type: Option<&'static str>,
}

impl Reply {
    pub fn new(status: StatusCode, body: Option<String>) -> Self {
        Reply {
            status,
            headers: HeaderMap::new(),
            body,
            raw_type: None,
        }
    }

    pub fn raw(status: StatusCode, content_type: &'static str, body: String) -> Self {
        Reply {
            raw_type: Some(content_type),
            ..Reply::new(status, Some(body))
        }
    }

    pub fn header(mut self, name: HeaderName, value: &str) -> Self {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers.insert(name, v);
        }
        self
    }

    /// ETag, Last-Modified and Content-Location of one version of a resource.
    pub fn versioned(self, base: &str, v: &VersionRef<'_>) -> Self {
        self.header(header::ETAG, &format!("W/\"{}\"", v.version_id))
            .header(
                header::LAST_MODIFIED,
                &datetime::format_http_date(v.last_updated),
            )
            .header(header::CONTENT_LOCATION, &v.url(base))
    }
}

/// What names one version: enough for headers and links.
pub struct VersionRef<'a> {
    pub res_type: &'a str,
    pub res_id: &'a str,
    pub version_id: i64,
    pub last_updated: DateTime<Utc>,
}

impl VersionRef<'_> {
    pub fn url(&self, base: &str) -> String {
        format!(
            "{base}/{}/{}/_history/{}",
            self.res_type, self.res_id, self.version_id
        )
    }
}

/// How to render: the negotiated format and `_pretty`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rendering {
    pub negotiated: Negotiated,
    pub pretty: bool,
}

pub fn render(reply: Reply, how: Rendering) -> Response {
    let Reply {
        status,
        headers,
        body,
        raw_type,
    } = reply;
    if let Some(content_type) = raw_type {
        let mut response = Response::new(Body::from(body.unwrap_or_default()));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        return response;
    }
    let bytes = match body.map(|json| encode(json, how)) {
        None => None,
        Some(Ok(bytes)) => Some(bytes),
        Some(Err(err)) => return error_response(&err, Rendering::default()),
    };
    let has_body = bytes.is_some();
    let mut response = Response::new(bytes.map_or_else(Body::empty, Body::from));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    if has_body {
        let content_type = format!(
            "{}; charset=utf-8; fhirVersion={}",
            how.negotiated.mime,
            &FHIR_VERSION[..3]
        );
        if let Ok(v) = HeaderValue::from_str(&content_type) {
            response.headers_mut().insert(header::CONTENT_TYPE, v);
        }
    }
    response
}

fn encode(json: String, how: Rendering) -> Result<Vec<u8>, FhirError> {
    match (how.negotiated.format, how.pretty) {
        (Format::Json, false) => Ok(json.into_bytes()),
        (Format::Json, true) => serde_json::from_str::<Value>(&json)
            .and_then(|v| serde_json::to_vec_pretty(&v))
            .map_err(|e| FhirError::Internal(format!("pretty-printing: {e}"))),
        // Only content the typed model cannot hold gets here (see fhir::parse_resource).
        (Format::Xml, pretty) => crate::fhir::xml::from_json(&json, pretty).map_err(|e| {
            FhirError::NotAcceptable(format!(
                "this content cannot be written as XML ({e}); ask for JSON"
            ))
        }),
    }
}

/// A `WWW-Authenticate: Bearer …` challenge (RFC 6750): no error code when no
/// token came, else why, in a quoted string of plain characters.
fn bearer_challenge(message: &str, challenge: crate::error::Challenge) -> String {
    use crate::error::Challenge;
    let error = match challenge {
        Challenge::Missing => return "Bearer realm=\"passerelle\"".to_owned(),
        Challenge::Invalid => "invalid_token",
    };
    let description: String = message
        .chars()
        .filter(|c| (' '..='~').contains(c) && *c != '"' && *c != '\\')
        .collect();
    format!("Bearer realm=\"passerelle\", error=\"{error}\", error_description=\"{description}\"")
}

/// An error as an OperationOutcome response. Server faults are logged here.
pub fn error_response(err: &FhirError, how: Rendering) -> Response {
    let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_server_error() {
        tracing::error!(error = %err, "request failed");
    }
    let body = err.operation_outcome().to_string();
    let mut reply = Reply::new(status, Some(body));
    if let FhirError::MethodNotAllowed(_) = err {
        reply = reply.header(header::ALLOW, "GET, HEAD, POST, PUT, PATCH, DELETE");
    }
    if let FhirError::Unauthorized { message, challenge } = err {
        reply = reply.header(
            header::WWW_AUTHENTICATE,
            &bearer_challenge(message, *challenge),
        );
    }
    if status == StatusCode::SERVICE_UNAVAILABLE {
        reply = reply.header(header::RETRY_AFTER, "5");
    }
    render(reply, how)
}
