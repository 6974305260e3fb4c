//! [`ApiConfig`]: the `[api]` section of the configuration.

use std::fmt;
use std::net::SocketAddr;

use serde::Deserialize;

/// Settings of the HTTP API; the binary fills it from the `[api]` TOML section and environment.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Address the HTTP listener binds (the binary binds it and hands the listener to
    /// [`crate::serve`]).
    pub listen: SocketAddr,
    /// Bearer tokens accepted on `/api/*`. Empty: no authentication (local demo only).
    pub tokens: Vec<String>,
    /// Largest request body accepted; larger ones get 413 before or while being read.
    pub max_body_bytes: usize,
    /// Most digits a number (telnum, caller, callee, from, to) may have.
    pub max_number_len: usize,
}

impl Default for ApiConfig {
    fn default() -> ApiConfig {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tokens: Vec::new(),
            max_body_bytes: 64 * 1024,
            max_number_len: 32,
        }
    }
}

/// Tokens are secrets: `Debug` (and so every log line) shows how many there are, not what.
impl fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiConfig")
            .field("listen", &self.listen)
            .field("tokens", &format_args!("[{} redacted]", self.tokens.len()))
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_number_len", &self.max_number_len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_redacted_debug() {
        let config = ApiConfig {
            tokens: vec!["s3cret".into()],
            ..ApiConfig::default()
        };
        assert_eq!(config.max_body_bytes, 65536);
        assert_eq!(config.max_number_len, 32);
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("1 redacted"), "{shown}");
    }
}
