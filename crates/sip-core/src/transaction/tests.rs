//! Every state machine and timer of the transaction layer, driven by a fake clock: the test
//! owns `now` and jumps it to the deadlines the layer asks for. Nothing here sleeps.

use std::time::{Duration, Instant};

use super::*;
use crate::message::{HeaderName, Method, ParseLimits};
use crate::peer::ConnectionId;

const T4: Duration = Duration::from_secs(5);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn parse(text: &str) -> Message {
    Message::parse(
        text.replace('\n', "\r\n").as_bytes(),
        &ParseLimits::default(),
    )
    .unwrap()
}

fn request(text: &str) -> Request {
    match parse(text) {
        Message::Request(r) => r,
        Message::Response(_) => panic!("not a request"),
    }
}

fn udp_peer() -> Peer {
    Peer::udp("10.0.0.2:5062".parse().unwrap())
}

fn tcp_peer() -> Peer {
    Peer::tcp("10.0.0.2:40000".parse().unwrap(), Some(ConnectionId(9)))
}

/// An outgoing request without Via: the layer adds it.
fn outgoing(method: &str) -> Request {
    let mut request = request(&format!(
        "{method} sip:bob@10.0.0.2:5062 SIP/2.0\n\
         Via: SIP/2.0/UDP placeholder;branch=z9hG4bKremoved\n\
         Max-Forwards: 70\n\
         From: <sip:alice@10.0.0.1>;tag=a1\n\
         To: <sip:bob@10.0.0.2>\n\
         Call-ID: c1@10.0.0.1\n\
         CSeq: 1 {method}\n\
         Contact: <sip:alice@10.0.0.1>\n\
         \n"
    ));
    request.headers.remove_all(&HeaderName::Via);
    request
}

/// An incoming request as a peer would send it (`branch` given, so retransmissions match).
fn incoming(method: &str, branch: &str, cseq: u32) -> Request {
    request(&format!(
        "{method} sip:bob@10.0.0.1 SIP/2.0\n\
         Via: SIP/2.0/UDP 10.0.0.2:5062;branch={branch}\n\
         Max-Forwards: 70\n\
         From: <sip:alice@10.0.0.2>;tag=f1\n\
         To: <sip:bob@10.0.0.1>\n\
         Call-ID: in1@10.0.0.2\n\
         CSeq: {cseq} {method}\n\
         Contact: <sip:alice@10.0.0.2:5062>\n\
         \n"
    ))
}

/// The response a peer sends to our `request` (copies Via etc. from what we sent).
fn reply(request: &Request, status: u16, to_tag: Option<&str>) -> Message {
    let mut response = Response::to_request(request, status, None);
    if let Some(tag) = to_tag {
        let to = response.headers.to().unwrap().with_tag(tag);
        response.headers.set(HeaderName::To, to.to_string());
    }
    Message::Response(response)
}

/// The layer under a fake clock.
struct Harness {
    layer: TransactionLayer,
    start: Instant,
    now: Instant,
}

impl Harness {
    fn new() -> Harness {
        Harness::with(TimerConfig::default())
    }

    fn with(timers: TimerConfig) -> Harness {
        let start = Instant::now();
        Harness {
            layer: TransactionLayer::new(TransactionConfig {
                timers,
                via_host: "10.0.0.1".into(),
                via_port: Some(5060),
                send_100_trying: true,
                ..TransactionConfig::default()
            }),
            start,
            now: start,
        }
    }

    fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Jumps the clock to `start + at`, firing every deadline on the way in order, and returns
    /// what was transmitted, stamped with the time it went out.
    fn run_until(&mut self, at: Duration) -> Vec<(Duration, Transmit)> {
        let end = self.start + at;
        let mut sent = self.drain_transmits();
        // A layer that keeps asking for a deadline it does not consume must fail, not hang.
        let mut steps = 0;
        while let Some(deadline) = self.layer.poll_timeout() {
            if deadline > end {
                break;
            }
            steps += 1;
            assert!(steps <= 100_000, "deadline {deadline:?} is never consumed");
            self.now = deadline;
            self.layer.handle_timeout(deadline);
            sent.extend(self.drain_transmits());
        }
        self.now = end;
        self.layer.handle_timeout(end);
        sent.extend(self.drain_transmits());
        sent
    }

    fn drain_transmits(&mut self) -> Vec<(Duration, Transmit)> {
        let elapsed = self.elapsed();
        std::iter::from_fn(|| self.layer.poll_transmit())
            .map(|t| (elapsed, t))
            .collect()
    }

    fn transmits(&mut self) -> Vec<Message> {
        std::iter::from_fn(|| self.layer.poll_transmit())
            .map(|t| Message::parse(&t.bytes, &ParseLimits::default()).unwrap())
            .collect()
    }

    fn events(&mut self) -> Vec<TxEvent> {
        std::iter::from_fn(|| self.layer.poll_event()).collect()
    }

    fn feed(&mut self, message: Message, from: Peer) {
        self.layer.handle_message(self.now, message, from).unwrap();
    }

    fn send(&mut self, request: Request, to: Peer) -> ClientTxId {
        self.layer.send_request(self.now, request, to).unwrap()
    }

    /// Feeds a new incoming request and returns its server transaction.
    fn receive(&mut self, request: Request, from: Peer) -> ServerTxId {
        self.feed(Message::Request(request), from);
        match self.events().into_iter().next() {
            Some(TxEvent::Request { tx, .. }) => tx,
            other => panic!("expected a Request event, got {other:?}"),
        }
    }

    fn assert_empty(&mut self) {
        assert_eq!(self.layer.client_count(), 0, "client transactions left");
        assert_eq!(self.layer.server_count(), 0, "server transactions left");
        assert_eq!(self.layer.poll_timeout(), None, "timers left");
    }
}

fn times(sent: &[(Duration, Transmit)]) -> Vec<Duration> {
    sent.iter().map(|(at, _)| *at).collect()
}

fn status_of(message: &Message) -> u16 {
    match message {
        Message::Response(r) => r.status,
        Message::Request(_) => 0,
    }
}

fn method_of(message: &Message) -> Option<Method> {
    match message {
        Message::Request(r) => Some(r.method.clone()),
        Message::Response(_) => None,
    }
}

// ----- client INVITE ---------------------------------------------------------------------

#[test]
fn client_invite_timer_a_doubles_and_timer_b_fires_at_64_t1() {
    let mut h = Harness::new();
    let tx = h.send(outgoing("INVITE"), udp_peer());
    let sent = h.run_until(ms(40_000));
    // First send at 0, then Timer A at T1, 2T1, 4T1, … (no cap for INVITE), until B at 64·T1.
    assert_eq!(
        times(&sent),
        [0, 500, 1500, 3500, 7500, 15500, 31500].map(ms)
    );
    assert!(sent.iter().all(|(_, t)| t.bytes == sent[0].1.bytes));
    assert_eq!(
        h.events(),
        [
            TxEvent::Timeout(TxId::Client(tx)),
            TxEvent::Terminated(TxId::Client(tx))
        ]
    );
    assert_eq!(h.layer.stats().retransmissions, 6);
    h.assert_empty();
}

#[test]
fn client_invite_over_tcp_never_retransmits_but_still_times_out() {
    let mut h = Harness::new();
    let tx = h.send(outgoing("INVITE"), tcp_peer());
    let sent = h.run_until(ms(31_999));
    assert_eq!(times(&sent), [ms(0)]);
    assert!(h.events().is_empty());
    h.run_until(ms(32_000));
    assert_eq!(h.events()[0], TxEvent::Timeout(TxId::Client(tx)));
    h.assert_empty();
}

#[test]
fn client_invite_adds_via_with_fresh_branch_and_rport() {
    let mut h = Harness::new();
    let tx = h.send(outgoing("INVITE"), udp_peer());
    let via = h
        .layer
        .client_request(tx)
        .unwrap()
        .headers
        .top_via()
        .unwrap();
    assert!(via.has_rfc3261_branch());
    assert_eq!(via.sent_by(), "10.0.0.1:5060");
    // That sent-by is the configured one, as the layer reports it.
    let config = h.layer.config();
    assert_eq!(
        (config.via_host.as_str(), config.via_port),
        ("10.0.0.1", Some(5060))
    );
    assert_eq!(via.rport(), Some(None));
    let other = h.send(outgoing("INVITE"), udp_peer());
    let via2 = h
        .layer
        .client_request(other)
        .unwrap()
        .headers
        .top_via()
        .unwrap();
    assert_ne!(via.branch(), via2.branch());
}

#[test]
fn client_invite_provisional_stops_timer_a_and_timer_b() {
    let mut h = Harness::new();
    let tx = h.send(outgoing("INVITE"), udp_peer());
    let sent_request = h.layer.client_request(tx).unwrap().clone();
    h.drain_transmits();
    h.feed(reply(&sent_request, 180, Some("b1")), udp_peer());
    assert_eq!(h.layer.client_state(tx), Some(ClientState::Proceeding));
    assert!(
        matches!(&h.events()[..], [TxEvent::Response { response, .. }] if response.status == 180)
    );
    // Neither A nor B runs in Proceeding: nothing is re-sent and nothing times out.
    let sent = h.run_until(ms(600_000));
    assert!(sent.is_empty());
    assert!(h.events().is_empty());
    assert_eq!(h.layer.client_count(), 1);
}

#[test]
fn client_invite_non_2xx_is_acked_and_timer_d_absorbs_retransmissions() {
    let mut h = Harness::new();
    let tx = h.send(outgoing("INVITE"), udp_peer());
    let sent_request = h.layer.client_request(tx).unwrap().clone();
    h.drain_transmits();
    h.feed(reply(&sent_request, 486, Some("b1")), udp_peer());
    assert_eq!(h.layer.client_state(tx), Some(ClientState::Completed));
    let acks = h.transmits();
    let [Message::Request(ack)] = &acks[..] else {
        panic!("expected one ACK, got {acks:?}")
    };
    // §17.1.1.3: same Request-URI and top Via (branch) as the INVITE, To from the response.
    assert_eq!(ack.method, Method::Ack);
    assert_eq!(ack.uri, sent_request.uri);
    assert_eq!(
        ack.headers.top_via().unwrap(),
        sent_request.headers.top_via().unwrap()
    );
    assert_eq!(ack.headers.to().unwrap().tag(), Some("b1"));
    assert_eq!(ack.headers.cseq().unwrap().seq, 1);
    assert_eq!(ack.headers.cseq().unwrap().method, Method::Ack);
    assert!(
        matches!(&h.events()[..], [TxEvent::Response { response, .. }] if response.status == 486)
    );

    // A retransmitted 486 is ACKed again and not passed up.
    h.run_until(ms(10_000));
    h.feed(reply(&sent_request, 486, Some("b1")), udp_peer());
    assert_eq!(
        h.transmits().iter().map(method_of).collect::<Vec<_>>(),
        [Some(Method::Ack)]
    );
    assert!(h.events().is_empty());

    // Timer D: 32 s after the final response.
    h.run_until(ms(31_999));
    assert_eq!(h.layer.client_count(), 1);
    h.run_until(ms(32_000));
    assert_eq!(h.events(), [TxEvent::Terminated(TxId::Client(tx))]);
    h.assert_empty();
}

#[test]
fn client_invite_timer_d_is_zero_over_tcp() {
    let mut h = Harness::new();
    let tx = h.send(outgoing("INVITE"), tcp_peer());
    let sent_request = h.layer.client_request(tx).unwrap().clone();
    h.feed(reply(&sent_request, 503, Some("b1")), tcp_peer());
    let events = h.events();
    assert!(matches!(&events[0], TxEvent::Response { response, .. } if response.status == 503));
    assert_eq!(events[1], TxEvent::Terminated(TxId::Client(tx)));
    h.assert_empty();
}

#[test]
fn client_invite_timer_d_is_configurable() {
    let mut h = Harness::with(TimerConfig {
        timer_d: Duration::from_secs(40),
        ..TimerConfig::default()
    });
    let tx = h.send(outgoing("INVITE"), udp_peer());
    let sent_request = h.layer.client_request(tx).unwrap().clone();
    h.feed(reply(&sent_request, 404, Some("b1")), udp_peer());
    h.run_until(ms(39_999));
    assert_eq!(h.layer.client_count(), 1);
    h.run_until(ms(40_000));
    h.assert_empty();
}

#[test]
fn client_invite_2xx_enters_accepted_passes_every_2xx_up_until_timer_m() {
    let mut h = Harness::new();
    let tx = h.send(outgoing("INVITE"), udp_peer());
    let sent_request = h.layer.client_request(tx).unwrap().clone();
    h.drain_transmits();
    h.feed(reply(&sent_request, 200, Some("b1")), udp_peer());
    assert_eq!(h.layer.client_state(tx), Some(ClientState::Accepted));
    // No ACK from the transaction: the ACK for a 2xx belongs to the user (dialog).
    assert!(h.transmits().is_empty());
    assert_eq!(h.events().len(), 1);
    h.run_until(ms(4_000));
    h.feed(reply(&sent_request, 200, Some("b1")), udp_peer());
    assert!(
        matches!(&h.events()[..], [TxEvent::Response { tx: t, response, .. }] if *t == tx && response.status == 200)
    );
    // Timer M = 64·T1 after the first 2xx.
    h.run_until(ms(31_999));
    assert_eq!(h.layer.client_count(), 1);
    h.run_until(ms(32_000));
    assert_eq!(h.events(), [TxEvent::Terminated(TxId::Client(tx))]);
    // A 2xx after that is stray; the user re-ACKs it from the dialog.
    h.feed(reply(&sent_request, 200, Some("b1")), udp_peer());
    assert!(matches!(&h.events()[..], [TxEvent::StrayResponse { .. }]));
    h.assert_empty();
}

#[test]
fn client_invite_timer_c_reports_and_ends_after_64_t1_more() {
    let mut h = Harness::with(TimerConfig {
        timer_c: Some(Duration::from_secs(180)),
        ..TimerConfig::default()
    });
    let tx = h.send(outgoing("INVITE"), udp_peer());
    let sent_request = h.layer.client_request(tx).unwrap().clone();
    h.feed(reply(&sent_request, 180, Some("b1")), udp_peer());
    h.events();
    h.run_until(ms(100_000));
    // A new provisional restarts Timer C.
    h.feed(reply(&sent_request, 183, Some("b1")), udp_peer());
    h.events();
    h.run_until(ms(279_999));
    assert!(h.events().is_empty());
    h.run_until(ms(280_000));
    assert_eq!(h.events(), [TxEvent::Timeout(TxId::Client(tx))]);
    assert_eq!(h.layer.client_count(), 1);
    h.run_until(ms(312_000));
    assert_eq!(
        h.events(),
        [
            TxEvent::Timeout(TxId::Client(tx)),
            TxEvent::Terminated(TxId::Client(tx))
        ]
    );
    // Both Timer C and the give-up after it count as timeouts in the metrics.
    assert_eq!(h.layer.stats().timeouts, 2);
    h.assert_empty();
}

#[test]
fn timer_c_leaves_timers_b_and_f_alone() {
    // Timer C concerns an INVITE in Proceeding only: with it configured, an INVITE that never
    // got a provisional and a non-INVITE still end at 64·T1 (B and F), in one step.
    let mut h = Harness::with(TimerConfig {
        timer_c: Some(Duration::from_secs(10)),
        ..TimerConfig::default()
    });
    let invite = h.send(outgoing("INVITE"), udp_peer());
    let options = h.send(outgoing("OPTIONS"), udp_peer());
    h.run_until(ms(31_999));
    assert!(h.events().is_empty());
    h.run_until(ms(32_000));
    let events = h.events();
    for tx in [TxId::Client(invite), TxId::Client(options)] {
        let mine: Vec<_> = events
            .iter()
            .filter(|e| matches!(e, TxEvent::Timeout(t) | TxEvent::Terminated(t) if *t == tx))
            .collect();
        assert_eq!(mine, [&TxEvent::Timeout(tx), &TxEvent::Terminated(tx)]);
    }
    h.assert_empty();
}

// ----- CANCEL (client side) --------------------------------------------------------------

#[test]
fn cancel_waits_for_a_provisional_then_goes_with_the_invite_branch() {
    let mut h = Harness::new();
    let tx = h.send(outgoing("INVITE"), udp_peer());
    let invite = h.layer.client_request(tx).unwrap().clone();
    h.drain_transmits();
    h.layer.cancel(h.now, tx).unwrap();
    // §9.1: no CANCEL before a provisional response.
    assert!(h.transmits().is_empty());
    h.feed(reply(&invite, 180, Some("b1")), udp_peer());
    let sent = h.transmits();
    let [Message::Request(cancel)] = &sent[..] else {
        panic!("expected the CANCEL, got {sent:?}")
    };
    assert_eq!(cancel.method, Method::Cancel);
    assert_eq!(cancel.uri, invite.uri);
    assert_eq!(
        cancel.headers.top_via().unwrap(),
        invite.headers.top_via().unwrap()
    );
    assert_eq!(cancel.headers.cseq().unwrap().seq, 1);
    assert_eq!(cancel.headers.cseq().unwrap().method, Method::Cancel);
    assert_eq!(cancel.headers.to().unwrap().tag(), None);
    assert_eq!(h.layer.client_count(), 2);
    // The 200 to the CANCEL is the layer's own business; the 487 reaches the user.
    h.events();
    h.feed(reply(cancel, 200, Some("b1")), udp_peer());
    assert!(h.events().is_empty());
    h.feed(reply(&invite, 487, Some("b1")), udp_peer());
    assert!(
        matches!(&h.events()[..], [TxEvent::Response { response, .. }] if response.status == 487)
    );
    assert_eq!(
        h.transmits().iter().map(method_of).collect::<Vec<_>>(),
        [Some(Method::Ack)]
    );
    h.run_until(ms(40_000));
    h.assert_empty();
}

#[test]
fn cancelled_invite_without_final_response_times_out_64_t1_after_the_cancel() {
    let mut h = Harness::new();
    let tx = h.send(outgoing("INVITE"), udp_peer());
    let invite = h.layer.client_request(tx).unwrap().clone();
    h.feed(reply(&invite, 180, Some("b1")), udp_peer());
    h.run_until(ms(60_000));
    h.layer.cancel(h.now, tx).unwrap();
    h.events();
    h.run_until(ms(60_000 + 31_999));
    assert_eq!(h.layer.client_state(tx), Some(ClientState::Proceeding));
    h.run_until(ms(92_000));
    let events = h.events();
    assert!(events.contains(&TxEvent::Timeout(TxId::Client(tx))));
    assert!(events.contains(&TxEvent::Terminated(TxId::Client(tx))));
    h.assert_empty();
}

#[test]
fn cancel_after_final_response_sends_nothing() {
    let mut h = Harness::new();
    let tx = h.send(outgoing("INVITE"), udp_peer());
    let invite = h.layer.client_request(tx).unwrap().clone();
    h.drain_transmits();
    h.feed(reply(&invite, 200, Some("b1")), udp_peer());
    h.layer.cancel(h.now, tx).unwrap();
    assert!(h.transmits().is_empty());
    let bye = h.send(outgoing("BYE"), udp_peer());
    assert_eq!(h.layer.cancel(h.now, bye), Err(TxError::NotAnInvite));
}

// ----- client non-INVITE -----------------------------------------------------------------

#[test]
fn client_non_invite_timer_e_caps_at_t2_and_timer_f_fires_at_64_t1() {
    let mut h = Harness::new();
    let tx = h.send(outgoing("OPTIONS"), udp_peer());
    let sent = h.run_until(ms(40_000));
    // T1, 2T1, 4T1, then every T2 (4 s) until F at 32 s.
    assert_eq!(
        times(&sent),
        [0, 500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500].map(ms)
    );
    assert_eq!(
        h.events(),
        [
            TxEvent::Timeout(TxId::Client(tx)),
            TxEvent::Terminated(TxId::Client(tx))
        ]
    );
    h.assert_empty();
}

#[test]
fn client_non_invite_retransmits_every_t2_once_proceeding() {
    let mut h = Harness::new();
    let tx = h.send(outgoing("BYE"), udp_peer());
    let request = h.layer.client_request(tx).unwrap().clone();
    h.drain_transmits();
    h.feed(reply(&request, 100, None), udp_peer());
    assert_eq!(h.layer.client_state(tx), Some(ClientState::Proceeding));
    // The pending Timer E (at T1) fires, then every T2.
    let sent = h.run_until(ms(13_000));
    assert_eq!(times(&sent), [500, 4500, 8500, 12500].map(ms));
}

#[test]
fn client_non_invite_final_then_timer_k_t4_on_udp() {
    let mut h = Harness::new();
    let tx = h.send(outgoing("BYE"), udp_peer());
    let request = h.layer.client_request(tx).unwrap().clone();
    h.drain_transmits();
    h.feed(reply(&request, 200, Some("b1")), udp_peer());
    assert_eq!(h.layer.client_state(tx), Some(ClientState::Completed));
    assert_eq!(h.events().len(), 1);
    // Retransmitted final absorbed; no retransmission of the request any more.
    h.feed(reply(&request, 200, Some("b1")), udp_peer());
    assert!(h.events().is_empty());
    let sent = h.run_until(T4 - ms(1));
    assert!(sent.is_empty());
    assert_eq!(h.layer.client_count(), 1);
    h.run_until(T4);
    assert_eq!(h.events(), [TxEvent::Terminated(TxId::Client(tx))]);
    h.assert_empty();
}

#[test]
fn client_non_invite_timer_k_is_zero_over_tcp() {
    let mut h = Harness::new();
    let tx = h.send(outgoing("BYE"), tcp_peer());
    let request = h.layer.client_request(tx).unwrap().clone();
    h.feed(reply(&request, 200, Some("b1")), tcp_peer());
    assert_eq!(h.events()[1], TxEvent::Terminated(TxId::Client(tx)));
    h.assert_empty();
}

#[test]
fn ack_is_refused_as_a_transaction_and_sent_stateless_with_a_fresh_branch() {
    let mut h = Harness::new();
    assert_eq!(
        h.layer.send_request(h.now, outgoing("ACK"), udp_peer()),
        Err(TxError::AckIsNotATransaction)
    );
    h.layer
        .send_stateless_request(outgoing("ACK"), udp_peer())
        .unwrap();
    let sent = h.transmits();
    let [Message::Request(ack)] = &sent[..] else {
        panic!("{sent:?}")
    };
    assert!(ack.headers.top_via().unwrap().has_rfc3261_branch());
    h.assert_empty();
}

// ----- server INVITE ---------------------------------------------------------------------

#[test]
fn server_invite_sends_100_at_once_and_absorbs_retransmissions() {
    let mut h = Harness::new();
    let invite = incoming("INVITE", "z9hG4bKinv1", 1);
    let tx = h.receive(invite.clone(), udp_peer());
    assert_eq!(
        h.transmits().iter().map(status_of).collect::<Vec<_>>(),
        [100]
    );
    h.feed(Message::Request(invite.clone()), udp_peer());
    // Not a new request: the last provisional is re-sent.
    assert!(h.events().is_empty());
    assert_eq!(
        h.transmits().iter().map(status_of).collect::<Vec<_>>(),
        [100]
    );
    let mut ringing = Response::to_request(&invite, 180, None);
    ringing
        .headers
        .set(HeaderName::To, "<sip:bob@10.0.0.1>;tag=t1");
    h.layer.send_response(h.now, tx, ringing).unwrap();
    h.transmits();
    h.feed(Message::Request(invite), udp_peer());
    assert_eq!(
        h.transmits().iter().map(status_of).collect::<Vec<_>>(),
        [180]
    );
    assert_eq!(h.layer.stats().absorbed, 2);
}

fn final_to(invite: &Request, status: u16) -> Response {
    let mut response = Response::to_request(invite, status, None);
    response
        .headers
        .set(HeaderName::To, "<sip:bob@10.0.0.1>;tag=t1");
    response
}

fn ack_for(invite: &Request, branch: &str) -> Request {
    let mut ack = incoming("ACK", branch, 1);
    ack.headers.set(HeaderName::To, "<sip:bob@10.0.0.1>;tag=t1");
    ack.headers
        .set(HeaderName::CallId, invite.headers.call_id().unwrap());
    ack
}

#[test]
fn server_invite_timer_g_doubles_to_t2_and_timer_h_fires_without_ack() {
    let mut h = Harness::new();
    let invite = incoming("INVITE", "z9hG4bKinv2", 1);
    let tx = h.receive(invite.clone(), udp_peer());
    h.drain_transmits();
    h.layer
        .send_response(h.now, tx, final_to(&invite, 486))
        .unwrap();
    assert_eq!(h.layer.server_state(tx), Some(ServerState::Completed));
    let sent = h.run_until(ms(40_000));
    // Sent at 0, then G at T1, 2T1, 4T1, capped at T2; H at 64·T1.
    assert_eq!(
        times(&sent),
        [0, 500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500].map(ms)
    );
    assert_eq!(
        h.events(),
        [
            TxEvent::Timeout(TxId::Server(tx)),
            TxEvent::Terminated(TxId::Server(tx))
        ]
    );
    h.assert_empty();
}

#[test]
fn server_invite_ack_for_non_2xx_confirms_and_timer_i_is_t4() {
    let mut h = Harness::new();
    let invite = incoming("INVITE", "z9hG4bKinv3", 1);
    let tx = h.receive(invite.clone(), udp_peer());
    h.layer
        .send_response(h.now, tx, final_to(&invite, 480))
        .unwrap();
    h.run_until(ms(600));
    h.drain_transmits();
    // The ACK for a non-2xx carries the INVITE's branch; it is absorbed, never passed up.
    h.feed(
        Message::Request(ack_for(&invite, "z9hG4bKinv3")),
        udp_peer(),
    );
    assert_eq!(h.layer.server_state(tx), Some(ServerState::Confirmed));
    assert!(h.events().is_empty());
    let at = h.elapsed();
    // G stopped; ACK copies absorbed; Timer I = T4.
    h.feed(
        Message::Request(ack_for(&invite, "z9hG4bKinv3")),
        udp_peer(),
    );
    assert!(h.run_until(at + T4 - ms(1)).is_empty());
    assert_eq!(h.layer.server_count(), 1);
    h.run_until(at + T4);
    assert_eq!(h.events(), [TxEvent::Terminated(TxId::Server(tx))]);
    h.assert_empty();
}

#[test]
fn server_invite_over_tcp_has_no_timer_g_and_ends_on_ack() {
    let mut h = Harness::new();
    let mut invite = incoming("INVITE", "z9hG4bKinv4", 1);
    invite.headers.set(
        HeaderName::Via,
        "SIP/2.0/TCP 10.0.0.2:40000;branch=z9hG4bKinv4",
    );
    let tx = h.receive(invite.clone(), tcp_peer());
    h.layer
        .send_response(h.now, tx, final_to(&invite, 486))
        .unwrap();
    let sent = h.run_until(ms(10_000));
    assert_eq!(times(&sent), [ms(0), ms(0)]);
    assert!(sent.iter().all(|(_, t)| t.to == tcp_peer()));
    let mut ack = ack_for(&invite, "z9hG4bKinv4");
    ack.headers.set(
        HeaderName::Via,
        "SIP/2.0/TCP 10.0.0.2:40000;branch=z9hG4bKinv4",
    );
    h.feed(Message::Request(ack), tcp_peer());
    assert_eq!(h.events(), [TxEvent::Terminated(TxId::Server(tx))]);
    h.assert_empty();
}

#[test]
fn server_invite_2xx_is_retransmitted_until_the_ack_then_timer_l_ends_it() {
    let mut h = Harness::new();
    let invite = incoming("INVITE", "z9hG4bKinv5", 1);
    let tx = h.receive(invite.clone(), udp_peer());
    h.drain_transmits();
    h.layer
        .send_response(h.now, tx, final_to(&invite, 200))
        .unwrap();
    assert_eq!(h.layer.server_state(tx), Some(ServerState::Accepted));
    let sent = h.run_until(ms(8_000));
    assert_eq!(times(&sent), [0, 500, 1500, 3500, 7500].map(ms));
    // INVITE copies are absorbed in Accepted (RFC 6026).
    h.feed(Message::Request(invite.clone()), udp_peer());
    assert!(h.events().is_empty());
    assert!(h.transmits().is_empty());
    // The ACK for a 2xx has its own branch and is matched by dialog.
    h.feed(
        Message::Request(ack_for(&invite, "z9hG4bKack5")),
        udp_peer(),
    );
    assert!(matches!(&h.events()[..], [TxEvent::Ack { tx: Some(t), .. }] if *t == tx));
    // A retransmitted ACK is absorbed.
    h.feed(
        Message::Request(ack_for(&invite, "z9hG4bKack5")),
        udp_peer(),
    );
    assert!(h.events().is_empty());
    assert!(h.run_until(ms(31_999)).is_empty());
    assert_eq!(h.layer.server_count(), 1);
    h.run_until(ms(32_000));
    // Timer L; no Timeout because the ACK came.
    assert_eq!(h.events(), [TxEvent::Terminated(TxId::Server(tx))]);
    h.assert_empty();
}

#[test]
fn server_invite_2xx_never_acked_reports_timeout_at_timer_l() {
    let mut h = Harness::new();
    let invite = incoming("INVITE", "z9hG4bKinv6", 1);
    let tx = h.receive(invite.clone(), udp_peer());
    h.layer
        .send_response(h.now, tx, final_to(&invite, 200))
        .unwrap();
    h.run_until(ms(32_000));
    assert_eq!(
        h.events(),
        [
            TxEvent::Timeout(TxId::Server(tx)),
            TxEvent::Terminated(TxId::Server(tx))
        ]
    );
    // A late ACK is now stray and goes to the user without a transaction.
    h.feed(
        Message::Request(ack_for(&invite, "z9hG4bKlate")),
        udp_peer(),
    );
    assert!(matches!(&h.events()[..], [TxEvent::Ack { tx: None, .. }]));
    h.assert_empty();
}

#[test]
fn server_invite_refuses_responses_out_of_state() {
    let mut h = Harness::new();
    let invite = incoming("INVITE", "z9hG4bKinv7", 1);
    let tx = h.receive(invite.clone(), udp_peer());
    h.layer
        .send_response(h.now, tx, final_to(&invite, 486))
        .unwrap();
    // The error names the state, so the log says why the user's response was refused.
    assert_eq!(
        h.layer.send_response(h.now, tx, final_to(&invite, 200)),
        Err(TxError::InvalidState {
            status: 200,
            state: "Completed"
        })
    );
    h.feed(
        Message::Request(ack_for(&invite, "z9hG4bKinv7")),
        udp_peer(),
    );
    assert_eq!(
        h.layer.send_response(h.now, tx, final_to(&invite, 180)),
        Err(TxError::InvalidState {
            status: 180,
            state: "Confirmed"
        })
    );
    assert_eq!(
        h.layer
            .send_response(h.now, ServerTxId(999), final_to(&invite, 200)),
        Err(TxError::UnknownTransaction)
    );
}

#[test]
fn cancel_finds_the_invite_it_cancels() {
    let mut h = Harness::new();
    let invite = incoming("INVITE", "z9hG4bKinv8", 1);
    let invite_tx = h.receive(invite, udp_peer());
    let cancel = incoming("CANCEL", "z9hG4bKinv8", 1);
    h.feed(Message::Request(cancel), udp_peer());
    let events = h.events();
    let [TxEvent::Request {
        tx,
        cancels,
        request,
        ..
    }] = &events[..]
    else {
        panic!("{events:?}")
    };
    assert_eq!(request.method, Method::Cancel);
    assert_ne!(*tx, invite_tx);
    assert_eq!(*cancels, Some(invite_tx));
    // A CANCEL with another branch matches nothing (the user answers 481).
    h.feed(
        Message::Request(incoming("CANCEL", "z9hG4bKother", 1)),
        udp_peer(),
    );
    assert!(matches!(
        &h.events()[..],
        [TxEvent::Request { cancels: None, .. }]
    ));
}

#[test]
fn rfc2543_requests_are_matched_without_a_magic_cookie() {
    let mut h = Harness::new();
    let invite = incoming("INVITE", "oldbranch1", 1);
    let tx = h.receive(invite.clone(), udp_peer());
    h.transmits();
    h.feed(Message::Request(invite.clone()), udp_peer());
    assert!(h.events().is_empty(), "retransmission absorbed");
    h.layer
        .send_response(h.now, tx, final_to(&invite, 486))
        .unwrap();
    // The ACK has a To tag and the same top Via; it must find the INVITE transaction.
    h.feed(Message::Request(ack_for(&invite, "oldbranch1")), udp_peer());
    assert_eq!(h.layer.server_state(tx), Some(ServerState::Confirmed));
    assert!(h.events().is_empty());
    // A different CSeq is a different transaction.
    h.receive(incoming("INVITE", "oldbranch1", 2), udp_peer());
    assert_eq!(h.layer.server_count(), 2);
}

// ----- server non-INVITE -----------------------------------------------------------------

#[test]
fn server_non_invite_absorbs_then_resends_last_response_and_timer_j_is_64_t1() {
    let mut h = Harness::new();
    let bye = incoming("BYE", "z9hG4bKbye1", 2);
    let tx = h.receive(bye.clone(), udp_peer());
    // Retransmission before any response: absorbed silently.
    h.feed(Message::Request(bye.clone()), udp_peer());
    assert!(h.transmits().is_empty());
    assert!(h.events().is_empty());
    h.layer
        .send_response(h.now, tx, Response::to_request(&bye, 200, None))
        .unwrap();
    assert_eq!(h.layer.server_state(tx), Some(ServerState::Completed));
    h.transmits();
    h.feed(Message::Request(bye.clone()), udp_peer());
    assert_eq!(
        h.transmits().iter().map(status_of).collect::<Vec<_>>(),
        [200]
    );
    assert!(h.run_until(ms(31_999)).is_empty());
    assert_eq!(h.layer.server_count(), 1);
    h.run_until(ms(32_000));
    assert_eq!(h.events(), [TxEvent::Terminated(TxId::Server(tx))]);
    h.assert_empty();
}

#[test]
fn server_non_invite_timer_j_is_zero_over_tcp() {
    let mut h = Harness::new();
    let bye = incoming("BYE", "z9hG4bKbye2", 2);
    let tx = h.receive(bye.clone(), tcp_peer());
    h.layer
        .send_response(h.now, tx, Response::to_request(&bye, 200, None))
        .unwrap();
    assert_eq!(h.events(), [TxEvent::Terminated(TxId::Server(tx))]);
    assert_eq!(h.transmits().len(), 1);
    h.assert_empty();
}

#[test]
fn server_non_invite_unanswered_gets_500_after_64_t1() {
    let mut h = Harness::new();
    let tx = h.receive(incoming("INFO", "z9hG4bKinfo1", 3), udp_peer());
    let sent = h.run_until(ms(32_000));
    // The user has the whole 64·T1 to answer: the 500 goes out then, and not before.
    assert_eq!(times(&sent), [ms(32_000)]);
    let response = Message::parse(&sent[0].1.bytes, &ParseLimits::default()).unwrap();
    assert_eq!(status_of(&response), 500);
    assert_eq!(
        h.events(),
        [
            TxEvent::Timeout(TxId::Server(tx)),
            TxEvent::Terminated(TxId::Server(tx))
        ]
    );
    h.assert_empty();
}

#[test]
fn responses_go_to_rport_source_or_sent_by_port() {
    let mut h = Harness::new();
    let source = Peer::udp("10.0.0.2:7777".parse().unwrap());
    // No rport: to the source IP and the sent-by port (5062).
    let tx = h.receive(incoming("OPTIONS", "z9hG4bKo1", 1), source);
    let req = incoming("OPTIONS", "z9hG4bKo1", 1);
    h.layer
        .send_response(h.now, tx, Response::to_request(&req, 200, None))
        .unwrap();
    assert_eq!(
        h.layer.poll_transmit().unwrap().to.addr,
        "10.0.0.2:5062".parse().unwrap()
    );
    // rport (as stamped by the transport): back to the source port.
    let mut with_rport = incoming("OPTIONS", "z9hG4bKo2", 1);
    with_rport.headers.set(
        HeaderName::Via,
        "SIP/2.0/UDP 10.0.0.2:5062;branch=z9hG4bKo2;rport=7777;received=10.0.0.2",
    );
    let tx = h.receive(with_rport.clone(), source);
    h.layer
        .send_response(h.now, tx, Response::to_request(&with_rport, 200, None))
        .unwrap();
    assert_eq!(h.layer.poll_transmit().unwrap().to, source);
}

// ----- failures and bookkeeping ----------------------------------------------------------

#[test]
fn a_failed_send_ends_only_the_transaction_that_made_it() {
    let mut h = Harness::new();
    let a = h.send(outgoing("INVITE"), udp_peer());
    let mut options = outgoing("OPTIONS");
    options.headers.set(HeaderName::CallId, "c2@10.0.0.1");
    let b = h.send(options, udp_peer());
    let s = h.receive(incoming("INVITE", "z9hG4bKs1", 1), udp_peer());
    let origins: Vec<_> = h
        .drain_transmits()
        .into_iter()
        .map(|(_, t)| t.origin)
        .collect();
    assert_eq!(
        origins,
        [
            Some(TxId::Client(a)),
            Some(TxId::Client(b)),
            Some(TxId::Server(s))
        ],
        "every transmit names its transaction"
    );
    h.events();

    h.layer.on_send_failed(h.now, TxId::Client(a));
    assert_eq!(
        h.events(),
        [
            TxEvent::TransportError(TxId::Client(a)),
            TxEvent::Terminated(TxId::Client(a))
        ]
    );
    // The same peer, untouched: the other client transaction still retransmits, the server
    // transaction still answers.
    assert_eq!(h.layer.client_state(b), Some(ClientState::Trying));
    assert_eq!(h.layer.server_state(s), Some(ServerState::Proceeding));
    let resent = h.run_until(ms(500));
    assert!(resent
        .iter()
        .any(|(_, t)| t.origin == Some(TxId::Client(b))));

    h.layer.on_send_failed(h.now, TxId::Server(s));
    assert_eq!(
        h.events(),
        [
            TxEvent::TransportError(TxId::Server(s)),
            TxEvent::Terminated(TxId::Server(s))
        ]
    );
    assert_eq!(h.layer.client_state(b), Some(ClientState::Trying));
    // A report for a transaction that has ended already changes nothing.
    h.layer.on_send_failed(h.now, TxId::Client(a));
    assert!(h.events().is_empty());
    assert_eq!(h.layer.client_count(), 1);
    assert_eq!(h.layer.stats().transport_errors, 2);
}

#[test]
fn a_failed_ack_does_not_fail_a_transaction_that_has_its_final() {
    let mut h = Harness::new();
    let tx = h.send(outgoing("INVITE"), udp_peer());
    let invite = h.layer.client_request(tx).unwrap().clone();
    h.drain_transmits();
    h.feed(reply(&invite, 486, Some("b1")), udp_peer());
    h.events();
    let ack = h.layer.poll_transmit().unwrap();
    assert_eq!(ack.origin, Some(TxId::Client(tx)));
    h.layer.on_send_failed(h.now, TxId::Client(tx));
    // The user has its final response; the ACK goes again with the next copy of the 486.
    assert!(h.events().is_empty());
    assert_eq!(h.layer.client_state(tx), Some(ClientState::Completed));
    h.feed(reply(&invite, 486, Some("b1")), udp_peer());
    assert_eq!(h.transmits().len(), 1, "ACK re-sent");
}

#[test]
fn a_response_from_another_ip_is_dropped_and_counted() {
    let mut h = Harness::new();
    let tx = h.send(outgoing("INVITE"), udp_peer());
    let invite = h.layer.client_request(tx).unwrap().clone();
    h.transmits();
    h.events();
    let intruder = Peer::udp("10.0.0.66:5062".parse().unwrap());
    for status in [180, 486, 200] {
        assert_eq!(
            h.layer
                .handle_message(h.now, reply(&invite, status, Some("x1")), intruder),
            Err(TxError::WrongSource)
        );
    }
    // Nothing passed up, nothing sent (no ACK for the 486), the INVITE still retransmits.
    assert!(h.events().is_empty());
    assert!(h.transmits().is_empty());
    assert_eq!(h.layer.client_state(tx), Some(ClientState::Calling));
    assert_eq!(h.layer.stats().wrong_source_responses, 3);
    assert_eq!(h.layer.stats().stray_responses, 0);
    assert_eq!(h.run_until(ms(500)).len(), 1, "Timer A still runs");

    // The peer's own IP (any port, any transport) completes it.
    let same_host = Peer::udp("10.0.0.2:6000".parse().unwrap());
    h.feed(reply(&invite, 486, Some("b1")), same_host);
    assert!(matches!(
        &h.events()[..],
        [TxEvent::Response { tx: t, response, .. }] if *t == tx && response.status == 486
    ));
    assert_eq!(h.layer.client_state(tx), Some(ClientState::Completed));
    assert_eq!(h.transmits().len(), 1, "the ACK");
}

#[test]
fn nothing_is_ever_sent_in_answer_to_a_stray_response() {
    // A response matching no transaction is passed up as stray and nothing more: no ACK, no
    // error response (answering responses would make us a reflector).
    let mut h = Harness::new();
    let request = incoming("INVITE", "z9hG4bKnotours", 1);
    for status in [100, 180, 200, 486, 503] {
        h.feed(reply(&request, status, Some("t1")), udp_peer());
    }
    assert!(h.transmits().is_empty());
    assert_eq!(h.layer.stats().stray_responses, 5);
    assert_eq!(h.layer.client_count(), 0);
}

/// An INVITE whose body makes it `size` bytes or a little more.
fn large_invite(size: usize) -> Request {
    let mut request = outgoing("INVITE");
    request.body = bytes::Bytes::from(vec![b'a'; size]);
    request
        .headers
        .set(HeaderName::ContentType, "application/sdp");
    request
}

fn top_via_of(t: &Transmit) -> String {
    match Message::parse(
        &t.bytes,
        &ParseLimits {
            max_message_size: 200_000,
            ..ParseLimits::default()
        },
    )
    .unwrap()
    {
        Message::Request(r) => r.headers.get(&HeaderName::Via).unwrap().to_owned(),
        Message::Response(_) => panic!("not a request"),
    }
}

#[test]
fn a_large_request_goes_over_tcp_and_back_to_udp_if_tcp_fails() {
    let mut h = Harness::new();
    let small = h.send(outgoing("OPTIONS"), udp_peer());
    let sent = h.drain_transmits();
    assert_eq!(sent[0].1.to, udp_peer(), "small requests stay on UDP");
    let tx = h.send(large_invite(1300), udp_peer());
    let sent = h.drain_transmits();
    let [(_, first)] = &sent[..] else {
        panic!("one transmit expected, got {sent:?}");
    };
    // §18.1.1: TCP, and the top Via says so.
    assert_eq!(first.to, Peer::tcp(udp_peer().addr, None));
    assert!(
        top_via_of(first).starts_with("SIP/2.0/TCP "),
        "{}",
        top_via_of(first)
    );
    assert_eq!(h.layer.stats().upgraded_to_tcp, 1);
    let branch = |t: &Transmit| {
        let via = top_via_of(t);
        via.split("branch=")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned()
    };
    let original_branch = branch(first);
    // No Timer A over TCP.
    assert!(h
        .run_until(ms(2_000))
        .iter()
        .all(|(_, t)| t.origin != Some(TxId::Client(tx))));

    // The connection is refused: the same request, same branch, over UDP, with Timer A.
    h.layer.on_send_failed(h.now, TxId::Client(tx));
    assert!(h.events().is_empty(), "not a failure yet");
    let sent = h.drain_transmits();
    let [(_, retry)] = &sent[..] else {
        panic!("one transmit expected, got {sent:?}");
    };
    assert_eq!(retry.to, udp_peer());
    assert!(top_via_of(retry).starts_with("SIP/2.0/UDP "));
    assert_eq!(branch(retry), original_branch);
    assert_eq!(h.layer.stats().udp_fallbacks, 1);
    let resent = h.run_until(ms(2_500));
    assert!(
        resent
            .iter()
            .any(|(_, t)| t.origin == Some(TxId::Client(tx)) && t.to == udp_peer()),
        "Timer A runs now"
    );
    // A failure over UDP too is final.
    h.layer.on_send_failed(h.now, TxId::Client(tx));
    assert_eq!(
        h.events(),
        [
            TxEvent::TransportError(TxId::Client(tx)),
            TxEvent::Terminated(TxId::Client(tx))
        ]
    );
    assert!(h.layer.client_state(small).is_some());
}

#[test]
fn a_request_too_large_for_any_datagram_fails_when_tcp_does() {
    let mut h = Harness::new();
    let tx = h.send(large_invite(MAX_UDP_PAYLOAD), udp_peer());
    let sent = h.drain_transmits();
    assert_eq!(sent[0].1.to, Peer::tcp(udp_peer().addr, None));
    h.layer.on_send_failed(h.now, TxId::Client(tx));
    assert_eq!(
        h.events(),
        [
            TxEvent::TransportError(TxId::Client(tx)),
            TxEvent::Terminated(TxId::Client(tx))
        ]
    );
    assert!(h.drain_transmits().is_empty(), "no UDP retry");
}

#[test]
fn responses_keep_the_transport_of_their_request_whatever_their_size() {
    // §18.2.2 has no size rule for responses: a response to a UDP request goes back over UDP
    // (the transport fails only datagrams above 65507 bytes, for this transaction).
    let mut h = Harness::new();
    let request = incoming("OPTIONS", "z9hG4bKbig", 1);
    let tx = h.receive(request.clone(), udp_peer());
    let mut ok = Response::to_request(&request, 200, None);
    ok.body = bytes::Bytes::from(vec![b'a'; 4000]);
    h.layer.send_response(h.now, tx, ok).unwrap();
    let sent = h.drain_transmits();
    assert_eq!(sent[0].1.to, udp_peer());
    assert_eq!(sent[0].1.origin, Some(TxId::Server(tx)));
}

#[test]
fn stray_responses_and_unkeyable_messages_are_reported_not_fatal() {
    let mut h = Harness::new();
    let request = incoming("OPTIONS", "z9hG4bKnobody", 1);
    h.feed(reply(&request, 200, None), udp_peer());
    assert!(matches!(&h.events()[..], [TxEvent::StrayResponse { .. }]));
    let mut no_branch = Response::to_request(&request, 200, None);
    no_branch
        .headers
        .set(HeaderName::Via, "SIP/2.0/UDP 10.0.0.2:5062");
    assert!(h
        .layer
        .handle_message(h.now, Message::Response(no_branch), udp_peer())
        .is_err());
    assert_eq!(h.layer.stats().unmatchable, 1);
    let mut bad_via = incoming("OPTIONS", "z9hG4bKx", 1);
    bad_via.headers.set(HeaderName::Via, "garbage");
    assert!(h
        .layer
        .handle_message(h.now, Message::Request(bad_via), udp_peer())
        .is_err());
    h.assert_empty();
}

#[test]
fn duplicate_branch_is_refused() {
    let mut h = Harness::new();
    let mut request = outgoing("OPTIONS");
    request.headers.push(
        HeaderName::Via,
        "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKdup",
    );
    h.send(request.clone(), udp_peer());
    assert_eq!(
        h.layer.send_request(h.now, request.clone(), udp_peer()),
        Err(TxError::DuplicateTransaction)
    );
    request
        .headers
        .set(HeaderName::Via, "SIP/2.0/UDP 10.0.0.1:5060;branch=old");
    assert_eq!(
        h.layer.send_request(h.now, request, udp_peer()),
        Err(TxError::NoBranch)
    );
}

#[test]
fn thousands_of_transactions_end_and_leave_no_timer_behind() {
    let mut h = Harness::new();
    for i in 0..2_000u32 {
        let invite = incoming("INVITE", &format!("z9hG4bKmany{i}"), i + 1);
        let tx = h.receive(invite.clone(), udp_peer());
        let status = if i % 2 == 0 { 200 } else { 486 };
        h.layer
            .send_response(h.now, tx, final_to(&invite, status))
            .unwrap();
        let c = h.send(outgoing("OPTIONS"), udp_peer());
        let sent = h.layer.client_request(c).unwrap().clone();
        h.feed(reply(&sent, 200, Some("x")), udp_peer());
        h.events();
    }
    assert_eq!(h.layer.server_count(), 2_000);
    // Every answered INVITE holds a retransmission and a timeout deadline.
    assert!(
        h.layer.timer_entries() >= 4_000,
        "{}",
        h.layer.timer_entries()
    );
    h.run_until(ms(100_000));
    h.events();
    h.assert_empty();
    assert_eq!(h.layer.timer_entries(), 0);
}

#[test]
fn client_stats_count_retransmissions_absorbed_finals_timeouts_strays_and_unmatchables() {
    let mut h = Harness::new();
    let options = h.send(outgoing("OPTIONS"), udp_peer());
    let options_request = h.layer.client_request(options).unwrap().clone();
    let bye = h.send(outgoing("BYE"), tcp_peer());
    // Timer E at 500 and 1500 ms; nothing is re-sent over TCP.
    h.run_until(ms(1_600));
    h.feed(reply(&options_request, 200, Some("b1")), udp_peer());
    // A retransmitted final of a non-INVITE is absorbed.
    h.feed(reply(&options_request, 200, Some("b1")), udp_peer());
    let invite = h.send(outgoing("INVITE"), udp_peer());
    let invite_request = h.layer.client_request(invite).unwrap().clone();
    h.feed(reply(&invite_request, 486, Some("b1")), udp_peer());
    // In Completed, a 486 copy (ACKed again) and a late provisional are both absorbed.
    h.feed(reply(&invite_request, 486, Some("b1")), udp_peer());
    h.feed(reply(&invite_request, 180, Some("b1")), udp_peer());
    // A response to nothing we sent, and messages that cannot be keyed.
    h.feed(
        reply(&incoming("OPTIONS", "z9hG4bKnobody", 1), 200, None),
        udp_peer(),
    );
    let mut no_branch = Response::to_request(&options_request, 200, None);
    no_branch
        .headers
        .set(HeaderName::Via, "SIP/2.0/UDP 10.0.0.1:5060");
    let mut bad_via = incoming("OPTIONS", "z9hG4bKx", 1);
    bad_via.headers.set(HeaderName::Via, "garbage");
    for message in [Message::Response(no_branch), Message::Request(bad_via)] {
        assert!(h.layer.handle_message(h.now, message, udp_peer()).is_err());
    }
    // The BYE over TCP gets no answer: Timer F.
    h.run_until(ms(40_000));
    assert!(h.events().contains(&TxEvent::Timeout(TxId::Client(bye))));
    assert_eq!(
        h.layer.stats(),
        &TransactionStats {
            retransmissions: 2,
            absorbed: 3,
            timeouts: 1,
            stray_responses: 1,
            stray_acks: 0,
            unmatchable: 2,
            ..TransactionStats::default()
        }
    );
    h.assert_empty();
}

#[test]
fn server_stats_count_retransmissions_absorbed_copies_timeouts_and_stray_acks() {
    let mut h = Harness::new();
    // Rejected, then ACKed after one Timer G retransmission; the ACK is retransmitted.
    let rejected = incoming("INVITE", "z9hG4bKst1", 1);
    let rejected_tx = h.receive(rejected.clone(), udp_peer());
    h.feed(Message::Request(rejected.clone()), udp_peer());
    h.layer
        .send_response(h.now, rejected_tx, final_to(&rejected, 486))
        .unwrap();
    // Accepted, then ACKed after one 2xx retransmission; the ACK is retransmitted.
    let mut accepted = incoming("INVITE", "z9hG4bKst2", 1);
    accepted
        .headers
        .set(HeaderName::CallId, "accepted@10.0.0.2");
    let accepted_tx = h.receive(accepted.clone(), udp_peer());
    h.layer
        .send_response(h.now, accepted_tx, final_to(&accepted, 200))
        .unwrap();
    // Rejected over TCP and never ACKed: Timer H.
    let mut unacked = incoming("INVITE", "z9hG4bKst3", 1);
    unacked.headers.set(
        HeaderName::Via,
        "SIP/2.0/TCP 10.0.0.2:40000;branch=z9hG4bKst3",
    );
    let unacked_tx = h.receive(unacked.clone(), tcp_peer());
    h.layer
        .send_response(h.now, unacked_tx, final_to(&unacked, 486))
        .unwrap();
    // Accepted and never ACKed: ten 2xx retransmissions, then Timer L reports it.
    let mut lost = incoming("INVITE", "z9hG4bKst4", 2);
    lost.headers.set(HeaderName::CallId, "lost@10.0.0.2");
    let lost_tx = h.receive(lost.clone(), udp_peer());
    h.layer
        .send_response(h.now, lost_tx, final_to(&lost, 200))
        .unwrap();
    // Never answered by the user: the 500 guard.
    h.receive(incoming("INFO", "z9hG4bKst5", 3), udp_peer());
    // An ACK for no transaction at all.
    let mut stray = ack_for(&accepted, "z9hG4bKst6");
    stray.headers.set(HeaderName::CallId, "nobody@10.0.0.2");
    h.feed(Message::Request(stray), udp_peer());

    h.run_until(ms(600));
    for _ in 0..2 {
        h.feed(
            Message::Request(ack_for(&rejected, "z9hG4bKst1")),
            udp_peer(),
        );
        h.feed(
            Message::Request(ack_for(&accepted, "z9hG4bKst2ack")),
            udp_peer(),
        );
    }
    h.run_until(ms(40_000));
    assert_eq!(
        h.layer.stats(),
        &TransactionStats {
            // G once, the accepted 2xx once, the lost 2xx at 0.5, 1.5, 3.5, 7.5, then every 4 s.
            retransmissions: 12,
            // The INVITE copy and one copy of each ACK.
            absorbed: 3,
            // H, L without ACK, the unanswered INFO.
            timeouts: 3,
            stray_responses: 0,
            stray_acks: 1,
            unmatchable: 0,
            ..TransactionStats::default()
        }
    );
    h.assert_empty();
}

#[test]
fn second_cancel_neither_sends_nor_postpones_the_give_up() {
    let mut h = Harness::new();
    let tx = h.send(outgoing("INVITE"), tcp_peer());
    let invite = h.layer.client_request(tx).unwrap().clone();
    h.feed(reply(&invite, 180, Some("b1")), tcp_peer());
    h.transmits();
    h.layer.cancel(h.now, tx).unwrap();
    assert_eq!(
        h.transmits().iter().map(method_of).collect::<Vec<_>>(),
        [Some(Method::Cancel)]
    );
    h.run_until(ms(10_000));
    h.layer.cancel(h.now, tx).unwrap();
    assert!(h.transmits().is_empty());
    h.events();
    // Still 64·T1 after the first CANCEL.
    h.run_until(ms(32_000));
    assert!(h.events().contains(&TxEvent::Timeout(TxId::Client(tx))));
    assert_eq!(h.layer.client_state(tx), None);
}

#[test]
fn rfc2543_ack_for_2xx_matches_the_accepted_invite() {
    // A peer without RFC 3261 branches sends the ACK for our 2xx with the INVITE's Via: it
    // keys like the INVITE and must stop the 2xx retransmissions there.
    let mut h = Harness::new();
    let invite = incoming("INVITE", "oldbranch2", 1);
    let tx = h.receive(invite.clone(), udp_peer());
    h.layer
        .send_response(h.now, tx, final_to(&invite, 200))
        .unwrap();
    h.transmits();
    h.feed(Message::Request(ack_for(&invite, "oldbranch2")), udp_peer());
    assert!(matches!(&h.events()[..], [TxEvent::Ack { tx: Some(t), .. }] if *t == tx));
    assert!(
        h.run_until(ms(31_999)).is_empty(),
        "2xx re-sent after its ACK"
    );
    h.run_until(ms(32_000));
    assert_eq!(h.events(), [TxEvent::Terminated(TxId::Server(tx))]);
    h.assert_empty();
}

#[test]
fn transport_error_is_not_reported_for_the_layers_own_cancel() {
    let mut h = Harness::new();
    let tx = h.send(outgoing("INVITE"), udp_peer());
    let invite = h.layer.client_request(tx).unwrap().clone();
    h.feed(reply(&invite, 180, Some("b1")), udp_peer());
    h.drain_transmits();
    h.layer.cancel(h.now, tx).unwrap();
    assert_eq!(h.layer.client_count(), 2, "the INVITE and its CANCEL");
    let cancel = h.layer.poll_transmit().unwrap().origin.unwrap();
    assert_ne!(cancel, TxId::Client(tx));
    h.events();
    h.layer.on_send_failed(h.now, cancel);
    // The CANCEL ends silently; the INVITE it was for is not touched.
    assert!(h.events().is_empty());
    assert_eq!(h.layer.client_count(), 1);
    h.layer.on_send_failed(h.now, TxId::Client(tx));
    assert_eq!(
        h.events(),
        [
            TxEvent::TransportError(TxId::Client(tx)),
            TxEvent::Terminated(TxId::Client(tx))
        ]
    );
    h.assert_empty();
}

#[test]
fn ack_for_2xx_finds_the_newer_twin_after_the_older_one_ends() {
    // Two INVITEs with the same Call-ID, From tag and CSeq but different branches (a merged
    // request), both answered 2xx: the ACK is matched by those dialog fields, so the newer
    // transaction owns them. When the older one's Timer L ends it, the newer one's ACK must
    // still find it (it used to be reported stray while the 2xx ran on into Timer L).
    let mut h = Harness::new();
    let older = incoming("INVITE", "z9hG4bKtwin1", 1);
    let older_tx = h.receive(older.clone(), udp_peer());
    h.layer
        .send_response(h.now, older_tx, final_to(&older, 200))
        .unwrap();
    h.run_until(ms(1_000));
    let newer = incoming("INVITE", "z9hG4bKtwin2", 1);
    let newer_tx = h.receive(newer.clone(), udp_peer());
    h.layer
        .send_response(h.now, newer_tx, final_to(&newer, 200))
        .unwrap();
    h.run_until(ms(32_000));
    assert_eq!(
        h.events(),
        [
            TxEvent::Timeout(TxId::Server(older_tx)),
            TxEvent::Terminated(TxId::Server(older_tx))
        ]
    );
    h.feed(
        Message::Request(ack_for(&newer, "z9hG4bKtwinack")),
        udp_peer(),
    );
    assert!(
        matches!(&h.events()[..], [TxEvent::Ack { tx: Some(t), .. }] if *t == newer_tx),
        "the newer transaction's ACK went astray"
    );
    h.run_until(ms(33_000));
    assert_eq!(h.events(), [TxEvent::Terminated(TxId::Server(newer_tx))]);
    h.assert_empty();
}

#[test]
fn stateless_answers_hold_nothing_and_copies_of_live_requests_are_recognised() {
    let mut h = Harness::new();
    let invite = incoming("INVITE", "z9hG4bKsl1", 1);
    assert!(!h.layer.has_server_transaction(&invite));
    let response = Response::to_request(&invite, 503, None);
    h.layer
        .send_stateless_response(&response, udp_peer())
        .unwrap();
    let sent: Vec<Transmit> = std::iter::from_fn(|| h.layer.poll_transmit()).collect();
    assert_eq!(sent.len(), 1);
    assert_eq!((h.layer.client_count(), h.layer.server_count()), (0, 0));
    assert_eq!(h.layer.poll_timeout(), None, "nothing to retransmit");
    assert_eq!(h.layer.stats().stateless_responses, 1);
    // Once a transaction exists, its copies (and its ACK) are the layer's.
    h.layer
        .handle_message(h.now, Message::Request(invite.clone()), udp_peer())
        .unwrap();
    assert!(h.layer.has_server_transaction(&invite));
}

/// A stopping endpoint waits for the server transactions that still owe their peer an answer
/// or a retransmission until an ACK, not for those that only absorb copies.
#[test]
fn server_transactions_owe_their_peer_until_answered_or_acked() {
    let mut h = Harness::new();
    // A non-INVITE owes its answer; once answered it only absorbs copies (Timer J).
    let options = incoming("OPTIONS", "z9hG4bKopt9", 1);
    let opt = h.receive(options.clone(), udp_peer());
    assert_eq!(h.layer.server_owing_count(), 1);
    h.layer
        .send_response(h.now, opt, final_to(&options, 200))
        .unwrap();
    assert_eq!(h.layer.server_state(opt), Some(ServerState::Completed));
    assert_eq!(
        (h.layer.server_count(), h.layer.server_owing_count()),
        (1, 0)
    );
    // An INVITE refused owes the retransmissions of its final until the ACK (then Timer I).
    let refused = incoming("INVITE", "z9hG4bKinv9", 1);
    let inv = h.receive(refused.clone(), udp_peer());
    h.layer
        .send_response(h.now, inv, final_to(&refused, 486))
        .unwrap();
    assert_eq!(h.layer.server_owing_count(), 1);
    h.feed(
        Message::Request(ack_for(&refused, "z9hG4bKinv9")),
        udp_peer(),
    );
    assert_eq!(h.layer.server_state(inv), Some(ServerState::Confirmed));
    assert_eq!(h.layer.server_owing_count(), 0);
    // An INVITE accepted owes its 2xx's retransmissions until the ACK (then Timer L).
    let accepted = incoming("INVITE", "z9hG4bKinv10", 1);
    let ok = h.receive(accepted.clone(), udp_peer());
    h.layer
        .send_response(h.now, ok, final_to(&accepted, 200))
        .unwrap();
    assert_eq!(h.layer.server_owing_count(), 1);
    h.feed(
        Message::Request(ack_for(&accepted, "z9hG4bKack10")),
        udp_peer(),
    );
    assert_eq!(h.layer.server_state(ok), Some(ServerState::Accepted));
    assert_eq!(
        (h.layer.server_count(), h.layer.server_owing_count()),
        (3, 0)
    );
    h.drain_transmits();
    h.events();
}
