//! The call flows of SPEC.md driven through the sans-IO engine with a fake clock: the test is
//! both the trunk delivering leg A and the trunk carrying leg B, and reads what the engine
//! would put on the wire. (The same flows run over real sockets in `sip-tests/`.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sip_core::transaction::TransactionConfig;
use sip_core::{HeaderName, Message, ParseLimits, Peer, Request, Response};

use super::{Engine, EngineConfig};
use crate::control::CallControl;
use crate::media::PassThrough;
use crate::outbound::LocalIdentity;
use crate::registry::{CallState, EndCause, Party};

const SDP_A: &str = "v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";
const SDP_B: &str = "v=0\r\no=b 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 50000 RTP/AVP 0\r\n";

fn trunk() -> Peer {
    Peer::udp("127.0.0.1:5080".parse().unwrap())
}

fn phone() -> Peer {
    Peer::udp("127.0.0.1:5062".parse().unwrap())
}

struct Harness {
    engine: Engine,
    control: Arc<CallControl>,
    now: Instant,
}

impl Harness {
    fn new() -> Harness {
        Harness::with_media(Arc::new(PassThrough))
    }

    fn with_media(media: Arc<dyn crate::media::MediaFactory>) -> Harness {
        Harness::with(media, 100)
    }

    fn with(media: Arc<dyn crate::media::MediaFactory>, max_calls: usize) -> Harness {
        let control = Arc::new(CallControl::new(
            Duration::from_secs(120),
            Duration::from_secs(300),
            1000,
        ));
        let config = EngineConfig {
            local: LocalIdentity {
                public_addr: "127.0.0.1".into(),
                port: 5060,
                agent: "callbridge-test".into(),
            },
            trunk: trunk(),
            trusted_peers: vec!["127.0.0.0/8".parse().unwrap()],
            refuse_code: 403,
            no_answer: Duration::from_secs(60),
            max_duration: None,
            max_calls,
            transactions: TransactionConfig {
                via_host: "127.0.0.1".into(),
                via_port: Some(5060),
                ..TransactionConfig::default()
            },
        };
        Harness {
            engine: Engine::new(config, control.clone(), media),
            control,
            now: Instant::now(),
        }
    }

    fn feed(&mut self, message: &Message, from: Peer) {
        self.engine.handle_message(self.now, message.clone(), from);
    }

    /// Everything sent since the last call, parsed, with its destination.
    fn sent(&mut self) -> Vec<(Peer, Message)> {
        std::iter::from_fn(|| self.engine.poll_transmit())
            .map(|t| {
                let message = Message::parse(&t.bytes, &ParseLimits::default()).unwrap();
                (t.to, message)
            })
            .collect()
    }

    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        while let Some(deadline) = self.engine.poll_timeout() {
            if deadline > end {
                break;
            }
            self.now = self.now.max(deadline);
            self.engine.handle_timeout(self.now);
        }
        self.now = end;
        self.engine.handle_timeout(end);
    }

    /// Runs the clock past every transaction timer and checks that nothing is left.
    fn assert_drained(&mut self) {
        self.advance(Duration::from_secs(120));
        self.sent();
        assert_eq!(self.engine.call_count(), 0, "calls left");
        assert_eq!(self.engine.dialog_count(), 0, "dialogs left");
        assert_eq!(
            self.engine.transactions().client_count(),
            0,
            "client tx left"
        );
        assert_eq!(
            self.engine.transactions().server_count(),
            0,
            "server tx left"
        );
    }
}

fn parse(text: &str) -> Message {
    Message::parse(text.as_bytes(), &ParseLimits::default()).unwrap()
}

fn request_of(message: &Message) -> &Request {
    match message {
        Message::Request(r) => r,
        Message::Response(r) => panic!("expected a request, got {}", r.status),
    }
}

fn response_of(message: &Message) -> &Response {
    match message {
        Message::Response(r) => r,
        Message::Request(r) => panic!("expected a response, got {}", r.method),
    }
}

fn statuses(sent: &[(Peer, Message)], to: Peer) -> Vec<u16> {
    sent.iter()
        .filter(|(p, _)| *p == to)
        .filter_map(|(_, m)| match m {
            Message::Response(r) => Some(r.status),
            Message::Request(_) => None,
        })
        .collect()
}

fn methods(sent: &[(Peer, Message)], to: Peer) -> Vec<String> {
    sent.iter()
        .filter(|(p, _)| *p == to)
        .filter_map(|(_, m)| match m {
            Message::Request(r) => Some(r.method.to_string()),
            Message::Response(_) => None,
        })
        .collect()
}

fn find_request(sent: &[(Peer, Message)], method: &str) -> Request {
    sent.iter()
        .find_map(|(_, m)| match m {
            Message::Request(r) if r.method.to_string() == method => Some(r.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {method} sent"))
}

fn leg_a_invite(from: &str, to: &str, branch: &str, body: &str) -> Message {
    let content_type = if body.is_empty() {
        String::new()
    } else {
        "Content-Type: application/sdp\r\n".to_owned()
    };
    parse(&format!(
        "INVITE sip:{to}@127.0.0.1:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:5062;branch={branch};rport=5062;received=127.0.0.1\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{from}@127.0.0.1>;tag=atag\r\n\
         To: <sip:{to}@127.0.0.1>\r\n\
         Call-ID: leg-a-secret@10.9.9.9\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:{from}@127.0.0.1:5062>\r\n\
         X-Secret-Topology: leg-a-only\r\n\
         {content_type}Content-Length: {}\r\n\r\n{body}",
        body.len()
    ))
}

/// A response from the peer that received `request`, with its To tag and optional SDP.
fn answer(request: &Request, status: u16, to_tag: &str, body: &str) -> Message {
    let mut response = Response::to_request(request, status, None);
    let to = response.headers.to().unwrap().with_tag(to_tag);
    response.headers.set(HeaderName::To, to.to_string());
    response
        .headers
        .push(HeaderName::Contact, "<sip:peer@127.0.0.1:5080>");
    if !body.is_empty() {
        response
            .headers
            .push(HeaderName::ContentType, "application/sdp");
        response.body = Bytes::copy_from_slice(body.as_bytes());
    }
    Message::Response(response)
}

/// The ACK (for a 2xx) or BYE a UA sends inside the dialog of `invite`'s answer.
fn in_dialog_from_a(
    method: &str,
    a_tag_of_ours: &str,
    cseq: u32,
    branch: &str,
    body: &str,
) -> Message {
    parse(&format!(
        "{method} sip:2001@127.0.0.1:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:5062;branch={branch};rport=5062\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:1001@127.0.0.1>;tag=atag\r\n\
         To: <sip:2001@127.0.0.1>;tag={a_tag_of_ours}\r\n\
         Call-ID: leg-a-secret@10.9.9.9\r\n\
         CSeq: {cseq} {method}\r\n\
         Contact: <sip:1001@127.0.0.1:5062>\r\n\
         {}Content-Length: {}\r\n\r\n{body}",
        if body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        },
        body.len()
    ))
}

/// A request from leg B's peer inside leg B's dialog.
fn in_dialog_from_b(
    b_invite: &Request,
    b_tag: &str,
    method: &str,
    cseq: u32,
    branch: &str,
    body: &str,
) -> Message {
    let from_us = b_invite.headers.from().unwrap();
    let to_them = b_invite.headers.to().unwrap();
    parse(&format!(
        "{method} sip:2001@127.0.0.1:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:5080;branch={branch}\r\n\
         Max-Forwards: 70\r\n\
         From: {}\r\n\
         To: {}\r\n\
         Call-ID: {}\r\n\
         CSeq: {cseq} {method}\r\n\
         Contact: <sip:3001@127.0.0.1:5080>\r\n\
         {}Content-Length: {}\r\n\r\n{body}",
        to_them.with_tag(b_tag),
        from_us,
        b_invite.headers.call_id().unwrap(),
        if body.is_empty() {
            ""
        } else {
            "Content-Type: application/sdp\r\n"
        },
        body.len()
    ))
}

/// Sets up a matched call: intent, leg A INVITE, leg B INVITE out. Returns the intent's
/// callid and leg B's INVITE.
fn start_call(h: &mut Harness, body: &str) -> (String, Request) {
    let intent = h.control.make_call(h.now, "1001", "2001", "3001").unwrap();
    h.feed(&leg_a_invite("1001", "2001", "z9hG4bKa1", body), phone());
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [100]);
    assert_eq!(methods(&sent, trunk()), ["INVITE"]);
    (intent.callid, find_request(&sent, "INVITE"))
}

fn our_a_tag(sent: &[(Peer, Message)]) -> String {
    sent.iter()
        .find_map(|(p, m)| match m {
            Message::Response(r) if *p == phone() && r.status > 100 => {
                r.headers.to().ok()?.tag().map(str::to_owned)
            }
            _ => None,
        })
        .expect("a tagged response to leg A")
}

#[test]
fn refused_without_intent_and_no_leg_b() {
    let mut h = Harness::new();
    h.feed(&leg_a_invite("1001", "2001", "z9hG4bKr1", SDP_A), phone());
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [100, 403]);
    assert!(methods(&sent, trunk()).is_empty());
    let refusal = response_of(&sent[1].1);
    assert!(refusal
        .headers
        .get(&HeaderName::Reason)
        .unwrap()
        .contains("cause=403"));
    assert_eq!(h.engine.stats().calls_refused.get("no_intent"), Some(&1));
    h.assert_drained();
}

#[test]
fn untrusted_source_is_refused_before_the_intent_table() {
    let mut h = Harness::new();
    h.control.make_call(h.now, "1001", "2001", "3001").unwrap();
    let stranger = Peer::udp("10.1.1.1:5060".parse().unwrap());
    h.feed(&leg_a_invite("1001", "2001", "z9hG4bKu1", SDP_A), stranger);
    assert_eq!(statuses(&h.sent(), stranger), [100, 403]);
    // The intent is still there for the real call.
    assert_eq!(h.control.intents().len(), 1);
    assert_eq!(
        h.engine.stats().calls_refused.get("untrusted_source"),
        Some(&1)
    );
}

#[test]
fn leg_b_reveals_nothing_of_leg_a() {
    let mut h = Harness::new();
    let (_, b_invite) = start_call(&mut h, SDP_A);
    let text = String::from_utf8_lossy(&b_invite.to_bytes()).to_string();
    for secret in [
        "1001",
        "leg-a-secret",
        "10.9.9.9",
        "5062",
        "X-Secret",
        "atag",
    ] {
        assert!(
            !text.contains(secret),
            "{secret} leaked into leg B:\n{text}"
        );
    }
    assert_eq!(b_invite.uri.user(), Some("3001"));
    assert_eq!(b_invite.uri.port(), Some(5080));
    assert_eq!(b_invite.headers.from().unwrap().uri.user(), Some("2001"));
    assert_eq!(b_invite.body, Bytes::from_static(SDP_A.as_bytes()));
}

#[test]
fn bridge_then_caller_hangs_up() {
    let mut h = Harness::new();
    let (callid, b_invite) = start_call(&mut h, SDP_A);
    h.feed(&answer(&b_invite, 180, "btag", ""), trunk());
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [180]);
    let a_tag = our_a_tag(&sent);
    assert_eq!(h.control.call(&callid).unwrap().state, CallState::Ringing);

    h.feed(&answer(&b_invite, 200, "btag", SDP_B), trunk());
    let sent = h.sent();
    assert_eq!(methods(&sent, trunk()), ["ACK"]);
    assert_eq!(statuses(&sent, phone()), [200]);
    let ok = sent
        .iter()
        .find(|(p, _)| *p == phone())
        .map(|(_, m)| response_of(m))
        .unwrap();
    assert_eq!(ok.body, Bytes::from_static(SDP_B.as_bytes()));
    assert_eq!(ok.headers.to().unwrap().tag(), Some(a_tag.as_str()));
    assert_eq!(h.control.call(&callid).unwrap().state, CallState::Answered);

    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 1, "z9hG4bKack1", ""),
        phone(),
    );
    // The answer is no longer retransmitted once ACKed.
    h.advance(Duration::from_secs(5));
    assert!(h.sent().is_empty());

    h.feed(
        &in_dialog_from_a("BYE", &a_tag, 2, "z9hG4bKbye1", ""),
        phone(),
    );
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [200]);
    assert_eq!(methods(&sent, trunk()), ["BYE"]);
    let bye = find_request(&sent, "BYE");
    h.feed(&answer(&bye, 200, "btag", ""), trunk());
    let record = h.control.call(&callid).unwrap();
    assert_eq!(record.state, CallState::Ended);
    assert_eq!(record.ended_by, Some(Party::Caller));
    assert_eq!(record.end_cause, Some(EndCause::Hangup));
    assert_eq!(
        (record.leg_a_code, record.leg_b_code),
        (Some(200), Some(200))
    );
    h.assert_drained();
}

#[test]
fn bridge_then_callee_hangs_up() {
    let mut h = Harness::new();
    let (callid, b_invite) = start_call(&mut h, SDP_A);
    h.feed(&answer(&b_invite, 200, "btag", SDP_B), trunk());
    let a_tag = our_a_tag(&h.sent());
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 1, "z9hG4bKack2", ""),
        phone(),
    );
    h.feed(
        &in_dialog_from_b(&b_invite, "btag", "BYE", 5, "z9hG4bKbbye", ""),
        trunk(),
    );
    let sent = h.sent();
    assert_eq!(statuses(&sent, trunk()), [200]);
    assert_eq!(methods(&sent, phone()), ["BYE"]);
    let bye = find_request(&sent, "BYE");
    // BYE on leg A: in leg A's dialog, from our tag to the caller's.
    assert_eq!(bye.headers.from().unwrap().tag(), Some(a_tag.as_str()));
    assert_eq!(bye.headers.to().unwrap().tag(), Some("atag"));
    assert_eq!(bye.headers.call_id(), Some("leg-a-secret@10.9.9.9"));
    h.feed(&answer(&bye, 200, "atag", ""), phone());
    assert_eq!(
        h.control.call(&callid).unwrap().ended_by,
        Some(Party::Callee)
    );
    h.assert_drained();
}

#[test]
fn busy_is_relayed_with_the_same_code() {
    let mut h = Harness::new();
    let (callid, b_invite) = start_call(&mut h, SDP_A);
    h.feed(&answer(&b_invite, 486, "btag", ""), trunk());
    let sent = h.sent();
    assert_eq!(methods(&sent, trunk()), ["ACK"]);
    assert_eq!(statuses(&sent, phone()), [486]);
    let record = h.control.call(&callid).unwrap();
    assert_eq!(record.end_cause, Some(EndCause::CalleeRejected));
    assert_eq!(
        (record.leg_a_code, record.leg_b_code),
        (Some(486), Some(486))
    );
    let a_tag = our_a_tag(&sent);
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 1, "z9hG4bKa1", ""),
        phone(),
    );
    h.assert_drained();
}

#[test]
fn caller_cancel_while_ringing() {
    let mut h = Harness::new();
    let (callid, b_invite) = start_call(&mut h, SDP_A);
    h.feed(&answer(&b_invite, 180, "btag", ""), trunk());
    h.sent();
    let mut cancel = request_of(&leg_a_invite("1001", "2001", "z9hG4bKa1", "")).clone();
    cancel.method = sip_core::Method::Cancel;
    cancel.headers.set(HeaderName::CSeq, "1 CANCEL");
    h.feed(&Message::Request(cancel), phone());
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [200, 487]);
    assert_eq!(methods(&sent, trunk()), ["CANCEL"]);
    let b_cancel = find_request(&sent, "CANCEL");
    h.feed(&answer(&b_cancel, 200, "btag", ""), trunk());
    h.feed(&answer(&b_invite, 487, "btag", ""), trunk());
    assert_eq!(methods(&h.sent(), trunk()), ["ACK"]);
    let record = h.control.call(&callid).unwrap();
    assert_eq!(record.end_cause, Some(EndCause::Cancelled));
    assert_eq!(
        (record.leg_a_code, record.leg_b_code),
        (Some(487), Some(487))
    );
    h.assert_drained();
}

#[test]
fn answer_crossing_the_cancel_is_acked_and_hung_up() {
    let mut h = Harness::new();
    let (_, b_invite) = start_call(&mut h, SDP_A);
    h.feed(&answer(&b_invite, 180, "btag", ""), trunk());
    let mut cancel = request_of(&leg_a_invite("1001", "2001", "z9hG4bKa1", "")).clone();
    cancel.method = sip_core::Method::Cancel;
    cancel.headers.set(HeaderName::CSeq, "1 CANCEL");
    h.feed(&Message::Request(cancel), phone());
    h.sent();
    h.feed(&answer(&b_invite, 200, "btag", SDP_B), trunk());
    let sent = h.sent();
    assert_eq!(methods(&sent, trunk()), ["ACK", "BYE"]);
    assert!(statuses(&sent, phone()).is_empty());
    let bye = find_request(&sent, "BYE");
    h.feed(&answer(&bye, 200, "btag", ""), trunk());
    h.assert_drained();
}

#[test]
fn no_answer_cancels_leg_b_and_answers_480() {
    let mut h = Harness::new();
    let (callid, b_invite) = start_call(&mut h, SDP_A);
    h.feed(&answer(&b_invite, 180, "btag", ""), trunk());
    h.sent();
    h.advance(Duration::from_secs(60));
    let sent = h.sent();
    assert_eq!(methods(&sent, trunk()), ["CANCEL"]);
    assert_eq!(statuses(&sent, phone()), [480]);
    h.feed(&answer(&b_invite, 487, "btag", ""), trunk());
    assert_eq!(
        h.control.call(&callid).unwrap().end_cause,
        Some(EndCause::NoAnswer)
    );
    h.assert_drained();
}

#[test]
fn invite_retransmissions_create_one_leg_b() {
    let mut h = Harness::new();
    let (_, _) = start_call(&mut h, SDP_A);
    for _ in 0..3 {
        h.feed(&leg_a_invite("1001", "2001", "z9hG4bKa1", SDP_A), phone());
    }
    let sent = h.sent();
    assert!(methods(&sent, trunk()).is_empty());
    assert_eq!(statuses(&sent, phone()), [100, 100, 100]);
    assert_eq!(h.engine.call_count(), 1);
}

#[test]
fn reinvite_is_relayed_both_ways_and_glare_gets_491() {
    let mut h = Harness::new();
    let (_, b_invite) = start_call(&mut h, SDP_A);
    h.feed(&answer(&b_invite, 200, "btag", SDP_B), trunk());
    let a_tag = our_a_tag(&h.sent());
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 1, "z9hG4bKack3", ""),
        phone(),
    );

    // A → B (hold).
    h.feed(
        &in_dialog_from_a("INVITE", &a_tag, 2, "z9hG4bKre1", SDP_A),
        phone(),
    );
    let sent = h.sent();
    assert_eq!(methods(&sent, trunk()), ["INVITE"]);
    let relayed = find_request(&sent, "INVITE");
    assert_eq!(relayed.headers.call_id(), b_invite.headers.call_id());
    assert_eq!(relayed.headers.cseq().unwrap().seq, 2);
    // Glare: B re-INVITEs while A's is pending.
    h.feed(
        &in_dialog_from_b(&b_invite, "btag", "INVITE", 7, "z9hG4bKglare", SDP_B),
        trunk(),
    );
    assert_eq!(statuses(&h.sent(), trunk()), [100, 491]);
    h.feed(&answer(&relayed, 200, "btag", SDP_B), trunk());
    let sent = h.sent();
    assert_eq!(methods(&sent, trunk()), ["ACK"]);
    assert_eq!(statuses(&sent, phone()), [200]);

    // B → A.
    h.feed(
        &in_dialog_from_b(&b_invite, "btag", "INVITE", 8, "z9hG4bKre2", SDP_B),
        trunk(),
    );
    let sent = h.sent();
    assert_eq!(methods(&sent, phone()), ["INVITE"]);
    let to_a = find_request(&sent, "INVITE");
    assert_eq!(to_a.headers.call_id(), Some("leg-a-secret@10.9.9.9"));
    h.feed(&answer(&to_a, 200, "atag", SDP_A), phone());
    let sent = h.sent();
    assert_eq!(methods(&sent, phone()), ["ACK"]);
    assert_eq!(statuses(&sent, trunk()), [200]);
}

#[test]
fn late_offer_ack_carries_the_callers_answer_to_leg_b() {
    let mut h = Harness::new();
    let (_, b_invite) = start_call(&mut h, "");
    assert!(b_invite.body.is_empty());
    h.feed(&answer(&b_invite, 200, "btag", SDP_B), trunk());
    let sent = h.sent();
    // No ACK on leg B until leg A's ACK brings the answer.
    assert!(methods(&sent, trunk()).is_empty());
    let a_tag = our_a_tag(&sent);
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 1, "z9hG4bKack4", SDP_A),
        phone(),
    );
    let sent = h.sent();
    let ack = find_request(&sent, "ACK");
    assert_eq!(ack.body, Bytes::from_static(SDP_A.as_bytes()));
}

#[test]
fn unknown_dialog_gets_481_and_options_200() {
    let mut h = Harness::new();
    h.feed(
        &in_dialog_from_a("BYE", "nosuch", 2, "z9hG4bKx", ""),
        phone(),
    );
    assert_eq!(statuses(&h.sent(), phone()), [481]);
    let mut options = request_of(&leg_a_invite("1001", "2001", "z9hG4bKopt", "")).clone();
    options.method = sip_core::Method::Options;
    options.headers.set(HeaderName::CSeq, "1 OPTIONS");
    h.feed(&Message::Request(options), phone());
    assert_eq!(statuses(&h.sent(), phone()), [200]);
    h.assert_drained();
}

#[test]
fn leg_b_timeout_answers_408() {
    let mut h = Harness::new();
    let (callid, _) = start_call(&mut h, SDP_A);
    h.advance(Duration::from_secs(33));
    let sent = h.sent();
    assert!(statuses(&sent, phone()).contains(&408));
    assert_eq!(
        h.control.call(&callid).unwrap().end_cause,
        Some(EndCause::SignallingFailure)
    );
    h.assert_drained();
}

#[test]
fn media_timeout_hangs_up_both_legs() {
    let mut h = Harness::new();
    let (callid, b_invite) = start_call(&mut h, SDP_A);
    h.feed(&answer(&b_invite, 200, "btag", SDP_B), trunk());
    let a_tag = our_a_tag(&h.sent());
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 1, "z9hG4bKack5", ""),
        phone(),
    );
    h.engine.handle_media_timeout(h.now, &callid);
    let sent = h.sent();
    assert_eq!(methods(&sent, phone()), ["BYE"]);
    assert_eq!(methods(&sent, trunk()), ["BYE"]);
    let bye = find_request(&sent, "BYE");
    assert!(bye
        .headers
        .get(&HeaderName::Reason)
        .is_some_and(|r| r.contains("media_timeout")));
    let record = h.control.call(&callid).unwrap();
    assert_eq!(record.end_cause, Some(EndCause::MediaTimeout));
    assert_eq!(record.ended_by, Some(Party::System));
    for (to, message) in sent {
        let request = request_of(&message).clone();
        let tag = if to == phone() { "atag" } else { "btag" };
        h.feed(&answer(&request, 200, tag, ""), to);
    }
    h.assert_drained();
}

/// Media that has no ports left.
struct NoPorts;

impl crate::media::MediaSession for NoPorts {
    fn towards_b(&mut self, _: &Bytes) -> Result<Bytes, crate::media::MediaError> {
        Err(crate::media::MediaError::Exhausted)
    }

    fn towards_a(&mut self, _: &Bytes) -> Result<Bytes, crate::media::MediaError> {
        Err(crate::media::MediaError::Exhausted)
    }
}

impl crate::media::MediaFactory for NoPorts {
    fn has_capacity(&self) -> bool {
        false
    }

    fn new_session(
        &self,
        _: &str,
    ) -> Result<Box<dyn crate::media::MediaSession>, crate::media::MediaError> {
        Ok(Box::new(NoPorts))
    }
}

#[test]
fn media_exhaustion_answers_503_without_leg_b_and_keeps_the_intent() {
    let mut h = Harness::with_media(Arc::new(NoPorts));
    let intent = h.control.make_call(h.now, "1001", "2001", "3001").unwrap();
    h.feed(&leg_a_invite("1001", "2001", "z9hG4bKx1", SDP_A), phone());
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [100, 503]);
    assert!(methods(&sent, trunk()).is_empty());
    // Refused before the claim: the user may dial again once ports are free.
    assert_eq!(h.control.intents().len(), 1);
    assert_eq!(
        h.control.call(&intent.callid).unwrap().state,
        CallState::Intent
    );
    assert_eq!(
        h.engine.stats().calls_refused.get("media_exhausted"),
        Some(&1)
    );
    h.assert_drained();
}

/// Ports that run out between the capacity check and the allocation (a second stream, say).
struct PortsRunOut;

impl crate::media::MediaFactory for PortsRunOut {
    fn new_session(
        &self,
        _: &str,
    ) -> Result<Box<dyn crate::media::MediaSession>, crate::media::MediaError> {
        Ok(Box::new(NoPorts))
    }
}

#[test]
fn media_allocation_failure_after_the_claim_ends_the_call_as_resources_exhausted() {
    let mut h = Harness::with_media(Arc::new(PortsRunOut));
    let intent = h.control.make_call(h.now, "1001", "2001", "3001").unwrap();
    h.feed(&leg_a_invite("1001", "2001", "z9hG4bKx2", SDP_A), phone());
    assert_eq!(statuses(&h.sent(), phone()), [100, 503]);
    assert_eq!(
        h.control.call(&intent.callid).unwrap().end_cause,
        Some(EndCause::ResourcesExhausted)
    );
    assert_eq!(
        h.engine.stats().calls_failed.get("resources_exhausted"),
        Some(&1)
    );
    h.assert_drained();
}

/// Media whose sessions report when they are dropped (their ports released).
#[derive(Default)]
struct CountedMedia {
    live: Arc<std::sync::atomic::AtomicUsize>,
}

struct CountedSession(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for CountedSession {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl crate::media::MediaSession for CountedSession {
    fn towards_b(&mut self, sdp: &Bytes) -> Result<Bytes, crate::media::MediaError> {
        Ok(sdp.clone())
    }

    fn towards_a(&mut self, sdp: &Bytes) -> Result<Bytes, crate::media::MediaError> {
        Ok(sdp.clone())
    }
}

impl crate::media::MediaFactory for CountedMedia {
    fn new_session(
        &self,
        _: &str,
    ) -> Result<Box<dyn crate::media::MediaSession>, crate::media::MediaError> {
        self.live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Box::new(CountedSession(self.live.clone())))
    }
}

#[test]
fn media_is_released_when_the_call_ends_not_when_its_transactions_linger() {
    let media = Arc::new(CountedMedia::default());
    let live = media.live.clone();
    let mut h = Harness::with_media(media);
    let (_, b_invite) = start_call(&mut h, SDP_A);
    h.feed(&answer(&b_invite, 200, "btag", SDP_B), trunk());
    let a_tag = our_a_tag(&h.sent());
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 1, "z9hG4bKack6", ""),
        phone(),
    );
    assert_eq!(live.load(std::sync::atomic::Ordering::SeqCst), 1);
    h.feed(
        &in_dialog_from_a("BYE", &a_tag, 2, "z9hG4bKbye6", ""),
        phone(),
    );
    // The call is still held (its BYE transactions linger) but its media is gone.
    assert_eq!(h.engine.call_count(), 1);
    assert_eq!(live.load(std::sync::atomic::Ordering::SeqCst), 0);
    let bye = find_request(&h.sent(), "BYE");
    h.feed(&answer(&bye, 200, "btag", ""), trunk());
    h.assert_drained();
}

#[test]
fn max_calls_counts_live_calls_not_ended_ones_still_lingering() {
    let mut h = Harness::with(Arc::new(PassThrough), 1);
    let (_, b_invite) = start_call(&mut h, SDP_A);
    // While the first call is live, a second one is refused with 503.
    h.control.make_call(h.now, "1002", "2002", "3002").unwrap();
    let mut second = leg_a_invite("1002", "2002", "z9hG4bKsecond", SDP_A);
    if let Message::Request(r) = &mut second {
        r.headers.set(HeaderName::CallId, "second@10.9.9.9");
    }
    h.feed(&second, phone());
    assert_eq!(statuses(&h.sent(), phone()), [100, 503]);
    // The first call fails; its transactions linger (Timer D) but it no longer counts.
    h.feed(&answer(&b_invite, 486, "btag", ""), trunk());
    h.sent();
    assert_eq!(h.engine.call_count(), 1);
    assert_eq!(h.engine.active_call_count(), 0);
    h.control.make_call(h.now, "1003", "2003", "3003").unwrap();
    let mut third = leg_a_invite("1003", "2003", "z9hG4bKthird", SDP_A);
    if let Message::Request(r) = &mut third {
        r.headers.set(HeaderName::CallId, "third@10.9.9.9");
    }
    h.feed(&third, phone());
    let sent = h.sent();
    assert_eq!(methods(&sent, trunk()), ["INVITE"]);
}

#[test]
fn a_flood_of_in_dialog_requests_is_bounded_per_call() {
    let mut h = Harness::new();
    let (_, b_invite) = start_call(&mut h, SDP_A);
    h.feed(&answer(&b_invite, 200, "btag", SDP_B), trunk());
    let a_tag = our_a_tag(&h.sent());
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 1, "z9hG4bKack7", ""),
        phone(),
    );
    // The callee never answers: 16 INFOs are relayed, the 17th is refused.
    for n in 0..17u32 {
        let branch = format!("z9hG4bKinfo{n}");
        h.feed(
            &in_dialog_from_a("INFO", &a_tag, 2 + n, &branch, ""),
            phone(),
        );
    }
    let sent = h.sent();
    assert_eq!(methods(&sent, trunk()).len(), 16);
    assert_eq!(statuses(&sent, phone()), [503]);
}

#[test]
fn established_call_sheds_its_invites_and_still_acks_and_hangs_up() {
    let mut h = Harness::new();
    let (callid, b_invite) = start_call(&mut h, SDP_A);
    h.feed(&answer(&b_invite, 200, "btag", SDP_B), trunk());
    let a_tag = our_a_tag(&h.sent());
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 1, "z9hG4bKack1", ""),
        phone(),
    );
    let call = h.engine.calls.values().next().expect("the call");
    assert!(!call.a.invite.body.is_empty() && !call.b.invite.body.is_empty());

    // Past 64·T1 both INVITE transactions are over: only the dialog fields stay.
    h.advance(Duration::from_secs(40));
    assert!(h.sent().is_empty());
    let call = h.engine.calls.values().next().expect("the call");
    for invite in [&call.a.invite, &call.b.invite] {
        assert!(invite.body.is_empty());
        assert!(invite.headers.len() <= 6, "{:?}", invite.headers);
        assert!(invite.headers.call_id().is_some() && invite.headers.cseq().is_ok());
    }

    // A very late retransmission of leg B's 2xx still gets its ACK.
    h.feed(&answer(&b_invite, 200, "btag", SDP_B), trunk());
    assert_eq!(methods(&h.sent(), trunk()), ["ACK"]);

    h.feed(
        &in_dialog_from_b(&b_invite, "btag", "BYE", 1, "z9hG4bKbyeb", ""),
        trunk(),
    );
    let sent = h.sent();
    assert_eq!(statuses(&sent, trunk()), [200]);
    assert_eq!(methods(&sent, phone()), ["BYE"]);
    let bye = find_request(&sent, "BYE");
    h.feed(&answer(&bye, 200, &a_tag, ""), phone());
    assert_eq!(h.control.call(&callid).unwrap().state, CallState::Ended);
    h.assert_drained();
}
