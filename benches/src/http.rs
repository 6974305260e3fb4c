//! Just enough HTTP/1.1 to drive callbridge's API from a load tool or a test: one request per
//! connection, and the `/metrics` text read back as numbers.
//!
//! A bare exchange over a `TcpStream` instead of an HTTP client crate: the tools need `POST
//! makecall`, `GET /healthz` and `GET /metrics` against a server on loopback that always sends
//! `Content-Length` and honours `Connection: close`, and nothing more. sip-tests' `http_raw`
//! is this function with panics for errors.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long the whole response may take.
const RESPONSE_WAIT: Duration = Duration::from_secs(5);

/// A bare HTTP/1.1 exchange (`Connection: close`; a JSON body when `body` is given); returns
/// status and body. A chunked body (hyper without Content-Length) would need decoding; the API
/// always sends Content-Length.
pub async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let body = body.unwrap_or("");
    let content_type = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/json\r\n"
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{content_type}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write HTTP: {e}"))?;
    let mut response = Vec::new();
    tokio::time::timeout(RESPONSE_WAIT, stream.read_to_end(&mut response))
        .await
        .map_err(|_| "HTTP response timed out".to_owned())?
        .map_err(|e| format!("read HTTP: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A gauge's value from the `/metrics` text (the sum over its label sets).
pub async fn metric_sum(api: SocketAddr, name: &str) -> Result<f64, String> {
    let (status, text) = exchange(api, "GET", "/metrics", None).await?;
    if status != 200 {
        return Err(format!("/metrics: {status}"));
    }
    Ok(sum_metric(&text, name))
}

/// The sum of the samples of metric `name` (every label set) in Prometheus text.
fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Non-comment lines of `/metrics` that mention media (or the one line saying why there are
/// none).
pub async fn media_metrics(api: SocketAddr) -> Vec<String> {
    match exchange(api, "GET", "/metrics", None).await {
        Ok((200, text)) => text
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains("media_"))
            .map(str::to_owned)
            .collect(),
        Ok((status, _)) => vec![format!("/metrics: {status}")],
        Err(e) => vec![format!("/metrics: {e}")],
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sums_a_metric_over_its_labels_only() {
        let text = "# HELP callbridge_active_calls x\n\
                    callbridge_active_calls 3\n\
                    callbridge_active_calls_total 100\n\
                    callbridge_sip_transactions{kind=\"invite\"} 2\n\
                    callbridge_sip_transactions{kind=\"non_invite\"} 1.5\n";
        assert_eq!(super::sum_metric(text, "callbridge_active_calls"), 3.0);
        assert_eq!(super::sum_metric(text, "callbridge_sip_transactions"), 3.5);
        assert_eq!(super::sum_metric(text, "callbridge_missing"), 0.0);
    }
}
