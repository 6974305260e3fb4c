//! The call registry: what happened to every call, by `callid`, for `GET /api/calls/{callid}`.
//!
//! A record is created with its intent and follows it (intent → trying → ringing → answered →
//! ended). Ended records stay queryable for a retention period and are then dropped, oldest
//! first; a cap on ended records bounds memory under floods of refused calls.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;

/// Where a call is in its life.
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
    Ended,
}

/// Which side ended a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Party {
    /// The user's phone (leg A).
    Caller,
    /// The target (leg B).
    Callee,
    /// callbridge itself (timeouts, limits, shutdown) or the API.
    System,
}

/// Why a call ended; serialised as a snake_case code for the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
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
    /// No media ports were free.
    ResourcesExhausted,
    /// callbridge shut down.
    Shutdown,
}

/// Wall-clock milliseconds since the Unix epoch, the timestamp format of the API.
pub type UnixMillis = u64;

pub fn unix_millis(at: SystemTime) -> UnixMillis {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
    /// Boxed, so that growing the map under the lock moves pointers rather than records.
    records: HashMap<String, Box<CallRecord>, foldhash::fast::RandomState>,
    /// Ended calls in the order they ended, with the monotonic instant they ended at.
    ended: VecDeque<(Instant, String)>,
}

impl CallRegistry {
    /// `retention`: how long ended calls stay queryable; `max_ended`: how many at most.
    pub fn new(retention: Duration, max_ended: usize) -> CallRegistry {
        CallRegistry {
            retention,
            max_ended,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Records a new call in state `Intent`.
    pub fn create(&self, callid: &str, telnum: &str, caller: &str, callee: &str) {
        let record = CallRecord {
            callid: callid.to_owned(),
            telnum: telnum.to_owned(),
            caller: caller.to_owned(),
            callee: callee.to_owned(),
            state: CallState::Intent,
            created_at: unix_millis(SystemTime::now()),
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
        self.inner
            .lock()
            .records
            .insert(callid.to_owned(), Box::new(record));
    }

    /// Applies one event. Events after the end are ignored, except final codes that arrive
    /// while a call is being torn down.
    pub fn update(&self, now: Instant, callid: &str, event: CallEvent) {
        let wall = unix_millis(SystemTime::now());
        let mut inner = self.inner.lock();
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
        let registry = CallRegistry::new(Duration::from_secs(60), 100);
        let t0 = Instant::now();
        registry.create("7", "1001", "2001", "3001");
        assert_eq!(registry.get("7").unwrap().state, CallState::Intent);
        registry.update(t0, "7", CallEvent::Invited);
        registry.update(t0, "7", CallEvent::Ringing);
        registry.update(t0, "7", CallEvent::LegBFinal(200));
        registry.update(t0, "7", CallEvent::Answered);
        registry.update(t0, "7", CallEvent::LegAFinal(200));
        assert_eq!(registry.active_count(), 1);
        registry.update(
            t0,
            "7",
            CallEvent::Ended {
                by: Party::Callee,
                cause: EndCause::Hangup,
            },
        );
        let r = registry.get("7").unwrap();
        assert_eq!(r.state, CallState::Ended);
        assert!(r.invite_at.is_some() && r.ringing_at.is_some() && r.answered_at.is_some());
        assert!(r.ended_at >= r.answered_at);
        assert_eq!((r.leg_a_code, r.leg_b_code), (Some(200), Some(200)));
        assert_eq!(r.ended_by, Some(Party::Callee));
        assert_eq!(registry.active_count(), 0);
        // Late events do not resurrect an ended call.
        registry.update(t0, "7", CallEvent::Answered);
        assert_eq!(registry.get("7").unwrap().state, CallState::Ended);
    }

    #[test]
    fn ended_records_expire_and_are_capped() {
        let registry = CallRegistry::new(Duration::from_secs(60), 2);
        let t0 = Instant::now();
        let end = CallEvent::Ended {
            by: Party::System,
            cause: EndCause::IntentExpired,
        };
        for id in ["1", "2", "3"] {
            registry.create(id, "1001", "2001", "3001");
            registry.update(t0, id, end);
        }
        assert_eq!(registry.len(), 2, "cap of 2 ended records");
        assert!(registry.get("1").is_none());
        registry.create("4", "1001", "2001", "3001");
        registry.prune(t0 + Duration::from_secs(60));
        assert_eq!(registry.len(), 1, "only the live call remains");
        assert!(registry.get("4").is_some());
    }
}
