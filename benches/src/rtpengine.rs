//! rtpengine, the reference relay of the media benchmark: its command line for a userspace run
//! and a client for its `ng` control protocol (bencoded dictionaries over UDP), enough to set up
//! a call with an offer and an answer and delete it again.
//!
//! With it the same [`crate::rtp`] generator measures rtpengine as it measures callbridge;
//! only the call setup differs (no SIP: rtpengine rewrites the SDP bodies it is given).

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;

use crate::rtp::{bind_rtp, CallMedia};
use crate::sip_ua::{audio_sdp, new_token, sdp_media_addr};

/// How long an `ng` command may wait for its reply.
const NG_WAIT: Duration = Duration::from_secs(5);

/// rtpengine relaying between `port_min` and `port_max` on loopback, controlled on `ng_addr`:
/// userspace forwarding only (`--table=-1`: no kernel module on these machines, and the
/// comparison is between two userspace relays), two threads as there are two cores, logging to
/// stderr at warning level, calls forgotten as soon as they are deleted.
pub fn command(binary: &str, ng_addr: SocketAddr, port_min: &str, port_max: &str) -> Command {
    let mut command = Command::new(binary);
    command.args([
        "--config-file=none",
        "--interface=127.0.0.1",
        &format!("--listen-ng={ng_addr}"),
        &format!("--port-min={port_min}"),
        &format!("--port-max={port_max}"),
        "--table=-1",
        "--foreground",
        "--log-stderr",
        "--log-level=4",
        "--num-threads=2",
        "--delete-delay=0",
    ]);
    command
}

/// A bencoded `ng` request: `cookie d<key><value>...e` with string values.
fn ng_request(cookie: &str, pairs: &[(&str, &str)]) -> Vec<u8> {
    let mut out = format!("{cookie} d").into_bytes();
    for (key, value) in pairs {
        out.extend_from_slice(format!("{}:{key}{}:", key.len(), value.len()).as_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out.push(b'e');
    out
}

/// The string value of `key` in a bencoded `ng` reply (flat dictionaries of strings are all
/// this tool reads: `result`, `sdp`, `error-reason`).
fn ng_value(reply: &[u8], key: &str) -> Option<String> {
    let needle = format!("{}:{key}", key.len());
    let text = String::from_utf8_lossy(reply);
    let at = text.find(&needle)? + needle.len();
    let rest = &text[at..];
    let colon = rest.find(':')?;
    let len: usize = rest[..colon].parse().ok()?;
    rest.get(colon + 1..colon + 1 + len).map(str::to_owned)
}

/// One `ng` command; the reply with `cookie`, which must say `result` `ok`.
async fn ng(
    socket: &UdpSocket,
    to: SocketAddr,
    cookie: &str,
    pairs: &[(&str, &str)],
) -> Result<Vec<u8>, String> {
    socket
        .send_to(&ng_request(cookie, pairs), to)
        .await
        .map_err(|e| format!("ng send: {e}"))?;
    let mut buf = vec![0u8; 65536];
    loop {
        let (len, _) = tokio::time::timeout(NG_WAIT, socket.recv_from(&mut buf))
            .await
            .map_err(|_| format!("no ng reply to {cookie}"))?
            .map_err(|e| format!("ng recv: {e}"))?;
        let reply = &buf[..len];
        if reply.starts_with(format!("{cookie} ").as_bytes()) {
            if ng_value(reply, "result").as_deref() != Some("ok") {
                return Err(format!("ng {cookie}: {}", String::from_utf8_lossy(reply)));
            }
            return Ok(reply.to_vec());
        }
    }
}

/// Sends `ping` and waits up to `wait` for a `pong` (rtpengine is up).
pub async fn ping(socket: &UdpSocket, to: SocketAddr, wait: Duration) -> bool {
    let ping = ng_request("ping", &[("command", "ping")]);
    let _ = socket.send_to(&ping, to).await;
    let mut buf = [0u8; 256];
    match tokio::time::timeout(wait, socket.recv_from(&mut buf)).await {
        Ok(Ok((len, _))) => ng_value(&buf[..len], "result").as_deref() == Some("pong"),
        _ => false,
    }
}

/// One call through rtpengine as the tool holds it.
pub struct RtpengineCall {
    call_id: String,
    from_tag: String,
    pub media: CallMedia,
}

/// Call `n` through rtpengine: offer from the phone, answer from the callee; the rewritten
/// SDPs tell each side where to send.
pub async fn setup_call(
    n: usize,
    ng_socket: &UdpSocket,
    ng_addr: SocketAddr,
) -> Result<RtpengineCall, String> {
    let phone_rtp = bind_rtp("phone").await?;
    let callee_rtp = bind_rtp("callee").await?;
    let call_id = new_token("rtpe", n);
    let from_tag = new_token("pt", n);
    let to_tag = new_token("ct", n);
    let offer = audio_sdp(
        phone_rtp.local_addr().map_err(|e| e.to_string())?,
        n as u64 + 1,
        Some(20),
    );
    let reply = ng(
        ng_socket,
        ng_addr,
        &format!("o{n}"),
        &[
            ("command", "offer"),
            ("call-id", &call_id),
            ("from-tag", &from_tag),
            ("sdp", &offer),
        ],
    )
    .await?;
    let to_callee = ng_value(&reply, "sdp").ok_or("no sdp in offer reply")?;
    let relay_for_callee = sdp_media_addr(to_callee.as_bytes())?;
    let answer = audio_sdp(
        callee_rtp.local_addr().map_err(|e| e.to_string())?,
        n as u64 + 1_000_000,
        Some(20),
    );
    let reply = ng(
        ng_socket,
        ng_addr,
        &format!("a{n}"),
        &[
            ("command", "answer"),
            ("call-id", &call_id),
            ("from-tag", &from_tag),
            ("to-tag", &to_tag),
            ("sdp", &answer),
        ],
    )
    .await?;
    let to_phone = ng_value(&reply, "sdp").ok_or("no sdp in answer reply")?;
    let relay_for_phone = sdp_media_addr(to_phone.as_bytes())?;
    Ok(RtpengineCall {
        call_id,
        from_tag,
        media: CallMedia {
            phone_rtp: Arc::new(phone_rtp),
            callee_rtp: Arc::new(callee_rtp),
            relay_for_phone,
            relay_for_callee,
        },
    })
}

/// Deletes call `n` (set up by [`setup_call`]).
pub async fn delete_call(
    n: usize,
    call: &RtpengineCall,
    ng_socket: &UdpSocket,
    ng_addr: SocketAddr,
) -> Result<(), String> {
    ng(
        ng_socket,
        ng_addr,
        &format!("d{n}"),
        &[
            ("command", "delete"),
            ("call-id", &call.call_id),
            ("from-tag", &call.from_tag),
        ],
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bencoded_requests_and_replies() {
        assert_eq!(
            ng_request("o1", &[("command", "offer"), ("sdp", "v=0")]),
            b"o1 d7:command5:offer3:sdp3:v=0e".to_vec()
        );
        let reply = b"o1 d3:sdp11:v=0\r\nm=x 4:6:result2:oke";
        assert_eq!(ng_value(reply, "result").as_deref(), Some("ok"));
        assert_eq!(ng_value(reply, "sdp").as_deref(), Some("v=0\r\nm=x 4:"));
        assert_eq!(ng_value(reply, "error-reason"), None);
    }
}
