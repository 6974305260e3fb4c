//! IPv6 through the engine (RFC 5118): with an IPv6 public address, trunk and phone, every
//! host callbridge writes is bracketed (Via sent-by, Contact, From, the Request-URI), the SDP
//! it writes says `IN IP6`, and the media commands name the IPv6 peers. Beside it, the trust
//! checks hold for an IPv4 peer named by its IPv4-mapped form.

use super::*;

const SDP_A6: &str =
    "v=0\r\no=a 1 1 IN IP6 ::1\r\ns=-\r\nc=IN IP6 ::1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";
const SDP_B6: &str = "v=0\r\no=b 1 1 IN IP6 2001:db8::b\r\ns=-\r\nc=IN IP6 2001:db8::b\r\nt=0 0\r\nm=audio 50000 RTP/AVP 0\r\n";

fn trunk6() -> Peer {
    Peer::udp("[::1]:5080".parse().unwrap())
}

fn phone6() -> Peer {
    Peer::udp("[::1]:5062".parse().unwrap())
}

/// An engine that is IPv6 throughout, the trunk's host written `trunk_host` (bracketed or
/// not: both must come out bracketed once).
fn ipv6_harness(trunk_host: &str) -> Harness {
    let trunk_host = trunk_host.to_owned();
    Harness::configured(move |config| {
        config.local.public_addr = "::1".into();
        config.transactions.via_host = "::1".into();
        config.trunk = trunk6();
        config.trunk_host = trunk_host;
        config.trusted_peers = vec!["::1/128".parse().unwrap()];
        config.media.public_ip = "::1".parse().unwrap();
    })
}

#[test]
fn an_ipv6_call_writes_bracketed_hosts_and_ip6_sdp() {
    for trunk_host in ["::1", "[::1]"] {
        let mut h = ipv6_harness(trunk_host);
        let intent = h.control.make_call(h.now, "1001", "2001", "3001").unwrap();
        h.feed(&leg_a_invite("1001", "2001", "z9hG4bKa6", SDP_A6), phone6());
        let sent = h.sent();
        assert_eq!(statuses(&sent, phone6()), [100]);
        assert_eq!(methods(&sent, trunk6()), ["INVITE"]);
        let b_invite = find_request(&sent, "INVITE");
        let wire = String::from_utf8_lossy(&b_invite.to_bytes()).to_string();
        assert!(
            wire.starts_with("INVITE sip:3001@[::1]:5080 SIP/2.0\r\n"),
            "{wire}"
        );
        let via = b_invite.headers.top_via().unwrap();
        assert_eq!(via.sent_by(), "[::1]:5060");
        assert!(
            wire.contains("\r\nVia: SIP/2.0/UDP [::1]:5060;branch="),
            "{wire}"
        );
        assert_eq!(
            b_invite.headers.from().unwrap().uri.to_string(),
            "sip:2001@[::1]"
        );
        assert_eq!(
            b_invite.headers.to().unwrap().uri.to_string(),
            "sip:3001@[::1]:5080"
        );
        assert_eq!(
            b_invite.headers.contacts().unwrap()[0].uri.to_string(),
            "sip:2001@[::1]:5060"
        );
        let body = String::from_utf8_lossy(&b_invite.body).to_string();
        assert!(body.contains("\r\nc=IN IP6 ::1\r\n"), "{body}");
        assert!(
            body.contains(" IN IP6 ::1\r\ns=-\r\n"),
            "o= is ours, IP6: {body}"
        );
        let (a_port, b_port) = first_call_ports();
        assert!(body.contains(&format!("m=audio {b_port} ")), "{body}");
        // The relay learns from the IPv6 signalling peers and sends to the IPv6 SDP address.
        let commands = h.media();
        let signalling = commands.iter().find_map(|c| match c {
            MediaCommand::Open { signalling, .. } => Some(*signalling),
            _ => None,
        });
        let v6: std::net::IpAddr = "::1".parse().unwrap();
        assert_eq!(signalling.map(|s| (s.a, s.b)), Some((Some(v6), Some(v6))));
        assert!(commands.iter().any(|c| matches!(
            c,
            MediaCommand::SetRemote { leg: Leg::A, rtp: Some(rtp), .. }
                if *rtp == "[::1]:40000".parse().unwrap()
        )));

        // Answered: leg A's 200 has our IPv6 Contact and IP6 SDP; leg B's media goes to the
        // callee's IPv6 address.
        h.feed(&answer(&b_invite, 200, "btag", SDP_B6), trunk6());
        let sent = h.sent();
        assert_eq!(methods(&sent, trunk6()), ["ACK"]);
        assert_eq!(statuses(&sent, phone6()), [200]);
        let ok = sent
            .iter()
            .find(|(p, _)| *p == phone6())
            .map(|(_, m)| response_of(m).clone())
            .unwrap();
        assert_eq!(
            ok.headers.contacts().unwrap()[0].uri.to_string(),
            "sip:2001@[::1]:5060"
        );
        let body = String::from_utf8_lossy(&ok.body).to_string();
        assert!(body.contains("\r\nc=IN IP6 ::1\r\n"), "{body}");
        assert!(body.contains(&format!("m=audio {a_port} ")), "{body}");
        assert!(h.media().iter().any(|c| matches!(
            c,
            MediaCommand::SetRemote { leg: Leg::B, rtp: Some(rtp), .. }
                if *rtp == "[2001:db8::b]:50000".parse().unwrap()
        )));
        let a_tag = our_a_tag_of(&sent, phone6());
        h.feed(
            &in_dialog_from_a("ACK", &a_tag, 1, "z9hG4bKack6", ""),
            phone6(),
        );
        h.feed(
            &in_dialog_from_a("BYE", &a_tag, 2, "z9hG4bKbye6", ""),
            phone6(),
        );
        let sent = h.sent();
        assert_eq!(statuses(&sent, phone6()), [200]);
        let bye = find_request(&sent, "BYE");
        assert!(
            bye.to_bytes()
                .starts_with(b"BYE sip:peer@127.0.0.1:5080 SIP/2.0\r\n"),
            "leg B's BYE goes to its remote target"
        );
        h.feed(&answer(&bye, 200, "btag", ""), trunk6());
        let record = h.control.call(&intent.callid).unwrap();
        assert_eq!(record.state, CallState::Ended);
        h.media();
        h.assert_drained();
    }
}

/// Like `our_a_tag`, for another phone address.
fn our_a_tag_of(sent: &[(Peer, Message)], phone: Peer) -> String {
    sent.iter()
        .find_map(|(p, m)| match m {
            Message::Response(r) if *p == phone && r.status > 100 => {
                r.headers.to().ok()?.tag().map(str::to_owned)
            }
            _ => None,
        })
        .expect("a tagged response to leg A")
}

/// An IPv4 peer named by its IPv4-mapped form (what a dual-stack socket reports, should one
/// reach the engine unconverted) is the IPv4 peer: trusted by `127.0.0.0/8`, and the trunk
/// at `127.0.0.1`; a trunk configured mapped is the IPv4 one too.
#[test]
fn mapped_ipv4_peers_pass_the_ipv4_trust_checks() {
    let h = Harness::new();
    let mapped = |text: &str| -> std::net::IpAddr { text.parse().unwrap() };
    assert!(h.engine.is_trusted(mapped("::ffff:127.0.0.9")));
    assert!(h.engine.is_trunk(mapped("::ffff:127.0.0.1")));
    assert!(!h.engine.is_trunk(mapped("::ffff:127.0.0.2")));
    assert!(!h.engine.is_trusted(mapped("::ffff:10.0.0.1")));
    assert!(
        !h.engine.is_trusted(mapped("::1")),
        "::1 is not in 127.0.0.0/8"
    );
    let h = Harness::configured(|config| {
        config.trunk = Peer::udp("[::ffff:127.0.0.1]:5080".parse().unwrap());
    });
    assert!(h.engine.is_trunk(mapped("127.0.0.1")));
}
