//! Moves media commands and events between the sans-IO [`Engine`] and the [`MediaDriver`]
//! that owns the relay sockets, as the SIP task moves datagrams between the engine and the
//! transport. The engine decides (which streams exist, on which ports, where each leg's media
//! goes); the driver does (binds, forwards, counts).
//!
//! Two vocabularies meet here because `b2bua` and `media` do not know each other: the engine's
//! [`Leg`](b2bua::Leg) and counters map one-to-one onto the driver's.

use std::time::Instant;

use b2bua::media::{DirectionStats, MediaCommand, MediaEvent, StreamCounters, StreamId};
use b2bua::{Engine, Leg};
use media::{DriverConfig, MediaDriver};

/// The media driver of one callbridge process, keyed by the engine's stream ids.
pub struct MediaBridge {
    driver: MediaDriver<StreamId>,
}

impl MediaBridge {
    /// A driver whose relay tasks run on the current tokio runtime.
    pub fn new(config: DriverConfig) -> MediaBridge {
        MediaBridge {
            driver: MediaDriver::new(config, tokio::runtime::Handle::current()),
        }
    }

    /// Carries out every media command the engine has queued. Each event the driver answers
    /// with goes straight back into the engine (which may queue more commands, carried out
    /// in the same call), so that when this returns the engine and the driver agree.
    pub fn pump(&mut self, engine: &mut Engine, now: Instant) {
        while let Some(command) = engine.poll_media_command() {
            match command {
                MediaCommand::Open {
                    stream,
                    a_facing,
                    b_facing,
                    signalling,
                } => {
                    let signalling = media::SignallingIps {
                        a: signalling.a,
                        b: signalling.b,
                    };
                    let opened = self
                        .driver
                        .open(stream, a_facing.rtp, b_facing.rtp, signalling);
                    let event = match opened {
                        Ok(()) => MediaEvent::Opened { stream },
                        Err(error) => MediaEvent::OpenFailed {
                            stream,
                            port: match &error {
                                media::OpenError::Bind { port, .. } => Some(*port),
                                _ => None,
                            },
                            reason: error.to_string(),
                        },
                    };
                    engine.handle_media_event(now, event);
                }
                MediaCommand::SetRemote {
                    stream,
                    leg,
                    rtp,
                    rtcp,
                } => {
                    self.driver.set_remote(stream, driver_leg(leg), rtp, rtcp);
                }
                MediaCommand::Close { stream } => {
                    // The final counters, read before the stream goes, are the record's.
                    let last = self.driver.counters(stream);
                    self.driver.close(stream);
                    if let Some(counters) = last {
                        let counters = engine_counters(counters);
                        engine.handle_media_event(now, MediaEvent::Counters { stream, counters });
                    }
                }
                MediaCommand::Report { stream } => {
                    if let Some(counters) = self.driver.counters(stream) {
                        let counters = engine_counters(counters);
                        engine.handle_media_event(now, MediaEvent::Counters { stream, counters });
                    }
                }
            }
        }
    }

    /// The periodic report: every open stream's counters into the engine.
    pub fn report_all(&mut self, engine: &mut Engine, now: Instant) {
        let all: Vec<(StreamId, media::StreamCounters)> = self.driver.all_counters().collect();
        for (stream, counters) in all {
            let counters = engine_counters(counters);
            engine.handle_media_event(now, MediaEvent::Counters { stream, counters });
        }
        self.pump(engine, now);
    }

    /// Tells the engine which ports of its relay range cannot be bound now (another socket
    /// holds them: the SIP or API port, another process), so that no call is given them.
    /// Run once at start-up, after every listener of this process is bound.
    pub fn probe(&self, engine: &mut Engine, first: u16, last: u16, now: Instant) -> usize {
        let busy = self.driver.unbindable_ports(first, last);
        for &port in &busy {
            engine.handle_media_event(now, MediaEvent::PortUnavailable { port });
        }
        busy.len()
    }

    /// Streams the driver relays now.
    pub fn stream_count(&self) -> usize {
        self.driver.len()
    }
}

fn driver_leg(leg: Leg) -> media::Leg {
    match leg {
        Leg::A => media::Leg::A,
        Leg::B => media::Leg::B,
    }
}

fn engine_counters(c: media::StreamCounters) -> StreamCounters {
    let direction = |d: media::DirectionCounters| DirectionStats {
        packets: d.packets,
        bytes: d.bytes,
        dropped: d.dropped,
    };
    StreamCounters {
        a_to_b: direction(c.a_to_b),
        b_to_a: direction(c.b_to_a),
        latched_a: c.latched_a,
        latched_b: c.latched_b,
        last_packet_at: c.last_packet_at,
    }
}
