//! Configuration: built-in defaults, overridden by a TOML file, overridden by
//! `CALLBRIDGE_<SECTION>_<KEY>` environment variables, overridden by `--set section.key=value`.
//!
//! Every layer is merged as a TOML table before anything is interpreted, so one set of serde
//! types validates all of them and an unknown key is an error wherever it came from.
//!
//! Each `[section]` is one `*Section` type, and the settings of the libraries are built from it
//! by methods kept next to it: [`SipSection::transport_config`], [`SipSection::engine_config`], [`MediaSection::media_config`], [`MediaSection::driver_config`],
//! [`ApiSection::api_settings`], [`IntentSection::call_control`]. The wiring (`runtime.rs`)
//! only calls them. (`[media]` is the exception for now: `runtime.rs` still builds
//! `b2bua::media::MediaConfig` from [`MediaSection`] itself.)
//!
//! **One source per default.** Where a library has a default for a setting (a `Default` impl or
//! a `DEFAULT_*` constant), the value is written only there: the section's `Default` reads it
//! from the library, and the conversions start from the library's `Default` for every field the
//! configuration does not expose. Where no library has one (the listen addresses, the trunk,
//! call limits and retention the libraries take as arguments), the value is written once, in
//! the section's `Default`. Either way, `callbridge --print-config` shows the value in force.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use api::ApiSettings;
use b2bua::engine::{EngineConfig, UntrustedReply};
use b2bua::media::MediaConfig;
use b2bua::outbound::LocalIdentity;
use b2bua::{CallControl, WallClock};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sip_core::transaction::{TimerConfig, TransactionConfig, MAX_UDP_PAYLOAD};
use sip_core::transport::TransportConfig;
use sip_core::{ParseLimits, Peer};

mod addresses;
mod cluster;
mod dns;
mod tls;
mod trunk;
pub use cluster::{ClusterSection, MAX_NODE_ID};
pub use dns::{DnsSection, MAX_DNS_SERVERS};
pub use tls::{TlsSection, TlsTrunk};
pub use trunk::TrunkSection;

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Syntax { origin: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole configuration of one callbridge process (SPEC.md "Configuration contract").
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub sip: SipSection,
    pub trunk: TrunkSection,
    pub dns: DnsSection,
    pub tls: TlsSection,
    pub media: MediaSection,
    pub api: ApiSection,
    pub intent: IntentSection,
    pub store: StoreSection,
    pub webhooks: WebhooksSection,
    pub cluster: ClusterSection,
    pub log: LogSection,
}

/// `[sip]`: signalling listener, trunk and call limits.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SipSection {
    /// UDP and TCP listen address (same port for both).
    pub listen: SocketAddr,
    /// Host written into Via, Contact and Record-Route: a name or an address; an IPv6
    /// address either bare (`::1`) or bracketed (`[::1]`), written bracketed in every header.
    pub public_addr: String,
    /// Where outbound (B-leg) INVITEs are sent, `host:port` (`trunk.address`, when set,
    /// takes its place).
    pub trunk: String,
    /// Sources whose SIP is processed statefully, besides the trunk's address; with it,
    /// also the only sources whose TCP connections are accepted (SPEC "Trust boundary").
    pub trusted_peers: Vec<IpNet>,
    /// What a request from any other source gets: `"403"` (one stateless 403) or `"drop"`.
    pub untrusted_reply: UntrustedReplyKey,
    /// Final response when no intent matches.
    pub refuse_code: u16,
    /// No-answer timeout of the outbound leg.
    pub no_answer_secs: u64,
    /// Maximum call duration after answer; 0 means unlimited.
    pub max_call_secs: u64,
    /// Calls held at once; further INVITEs get a stateless 503 with Retry-After.
    pub max_calls: usize,
    /// New requests queued for the call engine (of the transport's 2048) beyond which new
    /// INVITEs get a stateless 503 (the engine has fallen behind its input).
    pub overload_backlog: usize,
    /// Milliseconds a new INVITE may wait for the call engine; one that waited longer gets a
    /// stateless 503. Keep it below `t1_ms`: the sender retransmits at T1.
    pub overload_wait_ms: u64,
    /// The Retry-After of those 503s, in seconds.
    pub retry_after_secs: u64,
    /// Server transactions held at once; beyond it new out-of-dialog requests get a
    /// stateless 503 (each is memory held for up to 64·T1).
    pub max_server_transactions: usize,
    /// Server/User-Agent value; empty: the header is omitted.
    pub server_header: String,
    /// How long ended calls stay queryable through `GET /api/calls/{callid}`.
    pub call_retention_secs: u64,
    /// At most this many ended calls are kept for the API (oldest dropped first).
    pub max_ended_calls: usize,
    /// On SIGINT/SIGTERM, how long calls get to end cleanly before the process exits.
    pub shutdown_grace_secs: u64,
    /// Largest SIP message accepted, in bytes.
    pub max_message_bytes: usize,
    /// TCP connections open at once, accepted and opened. A share of them (as many as one IP
    /// may hold, at most half) is kept for the trunk, so that others cannot lock it out.
    pub max_connections: usize,
    /// TCP connections one remote IP may hold; further ones are closed at accept.
    pub max_connections_per_ip: usize,
    /// A TCP connection without traffic for this long is closed.
    pub tcp_idle_secs: u64,
    /// A request bound for UDP that is larger than this goes over TCP instead (RFC 3261
    /// §18.1.1; back to UDP if the TCP connection fails). 1300 when the path MTU is unknown;
    /// 65507 turns the switch off.
    pub udp_max_request_bytes: usize,
    /// Socket buffer sizes requested from the kernel.
    pub recv_buffer_bytes: usize,
    pub send_buffer_bytes: usize,
    /// The session interval (RFC 4028) callbridge asks for on leg B and proposes on leg A
    /// when the caller asks for none; 0: none asked (a caller's is still honoured).
    pub session_expires_secs: u64,
    /// The shortest session interval accepted (Min-SE, at least 90); a caller asking for
    /// less gets 422.
    pub min_se_secs: u64,
    /// RFC 3261 timer base values, in milliseconds.
    pub t1_ms: u64,
    pub t2_ms: u64,
    pub t4_ms: u64,
}

impl Default for SipSection {
    fn default() -> Self {
        let transport = TransportConfig::default();
        let timers = TimerConfig::default();
        SipSection {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 5060),
            public_addr: "127.0.0.1".into(),
            trunk: "127.0.0.1:5080".into(),
            trusted_peers: vec![loopback_net()],
            untrusted_reply: UntrustedReplyKey::default(),
            refuse_code: 403,
            no_answer_secs: 60,
            max_call_secs: 14_400,
            max_calls: 10_000,
            overload_backlog: 1024,
            overload_wait_ms: 400,
            retry_after_secs: 5,
            max_server_transactions: 100_000,
            server_header: String::new(),
            call_retention_secs: 3600,
            max_ended_calls: 100_000,
            shutdown_grace_secs: 5,
            max_message_bytes: transport.limits.max_message_size,
            max_connections: transport.max_connections,
            max_connections_per_ip: transport.max_connections_per_ip,
            tcp_idle_secs: transport.tcp_idle_timeout.as_secs(),
            udp_max_request_bytes: TransactionConfig::default().udp_max_request,
            recv_buffer_bytes: transport.recv_buffer_bytes,
            send_buffer_bytes: transport.send_buffer_bytes,
            session_expires_secs: 1800,
            min_se_secs: u64::from(b2bua::session_timer::MIN_SE_FLOOR),
            t1_ms: millis(timers.t1),
            t2_ms: millis(timers.t2),
            t4_ms: millis(timers.t4),
        }
    }
}

impl SipSection {
    /// `public_addr` as the engine and the transaction layer keep it: an IPv6 address bare
    /// however it was written (they bracket it where SIP wants brackets), anything else
    /// trimmed.
    pub fn public_host(&self) -> String {
        addresses::public_host(&self.public_addr)
    }

    /// Refuses, at start, a trunk reached over UDP none of whose targets the SIP socket can
    /// send to (IPv6 only from `sip.listen = "0.0.0.0:…"`, IPv4 only from `"[::1]:…"`): every
    /// leg B would fail at its first send. A name with targets of both families passes (one
    /// of the other family fails its sends, and leg B fails over to the next target).
    pub fn check_trunk(&self, targets: &[Peer]) -> Result<(), ConfigError> {
        let udp: Vec<&Peer> = targets
            .iter()
            .filter(|target| target.transport == sip_core::Transport::Udp)
            .collect();
        let listen = self.listen.ip();
        match udp.first() {
            Some(first) if !udp.iter().any(|t| addresses::reaches(listen, t.addr.ip())) => {
                addresses::check_trunk(listen, first.addr.ip())
            }
            _ => Ok(()),
        }
    }

    /// The SIP transport's settings: where it binds, its socket buffers, message size limit
    /// and TCP admission. `trunk` holds the addresses of the trunk's targets as resolved at
    /// start (every target of its RFC 3263 resolution, in order): trusted for TCP like
    /// `trusted_peers`, and given the connections reserved for the trunk.
    ///
    /// The transport's admission is fixed when it binds, so targets that a later
    /// re-resolution brings ([`crate::trunk_dns`]) are not in it: the engine trusts them for
    /// UDP at once (it checks every current target), but a TCP connection they open is closed
    /// at accept unless `sip.trusted_peers` covers them. An operator whose carrier's SRV set
    /// changes lists the carrier's ranges there.
    pub fn transport_config(&self, trunk: &[IpAddr]) -> TransportConfig {
        let mut trusted = self.trusted_peers.clone();
        let mut priority = Vec::new();
        for ip in trunk {
            let net = IpNet::from(ip.to_canonical());
            if !trusted.contains(&net) {
                trusted.push(net);
            }
            if !priority.contains(&net) {
                priority.push(net);
            }
        }
        TransportConfig {
            bind: self.listen,
            recv_buffer_bytes: self.recv_buffer_bytes,
            send_buffer_bytes: self.send_buffer_bytes,
            limits: ParseLimits {
                max_message_size: self.max_message_bytes,
                ..ParseLimits::default()
            },
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            tcp_idle_timeout: Duration::from_secs(self.tcp_idle_secs),
            trusted,
            priority,
            ..TransportConfig::default()
        }
    }

    /// The call engine's settings. `sip_port` is the port the transport really bound (the
    /// configured one may be 0); `trunk` is `self.trunk` resolved.
    /// `media`: from [`MediaSection::media_config`].
    pub fn engine_config(&self, sip_port: u16, trunk: Peer, media: MediaConfig) -> EngineConfig {
        EngineConfig {
            local: LocalIdentity {
                public_addr: self.public_host(),
                port: sip_port,
                // Known once the transport has bound its TLS listener (`runtime.rs`).
                tls_port: None,
                agent: (!self.server_header.trim().is_empty())
                    .then(|| self.server_header.trim().to_owned()),
            },
            trunk,
            trunk_host: trunk.addr.ip().to_string(),
            trunk_port: Some(trunk.addr.port()),
            trunk_ping: None,
            trunk_credentials: None,
            registration: None,
            trusted_peers: self.trusted_peers.clone(),
            untrusted_reply: self.untrusted_reply.0,
            refuse_code: self.refuse_code,
            no_answer: Duration::from_secs(self.no_answer_secs),
            max_duration: (self.max_call_secs > 0).then(|| Duration::from_secs(self.max_call_secs)),
            max_calls: self.max_calls,
            overload_backlog: self.overload_backlog,
            overload_wait: Duration::from_millis(self.overload_wait_ms),
            retry_after: Duration::from_secs(self.retry_after_secs),
            max_server_transactions: self.max_server_transactions,
            transactions: self.transaction_config(sip_port),
            media,
            session_timers: b2bua::session_timer::SessionTimerConfig {
                session_expires: u32::try_from(self.session_expires_secs)
                    .ok()
                    .filter(|&secs| secs > 0),
                min_se: u32::try_from(self.min_se_secs).unwrap_or(u32::MAX),
            },
        }
    }

    fn transaction_config(&self, sip_port: u16) -> TransactionConfig {
        let t1 = Duration::from_millis(self.t1_ms);
        TransactionConfig {
            timers: TimerConfig {
                t1,
                t2: Duration::from_millis(self.t2_ms),
                t4: Duration::from_millis(self.t4_ms),
                // 64·T1 is RFC 3261's 32 s at the default T1; shorter T1 (tests) shortens it.
                timer_d: t1 * 64,
                ..TimerConfig::default()
            },
            via_host: self.public_host(),
            via_port: Some(sip_port),
            udp_max_request: self.udp_max_request_bytes,
            ..TransactionConfig::default()
        }
    }
}

/// `sip.untrusted_reply`: `"403"` (also the number 403, as an environment variable gives it)
/// or `"drop"`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UntrustedReplyKey(pub UntrustedReply);

impl Serialize for UntrustedReplyKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(match self.0 {
            UntrustedReply::Forbidden => "403",
            UntrustedReply::Drop => "drop",
        })
    }
}

impl<'de> Deserialize<'de> for UntrustedReplyKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(i64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(403) => Ok(UntrustedReplyKey(UntrustedReply::Forbidden)),
            Raw::Text(text) if text == "403" => Ok(UntrustedReplyKey(UntrustedReply::Forbidden)),
            Raw::Text(text) if text == "drop" => Ok(UntrustedReplyKey(UntrustedReply::Drop)),
            _ => Err(serde::de::Error::custom(
                "sip.untrusted_reply must be \"403\" or \"drop\"",
            )),
        }
    }
}

/// Longest duration any `*_secs` key may say: ten years. Beyond it a deadline computed
/// from the monotonic clock could overflow (which would panic), and no operator means it.
const MAX_SECS: u64 = 10 * 365 * 24 * 3600;

/// `duration` in whole milliseconds, for the `*_ms` keys.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn loopback_net() -> IpNet {
    IpNet::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8).unwrap_or_default()
}

/// `[media]`: RTP anchoring.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MediaSection {
    /// Address written into SDP `c=` and `o=` lines (`IN IP4`, or `IN IP6` for an IPv6
    /// address).
    pub public_ip: IpAddr,
    /// With a dual-stack relay (`bind_ip = "::"`) and an IPv4 `public_ip`: the IPv6 address
    /// written instead into the SDP sent to a leg whose signalling peer is IPv6, so that a call
    /// between an IPv4 and an IPv6 party gives each an address it can reach. Empty: none
    /// (every leg is given `public_ip`).
    pub public_ip6: String,
    /// Inclusive port range, `"20000-29999"`: even ports RTP, odd ports RTCP. Each stream's
    /// ports are drawn from it at random.
    pub rtp_ports: String,
    pub inactivity_secs: u64,
    /// Local address the relay sockets bind (default: all IPv4 addresses). `"::"` binds
    /// dual-stack (IPv4 and IPv6 peers alike); one IPv6 address (`"::1"`) serves IPv6 only. It
    /// must be able to reach peers in `public_ip`'s family (checked at start).
    pub bind_ip: IpAddr,
    /// Which sources teach a leg its media peer (SPEC.md "Trust boundary"). Both modes take
    /// the SDP address at once and for good, and a source on the SDP's IP or the leg's
    /// signalling IP at once (never moving to another IP); sources of no such standing are
    /// dropped until the leg has learned. `heuristic` then, after `learning_secs` with
    /// nothing better, takes the first source seen, provisionally: a later exact or same-IP
    /// packet replaces it. `strict` never does.
    pub learning: MediaLearning,
    /// The heuristic's wait, from a leg's first packet, for a source of standing (at most
    /// 3600).
    pub learning_secs: u64,
}

/// `media.learning`: the media driver's [`media::LearningMode`], as the configuration spells
/// it (anything else is refused at start-up).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MediaLearning {
    Heuristic,
    Strict,
}

impl From<media::LearningMode> for MediaLearning {
    fn from(mode: media::LearningMode) -> Self {
        match mode {
            media::LearningMode::Heuristic => MediaLearning::Heuristic,
            media::LearningMode::Strict => MediaLearning::Strict,
        }
    }
}

impl From<MediaLearning> for media::LearningMode {
    fn from(mode: MediaLearning) -> Self {
        match mode {
            MediaLearning::Heuristic => media::LearningMode::Heuristic,
            MediaLearning::Strict => media::LearningMode::Strict,
        }
    }
}

impl Default for MediaSection {
    fn default() -> Self {
        let learning = media::DriverConfig::default().learning;
        MediaSection {
            public_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            public_ip6: String::new(),
            rtp_ports: "20000-29999".into(),
            inactivity_secs: 60,
            bind_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            learning: learning.mode.into(),
            learning_secs: learning.window.as_secs(),
        }
    }
}

impl MediaSection {
    /// The RTP port range as `(first, last)`, both inclusive.
    pub fn port_range(&self) -> Result<(u16, u16), ConfigError> {
        let bad = || {
            ConfigError::Invalid(format!(
                "media.rtp_ports {:?} is not \"FIRST-LAST\" with FIRST <= LAST",
                self.rtp_ports
            ))
        };
        let (first, last) = self.rtp_ports.split_once('-').ok_or_else(bad)?;
        let first: u16 = first.trim().parse().map_err(|_| bad())?;
        let last: u16 = last.trim().parse().map_err(|_| bad())?;
        if first == 0 || first > last || last - first < 1 {
            return Err(bad());
        }
        Ok((first, last))
    }

    /// The engine's media settings: the relay range, the SDP addresses, the inactivity
    /// timeout.
    pub fn media_config(&self) -> Result<MediaConfig, ConfigError> {
        let (first_port, last_port) = self.port_range()?;
        Ok(MediaConfig {
            public_ip: self.public_ip,
            public_ip6: self.public_ip6()?,
            first_port,
            last_port,
            inactivity: Duration::from_secs(self.inactivity_secs),
        })
    }

    /// `public_ip6`, when set: an IPv6 address (not IPv4-mapped), beside an IPv4 `public_ip`.
    pub fn public_ip6(&self) -> Result<Option<IpAddr>, ConfigError> {
        let text = self.public_ip6.trim();
        if text.is_empty() {
            return Ok(None);
        }
        let invalid = |why: &str| {
            ConfigError::Invalid(format!("media.public_ip6 {:?} {why}", self.public_ip6))
        };
        let ip: std::net::Ipv6Addr = text
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| invalid("is not an IPv6 address"))?;
        if ip.to_ipv4_mapped().is_some() {
            return Err(invalid(
                "is IPv4-mapped: write the IPv4 address as media.public_ip",
            ));
        }
        if self.public_ip.to_canonical().is_ipv6() {
            return Err(invalid(
                "is set beside an IPv6 media.public_ip: make media.public_ip the IPv4 address",
            ));
        }
        Ok(Some(IpAddr::V6(ip)))
    }

    /// The learning settings, refused when `learning_secs` is beyond
    /// [`media::LearningConfig::MAX_WINDOW`].
    pub fn learning_config(&self) -> Result<media::LearningConfig, ConfigError> {
        let window = Duration::from_secs(self.learning_secs);
        if window > media::LearningConfig::MAX_WINDOW {
            return Err(ConfigError::Invalid(format!(
                "media.learning_secs {} is more than {} (an hour)",
                self.learning_secs,
                media::LearningConfig::MAX_WINDOW.as_secs()
            )));
        }
        Ok(media::LearningConfig {
            mode: self.learning.into(),
            window,
        })
    }

    /// The media driver's settings (where relay sockets bind, how streams learn their peers;
    /// buffers as the driver's default). A `learning_secs` that [`Config::validate`] would
    /// refuse is capped.
    pub fn driver_config(&self) -> media::DriverConfig {
        let learning = self
            .learning_config()
            .unwrap_or_else(|_| media::LearningConfig {
                mode: self.learning.into(),
                window: media::LearningConfig::MAX_WINDOW,
            });
        media::DriverConfig {
            bind_ip: self.bind_ip,
            learning,
            ..media::DriverConfig::default()
        }
    }
}

/// `[api]`: the HTTP API.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSection {
    pub listen: SocketAddr,
    /// Non-empty: every /api request needs `Authorization: Bearer <token>`.
    pub tokens: Vec<String>,
    /// Allows a non-loopback listen address with no tokens (refused otherwise).
    pub allow_unauthenticated: bool,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080),
            tokens: Vec::new(),
            allow_unauthenticated: false,
            max_body_bytes: ApiSettings::default().max_body_bytes,
        }
    }
}

impl ApiSection {
    /// How the API treats requests. `listen` is not in it: `runtime.rs` binds the listener.
    pub fn api_settings(&self) -> ApiSettings {
        ApiSettings {
            tokens: self.tokens.clone(),
            max_body_bytes: self.max_body_bytes,
            ..ApiSettings::default()
        }
    }
}

/// `[intent]`: call intents registered by makecall.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IntentSection {
    pub ttl_secs: u64,
    /// Most intents pending at once; makecall for a new number beyond it gets 503.
    pub max_pending: usize,
    /// makecall and INVITEs only for dedicated numbers assigned to the telnum
    /// (`PUT /api/numbers/{number}`).
    pub require_ownership: bool,
}

impl Default for IntentSection {
    fn default() -> Self {
        IntentSection {
            ttl_secs: 120,
            max_pending: b2bua::intent::DEFAULT_MAX_PENDING,
            require_ownership: false,
        }
    }
}

/// `[store]`: call records, number assignments, idempotency keys (crates/store).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSection {
    /// The SQLite file (created, with its directory's WAL files, if missing); `""` keeps
    /// everything in memory, lost on exit.
    pub path: String,
    /// `postgres://…`: one database shared by several nodes (store::PostgresStore; no TLS to
    /// the database yet). When set, `path` is not used.
    pub url: String,
    /// How long records of ended calls are kept, in days (swept hourly).
    pub retention_days: u32,
    /// `false`: records of ended calls are not written (only kept in memory for
    /// `sip.call_retention_secs`); numbers and idempotency keys still are.
    pub records: bool,
    /// Writes queued for the store at most; beyond it records are dropped and counted
    /// (`callbridge_store_writes_total{result="dropped_full"}`).
    pub queue: usize,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            path: store::DEFAULT_PATH.to_owned(),
            url: String::new(),
            retention_days: store::DEFAULT_RETENTION_DAYS,
            records: true,
            queue: store::DEFAULT_QUEUE_CAPACITY,
        }
    }
}

/// `[webhooks]`: call events POSTed to the app's backend (crates/webhooks).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksSection {
    /// The default target of every call's events; `""`: only intents with a `notify_url`
    /// have one.
    pub url: String,
    /// The HMAC-SHA256 key of `Callbridge-Signature`; required when webhooks are on.
    pub secret: String,
    /// One attempt's limit, connection included: a 2xx later than this is a failure.
    pub timeout_ms: u64,
    /// Attempts per event before it is kept as failed.
    pub max_attempts: u32,
    /// Hosts a makecall's `notify_url` may name (`host`, `host:port`, `*.domain`); empty:
    /// only the host of `url`.
    pub allowed_hosts: Vec<String>,
    /// Events waiting for delivery at most; beyond it the oldest are dropped (and counted).
    pub max_pending: usize,
    /// Requests on the wire at once at most (one per call: a call's events go in order).
    pub max_in_flight: usize,
    /// Requests on the wire to one target (scheme, host, port) at most: a hung app endpoint
    /// cannot take every slot from the others.
    pub max_in_flight_per_target: usize,
    /// The wait after a first failed attempt, doubled after each further one.
    pub backoff_base_ms: u64,
    /// The longest wait between two attempts.
    pub backoff_max_ms: u64,
    /// PEM roots that https targets may chain to, besides the public ones.
    pub ca_file: String,
    /// Events built and not yet taken by the dispatcher at most (it takes them every 20 ms).
    pub queue: usize,
}

impl Default for WebhooksSection {
    fn default() -> Self {
        let lib = webhooks::WebhookConfig::default();
        WebhooksSection {
            url: lib.url,
            secret: lib.secret,
            timeout_ms: millis(lib.timeout),
            max_attempts: lib.schedule.max_attempts,
            allowed_hosts: lib.allowed_hosts,
            max_pending: lib.schedule.max_pending,
            max_in_flight: lib.schedule.max_in_flight,
            max_in_flight_per_target: lib.schedule.max_in_flight_per_target,
            backoff_base_ms: millis(lib.schedule.backoff.base),
            backoff_max_ms: millis(lib.schedule.backoff.cap),
            ca_file: lib.ca_file,
            queue: lib.queue,
        }
    }
}

impl WebhooksSection {
    /// Are events built and delivered? Yes when there is a default target, or hosts that a
    /// `notify_url` may name.
    pub fn enabled(&self) -> bool {
        !self.url.is_empty() || !self.allowed_hosts.is_empty()
    }

    /// The dispatcher's configuration.
    pub fn webhook_config(&self) -> webhooks::WebhookConfig {
        webhooks::WebhookConfig {
            url: self.url.clone(),
            secret: self.secret.clone(),
            timeout: Duration::from_millis(self.timeout_ms),
            ca_file: self.ca_file.clone(),
            allowed_hosts: self.allowed_hosts.clone(),
            schedule: webhooks::ScheduleConfig {
                max_attempts: self.max_attempts,
                max_pending: self.max_pending,
                max_in_flight: self.max_in_flight,
                max_in_flight_per_target: self.max_in_flight_per_target,
                backoff: webhooks::Backoff {
                    base: Duration::from_millis(self.backoff_base_ms),
                    cap: Duration::from_millis(self.backoff_max_ms),
                },
            },
            queue: self.queue,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        if !self.url.is_empty() {
            if let Err(error) = webhooks::parse_target(&self.url) {
                return invalid(format!("webhooks.url {:?}: {error}", self.url));
            }
        }
        if self.enabled() && self.secret.is_empty() {
            return invalid(
                "webhooks.secret must be set when webhooks are on (webhooks.url or \
                 webhooks.allowed_hosts): receivers verify every event with it"
                    .into(),
            );
        }
        let ranges: [(&str, u64, u64, u64); 7] = [
            ("webhooks.timeout_ms", self.timeout_ms, 1, 600_000),
            (
                "webhooks.max_attempts",
                u64::from(self.max_attempts),
                1,
                1000,
            ),
            (
                "webhooks.max_pending",
                self.max_pending as u64,
                1,
                100_000_000,
            ),
            (
                "webhooks.max_in_flight",
                self.max_in_flight as u64,
                1,
                100_000,
            ),
            (
                "webhooks.max_in_flight_per_target",
                self.max_in_flight_per_target as u64,
                1,
                100_000,
            ),
            (
                "webhooks.backoff_base_ms",
                self.backoff_base_ms,
                1,
                3_600_000,
            ),
            ("webhooks.queue", self.queue as u64, 1, 100_000_000),
        ];
        for (key, value, low, high) in ranges {
            if !(low..=high).contains(&value) {
                return invalid(format!("{key} = {value} must be {low}-{high}"));
            }
        }
        if self.backoff_max_ms < self.backoff_base_ms || self.backoff_max_ms > 86_400_000 {
            return invalid(
                "webhooks.backoff_max_ms must be between webhooks.backoff_base_ms and 86400000"
                    .into(),
            );
        }
        if self.allowed_hosts.iter().any(|h| h.trim().is_empty()) {
            return invalid("webhooks.allowed_hosts contains an empty host".into());
        }
        Ok(())
    }
}

impl IntentSection {
    /// The intent table and call registry the API and the SIP side share: intents as this
    /// section says, ended calls kept as `[sip]` says (`call_retention_secs`, `max_ended_calls`).
    /// `clock`: the wall-clock time now, for records and call ids.
    pub fn call_control(&self, sip: &SipSection, clock: WallClock) -> CallControl {
        let control = CallControl::with_max_intents(
            Duration::from_secs(self.ttl_secs),
            self.max_pending,
            Duration::from_secs(sip.call_retention_secs),
            sip.max_ended_calls,
            clock,
        );
        control.set_require_ownership(self.require_ownership);
        control
    }
}

/// `[log]`: logging.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// A tracing filter, e.g. `"info"` or `"callbridge=debug,sip_core=info"`.
    pub filter: String,
    /// `"text"` or `"json"`.
    pub format: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            filter: "info".into(),
            format: "text".into(),
        }
    }
}

const ENV_PREFIX: &str = "CALLBRIDGE_";

/// Beyond this, `sip.max_connections` is a typo rather than a plan: each connection is a file
/// descriptor and a task.
const MAX_CONNECTIONS: usize = 1 << 20;
/// A day: an idle timeout longer than that keeps dead connections for good.
const MAX_TCP_IDLE_SECS: u64 = 86_400;
/// Below this, `sip.udp_max_request_bytes` would send nearly every request over TCP (RFC 791
/// has every IPv4 path carry 576-byte datagrams).
const MIN_UDP_REQUEST: usize = 500;

impl Config {
    /// Builds the configuration from the optional file, the given environment variables and
    /// the `section.key=value` overrides, in that order of increasing precedence.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[String],
    ) -> Result<Config, ConfigError> {
        let mut table = toml::Table::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?;
            table = text
                .parse::<toml::Table>()
                .map_err(|e| ConfigError::Syntax {
                    origin: path.display().to_string(),
                    message: e.to_string(),
                })?;
        }
        let mut env: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        env.sort();
        for (name, value) in env {
            let rest = &name[ENV_PREFIX.len()..];
            let (section, key) = rest.split_once('_').ok_or_else(|| {
                ConfigError::Invalid(format!("{name}: expected CALLBRIDGE_<SECTION>_<KEY>"))
            })?;
            set_key(
                &mut table,
                &section.to_ascii_lowercase(),
                &key.to_ascii_lowercase(),
                &value,
                &name,
            )?;
        }
        for item in overrides {
            let (path, value) = item.split_once('=').ok_or_else(|| {
                ConfigError::Invalid(format!("--set {item:?}: expected section.key=value"))
            })?;
            let (section, key) = path.trim().split_once('.').ok_or_else(|| {
                ConfigError::Invalid(format!("--set {item:?}: expected section.key=value"))
            })?;
            set_key(&mut table, section, key, value, &format!("--set {path}"))?;
        }
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    origin: "configuration".into(),
                    message: e.to_string(),
                })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: ranges, and that the API is not left open to the network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(300..=699).contains(&self.sip.refuse_code) {
            return Err(ConfigError::Invalid(format!(
                "sip.refuse_code {} is not a final failure code (300-699)",
                self.sip.refuse_code
            )));
        }
        if self.sip.max_message_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "sip.max_message_bytes must be at least 1024".into(),
            ));
        }
        let sip = &self.sip;
        if !(1..=MAX_CONNECTIONS).contains(&sip.max_connections) {
            return Err(ConfigError::Invalid(format!(
                "sip.max_connections {} must be between 1 and {MAX_CONNECTIONS}",
                sip.max_connections
            )));
        }
        if !(1..=sip.max_connections).contains(&sip.max_connections_per_ip) {
            return Err(ConfigError::Invalid(format!(
                "sip.max_connections_per_ip {} must be between 1 and sip.max_connections ({})",
                sip.max_connections_per_ip, sip.max_connections
            )));
        }
        if !(1..=MAX_TCP_IDLE_SECS).contains(&sip.tcp_idle_secs) {
            return Err(ConfigError::Invalid(format!(
                "sip.tcp_idle_secs {} must be between 1 and {MAX_TCP_IDLE_SECS}",
                sip.tcp_idle_secs
            )));
        }
        if !(MIN_UDP_REQUEST..=MAX_UDP_PAYLOAD).contains(&sip.udp_max_request_bytes) {
            return Err(ConfigError::Invalid(format!(
                "sip.udp_max_request_bytes {} must be between {MIN_UDP_REQUEST} and \
                 {MAX_UDP_PAYLOAD}",
                sip.udp_max_request_bytes
            )));
        }
        if self.sip.t1_ms == 0 || self.sip.t2_ms < self.sip.t1_ms {
            return Err(ConfigError::Invalid(
                "sip.t1_ms must be > 0 and sip.t2_ms >= sip.t1_ms".into(),
            ));
        }
        let durations = [
            ("sip.no_answer_secs", self.sip.no_answer_secs),
            ("sip.max_call_secs", self.sip.max_call_secs),
            ("sip.call_retention_secs", self.sip.call_retention_secs),
            ("sip.shutdown_grace_secs", self.sip.shutdown_grace_secs),
            ("sip.retry_after_secs", self.sip.retry_after_secs),
            ("sip.t1_ms", self.sip.t1_ms / 1000),
            ("sip.t2_ms", self.sip.t2_ms / 1000),
            ("sip.t4_ms", self.sip.t4_ms / 1000),
            ("media.inactivity_secs", self.media.inactivity_secs),
            ("intent.ttl_secs", self.intent.ttl_secs),
        ];
        if let Some((key, value)) = durations.iter().find(|(_, v)| *v > MAX_SECS) {
            return Err(ConfigError::Invalid(format!(
                "{key} = {value} is beyond the longest duration accepted ({MAX_SECS} s)"
            )));
        }
        // 64·T1 (Timers B, F, H) must stay representable, and far from overflowing.
        if self.sip.t1_ms > 60_000 {
            return Err(ConfigError::Invalid(
                "sip.t1_ms must be at most 60000".into(),
            ));
        }
        let queue = sip_core::transport::NEW_REQUEST_QUEUE;
        if self.sip.overload_backlog == 0 || self.sip.overload_backlog >= queue {
            // At or past the transport's queue the engine would never see the backlog: new
            // requests would only ever be dropped unread, never answered 503.
            return Err(ConfigError::Invalid(format!(
                "sip.overload_backlog must be 1-{} (the transport queues {queue} new requests)",
                queue - 1
            )));
        }
        if self.sip.overload_wait_ms == 0 || self.sip.overload_wait_ms > 60_000 {
            return Err(ConfigError::Invalid(
                "sip.overload_wait_ms must be 1-60000".into(),
            ));
        }
        if self.sip.retry_after_secs == 0 || self.sip.retry_after_secs > 3600 {
            return Err(ConfigError::Invalid(
                "sip.retry_after_secs must be 1-3600".into(),
            ));
        }
        if self.sip.server_header.chars().any(|c| c.is_control()) {
            return Err(ConfigError::Invalid(
                "sip.server_header must not contain control characters".into(),
            ));
        }
        let floor = u64::from(b2bua::session_timer::MIN_SE_FLOOR);
        if !(floor..=86_400).contains(&self.sip.min_se_secs) {
            return Err(ConfigError::Invalid(format!(
                "sip.min_se_secs must be {floor}-86400 (RFC 4028's floor is {floor})"
            )));
        }
        if self.sip.session_expires_secs != 0
            && !(self.sip.min_se_secs..=86_400).contains(&self.sip.session_expires_secs)
        {
            return Err(ConfigError::Invalid(
                "sip.session_expires_secs must be 0 (off) or sip.min_se_secs-86400".into(),
            ));
        }
        if self.intent.ttl_secs == 0 {
            return Err(ConfigError::Invalid("intent.ttl_secs must be > 0".into()));
        }
        if !(1..=36_500).contains(&self.store.retention_days) {
            return Err(ConfigError::Invalid(
                "store.retention_days must be 1-36500".into(),
            ));
        }
        if !(1..=1_000_000).contains(&self.store.queue) {
            return Err(ConfigError::Invalid("store.queue must be 1-1000000".into()));
        }
        self.validate_addresses()?;
        self.media.port_range()?;
        self.media.learning_config()?;
        self.webhooks.validate()?;
        self.trunk.validate()?;
        self.dns.validate()?;
        self.cluster.validate()?;
        self.tls
            .validate(self.trunk.transport() == sip_core::Transport::Tls)?;
        if !self.api.listen.ip().is_loopback()
            && self.api.tokens.is_empty()
            && !self.api.allow_unauthenticated
        {
            return Err(ConfigError::Invalid(format!(
                "api.listen {} is reachable from the network but api.tokens is empty; \
                 set tokens, or api.allow_unauthenticated = true to accept that",
                self.api.listen
            )));
        }
        if self.api.tokens.iter().any(|t| t.trim().is_empty()) {
            return Err(ConfigError::Invalid(
                "api.tokens contains an empty token".into(),
            ));
        }
        Ok(())
    }
}

impl Config {
    /// `sip.public_addr` is a host, and every address callbridge advertises can be reached on
    /// the socket it binds: the SIP listeners' for `sip.public_addr` (when it is an address),
    /// the relay sockets' for `media.public_ip` (see `config/addresses.rs`).
    fn validate_addresses(&self) -> Result<(), ConfigError> {
        addresses::check_public_addr(&self.sip.public_addr)?;
        if let Some(public) = addresses::public_ip(&self.sip.public_addr) {
            addresses::check_family(
                "sip.listen",
                self.sip.listen.ip(),
                "sip.public_addr",
                public,
            )?;
            if let Ok(Some(tls)) = self.tls.listen_addr() {
                addresses::check_family("tls.listen", tls.ip(), "sip.public_addr", public)?;
            }
        }
        addresses::check_family(
            "media.bind_ip",
            self.media.bind_ip,
            "media.public_ip",
            self.media.public_ip,
        )?;
        if let Some(public_ip6) = self.media.public_ip6()? {
            addresses::check_family(
                "media.bind_ip",
                self.media.bind_ip,
                "media.public_ip6",
                public_ip6,
            )?;
        }
        Ok(())
    }
}

/// Sets `[section] key = value`, reading `value` as a TOML value (number, bool, array) when it
/// is one and as a string otherwise, so `CALLBRIDGE_SIP_REFUSE_CODE=486` is a number and
/// `CALLBRIDGE_SIP_LISTEN=0.0.0.0:5060` a string.
fn set_key(
    table: &mut toml::Table,
    section: &str,
    key: &str,
    value: &str,
    origin: &str,
) -> Result<(), ConfigError> {
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    let entry = table
        .entry(section.to_owned())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    match entry {
        toml::Value::Table(section_table) => {
            section_table.insert(key.to_owned(), parsed);
            Ok(())
        }
        _ => Err(ConfigError::Invalid(format!(
            "{origin}: [{section}] is not a table"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::load(None, env(&[]), &[]).unwrap();
        assert_eq!(c.sip.listen, "0.0.0.0:5060".parse().unwrap());
        assert_eq!(c.sip.public_addr, "127.0.0.1");
        assert_eq!(c.sip.trunk, "127.0.0.1:5080");
        assert_eq!(c.sip.trusted_peers, vec!["127.0.0.0/8".parse().unwrap()]);
        assert_eq!(c.sip.refuse_code, 403);
        assert_eq!(c.sip.no_answer_secs, 60);
        assert_eq!(c.media.public_ip, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(c.media.port_range().unwrap(), (20000, 29999));
        assert_eq!(c.media.inactivity_secs, 60);
        assert_eq!(c.media.learning, MediaLearning::Heuristic);
        assert_eq!(c.media.learning_secs, 3);
        assert_eq!(c.api.listen, "127.0.0.1:8080".parse().unwrap());
        assert!(c.api.tokens.is_empty());
        assert_eq!(c.intent.ttl_secs, 120);
        assert!(!c.intent.require_ownership);
        assert_eq!(c.store.path, "callbridge.db");
        assert_eq!(c.store.url, "");
        assert_eq!(c.store.retention_days, 90);
    }

    #[test]
    fn defaults_are_the_libraries_defaults() {
        let c = Config::default();
        let trunk_ip: IpAddr = "127.0.0.1".parse().unwrap();
        let transport = c.sip.transport_config(&[trunk_ip]);
        assert_eq!(
            transport,
            TransportConfig {
                bind: c.sip.listen,
                // 127.0.0.0/8 (trusted_peers) and the trunk.
                trusted: vec![loopback_net(), "127.0.0.1/32".parse().unwrap()],
                priority: vec!["127.0.0.1/32".parse().unwrap()],
                ..TransportConfig::default()
            }
        );
        // SPEC's defaults.
        assert_eq!(
            (
                c.sip.max_connections,
                c.sip.max_connections_per_ip,
                c.sip.tcp_idle_secs
            ),
            (1024, 64, 600)
        );
        let trunk = Peer::udp("127.0.0.1:5080".parse().unwrap());
        let engine =
            c.sip
                .engine_config(5060, trunk, Config::default().media.media_config().unwrap());
        assert_eq!(engine.transactions.timers, TimerConfig::default());
        assert_eq!(
            engine.transactions.send_100_trying,
            TransactionConfig::default().send_100_trying
        );
        assert_eq!(
            engine.transactions.udp_max_request,
            TransactionConfig::default().udp_max_request
        );
        assert_eq!(c.api.api_settings(), ApiSettings::default());
        assert_eq!(c.intent.max_pending, b2bua::intent::DEFAULT_MAX_PENDING);
        assert_eq!(
            c.media.driver_config(),
            media::DriverConfig {
                bind_ip: c.media.bind_ip,
                ..media::DriverConfig::default()
            }
        );
    }

    #[test]
    fn media_learning_from_file_env_and_overrides() {
        let c = Config::load(None, env(&[("CALLBRIDGE_MEDIA_LEARNING", "strict")]), &[]).unwrap();
        assert_eq!(c.media.learning, MediaLearning::Strict);
        let c = Config::load(
            None,
            env(&[("CALLBRIDGE_MEDIA_LEARNING_SECS", "10")]),
            &["media.learning=heuristic".into()],
        )
        .unwrap();
        let learning = c.media.driver_config().learning;
        assert_eq!(learning.mode, media::LearningMode::Heuristic);
        assert_eq!(learning.window, Duration::from_secs(10));
        let c = Config::load(None, env(&[]), &["media.learning_secs=0".into()]).unwrap();
        assert_eq!(c.media.driver_config().learning.window, Duration::ZERO);
        // --print-config writes the keys, and reading them back gives the same configuration.
        let printed = toml::to_string(&c).unwrap();
        assert!(printed.contains("learning = \"heuristic\""), "{printed}");
        assert!(printed.contains("learning_secs = 0"), "{printed}");
        let reread: Config = toml::from_str(&printed).unwrap();
        assert_eq!(reread, c);
    }

    #[test]
    fn media_learning_values_outside_the_contract_are_refused() {
        let error = Config::load(None, env(&[("CALLBRIDGE_MEDIA_LEARNING", "loose")]), &[])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("loose") && error.contains("strict"),
            "{error}"
        );
        let error = Config::load(None, env(&[]), &["media.learning_secs=3601".into()])
            .unwrap_err()
            .to_string();
        assert!(error.contains("media.learning_secs 3601"), "{error}");
        assert!(Config::load(None, env(&[]), &["media.learning_secs=3600".into()]).is_ok());
        assert!(Config::load(None, env(&[]), &["media.learning_secs=-1".into()]).is_err());
        assert!(Config::load(None, env(&[]), &["media.learning=1".into()]).is_err());
        // An absurd value that skipped validation is capped, not overflowed.
        let section = MediaSection {
            learning_secs: u64::MAX,
            ..MediaSection::default()
        };
        assert_eq!(
            section.driver_config().learning.window,
            media::LearningConfig::MAX_WINDOW
        );
    }

    #[test]
    fn conversions_carry_the_configured_values() {
        let c = Config::load(
            None,
            env(&[]),
            &[
                "sip.listen=127.0.0.1:5070".into(),
                "sip.public_addr=sbc.example".into(),
                "sip.trusted_peers=[\"10.0.0.0/8\"]".into(),
                "sip.refuse_code=486".into(),
                "sip.no_answer_secs=7".into(),
                "sip.max_call_secs=9".into(),
                "sip.max_calls=11".into(),
                "sip.max_message_bytes=2048".into(),
                "sip.recv_buffer_bytes=1000".into(),
                "sip.send_buffer_bytes=2000".into(),
                "sip.max_connections=300".into(),
                "sip.max_connections_per_ip=7".into(),
                "sip.tcp_idle_secs=30".into(),
                "sip.udp_max_request_bytes=1400".into(),
                "sip.t1_ms=50".into(),
                "sip.t2_ms=400".into(),
                "sip.t4_ms=500".into(),
                "api.tokens=[\"t\"]".into(),
                "api.max_body_bytes=99".into(),
                "intent.ttl_secs=5".into(),
                "intent.max_pending=1".into(),
            ],
        )
        .unwrap();
        let transport = c.sip.transport_config(&["192.0.2.1".parse().unwrap()]);
        assert_eq!(transport.bind, "127.0.0.1:5070".parse().unwrap());
        assert_eq!(transport.limits.max_message_size, 2048);
        assert_eq!(
            (transport.recv_buffer_bytes, transport.send_buffer_bytes),
            (1000, 2000)
        );
        assert_eq!(
            (transport.max_connections, transport.max_connections_per_ip),
            (300, 7)
        );
        assert_eq!(transport.tcp_idle_timeout, Duration::from_secs(30));
        // TCP is accepted from the trusted peers and the trunk; the trunk has the reserve.
        assert_eq!(
            transport.trusted,
            vec![
                "10.0.0.0/8".parse().unwrap(),
                "192.0.2.1/32".parse().unwrap()
            ]
        );
        assert_eq!(transport.priority, vec!["192.0.2.1/32".parse().unwrap()]);

        let trunk = Peer::udp("192.0.2.1:5060".parse().unwrap());
        let engine =
            c.sip
                .engine_config(5099, trunk, Config::default().media.media_config().unwrap());
        assert_eq!(engine.local.public_addr, "sbc.example");
        assert_eq!(engine.local.port, 5099);
        assert_eq!(engine.trunk, trunk);
        assert_eq!(engine.trusted_peers, vec!["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(engine.refuse_code, 486);
        assert_eq!(engine.no_answer, Duration::from_secs(7));
        assert_eq!(engine.max_duration, Some(Duration::from_secs(9)));
        assert_eq!(engine.max_calls, 11);
        let timers = &engine.transactions.timers;
        assert_eq!(timers.t1, Duration::from_millis(50));
        assert_eq!(timers.t2, Duration::from_millis(400));
        assert_eq!(timers.t4, Duration::from_millis(500));
        assert_eq!(timers.timer_d, Duration::from_millis(50 * 64));
        assert_eq!(engine.transactions.via_host, "sbc.example");
        assert_eq!(engine.transactions.via_port, Some(5099));
        assert_eq!(engine.transactions.udp_max_request, 1400);
        let defaults = Config::default().sip.engine_config(
            1,
            trunk,
            Config::default().media.media_config().unwrap(),
        );
        // SPEC: 4 h by default; 0 means unlimited.
        assert_eq!(defaults.max_duration, Some(Duration::from_secs(14_400)));
        assert_eq!(
            defaults.local.agent, None,
            "no Server/User-Agent by default"
        );
        assert_eq!(defaults.untrusted_reply, UntrustedReply::Forbidden);
        let unlimited = SipSection {
            max_call_secs: 0,
            server_header: " Acme SBC ".into(),
            ..SipSection::default()
        }
        .engine_config(1, trunk, Config::default().media.media_config().unwrap());
        assert_eq!(unlimited.max_duration, None);
        assert_eq!(unlimited.local.agent.as_deref(), Some("Acme SBC"));

        let api = c.api.api_settings();
        assert_eq!(api.tokens, vec!["t".to_string()]);
        assert_eq!(api.max_body_bytes, 99);

        let control = c.intent.call_control(
            &c.sip,
            WallClock::new(std::time::Instant::now(), std::time::SystemTime::now()),
        );
        assert_eq!(control.intents().ttl(), Duration::from_secs(5));
        let now = std::time::Instant::now();
        assert!(control.make_call(now, "1001", "2001", "3001").is_ok());
        assert!(control.make_call(now, "1002", "2002", "3002").is_err());
    }

    #[test]
    fn every_trunk_target_is_trusted_for_tcp_and_holds_the_reserve() {
        let c = Config::load(
            None,
            env(&[("CALLBRIDGE_DNS_SERVERS", "[\"127.0.0.1:5353\"]")]),
            &["sip.trusted_peers=[\"10.0.0.0/8\"]".into()],
        )
        .unwrap();
        assert_eq!(
            c.dns.server_addrs(),
            vec!["127.0.0.1:5353".parse::<SocketAddr>().unwrap()]
        );
        let targets: Vec<IpAddr> = ["192.0.2.1", "10.1.1.1", "192.0.2.2", "192.0.2.1"]
            .iter()
            .map(|ip| ip.parse().unwrap())
            .collect();
        let transport = c.sip.transport_config(&targets);
        // Each once; one that trusted_peers covers already is not repeated there.
        assert_eq!(
            transport.trusted,
            ["10.0.0.0/8", "192.0.2.1/32", "10.1.1.1/32", "192.0.2.2/32"]
                .map(|n| n.parse::<IpNet>().unwrap())
        );
        assert_eq!(
            transport.priority,
            ["192.0.2.1/32", "10.1.1.1/32", "192.0.2.2/32"].map(|n| n.parse::<IpNet>().unwrap())
        );
        let error = Config::load(
            None,
            env(&[("CALLBRIDGE_DNS_SERVERS", "[\"ns1:53\"]")]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("dns.servers"), "{error}");
        // --print-config shows the section.
        assert!(toml::to_string(&c).unwrap().contains("[dns]"));
    }

    #[test]
    fn untrusted_reply_and_deadline_overflows_are_checked_at_start_up() {
        let load = |pairs: &[(&str, &str)]| Config::load(None, env(pairs), &[]);
        let reply = |pairs: &[(&str, &str)]| load(pairs).map(|c| c.sip.untrusted_reply.0);
        assert_eq!(
            reply(&[("CALLBRIDGE_SIP_UNTRUSTED_REPLY", "403")]).unwrap(),
            UntrustedReply::Forbidden
        );
        assert_eq!(
            reply(&[("CALLBRIDGE_SIP_UNTRUSTED_REPLY", "drop")]).unwrap(),
            UntrustedReply::Drop
        );
        assert!(reply(&[("CALLBRIDGE_SIP_UNTRUSTED_REPLY", "404")]).is_err());
        assert!(reply(&[("CALLBRIDGE_SIP_UNTRUSTED_REPLY", "ignore")]).is_err());
        // Printed as it is written in SPEC, and read back the same.
        let printed = toml::to_string(&Config::default()).unwrap();
        assert!(printed.contains("untrusted_reply = \"403\""), "{printed}");
        for key in [
            "CALLBRIDGE_SIP_NO_ANSWER_SECS",
            "CALLBRIDGE_SIP_MAX_CALL_SECS",
            "CALLBRIDGE_SIP_SHUTDOWN_GRACE_SECS",
            "CALLBRIDGE_MEDIA_INACTIVITY_SECS",
            "CALLBRIDGE_INTENT_TTL_SECS",
        ] {
            let error = load(&[(key, "9223372036854775807")]).unwrap_err();
            assert!(
                error.to_string().contains("longest duration"),
                "{key}: {error}"
            );
        }
        assert!(load(&[("CALLBRIDGE_SIP_T1_MS", "4000000000")]).is_err());
        assert!(load(&[("CALLBRIDGE_SIP_RETRY_AFTER_SECS", "0")]).is_err());
        assert!(load(&[("CALLBRIDGE_SIP_OVERLOAD_BACKLOG", "2048")]).is_err());
        assert!(load(&[("CALLBRIDGE_SIP_OVERLOAD_BACKLOG", "2047")]).is_ok());
        assert!(load(&[("CALLBRIDGE_SIP_OVERLOAD_WAIT_MS", "0")]).is_err());
        assert!(load(&[("CALLBRIDGE_SIP_OVERLOAD_WAIT_MS", "60001")]).is_err());
        assert!(load(&[("CALLBRIDGE_SIP_OVERLOAD_WAIT_MS", "250")]).is_ok());
    }

    #[test]
    fn file_then_env_then_overrides() {
        let dir = std::env::temp_dir().join(format!("cb-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "[sip]\nrefuse_code = 486\nlisten = \"127.0.0.1:5070\"\n[intent]\nttl_secs = 5\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&path),
            env(&[
                ("CALLBRIDGE_SIP_REFUSE_CODE", "480"),
                (
                    "CALLBRIDGE_SIP_TRUSTED_PEERS",
                    "[\"10.0.0.0/8\", \"::1/128\"]",
                ),
                ("CALLBRIDGE_API_TOKENS", "[\"s3cret\"]"),
                ("UNRELATED", "x"),
            ]),
            &["intent.ttl_secs=7".into()],
        )
        .unwrap();
        assert_eq!(c.sip.refuse_code, 480);
        assert_eq!(c.sip.listen, "127.0.0.1:5070".parse().unwrap());
        assert_eq!(c.sip.trusted_peers.len(), 2);
        assert_eq!(c.api.tokens, vec!["s3cret".to_string()]);
        assert_eq!(c.intent.ttl_secs, 7);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(Config::load(None, env(&[("CALLBRIDGE_SIP_NOPE", "1")]), &[]).is_err());
        assert!(Config::load(None, env(&[("CALLBRIDGE_SIP_REFUSE_CODE", "200")]), &[]).is_err());
        assert!(Config::load(None, env(&[("CALLBRIDGE_MEDIA_RTP_PORTS", "9-3")]), &[]).is_err());
        assert!(Config::load(None, env(&[("CALLBRIDGE_SIP_LISTEN", "nope")]), &[]).is_err());
        assert!(Config::load(None, env(&[]), &["bad".into()]).is_err());
    }

    #[test]
    fn webhooks_are_off_by_default_and_checked_when_on() {
        let off = Config::load(None, env(&[]), &[]).unwrap();
        assert!(!off.webhooks.enabled());
        assert_eq!(off.webhooks.timeout_ms, 5000);
        assert_eq!(off.webhooks.max_attempts, 10);
        assert_eq!(off.webhooks.max_pending, 100_000);
        assert!(off.webhooks.allowed_hosts.is_empty());
        let lib = off.webhooks.webhook_config();
        assert_eq!(lib, webhooks::WebhookConfig::default());

        let on = Config::load(
            None,
            env(&[
                ("CALLBRIDGE_WEBHOOKS_URL", "https://app.example/hook"),
                ("CALLBRIDGE_WEBHOOKS_SECRET", "whsec_1"),
                ("CALLBRIDGE_WEBHOOKS_ALLOWED_HOSTS", r#"["*.app.example"]"#),
                ("CALLBRIDGE_WEBHOOKS_MAX_ATTEMPTS", "3"),
            ]),
            &["webhooks.backoff_base_ms=50".into()],
        )
        .unwrap();
        assert!(on.webhooks.enabled());
        let lib = on.webhooks.webhook_config();
        assert_eq!(lib.url, "https://app.example/hook");
        assert_eq!(lib.allowed_hosts, ["*.app.example"]);
        assert_eq!(lib.schedule.max_attempts, 3);
        assert_eq!(lib.schedule.backoff.base, Duration::from_millis(50));

        let refused = |pairs: &[(&str, &str)]| Config::load(None, env(pairs), &[]).is_err();
        // On without a secret: receivers could verify nothing.
        assert!(refused(&[(
            "CALLBRIDGE_WEBHOOKS_URL",
            "http://127.0.0.1:9/h"
        )]));
        assert!(refused(&[(
            "CALLBRIDGE_WEBHOOKS_ALLOWED_HOSTS",
            r#"["a.example"]"#
        )]));
        let with_secret = |pair: (&'static str, &'static str)| {
            refused(&[
                ("CALLBRIDGE_WEBHOOKS_URL", "http://127.0.0.1:9/h"),
                ("CALLBRIDGE_WEBHOOKS_SECRET", "k"),
                pair,
            ])
        };
        assert!(!with_secret(("CALLBRIDGE_WEBHOOKS_TIMEOUT_MS", "100")));
        for url in ["ftp://x/", "https://u:p@x/", "http://"] {
            assert!(refused(&[
                ("CALLBRIDGE_WEBHOOKS_URL", url),
                ("CALLBRIDGE_WEBHOOKS_SECRET", "k")
            ]));
        }
        assert!(with_secret(("CALLBRIDGE_WEBHOOKS_TIMEOUT_MS", "0")));
        assert!(with_secret(("CALLBRIDGE_WEBHOOKS_MAX_ATTEMPTS", "0")));
        assert!(with_secret(("CALLBRIDGE_WEBHOOKS_MAX_PENDING", "0")));
        assert!(with_secret(("CALLBRIDGE_WEBHOOKS_BACKOFF_MAX_MS", "10")));
        assert!(with_secret((
            "CALLBRIDGE_WEBHOOKS_ALLOWED_HOSTS",
            r#"[" "]"#
        )));
        assert!(with_secret(("CALLBRIDGE_WEBHOOKS_NOPE", "1")));
    }

    #[test]
    fn connection_limits_are_read_from_the_environment_and_checked() {
        let c = Config::load(
            None,
            env(&[
                ("CALLBRIDGE_SIP_MAX_CONNECTIONS", "2048"),
                ("CALLBRIDGE_SIP_MAX_CONNECTIONS_PER_IP", "16"),
                ("CALLBRIDGE_SIP_TCP_IDLE_SECS", "120"),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(c.sip.max_connections, 2048);
        assert_eq!(c.sip.max_connections_per_ip, 16);
        assert_eq!(c.sip.tcp_idle_secs, 120);
        // They show in --print-config (the serialized configuration).
        let printed = toml::to_string(&c).unwrap();
        assert!(printed.contains("max_connections_per_ip = 16"), "{printed}");
        for bad in [
            ("CALLBRIDGE_SIP_MAX_CONNECTIONS", "0"),
            ("CALLBRIDGE_SIP_MAX_CONNECTIONS", "100000000"),
            ("CALLBRIDGE_SIP_MAX_CONNECTIONS_PER_IP", "0"),
            ("CALLBRIDGE_SIP_MAX_CONNECTIONS_PER_IP", "5000"),
            ("CALLBRIDGE_SIP_TCP_IDLE_SECS", "0"),
            ("CALLBRIDGE_SIP_TCP_IDLE_SECS", "1000000"),
            ("CALLBRIDGE_SIP_MAX_CONNECTIONS", "-1"),
            ("CALLBRIDGE_SIP_UDP_MAX_REQUEST_BYTES", "10"),
            ("CALLBRIDGE_SIP_UDP_MAX_REQUEST_BYTES", "70000"),
        ] {
            assert!(
                matches!(
                    Config::load(None, env(&[bad]), &[]),
                    Err(ConfigError::Invalid(_) | ConfigError::Syntax { .. })
                ),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn open_api_without_tokens_is_refused_unless_allowed() {
        let open = env(&[("CALLBRIDGE_API_LISTEN", "0.0.0.0:8080")]);
        assert!(Config::load(None, open.clone(), &[]).is_err());
        let mut allowed = open.clone();
        allowed.push(("CALLBRIDGE_API_ALLOW_UNAUTHENTICATED".into(), "true".into()));
        assert!(Config::load(None, allowed, &[]).is_ok());
        let mut with_token = open;
        with_token.push(("CALLBRIDGE_API_TOKENS".into(), "[\"t\"]".into()));
        assert!(Config::load(None, with_token, &[]).is_ok());
    }
    #[test]
    fn ipv6_addresses_are_accepted_normalised_and_checked_against_their_sockets() {
        let load = |set: &[&str]| {
            let set: Vec<String> = set.iter().map(|s| (*s).to_owned()).collect();
            Config::load(None, env(&[]), &set)
        };
        // `[::1]` and `::1` alike: kept bare, bracketed by whoever writes a header.
        for public in ["[::1]", "::1"] {
            let c = load(&[
                "sip.listen=[::1]:5070",
                &format!("sip.public_addr={public}"),
                "sip.trusted_peers=[\"::1/128\"]",
                "media.public_ip=::1",
                "media.bind_ip=::1",
            ])
            .unwrap();
            assert_eq!(c.sip.listen, "[::1]:5070".parse().unwrap());
            let trunk = Peer::udp("[::1]:5080".parse().unwrap());
            let engine = c
                .sip
                .engine_config(5070, trunk, c.media.media_config().unwrap());
            assert_eq!(engine.local.public_addr, "::1");
            assert_eq!(engine.transactions.via_host, "::1");
            assert_eq!(
                engine.local.contact("2001").to_string(),
                "sip:2001@[::1]:5070"
            );
            assert_eq!(
                c.media.driver_config().bind_ip,
                "::1".parse::<IpAddr>().unwrap()
            );
        }
        // Dual-stack listeners take either family.
        for public in ["127.0.0.1", "::1"] {
            load(&[
                "sip.listen=[::]:5060",
                &format!("sip.public_addr={public}"),
                "media.bind_ip=::",
                &format!("media.public_ip={public}"),
            ])
            .unwrap();
        }
        // Families that cannot meet, and hosts that are no hosts.
        for bad in [
            &["media.public_ip=::1"][..],
            &["media.public_ip=127.0.0.1", "media.bind_ip=::1"],
            &["sip.public_addr=::1"],
            &["sip.listen=[::1]:5060", "sip.public_addr=127.0.0.1"],
            &["sip.public_addr=127.0.0.1:5060"],
            &["sip.public_addr=[sbc.example]"],
            &["sip.public_addr=\"\""],
            &["media.public_ip6=::1"],
            &["media.bind_ip=::", "media.public_ip6=127.0.0.1"],
            &["media.bind_ip=::", "media.public_ip6=::ffff:127.0.0.1"],
            &[
                "media.bind_ip=::",
                "media.public_ip=::1",
                "media.public_ip6=::2",
            ],
        ] {
            assert!(
                matches!(load(bad), Err(ConfigError::Invalid(_))),
                "{bad:?} accepted"
            );
        }
        // A dual-stack relay with an address per family.
        let c = load(&[
            "media.bind_ip=::",
            "media.public_ip=127.0.0.1",
            "media.public_ip6=[::1]",
        ])
        .unwrap();
        let media = c.media.media_config().unwrap();
        assert_eq!(media.public_ip6, Some("::1".parse().unwrap()));
        assert_eq!(
            Config::default().media.media_config().unwrap().public_ip6,
            None
        );
        // A UDP trunk the SIP socket can reach at one target at least.
        let v4_only = Config::default().sip;
        let target = |addr: &str, transport| Peer {
            transport,
            ..Peer::udp(addr.parse().unwrap())
        };
        let (udp, tcp) = (sip_core::Transport::Udp, sip_core::Transport::Tcp);
        assert!(v4_only.check_trunk(&[target("[::1]:5080", udp)]).is_err());
        assert!(v4_only
            .check_trunk(&[target("[::1]:5080", udp), target("127.0.0.1:5080", udp)])
            .is_ok());
        assert!(v4_only.check_trunk(&[target("[::1]:5080", tcp)]).is_ok());
        assert!(v4_only.check_trunk(&[]).is_ok());
        let error = load(&["media.public_ip=::1"]).unwrap_err().to_string();
        assert!(
            error.contains("media.public_ip ::1") && error.contains("media.bind_ip 0.0.0.0"),
            "{error}"
        );
    }
}
