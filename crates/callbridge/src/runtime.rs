//! Wiring: opens the store, binds the SIP transport and the HTTP listener, and runs the tasks
//! of a callbridge process — the SIP task (which alone owns the sans-IO [`Engine`] and the
//! media driver, and moves bytes, media commands and deadlines between them and tokio), the
//! intent sweeper, the trunk's DNS refresh ([`trunk_dns::keep_fresh`], for a trunk given as a
//! name), the HTTP server, the store's record mover and retention sweep
//! ([`crate::persistence`]), and with `[webhooks]` on, the webhook dispatcher
//! ([`webhooks::start`]). The relay tasks of the media driver and the store's writer thread run
//! beside them. At shutdown the SIP task drains first, then the dispatcher takes the last
//! events into the outbox, then the last records are written and the writer stops.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use api::ApiState;
use b2bua::engine::Engine;
use b2bua::{CallControl, SharedIntents, WallClock};
use sip_core::transport::{SipTransport, TransportEvent, TransportEvents, TransportHandle};
use sip_core::Peer;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::actions::{EngineCommand, SipActions};
use crate::claims::{ClaimAnswer, ClaimDriver};
use crate::cluster_node::{self, ClusterApi, ClusterNode};
use crate::config::{Config, TlsTrunk};
use crate::media_driver::MediaBridge;
use crate::persistence::{self, Persistence};
use crate::status::SharedStatus;
use crate::trunk_dns::{self, AddressFamilies, Resolved, TrunkDnsError, TrunkName, TrunkResolver};

/// Why callbridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind SIP on {addr}: {source}")]
    Sip {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot bind the HTTP API on {addr}: {source}")]
    Api {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the trunk {address:?} (trunk.address or sip.trunk) does not resolve to an address: {source}")]
    Trunk {
        address: String,
        source: TrunkDnsError,
    },
    #[error("invalid configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot open the store: {0}")]
    Store(#[from] store::StoreError),
    #[error("cannot start webhooks: {0}")]
    Webhooks(#[from] webhooks::WebhookError),
    #[error("cannot join the cluster: {0}")]
    Cluster(cluster::ClusterError),
}

/// A started callbridge: its bound addresses, shared state, and the handle to stop it.
pub struct Running {
    /// Where SIP (UDP and TCP) listens; the real port when the configured one was 0.
    pub sip_addr: SocketAddr,
    /// Where SIP over TLS listens (`tls.listen`), when it does; the real port likewise.
    pub sip_tls_addr: Option<SocketAddr>,
    pub api_addr: SocketAddr,
    pub control: Arc<CallControl>,
    pub status: Arc<SharedStatus>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Tasks [`kill`](Running::kill) stops besides `tasks` (the webhook dispatcher's).
    aborts: Vec<tokio::task::AbortHandle>,
}

impl Running {
    /// Stops every task at once, as a crash would (no drain, no goodbye to the cluster):
    /// for tests of what the others do about a node that died.
    pub fn kill(&self) {
        for task in &self.tasks {
            task.abort();
        }
        for task in &self.aborts {
            task.abort();
        }
    }

    /// Starts a clean shutdown: `/healthz` says `503 draining` and new INVITEs get 503 at
    /// once; live calls get `sip.shutdown_grace_secs` to end, then are hung up (BYE, CANCEL,
    /// 503), and SIP keeps serving until their transactions are done (at most 128·T1), then
    /// closes. The API closes once SIP has stopped.
    pub fn shutdown(&self) {
        // /healthz says `draining` from this moment (SPEC: "at once"), not from whenever the
        // SIP task next runs; load balancers stop sending calls.
        self.status.set_draining();
        let _ = self.shutdown.send(true);
    }

    /// Waits for every task to finish (after [`shutdown`](Self::shutdown)).
    pub async fn join(self) {
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// Binds everything and starts the tasks on the current tokio runtime.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    let control = Arc::new(config.intent.call_control(
        &config.sip,
        WallClock::new(Instant::now(), SystemTime::now()),
    ));
    let status = Arc::new(SharedStatus::default());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // A cluster: intents live in the shared Redis, reached lazily (a node starts, and
    // answers 503, while Redis is down).
    let cluster_node = cluster_node(config)?;
    let shared: Option<Arc<dyn SharedIntents>> = cluster_node.as_ref().map(|node| {
        tracing::info!(node = %node.node, redis = %config.cluster.redis_url, "cluster node: intents, call index and hang-ups shared in Redis");
        let intents: Arc<dyn SharedIntents> = node.intents.clone();
        control.set_shared(Arc::clone(&intents), node.node.clone());
        intents
    });
    // The store before anything serves: the number assignments must be in memory before the
    // first makecall or INVITE is checked against them.
    let persistence = Arc::new(Persistence::open(&config.store, &control).await?);
    // Webhooks before the first change: every event from the first makecall on is built,
    // stored and sent (and the events a previous run left pending go first).
    let (webhook_handle, dispatcher) = if config.webhooks.enabled() {
        let (handle, dispatcher) = webhooks::start(
            config.webhooks.webhook_config(),
            control.clone(),
            persistence.store.clone(),
            persistence.writer.clone(),
        )?;
        (Some(handle), Some(dispatcher))
    } else {
        (None, None)
    };

    // The trunk first: its addresses are trusted for TCP and hold the reserved connections,
    // which the transport needs from the moment it accepts. A name that resolves to nothing
    // (or a DNS that does not answer) stops the start here: there would be nowhere to send
    // a call.
    let trunk = resolve_trunk(config).await?;
    let first_target =
        trunk
            .resolved
            .targets
            .first()
            .copied()
            .ok_or_else(|| StartError::Trunk {
                address: trunk.name.label(),
                source: TrunkDnsError::NoTargets(trunk.name.label()),
            })?;
    let trunk_ips: Vec<IpAddr> = trunk
        .resolved
        .targets
        .iter()
        .map(|target| target.addr.ip())
        .collect();
    config.sip.check_trunk(&trunk.resolved.targets)?;
    let mut transport_config = config.sip.transport_config(&trunk_ips);
    // TLS: the listener, and toward a TLS trunk its certificate checked for the host of
    // trunk.address at each of its addresses (files read and checked again here, as they are
    // now).
    let tls_trunk = (first_target.transport == sip_core::Transport::Tls).then(|| TlsTrunk {
        ips: &trunk_ips,
        host: config.trunk.host(&config.sip.trunk),
    });
    transport_config.tls = config.tls.transport_tls(tls_trunk)?;
    transport_config.tls_handshake_timeout = config.tls.handshake_timeout();
    let (transport, events) = SipTransport::bind(transport_config)
        .await
        .map_err(|source| StartError::Sip {
            addr: config.sip.listen,
            source,
        })?;
    let sip_addr = transport.local_addr();
    let sip_tls_addr = transport.tls_local_addr();
    status.set_transport(transport.clone());

    let media_config = config.media.media_config()?;
    let (first_port, last_port) = (media_config.first_port, media_config.last_port);
    let media = MediaBridge::new(config.media.driver_config());
    let mut engine_config = config
        .sip
        .engine_config(sip_addr.port(), first_target, media_config);
    // A Contact reached over TLS names the TLS listener's port.
    engine_config.local.tls_port = sip_tls_addr.map(|addr| addr.port());
    engine_config.trunk_credentials = config.trunk.credentials();
    (engine_config.trunk_host, engine_config.trunk_port) =
        config.trunk.uri_host_port(&config.sip.trunk);
    engine_config.registration = config
        .trunk
        .registration_config(&config.sip.trunk, &engine_config.local);
    engine_config.trunk_ping = config.trunk.ping_interval();
    let mut engine = Engine::new(engine_config, control.clone());
    // A claim waits for at most two Redis round trips (connecting, then the script), and a
    // margin for the SIP task to read the answer.
    engine.set_claim_timeout(config.cluster.redis_timeout() * 2 + Duration::from_millis(500));
    engine.set_trunk_targets(trunk.resolved.targets.clone());
    status.set_trunk_targets(engine.trunk_targets());
    engine.start_registration(Instant::now());

    let api_listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .map_err(|source| StartError::Api {
            addr: config.api.listen,
            source,
        })?;
    let api_addr = api_listener
        .local_addr()
        .map_err(|source| StartError::Api {
            addr: config.api.listen,
            source,
        })?;
    let api_settings = config.api.api_settings();
    let (actions, commands) = SipActions::new();
    let trunk_commands = actions.sender();
    let actions: Arc<dyn api::CallActions> = Arc::new(actions);
    let mut api_state = ApiState::new(control.clone(), api_settings, status.clone())
        .with_actions(Arc::clone(&actions))
        .with_store(persistence.store.clone())
        .with_store_writer(persistence.writer.clone());
    // The reaper of lost nodes hands their undelivered events to this node's dispatcher.
    let heartbeat_outbox = webhook_handle.clone();
    if let Some(handle) = webhook_handle {
        api_state = api_state.with_webhooks(handle);
    }
    if let Some(node) = &cluster_node {
        api_state = api_state.with_cluster(Arc::new(ClusterApi {
            cluster: Arc::clone(node),
        }));
    }
    let api_state = Arc::new(api_state);

    // Ports of the relay range that something already holds (the SIP port, another process)
    // are taken out of the pool now, rather than failing the first call given them.
    let busy = media.probe(&mut engine, first_port, last_port, Instant::now());
    if busy > 0 {
        tracing::warn!(
            busy,
            "ports of media.rtp_ports are in use by other sockets; not used"
        );
    }
    status.publish(&engine);
    status.set_serving(true);
    tracing::info!(
        %sip_addr,
        ?sip_tls_addr,
        %api_addr,
        trunk = %trunk.name.label(),
        trunk_transport = %first_target.transport,
        targets = ?trunk.resolved.targets.iter().map(|t| t.addr).collect::<Vec<_>>(),
        "callbridge serving"
    );
    let grace = Duration::from_secs(config.sip.shutdown_grace_secs);
    let hangup = hangup_wait(Duration::from_millis(config.sip.t1_ms));
    // Dropped when the SIP task ends (however it ends): the API stays up through the drain,
    // so that /healthz answers `503` while calls are being hung up (SPEC: "at once"), and
    // closes only once SIP has stopped.
    let (sip_stopped_tx, sip_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut tasks = Vec::new();
    let aborts: Vec<tokio::task::AbortHandle> =
        dispatcher.iter().map(|d| d.abort_handle()).collect();
    let claims = shared.clone().map(ClaimDriver::new);
    let sip = sip_task(
        engine,
        media,
        transport,
        (events, commands, claims),
        shutdown_rx.clone(),
        status.clone(),
        (grace, hangup),
    );
    let last_records = (persistence.clone(), control.clone());
    tasks.push(tokio::spawn(async move {
        sip.await;
        // Every call has ended now: the events of the last hang-ups go to the outbox, then
        // the records to the store (the writer stops last), before the API closes.
        if let Some(dispatcher) = dispatcher {
            dispatcher.finish().await;
        }
        let (persistence, control) = last_records;
        persistence.finish(control).await;
        drop(sip_stopped_tx);
    }));
    tasks.push(tokio::spawn(sweeper(control.clone(), shutdown_rx.clone())));
    if let Some(node) = cluster_node {
        tasks.push(tokio::spawn(cluster_node::index_task(
            Arc::clone(&node),
            control.clone(),
            shutdown_rx.clone(),
        )));
        let outbox = heartbeat_outbox
            .clone()
            .map(|handle| (persistence.store.clone(), handle));
        tasks.push(tokio::spawn(cluster_node::heartbeat_task(
            Arc::clone(&node),
            control.clone(),
            outbox,
            api_addr.to_string(),
            (config.cluster.heartbeat(), config.cluster.heartbeat_ttl()),
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(cluster_node::hangup_task(
            node,
            Arc::clone(&actions),
            shutdown_rx.clone(),
        )));
    }
    // A trunk given as a name is resolved again as its answers expire (an IP literal never).
    if let (Some(resolver), Some(refresh)) = (trunk.resolver, trunk.resolved.refresh) {
        tasks.push(tokio::spawn(trunk_dns::keep_fresh(
            resolver,
            trunk.name,
            trunk.resolved.targets,
            refresh,
            trunk_commands,
            shutdown_rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(persistence::record_task(
        control.clone(),
        persistence.writer.clone(),
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(persistence::health_task(
        persistence.clone(),
        control.clone(),
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(persistence::sweep_task(
        persistence.clone(),
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(async move {
        api::serve(api_listener, api_state, async move {
            let _ = sip_stopped.await;
        })
        .await;
    }));
    Ok(Running {
        sip_addr,
        sip_tls_addr,
        api_addr,
        control,
        status,
        shutdown: shutdown_tx,
        tasks,
        aborts,
    })
}

/// The trunk as resolved at start, and what keeps it current.
struct StartTrunk {
    name: TrunkName,
    resolved: Resolved,
    /// For a name: the resolver that [`trunk_dns::keep_fresh`] asks again.
    resolver: Option<TrunkResolver>,
}

/// Resolves `trunk.address` (or `sip.trunk`) per RFC 3263: an IP literal without DNS, a name
/// through `dns.servers` or the system's resolvers.
async fn resolve_trunk(config: &Config) -> Result<StartTrunk, StartError> {
    let address = config.trunk.address(&config.sip.trunk);
    let transport = config.trunk.transport();
    let failed = |source| StartError::Trunk {
        address: address.to_owned(),
        source,
    };
    let name = TrunkName::parse(address, transport).map_err(failed)?;
    if let TrunkName::Address(addr) = name {
        // No resolver at all: a host without resolv.conf still starts with an IP trunk.
        return Ok(StartTrunk {
            name,
            resolved: Resolved {
                targets: vec![Peer {
                    transport,
                    addr,
                    connection: None,
                }],
                refresh: None,
            },
            resolver: None,
        });
    }
    let resolver = TrunkResolver::new(
        &config.dns.server_addrs(),
        transport,
        AddressFamilies::for_listen(config.sip.listen),
    )
    .map_err(failed)?;
    let resolved = resolver.resolve(&name).await.map_err(failed)?;
    Ok(StartTrunk {
        name,
        resolved,
        resolver: Some(resolver),
    })
}

/// Most transport events handled before timers and transmits are serviced again.
const BATCH: usize = 64;

/// Where a shutdown stands. SIGTERM starts [`Drain::Grace`]: `/healthz` says `draining`, new
/// INVITEs get 503, live calls go on. When they have all ended, or the grace period is over,
/// [`Drain::HangUp`]: every call left gets its BYE (or CANCEL, or 503), and the task waits for
/// those transactions — at most `hangup_wait` — before it stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Drain {
    Serving,
    Grace { until: tokio::time::Instant },
    HangUp { until: tokio::time::Instant },
}

impl Drain {
    fn deadline(self) -> Option<tokio::time::Instant> {
        match self {
            Drain::Serving => None,
            Drain::Grace { until } | Drain::HangUp { until } => Some(until),
        }
    }
}

/// How long a shutdown waits for the transactions of its BYEs and CANCELs: 128·T1. A
/// cancelled INVITE may get its final response up to 64·T1 after the CANCEL (Timer B), and
/// then absorbs retransmissions of it for 64·T1 more (Timer D).
pub(crate) fn hangup_wait(t1: Duration) -> Duration {
    t1.saturating_mul(128)
}

/// What the SIP task reads besides its timers: the transport's events, the API's (and the
/// DNS task's) commands, and in a cluster the claim driver with its answers.
type SipInputs = (
    TransportEvents,
    mpsc::Receiver<EngineCommand>,
    Option<(ClaimDriver, mpsc::Receiver<ClaimAnswer>)>,
);

/// The SIP task: the only owner of the engine.
async fn sip_task(
    mut engine: Engine,
    mut media: MediaBridge,
    transport: TransportHandle,
    (mut events, mut commands, claims): SipInputs,
    mut shutdown: watch::Receiver<bool>,
    status: Arc<SharedStatus>,
    (grace, hangup): (Duration, Duration),
) {
    let mut drain = Drain::Serving;
    let (claim_driver, mut claim_answers) = match claims {
        Some((driver, answers)) => (Some(driver), Some(answers)),
        None => (None, None),
    };
    // What the engine queued before its task started (the first REGISTER) goes out now, not
    // at the first event.
    // The engine's clock starts here: with trunk.ping_secs on, the first OPTIONS ping goes
    // out now, not with whatever first wakes the loop.
    engine.handle_timeout(Instant::now());
    while let Some(transmit) = engine.poll_transmit() {
        transport.send(transmit);
    }
    // The driver's media counters go to the engine (and from there to the call records and
    // metrics) once a second, not per packet.
    let mut media_tick = tokio::time::interval(Duration::from_secs(1));
    media_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Checked before every step, not only when select picks the shutdown branch (it picks
        // at random among ready ones): once shutdown is asked, no new INVITE is taken.
        if drain == Drain::Serving && *shutdown.borrow() {
            drain = begin_drain(&mut engine, &status, grace);
        }
        let deadline = engine.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                // How far behind the engine is (new requests queued, and how long this one
                // waited): it sheds new INVITEs with a 503 while far behind, so that its
                // calls' messages keep their time. Set per event: a batch can catch up.
                engine.set_input_backlog(events.new_requests_queued());
                engine.set_input_wait(events.waited());
                handle_transport_event(&mut engine, event);
                for _ in 0..BATCH {
                    match events.try_recv() {
                        Some(event) => {
                            engine.set_input_backlog(events.new_requests_queued());
                            engine.set_input_wait(events.waited());
                            handle_transport_event(&mut engine, event);
                        }
                        None => break,
                    }
                }
            }
            _ = sleep_until(deadline), if deadline.is_some() => {
                engine.handle_timeout(Instant::now());
            }
            Some(answer) = next_claim_answer(&mut claim_answers) => {
                crate::claims::apply(&mut engine, answer);
            }
            Some(command) = commands.recv() => {
                crate::actions::apply(&mut engine, command);
                status.set_trunk_targets(engine.trunk_targets());
            }
            _ = media_tick.tick() => {
                let now = Instant::now();
                media.report_all(&mut engine, now);
                engine.publish_media_stats(now);
                status.publish_media(&engine, media.stream_count());
            }
            _ = shutdown.wait_for(|stop| *stop), if drain == Drain::Serving => {
                drain = begin_drain(&mut engine, &status, grace);
            }
            _ = sleep_until(drain.deadline()), if drain != Drain::Serving => {
                match drain {
                    Drain::Grace { .. } => {
                        tracing::info!(calls = engine.call_count(), "grace period over: hanging up the calls left");
                        engine.shutdown(Instant::now());
                        drain = Drain::HangUp { until: tokio::time::Instant::now() + hangup };
                    }
                    _ => {
                        tracing::warn!(calls = engine.call_count(), "stopping with transactions unfinished");
                        break;
                    }
                }
            }
        }
        // Media commands first: a call that cannot open its media is refused in this same
        // step, and its SIP answers go out below with the rest.
        media.pump(&mut engine, Instant::now());
        if let Some(driver) = &claim_driver {
            driver.dispatch(&mut engine);
        }
        while let Some(transmit) = engine.poll_transmit() {
            transport.send(transmit);
        }
        status.publish(&engine);
        if drain != Drain::Serving && drained(&engine) {
            break;
        }
    }
    // Flush what the last step produced, then stop serving.
    media.pump(&mut engine, Instant::now());
    while let Some(transmit) = engine.poll_transmit() {
        transport.send(transmit);
    }
    status.set_serving(false);
    status.publish(&engine);
    transport.shutdown();
    tracing::info!("SIP stopped");
}

/// The start of a shutdown: new INVITEs get 503 from now on, live calls get the grace period.
fn begin_drain(engine: &mut Engine, status: &SharedStatus, grace: Duration) -> Drain {
    tracing::info!(
        calls = engine.call_count(),
        ?grace,
        "shutting down: no new calls; live calls get the grace period"
    );
    // /healthz turns 503 (Running::shutdown has already said so; a signal path that did not
    // go through it still gets it here).
    status.set_draining();
    engine.start_drain(Instant::now());
    Drain::Grace {
        until: tokio::time::Instant::now() + grace,
    }
}

/// Nothing left to finish: no call, and no transaction that still owes a peer something. A
/// call is forgotten once its own transactions end, but a transaction can outlive every call
/// (a request not yet answered, a refusal waiting for its ACK): stopping then would leave the
/// peer without the answer or the retransmission it is owed. The grace period still bounds
/// the wait. Not waited for: the trunk keepalive's own pings (nobody is owed anything by them,
/// and one to a silent trunk would hold the stop for up to 64·T1), and server transactions
/// that have answered and only absorb copies (a dispatcher's OPTIONS probe every second
/// would otherwise hold the stop for as long as the probes go on).
fn drained(engine: &Engine) -> bool {
    let layer = engine.transactions();
    let client = layer
        .client_count()
        .saturating_sub(engine.keepalive_transactions());
    engine.call_count() == 0 && client == 0 && layer.server_owing_count() == 0
}

fn handle_transport_event(engine: &mut Engine, event: TransportEvent) {
    let now = Instant::now();
    match event {
        TransportEvent::Message { message, from } => engine.handle_message(now, message, from),
        TransportEvent::SendFailed { to, origin, error } => {
            tracing::debug!(?to, ?origin, %error, "send failed");
            engine.handle_transport_error(now, origin);
        }
        TransportEvent::ConnectionClosed { .. } => {}
    }
}

/// The next claim answer, or never when this node is not one of a cluster.
async fn next_claim_answer(
    answers: &mut Option<mpsc::Receiver<ClaimAnswer>>,
) -> Option<ClaimAnswer> {
    match answers {
        Some(answers) => answers.recv().await,
        None => std::future::pending().await,
    }
}

/// This node's membership of a cluster when `cluster.redis_url` is set: the shared intent
/// table, the call index, heartbeats and hang-ups, over one connection to Redis (made when
/// first needed).
fn cluster_node(config: &Config) -> Result<Option<Arc<ClusterNode>>, StartError> {
    if !config.cluster.enabled() {
        return Ok(None);
    }
    let url = &config.cluster.redis_url;
    let redis = Arc::new(
        cluster::Redis::new(url, config.cluster.redis_timeout()).map_err(StartError::Cluster)?,
    );
    let node = config.cluster.node_id_or(config.sip.listen.port());
    let intents = Arc::new(
        cluster::RedisIntents::new(Arc::clone(&redis), cluster::DEFAULT_PREFIX).claiming_as(&node),
    );
    let node = ClusterNode::new(redis, url, node, intents).map_err(StartError::Cluster)?;
    Ok(Some(Arc::new(node)))
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Expires intents on time and prunes old call records: one task for the whole table.
async fn sweeper(control: Arc<CallControl>, mut shutdown: watch::Receiver<bool>) {
    const AT_MOST: Duration = Duration::from_secs(1);
    let mut last_warning: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let wait = control
            .next_expiry()
            .map_or(AT_MOST, |at| at.saturating_duration_since(now).min(AT_MOST));
        let stop = tokio::select! {
            _ = tokio::time::sleep(wait) => false,
            _ = shutdown.wait_for(|stop| *stop) => true,
        };
        if stop {
            break;
        }
        // Follows steps of the system clock into the records' timestamps.
        control.sync_wall_clock(WallClock::new(Instant::now(), SystemTime::now()));
        let mut expired = control.sweep(Instant::now());
        if control.shared().is_some() {
            // The cluster's expired intents: each taken (and announced) by one node.
            match control.sweep_shared(Instant::now()).await {
                Ok(shared) => expired += shared,
                Err(error) => {
                    // Once per 10 s while Redis is away, not once a second.
                    let now = Instant::now();
                    if last_warning
                        .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(10))
                    {
                        tracing::warn!(%error, "expired intents not swept from Redis");
                        last_warning = Some(now);
                    }
                }
            }
        }
        if expired > 0 {
            tracing::debug!(expired, "intents expired");
        }
    }
}
