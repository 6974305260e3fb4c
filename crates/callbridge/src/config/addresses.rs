//! The addresses callbridge writes about itself and binds to, checked together: IPv6 hosts in
//! `sip.public_addr`, and address families that cannot work together (an IPv6 address
//! advertised from a socket that only speaks IPv4, or the reverse), refused at start rather
//! than discovered as calls whose signalling or media goes nowhere.
//!
//! The rule for a socket bound to `bind` that peers are told to reach at `public`:
//!
//! - `bind` IPv4 (`0.0.0.0` or one address): `public` must be IPv4 (or a name);
//! - `bind` the IPv6 wildcard `::`: dual-stack (callbridge binds it so), any `public`;
//! - `bind` one IPv6 address (`::1`): `public` must be IPv6 (or a name).
//!
//! `public` may differ from `bind` otherwise (NAT, a public address on another interface).

use std::net::{IpAddr, Ipv6Addr};

use super::ConfigError;

/// `sip.public_addr` as callbridge keeps a host: an IPv6 address without brackets (`::1`,
/// whether written `::1` or `[::1]`), anything else as written (trimmed). Every writer of a
/// host (Via sent-by, Contact, From, the Request-URI) brackets an IPv6 address itself
/// (RFC 5118 §4.1), so a host given in either form comes out once bracketed. Assumes
/// [`check_public_addr`] accepted it.
pub(crate) fn public_host(public_addr: &str) -> String {
    let text = public_addr.trim();
    match text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        Some(inner) if inner.parse::<Ipv6Addr>().is_ok() => inner.to_owned(),
        _ => text.to_owned(),
    }
}

/// `sip.public_addr` as an IP address, when it is one (either IPv6 form).
pub(crate) fn public_ip(public_addr: &str) -> Option<IpAddr> {
    public_host(public_addr).parse().ok()
}

/// Refuses a `sip.public_addr` that is no host: empty, with spaces or control characters,
/// brackets around something that is not an IPv6 address, or a colon outside an IPv6 address
/// (`192.0.2.1:5060`: the port is `sip.listen`'s, and a host with a colon would be read back
/// as host and port by every peer).
pub(crate) fn check_public_addr(public_addr: &str) -> Result<(), ConfigError> {
    let text = public_addr.trim();
    let invalid = |why: &str| {
        Err(ConfigError::Invalid(format!(
            "sip.public_addr {public_addr:?} {why}"
        )))
    };
    if text.is_empty() {
        return invalid("is empty: it must name callbridge's host or address");
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return invalid("contains spaces or control characters");
    }
    if let Some(rest) = text.strip_prefix('[') {
        return match rest.strip_suffix(']').map(str::parse::<Ipv6Addr>) {
            Some(Ok(_)) => Ok(()),
            _ => invalid("has brackets around something that is not an IPv6 address"),
        };
    }
    if text.contains(':') && text.parse::<Ipv6Addr>().is_err() {
        return invalid(
            "is neither a host name nor an IP address (no port here: SIP's port is sip.listen's)",
        );
    }
    Ok(())
}

/// Whether a socket bound to `bind` can exchange datagrams with `peer`: an IPv4 socket with
/// IPv4 peers, the IPv6 wildcard (dual-stack) with anyone, one IPv6 address with IPv6 peers.
pub(crate) fn reaches(bind: IpAddr, peer: IpAddr) -> bool {
    match bind.to_canonical() {
        IpAddr::V4(_) => peer.to_canonical().is_ipv4(),
        IpAddr::V6(v6) if v6.is_unspecified() => true,
        IpAddr::V6(_) => peer.to_canonical().is_ipv6(),
    }
}

/// What to bind instead, for an error message.
fn remedy(bind: IpAddr) -> &'static str {
    if bind.to_canonical().is_ipv4() {
        "an IPv4 socket cannot reach or be reached at an IPv6 address (bind \"::\" for both)"
    } else {
        "an IPv6-only socket cannot reach or be reached at an IPv4 address (bind \"::\" for both)"
    }
}

/// Refuses advertising `public` (named by the key `public_key`) for a socket bound to `bind`
/// (`bind_key`) when the two families cannot meet (see the module documentation).
pub(crate) fn check_family(
    bind_key: &str,
    bind: IpAddr,
    public_key: &str,
    public: IpAddr,
) -> Result<(), ConfigError> {
    if reaches(bind, public) {
        return Ok(());
    }
    Err(ConfigError::Invalid(format!(
        "{public_key} {} does not go with {bind_key} {}: {}",
        public.to_canonical(),
        bind.to_canonical(),
        remedy(bind)
    )))
}

/// Refuses a UDP trunk at `trunk` that the SIP socket bound to `listen` cannot send to.
/// (Over TCP and TLS each connection opens its own socket of the trunk's family.)
pub(crate) fn check_trunk(listen: IpAddr, trunk: IpAddr) -> Result<(), ConfigError> {
    if reaches(listen, trunk) {
        return Ok(());
    }
    Err(ConfigError::Invalid(format!(
        "the trunk {} cannot be reached over UDP from sip.listen {}: {}",
        trunk.to_canonical(),
        listen.to_canonical(),
        remedy(listen)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv6_public_addr_in_either_form_is_kept_bare() {
        for (given, kept) in [
            ("::1", "::1"),
            ("[::1]", "::1"),
            (" [2001:db8::5] ", "2001:db8::5"),
            ("192.0.2.1", "192.0.2.1"),
            ("sbc.example", "sbc.example"),
        ] {
            assert!(check_public_addr(given).is_ok(), "{given}");
            assert_eq!(public_host(given), kept);
        }
        assert_eq!(public_ip("[::1]"), Some(ip("::1")));
        assert_eq!(public_ip("sbc.example"), None);
        for bad in [
            "",
            "  ",
            "[::1",
            "[sbc.example]",
            "[192.0.2.1]",
            "192.0.2.1:5060",
            "sbc.example:5060",
            "[::1]:5060",
            "a b",
        ] {
            assert!(check_public_addr(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn families_that_cannot_meet_are_refused() {
        let ok = [
            ("0.0.0.0", "192.0.2.1"),
            ("127.0.0.1", "203.0.113.5"),
            ("::", "192.0.2.1"),
            ("::", "2001:db8::1"),
            ("::1", "::1"),
            ("2001:db8::2", "2001:db8::1"),
            // A mapped public address is the IPv4 one.
            ("0.0.0.0", "::ffff:192.0.2.1"),
        ];
        for (bind, public) in ok {
            assert!(
                check_family("media.bind_ip", ip(bind), "media.public_ip", ip(public)).is_ok(),
                "{bind} / {public}"
            );
        }
        for (bind, public) in [
            ("0.0.0.0", "::1"),
            ("127.0.0.1", "2001:db8::1"),
            ("::1", "127.0.0.1"),
            ("2001:db8::2", "192.0.2.1"),
        ] {
            let error = check_family("media.bind_ip", ip(bind), "media.public_ip", ip(public))
                .expect_err(&format!("{bind} / {public}"))
                .to_string();
            assert!(
                error.contains("media.public_ip") && error.contains("media.bind_ip"),
                "{error}"
            );
        }
    }

    #[test]
    fn a_udp_trunk_must_be_reachable_from_the_sip_socket() {
        assert!(check_trunk(ip("0.0.0.0"), ip("192.0.2.1")).is_ok());
        assert!(check_trunk(ip("::"), ip("192.0.2.1")).is_ok());
        assert!(check_trunk(ip("::1"), ip("::1")).is_ok());
        assert!(check_trunk(ip("0.0.0.0"), ip("::ffff:192.0.2.1")).is_ok());
        let error = check_trunk(ip("127.0.0.1"), ip("::1"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("trunk ::1") && error.contains("sip.listen 127.0.0.1"),
            "{error}"
        );
        assert!(check_trunk(ip("::1"), ip("127.0.0.1")).is_err());
    }
}
