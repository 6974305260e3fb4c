//! UDP, TCP and TLS transport (RFC 3261 §18) on tokio.
//!
//! [`SipTransport::bind`] opens a UDP socket and a TCP listener on the same address and port,
//! and with [`TransportConfig::tls`] a TLS listener on its own address (see [`TlsConfig`]),
//! and returns a [`TransportHandle`] for sending plus a channel of [`TransportEvent`]s.
//! Everything read from the wire is parsed here: the layers above receive [`Message`]s whose top
//! Via already carries `received`/`rport` (RFC 3261 §18.2.1, RFC 3581), and unparseable
//! requests are answered with 400 without reaching them. Stream framing lives in the sans-IO
//! [`StreamFramer`].

mod admission;
mod framer;
mod stats;
mod tcp;
mod tls;
mod udp;

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ipnet::IpNet;
use tokio::sync::{mpsc, watch};

pub use framer::{Frame, FramingError, StreamFramer};
pub use stats::TransportStats;
pub use tls::{TlsConfig, TlsError, TlsIdentity, TlsRoots};

#[cfg(test)]
use crate::message::Header;
use crate::message::{bad_request_for, HeaderName, Headers, Message, ParseError, ParseLimits};
use crate::peer::{response_destination, stamp_received, ConnectionId, Peer, Transmit};
use crate::transaction::TxId;
use crate::Transport;
use admission::Admission;
use stats::{bump, StatsCounters};

/// Events of existing transactions and calls (responses, in-dialog requests, ACKs, CANCELs,
/// transport reports) waiting for the application; when it falls this far behind, the
/// receive loops wait (and the kernel buffers, then drops, UDP datagrams).
const EVENT_QUEUE: usize = 1024;

/// New out-of-dialog requests waiting for the application, in their own queue: when it is
/// full, further ones are dropped unread (and counted) instead of making the receive loops
/// wait, so a flood of new requests never delays the messages of existing calls (see
/// [`TransportEvents`]). Deep enough for half a second of new calls at a few thousand a
/// second: the application sheds by how long a request waited
/// ([`TransportEvents::waited`]), and this bound only caps the memory a flood can queue
/// (a parsed request is about 2 KiB).
pub const NEW_REQUEST_QUEUE: usize = 2048;

/// Whether `message` would start something new: a request outside any dialog other than the
/// ACK and CANCEL that belong to an existing transaction.
fn starts_something(message: &Message) -> bool {
    match message {
        Message::Request(request) => {
            !matches!(request.method, crate::Method::Ack | crate::Method::Cancel)
                && request.headers.to().is_ok_and(|to| to.tag().is_none())
        }
        Message::Response(_) => false,
    }
}

/// How the transport binds and what it accepts from the wire.
///
/// It exists so that deployment choices (address, buffer sizes, limits against misbehaving
/// peers) are made in one place by the caller rather than hard-coded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportConfig {
    /// Address for both the UDP socket and the TCP listener. With port 0 the UDP socket picks
    /// the port and TCP binds the same one.
    pub bind: SocketAddr,
    /// SO_RCVBUF requested for the UDP socket (the kernel may grant less, or double it; the
    /// granted size is logged). Bursts of datagrams beyond it are dropped by the kernel.
    /// TCP sockets keep the kernel's autotuning.
    pub recv_buffer_bytes: usize,
    /// SO_SNDBUF requested for the UDP socket.
    pub send_buffer_bytes: usize,
    /// Size and header-count limits for every received message; `max_message_size` also bounds
    /// what a TCP connection buffers.
    pub limits: ParseLimits,
    /// A TCP or TLS connection with no traffic in either direction for this long is closed.
    pub tcp_idle_timeout: Duration,
    /// Most TCP and TLS connections together (accepted plus opened) at once. Of these, the last
    /// `min(max_connections_per_ip, max_connections / 2)` are kept for `priority` sources:
    /// other connections are refused once the rest are taken, so that the trunk can always
    /// connect, and be connected to, however the other sources fill the table.
    pub max_connections: usize,
    /// Most TCP and TLS connections one remote IP may hold (accepted and opened); further accepted
    /// ones are refused. Connections we open are never refused for this: one per address is
    /// reused.
    pub max_connections_per_ip: usize,
    /// Sources whose TCP and TLS connections are accepted; a connection from anywhere else is
    /// closed at accept, before anything is read from it or a TLS handshake is begun (SPEC
    /// "Trust boundary"). UDP is not
    /// filtered here: the layers above answer untrusted requests statelessly.
    pub trusted: Vec<IpNet>,
    /// The trunk's addresses: trusted too, and entitled to the reserved share of
    /// `max_connections`.
    pub priority: Vec<IpNet>,
    /// Messages queued for one TCP or TLS connection before sends to it fail (one by one: the
    /// connection and the other transactions are unaffected).
    pub tcp_write_queue_messages: usize,
    /// Bytes queued for one TCP or TLS connection before sends to it fail, likewise. A single message
    /// larger than this still goes when the queue is empty.
    pub tcp_write_queue_bytes: usize,
    /// How long opening an outbound TCP connection may take before the send fails.
    pub connect_timeout: Duration,
    /// SIP over TLS: the listener (if any), our certificate, the roots servers' certificates
    /// must chain to. `None`: no TLS; sends over TLS fail.
    pub tls: Option<TlsConfig>,
    /// How long a TLS handshake may take, on connections accepted and opened alike. An
    /// accepted connection that has not completed it by then is dropped: a client that
    /// connects and says nothing holds its slot of `max_connections` this long, not until
    /// `tcp_idle_timeout`. Counted from the end of the TCP connect.
    pub tls_handshake_timeout: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            bind: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 5060),
            recv_buffer_bytes: 4 * 1024 * 1024,
            send_buffer_bytes: 4 * 1024 * 1024,
            limits: ParseLimits::default(),
            tcp_idle_timeout: Duration::from_secs(600),
            max_connections: 1024,
            max_connections_per_ip: 64,
            trusted: loopback_nets(),
            priority: Vec::new(),
            tcp_write_queue_messages: 256,
            tcp_write_queue_bytes: 1024 * 1024,
            connect_timeout: Duration::from_secs(5),
            tls: None,
            // A handshake is two or three round trips; seconds are for a loaded peer.
            tls_handshake_timeout: Duration::from_secs(5),
        }
    }
}

/// 127.0.0.0/8 and ::1: the default trust set, a local demo's.
fn loopback_nets() -> Vec<IpNet> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .filter_map(|net| net.parse().ok())
        .collect()
}

/// What the transport reports to the layers above.
///
/// It exists so that the receive loops and the application talk through one channel: the
/// application owns the sans-IO layers and feeds them these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransportEvent {
    /// A parsed message. For requests the top Via is already stamped with `received`/`rport`.
    /// `from.connection` is set for TCP and TLS: sending back to `from` uses the same
    /// connection.
    Message { message: Message, from: Peer },
    /// A [`TransportHandle::send`] could not be carried out (RFC 3261 §18.4 transport error).
    /// `origin` is the [`Transmit::origin`] of the failed send: the transaction that made it,
    /// and the only one to fail (`TransactionLayer::on_send_failed`). UDP sends dropped
    /// because the socket buffer is full are not reported (they count as loss; see
    /// [`TransportStats`]); a datagram larger than [`MAX_UDP_PAYLOAD`](crate::peer::MAX_UDP_PAYLOAD)
    /// is.
    SendFailed {
        to: Peer,
        origin: Option<TxId>,
        error: String,
    },
    /// A TCP or TLS connection closed (by the peer, an error, the idle timeout or a framing
    /// error); its [`ConnectionId`] will not be used again.
    ConnectionClosed {
        connection: ConnectionId,
        addr: SocketAddr,
    },
}

/// The events of one transport, in two queues read with priority: everything that belongs
/// to existing transactions and calls first, new out-of-dialog requests after. Why two: under
/// a flood of new INVITEs, a BYE or a response must not wait behind them (SPEC "Trust
/// boundary": messages of existing calls keep priority).
#[derive(Debug)]
pub struct TransportEvents {
    calls: mpsc::Receiver<TransportEvent>,
    new: mpsc::Receiver<(Instant, TransportEvent)>,
    /// How long the event last returned waited, if it was a new request.
    waited: Duration,
}

impl TransportEvents {
    /// The next event, existing calls' first; `None` once the transport has stopped.
    pub async fn recv(&mut self) -> Option<TransportEvent> {
        tokio::select! {
            biased;
            event = self.calls.recv() => {
                self.waited = Duration::ZERO;
                event
            }
            event = self.new.recv() => event.map(|queued| self.took(queued)),
        }
    }

    /// The next event if one is queued (existing calls' first).
    pub fn try_recv(&mut self) -> Option<TransportEvent> {
        if let Ok(event) = self.calls.try_recv() {
            self.waited = Duration::ZERO;
            return Some(event);
        }
        self.new.try_recv().ok().map(|queued| self.took(queued))
    }

    /// How long the event last returned by [`recv`](Self::recv) or
    /// [`try_recv`](Self::try_recv) waited in its queue if it was a new request, zero if it
    /// belonged to an existing call. Why: the application sheds new calls by this wait (a
    /// request served after its sender's first retransmission, at T1, is served late and
    /// twice), which holds at any call rate, where a count of queued requests means a
    /// different delay at each rate.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    fn took(&mut self, (queued, event): (Instant, TransportEvent)) -> TransportEvent {
        self.waited = queued.elapsed();
        event
    }

    /// New out-of-dialog requests waiting: how far behind the application is with work it
    /// could refuse.
    pub fn new_requests_queued(&self) -> usize {
        self.new.len()
    }

    /// Every event waiting, in both queues.
    pub fn len(&self) -> usize {
        self.calls.len() + self.new.len()
    }

    /// Whether no event is waiting.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty() && self.new.is_empty()
    }
}

/// Entry point of the transport: see [`SipTransport::bind`]. (A namespace; never constructed.)
#[derive(Debug)]
pub enum SipTransport {}

impl SipTransport {
    /// Binds UDP and TCP on `config.bind` (the same port for both) and, when configured, the
    /// TLS listener, starts the receive tasks on the current tokio runtime and returns the
    /// send handle and the event channel.
    ///
    /// The tasks run until [`TransportHandle::shutdown`] is called or the event receiver is
    /// dropped (noticed at the next event).
    pub async fn bind(config: TransportConfig) -> io::Result<(TransportHandle, TransportEvents)> {
        let (udp, listener) = bind_sockets(&config)?;
        let udp = tokio::net::UdpSocket::from_std(udp)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let local_addr = udp.local_addr()?;
        let tls_listener = match config.tls.as_ref().and_then(TlsConfig::listen) {
            Some(addr) => Some(bind_tls(addr)?),
            None => None,
        };
        let tls_local_addr = match &tls_listener {
            Some(listener) => Some(listener.local_addr()?),
            None => None,
        };
        let (events, calls) = mpsc::channel(EVENT_QUEUE);
        let (new_requests, new) = mpsc::channel(NEW_REQUEST_QUEUE);
        let admission = Admission::new(
            config.trusted.clone(),
            config.priority.clone(),
            config.max_connections,
            config.max_connections_per_ip,
        );
        let shared = Arc::new(Shared {
            admission,
            runtime: tokio::runtime::Handle::current(),
            local_addr,
            tls_local_addr,
            tls: config.tls.as_ref().map(tls::TlsState::new),
            udp,
            stats: StatsCounters::default(),
            connections: parking_lot::Mutex::new(tcp::ConnectionTable::default()),
            next_connection: AtomicU64::new(1),
            events,
            new_requests,
            shutdown: watch::channel(false).0,
            config,
        });
        shared.runtime.spawn(udp::receive_loop(shared.clone()));
        shared
            .runtime
            .spawn(tcp::accept_loop(shared.clone(), listener, Transport::Tcp));
        tracing::info!(%local_addr, "SIP transport listening on UDP and TCP");
        if let Some(listener) = tls_listener {
            shared
                .runtime
                .spawn(tcp::accept_loop(shared.clone(), listener, Transport::Tls));
            if let Some(addr) = tls_local_addr {
                tracing::info!(%addr, "SIP transport listening on TLS");
            }
        }
        Ok((
            TransportHandle { shared },
            TransportEvents {
                calls,
                new,
                waited: Duration::ZERO,
            },
        ))
    }
}

/// Binds the UDP socket, then TCP on the port UDP got. With port 0 the port UDP picks may be
/// taken for TCP; a few other ports are tried.
fn bind_sockets(
    config: &TransportConfig,
) -> io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    let attempts = if config.bind.port() == 0 { 8 } else { 1 };
    let mut last_error = None;
    for _ in 0..attempts {
        let udp = udp::bind_socket(config)?;
        let addr = udp.local_addr()?;
        match tcp::bind_listener(addr) {
            Ok(listener) => return Ok((udp, listener)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last_error = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("no port free for both UDP and TCP")))
}

/// Binds the TLS listener, naming its address in the error: its failure must not read as one
/// of the UDP/TCP address.
fn bind_tls(addr: SocketAddr) -> io::Result<tokio::net::TcpListener> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("TLS listener on {addr}: {e}"));
    let listener = tcp::bind_listener(addr).map_err(named)?;
    tokio::net::TcpListener::from_std(listener).map_err(named)
}

/// Sends messages and reads the transport's state. Cheap to clone; every clone drives the
/// same sockets and connections.
#[derive(Clone)]
pub struct TransportHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for TransportHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportHandle")
            .field("local_addr", &self.shared.local_addr)
            .finish_non_exhaustive()
    }
}

impl TransportHandle {
    /// The address (and port) UDP and TCP are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The address (and port) the TLS listener is bound to, when there is one.
    pub fn tls_local_addr(&self) -> Option<SocketAddr> {
        self.shared.tls_local_addr
    }

    /// Queues `transmit` for sending and returns at once; never blocks.
    ///
    /// UDP goes straight to the socket. TCP and TLS go on `transmit.to.connection` if that
    /// connection is still open, otherwise on an open connection of the same transport to
    /// `transmit.to.addr` (RFC 3261 §18), otherwise on a new connection opened in the
    /// background (within `connect_timeout`, and for TLS `tls_handshake_timeout` more).
    /// Failures arrive as [`TransportEvent::SendFailed`].
    pub fn send(&self, transmit: Transmit) {
        self.shared.send(transmit);
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TransportStats {
        self.shared.stats.snapshot()
    }

    /// TCP and TLS connections currently open or being opened.
    pub fn connection_count(&self) -> usize {
        self.shared.connections.lock().len()
    }

    /// Stops the receive tasks and closes every TCP and TLS connection. Later sends fail.
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }
}

/// State shared by the handle and the tasks.
pub(crate) struct Shared {
    config: TransportConfig,
    admission: Admission,
    runtime: tokio::runtime::Handle,
    local_addr: SocketAddr,
    tls_local_addr: Option<SocketAddr>,
    /// The acceptor and connector, when TLS is configured.
    tls: Option<tls::TlsState>,
    udp: tokio::net::UdpSocket,
    stats: StatsCounters,
    connections: parking_lot::Mutex<tcp::ConnectionTable>,
    next_connection: AtomicU64,
    events: mpsc::Sender<TransportEvent>,
    /// New out-of-dialog requests (see [`NEW_REQUEST_QUEUE`]), with when they were queued.
    new_requests: mpsc::Sender<(Instant, TransportEvent)>,
    shutdown: watch::Sender<bool>,
}

/// What to do with bytes received as one message.
enum Inbound {
    Deliver(TransportEvent),
    /// Send this 400 back to the given peer.
    Answer(Bytes, Peer),
    Ignore,
}

impl Shared {
    fn is_shut_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    fn new_connection_id(&self) -> ConnectionId {
        ConnectionId(self.next_connection.fetch_add(1, Ordering::Relaxed))
    }

    fn send(self: &Arc<Self>, transmit: Transmit) {
        if self.is_shut_down() {
            self.send_failed(
                transmit.to,
                transmit.origin,
                "transport is shut down".into(),
            );
            return;
        }
        match transmit.to.transport {
            Transport::Udp => self.send_udp(&transmit),
            Transport::Tcp => tcp::send(self, transmit),
            Transport::Tls if self.tls.is_some() => tcp::send(self, transmit),
            Transport::Tls => self.send_failed(
                transmit.to,
                transmit.origin,
                "TLS is not configured (no [tls] settings)".into(),
            ),
            other => self.send_failed(
                transmit.to,
                transmit.origin,
                format!("transport {other} is not supported"),
            ),
        }
    }

    /// Reports a failed send from non-async code: if the event queue is full the report is
    /// dropped (and logged) rather than blocking the sender.
    fn send_failed(&self, to: Peer, origin: Option<TxId>, error: String) {
        bump(&self.stats.send_errors);
        tracing::debug!(?to, ?origin, %error, "send failed");
        if let Err(e) = self
            .events
            .try_send(TransportEvent::SendFailed { to, origin, error })
        {
            tracing::warn!(
                ?to,
                "event queue full or closed; SendFailed not delivered: {e}"
            );
        }
    }

    /// Delivers an event from a task, waiting for room. `false` when nobody listens any more.
    ///
    /// A new out-of-dialog request (no To tag; not an ACK or CANCEL) goes to its own queue
    /// and never waits: when that queue is full it is dropped and counted, so that a flood of
    /// new requests never makes the receive loop stop reading, and the responses, in-dialog
    /// requests, ACKs and CANCELs of existing calls behind it in the socket buffer still get
    /// in. (The application sheds earlier, with a 503, at its own backlog limit; this is the
    /// last resort once it cannot keep up even with that.) The sender retransmits a dropped
    /// request, as it would one lost on the network.
    async fn deliver(&self, event: TransportEvent) -> bool {
        let new =
            matches!(&event, TransportEvent::Message { message, .. } if starts_something(message));
        if !new {
            return self.events.send(event).await.is_ok();
        }
        match self.new_requests.try_send((Instant::now(), event)) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                bump(&self.stats.shed_requests);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Parses one received message (a datagram or a TCP/TLS frame) and decides what to do with
    /// it.
    fn inbound(&self, bytes: &[u8], from: Peer) -> Inbound {
        let limits = &self.config.limits;
        match Message::parse(bytes, limits) {
            Ok(mut message) => {
                bump(match from.transport {
                    Transport::Udp => &self.stats.udp_received,
                    Transport::Tls => &self.stats.tls_received,
                    _ => &self.stats.tcp_received,
                });
                if let Message::Request(request) = &mut message {
                    stamp_top_via(&mut request.headers, &from);
                }
                Inbound::Deliver(TransportEvent::Message { message, from })
            }
            Err(error) => match self.answer_malformed(bytes, &error, from) {
                Some((response, to)) => Inbound::Answer(response, to),
                None => Inbound::Ignore,
            },
        }
    }

    /// The 400 for unparseable bytes and where to send it, counting the message as answered or
    /// dropped.
    fn answer_malformed(
        &self,
        bytes: &[u8],
        error: &ParseError,
        from: Peer,
    ) -> Option<(Bytes, Peer)> {
        let answer = bad_request_for(bytes, error, &self.config.limits).and_then(|mut response| {
            let via = response.headers.top_via().ok()?;
            let to = response_destination(&via, from);
            stamp_top_via(&mut response.headers, &from);
            Some((response.to_bytes(), to))
        });
        match &answer {
            Some(_) => bump(&self.stats.malformed_answered),
            None => bump(&self.stats.malformed_dropped),
        }
        tracing::debug!(?from, %error, answered = answer.is_some(), "malformed message");
        answer
    }
}

/// Completes once shutdown is signalled. (Wraps `wait_for` so that no `watch::Ref`, which is
/// not `Send`, lives in a `select!` output.)
async fn shut_down(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|&down| down).await;
}

/// Stamps `received`/`rport` on the top Via (RFC 3261 §18.2.1, RFC 3581 §4), rewriting that
/// row in place: header order is kept and no other row is touched.
fn stamp_top_via(headers: &mut Headers, from: &Peer) {
    let Ok(top) = headers.top_via() else {
        return;
    };
    let Some(stamped) = stamp_received(&top, from) else {
        return;
    };
    if let Some(value) = headers.get_mut(&HeaderName::Via) {
        *value = stamped.to_string();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamping_rewrites_the_top_via_in_place_and_nothing_else() {
        let text = "INVITE sip:bob@example.com SIP/2.0\r\n\
             Max-Forwards: 70\r\n\
             Via: SIP/2.0/UDP phone.invalid:5062;branch=z9hG4bK-top;rport\r\n\
             From: <sip:alice@example.com>;tag=a\r\n\
             v: SIP/2.0/UDP proxy.invalid;branch=z9hG4bK-second;rport\r\n\
             To: <sip:bob@example.com>\r\n\
             Via: SIP/2.0/TCP 10.0.0.1, SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK-fourth\r\n\
             Call-ID: c1\r\n\
             CSeq: 1 INVITE\r\n\
             Content-Length: 0\r\n\r\n";
        let Ok(Message::Request(request)) =
            Message::parse(text.as_bytes(), &ParseLimits::default())
        else {
            panic!("fixture does not parse");
        };
        let before: Vec<Header> = request.headers.iter().cloned().collect();
        let mut headers = request.headers.clone();
        let from = Peer::udp("192.0.2.7:40000".parse().unwrap());
        stamp_top_via(&mut headers, &from);
        let after: Vec<Header> = headers.iter().cloned().collect();

        assert_eq!(after.len(), before.len(), "no row added or removed");
        let top = before
            .iter()
            .position(|h| h.name == HeaderName::Via)
            .unwrap();
        assert_eq!(
            after[top].value,
            "SIP/2.0/UDP phone.invalid:5062;branch=z9hG4bK-top;rport=40000;received=192.0.2.7"
        );
        for (i, (b, a)) in before.iter().zip(&after).enumerate() {
            assert_eq!(a.name, b.name, "row {i} kept its place");
            if i != top {
                assert_eq!(a.value, b.value, "row {i} untouched");
            }
        }
        // The lower Vias (one of them from a compact `v:` row, two from one comma row) are as
        // parsed.
        let vias: Vec<&str> = headers.get_all(&HeaderName::Via).collect();
        assert_eq!(vias.len(), 4);
        assert_eq!(
            vias[1],
            "SIP/2.0/UDP proxy.invalid;branch=z9hG4bK-second;rport"
        );
        // On the wire, only the top Via's line differs.
        let mut stamped = request.clone();
        stamped.headers = headers;
        let (old, new) = (request.to_bytes(), stamped.to_bytes());
        let (old, new) = (
            std::str::from_utf8(&old).unwrap(),
            std::str::from_utf8(&new).unwrap(),
        );
        let changed: Vec<(&str, &str)> = old
            .split("\r\n")
            .zip(new.split("\r\n"))
            .filter(|(o, n)| o != n)
            .collect();
        assert_eq!(old.split("\r\n").count(), new.split("\r\n").count());
        assert_eq!(
            changed,
            vec![(
                "Via: SIP/2.0/UDP phone.invalid:5062;branch=z9hG4bK-top;rport",
                "Via: SIP/2.0/UDP phone.invalid:5062;branch=z9hG4bK-top;rport=40000;received=192.0.2.7"
            )]
        );
    }

    #[test]
    fn a_top_via_that_needs_nothing_is_left_alone() {
        let mut headers = Headers::new();
        headers.push(
            HeaderName::Via,
            "SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK-1",
        );
        headers.push(
            HeaderName::Via,
            "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-2;rport",
        );
        let before = headers.clone();
        stamp_top_via(&mut headers, &Peer::udp("192.0.2.7:5060".parse().unwrap()));
        assert_eq!(headers, before);
    }
}
