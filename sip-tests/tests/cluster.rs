//! Several callbridge nodes sharing one real Redis (Debian's redis-server, started by each
//! test on its own port): a makecall on one node is bridged by the INVITE that lands on
//! another; concurrent INVITEs on two nodes for one intent bridge exactly once; Redis down
//! means 503 for makecalls and INVITEs, and service resumes by itself when it returns; an
//! intent expires on exactly one node.

use std::time::Duration;

use callbridge_benches::webhook_receiver::Receiver;
use cluster::testing::RedisServer;
use sip_core::{Message, Method, Response};
use sip_tests::bridge::{
    bridged_call, expect_request, phone_hangs_up, Bridge, CalleeDialog, Options, Phone,
};

/// A cluster node's options on `redis`, named `node`, with `extra` keys after the cluster's.
fn node_options(redis: &RedisServer, node: &str, extra: &[String]) -> Options {
    let mut keys = vec![
        format!("cluster.redis_url=\"{}\"", redis.url()),
        format!("cluster.node_id=\"{node}\""),
        "cluster.redis_timeout_ms=300".to_owned(),
    ];
    keys.extend_from_slice(extra);
    Options {
        extra: keys,
        ..Options::default()
    }
}

/// A heartbeat every second, lost after 2: a dead node is reaped within about 3 s.
fn fast_heartbeat() -> Vec<String> {
    vec![
        "cluster.heartbeat_secs=1".to_owned(),
        "cluster.heartbeat_ttl_secs=2".to_owned(),
    ]
}

/// Webhooks to `receiver`, retried every 50-200 ms up to `max_attempts`, with the nodes'
/// one store at `db` (the outbox they share).
fn webhooks_to(receiver: &Receiver, db: &std::path::Path, max_attempts: u32) -> Vec<String> {
    vec![
        format!("store.path=\"{}\"", db.display()),
        format!("webhooks.url=\"{}\"", receiver.url()),
        format!("webhooks.secret=\"{WEBHOOK_SECRET}\""),
        "webhooks.backoff_base_ms=50".to_owned(),
        "webhooks.backoff_max_ms=200".to_owned(),
        format!("webhooks.max_attempts={max_attempts}"),
    ]
}

const WEBHOOK_SECRET: &str = "whsec_cluster";

/// A node of the cluster on `redis`, named `node`.
async fn node(redis: &RedisServer, node: &str, ttl_secs: u64) -> Bridge {
    Bridge::start_with(Options {
        intent_ttl_secs: ttl_secs,
        ..node_options(redis, node, &[])
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn makecall_on_one_node_is_bridged_by_the_invite_on_another() {
    let redis = RedisServer::start().unwrap();
    let node1 = node(&redis, "node-1", 120).await;
    let mut node2 = node(&redis, "node-2", 120).await;
    let callid = node1.makecall("1001", "2001", "3001").await;
    // node 1 keeps no record of a pending intent: it lives in Redis.
    assert!(node1.running.control.call(&callid).is_none());

    let mut phone = Phone::udp(&node2, "1001").await;
    let dialog = bridged_call(&mut node2, &mut phone).await;
    assert_eq!(dialog.invite.uri.user(), Some("3001"));
    let record = node2.wait_call_state(&callid, "answered").await;
    assert_eq!(record["telnum"], "1001");
    assert_eq!(record["caller"], "2001");
    assert_eq!(record["callee"], "3001");
    assert!(record["created_at"].is_u64(), "{record}");
    phone_hangs_up(&mut node2, &mut phone, &dialog).await;
    let record = node2.wait_call_state(&callid, "ended").await;
    assert_eq!(record["end_cause"], "hangup");

    // The intent was consumed: the same phone dialling again is refused on either node.
    let mut again = Phone::udp(&node1, "1001").await;
    again.call("2001").await;
    again.ua.expect_response(403).await;
    node1.assert_drained().await;
    node2.assert_drained().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_invites_on_two_nodes_bridge_exactly_once() {
    let redis = RedisServer::start().unwrap();
    let mut nodes = [
        node(&redis, "node-1", 120).await,
        node(&redis, "node-2", 120).await,
    ];
    for round in 0..20 {
        let callid = nodes[round % 2].makecall("1001", "2001", "3001").await;
        let mut phones = [
            Phone::udp(&nodes[0], "1001").await,
            Phone::udp(&nodes[1], "1001").await,
        ];
        // Both INVITEs leave before either answer can arrive.
        let invites = [
            phones[0].invite("2001", false),
            phones[1].invite("2001", false),
        ];
        let [first, second] = invites;
        let (a, b) = phones.split_at_mut(1);
        tokio::join!(a[0].ua.send(first), b[0].ua.send(second));
        // The claimed INVITE's leg B reaches its node's callee, which answers busy (the
        // point is that it was placed, and only once).
        let mut bridged = Vec::new();
        for (i, node) in nodes.iter_mut().enumerate() {
            // (ACKs of the last round's answer, sent again, may still arrive first.)
            let mut invite = None;
            while let Some((message, _)) = node.callee.try_recv(Duration::from_millis(300)).await {
                match message {
                    Message::Request(request) if request.method == Method::Invite => {
                        invite = Some(request);
                        break;
                    }
                    Message::Request(request) if request.method == Method::Ack => {}
                    other => panic!("round {round}: unexpected at the callee: {other:?}"),
                }
            }
            if let Some(invite) = invite {
                bridged.push(i);
                let reply = CalleeDialog::new(invite.clone()).reply(&invite, 486, None);
                node.callee.send(reply.clone()).await;
                // Retransmissions of the INVITE (T1 is 50 ms here) get the answer again.
                loop {
                    let (request, _) = node.callee.recv_request().await;
                    match request.method {
                        Method::Ack => break,
                        Method::Invite => node.callee.send(reply.clone()).await,
                        other => panic!("round {round}: unexpected {other} at the callee"),
                    }
                }
            }
        }
        let mut finals = Vec::new();
        for phone in phones.iter_mut() {
            let response = phone.ua.recv_response().await;
            finals.push(response.status);
            let ack = phone.ack_failure(&response);
            phone.ua.send(ack).await;
        }
        finals.sort_unstable();
        assert_eq!(
            finals,
            [403, 486],
            "round {round}: one refused, one relayed busy"
        );
        assert_eq!(
            bridged.len(),
            1,
            "round {round} ({callid}): legs B placed by {bridged:?}"
        );
    }
    for node in &nodes {
        node.assert_drained().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_means_503_and_service_resumes_by_itself() {
    let mut redis = RedisServer::start().unwrap();
    let mut node1 = node(&redis, "node-1", 120).await;
    redis.stop();

    // makecall: 503 with the cluster's own code, nothing registered.
    let body = r#"{"caller":"2001","callee":"3001"}"#;
    let (status, json) = node1
        .http("POST", "/api/user/1001/makecall", Some(body))
        .await;
    assert_eq!(status, 503, "{json}");
    assert_eq!(json["error"]["code"], "cluster_unavailable", "{json}");
    // An INVITE: 503 (the claim cannot be made), counted.
    let mut phone = Phone::udp(&node1, "1001").await;
    phone.call("2001").await;
    let refused = phone.ua.expect_response(503).await;
    let ack = phone.ack_failure(&refused);
    phone.ua.send(ack).await;
    assert_eq!(node1.refused("cluster_unavailable").await, 1);
    // The heartbeat (every second) says so in /metrics.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !node1
        .metrics()
        .await
        .contains("callbridge_cluster_redis_up 0")
    {
        assert!(std::time::Instant::now() < deadline, "redis_up never 0");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Redis back: the same node serves again without a restart.
    redis.restart().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let callid = loop {
        let (status, json) = node1
            .http("POST", "/api/user/1001/makecall", Some(body))
            .await;
        if status == 200 {
            break json["callid"].as_str().unwrap().to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "no recovery: {json}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut phone = Phone::udp(&node1, "1001").await;
    let dialog = bridged_call(&mut node1, &mut phone).await;
    phone_hangs_up(&mut node1, &mut phone, &dialog).await;
    node1.wait_call_state(&callid, "ended").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !node1
        .metrics()
        .await
        .contains("callbridge_cluster_redis_up 1")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "redis_up never 1 again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node1.assert_drained().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intent_expires_on_exactly_one_node_and_cancel_works_from_any() {
    let redis = RedisServer::start().unwrap();
    let nodes = [
        node(&redis, "node-1", 1).await,
        node(&redis, "node-2", 1).await,
    ];
    let expiring = nodes[0].makecall("1001", "2001", "3001").await;
    let cancelled = nodes[0].makecall("1002", "2002", "3002").await;
    // cancelcall on the other node withdraws it.
    let json = nodes[1].cancelcall("1002").await;
    assert_eq!(json["cancelled"], true, "{json}");
    assert_eq!(json["callid"], cancelled.as_str());
    let record = nodes[1].call(&cancelled).await;
    assert_eq!(record["end_cause"], "intent_cancelled");

    // Both nodes sweep every second; one of them takes the expired intent.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let holders: Vec<_> = nodes
            .iter()
            .filter_map(|n| n.running.control.call(&expiring))
            .collect();
        if let Some(record) = holders.first() {
            assert_eq!(holders.len(), 1, "expired on one node only");
            assert_eq!(record.end_cause.map(|c| c.code()), Some("intent_expired"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "intent never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A late phone finds nothing, on either node.
    let mut phone = Phone::udp(&nodes[1], "1001").await;
    phone.call("2001").await;
    phone.ua.expect_response(403).await;
    for node in &nodes {
        node.assert_drained().await;
    }
}

/// Waits until `node`'s API shows `callid` in `state` (read from the cluster's call index
/// when another node holds it).
async fn wait_state_on(node: &Bridge, callid: &str, state: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, json) = node
            .http("GET", &format!("/api/calls/{callid}"), None)
            .await;
        if status == 200 && json["state"] == state {
            return json;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{callid} never {state} on this node: {status} {json}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_call_is_seen_and_hung_up_from_another_node() {
    let redis = RedisServer::start().unwrap();
    let node1 = node(&redis, "node-1", 120).await;
    let mut node2 = node(&redis, "node-2", 120).await;
    let callid = node1.makecall("1001", "2001", "3001").await;
    // Pending: node 1 shows the intent from Redis, node 2 too.
    assert_eq!(
        wait_state_on(&node2, &callid, "intent").await["telnum"],
        "1001"
    );
    let mut phone = Phone::udp(&node2, "1001").await;
    let dialog = bridged_call(&mut node2, &mut phone).await;
    let seen = wait_state_on(&node1, &callid, "answered").await;
    assert_eq!(seen["caller"], "2001");
    assert!(seen["answered_at"].is_u64(), "{seen}");

    // node 1 hangs up the call node 2 holds.
    let (status, json) = node1
        .http("POST", &format!("/api/calls/{callid}/hangup"), None)
        .await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["state"], "ended");
    assert_eq!(json["ended_by"], "api");
    let bye_a = expect_request(&mut phone.ua, Method::Bye).await;
    phone.ua.send(Response::to_request(&bye_a, 200, None)).await;
    let bye_b = expect_request(&mut node2.callee, Method::Bye).await;
    node2.callee.send(dialog.reply(&bye_b, 200, None)).await;
    let ended = wait_state_on(&node1, &callid, "ended").await;
    assert_eq!(ended["end_cause"], "hangup");
    // Again: the call has ended.
    let (status, json) = node1
        .http("POST", &format!("/api/calls/{callid}/hangup"), None)
        .await;
    assert_eq!(status, 409, "{json}");
    node1.assert_drained().await;
    node2.assert_drained().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_live_calls_end_as_node_lost_on_a_survivor() {
    let redis = RedisServer::start().unwrap();
    let beat = |node: &str| node_options(&redis, node, &fast_heartbeat());
    let node1 = Bridge::start_with(beat("node-1")).await;
    let mut node2 = Bridge::start_with(beat("node-2")).await;
    let callid = node1.makecall("1001", "2001", "3001").await;
    let mut phone = Phone::udp(&node2, "1001").await;
    let _dialog = bridged_call(&mut node2, &mut phone).await;
    wait_state_on(&node1, &callid, "answered").await;

    // node 2 dies (kill -9: no drain, no goodbye). Within its heartbeat's TTL and a beat,
    // node 1 ends the call's record.
    node2.running.kill();
    let started = std::time::Instant::now();
    let record = wait_state_on(&node1, &callid, "ended").await;
    assert_eq!(record["end_cause"], "node_lost", "{record}");
    assert_eq!(record["ended_by"], "system");
    assert!(
        record["answered_at"].is_u64(),
        "the record kept what node 2 wrote: {record}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "reaped after {:?}",
        started.elapsed()
    );
    // node 1 holds it now, ended, like a record of its own.
    let own = node1.running.control.call(&callid).expect("adopted record");
    assert_eq!(own.end_cause.map(|c| c.code()), Some("node_lost"));
    node1.assert_drained().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_nodes_undelivered_events_go_out_from_the_survivor_in_order() {
    use callbridge_benches::webhook_receiver::Reply;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let redis = RedisServer::start().unwrap();
    // One store for both nodes (a SQLite file here; PostgreSQL in deploy/cluster): the
    // outbox the survivor adopts from.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let receiver = Receiver::start("127.0.0.1:0".parse().unwrap(), WEBHOOK_SECRET)
        .await
        .unwrap();
    // The app's backend is down until told otherwise: every event stays pending.
    let down = Arc::new(AtomicBool::new(true));
    let is_down = Arc::clone(&down);
    receiver.set_rule(Box::new(move |_, _| {
        if is_down.load(Ordering::SeqCst) {
            Reply::Status(503)
        } else {
            Reply::Status(204)
        }
    }));
    // Retried for as long as the backend is down here (not given up after 10).
    let mut extra = fast_heartbeat();
    extra.extend(webhooks_to(&receiver, &db, 1000));
    let options = |node: &str| node_options(&redis, node, &extra);
    let node1 = Bridge::start_with(options("node-1")).await;
    let mut node2 = Bridge::start_with(options("node-2")).await;
    let callid = node1.makecall("1001", "2001", "3001").await;
    let mut phone = Phone::udp(&node2, "1001").await;
    let _dialog = bridged_call(&mut node2, &mut phone).await;
    wait_state_on(&node1, &callid, "answered").await;
    // node 2's events of the call (incoming, ringing, answered) are in the outbox, pending:
    // asked of the outbox itself, not waited for.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, json) = node2
            .http("GET", &format!("/api/calls/{callid}/events"), None)
            .await;
        assert_eq!(status, 200, "{json}");
        let pending = json["events"]
            .as_array()
            .map_or(0, |e| e.iter().filter(|e| e["state"] == "pending").count());
        if pending >= 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "events never stored: {json}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    node2.running.kill();
    wait_state_on(&node1, &callid, "ended").await;
    down.store(false, Ordering::SeqCst);
    let delivered = receiver
        .wait_delivered(Duration::from_secs(10), |d| {
            d.iter()
                .filter(|a| a.body["callid"] == callid.as_str())
                .count()
                >= 5
        })
        .await;
    let of_call: Vec<(String, u64)> = delivered
        .iter()
        .filter(|a| a.body["callid"] == callid.as_str())
        .map(|a| {
            (
                a.body["event"].as_str().unwrap_or("?").to_owned(),
                a.body["seq"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        of_call,
        [
            ("intent.created".to_owned(), 1),
            ("call.incoming".to_owned(), 2),
            ("call.ringing".to_owned(), 3),
            ("call.answered".to_owned(), 4),
            ("call.ended".to_owned(), 5),
        ],
        "every event once, in seq order, the lost node's through the survivor"
    );
    let ended = delivered
        .iter()
        .find(|a| a.body["event"] == "call.ended" && a.body["callid"] == callid.as_str())
        .unwrap();
    assert_eq!(
        ended.body["call"]["end_cause"], "node_lost",
        "{}",
        ended.body
    );
    node1.assert_drained().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_down_means_503_and_service_resumes_by_itself() {
    // Two nodes on one PostgreSQL (and one Redis), as deploy/cluster runs them.
    let pg = store::testing::PgServer::start().expect("PostgreSQL (scripts/ensure-tools.sh)");
    let db = pg.create_database().unwrap();
    let redis = RedisServer::start().unwrap();
    let store = [format!("store.url=\"{}\"", db.url())];
    let options = |node: &str| node_options(&redis, node, &store);
    let node1 = Bridge::start_with(options("node-1")).await;
    let mut node2 = Bridge::start_with(options("node-2")).await;
    // A number assigned on one node is the other's too (the same table).
    let (status, json) = node1
        .http("PUT", "/api/numbers/2001", Some(r#"{"telnum":"1001"}"#))
        .await;
    assert_eq!(status, 200, "{json}");
    let (status, json) = node2.http("GET", "/api/numbers?telnum=1001", None).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["numbers"][0]["number"], "2001", "{json}");

    pg.stop_fast().unwrap();
    let body = r#"{"caller":"2001","callee":"3001"}"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, json) = node1
            .http("POST", "/api/user/1001/makecall", Some(body))
            .await;
        if status == 503 {
            assert_eq!(json["error"]["code"], "store_unavailable", "{json}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never refused: {json}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A phone with no intent: 403 while the store answers, 503 once node 2 (a health check
    // later at most) knows it does not: the store is checked before any claim.
    let mut phone = Phone::udp(&node2, "1009").await;
    phone.call("2009").await;
    let refused = loop {
        let response = phone.ua.recv_response().await;
        if response.status == 503 {
            break response;
        }
        assert!(std::time::Instant::now() < deadline, "INVITE not refused");
        assert_eq!(response.status, 403);
        phone.ua.send(phone.ack_failure(&response)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        phone.call("2009").await;
    };
    phone.ua.send(phone.ack_failure(&refused)).await;
    assert!(node1.metrics().await.contains("callbridge_store_up 0"));

    pg.start_again().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let callid = loop {
        let (status, json) = node1
            .http("POST", "/api/user/1001/makecall", Some(body))
            .await;
        if status == 200 {
            break json["callid"].as_str().unwrap().to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "no recovery: {json}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while node2.metrics().await.contains("callbridge_store_up 0") {
        assert!(
            std::time::Instant::now() < deadline,
            "node 2 never saw the store back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut phone = Phone::udp(&node2, "1001").await;
    let dialog = bridged_call(&mut node2, &mut phone).await;
    phone_hangs_up(&mut node2, &mut phone, &dialog).await;
    // The record reaches the shared store: node 1 reads it there once node 2 wrote it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, json) = node1
            .http("GET", &format!("/api/calls/{callid}"), None)
            .await;
        if status == 200 && json["state"] == "ended" {
            assert_eq!(json["end_cause"], "hangup");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status} {json}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node1.assert_drained().await;
    node2.assert_drained().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_handed_over_between_nodes_keeps_its_webhooks_in_order() {
    use callbridge_benches::webhook_receiver::Reply;

    let redis = RedisServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let receiver = Receiver::start("127.0.0.1:0".parse().unwrap(), WEBHOOK_SECRET)
        .await
        .unwrap();
    // node 1's intent.created fails its first 8 attempts (about a second): the call's next
    // events, node 2's, must wait for it.
    receiver.set_rule(Box::new(|body, attempt| {
        if body["event"] == "intent.created" && attempt <= 8 {
            Reply::Status(503)
        } else {
            Reply::Status(204)
        }
    }));
    let extra = webhooks_to(&receiver, &db, 100);
    let options = |node: &str| node_options(&redis, node, &extra);
    let node1 = Bridge::start_with(options("node-1")).await;
    let mut node2 = Bridge::start_with(options("node-2")).await;
    let callid = node1.makecall("1001", "2001", "3001").await;
    let mut phone = Phone::udp(&node2, "1001").await;
    let dialog = bridged_call(&mut node2, &mut phone).await;
    phone_hangs_up(&mut node2, &mut phone, &dialog).await;
    let delivered = receiver
        .wait_delivered(Duration::from_secs(15), |d| {
            d.iter()
                .filter(|a| a.body["callid"] == callid.as_str())
                .count()
                >= 5
        })
        .await;
    let seqs: Vec<u64> = delivered
        .iter()
        .filter(|a| a.body["callid"] == callid.as_str())
        .map(|a| a.body["seq"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(
        seqs,
        [1, 2, 3, 4, 5],
        "delivered in seq order across the nodes"
    );
    // Not even an attempt of node 2's events before node 1's was delivered.
    let attempts = receiver.attempts();
    let of_call: Vec<u64> = attempts
        .iter()
        .filter(|a| a.body["callid"] == callid.as_str())
        .map(|a| a.body["seq"].as_u64().unwrap_or(0))
        .collect();
    let last_first = of_call.iter().rposition(|s| *s == 1).unwrap();
    let first_second = of_call.iter().position(|s| *s == 2).unwrap();
    assert!(first_second > last_first, "attempts: {of_call:?}");
    assert_eq!(of_call.iter().filter(|s| **s == 1).count(), 9);
    node1.assert_drained().await;
    node2.assert_drained().await;
}
