//! Dialog layer tests. Messages are written as SIP text and parsed, so that they go through
//! the same header model as messages from the wire.

use super::*;
use crate::message::{CSeq, Message, ParseLimits};

const CALL_ID: &str = "a84b4c76e66710@pc33.atlanta.example.com";
const ALICE_TAG: &str = "1928301774";
const BOB_TAG: &str = "a6c85cf";

fn parse(text: &str) -> Message {
    let mut wire = text.trim_start().replace('\n', "\r\n");
    wire.push_str("Content-Length: 0\r\n\r\n");
    Message::parse(wire.as_bytes(), &ParseLimits::default()).unwrap()
}

fn request(text: &str) -> Request {
    match parse(text) {
        Message::Request(r) => r,
        Message::Response(_) => panic!("not a request"),
    }
}

fn response(text: &str) -> Response {
    match parse(text) {
        Message::Response(r) => r,
        Message::Request(_) => panic!("not a response"),
    }
}

/// Alice's INVITE as Bob receives it, after two record-routing proxies
/// (p2 is the one next to Bob, so it is on top).
fn invite() -> Request {
    request(&format!(
        "\
INVITE sip:bob@biloxi.example.com SIP/2.0
Via: SIP/2.0/UDP p2.example.com;branch=z9hG4bKp2
Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bKp1
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds
Max-Forwards: 68
Record-Route: <sip:p2.example.com;lr>
Record-Route: <sip:p1.example.com;lr>
To: Bob <sip:bob@biloxi.example.com>
From: Alice <sip:alice@atlanta.example.com>;tag={ALICE_TAG}
Call-ID: {CALL_ID}
CSeq: 314159 INVITE
Contact: <sip:alice@pc33.atlanta.example.com>
"
    ))
}

/// A response to [`invite`] from Bob. `to_tag` empty means no tag.
fn answer(status: &str, to_tag: &str, extra: &str) -> Response {
    let tag = if to_tag.is_empty() {
        String::new()
    } else {
        format!(";tag={to_tag}")
    };
    response(&format!(
        "\
SIP/2.0 {status}
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds
To: Bob <sip:bob@biloxi.example.com>{tag}
From: Alice <sip:alice@atlanta.example.com>;tag={ALICE_TAG}
Call-ID: {CALL_ID}
CSeq: 314159 INVITE
{extra}"
    ))
}

fn ringing() -> Response {
    answer(
        "180 Ringing",
        BOB_TAG,
        "Record-Route: <sip:p2.example.com;lr>, <sip:p1.example.com;lr>\n\
         Contact: <sip:bob@192.0.2.4>\n",
    )
}

fn ok() -> Response {
    answer(
        "200 OK",
        BOB_TAG,
        "Record-Route: <sip:p2.example.com;lr>, <sip:p1.example.com;lr>\n\
         Contact: <sip:bob@192.0.2.4>\n",
    )
}

fn uris(routes: &[NameAddr]) -> Vec<&str> {
    routes.iter().map(|r| r.uri.as_str()).collect()
}

fn cseq_of(request: &Request) -> CSeq {
    request.headers.cseq().unwrap()
}

/// A request from Bob inside the dialog, as Alice receives it.
fn from_bob(method: &str, seq: u32, extra: &str) -> Request {
    request(&format!(
        "\
{method} sip:alice@pc33.atlanta.example.com SIP/2.0
Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bKbob{seq}
Max-Forwards: 69
From: Bob <sip:bob@biloxi.example.com>;tag={BOB_TAG}
To: Alice <sip:alice@atlanta.example.com>;tag={ALICE_TAG}
Call-ID: {CALL_ID}
CSeq: {seq} {method}
{extra}"
    ))
}

/// A response from Bob to a request Alice sent inside the dialog.
fn bob_answers(status: &str, cseq: &str, extra: &str) -> Response {
    response(&format!(
        "\
SIP/2.0 {status}
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKx
To: Bob <sip:bob@biloxi.example.com>;tag={BOB_TAG}
From: Alice <sip:alice@atlanta.example.com>;tag={ALICE_TAG}
Call-ID: {CALL_ID}
CSeq: {cseq}
{extra}"
    ))
}

fn alice_confirmed() -> Dialog {
    Dialog::new_uac(&invite(), &ok()).unwrap()
}

#[test]
fn uac_dialog_is_early_on_180_with_tag_and_confirmed_by_200() {
    let mut dialog = Dialog::new_uac(&invite(), &ringing()).unwrap();
    assert_eq!(dialog.state(), DialogState::Early);
    assert!(dialog.is_uac());
    assert_eq!(dialog.id(), &DialogId::new(CALL_ID, ALICE_TAG, BOB_TAG));
    assert_eq!(dialog.local_seq(), 314159);
    assert_eq!(dialog.remote_seq(), None);
    assert_eq!(dialog.local_uri().tag(), Some(ALICE_TAG));
    assert_eq!(dialog.remote_uri().tag(), Some(BOB_TAG));
    assert_eq!(
        dialog.local_contact().uri.as_str(),
        "sip:alice@pc33.atlanta.example.com"
    );
    assert!(!dialog.is_secure());

    // The 200 went through one more record-routing proxy and names another Contact: the
    // early dialog's route set is recomputed (§13.2.2.4) and the target refreshed.
    let ok = answer(
        "200 OK",
        BOB_TAG,
        "Record-Route: <sip:p3.example.com;lr>, <sip:p2.example.com;lr>, <sip:p1.example.com;lr>\n\
         Contact: <sip:bob@192.0.2.5:5070>\n",
    );
    dialog.on_response(&ok).unwrap();
    assert_eq!(dialog.state(), DialogState::Confirmed);
    assert_eq!(
        uris(dialog.route_set()),
        vec![
            "sip:p1.example.com;lr",
            "sip:p2.example.com;lr",
            "sip:p3.example.com;lr"
        ]
    );
    assert_eq!(dialog.remote_target().as_str(), "sip:bob@192.0.2.5:5070");

    // Once confirmed, a 2xx to a later re-INVITE no longer touches the route set.
    let reinvite_ok = bob_answers(
        "200 OK",
        "314160 INVITE",
        "Record-Route: <sip:evil.example.com;lr>\nContact: <sip:bob@192.0.2.6>\n",
    );
    dialog.on_response(&reinvite_ok).unwrap();
    assert_eq!(dialog.route_set().len(), 3);
    assert_eq!(dialog.remote_target().as_str(), "sip:bob@192.0.2.6");
}

#[test]
fn uas_dialog_from_invite_and_200() {
    let invite = invite();
    let mut ok = Response::to_request(&invite, 200, None);
    ok.headers.set(
        HeaderName::To,
        invite.headers.to().unwrap().with_tag(BOB_TAG).to_string(),
    );
    ok.headers
        .push(HeaderName::Contact, "<sip:bob@192.0.2.4;transport=tcp>");
    let dialog = Dialog::new_uas(&invite, &ok).unwrap();
    assert_eq!(dialog.state(), DialogState::Confirmed);
    assert!(!dialog.is_uac());
    assert_eq!(dialog.id(), &DialogId::new(CALL_ID, BOB_TAG, ALICE_TAG));
    assert_eq!(dialog.remote_seq(), Some(314159));
    assert!((1..1 << 30).contains(&dialog.local_seq()));
    assert_eq!(
        dialog.remote_target().as_str(),
        "sip:alice@pc33.atlanta.example.com"
    );
    assert_eq!(
        dialog.local_contact().uri.as_str(),
        "sip:bob@192.0.2.4;transport=tcp"
    );
    assert_eq!(dialog.local_uri().tag(), Some(BOB_TAG));
    assert_eq!(dialog.remote_uri().tag(), Some(ALICE_TAG));
    assert_eq!(dialog.remote_uri().display_name.as_deref(), Some("Alice"));

    // Without our To tag or our Contact the response cannot create a dialog.
    let mut untagged = Response::to_request(&invite, 200, None);
    untagged.headers.push(HeaderName::Contact, "<sip:bob@h>");
    assert_eq!(
        Dialog::new_uas(&invite, &untagged),
        Err(DialogError::MissingHeader("To tag"))
    );
    let mut no_contact = ok.clone();
    no_contact.headers.remove_all(&HeaderName::Contact);
    assert_eq!(
        Dialog::new_uas(&invite, &no_contact),
        Err(DialogError::MissingHeader("Contact"))
    );
}

#[test]
fn uas_early_dialog_is_confirmed_by_the_2xx_it_sends() {
    let invite = invite();
    let to = invite.headers.to().unwrap().with_tag(BOB_TAG).to_string();
    let mut ringing = Response::to_request(&invite, 180, None);
    ringing.headers.set(HeaderName::To, to.clone());
    ringing.headers.push(HeaderName::Contact, "<sip:bob@h>");
    let mut dialog = Dialog::new_uas(&invite, &ringing).unwrap();
    assert_eq!(dialog.state(), DialogState::Early);
    let mut ok = Response::to_request(&invite, 200, None);
    ok.headers.set(HeaderName::To, to.clone());
    dialog.on_response_sent(&ok).unwrap();
    assert_eq!(dialog.state(), DialogState::Confirmed);

    let mut other = Dialog::new_uas(&invite, &ringing).unwrap();
    let mut busy = Response::to_request(&invite, 486, None);
    busy.headers.set(HeaderName::To, to);
    other.on_response_sent(&busy).unwrap();
    assert_eq!(other.state(), DialogState::Terminated);
}

#[test]
fn route_set_is_reversed_for_uac_and_kept_for_uas() {
    let uac = alice_confirmed();
    assert_eq!(
        uris(uac.route_set()),
        vec!["sip:p1.example.com;lr", "sip:p2.example.com;lr"]
    );
    assert_eq!(uac.next_hop().as_str(), "sip:p1.example.com;lr");

    let invite = invite();
    let mut ok = Response::to_request(&invite, 200, None);
    ok.headers.set(
        HeaderName::To,
        invite.headers.to().unwrap().with_tag(BOB_TAG).to_string(),
    );
    ok.headers.push(HeaderName::Contact, "<sip:bob@192.0.2.4>");
    let uas = Dialog::new_uas(&invite, &ok).unwrap();
    assert_eq!(
        uris(uas.route_set()),
        vec!["sip:p2.example.com;lr", "sip:p1.example.com;lr"]
    );
    assert_eq!(uas.next_hop().as_str(), "sip:p2.example.com;lr");

    // Without a route set the next hop is the remote target.
    let direct = Dialog::new_uac(
        &invite,
        &answer("200 OK", BOB_TAG, "Contact: <sip:bob@192.0.2.4>\n"),
    )
    .unwrap();
    assert!(direct.route_set().is_empty());
    assert_eq!(direct.next_hop().as_str(), "sip:bob@192.0.2.4");
}

#[test]
fn remote_target_comes_from_contact_and_is_refreshed_by_reinvite() {
    let mut dialog = alice_confirmed();
    assert_eq!(dialog.remote_target().as_str(), "sip:bob@192.0.2.4");

    // A non-refreshing request with a Contact leaves the target alone.
    dialog
        .on_request(&from_bob("INFO", 1, "Contact: <sip:bob@203.0.113.9>\n"))
        .unwrap();
    assert_eq!(dialog.remote_target().as_str(), "sip:bob@192.0.2.4");

    dialog
        .on_request(&from_bob(
            "INVITE",
            2,
            "Contact: <sip:bob@198.51.100.7:5080>\n",
        ))
        .unwrap();
    assert_eq!(dialog.remote_target().as_str(), "sip:bob@198.51.100.7:5080");
    assert_eq!(dialog.remote_seq(), Some(2));
    let bye = dialog.create_request(Method::Bye);
    assert_eq!(bye.uri.as_str(), "sip:bob@198.51.100.7:5080");

    // UPDATE refreshes too; a 2xx to our UPDATE with a Contact as well.
    dialog
        .on_request(&from_bob("UPDATE", 3, "Contact: <sip:bob@198.51.100.8>\n"))
        .unwrap();
    assert_eq!(dialog.remote_target().as_str(), "sip:bob@198.51.100.8");
    let update = dialog.create_request(Method::Update);
    let seq = cseq_of(&update).seq;
    dialog
        .on_response(&bob_answers(
            "200 OK",
            &format!("{seq} UPDATE"),
            "Contact: <sip:bob@198.51.100.9>\n",
        ))
        .unwrap();
    assert_eq!(dialog.remote_target().as_str(), "sip:bob@198.51.100.9");
    // A malformed Contact in a refresh is refused and changes nothing.
    let bad = from_bob("INVITE", 4, "Contact: <sip:bob@198.51.100.10\n");
    let error = dialog.on_request(&bad).unwrap_err();
    assert_eq!(error.status_code(), 400);
    assert_eq!(dialog.remote_seq(), Some(3));
    assert_eq!(dialog.remote_target().as_str(), "sip:bob@198.51.100.9");
}

#[test]
fn create_request_bye_increments_cseq_and_routes_to_remote_target() {
    let mut dialog = alice_confirmed();
    let bye = dialog.create_request(Method::Bye);
    assert_eq!(bye.method, Method::Bye);
    assert_eq!(bye.uri.as_str(), "sip:bob@192.0.2.4");
    assert_eq!(
        cseq_of(&bye),
        CSeq {
            seq: 314160,
            method: Method::Bye
        }
    );
    assert_eq!(dialog.local_seq(), 314160);
    assert_eq!(
        uris(&bye.headers.routes().unwrap()),
        vec!["sip:p1.example.com;lr", "sip:p2.example.com;lr"]
    );
    assert_eq!(bye.headers.from().unwrap().tag(), Some(ALICE_TAG));
    assert_eq!(bye.headers.to().unwrap().tag(), Some(BOB_TAG));
    assert_eq!(bye.headers.call_id(), Some(CALL_ID));
    assert_eq!(bye.headers.max_forwards(), Some(Ok(70)));
    assert!(!bye.headers.contains(&HeaderName::Via));
    assert!(!bye.headers.contains(&HeaderName::Contact));

    // The next request takes the next number; target refreshes carry our Contact.
    let reinvite = dialog.create_request(Method::Invite);
    assert_eq!(cseq_of(&reinvite).seq, 314161);
    assert_eq!(
        reinvite.headers.contacts().unwrap()[0].uri.as_str(),
        "sip:alice@pc33.atlanta.example.com"
    );

    // What we build survives the writer and the parser (once a Via is added).
    let mut wire = bye.clone();
    wire.headers.push_front(
        HeaderName::Via,
        "SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bKnew",
    );
    let Message::Request(parsed) =
        Message::parse(&wire.to_bytes(), &ParseLimits::default()).unwrap()
    else {
        panic!("not a request");
    };
    assert_eq!(parsed, wire);
    // Bob's side finds its own dialog from it.
    assert_eq!(
        DialogId::for_incoming_request(&parsed),
        Some(dialog.id().reversed())
    );
}

#[test]
fn strict_router_gets_the_request_uri_and_the_target_goes_last() {
    let response = answer(
        "200 OK",
        BOB_TAG,
        "Record-Route: <sip:p2.example.com;lr>, <sip:strict.example.com>\n\
         Contact: <sip:bob@192.0.2.4>\n",
    );
    let mut dialog = Dialog::new_uac(&invite(), &response).unwrap();
    assert_eq!(dialog.next_hop().as_str(), "sip:strict.example.com");
    let bye = dialog.create_request(Method::Bye);
    assert_eq!(bye.uri.as_str(), "sip:strict.example.com");
    assert_eq!(
        uris(&bye.headers.routes().unwrap()),
        vec!["sip:p2.example.com;lr", "sip:bob@192.0.2.4"]
    );
    let ack = dialog.create_ack(314159);
    assert_eq!(ack.uri.as_str(), "sip:strict.example.com");
    assert_eq!(
        uris(&ack.headers.routes().unwrap()),
        vec!["sip:p2.example.com;lr", "sip:bob@192.0.2.4"]
    );
}

#[test]
fn create_ack_keeps_the_invite_cseq_number() {
    let mut dialog = alice_confirmed();
    let ack = dialog.create_ack(314159);
    assert_eq!(ack.method, Method::Ack);
    assert_eq!(
        cseq_of(&ack),
        CSeq {
            seq: 314159,
            method: Method::Ack
        }
    );
    assert_eq!(ack.uri.as_str(), "sip:bob@192.0.2.4");
    assert_eq!(ack.headers.routes().unwrap().len(), 2);
    assert_eq!(ack.headers.to().unwrap().tag(), Some(BOB_TAG));
    assert!(!ack.headers.contains(&HeaderName::Via));
    assert_eq!(dialog.local_seq(), 314159, "an ACK takes no CSeq number");

    // ACK for a re-INVITE: the re-INVITE's number, and create_request(ACK) does the same.
    let reinvite = dialog.create_request(Method::Invite);
    let seq = cseq_of(&reinvite).seq;
    let ack = dialog.create_request(Method::Ack);
    assert_eq!(cseq_of(&ack).seq, seq);
    assert_eq!(ack.method, Method::Ack);
    assert_eq!(dialog.local_seq(), seq);
}

#[test]
fn lower_cseq_is_out_of_order_with_500_and_ack_with_equal_cseq_is_accepted() {
    let mut dialog = alice_confirmed();
    // The first request from Bob sets the remote sequence number, whatever its value.
    dialog.on_request(&from_bob("INVITE", 100, "")).unwrap();
    assert_eq!(dialog.remote_seq(), Some(100));

    let error = dialog.on_request(&from_bob("INFO", 99, "")).unwrap_err();
    assert_eq!(
        error,
        DialogError::CSeqOutOfOrder {
            got: 99,
            expected_above: 100
        }
    );
    assert_eq!(error.status_code(), 500);
    assert_eq!(dialog.remote_seq(), Some(100));
    // The same number for a new request is out of order as well.
    assert!(matches!(
        dialog.on_request(&from_bob("INFO", 100, "")),
        Err(DialogError::CSeqOutOfOrder { got: 100, .. })
    ));

    // ACK and CANCEL carry the INVITE's number.
    dialog.on_request(&from_bob("ACK", 100, "")).unwrap();
    dialog.on_request(&from_bob("CANCEL", 100, "")).unwrap();
    assert_eq!(dialog.remote_seq(), Some(100));
    assert_eq!(dialog.state(), DialogState::Confirmed);

    dialog.on_request(&from_bob("INFO", 101, "")).unwrap();
    assert_eq!(dialog.remote_seq(), Some(101));
}

#[test]
fn dialog_ids_of_the_two_sides_match() {
    let invite = invite();
    let ok = ok();
    let alice = Dialog::new_uac(&invite, &ok).unwrap();
    let bob = Dialog::new_uas(&invite, &ok).unwrap();
    assert_eq!(alice.id(), &bob.id().reversed());
    assert_eq!(
        DialogId::for_incoming_response(&ok).as_ref(),
        Some(alice.id())
    );

    // A BYE from Alice, as Bob receives it, finds Bob's dialog; a BYE from Bob finds Alice's.
    let mut alice = alice;
    let mut bob = bob;
    let from_alice = alice.create_request(Method::Bye);
    assert_eq!(
        DialogId::for_incoming_request(&from_alice).as_ref(),
        Some(bob.id())
    );
    let from_bob = bob.create_request(Method::Bye);
    assert_eq!(
        DialogId::for_incoming_request(&from_bob).as_ref(),
        Some(alice.id())
    );
    // Bob's response to Alice's BYE is matched back to Alice's dialog.
    let bye_ok = Response::to_request(&from_alice, 200, None);
    assert_eq!(
        DialogId::for_incoming_response(&bye_ok).as_ref(),
        Some(alice.id())
    );
    assert_eq!(
        alice.id().to_string(),
        format!("{CALL_ID};local-tag={ALICE_TAG};remote-tag={BOB_TAG}")
    );

    // An initial request (no To tag) belongs to no dialog; neither does an untagged 180.
    assert_eq!(DialogId::for_incoming_request(&invite), None);
    assert_eq!(
        DialogId::for_incoming_response(&answer("180 Ringing", "", "")),
        None
    );
    // A 2xx without To tag (RFC 2543 peer) has the null remote tag.
    assert_eq!(
        DialogId::for_incoming_response(&answer("200 OK", "", "")),
        Some(DialogId::new(CALL_ID, ALICE_TAG, ""))
    );
}

#[test]
fn responses_that_do_not_create_dialogs_are_refused() {
    let invite = invite();
    let contact = "Contact: <sip:bob@192.0.2.4>\n";
    assert_eq!(
        Dialog::new_uac(&invite, &answer("180 Ringing", "", contact)),
        Err(DialogError::NotDialogCreating { status: 180 })
    );
    assert_eq!(
        Dialog::new_uac(&invite, &answer("100 Trying", BOB_TAG, contact)),
        Err(DialogError::NotDialogCreating { status: 100 })
    );
    assert_eq!(
        Dialog::new_uac(&invite, &answer("486 Busy Here", BOB_TAG, contact)),
        Err(DialogError::NotDialogCreating { status: 486 })
    );
    // A 2xx without Contact has no remote target.
    assert_eq!(
        Dialog::new_uac(&invite, &answer("200 OK", BOB_TAG, "")),
        Err(DialogError::MissingHeader("Contact"))
    );
    // A 2xx without To tag creates a dialog with the null remote tag (RFC 3261 §12.1.2).
    let untagged = Dialog::new_uac(&invite, &answer("200 OK", "", contact)).unwrap();
    assert_eq!(untagged.id().remote_tag, "");
    // A response to another request is refused.
    let mut foreign = answer("200 OK", BOB_TAG, contact);
    foreign.headers.set(HeaderName::CSeq, "1 INVITE");
    assert!(matches!(
        Dialog::new_uac(&invite, &foreign),
        Err(DialogError::Malformed(_))
    ));
}

#[test]
fn response_481_or_408_terminates_the_dialog() {
    let mut dialog = alice_confirmed();
    let info = dialog.create_request(Method::Info);
    let seq = cseq_of(&info).seq;
    dialog
        .on_response(&bob_answers(
            "481 Call/Transaction Does Not Exist",
            &format!("{seq} INFO"),
            "",
        ))
        .unwrap();
    assert_eq!(dialog.state(), DialogState::Terminated);

    let mut dialog = alice_confirmed();
    let info = dialog.create_request(Method::Info);
    let seq = cseq_of(&info).seq;
    dialog
        .on_response(&bob_answers(
            "408 Request Timeout",
            &format!("{seq} INFO"),
            "",
        ))
        .unwrap();
    assert_eq!(dialog.state(), DialogState::Terminated);

    // Other failures leave it confirmed; a final response to BYE ends it.
    let mut dialog = alice_confirmed();
    dialog
        .on_response(&bob_answers("488 Not Acceptable Here", "314160 INVITE", ""))
        .unwrap();
    assert_eq!(dialog.state(), DialogState::Confirmed);
    dialog
        .on_response(&bob_answers("200 OK", "314161 BYE", ""))
        .unwrap();
    assert_eq!(dialog.state(), DialogState::Terminated);
}

#[test]
fn non_2xx_final_response_terminates_an_early_dialog() {
    let mut dialog = Dialog::new_uac(&invite(), &ringing()).unwrap();
    // Even with another To tag (for example generated by a proxy).
    dialog
        .on_response(&answer("487 Request Terminated", "proxytag", ""))
        .unwrap();
    assert_eq!(dialog.state(), DialogState::Terminated);
}

#[test]
fn bye_from_the_peer_terminates_and_foreign_requests_are_refused() {
    let mut dialog = alice_confirmed();
    let mut foreign = from_bob("BYE", 5, "");
    foreign
        .headers
        .set(HeaderName::From, "<sip:bob@biloxi.example.com>;tag=other");
    let error = dialog.on_request(&foreign).unwrap_err();
    assert!(matches!(error, DialogError::NotInDialog(_)));
    assert_eq!(error.status_code(), 481);
    assert_eq!(dialog.state(), DialogState::Confirmed);

    // A 2xx from another fork is another dialog.
    let forked = answer("200 OK", "fork2", "Contact: <sip:bob@192.0.2.99>\n");
    assert!(matches!(
        dialog.on_response(&forked),
        Err(DialogError::NotInDialog(_))
    ));

    dialog.on_request(&from_bob("BYE", 5, "")).unwrap();
    assert_eq!(dialog.state(), DialogState::Terminated);
    assert_eq!(dialog.remote_seq(), Some(5));
}

#[test]
fn sips_request_uri_makes_a_secure_dialog() {
    let mut invite = invite();
    invite.uri = Uri::parse("sips:bob@biloxi.example.com").unwrap();
    let dialog = Dialog::new_uac(&invite, &ok()).unwrap();
    assert!(dialog.is_secure());
}
