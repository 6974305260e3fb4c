//! The engine's side of callbridge's registration at the trunk ([`crate::registration`]):
//! its REGISTERs go through the engine's transaction layer to the trunk, and their answers
//! and failures come back here instead of to a call.

use std::time::Instant;

use sip_core::transaction::{ClientTxId, TxId};
use sip_core::Response;

use super::Engine;
use crate::registration::{Registration, RegistrationState, RegistrationStats};

impl Engine {
    /// Starts the registration (`trunk.register`), its first REGISTER due at `now`. Does
    /// nothing when the configuration has none, or when it has started already.
    pub fn start_registration(&mut self, now: Instant) {
        if self.registration.is_some() {
            return;
        }
        if let Some(config) = self.config.registration.clone() {
            self.registration = Some(Registration::new(config, now));
            self.drive_registration(now);
        }
    }

    /// Where the registration stands; `None` when callbridge does not register.
    pub fn registration_state(&self) -> Option<RegistrationState> {
        self.registration.as_ref().map(Registration::state)
    }

    pub fn registration_stats(&self) -> Option<RegistrationStats> {
        self.registration.as_ref().map(Registration::stats)
    }

    /// Sends the REGISTER that is due, if any.
    pub(super) fn drive_registration(&mut self, now: Instant) {
        let Some(registration) = self.registration.as_mut() else {
            return;
        };
        let Some(request) = registration.poll_request(now) else {
            return;
        };
        let target = self
            .trunk_targets
            .first()
            .copied()
            .unwrap_or(self.config.trunk);
        match self.layer.send_request(now, request, target) {
            Ok(tx) => {
                let sent = self.layer.client_request(tx).cloned();
                if let (Some(registration), Some(sent)) = (self.registration.as_mut(), sent) {
                    registration.sent(tx, sent);
                }
            }
            Err(error) => {
                tracing::warn!(%error, "REGISTER not sent");
                registration.send_failed(now);
            }
        }
    }

    /// Whether `tx` carries the registration's REGISTER.
    pub(super) fn is_registration(&self, tx: ClientTxId) -> bool {
        self.registration.as_ref().is_some_and(|r| r.owns(tx))
    }

    pub(super) fn on_registration_response(&mut self, now: Instant, response: &Response) {
        if let Some(registration) = self.registration.as_mut() {
            registration.on_response(now, response);
        }
        self.drive_registration(now);
    }

    /// A transaction failed: the registration's own, or not (then `false`).
    pub(super) fn on_registration_failure(&mut self, now: Instant, id: TxId) -> bool {
        let TxId::Client(tx) = id else {
            return false;
        };
        if !self.is_registration(tx) {
            return false;
        }
        if let Some(registration) = self.registration.as_mut() {
            registration.on_failure(now);
        }
        true
    }

    /// Shutdown: the binding is removed (`Expires: 0`). The runtime's drain waits for that
    /// transaction like any other.
    pub(super) fn remove_registration(&mut self, now: Instant) {
        if let Some(registration) = self.registration.as_mut() {
            if registration.remove(now) {
                tracing::info!("removing the registration at the trunk");
            }
        }
        self.drive_registration(now);
    }
}
