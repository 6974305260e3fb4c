//! Micro-benchmarks of the SIP message parser and writer on a typical INVITE with SDP.

use std::hint::black_box;

use callbridge_benches::typical_invite;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sip_core::{Message, ParseLimits};

fn sip_parse(c: &mut Criterion) {
    let buf = typical_invite();
    let limits = ParseLimits::default();
    let message = Message::parse(&buf, &limits).expect("fixture parses");
    let written_len = message.to_bytes().len();

    let mut group = c.benchmark_group("sip_message");
    group.throughput(Throughput::Bytes(buf.len() as u64));
    group.bench_function("parse_invite", |b| {
        b.iter(|| Message::parse(black_box(&buf), &limits).unwrap())
    });
    group.throughput(Throughput::Bytes(written_len as u64));
    group.bench_function("write_invite", |b| {
        b.iter(|| black_box(&message).to_bytes())
    });
    group.throughput(Throughput::Bytes((buf.len() + written_len) as u64));
    group.bench_function("parse_write_invite", |b| {
        b.iter(|| Message::parse(black_box(&buf), &limits).unwrap().to_bytes())
    });
    group.finish();
}

criterion_group!(benches, sip_parse);
criterion_main!(benches);
