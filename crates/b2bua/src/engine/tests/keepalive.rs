//! The trunk's OPTIONS keepalive through the engine (`engine/keepalive.rs`): pings out to the
//! trunk, any response keeping it up, silence taking it down, and new INVITEs refused with 503
//! while it is down without their intent being used.

use super::*;
use crate::trunk_health::TrunkState;

/// Every `trunk.ping_secs = 1`.
const PING: Duration = Duration::from_secs(1);

/// A harness pinging the trunk every second, started (its first ping sent and taken).
fn pinging() -> (Harness, Request) {
    let mut h = Harness::configured(|c| c.trunk_ping = Some(PING));
    h.engine.handle_timeout(h.now);
    let ping = latest_ping(&mut h).expect("a ping at start-up");
    (h, ping)
}

/// The OPTIONS of the newest ping, checked to have been sent since the last look (what else
/// went out is retransmissions of older pings, and is dropped).
fn latest_ping(h: &mut Harness) -> Option<Request> {
    let sent = h.sent();
    let (_, tx) = h
        .engine
        .keepalive
        .pings
        .iter()
        .map(|(tx, ping)| (*ping, *tx))
        .max()?;
    let ping = h.engine.transactions().client_request(tx)?.clone();
    let out = sent.iter().any(|(to, m)| {
        *to == trunk()
            && matches!(m, Message::Request(r) if r.headers.call_id() == ping.headers.call_id())
    });
    assert!(out, "the newest ping was not sent");
    Some(ping)
}

/// Advances by `by`, in which exactly one new ping must go out; returns it.
fn next_ping(h: &mut Harness, by: Duration) -> Request {
    let before = h.engine.trunk_health().stats().pings_sent;
    h.advance(by);
    assert_eq!(
        h.engine.trunk_health().stats().pings_sent,
        before + 1,
        "one ping per interval"
    );
    latest_ping(h).expect("the new ping")
}

/// The trunk answers a ping with `status`.
fn trunk_answers(h: &mut Harness, ping: &Request, status: u16) {
    h.feed(&answer(ping, status, "trunk-tag", ""), trunk());
}

/// Stops the pings (a shutdown) so that the ones in flight end, then checks nothing is left.
fn drain(h: &mut Harness, kept: &[&str]) {
    h.engine.start_drain(h.now);
    h.assert_drained_keeping(kept);
    assert_eq!(
        h.engine.keepalive_transactions(),
        0,
        "ping transactions left"
    );
}

#[test]
fn pings_are_proper_out_of_dialog_options_to_the_trunk() {
    let (mut h, ping) = pinging();
    assert_eq!(ping.uri.to_string(), "sip:127.0.0.1:5080");
    assert_eq!(
        ping.headers.from().unwrap().uri.to_string(),
        "sip:ping@127.0.0.1"
    );
    assert!(ping.headers.from().unwrap().tag().is_some());
    assert!(ping.headers.to().unwrap().tag().is_none());
    assert_eq!(ping.headers.max_forwards(), Some(Ok(70)));
    assert!(ping.headers.top_via().unwrap().branch().is_some());
    assert_eq!(h.engine.keepalive_transactions(), 1);
    trunk_answers(&mut h, &ping, 200);
    assert!(h.sent().is_empty(), "a ping's answer is not answered");
    let second = next_ping(&mut h, PING);
    assert_ne!(second.headers.call_id(), ping.headers.call_id());
    trunk_answers(&mut h, &second, 200);
    let stats = h.engine.trunk_health().stats().clone();
    assert_eq!((stats.pings_sent, stats.pings_answered), (2, 2));
    assert_eq!(h.engine.trunk_health().state(), TrunkState::Up);
    drain(&mut h, &[]);
}

#[test]
fn any_response_is_an_answer_even_a_challenge_or_a_refusal() {
    let (mut h, mut ping) = pinging();
    for status in [401, 407, 404, 405, 503, 200] {
        trunk_answers(&mut h, &ping, status);
        // A non-2xx to a non-INVITE gets no ACK; nothing goes back.
        assert!(h.sent().is_empty());
        ping = next_ping(&mut h, PING);
    }
    let stats = h.engine.trunk_health().stats();
    assert_eq!(stats.pings_answered, 6);
    assert_eq!(stats.pings_lost, 0);
    assert_eq!(h.engine.trunk_health().state(), TrunkState::Up);
    drain(&mut h, &[]);
}

#[test]
fn a_silent_trunk_is_down_and_invites_get_503_at_once_keeping_the_intent() {
    let (mut h, _) = pinging();
    let intent = h.control.make_call(h.now, "1001", "2001", "3001").unwrap();
    // Two pings unanswered (each lost when the next is due): still up.
    next_ping(&mut h, PING);
    next_ping(&mut h, PING);
    assert_eq!(h.engine.trunk_health().state(), TrunkState::Up);
    let ping = next_ping(&mut h, PING);
    assert_eq!(h.engine.trunk_health().state(), TrunkState::Down);
    assert_eq!(h.engine.trunk_health().stats().pings_lost, 3);

    h.feed(&leg_a_invite("1001", "2001", "z9hG4bKdown", SDP_A), phone());
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [100, 503]);
    assert!(methods(&sent, trunk()).is_empty(), "no leg B");
    let refusal = response_of(&sent[1].1);
    assert_eq!(
        refusal.headers.get(&HeaderName::parse("Retry-After")),
        Some("1")
    );
    assert_eq!(
        refusal.headers.get(&HeaderName::Reason),
        Some("SIP;cause=503;text=\"Trunk unavailable\"")
    );
    assert!(refusal.headers.to().unwrap().tag().is_some());
    assert_eq!(h.engine.stats().calls_refused.get("trunk_down"), Some(&1));
    assert!(h.engine.media.commands.is_empty(), "no media for a refusal");
    // The intent is untouched.
    let record = h.control.call(&intent.callid).unwrap();
    assert_eq!(record.state, CallState::Intent);
    assert_eq!(h.control.intents().len(), 1);
    // The caller ACKs the 503.
    let a_tag = our_a_tag(&sent);
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 1, "z9hG4bKdown", ""),
        phone(),
    );

    // The trunk answers again: up at once, and the same intent now places leg B.
    trunk_answers(&mut h, &ping, 200);
    assert_eq!(h.engine.trunk_health().state(), TrunkState::Up);
    let stats = h.engine.trunk_health().stats();
    assert_eq!((stats.went_down, stats.went_up), (1, 1));
    h.feed(&leg_a_invite("1001", "2001", "z9hG4bKup", SDP_A), phone());
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [100]);
    let b_invite = find_request(&sent, "INVITE");
    assert_eq!(b_invite.uri.user(), Some("3001"));
    assert!(h.control.intents().is_empty(), "now the intent is used");
    callee_refuses(&mut h, &b_invite, "z9hG4bKup");
    drain(&mut h, &[]);
}

#[test]
fn retry_after_is_the_ping_interval() {
    let mut h = Harness::configured(|c| c.trunk_ping = Some(Duration::from_secs(30)));
    h.engine.handle_timeout(h.now);
    // Each ping waits until the next is due (30 s < Timer F's 32 s): three intervals.
    h.advance(Duration::from_secs(90));
    assert_eq!(h.engine.trunk_health().state(), TrunkState::Down);
    h.sent();
    h.feed(&leg_a_invite("1001", "2001", "z9hG4bKra", SDP_A), phone());
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [100, 503]);
    assert_eq!(
        response_of(&sent[1].1)
            .headers
            .get(&HeaderName::parse("Retry-After")),
        Some("30")
    );
    let a_tag = our_a_tag(&sent);
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 1, "z9hG4bKra", ""),
        phone(),
    );
    drain(&mut h, &[]);
}

#[test]
fn a_transport_error_loses_the_ping_at_once_and_a_late_timeout_is_not_counted_again() {
    let (mut h, _) = pinging();
    let tx = *h.engine.keepalive.pings.keys().next().unwrap();
    h.engine
        .handle_transport_error(h.now, Some(sip_core::transaction::TxId::Client(tx)));
    assert_eq!(h.engine.trunk_health().stats().pings_lost, 1);
    // The next two pings run out (the second at Timer F of the first's time and after):
    // counted once each, the transaction layer's own timeouts ignored.
    next_ping(&mut h, PING);
    next_ping(&mut h, PING);
    h.advance(Duration::from_secs(40));
    h.sent();
    let stats = h.engine.trunk_health().stats().clone();
    assert_eq!(stats.pings_lost + 1, stats.pings_sent, "{stats:?}");
    assert_eq!(stats.went_down, 1);
    drain(&mut h, &[]);
}

#[test]
fn a_late_answer_to_a_lost_ping_does_not_bring_the_trunk_up() {
    let (mut h, first) = pinging();
    next_ping(&mut h, PING);
    next_ping(&mut h, PING);
    next_ping(&mut h, PING);
    assert_eq!(h.engine.trunk_health().state(), TrunkState::Down);
    // The first ping's transaction is still alive (Timer F is 32 s): its answer reaches
    // the keepalive, as a late one.
    trunk_answers(&mut h, &first, 200);
    assert_eq!(h.engine.trunk_health().state(), TrunkState::Down);
    assert_eq!(h.engine.trunk_health().stats().late_answers, 1);
    drain(&mut h, &[]);
}

#[test]
fn no_pings_when_off_and_none_once_draining() {
    let mut h = Harness::new();
    h.engine.handle_timeout(h.now);
    h.advance(Duration::from_secs(60));
    assert!(methods(&h.sent(), trunk()).is_empty());
    assert_eq!(h.engine.trunk_health().stats().pings_sent, 0);
    assert_eq!(h.engine.trunk_health().state(), TrunkState::Unmonitored);
    assert_eq!(h.engine.poll_timeout(), None);
    h.assert_drained();

    let (mut h, _) = pinging();
    h.engine.start_drain(h.now);
    h.advance(Duration::from_secs(60));
    assert_eq!(
        h.engine.trunk_health().stats().pings_sent,
        1,
        "no pings while draining"
    );
    drain(&mut h, &[]);
}

#[test]
fn options_from_a_trusted_peer_get_200_with_allow_accept_and_supported() {
    let mut h = Harness::new();
    let mut options = request_of(&leg_a_invite("1001", "2001", "z9hG4bKlb", "")).clone();
    options.method = sip_core::Method::Options;
    options.headers.set(HeaderName::CSeq, "1 OPTIONS");
    h.feed(&Message::Request(options), phone());
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [200]);
    let ok = response_of(&sent[0].1);
    assert_eq!(
        ok.headers.get(&HeaderName::Allow),
        Some(crate::outbound::ALLOW)
    );
    assert_eq!(
        ok.headers.get(&HeaderName::parse("Accept")),
        Some("application/sdp")
    );
    assert_eq!(
        ok.headers.get(&HeaderName::Supported),
        Some(crate::outbound::SUPPORTED.join(", ").as_str())
    );
    // On the wire too, and it parses back.
    let bytes = ok.to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("\r\nSupported: 100rel, timer\r\n"), "{text}");
    let parsed = Message::parse(&bytes, &ParseLimits::default()).unwrap();
    assert_eq!(
        response_of(&parsed).headers.get(&HeaderName::Supported),
        Some("100rel, timer")
    );
    h.assert_drained();
}
