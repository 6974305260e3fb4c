//! [`CallControl`]: the one handle through which the HTTP API and the SIP side change intents,
//! so that the intent table and the call registry always tell the same story.

mod shared;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::intent::{Intent, IntentTable, IntentTableFull, NoIntent};
use crate::numbers::NumberTable;
use crate::registry::{
    CallEvent, CallExtras, CallRecord, CallRegistry, EndCause, Party, WallClock,
};

/// Intents, call records and number assignments, updated together.
#[derive(Debug)]
pub struct CallControl {
    intents: IntentTable,
    registry: CallRegistry,
    numbers: NumberTable,
    /// `intent.require_ownership`: makecall and INVITEs only for assigned dedicated numbers.
    require_ownership: AtomicBool,
    /// In a cluster: the intent table the nodes share, and this node's id (see
    /// [`set_shared`](Self::set_shared)); `intents` then stays empty.
    shared: OnceLock<(Arc<dyn crate::SharedIntents>, String)>,
    /// Cleared while the store does not answer (its health check, run by the server): new
    /// calls and makecalls are then refused with 503, since their records could not be kept.
    store_available: AtomicBool,
}

impl CallControl {
    /// `intent_ttl`: how long an intent waits for its call; `retention`/`max_ended`: how long
    /// and how many ended calls stay queryable; `clock`: wall-clock time of the records (and
    /// the seed of call ids, so that they stay unique across restarts).
    pub fn new(
        intent_ttl: Duration,
        retention: Duration,
        max_ended: usize,
        clock: WallClock,
    ) -> CallControl {
        CallControl::with_max_intents(
            intent_ttl,
            crate::intent::DEFAULT_MAX_PENDING,
            retention,
            max_ended,
            clock,
        )
    }

    /// Like [`new`](Self::new), with at most `max_intents` pending intents.
    pub fn with_max_intents(
        intent_ttl: Duration,
        max_intents: usize,
        retention: Duration,
        max_ended: usize,
        clock: WallClock,
    ) -> CallControl {
        CallControl {
            intents: IntentTable::with_limit(intent_ttl, max_intents),
            registry: CallRegistry::new(retention, max_ended, clock),
            numbers: NumberTable::default(),
            require_ownership: AtomicBool::new(false),
            shared: OnceLock::new(),
            store_available: AtomicBool::new(true),
        }
    }

    /// Turns `intent.require_ownership` on or off.
    pub fn set_require_ownership(&self, on: bool) {
        self.require_ownership.store(on, Ordering::Relaxed);
    }

    /// Is `intent.require_ownership` on?
    pub fn requires_ownership(&self) -> bool {
        self.require_ownership.load(Ordering::Relaxed)
    }

    /// Says whether the store answers (the server's health check of it); returns whether
    /// that changed.
    pub fn set_store_available(&self, available: bool) -> bool {
        self.store_available.swap(available, Ordering::Relaxed) != available
    }

    /// Does the store answer? While it does not, new calls and makecalls get 503.
    pub fn store_available(&self) -> bool {
        self.store_available.load(Ordering::Relaxed)
    }

    /// The dedicated numbers' assignments (the store's copy in memory).
    pub fn numbers(&self) -> &NumberTable {
        &self.numbers
    }

    /// May `telnum` use the dedicated number `number`? Always, unless ownership is required.
    pub fn may_use(&self, telnum: &str, number: &str) -> bool {
        !self.requires_ownership() || self.numbers.owns(telnum, number)
    }

    /// Re-anchors the wall clock of the records (the runtime calls this every second).
    pub fn sync_wall_clock(&self, clock: WallClock) {
        self.registry.sync_wall_clock(clock);
    }

    /// makecall: registers the intent; a replaced intent's call ends as `intent_replaced`.
    pub fn make_call(
        &self,
        now: Instant,
        telnum: &str,
        caller: &str,
        callee: &str,
    ) -> Result<Intent, IntentTableFull> {
        self.make_call_with(now, telnum, caller, callee, CallExtras::default())
    }

    /// [`make_call`](Self::make_call) with makecall's `data` and `notify_url`, kept in the
    /// call's record. (Ownership is the caller's check: [`may_use`](Self::may_use).)
    pub fn make_call_with(
        &self,
        now: Instant,
        telnum: &str,
        caller: &str,
        callee: &str,
        extras: CallExtras,
    ) -> Result<Intent, IntentTableFull> {
        let (intent, replaced) = self.intents.register(now, telnum, caller, callee)?;
        self.registry.create_with(
            now,
            &intent.callid,
            &intent.telnum,
            &intent.caller,
            &intent.callee,
            extras,
        );
        if let Some(old) = replaced {
            self.end(now, &old.callid, EndCause::IntentReplaced);
        }
        Ok(intent)
    }

    /// cancelcall: removes the pending intent, if any; its call ends as `intent_cancelled`.
    pub fn cancel_call(&self, now: Instant, telnum: &str) -> Option<Intent> {
        let intent = self.intents.cancel(telnum)?;
        self.end(now, &intent.callid, EndCause::IntentCancelled);
        Some(intent)
    }

    /// An incoming call from `calling` to `dialled`: consumes the matching intent and moves its
    /// call to `trying`. An expired intent found on the way ends as `intent_expired`. With
    /// ownership required, a dedicated number not assigned to `calling` is refused first
    /// ([`NoIntent::NotOwned`]), and the intent is left alone.
    pub fn claim(&self, now: Instant, calling: &str, dialled: &str) -> Result<Intent, NoIntent> {
        if !self.may_use(calling, dialled) {
            return Err(NoIntent::NotOwned);
        }
        let taken = self.intents.take_matching(now, calling, dialled);
        self.claimed(now, taken)
    }

    /// The CTI decision (`POST /api/cti/callin`): like [`claim`](Self::claim), with `to`
    /// either the dialled dedicated number or the intent's callee. With ownership required, a
    /// `to` that is someone else's dedicated number is refused; a `to` that is nobody's
    /// (the callee) matches only an intent whose number was checked at makecall, and the
    /// intent's own number is checked again.
    pub fn claim_cti(&self, now: Instant, from: &str, to: &str) -> Result<Intent, NoIntent> {
        if self.requires_ownership() {
            if let Some(owner) = self.numbers.owner(to) {
                if owner != crate::intent::normalize_number(from) {
                    return Err(NoIntent::NotOwned);
                }
            } else if let Some(intent) = self.intents.get(from) {
                if !self.numbers.owns(from, &intent.caller) {
                    return Err(NoIntent::NotOwned);
                }
            }
        }
        let taken = self.intents.take_matching_caller_or_callee(now, from, to);
        self.claimed(now, taken)
    }

    fn claimed(&self, now: Instant, taken: Result<Intent, NoIntent>) -> Result<Intent, NoIntent> {
        match taken {
            Ok(intent) => {
                self.registry
                    .update(now, &intent.callid, CallEvent::Invited);
                Ok(intent)
            }
            Err(NoIntent::Expired) => {
                self.sweep(now);
                Err(NoIntent::Expired)
            }
            Err(other) => Err(other),
        }
    }

    /// An INVITE from `calling` to `dialled` refused with `code` because `no` intent matched:
    /// with webhooks on, a `call.refused` event under a new callid (see
    /// [`CallRegistry::refused`]).
    pub fn refused(&self, now: Instant, calling: &str, dialled: &str, code: u16, no: NoIntent) {
        if !self.registry.events_enabled() {
            return;
        }
        self.registry
            .refused(now, calling, dialled, code, no.code());
    }

    /// Expires intents whose TTL has passed and prunes old call records. Returns how many
    /// intents expired. Called by one background sweeper.
    pub fn sweep(&self, now: Instant) -> usize {
        let expired = self.intents.purge_expired(now);
        for intent in &expired {
            self.end(now, &intent.callid, EndCause::IntentExpired);
        }
        self.registry.prune(now);
        expired.len()
    }

    /// `POST /api/calls/{callid}/hangup` of a call still waiting for its phone: the intent is
    /// withdrawn and the call ends `intent_cancelled`, by `api`. `None` when `callid` has no
    /// pending intent (it is unknown, ended, or already claimed by its INVITE).
    pub fn cancel_intent_of(&self, now: Instant, callid: &str) -> Option<CallRecord> {
        let record = self.registry.get(callid)?;
        self.intents.cancel_callid(&record.telnum, callid)?;
        self.registry.update(
            now,
            callid,
            CallEvent::Ended {
                by: Party::Api,
                cause: EndCause::IntentCancelled,
            },
        );
        self.registry.get(callid)
    }

    /// Records a step of a claimed call.
    pub fn record(&self, now: Instant, callid: &str, event: CallEvent) {
        self.registry.update(now, callid, event);
    }

    pub fn call(&self, callid: &str) -> Option<CallRecord> {
        self.registry.get(callid)
    }

    pub fn intents(&self) -> &IntentTable {
        &self.intents
    }

    pub fn registry(&self) -> &CallRegistry {
        &self.registry
    }

    /// When the sweeper must next run to expire an intent on time.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.intents.next_expiry()
    }

    fn end(&self, now: Instant, callid: &str, cause: EndCause) {
        self.registry.update(
            now,
            callid,
            CallEvent::Ended {
                by: Party::System,
                cause,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::CallState;

    fn control() -> CallControl {
        CallControl::new(
            Duration::from_secs(120),
            Duration::from_secs(600),
            1000,
            WallClock::new(Instant::now(), std::time::SystemTime::now()),
        )
    }

    #[test]
    fn replaced_cancelled_and_expired_intents_end_their_calls() {
        let c = control();
        let t0 = Instant::now();
        let first = c.make_call(t0, "1001", "2001", "3001").unwrap();
        let second = c.make_call(t0, "1001", "2001", "3002").unwrap();
        assert_eq!(
            c.call(&first.callid).unwrap().end_cause,
            Some(EndCause::IntentReplaced)
        );
        assert_eq!(c.call(&second.callid).unwrap().state, CallState::Intent);
        assert!(c.cancel_call(t0, "1001").is_some());
        assert_eq!(
            c.call(&second.callid).unwrap().end_cause,
            Some(EndCause::IntentCancelled)
        );
        let third = c.make_call(t0, "1002", "2002", "3003").unwrap();
        assert_eq!(c.sweep(t0 + Duration::from_secs(120)), 1);
        assert_eq!(
            c.call(&third.callid).unwrap().end_cause,
            Some(EndCause::IntentExpired)
        );
        assert!(c.intents().is_empty());
        assert_eq!(c.registry().active_count(), 0);
    }

    #[test]
    fn claim_moves_the_call_to_trying() {
        let c = control();
        let t0 = Instant::now();
        let intent = c.make_call(t0, "+1001", "2001", "3001").unwrap();
        assert_eq!(c.claim(t0, "1001", "2001").unwrap().callid, intent.callid);
        assert_eq!(c.call(&intent.callid).unwrap().state, CallState::Trying);
        assert_eq!(c.claim(t0, "1001", "2001"), Err(NoIntent::None));
    }

    #[test]
    fn claiming_an_expired_intent_records_the_expiry() {
        let c = control();
        let t0 = Instant::now();
        let intent = c.make_call(t0, "1001", "2001", "3001").unwrap();
        assert_eq!(
            c.claim(t0 + Duration::from_secs(121), "1001", "2001"),
            Err(NoIntent::Expired)
        );
        assert_eq!(
            c.call(&intent.callid).unwrap().end_cause,
            Some(EndCause::IntentExpired)
        );
    }

    #[test]
    fn ownership_refuses_unassigned_numbers_and_leaves_the_intent() {
        let c = control();
        let t0 = Instant::now();
        let intent = c.make_call(t0, "1001", "2001", "3001").unwrap();
        assert!(c.may_use("1001", "2001"), "ownership off: anything goes");
        c.set_require_ownership(true);
        assert!(!c.may_use("1001", "2001"));
        assert_eq!(c.claim(t0, "1001", "2001"), Err(NoIntent::NotOwned));
        assert_eq!(c.claim_cti(t0, "1001", "2001"), Err(NoIntent::NotOwned));
        assert_eq!(c.claim_cti(t0, "1001", "3001"), Err(NoIntent::NotOwned));
        c.numbers().assign("2001", "1002");
        assert_eq!(c.claim(t0, "1001", "2001"), Err(NoIntent::NotOwned));
        c.numbers().assign("+2001", "+1001");
        assert!(c.may_use("1001", "2001"));
        assert_eq!(
            c.claim_cti(t0, "1001", "3001").unwrap().callid,
            intent.callid
        );
        assert_eq!(NoIntent::NotOwned.code(), "number_not_owned");
    }

    fn kinds(events: &[crate::WebhookEvent]) -> Vec<(&str, &str, u32)> {
        events
            .iter()
            .map(|e| (e.callid.as_str(), e.kind.code(), e.seq))
            .collect()
    }

    #[test]
    fn every_change_builds_an_event_in_seq_order_with_the_record_of_its_moment() {
        let c = control();
        let t0 = Instant::now();
        let later = |ms| t0 + Duration::from_millis(ms);
        // Off: nothing is built.
        c.make_call(t0, "1000", "2000", "3000").unwrap();
        c.cancel_call(t0, "1000");
        assert!(c.registry().take_events(100).is_empty());

        c.registry()
            .enable_events(Some("http://hooks.example/cb".into()), 100);
        let bridged = c.make_call(t0, "1001", "2001", "3001").unwrap();
        c.claim(later(10), "1001", "2001").unwrap();
        c.record(later(20), &bridged.callid, CallEvent::Ringing);
        c.record(later(20), &bridged.callid, CallEvent::Ringing); // 183 after 180: one event
        c.record(later(30), &bridged.callid, CallEvent::Answered);
        let end = CallEvent::Ended {
            by: Party::Leg(crate::Leg::A),
            cause: EndCause::Hangup,
        };
        c.record(later(40), &bridged.callid, end);
        c.record(later(50), &bridged.callid, end); // after the end: nothing
        let events = c.registry().take_events(100);
        let id = bridged.callid.as_str();
        assert_eq!(
            kinds(&events),
            [
                (id, "intent.created", 1),
                (id, "call.incoming", 2),
                (id, "call.ringing", 3),
                (id, "call.answered", 4),
                (id, "call.ended", 5),
            ]
        );
        // Each carries the record as it was then.
        assert_eq!(events[0].record.state, CallState::Intent);
        assert_eq!(events[2].record.state, CallState::Ringing);
        assert_eq!(events[2].record.answered_at, None);
        assert_eq!(events[4].record.end_cause, Some(EndCause::Hangup));
        assert_eq!(events[4].at, events[4].record.ended_at.unwrap());
        assert!(events.iter().all(|e| e.target == "http://hooks.example/cb"));
        let ids: std::collections::HashSet<_> = events.iter().map(|e| &e.id).collect();
        assert_eq!(ids.len(), 5, "event ids are unique");
        assert!(c.registry().take_events(100).is_empty());

        // Intents that never became calls end with their own events, on their own callid;
        // notify_url overrides webhooks.url.
        let extras = CallExtras {
            data: Some("order-9".into()),
            notify_url: Some("https://app.example/own".into()),
        };
        let first = c
            .make_call_with(t0, "1002", "2002", "3002", extras)
            .unwrap();
        let second = c.make_call(t0, "1002", "2002", "3003").unwrap();
        c.cancel_call(t0, "1002");
        let third = c.make_call(t0, "1003", "2003", "3003").unwrap();
        c.sweep(t0 + Duration::from_secs(121));
        let events = c.registry().take_events(100);
        let (a, b, d) = (
            first.callid.as_str(),
            second.callid.as_str(),
            third.callid.as_str(),
        );
        assert_eq!(
            kinds(&events),
            [
                (a, "intent.created", 1),
                (b, "intent.created", 1),
                (a, "intent.replaced", 2),
                (b, "intent.cancelled", 2),
                (d, "intent.created", 1),
                (d, "intent.expired", 2),
            ]
        );
        assert_eq!(events[0].target, "https://app.example/own");
        assert_eq!(events[2].record.data.as_deref(), Some("order-9"));
        assert_eq!(events[1].target, "http://hooks.example/cb");
    }

    #[test]
    fn a_refusal_is_an_event_of_its_own_callid_and_the_queue_is_bounded() {
        let c = control();
        let t0 = Instant::now();
        // Webhooks on without webhooks.url: only intents with notify_url have a target.
        c.registry().enable_events(None, 3);
        c.refused(t0, "1001", "2001", 403, NoIntent::None);
        c.make_call(t0, "1001", "2001", "3001").unwrap();
        assert!(c.registry().take_events(10).is_empty());

        c.registry().enable_events(Some("http://h/".into()), 3);
        c.refused(t0, "+1001", "2001", 403, NoIntent::NotOwned);
        let events = c.registry().take_events(10);
        assert_eq!(events.len(), 1);
        let refused = &events[0];
        assert_eq!((refused.kind.code(), refused.seq), ("call.refused", 1));
        assert_eq!(refused.callid.len(), 20);
        assert!(
            c.call(&refused.callid).is_none(),
            "a refusal keeps no record"
        );
        assert_eq!(refused.record.leg_a_code, Some(403));
        assert_eq!(refused.record.end_cause, Some(EndCause::Refused));
        assert_eq!(
            refused.record.sip_reason.as_deref(),
            Some("number_not_owned")
        );
        assert_eq!(
            (
                refused.record.telnum.as_str(),
                refused.record.caller.as_str()
            ),
            ("+1001", "2001")
        );

        for _ in 0..5 {
            c.refused(t0, "1001", "2001", 403, NoIntent::None);
        }
        assert_eq!(c.registry().event_queue_counts(), (3, 2));
        assert_eq!(c.registry().take_events(2).len(), 2);
        assert_eq!(c.registry().event_queue_counts(), (1, 2));
    }
}
