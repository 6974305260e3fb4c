//! The UDP/TCP transport over IPv6 (RFC 5118): an IPv6-only transport on `[::1]`, and a
//! dual-stack one on `[::]` that IPv4 peers reach too. What the layers above must see either
//! way: canonical peer addresses (an IPv4 peer is `127.0.0.1`, never `::ffff:127.0.0.1`), Via
//! stamped with a bare IPv6 `received`, and sends to IPv4 peers that work from an IPv6 socket.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use sip_core::transport::{
    Frame, SipTransport, StreamFramer, TransportConfig, TransportEvent, TransportEvents,
    TransportHandle,
};
use sip_core::{Message, ParseLimits, Peer, Request, Response, Transmit, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

/// A transport on `bind`, trusting loopback of both families for TCP by default.
async fn start(bind: &str) -> (TransportHandle, TransportEvents) {
    start_with(TransportConfig {
        bind: bind.parse().unwrap(),
        ..TransportConfig::default()
    })
    .await
}

async fn start_with(config: TransportConfig) -> (TransportHandle, TransportEvents) {
    SipTransport::bind(config).await.expect("bind transport")
}

/// The loopback address of the transport's port in the given family: where a client of that
/// family sends (a dual-stack transport's local address is `[::]`).
fn at(handle: &TransportHandle, ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), handle.local_addr().port())
}

async fn next_event(events: &mut TransportEvents) -> TransportEvent {
    timeout(WAIT, events.recv())
        .await
        .expect("timed out waiting for a transport event")
        .expect("event channel closed")
}

async fn next_request(events: &mut TransportEvents) -> (Request, Peer) {
    match next_event(events).await {
        TransportEvent::Message {
            message: Message::Request(request),
            from,
        } => (request, from),
        other => panic!("expected a request, got {other:?}"),
    }
}

fn options(transport: &str, via: &str, call_id: &str) -> String {
    format!(
        "OPTIONS sip:bob@[2001:db8::1] SIP/2.0\r\n\
         Via: SIP/2.0/{transport} {via}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@[::1]>;tag=a1\r\n\
         To: <sip:bob@[2001:db8::1]>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Contact: <sip:alice@[::1]:5070;transport=udp>\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

fn ok_for(request: &Request) -> Bytes {
    Response::to_request(request, 200, None).to_bytes()
}

async fn recv_response(socket: &UdpSocket) -> (Response, SocketAddr) {
    let mut buf = vec![0u8; 65_536];
    let (n, from) = timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .expect("timed out waiting for a datagram")
        .unwrap();
    match Message::parse(&buf[..n], &ParseLimits::default()).unwrap() {
        Message::Response(response) => (response, from),
        other => panic!("expected a response, got {other:?}"),
    }
}

async fn read_response(stream: &mut TcpStream) -> Response {
    let mut framer = StreamFramer::new(65_536);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(Frame::Message(bytes)) = framer.next_frame().expect("framing") {
            match Message::parse(&bytes, &ParseLimits::default()).unwrap() {
                Message::Response(response) => return response,
                other => panic!("expected a response, got {other:?}"),
            }
        }
        let n = timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("timed out reading the stream")
            .unwrap();
        assert!(n > 0, "stream closed before a frame arrived");
        framer.push(&chunk[..n]);
    }
}

#[tokio::test]
async fn ipv6_udp_request_is_stamped_with_a_bare_received_and_answered() {
    let (handle, mut events) = start("[::1]:0").await;
    assert!(handle.local_addr().is_ipv6());
    let client = UdpSocket::bind("[::1]:0").await.unwrap();
    let client_addr = client.local_addr().unwrap();
    // A sent-by that is not the source (a phone behind something), asking for rport.
    let request = options(
        "UDP",
        "[2001:db8::7]:5062;branch=z9hG4bK-v6;rport",
        "v6-udp",
    );
    client
        .send_to(request.as_bytes(), handle.local_addr())
        .await
        .unwrap();
    let (request, from) = next_request(&mut events).await;
    assert_eq!(from, Peer::udp(client_addr));
    let via = request.headers.top_via().unwrap();
    assert_eq!(via.host, "2001:db8::7");
    // RFC 5118 §4.5: received carries the address without brackets; sent-by keeps them.
    assert_eq!(
        request.headers.get(&sip_core::HeaderName::Via),
        Some(
            format!(
                "SIP/2.0/UDP [2001:db8::7]:5062;branch=z9hG4bK-v6;rport={};received=::1",
                client_addr.port()
            )
            .as_str()
        )
    );
    // Bracketed hosts in the Request-URI and Contact parse.
    assert_eq!(request.uri.host(), "2001:db8::1");
    let contact = request.headers.contacts().unwrap();
    assert_eq!(contact[0].uri.ip(), Some("::1".parse().unwrap()));
    let to = sip_core::peer::response_destination(&via, from);
    assert_eq!(to, from);
    handle.send(Transmit::stateless(to, ok_for(&request)));
    let (response, source) = recv_response(&client).await;
    assert_eq!(response.status, 200);
    assert_eq!(source, handle.local_addr());
    assert_eq!(response.headers.top_via().unwrap(), via);
    handle.shutdown();
}

#[tokio::test]
async fn a_dual_stack_transport_reports_ipv4_peers_by_their_ipv4_address_and_answers_them() {
    let (handle, mut events) = start("[::]:0").await;
    assert_eq!(
        handle.local_addr().ip(),
        "::".parse::<std::net::IpAddr>().unwrap()
    );
    // An IPv4 phone whose Via names its own address: nothing to stamp, as on an IPv4 socket
    // (a mapped source would have earned it a `received=::ffff:127.0.0.1`).
    let v4 = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let v4_addr = v4.local_addr().unwrap();
    let via = format!("{v4_addr};branch=z9hG4bK-v4");
    v4.send_to(
        options("UDP", &via, "dual-v4").as_bytes(),
        at(&handle, "127.0.0.1"),
    )
    .await
    .unwrap();
    let (request, from) = next_request(&mut events).await;
    assert_eq!(from, Peer::udp(v4_addr), "canonical, not ::ffff:127.0.0.1");
    let top = request.headers.top_via().unwrap();
    assert_eq!((top.received(), top.rport()), (None, None));
    // Sent to the IPv4 address (mapped on the way out): it arrives.
    handle.send(Transmit::stateless(from, ok_for(&request)));
    let (response, source) = recv_response(&v4).await;
    assert_eq!(response.status, 200);
    assert_eq!(source, at(&handle, "127.0.0.1"));
    // An IPv6 phone on the same socket.
    let v6 = UdpSocket::bind("[::1]:0").await.unwrap();
    let v6_addr = v6.local_addr().unwrap();
    let via = format!("{v6_addr};branch=z9hG4bK-v6;rport");
    v6.send_to(
        options("UDP", &via, "dual-v6").as_bytes(),
        at(&handle, "::1"),
    )
    .await
    .unwrap();
    let (request, from) = next_request(&mut events).await;
    assert_eq!(from, Peer::udp(v6_addr));
    assert_eq!(
        request.headers.top_via().unwrap().received(),
        Some("::1"),
        "rport asked: received is stamped too"
    );
    handle.send(Transmit::stateless(from, ok_for(&request)));
    assert_eq!(recv_response(&v6).await.0.status, 200);
    let stats = handle.stats();
    assert_eq!(
        (stats.udp_received, stats.sent, stats.send_errors),
        (2, 2, 0)
    );
    handle.shutdown();
}

#[tokio::test]
async fn a_send_to_ipv4_from_an_ipv6_only_socket_fails_as_an_event_not_a_panic() {
    let (handle, mut events) = start("[::1]:0").await;
    let to = Peer::udp("127.0.0.1:9".parse().unwrap());
    handle.send(Transmit::stateless(to, Bytes::from_static(b"OPTIONS")));
    match next_event(&mut events).await {
        TransportEvent::SendFailed { to: failed, .. } => assert_eq!(failed, to),
        other => panic!("expected SendFailed, got {other:?}"),
    }
    handle.shutdown();
}

#[tokio::test]
async fn dual_stack_tcp_admits_ipv4_peers_by_their_ipv4_trust_and_opens_either_family() {
    // Only 127.0.0.0/8 is trusted: an IPv4 client on the dual-stack listener must match it
    // (the kernel hands the accept `::ffff:127.0.0.1`). ::1 is not trusted.
    let (handle, mut events) = start_with(TransportConfig {
        bind: "[::]:0".parse().unwrap(),
        trusted: vec!["127.0.0.0/8".parse().unwrap()],
        ..TransportConfig::default()
    })
    .await;
    let mut client = TcpStream::connect(at(&handle, "127.0.0.1")).await.unwrap();
    let client_addr = client.local_addr().unwrap();
    let via = format!("{client_addr};branch=z9hG4bK-tcp4");
    client
        .write_all(options("TCP", &via, "tcp-v4").as_bytes())
        .await
        .unwrap();
    let (request, from) = next_request(&mut events).await;
    assert_eq!(from.transport, Transport::Tcp);
    assert_eq!(from.addr, client_addr, "canonical IPv4");
    handle.send(Transmit::stateless(from, ok_for(&request)));
    assert_eq!(read_response(&mut client).await.status, 200);
    // An untrusted IPv6 client is closed at accept.
    let mut stranger = TcpStream::connect(at(&handle, "::1")).await.unwrap();
    let mut buf = [0u8; 8];
    let read = timeout(WAIT, stranger.read(&mut buf)).await.unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(handle.stats().connections_refused_untrusted, 1);

    // Outbound: to an IPv4 listener and to an IPv6 one, each over a connection of its family.
    for listen in ["127.0.0.1:0", "[::1]:0"] {
        let listener = TcpListener::bind(listen).await.unwrap();
        let remote = listener.local_addr().unwrap();
        let request = options("TCP", "[::1];branch=z9hG4bK-out", "out");
        handle.send(Transmit::stateless(
            Peer::tcp(remote, None),
            Bytes::from(request.clone()),
        ));
        let (mut far, seen) = timeout(WAIT, listener.accept()).await.unwrap().unwrap();
        assert_eq!(seen.is_ipv4(), remote.is_ipv4(), "{seen}");
        let mut got = vec![0u8; request.len()];
        timeout(WAIT, far.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, request.as_bytes());
    }
    handle.shutdown();
}
