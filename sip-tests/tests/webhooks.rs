//! Webhooks (issue 13), end to end: the real server sends its events to a real hyper receiver
//! (benches/src/webhook_receiver.rs) that verifies every signature, records arrival order and
//! fails or stalls on demand.

use std::time::Duration;

use callbridge_benches::webhook_receiver::{Attempt, Receiver, Reply};
use serde_json::Value;
use sip_tests::bridge::{bridged_call, media_port, phone_hangs_up, Bridge, Options, Phone};

const SECRET: &str = "whsec_test_secret";

fn options(receiver: &Receiver, extra: &[&str]) -> Options {
    let mut all = vec![
        format!("webhooks.url=\"{}\"", receiver.url()),
        format!("webhooks.secret=\"{SECRET}\""),
        // Retries in tens of ms rather than seconds; the schedule itself (1 s doubling, 5 min
        // cap) is the unit tests' (crates/webhooks/src/schedule/tests.rs).
        "webhooks.backoff_base_ms=50".to_owned(),
        "webhooks.backoff_max_ms=400".to_owned(),
        "webhooks.timeout_ms=1000".to_owned(),
    ];
    all.extend(extra.iter().map(|s| s.to_string()));
    Options {
        extra: all,
        ..Options::default()
    }
}

async fn receiver() -> Receiver {
    Receiver::start("127.0.0.1:0".parse().unwrap(), SECRET)
        .await
        .expect("receiver")
}

async fn stop(bridge: Bridge) {
    let Bridge { running, .. } = bridge;
    running.shutdown();
    running.join().await;
}

fn kinds(attempts: &[Attempt]) -> Vec<(String, u64)> {
    attempts
        .iter()
        .map(|a| {
            (
                a.body["event"].as_str().unwrap_or("?").to_owned(),
                a.body["seq"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn of_call<'a>(attempts: &'a [Attempt], callid: &str) -> Vec<&'a Attempt> {
    attempts
        .iter()
        .filter(|a| a.body["callid"] == callid)
        .collect()
}

/// `GET /api/calls/{callid}/events` until every event is settled (not pending).
async fn settled_events(bridge: &Bridge, callid: &str, count: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, json) = bridge
            .http("GET", &format!("/api/calls/{callid}/events"), None)
            .await;
        assert_eq!(status, 200, "{json}");
        let events = json["events"].as_array().cloned().unwrap_or_default();
        if events.len() == count && events.iter().all(|e| e["state"] != "pending") {
            return events;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "events of {callid} never settled: {json}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Phone 1001 calls 2001 (its intent made already), the callee answers, the phone hangs up;
/// returns what the receiver has delivered once it holds five events.
async fn bridge_and_hang_up(bridge: &mut Bridge, receiver: &Receiver) -> Vec<Attempt> {
    let mut phone = Phone::udp(bridge, "1001").await;
    let dialog = bridged_call(bridge, &mut phone).await;
    phone_hangs_up(bridge, &mut phone, &dialog).await;
    receiver
        .wait_delivered(Duration::from_secs(10), |d| d.len() >= 5)
        .await
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .map_or(0, |v| v.trim().parse::<f64>().expect("metric value") as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridged_call_delivers_its_events_signed_and_in_order() {
    let receiver = receiver().await;
    let mut bridge = Bridge::start_with(options(&receiver, &[])).await;
    let body = r#"{"caller":"2001","callee":"3001","data":"ticket-81"}"#;
    let (status, made) = bridge
        .http("POST", "/api/user/1001/makecall", Some(body))
        .await;
    assert_eq!(status, 200, "{made}");
    let callid = made["callid"].as_str().unwrap().to_owned();
    // The callee talks (20 RTP packets to the relay) just before the phone hangs up: the
    // relay's last counters come after the end.
    let mut phone = Phone::udp(&bridge, "1001").await;
    let dialog = bridged_call(&mut bridge, &mut phone).await;
    let relay = std::net::SocketAddr::from(([127, 0, 0, 1], media_port(&dialog.invite.body)));
    let talker = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for seq in 0..20u16 {
        let mut packet = vec![0x80, 0x00];
        packet.extend_from_slice(&seq.to_be_bytes());
        packet.extend_from_slice(&[0; 8]);
        packet.extend_from_slice(&[0xff; 160]);
        talker.send_to(&packet, relay).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    phone_hangs_up(&mut bridge, &mut phone, &dialog).await;
    let delivered = receiver
        .wait_delivered(Duration::from_secs(10), |d| d.len() >= 5)
        .await;
    assert_eq!(
        kinds(&delivered),
        [
            ("intent.created", 1),
            ("call.incoming", 2),
            ("call.ringing", 3),
            ("call.answered", 4),
            ("call.ended", 5)
        ]
        .map(|(k, s)| (k.to_owned(), s)),
    );
    for attempt in &delivered {
        assert!(attempt.verified, "signature of {:?}", attempt.body);
        assert_eq!(attempt.body["callid"], callid.as_str());
        assert_eq!(attempt.body["data"], "ticket-81");
        assert_eq!(attempt.body["call"]["callid"], callid.as_str());
        assert_eq!(
            attempt.event_id.as_deref(),
            attempt.body["id"].as_str(),
            "Callbridge-Event-Id is the event's id"
        );
        assert_eq!(
            attempt.event_type.as_deref(),
            attempt.body["event"].as_str()
        );
    }
    // Each event carries the record as it was at that change.
    assert_eq!(delivered[0].body["call"]["state"], "intent");
    assert_eq!(delivered[2].body["call"]["state"], "ringing");
    assert_eq!(delivered[3].body["call"]["state"], "answered");
    let ended = &delivered[4].body["call"];
    assert_eq!(ended["state"], "ended");
    assert_eq!(ended["ended_by"], "caller");
    assert!(ended["talk_ms"].is_u64());
    // call.ended waited for the call's final record, with every packet counted: the record
    // the API serves from now on.
    assert_eq!(ended["media"]["b_to_a"]["packets"], 20, "{ended}");
    assert_eq!(*ended, bridge.call(&callid).await);
    // A tampered body does not verify with the signature it came with.
    let original = &delivered[4];
    let signature = original.signature.as_deref().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(webhooks::verify(SECRET.as_bytes(), signature, &original.raw, now, 300).is_ok());
    let tampered = String::from_utf8(original.raw.to_vec())
        .unwrap()
        .replace("\"caller\"", "\"callex\"");
    assert_eq!(
        webhooks::verify(SECRET.as_bytes(), signature, tampered.as_bytes(), now, 300),
        Err(webhooks::VerifyError::Mismatch)
    );

    // The API shows each event delivered at the first attempt.
    let events = settled_events(&bridge, &callid, 5).await;
    for (n, event) in events.iter().enumerate() {
        assert_eq!(event["seq"], n as u64 + 1);
        assert_eq!(event["state"], "delivered", "{event}");
        assert_eq!(event["attempts"], 1);
        assert_eq!(event["last_status"], 200);
        assert!(event["delivered_at"].is_u64());
        assert_eq!(event["payload"]["id"], event["id"]);
    }
    let metrics = bridge.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "callbridge_webhook_deliveries_total{result=\"delivered\"}"
        ),
        5
    );
    assert_eq!(metric(&metrics, "callbridge_webhook_outbox_pending"), 0);
    bridge.assert_drained().await;
    stop(bridge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_event_holds_back_the_next_of_its_call_until_delivered() {
    let receiver = receiver().await;
    // call.ringing fails its first 3 attempts.
    receiver.set_rule(Box::new(|body, attempt| {
        if body["event"] == "call.ringing" && attempt <= 3 {
            Reply::Status(503)
        } else {
            Reply::Status(204)
        }
    }));
    let mut bridge = Bridge::start_with(options(&receiver, &[])).await;
    let callid = bridge.makecall("1001", "2001", "3001").await;
    let delivered = bridge_and_hang_up(&mut bridge, &receiver).await;
    assert_eq!(
        kinds(&delivered)
            .iter()
            .map(|(_, s)| *s)
            .collect::<Vec<_>>(),
        [1, 2, 3, 4, 5],
        "delivered in seq order: {:?}",
        kinds(&delivered)
    );
    let attempts = receiver.attempts();
    let of_call = of_call(&attempts, &callid);
    // Arrival order: ringing three times refused, then delivered, and only then answered.
    let arrival: Vec<(String, u64)> = of_call
        .iter()
        .map(|a| {
            (
                a.body["event"].as_str().unwrap().to_owned(),
                a.body["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    let ringing_tries = arrival.iter().filter(|(k, _)| k == "call.ringing").count();
    assert_eq!(ringing_tries, 4, "{arrival:?}");
    let last_ringing = arrival
        .iter()
        .rposition(|(k, _)| k == "call.ringing")
        .unwrap();
    let answered = arrival
        .iter()
        .position(|(k, _)| k == "call.answered")
        .unwrap();
    assert!(
        answered > last_ringing,
        "answered overtook ringing: {arrival:?}"
    );
    // Retries carry the same id and a fresh, valid signature.
    let ringing: Vec<&&Attempt> = of_call
        .iter()
        .filter(|a| a.body["event"] == "call.ringing")
        .collect();
    assert!(ringing
        .iter()
        .all(|a| a.verified && a.event_id == ringing[0].event_id));
    let events = settled_events(&bridge, &callid, 5).await;
    assert_eq!(events[2]["event"], "call.ringing");
    assert_eq!(events[2]["attempts"], 4);
    assert_eq!(events[2]["state"], "delivered");
    let metrics = bridge.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "callbridge_webhook_deliveries_total{result=\"retried\"}"
        ),
        3
    );
    stop(bridge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_events_survive_a_restart_and_go_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = format!("store.path=\"{}\"", dir.path().join("cb.db").display());
    let receiver = receiver().await;
    receiver.set_rule(Box::new(|_, _| Reply::Status(500)));
    let bridge = Bridge::start_with(options(&receiver, &[&db])).await;
    // Call A: its intent.created fails (and is retried) in the first instance.
    let a = bridge.makecall("1001", "2001", "3001").await;
    // Call B: delivered in the first instance (created, then cancelled).
    let b = bridge.makecall("1002", "2002", "3002").await;
    let only_b = b.clone();
    receiver.set_rule(Box::new(move |body, _| {
        if body["callid"] == only_b.as_str() {
            Reply::Status(200)
        } else {
            Reply::Status(500)
        }
    }));
    bridge.cancelcall("1002").await;
    receiver
        .wait_delivered(Duration::from_secs(10), |d| d.len() >= 2)
        .await;
    // A is replaced: intent.replaced waits behind A's failing intent.created.
    bridge.makecall("1001", "2001", "3009").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while of_call(&receiver.attempts(), &a).len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            kinds(&receiver.attempts())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        of_call(&receiver.attempts(), &a)
            .iter()
            .all(|t| t.body["event"] == "intent.created"),
        "A's second event went before its first was delivered"
    );
    stop(bridge).await;

    // The target is fixed; a new instance on the same store delivers A's events, in order,
    // and none of B's again.
    receiver.set_rule(Box::new(|_, _| Reply::Status(200)));
    let bridge = Bridge::start_with(options(&receiver, &[&db])).await;
    let delivered = receiver
        .wait_delivered(Duration::from_secs(10), |d| {
            d.iter().filter(|t| t.body["callid"] == a.as_str()).count() >= 2
        })
        .await;
    let of_a: Vec<Attempt> = of_call(&delivered, &a).into_iter().cloned().collect();
    assert_eq!(
        kinds(&of_a),
        [("intent.created", 1), ("intent.replaced", 2)].map(|(k, s)| (k.to_owned(), s))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let of_b = of_call(&receiver.delivered(), &b).len();
    assert_eq!(of_b, 2, "B's events were delivered again after the restart");
    bridge.cancelcall("1001").await;
    stop(bridge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn given_up_events_are_kept_and_can_be_redelivered() {
    let receiver = receiver().await;
    receiver.set_rule(Box::new(|_, _| Reply::Status(500)));
    let bridge = Bridge::start_with(options(&receiver, &["webhooks.max_attempts=2"])).await;
    let callid = bridge.makecall("1001", "2001", "3001").await;
    let events = settled_events(&bridge, &callid, 1).await;
    assert_eq!(events[0]["state"], "failed", "{events:?}");
    assert_eq!(events[0]["attempts"], 2);
    assert_eq!(events[0]["last_status"], 500);
    let id = events[0]["id"].as_str().unwrap().to_owned();
    let metrics = bridge.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "callbridge_webhook_deliveries_total{result=\"failed\"}"
        ),
        1
    );

    receiver.set_rule(Box::new(|_, _| Reply::Status(200)));
    let (status, json) = bridge
        .http("POST", &format!("/api/events/{id}/redeliver"), None)
        .await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["state"], "pending");
    let events = settled_events(&bridge, &callid, 1).await;
    assert_eq!(events[0]["state"], "delivered", "{events:?}");
    assert_eq!(receiver.delivered().len(), 1);
    // Delivered now: nothing to redeliver.
    let (status, json) = bridge
        .http("POST", &format!("/api/events/{id}/redeliver"), None)
        .await;
    assert_eq!(status, 409, "{json}");
    bridge.cancelcall("1001").await;
    stop(bridge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_url_is_the_intents_target_within_the_allowed_hosts() {
    let default = receiver().await;
    let own = receiver().await;
    let bridge = Bridge::start_with(options(&default, &[])).await;
    // Same host as webhooks.url (127.0.0.1), another port: allowed by the empty list.
    let body = format!(
        r#"{{"caller":"2001","callee":"3001","notify_url":"{}"}}"#,
        own.url()
    );
    let (status, made) = bridge
        .http("POST", "/api/user/1001/makecall", Some(&body))
        .await;
    assert_eq!(status, 200, "{made}");
    own.wait_delivered(Duration::from_secs(10), |d| !d.is_empty())
        .await;
    assert_eq!(kinds(&own.delivered()), [("intent.created".to_owned(), 1)]);
    // Another host is refused: the token holder cannot aim the server anywhere.
    let body = r#"{"caller":"2001","callee":"3001","notify_url":"http://127.0.0.2:9/x"}"#;
    let (status, json) = bridge
        .http("POST", "/api/user/1002/makecall", Some(body))
        .await;
    assert_eq!(status, 422, "{json}");
    assert_eq!(json["error"]["code"], "notify_url_not_allowed");
    bridge.cancelcall("1001").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        default.delivered().is_empty(),
        "the default target got the intent's events"
    );
    stop(bridge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_target_costs_calls_nothing_and_the_outbox_stays_bounded() {
    let receiver = receiver().await;
    receiver.set_rule(Box::new(|_, _| Reply::Stall));
    let mut bridge = Bridge::start_with(options(
        &receiver,
        &["webhooks.max_pending=3", "webhooks.timeout_ms=300"],
    ))
    .await;
    // A call bridges and ends while every webhook hangs.
    let callid = bridge.makecall("1001", "2001", "3001").await;
    let mut phone = Phone::udp(&bridge, "1001").await;
    let dialog = bridged_call(&mut bridge, &mut phone).await;
    phone_hangs_up(&mut bridge, &mut phone, &dialog).await;
    bridge.wait_call_state(&callid, "ended").await;
    // 5 events, at most 3 held: at least 2 dropped, counted and marked.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = bridge.metrics().await;
        let dropped = metric(
            &metrics,
            "callbridge_webhook_deliveries_total{result=\"dropped\"}",
        );
        if dropped >= 2 {
            assert!(metric(&metrics, "callbridge_webhook_outbox_pending") <= 3);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, json) = bridge
        .http("GET", &format!("/api/calls/{callid}/events"), None)
        .await;
    assert_eq!(status, 200);
    let states: Vec<&str> = json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    assert!(
        states.iter().filter(|s| **s == "dropped").count() >= 2,
        "{states:?}"
    );
    bridge.assert_drained().await;
    stop(bridge).await;
}
