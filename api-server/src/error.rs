//! The one place an error becomes a Kubernetes `Status` body and code.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use steward_schema::{FieldErrors, Status, StatusCause, StatusDetails};
use steward_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{name:?} is invalid: {errors}")]
    Invalid { kind: &'static str, name: String, errors: FieldErrors },
    /// A server-side apply that would take fields other managers own: 409
    /// with a cause per field.
    #[error("{message}")]
    ApplyConflict { message: String, causes: Vec<StatusCause> },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Unavailable(String),
    /// A well-formed request that cannot be carried out on this object (a
    /// JSON patch whose `test` fails): 422.
    #[error("{0}")]
    Unprocessable(String),
    /// The request conflicts with the server's state (e.g. a reload with no
    /// configuration file): 409.
    #[error("{0}")]
    Conflict(String),
    /// The server failed for a reason of its own: 500.
    #[error("{0}")]
    Internal(String),
    /// The client did not send its request body in time: 408.
    #[error("{0}")]
    RequestTimeout(String),
    /// Too many requests in flight: 429 with `Retry-After`.
    #[error("{0}")]
    TooManyRequests(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApiError {
    pub fn status(&self) -> Status {
        let kind = steward_schema::RESOURCE;
        let details = |name: &str, causes: Vec<StatusCause>| StatusDetails {
            name: name.into(),
            group: steward_schema::GROUP.into(),
            kind: kind.into(),
            causes,
        };
        let msg = self.to_string();
        match self {
            ApiError::BadRequest(_) => Status::failure(400, "BadRequest", msg),
            ApiError::Invalid { kind, name, errors } => {
                let causes = errors
                    .0
                    .iter()
                    .map(|e| StatusCause { field: e.field.clone(), reason: e.reason.into(), message: e.message.clone() })
                    .collect();
                let mut d = details(name, causes);
                if *kind != "Container" {
                    d.group = String::new();
                    d.kind = kind.to_string();
                }
                Status::failure(422, "Invalid", format!("{kind} {msg}")).with_details(d)
            }
            ApiError::ApplyConflict { causes, .. } => Status::failure(409, "Conflict", msg).with_details(StatusDetails {
                causes: causes.clone(),
                ..Default::default()
            }),
            ApiError::NotFound(_) => Status::failure(404, "NotFound", msg),
            ApiError::Unauthorized(_) => Status::failure(401, "Unauthorized", msg),
            ApiError::Forbidden(_) => Status::failure(403, "Forbidden", msg),
            ApiError::MethodNotAllowed(_) => Status::failure(405, "MethodNotAllowed", msg),
            ApiError::UnsupportedMediaType(_) => Status::failure(415, "UnsupportedMediaType", msg),
            ApiError::TooLarge(_) => Status::failure(413, "RequestEntityTooLarge", msg),
            ApiError::Unavailable(_) => Status::failure(503, "ServiceUnavailable", msg),
            ApiError::Unprocessable(_) => Status::failure(422, "Invalid", msg),
            ApiError::Conflict(_) => Status::failure(409, "Conflict", msg),
            ApiError::Internal(_) => Status::failure(500, "InternalError", msg),
            ApiError::TooManyRequests(_) => Status::failure(429, "TooManyRequests", msg),
            ApiError::RequestTimeout(_) => Status::failure(408, "Timeout", msg),
            ApiError::Store(e) => match e {
                StoreError::NotFound { key } => {
                    Status::failure(404, "NotFound", format!("{} {:?} not found", qualified(&key.resource), key.name))
                        .with_details(resource_details(&key.resource, &key.name))
                }
                StoreError::AlreadyExists { key } => Status::failure(
                    409,
                    "AlreadyExists",
                    format!("{} {:?} already exists", qualified(&key.resource), key.name),
                )
                .with_details(resource_details(&key.resource, &key.name)),
                StoreError::Conflict { key, .. } => {
                    Status::failure(409, "Conflict", msg).with_details(details(&key.name, vec![]))
                }
                StoreError::Invalid { key, field, message } => Status::failure(422, "Invalid", msg).with_details(details(
                    &key.name,
                    vec![StatusCause { field: field.clone(), reason: "FieldValueForbidden".into(), message: message.clone() }],
                )),
                StoreError::Expired { .. } | StoreError::TooSlow(_) => Status::failure(410, "Expired", msg),
                StoreError::TooLarge { key, .. } => {
                    Status::failure(413, "RequestEntityTooLarge", msg).with_details(details(&key.name, vec![]))
                }
                // As kube-apiserver: 504 with a retry hint.
                StoreError::TooNew { .. } => Status::failure(504, "Timeout", msg),
                StoreError::Busy => Status::failure(429, "TooManyRequests", msg),
                StoreError::Closed => Status::failure(503, "ServiceUnavailable", msg),
                // Nothing stored; retrying makes sense once space returns.
                StoreError::Full(_) => Status::failure(507, "InsufficientStorage", msg),
                StoreError::Internal(_) => Status::failure(500, "InternalError", msg),
            },
        }
    }
}

/// A resource as kubectl names it: `containers.steward.dev`, `events`.
fn qualified(resource: &str) -> String {
    if resource == steward_schema::RESOURCE {
        format!("{resource}.{}", steward_schema::GROUP)
    } else {
        resource.to_string()
    }
}

fn resource_details(resource: &str, name: &str) -> StatusDetails {
    let group = if resource == steward_schema::RESOURCE { steward_schema::GROUP } else { "" };
    StatusDetails { name: name.into(), group: group.into(), kind: resource.into(), causes: vec![] }
}

/// Serialises a `Status` as the JSON response it is. A 429 tells the
/// client when to retry, as kube-apiserver does.
pub fn status_response(s: &Status) -> Response {
    let code = StatusCode::from_u16(s.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::to_vec(s).unwrap_or_default();
    let mut r = (code, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    if matches!(code, StatusCode::TOO_MANY_REQUESTS | StatusCode::GATEWAY_TIMEOUT | StatusCode::INSUFFICIENT_STORAGE) {
        r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    r
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let s = self.status();
        if s.code >= 500 {
            tracing::error!(error = %self, "request failed");
        }
        status_response(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_store_is_429_with_retry_after() {
        let r = ApiError::Store(StoreError::Busy).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("1"));
        let key = steward_store::Key::new("containers", "default", "a");
        let r = ApiError::Store(StoreError::TooLarge { key, size: 2, limit: 1 }).into_response();
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn a_full_disk_is_507_with_retry_after() {
        let r = ApiError::Store(StoreError::Full("database or disk is full".into())).into_response();
        assert_eq!(r.status(), StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(r.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("1"));
    }
}
