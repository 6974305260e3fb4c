//! [`Nodes`]: each node's heartbeat in Redis, and the survivors' discovery of a node that
//! stopped beating.
//!
//! Layout (P = the key prefix):
//!   P node:<node>    string: the node's API address, expiring `heartbeat_ttl` after its last
//!                    beat (a node silent that long is lost)
//!   P nodes          set: every node that has beaten and not left or been reaped
//!   P reap:<node>    string: the survivor that took the lost node's calls (SET NX: one only)

use std::sync::Arc;
use std::time::Duration;

use crate::connection::Redis;
use crate::index::{CallIndex, IndexEntry};
use crate::ClusterError;

/// How long a reap lock lives: long enough that no second survivor takes the same calls.
const REAP_LOCK: Duration = Duration::from_secs(60);

/// The nodes of the cluster, as Redis knows them.
#[derive(Debug)]
pub struct Nodes {
    redis: Arc<Redis>,
    prefix: String,
    index: Arc<CallIndex>,
}

/// A lost node's calls, now the reaper's to end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostNode {
    pub node: String,
    /// Its calls not ended, as the index last had them.
    pub calls: Vec<IndexEntry>,
}

impl Nodes {
    pub fn new(redis: Arc<Redis>, prefix: &str, index: Arc<CallIndex>) -> Nodes {
        Nodes {
            redis,
            prefix: prefix.to_owned(),
            index,
        }
    }

    fn node_key(&self, node: &str) -> String {
        format!("{}node:{node}", self.prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}nodes", self.prefix)
    }

    /// This node is alive, its API at `api`, for `ttl` more.
    pub async fn beat(&self, node: &str, api: &str, ttl: Duration) -> Result<(), ClusterError> {
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.node_key(node))
            .arg(api)
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
            .ignore();
        pipe.cmd("SADD").arg(self.nodes_key()).arg(node).ignore();
        self.redis
            .run(|mut connection| async move { pipe.query_async::<()>(&mut connection).await })
            .await
    }

    /// This node leaves (a clean stop): its heartbeat goes, so nobody reaps it.
    pub async fn leave(&self, node: &str) -> Result<(), ClusterError> {
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(self.node_key(node)).ignore();
        pipe.cmd("SREM").arg(self.nodes_key()).arg(node).ignore();
        pipe.cmd("DEL")
            .arg(self.index.node_calls_key(node))
            .ignore();
        self.redis
            .run(|mut connection| async move { pipe.query_async::<()>(&mut connection).await })
            .await
    }

    /// The nodes whose heartbeat has lapsed, other than `me`, each taken by exactly one
    /// caller in the cluster (the first to lock it), with their calls not ended. The lost
    /// nodes leave the set of nodes.
    pub async fn take_lost(&self, me: &str) -> Result<Vec<LostNode>, ClusterError> {
        let nodes_key = self.nodes_key();
        let nodes: Vec<String> = self
            .redis
            .query(redis::cmd("SMEMBERS").arg(nodes_key))
            .await?;
        let mut lost = Vec::new();
        for node in nodes.into_iter().filter(|node| node != me) {
            let key = self.node_key(&node);
            let alive: bool = self.redis.query(redis::cmd("EXISTS").arg(key)).await?;
            if alive {
                continue;
            }
            let lock = format!("{}reap:{node}", self.prefix);
            let me = me.to_owned();
            let locked: Option<String> = self
                .redis
                .query(
                    redis::cmd("SET")
                        .arg(lock)
                        .arg(me)
                        .arg("NX")
                        .arg("PX")
                        .arg(u64::try_from(REAP_LOCK.as_millis()).unwrap_or(u64::MAX)),
                )
                .await?;
            if locked.is_none() {
                continue;
            }
            let calls_key = self.index.node_calls_key(&node);
            let callids: Vec<String> = self
                .redis
                .query(redis::cmd("SMEMBERS").arg(calls_key))
                .await?;
            let calls = self
                .index
                .get_many(&callids)
                .await?
                .into_iter()
                .filter(|entry| !entry.ended)
                .collect();
            let mut pipe = redis::pipe();
            pipe.cmd("DEL")
                .arg(self.index.node_calls_key(&node))
                .ignore();
            pipe.cmd("SREM").arg(self.nodes_key()).arg(&node).ignore();
            self.redis
                .run(|mut connection| async move { pipe.query_async::<()>(&mut connection).await })
                .await?;
            lost.push(LostNode { node, calls });
        }
        Ok(lost)
    }
}
