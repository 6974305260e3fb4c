//! Bytes → [`Message`].
//!
//! The header section is normalised before anything is interpreted: leading CRLF keep-alives
//! skipped, folded continuation lines joined, whitespace around `:` dropped, names resolved from
//! any case and compact form, multi-value headers split into one row per entry. The body is cut
//! by `Content-Length` and kept as bytes.

use bytes::Bytes;

use super::header::{split_top_level_commas, HeaderName, Headers};
use super::params::is_token_byte;
use super::uri::truncate;
use super::{copy_response_headers, Message, Method, ParseError, Request, Response, Uri};

/// Limits applied to every message read from the wire.
///
/// It exists so that a peer cannot make the parser hold or scan unbounded input; the transport
/// takes them from its configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseLimits {
    /// Largest accepted message, header section and body together (default 64 KiB).
    pub max_message_size: usize,
    /// Most header rows, after multi-value headers are split (default 256).
    pub max_headers: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        ParseLimits {
            max_message_size: 64 * 1024,
            max_headers: 256,
        }
    }
}

/// Finds the blank line that ends the header section: returns `(header length, body start)`.
/// Accepts CRLFCRLF and, leniently, bare LFLF.
pub fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some((i + 1, i + 2));
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some((i + 1, i + 3));
            }
        }
        i += 1;
    }
    None
}

/// Bytes at the front that are CR or LF (keep-alives, RFC 5626 §3.5.1, or stray line ends).
pub(crate) fn leading_line_ends(buf: &[u8]) -> usize {
    buf.iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count()
}

/// The header section split into its start line and unfolded `(name, value)` rows.
struct RawHead<'a> {
    start_line: &'a str,
    rows: Vec<(&'a str, String)>,
}

fn split_head<'a>(head: &'a str, limits: &ParseLimits) -> Result<RawHead<'a>, ParseError> {
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let start_line = lines.next().unwrap_or_default();
    let mut rows: Vec<(&str, String)> = Vec::with_capacity(16);
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            // Folded continuation (RFC 3261 §7.3.1): joins the previous row with one space.
            let (_, value) = rows.last_mut().ok_or_else(|| {
                ParseError::InvalidHeader("continuation line before any header".into())
            })?;
            let piece = line.trim();
            if !piece.is_empty() {
                if !value.is_empty() {
                    value.push(' ');
                }
                value.push_str(piece);
            }
            continue;
        }
        let colon = line.find(':').ok_or_else(|| {
            ParseError::InvalidHeader(format!("no colon in {:?}", truncate(line)))
        })?;
        let name = line[..colon].trim_end_matches([' ', '\t']);
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(ParseError::InvalidHeader(format!(
                "bad header name {:?}",
                truncate(name)
            )));
        }
        if rows.len() >= limits.max_headers {
            return Err(ParseError::TooManyHeaders(limits.max_headers));
        }
        rows.push((name, line[colon + 1..].trim().to_owned()));
    }
    Ok(RawHead { start_line, rows })
}

fn build_headers(rows: Vec<(&str, String)>, limits: &ParseLimits) -> Result<Headers, ParseError> {
    let mut headers = Headers::with_capacity(rows.len() + 2);
    for (name, value) in rows {
        let name = HeaderName::parse(name);
        if name.is_multi_value() && value.contains(',') {
            for entry in split_top_level_commas(&value) {
                headers.push(name.clone(), entry);
            }
        } else {
            headers.push(name, value);
        }
        if headers.len() > limits.max_headers {
            return Err(ParseError::TooManyHeaders(limits.max_headers));
        }
    }
    Ok(headers)
}

/// The declared body length; several rows must agree.
pub(crate) fn content_length(headers: &Headers) -> Result<Option<usize>, ParseError> {
    let mut found: Option<usize> = None;
    for value in headers.get_all(&HeaderName::ContentLength) {
        let value = value.trim();
        if value.is_empty() || value.len() > 9 || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseError::InvalidHeader(format!(
                "bad Content-Length {:?}",
                truncate(value)
            )));
        }
        let n: usize = value
            .parse()
            .map_err(|_| ParseError::InvalidHeader("bad Content-Length".into()))?;
        if found.is_some_and(|f| f != n) {
            return Err(ParseError::InvalidHeader(
                "conflicting Content-Length rows".into(),
            ));
        }
        found = Some(n);
    }
    Ok(found)
}

enum StartLine<'a> {
    Request(Method, &'a str),
    Response(u16, &'a str),
}

fn parse_start_line(line: &str) -> Result<StartLine<'_>, ParseError> {
    let bad = || ParseError::InvalidStartLine(truncate(line));
    if let Some(rest) = line.strip_prefix("SIP/2.0 ") {
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let status: u16 = code.parse().map_err(|_| bad())?;
        if !(100..=699).contains(&status) {
            return Err(bad());
        }
        return Ok(StartLine::Response(status, reason.trim()));
    }
    let mut parts = line.split(' ');
    let (method, uri, version) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(u), Some(v), None) => (m, u, v),
        _ => return Err(bad()),
    };
    if version != "SIP/2.0" || uri.is_empty() {
        return Err(bad());
    }
    Ok(StartLine::Request(Method::parse(method)?, uri))
}

/// Checks the headers every message needs to be routed and matched (RFC 3261 §8.1.1):
/// Via, From, To, Call-ID, CSeq, each parseable, and for requests a CSeq method that matches.
fn check_mandatory(headers: &Headers, method: Option<&Method>) -> Result<(), ParseError> {
    headers.top_via()?;
    headers.from()?;
    headers.to()?;
    match headers.call_id() {
        Some(id) if !id.is_empty() => {}
        _ => return Err(ParseError::MissingHeader("Call-ID")),
    }
    let cseq = headers.cseq()?;
    if let Some(method) = method {
        if &cseq.method != method {
            return Err(ParseError::CSeqMethodMismatch {
                method: method.to_string(),
                cseq: cseq.method.to_string(),
            });
        }
    }
    if let Some(mf) = headers.max_forwards() {
        mf?;
    }
    Ok(())
}

pub(crate) fn parse_message(buf: &[u8], limits: &ParseLimits) -> Result<Message, ParseError> {
    if buf.len() > limits.max_message_size {
        return Err(ParseError::TooLarge {
            size: buf.len(),
            max: limits.max_message_size,
        });
    }
    let buf = &buf[leading_line_ends(buf)..];
    let (head_len, body_start) = find_head_end(buf).ok_or(ParseError::Incomplete)?;
    let head = std::str::from_utf8(&buf[..head_len]).map_err(|_| ParseError::NotUtf8)?;
    let raw = split_head(head, limits)?;
    let start = parse_start_line(raw.start_line)?;
    let mut headers = build_headers(raw.rows, limits)?;

    let available = buf.len() - body_start;
    let body_len = match content_length(&headers)? {
        Some(declared) if declared > available => {
            return Err(ParseError::BodyTruncated {
                declared,
                available,
            })
        }
        Some(declared) => declared,
        // No Content-Length: on UDP the body runs to the end of the datagram (§18.3).
        None => available,
    };
    let body = Bytes::copy_from_slice(&buf[body_start..body_start + body_len]);
    // The writer recomputes Content-Length from the body; a stale row would only mislead.
    headers.remove_all(&HeaderName::ContentLength);

    match start {
        StartLine::Request(method, uri) => {
            check_mandatory(&headers, Some(&method))?;
            Ok(Message::Request(Request {
                method,
                uri: Uri::parse(uri)?,
                headers,
                body,
            }))
        }
        StartLine::Response(status, reason) => {
            check_mandatory(&headers, None)?;
            Ok(Message::Response(Response {
                status,
                reason: reason.to_owned(),
                headers,
                body,
            }))
        }
    }
}

/// Builds a `400 Bad Request` for bytes that failed to parse, when a response can be routed:
/// the bytes look like a request other than ACK and carry a parseable top Via.
/// Via, From, To, Call-ID and CSeq are copied as far as they can be read; the reason phrase says
/// what was wrong.
pub fn bad_request_for(buf: &[u8], error: &ParseError, limits: &ParseLimits) -> Option<Response> {
    if buf.len() > limits.max_message_size {
        return None;
    }
    let buf = &buf[leading_line_ends(buf)..];
    // A message with a truncated body still has a complete header section to answer from.
    let head_len = find_head_end(buf).map(|(h, _)| h).unwrap_or(buf.len());
    let head = std::str::from_utf8(&buf[..head_len]).ok()?;
    let first_line = head.lines().next()?;
    let method = first_line.split(' ').next()?;
    if method.starts_with("SIP/") || method == "ACK" || method.is_empty() {
        return None;
    }
    // Salvage rows one by one: a single bad row must not stop the others from being copied.
    let mut headers = Headers::new();
    for line in head.lines().skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = HeaderName::parse(name.trim());
        if name.is_multi_value() {
            for entry in split_top_level_commas(value) {
                headers.push(name.clone(), entry);
            }
        } else {
            headers.push(name, value.trim());
        }
        if headers.len() > limits.max_headers {
            break;
        }
    }
    headers.top_via().ok()?;
    let reason = format!("Bad Request ({error})")
        .chars()
        .filter(|c| !c.is_control())
        .take(120)
        .collect::<String>();
    let mut response = Response::new(400, reason);
    response.headers = copy_response_headers(&headers);
    Some(response)
}
