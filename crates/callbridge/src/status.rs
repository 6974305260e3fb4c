//! [`SharedStatus`]: the SIP engine's counters, published by the SIP task after each batch of
//! work and read by the HTTP API (`/healthz`, `/metrics`) and by tests, without a lock on the
//! engine itself (the engine is owned by one task and never shared).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;

use api::{HeapStats, RegistrationStatus, SipSnapshot, SipStatus, TrunkStatus};
use b2bua::registration::RegistrationState;
use b2bua::{Engine, TrunkState};
use parking_lot::Mutex;
use sip_core::transport::TransportHandle;
use sip_core::Peer;

/// Refusals and failures by reason code, as the API reports them.
type Outcomes = (Vec<(String, u64)>, Vec<(String, u64)>);

/// Engine and transport counters as last published.
#[derive(Default)]
pub struct SharedStatus {
    serving: AtomicBool,
    /// A shutdown has begun: `/healthz` says `draining`.
    draining: AtomicBool,
    /// The trunk's targets as the engine has them (RFC 3263 order), set at start and after
    /// each change the DNS task hands over.
    trunk_targets: Mutex<Vec<SocketAddr>>,
    calls: AtomicU64,
    active_calls: AtomicU64,
    dialogs: AtomicU64,
    client_transactions: AtomicU64,
    server_transactions: AtomicU64,
    bridged: AtomicU64,
    untrusted: AtomicU64,
    wrong_peer: AtomicU64,
    /// Sum of the refusal and failure counters when the maps were last copied: the maps are
    /// copied only when it changes, not on every published batch.
    outcomes_seen: AtomicU64,
    outcomes: Mutex<Outcomes>,
    transport: Mutex<Option<TransportHandle>>,
    /// Relay port pairs free, and in the range (from the engine's pool).
    media_pairs_free: AtomicU64,
    media_pairs: AtomicU64,
    /// Streams the media driver relays (must be 0 once every call has ended).
    media_streams: AtomicU64,
    media_relayed: AtomicU64,
    media_dropped: AtomicU64,
    /// The trunk keepalive: its state ([`trunk_code`]) and pings answered and lost.
    trunk: AtomicU8,
    trunk_answered: AtomicU64,
    trunk_lost: AtomicU64,
    /// The registration at the trunk ([`registration_code`]) and its counters.
    registration: AtomicU8,
    registrations_accepted: AtomicU64,
    registrations_failed: AtomicU64,
    /// Client transactions that are the keepalive's pings (not a call's: never a leak).
    keepalive_transactions: AtomicU64,
    /// Reads the process allocator's figures; set by the binary, which chose the allocator
    /// (in-process tests run on the system allocator and report none).
    heap_probe: OnceLock<HeapProbe>,
}

/// Reads the process allocator's figures at a scrape (see [`SharedStatus::set_heap_probe`]).
pub type HeapProbe = fn() -> Option<HeapStats>;

impl SharedStatus {
    pub(crate) fn set_transport(&self, transport: TransportHandle) {
        *self.transport.lock() = Some(transport);
    }

    /// Media totals, published by the SIP task about once a second; `streams`: what the
    /// driver relays.
    pub(crate) fn publish_media(&self, engine: &Engine, streams: usize) {
        self.media_streams.store(streams as u64, Ordering::Relaxed);
        let totals = engine.media_totals();
        self.media_relayed.store(totals.packets, Ordering::Relaxed);
        self.media_dropped.store(totals.dropped, Ordering::Relaxed);
    }

    /// Lets `/metrics` report the allocator's figures (`callbridge_heap_bytes`). Only the
    /// first probe set is kept.
    pub fn set_heap_probe(&self, probe: HeapProbe) {
        let _ = self.heap_probe.set(probe);
    }

    /// The engine's trunk targets, for `/healthz` (cheap when unchanged).
    pub(crate) fn set_trunk_targets(&self, targets: &[Peer]) {
        let mut current = self.trunk_targets.lock();
        if !current.iter().copied().eq(targets.iter().map(|t| t.addr)) {
            *current = targets.iter().map(|t| t.addr).collect();
        }
    }

    /// The trunk's targets, in the order leg B tries them.
    pub fn trunk_targets(&self) -> Vec<SocketAddr> {
        self.trunk_targets.lock().clone()
    }

    pub(crate) fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::Relaxed);
    }

    /// The shutdown has begun: from now on `/healthz` answers `503 draining`.
    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Copies the engine's counts (called by the SIP task; cheap unless outcomes changed).
    pub(crate) fn publish(&self, engine: &Engine) {
        let relaxed = Ordering::Relaxed;
        self.calls.store(engine.call_count() as u64, relaxed);
        self.active_calls
            .store(engine.active_call_count() as u64, relaxed);
        self.dialogs.store(engine.dialog_count() as u64, relaxed);
        let layer = engine.transactions();
        self.client_transactions
            .store(layer.client_count() as u64, relaxed);
        self.server_transactions
            .store(layer.server_count() as u64, relaxed);
        let (free, pairs) = engine.media_ports();
        self.media_pairs_free.store(free as u64, relaxed);
        self.media_pairs.store(pairs as u64, relaxed);
        let health = engine.trunk_health();
        self.trunk.store(trunk_code(health.state()), relaxed);
        self.trunk_answered
            .store(health.stats().pings_answered, relaxed);
        self.trunk_lost.store(health.stats().pings_lost, relaxed);
        self.registration
            .store(registration_code(engine.registration_state()), relaxed);
        if let Some(stats) = engine.registration_stats() {
            self.registrations_accepted.store(stats.accepted, relaxed);
            self.registrations_failed.store(stats.failed, relaxed);
        }
        self.keepalive_transactions
            .store(engine.keepalive_transactions() as u64, relaxed);
        let stats = engine.stats();
        self.bridged.store(stats.calls_bridged, relaxed);
        self.untrusted.store(stats.untrusted_messages, relaxed);
        self.wrong_peer.store(stats.wrong_peer_messages, relaxed);
        let total: u64 =
            stats.calls_refused.values().sum::<u64>() + stats.calls_failed.values().sum::<u64>();
        if self.outcomes_seen.swap(total, relaxed) != total {
            let copy = |map: &std::collections::BTreeMap<&'static str, u64>| {
                map.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
            };
            *self.outcomes.lock() = (copy(&stats.calls_refused), copy(&stats.calls_failed));
        }
    }

    /// Streams the media driver relayed at its last report (about once a second).
    pub fn media_streams(&self) -> u64 {
        self.media_streams.load(Ordering::Relaxed)
    }

    /// Calls, dialogs and transactions held: all zero when nothing leaked. The trunk
    /// keepalive's pings are not counted: they come and go on their own, whatever the calls.
    pub fn held(&self) -> (u64, u64, u64) {
        let relaxed = Ordering::Relaxed;
        let client = self
            .client_transactions
            .load(relaxed)
            .saturating_sub(self.keepalive_transactions.load(relaxed));
        (
            self.calls.load(relaxed),
            self.dialogs.load(relaxed),
            client + self.server_transactions.load(relaxed),
        )
    }
}

impl SipStatus for SharedStatus {
    fn snapshot(&self) -> SipSnapshot {
        let relaxed = Ordering::Relaxed;
        let (refused, failed) = self.outcomes.lock().clone();
        let transport = self.transport.lock().as_ref().map(TransportHandle::stats);
        let (free, pairs) = (
            self.media_pairs_free.load(relaxed),
            self.media_pairs.load(relaxed),
        );
        SipSnapshot {
            sip_serving: self.serving.load(relaxed),
            draining: self.draining.load(relaxed),
            trunk_targets: self
                .trunk_targets
                .lock()
                .iter()
                .map(ToString::to_string)
                .collect(),
            active_calls: self.active_calls.load(relaxed),
            dialogs: self.dialogs.load(relaxed),
            client_transactions: self.client_transactions.load(relaxed),
            server_transactions: self.server_transactions.load(relaxed),
            calls_bridged: self.bridged.load(relaxed),
            calls_refused: refused,
            calls_failed: failed,
            sip_malformed_answered: transport.as_ref().map_or(0, |t| t.malformed_answered),
            sip_malformed_dropped: transport.as_ref().map_or(0, |t| t.malformed_dropped),
            sip_untrusted: self.untrusted.load(relaxed),
            sip_wrong_peer: self.wrong_peer.load(relaxed),
            sip_shed_unread: transport.as_ref().map_or(0, |t| t.shed_requests),
            sip_connections: transport.as_ref().map_or(0, |t| t.connections_open),
            sip_connections_refused_untrusted: transport
                .as_ref()
                .map_or(0, |t| t.connections_refused_untrusted),
            sip_connections_refused_per_ip: transport
                .as_ref()
                .map_or(0, |t| t.connections_refused_per_ip),
            sip_connections_refused_full: transport.as_ref().map_or(0, |t| t.connections_refused),
            media_packets_relayed: self.media_relayed.load(relaxed),
            media_packets_dropped: self.media_dropped.load(relaxed),
            media_ports_in_use: 2 * pairs.saturating_sub(free),
            media_ports_capacity: 2 * pairs,
            heap: self.heap_probe.get().and_then(|probe| probe()),
            trunk: trunk_status(self.trunk.load(relaxed)),
            trunk_pings_answered: self.trunk_answered.load(relaxed),
            trunk_pings_lost: self.trunk_lost.load(relaxed),
            registration: registration_status(self.registration.load(relaxed)),
            registrations_accepted: self.registrations_accepted.load(relaxed),
            registrations_failed: self.registrations_failed.load(relaxed),
        }
    }
}

/// [`TrunkState`] in one atomic byte (0, the default, is unmonitored).
fn trunk_code(state: TrunkState) -> u8 {
    match state {
        TrunkState::Unmonitored => 0,
        TrunkState::Up => 1,
        TrunkState::Down => 2,
    }
}

/// The registration's state in one atomic byte (0, the default, is off).
fn registration_code(state: Option<RegistrationState>) -> u8 {
    match state {
        None => 0,
        Some(RegistrationState::Registering) => 1,
        Some(RegistrationState::Registered { .. }) => 2,
        Some(RegistrationState::Failed { .. }) => 3,
        Some(RegistrationState::Unregistered) => 4,
    }
}

fn registration_status(code: u8) -> RegistrationStatus {
    match code {
        1 => RegistrationStatus::Registering,
        2 => RegistrationStatus::Registered,
        3 => RegistrationStatus::Failed,
        4 => RegistrationStatus::Unregistered,
        _ => RegistrationStatus::Off,
    }
}

fn trunk_status(code: u8) -> TrunkStatus {
    match code {
        1 => TrunkStatus::Up,
        2 => TrunkStatus::Down,
        _ => TrunkStatus::Unmonitored,
    }
}
