//! Just enough SDP (RFC 4566) to anchor media: find where each stream of a peer wants its media,
//! and rewrite the connection address and ports of what we forward to point at the relay.
//!
//! Every line is kept verbatim except the ones rewritten: `c=` (session and media level),
//! the port of each `m=` line, `a=rtcp:` and the version in `o=`. Codecs, direction attributes
//! and anything unknown pass untouched.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;

use super::MediaError;

/// Where the relay takes one stream's media: the RTP port to write in `m=` and the RTCP port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayPorts {
    pub rtp: u16,
    pub rtcp: u16,
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
    session: Vec<String>,
    connection: Option<IpAddr>,
    media: Vec<Media>,
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

fn connection_value(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => format!("IN IP4 {ip}"),
        IpAddr::V6(ip) => format!("IN IP6 {ip}"),
    }
}

/// Adds one to a decimal number of any length (`o=` versions may exceed 64 bits).
fn increment_decimal(number: &str) -> Option<String> {
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut digits = number.as_bytes().to_vec();
    for digit in digits.iter_mut().rev() {
        if *digit == b'9' {
            *digit = b'0';
        } else {
            *digit += 1;
            return String::from_utf8(digits).ok();
        }
    }
    digits.insert(0, b'1');
    String::from_utf8(digits).ok()
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
            session: vec![first.to_owned()],
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
                    "no connection address for {}",
                    media.lines[0]
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

    /// Points the description at the relay: every `c=` at `public_ip` (an unspecified address,
    /// old-style hold, is kept), each enabled stream's `m=` port and `a=rtcp:` at `relay[i]`
    /// (a disabled stream, port 0, or one without relay ports is left as it is). Bumps the `o=`
    /// version when anything changed; returns whether anything did.
    pub fn rewrite(&mut self, public_ip: IpAddr, relay: &[Option<RelayPorts>]) -> bool {
        let connection = connection_value(public_ip);
        let rewrite_c = |line: &mut String, changed: &mut bool| {
            let keep = line
                .strip_prefix("c=")
                .and_then(|v| parse_connection(v).ok())
                .is_some_and(|ip| ip.is_unspecified());
            if !keep {
                let new = format!("c={connection}");
                if *line != new {
                    *line = new;
                    *changed = true;
                }
            }
        };
        let mut changed = false;
        for line in self.session.iter_mut().filter(|l| l.starts_with("c=")) {
            rewrite_c(line, &mut changed);
        }
        for (index, media) in self.media.iter_mut().enumerate() {
            let ports = relay.get(index).copied().flatten();
            for line in media.lines.iter_mut().skip(1) {
                if line.starts_with("c=") {
                    rewrite_c(line, &mut changed);
                }
            }
            let Some(ports) = ports.filter(|_| media.port != 0) else {
                continue;
            };
            if media.port != ports.rtp {
                // m=<media> <port>[/<count>] <proto> <fmt>...: one relay pair, so no /count.
                // Split as `parse` does (any run of blanks), so that odd spacing cannot shift
                // the port into another field; written back with single spaces.
                let line = &media.lines[0];
                let mut fields = line[2..].split_ascii_whitespace();
                let kind = fields.next().unwrap_or_default();
                let _port = fields.next();
                let rest = fields.collect::<Vec<_>>().join(" ");
                media.lines[0] = format!("m={kind} {} {rest}", ports.rtp);
                media.port = ports.rtp;
                changed = true;
            }
            for line in media.lines.iter_mut().skip(1) {
                let Some(value) = line.strip_prefix("a=rtcp:") else {
                    continue;
                };
                let has_address = value.split_ascii_whitespace().nth(1).is_some();
                let new = if has_address {
                    format!("a=rtcp:{} {connection}", ports.rtcp)
                } else {
                    format!("a=rtcp:{}", ports.rtcp)
                };
                if *line != new {
                    *line = new;
                    changed = true;
                }
            }
            media.connection = media.connection.map(|_| public_ip);
            media.rtcp = media.rtcp.map(|(_, a)| (ports.rtcp, a.map(|_| public_ip)));
        }
        if changed {
            self.connection = self.connection.map(|_| public_ip);
            self.bump_version();
        }
        changed
    }

    fn bump_version(&mut self) {
        let Some(line) = self.session.iter_mut().find(|l| l.starts_with("o=")) else {
            return;
        };
        let fields: Vec<&str> = line[2..].split(' ').collect();
        if fields.len() < 3 {
            return;
        }
        let Some(version) = increment_decimal(fields[2]) else {
            return;
        };
        let mut new = fields.clone();
        new[2] = &version;
        *line = format!("o={}", new.join(" "));
    }

    /// The description as a body, CRLF line endings.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = String::with_capacity(512);
        let lines = self
            .session
            .iter()
            .chain(self.media.iter().flat_map(|m| m.lines.iter()));
        for line in lines {
            out.push_str(line);
            out.push_str("\r\n");
        }
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
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
        let mut sdp = SessionDescription::parse(OFFER.as_bytes()).unwrap();
        assert!(sdp.rewrite(ip("203.0.113.5"), &relay(&[(20000, 20001), (20002, 20003)])));
        let out = String::from_utf8(sdp.to_bytes().to_vec()).unwrap();
        let expected = OFFER
            .replace("2890844526 2890844526 IN", "2890844526 2890844527 IN")
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
    fn odd_spacing_in_the_m_line_cannot_keep_the_peers_port() {
        for m in ["m=audio  49170 RTP/AVP 0", "m=audio\t49170\tRTP/AVP\t0"] {
            let body =
                format!("v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\n{m}\n");
            let mut sdp = SessionDescription::parse(body.as_bytes()).unwrap();
            assert_eq!(sdp.streams()[0].rtp, sa("192.0.2.1:49170"));
            sdp.rewrite(ip("203.0.113.5"), &relay(&[(20000, 20001)]));
            let out = String::from_utf8(sdp.to_bytes().to_vec()).unwrap();
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
        let mut sdp = SessionDescription::parse(body.as_bytes()).unwrap();
        assert_eq!(sdp.streams()[0].rtp, sa("[2001:db8::2]:4000"));
        assert_eq!(sdp.streams()[0].rtcp, sa("[2001:db8::2]:4005"));
        sdp.rewrite(ip("2001:db8::99"), &relay(&[(30000, 30001)]));
        let out = String::from_utf8(sdp.to_bytes().to_vec()).unwrap();
        assert_eq!(
            out,
            "v=0\r\no=- 1 8 IN IP6 ::1\r\ns=-\r\nc=IN IP6 2001:db8::99\r\nt=0 0\r\n\
m=audio 30000 RTP/AVP 0\r\na=rtcp:30001\r\na=inactive\r\n"
        );
    }

    #[test]
    fn disabled_stream_keeps_port_zero() {
        let body = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
m=audio 5004 RTP/AVP 0\r\nm=video 0 RTP/AVP 31\r\n";
        let mut sdp = SessionDescription::parse(body.as_bytes()).unwrap();
        let streams = sdp.streams();
        assert_eq!((streams[1].port, streams[1].rtp), (0, None));
        sdp.rewrite(ip("10.9.9.9"), &relay(&[(20000, 20001), (20002, 20003)]));
        let out = String::from_utf8(sdp.to_bytes().to_vec()).unwrap();
        assert!(out.contains("m=audio 20000 RTP/AVP 0\r\n"));
        assert!(out.contains("m=video 0 RTP/AVP 31\r\n"));
    }

    #[test]
    fn unspecified_connection_is_kept_and_has_no_peer_address() {
        let body = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n\
m=audio 5004 RTP/AVP 0\r\n";
        let mut sdp = SessionDescription::parse(body.as_bytes()).unwrap();
        assert_eq!(sdp.streams()[0].rtp, None);
        sdp.rewrite(ip("10.9.9.9"), &relay(&[(20000, 20001)]));
        let out = String::from_utf8(sdp.to_bytes().to_vec()).unwrap();
        assert!(out.contains("c=IN IP4 0.0.0.0\r\n"));
        assert!(out.contains("m=audio 20000 "));
    }

    #[test]
    fn version_bumped_only_when_something_changed() {
        let body = "v=0\r\no=- 42 99999999999999999999 IN IP4 10.0.0.1\r\ns=-\r\n\
c=IN IP4 10.9.9.9\r\nt=0 0\r\nm=audio 20000 RTP/AVP 0\r\n";
        let mut sdp = SessionDescription::parse(body.as_bytes()).unwrap();
        assert!(!sdp.rewrite(ip("10.9.9.9"), &relay(&[(20000, 20001)])));
        assert_eq!(&sdp.to_bytes()[..], body.as_bytes());
        assert!(sdp.rewrite(ip("10.9.9.9"), &relay(&[(20004, 20005)])));
        let out = String::from_utf8(sdp.to_bytes().to_vec()).unwrap();
        assert!(out.contains("o=- 42 100000000000000000000 IN IP4 10.0.0.1\r\n"));
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
        let mut sdp = SessionDescription::parse(body.as_bytes()).unwrap();
        assert_eq!(sdp.streams()[0].rtp, sa("224.2.1.1:49170"));
        sdp.rewrite(ip("10.9.9.9"), &relay(&[(20000, 20001)]));
        let out = String::from_utf8(sdp.to_bytes().to_vec()).unwrap();
        assert!(out.contains("c=IN IP4 10.9.9.9\r\nt=0 0\r\nm=video 20000 RTP/AVP 31\r\n"));
    }
}
