//! INVITEs parked for a claim in a cluster's shared intent table (`engine/claims.rs`): the
//! claim request out, the answer in (bridged, refused, or the table unavailable), the 503 of
//! an overdue claim, a CANCEL while parked, and the record of an intent handed over after
//! the INVITE stopped waiting. The table itself is the driver's (tested against a real Redis
//! in crates/cluster and sip-tests/tests/cluster.rs); here its answers are fed by hand.

use super::*;
use crate::shared_intents::{SharedClaim, SharedError, SharedFuture, SharedIntent, SharedIntents};
use crate::NoIntent;

/// The engine only asks whether a shared table is set; it never calls it (its driver does).
#[derive(Debug)]
struct DriverOnly;

fn not_here<T: Send + 'static>() -> SharedFuture<'static, T> {
    Box::pin(async {
        Err(SharedError::Unavailable(
            "the engine never calls the table".into(),
        ))
    })
}

impl SharedIntents for DriverOnly {
    fn register(
        &self,
        _: SharedIntent,
        _: u64,
        _: usize,
    ) -> SharedFuture<'_, Option<SharedIntent>> {
        not_here()
    }
    fn cancel(&self, _: String) -> SharedFuture<'_, Option<SharedIntent>> {
        not_here()
    }
    fn cancel_callid(&self, _: String) -> SharedFuture<'_, Option<SharedIntent>> {
        not_here()
    }
    fn claim(&self, _: String, _: String) -> SharedFuture<'_, SharedClaim> {
        not_here()
    }
    fn claim_cti(&self, _: String, _: String) -> SharedFuture<'_, SharedClaim> {
        not_here()
    }
    fn get(&self, _: String) -> SharedFuture<'_, Option<SharedIntent>> {
        not_here()
    }
    fn take_expired(&self, _: usize) -> SharedFuture<'_, Vec<SharedIntent>> {
        not_here()
    }
    fn pending(&self) -> SharedFuture<'_, u64> {
        not_here()
    }
}

/// A harness whose control is a cluster node's.
fn clustered() -> Harness {
    let h = Harness::new();
    assert!(h.control.set_shared(Arc::new(DriverOnly), "node-2".into()));
    h
}

/// The intent node 1 registered for 1001 → 2001 → 3001, its `intent.created` sent (seq 1).
fn shared_intent() -> SharedIntent {
    SharedIntent {
        callid: "12345678901234567890".into(),
        telnum: "1001".into(),
        caller: "2001".into(),
        callee: "3001".into(),
        data: Some("order-9".into()),
        notify_url: None,
        created_at: 1_764_650_000_000,
        seq: 1,
        node: "node-1".into(),
    }
}

/// The phone's INVITE, parked: only 100 goes out, and one claim request.
fn parked(h: &mut Harness, branch: &str) -> u64 {
    h.feed(&leg_a_invite("+1001", "2001", branch, SDP_A), phone());
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [100]);
    assert!(
        methods(&sent, trunk()).is_empty(),
        "no leg B before the claim"
    );
    let request = h.engine.poll_claim_request().expect("a claim request");
    assert_eq!(
        (request.calling.as_str(), request.dialled.as_str()),
        ("1001", "2001"),
        "numbers normalised"
    );
    assert!(h.engine.poll_claim_request().is_none());
    assert_eq!(h.engine.parked_claims(), 1);
    assert_eq!(
        h.engine.active_call_count(),
        1,
        "a parked INVITE counts as a call"
    );
    request.token
}

#[test]
fn a_claimed_intent_places_leg_b_and_its_record_goes_on_here() {
    let mut h = clustered();
    let token = parked(&mut h, "z9hG4bKc1");
    h.engine
        .handle_claim(h.now, token, Ok(SharedClaim::Claimed(shared_intent())));
    h.media();
    let sent = h.sent();
    let b_invite = find_request(&sent, "INVITE");
    assert_eq!(b_invite.uri.user(), Some("3001"));
    assert_eq!(b_invite.headers.from().unwrap().uri.user(), Some("2001"));
    let record = h.control.call("12345678901234567890").unwrap();
    assert_eq!(record.state, CallState::Trying);
    assert_eq!(
        record.created_at, 1_764_650_000_000,
        "the intent's own time"
    );
    assert_eq!(record.data.as_deref(), Some("order-9"));
    assert_eq!(h.engine.parked_claims(), 0);
    assert_eq!(h.engine.claim_tokens(), 0);
    callee_refuses(&mut h, &b_invite, "z9hG4bKc1");
    h.assert_drained();
}

#[test]
fn no_intent_is_refused_and_an_unavailable_table_is_503() {
    let mut h = clustered();
    let token = parked(&mut h, "z9hG4bKc2");
    h.engine
        .handle_claim(h.now, token, Ok(SharedClaim::Refused(NoIntent::None)));
    assert_eq!(statuses(&h.sent(), phone()), [403]);
    assert_eq!(h.engine.stats().calls_refused.get("no_intent"), Some(&1));

    let token = parked(&mut h, "z9hG4bKc3");
    h.engine.handle_claim(
        h.now,
        token,
        Err(SharedError::Unavailable("connection refused".into())),
    );
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [503]);
    let refusal = response_of(&sent[0].1);
    assert!(refusal
        .headers
        .get(&HeaderName::parse("Retry-After"))
        .is_some());
    assert_eq!(
        h.engine.stats().calls_refused.get("cluster_unavailable"),
        Some(&1)
    );
    assert_eq!(h.engine.claim_tokens(), 0);
    h.assert_drained();
}

#[test]
fn an_overdue_claim_gets_503_and_a_late_handover_is_recorded_as_ended() {
    let mut h = clustered();
    h.engine.set_claim_timeout(Duration::from_millis(800));
    let token = parked(&mut h, "z9hG4bKc4");
    h.advance(Duration::from_millis(799));
    assert!(statuses(&h.sent(), phone()).is_empty(), "still waiting");
    h.advance(Duration::from_millis(1));
    assert_eq!(statuses(&h.sent(), phone()), [503]);
    assert_eq!(h.engine.parked_claims(), 0);
    assert_eq!(h.engine.active_call_count(), 0);
    // The table answers after all, having handed the intent over: it must not vanish.
    h.engine
        .handle_claim(h.now, token, Ok(SharedClaim::Claimed(shared_intent())));
    assert!(
        methods(&h.sent(), trunk()).is_empty(),
        "no leg B for a refused INVITE"
    );
    let record = h.control.call("12345678901234567890").unwrap();
    assert_eq!(record.state, CallState::Ended);
    assert_eq!(record.end_cause, Some(EndCause::ClusterUnavailable));
    assert_eq!(h.engine.claim_tokens(), 0);
    h.assert_drained();
}

#[test]
fn cancel_of_a_parked_invite_is_answered_and_a_late_claim_ends_cancelled() {
    let mut h = clustered();
    let token = parked(&mut h, "z9hG4bKc5");
    let mut cancel = request_of(&leg_a_invite("+1001", "2001", "z9hG4bKc5", "")).clone();
    cancel.method = sip_core::Method::Cancel;
    cancel.headers.set(HeaderName::CSeq, "1 CANCEL");
    h.feed(&Message::Request(cancel), phone());
    assert_eq!(statuses(&h.sent(), phone()), [200, 487]);
    assert_eq!(h.engine.parked_claims(), 0);
    // Abandoned tokens are remembered for a late answer, then forgotten.
    assert_eq!(h.engine.claim_tokens(), 1);
    h.engine
        .handle_claim(h.now, token, Ok(SharedClaim::Claimed(shared_intent())));
    let record = h.control.call("12345678901234567890").unwrap();
    assert_eq!(record.end_cause, Some(EndCause::Cancelled));
    assert_eq!(record.ended_by, Some(Party::Leg(crate::Leg::A)));

    // A token abandoned and never answered is forgotten after its grace.
    let other = parked(&mut h, "z9hG4bKc6");
    h.advance(Duration::from_secs(3));
    h.sent();
    assert_eq!(h.engine.claim_tokens(), 1);
    h.advance(Duration::from_secs(61));
    assert_eq!(h.engine.claim_tokens(), 0);
    // Its answer, if it ever came, finds nothing.
    h.engine
        .handle_claim(h.now, other, Ok(SharedClaim::Refused(NoIntent::None)));
    h.assert_drained();
}
