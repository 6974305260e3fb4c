//! The trunk's health end to end (issue 11, item 5): with `trunk.ping_secs = 1` callbridge
//! pings the trunk (here the callee's UA) with OPTIONS; while it answers, calls bridge; after
//! three unanswered pings `/healthz` says the trunk is down and a new INVITE gets 503 at once,
//! its intent left pending; once a ping is answered again, the same intent bridges. And
//! callbridge's own answer to OPTIONS, which a load balancer probes it with.

use std::time::{Duration, Instant};

use sip_core::{HeaderName, Message, Method, Request, Response};
use sip_tests::bridge::{assert_anchored, Bridge, CalleeDialog, Options, Phone};
use sip_tests::{request, TestUa};

/// How long a test waits for the trunk's state to change: three lost pings take 3 s.
const STATE_WAIT: Duration = Duration::from_secs(10);

/// The trunk's side: reads what callbridge sent it for up to `wait`. OPTIONS pings are
/// answered 200 when `answering` (else left unanswered, as a dead trunk would); the first
/// other message is returned, `None` when there was none.
async fn trunk_recv(trunk: &mut TestUa, answering: bool, wait: Duration) -> Option<Message> {
    let until = Instant::now() + wait;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match trunk.try_recv(left).await? {
            (Message::Request(ping), from) if ping.method == Method::Options => {
                if answering {
                    trunk
                        .send_to(Response::to_request(&ping, 200, None), from)
                        .await;
                }
            }
            (message, _) => return Some(message),
        }
    }
}

/// The next request of `method` at the trunk (pings answered meanwhile); panics on anything
/// else or after five seconds.
async fn trunk_expects(bridge: &mut Bridge, method: Method) -> Request {
    loop {
        match trunk_recv(&mut bridge.callee, true, Duration::from_secs(5)).await {
            Some(Message::Request(request)) if request.method == method => return request,
            Some(Message::Response(_)) => continue,
            Some(Message::Request(other)) => {
                panic!("trunk: expected {method}, got {}", other.method)
            }
            None => panic!("trunk: no {method} within 5 s"),
        }
    }
}

/// `/healthz`'s `trunk` word, and its status code.
async fn trunk_word(bridge: &Bridge) -> (u16, String) {
    let (status, health) = bridge.http("GET", "/healthz", None).await;
    let word = health["trunk"].as_str().unwrap_or_default().to_owned();
    (status, word)
}

/// Waits until `/healthz` says the trunk is `word`, the trunk answering pings meanwhile or
/// not; returns how long it took. Polls with a bounded deadline.
async fn wait_trunk(bridge: &mut Bridge, word: &str, answering: bool) -> Duration {
    let began = Instant::now();
    loop {
        if let Some(other) =
            trunk_recv(&mut bridge.callee, answering, Duration::from_millis(50)).await
        {
            panic!(
                "trunk: unexpected message while waiting for {word}:\n{}",
                String::from_utf8_lossy(&other.to_bytes())
            );
        }
        let (status, now) = trunk_word(bridge).await;
        // The node stays healthy whatever the trunk does.
        assert_eq!(status, 200, "/healthz with the trunk {now}");
        if now == word {
            return began.elapsed();
        }
        assert!(
            began.elapsed() < STATE_WAIT,
            "the trunk never became {word} (still {now})"
        );
    }
}

/// A counter or gauge of `/metrics` (`None` when absent).
async fn metric(bridge: &Bridge, series: &str) -> Option<u64> {
    let text = bridge.metrics().await;
    let prefix = format!("{series} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.trim().parse().expect("metric value"))
}

/// `phone` dials `dialled`; the trunk rings and answers; both legs are bridged and the phone
/// hangs up. The trunk keeps answering pings throughout.
async fn call_bridges_and_ends(bridge: &mut Bridge, phone: &mut Phone, dialled: &str) {
    phone.call(dialled).await;
    let invite = trunk_expects(bridge, Method::Invite).await;
    let dialog = CalleeDialog::new(invite.clone());
    bridge.callee.send(dialog.reply(&invite, 180, None)).await;
    let ringing = phone.ua.expect_response(180).await;
    phone.learn(&ringing);
    let media = bridge.callee.local_addr();
    bridge
        .callee
        .send(dialog.reply(&invite, 200, Some(media)))
        .await;
    let ok = phone.ua.expect_response(200).await;
    phone.learn(&ok);
    assert_anchored(&ok.body, bridge.rtp_ports, "sendrecv");
    trunk_expects(bridge, Method::Ack).await;
    phone.ack().await;
    let bye = phone.in_dialog(Method::Bye, None);
    phone.ua.send(bye).await;
    phone.ua.expect_response(200).await;
    let bye_b = trunk_expects(bridge, Method::Bye).await;
    bridge.callee.send(dialog.reply(&bye_b, 200, None)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_trunk_gets_invites_503_at_once_and_the_intent_waits_for_it() {
    let started = Instant::now();
    let mut bridge = Bridge::start_with(Options {
        // T1 = 50 ms (the bridge's test timers): Timer F is 3.2 s, so each ping waits
        // until the next is due, 1 s.
        extra: vec!["trunk.ping_secs=1".into()],
        ..Options::default()
    })
    .await;

    // The trunk answers: it is up, and calls bridge.
    let up = Instant::now();
    while metric(&bridge, "callbridge_trunk_pings_total{result=\"answered\"}")
        .await
        .unwrap_or(0)
        == 0
    {
        assert!(up.elapsed() < STATE_WAIT, "no ping answered");
        assert!(
            trunk_recv(&mut bridge.callee, true, Duration::from_millis(50))
                .await
                .is_none()
        );
    }
    assert_eq!(trunk_word(&bridge).await, (200, "up".to_owned()));
    assert_eq!(metric(&bridge, "callbridge_trunk_up").await, Some(1));
    bridge.makecall("1001", "2001", "3001").await;
    let mut phone = Phone::udp(&bridge, "1001").await;
    call_bridges_and_ends(&mut bridge, &mut phone, "2001").await;

    // The trunk falls silent: after three lost pings (about 3 s) it is down.
    let took = wait_trunk(&mut bridge, "down", false).await;
    eprintln!("trunk down {took:?} after it fell silent");
    assert!(took >= Duration::from_secs(2), "down too soon: {took:?}");
    assert_eq!(metric(&bridge, "callbridge_trunk_up").await, Some(0));
    let lost = metric(&bridge, "callbridge_trunk_pings_total{result=\"lost\"}").await;
    assert!(lost.is_some_and(|n| n >= 3), "lost pings: {lost:?}");

    // A new INVITE gets 503 at once, and its intent is left for later.
    let callid = bridge.makecall("1002", "2002", "3002").await;
    let mut phone = Phone::udp(&bridge, "1002").await;
    let sent = Instant::now();
    phone.call("2002").await;
    let refused = phone.ua.expect_response(503).await;
    let answered_in = sent.elapsed();
    eprintln!("503 {answered_in:?} after the INVITE");
    assert!(
        answered_in < Duration::from_millis(100),
        "503 after {answered_in:?}"
    );
    assert_eq!(
        refused.headers.get(&HeaderName::parse("Retry-After")),
        Some("1")
    );
    assert_eq!(
        refused.headers.get(&HeaderName::Reason),
        Some("SIP;cause=503;text=\"Trunk unavailable\"")
    );
    let ack = phone.ack_failure(&refused);
    phone.ua.send(ack).await;
    assert!(
        trunk_recv(&mut bridge.callee, false, Duration::from_millis(200))
            .await
            .is_none(),
        "nothing but pings went to the trunk"
    );
    assert_eq!(bridge.call(&callid).await["state"], "intent");
    assert_eq!(bridge.refused("trunk_down").await, 1);

    // The trunk answers again: up at the next ping, and the same intent now bridges.
    let took = wait_trunk(&mut bridge, "up", true).await;
    eprintln!("trunk up {took:?} after it answered again");
    assert_eq!(metric(&bridge, "callbridge_trunk_up").await, Some(1));
    let mut phone = Phone::udp(&bridge, "1002").await;
    call_bridges_and_ends(&mut bridge, &mut phone, "2002").await;
    let record = bridge.wait_call_state(&callid, "ended").await;
    assert!(record["answered_at"].is_number(), "{record}");
    bridge.assert_drained().await;
    eprintln!("test took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_from_a_trusted_peer_get_200_with_allow_accept_and_supported() {
    let bridge = Bridge::start().await;
    let mut prober = TestUa::udp(bridge.sip).await;
    let options = request(&format!(
        "OPTIONS sip:{sip} SIP/2.0\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bKlbprobe;rport\n\
         Max-Forwards: 70\n\
         From: <sip:probe@lb.test>;tag=lb1\n\
         To: <sip:{sip}>\n\
         Call-ID: lb-probe-1@lb.test\n\
         CSeq: 1 OPTIONS\n\n",
        sip = bridge.sip,
        me = prober.local_addr(),
    ));
    prober.send(options).await;
    let ok = prober.expect_response(200).await;
    let allow = ok.headers.get(&HeaderName::Allow).unwrap_or_default();
    for method in ["INVITE", "ACK", "CANCEL", "BYE", "OPTIONS"] {
        assert!(allow.contains(method), "Allow: {allow}");
    }
    assert_eq!(
        ok.headers.get(&HeaderName::parse("Accept")),
        Some("application/sdp")
    );
    // Present, and empty: no option tags supported yet.
    assert_eq!(
        ok.headers.get(&HeaderName::Supported),
        Some("100rel, timer")
    );
    assert!(ok.headers.get(&HeaderName::Server).is_none());
    // No keepalive configured: the trunk is not judged.
    assert_eq!(trunk_word(&bridge).await, (200, "unmonitored".to_owned()));
    assert_eq!(metric(&bridge, "callbridge_trunk_up").await, None);
    bridge.assert_drained().await;
}
