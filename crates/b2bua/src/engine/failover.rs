//! Failover between the trunk's targets (RFC 3263 §4.3, RFC 3261 §21.5.4): when leg B's
//! INVITE times out, cannot be sent, or is answered 503 before the callee's side has said
//! anything (no tagged provisional), the INVITE goes to the next target of the trunk, with a
//! new transaction. The targets come from [`Engine::set_trunk_targets`]; a call tries each
//! at most once.

use std::time::Instant;

use sip_core::transaction::TxId;
use sip_core::HeaderName;

use super::Engine;
use crate::call::CallKey;

impl Engine {
    /// Sends leg B's INVITE to the next target, if the leg has one left and nothing has
    /// been heard from the callee's side yet. `false`: there is none (the caller ends leg B).
    pub(super) fn fail_over(&mut self, now: Instant, key: CallKey) -> bool {
        let Some(call) = self.calls.get_mut(&key) else {
            return false;
        };
        let untouched = call.b.dialog.is_none()
            && call.b.final_received.is_none()
            && !call.b.cancelled
            && call.a.final_sent.is_none();
        if !untouched || call.b.fallbacks.is_empty() {
            return false;
        }
        let next = call.b.fallbacks.remove(0);
        let mut retry = call.b.invite.clone();
        retry.headers.remove_all(&HeaderName::Via);
        // Credentials were for the other server's nonce.
        retry
            .headers
            .remove_all(&HeaderName::parse("Authorization"));
        retry
            .headers
            .remove_all(&HeaderName::parse("Proxy-Authorization"));
        let seq = call.b.invite.headers.cseq().map(|c| c.seq).unwrap_or(1);
        retry.headers.set(
            HeaderName::CSeq,
            format!("{} INVITE", seq.saturating_add(1)),
        );
        let failed = call.b.target;
        let tx = match self.layer.send_request(now, retry, next) {
            Ok(tx) => tx,
            Err(error) => {
                tracing::warn!(%error, "leg B INVITE not sent to the next trunk target");
                return false;
            }
        };
        let sent = self.layer.client_request(tx).cloned();
        let Some(call) = self.calls.get_mut(&key) else {
            return true;
        };
        if let Some(sent) = sent {
            call.b.invite = sent;
        }
        call.b.invite_tx = tx;
        call.b.target = next;
        call.b.invite_auth_rounds = 0;
        tracing::warn!(failed = %failed.addr, next = %next.addr, "trunk target failed; trying the next");
        self.own(key, TxId::Client(tx));
        true
    }
}
