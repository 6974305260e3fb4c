//! Cuts a TCP byte stream into SIP messages and keep-alives (sans-IO).
//!
//! On a stream there are no datagram boundaries: a message ends where its header section
//! (up to the blank line) plus `Content-Length` body bytes end, so `Content-Length` is mandatory
//! (RFC 3261 §18.3, §20.14). Between messages, RFC 5626 §3.5.1 keep-alives may appear: a
//! double CRLF "ping" that must be answered with a single CRLF "pong".

use bytes::{Bytes, BytesMut};

use crate::message::{find_head_end, ParseError};

/// One unit cut from a stream by [`StreamFramer`].
///
/// It exists because a TCP stream carries keep-alives between messages, which the connection
/// must answer or note but never parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// The bytes of one complete message (header section and exactly `Content-Length` body
    /// bytes), ready for [`crate::Message::parse`].
    Message(Bytes),
    /// A CRLFCRLF keep-alive ping (RFC 5626 §3.5.1): answer with a single CRLF pong.
    KeepAlivePing,
    /// A single CRLF between messages: the pong answering our ping (or a stray line end that
    /// RFC 3261 §7.5 says to ignore).
    KeepAlivePong,
}

/// Why the stream cannot be cut into messages. Every variant is fatal for the connection:
/// without a trustworthy message length the framer cannot find where the next message starts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// A message on a stream carries no Content-Length (mandatory on streams, RFC 3261 §18.3).
    #[error("message on a stream transport has no Content-Length")]
    MissingContentLength,
    /// Content-Length is not a decimal number, or several rows disagree.
    #[error("invalid Content-Length: {0}")]
    InvalidContentLength(String),
    /// The header section, or the whole message, exceeds the size limit.
    #[error("message of at least {size} bytes exceeds the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
}

impl FramingError {
    /// The equivalent parse error, for building the 400 response with
    /// [`crate::message::bad_request_for`].
    pub fn to_parse_error(&self) -> ParseError {
        match self {
            FramingError::MissingContentLength => ParseError::MissingHeader("Content-Length"),
            FramingError::InvalidContentLength(text) => {
                ParseError::InvalidHeader(format!("bad Content-Length {text:?}"))
            }
            FramingError::TooLarge { size, max } => ParseError::TooLarge {
                size: *size,
                max: *max,
            },
        }
    }
}

/// Sans-IO stream framer: [`push`](StreamFramer::push) bytes as they are read, then call
/// [`next_frame`](StreamFramer::next_frame) until it returns `Ok(None)`.
///
/// It exists so that message boundaries on TCP are found in one tested place, independent of
/// sockets: messages split across reads, several messages in one read and keep-alives all go
/// through the same state machine. Buffering is bounded by `max_message_size` (plus the bytes of
/// the last push): a peer that never sends the blank line gets [`FramingError::TooLarge`]
/// instead of growing memory.
#[derive(Debug)]
pub struct StreamFramer {
    buf: BytesMut,
    max_message_size: usize,
    /// Bytes at the front of `buf` already searched for the end of the header section without
    /// finding it; the search resumes near here, so byte-at-a-time input stays linear.
    scanned: usize,
    /// Length of the message at the front of `buf` once its header section has been read and
    /// only body bytes are missing.
    pending_total: Option<usize>,
}

const CRLF: &[u8] = b"\r\n";
const CRLFCRLF: &[u8] = b"\r\n\r\n";

impl StreamFramer {
    pub fn new(max_message_size: usize) -> StreamFramer {
        StreamFramer {
            buf: BytesMut::with_capacity(4096),
            max_message_size,
            scanned: 0,
            pending_total: None,
        }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes received but not yet returned as frames. After a [`FramingError`] this starts with
    /// the offending message, from which a 400 response can be built.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed. After an error the
    /// stream cannot be resynchronised; the connection should be closed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FramingError> {
        if self.pending_total.is_none() {
            if let Some(keepalive) = self.take_line_ends() {
                return Ok(keepalive);
            }
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        if let Some(total) = self.pending_total {
            return Ok(self.take_message(total));
        }
        // The buffer now starts with the first byte of a message.
        let from = self.scanned.saturating_sub(2);
        let Some((head_len, body_start)) = self
            .buf
            .get(from..)
            .and_then(find_head_end)
            .map(|(h, b)| (h + from, b + from))
        else {
            self.scanned = self.buf.len();
            if self.buf.len() > self.max_message_size {
                return Err(FramingError::TooLarge {
                    size: self.buf.len(),
                    max: self.max_message_size,
                });
            }
            return Ok(None);
        };
        let too_large = |size: usize| FramingError::TooLarge {
            size,
            max: self.max_message_size,
        };
        if body_start > self.max_message_size {
            return Err(too_large(body_start));
        }
        let head = self.buf.get(..head_len).unwrap_or_default();
        let body_len = content_length(head)?.ok_or(FramingError::MissingContentLength)?;
        let total = body_start
            .checked_add(body_len)
            .ok_or_else(|| too_large(usize::MAX))?;
        if total > self.max_message_size {
            return Err(too_large(total));
        }
        self.pending_total = Some(total);
        Ok(self.take_message(total))
    }

    /// Cuts the message of `total` bytes at the front of the buffer once all of it is there.
    fn take_message(&mut self, total: usize) -> Option<Frame> {
        if self.buf.len() < total {
            return None;
        }
        self.scanned = 0;
        self.pending_total = None;
        Some(Frame::Message(self.buf.split_to(total).freeze()))
    }

    /// Consumes CR/LF bytes before a message. Returns `Some(frame)` for a keep-alive (or
    /// `Some(None)` when the bytes so far may be the start of a ping and more are needed),
    /// `None` when the buffer does not start with a line end (or is empty).
    fn take_line_ends(&mut self) -> Option<Option<Frame>> {
        loop {
            let first = *self.buf.first()?;
            if first != b'\r' && first != b'\n' {
                return None;
            }
            if self.buf.starts_with(CRLFCRLF) {
                let _ = self.buf.split_to(CRLFCRLF.len());
                return Some(Some(Frame::KeepAlivePing));
            }
            if self.buf.len() < CRLFCRLF.len() && CRLFCRLF.starts_with(&self.buf) {
                // "\r", "\r\n" or "\r\n\r": could still become a ping.
                return Some(None);
            }
            if self.buf.starts_with(CRLF) {
                // CRLF followed by something that does not complete a ping: a pong.
                let _ = self.buf.split_to(CRLF.len());
                return Some(Some(Frame::KeepAlivePong));
            }
            // A stray CR or LF: ignored (RFC 3261 §7.5).
            let _ = self.buf.split_to(1);
        }
    }
}

/// The Content-Length declared in a header section (long or compact `l` name, any case,
/// whitespace before the colon and around the value tolerated, folded continuation lines
/// joined). `Ok(None)` when there is none; several rows must agree.
fn content_length(head: &[u8]) -> Result<Option<usize>, FramingError> {
    let mut values: Vec<Vec<u8>> = Vec::new();
    let mut in_content_length = false;
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            in_content_length = false;
            continue;
        }
        if line.starts_with(b" ") || line.starts_with(b"\t") {
            if in_content_length {
                if let Some(value) = values.last_mut() {
                    value.push(b' ');
                    value.extend_from_slice(line);
                }
            }
            continue;
        }
        in_content_length = false;
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = line.split_at(colon);
        let name = name.trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            in_content_length = true;
            values.push(value.get(1..).unwrap_or_default().to_vec());
        }
    }
    let mut found: Option<usize> = None;
    for value in &values {
        let value = value.trim_ascii();
        let shown = || {
            String::from_utf8_lossy(value)
                .chars()
                .take(40)
                .collect::<String>()
        };
        if value.is_empty() || value.len() > 9 || !value.iter().all(u8::is_ascii_digit) {
            return Err(FramingError::InvalidContentLength(shown()));
        }
        let n = value
            .iter()
            .fold(0usize, |n, &d| n * 10 + usize::from(d - b'0'));
        if found.is_some_and(|f| f != n) {
            return Err(FramingError::InvalidContentLength(
                "conflicting Content-Length rows".into(),
            ));
        }
        found = Some(n);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 4096;

    fn msg(body: &str) -> String {
        format!(
            "MESSAGE sip:b@example.com SIP/2.0\r\n\
             Via: SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bK1\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    fn frames(framer: &mut StreamFramer) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(frame) = framer.next_frame().unwrap() {
            out.push(frame);
        }
        out
    }

    fn message(text: &str) -> Frame {
        Frame::Message(Bytes::copy_from_slice(text.as_bytes()))
    }

    #[test]
    fn one_message_in_one_push() {
        let mut f = StreamFramer::new(MAX);
        f.push(msg("hello").as_bytes());
        assert_eq!(frames(&mut f), vec![message(&msg("hello"))]);
        assert!(f.buffered().is_empty());
    }

    #[test]
    fn several_messages_and_keepalives_in_one_push() {
        let mut f = StreamFramer::new(MAX);
        let input = format!("{}\r\n\r\n{}{}\r\n", msg("a"), msg(""), msg("ccc"));
        f.push(input.as_bytes());
        assert_eq!(
            frames(&mut f),
            vec![
                message(&msg("a")),
                Frame::KeepAlivePing,
                message(&msg("")),
                message(&msg("ccc")),
            ]
        );
        // The trailing lone CRLF may still be the start of a ping: held until more arrives.
        assert_eq!(f.buffered(), b"\r\n");
        f.push(b"X");
        assert_eq!(f.next_frame().unwrap(), Some(Frame::KeepAlivePong));
        assert_eq!(f.next_frame().unwrap(), None);
    }

    #[test]
    fn byte_at_a_time() {
        let mut f = StreamFramer::new(MAX);
        let input = format!(
            "\r\n\r\n{}{}",
            msg("body with\r\n\r\nblank lines"),
            msg("x")
        );
        let mut out = Vec::new();
        for b in input.as_bytes() {
            f.push(std::slice::from_ref(b));
            while let Some(frame) = f.next_frame().unwrap() {
                out.push(frame);
            }
        }
        assert_eq!(
            out,
            vec![
                Frame::KeepAlivePing,
                message(&msg("body with\r\n\r\nblank lines")),
                message(&msg("x")),
            ]
        );
        assert!(f.buffered().is_empty());
    }

    #[test]
    fn split_at_every_position() {
        let input = format!("{}{}", msg("first body"), msg("second"));
        for cut in 0..=input.len() {
            let mut f = StreamFramer::new(MAX);
            f.push(&input.as_bytes()[..cut]);
            let mut out = frames(&mut f);
            f.push(&input.as_bytes()[cut..]);
            out.extend(frames(&mut f));
            assert_eq!(
                out,
                vec![message(&msg("first body")), message(&msg("second"))],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn compact_and_case_insensitive_content_length() {
        for row in ["l: 3", "L:3", "content-length :  3  ", "CONTENT-LENGTH:\t3"] {
            let text =
                format!("OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h\r\n{row}\r\n\r\nabcrest");
            let mut f = StreamFramer::new(MAX);
            f.push(text.as_bytes());
            let Some(Frame::Message(bytes)) = f.next_frame().unwrap() else {
                panic!("no frame for {row:?}");
            };
            assert!(bytes.ends_with(b"\r\n\r\nabc"), "{row:?}");
            assert_eq!(f.buffered(), b"rest");
        }
    }

    #[test]
    fn lf_only_header_section() {
        let mut f = StreamFramer::new(MAX);
        f.push(b"OPTIONS sip:a@b SIP/2.0\nVia: SIP/2.0/TCP h\nContent-Length: 2\n\nokNEXT");
        assert!(matches!(f.next_frame(), Ok(Some(Frame::Message(b))) if b.ends_with(b"\n\nok")));
    }

    #[test]
    fn missing_content_length_is_an_error() {
        let mut f = StreamFramer::new(MAX);
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h\r\n\r\n");
        assert_eq!(f.next_frame(), Err(FramingError::MissingContentLength));
        assert!(f.buffered().starts_with(b"OPTIONS"));
        // A header named like Content-Length but longer does not count.
        let mut f = StreamFramer::new(MAX);
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Lengthx: 0\r\n\r\n");
        assert_eq!(f.next_frame(), Err(FramingError::MissingContentLength));
    }

    #[test]
    fn bad_content_length_is_an_error() {
        for row in [
            "Content-Length: abc",
            "Content-Length: -1",
            "Content-Length: ",
            "Content-Length: 1 2",
            "Content-Length: 99999999999999999999",
            "Content-Length: 3\r\nl: 4",
        ] {
            let mut f = StreamFramer::new(MAX);
            f.push(format!("OPTIONS sip:a@b SIP/2.0\r\n{row}\r\n\r\n").as_bytes());
            assert!(
                matches!(f.next_frame(), Err(FramingError::InvalidContentLength(_))),
                "{row:?}"
            );
        }
        // Rows that agree are fine.
        let mut f = StreamFramer::new(MAX);
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 1\r\nl: 1\r\n\r\nz");
        assert!(matches!(f.next_frame(), Ok(Some(Frame::Message(_)))));
    }

    #[test]
    fn folded_content_length() {
        let mut f = StreamFramer::new(MAX);
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length:\r\n 2\r\n\r\nok");
        assert!(matches!(f.next_frame(), Ok(Some(Frame::Message(b))) if b.ends_with(b"ok")));
    }

    #[test]
    fn endless_header_section_is_too_large() {
        let mut f = StreamFramer::new(100);
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\n");
        assert_eq!(f.next_frame(), Ok(None));
        let mut result = Ok(None);
        for _ in 0..20 {
            f.push(b"X-Filler: 0123456789\r\n");
            result = f.next_frame();
            if result.is_err() {
                break;
            }
        }
        assert!(matches!(
            result,
            Err(FramingError::TooLarge { max: 100, .. })
        ));
        assert!(f.buffered().len() <= 100 + 22);
    }

    #[test]
    fn declared_body_too_large() {
        let mut f = StreamFramer::new(200);
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 500\r\n\r\n");
        assert!(matches!(
            f.next_frame(),
            Err(FramingError::TooLarge { max: 200, .. })
        ));
        // Exactly at the limit is accepted.
        let head = "OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 100\r\n\r\n";
        let mut f = StreamFramer::new(head.len() + 100);
        f.push(head.as_bytes());
        assert_eq!(f.next_frame(), Ok(None));
        f.push(&[b'x'; 100]);
        assert!(matches!(f.next_frame(), Ok(Some(Frame::Message(_)))));
    }

    #[test]
    fn keepalives() {
        let mut f = StreamFramer::new(MAX);
        f.push(b"\r\n\r\n\r\n\r\n");
        assert_eq!(
            frames(&mut f),
            vec![Frame::KeepAlivePing, Frame::KeepAlivePing]
        );
        f.push(b"\r");
        assert_eq!(f.next_frame(), Ok(None));
        f.push(b"\n");
        assert_eq!(f.next_frame(), Ok(None));
        f.push(b"\r");
        assert_eq!(f.next_frame(), Ok(None));
        f.push(b"\n");
        assert_eq!(f.next_frame(), Ok(Some(Frame::KeepAlivePing)));
        // Pong followed by a message.
        f.push(format!("\r\n{}", msg("p")).as_bytes());
        assert_eq!(
            frames(&mut f),
            vec![Frame::KeepAlivePong, message(&msg("p"))]
        );
        // Stray line ends before a message are skipped.
        f.push(format!("\n\n\r{}", msg("q")).as_bytes());
        assert_eq!(frames(&mut f), vec![message(&msg("q"))]);
    }

    /// Malformed or hostile input gives exactly the frames and the verdict the framing rules
    /// predict, and leaves exactly the unconsumed bytes buffered. After the last frame, asking
    /// again must give the same verdict and consume nothing: the connection builds its 400 from
    /// `buffered()` after an error, so any drift there would answer the wrong bytes, and a
    /// verdict that changed on a second call would let a broken stream resynchronise on garbage.
    #[test]
    fn garbage_gives_exact_frames_errors_and_leftover() {
        type Verdict = Result<Option<Frame>, FramingError>;
        /// Input, frames before the verdict, the verdict, bytes left buffered.
        type Case<'a> = (&'a [u8], Vec<Frame>, Verdict, &'a [u8]);
        let nuls = [0u8; 31];
        let cases: Vec<Case> = vec![
            // Not a line end first, so a message; its "start line" has no Content-Length.
            (
                b"\xff\xfe\r\n\r\n",
                vec![],
                Err(FramingError::MissingContentLength),
                b"\xff\xfe\r\n\r\n",
            ),
            // CRLF + more is a pong, lone CR/LF are skipped, and nothing is left waiting.
            (
                b"\r\n\r\r\r\n\n\n",
                vec![Frame::KeepAlivePong, Frame::KeepAlivePong],
                Ok(None),
                b"",
            ),
            (
                b"A\r\n\r\n",
                vec![],
                Err(FramingError::MissingContentLength),
                b"A\r\n\r\n",
            ),
            // A non-UTF-8 value is reported (lossily) instead of being taken as a length.
            (
                b"A\r\nl:\xff\r\n\r\n",
                vec![],
                Err(FramingError::InvalidContentLength("\u{fffd}".into())),
                b"A\r\nl:\xff\r\n\r\n",
            ),
            // Rows with an empty name are not Content-Length.
            (
                b"A\r\n:\r\n: 5\r\n\r\n",
                vec![],
                Err(FramingError::MissingContentLength),
                b"A\r\n:\r\n: 5\r\n\r\n",
            ),
            // No blank line within the limit: the whole buffer is the offending size.
            (
                &nuls,
                vec![],
                Err(FramingError::TooLarge { size: 31, max: 16 }),
                &nuls,
            ),
            // A well-formed message is cut at exactly its length; the garbage after it is only
            // an incomplete next message (under the limit) and stays buffered.
            (
                b"A\r\nl:0\r\n\r\n\0\0",
                vec![message("A\r\nl:0\r\n\r\n")],
                Ok(None),
                b"\0\0",
            ),
            // The declared total (10-byte head + 9) exceeds the limit before any body arrives.
            (
                b"A\r\nl:9\r\n\r\n",
                vec![],
                Err(FramingError::TooLarge { size: 19, max: 16 }),
                b"A\r\nl:9\r\n\r\n",
            ),
            (
                b"A\r\nl:1\r\nL:2\r\n\r\n",
                vec![],
                Err(FramingError::InvalidContentLength(
                    "conflicting Content-Length rows".into(),
                )),
                b"A\r\nl:1\r\nL:2\r\n\r\n",
            ),
        ];
        for (input, want_frames, want_verdict, want_left) in cases {
            let mut f = StreamFramer::new(16);
            f.push(input);
            let mut got = Vec::new();
            // Bounded: a framer that produced frames forever would fail here, not hang.
            let verdict = loop {
                match f.next_frame() {
                    Ok(Some(frame)) if got.len() < 16 => got.push(frame),
                    other => break other,
                }
            };
            assert_eq!(got, want_frames, "frames for {input:?}");
            assert_eq!(verdict, want_verdict, "verdict for {input:?}");
            assert_eq!(f.buffered(), want_left, "left buffered for {input:?}");
            for _ in 0..2 {
                assert_eq!(f.next_frame(), want_verdict, "repeat verdict for {input:?}");
                assert_eq!(
                    f.buffered(),
                    want_left,
                    "repeat consumed bytes of {input:?}"
                );
            }
        }
    }
}
