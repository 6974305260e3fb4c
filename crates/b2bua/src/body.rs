//! Multipart bodies (RFC 2046 §5.1, RFC 5621): SIP-I trunks (ITU-T Q.1912.5) send INVITEs and
//! answers whose body is `multipart/mixed` with the SDP beside an encapsulated ISUP message.
//! callbridge relays media, not ISUP: the SDP part goes to the media session and the other leg
//! gets that SDP alone (`application/sdp`); the ISUP, which carries the caller's real number
//! among other things, never crosses.
//!
//! [`keep_sdp_only`] rewrites a message as it enters the engine, so that everything after it
//! sees a plain SDP body (or none) whatever the trunk sent.

use bytes::Bytes;
use sip_core::{HeaderName, Message};

/// Nested multiparts followed at most this deep (a multipart/alternative inside the mixed
/// one is the deepest real trunks go).
const MAX_DEPTH: u8 = 3;
/// Parts looked at per multipart at most: a body of ten thousand empty parts is hostile.
const MAX_PARTS: usize = 16;

/// If `message` has a multipart body, replaces it with its first `application/sdp` part
/// (Content-Type `application/sdp`), or with no body at all when it has none. Other messages
/// are left as they are. Returns whether the body was changed.
pub fn keep_sdp_only(message: &mut Message) -> bool {
    let (headers, body) = match message {
        Message::Request(r) => (&mut r.headers, &mut r.body),
        Message::Response(r) => (&mut r.headers, &mut r.body),
    };
    let Some(content_type) = headers.content_type() else {
        return false;
    };
    if !is_multipart(content_type) {
        return false;
    }
    match sdp_part(content_type, body, MAX_DEPTH) {
        // An SDP part with nothing in it is no offer: the message goes on without a body.
        Some(sdp) if !sdp.is_empty() => {
            *body = sdp;
            headers.set(HeaderName::ContentType, "application/sdp");
        }
        _ => {
            *body = Bytes::new();
            headers.remove_all(&HeaderName::ContentType);
        }
    }
    headers.remove_all(&HeaderName::parse("MIME-Version"));
    headers.remove_all(&HeaderName::parse("Content-Disposition"));
    true
}

fn is_multipart(content_type: &str) -> bool {
    media_type(content_type).starts_with("multipart/")
}

/// `type/subtype` of a Content-Type value, lower-cased, without parameters.
fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// The `boundary` parameter of a multipart Content-Type (quoted or not).
fn boundary(content_type: &str) -> Option<&str> {
    content_type.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        // RFC 2046 §5.1.1: 1 to 70 characters.
        (1..=70).contains(&value.len()).then_some(value)
    })
}

/// The first SDP part of a multipart body, looking into nested multiparts up to `depth`.
fn sdp_part(content_type: &str, body: &Bytes, depth: u8) -> Option<Bytes> {
    if depth == 0 {
        return None;
    }
    let delimiter = format!("--{}", boundary(content_type)?);
    for part in parts(body, delimiter.as_bytes()).take(MAX_PARTS) {
        let (part_type, content) = split_part(body, part)?;
        let kind = media_type(&part_type);
        if kind == "application/sdp" {
            return Some(content);
        }
        if kind.starts_with("multipart/") {
            if let Some(sdp) = sdp_part(&part_type, &content, depth - 1) {
                return Some(sdp);
            }
        }
    }
    None
}

/// The byte ranges of the parts of `body` between its `delimiter` lines (RFC 2046 §5.1.1:
/// the preamble before the first delimiter and the epilogue after the closing one are
/// ignored; the CRLF before each delimiter belongs to the delimiter).
fn parts<'a>(
    body: &'a [u8],
    delimiter: &'a [u8],
) -> impl Iterator<Item = std::ops::Range<usize>> + 'a {
    let mut starts = Vec::new();
    let mut at = 0;
    while let Some(found) = find(body.get(at..).unwrap_or_default(), delimiter) {
        let position = at + found;
        let line_start = position == 0 || body.get(position.saturating_sub(1)) == Some(&b'\n');
        at = position + delimiter.len();
        if line_start {
            starts.push(position);
            if body.get(at..at + 2) == Some(b"--") {
                break;
            }
        }
        if starts.len() > MAX_PARTS {
            break;
        }
    }
    let closed = starts.last().is_some_and(|&last| {
        body.get(last + delimiter.len()..last + delimiter.len() + 2) == Some(b"--")
    });
    let count = if closed {
        starts.len().saturating_sub(1)
    } else {
        // No closing delimiter: the last part runs to the end of the body.
        starts.len()
    };
    (0..count).filter_map(move |i| {
        let start = starts.get(i)? + delimiter.len();
        let end = match starts.get(i + 1) {
            Some(&next) => trim_line_end(body, next),
            None => body.len(),
        };
        // The rest of the delimiter line (transport padding) ends at its CRLF.
        let line_end = find(body.get(start..end)?, b"\n").map(|n| start + n + 1)?;
        (line_end <= end).then_some(line_end..end)
    })
}

/// `end` moved back over the CRLF (or LF) that precedes a delimiter.
fn trim_line_end(body: &[u8], end: usize) -> usize {
    let mut end = end;
    if end > 0 && body.get(end - 1) == Some(&b'\n') {
        end -= 1;
        if end > 0 && body.get(end - 1) == Some(&b'\r') {
            end -= 1;
        }
    }
    end
}

/// A part's Content-Type (`text/plain` when it has none, RFC 2046 §5.1) and its content.
/// `None` when the part has no blank line ending its headers.
fn split_part(body: &Bytes, range: std::ops::Range<usize>) -> Option<(String, Bytes)> {
    let part = body.get(range.clone())?;
    // A part that starts with its blank line has no headers.
    let (head_len, gap) = if part.starts_with(b"\r\n") {
        (0, 2)
    } else if part.starts_with(b"\n") {
        (0, 1)
    } else {
        match find(part, b"\r\n\r\n") {
            Some(n) => (n, 4),
            None => (find(part, b"\n\n")?, 2),
        }
    };
    let head = std::str::from_utf8(part.get(..head_len)?).ok()?;
    let content_type = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            let name = name.trim();
            (name.eq_ignore_ascii_case("Content-Type") || name.eq_ignore_ascii_case("c"))
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| "text/plain".to_owned());
    let start = range.start + head_len + gap;
    Some((content_type, body.slice(start.min(range.end)..range.end)))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sip_core::{Method, Request, Uri};

    const SDP: &str = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8\r\n";

    fn invite(content_type: &str, body: &str) -> Message {
        let mut request = Request::new(Method::Invite, Uri::sip(Some("2001"), "h", None));
        request.headers.push(HeaderName::ContentType, content_type);
        request
            .headers
            .push(HeaderName::parse("MIME-Version"), "1.0");
        request.body = Bytes::copy_from_slice(body.as_bytes());
        Message::Request(request)
    }

    fn body_of(message: &Message) -> (&str, Option<&str>) {
        let Message::Request(r) = message else {
            unreachable!()
        };
        (
            std::str::from_utf8(&r.body).unwrap(),
            r.headers.content_type(),
        )
    }

    /// A SIP-I INVITE body as Q.1912.5 trunks send it: SDP, then the binary ISUP IAM.
    fn sip_i(boundary: &str) -> String {
        format!(
            "preamble to ignore\r\n--{boundary}\r\nContent-Type: application/sdp\r\n\r\n{SDP}\r\n\
             --{boundary}\r\nContent-Type: application/ISUP; version=itu-t92+\r\n\
             Content-Disposition: signal; handling=optional\r\n\r\n\
             \u{1}\u{10}\u{60}\u{0}\u{a}\u{3}\u{2}1001\r\n--{boundary}--\r\nepilogue"
        )
    }

    /// Found by the carrier fuzz target: an SDP part whose headers run into the next boundary
    /// has an empty body, which must leave no `Content-Type: application/sdp` behind.
    #[test]
    fn an_empty_sdp_part_leaves_no_body_and_no_content_type() {
        let body = "--b\r\nContent-Type: application/sdp\r\n\r=x\r\n--b\r\n\
                    Content-Type: application/ISUP\r\n\r\n\u{1}2001\r\n--b--\r\n";
        let mut message = invite("multipart/mixed;boundary=b", body);
        assert!(keep_sdp_only(&mut message));
        let (reduced, content_type) = body_of(&message);
        assert!(
            reduced.is_empty() || content_type == Some("application/sdp"),
            "{reduced:?} {content_type:?}"
        );
        assert!(!reduced.is_empty() || content_type.is_none());
        let mut message = invite(
            "multipart/mixed;boundary=b",
            "--b\r\nContent-Type: application/sdp\r\n\r\n\r\n--b--\r\n",
        );
        assert!(keep_sdp_only(&mut message));
        assert_eq!(body_of(&message), ("", None));
    }

    #[test]
    fn sip_i_gives_its_sdp_and_nothing_else() {
        let mut message = invite(
            "multipart/mixed; boundary=unique-boundary-1",
            &sip_i("unique-boundary-1"),
        );
        assert!(keep_sdp_only(&mut message));
        assert_eq!(body_of(&message), (SDP, Some("application/sdp")));
        let Message::Request(r) = &message else {
            unreachable!()
        };
        assert!(!r.headers.contains(&HeaderName::parse("MIME-Version")));
        // Quoted boundary, ISUP first, LF line ends.
        let lf = format!(
            "--b\nContent-Type: application/isup\n\n\u{1}1001\n--b\nContent-Type: Application/SDP\n\n{SDP}\n--b--\n"
        );
        let mut message = invite("Multipart/Mixed;boundary=\"b\"", &lf);
        assert!(keep_sdp_only(&mut message));
        assert_eq!(body_of(&message).0, SDP);
    }

    #[test]
    fn nested_multipart_and_missing_sdp() {
        let inner = format!("--in\r\nContent-Type: application/sdp\r\n\r\n{SDP}\r\n--in--");
        let outer = format!(
            "--out\r\nContent-Type: application/isup\r\n\r\nxx\r\n--out\r\nContent-Type: multipart/alternative; boundary=in\r\n\r\n{inner}\r\n--out--\r\n"
        );
        let mut message = invite("multipart/mixed; boundary=out", &outer);
        keep_sdp_only(&mut message);
        assert_eq!(body_of(&message).0, SDP);
        // ISUP only: no body at all crosses.
        let isup = "--b\r\nContent-Type: application/isup\r\n\r\n\u{1}1001\r\n--b--\r\n";
        let mut message = invite("multipart/mixed; boundary=b", isup);
        assert!(keep_sdp_only(&mut message));
        assert_eq!(body_of(&message), ("", None));
    }

    #[test]
    fn plain_bodies_are_left_alone() {
        let mut message = invite("application/sdp", SDP);
        assert!(!keep_sdp_only(&mut message));
        assert_eq!(body_of(&message).0, SDP);
    }

    #[test]
    fn hostile_multiparts_never_panic_and_give_no_sdp() {
        let cases = [
            ("multipart/mixed", "--b\r\n\r\nx"),
            ("multipart/mixed; boundary=", "--\r\n"),
            ("multipart/mixed; boundary=\"", "--\"\r\n"),
            ("multipart/mixed; boundary=b", ""),
            ("multipart/mixed; boundary=b", "--b"),
            ("multipart/mixed; boundary=b", "--b--"),
            (
                "multipart/mixed; boundary=b",
                "--b\r\nContent-Type: application/sdp",
            ),
            (
                "multipart/mixed; boundary=b",
                "--b\r\nContent-Type: application/sdp\r\n",
            ),
            ("multipart/mixed; boundary=b", "--b\n\n--b\n\n--b--"),
            (
                "multipart/mixed; boundary=b",
                "x--b\r\nContent-Type: application/sdp\r\n\r\nv=0",
            ),
            (
                "multipart/mixed; boundary=b",
                "--b\r\n\u{ff}\u{fe}: y\r\n\r\n",
            ),
        ];
        for (content_type, body) in cases {
            let mut message = invite(content_type, body);
            keep_sdp_only(&mut message);
            assert_eq!(body_of(&message).0, "", "{content_type:?} {body:?}");
        }
        // A part with an SDP type but nothing after its head is an empty SDP: passed on as
        // such (the media session refuses it), never a panic.
        let mut deep = String::new();
        for i in 0..50 {
            deep.push_str(&format!(
                "--b{i}\r\nContent-Type: multipart/mixed; boundary=b{}\r\n\r\n",
                i + 1
            ));
        }
        let mut message = invite("multipart/mixed; boundary=b0", &deep);
        keep_sdp_only(&mut message);
        let many = "--b\r\n\r\n\r\n".repeat(10_000);
        let mut message = invite("multipart/mixed; boundary=b", &many);
        keep_sdp_only(&mut message);
        assert_eq!(body_of(&message).0, "");
    }

    #[test]
    fn a_part_without_a_closing_delimiter_runs_to_the_end() {
        let open = format!("--b\r\nContent-Type: application/sdp\r\n\r\n{SDP}");
        let mut message = invite("multipart/mixed; boundary=b", &open);
        keep_sdp_only(&mut message);
        assert_eq!(body_of(&message).0, SDP);
    }
}
