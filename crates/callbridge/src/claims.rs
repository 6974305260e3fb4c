//! [`ClaimDriver`]: carries the SIP engine's claims to the cluster's shared intent table and
//! their answers back. The engine parks an INVITE and queues a
//! [`ClaimRequest`](b2bua::engine::ClaimRequest); the SIP task hands each to a small task of
//! its own (the Redis round trip never runs on the SIP task), whose answer comes back on a
//! bounded channel that the SIP task reads beside its transport events.

use std::sync::Arc;
use std::time::Instant;

use b2bua::engine::Engine;
use b2bua::shared_intents::{SharedClaim, SharedError, SharedIntents};
use tokio::sync::mpsc;

/// Claim answers waiting for the SIP task; claims in flight are bounded by `sip.max_calls`
/// (a parked INVITE counts as a call), so this is never the limit that matters.
const ANSWER_QUEUE: usize = 4096;

/// The answer to one claim.
pub(crate) struct ClaimAnswer {
    token: u64,
    outcome: Result<SharedClaim, SharedError>,
}

/// The SIP task's side of the shared intent table.
pub(crate) struct ClaimDriver {
    shared: Arc<dyn SharedIntents>,
    answers: mpsc::Sender<ClaimAnswer>,
}

impl ClaimDriver {
    /// The driver and the receiving end of its answers.
    pub(crate) fn new(
        shared: Arc<dyn SharedIntents>,
    ) -> (ClaimDriver, mpsc::Receiver<ClaimAnswer>) {
        let (answers, receiver) = mpsc::channel(ANSWER_QUEUE);
        (ClaimDriver { shared, answers }, receiver)
    }

    /// Starts the claims the engine has queued, each on a task of its own.
    pub(crate) fn dispatch(&self, engine: &mut Engine) {
        while let Some(request) = engine.poll_claim_request() {
            let shared = Arc::clone(&self.shared);
            let answers = self.answers.clone();
            tokio::spawn(async move {
                let outcome = shared.claim(request.calling, request.dialled).await;
                // The SIP task may have stopped; then nobody waits for the answer.
                let _ = answers
                    .send(ClaimAnswer {
                        token: request.token,
                        outcome,
                    })
                    .await;
            });
        }
    }
}

/// Gives the engine one claim's answer.
pub(crate) fn apply(engine: &mut Engine, answer: ClaimAnswer) {
    engine.handle_claim(Instant::now(), answer.token, answer.outcome);
}
