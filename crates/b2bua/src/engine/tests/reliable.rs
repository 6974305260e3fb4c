//! Leg A over TCP: requests to it follow its connection while it lives and the dialog's next
//! hop when it has dropped.

use super::*;
use sip_core::peer::ConnectionId;
use sip_core::Transport;

#[test]
fn a_bye_to_a_tcp_leg_a_names_its_connection_and_the_dialogs_next_hop() {
    let mut h = Harness::new();
    // The caller's connection comes from an ephemeral port; its Contact says 5062.
    let caller = Peer {
        transport: Transport::Tcp,
        addr: "127.0.0.1:40001".parse().unwrap(),
        connection: Some(ConnectionId(7)),
    };
    let invite = {
        let mut request = request_of(&leg_a_invite("1001", "2001", "z9hG4bKtcp1", SDP_A)).clone();
        request.headers.set(
            HeaderName::Via,
            "SIP/2.0/TCP 127.0.0.1:5062;branch=z9hG4bKtcp1;received=127.0.0.1",
        );
        Message::Request(request)
    };
    let intent = h.control.make_call(h.now, "1001", "2001", "3001").unwrap();
    h.feed(&invite, caller);
    let b_invite = find_request(&h.sent(), "INVITE");
    h.feed(&answer(&b_invite, 200, "btag", SDP_B), trunk());
    let sent = h.sent();
    let ok = sent
        .iter()
        .find(|(_, m)| matches!(m, Message::Response(r) if r.status == 200))
        .expect("the 200 to leg A");
    assert_eq!(
        ok.0,
        Peer {
            addr: "127.0.0.1:5062".parse().unwrap(),
            ..caller
        },
        "responses go back on the connection, else to the Via's sent-by port"
    );
    h.feed(
        &in_dialog_from_b(&b_invite, "btag", "BYE", 2, "z9hG4bKbb", ""),
        trunk(),
    );
    let sent = h.sent();
    let (to, bye) = sent
        .iter()
        .find(|(_, m)| matches!(m, Message::Request(r) if r.method == sip_core::Method::Bye))
        .expect("a BYE to leg A");
    let bye = request_of(bye).clone();
    assert_eq!(
        *to,
        Peer {
            addr: "127.0.0.1:5062".parse().unwrap(),
            ..caller
        },
        "the live connection first; the Contact's address if it has dropped"
    );
    h.feed(&answer(&bye, 200, "atag", ""), caller);
    assert_eq!(
        h.control.call(&intent.callid).unwrap().state,
        CallState::Ended
    );
    h.assert_drained();
}
