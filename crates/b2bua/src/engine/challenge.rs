//! The trunk's digest challenges (401/407) to leg B's requests: the INVITE, the requests
//! relayed to leg B (re-INVITE, UPDATE, INFO) and callbridge's own BYE are sent again once
//! with credentials (same Call-ID and From tag, CSeq + 1, a new branch), as RFC 3261 §22.2
//! wants; the rule of when to stop is [`crate::auth`]'s. CANCEL and ACK cannot be challenged
//! (§22.1), so they never get here.

use std::time::Instant;

use sip_core::transaction::{ClientTxId, TxId};
use sip_core::{HeaderName, Method, Request, Response};

use super::{destination, Engine};
use crate::auth::{self, AuthFailure};
use crate::call::{CallKey, Leg};

/// Whether `status` is a digest challenge.
pub(super) fn is_challenge(status: u16) -> bool {
    matches!(status, 401 | 407)
}

impl Engine {
    /// A 401/407 to leg B's INVITE: sent again with credentials, or the reason it is not.
    pub(super) fn answer_invite_challenge(
        &mut self,
        now: Instant,
        key: CallKey,
        response: &Response,
    ) -> Result<(), AuthFailure> {
        let Some(call) = self.calls.get(&key) else {
            return Ok(());
        };
        if call.b.cancelled || call.a.final_sent.is_some() {
            // Leg A has its answer already (a CANCEL crossed the challenge): nothing to retry.
            return Err(AuthFailure::Rejected);
        }
        let retry = auth::answer(
            &call.b.invite,
            response,
            self.config.trunk_credentials.as_ref(),
            call.b.invite_auth_rounds,
        )?;
        let target = call.b.target;
        if !self.send_leg_b_invite_again(now, key, retry, target) {
            return Err(AuthFailure::Rejected);
        }
        if let Some(call) = self.calls.get_mut(&key) {
            call.b.invite_auth_rounds += 1;
        }
        tracing::debug!(
            status = response.status,
            "leg B INVITE challenged; sent with credentials"
        );
        Ok(())
    }

    /// A 401/407 to a request relayed to leg B: sent again with credentials (the relay now
    /// waits on the new transaction), or the reason it is not.
    pub(super) fn answer_relay_challenge(
        &mut self,
        now: Instant,
        key: CallKey,
        old_tx: ClientTxId,
        response: &Response,
    ) -> Result<(), AuthFailure> {
        let credentials = self.config.trunk_credentials.as_ref();
        let Some(call) = self.calls.get_mut(&key) else {
            return Ok(());
        };
        let Some(relay) = call.relays.get(&old_tx) else {
            return Ok(());
        };
        let Some(sent) = relay.sent.as_ref().filter(|_| relay.from_leg == Leg::A) else {
            return Err(AuthFailure::NoCredentials);
        };
        let mut retry = auth::answer(sent, response, credentials, relay.auth_rounds)?;
        let Some(dialog) = call.b.dialog.as_mut() else {
            return Err(AuthFailure::Rejected);
        };
        // The dialog's next CSeq: the challenged request used the last one.
        let _ = dialog.create_request(retry.method.clone());
        let seq = dialog.local_seq();
        set_cseq(&mut retry, seq);
        let to = destination(call, Leg::B);
        let kept = retry.clone();
        let tx = match self.layer.send_request(now, retry, to) {
            Ok(tx) => tx,
            Err(error) => {
                tracing::warn!(%error, "relayed request with credentials not sent");
                return Err(AuthFailure::Rejected);
            }
        };
        let Some(call) = self.calls.get_mut(&key) else {
            return Ok(());
        };
        if let Some(mut relay) = call.relays.remove(&old_tx) {
            relay.cseq = seq;
            relay.sent = Some(kept);
            relay.auth_rounds += 1;
            call.relays.insert(tx, relay);
        }
        self.own(key, TxId::Client(tx));
        Ok(())
    }

    /// A 401/407 to callbridge's BYE on leg B: the BYE is sent again with credentials, so
    /// that the trunk, too, ends the call. When it cannot be, the call has ended on our side
    /// anyway; the trunk's own timers end it there.
    pub(super) fn answer_bye_challenge(&mut self, now: Instant, key: CallKey, response: &Response) {
        let credentials = self.config.trunk_credentials.as_ref();
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let rounds = call.b.bye_auth_rounds;
        let Some(dialog) = call.b.dialog.as_mut() else {
            return;
        };
        let mut bye = dialog.create_request(Method::Bye);
        if let Err(failure) = auth::answer_into(&mut bye, rounds > 0, response, credentials, rounds)
        {
            tracing::warn!(%failure, "BYE to leg B challenged and not sent again");
            return;
        }
        call.b.bye_auth_rounds += 1;
        let to = destination(call, Leg::B);
        match self.layer.send_request(now, bye, to) {
            Ok(tx) => self.own(key, TxId::Client(tx)),
            Err(error) => tracing::debug!(%error, "BYE with credentials not sent"),
        }
    }
}

/// The leg B failure leg A is told of when the trunk's challenge could not be answered: 403
/// (the same class as the 401/407, SPEC "SIP behaviour"), never the challenge itself, which
/// would ask the caller's phone for credentials it does not have.
pub(super) const AUTH_FAILED_STATUS: u16 = 403;

fn set_cseq(request: &mut Request, seq: u32) {
    let method = request.method.to_string();
    request
        .headers
        .set(HeaderName::CSeq, format!("{seq} {method}"));
}
