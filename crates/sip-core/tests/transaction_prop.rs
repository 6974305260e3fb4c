//! Property test of the transaction layer: random interleavings of incoming requests
//! (including retransmissions, ACKs, CANCELs, RFC 2543 branches and mutated copies), responses
//! (matching and stray), user actions and clock jumps never panic, never leave a transaction
//! behind once the user has answered everything and the clock has moved past every timer.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use sip_core::transaction::{TransactionConfig, TransactionLayer, TxEvent};
use sip_core::{HeaderName, Message, ParseLimits, Peer, Request, Response};

#[derive(Clone, Debug)]
enum Op {
    /// A request from a peer: method index, branch index, CSeq, UDP or TCP.
    Incoming(usize, usize, u32, bool),
    /// Byte-level mutation of an incoming INVITE: position and byte.
    Mutated(usize, u8),
    /// A response to one of the requests we sent: which one and which status.
    Reply(usize, u16),
    /// The user sends a request of this method.
    Send(usize, bool),
    /// The user answers the n-th open server transaction with this status.
    Answer(usize, u16),
    /// The user cancels the n-th INVITE it sent.
    Cancel(usize),
    /// Time passes.
    Advance(u64),
}

const METHODS: [&str; 6] = ["INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO"];
const STATUSES: [u16; 8] = [100, 180, 183, 200, 202, 404, 486, 503];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..METHODS.len(), 0..6usize, 1..4u32, any::<bool>())
            .prop_map(|(m, b, c, t)| Op::Incoming(m, b, c, t)),
        (0..400usize, any::<u8>()).prop_map(|(p, b)| Op::Mutated(p, b)),
        (0..8usize, 0..STATUSES.len()).prop_map(|(i, s)| Op::Reply(i, STATUSES[s])),
        (0..METHODS.len(), any::<bool>()).prop_map(|(m, t)| Op::Send(m, t)),
        (0..8usize, 0..STATUSES.len()).prop_map(|(i, s)| Op::Answer(i, STATUSES[s])),
        (0..8usize).prop_map(Op::Cancel),
        (0..40_000u64).prop_map(Op::Advance),
    ]
}

fn peer(tcp: bool) -> Peer {
    let addr = "127.0.0.1:5062".parse().unwrap();
    if tcp {
        Peer::tcp(addr, None)
    } else {
        Peer::udp(addr)
    }
}

fn incoming_text(method: &str, branch: usize, cseq: u32, tcp: bool) -> String {
    // Branch 5 is an RFC 2543 branch (no magic cookie).
    let branch = if branch == 5 {
        "legacy".to_owned()
    } else {
        format!("z9hG4bK{branch}")
    };
    let transport = if tcp { "TCP" } else { "UDP" };
    let to_tag = if method == "ACK" { ";tag=t1" } else { "" };
    format!(
        "{method} sip:bob@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/{transport} 127.0.0.1:5062;branch={branch}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@127.0.0.1>;tag=f{cseq}\r\n\
         To: <sip:bob@127.0.0.1>{to_tag}\r\n\
         Call-ID: prop@127.0.0.1\r\n\
         CSeq: {cseq} {method}\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

fn outgoing(method: &str) -> Request {
    let text = incoming_text(method, 0, 1, false);
    let Ok(Message::Request(mut request)) =
        Message::parse(text.as_bytes(), &ParseLimits::default())
    else {
        panic!("fixture does not parse")
    };
    request.headers.remove_all(&HeaderName::Via);
    request
}

fn tagged(mut response: Response) -> Response {
    if let Ok(to) = response.headers.to() {
        if to.tag().is_none() {
            response
                .headers
                .set(HeaderName::To, to.with_tag("t1").to_string());
        }
    }
    response
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_traffic_never_panics_and_never_leaks(ops in proptest::collection::vec(op(), 1..60)) {
        let mut layer = TransactionLayer::new(TransactionConfig::default());
        let mut now = Instant::now();
        let limits = ParseLimits::default();
        let mut open_servers = BTreeSet::new();
        let mut server_requests = std::collections::HashMap::new();
        let mut sent = Vec::new();

        let drain = |layer: &mut TransactionLayer,
                     open: &mut BTreeSet<_>,
                     requests: &mut std::collections::HashMap<_, _>| {
            while layer.poll_transmit().is_some() {}
            while let Some(event) = layer.poll_event() {
                match event {
                    TxEvent::Request { tx, request, .. } => {
                        open.insert(tx);
                        requests.insert(tx, request);
                    }
                    TxEvent::Terminated(sip_core::transaction::TxId::Server(tx)) => {
                        open.remove(&tx);
                        requests.remove(&tx);
                    }
                    _ => {}
                }
            }
        };

        for op in ops {
            match op {
                Op::Incoming(m, branch, cseq, tcp) => {
                    let text = incoming_text(METHODS[m], branch, cseq, tcp);
                    let message = Message::parse(text.as_bytes(), &limits).unwrap();
                    let _ = layer.handle_message(now, message, peer(tcp));
                }
                Op::Mutated(pos, byte) => {
                    let mut bytes = incoming_text("INVITE", pos % 6, 1, false).into_bytes();
                    let at = pos % bytes.len();
                    bytes[at] = byte;
                    if let Ok(message) = Message::parse(&bytes, &limits) {
                        let _ = layer.handle_message(now, message, peer(false));
                    }
                }
                Op::Reply(i, status) => {
                    if let Some(id) = sent.get(i % sent.len().max(1)) {
                        if let Some(request) = layer.client_request(*id) {
                            let response = tagged(Response::to_request(request, status, None));
                            let _ = layer.handle_message(now, Message::Response(response), peer(false));
                        }
                    }
                }
                Op::Send(m, tcp) => {
                    if let Ok(id) = layer.send_request(now, outgoing(METHODS[m]), peer(tcp)) {
                        sent.push(id);
                    }
                }
                Op::Answer(i, status) => {
                    if let Some(tx) = open_servers.iter().nth(i % open_servers.len().max(1)).copied() {
                        if let Some(request) = server_requests.get(&tx) {
                            let response = tagged(Response::to_request(request, status, None));
                            let _ = layer.send_response(now, tx, response);
                        }
                    }
                }
                Op::Cancel(i) => {
                    if let Some(id) = sent.get(i % sent.len().max(1)) {
                        let _ = layer.cancel(now, *id);
                    }
                }
                Op::Advance(ms) => {
                    now += Duration::from_millis(ms);
                    layer.handle_timeout(now);
                }
            }
            drain(&mut layer, &mut open_servers, &mut server_requests);
        }

        // The user answers whatever is still open (an INVITE server transaction has no timer
        // of its own until it is answered); then every timer runs out.
        for tx in open_servers.clone() {
            if let Some(request) = server_requests.get(&tx) {
                let response = tagged(Response::to_request(request, 486, None));
                let _ = layer.send_response(now, tx, response);
            }
        }
        drain(&mut layer, &mut open_servers, &mut server_requests);
        // Client INVITEs stuck in Proceeding end 64·T1 after a CANCEL.
        for id in &sent {
            let _ = layer.cancel(now, *id);
        }
        while let Some(deadline) = layer.poll_timeout() {
            prop_assert!(deadline <= now + Duration::from_secs(120), "timer too far out");
            now = deadline;
            layer.handle_timeout(now);
            drain(&mut layer, &mut open_servers, &mut server_requests);
        }
        prop_assert_eq!(layer.client_count(), 0);
        prop_assert_eq!(layer.server_count(), 0);
        prop_assert_eq!(layer.timer_entries(), 0);
    }
}
