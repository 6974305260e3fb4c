//! callbridge in front of a real carrier: Kamailio (sip-tests/src/carrier.rs) challenges
//! REGISTER with 401 and INVITE with 407, and relays calls to the scripted callee. callbridge
//! registers with its credentials, answers the INVITE challenge over UDP and TCP, and the call
//! bridges with media; a wrong password is a clean failure with no retry loop.

use std::time::{Duration, Instant};

use sip_core::{Message, Method};
use sip_tests::bridge::{expect_request, media_port, Bridge, CalleeDialog, Options, Phone};
use sip_tests::carrier::{Algorithm, Carrier, CarrierOptions};
use sip_tests::TestUa;

/// callbridge pointed at a Kamailio carrier that relays to a scripted callee.
struct Setup {
    bridge: Bridge,
    carrier: Carrier,
}

async fn setup(transport: &str, password: Option<&str>, algorithm: Algorithm) -> Setup {
    let mut callee = TestUa::udp("127.0.0.1:9".parse().unwrap()).await;
    let mut options = CarrierOptions::new(callee.local_addr());
    options.algorithm = algorithm;
    let carrier = Carrier::start(options.clone()).await;
    callee.server = carrier.addr();
    let password = password.unwrap_or(&options.password);
    let bridge = Bridge::start_with(Options {
        extra: vec![
            format!("trunk.address=\"{}\"", carrier.addr()),
            format!("trunk.transport=\"{transport}\""),
            format!("trunk.username=\"{}\"", options.username),
            format!("trunk.password=\"{password}\""),
            "trunk.register=true".into(),
            "trunk.register_expires_secs=120".into(),
        ],
        ..Options::default()
    })
    .await;
    let mut bridge = bridge;
    bridge.callee = callee;
    Setup { bridge, carrier }
}

/// Polls the carrier until `user`'s registration is `registered` (bounded).
async fn wait_registered(carrier: &Carrier, user: &str, registered: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while carrier.is_registered(user).await != registered {
        assert!(
            Instant::now() < deadline,
            "registration of {user} never became {registered}; carrier log:\n{}",
            carrier.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `/healthz` until its `registration` says `state` (bounded).
async fn wait_registration_health(bridge: &Bridge, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, health) = bridge.http("GET", "/healthz", None).await;
        if health["registration"] == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "healthz never said {state}: {health}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// INVITEs the carrier saw (one log line per request).
fn invites_seen(carrier: &Carrier) -> usize {
    carrier
        .log()
        .lines()
        .filter(|l| l.contains("carrier: INVITE"))
        .count()
}

/// `response` with a Contact that names the callee's real port: the carrier sends the
/// dialog's requests (ACK, BYE) there.
fn reachable(mut response: sip_core::Response, callee: std::net::SocketAddr) -> sip_core::Response {
    response.headers.set(
        sip_core::HeaderName::Contact,
        format!("<sip:callee@{callee}>"),
    );
    response
}

/// The next `method` request at the callee, past retransmissions of the INVITE that crossed
/// the callee's answers.
async fn next_request_skipping_invites(callee: &mut TestUa, method: Method) -> sip_core::Request {
    loop {
        match callee.recv().await {
            (Message::Request(r), _) if r.method == method => return r,
            (Message::Request(r), _) if r.method == Method::Invite => continue,
            (Message::Request(r), _) => panic!("expected {method}, got {}", r.method),
            (Message::Response(_), _) => continue,
        }
    }
}

/// makecall, the phone dials, leg B goes through the carrier's challenge to the callee, the
/// callee answers, RTP crosses both ways, the phone hangs up.
async fn call_bridges_with_media(setup: &mut Setup) {
    let bridge = &mut setup.bridge;
    let callid = bridge.makecall("1001", "2001", "3001").await;
    let mut phone = Phone::udp(bridge, "1001").await;
    phone.call("2001").await;
    let invite = expect_request(&mut bridge.callee, Method::Invite).await;
    assert!(
        invite.uri.to_string().starts_with("sip:3001@"),
        "{}",
        invite.uri
    );
    assert_eq!(invite.headers.from().unwrap().uri.user(), Some("2001"));
    assert!(
        !invite
            .headers
            .contains(&sip_core::HeaderName::parse("Proxy-Authorization")),
        "the carrier consumed the credentials"
    );
    let dialog = CalleeDialog::new(invite.clone());
    let here = bridge.callee.local_addr();
    // At once, or the carrier retransmits the INVITE (its Timer A).
    bridge.callee.send(dialog.reply(&invite, 100, None)).await;
    bridge
        .callee
        .send(reachable(dialog.reply(&invite, 180, None), here))
        .await;
    let ringing = phone.ua.expect_response(180).await;
    phone.learn(&ringing);
    let callee_media = bridge.callee.local_addr();
    bridge
        .callee
        .send(reachable(
            dialog.reply(&invite, 200, Some(callee_media)),
            here,
        ))
        .await;
    let ok = phone.ua.expect_response(200).await;
    phone.learn(&ok);
    next_request_skipping_invites(&mut bridge.callee, Method::Ack).await;
    phone.ack().await;
    bridge.wait_call_state(&callid, "answered").await;

    // Media: the phone's RTP to callbridge's A-facing port reaches the callee's SDP address,
    // and the callee's to the B-facing port reaches the phone.
    let a_facing = std::net::SocketAddr::new([127, 0, 0, 1].into(), media_port(&ok.body));
    let b_facing = std::net::SocketAddr::new([127, 0, 0, 1].into(), media_port(&invite.body));
    let packet = |seq: u8| {
        let mut rtp = vec![0x80, 0x00, 0, seq, 0, 0, 0, 1, 0xca, 0xfe, 0xba, 0xbe];
        rtp.extend_from_slice(&[seq; 160]);
        rtp
    };
    for seq in 1..=3 {
        phone.ua.send_raw_to(&packet(seq), a_facing).await;
        let got = bridge
            .callee
            .try_recv_raw(Duration::from_secs(5))
            .await
            .expect("RTP from the phone reaches the callee");
        assert_eq!(got, packet(seq));
        bridge
            .callee
            .send_raw_to(&packet(seq + 100), b_facing)
            .await;
        let got = phone
            .ua
            .try_recv_raw(Duration::from_secs(5))
            .await
            .expect("RTP from the callee reaches the phone");
        assert_eq!(got, packet(seq + 100));
    }

    // The phone hangs up; the BYE reaches the callee through the carrier's route set.
    let bye = phone.in_dialog(Method::Bye, None);
    phone.ua.send(bye).await;
    phone.ua.expect_response(200).await;
    let bye_b = next_request_skipping_invites(&mut bridge.callee, Method::Bye).await;
    bridge.callee.send(dialog.reply(&bye_b, 200, None)).await;
    let record = bridge.wait_call_state(&callid, "ended").await;
    assert_eq!(record["end_cause"], "hangup", "{record}");
    assert_eq!(record["leg_b_code"], 200, "{record}");
    bridge.assert_drained().await;
}

async fn registers_and_bridges(transport: &str, algorithm: Algorithm) {
    let mut setup = setup(transport, None, algorithm).await;
    let user = setup.carrier.options().username.clone();
    wait_registered(&setup.carrier, &user, true).await;
    wait_registration_health(&setup.bridge, "registered").await;
    let metrics = setup.bridge.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "callbridge_trunk_registered 1"),
        "{metrics}"
    );
    call_bridges_with_media(&mut setup).await;
    // Two INVITEs reached the carrier: the challenged one and the one with credentials.
    assert_eq!(invites_seen(&setup.carrier), 2, "{}", setup.carrier.log());
    // Shutdown removes the registration.
    setup.bridge.running.shutdown();
    wait_registered(&setup.carrier, &user, false).await;
}

#[tokio::test]
async fn registers_and_bridges_through_the_carriers_challenge_over_udp() {
    registers_and_bridges("udp", Algorithm::Md5).await;
}

#[tokio::test]
async fn registers_and_bridges_through_the_carriers_challenge_over_tcp() {
    registers_and_bridges("tcp", Algorithm::Md5).await;
}

#[tokio::test]
async fn sha256_challenges_are_answered() {
    registers_and_bridges("udp", Algorithm::Sha256).await;
}

#[tokio::test]
async fn a_wrong_password_fails_cleanly_without_a_retry_loop() {
    let started = Instant::now();
    let mut setup = setup("udp", Some("not-the-password"), Algorithm::Md5).await;
    let bridge = &mut setup.bridge;
    let callid = bridge.makecall("1001", "2001", "3001").await;
    let mut phone = Phone::udp(bridge, "1001").await;
    phone.call("2001").await;
    let refusal = loop {
        match phone.ua.recv().await {
            (Message::Response(r), _) if r.status >= 200 => break r,
            _ => continue,
        }
    };
    assert_eq!(refusal.status, 403);
    assert!(refusal
        .headers
        .get(&sip_core::HeaderName::Reason)
        .is_some_and(|r| r.contains("cause=407")));
    phone.ua.send(phone.ack_failure(&refusal)).await;
    let record = bridge.wait_call_state(&callid, "ended").await;
    assert_eq!(record["end_cause"], "trunk_auth_failed", "{record}");
    // The callee never rang, and the carrier saw the INVITE twice, not more.
    assert!(bridge
        .callee
        .try_recv(Duration::from_millis(300))
        .await
        .is_none());
    assert_eq!(invites_seen(&setup.carrier), 2, "{}", setup.carrier.log());
    // The registration was refused too, and is not retried at once.
    wait_registration_health(&setup.bridge, "failed").await;
    let user = setup.carrier.options().username.clone();
    assert!(!setup.carrier.is_registered(&user).await);
    let registers = setup
        .carrier
        .log()
        .lines()
        .filter(|l| l.contains("carrier: REGISTER"))
        .count();
    // One attempt (and its answer to the challenge) per backoff step: 5 s, then 10 s, ...
    let attempts = 1 + started.elapsed().as_secs() / 5;
    assert!(
        (2..=2 * attempts as usize).contains(&registers),
        "{registers} REGISTERs in {:?}: {}",
        started.elapsed(),
        setup.carrier.log()
    );
    setup.bridge.assert_drained().await;
}
