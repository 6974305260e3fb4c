//! The plain values that go into the store and come out of it.
//!
//! They are this crate's own types, not the b2bua's: the store is a leaf crate, and the
//! crates above convert their records into these (enums become their snake_case codes).

use serde::{Deserialize, Serialize};

/// Most rows one listing page returns (SPEC.md: `limit` ≤ 1000).
pub const MAX_LIMIT: usize = 1000;

/// Rows per page when the client gives no `limit` (SPEC.md).
pub const DEFAULT_LIMIT: usize = 100;

/// How long an idempotency key holds its first response (SPEC.md: 24 h), in milliseconds.
pub const IDEMPOTENCY_TTL_MS: u64 = 24 * 60 * 60 * 1000;

/// `store.retention_days` when the configuration does not say (SPEC.md).
pub const DEFAULT_RETENTION_DAYS: u32 = 90;

/// `store.path` when the configuration does not say (SPEC.md). `""` means memory only.
pub const DEFAULT_PATH: &str = "callbridge.db";

/// The state code of a call whose outcome is decided (the b2bua's `CallState::Ended`). The
/// one code the store knows: nearly every stored record has it, so the state indexes leave
/// those records out (see `migrations/0002_indexes_outbox.sql`).
pub const ENDED: &str = "ended";

/// One call record as stored: every field SPEC.md lists for a record, in the API's names.
///
/// It exists so that the store needs nothing from the crates above it: `state`, `ended_by`
/// and `end_cause` are the snake_case codes the API shows (`"ended"`, `"caller"`,
/// `"no_answer"`), so the store neither validates nor interprets them, and a new end cause
/// needs no migration. Timestamps are milliseconds since the Unix epoch; they must fit in
/// 63 bits (they do until the year 292 million), or the write fails with
/// [`StoreError::OutOfRange`](crate::StoreError::OutOfRange).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CallRow {
    pub callid: String,
    pub telnum: String,
    /// The dedicated number the call was placed from.
    pub caller: String,
    /// The target.
    pub callee: String,
    /// The client's opaque `data` of makecall (at most 1 KiB, the API checks).
    pub data: Option<String>,
    /// `intent`, `trying`, `ringing`, `answered` or `ended`.
    pub state: String,
    pub created_at: u64,
    pub invite_at: Option<u64>,
    pub ringing_at: Option<u64>,
    pub answered_at: Option<u64>,
    pub ended_at: Option<u64>,
    /// From leg B's INVITE to its answer or end.
    pub ring_ms: Option<u64>,
    /// From the answer to the end.
    pub talk_ms: Option<u64>,
    /// Final SIP code sent to leg A (the user's phone).
    pub leg_a_code: Option<u16>,
    /// Final SIP code received on leg B (the target).
    pub leg_b_code: Option<u16>,
    /// `caller`, `callee`, `system` or `api`.
    pub ended_by: Option<String>,
    /// Why the call ended (`hangup`, `no_answer`, ...).
    pub end_cause: Option<String>,
    /// The `Reason` header (or reason phrase) that came with the end, as text.
    pub sip_reason: Option<String>,
    /// The intent's webhook target (makecall's `notify_url`), if it named one.
    pub notify_url: Option<String>,
    /// RTP/RTCP relayed; `None` when the call had no media.
    pub media: Option<MediaCounts>,
}

/// The media counters of a record, both ways: what SPEC.md asks a record to keep of the
/// relay's statistics (packets, bytes, drops). Field names match the b2bua's `MediaStats`, so
/// a stored record serialises like a live one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MediaCounts {
    /// From leg A towards leg B.
    pub a_to_b: DirectionCounts,
    /// From leg B towards leg A.
    pub b_to_a: DirectionCounts,
    /// Where leg A's media was latched (`ip:port`), if it was.
    pub latched_a: Option<String>,
    /// Where leg B's media was latched (`ip:port`), if it was.
    pub latched_b: Option<String>,
}

/// Packets relayed in one direction (see [`MediaCounts`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DirectionCounts {
    pub packets: u64,
    pub bytes: u64,
    /// Received and not forwarded.
    pub dropped: u64,
}

/// Which records a listing or an export returns: the query parameters of `GET /api/calls`
/// other than `limit` and `cursor`. Every field set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallFilter {
    /// Records of this telnum (a leading `+` on either side is ignored).
    pub telnum: Option<String>,
    /// Records in this state code.
    pub state: Option<String>,
    /// Records created at or after this instant (ms since the epoch, inclusive).
    pub since: Option<u64>,
    /// Records created before this instant (ms since the epoch, exclusive), so that
    /// consecutive windows `[since, until)` neither overlap nor leave a gap.
    pub until: Option<u64>,
}

/// One page of a listing: the body of `GET /api/calls`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Page {
    /// Newest first (`created_at`, then `callid`, both descending).
    pub calls: Vec<CallRow>,
    /// Pass it back as `cursor` for the next page; `None` when this page is the last.
    pub next_cursor: Option<String>,
}

impl Page {
    /// The page of the first `limit` of `calls` (in listing order). It has a `next_cursor`,
    /// pointing after its last row, when rows were cut off or `more_beyond` says that rows
    /// follow which `calls` does not hold.
    pub fn keep(mut calls: Vec<CallRow>, limit: usize, more_beyond: bool) -> Page {
        let cut = calls.len() > limit;
        calls.truncate(limit);
        let next_cursor = if cut || more_beyond {
            calls.last().map(|last| crate::Cursor::after(last).encode())
        } else {
            None
        };
        Page { calls, next_cursor }
    }
}

/// A dedicated number and the telnum it is assigned to (`GET /api/numbers`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NumberAssignment {
    /// The dedicated number, without a leading `+`.
    pub number: String,
    /// The owner's number, without a leading `+`.
    pub telnum: String,
}

/// The first response to a request with an `Idempotency-Key`, to be replayed (SPEC.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyEntry {
    /// The client's `Idempotency-Key`.
    pub key: String,
    /// What the key is for: the API's choice, e.g. method, path and token, so that one
    /// client's key never answers another's request.
    pub scope: String,
    /// A hash of the request body (the API picks the hash; the store compares bytes).
    pub body_hash: Vec<u8>,
    /// The response's HTTP status.
    pub status: u16,
    /// The response's body.
    pub body: String,
    /// When the response was sent, ms since the epoch; the entry holds for
    /// [`IDEMPOTENCY_TTL_MS`] from then.
    pub at_ms: u64,
}

/// A response kept for an idempotency key (see [`IdempotencyLookup::Hit`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    pub status: u16,
    pub body: String,
}

/// What the store knows of an idempotency key: the API's decision in one value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdempotencyLookup {
    /// No live entry: handle the request, then remember its response.
    Miss,
    /// The same key with the same body within 24 h: send this response again, do nothing.
    Hit(StoredResponse),
    /// The same key with another body within 24 h: `422 idempotency_key_reused`.
    Conflict,
}

/// A write for the [`Writer`](crate::Writer)'s queue, applied with the others of its batch in
/// one transaction ([`Store::apply`](crate::Store::apply)). Large values are boxed so that a
/// queue slot stays small (the bounded queue allocates all its slots up front).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOp {
    /// Insert the record, or replace the stored one with the same `callid`.
    UpsertCall(Box<CallRow>),
    /// Assign `number` to `telnum`, replacing any assignment of `number`.
    PutNumber { number: String, telnum: String },
    /// Remove the assignment of `number`, if any.
    DeleteNumber { number: String },
    /// Remember a response (see [`Store::remember_idempotency`](crate::Store::remember_idempotency)).
    RememberIdempotency(Box<IdempotencyEntry>),
    /// Record a webhook delivery attempt's outcome; nothing if the event is not stored.
    EventAttempt(Box<crate::EventAttempt>),
}

/// A number as the store keeps and compares it: without its leading `+` (SPEC.md: "a leading
/// `+` is allowed and ignored when comparing"). The same rule as the b2bua's
/// `normalize_number`, and as the `calls_telnum` index's expression.
pub fn normalize_number(number: &str) -> &str {
    number.strip_prefix('+').unwrap_or(number)
}

/// The cutoff for the retention sweep: records that ended before `now_ms` minus
/// `retention_days` days.
pub fn retention_cutoff(now_ms: u64, retention_days: u32) -> u64 {
    now_ms.saturating_sub(u64::from(retention_days) * 24 * 60 * 60 * 1000)
}
