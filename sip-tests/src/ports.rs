//! Port ranges for the relay of a callbridge under test, chosen free at run time.
//!
//! A fixed range in a test collides with whatever else the machine runs (another test binary,
//! a SIPp run, a developer's own callbridge); a range inside the kernel's ephemeral range can be
//! taken at any moment by a socket bound to port 0. So ranges are drawn below the ephemeral
//! range, at a random offset, handed out without overlap inside this process, and checked to
//! be bindable (UDP) before use.

use std::net::UdpSocket;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU32, Ordering};

/// Lowest port handed out: clear of the well-known and most registered service ports.
const FLOOR: u32 = 10_000;

/// The kernel's ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`), Linux's default
/// when it cannot be read.
pub fn ephemeral_range() -> RangeInclusive<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut parts = text.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some(parts.next()??..=parts.next()??)
        })
        .unwrap_or(32768..=60999)
}

/// `len` consecutive ports (`len` even, the first even: RTP/RTCP pairs) below the ephemeral
/// range, none of them bound on 127.0.0.1 when checked, and none handed out before by this
/// process. Panics when no such range is left (a test environment problem, said plainly).
pub fn free_range(len: u16) -> (u16, u16) {
    assert!(
        len >= 2 && len.is_multiple_of(2),
        "relay ranges come in RTP/RTCP pairs"
    );
    // Where the next range starts; seeded once per process at a random even offset, so that
    // two test processes running at once rarely probe the same ports.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ceiling = u32::from(*ephemeral_range().start());
    let span = ceiling.saturating_sub(FLOOR);
    assert!(span >= u32::from(len), "no room below the ephemeral range");
    let _ = NEXT.compare_exchange(
        0,
        FLOOR + (rand::random::<u32>() % (span / 2)) * 2,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    let mut tried = 0u32;
    while tried < span {
        let mut first = NEXT.fetch_add(u32::from(len), Ordering::Relaxed);
        if first + u32::from(len) > ceiling {
            // Wrap to the floor; the ranges of a long-running process start over.
            first = FLOOR;
            NEXT.store(FLOOR + u32::from(len), Ordering::Relaxed);
        }
        tried += u32::from(len);
        let last = first + u32::from(len) - 1;
        let all_free =
            (first..=last).all(|port| UdpSocket::bind(("127.0.0.1", port as u16)).is_ok());
        if all_free {
            return (first as u16, last as u16);
        }
    }
    panic!("no free range of {len} UDP ports below the ephemeral range");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_even_aligned_below_the_ephemeral_range_and_distinct() {
        let ceiling = *ephemeral_range().start();
        let a = free_range(200);
        let b = free_range(4);
        for (first, last) in [a, b] {
            assert_eq!(first % 2, 0);
            assert!(
                u32::from(first) >= FLOOR && last < ceiling,
                "{first}-{last}"
            );
        }
        assert!(a.1 < b.0 || b.1 < a.0, "overlap: {a:?} {b:?}");
    }
}
