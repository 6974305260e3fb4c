//! `Idempotency-Key` on every `POST` (SPEC.md): the same key with the same body within 24 h
//! gets the first response again and does nothing; the same key with another body gets
//! `422 idempotency_key_reused`. The entries live in the store, so they hold across a restart.
//!
//! A key is scoped by method, path and the bearer token's hash: one client's key never answers
//! another client's request, nor a request to another endpoint. Two requests with the same key
//! at the same moment would both miss the store; the second gets `409 idempotency_key_in_use`
//! while the first is being handled (a client retrying too soon), so that one key never runs
//! twice. Responses with a 5xx status are not remembered: the client's retry should run again.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{HeaderMap, AUTHORIZATION};
use http::{Method, StatusCode};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use store::{IdempotencyEntry, IdempotencyLookup, Store};

use crate::error::ApiError;

/// The request header (IETF draft-ietf-httpapi-idempotency-key-header).
pub const HEADER: &str = "idempotency-key";
/// Set on a replayed response, so a client can tell it from a fresh one.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// Longest key accepted (the IETF draft suggests a UUID; Stripe allows 255).
pub const MAX_KEY_LEN: usize = 255;

/// The keys being handled right now (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    keys: Mutex<HashSet<(String, String)>>,
}

/// Holds a key in flight; releases it when dropped.
pub(crate) struct Claim {
    inflight: Arc<InFlight>,
    key: (String, String),
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.inflight.keys.lock().remove(&self.key);
    }
}

/// What a request with a key is to do.
pub(crate) struct Keyed {
    pub key: String,
    pub scope: String,
    pub body_hash: Vec<u8>,
    pub _claim: Claim,
}

/// The request's key, validated: `None` without the header.
pub(crate) fn key_of(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(HEADER) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| ApiError::InvalidIdempotencyKey)?;
    let visible = key.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if key.is_empty() || key.len() > MAX_KEY_LEN || !visible {
        return Err(ApiError::InvalidIdempotencyKey);
    }
    Ok(Some(key.to_owned()))
}

/// Claims `key` for this request: `409 idempotency_key_in_use` while another holds it.
pub(crate) fn claim(
    inflight: &Arc<InFlight>,
    key: String,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Keyed, ApiError> {
    // The token is hashed, so the store never holds a credential.
    let token = headers
        .get(AUTHORIZATION)
        .map(|v| hex(&Sha256::digest(v.as_bytes())[..8]))
        .unwrap_or_default();
    let scope = format!("{method} {path} {token}");
    let pair = (key.clone(), scope.clone());
    if !inflight.keys.lock().insert(pair.clone()) {
        return Err(ApiError::IdempotencyKeyInUse);
    }
    Ok(Keyed {
        key,
        scope,
        body_hash: Sha256::digest(body).to_vec(),
        _claim: Claim {
            inflight: Arc::clone(inflight),
            key: pair,
        },
    })
}

/// The store's decision for a claimed key.
pub(crate) async fn lookup(
    store: &Arc<dyn Store>,
    keyed: &Keyed,
) -> Result<IdempotencyLookup, ApiError> {
    let store = Arc::clone(store);
    let (key, scope, hash) = (
        keyed.key.clone(),
        keyed.scope.clone(),
        keyed.body_hash.clone(),
    );
    crate::blocking(move || store.lookup_idempotency(&key, &scope, &hash, now_ms())).await
}

/// Remembers the response to a claimed key (not a 5xx: see the module documentation).
pub(crate) async fn remember(
    store: &Arc<dyn Store>,
    keyed: &Keyed,
    status: StatusCode,
    body: &Bytes,
) {
    if status.is_server_error() {
        return;
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    let entry = IdempotencyEntry {
        key: keyed.key.clone(),
        scope: keyed.scope.clone(),
        body_hash: keyed.body_hash.clone(),
        status: status.as_u16(),
        body: text.to_owned(),
        at_ms: now_ms(),
    };
    let store = Arc::clone(store);
    if let Err(error) = crate::blocking(move || store.remember_idempotency(&entry)).await {
        tracing::warn!(%error, "idempotency: response not remembered");
    }
}

/// Wall-clock milliseconds since the epoch (the entries' 24 h are wall-clock time).
pub(crate) fn now_ms() -> u64 {
    b2bua::registry::unix_millis(SystemTime::now())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
