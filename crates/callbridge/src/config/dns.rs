//! `[dns]`: the resolvers that turn a trunk given as a domain into targets (RFC 3263; see
//! [`crate::trunk_dns`]). Only the trunk's name is looked up through them: callbridge resolves
//! nothing else.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// More resolvers than anyone lists; a bound on what a typo in the environment can ask for.
pub const MAX_DNS_SERVERS: usize = 8;

/// `[dns]`. Exists so that the trunk's name can be resolved by chosen servers (a carrier's
/// own, or a test's resolver on loopback) rather than only by the system's.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DnsSection {
    /// `"ip:port"` resolvers, asked over UDP (TCP for truncated answers); empty: the system's
    /// (`/etc/resolv.conf`).
    pub servers: Vec<String>,
}

impl DnsSection {
    /// The resolvers' addresses (validated by [`DnsSection::validate`]; anything that does not
    /// parse is left out here).
    pub fn server_addrs(&self) -> Vec<SocketAddr> {
        self.servers
            .iter()
            .filter_map(|server| server.trim().parse().ok())
            .collect()
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.servers.len() > MAX_DNS_SERVERS {
            return Err(ConfigError::Invalid(format!(
                "dns.servers lists {} resolvers; at most {MAX_DNS_SERVERS}",
                self.servers.len()
            )));
        }
        for server in &self.servers {
            if server.trim().parse::<SocketAddr>().is_err() {
                return Err(ConfigError::Invalid(format!(
                    "dns.servers entry {server:?} is not \"ip:port\" (e.g. \"192.0.2.53:53\" or \
                     \"[2001:db8::53]:53\")"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_must_be_ip_and_port() {
        let mut dns = DnsSection::default();
        assert!(dns.validate().is_ok());
        assert!(
            dns.server_addrs().is_empty(),
            "empty: the system's resolvers"
        );
        dns.servers = vec!["127.0.0.1:5353".into(), " [::1]:53 ".into()];
        assert!(dns.validate().is_ok());
        assert_eq!(
            dns.server_addrs(),
            vec![
                "127.0.0.1:5353".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        for bad in ["127.0.0.1", "dns.example:53", "", "1.2.3.4:99999"] {
            dns.servers = vec![bad.into()];
            let error = dns.validate().unwrap_err().to_string();
            assert!(error.contains("ip:port"), "{bad}: {error}");
        }
        dns.servers = vec!["127.0.0.1:53".into(); MAX_DNS_SERVERS + 1];
        assert!(dns.validate().is_err());
    }
}
