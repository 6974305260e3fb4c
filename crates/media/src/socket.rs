//! Binding one RTP/RTCP socket pair, with raised kernel buffers.

use std::net::{IpAddr, SocketAddr, SocketAddrV6, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

use crate::OpenError;

/// Binds `ip:port` (RTP) and `ip:port+1` (RTCP), non-blocking, and asks the kernel for
/// `buffer_bytes` of receive and send buffer on each: the default (212,992 bytes) drops bursts
/// when the relay task is late (ARCHITECTURE.md, "Media facts"). The kernel may grant less (it
/// caps at `net.core.rmem_max`); that is not an error, the socket only drops earlier under a
/// burst. On error nothing stays bound.
pub(crate) fn bind_pair(
    ip: IpAddr,
    port: u16,
    buffer_bytes: usize,
) -> Result<(UdpSocket, UdpSocket), OpenError> {
    let rtcp_port = port.checked_add(1).ok_or_else(|| OpenError::Bind {
        port,
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "an RTP port needs the next port for RTCP",
        ),
    })?;
    let rtp = bind_one(ip, port, buffer_bytes)?;
    let rtcp = bind_one(ip, rtcp_port, buffer_bytes)?;
    Ok((rtp, rtcp))
}

/// Binds one socket. On the IPv6 wildcard (`media.bind_ip = "::"`) the socket is made
/// dual-stack whatever `net.ipv6.bindv6only` says: phones and callees of either family reach
/// the same relay ports (see [`canonical`] and [`for_socket`] for what that means for their
/// addresses).
fn bind_one(ip: IpAddr, port: u16, buffer_bytes: usize) -> Result<UdpSocket, OpenError> {
    let bind = |source| OpenError::Bind { port, source };
    let addr = SocketAddr::new(ip, port);
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(bind)?;
    if let IpAddr::V6(v6) = ip {
        if v6.is_unspecified() {
            socket.set_only_v6(false).map_err(bind)?;
        }
    }
    socket.bind(&addr.into()).map_err(bind)?;
    socket.set_nonblocking(true).map_err(bind)?;
    // Best effort (see above).
    let _ = socket.set_recv_buffer_size(buffer_bytes);
    let _ = socket.set_send_buffer_size(buffer_bytes);
    Ok(socket.into())
}

/// `addr` with an IPv4-mapped IPv6 address (what a dual-stack socket reports for an IPv4
/// peer) turned into that IPv4 address; any other address unchanged. Sources are learned, and
/// compared with SDP and signalling addresses, in this form, so an IPv4 phone is one address
/// whichever family the relay socket has.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => SocketAddr::new(IpAddr::V6(*v6.ip()).to_canonical(), v6.port()),
        v4 => v4,
    }
}

/// `to` as a socket bound to the family of `v6_socket` can send to it: an IPv4 destination is
/// IPv4-mapped on an IPv6 socket (Linux takes a plain IPv4 address on a dual-stack UDP socket,
/// but the BSDs and macOS refuse it, and an IPv6-only socket fails it), an IPv4-mapped
/// one plain IPv4 on an IPv4 socket; anything else unchanged (a real IPv6 destination on an
/// IPv4 socket fails to send, and is counted as a drop).
pub(crate) fn for_socket(v6_socket: bool, to: SocketAddr) -> SocketAddr {
    match to {
        SocketAddr::V4(v4) if v6_socket => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        SocketAddr::V6(_) if !v6_socket => canonical(to),
        _ => to,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn sources_are_canonical_and_destinations_follow_the_socket() {
        assert_eq!(
            canonical(addr("[::ffff:192.0.2.1]:4000")),
            addr("192.0.2.1:4000")
        );
        assert_eq!(canonical(addr("[::1]:4000")), addr("[::1]:4000"));
        assert_eq!(canonical(addr("192.0.2.1:4000")), addr("192.0.2.1:4000"));
        assert_eq!(
            for_socket(true, addr("192.0.2.1:4000")),
            addr("[::ffff:192.0.2.1]:4000")
        );
        assert_eq!(for_socket(true, addr("[::1]:4000")), addr("[::1]:4000"));
        assert_eq!(
            for_socket(false, addr("[::ffff:192.0.2.1]:4000")),
            addr("192.0.2.1:4000")
        );
        assert_eq!(
            for_socket(false, addr("192.0.2.1:4000")),
            addr("192.0.2.1:4000")
        );
    }

    /// A dual-stack relay socket (`[::]`) hears an IPv4 sender as a mapped address, which
    /// `canonical` turns back into the sender's own; and it reaches that sender at the address
    /// `for_socket` gives.
    #[test]
    fn a_dual_stack_socket_relays_to_and_from_ipv4() {
        let relay = bind_one("::".parse().unwrap(), 0, 64 * 1024).unwrap();
        relay.set_nonblocking(false).unwrap();
        relay
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let port = relay.local_addr().unwrap().port();
        let phone = UdpSocket::bind("127.0.0.1:0").unwrap();
        phone
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        phone.send_to(b"rtp", ("127.0.0.1", port)).unwrap();
        let mut buf = [0u8; 16];
        let (len, source) = relay.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"rtp");
        assert!(source.is_ipv6(), "the kernel reports {source}");
        assert_eq!(canonical(source), phone.local_addr().unwrap());
        // (Linux also takes a plain IPv4 address on a dual-stack UDP socket; the BSDs and
        // macOS refuse it, and an IPv6-only socket everywhere: hence the mapping.)
        relay
            .send_to(b"back", for_socket(true, canonical(source)))
            .unwrap();
        let (len, from) = phone.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"back");
        assert_eq!(from, addr(&format!("127.0.0.1:{port}")));
    }
}
