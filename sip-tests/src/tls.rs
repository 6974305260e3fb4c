//! Certificates for the TLS tests, made per run with rcgen: a certificate authority of the
//! test's own, server certificates it signs (written as PEM files where callbridge's `[tls]` or
//! Kamailio's `tls.cfg` read them), and a rustls client that trusts it.
//!
//! Nothing here is fixed on disk or shared between tests: each [`TestPki`] is new, so a test
//! that trusts one CA and meets a certificate of another sees a real "unknown issuer".

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

/// A certificate authority made for one test, with its certificate written to `ca.pem` in a
/// directory of the test's choosing.
pub struct TestPki {
    ca: rcgen::Certificate,
    key: rcgen::KeyPair,
    ca_file: PathBuf,
}

/// The PEM files of a certificate a [`TestPki`] issued: the certificate and its key.
#[derive(Clone, Debug)]
pub struct Issued {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl TestPki {
    /// A new CA named `name`, its certificate written to `dir/<stem>-ca.pem`.
    pub fn new(dir: &Path, stem: &str, name: &str) -> TestPki {
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().expect("CA key");
        let ca = params.self_signed(&key).expect("CA certificate");
        let ca_file = dir.join(format!("{stem}-ca.pem"));
        std::fs::write(&ca_file, ca.pem()).expect("write the CA certificate");
        TestPki { ca, key, ca_file }
    }

    /// The CA's certificate (PEM): what `tls.ca_file` points at to trust this CA.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// A server certificate for `names` (an IP address becomes an IP address SAN), signed by
    /// this CA, written with its key to `dir/<stem>-cert.pem` and `dir/<stem>-key.pem`.
    pub fn issue(&self, dir: &Path, stem: &str, names: &[&str]) -> Issued {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let params = rcgen::CertificateParams::new(names).expect("certificate parameters");
        let key = rcgen::KeyPair::generate().expect("certificate key");
        let cert = params
            .signed_by(&key, &self.ca, &self.key)
            .expect("sign the certificate");
        let issued = Issued {
            cert_file: dir.join(format!("{stem}-cert.pem")),
            key_file: dir.join(format!("{stem}-key.pem")),
        };
        std::fs::write(&issued.cert_file, cert.pem()).expect("write the certificate");
        std::fs::write(&issued.key_file, key.serialize_pem()).expect("write the key");
        issued
    }

    /// A rustls client configuration that trusts this CA only.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        client_config_trusting([self.ca.der().clone()])
    }
}

/// A rustls client configuration that trusts only the certificates of the PEM file `ca_file`
/// (a carrier's [`ca_file`](crate::carrier::Carrier::ca_file)).
pub fn client_config_from_ca_file(ca_file: &Path) -> Arc<rustls::ClientConfig> {
    let certificates = CertificateDer::pem_file_iter(ca_file)
        .expect("read the CA file")
        .collect::<Result<Vec<_>, _>>()
        .expect("parse the CA file");
    client_config_trusting(certificates)
}

fn client_config_trusting(
    certificates: impl IntoIterator<Item = CertificateDer<'static>>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates {
        roots.add(certificate).expect("add the CA");
    }
    // ring, as the transport under test uses (its deprecation: see sip-core's tls.rs).
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// Connects to `server` over TLS, checking its certificate for its IP address against
/// `config`'s roots.
pub async fn connect(
    server: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(server).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::IpAddress(server.ip().into());
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}
