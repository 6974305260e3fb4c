//! A 3xx from the trunk ([`crate::engine::redirect`]): followed through the trunk only, never
//! relayed to leg A with its Contact.

use super::*;

fn redirect(request: &Request, status: u16, contacts: &[&str]) -> Message {
    let mut response = Response::to_request(request, status, None);
    let to = response.headers.to().unwrap().with_tag("rtag");
    response.headers.set(HeaderName::To, to.to_string());
    for contact in contacts {
        response.headers.push(HeaderName::Contact, *contact);
    }
    Message::Response(response)
}

#[test]
fn a_302_is_followed_through_the_trunk_and_the_call_bridges() {
    let mut h = Harness::new();
    let (callid, first) = start_call(&mut h, SDP_A);
    h.feed(
        &redirect(
            &first,
            302,
            &[
                "<sip:3009@elsewhere.example>;q=0.5",
                "<sip:+3002@other.example:5099>;q=0.9",
            ],
        ),
        trunk(),
    );
    let sent = h.sent();
    assert_eq!(methods(&sent, trunk()), ["ACK", "INVITE"]);
    assert!(
        statuses(&sent, phone()).is_empty(),
        "leg A hears nothing of it"
    );
    let second = find_request(&sent, "INVITE");
    // To the trunk, never to the host the Contact named.
    assert_eq!(second.uri.to_string(), "sip:+3002@127.0.0.1:5080");
    assert_eq!(second.headers.call_id(), first.headers.call_id());
    assert_eq!(second.headers.cseq().unwrap().seq, 2);
    h.feed(&answer(&second, 200, "btag", SDP_B), trunk());
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [200]);
    let Some((_, Message::Response(ok))) = sent.iter().find(|(p, _)| *p == phone()) else {
        unreachable!()
    };
    let contact = ok.headers.get(&HeaderName::Contact).unwrap();
    assert!(!contact.contains("other.example"), "{contact}");
    let a_tag = our_a_tag(&sent);
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 1, "z9hG4bKack", ""),
        phone(),
    );
    assert_eq!(h.control.call(&callid).unwrap().state, CallState::Answered);
    caller_hangs_up(&mut h, &a_tag, 2);
    h.assert_drained();
}

#[test]
fn unfollowable_redirects_give_leg_a_480_and_no_contact() {
    for contacts in [
        vec![],
        vec!["<sip:alice@attacker.example>"],
        vec!["<sip:3001;x=y@h>"],
        vec!["<sip:12345678901234567890123456789012345@h>"],
        vec!["<sip:3001@127.0.0.1:5080>"],
    ] {
        let mut h = Harness::new();
        let (callid, first) = start_call(&mut h, SDP_A);
        h.feed(&redirect(&first, 301, &contacts), trunk());
        let sent = h.sent();
        assert_eq!(methods(&sent, trunk()), ["ACK"], "{contacts:?}");
        assert_eq!(statuses(&sent, phone()), [480], "{contacts:?}");
        let Some((_, Message::Response(refusal))) = sent.iter().find(|(p, _)| *p == phone()) else {
            unreachable!()
        };
        assert!(refusal
            .headers
            .get(&HeaderName::Contact)
            .is_none_or(|c| !c.contains("attacker")));
        assert!(refusal
            .headers
            .get(&HeaderName::Reason)
            .unwrap()
            .contains("cause=301"));
        let record = h.control.call(&callid).unwrap();
        assert_eq!(record.leg_b_code, Some(301));
        assert_eq!(record.leg_a_code, Some(480));
        h.feed(
            &in_dialog_from_a("ACK", &our_a_tag(&sent), 1, "z9hG4bKa1", ""),
            phone(),
        );
        h.assert_drained();
    }
}

#[test]
fn redirect_chains_are_bounded_and_loops_refused() {
    let mut h = Harness::new();
    let (_, mut invite) = start_call(&mut h, SDP_A);
    for n in 0..super::super::redirect::MAX_REDIRECTS {
        let target = format!("<sip:40{n}@x>");
        h.feed(&redirect(&invite, 302, &[&target]), trunk());
        invite = find_request(&h.sent(), "INVITE");
    }
    h.feed(&redirect(&invite, 302, &["<sip:4999@x>"]), trunk());
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [480], "the bound ends it");
    h.feed(
        &in_dialog_from_a("ACK", &our_a_tag(&sent), 1, "z9hG4bKa1", ""),
        phone(),
    );
    h.assert_drained();
    // Back to a number already tried: a loop.
    let mut h = Harness::new();
    let (_, first) = start_call(&mut h, SDP_A);
    h.feed(&redirect(&first, 302, &["<sip:3002@x>"]), trunk());
    let second = find_request(&h.sent(), "INVITE");
    h.feed(&redirect(&second, 302, &["<sip:3001@x>"]), trunk());
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [480]);
    h.feed(
        &in_dialog_from_a("ACK", &our_a_tag(&sent), 1, "z9hG4bKa1", ""),
        phone(),
    );
    h.assert_drained();
}
