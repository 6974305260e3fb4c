//! INVITEs waiting for a claim in a cluster's shared intent table.
//!
//! With a [`SharedIntents`](crate::SharedIntents) table the claim is a round trip to Redis,
//! and the engine never waits: it parks the INVITE (its server transaction has sent
//! `100 Trying` already), hands a [`ClaimRequest`] to its driver
//! ([`Engine::poll_claim_request`]) and goes on with other messages. The driver's answer
//! comes back through [`Engine::handle_claim`]; the call then goes on exactly as after a
//! local claim. An INVITE whose answer is late (`claim_timeout`) gets 503 and its token is
//! remembered as abandoned for a while, so that an intent the shared table did hand over
//! after all is recorded as ended rather than silently lost; a CANCEL of a parked INVITE
//! does the same with cause `cancelled`.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use sip_core::transaction::ServerTxId;
use sip_core::{Peer, Request};

use super::Engine;
use crate::refusal::Refusal;
use crate::registry::{EndCause, Party};
use crate::session_timer::SessionExpires;
use crate::shared_intents::{SharedClaim, SharedError};

/// Default of how long a parked INVITE waits for its claim (the driver's own Redis timeout
/// is shorter, so an answer normally arrives first).
pub const DEFAULT_CLAIM_TIMEOUT: Duration = Duration::from_millis(2_000);

/// How long an abandoned claim's token is remembered for a late answer.
const ABANDONED_GRACE: Duration = Duration::from_secs(60);

/// A claim the engine asks its driver to make in the shared intent table; the answer goes to
/// [`Engine::handle_claim`] with the same `token`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRequest {
    pub token: u64,
    /// The calling number (P-Asserted-Identity or From), normalised.
    pub calling: String,
    /// The dialled number (the Request-URI's user), normalised.
    pub dialled: String,
}

/// A parked INVITE and what its call needs once claimed.
pub(super) struct Parked {
    pub(super) tx: ServerTxId,
    pub(super) request: Request,
    pub(super) from: Peer,
    pub(super) a_session: Option<SessionExpires>,
    /// The numbers the claim is asked for, normalised.
    pub(super) calling: String,
    pub(super) dialled: String,
}

/// What a token stands for.
enum Waiting {
    Parked(Box<Parked>),
    /// Refused or cancelled before its answer: a late claimed intent ends with this.
    Abandoned(Party, EndCause),
}

/// The INVITEs waiting for claims, and the requests not yet taken by the driver.
pub(super) struct PendingClaims {
    next_token: u64,
    waiting: HashMap<u64, Waiting>,
    by_tx: HashMap<ServerTxId, u64>,
    /// (deadline, token) of parked INVITEs, in the order they were parked: every one gets
    /// the same delay, so the queue is sorted. Stale entries (answered tokens) are skipped.
    deadlines: VecDeque<(Instant, u64)>,
    /// (forget at, token) of abandoned tokens: sorted the same way, in a queue of its own
    /// because its delay differs.
    forget: VecDeque<(Instant, u64)>,
    requests: VecDeque<ClaimRequest>,
    timeout: Duration,
    parked: usize,
}

impl PendingClaims {
    pub(super) fn new() -> PendingClaims {
        PendingClaims {
            next_token: 1,
            waiting: HashMap::new(),
            by_tx: HashMap::new(),
            deadlines: VecDeque::new(),
            forget: VecDeque::new(),
            requests: VecDeque::new(),
            timeout: DEFAULT_CLAIM_TIMEOUT,
            parked: 0,
        }
    }

    /// INVITEs waiting for their claim (they count against `max_calls`).
    pub(super) fn parked(&self) -> usize {
        self.parked
    }

    /// Tokens remembered, parked or abandoned (for the leak checks).
    pub(super) fn len(&self) -> usize {
        self.waiting.len()
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let parked = self.deadlines.front().map(|(at, _)| *at);
        let forget = self.forget.front().map(|(at, _)| *at);
        parked.into_iter().chain(forget).min()
    }

    fn park(&mut self, now: Instant, parked: Parked) {
        let token = self.next_token;
        self.next_token += 1;
        self.requests.push_back(ClaimRequest {
            token,
            calling: parked.calling.clone(),
            dialled: parked.dialled.clone(),
        });
        self.by_tx.insert(parked.tx, token);
        self.waiting
            .insert(token, Waiting::Parked(Box::new(parked)));
        self.deadlines.push_back((now + self.timeout, token));
        self.parked += 1;
    }

    /// Takes the parked INVITE of `token` (its answer arrived, or it is given up), leaving
    /// nothing behind.
    fn take(&mut self, token: u64) -> Option<Waiting> {
        let waiting = self.waiting.remove(&token)?;
        if let Waiting::Parked(parked) = &waiting {
            self.by_tx.remove(&parked.tx);
            self.parked -= 1;
        }
        Some(waiting)
    }

    /// Gives up waiting for `token`: remembered for [`ABANDONED_GRACE`] so that a late
    /// claimed intent ends with `cause`.
    fn abandon(&mut self, now: Instant, token: u64, by: Party, cause: EndCause) {
        let until = now + ABANDONED_GRACE;
        self.waiting.insert(token, Waiting::Abandoned(by, cause));
        self.forget.push_back((until, token));
    }
}

impl Engine {
    /// How long a parked INVITE waits for its claim before it gets 503 (the driver's Redis
    /// timeout plus a margin).
    pub fn set_claim_timeout(&mut self, timeout: Duration) {
        self.claims.timeout = timeout;
    }

    /// The next claim for the driver to make in the shared intent table.
    pub fn poll_claim_request(&mut self) -> Option<ClaimRequest> {
        self.claims.requests.pop_front()
    }

    /// INVITEs waiting for their claim.
    pub fn parked_claims(&self) -> usize {
        self.claims.parked()
    }

    /// Claim tokens remembered, parked or abandoned (0 when nothing is in flight).
    pub fn claim_tokens(&self) -> usize {
        self.claims.len()
    }

    /// Parks a new INVITE until its claim is answered.
    pub(super) fn park_for_claim(&mut self, now: Instant, parked: Parked) {
        self.claims.park(now, parked);
    }

    /// The answer to the claim `token`: the parked INVITE is refused, or its call placed.
    pub fn handle_claim(
        &mut self,
        now: Instant,
        token: u64,
        outcome: Result<SharedClaim, SharedError>,
    ) {
        match self.claims.take(token) {
            Some(Waiting::Parked(parked)) => self.claim_answered(now, *parked, outcome),
            Some(Waiting::Abandoned(by, cause)) => {
                if let Ok(claim) = outcome {
                    tracing::warn!(
                        ?claim,
                        cause = cause.code(),
                        "a shared intent was claimed for an INVITE no longer waiting; its call ends"
                    );
                    self.control.claim_abandoned(now, claim, by, cause);
                }
            }
            None => {}
        }
        self.process_events(now);
    }

    fn claim_answered(
        &mut self,
        now: Instant,
        parked: Parked,
        outcome: Result<SharedClaim, SharedError>,
    ) {
        let Parked {
            tx,
            request,
            from,
            a_session,
            calling,
            dialled,
        } = parked;
        let claim = match outcome {
            Ok(claim) => claim,
            Err(error) => {
                return self.refuse_cluster_unavailable(now, tx, &request, &error.to_string());
            }
        };
        match self.control.claimed_shared(now, claim) {
            Ok(intent) => self.place_call(now, tx, request, from, a_session, intent),
            Err(no) => {
                let refuse_code = self.config.refuse_code;
                self.control
                    .refused(now, &calling, &dialled, refuse_code, no);
                let text = no.to_string();
                self.refuse(now, tx, &request, refuse_code, Refusal::NoIntent(no), &text);
            }
        }
    }

    /// 503 to a parked INVITE: the shared intent table did not answer.
    fn refuse_cluster_unavailable(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        request: &Request,
        error: &str,
    ) {
        tracing::warn!(%error, "claim in the shared intent table failed; INVITE refused with 503");
        self.refuse_unavailable(
            now,
            tx,
            request,
            Refusal::ClusterUnavailable,
            "Cluster store unavailable",
        );
    }

    /// 503 with `Retry-After` to a new INVITE that a shared resource (the cluster's Redis,
    /// the store) cannot serve now.
    pub(super) fn refuse_unavailable(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        request: &Request,
        reason: Refusal,
        text: &str,
    ) {
        self.count_refusal(now, 503, reason);
        let mut response = crate::outbound::local_response(
            &self.config.local,
            request,
            503,
            Some(&sip_core::ids::new_tag()),
            Some(text),
        );
        response.headers.push(
            sip_core::HeaderName::parse("Retry-After"),
            self.config.retry_after.as_secs().max(1).to_string(),
        );
        self.send_response(now, tx, response);
    }

    /// Parked INVITEs whose claim is overdue get 503; abandoned tokens past their grace are
    /// forgotten.
    pub(super) fn expire_claims(&mut self, now: Instant) {
        while let Some(&(at, token)) = self.claims.deadlines.front() {
            if at > now {
                break;
            }
            self.claims.deadlines.pop_front();
            // Only a token still parked is overdue; an answered one left this entry stale.
            if !matches!(self.claims.waiting.get(&token), Some(Waiting::Parked(_))) {
                continue;
            }
            if let Some(Waiting::Parked(parked)) = self.claims.take(token) {
                self.refuse_cluster_unavailable(
                    now,
                    parked.tx,
                    &parked.request,
                    "no answer in time",
                );
                self.claims
                    .abandon(now, token, Party::System, EndCause::ClusterUnavailable);
            }
        }
        while let Some(&(at, token)) = self.claims.forget.front() {
            if at > now {
                break;
            }
            self.claims.forget.pop_front();
            if matches!(
                self.claims.waiting.get(&token),
                Some(Waiting::Abandoned(..))
            ) {
                self.claims.waiting.remove(&token);
            }
        }
    }

    /// A CANCEL of a parked INVITE: 200 to the CANCEL and 487 to the INVITE; a late claimed
    /// intent ends `cancelled`. `false` when `invite` is not parked.
    pub(super) fn cancel_parked(
        &mut self,
        now: Instant,
        cancel_tx: ServerTxId,
        cancel: &Request,
        invite: ServerTxId,
    ) -> bool {
        let Some(&token) = self.claims.by_tx.get(&invite) else {
            return false;
        };
        let Some(Waiting::Parked(parked)) = self.claims.take(token) else {
            return false;
        };
        let tag = sip_core::ids::new_tag();
        self.respond(now, cancel_tx, cancel, 200, Some(&tag), None);
        self.respond(
            now,
            parked.tx,
            &parked.request,
            487,
            Some(&tag),
            Some("Call cancelled by the caller"),
        );
        self.claims
            .abandon(now, token, Party::Leg(crate::Leg::A), EndCause::Cancelled);
        true
    }
}
