//! [`ClusterError`]: why an operation on the cluster's shared state did not happen.

use std::time::Duration;

/// Why an operation on the cluster's Redis failed. Each becomes a 503 for the request that
/// needed it ([`b2bua::SharedError::Unavailable`]), never a crash.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// `cluster.redis_url` does not parse.
    #[error("cluster.redis_url {0}")]
    BadUrl(String),
    /// Redis did not answer within `cluster.redis_timeout_ms`.
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis refused, or the connection failed.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// `intent.max_pending` intents are held across the cluster.
    #[error("{0} call intents are pending in the cluster")]
    Full(usize),
    /// A script answered something this build does not understand.
    #[error("unexpected answer from Redis: {0}")]
    Unexpected(String),
}

impl From<ClusterError> for b2bua::SharedError {
    fn from(error: ClusterError) -> b2bua::SharedError {
        b2bua::SharedError::Unavailable(error.to_string())
    }
}
