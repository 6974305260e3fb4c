//! Media anchoring end to end: RTP and RTCP between a scripted phone and callee, through
//! callbridge's relay, over real loopback UDP sockets. Every test ends with every relay port
//! of the range bindable again.

use std::net::SocketAddr;
use std::time::Duration;

use sip_core::{HeaderName, Method, Request, Response};
use sip_tests::bridge::{
    assert_anchored, expect_request, media_port, Bridge, CalleeDialog, Options, Phone,
};
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
    bridge.makecall(telnum, "2001", "3001").await;
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
        // Below the ephemeral range and apart from the other tests' slices.
        rtp_ports: Some((10000, 11999)),
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
        rtp_ports: Some((9000, 9003)),
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
