//! Media anchoring end to end: RTP and RTCP between a scripted phone and callee, through
//! callbridge's relay, over real loopback UDP sockets. Every test ends with every relay port
//! of the range bindable again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sip_core::{HeaderName, Message, Method, Request, Response};
use sip_tests::bridge::{
    assert_anchored, expect_request, media_port, Bridge, CalleeDialog, Options, Phone,
};
use sip_tests::ports::free_range;
use sip_tests::TestUa;
use tokio::net::UdpSocket;

const WAIT: Duration = Duration::from_secs(5);

async fn socket() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind RTP socket")
}

/// An RTP packet: version 2, PCMU, the given sequence number, a payload that names it.
fn rtp(seq: u16, ssrc: u32) -> Vec<u8> {
    let mut packet = vec![0x80, 0x00];
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    packet.extend_from_slice(&ssrc.to_be_bytes());
    packet.extend((0..160u32).map(|i| (i as u8) ^ (seq as u8) ^ (ssrc as u8)));
    packet
}

/// A minimal RTCP receiver report (version 2, PT 201).
fn rtcp(ssrc: u32) -> Vec<u8> {
    let mut packet = vec![0x80, 201, 0x00, 0x01];
    packet.extend_from_slice(&ssrc.to_be_bytes());
    packet
}

/// An SDP offer/answer with RTP at `rtp` and, if given, RTCP at `rtcp` (`a=rtcp`).
fn sdp_with(rtp: SocketAddr, rtcp: Option<SocketAddr>, direction: &str) -> String {
    let rtcp_line = rtcp.map_or(String::new(), |a| format!("a=rtcp:{}\r\n", a.port()));
    format!(
        "v=0\r\no=- 7 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {} RTP/AVP 0 101\r\n{rtcp_line}a=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na={direction}\r\n",
        rtp.port()
    )
}

async fn recv(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 2048];
    let (len, from) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .expect("a packet in time")
        .expect("recv");
    buf.truncate(len);
    (buf, from)
}

/// Where each side must send its media, learned from the SDP callbridge gave it.
struct Call {
    /// The intent's callid (the call record in the API).
    callid: String,
    phone: Phone,
    dialog: CalleeDialog,
    /// The relay port the phone sends to (from callbridge's 200 on leg A).
    to_relay_from_phone: SocketAddr,
    /// The relay port the callee sends to (from callbridge's INVITE on leg B).
    to_relay_from_callee: SocketAddr,
}

fn relay_addr(body: &[u8]) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], media_port(body)))
}

fn with_body(mut response: Response, body: String) -> Response {
    response
        .headers
        .set(HeaderName::ContentType, "application/sdp");
    response.body = body.into();
    response
}

/// Sets up a bridged call whose media the phone offers at `phone_media` and the callee
/// answers at `callee_media`.
async fn bridged(bridge: &mut Bridge, telnum: &str, phone_sdp: String, callee_sdp: String) -> Call {
    let callid = bridge.makecall(telnum, "2001", "3001").await;
    let mut phone = Phone::udp(bridge, telnum).await;
    let mut invite = phone.invite("2001", false);
    invite.body = phone_sdp.into();
    phone.invite = Some(invite.clone());
    phone.ua.send(invite).await;
    let leg_b = expect_request(&mut bridge.callee, Method::Invite).await;
    assert_anchored(&leg_b.body, bridge.rtp_ports, "sendrecv");
    let dialog = CalleeDialog::new(leg_b.clone());
    let ok = with_body(dialog.reply(&leg_b, 200, None), callee_sdp);
    bridge.callee.send(ok).await;
    let answer = phone.ua.expect_response(200).await;
    phone.learn(&answer);
    assert_anchored(&answer.body, bridge.rtp_ports, "sendrecv");
    expect_request(&mut bridge.callee, Method::Ack).await;
    phone.ack().await;
    Call {
        callid,
        to_relay_from_phone: relay_addr(&answer.body),
        to_relay_from_callee: relay_addr(&leg_b.body),
        phone,
        dialog,
    }
}

async fn hang_up(bridge: &mut Bridge, call: &mut Call) {
    let bye = call.phone.in_dialog(Method::Bye, None);
    call.phone.ua.send(bye).await;
    call.phone.ua.expect_response(200).await;
    let bye_b = expect_request(&mut bridge.callee, Method::Bye).await;
    bridge
        .callee
        .send(call.dialog.reply(&bye_b, 200, None))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_rtp_packets_each_way_arrive_payload_identical_and_rtcp_is_relayed() {
    let mut bridge = Bridge::start().await;
    let (phone_rtp, phone_rtcp) = (socket().await, socket().await);
    let (callee_rtp, callee_rtcp) = (socket().await, socket().await);
    let mut call = bridged(
        &mut bridge,
        "1001",
        sdp_with(
            phone_rtp.local_addr().unwrap(),
            Some(phone_rtcp.local_addr().unwrap()),
            "sendrecv",
        ),
        sdp_with(
            callee_rtp.local_addr().unwrap(),
            Some(callee_rtcp.local_addr().unwrap()),
            "sendrecv",
        ),
    )
    .await;
    for seq in 0..50u16 {
        let out = rtp(seq, 0xA);
        phone_rtp
            .send_to(&out, call.to_relay_from_phone)
            .await
            .unwrap();
        let (got, from) = recv(&callee_rtp).await;
        assert_eq!(got, out, "phone → callee packet {seq}");
        // The callee hears callbridge, never the phone.
        assert_eq!(from, call.to_relay_from_callee);
        let back = rtp(seq, 0xB);
        callee_rtp
            .send_to(&back, call.to_relay_from_callee)
            .await
            .unwrap();
        let (got, from) = recv(&phone_rtp).await;
        assert_eq!(got, back, "callee → phone packet {seq}");
        assert_eq!(from, call.to_relay_from_phone);
    }
    // RTCP: to the relay's RTP port + 1, out to each side's a=rtcp address.
    let rtcp_port = |a: SocketAddr| SocketAddr::from(([127, 0, 0, 1], a.port() + 1));
    phone_rtcp
        .send_to(&rtcp(0xA), rtcp_port(call.to_relay_from_phone))
        .await
        .unwrap();
    assert_eq!(recv(&callee_rtcp).await.0, rtcp(0xA));
    callee_rtcp
        .send_to(&rtcp(0xB), rtcp_port(call.to_relay_from_callee))
        .await
        .unwrap();
    assert_eq!(recv(&phone_rtcp).await.0, rtcp(0xB));
    hang_up(&mut bridge, &mut call).await;
    bridge.assert_drained().await;
    bridge.assert_ports_free().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_latches_to_the_port_the_phone_really_sends_from() {
    let mut bridge = Bridge::start().await;
    let (declared, actual, callee_rtp) = (socket().await, socket().await, socket().await);
    let mut call = bridged(
        &mut bridge,
        "1001",
        sdp_with(declared.local_addr().unwrap(), None, "sendrecv"),
        sdp_with(callee_rtp.local_addr().unwrap(), None, "sendrecv"),
    )
    .await;
    // Behind NAT the phone's packets come from another port than its SDP says.
    actual
        .send_to(&rtp(1, 0xA), call.to_relay_from_phone)
        .await
        .unwrap();
    recv(&callee_rtp).await;
    callee_rtp
        .send_to(&rtp(1, 0xB), call.to_relay_from_callee)
        .await
        .unwrap();
    assert_eq!(
        recv(&actual).await.0,
        rtp(1, 0xB),
        "reply to the latched port"
    );
    // Once latched, a stray source cannot take the stream over.
    let stray = socket().await;
    stray
        .send_to(&rtp(2, 0xC), call.to_relay_from_phone)
        .await
        .unwrap();
    actual
        .send_to(&rtp(3, 0xA), call.to_relay_from_phone)
        .await
        .unwrap();
    assert_eq!(
        recv(&callee_rtp).await.0,
        rtp(3, 0xA),
        "stray packet relayed"
    );
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(200), declared.recv_from(&mut buf))
            .await
            .is_err(),
        "nothing goes to the declared address after latching"
    );
    hang_up(&mut bridge, &mut call).await;
    bridge.assert_drained().await;
    bridge.assert_ports_free().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_media_flows_before_the_answer() {
    let mut bridge = Bridge::start().await;
    bridge.makecall("1001", "2001", "3001").await;
    let (phone_rtp, callee_rtp) = (socket().await, socket().await);
    let mut phone = Phone::udp(&bridge, "1001").await;
    let invite = phone.invite_with_media("2001", phone_rtp.local_addr().unwrap());
    phone.ua.send(invite).await;
    let leg_b = expect_request(&mut bridge.callee, Method::Invite).await;
    let dialog = CalleeDialog::new(leg_b.clone());
    let early = with_body(
        dialog.reply(&leg_b, 183, None),
        sdp_with(callee_rtp.local_addr().unwrap(), None, "sendrecv"),
    );
    bridge.callee.send(early).await;
    let progress = phone.ua.expect_response(183).await;
    assert_anchored(&progress.body, bridge.rtp_ports, "sendrecv");
    // Ringback from the callee reaches the phone before anyone answered.
    let tone = rtp(7, 0xB);
    callee_rtp
        .send_to(&tone, relay_addr(&leg_b.body))
        .await
        .unwrap();
    assert_eq!(recv(&phone_rtp).await.0, tone);
    // Then the caller gives up.
    phone.ua.send(phone.cancel()).await;
    phone.ua.expect_response(200).await;
    let terminated = phone.ua.expect_response(487).await;
    let ack = phone.ack_failure(&terminated);
    phone.ua.send(ack).await;
    let cancel = expect_request(&mut bridge.callee, Method::Cancel).await;
    bridge.callee.send(dialog.reply(&cancel, 200, None)).await;
    bridge.callee.send(dialog.reply(&leg_b, 487, None)).await;
    expect_request(&mut bridge.callee, Method::Ack).await;
    bridge.assert_drained().await;
    bridge.assert_ports_free().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_and_resume_by_reinvite_moves_the_stream() {
    let mut bridge = Bridge::start().await;
    let (first, second, callee_rtp) = (socket().await, socket().await, socket().await);
    let mut call = bridged(
        &mut bridge,
        "1001",
        sdp_with(first.local_addr().unwrap(), None, "sendrecv"),
        sdp_with(callee_rtp.local_addr().unwrap(), None, "sendrecv"),
    )
    .await;
    first
        .send_to(&rtp(1, 0xA), call.to_relay_from_phone)
        .await
        .unwrap();
    recv(&callee_rtp).await;

    // Hold, then resume on a new local port (the phone moved its media).
    for (direction, media) in [("sendonly", &first), ("sendrecv", &second)] {
        let offer = sdp_with(media.local_addr().unwrap(), None, direction);
        let reinvite = call.phone.in_dialog(Method::Invite, Some(offer));
        call.phone.ua.send(reinvite).await;
        let relayed: Request = expect_request(&mut bridge.callee, Method::Invite).await;
        assert_anchored(&relayed.body, bridge.rtp_ports, direction);
        assert_eq!(
            relay_addr(&relayed.body),
            call.to_relay_from_callee,
            "same relay port"
        );
        let answer_direction = if direction == "sendonly" {
            "recvonly"
        } else {
            "sendrecv"
        };
        let ok = with_body(
            call.dialog.reply(&relayed, 200, None),
            sdp_with(callee_rtp.local_addr().unwrap(), None, answer_direction),
        );
        bridge.callee.send(ok).await;
        let answer = call.phone.ua.expect_response(200).await;
        assert_anchored(&answer.body, bridge.rtp_ports, answer_direction);
        expect_request(&mut bridge.callee, Method::Ack).await;
        call.phone.ack().await;
    }
    // After the resume, the callee's audio goes to the phone's new port.
    second
        .send_to(&rtp(2, 0xA), call.to_relay_from_phone)
        .await
        .unwrap();
    recv(&callee_rtp).await;
    callee_rtp
        .send_to(&rtp(2, 0xB), call.to_relay_from_callee)
        .await
        .unwrap();
    assert_eq!(recv(&second).await.0, rtp(2, 0xB));
    hang_up(&mut bridge, &mut call).await;
    bridge.assert_drained().await;
    bridge.assert_ports_free().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_media_ends_both_legs() {
    let mut bridge = Bridge::start_with(Options {
        media_inactivity_secs: 1,
        ..Options::default()
    })
    .await;
    let (phone_rtp, callee_rtp) = (socket().await, socket().await);
    let mut call = bridged(
        &mut bridge,
        "1001",
        sdp_with(phone_rtp.local_addr().unwrap(), None, "sendrecv"),
        sdp_with(callee_rtp.local_addr().unwrap(), None, "sendrecv"),
    )
    .await;
    // Nobody sends RTP: after a second callbridge hangs up both legs.
    let bye_a = expect_request(&mut call.phone.ua, Method::Bye).await;
    assert!(bye_a
        .headers
        .get(&HeaderName::Reason)
        .is_some_and(|r| r.contains("media_timeout")));
    call.phone
        .ua
        .send(Response::to_request(&bye_a, 200, None))
        .await;
    let bye_b = expect_request(&mut bridge.callee, Method::Bye).await;
    bridge
        .callee
        .send(call.dialog.reply(&bye_b, 200, None))
        .await;
    bridge.assert_drained().await;
    let (_, metrics) = bridge.http("GET", "/metrics", None).await;
    let text = metrics.as_str().unwrap_or_default().to_owned();
    assert!(text.contains("callbridge_calls_bridged_total 1"), "{text}");
    bridge.assert_ports_free().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_calls_relay_without_loss() {
    const CALLS: usize = 200;
    const ROUNDS: u16 = 10;
    let mut bridge = Bridge::start_with(Options {
        // Chosen free at run time; twice the 4 ports per call the test holds at once.
        rtp_ports: Some(free_range(CALLS as u16 * 4 * 2)),
        ..Options::default()
    })
    .await;
    let mut calls = Vec::new();
    for n in 0..CALLS {
        let (phone_rtp, callee_rtp) = (socket().await, socket().await);
        let call = bridged(
            &mut bridge,
            &format!("{}", 100_000 + n),
            sdp_with(phone_rtp.local_addr().unwrap(), None, "sendrecv"),
            sdp_with(callee_rtp.local_addr().unwrap(), None, "sendrecv"),
        )
        .await;
        calls.push((call, phone_rtp, callee_rtp));
    }
    let (_, metrics) = bridge.http("GET", "/metrics", None).await;
    let text = metrics.as_str().unwrap_or_default().to_owned();
    assert!(
        text.contains(&format!("callbridge_active_calls {CALLS}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("callbridge_media_ports_in_use {}", CALLS * 4)),
        "{text}"
    );
    for seq in 0..ROUNDS {
        for (call, phone_rtp, callee_rtp) in &calls {
            phone_rtp
                .send_to(&rtp(seq, 0xA), call.to_relay_from_phone)
                .await
                .unwrap();
            callee_rtp
                .send_to(&rtp(seq, 0xB), call.to_relay_from_callee)
                .await
                .unwrap();
        }
        for (_, phone_rtp, callee_rtp) in &calls {
            assert_eq!(recv(callee_rtp).await.0, rtp(seq, 0xA));
            assert_eq!(recv(phone_rtp).await.0, rtp(seq, 0xB));
        }
    }
    for (call, _, _) in &mut calls {
        hang_up(&mut bridge, call).await;
    }
    bridge.assert_drained().await;
    bridge.assert_ports_free().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_free_ports_refuses_with_503_and_keeps_the_intent() {
    // Four ports: two pairs, exactly one call's media.
    let mut bridge = Bridge::start_with(Options {
        rtp_ports: Some(free_range(4)),
        ..Options::default()
    })
    .await;
    let (phone_rtp, callee_rtp) = (socket().await, socket().await);
    let mut first = bridged(
        &mut bridge,
        "1001",
        sdp_with(phone_rtp.local_addr().unwrap(), None, "sendrecv"),
        sdp_with(callee_rtp.local_addr().unwrap(), None, "sendrecv"),
    )
    .await;
    let second_callid = bridge.makecall("1002", "2001", "3001").await;
    let mut second = Phone::udp(&bridge, "1002").await;
    let invite = second.invite_with_media("2001", phone_rtp.local_addr().unwrap());
    second.ua.send(invite).await;
    let refusal = second.ua.expect_response(503).await;
    let ack = second.ack_failure(&refusal);
    second.ua.send(ack).await;
    bridge
        .callee
        .expect_silence(Duration::from_millis(300))
        .await;
    assert_eq!(bridge.call(&second_callid).await["state"], "intent");
    // Once the first call ends its ports are free, and the same intent still works.
    hang_up(&mut bridge, &mut first).await;
    // The relay of the first call closes asynchronously; wait until its ports are back.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (_, metrics) = bridge.http("GET", "/metrics", None).await;
        if metrics
            .as_str()
            .is_some_and(|m| m.contains("callbridge_media_ports_in_use 0"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ports never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut again = Phone::udp(&bridge, "1002").await;
    let invite = again.invite_with_media("2001", phone_rtp.local_addr().unwrap());
    again.ua.send(invite).await;
    let leg_b = expect_request(&mut bridge.callee, Method::Invite).await;
    let dialog = CalleeDialog::new(leg_b.clone());
    bridge.callee.send(dialog.reply(&leg_b, 486, None)).await;
    expect_request(&mut bridge.callee, Method::Ack).await;
    let busy = again.ua.expect_response(486).await;
    let ack = again.ack_failure(&busy);
    again.ua.send(ack).await;
    bridge.assert_drained().await;
    bridge.assert_ports_free().await;
}

/// The next request `ua` receives before `deadline`, skipping responses (late copies of a 2xx,
/// provisionals); panics naming `what` when none comes in time.
async fn next_request(ua: &mut TestUa, deadline: Instant, what: &str) -> Request {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ua.try_recv(left).await {
            Some((Message::Request(request), _)) => return request,
            Some((Message::Response(_), _)) => continue,
            None => panic!("{}: no {what} in time", ua.local_addr()),
        }
    }
}

/// Panics if callbridge has sent `ua` a request (on a quiet call: the BYE that ends it);
/// responses (late copies of a 2xx) are skipped. Reads until `wait` passes without a message.
async fn assert_no_request(ua: &mut TestUa, wait: Duration, context: &str) {
    while let Some((message, _)) = ua.try_recv(wait).await {
        if let Message::Request(request) = message {
            panic!(
                "{context}: callbridge sent {} to {} (Reason: {:?})",
                request.method,
                ua.local_addr(),
                request.headers.get(&HeaderName::Reason)
            );
        }
    }
}

fn reason(request: &Request) -> String {
    request
        .headers
        .get(&HeaderName::Reason)
        .unwrap_or_default()
        .to_owned()
}

/// One side talks, the other is silent: RTP from `from` to the relay address `to` every 20 ms
/// (a phone's packetisation) for `span`, each packet checked on arrival at `at`, both legs'
/// signalling watched for a BYE all along. Returns how many packets were relayed.
async fn talk_one_way(
    (from, to, at): (&UdpSocket, SocketAddr, &UdpSocket),
    ssrc: u32,
    span: Duration,
    phone: &mut TestUa,
    callee: &mut TestUa,
) -> u64 {
    let start = Instant::now();
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    let mut seq = 0u16;
    while start.elapsed() < span {
        pace.tick().await;
        let packet = rtp(seq, ssrc);
        let context = format!(
            "after {:?} of RTP from SSRC {ssrc:#x} only",
            start.elapsed()
        );
        from.send_to(&packet, to).await.unwrap();
        let mut buf = vec![0u8; 2048];
        let received = tokio::time::timeout(WAIT, at.recv_from(&mut buf)).await;
        // A BYE explains a relay that went quiet better than the missing packet does.
        let wait = if received.is_ok() {
            Duration::ZERO
        } else {
            WAIT
        };
        assert_no_request(phone, wait, &context).await;
        assert_no_request(callee, wait, &context).await;
        let (len, _) = received
            .unwrap_or_else(|_| panic!("{context}: packet {seq} not relayed"))
            .unwrap();
        assert_eq!(&buf[..len], &packet[..], "packet {seq} of SSRC {ssrc:#x}");
        seq += 1;
    }
    u64::from(seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtp_in_either_direction_alone_keeps_the_call_past_the_inactivity_timeout() {
    // The timeout is "no media in either direction": one side on mute or hold (the other
    // still sending) must not end the call. `no_media_ends_both_legs` is the contrast: the same
    // watchdog with no RTP at all hangs up.
    const INACTIVITY_SECS: u64 = 2;
    let mut bridge = Bridge::start_with(Options {
        media_inactivity_secs: INACTIVITY_SECS,
        ..Options::default()
    })
    .await;
    let (phone_rtp, callee_rtp) = (socket().await, socket().await);
    let mut call = bridged(
        &mut bridge,
        "1001",
        sdp_with(phone_rtp.local_addr().unwrap(), None, "sendrecv"),
        sdp_with(callee_rtp.local_addr().unwrap(), None, "sendrecv"),
    )
    .await;
    // Each direction alone for 1.5 times the timeout (3 in all): a watchdog that counted only
    // one direction, or none, would hang up inside one of the two spans.
    let span = Duration::from_secs(INACTIVITY_SECS) * 3 / 2;
    let phone_to_callee = (&phone_rtp, call.to_relay_from_phone, &callee_rtp);
    let sent_a = talk_one_way(
        phone_to_callee,
        0xA,
        span,
        &mut call.phone.ua,
        &mut bridge.callee,
    )
    .await;
    assert_eq!(bridge.call(&call.callid).await["state"], "answered");
    let callee_to_phone = (&callee_rtp, call.to_relay_from_callee, &phone_rtp);
    let sent_b = talk_one_way(
        callee_to_phone,
        0xB,
        span,
        &mut call.phone.ua,
        &mut bridge.callee,
    )
    .await;
    let record = bridge.call(&call.callid).await;
    assert_eq!(record["state"], "answered", "{record}");
    assert!(record["end_cause"].is_null(), "{record}");
    for ua in [&mut call.phone.ua, &mut bridge.callee] {
        assert_no_request(ua, Duration::from_millis(200), "after both spans").await;
    }

    // Still a normal call: the caller hangs up, and the record counts what was relayed.
    hang_up(&mut bridge, &mut call).await;
    let record = bridge.wait_call_state(&call.callid, "ended").await;
    assert_eq!(record["end_cause"], "hangup", "{record}");
    assert_eq!(record["ended_by"], "caller", "{record}");
    assert_eq!(record["media"]["a_to_b"]["packets"], sent_a, "{record}");
    assert_eq!(record["media"]["b_to_a"]["packets"], sent_b, "{record}");
    bridge.assert_drained().await;
    bridge.assert_ports_free().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_call_secs_hangs_up_both_legs_as_max_duration() {
    // 1 s would do too; 2 s leaves room to tell "at the limit" from "at once".
    const LIMIT_SECS: u64 = 2;
    let mut bridge = Bridge::start_with(Options {
        max_call_secs: LIMIT_SECS,
        ..Options::default()
    })
    .await;
    let (phone_rtp, callee_rtp) = (socket().await, socket().await);
    let mut call = bridged(
        &mut bridge,
        "1001",
        sdp_with(phone_rtp.local_addr().unwrap(), None, "sendrecv"),
        sdp_with(callee_rtp.local_addr().unwrap(), None, "sendrecv"),
    )
    .await;
    // Nobody hangs up: callbridge does, on both legs, saying why.
    let deadline = Instant::now() + Duration::from_secs(LIMIT_SECS + 10);
    let bye_a = next_request(&mut call.phone.ua, deadline, "BYE on leg A").await;
    assert_eq!(bye_a.method, Method::Bye);
    assert!(reason(&bye_a).contains("max_duration"), "{bye_a:?}");
    call.phone
        .ua
        .send(Response::to_request(&bye_a, 200, None))
        .await;
    let bye_b = next_request(&mut bridge.callee, deadline, "BYE on leg B").await;
    assert_eq!(bye_b.method, Method::Bye);
    assert!(reason(&bye_b).contains("max_duration"), "{bye_b:?}");
    bridge
        .callee
        .send(call.dialog.reply(&bye_b, 200, None))
        .await;

    let record = bridge.wait_call_state(&call.callid, "ended").await;
    assert_eq!(record["end_cause"], "max_duration", "{record}");
    assert_eq!(record["ended_by"], "system", "{record}");
    assert_eq!(record["leg_a_code"], 200, "{record}");
    let answered = record["answered_at"].as_u64().expect("answered_at");
    let ended = record["ended_at"].as_u64().expect("ended_at");
    let talked_ms = ended.saturating_sub(answered);
    // Both stamps are wall-clock milliseconds taken as the engine handled each event: a few ms
    // of rounding and scheduling between them, nothing like the limit itself.
    assert!(
        talked_ms + 50 >= LIMIT_SECS * 1000,
        "ended {talked_ms} ms after the answer, before the {LIMIT_SECS} s limit"
    );
    assert!(
        talked_ms <= (LIMIT_SECS + 8) * 1000,
        "ended {talked_ms} ms after the answer, far past the {LIMIT_SECS} s limit"
    );
    bridge.assert_drained().await;
    bridge.assert_ports_free().await;
}

/// One of the concurrent calls: its phone, its media sockets, and what leg B told us.
struct Concurrent {
    callid: String,
    phone: Phone,
    phone_rtp: UdpSocket,
    callee_rtp: UdpSocket,
    to_relay_from_phone: SocketAddr,
    to_relay_from_callee: SocketAddr,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_calls_set_up_at_once_relay_media_and_hang_up_at_once() {
    const CALLS: usize = 50;
    const ROUNDS: u16 = 5;
    // Generous for a loaded 2-core machine; every collecting loop below is bounded by it.
    const PHASE: Duration = Duration::from_secs(30);
    let mut bridge = Bridge::start_with(Options {
        rtp_ports: Some(free_range(CALLS as u16 * 4 * 2)),
        ..Options::default()
    })
    .await;
    // Every call has its own target, so leg B (whose From and To are otherwise alike) names
    // its call in the Request-URI.
    let target = |n: usize| format!("{}", 300_000 + n);
    let unset = SocketAddr::from(([0, 0, 0, 0], 0));
    let mut calls = Vec::new();
    for n in 0..CALLS {
        let telnum = format!("{}", 100_000 + n);
        let callid = bridge.makecall(&telnum, "2001", &target(n)).await;
        let mut phone = Phone::udp(&bridge, &telnum).await;
        let (phone_rtp, callee_rtp) = (socket().await, socket().await);
        let mut invite = phone.invite("2001", false);
        invite.body = sdp_with(phone_rtp.local_addr().unwrap(), None, "sendrecv").into();
        phone.invite = Some(invite);
        calls.push(Concurrent {
            callid,
            phone,
            phone_rtp,
            callee_rtp,
            to_relay_from_phone: unset,
            to_relay_from_callee: unset,
        });
    }

    // Every leg A INVITE goes out before callbridge gets any answer on leg B.
    for call in &mut calls {
        let invite = call.phone.invite.clone().unwrap();
        call.phone.ua.send(invite).await;
    }
    // The leg B INVITEs all reach the one callee UA, in any order. A 180 to each (copies
    // included) stops its retransmissions, with T1 at 50 ms here, without answering it.
    let mut leg_b: HashMap<usize, (Request, CalleeDialog)> = HashMap::new();
    let mut call_of: HashMap<String, usize> = HashMap::new();
    let until = Instant::now() + PHASE;
    while leg_b.len() < CALLS {
        let invite = next_request(&mut bridge.callee, until, "leg B INVITE").await;
        assert_eq!(invite.method, Method::Invite);
        let user = invite.uri.user().unwrap_or_default().to_owned();
        let n = (0..CALLS)
            .find(|&n| target(n) == user)
            .unwrap_or_else(|| panic!("leg B to an unknown target {user}"));
        let call_id = invite.headers.call_id().expect("Call-ID").to_owned();
        // A copy has its call's Call-ID; a new Call-ID would be a second leg B for one call,
        // and a known one for another target two calls mixed up.
        assert_eq!(
            *call_of.entry(call_id).or_insert(n),
            n,
            "leg B Call-IDs mixed"
        );
        let (first, dialog) = leg_b
            .entry(n)
            .or_insert_with(|| (invite.clone(), CalleeDialog::new(invite.clone())));
        assert_eq!(
            first.headers.call_id(),
            invite.headers.call_id(),
            "two leg Bs for call {n}"
        );
        bridge.callee.send(dialog.reply(&invite, 180, None)).await;
    }
    assert_eq!(call_of.len(), CALLS, "one Call-ID per leg B");
    for call in &calls {
        bridge.wait_call_state(&call.callid, "ringing").await;
    }

    // All answered, each with its own media address.
    for (&n, (invite, dialog)) in &leg_b {
        assert_anchored(&invite.body, bridge.rtp_ports, "sendrecv");
        calls[n].to_relay_from_callee = relay_addr(&invite.body);
        let media = calls[n].callee_rtp.local_addr().unwrap();
        let ok = with_body(
            dialog.reply(invite, 200, None),
            sdp_with(media, None, "sendrecv"),
        );
        bridge.callee.send(ok).await;
    }
    for call in &mut calls {
        let answer = call.phone.ua.expect_response(200).await;
        call.phone.learn(&answer);
        assert_anchored(&answer.body, bridge.rtp_ports, "sendrecv");
        call.to_relay_from_phone = relay_addr(&answer.body);
        call.phone.ack().await;
    }
    let mut acked = std::collections::HashSet::new();
    while acked.len() < CALLS {
        let request = next_request(&mut bridge.callee, until, "ACK on leg B").await;
        let call_id = request.headers.call_id().unwrap_or_default().to_owned();
        assert!(call_of.contains_key(&call_id), "{request:?}");
        match request.method {
            Method::Ack => {
                acked.insert(call_id);
            }
            // A copy of the INVITE that was already on its way when the 180 went out.
            Method::Invite => {}
            other => panic!("expected ACK on leg B, got {other}"),
        }
    }
    for call in &calls {
        bridge.wait_call_state(&call.callid, "answered").await;
    }
    let relay_ports: std::collections::HashSet<_> = calls
        .iter()
        .flat_map(|c| [c.to_relay_from_phone, c.to_relay_from_callee])
        .collect();
    assert_eq!(relay_ports.len(), CALLS * 2, "two calls share a relay port");
    let (_, metrics) = bridge.http("GET", "/metrics", None).await;
    let text = metrics.as_str().unwrap_or_default().to_owned();
    let in_use = format!("callbridge_media_ports_in_use {}", CALLS * 4);
    assert!(text.lines().any(|line| line == in_use), "{text}");

    // Media both ways on every call at once. The SSRC names the call, so a packet relayed to
    // the wrong call fails the payload check.
    for seq in 0..ROUNDS {
        for (n, call) in calls.iter().enumerate() {
            let n = n as u32;
            call.phone_rtp
                .send_to(&rtp(seq, 0xA000 + n), call.to_relay_from_phone)
                .await
                .unwrap();
            call.callee_rtp
                .send_to(&rtp(seq, 0xB000 + n), call.to_relay_from_callee)
                .await
                .unwrap();
        }
        for (n, call) in calls.iter().enumerate() {
            let (got, from) = recv(&call.callee_rtp).await;
            assert_eq!(
                got,
                rtp(seq, 0xA000 + n as u32),
                "call {n}, phone → callee {seq}"
            );
            assert_eq!(from, call.to_relay_from_callee, "call {n}");
            let (got, from) = recv(&call.phone_rtp).await;
            assert_eq!(
                got,
                rtp(seq, 0xB000 + n as u32),
                "call {n}, callee → phone {seq}"
            );
            assert_eq!(from, call.to_relay_from_phone, "call {n}");
        }
    }

    // Every caller hangs up at once: all BYEs out before any answer is read.
    for call in &mut calls {
        let bye = call.phone.in_dialog(Method::Bye, None);
        call.phone.ua.send(bye).await;
    }
    let until = Instant::now() + PHASE;
    let mut ended = std::collections::HashSet::new();
    while ended.len() < CALLS {
        let bye = next_request(&mut bridge.callee, until, "BYE on leg B").await;
        assert_eq!(bye.method, Method::Bye, "{bye:?}");
        let call_id = bye.headers.call_id().unwrap_or_default();
        let n = *call_of.get(call_id).expect("BYE for a known leg B");
        // Copies of a BYE are answered too: each is a retransmission waiting for its 200.
        bridge.callee.send(leg_b[&n].1.reply(&bye, 200, None)).await;
        ended.insert(n);
    }
    for (n, call) in calls.iter_mut().enumerate() {
        // Late copies of the INVITE's 200 may still be queued ahead of the BYE's.
        loop {
            let response = call.phone.ua.recv_response().await;
            if response
                .headers
                .cseq()
                .is_ok_and(|c| c.method == Method::Bye)
            {
                assert_eq!(response.status, 200, "call {n}: BYE answered {response:?}");
                break;
            }
        }
    }
    for call in &calls {
        let record = bridge.wait_call_state(&call.callid, "ended").await;
        assert_eq!(record["end_cause"], "hangup", "{record}");
        assert_eq!(record["ended_by"], "caller", "{record}");
    }
    bridge.assert_drained().await;
    bridge.assert_ports_free().await;
}

/// Receives every packet at `socket` for `window`, returning their SSRCs.
async fn ssrcs_within(socket: &UdpSocket, window: Duration) -> Vec<u32> {
    let end = Instant::now() + window;
    let mut buf = vec![0u8; 2048];
    let mut seen = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match tokio::time::timeout(left, socket.recv_from(&mut buf)).await {
            Ok(Ok((len, _))) if len >= 12 => {
                seen.push(u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]));
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    seen
}

/// SPEC "Trust boundary", media learning: a host spraying RTP at every port of the relay
/// range — from before the call is set up until after it ends — neither hears anyone nor is
/// heard, on either leg, and the honest peers are learned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_spraying_the_relay_range_neither_hears_nor_is_heard() {
    const EVIL: u32 = 0xE711;
    let mut bridge = Bridge::start().await;
    let (first, last) = bridge.rtp_ports;
    let attacker = std::sync::Arc::new(
        UdpSocket::bind("127.0.0.66:0")
            .await
            .expect("bind the attacker on another loopback address"),
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spray = {
        let (attacker, stop) = (attacker.clone(), stop.clone());
        tokio::spawn(async move {
            let mut seq = 0u16;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for port in first..=last {
                    let _ = attacker.send_to(&rtp(seq, EVIL), ("127.0.0.1", port)).await;
                }
                seq = seq.wrapping_add(1);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    // The spray is on before the INVITE: the call's ports are sprayed from their first moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (phone_rtp, callee_rtp) = (socket().await, socket().await);
    let mut call = bridged(
        &mut bridge,
        "1001",
        sdp_with(phone_rtp.local_addr().unwrap(), None, "sendrecv"),
        sdp_with(callee_rtp.local_addr().unwrap(), None, "sendrecv"),
    )
    .await;
    // Both honest peers talk for a while, the spray going on throughout.
    for seq in 0..100u16 {
        phone_rtp
            .send_to(&rtp(seq, 0xA), call.to_relay_from_phone)
            .await
            .unwrap();
        callee_rtp
            .send_to(&rtp(seq, 0xB), call.to_relay_from_callee)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Each side heard the other and nobody else (whatever was queued meanwhile).
    let at_callee = ssrcs_within(&callee_rtp, Duration::from_millis(300)).await;
    let at_phone = ssrcs_within(&phone_rtp, Duration::from_millis(300)).await;
    assert!(
        at_callee.iter().all(|s| *s == 0xA) && at_callee.len() >= 90,
        "the callee heard {} packets, {} of the attacker",
        at_callee.len(),
        at_callee.iter().filter(|s| **s == EVIL).count()
    );
    assert!(
        at_phone.iter().all(|s| *s == 0xB) && at_phone.len() >= 90,
        "the phone heard {} packets, {} of the attacker",
        at_phone.len(),
        at_phone.iter().filter(|s| **s == EVIL).count()
    );
    // The attacker heard nothing at all.
    let heard = ssrcs_within(&attacker, Duration::from_millis(200)).await;
    assert!(
        heard.is_empty(),
        "the attacker received {} packets",
        heard.len()
    );
    // The record shows the honest sources latched.
    let record = bridge.call(&call.callid).await;
    assert_eq!(
        record["media"]["latched_a"],
        phone_rtp.local_addr().unwrap().to_string(),
        "{record}"
    );
    assert_eq!(
        record["media"]["latched_b"],
        callee_rtp.local_addr().unwrap().to_string(),
        "{record}"
    );
    hang_up(&mut bridge, &mut call).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    spray.await.expect("spray task");
    bridge.assert_drained().await;
    bridge.assert_ports_free().await;
}
