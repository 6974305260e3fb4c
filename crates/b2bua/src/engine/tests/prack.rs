//! Reliable provisionals, RFC 3262 ([`crate::engine::prack`]).

use super::*;

/// Leg A's INVITE, with `header: value` added.
fn invite_with(header: &str, value: &str) -> Message {
    let Message::Request(mut invite) = leg_a_invite("1001", "2001", "z9hG4bKa1", SDP_A) else {
        unreachable!()
    };
    invite.headers.push(HeaderName::parse(header), value);
    Message::Request(invite)
}

fn start(h: &mut Harness, invite: Message) -> Request {
    h.control.make_call(h.now, "1001", "2001", "3001").unwrap();
    h.feed(&invite, phone());
    find_request(&h.sent(), "INVITE")
}

/// Leg B's reliable provisional `status` with RSeq `rseq` (and SDP when given).
fn reliable(b_invite: &Request, status: u16, rseq: u32, body: &str) -> Message {
    let Message::Response(mut response) = answer(b_invite, status, "btag", body) else {
        unreachable!()
    };
    response.headers.push(HeaderName::Require, "100rel");
    response
        .headers
        .push(HeaderName::parse("RSeq"), rseq.to_string());
    Message::Response(response)
}

fn to_phone(sent: &[(Peer, Message)]) -> Vec<Response> {
    sent.iter()
        .filter_map(|(p, m)| match m {
            Message::Response(r) if *p == phone() => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response.headers.get(&HeaderName::parse(name))
}

/// The caller's PRACK for RSeq `rseq` of its INVITE (CSeq 1).
fn prack_from_a(a_tag: &str, rseq: &str, cseq: u32) -> Message {
    let Message::Request(mut prack) =
        in_dialog_from_a("PRACK", a_tag, cseq, &format!("z9hG4bKpr{cseq}"), "")
    else {
        unreachable!()
    };
    prack
        .headers
        .push(HeaderName::parse("RAck"), format!("{rseq} 1 INVITE"));
    Message::Request(prack)
}

#[test]
fn leg_b_invite_offers_100rel() {
    let mut h = Harness::new();
    let (_, b_invite) = start_call(&mut h, SDP_A);
    assert_eq!(
        b_invite.headers.get(&HeaderName::Supported),
        Some("100rel, timer")
    );
    callee_refuses(&mut h, &b_invite, "z9hG4bKa1");
    h.assert_drained();
}

#[test]
fn reliable_183_is_pracked_relayed_reliably_and_retransmitted_until_pracked() {
    let mut h = Harness::new();
    let b_invite = start(&mut h, invite_with("Supported", "100rel, timer"));
    h.feed(&reliable(&b_invite, 183, 7, SDP_B), trunk());
    let sent = h.sent();
    let prack = find_request(&sent, "PRACK");
    assert_eq!(
        prack.headers.get(&HeaderName::parse("RAck")),
        Some("7 1 INVITE")
    );
    assert_eq!(prack.headers.cseq().unwrap().seq, 2);
    let early = to_phone(&sent);
    assert_eq!(early.len(), 1);
    assert_eq!(early[0].status, 183);
    assert_eq!(header(&early[0], "Require"), Some("100rel"));
    let rseq = header(&early[0], "RSeq").unwrap().to_owned();
    assert_eq!(towards(&early[0].body), "a");
    // The trunk retransmits its 183 (our PRACK crossed it): no second PRACK, no relay.
    h.feed(&answer(&prack, 200, "btag", ""), trunk());
    h.feed(&reliable(&b_invite, 183, 7, SDP_B), trunk());
    assert!(h.sent().is_empty());
    // No PRACK from the caller yet: the reliable 183 goes again at T1, then 2·T1.
    h.advance(Duration::from_millis(500));
    let again = to_phone(&h.sent());
    assert_eq!(again.len(), 1);
    assert_eq!(header(&again[0], "RSeq"), Some(rseq.as_str()));
    h.advance(Duration::from_millis(999));
    assert!(h.sent().is_empty(), "the interval doubled");
    h.advance(Duration::from_millis(1));
    assert_eq!(to_phone(&h.sent()).len(), 1);
    let a_tag = early[0].headers.to().unwrap().tag().unwrap().to_owned();
    // A PRACK for another RSeq: 481; the right one: 200, and the retransmissions stop.
    h.feed(&prack_from_a(&a_tag, "999", 2), phone());
    assert_eq!(statuses(&h.sent(), phone()), [481]);
    h.feed(&prack_from_a(&a_tag, &rseq, 3), phone());
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [200]);
    assert!(methods(&sent, trunk()).is_empty(), "PRACKs are not relayed");
    h.advance(Duration::from_secs(10));
    assert!(to_phone(&h.sent()).is_empty());
    // The answer bridges as usual.
    h.feed(&answer(&b_invite, 200, "btag", SDP_B), trunk());
    assert_eq!(statuses(&h.sent(), phone()), [200]);
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 1, "z9hG4bKack", ""),
        phone(),
    );
    caller_hangs_up(&mut h, &a_tag, 4);
    h.assert_drained();
}

#[test]
fn a_caller_without_100rel_gets_it_unreliably() {
    let mut h = Harness::new();
    let (_, b_invite) = start_call(&mut h, SDP_A);
    h.feed(&reliable(&b_invite, 180, 1, ""), trunk());
    let sent = h.sent();
    find_request(&sent, "PRACK");
    let ringing = to_phone(&sent);
    assert_eq!(ringing[0].status, 180);
    assert_eq!(header(&ringing[0], "Require"), None);
    assert_eq!(header(&ringing[0], "RSeq"), None);
    h.advance(Duration::from_secs(2));
    assert!(to_phone(&h.sent()).is_empty(), "not retransmitted");
    callee_refuses(&mut h, &b_invite, "z9hG4bKa1");
    h.assert_drained();
}

#[test]
fn the_answer_waits_for_the_prack_of_a_reliable_183_with_sdp() {
    let mut h = Harness::new();
    let b_invite = start(&mut h, invite_with("Supported", "100rel"));
    h.feed(&reliable(&b_invite, 183, 1, SDP_B), trunk());
    let early = to_phone(&h.sent());
    let rseq = header(&early[0], "RSeq").unwrap().to_owned();
    let a_tag = early[0].headers.to().unwrap().tag().unwrap().to_owned();
    h.feed(&answer(&b_invite, 200, "btag", SDP_B), trunk());
    let sent = h.sent();
    assert_eq!(methods(&sent, trunk()), ["ACK"]);
    assert!(to_phone(&sent).is_empty(), "the 200 waits for the PRACK");
    h.feed(&prack_from_a(&a_tag, &rseq, 2), phone());
    assert_eq!(statuses(&h.sent(), phone()), [200, 200]);
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 1, "z9hG4bKack", ""),
        phone(),
    );
    caller_hangs_up(&mut h, &a_tag, 3);
    h.assert_drained();
}

#[test]
fn no_prack_within_64_t1_fails_the_call_with_504() {
    let mut h = Harness::new();
    let b_invite = start(&mut h, invite_with("Require", "100rel"));
    h.feed(&answer(&b_invite, 180, "btag", ""), trunk());
    let ringing = to_phone(&h.sent());
    assert_eq!(
        header(&ringing[0], "Require"),
        Some("100rel"),
        "leg A requires it: every provisional is reliable"
    );
    h.advance(Duration::from_secs(33));
    let sent = h.sent();
    assert!(statuses(&sent, phone()).contains(&504));
    assert!(methods(&sent, trunk()).contains(&"CANCEL".to_owned()));
    let cancel = find_request(&sent, "CANCEL");
    h.feed(&answer(&cancel, 200, "btag", ""), trunk());
    h.feed(&answer(&b_invite, 487, "btag", ""), trunk());
    let a_tag = ringing[0].headers.to().unwrap().tag().unwrap().to_owned();
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 1, "z9hG4bKa1", ""),
        phone(),
    );
    h.assert_drained();
}

#[test]
fn an_unknown_required_extension_gets_420_and_keeps_the_intent() {
    let mut h = Harness::new();
    let intent = h.control.make_call(h.now, "1001", "2001", "3001").unwrap();
    h.feed(&invite_with("Require", "100rel, fancy-ext"), phone());
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [100, 420]);
    let refusal = to_phone(&sent).pop().unwrap();
    assert_eq!(header(&refusal, "Unsupported"), Some("fancy-ext"));
    assert!(methods(&sent, trunk()).is_empty());
    assert_eq!(
        h.engine.stats().calls_refused.get("unsupported_extension"),
        Some(&1)
    );
    h.feed(
        &in_dialog_from_a("ACK", &our_a_tag(&sent), 1, "z9hG4bKa1", ""),
        phone(),
    );
    h.assert_drained_keeping(&[&intent.callid]);
}
