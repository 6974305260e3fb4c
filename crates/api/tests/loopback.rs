//! `serve` over a real loopback socket: requests written by hand, a malformed request answered
//! with an error, the server still serving afterwards, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use api::b2bua::CallControl;
use api::{serve, ApiSettings, ApiState, NoSip};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(10);

/// Writes `raw` on a fresh connection and reads until the server closes it.
async fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(raw).await.expect("write");
    let mut out = Vec::new();
    timeout(LIMIT, stream.read_to_end(&mut out))
        .await
        .expect("server answered in time")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn body_of(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

#[tokio::test]
async fn serves_over_loopback_survives_malformed_requests_and_shuts_down() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let control = Arc::new(CallControl::new(
        Duration::from_secs(120),
        Duration::from_secs(600),
        1000,
        b2bua::WallClock::new(Instant::now(), SystemTime::now()),
    ));
    let settings = ApiSettings {
        max_body_bytes: 1024,
        ..ApiSettings::default()
    };
    let state = Arc::new(ApiState::new(control.clone(), settings, Arc::new(NoSip)));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state, async {
        let _ = stopped.await;
    }));

    // A good request.
    let response = exchange(
        addr,
        &post(
            "/api/user/1001/makecall",
            r#"{"caller":"2001","callee":"3001"}"#,
        ),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response
        .to_ascii_lowercase()
        .contains("content-type: application/json"));
    let json: serde_json::Value = serde_json::from_str(body_of(&response)).expect("json body");
    let callid = json["callid"].as_str().expect("callid").to_owned();
    assert_eq!(control.intents().len(), 1);

    // Not HTTP at all: hyper answers 400 and closes that connection only.
    let response = exchange(addr, b"\x16\x03\x01 garbage \x00\xff\r\n\r\n").await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response:?}");

    // HTTP, but broken JSON: our 400 error body.
    let response = exchange(addr, &post("/api/cti/callin", "{\"from\":")).await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(
        body_of(&response).contains("\"malformed_json\""),
        "{response}"
    );

    // Declared oversize body: 413 before the body is read.
    let response = exchange(
        addr,
        b"POST /api/cti/callin HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
          Content-Length: 1000000\r\nConnection: close\r\n\r\n{",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert_eq!(control.intents().len(), 1, "bad input changed nothing");

    // Still serving: two pipelined requests on one keep-alive connection.
    let two = format!(
        "GET /api/calls/{callid} HTTP/1.1\r\nHost: t\r\n\r\n\
         GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    );
    let response = exchange(addr, two.as_bytes()).await;
    assert_eq!(response.matches("HTTP/1.1 ").count(), 2, "{response}");
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.contains("\"state\":\"intent\""), "{response}");
    assert!(response.contains("HTTP/1.1 503"), "{response}");

    // A CTI decision through the socket consumes the intent.
    let response = exchange(
        addr,
        &post("/api/cti/callin", r#"{"from":"1001","to":"2001"}"#),
    )
    .await;
    assert!(
        body_of(&response).contains("\"action\":\"bridge\""),
        "{response}"
    );
    assert!(control.intents().is_empty());

    // Graceful shutdown: serve returns and the port stops accepting.
    stop.send(()).expect("server still running");
    timeout(LIMIT, server)
        .await
        .expect("serve returned in time")
        .expect("serve task did not panic");
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
}

#[tokio::test]
async fn shutdown_waits_for_an_idle_keep_alive_connection_to_close() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let control = Arc::new(CallControl::new(
        Duration::from_secs(120),
        Duration::from_secs(600),
        10,
        b2bua::WallClock::new(Instant::now(), SystemTime::now()),
    ));
    let state = Arc::new(ApiState::new(
        control,
        ApiSettings::default(),
        Arc::new(NoSip),
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state, async {
        let _ = stopped.await;
    }));
    // One request answered, connection left open (keep-alive).
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let mut buf = vec![0u8; 64 * 1024];
    let n = timeout(LIMIT, stream.read(&mut buf))
        .await
        .expect("answer in time")
        .expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200 OK"));
    stop.send(()).expect("server still running");
    // The idle connection is closed by the server, and serve returns well before its drain cap.
    timeout(Duration::from_secs(4), server)
        .await
        .expect("serve returned promptly")
        .expect("no panic");
    // The server, not the client, ended the connection: reading it now finds end of stream
    // (or a reset, should the close race unread bytes) at once, and no further byte arrives.
    let mut rest = Vec::new();
    match timeout(LIMIT, stream.read_to_end(&mut rest)).await {
        Ok(Ok(_)) => assert!(rest.is_empty(), "bytes after the close: {rest:?}"),
        Ok(Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Err(_) => panic!("the server left the keep-alive connection open"),
    }
}
