//! Session timers on both legs (RFC 4028), negotiated by [`crate::session_timer`].
//!
//! Each leg of a bridged call has its own timer. Where callbridge is the refresher it sends
//! the refresh itself (UPDATE when the peer allows it, else a re-INVITE with the SDP it last
//! sent on that leg) at half the interval; where the peer is, callbridge watches: no refresh
//! by the interval less a third (or 32 s), and the call is ended on both legs with a BYE,
//! cause `session_expired`. A refresh of callbridge's own that fails (timeout, 408, 481, any
//! final failure but 491) ends the call the same way. Any re-INVITE or UPDATE answered 2xx
//! across callbridge refreshes both legs.

use std::time::{Duration, Instant};

use sip_core::transaction::{ClientTxId, TxId};
use sip_core::{HeaderName, Method, Request, Response};

use super::{destination, Engine};
use crate::call::{CallKey, CallTimer, Leg};
use crate::registry::{CallState, EndCause, Party};
use crate::session_timer::{self, LegTimer, Refresher, SessionExpires};

/// How long a refresh that met a 491 (a re-INVITE crossing it) waits before it goes again.
const GLARE_WAIT: Duration = Duration::from_secs(2);

/// The session timers of a call's two legs.
#[derive(Debug, Default)]
pub struct CallSessions {
    /// What leg A's 2xx says (negotiated from the caller's INVITE); `None`: no timer there.
    pub a_answer: Option<SessionExpires>,
    /// The Min-SE of a 422 from leg B (the retried INVITE asks for at least that).
    pub b_min_se: u32,
    /// INVITEs resent to leg B after a 422.
    pub b_retries: u8,
    /// Each leg's timer once the call is bridged.
    legs: [Option<LegTimer>; 2],
    /// Whether each leg's peer accepts UPDATE (its Allow), for refreshes without SDP.
    allows_update: [bool; 2],
    /// A refresh of callbridge's own in flight on each leg, and the request (to answer a
    /// challenge with).
    refresh: [Option<(ClientTxId, Request, u8)>; 2],
}

impl CallSessions {
    /// The leg whose refresh `tx` carries.
    fn leg_of(&self, tx: ClientTxId) -> Option<Leg> {
        [Leg::A, Leg::B]
            .into_iter()
            .find(|leg| matches!(&self.refresh[leg.index()], Some((t, _, _)) if *t == tx))
    }
}

fn allows_update(headers: &sip_core::Headers) -> bool {
    headers
        .get_all(&HeaderName::Allow)
        .flat_map(sip_core::message::split_top_level_commas)
        .any(|m| m.trim().eq_ignore_ascii_case("UPDATE"))
}

impl Engine {
    /// The call is bridged: leg A answered with `a_answer` (already negotiated), leg B's
    /// 2xx `b_answer`. Arms each leg's timer.
    pub(super) fn start_session_timers(&mut self, now: Instant, key: CallKey, b_answer: &Response) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let sessions = &mut call.sessions;
        sessions.legs = [
            sessions.a_answer.map(session_timer::uas_timer),
            session_timer::uac_timer(&b_answer.headers),
        ];
        sessions.allows_update = [
            allows_update(&call.a.invite.headers),
            allows_update(&b_answer.headers),
        ];
        for leg in [Leg::A, Leg::B] {
            self.arm_session_timer(now, key, leg);
        }
    }

    /// (Re)arms `leg`'s refresh or expiry from `now` (the last refresh).
    fn arm_session_timer(&mut self, now: Instant, key: CallKey, leg: Leg) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(timer) = call.sessions.legs[leg.index()] else {
            return;
        };
        call.timers.remove(&CallTimer::SessionRefresh(leg));
        call.timers.remove(&CallTimer::SessionExpiry(leg));
        if timer.we_refresh {
            self.arm_call_timer(
                key,
                CallTimer::SessionRefresh(leg),
                now + timer.refresh_after(),
            );
        } else {
            self.arm_call_timer(
                key,
                CallTimer::SessionExpiry(leg),
                now + timer.expire_after(),
            );
        }
    }

    /// A re-INVITE or UPDATE answered 2xx across the call: both legs' sessions are fresh.
    pub(super) fn session_refreshed(&mut self, now: Instant, key: CallKey) {
        for leg in [Leg::A, Leg::B] {
            self.arm_session_timer(now, key, leg);
        }
    }

    /// The `Session-Expires` (and `Require: timer` when the peer refreshes) of callbridge's
    /// 2xx to a re-INVITE or UPDATE from `leg`'s peer.
    pub(super) fn add_session_expires(&self, key: CallKey, leg: Leg, response: &mut Response) {
        let Some(timer) = self
            .calls
            .get(&key)
            .and_then(|call| call.sessions.legs[leg.index()])
        else {
            return;
        };
        // The peer sent the request: it is the UAC of this exchange.
        let refresher = if timer.we_refresh {
            Refresher::Uas
        } else {
            Refresher::Uac
        };
        let value = SessionExpires {
            delta: u32::try_from(timer.interval.as_secs()).unwrap_or(u32::MAX),
            refresher: Some(refresher),
        };
        response
            .headers
            .push(HeaderName::SessionExpires, value.to_header());
        if refresher == Refresher::Uac {
            response.headers.push(HeaderName::Require, "timer");
        }
    }

    /// A 422 to leg B's INVITE: sent again asking for the callee's Min-SE (once or twice; a
    /// callee that keeps refusing ends leg B like any failure). `false`: not retried.
    pub(super) fn retry_session_interval(
        &mut self,
        now: Instant,
        key: CallKey,
        response: &Response,
    ) -> bool {
        let config = self.config.session_timers;
        let Some(call) = self.calls.get_mut(&key) else {
            return false;
        };
        let Some(wanted) = session_timer::min_se(&response.headers) else {
            return false;
        };
        if call.b.cancelled || call.a.final_sent.is_some() || call.sessions.b_retries >= 2 {
            return false;
        }
        let Some(asked) = session_timer::uac_request(config, wanted) else {
            return false;
        };
        let mut retry = call.b.invite.clone();
        super::incoming::add_session_request(&mut retry, asked, config.min_se.max(wanted));
        let target = call.b.target;
        if !self.send_leg_b_invite_again(now, key, retry, target) {
            return false;
        }
        if let Some(call) = self.calls.get_mut(&key) {
            call.sessions.b_retries += 1;
            call.sessions.b_min_se = wanted;
        }
        true
    }

    /// [`CallTimer::SessionRefresh`]: callbridge refreshes `leg`'s session.
    pub(super) fn session_refresh_due(&mut self, now: Instant, key: CallKey, leg: Leg) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        if call.state != CallState::Answered {
            return;
        }
        let Some(timer) = call.sessions.legs[leg.index()] else {
            return;
        };
        let use_update = call.sessions.allows_update[leg.index()];
        if !use_update && call.invite_pending() {
            // A re-INVITE is crossing the call: it refreshes both legs when it is answered.
            return self.arm_call_timer(key, CallTimer::SessionRefresh(leg), now + GLARE_WAIT);
        }
        let last_sdp = call.media.last_sent(leg);
        let Some(dialog) = call.dialog_mut(leg) else {
            return;
        };
        let method = if use_update {
            Method::Update
        } else {
            Method::Invite
        };
        let mut refresh = dialog.create_request(method.clone());
        let se = SessionExpires {
            delta: u32::try_from(timer.interval.as_secs()).unwrap_or(u32::MAX),
            refresher: Some(Refresher::Uac),
        };
        refresh
            .headers
            .push(HeaderName::SessionExpires, se.to_header());
        refresh.headers.push(HeaderName::Supported, "timer");
        if method == Method::Invite {
            if let Some(sdp) = last_sdp {
                refresh
                    .headers
                    .push(HeaderName::ContentType, "application/sdp");
                refresh.body = sdp;
            }
        }
        let to = destination(call, leg);
        let kept = refresh.clone();
        match self.layer.send_request(now, refresh, to) {
            Ok(tx) => {
                if let Some(call) = self.calls.get_mut(&key) {
                    call.sessions.refresh[leg.index()] = Some((tx, kept, 0));
                }
                self.own(key, TxId::Client(tx));
                tracing::debug!(?leg, method = %method.as_str(), "session refresh sent");
            }
            Err(error) => {
                tracing::warn!(%error, ?leg, "session refresh not sent");
                self.session_failed(now, key, leg);
            }
        }
    }

    /// [`CallTimer::SessionExpiry`]: `leg`'s peer did not refresh in time.
    pub(super) fn session_expiry_due(&mut self, now: Instant, key: CallKey, leg: Leg) {
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        if call.state != CallState::Answered {
            return;
        }
        let _entered = call.span.clone().entered();
        tracing::info!(?leg, "session not refreshed in time; hanging up");
        self.hang_up(now, key, Party::System, EndCause::SessionExpired);
    }

    /// Whether `tx` is a refresh of callbridge's own on call `key`.
    pub(super) fn is_session_refresh(&self, key: CallKey, tx: ClientTxId) -> bool {
        self.calls
            .get(&key)
            .is_some_and(|call| call.sessions.leg_of(tx).is_some())
    }

    /// The answer to one of callbridge's refreshes.
    pub(super) fn on_refresh_response(
        &mut self,
        now: Instant,
        key: CallKey,
        tx: ClientTxId,
        response: Response,
    ) {
        if response.status < 200 {
            return;
        }
        let credentials = self.config.trunk_credentials.clone();
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let Some(leg) = call.sessions.leg_of(tx) else {
            return;
        };
        let Some((_, request, rounds)) = call.sessions.refresh[leg.index()].take() else {
            return;
        };
        match response.status {
            200..=299 => {
                if request.method == Method::Invite {
                    let cseq = response.headers.cseq().map(|c| c.seq).unwrap_or(0);
                    let to = destination(call, leg);
                    if let Some(dialog) = call.dialog_mut(leg) {
                        let ack = dialog.create_ack(cseq);
                        let _ = self.layer.send_stateless_request(ack, to);
                    }
                }
                self.session_refreshed(now, key);
            }
            401 | 407 if leg == Leg::B => {
                let Some(dialog) = call.dialog_mut(leg) else {
                    return;
                };
                let mut retry = dialog.create_request(request.method.clone());
                for name in [
                    HeaderName::SessionExpires,
                    HeaderName::Supported,
                    HeaderName::ContentType,
                ] {
                    for value in request.headers.get_all(&name) {
                        retry.headers.push(name.clone(), value);
                    }
                }
                retry.body = request.body.clone();
                match crate::auth::answer_into(
                    &mut retry,
                    rounds > 0,
                    &response,
                    credentials.as_ref(),
                    rounds,
                ) {
                    Ok(()) => {
                        let to = destination(call, leg);
                        let kept = retry.clone();
                        match self.layer.send_request(now, retry, to) {
                            Ok(tx) => {
                                if let Some(call) = self.calls.get_mut(&key) {
                                    call.sessions.refresh[leg.index()] =
                                        Some((tx, kept, rounds + 1));
                                }
                                self.own(key, TxId::Client(tx));
                            }
                            Err(_) => self.session_failed(now, key, leg),
                        }
                    }
                    Err(failure) => {
                        tracing::warn!(%failure, "session refresh challenged and not answered");
                        self.session_failed(now, key, leg);
                    }
                }
            }
            491 => self.arm_call_timer(key, CallTimer::SessionRefresh(leg), now + GLARE_WAIT),
            _ => {
                tracing::info!(status = response.status, ?leg, "session refresh refused");
                self.session_failed(now, key, leg);
            }
        }
    }

    /// A refresh of callbridge's own timed out or could not be sent. `false`: `tx` is not one.
    pub(super) fn on_refresh_failure(
        &mut self,
        now: Instant,
        key: CallKey,
        tx: ClientTxId,
    ) -> bool {
        let Some(leg) = self.calls.get(&key).and_then(|c| c.sessions.leg_of(tx)) else {
            return false;
        };
        if let Some(call) = self.calls.get_mut(&key) {
            call.sessions.refresh[leg.index()] = None;
        }
        tracing::info!(?leg, "session refresh unanswered");
        self.session_failed(now, key, leg);
        true
    }

    /// A refresh failed: the session is over, on both legs.
    fn session_failed(&mut self, now: Instant, key: CallKey, leg: Leg) {
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        if call.state != CallState::Answered {
            return;
        }
        let _entered = call.span.clone().entered();
        tracing::info!(?leg, "session refresh failed; hanging up");
        self.hang_up(now, key, Party::System, EndCause::SessionExpired);
    }
}
