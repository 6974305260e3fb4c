//! [`MediaDriver`]: the process's relayed streams, opened, re-addressed and closed by the
//! binary on the engine's commands.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::relay::{clock_base, Relay, Shared, Sockets};
use crate::socket::bind_pair;
use crate::stream::{LearningConfig, Leg, SignallingIps, StreamCounters, StreamState};

/// How the driver binds relay sockets and how its streams learn their peers (`media.*` of the
/// configuration): one setting for every stream, so it is the driver's, not each command's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriverConfig {
    /// Where relay sockets bind (`media.bind_ip`). IPv6 works as IPv4 does; the IPv6
    /// wildcard `::` binds dual-stack, so one relay port serves an IPv4 leg and an IPv6 leg
    /// (sources are learned canonically, destinations mapped to the socket's family).
    pub bind_ip: IpAddr,
    /// SO_RCVBUF/SO_SNDBUF asked per socket; the kernel may grant less.
    pub socket_buffer_bytes: usize,
    /// Which sources may teach a leg its peer, and how long the heuristic waits for a good one
    /// (`media.learning`, `media.learning_secs`; the rules are in [`StreamState`]'s module).
    pub learning: LearningConfig,
}

impl Default for DriverConfig {
    /// Every address (`0.0.0.0`), 256 KiB buffers: room for ~1 s of 50 packet/s audio bursts
    /// many times over, so a scheduling hiccup of the relay task does not drop packets.
    /// Heuristic learning with a 3 s window.
    fn default() -> Self {
        DriverConfig {
            bind_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            socket_buffer_bytes: 256 * 1024,
            learning: LearningConfig::default(),
        }
    }
}

/// Why [`MediaDriver::open`] opened nothing.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A port is held by another socket (of this process or another), or cannot be bound.
    #[error("cannot bind media port {port}: {source}")]
    Bind { port: u16, source: std::io::Error },
    /// The runtime refused the sockets (it has no IO driver, or is shutting down).
    #[error("cannot register media sockets with the runtime: {0}")]
    Register(std::io::Error),
    /// The key already has a stream.
    #[error("stream already open")]
    AlreadyOpen,
}

/// One open stream: dropping it closes its sockets and ends its task.
struct Stream {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        // The sockets first, synchronously (see `relay`); the task then has nothing to poll.
        self.shared.close();
        self.task.abort();
    }
}

/// Owns every relayed stream of the process, keyed by the caller's stream key. The engine
/// decides which streams exist and on which ports; the binary tells the driver, which binds,
/// relays and counts. All methods are quick (no packet path lock held for long, no await):
/// call them from the engine's task.
pub struct MediaDriver<K> {
    config: DriverConfig,
    runtime: Handle,
    streams: HashMap<K, Stream>,
}

impl<K: Debug> Debug for MediaDriver<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaDriver")
            .field("config", &self.config)
            .field("streams", &self.streams.len())
            .finish()
    }
}

impl<K: Copy + Eq + Hash + Debug + Send + Sync + 'static> MediaDriver<K> {
    /// Relay tasks are spawned on `runtime` (IO and time enabled).
    pub fn new(config: DriverConfig, runtime: tokio::runtime::Handle) -> Self {
        // Fixed before any packet, so every `last_packet_at` is after it.
        clock_base();
        MediaDriver {
            config,
            runtime,
            streams: HashMap::new(),
        }
    }

    /// Binds RTP/RTCP sockets on a_port/a_port+1 (leg A sends there) and b_port/b_port+1
    /// (leg B sends there) and starts relaying between them. On error nothing stays bound.
    /// `signalling`: where each leg's signalling comes from, a source of media the stream
    /// learns at once like the SDP's IP.
    ///
    /// Nothing is forwarded towards a leg until its address is known, from
    /// [`MediaDriver::set_remote`] or from its packets (by the learning rules).
    pub fn open(
        &mut self,
        key: K,
        a_port: u16,
        b_port: u16,
        signalling: SignallingIps,
    ) -> Result<(), OpenError> {
        if self.streams.contains_key(&key) {
            return Err(OpenError::AlreadyOpen);
        }
        let (ip, buffer) = (self.config.bind_ip, self.config.socket_buffer_bytes);
        let (a_rtp, a_rtcp) = bind_pair(ip, a_port, buffer)?;
        let (b_rtp, b_rtcp) = bind_pair(ip, b_port, buffer)?;
        let sockets = {
            let _context = self.runtime.enter();
            Sockets::from_std([a_rtp, a_rtcp, b_rtp, b_rtcp]).map_err(OpenError::Register)?
        };
        let state = StreamState::new(self.config.learning, signalling);
        let shared = Arc::new(Shared::new(sockets, state));
        let task = self.runtime.spawn(Relay::new(shared.clone()));
        tracing::debug!(?key, a_port, b_port, "media stream open");
        self.streams.insert(key, Stream { shared, task });
        Ok(())
    }

    /// Where `leg` receives this stream's media (its latest SDP). When different from the
    /// previous addresses, what the leg learned is forgotten. Returns false for an unknown key.
    ///
    /// Takes effect before the next datagram the stream looks at.
    pub fn set_remote(
        &mut self,
        key: K,
        leg: Leg,
        rtp: Option<SocketAddr>,
        rtcp: Option<SocketAddr>,
    ) -> bool {
        let Some(stream) = self.streams.get(&key) else {
            return false;
        };
        if stream.shared.set_remote(leg, rtp, rtcp) {
            tracing::debug!(?key, ?leg, ?rtp, ?rtcp, "media remote set");
        }
        true
    }

    /// Stops the stream: its task ends and its four sockets close. False for an unknown key.
    ///
    /// The sockets are closed when this returns: their ports can be bound again at once.
    pub fn close(&mut self, key: K) -> bool {
        let closed = self.streams.remove(&key).is_some();
        if closed {
            tracing::debug!(?key, "media stream closed");
        }
        closed
    }

    /// The stream's counters now (cheap: atomics, no lock on the packet path).
    pub fn counters(&self, key: K) -> Option<StreamCounters> {
        self.streams
            .get(&key)
            .map(|stream| stream.shared.counters())
    }

    /// Every open stream with its counters (for the once-a-second report).
    pub fn all_counters(&self) -> impl Iterator<Item = (K, StreamCounters)> + '_ {
        self.streams
            .iter()
            .map(|(key, stream)| (*key, stream.shared.counters()))
    }

    /// The ports of `first..=last` that cannot be bound on the driver's address now (held by
    /// another socket of this or another process): each even port `p` of the range is tried
    /// with `p + 1`, and every port that fails is returned. Each socket is closed again at
    /// once. For a start-up check of the range, before any stream is open.
    pub fn unbindable_ports(&self, first: u16, last: u16) -> Vec<u16> {
        let ip = self.config.bind_ip;
        // In u32: a range ending at 65535 must not overflow `rtp + 1`.
        let start = u32::from(first) + u32::from(first % 2);
        let mut busy = Vec::new();
        for rtp in (start..u32::from(last)).step_by(2).filter(|&p| p > 0) {
            for port in [rtp, rtp + 1].map(|p| p as u16) {
                if std::net::UdpSocket::bind(SocketAddr::new(ip, port)).is_err() {
                    busy.push(port);
                }
            }
        }
        busy
    }

    /// How many streams are open.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// The configuration the driver binds with.
    pub fn config(&self) -> &DriverConfig {
        &self.config
    }
}
