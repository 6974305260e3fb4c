//! The sans-IO logic of one relayed stream: what to do with each datagram.
//!
//! A stream has four sockets: an A-facing pair (RTP, RTCP; leg A sends to it) and a B-facing
//! pair. [`StreamState`] is told about every datagram one of them received
//! ([`StreamState::on_datagram`]) and answers where to send it, out of the matching socket of
//! the other side (symmetric RTP: a leg receives from the socket it sends to), or why not. It
//! owns no socket and reads no clock, so every rule below is a unit test.
//!
//! The rules (unchanged from the relay inside b2bua):
//!
//! - A datagram that filled the receive buffer may have been cut short: dropped.
//! - The RTCP socket takes RTCP; the RTP socket takes RTP and multiplexed RTCP (RFC 5761).
//!   Anything else is dropped.
//! - Latching ([`learn`]), per leg and per socket kind: a leg's destination starts as the
//!   address of its SDP; the first valid packet from that leg (RTP on the RTP socket, RTCP on
//!   the RTCP socket; muxed RTCP never latches) latches its source as the destination, and
//!   from then on packets from any other source are dropped. A new SDP address for the leg
//!   ([`StreamState::set_remote`]) forgets its latches.
//! - A valid packet with no destination yet (no SDP address, nothing latched) is dropped.
//! - Every drop is counted in the direction the datagram came from, and so is a send the
//!   kernel refused ([`StreamState::on_send_failed`]).

use std::net::SocketAddr;
use std::time::Instant;

use crate::packet::{is_rtcp, is_rtp};

/// One side of a relayed stream. (The engine in b2bua has its own `Leg` with the same meaning;
/// media does not depend on b2bua, the binary maps one onto the other.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Leg {
    /// The caller: sends to the A-facing sockets.
    A,
    /// The callee: sends to the B-facing sockets.
    B,
}

impl Leg {
    /// The leg on the other side of the relay.
    pub fn other(self) -> Leg {
        match self {
            Leg::A => Leg::B,
            Leg::B => Leg::A,
        }
    }

    fn index(self) -> usize {
        match self {
            Leg::A => 0,
            Leg::B => 1,
        }
    }
}

/// Which socket of a leg's pair a datagram came in on, and goes out of: RTP on the even port,
/// RTCP on the next. Latches are kept per kind, since a phone sends them from two ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SocketKind {
    Rtp,
    Rtcp,
}

impl SocketKind {
    fn index(self) -> usize {
        match self {
            SocketKind::Rtp => 0,
            SocketKind::Rtcp => 1,
        }
    }
}

/// What one direction of a stream did: the engine's media report and the API's call stats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionCounters {
    /// Packets (RTP and RTCP) forwarded.
    pub packets: u64,
    /// Bytes of those packets (UDP payload).
    pub bytes: u64,
    /// Datagrams received and not forwarded: truncated, not RTP/RTCP, from a source other than
    /// the latched one, with nowhere to go yet, or refused by the kernel on send.
    pub dropped: u64,
}

/// Everything a stream reports: its two directions, what each leg is latched to, and when the
/// last valid packet came (for the engine's media-inactivity timer).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamCounters {
    /// Received on A-facing sockets, towards B.
    pub a_to_b: DirectionCounters,
    /// Received on B-facing sockets, towards A.
    pub b_to_a: DirectionCounters,
    /// The RTP source leg A is latched to.
    pub latched_a: Option<SocketAddr>,
    /// The RTP source leg B is latched to.
    pub latched_b: Option<SocketAddr>,
    /// The last valid RTP/RTCP in either direction (the `now` given with it), whether or not
    /// it could be forwarded.
    pub last_packet_at: Option<Instant>,
}

/// What [`StreamState::on_datagram`] decided: the I/O loop acts on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send the datagram, untouched, out of the socket of the same kind facing the other leg,
    /// to this address; then report [`StreamState::on_sent`] or [`StreamState::on_send_failed`].
    Forward(SocketAddr),
    /// Do nothing more with it; already counted as dropped.
    Drop(DropReason),
}

/// Why a datagram was not forwarded (all are counted as `dropped`; the reason is for tests and
/// logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// It filled the receive buffer: it may have been cut short.
    Truncated,
    /// Neither RTP nor RTCP, or RTP on the RTCP socket.
    NotRtp,
    /// The leg is latched to another source on this socket kind.
    ForeignSource,
    /// The other leg has no address for this socket kind yet: no SDP, nothing latched.
    NoDestination,
}

/// Where one socket kind of one leg sends to.
#[derive(Clone, Copy, Debug, Default)]
struct Latch {
    /// From the leg's latest SDP.
    sdp: Option<SocketAddr>,
    /// Learned from the leg's packets.
    latched: Option<SocketAddr>,
}

impl Latch {
    fn destination(&self) -> Option<SocketAddr> {
        self.latched.or(self.sdp)
    }
}

/// What the learning policy says about a valid datagram from a leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Learning {
    /// Relay it; the latch stays as it is.
    Accept,
    /// Relay it, and from now on this source is the leg's destination for this kind.
    Latch,
    /// Drop it: the leg is someone else.
    Refuse,
}

/// The learning policy, the one place that decides whose packets a leg accepts; a later issue
/// replaces it (ARCHITECTURE.md, "Hostile-network facts": rtpengine's delayed, heuristic and
/// strict-source modes).
///
/// Today: latch to the first valid packet that may latch (`may_latch`: not muxed RTCP), then
/// refuse every other source. Before the latch, anything valid is accepted.
fn learn(latch: &Latch, source: SocketAddr, may_latch: bool) -> Learning {
    match latch.latched {
        Some(latched) if latched == source => Learning::Accept,
        Some(_) => Learning::Refuse,
        None if may_latch => Learning::Latch,
        None => Learning::Accept,
    }
}

/// What one stream decides per datagram: validate, latch (learn the peer), choose where to
/// forward, count. No socket, no clock: `now` is an argument. The relay task owns one per
/// stream; another I/O backend would drive the same.
///
/// ```
/// use std::time::Instant;
/// use media::{Leg, SocketKind, StreamState, Verdict};
///
/// let mut stream = StreamState::new();
/// let (phone_a, phone_b) = ("192.0.2.1:4000".parse().unwrap(), "192.0.2.2:5000".parse().unwrap());
/// stream.set_remote(Leg::B, Some(phone_b), None); // B's SDP
/// let rtp = [0x80, 0, 0, 1, 0, 0, 0, 160, 0xde, 0xad, 0xbe, 0xef, 0xff];
/// let verdict = stream.on_datagram(Instant::now(), Leg::A, SocketKind::Rtp, phone_a, &rtp, false);
/// assert_eq!(verdict, Verdict::Forward(phone_b));
/// stream.on_sent(Leg::A, rtp.len());
/// assert_eq!(stream.counters().latched_a, Some(phone_a));
/// assert_eq!(stream.counters().a_to_b.packets, 1);
/// ```
#[derive(Clone, Debug, Default)]
pub struct StreamState {
    /// `[leg][kind]`: where each leg receives, by the leg the datagram came from.
    latches: [[Latch; 2]; 2],
    /// Whether [`StreamState::set_remote`] was ever called for the leg (the first call always
    /// counts as a change).
    remote_set: [bool; 2],
    /// `[a_to_b, b_to_a]`, indexed by the leg packets come from.
    counters: [DirectionCounters; 2],
    last_packet_at: Option<Instant>,
}

impl StreamState {
    /// A stream with no addresses: nothing can be forwarded until a leg has sent a packet or
    /// its SDP address is set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets where `leg` receives media, from its latest SDP. When the addresses differ from the
    /// previous ones (or are the first), the leg's latches are forgotten (its next valid packets
    /// latch again) and true is returned.
    pub fn set_remote(
        &mut self,
        leg: Leg,
        rtp: Option<SocketAddr>,
        rtcp: Option<SocketAddr>,
    ) -> bool {
        let [rtp_latch, rtcp_latch] = &self.latches[leg.index()];
        if self.remote_set[leg.index()] && rtp_latch.sdp == rtp && rtcp_latch.sdp == rtcp {
            return false;
        }
        self.remote_set[leg.index()] = true;
        self.latches[leg.index()] = [
            Latch {
                sdp: rtp,
                latched: None,
            },
            Latch {
                sdp: rtcp,
                latched: None,
            },
        ];
        true
    }

    /// A datagram of `packet.len()` bytes from `source` arrived on the `kind` socket facing
    /// `from`; `truncated` when it filled the receive buffer. Says where to forward it, or why
    /// it is dropped (and counts the drop).
    pub fn on_datagram(
        &mut self,
        now: Instant,
        from: Leg,
        kind: SocketKind,
        source: SocketAddr,
        packet: &[u8],
        truncated: bool,
    ) -> Verdict {
        let verdict = self.decide(now, from, kind, source, packet, truncated);
        if let Verdict::Drop(_) = verdict {
            self.counters[from.index()].dropped += 1;
        }
        verdict
    }

    fn decide(
        &mut self,
        now: Instant,
        from: Leg,
        kind: SocketKind,
        source: SocketAddr,
        packet: &[u8],
        truncated: bool,
    ) -> Verdict {
        if truncated {
            return Verdict::Drop(DropReason::Truncated);
        }
        // The RTCP socket takes RTCP; the RTP socket takes RTP and multiplexed RTCP
        // (RFC 5761), and only RTP latches there.
        let may_latch = match (kind, is_rtcp(packet)) {
            (SocketKind::Rtcp, true) => true,
            (SocketKind::Rtp, true) => false,
            (SocketKind::Rtp, false) if is_rtp(packet) => true,
            _ => return Verdict::Drop(DropReason::NotRtp),
        };
        let latch = &mut self.latches[from.index()][kind.index()];
        match learn(latch, source, may_latch) {
            Learning::Refuse => return Verdict::Drop(DropReason::ForeignSource),
            Learning::Latch => {
                latch.latched = Some(source);
                tracing::debug!(leg = ?from, ?kind, %source, "media latched");
            }
            Learning::Accept => {}
        }
        self.last_packet_at = Some(now);
        match self.latches[from.other().index()][kind.index()].destination() {
            Some(destination) => Verdict::Forward(destination),
            None => Verdict::Drop(DropReason::NoDestination),
        }
    }

    /// A datagram from `from` that was given [`Verdict::Forward`] went out.
    pub fn on_sent(&mut self, from: Leg, len: usize) {
        let counters = &mut self.counters[from.index()];
        counters.packets += 1;
        counters.bytes += len as u64;
    }

    /// A datagram from `from` that was given [`Verdict::Forward`] could not be sent: dropped.
    pub fn on_send_failed(&mut self, from: Leg) {
        self.counters[from.index()].dropped += 1;
    }

    /// What the stream counted so far.
    pub fn counters(&self) -> StreamCounters {
        StreamCounters {
            a_to_b: self.counters[0],
            b_to_a: self.counters[1],
            latched_a: self.latched(Leg::A),
            latched_b: self.latched(Leg::B),
            last_packet_at: self.last_packet_at,
        }
    }

    /// The RTP source `leg` is latched to.
    pub fn latched(&self, leg: Leg) -> Option<SocketAddr> {
        self.latches[leg.index()][SocketKind::Rtp.index()].latched
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn rtp(seq: u16) -> Vec<u8> {
        let mut packet = vec![0x80, 0x00];
        packet.extend_from_slice(&seq.to_be_bytes());
        packet.extend_from_slice(&[0, 0, 0, 160, 0x12, 0x34, 0x56, 0x78]);
        packet.extend_from_slice(&[0xd5; 160]);
        packet
    }

    const RTCP: [u8; 12] = [0x80, 201, 0, 1, 0xca, 0xfe, 0xba, 0xbe, 0x81, 202, 0, 0];

    /// Leg A's phone at .1 (RTP 4000, RTCP 4001), leg B's at .2; both SDPs known.
    struct Fixture {
        stream: StreamState,
        now: Instant,
        a_rtp: SocketAddr,
        a_rtcp: SocketAddr,
        b_rtp: SocketAddr,
        b_rtcp: SocketAddr,
    }

    fn fixture() -> Fixture {
        let mut f = Fixture {
            stream: StreamState::new(),
            now: Instant::now(),
            a_rtp: addr("192.0.2.1:4000"),
            a_rtcp: addr("192.0.2.1:4001"),
            b_rtp: addr("192.0.2.2:5000"),
            b_rtcp: addr("192.0.2.2:5001"),
        };
        assert!(f.stream.set_remote(Leg::A, Some(f.a_rtp), Some(f.a_rtcp)));
        assert!(f.stream.set_remote(Leg::B, Some(f.b_rtp), Some(f.b_rtcp)));
        f
    }

    impl Fixture {
        /// Feeds a datagram and, when forwarded, reports it sent.
        fn relay(&mut self, from: Leg, kind: SocketKind, source: SocketAddr, p: &[u8]) -> Verdict {
            let verdict = self
                .stream
                .on_datagram(self.now, from, kind, source, p, false);
            if let Verdict::Forward(_) = verdict {
                self.stream.on_sent(from, p.len());
            }
            verdict
        }
    }

    #[test]
    fn forwards_to_the_sdp_address_then_to_the_latched_source() {
        let mut f = fixture();
        // B has sent nothing: A's RTP goes to B's SDP address.
        let (a_rtp, b_rtp) = (f.a_rtp, f.b_rtp);
        assert_eq!(
            f.relay(Leg::A, SocketKind::Rtp, a_rtp, &rtp(1)),
            Verdict::Forward(b_rtp)
        );
        // B sends from a NAT mapping: it latches, and A's media follows it.
        let natted = addr("198.51.100.7:31000");
        assert_eq!(
            f.relay(Leg::B, SocketKind::Rtp, natted, &rtp(1)),
            Verdict::Forward(a_rtp)
        );
        assert_eq!(
            f.relay(Leg::A, SocketKind::Rtp, a_rtp, &rtp(2)),
            Verdict::Forward(natted)
        );
        let counters = f.stream.counters();
        assert_eq!(counters.latched_a, Some(a_rtp));
        assert_eq!(counters.latched_b, Some(natted));
        assert_eq!(counters.a_to_b.packets, 2);
        assert_eq!(counters.b_to_a.packets, 1);
    }

    #[test]
    fn foreign_source_is_dropped_after_the_latch() {
        let mut f = fixture();
        let (a_rtp, b_rtp) = (f.a_rtp, f.b_rtp);
        f.relay(Leg::A, SocketKind::Rtp, a_rtp, &rtp(1));
        let stray = addr("203.0.113.9:1234");
        assert_eq!(
            f.relay(Leg::A, SocketKind::Rtp, stray, &rtp(99)),
            Verdict::Drop(DropReason::ForeignSource)
        );
        // Muxed RTCP from the stray source is refused too once RTP latched.
        assert_eq!(
            f.relay(Leg::A, SocketKind::Rtp, stray, &RTCP),
            Verdict::Drop(DropReason::ForeignSource)
        );
        assert_eq!(
            f.relay(Leg::A, SocketKind::Rtp, a_rtp, &rtp(2)),
            Verdict::Forward(b_rtp)
        );
        let counters = f.stream.counters();
        assert_eq!(counters.latched_a, Some(a_rtp));
        assert_eq!(
            counters.a_to_b,
            DirectionCounters {
                packets: 2,
                bytes: 2 * rtp(0).len() as u64,
                dropped: 2
            }
        );
        // B's RTP still goes to A, not to the stray.
        assert_eq!(
            f.relay(Leg::B, SocketKind::Rtp, b_rtp, &rtp(1)),
            Verdict::Forward(a_rtp)
        );
    }

    #[test]
    fn rtcp_on_the_rtcp_socket_latches_that_socket_only() {
        let mut f = fixture();
        let (a_rtp, b_rtcp) = (f.a_rtp, f.b_rtcp);
        let a_rtcp_natted = addr("198.51.100.1:40001");
        assert_eq!(
            f.relay(Leg::A, SocketKind::Rtcp, a_rtcp_natted, &RTCP),
            Verdict::Forward(b_rtcp)
        );
        // The RTCP latch is not leg A's reported (RTP) latch, and RTP is still free to latch.
        assert_eq!(f.stream.counters().latched_a, None);
        assert_eq!(
            f.relay(Leg::B, SocketKind::Rtcp, b_rtcp, &RTCP),
            Verdict::Forward(a_rtcp_natted)
        );
        assert_eq!(
            f.relay(Leg::A, SocketKind::Rtcp, addr("203.0.113.9:1"), &RTCP),
            Verdict::Drop(DropReason::ForeignSource)
        );
        f.relay(Leg::A, SocketKind::Rtp, a_rtp, &rtp(1));
        assert_eq!(f.stream.counters().latched_a, Some(a_rtp));
        // RTP on the RTCP socket is not RTCP.
        assert_eq!(
            f.relay(Leg::A, SocketKind::Rtcp, a_rtcp_natted, &rtp(2)),
            Verdict::Drop(DropReason::NotRtp)
        );
        let counters = f.stream.counters();
        assert_eq!((counters.a_to_b.packets, counters.a_to_b.dropped), (2, 2));
        assert_eq!((counters.b_to_a.packets, counters.b_to_a.dropped), (1, 0));
    }

    #[test]
    fn muxed_rtcp_on_the_rtp_socket_is_relayed_and_does_not_latch() {
        let mut f = fixture();
        let (a_rtp, b_rtp) = (f.a_rtp, f.b_rtp);
        let somewhere = addr("198.51.100.1:5555");
        assert_eq!(
            f.relay(Leg::A, SocketKind::Rtp, somewhere, &RTCP),
            Verdict::Forward(b_rtp),
            "muxed RTCP goes out of the RTP socket"
        );
        assert_eq!(f.stream.counters().latched_a, None);
        // The real RTP source latches afterwards.
        f.relay(Leg::A, SocketKind::Rtp, a_rtp, &rtp(1));
        assert_eq!(f.stream.counters().latched_a, Some(a_rtp));
        assert_eq!(
            f.relay(Leg::A, SocketKind::Rtp, a_rtp, &RTCP),
            Verdict::Forward(b_rtp)
        );
        assert_eq!(f.stream.counters().a_to_b.packets, 3);
    }

    #[test]
    fn garbage_and_truncated_datagrams_are_dropped_and_counted_without_latching() {
        let mut f = fixture();
        let source = f.b_rtp;
        let now = f.now;
        for garbage in [
            &b"hello"[..],
            b"GET / HTTP/1.1\r\n\r\n",
            &[0u8; 40],
            &[0x40; 20],
            &[],
        ] {
            assert_eq!(
                f.relay(Leg::B, SocketKind::Rtp, source, garbage),
                Verdict::Drop(DropReason::NotRtp)
            );
        }
        assert_eq!(
            f.stream
                .on_datagram(now, Leg::B, SocketKind::Rtp, source, &rtp(1), true),
            Verdict::Drop(DropReason::Truncated)
        );
        let counters = f.stream.counters();
        assert_eq!(
            counters.b_to_a,
            DirectionCounters {
                packets: 0,
                bytes: 0,
                dropped: 6
            }
        );
        assert_eq!(counters.latched_b, None);
        assert_eq!(counters.last_packet_at, None, "garbage is not activity");
    }

    #[test]
    fn no_destination_is_dropped_but_latches_and_counts_as_activity() {
        let mut stream = StreamState::new();
        let now = Instant::now();
        let a = addr("192.0.2.1:4000");
        assert_eq!(
            stream.on_datagram(now, Leg::A, SocketKind::Rtp, a, &rtp(1), false),
            Verdict::Drop(DropReason::NoDestination)
        );
        let counters = stream.counters();
        assert_eq!(counters.a_to_b.dropped, 1);
        assert_eq!(counters.latched_a, Some(a));
        assert_eq!(counters.last_packet_at, Some(now));
        // B's first packet goes back to where A sends from.
        let b = addr("192.0.2.2:5000");
        assert_eq!(
            stream.on_datagram(now, Leg::B, SocketKind::Rtp, b, &rtp(1), false),
            Verdict::Forward(a)
        );
        // RTCP has no destination: A's latch is per socket kind.
        assert_eq!(
            stream.on_datagram(now, Leg::B, SocketKind::Rtcp, b, &RTCP, false),
            Verdict::Drop(DropReason::NoDestination)
        );
        // An SDP with no RTCP address: RTCP still has nowhere to go.
        stream.set_remote(Leg::A, Some(a), None);
        assert_eq!(
            stream.on_datagram(now, Leg::B, SocketKind::Rtcp, b, &RTCP, false),
            Verdict::Drop(DropReason::NoDestination)
        );
    }

    #[test]
    fn set_remote_forgets_latches_only_when_the_addresses_change() {
        let mut f = fixture();
        let (a_rtp, a_rtcp, b_rtp) = (f.a_rtp, f.a_rtcp, f.b_rtp);
        let natted = addr("198.51.100.7:31000");
        f.relay(Leg::A, SocketKind::Rtp, natted, &rtp(1));
        f.relay(Leg::A, SocketKind::Rtcp, natted, &RTCP);
        assert_eq!(f.stream.counters().latched_a, Some(natted));
        // The same SDP again (a refresh, a re-INVITE keeping the media): latches kept.
        assert!(!f.stream.set_remote(Leg::A, Some(a_rtp), Some(a_rtcp)));
        assert_eq!(f.stream.counters().latched_a, Some(natted));
        assert_eq!(
            f.relay(Leg::B, SocketKind::Rtp, b_rtp, &rtp(1)),
            Verdict::Forward(natted)
        );
        // B's SDP does not touch A's latches.
        assert!(f
            .stream
            .set_remote(Leg::B, Some(addr("192.0.2.3:6000")), None));
        assert_eq!(f.stream.counters().latched_a, Some(natted));
        // A moves: both its latches are forgotten, its media goes to the new SDP address and
        // the new source latches.
        let moved = addr("192.0.2.10:7000");
        let moved_rtcp = addr("192.0.2.10:7001");
        assert!(f.stream.set_remote(Leg::A, Some(moved), Some(moved_rtcp)));
        assert_eq!(f.stream.counters().latched_a, None);
        assert_eq!(
            f.relay(Leg::B, SocketKind::Rtp, b_rtp, &rtp(2)),
            Verdict::Forward(moved)
        );
        assert_eq!(
            f.relay(Leg::B, SocketKind::Rtcp, addr("192.0.2.2:5001"), &RTCP),
            Verdict::Forward(moved_rtcp)
        );
        assert_eq!(
            f.relay(Leg::A, SocketKind::Rtp, moved, &rtp(3)),
            Verdict::Forward(b_rtp),
            "B latched again to the source it kept sending from"
        );
        assert_eq!(f.stream.counters().latched_a, Some(moved));
        // The old source is foreign now.
        assert_eq!(
            f.relay(Leg::A, SocketKind::Rtp, natted, &rtp(4)),
            Verdict::Drop(DropReason::ForeignSource)
        );
    }

    #[test]
    fn first_set_remote_is_a_change_even_without_addresses() {
        let mut stream = StreamState::new();
        assert!(stream.set_remote(Leg::A, None, None));
        assert!(!stream.set_remote(Leg::A, None, None));
        let a = addr("192.0.2.1:4000");
        stream.on_datagram(Instant::now(), Leg::A, SocketKind::Rtp, a, &rtp(1), false);
        assert_eq!(stream.counters().latched_a, Some(a));
        assert!(!stream.set_remote(Leg::A, None, None));
        assert_eq!(
            stream.counters().latched_a,
            Some(a),
            "no change, latch kept"
        );
    }

    #[test]
    fn counters_bytes_send_failures_and_last_packet_at_from_now() {
        let mut f = fixture();
        let (a_rtp, b_rtp) = (f.a_rtp, f.b_rtp);
        let t0 = f.now;
        assert_eq!(f.stream.counters().last_packet_at, None);
        f.relay(Leg::A, SocketKind::Rtp, a_rtp, &rtp(1));
        assert_eq!(f.stream.counters().last_packet_at, Some(t0));
        f.now = t0 + Duration::from_secs(30);
        f.relay(Leg::B, SocketKind::Rtp, b_rtp, &rtp(1)[..20]);
        assert_eq!(
            f.stream.counters().last_packet_at,
            Some(t0 + Duration::from_secs(30))
        );
        // A drop is not activity.
        f.now = t0 + Duration::from_secs(60);
        f.relay(Leg::B, SocketKind::Rtp, addr("203.0.113.9:1"), &rtp(2));
        assert_eq!(
            f.stream.counters().last_packet_at,
            Some(t0 + Duration::from_secs(30))
        );
        // A forward the kernel refused is a drop, not a packet.
        assert_eq!(
            f.stream
                .on_datagram(f.now, Leg::A, SocketKind::Rtp, a_rtp, &rtp(2), false),
            Verdict::Forward(b_rtp)
        );
        f.stream.on_send_failed(Leg::A);
        let counters = f.stream.counters();
        assert_eq!(
            counters,
            StreamCounters {
                a_to_b: DirectionCounters {
                    packets: 1,
                    bytes: rtp(1).len() as u64,
                    dropped: 1
                },
                b_to_a: DirectionCounters {
                    packets: 1,
                    bytes: 20,
                    dropped: 1
                },
                latched_a: Some(a_rtp),
                latched_b: Some(b_rtp),
                last_packet_at: Some(t0 + Duration::from_secs(60)),
            }
        );
    }

    /// The per-datagram cost of the stream logic (validation, learning, choice of destination,
    /// counting): `cargo test -p media --release -- --ignored --nocapture on_datagram_cost`.
    #[test]
    #[ignore = "timing, not a check"]
    fn on_datagram_cost() {
        let mut f = fixture();
        let (a_rtp, b_rtp) = (f.a_rtp, f.b_rtp);
        let packets: Vec<Vec<u8>> = (0..64).map(rtp).collect();
        let rounds = 200_000u32;
        let started = Instant::now();
        let mut now = started;
        for round in 0..rounds {
            let (from, source) = if round % 2 == 0 {
                (Leg::A, a_rtp)
            } else {
                (Leg::B, b_rtp)
            };
            let packet = &packets[round as usize % 64];
            // The relay reads the clock once per batch of up to 64 datagrams.
            if round % 64 == 0 {
                now = Instant::now();
            }
            match f.stream.on_datagram(
                now,
                from,
                SocketKind::Rtp,
                source,
                std::hint::black_box(packet),
                false,
            ) {
                Verdict::Forward(to) => {
                    std::hint::black_box(to);
                    f.stream.on_sent(from, packet.len());
                }
                Verdict::Drop(reason) => panic!("{reason:?}"),
            }
        }
        let per = started.elapsed() / rounds;
        let clock = {
            let started = Instant::now();
            for _ in 0..rounds {
                std::hint::black_box(Instant::now());
            }
            started.elapsed() / rounds
        };
        println!("on_datagram + on_sent: {per:?} per datagram (Instant::now alone: {clock:?})");
        assert_eq!(f.stream.counters().a_to_b.packets, u64::from(rounds / 2));
    }
}
