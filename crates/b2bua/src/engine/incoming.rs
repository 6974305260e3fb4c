//! Requests that arrive outside a known dialog: a new INVITE on leg A (the decision to bridge
//! or refuse), CANCEL, and the out-of-dialog requests a trunk sends (OPTIONS pings).

use std::time::Instant;

use sip_core::dialog::DialogId;
use sip_core::transaction::{ServerTxId, TxId};
use sip_core::{ids, HeaderName, Method, Peer, Request};

use super::Engine;
use crate::call::{Call, CallKey, CallTimer, Leg, LegA, LegB};
use crate::media::{CallMedia, MediaError, SignallingIps};
use crate::outbound::{leg_b_invite, local_response, TrunkUri, ALLOW, SUPPORTED};
use crate::refusal::Refusal;
use crate::registry::{CallEvent, EndCause, Party};
use crate::session_timer::{self, SessionExpires, UasDecision};

impl Engine {
    pub(super) fn on_request(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        request: Request,
        from: Peer,
        cancels: Option<ServerTxId>,
    ) {
        let in_dialog = request
            .headers
            .to()
            .map(|to| to.tag().is_some())
            .unwrap_or(false);
        match request.method {
            Method::Cancel => self.on_cancel(now, tx, &request, cancels),
            _ if in_dialog => self.on_in_dialog(now, tx, request, from),
            Method::Invite => self.on_new_invite(now, tx, request, from),
            Method::Options => {
                // A To tag on every final response (RFC 3261 §8.2.6.2).
                let tag = ids::new_tag();
                let mut response =
                    local_response(&self.config.local, &request, 200, Some(&tag), None);
                response.headers.push(HeaderName::Allow, ALLOW);
                response
                    .headers
                    .push(HeaderName::parse("Accept"), "application/sdp");
                response
                    .headers
                    .push(HeaderName::Supported, SUPPORTED.join(", "));
                self.send_response(now, tx, response);
            }
            Method::Bye | Method::Update | Method::Info => {
                self.stats.unmatched_requests += 1;
                self.respond(now, tx, &request, 481, None, None);
            }
            Method::Other(_) => self.respond(now, tx, &request, 501, None, None),
            _ => {
                let tag = ids::new_tag();
                let mut response =
                    local_response(&self.config.local, &request, 405, Some(&tag), None);
                response.headers.push(HeaderName::Allow, ALLOW);
                self.send_response(now, tx, response);
            }
        }
    }

    /// Refuses an INVITE before any leg B exists.
    pub(super) fn refuse(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        request: &Request,
        status: u16,
        reason: Refusal,
        text: &str,
    ) {
        self.count_refusal(now, status, reason);
        self.respond(now, tx, request, status, None, Some(text));
    }

    /// Counts (and rate-limits the log line of) an INVITE refused with `status`.
    pub(super) fn count_refusal(&mut self, now: Instant, status: u16, reason: Refusal) {
        let code = reason.code();
        if let Some(unlogged) = self.refusal_log.allow(now) {
            tracing::info!(status, reason = code, unlogged, "incoming call refused");
        }
        *self.stats.calls_refused.entry(code).or_default() += 1;
    }

    /// A new INVITE that passed the door (trusted source, room for a call): refused, or
    /// matched to its intent and leg B placed.
    fn on_new_invite(&mut self, now: Instant, tx: ServerTxId, request: Request, from: Peer) {
        if let Some(Ok(0)) = request.headers.max_forwards() {
            return self.refuse(
                now,
                tx,
                &request,
                483,
                Refusal::TooManyHops,
                "Too many hops",
            );
        }
        let unsupported = crate::outbound::unsupported_requirements(&request);
        if !unsupported.is_empty() {
            let code = Refusal::UnsupportedExtension.code();
            *self.stats.calls_refused.entry(code).or_default() += 1;
            let mut response = local_response(
                &self.config.local,
                &request,
                420,
                Some(&ids::new_tag()),
                Some("Bad Extension"),
            );
            response
                .headers
                .push(HeaderName::parse("Unsupported"), unsupported.join(", "));
            return self.send_response(now, tx, response);
        }
        if !request.headers.contacts().is_ok_and(|c| !c.is_empty()) {
            return self.refuse(
                now,
                tx,
                &request,
                400,
                Refusal::Malformed,
                "Missing Contact",
            );
        }
        if !self.control.store_available() {
            // Before the claim: the intent waits for the store to answer again.
            return self.refuse_unavailable(
                now,
                tx,
                &request,
                Refusal::StoreUnavailable,
                "Store unavailable",
            );
        }
        if let Some(retry_after) = self.trunk_down_retry_after() {
            // Before the claim too: the intent waits for the trunk to answer again.
            return self.refuse_trunk_down(now, tx, &request, retry_after);
        }
        if !self.media.has_capacity() {
            // Refused before the intent is claimed: the user can simply dial again.
            self.log_media_exhausted(now);
            return self.refuse(
                now,
                tx,
                &request,
                503,
                Refusal::MediaExhausted,
                "No media ports available",
            );
        }
        // The calling number: P-Asserted-Identity from a trusted trunk, else the From user.
        let asserted = request
            .headers
            .p_asserted_identity()
            .and_then(Result::ok)
            .and_then(|pai| pai.uri.user().map(str::to_owned));
        let calling = asserted.or_else(|| {
            request
                .headers
                .from()
                .ok()
                .and_then(|f| f.uri.user().map(str::to_owned))
        });
        let dialled = request.uri.user().map(str::to_owned);
        let refuse_code = self.config.refuse_code;
        let (Some(calling), Some(dialled)) = (calling, dialled) else {
            return self.refuse(
                now,
                tx,
                &request,
                refuse_code,
                Refusal::NoIntent(crate::intent::NoIntent::None),
                "No call intent",
            );
        };
        // Session timers (RFC 4028 §9): an interval below ours is refused before the claim,
        // so that the caller's retry with a longer one finds its intent.
        let a_session =
            match session_timer::negotiate_uas(&request.headers, self.config.session_timers) {
                UasDecision::TooBrief { min_se } => {
                    let code = Refusal::SessionIntervalTooSmall.code();
                    *self.stats.calls_refused.entry(code).or_default() += 1;
                    let mut response = local_response(
                        &self.config.local,
                        &request,
                        422,
                        Some(&ids::new_tag()),
                        Some("Session Interval Too Small"),
                    );
                    response
                        .headers
                        .push(HeaderName::parse("Min-SE"), min_se.to_string());
                    return self.send_response(now, tx, response);
                }
                UasDecision::None => None,
                UasDecision::Timer(answer) => Some(answer),
            };
        if self.control.shared().is_some() {
            // A cluster: the claim is a round trip to the shared table, answered through
            // handle_claim. Ownership is this node's copy of the numbers, checked first.
            if !self.control.may_use(&calling, &dialled) {
                let no = crate::intent::NoIntent::NotOwned;
                self.control
                    .refused(now, &calling, &dialled, refuse_code, no);
                let text = no.to_string();
                return self.refuse(now, tx, &request, refuse_code, Refusal::NoIntent(no), &text);
            }
            let parked = super::claims::Parked {
                tx,
                request,
                from,
                a_session,
                calling: crate::intent::normalize_number(&calling).to_owned(),
                dialled: crate::intent::normalize_number(&dialled).to_owned(),
            };
            return self.park_for_claim(now, parked);
        }
        let intent = match self.control.claim(now, &calling, &dialled) {
            Ok(intent) => intent,
            Err(no) => {
                self.control
                    .refused(now, &calling, &dialled, refuse_code, no);
                let text = no.to_string();
                return self.refuse(now, tx, &request, refuse_code, Refusal::NoIntent(no), &text);
            }
        };
        self.place_call(now, tx, request, from, a_session, intent);
    }

    /// The INVITE's intent is claimed: leg B is placed and the call begins.
    pub(super) fn place_call(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        request: Request,
        from: Peer,
        a_session: Option<SessionExpires>,
        intent: crate::intent::Intent,
    ) {
        let span = tracing::info_span!("call", callid = %intent.callid);
        let _entered = span.enter();
        tracing::info!(telnum = %intent.telnum, caller = %intent.caller, callee = %intent.callee, "intent matched; placing leg B");

        let a_tag = ids::new_tag();
        let fail = |engine: &mut Engine, status: u16, cause: EndCause, text: &str| {
            engine.respond(now, tx, &request, status, Some(&a_tag), Some(text));
            engine
                .control
                .record(now, &intent.callid, CallEvent::LegAFinal(status));
            engine.control.record(
                now,
                &intent.callid,
                CallEvent::Ended {
                    by: Party::System,
                    cause,
                },
            );
            *engine.stats.calls_failed.entry(cause.code()).or_default() += 1;
        };
        let key = CallKey(self.next_key);
        self.next_key += 1;
        let (target, fallbacks) = match self.trunk_targets.split_first() {
            Some((first, rest)) => (*first, rest.to_vec()),
            None => (self.config.trunk, Vec::new()),
        };
        let signalling = SignallingIps {
            a: Some(from.addr.ip()),
            b: Some(target.addr.ip()),
        };
        let mut media = CallMedia::new(key, signalling);
        let body = if request.body.is_empty() {
            request.body.clone()
        } else {
            match media.towards_b(now, &request.body, &mut self.media) {
                Ok(body) => body,
                Err(error) => {
                    let cause = match error {
                        MediaError::Exhausted => {
                            self.log_media_exhausted(now);
                            EndCause::ResourcesExhausted
                        }
                        MediaError::Malformed(_) => EndCause::SignallingFailure,
                    };
                    return fail(self, error.sip_status(), cause, &error.to_string());
                }
            }
        };
        let trunk = TrunkUri {
            host: &self.config.trunk_host,
            port: self.config.trunk_port,
            transport: target.transport,
        };
        let mut b_invite = leg_b_invite(&self.config.local, &intent, &trunk, &request, body);
        if let Some(asked) = session_timer::uac_request(self.config.session_timers, 0) {
            add_session_request(&mut b_invite, asked, self.config.session_timers.min_se);
        }
        let b_tx = match self.layer.send_request(now, b_invite, target) {
            Ok(b_tx) => b_tx,
            Err(error) => {
                media.close(&mut self.media);
                return fail(self, 500, EndCause::SignallingFailure, &error.to_string());
            }
        };
        let Some(b_invite) = self.layer.client_request(b_tx).cloned() else {
            // Unreachable: the layer holds the request it has just accepted.
            media.close(&mut self.media);
            return;
        };
        let a_dialog_id = DialogId::new(
            request.headers.call_id().unwrap_or_default(),
            a_tag.clone(),
            request
                .headers
                .from()
                .ok()
                .and_then(|f| f.tag().map(str::to_owned))
                .unwrap_or_default(),
        );
        let mut call = Call::new(
            key,
            intent,
            span.clone(),
            LegA {
                invite: request,
                invite_tx: tx,
                source: from,
                tag: a_tag,
                dialog_id: a_dialog_id.clone(),
                final_sent: None,
                dialog: None,
            },
            LegB {
                target,
                fallbacks,
                invite: b_invite,
                invite_tx: b_tx,
                final_received: None,
                cancelled: false,
                dialog: None,
                ack: None,
                invite_auth_rounds: 0,
                bye_auth_rounds: 0,
                redirects: 0,
                tried: Vec::new(),
            },
        );
        call.media = media;
        call.sessions.a_answer = a_session;
        drop(_entered);
        self.by_callid.insert(call.intent.callid.clone(), key);
        self.calls.insert(key, Box::new(call));
        self.own(key, TxId::Server(tx));
        self.own(key, TxId::Client(b_tx));
        self.dialog_owner.insert(a_dialog_id, (key, Leg::A));
        let deadline = now + self.config.no_answer;
        self.arm_call_timer(key, CallTimer::NoAnswer, deadline);
    }

    /// CANCEL (RFC 3261 §9.2): 200 to the CANCEL; if leg A is unanswered, 487 to it and
    /// leg B cancelled. A CANCEL matching nothing gets 481.
    fn on_cancel(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        request: &Request,
        cancels: Option<ServerTxId>,
    ) {
        if let Some(invite) = cancels {
            if self.cancel_parked(now, tx, request, invite) {
                return;
            }
        }
        let key = cancels.and_then(|invite| self.tx_owner.get(&TxId::Server(invite)).copied());
        let Some(key) = key.filter(|key| self.calls.contains_key(key)) else {
            self.stats.unmatched_requests += 1;
            return self.respond(now, tx, request, 481, None, None);
        };
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        let tag = call.a.tag.clone();
        self.own(key, TxId::Server(tx));
        self.respond(now, tx, request, 200, Some(&tag), None);
        self.caller_gave_up(now, key);
    }

    /// The caller abandoned an unanswered call (CANCEL, or BYE on the early dialog): 487 on
    /// leg A, leg B cancelled.
    pub(super) fn caller_gave_up(&mut self, now: Instant, key: CallKey) {
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        if call.a.final_sent.is_some() {
            return;
        }
        tracing::info!(parent: &call.span, "caller cancelled");
        self.answer_a_locally(now, key, 487, "Call cancelled by the caller");
        self.cancel_leg_b(now, key);
        self.end_call(now, key, Party::Leg(Leg::A), EndCause::Cancelled);
    }
}

impl Engine {
    /// Relay ports ran out: warn once per burst (at most every 10 s) with how many calls
    /// were refused since the last warning, instead of once per refused call.
    fn log_media_exhausted(&mut self, now: Instant) {
        if let Some(unlogged) = self.exhausted_log.allow(now) {
            tracing::warn!(
                refused_since_last = unlogged + 1,
                "media ports exhausted (media.rtp_ports); refusing calls with 503"
            );
        }
    }
}

/// `Session-Expires` and `Min-SE` of a request asking for a session timer (RFC 4028 §7.1),
/// replacing any it had.
pub(super) fn add_session_request(request: &mut Request, asked: SessionExpires, min_se: u32) {
    request
        .headers
        .set(HeaderName::SessionExpires, asked.to_header());
    request
        .headers
        .set(HeaderName::parse("Min-SE"), min_se.to_string());
}
