//! Timer values (RFC 3261 §17, Table 4) and the one deadline queue that holds every
//! transaction's timers.
//!
//! A transaction never owns a task or a `sleep`: it records the deadline it currently has armed
//! in each of its timer slots and pushes `(deadline, transaction, slot)` into [`TimerQueue`].
//! Re-arming or cancelling only rewrites the slot; the stale heap entry is recognised and skipped
//! when it surfaces (lazy deletion), so arming is O(log n) and cancelling is O(1).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use super::TxId;

/// RFC 3261 timer base values. Every derived timer (A–K, L, M) is computed from these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimerConfig {
    /// RTT estimate (default 500 ms): first retransmission interval, and 64·T1 is the
    /// transaction timeout (Timers B, F, H, J, L, M).
    pub t1: Duration,
    /// Cap of the non-INVITE request and INVITE response retransmission interval (default 4 s).
    pub t2: Duration,
    /// Maximum time a message stays in the network (default 5 s): Timers I and K on UDP.
    pub t4: Duration,
    /// Timer D: how long a client INVITE transaction absorbs final-response retransmissions
    /// on UDP (at least 32 s, RFC 3261 §17.1.1.2).
    pub timer_d: Duration,
    /// Optional Timer C (RFC 3261 §16.6): a client INVITE transaction that has seen a
    /// provisional response but no final one for this long reports `Timeout`.
    pub timer_c: Option<Duration>,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            timer_d: Duration::from_secs(32),
            timer_c: None,
        }
    }
}

impl TimerConfig {
    /// 64·T1: Timers B, F, H, J, L and M.
    pub fn timeout(&self) -> Duration {
        self.t1 * 64
    }
}

/// Which timer slot of a transaction a queue entry belongs to. A transaction has at most one
/// deadline armed per slot at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Slot {
    /// A, E, G, or the 2xx retransmission of the Accepted state.
    Retransmit = 0,
    /// B, F, H, L (ACK wait), C, or the server non-INVITE guard.
    Timeout = 1,
    /// D, I, J, K, M: how long a finished transaction lingers to absorb retransmissions.
    Linger = 2,
}

pub(crate) const SLOTS: usize = 3;

/// The deadlines a transaction has armed, one per [`Slot`].
#[derive(Clone, Debug, Default)]
pub(crate) struct Armed([Option<Instant>; SLOTS]);

impl Armed {
    pub(crate) fn get(&self, slot: Slot) -> Option<Instant> {
        self.0[slot as usize]
    }

    pub(crate) fn clear(&mut self, slot: Slot) {
        self.0[slot as usize] = None;
    }

    fn set(&mut self, slot: Slot, at: Instant) {
        self.0[slot as usize] = Some(at);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    at: Instant,
    tx: TxId,
    slot: Slot,
}

/// The single deadline structure of the transaction layer: a min-heap with lazy deletion.
#[derive(Debug, Default)]
pub(crate) struct TimerQueue {
    heap: BinaryHeap<Reverse<Entry>>,
}

impl TimerQueue {
    /// Arms `slot` of `tx` at `at`, replacing whatever that slot had armed.
    pub(crate) fn arm(&mut self, armed: &mut Armed, tx: TxId, slot: Slot, at: Instant) {
        armed.set(slot, at);
        self.heap.push(Reverse(Entry { at, tx, slot }));
    }

    /// The earliest entry, whether or not it is still armed (the caller validates it).
    pub(crate) fn peek(&self) -> Option<(Instant, TxId, Slot)> {
        self.heap.peek().map(|Reverse(e)| (e.at, e.tx, e.slot))
    }

    pub(crate) fn pop(&mut self) {
        self.heap.pop();
    }

    /// Entries in the heap, stale ones included (for tests and stats).
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// Gives back the capacity of a past burst (see [`crate::capacity`]).
    pub(crate) fn shrink_if_sparse(&mut self) {
        crate::capacity::shrink_heap(&mut self.heap);
    }

    pub(crate) fn clear(&mut self) {
        self.heap.clear();
    }
}
