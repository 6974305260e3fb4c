//! Typed views of the headers the transaction, dialog and call layers read:
//! Via, name-addr headers (From, To, Contact, Route, Record-Route, P-Asserted-Identity), CSeq.

use std::fmt;

use super::params::{is_token_byte, Params};
use super::uri::{push_host, split_host_port, split_params, truncate, Uri};
use super::{Method, ParseError};

/// A SIP transport protocol as named in Via and URI `transport=` parameters.
///
/// It exists because reliability decides behaviour across the layers (retransmission timers,
/// where responses go); only UDP and TCP are carried, the others are parsed so that they can
/// be named and refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
    Sctp,
    Ws,
    Wss,
}

impl Transport {
    pub fn parse(text: &str) -> Option<Transport> {
        Some(match text.trim().to_ascii_uppercase().as_str() {
            "UDP" => Transport::Udp,
            "TCP" => Transport::Tcp,
            "TLS" => Transport::Tls,
            "SCTP" => Transport::Sctp,
            "WS" => Transport::Ws,
            "WSS" => Transport::Wss,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Sctp => "SCTP",
            Transport::Ws => "WS",
            Transport::Wss => "WSS",
        }
    }

    /// Reliable transports switch off retransmission timers (RFC 3261 §17).
    pub fn is_reliable(self) -> bool {
        !matches!(self, Transport::Udp)
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The magic cookie that marks an RFC 3261 branch (§8.1.1.7).
pub const BRANCH_MAGIC_COOKIE: &str = "z9hG4bK";

/// One Via entry: `SIP/2.0/UDP host:port;branch=...;rport;received=...`.
///
/// It exists because the top Via drives transaction matching (branch, sent-by), where
/// responses go (`rport`, `received`) and what the transport stamps (RFC 3581); one Via row
/// holds one entry (see [`HeaderName::is_multi_value`](crate::HeaderName::is_multi_value)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Via {
    pub transport: Transport,
    /// The sent-by host, without IPv6 brackets.
    pub host: String,
    pub port: Option<u16>,
    pub params: Params,
}

impl Via {
    pub fn parse(text: &str) -> Result<Via, ParseError> {
        let bad = || ParseError::InvalidHeader(format!("bad Via {:?}", truncate(text)));
        let text = text.trim();
        // sent-protocol is `SIP / 2.0 / UDP`, whitespace allowed around the slashes.
        let mut parts = text.splitn(3, '/');
        let name = parts.next().ok_or_else(bad)?.trim();
        let version = parts.next().ok_or_else(bad)?.trim();
        let rest = parts.next().ok_or_else(bad)?.trim_start();
        if !name.eq_ignore_ascii_case("SIP") || version != "2.0" {
            return Err(bad());
        }
        let split = rest
            .find(|c: char| c.is_ascii_whitespace())
            .ok_or_else(bad)?;
        let transport = Transport::parse(&rest[..split]).ok_or_else(bad)?;
        let (sent_by, params) = split_params(rest[split..].trim());
        let (host, port, _) = split_host_port(sent_by).ok_or_else(bad)?;
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(bad());
        }
        Ok(Via {
            transport,
            host: host.to_owned(),
            port,
            params: Params::parse(params)?,
        })
    }

    pub fn new(transport: Transport, host: &str, port: Option<u16>, branch: &str) -> Via {
        let mut params = Params::default();
        params.push("branch", Some(branch));
        Via {
            transport,
            host: host.trim_matches(|c| c == '[' || c == ']').to_owned(),
            port,
            params,
        }
    }

    pub fn branch(&self) -> Option<&str> {
        self.params.value("branch")
    }

    /// True when the branch carries the RFC 3261 magic cookie; otherwise transactions are
    /// matched by the RFC 2543 rules (§17.2.3).
    pub fn has_rfc3261_branch(&self) -> bool {
        self.branch()
            .is_some_and(|b| b.starts_with(BRANCH_MAGIC_COOKIE))
    }

    pub fn received(&self) -> Option<&str> {
        self.params.value("received")
    }

    /// `None`: no rport; `Some(None)`: rport requested (RFC 3581); `Some(Some(p))`: filled in.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.params
            .get("rport")
            .map(|value| value.and_then(|v| v.parse().ok()))
    }

    /// `host[:port]` as written, the sent-by that takes part in transaction matching.
    pub fn sent_by(&self) -> String {
        let mut out = String::new();
        push_host(&mut out, &self.host);
        if let Some(port) = self.port {
            out.push(':');
            out.push_str(&port.to_string());
        }
        out
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SIP/2.0/{} {}{}",
            self.transport,
            self.sent_by(),
            self.params
        )
    }
}

/// A name-addr or addr-spec header value: `"Display" <uri>;params` or `uri;params`.
///
/// rsip 0.4 keeps the quotes of display names and fails on IPv6 hosts in Contact; this type
/// unquotes display names and delegates the URI to [`Uri`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameAddr {
    pub display_name: Option<String>,
    pub uri: Uri,
    pub params: Params,
}

impl NameAddr {
    pub fn parse(text: &str) -> Result<NameAddr, ParseError> {
        let text = text.trim();
        let bad = || ParseError::InvalidHeader(format!("bad address {:?}", truncate(text)));
        if let Some(open) = find_unquoted(text, b'<') {
            let display = text[..open].trim();
            let after_open = &text[open + 1..];
            let close = after_open.find('>').ok_or_else(bad)?;
            let inner = &after_open[..close];
            // RFC 3261 §25.1: LAQUOT is `SWS "<"` and RAQUOT `">" SWS`; no whitespace may sit
            // inside the brackets (RFC 4475 §3.1.2.14, badaspec: `< sip:t.watson@example.org >`).
            if inner.bytes().any(|b| b.is_ascii_whitespace()) {
                return Err(bad());
            }
            let uri = Uri::parse(inner)?;
            let params = Params::parse(after_open[close + 1..].trim())?;
            let display_name = parse_display_name(display).ok_or_else(bad)?;
            Ok(NameAddr {
                display_name,
                uri,
                params,
            })
        } else {
            // addr-spec form: parameters after the URI belong to the header (RFC 3261 §20).
            let (uri, params) = split_params(text);
            Ok(NameAddr {
                display_name: None,
                uri: Uri::parse(uri)?,
                params: Params::parse(params)?,
            })
        }
    }

    pub fn new(uri: Uri) -> NameAddr {
        NameAddr {
            display_name: None,
            uri,
            params: Params::default(),
        }
    }

    pub fn tag(&self) -> Option<&str> {
        self.params.value("tag")
    }

    pub fn with_tag(mut self, tag: &str) -> NameAddr {
        self.params.set("tag", Some(tag));
        self
    }
}

impl fmt::Display for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(name) = &self.display_name {
            f.write_str("\"")?;
            for c in name.chars() {
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            f.write_str("\" ")?;
        }
        write!(f, "<{}>{}", self.uri, self.params)
    }
}

fn find_unquoted(text: &str, wanted: u8) -> Option<usize> {
    let (mut in_quotes, mut escaped) = (false, false);
    for (i, b) in text.bytes().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        match b {
            b'\\' if in_quotes => escaped = true,
            b'"' => in_quotes = !in_quotes,
            _ if b == wanted && !in_quotes => return Some(i),
            _ => {}
        }
    }
    None
}

/// `"quoted \"name\""` → `quoted "name"`; `Bare Tokens` → `Bare Tokens`; `` → None.
/// Returns `None` (outer) when the text is not a valid display name.
fn parse_display_name(text: &str) -> Option<Option<String>> {
    if text.is_empty() {
        return Some(None);
    }
    if let Some(inner) = text.strip_prefix('"') {
        let inner = inner.strip_suffix('"')?;
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                out.push(chars.next()?);
            } else {
                out.push(c);
            }
        }
        return Some(Some(out));
    }
    if text
        .bytes()
        .all(|b| is_token_byte(b) || b == b' ' || b == b'\t')
    {
        return Some(Some(text.to_owned()));
    }
    None
}

/// The CSeq header: a sequence number and a method.
///
/// It exists because both halves are read apart: the method keys client transactions and
/// CANCEL/ACK matching, the number orders in-dialog requests (§12.2.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: Method,
}

impl CSeq {
    pub fn parse(text: &str) -> Result<CSeq, ParseError> {
        let bad = || ParseError::InvalidHeader(format!("bad CSeq {:?}", truncate(text)));
        let mut parts = text.split_ascii_whitespace();
        let seq = parts.next().ok_or_else(bad)?;
        // RFC 3261 §8.1.1.5: less than 2**31, at most 10 digits.
        if seq.len() > 10 || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let seq: u32 = seq.parse().map_err(|_| bad())?;
        let method = Method::parse(parts.next().ok_or_else(bad)?)?;
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(CSeq { seq, method })
    }
}

impl fmt::Display for CSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.seq, self.method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_with_spaces_rport_and_ipv6() {
        let via =
            Via::parse("SIP / 2.0 / udp  10.0.0.1:5060 ;branch=z9hG4bK776;rport;received=1.2.3.4")
                .unwrap();
        assert_eq!(via.transport, Transport::Udp);
        assert_eq!(via.sent_by(), "10.0.0.1:5060");
        assert_eq!(via.branch(), Some("z9hG4bK776"));
        assert!(via.has_rfc3261_branch());
        assert_eq!(via.rport(), Some(None));
        assert_eq!(via.received(), Some("1.2.3.4"));
        let v6 = Via::parse("SIP/2.0/TCP [2001:db8::1]:5070;branch=x;rport=9").unwrap();
        assert_eq!(v6.host, "2001:db8::1");
        assert_eq!(v6.rport(), Some(Some(9)));
        assert!(!v6.has_rfc3261_branch());
        assert_eq!(
            v6.to_string(),
            "SIP/2.0/TCP [2001:db8::1]:5070;branch=x;rport=9"
        );
        for bad in [
            "",
            "SIP/2.0/UDP",
            "SIP/3.0/UDP h",
            "SIP/2.0/FOO h",
            "SIP/2.0/UDP h:99999",
        ] {
            assert!(Via::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn name_addr_forms() {
        let a = NameAddr::parse(r#""Bob \"B\", Jr" <sip:1001@example.com;user=phone>;tag=abc"#)
            .unwrap();
        assert_eq!(a.display_name.as_deref(), Some(r#"Bob "B", Jr"#));
        assert_eq!(a.uri.user(), Some("1001"));
        assert_eq!(a.tag(), Some("abc"));
        assert_eq!(a.uri.params().get("user"), Some(Some("phone")));

        let b = NameAddr::parse("sip:1001@example.com;tag=xyz").unwrap();
        assert_eq!(b.tag(), Some("xyz"));
        assert!(b.uri.params().is_empty());

        let c = NameAddr::parse("Anonymous <sip:[::1]:5060;transport=tcp>;expires=3").unwrap();
        assert_eq!(c.display_name.as_deref(), Some("Anonymous"));
        assert_eq!(c.uri.host(), "::1");
        assert_eq!(c.params.value("expires"), Some("3"));
        assert_eq!(
            c.with_tag("t1").to_string(),
            "\"Anonymous\" <sip:[::1]:5060;transport=tcp>;expires=3;tag=t1"
        );
        assert!(NameAddr::parse("<sip:a@b").is_err());
        assert!(NameAddr::parse("\"unterminated <sip:a@b>").is_err());
    }

    #[test]
    fn cseq_tolerates_whitespace_and_unknown_methods() {
        let c = CSeq::parse("  314159   INVITE ").unwrap();
        assert_eq!(c.seq, 314159);
        assert_eq!(c.method, Method::Invite);
        assert_eq!(
            CSeq::parse("1 FOO").unwrap().method,
            Method::parse("FOO").unwrap()
        );
        for bad in [
            "",
            "INVITE",
            "x INVITE",
            "1",
            "99999999999 INVITE",
            "1 INVITE x",
        ] {
            assert!(CSeq::parse(bad).is_err(), "{bad:?}");
        }
    }
}
