//! The one error type of the server. Every failure a client can see maps to an HTTP
//! status and a FHIR `OperationOutcome` issue; nothing else leaves the process.

use serde_json::{json, Value};

/// One problem found in a request, with the FHIRPath-like location when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// FHIR `IssueType` code (`invalid`, `structure`, `value`, `required`, `not-found` …).
    pub code: &'static str,
    pub message: String,
    pub expression: Option<String>,
}

impl Issue {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Issue {
            code,
            message: message.into(),
            expression: None,
        }
    }

    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression = Some(expression.into());
        self
    }
}

/// What a 401's `WWW-Authenticate` challenge says (RFC 6750).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// No token: no error code.
    Missing,
    /// A token that does not verify: `invalid_token`.
    Invalid,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum FhirError {
    /// 400: the request is malformed (bad id, bad parameter, unparseable body).
    #[error("{}", first_message(.0))]
    BadRequest(Vec<Issue>),
    /// 422: the body parses but is not a valid resource.
    #[error("{}", first_message(.0))]
    Unprocessable(Vec<Issue>),
    /// 401: no usable bearer token.
    #[error("{message}")]
    Unauthorized {
        message: String,
        challenge: Challenge,
    },
    /// 403: the token's scopes do not allow it.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    NotAcceptable(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    /// 408: the client did not send its body in time.
    #[error("{0}")]
    RequestTimeout(String),
    /// 503: the database cannot be reached or the connection was lost before the
    /// commit: nothing was changed, the request may be sent again.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// 503: the connection was lost while committing: the write may or may not
    /// have been saved.
    #[error("connection lost during the commit: {0}")]
    CommitUnknown(String),
    /// 503: large requests already use the memory set aside for them.
    #[error("busy: {0}")]
    Busy(String),
    /// 503: a passing trouble, said as it is (the authorisation server's keys
    /// out of reach, a write saved but not recorded in the audit trail).
    #[error("{0}")]
    Transient(String),
    /// 503: a statement ran past the statement timeout and was cancelled.
    #[error("statement timeout: {0}")]
    StatementTimeout(String),
    /// 500: a fault of the server, never of the input. Details are logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
}

fn first_message(issues: &[Issue]) -> String {
    issues
        .first()
        .map(|i| i.message.clone())
        .unwrap_or_else(|| "invalid request".to_owned())
}

impl FhirError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        FhirError::BadRequest(vec![Issue::new("invalid", message)])
    }

    pub fn status(&self) -> u16 {
        match self {
            FhirError::BadRequest(_) => 400,
            FhirError::Unprocessable(_) => 422,
            FhirError::Unauthorized { .. } => 401,
            FhirError::Forbidden(_) => 403,
            FhirError::NotFound(_) => 404,
            FhirError::Gone(_) => 410,
            FhirError::MethodNotAllowed(_) => 405,
            FhirError::Conflict(_) => 409,
            FhirError::PreconditionFailed(_) => 412,
            FhirError::NotAcceptable(_) => 406,
            FhirError::UnsupportedMediaType(_) => 415,
            FhirError::PayloadTooLarge(_) => 413,
            FhirError::RequestTimeout(_) => 408,
            FhirError::Unavailable(_)
            | FhirError::CommitUnknown(_)
            | FhirError::Busy(_)
            | FhirError::Transient(_)
            | FhirError::StatementTimeout(_) => 503,
            FhirError::Internal(_) => 500,
        }
    }

    fn issues(&self) -> Vec<Issue> {
        let single = |code: &'static str, message: String| vec![Issue::new(code, message)];
        match self {
            FhirError::BadRequest(issues) | FhirError::Unprocessable(issues) => issues.clone(),
            FhirError::Unauthorized { message, .. } => single("login", message.clone()),
            FhirError::Forbidden(m) => single("forbidden", m.clone()),
            FhirError::NotFound(m) | FhirError::Gone(m) => single("not-found", m.clone()),
            FhirError::MethodNotAllowed(m) | FhirError::NotAcceptable(m) => {
                single("not-supported", m.clone())
            }
            FhirError::UnsupportedMediaType(m) => single("not-supported", m.clone()),
            FhirError::Conflict(m) => single("conflict", m.clone()),
            FhirError::PreconditionFailed(m) => single("conflict", m.clone()),
            FhirError::PayloadTooLarge(_) => single("too-costly", self.to_string()),
            FhirError::RequestTimeout(m) => single("timeout", m.clone()),
            FhirError::Unavailable(_) => single(
                "transient",
                "the database is unavailable: nothing was changed; retry later".to_owned(),
            ),
            FhirError::CommitUnknown(_) => single(
                "transient",
                "the database connection was lost while committing: the change may or may not have been saved; read it before sending it again".to_owned(),
            ),
            FhirError::Busy(m) | FhirError::Transient(m) => {
                single("transient", m.clone())
            }
            FhirError::StatementTimeout(_) => single(
                "timeout",
                "the request took longer than the server's statement timeout and was cancelled: nothing was changed".to_owned(),
            ),
            FhirError::Internal(_) => single("exception", "internal server error".to_owned()),
        }
    }

    /// The `OperationOutcome` sent to the client.
    pub fn operation_outcome(&self) -> Value {
        operation_outcome("error", &self.issues())
    }
}

/// Builds an `OperationOutcome` with the given severity for every issue.
pub fn operation_outcome(severity: &str, issues: &[Issue]) -> Value {
    let issues: Vec<Value> = issues
        .iter()
        .map(|issue| {
            let mut v = json!({
                "severity": severity,
                "code": issue.code,
                "diagnostics": issue.message,
            });
            if let Some(expr) = &issue.expression {
                v["expression"] = json!([expr]);
            }
            v
        })
        .collect();
    json!({ "resourceType": "OperationOutcome", "issue": issues })
}

impl From<tokio_postgres::Error> for FhirError {
    fn from(e: tokio_postgres::Error) -> Self {
        if is_connection_lost(&e) {
            return FhirError::Unavailable(e.to_string());
        }
        let class = e
            .as_db_error()
            .and_then(|d| Some((d.code().code().get(..2)?, d.message())));
        match class {
            // Class 57014, query_canceled: the statement timeout (or a cancel).
            _ if e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED) => {
                return FhirError::StatementTimeout(e.to_string())
            }
            // Class 22, data exception: a value the request carried (a search value,
            // a cursor, a string with NUL, a number beyond numeric) that PostgreSQL
            // cannot take. The server only binds values it made itself or the client
            // sent, so this is the client's to correct, not a server fault.
            Some(("22", message)) => {
                return FhirError::bad_request(format!(
                    "a value of the request cannot be used: {message}"
                ))
            }
            // Class 40, transaction rollback: a deadlock or a serialisation failure
            // between concurrent writers; the client may retry (409, as HAPI answers
            // racing writes).
            Some(("40", message)) => {
                return FhirError::Conflict(format!(
                    "a concurrent write collided with this one; retry: {message}"
                ))
            }
            _ => {}
        }
        FhirError::Internal(format!("database: {e}"))
    }
}

/// The connection is gone or the server is going away: class 08 (connection
/// exception), 57P01–57P03 (shutdown, crash, not accepting connections), 53300
/// (too many connections), or an I/O error on the socket.
pub fn is_connection_lost(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code().map(|c| c.code()) {
        return code.starts_with("08") || code.starts_with("57P") || code == "53300";
    }
    std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
}

impl From<deadpool_postgres::PoolError> for FhirError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait) => {
                FhirError::Busy(
                    "every database connection is in use: nothing was changed; retry later"
                        .to_owned(),
                )
            }
            e => FhirError::Unavailable(e.to_string()),
        }
    }
}

pub type FhirResult<T> = Result<T, FhirError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_carries_expression_and_status() {
        let err =
            FhirError::Unprocessable(vec![Issue::new("value", "bad date").at("Patient.birthDate")]);
        assert_eq!(err.status(), 422);
        let oo = err.operation_outcome();
        assert_eq!(oo["issue"][0]["expression"][0], "Patient.birthDate");
        assert_eq!(oo["issue"][0]["severity"], "error");
    }

    #[test]
    fn internal_errors_do_not_leak_details() {
        let oo = FhirError::Internal("secret sql".into()).operation_outcome();
        assert!(!oo.to_string().contains("secret"));
    }
}
