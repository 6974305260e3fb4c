//! A 3xx from the trunk to leg B's INVITE. callbridge follows it only through the trunk: the
//! new INVITE goes to `sip:<number>@<trunk>`, the number being the user part of the
//! redirect's first Contact, at most [`MAX_REDIRECTS`] times per call and never to a number
//! already tried. It is never relayed to leg A: the Contact names the carrier's topology (and
//! would let a phone route around callbridge), and a phone that followed it would call
//! someone other than callbridge's intent from its real number. A 3xx callbridge does not
//! follow ends leg B, and leg A gets 480 with the 3xx in its Reason.

use std::time::Instant;

use sip_core::{HeaderName, Response, Uri};

use super::Engine;
use crate::call::CallKey;

/// Redirects followed per call at most.
pub(super) const MAX_REDIRECTS: u8 = 3;

/// What leg A gets when a 3xx is not followed: the callee cannot be reached now.
pub(super) const UNFOLLOWED_STATUS: u16 = 480;

impl Engine {
    /// Follows a 3xx to leg B's INVITE through the trunk. `false`: not followed (the caller
    /// fails the call).
    pub(super) fn follow_redirect(
        &mut self,
        now: Instant,
        key: CallKey,
        response: &Response,
    ) -> bool {
        let Some(call) = self.calls.get(&key) else {
            return false;
        };
        if call.b.cancelled || call.a.final_sent.is_some() || call.b.redirects >= MAX_REDIRECTS {
            return false;
        }
        let Some(number) = redirect_number(response) else {
            return false;
        };
        if call.b.invite.uri.user() == Some(number.as_str()) || call.b.tried.contains(&number) {
            tracing::info!(%number, "redirect loop; not followed");
            return false;
        }
        let target = call.b.target;
        let mut retry = call.b.invite.clone();
        retry
            .headers
            .remove_all(&HeaderName::parse("Authorization"));
        retry
            .headers
            .remove_all(&HeaderName::parse("Proxy-Authorization"));
        retry.uri = Uri::sip(
            Some(&number),
            &self.config.trunk_host,
            self.config.trunk_port,
        );
        let previous = call.b.invite.uri.user().map(str::to_owned);
        if !self.send_leg_b_invite_again(now, key, retry, target) {
            return false;
        }
        let Some(call) = self.calls.get_mut(&key) else {
            return true;
        };
        call.b.redirects += 1;
        call.b.invite_auth_rounds = 0;
        call.b.tried.extend(previous);
        tracing::info!(status = response.status, %number, "leg B redirected; following it through the trunk");
        true
    }
}

/// The number a 3xx redirects to: the user part of its first Contact (the one with the
/// highest `q`), when it is a phone number (digits, an optional leading `+`).
fn redirect_number(response: &Response) -> Option<String> {
    let contacts = response.headers.contacts().ok()?;
    let q = |c: &sip_core::NameAddr| {
        c.params
            .value("q")
            .and_then(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0)
    };
    // The first of the highest q (RFC 3261 §8.1.3.4 leaves ties to the UAC).
    let mut best = contacts.first()?;
    for contact in contacts.iter().skip(1).take(16) {
        if q(contact) > q(best) {
            best = contact;
        }
    }
    let user = best.uri.user()?;
    let digits = user.strip_prefix('+').unwrap_or(user);
    let is_number =
        !digits.is_empty() && digits.len() <= 32 && digits.bytes().all(|b| b.is_ascii_digit());
    is_number.then(|| user.to_owned())
}
