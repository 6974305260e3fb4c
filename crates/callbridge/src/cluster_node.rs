//! This node's part in a cluster, beside the shared intent table ([`crate::claims`]):
//!
//! - **the call index**: every change of a record this node holds goes to Redis
//!   ([`cluster::CallIndex`]) from a task of its own, batched every few milliseconds, never
//!   from the SIP task; any node's API shows the call from there;
//! - **the heartbeat**, and the **reaping** of a node whose heartbeat lapsed: the one
//!   survivor that takes it ends each of its live calls' records `node_lost` (by `system`),
//!   which builds their `call.ended` events and stores them like any record of its own;
//! - **hang-ups** asked on other nodes for this node's calls ([`cluster::Hangups`]),
//!   carried out through the same queue the local API uses;
//! - [`ClusterApi`], the API's way to the other nodes ([`api::ClusterCalls`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::b2bua::engine::ApiHangup;
use api::{CallActions, ClusterCalls, ClusterFuture, RemoteCall, RemoteHangup};
use b2bua::registry::{CallEvent, EndCause, Party};
use b2bua::{CallControl, CallState};
use cluster::{CallIndex, Hangups, IndexEntry, Nodes, Redis, RedisIntents};
use serde::{Deserialize, Serialize};
use store::CallRow;
use tokio::sync::{mpsc, watch};

/// How often the call index takes the changed records.
const INDEX_EVERY: Duration = Duration::from_millis(50);

/// Records written to the index in one round trip at most.
const INDEX_BATCH: usize = 2_000;

/// How long an ended call stays in the index (its record is in the store by then).
const ENDED_TTL: Duration = Duration::from_secs(600);

/// How long the API waits for another node's answer to a hang-up.
const HANGUP_WAIT: Duration = Duration::from_secs(5);

/// Hang-ups asked of this node waiting for the SIP task.
const HANGUP_QUEUE: usize = 256;

/// The shared parts of this node's cluster membership.
pub(crate) struct ClusterNode {
    pub(crate) node: String,
    pub(crate) index: Arc<CallIndex>,
    pub(crate) nodes: Arc<Nodes>,
    pub(crate) hangups: Arc<Hangups>,
    pub(crate) intents: Arc<RedisIntents>,
    /// Whether the last heartbeat reached Redis (optimistic until the first one).
    pub(crate) redis_up: std::sync::atomic::AtomicBool,
}

impl ClusterNode {
    pub(crate) fn new(
        redis: Arc<Redis>,
        url: &str,
        node: String,
        intents: Arc<RedisIntents>,
    ) -> Result<ClusterNode, cluster::ClusterError> {
        let prefix = cluster::DEFAULT_PREFIX;
        let index = Arc::new(CallIndex::new(Arc::clone(&redis), prefix));
        Ok(ClusterNode {
            nodes: Arc::new(Nodes::new(Arc::clone(&redis), prefix, Arc::clone(&index))),
            hangups: Arc::new(Hangups::new(redis, url, prefix)?),
            index,
            intents,
            node,
            redis_up: std::sync::atomic::AtomicBool::new(true),
        })
    }
}

/// Writes the records this node changed to the call index until shutdown, then once more.
pub(crate) async fn index_task(
    cluster: Arc<ClusterNode>,
    control: Arc<CallControl>,
    mut shutdown: watch::Receiver<bool>,
) {
    control.registry().enable_change_feed();
    let mut last_warning: Option<Instant> = None;
    loop {
        let stop = tokio::select! {
            _ = tokio::time::sleep(INDEX_EVERY) => false,
            _ = shutdown.wait_for(|stop| *stop) => true,
        };
        write_changes(&cluster, &control, &mut last_warning).await;
        if stop {
            // The SIP task ends the last calls after the signal: follow its drain (bounded
            // by the longest drain there is, the grace period and the hang-ups after it).
            let until = Instant::now() + Duration::from_secs(180);
            while control.registry().active_count() > 0 && Instant::now() < until {
                tokio::time::sleep(INDEX_EVERY).await;
                write_changes(&cluster, &control, &mut last_warning).await;
            }
            write_changes(&cluster, &control, &mut last_warning).await;
            break;
        }
    }
}

async fn write_changes(
    cluster: &ClusterNode,
    control: &CallControl,
    last_warning: &mut Option<Instant>,
) {
    loop {
        let changed = control.registry().take_changed(INDEX_BATCH);
        if changed.is_empty() {
            return;
        }
        let full = changed.len() == INDEX_BATCH;
        let entries: Vec<IndexEntry> = changed
            .iter()
            .filter(|(record, _)| record.state != CallState::Intent)
            .filter_map(|(record, seq)| {
                let row = serde_json::to_string(&webhooks::record::row_of(record)).ok()?;
                Some(IndexEntry {
                    callid: record.callid.clone(),
                    node: cluster.node.clone(),
                    seq: *seq,
                    row,
                    ended: record.state == CallState::Ended,
                })
            })
            .collect();
        if let Err(error) = cluster.index.put(&entries, ENDED_TTL).await {
            // Kept for the next round: a record's latest state is written once Redis is back.
            let callids: Vec<String> = changed.into_iter().map(|(r, _)| r.callid).collect();
            control.registry().mark_changed(&callids);
            warn_throttled(last_warning, || {
                tracing::warn!(%error, "call index not written to Redis; retrying");
            });
            return;
        }
        if !full {
            return;
        }
    }
}

/// What a reaper needs to deliver a lost node's undelivered webhook events: the shared store
/// (their outbox) and this node's dispatcher.
pub(crate) type Outbox = (Arc<dyn store::Store>, webhooks::WebhookHandle);

/// Beats this node's heartbeat and reaps lost nodes until shutdown; then leaves the cluster.
pub(crate) async fn heartbeat_task(
    cluster: Arc<ClusterNode>,
    control: Arc<CallControl>,
    outbox: Option<Outbox>,
    api_addr: String,
    (every, ttl): (Duration, Duration),
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last_warning: Option<Instant> = None;
    loop {
        let beat = cluster.nodes.beat(&cluster.node, &api_addr, ttl).await;
        let was_up = cluster
            .redis_up
            .swap(beat.is_ok(), std::sync::atomic::Ordering::Relaxed);
        if beat.is_ok() && !was_up {
            tracing::info!("cluster: Redis reachable again");
        }
        if let Err(error) = beat {
            warn_throttled(&mut last_warning, || {
                tracing::warn!(%error, "heartbeat not written to Redis; retrying");
            });
        } else {
            reap(&cluster, &control, outbox.as_ref(), &mut last_warning).await;
        }
        let stop = tokio::select! {
            _ = tokio::time::sleep(every) => false,
            _ = shutdown.wait_for(|stop| *stop) => true,
        };
        if stop {
            break;
        }
    }
    // A clean stop: every call of this node ends by the drain, so nobody needs to reap it.
    if let Err(error) = cluster.nodes.leave(&cluster.node).await {
        tracing::warn!(%error, "could not leave the cluster cleanly; a survivor will reap this node");
    }
}

/// Ends the live calls of the nodes whose heartbeat lapsed (those this node took), after
/// taking over their undelivered webhook events so that each call's events stay in order.
async fn reap(
    cluster: &ClusterNode,
    control: &CallControl,
    outbox: Option<&Outbox>,
    last_warning: &mut Option<Instant>,
) {
    let lost = match cluster.nodes.take_lost(&cluster.node).await {
        Ok(lost) => lost,
        Err(error) => {
            warn_throttled(last_warning, || {
                tracing::warn!(%error, "lost nodes not checked in Redis; retrying");
            });
            return;
        }
    };
    for node in lost {
        // The highest seq of each lost call's events, stored by the lost node (the index's
        // may lag by one write): the call.ended built here must come after them.
        let mut last_seq: HashMap<String, u32> = HashMap::new();
        if let Some((store, webhooks)) = outbox {
            adopt_outbox(&node.node, store, webhooks).await;
            let store = Arc::clone(store);
            let callids: Vec<String> = node.calls.iter().map(|e| e.callid.clone()).collect();
            if let Ok(seqs) = tokio::task::spawn_blocking(move || {
                callids
                    .into_iter()
                    .filter_map(|callid| {
                        let events = store.events_of_call(&callid, store::MAX_EVENT_PAGE).ok()?;
                        let seq = events.iter().map(|e| e.seq).max()?;
                        Some((callid, seq))
                    })
                    .collect::<HashMap<String, u32>>()
            })
            .await
            {
                last_seq = seqs;
            }
        }
        let now = Instant::now();
        let mut ended = 0;
        for entry in &node.calls {
            let Some(record) = serde_json::from_str::<CallRow>(&entry.row)
                .ok()
                .and_then(|row| webhooks::record::record_of(&row))
            else {
                tracing::warn!(callid = %entry.callid, "lost node's record unreadable; left alone");
                continue;
            };
            if record.state == CallState::Ended {
                continue;
            }
            let seq = last_seq
                .get(&entry.callid)
                .map_or(entry.seq, |stored| (*stored).max(entry.seq));
            control.registry().adopt_record(record, seq);
            control.record(
                now,
                &entry.callid,
                CallEvent::Ended {
                    by: Party::System,
                    cause: EndCause::NodeLost,
                },
            );
            ended += 1;
        }
        tracing::warn!(lost = %node.node, calls = ended, "node lost (heartbeat lapsed): its live calls ended as node_lost");
    }
}

/// Takes a lost node's pending webhook events from the shared outbox and hands them to this
/// node's dispatcher.
async fn adopt_outbox(
    lost: &str,
    store: &Arc<dyn store::Store>,
    webhooks: &webhooks::WebhookHandle,
) {
    let store = Arc::clone(store);
    let from = lost.to_owned();
    let adopted = tokio::task::spawn_blocking(move || store.adopt_events(&from)).await;
    match adopted {
        Ok(Ok(events)) if events.is_empty() => {}
        Ok(Ok(events)) => match webhooks.hand_over(events).await {
            Ok(count) => {
                tracing::info!(
                    lost,
                    events = count,
                    "lost node's pending webhook events taken over"
                );
            }
            Err(error) => {
                tracing::warn!(lost, %error, "lost node's webhook events not handed over")
            }
        },
        Ok(Err(error)) => {
            tracing::warn!(lost, %error, "lost node's webhook events not adopted from the store");
        }
        Err(error) => tracing::warn!(lost, %error, "adopting a lost node's webhook events failed"),
    }
}

/// Carries out, on this node, the hang-ups other nodes ask of it.
/// Stops at shutdown: a hang-up asked of a draining node finds no listener, and its asker
/// answers 503 (the drain ends the call anyway).
pub(crate) async fn hangup_task(
    cluster: Arc<ClusterNode>,
    actions: Arc<dyn CallActions>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (requests, mut incoming) = mpsc::channel(HANGUP_QUEUE);
    let listener = {
        let cluster = Arc::clone(&cluster);
        tokio::spawn(async move { cluster.hangups.listen(&cluster.node, requests).await })
    };
    loop {
        let request = tokio::select! {
            request = incoming.recv() => request,
            _ = shutdown.wait_for(|stop| *stop) => None,
        };
        let Some(request) = request else {
            break;
        };
        let outcome = actions.hang_up(request.callid.clone()).await;
        let answer = match outcome {
            Ok(ApiHangup::Ended(record)) => HangupAnswer::Ended(webhooks::record::row_of(&record)),
            Ok(ApiHangup::NotLive(record)) => {
                HangupAnswer::NotLive(webhooks::record::row_of(&record))
            }
            Ok(ApiHangup::Unknown) => HangupAnswer::Unknown,
            // The SIP task has stopped: no answer; the asker says 503.
            Err(_) => continue,
        };
        let Ok(text) = serde_json::to_string(&answer) else {
            continue;
        };
        if let Err(error) = cluster.hangups.reply(&request.token, &text).await {
            tracing::warn!(%error, callid = %request.callid, "hang-up answer not written to Redis");
        }
    }
    listener.abort();
}

/// A hang-up's answer as it crosses Redis.
#[derive(Serialize, Deserialize)]
#[serde(tag = "outcome", content = "call", rename_all = "snake_case")]
enum HangupAnswer {
    Ended(CallRow),
    NotLive(CallRow),
    Unknown,
}

/// The API's way to the other nodes.
pub(crate) struct ClusterApi {
    pub(crate) cluster: Arc<ClusterNode>,
}

impl ClusterCalls for ClusterApi {
    fn find(&self, callid: String) -> ClusterFuture<'_, Option<RemoteCall>> {
        Box::pin(async move {
            let cluster = &self.cluster;
            if let Some(entry) = cluster
                .index
                .get(&callid)
                .await
                .map_err(|e| e.to_string())?
            {
                let row: CallRow = serde_json::from_str(&entry.row)
                    .map_err(|e| format!("call index entry of {callid}: {e}"))?;
                return Ok(Some(RemoteCall {
                    node: entry.node,
                    row,
                }));
            }
            let intent = cluster
                .intents
                .find_callid(&callid)
                .await
                .map_err(|e| e.to_string())?;
            Ok(intent.map(|intent| RemoteCall {
                node: String::new(),
                row: CallRow {
                    callid: intent.callid,
                    telnum: intent.telnum,
                    caller: intent.caller,
                    callee: intent.callee,
                    data: intent.data,
                    notify_url: intent.notify_url,
                    state: "intent".to_owned(),
                    created_at: intent.created_at,
                    ..CallRow::default()
                },
            }))
        })
    }

    fn redis_up(&self) -> bool {
        self.cluster
            .redis_up
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn hang_up(&self, node: String, callid: String) -> ClusterFuture<'_, Option<RemoteHangup>> {
        Box::pin(async move {
            let answer = self
                .cluster
                .hangups
                .ask(&node, &callid, HANGUP_WAIT)
                .await
                .map_err(|e| e.to_string())?;
            let Some(text) = answer else {
                return Ok(None);
            };
            let answer: HangupAnswer = serde_json::from_str(&text)
                .map_err(|e| format!("hang-up answer from {node}: {e}"))?;
            Ok(Some(match answer {
                HangupAnswer::Ended(row) => RemoteHangup::Ended(row),
                HangupAnswer::NotLive(row) => RemoteHangup::NotLive(row),
                HangupAnswer::Unknown => RemoteHangup::Unknown,
            }))
        })
    }
}

/// Runs `warn` at most once per 10 s (Redis away logs once, not every tick).
fn warn_throttled(last: &mut Option<Instant>, warn: impl FnOnce()) {
    let now = Instant::now();
    if last.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(10)) {
        warn();
        *last = Some(now);
    }
}
