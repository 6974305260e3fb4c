//! Failover between the trunk's targets (RFC 3263 §4.3, RFC 3261 §21.5.4): when leg B's
//! INVITE times out, cannot be sent, or is answered 503 before the callee's side has said
//! anything (no tagged provisional), the INVITE goes to the next target of the trunk, with a
//! new transaction. The targets come from [`Engine::set_trunk_targets`]; a call tries each
//! at most once.

use std::time::Instant;

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
        // Credentials were for the other server's nonce.
        retry
            .headers
            .remove_all(&HeaderName::parse("Authorization"));
        retry
            .headers
            .remove_all(&HeaderName::parse("Proxy-Authorization"));
        let failed = call.b.target;
        if !self.send_leg_b_invite_again(now, key, retry, next) {
            return false;
        }
        if let Some(call) = self.calls.get_mut(&key) {
            call.b.invite_auth_rounds = 0;
        }
        tracing::warn!(failed = %failed.addr, next = %next.addr, "trunk target failed; trying the next");
        true
    }
}
