//! RedisIntents against a real redis-server (Debian's, started by each test on its own port):
//! the atomic claim, latest-wins registration, the TTL and `max_pending` kept in Redis, the
//! sweep's exactly-once expiry, and recovery when Redis restarts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use b2bua::shared_intents::{SharedClaim, SharedError, SharedIntent, SharedIntents};
use b2bua::NoIntent;
use cluster::testing::RedisServer;
use cluster::{Redis, RedisIntents, DEFAULT_PREFIX};

const TTL_MS: u64 = 120_000;

fn table(server: &RedisServer) -> RedisIntents {
    let redis = Redis::new(&server.url(), Duration::from_millis(500)).unwrap();
    RedisIntents::new(Arc::new(redis), DEFAULT_PREFIX)
}

fn intent(callid: &str, telnum: &str, caller: &str, callee: &str) -> SharedIntent {
    SharedIntent {
        callid: callid.into(),
        telnum: telnum.into(),
        caller: caller.into(),
        callee: callee.into(),
        data: None,
        notify_url: None,
        created_at: 1_764_650_000_000,
        seq: 1,
        node: "node-1".into(),
    }
}

fn claimed(claim: SharedClaim) -> SharedIntent {
    match claim {
        SharedClaim::Claimed(intent) => intent,
        other => panic!("expected a claim, got {other:?}"),
    }
}

#[tokio::test]
async fn claim_consumes_the_matching_intent_once_with_everything_it_carries() {
    let server = RedisServer::start().unwrap();
    let t = table(&server);
    let mut first = intent("11111111111111111111", "1001", "+2001", "3001");
    first.data = Some("order-7 ünïcode".into());
    first.notify_url = Some("https://app.example/hook".into());
    assert_eq!(t.register(first.clone(), TTL_MS, 10).await.unwrap(), None);
    assert_eq!(t.pending().await.unwrap(), 1);
    assert_eq!(t.get("1001".into()).await.unwrap(), Some(first.clone()));

    // Another dialled number: refused, the intent stays.
    assert_eq!(
        t.claim("1001".into(), "2999".into()).await.unwrap(),
        SharedClaim::Refused(NoIntent::OtherNumber)
    );
    // Nobody's intent.
    assert_eq!(
        t.claim("1999".into(), "2001".into()).await.unwrap(),
        SharedClaim::Refused(NoIntent::None)
    );
    // The dedicated number matches without its '+'.
    let got = claimed(t.claim("1001".into(), "2001".into()).await.unwrap());
    assert_eq!(got, first);
    assert_eq!(
        t.claim("1001".into(), "2001".into()).await.unwrap(),
        SharedClaim::Refused(NoIntent::None)
    );
    assert_eq!(t.pending().await.unwrap(), 0);
    assert_eq!(t.get("1001".into()).await.unwrap(), None);
}

#[tokio::test]
async fn latest_makecall_wins_and_the_bound_counts_telnums() {
    let server = RedisServer::start().unwrap();
    let t = table(&server);
    let a = intent("10000000000000000001", "1001", "2001", "3001");
    let b = intent("10000000000000000002", "1001", "2001", "3002");
    t.register(a.clone(), TTL_MS, 2).await.unwrap();
    assert_eq!(
        t.register(b.clone(), TTL_MS, 2).await.unwrap(),
        Some(a.clone())
    );
    assert_eq!(t.pending().await.unwrap(), 1);
    // The replaced callid can no longer be cancelled; the new one can.
    assert_eq!(t.cancel_callid(a.callid.clone()).await.unwrap(), None);
    let c = intent("10000000000000000003", "1002", "2002", "3003");
    t.register(c.clone(), TTL_MS, 2).await.unwrap();
    let d = intent("10000000000000000004", "1003", "2003", "3004");
    match t.register(d, TTL_MS, 2).await {
        Err(SharedError::Full(full)) => assert_eq!(full.max, 2),
        other => panic!("expected Full, got {other:?}"),
    }
    // Replacing a held telnum is always allowed.
    let b2 = intent("10000000000000000005", "1001", "2001", "3005");
    assert_eq!(t.register(b2.clone(), TTL_MS, 2).await.unwrap(), Some(b));
    assert_eq!(t.cancel_callid(b2.callid.clone()).await.unwrap(), Some(b2));
    assert_eq!(t.cancel("1002".into()).await.unwrap(), Some(c));
    assert_eq!(t.cancel("1002".into()).await.unwrap(), None);
    assert_eq!(t.pending().await.unwrap(), 0);
}

#[tokio::test]
async fn cti_matches_the_callee_too() {
    let server = RedisServer::start().unwrap();
    let t = table(&server);
    let a = intent("20000000000000000001", "1001", "2001", "+3001");
    t.register(a.clone(), TTL_MS, 10).await.unwrap();
    assert_eq!(
        t.claim("1001".into(), "3001".into()).await.unwrap(),
        SharedClaim::Refused(NoIntent::OtherNumber),
        "an INVITE must dial the dedicated number"
    );
    assert_eq!(
        claimed(t.claim_cti("1001".into(), "3001".into()).await.unwrap()),
        a
    );
}

#[tokio::test]
async fn expired_intents_go_to_exactly_one_sweeper_or_claim() {
    let server = RedisServer::start().unwrap();
    let t1 = table(&server);
    let t2 = table(&server);
    for i in 0..20 {
        let it = intent(
            &format!("3000000000000000{i:04}"),
            &format!("1{i:03}"),
            "2001",
            "3001",
        );
        t1.register(it, 1, 100).await.unwrap();
    }
    let late = intent("39999999999999999999", "1999", "2001", "3001");
    t1.register(late.clone(), 1, 100).await.unwrap();
    // The TTL is Redis's (TIME): 1 ms, then a real wait for its clock to pass it.
    tokio::time::sleep(Duration::from_millis(20)).await;
    match t2.claim("1999".into(), "2001".into()).await.unwrap() {
        SharedClaim::Expired(it) => assert_eq!(it, late),
        other => panic!("expected Expired, got {other:?}"),
    }
    let (a, b) = tokio::join!(t1.take_expired(7), t2.take_expired(500));
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut all: Vec<String> = a.iter().chain(&b).map(|i| i.callid.clone()).collect();
    all.sort();
    all.dedup();
    assert_eq!(
        all.len(),
        20,
        "each expired intent once: {} + {}",
        a.len(),
        b.len()
    );
    assert_eq!(a.len() + b.len(), 20);
    assert!(t1.take_expired(500).await.unwrap().is_empty());
    assert_eq!(t1.pending().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_claims_on_separate_connections_consume_an_intent_once() {
    let server = RedisServer::start().unwrap();
    let nodes: Vec<Arc<RedisIntents>> = (0..6).map(|_| Arc::new(table(&server))).collect();
    for round in 0..100 {
        let it = intent(
            &format!("4000000000000000{round:04}"),
            "1001",
            "2001",
            "3001",
        );
        nodes[0].register(it, TTL_MS, 10).await.unwrap();
        let claims = nodes.iter().map(|node| {
            let node = Arc::clone(node);
            tokio::spawn(async move { node.claim("1001".into(), "2001".into()).await })
        });
        let mut won = 0;
        for claim in claims {
            match claim.await.unwrap().unwrap() {
                SharedClaim::Claimed(_) => won += 1,
                SharedClaim::Refused(NoIntent::None) => {}
                other => panic!("round {round}: {other:?}"),
            }
        }
        assert_eq!(won, 1, "round {round}: exactly one node bridges");
    }
}

#[tokio::test]
async fn redis_down_is_an_error_within_the_timeout_and_recovery_needs_no_restart() {
    let mut server = RedisServer::start().unwrap();
    let t = table(&server);
    t.register(
        intent("50000000000000000001", "1001", "2001", "3001"),
        TTL_MS,
        10,
    )
    .await
    .unwrap();
    server.stop();
    let started = Instant::now();
    let error = t.claim("1001".into(), "2001".into()).await.unwrap_err();
    assert!(matches!(error, SharedError::Unavailable(_)), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by the timeout: {:?}",
        started.elapsed()
    );
    server.restart().unwrap();
    // The restarted Redis is empty (no persistence in the test); what matters is that the
    // same table answers again on its own, within a few attempts.
    let mut answer = None;
    for _ in 0..50 {
        match t.claim("1001".into(), "2001".into()).await {
            Ok(claim) => {
                answer = Some(claim);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(answer, Some(SharedClaim::Refused(NoIntent::None)));
    let it = intent("50000000000000000002", "1001", "2001", "3001");
    t.register(it.clone(), TTL_MS, 10).await.unwrap();
    assert_eq!(
        claimed(t.claim("1001".into(), "2001".into()).await.unwrap()),
        it
    );
}

#[tokio::test]
async fn a_claim_enters_the_call_index_in_the_same_step() {
    let server = RedisServer::start().unwrap();
    let redis = Arc::new(Redis::new(&server.url(), Duration::from_millis(500)).unwrap());
    let t = RedisIntents::new(Arc::clone(&redis), DEFAULT_PREFIX).claiming_as("node-7");
    let index = cluster::CallIndex::new(Arc::clone(&redis), DEFAULT_PREFIX);
    let mut it = intent("60000000000000000001", "1001", "+2001", "3001");
    it.data = Some("order \"7\"".into());
    t.register(it.clone(), TTL_MS, 10).await.unwrap();
    assert_eq!(
        index.get(&it.callid).await.unwrap(),
        None,
        "a pending intent is not indexed"
    );
    claimed(t.claim("1001".into(), "2001".into()).await.unwrap());
    let entry = index
        .get(&it.callid)
        .await
        .unwrap()
        .expect("indexed at the claim");
    assert_eq!(
        (entry.node.as_str(), entry.seq, entry.ended),
        ("node-7", 1, false)
    );
    let row: serde_json::Value = serde_json::from_str(&entry.row).unwrap();
    assert_eq!(row["state"], "trying");
    assert_eq!(row["caller"], "+2001");
    assert_eq!(row["data"], "order \"7\"");
    assert_eq!(row["created_at"], 1_764_650_000_000u64);
    assert!(row.get("notify_url").is_none());
}
