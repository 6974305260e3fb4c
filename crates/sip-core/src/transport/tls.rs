//! SIP over TLS (RFC 3261 §18, §26.2.1): the certificates and roots, and the handshakes that
//! turn an accepted or opened TCP connection into a TLS one.
//!
//! Everything after the handshake is the TCP machinery of `tcp.rs` on a TLS stream: the same
//! connection table (one `max_connections` for TCP and TLS together, the same per-IP limit and
//! trunk reserve), framer, write queues, idle timeout, and reuse of one connection per remote
//! address. What is TLS's own:
//!
//! - Admission happens before the handshake: a connection from an untrusted source is closed
//!   at accept, before it costs a handshake (SPEC "Trust boundary").
//! - The handshake has a deadline (`TransportConfig::tls_handshake_timeout`): a client that
//!   connects and says nothing holds its slot that long, not until the idle timeout.
//! - Outbound connections verify the server's certificate against [`TlsRoots`] (the configured
//!   CA file, or Mozilla's roots) for the name registered with
//!   [`TlsConfig::with_server_name`] for that IP (the trunk's host), or else for the IP
//!   address itself (which the certificate must then carry as an IP address SAN).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::stats::{bump, drop_one};
use super::tcp::{run_connection, Queued};
use super::Shared;
use crate::peer::{ConnectionId, Peer};

/// Why TLS settings could not be built.
///
/// It exists so that a bad certificate, key or CA file is reported at start, naming the file
/// and what is wrong with it, instead of as failed handshakes later.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read or is not PEM.
    #[error("cannot read the {what} {path}: {message}")]
    File {
        what: &'static str,
        path: String,
        message: String,
    },
    /// The file is PEM but holds nothing of what it should.
    #[error("the {what} {path} holds no {expected}")]
    Empty {
        what: &'static str,
        path: String,
        expected: &'static str,
    },
    /// rustls refused the material (a key that does not match the certificate, an unusable
    /// root, no protocol version in common).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// A listener was asked for without a certificate to present.
    #[error("a TLS listener needs a certificate and a private key")]
    ListenerWithoutIdentity,
    /// A server name that is neither a DNS name nor an IP address.
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
}

/// Our certificate chain and its private key: presented by the TLS listener, and to a server
/// that asks for a client certificate.
///
/// It exists so that the key is read (and checked against the certificate) once, at start.
pub struct TlsIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("TlsIdentity")
            .field("certificates", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// Reads a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or
    /// SEC1).
    pub fn from_pem_files(cert_file: &Path, key_file: &Path) -> Result<TlsIdentity, TlsError> {
        let chain = read_certificates("certificate file", cert_file)?;
        let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => TlsError::Empty {
                what: "key file",
                path: key_file.display().to_string(),
                expected: "private key",
            },
            other => TlsError::File {
                what: "key file",
                path: key_file.display().to_string(),
                message: other.to_string(),
            },
        })?;
        Ok(TlsIdentity { chain, key })
    }

    /// From DER already in memory (tests, or an embedder that keeps its own certificates).
    pub fn from_der(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Self {
        TlsIdentity { chain, key }
    }
}

/// The certificate authorities a server's certificate must chain to when we connect.
///
/// It exists so that the choice — an operator's CA file, or the public roots — is made by
/// whoever configures the transport, and a CA file that holds no certificate is an error at
/// start rather than a transport that trusts nothing.
#[derive(Clone, Debug)]
pub struct TlsRoots(rustls::RootCertStore);

impl TlsRoots {
    /// Mozilla's roots, compiled in (webpki-roots): a machine without a CA bundle still
    /// verifies a carrier with a public certificate.
    pub fn webpki() -> TlsRoots {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        TlsRoots(roots)
    }

    /// Only the certificates of a PEM file (at least one).
    pub fn from_pem_file(ca_file: &Path) -> Result<TlsRoots, TlsError> {
        TlsRoots::from_der(read_certificates("CA file", ca_file)?)
    }

    /// Only these certificates.
    pub fn from_der(
        certificates: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Result<TlsRoots, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for certificate in certificates {
            roots.add(certificate)?;
        }
        Ok(TlsRoots(roots))
    }
}

/// SIP over TLS for one transport: the listener (if any), what it presents, what servers we
/// connect to must present, and the name each is checked for.
///
/// It exists so that everything TLS needs is built and checked once, before the transport
/// binds; the rustls configurations inside are shared by every connection.
#[derive(Clone)]
pub struct TlsConfig {
    listen: Option<SocketAddr>,
    server: Option<Arc<rustls::ServerConfig>>,
    client: Arc<rustls::ClientConfig>,
    server_names: HashMap<IpAddr, ServerName<'static>>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("listen", &self.listen)
            .field("certificate", &self.server.is_some())
            .field("server_names", &self.server_names)
            .finish_non_exhaustive()
    }
}

/// Two settings are equal when they were built from the same rustls configurations (the
/// configurations themselves cannot be compared): what `TransportConfig`'s equality needs.
impl PartialEq for TlsConfig {
    fn eq(&self, other: &Self) -> bool {
        self.listen == other.listen
            && self.server_names == other.server_names
            && Arc::ptr_eq(&self.client, &other.client)
            && match (&self.server, &other.server) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
    }
}

impl Eq for TlsConfig {}

impl TlsConfig {
    /// TLS toward servers whose certificates chain to `roots`; with an `identity`, also
    /// presented to a server that asks for a client certificate, and ready for a listener
    /// ([`with_listener`](Self::with_listener)). TLS 1.2 and 1.3, rustls' safe defaults.
    pub fn new(identity: Option<TlsIdentity>, roots: TlsRoots) -> Result<TlsConfig, TlsError> {
        let client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots.0);
        let (client, server) = match identity {
            Some(TlsIdentity { chain, key }) => {
                let server = rustls::ServerConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()?
                    // Who may connect is decided by source address before the handshake
                    // (`sip.trusted_peers` and the trunk); no client certificate is asked.
                    .with_no_client_auth()
                    .with_single_cert(chain.clone(), key.clone_key())?;
                (
                    client.with_client_auth_cert(chain, key)?,
                    Some(Arc::new(server)),
                )
            }
            None => (client.with_no_client_auth(), None),
        };
        Ok(TlsConfig {
            listen: None,
            server,
            client: Arc::new(client),
            server_names: HashMap::new(),
        })
    }

    /// Also accept SIP over TLS on `addr` (port 0: any free port, see
    /// [`TransportHandle::tls_local_addr`](super::TransportHandle::tls_local_addr)).
    pub fn with_listener(mut self, addr: SocketAddr) -> Result<TlsConfig, TlsError> {
        if self.server.is_none() {
            return Err(TlsError::ListenerWithoutIdentity);
        }
        self.listen = Some(addr);
        Ok(self)
    }

    /// Connections to `ip` check the server's certificate for `name` (a DNS name, or an IP
    /// address written as text), and send it as SNI when it is a DNS name. Used for the trunk,
    /// whose configured host name is what its certificate names. Other IPs are checked for the
    /// address itself.
    pub fn with_server_name(mut self, ip: IpAddr, name: &str) -> Result<TlsConfig, TlsError> {
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        let parsed = ServerName::try_from(bare.to_owned())
            .map_err(|_| TlsError::ServerName(name.to_owned()))?;
        self.server_names.insert(ip.to_canonical(), parsed);
        Ok(self)
    }

    /// Where the listener binds, when there is one.
    pub fn listen(&self) -> Option<SocketAddr> {
        self.listen
    }
}

/// ring as the crypto provider. rustls 0.23.48 deprecates ring's provider for lacking
/// post-quantum key exchange; it stays the choice here, as in crates/webhooks: aws-lc-rs needs
/// cmake to build, and a signalling session's confidentiality is needed for its call, not for
/// decades.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate of a PEM file; at least one.
fn read_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |message: String| TlsError::File {
        what,
        path: path.display().to_string(),
        message,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(e.to_string()))?;
    if certificates.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.display().to_string(),
            expected: "certificate",
        });
    }
    Ok(certificates)
}

/// The live TLS state of a bound transport: the acceptor of the listener and the connector
/// with its server names.
pub(super) struct TlsState {
    acceptor: Option<TlsAcceptor>,
    connector: TlsConnector,
    server_names: HashMap<IpAddr, ServerName<'static>>,
}

impl TlsState {
    pub(super) fn new(config: &TlsConfig) -> TlsState {
        TlsState {
            acceptor: config.server.clone().map(TlsAcceptor::from),
            connector: TlsConnector::from(config.client.clone()),
            server_names: config.server_names.clone(),
        }
    }

    /// The name a server at `ip` must prove: the one registered for it, else its address.
    fn server_name(&self, ip: IpAddr) -> ServerName<'static> {
        let ip = ip.to_canonical();
        self.server_names
            .get(&ip)
            .cloned()
            .unwrap_or_else(|| ServerName::IpAddress(ip.into()))
    }
}

/// Runs the server side of the handshake on an admitted connection (already in the table, so
/// that it holds its slot), within the handshake timeout, then drives it as any connection.
/// A failed or silent handshake frees the slot and fails whatever was queued for it.
pub(super) async fn accept_and_run(
    shared: Arc<Shared>,
    id: ConnectionId,
    addr: SocketAddr,
    stream: TcpStream,
    mut queued: Queued,
) {
    let Some(acceptor) = shared.tls.as_ref().and_then(|tls| tls.acceptor.clone()) else {
        // Not reached: the TLS accept loop runs only with an acceptor.
        abandon(&shared, id, &mut queued, "TLS is not configured".into());
        drop_one(&shared.stats.connections_open);
        return;
    };
    let timeout = shared.config.tls_handshake_timeout;
    let failure = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => {
            tracing::debug!(%addr, ?id, "TLS handshake done (accepted)");
            run_connection(shared, Peer::tls(addr, Some(id)), stream, queued).await;
            return;
        }
        Ok(Err(e)) => format!("TLS handshake with {addr} failed: {e}"),
        Err(_) => format!("no TLS handshake from {addr} within {timeout:?}"),
    };
    // A scanner or a misconfigured peer: counted, logged at debug (it could be a flood).
    bump(&shared.stats.tls_handshake_failures);
    tracing::debug!(%addr, ?id, %failure, "TLS connection dropped");
    drop_one(&shared.stats.connections_open);
    abandon(&shared, id, &mut queued, failure);
}

/// The client side of the handshake on a connection we opened to `addr`, within the
/// handshake timeout, verifying the server's certificate (see the module docs).
pub(super) async fn connect(
    shared: &Shared,
    addr: SocketAddr,
    stream: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let Some(tls) = shared.tls.as_ref() else {
        return Err("TLS is not configured".into());
    };
    let name = tls.server_name(addr.ip());
    let timeout = shared.config.tls_handshake_timeout;
    let result = tokio::time::timeout(timeout, tls.connector.connect(name.clone(), stream)).await;
    let error = match result {
        Ok(Ok(stream)) => return Ok(stream),
        Ok(Err(e)) => format!("TLS handshake with {addr} (as {name:?}) failed: {e}"),
        Err(_) => format!("TLS handshake with {addr} timed out after {timeout:?}"),
    };
    bump(&shared.stats.tls_handshake_failures);
    Err(error)
}

/// Removes a connection that never got to run and fails what was queued on it.
pub(super) fn abandon(shared: &Shared, id: ConnectionId, queued: &mut Queued, why: String) {
    shared.connections.lock().remove(id);
    queued.fail_all(shared, &why);
}
