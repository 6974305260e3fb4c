//! The RFC 3261 §17 transaction layer, sans-IO.
//!
//! [`TransactionLayer`] owns every client and server transaction of an endpoint. It never
//! touches a socket or a clock: the driver feeds it
//!
//! - messages received from the transport ([`TransactionLayer::handle_message`]),
//! - the current time when the deadline it asked for has passed
//!   ([`TransactionLayer::handle_timeout`], [`TransactionLayer::poll_timeout`]),
//! - requests and responses from the transaction user (the call logic),
//!
//! and drains what it produced: bytes to send ([`TransactionLayer::poll_transmit`]) and events
//! for the transaction user ([`TransactionLayer::poll_event`]). This is the quinn-proto/str0m
//! shape: the same code runs under tokio in production and under a fake clock in tests.
//!
//! What it implements:
//! - the four state machines (INVITE/non-INVITE × client/server) with Timers A–K, and the
//!   RFC 6026 Accepted state with Timers L and M;
//! - 2xx retransmission by the INVITE server transaction until the ACK arrives (the UAS-core
//!   duty of RFC 3261 §13.3.1.4, kept here so the call logic never runs timers of its own);
//! - matching per §17.1.3/§17.2.3, with the RFC 2543 fallback, CANCEL → the INVITE it cancels,
//!   and the ACK for a 2xx → the INVITE transaction retransmitting that 2xx;
//! - CANCEL generation per §9.1, deferred until the first provisional response;
//! - one timer heap for all transactions (see `timer.rs`).
//!
//! Where it lives:
//! - `mod.rs` (here): [`TransactionLayer`] and the types shared by both sides (ids, config,
//!   events, stats, errors), and the dispatch: [`handle_message`](TransactionLayer::handle_message)
//!   sends requests to the server side and responses to the client side,
//!   [`handle_timeout`](TransactionLayer::handle_timeout) fires each due timer on its side,
//!   the `poll_*` outputs, and failed sends, which end the one transaction that made them.
//! - `client.rs`: client transactions (Figures 5 and 6, RFC 6026 Figure 5): creation and the
//!   Via we add, the stateless ACK for a 2xx, CANCEL, response handling and Timers A–F, K, M
//!   and C, with the INVITE and non-INVITE machines as separate functions.
//! - `server.rs`: server transactions (Figures 7 and 8, RFC 6026 Figure 7): request matching
//!   and retransmission absorption, `100 Trying`, sending responses, ACK handling (for a
//!   non-2xx, and for a 2xx by dialog), Timers G–J and L and the unanswered-request guard,
//!   INVITE and non-INVITE again apart.
//! - `key.rs`: the matching keys of §17.1.3/§17.2.3; `timer.rs`: timer values and the queue.
//!
//! The CANCEL and the ACK for a non-2xx are built by [`build_cancel`] and
//! [`build_ack_for_non_2xx`], which live in [`crate::message`] and are re-exported here.

mod client;
mod key;
mod server;
mod stateless;
mod timer;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;

use crate::message::{Message, Request, Response};
use crate::peer::{Peer, Transmit};

pub use crate::peer::MAX_UDP_PAYLOAD;

use client::ClientTx;
use key::{AckKey, ClientKey, ServerKey};
use server::ServerTx;
use timer::Slot;

pub use client::ClientState;
pub use server::ServerState;
pub use timer::{TimerConfig, TimerQueue};

/// Re-exported from [`crate::message`], where they live, for callers that found them here.
pub use crate::message::{build_ack_for_non_2xx, build_cancel};

/// Identifies a client transaction (a request we sent) for the lifetime of the layer.
///
/// It exists so that the transaction user can refer to "that INVITE I sent" (to cancel it, to
/// match the [`TxEvent`]s about it) without holding a reference into the layer; ids are never
/// reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientTxId(pub u64);

/// Identifies a server transaction (a request we received).
///
/// It exists so that the transaction user can answer a request later
/// ([`TransactionLayer::send_response`]) by naming it; ids are never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerTxId(pub u64);

/// Either kind of transaction, for events that concern both.
///
/// It exists for [`TxEvent::Timeout`], [`TxEvent::TransportError`] and
/// [`TxEvent::Terminated`], and as the timer queue's key: the two id spaces overlap, so the
/// side must be part of the id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TxId {
    Client(ClientTxId),
    Server(ServerTxId),
}

/// Settings of the transaction layer.
///
/// It exists so that the timers (short in tests, RFC values in production) and the Via we
/// advertise are chosen by whoever builds the layer, not hard-coded in it.
#[derive(Clone, Debug)]
pub struct TransactionConfig {
    pub timers: TimerConfig,
    /// Host written into the Via of requests we originate (our advertised address).
    pub via_host: String,
    /// Port written into that Via (`None` leaves the default port implicit).
    pub via_port: Option<u16>,
    /// Answer every new INVITE with `100 Trying` at once (RFC 3261 §17.2.1 allows waiting
    /// 200 ms; a B2BUA forwards the call and never answers that fast, so sending it at once
    /// stops the caller's Timer A retransmissions early).
    pub send_100_trying: bool,
    /// A request bound for UDP that is larger than this (in bytes) goes over TCP instead
    /// (RFC 3261 §18.1.1: 1300 when the path MTU is unknown, else MTU − 200). It is decided
    /// here and not in the transport because §18.1.1 wants the top Via to name the transport
    /// really used, and because the transport decides the transaction's timers (no Timer A/E
    /// over TCP): both are the transaction's. Capped at [`MAX_UDP_PAYLOAD`].
    pub udp_max_request: usize,
}

impl Default for TransactionConfig {
    fn default() -> Self {
        TransactionConfig {
            timers: TimerConfig::default(),
            via_host: "127.0.0.1".into(),
            via_port: Some(5060),
            send_100_trying: true,
            udp_max_request: 1300,
        }
    }
}

/// What the transaction layer tells its user.
///
/// It exists because the layer is sans-IO: instead of calling back into the user, it queues
/// these for [`TransactionLayer::poll_event`], in the order they happened.
#[derive(Clone, Debug, PartialEq)]
pub enum TxEvent {
    /// A new request (not a retransmission). For a CANCEL, `cancels` is the INVITE server
    /// transaction it matches, if that still exists; the user answers the CANCEL (200, or 481
    /// when `cancels` is `None`) and the INVITE (487).
    Request {
        tx: ServerTxId,
        request: Request,
        from: Peer,
        cancels: Option<ServerTxId>,
    },
    /// An ACK that is not absorbed by a transaction: the ACK for a 2xx. `tx` is the INVITE
    /// server transaction whose 2xx it acknowledges (its retransmissions have now stopped), or
    /// `None` when none matches (a late or stray ACK; match it to a dialog).
    Ack {
        tx: Option<ServerTxId>,
        request: Request,
        from: Peer,
    },
    /// A response for one of our client transactions. Retransmitted non-2xx finals are
    /// absorbed; every 2xx is passed up (RFC 6026: the user ACKs each).
    Response {
        tx: ClientTxId,
        response: Response,
        from: Peer,
    },
    /// A response that matches no client transaction, e.g. a 2xx retransmitted after Timer M.
    StrayResponse { response: Response, from: Peer },
    /// Timer B/F (no final response), C (no final after a provisional), H (no ACK for a
    /// non-2xx), L without an ACK for a 2xx, or a server non-INVITE the user never answered.
    Timeout(TxId),
    /// A send of this transaction failed ([`TransactionLayer::on_send_failed`]); the
    /// transaction has ended.
    TransportError(TxId),
    /// The transaction is gone; its id will never be seen again.
    Terminated(TxId),
}

/// Why a call into the transaction layer was refused.
///
/// It exists so that a refusal leaves the layer unchanged and tells the caller what it got
/// wrong (or, for [`handle_message`](TransactionLayer::handle_message), that the message was
/// dropped and counted).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    #[error("no such transaction")]
    UnknownTransaction,
    #[error("an ACK is not a transaction; use send_stateless_request")]
    AckIsNotATransaction,
    #[error("top Via has no RFC 3261 branch")]
    NoBranch,
    #[error("a transaction with this branch and method already exists")]
    DuplicateTransaction,
    #[error("response {status} not allowed in state {state:?}")]
    InvalidState { status: u16, state: &'static str },
    #[error("only an INVITE client transaction can be cancelled")]
    NotAnInvite,
    #[error("message cannot be matched to a transaction: {0}")]
    Unmatchable(&'static str),
    #[error("response for a client transaction from another address than its peer")]
    WrongSource,
}

/// Counters of the layer, for metrics.
///
/// It exists so that what the layer handles without telling its user (retransmissions,
/// absorbed copies, strays, dropped garbage) can still be counted, through
/// [`TransactionLayer::stats`]. (Tests read it; no metric exports it yet.)
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransactionStats {
    /// Requests or responses we re-sent on a timer.
    pub retransmissions: u64,
    /// Retransmitted requests/responses from peers that were absorbed.
    pub absorbed: u64,
    /// Transactions that timed out (Timers B, F, H, C, L without ACK, the unanswered guard).
    pub timeouts: u64,
    /// Responses that matched no client transaction.
    pub stray_responses: u64,
    /// ACKs that matched no server transaction.
    pub stray_acks: u64,
    /// Messages that could not be keyed (no usable Via/CSeq) and were dropped.
    pub unmatchable: u64,
    /// Responses sent without a transaction ([`TransactionLayer::send_stateless_response`]).
    pub stateless_responses: u64,
    /// Responses whose branch matched a client transaction but which came from another IP
    /// than the one the request was sent to: dropped, never shown to the transaction
    /// (a response is accepted only from the leg's peer).
    pub wrong_source_responses: u64,
    /// Failed sends reported for live transactions ([`TransactionLayer::on_send_failed`]).
    pub transport_errors: u64,
    /// Requests sent over TCP instead of UDP because of their size (§18.1.1).
    pub upgraded_to_tcp: u64,
    /// Of those, requests retried over UDP because TCP failed before any response.
    pub udp_fallbacks: u64,
}

/// What the state machines produce besides their own state: timer deadlines, bytes to send,
/// events for the user, counters. Kept apart from the transaction tables so that a machine can
/// hold its transaction (borrowed from `clients` or `servers`) and write here at the same time.
#[derive(Default)]
struct Output {
    timers: TimerQueue<(TxId, Slot)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<TxEvent>,
    stats: TransactionStats,
}

impl Output {
    /// Queues bytes for the wire. `origin` is the transaction that sends them: a failed send
    /// comes back as [`TransactionLayer::on_send_failed`] for it alone.
    fn transmit(&mut self, to: Peer, bytes: Bytes, origin: Option<TxId>) {
        self.transmits.push_back(Transmit { to, bytes, origin });
    }

    fn event(&mut self, event: TxEvent) {
        self.events.push_back(event);
    }
}

/// All transactions of one endpoint. See the module documentation.
///
/// It exists so that the call logic deals in requests, responses and a handful of events, while
/// retransmissions, absorption of copies, ACKs for non-2xx finals, CANCEL timing and every
/// RFC 3261 timer are handled in one sans-IO place that tests can drive with a fake clock.
pub struct TransactionLayer {
    config: TransactionConfig,
    next_id: u64,
    clients: HashMap<ClientTxId, ClientTx>,
    client_keys: HashMap<ClientKey, ClientTxId>,
    servers: HashMap<ServerTxId, ServerTx>,
    server_keys: HashMap<ServerKey, ServerTxId>,
    /// INVITE server transactions in Accepted, by the dialog fields their 2xx's ACK repeats.
    accepted_by_dialog: HashMap<AckKey, ServerTxId>,
    out: Output,
}

impl TransactionLayer {
    pub fn new(config: TransactionConfig) -> TransactionLayer {
        TransactionLayer {
            config,
            next_id: 1,
            clients: HashMap::new(),
            client_keys: HashMap::new(),
            servers: HashMap::new(),
            server_keys: HashMap::new(),
            accepted_by_dialog: HashMap::new(),
            out: Output::default(),
        }
    }

    pub fn config(&self) -> &TransactionConfig {
        &self.config
    }

    /// Live client transactions (CANCELs the layer sent included).
    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// Live server transactions.
    pub fn server_count(&self) -> usize {
        self.servers.len()
    }

    /// Server transactions that still owe their peer something: an answer not yet sent, or an
    /// INVITE's final response still retransmitted until its ACK. The others only absorb
    /// copies (Timers J, I, L) until they end. A stopping endpoint waits for these, not for
    /// those: an OPTIONS prober (a dispatcher probing every second) keeps a completed
    /// transaction alive at all times, for 64·T1 each.
    pub fn server_owing_count(&self) -> usize {
        self.servers.values().filter(|tx| tx.owes_peer()).count()
    }

    pub fn stats(&self) -> &TransactionStats {
        &self.out.stats
    }

    pub fn client_state(&self, tx: ClientTxId) -> Option<ClientState> {
        self.clients.get(&tx).map(|t| t.state)
    }

    pub fn server_state(&self, tx: ServerTxId) -> Option<ServerState> {
        self.servers.get(&tx).map(|t| t.state)
    }

    /// The request a client transaction sent (with the Via the layer added), until a final
    /// response arrives (then the layer no longer keeps it).
    pub fn client_request(&self, tx: ClientTxId) -> Option<&Request> {
        self.clients.get(&tx).and_then(|t| t.request.as_ref())
    }

    /// Next bytes to put on the wire.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.transmits.pop_front()
    }

    /// Next event for the transaction user.
    pub fn poll_event(&mut self) -> Option<TxEvent> {
        self.out.events.pop_front()
    }

    /// The earliest deadline the layer needs [`handle_timeout`](Self::handle_timeout) called at.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let (clients, servers) = (&self.clients, &self.servers);
        self.out
            .timers
            .next_armed(|at, (tx, slot)| armed_at(clients, servers, tx, slot) == Some(at))
    }

    /// Fires every timer due at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        loop {
            let (clients, servers) = (&self.clients, &self.servers);
            let Some((_, (tx, slot))) = self.out.timers.pop_due(now, |at, (tx, slot)| {
                armed_at(clients, servers, tx, slot) == Some(at)
            }) else {
                break;
            };
            match tx {
                TxId::Client(id) => {
                    if let Some(t) = self.clients.get_mut(&id) {
                        t.armed.clear(slot);
                    }
                    self.client_timer(now, id, slot);
                }
                TxId::Server(id) => {
                    if let Some(t) = self.servers.get_mut(&id) {
                        t.armed.clear(slot);
                    }
                    self.server_timer(now, id, slot);
                }
            }
        }
        if self.clients.is_empty() && self.servers.is_empty() {
            // Everything left in the heap is stale.
            self.out.timers.clear();
        }
    }

    /// Timer entries held, stale ones included (bounded by the live transactions' timers).
    pub fn timer_entries(&self) -> usize {
        self.out.timers.len()
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Feeds a message received from `from`. Retransmissions are absorbed here; new requests,
    /// ACKs for 2xx and responses come out of [`poll_event`](Self::poll_event).
    pub fn handle_message(
        &mut self,
        now: Instant,
        message: Message,
        from: Peer,
    ) -> Result<(), TxError> {
        match message {
            Message::Request(request) => self.handle_request(now, request, from),
            Message::Response(response) => self.handle_response(now, response, from),
        }
    }

    /// A send made by transaction `tx` failed (the transport's `SendFailed` for a
    /// [`Transmit`] whose `origin` was `tx`): RFC 3261 §17.1.4 and §17.2.4, the transaction
    /// is told and ends with [`TxEvent::TransportError`]. Only that transaction: others with
    /// the same peer are untouched, since one failed send (a full write queue, an oversize
    /// datagram) says nothing about theirs.
    ///
    /// Two exceptions, both client side. A request moved from UDP to TCP for its size
    /// (§18.1.1) that has had no response yet is retried over UDP instead, as §18.1.1 asks
    /// when the connection cannot be made. And a client transaction that already passed its
    /// final response up (Completed, Accepted) has nothing left to tell the user: a failed
    /// ACK is counted and the transaction runs on (a retransmitted final is ACKed again).
    /// A `tx` that has already ended is ignored.
    pub fn on_send_failed(&mut self, now: Instant, tx: TxId) {
        match tx {
            TxId::Client(id) => {
                let Some(t) = self.clients.get_mut(&id) else {
                    return;
                };
                self.out.stats.transport_errors += 1;
                if matches!(t.state, ClientState::Completed | ClientState::Accepted) {
                    return;
                }
                if t.fall_back_to_udp(now, id, &self.config.timers, &mut self.out) {
                    return;
                }
                if !t.internal {
                    self.out.event(TxEvent::TransportError(tx));
                }
                self.terminate_client(id);
            }
            TxId::Server(id) => {
                if !self.servers.contains_key(&id) {
                    return;
                }
                self.out.stats.transport_errors += 1;
                self.out.event(TxEvent::TransportError(tx));
                self.terminate_server(id);
            }
        }
    }
}

/// The deadline `slot` of transaction `tx` has armed, if the transaction is still alive: what
/// tells the timer queue's live entries from its stale ones.
fn armed_at(
    clients: &HashMap<ClientTxId, ClientTx>,
    servers: &HashMap<ServerTxId, ServerTx>,
    tx: TxId,
    slot: Slot,
) -> Option<Instant> {
    match tx {
        TxId::Client(id) => clients.get(&id)?.armed.get(slot),
        TxId::Server(id) => servers.get(&id)?.armed.get(slot),
    }
}
