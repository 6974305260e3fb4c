//! [`CallIndex`]: which node holds each call, with the call's record as that node last wrote
//! it, so that any node's API can show a call another node holds, find the node to ask for a
//! hang-up, and — when a node dies — end its calls' records.
//!
//! Layout (P = the key prefix):
//!   P call:<callid>        hash: node, seq (its last webhook event's), row (the record as
//!                          the API serves it, JSON), ended ("1" once ended)
//!   P node_calls:<node>    set: the callids a node holds and has not ended
//! A live call's entry expires after [`LIVE_TTL`] without a write (a bound, not a timer:
//! the holder rewrites it at every change and once a second with its media counters); an
//! ended one after `ended_ttl`, by which time its record is in the store.

use std::sync::Arc;
use std::time::Duration;

use crate::connection::Redis;
use crate::ClusterError;

/// How long a live call's entry lives without a write.
pub const LIVE_TTL: Duration = Duration::from_secs(24 * 3600);

/// The start of every call's key under key prefix `prefix` (the callid follows); the claim
/// script enters a claimed call under it too.
pub(crate) fn call_key_prefix(prefix: &str) -> String {
    format!("{prefix}call:")
}

/// The start of every node's set of live calls (the node id follows).
pub(crate) fn node_calls_key_prefix(prefix: &str) -> String {
    format!("{prefix}node_calls:")
}

/// One call as the index keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    pub callid: String,
    /// The node that holds (or ended) the call.
    pub node: String,
    /// The `seq` of the call's last webhook event.
    pub seq: u32,
    /// The record, as the API's JSON row.
    pub row: String,
    pub ended: bool,
}

/// The cluster's call index in Redis.
#[derive(Debug)]
pub struct CallIndex {
    redis: Arc<Redis>,
    prefix: String,
}

impl CallIndex {
    pub fn new(redis: Arc<Redis>, prefix: &str) -> CallIndex {
        CallIndex {
            redis,
            prefix: prefix.to_owned(),
        }
    }

    fn call_key(&self, callid: &str) -> String {
        format!("{}{callid}", call_key_prefix(&self.prefix))
    }

    pub(crate) fn node_calls_key(&self, node: &str) -> String {
        format!("{}{node}", node_calls_key_prefix(&self.prefix))
    }

    /// Writes `entries` in one pipelined round trip; ended ones expire after `ended_ttl`.
    pub async fn put(
        &self,
        entries: &[IndexEntry],
        ended_ttl: Duration,
    ) -> Result<(), ClusterError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for entry in entries {
            let key = self.call_key(&entry.callid);
            let ttl = if entry.ended { ended_ttl } else { LIVE_TTL };
            pipe.cmd("HSET")
                .arg(&key)
                .arg("node")
                .arg(&entry.node)
                .arg("seq")
                .arg(entry.seq)
                .arg("row")
                .arg(&entry.row)
                .arg("ended")
                .arg(if entry.ended { "1" } else { "0" })
                .ignore();
            pipe.cmd("PEXPIRE")
                .arg(&key)
                .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
                .ignore();
            let set = self.node_calls_key(&entry.node);
            let op = if entry.ended { "SREM" } else { "SADD" };
            pipe.cmd(op).arg(set).arg(&entry.callid).ignore();
        }
        self.redis
            .run(|mut connection| async move { pipe.query_async::<()>(&mut connection).await })
            .await
    }

    /// The entry of `callid`, if the index has one.
    pub async fn get(&self, callid: &str) -> Result<Option<IndexEntry>, ClusterError> {
        let key = self.call_key(callid);
        let fields: Vec<Option<String>> = self
            .redis
            .run(|mut connection| async move {
                redis::cmd("HMGET")
                    .arg(key)
                    .arg("node")
                    .arg("seq")
                    .arg("row")
                    .arg("ended")
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        Ok(entry_of(callid, &fields))
    }

    /// The entries of `callids` (those the index still has), in one round trip.
    pub async fn get_many(&self, callids: &[String]) -> Result<Vec<IndexEntry>, ClusterError> {
        if callids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for callid in callids {
            pipe.cmd("HMGET")
                .arg(self.call_key(callid))
                .arg("node")
                .arg("seq")
                .arg("row")
                .arg("ended");
        }
        let answers: Vec<Vec<Option<String>>> = self
            .redis
            .run(|mut connection| async move { pipe.query_async(&mut connection).await })
            .await?;
        Ok(callids
            .iter()
            .zip(&answers)
            .filter_map(|(callid, fields)| entry_of(callid, fields))
            .collect())
    }
}

/// An entry from HMGET node seq row ended; `None` when the hash is gone or incomplete.
fn entry_of(callid: &str, fields: &[Option<String>]) -> Option<IndexEntry> {
    let [Some(node), Some(seq), Some(row), ended] = fields else {
        return None;
    };
    Some(IndexEntry {
        callid: callid.to_owned(),
        node: node.clone(),
        seq: seq.parse().unwrap_or(0),
        row: row.clone(),
        ended: ended.as_deref() == Some("1"),
    })
}
