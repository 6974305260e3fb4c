//! The call API end to end (issue 12): `POST /api/calls/{callid}/hangup` over the real HTTP
//! listener, acting on calls the scripted phone and callee drive over real SIP sockets.

use sip_core::Method;
use sip_tests::bridge::{bridged_call, expect_request, Bridge, CalleeDialog, Phone};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangup_of_an_answered_call_sends_bye_on_both_legs() {
    let mut bridge = Bridge::start().await;
    let callid = bridge.makecall("1001", "2001", "3001").await;
    let mut phone = Phone::udp(&bridge, "1001").await;
    let dialog = bridged_call(&mut bridge, &mut phone).await;
    bridge.wait_call_state(&callid, "answered").await;

    let (status, record) = bridge
        .http("POST", &format!("/api/calls/{callid}/hangup"), None)
        .await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["state"], "ended");
    assert_eq!(record["ended_by"], "api");
    assert_eq!(record["end_cause"], "hangup");
    // Both legs get their BYE and answer it.
    let (bye_a, _) = phone.ua.recv_request().await;
    assert_eq!(bye_a.method, Method::Bye);
    phone
        .ua
        .send(sip_core::Response::to_request(&bye_a, 200, None))
        .await;
    let bye_b = expect_request(&mut bridge.callee, Method::Bye).await;
    bridge.callee.send(dialog.reply(&bye_b, 200, None)).await;

    // Again: it has ended.
    let (status, body) = bridge
        .http("POST", &format!("/api/calls/{callid}/hangup"), Some("{}"))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "call_ended");
    let (status, body) = bridge
        .http("POST", "/api/calls/12345678901234567890/hangup", None)
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "unknown_call");
    bridge.assert_drained().await;
    bridge.assert_ports_free().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangup_of_a_ringing_call_cancels_leg_b_and_answers_the_phone() {
    let mut bridge = Bridge::start().await;
    let callid = bridge.makecall("1001", "2001", "3001").await;
    let mut phone = Phone::udp(&bridge, "1001").await;
    phone.call("2001").await;
    let invite = expect_request(&mut bridge.callee, Method::Invite).await;
    let dialog = CalleeDialog::new(invite.clone());
    bridge.callee.send(dialog.reply(&invite, 180, None)).await;
    phone.ua.expect_response(180).await;
    bridge.wait_call_state(&callid, "ringing").await;

    let (status, record) = bridge
        .http("POST", &format!("/api/calls/{callid}/hangup"), None)
        .await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["ended_by"], "api");
    assert_eq!(record["leg_a_code"], 480);
    // The phone gets its final response and ACKs it; leg B is cancelled.
    let unavailable = phone.ua.expect_response(480).await;
    let ack = phone.ack_failure(&unavailable);
    phone.ua.send(ack).await;
    let cancel_b = expect_request(&mut bridge.callee, Method::Cancel).await;
    bridge.callee.send(dialog.reply(&cancel_b, 200, None)).await;
    bridge.callee.send(dialog.reply(&invite, 487, None)).await;
    expect_request(&mut bridge.callee, Method::Ack).await;
    let record = bridge.call(&callid).await;
    assert_eq!(record["leg_b_code"], 487);
    assert_eq!(
        record["ended_by"], "api",
        "leg B's 487 does not rewrite who ended it"
    );
    bridge.assert_drained().await;
    bridge.assert_ports_free().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hangup_before_the_phone_calls_withdraws_the_intent() {
    let bridge = Bridge::start().await;
    let callid = bridge.makecall("1001", "2001", "3001").await;
    let (status, record) = bridge
        .http("POST", &format!("/api/calls/{callid}/hangup"), None)
        .await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["end_cause"], "intent_cancelled");
    assert_eq!(record["ended_by"], "api");
    // The phone calls anyway: there is no intent any more.
    let mut phone = Phone::udp(&bridge, "1001").await;
    phone.call("2001").await;
    let refused = phone.ua.expect_response(403).await;
    let ack = phone.ack_failure(&refused);
    phone.ua.send(ack).await;
    bridge.assert_drained().await;
}
