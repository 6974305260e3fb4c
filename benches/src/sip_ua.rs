//! The scripted phones and trunk callee of the load tools: one UDP socket per role, SIP written
//! as text and read back with [`sip_core::Message::parse`], and the exchanges that bridge a call
//! through callbridge and hang it up again.
//!
//! It exists apart from sip-tests' `TestUa` because the load tools must not depend on sip-tests
//! (which starts the whole server in-process): a tool run fails with an error instead of a
//! panic, skips what it is not waiting for instead of asserting on it, and counts what it
//! skipped. The pieces both need — the SDP body and the callee's reply — live here and
//! sip-tests uses them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sip_core::{HeaderName, Message, Method, ParseLimits, Request, Response};
use tokio::net::UdpSocket;

use crate::http;
use crate::rtp::{bind_rtp, CallMedia};

/// How long a SIP step may take before the run is abandoned.
pub const SIP_WAIT: Duration = Duration::from_secs(5);

/// The dedicated number the phones dial, and the target callbridge bridges them to.
const DIALLED: &str = "2001";
const TARGET: &str = "3001";

/// A minimal audio SDP offer or answer (PCMU and telephone-event, sendrecv) whose media address
/// is `addr` (`IN IP4`, or `IN IP6` for an IPv6 address), with an `a=ptime` line when
/// `ptime_ms` is given.
pub fn audio_sdp(addr: SocketAddr, session_id: u64, ptime_ms: Option<u32>) -> String {
    let ptime = ptime_ms
        .map(|ms| format!("a=ptime:{ms}\r\n"))
        .unwrap_or_default();
    let family = if addr.is_ipv6() { "IP6" } else { "IP4" };
    format!(
        "v=0\r\no=- {session_id} 1 IN {family} {ip}\r\ns=-\r\nc=IN {family} {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\n{ptime}a=sendrecv\r\n",
        ip = addr.ip(),
        port = addr.port()
    )
}

/// The load tools' SDP: [`audio_sdp`] with 20 ms packets, the PCMU packets they send.
fn sdp(addr: SocketAddr, session_id: u64) -> String {
    audio_sdp(addr, session_id, Some(20))
}

/// The media address (`c=` IP, IPv4 or IPv6, first `m=` port) of an SDP body.
pub fn sdp_media_addr(body: &[u8]) -> Result<SocketAddr, String> {
    let text = String::from_utf8_lossy(body);
    let ip: std::net::IpAddr = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("c=IN IP4 ")
                .or_else(|| l.strip_prefix("c=IN IP6 "))
        })
        .map(str::trim)
        .ok_or_else(|| format!("no c= line in SDP:\n{text}"))?
        .parse()
        .map_err(|e| format!("SDP c= address: {e}"))?;
    let port = text
        .lines()
        .find_map(|l| l.strip_prefix("m="))
        .and_then(|m| m.split_whitespace().nth(1))
        .and_then(|p| p.parse::<u16>().ok())
        .ok_or_else(|| format!("no m= port in SDP:\n{text}"))?;
    Ok(SocketAddr::new(ip, port))
}

/// The callee's response to `request` (callbridge's INVITE or a request on leg B): the To tag
/// `tag` added if the request had none, a Contact on 101–299 (the responses that make or
/// confirm a dialog), and `sdp_body` as an `application/sdp` body if given.
pub fn callee_reply(request: &Request, status: u16, tag: &str, sdp_body: Option<&str>) -> Response {
    let mut response = Response::to_request(request, status, None);
    if let Ok(to) = response.headers.to() {
        if to.tag().is_none() {
            response
                .headers
                .set(HeaderName::To, to.with_tag(tag).to_string());
        }
    }
    if status > 100 && status < 300 {
        response
            .headers
            .push(HeaderName::Contact, "<sip:callee@127.0.0.1>");
        // A UAS copies the Record-Route of a dialog-creating request into its answers
        // (RFC 3261 §12.1.1), so that a proxy in the path stays in it.
        for route in request.headers.get_all(&HeaderName::RecordRoute) {
            response.headers.push(HeaderName::RecordRoute, route);
        }
    }
    if let Some(body) = sdp_body {
        response
            .headers
            .push(HeaderName::ContentType, "application/sdp");
        response.body = body.to_owned().into_bytes().into();
    }
    response
}

/// Writes a request or response from a head (lines without CRLF) and a body.
fn sip_text(lines: &[String], body: &str) -> Vec<u8> {
    let mut text = lines.join("\r\n");
    if !body.is_empty() {
        text.push_str("\r\nContent-Type: application/sdp");
    }
    text.push_str(&format!("\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
    text.into_bytes()
}

/// A Call-ID, tag or branch unique within this process (and across runs, by the clock).
pub fn new_token(prefix: &str, n: usize) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let c = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}{n}x{c}x{nanos:x}")
}

/// One UDP SIP endpoint of the tool; skips what the caller is not waiting for.
pub struct SipSocket {
    socket: UdpSocket,
    pub local: SocketAddr,
    limits: ParseLimits,
    buf: Vec<u8>,
    /// Messages received that were not the one waited for (retransmissions, provisional
    /// responses, …), for the report.
    pub skipped: u64,
}

impl SipSocket {
    pub async fn bind(addr: &str) -> Result<SipSocket, String> {
        let socket = UdpSocket::bind(addr)
            .await
            .map_err(|e| format!("bind {addr}: {e}"))?;
        let local = socket.local_addr().map_err(|e| e.to_string())?;
        Ok(SipSocket {
            socket,
            local,
            limits: ParseLimits::default(),
            buf: vec![0; 65536],
            skipped: 0,
        })
    }

    pub async fn send(&self, bytes: &[u8], to: SocketAddr) -> Result<(), String> {
        self.socket
            .send_to(bytes, to)
            .await
            .map(|_| ())
            .map_err(|e| format!("SIP send: {e}"))
    }

    /// The next message for which `want` holds, within [`SIP_WAIT`].
    pub async fn wait_for(
        &mut self,
        what: &str,
        mut want: impl FnMut(&Message) -> bool,
    ) -> Result<(Message, SocketAddr), String> {
        let deadline = tokio::time::Instant::now() + SIP_WAIT;
        loop {
            let (len, from) =
                tokio::time::timeout_at(deadline, self.socket.recv_from(&mut self.buf))
                    .await
                    .map_err(|_| format!("{}: no {what} within {SIP_WAIT:?}", self.local))?
                    .map_err(|e| format!("SIP recv: {e}"))?;
            match Message::parse(&self.buf[..len], &self.limits) {
                Ok(message) if want(&message) => return Ok((message, from)),
                _ => self.skipped += 1,
            }
        }
    }
}

fn is_response(m: &Message, call_id: &str, status: u16, method: Method) -> bool {
    match m {
        Message::Response(r) => {
            r.status == status
                && r.headers.call_id() == Some(call_id)
                && r.headers
                    .cseq()
                    .map(|c| c.method == method)
                    .unwrap_or(false)
        }
        Message::Request(_) => false,
    }
}

fn is_request(m: &Message, method: Method, call_id: Option<&str>) -> bool {
    match m {
        Message::Request(r) => {
            r.method == method
                && match call_id {
                    Some(id) => r.headers.call_id() == Some(id),
                    None => true,
                }
        }
        Message::Response(_) => false,
    }
}

/// The phone's side of leg A, as far as the tool needs it to hang up.
pub struct LegA {
    telnum: String,
    call_id: String,
    from_tag: String,
    /// callbridge's To tag and Contact on leg A.
    remote_tag: String,
    remote_target: String,
}

/// One call bridged by callbridge: the phone's dialog and the media sockets of both ends.
pub struct BridgedCall {
    pub leg_a: LegA,
    pub media: CallMedia,
}

/// Registers intent `n` over the API, has the phone call the dedicated number, answers
/// callbridge's INVITE on the trunk with SDP, and ACKs callbridge's 200: the call is up, and its
/// relay addresses are known from the two SDP bodies callbridge sent.
pub async fn setup_call(
    n: usize,
    api: SocketAddr,
    sip: SocketAddr,
    phone: &mut SipSocket,
    callee: &mut SipSocket,
) -> Result<BridgedCall, String> {
    let telnum = format!("{}", 100_000 + n);
    let body = format!(r#"{{"caller":"{DIALLED}","callee":"{TARGET}"}}"#);
    let (status, reply) = http::exchange(
        api,
        "POST",
        &format!("/api/user/{telnum}/makecall"),
        Some(&body),
    )
    .await?;
    if status != 200 {
        return Err(format!("makecall {telnum}: {status} {reply}"));
    }
    let phone_rtp = bind_rtp("phone").await?;
    let callee_rtp = bind_rtp("callee").await?;
    let phone_media = phone_rtp.local_addr().map_err(|e| e.to_string())?;
    let callee_media = callee_rtp.local_addr().map_err(|e| e.to_string())?;

    // Leg A: the phone's INVITE, SDP pointing at the phone's RTP socket.
    let call_id = new_token("load", n);
    let from_tag = new_token("pt", n);
    let offer = sdp(phone_media, n as u64 + 1);
    let invite = sip_text(
        &[
            format!("INVITE sip:{DIALLED}@{sip} SIP/2.0"),
            format!(
                "Via: SIP/2.0/UDP {};branch=z9hG4bK{};rport",
                phone.local,
                new_token("b", n)
            ),
            "Max-Forwards: 70".into(),
            format!("From: <sip:{telnum}@phone.test>;tag={from_tag}"),
            format!("To: <sip:{DIALLED}@{sip}>"),
            format!("Call-ID: {call_id}"),
            "CSeq: 1 INVITE".into(),
            format!("Contact: <sip:{telnum}@{}>", phone.local),
        ],
        &offer,
    );
    phone.send(&invite, sip).await?;

    // Leg B: callbridge's INVITE to the trunk; answer 200 with SDP at the callee's RTP socket.
    let (leg_b, from) = callee
        .wait_for("INVITE on leg B", |m| {
            is_request(m, Method::Invite, None)
                && m.headers().to().map(|t| t.tag().is_none()).unwrap_or(false)
        })
        .await?;
    let Message::Request(leg_b) = leg_b else {
        unreachable!()
    };
    let relay_for_callee = sdp_media_addr(&leg_b.body)?;
    let b_call_id = leg_b.headers.call_id().unwrap_or_default().to_owned();
    let callee_tag = new_token("ct", n);
    let answer = sdp(callee_media, n as u64 + 1_000_000);
    let ok = callee_reply(&leg_b, 200, &callee_tag, Some(&answer));
    callee.send(&ok.to_bytes(), from).await?;

    // Leg A answered: learn callbridge's tag, Contact and relay port; ACK.
    let (ok, _) = phone
        .wait_for("200 to the INVITE on leg A", |m| {
            is_response(m, &call_id, 200, Method::Invite)
        })
        .await?;
    let Message::Response(ok) = ok else {
        unreachable!()
    };
    let relay_for_phone = sdp_media_addr(&ok.body)?;
    let remote_tag = ok
        .headers
        .to()
        .ok()
        .and_then(|t| t.tag().map(str::to_owned))
        .ok_or("no To tag in callbridge's 200")?;
    let remote_target = ok
        .headers
        .contacts()
        .ok()
        .and_then(|c| c.first().map(|c| c.uri.as_str().to_owned()))
        .unwrap_or_else(|| format!("sip:{sip}"));
    let call = BridgedCall {
        leg_a: LegA {
            telnum,
            call_id,
            from_tag,
            remote_tag,
            remote_target,
        },
        media: CallMedia {
            phone_rtp: Arc::new(phone_rtp),
            callee_rtp: Arc::new(callee_rtp),
            relay_for_phone,
            relay_for_callee,
        },
    };
    phone
        .send(
            &in_dialog_a(&call.leg_a, phone.local, sip, "ACK", 1, n),
            sip,
        )
        .await?;
    callee
        .wait_for("ACK on leg B", |m| {
            is_request(m, Method::Ack, Some(&b_call_id))
        })
        .await?;
    Ok(call)
}

/// A request from the phone inside leg A's dialog.
fn in_dialog_a(
    leg: &LegA,
    local: SocketAddr,
    sip: SocketAddr,
    method: &str,
    cseq: u32,
    n: usize,
) -> Vec<u8> {
    sip_text(
        &[
            format!("{method} {} SIP/2.0", leg.remote_target),
            format!(
                "Via: SIP/2.0/UDP {local};branch=z9hG4bK{};rport",
                new_token("b", n)
            ),
            "Max-Forwards: 70".into(),
            format!("From: <sip:{}@phone.test>;tag={}", leg.telnum, leg.from_tag),
            format!("To: <sip:{DIALLED}@{sip}>;tag={}", leg.remote_tag),
            format!("Call-ID: {}", leg.call_id),
            format!("CSeq: {cseq} {method}"),
            format!("Contact: <sip:{}@{local}>", leg.telnum),
        ],
        "",
    )
}

/// Phone's BYE; callbridge BYEs leg B, the callee answers 200, the phone gets its 200.
pub async fn hang_up(
    n: usize,
    leg: &LegA,
    sip: SocketAddr,
    phone: &mut SipSocket,
    callee: &mut SipSocket,
) -> Result<(), String> {
    phone
        .send(&in_dialog_a(leg, phone.local, sip, "BYE", 2, n), sip)
        .await?;
    let (bye, from) = callee
        .wait_for("BYE on leg B", |m| is_request(m, Method::Bye, None))
        .await?;
    let Message::Request(bye) = bye else {
        unreachable!()
    };
    let ok = callee_reply(&bye, 200, "unused", None);
    callee.send(&ok.to_bytes(), from).await?;
    phone
        .wait_for("200 to BYE on leg A", |m| {
            is_response(m, &leg.call_id, 200, Method::Bye)
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdp_media_address_round_trips() {
        let addr: SocketAddr = "127.0.0.1:40002".parse().unwrap();
        let with = audio_sdp(addr, 7, Some(20));
        assert!(with.contains("a=ptime:20\r\na=sendrecv\r\n"), "{with}");
        assert_eq!(sdp_media_addr(with.as_bytes()), Ok(addr));
        let without = audio_sdp(addr, 7, None);
        assert_eq!(without, with.replace("a=ptime:20\r\n", ""));
        assert!(sdp_media_addr(b"v=0\r\nm=audio 4 RTP/AVP 0\r\n").is_err());
        let v6: SocketAddr = "[::1]:40002".parse().unwrap();
        let sdp = audio_sdp(v6, 7, None);
        assert!(sdp.contains("o=- 7 1 IN IP6 ::1\r\n") && sdp.contains("c=IN IP6 ::1\r\n"));
        assert_eq!(sdp_media_addr(sdp.as_bytes()), Ok(v6));
    }

    #[test]
    fn written_requests_parse_and_match() {
        let text = sip_text(
            &[
                "BYE sip:a@127.0.0.1 SIP/2.0".into(),
                "Via: SIP/2.0/UDP 127.0.0.1:5;branch=z9hG4bKx".into(),
                "From: <sip:p@phone.test>;tag=1".into(),
                "To: <sip:2001@127.0.0.1>;tag=2".into(),
                "Call-ID: c1".into(),
                "CSeq: 2 BYE".into(),
            ],
            "",
        );
        let message = Message::parse(&text, &ParseLimits::default()).unwrap();
        assert!(is_request(&message, Method::Bye, Some("c1")));
        assert!(!is_request(&message, Method::Bye, Some("c2")));
        let Message::Request(bye) = message else {
            unreachable!()
        };
        let ok = Message::Response(callee_reply(&bye, 200, "unused", None));
        assert!(is_response(&ok, "c1", 200, Method::Bye));
        assert!(!is_response(&ok, "c1", 200, Method::Invite));
        // The request's To tag is kept.
        assert_eq!(ok.headers().to().unwrap().tag(), Some("2"));
    }
}
