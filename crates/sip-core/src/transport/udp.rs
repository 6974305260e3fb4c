//! The UDP socket: binding with large buffers, the receive loop, non-blocking sends.

use std::io;
use std::sync::Arc;

use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

use super::family::{canonical, dual_stack_if_wildcard, for_socket};
use super::stats::bump;
use super::{shut_down, Inbound, Shared, TransportConfig};
use crate::peer::{Peer, Transmit, MAX_UDP_PAYLOAD};

/// Creates the non-blocking UDP socket with the configured buffer sizes, logging what the
/// kernel granted (Linux caps at net.core.rmem_max/wmem_max and reports double the request).
pub(super) fn bind_socket(config: &TransportConfig) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(config.bind),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    if let Err(e) = socket.set_recv_buffer_size(config.recv_buffer_bytes) {
        tracing::warn!("could not set UDP SO_RCVBUF: {e}");
    }
    if let Err(e) = socket.set_send_buffer_size(config.send_buffer_bytes) {
        tracing::warn!("could not set UDP SO_SNDBUF: {e}");
    }
    let granted_recv = socket.recv_buffer_size().unwrap_or(0);
    let granted_send = socket.send_buffer_size().unwrap_or(0);
    tracing::info!(
        requested_recv = config.recv_buffer_bytes,
        granted_recv,
        requested_send = config.send_buffer_bytes,
        granted_send,
        "UDP socket buffers"
    );
    if granted_recv < config.recv_buffer_bytes {
        tracing::warn!(
            "UDP receive buffer is {granted_recv} bytes, less than the {} requested \
             (raise net.core.rmem_max)",
            config.recv_buffer_bytes
        );
    }
    socket.set_nonblocking(true)?;
    dual_stack_if_wildcard(&socket, config.bind)?;
    socket.bind(&config.bind.into())?;
    Ok(socket.into())
}

/// Reads datagrams until shutdown or until the event receiver is gone.
pub(super) async fn receive_loop(shared: Arc<Shared>) {
    let max = shared.config.limits.max_message_size;
    // One byte more than the limit, so that a larger datagram shows up as oversize (the kernel
    // truncates it to the buffer).
    let mut buf = vec![0u8; max.saturating_add(1).min(65_536)];
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        let received = tokio::select! {
            () = shut_down(&mut shutdown) => break,
            received = shared.udp.recv_from(&mut buf) => received,
        };
        let (len, source) = match received {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors for earlier sends surface here on some platforms; keep reading.
                tracing::debug!("UDP receive error: {e}");
                continue;
            }
        };
        if len > max {
            bump(&shared.stats.oversize);
            tracing::debug!(%source, len, max, "oversize UDP datagram dropped");
            continue;
        }
        let Some(datagram) = buf.get(..len) else {
            continue;
        };
        if datagram.is_empty() {
            continue;
        }
        if datagram.iter().all(|&b| b == b'\r' || b == b'\n') {
            // CRLF keep-alive (RFC 5626 §4.4.1 uses STUN on UDP, but CRLFs are common).
            bump(&shared.stats.keepalives);
            continue;
        }
        // An IPv4 peer of a dual-stack socket is known above by its IPv4 address.
        let from = Peer::udp(canonical(source));
        match shared.inbound(datagram, from) {
            Inbound::Deliver(event) => {
                if !shared.deliver(event).await {
                    tracing::debug!("event receiver dropped; UDP receive loop ends");
                    break;
                }
            }
            Inbound::Answer(bytes, to) => shared.send_udp(&Transmit::stateless(to, bytes)),
            Inbound::Ignore => {}
        }
    }
}

impl Shared {
    /// Sends one datagram without waiting. A full socket buffer drops it (counted); other
    /// errors are reported as `SendFailed`.
    ///
    /// The send goes through the raw socket rather than tokio's `try_send_to`, which reports
    /// `WouldBlock` until the reactor has first seen the socket writable.
    pub(super) fn send_udp(&self, transmit: &Transmit) {
        if transmit.bytes.len() > MAX_UDP_PAYLOAD {
            // Never fits a datagram, whatever the path (RFC 3261 §18.1.1 sends large requests
            // over TCP; this is what is left: a response to a UDP request, or a request with
            // nowhere else to go). Only the transaction that sent it fails.
            bump(&self.stats.udp_oversize_sends);
            self.send_failed(
                transmit.to,
                transmit.origin,
                format!(
                    "{} bytes exceed the largest UDP datagram ({MAX_UDP_PAYLOAD})",
                    transmit.bytes.len()
                ),
            );
            return;
        }
        let socket = SockRef::from(&self.udp);
        // IPv4 peers go IPv4-mapped from an IPv6 socket (see `family.rs`).
        let to = for_socket(self.local_addr, transmit.to.addr);
        match socket.send_to(&transmit.bytes, &SockAddr::from(to)) {
            Ok(_) => bump(&self.stats.sent),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                bump(&self.stats.udp_send_dropped);
                tracing::debug!(to = %transmit.to.addr, "UDP send buffer full; datagram dropped");
            }
            Err(e) => self.send_failed(transmit.to, transmit.origin, e.to_string()),
        }
    }
}
