//! The HTTP side: one POST per attempt, signed afresh, bounded by `webhooks.timeout_ms`.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{CONTENT_TYPE, USER_AGENT};
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::schedule::{Outcome, Send};
use crate::sign::{signature, EVENT_ID_HEADER, EVENT_TYPE_HEADER, SIGNATURE_HEADER};

/// Idle connections kept per target host: enough for `max_in_flight` requests to one
/// backend without reconnecting.
const MAX_IDLE_PER_HOST: usize = 64;
/// How long an idle connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// The most of a response body read (and thrown away) so that its connection can be reused;
/// a longer body closes the connection instead.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read webhooks.ca_file {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Posts events: hyper's pooled client over TCP or TLS (rustls), with the signing secret and
/// the per-attempt timeout. Cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct Client {
    http: HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>,
    secret: Arc<[u8]>,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client signing with `secret`, giving each attempt `timeout` (connection included),
    /// trusting the public roots and, if `ca_file` is not empty, the PEM certificates in it.
    pub fn new(secret: &[u8], timeout: Duration, ca_file: &str) -> Result<Client, ClientError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if !ca_file.is_empty() {
            let ca_error = |message: String| ClientError::CaFile {
                path: ca_file.to_owned(),
                message,
            };
            let certs = CertificateDer::pem_file_iter(ca_file)
                .map_err(|e| ca_error(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ca_error(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca_error("no certificate in it".into()));
            }
            for cert in certs {
                roots.add(cert)?;
            }
        }
        // rustls 0.23.48 deprecates ring's provider for lacking post-quantum key exchange; it
        // stays the right trade here (see Cargo.toml: aws-lc-rs needs cmake to build), and a
        // webhook's confidentiality is a session's, not a decade's.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let http = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
            .build(connector);
        Ok(Client {
            http,
            secret: Arc::from(secret),
            timeout,
        })
    }

    /// Makes one attempt: POSTs the body to the target, signed now. A 2xx whose head arrives
    /// within the timeout is success; anything else is a failure with its status or error.
    pub async fn post(&self, send: &Send) -> Outcome {
        let now_secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let request = match self.request(send, now_secs) {
            Ok(request) => request,
            Err(error) => {
                return Outcome::Failed {
                    status: None,
                    error,
                }
            }
        };
        let exchange = async {
            let response = self.http.request(request).await.map_err(|e| chain(&e))?;
            let status = response.status();
            // Read a short body to the end so the connection goes back to the pool; a long
            // one is cut off (its connection closes).
            let _ = Limited::new(response.into_body(), MAX_RESPONSE_BODY)
                .collect()
                .await;
            Ok::<_, String>(status)
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(status)) if status.is_success() => Outcome::Delivered {
                status: status.as_u16(),
            },
            Ok(Ok(status)) => Outcome::Failed {
                status: Some(status.as_u16()),
                error: format!("HTTP {status}"),
            },
            Ok(Err(error)) => Outcome::Failed {
                status: None,
                error,
            },
            Err(_) => Outcome::Failed {
                status: None,
                error: format!("no answer within {} ms", self.timeout.as_millis()),
            },
        }
    }

    fn request(&self, send: &Send, now_secs: u64) -> Result<Request<Full<Bytes>>, String> {
        let header = |value: &str| {
            HeaderValue::from_str(value).map_err(|_| format!("invalid header value {value:?}"))
        };
        Request::post(send.target.as_str())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(USER_AGENT, HeaderValue::from_static("callbridge-webhooks"))
            .header(
                SIGNATURE_HEADER,
                header(&signature(&self.secret, now_secs, &send.body))?,
            )
            .header(EVENT_ID_HEADER, header(&send.event_id)?)
            .header(EVENT_TYPE_HEADER, header(&send.event)?)
            .body(Full::new(send.body.clone()))
            .map_err(|e| format!("invalid request to {}: {e}", send.target))
    }
}

/// An error and its sources, `outer: inner: innermost` (hyper's own message alone says only
/// "client error (Connect)").
fn chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}
