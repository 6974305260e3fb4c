//! A webhook receiver for tests and the load harness: a real hyper HTTP/1.1 server that
//! verifies each event's `Callbridge-Signature`, records every attempt in arrival order, and
//! answers as its [`Rule`] says — a status, or nothing at all (a stalled target).
//!
//! sip-tests drives it in-process ([`Receiver::start`]). It keeps every attempt in memory; the
//! load harness's target is the counting `src/bin/webhook_sink.rs` instead.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpListener;

/// How the receiver answers one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// This status, at once.
    Status(u16),
    /// No answer: the request is held until the sender gives up (a hung target).
    Stall,
}

/// Decides the reply to an attempt from the event (`body`) and how many attempts of that
/// event id arrived before this one plus one (1 for the first).
pub type Rule = Box<dyn Fn(&serde_json::Value, u32) -> Reply + Send + Sync>;

/// One request as it arrived.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub signature: Option<String>,
    /// Did the signature verify against the raw body, with a fresh timestamp?
    pub verified: bool,
    /// The raw body, byte for byte as signed.
    pub raw: Bytes,
    /// The body parsed (`Null` if it was not JSON).
    pub body: serde_json::Value,
    /// What the receiver answered.
    pub reply: Reply,
    pub at: Instant,
}

struct State {
    secret: Vec<u8>,
    rule: Rule,
    attempts: Vec<Attempt>,
}

/// The running receiver.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Receiver {
    /// Listens on `bind` (port 0: any free one), answering 200 to everything until told
    /// otherwise; checks signatures with `secret`.
    pub async fn start(bind: SocketAddr, secret: &str) -> std::io::Result<Receiver> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            secret: secret.as_bytes().to_vec(),
            rule: Box::new(|_, _| Reply::Status(200)),
            attempts: Vec::new(),
        }));
        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(Arc::clone(&state), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Receiver { addr, state })
    }

    /// The URL to configure as `webhooks.url` (path `/hook`).
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Answers from now on as `rule` says.
    pub fn set_rule(&self, rule: Rule) {
        self.state.lock().rule = rule;
    }

    /// Every attempt so far, in arrival order.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.state.lock().attempts.clone()
    }

    /// The attempts answered 2xx, in arrival order: the events delivered.
    pub fn delivered(&self) -> Vec<Attempt> {
        self.state
            .lock()
            .attempts
            .iter()
            .filter(|a| matches!(a.reply, Reply::Status(s) if (200..300).contains(&s)))
            .cloned()
            .collect()
    }

    /// Waits until `done` holds for the delivered events, at most `wait`; returns them.
    pub async fn wait_delivered(
        &self,
        wait: Duration,
        done: impl Fn(&[Attempt]) -> bool,
    ) -> Vec<Attempt> {
        let deadline = Instant::now() + wait;
        loop {
            let delivered = self.delivered();
            if done(&delivered) || Instant::now() >= deadline {
                return delivered;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn answer(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let event_id = header(webhooks::EVENT_ID_HEADER);
    let event_type = header(webhooks::EVENT_TYPE_HEADER);
    let signature = header(webhooks::SIGNATURE_HEADER);
    let raw = match req.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let body = serde_json::from_slice(&raw).unwrap_or(serde_json::Value::Null);
    let now_secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let reply = {
        let mut state = state.lock();
        let verified = signature
            .as_deref()
            .is_some_and(|sig| webhooks::verify(&state.secret, sig, &raw, now_secs, 300).is_ok());
        let previous = state
            .attempts
            .iter()
            .filter(|a| a.event_id.is_some() && a.event_id == event_id)
            .count();
        let reply = (state.rule)(&body, previous as u32 + 1);
        state.attempts.push(Attempt {
            event_id,
            event_type,
            signature,
            verified,
            raw,
            body,
            reply,
            at: Instant::now(),
        });
        reply
    };
    let status = match reply {
        Reply::Status(status) => status,
        Reply::Stall => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            504
        }
    };
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    Ok(response)
}
