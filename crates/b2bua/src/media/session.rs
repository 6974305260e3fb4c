//! The media of one call: which streams it relays, on which ports, where each leg wants its
//! media, and what the driver last counted.
//!
//! Each stream (`m=` line, by position) gets, the first time it appears with a non-zero port in
//! either direction, an A-facing and a B-facing port pair from the engine's [`PortPool`], and
//! an [`MediaCommand::Open`]. SDP from A (towards B) records A's addresses
//! ([`MediaCommand::SetRemote`]) and advertises the B-facing ports; SDP from B (towards A)
//! records B's and advertises the A-facing ports. Re-offers reuse the ports; a changed address
//! makes the driver forget that leg's latch. [`CallMedia::close`] closes every stream and gives
//! its ports back.
//!
//! What each leg is sent names nothing of the other ([`SessionDescription::rewrite`]): its `o=`
//! is callbridge's own, kept per direction by `Outgoing` — a random session id for the call
//! and a version that moves on by one exactly when the description sent to that leg changes.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use rand::Rng;

use super::sdp::{Origin, RelayPorts, SessionDescription};
use super::{
    MediaCommand, MediaConfig, MediaError, MediaStats, PortPool, SignallingIps, StreamCounters,
    StreamId, MAX_STREAMS,
};
use crate::call::{CallKey, Leg};

/// The engine's side of the data plane: the `media.*` settings, the relay port pool and the
/// commands waiting for the driver. One per engine, lent to each call's [`CallMedia`].
#[derive(Debug)]
pub struct MediaPlane {
    pub config: MediaConfig,
    pub pool: PortPool,
    pub commands: VecDeque<MediaCommand>,
    /// Calls whose two legs have both sent SDP since the engine last looked: their
    /// inactivity timer starts.
    pub newly_active: Vec<CallKey>,
}

impl MediaPlane {
    pub fn new(config: MediaConfig) -> MediaPlane {
        let pool = PortPool::new(config.first_port, config.last_port);
        MediaPlane {
            config,
            pool,
            commands: VecDeque::new(),
            newly_active: Vec::new(),
        }
    }

    /// Whether a new call's media (one audio stream: an A-facing and a B-facing pair) can be
    /// anchored now. Checked before an intent is consumed, so that a call refused for lack of
    /// ports leaves the user's intent in place for a retry.
    pub fn has_capacity(&self) -> bool {
        self.pool.available() >= 2
    }
}

/// A leg's addresses for one stream, from its latest SDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Remote {
    rtp: Option<SocketAddr>,
    rtcp: Option<SocketAddr>,
}

/// One relayed stream of a call.
#[derive(Debug)]
struct Stream {
    a_facing: RelayPorts,
    b_facing: RelayPorts,
    /// Indexed by [`Leg::index`]; `None` until that leg's SDP mentions the stream.
    remote: [Option<Remote>; 2],
    /// The driver's latest report.
    counters: StreamCounters,
    /// Closed (ports given back); kept for the final counters.
    closed: bool,
}

/// What callbridge has sent one leg: its own `o=` towards that leg, and the last body, so
/// that the version moves on exactly when the description does (RFC 3264 §8: a re-offer of
/// the same session keeps the version, any change increments it by one). The only owner of
/// the `o=` state of a direction.
#[derive(Debug)]
struct Outgoing {
    origin: Origin,
    /// A 64-bit keyed hash of the last body sent, `None` before the first: what tells a
    /// changed description from a repeated one, in 8 bytes rather than a copy of the body
    /// kept for the whole call (the chance that a change goes unseen is 2^-64).
    last: Option<u64>,
}

/// The hasher of [`Outgoing::last`]: SipHash with a key drawn per process, so that no peer
/// can craft two bodies that collide.
fn body_hash(body: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    KEYS.get_or_init(Default::default).hash_one(body)
}

impl Outgoing {
    fn new() -> Outgoing {
        // Random, so that nothing ties it to the sender's `o=`, to the other direction or to
        // another call. Id and version must fit a signed 64-bit integer (RFC 3264 §5); below
        // 2^62 the id keeps the margin that RFC asks of a first version.
        let session_id = rand::thread_rng().gen_range(1..1u64 << 62);
        Outgoing {
            origin: Origin {
                session_id,
                version: 1,
            },
            last: None,
        }
    }

    /// Rewrites `sdp` for this leg (see [`SessionDescription::rewrite`]) and returns the body
    /// to send: with the current version if nothing changed since the last body, else the
    /// next one.
    fn write(
        &mut self,
        sdp: &mut SessionDescription,
        plane: &MediaPlane,
        relay: &[Option<RelayPorts>],
    ) -> Bytes {
        sdp.rewrite(plane.config.public_ip, relay, self.origin);
        let mut body = sdp.to_bytes();
        // Both written with the same `o=`: they differ exactly when the content does.
        if self.last.is_some_and(|last| last != body_hash(&body)) {
            self.origin.version = self.origin.version.saturating_add(1);
            sdp.set_origin(self.origin);
            body = sdp.to_bytes();
        }
        // The body as sent, with the version in force: the next one is written with it too.
        self.last = Some(body_hash(&body));
        body
    }
}

/// The media of one call. See the module documentation.
#[derive(Debug)]
pub struct CallMedia {
    call: CallKey,
    /// Given to every stream the call opens.
    signalling: SignallingIps,
    /// By `m=` position; `None` for a stream never enabled.
    streams: Vec<Option<Stream>>,
    /// What leg A / leg B has been sent (by [`Leg::index`]).
    outgoing: [Outgoing; 2],
    /// Whether leg A / leg B has sent SDP.
    seen: [bool; 2],
    /// When both legs had sent SDP: where the inactivity window starts.
    both_seen_at: Option<Instant>,
    /// The SDP callbridge last sent on leg A / leg B (a session refresh by re-INVITE offers
    /// it again, unchanged).
    last_sent: [Option<Bytes>; 2],
    /// Whether the last SDP from leg A / leg B puts the call on hold (no stream sending
    /// both ways): such a call is silent on purpose.
    on_hold: [bool; 2],
}

impl CallMedia {
    /// The media of call `call`, whose legs signal from `signalling` (leg A: where its INVITE
    /// came from; leg B: the trunk).
    pub fn new(call: CallKey, signalling: SignallingIps) -> CallMedia {
        CallMedia {
            call,
            signalling,
            streams: Vec::new(),
            outgoing: [Outgoing::new(), Outgoing::new()],
            seen: [false; 2],
            both_seen_at: None,
            last_sent: [None, None],
            on_hold: [false; 2],
        }
    }

    /// An SDP body from leg A, about to be sent on leg B.
    pub fn towards_b(
        &mut self,
        now: Instant,
        sdp: &Bytes,
        plane: &mut MediaPlane,
    ) -> Result<Bytes, MediaError> {
        self.forward(now, Leg::A, sdp, plane)
    }

    /// An SDP body from leg B, about to be sent on leg A.
    pub fn towards_a(
        &mut self,
        now: Instant,
        sdp: &Bytes,
        plane: &mut MediaPlane,
    ) -> Result<Bytes, MediaError> {
        self.forward(now, Leg::B, sdp, plane)
    }

    fn stream_id(&self, index: usize) -> StreamId {
        StreamId {
            call: self.call,
            index,
        }
    }

    fn open_stream(&self, index: usize) -> Option<&Stream> {
        self.streams
            .get(index)
            .and_then(Option::as_ref)
            .filter(|s| !s.closed)
    }

    /// SDP from `from`, to be sent on the other leg.
    fn forward(
        &mut self,
        now: Instant,
        from: Leg,
        body: &Bytes,
        plane: &mut MediaPlane,
    ) -> Result<Bytes, MediaError> {
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

        // Take every new stream's ports first, so that a failure leaves nothing behind.
        let mut fresh: Vec<(usize, u16, u16)> = Vec::new();
        for stream in &streams {
            let known = self.streams.get(stream.index).is_some_and(Option::is_some);
            if stream.port != 0 && !known {
                let a = plane.pool.reserve();
                let b = plane.pool.reserve();
                let (Some(a), Some(b)) = (a, b) else {
                    for port in a
                        .into_iter()
                        .chain(b)
                        .chain(fresh.iter().flat_map(|f| [f.1, f.2]))
                    {
                        plane.pool.release(port);
                    }
                    return Err(MediaError::Exhausted);
                };
                fresh.push((stream.index, a, b));
            }
        }
        for (index, a, b) in fresh {
            if self.streams.len() <= index {
                self.streams.resize_with(index + 1, || None);
            }
            let ports = |rtp: u16| RelayPorts { rtp, rtcp: rtp + 1 };
            let stream = Stream {
                a_facing: ports(a),
                b_facing: ports(b),
                remote: [None; 2],
                counters: StreamCounters::default(),
                closed: false,
            };
            tracing::debug!(index, a, b, "media stream anchored");
            plane.commands.push_back(MediaCommand::Open {
                stream: self.stream_id(index),
                a_facing: stream.a_facing,
                b_facing: stream.b_facing,
                signalling: self.signalling,
            });
            self.streams[index] = Some(stream);
        }

        let mut relay: Vec<Option<RelayPorts>> = vec![None; streams.len()];
        for info in &streams {
            let id = self.stream_id(info.index);
            let Some(Some(stream)) = self.streams.get_mut(info.index) else {
                continue;
            };
            if stream.closed {
                continue;
            }
            let remote = Remote {
                rtp: info.rtp,
                rtcp: info.rtcp,
            };
            if stream.remote[from.index()] != Some(remote) {
                stream.remote[from.index()] = Some(remote);
                plane.commands.push_back(MediaCommand::SetRemote {
                    stream: id,
                    leg: from,
                    rtp: remote.rtp,
                    rtcp: remote.rtcp,
                });
            }
            relay[info.index] = Some(match from {
                Leg::A => stream.b_facing,
                Leg::B => stream.a_facing,
            });
        }
        self.on_hold[from.index()] = super::sdp::is_hold(body);
        let body = self.outgoing[from.other().index()].write(&mut sdp, plane, &relay);
        self.last_sent[from.other().index()] = Some(body.clone());

        self.seen[from.index()] = true;
        if self.seen == [true; 2] && self.both_seen_at.is_none() {
            self.both_seen_at = Some(now);
            plane.newly_active.push(self.call);
        }
        Ok(body)
    }

    /// The SDP callbridge last sent on `leg`.
    pub fn last_sent(&self, leg: Leg) -> Option<Bytes> {
        self.last_sent[leg.index()].clone()
    }

    /// Whether either leg's last SDP holds the call (`a=inactive`, `a=sendonly`,
    /// `a=recvonly`, or `c=` 0.0.0.0, RFC 3264 §8.4): no media is expected then, and the
    /// media inactivity timer leaves the call to its session timers.
    pub fn on_hold(&self) -> bool {
        self.on_hold.iter().any(|&held| held)
    }

    /// Closes every stream (the driver closes its sockets) and gives its ports back. The
    /// counters stay, for the call's final record.
    pub fn close(&mut self, plane: &mut MediaPlane) {
        for index in 0..self.streams.len() {
            let id = self.stream_id(index);
            let Some(Some(stream)) = self.streams.get_mut(index) else {
                continue;
            };
            if stream.closed {
                continue;
            }
            stream.closed = true;
            plane.commands.push_back(MediaCommand::Close { stream: id });
            plane.pool.release(stream.a_facing.rtp);
            plane.pool.release(stream.b_facing.rtp);
        }
    }

    /// Asks the driver for every open stream's counters.
    pub fn request_reports(&self, plane: &mut MediaPlane) {
        for index in 0..self.streams.len() {
            if self.open_stream(index).is_some() {
                plane.commands.push_back(MediaCommand::Report {
                    stream: self.stream_id(index),
                });
            }
        }
    }

    /// Takes in the driver's counters of stream `index` (also after it closed: the final
    /// ones). Returns the counts added since the previous report, for the engine's totals.
    pub fn on_counters(&mut self, index: usize, counters: StreamCounters) -> super::DirectionStats {
        let Some(Some(stream)) = self.streams.get_mut(index) else {
            return super::DirectionStats::default();
        };
        let delta =
            |new: &super::DirectionStats, old: &super::DirectionStats| super::DirectionStats {
                packets: new.packets.saturating_sub(old.packets),
                bytes: new.bytes.saturating_sub(old.bytes),
                dropped: new.dropped.saturating_sub(old.dropped),
            };
        let mut added = delta(&counters.a_to_b, &stream.counters.a_to_b);
        added.add(&delta(&counters.b_to_a, &stream.counters.b_to_a));
        stream.counters = counters;
        added
    }

    /// Both legs have sent SDP: media is expected, and the inactivity timer runs.
    pub fn both_legs_seen(&self) -> bool {
        self.both_seen_at.is_some()
    }

    /// The start of the current inactivity window: the last valid packet any stream
    /// reported, or when both legs had sent SDP if that is later; `None` before either.
    pub fn last_activity(&self) -> Option<Instant> {
        self.streams
            .iter()
            .flatten()
            .filter_map(|s| s.counters.last_packet_at)
            .chain(self.both_seen_at)
            .max()
    }

    /// Streams that have relay ports (open or closed).
    pub fn stream_count(&self) -> usize {
        self.streams.iter().flatten().count()
    }

    /// Streams the driver still relays.
    pub fn open_count(&self) -> usize {
        self.streams.iter().flatten().filter(|s| !s.closed).count()
    }

    /// Packets relayed and dropped in both directions together, as last reported.
    pub fn totals(&self) -> super::DirectionStats {
        let mut total = super::DirectionStats::default();
        for stream in self.streams.iter().flatten() {
            total.add(&stream.counters.a_to_b);
            total.add(&stream.counters.b_to_a);
        }
        total
    }

    /// What this call's media did, as last reported, for the API.
    pub fn stats(&self, now: Instant) -> MediaStats {
        let mut stats = MediaStats {
            idle_ms: self
                .last_activity()
                .map(|at| now.saturating_duration_since(at).as_millis() as u64),
            ..MediaStats::default()
        };
        for stream in self.streams.iter().flatten() {
            let c = &stream.counters;
            stats.streams += 1;
            stats.a_to_b.add(&c.a_to_b);
            stats.b_to_a.add(&c.b_to_a);
            stats.latched_a = stats.latched_a.or(c.latched_a);
            stats.latched_b = stats.latched_b.or(c.latched_b);
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    fn plane(first: u16, last: u16) -> MediaPlane {
        MediaPlane::new(MediaConfig {
            public_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            first_port: first,
            last_port: last,
            inactivity: Duration::from_secs(60),
        })
    }

    fn sdp(ip: &str, ports: &[u16]) -> Bytes {
        let mut text = format!("v=0\r\no=x 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n");
        for port in ports {
            text.push_str(&format!(
                "m=audio {port} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
            ));
        }
        Bytes::from(text)
    }

    fn addr(text: &str) -> Option<SocketAddr> {
        Some(text.parse().unwrap())
    }

    fn drain(plane: &mut MediaPlane) -> Vec<MediaCommand> {
        plane.commands.drain(..).collect()
    }

    const CALL: CallKey = CallKey(7);

    /// The signalling IPs of the calls here: a PBX for leg A, the trunk for leg B.
    fn signalling() -> SignallingIps {
        SignallingIps {
            a: Some("10.0.0.100".parse().unwrap()),
            b: Some("198.51.100.1".parse().unwrap()),
        }
    }

    const S0: StreamId = StreamId {
        call: CALL,
        index: 0,
    };

    #[test]
    fn offer_and_answer_open_one_stream_and_point_each_leg_at_its_own_ports() {
        let mut plane = plane(30000, 30099);
        // The pool draws at random: the same seed replayed says which pairs come out.
        plane.pool = PortPool::with_seed(30000, 30099, 42);
        let mut replay = PortPool::with_seed(30000, 30099, 42);
        let (a, b) = (replay.reserve().unwrap(), replay.reserve().unwrap());
        assert_ne!(a, b);
        let t0 = Instant::now();
        let mut media = CallMedia::new(CALL, signalling());
        let to_b = media
            .towards_b(t0, &sdp("10.0.0.1", &[4000]), &mut plane)
            .unwrap();
        let text = String::from_utf8(to_b.to_vec()).unwrap();
        assert!(text.contains("c=IN IP4 192.0.2.1\r\n"), "{text}");
        assert!(
            text.contains(&format!("m=audio {b} RTP/AVP 0 101\r\n")),
            "{text}"
        );
        assert!(text.contains("a=rtpmap:101 telephone-event/8000\r\n"));
        assert_eq!(
            drain(&mut plane),
            [
                MediaCommand::Open {
                    stream: S0,
                    a_facing: RelayPorts {
                        rtp: a,
                        rtcp: a + 1
                    },
                    b_facing: RelayPorts {
                        rtp: b,
                        rtcp: b + 1
                    },
                    signalling: signalling(),
                },
                MediaCommand::SetRemote {
                    stream: S0,
                    leg: Leg::A,
                    rtp: addr("10.0.0.1:4000"),
                    rtcp: addr("10.0.0.1:4001"),
                },
            ]
        );
        assert!(!media.both_legs_seen());
        let to_a = media
            .towards_a(t0, &sdp("10.0.0.2", &[5000]), &mut plane)
            .unwrap();
        assert!(String::from_utf8(to_a.to_vec())
            .unwrap()
            .contains(&format!("m=audio {a} ")));
        assert_eq!(
            drain(&mut plane),
            [MediaCommand::SetRemote {
                stream: S0,
                leg: Leg::B,
                rtp: addr("10.0.0.2:5000"),
                rtcp: addr("10.0.0.2:5001"),
            }]
        );
        assert!(media.both_legs_seen());
        assert_eq!(media.last_activity(), Some(t0));
        // A re-offer with the same addresses changes nothing on the wire; a new address does.
        media
            .towards_b(t0, &sdp("10.0.0.1", &[4000]), &mut plane)
            .unwrap();
        assert!(drain(&mut plane).is_empty());
        media
            .towards_b(t0, &sdp("0.0.0.0", &[4000]), &mut plane)
            .unwrap();
        assert_eq!(
            drain(&mut plane),
            [MediaCommand::SetRemote {
                stream: S0,
                leg: Leg::A,
                rtp: None,
                rtcp: None,
            }]
        );
        assert_eq!(plane.pool.available(), 48);
        media.close(&mut plane);
        assert_eq!(drain(&mut plane), [MediaCommand::Close { stream: S0 }]);
        assert_eq!(plane.pool.available(), 50);
        media.close(&mut plane);
        assert!(drain(&mut plane).is_empty(), "closing twice closes nothing");
    }

    #[test]
    fn exhaustion_takes_no_port_and_too_many_streams_is_malformed() {
        let mut plane = plane(30000, 30005); // three pairs: one stream and a half
        let mut media = CallMedia::new(CALL, signalling());
        let t0 = Instant::now();
        assert_eq!(
            media.towards_b(t0, &sdp("10.0.0.1", &[4000, 4002]), &mut plane),
            Err(MediaError::Exhausted)
        );
        assert_eq!(plane.pool.available(), 3);
        assert!(drain(&mut plane).is_empty());
        let nine: Vec<u16> = (0..9).map(|i| 4000 + 2 * i).collect();
        assert!(matches!(
            media.towards_b(t0, &sdp("10.0.0.1", &nine), &mut plane),
            Err(MediaError::Malformed(_))
        ));
        assert_eq!(plane.pool.available(), 3);
        assert!(matches!(
            media.towards_b(t0, &Bytes::from_static(b"not sdp"), &mut plane),
            Err(MediaError::Malformed(_))
        ));
        assert_eq!(media.stream_count(), 0);
    }

    #[test]
    fn counters_feed_the_stats_and_the_inactivity_window() {
        let mut plane = plane(30000, 30099);
        let t0 = Instant::now();
        let mut media = CallMedia::new(CALL, signalling());
        media
            .towards_b(t0, &sdp("10.0.0.1", &[4000]), &mut plane)
            .unwrap();
        media
            .towards_a(t0, &sdp("10.0.0.2", &[5000]), &mut plane)
            .unwrap();
        let mut counters = StreamCounters {
            latched_a: addr("10.0.0.1:4000"),
            last_packet_at: Some(t0 + Duration::from_secs(5)),
            ..StreamCounters::default()
        };
        counters.a_to_b.packets = 10;
        counters.a_to_b.bytes = 1720;
        let added = media.on_counters(0, counters);
        assert_eq!((added.packets, added.bytes), (10, 1720));
        counters.a_to_b.packets = 12;
        counters.b_to_a.dropped = 1;
        let added = media.on_counters(0, counters);
        assert_eq!((added.packets, added.dropped), (2, 1));
        assert_eq!(media.last_activity(), Some(t0 + Duration::from_secs(5)));
        let stats = media.stats(t0 + Duration::from_secs(6));
        assert_eq!(stats.a_to_b.packets, 12);
        assert_eq!(stats.b_to_a.dropped, 1);
        assert_eq!(stats.latched_a, addr("10.0.0.1:4000"));
        assert_eq!((stats.streams, stats.idle_ms), (1, Some(1000)));
        assert_eq!(
            media.on_counters(3, counters),
            super::super::DirectionStats::default(),
            "a report for an unknown stream is ignored"
        );
    }

    /// The `o=` of a forwarded body: session id and version, after checking that it is
    /// callbridge's (no user name, the public address).
    fn origin_of(body: &Bytes) -> (u64, u64) {
        let text = std::str::from_utf8(body).unwrap();
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("o=- "))
            .unwrap_or_else(|| panic!("no o=- line in {text}"));
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields[2..], ["IN", "IP4", "192.0.2.1"], "{text}");
        (fields[0].parse().unwrap(), fields[1].parse().unwrap())
    }

    /// A body that names its sender (`who`) everywhere it can.
    fn revealing_sdp(who: &str, ip: &str, port: u16) -> Bytes {
        Bytes::from(format!(
            "v=0\r\no={who}-user 5550100 5550100 IN IP4 {ip}\r\ns=Call from {who}\r\n\
i=Desk of {who}\r\nu=http://{who}.example/\r\ne={who}@mail.example\r\np=+1 555 {port}\r\n\
c=IN IP4 {ip}\r\nt=0 0\r\na=ice-options:trickle\r\n\
m=audio {port} RTP/SAVP 0 101\r\na=ice-ufrag:{who}frag\r\na=ice-pwd:{who}pwd\r\n\
a=candidate:1 1 UDP 2130706431 {ip} {port} typ host\r\n\
a=candidate:2 1 UDP 1694498815 198.51.100.9 {port} typ srflx raddr {ip} rport {port}\r\n\
a=end-of-candidates\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n\
a=ptime:20\r\na=sendrecv\r\n"
        ))
    }

    #[test]
    fn each_leg_sees_callbridges_origin_and_nothing_of_the_other_leg() {
        let mut plane = plane(30000, 30099);
        let t0 = Instant::now();
        let mut media = CallMedia::new(CALL, signalling());
        let offer = revealing_sdp("alice", "10.11.12.13", 4000);
        let to_b = media.towards_b(t0, &offer, &mut plane).unwrap();
        let answer = revealing_sdp("bob", "172.16.5.6", 5000);
        let to_a = media.towards_a(t0, &answer, &mut plane).unwrap();
        for (body, secrets) in [
            (
                &to_b,
                ["alice", "10.11.12.13", "5550100", "198.51.100.9", "4000"],
            ),
            (
                &to_a,
                ["bob", "172.16.5.6", "5550100", "198.51.100.9", "5000"],
            ),
        ] {
            let text = std::str::from_utf8(body).unwrap();
            // The o= line is checked by `origin_of`; its random id could hold any digits.
            let (_, rest) = text.split_once("\r\ns=").unwrap();
            for secret in secrets {
                assert!(!rest.contains(secret), "{secret:?} forwarded in:\n{text}");
            }
            assert!(text.starts_with("v=0\r\no=- "), "{text}");
            assert!(
                text.contains("\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"),
                "{text}"
            );
            for kept in [
                "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n\
a=ptime:20\r\na=sendrecv\r\n",
                " RTP/SAVP 0 101\r\n",
            ] {
                assert!(text.contains(kept), "{kept:?} lost in:\n{text}");
            }
            assert!(
                !text.contains("\r\na=ice") && !text.contains("candidate"),
                "{text}"
            );
        }
        // One session id per direction, neither derived from what the legs sent.
        let (id_b, version_b) = origin_of(&to_b);
        let (id_a, version_a) = origin_of(&to_a);
        assert_ne!(id_a, id_b);
        assert_eq!((version_a, version_b), (1, 1));
        // The relay still learnt where each leg wants its media.
        let remotes: Vec<_> = drain(&mut plane)
            .into_iter()
            .filter_map(|c| match c {
                MediaCommand::SetRemote { leg, rtp, .. } => Some((leg, rtp)),
                _ => None,
            })
            .collect();
        assert_eq!(
            remotes,
            [
                (Leg::A, addr("10.11.12.13:4000")),
                (Leg::B, addr("172.16.5.6:5000"))
            ]
        );
    }

    #[test]
    fn the_version_moves_on_by_one_exactly_when_what_a_leg_is_sent_changes() {
        let mut plane = plane(30000, 30099);
        let t0 = Instant::now();
        let mut media = CallMedia::new(CALL, signalling());
        let mut to_b = |media: &mut CallMedia, body: &Bytes| {
            let out = media.towards_b(t0, body, &mut plane).unwrap();
            (origin_of(&out), out)
        };
        let ((id, v1), first) = to_b(&mut media, &sdp("10.0.0.1", &[4000]));
        assert!(v1 < 1 << 62);
        // The same offer again (a re-INVITE refreshing the session): the same body, byte for
        // byte, version included.
        let ((same_id, v), again) = to_b(&mut media, &sdp("10.0.0.1", &[4000]));
        assert_eq!((same_id, v, &again), (id, v1, &first));
        // Only the sender's o= differs (its own version bump): nothing forwarded changed.
        let bumped = Bytes::from(
            String::from_utf8(sdp("10.0.0.1", &[4000]).to_vec())
                .unwrap()
                .replace("o=x 1 1 ", "o=x 1 2 "),
        );
        assert_eq!(to_b(&mut media, &bumped).0, (id, v1));
        // Hold (a new direction): one more.
        let hold = Bytes::from(
            String::from_utf8(sdp("10.0.0.1", &[4000]).to_vec())
                .unwrap()
                .replace(
                    "telephone-event/8000\r\n",
                    "telephone-event/8000\r\na=sendonly\r\n",
                ),
        );
        assert_eq!(to_b(&mut media, &hold).0, (id, v1 + 1));
        assert_eq!(to_b(&mut media, &hold).0, (id, v1 + 1));
        // A new address of leg A is not a change for leg B: its media still goes to the relay.
        let moved = Bytes::from(
            String::from_utf8(hold.to_vec())
                .unwrap()
                .replace("10.0.0.1", "10.0.0.5"),
        );
        assert_eq!(to_b(&mut media, &moved).0, (id, v1 + 1));
        // A second stream, then back to the first offer: one each.
        assert_eq!(
            to_b(&mut media, &sdp("10.0.0.1", &[4000, 4002])).0,
            (id, v1 + 2)
        );
        assert_eq!(to_b(&mut media, &sdp("10.0.0.1", &[4000])).0, (id, v1 + 3));
        // Leg A's own version did not move with leg B's.
        let to_a = media
            .towards_a(t0, &sdp("10.0.0.2", &[5000]), &mut plane)
            .unwrap();
        assert_eq!(origin_of(&to_a).1, 1);
    }
}
