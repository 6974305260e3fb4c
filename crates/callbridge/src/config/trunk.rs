//! `[trunk]`: the carrier side of leg B (SPEC "Configuration contract"): where it is, how it
//! is reached, and the digest credentials callbridge answers its challenges with.

use b2bua::outbound::LocalIdentity;
use serde::{Deserialize, Serialize};
use sip_core::Transport;

use super::ConfigError;

/// The longest `trunk.ping_secs`: a trunk silent for three hours is found down after nine.
const MAX_PING_SECS: u64 = 3600;

/// `[trunk]`. `sip.trunk` stays accepted as the trunk's address: `trunk.address`, when set,
/// takes its place.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrunkSection {
    /// The trunk: an IP address (with or without a port), `host:port` (A/AAAA), or a domain
    /// resolved per RFC 3263 (NAPTR, SRV, A/AAAA: [`crate::trunk_dns`]); empty: `sip.trunk`.
    pub address: String,
    /// How leg B reaches the trunk: `udp`, `tcp` or `tls` (which needs `[tls]`: a listener
    /// for the trunk's requests in the dialog, and the roots its certificate chains to).
    pub transport: String,
    /// Digest credentials answering the trunk's 401/407 challenges; empty: none (a challenge
    /// then fails leg B, and leg A gets 403).
    pub username: String,
    pub password: String,
    /// Keep a registration at the trunk.
    pub register: bool,
    /// The registration's requested lifetime.
    pub register_expires_secs: u64,
    /// OPTIONS keepalive interval (1-3600 s); 0: off. After 3 pings unanswered the trunk is
    /// down, and new INVITEs get 503 at once until it answers one again.
    pub ping_secs: u64,
}

impl Default for TrunkSection {
    fn default() -> Self {
        TrunkSection {
            address: String::new(),
            transport: "udp".into(),
            username: String::new(),
            password: String::new(),
            register: false,
            register_expires_secs: 600,
            ping_secs: 0,
        }
    }
}

impl TrunkSection {
    /// The trunk's address: `trunk.address`, else `sip_trunk` (the `sip.trunk` key).
    pub fn address<'a>(&'a self, sip_trunk: &'a str) -> &'a str {
        if self.address.trim().is_empty() {
            sip_trunk
        } else {
            self.address.trim()
        }
    }

    /// The trunk as leg B's Request-URI names it: host (name or address) and port (`None`
    /// when the address has none: a domain resolved through SRV).
    pub fn uri_host_port(&self, sip_trunk: &str) -> (String, Option<u16>) {
        let address = self.address(sip_trunk);
        match split_host_port(address) {
            (host, port) if host.len() < address.len() => (host.to_owned(), Some(port)),
            (host, _) => (host.to_owned(), None),
        }
    }

    /// The host of the trunk's address (a DNS name or an IP literal): what a TLS trunk's
    /// certificate must name.
    pub fn host<'a>(&'a self, sip_trunk: &'a str) -> &'a str {
        split_host_port(self.address(sip_trunk)).0
    }

    /// The transport toward the trunk (validated: `udp`, `tcp` or `tls`).
    pub fn transport(&self) -> Transport {
        match self.transport.trim().to_ascii_lowercase().as_str() {
            "tcp" => Transport::Tcp,
            "tls" => Transport::Tls,
            _ => Transport::Udp,
        }
    }

    /// The OPTIONS keepalive interval (`ping_secs`), `None` when off.
    pub fn ping_interval(&self) -> Option<std::time::Duration> {
        (self.ping_secs > 0).then(|| std::time::Duration::from_secs(self.ping_secs))
    }

    /// The digest credentials, when a username is configured.
    pub fn credentials(&self) -> Option<b2bua::auth::Credentials> {
        (!self.username.is_empty()).then(|| b2bua::auth::Credentials {
            username: self.username.clone(),
            password: self.password.clone(),
        })
    }

    /// callbridge's registration at the trunk, when `register` is on: the account's binding
    /// at the trunk's address (`sip_trunk`: the `sip.trunk` key, used when `address` is
    /// empty), with the Contact leg B gives (`local`'s, over the trunk's transport: its port,
    /// the TLS listener's over TLS).
    pub fn registration_config(
        &self,
        sip_trunk: &str,
        local: &LocalIdentity,
    ) -> Option<b2bua::registration::RegistrationConfig> {
        if !self.register {
            return None;
        }
        let credentials = self.credentials()?;
        let (host, port) = self.uri_host_port(sip_trunk);
        let contact = local.contact_over(&credentials.username, self.transport());
        Some(b2bua::registration::RegistrationConfig {
            registrar_host: host,
            registrar_port: port,
            credentials,
            contact,
            expires: std::time::Duration::from_secs(self.register_expires_secs),
            agent: local.agent.clone(),
        })
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| Err(ConfigError::Invalid(message));
        match self.transport.trim().to_ascii_lowercase().as_str() {
            "udp" | "tcp" | "tls" => {}
            other => return invalid(format!("trunk.transport {other:?} must be udp, tcp or tls")),
        }
        if self.username.is_empty() && !self.password.is_empty() {
            return invalid("trunk.password is set but trunk.username is empty".into());
        }
        let printable = |s: &str| !s.chars().any(|c| c.is_control() || c == '"');
        if !printable(&self.username) || !printable(&self.password) {
            return invalid(
                "trunk.username and trunk.password must not contain control characters or '\"'"
                    .into(),
            );
        }
        if self.register && (self.username.is_empty() || self.password.is_empty()) {
            return invalid("trunk.register = true needs trunk.username and trunk.password".into());
        }
        if !(60..=86_400).contains(&self.register_expires_secs) {
            return invalid(format!(
                "trunk.register_expires_secs = {} must be 60-86400",
                self.register_expires_secs
            ));
        }
        if self.ping_secs > MAX_PING_SECS {
            return invalid(format!(
                "trunk.ping_secs = {} must be 0 (off) or 1-{MAX_PING_SECS}",
                self.ping_secs
            ));
        }
        Ok(())
    }
}

/// `host:port` (or `[v6]:port`) split; a missing port is SIP's default, 5060.
fn split_host_port(address: &str) -> (&str, u16) {
    if let Some((host, port)) = address.rsplit_once(':') {
        if let Ok(port) = port.parse() {
            if !host.contains(':') || (host.starts_with('[') && host.ends_with(']')) {
                return (host, port);
            }
        }
    }
    (address, 5060)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_falls_back_to_sip_trunk() {
        let mut trunk = TrunkSection::default();
        assert_eq!(trunk.address("10.0.0.1:5060"), "10.0.0.1:5060");
        trunk.address = "10.0.0.2:5080".into();
        assert_eq!(trunk.address("10.0.0.1:5060"), "10.0.0.2:5080");
    }

    #[test]
    fn transports_and_credentials_checked() {
        let mut trunk = TrunkSection {
            transport: "TCP".into(),
            ..TrunkSection::default()
        };
        assert!(trunk.validate().is_ok());
        assert_eq!(trunk.transport(), Transport::Tcp);
        trunk.transport = "tls".into();
        assert!(trunk.validate().is_ok());
        assert_eq!(trunk.transport(), Transport::Tls);
        trunk.transport = "sctp".into();
        assert!(trunk.validate().is_err());
        trunk.transport = "udp".into();
        trunk.password = "secret".into();
        assert!(trunk.validate().is_err(), "a password without a username");
        trunk.username = "2001".into();
        assert!(trunk.validate().is_ok());
        assert_eq!(trunk.credentials().map(|c| c.username), Some("2001".into()));
        trunk.username = "a\"b".into();
        assert!(trunk.validate().is_err());
    }

    #[test]
    fn registration_needs_credentials_and_names_the_trunk() {
        let mut trunk = TrunkSection {
            register: true,
            username: "2001".into(),
            ..TrunkSection::default()
        };
        assert!(trunk.validate().is_err(), "no password");
        trunk.password = "secret".into();
        trunk.transport = "tcp".into();
        assert!(trunk.validate().is_ok());
        let local = LocalIdentity {
            public_addr: "192.0.2.1".into(),
            port: 5060,
            tls_port: Some(5061),
            agent: None,
        };
        let config = trunk
            .registration_config("sip.carrier.example:5080", &local)
            .unwrap();
        assert_eq!(config.registrar_host, "sip.carrier.example");
        assert_eq!(config.registrar_port, Some(5080));
        // A domain resolved through SRV: the REGISTER names the domain alone.
        trunk.address = "carrier.example".into();
        let srv = trunk.registration_config("", &local).unwrap();
        assert_eq!(
            (srv.registrar_host.as_str(), srv.registrar_port),
            ("carrier.example", None)
        );
        trunk.address = String::new();
        assert_eq!(
            config.contact.to_string(),
            "sip:2001@192.0.2.1:5060;transport=tcp"
        );
        assert_eq!(
            trunk.host("sip.carrier.example:5080"),
            "sip.carrier.example"
        );
        // Over TLS, the binding names the TLS listener.
        trunk.transport = "tls".into();
        let config = trunk
            .registration_config("sip.carrier.example:5081", &local)
            .unwrap();
        assert_eq!(
            config.contact.to_string(),
            "sip:2001@192.0.2.1:5061;transport=tls"
        );
        assert_eq!(split_host_port("[::1]:5070"), ("[::1]", 5070));
        assert_eq!(
            split_host_port("carrier.example"),
            ("carrier.example", 5060)
        );
        trunk.register = false;
        assert!(trunk.registration_config("x:1", &local).is_none());
    }

    #[test]
    fn an_ipv6_trunk_is_bracketed_in_the_request_uri() {
        let trunk = TrunkSection::default();
        for (address, host, port) in [
            ("[::1]:5080", "[::1]", Some(5080)),
            ("[2001:db8::1]", "[2001:db8::1]", None),
            ("::1", "::1", None),
        ] {
            let (uri_host, uri_port) = trunk.uri_host_port(address);
            assert_eq!((uri_host.as_str(), uri_port), (host, port), "{address}");
            // Either form comes out bracketed once.
            assert_eq!(
                sip_core::Uri::sip(Some("3001"), &uri_host, uri_port)
                    .to_string()
                    .replace(":5080", ""),
                format!("sip:3001@[{}]", host.trim_matches(|c| c == '[' || c == ']'))
            );
        }
        assert_eq!(trunk.host("[::1]:5080"), "[::1]");
    }

    #[test]
    fn ping_secs_is_off_or_one_second_to_an_hour() {
        let mut trunk = TrunkSection::default();
        assert!(trunk.validate().is_ok());
        assert_eq!(trunk.ping_interval(), None, "off by default");
        for secs in [1, 30, 3600] {
            trunk.ping_secs = secs;
            assert!(trunk.validate().is_ok(), "{secs}");
            assert_eq!(
                trunk.ping_interval(),
                Some(std::time::Duration::from_secs(secs))
            );
        }
        trunk.ping_secs = 3601;
        assert!(trunk.validate().is_err());
        // Through the whole configuration: a key, an environment variable.
        let load = |env: Vec<(String, String)>, set: &[&str]| {
            let set: Vec<String> = set.iter().map(|s| (*s).to_owned()).collect();
            crate::config::Config::load(None, env, &set)
        };
        let config = load(vec![], &["trunk.ping_secs=30"]).unwrap();
        assert_eq!(
            config.trunk.ping_interval(),
            Some(std::time::Duration::from_secs(30))
        );
        let env = vec![("CALLBRIDGE_TRUNK_PING_SECS".to_owned(), "5".to_owned())];
        assert_eq!(load(env, &[]).unwrap().trunk.ping_secs, 5);
        assert!(load(vec![], &["trunk.ping_secs=86400"]).is_err());
    }
}
