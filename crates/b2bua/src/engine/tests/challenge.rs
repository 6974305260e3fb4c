//! The trunk's 401/407 challenges to leg B's requests ([`crate::engine::challenge`]).

use super::*;
use crate::auth::Credentials;
use sip_core::Method;

fn with_credentials() -> Harness {
    Harness::configured(|c| {
        c.trunk_credentials = Some(Credentials {
            username: "2001".into(),
            password: "secret".into(),
        })
    })
}

/// `request`'s `status` response carrying a digest challenge.
fn challenge(request: &Request, status: u16, nonce: &str, stale: bool) -> Message {
    let Message::Response(mut response) = answer(request, status, "ktag", "") else {
        unreachable!()
    };
    let name = if status == 401 {
        "WWW-Authenticate"
    } else {
        "Proxy-Authenticate"
    };
    let stale = if stale { ", stale=true" } else { "" };
    response.headers.push(
        HeaderName::parse(name),
        format!("Digest realm=\"carrier\", nonce=\"{nonce}\", qop=\"auth\", algorithm=MD5{stale}"),
    );
    Message::Response(response)
}

fn credentials_of(request: &Request, header: &str) -> String {
    request
        .headers
        .get(&HeaderName::parse(header))
        .unwrap_or_else(|| panic!("no {header} in {request:?}"))
        .to_owned()
}

fn branch_of(request: &Request) -> String {
    request
        .headers
        .top_via()
        .unwrap()
        .branch()
        .unwrap()
        .to_owned()
}

fn from_tag(request: &Request) -> String {
    request.headers.from().unwrap().tag().unwrap().to_owned()
}

#[test]
fn a_challenged_invite_is_sent_again_once_with_credentials_and_bridges() {
    let mut h = with_credentials();
    let (callid, first) = start_call(&mut h, SDP_A);
    h.feed(&challenge(&first, 407, "n1", false), trunk());
    let sent = h.sent();
    // The 407 is ACKed by its transaction; the INVITE goes again, and leg A hears nothing.
    assert_eq!(methods(&sent, trunk()), ["ACK", "INVITE"]);
    assert!(statuses(&sent, phone()).is_empty());
    let second = find_request(&sent, "INVITE");
    assert_eq!(second.headers.call_id(), first.headers.call_id());
    assert_eq!(from_tag(&second), from_tag(&first));
    assert_eq!(second.headers.cseq().unwrap().seq, 2);
    assert_ne!(branch_of(&second), branch_of(&first));
    assert_eq!(second.body, first.body, "the same offer");
    let value = credentials_of(&second, "Proxy-Authorization");
    assert!(value.contains("nonce=\"n1\"") && value.contains("username=\"2001\""));
    // The answer to the second INVITE bridges the call.
    h.feed(&answer(&second, 200, "btag", SDP_B), trunk());
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [200]);
    let ack = find_request(&sent, "ACK");
    assert_eq!(
        ack.headers.cseq().unwrap().seq,
        2,
        "the ACK of the INVITE answered"
    );
    let a_tag = our_a_tag(&sent);
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 1, "z9hG4bKack", ""),
        phone(),
    );
    assert_eq!(h.control.call(&callid).unwrap().state, CallState::Answered);
    // The caller hangs up; the BYE to leg B follows the dialog's CSeq.
    h.feed(
        &in_dialog_from_a("BYE", &a_tag, 2, "z9hG4bKbye", ""),
        phone(),
    );
    let sent = h.sent();
    let bye = find_request(&sent, "BYE");
    assert_eq!(bye.headers.cseq().unwrap().seq, 3);
    h.feed(&answer(&bye, 200, "btag", ""), trunk());
    h.assert_drained();
}

#[test]
fn credentials_refused_fail_leg_b_with_403_and_no_retry_loop() {
    let mut h = with_credentials();
    let (callid, first) = start_call(&mut h, SDP_A);
    h.feed(&challenge(&first, 407, "n1", false), trunk());
    let second = find_request(&h.sent(), "INVITE");
    // Challenged again with a fresh nonce and no stale flag: the password is wrong.
    h.feed(&challenge(&second, 407, "n2", false), trunk());
    let sent = h.sent();
    assert_eq!(methods(&sent, trunk()), ["ACK"], "no third INVITE");
    assert_eq!(statuses(&sent, phone()), [403]);
    let Some((_, Message::Response(refusal))) = sent.iter().find(|(p, _)| *p == phone()) else {
        panic!("no answer to leg A")
    };
    assert!(refusal
        .headers
        .get(&HeaderName::parse("Proxy-Authenticate"))
        .is_none());
    let reason = refusal.headers.get(&HeaderName::Reason).unwrap();
    assert!(reason.contains("cause=407"), "{reason}");
    let record = h.control.call(&callid).unwrap();
    assert_eq!(record.end_cause, Some(EndCause::TrunkAuthFailed));
    assert_eq!(record.leg_b_code, Some(407));
    assert_eq!(record.leg_a_code, Some(403));
    let a_tag = our_a_tag(&sent);
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 1, "z9hG4bKa1", ""),
        phone(),
    );
    h.assert_drained();
}

#[test]
fn a_challenge_without_credentials_configured_fails_at_once() {
    let mut h = Harness::new();
    let (callid, first) = start_call(&mut h, SDP_A);
    h.feed(&challenge(&first, 401, "n1", false), trunk());
    let sent = h.sent();
    assert_eq!(methods(&sent, trunk()), ["ACK"]);
    assert_eq!(statuses(&sent, phone()), [403]);
    assert_eq!(
        h.control.call(&callid).unwrap().end_cause,
        Some(EndCause::TrunkAuthFailed)
    );
    h.feed(
        &in_dialog_from_a("ACK", &our_a_tag(&sent), 1, "z9hG4bKa1", ""),
        phone(),
    );
    h.assert_drained();
}

#[test]
fn a_stale_nonce_is_answered_again_up_to_the_bound() {
    let mut h = with_credentials();
    let (_, mut invite) = start_call(&mut h, SDP_A);
    h.feed(&challenge(&invite, 401, "n0", false), trunk());
    invite = find_request(&h.sent(), "INVITE");
    for round in 1..crate::auth::MAX_ROUNDS {
        let nonce = format!("stale{round}");
        h.feed(&challenge(&invite, 401, &nonce, true), trunk());
        invite = find_request(&h.sent(), "INVITE");
        assert!(credentials_of(&invite, "Authorization").contains(&nonce));
        assert_eq!(invite.headers.cseq().unwrap().seq, u32::from(round) + 2);
    }
    // The trunk keeps saying "stale": the bound ends it.
    h.feed(&challenge(&invite, 401, "again", true), trunk());
    let sent = h.sent();
    assert_eq!(methods(&sent, trunk()), ["ACK"]);
    assert_eq!(statuses(&sent, phone()), [403]);
    h.feed(
        &in_dialog_from_a("ACK", &our_a_tag(&sent), 1, "z9hG4bKa1", ""),
        phone(),
    );
    h.assert_drained();
}

#[test]
fn a_cancel_crossing_the_challenge_is_not_followed_by_a_new_invite() {
    let mut h = with_credentials();
    let (_, first) = start_call(&mut h, SDP_A);
    h.feed(&answer(&first, 180, "ktag", ""), trunk());
    h.sent();
    // The caller gives up; the challenge crosses the CANCEL.
    h.feed(
        &parse(
            "CANCEL sip:2001@127.0.0.1:5060 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKa1;rport=5062\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:1001@127.0.0.1>;tag=atag\r\n\
             To: <sip:2001@127.0.0.1>\r\n\
             Call-ID: leg-a-secret@10.9.9.9\r\n\
             CSeq: 1 CANCEL\r\n\
             Content-Length: 0\r\n\r\n",
        ),
        phone(),
    );
    let sent = h.sent();
    let cancel = find_request(&sent, "CANCEL");
    h.feed(&answer(&cancel, 200, "ktag", ""), trunk());
    h.feed(&challenge(&first, 407, "n1", false), trunk());
    let sent = h.sent();
    assert_eq!(
        methods(&sent, trunk()),
        ["ACK"],
        "no INVITE after the CANCEL"
    );
    h.feed(
        &in_dialog_from_a("ACK", "whatever", 1, "z9hG4bKa1", ""),
        phone(),
    );
    h.assert_drained();
}

#[test]
fn a_challenged_bye_and_relayed_reinvite_go_again_with_credentials() {
    let mut h = with_credentials();
    let (callid, b_invite, a_tag) = bridged_call(&mut h);
    // A re-INVITE from the caller, relayed to leg B, is challenged.
    h.feed(
        &in_dialog_from_a("INVITE", &a_tag, 2, "z9hG4bKre", SDP_A),
        phone(),
    );
    let sent = h.sent();
    let relayed = find_request(&sent, "INVITE");
    let first_seq = relayed.headers.cseq().unwrap().seq;
    h.feed(&challenge(&relayed, 407, "r1", false), trunk());
    let sent = h.sent();
    assert_eq!(methods(&sent, trunk()), ["ACK", "INVITE"]);
    let again = find_request(&sent, "INVITE");
    assert_eq!(again.headers.cseq().unwrap().seq, first_seq + 1);
    assert!(credentials_of(&again, "Proxy-Authorization").contains("r1"));
    assert_eq!(again.body, relayed.body);
    // Its answer reaches the caller, and its ACK carries the new CSeq.
    h.feed(&answer(&again, 200, "btag", SDP_B), trunk());
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [200]);
    let ack = find_request(&sent, "ACK");
    assert_eq!(ack.headers.cseq().unwrap().seq, first_seq + 1);
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 2, "z9hG4bKreack", ""),
        phone(),
    );
    // The API hangs up: the BYE to leg B is challenged and sent again.
    h.engine.hang_up_by_api(h.now, &callid);
    let sent = h.sent();
    let bye = sent
        .iter()
        .find_map(|(p, m)| match m {
            Message::Request(r) if *p == trunk() && r.method == Method::Bye => Some(r.clone()),
            _ => None,
        })
        .unwrap();
    answer_byes_to_phone(&mut h, &sent);
    h.feed(&challenge(&bye, 401, "b1", false), trunk());
    let sent = h.sent();
    let bye_again = find_request(&sent, "BYE");
    assert_eq!(
        bye_again.headers.cseq().unwrap().seq,
        bye.headers.cseq().unwrap().seq + 1
    );
    assert!(credentials_of(&bye_again, "Authorization").contains("b1"));
    h.feed(&answer(&bye_again, 200, "btag", ""), trunk());
    let _ = b_invite;
    h.assert_drained();
}

/// Answers 200 to the BYEs in `sent` that went to the caller.
fn answer_byes_to_phone(h: &mut Harness, sent: &[(Peer, Message)]) {
    for (to, message) in sent {
        if let Message::Request(r) = message {
            if *to == phone() && r.method == Method::Bye {
                h.feed(&answer(r, 200, "atag", ""), *to);
            }
        }
    }
}
