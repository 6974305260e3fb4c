//! The relay port range (`media.rtp_ports`): even RTP ports, RTCP on the next odd one.
//!
//! [`PortPool`] keeps a FIFO free list of the even ports of the range, so allocating and
//! releasing are O(1), a pair is never handed out twice while held, and a released pair goes to
//! the back of the list (late packets of an ended call rarely reach the next one). A
//! [`PortPair`] guard gives its pair back when dropped. [`PortPool::allocate`] also binds the two
//! UDP sockets, skipping ports that another process holds.

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;

use parking_lot::Mutex;

use super::MediaError;

/// How many busy ports (held by another process) one allocation skips before giving up.
const MAX_BIND_ATTEMPTS: usize = 16;

/// The even ports of a range, shared by every call.
pub struct PortPool {
    first: u16,
    last: u16,
    capacity: usize,
    free: Mutex<VecDeque<u16>>,
}

impl fmt::Debug for PortPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortPool")
            .field("first", &self.first)
            .field("last", &self.last)
            .field("capacity", &self.capacity)
            .field("free", &self.available())
            .finish()
    }
}

impl PortPool {
    /// A pool over the inclusive range `first..=last`: every even port `p` with `p + 1 <= last`
    /// is one pair. A range holding no pair gives a pool that is always exhausted.
    pub fn new(first: u16, last: u16) -> Arc<PortPool> {
        let start = u32::from(first) + u32::from(first % 2);
        let free: VecDeque<u16> = (start..u32::from(last))
            .step_by(2)
            .filter(|p| *p > 0)
            .map(|p| p as u16)
            .collect();
        Arc::new(PortPool {
            first,
            last,
            capacity: free.len(),
            free: Mutex::new(free),
        })
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
        self.free.lock().len()
    }

    /// Takes a pair without binding anything.
    pub fn reserve(self: &Arc<Self>) -> Result<PortPair, MediaError> {
        let rtp = self.free.lock().pop_front().ok_or(MediaError::Exhausted)?;
        Ok(PortPair {
            rtp,
            pool: self.clone(),
        })
    }

    /// Takes a pair and binds its RTP and RTCP sockets on `bind_ip` (non-blocking, ready for
    /// tokio). A pair one of whose ports is held by another process goes back to the end of the
    /// free list and the next is tried, at most [`MAX_BIND_ATTEMPTS`] times.
    pub fn allocate(self: &Arc<Self>, bind_ip: IpAddr) -> Result<BoundPair, MediaError> {
        for _ in 0..MAX_BIND_ATTEMPTS.min(self.capacity) {
            let pair = self.reserve()?;
            match bind_pair(bind_ip, pair.rtp) {
                Ok((rtp, rtcp)) => return Ok(BoundPair { rtp, rtcp, pair }),
                Err(error) => {
                    tracing::debug!(port = pair.rtp, %error, "media port busy, skipped");
                    drop(pair);
                }
            }
        }
        if self.capacity > 0 {
            tracing::warn!("no bindable media port found");
        }
        Err(MediaError::Exhausted)
    }

    fn release(&self, rtp: u16) {
        self.free.lock().push_back(rtp);
    }
}

/// Receive and send buffer asked of the kernel for each relay socket: room for ~1 s of
/// 50 packet/s audio bursts many times over, so a scheduling hiccup of the relay task does
/// not drop packets. (The kernel may grant less; it is a ceiling, not an allocation.)
const RELAY_SOCKET_BUFFER: usize = 256 * 1024;

fn bind_pair(ip: IpAddr, rtp: u16) -> std::io::Result<(UdpSocket, UdpSocket)> {
    let rtp_socket = UdpSocket::bind(SocketAddr::new(ip, rtp))?;
    let rtcp_socket = UdpSocket::bind(SocketAddr::new(ip, rtp + 1))?;
    for socket in [&rtp_socket, &rtcp_socket] {
        socket.set_nonblocking(true)?;
        let raw = socket2::SockRef::from(socket);
        // Best effort: a smaller buffer still works, it only drops earlier under bursts.
        let _ = raw.set_recv_buffer_size(RELAY_SOCKET_BUFFER);
        let _ = raw.set_send_buffer_size(RELAY_SOCKET_BUFFER);
    }
    Ok((rtp_socket, rtcp_socket))
}

/// A held pair of ports (`rtp`, `rtp + 1`), given back to its pool on drop.
pub struct PortPair {
    rtp: u16,
    pool: Arc<PortPool>,
}

impl PortPair {
    pub fn rtp_port(&self) -> u16 {
        self.rtp
    }

    pub fn rtcp_port(&self) -> u16 {
        self.rtp + 1
    }
}

impl fmt::Debug for PortPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PortPair({}/{})", self.rtp, self.rtp + 1)
    }
}

impl Drop for PortPair {
    fn drop(&mut self) {
        self.pool.release(self.rtp);
    }
}

/// A held pair with its two bound sockets. Drop the sockets before the pair (field order does
/// that) so that a port is free in the kernel before the pool hands it out again.
#[derive(Debug)]
pub struct BoundPair {
    pub rtp: UdpSocket,
    pub rtcp: UdpSocket,
    pub pair: PortPair,
}

impl BoundPair {
    pub fn rtp_port(&self) -> u16 {
        self.pair.rtp_port()
    }

    pub fn rtcp_port(&self) -> u16 {
        self.pair.rtcp_port()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::net::Ipv4Addr;

    #[test]
    fn pairs_are_even_in_order_and_unique() {
        let pool = PortPool::new(20001, 20010);
        assert_eq!(pool.capacity(), 4); // 20002, 20004, 20006, 20008 (20010 has no RTCP port)
        let pairs: Vec<_> = (0..4).map(|_| pool.reserve().unwrap()).collect();
        let ports: Vec<u16> = pairs.iter().map(PortPair::rtp_port).collect();
        assert_eq!(ports, [20002, 20004, 20006, 20008]);
        assert!(pairs.iter().all(|p| p.rtcp_port() == p.rtp_port() + 1));
        assert_eq!(ports.iter().collect::<HashSet<_>>().len(), 4);
    }

    #[test]
    fn released_pair_is_reused_after_the_others() {
        let pool = PortPool::new(30000, 30005);
        let a = pool.reserve().unwrap();
        let b = pool.reserve().unwrap();
        assert_eq!((a.rtp_port(), b.rtp_port()), (30000, 30002));
        drop(a);
        assert_eq!(pool.reserve().unwrap().rtp_port(), 30004);
        // 30004 was returned by the temporary above, after 30000.
        assert_eq!(pool.reserve().unwrap().rtp_port(), 30000);
        drop(b);
    }

    #[test]
    fn exhaustion_and_drop_returns_the_pair() {
        let pool = PortPool::new(40000, 40003);
        let a = pool.reserve().unwrap();
        let b = pool.reserve().unwrap();
        assert_eq!(pool.available(), 0);
        assert_eq!(pool.reserve().unwrap_err(), MediaError::Exhausted);
        drop(b);
        assert_eq!(pool.available(), 1);
        let c = pool.reserve().unwrap();
        assert_eq!(c.rtp_port(), 40002);
        assert_ne!(a.rtp_port(), c.rtp_port());
        drop((a, c));
        assert_eq!(pool.available(), 2);
    }

    #[test]
    fn empty_range_is_always_exhausted() {
        let pool = PortPool::new(50001, 50001);
        assert_eq!(pool.capacity(), 0);
        assert_eq!(
            pool.allocate(Ipv4Addr::LOCALHOST.into()).unwrap_err(),
            MediaError::Exhausted
        );
    }

    #[test]
    fn allocate_binds_and_skips_busy_ports() {
        // Find a free pair of even ports to run the test on, then occupy the first one.
        let (busy, base) = (0..200)
            .find_map(|i| {
                let base = 46000 + i * 8;
                let busy = UdpSocket::bind((Ipv4Addr::LOCALHOST, base)).ok()?;
                (base + 2..base + 4)
                    .all(|p| UdpSocket::bind((Ipv4Addr::LOCALHOST, p)).is_ok())
                    .then_some((busy, base))
            })
            .expect("free ports on loopback");
        let pool = PortPool::new(base, base + 3);
        let bound = pool.allocate(Ipv4Addr::LOCALHOST.into()).unwrap();
        assert_eq!(bound.rtp_port(), base + 2);
        assert_eq!(bound.rtp.local_addr().unwrap().port(), base + 2);
        assert_eq!(bound.rtcp.local_addr().unwrap().port(), base + 3);
        // The busy pair went back to the pool; with it still busy, nothing else can be had.
        assert_eq!(pool.available(), 1);
        assert_eq!(
            pool.allocate(Ipv4Addr::LOCALHOST.into()).unwrap_err(),
            MediaError::Exhausted
        );
        assert_eq!(pool.available(), 1);
        drop(bound);
        assert_eq!(pool.available(), 2);
        drop(busy);
        let again = pool.allocate(Ipv4Addr::LOCALHOST.into()).unwrap();
        assert!(again.rtp_port() == base || again.rtp_port() == base + 2);
    }
}
