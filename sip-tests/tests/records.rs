//! Call records that last (issue 12), end to end over real SIP and HTTP sockets: records of
//! a bridged, a refused and a cancelled call survive a restart and are listed and exported
//! with the right fields; `Idempotency-Key` holds across the restart; number ownership is
//! enforced for makecall and for INVITEs.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use sip_core::Method;
use sip_tests::bridge::{
    bridged_call, expect_request, phone_hangs_up, Bridge, CalleeDialog, Options, Phone,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.0 exchange (so that a streamed body arrives unchunked, delimited by the close),
/// with extra header lines; returns status, head and body.
async fn raw(
    api: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(api).await.expect("connect");
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {api}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8(response).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, head.to_owned(), body.to_owned())
}

fn options_with_store(path: &std::path::Path) -> Options {
    Options {
        extra: vec![format!("store.path=\"{}\"", path.display())],
        ..Options::default()
    }
}

async fn stop(bridge: Bridge) {
    let Bridge { running, .. } = bridge;
    running.shutdown();
    running.join().await;
}

/// makecall with data and an Idempotency-Key; returns (status, body, head).
async fn keyed_makecall(bridge: &Bridge, key: &str, body: &str) -> (u16, Value, String) {
    let (status, head, text) = raw(
        bridge.api,
        "POST",
        "/api/user/1001/makecall",
        &[("Idempotency-Key", key)],
        body,
    )
    .await;
    (status, serde_json::from_str(&text).expect("JSON"), head)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_a_restart_and_are_listed_and_exported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("callbridge.db");
    let mut bridge = Bridge::start_with(options_with_store(&db)).await;

    // 1. Bridged, with data, registered under an Idempotency-Key (retried once, as a mobile
    //    network would): one intent.
    let keyed_body = r#"{"caller":"2001","callee":"3001","data":"order-17"}"#;
    let (status, first, _) = keyed_makecall(&bridge, "key-1", keyed_body).await;
    assert_eq!(status, 200, "{first}");
    let (status, again, head) = keyed_makecall(&bridge, "key-1", keyed_body).await;
    assert_eq!(status, 200);
    assert_eq!(again, first, "the first response, replayed");
    assert!(head
        .to_ascii_lowercase()
        .contains("idempotent-replayed: true"));
    assert_eq!(bridge.running.control.intents().len(), 1, "one intent");
    let other = r#"{"caller":"2001","callee":"3009"}"#;
    let (status, reused, _) = keyed_makecall(&bridge, "key-1", other).await;
    assert_eq!(status, 422, "{reused}");
    assert_eq!(reused["error"]["code"], "idempotency_key_reused");
    let bridged = first["callid"].as_str().expect("callid").to_owned();

    let mut phone = Phone::udp(&bridge, "1001").await;
    let dialog = bridged_call(&mut bridge, &mut phone).await;
    // A live call is listed (from memory), newest first.
    let (status, page) = bridge.http("GET", "/api/calls?telnum=1001", None).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["calls"][0]["callid"], bridged.as_str());
    assert_eq!(page["calls"][0]["state"], "answered");
    tokio::time::sleep(Duration::from_millis(300)).await;
    phone_hangs_up(&mut bridge, &mut phone, &dialog).await;

    // 2. Refused by the callee: 486 relayed.
    let refused = bridge.makecall("1001", "2001", "3002").await;
    let mut phone = Phone::udp(&bridge, "1001").await;
    phone.call("2001").await;
    let invite = expect_request(&mut bridge.callee, Method::Invite).await;
    let callee = CalleeDialog::new(invite.clone());
    bridge.callee.send(callee.reply(&invite, 486, None)).await;
    expect_request(&mut bridge.callee, Method::Ack).await;
    let busy = phone.ua.expect_response(486).await;
    let ack = phone.ack_failure(&busy);
    phone.ua.send(ack).await;

    // 3. Cancelled by the phone while ringing.
    let cancelled = bridge.makecall("1001", "2001", "3003").await;
    let mut phone = Phone::udp(&bridge, "1001").await;
    phone.call("2001").await;
    let invite = expect_request(&mut bridge.callee, Method::Invite).await;
    let callee = CalleeDialog::new(invite.clone());
    bridge.callee.send(callee.reply(&invite, 180, None)).await;
    phone.ua.expect_response(180).await;
    bridge.wait_call_state(&cancelled, "ringing").await;
    let cancel = phone.cancel();
    phone.ua.send(cancel).await;
    phone.ua.expect_response(200).await;
    let cancel_b = expect_request(&mut bridge.callee, Method::Cancel).await;
    bridge.callee.send(callee.reply(&cancel_b, 200, None)).await;
    bridge.callee.send(callee.reply(&invite, 487, None)).await;
    expect_request(&mut bridge.callee, Method::Ack).await;
    let terminated = phone.ua.expect_response(487).await;
    let ack = phone.ack_failure(&terminated);
    phone.ua.send(ack).await;
    bridge.wait_call_state(&cancelled, "ended").await;
    bridge.assert_drained().await;

    // Restart on the same database.
    stop(bridge).await;
    let bridge = Bridge::start_with(options_with_store(&db)).await;
    assert_eq!(
        bridge.running.control.registry().len(),
        0,
        "nothing in memory"
    );

    let (status, page) = bridge.http("GET", "/api/calls?telnum=%2B1001", None).await;
    assert_eq!(status, 200, "{page}");
    let calls = page["calls"].as_array().expect("calls");
    let ids: Vec<&str> = calls.iter().filter_map(|c| c["callid"].as_str()).collect();
    assert_eq!(
        ids,
        [cancelled.as_str(), refused.as_str(), bridged.as_str()],
        "newest first"
    );
    assert_eq!(page["next_cursor"], Value::Null);
    let [c, r, b] = [&calls[0], &calls[1], &calls[2]];
    // The bridged call: answered, talked, hung up by the caller, with its data.
    assert_eq!(b["state"], "ended");
    assert_eq!(b["data"], "order-17");
    assert_eq!(b["ended_by"], "caller");
    assert_eq!(b["end_cause"], "hangup");
    assert_eq!(
        (b["leg_a_code"].as_u64(), b["leg_b_code"].as_u64()),
        (Some(200), Some(200))
    );
    assert!(b["talk_ms"].as_u64().expect("talk_ms") >= 250, "{b}");
    assert!(b["ring_ms"].as_u64().is_some(), "{b}");
    assert!(b["answered_at"].as_u64().is_some());
    // Refused by the callee: its code on both legs, the reason recorded.
    assert_eq!(r["end_cause"], "callee_rejected");
    assert_eq!(r["ended_by"], "callee");
    assert_eq!(r["leg_b_code"], 486);
    assert_eq!(r["leg_a_code"], 486);
    assert!(
        r["sip_reason"]
            .as_str()
            .expect("sip_reason")
            .contains("486"),
        "{r}"
    );
    assert_eq!(r["talk_ms"], Value::Null);
    // Cancelled by the caller while ringing.
    assert_eq!(c["end_cause"], "cancelled");
    assert_eq!(c["ended_by"], "caller");
    assert_eq!(c["leg_a_code"], 487);
    assert!(c["ringing_at"].as_u64().is_some());
    // One record by its id, from the store.
    let stored = bridge.call(&bridged).await;
    assert_eq!(&stored, b);
    // Pages of one, chained by the cursor.
    let (_, first_page) = bridge
        .http("GET", "/api/calls?limit=1&telnum=1001", None)
        .await;
    let cursor = first_page["next_cursor"].as_str().expect("a cursor");
    let (_, second) = bridge
        .http(
            "GET",
            &format!("/api/calls?limit=1&telnum=1001&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(second["calls"][0]["callid"], refused.as_str());
    let (status, body) = bridge.http("GET", "/api/calls?cursor=nope", None).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &Value::from("invalid_parameter"))
    );

    // Export: CSV with a header row, then NDJSON, both with the three records.
    let (status, head, csv) = raw(
        bridge.api,
        "GET",
        "/api/calls/export?format=csv&telnum=1001",
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("content-type: text/csv"),
        "{head}"
    );
    let lines: Vec<&str> = csv.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(
        lines[0].starts_with("callid,telnum,caller,callee,data,state,"),
        "{}",
        lines[0]
    );
    assert!(lines[3].starts_with(&format!("{bridged},1001,2001,3001,order-17,ended,")));
    let (status, _, ndjson) = raw(
        bridge.api,
        "GET",
        "/api/calls/export?format=ndjson",
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200);
    let rows: Vec<Value> = ndjson
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON record per line"))
        .collect();
    assert_eq!(rows.len(), 3);
    assert_eq!(&rows[2], b);

    // The key still answers after the restart, and does nothing.
    let (status, replay, _) = keyed_makecall(&bridge, "key-1", keyed_body).await;
    assert_eq!((status, &replay), (200, &first));
    assert!(bridge.running.control.intents().is_empty(), "no new intent");
    bridge.assert_drained().await;
    stop(bridge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ownership_is_enforced_for_makecall_and_invites() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("callbridge.db");
    let mut options = options_with_store(&db);
    options
        .extra
        .push("intent.require_ownership=true".to_owned());
    let mut bridge = Bridge::start_with(options.clone()).await;

    let makecall = r#"{"caller":"2001","callee":"3001"}"#;
    let (status, body) = bridge
        .http("POST", "/api/user/1001/makecall", Some(makecall))
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "number_not_owned");

    let (status, body) = bridge
        .http("PUT", "/api/numbers/%2B2001", Some(r#"{"telnum":"+1001"}"#))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        serde_json::json!({"number": "2001", "telnum": "1001"})
    );
    bridge
        .http("PUT", "/api/numbers/2002", Some(r#"{"telnum":"1002"}"#))
        .await;
    let (_, list) = bridge.http("GET", "/api/numbers?telnum=1001", None).await;
    assert_eq!(
        list,
        serde_json::json!({"numbers": [{"number": "2001", "telnum": "1001"}]})
    );

    // Assigned: makecall is accepted; the number is then taken away before the phone dials,
    // so its INVITE is refused and nothing reaches the trunk.
    bridge.makecall("1001", "2001", "3001").await;
    let (status, _) = bridge.http("DELETE", "/api/numbers/2001", None).await;
    assert_eq!(status, 200);
    let (status, body) = bridge.http("DELETE", "/api/numbers/2001", None).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &Value::from("unknown_number"))
    );
    let mut phone = Phone::udp(&bridge, "1001").await;
    phone.call("2001").await;
    let refusal = phone.ua.expect_response(403).await;
    let ack = phone.ack_failure(&refusal);
    phone.ua.send(ack).await;
    assert_eq!(bridge.refused("number_not_owned").await, 1);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), bridge.callee.recv_request())
            .await
            .is_err(),
        "no leg B"
    );
    // The intent was not consumed by the refused INVITE.
    assert_eq!(bridge.running.control.intents().len(), 1);
    bridge.cancelcall("1001").await;
    bridge.assert_drained().await;

    // Assignments are stored: after a restart 2002 is still 1002's, and only 1002's.
    stop(bridge).await;
    let bridge = Bridge::start_with(options).await;
    let other = r#"{"caller":"2002","callee":"3001"}"#;
    let (status, _) = bridge
        .http("POST", "/api/user/1001/makecall", Some(other))
        .await;
    assert_eq!(status, 403);
    let (status, _) = bridge
        .http("POST", "/api/user/1002/makecall", Some(other))
        .await;
    assert_eq!(status, 200);
    bridge.cancelcall("1002").await;
    stop(bridge).await;
}
