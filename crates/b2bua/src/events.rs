//! Webhook events: every change of an intent or call, taken at the moment it happens.
//!
//! The registry builds an event while it applies the change, under the lock it already
//! holds, so the event carries the record exactly as it was then and the call's next `seq`
//! (1, 2, 3… per callid: a receiver can always order them, SPEC.md *Webhooks*). Events wait
//! in a bounded queue ([`EventQueue`]) until the webhook dispatcher takes them off the SIP
//! engine's task ([`CallRegistry::take_events`](crate::CallRegistry::take_events)); signing,
//! the outbox and HTTP happen there. With no target (neither `webhooks.url` nor the intent's
//! `notify_url`) nothing is built: webhooks off cost the engine one branch.

use std::collections::VecDeque;

use crate::registry::{CallRecord, EndCause, UnixMillis};

/// Which change an event reports; [`EventKind::code`] is its name on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// makecall registered the intent.
    IntentCreated,
    /// A newer makecall for the same number replaced the intent.
    IntentReplaced,
    /// cancelcall (or a hang-up of the waiting call) withdrew the intent.
    IntentCancelled,
    /// The intent's TTL passed before the phone called.
    IntentExpired,
    /// The phone's INVITE matched the intent; leg B is being placed.
    CallIncoming,
    /// Leg B rings or sends early media.
    CallRinging,
    /// Leg B answered; the legs are bridged.
    CallAnswered,
    /// The call is over (any cause but the intent ones above).
    CallEnded,
    /// An INVITE found no intent to consume and was refused.
    CallRefused,
}

impl EventKind {
    /// The event's name (SPEC.md): `intent.created`, `call.ringing`, ...
    pub fn code(self) -> &'static str {
        match self {
            EventKind::IntentCreated => "intent.created",
            EventKind::IntentReplaced => "intent.replaced",
            EventKind::IntentCancelled => "intent.cancelled",
            EventKind::IntentExpired => "intent.expired",
            EventKind::CallIncoming => "call.incoming",
            EventKind::CallRinging => "call.ringing",
            EventKind::CallAnswered => "call.answered",
            EventKind::CallEnded => "call.ended",
            EventKind::CallRefused => "call.refused",
        }
    }

    /// The event that reports an end with `cause`: an intent that never became a call ends
    /// with its own event, every other end is `call.ended`.
    pub fn of_end(cause: EndCause) -> EventKind {
        match cause {
            EndCause::IntentReplaced => EventKind::IntentReplaced,
            EndCause::IntentCancelled => EventKind::IntentCancelled,
            EndCause::IntentExpired => EventKind::IntentExpired,
            EndCause::Refused => EventKind::CallRefused,
            _ => EventKind::CallEnded,
        }
    }
}

/// One change of an intent or call, built by the registry at the moment of the change: what
/// the webhook dispatcher signs, keeps in the outbox and POSTs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookEvent {
    /// Unique (128 random bits, `evt_` + hex): the receiver's deduplication key
    /// (`Callbridge-Event-Id`).
    pub id: String,
    pub kind: EventKind,
    pub callid: String,
    /// 1, 2, 3… per callid, in the order the changes happened.
    pub seq: u32,
    /// When the change happened (ms since the epoch).
    pub at: UnixMillis,
    /// Where it goes: the intent's `notify_url`, else `webhooks.url`.
    pub target: String,
    /// The record as it was right after the change.
    pub record: CallRecord,
}

/// A fresh event id for an event that happened at `at` (ms since the epoch): `evt_`, then the
/// time in 12 hex digits, then 80 bits from the OS-seeded CSPRNG in 20 hex digits.
///
/// Time first, as in UUIDv7 and ULID: the outbox's unique index on the id then grows at its
/// end instead of at a random page per event. With fully random ids every insert dirtied its
/// own index page, and the commit's WAL write of those pages was the largest single cost of a
/// webhook (measured, BENCHMARKS.md *Webhooks*). 80 random bits keep ids unique and
/// unguessable; ids still sort by time, which a receiver may use but need not.
pub fn new_event_id(at: UnixMillis) -> String {
    use rand::Rng;
    let random: u128 = rand::thread_rng().gen::<u128>() >> 48;
    format!("evt_{:012x}{:020x}", at & 0xffff_ffff_ffff, random)
}

/// Events built and not yet taken by the dispatcher, oldest first, at most `max`: when the
/// dispatcher falls behind, the oldest are dropped (and counted) rather than memory growing.
#[derive(Debug)]
pub struct EventQueue {
    /// `webhooks.url`: the target of calls whose intent named none.
    pub default_target: Option<String>,
    max: usize,
    queue: VecDeque<WebhookEvent>,
    dropped: u64,
}

impl EventQueue {
    pub fn new(default_target: Option<String>, max: usize) -> EventQueue {
        EventQueue {
            default_target: default_target.filter(|t| !t.is_empty()),
            max: max.max(1),
            queue: VecDeque::new(),
            dropped: 0,
        }
    }

    /// The target of a record's events, if it has one.
    pub fn target_of<'a>(&'a self, record: &'a CallRecord) -> Option<&'a str> {
        record
            .notify_url
            .as_deref()
            .or(self.default_target.as_deref())
    }

    /// Is there a `webhooks.url` for records without a `notify_url`?
    pub fn has_default_target(&self) -> bool {
        self.default_target.is_some()
    }

    pub fn push(&mut self, event: WebhookEvent) {
        if self.queue.len() >= self.max {
            self.queue.pop_front();
            self.dropped += 1;
        }
        self.queue.push_back(event);
    }

    /// Up to `max` events, oldest first.
    pub fn take(&mut self, max: usize) -> Vec<WebhookEvent> {
        let n = max.min(self.queue.len());
        let taken = self.queue.drain(..n).collect();
        sip_core::capacity::shrink_deque(&mut self.queue);
        taken
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Events dropped because the queue was full, since the start.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_ends_map_to_their_event() {
        let a = new_event_id(1_796_220_932_142);
        assert_eq!(a.len(), 36);
        assert!(a.starts_with("evt_01a2371c502e"), "{a}");
        assert_ne!(a, new_event_id(1_796_220_932_142));
        // Later events sort after earlier ones.
        assert!(new_event_id(1_796_220_932_143) > a);
        assert!(a[4..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            EventKind::of_end(EndCause::IntentExpired).code(),
            "intent.expired"
        );
        assert_eq!(EventKind::of_end(EndCause::NoAnswer).code(), "call.ended");
        assert_eq!(EventKind::of_end(EndCause::Refused).code(), "call.refused");
    }
}
