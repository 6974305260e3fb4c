//! The trunk's OPTIONS keepalive (`trunk.ping_secs`) on the engine: the pings that
//! [`TrunkHealth`] asks for go out through the transaction layer to the trunk, what becomes of
//! each (a response of any status, a timeout, a transport error) goes back to it, its
//! transitions are logged (warn when the trunk goes down, info when it is back), and while the
//! trunk is down a new INVITE gets 503 with `Retry-After` before its intent is claimed.
//!
//! Ping transactions belong to no call: [`Engine::keepalive_event`] takes their events before
//! the calls' dispatch sees them. No pings go out once the engine drains (a shutdown has no
//! use for the trunk's health), and the ones still in flight are owed nothing by anybody, so
//! the runtime does not wait for them ([`Engine::keepalive_transactions`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sip_core::capacity::shrink_map;
use sip_core::transaction::{ClientTxId, ServerTxId, TxEvent, TxId};
use sip_core::{HeaderName, Request};

use super::Engine;
use crate::outbound::{local_response, trunk_ping};
use crate::refusal::Refusal;
use crate::trunk_health::{PingId, Transition, TrunkHealth};

/// The keepalive's part of the engine: the health machine and which transaction carries
/// which ping.
#[derive(Debug)]
pub(super) struct Keepalive {
    health: TrunkHealth,
    /// The ping each live OPTIONS transaction carries, until the transaction terminates (a
    /// late answer still finds its ping, and is counted as late).
    pub(super) pings: HashMap<ClientTxId, PingId>,
}

impl Keepalive {
    /// Pings every `interval` (`None`: never), each waiting at most `min(interval, timer_f)`.
    pub(super) fn new(interval: Option<Duration>, timer_f: Duration) -> Keepalive {
        Keepalive {
            health: TrunkHealth::new(interval, timer_f),
            pings: HashMap::new(),
        }
    }
}

impl Engine {
    /// The trunk's health as the OPTIONS keepalive sees it (state and counters), for status
    /// publishing.
    pub fn trunk_health(&self) -> &TrunkHealth {
        &self.keepalive.health
    }

    /// OPTIONS transactions of the keepalive still alive. They are no call's and owed
    /// nothing: a shutdown need not wait for them.
    pub fn keepalive_transactions(&self) -> usize {
        self.keepalive.pings.len()
    }

    /// The keepalive's next deadline (none once draining: no more pings).
    pub(super) fn keepalive_timeout(&self) -> Option<Instant> {
        if self.draining {
            return None;
        }
        self.keepalive.health.poll_timeout()
    }

    /// Runs the keepalive at `now`: an overdue ping is lost, a due one is sent.
    pub(super) fn drive_keepalive(&mut self, now: Instant) {
        if self.draining {
            return;
        }
        let transition = self.keepalive.health.handle_timeout(now);
        self.log_trunk_transition(transition);
        while let Some(ping) = self.keepalive.health.poll_ping() {
            // The first target: the one new calls go to.
            let target = self
                .trunk_targets
                .first()
                .copied()
                .unwrap_or(self.config.trunk);
            let uri = crate::outbound::TrunkUri {
                host: &self.config.trunk_host,
                port: self.config.trunk_port,
                transport: target.transport,
            };
            let request = trunk_ping(&self.config.local, &uri);
            match self.layer.send_request(now, request, target) {
                Ok(tx) => {
                    self.keepalive.pings.insert(tx, ping);
                }
                Err(error) => {
                    tracing::debug!(%error, "trunk ping not sent");
                    let transition = self.keepalive.health.on_unanswered(now, ping);
                    self.log_trunk_transition(transition);
                }
            }
        }
    }

    /// Takes the events of ping transactions (any response: answered; a timeout or transport
    /// error: unanswered; the end of the transaction: forgotten) and gives every other event
    /// back for the calls.
    pub(super) fn keepalive_event(&mut self, now: Instant, event: TxEvent) -> Option<TxEvent> {
        if self.keepalive.pings.is_empty() {
            return Some(event);
        }
        let (tx, answered) = match &event {
            // Whatever the status: the trunk speaks SIP to us (see `trunk_health`).
            TxEvent::Response { tx, .. } => (*tx, true),
            TxEvent::Timeout(TxId::Client(tx)) | TxEvent::TransportError(TxId::Client(tx)) => {
                (*tx, false)
            }
            TxEvent::Terminated(TxId::Client(tx)) => {
                if self.keepalive.pings.remove(tx).is_none() {
                    return Some(event);
                }
                shrink_map(&mut self.keepalive.pings);
                return None;
            }
            _ => return Some(event),
        };
        let Some(&ping) = self.keepalive.pings.get(&tx) else {
            return Some(event);
        };
        let health = &mut self.keepalive.health;
        let transition = if answered {
            health.on_answered(now, ping)
        } else {
            health.on_unanswered(now, ping)
        };
        self.log_trunk_transition(transition);
        None
    }

    /// `Retry-After` (seconds) for a new INVITE while the trunk is down: the ping interval,
    /// at least 1 s. `None`: the trunk is not down.
    pub(super) fn trunk_down_retry_after(&self) -> Option<u64> {
        let health = &self.keepalive.health;
        let interval = health.interval().filter(|_| health.is_down())?;
        Some(interval.as_secs().max(1))
    }

    /// Refuses a new INVITE because the trunk is down: 503, `Retry-After`, and a Reason
    /// saying so. Called before the intent is claimed, so the user can dial again once the
    /// trunk answers.
    pub(super) fn refuse_trunk_down(
        &mut self,
        now: Instant,
        tx: ServerTxId,
        request: &Request,
        retry_after: u64,
    ) {
        const STATUS: u16 = 503;
        self.count_refusal(now, STATUS, Refusal::TrunkDown);
        let tag = sip_core::ids::new_tag();
        let mut response = local_response(
            &self.config.local,
            request,
            STATUS,
            Some(&tag),
            Some("Trunk unavailable"),
        );
        response
            .headers
            .push(HeaderName::parse("Retry-After"), retry_after.to_string());
        self.send_response(now, tx, response);
    }

    fn log_trunk_transition(&self, transition: Option<Transition>) {
        let trunk = self.config.trunk.addr;
        match transition {
            Some(Transition::Down { lost }) => tracing::warn!(
                %trunk,
                lost,
                "trunk down: OPTIONS pings unanswered (trunk.ping_secs); new calls get 503 \
                 until it answers again"
            ),
            Some(Transition::Up { down_for }) => tracing::info!(
                %trunk,
                ?down_for,
                "trunk up: it answered an OPTIONS ping; new calls are taken again"
            ),
            None => {}
        }
    }
}
