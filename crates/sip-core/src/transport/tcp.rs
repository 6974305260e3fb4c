//! TCP, and the stream machinery TLS shares: the listeners' accept loop, the connection table,
//! one task per connection.
//!
//! Each connection (TCP, or TLS once `tls.rs` has done its handshake) is driven by a single
//! task that reads (through the [`StreamFramer`]),
//! writes what [`TransportHandle::send`](super::TransportHandle::send) queued for it, answers
//! keep-alive pings and enforces the idle timeout. Sends reach it through a queue bounded in
//! messages and in bytes (`tcp_write_queue_messages`, `tcp_write_queue_bytes`) so that sending
//! never blocks; a full queue fails that one send, for its transaction only.
//!
//! Accepted connections pass the admission rules first (trust set, per-IP limit, a
//! reserve of the total for the trunk): see `admission.rs`. TCP and TLS connections share one
//! table: one `max_connections` for both, and reuse looks a connection up by transport and
//! remote address, so a TCP send never lands on a TLS connection or the other way round.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::admission::{ConnectionCounts, Note, Refusal, RefusalLog};
use super::framer::{Frame, StreamFramer};
use super::stats::{bump, drop_one};
use super::{shut_down, tls, Inbound, Shared, TransportEvent};
use crate::peer::{ConnectionId, Peer, Transmit};
use crate::Transport;

/// Longest a single write (with its flush: a TLS stream holds records until flushed) may
/// stall (peer not reading) before the connection is dropped:
/// 64*T1, after which any transaction waiting on it has timed out anyway.
const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(32);
/// Pause after a failed accept (typically out of file descriptors) before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
const READ_CHUNK: usize = 16 * 1024;
/// A refused source is named in the log at most this often.
const REFUSAL_LOG_WINDOW: Duration = Duration::from_secs(60);
/// Distinct refused sources remembered for that (beyond it, one summary line per window).
const REFUSAL_LOG_SOURCES: usize = 1024;

/// Open (or opening) connections, by id and by transport and remote address, and their
/// counts for the admission limits. One lock guards all three, so that a check and the insert
/// it allows cannot be split by another accept or send.
#[derive(Default)]
pub(super) struct ConnectionTable {
    by_id: HashMap<ConnectionId, Connection>,
    by_addr: HashMap<(Transport, SocketAddr), ConnectionId>,
    counts: ConnectionCounts,
}

struct Connection {
    transport: Transport,
    addr: SocketAddr,
    queue: WriteQueue,
}

/// The sending side of one connection's write queue.
#[derive(Clone)]
struct WriteQueue {
    sender: mpsc::Sender<Transmit>,
    budget: Arc<QueueBudget>,
}

impl ConnectionTable {
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    fn insert(&mut self, id: ConnectionId, to: Peer, queue: WriteQueue) {
        let (transport, addr) = (to.transport, to.addr);
        self.by_id.insert(
            id,
            Connection {
                transport,
                addr,
                queue,
            },
        );
        self.by_addr.insert((transport, addr), id);
        self.counts.add(addr.ip());
    }

    pub(super) fn remove(&mut self, id: ConnectionId) {
        if let Some(connection) = self.by_id.remove(&id) {
            self.counts.remove(connection.addr.ip());
            let key = (connection.transport, connection.addr);
            if self.by_addr.get(&key) == Some(&id) {
                self.by_addr.remove(&key);
            }
        }
    }

    /// The connection `to` names while it is open (and of `to`'s transport), else the open
    /// one to `to.addr` over that transport.
    fn queue_for(&self, to: &Peer) -> Option<WriteQueue> {
        let by_connection = to
            .connection
            .and_then(|id| self.by_id.get(&id))
            .filter(|connection| connection.transport == to.transport);
        let connection = by_connection.or_else(|| {
            self.by_addr
                .get(&(to.transport, to.addr))
                .and_then(|id| self.by_id.get(id))
        })?;
        Some(connection.queue.clone())
    }
}

/// The bytes queued on one connection and not yet written, against their limit.
///
/// It exists because a message count alone does not bound memory (messages run up to
/// `max_message_size`): a peer that stops reading must cost at most this much, after which
/// sends to it fail one by one while the connection and everything else carry on.
#[derive(Debug)]
pub(super) struct QueueBudget {
    max: usize,
    used: AtomicUsize,
}

impl QueueBudget {
    pub(super) fn new(max: usize) -> QueueBudget {
        QueueBudget {
            max,
            used: AtomicUsize::new(0),
        }
    }

    /// Takes room for `len` bytes, or `false` when they do not fit. An empty queue takes any
    /// one message, so that a message larger than the budget can still be sent.
    pub(super) fn try_reserve(&self, len: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let after = used.checked_add(len)?;
                (used == 0 || after <= self.max).then_some(after)
            })
            .is_ok()
    }

    /// Gives back the room of `len` bytes (written, or failed after reserving).
    pub(super) fn release(&self, len: usize) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(len))
            });
    }
}

/// A new connection's write queue: the sending half and the receiving half.
fn write_queue(shared: &Shared) -> (WriteQueue, Queued) {
    // mpsc panics on a zero capacity; one message at a time is the least that works.
    let (sender, receiver) = mpsc::channel(shared.config.tcp_write_queue_messages.max(1));
    let budget = Arc::new(QueueBudget::new(shared.config.tcp_write_queue_bytes));
    (
        WriteQueue {
            sender,
            budget: budget.clone(),
        },
        Queued { receiver, budget },
    )
}

/// The receiving half of a connection's write queue, owned by its task.
pub(super) struct Queued {
    receiver: mpsc::Receiver<Transmit>,
    budget: Arc<QueueBudget>,
}

impl Queued {
    async fn recv(&mut self) -> Option<Transmit> {
        let transmit = self.receiver.recv().await?;
        self.budget.release(transmit.bytes.len());
        Some(transmit)
    }

    /// Closes the queue and fails everything still in it, each for its own transaction.
    pub(super) fn fail_all(&mut self, shared: &Shared, why: &str) {
        self.receiver.close();
        while let Ok(t) = self.receiver.try_recv() {
            shared.send_failed(t.to, t.origin, why.to_owned());
        }
    }
}

/// Creates the TCP listener (SO_REUSEADDR, so that a restart is not blocked by TIME_WAIT).
pub(super) fn bind_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Accepts connections until shutdown. Each one is admitted or refused (closed before
/// anything is read from it, and so before a TLS handshake) by the admission rules
/// (`admission.rs`). `transport` is what the listener serves: TCP, or TLS (whose connections
/// go through the handshake before they run).
pub(super) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, transport: Transport) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut refusals = RefusalLog::new(REFUSAL_LOG_WINDOW, REFUSAL_LOG_SOURCES);
    loop {
        let accepted = tokio::select! {
            () = shut_down(&mut shutdown) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("{transport} accept failed: {e}");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let admitted = {
            let mut table = shared.connections.lock();
            shared
                .admission
                .admit_inbound(addr.ip(), &table.counts)
                .map(|()| {
                    let id = shared.new_connection_id();
                    let (queue, queued) = write_queue(&shared);
                    let peer = Peer {
                        transport,
                        addr,
                        connection: Some(id),
                    };
                    table.insert(id, peer, queue);
                    (id, queued)
                })
        };
        let (id, queued) = match admitted {
            Ok(id) => id,
            Err(refusal) => {
                refuse(&shared, &mut refusals, stream, addr, refusal, transport);
                continue;
            }
        };
        bump(&shared.stats.connections_accepted);
        bump(&shared.stats.connections_open);
        tracing::debug!(%addr, ?id, %transport, "connection accepted");
        let _ = stream.set_nodelay(true);
        if transport == Transport::Tls {
            shared.runtime.spawn(tls::accept_and_run(
                shared.clone(),
                id,
                addr,
                stream,
                queued,
            ));
        } else {
            let peer = Peer::tcp(addr, Some(id));
            shared
                .runtime
                .spawn(run_connection(shared.clone(), peer, stream, queued));
        }
    }
}

/// Closes a refused connection at once, counts it and logs it (throttled per source).
fn refuse(
    shared: &Shared,
    refusals: &mut RefusalLog,
    stream: TcpStream,
    addr: SocketAddr,
    refusal: Refusal,
    transport: Transport,
) {
    bump(match refusal {
        Refusal::Untrusted => &shared.stats.connections_refused_untrusted,
        Refusal::PerIpLimit => &shared.stats.connections_refused_per_ip,
        Refusal::TotalLimit => &shared.stats.connections_refused,
    });
    // A reset rather than a FIN: nothing was read, nothing is owed, and the refused socket
    // does not linger in TIME_WAIT on our side (a flood would fill the table with them).
    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
    match refusals.note(addr.ip(), std::time::Instant::now()) {
        Some(Note::Source) => tracing::warn!(
            source = %addr.ip(),
            %refusal,
            "{transport} connection refused (logged once a minute per source)"
        ),
        Some(Note::ManySources) => tracing::warn!(
            "{transport} connections refused from many sources (not logged each; see the \
             transport counters)"
        ),
        None => {}
    }
}

/// Queues a TCP or TLS send (by `transmit.to.transport`) on an existing connection or on a
/// new one opened in the background. A full queue fails this one message (for its
/// transaction) and nothing else.
pub(super) fn send(shared: &Arc<Shared>, transmit: Transmit) {
    let to = transmit.to;
    let transport = to.transport;
    let (queue, connect) = {
        let mut table = shared.connections.lock();
        match table.queue_for(&to) {
            Some(queue) => (queue, None),
            None => {
                if let Err(refusal) = shared.admission.admit_outbound(to.addr.ip(), &table.counts) {
                    drop(table);
                    shared.send_failed(to, transmit.origin, format!("{transport}: {refusal}"));
                    return;
                }
                let id = shared.new_connection_id();
                let (queue, queued) = write_queue(shared);
                let peer = Peer {
                    connection: Some(id),
                    ..to
                };
                table.insert(id, peer, queue.clone());
                (queue, Some((peer, queued)))
            }
        }
    };
    if let Some((peer, queued)) = connect {
        shared
            .runtime
            .spawn(connect_and_run(shared.clone(), peer, queued));
    }
    let len = transmit.bytes.len();
    if !queue.budget.try_reserve(len) {
        let why = format!("{transport} write queue full (bytes)");
        shared.send_failed(to, transmit.origin, why);
        return;
    }
    match queue.sender.try_send(transmit) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(t)) => {
            queue.budget.release(len);
            shared.send_failed(t.to, t.origin, format!("{transport} write queue full"));
        }
        Err(mpsc::error::TrySendError::Closed(t)) => {
            queue.budget.release(len);
            shared.send_failed(t.to, t.origin, format!("{transport} connection closed"));
        }
    }
}

/// Opens an outbound connection to `peer` (registered in the table already under
/// `peer.connection`, so that sends made while it opens queue behind it) — over TLS, with the
/// handshake — and runs it.
async fn connect_and_run(shared: Arc<Shared>, peer: Peer, mut queued: Queued) {
    // `send` always names the id it registered; a peer without one has nothing to run.
    let Some(id) = peer.connection else {
        return;
    };
    let (transport, addr) = (peer.transport, peer.addr);
    let timeout = shared.config.connect_timeout;
    let connected = match tokio::time::timeout(timeout, connect(&shared, addr)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("connect timed out after {timeout:?}")),
    };
    let stream = match connected {
        Ok(stream) => stream,
        Err(error) => {
            tracing::debug!(%addr, %error, %transport, "connect failed");
            let why = format!("{transport} connect to {addr} failed: {error}");
            tls::abandon(&shared, id, &mut queued, why);
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    if transport == Transport::Tls {
        match tls::connect(&shared, addr, stream).await {
            Ok(stream) => {
                opened(&shared, peer);
                run_connection(shared, peer, stream, queued).await;
            }
            Err(error) => {
                tracing::debug!(%addr, %error, "TLS connection failed");
                tls::abandon(&shared, id, &mut queued, error);
            }
        }
    } else {
        opened(&shared, peer);
        run_connection(shared, peer, stream, queued).await;
    }
}

fn opened(shared: &Shared, peer: Peer) {
    bump(&shared.stats.connections_opened);
    bump(&shared.stats.connections_open);
    tracing::debug!(addr = %peer.addr, id = ?peer.connection, transport = %peer.transport, "connection opened");
}

/// Connects from the bound IP when it is a specific address of the same family, so that the
/// peer sees the address the Via advertises.
async fn connect(shared: &Shared, addr: SocketAddr) -> io::Result<TcpStream> {
    let local_ip = shared.local_addr.ip();
    if local_ip.is_unspecified() || local_ip.is_ipv4() != addr.is_ipv4() {
        return TcpStream::connect(addr).await;
    }
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(local_ip, 0))?;
    socket.connect(addr).await
}

/// Why a connection task ended.
#[derive(Debug)]
enum Closed {
    Shutdown,
    ByPeer,
    Idle,
    ReadError(io::Error),
    WriteError(String),
    Framing,
    NoListener,
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Closed::Shutdown => f.write_str("transport shut down"),
            Closed::ByPeer => f.write_str("closed by peer"),
            Closed::Idle => f.write_str("idle timeout"),
            Closed::ReadError(e) => write!(f, "read error: {e}"),
            Closed::WriteError(e) => write!(f, "write error: {e}"),
            Closed::Framing => f.write_str("framing error"),
            Closed::NoListener => f.write_str("event receiver dropped"),
        }
    }
}

/// Drives one connection (`peer`: its transport, remote address and id) until it closes,
/// then removes it from the table, fails what is still queued and reports `ConnectionClosed`.
pub(super) async fn run_connection<S>(
    shared: Arc<Shared>,
    peer: Peer,
    mut stream: S,
    mut queued: Queued,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Every caller passes the id under which the connection is in the table.
    let Some(id) = peer.connection else {
        return;
    };
    let (addr, transport) = (peer.addr, peer.transport);
    let reason = drive(&shared, peer, &mut stream, &mut queued).await;
    tracing::debug!(%addr, ?id, %transport, %reason, "connection closed");
    if matches!(reason, Closed::Idle) {
        bump(&shared.stats.connections_idle_closed);
    }
    shared.connections.lock().remove(id);
    drop_one(&shared.stats.connections_open);
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
    drop(stream);
    queued.fail_all(&shared, &format!("{transport} connection closed: {reason}"));
    if !matches!(reason, Closed::Shutdown | Closed::NoListener) {
        let _ = shared
            .deliver(TransportEvent::ConnectionClosed {
                connection: id,
                addr,
            })
            .await;
    }
}

async fn drive<S>(shared: &Arc<Shared>, peer: Peer, stream: &mut S, queued: &mut Queued) -> Closed
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let idle = shared.config.tcp_idle_timeout;
    let mut framer = StreamFramer::new(shared.config.limits.max_message_size);
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut deadline = Instant::now() + idle;
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            () = shut_down(&mut shutdown) => return Closed::Shutdown,
            outgoing = queued.recv() => {
                let Some(transmit) = outgoing else {
                    return Closed::Shutdown;
                };
                if let Err(error) = write(stream, &transmit.bytes).await {
                    shared.send_failed(transmit.to, transmit.origin, error.clone());
                    return Closed::WriteError(error);
                }
                bump(&shared.stats.sent);
                deadline = Instant::now() + idle;
            }
            read = stream.read(&mut chunk) => {
                let n = match read {
                    Ok(0) => return Closed::ByPeer,
                    Ok(n) => n,
                    Err(e) => return Closed::ReadError(e),
                };
                deadline = Instant::now() + idle;
                framer.push(chunk.get(..n).unwrap_or_default());
                if let Some(closed) = handle_frames(shared, peer, stream, &mut framer).await {
                    return closed;
                }
            }
            _ = tokio::time::sleep_until(deadline) => return Closed::Idle,
        }
    }
}

/// Handles every complete frame in the framer. `Some` when the connection must close.
async fn handle_frames<S>(
    shared: &Arc<Shared>,
    peer: Peer,
    stream: &mut S,
    framer: &mut StreamFramer,
) -> Option<Closed>
where
    S: AsyncWrite + Unpin,
{
    loop {
        match framer.next_frame() {
            Ok(None) => return None,
            Ok(Some(Frame::KeepAlivePing)) => {
                bump(&shared.stats.keepalives);
                if let Err(e) = write(stream, b"\r\n").await {
                    return Some(Closed::WriteError(e));
                }
            }
            Ok(Some(Frame::KeepAlivePong)) => bump(&shared.stats.keepalives),
            Ok(Some(Frame::Message(bytes))) => match shared.inbound(&bytes, peer) {
                Inbound::Deliver(event) => {
                    if !shared.deliver(event).await {
                        return Some(Closed::NoListener);
                    }
                }
                Inbound::Answer(response, _) => {
                    if let Err(e) = write(stream, &response).await {
                        return Some(Closed::WriteError(e));
                    }
                    bump(&shared.stats.sent);
                }
                Inbound::Ignore => {}
            },
            Err(error) => {
                bump(&shared.stats.framing_errors);
                tracing::debug!(?peer, %error, "stream framing error; closing connection");
                let max = shared.config.limits.max_message_size;
                let buffered = framer.buffered();
                let head = buffered.get(..max).unwrap_or(buffered);
                if let Some((response, _)) =
                    shared.answer_malformed(head, &error.to_parse_error(), peer)
                {
                    if write(stream, &response).await.is_ok() {
                        bump(&shared.stats.sent);
                    }
                }
                return Some(Closed::Framing);
            }
        }
    }
}

/// Writes and flushes `bytes`: on a TLS stream the records only leave on the flush.
async fn write<S>(stream: &mut S, bytes: &[u8]) -> Result<(), String>
where
    S: AsyncWrite + Unpin,
{
    let written = async {
        stream.write_all(bytes).await?;
        stream.flush().await
    };
    match tokio::time::timeout(WRITE_STALL_TIMEOUT, written).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("write stalled for {WRITE_STALL_TIMEOUT:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::QueueBudget;

    #[test]
    fn the_byte_budget_bounds_the_queue_but_never_blocks_an_empty_one() {
        let budget = QueueBudget::new(100);
        assert!(budget.try_reserve(60));
        assert!(!budget.try_reserve(50), "60 + 50 > 100");
        assert!(budget.try_reserve(40));
        budget.release(60);
        assert!(budget.try_reserve(50));
        budget.release(90);
        // Empty: one message of any size goes, and nothing behind it.
        assert!(budget.try_reserve(1_000));
        assert!(!budget.try_reserve(1));
        budget.release(1_000);
        budget.release(1_000);
        assert!(budget.try_reserve(100), "release never underflows");
    }
}
