//! Transport counters: lock-free while the transport runs, copied out as a plain snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

/// A snapshot of the transport counters, for metrics and tests.
///
/// It exists so that losses that are invisible to the SIP layers (full socket buffers, garbage
/// from the network, refused connections) can still be observed. Every field except
/// `connections_open` counts up from zero since the transport was bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// UDP datagrams received that parsed as SIP messages.
    pub udp_received: u64,
    /// TCP frames received that parsed as SIP messages.
    pub tcp_received: u64,
    /// TLS frames received that parsed as SIP messages.
    pub tls_received: u64,
    /// Messages handed to the kernel (UDP) or fully written to a connection (TCP).
    pub sent: u64,
    /// Sends that failed (reported as `TransportEvent::SendFailed`, except UDP drops).
    pub send_errors: u64,
    /// UDP sends dropped because the socket send buffer was full (`WouldBlock`); the
    /// transaction layer's retransmissions cover them like network loss.
    pub udp_send_dropped: u64,
    /// Unparseable messages answered with 400 Bad Request.
    pub malformed_answered: u64,
    /// Unparseable messages dropped because no response could be routed.
    pub malformed_dropped: u64,
    /// TCP connections closed because the stream could not be framed.
    pub framing_errors: u64,
    /// UDP datagrams larger than the message size limit, dropped.
    pub oversize: u64,
    /// TCP connections accepted from peers.
    pub connections_accepted: u64,
    /// TCP connections opened by the transport to send.
    pub connections_opened: u64,
    /// TCP connections refused because `max_connections` were already open (or, for a source
    /// outside the priority set, all but the trunk's reserve).
    pub connections_refused: u64,
    /// TCP connections closed at accept because their source is not trusted.
    pub connections_refused_untrusted: u64,
    /// TCP connections closed at accept because their source IP held
    /// `max_connections_per_ip` already.
    pub connections_refused_per_ip: u64,
    /// Sends refused because the message is larger than any UDP datagram.
    pub udp_oversize_sends: u64,
    /// TLS handshakes that failed or timed out, on connections accepted (a client that said
    /// nothing, or a scanner) and opened (a server whose certificate did not verify).
    pub tls_handshake_failures: u64,
    /// TCP connections closed by the idle timeout.
    pub connections_idle_closed: u64,
    /// TCP connections currently open (gauge).
    pub connections_open: u64,
    /// Keep-alives received: CRLF-only UDP datagrams, CRLFCRLF pings and CRLF pongs on TCP.
    pub keepalives: u64,
    /// New out-of-dialog requests dropped unread because their queue was full (the
    /// application far behind): what keeps the messages of existing calls moving.
    pub shed_requests: u64,
}

/// The live counters behind [`TransportStats`].
#[derive(Debug, Default)]
pub(crate) struct StatsCounters {
    pub udp_received: AtomicU64,
    pub tcp_received: AtomicU64,
    pub tls_received: AtomicU64,
    pub sent: AtomicU64,
    pub send_errors: AtomicU64,
    pub udp_send_dropped: AtomicU64,
    pub malformed_answered: AtomicU64,
    pub malformed_dropped: AtomicU64,
    pub framing_errors: AtomicU64,
    pub oversize: AtomicU64,
    pub connections_accepted: AtomicU64,
    pub connections_opened: AtomicU64,
    pub connections_refused: AtomicU64,
    pub connections_refused_untrusted: AtomicU64,
    pub connections_refused_per_ip: AtomicU64,
    pub udp_oversize_sends: AtomicU64,
    pub tls_handshake_failures: AtomicU64,
    pub connections_idle_closed: AtomicU64,
    pub connections_open: AtomicU64,
    pub keepalives: AtomicU64,
    pub shed_requests: AtomicU64,
}

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Subtracts one from a gauge, never below zero.
pub(crate) fn drop_one(gauge: &AtomicU64) {
    let _ = gauge.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
}

impl StatsCounters {
    pub fn snapshot(&self) -> TransportStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransportStats {
            udp_received: get(&self.udp_received),
            tcp_received: get(&self.tcp_received),
            tls_received: get(&self.tls_received),
            sent: get(&self.sent),
            send_errors: get(&self.send_errors),
            udp_send_dropped: get(&self.udp_send_dropped),
            malformed_answered: get(&self.malformed_answered),
            malformed_dropped: get(&self.malformed_dropped),
            framing_errors: get(&self.framing_errors),
            oversize: get(&self.oversize),
            connections_accepted: get(&self.connections_accepted),
            connections_opened: get(&self.connections_opened),
            connections_refused: get(&self.connections_refused),
            connections_refused_untrusted: get(&self.connections_refused_untrusted),
            connections_refused_per_ip: get(&self.connections_refused_per_ip),
            udp_oversize_sends: get(&self.udp_oversize_sends),
            tls_handshake_failures: get(&self.tls_handshake_failures),
            connections_idle_closed: get(&self.connections_idle_closed),
            connections_open: get(&self.connections_open),
            keepalives: get(&self.keepalives),
            shed_requests: get(&self.shed_requests),
        }
    }
}
