//! TCP: the listener, the connection table, one task per connection.
//!
//! Each connection is driven by a single task that reads (through the [`StreamFramer`]),
//! writes what [`TransportHandle::send`](super::TransportHandle::send) queued for it, answers
//! keep-alive pings and enforces the idle timeout. Sends reach it through a queue bounded in
//! messages and in bytes (`tcp_write_queue_messages`, `tcp_write_queue_bytes`) so that sending
//! never blocks; a full queue fails that one send, for its transaction only.
//!
//! Accepted connections pass the admission rules first (trust set, per-IP limit, a
//! reserve of the total for the trunk): see `admission.rs`.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::admission::{ConnectionCounts, Note, Refusal, RefusalLog};
use super::framer::{Frame, StreamFramer};
use super::stats::{bump, drop_one};
use super::{shut_down, Inbound, Shared, TransportEvent};
use crate::peer::{ConnectionId, Peer, Transmit};

/// Longest a single write may stall (peer not reading) before the connection is dropped:
/// 64*T1, after which any transaction waiting on it has timed out anyway.
const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(32);
/// Pause after a failed accept (typically out of file descriptors) before trying again.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
const READ_CHUNK: usize = 16 * 1024;
/// A refused source is named in the log at most this often.
const REFUSAL_LOG_WINDOW: Duration = Duration::from_secs(60);
/// Distinct refused sources remembered for that (beyond it, one summary line per window).
const REFUSAL_LOG_SOURCES: usize = 1024;

/// Open (or opening) connections, by id and by remote address, and their counts for the
/// admission limits. One lock guards all three, so that a check and the insert it allows
/// cannot be split by another accept or send.
#[derive(Default)]
pub(super) struct ConnectionTable {
    by_id: HashMap<ConnectionId, Connection>,
    by_addr: HashMap<SocketAddr, ConnectionId>,
    counts: ConnectionCounts,
}

struct Connection {
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

    fn insert(&mut self, id: ConnectionId, addr: SocketAddr, queue: WriteQueue) {
        self.by_id.insert(id, Connection { addr, queue });
        self.by_addr.insert(addr, id);
        self.counts.add(addr.ip());
    }

    fn remove(&mut self, id: ConnectionId) {
        if let Some(connection) = self.by_id.remove(&id) {
            self.counts.remove(connection.addr.ip());
            if self.by_addr.get(&connection.addr) == Some(&id) {
                self.by_addr.remove(&connection.addr);
            }
        }
    }

    fn queue_for(&self, to: &Peer) -> Option<WriteQueue> {
        let by_connection = to.connection.and_then(|id| self.by_id.get(&id));
        let connection = by_connection
            .or_else(|| self.by_addr.get(&to.addr).and_then(|id| self.by_id.get(id)))?;
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
    fn fail_all(&mut self, shared: &Shared, why: &str) {
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
/// anything is read from it) by the admission rules (`admission.rs`).
pub(super) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
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
                tracing::warn!("TCP accept failed: {e}");
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
                    table.insert(id, addr, queue);
                    (id, queued)
                })
        };
        let (id, queued) = match admitted {
            Ok(id) => id,
            Err(refusal) => {
                refuse(&shared, &mut refusals, stream, addr, refusal);
                continue;
            }
        };
        bump(&shared.stats.connections_accepted);
        bump(&shared.stats.connections_open);
        tracing::debug!(%addr, ?id, "TCP connection accepted");
        let _ = stream.set_nodelay(true);
        shared
            .runtime
            .spawn(run_connection(shared.clone(), id, addr, stream, queued));
    }
}

/// Closes a refused connection at once, counts it and logs it (throttled per source).
fn refuse(
    shared: &Shared,
    refusals: &mut RefusalLog,
    stream: TcpStream,
    addr: SocketAddr,
    refusal: Refusal,
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
            "TCP connection refused (logged once a minute per source)"
        ),
        Some(Note::ManySources) => tracing::warn!(
            "TCP connections refused from many sources (not logged each; see the transport \
             counters)"
        ),
        None => {}
    }
}

/// Queues a TCP send on an existing connection or on a new one opened in the background.
/// A full queue fails this one message (for its transaction) and nothing else.
pub(super) fn send(shared: &Arc<Shared>, transmit: Transmit) {
    let to = transmit.to;
    let (queue, connect) = {
        let mut table = shared.connections.lock();
        match table.queue_for(&to) {
            Some(queue) => (queue, None),
            None => {
                if let Err(refusal) = shared.admission.admit_outbound(to.addr.ip(), &table.counts) {
                    drop(table);
                    shared.send_failed(to, transmit.origin, format!("TCP: {refusal}"));
                    return;
                }
                let id = shared.new_connection_id();
                let (queue, queued) = write_queue(shared);
                table.insert(id, to.addr, queue.clone());
                (queue, Some((id, queued)))
            }
        }
    };
    if let Some((id, queued)) = connect {
        shared
            .runtime
            .spawn(connect_and_run(shared.clone(), id, to.addr, queued));
    }
    let len = transmit.bytes.len();
    if !queue.budget.try_reserve(len) {
        shared.send_failed(to, transmit.origin, "TCP write queue full (bytes)".into());
        return;
    }
    match queue.sender.try_send(transmit) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(t)) => {
            queue.budget.release(len);
            shared.send_failed(t.to, t.origin, "TCP write queue full".into());
        }
        Err(mpsc::error::TrySendError::Closed(t)) => {
            queue.budget.release(len);
            shared.send_failed(t.to, t.origin, "TCP connection closed".into());
        }
    }
}

/// Opens an outbound connection (registered in the table already, so that sends made while it
/// opens queue behind it) and runs it.
async fn connect_and_run(
    shared: Arc<Shared>,
    id: ConnectionId,
    addr: SocketAddr,
    mut queued: Queued,
) {
    let timeout = shared.config.connect_timeout;
    let connected = match tokio::time::timeout(timeout, connect(&shared, addr)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("connect timed out after {timeout:?}")),
    };
    match connected {
        Ok(stream) => {
            bump(&shared.stats.connections_opened);
            bump(&shared.stats.connections_open);
            tracing::debug!(%addr, ?id, "TCP connection opened");
            let _ = stream.set_nodelay(true);
            run_connection(shared, id, addr, stream, queued).await;
        }
        Err(error) => {
            tracing::debug!(%addr, %error, "TCP connect failed");
            shared.connections.lock().remove(id);
            queued.fail_all(&shared, &format!("TCP connect to {addr} failed: {error}"));
        }
    }
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

/// Drives one connection until it closes, then removes it from the table, fails what is still
/// queued and reports `ConnectionClosed`.
async fn run_connection(
    shared: Arc<Shared>,
    id: ConnectionId,
    addr: SocketAddr,
    mut stream: TcpStream,
    mut queued: Queued,
) {
    let reason = drive(&shared, id, addr, &mut stream, &mut queued).await;
    tracing::debug!(%addr, ?id, %reason, "TCP connection closed");
    if matches!(reason, Closed::Idle) {
        bump(&shared.stats.connections_idle_closed);
    }
    shared.connections.lock().remove(id);
    drop_one(&shared.stats.connections_open);
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
    drop(stream);
    queued.fail_all(&shared, &format!("TCP connection closed: {reason}"));
    if !matches!(reason, Closed::Shutdown | Closed::NoListener) {
        let _ = shared
            .deliver(TransportEvent::ConnectionClosed {
                connection: id,
                addr,
            })
            .await;
    }
}

async fn drive(
    shared: &Arc<Shared>,
    id: ConnectionId,
    addr: SocketAddr,
    stream: &mut TcpStream,
    queued: &mut Queued,
) -> Closed {
    let peer = Peer::tcp(addr, Some(id));
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
async fn handle_frames(
    shared: &Arc<Shared>,
    peer: Peer,
    stream: &mut TcpStream,
    framer: &mut StreamFramer,
) -> Option<Closed> {
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
                tracing::debug!(?peer, %error, "TCP framing error; closing connection");
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

async fn write(stream: &mut TcpStream, bytes: &[u8]) -> Result<(), String> {
    match tokio::time::timeout(WRITE_STALL_TIMEOUT, stream.write_all(bytes)).await {
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
