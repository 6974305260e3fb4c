//! The client against real servers on loopback: an https target with its own CA (rustls on
//! both sides), the CA missing, a non-2xx status, a refused connection and a target that never
//! answers.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use webhooks::{Client, Outcome, Send};

const SECRET: &[u8] = b"whsec_client_test";

fn send_to(target: String) -> Send {
    Send {
        no: 0,
        event_id: "evt_1".into(),
        event: "call.ringing".into(),
        callid: "42".into(),
        target,
        body: Bytes::from_static(br#"{"id":"evt_1","seq":1}"#),
        attempt: 1,
    }
}

/// Answers `status` to every request, after checking its signature and headers.
async fn serve(
    status: u16,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<bool>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (checked, seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let checked = checked.clone();
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let checked = checked.clone();
                async move {
                    let signature = req.headers()[webhooks::SIGNATURE_HEADER]
                        .to_str()
                        .unwrap()
                        .to_owned();
                    let id_ok = req.headers()[webhooks::EVENT_ID_HEADER] == "evt_1";
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs();
                    let ok = webhooks::verify(SECRET, &signature, &body, now, 60).is_ok();
                    let _ = checked.send(ok && id_ok);
                    let mut response = Response::new(Full::new(Bytes::new()));
                    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            let _ = http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                    None => {
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A server certificate for `localhost` and a file holding it as the CA to trust.
fn tls_pair() -> (tokio_rustls::TlsAcceptor, tempfile::NamedTempFile) {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = rustls_pki_types::CertificateDer::from(certified.cert.der().to_vec());
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), certified.cert.pem()).unwrap();
    (tokio_rustls::TlsAcceptor::from(Arc::new(config)), ca)
}

#[tokio::test]
async fn https_with_the_operators_ca_is_delivered_and_without_it_refused() {
    let (acceptor, ca) = tls_pair();
    let (addr, mut seen) = serve(204, Some(acceptor)).await;
    let target = format!("https://localhost:{}/hook", addr.port());
    let client = Client::new(SECRET, Duration::from_secs(5), ca.path().to_str().unwrap()).unwrap();
    assert_eq!(
        client.post(&send_to(target.clone())).await,
        Outcome::Delivered { status: 204 }
    );
    assert!(seen.recv().await.unwrap(), "signature and event id checked");
    // Again, over the pooled connection.
    assert_eq!(
        client.post(&send_to(target.clone())).await,
        Outcome::Delivered { status: 204 }
    );

    let public_roots_only = Client::new(SECRET, Duration::from_secs(5), "").unwrap();
    match public_roots_only.post(&send_to(target)).await {
        Outcome::Failed {
            status: None,
            error,
        } => {
            assert!(error.to_lowercase().contains("certificate"), "{error}")
        }
        other => panic!("a self-signed target was accepted: {other:?}"),
    }
}

#[tokio::test]
async fn statuses_refusals_and_silence_are_failures() {
    let client = Client::new(SECRET, Duration::from_millis(300), "").unwrap();
    let (addr, _seen) = serve(503, None).await;
    assert_eq!(
        client.post(&send_to(format!("http://{addr}/hook"))).await,
        Outcome::Failed {
            status: Some(503),
            error: "HTTP 503 Service Unavailable".into()
        }
    );
    // Nothing listens: refused at once.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_addr = closed.local_addr().unwrap();
    drop(closed);
    match client
        .post(&send_to(format!("http://{closed_addr}/")))
        .await
    {
        Outcome::Failed {
            status: None,
            error,
        } => assert!(error.contains("onnect"), "{error}"),
        other => panic!("{other:?}"),
    }
    // Accepts and never answers: the timeout.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (stream, _) = silent.accept().await.unwrap();
            held.push(stream);
        }
    });
    let started = std::time::Instant::now();
    assert_eq!(
        client
            .post(&send_to(format!("http://{silent_addr}/")))
            .await,
        Outcome::Failed {
            status: None,
            error: "no answer within 300 ms".into()
        }
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    holder.abort();
    // A CA file that holds no certificate is refused at start.
    let empty = tempfile::NamedTempFile::new().unwrap();
    assert!(Client::new(
        SECRET,
        Duration::from_secs(1),
        empty.path().to_str().unwrap()
    )
    .is_err());
    assert!(Client::new(SECRET, Duration::from_secs(1), "/nonexistent/ca.pem").is_err());
}
