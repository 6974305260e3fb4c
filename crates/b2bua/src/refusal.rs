//! Why an incoming INVITE was refused before any leg B existed: one name per reason, used by
//! the refusal counters (`/metrics`), the logs and the engine's statistics.

use crate::intent::NoIntent;

/// Why callbridge refused an incoming call. [`Refusal::code`] is its one name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The source is not in `sip.trusted_peers`.
    UntrustedSource,
    /// `Max-Forwards: 0`.
    TooManyHops,
    /// The INVITE cannot start a dialog (no Contact).
    Malformed,
    /// The INVITE requires an extension callbridge does not support (answered 420).
    UnsupportedExtension,
    /// The INVITE's Session-Expires is below callbridge's Min-SE (answered 422).
    SessionIntervalTooSmall,
    /// `sip.max_calls` calls are live, or the engine has fallen behind its input.
    Overloaded,
    /// The process is shutting down (SIGTERM): no new calls.
    ShuttingDown,
    /// No relay ports are free.
    MediaExhausted,
    /// The trunk does not answer its OPTIONS pings (`trunk.ping_secs`): leg B would fail.
    TrunkDown,
    /// The cluster's shared intent table (Redis) did not answer the claim in time.
    ClusterUnavailable,
    /// The store (the records' database) does not answer: the call's record could not be
    /// kept.
    StoreUnavailable,
    /// No intent matches the call (none, expired, or for another dedicated number).
    NoIntent(NoIntent),
}

impl Refusal {
    /// The snake_case code of the reason.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::UntrustedSource => "untrusted_source",
            Refusal::TooManyHops => "too_many_hops",
            Refusal::Malformed => "malformed",
            Refusal::UnsupportedExtension => "unsupported_extension",
            Refusal::SessionIntervalTooSmall => "session_interval_too_small",
            Refusal::Overloaded => "overloaded",
            Refusal::ShuttingDown => "shutting_down",
            Refusal::MediaExhausted => "media_exhausted",
            Refusal::TrunkDown => "trunk_down",
            Refusal::ClusterUnavailable => "cluster_unavailable",
            Refusal::StoreUnavailable => "store_unavailable",
            Refusal::NoIntent(no) => no.code(),
        }
    }
}
