//! Reliable provisional responses (RFC 3262, `100rel`) on both legs.
//!
//! - Leg B: a provisional with `Require: 100rel` and an `RSeq` is PRACKed on leg B's early
//!   dialog (`RAck: rseq cseq INVITE`); a retransmission of one already PRACKed, or one out of
//!   order, is neither PRACKed again nor relayed (RFC 3262 §4).
//! - Leg A: what leg B sent reliably is relayed reliably when leg A's INVITE supports 100rel
//!   (every provisional is, when leg A requires it), else unreliably. callbridge is then the
//!   UAS of RFC 3262 §3: its own `RSeq` sequence, one unacknowledged reliable provisional at a
//!   time (later ones wait, a few at most), retransmitted at T1 doubling until leg A's PRACK,
//!   which is answered 200 here and never relayed (each leg has its own). A 2xx that follows a
//!   reliable provisional with SDP waits for its PRACK; after 64·T1 with no PRACK the call
//!   fails as RFC 3262 says (5xx), or the held 2xx goes anyway.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use sip_core::message::split_top_level_commas;
use sip_core::transaction::{ServerTxId, TxId};
use sip_core::{HeaderName, Method, Request, Response};

use super::Engine;
use crate::call::{CallKey, CallTimer, Leg};
use crate::registry::{EndCause, Party};

/// Provisionals waiting on leg A behind an unacknowledged reliable one, at most; beyond, the
/// oldest waiting one is dropped (a later provisional says more than an earlier one).
const MAX_WAITING: usize = 4;

/// The 100rel state of a call's two legs.
#[derive(Debug, Default)]
pub struct Reliability {
    /// RSeq of the last reliable provisional from leg B that was PRACKed.
    b_last_rseq: Option<u32>,
    /// The next RSeq of leg A's reliable provisionals (RFC 3262 §3: starts at random).
    a_next_rseq: u32,
    /// The reliable provisional sent on leg A and not PRACKed yet.
    a_pending: Option<Pending>,
    /// Provisionals for leg A waiting for it.
    a_waiting: VecDeque<Response>,
    /// A 2xx for leg A held until the pending provisional (which had SDP) is PRACKed.
    a_held_final: Option<Response>,
}

#[derive(Debug)]
struct Pending {
    response: Response,
    rseq: u32,
    has_sdp: bool,
    first_sent: Instant,
    interval: Duration,
}

/// Whether `headers` lists `tag` in a `Supported` or `Require` header.
fn lists(request_or_response: &sip_core::Headers, name: &HeaderName, tag: &str) -> bool {
    request_or_response
        .get_all(name)
        .flat_map(split_top_level_commas)
        .any(|t| t.trim().eq_ignore_ascii_case(tag))
}

/// The RSeq of a reliable provisional (`Require: 100rel` and a valid `RSeq`).
fn reliable_rseq(response: &Response) -> Option<u32> {
    if !lists(&response.headers, &HeaderName::Require, "100rel") {
        return None;
    }
    let rseq = response.headers.get(&HeaderName::parse("RSeq"))?;
    rseq.trim().parse::<u32>().ok().filter(|&r| r > 0)
}

impl Engine {
    /// A provisional from leg B: PRACKed when reliable. `false`: it is a retransmission or
    /// out of order, and is not relayed; `true` with whether it was reliable.
    pub(super) fn prack_leg_b(
        &mut self,
        now: Instant,
        key: CallKey,
        response: &Response,
    ) -> Option<bool> {
        let Some(rseq) = reliable_rseq(response) else {
            return Some(false);
        };
        let call = self.calls.get_mut(&key)?;
        match call.reliability.b_last_rseq {
            Some(last) if rseq <= last => return None,
            // RFC 3262 §4: out of order (a later one arrived before this one's predecessor).
            Some(last) if rseq != last.wrapping_add(1) => return None,
            _ => {}
        }
        let cseq = response.headers.cseq().map(|c| c.seq).ok()?;
        let dialog = call.b.dialog.as_mut()?;
        let mut prack = dialog.create_request(Method::Prack);
        prack
            .headers
            .push(HeaderName::parse("RAck"), format!("{rseq} {cseq} INVITE"));
        call.reliability.b_last_rseq = Some(rseq);
        let target = call.b.target;
        match self.layer.send_request(now, prack, target) {
            Ok(tx) => self.own(key, TxId::Client(tx)),
            Err(error) => tracing::debug!(%error, "PRACK not sent"),
        }
        Some(true)
    }

    /// Sends a provisional on leg A: reliably when leg B's was reliable and leg A supports
    /// 100rel, or leg A requires it; else as it is.
    pub(super) fn send_provisional_to_a(
        &mut self,
        now: Instant,
        key: CallKey,
        mut response: Response,
        reliable_from_b: bool,
    ) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let a_headers = &call.a.invite.headers;
        let a_requires = lists(a_headers, &HeaderName::Require, "100rel");
        let a_supports = a_requires || lists(a_headers, &HeaderName::Supported, "100rel");
        let tx = call.a.invite_tx;
        if !(a_requires || (reliable_from_b && a_supports)) {
            return self.send_response(now, tx, response);
        }
        let reliability = &mut call.reliability;
        if reliability.a_pending.is_some() {
            if reliability.a_waiting.len() >= MAX_WAITING {
                reliability.a_waiting.pop_front();
            }
            reliability.a_waiting.push_back(response);
            return;
        }
        if reliability.a_next_rseq == 0 {
            reliability.a_next_rseq = rand::random::<u32>() % (1 << 31) + 1;
        }
        let rseq = reliability.a_next_rseq;
        reliability.a_next_rseq = rseq.wrapping_add(1).max(1);
        response.headers.push(HeaderName::Require, "100rel");
        response
            .headers
            .push(HeaderName::parse("RSeq"), rseq.to_string());
        let t1 = self.config.transactions.timers.t1;
        reliability.a_pending = Some(Pending {
            has_sdp: !response.body.is_empty(),
            response: response.clone(),
            rseq,
            first_sent: now,
            interval: t1,
        });
        self.send_response(now, tx, response);
        self.arm_call_timer(key, CallTimer::ReliableProvisional, now + t1);
    }

    /// Whether a 2xx for leg A must wait for the PRACK of a reliable provisional with SDP
    /// (RFC 3262 §3); if so it is held, and sent when that PRACK arrives.
    pub(super) fn hold_final_for_prack(&mut self, key: CallKey, answer: &Response) -> bool {
        let Some(call) = self.calls.get_mut(&key) else {
            return false;
        };
        let reliability = &mut call.reliability;
        reliability.a_waiting.clear();
        match &reliability.a_pending {
            Some(pending) if pending.has_sdp => {
                reliability.a_held_final = Some(answer.clone());
                true
            }
            _ => {
                reliability.a_pending = None;
                call.timers.remove(&CallTimer::ReliableProvisional);
                false
            }
        }
    }

    /// A PRACK from leg A: 200 when it acknowledges the pending reliable provisional (then
    /// the held 2xx, or the next waiting provisional, goes), else 481.
    pub(super) fn on_prack_from_a(
        &mut self,
        now: Instant,
        key: CallKey,
        tx: ServerTxId,
        request: &Request,
        our_tag: &str,
    ) {
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let invite_cseq = call.a.invite.headers.cseq().map(|c| c.seq).ok();
        let rack = request
            .headers
            .get(&HeaderName::parse("RAck"))
            .and_then(parse_rack);
        let matches = match (&call.reliability.a_pending, rack) {
            (Some(pending), Some((rseq, cseq))) => {
                pending.rseq == rseq && Some(cseq) == invite_cseq
            }
            _ => false,
        };
        if !matches {
            return self.respond(now, tx, request, 481, Some(our_tag), None);
        }
        call.reliability.a_pending = None;
        call.timers.remove(&CallTimer::ReliableProvisional);
        let held = call.reliability.a_held_final.take();
        let next = if call.a.final_sent.is_none() {
            call.reliability.a_waiting.pop_front()
        } else {
            call.reliability.a_waiting.clear();
            None
        };
        let a_tx = call.a.invite_tx;
        self.respond(now, tx, request, 200, Some(our_tag), None);
        if let Some(answer) = held {
            self.send_response(now, a_tx, answer);
        } else if let Some(next) = next {
            self.send_provisional_to_a(now, key, next, true);
        }
    }

    /// The retransmission timer of leg A's pending reliable provisional.
    pub(super) fn reliable_provisional_due(&mut self, now: Instant, key: CallKey) {
        let t1 = self.config.transactions.timers.t1;
        let Some(call) = self.calls.get_mut(&key) else {
            return;
        };
        let held = call.reliability.a_held_final.is_some();
        if call.a.final_sent.is_some() && !held {
            // A final went (a failure, a cancel): the provisional is moot.
            call.reliability.a_pending = None;
            call.reliability.a_waiting.clear();
            return;
        }
        let Some(pending) = call.reliability.a_pending.as_mut() else {
            return;
        };
        let a_tx = call.a.invite_tx;
        if now.saturating_duration_since(pending.first_sent) >= t1 * 64 {
            let _entered = call.span.clone().entered();
            tracing::warn!("leg A never PRACKed a reliable provisional");
            call.reliability.a_pending = None;
            match call.reliability.a_held_final.take() {
                // The callee answered: the call goes on rather than being torn down for a
                // missing acknowledgement of a provisional.
                Some(answer) => self.send_response(now, a_tx, answer),
                None => {
                    self.answer_a_locally(now, key, 504, "No PRACK");
                    self.cancel_leg_b(now, key);
                    self.end_call(now, key, Party::Leg(Leg::A), EndCause::SignallingFailure);
                }
            }
            return;
        }
        let response = pending.response.clone();
        pending.interval = pending.interval.saturating_mul(2);
        // The last wait ends at 64·T1, where the provisional is given up on.
        let next = (now + pending.interval).min(pending.first_sent + t1 * 64);
        self.send_response(now, a_tx, response);
        self.arm_call_timer(key, CallTimer::ReliableProvisional, next);
    }
}

/// `RAck: <rseq> <cseq> <method>` (RFC 3262 §7.2).
fn parse_rack(value: &str) -> Option<(u32, u32)> {
    let mut parts = value.split_whitespace();
    let rseq = parts.next()?.parse().ok()?;
    let cseq = parts.next()?.parse().ok()?;
    (parts.next()? == "INVITE").then_some((rseq, cseq))
}
