//! Rate limits for log lines that a peer can trigger at will (refused calls, requests from the
//! wrong peer, exhausted media ports): a flood must not turn into a flood of log lines, which
//! would cost more than answering it and bury everything else in the log.

use std::time::{Duration, Instant};

/// At most `per_window` lines per `window`; the lines left out are counted and reported with
/// the next line that is allowed.
#[derive(Debug)]
pub(super) struct LogThrottle {
    window: Duration,
    per_window: u32,
    window_start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl LogThrottle {
    pub(super) const fn new(window: Duration, per_window: u32) -> LogThrottle {
        LogThrottle {
            window,
            per_window,
            window_start: None,
            used: 0,
            suppressed: 0,
        }
    }

    /// Whether a line may be logged at `now`: `Some(n)` with the `n` lines left out since the
    /// last one logged, or `None` (counted).
    pub(super) fn allow(&mut self, now: Instant) -> Option<u64> {
        let expired = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.window);
        if expired {
            self.window_start = Some(now);
            self.used = 0;
        }
        if self.used < self.per_window {
            self.used += 1;
            return Some(std::mem::take(&mut self.suppressed));
        }
        self.suppressed += 1;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_beyond_the_budget_are_counted_and_reported_later() {
        let mut throttle = LogThrottle::new(Duration::from_secs(1), 2);
        let t0 = Instant::now();
        assert_eq!(throttle.allow(t0), Some(0));
        assert_eq!(throttle.allow(t0), Some(0));
        for _ in 0..5 {
            assert_eq!(throttle.allow(t0 + Duration::from_millis(500)), None);
        }
        assert_eq!(throttle.allow(t0 + Duration::from_secs(1)), Some(5));
        assert_eq!(throttle.allow(t0 + Duration::from_secs(1)), Some(0));
        assert_eq!(throttle.allow(t0 + Duration::from_secs(1)), None);
    }
}
