//! Property tests of the SIP parser: no input panics it, whatever it accepts writes back to
//! bytes that parse to the same message, and generated valid messages keep their bodies.

use proptest::prelude::*;
use sip_core::message::bad_request_for;
use sip_core::{HeaderName, Headers, Message, Method, ParseError, ParseLimits};

/// A realistic INVITE with SDP (RFC 3665 §3.1 F1 style), the seed for the mutation tests.
const INVITE: &str = "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP client.atlanta.example.com:5060;branch=z9hG4bK74bf9;rport\r\n\
Via: SIP/2.0/UDP [2001:db8::1]:5062;branch=z9hG4bKx;received=192.0.2.1, SIP/2.0/TCP h;branch=z9hG4bKy\r\n\
Max-Forwards: 70\r\n\
f: \"Alice, A.\" <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
i: 3848276298220188511@atlanta.example.com\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:alice@client.atlanta.example.com;transport=udp>, \"x\" <tel:+123>\r\n\
Route: <sip:p1.example.com;lr>,<sip:[::1]:5070;lr>\r\n\
Subject: folded\r\n value\r\n\
c: application/sdp\r\n\
Content-Length: 129\r\n\
\r\n\
v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 client.atlanta.example.com\r\n\
s=-\r\n\
c=IN IP4 192.0.2.101\r\n\
t=0 0\r\n\
m=audio 49172 RTP/AVP 0\r\n";

fn limits() -> ParseLimits {
    ParseLimits::default()
}

/// Re-parse limits: the written form uses long header names and may be larger than the input.
fn unlimited() -> ParseLimits {
    ParseLimits {
        max_message_size: usize::MAX,
        max_headers: usize::MAX,
    }
}

/// Parses `buf`; whatever the outcome, exercises the follow-up paths (writer, re-parse,
/// 400 builder) and checks the round-trip property on success: every accepted message,
/// folded header values included, writes back to bytes that parse to the same message.
fn check(buf: &[u8]) -> Result<(), TestCaseError> {
    match Message::parse(buf, &limits()) {
        Ok(m) => {
            let written = m.to_bytes();
            let again = Message::parse(&written, &unlimited()).map_err(|e| {
                TestCaseError::fail(format!(
                    "written form does not parse: {e:?}\ninput: {:?}\nwritten: {:?}",
                    String::from_utf8_lossy(buf),
                    String::from_utf8_lossy(&written)
                ))
            })?;
            prop_assert_eq!(
                &again,
                &m,
                "written: {:?}",
                String::from_utf8_lossy(&written)
            );
            prop_assert_eq!(again.to_bytes(), written);
        }
        Err(e) => {
            if let Some(resp) = bad_request_for(buf, &e, &limits()) {
                prop_assert_eq!(resp.status, 400);
                prop_assert!(resp.headers.top_via().is_ok());
                let _ = resp.to_bytes();
            }
        }
    }
    Ok(())
}

#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    DuplicateLine(usize),
    DeleteLine(usize),
    SwapLines(usize, usize),
}

fn interesting_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 1..8),
        prop::sample::select(vec![
            b"\r\n".to_vec(),
            b"\r\n ".to_vec(),
            b"\n\n".to_vec(),
            b"\r\n\r\n".to_vec(),
            b",".to_vec(),
            b"\"".to_vec(),
            b"<".to_vec(),
            b">".to_vec(),
            b";".to_vec(),
            b":".to_vec(),
            b"[".to_vec(),
            b"]".to_vec(),
            b"@".to_vec(),
            b"\\".to_vec(),
            b" ".to_vec(),
            b"\t".to_vec(),
            b"\0".to_vec(),
            b"\xff".to_vec(),
            b"\xc3".to_vec(),
            b"99999".to_vec(),
            b"Via: SIP/2.0/UDP h;branch=z9hG4bKdup\r\n".to_vec(),
            b"Content-Length: 5\r\n".to_vec(),
            b"l: 99999999\r\n".to_vec(),
            b"CSeq: 2 BYE\r\n".to_vec(),
            b"Max-Forwards: 0068\r\n".to_vec(),
            b"To: <sip:[::1]:5060>;tag=x\r\n".to_vec(),
            "Subject: \u{00e9}\u{2028}\u{85}\r\n".as_bytes().to_vec(),
        ]),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let idx = any::<usize>();
    prop_oneof![
        (idx, 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (idx, any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        idx.prop_map(Mutation::Truncate),
        (idx, interesting_bytes()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (idx, 1usize..16).prop_map(|(i, n)| Mutation::Remove(i, n)),
        idx.prop_map(Mutation::DuplicateLine),
        idx.prop_map(Mutation::DeleteLine),
        (idx, idx).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
    ]
}

/// Line boundaries (start offsets, each line including its `\n`).
fn lines(buf: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, &b) in buf.iter().enumerate() {
        if b == b'\n' {
            out.push((start, i + 1));
            start = i + 1;
        }
    }
    if start < buf.len() {
        out.push((start, buf.len()));
    }
    out
}

fn apply(buf: &mut Vec<u8>, m: &Mutation) {
    let len = buf.len();
    match m {
        Mutation::FlipBit(i, bit) if len > 0 => buf[i % len] ^= 1 << bit,
        Mutation::SetByte(i, b) if len > 0 => buf[i % len] = *b,
        Mutation::Truncate(i) => buf.truncate(i % (len + 1)),
        Mutation::Insert(i, bytes) => {
            let at = i % (len + 1);
            buf.splice(at..at, bytes.iter().copied());
        }
        Mutation::Remove(i, n) if len > 0 => {
            let at = i % len;
            buf.drain(at..(at + n).min(len));
        }
        Mutation::DuplicateLine(i) => {
            let ls = lines(buf);
            if !ls.is_empty() {
                let (s, e) = ls[i % ls.len()];
                let line = buf[s..e].to_vec();
                buf.splice(e..e, line);
            }
        }
        Mutation::DeleteLine(i) => {
            let ls = lines(buf);
            if !ls.is_empty() {
                let (s, e) = ls[i % ls.len()];
                buf.drain(s..e);
            }
        }
        Mutation::SwapLines(a, b) => {
            let ls = lines(buf);
            if ls.len() >= 2 {
                let (x, y) = (a % ls.len(), b % ls.len());
                let (x, y) = (x.min(y), x.max(y));
                if x != y {
                    let (xs, xe) = ls[x];
                    let (ys, ye) = ls[y];
                    let mut out = buf[..xs].to_vec();
                    out.extend_from_slice(&buf[ys..ye]);
                    out.extend_from_slice(&buf[xe..ys]);
                    out.extend_from_slice(&buf[xs..xe]);
                    out.extend_from_slice(&buf[ye..]);
                    *buf = out;
                }
            }
        }
        _ => {}
    }
}

/// Lines that look like SIP, glued in random order: reaches deeper than random bytes.
fn sipish() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        Just("INVITE sip:a@b SIP/2.0".to_owned()),
        Just("SIP/2.0 200 OK".to_owned()),
        Just("Via: SIP/2.0/UDP h:5060;branch=z9hG4bK1;rport".to_owned()),
        Just("v: SIP/2.0/TCP [::1];branch=z9hG4bK2,SIP/2.0/UDP x".to_owned()),
        Just("From: <sip:a@b>;tag=1".to_owned()),
        Just("t: \"B, b\" <sip:b@c>".to_owned()),
        Just("Call-ID: x@y".to_owned()),
        Just("CSeq: 1 INVITE".to_owned()),
        Just("Content-Length: 3".to_owned()),
        Just("Max-Forwards: 70".to_owned()),
        Just("m: <sip:c@[2001:db8::1]:5070>;expires=3".to_owned()),
        Just("Route: <sip:r;lr>, <tel:+1>".to_owned()),
        Just(" folded".to_owned()),
        Just("".to_owned()),
        "[ -~]{0,40}",
        "[A-Za-z-]{1,12} *: *[ -~]{0,30}",
    ];
    (
        prop::collection::vec(line, 0..16),
        prop::sample::select(vec!["\r\n", "\n"]),
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(|(lines, eol, tail)| {
            let mut out = lines.join(eol).into_bytes();
            out.extend_from_slice(eol.as_bytes());
            out.extend_from_slice(eol.as_bytes());
            out.extend_from_slice(&tail);
            out
        })
}

/// The seed INVITE with header values folded (RFC 3261 §7.3.1) at the chosen places: a space
/// after a header's colon becomes a line break plus whitespace (so a value may start on the
/// continuation line), and a header line may get whitespace-only continuation lines after it.
/// Folding means one SP, so the result must parse to the same message as the seed.
fn fold_seed(folds: &[(usize, usize)]) -> Vec<u8> {
    const FOLDS: [&str; 4] = ["\r\n ", "\r\n\t", "  \r\n \r\n\t ", "\t\r\n  "];
    const TRAILERS: [&str; 2] = ["\r\n ", "\r\n\t \r\n  "];
    let (head, body) = INVITE.split_once("\r\n\r\n").unwrap();
    // (offset, bytes replaced, is a space): spaces after a colon, and header line ends.
    let mut places: Vec<(usize, usize, bool)> = Vec::new();
    let mut offset = 0;
    for (i, line) in head.split("\r\n").enumerate() {
        if i > 0 && !line.starts_with(' ') {
            let colon = line.find(':').unwrap();
            for (j, b) in line.bytes().enumerate().skip(colon + 1) {
                if b == b' ' {
                    places.push((offset + j, 1, true));
                }
            }
            places.push((offset + line.len(), 0, false));
        }
        offset += line.len() + 2;
    }
    let mut chosen: Vec<(usize, usize, &str)> = folds
        .iter()
        .map(|&(place, kind)| {
            let (at, len, space) = places[place % places.len()];
            let text = if space {
                FOLDS[kind % FOLDS.len()]
            } else {
                TRAILERS[kind % TRAILERS.len()]
            };
            (at, len, text)
        })
        .collect();
    chosen.sort_by_key(|&(at, _, _)| std::cmp::Reverse(at));
    chosen.dedup_by_key(|&mut (at, _, _)| at);
    let mut head = head.to_owned();
    for (at, len, text) in chosen {
        head.replace_range(at..at + len, text);
    }
    format!("{head}\r\n\r\n{body}").into_bytes()
}

// ---------------------------------------------------------------------------------------------
// Generated valid messages
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Generated {
    request: bool,
    method: &'static str,
    status: u16,
    reason: String,
    user: String,
    host: String,
    port: Option<u16>,
    display: Option<String>,
    from_tag: String,
    to_tag: Option<String>,
    call_id: String,
    cseq: u32,
    branches: Vec<String>,
    extra: Vec<(String, String)>,
    body: Vec<u8>,
    compact: bool,
    lower_names: bool,
    colon_ws: &'static str,
    lf_only: bool,
    udp_trailer: Vec<u8>,
}

fn generated() -> impl Strategy<Value = Generated> {
    let token = "[A-Za-z0-9.!%*_+`'~-]{1,20}";
    (
        (
            any::<bool>(),
            prop::sample::select(vec![
                "INVITE", "BYE", "OPTIONS", "REGISTER", "INFO", "MESSAGE", "UPDATE", "FOO",
            ]),
            100u16..700,
            "[A-Za-z][A-Za-z0-9 ]{0,30}[A-Za-z0-9]",
            "[a-z0-9+]{1,12}",
            "[a-z][a-z0-9-]{0,10}(\\.[a-z][a-z0-9-]{0,10}){0,3}",
            prop::option::of(1u16..=65535),
            prop::option::of("[A-Za-z0-9 ,<>;:@\"\\\\]{0,20}"),
        ),
        (
            token,
            prop::option::of(token),
            "[A-Za-z0-9.!%*_+`'~()<>:\\\\\"/\\[\\]?{}-]{1,32}(@[a-z0-9.]{1,16})?",
            0u32..(1 << 31),
            prop::collection::vec("[A-Za-z0-9.!%*_+`'~-]{1,16}", 1..4),
            prop::collection::vec(
                ("X-[A-Za-z0-9-]{1,12}", "([!-~]([ !-~]{0,40}[!-~])?)?"),
                0..6,
            ),
        ),
        (
            prop::collection::vec(any::<u8>(), 0..600),
            any::<bool>(),
            any::<bool>(),
            prop::sample::select(vec![":", " : ", ":\t", "\t:  "]),
            any::<bool>(),
            prop::collection::vec(any::<u8>(), 0..8),
        ),
    )
        .prop_map(
            |(
                (request, method, status, reason, user, host, port, display),
                (from_tag, to_tag, call_id, cseq, branches, extra),
                (body, compact, lower_names, colon_ws, lf_only, udp_trailer),
            )| Generated {
                request,
                method,
                status,
                reason,
                user,
                host,
                port,
                display,
                from_tag,
                to_tag,
                call_id,
                cseq,
                branches,
                extra,
                body,
                compact,
                lower_names,
                colon_ws,
                lf_only,
                udp_trailer,
            },
        )
}

fn quote(display: &str) -> String {
    let mut out = String::from("\"");
    for c in display.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

impl Generated {
    fn uri(&self) -> String {
        match self.port {
            Some(p) => format!("sip:{}@{}:{p}", self.user, self.host),
            None => format!("sip:{}@{}", self.user, self.host),
        }
    }

    fn to_wire(&self) -> Vec<u8> {
        let eol = if self.lf_only { "\n" } else { "\r\n" };
        let name = |long: &str, short: &str| {
            let n = if self.compact && !short.is_empty() {
                short
            } else {
                long
            };
            if self.lower_names {
                n.to_ascii_lowercase()
            } else {
                n.to_owned()
            }
        };
        let mut out = String::new();
        if self.request {
            out += &format!("{} {} SIP/2.0{eol}", self.method, self.uri());
        } else {
            out += &format!("SIP/2.0 {} {}{eol}", self.status, self.reason);
        }
        let vias: Vec<String> = self
            .branches
            .iter()
            .enumerate()
            .map(|(i, b)| {
                format!(
                    "SIP/2.0/UDP h{i}.example.com:{};branch=z9hG4bK{b}",
                    5060 + i
                )
            })
            .collect();
        // First Via alone, the rest comma-joined on one row.
        out += &format!("{}{}{}{eol}", name("Via", "v"), self.colon_ws, vias[0]);
        if vias.len() > 1 {
            out += &format!(
                "{}{}{}{eol}",
                name("Via", "v"),
                self.colon_ws,
                vias[1..].join(", ")
            );
        }
        let display = self.display.as_deref().map(quote).unwrap_or_default();
        out += &format!(
            "{}{}{display} <{}>;tag={}{eol}",
            name("From", "f"),
            self.colon_ws,
            self.uri(),
            self.from_tag
        );
        let to_tag = self
            .to_tag
            .as_ref()
            .map(|t| format!(";tag={t}"))
            .unwrap_or_default();
        out += &format!(
            "{}{}<sip:{}>{to_tag}{eol}",
            name("To", "t"),
            self.colon_ws,
            self.host
        );
        out += &format!(
            "{}{}{}{eol}",
            name("Call-ID", "i"),
            self.colon_ws,
            self.call_id
        );
        out += &format!(
            "{}{}{} {}{eol}",
            name("CSeq", ""),
            self.colon_ws,
            self.cseq,
            self.method
        );
        out += &format!("{}{}70{eol}", name("Max-Forwards", ""), self.colon_ws);
        for (n, v) in &self.extra {
            out += &format!("{n}{}{v}{eol}", self.colon_ws);
        }
        out += &format!(
            "{}{}{}{eol}{eol}",
            name("Content-Length", "l"),
            self.colon_ws,
            self.body.len()
        );
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes.extend_from_slice(&self.udp_trailer);
        bytes
    }

    fn check(&self, m: &Message) -> Result<(), TestCaseError> {
        let h: &Headers = m.headers();
        match m {
            Message::Request(r) => {
                prop_assert!(self.request);
                prop_assert_eq!(r.method.as_str(), self.method);
                prop_assert_eq!(r.uri.as_str(), self.uri());
                prop_assert_eq!(r.uri.user(), Some(self.user.as_str()));
                prop_assert_eq!(r.uri.host(), self.host.as_str());
                prop_assert_eq!(r.uri.port(), self.port);
            }
            Message::Response(r) => {
                prop_assert!(!self.request);
                prop_assert_eq!(r.status, self.status);
                prop_assert_eq!(&r.reason, &self.reason);
            }
        }
        let vias = h
            .vias()
            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(vias.len(), self.branches.len());
        for (i, (via, b)) in vias.iter().zip(&self.branches).enumerate() {
            let branch = format!("z9hG4bK{b}");
            prop_assert_eq!(via.branch(), Some(branch.as_str()));
            prop_assert_eq!(via.port, Some(5060 + i as u16));
        }
        let from = h
            .from()
            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(from.tag(), Some(self.from_tag.as_str()));
        let expected_display = self.display.as_ref().map(|d| d.to_owned());
        prop_assert_eq!(from.display_name, expected_display);
        let to = h.to().map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(to.tag(), self.to_tag.as_deref());
        prop_assert_eq!(h.call_id(), Some(self.call_id.as_str()));
        let cseq = h
            .cseq()
            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(cseq.seq, self.cseq);
        prop_assert_eq!(cseq.method, Method::parse(self.method).unwrap());
        prop_assert_eq!(h.max_forwards(), Some(Ok(70)));
        for (n, v) in &self.extra {
            prop_assert!(
                h.get_all(&HeaderName::parse(n)).any(|x| x == v),
                "{} missing",
                n
            );
        }
        prop_assert_eq!(&m.body()[..], &self.body[..]);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..2048)) {
        check(&buf)?;
    }

    #[test]
    fn sip_like_lines_never_panic_and_round_trip(buf in sipish()) {
        check(&buf)?;
    }

    #[test]
    fn mutated_invite_never_panics_and_round_trips(
        mutations in prop::collection::vec(mutation(), 1..8)
    ) {
        let mut buf = INVITE.as_bytes().to_vec();
        for m in &mutations {
            apply(&mut buf, m);
        }
        check(&buf)?;
    }

    #[test]
    fn folded_values_parse_as_unfolded_and_round_trip(
        folds in prop::collection::vec((any::<usize>(), any::<usize>()), 1..6)
    ) {
        let buf = fold_seed(&folds);
        let text = String::from_utf8_lossy(&buf).into_owned();
        let folded = Message::parse(&buf, &limits())
            .map_err(|e| TestCaseError::fail(format!("{e:?} for {text:?}")))?;
        let seed = Message::parse(INVITE.as_bytes(), &limits()).unwrap();
        prop_assert_eq!(&folded, &seed, "folded: {:?}", text);
        check(&buf)?;
    }

    #[test]
    fn generated_valid_messages_parse_and_round_trip(g in generated()) {
        let wire = g.to_wire();
        let m = Message::parse(&wire, &limits()).map_err(|e| {
            TestCaseError::fail(format!("{e:?} for {:?}", String::from_utf8_lossy(&wire)))
        })?;
        g.check(&m)?;
        let written = m.to_bytes();
        prop_assert!(written.ends_with(&g.body), "body bytes changed on write");
        let again = Message::parse(&written, &unlimited())
            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        g.check(&again)?;
        prop_assert_eq!(&again, &m);
    }

    #[test]
    fn content_length_cuts_or_rejects(extra in 0usize..64, cut in 0usize..64) {
        // Declared length = body length; `extra` trailing bytes are dropped, a body short by
        // `cut` bytes is an error.
        let body = vec![0xA5u8; 64];
        let head = INVITE.split("Content-Length: 129\r\n\r\n").next().unwrap();
        let mut buf = format!("{head}Content-Length: 64\r\n\r\n").into_bytes();
        buf.extend_from_slice(&body);
        buf.extend(std::iter::repeat_n(b'Z', extra));
        let m = Message::parse(&buf, &limits()).unwrap();
        prop_assert_eq!(&m.body()[..], &body[..]);
        if cut > 0 {
            buf.truncate(buf.len() - extra - cut);
            let is_truncated = matches!(
                Message::parse(&buf, &limits()),
                Err(ParseError::BodyTruncated { declared: 64, .. })
            );
            prop_assert!(is_truncated);
        }
    }
}

#[test]
fn seed_invite_is_valid() {
    let m = Message::parse(INVITE.as_bytes(), &limits()).unwrap();
    assert_eq!(m.body().len(), 129);
    assert_eq!(m.headers().vias().unwrap().len(), 3);
    assert_eq!(m.headers().contacts().unwrap().len(), 2);
    assert_eq!(m.headers().routes().unwrap().len(), 2);
    check(INVITE.as_bytes()).unwrap();
}
