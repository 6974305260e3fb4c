//! The tokio I/O loop of one stream: the thin part around [`StreamState`].
//!
//! One task per stream waits for any of its four sockets to be readable, drains it into one
//! reused buffer, asks the [`StreamState`] about each datagram and sends what it says to send.
//! No task or allocation per packet. The buffer belongs to the worker thread, not the stream:
//! a drain never yields, so one buffer per thread serves every stream and an idle stream holds
//! none.
//!
//! The sockets and the state live in the stream's [`Shared`], under one lock that the task
//! takes per round of its poll (at most [`BATCH`] datagrams per socket) and the driver takes
//! for `set_remote` and `close`. So `close` drops the sockets itself, synchronously: their
//! ports are free when it returns, where aborting the task would only drop them whenever the
//! runtime next gets to it. The task's future is then a single `Arc`. Counters are published
//! to atomics after each round, so reading them never waits for the packet path.

use std::future::Future;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::net::UdpSocket;

use crate::socket::for_socket;
use crate::stream::{DirectionCounters, Leg, SocketKind, StreamCounters, StreamState, Verdict};

/// Largest datagram relayed; a datagram filling the buffer may have been truncated and is
/// dropped. RTP over UDP stays below the path MTU.
pub(crate) const BUFFER_BYTES: usize = 4096;
/// Datagrams taken from one socket before the others get a turn.
pub(crate) const BATCH: usize = 64;

thread_local! {
    /// The receive buffer of every stream drained on this thread (see the module comment).
    static BUFFER: std::cell::RefCell<[u8; BUFFER_BYTES]> =
        const { std::cell::RefCell::new([0; BUFFER_BYTES]) };
}

/// The order a wake-up looks at the sockets: RTP first, both legs, then RTCP.
const ORDER: [(Leg, SocketKind); 4] = [
    (Leg::A, SocketKind::Rtp),
    (Leg::B, SocketKind::Rtp),
    (Leg::A, SocketKind::Rtcp),
    (Leg::B, SocketKind::Rtcp),
];

/// The instant `last_packet_at` is published relative to (as nanoseconds in one atomic).
/// Set when the first driver is created, so before any packet.
pub(crate) fn clock_base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// `last_packet_ns` before the first packet.
const NEVER: u64 = u64::MAX;

/// A stream's four sockets, registered with the runtime: `[leg][kind]`, the sockets facing
/// each leg (leg A sends to `[A][..]`), and whether they are IPv6 sockets (all four are bound
/// to the same address): destinations are mapped to that family before each send.
pub(crate) struct Sockets {
    sockets: [[UdpSocket; 2]; 2],
    v6: bool,
}

impl Sockets {
    /// Registers the bound sockets with the runtime entered by the caller.
    pub(crate) fn from_std(
        [a_rtp, a_rtcp, b_rtp, b_rtcp]: [StdUdpSocket; 4],
    ) -> std::io::Result<Sockets> {
        let v6 = a_rtp.local_addr()?.is_ipv6();
        Ok(Sockets {
            sockets: [
                [UdpSocket::from_std(a_rtp)?, UdpSocket::from_std(a_rtcp)?],
                [UdpSocket::from_std(b_rtp)?, UdpSocket::from_std(b_rtcp)?],
            ],
            v6,
        })
    }

    fn get(&self, leg: Leg, kind: SocketKind) -> &UdpSocket {
        let leg = match leg {
            Leg::A => 0,
            Leg::B => 1,
        };
        let kind = match kind {
            SocketKind::Rtp => 0,
            SocketKind::Rtcp => 1,
        };
        &self.sockets[leg][kind]
    }
}

/// What the lock of a stream guards.
struct Inner {
    /// `None` once closed.
    sockets: Option<Sockets>,
    state: StreamState,
    /// The latches last written to [`Shared::latched`], to take that lock only on a change.
    published_latched: [Option<SocketAddr>; 2],
}

/// One direction's counters, written by whoever holds the stream's lock, read by anyone.
#[derive(Default)]
struct AtomicDirection {
    packets: AtomicU64,
    bytes: AtomicU64,
    dropped: AtomicU64,
    foreign: AtomicU64,
}

impl AtomicDirection {
    fn store(&self, counters: DirectionCounters) {
        self.packets.store(counters.packets, Ordering::Relaxed);
        self.bytes.store(counters.bytes, Ordering::Relaxed);
        self.dropped.store(counters.dropped, Ordering::Relaxed);
        self.foreign.store(counters.foreign, Ordering::Relaxed);
    }

    fn load(&self) -> DirectionCounters {
        DirectionCounters {
            packets: self.packets.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            foreign: self.foreign.load(Ordering::Relaxed),
        }
    }
}

/// What the driver and the relay task of one stream share.
pub(crate) struct Shared {
    inner: Mutex<Inner>,
    /// `[a_to_b, b_to_a]`, as last published from the state.
    directions: [AtomicDirection; 2],
    /// `last_packet_at` as nanoseconds since [`clock_base`], or [`NEVER`].
    last_packet_ns: AtomicU64,
    /// The RTP latches of legs A and B; written only when they change.
    latched: Mutex<[Option<SocketAddr>; 2]>,
}

impl Shared {
    pub(crate) fn new(sockets: Sockets, state: StreamState) -> Shared {
        Shared {
            inner: Mutex::new(Inner {
                sockets: Some(sockets),
                state,
                published_latched: [None; 2],
            }),
            directions: Default::default(),
            last_packet_ns: AtomicU64::new(NEVER),
            latched: Mutex::new([None; 2]),
        }
    }

    /// [`StreamState::set_remote`], taking effect before the next datagram is looked at.
    pub(crate) fn set_remote(
        &self,
        leg: Leg,
        rtp: Option<SocketAddr>,
        rtcp: Option<SocketAddr>,
    ) -> bool {
        let mut inner = self.inner.lock();
        let changed = inner.state.set_remote(leg, rtp, rtcp);
        if changed {
            self.publish(&mut inner);
        }
        changed
    }

    /// Closes the four sockets (their ports are free when this returns); the task ends at its
    /// next poll.
    pub(crate) fn close(&self) {
        let sockets = self.inner.lock().sockets.take();
        drop(sockets);
    }

    /// The counters as last published.
    pub(crate) fn counters(&self) -> StreamCounters {
        let [latched_a, latched_b] = *self.latched.lock();
        let last = self.last_packet_ns.load(Ordering::Relaxed);
        StreamCounters {
            a_to_b: self.directions[0].load(),
            b_to_a: self.directions[1].load(),
            latched_a,
            latched_b,
            last_packet_at: (last != NEVER).then(|| clock_base() + Duration::from_nanos(last)),
        }
    }

    /// Makes the state's counters what [`Shared::counters`] returns.
    fn publish(&self, inner: &mut Inner) {
        let counters = inner.state.counters();
        self.directions[0].store(counters.a_to_b);
        self.directions[1].store(counters.b_to_a);
        if let Some(at) = counters.last_packet_at {
            let nanos = at.saturating_duration_since(clock_base()).as_nanos();
            let nanos = u64::try_from(nanos).unwrap_or(NEVER - 1);
            self.last_packet_ns.store(nanos, Ordering::Relaxed);
        }
        let latched = [counters.latched_a, counters.latched_b];
        if latched != inner.published_latched {
            inner.published_latched = latched;
            *self.latched.lock() = latched;
        }
    }
}

/// The relay task of one stream: the task's future itself, polling each socket's read
/// readiness, rather than an `async` loop over `select!` (which more than doubled the task's
/// size, a per-call cost, and created and dropped four waiters per wake-up). It holds only the
/// stream's [`Shared`]; spawn it as it is (an `async` wrapper would hold it twice).
pub(crate) struct Relay {
    shared: Arc<Shared>,
}

impl Relay {
    pub(crate) fn new(shared: Arc<Shared>) -> Relay {
        Relay { shared }
    }
}

impl Future for Relay {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let mut guard = self.shared.inner.lock();
            let inner = &mut *guard;
            // Closed: the driver has dropped the sockets.
            let Some(sockets) = &inner.sockets else {
                return Poll::Ready(());
            };
            let mut drained = false;
            for (leg, kind) in ORDER {
                match sockets.get(leg, kind).poll_recv_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        drain(sockets, &mut inner.state, leg, kind);
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
            self.shared.publish(inner);
        }
    }
}

/// Relays what is waiting on the `kind` socket facing leg `from`.
fn drain(sockets: &Sockets, state: &mut StreamState, from: Leg, kind: SocketKind) {
    BUFFER.with(|buffer| match buffer.try_borrow_mut() {
        Ok(mut buffer) => drain_into(&mut buffer[..], sockets, state, from, kind),
        // Only if a drain were ever re-entered on one thread: use a buffer of its own.
        Err(_) => drain_into(&mut vec![0; BUFFER_BYTES], sockets, state, from, kind),
    });
}

fn drain_into(
    buffer: &mut [u8],
    sockets: &Sockets,
    state: &mut StreamState,
    from: Leg,
    kind: SocketKind,
) {
    let (input, output) = (sockets.get(from, kind), sockets.get(from.other(), kind));
    let now = Instant::now();
    for _ in 0..BATCH {
        let (len, source) = match input.try_recv_from(buffer) {
            Ok(received) => received,
            Err(error) if error.kind() == ErrorKind::WouldBlock => break,
            Err(error) => {
                // Errors queued by ICMP for an earlier send; the next read goes on.
                tracing::trace!(%error, "media receive error");
                continue;
            }
        };
        // A datagram that filled the buffer may have been cut short.
        let truncated = len == buffer.len();
        let packet = &buffer[..len];
        // The state learns and compares canonical addresses (an IPv4 phone on a dual-stack
        // socket is `a.b.c.d`, as its SDP and signalling name it) and answers one; the socket
        // sends in its own family.
        if let Verdict::Forward(destination) =
            state.on_datagram(now, from, kind, source, packet, truncated)
        {
            match output.try_send_to(packet, for_socket(sockets.v6, destination)) {
                Ok(_) => state.on_sent(from, len),
                Err(_) => state.on_send_failed(from),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The relay task's future is one `Arc`; the stream's sockets and state are in [`Shared`].
    /// (b2bua's relay future held its four sockets, latches and two port guards: 488 bytes,
    /// plus 280 bytes shared with its `StreamRelay` handle; here 8 + 688.)
    #[test]
    fn relay_future_is_one_pointer() {
        assert_eq!(std::mem::size_of::<Relay>(), std::mem::size_of::<usize>());
        println!(
            "Relay {} bytes, Shared {} bytes, StreamState {} bytes, Sockets {} bytes",
            std::mem::size_of::<Relay>(),
            std::mem::size_of::<Shared>(),
            std::mem::size_of::<StreamState>(),
            std::mem::size_of::<Sockets>(),
        );
    }
}
