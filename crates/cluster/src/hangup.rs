//! [`Hangups`]: a hang-up asked on one node for a call another node holds, carried by Redis
//! pub/sub. The asking node publishes `<token> <callid>` on the holder's channel
//! (`P hangup:<node>`); the holder ends the call as if its own API had been asked and writes
//! its answer (a JSON text) under `P hangup_reply:<token>`, which the asker polls for (a
//! blocking pop would hold up the multiplexed connection every other command shares).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::connection::Redis;
use crate::ClusterError;

/// How long an answer waits in Redis for its asker.
const REPLY_TTL: Duration = Duration::from_secs(30);

/// How often the asker looks for the answer.
const POLL: Duration = Duration::from_millis(10);

/// One hang-up asked of this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HangupRequest {
    pub token: String,
    pub callid: String,
}

/// Hang-ups across nodes.
#[derive(Debug)]
pub struct Hangups {
    redis: Arc<Redis>,
    client: redis::Client,
    prefix: String,
}

impl Hangups {
    /// `url`: the same Redis as `redis` (the subscription needs a connection of its own).
    pub fn new(redis: Arc<Redis>, url: &str, prefix: &str) -> Result<Hangups, ClusterError> {
        let client = redis::Client::open(url)
            .map_err(|error| ClusterError::BadUrl(format!("{url}: {error}")))?;
        Ok(Hangups {
            redis,
            client,
            prefix: prefix.to_owned(),
        })
    }

    fn channel(&self, node: &str) -> String {
        format!("{}hangup:{node}", self.prefix)
    }

    fn reply_key(&self, token: &str) -> String {
        format!("{}hangup_reply:{token}", self.prefix)
    }

    /// Asks `node` to hang up `callid` and waits up to `wait` for its answer. `None`: no
    /// node listens on that channel (the holder is gone), or it did not answer in time.
    pub async fn ask(
        &self,
        node: &str,
        callid: &str,
        wait: Duration,
    ) -> Result<Option<String>, ClusterError> {
        let token = format!("{:032x}", rand::random::<u128>());
        let channel = self.channel(node);
        let message = format!("{token} {callid}");
        let listeners: u64 = self
            .redis
            .query(redis::cmd("PUBLISH").arg(channel).arg(message))
            .await?;
        if listeners == 0 {
            return Ok(None);
        }
        let deadline = Instant::now() + wait;
        let key = self.reply_key(&token);
        while Instant::now() < deadline {
            let key = key.clone();
            let reply: Option<String> = self.redis.query(redis::cmd("GETDEL").arg(key)).await?;
            if reply.is_some() {
                return Ok(reply);
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(None)
    }

    /// Answers the hang-up `token`.
    pub async fn reply(&self, token: &str, answer: &str) -> Result<(), ClusterError> {
        let key = self.reply_key(token);
        let answer = answer.to_owned();
        self.redis
            .query(
                redis::cmd("SET")
                    .arg(key)
                    .arg(answer)
                    .arg("PX")
                    .arg(u64::try_from(REPLY_TTL.as_millis()).unwrap_or(u64::MAX)),
            )
            .await
    }

    /// Listens for the hang-ups asked of `node`, forever (resubscribing after Redis comes
    /// back), handing each to `requests`; returns when `requests` is closed.
    pub async fn listen(&self, node: &str, requests: mpsc::Sender<HangupRequest>) {
        let channel = self.channel(node);
        let mut warned = false;
        loop {
            match self.client.get_async_pubsub().await {
                Ok(mut pubsub) => {
                    if pubsub.subscribe(&channel).await.is_ok() {
                        warned = false;
                        let mut messages = pubsub.on_message();
                        while let Some(message) = messages.next().await {
                            let Ok(text) = message.get_payload::<String>() else {
                                continue;
                            };
                            let Some((token, callid)) = text.split_once(' ') else {
                                continue;
                            };
                            let request = HangupRequest {
                                token: token.to_owned(),
                                callid: callid.to_owned(),
                            };
                            if requests.send(request).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                Err(error) => {
                    if !warned {
                        tracing::warn!(%error, "hang-up channel: Redis unreachable; retrying");
                        warned = true;
                    }
                }
            }
            if requests.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
