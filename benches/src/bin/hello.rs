//! The HTTP ceiling for `benches/load/api.sh`: a minimal hyper 1 HTTP/1.1 server that answers
//! `200 {"callid":"1"}` (`application/json`) to any POST and `405` to anything else.
//!
//! It is built like callbridge's API so that "hello vs callbridge" measures only what callbridge
//! does per request (routing, JSON parsing and validation, the intent table, the call registry,
//! metrics, logging): same hyper / hyper-util versions (the workspace's Cargo.lock), a tokio
//! multi-thread runtime with default workers, one task per connection, `TCP_NODELAY`, and the
//! same `http1::Builder` settings as `crates/api/src/server.rs` (timer, header-read timeout,
//! buffer cap). The request body is read in full before answering, as makecall does.
//!
//! ```sh
//! cargo run --release -p callbridge-benches --bin hello -- 127.0.0.1:28181
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

/// As in crates/api/src/server.rs.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEAD_BYTES: usize = 64 * 1024;

const BODY: &[u8] = br#"{"callid":"1"}"#;

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::POST {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        return Ok(response);
    }
    // Read the body, as a real handler must; a broken body still gets an answer.
    let _ = req.into_body().collect().await;
    let mut response = Response::new(Full::new(Bytes::from_static(BODY)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

fn main() {
    let addr: SocketAddr = match std::env::args().nth(1).as_deref() {
        None => "127.0.0.1:28181".parse().expect("default address"),
        Some("-h" | "--help") => {
            eprintln!("usage: hello [ADDR=127.0.0.1:28181]");
            std::process::exit(2)
        }
        Some(text) => text.parse().unwrap_or_else(|error| {
            eprintln!("hello: bad address {text:?}: {error}");
            std::process::exit(2)
        }),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(addr).await.unwrap_or_else(|error| {
            eprintln!("hello: cannot listen on {addr}: {error}");
            std::process::exit(1)
        });
        eprintln!("hello: listening on {addr}");
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    eprintln!("hello: accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let mut builder = http1::Builder::new();
                builder
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .max_buf_size(MAX_HEAD_BYTES);
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service_fn(answer))
                    .await;
            });
        }
    });
}
