//! Integration tests of the SIP message parser and writer (`sip_core::message`).
//!
//! Messages are adapted from RFC 3665 (basic call flows) and RFC 4475 (torture tests).
//! Multi-line fixtures are written with `\n` and converted to CRLF by [`wire`].

use sip_core::message::{bad_request_for, split_top_level_commas};
use sip_core::{
    HeaderName, Headers, Message, Method, ParseError, ParseLimits, Request, Response, Scheme,
    Transport, Uri,
};

// ---------------------------------------------------------------------------------------------
// Fixtures and helpers
// ---------------------------------------------------------------------------------------------

/// RFC 3665 §3.1 F1-style INVITE header section (no Content-Length; [`with_body`] adds it).
const INVITE_HEAD: &str = "INVITE sip:bob@biloxi.example.com SIP/2.0
Via: SIP/2.0/UDP client.atlanta.example.com:5060;branch=z9hG4bK74bf9;rport
Max-Forwards: 70
From: \"Alice Liddell\" <sip:alice@atlanta.example.com>;tag=9fxced76sl
To: Bob <sip:bob@biloxi.example.com>
Call-ID: 3848276298220188511@atlanta.example.com
CSeq: 1 INVITE
Contact: <sip:alice@client.atlanta.example.com;transport=udp>
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY
Supported: replaces, timer
User-Agent: Atlanta Phone 1.0
Content-Type: application/sdp
";

const SDP: &str = "v=0
o=alice 2890844526 2890844526 IN IP4 client.atlanta.example.com
s=-
c=IN IP4 192.0.2.101
t=0 0
m=audio 49172 RTP/AVP 0 8 101
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
";

/// `\n` → `\r\n`.
fn wire(text: &str) -> Vec<u8> {
    text.replace('\n', "\r\n").into_bytes()
}

/// A header section (lines ending in `\n`, no blank line) plus a correct Content-Length,
/// the blank line and `body`.
fn with_body(head: &str, body: &[u8]) -> Vec<u8> {
    let mut out = wire(head);
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

fn invite() -> Vec<u8> {
    with_body(INVITE_HEAD, &wire(SDP))
}

fn parse(buf: &[u8]) -> Result<Message, ParseError> {
    Message::parse(buf, &ParseLimits::default())
}

fn parse_ok(buf: &[u8]) -> Message {
    match parse(buf) {
        Ok(m) => m,
        Err(e) => panic!("parse failed: {e:?}\n---\n{}", String::from_utf8_lossy(buf)),
    }
}

fn request(buf: &[u8]) -> Request {
    match parse_ok(buf) {
        Message::Request(r) => r,
        Message::Response(r) => panic!("expected a request, got {} {}", r.status, r.reason),
    }
}

fn response(buf: &[u8]) -> Response {
    match parse_ok(buf) {
        Message::Response(r) => r,
        Message::Request(r) => panic!("expected a response, got {}", r.method),
    }
}

fn values<'a>(headers: &'a Headers, name: &'a HeaderName) -> Vec<&'a str> {
    headers.get_all(name).collect()
}

/// Parses, writes, re-parses: the two parses must be equal and writing is a fixed point.
fn assert_round_trip(buf: &[u8]) -> Message {
    let first = parse_ok(buf);
    let written = first.to_bytes();
    let second = parse_ok(&written);
    assert_eq!(first, second, "write→parse changed the message");
    assert_eq!(second.to_bytes(), written, "writing is not a fixed point");
    first
}

/// A minimal valid request of `method` with the given extra header lines.
fn minimal(method: &str, extra: &str) -> Vec<u8> {
    let head = format!(
        "{method} sip:bob@example.com SIP/2.0
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKmin1
From: <sip:alice@example.com>;tag=a1
To: <sip:bob@example.com>
Call-ID: min-1@192.0.2.1
CSeq: 7 {method}
Max-Forwards: 70
{extra}"
    );
    with_body(&head, b"")
}

// ---------------------------------------------------------------------------------------------
// Parse from bytes, write to bytes
// ---------------------------------------------------------------------------------------------

#[test]
fn parses_full_invite_with_sdp() {
    let buf = invite();
    assert!(
        buf.len() > 700,
        "fixture should be realistic, is {}",
        buf.len()
    );
    let r = request(&buf);
    assert_eq!(r.method, Method::Invite);
    assert_eq!(r.uri.as_str(), "sip:bob@biloxi.example.com");
    assert_eq!(r.uri.scheme(), &Scheme::Sip);
    assert_eq!(r.uri.user(), Some("bob"));
    assert_eq!(r.uri.host(), "biloxi.example.com");
    assert_eq!(r.uri.port(), None);
    assert_eq!(&r.body[..], &wire(SDP)[..]);
    assert_eq!(r.headers.content_type(), Some("application/sdp"));
    // Content-Length is not kept as a row: the writer recomputes it.
    assert!(!r.headers.contains(&HeaderName::ContentLength));
    // Non-multi-value headers keep their commas.
    assert_eq!(
        r.headers.get(&HeaderName::Allow),
        Some("INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY")
    );
    assert_eq!(
        r.headers.get(&HeaderName::Supported),
        Some("replaces, timer")
    );
}

#[test]
fn writes_request_in_long_form_with_content_length_last() {
    let r = request(&invite());
    let out = r.to_bytes();
    let expected = {
        let mut e = wire(
            "INVITE sip:bob@biloxi.example.com SIP/2.0
Via: SIP/2.0/UDP client.atlanta.example.com:5060;branch=z9hG4bK74bf9;rport
Max-Forwards: 70
From: \"Alice Liddell\" <sip:alice@atlanta.example.com>;tag=9fxced76sl
To: Bob <sip:bob@biloxi.example.com>
Call-ID: 3848276298220188511@atlanta.example.com
CSeq: 1 INVITE
Contact: <sip:alice@client.atlanta.example.com;transport=udp>
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY
Supported: replaces, timer
User-Agent: Atlanta Phone 1.0
Content-Type: application/sdp
",
        );
        let body = wire(SDP);
        e.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        e.extend_from_slice(&body);
        e
    };
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&expected)
    );
    assert_eq!(&out[..], &expected[..]);
    // Message::to_bytes and Request::to_bytes agree.
    assert_eq!(Message::Request(r.clone()).to_bytes(), out);
}

#[test]
fn write_then_parse_round_trips_equal() {
    for buf in [
        invite(),
        minimal("BYE", ""),
        minimal(
            "OPTIONS",
            "Accept: application/sdp\nX-Custom: a, b, \"c\"\n",
        ),
        minimal("FOOBAR", ""),
        rfc3665_200_ok(),
        with_body(
            "SIP/2.0 180 Ringing
Via: SIP/2.0/UDP a.example.com;branch=z9hG4bK1;received=192.0.2.1;rport=5062
Via: SIP/2.0/TCP b.example.com:5070;branch=z9hG4bK2
From: <sip:a@example.com>;tag=1
To: <sip:b@example.com>;tag=2
Call-ID: rt@x
CSeq: 1 INVITE
",
            b"",
        ),
    ] {
        assert_round_trip(&buf);
    }
}

#[test]
fn programmatically_built_request_writes_and_parses() {
    let mut r = Request::new(
        Method::Options,
        Uri::parse("sip:carol@chicago.example.com").unwrap(),
    );
    r.headers.push(
        HeaderName::Via,
        "SIP/2.0/TCP 192.0.2.5:5060;branch=z9hG4bKbuilt",
    );
    r.headers.push(HeaderName::MaxForwards, "70");
    r.headers
        .push(HeaderName::From, "<sip:b2bua@example.com>;tag=t1");
    r.headers
        .push(HeaderName::To, "<sip:carol@chicago.example.com>");
    r.headers.push(HeaderName::CallId, "built-1");
    r.headers.push(HeaderName::CSeq, "1 OPTIONS");
    let back = request(&r.to_bytes());
    assert_eq!(back, r);
}

// ---------------------------------------------------------------------------------------------
// Header names: case, compact forms, whitespace, folding
// ---------------------------------------------------------------------------------------------

#[test]
fn header_names_are_case_insensitive() {
    let buf = with_body(
        "INVITE sip:bob@example.com SIP/2.0
vIA: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKcase
FROM: <sip:alice@example.com>;tag=a
to: <sip:bob@example.com>
cAlL-iD: case@x
cseq: 1 INVITE
MAX-FORWARDS: 69
content-type: application/sdp
x-CUSTOM-header: yes
",
        b"v=0\r\n",
    );
    // The Content-Length row itself in a different case:
    let buf = String::from_utf8(buf)
        .unwrap()
        .replace("Content-Length:", "cOnTeNt-LeNgTh:")
        .into_bytes();
    let r = request(&buf);
    assert_eq!(r.headers.top_via().unwrap().branch(), Some("z9hG4bKcase"));
    assert_eq!(r.headers.from().unwrap().tag(), Some("a"));
    assert_eq!(r.headers.call_id(), Some("case@x"));
    assert_eq!(r.headers.max_forwards(), Some(Ok(69)));
    assert_eq!(r.headers.content_type(), Some("application/sdp"));
    assert_eq!(&r.body[..], b"v=0\r\n");
    assert_eq!(
        r.headers.get(&HeaderName::parse("X-Custom-Header")),
        Some("yes")
    );
    // Known names are written in their canonical long form; unknown ones as received.
    let out = String::from_utf8(r.to_bytes().to_vec()).unwrap();
    for line in [
        "\r\nVia: ",
        "\r\nFrom: ",
        "\r\nTo: ",
        "\r\nCall-ID: ",
        "\r\nCSeq: ",
        "\r\nMax-Forwards: ",
        "\r\nContent-Type: ",
        "\r\nx-CUSTOM-header: yes",
        "\r\nContent-Length: 5\r\n",
    ] {
        assert!(out.contains(line), "{line:?} missing in\n{out}");
    }
}

#[test]
fn all_compact_forms_resolve_and_are_written_long() {
    let buf = wire(
        "SUBSCRIBE sip:bob@example.com SIP/2.0
v: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKcompact
f: <sip:alice@example.com>;tag=f1
t: <sip:bob@example.com>
i: compact-1@192.0.2.1
CSeq: 3 SUBSCRIBE
m: <sip:alice@192.0.2.1>
c: text/plain
k: timer
s: compact forms
e: gzip
o: dialog
r: <sip:carol@example.com>
u: presence
x: 1800;refresher=uac
b: <sip:dave@example.com>
l: 4

body",
    );
    let r = request(&buf);
    let h = &r.headers;
    assert_eq!(h.top_via().unwrap().branch(), Some("z9hG4bKcompact"));
    assert_eq!(h.from().unwrap().tag(), Some("f1"));
    assert_eq!(h.to().unwrap().uri.user(), Some("bob"));
    assert_eq!(h.call_id(), Some("compact-1@192.0.2.1"));
    assert_eq!(h.contacts().unwrap()[0].uri.host(), "192.0.2.1");
    assert_eq!(h.content_type(), Some("text/plain"));
    for (name, value) in [
        (HeaderName::Supported, "timer"),
        (HeaderName::Subject, "compact forms"),
        (HeaderName::ContentEncoding, "gzip"),
        (HeaderName::Event, "dialog"),
        (HeaderName::ReferTo, "<sip:carol@example.com>"),
        (HeaderName::AllowEvents, "presence"),
        (HeaderName::SessionExpires, "1800;refresher=uac"),
        (HeaderName::ReferredBy, "<sip:dave@example.com>"),
    ] {
        assert_eq!(h.get(&name), Some(value), "{name}");
    }
    assert_eq!(&r.body[..], b"body");
    let out = String::from_utf8(r.to_bytes().to_vec()).unwrap();
    for long in [
        "Via",
        "From",
        "To",
        "Call-ID",
        "Contact",
        "Content-Type",
        "Supported",
        "Subject",
        "Content-Encoding",
        "Event",
        "Refer-To",
        "Allow-Events",
        "Session-Expires",
        "Referred-By",
    ] {
        assert!(
            out.contains(&format!("\r\n{long}: ")),
            "{long} missing:\n{out}"
        );
    }
    assert!(out.ends_with("\r\nContent-Length: 4\r\n\r\nbody"), "{out}");
    // Upper-case compact forms too.
    let upper = String::from_utf8(buf)
        .unwrap()
        .replace("\r\nv:", "\r\nV:")
        .replace("\r\ni:", "\r\nI:")
        .replace("\r\nl:", "\r\nL:");
    let r2 = request(upper.as_bytes());
    assert_eq!(r2, r);
}

#[test]
fn folded_continuation_lines_are_joined() {
    let buf = with_body(
        "INVITE sip:bob@example.com SIP/2.0
Via: SIP/2.0/UDP 192.0.2.1:5060
 ;branch=z9hG4bKfold
From: \"Alice\"
\t<sip:alice@example.com>
   ;tag=ff
To:
 <sip:bob@example.com>
Call-ID: fold@x
CSeq: 1
    INVITE
Subject: I know you're there,
 pull up a chair
X-Long: a
\tb
  c
",
        b"",
    );
    let r = request(&buf);
    let h = &r.headers;
    let via = h.top_via().unwrap();
    assert_eq!(via.branch(), Some("z9hG4bKfold"));
    assert_eq!(via.sent_by(), "192.0.2.1:5060");
    let from = h.from().unwrap();
    assert_eq!(from.display_name.as_deref(), Some("Alice"));
    assert_eq!(from.tag(), Some("ff"));
    assert_eq!(h.to().unwrap().uri.user(), Some("bob"));
    assert_eq!(h.cseq().unwrap().seq, 1);
    assert_eq!(
        h.get(&HeaderName::Subject),
        Some("I know you're there, pull up a chair")
    );
    assert_eq!(h.get(&HeaderName::parse("X-Long")), Some("a b c"));
    // Written back unfolded, one line per row.
    let out = String::from_utf8(r.to_bytes().to_vec()).unwrap();
    assert!(out.contains("\r\nSubject: I know you're there, pull up a chair\r\n"));
    assert!(out.contains("\r\nX-Long: a b c\r\n"));
}

/// A continuation line before any header has nothing to continue.
#[test]
fn continuation_before_first_header_is_an_error() {
    let buf = wire("OPTIONS sip:a@b SIP/2.0\n folded: x\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\n\n");
    assert!(matches!(parse(&buf), Err(ParseError::InvalidHeader(_))));
}

/// RFC 3261 §7.3.1: folding joins lines with a single SP; a folded value must write back and
/// re-parse to the same value. A header whose value starts on the continuation line
/// (`To:` CRLF SP `<sip:...>`, as in RFC 4475 §3.1.1.1) or a whitespace-only continuation line
/// leaves stray whitespace in the stored value, which the writer then loses.
#[test]
fn folded_values_are_trimmed_so_round_trip_is_equal() {
    // Value only on the continuation line: stored as " hello".
    let buf = minimal("OPTIONS", "Subject:\n hello\n");
    assert_eq!(
        request(&buf).headers.get(&HeaderName::Subject),
        Some("hello")
    );
    assert_round_trip(&buf);
    // Whitespace-only continuation line: stored as "a ".
    let buf = minimal("OPTIONS", "X-Trail: a\n \n");
    assert_eq!(
        request(&buf).headers.get(&HeaderName::parse("X-Trail")),
        Some("a")
    );
    assert_round_trip(&buf);
    // Worst case: a Call-ID of one folded space is accepted as non-empty, but the written
    // message (`Call-ID:  `) no longer parses (MissingHeader("Call-ID")).
    let buf = String::from_utf8(minimal("OPTIONS", ""))
        .unwrap()
        .replace("Call-ID: min-1@192.0.2.1\r\n", "Call-ID:\r\n \r\n");
    match parse(buf.as_bytes()) {
        Ok(m) => assert!(
            parse(&m.to_bytes()).is_ok(),
            "written form does not re-parse"
        ),
        Err(e) => assert_eq!(e, ParseError::MissingHeader("Call-ID")),
    }
}

#[test]
fn whitespace_around_colon_is_ignored() {
    let buf = with_body(
        "INVITE sip:bob@example.com SIP/2.0
Via  :   SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKws
From\t:\t<sip:alice@example.com>;tag=w
To:<sip:bob@example.com>
Call-ID :ws@x   
CSeq   :  2 INVITE
Max-Forwards \t: 70
",
        b"",
    );
    let buf = String::from_utf8(buf)
        .unwrap()
        .replace("Content-Length: 0", "Content-Length \t :   0  ")
        .into_bytes();
    let r = request(&buf);
    assert_eq!(r.headers.top_via().unwrap().branch(), Some("z9hG4bKws"));
    assert_eq!(r.headers.from().unwrap().tag(), Some("w"));
    assert_eq!(r.headers.to().unwrap().uri.user(), Some("bob"));
    assert_eq!(r.headers.call_id(), Some("ws@x"));
    assert_eq!(r.headers.cseq().unwrap().seq, 2);
    assert_eq!(r.headers.max_forwards(), Some(Ok(70)));
    assert!(r.body.is_empty());
}

#[test]
fn header_name_with_inner_space_or_no_colon_is_an_error() {
    for extra in [
        "Bad Name: x\n",
        "NoColonHere\n",
        ": empty-name\n",
        "Bad@Name: x\n",
    ] {
        let buf = minimal("OPTIONS", extra);
        assert!(
            matches!(parse(&buf), Err(ParseError::InvalidHeader(_))),
            "{extra:?} → {:?}",
            parse(&buf)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Multi-value headers
// ---------------------------------------------------------------------------------------------

#[test]
fn via_comma_separated_and_repeated_rows_keep_order() {
    let buf = with_body(
        "SIP/2.0 200 OK
Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bKp1 , SIP/2.0/TCP p2.example.com:5070;branch=z9hG4bKp2
v: SIP/2.0/UDP p3.example.com;branch=z9hG4bKp3;received=192.0.2.3
Via: SIP/2.0/TLS [2001:db8::4]:5061;branch=z9hG4bKp4,SIP/2.0/UDP p5.example.com;branch=z9hG4bKp5
From: <sip:a@example.com>;tag=1
To: <sip:b@example.com>;tag=2
Call-ID: via@x
CSeq: 1 INVITE
",
        b"",
    );
    let r = response(&buf);
    let vias = r.headers.vias().unwrap();
    let branches: Vec<_> = vias.iter().map(|v| v.branch().unwrap()).collect();
    assert_eq!(
        branches,
        [
            "z9hG4bKp1",
            "z9hG4bKp2",
            "z9hG4bKp3",
            "z9hG4bKp4",
            "z9hG4bKp5"
        ]
    );
    assert_eq!(vias[1].transport, Transport::Tcp);
    assert_eq!(vias[1].port, Some(5070));
    assert_eq!(vias[3].transport, Transport::Tls);
    assert_eq!(vias[3].host, "2001:db8::4");
    assert_eq!(r.headers.top_via().unwrap().branch(), Some("z9hG4bKp1"));
    // One row per entry on the way out.
    let out = String::from_utf8(r.to_bytes().to_vec()).unwrap();
    assert_eq!(out.matches("\r\nVia: ").count(), 5, "{out}");
    assert_round_trip(&buf);
}

#[test]
fn contact_commas_inside_quotes_and_angle_brackets_do_not_split() {
    let buf = minimal(
        "REGISTER",
        "Contact: \"Bob, \\\"Jr\\\"\" <sip:bob@192.0.2.4;p=a,b>;q=0.7, <sip:bob@[::1]:5062>;expires=60 ,sip:bob@pc.example.com;q=0.1
m: Carol <sip:carol@example.com>
",
    );
    let r = request(&buf);
    let contacts = r.headers.contacts().unwrap();
    assert_eq!(contacts.len(), 4);
    assert_eq!(contacts[0].display_name.as_deref(), Some("Bob, \"Jr\""));
    assert_eq!(contacts[0].uri.params().value("p"), Some("a,b"));
    assert_eq!(contacts[0].params.value("q"), Some("0.7"));
    assert_eq!(contacts[1].uri.host(), "::1");
    assert_eq!(contacts[1].uri.port(), Some(5062));
    assert_eq!(contacts[1].params.value("expires"), Some("60"));
    // addr-spec form: the parameter belongs to the header, not the URI.
    assert_eq!(contacts[2].uri.host(), "pc.example.com");
    assert_eq!(contacts[2].params.value("q"), Some("0.1"));
    assert!(contacts[2].uri.params().is_empty());
    assert_eq!(contacts[3].display_name.as_deref(), Some("Carol"));
    assert_round_trip(&buf);
}

#[test]
fn route_and_record_route_multi_values() {
    let buf = minimal(
        "BYE",
        "Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr;x=\"a,b\">
Route: <sip:p3.example.com:5070;transport=tcp;lr>
Record-Route: <sip:rr1.example.com;lr>,<sip:[2001:db8::9];lr>
Record-Route: \"quoted, name\" <sip:rr3.example.com;lr>
",
    );
    let r = request(&buf);
    let routes = r.headers.routes().unwrap();
    let hosts: Vec<_> = routes.iter().map(|n| n.uri.host().to_owned()).collect();
    assert_eq!(
        hosts,
        ["p1.example.com", "p2.example.com", "p3.example.com"]
    );
    assert!(routes.iter().all(|n| n.uri.params().contains("lr")));
    assert_eq!(routes[2].uri.port(), Some(5070));
    assert_eq!(
        values(&r.headers, &HeaderName::Route)[1],
        "<sip:p2.example.com;lr;x=\"a,b\">"
    );
    let rr = r.headers.record_routes().unwrap();
    assert_eq!(rr.len(), 3);
    assert_eq!(rr[1].uri.host(), "2001:db8::9");
    assert_eq!(rr[2].display_name.as_deref(), Some("quoted, name"));
    // Route entries pass through byte for byte.
    assert_eq!(rr[0].uri.as_str(), "sip:rr1.example.com;lr");
    assert_round_trip(&buf);
}

#[test]
fn non_list_headers_are_not_split_at_commas() {
    let buf = minimal(
        "OPTIONS",
        "Subject: one, two, three\nX-Foo: a,b\nFrom: \"Smith, John\" <sip:j@example.com>;tag=z\n",
    );
    let r = request(&buf);
    assert_eq!(r.headers.get(&HeaderName::Subject), Some("one, two, three"));
    assert_eq!(r.headers.get(&HeaderName::parse("x-foo")), Some("a,b"));
    // The first From row wins.
    assert_eq!(r.headers.from().unwrap().tag(), Some("a1"));
    assert_eq!(values(&r.headers, &HeaderName::From).len(), 2);
}

#[test]
fn split_top_level_commas_public_helper() {
    let parts: Vec<_> =
        split_top_level_commas(r#"<sip:a@x;p=1,2>, "c, \"d\"" <sip:c@y> ,, sip:z@w "#).collect();
    assert_eq!(
        parts,
        [r#"<sip:a@x;p=1,2>"#, r#""c, \"d\"" <sip:c@y>"#, "sip:z@w"]
    );
}

// ---------------------------------------------------------------------------------------------
// Bodies and Content-Length
// ---------------------------------------------------------------------------------------------

#[test]
fn binary_body_with_invalid_utf8_and_nul_round_trips_exactly() {
    let mut body: Vec<u8> = vec![0xff, 0xfe, 0x00, 0x80, 0xc3, 0x28, b'\r', b'\n', 0x00, 0x00];
    body.extend_from_slice(b"\r\n\r\n"); // a blank line inside the body is not a header end
    body.extend((0u8..=255).rev());
    body.extend_from_slice(&[0xed, 0xa0, 0x80, 0xf4, 0x90, 0x80, 0x80, 0x00]);
    assert!(std::str::from_utf8(&body).is_err());
    let buf = with_body(
        &INVITE_HEAD.replace("application/sdp", "application/octet-stream"),
        &body,
    );
    let r = request(&buf);
    assert_eq!(&r.body[..], &body[..]);
    let out = r.to_bytes();
    assert!(out.ends_with(&body), "body bytes changed on write");
    assert!(out
        .windows(format!("Content-Length: {}\r\n\r\n", body.len()).len())
        .any(|w| w == format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes()));
    let again = request(&out);
    assert_eq!(&again.body[..], &body[..]);
    assert_eq!(again, r);
}

#[test]
fn body_bytes_survive_response_write_too() {
    let body = [0u8, 159, 146, 150, 0, 255, 10, 13];
    let mut resp = Response::new(200, "OK");
    resp.headers
        .push(HeaderName::Via, "SIP/2.0/UDP h;branch=z9hG4bKb");
    resp.headers.push(HeaderName::From, "<sip:a@h>;tag=1");
    resp.headers.push(HeaderName::To, "<sip:b@h>;tag=2");
    resp.headers.push(HeaderName::CallId, "bin@h");
    resp.headers.push(HeaderName::CSeq, "2 INFO");
    resp.body = bytes::Bytes::copy_from_slice(&body);
    let back = response(&resp.to_bytes());
    assert_eq!(&back.body[..], &body[..]);
    assert_eq!(back, resp);
}

#[test]
fn content_length_is_recomputed_on_write() {
    // A programmatic message whose rows claim the wrong length (twice, in both forms).
    let mut r = request(&invite());
    r.headers.push(HeaderName::ContentLength, "9999");
    r.headers.push(HeaderName::parse("l"), "1");
    r.body = bytes::Bytes::from_static(b"hello");
    let out = String::from_utf8(r.to_bytes().to_vec()).unwrap();
    assert_eq!(out.matches("Content-Length").count(), 1, "{out}");
    assert!(out.ends_with("\r\nContent-Length: 5\r\n\r\nhello"), "{out}");
    // An empty body gets `Content-Length: 0`.
    r.body = bytes::Bytes::new();
    let out = String::from_utf8(r.to_bytes().to_vec()).unwrap();
    assert!(out.ends_with("\r\nContent-Length: 0\r\n\r\n"), "{out}");
}

#[test]
fn udp_datagram_is_cut_to_content_length() {
    // Content-Length says 4; the datagram carries 4 + 9 trailing bytes, which are dropped.
    let mut buf = wire(INVITE_HEAD);
    buf.extend_from_slice(b"Content-Length: 4\r\n\r\nv=0\ntrailing!");
    let r = request(&buf);
    assert_eq!(&r.body[..], b"v=0\n");
    let out = String::from_utf8(r.to_bytes().to_vec()).unwrap();
    assert!(out.ends_with("Content-Length: 4\r\n\r\nv=0\n"), "{out}");
    // Content-Length: 0 with junk after the blank line.
    let mut buf = wire(INVITE_HEAD);
    buf.extend_from_slice(b"l: 0\r\n\r\n\r\n\r\ngarbage");
    assert!(request(&buf).body.is_empty());
}

#[test]
fn missing_content_length_takes_the_rest_of_the_datagram() {
    let mut buf = wire(INVITE_HEAD);
    buf.extend_from_slice(b"\r\n");
    buf.extend_from_slice(&wire(SDP));
    let r = request(&buf);
    assert_eq!(&r.body[..], &wire(SDP)[..]);
    assert!(String::from_utf8(r.to_bytes().to_vec())
        .unwrap()
        .contains(&format!("\r\nContent-Length: {}\r\n", wire(SDP).len())));
}

#[test]
fn content_length_larger_than_data_is_an_error() {
    // RFC 4475 §3.1.2.2 (clerr) style: declared 9999, far more than what follows.
    let mut buf = wire(INVITE_HEAD);
    buf.extend_from_slice(b"Content-Length: 9999\r\n\r\n");
    let body = wire(SDP);
    buf.extend_from_slice(&body);
    assert_eq!(
        parse(&buf),
        Err(ParseError::BodyTruncated {
            declared: 9999,
            available: body.len()
        })
    );
    // Off by one.
    let mut buf = wire(INVITE_HEAD);
    buf.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len() + 1).as_bytes());
    buf.extend_from_slice(&body);
    assert!(matches!(parse(&buf), Err(ParseError::BodyTruncated { .. })));
}

#[test]
fn bad_or_conflicting_content_length_is_an_error() {
    // RFC 4475 §3.1.2.4 (ncl): negative Content-Length.
    for cl in ["-999", "abc", "", "1 2", "99999999999999999999", "0x10"] {
        let mut buf = wire(INVITE_HEAD);
        buf.extend_from_slice(format!("Content-Length: {cl}\r\n\r\n").as_bytes());
        assert!(
            matches!(parse(&buf), Err(ParseError::InvalidHeader(_))),
            "Content-Length {cl:?} → {:?}",
            parse(&buf)
        );
    }
    // Two rows that disagree.
    let mut buf = wire(INVITE_HEAD);
    buf.extend_from_slice(b"Content-Length: 3\r\nl: 4\r\n\r\nabcd");
    assert!(matches!(parse(&buf), Err(ParseError::InvalidHeader(_))));
    // Two rows that agree are fine.
    let mut buf = wire(INVITE_HEAD);
    buf.extend_from_slice(b"Content-Length: 4\r\nl: 4\r\n\r\nabcd");
    assert_eq!(&request(&buf).body[..], b"abcd");
}

// ---------------------------------------------------------------------------------------------
// Size limits
// ---------------------------------------------------------------------------------------------

/// Length of the header section including the blank line.
fn head_len(buf: &[u8]) -> usize {
    buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4
}

/// An INVITE of exactly `total` bytes (the body pads it out).
fn invite_of_size(total: usize) -> Vec<u8> {
    let head = wire(INVITE_HEAD);
    // Content-Length digits depend on the body size; iterate to a fixed point.
    let mut body_len = total.saturating_sub(head.len() + 24);
    loop {
        let buf = with_body(INVITE_HEAD, &vec![b'a'; body_len]);
        match buf.len().cmp(&total) {
            std::cmp::Ordering::Equal => return buf,
            std::cmp::Ordering::Less => body_len += total - buf.len(),
            std::cmp::Ordering::Greater => body_len -= buf.len() - total,
        }
    }
}

#[test]
fn default_limit_is_64_kib_and_bigger_messages_are_too_large() {
    let limits = ParseLimits::default();
    assert_eq!(limits.max_message_size, 64 * 1024);
    assert_eq!(limits.max_headers, 256);

    let at_limit = invite_of_size(64 * 1024);
    assert_eq!(at_limit.len(), 65536);
    assert_eq!(request(&at_limit).body.len(), 65536 - head_len(&at_limit));

    let over = invite_of_size(64 * 1024 + 1);
    assert_eq!(
        parse(&over),
        Err(ParseError::TooLarge {
            size: 65537,
            max: 65536
        })
    );
    // Far over, still rejected (and not by reading it all).
    let huge = invite_of_size(1024 * 1024);
    assert!(matches!(parse(&huge), Err(ParseError::TooLarge { .. })));
}

#[test]
fn custom_smaller_limit_is_applied() {
    let buf = invite();
    let tight = ParseLimits {
        max_message_size: 512,
        ..ParseLimits::default()
    };
    assert_eq!(
        Message::parse(&buf, &tight),
        Err(ParseError::TooLarge {
            size: buf.len(),
            max: 512
        })
    );
    let exact = ParseLimits {
        max_message_size: buf.len(),
        ..ParseLimits::default()
    };
    assert!(Message::parse(&buf, &exact).is_ok());
    let one_less = ParseLimits {
        max_message_size: buf.len() - 1,
        ..ParseLimits::default()
    };
    assert!(matches!(
        Message::parse(&buf, &one_less),
        Err(ParseError::TooLarge { .. })
    ));
    // A larger custom limit admits a message the default rejects.
    let big = invite_of_size(100_000);
    let roomy = ParseLimits {
        max_message_size: 128 * 1024,
        ..ParseLimits::default()
    };
    assert_eq!(
        Message::parse(&big, &roomy).unwrap().body().len(),
        big.len() - head_len(&big)
    );
    assert!(matches!(parse(&big), Err(ParseError::TooLarge { .. })));
}

#[test]
fn header_row_limit_counts_split_entries() {
    let few = ParseLimits {
        max_headers: 10,
        ..ParseLimits::default()
    };
    // 12 rows on the wire.
    let buf = invite();
    assert_eq!(
        Message::parse(&buf, &few),
        Err(ParseError::TooManyHeaders(10))
    );
    // 8 rows on the wire, but a Via list that splits into 5 entries.
    let buf = minimal(
        "OPTIONS",
        "Via: SIP/2.0/UDP a;branch=z9hG4bK1,SIP/2.0/UDP b;branch=z9hG4bK2,SIP/2.0/UDP c;branch=z9hG4bK3,SIP/2.0/UDP d;branch=z9hG4bK4,SIP/2.0/UDP e;branch=z9hG4bK5\n",
    );
    assert!(parse(&buf).is_ok());
    assert_eq!(
        Message::parse(&buf, &few),
        Err(ParseError::TooManyHeaders(10))
    );
}

// ---------------------------------------------------------------------------------------------
// Typed access
// ---------------------------------------------------------------------------------------------

#[test]
fn typed_access_to_the_headers_upper_layers_read() {
    let buf = with_body(
        "INVITE sip:bob@biloxi.example.com:5080;transport=udp SIP/2.0
Via: SIP/2.0/UDP client.atlanta.example.com:5060;branch=z9hG4bK74bf9;received=192.0.2.101;rport=5066
Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKold
Max-Forwards: 69
Route: <sip:ss1.example.com;lr>
Record-Route: <sip:ss2.example.com;lr>
From: \"Alice \\\"A\\\" Liddell\" <sip:alice@atlanta.example.com>;tag=9fxced76sl
To: Bob <sip:bob@biloxi.example.com>;tag=8321234356
Call-ID: 3848276298220188511@atlanta.example.com
CSeq: 314159 INVITE
Contact: <sip:alice@client.atlanta.example.com;transport=udp>;+sip.instance=\"<urn:uuid:1>\"
P-Asserted-Identity: \"Alice\" <sip:alice@atlanta.example.com>, <tel:+15551234>
Content-Type: application/sdp
",
        &wire(SDP),
    );
    let r = request(&buf);
    let h = &r.headers;

    assert_eq!(r.uri.port(), Some(5080));
    assert_eq!(r.uri.params().value("transport"), Some("udp"));

    let via = h.top_via().unwrap();
    assert_eq!(via.transport, Transport::Udp);
    assert_eq!(via.host, "client.atlanta.example.com");
    assert_eq!(via.port, Some(5060));
    assert_eq!(via.sent_by(), "client.atlanta.example.com:5060");
    assert_eq!(via.branch(), Some("z9hG4bK74bf9"));
    assert!(via.has_rfc3261_branch());
    assert_eq!(via.received(), Some("192.0.2.101"));
    assert_eq!(via.rport(), Some(Some(5066)));
    let vias = h.vias().unwrap();
    assert_eq!(vias.len(), 2);
    assert_eq!(vias[1].rport(), None);
    assert_eq!(vias[1].received(), None);
    assert_eq!(vias[1].port, None);

    let from = h.from().unwrap();
    assert_eq!(from.display_name.as_deref(), Some("Alice \"A\" Liddell"));
    assert_eq!(from.uri.user(), Some("alice"));
    assert_eq!(from.uri.host(), "atlanta.example.com");
    assert_eq!(from.tag(), Some("9fxced76sl"));
    let to = h.to().unwrap();
    assert_eq!(to.display_name.as_deref(), Some("Bob"));
    assert_eq!(to.tag(), Some("8321234356"));

    assert_eq!(h.call_id(), Some("3848276298220188511@atlanta.example.com"));
    let cseq = h.cseq().unwrap();
    assert_eq!(cseq.seq, 314159);
    assert_eq!(cseq.method, Method::Invite);
    assert_eq!(cseq.to_string(), "314159 INVITE");

    let contacts = h.contacts().unwrap();
    assert_eq!(contacts.len(), 1);
    assert_eq!(contacts[0].uri.params().value("transport"), Some("udp"));
    assert_eq!(
        contacts[0].params.value("+sip.instance"),
        Some("\"<urn:uuid:1>\"")
    );
    assert_eq!(h.routes().unwrap()[0].uri.host(), "ss1.example.com");
    assert_eq!(h.record_routes().unwrap()[0].uri.host(), "ss2.example.com");
    assert_eq!(h.max_forwards(), Some(Ok(69)));
    let pai = h.p_asserted_identity().unwrap().unwrap();
    assert_eq!(pai.display_name.as_deref(), Some("Alice"));
    assert_eq!(h.content_type(), Some("application/sdp"));
}

#[test]
fn rport_without_value_and_missing_optional_headers() {
    let r = request(&minimal("OPTIONS", ""));
    let via = r.headers.top_via().unwrap();
    assert_eq!(via.rport(), None);
    assert_eq!(via.received(), None);
    assert_eq!(r.headers.to().unwrap().tag(), None);
    assert!(r.headers.contacts().unwrap().is_empty());
    assert!(r.headers.routes().unwrap().is_empty());
    assert!(r.headers.record_routes().unwrap().is_empty());
    assert_eq!(r.headers.content_type(), None);

    let r = request(
        &minimal("OPTIONS", "")
            .replace_via("Via: SIP/2.0/UDP 192.0.2.1:5060;rport;branch=z9hG4bKmin1"),
    );
    assert_eq!(r.headers.top_via().unwrap().rport(), Some(None));

    // No Max-Forwards at all is accepted; the typed accessor says so.
    let buf = String::from_utf8(minimal("OPTIONS", ""))
        .unwrap()
        .replace("Max-Forwards: 70\r\n", "");
    assert_eq!(request(buf.as_bytes()).headers.max_forwards(), None);
}

trait ReplaceVia {
    fn replace_via(self, via: &str) -> Vec<u8>;
}
impl ReplaceVia for Vec<u8> {
    fn replace_via(self, via: &str) -> Vec<u8> {
        let text = String::from_utf8(self).unwrap();
        let start = text.find("\r\nVia:").unwrap() + 2;
        let end = start + text[start..].find("\r\n").unwrap();
        format!("{}{}{}", &text[..start], via, &text[end..]).into_bytes()
    }
}

#[test]
fn bad_max_forwards_is_an_error() {
    for mf in ["abc", "-1", "", "1 2"] {
        let buf = String::from_utf8(minimal("OPTIONS", ""))
            .unwrap()
            .replace("Max-Forwards: 70", &format!("Max-Forwards: {mf}"));
        assert!(
            matches!(parse(buf.as_bytes()), Err(ParseError::InvalidHeader(_))),
            "Max-Forwards {mf:?} → {:?}",
            parse(buf.as_bytes())
        );
    }
    // RFC 4475 §3.1.1.11 (zeromf): Max-Forwards 0 is valid.
    let buf = String::from_utf8(minimal("OPTIONS", ""))
        .unwrap()
        .replace("Max-Forwards: 70", "Max-Forwards: 0");
    assert_eq!(request(buf.as_bytes()).headers.max_forwards(), Some(Ok(0)));
}

/// RFC 3261 §20.22: `Max-Forwards = "Max-Forwards" HCOLON 1*DIGIT`. Leading zeros are legal;
/// RFC 4475 §3.1.1.1 (wsinv) carries `Max-Forwards: 0068` and must be accepted as 68.
#[test]
fn max_forwards_with_leading_zeros_is_valid() {
    let buf = String::from_utf8(minimal("OPTIONS", ""))
        .unwrap()
        .replace("Max-Forwards: 70", "Max-Forwards: 0068");
    assert_eq!(request(buf.as_bytes()).headers.max_forwards(), Some(Ok(68)));
}

// ---------------------------------------------------------------------------------------------
// Mandatory headers, CSeq, start lines
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_mandatory_headers_are_errors() {
    let full = String::from_utf8(minimal("INVITE", "")).unwrap();
    for (line, name) in [
        (
            "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKmin1\r\n",
            "Via",
        ),
        ("From: <sip:alice@example.com>;tag=a1\r\n", "From"),
        ("To: <sip:bob@example.com>\r\n", "To"),
        ("Call-ID: min-1@192.0.2.1\r\n", "Call-ID"),
        ("CSeq: 7 INVITE\r\n", "CSeq"),
    ] {
        assert!(full.contains(line));
        let buf = full.replace(line, "");
        assert_eq!(
            parse(buf.as_bytes()),
            Err(ParseError::MissingHeader(name)),
            "without {name}"
        );
    }
    // An empty Call-ID counts as missing.
    let buf = full.replace("Call-ID: min-1@192.0.2.1", "Call-ID:   ");
    assert_eq!(
        parse(buf.as_bytes()),
        Err(ParseError::MissingHeader("Call-ID"))
    );
    // Responses need them too.
    let resp = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCSeq: 1 BYE\r\n\r\n";
    assert_eq!(
        parse(resp.as_bytes()),
        Err(ParseError::MissingHeader("Call-ID"))
    );
}

#[test]
fn unparseable_mandatory_headers_are_errors() {
    let full = String::from_utf8(minimal("INVITE", "")).unwrap();
    for (from, to) in [
        (
            "Via: SIP/2.0/UDP 192.0.2.1:5060",
            "Via: SIP/2.0/FOO 192.0.2.1:5060",
        ),
        (
            "Via: SIP/2.0/UDP 192.0.2.1:5060",
            "Via: SIP/2.0/UDP 192.0.2.1:99999",
        ),
        (
            "From: <sip:alice@example.com>",
            "From: <sip:alice@example.com",
        ),
        // RFC 4475 §3.1.2.9 (quotbal): unterminated quoted display name.
        (
            "To: <sip:bob@example.com>",
            "To: \"Mr. J. User <sip:bob@example.com>",
        ),
        // RFC 4475 §3.1.2.14 (badaspec): whitespace inside the angle brackets.
        (
            "To: <sip:bob@example.com>",
            "To: \"Watson, Thomas\" < sip:bob@example.com >",
        ),
        (
            "From: <sip:alice@example.com>",
            "From: <sip:alice@example.com >",
        ),
        ("CSeq: 7 INVITE", "CSeq: seven INVITE"),
        // RFC 4475 §3.1.2.5 (scalar02): CSeq number far too large.
        ("CSeq: 7 INVITE", "CSeq: 36893488147419103232 INVITE"),
    ] {
        let buf = full.replace(from, to);
        assert!(parse(buf.as_bytes()).is_err(), "{to:?} accepted");
    }
}

#[test]
fn cseq_method_must_match_request_method() {
    // RFC 4475 §3.1.2.16 (mismatch01): OPTIONS request with an INVITE CSeq.
    let buf = String::from_utf8(minimal("OPTIONS", ""))
        .unwrap()
        .replace("CSeq: 7 OPTIONS", "CSeq: 7 INVITE");
    assert_eq!(
        parse(buf.as_bytes()),
        Err(ParseError::CSeqMethodMismatch {
            method: "OPTIONS".into(),
            cseq: "INVITE".into()
        })
    );
    // Method names are case-sensitive.
    let buf = String::from_utf8(minimal("INVITE", ""))
        .unwrap()
        .replace("CSeq: 7 INVITE", "CSeq: 7 invite");
    assert!(matches!(
        parse(buf.as_bytes()),
        Err(ParseError::CSeqMethodMismatch { .. })
    ));
    // A response's CSeq method is the method of the request it answers: no check.
    let r = response(&rfc3665_200_ok());
    assert_eq!(r.headers.cseq().unwrap().method, Method::Invite);
}

#[test]
fn unknown_methods_are_kept() {
    let buf = minimal("FOOBAR", "");
    let r = request(&buf);
    assert_eq!(r.method, Method::Other("FOOBAR".into()));
    assert_eq!(r.method.as_str(), "FOOBAR");
    assert_eq!(r.headers.cseq().unwrap().method, r.method);
    let out = r.to_bytes();
    assert!(out.starts_with(b"FOOBAR sip:bob@example.com SIP/2.0\r\n"));
    assert_round_trip(&buf);
    // Known extension methods map to their variants.
    for (name, m) in [
        ("UPDATE", Method::Update),
        ("PRACK", Method::Prack),
        ("REFER", Method::Refer),
        ("MESSAGE", Method::Message),
        ("PUBLISH", Method::Publish),
        ("INFO", Method::Info),
    ] {
        assert_eq!(request(&minimal(name, "")).method, m);
    }
}

#[test]
fn unusual_method_tokens_are_accepted() {
    // Every token character class of RFC 3261 §25.1 in one method name (32 bytes).
    let method = "!x-Method0123456789_*+`.%ind'~y";
    let r = request(&minimal(method, ""));
    assert_eq!(r.method.as_str(), method);
    assert!(matches!(r.method, Method::Other(_)));
    assert_round_trip(&minimal(method, ""));
}

/// RFC 4475 §3.1.1.3 (intmeth): the method is any token, here 43 bytes long. (The crazy
/// Request-URI of the original is replaced by a plain one; URI grammar is rsip's business.)
#[test]
fn rfc4475_intmeth_long_unusual_method_token() {
    let method = "!interesting-Method0123456789_*+`.%indeed'~";
    let r = request(&minimal(method, ""));
    assert_eq!(r.method.as_str(), method);
    assert!(matches!(r.method, Method::Other(_)));
}

#[test]
fn invalid_start_lines_are_rejected() {
    let tail = "\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n\r\n";
    for line in [
        "INVITE sip:bob@example.com SIP/3.0", // §3.1.2.18 (badvers)
        "INVITE sip:bob@example.com SIP/7.0",
        "INVITE sip:bob@example.com",
        "INVITE  sip:bob@example.com SIP/2.0",
        "INVITE sip:bob@example.com SIP/2.0 extra",
        "IN VITE sip:bob@example.com SIP/2.0",
        "INV\"ITE sip:bob@example.com SIP/2.0",
        "SIP/2.0 99 Too Low",
        "SIP/2.0 700 Too High",
        "SIP/2.0 20x OK",
        "SIP/2.0 2000 OK",
        "SIP/2.0",
        "HTTP/1.1 200 OK",
    ] {
        let buf = format!("{line}{tail}");
        assert!(
            matches!(parse(buf.as_bytes()), Err(ParseError::InvalidStartLine(_))),
            "{line:?} → {:?}",
            parse(buf.as_bytes())
        );
    }
    // §3.1.2.? (ltgtruri): a Request-URI in angle brackets is not a URI.
    let buf = format!("INVITE <sip:bob@example.com> SIP/2.0{tail}");
    assert!(matches!(
        parse(buf.as_bytes()),
        Err(ParseError::InvalidUri(_))
    ));
}

#[test]
fn incomplete_and_non_utf8_header_sections() {
    assert_eq!(parse(b""), Err(ParseError::Incomplete));
    assert_eq!(parse(b"\r\n\r\n"), Err(ParseError::Incomplete));
    let mut head = wire(INVITE_HEAD);
    assert_eq!(parse(&head), Err(ParseError::Incomplete));
    head.extend_from_slice(b"Content-Length: 0\r\n");
    assert_eq!(parse(&head), Err(ParseError::Incomplete));
    let buf = minimal("OPTIONS", "X-Bin: \u{0}ok\n")
        .into_iter()
        .map(|b| if b == 0 { 0xff } else { b })
        .collect::<Vec<_>>();
    assert_eq!(parse(&buf), Err(ParseError::NotUtf8));
    // UTF-8 in header values is fine.
    let r = request(&minimal("OPTIONS", "Subject: Привет, мир\n"));
    assert_eq!(r.headers.get(&HeaderName::Subject), Some("Привет, мир"));
}

#[test]
fn leading_keepalive_crlfs_and_bare_lf_line_ends_are_accepted() {
    let mut buf = b"\r\n\r\n\r\n".to_vec();
    buf.extend_from_slice(&invite());
    assert_eq!(parse_ok(&buf), parse_ok(&invite()));

    let lf_only = String::from_utf8(invite()).unwrap().replace("\r\n", "\n");
    // The body loses its CRs too, so Content-Length must be recomputed for the LF version.
    let head_end = lf_only.find("\n\n").unwrap() + 2;
    let body_len = lf_only.len() - head_end;
    let lf_only = lf_only.replace(
        &format!("Content-Length: {}", wire(SDP).len()),
        &format!("Content-Length: {body_len}"),
    );
    let r = request(lf_only.as_bytes());
    assert_eq!(&r.body[..], SDP.as_bytes());
    assert_eq!(r.headers, request(&invite()).headers);
}

// ---------------------------------------------------------------------------------------------
// IPv6, tel:, responses
// ---------------------------------------------------------------------------------------------

#[test]
fn ipv6_via_host_and_uris() {
    let buf = with_body(
        "INVITE sip:bob@[2001:db8::10]:5060;transport=udp SIP/2.0
Via: SIP/2.0/UDP [::1]:5062;branch=z9hG4bKv6;received=::1;rport=5062
Via: SIP/2.0/UDP [2001:db8::1];branch=z9hG4bKv6b
From: <sip:alice@[::1]:5062>;tag=v6
To: <sip:bob@[2001:db8::10]>
Call-ID: v6@[::1]
CSeq: 1 INVITE
Contact: <sip:alice@[::1]:5062;transport=udp>
Record-Route: <sip:[2001:db8::ff];lr>
Max-Forwards: 70
",
        b"",
    );
    let r = request(&buf);
    assert_eq!(r.uri.host(), "2001:db8::10");
    assert_eq!(r.uri.port(), Some(5060));
    assert_eq!(r.uri.ip(), Some("2001:db8::10".parse().unwrap()));
    assert_eq!(r.uri.as_str(), "sip:bob@[2001:db8::10]:5060;transport=udp");
    let via = r.headers.top_via().unwrap();
    assert_eq!(via.host, "::1");
    assert_eq!(via.port, Some(5062));
    assert_eq!(via.sent_by(), "[::1]:5062");
    assert_eq!(via.received(), Some("::1"));
    assert_eq!(via.rport(), Some(Some(5062)));
    let vias = r.headers.vias().unwrap();
    assert_eq!(vias[1].host, "2001:db8::1");
    assert_eq!(vias[1].port, None);
    assert_eq!(vias[1].sent_by(), "[2001:db8::1]");
    assert_eq!(r.headers.from().unwrap().uri.host(), "::1");
    assert_eq!(r.headers.contacts().unwrap()[0].uri.port(), Some(5062));
    assert_eq!(
        r.headers.record_routes().unwrap()[0].uri.host(),
        "2001:db8::ff"
    );
    assert!(r
        .to_bytes()
        .starts_with(b"INVITE sip:bob@[2001:db8::10]:5060;transport=udp SIP/2.0\r\n"));
    assert_round_trip(&buf);
    // A bad IPv6 literal in the Request-URI is rejected.
    let bad = String::from_utf8(buf).unwrap().replace(
        "[2001:db8::10]:5060;transport",
        "[2001:db8::zz]:5060;transport",
    );
    assert!(matches!(
        parse(bad.as_bytes()),
        Err(ParseError::InvalidUri(_))
    ));
}

/// Broken IPv6 literals where hosts go (Via sent-by and `received`, the Request-URI, Contact,
/// From): every one is an error or a value, never a panic, and the typed accessors of what
/// parsed are errors too, never panics. A stamped `received` goes bare (RFC 5118 §4.5), but a
/// bracketed one from a peer is kept as a value.
#[test]
fn malformed_ipv6_hosts_are_errors_never_panics() {
    let vias = [
        "[::1",
        "[::1]]",
        "[]",
        "[::1]:",
        "[::1]:99999",
        "[::1]x",
        "[fe80::1%eth0]",
        "::1:5060",
        "[::ffff:192.0.2.1]:5060",
        "[::1];received=[::1]",
        "[::1];received=::zz;rport=x",
        "[::1];received=",
        "[[::1]]",
    ];
    let uris = [
        "sip:a@[::1",
        "sip:a@[]",
        "sip:a@[::1]:",
        "sip:[::1]]",
        "sips:[",
        "sip:a@[::1]:65536",
        "sip:a@[::1]]:5060",
        "sip:a@[:::]",
        "sip:a@::1",
        "sip:a@[::1]%25eth0",
        // A valid one, so that every broken Via is tried on a request that parses.
        "sip:a@[::1]:5060",
    ];
    let mut parsed = 0;
    for via in vias {
        for uri in uris {
            let buf = with_body(
                &format!(
                    "OPTIONS {uri} SIP/2.0
Via: SIP/2.0/UDP {via};branch=z9hG4bKbad6
From: <{uri}>;tag=x
To: <sip:b@[::1]>
Call-ID: bad6@[::1]
CSeq: 1 OPTIONS
Contact: <{uri}>
Max-Forwards: 70
"
                ),
                b"",
            );
            if let Ok(Message::Request(r)) = parse(&buf) {
                parsed += 1;
                let _ = r
                    .headers
                    .top_via()
                    .map(|v| (v.received().map(str::to_owned), v.rport()));
                let _ = r.headers.from();
                let _ = r.headers.contacts();
                let _ = r.to_bytes();
            }
        }
    }
    assert!(parsed >= 1, "the valid URI's requests parse");
    let kept = request(&with_body(
        "OPTIONS sip:a@[::1] SIP/2.0
Via: SIP/2.0/UDP [::1]:5060;branch=z9hG4bKok6;received=[::1]
From: <sip:a@[::1]>;tag=x
To: <sip:b@[::1]>
Call-ID: ok6
CSeq: 1 OPTIONS
Max-Forwards: 70
",
        b"",
    ));
    assert_eq!(kept.headers.top_via().unwrap().received(), Some("[::1]"));
    for bad in [
        "[::1",
        "[]",
        "[::1]:",
        "[::1]:99999",
        "[::1]x",
        "::1:5060",
        "[[::1]]",
    ] {
        assert!(
            sip_core::Via::parse(&format!("SIP/2.0/UDP {bad};branch=z9hG4bK1")).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn tel_uris() {
    let buf = with_body(
        "INVITE tel:+1-201-555-0123;phone-context=example.com SIP/2.0
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKtel
From: <tel:+15551234>;tag=t
To: <tel:+1-201-555-0123>
P-Asserted-Identity: <tel:+15551234>
Call-ID: tel@x
CSeq: 1 INVITE
",
        b"",
    );
    let r = request(&buf);
    assert_eq!(r.uri.scheme(), &Scheme::Tel);
    assert_eq!(r.uri.user(), Some("+1-201-555-0123"));
    assert_eq!(r.uri.host(), "");
    assert_eq!(r.uri.params().value("phone-context"), Some("example.com"));
    let to = r.headers.to().unwrap();
    assert_eq!(to.uri.scheme(), &Scheme::Tel);
    assert_eq!(to.uri.user(), Some("+1-201-555-0123"));
    assert_eq!(r.headers.from().unwrap().tag(), Some("t"));
    assert_round_trip(&buf);
}

fn rfc3665_200_ok() -> Vec<u8> {
    with_body(
        "SIP/2.0 200 OK
Via: SIP/2.0/UDP ss1.example.com:5060;branch=z9hG4bK2d4790.1;received=192.0.2.111
Via: SIP/2.0/UDP client.atlanta.example.com:5060;branch=z9hG4bK74bf9;received=192.0.2.101
Record-Route: <sip:ss1.example.com;lr>
From: Alice <sip:alice@atlanta.example.com>;tag=9fxced76sl
To: Bob <sip:bob@biloxi.example.com>;tag=314159
Call-ID: 3848276298220188511@atlanta.example.com
CSeq: 1 INVITE
Contact: <sip:bob@client.biloxi.example.com>
Content-Type: application/sdp
",
        &wire(
            "v=0
o=bob 2890844527 2890844527 IN IP4 client.biloxi.example.com
s=-
c=IN IP4 192.0.2.201
t=0 0
m=audio 3456 RTP/AVP 0
a=rtpmap:0 PCMU/8000
",
        ),
    )
}

#[test]
fn responses_with_reason_phrases_containing_spaces() {
    let ok = response(&rfc3665_200_ok());
    assert_eq!(ok.status, 200);
    assert_eq!(ok.reason, "OK");
    assert_eq!(ok.class(), 2);
    assert!(!ok.is_provisional());
    assert_eq!(ok.headers.to().unwrap().tag(), Some("314159"));
    assert_eq!(ok.headers.vias().unwrap().len(), 2);
    assert_eq!(ok.headers.record_routes().unwrap().len(), 1);
    assert!(ok.body.starts_with(b"v=0\r\n"));

    for (line, status, reason) in [
        (
            "SIP/2.0 481 Call/Transaction Does Not Exist",
            481,
            "Call/Transaction Does Not Exist",
        ),
        ("SIP/2.0 183 Session Progress", 183, "Session Progress"),
        ("SIP/2.0 180 Ringing", 180, "Ringing"),
        (
            "SIP/2.0 500   Server   Internal  Error ",
            500,
            "Server   Internal  Error",
        ),
        // RFC 4475 §3.1.1.? (unreason): UTF-8 and digits in the reason phrase.
        (
            "SIP/2.0 200 = 2**3 * 5**2 но сто девяносто девять - простое",
            200,
            "= 2**3 * 5**2 но сто девяносто девять - простое",
        ),
        // RFC 4475 §3.1.1.? (noreason): an empty reason phrase.
        ("SIP/2.0 100 ", 100, ""),
        ("SIP/2.0 699 x", 699, "x"),
    ] {
        let buf = with_body(
            &format!(
                "{line}
Via: SIP/2.0/UDP h;branch=z9hG4bK1
From: <sip:a@h>;tag=1
To: <sip:b@h>;tag=2
Call-ID: reason@h
CSeq: 5 INVITE
"
            ),
            b"",
        );
        let r = response(&buf);
        assert_eq!((r.status, r.reason.as_str()), (status, reason), "{line:?}");
        assert!(r
            .to_bytes()
            .starts_with(format!("SIP/2.0 {status} {reason}\r\n").as_bytes()));
        assert_round_trip(&buf);
    }
}

// ---------------------------------------------------------------------------------------------
// RFC 4475 torture tests
// ---------------------------------------------------------------------------------------------

/// RFC 4475 §3.1.1.1 "wsinv", verbatim except for the fixture's line ends.
const WSINV: &str = "INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0
TO :
 sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n
from   : \"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>
  ;
  tag = 98asjd8
MaX-fOrWaRdS: 0068
Call-ID: wsinv.ndaksdj@192.0.2.1
Content-Length   : 150
cseq: 0009
  INVITE
Via  : SIP  /   2.0
 /UDP
    192.0.2.2;branch=390skdjuw
s :
NewFangledHeader:   newfangled value
 continued newfangled value
UnknownHeaderWithUnusualValue: ;;,,;;,;
Content-Type: application/sdp
Route:
 <sip:services.example.com;lr;unknownwith=value;unknown-no-value>
v:  SIP  / 2.0  / TCP     spindle.example.com   ;
  branch  =   z9hG4bK9ikj8  ,
 SIP  /    2.0   / UDP  192.168.255.111   ; branch=
 z9hG4bK30239
m:\"Quoted string \\\"\\\"\" <sip:jdrosen@example.com> ; newparam =
      newvalue ;
  secondparam ; q = 0.33

v=0
o=mhandley 29739 7272939 IN IP4 192.0.2.3
s=-
c=IN IP4 192.0.2.4
t=0 0
m=audio 49217 RTP/AVP 0 12
m=video 3227 RTP/AVP 31
a=rtpmap:31 LPC
";

fn check_wsinv(r: &Request) {
    let h = &r.headers;
    assert_eq!(r.body.len(), 150);
    assert_eq!(r.uri.params().get("unknownparam"), Some(None));
    let to = h.to().unwrap();
    assert_eq!(to.uri.user(), Some("vivekg"));
    assert_eq!(to.tag(), Some("1918181833n"));
    let from = h.from().unwrap();
    assert_eq!(from.display_name.as_deref(), Some("J Rosenberg \\\""));
    assert_eq!(from.tag(), Some("98asjd8"));
    assert_eq!(h.call_id(), Some("wsinv.ndaksdj@192.0.2.1"));
    assert_eq!(h.cseq().unwrap().seq, 9);
    let vias = h.vias().unwrap();
    assert_eq!(vias.len(), 3);
    assert_eq!(vias[0].host, "192.0.2.2");
    assert_eq!(vias[0].branch(), Some("390skdjuw"));
    assert!(!vias[0].has_rfc3261_branch());
    assert_eq!(vias[1].transport, Transport::Tcp);
    assert_eq!(vias[1].host, "spindle.example.com");
    assert_eq!(vias[1].branch(), Some("z9hG4bK9ikj8"));
    assert_eq!(vias[2].host, "192.168.255.111");
    assert_eq!(vias[2].branch(), Some("z9hG4bK30239"));
    assert_eq!(h.routes().unwrap()[0].uri.host(), "services.example.com");
    let m = &h.contacts().unwrap()[0];
    assert_eq!(m.display_name.as_deref(), Some("Quoted string \"\""));
    assert_eq!(m.params.value("newparam"), Some("newvalue"));
    assert_eq!(m.params.get("secondparam"), Some(None));
    assert_eq!(m.params.value("q"), Some("0.33"));
    assert_eq!(
        h.get(&HeaderName::parse("NewFangledHeader")),
        Some("newfangled value continued newfangled value")
    );
    assert_eq!(
        h.get(&HeaderName::parse("UnknownHeaderWithUnusualValue")),
        Some(";;,,;;,;")
    );
    assert_eq!(h.get(&HeaderName::Subject), Some(""));
}

/// wsinv with `Max-Forwards: 68` instead of `0068` (see `max_forwards_with_leading_zeros_is_valid`):
/// everything else in the torture test must be understood.
#[test]
fn rfc4475_wsinv_whitespace_torture() {
    let buf = wire(&WSINV.replace("MaX-fOrWaRdS: 0068", "MaX-fOrWaRdS: 68"));
    let r = request(&buf);
    check_wsinv(&r);
    assert_eq!(r.headers.max_forwards(), Some(Ok(68)));
    // Written back and re-parsed, the typed view is unchanged.
    let again = request(&r.to_bytes());
    check_wsinv(&again);
}

#[test]
fn rfc4475_wsinv_verbatim() {
    let r = request(&wire(WSINV));
    check_wsinv(&r);
    assert_eq!(r.headers.max_forwards(), Some(Ok(68)));
}

#[test]
fn rfc4475_insuf_missing_headers() {
    // §3.1.2.? (insuf): no Call-ID, From, or To.
    let buf = wire(
        "INVITE sip:user@example.com SIP/2.0
CSeq: 193942 INVITE
Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf
Content-Type: application/sdp
l: 0

",
    );
    assert!(matches!(parse(&buf), Err(ParseError::MissingHeader(_))));
}

#[test]
fn rfc4475_mcl01_multiple_content_lengths() {
    // §3.1.2.? (mcl01): several conflicting Content-Length values.
    let buf = wire(
        "OPTIONS sip:user@example.com SIP/2.0
Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bK293423
To: sip:user@example.com
From: sip:other@example.net;tag=3923942
Call-ID: mcl01.fhn2323orihawfdoa3o4r52o3irsdf
CSeq: 15932 OPTIONS
Content-Length: 13
Max-Forwards: 60
Content-Length: 5
Content-Type: text/plain

There's no way to know how many octets are supposed to be here.
",
    );
    assert!(matches!(parse(&buf), Err(ParseError::InvalidHeader(_))));
}

// ---------------------------------------------------------------------------------------------
// 400 Bad Request for malformed requests
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_request_for_a_malformed_request_with_a_good_via() {
    let limits = ParseLimits::default();
    let buf = String::from_utf8(invite())
        .unwrap()
        .replace("Max-Forwards: 70", "Max-Forwards: lots");
    let err = parse(buf.as_bytes()).unwrap_err();
    assert!(matches!(err, ParseError::InvalidHeader(_)));
    let resp = bad_request_for(buf.as_bytes(), &err, &limits).expect("a 400");
    assert_eq!(resp.status, 400);
    assert!(resp.reason.starts_with("Bad Request ("), "{}", resp.reason);
    assert!(resp.reason.len() <= 120 * 4);
    assert!(!resp.reason.chars().any(char::is_control));
    let h = &resp.headers;
    let via = h.top_via().unwrap();
    assert_eq!(via.branch(), Some("z9hG4bK74bf9"));
    assert_eq!(via.rport(), Some(None));
    assert_eq!(h.from().unwrap().tag(), Some("9fxced76sl"));
    assert_eq!(h.to().unwrap().uri.user(), Some("bob"));
    assert_eq!(h.call_id(), Some("3848276298220188511@atlanta.example.com"));
    assert_eq!(h.cseq().unwrap().method, Method::Invite);
    // Only the response headers of §8.2.6.2 are copied.
    assert!(!h.contains(&HeaderName::Contact));
    assert!(!h.contains(&HeaderName::MaxForwards));
    assert!(resp.body.is_empty());
    // The 400 is itself a valid message.
    let back = response(&resp.to_bytes());
    assert_eq!(back, resp);
}

#[test]
fn bad_request_for_other_malformations_with_a_good_via() {
    let limits = ParseLimits::default();
    let full = String::from_utf8(minimal("INVITE", "")).unwrap();
    let cases = [
        full.replace("CSeq: 7 INVITE", "CSeq: 7 BYE"),
        full.replace("From: <sip:alice@example.com>;tag=a1\r\n", ""),
        full.replace(
            "INVITE sip:bob@example.com SIP/2.0",
            "INVITE sip:bob@example.com SIP/3.0",
        ),
        full.replace("Content-Length: 0", "Content-Length: 500"), // truncated body
        full.replace("To: <sip:bob@example.com>", "To: <sip:bob@example.com"),
    ];
    for buf in cases {
        let err = parse(buf.as_bytes()).unwrap_err();
        let resp = bad_request_for(buf.as_bytes(), &err, &limits)
            .unwrap_or_else(|| panic!("no 400 for {err:?}"));
        assert_eq!(resp.status, 400);
        assert_eq!(
            resp.headers.top_via().unwrap().branch(),
            Some("z9hG4bKmin1"),
            "{err:?}"
        );
        assert!(resp
            .reason
            .contains(&err.to_string()[..20.min(err.to_string().len())]));
    }
}

#[test]
fn no_bad_request_for_garbage_ack_responses_or_bad_via() {
    let limits = ParseLimits::default();
    let none = |buf: &[u8]| {
        let err = parse(buf).unwrap_err();
        bad_request_for(buf, &err, &limits)
    };
    // Garbage.
    assert!(none(b"\x00\x01\x02 garbage \xff\xfe").is_none());
    assert!(none(b"hello world\r\n\r\n").is_none());
    assert!(none(b"").is_none());
    assert!(none(&[0xffu8; 64]).is_none());
    // A malformed ACK is never answered (RFC 3261 §17.2.1: no response to ACK).
    let ack = String::from_utf8(minimal("ACK", ""))
        .unwrap()
        .replace("CSeq: 7 ACK", "CSeq: 7 INVITE");
    assert!(none(ack.as_bytes()).is_none());
    // A malformed response is never answered.
    let resp = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nCSeq: 1 INVITE\r\n\r\n";
    assert!(none(resp.as_bytes()).is_none());
    // No usable Via: nowhere to send the 400.
    let no_via = String::from_utf8(minimal("INVITE", "")).unwrap().replace(
        "Via: SIP/2.0/UDP 192.0.2.1:5060",
        "Via: SIP/2.0/BOGUS 192.0.2.1:5060",
    );
    assert!(none(no_via.as_bytes()).is_none());
    // Too large: not answered from here.
    let huge = invite_of_size(70_000);
    assert!(none(&huge).is_none());
}
