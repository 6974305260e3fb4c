//! The seed's call flow end to end: callbridge started in-process on loopback, a scripted
//! phone on leg A, a scripted callee on leg B, intents created over the HTTP API. Every test
//! ends by asserting that callbridge holds no call, dialog, transaction or pending intent any
//! more.

use std::time::Duration;

use sip_core::{HeaderName, Message, Method, Request, Response};
use sip_tests::bridge::{
    assert_anchored, bridged_call, expect_request, phone_hangs_up, Bridge, CalleeDialog, Options,
    Phone,
};
use sip_tests::{message, sdp};

/// An SDP offer or answer for `addr` whose direction attribute is `direction`: each relayed
/// SDP in a test carries its own direction, so the one that arrives shows which it was.
fn sdp_directed(addr: std::net::SocketAddr, session_id: u64, direction: &str) -> String {
    sdp(addr, session_id).replace("a=sendrecv", &format!("a={direction}"))
}

/// `response` with `body` as its SDP.
fn with_sdp(mut response: Response, body: String) -> Response {
    response
        .headers
        .set(HeaderName::ContentType, "application/sdp");
    response.body = body.into();
    response
}

/// The phone's answer to a request callbridge sent it on leg A (Contact, optional SDP).
fn phone_reply(phone: &Phone, request: &Request, status: u16, body: Option<String>) -> Response {
    let mut response = Response::to_request(request, status, None);
    response.headers.push(
        HeaderName::Contact,
        format!("<sip:{}@{}>", phone.user, phone.ua.local_addr()),
    );
    match body {
        Some(body) => with_sdp(response, body),
        None => response,
    }
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

    phone_hangs_up(&mut bridge, &mut phone, &dialog).await;

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

/// Sends an INVITE for `phone.user` → 2001 and expects the refusal, with a Reason, and no
/// leg B; then callbridge drained with `pending_intents` intents left untouched.
async fn expect_refused_keeping(
    bridge: &mut Bridge,
    phone: &mut Phone,
    status: u16,
    pending_intents: usize,
) {
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
    bridge.assert_drained_with_intents(pending_intents).await;
    bridge.assert_ports_free().await;
}

/// [`expect_refused_keeping`] for a refusal that leaves no intent behind.
async fn expect_refused(bridge: &mut Bridge, phone: &mut Phone, status: u16) {
    expect_refused_keeping(bridge, phone, status, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_without_intent() {
    let mut bridge = Bridge::start().await;
    let mut phone = Phone::udp(&bridge, "1001").await;
    expect_refused(&mut bridge, &mut phone, 403).await;
    assert_eq!(bridge.refused("no_intent").await, 1);
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
    phone_hangs_up(&mut bridge, &mut phone, &dialog).await;
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
    // The 1 s timer runs from leg B's INVITE; on a loaded machine it may fire before this
    // 180 reaches callbridge, which then rightly relays nothing. So the 180 at the phone is
    // optional (expect_response skips provisionals), while what the timeout must do is not:
    // 480 to the phone, CANCEL to the callee (sent once leg B rang, whichever came first).
    let unavailable = phone.ua.expect_response(480).await;
    let ack = phone.ack_failure(&unavailable);
    phone.ua.send(ack).await;
    let cancel_b = expect_request(&mut bridge.callee, Method::Cancel).await;
    bridge.callee.send(dialog.reply(&cancel_b, 200, None)).await;
    bridge.callee.send(dialog.reply(&invite, 487, None)).await;
    expect_request(&mut bridge.callee, Method::Ack).await;
    let record = bridge.wait_call_state(&callid, "ended").await;
    assert_eq!(record["end_cause"], "no_answer");
    assert_eq!(record["ended_by"], "system");
    assert_eq!(record["leg_a_code"], 480);
    assert_eq!(record["leg_b_code"], 487);
    // The 480 is ACKed: not retransmitted (T1 = 50 ms, so 600 ms spans several intervals).
    phone.ua.expect_silence(Duration::from_millis(600)).await;
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
    let callid = bridge.makecall("1001", "2001", "3001").await;
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
    // The record tells what each leg really got: the phone 487 (it cancelled), the callee's
    // answer 200 (then hung up by callbridge); the call was never bridged.
    let record = bridge.wait_call_state(&callid, "ended").await;
    assert_eq!(record["leg_a_code"], 487);
    assert_eq!(record["leg_b_code"], 200);
    assert_eq!(record["end_cause"], "cancelled");
    assert_eq!(record["ended_by"], "caller");
    assert!(record["answered_at"].is_null(), "{record}");
    // The phone's side ended with its 487: no retransmission of it once ACKed, and nothing
    // of leg B's late answer (no 200, no BYE) reaches it. 600 ms spans several T1 = 50 ms
    // retransmission intervals, and the socket also still holds anything sent before.
    phone.ua.expect_silence(Duration::from_millis(600)).await;
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
    let held = with_sdp(
        dialog.reply(&relayed, 200, None),
        sdp_directed(media, 2, "recvonly"),
    );
    bridge.callee.send(held).await;
    let ok = phone.ua.expect_response(200).await;
    assert_anchored(&ok.body, bridge.rtp_ports, "recvonly");
    expect_request(&mut bridge.callee, Method::Ack).await;
    phone.ack().await;

    // Callee re-INVITEs (puts the phone on hold): relayed to the phone on leg A's dialog,
    // its SDP anchored (callbridge's address, a relay port) with the callee's direction.
    let reinvite = dialog.in_dialog(
        Method::Invite,
        media,
        Some(sdp_directed(media, 3, "sendonly")),
    );
    bridge.callee.send(reinvite).await;
    let to_phone = expect_request(&mut phone.ua, Method::Invite).await;
    assert_eq!(to_phone.headers.call_id(), Some(phone.call_id.as_str()));
    assert_anchored(&to_phone.body, bridge.rtp_ports, "sendonly");
    // The phone's answer goes back to the callee anchored too.
    let answer = sdp_directed(phone.ua.local_addr(), 1, "recvonly");
    let ok = phone_reply(&phone, &to_phone, 200, Some(answer));
    phone.ua.send(ok).await;
    let ok_b = bridge.callee.expect_response(200).await;
    assert_anchored(&ok_b.body, bridge.rtp_ports, "recvonly");
    expect_request(&mut phone.ua, Method::Ack).await;

    phone_hangs_up(&mut bridge, &mut phone, &dialog).await;
    bridge.assert_drained().await;
    bridge.assert_ports_free().await;
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
    phone_hangs_up(&mut bridge, &mut phone, &dialog).await;
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

/// Sends an UPDATE with an SDP offer from the phone; the callee receives it anchored and
/// answers; the phone receives the answer anchored (RFC 3311, in whatever dialog state the
/// legs are in).
async fn phone_updates(bridge: &mut Bridge, phone: &mut Phone, dialog: &CalleeDialog) {
    let offer = sdp_directed(phone.ua.local_addr(), 4, "sendonly");
    let update = phone.in_dialog(Method::Update, Some(offer));
    phone.ua.send(update).await;
    let relayed = expect_request(&mut bridge.callee, Method::Update).await;
    assert_eq!(relayed.headers.call_id(), dialog.invite.headers.call_id());
    assert_anchored(&relayed.body, bridge.rtp_ports, "sendonly");
    let media = bridge.callee.local_addr();
    let answer = with_sdp(
        dialog.reply(&relayed, 200, None),
        sdp_directed(media, 5, "recvonly"),
    );
    bridge.callee.send(answer).await;
    let ok = phone.ua.expect_response(200).await;
    assert_eq!(ok.headers.cseq().unwrap().method, Method::Update);
    assert_anchored(&ok.body, bridge.rtp_ports, "recvonly");
}

/// Sends an UPDATE with an SDP offer from the callee; the phone receives it anchored on leg
/// A's dialog and answers; the callee receives the answer anchored. Returns the UPDATE as
/// the phone got it.
async fn callee_updates(
    bridge: &mut Bridge,
    phone: &mut Phone,
    dialog: &mut CalleeDialog,
) -> Request {
    let media = bridge.callee.local_addr();
    let update = dialog.in_dialog(
        Method::Update,
        media,
        Some(sdp_directed(media, 6, "inactive")),
    );
    bridge.callee.send(update).await;
    let to_phone = expect_request(&mut phone.ua, Method::Update).await;
    assert_eq!(to_phone.headers.call_id(), Some(phone.call_id.as_str()));
    assert_anchored(&to_phone.body, bridge.rtp_ports, "inactive");
    let answer = sdp_directed(phone.ua.local_addr(), 7, "inactive");
    let ok = phone_reply(phone, &to_phone, 200, Some(answer));
    phone.ua.send(ok).await;
    let ok_b = bridge.callee.expect_response(200).await;
    assert_eq!(ok_b.headers.cseq().unwrap().method, Method::Update);
    assert_anchored(&ok_b.body, bridge.rtp_ports, "inactive");
    to_phone
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_is_relayed_both_ways_in_the_confirmed_dialog() {
    let mut bridge = Bridge::start().await;
    let callid = bridge.makecall("1001", "2001", "3001").await;
    let mut phone = Phone::udp(&bridge, "1001").await;
    let mut dialog = bridged_call(&mut bridge, &mut phone).await;
    phone_updates(&mut bridge, &mut phone, &dialog).await;
    callee_updates(&mut bridge, &mut phone, &mut dialog).await;
    // Still one call: the UPDATEs changed the session, not the call.
    assert_eq!(bridge.call(&callid).await["state"], "answered");
    phone_hangs_up(&mut bridge, &mut phone, &dialog).await;
    bridge.wait_call_state(&callid, "ended").await;
    bridge.assert_drained().await;
    bridge.assert_ports_free().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_is_relayed_both_ways_in_the_early_dialog() {
    let mut bridge = Bridge::start().await;
    let callid = bridge.makecall("1001", "2001", "3001").await;
    let mut phone = Phone::udp(&bridge, "1001").await;
    phone.call("2001").await;
    let invite = expect_request(&mut bridge.callee, Method::Invite).await;
    let mut dialog = CalleeDialog::new(invite.clone());
    // 183 with an SDP answer: the early dialogs exist on both legs (tags, Contacts) and the
    // initial offer has its answer, so either side may now UPDATE (RFC 3311 §5.1).
    let media = bridge.callee.local_addr();
    bridge
        .callee
        .send(dialog.reply(&invite, 183, Some(media)))
        .await;
    let progress = phone.ua.expect_response(183).await;
    assert_anchored(&progress.body, bridge.rtp_ports, "sendrecv");
    phone.learn(&progress);

    let update_a = callee_updates(&mut bridge, &mut phone, &mut dialog).await;
    phone_updates(&mut bridge, &mut phone, &dialog).await;
    assert_eq!(bridge.call(&callid).await["state"], "ringing");

    // The answer confirms the same dialogs the UPDATEs used.
    bridge
        .callee
        .send(dialog.reply(&invite, 200, Some(media)))
        .await;
    let ok = phone.ua.expect_response(200).await;
    phone.learn(&ok);
    assert_anchored(&ok.body, bridge.rtp_ports, "sendrecv");
    expect_request(&mut bridge.callee, Method::Ack).await;
    phone.ack().await;
    bridge.wait_call_state(&callid, "answered").await;

    // The callee hangs up: callbridge's BYE on leg A continues the CSeq numbering of the
    // early dialog's UPDATE (RFC 3261 §12.2.1.1), else the phone would refuse it.
    let local = bridge.callee.local_addr();
    let bye = dialog.in_dialog(Method::Bye, local, None);
    bridge.callee.send(bye).await;
    bridge.callee.expect_response(200).await;
    let bye_a = expect_request(&mut phone.ua, Method::Bye).await;
    let (update_seq, bye_seq) = (
        update_a.headers.cseq().unwrap().seq,
        bye_a.headers.cseq().unwrap().seq,
    );
    assert!(
        bye_seq > update_seq,
        "BYE CSeq {bye_seq} after UPDATE CSeq {update_seq}"
    );
    phone.ua.send(phone_reply(&phone, &bye_a, 200, None)).await;
    let record = bridge.wait_call_state(&callid, "ended").await;
    assert_eq!(record["ended_by"], "callee");
    bridge.assert_drained().await;
    bridge.assert_ports_free().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_calls_refuses_with_503_and_keeps_the_intent() {
    let mut bridge = Bridge::start_with(Options {
        max_calls: 1,
        ..Options::default()
    })
    .await;
    let first_callid = bridge.makecall("1001", "2001", "3001").await;
    let mut first = Phone::udp(&bridge, "1001").await;
    let first_dialog = bridged_call(&mut bridge, &mut first).await;
    bridge.wait_call_state(&first_callid, "answered").await;

    // A second user, with an intent of their own, while the one call allowed is up.
    let second_callid = bridge.makecall("1002", "2001", "3002").await;
    let mut second = Phone::udp(&bridge, "1002").await;
    second.call("2001").await;
    let refusal = second.ua.expect_response(503).await;
    assert!(
        refusal
            .headers
            .get(&HeaderName::Reason)
            .is_some_and(|r| r.contains("cause=503")),
        "503 without Reason: {refusal:?}"
    );
    let ack = second.ack_failure(&refusal);
    second.ua.send(ack).await;
    // No leg B for it, its intent still waiting, the refusal counted as overload.
    bridge
        .callee
        .expect_silence(Duration::from_millis(300))
        .await;
    assert_eq!(bridge.call(&second_callid).await["state"], "intent");
    assert_eq!(bridge.running.control.intents().len(), 1);
    assert_eq!(bridge.refused("overloaded").await, 1);

    // Once the first call ended, the same intent bridges the second user's call.
    phone_hangs_up(&mut bridge, &mut first, &first_dialog).await;
    bridge.wait_call_state(&first_callid, "ended").await;
    let mut again = Phone::udp(&bridge, "1002").await;
    again.call("2001").await;
    let invite = expect_request(&mut bridge.callee, Method::Invite).await;
    assert_eq!(invite.uri.user(), Some("3002"));
    let dialog = CalleeDialog::new(invite.clone());
    let media = bridge.callee.local_addr();
    bridge
        .callee
        .send(dialog.reply(&invite, 200, Some(media)))
        .await;
    let ok = again.ua.expect_response(200).await;
    again.learn(&ok);
    expect_request(&mut bridge.callee, Method::Ack).await;
    again.ack().await;
    bridge.wait_call_state(&second_callid, "answered").await;
    phone_hangs_up(&mut bridge, &mut again, &dialog).await;
    bridge.wait_call_state(&second_callid, "ended").await;
    assert_eq!(bridge.refused("overloaded").await, 1);
    bridge.assert_drained().await;
    bridge.assert_ports_free().await;
}
