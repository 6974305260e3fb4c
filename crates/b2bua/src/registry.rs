//! The call registry: what happened to every call, by `callid`, for `GET /api/calls/{callid}`.
//!
//! A record is created with its intent and follows it (intent → trying → ringing → answered →
//! ended). Ended records stay queryable for a retention period and are then dropped, oldest
//! first; a cap on ended records bounds memory under floods of refused calls.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;

use crate::call::Leg;

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
}

impl EndCause {
    /// The snake_case code of the cause.
    pub fn code(self) -> &'static str {
        match self {
            EndCause::Hangup => "hangup",
            EndCause::Cancelled => "cancelled",
            EndCause::CalleeRejected => "callee_rejected",
            EndCause::NoAnswer => "no_answer",
            EndCause::SignallingFailure => "signalling_failure",
            EndCause::MediaTimeout => "media_timeout",
            EndCause::MaxDuration => "max_duration",
            EndCause::IntentExpired => "intent_expired",
            EndCause::IntentCancelled => "intent_cancelled",
            EndCause::IntentReplaced => "intent_replaced",
            EndCause::ResourcesExhausted => "resources_exhausted",
            EndCause::Shutdown => "shutdown",
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

/// Shared registry of call records.
#[derive(Debug)]
pub struct CallRegistry {
    retention: Duration,
    max_ended: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    clock: Option<WallClock>,
    /// Boxed, so that growing the map under the lock moves pointers rather than records.
    records: HashMap<String, Box<CallRecord>, foldhash::fast::RandomState>,
    /// Ended calls in the order they ended, with the monotonic instant they ended at.
    ended: VecDeque<(Instant, String)>,
}

impl Inner {
    fn wall(&self, at: Instant) -> UnixMillis {
        self.clock.map_or(0, |clock| clock.at(at))
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
        }
    }

    /// Re-anchors the wall clock used for timestamps (see [`WallClock`]).
    pub fn sync_wall_clock(&self, clock: WallClock) {
        self.inner.lock().clock = Some(clock);
    }

    /// Records a new call in state `Intent`, created at `now`.
    pub fn create(&self, now: Instant, callid: &str, telnum: &str, caller: &str, callee: &str) {
        let mut inner = self.inner.lock();
        let created_at = inner.wall(now);
        let record = CallRecord {
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
        };
        inner.records.insert(callid.to_owned(), Box::new(record));
    }

    /// Applies one event. Events after the end are ignored, except final codes that arrive
    /// while a call is being torn down.
    pub fn update(&self, now: Instant, callid: &str, event: CallEvent) {
        let mut inner = self.inner.lock();
        let wall = inner.wall(now);
        let Some(record) = inner.records.get_mut(callid) else {
            return;
        };
        let ended = record.state == CallState::Ended;
        match event {
            CallEvent::LegAFinal(code) => {
                record.leg_a_code.get_or_insert(code);
            }
            CallEvent::LegBFinal(code) => {
                record.leg_b_code.get_or_insert(code);
            }
            _ if ended => {}
            CallEvent::Invited => {
                record.state = CallState::Trying;
                record.invite_at = Some(wall);
            }
            CallEvent::Ringing => {
                if record.state == CallState::Trying {
                    record.state = CallState::Ringing;
                    record.ringing_at = Some(wall);
                }
            }
            CallEvent::Answered => {
                record.state = CallState::Answered;
                record.answered_at = Some(wall);
            }
            CallEvent::Ended { by, cause } => {
                record.state = CallState::Ended;
                record.ended_at = Some(wall);
                record.ended_by = Some(by);
                record.end_cause = Some(cause);
                inner.ended.push_back((now, callid.to_owned()));
            }
        }
        drop(inner);
        self.prune(now);
    }

    /// Stores the latest media counters of a call.
    pub fn set_media(&self, callid: &str, stats: crate::media::MediaStats) {
        if let Some(record) = self.inner.lock().records.get_mut(callid) {
            record.media = Some(stats);
        }
    }

    pub fn get(&self, callid: &str) -> Option<CallRecord> {
        self.inner.lock().records.get(callid).map(|r| (**r).clone())
    }

    /// Drops ended records older than the retention period or beyond the cap.
    pub fn prune(&self, now: Instant) {
        let mut inner = self.inner.lock();
        while let Some((ended_at, _)) = inner.ended.front() {
            let too_old = now.saturating_duration_since(*ended_at) >= self.retention;
            if !too_old && inner.ended.len() <= self.max_ended {
                break;
            }
            if let Some((_, callid)) = inner.ended.pop_front() {
                inner.records.remove(&callid);
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
}
