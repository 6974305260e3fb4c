//! Transaction matching under load: the cost of feeding one message to a layer that holds
//! 10 or 10,000 live transactions of each kind. Matching is a hash lookup, so both sizes should
//! cost the same; a difference means matching has become a scan.
//!
//! Measured per message:
//! - `invite_retransmission`: a retransmitted INVITE absorbed by its server transaction (the
//!   100 Trying re-sent);
//! - `provisional_response`: a 180 matched to a client INVITE transaction in Proceeding;
//! - `new_request`: a fresh OPTIONS creating (and, by its 200, completing) a server transaction.

use std::time::Instant;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use sip_core::transaction::{TransactionConfig, TransactionLayer};
use sip_core::{HeaderName, Message, ParseLimits, Peer, Request, Response};

fn peer() -> Peer {
    Peer::udp("127.0.0.1:5062".parse().expect("address"))
}

fn parse_request(text: &str) -> Request {
    match Message::parse(text.as_bytes(), &ParseLimits::default()) {
        Ok(Message::Request(request)) => request,
        other => panic!("fixture does not parse: {other:?}"),
    }
}

fn incoming(method: &str, n: usize) -> Request {
    parse_request(&format!(
        "{method} sip:2001@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-bench-{method}-{n};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:1001@127.0.0.1>;tag=from{n}\r\n\
         To: <sip:2001@127.0.0.1>\r\n\
         Call-ID: bench-{n}@127.0.0.1\r\n\
         CSeq: 1 {method}\r\n\
         Contact: <sip:1001@127.0.0.1:5062>\r\n\
         Content-Length: 0\r\n\r\n"
    ))
}

fn outgoing(n: usize) -> Request {
    let mut request = incoming("INVITE", n);
    request.headers.remove_all(&HeaderName::Via);
    request
}

/// A layer with `live` server INVITE transactions (in Proceeding) and `live` client INVITE
/// transactions (in Proceeding), plus the messages that hit the middle one of each.
struct Loaded {
    layer: TransactionLayer,
    retransmission: Message,
    ringing: Message,
}

fn loaded(live: usize) -> Loaded {
    let now = Instant::now();
    let mut layer = TransactionLayer::new(TransactionConfig::default());
    let mut ringing = None;
    for n in 0..live {
        let message = Message::Request(incoming("INVITE", n));
        layer.handle_message(now, message, peer()).expect("keyable");
        let tx = layer.send_request(now, outgoing(n), peer()).expect("sent");
        let sent = layer.client_request(tx).expect("live").clone();
        let mut response = Response::to_request(&sent, 180, None);
        response
            .headers
            .set(HeaderName::To, "<sip:3001@127.0.0.1>;tag=callee");
        let response = Message::Response(response);
        layer
            .handle_message(now, response.clone(), peer())
            .expect("matched");
        if n == live / 2 {
            ringing = Some(response);
        }
    }
    while layer.poll_transmit().is_some() {}
    while layer.poll_event().is_some() {}
    Loaded {
        layer,
        retransmission: Message::Request(incoming("INVITE", live / 2)),
        ringing: ringing.expect("live > 0"),
    }
}

fn drain(layer: &mut TransactionLayer) {
    while let Some(t) = layer.poll_transmit() {
        black_box(t);
    }
    while let Some(e) = layer.poll_event() {
        black_box(e);
    }
}

fn transaction_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("transaction_lookup");
    for live in [10usize, 10_000] {
        let mut state = loaded(live);
        let now = Instant::now();
        group.bench_with_input(
            BenchmarkId::new("invite_retransmission", live),
            &live,
            |b, _| {
                b.iter_batched(
                    || state.retransmission.clone(),
                    |message| {
                        state.layer.handle_message(now, message, peer()).ok();
                        drain(&mut state.layer);
                    },
                    BatchSize::SmallInput,
                )
            },
        );
        group.bench_with_input(
            BenchmarkId::new("provisional_response", live),
            &live,
            |b, _| {
                b.iter_batched(
                    || state.ringing.clone(),
                    |message| {
                        state.layer.handle_message(now, message, peer()).ok();
                        drain(&mut state.layer);
                    },
                    BatchSize::SmallInput,
                )
            },
        );
        let options = incoming("OPTIONS", usize::MAX);
        let ok = Response::to_request(&options, 200, None);
        group.bench_with_input(BenchmarkId::new("new_request", live), &live, |b, _| {
            b.iter_batched(
                || Message::Request(options.clone()),
                |message| {
                    state.layer.handle_message(now, message, peer()).ok();
                    // Answer it over "TCP-less" UDP: it lingers for Timer J, so end it at once
                    // by answering and letting the next iteration find a fresh key.
                    let mut tx = None;
                    while let Some(event) = state.layer.poll_event() {
                        if let sip_core::transaction::TxEvent::Request { tx: id, .. } = event {
                            tx = Some(id);
                        }
                    }
                    if let Some(tx) = tx {
                        state.layer.send_response(now, tx, ok.clone()).ok();
                    }
                    drain(&mut state.layer);
                    // Retire it so the table size stays at `live`.
                    state
                        .layer
                        .handle_timeout(now + std::time::Duration::from_secs(3600));
                    drain(&mut state.layer);
                },
                BatchSize::SmallInput,
            )
        });
        assert!(state.layer.server_count() >= live);
    }
    group.finish();
}

criterion_group!(benches, transaction_lookup);
criterion_main!(benches);
