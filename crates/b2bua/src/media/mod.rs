//! The media side of calls, sans-IO: the one place where a call touches session descriptions,
//! and the decisions about relay streams that the media driver carries out.
//!
//! callbridge anchors media: every SDP body a call forwards goes through its [`CallMedia`]
//! ([`session`]), which rewrites `c=`/`m=` lines ([`sdp`]) to point at relay ports taken from
//! the engine's [`PortPool`] ([`ports`]) and records where each leg wants its media. Nothing
//! here binds a socket, spawns a task or reads a clock. What must happen on the wire comes out
//! of the engine as [`MediaCommand`]s (open, set remote, close, report a stream), and what
//! the driver saw comes back as [`MediaEvent`]s (opened, failed to open, counters). The binary
//! runs the driver (the `media` crate) and moves commands and events between the two, as it
//! moves datagrams between the transport and the transaction layer.
//!
//! Media inactivity is an engine timer checked against the counters the driver reports (see
//! `engine/lifecycle.rs`).

pub mod ports;
pub mod sdp;
pub mod session;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::call::{CallKey, Leg};

pub use ports::PortPool;
pub use sdp::RelayPorts;
pub use session::{CallMedia, MediaPlane};

/// Streams (`m=` lines) one session description may carry; more is answered 488. Audio and
/// video with room to spare: each relayed stream holds two port pairs and four sockets.
pub const MAX_STREAMS: usize = 8;

/// What anchoring needs from the configuration (`media.*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaConfig {
    /// The address written in `c=` and `o=` lines: where the legs send media (`IN IP4`, or
    /// `IN IP6` for an IPv6 address).
    pub public_ip: std::net::IpAddr,
    /// The IPv6 address written instead towards a leg whose signalling peer is IPv6, when
    /// `public_ip` is IPv4 (`media.public_ip6`): a dual-stack relay bridging an IPv4 leg and an
    /// IPv6 leg tells each an address it can reach. `None`: `public_ip` towards every leg.
    pub public_ip6: Option<std::net::IpAddr>,
    /// First port of the relay range (`media.rtp_ports`), inclusive.
    pub first_port: u16,
    /// Last port of the relay range, inclusive.
    pub last_port: u16,
    /// A call with no valid packet in either direction for this long, once both legs have
    /// sent SDP, is hung up as `media_timeout` (`media.inactivity_secs`). Zero disables it.
    pub inactivity: Duration,
}

impl MediaConfig {
    /// The address written in the SDP sent to a leg whose signalling comes from `peer`:
    /// [`public_ip6`](Self::public_ip6) for an IPv6 peer when there is one, else
    /// [`public_ip`](Self::public_ip). (An IPv4-mapped peer is an IPv4 one.)
    pub fn public_ip_for(&self, peer: Option<IpAddr>) -> IpAddr {
        match (self.public_ip6, peer.map(|ip| ip.to_canonical())) {
            (Some(v6), Some(IpAddr::V6(_))) => v6,
            _ => self.public_ip,
        }
    }
}

/// Why an SDP body cannot be forwarded; the call answers with the SIP code given.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// The body is not a usable session description: `488 Not Acceptable Here`.
    #[error("unusable session description: {0}")]
    Malformed(String),
    /// No relay ports are free: `503 Service Unavailable`.
    #[error("no media ports available")]
    Exhausted,
}

impl MediaError {
    /// The SIP status a leg is answered with when its SDP cannot be handled.
    pub fn sip_status(&self) -> u16 {
        match self {
            MediaError::Malformed(_) => 488,
            MediaError::Exhausted => 503,
        }
    }
}

/// One relayed stream: the `m=` line at `index` of call `call`. The key the media driver
/// knows a stream by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId {
    pub call: CallKey,
    pub index: usize,
}

/// Where each leg's signalling comes from: leg A, the peer its INVITE came from; leg B, the
/// trunk. The driver learns media from these IPs at once, as from the SDP's IP (SPEC.md
/// "Trust boundary"): for a phone behind NAT, whose SDP names a private address, it is the
/// only public IP known. Fixed for the call, so it goes with [`MediaCommand::Open`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignallingIps {
    pub a: Option<IpAddr>,
    pub b: Option<IpAddr>,
}

impl SignallingIps {
    /// `leg`'s signalling IP.
    pub fn get(&self, leg: Leg) -> Option<IpAddr> {
        match leg {
            Leg::A => self.a,
            Leg::B => self.b,
        }
    }
}

/// What the engine asks of the media driver. Commands come out of
/// [`Engine::poll_media_command`](crate::Engine::poll_media_command) in the order they must
/// be carried out (a `Close` of a port always before an `Open` that reuses it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MediaCommand {
    /// Bind the stream's sockets — leg A sends to `a_facing`, leg B to `b_facing` — and start
    /// relaying between them; media from a leg's `signalling` IP is learned like media from
    /// its SDP's IP. Answered by [`MediaEvent::Opened`] or [`MediaEvent::OpenFailed`].
    Open {
        stream: StreamId,
        a_facing: RelayPorts,
        b_facing: RelayPorts,
        signalling: SignallingIps,
    },
    /// Where `leg` receives this stream's media, from its latest SDP (`None`: nowhere, e.g.
    /// on hold with `0.0.0.0`). The driver forgets what it had learned of that leg and sends
    /// the other leg's media here until it learns the leg's peer again.
    SetRemote {
        stream: StreamId,
        leg: Leg,
        rtp: Option<SocketAddr>,
        rtcp: Option<SocketAddr>,
    },
    /// Stop relaying and close the stream's sockets. Its ports are back in the pool.
    Close { stream: StreamId },
    /// Report the stream's counters now ([`MediaEvent::Counters`]).
    Report { stream: StreamId },
}

/// What the media driver tells the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MediaEvent {
    /// The stream's sockets are bound and relaying.
    Opened { stream: StreamId },
    /// The stream's sockets could not be bound (a port held by another process): the call
    /// cannot carry media and ends as `resources_exhausted`, and the pair of `port` (when
    /// known) leaves the pool for good, so no later call is given it.
    OpenFailed {
        stream: StreamId,
        port: Option<u16>,
        reason: String,
    },
    /// A port of the relay range cannot be bound (found by the driver's start-up probe, e.g.
    /// the SIP port itself, or another process's socket): its pair leaves the pool before any
    /// call is given it.
    PortUnavailable { port: u16 },
    /// The stream's counters, on a [`MediaCommand::Report`] or the driver's periodic report.
    Counters {
        stream: StreamId,
        counters: StreamCounters,
    },
}

/// Packets relayed in one direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DirectionStats {
    /// Packets (RTP and RTCP) forwarded.
    pub packets: u64,
    /// Bytes of those packets (UDP payload).
    pub bytes: u64,
    /// Packets received and not forwarded: not RTP/RTCP, from a source the leg has not learned,
    /// with nowhere to go yet, or refused by the kernel on send.
    pub dropped: u64,
}

impl DirectionStats {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &DirectionStats) {
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.dropped += other.dropped;
    }
}

/// What the driver counted for one stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamCounters {
    /// Received from leg A, towards leg B.
    pub a_to_b: DirectionStats,
    /// Received from leg B, towards leg A.
    pub b_to_a: DirectionStats,
    /// The RTP source leg A is latched to.
    pub latched_a: Option<SocketAddr>,
    /// The RTP source leg B is latched to.
    pub latched_b: Option<SocketAddr>,
    /// When the last valid RTP/RTCP packet arrived, in either direction.
    pub last_packet_at: Option<Instant>,
}

/// The media counters of one call, shown by the API.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MediaStats {
    /// From leg A (received on A-facing sockets) towards leg B.
    pub a_to_b: DirectionStats,
    /// From leg B towards leg A.
    pub b_to_a: DirectionStats,
    /// The address leg A's RTP was latched to (first stream that latched).
    pub latched_a: Option<SocketAddr>,
    /// The address leg B's RTP was latched to (first stream that latched).
    pub latched_b: Option<SocketAddr>,
    /// How many streams (`m=` lines) have relay ports.
    pub streams: usize,
    /// Milliseconds since the last valid packet in either direction (or since both legs had
    /// sent SDP, when no packet came yet); `None` before either.
    pub idle_ms: Option<u64>,
}

impl MediaStats {
    /// Both directions together.
    pub fn total(&self) -> DirectionStats {
        let mut total = self.a_to_b;
        total.add(&self.b_to_a);
        total
    }
}
