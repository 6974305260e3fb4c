//! The B2BUA engine, sans-IO: every call's signalling on top of one transaction layer.
//!
//! The engine is driven exactly like [`TransactionLayer`]: the runtime feeds it messages from
//! the transport ([`Engine::handle_message`]), transport failures, media events from the
//! media driver ([`Engine::handle_media_event`]) and the time when the deadline from
//! [`Engine::poll_timeout`] has passed; it drains [`Engine::poll_transmit`] and
//! [`Engine::poll_media_command`]. Each transaction event is routed to the call that owns the
//! transaction or dialog; calls keep their state in [`Call`] and the steps of each flow live
//! in the submodules:
//!
//! - [`door`]: the trust boundary and overload shedding, before any transaction exists;
//! - [`incoming`]: a new INVITE on leg A (trust, intent, leg B), CANCEL, out-of-dialog requests;
//! - [`leg_b`]: responses to leg B's INVITE (relay ringing, answer both legs, relay failures);
//! - [`challenge`]: the trunk's 401/407 to leg B's requests, answered with credentials;
//! - [`redirect`]: a 3xx to leg B's INVITE, followed through the trunk only;
//! - [`failover`]: leg B's INVITE moved to the trunk's next target (RFC 3263);
//! - [`prack`]: reliable provisionals (RFC 3262) PRACKed on leg B, relayed reliably to leg A;
//! - [`session`]: session timers (RFC 4028) on both legs: refreshes sent or watched for;
//! - [`in_dialog`]: BYE, re-INVITE/UPDATE/INFO relayed between the legs, ACKs;
//! - [`lifecycle`]: call timers, ending a call, and forgetting it once its last transaction
//!   has finished;
//! - [`media_events`]: media events from the driver, the media inactivity check, media counters;
//! - [`register`]: callbridge's registration at the trunk, driven over the same layer;
//! - [`keepalive`]: OPTIONS pings to the trunk (`trunk.ping_secs`), which belong to no call,
//!   and the 503 to new INVITEs while the trunk does not answer them.

mod challenge;
mod claims;
mod door;
mod failover;
mod in_dialog;
mod incoming;
mod keepalive;
mod leg_b;
mod lifecycle;
mod media_events;
mod prack;
mod redirect;
mod register;
mod session;
mod throttle;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use sip_core::dialog::DialogId;
use sip_core::transaction::{
    ServerTxId, TimerQueue, TransactionConfig, TransactionLayer, TxError, TxEvent, TxId,
};
use sip_core::{Message, Peer, Request, Transmit};

use crate::call::{Call, CallKey, CallTimer, Leg};
use crate::control::CallControl;
use crate::media::{MediaCommand, MediaConfig, MediaPlane};
use crate::outbound::{local_response, LocalIdentity};
use crate::registry::CallRecord;

pub use claims::{ClaimRequest, DEFAULT_CLAIM_TIMEOUT};
pub use door::UntrustedReply;
pub use prack::Reliability;
pub use session::CallSessions;

/// Trunk targets kept at most: more than enough for any SRV set, and a bound on what a DNS
/// answer can make the engine hold per call.
pub const MAX_TRUNK_TARGETS: usize = 8;

/// What `POST /api/calls/{callid}/hangup` did ([`Engine::hang_up_by_api`]): the API answers
/// 200 with the record, 409 `call_ended` or 404 `unknown_call` from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiHangup {
    /// The call was live and is now ended, by `api`: its record.
    Ended(Box<CallRecord>),
    /// The call had already ended (or is not one callbridge's SIP side drives): its record.
    NotLive(Box<CallRecord>),
    /// No call has this id.
    Unknown,
}

/// What the engine needs to know about its surroundings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub local: LocalIdentity,
    /// Where leg B's INVITEs go (`trunk.address` or `sip.trunk`, resolved), and over which
    /// transport (`trunk.transport`): the first target until
    /// [`Engine::set_trunk_targets`] says otherwise.
    pub trunk: Peer,
    /// The trunk as leg B's Request-URI names it (`sip:callee@host[:port]`): the configured
    /// name or address, not the target it resolved to (RFC 3263 §4: the URI keeps the
    /// domain).
    pub trunk_host: String,
    pub trunk_port: Option<u16>,
    /// How often the trunk is pinged with OPTIONS (`trunk.ping_secs`); `None`: never, and the
    /// trunk is never taken for down. See [`crate::trunk_health`].
    pub trunk_ping: Option<Duration>,
    /// What the trunk's 401/407 challenges are answered with (`trunk.username`,
    /// `trunk.password`); `None`: a challenge fails leg B.
    pub trunk_credentials: Option<crate::auth::Credentials>,
    /// callbridge's registration at the trunk (`trunk.register`); `None`: it does not
    /// register. Started by [`Engine::start_registration`].
    pub registration: Option<crate::registration::RegistrationConfig>,
    /// Sources whose SIP is processed statefully (`sip.trusted_peers`), besides the trunk.
    pub trusted_peers: Vec<IpNet>,
    /// What requests from every other source get (`sip.untrusted_reply`).
    pub untrusted_reply: UntrustedReply,
    /// Final status when no intent matches (`sip.refuse_code`).
    pub refuse_code: u16,
    /// Leg B unanswered this long: CANCEL it, 480 on leg A (`sip.no_answer_secs`).
    pub no_answer: Duration,
    /// Bridged calls longer than this are hung up (`sip.max_call_secs`; `None`: no limit).
    pub max_duration: Option<Duration>,
    /// Calls held at once; beyond it new INVITEs get a stateless 503.
    pub max_calls: usize,
    /// New out-of-dialog requests waiting in the transport's queue beyond which new INVITEs
    /// get a stateless 503 (`sip.overload_backlog`): the engine has fallen behind its input.
    pub overload_backlog: usize,
    /// A new INVITE that waited this long in the transport's queue gets a stateless 503
    /// (`sip.overload_wait_ms`): served any later it would meet its own retransmission (the
    /// sender's first is at T1), so the time is better spent on the calls already held.
    pub overload_wait: Duration,
    /// The `Retry-After` of those 503s (`sip.retry_after_secs`).
    pub retry_after: Duration,
    /// Server transactions held at once; beyond it new out-of-dialog requests get a
    /// stateless 503 (`sip.max_server_transactions`).
    pub max_server_transactions: usize,
    pub transactions: TransactionConfig,
    /// Media anchoring: the relay port range, the address written in SDP, the inactivity
    /// timeout.
    pub media: MediaConfig,
    /// Session timers (`sip.session_expires_secs`, `sip.min_se_secs`).
    pub session_timers: crate::session_timer::SessionTimerConfig,
}

/// Counters of call outcomes, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Calls answered on both legs.
    pub calls_bridged: u64,
    /// INVITEs refused before any leg B, by reason code (`no_intent`, `untrusted_source`, ...).
    pub calls_refused: BTreeMap<&'static str, u64>,
    /// Claimed calls that did not bridge, by end cause (`callee_rejected`, `no_answer`, ...).
    pub calls_failed: BTreeMap<&'static str, u64>,
    /// In-dialog requests that matched no dialog (answered 481).
    pub unmatched_requests: u64,
    /// RTP/RTCP packets relayed and dropped by calls that have ended (live calls are added
    /// by [`Engine::media_totals`]).
    pub media_ended: crate::media::DirectionStats,
    /// Media streams the driver could not open (a relay port held by another process).
    pub media_open_failures: u64,
    /// Messages from sources outside the trust boundary (answered statelessly or dropped).
    pub untrusted_messages: u64,
    /// Requests inside a call from a trusted source that is not that leg's peer (403), and
    /// ACKs so sent (dropped).
    pub wrong_peer_messages: u64,
}

/// All calls of one callbridge instance. See the module documentation.
pub struct Engine {
    config: EngineConfig,
    layer: TransactionLayer,
    control: Arc<CallControl>,
    /// The relay port pool and the media commands waiting for the driver.
    media: MediaPlane,
    /// Boxed: a `Call` is a few KiB, and a map of inline values keeps up to twice its
    /// capacity of them allocated (hashbrown grows by doubling and never shrinks).
    calls: HashMap<CallKey, Box<Call>>,
    next_key: u64,
    /// The call each live transaction belongs to.
    tx_owner: HashMap<TxId, CallKey>,
    /// Calls by the intent's callid (the key the API and logs use).
    by_callid: HashMap<String, CallKey>,
    /// The call and leg each dialog (as identified by requests arriving on it) belongs to.
    dialog_owner: HashMap<DialogId, (CallKey, Leg)>,
    /// Call timers, in the transaction layer's queue type: lazily deleted, each call's
    /// `Call::timers` says which entries are still armed.
    timers: TimerQueue<(CallKey, CallTimer)>,
    stats: EngineStats,
    /// Calls in `Ending` (outcome decided, last transactions lingering): they do not count
    /// against `max_calls`.
    ending: usize,
    /// Rate limits of the log lines a peer can trigger: "media ports exhausted" (one per
    /// 10 s), refused calls and requests from the wrong peer (10 a second each).
    exhausted_log: throttle::LogThrottle,
    refusal_log: throttle::LogThrottle,
    wrong_peer_log: throttle::LogThrottle,
    /// Rate limit of "trunk challenge not answered" (10 a second).
    auth_log: throttle::LogThrottle,
    /// Rate limit of the "untrusted source" log line.
    untrusted_log: door::SourceLog,
    /// Set by [`Engine::start_drain`]: new INVITEs are refused.
    draining: bool,
    /// callbridge's registration at the trunk, once started.
    registration: Option<crate::registration::Registration>,
    /// The trunk's targets in the order to try them (RFC 3263: SRV priority and weight);
    /// never empty. New legs B go to the first, and fail over along the rest.
    trunk_targets: Vec<Peer>,
    /// The trunk's OPTIONS keepalive and health.
    keepalive: keepalive::Keepalive,
    /// New out-of-dialog requests queued for the engine, as the runtime last said
    /// ([`Engine::set_input_backlog`]).
    input_backlog: usize,
    /// How long the request being handled waited in the transport's queue
    /// ([`Engine::set_input_wait`]).
    input_wait: Duration,
    /// In a cluster: INVITEs waiting for their claim in the shared intent table.
    claims: claims::PendingClaims,
}

impl Engine {
    /// A new engine. Needs no runtime: it does no I/O.
    pub fn new(config: EngineConfig, control: Arc<CallControl>) -> Engine {
        let layer = TransactionLayer::new(config.transactions.clone());
        let first_target = config.trunk;
        let media = MediaPlane::new(config.media.clone());
        let keepalive =
            keepalive::Keepalive::new(config.trunk_ping, config.transactions.timers.timeout());
        Engine {
            config,
            layer,
            control,
            media,
            calls: HashMap::new(),
            next_key: 1,
            tx_owner: HashMap::new(),
            dialog_owner: HashMap::new(),
            by_callid: HashMap::new(),
            timers: TimerQueue::new(),
            stats: EngineStats::default(),
            ending: 0,
            exhausted_log: throttle::LogThrottle::new(Duration::from_secs(10), 1),
            refusal_log: throttle::LogThrottle::new(Duration::from_secs(1), 10),
            wrong_peer_log: throttle::LogThrottle::new(Duration::from_secs(1), 10),
            auth_log: throttle::LogThrottle::new(Duration::from_secs(1), 10),
            untrusted_log: door::SourceLog::default(),
            draining: false,
            registration: None,
            trunk_targets: vec![first_target],
            keepalive,
            input_backlog: 0,
            input_wait: Duration::ZERO,
            claims: claims::PendingClaims::new(),
        }
    }

    pub fn control(&self) -> &Arc<CallControl> {
        &self.control
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    pub fn transactions(&self) -> &TransactionLayer {
        &self.layer
    }

    /// The trunk's targets, in the order legs B try them (RFC 3263 resolution, done by the
    /// runtime): new calls use them from now on; calls placed already keep theirs. At most
    /// [`MAX_TRUNK_TARGETS`] are kept; an empty list changes nothing (the last known targets
    /// are better than none).
    pub fn set_trunk_targets(&mut self, targets: Vec<Peer>) {
        if targets.is_empty() {
            return;
        }
        let mut targets = targets;
        targets.truncate(MAX_TRUNK_TARGETS);
        if targets != self.trunk_targets {
            tracing::info!(?targets, "trunk targets");
            self.trunk_targets = targets;
        }
    }

    /// The trunk's targets in order (see [`Engine::set_trunk_targets`]).
    pub fn trunk_targets(&self) -> &[Peer] {
        &self.trunk_targets
    }

    /// Calls held, bridged or still finishing their last transactions.
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// Calls whose outcome is not decided yet (waiting for their claim, ringing or bridged):
    /// what `max_calls` limits.
    pub fn active_call_count(&self) -> usize {
        self.calls.len() - self.ending + self.claims.parked()
    }

    /// Dialogs registered for in-dialog routing (leg A's from the start, leg B's from its
    /// first tagged response).
    pub fn dialog_count(&self) -> usize {
        self.dialog_owner.len()
    }

    /// A message from the transport. It passes the trust boundary first (see [`door`]).
    pub fn handle_message(&mut self, now: Instant, mut message: Message, from: Peer) {
        match self.admit(now, &message, from) {
            door::Admission::Stateful => {
                // A SIP-I body is reduced to its SDP here, once: nothing after this sees the
                // ISUP, so nothing can pass it to the other leg.
                crate::body::keep_sdp_only(&mut message);
                if let Err(error) = self.layer.handle_message(now, message, from) {
                    tracing::debug!(%error, ?from, "message dropped by the transaction layer");
                }
                self.process_events(now);
            }
            door::Admission::Stateless(response) => {
                if let Err(error) = self.layer.send_stateless_response(&response, from) {
                    tracing::debug!(%error, ?from, "stateless answer not sent");
                }
            }
            door::Admission::Drop => {}
        }
    }

    /// How many new out-of-dialog requests wait for the engine (the transport's
    /// new-request queue). Beyond `overload_backlog`, new INVITEs are shed with a stateless
    /// 503 until it drains.
    pub fn set_input_backlog(&mut self, queued: usize) {
        self.input_backlog = queued;
    }

    /// How long the message about to be handled waited for the engine (the transport's
    /// `TransportEvents::waited`; zero for messages of existing calls). A new INVITE that
    /// waited `overload_wait` or longer is shed with a stateless 503.
    pub fn set_input_wait(&mut self, waited: Duration) {
        self.input_wait = waited;
    }

    /// A send failed; `origin` is the transaction that made it (the transport's
    /// `SendFailed { origin, .. }`). Only that transaction fails, not others to the same peer.
    pub fn handle_transport_error(&mut self, now: Instant, origin: Option<TxId>) {
        if let Some(tx) = origin {
            self.layer.on_send_failed(now, tx);
        }
        self.process_events(now);
    }

    /// Fires transaction and call timers due at `now`, and the trunk keepalive's. The run
    /// loop calls it once at start-up too: the keepalive has no clock before it, and sends
    /// its first ping then.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.layer.handle_timeout(now);
        self.process_events(now);
        self.drive_registration(now);
        self.fire_call_timers(now);
        self.drive_keepalive(now);
        self.expire_claims(now);
        self.process_events(now);
    }

    /// The earliest deadline at which [`handle_timeout`](Self::handle_timeout) must run.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        let layer = self.layer.poll_timeout();
        let calls = self.next_call_timer();
        let registration = self.registration.as_ref().and_then(|r| r.poll_timeout());
        let keepalive = self.keepalive_timeout();
        let claims = self.claims.next_deadline();
        [layer, calls, registration, keepalive, claims]
            .into_iter()
            .flatten()
            .min()
    }

    /// Next datagram or stream write to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.layer.poll_transmit()
    }

    /// Next command for the media driver, in the order they must be carried out.
    pub fn poll_media_command(&mut self) -> Option<MediaCommand> {
        self.media.commands.pop_front()
    }

    fn process_events(&mut self, now: Instant) {
        while let Some(event) = self.layer.poll_event() {
            self.on_event(now, event);
        }
        if !self.media.newly_active.is_empty() {
            self.arm_media_timers(now);
        }
    }

    fn on_event(&mut self, now: Instant, event: TxEvent) {
        // The trunk's OPTIONS pings are no call's: their events stop here.
        let Some(event) = self.keepalive_event(now, event) else {
            return;
        };
        match event {
            TxEvent::Request {
                tx,
                request,
                from,
                cancels,
            } => self.on_request(now, tx, request, from, cancels),
            TxEvent::Ack { tx, request, from } => self.on_ack(now, tx, request, from),
            TxEvent::Response { tx, response, .. } if self.is_registration(tx) => {
                self.on_registration_response(now, &response)
            }
            TxEvent::Response { tx, response, .. } => self.on_response(now, tx, response),
            TxEvent::StrayResponse { response, from } => self.on_stray_response(response, from),
            TxEvent::Timeout(id) | TxEvent::TransportError(id) => {
                if !self.on_registration_failure(now, id) {
                    self.on_tx_failure(now, id);
                }
            }
            TxEvent::Terminated(id) => self.on_terminated(id),
        }
    }

    /// Answers `request` on server transaction `tx` with a response callbridge generates.
    fn respond(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        request: &Request,
        status: u16,
        tag: Option<&str>,
        reason: Option<&str>,
    ) {
        let tag = tag
            .map(str::to_owned)
            .or_else(|| (status > 100).then(sip_core::ids::new_tag));
        let response = local_response(&self.config.local, request, status, tag.as_deref(), reason);
        self.send_response(now, tx, response);
    }

    fn send_response(&mut self, now: Instant, tx: ServerTxId, response: sip_core::Response) {
        if let Err(error) = self.layer.send_response(now, tx, response) {
            log_refused(error);
        }
    }

    /// Registers a transaction as belonging to a call (it keeps the call alive until it ends).
    fn own(&mut self, key: CallKey, tx: TxId) {
        if let Some(call) = self.calls.get_mut(&key) {
            if self.tx_owner.insert(tx, key).is_none() {
                call.live_transactions += 1;
            }
        }
    }
}

/// Where requests on a leg go: leg A back to where its INVITE came from (the trunk, or a
/// phone behind NAT), leg B to the trunk target its INVITE went to.
///
/// Over TCP, leg A's requests go on the connection its INVITE came on while it is open; the
/// address beside it is the dialog's next hop (its first route, else its remote target,
/// RFC 3261 §12.2.1.1), not the peer's ephemeral source port, so that a connection that
/// dropped mid-call is opened again to where the dialog says and a BYE still reaches leg A.
fn destination(call: &Call, leg: Leg) -> Peer {
    match leg {
        Leg::A if call.a.source.is_reliable() => {
            let hop = call
                .a
                .dialog
                .as_ref()
                .and_then(|d| hop_address(d.next_hop(), call.a.source.transport));
            Peer {
                addr: hop.unwrap_or(call.a.source.addr),
                ..call.a.source
            }
        }
        Leg::A => call.a.source,
        Leg::B => call.b.target,
    }
}

/// The address of `uri` when its host is an IP literal (a name would need RFC 3263
/// resolution, which the engine, doing no I/O, leaves to the transport's caller); without a
/// port, SIP's default for the transport (5061 over TLS, else 5060).
fn hop_address(
    uri: &sip_core::Uri,
    transport: sip_core::Transport,
) -> Option<std::net::SocketAddr> {
    let host = uri.host().trim_start_matches('[').trim_end_matches(']');
    let ip: std::net::IpAddr = host.parse().ok()?;
    let default_port = if transport == sip_core::Transport::Tls {
        5061
    } else {
        5060
    };
    Some(std::net::SocketAddr::new(
        ip,
        uri.port().unwrap_or(default_port),
    ))
}

fn log_refused(error: TxError) {
    tracing::debug!(%error, "transaction layer refused a send");
}
