//! SIP, SIPS and other absolute URIs.

use std::fmt;
use std::net::IpAddr;

use super::params::Params;
use super::ParseError;

/// The scheme of a URI.
///
/// It exists so that `tel:` URIs (which rsip 0.4 reads as a host) and other schemes are told
/// apart from `sip:`/`sips:` before the rest of the URI is interpreted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scheme {
    Sip,
    Sips,
    Tel,
    /// Any other absolute URI scheme, lower-cased.
    Other(String),
}

/// A URI as used in Request-URIs and name-addrs.
///
/// It keeps the exact text it was parsed from and writes that text back, so that a URI that
/// passes through callbridge (Route entries, Contacts) comes out byte for byte as it came in.
/// SIP/SIPS URIs are checked with rsip's grammar; sip-core adds what rsip 0.4 lacks:
/// bracketed IPv6 hosts (rsip rejects `sip:[::1]`), `tel:` URIs (rsip reads `tel` as a host),
/// and ports above 65535 reported as errors rather than panics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uri {
    raw: String,
    scheme: Scheme,
    user: Option<String>,
    host: String,
    port: Option<u16>,
    params: Params,
}

impl Uri {
    /// Parses a URI (no surrounding `<>`).
    pub fn parse(text: &str) -> Result<Uri, ParseError> {
        let text = text.trim();
        let invalid = || ParseError::InvalidUri(truncate(text));
        let colon = text.find(':').ok_or_else(invalid)?;
        let scheme_text = &text[..colon];
        if scheme_text.is_empty()
            || !scheme_text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        {
            return Err(invalid());
        }
        let scheme = match scheme_text.to_ascii_lowercase().as_str() {
            "sip" => Scheme::Sip,
            "sips" => Scheme::Sips,
            "tel" => Scheme::Tel,
            other => Scheme::Other(other.to_owned()),
        };
        let rest = &text[colon + 1..];
        match scheme {
            Scheme::Sip | Scheme::Sips => Self::parse_sip(text, scheme, rest),
            Scheme::Tel => {
                let (number, params) = split_params(rest);
                if number.is_empty() {
                    return Err(invalid());
                }
                Ok(Uri {
                    raw: text.to_owned(),
                    scheme,
                    user: Some(number.to_owned()),
                    host: String::new(),
                    port: None,
                    params: Params::parse(params)?,
                })
            }
            Scheme::Other(_) => {
                if rest.is_empty() || rest.bytes().any(|b| b.is_ascii_whitespace()) {
                    return Err(invalid());
                }
                Ok(Uri {
                    raw: text.to_owned(),
                    scheme,
                    user: None,
                    host: String::new(),
                    port: None,
                    params: Params::default(),
                })
            }
        }
    }

    fn parse_sip(text: &str, scheme: Scheme, rest: &str) -> Result<Uri, ParseError> {
        let invalid = || ParseError::InvalidUri(truncate(text));
        // URI headers (`?a=b`) are kept in `raw` but not interpreted.
        let before_headers = rest.split('?').next().unwrap_or(rest);
        let (user, host_part) = match before_headers.rfind('@') {
            Some(at) => (Some(&before_headers[..at]), &before_headers[at + 1..]),
            None => (None, before_headers),
        };
        let user = match user {
            Some(userinfo) => {
                // A password (`user:pass@`) is legal but never used here; keep only the user.
                let user = userinfo.split(':').next().unwrap_or(userinfo);
                if user.is_empty() {
                    return Err(invalid());
                }
                Some(user.to_owned())
            }
            None => None,
        };
        let (hostport, params) = split_params(host_part);
        let (host, port, ipv6) = split_host_port(hostport).ok_or_else(invalid)?;
        if host.is_empty() {
            return Err(invalid());
        }
        // rsip checks the grammar of everything but a bracketed IPv6 host, which it cannot
        // parse: that host is swapped for a placeholder name before rsip sees the text.
        let for_rsip;
        let checked: &str = if ipv6 {
            for_rsip = text.replacen(&format!("[{host}]"), "ipv6.invalid", 1);
            &for_rsip
        } else {
            text
        };
        rsip::Uri::try_from(checked).map_err(|_| invalid())?;
        Ok(Uri {
            raw: text.to_owned(),
            scheme,
            user,
            host: host.to_owned(),
            port,
            params: Params::parse(params)?,
        })
    }

    /// Builds `sip:user@host[:port]` (host may be an IPv6 address; it is bracketed).
    pub fn sip(user: Option<&str>, host: &str, port: Option<u16>) -> Uri {
        let mut raw = String::from("sip:");
        if let Some(user) = user {
            raw.push_str(user);
            raw.push('@');
        }
        push_host(&mut raw, host);
        if let Some(port) = port {
            raw.push(':');
            raw.push_str(&port.to_string());
        }
        Uri {
            raw,
            scheme: Scheme::Sip,
            user: user.map(str::to_owned),
            host: host.trim_matches(|c| c == '[' || c == ']').to_owned(),
            port,
            params: Params::default(),
        }
    }

    /// The same URI with a parameter appended (`;name` or `;name=value`).
    pub fn with_param(mut self, name: &str, value: Option<&str>) -> Uri {
        // Parameters go before any URI headers.
        let at = self.raw.find('?').unwrap_or(self.raw.len());
        let mut piece = format!(";{name}");
        if let Some(value) = value {
            piece.push('=');
            piece.push_str(value);
        }
        self.raw.insert_str(at, &piece);
        self.params.push(name, value);
        self
    }

    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }

    /// The user part (`1001` in `sip:1001@host`), or the number of a `tel:` URI.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The host without IPv6 brackets; empty for non-SIP URIs.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> Option<u16> {
        self.port
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The host as an IP address, when it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl std::str::FromStr for Uri {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uri::parse(s)
    }
}

/// Writes a host, bracketing IPv6 addresses.
pub(crate) fn push_host(out: &mut String, host: &str) {
    if host.contains(':') && !host.starts_with('[') {
        out.push('[');
        out.push_str(host);
        out.push(']');
    } else {
        out.push_str(host);
    }
}

/// Splits `host[:port]` or `[v6][:port]`; the bool says whether the host was bracketed.
pub(crate) fn split_host_port(text: &str) -> Option<(&str, Option<u16>, bool)> {
    let text = text.trim();
    if let Some(inner) = text.strip_prefix('[') {
        let close = inner.find(']')?;
        let host = &inner[..close];
        host.parse::<std::net::Ipv6Addr>().ok()?;
        let after = &inner[close + 1..];
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port.trim().parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((host, port, true));
    }
    match text.split_once(':') {
        Some((host, port)) => Some((host.trim(), Some(port.trim().parse().ok()?), false)),
        None => Some((text, None, false)),
    }
}

/// Splits `thing;a=b;c` into `thing` and `;a=b;c`.
pub(crate) fn split_params(text: &str) -> (&str, &str) {
    match text.find(';') {
        Some(at) => (&text[..at], &text[at..]),
        None => (text, ""),
    }
}

pub(crate) fn truncate(text: &str) -> String {
    text.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_uri_parts() {
        let uri = Uri::parse("sip:+1001@example.com:5070;transport=TCP;lr?Subject=x").unwrap();
        assert_eq!(uri.scheme(), &Scheme::Sip);
        assert_eq!(uri.user(), Some("+1001"));
        assert_eq!(uri.host(), "example.com");
        assert_eq!(uri.port(), Some(5070));
        assert_eq!(uri.params().get("transport"), Some(Some("TCP")));
        assert_eq!(uri.params().get("LR"), Some(None));
        assert_eq!(
            uri.to_string(),
            "sip:+1001@example.com:5070;transport=TCP;lr?Subject=x"
        );
    }

    #[test]
    fn ipv6_hosts_which_rsip_rejects() {
        let uri = Uri::parse("sip:1001@[::1]:5060;transport=udp").unwrap();
        assert_eq!(uri.host(), "::1");
        assert_eq!(uri.port(), Some(5060));
        assert_eq!(uri.ip(), Some("::1".parse().unwrap()));
        assert_eq!(uri.to_string(), "sip:1001@[::1]:5060;transport=udp");
        assert!(Uri::parse("sip:[::zz]").is_err());
        assert_eq!(
            Uri::sip(Some("2001"), "::1", Some(5080)).to_string(),
            "sip:2001@[::1]:5080"
        );
    }

    #[test]
    fn tel_and_other_schemes() {
        let tel = Uri::parse("tel:+1-201-555-0123;phone-context=x").unwrap();
        assert_eq!(tel.scheme(), &Scheme::Tel);
        assert_eq!(tel.user(), Some("+1-201-555-0123"));
        let other = Uri::parse("urn:service:sos").unwrap();
        assert_eq!(other.scheme(), &Scheme::Other("urn".into()));
    }

    #[test]
    fn invalid_uris_are_errors_not_panics() {
        for bad in [
            "",
            "sip:",
            "nocolon",
            "sip:@host",
            "sip:host:99999",
            "sip:host:abc",
            ":x",
            "sip:[::1",
        ] {
            assert!(Uri::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn with_param_goes_before_headers() {
        let uri = Uri::parse("sip:a@b?X=y").unwrap().with_param("lr", None);
        assert_eq!(uri.to_string(), "sip:a@b;lr?X=y");
        assert_eq!(uri.params().get("lr"), Some(None));
    }
}
