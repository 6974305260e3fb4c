//! Addresses of the other end of a message, and bytes waiting to be sent there.
//! Shared by the sans-IO layers (which decide where to send) and the transport (which sends).

use std::net::SocketAddr;

use bytes::Bytes;

use crate::message::{Transport, Via};
use crate::transaction::TxId;

/// The largest UDP payload IPv4 can carry (65535 − 20 IP − 8 UDP header bytes): anything
/// larger can never go over UDP, whatever the MTU.
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// Identifies one TCP or TLS connection of the transport, so that responses go back on the
/// connection their request came on (RFC 3261 §18.2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

/// The far end of a message: transport, socket address and, for a connection-oriented
/// transport, the connection it arrived on (if any).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    pub transport: Transport,
    pub addr: SocketAddr,
    /// Set for messages received on a TCP or TLS connection; `None` lets the transport pick or open a
    /// connection to `addr`.
    pub connection: Option<ConnectionId>,
}

impl Peer {
    pub fn udp(addr: SocketAddr) -> Peer {
        Peer {
            transport: Transport::Udp,
            addr,
            connection: None,
        }
    }

    pub fn tcp(addr: SocketAddr, connection: Option<ConnectionId>) -> Peer {
        Peer {
            transport: Transport::Tcp,
            addr,
            connection,
        }
    }

    pub fn tls(addr: SocketAddr, connection: Option<ConnectionId>) -> Peer {
        Peer {
            transport: Transport::Tls,
            addr,
            connection,
        }
    }

    pub fn is_reliable(&self) -> bool {
        self.transport.is_reliable()
    }
}

/// Bytes to send to a peer. Produced by `poll_transmit()` of the sans-IO layers.
///
/// It exists so that the layers that decide what to send never own a socket: the driver hands
/// each `Transmit` to the transport as is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    pub to: Peer,
    pub bytes: Bytes,
    /// The transaction that sent these bytes, if any. The transport hands it back in
    /// `TransportEvent::SendFailed`, so that a failed send fails that transaction only
    /// (RFC 3261 §17.1.4, §17.2.4) and not every other one with the same peer. `None` for
    /// messages outside any transaction (the ACK for a 2xx, the transport's own 400s).
    pub origin: Option<TxId>,
}

impl Transmit {
    /// Bytes sent on behalf of no transaction: a failure to send them fails nothing.
    pub fn stateless(to: Peer, bytes: Bytes) -> Transmit {
        Transmit {
            to,
            bytes,
            origin: None,
        }
    }
}

/// Where a server transaction sends its responses (RFC 3261 §18.2.2, RFC 3581 §4):
/// on a reliable transport, back over the connection the request came on while it is open,
/// and otherwise over a new connection to the source IP and the sent-by port (default 5060,
/// 5061 for TLS) — not to the source port, which was the peer's ephemeral one; on UDP, to the
/// source address when the top Via asked for `rport`, otherwise to the `received` address (the
/// source IP) and the sent-by port (default 5060).
pub fn response_destination(top_via: &Via, request_source: Peer) -> Peer {
    if !request_source.is_reliable() && top_via.rport().is_some() {
        return request_source;
    }
    let default_port = if request_source.transport == Transport::Tls {
        5061
    } else {
        5060
    };
    let port = top_via.port.unwrap_or(default_port);
    Peer {
        addr: SocketAddr::new(request_source.addr.ip(), port),
        ..request_source
    }
}

/// RFC 3261 §18.2.1 and RFC 3581 §4: stamps the top Via of a received request with the source
/// address (`received=` when it differs from sent-by, `rport=` filled in when requested).
/// Returns the rewritten Via value, or `None` when nothing changes.
pub fn stamp_received(top_via: &Via, source: &Peer) -> Option<Via> {
    let source_ip = source.addr.ip().to_string();
    let wants_rport = top_via.rport().is_some();
    let host_differs = top_via.host != source_ip;
    if !wants_rport && !host_differs {
        return None;
    }
    let mut via = top_via.clone();
    if host_differs || wants_rport {
        via.params.set("received", Some(&source_ip));
    }
    if wants_rport {
        via.params
            .set("rport", Some(&source.addr.port().to_string()));
    }
    Some(via)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn via(text: &str) -> Via {
        Via::parse(text).unwrap()
    }

    #[test]
    fn udp_responses_follow_rport_or_sent_by_port() {
        let source = Peer::udp("10.0.0.9:40000".parse().unwrap());
        let plain = via("SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK1");
        assert_eq!(
            response_destination(&plain, source).addr,
            "10.0.0.9:5070".parse().unwrap()
        );
        let rport = via("SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bK1;rport");
        assert_eq!(response_destination(&rport, source), source);
        // Over TCP: the connection first; beside it the sent-by port, for a new connection
        // if that one has closed (the source port was the peer's ephemeral one).
        let tcp = Peer::tcp("10.0.0.9:40001".parse().unwrap(), Some(ConnectionId(7)));
        let plain_tcp = via("SIP/2.0/TCP 10.0.0.1:5070;branch=z9hG4bK1;rport");
        assert_eq!(
            response_destination(&plain_tcp, tcp),
            Peer::tcp("10.0.0.9:5070".parse().unwrap(), Some(ConnectionId(7)))
        );
        let no_port = via("SIP/2.0/TCP host.example;branch=z9hG4bK1");
        assert_eq!(response_destination(&no_port, tcp).addr.port(), 5060);
    }

    #[test]
    fn received_and_rport_stamped() {
        let source = Peer::udp("10.0.0.9:40000".parse().unwrap());
        let stamped = stamp_received(
            &via("SIP/2.0/UDP host.invalid;branch=z9hG4bK1;rport"),
            &source,
        )
        .unwrap();
        assert_eq!(stamped.received(), Some("10.0.0.9"));
        assert_eq!(stamped.rport(), Some(Some(40000)));
        assert!(
            stamp_received(&via("SIP/2.0/UDP 10.0.0.9:40000;branch=z9hG4bK1"), &source).is_none()
        );
    }
}
