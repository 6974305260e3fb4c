//! When a failed event is tried again: 1 s doubling per failed attempt, capped at 5 min, with
//! jitter (SPEC.md *Webhooks*), so that the retries of many calls whose target went down at
//! the same moment do not all arrive together when it comes back.

use std::time::Duration;

/// The retry schedule: `base · 2^(failures-1)`, at most `cap`, scaled by a jitter factor in
/// `[1 - JITTER, 1 + JITTER)` and capped again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first failed attempt (SPEC: 1 s).
    pub base: Duration,
    /// The longest wait (SPEC: 5 min).
    pub cap: Duration,
}

/// How far the jitter moves a wait either way (±20 %).
pub const JITTER: f64 = 0.2;

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The wait after the `failures`-th failed attempt (1 for the first), with `jitter` a
    /// random number in `[0, 1)` (the caller draws it: this stays deterministic in tests).
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        let plain = self.base.saturating_mul(1u32 << doublings).min(self.cap);
        let factor = 1.0 - JITTER + 2.0 * JITTER * jitter.clamp(0.0, 1.0);
        plain.mul_f64(factor).min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_one_second_up_to_five_minutes() {
        let b = Backoff::default();
        let mid = |n| b.delay(n, 0.5);
        assert_eq!(mid(1), Duration::from_secs(1));
        assert_eq!(mid(2), Duration::from_secs(2));
        assert_eq!(mid(3), Duration::from_secs(4));
        assert_eq!(mid(9), Duration::from_secs(256));
        assert_eq!(mid(10), Duration::from_secs(300));
        assert_eq!(mid(1000), Duration::from_secs(300));
        // Jitter moves a wait by at most 20 % either way, and never past the cap.
        assert_eq!(b.delay(3, 0.0), Duration::from_millis(3200));
        assert!(b.delay(3, 0.999_999) < Duration::from_millis(4800));
        assert!(b.delay(3, 0.999_999) > Duration::from_millis(4799));
        assert_eq!(b.delay(12, 0.999), Duration::from_secs(300));
        assert_eq!(b.delay(0, 0.5), Duration::from_secs(1));
    }
}
