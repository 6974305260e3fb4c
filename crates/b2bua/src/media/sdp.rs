//! Just enough SDP (RFC 8866, formerly 4566) to anchor media and to hide where a description
//! came from: find where each stream of a peer wants its media, and rewrite what is forwarded to
//! the other leg so that it points at the relay and names nothing of its sender (SPEC.md,
//! "Trust boundary").
//!
//! [`SessionDescription::rewrite`] changes these lines, and only these:
//! - `v=` is written `v=0`, the only SDP version there is;
//! - `o=` is callbridge's own, `o=- <id> <version> IN IP4|IP6 <public_ip>` ([`Origin`]; which
//!   version to write is the caller's decision, see `super::session`), and `s=` is `s=-`; both
//!   right after `v=`, where RFC 8866 §5 puts them, whether or not the sender had them;
//! - `c=` (session and media level) names the public address, except an unspecified one
//!   (`0.0.0.0`, old-style hold), which is kept;
//! - each relayed stream's `m=` port and `a=rtcp:` are the relay's; a stream without relay
//!   ports (disabled, port 0) loses its `a=rtcp:`, which would name the peer's address;
//! - dropped at either level: `i=`, `u=`, `e=`, `p=` (titles, URIs, e-mail addresses and phone
//!   numbers), `a=tool:` (the sender's software and version), and the ICE attributes of
//!   RFC 8839 and RFC 8840 (candidates list every local address; the relay terminates media, so
//!   ICE between the two peers could not work anyway, and without `a=ice-ufrag`/`a=ice-pwd` a
//!   peer does not attempt it).
//!
//! Every other line passes verbatim and in order: `t=`, `b=`, `k=`, codecs (`m=` formats,
//! `a=rtpmap`, `a=fmtp`, telephone-event), directions, `a=ptime`, `a=fingerprint`, `a=setup`,
//! `a=crypto` and unknown attributes.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;

use super::MediaError;

/// Where the relay takes one stream's media: the RTP port to write in `m=` and the RTCP port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayPorts {
    pub rtp: u16,
    pub rtcp: u16,
}

/// callbridge's own `o=` for what one leg receives, in place of the sender's (which names a
/// user and often a private address): `session_id` stays the same for the whole call,
/// `version` moves on each time the description sent to that leg changes (RFC 3264 §8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub session_id: u64,
    pub version: u64,
}

/// What a peer says about one `m=` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamInfo {
    /// Position of the `m=` line (0-based); streams keep their position across re-offers.
    pub index: usize,
    /// `audio`, `video`, ...
    pub media: String,
    /// The `m=` port; 0 means the stream is disabled.
    pub port: u16,
    /// Where the peer receives RTP: `None` when the stream is disabled or the connection
    /// address is unspecified (`0.0.0.0`, old-style hold).
    pub rtp: Option<SocketAddr>,
    /// Where the peer receives RTCP: `a=rtcp` if present, else the RTP port + 1.
    pub rtcp: Option<SocketAddr>,
}

#[derive(Clone, Debug)]
struct Media {
    /// The section's lines; the first is the `m=` line.
    lines: Vec<String>,
    port: u16,
    media: String,
    connection: Option<IpAddr>,
    rtcp: Option<(u16, Option<IpAddr>)>,
}

/// A parsed session description.
#[derive(Clone, Debug)]
pub struct SessionDescription {
    /// The `v=` line.
    version: String,
    /// The session-level lines after `v=`; once rewritten, without `o=` and `s=`.
    session: Vec<String>,
    /// Set by [`rewrite`](Self::rewrite): the `o=` written in place of the sender's (with the
    /// address it names), followed by `s=-`.
    origin: Option<(Origin, IpAddr)>,
    connection: Option<IpAddr>,
    media: Vec<Media>,
}

/// The ICE attributes: RFC 8839 §5 (and its IANA registrations) and `end-of-candidates` from
/// RFC 8840 (Trickle ICE for SIP).
const ICE_ATTRIBUTES: [&str; 9] = [
    "candidate",
    "remote-candidates",
    "ice-lite",
    "ice-mismatch",
    "ice-ufrag",
    "ice-pwd",
    "ice-pacing",
    "ice-options",
    "end-of-candidates",
];

/// Whether a line, at session or media level, may name its sender and so is not forwarded.
/// `o=` and `s=` count too: [`SessionDescription::rewrite`] writes its own. Attribute names
/// are compared ignoring case and blanks: a sloppy spelling must not let a candidate through.
fn reveals_origin(line: &str) -> bool {
    let Some((kind, value)) = line.split_once('=') else {
        return false;
    };
    match kind {
        "o" | "s" | "i" | "u" | "e" | "p" => true,
        "a" => {
            // The name ends at `:` or, in a malformed line a peer might still read, a blank.
            let name = value
                .trim_start()
                .split(|c: char| c == ':' || c.is_whitespace())
                .next()
                .unwrap_or_default();
            name.eq_ignore_ascii_case("tool")
                || ICE_ATTRIBUTES
                    .iter()
                    .any(|ice| name.eq_ignore_ascii_case(ice))
        }
        _ => false,
    }
}

fn malformed(what: impl Into<String>) -> MediaError {
    MediaError::Malformed(what.into())
}

/// Parses the value of a `c=` line: `IN IP4 addr[/ttl[/n]]` or `IN IP6 addr[/n]`.
fn parse_connection(value: &str) -> Result<IpAddr, MediaError> {
    let bad = || malformed(format!("bad connection line: c={value}"));
    let mut fields = value.split_ascii_whitespace();
    let (Some("IN"), Some(kind), Some(address), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(bad());
    };
    let address = address.split('/').next().unwrap_or_default();
    let ip: IpAddr = address.parse().map_err(|_| bad())?;
    match (kind, ip) {
        ("IP4", IpAddr::V4(_)) | ("IP6", IpAddr::V6(_)) => Ok(ip),
        _ => Err(bad()),
    }
}

fn parse_port(text: &str, line: &str) -> Result<u16, MediaError> {
    text.parse()
        .map_err(|_| malformed(format!("bad port in {line}")))
}

/// `a=rtcp:port [IN IP4 addr]` (RFC 3605).
fn parse_rtcp(value: &str, line: &str) -> Result<(u16, Option<IpAddr>), MediaError> {
    let mut fields = value.split_ascii_whitespace();
    let port = parse_port(fields.next().unwrap_or_default(), line)?;
    let rest: Vec<&str> = fields.collect();
    if rest.is_empty() {
        return Ok((port, None));
    }
    Ok((port, Some(parse_connection(&rest.join(" "))?)))
}

/// `IN IP4 <ip>` or `IN IP6 <ip>`: the tail of `c=`, `o=` and `a=rtcp:` lines.
fn connection_value(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => format!("IN IP4 {ip}"),
        IpAddr::V6(ip) => format!("IN IP6 {ip}"),
    }
}

impl SessionDescription {
    /// Parses a body; lines may end in CRLF or LF.
    pub fn parse(body: &[u8]) -> Result<Self, MediaError> {
        let text = std::str::from_utf8(body).map_err(|_| malformed("SDP is not UTF-8"))?;
        let mut lines = text
            .split('\n')
            .map(|line| line.strip_suffix('\r').unwrap_or(line))
            .filter(|line| !line.is_empty());
        let first = match lines.next() {
            Some(line) if line.starts_with("v=") => line,
            _ => return Err(malformed("SDP does not start with v=")),
        };
        let mut sdp = SessionDescription {
            version: first.to_owned(),
            session: Vec::new(),
            origin: None,
            connection: None,
            media: Vec::new(),
        };
        for line in lines {
            if let Some(value) = line.strip_prefix("m=") {
                let mut fields = value.split_ascii_whitespace();
                let (Some(media), Some(port), Some(_proto)) =
                    (fields.next(), fields.next(), fields.next())
                else {
                    return Err(malformed(format!("bad media line: {line}")));
                };
                let port = parse_port(port.split('/').next().unwrap_or_default(), line)?;
                sdp.media.push(Media {
                    lines: vec![line.to_owned()],
                    port,
                    media: media.to_owned(),
                    connection: None,
                    rtcp: None,
                });
                continue;
            }
            match sdp.media.last_mut() {
                None => {
                    if let Some(value) = line.strip_prefix("c=") {
                        sdp.connection = Some(parse_connection(value)?);
                    }
                    sdp.session.push(line.to_owned());
                }
                Some(media) => {
                    if let Some(value) = line.strip_prefix("c=") {
                        media.connection = Some(parse_connection(value)?);
                    } else if let Some(value) = line.strip_prefix("a=rtcp:") {
                        media.rtcp = Some(parse_rtcp(value, line)?);
                    }
                    media.lines.push(line.to_owned());
                }
            }
        }
        if sdp.media.is_empty() {
            return Err(malformed("SDP has no m= line"));
        }
        for media in &sdp.media {
            if media.port != 0 && media.connection.or(sdp.connection).is_none() {
                return Err(malformed(format!(
                    "no connection address for m={} {}",
                    media.media, media.port
                )));
            }
        }
        Ok(sdp)
    }

    /// The streams, one per `m=` line, in order.
    pub fn streams(&self) -> Vec<StreamInfo> {
        self.media
            .iter()
            .enumerate()
            .map(|(index, media)| {
                let ip = media
                    .connection
                    .or(self.connection)
                    .filter(|ip| !ip.is_unspecified());
                let (rtp, rtcp) = match ip {
                    Some(ip) if media.port != 0 => {
                        // RTCP on the next port (RFC 3550), which an RTP port of 65535 lacks;
                        // an `a=rtcp:` port of 0 is no address either.
                        let rtcp = match media.rtcp {
                            Some((port, address)) => {
                                Some(SocketAddr::new(address.unwrap_or(ip), port))
                            }
                            None => media
                                .port
                                .checked_add(1)
                                .map(|port| SocketAddr::new(ip, port)),
                        }
                        .filter(|rtcp| rtcp.port() != 0);
                        (Some(SocketAddr::new(ip, media.port)), rtcp)
                    }
                    _ => (None, None),
                };
                StreamInfo {
                    index,
                    media: media.media.clone(),
                    port: media.port,
                    rtp,
                    rtcp,
                }
            })
            .collect()
    }

    /// Makes the description fit for the other leg (see the module documentation): points it
    /// at the relay — every `c=` at `public_ip`, each enabled stream's `m=` port and `a=rtcp:`
    /// at `relay[i]` (a disabled stream, port 0, or one without relay ports keeps its `m=`
    /// port) — writes `origin` as its `o=` and `s=-`, and drops what names the sender.
    /// Rewriting twice gives the same description as once.
    pub fn rewrite(&mut self, public_ip: IpAddr, relay: &[Option<RelayPorts>], origin: Origin) {
        let connection = connection_value(public_ip);
        let rewrite_c = |line: &mut String| {
            let keep = line
                .strip_prefix("c=")
                .and_then(|v| parse_connection(v).ok())
                .is_some_and(|ip| ip.is_unspecified());
            if !keep {
                *line = format!("c={connection}");
            }
        };
        "v=0".clone_into(&mut self.version);
        self.origin = Some((origin, public_ip));
        self.session.retain(|line| !reveals_origin(line));
        for line in self.session.iter_mut().filter(|l| l.starts_with("c=")) {
            rewrite_c(line);
        }
        for (index, media) in self.media.iter_mut().enumerate() {
            let ports = relay
                .get(index)
                .copied()
                .flatten()
                .filter(|_| media.port != 0);
            // The `m=` line itself never reveals (its type is `m`), so it stays first.
            media.lines.retain(|line| !reveals_origin(line));
            if ports.is_none() {
                // Nothing is relayed there: an `a=rtcp:` could only name the peer's address.
                media.lines.retain(|line| !line.starts_with("a=rtcp:"));
                media.rtcp = None;
            }
            for line in media.lines.iter_mut().filter(|l| l.starts_with("c=")) {
                rewrite_c(line);
            }
            media.connection = media.connection.map(|_| public_ip);
            let Some(ports) = ports else {
                continue;
            };
            if let Some(line) = media.lines.first_mut() {
                // m=<media> <port>[/<count>] <proto> <fmt>...: one relay pair, so no /count.
                // Split as `parse` does (any run of blanks), so that odd spacing cannot shift
                // the port into another field; written back with single spaces.
                let mut fields = line
                    .strip_prefix("m=")
                    .unwrap_or_default()
                    .split_ascii_whitespace();
                let kind = fields.next().unwrap_or_default();
                let _port = fields.next();
                let rest = fields.collect::<Vec<_>>().join(" ");
                let new = format!("m={kind} {} {rest}", ports.rtp);
                *line = new;
                media.port = ports.rtp;
            }
            for line in media.lines.iter_mut() {
                let Some(value) = line.strip_prefix("a=rtcp:") else {
                    continue;
                };
                let has_address = value.split_ascii_whitespace().nth(1).is_some();
                *line = if has_address {
                    format!("a=rtcp:{} {connection}", ports.rtcp)
                } else {
                    format!("a=rtcp:{}", ports.rtcp)
                };
            }
            media.rtcp = media.rtcp.map(|(_, a)| (ports.rtcp, a.map(|_| public_ip)));
        }
        self.connection = self.connection.map(|_| public_ip);
    }

    /// Replaces the `o=` written by [`rewrite`](Self::rewrite) (a new version); does nothing
    /// to a description not rewritten.
    pub fn set_origin(&mut self, origin: Origin) {
        if let Some((current, _)) = &mut self.origin {
            *current = origin;
        }
    }

    /// The description as a body, CRLF line endings.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = String::with_capacity(512);
        let mut push = |line: &str| {
            out.push_str(line);
            out.push_str("\r\n");
        };
        push(&self.version);
        if let Some((origin, ip)) = self.origin {
            push(&format!(
                "o=- {} {} {}",
                origin.session_id,
                origin.version,
                connection_value(ip)
            ));
            push("s=-");
        }
        let lines = self
            .session
            .iter()
            .chain(self.media.iter().flat_map(|m| m.lines.iter()));
        for line in lines {
            push(line);
        }
        Bytes::from(out)
    }
}

/// Whether an SDP body puts the call on hold (RFC 3264 §8.4, and RFC 2543's `c=0.0.0.0`):
/// no active stream (port not 0) is `sendrecv`. A stream's direction is its own `a=` line,
/// else the session's, else `sendrecv`; a stream whose connection address is 0.0.0.0 sends
/// nothing either way. A body that is not SDP text holds nothing.
pub fn is_hold(body: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(body) else {
        return false;
    };
    let direction = |line: &str| match line.trim_end() {
        "a=sendonly" | "a=recvonly" | "a=inactive" => Some(false),
        "a=sendrecv" => Some(true),
        _ => None,
    };
    let null_connection = |line: &str| {
        let line = line.trim_end();
        line == "c=IN IP4 0.0.0.0" || line == "c=IN IP6 ::"
    };
    let mut session_two_way = true;
    let mut session_null = false;
    // Per stream: (active, two-way, null connection), directions defaulting to the session's.
    let mut streams: Vec<(bool, Option<bool>, Option<bool>)> = Vec::new();
    for line in text.lines().take(1024) {
        if let Some(rest) = line.strip_prefix("m=") {
            let active = rest.split_whitespace().nth(1).is_some_and(|p| p != "0");
            streams.push((active, None, None));
            continue;
        }
        match streams.last_mut() {
            None => {
                if let Some(two_way) = direction(line) {
                    session_two_way = two_way;
                }
                if line.starts_with("c=") {
                    session_null = null_connection(line);
                }
            }
            Some(stream) => {
                if let Some(two_way) = direction(line) {
                    stream.1 = Some(two_way);
                }
                if line.starts_with("c=") {
                    stream.2 = Some(null_connection(line));
                }
            }
        }
    }
    let active: Vec<_> = streams.iter().filter(|s| s.0).collect();
    !active.is_empty()
        && active.iter().all(|(_, two_way, null)| {
            !two_way.unwrap_or(session_two_way) || null.unwrap_or(session_null)
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn hold_is_no_active_stream_sending_both_ways() {
        let held = [
            "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\na=sendonly\r\n",
            "v=0\r\nc=IN IP4 10.0.0.1\r\na=inactive\r\nm=audio 4000 RTP/AVP 0\r\n",
            "v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 4000 RTP/AVP 0\r\n",
            "v=0\nc=IN IP4 10.0.0.1\nm=audio 4000 RTP/AVP 0\na=recvonly\nm=video 0 RTP/AVP 31\n",
        ];
        for body in held {
            assert!(super::is_hold(body.as_bytes()), "{body}");
        }
        let talking = [
            "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 0\r\n",
            "v=0\r\nc=IN IP4 10.0.0.1\r\na=inactive\r\nm=audio 4000 RTP/AVP 0\r\na=sendrecv\r\n",
            "v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 4000 RTP/AVP 0\r\nc=IN IP4 10.0.0.1\r\n",
            "v=0\r\nm=audio 0 RTP/AVP 0\r\na=inactive\r\n",
            "",
        ];
        for body in talking {
            assert!(!super::is_hold(body.as_bytes()), "{body}");
        }
        assert!(!super::is_hold(&[0xff, 0xfe]));
    }

    use super::*;

    const OFFER: &str = "v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\n\
s=-\r\n\
c=IN IP4 192.0.2.10\r\n\
t=0 0\r\n\
m=audio 49170 RTP/AVP 0 8 101\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=sendrecv\r\n\
m=video 51372 RTP/AVP 99\r\n\
c=IN IP4 192.0.2.20\r\n\
a=rtcp:53020 IN IP4 192.0.2.21\r\n\
a=rtpmap:99 h263-1998/90000\r\n\
a=x-unknown:keep me\r\n";

    /// An offer from a WebRTC-ish phone that says everything about itself.
    const REVEALING: &str = "v=0\r\n\
o=alice-1106 3724394400 3724394400 IN IP4 10.11.12.13\r\n\
s=Call from 1106\r\n\
i=Alice Example's desk phone\r\n\
u=http://alice.example.com/about\r\n\
e=alice@example.com (Alice Example)\r\n\
p=+1 617 555 1106\r\n\
c=IN IP4 10.11.12.13\r\n\
t=0 0\r\n\
a=tool:PhoneOS 4.2.1\r\n\
a=ice-options:trickle ice2\r\n\
a=ice-lite\r\n\
a=fingerprint:sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB\r\n\
a=group:BUNDLE 0\r\n\
m=audio 49170 UDP/TLS/RTP/SAVPF 111 0 101\r\n\
i=alice's microphone\r\n\
c=IN IP4 10.11.12.13\r\n\
a=rtcp:49171 IN IP4 10.11.12.13\r\n\
a=ice-ufrag:F7gI\r\n\
a=ice-pwd:x9cml/YzichV2+XlhiMu8g\r\n\
a=ice-pacing:50\r\n\
a=candidate:1 1 UDP 2130706431 10.11.12.13 49170 typ host\r\n\
a=candidate:2 1 UDP 1694498815 198.51.100.77 61665 typ srflx raddr 10.11.12.13 rport 49170\r\n\
a=Candidate:3 1 TCP 1 172.16.99.1 9 typ host tcptype active\r\n\
a=remote-candidates:1 10.99.88.77 3478\r\n\
a=end-of-candidates\r\n\
a=ice-mismatch\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=rtpmap:111 opus/48000/2\r\n\
a=fmtp:111 minptime=10;useinbandfec=1\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n\
a=ptime:20\r\n\
a=sendonly\r\n\
a=x-vendor-thing:42\r\n";

    /// What of [`REVEALING`] names its sender or the sender's network.
    const SECRETS: [&str; 15] = [
        "alice",
        "1106",
        "3724394400",
        "10.11.12.13",
        "Call from",
        "Example",
        "example.com",
        "617 555",
        "PhoneOS",
        "F7gI",
        "x9cml",
        "198.51.100.77",
        "172.16.99.1",
        "10.99.88.77",
        "trickle",
    ];

    /// What of [`REVEALING`] is about the media and passes byte for byte, in this order.
    const KEPT: [&str; 16] = [
        "t=0 0",
        "a=fingerprint:sha-256 4A:AD:B9:B1:3F:82:18:3B:54:02:12:DF:3E:5D:49:6B:19:E5:7C:AB",
        "a=group:BUNDLE 0",
        "m=audio 20000 UDP/TLS/RTP/SAVPF 111 0 101",
        "a=rtcp:20001 IN IP4 203.0.113.5",
        "a=setup:actpass",
        "a=mid:0",
        "a=rtpmap:111 opus/48000/2",
        "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz",
        "a=ptime:20",
        "a=sendonly",
        "a=x-vendor-thing:42",
    ];

    const ORIGIN: Origin = Origin {
        session_id: 4242,
        version: 7,
    };

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn sa(text: &str) -> Option<SocketAddr> {
        Some(text.parse().unwrap())
    }

    fn relay(ports: &[(u16, u16)]) -> Vec<Option<RelayPorts>> {
        ports
            .iter()
            .map(|&(rtp, rtcp)| Some(RelayPorts { rtp, rtcp }))
            .collect()
    }

    /// Parses `body`, rewrites it for `public_ip` with [`ORIGIN`], writes it.
    fn forwarded(body: &str, public_ip: &str, ports: &[(u16, u16)]) -> String {
        let mut sdp = SessionDescription::parse(body.as_bytes()).unwrap();
        sdp.rewrite(ip(public_ip), &relay(ports), ORIGIN);
        String::from_utf8(sdp.to_bytes().to_vec()).unwrap()
    }

    #[test]
    fn streams_take_media_level_connection_and_rtcp_attribute() {
        let sdp = SessionDescription::parse(OFFER.as_bytes()).unwrap();
        let streams = sdp.streams();
        assert_eq!(streams.len(), 2);
        assert_eq!(streams[0].media, "audio");
        assert_eq!(streams[0].rtp, sa("192.0.2.10:49170"));
        assert_eq!(streams[0].rtcp, sa("192.0.2.10:49171"));
        assert_eq!(streams[1].rtp, sa("192.0.2.20:51372"));
        assert_eq!(streams[1].rtcp, sa("192.0.2.21:53020"));
    }

    #[test]
    fn rewrite_points_everything_at_the_relay_and_keeps_the_rest() {
        let out = forwarded(OFFER, "203.0.113.5", &[(20000, 20001), (20002, 20003)]);
        let expected = OFFER
            .replace(
                "o=alice 2890844526 2890844526 IN IP4 192.0.2.10",
                "o=- 4242 7 IN IP4 203.0.113.5",
            )
            .replace("c=IN IP4 192.0.2.10", "c=IN IP4 203.0.113.5")
            .replace("c=IN IP4 192.0.2.20", "c=IN IP4 203.0.113.5")
            .replace("m=audio 49170", "m=audio 20000")
            .replace("m=video 51372", "m=video 20002")
            .replace(
                "a=rtcp:53020 IN IP4 192.0.2.21",
                "a=rtcp:20003 IN IP4 203.0.113.5",
            );
        assert_eq!(out, expected);
        // The rewritten description parses back to the relay's addresses.
        let back = SessionDescription::parse(out.as_bytes()).unwrap().streams();
        assert_eq!(back[1].rtp, sa("203.0.113.5:20002"));
        assert_eq!(back[1].rtcp, sa("203.0.113.5:20003"));
    }

    #[test]
    fn nothing_of_the_sender_survives_and_the_media_attributes_pass_byte_for_byte() {
        let out = forwarded(REVEALING, "203.0.113.5", &[(20000, 20001)]);
        for secret in SECRETS {
            assert!(!out.contains(secret), "{secret:?} forwarded in:\n{out}");
        }
        for lower in ["i=", "u=", "e=", "p=", "a=ice", "candidate", "a=tool"] {
            assert!(
                !out.to_ascii_lowercase().contains(&format!("\n{lower}")),
                "{lower} forwarded in:\n{out}"
            );
        }
        let lines: Vec<&str> = out.split("\r\n").collect();
        assert_eq!(
            lines[..4],
            [
                "v=0",
                "o=- 4242 7 IN IP4 203.0.113.5",
                "s=-",
                "c=IN IP4 203.0.113.5"
            ]
        );
        // Everything else is there, unchanged and in its order (the media-level `c=` between).
        let rest: Vec<&str> = lines[4..]
            .iter()
            .copied()
            .filter(|l| !l.is_empty() && *l != "c=IN IP4 203.0.113.5")
            .collect();
        assert_eq!(rest, KEPT);
        assert!(out.ends_with("a=x-vendor-thing:42\r\n"));
    }

    #[test]
    fn ipv6_public_address_names_ip6_in_the_origin_too() {
        let out = forwarded(REVEALING, "2001:db8::99", &[(20000, 20001)]);
        assert!(
            out.starts_with("v=0\r\no=- 4242 7 IN IP6 2001:db8::99\r\ns=-\r\n"),
            "{out}"
        );
        assert!(out.contains("\r\nc=IN IP6 2001:db8::99\r\n"), "{out}");
        assert!(
            out.contains("\r\na=rtcp:20001 IN IP6 2001:db8::99\r\n"),
            "{out}"
        );
        assert!(!out.contains("10.11.12.13"), "{out}");
    }

    #[test]
    fn missing_origin_and_session_name_are_supplied_and_a_bad_version_is_not_copied() {
        let body = "v=secret-7\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\n";
        let out = forwarded(body, "192.0.2.1", &[(20000, 20001)]);
        assert_eq!(
            out,
            "v=0\r\no=- 4242 7 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
m=audio 20000 RTP/AVP 0\r\n"
        );
    }

    #[test]
    fn origin_lines_out_of_place_or_repeated_are_all_dropped() {
        // o=/s= where they do not belong (after t=, in a media section) and twice.
        let body = "v=0\r\no=u1 1 1 IN IP4 10.0.0.1\r\ns=first\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
o=u2 2 2 IN IP4 10.0.0.2\r\ns=second\r\nm=audio 5004 RTP/AVP 0\r\ns=third\r\no=u3 3 3 IN IP4 10.0.0.3\r\n\
p=555\r\ne=x@y\r\nu=http://z\r\n";
        let out = forwarded(body, "192.0.2.1", &[(20000, 20001)]);
        for secret in [
            "u1", "u2", "u3", "first", "second", "third", "10.0.0", "555", "x@y", "http",
        ] {
            assert!(!out.contains(secret), "{secret:?} forwarded in:\n{out}");
        }
        assert_eq!(out.matches("\r\no=").count(), 1, "{out}");
        assert_eq!(out.matches("\r\ns=").count(), 1, "{out}");
    }

    #[test]
    fn rewriting_twice_is_rewriting_once_and_set_origin_moves_only_the_origin() {
        let mut sdp = SessionDescription::parse(REVEALING.as_bytes()).unwrap();
        sdp.rewrite(ip("203.0.113.5"), &relay(&[(20000, 20001)]), ORIGIN);
        let once = sdp.to_bytes();
        sdp.rewrite(ip("203.0.113.5"), &relay(&[(20000, 20001)]), ORIGIN);
        assert_eq!(sdp.to_bytes(), once);
        sdp.set_origin(Origin {
            version: 8,
            ..ORIGIN
        });
        let moved = String::from_utf8(sdp.to_bytes().to_vec()).unwrap();
        let once = String::from_utf8(once.to_vec()).unwrap();
        assert_eq!(
            moved,
            once.replace("o=- 4242 7 IN", "o=- 4242 8 IN"),
            "only the version changes"
        );
        // A description never rewritten has no origin of callbridge's to move.
        let mut plain = SessionDescription::parse(OFFER.as_bytes()).unwrap();
        plain.set_origin(ORIGIN);
        assert_eq!(&plain.to_bytes()[..], OFFER.as_bytes());
    }

    /// A small deterministic generator (xorshift64*, high bits), so that the property test
    /// below needs no dependency and every failure reproduces.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32
        }

        fn pick<'a>(&mut self, choices: &[&'a str]) -> &'a str {
            choices[(self.next() % choices.len() as u64) as usize]
        }
    }

    /// Any line of a revealing kind, at any level, in any case of the attribute name and with
    /// any neighbours, is not forwarded: the `SECRET<n>` token it carries never appears.
    #[test]
    fn property_no_revealing_line_is_ever_forwarded() {
        let revealing = [
            "o=SECRET 1 1 IN IP4 10.0.0.1",
            "o=- SECRET SECRET IN IP4 SECRET",
            "o=SECRET",
            "s=SECRET",
            "i=SECRET",
            "u=SECRET",
            "e=SECRET",
            "p=SECRET",
            "a=candidate:SECRET",
            "a=CANDIDATE:1 1 udp 1 SECRET 9 typ host",
            "a=remote-candidates:SECRET",
            "a=ice-lite SECRET",
            "a=ice-mismatch:SECRET",
            "a=ice-ufrag:SECRET",
            "a=Ice-Pwd:SECRET",
            "a=ice-pacing:SECRET",
            "a=ice-options:SECRET",
            "a=end-of-candidates:SECRET",
            "a= candidate :SECRET",
            "a=ice-lite SECRET",
            "a=candidate\tSECRET",
            "a=tool:SECRET",
            "i=",
            "s=",
        ];
        let neutral = [
            "a=sendrecv",
            "a=rtpmap:0 PCMU/8000",
            "a=fmtp:101 0-15",
            "b=AS:64",
            "a=x-thing:value",
            "a=setup:active",
            "c=IN IP4 10.0.0.9",
            "c=IN IP4 0.0.0.0",
        ];
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for case in 0..2000 {
            let mut body = String::from("v=0\r\n");
            let mut secrets = 0;
            let mut add = |rng: &mut Rng, body: &mut String| {
                if rng.next().is_multiple_of(2) {
                    let token = format!("SECRET{case}x{secrets}");
                    body.push_str(&rng.pick(&revealing).replace("SECRET", &token));
                    secrets += 1;
                } else {
                    body.push_str(rng.pick(&neutral));
                }
                body.push_str(if rng.next().is_multiple_of(3) {
                    "\n"
                } else {
                    "\r\n"
                });
            };
            for _ in 0..rng.next() % 6 {
                add(&mut rng, &mut body);
            }
            body.push_str("c=IN IP4 10.0.0.1\r\nt=0 0\r\n");
            for stream in 0..1 + rng.next() % 3 {
                let port = if rng.next().is_multiple_of(4) {
                    0
                } else {
                    4000 + 2 * stream
                };
                body.push_str(&format!("m=audio {port} RTP/AVP 0\r\n"));
                for _ in 0..rng.next() % 8 {
                    add(&mut rng, &mut body);
                }
            }
            let mut sdp = SessionDescription::parse(body.as_bytes()).unwrap();
            sdp.rewrite(ip("192.0.2.1"), &relay(&[(20000, 20001); 3]), ORIGIN);
            let out = String::from_utf8(sdp.to_bytes().to_vec()).unwrap();
            assert!(
                !out.contains("SECRET"),
                "case {case}:\n{body}\nbecame\n{out}"
            );
            assert!(
                !out.contains("10.0.0.1"),
                "case {case}:\n{body}\nbecame\n{out}"
            );
            for line in out.split("\r\n").filter(|l| !l.is_empty()) {
                let kept = line.starts_with("v=0")
                    || line.starts_with("o=- 4242 7 IN IP4 192.0.2.1")
                    || line == "s=-"
                    || line.starts_with("m=")
                    || line.starts_with("c=IN IP4 ")
                    || line == "t=0 0"
                    || neutral.contains(&line);
                assert!(kept, "case {case}: unexpected line {line:?} in\n{out}");
            }
        }
    }

    #[test]
    fn odd_spacing_in_the_m_line_cannot_keep_the_peers_port() {
        for m in ["m=audio  49170 RTP/AVP 0", "m=audio\t49170\tRTP/AVP\t0"] {
            let body =
                format!("v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\n{m}\n");
            let sdp = SessionDescription::parse(body.as_bytes()).unwrap();
            assert_eq!(sdp.streams()[0].rtp, sa("192.0.2.1:49170"));
            let out = forwarded(&body, "203.0.113.5", &[(20000, 20001)]);
            assert!(
                out.contains("\r\nm=audio 20000 RTP/AVP 0\r\n"),
                "{m:?} became {out:?}"
            );
            assert!(!out.contains("49170"), "{out:?}");
        }
    }

    #[test]
    fn rtp_port_65535_has_no_implied_rtcp_port_and_rtcp_port_0_is_none() {
        let body = "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\n\
m=audio 65535 RTP/AVP 0\nm=audio 4000 RTP/AVP 0\na=rtcp:0\n";
        let streams = SessionDescription::parse(body.as_bytes())
            .unwrap()
            .streams();
        assert_eq!(streams[0].rtp, sa("192.0.2.1:65535"));
        assert_eq!(streams[0].rtcp, None);
        assert_eq!(streams[1].rtcp, None);
    }

    #[test]
    fn ipv6_public_address_and_plain_rtcp_attribute() {
        let body = "v=0\no=- 1 7 IN IP6 ::1\ns=-\nc=IN IP6 2001:db8::2\nt=0 0\n\
m=audio 4000 RTP/AVP 0\na=rtcp:4005\na=inactive\n";
        let sdp = SessionDescription::parse(body.as_bytes()).unwrap();
        assert_eq!(sdp.streams()[0].rtp, sa("[2001:db8::2]:4000"));
        assert_eq!(sdp.streams()[0].rtcp, sa("[2001:db8::2]:4005"));
        let out = forwarded(body, "2001:db8::99", &[(30000, 30001)]);
        assert_eq!(
            out,
            "v=0\r\no=- 4242 7 IN IP6 2001:db8::99\r\ns=-\r\nc=IN IP6 2001:db8::99\r\nt=0 0\r\n\
m=audio 30000 RTP/AVP 0\r\na=rtcp:30001\r\na=inactive\r\n"
        );
    }

    #[test]
    fn disabled_stream_keeps_port_zero_and_loses_its_rtcp_address() {
        let body = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
m=audio 5004 RTP/AVP 0\r\nm=video 0 RTP/AVP 31\r\na=rtcp:5007 IN IP4 10.0.0.7\r\na=inactive\r\n";
        let sdp = SessionDescription::parse(body.as_bytes()).unwrap();
        let streams = sdp.streams();
        assert_eq!((streams[1].port, streams[1].rtp), (0, None));
        let out = forwarded(body, "10.9.9.9", &[(20000, 20001), (20002, 20003)]);
        assert!(out.contains("m=audio 20000 RTP/AVP 0\r\n"));
        assert!(
            out.ends_with("m=video 0 RTP/AVP 31\r\na=inactive\r\n"),
            "{out}"
        );
        assert!(!out.contains("10.0.0"), "{out}");
    }

    #[test]
    fn unspecified_connection_is_kept_and_has_no_peer_address() {
        let body = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n\
m=audio 5004 RTP/AVP 0\r\n";
        let sdp = SessionDescription::parse(body.as_bytes()).unwrap();
        assert_eq!(sdp.streams()[0].rtp, None);
        let out = forwarded(body, "10.9.9.9", &[(20000, 20001)]);
        assert!(out.contains("c=IN IP4 0.0.0.0\r\n"));
        assert!(out.contains("m=audio 20000 "));
        assert!(!out.contains("10.0.0.1"), "{out}");
    }

    #[test]
    fn malformed_bodies_are_rejected() {
        let cases = [
            "",
            "o=- 1 1 IN IP4 10.0.0.1\r\nv=0\r\nm=audio 1 RTP/AVP 0\r\n",
            "v=0\r\nc=IN IP4 10.0.0.1\r\n",
            "v=0\r\nc=IN IP4 nowhere\r\nm=audio 5004 RTP/AVP 0\r\n",
            "v=0\r\nc=IN IP4 2001:db8::1\r\nm=audio 5004 RTP/AVP 0\r\n",
            "v=0\r\nc=IN IP4\r\nm=audio 5004 RTP/AVP 0\r\n",
            "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 70000 RTP/AVP 0\r\n",
            "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio x RTP/AVP 0\r\n",
            "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 5004\r\n",
            "v=0\r\nm=audio 5004 RTP/AVP 0\r\n",
            "v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 5004 RTP/AVP 0\r\na=rtcp:abc\r\n",
        ];
        for case in cases {
            let result = SessionDescription::parse(case.as_bytes());
            assert!(
                matches!(result, Err(MediaError::Malformed(_))),
                "{case:?} gave {result:?}"
            );
        }
        assert!(SessionDescription::parse(b"v=0\r\n\xff").is_err());
    }

    #[test]
    fn multicast_ttl_suffix_and_port_count_are_understood() {
        let body =
            "v=0\r\ns=-\r\nc=IN IP4 224.2.1.1/127\r\nt=0 0\r\nm=video 49170/2 RTP/AVP 31\r\n";
        let sdp = SessionDescription::parse(body.as_bytes()).unwrap();
        assert_eq!(sdp.streams()[0].rtp, sa("224.2.1.1:49170"));
        let out = forwarded(body, "10.9.9.9", &[(20000, 20001)]);
        assert!(out.contains("c=IN IP4 10.9.9.9\r\nt=0 0\r\nm=video 20000 RTP/AVP 31\r\n"));
    }
}
