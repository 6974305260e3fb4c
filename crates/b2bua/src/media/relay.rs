//! The RTP/RTCP relay of one anchored stream, and the inactivity watchdog of one call.
//!
//! A stream has four sockets: an A-facing pair (RTP, RTCP; leg A sends to it, its ports are in
//! the SDP sent to A) and a B-facing pair. One tokio task per stream waits for any of the four
//! to be readable, drains it into one reused buffer and sends each accepted packet, untouched,
//! out of the matching socket of the other side (symmetric RTP: a leg receives from the socket
//! it sends to). No task or allocation per packet. The buffer belongs to the worker thread, not
//! the stream: a drain never yields, so one buffer per thread serves every stream and an idle
//! stream holds none (4 KiB less per call).
//!
//! Latching, per leg and per socket kind: the destination of a leg starts as the address from
//! its SDP; the first valid packet from that leg (RTP on the RTP socket, RTCP on the RTCP
//! socket) latches its source as the destination, and from then on packets from any other
//! source are dropped and counted. A new SDP address for the leg
//! ([`StreamRelay::update_remote`]) forgets the latch.
//!
//! The task stops, closing its sockets and then giving its ports back to the pool, when the
//! [`StreamRelay`] is dropped.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rtp_rs::RtpReader;
use tokio::net::UdpSocket;
use tokio::runtime::Handle;
use tokio::sync::mpsc::UnboundedSender;
use tokio::task::JoinHandle;

use super::ports::{BoundPair, PortPair};
use super::sdp::RelayPorts;
use super::DirectionStats;

/// Largest datagram relayed; a datagram filling the buffer may have been truncated and is
/// dropped. RTP over UDP stays below the path MTU.
const BUFFER_BYTES: usize = 4096;
/// Datagrams taken from one socket before the others get a turn.
const BATCH: usize = 64;

thread_local! {
    /// The receive buffer of every stream drained on this thread (see the module comment).
    static BUFFER: std::cell::RefCell<[u8; BUFFER_BYTES]> =
        const { std::cell::RefCell::new([0; BUFFER_BYTES]) };
}

/// One side of the bridged call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MediaLeg {
    /// The caller.
    A,
    /// The callee.
    B,
}

impl MediaLeg {
    fn index(self) -> usize {
        match self {
            MediaLeg::A => 0,
            MediaLeg::B => 1,
        }
    }
}

/// Why the media of a call reports to the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MediaNoticeKind {
    /// No valid RTP/RTCP in either direction for `idle`: the call should end
    /// (`EndCause::MediaTimeout`).
    Inactive { idle: Duration },
}

/// A report from a call's media, sent at most once per kind and session on the channel given to
/// [`super::AnchoredMedia`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaNotice {
    /// The call, as given to [`super::MediaFactory::new_session`].
    pub callid: String,
    pub kind: MediaNoticeKind,
}

/// Is this an RTCP (compound) packet: version 2 and a first packet type of SR, RR, SDES, BYE or
/// APP (200–204)?
pub fn is_rtcp(packet: &[u8]) -> bool {
    packet.len() >= 8 && packet[0] >> 6 == 2 && (200..=204).contains(&packet[1])
}

/// Is this an RTP packet with a sane header (rtp-rs: version 2, CSRCs, extension and padding
/// within the datagram)?
pub fn is_rtp(packet: &[u8]) -> bool {
    RtpReader::new(packet).is_ok()
}

/// When the last valid packet of a call was seen, shared by its streams and its watchdog.
#[derive(Debug)]
pub struct Activity {
    base: Instant,
    /// Milliseconds since `base`; `u64::MAX` before the first packet.
    last_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            base: Instant::now(),
            last_ms: AtomicU64::new(u64::MAX),
        }
    }
}

impl Activity {
    pub fn touch(&self) {
        let now = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// How long since the last packet (or [`Activity::touch`]); `None` before the first.
    pub fn idle(&self) -> Option<Duration> {
        let last = self.last_ms.load(Ordering::Relaxed);
        (last != u64::MAX).then(|| {
            self.base
                .elapsed()
                .saturating_sub(Duration::from_millis(last))
        })
    }
}

/// Aborts a task when dropped.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the call's inactivity watchdog: when no valid packet has been seen for `inactivity`
/// (counted from now at the latest), sends one [`MediaNoticeKind::Inactive`] and stops. The
/// watchdog stops when the returned guard is dropped.
pub fn spawn_watchdog(
    runtime: &Handle,
    activity: Arc<Activity>,
    inactivity: Duration,
    callid: String,
    notices: UnboundedSender<MediaNotice>,
) -> WatchdogGuard {
    activity.touch();
    let task = runtime.spawn(async move {
        loop {
            let last = activity.last_ms.load(Ordering::Relaxed);
            let deadline = activity.base + Duration::from_millis(last) + inactivity;
            tokio::time::sleep_until(deadline.into()).await;
            if activity.last_ms.load(Ordering::Relaxed) == last {
                tracing::info!(%callid, ?inactivity, "media inactive");
                let _ = notices.send(MediaNotice {
                    callid,
                    kind: MediaNoticeKind::Inactive { idle: inactivity },
                });
                return;
            }
        }
    });
    WatchdogGuard(AbortOnDrop(task))
}

/// Keeps a call's watchdog running.
#[derive(Debug)]
pub struct WatchdogGuard(#[allow(dead_code)] AbortOnDrop);

#[derive(Debug, Default)]
struct Counters {
    packets: AtomicU64,
    bytes: AtomicU64,
    dropped: AtomicU64,
}

impl Counters {
    fn add(&self, packets: u64, bytes: u64, dropped: u64) {
        if packets > 0 {
            self.packets.fetch_add(packets, Ordering::Relaxed);
            self.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        if dropped > 0 {
            self.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
    }

    fn get(&self) -> DirectionStats {
        DirectionStats {
            packets: self.packets.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

/// A leg's media addresses from its latest SDP; `epoch` changes when they do.
#[derive(Clone, Copy, Debug, Default)]
struct Remote {
    rtp: Option<SocketAddr>,
    rtcp: Option<SocketAddr>,
    epoch: u64,
}

/// What the session and the relay task share.
#[derive(Debug, Default)]
struct Shared {
    /// Indexed by the leg packets come from: `[a_to_b, b_to_a]`.
    counters: [Counters; 2],
    remotes: Mutex<[Remote; 2]>,
    /// Bumped after any change of `remotes`, so the task checks one atomic per batch.
    generation: AtomicU64,
    /// The RTP source each leg is latched to.
    latched: Mutex<[Option<SocketAddr>; 2]>,
}

/// What a [`StreamRelay`] has done so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    pub a_to_b: DirectionStats,
    pub b_to_a: DirectionStats,
    pub latched_a: Option<SocketAddr>,
    pub latched_b: Option<SocketAddr>,
}

/// The relay of one stream; dropping it stops the task and frees the four ports.
#[derive(Debug)]
pub struct StreamRelay {
    shared: Arc<Shared>,
    a_ports: RelayPorts,
    b_ports: RelayPorts,
    /// `None` when the sockets could not be registered with the runtime (logged): the stream
    /// then relays nothing, and its ports are free again.
    _task: Option<AbortOnDrop>,
}

impl StreamRelay {
    /// Starts relaying between `a_facing` (the sockets leg A sends to) and `b_facing`.
    pub fn start(
        runtime: &Handle,
        a_facing: BoundPair,
        b_facing: BoundPair,
        activity: Arc<Activity>,
    ) -> StreamRelay {
        let ports = |pair: &BoundPair| RelayPorts {
            rtp: pair.rtp_port(),
            rtcp: pair.rtcp_port(),
        };
        let (a_ports, b_ports) = (ports(&a_facing), ports(&b_facing));
        let shared = Arc::new(Shared::default());
        // The relay is spawned as it is (no `async` wrapper, whose state would hold it twice).
        let task = {
            let _context = runtime.enter();
            match Relay::new(a_facing, b_facing, shared.clone(), activity) {
                Ok(relay) => Some(AbortOnDrop(runtime.spawn(relay))),
                Err(error) => {
                    tracing::error!(%error, "media relay cannot register its sockets");
                    None
                }
            }
        };
        StreamRelay {
            shared,
            a_ports,
            b_ports,
            _task: task,
        }
    }

    /// The ports leg A sends to (written in the SDP sent to A).
    pub fn a_ports(&self) -> RelayPorts {
        self.a_ports
    }

    /// The ports leg B sends to (written in the SDP sent to B).
    pub fn b_ports(&self) -> RelayPorts {
        self.b_ports
    }

    /// Sets where `leg` receives media, from its latest SDP. When the addresses differ from
    /// the previous ones the leg's latches are forgotten (the next valid packet latches again);
    /// returns whether they differed.
    pub fn update_remote(
        &self,
        leg: MediaLeg,
        rtp: Option<SocketAddr>,
        rtcp: Option<SocketAddr>,
    ) -> bool {
        let mut remotes = self.shared.remotes.lock();
        let remote = &mut remotes[leg.index()];
        if remote.epoch != 0 && remote.rtp == rtp && remote.rtcp == rtcp {
            return false;
        }
        *remote = Remote {
            rtp,
            rtcp,
            epoch: remote.epoch + 1,
        };
        self.shared.latched.lock()[leg.index()] = None;
        self.shared.generation.fetch_add(1, Ordering::Release);
        true
    }

    pub fn stats(&self) -> StreamStats {
        let latched = *self.shared.latched.lock();
        StreamStats {
            a_to_b: self.shared.counters[0].get(),
            b_to_a: self.shared.counters[1].get(),
            latched_a: latched[0],
            latched_b: latched[1],
        }
    }
}

const RTP: usize = 0;
const RTCP: usize = 1;

/// Where one socket kind of one leg sends to.
#[derive(Clone, Copy, Debug, Default)]
struct Latch {
    sdp: Option<SocketAddr>,
    latched: Option<SocketAddr>,
}

impl Latch {
    fn destination(&self) -> Option<SocketAddr> {
        self.latched.or(self.sdp)
    }
}

/// The task's state. Sockets are declared before the port guards so that they are closed
/// before the ports go back to the pool.
struct Relay {
    /// `[leg][RTP/RTCP]`: the sockets facing each leg.
    sockets: [[UdpSocket; 2]; 2],
    latches: [[Latch; 2]; 2],
    epochs: [u64; 2],
    generation: u64,
    shared: Arc<Shared>,
    activity: Arc<Activity>,
    _ports: [PortPair; 2],
}

/// The relay is the task's future itself, polling each socket's read readiness, rather than
/// an `async` loop over `select!`: the task then holds just the [`Relay`] (a `select!` over
/// four `readable()` futures more than doubled the task's size, a per-call cost), and a wake-up
/// costs four readiness checks instead of creating and dropping four waiters.
impl std::future::Future for Relay {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        use std::task::Poll;
        let relay = &mut *self;
        loop {
            let mut drained = false;
            for (leg, kind) in [(0, RTP), (1, RTP), (0, RTCP), (1, RTCP)] {
                match relay.sockets[leg][kind].poll_recv_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        relay.drain(leg, kind);
                        drained = true;
                    }
                    Poll::Ready(Err(error)) => {
                        tracing::error!(%error, "media relay socket failed");
                        return Poll::Ready(());
                    }
                    Poll::Pending => {}
                }
            }
            // Every socket has been read until it would block (or a batch was taken, and it is
            // read again). The runtime's cooperative budget, spent by `poll_recv_ready`, makes a
            // flooded stream yield to other tasks.
            if !drained {
                return Poll::Pending;
            }
        }
    }
}

impl Relay {
    fn new(
        a: BoundPair,
        b: BoundPair,
        shared: Arc<Shared>,
        activity: Arc<Activity>,
    ) -> std::io::Result<Relay> {
        let BoundPair {
            rtp: a_rtp,
            rtcp: a_rtcp,
            pair: a_pair,
        } = a;
        let BoundPair {
            rtp: b_rtp,
            rtcp: b_rtcp,
            pair: b_pair,
        } = b;
        Ok(Relay {
            sockets: [
                [UdpSocket::from_std(a_rtp)?, UdpSocket::from_std(a_rtcp)?],
                [UdpSocket::from_std(b_rtp)?, UdpSocket::from_std(b_rtcp)?],
            ],
            latches: Default::default(),
            epochs: [0; 2],
            generation: u64::MAX,
            shared,
            activity,
            _ports: [a_pair, b_pair],
        })
    }

    /// Takes in the legs' addresses from their latest SDP, when they changed.
    fn sync_remotes(&mut self) {
        let generation = self.shared.generation.load(Ordering::Acquire);
        if generation == self.generation {
            return;
        }
        self.generation = generation;
        let remotes = *self.shared.remotes.lock();
        for (leg, remote) in remotes.iter().enumerate() {
            if remote.epoch != self.epochs[leg] {
                self.epochs[leg] = remote.epoch;
                self.latches[leg] = [
                    Latch {
                        sdp: remote.rtp,
                        latched: None,
                    },
                    Latch {
                        sdp: remote.rtcp,
                        latched: None,
                    },
                ];
            }
        }
    }

    /// Relays what is waiting on the `kind` socket facing leg `from`.
    fn drain(&mut self, from: usize, kind: usize) {
        BUFFER.with(|buffer| match buffer.try_borrow_mut() {
            Ok(mut buffer) => self.drain_into(&mut buffer[..], from, kind),
            // Only if a drain were ever re-entered on one thread: use a buffer of its own.
            Err(_) => self.drain_into(&mut vec![0; BUFFER_BYTES], from, kind),
        });
    }

    fn drain_into(&mut self, buffer: &mut [u8], from: usize, kind: usize) {
        self.sync_remotes();
        let to = 1 - from;
        let (mut packets, mut bytes, mut dropped, mut valid) = (0u64, 0u64, 0u64, false);
        for _ in 0..BATCH {
            let (len, source) = match self.sockets[from][kind].try_recv_from(buffer) {
                Ok(received) => received,
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(error) => {
                    // Errors queued by ICMP for an earlier send; the next read goes on.
                    tracing::trace!(%error, "media receive error");
                    continue;
                }
            };
            // A datagram that filled the buffer may have been cut short.
            if len == buffer.len() {
                dropped += 1;
                continue;
            }
            let packet = &buffer[..len];
            // The RTCP socket takes RTCP; the RTP socket takes RTP and multiplexed RTCP
            // (RFC 5761), and only RTP latches there.
            let latches = match (kind, is_rtcp(packet)) {
                (RTCP, true) => true,
                (RTP, true) => false,
                (RTP, false) if is_rtp(packet) => true,
                _ => {
                    dropped += 1;
                    continue;
                }
            };
            let latch = &mut self.latches[from][kind];
            match latch.latched {
                Some(latched) if latched != source => {
                    dropped += 1;
                    continue;
                }
                Some(_) => {}
                None if latches => {
                    latch.latched = Some(source);
                    if kind == RTP {
                        self.shared.latched.lock()[from] = Some(source);
                    }
                    tracing::debug!(leg = from, kind, %source, "media latched");
                }
                None => {}
            }
            valid = true;
            let Some(destination) = self.latches[to][kind].destination() else {
                dropped += 1;
                continue;
            };
            match self.sockets[to][kind].try_send_to(packet, destination) {
                Ok(_) => {
                    packets += 1;
                    bytes += len as u64;
                }
                Err(_) => dropped += 1,
            }
        }
        self.shared.counters[from].add(packets, bytes, dropped);
        if valid {
            self.activity.touch();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_rtp_and_rtcp() {
        let mut rtp = vec![0x80, 0x00, 0, 1, 0, 0, 0, 160, 0xde, 0xad, 0xbe, 0xef];
        rtp.extend_from_slice(&[0xff; 160]);
        assert!(is_rtp(&rtp) && !is_rtcp(&rtp));
        let rr = [0x80, 201, 0, 1, 0xde, 0xad, 0xbe, 0xef];
        assert!(is_rtcp(&rr));
        assert!(!is_rtp(b"hello world, not rtp"));
        assert!(!is_rtcp(b"\x40\xc8\x00\x01abcd")); // version 1
        assert!(!is_rtp(&[0x8f, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0])); // 15 CSRCs announced
        assert!(!is_rtcp(&[0x80, 199, 0, 1, 0, 0, 0, 0]));
    }

    #[test]
    fn activity_idle() {
        let activity = Activity::default();
        assert_eq!(activity.idle(), None);
        activity.touch();
        assert!(activity.idle().unwrap() < Duration::from_secs(1));
    }
}
