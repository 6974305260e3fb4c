//! Failover between the trunk's targets ([`crate::engine::failover`]).

use super::*;

fn second() -> Peer {
    Peer::udp("127.0.0.2:5090".parse().unwrap())
}

fn with_two_targets() -> Harness {
    let mut h = Harness::new();
    h.engine.set_trunk_targets(vec![trunk(), second()]);
    h
}

fn invite_to(sent: &[(Peer, Message)], to: Peer) -> Request {
    sent.iter()
        .find_map(|(p, m)| match m {
            Message::Request(r) if *p == to && r.method.to_string() == "INVITE" => Some(r.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no INVITE to {to:?} in {sent:?}"))
}

/// The second target answers `first`'s successor; the call bridges and its in-dialog
/// traffic goes to the second target only.
fn second_target_bridges(h: &mut Harness, sent: &[(Peer, Message)], callid: &str) {
    let invite = invite_to(sent, second());
    assert!(
        invite
            .uri
            .to_string()
            .starts_with("sip:3001@127.0.0.1:5080"),
        "the URI names the trunk, not the target"
    );
    h.feed(&answer(&invite, 200, "btag", SDP_B), second());
    let sent = h.sent();
    assert_eq!(methods(&sent, second()), ["ACK"]);
    let a_tag = our_a_tag(&sent);
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 1, "z9hG4bKack", ""),
        phone(),
    );
    assert_eq!(h.control.call(callid).unwrap().state, CallState::Answered);
    h.feed(
        &in_dialog_from_a("BYE", &a_tag, 2, "z9hG4bKbye", ""),
        phone(),
    );
    let sent = h.sent();
    assert_eq!(methods(&sent, second()), ["BYE"]);
    assert!(methods(&sent, trunk()).is_empty());
    h.feed(
        &answer(&find_request(&sent, "BYE"), 200, "btag", ""),
        second(),
    );
    h.assert_drained();
}

#[test]
fn a_503_moves_the_invite_to_the_next_target() {
    let mut h = with_two_targets();
    let (callid, first) = start_call(&mut h, SDP_A);
    h.feed(&answer(&first, 503, "dead", ""), trunk());
    let sent = h.sent();
    assert!(
        statuses(&sent, phone()).is_empty(),
        "leg A hears nothing of it"
    );
    assert_eq!(methods(&sent, trunk()), ["ACK"]);
    second_target_bridges(&mut h, &sent, &callid);
}

#[test]
fn a_timeout_moves_the_invite_to_the_next_target() {
    let mut h = with_two_targets();
    let (callid, _) = start_call(&mut h, SDP_A);
    // Timer B: 64·T1 of retransmissions to the first target, then the second.
    h.advance(Duration::from_secs(33));
    let sent = h.sent();
    assert!(statuses(&sent, phone()).is_empty());
    second_target_bridges(&mut h, &sent, &callid);
}

#[test]
fn a_transport_error_moves_the_invite_to_the_next_target() {
    let mut h = with_two_targets();
    h.control.make_call(h.now, "1001", "2001", "3001").unwrap();
    h.feed(&leg_a_invite("1001", "2001", "z9hG4bKa1", SDP_A), phone());
    let first = std::iter::from_fn(|| h.engine.poll_transmit())
        .find(|t| t.to == trunk())
        .and_then(|t| t.origin)
        .unwrap();
    h.engine.handle_transport_error(h.now, Some(first));
    let sent = h.sent();
    let invite = invite_to(&sent, second());
    assert_eq!(invite.headers.cseq().unwrap().seq, 2);
}

#[test]
fn every_target_failing_ends_the_call_as_before() {
    let mut h = with_two_targets();
    let (callid, first) = start_call(&mut h, SDP_A);
    h.feed(&answer(&first, 503, "dead", ""), trunk());
    let retry = invite_to(&h.sent(), second());
    h.feed(&answer(&retry, 503, "dead2", ""), second());
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [503]);
    assert_eq!(h.control.call(&callid).unwrap().leg_b_code, Some(503));
    h.feed(
        &in_dialog_from_a("ACK", &our_a_tag(&sent), 1, "z9hG4bKa1", ""),
        phone(),
    );
    h.assert_drained();
}

#[test]
fn no_failover_once_the_callee_side_has_answered_anything() {
    let mut h = with_two_targets();
    let (_, first) = start_call(&mut h, SDP_A);
    h.feed(&answer(&first, 180, "ring", ""), trunk());
    h.sent();
    h.feed(&answer(&first, 503, "ring", ""), trunk());
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [503]);
    assert!(methods(&sent, second()).is_empty());
    h.feed(
        &in_dialog_from_a("ACK", &our_a_tag(&sent), 1, "z9hG4bKa1", ""),
        phone(),
    );
    h.assert_drained();
}

#[test]
fn targets_are_bounded_and_an_empty_list_changes_nothing() {
    let mut h = Harness::new();
    h.engine.set_trunk_targets(Vec::new());
    assert_eq!(h.engine.trunk_targets(), [trunk()]);
    let many: Vec<Peer> = (1..100)
        .map(|i| Peer::udp(format!("127.0.1.{i}:5060").parse().unwrap()))
        .collect();
    h.engine.set_trunk_targets(many);
    assert_eq!(
        h.engine.trunk_targets().len(),
        crate::engine::MAX_TRUNK_TARGETS
    );
}
