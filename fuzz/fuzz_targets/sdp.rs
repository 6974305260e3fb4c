//! Fuzz target for the SDP parser and rewriter (`b2bua::media::sdp`), which every offer and
//! answer callbridge forwards goes through: any input is either rejected with an error, or
//! parsed, and its rewritten form
//! - parses again, with every relayed stream at the relay's address and ports,
//! - is a fixed point (rewriting it again gives the same bytes),
//! - carries no line that could name its sender: only callbridge's own `o=` and `s=-`, no
//!   `i=`/`u=`/`e=`/`p=`, no ICE attribute, no `a=tool:`.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use b2bua::media::sdp::{Origin, RelayPorts, SessionDescription};
use libfuzzer_sys::fuzz_target;

const ORIGIN: Origin = Origin {
    session_id: 4_611_686_018_427_387_903,
    version: 1,
};

/// The ICE attributes of RFC 8839 and RFC 8840, written out again here rather than shared with
/// the rewriter, so that a name dropped from its list is caught.
const ICE: [&str; 9] = [
    "candidate",
    "remote-candidates",
    "ice-lite",
    "ice-mismatch",
    "ice-ufrag",
    "ice-pwd",
    "ice-pacing",
    "ice-options",
    "end-of-candidates",
];

/// Whether an output line is one the rewriter must have dropped or replaced. Line types are
/// case-sensitive (RFC 8866 §5); attribute names are compared ignoring case.
fn revealing(line: &str, public_ip: IpAddr) -> bool {
    let Some((kind, value)) = line.split_once('=') else {
        return false;
    };
    let name = value
        .trim_start()
        .split(|c: char| c == ':' || c.is_whitespace())
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let family = if public_ip.is_ipv4() { "IP4" } else { "IP6" };
    match kind {
        "i" | "u" | "e" | "p" => true,
        "o" => line != format!("o=- 4611686018427387903 1 IN {family} {public_ip}"),
        "s" => line != "s=-",
        "a" => name == "tool" || ICE.contains(&name.as_str()),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut sdp) = SessionDescription::parse(data) else {
        return;
    };
    let streams = sdp.streams();
    // Both address families, chosen by the input.
    let public_ip = if data.len() % 2 == 0 {
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5))
    } else {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x99))
    };
    // Every other stream relayed, like streams never enabled or already closed.
    let relay: Vec<Option<RelayPorts>> = (0..streams.len())
        .map(|i| {
            // Ports stay in range however many `m=` lines the input has.
            let rtp = 20000 + 2 * (i % 4096) as u16;
            (i % 2 == 0).then_some(RelayPorts { rtp, rtcp: rtp + 1 })
        })
        .collect();
    sdp.rewrite(public_ip, &relay, ORIGIN);
    let out = sdp.to_bytes();

    let mut again = SessionDescription::parse(&out).unwrap_or_else(|e| {
        panic!(
            "rewritten form does not re-parse: {e:?}\n{:?}",
            String::from_utf8_lossy(&out)
        )
    });
    let text = String::from_utf8_lossy(&out);
    assert_eq!(again.streams().len(), streams.len(), "{text}");
    for (before, after) in streams.iter().zip(again.streams()) {
        assert_eq!(before.index, after.index);
        match relay.get(before.index).copied().flatten() {
            Some(ports) if before.port != 0 => {
                assert_eq!(after.port, ports.rtp, "{text}");
                if let Some(rtp) = after.rtp {
                    assert_eq!(rtp, SocketAddr::new(public_ip, ports.rtp), "{text}");
                }
            }
            _ => assert_eq!(after.port, before.port, "{text}"),
        }
    }
    for line in text.split("\r\n") {
        assert!(
            !revealing(line, public_ip),
            "{line:?} forwarded in:\n{text}"
        );
    }
    again.rewrite(public_ip, &relay, ORIGIN);
    assert_eq!(again.to_bytes(), out, "rewriting is not a fixed point");
});
