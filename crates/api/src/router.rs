//! The router: [`handle`] maps one request to one response, with no socket involved.

use std::error::Error as StdError;
use std::time::Duration;

use b2bua::engine::ApiHangup;
use b2bua::intent::normalize_number;
use b2bua::CallExtras;
use b2bua::NoIntent;
use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderValue, AUTHORIZATION, CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_LENGTH,
    CONTENT_TYPE,
};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;
use serde_json::{Map, Value};
use store::IdempotencyLookup;

use crate::body::ApiBody;
use crate::error::ApiError;
use crate::openapi::{CancelCallResponse, CtiAction, CtiCallinResponse, Health, HealthStatus};
use crate::record::row_of;
use crate::state::ApiState;
use crate::{events, idempotency, listing, metrics, numbers};

/// How long a client may take to send a request body once the headers are in.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// `Content-Type` of `/metrics` (OpenMetrics text, which Prometheus scrapes natively).
const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

const ALLOW_POST: &str = "POST";
const ALLOW_GET: &str = "GET, HEAD";
const ALLOW_PUT_DELETE: &str = "PUT, DELETE";

/// Longest `data` of a makecall (SPEC.md: 1 KiB).
pub const MAX_DATA_BYTES: usize = 1024;

/// The routes, with their path parameters still percent-encoded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route<'a> {
    MakeCall(&'a str),
    CancelCall(&'a str),
    CtiCallin,
    Calls,
    Export,
    Call(&'a str),
    Hangup(&'a str),
    CallEvents(&'a str),
    Redeliver(&'a str),
    Numbers,
    Number(&'a str),
    OpenApi,
    Healthz,
    Metrics,
}

impl Route<'_> {
    fn allow(&self) -> &'static str {
        match self {
            Route::MakeCall(_)
            | Route::CancelCall(_)
            | Route::CtiCallin
            | Route::Hangup(_)
            | Route::Redeliver(_) => ALLOW_POST,
            Route::Number(_) => ALLOW_PUT_DELETE,
            Route::Calls
            | Route::Export
            | Route::Call(_)
            | Route::CallEvents(_)
            | Route::Numbers
            | Route::OpenApi
            | Route::Healthz
            | Route::Metrics => ALLOW_GET,
        }
    }

    fn accepts(&self, method: &Method) -> bool {
        match self.allow() {
            ALLOW_POST => method == Method::POST,
            ALLOW_PUT_DELETE => method == Method::PUT || method == Method::DELETE,
            _ => method == Method::GET || method == Method::HEAD,
        }
    }
}

pub(crate) fn route(path: &str) -> Option<Route<'_>> {
    match path {
        "/healthz" => return Some(Route::Healthz),
        "/metrics" => return Some(Route::Metrics),
        _ => {}
    }
    let rest = path.strip_prefix("/api/")?;
    // At most four segments, in an array: no allocation per request.
    let mut segments = [""; 4];
    let mut count = 0;
    for segment in rest.split('/') {
        if segment.is_empty() || count == segments.len() {
            return None;
        }
        segments[count] = segment;
        count += 1;
    }
    match &segments[..count] {
        ["user", telnum, "makecall"] => Some(Route::MakeCall(telnum)),
        ["user", telnum, "cancelcall"] => Some(Route::CancelCall(telnum)),
        ["cti", "callin"] => Some(Route::CtiCallin),
        ["calls"] => Some(Route::Calls),
        ["calls", "export"] => Some(Route::Export),
        ["calls", callid] => Some(Route::Call(callid)),
        ["calls", callid, "hangup"] => Some(Route::Hangup(callid)),
        ["calls", callid, "events"] => Some(Route::CallEvents(callid)),
        ["events", id, "redeliver"] => Some(Route::Redeliver(id)),
        ["numbers"] => Some(Route::Numbers),
        ["numbers", number] => Some(Route::Number(number)),
        ["openapi.json"] => Some(Route::OpenApi),
        _ => None,
    }
}

/// Answers one request. Never fails: every error becomes its JSON error response.
///
/// Routes (`/api/*` needs `Authorization: Bearer <token>` when tokens are configured; checked
/// before routing, so an unauthenticated client learns nothing about which paths exist):
///
/// * `POST /api/user/{telnum}/makecall` `{"caller","callee"}` (and optional `"data"`,
///   `"notify_url"`) → `200 {"callid"}`. A newer makecall of the same telnum replaces the
///   pending intent (its call ends `intent_replaced`). `notify_url` must pass the webhook
///   policy ([`ApiState::with_webhooks`]): `422 invalid_notify_url` for a URL that is not
///   http/https or carries credentials, `422 notify_url_not_allowed` for a host off
///   `webhooks.allowed_hosts`, and for any `notify_url` when webhooks are not configured.
/// * `POST /api/user/{telnum}/cancelcall`, body empty or a JSON object (fields ignored) →
///   `200 {"cancelled":true,"callid","caller","callee"}` or `200 {"cancelled":false}`.
/// * `POST /api/cti/callin` `{"from","to"}` → `200 {"action":"bridge","caller","callee","callid"}`
///   or `200 {"action":"reject","reason":"no_intent"|"intent_expired"|"other_number"}`. A bridge
///   decision **consumes** the intent, exactly as an INVITE reaching callbridge's own SIP side
///   does: the external switch asks once per incoming call. `to` may be the dedicated number
///   (`caller` of the intent) or the intent's `callee` (the seed's example).
/// * `GET /api/calls?telnum=&state=&since=&until=&limit=&cursor=` → `200 {"calls",
///   "next_cursor"}`: live records merged with stored ones, newest first (see the listing module's
///   module doc); `400 invalid_parameter`.
/// * `GET /api/calls/export?format=csv|ndjson` + the listing's filters → the records streamed
///   (CSV per RFC 4180 with a header row, or one JSON record per line).
/// * `GET /api/calls/{callid}` → `200` the call record (memory, then the store),
///   `404 unknown_call`.
/// * `PUT /api/numbers/{number}` `{"telnum"}`, `DELETE /api/numbers/{number}` (`404
///   unknown_number`), `GET /api/numbers?telnum=`: the dedicated numbers' assignments.
/// * `GET /api/openapi.json` → the OpenAPI 3.1 document ([`crate::openapi`]).
/// * Every `POST` takes `Idempotency-Key` (see the idempotency module): a replay gets the
///   first response with `Idempotent-Replayed: true`; `400 invalid_idempotency_key`, `409
///   idempotency_key_in_use`, `422 idempotency_key_reused`.
/// * `POST /api/calls/{callid}/hangup`, body empty or a JSON object → `200` the record, now
///   ended by `api` (a bridged call gets BYE on both legs, a ringing one CANCEL on leg B and
///   480 on leg A, one still waiting for its phone loses its intent); `409 call_ended` if it
///   had already ended, `404 unknown_call`, `503 sip_unavailable` when the SIP side cannot
///   take the request.
/// * `GET /api/calls/{callid}/events` → `200 {"events":[…]}`: the call's webhook events from
///   the store's outbox, by `seq`, each with its delivery state and its body parsed as
///   `payload` ([`crate::events::EventView`]); `200 {"events":[]}` for a known call without
///   events, `404 unknown_call`.
/// * `POST /api/events/{id}/redeliver`, body empty or a JSON object → `200` the event, pending
///   again (due now, attempts from zero) and handed to the dispatcher; `409 event_not_failed`
///   if it is pending or delivered, `404 unknown_event`, `503 webhooks_unavailable` when
///   webhooks are not configured (nothing is requeued).
/// * `GET /healthz` → `200 {"status":"ok","sip":true,"http":true,"trunk":…,
///   "trunk_targets":["ip:port",…]}`, or
///   `503 {"status":"unavailable","sip":false,…}` while SIP is not serving, and
///   `503 {"status":"draining","sip":false,…}` from the start of a shutdown. `trunk` is
///   `"up"`, `"down"` or `"unmonitored"` (`trunk.ping_secs = 0`); a trunk down leaves the
///   status 200.
/// * `GET /metrics` → OpenMetrics text; not behind tokens (scrapers rarely carry them; protect
///   it with the listen address or the network).
///
/// Errors: `{"error":{"code","message"}}` with 400 (`malformed_json`, `invalid_body`,
/// `invalid_field_type`, `body_read_failed`, `invalid_parameter`, `invalid_idempotency_key`),
/// 401 `unauthenticated`, 403 `number_not_owned`, 404 (`not_found`, `unknown_call`,
/// `unknown_number`, `unknown_event`), 405 `method_not_allowed` with `Allow`, 408
/// `request_timeout`, 409 (`call_ended`, `event_not_failed`, `idempotency_key_in_use`), 413
/// `body_too_large`, 415
/// `unsupported_media_type`, 422 (`missing_field`, `invalid_number`, `caller_is_telnum`,
/// `callee_is_caller`, `data_too_long`, `invalid_notify_url`, `notify_url_not_allowed`,
/// `idempotency_key_reused`), 503
/// (`intent_table_full`, `sip_unavailable`, `store_unavailable`, `webhooks_unavailable`).
pub async fn handle<B>(state: &ApiState, req: Request<B>) -> Response<ApiBody>
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

async fn dispatch<B>(state: &ApiState, req: Request<B>) -> Result<Response<ApiBody>, ApiError>
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
    let (parts, body) = req.into_parts();
    let body = if parts.method == Method::POST || parts.method == Method::PUT {
        read_body(state, &parts.headers, body).await?
    } else {
        Bytes::new()
    };
    let key = if parts.method == Method::POST {
        idempotency::key_of(&parts.headers)?
    } else {
        None
    };
    let Some(key) = key else {
        return run(state, route, &parts, body).await;
    };
    // Idempotency-Key: replay, refuse, or run and remember (see the idempotency module).
    let store = state.store()?.clone();
    let keyed = idempotency::claim(
        &state.inflight,
        key,
        &parts.method,
        &path,
        &parts.headers,
        &body,
    )?;
    match idempotency::lookup(&store, &keyed).await? {
        IdempotencyLookup::Hit(stored) => {
            let status =
                StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = Response::new(ApiBody::full(stored.body));
            *response.status_mut() = status;
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            headers.insert(
                idempotency::REPLAYED_HEADER,
                HeaderValue::from_static("true"),
            );
            Ok(response)
        }
        IdempotencyLookup::Conflict => Err(ApiError::IdempotencyKeyReused),
        IdempotencyLookup::Miss => {
            let response = match run(state, route, &parts, body).await {
                Ok(response) => response,
                Err(error) => error.into_response(),
            };
            // Every POST answers with one JSON buffer: take it, remember it, send it.
            let (head, body) = response.into_parts();
            let bytes = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(never) => match never {},
            };
            idempotency::remember(&store, &keyed, head.status, &bytes).await;
            Ok(Response::from_parts(head, ApiBody::full(bytes)))
        }
    }
}

/// The route's handler, with the body already read.
async fn run(
    state: &ApiState,
    route: Route<'_>,
    parts: &Parts,
    body: Bytes,
) -> Result<Response<ApiBody>, ApiError> {
    let json = || parse_json_object(&parts.headers, &body);
    match route {
        Route::MakeCall(telnum) => make_call(state, telnum, json()?.unwrap_or_default()).await,
        Route::CancelCall(telnum) => {
            json()?;
            cancel_call(state, telnum).await
        }
        Route::CtiCallin => cti_callin(state, json()?.unwrap_or_default()).await,
        Route::Calls => calls(state, parts.uri.query()).await,
        Route::Export => export(state, parts.uri.query()),
        Route::Call(callid) => call(state, callid).await,
        Route::Hangup(callid) => {
            json()?;
            hang_up(state, callid).await
        }
        Route::CallEvents(callid) => events::of_call(state, callid).await,
        Route::Redeliver(id) => {
            json()?;
            events::redeliver(state, id).await
        }
        Route::Numbers => numbers::list(state, parts.uri.query()).await,
        Route::Number(number) => {
            let number = path_number(state, "number", number)?;
            if parts.method == Method::PUT {
                numbers::assign(state, &number, json()?.unwrap_or_default()).await
            } else {
                numbers::unassign(state, &number).await
            }
        }
        Route::OpenApi => Ok(crate::openapi::response()),
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

async fn make_call(
    state: &ApiState,
    telnum: &str,
    body: Map<String, Value>,
) -> Result<Response<ApiBody>, ApiError> {
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
    let data = optional_string(&body, "data")?;
    if data.is_some_and(|d| d.len() > MAX_DATA_BYTES) {
        return Err(ApiError::DataTooLong(MAX_DATA_BYTES));
    }
    let notify_url = optional_string(&body, "notify_url")?;
    if let Some(url) = notify_url {
        check_notify_url(state, url)?;
    }
    if !state.control.may_use(&telnum, caller) {
        return Err(ApiError::NumberNotOwned);
    }
    // The call's record could not be kept: refused until the store answers again.
    if !state.control.store_available() {
        return Err(ApiError::StoreUnavailable);
    }
    let extras = CallExtras {
        data: data.map(str::to_owned),
        notify_url: notify_url.map(str::to_owned),
    };
    let control = &state.control;
    let intent = if control.shared().is_some() {
        control
            .make_call_shared(state.now(), &telnum, caller, callee, extras)
            .await?
    } else {
        control.make_call_with(state.now(), &telnum, caller, callee, extras)?
    };
    tracing::info!(callid = %intent.callid, telnum = %intent.telnum, caller = %intent.caller,
        callee = %intent.callee, "makecall: intent registered");
    Ok(json_response(
        StatusCode::OK,
        &MakeCallResponse {
            callid: &intent.callid,
        },
    ))
}

/// A makecall's `notify_url` must pass the webhook policy (`webhooks.allowed_hosts`, else the
/// host of `webhooks.url`): a per-request callback URL is an SSRF vector. Without webhooks
/// configured no URL is allowed: an intent's target would never be called.
fn check_notify_url(state: &ApiState, url: &str) -> Result<(), ApiError> {
    let Some(webhooks) = &state.webhooks else {
        return Err(ApiError::NotifyUrlNotAllowed(
            "webhooks are not configured on this server".to_owned(),
        ));
    };
    webhooks.check_target(url)?;
    Ok(())
}

async fn cancel_call(state: &ApiState, telnum: &str) -> Result<Response<ApiBody>, ApiError> {
    let telnum = path_number(state, "telnum", telnum)?;
    let control = &state.control;
    let cancelled = if control.shared().is_some() {
        control.cancel_call_shared(state.now(), &telnum).await?
    } else {
        control.cancel_call(state.now(), &telnum)
    };
    let body = match cancelled {
        Some(intent) => {
            tracing::info!(callid = %intent.callid, telnum = %intent.telnum, "cancelcall: intent cancelled");
            CancelCallResponse {
                cancelled: true,
                callid: Some(intent.callid),
                caller: Some(intent.caller),
                callee: Some(intent.callee),
            }
        }
        None => CancelCallResponse {
            cancelled: false,
            callid: None,
            caller: None,
            callee: None,
        },
    };
    Ok(json_response(StatusCode::OK, &body))
}

async fn cti_callin(
    state: &ApiState,
    body: Map<String, Value>,
) -> Result<Response<ApiBody>, ApiError> {
    let from = string_field(&body, "from")?;
    let to = string_field(&body, "to")?;
    check_number(state, "from", from)?;
    check_number(state, "to", to)?;
    let now = state.now();
    let control = &state.control;
    let claimed = if control.shared().is_some() {
        control.claim_cti_shared(now, from, to).await?
    } else {
        control.claim_cti(now, from, to)
    };
    let body = match claimed {
        Ok(intent) => {
            state.metrics.cti_decision("bridge", "matched");
            tracing::info!(callid = %intent.callid, from, to, "cti callin: bridge");
            CtiCallinResponse {
                action: CtiAction::Bridge,
                caller: Some(intent.caller),
                callee: Some(intent.callee),
                callid: Some(intent.callid),
                reason: None,
            }
        }
        Err(no) => {
            let reason = reject_reason(no);
            state.metrics.cti_decision("reject", reason);
            tracing::info!(from, to, reason, "cti callin: reject");
            CtiCallinResponse {
                action: CtiAction::Reject,
                caller: None,
                callee: None,
                callid: None,
                reason: Some(reason.to_owned()),
            }
        }
    };
    Ok(json_response(StatusCode::OK, &body))
}

/// The reject reason is the refusal's one name ([`NoIntent::code`]), as in the metrics.
fn reject_reason(no: NoIntent) -> &'static str {
    no.code()
}

/// `GET /api/calls/{callid}`: memory first (live calls, and ended ones still held), then the
/// store.
async fn call(state: &ApiState, callid: &str) -> Result<Response<ApiBody>, ApiError> {
    let callid = percent_decode(callid).ok_or(ApiError::UnknownCall)?;
    if let Some(record) = state.control.call(&callid) {
        return Ok(json_response(StatusCode::OK, &row_of(&record)));
    }
    // A cluster: a call another node holds, or an intent pending in the shared table.
    if let Some(cluster) = &state.cluster {
        let found = cluster
            .find(callid.clone())
            .await
            .map_err(ApiError::ClusterUnavailable)?;
        if let Some(remote) = found {
            return Ok(json_response(StatusCode::OK, &remote.row));
        }
    }
    let store = state.store()?.clone();
    let stored = crate::blocking(move || store.get_call(&callid)).await?;
    let row = stored.ok_or(ApiError::UnknownCall)?;
    Ok(json_response(StatusCode::OK, &row))
}

/// `GET /api/calls`: a page of the records, live ones merged with the stored ones.
async fn calls(state: &ApiState, query: Option<&str>) -> Result<Response<ApiBody>, ApiError> {
    let query = listing::parse_query(query, state.settings.max_number_len)?;
    let store = state.store()?.clone();
    let control = state.control.clone();
    let page = crate::blocking(move || {
        listing::page(
            &*store,
            &control,
            &query.filter,
            query.limit,
            query.cursor.as_deref(),
        )
    })
    .await?;
    Ok(json_response(StatusCode::OK, &page))
}

/// `GET /api/calls/export`: every record of the filters, streamed as CSV or NDJSON.
fn export(state: &ApiState, query: Option<&str>) -> Result<Response<ApiBody>, ApiError> {
    let query = listing::parse_query(query, state.settings.max_number_len)?;
    let store = state.store()?.clone();
    let csv = query.format.as_deref() != Some("ndjson");
    let chunks = listing::export(store, state.control.clone(), query.filter, csv);
    let mut response = Response::new(ApiBody::Stream(chunks));
    let (content_type, file) = if csv {
        ("text/csv; charset=utf-8; header=present", "calls.csv")
    } else {
        ("application/x-ndjson", "calls.ndjson")
    };
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{file}\"")) {
        headers.insert(CONTENT_DISPOSITION, value);
    }
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

async fn hang_up(state: &ApiState, callid: &str) -> Result<Response<ApiBody>, ApiError> {
    let callid = percent_decode(callid).ok_or(ApiError::UnknownCall)?;
    // Unknown ids are answered here, without a trip to the SIP task; a call only in the store
    // has ended.
    if state.control.call(&callid).is_none() {
        // A cluster: the call may still be an intent in the shared table, registered on any
        // node; withdrawing it is this node's to do.
        if state.control.shared().is_some() {
            if let Some(record) = state
                .control
                .cancel_intent_of_shared(state.now(), &callid)
                .await?
            {
                tracing::info!(%callid, "hangup: shared intent withdrawn by the API");
                return Ok(json_response(StatusCode::OK, &row_of(&record)));
            }
        }
        if let Some(answer) = hang_up_elsewhere(state, &callid).await? {
            return answer;
        }
        let store = state.store()?.clone();
        let id = callid.clone();
        let stored = crate::blocking(move || store.get_call(&id)).await?;
        return Err(match stored {
            Some(_) => ApiError::CallEnded,
            None => ApiError::UnknownCall,
        });
    }
    let outcome = state
        .actions
        .hang_up(callid.clone())
        .await
        .map_err(|_| ApiError::SipUnavailable)?;
    match outcome {
        ApiHangup::Ended(record) => {
            tracing::info!(%callid, "hangup: call ended by the API");
            Ok(json_response(StatusCode::OK, &row_of(&record)))
        }
        ApiHangup::NotLive(_) => Err(ApiError::CallEnded),
        ApiHangup::Unknown => Err(ApiError::UnknownCall),
    }
}

/// A hang-up of a call another node of the cluster holds: asked of that node. `None` when
/// no other node holds it (or this node is not one of a cluster).
async fn hang_up_elsewhere(
    state: &ApiState,
    callid: &str,
) -> Result<Option<Result<Response<ApiBody>, ApiError>>, ApiError> {
    let Some(cluster) = &state.cluster else {
        return Ok(None);
    };
    let found = cluster
        .find(callid.to_owned())
        .await
        .map_err(ApiError::ClusterUnavailable)?;
    let Some(remote) = found else {
        return Ok(None);
    };
    if remote.row.state == "ended" {
        return Ok(Some(Err(ApiError::CallEnded)));
    }
    if remote.node.is_empty() || state.control.node_id() == Some(remote.node.as_str()) {
        // A pending intent (withdrawn above if it still was), or this node's own entry of a
        // call it no longer holds: nothing to ask elsewhere.
        return Ok(None);
    }
    let answer = cluster
        .hang_up(remote.node.clone(), callid.to_owned())
        .await
        .map_err(ApiError::ClusterUnavailable)?;
    Ok(Some(match answer {
        Some(crate::RemoteHangup::Ended(row)) => {
            tracing::info!(%callid, node = %remote.node, "hangup: call ended by the API on its node");
            Ok(json_response(StatusCode::OK, &row))
        }
        Some(crate::RemoteHangup::NotLive(_)) => Err(ApiError::CallEnded),
        Some(crate::RemoteHangup::Unknown) => Err(ApiError::UnknownCall),
        None => Err(ApiError::ClusterUnavailable(format!(
            "node {} holding the call did not answer",
            remote.node
        ))),
    }))
}

fn healthz(state: &ApiState) -> Response<ApiBody> {
    let snapshot = state.sip.snapshot();
    let sip = snapshot.sip_serving && !snapshot.draining;
    let (status, word) = if snapshot.draining {
        (StatusCode::SERVICE_UNAVAILABLE, HealthStatus::Draining)
    } else if sip {
        (StatusCode::OK, HealthStatus::Ok)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, HealthStatus::Unavailable)
    };
    // The trunk's state is reported, not judged: a node whose trunk is down is itself
    // healthy and still answers 200. It refuses new calls with 503 at once on its own and
    // takes them again as soon as the trunk answers a ping; a load balancer pulling it would
    // gain nothing (every node behind the same trunk sees it down) and would only delay that.
    let body = Health {
        status: word,
        sip,
        http: true,
        trunk: snapshot.trunk,
        registration: snapshot.registration,
        trunk_targets: snapshot.trunk_targets,
    };
    json_response(status, &body)
}

fn metrics_text(state: &ApiState) -> Result<Response<ApiBody>, ApiError> {
    match metrics::render(state) {
        Ok(text) => {
            let mut response = Response::new(ApiBody::full(text));
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

/// Reads the body under the size limit and time limit.
async fn read_body<B>(state: &ApiState, headers: &HeaderMap, body: B) -> Result<Bytes, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let limit = state.settings.max_body_bytes;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::BodyTooLarge(limit));
    }
    let collected = tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(body, limit).collect())
        .await
        .map_err(|_| ApiError::BodyTimeout)?;
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::BodyTooLarge(limit))
        }
        Err(_) => Err(ApiError::BodyReadFailed),
    }
}

/// `Ok(None)`: the body was empty (or JSON `null`). A non-empty body must be declared `application/json` and
/// be a JSON object.
pub(crate) fn parse_json_object(
    headers: &HeaderMap,
    bytes: &Bytes,
) -> Result<Option<Map<String, Value>>, ApiError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    if !is_json(headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        // `null` is no body, as an absent one (the document's optional bodies are nullable).
        Ok(Value::Null) => Ok(None),
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

/// An optional string field: absent or `null` is `None`.
fn optional_string<'a>(
    body: &'a Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'a str>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::InvalidFieldType(name)),
    }
}

pub(crate) fn string_field<'a>(
    body: &'a Map<String, Value>,
    name: &'static str,
) -> Result<&'a str, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Err(ApiError::MissingField(name)),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ApiError::InvalidFieldType(name)),
    }
}

/// A number: optional leading `+`, then 1 to `max_number_len` ASCII digits.
pub(crate) fn check_number(
    state: &ApiState,
    field: &'static str,
    value: &str,
) -> Result<(), ApiError> {
    check_number_len(field, value, state.settings.max_number_len)
}

/// [`check_number`] with the limit given.
pub(crate) fn check_number_len(
    field: &'static str,
    value: &str,
    max: usize,
) -> Result<(), ApiError> {
    let digits = value.strip_prefix('+').unwrap_or(value);
    if digits.is_empty() || digits.len() > max || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::InvalidNumber { field, max });
    }
    Ok(())
}

/// A number taken from the path, percent-decoded (so `%2B1001` is `+1001`).
pub(crate) fn path_number(
    state: &ApiState,
    field: &'static str,
    raw: &str,
) -> Result<String, ApiError> {
    let max = state.settings.max_number_len;
    let decoded = percent_decode(raw).ok_or(ApiError::InvalidNumber { field, max })?;
    check_number(state, field, &decoded)?;
    Ok(decoded)
}

/// Decodes `%XX` escapes; `None` for a broken escape or a result that is not UTF-8.
pub(crate) fn percent_decode(raw: &str) -> Option<String> {
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

/// Decodes a query-string value's `%XX` escapes. A `+` stays a `+` (not a space, as HTML
/// forms would have it): in this API it is the leading `+` of a number, as in
/// `?telnum=+1001`.
pub(crate) fn query_decode(raw: &str) -> Option<String> {
    percent_decode(raw)
}

/// A JSON response; falls back to a bare 500 if serialisation fails (it cannot for our types).
pub(crate) fn json_response<T: Serialize + ?Sized>(
    status: StatusCode,
    body: &T,
) -> Response<ApiBody> {
    let Ok(bytes) = serde_json::to_vec(body) else {
        return internal_error();
    };
    let mut response = Response::new(ApiBody::full(bytes));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn internal_error() -> Response<ApiBody> {
    let mut response = Response::new(ApiBody::full(Bytes::from_static(
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
