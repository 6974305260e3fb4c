//! Scripted SIP user agents for end-to-end tests, over real loopback sockets.
//!
//! A [`TestUa`] plays one phone or one trunk: it sends messages built from text or from
//! [`sip_core`] types and waits, with a bounded timeout, for what the server sends back. It does
//! no transaction handling of its own, so a test can see (and assert on) every retransmission.
//! Failures panic with the message that was expected and what arrived instead: these are tests.
//!
//! A [`carrier::Carrier`] is a real Kamailio started by a test to play callbridge's SIP trunk
//! (digest challenges, registrations, relaying calls to a scripted callee). A
//! [`dnsmasq::Dnsmasq`] is a real dnsmasq serving a test zone (NAPTR, SRV, A) on loopback, for
//! the trunk's RFC 3263 resolution.

pub mod bridge;
pub mod carrier;
pub mod dnsmasq;
pub mod ports;
pub mod tls;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use sip_core::message::find_head_end;
use sip_core::{HeaderName, Message, ParseLimits, Request, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How long a test waits for a message it expects before failing.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);

enum Socket {
    Udp(UdpSocket),
    Tcp {
        stream: TcpStream,
        buffer: BytesMut,
    },
    Tls {
        stream: Box<tokio_rustls::client::TlsStream<TcpStream>>,
        buffer: BytesMut,
        peer: SocketAddr,
    },
}

/// One scripted SIP endpoint bound to a loopback port.
pub struct TestUa {
    socket: Socket,
    local: SocketAddr,
    /// Where `send` goes by default (the server under test).
    pub server: SocketAddr,
}

impl TestUa {
    /// A UDP endpoint on an ephemeral loopback port that talks to `server`.
    pub async fn udp(server: SocketAddr) -> TestUa {
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind test UDP socket");
        let local = socket.local_addr().expect("local addr");
        TestUa {
            socket: Socket::Udp(socket),
            local,
            server,
        }
    }

    /// A UDP endpoint on a given loopback address (e.g. the trunk address callbridge calls).
    pub async fn udp_at(local: SocketAddr, server: SocketAddr) -> TestUa {
        let socket = UdpSocket::bind(local).await.expect("bind test UDP socket");
        let local = socket.local_addr().expect("local addr");
        TestUa {
            socket: Socket::Udp(socket),
            local,
            server,
        }
    }

    /// A TCP endpoint connected to `server`.
    pub async fn tcp(server: SocketAddr) -> TestUa {
        TestUa::tcp_from("127.0.0.1".parse().expect("ip"), server).await
    }

    /// A TCP endpoint connected to `server` from the loopback address `ip` (another
    /// `127.0.0.x` stands for another host; `::1` for a client over IPv6).
    pub async fn tcp_from(ip: std::net::IpAddr, server: SocketAddr) -> TestUa {
        let socket = if ip.is_ipv6() {
            tokio::net::TcpSocket::new_v6()
        } else {
            tokio::net::TcpSocket::new_v4()
        }
        .expect("TCP socket");
        socket
            .bind(SocketAddr::new(ip, 0))
            .expect("bind the TCP client");
        let stream = socket.connect(server).await.expect("connect over TCP");
        TestUa::tcp_accepted(stream, server)
    }

    /// A TCP endpoint on an established connection: one this test opened, or one the server
    /// opened to a test listener (e.g. to a phone's Contact address).
    pub fn tcp_accepted(stream: TcpStream, server: SocketAddr) -> TestUa {
        let local = stream.local_addr().expect("local addr");
        TestUa {
            socket: Socket::Tcp {
                stream,
                buffer: BytesMut::with_capacity(8192),
            },
            local,
            server,
        }
    }

    /// A TLS endpoint connected to `server`, checking its certificate (for its IP address)
    /// against `config`'s roots.
    pub async fn tls(server: SocketAddr, config: std::sync::Arc<rustls::ClientConfig>) -> TestUa {
        let stream = tls::connect(server, config)
            .await
            .expect("connect over TLS");
        let local = stream.get_ref().0.local_addr().expect("local addr");
        TestUa {
            socket: Socket::Tls {
                stream: Box::new(stream),
                buffer: BytesMut::with_capacity(8192),
                peer: server,
            },
            local,
            server,
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// "UDP", "TCP" or "TLS", for Via headers.
    pub fn transport(&self) -> &'static str {
        match self.socket {
            Socket::Udp(_) => "UDP",
            Socket::Tcp { .. } => "TCP",
            Socket::Tls { .. } => "TLS",
        }
    }

    /// Sends raw bytes to the server.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let server = self.server;
        self.send_raw_to(bytes, server).await;
    }

    /// Sends raw bytes to a given address (UDP) or down the connection (TCP).
    pub async fn send_raw_to(&mut self, bytes: &[u8], to: SocketAddr) {
        match &mut self.socket {
            Socket::Udp(socket) => {
                socket.send_to(bytes, to).await.expect("UDP send");
            }
            Socket::Tcp { stream, .. } => {
                stream.write_all(bytes).await.expect("TCP send");
            }
            Socket::Tls { stream, .. } => {
                stream.write_all(bytes).await.expect("TLS send");
                // The records leave on the flush.
                stream.flush().await.expect("TLS send");
            }
        }
    }

    /// Sends a message to the server.
    pub async fn send(&mut self, message: impl Into<Message>) {
        let bytes = message.into().to_bytes();
        self.send_raw(&bytes).await;
    }

    /// Sends a message to a given address.
    pub async fn send_to(&mut self, message: impl Into<Message>, to: SocketAddr) {
        let bytes = message.into().to_bytes();
        self.send_raw_to(&bytes, to).await;
    }

    /// Receives the next UDP datagram as bytes, parseable or not (for checking answers to
    /// malformed input); `None` after `wait`. Panics on a TCP endpoint.
    pub async fn try_recv_raw(&mut self, wait: Duration) -> Option<Vec<u8>> {
        let Socket::Udp(socket) = &mut self.socket else {
            panic!("try_recv_raw is for UDP endpoints");
        };
        let mut buf = vec![0u8; 65536];
        let (len, _) = tokio::time::timeout(wait, socket.recv_from(&mut buf))
            .await
            .ok()?
            .ok()?;
        buf.truncate(len);
        Some(buf)
    }

    /// Receives the next message and its source, or `None` after `wait`.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<(Message, SocketAddr)> {
        tokio::time::timeout(wait, self.recv_inner()).await.ok()
    }

    /// Receives the next message; panics after [`DEFAULT_WAIT`].
    pub async fn recv(&mut self) -> (Message, SocketAddr) {
        match self.try_recv(DEFAULT_WAIT).await {
            Some(received) => received,
            None => panic!("{}: no SIP message within {:?}", self.local, DEFAULT_WAIT),
        }
    }

    /// Receives the next request; panics on a response or a timeout.
    pub async fn recv_request(&mut self) -> (Request, SocketAddr) {
        match self.recv().await {
            (Message::Request(request), from) => (request, from),
            (Message::Response(response), _) => panic!(
                "{}: expected a request, got {} {}",
                self.local, response.status, response.reason
            ),
        }
    }

    /// Receives the next response, skipping `100 Trying`; panics on a request or timeout.
    pub async fn recv_response(&mut self) -> Response {
        loop {
            match self.recv().await {
                (Message::Response(response), _) if response.status == 100 => continue,
                (Message::Response(response), _) => return response,
                (Message::Request(request), _) => panic!(
                    "{}: expected a response, got {} request",
                    self.local, request.method
                ),
            }
        }
    }

    /// Receives responses until one with `status` arrives (skipping 100); panics on another
    /// final response, a request, or a timeout.
    pub async fn expect_response(&mut self, status: u16) -> Response {
        loop {
            let response = self.recv_response().await;
            if response.status == status {
                return response;
            }
            if response.status >= 200 || status < 200 && response.status > status {
                panic!(
                    "{}: expected {status}, got {} {}",
                    self.local, response.status, response.reason
                );
            }
        }
    }

    /// Asserts that nothing arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        if let Some((message, from)) = self.try_recv(wait).await {
            panic!(
                "{}: expected silence, got from {from}:\n{}",
                self.local,
                String::from_utf8_lossy(&message.to_bytes())
            );
        }
    }

    /// The next SIP message. Anything the server sends that does not parse fails the test
    /// on the spot, bytes shown: a broken message must not pass as silence or as a missing
    /// response further on. (Tests that expect malformed answers read them with
    /// [`try_recv_raw`](Self::try_recv_raw).)
    async fn recv_inner(&mut self) -> (Message, SocketAddr) {
        let limits = ParseLimits::default();
        let local = self.local;
        let server = self.server;
        match &mut self.socket {
            Socket::Udp(socket) => {
                let mut buf = vec![0u8; 65536];
                loop {
                    let (len, from) = socket.recv_from(&mut buf).await.expect("UDP recv");
                    let datagram = &buf[..len];
                    match Message::parse(datagram, &limits) {
                        Ok(message) => return (message, from),
                        // A CRLF keep-alive (RFC 5626 §4.4.1) is not a message.
                        Err(_) if datagram.iter().all(|b| matches!(b, b'\r' | b'\n')) => {}
                        // RTP/RTCP (version 2) from a relay port, sent to an SDP address
                        // that names this socket, is not SIP either.
                        Err(_)
                            if from != server && datagram.first().is_some_and(|b| b >> 6 == 2) => {}
                        Err(error) => panic!(
                            "{local}: unparseable datagram from {from} ({error}):\n{}",
                            String::from_utf8_lossy(datagram)
                        ),
                    }
                }
            }
            Socket::Tcp { stream, buffer } => {
                let peer = stream.peer_addr().expect("peer addr");
                let message = read_stream_message(stream, buffer, local, peer).await;
                (message, peer)
            }
            Socket::Tls {
                stream,
                buffer,
                peer,
            } => {
                let peer = *peer;
                let message = read_stream_message(stream.as_mut(), buffer, local, peer).await;
                (message, peer)
            }
        }
    }
}

/// The next message from a stream (TCP or TLS): any that does not parse fails the test.
async fn read_stream_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    buffer: &mut BytesMut,
    local: SocketAddr,
    peer: SocketAddr,
) -> Message {
    let limits = ParseLimits::default();
    loop {
        if let Some(frame) = take_frame(buffer) {
            match Message::parse(&frame, &limits) {
                Ok(message) => return message,
                Err(error) => panic!(
                    "{local}: unparseable frame from {peer} ({error}):\n{}",
                    String::from_utf8_lossy(&frame)
                ),
            }
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.expect("stream read");
        assert!(n > 0, "{local}: server closed the connection");
        buffer.extend_from_slice(&chunk[..n]);
    }
}

/// Cuts one complete message off the front of a TCP stream buffer (keep-alive CRLFs skipped).
fn take_frame(buffer: &mut BytesMut) -> Option<Vec<u8>> {
    let skip = buffer
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    buffer.advance(skip);
    let (head_len, body_start) = find_head_end(buffer)?;
    let head = String::from_utf8_lossy(&buffer[..head_len]);
    let length = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| HeaderName::parse(name.trim()) == HeaderName::ContentLength)
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .unwrap_or(0);
    if buffer.len() < body_start + length {
        return None;
    }
    Some(buffer.split_to(body_start + length).to_vec())
}

/// A minimal audio SDP offer/answer whose media address is `addr` (no `a=ptime`): the load
/// tools' [`audio_sdp`](callbridge_benches::sip_ua::audio_sdp), shared rather than copied.
pub fn sdp(addr: SocketAddr, session_id: u64) -> String {
    callbridge_benches::sip_ua::audio_sdp(addr, session_id, None)
}

/// Parses SIP text written with `\n` line ends (converted to CRLF) into a message; the
/// Content-Length is computed by the writer when the message is re-serialised.
pub fn message(text: &str) -> Message {
    let crlf = text.replace("\r\n", "\n").replace('\n', "\r\n");
    Message::parse(crlf.as_bytes(), &ParseLimits::default())
        .unwrap_or_else(|e| panic!("test message does not parse ({e}):\n{text}"))
}

/// Like [`message`], for a request.
pub fn request(text: &str) -> Request {
    match message(text) {
        Message::Request(request) => request,
        Message::Response(_) => panic!("expected request text"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_cut_by_content_length() {
        let mut buffer = BytesMut::from(
            &b"\r\n\r\nOPTIONS sip:a@b SIP/2.0\r\nl: 3\r\n\r\nabcSIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"[..],
        );
        let first = take_frame(&mut buffer).unwrap();
        assert!(first.ends_with(b"abc"));
        let second = take_frame(&mut buffer).unwrap();
        assert!(second.starts_with(b"SIP/2.0 200"));
        assert!(take_frame(&mut buffer).is_none());
    }

    #[tokio::test]
    async fn two_udp_agents_exchange_a_request() {
        let mut b = TestUa::udp("127.0.0.1:9".parse().unwrap()).await;
        let mut a = TestUa::udp(b.local_addr()).await;
        let via = format!("SIP/2.0/UDP {};branch=z9hG4bKtest1", a.local_addr());
        let options = request(&format!(
            "OPTIONS sip:b@127.0.0.1 SIP/2.0\nVia: {via}\nFrom: <sip:a@x>;tag=1\nTo: <sip:b@y>\n\
             Call-ID: c1\nCSeq: 1 OPTIONS\nMax-Forwards: 70\n\n"
        ));
        a.send(options).await;
        let (got, from) = b.recv_request().await;
        assert_eq!(from, a.local_addr());
        assert_eq!(got.headers.call_id(), Some("c1"));
        b.send_to(Response::to_request(&got, 200, None), from).await;
        assert_eq!(a.recv_response().await.status, 200);
        a.expect_silence(Duration::from_millis(50)).await;
    }
}
