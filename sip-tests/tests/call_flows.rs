//! The seed's call flow end to end: callbridge started in-process on loopback, a scripted
//! phone on leg A, a scripted callee on leg B, intents created over the HTTP API. Every test
//! ends by asserting that callbridge holds no call, dialog or transaction any more.

use std::time::Duration;

use sip_core::{HeaderName, Message, Method};
use sip_tests::bridge::{assert_anchored, expect_request, Bridge, CalleeDialog, Options, Phone};
use sip_tests::{message, sdp};

/// Leg A INVITE → leg B INVITE at the callee, answered with 180 then 200; leg A sees both,
/// ACKs. Returns the phone and the callee's dialog.
async fn bridged_call(bridge: &mut Bridge, phone: &mut Phone) -> CalleeDialog {
    phone.call("2001").await;
    let invite = expect_request(&mut bridge.callee, Method::Invite).await;
    let dialog = CalleeDialog::new(invite.clone());
    bridge.callee.send(dialog.reply(&invite, 100, None)).await;
    bridge.callee.send(dialog.reply(&invite, 180, None)).await;
    let ringing = phone.ua.expect_response(180).await;
    phone.learn(&ringing);
    let callee_media = bridge.callee.local_addr();
    bridge
        .callee
        .send(dialog.reply(&invite, 200, Some(callee_media)))
        .await;
    let ok = phone.ua.expect_response(200).await;
    phone.learn(&ok);
    // Media anchored: the phone is told to send to callbridge, not to the callee.
    assert_anchored(&ok.body, bridge.rtp_ports, "sendrecv");
    assert_anchored(&invite.body, bridge.rtp_ports, "sendrecv");
    // callbridge ACKs leg B's 200.
    let ack = expect_request(&mut bridge.callee, Method::Ack).await;
    assert_eq!(ack.headers.call_id(), invite.headers.call_id());
    phone.ack().await;
    dialog
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_and_caller_hangs_up() {
    let mut bridge = Bridge::start().await;
    let callid = bridge.makecall("1001", "2001", "3001").await;
    let mut phone = Phone::udp(&bridge, "1001").await;
    let dialog = bridged_call(&mut bridge, &mut phone).await;
    // What leg B saw: the dedicated number calling the target; nothing of the phone.
    let b_text = String::from_utf8_lossy(&dialog.invite.to_bytes()).to_string();
    assert_eq!(dialog.invite.uri.user(), Some("3001"));
    assert_eq!(
        dialog.invite.headers.from().unwrap().uri.user(),
        Some("2001")
    );
    for secret in ["1001", &phone.call_id, &phone.from_tag, "phone.test"] {
        assert!(
            !b_text.contains(secret),
            "leg B carries {secret}:\n{b_text}"
        );
    }
    bridge.wait_call_state(&callid, "answered").await;

    let bye = phone.in_dialog(Method::Bye, None);
    phone.ua.send(bye).await;
    phone.ua.expect_response(200).await;
    let bye_b = expect_request(&mut bridge.callee, Method::Bye).await;
    bridge.callee.send(dialog.reply(&bye_b, 200, None)).await;

    let record = bridge.wait_call_state(&callid, "ended").await;
    assert_eq!(record["ended_by"], "caller");
    assert_eq!(record["end_cause"], "hangup");
    assert_eq!(record["leg_a_code"], 200);
    assert_eq!(record["leg_b_code"], 200);
    for stamp in [
        "created_at",
        "invite_at",
        "ringing_at",
        "answered_at",
        "ended_at",
    ] {
        assert!(record[stamp].is_u64(), "{stamp} missing: {record}");
    }
    bridge.assert_drained().await;
    bridge.assert_ports_free().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_and_callee_hangs_up() {
    let mut bridge = Bridge::start().await;
    let callid = bridge.makecall("1001", "2001", "3001").await;
    let mut phone = Phone::udp(&bridge, "1001").await;
    let mut dialog = bridged_call(&mut bridge, &mut phone).await;
    let local = bridge.callee.local_addr();
    let bye = dialog.in_dialog(Method::Bye, local, None);
    bridge.callee.send(bye).await;
    bridge.callee.expect_response(200).await;
    let bye_a = expect_request(&mut phone.ua, Method::Bye).await;
    assert_eq!(bye_a.headers.call_id(), Some(phone.call_id.as_str()));
    let mut ok = sip_core::Response::to_request(&bye_a, 200, None);
    ok.headers.set(HeaderName::Contact, "<sip:1001@127.0.0.1>");
    phone.ua.send(ok).await;
    let record = bridge.wait_call_state(&callid, "ended").await;
    assert_eq!(record["ended_by"], "callee");
    bridge.assert_drained().await;
    bridge.assert_ports_free().await;
}

/// Sends an INVITE for 1001 → 2001 and expects the refusal, with a Reason, and no leg B.
async fn expect_refused(bridge: &mut Bridge, phone: &mut Phone, status: u16) {
    phone.call("2001").await;
    let refusal = phone.ua.expect_response(status).await;
    assert!(
        refusal
            .headers
            .get(&HeaderName::Reason)
            .is_some_and(|r| r.contains(&format!("cause={status}"))),
        "refusal without Reason: {refusal:?}"
    );
    let ack = phone.ack_failure(&refusal);
    phone.ua.send(ack).await;
    bridge
        .callee
        .expect_silence(Duration::from_millis(300))
        .await;
    bridge.assert_drained().await;
    bridge.assert_ports_free().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_without_intent() {
    let mut bridge = Bridge::start().await;
    let mut phone = Phone::udp(&bridge, "1001").await;
    expect_refused(&mut bridge, &mut phone, 403).await;
    let (_, metrics) = bridge.http("GET", "/metrics", None).await;
    let text = metrics.as_str().unwrap_or_default().to_owned();
    assert!(
        text.contains("callbridge_calls_refused_total{reason=\"no_intent\"} 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_after_cancelcall() {
    let mut bridge = Bridge::start().await;
    let callid = bridge.makecall("1001", "2001", "3001").await;
    let cancelled = bridge.cancelcall("1001").await;
    assert_eq!(cancelled["cancelled"], true);
    let mut phone = Phone::udp(&bridge, "1001").await;
    expect_refused(&mut bridge, &mut phone, 403).await;
    assert_eq!(bridge.call(&callid).await["end_cause"], "intent_cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_after_expiry() {
    let mut bridge = Bridge::start_with(Options {
        intent_ttl_secs: 1,
        ..Options::default()
    })
    .await;
    let callid = bridge.makecall("1001", "2001", "3001").await;
    // The sweeper ends the expired intent; the record says so.
    let record = bridge.wait_call_state(&callid, "ended").await;
    assert_eq!(record["end_cause"], "intent_expired");
    let mut phone = Phone::udp(&bridge, "1001").await;
    expect_refused(&mut bridge, &mut phone, 403).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_when_the_intent_was_already_used() {
    let mut bridge = Bridge::start().await;
    bridge.makecall("1001", "2001", "3001").await;
    let mut phone = Phone::udp(&bridge, "1001").await;
    let dialog = bridged_call(&mut bridge, &mut phone).await;
    let bye = phone.in_dialog(Method::Bye, None);
    phone.ua.send(bye).await;
    phone.ua.expect_response(200).await;
    let bye_b = expect_request(&mut bridge.callee, Method::Bye).await;
    bridge.callee.send(dialog.reply(&bye_b, 200, None)).await;
    let mut again = Phone::udp(&bridge, "1001").await;
    expect_refused(&mut bridge, &mut again, 403).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_makecall_wins() {
    let mut bridge = Bridge::start().await;
    let first = bridge.makecall("1001", "2001", "3001").await;
    let second = bridge.makecall("1001", "2001", "3999").await;
    assert_ne!(first, second);
    assert_eq!(bridge.call(&first).await["end_cause"], "intent_replaced");
    let mut phone = Phone::udp(&bridge, "1001").await;
    phone.call("2001").await;
    let invite = expect_request(&mut bridge.callee, Method::Invite).await;
    assert_eq!(invite.uri.user(), Some("3999"));
    let dialog = CalleeDialog::new(invite.clone());
    bridge.callee.send(dialog.reply(&invite, 486, None)).await;
    expect_request(&mut bridge.callee, Method::Ack).await;
    let busy = phone.ua.expect_response(486).await;
    let ack = phone.ack_failure(&busy);
    phone.ua.send(ack).await;
    bridge.assert_drained().await;
    bridge.assert_ports_free().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_is_relayed_and_acked_on_both_legs() {
    let mut bridge = Bridge::start().await;
    let callid = bridge.makecall("1001", "2001", "3001").await;
    let mut phone = Phone::udp(&bridge, "1001").await;
    phone.call("2001").await;
    let invite = expect_request(&mut bridge.callee, Method::Invite).await;
    let dialog = CalleeDialog::new(invite.clone());
    bridge.callee.send(dialog.reply(&invite, 486, None)).await;
    let ack_b = expect_request(&mut bridge.callee, Method::Ack).await;
    assert_eq!(ack_b.headers.cseq().unwrap().seq, 1);
    let busy = phone.ua.expect_response(486).await;
    let ack = phone.ack_failure(&busy);
    phone.ua.send(ack).await;
    let record = bridge.wait_call_state(&callid, "ended").await;
    assert_eq!(record["leg_a_code"], 486);
    assert_eq!(record["leg_b_code"], 486);
    assert_eq!(record["end_cause"], "callee_rejected");
    // Our 486 is not retransmitted once ACKed.
    phone.ua.expect_silence(Duration::from_millis(300)).await;
    bridge.assert_drained().await;
    bridge.assert_ports_free().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_cancel_while_ringing() {
    let mut bridge = Bridge::start().await;
    let callid = bridge.makecall("1001", "2001", "3001").await;
    let mut phone = Phone::udp(&bridge, "1001").await;
    phone.call("2001").await;
    let invite = expect_request(&mut bridge.callee, Method::Invite).await;
    let dialog = CalleeDialog::new(invite.clone());
    bridge.callee.send(dialog.reply(&invite, 180, None)).await;
    phone.ua.expect_response(180).await;
    let cancel = phone.cancel();
    phone.ua.send(cancel).await;
    // 200 for the CANCEL, then 487 for the INVITE.
    phone.ua.expect_response(200).await;
    let terminated = phone.ua.expect_response(487).await;
    let ack = phone.ack_failure(&terminated);
    phone.ua.send(ack).await;
    // Leg B: CANCEL (answered 200), then the INVITE ends with 487 and is ACKed.
    let cancel_b = expect_request(&mut bridge.callee, Method::Cancel).await;
    bridge.callee.send(dialog.reply(&cancel_b, 200, None)).await;
    bridge.callee.send(dialog.reply(&invite, 487, None)).await;
    expect_request(&mut bridge.callee, Method::Ack).await;
    let record = bridge.wait_call_state(&callid, "ended").await;
    assert_eq!(record["end_cause"], "cancelled");
    assert_eq!(record["ended_by"], "caller");
    bridge.assert_drained().await;
    bridge.assert_ports_free().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_timeout_cancels_leg_b() {
    let mut bridge = Bridge::start_with(Options {
        no_answer_secs: 1,
        ..Options::default()
    })
    .await;
    let callid = bridge.makecall("1001", "2001", "3001").await;
    let mut phone = Phone::udp(&bridge, "1001").await;
    phone.call("2001").await;
    let invite = expect_request(&mut bridge.callee, Method::Invite).await;
    let dialog = CalleeDialog::new(invite.clone());
    bridge.callee.send(dialog.reply(&invite, 180, None)).await;
    phone.ua.expect_response(180).await;
    let unavailable = phone.ua.expect_response(480).await;
    let ack = phone.ack_failure(&unavailable);
    phone.ua.send(ack).await;
    let cancel_b = expect_request(&mut bridge.callee, Method::Cancel).await;
    bridge.callee.send(dialog.reply(&cancel_b, 200, None)).await;
    bridge.callee.send(dialog.reply(&invite, 487, None)).await;
    expect_request(&mut bridge.callee, Method::Ack).await;
    assert_eq!(bridge.call(&callid).await["end_cause"], "no_answer");
    bridge.assert_drained().await;
    bridge.assert_ports_free().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_retransmissions_create_one_leg_b() {
    let mut bridge = Bridge::start().await;
    bridge.makecall("1001", "2001", "3001").await;
    let mut phone = Phone::udp(&bridge, "1001").await;
    let invite = phone.call("2001").await;
    for _ in 0..3 {
        phone.ua.send(invite.clone()).await;
    }
    let leg_b = expect_request(&mut bridge.callee, Method::Invite).await;
    // callbridge's own Timer A may retransmit leg B's INVITE (same branch); never a new one.
    let branch = leg_b
        .headers
        .top_via()
        .unwrap()
        .branch()
        .unwrap()
        .to_owned();
    while let Some((message, _)) = bridge.callee.try_recv(Duration::from_millis(300)).await {
        if let Message::Request(again) = message {
            assert_eq!(
                again.headers.top_via().unwrap().branch(),
                Some(branch.as_str()),
                "a second leg B"
            );
        }
    }
    let dialog = CalleeDialog::new(leg_b.clone());
    bridge.callee.send(dialog.reply(&leg_b, 603, None)).await;
    let declined = phone.ua.expect_response(603).await;
    let ack = phone.ack_failure(&declined);
    phone.ua.send(ack).await;
    bridge.assert_drained().await;
    bridge.assert_ports_free().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_crossing_the_cancel_is_acked_and_hung_up() {
    let mut bridge = Bridge::start().await;
    bridge.makecall("1001", "2001", "3001").await;
    let mut phone = Phone::udp(&bridge, "1001").await;
    phone.call("2001").await;
    let invite = expect_request(&mut bridge.callee, Method::Invite).await;
    let dialog = CalleeDialog::new(invite.clone());
    bridge.callee.send(dialog.reply(&invite, 180, None)).await;
    phone.ua.expect_response(180).await;
    let cancel = phone.cancel();
    phone.ua.send(cancel).await;
    phone.ua.expect_response(200).await;
    let terminated = phone.ua.expect_response(487).await;
    let ack = phone.ack_failure(&terminated);
    phone.ua.send(ack).await;
    // The callee answers instead of honouring the CANCEL.
    let cancel_b = expect_request(&mut bridge.callee, Method::Cancel).await;
    bridge.callee.send(dialog.reply(&cancel_b, 200, None)).await;
    let media = bridge.callee.local_addr();
    bridge
        .callee
        .send(dialog.reply(&invite, 200, Some(media)))
        .await;
    expect_request(&mut bridge.callee, Method::Ack).await;
    let bye = expect_request(&mut bridge.callee, Method::Bye).await;
    bridge.callee.send(dialog.reply(&bye, 200, None)).await;
    bridge.assert_drained().await;
    bridge.assert_ports_free().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinvite_is_relayed_both_ways() {
    let mut bridge = Bridge::start().await;
    bridge.makecall("1001", "2001", "3001").await;
    let mut phone = Phone::udp(&bridge, "1001").await;
    let mut dialog = bridged_call(&mut bridge, &mut phone).await;

    // Phone puts the call on hold: re-INVITE with SDP, relayed to the callee.
    let hold = sdp(phone.ua.local_addr(), 1).replace("sendrecv", "sendonly");
    let reinvite = phone.in_dialog(Method::Invite, Some(hold.clone()));
    phone.ua.send(reinvite).await;
    let relayed = expect_request(&mut bridge.callee, Method::Invite).await;
    assert_anchored(&relayed.body, bridge.rtp_ports, "sendonly");
    assert_eq!(relayed.headers.call_id(), dialog.invite.headers.call_id());
    let media = bridge.callee.local_addr();
    bridge
        .callee
        .send(dialog.reply(&relayed, 200, Some(media)))
        .await;
    phone.ua.expect_response(200).await;
    expect_request(&mut bridge.callee, Method::Ack).await;
    phone.ack().await;

    // Callee re-INVITEs: relayed to the phone on leg A's dialog.
    let reinvite = dialog.in_dialog(Method::Invite, media, Some(sdp(media, 3)));
    bridge.callee.send(reinvite).await;
    let to_phone = expect_request(&mut phone.ua, Method::Invite).await;
    assert_eq!(to_phone.headers.call_id(), Some(phone.call_id.as_str()));
    let mut ok = sip_core::Response::to_request(&to_phone, 200, None);
    ok.headers.push(
        HeaderName::Contact,
        format!("<sip:1001@{}>", phone.ua.local_addr()),
    );
    ok.headers.push(HeaderName::ContentType, "application/sdp");
    ok.body = sdp(phone.ua.local_addr(), 1).into();
    phone.ua.send(ok).await;
    bridge.callee.expect_response(200).await;
    expect_request(&mut phone.ua, Method::Ack).await;

    let bye = phone.in_dialog(Method::Bye, None);
    phone.ua.send(bye).await;
    phone.ua.expect_response(200).await;
    let bye_b = expect_request(&mut bridge.callee, Method::Bye).await;
    bridge.callee.send(dialog.reply(&bye_b, 200, None)).await;
    bridge.assert_drained().await;
    bridge.assert_ports_free().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_source_is_refused_without_touching_the_intent() {
    let mut bridge = Bridge::start_with(Options {
        trusted_peers: vec!["127.0.0.2/32".into()],
        ..Options::default()
    })
    .await;
    let callid = bridge.makecall("1001", "2001", "3001").await;
    let mut phone = Phone::udp(&bridge, "1001").await;
    expect_refused(&mut bridge, &mut phone, 403).await;
    // The intent was never consumed.
    assert_eq!(bridge.call(&callid).await["state"], "intent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_headers_are_understood() {
    let mut bridge = Bridge::start().await;
    bridge.makecall("1001", "2001", "3001").await;
    let mut phone = Phone::udp(&bridge, "1001").await;
    let local = phone.ua.local_addr();
    let body = sdp(local, 1);
    let text = format!(
        "INVITE sip:2001@{server} SIP/2.0\n\
         v: SIP/2.0/UDP {local};branch=z9hG4bKcompact1;rport\n\
         Max-Forwards: 70\n\
         f: <sip:1001@phone.test>;tag=compact\n\
         t: <sip:2001@{server}>\n\
         i: compact-call@phone.test\n\
         CSeq: 1 INVITE\n\
         m: <sip:1001@{local}>\n\
         c: application/sdp\n\
         l: {len}\n\n{body}",
        server = bridge.sip,
        len = body.len()
    );
    phone.ua.send(message(&text)).await;
    let invite = expect_request(&mut bridge.callee, Method::Invite).await;
    assert_anchored(&invite.body, bridge.rtp_ports, "sendrecv");
    let dialog = CalleeDialog::new(invite.clone());
    bridge.callee.send(dialog.reply(&invite, 480, None)).await;
    let response = phone.ua.expect_response(480).await;
    assert_eq!(response.headers.call_id(), Some("compact-call@phone.test"));
    let mut ack = message(
        &text
            .replace("INVITE sip", "ACK sip")
            .replace("1 INVITE", "1 ACK"),
    );
    if let Message::Request(ack) = &mut ack {
        ack.headers.set(
            HeaderName::To,
            response.headers.get(&HeaderName::To).unwrap(),
        );
        ack.body = Default::default();
        ack.headers.remove_all(&HeaderName::ContentType);
    }
    phone.ua.send(ack).await;
    bridge.assert_drained().await;
    bridge.assert_ports_free().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leg_a_over_tcp() {
    let mut bridge = Bridge::start().await;
    let callid = bridge.makecall("1001", "2001", "3001").await;
    let mut phone = Phone::tcp(&bridge, "1001").await;
    let dialog = bridged_call(&mut bridge, &mut phone).await;
    bridge.wait_call_state(&callid, "answered").await;
    let bye = phone.in_dialog(Method::Bye, None);
    phone.ua.send(bye).await;
    phone.ua.expect_response(200).await;
    let bye_b = expect_request(&mut bridge.callee, Method::Bye).await;
    bridge.callee.send(dialog.reply(&bye_b, 200, None)).await;
    bridge.wait_call_state(&callid, "ended").await;
    bridge.assert_drained().await;
    bridge.assert_ports_free().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_sip_gets_400_and_the_server_keeps_serving() {
    let mut bridge = Bridge::start().await;
    let mut phone = Phone::udp(&bridge, "1001").await;
    let local = phone.ua.local_addr();
    let broken = format!(
        "INVITE sip:2001@{} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKbad;rport\r\n\
         From: <sip:1001@phone.test>;tag=x\r\nCall-ID: broken\r\nCSeq: nonsense\r\n\r\n",
        bridge.sip
    );
    phone.ua.send_raw(broken.as_bytes()).await;
    let reply = phone
        .ua
        .try_recv_raw(Duration::from_secs(2))
        .await
        .expect("an answer to the malformed request");
    assert!(
        reply.starts_with(b"SIP/2.0 400 "),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    phone.ua.send_raw(b"\x00\x01garbage\xff").await;
    // Still serving: a normal call is refused normally.
    expect_refused(&mut bridge, &mut phone, 403).await;
    let (_, metrics) = bridge.http("GET", "/metrics", None).await;
    let text = metrics.as_str().unwrap_or_default().to_owned();
    assert!(
        text.contains("callbridge_sip_malformed_total{handling=\"answered\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("callbridge_sip_malformed_total{handling=\"dropped\"} 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_hangs_up_bridged_calls_on_both_legs() {
    let mut bridge = Bridge::start().await;
    let callid = bridge.makecall("1001", "2001", "3001").await;
    let mut phone = Phone::udp(&bridge, "1001").await;
    let dialog = bridged_call(&mut bridge, &mut phone).await;
    bridge.wait_call_state(&callid, "answered").await;
    bridge.running.shutdown();
    let bye_a = expect_request(&mut phone.ua, Method::Bye).await;
    assert!(bye_a
        .headers
        .get(&HeaderName::Reason)
        .is_some_and(|r| r.contains("shutdown")));
    phone
        .ua
        .send(sip_core::Response::to_request(&bye_a, 200, None))
        .await;
    let bye_b = expect_request(&mut bridge.callee, Method::Bye).await;
    bridge.callee.send(dialog.reply(&bye_b, 200, None)).await;
    // The API closed with the shutdown; the registry itself tells how the call ended.
    let record = bridge.running.control.call(&callid).expect("record");
    assert_eq!(record.end_cause, Some(b2bua::EndCause::Shutdown));
    // The SIP task stops once the calls are gone; /healthz then says SIP is not serving.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while bridge.running.status.held().0 != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "calls left after shutdown"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
