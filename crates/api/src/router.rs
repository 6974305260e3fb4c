//! The router: [`handle`] maps one request to one response, with no socket involved.

use std::error::Error as StdError;
use std::time::Duration;

use b2bua::engine::ApiHangup;
use b2bua::intent::normalize_number;
use b2bua::NoIntent;
use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE,
};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::metrics;
use crate::state::ApiState;

/// How long a client may take to send a request body once the headers are in.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// `Content-Type` of `/metrics` (OpenMetrics text, which Prometheus scrapes natively).
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

const ALLOW_POST: &str = "POST";
const ALLOW_GET: &str = "GET, HEAD";

/// The routes, with their path parameters still percent-encoded.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    MakeCall(&'a str),
    CancelCall(&'a str),
    CtiCallin,
    Call(&'a str),
    Hangup(&'a str),
    Healthz,
    Metrics,
}

impl Route<'_> {
    fn allow(&self) -> &'static str {
        match self {
            Route::MakeCall(_) | Route::CancelCall(_) | Route::CtiCallin | Route::Hangup(_) => {
                ALLOW_POST
            }
            Route::Call(_) | Route::Healthz | Route::Metrics => ALLOW_GET,
        }
    }

    fn accepts(&self, method: &Method) -> bool {
        match self.allow() {
            ALLOW_POST => method == Method::POST,
            _ => method == Method::GET || method == Method::HEAD,
        }
    }
}

fn route(path: &str) -> Option<Route<'_>> {
    match path {
        "/healthz" => return Some(Route::Healthz),
        "/metrics" => return Some(Route::Metrics),
        _ => {}
    }
    let rest = path.strip_prefix("/api/")?;
    let segments: Vec<&str> = rest.split('/').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return None;
    }
    match segments.as_slice() {
        ["user", telnum, "makecall"] => Some(Route::MakeCall(telnum)),
        ["user", telnum, "cancelcall"] => Some(Route::CancelCall(telnum)),
        ["cti", "callin"] => Some(Route::CtiCallin),
        ["calls", callid] => Some(Route::Call(callid)),
        ["calls", callid, "hangup"] => Some(Route::Hangup(callid)),
        _ => None,
    }
}

/// Answers one request. Never fails: every error becomes its JSON error response.
///
/// Routes (`/api/*` needs `Authorization: Bearer <token>` when tokens are configured; checked
/// before routing, so an unauthenticated client learns nothing about which paths exist):
///
/// * `POST /api/user/{telnum}/makecall` `{"caller","callee"}` → `200 {"callid"}`. A newer
///   makecall of the same telnum replaces the pending intent (its call ends `intent_replaced`).
/// * `POST /api/user/{telnum}/cancelcall`, body empty or a JSON object (fields ignored) →
///   `200 {"cancelled":true,"callid","caller","callee"}` or `200 {"cancelled":false}`.
/// * `POST /api/cti/callin` `{"from","to"}` → `200 {"action":"bridge","caller","callee","callid"}`
///   or `200 {"action":"reject","reason":"no_intent"|"intent_expired"|"other_number"}`. A bridge
///   decision **consumes** the intent, exactly as an INVITE reaching callbridge's own SIP side
///   does: the external switch asks once per incoming call. `to` may be the dedicated number
///   (`caller` of the intent) or the intent's `callee` (the seed's example).
/// * `GET /api/calls/{callid}` → `200` the call record, `404 unknown_call`.
/// * `POST /api/calls/{callid}/hangup`, body empty or a JSON object → `200` the record, now
///   ended by `api` (a bridged call gets BYE on both legs, a ringing one CANCEL on leg B and
///   480 on leg A, one still waiting for its phone loses its intent); `409 call_ended` if it
///   had already ended, `404 unknown_call`, `503 sip_unavailable` when the SIP side cannot
///   take the request.
/// * `GET /healthz` → `200 {"status":"ok","sip":true,"http":true}`, or
///   `503 {"status":"unavailable","sip":false,"http":true}` while SIP is not serving, and
///   `503 {"status":"draining","sip":false,"http":true}` from the start of a shutdown.
/// * `GET /metrics` → OpenMetrics text; not behind tokens (scrapers rarely carry them; protect
///   it with the listen address or the network).
///
/// Errors: `{"error":{"code","message"}}` with 400 (`malformed_json`, `invalid_body`,
/// `invalid_field_type`, `body_read_failed`), 401 `unauthenticated`, 404 (`not_found`,
/// `unknown_call`), 405 `method_not_allowed` with `Allow`, 408 `request_timeout`, 409
/// `call_ended`, 413 `body_too_large`, 415 `unsupported_media_type`, 422 (`missing_field`,
/// `invalid_number`, `caller_is_telnum`, `callee_is_caller`), 503 (`intent_table_full`,
/// `sip_unavailable`).
pub async fn handle<B>(state: &ApiState, req: Request<B>) -> Response<Full<Bytes>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let response = match dispatch(state, req).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    state.metrics.observe(response.status());
    response
}

async fn dispatch<B>(state: &ApiState, req: Request<B>) -> Result<Response<Full<Bytes>>, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let path = req.uri().path().to_owned();
    if (path == "/api" || path.starts_with("/api/")) && !authorized(state, req.headers()) {
        return Err(ApiError::Unauthenticated);
    }
    let route = route(&path).ok_or(ApiError::NotFound)?;
    if !route.accepts(req.method()) {
        return Err(ApiError::MethodNotAllowed(route.allow()));
    }
    match route {
        Route::MakeCall(telnum) => make_call(state, telnum, req).await,
        Route::CancelCall(telnum) => cancel_call(state, telnum, req).await,
        Route::CtiCallin => cti_callin(state, req).await,
        Route::Call(callid) => call(state, callid),
        Route::Hangup(callid) => hang_up(state, callid, req).await,
        Route::Healthz => Ok(healthz(state)),
        Route::Metrics => metrics_text(state),
    }
}

/// True when no tokens are configured or the request carries one of them as a Bearer token.
fn authorized(state: &ApiState, headers: &HeaderMap) -> bool {
    let tokens = &state.settings.tokens;
    if tokens.is_empty() {
        return true;
    }
    let Some(presented) = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
    else {
        return false;
    };
    // Compare against every token, without stopping early, so timing tells nothing.
    tokens.iter().fold(false, |found, token| {
        found | constant_time_eq(presented.as_bytes(), token.as_bytes())
    })
}

fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Compares in time that depends only on the lengths, not on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let len = a.len().max(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..len {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

#[derive(Serialize)]
struct MakeCallResponse<'a> {
    callid: &'a str,
}

async fn make_call<B>(
    state: &ApiState,
    telnum: &str,
    req: Request<B>,
) -> Result<Response<Full<Bytes>>, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let body = read_json_object(state, req).await?.unwrap_or_default();
    let telnum = path_number(state, "telnum", telnum)?;
    let caller = string_field(&body, "caller")?;
    let callee = string_field(&body, "callee")?;
    check_number(state, "caller", caller)?;
    check_number(state, "callee", callee)?;
    if normalize_number(caller) == normalize_number(&telnum) {
        return Err(ApiError::CallerIsTelnum);
    }
    if normalize_number(callee) == normalize_number(caller) {
        return Err(ApiError::CalleeIsCaller);
    }
    let intent = state
        .control
        .make_call(state.now(), &telnum, caller, callee)?;
    tracing::info!(callid = %intent.callid, telnum = %intent.telnum, caller = %intent.caller,
        callee = %intent.callee, "makecall: intent registered");
    Ok(json_response(
        StatusCode::OK,
        &MakeCallResponse {
            callid: &intent.callid,
        },
    ))
}

async fn cancel_call<B>(
    state: &ApiState,
    telnum: &str,
    req: Request<B>,
) -> Result<Response<Full<Bytes>>, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    read_json_object(state, req).await?;
    let telnum = path_number(state, "telnum", telnum)?;
    let body = match state.control.cancel_call(state.now(), &telnum) {
        Some(intent) => {
            tracing::info!(callid = %intent.callid, telnum = %intent.telnum, "cancelcall: intent cancelled");
            json!({"cancelled": true, "callid": intent.callid, "caller": intent.caller,
                "callee": intent.callee})
        }
        None => json!({"cancelled": false}),
    };
    Ok(json_response(StatusCode::OK, &body))
}

async fn cti_callin<B>(state: &ApiState, req: Request<B>) -> Result<Response<Full<Bytes>>, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let body = read_json_object(state, req).await?.unwrap_or_default();
    let from = string_field(&body, "from")?;
    let to = string_field(&body, "to")?;
    check_number(state, "from", from)?;
    check_number(state, "to", to)?;
    let now = state.now();
    let control = &state.control;
    let claimed = control.claim_cti(now, from, to);
    let body = match claimed {
        Ok(intent) => {
            state.metrics.cti_decision("bridge", "matched");
            tracing::info!(callid = %intent.callid, from, to, "cti callin: bridge");
            json!({"action": "bridge", "caller": intent.caller, "callee": intent.callee,
                "callid": intent.callid})
        }
        Err(no) => {
            let reason = reject_reason(no);
            state.metrics.cti_decision("reject", reason);
            tracing::info!(from, to, reason, "cti callin: reject");
            json!({"action": "reject", "reason": reason})
        }
    };
    Ok(json_response(StatusCode::OK, &body))
}

/// The reject reason is the refusal's one name ([`NoIntent::code`]), as in the metrics.
fn reject_reason(no: NoIntent) -> &'static str {
    no.code()
}

fn call(state: &ApiState, callid: &str) -> Result<Response<Full<Bytes>>, ApiError> {
    let callid = percent_decode(callid).ok_or(ApiError::UnknownCall)?;
    let record = state.control.call(&callid).ok_or(ApiError::UnknownCall)?;
    Ok(json_response(StatusCode::OK, &record))
}

async fn hang_up<B>(
    state: &ApiState,
    callid: &str,
    req: Request<B>,
) -> Result<Response<Full<Bytes>>, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    read_json_object(state, req).await?;
    let callid = percent_decode(callid).ok_or(ApiError::UnknownCall)?;
    // Unknown ids are answered here, without a trip to the SIP task.
    if state.control.call(&callid).is_none() {
        return Err(ApiError::UnknownCall);
    }
    let outcome = state
        .actions
        .hang_up(callid.clone())
        .await
        .map_err(|_| ApiError::SipUnavailable)?;
    match outcome {
        ApiHangup::Ended(record) => {
            tracing::info!(%callid, "hangup: call ended by the API");
            Ok(json_response(StatusCode::OK, &*record))
        }
        ApiHangup::NotLive(_) => Err(ApiError::CallEnded),
        ApiHangup::Unknown => Err(ApiError::UnknownCall),
    }
}

fn healthz(state: &ApiState) -> Response<Full<Bytes>> {
    let snapshot = state.sip.snapshot();
    let sip = snapshot.sip_serving && !snapshot.draining;
    let (status, word) = if snapshot.draining {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if sip {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    json_response(status, &json!({"status": word, "sip": sip, "http": true}))
}

fn metrics_text(state: &ApiState) -> Result<Response<Full<Bytes>>, ApiError> {
    match metrics::render(state) {
        Ok(text) => {
            let mut response = Response::new(Full::new(Bytes::from(text)));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_CONTENT_TYPE));
            response
                .headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(response)
        }
        Err(_) => Ok(internal_error()),
    }
}

/// Reads the body under the size limit and time limit. `Ok(None)`: the body was empty. A
/// non-empty body must be declared `application/json` and be a JSON object.
async fn read_json_object<B>(
    state: &ApiState,
    req: Request<B>,
) -> Result<Option<Map<String, Value>>, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let limit = state.settings.max_body_bytes;
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::BodyTooLarge(limit));
    }
    let collected = tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(body, limit).collect())
        .await
        .map_err(|_| ApiError::BodyTimeout)?;
    let bytes = match collected {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(ApiError::BodyTooLarge(limit));
        }
        Err(_) => return Err(ApiError::BodyReadFailed),
    };
    if bytes.is_empty() {
        return Ok(None);
    }
    if !is_json(&parts.headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        Ok(_) => Err(ApiError::NotAnObject),
        Err(error) => Err(ApiError::MalformedJson(error.to_string())),
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

fn string_field<'a>(body: &'a Map<String, Value>, name: &'static str) -> Result<&'a str, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Err(ApiError::MissingField(name)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ApiError::InvalidFieldType(name)),
    }
}

/// A number: optional leading `+`, then 1 to `max_number_len` ASCII digits.
fn check_number(state: &ApiState, field: &'static str, value: &str) -> Result<(), ApiError> {
    let max = state.settings.max_number_len;
    let digits = value.strip_prefix('+').unwrap_or(value);
    if digits.is_empty() || digits.len() > max || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::InvalidNumber { field, max });
    }
    Ok(())
}

/// A number taken from the path, percent-decoded (so `%2B1001` is `+1001`).
fn path_number(state: &ApiState, field: &'static str, raw: &str) -> Result<String, ApiError> {
    let max = state.settings.max_number_len;
    let decoded = percent_decode(raw).ok_or(ApiError::InvalidNumber { field, max })?;
    check_number(state, field, &decoded)?;
    Ok(decoded)
}

/// Decodes `%XX` escapes; `None` for a broken escape or a result that is not UTF-8.
fn percent_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = raw.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A JSON response; falls back to a bare 500 if serialisation fails (it cannot for our types).
pub(crate) fn json_response<T: Serialize + ?Sized>(
    status: StatusCode,
    body: &T,
) -> Response<Full<Bytes>> {
    let Ok(bytes) = serde_json::to_vec(body) else {
        return internal_error();
    };
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn internal_error() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(
        br#"{"error":{"code":"internal_error","message":"the server failed to render its answer"}}"#,
    )));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests;
