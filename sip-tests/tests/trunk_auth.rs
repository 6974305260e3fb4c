//! callbridge in front of a real carrier: Kamailio (sip-tests/src/carrier.rs) challenges
//! REGISTER with 401 and INVITE with 407, and relays calls to the scripted callee. callbridge
//! registers with its credentials, answers the INVITE challenge over UDP, TCP and TLS, and the
//! call bridges with media; a wrong password is a clean failure with no retry loop. Over TLS
//! also: the carrier's requests in the dialog reach callbridge's TLS listener, a carrier whose
//! certificate `tls.ca_file` does not vouch for fails leg B cleanly, and a trunk delivering
//! leg A over TLS is answered on its connection.

use std::time::{Duration, Instant};

use sip_core::{HeaderName, Message, Method};
use sip_tests::bridge::{expect_request, media_port, Bridge, CalleeDialog, Options, Phone};
use sip_tests::carrier::{Algorithm, Carrier, CarrierOptions};
use sip_tests::tls::TestPki;
use sip_tests::TestUa;
use tempfile::TempDir;

/// callbridge pointed at a Kamailio carrier that relays to a scripted callee.
struct Setup {
    bridge: Bridge,
    carrier: Carrier,
    /// Over TLS: callbridge's own CA and certificate files (`tls.listen`), kept until the
    /// test ends.
    #[allow(dead_code)]
    tls: Option<(TempDir, TestPki)>,
}

/// Which roots callbridge's `tls.ca_file` holds, over TLS.
#[derive(Clone, Copy, PartialEq, Eq)]
enum TrunkCa {
    /// The carrier's CA: its certificate verifies.
    Carriers,
    /// Another CA: the carrier's certificate does not.
    Stranger,
}

async fn setup(transport: &str, password: Option<&str>, algorithm: Algorithm) -> Setup {
    setup_with(transport, password, algorithm, TrunkCa::Carriers, true).await
}

async fn setup_with(
    transport: &str,
    password: Option<&str>,
    algorithm: Algorithm,
    trunk_ca: TrunkCa,
    register: bool,
) -> Setup {
    let mut callee = TestUa::udp("127.0.0.1:9".parse().unwrap()).await;
    let mut options = CarrierOptions::new(callee.local_addr());
    options.algorithm = algorithm;
    options.tls = transport == "tls";
    let carrier = Carrier::start(options.clone()).await;
    callee.server = carrier.addr();
    let password = password.unwrap_or(&options.password);
    let mut extra = vec![
        format!("trunk.transport=\"{transport}\""),
        format!("trunk.username=\"{}\"", options.username),
        format!("trunk.password=\"{password}\""),
        format!("trunk.register={register}"),
        "trunk.register_expires_secs=120".into(),
    ];
    let tls = if options.tls {
        // callbridge's listener (where the carrier sends the dialog's requests) presents a
        // certificate of a CA of the test's own; the carrier's is checked against tls.ca_file.
        let dir = tempfile::tempdir().expect("temporary directory");
        let pki = TestPki::new(dir.path(), "callbridge", "callbridge test CA");
        let issued = pki.issue(dir.path(), "callbridge", &["127.0.0.1"]);
        let ca_file = match trunk_ca {
            TrunkCa::Carriers => carrier.ca_file().to_owned(),
            TrunkCa::Stranger => pki.ca_file().to_owned(),
        };
        extra.extend([
            format!("trunk.address=\"{}\"", carrier.tls_addr()),
            "tls.listen=\"127.0.0.1:0\"".to_owned(),
            format!("tls.cert_file=\"{}\"", issued.cert_file.display()),
            format!("tls.key_file=\"{}\"", issued.key_file.display()),
            format!("tls.ca_file=\"{}\"", ca_file.display()),
        ]);
        Some((dir, pki))
    } else {
        extra.push(format!("trunk.address=\"{}\"", carrier.addr()));
        None
    };
    let bridge = Bridge::start_with(Options {
        extra,
        ..Options::default()
    })
    .await;
    let mut bridge = bridge;
    bridge.callee = callee;
    Setup {
        bridge,
        carrier,
        tls,
    }
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

/// Who ends a bridged call.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HangsUp {
    /// The phone: its BYE crosses callbridge, then the carrier, to the callee.
    Phone,
    /// The callee: its BYE goes through the carrier to callbridge's Contact on leg B (over
    /// TLS: the TLS listener), then to the phone.
    Callee,
}

/// makecall, the phone dials, leg B goes through the carrier's challenge to the callee, the
/// callee answers, RTP crosses both ways, `who` hangs up.
async fn call_bridges_with_media(setup: &mut Setup, who: HangsUp) {
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

    if who == HangsUp::Phone {
        // The phone hangs up; the BYE reaches the callee through the carrier's route set.
        let bye = phone.in_dialog(Method::Bye, None);
        phone.ua.send(bye).await;
        phone.ua.expect_response(200).await;
        let bye_b = next_request_skipping_invites(&mut bridge.callee, Method::Bye).await;
        bridge.callee.send(dialog.reply(&bye_b, 200, None)).await;
    } else {
        // The callee hangs up through the carrier: to callbridge's Contact (the Request-URI),
        // along the route set the carrier recorded (kept in order by the UAS, RFC 3261
        // §12.1.1).
        let mut dialog = dialog;
        let mut bye = dialog.in_dialog(Method::Bye, here, None);
        for route in invite
            .headers
            .get_all(&HeaderName::RecordRoute)
            .flat_map(sip_core::message::split_top_level_commas)
        {
            bye.headers.push(HeaderName::Route, route.trim());
        }
        bridge.callee.send(bye).await;
        let (bye_a, _) = phone.ua.recv_request().await;
        assert_eq!(bye_a.method, Method::Bye);
        phone
            .ua
            .send(sip_core::Response::to_request(&bye_a, 200, None))
            .await;
        loop {
            match bridge.callee.recv().await {
                (Message::Response(r), _) if r.status == 200 => {
                    assert_eq!(r.headers.cseq().unwrap().method, Method::Bye);
                    break;
                }
                (Message::Response(r), _) if r.status < 200 => continue,
                (other, _) => panic!(
                    "expected the 200 to the callee's BYE, got {other:?}\n{}",
                    setup.carrier.log()
                ),
            }
        }
    }
    let record = bridge.wait_call_state(&callid, "ended").await;
    assert_eq!(record["end_cause"], "hangup", "{record}");
    assert_eq!(record["leg_b_code"], 200, "{record}");
    bridge.assert_drained().await;
}

async fn registers_and_bridges(transport: &str, algorithm: Algorithm) {
    registers_and_bridges_ended_by(transport, algorithm, HangsUp::Phone).await;
}

async fn registers_and_bridges_ended_by(transport: &str, algorithm: Algorithm, who: HangsUp) {
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
    call_bridges_with_media(&mut setup, who).await;
    // Everything callbridge sent reached the carrier over the configured transport (the
    // carrier logs the protocol each request came in by).
    let log = setup.carrier.log();
    for method in ["REGISTER", "INVITE"] {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("carrier: {method}")))
            .collect();
        assert!(
            !lines.is_empty()
                && lines
                    .iter()
                    .all(|l| l.contains(&format!("over {transport}"))),
            "{method} over {transport}: {lines:#?}"
        );
    }
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
async fn registers_and_bridges_through_the_carriers_challenge_over_tls() {
    registers_and_bridges("tls", Algorithm::Md5).await;
}

/// The callee's BYE comes back through the carrier to the Contact leg B gave: over TLS, the
/// TLS listener's port with `;transport=tls` (the UDP/TCP port would not speak TLS).
#[tokio::test]
async fn the_callees_bye_reaches_callbridge_over_tls() {
    registers_and_bridges_ended_by("tls", Algorithm::Md5, HangsUp::Callee).await;
}

/// A carrier whose certificate does not chain to tls.ca_file: leg B's INVITE is never sent
/// (the handshake fails), leg A gets a final failure at once, the call record ends and
/// nothing is left behind.
#[tokio::test]
async fn a_trunk_certificate_not_signed_by_the_configured_ca_fails_leg_b_cleanly() {
    let started = Instant::now();
    let mut setup = setup_with("tls", None, Algorithm::Md5, TrunkCa::Stranger, false).await;
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
    // A final failure (the engine answers a failed transaction to the trunk, timed out or
    // unreachable, with 408).
    assert!(
        refusal.status >= 400,
        "{} {}",
        refusal.status,
        refusal.reason
    );
    phone.ua.send(phone.ack_failure(&refusal)).await;
    let record = bridge.wait_call_state(&callid, "ended").await;
    assert_eq!(record["end_cause"], "signalling_failure", "{record}");
    assert_eq!(record["leg_a_code"], refusal.status, "{record}");
    assert!(
        record["leg_b_code"].is_null(),
        "leg B never answered: {record}"
    );
    // The carrier never saw an INVITE (nothing was sent in clear, or at all), and the callee
    // never rang.
    assert_eq!(invites_seen(&setup.carrier), 0, "{}", setup.carrier.log());
    assert!(bridge
        .callee
        .try_recv(Duration::from_millis(300))
        .await
        .is_none());
    setup.bridge.assert_drained().await;
    // The failure was the handshake's, not a timer's.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    // And callbridge still serves: the next intent is taken as usual (refused here the same
    // way, by the same trunk).
    let bridge = &mut setup.bridge;
    bridge.makecall("1002", "2002", "3002").await;
    let mut phone = Phone::udp(bridge, "1002").await;
    phone.call("2002").await;
    let again = loop {
        match phone.ua.recv().await {
            (Message::Response(r), _) if r.status >= 200 => break r,
            _ => continue,
        }
    };
    assert_eq!(again.status, refusal.status);
    phone.ua.send(phone.ack_failure(&again)).await;
    bridge.assert_drained().await;
}

/// A trunk delivering leg A over TLS: callbridge's TLS listener takes the INVITE for a pending
/// intent, and the 100 and 180 (and the rest of the call) come back on that connection.
#[tokio::test]
async fn leg_a_over_tls_is_answered_on_its_connection() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let pki = TestPki::new(dir.path(), "callbridge", "callbridge test CA");
    let issued = pki.issue(dir.path(), "callbridge", &["127.0.0.1"]);
    let mut bridge = Bridge::start_with(Options {
        extra: vec![
            "tls.listen=\"127.0.0.1:0\"".to_owned(),
            format!("tls.cert_file=\"{}\"", issued.cert_file.display()),
            format!("tls.key_file=\"{}\"", issued.key_file.display()),
        ],
        ..Options::default()
    })
    .await;
    let tls_addr = bridge.running.sip_tls_addr.expect("the TLS listener");
    assert_ne!(tls_addr.port(), bridge.sip.port());
    let callid = bridge.makecall("1001", "2001", "3001").await;
    let mut phone = Phone::tls(&bridge, "1001", pki.client_config()).await;
    assert_eq!(phone.ua.transport(), "TLS");
    phone.call("2001").await;
    // 100 at once, on the connection.
    let trying = match phone.ua.recv().await {
        (Message::Response(r), from) => {
            assert_eq!(from, tls_addr);
            r
        }
        (other, _) => panic!("expected 100, got {other:?}"),
    };
    assert_eq!(trying.status, 100);
    let via = trying.headers.top_via().unwrap();
    assert_eq!(via.transport, sip_core::Transport::Tls);
    // Leg B rings (over UDP to the default trunk, the scripted callee); 180 on leg A's
    // connection.
    let invite = expect_request(&mut bridge.callee, Method::Invite).await;
    let dialog = CalleeDialog::new(invite.clone());
    bridge.callee.send(dialog.reply(&invite, 180, None)).await;
    let ringing = phone.ua.expect_response(180).await;
    phone.learn(&ringing);
    bridge.wait_call_state(&callid, "ringing").await;
    let callee_media = bridge.callee.local_addr();
    bridge
        .callee
        .send(dialog.reply(&invite, 200, Some(callee_media)))
        .await;
    let ok = phone.ua.expect_response(200).await;
    phone.learn(&ok);
    expect_request(&mut bridge.callee, Method::Ack).await;
    phone.ack().await;
    bridge.wait_call_state(&callid, "answered").await;
    // The phone hangs up on the same connection.
    let bye = phone.in_dialog(Method::Bye, None);
    phone.ua.send(bye).await;
    phone.ua.expect_response(200).await;
    let bye_b = expect_request(&mut bridge.callee, Method::Bye).await;
    bridge.callee.send(dialog.reply(&bye_b, 200, None)).await;
    let record = bridge.wait_call_state(&callid, "ended").await;
    assert_eq!(record["end_cause"], "hangup", "{record}");
    bridge.assert_drained().await;
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
