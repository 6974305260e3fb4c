//! The webhook target of the load runs (`benches/load/signalling.sh` and `benches/load/api.sh`,
//! servers `callbridge-hooks` and `callbridge-hooks-stalled`): a lean receiver that keeps no
//! per-request memory, only counters, so that it can take hundreds of thousands of events.
//!
//! * `ok`: reads each request's body, checks its `Callbridge-Signature` as a real receiver
//!   would (`webhooks::verify`, 300 s tolerance), counts it as verified or unverified and
//!   answers `204`.
//! * `stall`: reads the request (and checks its signature likewise), counts it, and never
//!   answers: the request is held (an hour at most) until the sender gives up and closes the
//!   connection (callbridge: after `webhooks.timeout_ms`). This is the "receiver dead" case
//!   that costs the sender a connection per attempt; a target that refuses connections
//!   (nothing listening) is the cheaper kind of dead.
//!
//! Built like `hello.rs` (hyper 1 HTTP/1.1, tokio multi-thread runtime, one task per
//! connection, `TCP_NODELAY`), without a header-read timeout: an idle keep-alive connection
//! stays open until the sender's pool closes it, so no attempt meets a connection closed
//! under it. (`benches/src/webhook_receiver.rs` is the tests' receiver: it keeps every attempt
//! in memory, so it is not used here.)
//!
//! Its counts, one line `requests=N verified=N unverified=N held=N` (`held`: requests being
//! held unanswered now, `stall` mode), are written to COUNTS_FILE every second (replaced
//! atomically) when one is given, and to COUNTS_FILE and stdout on SIGTERM or SIGINT, after
//! which it exits 0.
//!
//! ```sh
//! cargo run --release -p callbridge-benches --bin webhook_sink -- 127.0.0.1:28190 ok SECRET /tmp/counts
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

/// Largest body read; a longer one counts as unverified (callbridge's events are ~1 KiB).
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Signature timestamps this far from now are refused (as examples/webhook_receiver.py does).
const TOLERANCE_SECS: u64 = 300;
/// How long a stalled request is held at most.
const STALL: Duration = Duration::from_secs(3600);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ok,
    Stall,
}

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    verified: AtomicU64,
    unverified: AtomicU64,
    held: AtomicU64,
}

impl Counts {
    fn line(&self) -> String {
        format!(
            "requests={} verified={} unverified={} held={}\n",
            self.requests.load(Ordering::Relaxed),
            self.verified.load(Ordering::Relaxed),
            self.unverified.load(Ordering::Relaxed),
            self.held.load(Ordering::Relaxed),
        )
    }
}

/// Counts a request as held while it lives (the sender closing the connection drops it).
struct Held<'a>(&'a AtomicU64);

impl<'a> Held<'a> {
    fn new(gauge: &'a AtomicU64) -> Held<'a> {
        gauge.fetch_add(1, Ordering::Relaxed);
        Held(gauge)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Sink {
    mode: Mode,
    secret: Vec<u8>,
    counts: Counts,
}

async fn answer(
    sink: Arc<Sink>,
    req: Request<Incoming>,
) -> Result<Response<Empty<Bytes>>, Infallible> {
    sink.counts.requests.fetch_add(1, Ordering::Relaxed);
    let held = (sink.mode == Mode::Stall).then(|| Held::new(&sink.counts.held));
    let (parts, body) = req.into_parts();
    let body = Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .map(|b| b.to_bytes());
    let now_secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let verified = match (
        parts
            .headers
            .get(webhooks::SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok()),
        &body,
    ) {
        (Some(signature), Ok(body)) => {
            webhooks::verify(&sink.secret, signature, body, now_secs, TOLERANCE_SECS).is_ok()
        }
        _ => false,
    };
    drop(body);
    let counter = if verified {
        &sink.counts.verified
    } else {
        &sink.counts.unverified
    };
    counter.fetch_add(1, Ordering::Relaxed);
    if held.is_some() {
        tokio::time::sleep(STALL).await;
    }
    drop(held);
    let mut response = Response::new(Empty::new());
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}

/// Writes the counts to `path` through a temporary file, so a reader never sees half a line.
fn write_counts(path: &Path, line: &str) {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    if let Err(error) = std::fs::write(&tmp, line).and_then(|()| std::fs::rename(&tmp, path)) {
        eprintln!("webhook_sink: cannot write {}: {error}", path.display());
    }
}

fn usage() -> ! {
    eprintln!("usage: webhook_sink ADDR ok|stall SECRET [COUNTS_FILE]");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !(3..=4).contains(&args.len()) || args[0] == "-h" || args[0] == "--help" {
        usage();
    }
    let addr: SocketAddr = args[0].parse().unwrap_or_else(|error| {
        eprintln!("webhook_sink: bad address {:?}: {error}", args[0]);
        std::process::exit(2)
    });
    let mode = match args[1].as_str() {
        "ok" => Mode::Ok,
        "stall" => Mode::Stall,
        _ => usage(),
    };
    let counts_file = args.get(3).map(PathBuf::from);
    let sink = Arc::new(Sink {
        mode,
        secret: args[2].as_bytes().to_vec(),
        counts: Counts::default(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        let listener = TcpListener::bind(addr).await.unwrap_or_else(|error| {
            eprintln!("webhook_sink: cannot listen on {addr}: {error}");
            std::process::exit(1)
        });
        eprintln!("webhook_sink: listening on {addr} ({})", args[1]);
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let stream = match accepted {
                        Ok((stream, _)) => stream,
                        Err(error) => {
                            eprintln!("webhook_sink: accept failed: {error}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let sink = Arc::clone(&sink);
                    tokio::spawn(async move {
                        let service = service_fn(move |req| answer(Arc::clone(&sink), req));
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                _ = tick.tick() => {
                    if let Some(path) = &counts_file {
                        write_counts(path, &sink.counts.line());
                    }
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        let line = sink.counts.line();
        if let Some(path) = &counts_file {
            write_counts(path, &line);
        }
        print!("{line}");
        std::process::exit(0)
    });
}
