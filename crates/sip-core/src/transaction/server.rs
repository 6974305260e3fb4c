//! Server transactions (RFC 3261 §17.2): the requests we receive.
//!
//! - INVITE (Figure 7, with the Accepted state of RFC 6026 Figure 7): Proceeding (after an
//!   immediate `100 Trying`) → Completed (a non-2xx final, retransmitted by Timer G until the ACK,
//!   Timer H gives up) → Confirmed (Timer I absorbs ACK copies); or Accepted (a 2xx,
//!   retransmitted until its ACK arrives, matched by dialog; Timer L ends it).
//! - non-INVITE (Figure 8): Trying → Proceeding → Completed (Timer J absorbs copies). RFC 3261
//!   gives Trying and Proceeding no timer; a guard answers 500 after 64·T1 so that an
//!   unanswered request cannot live forever.
//!
//! Requests reach this side through `handle_request`, which matches them (§17.2.3), absorbs
//! retransmissions, routes ACKs, and creates a transaction for anything new; the user answers
//! with [`TransactionLayer::send_response`]; timers arrive through `server_timer`. Each step is
//! handed to the INVITE or the non-INVITE machine.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::message::{HeaderName, Method, Request, Response};
use crate::peer::{response_destination, Peer};

use super::key::{AckKey, ServerKey};
use super::timer::{Armed, Slot, TimerConfig};
use super::{Output, ServerTxId, TransactionLayer, TxError, TxEvent, TxId};

/// State of a server transaction (RFC 3261 Figures 7 and 8, RFC 6026 Figure 7).
///
/// It exists so that the user and the tests can see where a transaction stands
/// ([`TransactionLayer::server_state`]), and to name the state a refused
/// [`send_response`](TransactionLayer::send_response) found ([`TxError::InvalidState`]).
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

/// One server transaction.
pub(super) struct ServerTx {
    pub(super) key: ServerKey,
    pub(super) invite: bool,
    pub(super) state: ServerState,
    /// Where responses go (§18.2.2, RFC 3581).
    pub(super) destination: Peer,
    /// Re-sent for a retransmitted request, and by Timer G and the 2xx retransmission.
    pub(super) last_response: Option<Bytes>,
    /// The current retransmission interval.
    pub(super) interval: Duration,
    /// For an INVITE answered 2xx: the dialog fields its ACK will carry.
    pub(super) ack_key: Option<AckKey>,
    pub(super) acked: bool,
    /// For a non-INVITE: the 500 sent if the user never answers within 64·T1.
    pub(super) unanswered: Option<Bytes>,
    pub(super) armed: Armed,
}

impl TransactionLayer {
    /// A request from the network: an ACK is routed to the transaction it acknowledges, a
    /// retransmission is answered with the last response, anything else starts a transaction
    /// and is passed up.
    pub(super) fn handle_request(
        &mut self,
        now: Instant,
        request: Request,
        from: Peer,
    ) -> Result<(), TxError> {
        let (key, top_via) = match ServerKey::for_request(&request) {
            Ok(keyed) => keyed,
            Err(_) => {
                self.out.stats.unmatchable += 1;
                return Err(TxError::Unmatchable("request without usable Via"));
            }
        };
        if request.method == Method::Ack {
            self.handle_ack(now, key, request, from);
            return Ok(());
        }
        if let Some(&id) = self.server_keys.get(&key) {
            // A retransmission: re-send the last response, if any (§17.2.1, §17.2.2).
            self.out.stats.absorbed += 1;
            if let Some(t) = self.servers.get(&id) {
                if let (Some(bytes), false) = (&t.last_response, t.state == ServerState::Accepted) {
                    let origin = Some(TxId::Server(id));
                    self.out.transmit(t.destination, bytes.clone(), origin);
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
        if invite {
            tx.start_invite(id, &request, self.config.send_100_trying, &mut self.out);
        } else {
            tx.start_non_invite(now, id, &request, &self.config.timers, &mut self.out);
        }
        self.server_keys.insert(key, id);
        self.servers.insert(id, tx);
        self.out.event(TxEvent::Request {
            tx: id,
            request,
            from,
            cancels,
        });
        Ok(())
    }

    /// An ACK, keyed as the INVITE it acknowledges: the ACK for our non-2xx belongs to the
    /// INVITE transaction (same branch); the ACK for a 2xx has a branch of its own and is
    /// matched by dialog to the transaction retransmitting that 2xx, or passed up as stray.
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
                            self.out
                                .timers
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
                        self.out.stats.absorbed += 1;
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
        self.out.stats.stray_acks += 1;
        self.out.event(TxEvent::Ack {
            tx: None,
            request,
            from,
        });
    }

    /// The ACK for the 2xx of INVITE transaction `id`: the 2xx retransmissions stop and the
    /// first copy is passed up.
    fn ack_accepted(&mut self, id: ServerTxId, request: Request, from: Peer) {
        let Some(t) = self.servers.get_mut(&id) else {
            return;
        };
        if t.acked {
            // A retransmitted ACK (our 2xx was retransmitted before the ACK got through).
            self.out.stats.absorbed += 1;
            return;
        }
        // The dialog key stays registered until the transaction ends, so that copies of
        // this ACK are absorbed rather than reported as stray.
        t.acked = true;
        t.armed.clear(Slot::Retransmit);
        // Nothing re-sends the 2xx now (a retransmitted INVITE is absorbed in Accepted), and
        // the transaction lingers 64·T1: its bytes go.
        t.last_response = None;
        self.out.event(TxEvent::Ack {
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
        let terminate = if t.invite {
            let by_dialog = &mut self.accepted_by_dialog;
            t.invite_response_sent(now, tx, &response, timers, &mut self.out, by_dialog)?
        } else {
            t.non_invite_response_sent(now, tx, response.status, timers, &mut self.out)?
        };
        let bytes = response.to_bytes();
        self.out
            .transmit(t.destination, bytes.clone(), Some(TxId::Server(tx)));
        t.last_response = Some(bytes);
        if terminate {
            self.terminate_server(tx);
        }
        Ok(())
    }

    /// Timer `slot` of server transaction `id` fired (its record is already cleared).
    pub(super) fn server_timer(&mut self, now: Instant, id: ServerTxId, slot: Slot) {
        let Some(t) = self.servers.get_mut(&id) else {
            return;
        };
        let out = &mut self.out;
        match slot {
            Slot::Retransmit => t.retransmit_response(now, id, &self.config.timers, out),
            Slot::Timeout => {
                let over = if t.invite {
                    t.invite_timeout(id, out)
                } else {
                    t.non_invite_timeout(id, out)
                };
                if over {
                    self.terminate_server(id);
                }
            }
            // Timer I or J.
            Slot::Linger => self.terminate_server(id),
        }
    }

    pub(super) fn terminate_server(&mut self, id: ServerTxId) {
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
            self.out.event(TxEvent::Terminated(TxId::Server(id)));
        }
    }
}

impl ServerTx {
    /// Whether the peer is still owed something (see `TransactionLayer::server_owing_count`).
    pub(super) fn owes_peer(&self) -> bool {
        match self.state {
            ServerState::Trying | ServerState::Proceeding => true,
            ServerState::Completed => self.invite,
            ServerState::Accepted => !self.acked,
            ServerState::Confirmed => false,
        }
    }

    /// A new INVITE: answer `100 Trying` at once if so configured (§17.2.1), so that the
    /// caller's Timer A stops; the 100 is what a retransmitted INVITE gets until we answer.
    fn start_invite(
        &mut self,
        id: ServerTxId,
        request: &Request,
        send_100_trying: bool,
        out: &mut Output,
    ) {
        if send_100_trying {
            let trying = Response::to_request(request, 100, None).to_bytes();
            out.transmit(self.destination, trying.clone(), Some(TxId::Server(id)));
            self.last_response = Some(trying);
        }
    }

    /// A new non-INVITE: arm the guard against a user that never answers. RFC 3261 has no
    /// timer here, but a transaction that can live forever is a leak.
    fn start_non_invite(
        &mut self,
        now: Instant,
        id: ServerTxId,
        request: &Request,
        timers: &TimerConfig,
        out: &mut Output,
    ) {
        let mut refusal = Response::to_request(request, 500, None);
        refusal.headers.push(HeaderName::parse("Retry-After"), "5");
        self.unanswered = Some(refusal.to_bytes());
        let at = now + timers.timeout();
        out.timers
            .arm(&mut self.armed, TxId::Server(id), Slot::Timeout, at);
    }

    /// The INVITE server machine (Figure 7, RFC 6026 Figure 7) sends a response of the user.
    /// `Ok(true)` when the transaction ends at once; an `Err` changes nothing.
    fn invite_response_sent(
        &mut self,
        now: Instant,
        id: ServerTxId,
        response: &Response,
        timers: &TimerConfig,
        out: &mut Output,
        accepted_by_dialog: &mut HashMap<AckKey, ServerTxId>,
    ) -> Result<bool, TxError> {
        let tx_id = TxId::Server(id);
        match (self.state, response.status) {
            (ServerState::Proceeding, 100..=199) => {}
            (ServerState::Proceeding, 200..=299) => {
                self.state = ServerState::Accepted;
                self.interval = timers.t1;
                out.timers
                    .arm(&mut self.armed, tx_id, Slot::Retransmit, now + timers.t1);
                // Timer L.
                out.timers.arm(
                    &mut self.armed,
                    tx_id,
                    Slot::Timeout,
                    now + timers.timeout(),
                );
                // The ACK for a 2xx comes with a new branch; find us by dialog instead.
                let ack_key = AckKey::from_headers(&response.headers);
                if let Some(k) = &ack_key {
                    accepted_by_dialog.insert(k.clone(), id);
                }
                self.ack_key = ack_key;
            }
            (ServerState::Accepted, 200..=299) => {}
            (ServerState::Proceeding, 300..=699) => {
                self.state = ServerState::Completed;
                self.interval = timers.t1;
                if !self.destination.is_reliable() {
                    // Timer G.
                    out.timers
                        .arm(&mut self.armed, tx_id, Slot::Retransmit, now + timers.t1);
                }
                // Timer H.
                out.timers.arm(
                    &mut self.armed,
                    tx_id,
                    Slot::Timeout,
                    now + timers.timeout(),
                );
            }
            (state, status) => return Err(invalid_state(status, state)),
        }
        Ok(false)
    }

    /// The non-INVITE server machine (Figure 8) sends a response of the user.
    /// `Ok(true)` when the transaction ends at once; an `Err` changes nothing.
    fn non_invite_response_sent(
        &mut self,
        now: Instant,
        id: ServerTxId,
        status: u16,
        timers: &TimerConfig,
        out: &mut Output,
    ) -> Result<bool, TxError> {
        match (self.state, status) {
            (ServerState::Trying | ServerState::Proceeding, 100..=199) => {
                self.state = ServerState::Proceeding;
                Ok(false)
            }
            (ServerState::Trying | ServerState::Proceeding, 200..=699) => {
                self.state = ServerState::Completed;
                self.armed.clear(Slot::Timeout);
                // Answered: the guard's 500 will never be sent.
                self.unanswered = None;
                if self.destination.is_reliable() {
                    return Ok(true);
                }
                // Timer J.
                let at = now + timers.timeout();
                out.timers
                    .arm(&mut self.armed, TxId::Server(id), Slot::Linger, at);
                Ok(false)
            }
            (state, status) => Err(invalid_state(status, state)),
        }
    }

    /// Timer G (Completed: our non-2xx, until its ACK) or the 2xx retransmission (Accepted:
    /// until the ACK), T1 doubling up to T2. Only INVITE transactions arm this slot.
    fn retransmit_response(
        &mut self,
        now: Instant,
        id: ServerTxId,
        timers: &TimerConfig,
        out: &mut Output,
    ) {
        let retransmit = match self.state {
            ServerState::Completed => true,
            ServerState::Accepted => !self.acked,
            _ => false,
        };
        if !retransmit {
            return;
        }
        if let Some(bytes) = &self.last_response {
            out.transmit(self.destination, bytes.clone(), Some(TxId::Server(id)));
            out.stats.retransmissions += 1;
        }
        self.interval = (self.interval * 2).min(timers.t2);
        let at = now + self.interval;
        out.timers
            .arm(&mut self.armed, TxId::Server(id), Slot::Retransmit, at);
    }

    /// Timer H or L of an INVITE transaction. `true` when the transaction is over.
    fn invite_timeout(&mut self, id: ServerTxId, out: &mut Output) -> bool {
        match self.state {
            // Timer H: no ACK for our non-2xx.
            ServerState::Completed => {
                out.stats.timeouts += 1;
                out.event(TxEvent::Timeout(TxId::Server(id)));
                true
            }
            // Timer L: Accepted is over; report if the 2xx was never ACKed (§13.3.1.4: the
            // user should end the dialog).
            ServerState::Accepted => {
                if !self.acked {
                    out.stats.timeouts += 1;
                    out.event(TxEvent::Timeout(TxId::Server(id)));
                }
                true
            }
            _ => false,
        }
    }

    /// The unanswered guard of a non-INVITE transaction: answer 500 so the peer stops, and
    /// report the timeout. `true` when the transaction is over.
    fn non_invite_timeout(&mut self, id: ServerTxId, out: &mut Output) -> bool {
        match self.state {
            ServerState::Trying | ServerState::Proceeding => {
                out.stats.timeouts += 1;
                out.event(TxEvent::Timeout(TxId::Server(id)));
                if let Some(bytes) = self.unanswered.take() {
                    out.transmit(self.destination, bytes, Some(TxId::Server(id)));
                }
                true
            }
            _ => false,
        }
    }
}

/// The refusal of a response the transaction's state does not allow.
fn invalid_state(status: u16, state: ServerState) -> TxError {
    TxError::InvalidState {
        status,
        state: state_name(state),
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
