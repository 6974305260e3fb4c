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
mod intents;
#[cfg(feature = "testing")]
pub mod testing;

pub use connection::Redis;
pub use error::ClusterError;
pub use intents::{RedisIntents, DEFAULT_PREFIX};
