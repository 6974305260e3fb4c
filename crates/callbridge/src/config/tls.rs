//! `[tls]`: SIP over TLS (SPEC "Configuration contract"): callbridge's certificate and the
//! listener it is presented on (`tls.listen`, for trunks that deliver calls, or send the
//! requests of a dialog, over TLS), and the roots the trunk's certificate must chain to when
//! callbridge connects to it (`trunk.transport = "tls"`).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sip_core::transport::{TlsConfig, TlsIdentity, TlsRoots, TransportConfig};

use super::{millis, ConfigError};

/// The longest handshake deadline accepted: past a minute a silent client holds its slot for
/// no good reason.
const MAX_HANDSHAKE_TIMEOUT_MS: u64 = 60_000;

/// `[tls]`. Every file is PEM. Nothing is read unless TLS is in use (a listener, or a trunk
/// over TLS), and then everything is read and checked at start.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    /// Where SIP over TLS is accepted, `ip:port` (e.g. `"0.0.0.0:5061"`); empty: no
    /// listener. Required when `trunk.transport = "tls"`: the trunk sends the requests of a
    /// dialog (its BYE) to callbridge's Contact, which then names this port.
    pub listen: String,
    /// The certificate chain (leaf first) the listener presents, and callbridge presents to a
    /// trunk that asks for a client certificate. Required with `listen`.
    pub cert_file: String,
    /// The private key of that certificate (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// The roots the trunk's certificate must chain to; empty: Mozilla's public roots
    /// (compiled in).
    pub ca_file: String,
    /// How long a TLS handshake may take, on connections accepted and opened, before the
    /// connection is dropped (a client that connects and says nothing frees its slot then).
    pub handshake_timeout_ms: u64,
}

impl Default for TlsSection {
    fn default() -> Self {
        TlsSection {
            listen: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
            ca_file: String::new(),
            handshake_timeout_ms: millis(TransportConfig::default().tls_handshake_timeout),
        }
    }
}

/// The trunk as TLS sees it: its addresses, and the host name its certificate must carry.
#[derive(Clone, Copy, Debug)]
pub struct TlsTrunk<'a> {
    /// The trunk's resolved IPs: every target of its RFC 3263 resolution at start. Each is
    /// checked for `host`, the domain as configured (RFC 5922 §4: the name in the URI, not
    /// the SRV target's). A target that a later re-resolution brings is checked for its IP
    /// (the transport's names are set when it binds).
    pub ips: &'a [IpAddr],
    /// The host of `trunk.address` (a DNS name, or the IP written as text).
    pub host: &'a str,
}

impl TlsSection {
    /// The listener's address; `None` when `listen` is empty.
    pub fn listen_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let listen = self.listen.trim();
        if listen.is_empty() {
            return Ok(None);
        }
        listen.parse().map(Some).map_err(|_| {
            ConfigError::Invalid(format!(
                "tls.listen {listen:?} is not an ip:port address (e.g. \"0.0.0.0:5061\")"
            ))
        })
    }

    /// The handshake deadline of the transport (`TransportConfig::tls_handshake_timeout`).
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }

    /// The transport's TLS settings, reading and checking every file: `None` when TLS is not
    /// in use (no listener and no `trunk` over TLS). With `trunk`, its certificate is checked
    /// for its configured host.
    pub fn transport_tls(&self, trunk: Option<TlsTrunk>) -> Result<Option<TlsConfig>, ConfigError> {
        let listen = self.listen_addr()?;
        if listen.is_none() && trunk.is_none() {
            return Ok(None);
        }
        let tls_error =
            |e: sip_core::transport::TlsError| ConfigError::Invalid(format!("[tls]: {e}"));
        let identity = match (self.cert_file.trim(), self.key_file.trim()) {
            ("", "") => None,
            (cert, key) if !cert.is_empty() && !key.is_empty() => Some(
                TlsIdentity::from_pem_files(Path::new(cert), Path::new(key)).map_err(tls_error)?,
            ),
            _ => {
                return Err(ConfigError::Invalid(
                    "tls.cert_file and tls.key_file go together: set both or neither".into(),
                ))
            }
        };
        let roots = match self.ca_file.trim() {
            "" => TlsRoots::webpki(),
            ca_file => TlsRoots::from_pem_file(Path::new(ca_file)).map_err(tls_error)?,
        };
        let mut config = TlsConfig::new(identity, roots).map_err(tls_error)?;
        if let Some(addr) = listen {
            config = config.with_listener(addr).map_err(|_| {
                ConfigError::Invalid(
                    "tls.listen is set: tls.cert_file and tls.key_file are required".into(),
                )
            })?;
        }
        if let Some(trunk) = trunk {
            for ip in trunk.ips {
                config = config
                    .with_server_name(*ip, trunk.host)
                    .map_err(tls_error)?;
            }
        }
        Ok(Some(config))
    }

    /// Checks the keys, and reads every file when TLS is in use or a file is named (so that a
    /// broken certificate is an error at start, not a failed handshake at the first call).
    /// `trunk_over_tls`: `trunk.transport = "tls"`, which needs the listener.
    pub(super) fn validate(&self, trunk_over_tls: bool) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        if !(1..=MAX_HANDSHAKE_TIMEOUT_MS).contains(&self.handshake_timeout_ms) {
            return invalid(format!(
                "tls.handshake_timeout_ms = {} must be 1-{MAX_HANDSHAKE_TIMEOUT_MS}",
                self.handshake_timeout_ms
            ));
        }
        let listen = self.listen_addr()?;
        if trunk_over_tls && listen.is_none() {
            return invalid(
                "trunk.transport = \"tls\" needs tls.listen (with tls.cert_file and \
                 tls.key_file): the trunk sends the requests of a call (its BYE) to \
                 callbridge's Contact over TLS"
                    .into(),
            );
        }
        let named = [&self.cert_file, &self.key_file, &self.ca_file]
            .iter()
            .any(|file| !file.trim().is_empty());
        if listen.is_some() || named {
            // Built once here for its checks; the transport's own is built at start. The
            // trunk's name is not known yet (it may need resolving): any IP will do.
            let trunk = TlsTrunk {
                ips: &[IpAddr::from([0, 0, 0, 0])],
                host: "0.0.0.0",
            };
            self.transport_tls(Some(trunk))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA, and a certificate it signs for 127.0.0.1, written as PEM into `dir`: (cert,
    /// key, ca).
    fn write_pki(dir: &Path) -> (String, String, String) {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let write = |name: &str, text: String| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path.display().to_string()
        };
        (
            write("cert.pem", cert.pem()),
            write("key.pem", key.serialize_pem()),
            write("ca.pem", ca.pem()),
        )
    }

    #[test]
    fn off_by_default_and_nothing_is_read() {
        let tls = TlsSection::default();
        assert!(tls.validate(false).is_ok());
        assert_eq!(tls.listen_addr().unwrap(), None);
        assert!(tls.transport_tls(None).unwrap().is_none());
        assert_eq!(
            tls.handshake_timeout(),
            TransportConfig::default().tls_handshake_timeout
        );
    }

    #[test]
    fn a_listener_needs_a_readable_certificate_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, ca) = write_pki(dir.path());
        let mut tls = TlsSection {
            listen: "127.0.0.1:0".into(),
            ..TlsSection::default()
        };
        let error = tls.validate(false).unwrap_err().to_string();
        assert!(
            error.contains("tls.cert_file and tls.key_file are required"),
            "{error}"
        );
        tls.cert_file = cert.clone();
        let error = tls.validate(false).unwrap_err().to_string();
        assert!(error.contains("set both or neither"), "{error}");
        tls.key_file = dir.path().join("missing.pem").display().to_string();
        let error = tls.validate(false).unwrap_err().to_string();
        assert!(error.contains("missing.pem"), "names the file: {error}");
        // The certificate where the key should be.
        tls.key_file = cert.clone();
        let error = tls.validate(false).unwrap_err().to_string();
        assert!(error.contains("no private key"), "{error}");
        tls.key_file = key;
        assert!(tls.validate(false).is_ok());
        let config = tls.transport_tls(None).unwrap().unwrap();
        assert_eq!(config.listen(), Some("127.0.0.1:0".parse().unwrap()));
        // A CA file that is not one.
        tls.ca_file = dir.path().join("nothing.pem").display().to_string();
        std::fs::write(&tls.ca_file, "").unwrap();
        let error = tls.validate(false).unwrap_err().to_string();
        assert!(error.contains("no certificate"), "{error}");
        tls.ca_file = ca;
        assert!(tls.validate(true).is_ok());
        tls.listen = "5061".into();
        assert!(tls.validate(false).is_err());
    }

    #[test]
    fn a_trunk_over_tls_needs_the_listener() {
        let tls = TlsSection::default();
        let error = tls.validate(true).unwrap_err().to_string();
        assert!(error.contains("needs tls.listen"), "{error}");
        let zero = TlsSection {
            handshake_timeout_ms: 0,
            ..TlsSection::default()
        };
        assert!(zero.validate(false).is_err());
    }
}
