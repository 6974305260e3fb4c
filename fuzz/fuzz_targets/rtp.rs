//! Fuzz target for the media data plane's per-datagram logic: the RTP/RTCP classifier
//! (`packet::is_rtp`, `is_rtcp`) and `StreamState`, driven through arbitrary sequences of
//! datagrams (leg, socket kind, source, bytes, time step) and SDP changes. Nothing may panic,
//! and the learning rules' promises hold throughout:
//! - a forwarded datagram goes to the other leg's learned source or SDP address;
//! - a leg latched to its exact SDP address stays there until its SDP changes;
//! - in strict mode, a source of no standing (not the SDP's IP nor the signalling IP) is
//!   never learned;
//! - drops for the source are a part of all drops.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use media::{
    is_rtcp, is_rtp, LearningConfig, LearningMode, Leg, SignallingIps, SocketKind, StreamState,
    Verdict,
};

/// The IPs a source or an SDP address is drawn from: both legs' SDP and signalling IPs, an
/// IPv4-mapped form of one, and strangers.
const IPS: [IpAddr; 8] = [
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),     // leg A's SDP IP
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100)),   // leg A's signalling IP
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),     // leg B's SDP IP
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, 50)), // leg B's signalling IP (the trunk)
    IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0xc000, 0x0201)), // ::ffff:192.0.2.1
    IpAddr::V4(Ipv4Addr::new(203, 0, 113, 66)),  // strangers
    IpAddr::V4(Ipv4Addr::new(203, 0, 113, 67)),
    IpAddr::V4(Ipv4Addr::UNSPECIFIED),
];

fn is_stranger(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.octets()[..3] == [203, 0, 113])
}

/// Reads the input front to back; missing bytes read as zero, so every input is a run.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let (taken, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        taken
    }

    fn address(&mut self) -> SocketAddr {
        let ip = IPS[usize::from(self.byte()) % IPS.len()];
        // Few ports, so that exact matches and same-IP-other-port both happen.
        SocketAddr::new(ip, 4000 + u16::from(self.byte() % 4))
    }
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

fn leg_index(leg: Leg) -> usize {
    match leg {
        Leg::A => 0,
        Leg::B => 1,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let setup = input.byte();
    let mode = if setup & 1 == 0 {
        LearningMode::Heuristic
    } else {
        LearningMode::Strict
    };
    let config = LearningConfig {
        mode,
        window: Duration::from_millis(u64::from(setup >> 1) * 100),
    };
    let signalling = SignallingIps {
        a: (setup & 0x80 == 0).then_some(IPS[1]),
        b: Some(IPS[3]),
    };
    let mut stream = StreamState::new(config, signalling);
    let mut now = Instant::now();
    // Each leg's RTP SDP address as last set.
    let mut sdp: [Option<SocketAddr>; 2] = [None, None];

    while !input.0.is_empty() {
        let header = input.byte();
        let leg = if header & 1 == 0 { Leg::A } else { Leg::B };
        now += Duration::from_millis(u64::from(input.byte()) * 20);
        if header & 0x80 != 0 {
            // An SDP change: RTP and RTCP addresses, either maybe absent.
            let rtp = (header & 0x40 != 0).then(|| input.address());
            let rtcp = (header & 0x20 != 0).then(|| input.address());
            stream.set_remote(leg, rtp, rtcp);
            // The stream keeps addresses canonical (an SDP's ::ffff:a.b.c.d is a.b.c.d, as a
            // dual-stack socket reports that peer), so the checks below compare them so too.
            sdp[leg_index(leg)] = rtp.map(canonical);
            continue;
        }
        let kind = if header & 2 == 0 {
            SocketKind::Rtp
        } else {
            SocketKind::Rtcp
        };
        let truncated = header & 4 != 0;
        let source = input.address();
        let len = usize::from(input.byte());
        let packet = input.bytes(len).to_vec();
        // The classifier on its own (the stream asks it too): total on any bytes, and RTCP
        // needs its 8-byte header.
        let _ = is_rtp(&packet);
        assert!(!is_rtcp(&packet) || packet.len() >= 8);

        let before = stream.counters();
        let latched_before = stream.latched(leg);
        let verdict = stream.on_datagram(now, leg, kind, source, &packet, truncated);
        if let Verdict::Forward(to) = verdict {
            // The other leg's learned source, its SDP address, or (RTCP) its RTCP address:
            // never a stranger unless a stranger was learned or written in an SDP.
            if kind == SocketKind::Rtp {
                let other = leg.other();
                let known = stream.latched(other) == Some(to) || sdp[leg_index(other)] == Some(to);
                assert!(known, "forwarded to {to}, neither learned nor in the SDP");
            }
            if header & 8 == 0 {
                stream.on_sent(leg, packet.len());
            } else {
                stream.on_send_failed(leg);
            }
        }
        let latched = stream.latched(leg);
        if let (Some(was), Some(exact)) = (latched_before, sdp[leg_index(leg)]) {
            if was == exact {
                assert_eq!(latched, Some(exact), "an exact latch moved");
            }
        }
        if mode == LearningMode::Strict {
            if let Some(learned) = latched {
                let on_sdp_ip = sdp[leg_index(leg)]
                    .is_some_and(|s| s.ip().to_canonical() == learned.ip().to_canonical());
                assert!(
                    !is_stranger(learned.ip()) || on_sdp_ip,
                    "strict mode learned a stranger {learned}"
                );
            }
        }
        let after = stream.counters();
        for direction in [after.a_to_b, after.b_to_a] {
            assert!(direction.foreign <= direction.dropped);
        }
        assert!(after.a_to_b.dropped >= before.a_to_b.dropped);
        assert!(after.b_to_a.dropped >= before.b_to_a.dropped);
    }
});
