//! Who may hold a TCP connection, and how many: the sans-IO decision behind the accept loop
//! and outbound connects (SPEC "Trust boundary": connections from other sources are closed at
//! accept; `max_connections` and `max_connections_per_ip` bound the rest).
//!
//! The rule, for a connection from (or to) IP `ip`:
//!
//! 1. An accepted connection from an IP in neither `trusted` nor `priority` is refused.
//! 2. An accepted connection from an IP that already holds `max_per_ip` connections (accepted
//!    and opened together) is refused.
//! 3. The last `reserve = min(max_per_ip, max_total / 2)` slots of `max_total` are kept for
//!    `priority` IPs (the trunk): any other connection, accepted or opened, is refused once
//!    `max_total - reserve` connections are open; a priority one only at `max_total`.
//!
//! So however the other sources (trusted ones included) fill the table, the trunk finds at
//! least `reserve` free slots, which is as many as rule 2 lets one IP hold. Connections we
//! open are never refused for trust or for the per-IP limit (we chose the destination and
//! reuse one connection per address); they count like any other, so they fall under rule 3.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;

/// Why a connection was refused.
///
/// It exists so that each refusal is counted under its own statistic and logged with its
/// reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("source is not a trusted peer")]
    Untrusted,
    #[error("too many connections from this address")]
    PerIpLimit,
    #[error("connection limit reached")]
    TotalLimit,
}

/// The admission policy: trust set, priority set and the limits (see the module docs).
///
/// It exists as a plain value, apart from the sockets, so that the decision can be tested
/// without opening any.
#[derive(Clone, Debug)]
pub(crate) struct Admission {
    trusted: Vec<IpNet>,
    priority: Vec<IpNet>,
    max_total: usize,
    max_per_ip: usize,
}

impl Admission {
    pub(crate) fn new(
        trusted: Vec<IpNet>,
        priority: Vec<IpNet>,
        max_total: usize,
        max_per_ip: usize,
    ) -> Admission {
        Admission {
            trusted,
            priority,
            max_total,
            max_per_ip,
        }
    }

    /// Slots only priority IPs may take.
    pub(crate) fn reserve(&self) -> usize {
        self.max_per_ip.min(self.max_total / 2)
    }

    fn is_priority(&self, ip: IpAddr) -> bool {
        self.priority.iter().any(|net| net.contains(&ip))
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.is_priority(ip) || self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// Rule 3: room left for one more connection to or from `ip`.
    fn total_allows(&self, ip: IpAddr, open: &ConnectionCounts) -> Result<(), Refusal> {
        let limit = if self.is_priority(ip) {
            self.max_total
        } else {
            self.max_total.saturating_sub(self.reserve())
        };
        if open.total >= limit {
            return Err(Refusal::TotalLimit);
        }
        Ok(())
    }

    /// May a connection accepted from `ip` stay, with `open` connections already held?
    pub(crate) fn admit_inbound(&self, ip: IpAddr, open: &ConnectionCounts) -> Result<(), Refusal> {
        let ip = ip.to_canonical();
        if !self.is_trusted(ip) {
            return Err(Refusal::Untrusted);
        }
        if open.from(ip) >= self.max_per_ip {
            return Err(Refusal::PerIpLimit);
        }
        self.total_allows(ip, open)
    }

    /// May we open a connection to `ip`?
    pub(crate) fn admit_outbound(
        &self,
        ip: IpAddr,
        open: &ConnectionCounts,
    ) -> Result<(), Refusal> {
        self.total_allows(ip.to_canonical(), open)
    }
}

/// Open connections, in all and per remote IP.
///
/// It exists so that the limits can be checked in O(1) at each accept; an IP's entry goes
/// when its last connection does, so the map never holds more entries than connections.
#[derive(Debug, Default)]
pub(crate) struct ConnectionCounts {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

impl ConnectionCounts {
    pub(crate) fn from(&self, ip: IpAddr) -> usize {
        self.by_ip.get(&ip.to_canonical()).copied().unwrap_or(0)
    }

    pub(crate) fn add(&mut self, ip: IpAddr) {
        self.total += 1;
        *self.by_ip.entry(ip.to_canonical()).or_default() += 1;
    }

    pub(crate) fn remove(&mut self, ip: IpAddr) {
        let ip = ip.to_canonical();
        if let Some(n) = self.by_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            self.total = self.total.saturating_sub(1);
            if *n == 0 {
                self.by_ip.remove(&ip);
                crate::capacity::shrink_map(&mut self.by_ip);
            }
        }
    }
}

/// What a refusal's log line should be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Note {
    /// Log this source (first refusal of it in the window).
    Source,
    /// Too many distinct sources to track: log one line saying so, for all of them.
    ManySources,
}

/// At most one log line per refused source per window, in bounded memory.
///
/// It exists because a scanner (or a flood) opening connections by the thousand must not turn
/// into a log line each: the counters count every refusal, the log only names who.
#[derive(Debug)]
pub(crate) struct RefusalLog {
    window: Duration,
    capacity: usize,
    last: HashMap<IpAddr, Instant>,
    last_purge: Option<Instant>,
    many_logged: Option<Instant>,
}

impl RefusalLog {
    pub(crate) fn new(window: Duration, capacity: usize) -> RefusalLog {
        RefusalLog {
            window,
            capacity,
            last: HashMap::new(),
            last_purge: None,
            many_logged: None,
        }
    }

    fn recent(&self, at: Option<Instant>, now: Instant) -> bool {
        at.is_some_and(|at| now.saturating_duration_since(at) < self.window)
    }

    /// Whether (and how) to log a refusal of `ip` at `now`.
    pub(crate) fn note(&mut self, ip: IpAddr, now: Instant) -> Option<Note> {
        let ip = ip.to_canonical();
        if let Some(&at) = self.last.get(&ip) {
            if self.recent(Some(at), now) {
                return None;
            }
        } else if self.last.len() >= self.capacity && !self.recent(self.last_purge, now) {
            // Full: forget the sources whose window is over (at most once per window, so a
            // flood of new sources does not rescan the table at every accept).
            let window = self.window;
            self.last
                .retain(|_, at| now.saturating_duration_since(*at) < window);
            self.last_purge = Some(now);
        }
        if self.last.len() >= self.capacity && !self.last.contains_key(&ip) {
            if self.recent(self.many_logged, now) {
                return None;
            }
            self.many_logged = Some(now);
            return Some(Note::ManySources);
        }
        self.last.insert(ip, now);
        Some(Note::Source)
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.last.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    /// Trusted 10.0.0.0/8, the trunk 192.0.2.1 as priority, 8 in all, 4 per IP: reserve 4.
    fn policy() -> Admission {
        Admission::new(vec![net("10.0.0.0/8")], vec![net("192.0.2.1/32")], 8, 4)
    }

    #[test]
    fn untrusted_sources_are_refused_and_the_trunk_is_trusted_by_priority() {
        let open = ConnectionCounts::default();
        let p = policy();
        assert_eq!(
            p.admit_inbound(ip("203.0.113.9"), &open),
            Err(Refusal::Untrusted)
        );
        assert_eq!(p.admit_inbound(ip("10.1.2.3"), &open), Ok(()));
        assert_eq!(p.admit_inbound(ip("192.0.2.1"), &open), Ok(()));
        // IPv4-mapped IPv6 (a dual-stack listener) is the IPv4 address.
        assert_eq!(p.admit_inbound(ip("::ffff:10.1.2.3"), &open), Ok(()));
        assert_eq!(
            p.admit_inbound(ip("::ffff:203.0.113.9"), &open),
            Err(Refusal::Untrusted)
        );
    }

    #[test]
    fn one_ip_gets_at_most_its_share() {
        let p = Admission::new(vec![net("10.0.0.0/8")], vec![], 16, 4);
        let mut open = ConnectionCounts::default();
        for _ in 0..4 {
            assert_eq!(p.admit_inbound(ip("10.0.0.5"), &open), Ok(()));
            open.add(ip("10.0.0.5"));
        }
        assert_eq!(
            p.admit_inbound(ip("10.0.0.5"), &open),
            Err(Refusal::PerIpLimit)
        );
        // Another trusted IP is not affected.
        assert_eq!(p.admit_inbound(ip("10.0.0.6"), &open), Ok(()));
        // A closed connection frees its slot.
        open.remove(ip("10.0.0.5"));
        assert_eq!(p.admit_inbound(ip("10.0.0.5"), &open), Ok(()));
    }

    #[test]
    fn the_trunk_always_finds_its_reserve() {
        let p = policy();
        assert_eq!(p.reserve(), 4);
        let mut open = ConnectionCounts::default();
        // Other trusted sources fill everything they may: 8 - 4.
        for host in ["10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.3"] {
            assert_eq!(p.admit_inbound(ip(host), &open), Ok(()));
            open.add(ip(host));
        }
        assert_eq!(
            p.admit_inbound(ip("10.0.0.4"), &open),
            Err(Refusal::TotalLimit)
        );
        assert_eq!(
            p.admit_outbound(ip("10.0.0.4"), &open),
            Err(Refusal::TotalLimit),
            "our own connections to others leave the reserve alone too"
        );
        // The trunk still gets its full per-IP share, accepted or opened.
        for _ in 0..3 {
            assert_eq!(p.admit_inbound(ip("192.0.2.1"), &open), Ok(()));
            open.add(ip("192.0.2.1"));
        }
        assert_eq!(p.admit_outbound(ip("192.0.2.1"), &open), Ok(()));
        open.add(ip("192.0.2.1"));
        assert_eq!(
            p.admit_inbound(ip("192.0.2.1"), &open),
            Err(Refusal::PerIpLimit)
        );
        assert_eq!(
            p.admit_outbound(ip("192.0.2.1"), &open),
            Err(Refusal::TotalLimit),
            "the hard total holds for everyone"
        );
    }

    #[test]
    fn outbound_connections_ignore_trust_and_the_per_ip_limit() {
        let p = policy();
        let mut open = ConnectionCounts::default();
        for _ in 0..4 {
            open.add(ip("203.0.113.9"));
        }
        assert_eq!(
            p.admit_outbound(ip("203.0.113.9"), &open),
            Err(Refusal::TotalLimit)
        );
        open.remove(ip("203.0.113.9"));
        assert_eq!(p.admit_outbound(ip("203.0.113.9"), &open), Ok(()));
    }

    #[test]
    fn counts_never_underflow_and_forget_empty_ips() {
        let mut open = ConnectionCounts::default();
        open.remove(ip("10.0.0.1"));
        open.add(ip("10.0.0.1"));
        open.remove(ip("::ffff:10.0.0.1"));
        open.remove(ip("10.0.0.1"));
        assert_eq!(open.total, 0);
        assert!(open.by_ip.is_empty());
    }

    #[test]
    fn refusals_are_logged_once_per_source_per_window_in_bounded_memory() {
        let start = Instant::now();
        let minute = Duration::from_secs(60);
        let mut log = RefusalLog::new(minute, 2);
        assert_eq!(log.note(ip("203.0.113.1"), start), Some(Note::Source));
        assert_eq!(
            log.note(ip("203.0.113.1"), start + Duration::from_secs(59)),
            None
        );
        assert_eq!(
            log.note(ip("203.0.113.1"), start + minute),
            Some(Note::Source)
        );
        assert_eq!(
            log.note(ip("203.0.113.2"), start + minute),
            Some(Note::Source)
        );
        // Full of recent sources: one summary line per window for the rest.
        let later = start + minute + Duration::from_secs(1);
        assert_eq!(log.note(ip("203.0.113.3"), later), Some(Note::ManySources));
        assert_eq!(log.note(ip("203.0.113.4"), later), None);
        assert_eq!(log.tracked(), 2);
        // Once their window is over, old sources make room for new ones.
        let much_later = later + 2 * minute;
        assert_eq!(log.note(ip("203.0.113.5"), much_later), Some(Note::Source));
        assert!(log.tracked() <= 2);
    }
}
