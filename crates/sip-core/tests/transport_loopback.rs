//! The UDP/TCP transport over real sockets on 127.0.0.1. Nothing sleeps: every wait is a
//! `tokio::time::timeout` around the event or read that must arrive.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use sip_core::transaction::{ClientTxId, TxId};
use sip_core::transport::{
    Frame, SipTransport, StreamFramer, TransportConfig, TransportEvent, TransportEvents,
    TransportHandle,
};
use sip_core::{ConnectionId, Message, ParseLimits, Peer, Request, Response, Transmit, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

fn config() -> TransportConfig {
    TransportConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        ..TransportConfig::default()
    }
}

async fn start(config: TransportConfig) -> (TransportHandle, TransportEvents) {
    SipTransport::bind(config).await.expect("bind transport")
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

/// An OPTIONS request with Content-Length; `via` is the sent-by and Via parameters.
fn options(transport: &str, via: &str, call_id: &str) -> String {
    options_with(transport, via, call_id, true)
}

fn options_with(transport: &str, via: &str, call_id: &str, content_length: bool) -> String {
    let mut text = format!(
        "OPTIONS sip:bob@example.com SIP/2.0\r\n\
         Via: SIP/2.0/{transport} {via}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@example.com>;tag=a1\r\n\
         To: <sip:bob@example.com>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 OPTIONS\r\n"
    );
    if content_length {
        text.push_str("Content-Length: 0\r\n");
    }
    text.push_str("\r\n");
    text
}

fn ok_for(request: &Request) -> Bytes {
    Response::to_request(request, 200, None).to_bytes()
}

async fn recv_datagram(socket: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0u8; 65_536];
    let (n, _) = timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .expect("timed out waiting for a datagram")
        .unwrap();
    buf.truncate(n);
    buf
}

/// Reads from a client stream until the framer yields a frame.
async fn read_frame(stream: &mut TcpStream, framer: &mut StreamFramer) -> Frame {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(frame) = framer.next_frame().expect("framing") {
            return frame;
        }
        let n = timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("timed out reading the stream")
            .unwrap();
        assert!(n > 0, "stream closed before a frame arrived");
        framer.push(&chunk[..n]);
    }
}

async fn read_message(stream: &mut TcpStream, framer: &mut StreamFramer) -> Message {
    match read_frame(stream, framer).await {
        Frame::Message(bytes) => Message::parse(&bytes, &ParseLimits::default()).unwrap(),
        other => panic!("expected a message, got {other:?}"),
    }
}

async fn read_response(stream: &mut TcpStream, framer: &mut StreamFramer) -> Response {
    match read_message(stream, framer).await {
        Message::Response(response) => response,
        other => panic!("expected a response, got {other:?}"),
    }
}

fn parse_response(bytes: &[u8]) -> Response {
    match Message::parse(bytes, &ParseLimits::default()).unwrap() {
        Message::Response(response) => response,
        other => panic!("expected a response, got {other:?}"),
    }
}

async fn udp_client() -> (UdpSocket, SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

#[tokio::test]
async fn udp_and_tcp_share_the_port() {
    let (handle, _events) = start(config()).await;
    let addr = handle.local_addr();
    assert_ne!(addr.port(), 0);
    // Both protocols answer on that port: TCP connects, UDP reaches the transport.
    let _stream = timeout(WAIT, TcpStream::connect(addr))
        .await
        .unwrap()
        .unwrap();
    assert!(UdpSocket::bind(addr).await.is_err(), "UDP port is taken");
    handle.shutdown();
}

#[tokio::test]
async fn udp_request_is_stamped_and_response_comes_back() {
    let (handle, mut events) = start(config()).await;
    let (client, client_addr) = udp_client().await;
    let request = options("UDP", "192.0.2.1:5060;branch=z9hG4bK-udp1;rport", "udp-1");
    client
        .send_to(request.as_bytes(), handle.local_addr())
        .await
        .unwrap();

    let (request, from) = next_request(&mut events).await;
    assert_eq!(from, Peer::udp(client_addr));
    let via = request.headers.top_via().unwrap();
    assert_eq!(via.received(), Some("127.0.0.1"));
    assert_eq!(via.rport(), Some(Some(client_addr.port())));
    assert_eq!(via.branch(), Some("z9hG4bK-udp1"));

    let destination = sip_core::peer::response_destination(&via, from);
    assert_eq!(destination, from);
    handle.send(Transmit::stateless(destination, ok_for(&request)));
    let response = parse_response(&recv_datagram(&client).await);
    assert_eq!(response.status, 200);
    assert_eq!(response.headers.top_via().unwrap(), via);
    assert_eq!(response.headers.call_id(), Some("udp-1"));

    let stats = handle.stats();
    assert_eq!(stats.udp_received, 1);
    assert_eq!(stats.sent, 1);
    handle.shutdown();
}

#[tokio::test]
async fn udp_via_matching_source_is_left_alone() {
    let (handle, mut events) = start(config()).await;
    let (client, client_addr) = udp_client().await;
    let via = format!("{client_addr};branch=z9hG4bK-plain");
    client
        .send_to(
            options("UDP", &via, "udp-2").as_bytes(),
            handle.local_addr(),
        )
        .await
        .unwrap();
    let (request, _) = next_request(&mut events).await;
    let top = request.headers.top_via().unwrap();
    assert_eq!(top.received(), None);
    assert_eq!(top.rport(), None);
    handle.shutdown();
}

#[tokio::test]
async fn tcp_response_goes_back_on_the_same_connection() {
    let (handle, mut events) = start(config()).await;
    let mut client = TcpStream::connect(handle.local_addr()).await.unwrap();
    let client_addr = client.local_addr().unwrap();
    let request = options("TCP", "192.0.2.7:5060;branch=z9hG4bK-tcp1", "tcp-1");
    client.write_all(request.as_bytes()).await.unwrap();

    let (request, from) = next_request(&mut events).await;
    assert_eq!(from.transport, Transport::Tcp);
    assert_eq!(from.addr, client_addr);
    assert!(from.connection.is_some());
    let via = request.headers.top_via().unwrap();
    assert_eq!(via.received(), Some("127.0.0.1"));
    assert_eq!(handle.connection_count(), 1);

    handle.send(Transmit::stateless(from, ok_for(&request)));
    let mut framer = StreamFramer::new(65_536);
    let response = read_response(&mut client, &mut framer).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.headers.call_id(), Some("tcp-1"));

    // Without the connection id, the open connection to that address is reused.
    handle.send(Transmit::stateless(
        Peer::tcp(client_addr, None),
        ok_for(&request),
    ));
    assert_eq!(read_response(&mut client, &mut framer).await.status, 200);
    assert_eq!(handle.connection_count(), 1);

    let stats = handle.stats();
    assert_eq!(stats.tcp_received, 1);
    assert_eq!(stats.sent, 2);
    assert_eq!(stats.connections_accepted, 1);
    assert_eq!(stats.connections_open, 1);

    drop(client);
    match next_event(&mut events).await {
        TransportEvent::ConnectionClosed { connection, addr } => {
            assert_eq!(Some(connection), from.connection);
            assert_eq!(addr, client_addr);
        }
        other => panic!("expected ConnectionClosed, got {other:?}"),
    }
    assert_eq!(handle.stats().connections_open, 0);
    assert_eq!(handle.connection_count(), 0);
    handle.shutdown();
}

#[tokio::test]
async fn tcp_two_messages_in_one_write_and_one_message_split_across_writes() {
    let (handle, mut events) = start(config()).await;
    let mut client = TcpStream::connect(handle.local_addr()).await.unwrap();
    client.set_nodelay(true).unwrap();

    let both = format!(
        "{}{}",
        options("TCP", "192.0.2.7;branch=z9hG4bK-a", "first"),
        options("TCP", "192.0.2.7;branch=z9hG4bK-b", "second")
    );
    client.write_all(both.as_bytes()).await.unwrap();
    let (first, from_first) = next_request(&mut events).await;
    let (second, from_second) = next_request(&mut events).await;
    assert_eq!(first.headers.call_id(), Some("first"));
    assert_eq!(second.headers.call_id(), Some("second"));
    assert_eq!(from_first, from_second);

    let split = options("TCP", "192.0.2.7;branch=z9hG4bK-c", "split");
    let bytes = split.as_bytes();
    for piece in [
        &bytes[..10],
        &bytes[10..bytes.len() - 3],
        &bytes[bytes.len() - 3..],
    ] {
        client.write_all(piece).await.unwrap();
        client.flush().await.unwrap();
    }
    let (third, from_third) = next_request(&mut events).await;
    assert_eq!(third.headers.call_id(), Some("split"));
    assert_eq!(from_third, from_first);
    assert_eq!(handle.stats().tcp_received, 3);
    handle.shutdown();
}

#[tokio::test]
async fn tcp_keepalive_ping_is_answered_with_pong() {
    let (handle, _events) = start(config()).await;
    let mut client = TcpStream::connect(handle.local_addr()).await.unwrap();
    client.write_all(b"\r\n\r\n").await.unwrap();
    let mut pong = [0u8; 2];
    timeout(WAIT, client.read_exact(&mut pong))
        .await
        .expect("timed out waiting for the pong")
        .unwrap();
    assert_eq!(&pong, b"\r\n");
    assert_eq!(handle.stats().keepalives, 1);
    handle.shutdown();
}

#[tokio::test]
async fn tcp_message_without_content_length_gets_400_and_close() {
    let (handle, mut events) = start(config()).await;
    let mut client = TcpStream::connect(handle.local_addr()).await.unwrap();
    let request = options_with("TCP", "192.0.2.7;branch=z9hG4bK-nocl", "no-cl", false);
    client.write_all(request.as_bytes()).await.unwrap();

    let mut framer = StreamFramer::new(65_536);
    let response = read_response(&mut client, &mut framer).await;
    assert_eq!(response.status, 400);
    assert!(
        response.reason.contains("Content-Length"),
        "{}",
        response.reason
    );
    assert_eq!(response.headers.call_id(), Some("no-cl"));

    let mut rest = Vec::new();
    timeout(WAIT, client.read_to_end(&mut rest))
        .await
        .expect("connection not closed")
        .unwrap();
    assert!(rest.is_empty());
    assert!(matches!(
        next_event(&mut events).await,
        TransportEvent::ConnectionClosed { .. }
    ));
    let stats = handle.stats();
    assert_eq!(stats.framing_errors, 1);
    assert_eq!(stats.malformed_answered, 1);
    assert_eq!(stats.tcp_received, 0);
    handle.shutdown();
}

#[tokio::test]
async fn tcp_unparseable_frame_is_answered_and_connection_kept() {
    let (handle, mut events) = start(config()).await;
    let mut client = TcpStream::connect(handle.local_addr()).await.unwrap();
    let bad =
        options("TCP", "192.0.2.7;branch=z9hG4bK-bad", "bad").replace("CSeq: 1 OPTIONS", "CSeq: x");
    client.write_all(bad.as_bytes()).await.unwrap();
    let mut framer = StreamFramer::new(65_536);
    // The 400 copies the unreadable CSeq as it is, so it is checked as text.
    let Frame::Message(answer) = read_frame(&mut client, &mut framer).await else {
        panic!("expected the 400");
    };
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("SIP/2.0 400 "), "{answer}");
    assert!(answer.contains("Call-ID: bad\r\n"), "{answer}");
    // The framing was sound, so the connection stays usable.
    let good = options("TCP", "192.0.2.7;branch=z9hG4bK-good", "good");
    client.write_all(good.as_bytes()).await.unwrap();
    let (request, _) = next_request(&mut events).await;
    assert_eq!(request.headers.call_id(), Some("good"));
    assert_eq!(handle.stats().malformed_answered, 1);
    handle.shutdown();
}

#[tokio::test]
async fn udp_malformed_with_parseable_via_gets_400() {
    let (handle, _events) = start(config()).await;
    let (client, client_addr) = udp_client().await;
    let bad = "OPTIONS sip:bob@example.com SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK-bad;rport\r\n\
         From: <sip:alice@example.com>;tag=a1\r\n\
         Call-ID: bad-udp\r\n\
         CSeq: not-a-number OPTIONS\r\n\r\n";
    client
        .send_to(bad.as_bytes(), handle.local_addr())
        .await
        .unwrap();
    // The 400 lacks the To the request lacked, so it is checked as text.
    let answer = String::from_utf8(recv_datagram(&client).await).unwrap();
    assert!(answer.starts_with("SIP/2.0 400 "), "{answer}");
    assert!(answer.contains("Call-ID: bad-udp\r\n"), "{answer}");
    let via = answer
        .lines()
        .find_map(|line| line.strip_prefix("Via: "))
        .map(|v| sip_core::Via::parse(v).unwrap())
        .expect("Via in the 400");
    assert_eq!(via.branch(), Some("z9hG4bK-bad"));
    assert_eq!(via.received(), Some("127.0.0.1"));
    assert_eq!(via.rport(), Some(Some(client_addr.port())));
    let stats = handle.stats();
    assert_eq!(stats.malformed_answered, 1);
    assert_eq!(stats.malformed_dropped, 0);
    handle.shutdown();
}

/// Sends a valid request after `datagram` and waits for it: datagrams on loopback are read in
/// order, so once it arrives the earlier one has been handled.
async fn send_then_sync(
    handle: &TransportHandle,
    events: &mut TransportEvents,
    client: &UdpSocket,
    datagram: &[u8],
) {
    client.send_to(datagram, handle.local_addr()).await.unwrap();
    let marker = options("UDP", "192.0.2.1;branch=z9hG4bK-sync;rport", "sync");
    client
        .send_to(marker.as_bytes(), handle.local_addr())
        .await
        .unwrap();
    let (request, _) = next_request(events).await;
    assert_eq!(request.headers.call_id(), Some("sync"));
}

#[tokio::test]
async fn udp_garbage_is_dropped_and_counted() {
    let (handle, mut events) = start(config()).await;
    let (client, _) = udp_client().await;
    send_then_sync(
        &handle,
        &mut events,
        &client,
        b"\x00\xffnot SIP at all\r\n\r\n",
    )
    .await;
    // CRLF keep-alives are neither messages nor malformed.
    send_then_sync(&handle, &mut events, &client, b"\r\n\r\n").await;
    let stats = handle.stats();
    assert_eq!(stats.malformed_dropped, 1);
    assert_eq!(stats.malformed_answered, 0);
    assert_eq!(stats.keepalives, 1);
    assert_eq!(stats.udp_received, 2);
    assert_eq!(stats.sent, 0);
    handle.shutdown();
}

#[tokio::test]
async fn oversize_udp_datagram_is_counted() {
    let mut config = config();
    config.limits.max_message_size = 1024;
    let (handle, mut events) = start(config).await;
    let (client, _) = udp_client().await;
    let mut big = options("UDP", "192.0.2.1;branch=z9hG4bK-big", "big").into_bytes();
    big.resize(2000, b'x');
    send_then_sync(&handle, &mut events, &client, &big).await;
    let stats = handle.stats();
    assert_eq!(stats.oversize, 1);
    assert_eq!(stats.udp_received, 1);
    handle.shutdown();
}

#[tokio::test]
async fn tcp_send_without_connection_opens_one_and_reuses_it() {
    let (handle, mut events) = start(config()).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let remote = listener.local_addr().unwrap();

    let first = options("TCP", "127.0.0.1;branch=z9hG4bK-out1", "out-1");
    handle.send(Transmit::stateless(
        Peer::tcp(remote, None),
        Bytes::from(first.clone()),
    ));
    // Queued while the connection is still opening: must use the same connection.
    let second = options("TCP", "127.0.0.1;branch=z9hG4bK-out2", "out-2");
    handle.send(Transmit::stateless(
        Peer::tcp(remote, None),
        Bytes::from(second.clone()),
    ));
    let (mut server_side, _) = timeout(WAIT, listener.accept()).await.unwrap().unwrap();
    let mut framer = StreamFramer::new(65_536);
    for expected in [&first, &second] {
        match read_frame(&mut server_side, &mut framer).await {
            Frame::Message(bytes) => assert_eq!(&bytes[..], expected.as_bytes()),
            other => panic!("expected a message, got {other:?}"),
        }
    }
    assert_eq!(handle.connection_count(), 1);

    // The far end answers on that connection; the response names the connection.
    let request = match Message::parse(first.as_bytes(), &ParseLimits::default()).unwrap() {
        Message::Request(r) => r,
        _ => unreachable!(),
    };
    server_side.write_all(&ok_for(&request)).await.unwrap();
    match next_event(&mut events).await {
        TransportEvent::Message {
            message: Message::Response(response),
            from,
        } => {
            assert_eq!(response.status, 200);
            assert_eq!(from.addr, remote);
            assert!(from.connection.is_some());
        }
        other => panic!("expected the response, got {other:?}"),
    }
    let stats = handle.stats();
    assert_eq!(stats.connections_opened, 1);
    assert_eq!(stats.sent, 2);
    handle.shutdown();
}

#[tokio::test]
async fn tcp_connect_failure_is_reported() {
    let (handle, mut events) = start(config()).await;
    // A port that was just free: nothing listens there.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let to = Peer::tcp(closed, None);
    handle.send(Transmit::stateless(to, Bytes::from_static(b"x")));
    match next_event(&mut events).await {
        TransportEvent::SendFailed {
            to: failed, error, ..
        } => {
            assert_eq!(failed, to);
            assert!(!error.is_empty());
        }
        other => panic!("expected SendFailed, got {other:?}"),
    }
    assert_eq!(handle.connection_count(), 0);
    assert_eq!(handle.stats().send_errors, 1);
    handle.shutdown();
}

#[tokio::test]
async fn stale_connection_id_falls_back_to_the_address() {
    let (handle, _events) = start(config()).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let remote = listener.local_addr().unwrap();
    handle.send(Transmit::stateless(
        Peer::tcp(remote, Some(ConnectionId(999_999))),
        Bytes::from(options("TCP", "127.0.0.1;branch=z9hG4bK-s", "stale")),
    ));
    let (mut server_side, _) = timeout(WAIT, listener.accept()).await.unwrap().unwrap();
    let mut framer = StreamFramer::new(65_536);
    assert!(matches!(
        read_frame(&mut server_side, &mut framer).await,
        Frame::Message(_)
    ));
    handle.shutdown();
}

#[tokio::test]
async fn connections_beyond_the_limit_are_refused() {
    let mut config = config();
    config.max_connections = 1;
    let (handle, mut events) = start(config).await;
    let mut first = TcpStream::connect(handle.local_addr()).await.unwrap();
    first
        .write_all(options("TCP", "192.0.2.7;branch=z9hG4bK-l1", "limit").as_bytes())
        .await
        .unwrap();
    next_request(&mut events).await;

    let mut second = TcpStream::connect(handle.local_addr()).await.unwrap();
    let mut buf = [0u8; 16];
    let read = timeout(WAIT, second.read(&mut buf))
        .await
        .expect("refused connection not closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let stats = handle.stats();
    assert_eq!(stats.connections_refused, 1);
    assert_eq!(stats.connections_accepted, 1);
    assert_eq!(handle.connection_count(), 1);
    handle.shutdown();
}

#[tokio::test]
async fn idle_tcp_connection_is_closed() {
    let mut config = config();
    config.tcp_idle_timeout = Duration::from_millis(200);
    let (handle, mut events) = start(config).await;
    let mut client = TcpStream::connect(handle.local_addr()).await.unwrap();
    client
        .write_all(options("TCP", "192.0.2.7;branch=z9hG4bK-idle", "idle").as_bytes())
        .await
        .unwrap();
    let (_, from) = next_request(&mut events).await;
    match next_event(&mut events).await {
        TransportEvent::ConnectionClosed { connection, .. } => {
            assert_eq!(Some(connection), from.connection)
        }
        other => panic!("expected ConnectionClosed, got {other:?}"),
    }
    let mut rest = Vec::new();
    timeout(WAIT, client.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(handle.stats().connections_idle_closed, 1);
    handle.shutdown();
}

#[tokio::test]
async fn unsupported_transport_and_shutdown_fail_sends() {
    let (handle, mut events) = start(config()).await;
    let to = Peer {
        transport: Transport::Sctp,
        addr: "127.0.0.1:5060".parse().unwrap(),
        connection: None,
    };
    handle.send(Transmit::stateless(to, Bytes::from_static(b"x")));
    assert!(matches!(
        next_event(&mut events).await,
        TransportEvent::SendFailed { .. }
    ));
    // TLS without `[tls]` settings (no roots to check a server against) fails the same way.
    handle.send(Transmit::stateless(
        Peer::tls("127.0.0.1:5061".parse().unwrap(), None),
        Bytes::from_static(b"x"),
    ));
    match next_event(&mut events).await {
        TransportEvent::SendFailed { error, .. } => {
            assert!(error.contains("TLS is not configured"), "{error}")
        }
        other => panic!("expected SendFailed, got {other:?}"),
    }
    handle.shutdown();
    handle.send(Transmit::stateless(
        Peer::udp("127.0.0.1:9".parse().unwrap()),
        Bytes::from_static(b"x"),
    ));
    assert!(matches!(
        next_event(&mut events).await,
        TransportEvent::SendFailed { .. }
    ));
}

// ---- admission: who may hold a TCP connection ----------------------------------------------

/// A TCP connection to `to` from the loopback address `source` (any 127.0.0.0/8 address is
/// local on Linux, so a test can play several hosts).
async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse().unwrap(), 0))
        .unwrap();
    timeout(WAIT, socket.connect(to)).await.unwrap().unwrap()
}

/// The transport closes (or resets) `stream` without a word.
async fn assert_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 16];
    let read = timeout(WAIT, stream.read(&mut buf))
        .await
        .expect("refused connection not closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

/// Sends an OPTIONS on `stream` and checks that the transport delivers it, from `source`:
/// the connection was admitted.
async fn assert_admitted(
    stream: &mut TcpStream,
    events: &mut TransportEvents,
    source: &str,
    call_id: &str,
) {
    let via = format!("{source};branch=z9hG4bK-{call_id}");
    stream
        .write_all(options("TCP", &via, call_id).as_bytes())
        .await
        .unwrap();
    let (request, from) = next_request(events).await;
    assert_eq!(from.addr.ip().to_string(), source);
    assert_eq!(request.headers.call_id(), Some(call_id));
}

fn net(text: &str) -> ipnet::IpNet {
    text.parse().unwrap()
}

#[tokio::test]
async fn a_connection_from_an_untrusted_source_is_closed_at_accept() {
    let mut config = config();
    config.trusted = vec![net("127.0.0.1/32")];
    let (handle, mut events) = start(config).await;
    let mut attacker = connect_from("127.0.0.66", handle.local_addr()).await;
    // Whatever it sends, nothing is read: the connection is closed at accept.
    let _ = attacker
        .write_all(options("TCP", "127.0.0.66;branch=z9hG4bK-evil", "evil").as_bytes())
        .await;
    assert_closed(&mut attacker).await;
    let stats = handle.stats();
    assert_eq!(stats.connections_refused_untrusted, 1);
    assert_eq!(stats.connections_accepted, 0);
    assert_eq!(stats.tcp_received, 0);
    // A trusted source is served as before.
    let mut friend = connect_from("127.0.0.1", handle.local_addr()).await;
    assert_admitted(&mut friend, &mut events, "127.0.0.1", "friend").await;
    assert_eq!(handle.connection_count(), 1);
    handle.shutdown();
}

#[tokio::test]
async fn a_trusted_source_gets_at_most_max_connections_per_ip() {
    let mut config = config();
    config.trusted = vec![net("127.0.0.0/8")];
    config.max_connections_per_ip = 3;
    let (handle, mut events) = start(config).await;
    let mut held = Vec::new();
    for n in 0..3 {
        let mut stream = connect_from("127.0.0.5", handle.local_addr()).await;
        assert_admitted(
            &mut stream,
            &mut events,
            "127.0.0.5",
            &format!("per-ip-{n}"),
        )
        .await;
        held.push(stream);
    }
    let mut fourth = connect_from("127.0.0.5", handle.local_addr()).await;
    assert_closed(&mut fourth).await;
    assert_eq!(handle.stats().connections_refused_per_ip, 1);
    // The three it holds still work, and another source is not affected.
    assert_admitted(&mut held[0], &mut events, "127.0.0.5", "per-ip-again").await;
    let mut other = connect_from("127.0.0.6", handle.local_addr()).await;
    assert_admitted(&mut other, &mut events, "127.0.0.6", "per-ip-other").await;
    assert_eq!(handle.connection_count(), 4);
    handle.shutdown();
}

#[tokio::test]
async fn the_trunk_still_connects_when_others_have_filled_their_share() {
    // 8 in all, 4 per IP: the last 4 are the trunk's (127.0.0.3).
    let mut config = config();
    config.trusted = vec![net("127.0.0.0/8")];
    config.priority = vec![net("127.0.0.3/32")];
    config.max_connections = 8;
    config.max_connections_per_ip = 4;
    let (handle, mut events) = start(config).await;
    let mut held = Vec::new();
    for n in 0..4 {
        let mut stream = connect_from("127.0.0.2", handle.local_addr()).await;
        assert_admitted(&mut stream, &mut events, "127.0.0.2", &format!("fill-{n}")).await;
        held.push(stream);
    }
    // Everything but the trunk's reserve is taken: another trusted host is refused.
    let mut late = connect_from("127.0.0.4", handle.local_addr()).await;
    assert_closed(&mut late).await;
    assert_eq!(handle.stats().connections_refused, 1);
    // The trunk connects and its SIP gets through.
    let mut trunk = connect_from("127.0.0.3", handle.local_addr()).await;
    assert_admitted(&mut trunk, &mut events, "127.0.0.3", "trunk").await;
    assert_eq!(handle.connection_count(), 5);
    handle.shutdown();
}

// ---- failed sends fail their own transaction -----------------------------------------------

fn origin(n: u64) -> Option<TxId> {
    Some(TxId::Client(ClientTxId(n)))
}

#[tokio::test]
async fn a_full_write_queue_fails_that_message_and_nothing_else() {
    let mut config = config();
    config.tcp_write_queue_messages = 2;
    let (handle, mut events) = start(config).await;
    let mut client = TcpStream::connect(handle.local_addr()).await.unwrap();
    client
        .write_all(options("TCP", "127.0.0.1;branch=z9hG4bK-q", "queue").as_bytes())
        .await
        .unwrap();
    let (request, from) = next_request(&mut events).await;
    // Three sends without yielding: the connection task cannot drain in between (the test
    // runtime has one thread), so the third finds the queue full.
    for n in 1..=3 {
        handle.send(Transmit {
            to: from,
            bytes: ok_for(&request),
            origin: origin(n),
        });
    }
    match next_event(&mut events).await {
        TransportEvent::SendFailed { origin: failed, .. } => assert_eq!(failed, origin(3)),
        other => panic!("expected SendFailed, got {other:?}"),
    }
    // The first two go out on the same connection, which lives on for later sends.
    let mut framer = StreamFramer::new(65_536);
    for _ in 0..2 {
        assert_eq!(read_response(&mut client, &mut framer).await.status, 200);
    }
    handle.send(Transmit {
        to: from,
        bytes: ok_for(&request),
        origin: origin(4),
    });
    assert_eq!(read_response(&mut client, &mut framer).await.status, 200);
    assert_eq!(handle.connection_count(), 1);
    assert!(events.try_recv().is_none(), "no other failure");
    handle.shutdown();
}

#[tokio::test]
async fn a_write_queue_full_of_bytes_fails_that_message_and_nothing_else() {
    let mut config = config();
    config.tcp_write_queue_bytes = 100;
    let (handle, mut events) = start(config).await;
    let mut client = TcpStream::connect(handle.local_addr()).await.unwrap();
    client
        .write_all(options("TCP", "127.0.0.1;branch=z9hG4bK-qb", "queue-bytes").as_bytes())
        .await
        .unwrap();
    let (request, from) = next_request(&mut events).await;
    let response = ok_for(&request);
    assert!(response.len() > 100);
    // The first goes although it is larger than the budget (the queue is empty); the second
    // does not fit behind it.
    for n in 1..=2 {
        handle.send(Transmit {
            to: from,
            bytes: response.clone(),
            origin: origin(n),
        });
    }
    match next_event(&mut events).await {
        TransportEvent::SendFailed { origin: failed, .. } => assert_eq!(failed, origin(2)),
        other => panic!("expected SendFailed, got {other:?}"),
    }
    let mut framer = StreamFramer::new(65_536);
    assert_eq!(read_response(&mut client, &mut framer).await.status, 200);
    // Written, so the room is back.
    handle.send(Transmit {
        to: from,
        bytes: response,
        origin: origin(3),
    });
    assert_eq!(read_response(&mut client, &mut framer).await.status, 200);
    assert!(events.try_recv().is_none(), "no other failure");
    handle.shutdown();
}

#[tokio::test]
async fn a_datagram_larger_than_udp_allows_fails_its_transaction() {
    let (handle, mut events) = start(config()).await;
    let (client, client_addr) = udp_client().await;
    handle.send(Transmit {
        to: Peer::udp(client_addr),
        bytes: Bytes::from(vec![b'x'; 65_508]),
        origin: origin(7),
    });
    match next_event(&mut events).await {
        TransportEvent::SendFailed { origin: failed, .. } => assert_eq!(failed, origin(7)),
        other => panic!("expected SendFailed, got {other:?}"),
    }
    assert_eq!(handle.stats().udp_oversize_sends, 1);
    // The socket is fine for the next one, as large as a datagram can be.
    handle.send(Transmit {
        to: Peer::udp(client_addr),
        bytes: Bytes::from(vec![b'y'; 65_507]),
        origin: origin(8),
    });
    let mut buf = vec![0u8; 70_000];
    let (n, _) = timeout(WAIT, client.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 65_507);
    handle.shutdown();
}

#[tokio::test]
async fn a_flood_of_new_requests_never_delays_a_request_of_an_existing_dialog() {
    let (transport, mut events) = start(config()).await;
    let server = transport.local_addr();
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = client.local_addr().unwrap();
    // Nobody reads the events meanwhile: more new requests than their queue holds, then one
    // in-dialog BYE.
    let flood = sip_core::transport::NEW_REQUEST_QUEUE + 500;
    for n in 0..flood {
        let text = options(
            "UDP",
            &format!("{local};branch=z9hG4bKnew{n}"),
            &format!("new-{n}"),
        );
        client.send_to(text.as_bytes(), server).await.unwrap();
    }
    let bye = options("UDP", &format!("{local};branch=z9hG4bKbye"), "dialog-1")
        .replace("OPTIONS sip:", "BYE sip:")
        .replace("CSeq: 1 OPTIONS", "CSeq: 2 BYE")
        .replace(
            "To: <sip:bob@example.com>",
            "To: <sip:bob@example.com>;tag=ours",
        );
    client.send_to(bye.as_bytes(), server).await.unwrap();
    // Everything sent has been read off the socket (the receive loop never waited)...
    let deadline = std::time::Instant::now() + WAIT;
    while transport.stats().udp_received < flood as u64 + 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            transport.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ...the BYE is the first event read, ahead of every queued new request...
    let (first, _) = next_request(&mut events).await;
    assert_eq!(first.method, sip_core::Method::Bye);
    assert_eq!(
        events.waited(),
        Duration::ZERO,
        "an existing dialog's request"
    );
    // ...and what did not fit the new-request queue was dropped and counted.
    let stats = transport.stats();
    let mut queued = 0;
    while events.try_recv().is_some() {
        queued += 1;
    }
    assert_eq!(
        queued as u64 + stats.shed_requests,
        flood as u64,
        "{stats:?}"
    );
    assert!(
        stats.shed_requests > 0 && queued > 0,
        "{queued} queued, {stats:?}"
    );
    transport.shutdown();
}

#[tokio::test]
async fn a_new_request_reports_how_long_it_waited_in_its_queue() {
    let (transport, mut events) = start(config()).await;
    let server = transport.local_addr();
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = client.local_addr().unwrap();
    let text = options("UDP", &format!("{local};branch=z9hG4bKwait"), "wait-1");
    client.send_to(text.as_bytes(), server).await.unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while transport.stats().udp_received < 1 {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Queued, and left unread for a while: the application is behind.
    let unread = Duration::from_millis(120);
    tokio::time::sleep(unread).await;
    let (request, _) = next_request(&mut events).await;
    assert_eq!(request.method, sip_core::Method::Options);
    assert!(
        events.waited() >= unread && events.waited() < WAIT,
        "waited {:?}",
        events.waited()
    );
    transport.shutdown();
}
