//! Session timers, RFC 4028 ([`crate::engine::session`]).

use super::*;

const SDP_HOLD: &str = "v=0\r\no=a 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=sendonly\r\n";

/// The callee's 200 with `Session-Expires: se` (and `Allow` when given).
fn answer_with_timer(b_invite: &Request, se: &str, allow: Option<&str>) -> Message {
    let Message::Response(mut ok) = answer(b_invite, 200, "btag", SDP_B) else {
        unreachable!()
    };
    ok.headers.push(HeaderName::SessionExpires, se);
    if let Some(allow) = allow {
        ok.headers.push(HeaderName::Allow, allow);
    }
    Message::Response(ok)
}

/// A call bridged with the callee's 200 carrying `se`; returns callid, leg B's INVITE and
/// our tag on leg A.
fn bridged_with(h: &mut Harness, se: &str, allow: Option<&str>) -> (String, Request, String) {
    let (callid, b_invite) = start_call(h, SDP_A);
    assert_eq!(
        b_invite.headers.get(&HeaderName::SessionExpires),
        Some("1800"),
        "leg B asks for a session timer"
    );
    assert_eq!(
        b_invite.headers.get(&HeaderName::parse("Min-SE")),
        Some("90")
    );
    h.feed(&answer_with_timer(&b_invite, se, allow), trunk());
    let sent = h.sent();
    let a_tag = our_a_tag(&sent);
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 1, "z9hG4bKack", ""),
        phone(),
    );
    (callid, b_invite, a_tag)
}

fn request_to(sent: &[(Peer, Message)], to: Peer, method: &str) -> Option<Request> {
    sent.iter().find_map(|(p, m)| match m {
        Message::Request(r) if *p == to && r.method.to_string() == method => Some(r.clone()),
        _ => None,
    })
}

#[test]
fn callbridge_refreshes_leg_b_with_update_at_half_the_interval() {
    let mut h = Harness::new();
    let (callid, _, a_tag) = bridged_with(
        &mut h,
        "120;refresher=uac",
        Some("INVITE, ACK, BYE, UPDATE"),
    );
    for round in 0..3 {
        h.advance(Duration::from_secs(59));
        assert!(
            h.sent().is_empty(),
            "round {round}: not before half the interval"
        );
        h.advance(Duration::from_secs(1));
        let sent = h.sent();
        let update = request_to(&sent, trunk(), "UPDATE").expect("a refresh UPDATE");
        assert_eq!(
            update.headers.get(&HeaderName::SessionExpires),
            Some("120;refresher=uac")
        );
        assert!(update.body.is_empty());
        assert!(methods(&sent, phone()).is_empty(), "leg A has no timer");
        h.feed(&answer(&update, 200, "btag", ""), trunk());
    }
    assert_eq!(h.control.call(&callid).unwrap().state, CallState::Answered);
    caller_hangs_up(&mut h, &a_tag, 2);
    h.assert_drained();
}

#[test]
fn a_refused_refresh_ends_the_call_on_both_legs() {
    let mut h = Harness::new();
    let (callid, _, _) = bridged_with(&mut h, "120", Some("UPDATE"));
    h.advance(Duration::from_secs(60));
    let update = request_to(&h.sent(), trunk(), "UPDATE").unwrap();
    h.feed(&answer(&update, 481, "btag", ""), trunk());
    let sent = h.sent();
    assert_eq!(methods(&sent, phone()), ["BYE"]);
    assert_eq!(methods(&sent, trunk()), ["BYE"]);
    let record = h.control.call(&callid).unwrap();
    assert_eq!(record.end_cause, Some(EndCause::SessionExpired));
    assert_eq!(record.ended_by, Some(Party::System));
    answer_byes(&mut h, &sent);
    h.assert_drained();
}

#[test]
fn an_unanswered_refresh_reinvite_ends_the_call() {
    let mut h = Harness::new();
    // No UPDATE in the callee's Allow: the refresh is a re-INVITE with the SDP last sent.
    let (callid, b_invite, _) = bridged_with(&mut h, "90;refresher=uac", None);
    h.advance(Duration::from_secs(45));
    let reinvite = request_to(&h.sent(), trunk(), "INVITE").expect("a refresh re-INVITE");
    assert_eq!(reinvite.body, b_invite.body, "the same offer again");
    h.advance(Duration::from_secs(33));
    let sent = h.sent();
    assert!(methods(&sent, trunk()).contains(&"BYE".to_owned()));
    assert_eq!(
        h.control.call(&callid).unwrap().end_cause,
        Some(EndCause::SessionExpired)
    );
    answer_byes(&mut h, &sent);
    h.assert_drained();
}

#[test]
fn a_callee_that_stops_refreshing_is_hung_up_and_refreshes_cross_the_call() {
    let mut h = Harness::new();
    let (callid, b_invite, _) = bridged_with(&mut h, "120;refresher=uas", None);
    // The callee refreshes at 50 s with an UPDATE: relayed to the caller, whose 200 goes
    // back with leg B's Session-Expires.
    h.advance(Duration::from_secs(50));
    assert!(h.sent().is_empty());
    h.feed(
        &in_dialog_from_b(&b_invite, "btag", "UPDATE", 2, "z9hG4bKupd", ""),
        trunk(),
    );
    let relayed = request_to(&h.sent(), phone(), "UPDATE").unwrap();
    h.feed(&answer(&relayed, 200, "atag", ""), phone());
    let sent = h.sent();
    let Some((_, Message::Response(ok))) = sent.iter().find(|(p, _)| *p == trunk()) else {
        panic!("no answer to the callee's UPDATE");
    };
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.headers.get(&HeaderName::SessionExpires),
        Some("120;refresher=uac")
    );
    assert_eq!(ok.headers.get(&HeaderName::Require), Some("timer"));
    // 88 s after that refresh (120 less a third), with no other: BYE on both legs.
    h.advance(Duration::from_secs(87));
    assert!(h.sent().is_empty());
    h.advance(Duration::from_secs(1));
    let sent = h.sent();
    assert_eq!(methods(&sent, phone()), ["BYE"]);
    assert_eq!(methods(&sent, trunk()), ["BYE"]);
    assert_eq!(
        h.control.call(&callid).unwrap().end_cause,
        Some(EndCause::SessionExpired)
    );
    answer_byes(&mut h, &sent);
    h.assert_drained();
}

#[test]
fn leg_a_negotiation_422_and_the_callers_own_timer() {
    let mut h = Harness::new();
    let intent = h.control.make_call(h.now, "1001", "2001", "3001").unwrap();
    let Message::Request(mut brief) = leg_a_invite("1001", "2001", "z9hG4bKa1", SDP_A) else {
        unreachable!()
    };
    brief.headers.push(HeaderName::SessionExpires, "60");
    brief.headers.push(HeaderName::Supported, "timer");
    h.feed(&Message::Request(brief.clone()), phone());
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [100, 422]);
    let Some((_, Message::Response(too_small))) = sent.iter().rev().find(|(p, _)| *p == phone())
    else {
        unreachable!()
    };
    assert_eq!(
        too_small.headers.get(&HeaderName::parse("Min-SE")),
        Some("90")
    );
    assert!(methods(&sent, trunk()).is_empty());
    h.feed(
        &in_dialog_from_a("ACK", &our_a_tag(&sent), 1, "z9hG4bKa1", ""),
        phone(),
    );
    // The caller tries again with 300 s: its intent is still there, and its 200 says the
    // caller refreshes.
    brief.headers.set(HeaderName::SessionExpires, "300");
    brief.headers.set(HeaderName::CSeq, "2 INVITE");
    let Some(via) = brief.headers.get_mut(&HeaderName::Via) else {
        unreachable!()
    };
    *via = via.replace("z9hG4bKa1", "z9hG4bKa2");
    h.feed(&Message::Request(brief), phone());
    let b_invite = find_request(&h.sent(), "INVITE");
    h.feed(&answer(&b_invite, 200, "btag", SDP_B), trunk());
    let sent = h.sent();
    let Some((_, Message::Response(ok))) = sent.iter().find(|(p, _)| *p == phone()) else {
        unreachable!()
    };
    assert_eq!(
        ok.headers.get(&HeaderName::SessionExpires),
        Some("300;refresher=uac")
    );
    assert_eq!(ok.headers.get(&HeaderName::Require), Some("timer"));
    let a_tag = our_a_tag(&sent);
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 2, "z9hG4bKack", ""),
        phone(),
    );
    // The caller never refreshes: 268 s later the call ends.
    h.advance(Duration::from_secs(268));
    let sent = h.sent();
    assert_eq!(methods(&sent, trunk()), ["BYE"]);
    assert_eq!(
        h.control.call(&intent.callid).unwrap().end_cause,
        Some(EndCause::SessionExpired)
    );
    answer_byes(&mut h, &sent);
    h.assert_drained();
}

#[test]
fn a_422_from_the_callee_is_answered_with_its_min_se() {
    let mut h = Harness::new();
    let (_, first) = start_call(&mut h, SDP_A);
    let Message::Response(mut too_small) = answer(&first, 422, "btag", "") else {
        unreachable!()
    };
    too_small.headers.push(HeaderName::parse("Min-SE"), "3600");
    h.feed(&Message::Response(too_small), trunk());
    let sent = h.sent();
    assert!(statuses(&sent, phone()).is_empty());
    let again = request_to(&sent, trunk(), "INVITE").unwrap();
    assert_eq!(again.headers.get(&HeaderName::SessionExpires), Some("3600"));
    assert_eq!(again.headers.cseq().unwrap().seq, 2);
    callee_refuses(&mut h, &again, "z9hG4bKa1");
    h.assert_drained();
}

#[test]
fn a_held_call_outlives_the_media_inactivity_timer() {
    let mut h = Harness::configured(|c| c.media.inactivity = Duration::from_secs(10));
    let (callid, _, a_tag) = bridged_with(&mut h, "1800;refresher=uac", Some("UPDATE"));
    // The caller puts the call on hold.
    h.feed(
        &in_dialog_from_a("INVITE", &a_tag, 2, "z9hG4bKhold", SDP_HOLD),
        phone(),
    );
    let relayed = request_to(&h.sent(), trunk(), "INVITE").unwrap();
    h.feed(&answer(&relayed, 200, "btag", SDP_B), trunk());
    h.sent();
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 2, "z9hG4bKholdack", ""),
        phone(),
    );
    // No media for far longer than the inactivity timeout: the call stays up.
    for _ in 0..5 {
        h.advance(Duration::from_secs(10));
        report(&mut h, StreamCounters::default());
        h.advance(Duration::from_millis(100));
        assert!(methods(&h.sent(), phone()).is_empty());
    }
    assert_eq!(h.control.call(&callid).unwrap().state, CallState::Answered);
    caller_hangs_up(&mut h, &a_tag, 3);
    h.assert_drained();
}
