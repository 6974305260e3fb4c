//! The call registry: what happened to every call, by `callid`, for `GET /api/calls/{callid}`.
//!
//! A record is created with its intent and follows it (intent → trying → ringing → answered →
//! ended). Ended records stay queryable for a retention period and are then dropped, oldest
//! first; a cap on ended records bounds memory under floods of refused calls.
//!
//! With persistence on ([`CallRegistry::enable_persistence`]), every ended record also waits
//! in a queue until it has *settled* — its last counters (the media driver's final report, a
//! late final code) arrive just after the end — and is then taken, off the SIP engine's task,
//! by [`CallRegistry::take_settled`] for the store. A record changed after it was taken is
//! queued again, so the stored copy ends up final.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;

use crate::call::Leg;
use crate::events::{new_event_id, EventKind, EventQueue, WebhookEvent};

/// Where a call is in its life: the one state of a call, shown by the API in its record and
/// held by the engine for the calls it drives (from `Trying` on).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    /// makecall registered it; the phone has not called yet.
    Intent,
    /// The phone's INVITE matched; leg B is being placed.
    Trying,
    /// Leg B reported ringing or early media.
    Ringing,
    /// Both legs answered and bridged.
    Answered,
    /// The outcome is decided. (The engine may still be finishing the call's last
    /// transactions; the record no longer changes.)
    Ended,
}

impl CallState {
    /// The state of an API code (`intent`, `trying`, ...), as a stored or shared record
    /// names it.
    pub fn from_code(code: &str) -> Option<CallState> {
        Some(match code {
            "intent" => CallState::Intent,
            "trying" => CallState::Trying,
            "ringing" => CallState::Ringing,
            "answered" => CallState::Answered,
            "ended" => CallState::Ended,
            _ => return None,
        })
    }

    /// Leg B is placed and not answered yet.
    pub fn is_setting_up(self) -> bool {
        matches!(self, CallState::Trying | CallState::Ringing)
    }
}

/// Who ended a call: one of its legs, or callbridge itself. Serialised as the API names
/// them: `caller` (leg A), `callee` (leg B), `system`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Party {
    /// The party on this leg hung up, cancelled or refused.
    Leg(Leg),
    /// callbridge itself (timeouts, limits, shutdown).
    System,
    /// An API client (`POST /api/calls/{callid}/hangup`).
    Api,
}

impl Party {
    /// The party of an API code (`caller`, `callee`, `system`, `api`).
    pub fn from_code(code: &str) -> Option<Party> {
        Some(match code {
            "caller" => Party::Leg(Leg::A),
            "callee" => Party::Leg(Leg::B),
            "system" => Party::System,
            "api" => Party::Api,
            _ => return None,
        })
    }

    /// The API's name of the party.
    pub fn code(self) -> &'static str {
        match self {
            Party::Leg(leg) => leg.party(),
            Party::System => "system",
            Party::Api => "api",
        }
    }
}

impl Serialize for Party {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

/// Why a call ended. [`EndCause::code`] is its one name: in the API's records, the metrics,
/// the logs and the `Reason` header of the BYEs callbridge sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndCause {
    /// One side hung up a bridged call.
    Hangup,
    /// The caller cancelled before the answer.
    Cancelled,
    /// The callee answered with a failure (busy, decline, ...): see the leg B code.
    CalleeRejected,
    /// No final answer from the callee within the no-answer timeout.
    NoAnswer,
    /// A transaction timed out or the transport failed.
    SignallingFailure,
    /// The trunk refused callbridge's credentials, or challenged without any configured.
    TrunkAuthFailed,
    /// A session timer ran out (RFC 4028): the peer did not refresh, or callbridge's
    /// refresh failed.
    SessionExpired,
    /// No media in either direction for the inactivity timeout.
    MediaTimeout,
    /// The maximum call duration elapsed.
    MaxDuration,
    /// The intent expired before the phone called.
    IntentExpired,
    /// cancelcall removed the intent.
    IntentCancelled,
    /// A newer makecall for the same number replaced the intent.
    IntentReplaced,
    /// No media ports were free, or the media driver could not open them.
    ResourcesExhausted,
    /// callbridge shut down.
    Shutdown,
    /// The INVITE found no intent to consume (the record of a `call.refused` event).
    Refused,
    /// The node holding the call stopped (its heartbeat in the cluster's Redis lapsed); a
    /// surviving node ended the record.
    NodeLost,
    /// The cluster's shared store (Redis) did not answer in time while the call was being
    /// set up.
    ClusterUnavailable,
}

impl EndCause {
    /// Every cause, for [`from_code`](Self::from_code).
    pub const ALL: [EndCause; 17] = [
        EndCause::Hangup,
        EndCause::Cancelled,
        EndCause::CalleeRejected,
        EndCause::NoAnswer,
        EndCause::SignallingFailure,
        EndCause::TrunkAuthFailed,
        EndCause::SessionExpired,
        EndCause::MediaTimeout,
        EndCause::MaxDuration,
        EndCause::IntentExpired,
        EndCause::IntentCancelled,
        EndCause::IntentReplaced,
        EndCause::ResourcesExhausted,
        EndCause::Shutdown,
        EndCause::Refused,
        EndCause::NodeLost,
        EndCause::ClusterUnavailable,
    ];

    /// The cause of a snake_case code.
    pub fn from_code(code: &str) -> Option<EndCause> {
        EndCause::ALL.into_iter().find(|cause| cause.code() == code)
    }

    /// The snake_case code of the cause.
    pub fn code(self) -> &'static str {
        match self {
            EndCause::Hangup => "hangup",
            EndCause::Cancelled => "cancelled",
            EndCause::CalleeRejected => "callee_rejected",
            EndCause::NoAnswer => "no_answer",
            EndCause::SignallingFailure => "signalling_failure",
            EndCause::TrunkAuthFailed => "trunk_auth_failed",
            EndCause::SessionExpired => "session_expired",
            EndCause::MediaTimeout => "media_timeout",
            EndCause::MaxDuration => "max_duration",
            EndCause::IntentExpired => "intent_expired",
            EndCause::IntentCancelled => "intent_cancelled",
            EndCause::IntentReplaced => "intent_replaced",
            EndCause::ResourcesExhausted => "resources_exhausted",
            EndCause::Shutdown => "shutdown",
            EndCause::Refused => "refused",
            EndCause::NodeLost => "node_lost",
            EndCause::ClusterUnavailable => "cluster_unavailable",
        }
    }
}

impl Serialize for EndCause {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

/// Wall-clock milliseconds since the Unix epoch, the timestamp format of the API.
pub type UnixMillis = u64;

pub fn unix_millis(at: SystemTime) -> UnixMillis {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Maps the monotonic instants every input carries to wall-clock time for records, without
/// reading a clock: the caller gives one (instant, wall time) pair and refreshes it now and
/// then ([`CallControl::sync_wall_clock`](crate::CallControl::sync_wall_clock)), so that a step
/// of the system clock shows up in records within one refresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WallClock {
    mono: Instant,
    /// Microseconds since the epoch at `mono`.
    wall_us: u64,
}

impl WallClock {
    /// `wall` is the wall-clock time at the instant `mono`.
    pub fn new(mono: Instant, wall: SystemTime) -> WallClock {
        let wall_us = wall
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        WallClock { mono, wall_us }
    }

    /// The wall-clock time at `at`.
    pub fn at(&self, at: Instant) -> UnixMillis {
        let us = if at >= self.mono {
            self.wall_us
                .saturating_add(at.duration_since(self.mono).as_micros() as u64)
        } else {
            self.wall_us
                .saturating_sub(self.mono.duration_since(at).as_micros() as u64)
        };
        us / 1000
    }

    /// Microseconds since the epoch at the anchor instant (seeds call ids).
    pub fn anchor_micros(&self) -> u64 {
        self.wall_us
    }
}

/// Everything the API reports about one call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CallRecord {
    pub callid: String,
    pub telnum: String,
    pub caller: String,
    pub callee: String,
    pub state: CallState,
    pub created_at: UnixMillis,
    pub invite_at: Option<UnixMillis>,
    pub ringing_at: Option<UnixMillis>,
    pub answered_at: Option<UnixMillis>,
    pub ended_at: Option<UnixMillis>,
    /// Final SIP code sent to leg A (the user's phone).
    pub leg_a_code: Option<u16>,
    /// Final SIP code received on leg B (the target).
    pub leg_b_code: Option<u16>,
    pub ended_by: Option<Party>,
    pub end_cause: Option<EndCause>,
    /// RTP/RTCP relayed for this call (packets and bytes each way, latched addresses);
    /// refreshed about once a second while the call lasts, final when it ended.
    pub media: Option<crate::media::MediaStats>,
    /// The client's opaque `data` of makecall (at most 1 KiB, checked by the API).
    pub data: Option<String>,
    /// This call's webhook target from makecall (overrides `webhooks.url`).
    pub notify_url: Option<String>,
    /// From leg B's INVITE (the phone's INVITE matched, `invite_at`) to the answer, or to the
    /// end of a call that was never answered.
    pub ring_ms: Option<u64>,
    /// From the answer to the end.
    pub talk_ms: Option<u64>,
    /// The SIP reason that came with the end: the `Reason` header of the BYE or failure
    /// response, or the status line of a failure without one.
    pub sip_reason: Option<String>,
}

impl CallRecord {
    /// The record of a new intent, created at `created_at`: nothing has happened to it yet.
    pub fn intent(
        callid: &str,
        telnum: &str,
        caller: &str,
        callee: &str,
        created_at: UnixMillis,
        extras: CallExtras,
    ) -> CallRecord {
        CallRecord {
            callid: callid.to_owned(),
            telnum: telnum.to_owned(),
            caller: caller.to_owned(),
            callee: callee.to_owned(),
            state: CallState::Intent,
            created_at,
            invite_at: None,
            ringing_at: None,
            answered_at: None,
            ended_at: None,
            leg_a_code: None,
            leg_b_code: None,
            ended_by: None,
            end_cause: None,
            media: None,
            data: extras.data,
            notify_url: extras.notify_url,
            ring_ms: None,
            talk_ms: None,
            sip_reason: None,
        }
    }
}

/// What makecall adds to a record besides its numbers (SPEC.md: `data`, `notify_url`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallExtras {
    pub data: Option<String>,
    pub notify_url: Option<String>,
}

/// One step of a call, applied with [`CallRegistry::update`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallEvent {
    Invited,
    Ringing,
    LegBFinal(u16),
    LegAFinal(u16),
    Answered,
    Ended { by: Party, cause: EndCause },
}

/// Longest `sip_reason` kept, in bytes.
const MAX_SIP_REASON: usize = 256;

/// `reason` cut to [`MAX_SIP_REASON`] at a char boundary: a header from the wire is at most a
/// few hundred bytes worth keeping.
fn bounded(reason: &str) -> &str {
    let mut end = reason.len().min(MAX_SIP_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// Shared registry of call records.
#[derive(Debug)]
pub struct CallRegistry {
    retention: Duration,
    max_ended: usize,
    inner: Mutex<Inner>,
    /// Mirrors `inner.events.is_some()`, read without the lock.
    events_on: AtomicBool,
    /// Ended records pruned (by the `max_ended` cap) while still waiting for the store.
    lost_unstored: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    clock: Option<WallClock>,
    /// Boxed, so that growing the map under the lock moves pointers rather than records.
    records: HashMap<String, Box<Slot>, foldhash::fast::RandomState>,
    /// Ended calls in the order they ended, with the monotonic instant they ended at.
    ended: VecDeque<(Instant, String)>,
    /// With persistence on: ended records not yet taken for the store, oldest first, with the
    /// instant they were queued. A record is in it at most once (its slot's `queued`).
    to_store: VecDeque<(Instant, String)>,
    persist: bool,
    /// With webhooks on: the events built and not yet taken by the dispatcher.
    events: Option<EventQueue>,
    /// In a cluster: the callids whose record changed since the call index last took them
    /// (each at most once: its slot's `changed`).
    changed: Option<Vec<String>>,
}

/// A record and whether it waits in `to_store`.
#[derive(Debug)]
struct Slot {
    record: CallRecord,
    queued: bool,
    /// The `seq` of the call's last webhook event (0: none yet).
    seq: u32,
    /// Waits in `Inner::changed` (the cluster's call index feed).
    changed: bool,
}

impl Inner {
    /// Queues an ended record for the store, unless it is queued already (or persistence is
    /// off).
    fn queue_for_store(&mut self, now: Instant, callid: &str) {
        if !self.persist {
            return;
        }
        if let Some(slot) = self.records.get_mut(callid) {
            if slot.record.state == CallState::Ended && !slot.queued {
                slot.queued = true;
                self.to_store.push_back((now, callid.to_owned()));
            }
        }
    }
}

impl Inner {
    /// Notes a change of `callid`'s record for the call index (when the feed is on).
    fn note_change(&mut self, callid: &str) {
        let Some(changed) = self.changed.as_mut() else {
            return;
        };
        if let Some(slot) = self.records.get_mut(callid) {
            if !slot.changed {
                slot.changed = true;
                changed.push(callid.to_owned());
            }
        }
    }

    fn wall(&self, at: Instant) -> UnixMillis {
        self.clock.map_or(0, |clock| clock.at(at))
    }

    /// With webhooks on and a target for the call: builds its next event from the record as
    /// it is now.
    fn announce(&mut self, kind: EventKind, callid: &str, at: UnixMillis) {
        let Some(events) = self.events.as_mut() else {
            return;
        };
        let Some(slot) = self.records.get_mut(callid) else {
            return;
        };
        let Some(target) = events.target_of(&slot.record) else {
            return;
        };
        let target = target.to_owned();
        slot.seq += 1;
        events.push(WebhookEvent {
            id: new_event_id(at),
            kind,
            callid: callid.to_owned(),
            seq: slot.seq,
            at,
            target,
            record: slot.record.clone(),
        });
    }
}

impl CallRegistry {
    /// `retention`: how long ended calls stay queryable; `max_ended`: how many at most.
    pub fn new(retention: Duration, max_ended: usize, clock: WallClock) -> CallRegistry {
        CallRegistry {
            retention,
            max_ended,
            inner: Mutex::new(Inner {
                clock: Some(clock),
                ..Inner::default()
            }),
            events_on: AtomicBool::new(false),
            lost_unstored: AtomicU64::new(0),
        }
    }

    /// The wall-clock time (ms since the epoch) of the monotonic instant `at`.
    pub fn wall_at(&self, at: Instant) -> UnixMillis {
        self.inner.lock().wall(at)
    }

    /// Re-anchors the wall clock used for timestamps (see [`WallClock`]).
    pub fn sync_wall_clock(&self, clock: WallClock) {
        self.inner.lock().clock = Some(clock);
    }

    /// Records a new call in state `Intent`, created at `now`.
    pub fn create(&self, now: Instant, callid: &str, telnum: &str, caller: &str, callee: &str) {
        self.create_with(now, callid, telnum, caller, callee, CallExtras::default());
    }

    /// [`create`](Self::create) with makecall's `data` and `notify_url`.
    pub fn create_with(
        &self,
        now: Instant,
        callid: &str,
        telnum: &str,
        caller: &str,
        callee: &str,
        extras: CallExtras,
    ) {
        let mut inner = self.inner.lock();
        let created_at = inner.wall(now);
        let record = CallRecord::intent(callid, telnum, caller, callee, created_at, extras);
        let slot = Slot {
            record,
            queued: false,
            seq: 0,
            changed: false,
        };
        inner.records.insert(callid.to_owned(), Box::new(slot));
        inner.announce(EventKind::IntentCreated, callid, created_at);
    }

    /// Takes over the record of an intent another node registered (a cluster's
    /// [`SharedIntent`](crate::shared_intents::SharedIntent)): in state `Intent`, its webhook
    /// `seq` going on from the intent's. Nothing is announced: `intent.created` was, by the
    /// node that registered it. An existing record of the callid is left as it is.
    pub fn adopt(&self, intent: &crate::shared_intents::SharedIntent) {
        let extras = CallExtras {
            data: intent.data.clone(),
            notify_url: intent.notify_url.clone(),
        };
        let record = CallRecord::intent(
            &intent.callid,
            &intent.telnum,
            &intent.caller,
            &intent.callee,
            intent.created_at,
            extras,
        );
        self.adopt_record(record, intent.seq);
    }

    /// Drops the record of a call that is not ended, without an event, and returns it with
    /// the `seq` of its last event: in a cluster the record of a pending intent lives with
    /// the shared intent, not on the node that took the makecall.
    pub fn forget(&self, callid: &str) -> Option<(CallRecord, u32)> {
        let mut inner = self.inner.lock();
        if inner
            .records
            .get(callid)
            .is_some_and(|slot| slot.record.state == CallState::Ended)
        {
            return None;
        }
        inner
            .records
            .remove(callid)
            .map(|slot| (slot.record, slot.seq))
    }

    /// Takes over the record of a call another node held (a lost node's, from the cluster's
    /// call index), its webhook `seq` going on from `seq`. Nothing is announced; an existing
    /// record of the callid is left as it is.
    pub fn adopt_record(&self, record: CallRecord, seq: u32) {
        let mut inner = self.inner.lock();
        if inner.records.contains_key(&record.callid) {
            return;
        }
        let callid = record.callid.clone();
        let slot = Slot {
            record,
            queued: false,
            seq,
            changed: false,
        };
        inner.records.insert(callid, Box::new(slot));
    }

    /// From now on, every change of a record is noted for
    /// [`take_changed`](Self::take_changed) (a cluster's call index). Off by default: without
    /// a consumer the list would only grow.
    pub fn enable_change_feed(&self) {
        let mut inner = self.inner.lock();
        if inner.changed.is_none() {
            inner.changed = Some(Vec::new());
        }
    }

    /// The records changed since the last call, at most `max`, each with the `seq` of its last
    /// webhook event; records pruned meanwhile are left out.
    pub fn take_changed(&self, max: usize) -> Vec<(CallRecord, u32)> {
        let mut inner = self.inner.lock();
        let Some(changed) = inner.changed.as_mut() else {
            return Vec::new();
        };
        let take = changed.len().min(max);
        let callids: Vec<String> = changed.drain(..take).collect();
        callids
            .into_iter()
            .filter_map(|callid| {
                let slot = inner.records.get_mut(&callid)?;
                slot.changed = false;
                Some((slot.record.clone(), slot.seq))
            })
            .collect()
    }

    /// Notes `callids` as changed again (their index write failed: the next takes them).
    pub fn mark_changed(&self, callids: &[String]) {
        let mut inner = self.inner.lock();
        for callid in callids {
            inner.note_change(callid);
        }
    }

    /// Would a record with this `notify_url` have webhook events built (webhooks on, and a
    /// target: the URL or `webhooks.url`)?
    pub fn builds_events_for(&self, notify_url: Option<&str>) -> bool {
        if !self.events_enabled() {
            return false;
        }
        let inner = self.inner.lock();
        inner
            .events
            .as_ref()
            .is_some_and(|events| notify_url.is_some() || events.has_default_target())
    }

    /// Applies one event. Events after the end are ignored, except final codes that arrive
    /// while a call is being torn down.
    pub fn update(&self, now: Instant, callid: &str, event: CallEvent) {
        let mut inner = self.inner.lock();
        let wall = inner.wall(now);
        let Some(slot) = inner.records.get_mut(callid) else {
            return;
        };
        let record = &mut slot.record;
        let ended = record.state == CallState::Ended;
        // An ended record that changes (a late final code) or ends now goes to the store.
        let mut changed_ended = false;
        let mut announce = None;
        match event {
            CallEvent::LegAFinal(code) => {
                changed_ended = ended && record.leg_a_code.is_none();
                record.leg_a_code.get_or_insert(code);
            }
            CallEvent::LegBFinal(code) => {
                changed_ended = ended && record.leg_b_code.is_none();
                record.leg_b_code.get_or_insert(code);
            }
            _ if ended => {}
            CallEvent::Invited => {
                record.state = CallState::Trying;
                record.invite_at = Some(wall);
                announce = Some(EventKind::CallIncoming);
            }
            CallEvent::Ringing => {
                if record.state == CallState::Trying {
                    record.state = CallState::Ringing;
                    record.ringing_at = Some(wall);
                    announce = Some(EventKind::CallRinging);
                }
            }
            CallEvent::Answered => {
                record.state = CallState::Answered;
                record.answered_at = Some(wall);
                announce = Some(EventKind::CallAnswered);
            }
            CallEvent::Ended { by, cause } => {
                record.state = CallState::Ended;
                record.ended_at = Some(wall);
                record.ended_by = Some(by);
                record.end_cause = Some(cause);
                if let Some(invited) = record.invite_at {
                    let until = record.answered_at.unwrap_or(wall);
                    record.ring_ms = Some(until.saturating_sub(invited));
                }
                if let Some(answered) = record.answered_at {
                    record.talk_ms = Some(wall.saturating_sub(answered));
                }
                inner.ended.push_back((now, callid.to_owned()));
                changed_ended = true;
                announce = Some(EventKind::of_end(cause));
            }
        }
        if let Some(kind) = announce {
            inner.announce(kind, callid, wall);
        }
        if changed_ended {
            inner.queue_for_store(now, callid);
        }
        inner.note_change(callid);
        drop(inner);
        self.prune(now);
    }

    /// Stores the latest media counters of a call (the final ones arrive just after its end).
    pub fn set_media(&self, now: Instant, callid: &str, stats: crate::media::MediaStats) {
        let mut inner = self.inner.lock();
        let Some(slot) = inner.records.get_mut(callid) else {
            return;
        };
        slot.record.media = Some(stats);
        if slot.record.state == CallState::Ended {
            inner.queue_for_store(now, callid);
        }
        inner.note_change(callid);
    }

    /// Records the SIP reason of the call's end (the first one given counts).
    pub fn set_sip_reason(&self, now: Instant, callid: &str, reason: &str) {
        let mut inner = self.inner.lock();
        let Some(slot) = inner.records.get_mut(callid) else {
            return;
        };
        if slot.record.sip_reason.is_some() {
            return;
        }
        slot.record.sip_reason = Some(bounded(reason).to_owned());
        if slot.record.state == CallState::Ended {
            inner.queue_for_store(now, callid);
        }
        inner.note_change(callid);
    }

    pub fn get(&self, callid: &str) -> Option<CallRecord> {
        self.inner
            .lock()
            .records
            .get(callid)
            .map(|slot| slot.record.clone())
    }

    /// The `limit` newest (by `created_at`, then callid, both descending) records not yet
    /// ended (intents included) that `keep` accepts; for listings, which merge them with the
    /// stored records. Only those returned are cloned.
    pub fn live_newest(
        &self,
        limit: usize,
        mut keep: impl FnMut(&CallRecord) -> bool,
    ) -> Vec<CallRecord> {
        let inner = self.inner.lock();
        let mut live: Vec<&CallRecord> = inner
            .records
            .values()
            .map(|slot| &slot.record)
            .filter(|record| record.state != CallState::Ended && keep(record))
            .collect();
        let newest_first = |a: &&CallRecord, b: &&CallRecord| {
            (b.created_at, &b.callid).cmp(&(a.created_at, &a.callid))
        };
        if live.len() > limit {
            live.select_nth_unstable_by(limit, newest_first);
            live.truncate(limit);
        }
        live.sort_unstable_by(newest_first);
        live.into_iter().cloned().collect()
    }

    /// From now on, ended records are queued for [`take_settled`](Self::take_settled). Off by
    /// default: without a consumer the queue would only grow.
    pub fn enable_persistence(&self) {
        self.inner.lock().persist = true;
    }

    /// The ended records queued at least `settle` before `now`, oldest first, at most `max`;
    /// each leaves the queue (and comes back if it changes again). Records pruned from
    /// memory meanwhile are skipped.
    pub fn take_settled(&self, now: Instant, settle: Duration, max: usize) -> Vec<CallRecord> {
        let mut inner = self.inner.lock();
        let mut taken = Vec::new();
        while taken.len() < max {
            let Some((queued_at, _)) = inner.to_store.front() else {
                break;
            };
            if now.saturating_duration_since(*queued_at) < settle {
                break;
            }
            let Some((_, callid)) = inner.to_store.pop_front() else {
                break;
            };
            if let Some(slot) = inner.records.get_mut(&callid) {
                slot.queued = false;
                taken.push(slot.record.clone());
            }
        }
        sip_core::capacity::shrink_deque(&mut inner.to_store);
        taken
    }

    /// From now on, every change of a call with a target builds a webhook event (see
    /// [`crate::events`]); `default_target` is `webhooks.url`, `max_queued` bounds the events
    /// waiting for [`take_events`](Self::take_events). Off by default.
    pub fn enable_events(&self, default_target: Option<String>, max_queued: usize) {
        self.inner.lock().events = Some(EventQueue::new(default_target, max_queued));
        self.events_on.store(true, Ordering::Relaxed);
    }

    /// Are webhook events built? (A lock-free check for the engine's refusal path.)
    pub fn events_enabled(&self) -> bool {
        self.events_on.load(Ordering::Relaxed)
    }

    /// Up to `max` events built since the last take, oldest first (the dispatcher's intake).
    pub fn take_events(&self, max: usize) -> Vec<WebhookEvent> {
        self.inner
            .lock()
            .events
            .as_mut()
            .map_or_else(Vec::new, |events| events.take(max))
    }

    /// Events waiting for [`take_events`](Self::take_events), and those dropped since the
    /// start because too many waited.
    pub fn event_queue_counts(&self) -> (usize, u64) {
        self.inner
            .lock()
            .events
            .as_ref()
            .map_or((0, 0), |events| (events.len(), events.dropped()))
    }

    /// An INVITE from `calling` to `dialled` found no intent and got `code`: with webhooks on
    /// and `webhooks.url` set, a `call.refused` event under a new callid, with a record
    /// of the refusal (`reason` as its `sip_reason`). The refusal keeps no record in the
    /// registry: a flood of refused INVITEs must not fill it.
    pub fn refused(&self, now: Instant, calling: &str, dialled: &str, code: u16, reason: &str) {
        let mut inner = self.inner.lock();
        let at = inner.wall(now);
        let Some(events) = inner.events.as_mut() else {
            return;
        };
        let Some(target) = events.default_target.clone() else {
            return;
        };
        // Drawn only once the event is sure to be built: refusals come in floods.
        let callid = crate::intent::new_callid();
        let record = CallRecord {
            callid: callid.clone(),
            telnum: calling.to_owned(),
            caller: dialled.to_owned(),
            callee: String::new(),
            state: CallState::Ended,
            created_at: at,
            invite_at: Some(at),
            ringing_at: None,
            answered_at: None,
            ended_at: Some(at),
            leg_a_code: Some(code),
            leg_b_code: None,
            ended_by: Some(Party::System),
            end_cause: Some(EndCause::Refused),
            media: None,
            data: None,
            notify_url: None,
            ring_ms: None,
            talk_ms: None,
            sip_reason: Some(bounded(reason).to_owned()),
        };
        events.push(WebhookEvent {
            id: new_event_id(at),
            kind: EventKind::CallRefused,
            callid,
            seq: 1,
            at,
            target,
            record,
        });
    }

    /// Ended records dropped from memory by the `max_ended` cap before the store took them
    /// (since start).
    pub fn records_lost_unstored(&self) -> u64 {
        self.lost_unstored.load(Ordering::Relaxed)
    }

    /// Ended records waiting for the store.
    pub fn unsettled_count(&self) -> usize {
        self.inner.lock().to_store.len()
    }

    /// Drops ended records older than the retention period or beyond the cap. A record
    /// dropped before the store took it is lost to the store, and counted
    /// ([`records_lost_unstored`](Self::records_lost_unstored)): memory stays bounded when
    /// calls end faster than the store's intake takes them.
    pub fn prune(&self, now: Instant) {
        let mut inner = self.inner.lock();
        while let Some((ended_at, _)) = inner.ended.front() {
            let too_old = now.saturating_duration_since(*ended_at) >= self.retention;
            if !too_old && inner.ended.len() <= self.max_ended {
                break;
            }
            if let Some((_, callid)) = inner.ended.pop_front() {
                if inner
                    .records
                    .remove(&callid)
                    .is_some_and(|slot| slot.queued)
                {
                    self.lost_unstored.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        sip_core::capacity::shrink_map(&mut inner.records);
    }

    /// Records of calls not yet ended (intent included).
    pub fn active_count(&self) -> usize {
        let inner = self.inner.lock();
        inner.records.len() - inner.ended.len()
    }

    /// Every record held, ended ones included.
    pub fn len(&self) -> usize {
        self.inner.lock().records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    /// Every cause is in [`EndCause::ALL`] and its code reads back as itself (the match makes
    /// a new cause a compile error here until it is listed).
    #[test]
    fn every_code_reads_back() {
        for cause in EndCause::ALL {
            let listed = match cause {
                EndCause::Hangup
                | EndCause::Cancelled
                | EndCause::CalleeRejected
                | EndCause::NoAnswer
                | EndCause::SignallingFailure
                | EndCause::TrunkAuthFailed
                | EndCause::SessionExpired
                | EndCause::MediaTimeout
                | EndCause::MaxDuration
                | EndCause::IntentExpired
                | EndCause::IntentCancelled
                | EndCause::IntentReplaced
                | EndCause::ResourcesExhausted
                | EndCause::Shutdown
                | EndCause::Refused
                | EndCause::NodeLost
                | EndCause::ClusterUnavailable => cause,
            };
            assert_eq!(EndCause::from_code(listed.code()), Some(listed));
        }
        let codes: std::collections::HashSet<_> = EndCause::ALL.iter().map(|c| c.code()).collect();
        assert_eq!(codes.len(), EndCause::ALL.len(), "no cause listed twice");
        for party in [
            Party::Leg(Leg::A),
            Party::Leg(Leg::B),
            Party::System,
            Party::Api,
        ] {
            assert_eq!(Party::from_code(party.code()), Some(party));
        }
        for state in [
            CallState::Intent,
            CallState::Trying,
            CallState::Ringing,
            CallState::Answered,
            CallState::Ended,
        ] {
            let code = serde_json::to_value(state).unwrap();
            assert_eq!(CallState::from_code(code.as_str().unwrap()), Some(state));
        }
        assert_eq!(EndCause::from_code("nope"), None);
    }

    use super::*;

    #[test]
    fn follows_a_call_through_its_states() {
        let t0 = Instant::now();
        let epoch = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let registry = CallRegistry::new(Duration::from_secs(60), 100, WallClock::new(t0, epoch));
        registry.create(t0, "7", "1001", "2001", "3001");
        assert_eq!(registry.get("7").unwrap().state, CallState::Intent);
        registry.update(t0, "7", CallEvent::Invited);
        registry.update(t0, "7", CallEvent::Ringing);
        registry.update(t0, "7", CallEvent::LegBFinal(200));
        registry.update(t0 + Duration::from_millis(2500), "7", CallEvent::Answered);
        registry.update(t0, "7", CallEvent::LegAFinal(200));
        assert_eq!(registry.active_count(), 1);
        registry.update(
            t0 + Duration::from_secs(3),
            "7",
            CallEvent::Ended {
                by: Party::Leg(Leg::B),
                cause: EndCause::Hangup,
            },
        );
        let r = registry.get("7").unwrap();
        assert_eq!(r.state, CallState::Ended);
        // Timestamps come from the instants given, through the wall clock anchor.
        assert_eq!(r.created_at, 1_700_000_000_000);
        assert_eq!(r.answered_at, Some(1_700_000_002_500));
        assert!(r.invite_at.is_some() && r.ringing_at.is_some() && r.answered_at.is_some());
        assert!(r.ended_at >= r.answered_at);
        assert_eq!((r.leg_a_code, r.leg_b_code), (Some(200), Some(200)));
        assert_eq!(r.ended_by, Some(Party::Leg(Leg::B)));
        assert_eq!(registry.active_count(), 0);
        // Late events do not resurrect an ended call.
        registry.update(t0, "7", CallEvent::Answered);
        assert_eq!(registry.get("7").unwrap().state, CallState::Ended);
    }

    #[test]
    fn wall_clock_maps_instants_either_side_of_its_anchor_and_serialises_names() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let clock = WallClock::new(t0, UNIX_EPOCH + Duration::from_secs(100));
        assert_eq!(clock.at(t0 + Duration::from_millis(1)), 100_001);
        assert_eq!(clock.at(t0 - Duration::from_secs(1)), 99_000);
        assert_eq!(clock.anchor_micros(), 100_000_000);
        let json = |v: &dyn Erased| v.json();
        assert_eq!(json(&Party::Leg(Leg::A)), "\"caller\"");
        assert_eq!(json(&Party::Leg(Leg::B)), "\"callee\"");
        assert_eq!(json(&Party::System), "\"system\"");
        assert_eq!(json(&EndCause::IntentExpired), "\"intent_expired\"");
        assert_eq!(json(&CallState::Ringing), "\"ringing\"");
    }

    trait Erased {
        fn json(&self) -> String;
    }

    impl<T: Serialize> Erased for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap()
        }
    }

    #[test]
    fn ended_records_expire_and_are_capped() {
        let t0 = Instant::now();
        let registry = CallRegistry::new(
            Duration::from_secs(60),
            2,
            WallClock::new(t0, SystemTime::UNIX_EPOCH),
        );
        let end = CallEvent::Ended {
            by: Party::System,
            cause: EndCause::IntentExpired,
        };
        for id in ["1", "2", "3"] {
            registry.create(t0, id, "1001", "2001", "3001");
            registry.update(t0, id, end);
        }
        assert_eq!(registry.len(), 2, "cap of 2 ended records");
        assert!(registry.get("1").is_none());
        registry.create(t0, "4", "1001", "2001", "3001");
        registry.prune(t0 + Duration::from_secs(60));
        assert_eq!(registry.len(), 1, "only the live call remains");
        assert!(registry.get("4").is_some());
    }

    #[test]
    fn ring_and_talk_times_and_the_store_queue() {
        let t0 = Instant::now();
        let registry = CallRegistry::new(
            Duration::from_secs(600),
            100,
            WallClock::new(t0, UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
        );
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        registry.enable_persistence();
        registry.create_with(
            t0,
            "1",
            "1001",
            "2001",
            "3001",
            CallExtras {
                data: Some("order-7".into()),
                notify_url: None,
            },
        );
        registry.update(at(1000), "1", CallEvent::Invited);
        registry.update(at(1500), "1", CallEvent::Ringing);
        registry.update(at(4000), "1", CallEvent::Answered);
        assert_eq!(registry.take_settled(at(60_000), Duration::ZERO, 10), []);
        let end = CallEvent::Ended {
            by: Party::Leg(Leg::A),
            cause: EndCause::Hangup,
        };
        registry.update(at(10_000), "1", end);
        registry.set_sip_reason(at(10_000), "1", "Q.850;cause=16");
        registry.set_sip_reason(at(10_000), "1", "ignored: the first reason counts");
        let r = registry.get("1").unwrap();
        assert_eq!((r.ring_ms, r.talk_ms), (Some(3000), Some(6000)));
        assert_eq!(r.data.as_deref(), Some("order-7"));
        assert_eq!(r.sip_reason.as_deref(), Some("Q.850;cause=16"));
        // Not settled yet, then taken once.
        assert_eq!(registry.unsettled_count(), 1);
        assert!(registry
            .take_settled(at(10_500), Duration::from_secs(1), 10)
            .is_empty());
        let taken = registry.take_settled(at(11_000), Duration::from_secs(1), 10);
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].callid, "1");
        assert!(registry
            .take_settled(at(99_000), Duration::ZERO, 10)
            .is_empty());
        // The media's final counters after the take queue it again, once.
        let stats = crate::media::MediaStats::default();
        registry.set_media(at(11_100), "1", stats.clone());
        registry.set_media(at(11_200), "1", stats);
        registry.update(at(11_300), "1", CallEvent::LegAFinal(200));
        assert_eq!(registry.unsettled_count(), 1);
        assert_eq!(
            registry.take_settled(at(99_000), Duration::ZERO, 10).len(),
            1
        );

        // A call never answered: ring time to its end, no talk time.
        registry.create(t0, "2", "1001", "2001", "3001");
        registry.update(at(1000), "2", CallEvent::Invited);
        registry.update(at(3500), "2", end);
        let r = registry.get("2").unwrap();
        assert_eq!((r.ring_ms, r.talk_ms), (Some(2500), None));
        // An intent that expired: neither.
        registry.create(t0, "3", "1001", "2001", "3001");
        registry.update(at(120_000), "3", end);
        let r = registry.get("3").unwrap();
        assert_eq!((r.ring_ms, r.talk_ms), (None, None));
        // `max` bounds a take; the rest stays queued in order.
        let first = registry.take_settled(at(200_000), Duration::ZERO, 1);
        assert_eq!(first[0].callid, "2");
        assert_eq!(
            registry.take_settled(at(200_000), Duration::ZERO, 9)[0].callid,
            "3"
        );
    }

    /// A record the cap drops before the store took it is counted as lost; one already taken,
    /// or kept without persistence, is not.
    #[test]
    fn records_pruned_before_the_store_took_them_are_counted() {
        let t0 = Instant::now();
        let registry = CallRegistry::new(
            Duration::from_secs(600),
            2,
            WallClock::new(t0, SystemTime::UNIX_EPOCH),
        );
        let end = CallEvent::Ended {
            by: Party::System,
            cause: EndCause::IntentExpired,
        };
        // Without persistence nothing waits for the store: pruning loses nothing.
        for id in ["0a", "0b", "0c"] {
            registry.create(t0, id, "1001", "2001", "3001");
            registry.update(t0, id, end);
        }
        assert_eq!(registry.records_lost_unstored(), 0);
        registry.enable_persistence();
        for id in ["1", "2"] {
            registry.create(t0, id, "1001", "2001", "3001");
            registry.update(t0, id, end);
        }
        assert_eq!(
            registry.records_lost_unstored(),
            0,
            "0b, 0c were never queued"
        );
        // "1" is taken by the store; "2" still waits when "3" and "4" push both out.
        let taken = registry.take_settled(t0, Duration::ZERO, 1);
        assert_eq!(taken[0].callid, "1");
        for id in ["3", "4"] {
            registry.create(t0, id, "1001", "2001", "3001");
            registry.update(t0, id, end);
        }
        assert!(registry.get("2").is_none());
        assert_eq!(registry.records_lost_unstored(), 1);
        // The lost one is skipped by the next take; the kept ones come in order.
        let ids: Vec<_> = registry
            .take_settled(t0, Duration::ZERO, 9)
            .into_iter()
            .map(|r| r.callid)
            .collect();
        assert_eq!(ids, ["3", "4"]);
    }

    #[test]
    fn without_persistence_nothing_is_queued() {
        let t0 = Instant::now();
        let registry = CallRegistry::new(
            Duration::from_secs(600),
            100,
            WallClock::new(t0, SystemTime::now()),
        );
        registry.create(t0, "1", "1001", "2001", "3001");
        registry.update(
            t0,
            "1",
            CallEvent::Ended {
                by: Party::System,
                cause: EndCause::IntentExpired,
            },
        );
        assert_eq!(registry.unsettled_count(), 0);
        let long = "x".repeat(1000);
        registry.set_sip_reason(t0, "1", &long);
        assert_eq!(
            registry.get("1").unwrap().sip_reason.unwrap().len(),
            MAX_SIP_REASON
        );
    }
}
