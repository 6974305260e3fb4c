//! [`SipActions`]: the API's requests of the SIP task ([`api::CallActions`]), carried over a
//! bounded queue that the SIP task reads beside its transport events; the trunk's DNS task
//! ([`crate::trunk_dns::keep_fresh`]) hands new trunk targets over the same queue. Why a
//! queue: the engine is owned by that task alone (sans-IO, `&mut self`), so the API never
//! locks it; it asks, and the engine answers on a oneshot channel once it has acted.

use std::time::Instant;

use api::b2bua::engine::{ApiHangup, Engine};
use api::CallActions;
use sip_core::Peer;
use tokio::sync::{mpsc, oneshot};

/// Requests waiting for the SIP task; beyond this the API answers 503 at once rather than
/// queue without bound.
pub(crate) const COMMAND_QUEUE: usize = 1024;

/// One request of the API (or of the trunk's DNS task) to the engine.
pub(crate) enum EngineCommand {
    /// `POST /api/calls/{callid}/hangup`.
    HangUp {
        callid: String,
        reply: oneshot::Sender<ApiHangup>,
    },
    /// The trunk's targets as the last resolution found them, in order
    /// ([`Engine::set_trunk_targets`]).
    SetTrunkTargets(Vec<Peer>),
}

/// The API's end of the queue.
pub(crate) struct SipActions {
    queue: mpsc::Sender<EngineCommand>,
}

impl SipActions {
    /// The API's handle and the SIP task's receiving end.
    pub(crate) fn new() -> (SipActions, mpsc::Receiver<EngineCommand>) {
        let (queue, commands) = mpsc::channel(COMMAND_QUEUE);
        (SipActions { queue }, commands)
    }

    /// Another sender on the same queue (for the trunk's DNS task).
    pub(crate) fn sender(&self) -> mpsc::Sender<EngineCommand> {
        self.queue.clone()
    }
}

impl CallActions for SipActions {
    fn hang_up(&self, callid: String) -> oneshot::Receiver<ApiHangup> {
        let (reply, answer) = oneshot::channel();
        // Full or closed (the SIP task has stopped): the request and its reply sender are
        // dropped, and the API answers 503.
        let _ = self.queue.try_send(EngineCommand::HangUp { callid, reply });
        answer
    }
}

/// Carries out one request on the SIP task.
pub(crate) fn apply(engine: &mut Engine, command: EngineCommand) {
    match command {
        EngineCommand::HangUp { callid, reply } => {
            let outcome = engine.hang_up_by_api(Instant::now(), &callid);
            // The client may have gone; the call is ended either way.
            let _ = reply.send(outcome);
        }
        EngineCommand::SetTrunkTargets(targets) => engine.set_trunk_targets(targets),
    }
}
