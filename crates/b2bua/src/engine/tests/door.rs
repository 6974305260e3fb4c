//! The trust boundary and overload shedding (`engine/door.rs`), through the engine: what an
//! untrusted source, a trusted source that is not a leg's peer, and a new INVITE beyond the
//! engine's capacity get, and that none of them creates state or touches a call.

use super::*;
use crate::engine::UntrustedReply;

fn stranger() -> Peer {
    Peer::udp("10.66.66.66:5060".parse().unwrap())
}

/// Trusted (127.0.0.0/8) but neither the trunk (127.0.0.1) nor on any call.
fn other_trusted() -> Peer {
    Peer::udp("127.0.0.9:5060".parse().unwrap())
}

fn transactions(h: &Harness) -> (usize, usize) {
    let layer = h.engine.transactions();
    (layer.client_count(), layer.server_count())
}

/// Statuses of the responses sent to `peer`'s IP (any port: a Via without `rport` names the
/// port the answer goes to).
fn statuses_to_host(sent: &[(Peer, Message)], peer: Peer) -> Vec<u16> {
    sent.iter()
        .filter(|(to, _)| to.addr.ip() == peer.addr.ip())
        .filter_map(|(_, m)| match m {
            Message::Response(r) => Some(r.status),
            Message::Request(_) => None,
        })
        .collect()
}

fn header<'a>(message: &'a Message, name: &str) -> Option<&'a str> {
    response_of(message).headers.get(&HeaderName::parse(name))
}

#[test]
fn an_untrusted_invite_gets_one_stateless_403_no_bigger_than_itself() {
    let mut h = Harness::new();
    let intent = h.control.make_call(h.now, "1001", "2001", "3001").unwrap();
    let invite = leg_a_invite("1001", "2001", "z9hG4bKspray", SDP_A);
    let size_in = invite.to_bytes().len();
    let mut answers = Vec::new();
    for _ in 0..3 {
        h.feed(&invite, stranger());
        let sent = h.sent();
        assert_eq!(
            statuses(&sent, stranger()),
            [403],
            "exactly one datagram back"
        );
        assert_eq!(
            transactions(&h),
            (0, 0),
            "no transaction, so no retransmission"
        );
        answers.push(sent[0].1.to_bytes());
    }
    // Copies get byte-identical answers (RFC 3261 §8.2.7): the To tag is not random.
    assert!(answers.windows(2).all(|w| w[0] == w[1]));
    assert!(
        answers[0].len() < size_in,
        "{} bytes back for {size_in}",
        answers[0].len()
    );
    let refusal = Message::parse(&answers[0], &ParseLimits::default()).unwrap();
    assert!(response_of(&refusal).headers.to().unwrap().tag().is_some());
    assert!(header(&refusal, "Server").is_none() && header(&refusal, "Reason").is_none());
    // Nothing is armed: a flood leaves nothing behind to expire.
    assert_eq!(h.engine.poll_timeout(), None);
    assert_eq!(h.engine.stats().untrusted_messages, 3);
    assert_eq!(
        h.engine.stats().calls_refused.get("untrusted_source"),
        Some(&3)
    );
    h.assert_drained_keeping(&[&intent.callid]);
}

#[test]
fn untrusted_acks_responses_and_everything_with_drop_get_nothing() {
    let mut h = Harness::configured(|c| c.untrusted_reply = UntrustedReply::Drop);
    h.feed(
        &leg_a_invite("1001", "2001", "z9hG4bKd1", SDP_A),
        stranger(),
    );
    h.feed(&out_of_dialog("OPTIONS", "z9hG4bKd2"), stranger());
    assert!(h.sent().is_empty());
    let mut h = Harness::new();
    h.feed(&out_of_dialog("ACK", "z9hG4bKd3"), stranger());
    let invite = request_of(&leg_a_invite("1001", "2001", "z9hG4bKd4", "")).clone();
    h.feed(&answer(&invite, 200, "x", ""), stranger());
    assert!(
        h.sent().is_empty(),
        "an ACK and a response are never answered"
    );
    assert_eq!(h.engine.stats().untrusted_messages, 2);
    h.assert_drained();
}

#[test]
fn a_spoofed_bye_or_reinvite_from_an_untrusted_source_changes_nothing() {
    let mut h = Harness::new();
    let (callid, b_invite, a_tag) = bridged_call(&mut h);
    h.media();
    // The attacker knows both dialogs' identifiers.
    h.feed(
        &in_dialog_from_a("BYE", &a_tag, 2, "z9hG4bKevil1", ""),
        stranger(),
    );
    h.feed(
        &in_dialog_from_b(&b_invite, "btag", "INVITE", 2, "z9hG4bKevil2", SDP_B),
        stranger(),
    );
    h.feed(
        &in_dialog_from_b(&b_invite, "btag", "BYE", 3, "z9hG4bKevil3", ""),
        stranger(),
    );
    let sent = h.sent();
    assert_eq!(statuses_to_host(&sent, stranger()), [403, 403, 403]);
    assert!(methods(&sent, trunk()).is_empty() && methods(&sent, phone()).is_empty());
    assert!(h.media().is_empty(), "no media moved");
    assert_eq!(h.control.call(&callid).unwrap().state, CallState::Answered);
    // The real caller still hangs up normally.
    caller_hangs_up(&mut h, &a_tag, 2);
    h.assert_drained();
}

#[test]
fn leg_b_requests_only_from_the_trunk() {
    let mut h = Harness::new();
    let (callid, b_invite, a_tag) = bridged_call(&mut h);
    h.media();
    // A trusted phone that is not the trunk tries leg B's dialog.
    h.feed(
        &in_dialog_from_b(&b_invite, "btag", "BYE", 2, "z9hG4bKother", ""),
        other_trusted(),
    );
    h.feed(
        &in_dialog_from_b(&b_invite, "btag", "INVITE", 3, "z9hG4bKother2", SDP_B),
        other_trusted(),
    );
    let sent = h.sent();
    // A trusted source is answered statefully (the re-INVITE's 100 Trying first).
    assert_eq!(statuses_to_host(&sent, other_trusted()), [403, 100, 403]);
    assert!(methods(&sent, phone()).is_empty());
    assert!(h.media().is_empty());
    assert_eq!(h.engine.stats().wrong_peer_messages, 2);
    assert_eq!(h.control.call(&callid).unwrap().state, CallState::Answered);
    // From the trunk, the same BYE ends the call.
    h.feed(
        &in_dialog_from_b(&b_invite, "btag", "BYE", 4, "z9hG4bKreal", ""),
        trunk(),
    );
    let sent = h.sent();
    assert_eq!(statuses(&sent, trunk()), [200]);
    let bye = find_request(&sent, "BYE");
    h.feed(&answer(&bye, 200, "atag", ""), phone());
    let _ = a_tag;
    h.assert_drained();
}

#[test]
fn a_spoofed_answer_from_an_untrusted_source_is_dropped() {
    let mut h = Harness::new();
    let (callid, b_invite) = start_call(&mut h, SDP_A);
    h.feed(&answer(&b_invite, 200, "evil", SDP_B), stranger());
    assert!(h.sent().is_empty());
    assert_eq!(h.control.call(&callid).unwrap().state, CallState::Trying);
    callee_refuses(&mut h, &b_invite, "z9hG4bKa1");
    h.assert_drained();
}

#[test]
fn beyond_max_calls_new_invites_get_a_stateless_503_and_copies_of_live_ones_are_absorbed() {
    let mut h = Harness::with(1);
    let (callid, b_invite) = start_call(&mut h, SDP_A);
    let held = transactions(&h);
    let second = h.control.make_call(h.now, "1002", "2002", "3002").unwrap();
    let invite = with_call_id(
        leg_a_invite("1002", "2002", "z9hG4bKshed", SDP_A),
        "shed@10.9.9.9",
    );
    h.feed(&invite, phone());
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [503]);
    assert_eq!(header(&sent[0].1, "Retry-After"), Some("5"));
    assert_eq!(transactions(&h), held, "shedding holds nothing");
    // A retransmission of the first call's INVITE is still the layer's: absorbed, not shed.
    h.feed(&leg_a_invite("1001", "2001", "z9hG4bKa1", SDP_A), phone());
    assert_eq!(statuses(&h.sent(), phone()), [100]);
    assert_eq!(h.engine.stats().calls_refused.get("overloaded"), Some(&1));
    assert_eq!(h.control.call(&callid).unwrap().state, CallState::Trying);
    callee_refuses(&mut h, &b_invite, "z9hG4bKa1");
    h.assert_drained_keeping(&[&second.callid]);
}

#[test]
fn a_backlogged_engine_sheds_new_invites_but_serves_its_calls() {
    let mut h = Harness::new();
    let (_, b_invite, a_tag) = bridged_call(&mut h);
    let waiting = h.control.make_call(h.now, "1002", "2002", "3002").unwrap();
    h.engine.set_input_backlog(257);
    let invite = with_call_id(
        leg_a_invite("1002", "2002", "z9hG4bKlag", SDP_A),
        "lag@10.9.9.9",
    );
    h.feed(&invite, phone());
    assert_eq!(statuses(&h.sent(), phone()), [503]);
    // The live call's BYE is served at once, backlog or not.
    h.feed(
        &in_dialog_from_b(&b_invite, "btag", "BYE", 2, "z9hG4bKbyeb", ""),
        trunk(),
    );
    let sent = h.sent();
    assert_eq!(statuses(&sent, trunk()), [200]);
    h.feed(
        &answer(&find_request(&sent, "BYE"), 200, "atag", ""),
        phone(),
    );
    // Caught up: the same caller dials again and gets through.
    h.engine.set_input_backlog(0);
    h.feed(&invite, phone());
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [100]);
    callee_refuses(&mut h, &find_request(&sent, "INVITE"), "z9hG4bKlag");
    let _ = (a_tag, waiting);
    h.assert_drained();
}

#[test]
fn an_invite_that_waited_too_long_for_the_engine_is_shed_and_the_next_one_served() {
    let mut h = Harness::new();
    let _late = h.control.make_call(h.now, "1002", "2002", "3002").unwrap();
    let invite = leg_a_invite("1002", "2002", "z9hG4bKwait", SDP_A);
    // Queued 400 ms (sip.overload_wait_ms): the phone is about to retransmit it.
    h.engine.set_input_wait(Duration::from_millis(400));
    h.feed(&invite, phone());
    assert_eq!(statuses(&h.sent(), phone()), [503]);
    assert_eq!(h.engine.stats().calls_refused.get("overloaded"), Some(&1));
    // Just under the limit: served.
    h.engine.set_input_wait(Duration::from_millis(399));
    h.feed(&invite, phone());
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [100]);
    callee_refuses(&mut h, &find_request(&sent, "INVITE"), "z9hG4bKwait");
    h.assert_drained();
}

#[test]
fn while_draining_new_invites_get_503_and_live_calls_go_on() {
    let mut h = Harness::new();
    let (callid, _, a_tag) = bridged_call(&mut h);
    let late = h.control.make_call(h.now, "1002", "2002", "3002").unwrap();
    h.engine.start_drain(h.now);
    h.feed(
        &with_call_id(
            leg_a_invite("1002", "2002", "z9hG4bKlate", SDP_A),
            "late@10.9.9.9",
        ),
        phone(),
    );
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [503]);
    assert!(methods(&sent, trunk()).is_empty());
    assert_eq!(
        h.engine.stats().calls_refused.get("shutting_down"),
        Some(&1)
    );
    assert_eq!(h.control.call(&callid).unwrap().state, CallState::Answered);
    caller_hangs_up(&mut h, &a_tag, 2);
    h.assert_drained_keeping(&[&late.callid]);
}

#[test]
fn past_max_server_transactions_new_requests_are_shed_and_calls_go_on() {
    let mut h = Harness::configured(|c| c.max_server_transactions = 3);
    let (callid, _, a_tag) = bridged_call(&mut h);
    // The call's INVITE transaction still absorbs ACK copies (1 held); two OPTIONS fill it.
    for branch in ["z9hG4bKo1", "z9hG4bKo2"] {
        h.feed(&out_of_dialog("OPTIONS", branch), phone());
        assert_eq!(statuses(&h.sent(), phone()), [200]);
    }
    let held = transactions(&h);
    assert_eq!(held.1, 3);
    h.feed(&out_of_dialog("OPTIONS", "z9hG4bKo3"), phone());
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [503]);
    assert_eq!(header(&sent[0].1, "Retry-After"), Some("5"));
    assert_eq!(transactions(&h), held);
    // The call's own BYE is still taken on.
    caller_hangs_up(&mut h, &a_tag, 2);
    assert_eq!(h.control.call(&callid).unwrap().state, CallState::Ended);
    h.assert_drained();
}
