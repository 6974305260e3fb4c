//! Media events from the driver, the media inactivity check, and the media counters the API
//! and metrics read.
//!
//! Inactivity is two engine timers: [`CallTimer::MediaInactivity`] fires when the last
//! activity known (the latest packet any stream reported, or when both legs had sent SDP) is
//! `media.inactivity_secs` old; it asks the driver for fresh counters
//! ([`MediaCommand::Report`](crate::media::MediaCommand::Report)) and arms
//! [`CallTimer::MediaCheck`] a moment later, which hangs up if the fresh counters still show
//! nothing, or else waits again from the newer activity.

use std::time::{Duration, Instant};

use super::Engine;
use crate::call::{CallKey, CallTimer};
use crate::media::{DirectionStats, MediaEvent};
use crate::registry::{CallState, EndCause, Party};

/// How long after asking for fresh counters the inactivity decision is taken. The driver
/// answers a report at once (the binary feeds it back in the same step), so this only has
/// to order the decision after the answer.
pub(super) const MEDIA_REPORT_WAIT: Duration = Duration::from_millis(100);

impl Engine {
    /// An event from the media driver.
    pub fn handle_media_event(&mut self, now: Instant, event: MediaEvent) {
        match event {
            MediaEvent::Opened { stream } => {
                if let Some(call) = self.calls.get(&stream.call) {
                    tracing::trace!(parent: &call.span, index = stream.index, "media stream open");
                }
            }
            MediaEvent::PortUnavailable { port } => {
                if self.media.pool.withdraw(port) {
                    tracing::debug!(port, "media port unavailable; its pair is not used");
                }
            }
            MediaEvent::OpenFailed {
                stream,
                port,
                reason,
            } => {
                self.stats.media_open_failures += 1;
                if let Some(port) = port {
                    self.media.pool.withdraw(port);
                }
                let Some(call) = self.calls.get(&stream.call) else {
                    return;
                };
                if call.state == CallState::Ended {
                    return;
                }
                tracing::warn!(parent: &call.span, index = stream.index, %reason,
                    "media stream could not be opened; ending the call");
                self.hang_up(
                    now,
                    stream.call,
                    Party::System,
                    EndCause::ResourcesExhausted,
                );
            }
            MediaEvent::Counters { stream, counters } => {
                let Some(call) = self.calls.get_mut(&stream.call) else {
                    return;
                };
                let added = call.media.on_counters(stream.index, counters);
                if call.media.open_count() == 0 {
                    // The final counters of a closed stream: the call's totals already went
                    // to the ended calls' sum when it ended; add what came since.
                    self.stats.media_ended.add(&added);
                    let stats = call.media.stats(now);
                    self.control
                        .registry()
                        .set_media(now, &call.intent.callid, stats);
                }
            }
        }
        self.process_events(now);
    }

    /// Starts the inactivity timer of calls whose legs have both sent SDP.
    pub(super) fn arm_media_timers(&mut self, now: Instant) {
        let inactivity = self.config.media.inactivity;
        let keys = std::mem::take(&mut self.media.newly_active);
        if inactivity.is_zero() {
            return;
        }
        for key in keys {
            let start = self
                .calls
                .get(&key)
                .and_then(|call| call.media.last_activity())
                .unwrap_or(now);
            self.arm_call_timer(key, CallTimer::MediaInactivity, start + inactivity);
        }
    }

    /// [`CallTimer::MediaInactivity`]: ask for fresh counters, decide at `MediaCheck`.
    pub(super) fn media_inactivity_due(&mut self, now: Instant, key: CallKey) {
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        call.media.request_reports(&mut self.media);
        self.arm_call_timer(key, CallTimer::MediaCheck, now + MEDIA_REPORT_WAIT);
    }

    /// [`CallTimer::MediaCheck`]: hang up if no packet came for the inactivity timeout.
    pub(super) fn media_check_due(&mut self, now: Instant, key: CallKey) {
        let inactivity = self.config.media.inactivity;
        let Some(call) = self.calls.get(&key) else {
            return;
        };
        let last = call.media.last_activity().unwrap_or(now);
        if call.media.on_hold() {
            // Silent on purpose: a held call's liveness is its session timers' to judge.
            self.arm_call_timer(key, CallTimer::MediaInactivity, now + inactivity);
            return;
        }
        if now.saturating_duration_since(last) < inactivity {
            self.arm_call_timer(key, CallTimer::MediaInactivity, last + inactivity);
            return;
        }
        let _entered = call.span.clone().entered();
        tracing::info!(?inactivity, "no media in either direction; hanging up");
        self.hang_up(now, key, Party::System, EndCause::MediaTimeout);
    }

    /// Copies every live call's media counters, as last reported, into its call record (for
    /// the API). The runtime calls this about once a second, after the driver's report.
    pub fn publish_media_stats(&self, now: Instant) {
        for call in self.calls.values() {
            if call.media.open_count() > 0 {
                self.control
                    .registry()
                    .set_media(now, &call.intent.callid, call.media.stats(now));
            }
        }
    }

    /// Packets and bytes relayed (both directions together) and dropped, by ended calls and
    /// live ones, as last reported by the driver.
    pub fn media_totals(&self) -> DirectionStats {
        let mut total = self.stats.media_ended;
        for call in self.calls.values() {
            if call.media.open_count() > 0 {
                total.add(&call.media.totals());
            }
        }
        total
    }

    /// Relay port pairs free now, and how many the range holds (withdrawn pairs, which
    /// cannot be bound, not counted).
    pub fn media_ports(&self) -> (usize, usize) {
        let pool = &self.media.pool;
        (pool.available(), pool.capacity() - pool.withdrawn())
    }

    /// Streams open in the driver, as far as the engine knows (every `Open` not yet
    /// followed by a `Close`): 0 once every call has ended.
    pub fn media_stream_count(&self) -> usize {
        self.calls
            .values()
            .map(|call| call.media.open_count())
            .sum()
    }
}
