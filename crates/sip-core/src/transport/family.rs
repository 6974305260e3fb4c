//! IPv4 and IPv6 at the socket boundary: the one place where the address family of a socket
//! and of the address a peer is known by are reconciled.
//!
//! A socket bound to `[::]` is dual-stack: IPv4 peers reach it too, and the kernel reports
//! them as IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`). Sending the other way, an AF_INET6
//! socket is only portably given AF_INET6 addresses: Linux accepts a plain IPv4 address on a
//! dual-stack UDP socket, the BSDs and macOS refuse it (EINVAL/EAFNOSUPPORT), and a v6-only
//! socket fails it everywhere. Everything above the
//! transport (trust checks against `sip.trusted_peers`, the trunk's address, leg-peer checks,
//! response matching, Via `received`) compares addresses, and an IPv4 peer must be one
//! address there whichever socket it came in on. So:
//!
//! - every address read from a socket goes up [`canonical`] (IPv4-mapped → IPv4);
//! - every address handed down for sending goes through [`for_socket`], which maps an IPv4
//!   destination to IPv4-mapped on an IPv6 socket (and the reverse on an IPv4 socket).

use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};

use socket2::Socket;

/// `addr` with an IPv4-mapped IPv6 address (`[::ffff:a.b.c.d]:port`) turned into the IPv4
/// address it stands for (`a.b.c.d:port`); any other address unchanged. What the layers above
/// the transport are given for a peer, whatever socket it came in on.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => SocketAddr::new(IpAddr::V6(*v6.ip()).to_canonical(), v6.port()),
        v4 => v4,
    }
}

/// `to` as a socket of the family of `local` (the socket's bound address) can send to it: an
/// IPv4 destination becomes IPv4-mapped on an IPv6 socket (which then reaches it when the
/// socket is dual-stack, and fails cleanly when it is IPv6-only); an IPv4-mapped destination
/// becomes plain IPv4 on an IPv4 socket. Other destinations are unchanged.
pub fn for_socket(local: SocketAddr, to: SocketAddr) -> SocketAddr {
    match (local, to) {
        (SocketAddr::V6(_), SocketAddr::V4(v4)) => {
            SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0))
        }
        (SocketAddr::V4(_), SocketAddr::V6(_)) => canonical(to),
        _ => to,
    }
}

/// Makes a socket about to be bound to `bind` dual-stack when `bind` is the IPv6 wildcard
/// (`[::]`), whatever `net.ipv6.bindv6only` says: `sip.listen = "[::]:5060"` means IPv4 and
/// IPv6 peers alike. A specific IPv6 address (`[::1]`) serves IPv6 only, by its nature.
pub(crate) fn dual_stack_if_wildcard(socket: &Socket, bind: SocketAddr) -> io::Result<()> {
    match bind {
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => socket.set_only_v6(false),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn v4_mapped_sources_become_ipv4() {
        assert_eq!(
            canonical(addr("[::ffff:127.0.0.1]:5060")),
            addr("127.0.0.1:5060")
        );
        assert_eq!(
            canonical(addr("[::ffff:192.0.2.7]:40000")),
            addr("192.0.2.7:40000")
        );
        // Real IPv6 addresses, IPv4 addresses and the IPv4-compatible (deprecated) form are
        // left as they are.
        for same in [
            "[::1]:5060",
            "[2001:db8::1]:5060",
            "127.0.0.1:5060",
            "[::127.0.0.1]:5060",
        ] {
            assert_eq!(canonical(addr(same)), addr(same), "{same}");
        }
    }

    #[test]
    fn destinations_follow_the_socket_family() {
        let v6_socket = addr("[::]:5060");
        let v4_socket = addr("0.0.0.0:5060");
        assert_eq!(
            for_socket(v6_socket, addr("127.0.0.1:5080")),
            addr("[::ffff:127.0.0.1]:5080")
        );
        assert_eq!(
            for_socket(v6_socket, addr("[::1]:5080")),
            addr("[::1]:5080")
        );
        assert_eq!(
            for_socket(v4_socket, addr("[::ffff:10.0.0.1]:5080")),
            addr("10.0.0.1:5080")
        );
        assert_eq!(
            for_socket(v4_socket, addr("10.0.0.1:5080")),
            addr("10.0.0.1:5080")
        );
        // A real IPv6 destination on an IPv4 socket stays: the send fails and is reported.
        assert_eq!(
            for_socket(v4_socket, addr("[2001:db8::1]:5080")),
            addr("[2001:db8::1]:5080")
        );
        // Round trip: what goes out mapped comes back canonical.
        let trunk = addr("192.0.2.1:5060");
        assert_eq!(canonical(for_socket(v6_socket, trunk)), trunk);
    }
}
