//! Which URLs events may be POSTed to: `webhooks.url`, and a makecall's `notify_url` only on a
//! host of `webhooks.allowed_hosts` (empty: only `webhooks.url`'s host). Without it, anyone
//! holding an API token could make the server call internal addresses (SSRF).

/// A target URL taken apart as far as the policy needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetUrl {
    pub https: bool,
    /// Lower case; an IPv6 literal keeps its brackets.
    pub host: String,
    pub port: u16,
}

/// Longest target URL accepted.
pub const MAX_URL_BYTES: usize = 2048;

/// Why a URL cannot be a webhook target.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error(
        "not an absolute http:// or https:// URL with a host, of at most {MAX_URL_BYTES} bytes"
    )]
    NotHttp,
    #[error("the URL carries credentials (user:password@); send them another way")]
    Credentials,
    #[error("host {0} is not in webhooks.allowed_hosts")]
    NotAllowed(String),
}

/// Parses an `http://` or `https://` URL with a host (and optional port, path and query).
pub fn parse_target(url: &str) -> Result<TargetUrl, TargetError> {
    if url.len() > MAX_URL_BYTES || url.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(TargetError::NotHttp);
    }
    let (https, rest) = if let Some(rest) = strip_prefix_ignore_case(url, "https://") {
        (true, rest)
    } else if let Some(rest) = strip_prefix_ignore_case(url, "http://") {
        (false, rest)
    } else {
        return Err(TargetError::NotHttp);
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(TargetError::Credentials);
    }
    // The whole URL must be one hyper accepts, or every delivery would fail.
    if url.parse::<http::Uri>().is_err() {
        return Err(TargetError::NotHttp);
    }
    let (host, port) = split_host_port(authority).ok_or(TargetError::NotHttp)?;
    if host.is_empty() {
        return Err(TargetError::NotHttp);
    }
    Ok(TargetUrl {
        https,
        host: host.to_ascii_lowercase(),
        port: port.unwrap_or(if https { 443 } else { 80 }),
    })
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// `host[:port]` or `[v6][:port]`; `None` when the port is not a number.
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    if authority.starts_with('[') {
        let end = authority.find(']')?;
        let host = &authority[..=end];
        return match &authority[end + 1..] {
            "" => Some((host, None)),
            rest => Some((host, Some(rest.strip_prefix(':')?.parse().ok()?))),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host, Some(port.parse().ok()?))),
        None => Some((authority, None)),
    }
}

/// The allow-list of `notify_url` hosts.
///
/// An entry is a host (`hooks.example.com`, `10.0.0.7`, `[::1]`), a host with a port
/// (`hooks.example.com:8443`: only that port), or a wildcard for subdomains
/// (`*.example.com`: `a.example.com` and `b.a.example.com`, not `example.com`). Comparison
/// ignores case. An empty list allows only the host of `webhooks.url` (any port); no list and
/// no `webhooks.url` allows nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetPolicy {
    entries: Vec<String>,
}

impl TargetPolicy {
    /// The policy of `webhooks.allowed_hosts` and `webhooks.url` (`""`: none).
    pub fn new(allowed_hosts: &[String], default_url: &str) -> TargetPolicy {
        let mut entries: Vec<String> = allowed_hosts
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        if entries.is_empty() {
            if let Ok(url) = parse_target(default_url) {
                entries.push(url.host);
            }
        }
        TargetPolicy { entries }
    }

    /// Does the policy allow any host at all? (No: a makecall's `notify_url` is always
    /// refused.)
    pub fn allows_any(&self) -> bool {
        !self.entries.is_empty()
    }

    /// Checks a makecall's `notify_url`.
    pub fn check(&self, url: &str) -> Result<TargetUrl, TargetError> {
        let target = parse_target(url)?;
        let with_port = format!("{}:{}", target.host, target.port);
        let allowed = self.entries.iter().any(|entry| {
            if let Some(suffix) = entry.strip_prefix("*.") {
                target.host.len() > suffix.len() + 1
                    && target.host.ends_with(suffix)
                    && target.host[..target.host.len() - suffix.len()].ends_with('.')
            } else {
                *entry == target.host || *entry == with_port
            }
        });
        if allowed {
            Ok(target)
        } else {
            Err(TargetError::NotAllowed(target.host))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let t = parse_target("https://Hooks.Example.com/cb?x=1").unwrap();
        assert_eq!(
            (t.https, t.host.as_str(), t.port),
            (true, "hooks.example.com", 443)
        );
        let t = parse_target("http://127.0.0.1:8081/hook").unwrap();
        assert_eq!(
            (t.https, t.host.as_str(), t.port),
            (false, "127.0.0.1", 8081)
        );
        let t = parse_target("http://[::1]:9/").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("[::1]", 9));
        for bad in [
            "",
            "ftp://x/",
            "http://",
            "http:///path",
            "http://:80/",
            "http://host:port/",
            "http://a b/",
            "javascript:alert(1)",
        ] {
            assert_eq!(parse_target(bad), Err(TargetError::NotHttp), "{bad}");
        }
        assert_eq!(
            parse_target("https://user:pw@example.com/"),
            Err(TargetError::Credentials)
        );
        assert!(parse_target(&format!("http://x/{}", "a".repeat(MAX_URL_BYTES))).is_err());
    }

    #[test]
    fn allow_list() {
        let policy = TargetPolicy::new(
            &[
                "hooks.example.com".into(),
                "*.app.test".into(),
                "10.0.0.7:8443".into(),
            ],
            "http://ignored.example/",
        );
        assert!(policy.check("https://HOOKS.example.com/x").is_ok());
        assert!(policy.check("http://hooks.example.com:81/x").is_ok());
        assert!(policy.check("https://a.app.test/").is_ok());
        assert!(policy.check("https://b.a.app.test/").is_ok());
        assert!(policy.check("https://app.test/").is_err());
        assert!(policy.check("https://evilapp.test/").is_err());
        assert!(policy.check("https://10.0.0.7:8443/").is_ok());
        assert!(policy.check("https://10.0.0.7/").is_err());
        assert_eq!(
            policy.check("http://169.254.169.254/latest"),
            Err(TargetError::NotAllowed("169.254.169.254".into()))
        );
        assert!(policy.check("http://ignored.example/").is_err());

        // Empty list: only webhooks.url's host.
        let default = TargetPolicy::new(&[], "http://127.0.0.1:8081/hook");
        assert!(default.allows_any());
        assert!(default.check("http://127.0.0.1:9000/other").is_ok());
        assert!(default.check("http://127.0.0.2/").is_err());
        // Neither: nothing.
        let none = TargetPolicy::new(&[], "");
        assert!(!none.allows_any());
        assert!(none.check("http://127.0.0.1/").is_err());
    }
}
