//! The sans-IO logic of one relayed stream: what to do with each datagram.
//!
//! A stream has four sockets: an A-facing pair (RTP, RTCP; leg A sends to it) and a B-facing
//! pair. [`StreamState`] is told about every datagram one of them received
//! ([`StreamState::on_datagram`]) and answers where to send it, out of the matching socket of
//! the other side (symmetric RTP: a leg receives from the socket it sends to), or why not. It
//! owns no socket and reads no clock, so every rule below is a unit test.
//!
//! The rules:
//!
//! - A datagram that filled the receive buffer may have been cut short: dropped.
//! - The RTCP socket takes RTCP; the RTP socket takes RTP and multiplexed RTCP (RFC 5761).
//!   Anything else is dropped.
//! - Learning ([`learn`]; SPEC.md "Trust boundary", after rtpengine's endpoint learning), per
//!   leg and per socket kind: until the leg's peer is learned, the other leg's media goes to
//!   the leg's SDP address, and the leg's own packets are relayed only from a source that
//!   latches. A source is *exact* when it is the SDP address of that kind, *same-IP* when its
//!   IP is the SDP's IP or the leg's signalling IP (any port), else *any*.
//!   - An exact source latches at once, for good: every other source is refused, even on the
//!     same IP (the SDP address is proven; another port there is another program more likely
//!     than a rebinding of a port-preserving NAT).
//!   - A same-IP source latches at once too, without waiting for the window in case the exact
//!     address speaks later: only the phone's own host or NAT, or the trusted signalling peer,
//!     can send from those IPs, and a phone behind NAT (private SDP address, public
//!     signalling IP) is the common case that would otherwise lose its first seconds of audio.
//!     It never moves to another IP; on its own IP it moves to the exact address at once, and
//!     to another port once the latched source has been quiet for [`REBIND_QUIET`] (a NAT
//!     rebinding; a quiet period, so that two sources on one IP cannot make it flap).
//!   - `heuristic` ([`LearningMode::Heuristic`]): when the learning window
//!     ([`LearningConfig::window`], `media.learning_secs`, counted from the leg's first valid
//!     packet of that kind) is over with neither seen, the first source seen latches. That
//!     latch is provisional: a later exact or same-IP packet, from any IP, replaces it
//!     (strictly better evidence), after which the rules above hold. Only the same-IP
//!     rebinding applies to it otherwise: another source on another IP is refused.
//!   - `strict` ([`LearningMode::Strict`]): exact and same-IP only; other sources are never
//!     relayed.
//!   - Before the leg has learned, packets that may not latch are dropped
//!     ([`DropReason::NotLearned`]): a source spraying the relay's ports during set-up is
//!     neither heard (its packets are not relayed) nor hears (the other leg's media goes to
//!     the SDP address, not to it).
//!   - A leg with no SDP address (none yet, or `0.0.0.0` on hold) has no exact source; its
//!     signalling IP still makes same-IP sources, and the window fallback still applies.
//!   - Multiplexed RTCP on the RTP socket is judged by the RTP latch but never latches.
//!   - A new SDP address for the leg ([`StreamState::set_remote`]) forgets what it learned
//!     (and restarts the window): the new address is new evidence.
//! - A valid packet with no destination yet (no SDP address, nothing latched) is dropped.
//! - Every drop is counted in the direction the datagram came from, and so is a send the
//!   kernel refused ([`StreamState::on_send_failed`]).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::packet::{is_rtcp, is_rtp};
use crate::socket::canonical;

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

/// Which sources may teach a leg its peer (`media.learning`); see the module documentation.
/// A choice because the fallback trades safety for reach: it finds phones behind relays and
/// NATs that neither the SDP nor the signalling names, and it is the one a sprayer can win.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LearningMode {
    /// Exact SDP address, else its IP or the signalling IP, else (after the window, and only
    /// until better evidence comes) the first source seen.
    #[default]
    Heuristic,
    /// Exact SDP address or its IP or the signalling IP only.
    Strict,
}

/// How streams learn their legs' peers: one per driver (`media.learning`,
/// `media.learning_secs`), the same for every stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LearningConfig {
    pub mode: LearningMode,
    /// How long a leg waits, from its first packet of a kind, for an exact or same-IP source
    /// before the heuristic fallback latches the first source seen. At most
    /// [`LearningConfig::MAX_WINDOW`].
    pub window: Duration,
}

impl LearningConfig {
    /// The window's default (SPEC.md: `media.learning_secs = 3`, rtpengine's delay).
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(3);
    /// The longest window a configuration may ask for: an hour is already beyond any call
    /// set-up; the bound keeps every instant computed from it far from overflow.
    pub const MAX_WINDOW: Duration = Duration::from_secs(3600);
}

impl Default for LearningConfig {
    fn default() -> Self {
        LearningConfig {
            mode: LearningMode::Heuristic,
            window: Self::DEFAULT_WINDOW,
        }
    }
}

/// The IP each leg's signalling comes from (leg A: the peer that sent the INVITE; leg B: the
/// trunk), given when a stream opens: media from that IP is as trustworthy as media from the
/// SDP's IP, and for a phone behind NAT it is the only public IP known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignallingIps {
    pub a: Option<IpAddr>,
    pub b: Option<IpAddr>,
}

impl SignallingIps {
    fn get(&self, leg: Leg) -> Option<IpAddr> {
        match leg {
            Leg::A => self.a,
            Leg::B => self.b,
        }
    }
}

/// How long a same-IP (or provisional) latch's source must have been quiet before a packet
/// from another port of its IP moves the latch there (a NAT rebinding). Two sources on one IP
/// sending at once cannot make it flap; a rebinding costs this much audio.
pub const REBIND_QUIET: Duration = Duration::from_secs(1);

/// What one direction of a stream did: the engine's media report and the API's call stats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionCounters {
    /// Packets (RTP and RTCP) forwarded.
    pub packets: u64,
    /// Bytes of those packets (UDP payload).
    pub bytes: u64,
    /// Datagrams received and not forwarded: truncated, not RTP/RTCP, from a source the leg
    /// does not accept, with nowhere to go yet, or refused by the kernel on send.
    pub dropped: u64,
    /// Of `dropped`, those refused for their source ([`DropReason::ForeignSource`],
    /// [`DropReason::NotLearned`]): someone else sending to the leg's ports.
    pub foreign: u64,
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
    /// The last relayable RTP/RTCP in either direction (the `now` given with it), whether or
    /// not it had a destination; packets refused for their source are not activity.
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
    /// The leg has learned nothing on this socket kind yet and this source may not latch (yet):
    /// not the SDP address, its IP or the signalling IP, and (heuristic) the window is not over
    /// or another source was seen first.
    NotLearned,
    /// The other leg has no address for this socket kind yet: no SDP, nothing latched.
    NoDestination,
}

/// How strongly a source is tied to a leg; ordered, weakest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Evidence {
    /// Nothing but having sent: the heuristic fallback.
    Any,
    /// The SDP's IP or the leg's signalling IP, another port.
    SameIp,
    /// The SDP address itself.
    Exact,
}

/// A source a leg latched to.
#[derive(Clone, Copy, Debug)]
struct Learned {
    source: SocketAddr,
    evidence: Evidence,
    /// Its last packet (for [`REBIND_QUIET`]).
    last_at: Instant,
}

/// Where one socket kind of one leg sends to, and what is known of it.
#[derive(Clone, Copy, Debug, Default)]
struct Latch {
    /// From the leg's latest SDP.
    sdp: Option<SocketAddr>,
    /// Learned from the leg's packets.
    learned: Option<Learned>,
    /// While nothing is learned: when the first valid packet came (the window starts) and its
    /// source (the heuristic fallback's candidate).
    first_seen: Option<(Instant, SocketAddr)>,
}

impl Latch {
    fn destination(&self) -> Option<SocketAddr> {
        self.learned.map(|l| l.source).or(self.sdp)
    }
}

/// What the learning policy says about a valid datagram from a leg.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Learning {
    /// Relay it; the latch stays as it is.
    Accept,
    /// From now on `source` is the leg's peer for this kind; relay the datagram if it came
    /// from there. (At the window's end the candidate may be another source than the packet's.)
    Latch {
        source: SocketAddr,
        evidence: Evidence,
    },
    /// Drop it, for this reason.
    Refuse(DropReason),
}

fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    // The relay gives canonical sources and SDP addresses are kept canonical; a signalling
    // IP could still come mapped from an embedder.
    a.to_canonical() == b.to_canonical()
}

/// How `source` is tied to a leg whose SDP address of this kind is `sdp`.
fn classify(sdp: Option<SocketAddr>, signalling: Option<IpAddr>, source: SocketAddr) -> Evidence {
    let ip = source.ip();
    match sdp {
        Some(sdp) if sdp.port() == source.port() && same_ip(sdp.ip(), ip) => Evidence::Exact,
        _ if sdp.is_some_and(|sdp| same_ip(sdp.ip(), ip))
            || signalling.is_some_and(|s| same_ip(s, ip)) =>
        {
            Evidence::SameIp
        }
        _ => Evidence::Any,
    }
}

/// The learning policy, the one place that decides whose packets a leg accepts (the rules are
/// in the module documentation). Pure: the caller applies the answer.
fn learn(
    latch: &Latch,
    signalling: Option<IpAddr>,
    config: &LearningConfig,
    source: SocketAddr,
    now: Instant,
) -> Learning {
    let evidence = classify(latch.sdp, signalling, source);
    let Some(learned) = latch.learned else {
        if evidence >= Evidence::SameIp {
            return Learning::Latch { source, evidence };
        }
        if config.mode == LearningMode::Strict {
            return Learning::Refuse(DropReason::NotLearned);
        }
        let (started, candidate) = latch.first_seen.unwrap_or((now, source));
        return if now.saturating_duration_since(started) >= config.window {
            Learning::Latch {
                source: candidate,
                evidence: Evidence::Any,
            }
        } else {
            Learning::Refuse(DropReason::NotLearned)
        };
    };
    if learned.source == source {
        return Learning::Accept;
    }
    if learned.evidence == Evidence::Exact {
        return Learning::Refuse(DropReason::ForeignSource);
    }
    let on_its_ip = same_ip(learned.source.ip(), source.ip());
    // Better evidence: a provisional latch gives way to it from anywhere; a same-IP latch only
    // to the exact address on its own IP.
    if evidence > learned.evidence && (learned.evidence == Evidence::Any || on_its_ip) {
        return Learning::Latch { source, evidence };
    }
    // A NAT rebinding: the latched source went quiet and its IP speaks from another port.
    if on_its_ip && now.saturating_duration_since(learned.last_at) >= REBIND_QUIET {
        return Learning::Latch {
            source,
            evidence: evidence.max(learned.evidence),
        };
    }
    Learning::Refuse(DropReason::ForeignSource)
}

/// What one stream decides per datagram: validate, learn the peer, choose where to forward,
/// count. No socket, no clock: `now` is an argument. The relay task owns one per stream;
/// another I/O backend would drive the same.
///
/// ```
/// use std::time::Instant;
/// use media::{LearningConfig, Leg, SignallingIps, SocketKind, StreamState, Verdict};
///
/// let mut stream = StreamState::new(LearningConfig::default(), SignallingIps::default());
/// let (phone_a, phone_b) = ("192.0.2.1:4000".parse().unwrap(), "192.0.2.2:5000".parse().unwrap());
/// stream.set_remote(Leg::A, Some(phone_a), None); // A's SDP
/// stream.set_remote(Leg::B, Some(phone_b), None); // B's SDP
/// let rtp = [0x80, 0, 0, 1, 0, 0, 0, 160, 0xde, 0xad, 0xbe, 0xef, 0xff];
/// let verdict = stream.on_datagram(Instant::now(), Leg::A, SocketKind::Rtp, phone_a, &rtp, false);
/// assert_eq!(verdict, Verdict::Forward(phone_b));
/// stream.on_sent(Leg::A, rtp.len());
/// assert_eq!(stream.counters().latched_a, Some(phone_a));
/// assert_eq!(stream.counters().a_to_b.packets, 1);
/// ```
#[derive(Clone, Debug)]
pub struct StreamState {
    config: LearningConfig,
    signalling: SignallingIps,
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
    /// A stream with no SDP addresses yet, learning by `config`, its legs signalling from
    /// `signalling`: nothing can be forwarded towards a leg until its SDP address is set or
    /// it is learned.
    pub fn new(config: LearningConfig, signalling: SignallingIps) -> Self {
        StreamState {
            config,
            signalling,
            latches: Default::default(),
            remote_set: [false; 2],
            counters: Default::default(),
            last_packet_at: None,
        }
    }

    /// Sets where `leg` receives media, from its latest SDP. When the addresses differ from the
    /// previous ones (or are the first), what the leg learned is forgotten (its window starts
    /// again at its next packet) and true is returned.
    ///
    /// Addresses are kept in canonical form (an SDP naming `IN IP6 ::ffff:a.b.c.d` means the
    /// IPv4 host), as the relay gives datagram sources.
    pub fn set_remote(
        &mut self,
        leg: Leg,
        rtp: Option<SocketAddr>,
        rtcp: Option<SocketAddr>,
    ) -> bool {
        let (rtp, rtcp) = (rtp.map(canonical), rtcp.map(canonical));
        let [rtp_latch, rtcp_latch] = &self.latches[leg.index()];
        if self.remote_set[leg.index()] && rtp_latch.sdp == rtp && rtcp_latch.sdp == rtcp {
            return false;
        }
        self.remote_set[leg.index()] = true;
        self.latches[leg.index()] = [
            Latch {
                sdp: rtp,
                ..Latch::default()
            },
            Latch {
                sdp: rtcp,
                ..Latch::default()
            },
        ];
        true
    }

    /// A datagram of `packet.len()` bytes from `source` arrived on the `kind` socket facing
    /// `from`; `truncated` when it filled the receive buffer. Says where to forward it, or why
    /// it is dropped (and counts the drop).
    ///
    /// `source` may be IPv4-mapped (a dual-stack socket's report of an IPv4 peer): it is
    /// learned and compared as the IPv4 address it stands for, and a [`Verdict::Forward`]
    /// destination is likewise canonical; the I/O loop maps it back to its socket's family.
    pub fn on_datagram(
        &mut self,
        now: Instant,
        from: Leg,
        kind: SocketKind,
        source: SocketAddr,
        packet: &[u8],
        truncated: bool,
    ) -> Verdict {
        let source = canonical(source);
        let verdict = self.decide(now, from, kind, source, packet, truncated);
        if let Verdict::Drop(reason) = verdict {
            let counters = &mut self.counters[from.index()];
            counters.dropped += 1;
            if matches!(reason, DropReason::ForeignSource | DropReason::NotLearned) {
                counters.foreign += 1;
            }
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
        let signalling = self.signalling.get(from);
        let latch = &mut self.latches[from.index()][kind.index()];
        match learn(latch, signalling, &self.config, source, now) {
            Learning::Refuse(reason) => {
                // The window starts with the leg's first packet, and its source is the
                // fallback's candidate; muxed RTCP is no candidate.
                if may_latch && latch.learned.is_none() && latch.first_seen.is_none() {
                    latch.first_seen = Some((now, source));
                }
                return Verdict::Drop(reason);
            }
            Learning::Latch {
                source: learned,
                evidence,
            } => {
                if !may_latch {
                    // Muxed RTCP from a source that could latch: relayed, the latch untouched.
                    if learned != source {
                        return Verdict::Drop(DropReason::NotLearned);
                    }
                } else {
                    latch.learned = Some(Learned {
                        source: learned,
                        evidence,
                        last_at: now,
                    });
                    latch.first_seen = None;
                    tracing::debug!(leg = ?from, ?kind, source = %learned, ?evidence, "media latched");
                    if learned != source {
                        // The window ended on another source's packet: the first one seen won.
                        return Verdict::Drop(DropReason::ForeignSource);
                    }
                }
            }
            Learning::Accept => {
                if let Some(learned) = &mut latch.learned {
                    learned.last_at = now;
                }
            }
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
        self.latches[leg.index()][SocketKind::Rtp.index()]
            .learned
            .map(|l| l.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    const SECOND: Duration = Duration::from_secs(1);

    /// Leg A's phone at .1 (RTP 4000, RTCP 4001), signalling from a PBX at .100; leg B's
    /// media gateway at .2, its trunk signalling from 198.51.100.50; both SDPs known.
    struct Fixture {
        stream: StreamState,
        now: Instant,
        a_rtp: SocketAddr,
        a_rtcp: SocketAddr,
        b_rtp: SocketAddr,
        b_rtcp: SocketAddr,
    }

    const A_SIGNALLING: &str = "192.0.2.100";
    const B_SIGNALLING: &str = "198.51.100.50";
    /// Nobody's: the address of someone spraying the relay's ports.
    const ATTACKER: &str = "203.0.113.66:6666";

    fn signalling() -> SignallingIps {
        SignallingIps {
            a: Some(A_SIGNALLING.parse().unwrap()),
            b: Some(B_SIGNALLING.parse().unwrap()),
        }
    }

    fn fixture_with(mode: LearningMode) -> Fixture {
        let config = LearningConfig {
            mode,
            ..LearningConfig::default()
        };
        let mut f = Fixture {
            stream: StreamState::new(config, signalling()),
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

    fn fixture() -> Fixture {
        fixture_with(LearningMode::Heuristic)
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

        fn rtp(&mut self, from: Leg, source: SocketAddr) -> Verdict {
            self.relay(from, SocketKind::Rtp, source, &rtp(1))
        }
    }

    const NOT_LEARNED: Verdict = Verdict::Drop(DropReason::NotLearned);
    const FOREIGN: Verdict = Verdict::Drop(DropReason::ForeignSource);

    #[test]
    fn forwards_to_the_sdp_address_then_to_the_learned_source() {
        let mut f = fixture();
        // B has sent nothing: A's RTP goes to B's SDP address.
        let (a_rtp, b_rtp) = (f.a_rtp, f.b_rtp);
        assert_eq!(f.rtp(Leg::A, a_rtp), Verdict::Forward(b_rtp));
        // B sends from a NAT mapping of its signalling IP: same-IP, it latches at once, and
        // A's media follows it.
        let natted = addr("198.51.100.50:31000");
        assert_eq!(f.rtp(Leg::B, natted), Verdict::Forward(a_rtp));
        assert_eq!(f.rtp(Leg::A, a_rtp), Verdict::Forward(natted));
        let counters = f.stream.counters();
        assert_eq!(counters.latched_a, Some(a_rtp));
        assert_eq!(counters.latched_b, Some(natted));
        assert_eq!(counters.a_to_b.packets, 2);
        assert_eq!(counters.b_to_a.packets, 1);
    }

    #[test]
    fn before_learning_a_sprayer_is_neither_heard_nor_hears() {
        for mode in [LearningMode::Heuristic, LearningMode::Strict] {
            let mut f = fixture_with(mode);
            let (a_rtp, b_rtp, attacker) = (f.a_rtp, f.b_rtp, addr(ATTACKER));
            // The attacker sprays both legs' RTP and RTCP ports before either phone speaks.
            for from in [Leg::A, Leg::B] {
                assert_eq!(f.rtp(from, attacker), NOT_LEARNED, "{mode:?}");
                assert_eq!(
                    f.relay(from, SocketKind::Rtcp, attacker, &RTCP),
                    NOT_LEARNED
                );
                assert_eq!(f.relay(from, SocketKind::Rtp, attacker, &RTCP), NOT_LEARNED);
            }
            // The phones' media goes to the SDP addresses, not to the attacker, and latches.
            f.now += SECOND;
            assert_eq!(f.rtp(Leg::A, a_rtp), Verdict::Forward(b_rtp));
            assert_eq!(f.rtp(Leg::B, b_rtp), Verdict::Forward(a_rtp));
            // Well after the window, the attacker is still refused.
            f.now += 10 * SECOND;
            assert_eq!(f.rtp(Leg::A, attacker), FOREIGN);
            assert_eq!(f.rtp(Leg::B, attacker), FOREIGN);
            let counters = f.stream.counters();
            assert_eq!(
                (counters.latched_a, counters.latched_b),
                (Some(a_rtp), Some(b_rtp))
            );
            for direction in [counters.a_to_b, counters.b_to_a] {
                assert_eq!(
                    (direction.packets, direction.dropped, direction.foreign),
                    (1, 4, 4)
                );
            }
        }
    }

    #[test]
    fn an_exact_latch_is_final_even_on_its_own_ip() {
        let mut f = fixture();
        let (a_rtp, b_rtp) = (f.a_rtp, f.b_rtp);
        f.rtp(Leg::A, a_rtp);
        let stray = addr(ATTACKER);
        assert_eq!(f.rtp(Leg::A, stray), FOREIGN);
        // Muxed RTCP from the stray source is refused too.
        assert_eq!(f.relay(Leg::A, SocketKind::Rtp, stray, &RTCP), FOREIGN);
        // Another port of the phone's IP, even after a long silence: not a rebinding.
        f.now += 10 * SECOND;
        assert_eq!(f.rtp(Leg::A, addr("192.0.2.1:4002")), FOREIGN);
        // The signalling IP does not take over an exact latch either.
        assert_eq!(f.rtp(Leg::A, addr("192.0.2.100:4000")), FOREIGN);
        assert_eq!(f.rtp(Leg::A, a_rtp), Verdict::Forward(b_rtp));
        let counters = f.stream.counters();
        assert_eq!(counters.latched_a, Some(a_rtp));
        assert_eq!(
            counters.a_to_b,
            DirectionCounters {
                packets: 2,
                bytes: 2 * rtp(0).len() as u64,
                dropped: 4,
                foreign: 4,
            }
        );
        // B's RTP still goes to A, not to the stray.
        assert_eq!(f.rtp(Leg::B, b_rtp), Verdict::Forward(a_rtp));
    }

    #[test]
    fn a_same_ip_latch_keeps_its_ip_moves_to_the_exact_address_and_follows_a_rebinding() {
        let mut f = fixture();
        let (a_rtp, b_rtp) = (f.a_rtp, f.b_rtp);
        // A's phone sends from another port of its SDP IP (a port-changing NAT on the host).
        let first = addr("192.0.2.1:7000");
        assert_eq!(f.rtp(Leg::A, first), Verdict::Forward(b_rtp));
        assert_eq!(f.stream.latched(Leg::A), Some(first));
        // Its signalling IP is same-IP evidence too, but another IP: refused.
        assert_eq!(f.rtp(Leg::A, addr("192.0.2.100:7000")), FOREIGN);
        // A third port of the IP while the latched one is alive: refused (no flapping)...
        f.now += SECOND / 2;
        f.rtp(Leg::A, first);
        let rebound = addr("192.0.2.1:7002");
        f.now += SECOND / 2;
        assert_eq!(f.rtp(Leg::A, rebound), FOREIGN);
        // ...and once it has been quiet for REBIND_QUIET, a rebinding: the latch moves.
        f.now += REBIND_QUIET;
        assert_eq!(f.rtp(Leg::A, rebound), Verdict::Forward(b_rtp));
        assert_eq!(f.rtp(Leg::B, b_rtp), Verdict::Forward(rebound));
        assert_eq!(f.rtp(Leg::A, first), FOREIGN, "the old port is foreign now");
        // The exact SDP address takes over at once (same IP, better evidence), for good.
        assert_eq!(f.rtp(Leg::A, a_rtp), Verdict::Forward(b_rtp));
        assert_eq!(f.stream.latched(Leg::A), Some(a_rtp));
        f.now += 10 * SECOND;
        assert_eq!(f.rtp(Leg::A, rebound), FOREIGN);
    }

    #[test]
    fn a_same_ip_latch_on_the_signalling_ip_never_moves_to_the_sdp_ip() {
        let mut f = fixture();
        let (a_rtp, b_rtp) = (f.a_rtp, f.b_rtp);
        let pbx = addr("192.0.2.100:20000");
        assert_eq!(f.rtp(Leg::A, pbx), Verdict::Forward(b_rtp));
        f.now += 10 * SECOND;
        assert_eq!(
            f.rtp(Leg::A, a_rtp),
            FOREIGN,
            "another IP: only a new SDP moves it"
        );
        assert_eq!(f.stream.latched(Leg::A), Some(pbx));
    }

    #[test]
    fn heuristic_falls_back_to_the_first_source_after_the_window_provisionally() {
        let mut f = fixture();
        let (a_rtp, b_rtp) = (f.a_rtp, f.b_rtp);
        let t0 = f.now;
        // A's phone is behind a media relay neither its SDP nor its signalling names.
        let relayed = addr("198.51.100.99:40000");
        assert_eq!(f.rtp(Leg::A, relayed), NOT_LEARNED);
        f.now = t0 + LearningConfig::DEFAULT_WINDOW - Duration::from_millis(1);
        assert_eq!(
            f.rtp(Leg::A, relayed),
            NOT_LEARNED,
            "the window is not over"
        );
        assert_eq!(
            f.rtp(Leg::B, b_rtp),
            Verdict::Forward(a_rtp),
            "B's media to A's SDP"
        );
        f.now = t0 + LearningConfig::DEFAULT_WINDOW;
        assert_eq!(f.rtp(Leg::A, relayed), Verdict::Forward(b_rtp));
        assert_eq!(f.rtp(Leg::B, b_rtp), Verdict::Forward(relayed));
        // Another source of no standing, on another IP: refused.
        assert_eq!(f.rtp(Leg::A, addr(ATTACKER)), FOREIGN);
        // The provisional latch follows a rebinding on its IP, as a same-IP latch does.
        f.now += REBIND_QUIET;
        let rebound = addr("198.51.100.99:40002");
        assert_eq!(f.rtp(Leg::A, rebound), Verdict::Forward(b_rtp));
        // Strictly better evidence replaces it, from any IP: here the signalling IP...
        let pbx = addr("192.0.2.100:20000");
        assert_eq!(f.rtp(Leg::A, pbx), Verdict::Forward(b_rtp));
        assert_eq!(f.stream.latched(Leg::A), Some(pbx));
        // ...and from then on it is a same-IP latch: the fallback source is foreign.
        f.now += 10 * SECOND;
        assert_eq!(f.rtp(Leg::A, rebound), FOREIGN);
    }

    #[test]
    fn the_window_ends_on_the_first_source_seen_not_the_latest() {
        let mut f = fixture();
        let (b_rtp, attacker) = (f.b_rtp, addr(ATTACKER));
        let t0 = f.now;
        assert_eq!(f.rtp(Leg::A, attacker), NOT_LEARNED);
        f.now = t0 + SECOND;
        let phone = addr("198.51.100.99:40000");
        assert_eq!(f.rtp(Leg::A, phone), NOT_LEARNED);
        // The window counts from the attacker's packet, the first the leg saw; the first
        // source seen wins the fallback, whoever's packet ends the window.
        f.now = t0 + LearningConfig::DEFAULT_WINDOW;
        assert_eq!(f.rtp(Leg::A, phone), FOREIGN);
        assert_eq!(f.stream.latched(Leg::A), Some(attacker));
        assert_eq!(f.rtp(Leg::A, attacker), Verdict::Forward(b_rtp));
        // The phone's exact address still beats it: the latch was provisional.
        let a_rtp = f.a_rtp;
        assert_eq!(f.rtp(Leg::A, a_rtp), Verdict::Forward(b_rtp));
        assert_eq!(f.rtp(Leg::A, attacker), FOREIGN);
    }

    #[test]
    fn strict_never_falls_back_but_learns_exact_and_same_ip_sources() {
        let mut f = fixture_with(LearningMode::Strict);
        let (a_rtp, b_rtp) = (f.a_rtp, f.b_rtp);
        let relayed = addr("198.51.100.99:40000");
        for _ in 0..10 {
            assert_eq!(f.rtp(Leg::A, relayed), NOT_LEARNED);
            f.now += SECOND;
        }
        assert_eq!(f.stream.latched(Leg::A), None);
        assert_eq!(
            f.rtp(Leg::B, b_rtp),
            Verdict::Forward(a_rtp),
            "A's SDP address"
        );
        // The same two steps as heuristic mode for sources with standing.
        let natted = addr("192.0.2.100:20000");
        assert_eq!(f.rtp(Leg::A, natted), Verdict::Forward(b_rtp));
        assert_eq!(f.stream.latched(Leg::A), Some(natted));
        let mut exact = fixture_with(LearningMode::Strict);
        assert_eq!(exact.rtp(Leg::A, a_rtp), Verdict::Forward(b_rtp));
    }

    #[test]
    fn a_zero_window_latches_the_first_source_at_once() {
        let config = LearningConfig {
            mode: LearningMode::Heuristic,
            window: Duration::ZERO,
        };
        let mut stream = StreamState::new(config, SignallingIps::default());
        let (now, phone) = (Instant::now(), addr("198.51.100.99:40000"));
        let verdict = stream.on_datagram(now, Leg::A, SocketKind::Rtp, phone, &rtp(1), false);
        assert_eq!(verdict, Verdict::Drop(DropReason::NoDestination));
        assert_eq!(stream.latched(Leg::A), Some(phone));
    }

    #[test]
    fn without_an_sdp_address_the_signalling_ip_still_counts() {
        let mut f = fixture();
        let b_rtp = f.b_rtp;
        // On hold (`c=0.0.0.0`): no SDP address.
        assert!(f.stream.set_remote(Leg::A, None, None));
        assert_eq!(f.rtp(Leg::A, addr("192.0.2.1:4000")), NOT_LEARNED);
        let pbx = addr("192.0.2.100:20000");
        assert_eq!(f.rtp(Leg::A, pbx), Verdict::Forward(b_rtp));
        // No SDP and no signalling IP: only the fallback, after the window.
        let mut stream = StreamState::new(LearningConfig::default(), SignallingIps::default());
        let (t0, phone) = (f.now, addr("192.0.2.1:4000"));
        let packet = rtp(1);
        let at = |stream: &mut StreamState, now| {
            stream.on_datagram(now, Leg::A, SocketKind::Rtp, phone, &packet, false)
        };
        assert_eq!(at(&mut stream, t0), NOT_LEARNED);
        assert_eq!(
            at(&mut stream, t0 + 3 * SECOND),
            Verdict::Drop(DropReason::NoDestination)
        );
        assert_eq!(stream.latched(Leg::A), Some(phone));
    }

    #[test]
    fn ipv4_mapped_sources_match_ipv4_addresses() {
        let mut f = fixture();
        let b_rtp = f.b_rtp;
        // What a dual-stack relay socket reports for A's phone.
        let mapped = addr("[::ffff:192.0.2.1]:4000");
        assert_eq!(f.rtp(Leg::A, mapped), Verdict::Forward(b_rtp));
        let mapped_pbx = addr("[::ffff:192.0.2.100]:9");
        assert_eq!(f.rtp(Leg::A, mapped_pbx), FOREIGN, "latched exact");
        // Latched, and sent to, as the IPv4 address it is (the relay maps it back for an
        // IPv6 socket).
        assert_eq!(
            f.rtp(Leg::B, addr("[::ffff:198.51.100.50]:9")),
            Verdict::Forward(addr("192.0.2.1:4000"))
        );
    }

    #[test]
    fn rtcp_on_the_rtcp_socket_latches_that_socket_only() {
        let mut f = fixture();
        let (a_rtp, b_rtcp) = (f.a_rtp, f.b_rtcp);
        let a_rtcp_natted = addr("192.0.2.1:40001");
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
            FOREIGN
        );
        f.rtp(Leg::A, a_rtp);
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
    fn muxed_rtcp_on_the_rtp_socket_is_judged_by_the_rtp_latch_and_does_not_latch() {
        let mut f = fixture();
        let (a_rtp, b_rtp) = (f.a_rtp, f.b_rtp);
        // Before A learned: from a source of no standing, refused (and no window candidate).
        let somewhere = addr("198.51.100.1:5555");
        assert_eq!(
            f.relay(Leg::A, SocketKind::Rtp, somewhere, &RTCP),
            NOT_LEARNED
        );
        // From a source that could latch: relayed, out of the RTP socket, latching nothing.
        assert_eq!(
            f.relay(Leg::A, SocketKind::Rtp, a_rtp, &RTCP),
            Verdict::Forward(b_rtp)
        );
        assert_eq!(f.stream.counters().latched_a, None);
        // After the window, muxed RTCP still latches nothing (it was no candidate either).
        f.now += 10 * SECOND;
        assert_eq!(
            f.relay(Leg::A, SocketKind::Rtp, somewhere, &RTCP),
            NOT_LEARNED
        );
        assert_eq!(f.stream.counters().latched_a, None);
        // The real RTP source latches; its muxed RTCP follows.
        f.rtp(Leg::A, a_rtp);
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
                dropped: 6,
                foreign: 0,
            }
        );
        assert_eq!(counters.latched_b, None);
        assert_eq!(counters.last_packet_at, None, "garbage is not activity");
    }

    #[test]
    fn no_destination_is_dropped_but_latches_and_counts_as_activity() {
        let mut stream = StreamState::new(LearningConfig::default(), signalling());
        let now = Instant::now();
        // No SDP yet; A's media comes from its signalling IP.
        let a = addr("192.0.2.100:4000");
        assert_eq!(
            stream.on_datagram(now, Leg::A, SocketKind::Rtp, a, &rtp(1), false),
            Verdict::Drop(DropReason::NoDestination)
        );
        let counters = stream.counters();
        assert_eq!((counters.a_to_b.dropped, counters.a_to_b.foreign), (1, 0));
        assert_eq!(counters.latched_a, Some(a));
        assert_eq!(counters.last_packet_at, Some(now));
        // B's first packet goes back to where A sends from.
        let b = addr("198.51.100.50:5000");
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
    fn set_remote_forgets_what_was_learned_only_when_the_addresses_change() {
        let mut f = fixture();
        let (a_rtp, a_rtcp, b_rtp) = (f.a_rtp, f.a_rtcp, f.b_rtp);
        let natted = addr("192.0.2.100:31000");
        f.rtp(Leg::A, natted);
        f.relay(Leg::A, SocketKind::Rtcp, natted, &RTCP);
        assert_eq!(f.stream.counters().latched_a, Some(natted));
        // The same SDP again (a refresh, a re-INVITE keeping the media): latches kept.
        assert!(!f.stream.set_remote(Leg::A, Some(a_rtp), Some(a_rtcp)));
        assert_eq!(f.stream.counters().latched_a, Some(natted));
        assert_eq!(f.rtp(Leg::B, b_rtp), Verdict::Forward(natted));
        // B's SDP does not touch A's latches.
        let (b_moved, b_moved_rtcp) = (addr("192.0.2.3:6000"), addr("192.0.2.3:6001"));
        assert!(f
            .stream
            .set_remote(Leg::B, Some(b_moved), Some(b_moved_rtcp)));
        assert_eq!(f.stream.counters().latched_a, Some(natted));
        assert_eq!(
            f.rtp(Leg::B, b_rtp),
            NOT_LEARNED,
            "B's old address is nobody now"
        );
        // A moves: both its latches are forgotten, its media goes to the new SDP address and
        // the new source latches.
        let moved = addr("192.0.2.10:7000");
        let moved_rtcp = addr("192.0.2.10:7001");
        assert!(f.stream.set_remote(Leg::A, Some(moved), Some(moved_rtcp)));
        assert_eq!(f.stream.counters().latched_a, None);
        assert_eq!(
            f.relay(Leg::B, SocketKind::Rtp, b_moved, &rtp(2)),
            Verdict::Forward(moved)
        );
        assert_eq!(
            f.relay(Leg::B, SocketKind::Rtcp, b_moved_rtcp, &RTCP),
            Verdict::Forward(moved_rtcp)
        );
        assert_eq!(
            f.rtp(Leg::A, moved),
            Verdict::Forward(b_moved),
            "B latched to its new address"
        );
        assert_eq!(f.stream.counters().latched_a, Some(moved));
        // The old source is foreign now.
        assert_eq!(f.rtp(Leg::A, natted), FOREIGN);
    }

    #[test]
    fn a_new_sdp_restarts_the_window_and_forgets_its_candidate() {
        let mut f = fixture();
        let (b_rtp, attacker) = (f.b_rtp, addr(ATTACKER));
        let t0 = f.now;
        assert_eq!(f.rtp(Leg::A, attacker), NOT_LEARNED);
        f.now = t0 + 2 * SECOND;
        assert!(f
            .stream
            .set_remote(Leg::A, Some(addr("10.0.0.5:4000")), None));
        let phone = addr("198.51.100.99:40000");
        assert_eq!(
            f.rtp(Leg::A, phone),
            NOT_LEARNED,
            "a new window, from this packet"
        );
        f.now = t0 + 4 * SECOND;
        assert_eq!(f.rtp(Leg::A, phone), NOT_LEARNED);
        f.now = t0 + 5 * SECOND;
        assert_eq!(f.rtp(Leg::A, phone), Verdict::Forward(b_rtp));
        assert_eq!(f.rtp(Leg::A, attacker), FOREIGN);
    }

    #[test]
    fn first_set_remote_is_a_change_even_without_addresses() {
        let mut stream = StreamState::new(LearningConfig::default(), signalling());
        assert!(stream.set_remote(Leg::A, None, None));
        assert!(!stream.set_remote(Leg::A, None, None));
        let a = addr("192.0.2.100:4000");
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
        f.rtp(Leg::A, a_rtp);
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
                    dropped: 1,
                    foreign: 0,
                },
                b_to_a: DirectionCounters {
                    packets: 1,
                    bytes: 20,
                    dropped: 1,
                    foreign: 1,
                },
                latched_a: Some(a_rtp),
                latched_b: Some(b_rtp),
                last_packet_at: Some(t0 + Duration::from_secs(60)),
            }
        );
    }

    /// A dual-stack relay socket reports an IPv4 phone as `::ffff:a.b.c.d`: it is still the
    /// phone of its IPv4 SDP (an exact latch, not a stranger), its signalling IP still makes
    /// same-IP evidence, and what goes back to it is named canonically. An IPv6 leg beside it
    /// learns as any other.
    #[test]
    fn mapped_ipv4_sources_are_the_ipv4_peers_of_their_sdp_and_signalling() {
        let config = LearningConfig {
            mode: LearningMode::Strict,
            ..LearningConfig::default()
        };
        let signalling = SignallingIps {
            a: Some("127.0.0.1".parse().unwrap()),
            b: Some("::1".parse().unwrap()),
        };
        let mut stream = StreamState::new(config, signalling);
        let now = Instant::now();
        let (phone, callee) = (addr("127.0.0.1:4000"), addr("[::1]:5000"));
        stream.set_remote(Leg::A, Some(phone), None);
        stream.set_remote(Leg::B, Some(callee), None);
        let mapped = addr("[::ffff:127.0.0.1]:4000");
        assert_eq!(
            stream.on_datagram(now, Leg::A, SocketKind::Rtp, mapped, &rtp(1), false),
            Verdict::Forward(callee)
        );
        assert_eq!(stream.latched(Leg::A), Some(phone), "latched canonically");
        assert_eq!(
            stream.on_datagram(now, Leg::B, SocketKind::Rtp, callee, &rtp(1), false),
            Verdict::Forward(phone)
        );
        // The same packet again is the latched source, not a foreign one.
        assert_eq!(
            stream.on_datagram(now, Leg::A, SocketKind::Rtp, mapped, &rtp(2), false),
            Verdict::Forward(callee)
        );
        // A mapped SDP address is the IPv4 one: not a change, nothing forgotten.
        assert!(!stream.set_remote(Leg::A, Some(addr("[::ffff:127.0.0.1]:4000")), None));
        assert_eq!(stream.latched(Leg::A), Some(phone));
        // Strict learning on a fresh stream: a mapped source on the signalling IP (another
        // port) is same-IP evidence, an IPv6 stranger is not.
        let mut stream = StreamState::new(config, signalling);
        stream.set_remote(Leg::A, Some(phone), None);
        stream.set_remote(Leg::B, Some(callee), None);
        assert_eq!(
            stream.on_datagram(
                now,
                Leg::B,
                SocketKind::Rtp,
                addr("[2001:db8::1]:5000"),
                &rtp(1),
                false
            ),
            NOT_LEARNED
        );
        let natted = addr("[::ffff:127.0.0.1]:7000");
        assert_eq!(
            stream.on_datagram(now, Leg::A, SocketKind::Rtp, natted, &rtp(1), false),
            Verdict::Forward(callee)
        );
        assert_eq!(stream.latched(Leg::A), Some(addr("127.0.0.1:7000")));
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
