//! A client transaction and a server transaction talking over real UDP and TCP sockets on
//! 127.0.0.1: two endpoints, each a [`SipTransport`] plus its own [`TransactionLayer`], pumped
//! by a small tokio driver with the real clock. Timers are shortened (T1 = 50 ms) so that every
//! scenario, Timer F and Timers L/M included, ends within a few seconds.
//!
//! Nothing sleeps to wait for something: every wait is a `tokio::time::timeout` around the
//! event (or the transaction count) that must arrive.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sip_core::ids::{new_call_id, new_tag};
use sip_core::transaction::{
    ClientTxId, ServerTxId, TimerConfig, TransactionConfig, TransactionLayer, TxEvent, TxId,
};
use sip_core::transport::{
    SipTransport, TransportConfig, TransportEvent, TransportEvents, TransportHandle,
};
use sip_core::{HeaderName, Method, Peer, Request, Response, Transmit, Transport, Uri};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Longest wait for any one event: only a bound for failing, never waited out by a passing
/// test, so it is far above the longest timer here (the 9.6 s guard of
/// `non_invite_unanswered_udp_times_out`) plus whatever delay a loaded machine adds.
const WAIT: Duration = Duration::from_secs(30);

fn timers() -> TimerConfig {
    TimerConfig {
        t1: Duration::from_millis(50),
        t2: Duration::from_millis(200),
        t4: Duration::from_millis(250),
        timer_d: Duration::from_millis(400),
        timer_c: None,
    }
}

// ----- the driver -------------------------------------------------------------------------

/// What the test and the pump task share.
struct Shared {
    layer: Mutex<TransactionLayer>,
    transport: TransportHandle,
    events: mpsc::UnboundedSender<TxEvent>,
    /// Wakes the pump so it re-reads `poll_timeout` after the test touched the layer.
    wake: Notify,
    /// `(client_count, server_count)` after every step, so the test can await "drained".
    counts: watch::Sender<(usize, usize)>,
    /// Every transmit handed to the transport, in order, with the time the layer was given
    /// when it produced it.
    sent: Mutex<Vec<(Instant, Transmit)>>,
    /// Anything unexpected the driver saw (refused messages, failed sends).
    problems: Mutex<Vec<String>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, TransactionLayer> {
        self.layer.lock().unwrap()
    }

    /// Runs `f` on the layer with the current time, then sends what it produced and forwards
    /// its events. Does not wake the pump (callers outside the pump do).
    fn apply<R>(&self, f: impl FnOnce(&mut TransactionLayer, Instant) -> R) -> R {
        let mut layer = self.lock();
        let now = Instant::now();
        let result = f(&mut layer, now);
        while let Some(transmit) = layer.poll_transmit() {
            self.sent.lock().unwrap().push((now, transmit.clone()));
            self.transport.send(transmit);
        }
        while let Some(event) = layer.poll_event() {
            // The receiver lives as long as the test; a send error only happens on teardown.
            let _ = self.events.send(event);
        }
        self.counts
            .send_replace((layer.client_count(), layer.server_count()));
        result
    }

    fn on_transport_event(&self, event: TransportEvent) {
        match event {
            TransportEvent::Message { message, from } => {
                let refused = self.apply(|layer, now| layer.handle_message(now, message, from));
                if let Err(e) = refused {
                    self.problem(format!("message from {from:?} refused: {e}"));
                }
            }
            TransportEvent::SendFailed { to, origin, error } => {
                self.problem(format!("send to {to:?} failed: {error}"));
                if let Some(tx) = origin {
                    self.apply(|layer, now| layer.on_send_failed(now, tx));
                }
            }
            TransportEvent::ConnectionClosed { .. } => {}
        }
    }

    fn problem(&self, text: String) {
        self.problems.lock().unwrap().push(text);
    }
}

/// Feeds transport events and expired deadlines into the layer until the transport closes.
async fn pump(shared: Arc<Shared>, mut transport_events: TransportEvents) {
    loop {
        let deadline = shared.lock().poll_timeout();
        tokio::select! {
            // A message already delivered goes before a deadline that expired meanwhile: on a
            // loaded machine both become ready in one wake-up, and a random pick could let
            // Timer D end a transaction before the final-response copy that reached it in time.
            biased;
            event = transport_events.recv() => match event {
                Some(event) => shared.on_transport_event(event),
                None => break,
            },
            () = sleep_until(deadline) => {
                shared.apply(|layer, now| layer.handle_timeout(now));
            }
            () = shared.wake.notified() => {}
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// One SIP endpoint: a transport bound on 127.0.0.1:0 and a transaction layer whose Via names
/// that port, driven by [`pump`].
struct Endpoint {
    name: &'static str,
    shared: Arc<Shared>,
    events: mpsc::UnboundedReceiver<TxEvent>,
    counts: watch::Receiver<(usize, usize)>,
    task: JoinHandle<()>,
}

impl Endpoint {
    async fn start(name: &'static str, timers: TimerConfig) -> Endpoint {
        let (transport, transport_events) = SipTransport::bind(TransportConfig {
            bind: "127.0.0.1:0".parse().unwrap(),
            ..TransportConfig::default()
        })
        .await
        .expect("bind transport");
        let layer = TransactionLayer::new(TransactionConfig {
            timers,
            via_host: "127.0.0.1".into(),
            via_port: Some(transport.local_addr().port()),
            send_100_trying: true,
            ..TransactionConfig::default()
        });
        let (events_tx, events) = mpsc::unbounded_channel();
        let (counts_tx, counts) = watch::channel((0, 0));
        let shared = Arc::new(Shared {
            layer: Mutex::new(layer),
            transport,
            events: events_tx,
            wake: Notify::new(),
            counts: counts_tx,
            sent: Mutex::new(Vec::new()),
            problems: Mutex::new(Vec::new()),
        });
        let task = tokio::spawn(pump(shared.clone(), transport_events));
        Endpoint {
            name,
            shared,
            events,
            counts,
            task,
        }
    }

    /// This endpoint as seen by the other one, over `transport`.
    fn peer(&self, transport: Transport) -> Peer {
        Peer {
            transport,
            addr: self.shared.transport.local_addr(),
            connection: None,
        }
    }

    /// Acts on the layer (as the transaction user would) and lets the pump see the result.
    fn with<R>(&self, f: impl FnOnce(&mut TransactionLayer, Instant) -> R) -> R {
        let result = self.shared.apply(f);
        self.shared.wake.notify_one();
        result
    }

    fn send_request(&self, request: Request, to: Peer) -> ClientTxId {
        self.with(|layer, now| layer.send_request(now, request, to))
            .expect("send_request")
    }

    fn send_response(&self, tx: ServerTxId, response: Response) {
        self.with(|layer, now| layer.send_response(now, tx, response))
            .expect("send_response");
    }

    fn client_request(&self, tx: ClientTxId) -> Request {
        self.with(|layer, _| layer.client_request(tx).cloned())
            .expect("client transaction still alive")
    }

    async fn next_event(&mut self) -> TxEvent {
        match timeout(WAIT, self.events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("{}: event channel closed", self.name),
            Err(_) => panic!("{}: no transaction event within {WAIT:?}", self.name),
        }
    }

    /// The next event that `wanted` accepts; events in between must be `benign`.
    async fn expect(
        &mut self,
        what: &str,
        wanted: impl Fn(&TxEvent) -> bool,
        benign: impl Fn(&TxEvent) -> bool,
    ) -> TxEvent {
        loop {
            let event = self.next_event().await;
            if wanted(&event) {
                return event;
            }
            assert!(
                benign(&event),
                "{}: waiting for {what}, got unexpected {event:?}",
                self.name
            );
        }
    }

    /// A new request (the next event must be one).
    async fn expect_request(
        &mut self,
        method: Method,
    ) -> (ServerTxId, Request, Option<ServerTxId>) {
        match self.next_event().await {
            TxEvent::Request {
                tx,
                request,
                cancels,
                ..
            } if request.method == method => (tx, request, cancels),
            other => panic!(
                "{}: expected a {method:?} request, got {other:?}",
                self.name
            ),
        }
    }

    /// The response `status` on `tx`, skipping repeated provisionals (a retransmitted INVITE
    /// makes the server re-send its last provisional) and repeated 2xx (passed up each time).
    async fn expect_response(&mut self, tx: ClientTxId, status: u16) -> Response {
        let event = self
            .expect(
                &format!("response {status}"),
                |e| matches!(e, TxEvent::Response { tx: t, response, .. } if *t == tx && response.status == status),
                |e| matches!(e, TxEvent::Response { tx: t, response, .. } if *t == tx && (response.status < 200 || response.status / 100 == 2)),
            )
            .await;
        match event {
            TxEvent::Response { response, .. } => response,
            _ => unreachable!(),
        }
    }

    /// `Terminated(tx)`, with nothing but repeated 2xx responses on the way (no `Timeout`, no
    /// `TransportError`, no stray messages).
    async fn expect_terminated(&mut self, tx: TxId) {
        self.expect(
            &format!("Terminated({tx:?})"),
            |e| *e == TxEvent::Terminated(tx),
            |e| matches!(e, TxEvent::Response { response, .. } if response.status / 100 == 2),
        )
        .await;
    }

    fn client_count(&self) -> usize {
        self.shared.lock().client_count()
    }

    fn server_count(&self) -> usize {
        self.shared.lock().server_count()
    }

    /// Waits until this layer holds no transaction at all.
    async fn drained(&mut self) {
        let drained = timeout(WAIT, self.counts.wait_for(|&counts| counts == (0, 0)))
            .await
            .map(|changed| changed.is_ok());
        assert_eq!(
            drained,
            Ok(true),
            "{}: transactions left (clients, servers): {:?}",
            self.name,
            (self.client_count(), self.server_count())
        );
        assert_eq!((self.client_count(), self.server_count()), (0, 0));
    }

    /// No refused message, no failed send, no event left unread.
    fn assert_clean(&mut self) {
        let problems = self.shared.problems.lock().unwrap().clone();
        assert!(problems.is_empty(), "{}: {problems:#?}", self.name);
        let mut left = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            left.push(event);
        }
        assert!(left.is_empty(), "{}: unread events {left:#?}", self.name);
    }

    /// Requests this endpoint put on the wire with this method (retransmissions included).
    fn sent_requests(&self, method: &str) -> usize {
        self.sent_starting_with(&format!("{method} "))
    }

    /// Responses with this status this endpoint put on the wire (retransmissions included).
    fn sent_responses(&self, status: u16) -> usize {
        self.sent_starting_with(&format!("SIP/2.0 {status} "))
    }

    fn sent_starting_with(&self, prefix: &str) -> usize {
        self.sent_times(prefix).len()
    }

    /// When each transmit starting with `prefix` went out (layer time), in order.
    fn sent_times(&self, prefix: &str) -> Vec<Instant> {
        self.shared
            .sent
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, t)| t.bytes.starts_with(prefix.as_bytes()))
            .map(|(at, _)| *at)
            .collect()
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
        self.shared.transport.shutdown();
    }
}

async fn pair(server_timers: TimerConfig) -> (Endpoint, Endpoint) {
    (
        Endpoint::start("client", timers()).await,
        Endpoint::start("server", server_timers).await,
    )
}

// ----- messages ---------------------------------------------------------------------------

/// A request from `client` to `server`, without Via (the client layer adds it).
fn request(method: Method, client: &Endpoint, server: &Endpoint) -> Request {
    let server_addr = server.shared.transport.local_addr();
    let client_addr = client.shared.transport.local_addr();
    let mut request = Request::new(
        method.clone(),
        Uri::sip(Some("bob"), "127.0.0.1", Some(server_addr.port())),
    );
    let headers = &mut request.headers;
    headers.push(HeaderName::MaxForwards, "70");
    headers.push(
        HeaderName::From,
        format!("<sip:alice@127.0.0.1>;tag={}", new_tag()),
    );
    headers.push(HeaderName::To, "<sip:bob@127.0.0.1>");
    headers.push(HeaderName::CallId, new_call_id("127.0.0.1"));
    headers.push(HeaderName::CSeq, format!("1 {}", method.as_str()));
    headers.push(
        HeaderName::Contact,
        format!("<sip:alice@127.0.0.1:{}>", client_addr.port()),
    );
    request
}

/// The server's response to `request`, with `to_tag` on the To header.
fn answer(request: &Request, status: u16, to_tag: &str) -> Response {
    let mut response = Response::to_request(request, status, None);
    let to = response.headers.to().unwrap().with_tag(to_tag);
    response.headers.set(HeaderName::To, to.to_string());
    response
}

/// The ACK for a 2xx (§13.2.2.4): built from the INVITE and the 2xx's To, without Via so that
/// the layer gives it a fresh branch.
fn ack_for_2xx(invite: &Request, ok: &Response) -> Request {
    let mut ack = Request::new(Method::Ack, invite.uri.clone());
    ack.headers.push(HeaderName::MaxForwards, "70");
    for (name, source) in [
        (HeaderName::From, &invite.headers),
        (HeaderName::To, &ok.headers),
        (HeaderName::CallId, &invite.headers),
    ] {
        ack.headers
            .push(name.clone(), source.get(&name).expect("header present"));
    }
    let seq = invite.headers.cseq().unwrap().seq;
    ack.headers.push(HeaderName::CSeq, format!("{seq} ACK"));
    ack
}

fn branch_of(request: &Request) -> String {
    let via = request.headers.top_via().unwrap();
    via.branch().expect("branch").to_owned()
}

// ----- scenarios --------------------------------------------------------------------------

/// INVITE → 100 (automatic) → 180 → 486 → ACK (sent by the client layer); both sides end.
async fn invite_rejected(transport: Transport) {
    let (mut client, mut server) = pair(timers()).await;
    let invite = client.send_request(
        request(Method::Invite, &client, &server),
        server.peer(transport),
    );

    let (stx, received, cancels) = server.expect_request(Method::Invite).await;
    assert_eq!(cancels, None);
    let sent = client.client_request(invite);
    assert_eq!(branch_of(&received), branch_of(&sent));
    client.expect_response(invite, 100).await;

    let tag = new_tag();
    server.send_response(stx, answer(&received, 180, &tag));
    client.expect_response(invite, 180).await;
    server.send_response(stx, answer(&received, 486, &tag));
    let busy = client.expect_response(invite, 486).await;
    assert_eq!(busy.headers.to().unwrap().tag(), Some(tag.as_str()));

    // The client layer ACKs the 486 itself; that ACK moves the server transaction to
    // Confirmed (UDP: absorbing ACK copies for T4) or ends it at once (TCP). Without it,
    // Timer H would end it with `Timeout` first, which `expect_terminated` refuses: the
    // order of events proves the ACK arrived, however slow the machine is.
    server.expect_terminated(TxId::Server(stx)).await;
    client.expect_terminated(TxId::Client(invite)).await;
    client.drained().await;
    server.drained().await;
    // One ACK per copy of the 486 (Timer G may re-send it on UDP before the ACK lands).
    assert_eq!(client.sent_requests("ACK"), server.sent_responses(486));
    if transport == Transport::Tcp {
        assert_eq!(client.sent_requests("ACK"), 1);
    }
    assert_eq!(server.shared.lock().stats().timeouts, 0);
    client.assert_clean();
    server.assert_clean();
}

/// INVITE → 200; the test ACKs the 2xx outside the transaction; the server matches that ACK
/// to its Accepted transaction; both sides end after Timers L and M.
async fn invite_accepted(transport: Transport) {
    let (mut client, mut server) = pair(timers()).await;
    let invite = client.send_request(
        request(Method::Invite, &client, &server),
        server.peer(transport),
    );
    // Kept by the user, as a UA keeps its INVITE: the layer drops its copy at the final.
    let sent_invite = client.client_request(invite);
    let (stx, received, _) = server.expect_request(Method::Invite).await;
    client.expect_response(invite, 100).await;

    server.send_response(stx, answer(&received, 200, &new_tag()));
    let ok = client.expect_response(invite, 200).await;
    assert!(
        client.with(|layer, _| layer.client_request(invite).is_none()),
        "the layer keeps no request once the final has arrived"
    );

    let ack = ack_for_2xx(&sent_invite, &ok);
    client
        .with(|layer, _| layer.send_stateless_request(ack, server.peer(transport)))
        .expect("send ACK");
    let acked = server
        .expect("the ACK", |e| matches!(e, TxEvent::Ack { .. }), |_| false)
        .await;
    let TxEvent::Ack { tx, request, .. } = acked else {
        unreachable!()
    };
    assert_eq!(tx, Some(stx));
    // The ACK stopped the 2xx retransmissions (the Ack event is emitted in the same step).
    let oks_sent = server.sent_responses(200);
    assert!(oks_sent >= 1);
    assert_ne!(
        branch_of(&request),
        branch_of(&sent_invite),
        "the ACK for a 2xx is a new transaction"
    );

    // Accepted lasts 64·T1 on both sides (Timers L and M); the 2xx may have been re-sent
    // before the ACK got there, and every copy reaches the client user.
    server.expect_terminated(TxId::Server(stx)).await;
    client.expect_terminated(TxId::Client(invite)).await;
    client.drained().await;
    server.drained().await;
    assert_eq!(server.shared.lock().stats().timeouts, 0);
    assert_eq!(
        server.sent_responses(200),
        oks_sent,
        "2xx re-sent after its ACK"
    );
    client.assert_clean();
    server.assert_clean();
}

/// OPTIONS → 200; both sides end (Timer K on the client, J on the server, over UDP).
async fn non_invite_answered(transport: Transport) {
    let (mut client, mut server) = pair(timers()).await;
    let options = client.send_request(
        request(Method::Options, &client, &server),
        server.peer(transport),
    );
    let (stx, received, cancels) = server.expect_request(Method::Options).await;
    assert_eq!(cancels, None);
    server.send_response(stx, answer(&received, 200, &new_tag()));
    client.expect_response(options, 200).await;

    client.expect_terminated(TxId::Client(options)).await;
    server.expect_terminated(TxId::Server(stx)).await;
    client.drained().await;
    server.drained().await;
    client.assert_clean();
    server.assert_clean();
}

/// INVITE → 180 → CANCEL (by the client layer) → 200 to the CANCEL and 487 to the INVITE.
async fn invite_cancelled(transport: Transport) {
    let (mut client, mut server) = pair(timers()).await;
    let invite = client.send_request(
        request(Method::Invite, &client, &server),
        server.peer(transport),
    );
    let (stx, received, _) = server.expect_request(Method::Invite).await;
    let tag = new_tag();
    server.send_response(stx, answer(&received, 180, &tag));
    client.expect_response(invite, 180).await;

    client
        .with(|layer, now| layer.cancel(now, invite))
        .expect("cancel");
    let (cancel_tx, cancel, cancels) = server.expect_request(Method::Cancel).await;
    assert_eq!(
        cancels,
        Some(stx),
        "the CANCEL must find the INVITE it cancels"
    );
    assert_eq!(branch_of(&cancel), branch_of(&received));

    server.send_response(cancel_tx, answer(&cancel, 200, &tag));
    server.send_response(stx, answer(&received, 487, &tag));
    client.expect_response(invite, 487).await;

    // The server's two transactions end in either order (TCP: both at once).
    for _ in 0..2 {
        server
            .expect(
                "the server transactions' ends",
                |e| {
                    *e == TxEvent::Terminated(TxId::Server(stx))
                        || *e == TxEvent::Terminated(TxId::Server(cancel_tx))
                },
                |_| false,
            )
            .await;
    }
    client.expect_terminated(TxId::Client(invite)).await;
    client.drained().await;
    server.drained().await;
    // On UDP, Timer E may re-send the CANCEL before its 200 arrives.
    assert!(client.sent_requests("CANCEL") >= 1);
    assert_eq!(client.sent_requests("ACK"), server.sent_responses(487));
    if transport == Transport::Tcp {
        assert_eq!(client.sent_requests("CANCEL"), 1);
        assert_eq!(client.sent_requests("ACK"), 1);
    }
    assert_eq!(client.shared.lock().stats().timeouts, 0);
    assert_eq!(server.shared.lock().stats().timeouts, 0);
    client.assert_clean();
    server.assert_clean();
}

macro_rules! over_udp_and_tcp {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                use super::*;

                #[tokio::test]
                async fn udp() {
                    super::$name(Transport::Udp).await;
                }

                #[tokio::test]
                async fn tcp() {
                    super::$name(Transport::Tcp).await;
                }
            }
        )*
    };
}

over_udp_and_tcp!(
    invite_rejected,
    invite_accepted,
    non_invite_answered,
    invite_cancelled
);

/// UDP only: the server user never answers an OPTIONS. The client retransmits (Timer E), the
/// server transaction absorbs every copy (one `Request` event), the client gives up at Timer F
/// with `Timeout` then `Terminated`. The server's own guard (64·T1 of *its* T1) then answers
/// 500, which the client no longer has a transaction for.
///
/// Only what a slow machine cannot change is asserted: the order of events, and lower bounds on
/// the times between what was sent (a timer never fires early; load only delays it).
#[tokio::test]
async fn non_invite_unanswered_udp_times_out() {
    // The server's guard fires at 64·150 ms = 9.6 s, 6.4 s after the client's Timer F: only
    // a stall of the whole runtime that long could let the 500 reach the client first.
    let server_timers = TimerConfig {
        t1: Duration::from_millis(150),
        ..timers()
    };
    let (mut client, mut server) = pair(server_timers.clone()).await;
    let options = client.send_request(
        request(Method::Options, &client, &server),
        server.peer(Transport::Udp),
    );
    let (stx, _, _) = server.expect_request(Method::Options).await;

    assert_eq!(
        client.next_event().await,
        TxEvent::Timeout(TxId::Client(options))
    );
    let timer_f = Instant::now();
    assert_eq!(
        client.next_event().await,
        TxEvent::Terminated(TxId::Client(options))
    );

    // Exactly one Request event: the next server events are its guard's.
    assert_eq!(
        server.next_event().await,
        TxEvent::Timeout(TxId::Server(stx))
    );
    assert_eq!(
        server.next_event().await,
        TxEvent::Terminated(TxId::Server(stx))
    );
    match client.next_event().await {
        TxEvent::StrayResponse { response, .. } => assert_eq!(response.status, 500),
        other => panic!("expected the server's late 500 as a stray response, got {other:?}"),
    }
    client.drained().await;
    server.drained().await;

    let sends = client.sent_times("OPTIONS ");
    let retransmissions = client.shared.lock().stats().retransmissions;
    assert_eq!(sends.len() as u64, retransmissions + 1);
    // Timer F: 64·T1 after the request first went out, not earlier.
    let t = timers();
    assert!(
        timer_f - sends[0] >= t.timeout(),
        "Timer F after {:?}, before 64·T1",
        timer_f - sends[0]
    );
    // Timer E: each gap at least the interval it has doubled to (T1, 2·T1, 4·T1, then T2).
    let mut interval = t.t1;
    for (i, pair) in sends.windows(2).enumerate() {
        assert!(
            pair[1] - pair[0] >= interval,
            "retransmission {} after {:?}, before {interval:?}",
            i + 1,
            pair[1] - pair[0]
        );
        interval = (interval * 2).min(t.t2);
    }
    // At least one retransmission (Timer E's first deadline precedes Timer F's, and the layer
    // fires deadlines in order however late it runs), and at most as many as fit before
    // Timer F when every timer fires on time: 0, 50, 150, 350, then every 200 ms.
    let mut on_time = vec![Duration::ZERO];
    let mut interval = t.t1;
    while *on_time.last().unwrap() + interval <= t.timeout() {
        on_time.push(*on_time.last().unwrap() + interval);
        interval = (interval * 2).min(t.t2);
    }
    assert!(
        (2..=on_time.len()).contains(&sends.len()),
        "{} OPTIONS sent, expected 2..={}",
        sends.len(),
        on_time.len()
    );
    let absorbed = server.shared.lock().stats().absorbed;
    assert!(
        absorbed >= 1 && absorbed <= retransmissions,
        "server absorbed {absorbed} of {retransmissions} retransmissions"
    );
    client.assert_clean();
    server.assert_clean();
}
