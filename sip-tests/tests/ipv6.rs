//! callbridge over IPv6 (issue 11, item 9), end to end on loopback: SIP and RTP on `::1`
//! (UDP and TCP), and a dual-stack callbridge (`[::]`) bridging an IPv4 party and an IPv6
//! party either way round, where IPv4 peers reach IPv6 sockets as `::ffff:127.0.0.1` and must
//! still be trusted, latched and answered as `127.0.0.1`.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use sip_core::{HeaderName, Method, Response};
use sip_tests::bridge::{
    assert_anchored_at, expect_request, media_port, Bridge, CalleeDialog, Options, Phone,
};
use tokio::net::UdpSocket;

const WAIT: Duration = Duration::from_secs(5);

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
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

async fn recv(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 2048];
    let (len, from) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .expect("a packet in time")
        .expect("recv");
    buf.truncate(len);
    (buf, from)
}

/// callbridge on IPv6 only: SIP on `[::1]`, relay and SDP on `::1`, the trunk (callee) on
/// `[::1]`, trusting `::1/128`.
async fn ipv6_bridge() -> Bridge {
    Bridge::start_with(Options {
        trusted_peers: vec!["::1/128".into()],
        callee_ip: ip("::1"),
        extra: vec![
            "sip.listen=[::1]:0".into(),
            // Bracketed on purpose: accepted, and written once bracketed.
            "sip.public_addr=[::1]".into(),
            "media.public_ip=::1".into(),
            "media.bind_ip=::1".into(),
        ],
        ..Options::default()
    })
    .await
}

/// A dual-stack callbridge (`[::]` for SIP and media) whose trunk is on `callee_ip`, trusting
/// `127.0.0.0/8` and `::1`, advertising `127.0.0.1` to IPv4 legs and `::1` to IPv6 legs (and
/// a name for itself in SIP, as a dual-stack deployment does: one with A and AAAA records).
async fn dual_stack_bridge(callee_ip: &str) -> Bridge {
    Bridge::start_with(Options {
        trusted_peers: vec!["127.0.0.0/8".into(), "::1/128".into()],
        callee_ip: ip(callee_ip),
        extra: vec![
            "sip.listen=[::]:0".into(),
            "sip.public_addr=localhost".into(),
            "media.bind_ip=::".into(),
            "media.public_ip=127.0.0.1".into(),
            "media.public_ip6=::1".into(),
        ],
        ..Options::default()
    })
    .await
}

/// The relay address an SDP body of callbridge's names (its `c=` family is checked by
/// [`assert_anchored_at`]).
fn relay_at(public_ip: IpAddr, body: &[u8]) -> SocketAddr {
    SocketAddr::new(public_ip, media_port(body))
}

/// A bridged call from `phone` (offering media at `phone_media`) to the callee (answering at
/// `callee_media`), each side's SDP from callbridge checked to name `phone_public` and
/// `callee_public`. Returns the callee's dialog and the relay addresses the phone and the
/// callee send to.
async fn bridge_call(
    bridge: &mut Bridge,
    phone: &mut Phone,
    (phone_media, phone_public): (SocketAddr, IpAddr),
    (callee_media, callee_public): (SocketAddr, IpAddr),
) -> (CalleeDialog, SocketAddr, SocketAddr) {
    let invite = phone.invite_with_media("2001", phone_media);
    let family = if phone_media.is_ipv6() { "IP6" } else { "IP4" };
    assert!(
        String::from_utf8_lossy(&invite.body)
            .contains(&format!("c=IN {family} {}\r\n", phone_media.ip())),
        "the phone offers its own family"
    );
    phone.ua.send(invite).await;
    let leg_b = expect_request(&mut bridge.callee, Method::Invite).await;
    assert_anchored_at(&leg_b.body, bridge.rtp_ports, "sendrecv", callee_public);
    let dialog = CalleeDialog::new(leg_b.clone());
    bridge.callee.send(dialog.reply(&leg_b, 180, None)).await;
    let ringing = phone.ua.expect_response(180).await;
    phone.learn(&ringing);
    bridge
        .callee
        .send(dialog.reply(&leg_b, 200, Some(callee_media)))
        .await;
    let ok = phone.ua.expect_response(200).await;
    phone.learn(&ok);
    assert_anchored_at(&ok.body, bridge.rtp_ports, "sendrecv", phone_public);
    expect_request(&mut bridge.callee, Method::Ack).await;
    phone.ack().await;
    (
        dialog,
        relay_at(phone_public, &ok.body),
        relay_at(callee_public, &leg_b.body),
    )
}

/// `count` RTP packets each way, payload-identical, each side hearing callbridge's relay port
/// and nothing else.
async fn talk(
    (phone_rtp, to_relay_from_phone): (&UdpSocket, SocketAddr),
    (callee_rtp, to_relay_from_callee): (&UdpSocket, SocketAddr),
    count: u16,
) {
    for seq in 0..count {
        let out = rtp(seq, 0xA);
        phone_rtp.send_to(&out, to_relay_from_phone).await.unwrap();
        let (got, from) = recv(callee_rtp).await;
        assert_eq!(got, out, "phone → callee packet {seq}");
        assert_eq!(from, to_relay_from_callee, "the callee hears the relay");
        let back = rtp(seq, 0xB);
        callee_rtp
            .send_to(&back, to_relay_from_callee)
            .await
            .unwrap();
        let (got, from) = recv(phone_rtp).await;
        assert_eq!(got, back, "callee → phone packet {seq}");
        assert_eq!(from, to_relay_from_phone, "the phone hears the relay");
    }
}

/// The phone hangs up; callbridge answers, relays the BYE, the callee answers it.
async fn hang_up(bridge: &mut Bridge, phone: &mut Phone, dialog: &CalleeDialog) {
    let bye = phone.in_dialog(Method::Bye, None);
    phone.ua.send(bye).await;
    phone.ua.expect_response(200).await;
    let bye_b = expect_request(&mut bridge.callee, Method::Bye).await;
    bridge.callee.send(dialog.reply(&bye_b, 200, None)).await;
}

/// The value of the top Via of a response exactly as written on the wire.
fn top_via_text(response: &Response) -> String {
    response
        .headers
        .get(&HeaderName::Via)
        .expect("a Via")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_call_is_signalled_and_relayed_over_ipv6() {
    let mut bridge = ipv6_bridge().await;
    assert!(bridge.sip.is_ipv6(), "{}", bridge.sip);
    let v6 = ip("::1");
    let callid = bridge.makecall("1001", "2001", "3001").await;
    let mut phone = Phone::udp_from(&bridge, "1001", "::1").await;
    let phone_rtp = UdpSocket::bind("[::1]:0").await.unwrap();
    let callee_rtp = UdpSocket::bind("[::1]:0").await.unwrap();

    let invite = phone.invite_with_media("2001", phone_rtp.local_addr().unwrap());
    phone.ua.send(invite).await;
    let leg_b = expect_request(&mut bridge.callee, Method::Invite).await;
    // Leg B: every host callbridge writes is bracketed, the SDP is IP6 at its relay.
    let wire = String::from_utf8_lossy(&leg_b.to_bytes()).to_string();
    let callee_addr = bridge.callee.local_addr();
    assert!(
        wire.starts_with(&format!("INVITE sip:3001@{callee_addr} SIP/2.0\r\n")),
        "{wire}"
    );
    let sip_port = bridge.sip.port();
    let top = leg_b.headers.top_via().unwrap();
    assert_eq!(top.sent_by(), format!("[::1]:{sip_port}"));
    assert_eq!(leg_b.headers.from().unwrap().uri.as_str(), "sip:2001@[::1]");
    assert_eq!(
        leg_b.headers.contacts().unwrap()[0].uri.as_str(),
        format!("sip:2001@[::1]:{sip_port}")
    );
    assert_anchored_at(&leg_b.body, bridge.rtp_ports, "sendrecv", v6);
    assert!(
        !wire.contains("phone.test"),
        "nothing of leg A in leg B:\n{wire}"
    );

    let dialog = CalleeDialog::new(leg_b.clone());
    bridge.callee.send(dialog.reply(&leg_b, 180, None)).await;
    let ringing = phone.ua.expect_response(180).await;
    phone.learn(&ringing);
    // Leg A's Via comes back stamped with a bare received (RFC 5118 §4.5), the sent-by
    // bracketed as the phone wrote it.
    let via = top_via_text(&ringing);
    let phone_addr = phone.ua.local_addr();
    assert_eq!(
        via.split(";branch").next(),
        Some(format!("SIP/2.0/UDP {phone_addr}").as_str()),
        "{via}"
    );
    assert!(
        via.ends_with(&format!(";rport={};received=::1", phone_addr.port())),
        "{via}"
    );
    bridge
        .callee
        .send(dialog.reply(&leg_b, 200, Some(callee_rtp.local_addr().unwrap())))
        .await;
    let ok = phone.ua.expect_response(200).await;
    phone.learn(&ok);
    assert_eq!(
        ok.headers.contacts().unwrap()[0].uri.as_str(),
        format!("sip:2001@[::1]:{sip_port}")
    );
    assert_anchored_at(&ok.body, bridge.rtp_ports, "sendrecv", v6);
    expect_request(&mut bridge.callee, Method::Ack).await;
    phone.ack().await;
    bridge.wait_call_state(&callid, "answered").await;

    talk(
        (&phone_rtp, relay_at(v6, &ok.body)),
        (&callee_rtp, relay_at(v6, &leg_b.body)),
        20,
    )
    .await;
    hang_up(&mut bridge, &mut phone, &dialog).await;
    let record = bridge.wait_call_state(&callid, "ended").await;
    assert_eq!(record["media"]["a_to_b"]["packets"], 20, "{record}");
    assert_eq!(record["media"]["b_to_a"]["packets"], 20, "{record}");
    assert_eq!(
        record["media"]["latched_a"],
        phone_rtp.local_addr().unwrap().to_string(),
        "{record}"
    );
    bridge.assert_drained().await;
    bridge.assert_ports_free().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_phone_over_tcp_is_answered_on_its_connection() {
    let mut bridge = ipv6_bridge().await;
    let callid = bridge.makecall("1001", "2001", "3001").await;
    let mut phone = Phone::tcp_from(&bridge, "1001", "::1").await;
    assert!(phone.ua.local_addr().is_ipv6());
    let media = UdpSocket::bind("[::1]:0").await.unwrap();
    let v6 = ip("::1");
    let (dialog, _, _) = bridge_call(
        &mut bridge,
        &mut phone,
        (media.local_addr().unwrap(), v6),
        (media.local_addr().unwrap(), v6),
    )
    .await;
    // Leg A's Contact says how to come back: over TCP, to the IPv6 address.
    assert_eq!(
        phone.remote_target.as_deref(),
        Some(format!("sip:2001@[::1]:{};transport=tcp", bridge.sip.port()).as_str())
    );
    hang_up(&mut bridge, &mut phone, &dialog).await;
    bridge.wait_call_state(&callid, "ended").await;
    bridge.assert_drained().await;
    bridge.assert_ports_free().await;
}

/// A dual-stack callbridge bridges a phone of one family to a callee of the other: trust by
/// the IPv4 rules for the IPv4 party (`127.0.0.0/8`, the trunk's IPv4 address), SDP of each
/// leg's family, media relayed both ways through the same `[::]` relay sockets, and the IPv4
/// party latched as `127.0.0.1`, not as `::ffff:127.0.0.1`.
async fn mixed_family_call(phone_ip: &str, callee_ip: &str) {
    let mut bridge = dual_stack_bridge(callee_ip).await;
    assert!(bridge.sip.ip().is_unspecified() && bridge.sip.is_ipv6());
    let public = |family: &str| {
        if ip(family).is_ipv6() {
            ip("::1")
        } else {
            ip("127.0.0.1")
        }
    };
    let (phone_public, callee_public) = (public(phone_ip), public(callee_ip));
    let callid = bridge.makecall("1001", "2001", "3001").await;
    let mut phone = Phone::udp_from(&bridge, "1001", phone_ip).await;
    let phone_rtp = UdpSocket::bind(SocketAddr::new(ip(phone_ip), 0))
        .await
        .unwrap();
    let callee_rtp = UdpSocket::bind(SocketAddr::new(ip(callee_ip), 0))
        .await
        .unwrap();
    let (mut dialog, to_relay_from_phone, to_relay_from_callee) = bridge_call(
        &mut bridge,
        &mut phone,
        (phone_rtp.local_addr().unwrap(), phone_public),
        (callee_rtp.local_addr().unwrap(), callee_public),
    )
    .await;
    talk(
        (&phone_rtp, to_relay_from_phone),
        (&callee_rtp, to_relay_from_callee),
        20,
    )
    .await;
    // The callee (the trunk) hangs up this time: its BYE must pass the leg-B peer check.
    let bye = dialog.in_dialog(Method::Bye, bridge.callee.local_addr(), None);
    bridge.callee.send(bye).await;
    let ok = bridge.callee.expect_response(200).await;
    assert_eq!(ok.status, 200);
    let bye_a = expect_request(&mut phone.ua, Method::Bye).await;
    phone.ua.send(Response::to_request(&bye_a, 200, None)).await;
    let record = bridge.wait_call_state(&callid, "ended").await;
    assert_eq!(record["ended_by"], "callee", "{record}");
    assert_eq!(record["media"]["a_to_b"]["packets"], 20, "{record}");
    assert_eq!(record["media"]["b_to_a"]["packets"], 20, "{record}");
    // Latched by their own addresses, in canonical form.
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
    assert_eq!(bridge.refused("untrusted_source").await, 0);
    bridge.assert_drained().await;
    bridge.assert_ports_free().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_bridges_an_ipv4_phone_to_an_ipv6_callee() {
    mixed_family_call("127.0.0.1", "::1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_bridges_an_ipv6_phone_to_an_ipv4_callee() {
    mixed_family_call("::1", "127.0.0.1").await;
}
