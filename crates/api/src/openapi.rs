//! The OpenAPI 3.1 document of the whole API, served at `GET /api/openapi.json`.
//!
//! The schemas are derived (utoipa's `ToSchema`) from the types the handlers serialise —
//! the record is [`store::CallRow`] whether live or stored — and the bodies built here
//! ([`CancelCallResponse`], [`CtiCallinResponse`], [`Health`], [`ErrorBody`]) are the ones the
//! router sends, as are [`EventView`] and [`EventsResponse`] (the webhook events). The operations below are declarations only (utoipa reads the attribute;
//! the functions are never called); a test checks that every route of the router has one and
//! that the document names no path the router does not serve.

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::body::ApiBody;
use crate::events::{EventView, EventsResponse};
use crate::numbers::NumberList;

/// `POST /api/user/{telnum}/makecall`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MakeCallRequest {
    /// The dedicated number the user will dial (the target sees it as the caller).
    #[schema(pattern = r"^\+?[0-9]{1,32}$")]
    pub caller: String,
    /// The target.
    #[schema(pattern = r"^\+?[0-9]{1,32}$")]
    pub callee: String,
    /// Opaque client data, echoed in the record and every event (at most 1 KiB).
    #[schema(max_length = 1024)]
    pub data: Option<String>,
    /// This intent's webhook target (`http://` or `https://`), overriding `webhooks.url`. Its
    /// host must be in `webhooks.allowed_hosts` (empty: the host of `webhooks.url`); refused
    /// with `notify_url_not_allowed` otherwise, and always when webhooks are not configured.
    #[schema(max_length = 2048)]
    pub notify_url: Option<String>,
}

/// The answer to makecall.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MakeCallResponse {
    /// Identifies the call for its whole life (decimal digits, unguessable).
    pub callid: String,
}

/// The answer to cancelcall: what was cancelled, if anything.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CancelCallResponse {
    pub cancelled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callee: Option<String>,
}

/// `POST /api/cti/callin`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CtiCallinRequest {
    /// The calling number (the user's telnum).
    #[schema(pattern = r"^\+?[0-9]{1,32}$")]
    pub from: String,
    /// The dialled dedicated number, or the intent's callee.
    #[schema(pattern = r"^\+?[0-9]{1,32}$")]
    pub to: String,
}

/// The CTI decision.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CtiAction {
    Bridge,
    Reject,
}

/// The CTI decision: `bridge` with the numbers and callid, or `reject` with a reason
/// (`no_intent`, `intent_expired`, `other_number`, `number_not_owned`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CtiCallinResponse {
    pub action: CtiAction,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callee: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `PUT /api/numbers/{number}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AssignNumberRequest {
    /// The user the dedicated number is assigned to.
    #[schema(pattern = r"^\+?[0-9]{1,32}$")]
    pub telnum: String,
}

/// A body that may be absent or an empty object (cancelcall, hangup); fields are ignored.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EmptyObject {}

/// `/healthz`'s word for the server's state.
#[derive(Debug, Serialize, Deserialize, ToSchema, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Ok,
    Unavailable,
    Draining,
}

/// `GET /healthz`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: HealthStatus,
    /// SIP is serving (and not draining).
    pub sip: bool,
    /// Always true: this answer came over HTTP.
    pub http: bool,
    /// The trunk as the OPTIONS keepalive sees it (`trunk.ping_secs`). It does not change
    /// the status code: a node whose trunk is down is itself healthy (it answers, refuses
    /// new calls with 503 at once, and takes them again when the trunk is back), and every
    /// node behind the same trunk would be pulled alike.
    pub trunk: crate::TrunkStatus,
    /// callbridge's registration at the trunk (`trunk.register`): reported, like the trunk,
    /// without changing the status code.
    pub registration: crate::RegistrationStatus,
    /// The trunk's targets (`ip:port`) in the order leg B's INVITEs try them: the trunk's
    /// address as resolved per RFC 3263, kept current as its DNS answers expire. Left out
    /// when the SIP side has published none (not started).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trunk_targets: Vec<String>,
}

/// Every error: `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The error's stable code and a human sentence.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// snake_case; clients match on it (see `ApiError::CODES`).
    pub code: String,
    pub message: String,
}

/// What the derives cannot say: the bearer-token scheme (`api.tokens`), and the enum of error
/// codes, taken from [`ApiError::CODES`](crate::ApiError::CODES) so that a client (and
/// schemathesis) can check every code it gets against the list.
struct Completions;

impl Modify for Completions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        if let Some(RefOr::T(Schema::Object(detail))) = components.schemas.get_mut("ErrorDetail") {
            if let Some(RefOr::T(Schema::Object(code))) = detail.properties.get_mut("code") {
                code.enum_values = Some(
                    crate::ApiError::CODES
                        .iter()
                        .map(|c| serde_json::Value::from(*c))
                        .collect(),
                );
            }
        }
    }
}

/// The document (see the module's documentation).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "callbridge",
        description = "Call intents, call records, dedicated numbers and health of a callbridge \
            node. See SPEC.md. Every /api path needs `Authorization: Bearer <token>` when \
            api.tokens is set.",
        license(name = "MIT OR Apache-2.0")
    ),
    paths(
        ops::make_call,
        ops::cancel_call,
        ops::cti_callin,
        ops::list_calls,
        ops::export_calls,
        ops::get_call,
        ops::hang_up,
        ops::call_events,
        ops::redeliver_event,
        ops::list_numbers,
        ops::assign_number,
        ops::unassign_number,
        ops::openapi_json,
        ops::healthz,
        ops::metrics
    ),
    components(schemas(
        MakeCallRequest,
        MakeCallResponse,
        CancelCallResponse,
        CtiCallinRequest,
        CtiCallinResponse,
        AssignNumberRequest,
        EmptyObject,
        Health,
        crate::TrunkStatus,
        crate::RegistrationStatus,
        ErrorBody,
        NumberList,
        EventView,
        EventsResponse,
        store::CallRow,
        store::Page,
        store::NumberAssignment
    )),
    modifiers(&Completions)
)]
pub struct ApiDoc;

/// The document as JSON (built once).
pub fn document() -> &'static str {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOCUMENT.get_or_init(|| {
        ApiDoc::openapi()
            .to_json()
            .unwrap_or_else(|_| "{}".to_owned())
    })
}

/// `GET /api/openapi.json`.
pub(crate) fn response() -> Response<ApiBody> {
    let mut response = Response::new(ApiBody::full(document()));
    *response.status_mut() = StatusCode::OK;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The operations, for utoipa only (never called).
#[allow(dead_code)]
mod ops {
    use super::*;
    use store::{CallRow, NumberAssignment, Page};

    #[utoipa::path(post, path = "/api/user/{telnum}/makecall", tag = "intents",
        summary = "Register a call intent (replaces the telnum's pending one)",
        params(
            ("telnum" = String, Path, description = "The user's real number", pattern = r"^\+?[0-9]{1,32}$"),
            ("Idempotency-Key" = Option<String>, Header, description = "Same key and body within 24 h: the first response again", max_length = 255, pattern = r"^[!-~]+$"),
        ),
        request_body(content = MakeCallRequest, content_type = "application/json"),
        responses(
            (status = 200, description = "Registered", body = MakeCallResponse),
            (status = 400, description = "Malformed JSON, not an object, a field of the wrong type, a bad Idempotency-Key", body = ErrorBody),
            (status = 401, description = "No valid bearer token", body = ErrorBody, headers(("WWW-Authenticate" = String))),
            (status = 403, description = "number_not_owned (intent.require_ownership)", body = ErrorBody),
            (status = 404, description = "No such path", body = ErrorBody),
            (status = 405, description = "Wrong method", body = ErrorBody, headers(("Allow" = String))),
            (status = 408, description = "The body did not arrive in time", body = ErrorBody),
            (status = 409, description = "idempotency_key_in_use", body = ErrorBody),
            (status = 413, description = "Body too large", body = ErrorBody),
            (status = 415, description = "Not application/json", body = ErrorBody),
            (status = 422, description = "missing_field, invalid_number, caller_is_telnum, callee_is_caller, data_too_long, invalid_notify_url, notify_url_not_allowed, idempotency_key_reused", body = ErrorBody),
            (status = 503, description = "intent_table_full, store_unavailable", body = ErrorBody),
        ),
        security(("bearer" = [])))]
    fn make_call() {}

    #[utoipa::path(post, path = "/api/user/{telnum}/cancelcall", tag = "intents",
        summary = "Cancel the telnum's pending intent",
        params(
            ("telnum" = String, Path, pattern = r"^\+?[0-9]{1,32}$"),
            ("Idempotency-Key" = Option<String>, Header, max_length = 255, pattern = r"^[!-~]+$"),
        ),
        request_body(content = Option<EmptyObject>, content_type = "application/json", description = "None, or an object (ignored)"),
        responses(
            (status = 200, description = "What was cancelled", body = CancelCallResponse),
            (status = 400, description = "Malformed body or Idempotency-Key", body = ErrorBody),
            (status = 401, description = "No valid bearer token", body = ErrorBody, headers(("WWW-Authenticate" = String))),
            (status = 404, description = "No such path", body = ErrorBody),
            (status = 405, description = "Wrong method", body = ErrorBody, headers(("Allow" = String))),
            (status = 408, description = "The body did not arrive in time", body = ErrorBody),
            (status = 409, description = "idempotency_key_in_use", body = ErrorBody),
            (status = 413, description = "Body too large", body = ErrorBody),
            (status = 415, description = "Not application/json", body = ErrorBody),
            (status = 422, description = "invalid_number, idempotency_key_reused", body = ErrorBody),
            (status = 503, description = "store_unavailable", body = ErrorBody),
        ),
        security(("bearer" = [])))]
    fn cancel_call() {}

    #[utoipa::path(post, path = "/api/cti/callin", tag = "intents",
        summary = "The CTI decision for an incoming call (consumes the intent on bridge)",
        params(("Idempotency-Key" = Option<String>, Header, max_length = 255, pattern = r"^[!-~]+$")),
        request_body(content = CtiCallinRequest, content_type = "application/json"),
        responses(
            (status = 200, description = "bridge or reject", body = CtiCallinResponse),
            (status = 400, description = "Malformed body or Idempotency-Key", body = ErrorBody),
            (status = 401, description = "No valid bearer token", body = ErrorBody, headers(("WWW-Authenticate" = String))),
            (status = 405, description = "Wrong method", body = ErrorBody, headers(("Allow" = String))),
            (status = 408, description = "The body did not arrive in time", body = ErrorBody),
            (status = 409, description = "idempotency_key_in_use", body = ErrorBody),
            (status = 413, description = "Body too large", body = ErrorBody),
            (status = 415, description = "Not application/json", body = ErrorBody),
            (status = 422, description = "missing_field, invalid_number, idempotency_key_reused", body = ErrorBody),
            (status = 503, description = "store_unavailable", body = ErrorBody),
        ),
        security(("bearer" = [])))]
    fn cti_callin() {}

    #[utoipa::path(get, path = "/api/calls", tag = "calls",
        summary = "Call records, newest first (live calls merged with stored ones)",
        params(
            ("telnum" = Option<String>, Query, pattern = r"^\+?[0-9]{1,32}$"),
            ("state" = Option<String>, Query, pattern = "^(intent|trying|ringing|answered|ended)$"),
            ("since" = Option<i64>, Query, description = "created_at ≥ since (ms since the epoch)", minimum = 0),
            ("until" = Option<i64>, Query, description = "created_at < until (ms since the epoch)", minimum = 0),
            ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000),
            ("cursor" = Option<String>, Query, description = "A previous page's next_cursor (opaque)", pattern = r"^1\.[0-9]{1,18}\.(0[1-9a-f]|[1-7][0-9a-f])*$", max_length = 512),
        ),
        responses(
            (status = 200, description = "A page", body = Page),
            (status = 400, description = "invalid_parameter", body = ErrorBody),
            (status = 401, description = "No valid bearer token", body = ErrorBody, headers(("WWW-Authenticate" = String))),
            (status = 405, description = "Wrong method", body = ErrorBody, headers(("Allow" = String))),
            (status = 503, description = "store_unavailable", body = ErrorBody),
        ),
        security(("bearer" = [])))]
    fn list_calls() {}

    #[utoipa::path(get, path = "/api/calls/export", tag = "calls",
        summary = "Every record of the filters, streamed (CSV with a header row, or NDJSON)",
        params(
            ("format" = Option<String>, Query, pattern = "^(csv|ndjson)$"),
            ("telnum" = Option<String>, Query, pattern = r"^\+?[0-9]{1,32}$"),
            ("state" = Option<String>, Query, pattern = "^(intent|trying|ringing|answered|ended)$"),
            ("since" = Option<i64>, Query, minimum = 0),
            ("until" = Option<i64>, Query, minimum = 0),
        ),
        responses(
            (status = 200, description = "The records", content(
                (String = "text/csv"),
                (String = "application/x-ndjson"),
            )),
            (status = 400, description = "invalid_parameter", body = ErrorBody),
            (status = 401, description = "No valid bearer token", body = ErrorBody, headers(("WWW-Authenticate" = String))),
            (status = 405, description = "Wrong method", body = ErrorBody, headers(("Allow" = String))),
            (status = 503, description = "store_unavailable", body = ErrorBody),
        ),
        security(("bearer" = [])))]
    fn export_calls() {}

    #[utoipa::path(get, path = "/api/calls/{callid}", tag = "calls",
        summary = "One call's record, live or stored",
        params(("callid" = String, Path)),
        responses(
            (status = 200, description = "The record", body = CallRow),
            (status = 401, description = "No valid bearer token", body = ErrorBody, headers(("WWW-Authenticate" = String))),
            (status = 404, description = "unknown_call", body = ErrorBody),
            (status = 405, description = "Wrong method", body = ErrorBody, headers(("Allow" = String))),
            (status = 503, description = "store_unavailable", body = ErrorBody),
        ),
        security(("bearer" = [])))]
    fn get_call() {}

    #[utoipa::path(post, path = "/api/calls/{callid}/hangup", tag = "calls",
        summary = "End a live call on both legs (recorded as ended_by api)",
        params(
            ("callid" = String, Path),
            ("Idempotency-Key" = Option<String>, Header, max_length = 255, pattern = r"^[!-~]+$"),
        ),
        request_body(content = Option<EmptyObject>, content_type = "application/json", description = "None, or an object (ignored)"),
        responses(
            (status = 200, description = "The record, now ended", body = CallRow),
            (status = 400, description = "Malformed body or Idempotency-Key", body = ErrorBody),
            (status = 401, description = "No valid bearer token", body = ErrorBody, headers(("WWW-Authenticate" = String))),
            (status = 404, description = "unknown_call", body = ErrorBody),
            (status = 405, description = "Wrong method", body = ErrorBody, headers(("Allow" = String))),
            (status = 408, description = "The body did not arrive in time", body = ErrorBody),
            (status = 409, description = "call_ended, idempotency_key_in_use", body = ErrorBody),
            (status = 413, description = "Body too large", body = ErrorBody),
            (status = 415, description = "Not application/json", body = ErrorBody),
            (status = 422, description = "idempotency_key_reused", body = ErrorBody),
            (status = 503, description = "sip_unavailable, store_unavailable", body = ErrorBody),
        ),
        security(("bearer" = [])))]
    fn hang_up() {}

    #[utoipa::path(get, path = "/api/calls/{callid}/events", tag = "webhooks",
        summary = "The call's webhook events by seq, with their delivery state",
        params(("callid" = String, Path)),
        responses(
            (status = 200, description = "The events ([] for a known call without any)", body = EventsResponse),
            (status = 401, description = "No valid bearer token", body = ErrorBody, headers(("WWW-Authenticate" = String))),
            (status = 404, description = "unknown_call", body = ErrorBody),
            (status = 405, description = "Wrong method", body = ErrorBody, headers(("Allow" = String))),
            (status = 503, description = "store_unavailable", body = ErrorBody),
        ),
        security(("bearer" = [])))]
    fn call_events() {}

    #[utoipa::path(post, path = "/api/events/{id}/redeliver", tag = "webhooks",
        summary = "Deliver a failed (or dropped) webhook event again: pending, due now, attempts from zero",
        params(
            ("id" = String, Path, description = "The event's id (`id` in the events listing)"),
            ("Idempotency-Key" = Option<String>, Header, max_length = 255, pattern = r"^[!-~]+$"),
        ),
        request_body(content = Option<EmptyObject>, content_type = "application/json", description = "None, or an object (ignored)"),
        responses(
            (status = 200, description = "The event, pending again", body = EventView),
            (status = 400, description = "Malformed body or Idempotency-Key", body = ErrorBody),
            (status = 401, description = "No valid bearer token", body = ErrorBody, headers(("WWW-Authenticate" = String))),
            (status = 404, description = "unknown_event", body = ErrorBody),
            (status = 405, description = "Wrong method", body = ErrorBody, headers(("Allow" = String))),
            (status = 408, description = "The body did not arrive in time", body = ErrorBody),
            (status = 409, description = "event_not_failed (it is pending or delivered), idempotency_key_in_use", body = ErrorBody),
            (status = 413, description = "Body too large", body = ErrorBody),
            (status = 415, description = "Not application/json", body = ErrorBody),
            (status = 422, description = "idempotency_key_reused", body = ErrorBody),
            (status = 503, description = "webhooks_unavailable (webhooks not configured), store_unavailable", body = ErrorBody),
        ),
        security(("bearer" = [])))]
    fn redeliver_event() {}

    #[utoipa::path(get, path = "/api/numbers", tag = "numbers",
        summary = "Dedicated number assignments, of one telnum or all",
        params(("telnum" = Option<String>, Query, pattern = r"^\+?[0-9]{1,32}$")),
        responses(
            (status = 200, description = "The assignments", body = NumberList),
            (status = 400, description = "invalid_parameter", body = ErrorBody),
            (status = 401, description = "No valid bearer token", body = ErrorBody, headers(("WWW-Authenticate" = String))),
            (status = 405, description = "Wrong method", body = ErrorBody, headers(("Allow" = String))),
            (status = 503, description = "store_unavailable", body = ErrorBody),
        ),
        security(("bearer" = [])))]
    fn list_numbers() {}

    #[utoipa::path(put, path = "/api/numbers/{number}", tag = "numbers",
        summary = "Assign a dedicated number to a telnum (replacing its owner)",
        params(("number" = String, Path, pattern = r"^\+?[0-9]{1,32}$")),
        request_body(content = AssignNumberRequest, content_type = "application/json"),
        responses(
            (status = 200, description = "Assigned", body = NumberAssignment),
            (status = 400, description = "Malformed body", body = ErrorBody),
            (status = 401, description = "No valid bearer token", body = ErrorBody, headers(("WWW-Authenticate" = String))),
            (status = 404, description = "No such path", body = ErrorBody),
            (status = 405, description = "Wrong method", body = ErrorBody, headers(("Allow" = String))),
            (status = 408, description = "The body did not arrive in time", body = ErrorBody),
            (status = 413, description = "Body too large", body = ErrorBody),
            (status = 415, description = "Not application/json", body = ErrorBody),
            (status = 422, description = "missing_field, invalid_number", body = ErrorBody),
            (status = 503, description = "store_unavailable", body = ErrorBody),
        ),
        security(("bearer" = [])))]
    fn assign_number() {}

    #[utoipa::path(delete, path = "/api/numbers/{number}", tag = "numbers",
        summary = "Remove a dedicated number's assignment",
        params(("number" = String, Path, pattern = r"^\+?[0-9]{1,32}$")),
        responses(
            (status = 200, description = "Removed; the assignment it had", body = NumberAssignment),
            (status = 401, description = "No valid bearer token", body = ErrorBody, headers(("WWW-Authenticate" = String))),
            (status = 404, description = "unknown_number", body = ErrorBody),
            (status = 405, description = "Wrong method", body = ErrorBody, headers(("Allow" = String))),
            (status = 422, description = "invalid_number", body = ErrorBody),
            (status = 503, description = "store_unavailable", body = ErrorBody),
        ),
        security(("bearer" = [])))]
    fn unassign_number() {}

    #[utoipa::path(get, path = "/api/openapi.json", tag = "meta",
        summary = "This document",
        responses(
            (status = 200, description = "OpenAPI 3.1", content_type = "application/json", body = Object),
            (status = 401, description = "No valid bearer token", body = ErrorBody, headers(("WWW-Authenticate" = String))),
            (status = 405, description = "Wrong method", body = ErrorBody, headers(("Allow" = String))),
        ),
        security(("bearer" = [])))]
    fn openapi_json() {}

    #[utoipa::path(get, path = "/healthz", tag = "meta",
        summary = "200 when SIP and HTTP are serving (whatever the trunk's state); 503 unavailable or draining",
        responses(
            (status = 200, description = "Serving", body = Health),
            (status = 405, description = "Wrong method", body = ErrorBody, headers(("Allow" = String))),
            (status = 503, description = "Not serving, or draining", body = Health),
        ))]
    fn healthz() {}

    #[utoipa::path(get, path = "/metrics", tag = "meta",
        summary = "OpenMetrics text (not behind tokens)",
        responses(
            (status = 200, description = "Metrics", content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String),
            (status = 405, description = "Wrong method", body = ErrorBody, headers(("Allow" = String))),
        ))]
    fn metrics() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::route;

    #[test]
    fn the_document_is_3_1_and_covers_every_route() {
        let doc: serde_json::Value = serde_json::from_str(document()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        // Every documented path is one the router serves ...
        for path in paths.keys() {
            let concrete = path
                .replace("{telnum}", "1001")
                .replace("{callid}", "42")
                .replace("{number}", "2001")
                .replace("{id}", "evt_1");
            assert!(route(&concrete).is_some(), "{path} is not routed");
        }
        // ... and every route is documented, with the methods it accepts.
        for (path, methods) in [
            ("/api/user/{telnum}/makecall", &["post"][..]),
            ("/api/user/{telnum}/cancelcall", &["post"]),
            ("/api/cti/callin", &["post"]),
            ("/api/calls", &["get"]),
            ("/api/calls/export", &["get"]),
            ("/api/calls/{callid}", &["get"]),
            ("/api/calls/{callid}/hangup", &["post"]),
            ("/api/calls/{callid}/events", &["get"]),
            ("/api/events/{id}/redeliver", &["post"]),
            ("/api/numbers", &["get"]),
            ("/api/numbers/{number}", &["put", "delete"]),
            ("/api/openapi.json", &["get"]),
            ("/healthz", &["get"]),
            ("/metrics", &["get"]),
        ] {
            for method in methods {
                assert!(paths[path].get(*method).is_some(), "{method} {path}");
            }
        }
        assert_eq!(paths.len(), 14);
        let codes = &doc["components"]["schemas"]["ErrorDetail"]["properties"]["code"]["enum"];
        assert_eq!(
            codes.as_array().map(Vec::len),
            Some(crate::ApiError::CODES.len())
        );
        let record = &doc["components"]["schemas"]["CallRow"]["properties"];
        for field in [
            "ring_ms",
            "talk_ms",
            "sip_reason",
            "data",
            "ended_by",
            "media",
        ] {
            assert!(record.get(field).is_some(), "record field {field}");
        }
        let event = &doc["components"]["schemas"]["EventView"]["properties"];
        for field in crate::events::EVENT_FIELDS {
            assert!(event.get(field).is_some(), "event field {field}");
        }
        let health = &doc["components"]["schemas"]["Health"];
        assert_eq!(
            health["properties"]["trunk"]["$ref"],
            "#/components/schemas/TrunkStatus"
        );
        assert!(health["required"]
            .as_array()
            .is_some_and(|r| r.contains(&"trunk".into())));
        assert_eq!(
            doc["components"]["schemas"]["TrunkStatus"]["enum"],
            serde_json::json!(["unmonitored", "up", "down"])
        );
        let events = &doc["components"]["schemas"]["EventsResponse"]["properties"]["events"];
        assert_eq!(events["items"]["$ref"], "#/components/schemas/EventView");
    }
}
