//! [`ApiError`]: every way a request can fail, with its status and snake_case code.

use http::header::{HeaderValue, ALLOW, WWW_AUTHENTICATE};
use http::{Response, StatusCode};
use serde_json::json;

use crate::body::ApiBody;
use crate::router::json_response;

/// A request the API refuses. Rendered as `{"error": {"code", "message"}}` with the status of
/// [`ApiError::status`]; the message is the `Display` text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("the request body must be a JSON object")]
    NotAnObject,
    #[error("field `{0}` must be a string")]
    InvalidFieldType(&'static str),
    #[error("the request body could not be read")]
    BodyReadFailed,
    #[error("a valid `Authorization: Bearer <token>` header is required")]
    Unauthenticated,
    #[error("no such resource")]
    NotFound,
    #[error("no call with this callid is known (it never existed or has been pruned)")]
    UnknownCall,
    #[error("this resource does not support this method; allowed: {0}")]
    MethodNotAllowed(&'static str),
    #[error("the body did not arrive in time")]
    BodyTimeout,
    #[error("the request body exceeds the limit of {0} bytes")]
    BodyTooLarge(usize),
    #[error("the request body must have `Content-Type: application/json`")]
    UnsupportedMediaType,
    #[error("field `{0}` is required")]
    MissingField(&'static str),
    #[error("`{field}` must be 1 to {max} digits with an optional leading `+`")]
    InvalidNumber { field: &'static str, max: usize },
    #[error("`caller` (the dedicated number) must differ from the telnum in the path")]
    CallerIsTelnum,
    #[error("`callee` must differ from `caller`")]
    CalleeIsCaller,
    #[error("{0}; retry later")]
    IntentTableFull(#[from] b2bua::IntentTableFull),
    #[error("the call has already ended")]
    CallEnded,
    #[error("the SIP side is not serving; retry later")]
    SipUnavailable,
    #[error("query parameter `{0}` is not valid")]
    InvalidParameter(&'static str),
    #[error("`Idempotency-Key` must be 1 to 255 visible ASCII characters")]
    InvalidIdempotencyKey,
    #[error("a request with this Idempotency-Key is still being handled; retry later")]
    IdempotencyKeyInUse,
    #[error("this Idempotency-Key was used with another request body within 24 hours")]
    IdempotencyKeyReused,
    #[error("the dedicated number `caller` is not assigned to this telnum")]
    NumberNotOwned,
    #[error("this dedicated number is not assigned")]
    UnknownNumber,
    #[error("`data` must be at most {0} bytes")]
    DataTooLong(usize),
    /// Not a URL events could be POSTed to (not http/https, too long, or with credentials).
    #[error("`notify_url` cannot be a webhook target: {0}")]
    InvalidNotifyUrl(webhooks::TargetError),
    /// A fine URL that the server will not call: its host is not in `webhooks.allowed_hosts`,
    /// or webhooks are not configured at all (the sentence says which).
    #[error("`notify_url` is not allowed: {0}")]
    NotifyUrlNotAllowed(String),
    #[error("the store is not available; retry later")]
    StoreUnavailable,
    #[error("no webhook event with this id is stored (it never existed or has been swept)")]
    UnknownEvent,
    /// Only a failed or dropped event can be redelivered; the field is the event's state.
    #[error("the event is {0}, not failed or dropped: there is nothing to redeliver")]
    EventNotFailed(String),
    #[error("webhooks are not configured on this server (webhooks.url, webhooks.allowed_hosts)")]
    WebhooksUnavailable,
    /// This node is one of a cluster and the shared Redis did not answer (the text says
    /// why); nothing was changed.
    #[error("the cluster's shared store is not available ({0}); retry later")]
    ClusterUnavailable(String),
}

impl ApiError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_)
            | ApiError::NotAnObject
            | ApiError::InvalidFieldType(_)
            | ApiError::BodyReadFailed
            | ApiError::InvalidParameter(_)
            | ApiError::InvalidIdempotencyKey => StatusCode::BAD_REQUEST,
            ApiError::Unauthenticated => StatusCode::UNAUTHORIZED,
            ApiError::NumberNotOwned => StatusCode::FORBIDDEN,
            ApiError::NotFound
            | ApiError::UnknownCall
            | ApiError::UnknownNumber
            | ApiError::UnknownEvent => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::MissingField(_)
            | ApiError::InvalidNumber { .. }
            | ApiError::CallerIsTelnum
            | ApiError::CalleeIsCaller
            | ApiError::IdempotencyKeyReused
            | ApiError::DataTooLong(_)
            | ApiError::InvalidNotifyUrl(_)
            | ApiError::NotifyUrlNotAllowed(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::IntentTableFull(_)
            | ApiError::SipUnavailable
            | ApiError::StoreUnavailable
            | ApiError::WebhooksUnavailable
            | ApiError::ClusterUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::CallEnded | ApiError::IdempotencyKeyInUse | ApiError::EventNotFailed(_) => {
                StatusCode::CONFLICT
            }
        }
    }

    /// Every code, for the OpenAPI document's enum of error codes.
    pub const CODES: &'static [&'static str] = &[
        "malformed_json",
        "invalid_body",
        "invalid_field_type",
        "body_read_failed",
        "unauthenticated",
        "not_found",
        "unknown_call",
        "method_not_allowed",
        "request_timeout",
        "body_too_large",
        "unsupported_media_type",
        "missing_field",
        "invalid_number",
        "caller_is_telnum",
        "callee_is_caller",
        "intent_table_full",
        "call_ended",
        "sip_unavailable",
        "invalid_parameter",
        "invalid_idempotency_key",
        "idempotency_key_in_use",
        "idempotency_key_reused",
        "number_not_owned",
        "unknown_number",
        "data_too_long",
        "invalid_notify_url",
        "notify_url_not_allowed",
        "store_unavailable",
        "unknown_event",
        "event_not_failed",
        "webhooks_unavailable",
        "cluster_unavailable",
        "internal_error",
    ];

    /// The stable snake_case code clients match on.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::NotAnObject => "invalid_body",
            ApiError::InvalidFieldType(_) => "invalid_field_type",
            ApiError::BodyReadFailed => "body_read_failed",
            ApiError::Unauthenticated => "unauthenticated",
            ApiError::NotFound => "not_found",
            ApiError::UnknownCall => "unknown_call",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::BodyTimeout => "request_timeout",
            ApiError::BodyTooLarge(_) => "body_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::MissingField(_) => "missing_field",
            ApiError::InvalidNumber { .. } => "invalid_number",
            ApiError::CallerIsTelnum => "caller_is_telnum",
            ApiError::CalleeIsCaller => "callee_is_caller",
            ApiError::IntentTableFull(_) => "intent_table_full",
            ApiError::CallEnded => "call_ended",
            ApiError::SipUnavailable => "sip_unavailable",
            ApiError::InvalidParameter(_) => "invalid_parameter",
            ApiError::InvalidIdempotencyKey => "invalid_idempotency_key",
            ApiError::IdempotencyKeyInUse => "idempotency_key_in_use",
            ApiError::IdempotencyKeyReused => "idempotency_key_reused",
            ApiError::NumberNotOwned => "number_not_owned",
            ApiError::UnknownNumber => "unknown_number",
            ApiError::DataTooLong(_) => "data_too_long",
            ApiError::InvalidNotifyUrl(_) => "invalid_notify_url",
            ApiError::NotifyUrlNotAllowed(_) => "notify_url_not_allowed",
            ApiError::StoreUnavailable => "store_unavailable",
            ApiError::UnknownEvent => "unknown_event",
            ApiError::EventNotFailed(_) => "event_not_failed",
            ApiError::WebhooksUnavailable => "webhooks_unavailable",
            ApiError::ClusterUnavailable(_) => "cluster_unavailable",
        }
    }

    /// The JSON error response, with `Allow` on 405 and `WWW-Authenticate` on 401.
    pub fn into_response(self) -> Response<ApiBody> {
        let body = json!({"error": {"code": self.code(), "message": self.to_string()}});
        let mut response = json_response(self.status(), &body);
        match self {
            ApiError::MethodNotAllowed(allow) => {
                response
                    .headers_mut()
                    .insert(ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::Unauthenticated => {
                response
                    .headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

/// The cluster's shared intent table: full is the same `503 intent_table_full` as a single
/// node's; unreachable is `503 cluster_unavailable`, logged (and counted by the caller).
impl From<b2bua::SharedError> for ApiError {
    fn from(error: b2bua::SharedError) -> ApiError {
        match error {
            b2bua::SharedError::Full(full) => ApiError::IntentTableFull(full),
            b2bua::SharedError::Unavailable(why) => {
                tracing::warn!(error = %why, "shared intent table unavailable");
                ApiError::ClusterUnavailable(why)
            }
        }
    }
}

/// A `notify_url` the webhook policy refuses: a host off the allow-list is
/// `notify_url_not_allowed`, anything else (not http/https, credentials) `invalid_notify_url`.
impl From<webhooks::TargetError> for ApiError {
    fn from(error: webhooks::TargetError) -> ApiError {
        match error {
            webhooks::TargetError::NotAllowed(_) => {
                ApiError::NotifyUrlNotAllowed(error.to_string())
            }
            other => ApiError::InvalidNotifyUrl(other),
        }
    }
}

/// A store failure as the client sees it: a cursor it altered is its error (`400`), anything
/// else is the server's, logged here and answered `503 store_unavailable`.
impl From<store::StoreError> for ApiError {
    fn from(error: store::StoreError) -> ApiError {
        match error {
            store::StoreError::BadCursor => ApiError::InvalidParameter("cursor"),
            error => {
                tracing::error!(%error, "store request failed");
                ApiError::StoreUnavailable
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant's code is in [`ApiError::CODES`] (the OpenAPI document's enum). The match
    /// makes a new variant a compile error here until it is listed.
    #[test]
    fn every_code_is_listed() {
        let every = |e: &ApiError| match e {
            ApiError::MalformedJson(_)
            | ApiError::NotAnObject
            | ApiError::InvalidFieldType(_)
            | ApiError::BodyReadFailed
            | ApiError::Unauthenticated
            | ApiError::NotFound
            | ApiError::UnknownCall
            | ApiError::MethodNotAllowed(_)
            | ApiError::BodyTimeout
            | ApiError::BodyTooLarge(_)
            | ApiError::UnsupportedMediaType
            | ApiError::MissingField(_)
            | ApiError::InvalidNumber { .. }
            | ApiError::CallerIsTelnum
            | ApiError::CalleeIsCaller
            | ApiError::IntentTableFull(_)
            | ApiError::CallEnded
            | ApiError::SipUnavailable
            | ApiError::InvalidParameter(_)
            | ApiError::InvalidIdempotencyKey
            | ApiError::IdempotencyKeyInUse
            | ApiError::IdempotencyKeyReused
            | ApiError::NumberNotOwned
            | ApiError::UnknownNumber
            | ApiError::DataTooLong(_)
            | ApiError::InvalidNotifyUrl(_)
            | ApiError::NotifyUrlNotAllowed(_)
            | ApiError::StoreUnavailable
            | ApiError::UnknownEvent
            | ApiError::EventNotFailed(_)
            | ApiError::WebhooksUnavailable
            | ApiError::ClusterUnavailable(_) => e.code(),
        };
        let all = [
            ApiError::MalformedJson(String::new()),
            ApiError::NotAnObject,
            ApiError::InvalidFieldType("f"),
            ApiError::BodyReadFailed,
            ApiError::Unauthenticated,
            ApiError::NotFound,
            ApiError::UnknownCall,
            ApiError::MethodNotAllowed("GET"),
            ApiError::BodyTimeout,
            ApiError::BodyTooLarge(1),
            ApiError::UnsupportedMediaType,
            ApiError::MissingField("f"),
            ApiError::InvalidNumber { field: "f", max: 1 },
            ApiError::CallerIsTelnum,
            ApiError::CalleeIsCaller,
            ApiError::IntentTableFull(b2bua::IntentTableFull { max: 1 }),
            ApiError::CallEnded,
            ApiError::SipUnavailable,
            ApiError::InvalidParameter("p"),
            ApiError::InvalidIdempotencyKey,
            ApiError::IdempotencyKeyInUse,
            ApiError::IdempotencyKeyReused,
            ApiError::NumberNotOwned,
            ApiError::UnknownNumber,
            ApiError::DataTooLong(1),
            ApiError::InvalidNotifyUrl(webhooks::TargetError::NotHttp),
            ApiError::NotifyUrlNotAllowed("host x".into()),
            ApiError::StoreUnavailable,
            ApiError::UnknownEvent,
            ApiError::EventNotFailed("delivered".into()),
            ApiError::WebhooksUnavailable,
            ApiError::ClusterUnavailable("x".into()),
        ];
        for error in &all {
            assert!(ApiError::CODES.contains(&every(error)), "{}", error.code());
        }
        // And nothing listed that no variant (or the router's bare 500) answers.
        assert_eq!(ApiError::CODES.len(), all.len() + 1);
        assert!(ApiError::CODES.contains(&"internal_error"));
    }
}
