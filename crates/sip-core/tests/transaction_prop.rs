//! Model-based property test of the transaction layer.
//!
//! Random interleavings of incoming requests (new ones, retransmissions, ACKs, CANCELs, RFC 2543
//! branches, over UDP and TCP), responses to what we sent (first, retransmitted, stray), user
//! answers, cancels, transport failures and clock jumps run against the real
//! [`TransactionLayer`] and, in step, against a small reference model of RFC 3261 §17 with the
//! RFC 6026 Accepted states ([`Model`]). After every operation the test asserts that the layer
//!
//! - transmitted exactly what the model predicts (bytes and destination; so a new request goes
//!   out once, a request retransmission is answered with the last response, a stray response
//!   sends nothing, a non-2xx final to an INVITE is ACKed, Timers A/E/G only re-send over UDP),
//! - raised exactly the predicted events, in order per transaction (a `Request` for a new
//!   server transaction only, `Response`s passed up or absorbed, `Timeout`, `Terminated`),
//! - holds each transaction in the predicted state and asks for the predicted next deadline.
//!
//! At the end the transaction user acts only where the model says nothing else ends a
//! transaction: it answers INVITE server transactions still in Proceeding, and CANCELs INVITE
//! client transactions in Proceeding when no Timer C is configured (RFC 3261 gives neither a
//! timer). Then the clock runs out: every transaction ends with exactly one `Terminated` and no
//! timer entry is left.
//!
//! A second property feeds byte-mutated requests and checks robustness only (no panic, nothing
//! left behind): what a mutated message keys to is not something a small model can predict.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use sip_core::message::{build_ack_for_non_2xx, build_cancel};
use sip_core::transaction::{
    ClientState, ClientTxId, ServerState, ServerTxId, TimerConfig, TransactionConfig,
    TransactionLayer, TxError, TxEvent, TxId,
};
use sip_core::{HeaderName, Message, ParseLimits, Peer, Request, Response};

const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
const T4: Duration = Duration::from_secs(5);
const TIMER_D: Duration = Duration::from_secs(32);
/// 64·T1: Timers B, F, H, J, L, M, the wait after a CANCEL or Timer C, the unanswered guard.
const T64: Duration = Duration::from_millis(500 * 64);

#[derive(Clone, Debug)]
enum Op {
    /// A request from the peer: method index, branch index (3 = RFC 2543), CSeq, TCP.
    Incoming(usize, usize, u32, bool),
    /// A response from the peer to the n-th live client transaction (CANCELs the layer sent
    /// included) or, with `true`, to the n-th request ever sent (finished ones give strays).
    Reply(usize, u16, bool),
    /// The user starts a client transaction of this method, over TCP or UDP.
    Send(usize, bool),
    /// The user answers the n-th live server transaction or, with `true`, the n-th ever
    /// created (a finished one is refused).
    Answer(usize, u16, bool),
    /// The user cancels the n-th request ever sent.
    Cancel(usize),
    /// A send of the n-th client (`true`) or server transaction ever created failed: only
    /// that transaction ends (a finished one: nothing happens).
    TransportError(usize, bool),
    /// Time passes (milliseconds).
    Advance(u64),
}

const METHODS: [&str; 6] = ["INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO"];
const STATUSES: [u16; 8] = [100, 180, 183, 200, 202, 404, 486, 503];

fn op() -> impl Strategy<Value = Op> {
    // INVITE and ACK weigh more: the ACK paths need an INVITE with the same branch or CSeq.
    let method = prop_oneof![3 => Just(0usize), 3 => Just(1), 1 => Just(2), 1 => 3..6usize];
    let status = (0..STATUSES.len()).prop_map(|s| STATUSES[s]);
    let any_tx = proptest::bool::weighted(0.15);
    prop_oneof![
        6 => (method.clone(), 0..4usize, 1..3u32, any::<bool>())
            .prop_map(|(m, b, c, t)| Op::Incoming(m, b, c, t)),
        4 => (0..8usize, status.clone(), any_tx)
            .prop_map(|(i, s, a)| Op::Reply(i, s, a)),
        2 => (method, any::<bool>()).prop_map(|(m, t)| Op::Send(m, t)),
        4 => (0..8usize, status, any_tx).prop_map(|(i, s, a)| Op::Answer(i, s, a)),
        1 => (0..8usize).prop_map(Op::Cancel),
        1 => (0..8usize, any::<bool>()).prop_map(|(i, c)| Op::TransportError(i, c)),
        // Mostly short steps, so that transactions meet each other; sometimes past every timer.
        3 => (0..2_000u64).prop_map(Op::Advance),
        1 => (0..40_000u64).prop_map(Op::Advance),
    ]
}

fn peer(tcp: bool) -> Peer {
    let addr = "127.0.0.1:5062".parse().unwrap();
    if tcp {
        Peer::tcp(addr, None)
    } else {
        Peer::udp(addr)
    }
}

fn incoming_text(method: &str, branch: usize, cseq: u32, tcp: bool) -> String {
    // Branch 3 is an RFC 2543 branch (no magic cookie).
    let branch = if branch == 3 {
        "legacy".to_owned()
    } else {
        format!("z9hG4bK{branch}")
    };
    let transport = if tcp { "TCP" } else { "UDP" };
    let to_tag = if method == "ACK" { ";tag=t1" } else { "" };
    format!(
        "{method} sip:bob@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/{transport} 127.0.0.1:5062;branch={branch}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@127.0.0.1>;tag=f{cseq}\r\n\
         To: <sip:bob@127.0.0.1>{to_tag}\r\n\
         Call-ID: prop@127.0.0.1\r\n\
         CSeq: {cseq} {method}\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

fn parse_request(text: &str) -> Request {
    match Message::parse(text.as_bytes(), &ParseLimits::default()) {
        Ok(Message::Request(request)) => request,
        other => panic!("fixture does not parse as a request: {other:?}"),
    }
}

fn outgoing(method: &str) -> Request {
    let mut request = parse_request(&incoming_text(method, 0, 1, false));
    request.headers.remove_all(&HeaderName::Via);
    request
}

fn tagged(mut response: Response) -> Response {
    if let Ok(to) = response.headers.to() {
        if to.tag().is_none() {
            response
                .headers
                .set(HeaderName::To, to.with_tag("t1").to_string());
        }
    }
    response
}

// ----- the reference model ---------------------------------------------------------------

/// The timers of RFC 3261 §17 (and RFC 6026's L and M), by the names the RFC gives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    A,
    E,
    G,
    /// The INVITE server's 2xx retransmission until the ACK (§13.3.1.4).
    Retx2xx,
    B,
    F,
    C,
    /// 64·T1 after a CANCEL (§9.1) or after Timer C: the INVITE client gives up.
    GiveUp,
    H,
    L,
    /// 64·T1 for the user to answer a non-INVITE before the layer sends 500.
    Guard,
    D,
    I,
    J,
    K,
    M,
}

impl Timer {
    /// When two timers of one transaction are due at the same instant the layer re-sends
    /// first, then times out, then ends a lingering transaction.
    fn rank(self) -> u8 {
        use Timer::*;
        match self {
            A | E | G | Retx2xx => 0,
            B | F | C | GiveUp | H | L | Guard => 1,
            D | I | J | K | M => 2,
        }
    }
}

/// §17.2.3 server transaction key as far as the generator varies it: an RFC 3261 branch and
/// method (sent-by is fixed), or for RFC 2543 peers the CSeq, the top Via's transport and the
/// method (Request-URI, From tag and Call-ID follow from the CSeq). ACK keys as INVITE.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Key {
    Branch(usize, &'static str),
    Legacy(u32, bool, &'static str),
}

fn key(method: &'static str, branch: usize, cseq: u32, tcp: bool) -> Key {
    let method = if method == "ACK" { "INVITE" } else { method };
    if branch == 3 {
        Key::Legacy(cseq, tcp, method)
    } else {
        Key::Branch(branch, method)
    }
}

struct ModelClient {
    /// The request as sent (with the layer's Via), for retransmissions, the ACK and the CANCEL.
    request: Request,
    bytes: Bytes,
    to: Peer,
    invite: bool,
    /// A CANCEL the layer sent itself: it reports nothing to the user.
    internal: bool,
    state: ClientState,
    timers: BTreeMap<Timer, Instant>,
    interval: Duration,
    ack: Option<Bytes>,
    cancel_pending: bool,
    cancelled: bool,
    /// Timer C has fired or a CANCEL replaced it: it never runs again.
    c_done: bool,
}

struct ModelServer {
    key: Key,
    request: Request,
    cseq: u32,
    invite: bool,
    destination: Peer,
    state: ServerState,
    timers: BTreeMap<Timer, Instant>,
    interval: Duration,
    last_response: Option<Bytes>,
    acked: bool,
}

/// What the test compares an event by.
#[derive(Clone, Debug, PartialEq)]
enum Ev {
    Request {
        tx: ServerTxId,
        method: String,
        cseq: u32,
        cancels: Option<ServerTxId>,
    },
    Ack {
        tx: Option<ServerTxId>,
        cseq: u32,
    },
    Response {
        tx: ClientTxId,
        status: u16,
    },
    Stray {
        status: u16,
    },
    Timeout(TxId),
    TransportError(TxId),
    Terminated(TxId),
}

impl Ev {
    fn of(event: TxEvent) -> Ev {
        let cseq = |r: &Request| r.headers.cseq().map(|c| c.seq).unwrap_or(0);
        match event {
            TxEvent::Request {
                tx,
                request,
                cancels,
                ..
            } => Ev::Request {
                tx,
                method: request.method.to_string(),
                cseq: cseq(&request),
                cancels,
            },
            TxEvent::Ack { tx, request, .. } => Ev::Ack {
                tx,
                cseq: cseq(&request),
            },
            TxEvent::Response { tx, response, .. } => Ev::Response {
                tx,
                status: response.status,
            },
            TxEvent::StrayResponse { response, .. } => Ev::Stray {
                status: response.status,
            },
            TxEvent::Timeout(id) => Ev::Timeout(id),
            TxEvent::TransportError(id) => Ev::TransportError(id),
            TxEvent::Terminated(id) => Ev::Terminated(id),
        }
    }

    /// The transaction an event belongs to: order is only meaningful within one.
    fn tx(&self) -> Option<TxId> {
        match self {
            Ev::Request { tx, .. } | Ev::Ack { tx: Some(tx), .. } => Some(TxId::Server(*tx)),
            Ev::Response { tx, .. } => Some(TxId::Client(*tx)),
            Ev::Timeout(id) | Ev::TransportError(id) | Ev::Terminated(id) => Some(*id),
            Ev::Ack { tx: None, .. } | Ev::Stray { .. } => None,
        }
    }
}

fn state_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Trying => "Trying",
        ServerState::Proceeding => "Proceeding",
        ServerState::Completed => "Completed",
        ServerState::Accepted => "Accepted",
        ServerState::Confirmed => "Confirmed",
    }
}

/// RFC 3261 §17 transactions as the test expects them to behave, written from the RFC's
/// figures rather than from the layer's code. It predicts transmissions and events into `out`
/// and `events`; [`check`] compares them with what the layer produced.
struct Model {
    timer_c: Option<Duration>,
    next_id: u64,
    clients: BTreeMap<ClientTxId, ModelClient>,
    servers: BTreeMap<ServerTxId, ModelServer>,
    /// RFC 6026: the INVITE server transaction in Accepted that an ACK for a 2xx belongs to, by
    /// the dialog fields it repeats (only the CSeq varies here).
    accepted: HashMap<u32, ServerTxId>,
    /// Every request ever sent, for replies (also to finished transactions, i.e. strays).
    sent: Vec<(ClientTxId, Request)>,
    /// Every server transaction ever created, with its request, for the user's answers.
    received: Vec<(ServerTxId, Request)>,
    /// The CANCELs the layer sent on its own (never reported to the user).
    internal: BTreeSet<ClientTxId>,
    out: Vec<(Peer, Bytes)>,
    events: Vec<Ev>,
}

impl Model {
    fn new(timer_c: Option<Duration>) -> Model {
        Model {
            timer_c,
            next_id: 1,
            clients: BTreeMap::new(),
            servers: BTreeMap::new(),
            accepted: HashMap::new(),
            sent: Vec::new(),
            received: Vec::new(),
            internal: BTreeSet::new(),
            out: Vec::new(),
            events: Vec::new(),
        }
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id - 1
    }

    fn next_deadline(&self) -> Option<Instant> {
        let clients = self.clients.values().flat_map(|c| c.timers.values());
        let servers = self.servers.values().flat_map(|s| s.timers.values());
        clients.chain(servers).min().copied()
    }

    // --- client side

    /// The id `send_request` should return, before the layer has been asked.
    fn expected_send(&self, method: &str) -> Result<ClientTxId, TxError> {
        if method == "ACK" {
            return Err(TxError::AckIsNotATransaction);
        }
        Ok(ClientTxId(self.next_id))
    }

    /// A new client transaction: the request goes out once, Timer A/E only on UDP.
    fn start_client(&mut self, now: Instant, request: Request, to: Peer, internal: bool) {
        let id = ClientTxId(self.new_id());
        let invite = request.method.to_string() == "INVITE";
        let bytes = request.to_bytes();
        let mut timers = BTreeMap::new();
        if !to.is_reliable() {
            timers.insert(if invite { Timer::A } else { Timer::E }, now + T1);
        }
        timers.insert(if invite { Timer::B } else { Timer::F }, now + T64);
        self.out.push((to, bytes.clone()));
        self.sent.push((id, request.clone()));
        if internal {
            self.internal.insert(id);
        }
        self.clients.insert(
            id,
            ModelClient {
                request,
                bytes,
                to,
                invite,
                internal,
                state: if invite {
                    ClientState::Calling
                } else {
                    ClientState::Trying
                },
                timers,
                interval: T1,
                ack: None,
                cancel_pending: false,
                cancelled: false,
                c_done: false,
            },
        );
    }

    fn end_client(&mut self, id: ClientTxId) {
        if let Some(c) = self.clients.remove(&id) {
            if !c.internal {
                self.events.push(Ev::Terminated(TxId::Client(id)));
            }
        }
    }

    fn cancel(&mut self, now: Instant, id: ClientTxId) -> Result<(), TxError> {
        let c = self
            .clients
            .get_mut(&id)
            .ok_or(TxError::UnknownTransaction)?;
        if !c.invite {
            return Err(TxError::NotAnInvite);
        }
        if c.cancelled || c.cancel_pending {
            return Ok(());
        }
        match c.state {
            // §9.1: no CANCEL before a provisional response.
            ClientState::Calling => c.cancel_pending = true,
            ClientState::Proceeding => {
                c.cancelled = true;
                c.c_done = true;
                c.timers.remove(&Timer::C);
                c.timers.insert(Timer::GiveUp, now + T64);
                let cancel = build_cancel(&c.request);
                let to = c.to;
                self.start_client(now, cancel, to, true);
            }
            _ => {}
        }
        Ok(())
    }

    fn response(&mut self, now: Instant, id: ClientTxId, response: &Response) {
        let status = response.status;
        let timer_c = self.timer_c;
        let Some(c) = self.clients.get_mut(&id) else {
            // Stray: nothing is created, nothing is sent, the user hears about it.
            self.events.push(Ev::Stray { status });
            return;
        };
        let reliable = c.to.is_reliable();
        let mut pass_up = true;
        let mut end = false;
        let mut send_cancel = false;
        if c.invite {
            match (c.state, status) {
                (ClientState::Calling | ClientState::Proceeding, 100..=199) => {
                    if c.state == ClientState::Calling {
                        c.state = ClientState::Proceeding;
                        c.timers.clear();
                        send_cancel = std::mem::take(&mut c.cancel_pending);
                    }
                    if let (Some(timer_c), false) = (timer_c, c.c_done) {
                        c.timers.insert(Timer::C, now + timer_c);
                    }
                }
                (ClientState::Calling | ClientState::Proceeding, 200..=299) => {
                    c.state = ClientState::Accepted;
                    c.timers.clear();
                    c.timers.insert(Timer::M, now + T64);
                }
                (ClientState::Calling | ClientState::Proceeding, _) => {
                    c.state = ClientState::Completed;
                    c.timers.clear();
                    let ack = build_ack_for_non_2xx(&c.request, response).to_bytes();
                    self.out.push((c.to, ack.clone()));
                    c.ack = Some(ack);
                    if reliable {
                        end = true;
                    } else {
                        c.timers.insert(Timer::D, now + TIMER_D);
                    }
                }
                // RFC 6026: every 2xx is passed up (the user ACKs each).
                (ClientState::Accepted, 200..=299) => {}
                // A retransmitted non-2xx final is ACKed again, not passed up.
                (ClientState::Completed, 300..) => {
                    if let Some(ack) = &c.ack {
                        self.out.push((c.to, ack.clone()));
                    }
                    pass_up = false;
                }
                _ => pass_up = false,
            }
        } else {
            match (c.state, status) {
                (ClientState::Trying | ClientState::Proceeding, 100..=199) => {
                    c.state = ClientState::Proceeding;
                }
                (ClientState::Trying | ClientState::Proceeding, _) => {
                    c.state = ClientState::Completed;
                    c.timers.clear();
                    if reliable {
                        end = true;
                    } else {
                        c.timers.insert(Timer::K, now + T4);
                    }
                }
                _ => pass_up = false,
            }
        }
        if pass_up && !c.internal {
            self.events.push(Ev::Response { tx: id, status });
        }
        if send_cancel {
            let _ = self.cancel(now, id);
        }
        if end {
            self.end_client(id);
        }
    }

    fn fire_client(&mut self, now: Instant, id: ClientTxId, timer: Timer) {
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        let tx = TxId::Client(id);
        match timer {
            Timer::A | Timer::E => {
                self.out.push((c.to, c.bytes.clone()));
                c.interval = match (timer, c.state) {
                    (Timer::A, _) => c.interval * 2,
                    // §17.1.2.2: once Proceeding, every T2.
                    (_, ClientState::Proceeding) => T2,
                    _ => (c.interval * 2).min(T2),
                };
                c.timers.insert(timer, now + c.interval);
            }
            Timer::C => {
                c.c_done = true;
                c.timers.insert(Timer::GiveUp, now + T64);
                if !c.internal {
                    self.events.push(Ev::Timeout(tx));
                }
            }
            Timer::B | Timer::F | Timer::GiveUp => {
                if !c.internal {
                    self.events.push(Ev::Timeout(tx));
                }
                self.end_client(id);
            }
            _ => self.end_client(id),
        }
    }

    // --- server side

    fn server_with(&self, key: &Key) -> Option<ServerTxId> {
        self.servers
            .iter()
            .find(|(_, s)| s.key == *key)
            .map(|(id, _)| *id)
    }

    fn request(
        &mut self,
        now: Instant,
        method: &'static str,
        branch: usize,
        cseq: u32,
        tcp: bool,
        request: &Request,
    ) {
        let from = peer(tcp);
        let key = key(method, branch, cseq, tcp);
        let found = self.server_with(&key);
        if method == "ACK" {
            match found {
                Some(id) => self.ack_matched(now, id, cseq),
                None => match self.accepted.get(&cseq) {
                    Some(&id) => self.ack_accepted(id, cseq),
                    None => self.events.push(Ev::Ack { tx: None, cseq }),
                },
            }
            return;
        }
        if let Some(id) = found {
            // A retransmission: the last response again, except in Accepted where the
            // layer's own 2xx retransmission is running.
            let s = &self.servers[&id];
            if let (Some(last), false) = (&s.last_response, s.state == ServerState::Accepted) {
                self.out.push((s.destination, last.clone()));
            }
            return;
        }
        let cancels = if method == "CANCEL" {
            self.server_with(&self::key("INVITE", branch, cseq, tcp))
        } else {
            None
        };
        let id = ServerTxId(self.new_id());
        let invite = method == "INVITE";
        let mut s = ModelServer {
            key,
            request: request.clone(),
            cseq,
            invite,
            destination: from,
            state: if invite {
                ServerState::Proceeding
            } else {
                ServerState::Trying
            },
            timers: BTreeMap::new(),
            interval: T1,
            last_response: None,
            acked: false,
        };
        if invite {
            let trying = Response::to_request(request, 100, None).to_bytes();
            self.out.push((from, trying.clone()));
            s.last_response = Some(trying);
        } else {
            s.timers.insert(Timer::Guard, now + T64);
        }
        self.servers.insert(id, s);
        self.received.push((id, request.clone()));
        self.events.push(Ev::Request {
            tx: id,
            method: method.to_owned(),
            cseq,
            cancels,
        });
    }

    /// An ACK with the key of an INVITE server transaction.
    fn ack_matched(&mut self, now: Instant, id: ServerTxId, cseq: u32) {
        let s = self.servers.get_mut(&id).unwrap();
        match s.state {
            ServerState::Completed => {
                s.state = ServerState::Confirmed;
                s.timers.clear();
                if s.destination.is_reliable() {
                    self.end_server(id);
                } else {
                    s.timers.insert(Timer::I, now + T4);
                }
            }
            ServerState::Accepted => self.ack_accepted(id, cseq),
            _ => {}
        }
    }

    fn ack_accepted(&mut self, id: ServerTxId, cseq: u32) {
        let s = self.servers.get_mut(&id).unwrap();
        if !s.acked {
            s.acked = true;
            s.timers.remove(&Timer::Retx2xx);
            self.events.push(Ev::Ack { tx: Some(id), cseq });
        }
    }

    fn answer(&mut self, now: Instant, id: ServerTxId, response: &Response) -> Result<(), TxError> {
        let s = self
            .servers
            .get_mut(&id)
            .ok_or(TxError::UnknownTransaction)?;
        let status = response.status;
        let reliable = s.destination.is_reliable();
        let mut end = false;
        match (s.invite, s.state, status) {
            (true, ServerState::Proceeding, 100..=199)
            | (true, ServerState::Accepted, 200..=299) => {}
            (true, ServerState::Proceeding, 200..=299) => {
                // §13.3.1.4: the 2xx is re-sent until the ACK, on any transport.
                s.state = ServerState::Accepted;
                s.interval = T1;
                s.timers.insert(Timer::Retx2xx, now + T1);
                s.timers.insert(Timer::L, now + T64);
                self.accepted.insert(s.cseq, id);
            }
            (true, ServerState::Proceeding, 300..=699) => {
                s.state = ServerState::Completed;
                s.interval = T1;
                if !reliable {
                    s.timers.insert(Timer::G, now + T1);
                }
                s.timers.insert(Timer::H, now + T64);
            }
            (false, ServerState::Trying | ServerState::Proceeding, 100..=199) => {
                s.state = ServerState::Proceeding;
            }
            (false, ServerState::Trying | ServerState::Proceeding, 200..=699) => {
                s.state = ServerState::Completed;
                s.timers.remove(&Timer::Guard);
                if reliable {
                    end = true;
                } else {
                    s.timers.insert(Timer::J, now + T64);
                }
            }
            (_, state, _) => {
                return Err(TxError::InvalidState {
                    status,
                    state: state_name(state),
                })
            }
        }
        let bytes = response.to_bytes();
        self.out.push((s.destination, bytes.clone()));
        s.last_response = Some(bytes);
        if end {
            self.end_server(id);
        }
        Ok(())
    }

    fn fire_server(&mut self, id: ServerTxId, now: Instant, timer: Timer) {
        let Some(s) = self.servers.get_mut(&id) else {
            return;
        };
        let tx = TxId::Server(id);
        match timer {
            Timer::G | Timer::Retx2xx => {
                if let Some(last) = &s.last_response {
                    self.out.push((s.destination, last.clone()));
                }
                s.interval = (s.interval * 2).min(T2);
                s.timers.insert(timer, now + s.interval);
            }
            Timer::H => {
                self.events.push(Ev::Timeout(tx));
                self.end_server(id);
            }
            Timer::L => {
                // Timer L ends Accepted; a 2xx never ACKed is reported (§13.3.1.4).
                if !s.acked {
                    self.events.push(Ev::Timeout(tx));
                }
                self.end_server(id);
            }
            Timer::Guard => {
                let mut refusal = Response::to_request(&s.request, 500, None);
                refusal.headers.push(HeaderName::parse("Retry-After"), "5");
                self.out.push((s.destination, refusal.to_bytes()));
                self.events.push(Ev::Timeout(tx));
                self.end_server(id);
            }
            _ => self.end_server(id),
        }
    }

    fn end_server(&mut self, id: ServerTxId) {
        if let Some(s) = self.servers.remove(&id) {
            // Only this transaction's own registration goes: a later Accepted transaction
            // with the same dialog fields may have taken the key over.
            if self.accepted.get(&s.cseq) == Some(&id) {
                self.accepted.remove(&s.cseq);
            }
            self.events.push(Ev::Terminated(TxId::Server(id)));
        }
    }

    // --- both

    /// A send of `tx` failed: it alone ends with `TransportError` (none for the layer's own
    /// CANCELs), unless it is a client transaction that already passed its final up.
    fn send_failed(&mut self, tx: TxId) {
        match tx {
            TxId::Client(id) => {
                let Some(c) = self.clients.get(&id) else {
                    return;
                };
                if matches!(c.state, ClientState::Completed | ClientState::Accepted) {
                    return;
                }
                if !c.internal {
                    self.events.push(Ev::TransportError(tx));
                }
                self.end_client(id);
            }
            TxId::Server(id) => {
                if self.servers.contains_key(&id) {
                    self.events.push(Ev::TransportError(tx));
                    self.end_server(id);
                }
            }
        }
    }

    /// Fires every timer due at or before `now`, earliest first. A timer re-armed while
    /// firing counts from `now`, so each fires at most once per call (as in the layer).
    fn advance(&mut self, now: Instant) {
        loop {
            let clients = self.clients.iter().flat_map(|(id, c)| {
                c.timers
                    .iter()
                    .map(|(t, at)| (*at, t.rank(), TxId::Client(*id), *t))
            });
            let servers = self.servers.iter().flat_map(|(id, s)| {
                s.timers
                    .iter()
                    .map(|(t, at)| (*at, t.rank(), TxId::Server(*id), *t))
            });
            let Some((_, _, tx, timer)) = clients.chain(servers).filter(|e| e.0 <= now).min()
            else {
                return;
            };
            match tx {
                TxId::Client(id) => {
                    self.clients.get_mut(&id).unwrap().timers.remove(&timer);
                    self.fire_client(now, id, timer);
                }
                TxId::Server(id) => {
                    self.servers.get_mut(&id).unwrap().timers.remove(&timer);
                    self.fire_server(id, now, timer);
                }
            }
        }
    }
}

/// Compares what the layer did since the last check with what the model predicted.
fn check(
    layer: &mut TransactionLayer,
    model: &mut Model,
    terminated: &mut HashMap<TxId, u32>,
    what: &str,
) -> Result<(), TestCaseError> {
    // Order across transactions is not part of the contract: compare transmissions as a
    // multiset, and events as per-transaction sequences.
    let wire = |v: Vec<(Peer, Bytes)>| {
        let mut v: Vec<(String, String)> = v
            .into_iter()
            .map(|(to, b)| (format!("{to:?}"), String::from_utf8_lossy(&b).into_owned()))
            .collect();
        v.sort();
        v
    };
    let got = wire(
        std::iter::from_fn(|| layer.poll_transmit())
            .map(|t| (t.to, t.bytes))
            .collect(),
    );
    let want = wire(std::mem::take(&mut model.out));
    prop_assert_eq!(got, want, "transmitted after {}", what);

    let mut got: Vec<Ev> = std::iter::from_fn(|| layer.poll_event())
        .map(Ev::of)
        .collect();
    let mut want = std::mem::take(&mut model.events);
    got.sort_by_key(Ev::tx);
    want.sort_by_key(Ev::tx);
    prop_assert_eq!(&got, &want, "events after {}", what);
    for event in &got {
        if let Ev::Terminated(id) = event {
            *terminated.entry(*id).or_default() += 1;
        }
    }

    for (id, c) in &model.clients {
        prop_assert_eq!(
            layer.client_state(*id),
            Some(c.state),
            "{:?} after {}",
            id,
            what
        );
    }
    for (id, s) in &model.servers {
        prop_assert_eq!(
            layer.server_state(*id),
            Some(s.state),
            "{:?} after {}",
            id,
            what
        );
    }
    prop_assert_eq!(
        layer.client_count(),
        model.clients.len(),
        "clients after {}",
        what
    );
    prop_assert_eq!(
        layer.server_count(),
        model.servers.len(),
        "servers after {}",
        what
    );
    prop_assert_eq!(
        layer.poll_timeout(),
        model.next_deadline(),
        "next deadline after {}",
        what
    );
    Ok(())
}

fn run(ops: Vec<Op>, timer_c: Option<Duration>) -> Result<(), TestCaseError> {
    let mut layer = TransactionLayer::new(TransactionConfig {
        timers: TimerConfig {
            t1: T1,
            t2: T2,
            t4: T4,
            timer_d: TIMER_D,
            timer_c,
        },
        ..TransactionConfig::default()
    });
    let mut model = Model::new(timer_c);
    let mut terminated = HashMap::new();
    let mut now = Instant::now();

    for op in ops {
        let what = format!("{op:?}");
        match op {
            Op::Incoming(m, branch, cseq, tcp) => {
                let request = parse_request(&incoming_text(METHODS[m], branch, cseq, tcp));
                model.request(now, METHODS[m], branch, cseq, tcp, &request);
                let result = layer.handle_message(now, Message::Request(request), peer(tcp));
                prop_assert_eq!(result, Ok(()), "{}", what);
            }
            Op::Reply(i, status, any_tx) => {
                let target = if any_tx {
                    model.sent.get(i % model.sent.len().max(1)).cloned()
                } else {
                    let live = model.clients.iter().map(|(id, c)| (*id, c.request.clone()));
                    live.cycle().nth(i)
                };
                if let Some((id, request)) = target {
                    let response = tagged(Response::to_request(&request, status, None));
                    model.response(now, id, &response);
                    let result =
                        layer.handle_message(now, Message::Response(response), peer(false));
                    prop_assert_eq!(result, Ok(()), "{}", what);
                }
            }
            Op::Send(m, tcp) => {
                let want = model.expected_send(METHODS[m]);
                let got = layer.send_request(now, outgoing(METHODS[m]), peer(tcp));
                prop_assert_eq!(&got, &want, "{}", what);
                if let Ok(id) = got {
                    let request = layer.client_request(id).unwrap().clone();
                    model.start_client(now, request, peer(tcp), false);
                }
            }
            Op::Answer(i, status, any_tx) => {
                let target = if any_tx {
                    model.received.get(i % model.received.len().max(1)).cloned()
                } else {
                    let live = model.servers.iter().map(|(id, s)| (*id, s.request.clone()));
                    live.cycle().nth(i)
                };
                if let Some((id, request)) = target {
                    let response = tagged(Response::to_request(&request, status, None));
                    let want = model.answer(now, id, &response);
                    prop_assert_eq!(layer.send_response(now, id, response), want, "{}", what);
                }
            }
            Op::Cancel(i) => {
                if let Some((id, _)) = model.sent.get(i % model.sent.len().max(1)).cloned() {
                    let want = model.cancel(now, id);
                    prop_assert_eq!(layer.cancel(now, id), want, "{}", what);
                }
            }
            Op::TransportError(i, client) => {
                let target = if client {
                    let sent = model.sent.get(i % model.sent.len().max(1));
                    sent.map(|(id, _)| TxId::Client(*id))
                } else {
                    let received = model.received.get(i % model.received.len().max(1));
                    received.map(|(id, _)| TxId::Server(*id))
                };
                if let Some(tx) = target {
                    model.send_failed(tx);
                    layer.on_send_failed(now, tx);
                }
            }
            Op::Advance(ms) => {
                now += Duration::from_millis(ms);
                model.advance(now);
                layer.handle_timeout(now);
            }
        }
        check(&mut layer, &mut model, &mut terminated, &what)?;
    }

    // The user's duties, and only those: a final response for every INVITE it left in
    // Proceeding, a CANCEL for every INVITE of its own stuck in Proceeding (no Timer C).
    let unanswered: Vec<_> = model
        .servers
        .iter()
        .filter(|(_, s)| s.invite && s.state == ServerState::Proceeding)
        .map(|(id, s)| (*id, s.request.clone()))
        .collect();
    for (id, request) in unanswered {
        let response = tagged(Response::to_request(&request, 486, None));
        let want = model.answer(now, id, &response);
        prop_assert_eq!(layer.send_response(now, id, response), want);
        check(&mut layer, &mut model, &mut terminated, "final answers")?;
    }
    if timer_c.is_none() {
        let stuck: Vec<_> = model
            .clients
            .iter()
            .filter(|(_, c)| c.invite && c.state == ClientState::Proceeding)
            .filter(|(_, c)| !c.cancelled)
            .map(|(id, _)| *id)
            .collect();
        for id in stuck {
            let want = model.cancel(now, id);
            prop_assert_eq!(layer.cancel(now, id), want);
            check(&mut layer, &mut model, &mut terminated, "final cancels")?;
        }
    }
    // Now nothing but the clock is needed. The model checks each deadline the layer asks for;
    // the step bound only keeps a broken layer from looping forever.
    let mut steps = 0;
    while let Some(deadline) = layer.poll_timeout() {
        steps += 1;
        prop_assert!(steps < 1_000, "timers never run out");
        now = deadline;
        model.advance(now);
        layer.handle_timeout(now);
        check(
            &mut layer,
            &mut model,
            &mut terminated,
            "running out the clock",
        )?;
    }
    prop_assert!(model.clients.is_empty() && model.servers.is_empty());
    prop_assert_eq!(layer.client_count(), 0);
    prop_assert_eq!(layer.server_count(), 0);
    prop_assert_eq!(layer.timer_entries(), 0);
    // Every transaction the user saw ended exactly once.
    let visible: BTreeSet<TxId> = model
        .sent
        .iter()
        .filter(|(id, _)| !model.internal.contains(id))
        .map(|(id, _)| TxId::Client(*id))
        .chain(model.received.iter().map(|(id, _)| TxId::Server(*id)))
        .collect();
    let ended: BTreeSet<TxId> = terminated.keys().copied().collect();
    prop_assert_eq!(ended, visible);
    prop_assert!(terminated.values().all(|&n| n == 1), "{:?}", terminated);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_traffic_matches_the_rfc_3261_model(
        ops in proptest::collection::vec(op(), 1..80),
        timer_c in proptest::option::of((5..60u64).prop_map(Duration::from_secs)),
    ) {
        run(ops, timer_c)?;
    }
}

fn mutated_requests_end(mutations: Vec<(usize, u8, usize, bool)>) -> Result<(), TestCaseError> {
    let mut layer = TransactionLayer::new(TransactionConfig::default());
    let mut now = Instant::now();
    let limits = ParseLimits::default();
    let mut requests = HashMap::new();
    for (pos, byte, method, answer) in mutations {
        let mut bytes = incoming_text(METHODS[method], pos % 4, 1, pos % 7 == 0).into_bytes();
        let at = pos % bytes.len();
        bytes[at] = byte;
        if let Ok(message) = Message::parse(&bytes, &limits) {
            let _ = layer.handle_message(now, message, peer(false));
        }
        while layer.poll_transmit().is_some() {}
        while let Some(event) = layer.poll_event() {
            if let TxEvent::Request { tx, request, .. } = event {
                if answer {
                    let response = tagged(Response::to_request(&request, 486, None));
                    let _ = layer.send_response(now, tx, response);
                }
                requests.insert(tx, request);
            }
        }
        now += Duration::from_millis(700);
        layer.handle_timeout(now);
    }
    // An INVITE server transaction in Proceeding waits for the user; everything else ends on
    // its own timers.
    for (tx, request) in &requests {
        if layer.server_state(*tx) == Some(ServerState::Proceeding) {
            let response = tagged(Response::to_request(request, 486, None));
            let _ = layer.send_response(now, *tx, response);
        }
    }
    let mut steps = 0;
    while let Some(deadline) = layer.poll_timeout() {
        steps += 1;
        prop_assert!(steps < 1_000, "timers never run out");
        prop_assert!(deadline <= now + 2 * T64, "timer too far out");
        now = deadline;
        layer.handle_timeout(now);
    }
    while layer.poll_event().is_some() {}
    prop_assert_eq!(layer.client_count(), 0);
    prop_assert_eq!(layer.server_count(), 0);
    prop_assert_eq!(layer.timer_entries(), 0);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn mutated_requests_never_panic_and_never_leak(
        mutations in proptest::collection::vec(
            (0..400usize, any::<u8>(), 0..METHODS.len(), any::<bool>()),
            1..40,
        ),
    ) {
        mutated_requests_end(mutations)?;
    }
}
