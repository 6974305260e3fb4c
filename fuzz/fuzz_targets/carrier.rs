//! Fuzz target for what callbridge reads from a carrier beyond the message grammar: digest
//! challenges (401/407, answered through the `digest_auth` crate, whose own parser panicked on
//! non-ASCII input until callbridge refused such challenges before it), multipart SIP-I bodies
//! reduced to their SDP, Session-Expires/Min-SE and the hold check of an SDP body. Any input
//! that parses as a SIP message must go through all of them without a panic, and the multipart
//! reduction must leave either no body or an `application/sdp` one cut from the input.
#![no_main]

use b2bua::auth::{self, Credentials};
use b2bua::session_timer::{self, SessionTimerConfig};
use libfuzzer_sys::fuzz_target;
use sip_core::{HeaderName, Message, Method, ParseLimits, Request, Uri};

fuzz_target!(|data: &[u8]| {
    let Ok(message) = Message::parse(data, &ParseLimits::default()) else {
        return;
    };
    let credentials = Credentials {
        username: "2001".into(),
        password: "secret".into(),
    };
    let mut invite = Request::new(Method::Invite, Uri::sip(Some("3001"), "carrier.test", None));
    invite.headers.push(HeaderName::CSeq, "1 INVITE");
    if let Message::Response(response) = &message {
        for rounds in [0, 1, auth::MAX_ROUNDS] {
            if let Ok(retry) = auth::answer(&invite, response, Some(&credentials), rounds) {
                let _ = retry.to_bytes();
            }
        }
    }
    let headers = match &message {
        Message::Request(r) => &r.headers,
        Message::Response(r) => &r.headers,
    };
    let _ = session_timer::session_expires(headers);
    let _ = session_timer::min_se(headers);
    let _ = session_timer::negotiate_uas(headers, SessionTimerConfig::default());
    let _ = session_timer::uac_timer(headers);
    let original = message.to_bytes();
    let mut reduced = message.clone();
    if b2bua::body::keep_sdp_only(&mut reduced) {
        let (headers, body) = match &reduced {
            Message::Request(r) => (&r.headers, &r.body),
            Message::Response(r) => (&r.headers, &r.body),
        };
        if body.is_empty() {
            assert!(headers.content_type().is_none());
        } else {
            assert_eq!(headers.content_type(), Some("application/sdp"));
            assert!(
                original.windows(body.len()).any(|w| w == &body[..]),
                "the SDP part is not from the input"
            );
        }
        let _ = b2bua::media::sdp::is_hold(body);
        let _ = reduced.to_bytes();
    }
});
