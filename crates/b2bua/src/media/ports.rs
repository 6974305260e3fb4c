//! The relay port range (`media.rtp_ports`): even RTP ports, RTCP on the next odd one.
//!
//! [`PortPool`] is plain data owned by the engine: a FIFO free list of the even ports of the
//! range, so taking and giving back are O(1), a pair is never handed out twice while held, and
//! a released pair goes to the back of the list (late packets of an ended call rarely reach the
//! next one, and the media driver has closed the old sockets long before the port comes round
//! again). It binds nothing: the engine tells the media driver which ports to open
//! ([`super::MediaCommand::Open`]), and a port the driver cannot bind comes back as
//! [`super::MediaEvent::OpenFailed`] or, from the driver's start-up probe,
//! [`super::MediaEvent::PortUnavailable`]; its pair is then withdrawn from the pool for good.

use std::collections::{BTreeSet, VecDeque};

/// The even ports of a range, shared by every call of one engine.
#[derive(Debug)]
pub struct PortPool {
    first: u16,
    last: u16,
    capacity: usize,
    free: VecDeque<u16>,
    /// Pairs that cannot be bound (held by another socket): never handed out again.
    withdrawn: BTreeSet<u16>,
}

impl PortPool {
    /// A pool over the inclusive range `first..=last`: every even port `p` with `p + 1 <= last`
    /// is one pair. A range holding no pair gives a pool that is always exhausted.
    pub fn new(first: u16, last: u16) -> PortPool {
        let start = u32::from(first) + u32::from(first % 2);
        let free: VecDeque<u16> = (start..u32::from(last))
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

    /// Takes a pair: its RTP port (RTCP is the next one).
    pub fn reserve(&mut self) -> Option<u16> {
        self.free.pop_front()
    }

    /// Gives a pair taken with [`reserve`](Self::reserve) back, to the end of the list (unless
    /// it was withdrawn meanwhile).
    pub fn release(&mut self, rtp: u16) {
        debug_assert!(!self.free.contains(&rtp), "port {rtp} released twice");
        if !self.withdrawn.contains(&rtp) {
            self.free.push_back(rtp);
        }
    }

    /// Takes the pair holding `port` (RTP or RTCP) out of the pool for good: free, it leaves
    /// the free list; held, it is not given back on release. Ports outside the range are
    /// ignored. Returns whether the pair was newly withdrawn.
    pub fn withdraw(&mut self, port: u16) -> bool {
        let rtp = port & !1;
        let in_range = rtp >= self.first && u32::from(rtp) < u32::from(self.last) && rtp > 0;
        if !in_range || !self.withdrawn.insert(rtp) {
            return false;
        }
        self.free.retain(|&p| p != rtp);
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
    use std::collections::HashSet;

    #[test]
    fn pairs_are_even_in_order_and_unique() {
        let mut pool = PortPool::new(20001, 20010);
        assert_eq!(pool.capacity(), 4); // 20002, 20004, 20006, 20008 (20010 has no RTCP port)
        let ports: Vec<u16> = (0..4).map(|_| pool.reserve().unwrap()).collect();
        assert_eq!(ports, [20002, 20004, 20006, 20008]);
        assert_eq!(ports.iter().collect::<HashSet<_>>().len(), 4);
        assert_eq!(pool.reserve(), None);
    }

    #[test]
    fn released_pair_is_reused_after_the_others() {
        let mut pool = PortPool::new(30000, 30005);
        let a = pool.reserve().unwrap();
        let b = pool.reserve().unwrap();
        assert_eq!((a, b), (30000, 30002));
        pool.release(a);
        assert_eq!(pool.reserve(), Some(30004));
        assert_eq!(pool.reserve(), Some(30000));
        pool.release(b);
        assert_eq!(pool.available(), 1);
    }

    #[test]
    fn withdrawn_pairs_are_never_handed_out_again() {
        let mut pool = PortPool::new(30000, 30007);
        assert!(pool.withdraw(30003), "the RTCP port names its pair");
        assert!(!pool.withdraw(30002), "already withdrawn");
        assert!(
            !pool.withdraw(29998) && !pool.withdraw(30008),
            "outside the range"
        );
        let held = pool.reserve().unwrap();
        assert_eq!(held, 30000);
        assert!(pool.withdraw(held));
        pool.release(held);
        assert_eq!((pool.available(), pool.withdrawn()), (2, 2));
        assert_eq!(
            [pool.reserve(), pool.reserve(), pool.reserve()],
            [Some(30004), Some(30006), None]
        );
    }

    #[test]
    fn empty_range_is_always_exhausted() {
        let mut pool = PortPool::new(50001, 50001);
        assert_eq!(pool.capacity(), 0);
        assert_eq!(pool.reserve(), None);
        let mut pool = PortPool::new(0, 3);
        assert_eq!(pool.reserve(), Some(2), "port 0 is never handed out");
    }
}
