//! Media anchoring: every SDP forwarded is rewritten to point at relay ports, and RTP/RTCP of
//! both legs flows through [`super::relay`].
//!
//! Each stream (`m=` line, by position) gets, the first time it appears with a non-zero port in
//! either direction, an A-facing and a B-facing port pair. SDP from A (towards B) records A's
//! addresses and advertises the B-facing ports; SDP from B (towards A) records B's and
//! advertises the A-facing ports. Re-offers reuse the ports; a changed address resets that
//! leg's latch.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::sync::mpsc::UnboundedSender;

use super::ports::{BoundPair, PortPool};
use super::relay::{spawn_watchdog, Activity, MediaLeg, MediaNotice, StreamRelay, WatchdogGuard};
use super::sdp::{RelayPorts, SessionDescription};
use super::{MediaError, MediaFactory, MediaSession, MediaStats};

/// Streams (`m=` lines) one session description may carry; more is answered 488. Audio and
/// video with room to spare: each relayed stream holds two port pairs and four sockets.
pub const MAX_STREAMS: usize = 8;

/// What anchoring needs from the configuration (`media.*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaConfig {
    /// The address written in `c=` lines: where the legs send media.
    pub public_ip: IpAddr,
    /// The address relay sockets bind to (often `0.0.0.0`, or the same as `public_ip`).
    pub bind_ip: IpAddr,
    /// First port of the relay range (`media.rtp_ports`), inclusive.
    pub first_port: u16,
    /// Last port of the relay range, inclusive.
    pub last_port: u16,
    /// After this long without a valid packet in either direction, once both legs have sent
    /// SDP, a [`super::MediaNoticeKind::Inactive`] notice is sent. Zero disables it.
    pub inactivity: Duration,
}

struct Shared {
    config: MediaConfig,
    pool: Arc<PortPool>,
    notices: UnboundedSender<MediaNotice>,
    runtime: Handle,
}

/// The [`MediaFactory`] that anchors media.
#[derive(Clone)]
pub struct AnchoredMedia {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AnchoredMedia {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnchoredMedia")
            .field("config", &self.shared.config)
            .field("pool", &self.shared.pool)
            .finish()
    }
}

impl AnchoredMedia {
    /// A factory whose relays run on the current tokio runtime.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime; use [`AnchoredMedia::with_runtime`] there.
    pub fn new(config: MediaConfig, notices: UnboundedSender<MediaNotice>) -> Self {
        Self::with_runtime(config, notices, Handle::current())
    }

    /// A factory whose relays run on `runtime` (which must have IO and time enabled).
    pub fn with_runtime(
        config: MediaConfig,
        notices: UnboundedSender<MediaNotice>,
        runtime: Handle,
    ) -> Self {
        let pool = PortPool::new(config.first_port, config.last_port);
        AnchoredMedia {
            shared: Arc::new(Shared {
                config,
                pool,
                notices,
                runtime,
            }),
        }
    }

    /// The shared port pool (for status: free pairs, capacity).
    pub fn pool(&self) -> &Arc<PortPool> {
        &self.shared.pool
    }
}

impl MediaFactory for AnchoredMedia {
    /// One audio stream needs two port pairs (leg A facing and leg B facing).
    fn has_capacity(&self) -> bool {
        self.shared.pool.available() >= 2
    }

    fn new_session(&self, callid: &str) -> Result<Box<dyn MediaSession>, MediaError> {
        Ok(Box::new(AnchoredSession {
            callid: callid.to_owned(),
            shared: self.shared.clone(),
            streams: Vec::new(),
            activity: Arc::new(Activity::default()),
            seen: [false; 2],
            watchdog: None,
        }))
    }
}

/// The media of one anchored call. Dropping it stops its relays and frees its ports.
pub struct AnchoredSession {
    callid: String,
    shared: Arc<Shared>,
    /// By `m=` position; `None` for a stream never enabled.
    streams: Vec<Option<StreamRelay>>,
    activity: Arc<Activity>,
    /// Whether leg A / leg B has sent SDP.
    seen: [bool; 2],
    watchdog: Option<WatchdogGuard>,
}

impl std::fmt::Debug for AnchoredSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnchoredSession")
            .field("callid", &self.callid)
            .field("streams", &self.streams)
            .finish()
    }
}

impl AnchoredSession {
    /// The relay of stream `index`, if it has one.
    pub fn stream(&self, index: usize) -> Option<&StreamRelay> {
        self.streams.get(index).and_then(Option::as_ref)
    }

    /// SDP from `from`, to be sent on the other leg.
    fn forward(&mut self, from: MediaLeg, body: &Bytes) -> Result<Bytes, MediaError> {
        let mut sdp = SessionDescription::parse(body)?;
        let streams = sdp.streams();
        // Each stream holds two port pairs for the whole call: one SDP must not be able to
        // take the pool (a 64 KiB INVITE fits thousands of `m=` lines).
        if streams.len() > MAX_STREAMS {
            return Err(MediaError::Malformed(format!(
                "{} media streams; at most {MAX_STREAMS} are relayed",
                streams.len()
            )));
        }

        // Allocate every new stream's ports first, so that a failure leaves nothing behind.
        let mut fresh: Vec<(usize, BoundPair, BoundPair)> = Vec::new();
        for stream in &streams {
            if stream.port != 0 && self.stream(stream.index).is_none() {
                let pool = &self.shared.pool;
                let bind_ip = self.shared.config.bind_ip;
                let a_facing = pool.allocate(bind_ip)?;
                let b_facing = pool.allocate(bind_ip)?;
                fresh.push((stream.index, a_facing, b_facing));
            }
        }
        for (index, a_facing, b_facing) in fresh {
            if self.streams.len() <= index {
                self.streams.resize_with(index + 1, || None);
            }
            tracing::debug!(
                callid = %self.callid,
                index,
                a = a_facing.rtp_port(),
                b = b_facing.rtp_port(),
                "media stream anchored"
            );
            self.streams[index] = Some(StreamRelay::start(
                &self.shared.runtime,
                a_facing,
                b_facing,
                self.activity.clone(),
            ));
        }

        let mut relay: Vec<Option<RelayPorts>> = vec![None; streams.len()];
        for stream in &streams {
            let Some(relay_stream) = self.stream(stream.index) else {
                continue;
            };
            relay_stream.update_remote(from, stream.rtp, stream.rtcp);
            relay[stream.index] = Some(match from {
                MediaLeg::A => relay_stream.b_ports(),
                MediaLeg::B => relay_stream.a_ports(),
            });
        }
        sdp.rewrite(self.shared.config.public_ip, &relay);

        self.seen[from_index(from)] = true;
        let inactivity = self.shared.config.inactivity;
        if self.seen == [true; 2] && self.watchdog.is_none() && !inactivity.is_zero() {
            self.watchdog = Some(spawn_watchdog(
                &self.shared.runtime,
                self.activity.clone(),
                inactivity,
                self.callid.clone(),
                self.shared.notices.clone(),
            ));
        }
        Ok(sdp.to_bytes())
    }
}

fn from_index(leg: MediaLeg) -> usize {
    match leg {
        MediaLeg::A => 0,
        MediaLeg::B => 1,
    }
}

impl MediaSession for AnchoredSession {
    fn towards_b(&mut self, sdp: &Bytes) -> Result<Bytes, MediaError> {
        self.forward(MediaLeg::A, sdp)
    }

    fn towards_a(&mut self, sdp: &Bytes) -> Result<Bytes, MediaError> {
        self.forward(MediaLeg::B, sdp)
    }

    fn stats(&self) -> MediaStats {
        let mut stats = MediaStats {
            idle_ms: self.activity.idle().map(|idle| idle.as_millis() as u64),
            ..MediaStats::default()
        };
        for stream in self.streams.iter().flatten() {
            let s = stream.stats();
            stats.streams += 1;
            for (total, part) in [(&mut stats.a_to_b, s.a_to_b), (&mut stats.b_to_a, s.b_to_a)] {
                total.packets += part.packets;
                total.bytes += part.bytes;
                total.dropped += part.dropped;
            }
            stats.latched_a = stats.latched_a.or(s.latched_a);
            stats.latched_b = stats.latched_b.or(s.latched_b);
        }
        stats
    }
}
