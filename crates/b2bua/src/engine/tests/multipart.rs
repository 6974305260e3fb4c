//! SIP-I (multipart) bodies: the SDP reaches the media session and the other leg, the ISUP
//! never does ([`crate::body`]).

use super::*;

fn sip_i(sdp: &str) -> String {
    format!(
        "--sipi\r\nContent-Type: application/sdp\r\n\r\n{sdp}\r\n\
         --sipi\r\nContent-Type: application/ISUP; version=itu-t92+\r\n\r\n\
         ISUP-IAM-calling-1001\r\n--sipi--\r\n"
    )
}

fn as_multipart(message: Message) -> Message {
    let mut message = message;
    let (headers, body) = match &mut message {
        Message::Request(r) => (&mut r.headers, &mut r.body),
        Message::Response(r) => (&mut r.headers, &mut r.body),
    };
    let sdp = String::from_utf8(body.to_vec()).unwrap();
    *body = Bytes::from(sip_i(&sdp));
    headers.set(HeaderName::ContentType, "multipart/mixed;boundary=sipi");
    message
}

#[test]
fn sip_i_invite_and_answer_cross_as_sdp_only() {
    let mut h = Harness::new();
    h.control.make_call(h.now, "1001", "2001", "3001").unwrap();
    let invite = as_multipart(leg_a_invite("1001", "2001", "z9hG4bKa1", SDP_A));
    h.feed(&invite, phone());
    let b_invite = find_request(&h.sent(), "INVITE");
    assert_eq!(b_invite.headers.content_type(), Some("application/sdp"));
    let text = String::from_utf8(b_invite.body.to_vec()).unwrap();
    assert!(!text.contains("ISUP") && !text.contains("1001"), "{text}");
    assert_eq!(
        towards(&b_invite.body),
        "b",
        "the SDP went through the media session"
    );
    // The callee's SIP-I answer: leg A gets its SDP, anchored, and nothing else.
    h.feed(
        &as_multipart(answer(&b_invite, 200, "btag", SDP_B)),
        trunk(),
    );
    let sent = h.sent();
    let Some((_, Message::Response(ok))) = sent.iter().find(|(p, _)| *p == phone()) else {
        panic!("no answer to leg A");
    };
    assert_eq!(ok.status, 200);
    assert_eq!(ok.headers.content_type(), Some("application/sdp"));
    assert_eq!(towards(&ok.body), "a");
    assert!(!String::from_utf8_lossy(&ok.body).contains("ISUP"));
}
