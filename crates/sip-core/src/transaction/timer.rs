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

/// A min-heap of deadlines with lazy deletion: the one deadline structure of the transaction
/// layer (keyed by transaction and timer slot) and of the call engine (keyed by call and call
/// timer).
///
/// The owner records, next to each keyed thing, the deadline it currently has armed; pushing a
/// new deadline for a key leaves the old entry in the heap, and the owner's `is_armed` check
/// recognises it as stale when it surfaces ([`next_armed`](Self::next_armed),
/// [`pop_due`](Self::pop_due)). Arming is O(log n) and cancelling is O(1) (forget the recorded
/// deadline); no entry is ever searched for.
///
/// A stale entry that never reaches the front would stay until its deadline: a call's 4-hour
/// `sip.max_call_secs` timer, cancelled when a 10-second call ends, would hold its entry for 4
/// hours, so the heap would grow with the call rate for that long (measured: ~30 bytes a call,
/// the slow RSS creep of the issue-10 soak). So whenever the heap has doubled since it was
/// last compacted, the stale entries are dropped in one pass: O(1) amortised per push, and the
/// heap holds at most twice the armed entries (or [`COMPACT_FLOOR`]).
#[derive(Debug)]
pub struct TimerQueue<K> {
    heap: BinaryHeap<Reverse<(Instant, K)>>,
    /// Size beyond which the next check compacts the heap.
    compact_at: usize,
}

/// Below this many entries the heap is never compacted (a pass would cost more than the
/// memory it frees).
pub const COMPACT_FLOOR: usize = 4096;

impl<K: Ord> Default for TimerQueue<K> {
    fn default() -> Self {
        TimerQueue {
            heap: BinaryHeap::new(),
            compact_at: COMPACT_FLOOR,
        }
    }
}

impl<K: Ord + Copy> TimerQueue<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a deadline for `key`; an earlier one for the same key becomes stale once the
    /// owner's record says `at`.
    pub fn push(&mut self, at: Instant, key: K) {
        self.heap.push(Reverse((at, key)));
    }

    /// The earliest entry, whether or not it is still armed (the caller validates it).
    pub fn peek(&self) -> Option<(Instant, K)> {
        self.heap.peek().map(|Reverse(entry)| *entry)
    }

    pub fn pop(&mut self) -> Option<(Instant, K)> {
        self.heap.pop().map(|Reverse(entry)| entry)
    }

    /// The earliest deadline still armed; stale entries in front of it are dropped.
    pub fn next_armed(&mut self, mut is_armed: impl FnMut(Instant, K) -> bool) -> Option<Instant> {
        self.compact_if_grown(&mut is_armed);
        while let Some((at, key)) = self.peek() {
            if is_armed(at, key) {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }

    /// Takes the earliest entry due at or before `now` that is still armed, dropping stale
    /// ones on the way; `None` when nothing armed is due. The caller clears its record of the
    /// deadline before acting on it.
    pub fn pop_due(
        &mut self,
        now: Instant,
        mut is_armed: impl FnMut(Instant, K) -> bool,
    ) -> Option<(Instant, K)> {
        self.compact_if_grown(&mut is_armed);
        while let Some((at, key)) = self.peek() {
            if at > now {
                return None;
            }
            self.heap.pop();
            self.shrink_if_sparse();
            if is_armed(at, key) {
                return Some((at, key));
            }
        }
        None
    }

    /// Drops every stale entry once the heap has doubled since the last time (see the type's
    /// documentation).
    fn compact_if_grown(&mut self, is_armed: &mut impl FnMut(Instant, K) -> bool) {
        if self.heap.len() <= self.compact_at {
            return;
        }
        self.heap.retain(|Reverse((at, key))| is_armed(*at, *key));
        self.compact_at = self.heap.len().saturating_mul(2).max(COMPACT_FLOOR);
        self.shrink_if_sparse();
    }

    /// Entries in the heap, stale ones included (for tests and stats).
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Gives back the capacity of a past burst (see [`crate::capacity`]).
    pub fn shrink_if_sparse(&mut self) {
        crate::capacity::shrink_heap(&mut self.heap);
    }

    pub fn clear(&mut self) {
        self.heap.clear();
    }
}

impl TimerQueue<(TxId, Slot)> {
    /// Arms `slot` of `tx` at `at`, replacing whatever that slot had armed.
    pub(crate) fn arm(&mut self, armed: &mut Armed, tx: TxId, slot: Slot, at: Instant) {
        armed.set(slot, at);
        self.push(at, (tx, slot));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_entries_are_skipped_and_due_ones_come_in_order() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut armed: std::collections::HashMap<u8, Instant> = Default::default();
        let mut queue = TimerQueue::new();
        for (key, at) in [(1u8, t0 + 3 * s), (2, t0 + s), (3, t0 + 2 * s)] {
            armed.insert(key, at);
            queue.push(at, key);
        }
        // Re-arm 2 later: its first entry is stale.
        armed.insert(2, t0 + 4 * s);
        queue.push(t0 + 4 * s, 2);
        fn check(
            armed: &std::collections::HashMap<u8, Instant>,
        ) -> impl FnMut(Instant, u8) -> bool + '_ {
            move |at, key| armed.get(&key) == Some(&at)
        }
        assert_eq!(queue.next_armed(check(&armed)), Some(t0 + 2 * s));
        assert_eq!(queue.len(), 3, "the stale entry in front was dropped");
        assert_eq!(
            queue.pop_due(t0 + 2 * s, check(&armed)),
            Some((t0 + 2 * s, 3))
        );
        armed.remove(&3);
        assert_eq!(queue.pop_due(t0 + 2 * s, check(&armed)), None);
        assert_eq!(
            queue.pop_due(t0 + 10 * s, check(&armed)),
            Some((t0 + 3 * s, 1))
        );
        armed.remove(&1);
        assert_eq!(
            queue.pop_due(t0 + 10 * s, check(&armed)),
            Some((t0 + 4 * s, 2))
        );
        armed.remove(&2);
        assert!(queue.is_empty());
    }

    #[test]
    fn stale_entries_far_in_the_future_do_not_pile_up() {
        // Calls whose 4-hour limit was armed, then cancelled when each ended after seconds:
        // none of those entries would reach the front for hours.
        let t0 = Instant::now();
        let far = t0 + Duration::from_secs(4 * 3600);
        let mut armed: std::collections::HashMap<u32, Instant> = Default::default();
        let mut queue = TimerQueue::new();
        for call in 0..100_000u32 {
            armed.insert(call, far + Duration::from_millis(u64::from(call)));
            queue.push(far + Duration::from_millis(u64::from(call)), call);
            if call >= 10 {
                // Only the last ten are still up.
                armed.remove(&(call - 10));
            }
            let next = queue.next_armed(|at, key| armed.get(&key) == Some(&at));
            assert!(next.is_some());
        }
        assert!(
            queue.len() <= COMPACT_FLOOR + 1,
            "{} entries for {} armed",
            queue.len(),
            armed.len()
        );
        // The ten armed ones are all still there, in order.
        let mut fired = Vec::new();
        while let Some((_, call)) = queue.pop_due(far + Duration::from_secs(3600), |at, key| {
            armed.get(&key) == Some(&at)
        }) {
            armed.remove(&call);
            fired.push(call);
        }
        assert_eq!(fired, (99_990..100_000).collect::<Vec<_>>());
    }
}
