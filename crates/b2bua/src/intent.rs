//! The intent table: "telnum will dial dedicated number `caller` to reach `callee`", one per
//! telnum, the latest wins, each valid for a TTL.
//!
//! Shaped like mini-redis's `db.rs`: a `HashMap` for O(1) lookup by telnum plus a queue ordered
//! by expiry that one sweeper walks from the front, held per shard (below) behind a short
//! `parking_lot::Mutex` that is never held across an `.await`. Time is always an argument, so
//! tests drive expiry with a fake clock.
//!
//! Every intent lives for the same TTL, so expiries arrive in registration order and the queue
//! is a FIFO rather than a sorted tree: registering pushes at the back, and an intent that is
//! replaced, cancelled or consumed leaves its queue entry behind, recognised as stale by its
//! callid when the sweeper reaches it (or dropped by a compaction when stale entries pile up).
//! Intents are boxed in the map so that growing it moves pointers, not intents: with a new
//! telnum on every makecall the map doubles under the lock, and that move was the API's p99.
//! For the same reason, and so that API workers rarely wait for each other, the table is
//! [`SHARDS`] independent maps and queues chosen by a hash of the telnum; the intent count that
//! `intent.max_pending` bounds is kept across them in one atomic.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sip_core::capacity::shrink_map;

/// A registered call intent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intent {
    /// Opaque identifier of the call this intent will become (decimal digits, as in the seed).
    pub callid: String,
    /// The user's real number, without a leading `+`.
    pub telnum: String,
    /// The dedicated number the user will dial, shown to the target as the caller.
    pub caller: String,
    /// The target number.
    pub callee: String,
    pub created: Instant,
    pub expires: Instant,
}

/// Why an incoming call found no intent to consume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoIntent {
    #[error("no call intent registered for this number")]
    None,
    #[error("the call intent expired")]
    Expired,
    #[error("the call intent is for another dedicated number")]
    OtherNumber,
    /// `intent.require_ownership` is on and the dialled dedicated number is not assigned to
    /// the calling number.
    #[error("the dedicated number is not assigned to the calling number")]
    NotOwned,
}

impl NoIntent {
    /// The snake_case code of the refusal: in metrics, logs and the CTI answer.
    pub fn code(self) -> &'static str {
        match self {
            NoIntent::None => "no_intent",
            NoIntent::Expired => "intent_expired",
            NoIntent::OtherNumber => "other_number",
            NoIntent::NotOwned => "number_not_owned",
        }
    }
}

/// makecall refused: the table already holds its maximum of pending intents (a flood of
/// makecalls with distinct numbers must not grow memory without bound).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{max} call intents are pending; no room for another")]
pub struct IntentTableFull {
    pub max: usize,
}

/// Default of `intent.max_pending`.
pub const DEFAULT_MAX_PENDING: usize = 1_000_000;

/// Shared table of pending intents; clone the `Arc` around it to share with the API.
#[derive(Debug)]
pub struct IntentTable {
    ttl: Duration,
    max_pending: usize,
    ids: CallIdGenerator,
    /// Intents held, over all shards (what `max_pending` bounds).
    pending: AtomicUsize,
    shards: Box<[Mutex<State>]>,
    /// Chooses a telnum's shard.
    shard_hasher: foldhash::fast::RandomState,
}

/// Independent parts of the table (see the module documentation).
pub const SHARDS: usize = 16;

#[derive(Debug, Default)]
struct State {
    by_telnum: HashMap<String, Box<Intent>, foldhash::fast::RandomState>,
    /// Registrations in expiry order (see the module documentation), live or stale.
    expiries: VecDeque<Expiry>,
}

/// One registration in the expiry queue; it is live while `by_telnum[telnum]` has its callid.
#[derive(Debug)]
struct Expiry {
    at: Instant,
    callid: String,
    telnum: String,
}

impl State {
    /// The expiry of the oldest live intent, dropping the stale entries in front of it.
    fn next_live_expiry(&mut self) -> Option<Instant> {
        loop {
            let front = self.expiries.front().map(|e| (self.is_live(e), e.at));
            match front {
                Some((true, at)) => return Some(at),
                Some((false, _)) => {
                    self.expiries.pop_front();
                }
                None => return None,
            }
        }
    }

    fn is_live(&self, entry: &Expiry) -> bool {
        self.by_telnum
            .get(&entry.telnum)
            .is_some_and(|i| i.callid == entry.callid)
    }

    /// Queues a registration. Past twice the live intents (and a floor, so small tables do
    /// not compact on every call) the stale entries are dropped: a flood of makecalls for one
    /// number must not grow the queue for a whole TTL.
    fn queue_expiry(&mut self, intent: &Intent) {
        self.expiries.push_back(Expiry {
            at: intent.expires,
            callid: intent.callid.clone(),
            telnum: intent.telnum.clone(),
        });
        if self.expiries.len() > COMPACT_FLOOR.max(2 * self.by_telnum.len()) {
            let mut queue = std::mem::take(&mut self.expiries);
            queue.retain(|e| self.is_live(e));
            self.expiries = queue;
            self.expiries.shrink_to(self.expiries.len() * 2);
        }
    }
}

/// Stale expiry entries a shard tolerates before a compaction, whatever its size.
const COMPACT_FLOOR: usize = 1024;

/// Strips the leading `+` that SPEC.md says is ignored when comparing numbers.
pub fn normalize_number(number: &str) -> &str {
    number.strip_prefix('+').unwrap_or(number)
}

impl IntentTable {
    pub fn new(ttl: Duration) -> IntentTable {
        IntentTable::with_limit(ttl, DEFAULT_MAX_PENDING)
    }

    /// A table that refuses new telnums once `max_pending` intents are held (replacing an
    /// intent of a telnum already held is always allowed).
    pub fn with_limit(ttl: Duration, max_pending: usize) -> IntentTable {
        IntentTable {
            ttl,
            max_pending,
            ids: CallIdGenerator,
            pending: AtomicUsize::new(0),
            shards: (0..SHARDS).map(|_| Mutex::new(State::default())).collect(),
            shard_hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// The shard holding `telnum` (already normalized).
    fn shard(&self, telnum: &str) -> &Mutex<State> {
        let index = self.shard_hasher.hash_one(telnum) as usize % SHARDS;
        &self.shards[index]
    }

    /// Counts an intent that left the table.
    fn forget_one(&self) {
        self.pending.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Most intents held at once (`intent.max_pending`).
    pub fn max_pending(&self) -> usize {
        self.max_pending
    }

    /// Registers an intent, replacing any earlier one of the same telnum. Returns the new
    /// intent and the one it replaced, or [`IntentTableFull`] for a new telnum when the table
    /// is at its limit.
    pub fn register(
        &self,
        now: Instant,
        telnum: &str,
        caller: &str,
        callee: &str,
    ) -> Result<(Intent, Option<Intent>), IntentTableFull> {
        let intent = Intent {
            callid: self.ids.next(),
            telnum: normalize_number(telnum).to_owned(),
            caller: normalize_number(caller).to_owned(),
            callee: normalize_number(callee).to_owned(),
            created: now,
            expires: now + self.ttl,
        };
        let mut state = self.shard(&intent.telnum).lock();
        // A new telnum reserves its place in the count first, so that concurrent makecalls on
        // other shards cannot overshoot `max_pending` together.
        if !state.by_telnum.contains_key(&intent.telnum)
            && self.pending.fetch_add(1, Ordering::Relaxed) >= self.max_pending
        {
            self.forget_one();
            return Err(IntentTableFull {
                max: self.max_pending,
            });
        }
        let replaced = state
            .by_telnum
            .insert(intent.telnum.clone(), Box::new(intent.clone()));
        state.queue_expiry(&intent);
        Ok((intent, replaced.map(|old| *old)))
    }

    /// Removes the pending intent of `telnum`, if any.
    pub fn cancel(&self, telnum: &str) -> Option<Intent> {
        let telnum = normalize_number(telnum);
        // Its expiry entry goes stale and is dropped by the sweeper.
        let intent = self.shard(telnum).lock().by_telnum.remove(telnum)?;
        self.forget_one();
        Some(*intent)
    }

    /// Removes the pending intent of `telnum` only if it is the one of call `callid` (a newer
    /// makecall may have replaced it meanwhile: that one is left alone).
    pub fn cancel_callid(&self, telnum: &str, callid: &str) -> Option<Intent> {
        let telnum = normalize_number(telnum);
        let mut shard = self.shard(telnum).lock();
        if shard.by_telnum.get(telnum).map(|i| i.callid.as_str()) != Some(callid) {
            return None;
        }
        let intent = shard.by_telnum.remove(telnum)?;
        drop(shard);
        self.forget_one();
        Some(*intent)
    }

    /// Consumes the intent of `calling` if it is for the dialled dedicated number and still
    /// valid. An intent for another dedicated number, or an expired one, is left in place.
    pub fn take_matching(
        &self,
        now: Instant,
        calling: &str,
        dialled: &str,
    ) -> Result<Intent, NoIntent> {
        self.take_if(now, calling, |intent| {
            intent.caller == normalize_number(dialled)
        })
    }

    /// Like [`take_matching`](Self::take_matching), but `to` may also be the intent's callee
    /// (the seed's CTI example sends the target as `to`). One lock: no other makecall can
    /// slip in between the check and the take.
    pub fn take_matching_caller_or_callee(
        &self,
        now: Instant,
        calling: &str,
        to: &str,
    ) -> Result<Intent, NoIntent> {
        let to = normalize_number(to);
        self.take_if(now, calling, |intent| {
            intent.caller == to || intent.callee == to
        })
    }

    fn take_if(
        &self,
        now: Instant,
        calling: &str,
        matches: impl Fn(&Intent) -> bool,
    ) -> Result<Intent, NoIntent> {
        let telnum = normalize_number(calling);
        let mut state = self.shard(telnum).lock();
        let intent = state.by_telnum.get(telnum).ok_or(NoIntent::None)?;
        if intent.expires <= now {
            // Left for `purge_expired`, which reports what it removes.
            return Err(NoIntent::Expired);
        }
        if !matches(intent) {
            return Err(NoIntent::OtherNumber);
        }
        let intent = state.by_telnum.remove(telnum).ok_or(NoIntent::None)?;
        self.forget_one();
        Ok(*intent)
    }

    /// Removes every intent whose expiry is at or before `now` and returns them.
    pub fn purge_expired(&self, now: Instant) -> Vec<Intent> {
        let mut purged = Vec::new();
        for shard in self.shards.iter() {
            let mut state = shard.lock();
            while state.expiries.front().is_some_and(|e| e.at <= now) {
                let Some(entry) = state.expiries.pop_front() else {
                    break;
                };
                if state.is_live(&entry) {
                    if let Some(intent) = state.by_telnum.remove(&entry.telnum) {
                        self.forget_one();
                        purged.push(*intent);
                    }
                }
            }
            shrink_map(&mut state.by_telnum);
        }
        purged
    }

    /// When the sweeper should next run.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.shards
            .iter()
            .filter_map(|shard| shard.lock().next_live_expiry())
            .min()
    }

    /// Number of pending intents.
    pub fn len(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pending intent of `telnum`, without consuming it.
    pub fn get(&self, telnum: &str) -> Option<Intent> {
        let telnum = normalize_number(telnum);
        self.shard(telnum)
            .lock()
            .by_telnum
            .get(telnum)
            .map(|i| (**i).clone())
    }
}

/// Issues call ids: 20 decimal digits drawn from the thread-local CSPRNG (ChaCha, seeded by
/// the OS), about 66 random bits (SPEC: at least 64). A callid is what `GET /api/calls/{id}`
/// takes, so one token holder must not be able to guess another user's from its own: counting
/// up, as the first version did, gave every call record away.
#[derive(Debug)]
struct CallIdGenerator;

/// A fresh callid (20 random decimal digits), for a call that has no intent (a refused
/// INVITE's `call.refused` event).
pub fn new_callid() -> String {
    CallIdGenerator.next()
}

/// The smallest and one past the largest id: every id has exactly 20 digits.
const CALLID_RANGE: std::ops::Range<u128> = 10_000_000_000_000_000_000..100_000_000_000_000_000_000;

impl CallIdGenerator {
    fn next(&self) -> String {
        use rand::Rng;
        rand::thread_rng().gen_range(CALLID_RANGE).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(120);

    #[test]
    fn register_then_consume_once() {
        let table = IntentTable::new(TTL);
        let t0 = Instant::now();
        let (intent, replaced) = table.register(t0, "+1001", "2001", "3001").unwrap();
        assert!(replaced.is_none());
        assert_eq!(intent.telnum, "1001");
        assert!(intent.callid.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(table.ttl(), TTL);
        assert_eq!(intent.expires, t0 + TTL);
        assert_eq!((table.len(), table.is_empty()), (1, false));
        let got = table
            .take_matching(t0 + Duration::from_secs(1), "1001", "+2001")
            .unwrap();
        assert_eq!(got, intent);
        assert_eq!(
            table.take_matching(t0 + Duration::from_secs(2), "1001", "2001"),
            Err(NoIntent::None)
        );
        assert!(table.is_empty());
        assert_eq!(table.next_expiry(), None);
    }

    #[test]
    fn call_ids_are_twenty_random_digits_and_not_sequential() {
        let ids: Vec<u128> = (0..2000)
            .map(|_| CallIdGenerator.next())
            .map(|id| {
                assert!(
                    id.len() == 20 && id.bytes().all(|b| b.is_ascii_digit()),
                    "{id}"
                );
                id.parse().unwrap()
            })
            .collect();
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        // Consecutive ids are far apart: knowing one says nothing about the next. (A counter
        // gives differences of 1; random draws over ~2^66 differ by more than 2^40 except with
        // probability ~2^-26 per pair.)
        let close = ids
            .windows(2)
            .filter(|w| w[0].abs_diff(w[1]) < 1 << 40)
            .count();
        assert_eq!(close, 0);
        // Every digit position varies (the leading one over 1-9).
        for position in 0..20 {
            let digits: std::collections::HashSet<u8> = ids
                .iter()
                .map(|id| id.to_string().as_bytes()[position])
                .collect();
            assert!(digits.len() >= 9, "digit {position} barely varies");
        }
    }

    #[test]
    fn latest_intent_wins_and_old_expiry_entry_goes() {
        let table = IntentTable::new(TTL);
        let t0 = Instant::now();
        let (first, _) = table.register(t0, "1001", "2001", "3001").unwrap();
        let (second, replaced) = table
            .register(t0 + Duration::from_secs(10), "1001", "2001", "3002")
            .unwrap();
        assert_eq!(replaced, Some(first.clone()));
        assert_ne!(first.callid, second.callid);
        assert_eq!(table.len(), 1);
        assert_eq!(table.next_expiry(), Some(second.expires));
        // The first intent's expiry passes without removing the second.
        assert!(table.purge_expired(first.expires).is_empty());
        let got = table.take_matching(first.expires, "1001", "2001").unwrap();
        assert_eq!(got.callee, "3002");
    }

    #[test]
    fn expiry_by_sweep_and_by_lookup() {
        let table = IntentTable::new(TTL);
        let t0 = Instant::now();
        table.register(t0, "1001", "2001", "3001").unwrap();
        table
            .register(t0 + Duration::from_secs(60), "1002", "2002", "3002")
            .unwrap();
        assert!(table
            .purge_expired(t0 + TTL - Duration::from_millis(1))
            .is_empty());
        assert_eq!(table.purge_expired(t0 + TTL).len(), 1);
        assert_eq!(table.len(), 1);
        assert_eq!(
            table.take_matching(t0 + TTL + Duration::from_secs(60), "1002", "2002"),
            Err(NoIntent::Expired)
        );
        assert_eq!(
            table
                .purge_expired(t0 + TTL + Duration::from_secs(60))
                .len(),
            1
        );
        assert!(table.is_empty());
        assert_eq!(table.next_expiry(), None);
    }

    #[test]
    fn cancel_and_wrong_number() {
        let table = IntentTable::new(TTL);
        let t0 = Instant::now();
        table.register(t0, "1001", "2001", "3001").unwrap();
        assert_eq!(
            table.take_matching(t0, "1001", "2999"),
            Err(NoIntent::OtherNumber)
        );
        assert_eq!(table.len(), 1, "a call to another number does not consume");
        assert!(table.cancel("+1001").is_some());
        assert!(table.cancel("1001").is_none());
        assert_eq!(table.take_matching(t0, "1001", "2001"), Err(NoIntent::None));
        assert_eq!(table.next_expiry(), None);
    }

    #[test]
    fn get_reads_the_pending_intent_without_consuming_it() {
        let table = IntentTable::new(TTL);
        let t0 = Instant::now();
        let (intent, _) = table.register(t0, "+1001", "2001", "3001").unwrap();
        assert_eq!(table.get("1001"), Some(intent.clone()));
        assert_eq!(table.get("+1001"), Some(intent.clone()));
        assert_eq!(table.get("1002"), None);
        assert_eq!(table.len(), 1);
        assert_eq!(table.take_matching(t0, "1001", "2001"), Ok(intent));
        assert_eq!(table.get("1001"), None);
    }

    #[test]
    fn cti_claim_matches_the_dedicated_number_or_the_callee() {
        let table = IntentTable::new(TTL);
        let t0 = Instant::now();
        let (first, _) = table.register(t0, "1001", "2001", "3001").unwrap();
        let (second, _) = table.register(t0, "1002", "2002", "3002").unwrap();
        // Neither the dedicated number nor the callee: refused, and the intent stays.
        assert_eq!(
            table.take_matching_caller_or_callee(t0, "1001", "9999"),
            Err(NoIntent::OtherNumber)
        );
        // Another intent's number is not this one's either.
        assert_eq!(
            table.take_matching_caller_or_callee(t0, "1001", "3002"),
            Err(NoIntent::OtherNumber)
        );
        assert_eq!(table.len(), 2);
        // `to` is the dedicated number (with the `+` SPEC.md ignores)...
        assert_eq!(
            table.take_matching_caller_or_callee(t0, "+1001", "+2001"),
            Ok(first)
        );
        // ... or the callee, as in the seed's CTI example.
        assert_eq!(
            table.take_matching_caller_or_callee(t0, "1002", "3002"),
            Ok(second)
        );
        assert!(table.is_empty());
        assert_eq!(
            table.take_matching_caller_or_callee(t0, "1002", "3002"),
            Err(NoIntent::None)
        );
    }

    #[test]
    fn call_ids_are_unique() {
        let table = IntentTable::new(TTL);
        let t0 = Instant::now();
        let mut seen = std::collections::HashSet::new();
        for i in 0..1000 {
            let (intent, _) = table.register(t0, &format!("{i}"), "2001", "3001").unwrap();
            assert!(seen.insert(intent.callid));
        }
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    /// `n` telnums that all land in the shard of the first (expiry queues are per shard).
    fn telnums_in_one_shard(table: &IntentTable, n: usize) -> Vec<String> {
        let shard = table.shard("100000");
        let telnums: Vec<String> = (100_000..100_000 + 100 * n)
            .map(|i| i.to_string())
            .filter(|telnum| std::ptr::eq(table.shard(telnum), shard))
            .take(n)
            .collect();
        assert_eq!(telnums.len(), n, "telnums do not spread over the shards");
        telnums
    }

    fn queued(table: &IntentTable) -> usize {
        table.shards.iter().map(|s| s.lock().expiries.len()).sum()
    }

    #[test]
    fn stale_expiry_entries_wait_for_as_many_as_the_live_ones_then_go() {
        let table = IntentTable::new(Duration::from_secs(120));
        let now = Instant::now();
        let telnums = telnums_in_one_shard(&table, 2000);
        for telnum in &telnums {
            table.register(now, telnum, "2001", "3001").unwrap();
        }
        // A compaction walks the whole queue under the shard's lock: with many live intents
        // it waits until the stale entries are about as many, so a makecall pays for it
        // O(1) amortized instead of a walk each time.
        for _ in 0..100 {
            table.register(now, &telnums[0], "2001", "3001").unwrap();
        }
        assert_eq!(queued(&table), 2100);
        // Every intent consumed: the queue is all stale, however long it was, and goes at
        // the next makecall rather than waiting a TTL for the sweeper.
        for telnum in &telnums {
            table.take_matching(now, telnum, "2001").unwrap();
        }
        for _ in 0..3000 {
            table.register(now, &telnums[0], "2001", "3001").unwrap();
        }
        let left = queued(&table);
        assert!(
            left <= COMPACT_FLOOR + 1,
            "{left} expiry entries for one intent"
        );
        assert_eq!(table.len(), 1);
        assert_eq!(table.purge_expired(now + Duration::from_secs(121)).len(), 1);
        assert!(table.is_empty());
    }

    #[test]
    fn a_makecall_flood_for_one_number_keeps_the_expiry_queue_bounded() {
        let table = IntentTable::new(Duration::from_secs(120));
        let now = Instant::now();
        for _ in 0..20_000 {
            table.register(now, "1001", "2001", "3001").unwrap();
        }
        let queued: usize = table.shards.iter().map(|s| s.lock().expiries.len()).sum();
        assert!(
            queued <= COMPACT_FLOOR + 1,
            "{queued} expiry entries for one intent"
        );
        assert_eq!(table.len(), 1);
        // The live entry survived the compactions: the intent still expires.
        assert_eq!(table.purge_expired(now + Duration::from_secs(121)).len(), 1);
        assert!(table.is_empty() && table.next_expiry().is_none());
    }

    #[test]
    fn the_limit_holds_across_shards_under_concurrent_makecalls() {
        let table = std::sync::Arc::new(IntentTable::with_limit(Duration::from_secs(120), 1000));
        let now = Instant::now();
        let accepted: usize = (0..4)
            .map(|t| {
                let table = table.clone();
                std::thread::spawn(move || {
                    (0..500)
                        .filter(|i| {
                            table
                                .register(
                                    now,
                                    &format!("{}", 100_000 + t * 1000 + i),
                                    "2001",
                                    "3001",
                                )
                                .is_ok()
                        })
                        .count()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|thread| thread.join().unwrap())
            .sum();
        assert_eq!((accepted, table.len()), (1000, 1000));
        let spread = table
            .shards
            .iter()
            .filter(|s| !s.lock().by_telnum.is_empty())
            .count();
        assert!(spread > SHARDS / 2, "telnums spread over {spread} shards");
        assert_eq!(
            table.purge_expired(now + Duration::from_secs(121)).len(),
            1000
        );
        assert!(table.is_empty());
    }

    #[test]
    fn a_full_table_refuses_new_numbers_but_accepts_replacements() {
        let table = IntentTable::with_limit(Duration::from_secs(120), 2);
        let t0 = Instant::now();
        table.register(t0, "1001", "2001", "3001").unwrap();
        table.register(t0, "1002", "2002", "3002").unwrap();
        assert_eq!(
            table.register(t0, "1003", "2003", "3003"),
            Err(IntentTableFull { max: 2 })
        );
        let (_, replaced) = table.register(t0, "+1002", "2002", "3999").unwrap();
        assert!(replaced.is_some());
        table.cancel("1001");
        table.register(t0, "1003", "2003", "3003").unwrap();
        assert_eq!(table.len(), 2);
    }
}
