//! Client transactions (RFC 3261 §17.1): the requests we send.
//!
//! - INVITE (Figure 5, with the Accepted state of RFC 6026 Figure 5): Calling → Proceeding →
//!   Completed (a non-2xx final, ACKed here; Timer D) or Accepted (a 2xx, passed up; Timer M).
//!   Timer A retransmits over UDP, B gives up, the optional C bounds Proceeding; a CANCEL
//!   (§9.1) waits for the first provisional response.
//! - non-INVITE (Figure 6): Trying → Proceeding → Completed (Timer K). Timer E retransmits over
//!   UDP, F gives up.
//!
//! A transaction starts in [`TransactionLayer::send_request`] (or in [`TransactionLayer::cancel`]
//! for the CANCELs the layer sends itself); responses reach it through `handle_response` and
//! timers through `client_timer`, which hand it to the INVITE or the non-INVITE machine.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::ids::new_branch;
use crate::message::{
    build_ack_for_non_2xx, build_cancel, HeaderName, Method, Request, Response, Transport, Via,
};
use crate::peer::{Peer, MAX_UDP_PAYLOAD};

use super::key::ClientKey;
use super::timer::{Armed, Slot, TimerConfig};
use super::{ClientTxId, Output, TransactionLayer, TxError, TxEvent, TxId};

/// State of a client transaction (RFC 3261 Figures 5 and 6, RFC 6026 Figure 5).
///
/// It exists so that the user and the tests can see where a transaction of theirs stands
/// ([`TransactionLayer::client_state`]); the layer alone moves it.
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

/// One client transaction.
pub(super) struct ClientTx {
    pub(super) key: ClientKey,
    pub(super) invite: bool,
    pub(super) state: ClientState,
    /// The request as sent; `None` once a final response has arrived (see
    /// [`ClientTx::settle`]).
    pub(super) request: Option<Request>,
    /// `request` as sent, re-sent by Timers A and E (empty once settled).
    pub(super) bytes: Bytes,
    pub(super) to: Peer,
    /// The current retransmission interval.
    pub(super) interval: Duration,
    /// The ACK for a non-2xx final, re-sent when the final is retransmitted.
    pub(super) ack: Option<Bytes>,
    /// CANCEL requested before any provisional arrived (§9.1: wait for one).
    pub(super) cancel_pending: bool,
    pub(super) cancelled: bool,
    /// CANCEL transactions are created by the layer itself and report nothing.
    pub(super) internal: bool,
    pub(super) timer_c_fired: bool,
    /// Sent over TCP although the user asked for UDP, because of its size (§18.1.1).
    pub(super) upgraded: bool,
    pub(super) armed: Armed,
}

/// What the layer does once a client state machine has taken a response.
enum Reaction {
    /// A retransmission, or a response this state has no use for: counted, not passed up.
    Absorb,
    /// Pass the response up to the user.
    PassUp,
    /// Pass it up, then send the CANCEL the user asked for while Calling (§9.1: a CANCEL
    /// waits for a provisional response).
    PassUpThenCancel,
    /// Pass it up, then end the transaction (a final over a reliable transport: no Timer D
    /// or K to wait for).
    PassUpThenTerminate,
}

impl TransactionLayer {
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
        let mut bytes = request.to_bytes();
        let mut to = to;
        let mut upgraded = false;
        let threshold = self.config.udp_max_request.min(MAX_UDP_PAYLOAD);
        if to.transport == Transport::Udp
            && bytes.len() > threshold
            && set_top_via_transport(&mut request, Transport::Tcp)
        {
            // §18.1.1: too large for UDP, so TCP, and the top Via says so. (The length does
            // not change: "UDP" and "TCP" are the same size.)
            to = Peer::tcp(to.addr, None);
            bytes = request.to_bytes();
            upgraded = true;
            self.out.stats.upgraded_to_tcp += 1;
        }
        let timers = &self.config.timers;
        let mut tx = ClientTx {
            key: key.clone(),
            invite,
            state: if invite {
                ClientState::Calling
            } else {
                ClientState::Trying
            },
            request: Some(request),
            bytes: bytes.clone(),
            to,
            interval: timers.t1,
            ack: None,
            cancel_pending: false,
            cancelled: false,
            internal,
            timer_c_fired: false,
            upgraded,
            armed: Armed::default(),
        };
        let tx_id = TxId::Client(id);
        let queue = &mut self.out.timers;
        if !to.is_reliable() {
            // Timer A (INVITE) or E (non-INVITE).
            queue.arm(&mut tx.armed, tx_id, Slot::Retransmit, now + timers.t1);
        }
        // Timer B or F.
        queue.arm(&mut tx.armed, tx_id, Slot::Timeout, now + timers.timeout());
        self.client_keys.insert(key, id);
        self.clients.insert(id, tx);
        self.out.transmit(to, bytes, Some(tx_id));
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
        self.out.transmit(to, request.to_bytes(), None);
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
                self.out
                    .timers
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
        let Some(request) = &t.request else {
            // A final has arrived: there is nothing left to cancel.
            return;
        };
        let cancel = build_cancel(request);
        let to = t.to;
        // The CANCEL carries the INVITE's top Via, branch included, so it cannot collide
        // except with an earlier CANCEL of the same INVITE, which `cancelled` prevents.
        let _ = self.start_client(now, cancel, to, true);
    }

    /// A response from the network: matched to its client transaction (§17.1.3) and run
    /// through that transaction's machine; unmatched ones are reported as strays.
    pub(super) fn handle_response(
        &mut self,
        now: Instant,
        response: Response,
        from: Peer,
    ) -> Result<(), TxError> {
        let Some(key) = ClientKey::for_response(&response) else {
            self.out.stats.unmatchable += 1;
            return Err(TxError::Unmatchable(
                "response without usable Via branch/CSeq",
            ));
        };
        let Some(&id) = self.client_keys.get(&key) else {
            self.out.stats.stray_responses += 1;
            self.out.event(TxEvent::StrayResponse { response, from });
            return Ok(());
        };
        let Some(t) = self.clients.get_mut(&id) else {
            return Ok(());
        };
        if !same_host(&t.to, &from) {
            // The branch is ours but the sender is not the peer we sent to: anyone who saw
            // or guessed the branch could otherwise end (or answer) the transaction. Not a
            // stray either, so that nothing above acts on it.
            self.out.stats.wrong_source_responses += 1;
            return Err(TxError::WrongSource);
        }
        let timers = &self.config.timers;
        let reaction = if t.invite {
            t.invite_response(now, id, &response, timers, &mut self.out)
        } else {
            t.non_invite_response(now, id, response.status, timers, &mut self.out)
        };
        if let Reaction::Absorb = reaction {
            self.out.stats.absorbed += 1;
            return Ok(());
        }
        if !t.internal {
            self.out.event(TxEvent::Response {
                tx: id,
                response,
                from,
            });
        }
        match reaction {
            // Deferred CANCEL (§9.1): now that a provisional arrived it may go.
            Reaction::PassUpThenCancel => {
                let _ = self.cancel(now, id);
            }
            Reaction::PassUpThenTerminate => self.terminate_client(id),
            Reaction::Absorb | Reaction::PassUp => {}
        }
        Ok(())
    }

    /// Timer `slot` of client transaction `id` fired (its record is already cleared).
    pub(super) fn client_timer(&mut self, now: Instant, id: ClientTxId, slot: Slot) {
        let Some(t) = self.clients.get_mut(&id) else {
            return;
        };
        let timers = &self.config.timers;
        let out = &mut self.out;
        let tx_id = TxId::Client(id);
        match slot {
            Slot::Retransmit => {
                let next = if t.invite {
                    t.timer_a_interval()
                } else {
                    t.timer_e_interval(timers)
                };
                let Some(interval) = next else {
                    return;
                };
                out.transmit(t.to, t.bytes.clone(), Some(tx_id));
                out.stats.retransmissions += 1;
                t.interval = interval;
                out.timers
                    .arm(&mut t.armed, tx_id, Slot::Retransmit, now + interval);
            }
            Slot::Timeout => {
                if t.invite
                    && t.state == ClientState::Proceeding
                    && timers.timer_c.is_some()
                    && !t.timer_c_fired
                {
                    t.fire_timer_c(now, id, timers, out);
                    return;
                }
                // Timer B or F, or the 64·T1 after a CANCEL or Timer C.
                out.stats.timeouts += 1;
                if !t.internal {
                    out.event(TxEvent::Timeout(tx_id));
                }
                self.terminate_client(id);
            }
            // Timer D, K or M.
            Slot::Linger => self.terminate_client(id),
        }
    }

    pub(super) fn terminate_client(&mut self, id: ClientTxId) {
        if let Some(t) = self.clients.remove(&id) {
            self.client_keys.remove(&t.key);
            crate::capacity::shrink_map(&mut self.clients);
            crate::capacity::shrink_map(&mut self.client_keys);
            if !t.internal {
                self.out.event(TxEvent::Terminated(TxId::Client(id)));
            }
        }
    }
}

/// Whether a response from `from` may belong to a transaction that sent to `to`: the same
/// IP (IPv4-mapped IPv6 counts as IPv4). The port and the connection are not compared: over
/// UDP a peer may answer from another port of the same host, and over TCP the response may
/// arrive on a new connection if ours closed (§18.1.2, §18.2.2).
fn same_host(to: &Peer, from: &Peer) -> bool {
    to.addr.ip().to_canonical() == from.addr.ip().to_canonical()
}

/// Rewrites the transport of `request`'s top Via in place (the row keeps its place, the
/// others are untouched). `false` when there is no parseable top Via.
fn set_top_via_transport(request: &mut Request, transport: Transport) -> bool {
    let Ok(mut via) = request.headers.top_via() else {
        return false;
    };
    via.transport = transport;
    match request.headers.get_mut(&HeaderName::Via) {
        Some(value) => {
            *value = via.to_string();
            true
        }
        None => false,
    }
}

impl ClientTx {
    /// §18.1.1: a request sent over TCP only because of its size, whose TCP send failed
    /// before any response came, is retried over UDP (the connection may simply be refused:
    /// not every UDP peer listens on TCP). Timer A/E starts as for a new UDP request; Timer
    /// B/F keeps its deadline. `false` when this does not apply (the caller fails the
    /// transaction), also when the request cannot fit in a datagram at all.
    pub(super) fn fall_back_to_udp(
        &mut self,
        now: Instant,
        id: ClientTxId,
        timers: &TimerConfig,
        out: &mut Output,
    ) -> bool {
        let no_response = matches!(self.state, ClientState::Calling | ClientState::Trying);
        if !self.upgraded || !no_response || self.bytes.len() > MAX_UDP_PAYLOAD {
            return false;
        }
        let Some(request) = self.request.as_mut() else {
            return false;
        };
        if !set_top_via_transport(request, Transport::Udp) {
            return false;
        }
        self.upgraded = false;
        self.to = Peer::udp(self.to.addr);
        self.bytes = request.to_bytes();
        self.interval = timers.t1;
        let tx_id = TxId::Client(id);
        out.timers
            .arm(&mut self.armed, tx_id, Slot::Retransmit, now + timers.t1);
        out.transmit(self.to, self.bytes.clone(), Some(tx_id));
        out.stats.udp_fallbacks += 1;
        true
    }

    /// The INVITE client machine (Figure 5, RFC 6026 Figure 5) takes a response.
    fn invite_response(
        &mut self,
        now: Instant,
        id: ClientTxId,
        response: &Response,
        timers: &TimerConfig,
        out: &mut Output,
    ) -> Reaction {
        let tx_id = TxId::Client(id);
        match (self.state, response.status) {
            (ClientState::Calling | ClientState::Proceeding, 100..=199) => {
                let mut reaction = Reaction::PassUp;
                if self.state == ClientState::Calling {
                    self.state = ClientState::Proceeding;
                    self.armed.clear(Slot::Retransmit);
                    self.armed.clear(Slot::Timeout);
                    if std::mem::take(&mut self.cancel_pending) {
                        reaction = Reaction::PassUpThenCancel;
                    }
                }
                if let (Some(c), false) = (timers.timer_c, self.timer_c_fired) {
                    out.timers
                        .arm(&mut self.armed, tx_id, Slot::Timeout, now + c);
                }
                reaction
            }
            (ClientState::Calling | ClientState::Proceeding, 200..=299) => {
                self.state = ClientState::Accepted;
                self.settle();
                self.armed.clear(Slot::Retransmit);
                self.armed.clear(Slot::Timeout);
                // Timer M.
                out.timers
                    .arm(&mut self.armed, tx_id, Slot::Linger, now + timers.timeout());
                Reaction::PassUp
            }
            (ClientState::Calling | ClientState::Proceeding, _) => {
                self.state = ClientState::Completed;
                self.armed.clear(Slot::Retransmit);
                self.armed.clear(Slot::Timeout);
                if let Some(request) = &self.request {
                    let ack = build_ack_for_non_2xx(request, response).to_bytes();
                    out.transmit(self.to, ack.clone(), Some(tx_id));
                    self.ack = Some(ack);
                }
                self.settle();
                if self.to.is_reliable() {
                    Reaction::PassUpThenTerminate
                } else {
                    // Timer D.
                    out.timers
                        .arm(&mut self.armed, tx_id, Slot::Linger, now + timers.timer_d);
                    Reaction::PassUp
                }
            }
            // RFC 6026: every 2xx is passed up, the user ACKs each.
            (ClientState::Accepted, 200..=299) => Reaction::PassUp,
            (ClientState::Completed, 300..) => {
                // A retransmitted final: ACK it again.
                if let Some(ack) = &self.ack {
                    out.transmit(self.to, ack.clone(), Some(tx_id));
                }
                Reaction::Absorb
            }
            _ => Reaction::Absorb,
        }
    }

    /// The non-INVITE client machine (Figure 6) takes a response.
    fn non_invite_response(
        &mut self,
        now: Instant,
        id: ClientTxId,
        status: u16,
        timers: &TimerConfig,
        out: &mut Output,
    ) -> Reaction {
        match (self.state, status) {
            (ClientState::Trying | ClientState::Proceeding, 100..=199) => {
                self.state = ClientState::Proceeding;
                Reaction::PassUp
            }
            (ClientState::Trying | ClientState::Proceeding, _) => {
                self.state = ClientState::Completed;
                self.settle();
                self.armed.clear(Slot::Retransmit);
                self.armed.clear(Slot::Timeout);
                if self.to.is_reliable() {
                    Reaction::PassUpThenTerminate
                } else {
                    // Timer K.
                    let at = now + timers.t4;
                    out.timers
                        .arm(&mut self.armed, TxId::Client(id), Slot::Linger, at);
                    Reaction::PassUp
                }
            }
            _ => Reaction::Absorb,
        }
    }

    /// A final response has arrived: the request is never sent again, nor cancelled, so it
    /// goes. Why: the transaction lingers 64·T1 (Timer M) or T4 (Timer K) absorbing
    /// retransmissions, and at a few thousand calls a second that window holds tens of
    /// thousands of transactions; the request and its bytes were most of each one's memory.
    fn settle(&mut self) {
        self.request = None;
        self.bytes = Bytes::new();
    }

    /// Timer A (Figure 5): the INVITE is re-sent while Calling, the interval doubling each
    /// time (Timer B ends it). `None`: no retransmission in this state.
    fn timer_a_interval(&self) -> Option<Duration> {
        (self.state == ClientState::Calling).then(|| self.interval * 2)
    }

    /// Timer E (Figure 6): the request is re-sent while Trying, the interval doubling up to
    /// T2, and every T2 once Proceeding. `None`: no retransmission in this state.
    fn timer_e_interval(&self, timers: &TimerConfig) -> Option<Duration> {
        match self.state {
            ClientState::Trying => Some((self.interval * 2).min(timers.t2)),
            ClientState::Proceeding => Some(timers.t2),
            _ => None,
        }
    }

    /// Timer C (§16.6) fired in Proceeding: tell the user (who should CANCEL), and end the
    /// transaction 64·T1 later if no final response comes.
    fn fire_timer_c(
        &mut self,
        now: Instant,
        id: ClientTxId,
        timers: &TimerConfig,
        out: &mut Output,
    ) {
        let tx_id = TxId::Client(id);
        self.timer_c_fired = true;
        out.timers.arm(
            &mut self.armed,
            tx_id,
            Slot::Timeout,
            now + timers.timeout(),
        );
        out.stats.timeouts += 1;
        if !self.internal {
            out.event(TxEvent::Timeout(tx_id));
        }
    }
}
