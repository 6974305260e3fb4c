//! The delivery policy as a plain state machine: which event goes out when, and what each
//! outcome changes. No sockets, no clock of its own: the dispatcher feeds it events, outcomes
//! and `now`, and takes [`Send`]s and the next deadline out (quinn-proto's shape). Tests drive
//! it with a fake clock.
//!
//! **Order.** Each call has a queue of its events in the order they were pushed (which is
//! their `seq` order: the registry numbers them under one lock and the dispatcher pushes them
//! in that order). Only a queue's head can be on the wire or waiting for its retry, so event
//! n+1 of a call never leaves before event n is delivered or given up (SPEC.md *Webhooks*).
//! Calls are independent: up to `max_in_flight` heads are on the wire at once, and at most
//! `max_in_flight_per_target` of them to one target (scheme, host and port), so that one
//! app's hung endpoint (a makecall's `notify_url`) cannot hold every slot and starve the
//! others' events. A head whose target is full waits in that target's line and goes when one
//! of its requests ends.
//!
//! **Bounds.** At most `max_pending` events are held; pushing one more drops the oldest that
//! is not on the wire (SPEC: `webhooks.max_pending`, oldest first), and the drop is returned
//! for the dispatcher to record, count and log.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use store::{OutboxEvent, EVENT_DELIVERED, EVENT_DROPPED, EVENT_FAILED, EVENT_PENDING};

use crate::backoff::Backoff;

/// The knobs of the policy (`[webhooks]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScheduleConfig {
    /// Attempts per event, the first included; then it is failed (`webhooks.max_attempts`).
    pub max_attempts: u32,
    /// Events held at most (`webhooks.max_pending`).
    pub max_pending: usize,
    /// Requests on the wire at most (`webhooks.max_in_flight`).
    pub max_in_flight: usize,
    /// Requests on the wire to one target at most (`webhooks.max_in_flight_per_target`).
    pub max_in_flight_per_target: usize,
    pub backoff: Backoff,
}

impl Default for ScheduleConfig {
    fn default() -> ScheduleConfig {
        ScheduleConfig {
            max_attempts: 10,
            max_pending: 100_000,
            max_in_flight: 64,
            max_in_flight_per_target: 32,
            backoff: Backoff::default(),
        }
    }
}

/// One attempt to make now: what to POST where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Send {
    /// The schedule's own number for the event: hand it back with the outcome.
    pub no: u64,
    pub event_id: String,
    /// The event's type code (`call.ringing`).
    pub event: String,
    pub callid: String,
    pub target: String,
    pub body: Bytes,
    /// This attempt's number, 1 for the first.
    pub attempt: u32,
}

/// How an attempt went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The target answered 2xx in time.
    Delivered { status: u16 },
    /// Anything else: another status, a timeout, a connection or TLS error.
    Failed { status: Option<u16>, error: String },
}

/// A change of an event's stored state, for the outbox (as a [`store::EventAttempt`]) and the
/// counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settled {
    pub event_id: String,
    /// [`EVENT_PENDING`] (to be retried), [`EVENT_DELIVERED`], [`EVENT_FAILED`] or
    /// [`EVENT_DROPPED`].
    pub state: &'static str,
    pub attempts: u32,
    /// When the next attempt is due (pending only).
    pub retry_at: Option<Instant>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    /// The event's `at` (ms since the epoch): the delivery latency's start.
    pub created_at: u64,
}

#[derive(Debug)]
struct Item {
    event_id: String,
    event: String,
    callid: String,
    target: String,
    body: Bytes,
    created_at: u64,
    attempts: u32,
    due: Instant,
}

#[derive(Debug, Default)]
struct CallQueue {
    nos: VecDeque<u64>,
    /// Its head is on the wire.
    busy: bool,
}

/// The delivery schedule of every held event (see the module doc).
#[derive(Debug)]
pub struct Schedule {
    config: ScheduleConfig,
    next_no: u64,
    /// Every held event by number: the first is the oldest.
    items: BTreeMap<u64, Item>,
    calls: HashMap<String, CallQueue>,
    /// Heads that wait for their due time, by due time. Entries go stale when their head is
    /// dropped or sent; [`Schedule::ready_head`] skips those.
    ready: BinaryHeap<Reverse<(Instant, u64)>>,
    in_flight: usize,
    /// Targets with requests on the wire, by [`target_key`].
    targets: HashMap<String, TargetLine>,
    rng: StdRng,
}

/// One target's requests on the wire, and the heads due that wait for a slot of it (oldest
/// first; entries go stale like `ready`'s).
#[derive(Debug, Default)]
struct TargetLine {
    in_flight: usize,
    waiting: VecDeque<(Instant, u64)>,
}

/// What the per-target limit counts by: the URL up to its path (`https://host:port`).
pub fn target_key(url: &str) -> &str {
    let start = url.find("://").map_or(0, |i| i + 3);
    let end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    &url[..end]
}

impl Schedule {
    /// An empty schedule; `seed` seeds the retry jitter.
    pub fn new(config: ScheduleConfig, seed: u64) -> Schedule {
        Schedule {
            config: ScheduleConfig {
                max_attempts: config.max_attempts.max(1),
                max_pending: config.max_pending.max(1),
                max_in_flight: config.max_in_flight.max(1),
                max_in_flight_per_target: config.max_in_flight_per_target.max(1),
                backoff: config.backoff,
            },
            next_no: 0,
            items: BTreeMap::new(),
            calls: HashMap::new(),
            ready: BinaryHeap::new(),
            in_flight: 0,
            targets: HashMap::new(),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Holds `event`, due at `due`, behind the call's earlier events. `event.attempts` counts
    /// the attempts already made (an event recovered after a restart keeps them). Returns
    /// the events dropped to stay within `max_pending` (oldest first).
    pub fn push(
        &mut self,
        now: Instant,
        event: OutboxEvent,
        body: Bytes,
        due: Instant,
    ) -> Vec<Settled> {
        let no = self.next_no;
        self.next_no += 1;
        let queue = self.calls.entry(event.callid.clone()).or_default();
        queue.nos.push_back(no);
        let is_head = queue.nos.len() == 1;
        self.items.insert(
            no,
            Item {
                event_id: event.event_id,
                event: event.event,
                callid: event.callid,
                target: event.target,
                body,
                created_at: event.created_at,
                attempts: event.attempts,
                due,
            },
        );
        if is_head {
            self.ready.push(Reverse((due, no)));
        }
        self.compact_ready();
        let mut dropped = Vec::new();
        while self.items.len() > self.config.max_pending {
            match self.drop_oldest(now) {
                Some(settled) => dropped.push(settled),
                // Everything left is on the wire.
                None => break,
            }
        }
        dropped
    }

    /// The oldest event not on the wire, removed and reported as dropped.
    fn drop_oldest(&mut self, now: Instant) -> Option<Settled> {
        let no = self.items.iter().find_map(|(&no, item)| {
            let on_wire = self
                .calls
                .get(&item.callid)
                .is_some_and(|q| q.busy && q.nos.front() == Some(&no));
            (!on_wire).then_some(no)
        })?;
        let item = self.remove(no, now)?;
        self.refill(target_key(&item.target));
        Some(Settled {
            event_id: item.event_id,
            state: EVENT_DROPPED,
            attempts: item.attempts,
            retry_at: None,
            last_status: None,
            last_error: Some("dropped: more than webhooks.max_pending events waited".into()),
            created_at: item.created_at,
        })
    }

    /// Removes event `no` from the schedule and from its call's queue; when it was the head,
    /// the next one becomes due (not before `now`).
    fn remove(&mut self, no: u64, now: Instant) -> Option<Item> {
        let item = self.items.remove(&no)?;
        if let Some(queue) = self.calls.get_mut(&item.callid) {
            let was_head = queue.nos.front() == Some(&no);
            if let Some(at) = queue.nos.iter().position(|&n| n == no) {
                queue.nos.remove(at);
            }
            if was_head {
                queue.busy = false;
                match queue.nos.front() {
                    Some(&next) => {
                        if let Some(next_item) = self.items.get_mut(&next) {
                            next_item.due = next_item.due.max(now);
                            self.ready.push(Reverse((next_item.due, next)));
                        }
                    }
                    None => {
                        self.calls.remove(&item.callid);
                    }
                }
            }
        }
        Some(item)
    }

    /// Rebuilds `ready` without its stale entries once they outnumber the live ones: a
    /// dropped event's retry entry could otherwise sit in it for minutes.
    fn compact_ready(&mut self) {
        if self.ready.len() <= 2 * self.calls.len() + 64 {
            return;
        }
        let entries = std::mem::take(&mut self.ready).into_vec();
        let live: Vec<_> = entries
            .into_iter()
            .filter(|Reverse((due, no))| self.ready_head(*no, *due))
            .collect();
        self.ready = BinaryHeap::from(live);
    }

    /// Is `no` the head of its call's queue, not on the wire, and due at `due`? (Otherwise its
    /// `ready` entry is stale.)
    fn ready_head(&self, no: u64, due: Instant) -> bool {
        let Some(item) = self.items.get(&no) else {
            return false;
        };
        item.due == due
            && self
                .calls
                .get(&item.callid)
                .is_some_and(|q| !q.busy && q.nos.front() == Some(&no))
    }

    /// The next attempt to make at `now`, if one is due and fewer than `max_in_flight` are on
    /// the wire. Call until `None`.
    pub fn poll_send(&mut self, now: Instant) -> Option<Send> {
        while self.in_flight < self.config.max_in_flight {
            let &Reverse((due, no)) = self.ready.peek()?;
            if due > now {
                return None;
            }
            self.ready.pop();
            if !self.ready_head(no, due) {
                continue;
            }
            let item = self.items.get_mut(&no)?;
            let key = target_key(&item.target);
            // Looked up before inserted: the key is allocated once per target, not per send.
            if !self.targets.contains_key(key) {
                self.targets.insert(key.to_owned(), TargetLine::default());
            }
            let Some(line) = self.targets.get_mut(key) else {
                continue;
            };
            if line.in_flight >= self.config.max_in_flight_per_target {
                // Its target is full: it waits in the target's line, not in `ready`.
                line.waiting.push_back((due, no));
                continue;
            }
            line.in_flight += 1;
            item.attempts += 1;
            if let Some(queue) = self.calls.get_mut(&item.callid) {
                queue.busy = true;
            }
            self.in_flight += 1;
            return Some(Send {
                no,
                event_id: item.event_id.clone(),
                event: item.event.clone(),
                callid: item.callid.clone(),
                target: item.target.clone(),
                body: item.body.clone(),
                attempt: item.attempts,
            });
        }
        None
    }

    /// When [`poll_send`](Self::poll_send) may next have something (`None`: only a push or an
    /// outcome can change that). May be early (a stale entry): the caller just polls again.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.in_flight >= self.config.max_in_flight {
            return None;
        }
        self.ready.peek().map(|Reverse((due, _))| *due)
    }

    /// The outcome of the attempt at `no`. Returns the event's new state, `None` if the
    /// schedule no longer holds it.
    pub fn on_outcome(&mut self, now: Instant, no: u64, outcome: Outcome) -> Option<Settled> {
        let callid = self.items.get(&no)?.callid.clone();
        let queue = self.calls.get_mut(&callid)?;
        if !(queue.busy && queue.nos.front() == Some(&no)) {
            return None;
        }
        queue.busy = false;
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(target) = self.items.get(&no).map(|item| item.target.clone()) {
            self.release_slot(target_key(&target));
        }
        let (status, error) = match outcome {
            Outcome::Delivered { status } => {
                let item = self.remove(no, now)?;
                return Some(Settled {
                    event_id: item.event_id,
                    state: EVENT_DELIVERED,
                    attempts: item.attempts,
                    retry_at: None,
                    last_status: Some(status),
                    last_error: None,
                    created_at: item.created_at,
                });
            }
            Outcome::Failed { status, error } => (status, error),
        };
        let attempts = self.items.get(&no)?.attempts;
        if attempts >= self.config.max_attempts {
            let item = self.remove(no, now)?;
            return Some(Settled {
                event_id: item.event_id,
                state: EVENT_FAILED,
                attempts: item.attempts,
                retry_at: None,
                last_status: status,
                last_error: Some(error),
                created_at: item.created_at,
            });
        }
        let wait: Duration = self.config.backoff.delay(attempts, self.rng.gen::<f64>());
        let due = now + wait;
        let item = self.items.get_mut(&no)?;
        item.due = due;
        self.ready.push(Reverse((due, no)));
        Some(Settled {
            event_id: item.event_id.clone(),
            state: EVENT_PENDING,
            attempts,
            retry_at: Some(due),
            last_status: status,
            last_error: Some(error),
            created_at: item.created_at,
        })
    }

    /// A request to `key` has ended: one slot of it is free.
    fn release_slot(&mut self, key: &str) {
        if let Some(line) = self.targets.get_mut(key) {
            line.in_flight = line.in_flight.saturating_sub(1);
        }
        self.refill(key);
    }

    /// Moves as many of `key`'s waiting heads (still valid) back to `ready` as it has free
    /// slots, and forgets the line once nothing is on the wire to it and nothing waits. Also
    /// run when an event is dropped: a head released to `ready` and then dropped would
    /// otherwise leave its slot unused while others wait. Releasing too many is harmless
    /// ([`poll_send`](Self::poll_send) puts them back in line); walking the whole line per
    /// outcome would not be.
    fn refill(&mut self, key: &str) {
        let Some(mut line) = self.targets.remove(key) else {
            return;
        };
        let mut free = self
            .config
            .max_in_flight_per_target
            .saturating_sub(line.in_flight);
        while free > 0 {
            let Some((due, no)) = line.waiting.pop_front() else {
                break;
            };
            if self.ready_head(no, due) {
                self.ready.push(Reverse((due, no)));
                free -= 1;
            }
        }
        if line.in_flight > 0 || !line.waiting.is_empty() {
            self.targets.insert(key.to_owned(), line);
        }
    }

    /// Events held (pending, on the wire or waiting for a retry).
    /// Does a queue of `callid`'s events exist (an event of it pending or on the wire)?
    pub fn has_call(&self, callid: &str) -> bool {
        self.calls.contains_key(callid)
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Requests on the wire.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Calls with events held.
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// Targets with requests on the wire or heads waiting for one.
    pub fn target_count(&self) -> usize {
        self.targets.len()
    }
}

#[cfg(test)]
mod tests;
