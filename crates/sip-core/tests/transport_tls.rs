//! SIP over TLS between two transports (and raw clients) on 127.0.0.1, with certificates made
//! per run by rcgen: requests and responses both ways on one connection, reuse and
//! reconnection, certificate verification, and the admission rules and handshake deadline
//! that keep unwanted clients from holding a slot. Nothing sleeps to wait for an event: every
//! wait is a `timeout` around what must arrive.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use sip_core::transaction::{ClientTxId, TxId};
use sip_core::transport::{
    SipTransport, TlsConfig, TlsError, TlsIdentity, TlsRoots, TransportConfig, TransportEvent,
    TransportEvents, TransportHandle,
};
use sip_core::{Message, Peer, Request, Response, Transmit, Transport};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

/// A certificate authority of the test's own, and certificates it signs.
struct Pki {
    ca: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        Pki { ca, key }
    }

    /// A server certificate for `names` (IP addresses become IP SANs) and its key.
    fn leaf(&self, names: &[&str]) -> TlsIdentity {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca, &self.key).unwrap();
        TlsIdentity::from_der(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }

    fn roots(&self) -> TlsRoots {
        TlsRoots::from_der([self.ca.der().clone()]).unwrap()
    }
}

fn base() -> TransportConfig {
    TransportConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        ..TransportConfig::default()
    }
}

/// A transport with a TLS listener on 127.0.0.1 presenting a certificate of `pki` for
/// 127.0.0.1 (and trusting `pki` when it connects out).
fn listening(pki: &Pki) -> TransportConfig {
    let tls = TlsConfig::new(Some(pki.leaf(&["127.0.0.1"])), pki.roots())
        .unwrap()
        .with_listener("127.0.0.1:0".parse().unwrap())
        .unwrap();
    TransportConfig {
        tls: Some(tls),
        ..base()
    }
}

/// A transport without a listener that connects out over TLS, trusting `roots`.
fn connecting(roots: TlsRoots) -> TransportConfig {
    TransportConfig {
        tls: Some(TlsConfig::new(None, roots).unwrap()),
        ..base()
    }
}

async fn start(config: TransportConfig) -> (TransportHandle, TransportEvents) {
    SipTransport::bind(config).await.expect("bind transport")
}

fn tls_addr(handle: &TransportHandle) -> SocketAddr {
    handle.tls_local_addr().expect("a TLS listener")
}

async fn next_event(events: &mut TransportEvents) -> TransportEvent {
    timeout(WAIT, events.recv())
        .await
        .expect("timed out waiting for a transport event")
        .expect("event channel closed")
}

async fn next_message(events: &mut TransportEvents) -> (Message, Peer) {
    match next_event(events).await {
        TransportEvent::Message { message, from } => (message, from),
        other => panic!("expected a message, got {other:?}"),
    }
}

async fn next_request(events: &mut TransportEvents) -> (Request, Peer) {
    match next_message(events).await {
        (Message::Request(request), from) => (request, from),
        (other, _) => panic!("expected a request, got {other:?}"),
    }
}

async fn next_response(events: &mut TransportEvents) -> (Response, Peer) {
    match next_message(events).await {
        (Message::Response(response), from) => (response, from),
        (other, _) => panic!("expected a response, got {other:?}"),
    }
}

fn options(via_host: SocketAddr, call_id: &str) -> Bytes {
    Bytes::from(format!(
        "OPTIONS sip:bob@example.com SIP/2.0\r\n\
         Via: SIP/2.0/TLS {via_host};branch=z9hG4bK-{call_id};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@example.com>;tag=a1\r\n\
         To: <sip:bob@example.com>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    ))
}

fn ok_for(request: &Request) -> Bytes {
    Response::to_request(request, 200, None).to_bytes()
}

fn origin(n: u64) -> Option<TxId> {
    Some(TxId::Client(ClientTxId(n)))
}

/// Sends on `handle` to `to` and answers the request at the other end with a 200 sent back
/// the way RFC 3261 §18.2.2 says (its connection); returns where the request came from.
async fn round_trip(
    handle: &TransportHandle,
    events: &mut TransportEvents,
    server_events: &mut TransportEvents,
    server: &TransportHandle,
    to: Peer,
    call_id: &str,
) -> Peer {
    handle.send(Transmit::stateless(
        to,
        options(handle.local_addr(), call_id),
    ));
    let (request, from) = next_request(server_events).await;
    assert_eq!(request.headers.call_id(), Some(call_id));
    let via = request.headers.top_via().unwrap();
    let back = sip_core::peer::response_destination(&via, from);
    assert_eq!(back.connection, from.connection, "back on its connection");
    server.send(Transmit::stateless(back, ok_for(&request)));
    let (response, _) = next_response(events).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.headers.call_id(), Some(call_id));
    from
}

#[tokio::test]
async fn requests_and_responses_cross_over_tls_both_ways_on_one_connection() {
    let pki = Pki::new("test CA");
    let (server, mut server_events) = start(listening(&pki)).await;
    let (client, mut client_events) = start(connecting(pki.roots())).await;
    assert_eq!(client.tls_local_addr(), None);
    let to = Peer::tls(tls_addr(&server), None);

    // Client → server, and the 200 back on the connection.
    let from = round_trip(
        &client,
        &mut client_events,
        &mut server_events,
        &server,
        to,
        "tls-1",
    )
    .await;
    assert_eq!(from.transport, Transport::Tls);
    assert!(from.connection.is_some());
    assert_eq!(from.addr.ip(), client.local_addr().ip());

    // Server → client on the connection the client opened (it has no listener), and the 200
    // back on it: the dialog's requests from a trunk that keeps the connection.
    server.send(Transmit::stateless(
        from,
        options(server.local_addr(), "tls-2"),
    ));
    let (request, back) = next_request(&mut client_events).await;
    assert_eq!(request.headers.call_id(), Some("tls-2"));
    assert_eq!(back.transport, Transport::Tls);
    assert_eq!(back.addr, tls_addr(&server));
    let via = request.headers.top_via().unwrap();
    assert_eq!(via.transport, Transport::Tls);
    client.send(Transmit::stateless(
        sip_core::peer::response_destination(&via, back),
        ok_for(&request),
    ));
    let (response, _) = next_response(&mut server_events).await;
    assert_eq!(response.headers.call_id(), Some("tls-2"));

    // One connection served all four messages.
    assert_eq!(
        (client.connection_count(), server.connection_count()),
        (1, 1)
    );
    let (c, s) = (client.stats(), server.stats());
    assert_eq!((c.connections_opened, s.connections_accepted), (1, 1));
    assert_eq!((c.tls_received, s.tls_received), (2, 2));
    assert_eq!((c.tcp_received, s.tcp_received), (0, 0));
    assert_eq!(c.tls_handshake_failures + s.tls_handshake_failures, 0);
    client.shutdown();
    server.shutdown();
}

#[tokio::test]
async fn one_connection_is_reused_and_a_new_one_opened_when_it_dropped() {
    let pki = Pki::new("test CA");
    let mut server_config = listening(&pki);
    // The server drops idle connections quickly: that is the drop the client must survive.
    server_config.tcp_idle_timeout = Duration::from_millis(300);
    let (server, mut server_events) = start(server_config).await;
    let (client, mut client_events) = start(connecting(pki.roots())).await;
    let to = Peer::tls(tls_addr(&server), None);

    let first = round_trip(
        &client,
        &mut client_events,
        &mut server_events,
        &server,
        to,
        "r-1",
    )
    .await;
    let second = round_trip(
        &client,
        &mut client_events,
        &mut server_events,
        &server,
        to,
        "r-2",
    )
    .await;
    assert_eq!(first.connection, second.connection, "reused");
    assert_eq!(server.stats().connections_accepted, 1);

    // The server closes it; both sides report the close.
    for events in [&mut client_events, &mut server_events] {
        match next_event(events).await {
            TransportEvent::ConnectionClosed { .. } => {}
            other => panic!("expected ConnectionClosed, got {other:?}"),
        }
    }
    assert_eq!(client.connection_count(), 0);

    // The next send opens a new connection.
    let third = round_trip(
        &client,
        &mut client_events,
        &mut server_events,
        &server,
        to,
        "r-3",
    )
    .await;
    assert_ne!(third.connection, first.connection);
    assert_eq!(client.stats().connections_opened, 2);
    assert_eq!(server.stats().connections_accepted, 2);
    client.shutdown();
    server.shutdown();
}

#[tokio::test]
async fn a_certificate_from_an_unknown_ca_is_refused() {
    let trusted = Pki::new("the CA we trust");
    let stranger = Pki::new("some other CA");
    let (server, _server_events) = start(listening(&stranger)).await;
    let (client, mut events) = start(connecting(trusted.roots())).await;
    let to = Peer::tls(tls_addr(&server), None);
    // Two sends queue on the one connection being opened; both fail, each for its own
    // transaction.
    for n in [1, 2] {
        client.send(Transmit {
            to,
            bytes: options(client.local_addr(), &format!("unknown-{n}")),
            origin: origin(n),
        });
    }
    let mut failed = Vec::new();
    for _ in 0..2 {
        match next_event(&mut events).await {
            TransportEvent::SendFailed { origin, error, .. } => {
                assert!(error.contains("UnknownIssuer"), "{error}");
                failed.push(origin);
            }
            other => panic!("expected SendFailed, got {other:?}"),
        }
    }
    failed.sort();
    assert_eq!(failed, vec![origin(1), origin(2)]);
    assert_eq!(client.stats().tls_handshake_failures, 1);
    assert_eq!(client.stats().connections_opened, 0);
    assert_eq!(client.connection_count(), 0, "the slot is free again");
    assert_eq!(server.stats().tls_received, 0);
    client.shutdown();
    server.shutdown();
}

#[tokio::test]
async fn the_certificate_must_name_the_configured_server_name() {
    let pki = Pki::new("test CA");
    // The carrier's certificate names its host, not its address.
    let identity = pki.leaf(&["carrier.test"]);
    let tls = TlsConfig::new(Some(identity), pki.roots())
        .unwrap()
        .with_listener("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let (server, mut server_events) = start(TransportConfig {
        tls: Some(tls),
        ..base()
    })
    .await;
    let to = Peer::tls(tls_addr(&server), None);

    // Checked for the IP address (no name registered): refused.
    let (by_ip, mut by_ip_events) = start(connecting(pki.roots())).await;
    by_ip.send(Transmit::stateless(
        to,
        options(by_ip.local_addr(), "by-ip"),
    ));
    match next_event(&mut by_ip_events).await {
        TransportEvent::SendFailed { error, .. } => {
            assert!(error.contains("not valid for name"), "{error}")
        }
        other => panic!("expected SendFailed, got {other:?}"),
    }

    // Checked for the name configured for that IP: accepted.
    let named = TlsConfig::new(None, pki.roots())
        .unwrap()
        .with_server_name(to.addr.ip(), "carrier.test")
        .unwrap();
    let (client, mut events) = start(TransportConfig {
        tls: Some(named),
        ..base()
    })
    .await;
    round_trip(
        &client,
        &mut events,
        &mut server_events,
        &server,
        to,
        "by-name",
    )
    .await;
    by_ip.shutdown();
    client.shutdown();
    server.shutdown();
}

/// A raw TCP connection to `to` from the loopback address `source`.
async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(source.parse().unwrap(), 0))
        .unwrap();
    timeout(WAIT, socket.connect(to)).await.unwrap().unwrap()
}

/// Reads until the server closes `stream`; returns what it sent before closing.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let read = timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("connection not closed");
        match read {
            Ok(0) | Err(_) => return received,
            Ok(n) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// A rustls client that trusts `pki`, as a phone or another proxy would be.
fn rustls_client(pki: &Pki) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.der().clone()).unwrap();
    #[allow(deprecated)] // ring's provider, as the transport uses (see its Cargo.toml)
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn an_untrusted_source_is_closed_before_the_handshake() {
    let pki = Pki::new("test CA");
    let mut config = listening(&pki);
    config.trusted = vec!["127.0.0.1/32".parse().unwrap()];
    let (server, _events) = start(config).await;

    // It sends a ClientHello; the server never answers one: the connection is closed at
    // accept, with nothing sent back.
    let stream = connect_from("127.0.0.66", tls_addr(&server)).await;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let handshake = timeout(WAIT, rustls_client(&pki).connect(name, stream))
        .await
        .expect("handshake neither done nor refused");
    assert!(handshake.is_err(), "the handshake must not complete");
    // And a client that waits for the server to speak first hears nothing before the close.
    let mut silent = connect_from("127.0.0.66", tls_addr(&server)).await;
    assert!(read_until_closed(&mut silent).await.is_empty());

    let stats = server.stats();
    assert_eq!(stats.connections_refused_untrusted, 2);
    assert_eq!(stats.connections_accepted, 0);
    assert_eq!(stats.tls_handshake_failures, 0, "no handshake was started");
    assert_eq!(server.connection_count(), 0);

    // A trusted source completes it.
    let stream = connect_from("127.0.0.1", tls_addr(&server)).await;
    let name = ServerName::try_from("127.0.0.1").unwrap();
    timeout(WAIT, rustls_client(&pki).connect(name, stream))
        .await
        .unwrap()
        .expect("a trusted client's handshake");
    server.shutdown();
}

#[tokio::test]
async fn a_handshake_that_never_comes_is_dropped_after_the_timeout() {
    let pki = Pki::new("test CA");
    let mut config = listening(&pki);
    let deadline = Duration::from_millis(300);
    config.tls_handshake_timeout = deadline;
    let (server, _events) = start(config).await;

    let started = Instant::now();
    let mut silent = connect_from("127.0.0.1", tls_addr(&server)).await;
    // Admitted: it holds a slot while the server waits for its ClientHello.
    assert!(read_until_closed(&mut silent).await.is_empty());
    let held = started.elapsed();
    assert!(
        held >= deadline,
        "closed after {held:?}, before the deadline"
    );
    assert!(held < WAIT, "held for {held:?}");
    // The slot is free again, and counted.
    let freed = Instant::now() + WAIT;
    while server.connection_count() > 0 {
        assert!(Instant::now() < freed, "the slot was never freed");
        tokio::task::yield_now().await;
    }
    let stats = server.stats();
    assert_eq!(stats.connections_accepted, 1);
    assert_eq!(stats.tls_handshake_failures, 1);
    assert_eq!(stats.connections_open, 0);
    server.shutdown();
}

#[tokio::test]
async fn tls_messages_never_go_over_a_tcp_connection_to_the_same_address() {
    // A send over TLS to an address that only a TCP connection reaches opens a TLS connection
    // (which fails here: it is a plain TCP port), never writes SIP in clear on the TCP one.
    let pki = Pki::new("test CA");
    let (plain, mut plain_events) = start(base()).await;
    // The plain port reads the ClientHello as the start of a SIP message and waits for the
    // rest: the client's handshake deadline is what ends the attempt.
    let mut client_config = connecting(pki.roots());
    client_config.tls_handshake_timeout = Duration::from_millis(300);
    let (client, mut events) = start(client_config).await;
    let tcp = Peer::tcp(plain.local_addr(), None);
    client.send(Transmit::stateless(
        tcp,
        options(client.local_addr(), "clear"),
    ));
    let (_, from) = next_request(&mut plain_events).await;
    assert_eq!(from.transport, Transport::Tcp);
    let tls = Peer::tls(plain.local_addr(), None);
    client.send(Transmit {
        to: tls,
        bytes: options(client.local_addr(), "secret"),
        origin: origin(9),
    });
    match next_event(&mut events).await {
        TransportEvent::SendFailed {
            origin: failed,
            error,
            ..
        } => {
            assert_eq!(failed, origin(9));
            assert!(error.contains("timed out"), "{error}");
        }
        other => panic!("expected SendFailed, got {other:?}"),
    }
    assert_eq!(
        plain.stats().tcp_received,
        1,
        "nothing more arrived in clear"
    );
    client.shutdown();
    plain.shutdown();
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn certificates_keys_and_roots_are_checked_when_read() {
    let dir = std::env::temp_dir().join(format!("sip-core-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pki = Pki::new("test CA");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &pki.ca, &pki.key).unwrap();
    let cert_file = write(&dir, "cert.pem", &cert.pem());
    let key_file = write(&dir, "key.pem", &key.serialize_pem());
    let ca_file = write(&dir, "ca.pem", &pki.ca.pem());
    let other_key = write(
        &dir,
        "other-key.pem",
        &rcgen::KeyPair::generate().unwrap().serialize_pem(),
    );
    let empty = write(&dir, "empty.pem", "");
    let missing = dir.join("missing.pem");

    let identity = TlsIdentity::from_pem_files(&cert_file, &key_file).unwrap();
    let roots = TlsRoots::from_pem_file(&ca_file).unwrap();
    let config = TlsConfig::new(Some(identity), roots.clone())
        .unwrap()
        .with_listener("127.0.0.1:0".parse().unwrap())
        .unwrap();
    assert!(config.listen().is_some());
    assert_eq!(config, config.clone());

    assert!(matches!(
        TlsIdentity::from_pem_files(&missing, &key_file),
        Err(TlsError::File { .. })
    ));
    assert!(matches!(
        TlsIdentity::from_pem_files(&empty, &key_file),
        Err(TlsError::Empty { .. })
    ));
    // A certificate file in place of the key: no key in it.
    assert!(matches!(
        TlsIdentity::from_pem_files(&cert_file, &cert_file),
        Err(TlsError::Empty { .. })
    ));
    // A key that is not the certificate's.
    let mismatched = TlsIdentity::from_pem_files(&cert_file, &other_key).unwrap();
    assert!(matches!(
        TlsConfig::new(Some(mismatched), roots.clone()),
        Err(TlsError::Rustls(_))
    ));
    assert!(matches!(
        TlsRoots::from_pem_file(&empty),
        Err(TlsError::Empty { .. })
    ));
    // A listener needs something to present.
    assert!(matches!(
        TlsConfig::new(None, roots.clone())
            .unwrap()
            .with_listener("127.0.0.1:0".parse().unwrap()),
        Err(TlsError::ListenerWithoutIdentity)
    ));
    assert!(matches!(
        TlsConfig::new(None, roots)
            .unwrap()
            .with_server_name("127.0.0.1".parse().unwrap(), "not a name"),
        Err(TlsError::ServerName(_))
    ));
    // The public roots are there when no CA file is given.
    TlsConfig::new(None, TlsRoots::webpki()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
