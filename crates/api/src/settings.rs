//! [`ApiSettings`]: how the API treats requests (authentication and input limits).

use std::fmt;

/// How the API treats requests. The binary builds it from its `[api]` section; the listen
/// address is not here, because the caller binds the listener and hands it to [`crate::serve`].
#[derive(Clone, PartialEq, Eq)]
pub struct ApiSettings {
    /// Bearer tokens accepted on `/api/*`. Empty: no authentication (local demo only).
    pub tokens: Vec<String>,
    /// Largest request body accepted; larger ones get 413 before or while being read
    /// (default 64 KiB).
    pub max_body_bytes: usize,
    /// Most digits a number (telnum, caller, callee, from, to) may have (default 32).
    pub max_number_len: usize,
}

impl Default for ApiSettings {
    fn default() -> ApiSettings {
        ApiSettings {
            tokens: Vec::new(),
            max_body_bytes: 64 * 1024,
            max_number_len: 32,
        }
    }
}

/// Tokens are secrets: `Debug` (and so every log line) shows how many there are, not what.
impl fmt::Debug for ApiSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiSettings")
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
        let settings = ApiSettings {
            tokens: vec!["s3cret".into()],
            ..ApiSettings::default()
        };
        assert_eq!(settings.max_body_bytes, 65536);
        assert_eq!(settings.max_number_len, 32);
        let shown = format!("{settings:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("1 redacted"), "{shown}");
    }
}
