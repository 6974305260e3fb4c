//! The intent table shared by several nodes ([`SharedIntents`]): the interface the cluster's
//! Redis implementation (crate `cluster`) fills, so that a makecall on one node is found by
//! the INVITE that lands on another.
//!
//! The embedded default stays the in-memory [`IntentTable`](crate::IntentTable), called
//! synchronously. A shared table is across a network, so its operations are futures: the API
//! awaits them in its handlers, and the SIP engine, which never waits, parks the INVITE and
//! asks its driver for the claim ([`ClaimRequest`](crate::engine::ClaimRequest)), whose answer
//! comes back as an input ([`Engine::handle_claim`](crate::Engine::handle_claim)).
//!
//! What the nodes share is the intent and what its record needs to go on elsewhere
//! ([`SharedIntent`]: numbers, `data`, `notify_url`, creation time, the `seq` of its last
//! webhook event). The node that ends an intent — the one whose INVITE claims it, whose
//! makecall replaces it, whose cancelcall withdraws it, or whose sweep finds it expired — takes
//! its record from there ([`CallControl`](crate::CallControl) adopts it into its registry).
//! Every operation that consumes an intent is atomic in the implementation: exactly one node
//! gets it, however many race.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use crate::intent::{IntentTableFull, NoIntent};
use crate::registry::UnixMillis;

/// An intent as the nodes share it.
///
/// It exists because a call's record starts on the node that took the makecall and goes on
/// on the node that takes the INVITE: everything the record and its webhooks need travels
/// with the intent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SharedIntent {
    pub callid: String,
    /// The user's real number, without a leading `+`.
    pub telnum: String,
    /// The dedicated number the user will dial.
    pub caller: String,
    /// The target number.
    pub callee: String,
    /// makecall's `data`.
    pub data: Option<String>,
    /// makecall's `notify_url`.
    pub notify_url: Option<String>,
    /// When makecall registered it (ms since the epoch, the registering node's clock).
    pub created_at: UnixMillis,
    /// The `seq` of the last webhook event built for it (`intent.created`: 1; 0 with
    /// webhooks off or no target).
    pub seq: u32,
    /// The node that registered it.
    pub node: String,
}

/// What a claim found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SharedClaim {
    /// The intent matched and is now this node's alone.
    Claimed(SharedIntent),
    /// The intent had expired; it is consumed, and this node records its expiry.
    Expired(SharedIntent),
    /// Nothing was consumed.
    Refused(NoIntent),
}

/// Why a shared-table operation did not happen.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SharedError {
    /// The shared store did not answer in time, or refused: the request gets a 503.
    #[error("the shared intent store is unavailable: {0}")]
    Unavailable(String),
    /// `intent.max_pending` intents are held across the cluster.
    #[error(transparent)]
    Full(#[from] IntentTableFull),
}

/// The future of one shared-table operation.
pub type SharedFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, SharedError>> + Send + 'a>>;

/// The intent table of a cluster. Numbers are passed normalised (no leading `+`).
///
/// Every method is one atomic step on the shared store; none holds a lock of this process
/// across its `.await`.
pub trait SharedIntents: Send + Sync + fmt::Debug {
    /// Registers `intent` for `ttl_ms`, replacing (and returning) the telnum's earlier one;
    /// refused with [`SharedError::Full`] for a new telnum when `max_pending` are held.
    fn register(
        &self,
        intent: SharedIntent,
        ttl_ms: u64,
        max_pending: usize,
    ) -> SharedFuture<'_, Option<SharedIntent>>;

    /// Withdraws the telnum's intent, if any, and returns it.
    fn cancel(&self, telnum: String) -> SharedFuture<'_, Option<SharedIntent>>;

    /// Withdraws the intent `callid`, if it is still pending, and returns it.
    fn cancel_callid(&self, callid: String) -> SharedFuture<'_, Option<SharedIntent>>;

    /// An INVITE from `calling` to `dialled`: consumes the telnum's intent when the dialled
    /// number is its dedicated number.
    fn claim(&self, calling: String, dialled: String) -> SharedFuture<'_, SharedClaim>;

    /// The CTI decision: like [`claim`](Self::claim), with `to` either the dedicated number
    /// or the intent's callee.
    fn claim_cti(&self, from: String, to: String) -> SharedFuture<'_, SharedClaim>;

    /// The pending intent of `telnum`, left in place (ownership checks of the CTI decision).
    fn get(&self, telnum: String) -> SharedFuture<'_, Option<SharedIntent>>;

    /// Consumes up to `max` intents whose TTL has passed, for this node to record their
    /// expiry; each expired intent is returned to exactly one caller in the cluster.
    fn take_expired(&self, max: usize) -> SharedFuture<'_, Vec<SharedIntent>>;

    /// Intents pending across the cluster.
    fn pending(&self) -> SharedFuture<'_, u64>;
}
