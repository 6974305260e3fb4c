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

mod key;
mod timer;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::ids::new_branch;
use crate::message::{HeaderName, Message, Method, Request, Response, Via};
use crate::peer::{response_destination, Peer, Transmit};

use key::{AckKey, ClientKey, ServerKey};
use timer::{Armed, Slot};

pub use timer::{TimerConfig, TimerQueue};

/// Re-exported from [`crate::message`], where they now live, for callers that found them here.
pub use crate::message::{build_ack_for_non_2xx, build_cancel};

/// Identifies a client transaction (a request we sent) for the lifetime of the layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientTxId(pub u64);

/// Identifies a server transaction (a request we received).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerTxId(pub u64);

/// Either kind of transaction, for events that concern both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TxId {
    Client(ClientTxId),
    Server(ServerTxId),
}

/// Settings of the transaction layer.
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
}

impl Default for TransactionConfig {
    fn default() -> Self {
        TransactionConfig {
            timers: TimerConfig::default(),
            via_host: "127.0.0.1".into(),
            via_port: Some(5060),
            send_100_trying: true,
        }
    }
}

/// What the transaction layer tells its user.
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
    /// The transport could not deliver to this transaction's peer.
    TransportError(TxId),
    /// The transaction is gone; its id will never be seen again.
    Terminated(TxId),
}

/// Why a call into the transaction layer was refused.
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
}

/// State of a client transaction (RFC 3261 Figures 5 and 6, RFC 6026 Figure 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientState {
    /// INVITE sent, no response yet (Timers A and B run).
    Calling,
    /// Non-INVITE sent, no response yet (Timers E and F run).
    Trying,
    /// A provisional response arrived.
    Proceeding,
    /// A final response arrived (non-2xx for INVITE); absorbing retransmissions (D or K).
    Completed,
    /// A 2xx to the INVITE arrived; further 2xx are passed up until Timer M.
    Accepted,
}

/// State of a server transaction (RFC 3261 Figures 7 and 8, RFC 6026 Figure 7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerState {
    /// Non-INVITE received, no response sent yet.
    Trying,
    /// Provisional sent (INVITE server transactions start here).
    Proceeding,
    /// Final sent (non-2xx for INVITE): retransmitting it (G) until ACK, or absorbing (J).
    Completed,
    /// 2xx to the INVITE sent: retransmitting it until the ACK, absorbing INVITE copies (L).
    Accepted,
    /// ACK for the non-2xx received; absorbing ACK copies (Timer I).
    Confirmed,
}

/// Counters of the layer, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransactionStats {
    /// Requests or responses we re-sent on a timer.
    pub retransmissions: u64,
    /// Retransmitted requests/responses from peers that were absorbed.
    pub absorbed: u64,
    pub timeouts: u64,
    pub stray_responses: u64,
    pub stray_acks: u64,
    /// Messages that could not be keyed (no usable Via/CSeq) and were dropped.
    pub unmatchable: u64,
}

struct ClientTx {
    key: ClientKey,
    invite: bool,
    state: ClientState,
    request: Request,
    bytes: Bytes,
    to: Peer,
    interval: Duration,
    /// The ACK for a non-2xx final, re-sent when the final is retransmitted.
    ack: Option<Bytes>,
    /// CANCEL requested before any provisional arrived (§9.1: wait for one).
    cancel_pending: bool,
    cancelled: bool,
    /// CANCEL transactions are created by the layer itself and report nothing.
    internal: bool,
    timer_c_fired: bool,
    armed: Armed,
}

struct ServerTx {
    key: ServerKey,
    invite: bool,
    state: ServerState,
    destination: Peer,
    last_response: Option<Bytes>,
    interval: Duration,
    ack_key: Option<AckKey>,
    acked: bool,
    /// For a non-INVITE: the 500 sent if the user never answers within 64·T1.
    unanswered: Option<Bytes>,
    armed: Armed,
}

/// All transactions of one endpoint. See the module documentation.
pub struct TransactionLayer {
    config: TransactionConfig,
    next_id: u64,
    clients: HashMap<ClientTxId, ClientTx>,
    client_keys: HashMap<ClientKey, ClientTxId>,
    servers: HashMap<ServerTxId, ServerTx>,
    server_keys: HashMap<ServerKey, ServerTxId>,
    /// INVITE server transactions in Accepted, by the dialog fields their 2xx's ACK repeats.
    accepted_by_dialog: HashMap<AckKey, ServerTxId>,
    timers: TimerQueue<(TxId, Slot)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<TxEvent>,
    stats: TransactionStats,
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
            timers: TimerQueue::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: TransactionStats::default(),
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

    pub fn stats(&self) -> &TransactionStats {
        &self.stats
    }

    pub fn client_state(&self, tx: ClientTxId) -> Option<ClientState> {
        self.clients.get(&tx).map(|t| t.state)
    }

    pub fn server_state(&self, tx: ServerTxId) -> Option<ServerState> {
        self.servers.get(&tx).map(|t| t.state)
    }

    /// The request a client transaction sent (with the Via the layer added).
    pub fn client_request(&self, tx: ClientTxId) -> Option<&Request> {
        self.clients.get(&tx).map(|t| &t.request)
    }

    /// Next bytes to put on the wire.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Next event for the transaction user.
    pub fn poll_event(&mut self) -> Option<TxEvent> {
        self.events.pop_front()
    }

    /// The earliest deadline the layer needs [`handle_timeout`](Self::handle_timeout) called at.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let (clients, servers) = (&self.clients, &self.servers);
        self.timers
            .next_armed(|at, (tx, slot)| armed_at(clients, servers, tx, slot) == Some(at))
    }

    /// Fires every timer due at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        loop {
            let (clients, servers) = (&self.clients, &self.servers);
            let Some((_, (tx, slot))) = self.timers.pop_due(now, |at, (tx, slot)| {
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
            self.timers.clear();
        }
    }

    /// Timer entries held, stale ones included (bounded by the live transactions' timers).
    pub fn timer_entries(&self) -> usize {
        self.timers.len()
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

    // ----- client side -------------------------------------------------------------------

    /// Starts a client transaction for `request` towards `to`. A top Via is added (our host,
    /// a fresh branch, `rport`) unless the request already has one with an RFC 3261 branch.
    pub fn send_request(
        &mut self,
        now: Instant,
        request: Request,
        to: Peer,
    ) -> Result<ClientTxId, TxError> {
        self.start_client(now, request, to, false)
    }

    fn start_client(
        &mut self,
        now: Instant,
        mut request: Request,
        to: Peer,
        internal: bool,
    ) -> Result<ClientTxId, TxError> {
        if request.method == Method::Ack {
            return Err(TxError::AckIsNotATransaction);
        }
        let branch = self.ensure_via(&mut request, &to)?;
        let key = ClientKey::new(&branch, request.method.clone());
        if self.client_keys.contains_key(&key) {
            return Err(TxError::DuplicateTransaction);
        }
        let id = ClientTxId(self.next_id());
        let invite = request.method == Method::Invite;
        let bytes = request.to_bytes();
        let timers = &self.config.timers;
        let mut tx = ClientTx {
            key: key.clone(),
            invite,
            state: if invite {
                ClientState::Calling
            } else {
                ClientState::Trying
            },
            request,
            bytes: bytes.clone(),
            to,
            interval: timers.t1,
            ack: None,
            cancel_pending: false,
            cancelled: false,
            internal,
            timer_c_fired: false,
            armed: Armed::default(),
        };
        let tx_id = TxId::Client(id);
        if !to.is_reliable() {
            // Timer A (INVITE) or E (non-INVITE).
            self.timers
                .arm(&mut tx.armed, tx_id, Slot::Retransmit, now + timers.t1);
        }
        // Timer B or F.
        self.timers
            .arm(&mut tx.armed, tx_id, Slot::Timeout, now + timers.timeout());
        self.client_keys.insert(key, id);
        self.clients.insert(id, tx);
        self.transmits.push_back(Transmit { to, bytes });
        Ok(id)
    }

    /// Adds our Via when the request has none; returns the branch of the top Via.
    fn ensure_via(&self, request: &mut Request, to: &Peer) -> Result<String, TxError> {
        if request.headers.contains(&HeaderName::Via) {
            let via = request
                .headers
                .top_via()
                .map_err(|_| TxError::Unmatchable("top Via unparseable"))?;
            return match via.branch() {
                Some(b) if via.has_rfc3261_branch() => Ok(b.to_owned()),
                _ => Err(TxError::NoBranch),
            };
        }
        let branch = new_branch();
        let mut via = Via::new(
            to.transport,
            &self.config.via_host,
            self.config.via_port,
            &branch,
        );
        via.params.push("rport", None);
        request.headers.push_front(HeaderName::Via, via.to_string());
        Ok(branch)
    }

    /// Sends a request outside any transaction: the ACK for a 2xx (§13.2.2.4), which is its
    /// own hop-by-hop message with a fresh branch. A Via is added when the request has none.
    pub fn send_stateless_request(
        &mut self,
        mut request: Request,
        to: Peer,
    ) -> Result<(), TxError> {
        self.ensure_via(&mut request, &to)?;
        self.transmits.push_back(Transmit {
            to,
            bytes: request.to_bytes(),
        });
        Ok(())
    }

    /// Cancels an INVITE client transaction (§9.1). The CANCEL goes out at once when a
    /// provisional response has arrived, or as soon as one does; nothing is sent when the
    /// INVITE already has a final response. Either way the INVITE transaction now ends at the
    /// latest 64·T1 from here, with `Timeout` if no final response came.
    pub fn cancel(&mut self, now: Instant, tx: ClientTxId) -> Result<(), TxError> {
        let t = self
            .clients
            .get_mut(&tx)
            .ok_or(TxError::UnknownTransaction)?;
        if !t.invite {
            return Err(TxError::NotAnInvite);
        }
        if t.cancelled || t.cancel_pending {
            return Ok(());
        }
        match t.state {
            ClientState::Calling => {
                t.cancel_pending = true;
                Ok(())
            }
            ClientState::Proceeding => {
                t.cancelled = true;
                // §9.1: without a final response 64·T1 after the CANCEL, give up. Timer C
                // (if armed) is replaced by this deadline.
                let at = now + self.config.timers.timeout();
                self.timers
                    .arm(&mut t.armed, TxId::Client(tx), Slot::Timeout, at);
                t.timer_c_fired = true;
                self.send_cancel(now, tx);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn send_cancel(&mut self, now: Instant, tx: ClientTxId) {
        let Some(t) = self.clients.get(&tx) else {
            return;
        };
        let cancel = build_cancel(&t.request);
        let to = t.to;
        // The CANCEL carries the INVITE's top Via, branch included, so it cannot collide
        // except with an earlier CANCEL of the same INVITE, which `cancelled` prevents.
        let _ = self.start_client(now, cancel, to, true);
    }

    fn handle_response(
        &mut self,
        now: Instant,
        response: Response,
        from: Peer,
    ) -> Result<(), TxError> {
        let Some(key) = ClientKey::for_response(&response) else {
            self.stats.unmatchable += 1;
            return Err(TxError::Unmatchable(
                "response without usable Via branch/CSeq",
            ));
        };
        let Some(&id) = self.client_keys.get(&key) else {
            self.stats.stray_responses += 1;
            self.events
                .push_back(TxEvent::StrayResponse { response, from });
            return Ok(());
        };
        let Some(t) = self.clients.get_mut(&id) else {
            return Ok(());
        };
        let timers = &self.config.timers;
        let tx_id = TxId::Client(id);
        let status = response.status;
        let mut pass_up = true;
        let mut terminate = false;
        let mut send_pending_cancel = false;
        if t.invite {
            match (t.state, status) {
                (ClientState::Calling | ClientState::Proceeding, 100..=199) => {
                    if t.state == ClientState::Calling {
                        t.state = ClientState::Proceeding;
                        t.armed.clear(Slot::Retransmit);
                        t.armed.clear(Slot::Timeout);
                        send_pending_cancel = std::mem::take(&mut t.cancel_pending);
                    }
                    if let (Some(c), false) = (timers.timer_c, t.timer_c_fired) {
                        self.timers.arm(&mut t.armed, tx_id, Slot::Timeout, now + c);
                    }
                }
                (ClientState::Calling | ClientState::Proceeding, 200..=299) => {
                    t.state = ClientState::Accepted;
                    t.armed.clear(Slot::Retransmit);
                    t.armed.clear(Slot::Timeout);
                    // Timer M.
                    self.timers
                        .arm(&mut t.armed, tx_id, Slot::Linger, now + timers.timeout());
                }
                (ClientState::Calling | ClientState::Proceeding, _) => {
                    t.state = ClientState::Completed;
                    t.armed.clear(Slot::Retransmit);
                    t.armed.clear(Slot::Timeout);
                    let ack = build_ack_for_non_2xx(&t.request, &response).to_bytes();
                    self.transmits.push_back(Transmit {
                        to: t.to,
                        bytes: ack.clone(),
                    });
                    t.ack = Some(ack);
                    if t.to.is_reliable() {
                        terminate = true;
                    } else {
                        // Timer D.
                        self.timers
                            .arm(&mut t.armed, tx_id, Slot::Linger, now + timers.timer_d);
                    }
                }
                (ClientState::Accepted, 200..=299) => {}
                (ClientState::Completed, 300..) => {
                    if let Some(ack) = &t.ack {
                        self.transmits.push_back(Transmit {
                            to: t.to,
                            bytes: ack.clone(),
                        });
                    }
                    self.stats.absorbed += 1;
                    pass_up = false;
                }
                _ => {
                    self.stats.absorbed += 1;
                    pass_up = false;
                }
            }
        } else {
            match (t.state, status) {
                (ClientState::Trying | ClientState::Proceeding, 100..=199) => {
                    t.state = ClientState::Proceeding;
                }
                (ClientState::Trying | ClientState::Proceeding, _) => {
                    t.state = ClientState::Completed;
                    t.armed.clear(Slot::Retransmit);
                    t.armed.clear(Slot::Timeout);
                    if t.to.is_reliable() {
                        terminate = true;
                    } else {
                        // Timer K.
                        self.timers
                            .arm(&mut t.armed, tx_id, Slot::Linger, now + timers.t4);
                    }
                }
                _ => {
                    self.stats.absorbed += 1;
                    pass_up = false;
                }
            }
        }
        if pass_up && !t.internal {
            self.events.push_back(TxEvent::Response {
                tx: id,
                response,
                from,
            });
        }
        if send_pending_cancel {
            // Deferred CANCEL (§9.1): now that a provisional arrived it may go.
            let _ = self.cancel(now, id);
        }
        if terminate {
            self.terminate_client(id);
        }
        Ok(())
    }

    fn client_timer(&mut self, now: Instant, id: ClientTxId, slot: Slot) {
        let Some(t) = self.clients.get_mut(&id) else {
            return;
        };
        let timers = &self.config.timers;
        let tx_id = TxId::Client(id);
        match slot {
            Slot::Retransmit => {
                // Timer A (doubling, INVITE) or E (doubling up to T2; T2 once Proceeding).
                let live = matches!(
                    t.state,
                    ClientState::Calling | ClientState::Trying | ClientState::Proceeding
                );
                if !live || (t.invite && t.state != ClientState::Calling) {
                    return;
                }
                self.transmits.push_back(Transmit {
                    to: t.to,
                    bytes: t.bytes.clone(),
                });
                self.stats.retransmissions += 1;
                t.interval = if t.invite {
                    t.interval * 2
                } else if t.state == ClientState::Proceeding {
                    timers.t2
                } else {
                    (t.interval * 2).min(timers.t2)
                };
                let at = now + t.interval;
                self.timers.arm(&mut t.armed, tx_id, Slot::Retransmit, at);
            }
            Slot::Timeout => {
                if t.invite
                    && t.state == ClientState::Proceeding
                    && timers.timer_c.is_some()
                    && !t.timer_c_fired
                {
                    // Timer C: tell the user (who should CANCEL), and end the transaction
                    // 64·T1 later if no final response comes.
                    t.timer_c_fired = true;
                    let at = now + timers.timeout();
                    self.timers.arm(&mut t.armed, tx_id, Slot::Timeout, at);
                    self.stats.timeouts += 1;
                    if !t.internal {
                        self.events.push_back(TxEvent::Timeout(tx_id));
                    }
                    return;
                }
                // Timer B or F, or the 64·T1 after a CANCEL.
                self.stats.timeouts += 1;
                if !t.internal {
                    self.events.push_back(TxEvent::Timeout(tx_id));
                }
                self.terminate_client(id);
            }
            Slot::Linger => self.terminate_client(id),
        }
    }

    fn terminate_client(&mut self, id: ClientTxId) {
        if let Some(t) = self.clients.remove(&id) {
            self.client_keys.remove(&t.key);
            crate::capacity::shrink_map(&mut self.clients);
            crate::capacity::shrink_map(&mut self.client_keys);
            if !t.internal {
                self.events.push_back(TxEvent::Terminated(TxId::Client(id)));
            }
        }
    }

    // ----- server side -------------------------------------------------------------------

    fn handle_request(
        &mut self,
        now: Instant,
        request: Request,
        from: Peer,
    ) -> Result<(), TxError> {
        let (key, top_via) = match ServerKey::for_request(&request) {
            Ok(keyed) => keyed,
            Err(_) => {
                self.stats.unmatchable += 1;
                return Err(TxError::Unmatchable("request without usable Via"));
            }
        };
        if request.method == Method::Ack {
            self.handle_ack(now, key, request, from);
            return Ok(());
        }
        if let Some(&id) = self.server_keys.get(&key) {
            // A retransmission: re-send the last response, if any (§17.2.1, §17.2.2).
            self.stats.absorbed += 1;
            if let Some(t) = self.servers.get(&id) {
                if let (Some(bytes), false) = (&t.last_response, t.state == ServerState::Accepted) {
                    self.transmits.push_back(Transmit {
                        to: t.destination,
                        bytes: bytes.clone(),
                    });
                }
            }
            return Ok(());
        }
        let destination = response_destination(&top_via, from);
        let invite = request.method == Method::Invite;
        let cancels = if request.method == Method::Cancel {
            ServerKey::cancelled_invite(&request)
                .ok()
                .and_then(|k| self.server_keys.get(&k).copied())
        } else {
            None
        };
        let id = ServerTxId(self.next_id());
        let mut tx = ServerTx {
            key: key.clone(),
            invite,
            state: if invite {
                ServerState::Proceeding
            } else {
                ServerState::Trying
            },
            destination,
            last_response: None,
            interval: self.config.timers.t1,
            ack_key: None,
            acked: false,
            unanswered: None,
            armed: Armed::default(),
        };
        if invite && self.config.send_100_trying {
            let trying = Response::to_request(&request, 100, None).to_bytes();
            self.transmits.push_back(Transmit {
                to: destination,
                bytes: trying.clone(),
            });
            tx.last_response = Some(trying);
        }
        if !invite {
            // Guard against a user that never answers: RFC 3261 has no timer here, but a
            // transaction that can live forever is a leak.
            let mut refusal = Response::to_request(&request, 500, None);
            refusal.headers.push(HeaderName::parse("Retry-After"), "5");
            tx.unanswered = Some(refusal.to_bytes());
            let at = now + self.config.timers.timeout();
            self.timers
                .arm(&mut tx.armed, TxId::Server(id), Slot::Timeout, at);
        }
        self.server_keys.insert(key, id);
        self.servers.insert(id, tx);
        self.events.push_back(TxEvent::Request {
            tx: id,
            request,
            from,
            cancels,
        });
        Ok(())
    }

    fn handle_ack(&mut self, now: Instant, key: ServerKey, request: Request, from: Peer) {
        if let Some(&id) = self.server_keys.get(&key) {
            if let Some(t) = self.servers.get_mut(&id) {
                match t.state {
                    ServerState::Completed => {
                        // ACK for our non-2xx: stop G and H, absorb copies for Timer I.
                        t.state = ServerState::Confirmed;
                        t.armed.clear(Slot::Retransmit);
                        t.armed.clear(Slot::Timeout);
                        if t.destination.is_reliable() {
                            self.terminate_server(id);
                        } else {
                            let at = now + self.config.timers.t4;
                            self.timers
                                .arm(&mut t.armed, TxId::Server(id), Slot::Linger, at);
                        }
                        return;
                    }
                    ServerState::Accepted => {
                        // An RFC 2543 peer's ACK for our 2xx keys like the INVITE.
                        self.ack_accepted(id, request, from);
                        return;
                    }
                    _ => {
                        self.stats.absorbed += 1;
                        return;
                    }
                }
            }
        }
        if let Some(&id) = AckKey::from_headers(&request.headers)
            .as_ref()
            .and_then(|k| self.accepted_by_dialog.get(k))
        {
            self.ack_accepted(id, request, from);
            return;
        }
        self.stats.stray_acks += 1;
        self.events.push_back(TxEvent::Ack {
            tx: None,
            request,
            from,
        });
    }

    fn ack_accepted(&mut self, id: ServerTxId, request: Request, from: Peer) {
        let Some(t) = self.servers.get_mut(&id) else {
            return;
        };
        if t.acked {
            // A retransmitted ACK (our 2xx was retransmitted before the ACK got through).
            self.stats.absorbed += 1;
            return;
        }
        // The dialog key stays registered until the transaction ends, so that copies of
        // this ACK are absorbed rather than reported as stray.
        t.acked = true;
        t.armed.clear(Slot::Retransmit);
        self.events.push_back(TxEvent::Ack {
            tx: Some(id),
            request,
            from,
        });
    }

    /// Sends `response` on server transaction `tx` and moves it along its state machine.
    /// A 2xx to an INVITE is retransmitted by the layer until its ACK arrives (or Timer L).
    pub fn send_response(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        response: Response,
    ) -> Result<(), TxError> {
        let t = self
            .servers
            .get_mut(&tx)
            .ok_or(TxError::UnknownTransaction)?;
        let timers = &self.config.timers;
        let tx_id = TxId::Server(tx);
        let status = response.status;
        let reliable = t.destination.is_reliable();
        let invalid = |state: ServerState| TxError::InvalidState {
            status,
            state: state_name(state),
        };
        let mut terminate = false;
        if t.invite {
            match (t.state, status) {
                (ServerState::Proceeding, 100..=199) => {}
                (ServerState::Proceeding, 200..=299) => {
                    t.state = ServerState::Accepted;
                    t.interval = timers.t1;
                    self.timers
                        .arm(&mut t.armed, tx_id, Slot::Retransmit, now + timers.t1);
                    // Timer L.
                    self.timers
                        .arm(&mut t.armed, tx_id, Slot::Timeout, now + timers.timeout());
                    // The ACK for a 2xx comes with a new branch; find us by dialog instead.
                    let ack_key = AckKey::from_headers(&response.headers);
                    if let Some(k) = &ack_key {
                        self.accepted_by_dialog.insert(k.clone(), tx);
                    }
                    t.ack_key = ack_key;
                }
                (ServerState::Accepted, 200..=299) => {}
                (ServerState::Proceeding, 300..=699) => {
                    t.state = ServerState::Completed;
                    t.interval = timers.t1;
                    if !reliable {
                        // Timer G.
                        self.timers
                            .arm(&mut t.armed, tx_id, Slot::Retransmit, now + timers.t1);
                    }
                    // Timer H.
                    self.timers
                        .arm(&mut t.armed, tx_id, Slot::Timeout, now + timers.timeout());
                }
                (state, _) => return Err(invalid(state)),
            }
        } else {
            match (t.state, status) {
                (ServerState::Trying | ServerState::Proceeding, 100..=199) => {
                    t.state = ServerState::Proceeding;
                }
                (ServerState::Trying | ServerState::Proceeding, 200..=699) => {
                    t.state = ServerState::Completed;
                    t.armed.clear(Slot::Timeout);
                    if reliable {
                        terminate = true;
                    } else {
                        // Timer J.
                        self.timers
                            .arm(&mut t.armed, tx_id, Slot::Linger, now + timers.timeout());
                    }
                }
                (state, _) => return Err(invalid(state)),
            }
        }
        let bytes = response.to_bytes();
        self.transmits.push_back(Transmit {
            to: t.destination,
            bytes: bytes.clone(),
        });
        t.last_response = Some(bytes);
        if terminate {
            self.terminate_server(tx);
        }
        Ok(())
    }

    fn server_timer(&mut self, now: Instant, id: ServerTxId, slot: Slot) {
        let Some(t) = self.servers.get_mut(&id) else {
            return;
        };
        let timers = &self.config.timers;
        let tx_id = TxId::Server(id);
        match slot {
            Slot::Retransmit => {
                // Timer G (non-2xx) or the 2xx retransmission: T1 doubling, capped at T2.
                let retransmit = match t.state {
                    ServerState::Completed => true,
                    ServerState::Accepted => !t.acked,
                    _ => false,
                };
                if !retransmit {
                    return;
                }
                if let Some(bytes) = &t.last_response {
                    self.transmits.push_back(Transmit {
                        to: t.destination,
                        bytes: bytes.clone(),
                    });
                    self.stats.retransmissions += 1;
                }
                t.interval = (t.interval * 2).min(timers.t2);
                let at = now + t.interval;
                self.timers.arm(&mut t.armed, tx_id, Slot::Retransmit, at);
            }
            Slot::Timeout => {
                match t.state {
                    // Timer H: no ACK for our non-2xx.
                    ServerState::Completed => {
                        self.stats.timeouts += 1;
                        self.events.push_back(TxEvent::Timeout(tx_id));
                    }
                    // Timer L: Accepted is over; report if the 2xx was never ACKed
                    // (§13.3.1.4: the user should end the dialog).
                    ServerState::Accepted => {
                        if !t.acked {
                            self.stats.timeouts += 1;
                            self.events.push_back(TxEvent::Timeout(tx_id));
                        }
                    }
                    // Non-INVITE the user never answered: answer 500 so the peer stops.
                    ServerState::Trying | ServerState::Proceeding if !t.invite => {
                        self.stats.timeouts += 1;
                        self.events.push_back(TxEvent::Timeout(tx_id));
                        if let Some(bytes) = t.unanswered.take() {
                            self.transmits.push_back(Transmit {
                                to: t.destination,
                                bytes,
                            });
                        }
                    }
                    _ => return,
                }
                self.terminate_server(id);
            }
            Slot::Linger => self.terminate_server(id),
        }
    }

    fn terminate_server(&mut self, id: ServerTxId) {
        if let Some(t) = self.servers.remove(&id) {
            self.server_keys.remove(&t.key);
            if let Some(k) = &t.ack_key {
                // Only our own entry: a later Accepted transaction with the same dialog fields
                // (a merged request answered twice) took the key over, and its ACK must still
                // find it.
                if self.accepted_by_dialog.get(k) == Some(&id) {
                    self.accepted_by_dialog.remove(k);
                }
                crate::capacity::shrink_map(&mut self.accepted_by_dialog);
            }
            crate::capacity::shrink_map(&mut self.servers);
            crate::capacity::shrink_map(&mut self.server_keys);
            self.events.push_back(TxEvent::Terminated(TxId::Server(id)));
        }
    }

    // ----- transport failures ------------------------------------------------------------

    /// The transport failed to deliver to `peer` (RFC 3261 §17.1.4, §17.2.4): every
    /// transaction sending there reports `TransportError` and ends.
    pub fn on_transport_error(&mut self, peer: &Peer) {
        let same = |p: &Peer| p.addr == peer.addr && p.transport == peer.transport;
        let clients: Vec<ClientTxId> = self
            .clients
            .iter()
            .filter(|(_, t)| same(&t.to))
            .map(|(id, _)| *id)
            .collect();
        for id in clients {
            if self.clients.get(&id).is_some_and(|t| !t.internal) {
                self.events
                    .push_back(TxEvent::TransportError(TxId::Client(id)));
            }
            self.terminate_client(id);
        }
        let servers: Vec<ServerTxId> = self
            .servers
            .iter()
            .filter(|(_, t)| same(&t.destination))
            .map(|(id, _)| *id)
            .collect();
        for id in servers {
            self.events
                .push_back(TxEvent::TransportError(TxId::Server(id)));
            self.terminate_server(id);
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
