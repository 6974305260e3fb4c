//! The benchmarks' shared parts: fixtures for the criterion benches, and the pieces of the load
//! tools (`src/bin/media_load.rs`) split by what they know about.
//!
//! - [`process`]: the spawned server's CPU seconds and PSS from `/proc`, the load average, and
//!   the guard that stops it.
//! - [`http`]: the bare HTTP/1.1 client for callbridge's API and `/metrics`.
//! - [`sip_ua`]: the scripted phone and trunk callee that bridge calls through callbridge.
//! - [`rtp`]: the RTP generator and checker that measures a relay.
//! - [`rtpengine`]: the reference relay's command line and `ng` client.
//! - [`webhook_receiver`]: a webhook target that verifies signatures and fails on demand.
//!
//! sip-tests uses [`sip_ua::audio_sdp`], [`sip_ua::callee_reply`] and [`http::exchange`] rather
//! than keeping copies; this crate cannot use sip-tests, which starts the whole server.

pub mod http;
pub mod process;
pub mod rtp;
pub mod rtpengine;
pub mod sip_ua;
pub mod webhook_receiver;

/// A typical audio SDP offer (PCMU, PCMA, telephone-event), 255 bytes: the body of
/// [`typical_invite`] and the input of the SDP rewrite bench.
pub const TYPICAL_SDP: &str = "v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 client.atlanta.example.com\r\n\
s=-\r\n\
c=IN IP4 192.0.2.101\r\n\
t=0 0\r\n\
m=audio 49172 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n";

/// A typical INVITE with an SDP offer as a B2BUA receives it from a proxy (RFC 3665 §3.1 F4
/// style: two Via rows, Record-Route, compact and long header names), about 900 bytes.
pub fn typical_invite() -> Vec<u8> {
    let sdp = TYPICAL_SDP;
    let head = "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP ss1.example.com:5060;branch=z9hG4bK2d4790.1;rport\r\n\
Via: SIP/2.0/UDP client.atlanta.example.com:5060;branch=z9hG4bK74bf9;received=192.0.2.101;rport=5060\r\n\
Max-Forwards: 69\r\n\
Record-Route: <sip:ss1.example.com;lr>\r\n\
From: \"Alice Liddell\" <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
Call-ID: 3848276298220188511@atlanta.example.com\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:alice@client.atlanta.example.com;transport=udp>\r\n\
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, UPDATE\r\n\
Supported: replaces, timer\r\n\
Session-Expires: 1800;refresher=uac\r\n\
User-Agent: Atlanta Phone 1.0\r\n\
Content-Type: application/sdp\r\n";
    format!("{head}Content-Length: {}\r\n\r\n{sdp}", sdp.len()).into_bytes()
}

#[cfg(test)]
mod tests {
    #[test]
    fn typical_invite_parses() {
        let buf = super::typical_invite();
        assert!((800..1000).contains(&buf.len()), "{}", buf.len());
        sip_core::Message::parse(&buf, &sip_core::ParseLimits::default()).unwrap();
    }
}
