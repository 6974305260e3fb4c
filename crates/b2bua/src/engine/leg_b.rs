//! Responses to leg B's INVITE: ringing and early media relayed to leg A, the answer bridged
//! (ACK on B, 200 on A), failures relayed with the same code, and a 2xx that arrives after
//! the call was abandoned ACKed and hung up.

use std::time::Instant;

use sip_core::dialog::{Dialog, DialogId};
use sip_core::transaction::{ClientTxId, TxId};
use sip_core::{HeaderName, Method, Peer, Response};

use super::challenge::{is_challenge, AUTH_FAILED_STATUS};
use super::redirect::UNFOLLOWED_STATUS;
use super::Engine;
use crate::auth::AuthFailure;
use crate::call::{CallKey, CallTimer, DeferredAck, Leg};
use crate::outbound::{reason_header, relay_response_to_a};
use crate::registry::{CallEvent, CallState, EndCause, Party};

impl Engine {
    pub(super) fn on_response(&mut self, now: Instant, tx: ClientTxId, response: Response) {
        let Some(&key) = self.tx_owner.get(&TxId::Client(tx)) else {
            return;
        };
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        let _entered = call.span.clone().entered();
        if tx == call.b.invite_tx {
            self.on_leg_b_invite_response(now, key, response);
        } else if let Some(relay) = call.relays.get(&tx) {
            let towards_b = relay.from_leg == Leg::A;
            if towards_b && is_challenge(response.status) {
                if let Err(failure) = self.answer_relay_challenge(now, key, tx, &response) {
                    self.log_auth_failure(now, failure);
                    let mut refused = response;
                    refused.status = AUTH_FAILED_STATUS;
                    refused.reason = "Forbidden".into();
                    self.on_relay_response(now, key, tx, refused);
                }
            } else {
                self.on_relay_response(now, key, tx, response);
            }
        } else if self.is_session_refresh(key, tx) {
            self.on_refresh_response(now, key, tx, response);
        } else if is_challenge(response.status)
            && response
                .headers
                .cseq()
                .is_ok_and(|c| c.method == Method::Bye)
        {
            self.answer_bye_challenge(now, key, &response);
        }
        // Anything else is the answer to a BYE we sent: nothing more to do.
    }

    fn on_leg_b_invite_response(&mut self, now: Instant, key: CallKey, response: Response) {
        match response.status {
            100 => {}
            101..=199 => self.leg_b_provisional(now, key, response),
            200..=299 => self.leg_b_answered(now, key, response),
            401 | 407 => {
                if let Err(failure) = self.answer_invite_challenge(now, key, &response) {
                    self.log_auth_failure(now, failure);
                    let reason = reason_header(response.status, "Trunk authentication failed");
                    let failure = LegBFailure {
                        a_status: AUTH_FAILED_STATUS,
                        reason: Some(reason),
                        cause: EndCause::TrunkAuthFailed,
                    };
                    self.leg_b_failed_as(now, key, response, failure);
                }
            }
            503 if self.fail_over(now, key) => {}
            422 if self.retry_session_interval(now, key, &response) => {}
            300..=399 => {
                if !self.follow_redirect(now, key, &response) {
                    let failure = LegBFailure {
                        a_status: UNFOLLOWED_STATUS,
                        reason: Some(reason_header(response.status, "Redirection not followed")),
                        cause: EndCause::CalleeRejected,
                    };
                    self.leg_b_failed_as(now, key, response, failure);
                }
            }
            _ => self.leg_b_failed(now, key, response),
        }
    }

    /// Sends leg B's INVITE again as `retry` (a copy of it, changed by the caller: credentials,
    /// another Request-URI, a longer Session-Expires) on a new transaction to `target`, with
    /// the next CSeq and a new branch (RFC 3261 §8.1.3.4, §22.2; RFC 3263 §4.3). The copy
    /// becomes the leg's INVITE: a CANCEL, the ACK and the dialog follow it. `false`: the
    /// transaction layer refused it, and nothing changed.
    pub(super) fn send_leg_b_invite_again(
        &mut self,
        now: Instant,
        key: CallKey,
        mut retry: sip_core::Request,
        target: Peer,
    ) -> bool {
        let Some(call) = self.calls.get(&key) else {
            return false;
        };
        retry.headers.remove_all(&HeaderName::Via);
        let seq = call.b.invite.headers.cseq().map(|c| c.seq).unwrap_or(1);
        retry.headers.set(
            HeaderName::CSeq,
            format!("{} INVITE", seq.saturating_add(1)),
        );
        let tx = match self.layer.send_request(now, retry, target) {
            Ok(tx) => tx,
            Err(error) => {
                tracing::warn!(%error, "leg B INVITE not sent again");
                return false;
            }
        };
        let sent = self.layer.client_request(tx).cloned();
        if let Some(call) = self.calls.get_mut(&key) {
            if let Some(sent) = sent {
                call.b.invite = sent;
            }
            call.b.invite_tx = tx;
            call.b.target = target;
        }
        self.own(key, TxId::Client(tx));
        true
    }

    /// Says why the trunk's challenge was not answered, at most 10 times a second (a wrong
    /// password fails every call).
    fn log_auth_failure(&mut self, now: Instant, failure: AuthFailure) {
        if let Some(unlogged) = self.auth_log.allow(now) {
            tracing::warn!(%failure, unlogged, "trunk challenge not answered; leg B fails");
        }
    }

    /// Registers leg B's dialog (early or confirmed) the first time a tagged response shows
    /// it; later responses update it.
    fn track_leg_b_dialog(&mut self, key: CallKey, response: &Response) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        match &mut call.b.dialog {
            Some(dialog) => {
                if DialogId::for_incoming_response(response).as_ref() == Some(dialog.id()) {
                    let _ = dialog.on_response(response);
                }
            }
            None => {
                if let Ok(dialog) = Dialog::new_uac(&call.b.invite, response) {
                    self.dialog_owner.insert(dialog.id().clone(), (key, Leg::B));
                    call.b.dialog = Some(dialog);
                }
            }
        }
    }

    fn leg_b_provisional(&mut self, now: Instant, key: CallKey, response: Response) {
        self.track_leg_b_dialog(key, &response);
        let Some(reliable) = self.prack_leg_b(now, key, &response) else {
            // A reliable provisional seen already (or out of order): PRACKed once, relayed once.
            return;
        };
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if !call.state.is_setting_up() || call.a.final_sent.is_some() {
            return;
        }
        let body = if response.body.is_empty() {
            response.body.clone()
        } else {
            // Early media that cannot be anchored is not relayed; ringing still is.
            call.media
                .towards_a(now, &response.body, &mut self.media)
                .unwrap_or_default()
        };
        let relayed = relay_response_to_a(
            &self.config.local,
            &call.a.invite,
            &call.a.tag,
            (&call.intent.caller, call.a.source.transport),
            &response,
            body,
        );
        if call.a.dialog.is_none() {
            // Leg A's early dialog (RFC 3261 §12.1.1): an UPDATE before the answer
            // (RFC 3311) is relayed on it, and the answer confirms it rather than starting
            // another, so callbridge's CSeq numbers on leg A keep increasing.
            if let Ok(dialog) = Dialog::new_uas(&call.a.invite, &relayed) {
                call.a.dialog = Some(dialog);
            }
        }
        call.state = CallState::Ringing;
        let callid = call.intent.callid.clone();
        self.send_provisional_to_a(now, key, relayed, reliable);
        self.control.record(now, &callid, CallEvent::Ringing);
    }

    fn leg_b_answered(&mut self, now: Instant, key: CallKey, response: Response) {
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        let to_tag = response
            .headers
            .to()
            .ok()
            .and_then(|to| to.tag().map(str::to_owned));
        let confirmed_tag = call
            .b
            .dialog
            .as_ref()
            .filter(|_| call.b.final_received.is_some_and(|s| s < 300))
            .map(|d| d.id().remote_tag.clone());
        if let Some(tag) = confirmed_tag {
            if Some(&tag) == to_tag.as_ref() {
                // A retransmission of the 2xx we already acknowledged.
                if let Some(ack) = call.b.ack.clone() {
                    let _ = self.layer.send_stateless_request(ack, call.b.target);
                }
            } else {
                // A second fork answered: acknowledge and release it.
                self.release_stray_answer(now, key, &response);
            }
            return;
        }
        // A 2xx from another fork than the early dialog replaces it (RFC 3261 §13.2.2.4).
        if let Some(call) = self.calls.get_mut(&key) {
            if call
                .b
                .dialog
                .as_ref()
                .is_some_and(|d| Some(&d.id().remote_tag) != to_tag.as_ref())
            {
                if let Some(old) = call.b.dialog.take() {
                    self.dialog_owner.remove(old.id());
                }
            }
            call.b.final_received = Some(response.status);
        }
        self.track_leg_b_dialog(key, &response);
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let callid = call.intent.callid.clone();
        self.control
            .record(now, &callid, CallEvent::LegBFinal(response.status));
        let cseq = response.headers.cseq().map(|c| c.seq).unwrap_or(1);
        if !call.state.is_setting_up() || call.a.final_sent.is_some() {
            // The answer crossed a CANCEL or the no-answer timeout: ACK it, then BYE.
            tracing::info!("leg B answered after the call was abandoned; hanging it up");
            self.ack_leg_b(key, cseq, None);
            self.send_bye(now, key, Leg::B, EndCause::Cancelled);
            return;
        }
        let late_offer = call.a.invite.body.is_empty() && !response.body.is_empty();
        let body = if response.body.is_empty() {
            Ok(response.body.clone())
        } else {
            call.media.towards_a(now, &response.body, &mut self.media)
        };
        let body = match body {
            Ok(body) => body,
            Err(error) => {
                tracing::warn!(%error, "leg B answered with an unusable SDP");
                self.ack_leg_b(key, cseq, None);
                self.send_bye(now, key, Leg::B, EndCause::SignallingFailure);
                self.answer_a_locally(now, key, error.sip_status(), "Callee SDP not usable");
                self.end_call(now, key, Party::Leg(Leg::B), EndCause::SignallingFailure);
                return;
            }
        };
        let answer = relay_response_to_a(
            &self.config.local,
            &call.a.invite,
            &call.a.tag,
            (&call.intent.caller, call.a.source.transport),
            &response,
            body,
        );
        let confirmed = match call.a.dialog.as_mut() {
            Some(early) => early.on_response_sent(&answer),
            None => Dialog::new_uas(&call.a.invite, &answer).map(|dialog| {
                call.a.dialog = Some(dialog);
            }),
        };
        if let Err(error) = confirmed {
            tracing::warn!(%error, "leg A dialog not established");
        }
        call.a.final_sent = Some(response.status);
        call.state = CallState::Answered;
        call.timers.remove(&CallTimer::NoAnswer);
        let a_tx = call.a.invite_tx;
        if late_offer {
            // Leg B made the offer in its 2xx; the answer arrives in leg A's ACK.
            call.deferred_ack = Some(DeferredAck {
                leg: Leg::B,
                cseq,
                waiting_on: a_tx,
            });
        } else {
            self.ack_leg_b(key, cseq, None);
        }
        let mut answer = answer;
        if let Some(se) = self.calls.get(&key).and_then(|c| c.sessions.a_answer) {
            answer
                .headers
                .push(HeaderName::SessionExpires, se.to_header());
            if se.refresher == Some(crate::session_timer::Refresher::Uac) {
                answer.headers.push(HeaderName::Require, "timer");
            }
        }
        if !self.hold_final_for_prack(key, &answer) {
            self.send_response(now, a_tx, answer);
        }
        self.start_session_timers(now, key, &response);
        self.control
            .record(now, &callid, CallEvent::LegAFinal(response.status));
        self.control.record(now, &callid, CallEvent::Answered);
        self.stats.calls_bridged += 1;
        tracing::info!("bridged");
        if let Some(limit) = self.config.max_duration {
            self.arm_call_timer(key, CallTimer::MaxDuration, now + limit);
        }
    }

    /// ACK for leg B's 2xx to the INVITE with CSeq `cseq`, with `body` when leg B's 2xx
    /// carried the offer.
    pub(super) fn ack_leg_b(&mut self, key: CallKey, cseq: u32, body: Option<bytes::Bytes>) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(dialog) = &call.b.dialog else {
            return;
        };
        let mut ack = dialog.create_ack(cseq);
        if let Some(body) = body.filter(|b| !b.is_empty()) {
            ack.headers.set(HeaderName::ContentType, "application/sdp");
            ack.body = body;
        }
        if cseq == call.b.invite.headers.cseq().map(|c| c.seq).unwrap_or(0) {
            call.b.ack = Some(ack.clone());
        }
        let target = call.b.target;
        if let Err(error) = self.layer.send_stateless_request(ack, target) {
            tracing::debug!(%error, "ACK not sent");
        }
    }

    /// ACK and BYE for a 2xx of a dialog we do not want (another fork, or a retransmission
    /// after the call is gone).
    fn release_stray_answer(&mut self, now: Instant, key: CallKey, response: &Response) {
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        let Ok(mut dialog) = Dialog::new_uac(&call.b.invite, response) else {
            return;
        };
        let cseq = response.headers.cseq().map(|c| c.seq).unwrap_or(1);
        let target = call.b.target;
        let _ = self
            .layer
            .send_stateless_request(dialog.create_ack(cseq), target);
        let bye = dialog.create_request(Method::Bye);
        if let Ok(tx) = self.layer.send_request(now, bye, target) {
            self.own(key, TxId::Client(tx));
        }
    }

    fn leg_b_failed(&mut self, now: Instant, key: CallKey, response: Response) {
        let failure = LegBFailure {
            a_status: response.status,
            reason: None,
            cause: EndCause::CalleeRejected,
        };
        self.leg_b_failed_as(now, key, response, failure);
    }

    /// Leg B's INVITE failed with `response`; leg A is answered as `failure` says.
    fn leg_b_failed_as(
        &mut self,
        now: Instant,
        key: CallKey,
        response: Response,
        failure: LegBFailure,
    ) {
        self.track_leg_b_dialog(key, &response);
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if call.b.final_received.is_some() {
            return;
        }
        call.b.final_received = Some(response.status);
        let callid = call.intent.callid.clone();
        self.control
            .record(now, &callid, CallEvent::LegBFinal(response.status));
        if let Some(dialog) = call.b.dialog.take() {
            self.dialog_owner.remove(dialog.id());
        }
        if call.a.final_sent.is_some() {
            // We cancelled (or timed out) leg B; leg A already has its answer.
            return;
        }
        tracing::info!(status = response.status, "callee refused");
        call.a.final_sent = Some(failure.a_status);
        let reason = match (failure.reason, response.headers.get(&HeaderName::Reason)) {
            (Some(reason), _) => reason,
            (None, Some(reason)) => reason.to_owned(),
            (None, None) => reason_header(response.status, &response.reason),
        };
        self.control
            .registry()
            .set_sip_reason(now, &callid, &reason);
        let mut relayed = relay_response_to_a(
            &self.config.local,
            &call.a.invite,
            &call.a.tag,
            (&call.intent.caller, call.a.source.transport),
            &response,
            bytes::Bytes::new(),
        );
        if failure.a_status != response.status {
            relayed.status = failure.a_status;
            relayed.reason = sip_core::message::default_reason(failure.a_status).into();
            relayed.headers.push(HeaderName::Reason, reason);
        } else {
            // The callee's reason is worth passing on; nothing else of leg B crosses.
            for name in [HeaderName::Reason, HeaderName::parse("Retry-After")] {
                if let Some(value) = response.headers.get(&name) {
                    relayed.headers.push(name.clone(), value);
                }
            }
        }
        let tx = call.a.invite_tx;
        self.send_response(now, tx, relayed);
        self.control
            .record(now, &callid, CallEvent::LegAFinal(failure.a_status));
        self.end_call(now, key, Party::Leg(Leg::B), failure.cause);
    }

    /// A response that matches no transaction: a 2xx to leg B's INVITE retransmitted after
    /// the transaction ended gets its ACK again (RFC 3261 §13.2.2.4).
    pub(super) fn on_stray_response(&mut self, response: Response, from: Peer) {
        // Only a 2xx of leg B's INVITE, retransmitted by the trunk, is answered (its ACK
        // again, RFC 3261 §13.2.2.4); any other response matching nothing is never answered.
        if response.class() != 2 || !self.is_trunk(from.addr.ip()) {
            return;
        }
        let is_invite = response
            .headers
            .cseq()
            .is_ok_and(|c| c.method == Method::Invite);
        let Some(id) = DialogId::for_incoming_response(&response).filter(|_| is_invite) else {
            return;
        };
        let Some(&(key, Leg::B)) = self.dialog_owner.get(&id) else {
            return;
        };
        if let Some((ack, target)) = self
            .calls
            .get(&key)
            .and_then(|c| Some((c.b.ack.clone()?, c.b.target)))
        {
            let _ = self.layer.send_stateless_request(ack, target);
        }
    }
}

/// How leg A is told of leg B's failure: by default the same code with the callee's reason
/// (SPEC "SIP behaviour"); a challenge callbridge could not answer is told as 403.
struct LegBFailure {
    a_status: u16,
    /// The Reason recorded and sent on leg A; `None`: the callee's own, else one built from
    /// its status line.
    reason: Option<String>,
    cause: EndCause,
}
