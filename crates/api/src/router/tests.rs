//! Route tests: every route and every error, driven through [`handle`] without a socket.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use b2bua::{CallControl, CallState, EndCause};
use http::header::{ALLOW, WWW_AUTHENTICATE};
use http_body::Frame;
use http_body_util::Full;

use super::*;
use crate::{ApiSettings, ManualClock, NoSip, SipSnapshot, SipStatus, TrunkStatus};
use serde_json::json;

const TTL: Duration = Duration::from_secs(120);
const TOKEN: &str = "t0ken-secret";

struct FixedSip(SipSnapshot);

impl SipStatus for FixedSip {
    fn snapshot(&self) -> SipSnapshot {
        self.0.clone()
    }
}

struct Harness {
    state: ApiState,
    clock: Arc<ManualClock>,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("response body is JSON")
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.to_vec()).expect("utf-8 body")
    }

    /// Asserts the error shape and status, returns nothing.
    fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert_eq!(
            self.headers.get(CONTENT_TYPE).map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
        let body = self.json();
        assert_eq!(body["error"]["code"], code, "body: {body}");
        let message = body["error"]["message"].as_str().expect("message string");
        assert!(!message.is_empty());
        assert_eq!(body.as_object().map(|o| o.len()), Some(1), "only `error`");
    }
}

fn harness_with(settings: ApiSettings, sip: Arc<dyn SipStatus>) -> Harness {
    let control = Arc::new(CallControl::new(
        TTL,
        Duration::from_secs(600),
        1000,
        b2bua::WallClock::new(Instant::now(), SystemTime::now()),
    ));
    let clock = Arc::new(ManualClock::new());
    let state = ApiState::new(control, settings, sip)
        .with_clock(clock.clone())
        .with_store(memory_store());
    Harness { state, clock }
}

fn memory_store() -> Arc<dyn store::Store> {
    Arc::new(store::SqliteStore::open("").expect("memory store"))
}

fn harness() -> Harness {
    harness_with(ApiSettings::default(), Arc::new(NoSip))
}

/// A harness with webhooks on (`policy`), and the dispatcher's end of the handle.
fn harness_with_webhooks(policy: webhooks::TargetPolicy) -> (Harness, webhooks::Requeued) {
    let (handle, requeued) = webhooks::WebhookHandle::new(policy);
    let mut h = harness();
    h.state = h.state.with_webhooks(handle);
    (h, requeued)
}

fn request(
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .expect("test request")
}

impl Harness {
    async fn send<B>(&self, req: Request<B>) -> Reply
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let response = handle(&self.state, req).await;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("full body").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    async fn post(&self, path: &str, body: &str) -> Reply {
        self.send(request(
            Method::POST,
            path,
            &[("content-type", "application/json")],
            body,
        ))
        .await
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(request(Method::GET, path, &[], "")).await
    }

    async fn make_call(&self, telnum: &str, caller: &str, callee: &str) -> String {
        let reply = self
            .post(
                &format!("/api/user/{telnum}/makecall"),
                &json!({"caller": caller, "callee": callee}).to_string(),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        reply.json()["callid"]
            .as_str()
            .expect("callid string")
            .to_owned()
    }

    async fn callin(&self, from: &str, to: &str) -> Value {
        let reply = self
            .post(
                "/api/cti/callin",
                &json!({"from": from, "to": to}).to_string(),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        reply.json()
    }
}

// ---- success paths -------------------------------------------------------------------------

#[tokio::test]
async fn makecall_returns_a_callid_and_registers_the_intent() {
    let h = harness();
    let reply = h
        .post(
            "/api/user/1001/makecall",
            r#"{"caller":"2001","callee":"3001"}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let body = reply.json();
    let callid = body["callid"].as_str().expect("callid");
    assert!(callid.bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(body.as_object().map(|o| o.len()), Some(1));
    let intent = h.state.control.intents().get("1001").expect("intent");
    assert_eq!(
        (intent.caller.as_str(), intent.callee.as_str()),
        ("2001", "3001")
    );
    assert_eq!(intent.callid, callid);
}

#[tokio::test]
async fn makecall_accepts_plus_and_percent_encoded_telnum() {
    let h = harness();
    h.make_call("%2B1001", "+2001", "+3001").await;
    let intent = h.state.control.intents().get("1001").expect("intent");
    assert_eq!(
        (intent.caller.as_str(), intent.callee.as_str()),
        ("2001", "3001")
    );
    let json = h.callin("+1001", "+2001").await;
    assert_eq!(json["action"], "bridge");
}

#[tokio::test]
async fn latest_makecall_wins() {
    let h = harness();
    let first = h.make_call("1001", "2001", "3001").await;
    let second = h.make_call("1001", "2001", "3002").await;
    assert_ne!(first, second);
    assert_eq!(h.state.control.intents().len(), 1);
    let old = h.get(&format!("/api/calls/{first}")).await.json();
    assert_eq!(old["state"], "ended");
    assert_eq!(old["end_cause"], "intent_replaced");
    let json = h.callin("1001", "2001").await;
    assert_eq!(
        json,
        json!({"action": "bridge", "caller": "2001", "callee": "3002", "callid": second})
    );
}

#[tokio::test]
async fn cancelcall_says_what_was_cancelled() {
    let h = harness();
    let callid = h.make_call("1001", "2001", "3001").await;
    // Empty body without any Content-Type.
    let reply = h
        .send(request(Method::POST, "/api/user/1001/cancelcall", &[], ""))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.json(),
        json!({"cancelled": true, "callid": callid, "caller": "2001", "callee": "3001"})
    );
    let record = h.get(&format!("/api/calls/{callid}")).await.json();
    assert_eq!(record["end_cause"], "intent_cancelled");
    // Nothing left: `{}` body says so.
    let reply = h.post("/api/user/1001/cancelcall", "{}").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), json!({"cancelled": false}));
}

#[tokio::test]
async fn cancel_then_callin_rejects() {
    let h = harness();
    h.make_call("1001", "2001", "3001").await;
    h.post("/api/user/1001/cancelcall", "{}").await;
    assert_eq!(
        h.callin("1001", "2001").await,
        json!({"action": "reject", "reason": "no_intent"})
    );
}

#[tokio::test]
async fn callin_bridges_once_and_consumes_the_intent() {
    let h = harness();
    let callid = h.make_call("1001", "2001", "3001").await;
    assert_eq!(
        h.callin("1001", "2001").await,
        json!({"action": "bridge", "caller": "2001", "callee": "3001", "callid": callid})
    );
    assert!(h.state.control.intents().is_empty());
    let record = h.get(&format!("/api/calls/{callid}")).await.json();
    assert_eq!(record["state"], "trying");
    assert_eq!(
        h.callin("1001", "2001").await,
        json!({"action": "reject", "reason": "no_intent"})
    );
}

#[tokio::test]
async fn callin_accepts_the_callee_as_to() {
    let h = harness();
    let callid = h.make_call("1001", "2001", "3001").await;
    assert_eq!(
        h.callin("1001", "3001").await,
        json!({"action": "bridge", "caller": "2001", "callee": "3001", "callid": callid})
    );
    assert!(h.state.control.intents().is_empty());
}

#[tokio::test]
async fn callin_to_another_number_rejects_and_keeps_the_intent() {
    let h = harness();
    h.make_call("1001", "2001", "3001").await;
    assert_eq!(
        h.callin("1001", "2999").await,
        json!({"action": "reject", "reason": "other_number"})
    );
    assert_eq!(
        h.callin("1999", "2001").await,
        json!({"action": "reject", "reason": "no_intent"})
    );
    assert_eq!(h.callin("1001", "2001").await["action"], "bridge");
}

#[tokio::test]
async fn intent_expires_on_the_controlled_clock() {
    let h = harness();
    h.make_call("1002", "2002", "3002").await;
    h.clock.advance(TTL - Duration::from_secs(1));
    assert_eq!(h.callin("1002", "2002").await["action"], "bridge");

    let callid = h.make_call("1001", "2001", "3001").await;
    h.clock.advance(TTL);
    assert_eq!(
        h.callin("1001", "2001").await,
        json!({"action": "reject", "reason": "intent_expired"})
    );
    let record = h.get(&format!("/api/calls/{callid}")).await.json();
    assert_eq!(record["state"], "ended");
    assert_eq!(record["end_cause"], "intent_expired");
    // Swept: a later call finds nothing at all.
    assert_eq!(
        h.callin("1001", "2001").await,
        json!({"action": "reject", "reason": "no_intent"})
    );
}

#[tokio::test]
async fn get_call_returns_the_record() {
    let h = harness();
    let callid = h.make_call("1001", "2001", "3001").await;
    let reply = h.get(&format!("/api/calls/{callid}")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let record = reply.json();
    assert_eq!(record["callid"], callid.as_str());
    assert_eq!(record["telnum"], "1001");
    assert_eq!(record["caller"], "2001");
    assert_eq!(record["callee"], "3001");
    assert_eq!(record["state"], "intent");
    assert!(record["created_at"].as_u64().is_some());
    assert!(record["ended_at"].is_null());
    let expected = h.state.control.call(&callid).expect("record");
    assert_eq!(expected.state, CallState::Intent);
    assert_eq!(expected.end_cause, None::<EndCause>);
}

#[tokio::test]
async fn get_unknown_call_is_404() {
    let h = harness();
    h.get("/api/calls/12345")
        .await
        .assert_error(StatusCode::NOT_FOUND, "unknown_call");
    h.get("/api/calls/%ZZ")
        .await
        .assert_error(StatusCode::NOT_FOUND, "unknown_call");
}

#[tokio::test]
async fn healthz_follows_the_sip_side() {
    let down = harness();
    let reply = down.get("/healthz").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        reply.json(),
        json!({"status": "unavailable", "sip": false, "http": true, "trunk": "unmonitored", "registration": "off"})
    );
    let up = harness_with(
        ApiSettings::default(),
        Arc::new(FixedSip(SipSnapshot {
            sip_serving: true,
            ..SipSnapshot::default()
        })),
    );
    let reply = up.get("/healthz").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.json(),
        json!({"status": "ok", "sip": true, "http": true, "trunk": "unmonitored", "registration": "off"})
    );
    let head = up.send(request(Method::HEAD, "/healthz", &[], "")).await;
    assert_eq!(head.status, StatusCode::OK);
    // From the first moment of a shutdown, while SIP still serves the live calls.
    let draining = harness_with(
        ApiSettings::default(),
        Arc::new(FixedSip(SipSnapshot {
            sip_serving: true,
            draining: true,
            ..SipSnapshot::default()
        })),
    );
    let reply = draining.get("/healthz").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        reply.json(),
        json!({"status": "draining", "sip": false, "http": true, "trunk": "unmonitored", "registration": "off"})
    );
}

#[tokio::test]
async fn healthz_lists_the_trunk_targets_in_order() {
    let h = harness_with(
        ApiSettings::default(),
        Arc::new(FixedSip(SipSnapshot {
            sip_serving: true,
            trunk_targets: vec!["192.0.2.10:5060".into(), "192.0.2.20:5080".into()],
            ..SipSnapshot::default()
        })),
    );
    let reply = h.get("/healthz").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.json()["trunk_targets"],
        json!(["192.0.2.10:5060", "192.0.2.20:5080"])
    );
}

#[tokio::test]
async fn healthz_reports_the_trunk_and_stays_200_while_it_is_down() {
    for (trunk, word) in [(TrunkStatus::Up, "up"), (TrunkStatus::Down, "down")] {
        let h = harness_with(
            ApiSettings::default(),
            Arc::new(FixedSip(SipSnapshot {
                sip_serving: true,
                trunk,
                ..SipSnapshot::default()
            })),
        );
        let reply = h.get("/healthz").await;
        // The node is healthy whatever the trunk does: it refuses calls itself while the
        // trunk is down, and a load balancer must not pull it for that.
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.json(),
            json!({"status": "ok", "sip": true, "http": true, "trunk": word, "registration": "off"})
        );
    }
}

#[tokio::test]
async fn trunk_metrics_only_when_the_trunk_is_pinged() {
    let text = |trunk| async move {
        let h = harness_with(
            ApiSettings::default(),
            Arc::new(FixedSip(SipSnapshot {
                sip_serving: true,
                trunk,
                trunk_pings_answered: 7,
                trunk_pings_lost: 3,
                ..SipSnapshot::default()
            })),
        );
        h.get("/metrics").await.text()
    };
    let down = text(TrunkStatus::Down).await;
    for line in [
        "callbridge_trunk_up 0",
        "callbridge_trunk_pings_total{result=\"answered\"} 7",
        "callbridge_trunk_pings_total{result=\"lost\"} 3",
        "# TYPE callbridge_trunk_up gauge",
        "# TYPE callbridge_trunk_pings counter",
    ] {
        assert!(down.lines().any(|l| l == line), "{line} missing:\n{down}");
    }
    let up = text(TrunkStatus::Up).await;
    assert!(up.lines().any(|l| l == "callbridge_trunk_up 1"), "{up}");
    let unmonitored = text(TrunkStatus::Unmonitored).await;
    assert!(!unmonitored.contains("callbridge_trunk_"), "{unmonitored}");
}

#[tokio::test]
async fn metrics_exposes_sip_side_intents_and_http_counters() {
    let sip = SipSnapshot {
        sip_serving: true,
        active_calls: 7,
        dialogs: 13,
        client_transactions: 5,
        server_transactions: 6,
        calls_bridged: 42,
        // The reason codes the engine really counts (`b2bua::engine`'s `refuse` calls in
        // `incoming.rs`): b2bua has no public name for them yet, hence the literals.
        calls_refused: vec![("no_intent".into(), 3), ("untrusted_source".into(), 2)],
        calls_failed: vec![("callee_rejected".into(), 4)],
        sip_malformed_answered: 8,
        sip_malformed_dropped: 9,
        sip_untrusted: 11,
        sip_wrong_peer: 12,
        sip_shed_unread: 13,
        sip_connections: 14,
        sip_connections_refused_untrusted: 15,
        sip_connections_refused_per_ip: 16,
        sip_connections_refused_full: 17,
        draining: false,
        trunk_targets: vec!["192.0.2.10:5060".into()],
        media_packets_relayed: 1000,
        media_packets_dropped: 3,
        media_ports_in_use: 8,
        media_ports_capacity: 10000,
        heap: Some(crate::HeapStats {
            allocated: 100,
            active: 200,
            resident: 300,
            retained: 400,
        }),
        trunk: TrunkStatus::Up,
        trunk_pings_answered: 20,
        trunk_pings_lost: 1,
        registration: crate::RegistrationStatus::Registered,
        registrations_accepted: 5,
        registrations_failed: 2,
    };
    let h = harness_with(ApiSettings::default(), Arc::new(FixedSip(sip)));
    h.make_call("1001", "2001", "3001").await;
    h.make_call("1002", "2002", "3002").await;
    h.callin("1003", "2003").await;
    h.get("/nope").await;
    let reply = h.get("/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.headers.get(CONTENT_TYPE).map(|v| v.as_bytes()),
        Some(METRICS_CONTENT_TYPE.as_bytes())
    );
    let text = reply.text();
    for line in [
        "callbridge_sip_serving 1",
        "callbridge_trunk_registered 1",
        "callbridge_trunk_registrations_total{result=\"accepted\"} 5",
        "callbridge_trunk_registrations_total{result=\"failed\"} 2",
        "callbridge_active_calls 7",
        "callbridge_sip_dialogs 13",
        "callbridge_media_packets_relayed_total 1000",
        "callbridge_media_packets_dropped_total 3",
        "callbridge_media_ports_in_use 8",
        "callbridge_media_ports_capacity 10000",
        "callbridge_heap_bytes{kind=\"allocated\"} 100",
        "callbridge_heap_bytes{kind=\"resident\"} 300",
        "callbridge_heap_bytes{kind=\"retained\"} 400",
        "callbridge_sip_transactions{kind=\"client\"} 5",
        "callbridge_sip_transactions{kind=\"server\"} 6",
        "callbridge_intents_pending 2",
        "callbridge_call_records 2",
        "callbridge_calls_bridged_total 42",
        "callbridge_calls_refused_total{reason=\"no_intent\"} 3",
        "callbridge_calls_refused_total{reason=\"untrusted_source\"} 2",
        "callbridge_calls_failed_total{reason=\"callee_rejected\"} 4",
        "callbridge_sip_malformed_total{handling=\"answered\"} 8",
        "callbridge_sip_malformed_total{handling=\"dropped\"} 9",
        "callbridge_sip_refused_messages_total{reason=\"untrusted_source\"} 11",
        "callbridge_sip_refused_messages_total{reason=\"wrong_peer\"} 12",
        "callbridge_sip_shed_unread_total 13",
        "callbridge_sip_connections 14",
        "callbridge_sip_connections_refused_total{reason=\"untrusted\"} 15",
        "callbridge_sip_connections_refused_total{reason=\"per_ip\"} 16",
        "callbridge_sip_connections_refused_total{reason=\"full\"} 17",
        "callbridge_http_requests_total{class=\"2xx\"} 3",
        "callbridge_http_requests_total{class=\"4xx\"} 1",
        "callbridge_http_requests_total{class=\"5xx\"} 0",
        "callbridge_cti_decisions_total{action=\"reject\",reason=\"no_intent\"} 1",
        "callbridge_trunk_up 1",
        "callbridge_trunk_pings_total{result=\"answered\"} 20",
        "callbridge_trunk_pings_total{result=\"lost\"} 1",
        "# TYPE callbridge_calls_bridged counter",
        "# TYPE callbridge_active_calls gauge",
        "# EOF",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
}

// ---- errors --------------------------------------------------------------------------------

#[tokio::test]
async fn unknown_paths_are_404_json() {
    let h = harness();
    for path in [
        "/",
        "/api",
        "/api/user/1001",
        "/api/user/1001/makecall/",
        "/api/user//makecall",
        "/api/calls/",
        "/healthz/x",
    ] {
        h.get(path)
            .await
            .assert_error(StatusCode::NOT_FOUND, "not_found");
    }
    h.post("/api/user/1001/dial", "{}")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn wrong_method_is_405_with_allow() {
    let h = harness();
    for (method, path, allow) in [
        (Method::GET, "/api/user/1001/makecall", "POST"),
        (Method::PUT, "/api/user/1001/cancelcall", "POST"),
        (Method::GET, "/api/cti/callin", "POST"),
        (Method::DELETE, "/api/calls/1", "GET, HEAD"),
        (Method::POST, "/healthz", "GET, HEAD"),
        (Method::POST, "/metrics", "GET, HEAD"),
    ] {
        let reply = h.send(request(method.clone(), path, &[], "")).await;
        reply.assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        assert_eq!(
            reply.headers.get(ALLOW).map(|v| v.as_bytes()),
            Some(allow.as_bytes()),
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn malformed_bodies_are_400() {
    let h = harness();
    let path = "/api/user/1001/makecall";
    h.post(path, "{\"caller\":")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "malformed_json");
    h.post(path, "\u{1}garbage")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "malformed_json");
    h.post(path, "[1,2]")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_body");
    h.post(path, r#"{"caller":2001,"callee":"3001"}"#)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_field_type");
    h.post("/api/cti/callin", r#"{"from":["1001"],"to":"2001"}"#)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_field_type");
    h.post("/api/user/1001/cancelcall", "nope")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "malformed_json");
    assert!(h.state.control.intents().is_empty(), "nothing changed");
}

/// A body whose read fails half-way, as when a client resets the connection.
struct BrokenBody;

impl Body for BrokenBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Poll::Ready(Some(Err(std::io::Error::other("connection reset"))))
    }
}

#[tokio::test]
async fn failed_body_read_is_400() {
    let h = harness();
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/user/1001/makecall")
        .header("content-type", "application/json")
        .body(BrokenBody)
        .expect("request");
    h.send(req)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "body_read_failed");
}

#[tokio::test]
async fn oversize_bodies_are_413() {
    let settings = ApiSettings {
        max_body_bytes: 64,
        ..ApiSettings::default()
    };
    let h = harness_with(settings, Arc::new(NoSip));
    let big = format!(
        r#"{{"caller":"2001","callee":"3001","pad":"{}"}}"#,
        "x".repeat(100)
    );
    // Declared up front.
    let req = request(
        Method::POST,
        "/api/user/1001/makecall",
        &[
            ("content-type", "application/json"),
            ("content-length", "200"),
        ],
        &big,
    );
    h.send(req)
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    // Not declared: caught while reading.
    h.post("/api/user/1001/makecall", &big)
        .await
        .assert_error(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    // Exactly at the limit is fine.
    let fits = r#"{"caller":"2001","callee":"3001"}"#;
    let padded = format!("{fits}{}", " ".repeat(64 - fits.len()));
    assert_eq!(padded.len(), 64);
    assert_eq!(
        h.post("/api/user/1001/makecall", &padded).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn wrong_content_type_is_415() {
    let h = harness();
    let body = r#"{"caller":"2001","callee":"3001"}"#;
    for headers in [
        &[("content-type", "text/plain")][..],
        &[("content-type", "application/x-www-form-urlencoded")][..],
        &[][..],
    ] {
        h.send(request(
            Method::POST,
            "/api/user/1001/makecall",
            headers,
            body,
        ))
        .await
        .assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    }
    h.send(request(
        Method::POST,
        "/api/user/1001/cancelcall",
        &[("content-type", "text/plain")],
        "{}",
    ))
    .await
    .assert_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    // Parameters and case do not matter.
    let reply = h
        .send(request(
            Method::POST,
            "/api/user/1001/makecall",
            &[("content-type", "Application/JSON; charset=utf-8")],
            body,
        ))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn semantically_invalid_requests_are_422() {
    let h = harness();
    let cases: &[(&str, &str, &str)] = &[
        (
            "/api/user/1001/makecall",
            r#"{"callee":"3001"}"#,
            "missing_field",
        ),
        (
            "/api/user/1001/makecall",
            r#"{"caller":"2001","callee":null}"#,
            "missing_field",
        ),
        ("/api/user/1001/makecall", "{}", "missing_field"),
        (
            "/api/user/1001/makecall",
            r#"{"caller":"20a1","callee":"3001"}"#,
            "invalid_number",
        ),
        (
            "/api/user/1001/makecall",
            r#"{"caller":"","callee":"3001"}"#,
            "invalid_number",
        ),
        (
            "/api/user/1001/makecall",
            r#"{"caller":"+","callee":"3001"}"#,
            "invalid_number",
        ),
        (
            "/api/user/1001/makecall",
            r#"{"caller":"2001","callee":"30 01"}"#,
            "invalid_number",
        ),
        (
            "/api/user/1001/makecall",
            r#"{"caller":"2001","callee":"++3001"}"#,
            "invalid_number",
        ),
        (
            "/api/user/1001/makecall",
            r#"{"caller":"2001","callee":"٣٠٠١"}"#,
            "invalid_number",
        ),
        (
            "/api/user/10x1/makecall",
            r#"{"caller":"2001","callee":"3001"}"#,
            "invalid_number",
        ),
        (
            "/api/user/1001/makecall",
            r#"{"caller":"+1001","callee":"3001"}"#,
            "caller_is_telnum",
        ),
        (
            "/api/user/1001/makecall",
            r#"{"caller":"2001","callee":"+2001"}"#,
            "callee_is_caller",
        ),
        ("/api/user/abc/cancelcall", "{}", "invalid_number"),
        ("/api/cti/callin", r#"{"from":"1001"}"#, "missing_field"),
        (
            "/api/cti/callin",
            r#"{"from":"x","to":"2001"}"#,
            "invalid_number",
        ),
    ];
    for (path, body, code) in cases {
        let reply = h.post(path, body).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path} {body}"
        );
        reply.assert_error(StatusCode::UNPROCESSABLE_ENTITY, code);
    }
    // Length: exactly max_number_len digits pass, one more fails.
    let max = "9".repeat(32);
    h.make_call("1001", "2001", &max).await;
    let too_long = format!("+{max}9");
    h.post(
        "/api/user/1001/makecall",
        &json!({"caller": "2001", "callee": too_long}).to_string(),
    )
    .await
    .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_number");
    assert_eq!(h.state.control.intents().len(), 1);
}

#[tokio::test]
async fn tokens_guard_api_but_not_health_or_metrics() {
    let settings = ApiSettings {
        tokens: vec!["other".into(), TOKEN.into()],
        ..ApiSettings::default()
    };
    let h = harness_with(settings, Arc::new(NoSip));
    let body = r#"{"caller":"2001","callee":"3001"}"#;
    let path = "/api/user/1001/makecall";
    let bearer = format!("Bearer {TOKEN}");
    let wrong = format!("Bearer {TOKEN}x");
    let basic = format!("Basic {TOKEN}");
    for auth in [
        None,
        Some(wrong.as_str()),
        Some(basic.as_str()),
        Some("Bearer "),
        Some(TOKEN),
    ] {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(auth) = auth {
            headers.push(("authorization", auth));
        }
        let reply = h.send(request(Method::POST, path, &headers, body)).await;
        reply.assert_error(StatusCode::UNAUTHORIZED, "unauthenticated");
        assert_eq!(
            reply.headers.get(WWW_AUTHENTICATE).map(|v| v.as_bytes()),
            Some(&b"Bearer"[..])
        );
    }
    assert!(h.state.control.intents().is_empty());
    // Unknown /api paths and wrong methods answer 401 too: nothing leaks before auth.
    h.get("/api/nothing-here")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthenticated");
    h.get(path)
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "unauthenticated");
    // The right token, any scheme case.
    for auth in [bearer.as_str(), &format!("bearer {TOKEN}"), "Bearer other"] {
        let reply = h
            .send(request(
                Method::POST,
                path,
                &[
                    ("content-type", "application/json"),
                    ("authorization", auth),
                ],
                body,
            ))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{auth}");
    }
    // Not behind tokens.
    assert_eq!(h.get("/metrics").await.status, StatusCode::OK);
    assert_eq!(
        h.get("/healthz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    h.get("/unknown")
        .await
        .assert_error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn without_tokens_no_authorization_is_needed() {
    let h = harness();
    assert!(h.state.settings.tokens.is_empty());
    h.make_call("1001", "2001", "3001").await;
    // A stray Authorization header is ignored.
    let reply = h
        .send(request(
            Method::POST,
            "/api/user/1001/cancelcall",
            &[("authorization", "Bearer whatever")],
            "",
        ))
        .await;
    assert_eq!(reply.json()["cancelled"], true);
}

// ---- helpers -------------------------------------------------------------------------------

#[test]
fn routes_parse() {
    assert_eq!(
        route("/api/user/1001/makecall"),
        Some(Route::MakeCall("1001"))
    );
    assert_eq!(
        route("/api/user/1001/cancelcall"),
        Some(Route::CancelCall("1001"))
    );
    assert_eq!(route("/api/cti/callin"), Some(Route::CtiCallin));
    assert_eq!(route("/api/calls/77"), Some(Route::Call("77")));
    assert_eq!(route("/api/calls/77/events"), Some(Route::CallEvents("77")));
    assert_eq!(
        route("/api/events/evt_1/redeliver"),
        Some(Route::Redeliver("evt_1"))
    );
    assert_eq!(route("/api/events/evt_1"), None);
    assert_eq!(route("/healthz"), Some(Route::Healthz));
    assert_eq!(route("/metrics"), Some(Route::Metrics));
    assert_eq!(route("/api/cti/callin/x"), None);
    assert_eq!(route("/apix/cti/callin"), None);
}

#[test]
fn constant_time_eq_and_bearer_parsing() {
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"abcd"));
    assert!(!constant_time_eq(b"", b"a"));
    assert!(constant_time_eq(b"", b""));
    assert_eq!(bearer_token("Bearer abc"), Some("abc"));
    assert_eq!(bearer_token("BEARER  abc "), Some("abc"));
    assert_eq!(bearer_token("Bearer"), None);
    assert_eq!(bearer_token("Basic abc"), None);
}

#[test]
fn percent_decoding() {
    assert_eq!(percent_decode("%2B1001").as_deref(), Some("+1001"));
    assert_eq!(percent_decode("1001").as_deref(), Some("1001"));
    assert_eq!(percent_decode("%2"), None);
    assert_eq!(percent_decode("%zz"), None);
    assert_eq!(percent_decode("%FF"), None);
}

#[tokio::test]
async fn makecall_beyond_the_intent_limit_is_503() {
    let control = Arc::new(CallControl::with_max_intents(
        TTL,
        1,
        Duration::from_secs(600),
        1000,
        b2bua::WallClock::new(Instant::now(), SystemTime::now()),
    ));
    let h = Harness {
        state: ApiState::new(control, ApiSettings::default(), Arc::new(NoSip))
            .with_store(memory_store()),
        clock: Arc::new(ManualClock::new()),
    };
    h.make_call("1001", "2001", "3001").await;
    let reply = h
        .send(request(
            Method::POST,
            "/api/user/1002/makecall",
            &[("content-type", "application/json")],
            r#"{"caller":"2002","callee":"3002"}"#,
        ))
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.json()["error"]["code"], "intent_table_full");
    // The number already holding an intent may still replace it.
    h.make_call("1001", "2001", "3009").await;
}

/// The SIP side as the hang-up route sees it: answers each request with `outcome`, or (with
/// `None`) drops it, as a stopped or saturated SIP task does.
#[derive(Default)]
struct ScriptedActions {
    outcome: std::sync::Mutex<Option<b2bua::engine::ApiHangup>>,
    asked: std::sync::Mutex<Vec<String>>,
}

impl ScriptedActions {
    fn answer(&self, outcome: Option<b2bua::engine::ApiHangup>) {
        *self.outcome.lock().unwrap() = outcome;
    }
}

impl crate::CallActions for ScriptedActions {
    fn hang_up(&self, callid: String) -> tokio::sync::oneshot::Receiver<b2bua::engine::ApiHangup> {
        self.asked.lock().unwrap().push(callid);
        let (reply, answer) = tokio::sync::oneshot::channel();
        if let Some(outcome) = self.outcome.lock().unwrap().clone() {
            let _ = reply.send(outcome);
        }
        answer
    }
}

fn harness_acting() -> (Harness, Arc<ScriptedActions>) {
    let actions = Arc::new(ScriptedActions::default());
    let mut h = harness();
    h.state = h.state.with_actions(actions.clone());
    (h, actions)
}

#[tokio::test]
async fn hangup_answers_what_the_engine_did() {
    let (h, actions) = harness_acting();
    let callid = h.make_call("1001", "2001", "3001").await;
    let record = h.state.control.call(&callid).unwrap();
    // Ended now: 200 with the record the engine returned.
    actions.answer(Some(b2bua::engine::ApiHangup::Ended(Box::new(
        record.clone(),
    ))));
    let reply = h.post(&format!("/api/calls/{callid}/hangup"), "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["callid"], callid.as_str());
    assert_eq!(
        actions.asked.lock().unwrap().as_slice(),
        std::slice::from_ref(&callid)
    );
    // `{}` is a valid body too; any other JSON value is not.
    let reply = h.post(&format!("/api/calls/{callid}/hangup"), "{}").await;
    assert_eq!(reply.status, StatusCode::OK);
    h.post(&format!("/api/calls/{callid}/hangup"), "[1]")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_body");
    // Unknown ids are answered without asking the SIP side.
    h.post("/api/calls/99999999999999999999/hangup", "")
        .await
        .assert_error(StatusCode::NOT_FOUND, "unknown_call");
    assert_eq!(actions.asked.lock().unwrap().len(), 2);
    // Already ended: 409.
    actions.answer(Some(b2bua::engine::ApiHangup::NotLive(Box::new(record))));
    h.post(&format!("/api/calls/{callid}/hangup"), "")
        .await
        .assert_error(StatusCode::CONFLICT, "call_ended");
    // Pruned between the check and the engine: 404.
    actions.answer(Some(b2bua::engine::ApiHangup::Unknown));
    h.post(&format!("/api/calls/{callid}/hangup"), "")
        .await
        .assert_error(StatusCode::NOT_FOUND, "unknown_call");
    // The SIP side drops the request (stopped, or its queue full): 503.
    actions.answer(None);
    h.post(&format!("/api/calls/{callid}/hangup"), "")
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "sip_unavailable");
    // Only POST.
    let reply = h.get(&format!("/api/calls/{callid}/hangup")).await;
    reply.assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    assert_eq!(reply.headers.get(ALLOW).unwrap(), "POST");
}

#[tokio::test]
async fn hangup_without_a_sip_side_is_503() {
    let h = harness();
    let callid = h.make_call("1001", "2001", "3001").await;
    h.post(&format!("/api/calls/{callid}/hangup"), "")
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "sip_unavailable");
}

impl Harness {
    async fn send_with(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.send(request(method, path, &all, body)).await
    }

    fn store(&self) -> Arc<dyn store::Store> {
        self.state.store.clone().expect("a store")
    }
}

fn ended_row(callid: &str, telnum: &str, created_at: u64) -> store::CallRow {
    store::CallRow {
        callid: callid.to_owned(),
        telnum: telnum.to_owned(),
        caller: "2001".to_owned(),
        callee: "3001".to_owned(),
        state: "ended".to_owned(),
        created_at,
        ended_at: Some(created_at + 10),
        ..store::CallRow::default()
    }
}

#[tokio::test]
async fn listing_merges_live_calls_with_stored_ones_newest_first() {
    let h = harness();
    // Two stored records from long ago, then a live intent (created now).
    h.store()
        .upsert_calls(&[
            ended_row("11", "1001", 1_000),
            ended_row("12", "+1001", 2_000),
        ])
        .unwrap();
    h.store()
        .upsert_calls(&[ended_row("13", "1002", 3_000)])
        .unwrap();
    let live = h.make_call("1001", "2001", "3001").await;
    let reply = h.get("/api/calls?telnum=1001").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let page = reply.json();
    let ids: Vec<&str> = page["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["callid"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [live.as_str(), "12", "11"]);
    assert_eq!(page["next_cursor"], Value::Null);
    // Pages of two: the cursor goes on from the live record into the stored ones.
    let first = h.get("/api/calls?telnum=1001&limit=2").await.json();
    assert_eq!(first["calls"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let second = h
        .get(&format!("/api/calls?telnum=1001&limit=2&cursor={cursor}"))
        .await
        .json();
    assert_eq!(second["calls"][0]["callid"], "11");
    assert_eq!(second["next_cursor"], Value::Null);
    // State filters: ended ones only in the store, the intent only in memory.
    let ended = h.get("/api/calls?state=ended").await.json();
    assert_eq!(ended["calls"].as_array().unwrap().len(), 3);
    let intents = h.get("/api/calls?state=intent").await.json();
    assert_eq!(intents["calls"][0]["callid"], live.as_str());
    assert_eq!(intents["calls"].as_array().unwrap().len(), 1);
    // Time windows are [since, until).
    let window = h.get("/api/calls?since=1000&until=2000").await.json();
    assert_eq!(window["calls"][0]["callid"], "11");
    assert_eq!(window["calls"].as_array().unwrap().len(), 1);
    for bad in [
        "limit=0",
        "state=gone",
        "cursor=x",
        "since=-5",
        "telnum=12a",
    ] {
        h.get(&format!("/api/calls?{bad}"))
            .await
            .assert_error(StatusCode::BAD_REQUEST, "invalid_parameter");
    }
    // A stored record by its id; an unknown one is 404.
    assert_eq!(h.get("/api/calls/12").await.json()["telnum"], "+1001");
    h.get("/api/calls/404404")
        .await
        .assert_error(StatusCode::NOT_FOUND, "unknown_call");
    // Hang-up of a call only in the store: it has ended.
    h.post("/api/calls/12/hangup", "")
        .await
        .assert_error(StatusCode::CONFLICT, "call_ended");
}

#[tokio::test]
async fn export_streams_csv_and_ndjson() {
    let h = harness();
    let mut quoted = ended_row("21", "1001", 5_000);
    quoted.data = Some("a, \"b\"".to_owned());
    h.store()
        .upsert_calls(&[quoted, ended_row("22", "1001", 6_000)])
        .unwrap();
    let reply = h.get("/api/calls/export?format=csv").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.headers[CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let text = reply.text();
    let lines: Vec<&str> = text.split("\r\n").collect();
    assert_eq!(lines[0], crate::listing::CSV_COLUMNS.join(","));
    assert!(
        lines[1].starts_with("22,1001,2001,3001,,ended,6000,"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].starts_with("21,1001,2001,3001,\"a, \"\"b\"\"\",ended,"),
        "{}",
        lines[2]
    );
    assert_eq!(lines.len(), 4, "two rows, a header and the final CRLF");
    let reply = h.get("/api/calls/export?format=ndjson&telnum=1001").await;
    assert_eq!(reply.headers[CONTENT_TYPE], "application/x-ndjson");
    let rows: Vec<Value> = reply
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["data"], "a, \"b\"");
    h.get("/api/calls/export?format=xml")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_parameter");
}

#[tokio::test]
async fn numbers_are_assigned_listed_removed_and_checked_with_ownership() {
    let h = harness();
    let reply = h
        .send_with(
            Method::PUT,
            "/api/numbers/2001",
            &[],
            r#"{"telnum":"+1001"}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json(), json!({"number": "2001", "telnum": "1001"}));
    assert!(h.state.control.numbers().owns("1001", "2001"));
    let list = h.get("/api/numbers?telnum=1001").await.json();
    assert_eq!(
        list,
        json!({"numbers": [{"number": "2001", "telnum": "1001"}]})
    );
    assert_eq!(
        h.get("/api/numbers").await.json()["numbers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    h.send_with(Method::PUT, "/api/numbers/2001", &[], r#"{"telnum":"x"}"#)
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_number");
    h.send_with(
        Method::PUT,
        "/api/numbers/20a1",
        &[],
        r#"{"telnum":"1001"}"#,
    )
    .await
    .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_number");
    h.send_with(Method::POST, "/api/numbers/2001", &[], "")
        .await
        .assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");

    // Ownership on: only the owner's makecall with its own number passes.
    h.state.control.set_require_ownership(true);
    let body = r#"{"caller":"2001","callee":"3001"}"#;
    h.post("/api/user/1002/makecall", body)
        .await
        .assert_error(StatusCode::FORBIDDEN, "number_not_owned");
    assert_eq!(
        h.post("/api/user/1001/makecall", body).await.status,
        StatusCode::OK
    );

    let reply = h
        .send_with(Method::DELETE, "/api/numbers/+2001", &[], "")
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), json!({"number": "2001", "telnum": "1001"}));
    h.send_with(Method::DELETE, "/api/numbers/2001", &[], "")
        .await
        .assert_error(StatusCode::NOT_FOUND, "unknown_number");
    h.post("/api/user/1001/makecall", body)
        .await
        .assert_error(StatusCode::FORBIDDEN, "number_not_owned");
}

#[tokio::test]
async fn makecall_data_and_notify_url_are_checked_and_recorded() {
    let (h, _requeued) = harness_with_webhooks(webhooks::TargetPolicy::new(
        &[],
        "http://backend.example/hook",
    ));
    let body = json!({"caller": "2001", "callee": "3001", "data": "ticket 9",
        "notify_url": "https://backend.example:8443/hooks?x=1"});
    let reply = h.post("/api/user/1001/makecall", &body.to_string()).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let callid = reply.json()["callid"].as_str().unwrap().to_owned();
    let record = h.get(&format!("/api/calls/{callid}")).await.json();
    assert_eq!(record["data"], "ticket 9");
    assert_eq!(
        record["notify_url"],
        "https://backend.example:8443/hooks?x=1"
    );
    let long = "x".repeat(MAX_DATA_BYTES + 1);
    h.post(
        "/api/user/1001/makecall",
        &json!({"caller": "2001", "callee": "3001", "data": long}).to_string(),
    )
    .await
    .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "data_too_long");
    for url in [
        "ftp://x",
        "https://",
        "http:// spaced",
        "backend.example/hooks",
        "https://:80/",
    ] {
        h.post(
            "/api/user/1001/makecall",
            &json!({"caller": "2001", "callee": "3001", "notify_url": url}).to_string(),
        )
        .await
        .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_notify_url");
    }
    h.post(
        "/api/user/1001/makecall",
        r#"{"caller":"2001","callee":"3001","data":5}"#,
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "invalid_field_type");
}

#[tokio::test]
async fn notify_url_follows_the_webhook_allow_list() {
    let policy = webhooks::TargetPolicy::new(
        &["hooks.example.com".into(), "*.app.test".into()],
        "http://ignored.example/hook",
    );
    let (h, _requeued) = harness_with_webhooks(policy);
    let makecall =
        |url: &str| json!({"caller": "2001", "callee": "3001", "notify_url": url}).to_string();
    for allowed in [
        "https://hooks.example.com/cb",
        "http://a.app.test:8080/x?y=1",
    ] {
        let reply = h.post("/api/user/1001/makecall", &makecall(allowed)).await;
        assert_eq!(reply.status, StatusCode::OK, "{allowed}: {}", reply.text());
    }
    // A host off the list (an internal address, the default URL's host once a list is set).
    for refused in [
        "http://169.254.169.254/latest/meta-data",
        "http://ignored.example/hook",
        "https://app.test/",
    ] {
        let reply = h.post("/api/user/1001/makecall", &makecall(refused)).await;
        reply.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "notify_url_not_allowed");
        let message = reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.contains("webhooks.allowed_hosts"), "{message}");
    }
    // Credentials in the URL, even on an allowed host: invalid, whatever the list says.
    let reply = h
        .post(
            "/api/user/1001/makecall",
            &makecall("https://user:pw@hooks.example.com/cb"),
        )
        .await;
    reply.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "invalid_notify_url");
    assert!(reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("credentials"));
    // The refusals registered nothing: the one intent of 1001 is the last allowed one's.
    assert_eq!(h.state.control.intents().len(), 1);
}

#[tokio::test]
async fn without_webhooks_every_notify_url_is_refused() {
    let h = harness();
    let reply = h
        .post(
            "/api/user/1001/makecall",
            &json!({"caller": "2001", "callee": "3001",
                "notify_url": "https://hooks.example.com/cb"})
            .to_string(),
        )
        .await;
    reply.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "notify_url_not_allowed");
    let message = reply.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("not configured"), "{message}");
    assert_eq!(h.state.control.intents().len(), 0);
    // Without notify_url, makecall works as ever.
    h.make_call("1001", "2001", "3001").await;
}

#[tokio::test]
async fn idempotency_key_replays_refuses_reuse_and_scopes_by_path() {
    let h = harness();
    let body = r#"{"caller":"2001","callee":"3001"}"#;
    let key = [("idempotency-key", "retry-42")];
    let first = h
        .send_with(Method::POST, "/api/user/1001/makecall", &key, body)
        .await;
    assert_eq!(first.status, StatusCode::OK);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let again = h
        .send_with(Method::POST, "/api/user/1001/makecall", &key, body)
        .await;
    assert_eq!(again.json(), first.json());
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_eq!(h.state.control.intents().len(), 1, "one intent");
    h.send_with(
        Method::POST,
        "/api/user/1001/makecall",
        &key,
        r#"{"caller":"2001","callee":"3002"}"#,
    )
    .await
    .assert_error(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused");
    // Another path (another telnum) is another scope.
    let other = h
        .send_with(
            Method::POST,
            "/api/user/1002/makecall",
            &key,
            r#"{"caller":"2002","callee":"3002"}"#,
        )
        .await;
    assert_eq!(other.status, StatusCode::OK);
    // An error answer is replayed too (4xx), so a retry cannot turn it into a success.
    let bad = h
        .send_with(
            Method::POST,
            "/api/user/1003/makecall",
            &[("idempotency-key", "e1")],
            r#"{"caller":"1003","callee":"3"}"#,
        )
        .await;
    bad.assert_error(StatusCode::UNPROCESSABLE_ENTITY, "caller_is_telnum");
    let bad_again = h
        .send_with(
            Method::POST,
            "/api/user/1003/makecall",
            &[("idempotency-key", "e1")],
            r#"{"caller":"1003","callee":"3"}"#,
        )
        .await;
    assert_eq!(bad_again.json(), bad.json());
    for key in ["", "with space", &"k".repeat(256)] {
        h.send_with(
            Method::POST,
            "/api/user/1001/cancelcall",
            &[("idempotency-key", key)],
            "",
        )
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_idempotency_key");
    }
    // A key being handled is refused to a concurrent twin.
    let inflight = &h.state.inflight;
    let held = crate::idempotency::claim(
        inflight,
        "busy".into(),
        &Method::POST,
        "/api/user/1004/cancelcall",
        &HeaderMap::new(),
        &Bytes::new(),
    );
    assert!(held.is_ok());
    h.send_with(
        Method::POST,
        "/api/user/1004/cancelcall",
        &[("idempotency-key", "busy")],
        "",
    )
    .await
    .assert_error(StatusCode::CONFLICT, "idempotency_key_in_use");
    drop(held);
    assert_eq!(
        h.send_with(
            Method::POST,
            "/api/user/1004/cancelcall",
            &[("idempotency-key", "busy")],
            ""
        )
        .await
        .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn without_a_store_the_store_routes_say_503_and_the_document_is_served() {
    let control = Arc::new(CallControl::new(
        TTL,
        Duration::from_secs(600),
        1000,
        b2bua::WallClock::new(Instant::now(), SystemTime::now()),
    ));
    let h = Harness {
        state: ApiState::new(control, ApiSettings::default(), Arc::new(NoSip)),
        clock: Arc::new(ManualClock::new()),
    };
    h.get("/api/calls")
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
    h.send_with(
        Method::POST,
        "/api/user/1001/cancelcall",
        &[("idempotency-key", "k")],
        "",
    )
    .await
    .assert_error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
    let doc = h.get("/api/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(doc.json()["openapi"], "3.1.0");
}

// ---- webhook events ------------------------------------------------------------------------

/// A stored event of `callid` numbered `seq`, pending, with `body`.
fn outbox_event(callid: &str, seq: u32, body: &str) -> store::OutboxEvent {
    store::OutboxEvent {
        event_id: format!("evt_{callid}_{seq}"),
        callid: callid.to_owned(),
        seq,
        event: "call.ringing".to_owned(),
        target: "http://app.example/hook".to_owned(),
        body: body.to_owned(),
        created_at: 1_000 + u64::from(seq),
        state: store::EVENT_PENDING.to_owned(),
        attempts: 0,
        next_attempt_at: 1_000 + u64::from(seq),
        last_status: None,
        last_error: None,
        delivered_at: None,
    }
}

/// Records an attempt of `event_id` that left it in `state`, as the dispatcher does.
fn settle(h: &Harness, event_id: &str, state: &str, attempts: u32, status: Option<u16>) {
    let delivered = state == store::EVENT_DELIVERED;
    let attempt = store::EventAttempt {
        event_id: event_id.to_owned(),
        state: state.to_owned(),
        attempts,
        next_attempt_at: 9_000,
        last_status: status,
        last_error: (!delivered).then(|| format!("HTTP {}", status.unwrap_or(0))),
        delivered_at: delivered.then_some(8_000),
    };
    h.store()
        .apply(&[store::WriteOp::EventAttempt(Box::new(attempt))])
        .expect("attempt recorded");
}

#[tokio::test]
async fn a_calls_events_are_listed_by_seq_with_their_delivery_state() {
    let h = harness();
    let body =
        |seq: u32| json!({"id": format!("evt_77_{seq}"), "seq": seq, "data": "d"}).to_string();
    h.store()
        .insert_events(&[
            outbox_event("77", 3, "not json {"),
            outbox_event("77", 1, &body(1)),
            outbox_event("78", 1, &body(1)),
            outbox_event("77", 2, &body(2)),
        ])
        .unwrap();
    settle(&h, "evt_77_1", store::EVENT_DELIVERED, 1, Some(200));
    settle(&h, "evt_77_2", store::EVENT_FAILED, 8, Some(503));
    let reply = h.get("/api/calls/77/events").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let events = reply.json()["events"].as_array().cloned().unwrap();
    let seqs: Vec<_> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(
        events[0],
        json!({
            "id": "evt_77_1", "event": "call.ringing", "callid": "77", "seq": 1, "at": 1_001,
            "target": "http://app.example/hook", "state": "delivered", "attempts": 1,
            "next_attempt_at": null, "last_status": 200, "last_error": null,
            "delivered_at": 8_000,
            "payload": {"id": "evt_77_1", "seq": 1, "data": "d"},
        })
    );
    assert_eq!(events[1]["state"], "failed");
    assert_eq!(events[1]["attempts"], 8);
    assert_eq!(events[1]["last_status"], 503);
    assert_eq!(events[1]["last_error"], "HTTP 503");
    assert!(events[1]["next_attempt_at"].is_null());
    // Still pending: when it is due; a body that is not JSON is shown as its text.
    assert_eq!(events[2]["state"], "pending");
    assert_eq!(events[2]["next_attempt_at"], 1_003);
    assert_eq!(events[2]["payload"], "not json {");
    // The answer has the documented shape.
    let parsed: crate::events::EventsResponse = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(parsed.events.len(), 3);
    // Only GET (and HEAD).
    let reply = h.post("/api/calls/77/events", "").await;
    reply.assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    assert_eq!(reply.headers.get(ALLOW).unwrap(), "GET, HEAD");
}

#[tokio::test]
async fn events_of_a_known_call_without_any_are_empty_and_of_an_unknown_one_404() {
    let h = harness();
    // A live intent (no webhook target: no events).
    let callid = h.make_call("1001", "2001", "3001").await;
    let reply = h.get(&format!("/api/calls/{callid}/events")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json(), json!({"events": []}));
    // A call only in the store.
    h.store()
        .upsert_calls(&[ended_row("555", "1009", 1_000)])
        .unwrap();
    let reply = h.get("/api/calls/555/events").await;
    assert_eq!(reply.json(), json!({"events": []}));
    for unknown in ["/api/calls/12345/events", "/api/calls/%ZZ/events"] {
        h.get(unknown)
            .await
            .assert_error(StatusCode::NOT_FOUND, "unknown_call");
    }
    // A percent-encoded callid is decoded.
    h.store()
        .insert_events(&[outbox_event("a b", 1, "{}")])
        .unwrap();
    let reply = h.get("/api/calls/a%20b/events").await;
    assert_eq!(reply.json()["events"][0]["callid"], "a b");
}

#[tokio::test]
async fn redelivering_a_failed_event_makes_it_pending_and_hands_it_to_the_dispatcher() {
    let (h, mut requeued) =
        harness_with_webhooks(webhooks::TargetPolicy::new(&[], "http://app.example/hook"));
    h.store()
        .insert_events(&[
            outbox_event("77", 1, r#"{"seq":1}"#),
            outbox_event("77", 2, r#"{"seq":2}"#),
        ])
        .unwrap();
    settle(&h, "evt_77_1", store::EVENT_DELIVERED, 1, Some(204));
    settle(&h, "evt_77_2", store::EVENT_FAILED, 8, Some(500));
    let before = idempotency::now_ms();
    let reply = h.post("/api/events/evt_77_2/redeliver", "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let event = reply.json();
    assert_eq!(event["id"], "evt_77_2");
    assert_eq!(event["state"], "pending");
    assert_eq!(event["attempts"], 0);
    assert!(event["next_attempt_at"].as_u64().unwrap() >= before);
    assert_eq!(event["last_status"], 500, "the last failure is kept");
    assert_eq!(event["payload"], json!({"seq": 2}));
    // The dispatcher got it, as the store now has it.
    let handed = requeued.try_next().expect("handed to the dispatcher");
    assert_eq!(handed.event_id, "evt_77_2");
    assert_eq!(handed.state, store::EVENT_PENDING);
    assert_eq!(
        h.store().get_event("evt_77_2").unwrap().as_ref(),
        Some(&handed)
    );
    assert!(requeued.try_next().is_none());
    // Now pending, then a delivered one: nothing to redeliver.
    let reply = h.post("/api/events/evt_77_2/redeliver", "{}").await;
    reply.assert_error(StatusCode::CONFLICT, "event_not_failed");
    assert!(reply.text().contains("pending"));
    let reply = h.post("/api/events/evt_77_1/redeliver", "").await;
    reply.assert_error(StatusCode::CONFLICT, "event_not_failed");
    assert!(reply.text().contains("delivered"));
    h.post("/api/events/evt_nope/redeliver", "")
        .await
        .assert_error(StatusCode::NOT_FOUND, "unknown_event");
    h.post("/api/events/%ZZ/redeliver", "")
        .await
        .assert_error(StatusCode::NOT_FOUND, "unknown_event");
    assert!(requeued.try_next().is_none());
    // The body is empty or an object, as hangup's; only POST.
    h.post("/api/events/evt_77_2/redeliver", "[1]")
        .await
        .assert_error(StatusCode::BAD_REQUEST, "invalid_body");
    let reply = h.get("/api/events/evt_77_2/redeliver").await;
    reply.assert_error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    assert_eq!(reply.headers.get(ALLOW).unwrap(), "POST");
}

#[tokio::test]
async fn a_redelivery_retried_with_its_idempotency_key_is_replayed_not_requeued_twice() {
    let (h, mut requeued) =
        harness_with_webhooks(webhooks::TargetPolicy::new(&[], "http://app.example/hook"));
    h.store()
        .insert_events(&[outbox_event("77", 1, "{}")])
        .unwrap();
    settle(&h, "evt_77_1", store::EVENT_FAILED, 8, Some(500));
    let key = [("idempotency-key", "redo-1")];
    let first = h
        .send_with(Method::POST, "/api/events/evt_77_1/redeliver", &key, "")
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    let again = h
        .send_with(Method::POST, "/api/events/evt_77_1/redeliver", &key, "")
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json(), first.json());
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert!(requeued.try_next().is_some());
    assert!(requeued.try_next().is_none(), "handed over once");
}

#[tokio::test]
async fn a_redelivery_the_dispatcher_cannot_take_stays_pending_in_the_outbox() {
    let (h, requeued) =
        harness_with_webhooks(webhooks::TargetPolicy::new(&[], "http://app.example/hook"));
    drop(requeued); // The dispatcher has stopped.
    h.store()
        .insert_events(&[outbox_event("77", 1, "{}")])
        .unwrap();
    settle(&h, "evt_77_1", store::EVENT_FAILED, 8, Some(500));
    let reply = h.post("/api/events/evt_77_1/redeliver", "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["state"], "pending");
    let stored = h.store().get_event("evt_77_1").unwrap().unwrap();
    assert_eq!(stored.state, store::EVENT_PENDING);
}

#[tokio::test]
async fn without_webhooks_a_redelivery_is_503_and_requeues_nothing() {
    let h = harness();
    h.store()
        .insert_events(&[outbox_event("77", 1, "{}")])
        .unwrap();
    settle(&h, "evt_77_1", store::EVENT_FAILED, 8, Some(500));
    h.post("/api/events/evt_77_1/redeliver", "")
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "webhooks_unavailable");
    let stored = h.store().get_event("evt_77_1").unwrap().unwrap();
    assert_eq!(stored.state, store::EVENT_FAILED);
    // The events are still listed: they are the store's.
    let reply = h.get("/api/calls/77/events").await;
    assert_eq!(reply.json()["events"][0]["state"], "failed");
}

#[tokio::test]
async fn without_a_store_the_event_routes_say_503() {
    let control = Arc::new(CallControl::new(
        TTL,
        Duration::from_secs(600),
        1000,
        b2bua::WallClock::new(Instant::now(), SystemTime::now()),
    ));
    let (handle, _requeued) =
        webhooks::WebhookHandle::new(webhooks::TargetPolicy::new(&[], "http://app.example/"));
    let h = Harness {
        state: ApiState::new(control, ApiSettings::default(), Arc::new(NoSip))
            .with_webhooks(handle),
        clock: Arc::new(ManualClock::new()),
    };
    h.get("/api/calls/77/events")
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
    h.post("/api/events/evt_1/redeliver", "")
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
}

#[tokio::test]
async fn metrics_show_the_webhook_counters_when_webhooks_are_on() {
    let off = harness();
    let text = off.get("/metrics").await.text();
    assert!(
        !text.contains("webhook"),
        "no webhook metrics without webhooks:\n{text}"
    );

    let (h, _requeued) =
        harness_with_webhooks(webhooks::TargetPolicy::new(&[], "http://app.example/hook"));
    // The registry builds an event per change into a queue of 2: the third is dropped.
    h.state
        .control
        .registry()
        .enable_events(Some("http://app.example/hook".into()), 2);
    for telnum in ["1001", "1002", "1003"] {
        h.make_call(telnum, "2001", "3001").await;
    }
    let text = h.get("/metrics").await.text();
    for line in [
        "callbridge_webhook_deliveries_total{result=\"delivered\"} 0",
        "callbridge_webhook_deliveries_total{result=\"retried\"} 0",
        "callbridge_webhook_deliveries_total{result=\"failed\"} 0",
        "callbridge_webhook_deliveries_total{result=\"dropped\"} 0",
        "callbridge_webhook_store_errors_total 0",
        "callbridge_webhook_outbox_pending 0",
        "callbridge_webhook_in_flight 0",
        "# TYPE callbridge_webhook_delivery_seconds histogram",
        "callbridge_webhook_delivery_seconds_count 0",
        "callbridge_webhook_delivery_seconds_bucket{le=\"0.005\"} 0",
        "callbridge_webhook_events_queued 2",
        "callbridge_webhook_events_dropped_total 1",
        "# TYPE callbridge_webhook_deliveries counter",
        "# TYPE callbridge_webhook_outbox_pending gauge",
        "# EOF",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
}
