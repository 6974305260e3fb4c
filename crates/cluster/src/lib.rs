//! # cluster
//!
//! Several callbridge nodes behind a SIP load balancer, sharing one Redis (SPEC.md
//! `[cluster]`; README *Running several nodes*). This crate is the nodes' side of that
//! Redis; it builds no replication of its own.
//!
//! - [`RedisIntents`]: the intent table as one Redis hash per telnum, each operation —
//!   makecall (latest wins, the TTL and `intent.max_pending` kept in Redis), cancel, the
//!   INVITE's **claim**, the sweep of expired intents — one atomic Lua script, so an intent
//!   is consumed by exactly one node however many race for it. It implements
//!   [`b2bua::SharedIntents`]: the API awaits it, the SIP engine asks its driver for claims
//!   and never waits (see `b2bua::engine::ClaimRequest`).
//! - [`CallIndex`]: which node holds each call, with its record as that node last wrote it
//!   (any node's API shows any call; a survivor ends a lost node's calls from it).
//! - [`Nodes`]: heartbeats, and the discovery — by exactly one survivor — of a node whose
//!   heartbeat lapsed.
//! - [`Hangups`]: a hang-up asked on one node, carried to the holder by pub/sub.
//! - [`Redis`]: the connection — one multiplexed, pipelined, self-reconnecting connection,
//!   made when first needed, every operation bounded by `cluster.redis_timeout_ms`. Redis
//!   down means [`ClusterError`] (a 503 for the request), never a wait without bound; when
//!   Redis returns, service resumes by itself.
//!
//! ```text
//!  API (makecall, cancel, CTI) ──await──┐
//!                                       ▼
//!  SIP engine ──ClaimRequest──▶ driver ──▶ RedisIntents ──EVALSHA──▶ Redis
//!      ▲                          │          (Lua: atomic)
//!      └──── handle_claim ◀───────┘
//! ```
//!
//! Expiry is judged by Redis's clock (`TIME` inside the scripts), so nodes whose clocks
//! differ agree on it. One Redis (or one behind Sentinel) serves a cluster: the scripts touch
//! keys they compute, which Redis Cluster would refuse.

mod connection;
mod error;
mod hangup;
mod index;
mod intents;
mod nodes;
#[cfg(feature = "testing")]
pub mod testing;

pub use connection::Redis;
pub use error::ClusterError;
pub use hangup::{HangupRequest, Hangups};
pub use index::{CallIndex, IndexEntry, LIVE_TTL};
pub use intents::{RedisIntents, DEFAULT_PREFIX};
pub use nodes::{LostNode, Nodes};
