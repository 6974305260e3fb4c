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

/// A trunk over TLS: leg B's INVITE, and the answer to the trunk's re-INVITE, give a Contact
/// with `;transport=tls` on the TLS listener's port (not the UDP/TCP one), so that the trunk's
/// requests in the dialog come back over TLS to a port that speaks it.
#[test]
fn toward_a_tls_trunk_the_contact_names_the_tls_port() {
    let tls_trunk = Peer {
        transport: Transport::Tls,
        ..trunk()
    };
    let mut h = Harness::configured(|config| {
        config.trunk = tls_trunk;
        config.local.tls_port = Some(5061);
    });
    h.control.make_call(h.now, "1001", "2001", "3001").unwrap();
    h.feed(&leg_a_invite("1001", "2001", "z9hG4bKa1", SDP_A), phone());
    let sent = h.sent();
    assert_eq!(methods(&sent, tls_trunk), ["INVITE"]);
    let b_invite = find_request(&sent, "INVITE");
    let contact = |headers: &sip_core::Headers| {
        headers
            .contacts()
            .unwrap()
            .first()
            .map(|c| c.uri.to_string())
            .unwrap()
    };
    assert_eq!(
        contact(&b_invite.headers),
        "sip:2001@127.0.0.1:5061;transport=tls"
    );
    h.feed(&answer(&b_invite, 200, "btag", SDP_B), tls_trunk);
    let a_tag = our_a_tag(&h.sent());
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 1, "z9hG4bKack1", ""),
        phone(),
    );
    // The trunk re-INVITEs; leg A answers; the 200 relayed to the trunk names the TLS port.
    h.feed(
        &in_dialog_from_b(&b_invite, "btag", "INVITE", 8, "z9hG4bKre2", SDP_B),
        tls_trunk,
    );
    let to_a = find_request(&h.sent(), "INVITE");
    h.feed(&answer(&to_a, 200, "atag", SDP_A), phone());
    let sent = h.sent();
    let ok = sent
        .iter()
        .find_map(|(to, m)| match m {
            Message::Response(r) if *to == tls_trunk && r.status == 200 => Some(r.clone()),
            _ => None,
        })
        .expect("the 200 to the trunk's re-INVITE");
    assert_eq!(
        contact(&ok.headers),
        "sip:2001@127.0.0.1:5061;transport=tls"
    );
    h.feed(
        &in_dialog_from_b(&b_invite, "btag", "ACK", 8, "z9hG4bKre2ack", ""),
        tls_trunk,
    );
    h.feed(
        &in_dialog_from_b(&b_invite, "btag", "BYE", 9, "z9hG4bKbye", ""),
        tls_trunk,
    );
    let sent = h.sent();
    assert_eq!(statuses(&sent, tls_trunk), [200]);
    let bye = find_request(&sent, "BYE");
    h.feed(&answer(&bye, 200, "atag", ""), phone());
    h.assert_drained();
}
