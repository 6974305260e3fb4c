//! The relay port range (`media.rtp_ports`): even RTP ports, RTCP on the next odd one.
//!
//! [`PortPool`] is plain data owned by the engine: the free pairs of the range, each
//! [`PortPool::reserve`] drawing one uniformly at random (SPEC.md "Trust boundary": a relay
//! handing out ports in order tells anyone who saw one SDP which ports the next call gets, and
//! spraying a few ports during set-up is then enough to try to take a stream over; drawn at
//! random, a sprayer must cover the whole range). Taking and giving back are O(1) (a `Vec`,
//! swap-removed at a random index), and a pair is never handed out twice while held. A
//! released pair can come out of the very next draw, with chance one in the number of free
//! pairs; the media driver has closed the old sockets by then, and late packets of the ended
//! call are refused by the new stream's learning anyway (they come from neither new leg).
//!
//! It binds nothing: the engine tells the media driver which ports to open
//! ([`super::MediaCommand::Open`]), and a port the driver cannot bind comes back as
//! [`super::MediaEvent::OpenFailed`] or, from the driver's start-up probe,
//! [`super::MediaEvent::PortUnavailable`]; its pair is then withdrawn from the pool for good.

use std::collections::BTreeSet;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The even ports of a range, shared by every call of one engine.
#[derive(Debug)]
pub struct PortPool {
    first: u16,
    last: u16,
    capacity: usize,
    /// The free pairs' RTP ports, in no order.
    free: Vec<u16>,
    /// Pairs that cannot be bound (held by another socket): never handed out again.
    withdrawn: BTreeSet<u16>,
    /// A CSPRNG, not a fast one: the draws are in every SDP callbridge sends, and must not
    /// reveal the next ones. One draw per pair reserved is nothing next to a call's cost.
    rng: StdRng,
}

impl PortPool {
    /// A pool over the inclusive range `first..=last`: every even port `p` with `p + 1 <= last`
    /// is one pair. A range holding no pair gives a pool that is always exhausted. Its draws
    /// are seeded from the operating system's entropy.
    pub fn new(first: u16, last: u16) -> PortPool {
        PortPool::with_rng(first, last, StdRng::from_entropy())
    }

    /// The same pool with reproducible draws (tests).
    pub fn with_seed(first: u16, last: u16, seed: u64) -> PortPool {
        PortPool::with_rng(first, last, StdRng::seed_from_u64(seed))
    }

    fn with_rng(first: u16, last: u16, rng: StdRng) -> PortPool {
        let start = u32::from(first) + u32::from(first % 2);
        let free: Vec<u16> = (start..u32::from(last))
            .step_by(2)
            .filter(|p| *p > 0)
            .map(|p| p as u16)
            .collect();
        PortPool {
            first,
            last,
            capacity: free.len(),
            free,
            withdrawn: BTreeSet::new(),
            rng,
        }
    }

    /// The configured range.
    pub fn range(&self) -> (u16, u16) {
        (self.first, self.last)
    }

    /// How many pairs the range holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many pairs are free now.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Takes a free pair, drawn at random: its RTP port (RTCP is the next one).
    pub fn reserve(&mut self) -> Option<u16> {
        if self.free.is_empty() {
            return None;
        }
        let index = self.rng.gen_range(0..self.free.len());
        Some(self.free.swap_remove(index))
    }

    /// Gives a pair taken with [`reserve`](Self::reserve) back to the free pairs (unless it
    /// was withdrawn meanwhile).
    pub fn release(&mut self, rtp: u16) {
        debug_assert!(!self.free.contains(&rtp), "port {rtp} released twice");
        if !self.withdrawn.contains(&rtp) {
            self.free.push(rtp);
        }
    }

    /// Takes the pair holding `port` (RTP or RTCP) out of the pool for good: free, it leaves
    /// the free pairs; held, it is not given back on release. Ports outside the range are
    /// ignored. Returns whether the pair was newly withdrawn. O(free pairs): it happens once
    /// per unbindable port, not per call.
    pub fn withdraw(&mut self, port: u16) -> bool {
        let rtp = port & !1;
        let in_range = rtp >= self.first && u32::from(rtp) < u32::from(self.last) && rtp > 0;
        if !in_range || !self.withdrawn.insert(rtp) {
            return false;
        }
        if let Some(index) = self.free.iter().position(|&p| p == rtp) {
            self.free.swap_remove(index);
        }
        true
    }

    /// Pairs withdrawn because they cannot be bound.
    pub fn withdrawn(&self) -> usize {
        self.withdrawn.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashSet};

    fn drain(pool: &mut PortPool) -> Vec<u16> {
        std::iter::from_fn(|| pool.reserve()).collect()
    }

    #[test]
    fn pairs_are_the_even_ports_of_the_range_each_handed_out_once() {
        let mut pool = PortPool::new(20001, 20010);
        assert_eq!(pool.capacity(), 4); // 20002, 20004, 20006, 20008 (20010 has no RTCP port)
        let mut ports = drain(&mut pool);
        assert_eq!(pool.reserve(), None);
        ports.sort_unstable();
        assert_eq!(ports, [20002, 20004, 20006, 20008]);
    }

    #[test]
    fn a_seed_makes_the_draws_reproducible() {
        let draws = |seed| drain(&mut PortPool::with_seed(30000, 30999, seed));
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
    }

    #[test]
    fn draws_are_not_in_order_and_cover_the_range_evenly() {
        let mut pool = PortPool::with_seed(30000, 30999, 1);
        let ports = drain(&mut pool);
        assert_eq!(ports.len(), 500);
        let ascending = ports.windows(2).filter(|w| w[0] < w[1]).count();
        assert!((150..350).contains(&ascending), "{ascending} of 499 rising");
        // Which pair comes out first, over many fresh pools of 10 pairs: each about 1/10.
        let mut first = BTreeMap::<u16, u32>::new();
        for seed in 0..5000 {
            let port = PortPool::with_seed(40000, 40019, seed).reserve().unwrap();
            *first.entry(port).or_default() += 1;
        }
        assert_eq!(first.len(), 10);
        assert!(
            first.values().all(|&n| (380..620).contains(&n)),
            "{first:?}"
        );
    }

    #[test]
    fn a_held_pair_is_never_handed_out_until_released() {
        let mut pool = PortPool::with_seed(30000, 30019, 3);
        let mut held = HashSet::new();
        // Reserve and release in a churn; a held pair must never come out again.
        for round in 0..2000u32 {
            if held.len() < 10 && (round % 3 != 0 || held.is_empty()) {
                let port = pool.reserve().unwrap();
                assert!(held.insert(port), "{port} handed out twice");
            } else {
                let port = *held.iter().next().unwrap();
                held.remove(&port);
                pool.release(port);
            }
            assert_eq!(pool.available() + held.len(), 10);
        }
    }

    #[test]
    fn released_pair_is_free_again() {
        let mut pool = PortPool::with_seed(30000, 30005, 5);
        let a = pool.reserve().unwrap();
        let b = pool.reserve().unwrap();
        pool.release(a);
        assert_eq!(pool.available(), 2);
        let mut rest = drain(&mut pool);
        rest.sort_unstable();
        let mut expected: Vec<u16> = [30000, 30002, 30004]
            .into_iter()
            .filter(|&p| p != b)
            .collect();
        expected.sort_unstable();
        assert_eq!(rest, expected);
    }

    #[test]
    fn withdrawn_pairs_are_never_handed_out_again() {
        let mut pool = PortPool::with_seed(30000, 30007, 9);
        assert!(pool.withdraw(30003), "the RTCP port names its pair");
        assert!(!pool.withdraw(30002), "already withdrawn");
        assert!(
            !pool.withdraw(29998) && !pool.withdraw(30008),
            "outside the range"
        );
        let held = pool.reserve().unwrap();
        assert_ne!(held, 30002);
        assert!(pool.withdraw(held));
        pool.release(held);
        assert_eq!((pool.available(), pool.withdrawn()), (2, 2));
        let mut rest = drain(&mut pool);
        rest.sort_unstable();
        let expected: Vec<u16> = [30000, 30004, 30006]
            .into_iter()
            .filter(|&p| p != held)
            .collect();
        assert_eq!(rest, expected);
    }

    #[test]
    fn empty_range_is_always_exhausted() {
        let mut pool = PortPool::new(50001, 50001);
        assert_eq!(pool.capacity(), 0);
        assert_eq!(pool.reserve(), None);
        let mut pool = PortPool::new(0, 3);
        assert_eq!(pool.reserve(), Some(2), "port 0 is never handed out");
        assert_eq!(pool.reserve(), None);
    }
}
