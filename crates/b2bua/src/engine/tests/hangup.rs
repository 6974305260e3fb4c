//! `POST /api/calls/{callid}/hangup` as the engine carries it out ([`Engine::hang_up_by_api`]).

use super::*;
use crate::engine::ApiHangup;

fn ended(outcome: ApiHangup) -> crate::registry::CallRecord {
    match outcome {
        ApiHangup::Ended(record) => *record,
        other => panic!("expected Ended, got {other:?}"),
    }
}

#[test]
fn a_bridged_call_hung_up_by_the_api_gets_bye_on_both_legs() {
    let mut h = Harness::new();
    let (callid, _, _) = bridged_call(&mut h);
    let record = ended(h.engine.hang_up_by_api(h.now, &callid));
    assert_eq!(record.state, CallState::Ended);
    assert_eq!(record.ended_by, Some(Party::Api));
    assert_eq!(record.end_cause, Some(EndCause::Hangup));
    let sent = h.sent();
    assert_eq!(methods(&sent, phone()), ["BYE"]);
    assert_eq!(methods(&sent, trunk()), ["BYE"]);
    // Asked again: it has ended.
    assert!(matches!(
        h.engine.hang_up_by_api(h.now, &callid),
        ApiHangup::NotLive(_)
    ));
    answer_byes(&mut h, &sent);
    h.assert_drained();
}

#[test]
fn a_ringing_call_hung_up_by_the_api_cancels_leg_b_and_answers_leg_a() {
    let mut h = Harness::new();
    let (callid, b_invite) = start_call(&mut h, SDP_A);
    h.feed(&answer(&b_invite, 180, "btag", ""), trunk());
    h.sent();
    let record = ended(h.engine.hang_up_by_api(h.now, &callid));
    assert_eq!(record.ended_by, Some(Party::Api));
    assert_eq!(record.leg_a_code, Some(480));
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [480]);
    assert_eq!(methods(&sent, trunk()), ["CANCEL"]);
    let b_cancel = find_request(&sent, "CANCEL");
    h.feed(&answer(&b_cancel, 200, "btag", ""), trunk());
    h.feed(&answer(&b_invite, 487, "btag", ""), trunk());
    assert_eq!(methods(&h.sent(), trunk()), ["ACK"]);
    // The phone ACKs our 480.
    let a_tag = our_a_tag(&sent);
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 1, "z9hG4bKa1", ""),
        phone(),
    );
    let record = h.control.call(&callid).unwrap();
    assert_eq!(
        record.ended_by,
        Some(Party::Api),
        "the record keeps who ended it"
    );
    h.assert_drained();
}

#[test]
fn a_call_still_waiting_for_its_phone_loses_its_intent() {
    let mut h = Harness::new();
    let intent = h.control.make_call(h.now, "1001", "2001", "3001").unwrap();
    let record = ended(h.engine.hang_up_by_api(h.now, &intent.callid));
    assert_eq!(record.end_cause, Some(EndCause::IntentCancelled));
    assert_eq!(record.ended_by, Some(Party::Api));
    assert!(h.control.intents().is_empty());
    // The phone calls after all: no intent, refused.
    h.feed(&leg_a_invite("1001", "2001", "z9hG4bKlate", SDP_A), phone());
    assert_eq!(statuses(&h.sent(), phone()), [100, 403]);
    h.assert_drained();
}

#[test]
fn unknown_and_ended_calls_are_told_apart() {
    let mut h = Harness::new();
    assert_eq!(
        h.engine.hang_up_by_api(h.now, "12345678901234567890"),
        ApiHangup::Unknown
    );
    let intent = h.control.make_call(h.now, "1001", "2001", "3001").unwrap();
    h.control.cancel_call(h.now, "1001");
    assert!(matches!(
        h.engine.hang_up_by_api(h.now, &intent.callid),
        ApiHangup::NotLive(_)
    ));
    h.assert_drained();
}
