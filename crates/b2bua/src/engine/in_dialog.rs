//! Requests inside a call's dialogs: BYE ends both legs; re-INVITE, UPDATE, INFO and other
//! requests are relayed to the other leg and their answers relayed back (with SDP through the
//! media session); ACKs complete late-offer exchanges.

use std::time::Instant;

use bytes::Bytes;
use sip_core::dialog::{DialogId, DialogState};
use sip_core::transaction::{ClientTxId, ServerTxId, TxId};
use sip_core::{HeaderName, Method, NameAddr, Peer, Request, Response};

use super::{destination, Engine};
use crate::call::{CallKey, DeferredAck, Leg, Relay};
use crate::outbound::tag_to;
use crate::registry::{CallState, EndCause, Party};

/// In-dialog requests of one call relayed and not yet answered by the other leg.
const MAX_UNANSWERED_RELAYS: usize = 16;

impl Engine {
    pub(super) fn on_in_dialog(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        request: Request,
        from: Peer,
    ) {
        let owner = DialogId::for_incoming_request(&request)
            .and_then(|id| self.dialog_owner.get(&id).copied());
        let Some((key, leg)) = owner else {
            self.stats.unmatched_requests += 1;
            return self.respond(now, tx, &request, 481, None, None);
        };
        if !self.is_leg_peer(leg, from) {
            // Not this leg's peer: refused, and the call does not even hear of it.
            self.stats.wrong_peer_messages += 1;
            if let Some(unlogged) = self.wrong_peer_log.allow(now) {
                tracing::info!(?leg, source = %from.addr, method = %request.method.as_str(),
                    unlogged, "in-dialog request from another peer than the leg's refused");
            }
            return self.respond(now, tx, &request, 403, None, Some("Not this dialog's peer"));
        }
        let Some(call) = self.calls.get_mut(&key) else {
            return self.respond(now, tx, &request, 481, None, None);
        };
        let _entered = call.span.clone().entered();
        let our_tag = match leg {
            Leg::A => call.a.tag.clone(),
            Leg::B => call
                .b
                .dialog
                .as_ref()
                .map(|d| d.id().local_tag.clone())
                .unwrap_or_default(),
        };
        if let Some(dialog) = call.dialog_mut(leg) {
            if let Err(error) = dialog.on_request(&request) {
                tracing::debug!(%error, "in-dialog request refused");
                let status = error.status_code();
                self.own(key, TxId::Server(tx));
                return self.respond(now, tx, &request, status, Some(&our_tag), None);
            }
        }
        self.own(key, TxId::Server(tx));
        match request.method {
            Method::Bye => self.on_bye(now, key, leg, tx, &request, &our_tag),
            Method::Prack if leg == Leg::A => {
                self.on_prack_from_a(now, key, tx, &request, &our_tag)
            }
            Method::Invite if self.calls.get(&key).is_some_and(|c| c.invite_pending()) => {
                // RFC 3261 §14.2: an INVITE is already in progress on this call.
                self.respond(now, tx, &request, 491, Some(&our_tag), None);
            }
            _ => self.relay(now, key, leg, tx, request, &our_tag),
        }
    }

    fn on_bye(
        &mut self,
        now: Instant,
        key: CallKey,
        leg: Leg,
        tx: ServerTxId,
        request: &Request,
        our_tag: &str,
    ) {
        self.respond(now, tx, request, 200, Some(our_tag), None);
        if let Some(call) = self.calls.get_mut(&key) {
            // The dialog the BYE arrived on is over: never BYE it back.
            call.mark_bye_sent(leg);
            if let Some(dialog) = call.dialog_mut(leg) {
                dialog.terminate();
            }
        }
        let (answered, a_final) = match self.calls.get(&key) {
            Some(call) => (call.state == CallState::Answered, call.a.final_sent),
            None => return,
        };
        let by = Party::Leg(leg);
        tracing::info!(?by, "hangup");
        if let (Some(reason), Some(call)) = (
            request.headers.get(&HeaderName::Reason),
            self.calls.get(&key),
        ) {
            self.control
                .registry()
                .set_sip_reason(now, &call.intent.callid, reason);
        }
        if leg == Leg::A && a_final.is_none() {
            // BYE on the early dialog: the caller gave up before the answer.
            return self.caller_gave_up(now, key);
        }
        if !answered && a_final.is_none() {
            self.answer_a_locally(now, key, 480, "Callee hung up");
            // Its INVITE is still unanswered: without a CANCEL, a callee that never sends
            // the final response would hold the call (and its transaction) forever.
            self.cancel_leg_b(now, key);
        }
        self.send_bye(now, key, leg.other(), EndCause::Hangup);
        self.end_call(now, key, by, EndCause::Hangup);
    }

    /// Relays an in-dialog request to the other leg.
    fn relay(
        &mut self,
        now: Instant,
        key: CallKey,
        from_leg: Leg,
        tx: ServerTxId,
        request: Request,
        our_tag: &str,
    ) {
        let to_leg = from_leg.other();
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        // Before the answer only UPDATE may cross (RFC 3311 §5.1), on the early dialogs both
        // legs have once leg B's tagged provisional was relayed to leg A.
        let ready = match call.state {
            CallState::Answered => true,
            CallState::Trying | CallState::Ringing => request.method == Method::Update,
            CallState::Intent | CallState::Ended => false,
        } && call
            .dialog(to_leg)
            .is_some_and(|d| d.state() != DialogState::Terminated);
        if !ready {
            return self.respond(now, tx, &request, 481, Some(our_tag), None);
        }
        // A peer flooding a call with in-dialog requests must not grow its relay table (and
        // the other leg's load) without bound.
        let unanswered = call.relays.values().filter(|r| !r.answered).count();
        if unanswered >= MAX_UNANSWERED_RELAYS {
            return self.respond(
                now,
                tx,
                &request,
                503,
                Some(our_tag),
                Some("Too many requests"),
            );
        }
        let carries_sdp = !request.body.is_empty()
            && request
                .headers
                .content_type()
                .is_none_or(|ct| ct.to_ascii_lowercase().starts_with("application/sdp"));
        let body = if carries_sdp {
            let converted = match to_leg {
                Leg::B => call.media.towards_b(now, &request.body, &mut self.media),
                Leg::A => call.media.towards_a(now, &request.body, &mut self.media),
            };
            match converted {
                Ok(body) => body,
                Err(error) => {
                    let status = error.sip_status();
                    return self.respond(now, tx, &request, status, Some(our_tag), None);
                }
            }
        } else {
            request.body.clone()
        };
        let Some(dialog) = call.dialog_mut(to_leg) else {
            return;
        };
        let mut out = dialog.create_request(request.method.clone());
        let cseq = dialog.local_seq();
        if !body.is_empty() {
            let content_type = request
                .headers
                .content_type()
                .unwrap_or("application/sdp")
                .to_owned();
            out.headers.set(HeaderName::ContentType, content_type);
        }
        // Headers that describe the request's payload cross; nothing of the topology does.
        for name in [
            HeaderName::parse("Event"),
            HeaderName::parse("Info-Package"),
        ] {
            if let Some(value) = request.headers.get(&name) {
                out.headers.push(name.clone(), value);
            }
        }
        out.body = body;
        let to = destination(call, to_leg);
        let sent =
            (to_leg == Leg::B && self.config.trunk_credentials.is_some()).then(|| out.clone());
        match self.layer.send_request(now, out, to) {
            Ok(client_tx) => {
                if let Some(call) = self.calls.get_mut(&key) {
                    call.relays.insert(
                        client_tx,
                        Relay {
                            from_leg,
                            server_tx: tx,
                            request,
                            cseq,
                            answered: false,
                            ack: None,
                            sent,
                            auth_rounds: 0,
                        },
                    );
                }
                self.own(key, TxId::Client(client_tx));
            }
            Err(error) => {
                tracing::warn!(%error, "in-dialog request not relayed");
                self.respond(now, tx, &request, 500, Some(our_tag), None);
            }
        }
    }

    /// The other leg answered a relayed request: pass the answer back.
    pub(super) fn on_relay_response(
        &mut self,
        now: Instant,
        key: CallKey,
        client_tx: ClientTxId,
        response: Response,
    ) {
        if response.status == 100 {
            return;
        }
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(relay) = call.relays.get(&client_tx) else {
            return;
        };
        let from_leg = relay.from_leg;
        let to_leg = from_leg.other();
        let is_invite = relay.request.method == Method::Invite;
        if relay.answered {
            // A retransmitted 2xx to a relayed re-INVITE: ACK it again.
            if let (true, Some(ack)) = (response.class() == 2, relay.ack.clone()) {
                let to = destination(call, to_leg);
                let _ = self.layer.send_stateless_request(ack, to);
            }
            return;
        }
        if let Some(dialog) = call.dialog_mut(to_leg) {
            let _ = dialog.on_response(&response);
        }
        let carries_sdp = !response.body.is_empty();
        let body = if carries_sdp {
            let converted = match from_leg {
                Leg::A => call.media.towards_a(now, &response.body, &mut self.media),
                Leg::B => call.media.towards_b(now, &response.body, &mut self.media),
            };
            converted.unwrap_or_default()
        } else {
            Bytes::new()
        };
        let Some(relay) = call.relays.get_mut(&client_tx) else {
            return;
        };
        let mut answer =
            Response::to_request(&relay.request, response.status, Some(&response.reason));
        let our_tag = match from_leg {
            Leg::A => call.a.tag.clone(),
            Leg::B => call
                .b
                .dialog
                .as_ref()
                .map(|d| d.id().local_tag.clone())
                .unwrap_or_default(),
        };
        tag_to(&mut answer, &our_tag);
        if response.class() == 2 && matches!(relay.request.method, Method::Invite | Method::Update)
        {
            let user = call.intent.caller.clone();
            // Toward the trunk, the Contact leg B's INVITE gave (its transport, the TLS port).
            let contact = match from_leg {
                Leg::B => self
                    .config
                    .local
                    .contact_over(&user, self.config.trunk.transport),
                Leg::A => self.config.local.contact(&user),
            };
            answer
                .headers
                .push(HeaderName::Contact, NameAddr::new(contact).to_string());
        }
        if !body.is_empty() {
            let content_type = response
                .headers
                .content_type()
                .unwrap_or("application/sdp")
                .to_owned();
            answer.headers.set(HeaderName::ContentType, content_type);
            answer.body = body;
        }
        let final_response = response.status >= 200;
        if final_response {
            relay.answered = true;
        }
        let refreshes = response.class() == 2
            && matches!(relay.request.method, Method::Invite | Method::Update);
        let (server_tx, cseq, offer_in_answer) = (
            relay.server_tx,
            relay.cseq,
            relay.request.body.is_empty() && carries_sdp,
        );
        if is_invite && response.class() == 2 {
            if offer_in_answer {
                call.deferred_ack = Some(DeferredAck {
                    leg: to_leg,
                    cseq,
                    waiting_on: server_tx,
                });
            } else {
                self.ack_relayed(key, client_tx, to_leg, cseq, None);
            }
        }
        let mut answer = answer;
        if refreshes {
            // A re-INVITE or UPDATE answered across the call refreshes both legs' sessions,
            // and the answer says the session timer of the leg it goes to.
            self.add_session_expires(key, from_leg, &mut answer);
            self.session_refreshed(now, key);
        }
        self.send_response(now, server_tx, answer);
        if response.status == 481 && final_response {
            // The other leg's dialog is gone: the call cannot continue.
            self.hang_up(now, key, Party::System, EndCause::SignallingFailure);
        }
    }

    fn ack_relayed(
        &mut self,
        key: CallKey,
        client_tx: ClientTxId,
        leg: Leg,
        cseq: u32,
        body: Option<Bytes>,
    ) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(dialog) = call.dialog(leg) else {
            return;
        };
        let mut ack = dialog.create_ack(cseq);
        if let Some(body) = body.filter(|b| !b.is_empty()) {
            ack.headers.set(HeaderName::ContentType, "application/sdp");
            ack.body = body;
        }
        if let Some(relay) = call.relays.get_mut(&client_tx) {
            relay.ack = Some(ack.clone());
        }
        let to = destination(call, leg);
        let _ = self.layer.send_stateless_request(ack, to);
    }

    /// An ACK for a 2xx we sent. It completes a late-offer exchange when the other leg's
    /// ACK was waiting for the SDP answer it carries.
    pub(super) fn on_ack(
        &mut self,
        now: Instant,
        tx: Option<ServerTxId>,
        request: Request,
        from: Peer,
    ) {
        let Some(tx) = tx else {
            return;
        };
        let leg = DialogId::for_incoming_request(&request)
            .and_then(|id| self.dialog_owner.get(&id).map(|&(_, leg)| leg));
        if leg.is_some_and(|leg| !self.is_leg_peer(leg, from)) {
            self.stats.wrong_peer_messages += 1;
            return;
        }
        let Some(&key) = self.tx_owner.get(&TxId::Server(tx)) else {
            return;
        };
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(deferred) = call.deferred_ack.filter(|d| d.waiting_on == tx) else {
            return;
        };
        call.deferred_ack = None;
        let body = if request.body.is_empty() {
            None
        } else {
            let converted = match deferred.leg {
                Leg::B => call.media.towards_b(now, &request.body, &mut self.media),
                Leg::A => call.media.towards_a(now, &request.body, &mut self.media),
            };
            converted.ok()
        };
        if deferred.leg == Leg::B && tx == call.a.invite_tx {
            self.ack_leg_b(key, deferred.cseq, body);
            return;
        }
        let relay = call
            .relays
            .iter()
            .find(|(_, r)| r.server_tx == tx)
            .map(|(id, _)| *id);
        if let Some(client_tx) = relay {
            self.ack_relayed(key, client_tx, deferred.leg, deferred.cseq, body);
        }
    }
}
