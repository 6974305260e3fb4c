//! `[cluster]`: several callbridge nodes behind a SIP load balancer, sharing one Redis for
//! intents, the call index and hang-ups (SPEC.md `[cluster]`; README *Running several
//! nodes*). Empty `redis_url`: a single node, everything in its own memory.

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Longest node id: it is part of Redis keys and of every record's holder.
pub const MAX_NODE_ID: usize = 64;

/// `[cluster]`. Exists so that one configuration key turns a node into a member of a cluster,
/// and so that each member has a stable name the others can recognise after it dies.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSection {
    /// `redis://[:password@]host:port/db`: intents, the call index and hang-ups shared by the nodes;
    /// empty: a single node (intents in memory).
    pub redis_url: String,
    /// This node's name in the cluster; empty: the host name and the SIP port
    /// (`host:5060`). Two nodes with one id would take each other's calls for their own.
    pub node_id: String,
    /// How often the node renews its heartbeat in Redis, in seconds.
    pub heartbeat_secs: u64,
    /// How long a heartbeat lives in Redis, in seconds: a node silent for that long is lost,
    /// and a surviving node ends its calls (`end_cause: "node_lost"`).
    pub heartbeat_ttl_secs: u64,
    /// How long one Redis command may take before the request that needed it fails (503),
    /// in milliseconds.
    pub redis_timeout_ms: u64,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            redis_url: String::new(),
            node_id: String::new(),
            heartbeat_secs: 1,
            heartbeat_ttl_secs: 5,
            redis_timeout_ms: 500,
        }
    }
}

impl ClusterSection {
    /// Is this node one of several (a Redis URL is set)?
    pub fn enabled(&self) -> bool {
        !self.redis_url.is_empty()
    }

    /// How often the heartbeat is renewed.
    pub fn heartbeat(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.heartbeat_secs)
    }

    /// How long a heartbeat lives.
    pub fn heartbeat_ttl(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.heartbeat_ttl_secs)
    }

    /// The bound on one Redis operation.
    pub fn redis_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.redis_timeout_ms)
    }

    /// The node's id: `node_id`, else `host name:sip port`.
    pub fn node_id_or(&self, sip_port: u16) -> String {
        if !self.node_id.is_empty() {
            return self.node_id.clone();
        }
        let host = hostname();
        format!("{host}:{sip_port}")
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |text: String| Err(ConfigError::Invalid(text));
        // rediss:// (TLS) is not built in: the nodes and their Redis share a private network.
        if !self.redis_url.is_empty() && !self.redis_url.starts_with("redis://") {
            return invalid(format!(
                "cluster.redis_url {:?} is not a redis://host:port/db URL (TLS to Redis, \
                 rediss://, is not supported by this build)",
                self.redis_url
            ));
        }
        if self.node_id.len() > MAX_NODE_ID
            || !self
                .node_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        {
            return invalid(format!(
                "cluster.node_id {:?}: at most {MAX_NODE_ID} letters, digits and '-', '_', '.', ':'",
                self.node_id
            ));
        }
        if self.heartbeat_secs == 0 || self.heartbeat_ttl_secs <= self.heartbeat_secs {
            return invalid(format!(
                "cluster.heartbeat_ttl_secs ({}) must exceed cluster.heartbeat_secs ({}), which \
                 must be at least 1",
                self.heartbeat_ttl_secs, self.heartbeat_secs
            ));
        }
        if self.redis_timeout_ms == 0 {
            return invalid("cluster.redis_timeout_ms must be at least 1".to_owned());
        }
        Ok(())
    }
}

/// The machine's host name (`/proc/sys/kernel/hostname`, `$HOSTNAME`), else `"callbridge"`.
fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name: String = name
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
        .take(MAX_NODE_ID - 6)
        .collect();
    if name.is_empty() {
        "callbridge".to_owned()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_checked_when_on() {
        let mut c = ClusterSection::default();
        assert!(!c.enabled());
        assert!(c.validate().is_ok());
        c.redis_url = "http://x".into();
        assert!(c.validate().is_err());
        c.redis_url = "redis://127.0.0.1:6379/0".into();
        assert!(c.enabled());
        assert!(c.validate().is_ok());
        c.node_id = "node 1".into();
        assert!(c.validate().is_err());
        c.node_id = "node-1".into();
        assert_eq!(c.node_id_or(5060), "node-1");
        c.heartbeat_ttl_secs = 1;
        assert!(c.validate().is_err());
    }

    #[test]
    fn default_id_is_host_and_port() {
        let id = ClusterSection::default().node_id_or(5070);
        assert!(id.ends_with(":5070"), "{id}");
        assert!(id.len() > 5);
    }
}
