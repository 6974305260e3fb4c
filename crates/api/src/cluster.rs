//! [`ClusterCalls`]: what the API asks of the other nodes when this node is one of a
//! cluster — the record of a call another node holds, and a hang-up of it. The server
//! implements it over Redis (crate `cluster`: the call index and the hang-up channel); the
//! API only awaits it, so that any node answers any call's request.

use std::future::Future;
use std::pin::Pin;

use store::CallRow;

/// The future of one cluster request; its error is a text for the 503's message.
pub type ClusterFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, String>> + Send + 'a>>;

/// A call (or a pending intent) as the cluster knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteCall {
    /// The node that holds (or ended) it; empty for a pending intent, which no node holds.
    pub node: String,
    pub row: CallRow,
}

/// What the holder did with a hang-up asked through the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteHangup {
    /// It was live and is now ended, by `api`.
    Ended(CallRow),
    /// It had ended already.
    NotLive(CallRow),
    /// The holder knows no such call.
    Unknown,
}

/// The other nodes, as the API reaches them.
pub trait ClusterCalls: Send + Sync {
    /// The record of `callid` wherever it is held (or pending, as an intent).
    fn find(&self, callid: String) -> ClusterFuture<'_, Option<RemoteCall>>;

    /// Asks `node` to hang up `callid`; `None` when the node does not answer (it is gone).
    fn hang_up(&self, node: String, callid: String) -> ClusterFuture<'_, Option<RemoteHangup>>;

    /// Did this node's last heartbeat reach Redis (`callbridge_cluster_redis_up`)?
    fn redis_up(&self) -> bool;
}
