//! A callbridge instance started in-process for one test (real sockets on loopback, ephemeral
//! ports, short SIP timers), the scripted phones and callee around it, and a tiny HTTP client
//! for its API.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use callbridge::config::Config;
use callbridge::Running;
use sip_core::message::{build_ack_for_non_2xx, build_cancel};
use sip_core::{ids, HeaderName, Message, Method, NameAddr, Request, Response};

use crate::{request, sdp, TestUa};

/// How a test wants callbridge configured; everything else is the built-in default with
/// ephemeral ports and short timers.
#[derive(Clone, Debug)]
pub struct Options {
    pub intent_ttl_secs: u64,
    pub no_answer_secs: u64,
    pub trusted_peers: Vec<String>,
    /// `media.inactivity_secs` (0: off).
    pub media_inactivity_secs: u64,
    /// Relay ports; by default each bridge gets 200 ports chosen free at run time
    /// ([`crate::ports::free_range`]), so parallel tests never compete for a port.
    pub rtp_ports: Option<(u16, u16)>,
    /// `sip.max_call_secs` (0: unlimited).
    pub max_call_secs: u64,
    /// `sip.max_calls`: live calls held at once.
    pub max_calls: usize,
    /// Further `section.key=value` overrides, applied last.
    pub extra: Vec<String>,
}

/// callbridge's own defaults (read from [`Config::default`], not written again here), except a
/// shorter `no_answer_secs`.
impl Default for Options {
    fn default() -> Self {
        let defaults = Config::default();
        Options {
            intent_ttl_secs: defaults.intent.ttl_secs,
            no_answer_secs: 30,
            trusted_peers: defaults
                .sip
                .trusted_peers
                .iter()
                .map(ToString::to_string)
                .collect(),
            media_inactivity_secs: defaults.media.inactivity_secs,
            rtp_ports: None,
            max_call_secs: defaults.sip.max_call_secs,
            max_calls: defaults.sip.max_calls,
            extra: Vec::new(),
        }
    }
}

/// callbridge under test plus the callee UA it sends leg B to.
pub struct Bridge {
    pub running: Running,
    pub sip: SocketAddr,
    pub api: SocketAddr,
    /// The target's UA: callbridge's `sip.trunk` points at it.
    pub callee: TestUa,
    /// The relay port range of this instance.
    pub rtp_ports: (u16, u16),
}

impl Bridge {
    pub async fn start() -> Bridge {
        Bridge::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Bridge {
        let mut callee = TestUa::udp("127.0.0.1:9".parse().expect("addr")).await;
        let rtp_ports = options
            .rtp_ports
            .unwrap_or_else(|| crate::ports::free_range(200));
        let peers = options
            .trusted_peers
            .iter()
            .map(|p| format!("\"{p}\""))
            .collect::<Vec<_>>()
            .join(",");
        let mut overrides = vec![
            "sip.listen=\"127.0.0.1:0\"".to_owned(),
            "api.listen=\"127.0.0.1:0\"".to_owned(),
            format!("sip.trunk=\"{}\"", callee.local_addr()),
            format!("sip.trusted_peers=[{peers}]"),
            format!("sip.no_answer_secs={}", options.no_answer_secs),
            format!("intent.ttl_secs={}", options.intent_ttl_secs),
            // Short timers: lingering transactions end within a few seconds of a call.
            "sip.t1_ms=50".to_owned(),
            "sip.t2_ms=200".to_owned(),
            "sip.t4_ms=250".to_owned(),
            format!("media.inactivity_secs={}", options.media_inactivity_secs),
            format!("media.rtp_ports=\"{}-{}\"", rtp_ports.0, rtp_ports.1),
            "media.bind_ip=\"127.0.0.1\"".to_owned(),
            format!("sip.max_call_secs={}", options.max_call_secs),
            format!("sip.max_calls={}", options.max_calls),
            // Each test's own store in memory, unless it names a file (`extra`): parallel tests
            // never share a database, and nothing is left in the working directory.
            "store.path=\"\"".to_owned(),
        ];
        overrides.extend(options.extra.iter().cloned());
        let config =
            Config::load(None, std::iter::empty(), &overrides).expect("test configuration");
        let running = callbridge::start(&config).await.expect("callbridge starts");
        let rtp_ports_range = rtp_ports;
        let sip = running.sip_addr;
        callee.server = sip;
        Bridge {
            sip,
            api: running.api_addr,
            running,
            callee,
            rtp_ports: rtp_ports_range,
        }
    }

    /// Asserts that every port of this bridge's relay range can be bound again (no call
    /// kept a relay socket), waiting briefly for relays that are still closing.
    pub async fn assert_ports_free(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        'retry: loop {
            for port in self.rtp_ports.0..=self.rtp_ports.1 {
                if std::net::UdpSocket::bind(("127.0.0.1", port)).is_err() {
                    assert!(Instant::now() < deadline, "relay port {port} still bound");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue 'retry;
                }
            }
            return;
        }
    }

    /// `POST /api/user/{telnum}/makecall`; returns the callid.
    pub async fn makecall(&self, telnum: &str, caller: &str, callee: &str) -> String {
        let body = format!(r#"{{"caller":"{caller}","callee":"{callee}"}}"#);
        let (status, json) = self
            .http("POST", &format!("/api/user/{telnum}/makecall"), Some(&body))
            .await;
        assert_eq!(status, 200, "makecall: {json}");
        json["callid"].as_str().expect("callid").to_owned()
    }

    pub async fn cancelcall(&self, telnum: &str) -> serde_json::Value {
        let (status, json) = self
            .http("POST", &format!("/api/user/{telnum}/cancelcall"), None)
            .await;
        assert_eq!(status, 200, "cancelcall: {json}");
        json
    }

    /// `GET /api/calls/{callid}`.
    pub async fn call(&self, callid: &str) -> serde_json::Value {
        let (status, json) = self
            .http("GET", &format!("/api/calls/{callid}"), None)
            .await;
        assert_eq!(status, 200, "call record: {json}");
        json
    }

    /// Waits until the call record says `state` (the API is updated as the SIP task works).
    pub async fn wait_call_state(&self, callid: &str, state: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let record = self.call(callid).await;
            if record["state"] == state {
                return record;
            }
            assert!(
                Instant::now() < deadline,
                "call {callid} never reached {state}: {record}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One HTTP/1.1 request over a fresh connection; returns status and JSON body.
    pub async fn http(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let (status, text) = http_raw(self.api, method, path, body).await;
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, json)
    }

    /// Asserts that callbridge holds no call, dialog or transaction any more (waiting for
    /// lingering transactions: with the test timers they end within 64·T1 = 3.2 s), and no
    /// pending intent: a test that dialled used its intent, one that did not cancelled it or
    /// let it expire. A test that leaves an intent on purpose says how many with
    /// [`assert_drained_with_intents`](Self::assert_drained_with_intents).
    pub async fn assert_drained(&self) {
        self.assert_drained_with_intents(0).await;
    }

    /// Like [`assert_drained`](Self::assert_drained), with exactly `pending` intents still
    /// waiting for their phone call.
    pub async fn assert_drained_with_intents(&self, pending: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let held = self.running.status.held();
            // The media driver's streams are published once a second.
            let streams = self.running.status.media_streams();
            if held == (0, 0, 0) && streams == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "callbridge still holds (calls, dialogs, transactions) = {held:?}, \
                 {streams} media streams"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Intents change only by API calls, INVITEs and the sweeper, never as a transaction
        // lingers out: no wait needed.
        assert_eq!(
            self.running.control.intents().len(),
            pending,
            "pending intents"
        );
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> String {
        let (status, text) = http_raw(self.api, "GET", "/metrics", None).await;
        assert_eq!(status, 200, "metrics: {text}");
        text
    }

    /// The `callbridge_calls_refused_total` counter for `reason` (0 when never counted).
    pub async fn refused(&self, reason: &str) -> u64 {
        let text = self.metrics().await;
        let prefix = format!("callbridge_calls_refused_total{{reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .map(|value| value.trim().parse().expect("counter value"))
            .unwrap_or(0)
    }
}

/// A bare HTTP/1.1 exchange (`Connection: close`), enough for a JSON API under test: the load
/// tools' [`exchange`](callbridge_benches::http::exchange), panicking on a connection error.
pub async fn http_raw(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    callbridge_benches::http::exchange(addr, method, path, body)
        .await
        .unwrap_or_else(|e| panic!("HTTP {method} {path}: {e}"))
}

/// The user's phone, calling through the trunk: keeps its side of leg A's dialog.
pub struct Phone {
    pub ua: TestUa,
    pub user: String,
    pub call_id: String,
    pub from_tag: String,
    pub cseq: u32,
    /// The INVITE as last sent (for CANCEL and retransmission).
    pub invite: Option<Request>,
    /// callbridge's To tag and Contact on leg A, from its tagged responses.
    pub remote_tag: Option<String>,
    pub remote_target: Option<String>,
}

impl Phone {
    pub async fn udp(bridge: &Bridge, user: &str) -> Phone {
        Phone::with(TestUa::udp(bridge.sip).await, user)
    }

    /// A UDP phone on the loopback address `ip` (another `127.0.0.x` stands for another
    /// host).
    pub async fn udp_from(bridge: &Bridge, user: &str, ip: &str) -> Phone {
        let local = SocketAddr::new(ip.parse().expect("ip"), 0);
        Phone::with(TestUa::udp_at(local, bridge.sip).await, user)
    }

    pub async fn tcp(bridge: &Bridge, user: &str) -> Phone {
        Phone::with(TestUa::tcp(bridge.sip).await, user)
    }

    /// A phone (or a trunk delivering leg A) over TLS to callbridge's TLS listener, trusting
    /// the CA of `config`.
    pub async fn tls(
        bridge: &Bridge,
        user: &str,
        config: std::sync::Arc<rustls::ClientConfig>,
    ) -> Phone {
        let listener = bridge
            .running
            .sip_tls_addr
            .expect("callbridge started with tls.listen");
        Phone::with(TestUa::tls(listener, config).await, user)
    }

    fn with(ua: TestUa, user: &str) -> Phone {
        Phone {
            user: user.to_owned(),
            call_id: ids::new_call_id("phone.test"),
            from_tag: ids::new_tag(),
            cseq: 1,
            invite: None,
            remote_tag: None,
            remote_target: None,
            ua,
        }
    }

    fn via(&self, branch: &str) -> String {
        format!(
            "SIP/2.0/{} {};branch={branch};rport",
            self.ua.transport(),
            self.ua.local_addr()
        )
    }

    /// The INVITE to the dedicated number `dialled`, with an SDP offer unless `late_offer`.
    pub fn invite(&mut self, dialled: &str, late_offer: bool) -> Request {
        let body = if late_offer {
            String::new()
        } else {
            sdp(self.ua.local_addr(), 1)
        };
        let content_type = if late_offer {
            ""
        } else {
            "Content-Type: application/sdp\n"
        };
        let text = format!(
            "INVITE sip:{dialled}@{server} SIP/2.0\n\
             Via: {via}\n\
             Max-Forwards: 70\n\
             From: <sip:{user}@phone.test>;tag={tag}\n\
             To: <sip:{dialled}@{server}>\n\
             Call-ID: {call_id}\n\
             CSeq: {cseq} INVITE\n\
             Contact: <sip:{user}@{local}>\n\
             {content_type}\n{body}",
            server = self.ua.server,
            via = self.via(&ids::new_branch()),
            user = self.user,
            tag = self.from_tag,
            call_id = self.call_id,
            cseq = self.cseq,
            local = self.ua.local_addr(),
        );
        let invite = request(&text);
        self.invite = Some(invite.clone());
        invite
    }

    /// An INVITE whose SDP offer points at `media` (a test RTP socket).
    pub fn invite_with_media(&mut self, dialled: &str, media: SocketAddr) -> Request {
        let mut invite = self.invite(dialled, false);
        invite.body = sdp(media, 1).into();
        self.invite = Some(invite.clone());
        invite
    }

    /// Sends an INVITE to `dialled` and returns it.
    pub async fn call(&mut self, dialled: &str) -> Request {
        let invite = self.invite(dialled, false);
        self.ua.send(invite.clone()).await;
        invite
    }

    /// Remembers callbridge's tag and Contact from a response on leg A.
    pub fn learn(&mut self, response: &Response) {
        if let Ok(to) = response.headers.to() {
            if let Some(tag) = to.tag() {
                self.remote_tag = Some(tag.to_owned());
            }
        }
        if let Ok(contacts) = response.headers.contacts() {
            if let Some(contact) = contacts.first() {
                self.remote_target = Some(contact.uri.as_str().to_owned());
            }
        }
    }

    /// A request inside leg A's dialog (ACK uses the INVITE's CSeq, others the next one).
    pub fn in_dialog(&mut self, method: Method, body: Option<String>) -> Request {
        if method != Method::Ack {
            self.cseq += 1;
        }
        let target = self
            .remote_target
            .clone()
            .unwrap_or_else(|| format!("sip:{}", self.ua.server));
        let tag = self.remote_tag.clone().expect("callbridge's tag on leg A");
        let to_user = self
            .invite
            .as_ref()
            .and_then(|i| i.uri.user().map(str::to_owned))
            .unwrap_or_default();
        let content_type = if body.is_some() {
            "Content-Type: application/sdp\n"
        } else {
            ""
        };
        let text = format!(
            "{method} {target} SIP/2.0\n\
             Via: {via}\n\
             Max-Forwards: 70\n\
             From: <sip:{user}@phone.test>;tag={from_tag}\n\
             To: <sip:{to_user}@{server}>;tag={tag}\n\
             Call-ID: {call_id}\n\
             CSeq: {cseq} {method}\n\
             Contact: <sip:{user}@{local}>\n\
             {content_type}\n{body}",
            via = self.via(&ids::new_branch()),
            user = self.user,
            from_tag = self.from_tag,
            server = self.ua.server,
            call_id = self.call_id,
            cseq = self.cseq,
            local = self.ua.local_addr(),
            body = body.unwrap_or_default(),
        );
        request(&text)
    }

    /// The ACK for callbridge's 2xx on leg A.
    pub async fn ack(&mut self) {
        let ack = self.in_dialog(Method::Ack, None);
        self.ua.send(ack).await;
    }

    /// CANCEL of the last INVITE (same branch, RFC 3261 §9.1), built as sip-core builds it.
    pub fn cancel(&self) -> Request {
        build_cancel(self.invite.as_ref().expect("an INVITE to cancel"))
    }

    /// The ACK for a non-2xx final response to the last INVITE (same branch, the response's
    /// To; §17.1.1.3), built as sip-core builds it.
    pub fn ack_failure(&self, response: &Response) -> Request {
        build_ack_for_non_2xx(self.invite.as_ref().expect("the INVITE"), response)
    }
}

/// The callee's side of leg B: answers callbridge's INVITE and keeps the dialog.
pub struct CalleeDialog {
    pub invite: Request,
    pub tag: String,
    pub cseq: u32,
}

impl CalleeDialog {
    pub fn new(invite: Request) -> CalleeDialog {
        CalleeDialog {
            invite,
            tag: ids::new_tag(),
            cseq: 100,
        }
    }

    /// A response to `request` (the INVITE or any request on leg B) with our tag, Contact and
    /// optional SDP.
    /// (The load tools' [`callee_reply`](callbridge_benches::sip_ua::callee_reply).)
    pub fn reply(&self, request: &Request, status: u16, with_sdp: Option<SocketAddr>) -> Response {
        let body = with_sdp.map(|addr| sdp(addr, 2));
        callbridge_benches::sip_ua::callee_reply(request, status, &self.tag, body.as_deref())
    }

    /// A request from the callee inside leg B's dialog (BYE, re-INVITE).
    pub fn in_dialog(
        &mut self,
        method: Method,
        local: SocketAddr,
        body: Option<String>,
    ) -> Request {
        self.cseq += 1;
        let from_us = self.invite.headers.to().expect("To").with_tag(&self.tag);
        let to_them = self.invite.headers.from().expect("From");
        let target = self
            .invite
            .headers
            .contacts()
            .ok()
            .and_then(|c| c.first().map(|c| c.uri.as_str().to_owned()))
            .expect("callbridge's Contact on leg B");
        let mut request = Request::new(method.clone(), sip_core::Uri::parse(&target).expect("uri"));
        let h = &mut request.headers;
        h.push(
            HeaderName::Via,
            format!("SIP/2.0/UDP {local};branch={};rport", ids::new_branch()),
        );
        h.push(HeaderName::MaxForwards, "70");
        h.push(HeaderName::From, from_us.to_string());
        h.push(HeaderName::To, to_them.to_string());
        h.push(
            HeaderName::CallId,
            self.invite.headers.call_id().expect("Call-ID"),
        );
        h.push(HeaderName::CSeq, format!("{} {method}", self.cseq));
        h.push(
            HeaderName::Contact,
            NameAddr::new(sip_core::Uri::parse("sip:callee@127.0.0.1").expect("uri")).to_string(),
        );
        if let Some(body) = body {
            h.push(HeaderName::ContentType, "application/sdp");
            request.body = body.into();
        }
        request
    }
}

/// Receives on `ua` until a request with `method` arrives (responses to earlier requests are
/// skipped); returns it.
pub async fn expect_request(ua: &mut TestUa, method: Method) -> Request {
    loop {
        match ua.recv().await {
            (Message::Request(request), _) if request.method == method => return request,
            (Message::Request(request), _) => {
                panic!(
                    "{}: expected {method}, got {}",
                    ua.local_addr(),
                    request.method
                )
            }
            (Message::Response(_), _) => continue,
        }
    }
}

/// The RTP port of the first `m=` line of an SDP body.
pub fn media_port(body: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(body);
    text.lines()
        .find_map(|line| line.strip_prefix("m="))
        .and_then(|m| m.split_whitespace().nth(1))
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no m= line in:\n{text}"))
}

/// Asserts that callbridge anchored an SDP body: `c=` is its address, the `m=` port is one of
/// its relay ports, codecs and direction are what the sender offered.
pub fn assert_anchored(body: &[u8], range: (u16, u16), direction: &str) {
    let text = String::from_utf8_lossy(body);
    let port = media_port(body);
    assert!(
        (range.0..=range.1).contains(&port),
        "m= port {port} is not a relay port:\n{text}"
    );
    assert!(text.contains("c=IN IP4 127.0.0.1"), "{text}");
    assert!(
        text.contains("a=rtpmap:0 PCMU/8000"),
        "codecs changed:\n{text}"
    );
    assert!(
        text.contains(&format!("a={direction}")),
        "direction changed:\n{text}"
    );
}

/// The phone hangs up a bridged call: its BYE is answered and relayed, the callee answers.
pub async fn phone_hangs_up(bridge: &mut Bridge, phone: &mut Phone, dialog: &CalleeDialog) {
    let bye = phone.in_dialog(Method::Bye, None);
    phone.ua.send(bye).await;
    phone.ua.expect_response(200).await;
    let bye_b = expect_request(&mut bridge.callee, Method::Bye).await;
    bridge.callee.send(dialog.reply(&bye_b, 200, None)).await;
}

/// Leg A INVITE → leg B INVITE at the callee, answered with 180 then 200; leg A sees both,
/// ACKs. Returns the phone and the callee's dialog.
pub async fn bridged_call(bridge: &mut Bridge, phone: &mut Phone) -> CalleeDialog {
    phone.call("2001").await;
    let invite = expect_request(&mut bridge.callee, Method::Invite).await;
    let dialog = CalleeDialog::new(invite.clone());
    bridge.callee.send(dialog.reply(&invite, 100, None)).await;
    bridge.callee.send(dialog.reply(&invite, 180, None)).await;
    let ringing = phone.ua.expect_response(180).await;
    phone.learn(&ringing);
    let callee_media = bridge.callee.local_addr();
    bridge
        .callee
        .send(dialog.reply(&invite, 200, Some(callee_media)))
        .await;
    let ok = phone.ua.expect_response(200).await;
    phone.learn(&ok);
    // Media anchored: the phone is told to send to callbridge, not to the callee.
    assert_anchored(&ok.body, bridge.rtp_ports, "sendrecv");
    assert_anchored(&invite.body, bridge.rtp_ports, "sendrecv");
    // callbridge ACKs leg B's 200.
    let ack = expect_request(&mut bridge.callee, Method::Ack).await;
    assert_eq!(ack.headers.call_id(), invite.headers.call_id());
    phone.ack().await;
    dialog
}
