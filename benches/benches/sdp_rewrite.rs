//! SDP anchoring cost per offer or answer: what callbridge does to every SDP body it forwards
//! (`b2bua::media::sdp::SessionDescription`).
//!
//! Fixture: a typical audio offer from a phone (PCMU, PCMA, telephone-event with fmtp, ptime,
//! sendrecv; session-level `c=`), the same body as `callbridge_benches::typical_invite()`'s SDP.
//!
//! - `parse`: `SessionDescription::parse` of the body;
//! - `parse_streams`: parse, then `streams()` (where the peer wants its media: what the relay
//!   latches to);
//! - `parse_rewrite_write`: parse, `rewrite` to the relay's address and ports (`c=`, `m=` port,
//!   callbridge's own `o=` and `s=`, revealing lines dropped), `to_bytes` — the whole per-body
//!   path but for the comparison with the previous body sent that picks the `o=` version.
//!
//! Throughput is input bytes.

use std::net::IpAddr;

use b2bua::media::sdp::{Origin, RelayPorts, SessionDescription};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

use callbridge_benches::TYPICAL_SDP as OFFER;

fn sdp_rewrite(c: &mut Criterion) {
    let body = OFFER.as_bytes();
    let public_ip: IpAddr = "203.0.113.5".parse().expect("address");
    let relay = [Some(RelayPorts {
        rtp: 20000,
        rtcp: 20001,
    })];
    let origin = Origin {
        session_id: 4_611_686_018_427_387_000,
        version: 1,
    };

    // The fixture rewrites as expected before anything is timed.
    let mut check = SessionDescription::parse(body).expect("fixture parses");
    check.rewrite(public_ip, &relay, origin);
    let out = String::from_utf8(check.to_bytes().to_vec()).expect("utf-8");
    assert!(out.contains("c=IN IP4 203.0.113.5\r\n"));
    assert!(out.contains("m=audio 20000 RTP/AVP 0 8 101\r\n"));
    assert!(out.contains("\r\no=- 4611686018427387000 1 IN IP4 203.0.113.5\r\ns=-\r\n"));
    assert!(!out.contains("alice"));
    assert!(out.contains("a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n"));

    let mut group = c.benchmark_group("sdp");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("parse", |b| {
        b.iter(|| SessionDescription::parse(black_box(body)).expect("parses"))
    });
    group.bench_function("parse_streams", |b| {
        b.iter(|| {
            SessionDescription::parse(black_box(body))
                .expect("parses")
                .streams()
        })
    });
    group.bench_function("parse_rewrite_write", |b| {
        b.iter(|| {
            let mut sdp = SessionDescription::parse(black_box(body)).expect("parses");
            sdp.rewrite(black_box(public_ip), black_box(&relay), black_box(origin));
            sdp.to_bytes()
        })
    });
    group.finish();
}

criterion_group!(benches, sdp_rewrite);
criterion_main!(benches);
