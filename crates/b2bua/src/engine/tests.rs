//! The call flows of SPEC.md driven through the sans-IO engine with a fake clock: the test is
//! both the trunk delivering leg A and the trunk carrying leg B, and reads what the engine
//! would put on the wire. (The same flows run over real sockets in `sip-tests/`.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sip_core::transaction::TransactionConfig;
use sip_core::{HeaderName, Message, ParseLimits, Peer, Request, Response};

use super::{Engine, EngineConfig};
use crate::call::{CallKey, Leg};
use crate::control::CallControl;
use crate::media::{
    DirectionStats, MediaCommand, MediaConfig, MediaEvent, PortPool, StreamCounters, StreamId,
};
use crate::outbound::LocalIdentity;
use crate::registry::{CallState, EndCause, Party, WallClock};

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
    /// Streams the engine opened and has not closed (see [`Harness::media`]).
    open_streams: std::collections::BTreeSet<StreamId>,
}

/// The relay range of the tests: ports are drawn at random from it, by a pool seeded with
/// [`PORT_SEED`] (see [`first_call_ports`]).
fn media_config() -> MediaConfig {
    MediaConfig {
        public_ip: "192.0.2.1".parse().unwrap(),
        public_ip6: None,
        first_port: 30000,
        last_port: 30099,
        // Armed in every bridged call of these tests, and so checked to be disarmed when the
        // call ends (`assert_drained`); the media timeout tests shorten it.
        inactivity: Duration::from_secs(3600),
    }
}

/// The seed of every harness's port pool, so that draws are the same on every run.
const PORT_SEED: u64 = 10;

/// The A-facing and B-facing RTP ports of the first stream of a harness's first call.
fn first_call_ports() -> (u16, u16) {
    let config = media_config();
    let mut pool = PortPool::with_seed(config.first_port, config.last_port, PORT_SEED);
    (pool.reserve().unwrap(), pool.reserve().unwrap())
}

/// The `m=audio` port of an SDP body: which relay ports a rewritten body points at.
fn audio_port(body: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(body).ok()?;
    let line = text.lines().find(|l| l.starts_with("m=audio "))?;
    line.split(' ').nth(1)?.parse().ok()
}

/// Which way an SDP body went through the first call's media: `"b"` when it points at the
/// B-facing ports (it was sent to leg B), `"a"` for the A-facing ones, `"untouched"` when it
/// did not go through the media at all.
fn towards(body: &[u8]) -> &'static str {
    let anchored = std::str::from_utf8(body).is_ok_and(|t| t.contains("c=IN IP4 192.0.2.1\r\n"));
    let (a_facing, b_facing) = first_call_ports();
    match (anchored, audio_port(body)) {
        (true, Some(port)) if port == b_facing => "b",
        (true, Some(port)) if port == a_facing => "a",
        _ => "untouched",
    }
}

impl Harness {
    fn new() -> Harness {
        Harness::configured(|_| {})
    }

    fn with(max_calls: usize) -> Harness {
        Harness::configured(|config| config.max_calls = max_calls)
    }

    /// A harness whose engine configuration `adjust` changes from the default one.
    fn configured(adjust: impl FnOnce(&mut EngineConfig)) -> Harness {
        let now = Instant::now();
        let control = Arc::new(CallControl::new(
            Duration::from_secs(120),
            Duration::from_secs(300),
            1000,
            WallClock::new(now, std::time::SystemTime::UNIX_EPOCH),
        ));
        let mut config = EngineConfig {
            local: LocalIdentity {
                public_addr: "127.0.0.1".into(),
                port: 5060,
                tls_port: None,
                agent: None,
            },
            trunk: trunk(),
            trunk_host: "127.0.0.1".into(),
            trunk_port: Some(5080),
            trunk_ping: None,
            trunk_credentials: None,
            registration: None,
            trusted_peers: vec!["127.0.0.0/8".parse().unwrap()],
            untrusted_reply: super::UntrustedReply::Forbidden,
            refuse_code: 403,
            no_answer: Duration::from_secs(60),
            max_duration: None,
            max_calls: 100,
            overload_backlog: 256,
            overload_wait: Duration::from_millis(400),
            retry_after: Duration::from_secs(5),
            max_server_transactions: 1000,
            transactions: TransactionConfig {
                via_host: "127.0.0.1".into(),
                via_port: Some(5060),
                ..TransactionConfig::default()
            },
            media: media_config(),
            session_timers: Default::default(),
        };
        adjust(&mut config);
        let (first, last) = (config.media.first_port, config.media.last_port);
        let mut engine = Engine::new(config, control.clone());
        engine.media.pool = PortPool::with_seed(first, last, PORT_SEED);
        Harness {
            engine,
            control,
            now,
            open_streams: Default::default(),
        }
    }

    /// The media commands since the last call, as the driver would carry them out: every
    /// `Open` succeeds (answered `Opened`) and every `Close` is answered with the stream's
    /// final (empty) counters. Tracks which streams are open.
    fn media(&mut self) -> Vec<MediaCommand> {
        let mut commands = Vec::new();
        while let Some(command) = self.engine.poll_media_command() {
            match &command {
                MediaCommand::Open { stream, .. } => {
                    assert!(self.open_streams.insert(*stream), "{stream:?} opened twice");
                    self.engine
                        .handle_media_event(self.now, MediaEvent::Opened { stream: *stream });
                }
                MediaCommand::Close { stream } => {
                    assert!(
                        self.open_streams.remove(stream),
                        "{stream:?} closed, not open"
                    );
                }
                MediaCommand::SetRemote { stream, .. } | MediaCommand::Report { stream } => {
                    assert!(
                        self.open_streams.contains(stream),
                        "{command:?} of a closed stream"
                    );
                }
            }
            commands.push(command);
        }
        commands
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
        let mut woken_at = None;
        while let Some(deadline) = self.engine.poll_timeout() {
            if deadline > end {
                break;
            }
            // A deadline the engine was already woken for is a timer it did not consume:
            // the runtime would spin on it.
            assert!(
                woken_at.is_none_or(|at| deadline > at),
                "deadline {deadline:?} reported again after handle_timeout"
            );
            self.now = self.now.max(deadline);
            self.engine.handle_timeout(self.now);
            woken_at = Some(self.now);
        }
        self.now = end;
        self.engine.handle_timeout(end);
    }

    /// Runs the clock past every transaction timer and checks that nothing is left: no call,
    /// dialog, transaction, table entry or timer in the engine, no intent pending (every
    /// intent of the test was consumed by its call) and every call record ended.
    fn assert_drained(&mut self) {
        self.assert_drained_keeping(&[]);
    }

    /// Like [`assert_drained`](Self::assert_drained), for a test whose INVITEs were refused
    /// before the intent table: the intents with these callids must still be pending and
    /// their records untouched (the user can dial again); nothing else may be left.
    fn assert_drained_keeping(&mut self, kept: &[&str]) {
        self.advance(Duration::from_secs(120));
        self.sent();
        self.media();
        assert!(
            self.open_streams.is_empty(),
            "media streams left open: {:?}",
            self.open_streams
        );
        assert_eq!(
            self.engine.media_stream_count(),
            0,
            "media streams counted open"
        );
        let (free, capacity) = self.engine.media_ports();
        assert_eq!(free, capacity, "relay ports not given back");
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
        // The engine's own tables: an entry left here is memory a long-running instance
        // never gets back.
        assert!(self.engine.tx_owner.is_empty(), "transaction owners left");
        assert!(self.engine.by_callid.is_empty(), "callid index left");
        assert_eq!(self.engine.active_call_count(), 0, "calls counted as live");
        assert_eq!(self.engine.poll_timeout(), None, "timers still armed");
        for callid in kept {
            let record = self.control.call(callid).expect("kept intent's record");
            assert_eq!(record.state, CallState::Intent, "{callid} was touched");
            assert_eq!(
                self.control.intents().get(&record.telnum).map(|i| i.callid),
                Some((*callid).to_owned()),
                "intent {callid} no longer pending"
            );
        }
        assert_eq!(self.control.intents().len(), kept.len(), "intents pending");
        assert_eq!(
            self.control.registry().active_count(),
            kept.len(),
            "call records not ended"
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

/// The callee refuses (486) and the caller ACKs the relayed refusal in the INVITE's
/// transaction (`a_branch`): how a test that only looked at a call's setup ends it.
fn callee_refuses(h: &mut Harness, b_invite: &Request, a_branch: &str) {
    h.feed(&answer(b_invite, 486, "btag", ""), trunk());
    let sent = h.sent();
    assert_eq!(methods(&sent, trunk()), ["ACK"]);
    assert_eq!(statuses(&sent, phone()), [486]);
    let a_tag = our_a_tag(&sent);
    h.feed(&in_dialog_from_a("ACK", &a_tag, 1, a_branch, ""), phone());
}

/// The caller hangs up a bridged call with a BYE of CSeq `cseq`; the callee answers the
/// relayed BYE.
fn caller_hangs_up(h: &mut Harness, a_tag: &str, cseq: u32) {
    let branch = format!("z9hG4bKbye{cseq}");
    h.feed(&in_dialog_from_a("BYE", a_tag, cseq, &branch, ""), phone());
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [200]);
    assert_eq!(methods(&sent, trunk()), ["BYE"]);
    h.feed(
        &answer(&find_request(&sent, "BYE"), 200, "btag", ""),
        trunk(),
    );
}

#[test]
fn refused_without_intent_and_no_leg_b() {
    let mut h = Harness::new();
    h.feed(&leg_a_invite("1001", "2001", "z9hG4bKr1", SDP_A), phone());
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [100, 403]);
    assert!(methods(&sent, trunk()).is_empty());
    let refusal = response_of(&sent[1].1);
    // A final answer tags the To (RFC 3261 §8.2.6.2): the caller's ACK must match it.
    assert!(refusal.headers.to().unwrap().tag().is_some());
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
    let intent = h.control.make_call(h.now, "1001", "2001", "3001").unwrap();
    let stranger = Peer::udp("10.1.1.1:5060".parse().unwrap());
    h.feed(&leg_a_invite("1001", "2001", "z9hG4bKu1", SDP_A), stranger);
    let sent = h.sent();
    // One stateless answer: no 100 Trying, no transaction (tests/door.rs has the rest).
    assert_eq!(statuses(&sent, stranger), [403]);
    assert_eq!(h.engine.transactions().server_count(), 0);
    assert!(methods(&sent, trunk()).is_empty());
    assert_eq!(
        h.engine.stats().calls_refused.get("untrusted_source"),
        Some(&1)
    );
    // The stranger's transaction ends; the intent is still there for the real call.
    h.assert_drained_keeping(&[&intent.callid]);
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
    assert_eq!(towards(&b_invite.body), "b");
    callee_refuses(&mut h, &b_invite, "z9hG4bKa1");
    h.assert_drained();
}

#[test]
fn bridge_then_caller_hangs_up() {
    let mut h = Harness::new();
    let (callid, b_invite) = start_call(&mut h, SDP_A);
    // What /metrics shows of a call being placed: one transaction on each leg.
    let layer = h.engine.transactions();
    assert_eq!((layer.client_count(), layer.server_count()), (1, 1));
    // Leg B's 100 Trying is hop-by-hop: nothing reaches leg A.
    h.feed(
        &Message::Response(Response::to_request(&b_invite, 100, None)),
        trunk(),
    );
    assert!(h.sent().is_empty());
    assert_eq!(h.control.call(&callid).unwrap().state, CallState::Trying);
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
    assert_eq!(towards(&ok.body), "a");
    assert_eq!(ok.headers.to().unwrap().tag(), Some(a_tag.as_str()));
    assert_eq!(h.control.call(&callid).unwrap().state, CallState::Answered);
    assert_eq!(h.engine.stats().calls_bridged, 1);
    assert_eq!(h.engine.dialog_count(), 2);

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
    // A plain hangup carries no Reason: the callee sees an ordinary BYE.
    assert_eq!(reason_of(&bye), None);
    h.feed(&answer(&bye, 200, "btag", ""), trunk());
    let record = h.control.call(&callid).unwrap();
    assert_eq!(record.state, CallState::Ended);
    assert_eq!(record.ended_by, Some(Party::Leg(Leg::A)));
    assert_eq!(record.end_cause, Some(EndCause::Hangup));
    assert_eq!(
        (record.leg_a_code, record.leg_b_code),
        (Some(200), Some(200))
    );
    // A bridged call that ends is no failure.
    assert!(h.engine.stats().calls_failed.is_empty());
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
        Some(Party::Leg(Leg::B))
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
    assert_eq!(
        h.engine.stats().calls_failed.get("callee_rejected"),
        Some(&1)
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
    // Ringing that crosses the CANCEL is not relayed: the caller has its 487.
    h.feed(&answer(&b_invite, 180, "btag", ""), trunk());
    assert!(h.sent().is_empty());
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
    let placed = h.now;
    let (callid, b_invite) = start_call(&mut h, SDP_A);
    h.feed(&answer(&b_invite, 180, "btag", ""), trunk());
    h.sent();
    // Ringing, no transaction timer runs: the runtime wakes the engine for the no-answer
    // timer, so it must be the deadline the engine reports.
    assert_eq!(
        h.engine.poll_timeout(),
        Some(placed + Duration::from_secs(60))
    );
    h.advance(Duration::from_secs(59));
    assert!(h.sent().is_empty());
    h.advance(Duration::from_secs(1));
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
    let (callid, b_invite) = start_call(&mut h, SDP_A);
    for _ in 0..3 {
        h.feed(&leg_a_invite("1001", "2001", "z9hG4bKa1", SDP_A), phone());
    }
    let sent = h.sent();
    assert!(methods(&sent, trunk()).is_empty());
    assert_eq!(statuses(&sent, phone()), [100, 100, 100]);
    assert_eq!(h.engine.call_count(), 1);
    // A retransmission after the refusal gets the refusal again, not a second leg B.
    h.feed(&answer(&b_invite, 486, "btag", ""), trunk());
    let a_tag = our_a_tag(&h.sent());
    h.feed(&leg_a_invite("1001", "2001", "z9hG4bKa1", SDP_A), phone());
    let sent = h.sent();
    assert!(methods(&sent, trunk()).is_empty());
    assert_eq!(statuses(&sent, phone()), [486]);
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 1, "z9hG4bKa1", ""),
        phone(),
    );
    let record = h.control.call(&callid).unwrap();
    assert_eq!(record.end_cause, Some(EndCause::CalleeRejected));
    h.assert_drained();
}

#[test]
fn reinvite_is_relayed_both_ways_and_glare_gets_491() {
    let mut h = Harness::new();
    let (callid, b_invite) = start_call(&mut h, SDP_A);
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
    // A retransmission of that 200 is ACKed again, not relayed again.
    h.feed(&answer(&relayed, 200, "btag", SDP_B), trunk());
    let sent = h.sent();
    assert_eq!(methods(&sent, trunk()), ["ACK"]);
    assert!(statuses(&sent, phone()).is_empty());

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
    // The peers ACK what they were answered: A its re-INVITE's 200, B its 491 and its
    // re-INVITE's 200. Each ACK must find its transaction (our To tags and CSeqs are the
    // ones the peers saw), so nothing is retransmitted any more.
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 2, "z9hG4bKreack1", ""),
        phone(),
    );
    h.feed(
        &in_dialog_from_b(&b_invite, "btag", "ACK", 7, "z9hG4bKglare", ""),
        trunk(),
    );
    h.feed(
        &in_dialog_from_b(&b_invite, "btag", "ACK", 8, "z9hG4bKreack2", ""),
        trunk(),
    );
    h.advance(Duration::from_secs(10));
    assert!(h.sent().is_empty());

    caller_hangs_up(&mut h, &a_tag, 3);
    let record = h.control.call(&callid).unwrap();
    assert_eq!(record.state, CallState::Ended);
    assert_eq!(record.ended_by, Some(Party::Leg(Leg::A)));
    h.assert_drained();
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
    assert_eq!(methods(&sent, trunk()), ["ACK"]);
    let ack = find_request(&sent, "ACK");
    assert_eq!(towards(&ack.body), "b");
    assert_eq!(ack.headers.cseq().unwrap().seq, 1);
    caller_hangs_up(&mut h, &a_tag, 2);
    h.assert_drained();
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

/// The call's only stream, as the driver knows it.
fn first_stream(h: &Harness) -> StreamId {
    *h.open_streams.iter().next().expect("an open media stream")
}

/// Answers the engine's `Report` commands with `counters`.
fn report(h: &mut Harness, counters: StreamCounters) -> usize {
    let reports: Vec<StreamId> = h
        .media()
        .into_iter()
        .filter_map(|c| match c {
            MediaCommand::Report { stream } => Some(stream),
            _ => None,
        })
        .collect();
    for stream in &reports {
        h.engine.handle_media_event(
            h.now,
            MediaEvent::Counters {
                stream: *stream,
                counters,
            },
        );
    }
    reports.len()
}

#[test]
fn media_inactivity_asks_for_counters_and_waits_again_while_packets_flow() {
    let mut h = Harness::configured(|c| c.media.inactivity = Duration::from_secs(10));
    let (callid, _, _) = bridged_call(&mut h);
    h.media();
    // Ten seconds after both legs had SDP, the engine asks for fresh counters: they show a
    // packet two seconds ago, so the call goes on and the next check is 10 s after it.
    h.advance(Duration::from_secs(10));
    let flowing = StreamCounters {
        last_packet_at: Some(h.now - Duration::from_secs(2)),
        ..StreamCounters::default()
    };
    assert_eq!(report(&mut h, flowing), 1);
    h.advance(Duration::from_millis(100));
    assert!(h.sent().is_empty());
    assert_eq!(h.control.call(&callid).unwrap().state, CallState::Answered);
    h.advance(Duration::from_secs(7));
    assert_eq!(report(&mut h, flowing), 0, "not due yet");
    h.advance(Duration::from_secs(1));
    // The same counters again: nothing since, the call is hung up.
    assert_eq!(report(&mut h, flowing), 1);
    h.advance(Duration::from_millis(100));
    let sent = h.sent();
    assert_eq!(methods(&sent, phone()), ["BYE"]);
    assert_eq!(
        h.control.call(&callid).unwrap().end_cause,
        Some(EndCause::MediaTimeout)
    );
    answer_byes(&mut h, &sent);
    h.assert_drained();
}

#[test]
fn media_timeout_hangs_up_both_legs() {
    let mut h = Harness::configured(|c| c.media.inactivity = Duration::from_secs(10));
    let (callid, b_invite) = start_call(&mut h, SDP_A);
    h.feed(&answer(&b_invite, 200, "btag", SDP_B), trunk());
    let a_tag = our_a_tag(&h.sent());
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 1, "z9hG4bKack5", ""),
        phone(),
    );
    h.advance(Duration::from_secs(10));
    // The driver has seen nothing at all.
    assert_eq!(report(&mut h, StreamCounters::default()), 1);
    h.advance(Duration::from_millis(100));
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

#[test]
fn media_exhaustion_answers_503_without_leg_b_and_keeps_the_intent() {
    // A range holding no port pair.
    let mut h = Harness::configured(|c| {
        c.media.first_port = 30001;
        c.media.last_port = 30001;
    });
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
    assert!(h.media().is_empty());
    h.assert_drained_keeping(&[&intent.callid]);
}

/// An offer of two audio streams.
const SDP_A_TWO_STREAMS: &str = "v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\nm=audio 40002 RTP/AVP 0\r\n";

#[test]
fn media_allocation_failure_after_the_claim_ends_the_call_as_resources_exhausted() {
    // Two pairs: enough for the capacity check (one stream), not for two streams.
    let mut h = Harness::configured(|c| c.media.last_port = 30003);
    let intent = h.control.make_call(h.now, "1001", "2001", "3001").unwrap();
    h.feed(
        &leg_a_invite("1001", "2001", "z9hG4bKx2", SDP_A_TWO_STREAMS),
        phone(),
    );
    assert_eq!(statuses(&h.sent(), phone()), [100, 503]);
    assert!(h.media().is_empty(), "nothing opened");
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

#[test]
fn a_stream_the_driver_cannot_open_ends_the_call_with_503_and_cancels_leg_b() {
    let mut h = Harness::new();
    let (callid, b_invite) = start_call(&mut h, SDP_A);
    h.feed(&answer(&b_invite, 180, "btag", ""), trunk());
    h.sent();
    h.media();
    let stream = first_stream(&h);
    let (a_facing, b_facing) = first_call_ports();
    h.engine.handle_media_event(
        h.now,
        MediaEvent::OpenFailed {
            stream,
            port: Some(b_facing + 1),
            reason: "port busy".into(),
        },
    );
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [503]);
    assert_eq!(methods(&sent, trunk()), ["CANCEL"]);
    assert!(h.media().contains(&MediaCommand::Close { stream }));
    let record = h.control.call(&callid).unwrap();
    assert_eq!(record.end_cause, Some(EndCause::ResourcesExhausted));
    assert_eq!(h.engine.stats().media_open_failures, 1);
    let cancel = find_request(&sent, "CANCEL");
    h.feed(&answer(&cancel, 200, "btag", ""), trunk());
    h.feed(&answer(&b_invite, 487, "btag", ""), trunk());
    h.assert_drained();
    // The busy pair (B-facing, its RTCP port failed) is out of the pool, and so is the pair
    // the start-up probe finds busy; the A-facing pair is back.
    assert_eq!(h.engine.media_ports(), (49, 49));
    let probed = (30000..30099)
        .step_by(2)
        .find(|&p| p != a_facing && p != b_facing)
        .unwrap();
    h.engine
        .handle_media_event(h.now, MediaEvent::PortUnavailable { port: probed });
    assert_eq!(h.engine.media_ports(), (48, 48));
    // The next call gets neither withdrawn pair nor a port of one.
    let (_, b_invite) = start_call(&mut h, SDP_A);
    let opened = h.media();
    let Some(MediaCommand::Open {
        a_facing: next_a,
        b_facing: next_b,
        ..
    }) = opened.first()
    else {
        panic!("{opened:?}");
    };
    assert_eq!(audio_port(&b_invite.body), Some(next_b.rtp));
    for port in [next_a.rtp, next_b.rtp] {
        assert!((30000..30099).contains(&port) && port % 2 == 0, "{port}");
        assert!(port != b_facing && port != probed, "{port} was withdrawn");
    }
    callee_refuses(&mut h, &b_invite, "z9hG4bKa1");
    h.assert_drained();
}

#[test]
fn media_is_released_when_the_call_ends_not_when_its_transactions_linger() {
    let mut h = Harness::new();
    let (_, b_invite) = start_call(&mut h, SDP_A);
    let opened = h.media();
    assert!(
        matches!(
            opened.as_slice(),
            [
                MediaCommand::Open { .. },
                MediaCommand::SetRemote { leg: Leg::A, .. }
            ]
        ),
        "{opened:?}"
    );
    h.feed(&answer(&b_invite, 200, "btag", SDP_B), trunk());
    let a_tag = our_a_tag(&h.sent());
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 1, "z9hG4bKack6", ""),
        phone(),
    );
    assert!(matches!(
        h.media().as_slice(),
        [MediaCommand::SetRemote { leg: Leg::B, .. }]
    ));
    assert_eq!(h.engine.media_ports().0, h.engine.media_ports().1 - 2);
    h.feed(
        &in_dialog_from_a("BYE", &a_tag, 2, "z9hG4bKbye6", ""),
        phone(),
    );
    // The call is still held (its BYE transactions linger) but its media is gone.
    assert_eq!(h.engine.call_count(), 1);
    assert!(matches!(h.media().as_slice(), [MediaCommand::Close { .. }]));
    assert_eq!(h.engine.media_ports().0, h.engine.media_ports().1);
    let bye = find_request(&h.sent(), "BYE");
    h.feed(&answer(&bye, 200, "btag", ""), trunk());
    h.assert_drained();
}

#[test]
fn max_calls_counts_live_calls_not_ended_ones_still_lingering() {
    let mut h = Harness::with(1);
    let (_, b_invite) = start_call(&mut h, SDP_A);
    // While the first call is live, a second one is refused with 503.
    let second_intent = h.control.make_call(h.now, "1002", "2002", "3002").unwrap();
    let mut second = leg_a_invite("1002", "2002", "z9hG4bKsecond", SDP_A);
    if let Message::Request(r) = &mut second {
        r.headers.set(HeaderName::CallId, "second@10.9.9.9");
    }
    h.feed(&second, phone());
    // Shed statelessly, before any transaction (tests/door.rs).
    assert_eq!(statuses(&h.sent(), phone()), [503]);
    // The first call fails; its transactions linger (Timer D) but it no longer counts.
    callee_refuses(&mut h, &b_invite, "z9hG4bKa1");
    assert_eq!(h.engine.call_count(), 1);
    assert_eq!(h.engine.active_call_count(), 0);
    let third_intent = h.control.make_call(h.now, "1003", "2003", "3003").unwrap();
    let mut third = leg_a_invite("1003", "2003", "z9hG4bKthird", SDP_A);
    if let Message::Request(r) = &mut third {
        r.headers.set(HeaderName::CallId, "third@10.9.9.9");
    }
    h.feed(&third, phone());
    let sent = h.sent();
    assert_eq!(methods(&sent, trunk()), ["INVITE"]);
    assert_eq!(
        h.control.call(&third_intent.callid).unwrap().state,
        CallState::Trying
    );
    let third_b = find_request(&sent, "INVITE");
    callee_refuses(&mut h, &third_b, "z9hG4bKthird");
    // The second call was refused before the intent table (like media exhaustion): its
    // intent waits for the user to dial again.
    h.assert_drained_keeping(&[&second_intent.callid]);
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
    // The bound is on requests still waiting: once the relayed ones time out (64·T1), each
    // has had one final failure (the transaction layer's guard for unanswered non-INVITEs
    // answers 500 at the very instant the relay's Timer F fires), and the call relays again.
    h.advance(Duration::from_secs(33));
    let finals = statuses(&h.sent(), phone());
    assert_eq!(finals.len(), 16, "{finals:?}");
    assert!(finals.iter().all(|&s| s >= 400), "{finals:?}");
    // Nor does the call keep them: a long call relaying requests must not accumulate them.
    let call = h.engine.calls.values().next().expect("the call");
    assert!(call.relays.is_empty(), "{} relays kept", call.relays.len());
    h.feed(
        &in_dialog_from_a("INFO", &a_tag, 19, "z9hG4bKinfo19", ""),
        phone(),
    );
    let sent = h.sent();
    assert_eq!(methods(&sent, trunk()), ["INFO"]);
    h.feed(
        &answer(&find_request(&sent, "INFO"), 200, "btag", ""),
        trunk(),
    );
    assert_eq!(statuses(&h.sent(), phone()), [200]);
    caller_hangs_up(&mut h, &a_tag, 20);
    h.assert_drained();
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

// ---- helpers of the tests below -----------------------------------------------------------

/// `message` (a leg A INVITE) as the INVITE of another call: its own Call-ID.
fn with_call_id(mut message: Message, call_id: &str) -> Message {
    if let Message::Request(r) = &mut message {
        r.headers.set(HeaderName::CallId, call_id);
    }
    message
}

/// A request from the phone outside any dialog (no To tag), shaped like leg A's INVITE.
fn out_of_dialog(method: &str, branch: &str) -> Message {
    let mut request = request_of(&leg_a_invite("1001", "2001", branch, "")).clone();
    request.method = sip_core::Method::parse(method).unwrap();
    request.headers.set(HeaderName::CSeq, format!("1 {method}"));
    Message::Request(request)
}

/// A call bridged the usual way: leg B answered with SDP_B, leg A's ACK in. Returns the
/// callid, leg B's INVITE and our tag on leg A.
fn bridged_call(h: &mut Harness) -> (String, Request, String) {
    let (callid, b_invite) = start_call(h, SDP_A);
    h.feed(&answer(&b_invite, 200, "btag", SDP_B), trunk());
    let a_tag = our_a_tag(&h.sent());
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 1, "z9hG4bKackb", ""),
        phone(),
    );
    assert!(h.sent().is_empty());
    (callid, b_invite, a_tag)
}

/// Each peer answers 200 to the BYEs in `sent` that went to it.
fn answer_byes(h: &mut Harness, sent: &[(Peer, Message)]) {
    for (to, message) in sent {
        if let Message::Request(r) = message {
            if r.method == sip_core::Method::Bye {
                let tag = if *to == phone() { "atag" } else { "btag" };
                h.feed(&answer(r, 200, tag, ""), *to);
            }
        }
    }
}

fn reason_of(request: &Request) -> Option<String> {
    request.headers.get(&HeaderName::Reason).map(str::to_owned)
}

// ---- refusals and requests outside calls ---------------------------------------------------

#[test]
fn invites_refused_before_the_intent_table_keep_the_intent() {
    let mut h = Harness::configured(|c| c.refuse_code = 404);
    let intent = h.control.make_call(h.now, "1001", "2001", "3001").unwrap();
    // No hops left.
    let mut invite = leg_a_invite("1001", "2001", "z9hG4bKh1", SDP_A);
    if let Message::Request(r) = &mut invite {
        r.headers.set(HeaderName::MaxForwards, "0");
    }
    h.feed(&invite, phone());
    assert_eq!(statuses(&h.sent(), phone()), [100, 483]);
    // No Contact to send leg A's in-dialog requests to.
    let mut invite = leg_a_invite("1001", "2001", "z9hG4bKh2", SDP_A);
    if let Message::Request(r) = &mut invite {
        r.headers.remove_all(&HeaderName::Contact);
    }
    h.feed(&invite, phone());
    assert_eq!(statuses(&h.sent(), phone()), [100, 400]);
    // Another dedicated number than the intent's: `sip.refuse_code`.
    h.feed(&leg_a_invite("1001", "2999", "z9hG4bKh3", SDP_A), phone());
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [100, 404]);
    assert!(methods(&sent, trunk()).is_empty());
    let refused = &h.engine.stats().calls_refused;
    for code in ["too_many_hops", "malformed", "other_number"] {
        assert_eq!(refused.get(code), Some(&1), "{code}: {refused:?}");
    }
    h.assert_drained_keeping(&[&intent.callid]);
}

#[test]
fn an_expired_intent_is_refused_and_its_record_ends_as_expired() {
    let mut h = Harness::new();
    let intent = h.control.make_call(h.now, "1001", "2001", "3001").unwrap();
    h.advance(Duration::from_secs(121));
    h.feed(&leg_a_invite("1001", "2001", "z9hG4bKe1", SDP_A), phone());
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [100, 403]);
    assert!(methods(&sent, trunk()).is_empty());
    assert_eq!(
        h.engine.stats().calls_refused.get("intent_expired"),
        Some(&1)
    );
    assert_eq!(
        h.control.call(&intent.callid).unwrap().end_cause,
        Some(EndCause::IntentExpired)
    );
    h.assert_drained();
}

#[test]
fn the_asserted_identity_of_a_trusted_trunk_is_the_calling_number() {
    let mut h = Harness::new();
    let intent = h.control.make_call(h.now, "1001", "2001", "3001").unwrap();
    let mut invite = leg_a_invite("9999", "2001", "z9hG4bKp1", SDP_A);
    if let Message::Request(r) = &mut invite {
        r.headers.push(
            HeaderName::parse("P-Asserted-Identity"),
            "<sip:1001@10.0.0.1>",
        );
    }
    h.feed(&invite, phone());
    let sent = h.sent();
    assert_eq!(methods(&sent, trunk()), ["INVITE"]);
    assert_eq!(
        h.control.call(&intent.callid).unwrap().state,
        CallState::Trying
    );
    callee_refuses(&mut h, &find_request(&sent, "INVITE"), "z9hG4bKp1");
    h.assert_drained();
}

#[test]
fn requests_outside_any_call_get_481_501_or_405() {
    let mut h = Harness::new();
    // An INFO or BYE outside a dialog (no To tag) has nothing to act on.
    h.feed(&out_of_dialog("INFO", "z9hG4bKo1"), phone());
    assert_eq!(statuses(&h.sent(), phone()), [481]);
    h.feed(&out_of_dialog("BYE", "z9hG4bKo2"), phone());
    assert_eq!(statuses(&h.sent(), phone()), [481]);
    // So does a CANCEL of an INVITE callbridge never saw.
    h.feed(&out_of_dialog("CANCEL", "z9hG4bKo6"), phone());
    assert_eq!(statuses(&h.sent(), phone()), [481]);
    // A method callbridge does not know, and one it knows but does not serve.
    h.feed(&out_of_dialog("FROB", "z9hG4bKo3"), phone());
    assert_eq!(statuses(&h.sent(), phone()), [501]);
    h.feed(&out_of_dialog("SUBSCRIBE", "z9hG4bKo4"), phone());
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [405]);
    assert_eq!(
        response_of(&sent[0].1).headers.get(&HeaderName::Allow),
        Some(crate::outbound::ALLOW)
    );
    h.feed(&out_of_dialog("OPTIONS", "z9hG4bKo5"), phone());
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [200]);
    assert_eq!(
        response_of(&sent[0].1).headers.get(&HeaderName::Allow),
        Some(crate::outbound::ALLOW)
    );
    assert!(h.engine.stats().calls_refused.is_empty());
    h.assert_drained();
}

// ---- how calls end -------------------------------------------------------------------------

#[test]
fn transport_failure_towards_leg_b_answers_408() {
    let mut h = Harness::new();
    let intent = h.control.make_call(h.now, "1001", "2001", "3001").unwrap();
    let callid = intent.callid;
    h.feed(&leg_a_invite("1001", "2001", "z9hG4bKa1", SDP_A), phone());
    let invite_b = std::iter::from_fn(|| h.engine.poll_transmit())
        .find(|t| t.to == trunk())
        .and_then(|t| t.origin)
        .expect("the INVITE to the trunk names its transaction");
    // A failed stateless send (no transaction) fails nothing.
    h.engine.handle_transport_error(h.now, None);
    assert!(h.sent().is_empty());
    h.engine.handle_transport_error(h.now, Some(invite_b));
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [408]);
    let record = h.control.call(&callid).unwrap();
    assert_eq!(record.end_cause, Some(EndCause::SignallingFailure));
    assert_eq!(record.leg_a_code, Some(408));
    h.feed(
        &in_dialog_from_a("ACK", &our_a_tag(&sent), 1, "z9hG4bKa1", ""),
        phone(),
    );
    h.assert_drained();
}

#[test]
fn max_duration_hangs_up_both_legs_with_a_reason() {
    let mut h = Harness::configured(|c| {
        c.max_duration = Some(Duration::from_secs(3600));
    });
    let (callid, _, _) = bridged_call(&mut h);
    h.advance(Duration::from_secs(3599));
    assert!(h.sent().is_empty());
    assert_eq!(h.control.call(&callid).unwrap().state, CallState::Answered);
    h.advance(Duration::from_secs(1));
    let sent = h.sent();
    assert_eq!(methods(&sent, phone()), ["BYE"]);
    assert_eq!(methods(&sent, trunk()), ["BYE"]);
    for (_, message) in &sent {
        let reason = reason_of(request_of(message));
        assert!(
            reason
                .as_deref()
                .is_some_and(|r| r.contains("max_duration")),
            "{reason:?}"
        );
    }
    let record = h.control.call(&callid).unwrap();
    assert_eq!(record.end_cause, Some(EndCause::MaxDuration));
    assert_eq!(record.ended_by, Some(Party::System));
    answer_byes(&mut h, &sent);
    h.assert_drained();
}

#[test]
fn a_caller_that_never_acks_the_answer_is_hung_up_on_both_legs() {
    let mut h = Harness::new();
    let (callid, b_invite) = start_call(&mut h, SDP_A);
    h.feed(&answer(&b_invite, 200, "btag", SDP_B), trunk());
    h.sent();
    // The 200 is retransmitted to leg A until Timer L (64·T1 = 32 s); then the caller is
    // taken to be gone.
    h.advance(Duration::from_secs(31));
    assert!(methods(&h.sent(), trunk()).is_empty());
    assert_eq!(h.control.call(&callid).unwrap().state, CallState::Answered);
    h.advance(Duration::from_secs(1));
    let sent = h.sent();
    assert_eq!(methods(&sent, phone()), ["BYE"]);
    assert_eq!(methods(&sent, trunk()), ["BYE"]);
    let record = h.control.call(&callid).unwrap();
    assert_eq!(record.end_cause, Some(EndCause::SignallingFailure));
    assert_eq!(record.ended_by, Some(Party::System));
    answer_byes(&mut h, &sent);
    h.assert_drained();
}

#[test]
fn shutdown_hangs_up_bridged_calls_and_refuses_ringing_ones() {
    let mut h = Harness::new();
    let (bridged, _, _) = bridged_call(&mut h);
    let ringing = h.control.make_call(h.now, "1002", "2002", "3002").unwrap();
    h.feed(
        &with_call_id(
            leg_a_invite("1002", "2002", "z9hG4bKring", SDP_A),
            "ringing@10.9.9.9",
        ),
        phone(),
    );
    let ringing_b = find_request(&h.sent(), "INVITE");
    h.feed(&answer(&ringing_b, 180, "btag2", ""), trunk());
    h.sent();

    h.engine.shutdown(h.now);
    let sent = h.sent();
    let mut to_phone = methods(&sent, phone());
    to_phone.sort();
    assert_eq!(to_phone, ["BYE"]);
    let mut to_trunk = methods(&sent, trunk());
    to_trunk.sort();
    assert_eq!(to_trunk, ["BYE", "CANCEL"]);
    assert_eq!(statuses(&sent, phone()), [503]);
    let bye = find_request(&sent, "BYE");
    assert!(reason_of(&bye).is_some_and(|r| r.contains("shutdown")));
    for callid in [&bridged, &ringing.callid] {
        let record = h.control.call(callid).unwrap();
        assert_eq!(record.end_cause, Some(EndCause::Shutdown), "{callid}");
        assert_eq!(record.ended_by, Some(Party::System));
    }
    assert_eq!(
        h.control.call(&ringing.callid).unwrap().leg_a_code,
        Some(503)
    );
    answer_byes(&mut h, &sent);
    let cancel = find_request(&sent, "CANCEL");
    h.feed(&answer(&cancel, 200, "btag2", ""), trunk());
    h.feed(&answer(&ringing_b, 487, "btag2", ""), trunk());
    assert_eq!(methods(&h.sent(), trunk()), ["ACK"]);
    h.assert_drained();
}

#[test]
fn caller_bye_before_the_answer_cancels_leg_b() {
    let mut h = Harness::new();
    let (callid, b_invite) = start_call(&mut h, SDP_A);
    h.feed(&answer(&b_invite, 180, "btag", ""), trunk());
    let a_tag = our_a_tag(&h.sent());
    h.feed(
        &in_dialog_from_a("BYE", &a_tag, 2, "z9hG4bKearly", ""),
        phone(),
    );
    let sent = h.sent();
    let mut answers = statuses(&sent, phone());
    answers.sort();
    assert_eq!(answers, [200, 487]);
    assert_eq!(methods(&sent, trunk()), ["CANCEL"]);
    let record = h.control.call(&callid).unwrap();
    assert_eq!(record.end_cause, Some(EndCause::Cancelled));
    assert_eq!(record.ended_by, Some(Party::Leg(Leg::A)));
    h.feed(
        &answer(&find_request(&sent, "CANCEL"), 200, "btag", ""),
        trunk(),
    );
    h.feed(&answer(&b_invite, 487, "btag", ""), trunk());
    assert_eq!(methods(&h.sent(), trunk()), ["ACK"]);
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 1, "z9hG4bKa1", ""),
        phone(),
    );
    h.assert_drained();
}

#[test]
fn callee_bye_before_the_answer_gives_the_caller_480() {
    let mut h = Harness::new();
    let (callid, b_invite) = start_call(&mut h, SDP_A);
    h.feed(&answer(&b_invite, 180, "btag", ""), trunk());
    let a_tag = our_a_tag(&h.sent());
    // RFC 3261 §15 forbids it, but a callee may still BYE its early dialog.
    h.feed(
        &in_dialog_from_b(&b_invite, "btag", "BYE", 1, "z9hG4bKbearly", ""),
        trunk(),
    );
    let sent = h.sent();
    assert_eq!(statuses(&sent, trunk()), [200]);
    assert_eq!(statuses(&sent, phone()), [480]);
    // Leg B's INVITE is still pending: cancelled, so that it ends even if this callee never
    // answers it (as here) rather than holding the call forever.
    assert_eq!(methods(&sent, trunk()), ["CANCEL"]);
    let record = h.control.call(&callid).unwrap();
    assert_eq!(record.end_cause, Some(EndCause::Hangup));
    assert_eq!(record.ended_by, Some(Party::Leg(Leg::B)));
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 1, "z9hG4bKa1", ""),
        phone(),
    );
    h.assert_drained();
}

#[test]
fn a_481_to_a_relayed_request_ends_the_call() {
    let mut h = Harness::new();
    let (callid, _, a_tag) = bridged_call(&mut h);
    h.feed(
        &in_dialog_from_a("INFO", &a_tag, 2, "z9hG4bKi481", ""),
        phone(),
    );
    let info = find_request(&h.sent(), "INFO");
    h.feed(&answer(&info, 481, "btag", ""), trunk());
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [481]);
    // Leg B's dialog is gone (that is what its 481 says): only leg A gets a BYE.
    assert_eq!(methods(&sent, phone()), ["BYE"]);
    assert!(methods(&sent, trunk()).is_empty());
    let record = h.control.call(&callid).unwrap();
    assert_eq!(record.end_cause, Some(EndCause::SignallingFailure));
    answer_byes(&mut h, &sent);
    h.assert_drained();
}

// ---- leg B's answers -----------------------------------------------------------------------

#[test]
fn a_retransmitted_answer_is_acked_again_and_not_relayed_twice() {
    let mut h = Harness::new();
    let (_, b_invite, a_tag) = bridged_call(&mut h);
    h.feed(&answer(&b_invite, 200, "btag", SDP_B), trunk());
    let sent = h.sent();
    assert_eq!(methods(&sent, trunk()), ["ACK"]);
    assert!(statuses(&sent, phone()).is_empty());
    assert_eq!(
        h.engine.stats().calls_bridged,
        1,
        "a retransmission is not a second call"
    );
    caller_hangs_up(&mut h, &a_tag, 2);
    h.assert_drained();
}

#[test]
fn a_second_fork_answering_is_acked_and_released() {
    let mut h = Harness::new();
    let (callid, b_invite, a_tag) = bridged_call(&mut h);
    h.feed(&answer(&b_invite, 200, "fork2", SDP_B), trunk());
    let sent = h.sent();
    assert_eq!(methods(&sent, trunk()), ["ACK", "BYE"]);
    for (_, message) in &sent {
        let request = request_of(message);
        assert_eq!(request.headers.to().unwrap().tag(), Some("fork2"));
    }
    assert!(statuses(&sent, phone()).is_empty());
    h.feed(
        &answer(&find_request(&sent, "BYE"), 200, "fork2", ""),
        trunk(),
    );
    // The bridged call is untouched: its BYE goes to the fork that answered first.
    assert_eq!(h.control.call(&callid).unwrap().state, CallState::Answered);
    h.feed(
        &in_dialog_from_a("BYE", &a_tag, 2, "z9hG4bKbyef", ""),
        phone(),
    );
    let bye = find_request(&h.sent(), "BYE");
    assert_eq!(bye.headers.to().unwrap().tag(), Some("btag"));
    h.feed(&answer(&bye, 200, "btag", ""), trunk());
    h.assert_drained();
}

#[test]
fn an_answer_from_another_fork_than_the_ringing_one_takes_the_call() {
    let mut h = Harness::new();
    let (_, b_invite) = start_call(&mut h, SDP_A);
    h.feed(&answer(&b_invite, 180, "fork1", ""), trunk());
    let a_tag = our_a_tag(&h.sent());
    h.feed(&answer(&b_invite, 200, "fork2", SDP_B), trunk());
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [200]);
    let ack = find_request(&sent, "ACK");
    assert_eq!(ack.headers.to().unwrap().tag(), Some("fork2"));
    // Leg A's dialog and the answering fork's; the ringing fork's is forgotten.
    assert_eq!(h.engine.dialog_count(), 2);
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 1, "z9hG4bKackf", ""),
        phone(),
    );
    h.feed(
        &in_dialog_from_a("BYE", &a_tag, 2, "z9hG4bKbyef2", ""),
        phone(),
    );
    let bye = find_request(&h.sent(), "BYE");
    assert_eq!(bye.headers.to().unwrap().tag(), Some("fork2"));
    h.feed(&answer(&bye, 200, "fork2", ""), trunk());
    h.assert_drained();
}

// ---- requests relayed inside a call --------------------------------------------------------

#[test]
fn relayed_bodies_go_through_the_media_session_only_when_they_are_sdp() {
    let mut h = Harness::new();
    let (_, b_invite) = start_call(&mut h, SDP_A);
    assert_eq!(towards(&b_invite.body), "b");
    h.feed(&answer(&b_invite, 200, "btag", SDP_B), trunk());
    let sent = h.sent();
    let ok = response_of(&sent.iter().find(|(p, _)| *p == phone()).unwrap().1).clone();
    assert_eq!(towards(&ok.body), "a");
    let a_tag = our_a_tag(&sent);
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 1, "z9hG4bKackm", ""),
        phone(),
    );

    // A re-INVITE's offer and its answer are SDP: through the media session, both ways.
    h.feed(
        &in_dialog_from_a("INVITE", &a_tag, 2, "z9hG4bKrem", SDP_A),
        phone(),
    );
    let reinvite = find_request(&h.sent(), "INVITE");
    assert_eq!(towards(&reinvite.body), "b");
    h.feed(&answer(&reinvite, 200, "btag", SDP_B), trunk());
    let sent = h.sent();
    assert_eq!(methods(&sent, trunk()), ["ACK"]);
    assert!(find_request(&sent, "ACK").body.is_empty());
    let ok = response_of(&sent.iter().find(|(p, _)| *p == phone()).unwrap().1).clone();
    assert_eq!(ok.status, 200);
    assert_eq!(towards(&ok.body), "a");
    assert_eq!(
        ok.headers.content_type(),
        Some("application/sdp"),
        "{:?}",
        ok.headers
    );
    // The 2xx's Contact is callbridge's: leg B's address never reaches leg A.
    let contact = ok.headers.get(&HeaderName::Contact).unwrap();
    assert!(
        contact.contains("127.0.0.1:5060") && !contact.contains("5080"),
        "{contact}"
    );
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 2, "z9hG4bKreackm", ""),
        phone(),
    );

    // An INFO's DTMF payload is not SDP: relayed untouched, with its type.
    let dtmf = "Signal=5\r\nDuration=160\r\n";
    let mut info = request_of(&in_dialog_from_a("INFO", &a_tag, 3, "z9hG4bKdtmf", "")).clone();
    info.headers
        .set(HeaderName::ContentType, "application/dtmf-relay");
    info.body = Bytes::from_static(dtmf.as_bytes());
    h.feed(&Message::Request(info), phone());
    let relayed = find_request(&h.sent(), "INFO");
    assert_eq!(relayed.body, Bytes::from_static(dtmf.as_bytes()));
    assert_eq!(
        relayed.headers.content_type(),
        Some("application/dtmf-relay")
    );
    h.feed(&answer(&relayed, 200, "btag", ""), trunk());
    let sent = h.sent();
    // A 2xx to anything but an INVITE gets no ACK; an empty answer gets no Content-Type.
    assert!(methods(&sent, trunk()).is_empty());
    let ok = response_of(&sent[0].1);
    assert_eq!((ok.status, ok.headers.content_type()), (200, None));
    caller_hangs_up(&mut h, &a_tag, 4);
    h.assert_drained();
}

#[test]
fn a_late_offer_reinvite_carries_the_answer_in_the_relayed_ack() {
    let mut h = Harness::new();
    let (_, b_invite) = start_call(&mut h, SDP_A);
    h.feed(&answer(&b_invite, 200, "btag", SDP_B), trunk());
    let a_tag = our_a_tag(&h.sent());
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 1, "z9hG4bKackl", ""),
        phone(),
    );
    // Leg B re-INVITEs without SDP: leg A makes the offer in its 200, leg B answers in its ACK.
    h.feed(
        &in_dialog_from_b(&b_invite, "btag", "INVITE", 2, "z9hG4bKlate", ""),
        trunk(),
    );
    let to_a = find_request(&h.sent(), "INVITE");
    assert!(to_a.body.is_empty());
    h.feed(&answer(&to_a, 200, "atag", SDP_A), phone());
    let sent = h.sent();
    // No ACK on leg A until leg B's ACK brings the answer.
    assert!(methods(&sent, phone()).is_empty());
    let ok = response_of(&sent.iter().find(|(p, _)| *p == trunk()).unwrap().1).clone();
    assert_eq!(towards(&ok.body), "b");
    h.feed(
        &in_dialog_from_b(&b_invite, "btag", "ACK", 2, "z9hG4bKlateack", SDP_B),
        trunk(),
    );
    let sent = h.sent();
    assert_eq!(methods(&sent, phone()), ["ACK"]);
    let ack = find_request(&sent, "ACK");
    assert_eq!(towards(&ack.body), "a");
    assert_eq!(ack.headers.content_type(), Some("application/sdp"));
    assert_eq!(
        ack.headers.cseq().unwrap().seq,
        to_a.headers.cseq().unwrap().seq
    );
    // A retransmission of leg A's 200 gets that ACK again, answer included.
    h.feed(&answer(&to_a, 200, "atag", SDP_A), phone());
    let sent = h.sent();
    assert_eq!(methods(&sent, phone()), ["ACK"]);
    let again = find_request(&sent, "ACK");
    assert_eq!(
        (again.body, again.headers.cseq().unwrap()),
        (ack.body.clone(), ack.headers.cseq().unwrap())
    );

    // The same the other way: leg A re-INVITEs without SDP, leg B offers in its 200.
    h.feed(
        &in_dialog_from_a("INVITE", &a_tag, 2, "z9hG4bKlate2", ""),
        phone(),
    );
    let to_b = find_request(&h.sent(), "INVITE");
    assert!(to_b.body.is_empty());
    h.feed(&answer(&to_b, 200, "btag", SDP_B), trunk());
    let sent = h.sent();
    assert!(methods(&sent, trunk()).is_empty());
    let ok = response_of(&sent.iter().find(|(p, _)| *p == phone()).unwrap().1).clone();
    assert_eq!(towards(&ok.body), "a");
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 2, "z9hG4bKlate2ack", SDP_A),
        phone(),
    );
    let ack = find_request(&h.sent(), "ACK");
    assert_eq!(towards(&ack.body), "b");
    assert_eq!(
        ack.headers.cseq().unwrap().seq,
        to_b.headers.cseq().unwrap().seq
    );
    h.feed(&answer(&to_b, 200, "btag", SDP_B), trunk());
    let sent = h.sent();
    assert_eq!(methods(&sent, trunk()), ["ACK"]);
    assert_eq!(find_request(&sent, "ACK").body, ack.body);
    caller_hangs_up(&mut h, &a_tag, 3);
    h.assert_drained();
}

#[test]
fn an_update_before_the_answer_crosses_the_early_dialogs_and_nothing_else_does() {
    let mut h = Harness::new();
    let (callid, b_invite) = start_call(&mut h, SDP_A);
    h.feed(&answer(&b_invite, 183, "btag", SDP_B), trunk());
    let a_tag = our_a_tag(&h.sent());
    // Only UPDATE is meant for an early dialog (RFC 3311): an INFO is refused, not relayed.
    h.feed(
        &in_dialog_from_a("INFO", &a_tag, 2, "z9hG4bKeinfo", ""),
        phone(),
    );
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [481]);
    assert!(methods(&sent, trunk()).is_empty());
    // The UPDATE crosses on leg B's early dialog, its SDP through the media session both
    // ways.
    h.feed(
        &in_dialog_from_a("UPDATE", &a_tag, 3, "z9hG4bKeupd", SDP_A),
        phone(),
    );
    let update = find_request(&h.sent(), "UPDATE");
    assert_eq!(update.headers.to().unwrap().tag(), Some("btag"));
    assert_eq!(towards(&update.body), "b");
    h.feed(&answer(&update, 200, "btag", SDP_B), trunk());
    let sent = h.sent();
    let ok = response_of(&sent.iter().find(|(p, _)| *p == phone()).unwrap().1).clone();
    assert_eq!(ok.status, 200);
    assert_eq!(towards(&ok.body), "a");
    assert_eq!(h.control.call(&callid).unwrap().state, CallState::Ringing);
    // The answer then confirms those dialogs: the call is bridged as usual.
    h.feed(&answer(&b_invite, 200, "btag", SDP_B), trunk());
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [200]);
    assert_eq!(methods(&sent, trunk()), ["ACK"]);
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 1, "z9hG4bKackeu", ""),
        phone(),
    );
    caller_hangs_up(&mut h, &a_tag, 4);
    h.assert_drained();
}

#[test]
fn an_unanswered_reinvite_gets_408_and_the_call_goes_on() {
    let mut h = Harness::new();
    let (callid, b_invite, a_tag) = bridged_call(&mut h);
    h.feed(
        &in_dialog_from_a("INVITE", &a_tag, 2, "z9hG4bKlost", SDP_A),
        phone(),
    );
    let sent = h.sent();
    assert_eq!(statuses(&sent, phone()), [100]);
    assert_eq!(methods(&sent, trunk()), ["INVITE"]);
    // Leg B never answers it: at Timer B (64·T1 = 32 s) the caller hears 408.
    h.advance(Duration::from_secs(31));
    assert!(statuses(&h.sent(), phone()).is_empty());
    h.advance(Duration::from_secs(1));
    assert_eq!(statuses(&h.sent(), phone()), [408]);
    h.feed(
        &in_dialog_from_a("ACK", &a_tag, 2, "z9hG4bKlost", ""),
        phone(),
    );
    assert_eq!(h.control.call(&callid).unwrap().state, CallState::Answered);
    // No INVITE is pending any more: the next re-INVITE is relayed, not refused with 491.
    h.feed(
        &in_dialog_from_b(&b_invite, "btag", "INVITE", 2, "z9hG4bKnext", SDP_B),
        trunk(),
    );
    let sent = h.sent();
    assert_eq!(statuses(&sent, trunk()), [100]);
    assert_eq!(methods(&sent, phone()), ["INVITE"]);
    let to_a = find_request(&sent, "INVITE");
    h.feed(&answer(&to_a, 200, "atag", SDP_A), phone());
    assert_eq!(statuses(&h.sent(), trunk()), [200]);
    h.feed(
        &in_dialog_from_b(&b_invite, "btag", "ACK", 2, "z9hG4bKnextack", ""),
        trunk(),
    );
    caller_hangs_up(&mut h, &a_tag, 3);
    h.assert_drained();
}

// ---- counters the API and /metrics show ----------------------------------------------------

#[test]
fn media_counters_reach_the_call_record_and_the_totals() {
    let mut h = Harness::new();
    let (callid, _, a_tag) = bridged_call(&mut h);
    h.media();
    let stream = first_stream(&h);
    let mut counters = StreamCounters {
        a_to_b: DirectionStats {
            packets: 10,
            bytes: 1720,
            dropped: 1,
        },
        b_to_a: DirectionStats {
            packets: 5,
            bytes: 860,
            dropped: 2,
        },
        latched_a: Some("127.0.0.1:40000".parse().unwrap()),
        last_packet_at: Some(h.now),
        ..StreamCounters::default()
    };
    h.engine
        .handle_media_event(h.now, MediaEvent::Counters { stream, counters });
    let total = DirectionStats {
        packets: 15,
        bytes: 2580,
        dropped: 3,
    };
    assert_eq!(h.engine.media_totals(), total);
    assert_eq!(h.control.call(&callid).unwrap().media, None);
    h.advance(Duration::from_millis(250));
    h.engine.publish_media_stats(h.now);
    let media = h.control.call(&callid).unwrap().media.unwrap();
    assert_eq!(
        (media.a_to_b, media.b_to_a),
        (counters.a_to_b, counters.b_to_a)
    );
    assert_eq!((media.streams, media.idle_ms), (1, Some(250)));
    assert_eq!(media.latched_a, counters.latched_a);
    // Ended: the driver's final counters (two more packets) reach the record and the totals.
    caller_hangs_up(&mut h, &a_tag, 2);
    assert!(h.media().contains(&MediaCommand::Close { stream }));
    counters.a_to_b.packets += 2;
    h.engine
        .handle_media_event(h.now, MediaEvent::Counters { stream, counters });
    h.assert_drained();
    assert_eq!(
        h.control
            .call(&callid)
            .unwrap()
            .media
            .unwrap()
            .a_to_b
            .packets,
        12
    );
    assert_eq!(h.engine.media_totals().packets, 17);
}

#[test]
fn media_events_for_unknown_calls_are_ignored() {
    let mut h = Harness::new();
    let stream = StreamId {
        call: CallKey(99),
        index: 0,
    };
    h.engine.handle_media_event(
        h.now,
        MediaEvent::Counters {
            stream,
            counters: StreamCounters::default(),
        },
    );
    h.engine.handle_media_event(
        h.now,
        MediaEvent::OpenFailed {
            stream,
            port: None,
            reason: "x".into(),
        },
    );
    h.engine
        .handle_media_event(h.now, MediaEvent::Opened { stream });
    assert!(h.sent().is_empty());
    assert_eq!(h.engine.media_totals(), DirectionStats::default());
    h.assert_drained();
}

#[test]
fn an_engine_is_built_and_driven_without_any_runtime() {
    // Nothing in this test module runs inside tokio; this test says so explicitly.
    let mut h = Harness::new();
    let (_, _, a_tag) = bridged_call(&mut h);
    assert_eq!(h.engine.media_stream_count(), 1);
    caller_hangs_up(&mut h, &a_tag, 2);
    h.assert_drained();
}

mod challenge;
mod claims;
mod door;
mod failover;
mod hangup;
mod ipv6;
mod keepalive;
mod multipart;
mod prack;
mod redirect;
mod register;
mod reliable;
mod session;
