//! RFC 3263 resolution of the trunk (SPEC `[trunk] address`: "host:port, or a domain resolved
//! per RFC 3263 (NAPTR, SRV, A/AAAA)"): which addresses leg B's INVITEs go to, in which order.
//!
//! - An IP literal, with or without a port, is that address: no DNS (§4.2).
//! - A name with an explicit port: its A/AAAA records, at that port (§4.2).
//! - A name without a port: its NAPTR records whose service is `trunk.transport`'s
//!   (`SIP+D2U`, `SIP+D2T`, `SIPS+D2T`) give the SRV name; with none, the SRV name is
//!   `_sip._udp`, `_sip._tcp` or `_sips._tcp` of the name (§4.1). The SRV records are ordered
//!   by priority, and by weighted random choice within one priority (RFC 2782), and each
//!   target's A/AAAA records give the addresses. Without SRV records, the name's own A/AAAA
//!   records at 5060 (5061 for TLS) (§4.2).
//!
//! The engine gets the result as an ordered list of [`Peer`]s (at most
//! [`MAX_TRUNK_TARGETS`]) and fails a call's INVITE over along it (b2bua's `failover.rs`).
//! The answers' shortest TTL says when to resolve again ([`Freshness`]); the runtime keeps the
//! list current with [`keep_fresh`].
//!
//! The selection logic is plain functions over plain records ([`Naptr`], [`Srv`]), tested
//! without a network; only [`TrunkResolver`] does lookups (hickory-resolver, against
//! `dns.servers` or the system's resolvers).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use b2bua::engine::MAX_TRUNK_TARGETS;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use rand::seq::SliceRandom;
use rand::Rng;
use sip_core::{Peer, Transport};
use tokio::sync::{mpsc, watch};

use crate::actions::EngineCommand;

/// Re-resolution never comes sooner than this after the last, whatever the TTLs say: a
/// zone with TTL 0 must not turn callbridge into a DNS load generator.
pub const MIN_REFRESH: Duration = Duration::from_secs(5);
/// Re-resolution comes at least this often, whatever the TTLs say: a carrier's change is
/// seen within the hour even behind a week-long TTL.
pub const MAX_REFRESH: Duration = Duration::from_secs(3600);
/// The first wait after a failed re-resolution; doubled after each further failure.
pub const RETRY_FIRST: Duration = Duration::from_secs(5);
/// The longest wait between two attempts while resolution keeps failing.
pub const RETRY_MAX: Duration = Duration::from_secs(300);
/// One whole resolution (every lookup of it) at most: a resolver that answers nothing cannot
/// hold callbridge's start, or a re-resolution, for longer.
pub const RESOLVE_WITHIN: Duration = Duration::from_secs(15);

/// One query's wait for an answer, and the attempts at it: with a dead resolver a lookup
/// fails within seconds, not the system default's tens of seconds.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
const LOOKUP_ATTEMPTS: usize = 2;
/// SRV names taken from NAPTR records at most (tried in order until one has SRV records).
const MAX_NAPTR_CANDIDATES: usize = 4;
/// Records of one answer read at most; the rest of an oversized answer is ignored.
const MAX_RECORDS_READ: usize = 64;
/// Answers hickory keeps between resolutions (a handful of names are ever asked).
const CACHE_SIZE: u64 = 64;

/// Why the trunk's targets could not be found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TrunkDnsError {
    /// `trunk.address` (or `sip.trunk`) is not an IP address, a host name, or either with a
    /// port.
    #[error("{0:?} is not an IP address or a host name, with or without \":port\"")]
    BadAddress(String),
    /// The resolver could not be set up (the system's configuration is unreadable).
    #[error("no DNS resolver: {0}")]
    Setup(String),
    /// A lookup failed for another reason than "no such records" (timeout, refused,
    /// SERVFAIL): the answer is unknown, not empty.
    #[error("{kind} lookup of {name} failed: {message}")]
    Lookup {
        name: String,
        kind: &'static str,
        message: String,
    },
    /// Every step answered, and none gave an address.
    #[error("{0} has no address: no usable NAPTR/SRV records, and no A/AAAA records")]
    NoTargets(String),
    /// The SRV set is the single target "." (RFC 2782): the service is decidedly not offered.
    #[error("the SRV records of {0} say the SIP service is not offered there (target \".\")")]
    Declined(String),
    #[error("resolving {name} took longer than {within:?}")]
    TimedOut { name: String, within: Duration },
}

/// What the trunk's address names, as RFC 3263 §4 tells the cases apart. Exists because each
/// case is looked up differently (not at all, A/AAAA only, or NAPTR/SRV first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrunkName {
    /// An IP literal: that address (at the transport's default port when none is given).
    Address(SocketAddr),
    /// A name with an explicit port: its A/AAAA records at that port.
    HostPort { host: String, port: u16 },
    /// A name without a port: NAPTR, SRV, then A/AAAA.
    Domain(String),
}

impl TrunkName {
    /// Reads `address` (`trunk.address` or `sip.trunk`). A name is kept in lower case without
    /// a trailing dot.
    pub fn parse(address: &str, transport: Transport) -> Result<TrunkName, TrunkDnsError> {
        let address = address.trim();
        let bad = || TrunkDnsError::BadAddress(address.to_owned());
        if let Ok(addr) = address.parse::<SocketAddr>() {
            return if addr.port() == 0 {
                Err(bad())
            } else {
                Ok(TrunkName::Address(addr))
            };
        }
        let port = default_port(transport);
        if let Ok(ip) = address.parse::<IpAddr>() {
            return Ok(TrunkName::Address(SocketAddr::new(ip, port)));
        }
        if let Some(inner) = address.strip_prefix('[').and_then(|a| a.strip_suffix(']')) {
            let ip = inner.parse::<Ipv6Addr>().map_err(|_| bad())?;
            return Ok(TrunkName::Address(SocketAddr::new(IpAddr::V6(ip), port)));
        }
        let (host, port) = match address.rsplit_once(':') {
            Some((host, port)) => match port.parse::<u16>() {
                Ok(port) if port > 0 => (host, Some(port)),
                _ => return Err(bad()),
            },
            None => (address, None),
        };
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        if !is_host_name(&host) {
            return Err(bad());
        }
        Ok(match port {
            Some(port) => TrunkName::HostPort { host, port },
            None => TrunkName::Domain(host),
        })
    }

    /// Whether finding the targets takes DNS (a name), or not (an IP literal).
    pub fn needs_dns(&self) -> bool {
        !matches!(self, TrunkName::Address(_))
    }

    /// The name or address, for messages.
    pub fn label(&self) -> String {
        match self {
            TrunkName::Address(addr) => addr.to_string(),
            TrunkName::HostPort { host, port } => format!("{host}:{port}"),
            TrunkName::Domain(domain) => domain.clone(),
        }
    }
}

/// A DNS host name (RFC 1123 letters, digits, hyphens; `_` too, which SRV owner names use):
/// 1-63 characters per label, at most 253 in all.
fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        // All digits and dots would be a malformed IPv4 address, not a name.
        && !name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// The transport's port when DNS gives none (RFC 3263 §4.2).
pub fn default_port(transport: Transport) -> u16 {
    match transport {
        Transport::Tls => 5061,
        _ => 5060,
    }
}

/// The NAPTR service of `transport` (RFC 3263 §4.1); `None`: one SIP has no NAPTR for here.
pub fn naptr_service(transport: Transport) -> Option<&'static str> {
    match transport {
        Transport::Udp => Some("SIP+D2U"),
        Transport::Tcp => Some("SIP+D2T"),
        Transport::Tls => Some("SIPS+D2T"),
        _ => None,
    }
}

/// The SRV name of `domain` for `transport` when no NAPTR record gives one (RFC 3263 §4.1).
pub fn srv_name(domain: &str, transport: Transport) -> Option<String> {
    let prefix = match transport {
        Transport::Udp => "_sip._udp",
        Transport::Tcp => "_sip._tcp",
        Transport::Tls => "_sips._tcp",
        _ => return None,
    };
    Some(format!("{prefix}.{domain}"))
}

/// A NAPTR record, with the fields RFC 3263 reads, as text. Exists so that the selection is
/// a plain function, testable without DNS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Naptr {
    pub order: u16,
    pub preference: u16,
    pub flags: String,
    pub services: String,
    pub regexp: String,
    pub replacement: String,
}

/// The SRV names that `records` offer for `transport`, best first (RFC 3263 §4.1): records
/// with flag `s`, the transport's service, no regexp (SIP uses the replacement only) and a
/// replacement, by order then preference; duplicates removed, at most
/// [`MAX_NAPTR_CANDIDATES`]. Empty: none applies (then the transport's SRV name is asked).
pub fn naptr_srv_names(records: &[Naptr], transport: Transport) -> Vec<String> {
    let Some(service) = naptr_service(transport) else {
        return Vec::new();
    };
    let mut usable: Vec<&Naptr> = records
        .iter()
        .filter(|r| {
            r.flags.eq_ignore_ascii_case("s")
                && r.services.eq_ignore_ascii_case(service)
                && r.regexp.is_empty()
        })
        .collect();
    usable.sort_by_key(|r| (r.order, r.preference));
    let mut names: Vec<String> = Vec::new();
    for record in usable {
        let name = normalize(&record.replacement);
        if is_host_name(&name) && !names.contains(&name) {
            names.push(name);
        }
        if names.len() == MAX_NAPTR_CANDIDATES {
            break;
        }
    }
    names
}

/// An SRV record. Exists so that the ordering is a plain function, testable without DNS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

/// RFC 2782: a single SRV record whose target is "." says the service is not offered.
pub fn srv_declines(records: &[Srv]) -> bool {
    matches!(records, [only] if normalize(&only.target).is_empty())
}

/// `records` in the order to try them (RFC 2782): by priority, lowest first; within one
/// priority, by repeated weighted random choice (weight 0 records first in the running sum,
/// so that they are picked rarely, but not never). Records with target "." or port 0 are
/// dropped.
pub fn order_srv(records: Vec<Srv>, rng: &mut impl Rng) -> Vec<Srv> {
    let mut rest: Vec<Srv> = records
        .into_iter()
        .filter(|r| r.port != 0 && !normalize(&r.target).is_empty())
        .take(MAX_RECORDS_READ)
        .collect();
    // Shuffled first: records of equal weight (all zero, say) are not always tried in the
    // order the server happened to list them.
    rest.shuffle(rng);
    rest.sort_by_key(|r| r.priority);
    let mut ordered = Vec::with_capacity(rest.len());
    while let Some(priority) = rest.first().map(|r| r.priority) {
        let split = rest
            .iter()
            .position(|r| r.priority != priority)
            .unwrap_or(rest.len());
        let tail = rest.split_off(split);
        let mut group = std::mem::replace(&mut rest, tail);
        group.sort_by_key(|r| r.weight != 0);
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let pick = rng.gen_range(0..=total);
            let mut running = 0u32;
            let index = group
                .iter()
                .position(|r| {
                    running += u32::from(r.weight);
                    running >= pick
                })
                .unwrap_or(group.len() - 1);
            ordered.push(group.remove(index));
        }
    }
    ordered
}

/// Lower case, no trailing dot: names compare and print alike. The root (".") becomes "".
fn normalize(name: &str) -> String {
    let name = name.trim();
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// The shortest time to live among the answers one resolution used. Exists so that the
/// re-resolution comes when the first of them expires, and not before.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Freshness {
    shortest: Option<Duration>,
}

impl Freshness {
    /// One answer used, valid for `ttl` more.
    pub fn observe(&mut self, ttl: Duration) {
        self.shortest = Some(self.shortest.map_or(ttl, |shortest| shortest.min(ttl)));
    }

    /// When to resolve again: at the shortest TTL, within [`MIN_REFRESH`]..=[`MAX_REFRESH`].
    pub fn refresh_after(self) -> Duration {
        self.shortest
            .unwrap_or(MAX_REFRESH)
            .clamp(MIN_REFRESH, MAX_REFRESH)
    }
}

/// The wait after `failures` failed resolutions in a row: [`RETRY_FIRST`], doubled each time,
/// at most [`RETRY_MAX`].
pub fn retry_after(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    RETRY_FIRST.saturating_mul(1 << doublings).min(RETRY_MAX)
}

/// `peers` plus `addr` (over `transport`), unless it is there already or the list is full.
fn push_target(peers: &mut Vec<Peer>, addr: SocketAddr, transport: Transport) {
    let peer = Peer {
        transport,
        addr,
        connection: None,
    };
    if peers.len() < MAX_TRUNK_TARGETS && !peers.contains(&peer) {
        peers.push(peer);
    }
}

/// Which address families a target may have: those the SIP socket can send to. Exists
/// because an IPv4 socket cannot reach an AAAA target; asking for it would only add dead
/// targets to fail over from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressFamilies {
    /// IPv4 only (SIP listens on an IPv4 address).
    V4,
    /// IPv6 first, then IPv4 (SIP listens on an IPv6 address).
    V6ThenV4,
}

impl AddressFamilies {
    /// The families a SIP socket bound to `listen` can send to.
    pub fn for_listen(listen: SocketAddr) -> AddressFamilies {
        if listen.is_ipv4() {
            AddressFamilies::V4
        } else {
            AddressFamilies::V6ThenV4
        }
    }

    fn strategy(self) -> LookupIpStrategy {
        match self {
            AddressFamilies::V4 => LookupIpStrategy::Ipv4Only,
            AddressFamilies::V6ThenV4 => LookupIpStrategy::Ipv6AndIpv4,
        }
    }
}

/// The trunk's targets as one resolution found them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// In the order to try them; never empty, at most [`MAX_TRUNK_TARGETS`].
    pub targets: Vec<Peer>,
    /// When to resolve again; `None` for an IP literal (never).
    pub refresh: Option<Duration>,
}

/// Looks the trunk's name up (RFC 3263) through hickory-resolver. Exists to keep the one
/// resolver (and its TTL-bound cache) for the process's life, and the transport the lookups
/// are for.
pub struct TrunkResolver {
    resolver: TokioResolver,
    transport: Transport,
}

impl TrunkResolver {
    /// A resolver asking `servers` (`dns.servers`), or the system's (`/etc/resolv.conf`)
    /// when empty, for targets reachable over `transport` in `families`.
    pub fn new(
        servers: &[SocketAddr],
        transport: Transport,
        families: AddressFamilies,
    ) -> Result<TrunkResolver, TrunkDnsError> {
        let mut builder = if servers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| TrunkDnsError::Setup(e.to_string()))?
        } else {
            let config = ResolverConfig::from_name_servers(
                servers.iter().map(|server| name_server(*server)).collect(),
            );
            Resolver::builder_with_config(config, TokioRuntimeProvider::default())
        };
        let options: &mut ResolverOpts = builder.options_mut();
        options.timeout = options.timeout.min(LOOKUP_TIMEOUT);
        options.attempts = options.attempts.clamp(1, LOOKUP_ATTEMPTS);
        options.ip_strategy = families.strategy();
        options.cache_size = CACHE_SIZE;
        options.positive_max_ttl = Some(MAX_REFRESH);
        options.negative_max_ttl = Some(MAX_REFRESH);
        let resolver = builder
            .build()
            .map_err(|e| TrunkDnsError::Setup(e.to_string()))?;
        Ok(TrunkResolver {
            resolver,
            transport,
        })
    }

    /// The targets of `name`, in the order to try them, and when to ask again; at most
    /// [`RESOLVE_WITHIN`].
    pub async fn resolve(&self, name: &TrunkName) -> Result<Resolved, TrunkDnsError> {
        match tokio::time::timeout(RESOLVE_WITHIN, self.resolve_unbounded(name)).await {
            Ok(result) => result,
            Err(_) => Err(TrunkDnsError::TimedOut {
                name: name.label(),
                within: RESOLVE_WITHIN,
            }),
        }
    }

    async fn resolve_unbounded(&self, name: &TrunkName) -> Result<Resolved, TrunkDnsError> {
        let mut fresh = Freshness::default();
        let targets = match name {
            TrunkName::Address(addr) => {
                return Ok(Resolved {
                    targets: vec![Peer {
                        transport: self.transport,
                        addr: *addr,
                        connection: None,
                    }],
                    refresh: None,
                })
            }
            TrunkName::HostPort { host, port } => {
                let mut targets = Vec::new();
                for ip in self.addresses(host, &mut fresh).await? {
                    push_target(&mut targets, SocketAddr::new(ip, *port), self.transport);
                }
                targets
            }
            TrunkName::Domain(domain) => self.domain_targets(domain, &mut fresh).await?,
        };
        if targets.is_empty() {
            return Err(TrunkDnsError::NoTargets(name.label()));
        }
        Ok(Resolved {
            targets,
            refresh: Some(fresh.refresh_after()),
        })
    }

    /// RFC 3263 §4.1-4.2 for a name without a port.
    async fn domain_targets(
        &self,
        domain: &str,
        fresh: &mut Freshness,
    ) -> Result<Vec<Peer>, TrunkDnsError> {
        let naptr = self.naptr(domain, fresh).await?;
        let mut srv_names = naptr_srv_names(&naptr, self.transport);
        if srv_names.is_empty() {
            srv_names.extend(srv_name(domain, self.transport));
        }
        for name in srv_names {
            let records = self.srv(&name, fresh).await?;
            if srv_declines(&records) {
                return Err(TrunkDnsError::Declined(name));
            }
            if records.is_empty() {
                continue;
            }
            // The generator is not held across an await (it is not Send).
            let ordered = order_srv(records, &mut rand::thread_rng());
            let mut targets = Vec::new();
            for record in ordered.iter().take(MAX_TRUNK_TARGETS) {
                let target = normalize(&record.target);
                match self.addresses(&target, fresh).await {
                    Ok(ips) => {
                        for ip in ips {
                            push_target(
                                &mut targets,
                                SocketAddr::new(ip, record.port),
                                self.transport,
                            );
                        }
                    }
                    // One target that does not resolve is left out, like one that does not
                    // answer; the others still serve.
                    Err(error) => tracing::warn!(%error, srv = %name, "SRV target left out"),
                }
                if targets.len() >= MAX_TRUNK_TARGETS {
                    break;
                }
            }
            if targets.is_empty() {
                return Err(TrunkDnsError::NoTargets(name));
            }
            return Ok(targets);
        }
        // No SRV records: the name's own addresses, at the transport's default port.
        let mut targets = Vec::new();
        for ip in self.addresses(domain, fresh).await? {
            push_target(
                &mut targets,
                SocketAddr::new(ip, default_port(self.transport)),
                self.transport,
            );
        }
        Ok(targets)
    }

    async fn naptr(&self, name: &str, fresh: &mut Freshness) -> Result<Vec<Naptr>, TrunkDnsError> {
        let lookup = self.lookup(name, RecordType::NAPTR, "NAPTR", fresh).await?;
        Ok(lookup
            .iter()
            .flat_map(|lookup| lookup.answers())
            .filter_map(|record| match &record.data {
                RData::NAPTR(naptr) => Some(Naptr {
                    order: naptr.order,
                    preference: naptr.preference,
                    flags: String::from_utf8_lossy(&naptr.flags).into_owned(),
                    services: String::from_utf8_lossy(&naptr.services).into_owned(),
                    regexp: String::from_utf8_lossy(&naptr.regexp).into_owned(),
                    replacement: naptr.replacement.to_ascii(),
                }),
                _ => None,
            })
            .take(MAX_RECORDS_READ)
            .collect())
    }

    async fn srv(&self, name: &str, fresh: &mut Freshness) -> Result<Vec<Srv>, TrunkDnsError> {
        let lookup = self.lookup(name, RecordType::SRV, "SRV", fresh).await?;
        Ok(lookup
            .iter()
            .flat_map(|lookup| lookup.answers())
            .filter_map(|record| match &record.data {
                RData::SRV(srv) => Some(Srv {
                    priority: srv.priority,
                    weight: srv.weight,
                    port: srv.port,
                    target: srv.target.to_ascii(),
                }),
                _ => None,
            })
            .take(MAX_RECORDS_READ)
            .collect())
    }

    /// One lookup; `None` when the name has no such records (an answer, not a failure).
    async fn lookup(
        &self,
        name: &str,
        kind: RecordType,
        label: &'static str,
        fresh: &mut Freshness,
    ) -> Result<Option<hickory_resolver::lookup::Lookup>, TrunkDnsError> {
        match self.resolver.lookup(fqdn(name), kind).await {
            Ok(lookup) => {
                fresh.observe(remaining(lookup.valid_until()));
                Ok(Some(lookup))
            }
            Err(error) => no_records(error, name, label, fresh).map(|()| None),
        }
    }

    /// The A/AAAA addresses of `host` (the families of [`AddressFamilies`]); an empty list
    /// when it has none.
    async fn addresses(
        &self,
        host: &str,
        fresh: &mut Freshness,
    ) -> Result<Vec<IpAddr>, TrunkDnsError> {
        match self.resolver.lookup_ip(fqdn(host)).await {
            Ok(lookup) => {
                fresh.observe(remaining(lookup.valid_until()));
                Ok(lookup.iter().take(MAX_RECORDS_READ).collect())
            }
            Err(error) => no_records(error, host, "A/AAAA", fresh).map(|()| Vec::new()),
        }
    }
}

/// `Ok` when `error` says the name has no such records (noting how long that answer holds,
/// when the server said: an SOA's negative TTL), the lookup's error otherwise.
fn no_records(
    error: NetError,
    name: &str,
    kind: &'static str,
    fresh: &mut Freshness,
) -> Result<(), TrunkDnsError> {
    match error {
        NetError::Dns(DnsError::NoRecordsFound(NoRecords { negative_ttl, .. })) => {
            if let Some(ttl) = negative_ttl {
                fresh.observe(Duration::from_secs(u64::from(ttl)));
            }
            Ok(())
        }
        error => Err(TrunkDnsError::Lookup {
            name: name.to_owned(),
            kind,
            message: error.to_string(),
        }),
    }
}

/// `name` made absolute: the trunk's name is never completed with the system's search list.
fn fqdn(name: &str) -> String {
    format!("{}.", normalize(name))
}

fn remaining(valid_until: Instant) -> Duration {
    valid_until.saturating_duration_since(Instant::now())
}

/// A resolver at `server` (`ip:port`), over UDP and, for truncated answers, TCP.
fn name_server(server: SocketAddr) -> NameServerConfig {
    let mut config = NameServerConfig::udp_and_tcp(server.ip());
    for connection in &mut config.connections {
        connection.port = server.port();
    }
    config
}

/// Keeps the engine's trunk targets current until shutdown: resolves `name` again when the
/// answers of the last resolution expire (`refresh`), and hands a changed list to the SIP
/// task. A failed resolution keeps the last targets (logged), and is retried with backoff
/// ([`retry_after`]). Runs beside the SIP task: the engine does no I/O.
pub(crate) async fn keep_fresh(
    resolver: TrunkResolver,
    name: TrunkName,
    mut targets: Vec<Peer>,
    refresh: Duration,
    commands: mpsc::Sender<EngineCommand>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut wait = refresh;
    let mut failures: u32 = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let result = tokio::select! {
            result = resolver.resolve(&name) => result,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        match result {
            Ok(resolved) => {
                if failures > 0 {
                    tracing::info!(trunk = %name.label(), "trunk resolves again");
                }
                failures = 0;
                wait = resolved.refresh.unwrap_or(MAX_REFRESH);
                if resolved.targets == targets {
                    continue;
                }
                tracing::info!(
                    trunk = %name.label(),
                    before = ?addrs(&targets),
                    after = ?addrs(&resolved.targets),
                    "trunk targets changed"
                );
                targets.clone_from(&resolved.targets);
                let command = EngineCommand::SetTrunkTargets(resolved.targets);
                tokio::select! {
                    sent = commands.send(command) => {
                        if sent.is_err() {
                            return;
                        }
                    }
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                wait = retry_after(failures);
                tracing::warn!(
                    trunk = %name.label(),
                    %error,
                    failures,
                    retry_in = ?wait,
                    kept = ?addrs(&targets),
                    "trunk re-resolution failed; the last targets stay in use"
                );
            }
        }
    }
}

fn addrs(targets: &[Peer]) -> Vec<SocketAddr> {
    targets.iter().map(|t| t.addr).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn naptr(order: u16, preference: u16, services: &str, replacement: &str) -> Naptr {
        Naptr {
            order,
            preference,
            flags: "S".into(),
            services: services.into(),
            regexp: String::new(),
            replacement: replacement.into(),
        }
    }

    fn srv(priority: u16, weight: u16, target: &str) -> Srv {
        Srv {
            priority,
            weight,
            port: 5060,
            target: target.into(),
        }
    }

    #[test]
    fn addresses_are_told_apart_as_rfc_3263_says() {
        let udp = Transport::Udp;
        let parse = |a: &str| TrunkName::parse(a, udp);
        assert_eq!(
            parse("192.0.2.1:5080"),
            Ok(TrunkName::Address("192.0.2.1:5080".parse().unwrap()))
        );
        assert_eq!(
            parse("192.0.2.1"),
            Ok(TrunkName::Address("192.0.2.1:5060".parse().unwrap()))
        );
        assert_eq!(
            TrunkName::parse("192.0.2.1", Transport::Tls),
            Ok(TrunkName::Address("192.0.2.1:5061".parse().unwrap()))
        );
        assert_eq!(
            parse("[2001:db8::1]:5070"),
            Ok(TrunkName::Address("[2001:db8::1]:5070".parse().unwrap()))
        );
        assert_eq!(
            parse("[2001:db8::1]"),
            Ok(TrunkName::Address("[2001:db8::1]:5060".parse().unwrap()))
        );
        assert_eq!(
            parse("2001:db8::1"),
            Ok(TrunkName::Address("[2001:db8::1]:5060".parse().unwrap()))
        );
        assert_eq!(
            parse(" SIP.Carrier.example.:5080 "),
            Ok(TrunkName::HostPort {
                host: "sip.carrier.example".into(),
                port: 5080
            })
        );
        assert_eq!(
            parse("carrier.example"),
            Ok(TrunkName::Domain("carrier.example".into()))
        );
        assert!(!parse("192.0.2.1").unwrap().needs_dns());
        assert!(parse("carrier.example").unwrap().needs_dns());
        for bad in [
            "",
            ":5060",
            "carrier.example:",
            "carrier.example:0",
            "carrier.example:70000",
            "192.0.2.1:0",
            "carrier..example",
            "carrier example",
            "a,b",
            "[2001:db8::1",
            "[carrier]",
            "999.1.1.1",
            "sip:carrier.example",
        ] {
            assert_eq!(
                parse(bad),
                Err(TrunkDnsError::BadAddress(bad.trim().into())),
                "{bad:?}"
            );
        }
        let long = format!("{}.example", "a".repeat(64));
        assert!(parse(&long).is_err(), "a label over 63 characters");
    }

    #[test]
    fn naptr_records_of_the_transports_service_give_the_srv_names_in_order() {
        let records = vec![
            naptr(20, 10, "SIP+D2U", "_sip._udp.backup.example."),
            naptr(10, 20, "SIP+D2U", "_sip._udp.second.example."),
            naptr(10, 10, "SIP+D2T", "_sip._tcp.carrier.example."),
            naptr(10, 10, "sip+d2u", "_sip._udp.First.example."),
            naptr(5, 10, "SIPS+D2T", "_sips._tcp.carrier.example."),
            naptr(1, 1, "E2U+sip", "_sip._udp.enum.example."),
        ];
        assert_eq!(
            naptr_srv_names(&records, Transport::Udp),
            [
                "_sip._udp.first.example",
                "_sip._udp.second.example",
                "_sip._udp.backup.example"
            ]
        );
        assert_eq!(
            naptr_srv_names(&records, Transport::Tcp),
            ["_sip._tcp.carrier.example"]
        );
        assert_eq!(
            naptr_srv_names(&records, Transport::Tls),
            ["_sips._tcp.carrier.example"]
        );
        assert!(naptr_srv_names(&records, Transport::Sctp).is_empty());
    }

    #[test]
    fn naptr_records_that_sip_cannot_use_are_skipped() {
        let mut terminal = naptr(1, 1, "SIP+D2U", "_sip._udp.a.example.");
        terminal.flags = "A".into();
        let mut rewriting = naptr(1, 1, "SIP+D2U", "");
        rewriting.regexp = "!^.*$!sip:info@example.com!".into();
        let root = naptr(1, 1, "SIP+D2U", ".");
        assert!(naptr_srv_names(&[terminal, rewriting, root], Transport::Udp).is_empty());
        // None apply: the transport's own SRV name is asked instead.
        assert_eq!(
            srv_name("carrier.example", Transport::Udp).as_deref(),
            Some("_sip._udp.carrier.example")
        );
        assert_eq!(
            srv_name("carrier.example", Transport::Tcp).as_deref(),
            Some("_sip._tcp.carrier.example")
        );
        assert_eq!(
            srv_name("carrier.example", Transport::Tls).as_deref(),
            Some("_sips._tcp.carrier.example")
        );
        // Duplicates collapse, and the candidates are bounded.
        let many: Vec<Naptr> = (0..20)
            .map(|i| naptr(i, 0, "SIP+D2U", &format!("_sip._udp.n{}.example", i % 6)))
            .collect();
        assert_eq!(
            naptr_srv_names(&many, Transport::Udp),
            [
                "_sip._udp.n0.example",
                "_sip._udp.n1.example",
                "_sip._udp.n2.example",
                "_sip._udp.n3.example"
            ]
        );
    }

    #[test]
    fn srv_priorities_come_first_in_order() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..50 {
            let ordered = order_srv(
                vec![
                    srv(20, 100, "c.example."),
                    srv(10, 0, "a.example."),
                    srv(30, 5, "d.example."),
                    srv(10, 0, "b.example."),
                ],
                &mut rng,
            );
            let priorities: Vec<u16> = ordered.iter().map(|r| r.priority).collect();
            assert_eq!(priorities, [10, 10, 20, 30]);
        }
    }

    #[test]
    fn srv_weights_share_the_first_place_in_proportion() {
        let mut rng = StdRng::seed_from_u64(42);
        let draws = 20_000;
        let mut first = std::collections::HashMap::<String, u32>::new();
        for _ in 0..draws {
            let ordered = order_srv(
                vec![
                    srv(10, 60, "heavy."),
                    srv(10, 30, "medium."),
                    srv(10, 10, "light."),
                    srv(10, 0, "zero."),
                ],
                &mut rng,
            );
            assert_eq!(ordered.len(), 4, "every record is kept");
            let name = ordered.first().map(|r| r.target.clone()).unwrap();
            *first.entry(name).or_default() += 1;
        }
        // RFC 2782: a random number in 0..=sum (101 values); weight w wins w/101 of the draws,
        // weight 0 only on a 0 (1/101).
        let share = |name: &str| f64::from(first.get(name).copied().unwrap_or(0)) / draws as f64;
        let near = |got: f64, want: f64| (got - want).abs() < 0.02;
        assert!(near(share("heavy."), 60.0 / 101.0), "{first:?}");
        assert!(near(share("medium."), 30.0 / 101.0), "{first:?}");
        assert!(near(share("light."), 10.0 / 101.0), "{first:?}");
        assert!(near(share("zero."), 1.0 / 101.0), "{first:?}");
    }

    #[test]
    fn equal_zero_weights_are_spread() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut a_first = 0;
        for _ in 0..2000 {
            let ordered = order_srv(vec![srv(10, 0, "a."), srv(10, 0, "b.")], &mut rng);
            if ordered.first().is_some_and(|r| r.target == "a.") {
                a_first += 1;
            }
        }
        assert!((800..1200).contains(&a_first), "{a_first}");
    }

    #[test]
    fn unusable_srv_records_are_dropped_and_a_lone_root_declines() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut zero_port = srv(10, 1, "a.example.");
        zero_port.port = 0;
        let ordered = order_srv(vec![zero_port, srv(10, 1, "."), srv(20, 1, "b.")], &mut rng);
        assert_eq!(ordered, [srv(20, 1, "b.")]);
        assert!(srv_declines(&[srv(0, 0, ".")]));
        assert!(!srv_declines(&[srv(0, 0, "."), srv(1, 0, "b.")]));
        assert!(!srv_declines(&[]));
        // An oversized answer is read up to the bound.
        let many = (0..500).map(|_| srv(1, 1, "x.")).collect();
        assert_eq!(order_srv(many, &mut rng).len(), MAX_RECORDS_READ);
    }

    #[test]
    fn refresh_follows_the_shortest_ttl_within_bounds() {
        let mut fresh = Freshness::default();
        assert_eq!(fresh.refresh_after(), MAX_REFRESH, "nothing observed");
        fresh.observe(Duration::from_secs(600));
        fresh.observe(Duration::from_secs(60));
        fresh.observe(Duration::from_secs(300));
        assert_eq!(fresh.refresh_after(), Duration::from_secs(60));
        fresh.observe(Duration::from_secs(1));
        assert_eq!(fresh.refresh_after(), MIN_REFRESH);
        let mut long = Freshness::default();
        long.observe(Duration::from_secs(7 * 86_400));
        assert_eq!(long.refresh_after(), MAX_REFRESH);
    }

    #[test]
    fn failed_resolutions_back_off_to_a_bound() {
        let waits: Vec<u64> = (1..=9).map(|n| retry_after(n).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(retry_after(0), RETRY_FIRST);
        assert_eq!(retry_after(u32::MAX), RETRY_MAX);
    }

    #[test]
    fn targets_are_deduplicated_and_bounded() {
        let mut peers = Vec::new();
        let addr: SocketAddr = "192.0.2.1:5060".parse().unwrap();
        push_target(&mut peers, addr, Transport::Tcp);
        push_target(&mut peers, addr, Transport::Tcp);
        assert_eq!(peers.len(), 1);
        assert_eq!(peers.first().map(|p| p.transport), Some(Transport::Tcp));
        for port in 1..100 {
            push_target(&mut peers, SocketAddr::new(addr.ip(), port), Transport::Tcp);
        }
        assert_eq!(peers.len(), MAX_TRUNK_TARGETS);
    }

    #[test]
    fn families_follow_the_listen_address() {
        assert_eq!(
            AddressFamilies::for_listen("0.0.0.0:5060".parse().unwrap()),
            AddressFamilies::V4
        );
        assert_eq!(
            AddressFamilies::for_listen("[::]:5060".parse().unwrap()),
            AddressFamilies::V6ThenV4
        );
    }

    /// An IP literal needs no resolver at all, and is never re-resolved.
    #[tokio::test]
    async fn an_ip_literal_is_its_own_target() {
        let resolver = TrunkResolver::new(
            &["127.0.0.1:9".parse().unwrap()],
            Transport::Udp,
            AddressFamilies::V4,
        )
        .unwrap();
        let name = TrunkName::parse("192.0.2.7:5080", Transport::Udp).unwrap();
        let resolved = resolver.resolve(&name).await.unwrap();
        assert_eq!(
            resolved,
            Resolved {
                targets: vec![Peer::udp("192.0.2.7:5080".parse().unwrap())],
                refresh: None
            }
        );
    }

    /// A resolver that never answers fails the resolution within the bounds, with the
    /// lookup named.
    #[tokio::test]
    async fn a_silent_resolver_fails_in_bounded_time() {
        // Bound, never read: queries to it go unanswered.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let resolver = TrunkResolver::new(
            &[silent.local_addr().unwrap()],
            Transport::Udp,
            AddressFamilies::V4,
        )
        .unwrap();
        let started = Instant::now();
        let name = TrunkName::parse("carrier.test", Transport::Udp).unwrap();
        let error = resolver.resolve(&name).await.unwrap_err();
        assert!(started.elapsed() <= RESOLVE_WITHIN + Duration::from_secs(1));
        assert!(
            matches!(
                &error,
                TrunkDnsError::Lookup { kind: "NAPTR", .. } | TrunkDnsError::TimedOut { .. }
            ),
            "{error}"
        );
    }
}
