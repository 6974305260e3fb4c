//! [`Redis`]: the node's one connection to the cluster's Redis, made when first needed and
//! remade by the client when it drops, with a bound on every round trip.
//!
//! redis-rs's `ConnectionManager` multiplexes one TCP connection: concurrent commands from
//! the API's workers and the SIP driver are pipelined on it without a pool, and it reconnects
//! by itself when Redis comes back. It cannot be made while Redis is down, so it is made
//! lazily: a node starts, and answers 503, without Redis, and recovers without a restart.

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Mutex;

use crate::ClusterError;

/// A lazily made, self-healing connection to one Redis, every use bounded by `timeout`.
pub struct Redis {
    client: redis::Client,
    timeout: Duration,
    manager: Mutex<Option<ConnectionManager>>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("server", &self.client.get_connection_info().addr())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// `url`: `redis://host:port/db`; `timeout`: the longest any one operation may take.
    pub fn new(url: &str, timeout: Duration) -> Result<Redis, ClusterError> {
        let client = redis::Client::open(url)
            .map_err(|error| ClusterError::BadUrl(format!("{url}: {error}")))?;
        Ok(Redis {
            client,
            timeout,
            manager: Mutex::new(None),
        })
    }

    /// The bound on one operation.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The connection, made now if there is none yet.
    pub async fn connection(&self) -> Result<ConnectionManager, ClusterError> {
        let mut held = self.manager.lock().await;
        if let Some(manager) = held.as_ref() {
            return Ok(manager.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let made = tokio::time::timeout(
            self.timeout,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| ClusterError::Timeout(self.timeout))?
        .map_err(ClusterError::from)?;
        *held = Some(made.clone());
        Ok(made)
    }

    /// Sends one command and reads its answer as `T`, within the timeout.
    pub async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, ClusterError> {
        let cmd = cmd.clone();
        self.run(|mut connection| async move { cmd.query_async(&mut connection).await })
            .await
    }

    /// Runs `op` on the connection within the timeout.
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T, ClusterError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let connection = self.connection().await?;
        match tokio::time::timeout(self.timeout, op(connection)).await {
            Ok(result) => result.map_err(ClusterError::from),
            Err(_) => Err(ClusterError::Timeout(self.timeout)),
        }
    }
}
