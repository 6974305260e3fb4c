//! Whether the trunk is alive, learned from OPTIONS pings (`trunk.ping_secs`), sans-IO.
//!
//! [`TrunkHealth`] decides when the next ping is due, how long each may wait for its answer,
//! and when the trunk is *down* (new INVITEs get 503 at once, without consuming their intent)
//! or *up* again. It sends nothing and reads no clock: every input carries `now`, the engine
//! sends the OPTIONS it asks for ([`TrunkHealth::poll_ping`]) and reports back what became of
//! each one. Its rules:
//!
//! - **A ping is due** every `interval`, the first at the first
//!   [`handle_timeout`](TrunkHealth::handle_timeout) (start-up), each later one `interval`
//!   after the previous was sent.
//! - **Answered** is *any* response to the ping before its deadline, whatever its status:
//!   a 200, a 401/407 challenge, 404, 405, even 503. The question is "does the trunk speak
//!   SIP to us", not "does it like OPTIONS"; a carrier that challenges or refuses OPTIONS is
//!   alive. A provisional response counts too (the first response settles the ping).
//! - **Unanswered** (lost) is a ping whose transaction timed out or failed to send
//!   ([`on_unanswered`](TrunkHealth::on_unanswered)), or that has no answer by its own
//!   deadline: `min(interval, Timer F)` after it was sent. So a ping still unanswered when the
//!   next one is due counts as lost then, and at most one ping is ever outstanding.
//! - **Late answers** — a response to a ping already counted lost, or a second response to
//!   one already answered — change nothing (they are counted in
//!   [`TrunkHealthStats::late_answers`]). A trunk answering slower than the ping interval is
//!   treated as not answering; the next ping answered in time brings it up.
//! - **Down** after [`LOST_BEFORE_DOWN`] consecutive lost pings; **up** again at the first
//!   ping answered. The machine starts *up*, so that a trunk is trusted until proven silent
//!   and start-up blocks no call.
//! - `interval = None` (`ping_secs = 0`): unmonitored; nothing is ever due, the trunk is
//!   never down.

use std::time::{Duration, Instant};

/// Consecutive unanswered pings after which the trunk is down.
pub const LOST_BEFORE_DOWN: u32 = 3;

/// What callbridge knows of the trunk, as `/healthz` and `/metrics` report it.
///
/// It exists so that "not pinged" is told apart from "answering": an unmonitored trunk is
/// never refused calls for, but is not claimed to be up either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrunkState {
    /// `trunk.ping_secs = 0`: no pings, no opinion.
    Unmonitored,
    /// Answering pings (or not yet silent for [`LOST_BEFORE_DOWN`] pings in a row).
    Up,
    /// [`LOST_BEFORE_DOWN`] pings in a row went unanswered: new INVITEs get 503.
    Down,
}

impl TrunkState {
    /// The lower-case word for logs, `/healthz` and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TrunkState::Unmonitored => "unmonitored",
            TrunkState::Up => "up",
            TrunkState::Down => "down",
        }
    }
}

/// Names one ping for the caller to send and to report on.
///
/// It exists so that a response or timeout can be matched to the ping it belongs to, and an
/// old ping's late answer told from the current one's; ids are never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PingId(pub u64);

/// A change of [`TrunkState`], returned by the input that caused it so that the caller can
/// log it (and nothing is logged per ping).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The trunk went down: `lost` pings in a row are unanswered.
    Down { lost: u32 },
    /// The trunk answered again after being down for `down_for`.
    Up { down_for: Duration },
}

/// Counters since start-up, for `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrunkHealthStats {
    /// Pings handed out to be sent ([`TrunkHealth::poll_ping`]).
    pub pings_sent: u64,
    /// Pings answered (any response) before their deadline.
    pub pings_answered: u64,
    /// Pings timed out, failed to send, or unanswered at their deadline.
    pub pings_lost: u64,
    /// Responses to pings already settled (counted lost, or answered before).
    pub late_answers: u64,
    /// Times the trunk went down, and up again.
    pub went_down: u64,
    pub went_up: u64,
}

/// The ping waiting for its answer.
#[derive(Clone, Copy, Debug)]
struct Outstanding {
    id: PingId,
    deadline: Instant,
}

/// The trunk's health state machine. See the module documentation.
///
/// It exists apart from the engine so that every rule of liveness (what counts as an answer,
/// when a ping is lost, when the trunk flips) is a plain function of its inputs, tested with
/// a fake clock in microseconds.
#[derive(Debug)]
pub struct TrunkHealth {
    /// `None`: unmonitored.
    interval: Option<Duration>,
    /// How long a ping waits for its answer: `min(interval, Timer F)`.
    wait: Duration,
    down_since: Option<Instant>,
    /// When the next ping is due; `None` before the first `handle_timeout`.
    next_ping: Option<Instant>,
    outstanding: Option<Outstanding>,
    /// A ping created by `handle_timeout`, not yet taken by `poll_ping`.
    to_send: Option<PingId>,
    lost_in_a_row: u32,
    next_id: u64,
    stats: TrunkHealthStats,
}

impl TrunkHealth {
    /// A machine pinging every `interval` (`None`: never), each ping waiting at most
    /// `min(interval, timer_f)` for its answer (`timer_f`: the transaction layer's 64·T1,
    /// after which it gives the OPTIONS up anyway).
    pub fn new(interval: Option<Duration>, timer_f: Duration) -> TrunkHealth {
        let interval = interval.filter(|i| !i.is_zero());
        TrunkHealth {
            interval,
            wait: interval.map_or(timer_f, |i| i.min(timer_f)),
            down_since: None,
            next_ping: None,
            outstanding: None,
            to_send: None,
            lost_in_a_row: 0,
            next_id: 1,
            stats: TrunkHealthStats::default(),
        }
    }

    pub fn state(&self) -> TrunkState {
        match (self.interval, self.down_since) {
            (None, _) => TrunkState::Unmonitored,
            (Some(_), None) => TrunkState::Up,
            (Some(_), Some(_)) => TrunkState::Down,
        }
    }

    /// Whether new calls are to be refused because the trunk is down.
    pub fn is_down(&self) -> bool {
        self.state() == TrunkState::Down
    }

    /// The ping interval (`None`: unmonitored).
    pub fn interval(&self) -> Option<Duration> {
        self.interval
    }

    /// How long each ping waits for its answer.
    pub fn ping_wait(&self) -> Duration {
        self.wait
    }

    pub fn stats(&self) -> &TrunkHealthStats {
        &self.stats
    }

    /// The next moment [`handle_timeout`](Self::handle_timeout) has work: the outstanding
    /// ping's deadline or the next ping. `None` when unmonitored, and before the first
    /// `handle_timeout` (which starts the machine: it has no clock of its own).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let next = self.next_ping?;
        Some(match self.outstanding {
            Some(ping) => ping.deadline.min(next),
            None => next,
        })
    }

    /// The time is `now`: the outstanding ping past its deadline is lost, and a ping due is
    /// made ready for [`poll_ping`](Self::poll_ping). The first call starts the machine (its
    /// first ping is due at once).
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Transition> {
        let interval = self.interval?;
        let next = *self.next_ping.get_or_insert(now);
        let mut transition = None;
        if let Some(ping) = self.outstanding.filter(|p| p.deadline <= now) {
            transition = self.lost(now, ping.id);
        }
        if next <= now && self.outstanding.is_none() && self.to_send.is_none() {
            let id = PingId(self.next_id);
            self.next_id += 1;
            self.outstanding = Some(Outstanding {
                id,
                deadline: now + self.wait,
            });
            self.to_send = Some(id);
            self.next_ping = Some(now + interval);
            self.stats.pings_sent += 1;
        }
        transition
    }

    /// The ping to send now, if one is due (after [`handle_timeout`](Self::handle_timeout)).
    pub fn poll_ping(&mut self) -> Option<PingId> {
        self.to_send.take()
    }

    /// A response to ping `id` arrived (any status). Brings the trunk up if it was down;
    /// a late answer (to a ping already settled) changes nothing.
    pub fn on_answered(&mut self, now: Instant, id: PingId) -> Option<Transition> {
        if self.outstanding.is_none_or(|p| p.id != id) {
            if id.0 < self.next_id {
                self.stats.late_answers += 1;
            }
            return None;
        }
        self.outstanding = None;
        self.stats.pings_answered += 1;
        self.lost_in_a_row = 0;
        let since = self.down_since.take()?;
        self.stats.went_up += 1;
        Some(Transition::Up {
            down_for: now.saturating_duration_since(since),
        })
    }

    /// Ping `id` timed out or could not be sent. Nothing happens if it was already settled.
    pub fn on_unanswered(&mut self, now: Instant, id: PingId) -> Option<Transition> {
        if self.outstanding.is_none_or(|p| p.id != id) {
            return None;
        }
        self.lost(now, id)
    }

    fn lost(&mut self, now: Instant, id: PingId) -> Option<Transition> {
        if self.outstanding.is_some_and(|p| p.id == id) {
            self.outstanding = None;
        }
        // A ping created and lost before it was taken (a send that failed at once) is not
        // sent after all.
        if self.to_send == Some(id) {
            self.to_send = None;
        }
        self.stats.pings_lost += 1;
        self.lost_in_a_row = self.lost_in_a_row.saturating_add(1);
        if self.down_since.is_some() || self.lost_in_a_row < LOST_BEFORE_DOWN {
            return None;
        }
        self.down_since = Some(now);
        self.stats.went_down += 1;
        Some(Transition::Down {
            lost: self.lost_in_a_row,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);
    /// 64·T1 at RFC 3261's default T1.
    const TIMER_F: Duration = Duration::from_secs(32);

    /// A machine and the fake clock that drives it, the way the engine does: run every
    /// deadline up to a moment, collecting the pings sent and the transitions.
    struct Clock {
        health: TrunkHealth,
        now: Instant,
        sent: Vec<PingId>,
        transitions: Vec<Transition>,
    }

    impl Clock {
        fn new(interval: Option<Duration>, timer_f: Duration) -> Clock {
            let mut clock = Clock {
                health: TrunkHealth::new(interval, timer_f),
                now: Instant::now(),
                sent: Vec::new(),
                transitions: Vec::new(),
            };
            clock.tick();
            clock
        }

        fn tick(&mut self) {
            self.transitions
                .extend(self.health.handle_timeout(self.now));
            self.sent.extend(self.health.poll_ping());
        }

        /// Advances to `now + by`, waking at every deadline on the way.
        fn advance(&mut self, by: Duration) {
            let end = self.now + by;
            while let Some(at) = self.health.poll_timeout().filter(|at| *at <= end) {
                assert!(at >= self.now, "a deadline in the past was not consumed");
                self.now = at;
                self.tick();
            }
            self.now = end;
            self.tick();
        }

        fn last(&self) -> PingId {
            *self.sent.last().expect("a ping was sent")
        }

        fn answer_last(&mut self) {
            let id = self.last();
            self.transitions
                .extend(self.health.on_answered(self.now, id));
        }
    }

    #[test]
    fn pings_go_out_every_interval_from_start_up() {
        let mut c = Clock::new(Some(5 * SEC), TIMER_F);
        assert_eq!(c.sent, [PingId(1)], "the first ping at start-up");
        assert_eq!(c.health.state(), TrunkState::Up);
        assert_eq!(c.health.poll_timeout(), Some(c.now + 5 * SEC));
        c.answer_last();
        c.advance(5 * SEC - Duration::from_millis(1));
        assert_eq!(c.sent.len(), 1);
        c.advance(Duration::from_millis(1));
        assert_eq!(c.sent.len(), 2);
        c.answer_last();
        c.advance(20 * SEC);
        assert_eq!(c.sent.len(), 6);
        assert_eq!(c.health.stats().pings_sent, 6);
        assert_eq!(c.health.stats().pings_answered, 2);
        // The unanswered ones were lost at the next one's time: three in a row, so down.
        assert_eq!(c.health.stats().pings_lost, 3);
        assert_eq!(c.transitions, [Transition::Down { lost: 3 }]);
    }

    #[test]
    fn zero_interval_means_nothing_is_ever_sent() {
        for interval in [None, Some(Duration::ZERO)] {
            let mut c = Clock::new(interval, TIMER_F);
            c.advance(3600 * SEC);
            assert!(c.sent.is_empty());
            assert_eq!(c.health.poll_timeout(), None);
            assert_eq!(c.health.state(), TrunkState::Unmonitored);
            assert!(!c.health.is_down());
            assert_eq!(c.health.on_unanswered(c.now, PingId(1)), None);
            assert_eq!(c.health.stats(), &TrunkHealthStats::default());
        }
    }

    #[test]
    fn nothing_is_due_before_the_first_timeout() {
        let mut health = TrunkHealth::new(Some(SEC), TIMER_F);
        assert_eq!(health.poll_timeout(), None);
        assert_eq!(health.poll_ping(), None);
    }

    #[test]
    fn three_unanswered_pings_bring_it_down_and_one_answer_up() {
        let mut c = Clock::new(Some(2 * SEC), TIMER_F);
        let start = c.now;
        c.advance(2 * SEC);
        c.advance(2 * SEC);
        assert_eq!(c.health.stats().pings_lost, 2);
        assert_eq!(c.health.state(), TrunkState::Up, "two lost: still up");
        c.advance(2 * SEC);
        assert_eq!(c.health.state(), TrunkState::Down);
        assert_eq!(c.transitions, [Transition::Down { lost: 3 }]);
        // Pings go on while down; more losses are no new transition.
        c.advance(4 * SEC);
        assert_eq!(c.health.stats().pings_lost, 5);
        assert_eq!(c.transitions.len(), 1);
        c.answer_last();
        assert_eq!(c.health.state(), TrunkState::Up);
        assert_eq!(
            c.transitions[1],
            Transition::Up {
                down_for: c.now - (start + 6 * SEC)
            }
        );
        let stats = c.health.stats();
        assert_eq!((stats.went_down, stats.went_up), (1, 1));
    }

    #[test]
    fn any_response_is_an_answer() {
        // The machine never sees the status: what the engine reports as a response (401,
        // 407, 404, 503 or a 1xx alike) is an answer. One that comes before the third loss
        // resets the count.
        let mut c = Clock::new(Some(SEC), TIMER_F);
        c.advance(SEC);
        c.advance(SEC);
        c.answer_last();
        c.advance(SEC);
        c.advance(SEC);
        assert_eq!(c.health.state(), TrunkState::Up);
        assert_eq!(c.health.stats().pings_lost, 3);
        assert!(c.transitions.is_empty());
    }

    #[test]
    fn a_ping_waits_at_most_timer_f_and_a_timeout_or_send_failure_counts_at_once() {
        // Interval longer than Timer F: a ping is lost at Timer F, not at the next one.
        let mut c = Clock::new(Some(60 * SEC), TIMER_F);
        assert_eq!(c.health.ping_wait(), TIMER_F);
        assert_eq!(c.health.poll_timeout(), Some(c.now + TIMER_F));
        c.advance(TIMER_F);
        assert_eq!(c.health.stats().pings_lost, 1);
        assert_eq!(c.health.poll_timeout(), Some(c.now + 28 * SEC));
        // The transaction's own timeout (or a transport error) settles the ping at once.
        c.advance(28 * SEC);
        let id = c.last();
        assert_eq!(c.health.on_unanswered(c.now, id), None);
        assert_eq!(c.health.stats().pings_lost, 2);
        // Reported twice (the deadline, then the transaction's Timer F): counted once.
        assert_eq!(c.health.on_unanswered(c.now, id), None);
        assert_eq!(c.health.stats().pings_lost, 2);
        assert_eq!(c.health.poll_timeout(), Some(c.now + 60 * SEC));
        // Shorter interval: the ping waits until the next is due.
        assert_eq!(TrunkHealth::new(Some(SEC), TIMER_F).ping_wait(), SEC);
    }

    #[test]
    fn a_send_failing_at_once_is_lost_and_not_sent() {
        let mut health = TrunkHealth::new(Some(SEC), TIMER_F);
        let now = Instant::now();
        health.handle_timeout(now);
        // The engine takes the ping, fails to send it, and says so.
        let id = health.poll_ping().unwrap();
        assert_eq!(health.on_unanswered(now, id), None);
        assert_eq!(health.stats().pings_lost, 1);
        assert_eq!(health.poll_ping(), None);
        // The next ping comes at its time, not at once.
        assert_eq!(health.poll_timeout(), Some(now + SEC));
    }

    #[test]
    fn a_late_answer_to_an_old_ping_changes_nothing() {
        let mut c = Clock::new(Some(SEC), TIMER_F);
        let first = c.last();
        c.advance(3 * SEC);
        assert_eq!(c.health.state(), TrunkState::Down);
        // The first ping's answer arrives now, long after it was counted lost; the state
        // has moved on and stays down.
        assert_eq!(c.health.on_answered(c.now, first), None);
        assert_eq!(c.health.state(), TrunkState::Down);
        assert_eq!(c.health.stats().late_answers, 1);
        assert_eq!(c.health.stats().pings_answered, 0);
        // The current ping's answer brings it up; a second answer to it (a 1xx then its
        // 200) is late too.
        c.answer_last();
        assert_eq!(c.health.state(), TrunkState::Up);
        c.answer_last();
        assert_eq!(c.health.stats().late_answers, 2);
        assert_eq!(c.health.stats().pings_answered, 1);
        // An old ping's late answer while up does not reset a run of losses either.
        let before = c.last();
        c.advance(4 * SEC);
        assert_eq!(c.health.on_answered(c.now, before), None);
        assert_eq!(c.health.state(), TrunkState::Down);
        // An id never handed out is no answer at all.
        assert_eq!(c.health.on_answered(c.now, PingId(999)), None);
        assert_eq!(c.health.stats().late_answers, 3);
    }

    #[test]
    fn flapping_is_followed_and_counted() {
        let mut c = Clock::new(Some(SEC), TIMER_F);
        for round in 1..=4u64 {
            // Pings at +1, +2, +3 after the last answer, each lost a second later.
            c.advance(4 * SEC);
            assert_eq!(c.health.state(), TrunkState::Down, "round {round}");
            c.answer_last();
            assert_eq!(c.health.state(), TrunkState::Up, "round {round}");
            let stats = c.health.stats();
            assert_eq!((stats.went_down, stats.went_up), (round, round));
        }
        // Two losses, an answer, two losses: never three in a row, so no flap.
        c.advance(3 * SEC);
        c.answer_last();
        c.advance(3 * SEC);
        // Round 1 lost the start-up ping too; each later round three; then two and two.
        assert_eq!(c.health.stats().pings_lost, 4 + 3 * 3 + 2 + 2);
        assert_eq!(c.health.state(), TrunkState::Up);
        assert_eq!(c.transitions.len(), 8);
        assert!(matches!(c.transitions[0], Transition::Down { lost: 3 }));
        assert!(matches!(c.transitions[1], Transition::Up { .. }));
        let stats = c.health.stats();
        assert_eq!(
            stats.pings_sent,
            stats.pings_answered + stats.pings_lost + 1
        );
    }

    #[test]
    fn a_late_wake_up_sends_one_ping_not_a_burst() {
        let mut c = Clock::new(Some(SEC), TIMER_F);
        c.answer_last();
        // The engine was busy for ten intervals: one ping now, the next an interval later.
        c.now += 10 * SEC;
        c.tick();
        assert_eq!(c.sent.len(), 2);
        assert_eq!(c.health.poll_timeout(), Some(c.now + SEC));
        assert_eq!(c.health.stats().pings_lost, 0);
    }
}
