//! Media relay load: RTP packets relayed per CPU-second of a callbridge process.
//!
//! Spawns the callbridge binary on loopback, sets up `--calls` bridged calls by scripted SIP over
//! UDP (the tool plays every phone on one socket and the trunk's callee on another), then streams
//! PCMU-sized RTP both ways through callbridge's relay for `--seconds` at `--pps` packets per
//! second per direction per call. It counts loss per direction, measures one-way latency through
//! the relay (the send time rides in the payload), reads callbridge's CPU time from
//! `/proc/<pid>/stat` around the streaming window, hangs every call up and kills the child.
//!
//! ```sh
//! cargo run --release -p callbridge-benches --bin media_load -- \
//!     --callbridge target/release/callbridge --calls 200 --seconds 10 --pps 50
//! ```
//!
//! With `--rtpengine PATH` instead of `--callbridge PATH`, the same streams go through
//! rtpengine (userspace forwarding, `--table=-1`), set up over its `ng` control protocol with an
//! offer and an answer per call, so both relays are measured by the same generator in the same
//! conditions (the reference of the benchmark issue).
//!
//! Self-contained on purpose (no sip-tests dependency): SIP is written as text and read back with
//! `sip_core::Message::parse`; HTTP is a bare HTTP/1.1 exchange over a TcpStream.

use std::fs::File;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sip_core::{HeaderName, Message, Method, ParseLimits, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;

/// `sysconf(_SC_CLK_TCK)`: the unit of utime/stime in `/proc/<pid>/stat`. It is 100 on every
/// Linux architecture this runs on (USER_HZ), so it is hard-coded rather than pulling in libc.
const CLK_TCK: f64 = 100.0;
/// RTP header (12 bytes) + 160-byte PCMU payload (20 ms at 8 kHz).
const RTP_HEADER: usize = 12;
const PAYLOAD: usize = 160;
/// How long a SIP step may take before the run is abandoned.
const SIP_WAIT: Duration = Duration::from_secs(5);
/// `--memory`: how long after the setup transactions end the memory is measured.
const MEMORY_SETTLE: Duration = Duration::from_secs(5);
/// After the last packet is sent, how long receivers keep listening for stragglers.
const DRAIN: Duration = Duration::from_millis(1000);

#[derive(Clone, Debug)]
struct Args {
    callbridge: String,
    /// rtpengine binary: measure it instead of callbridge.
    rtpengine: String,
    ng_port: u16,
    calls: usize,
    seconds: f64,
    pps: u32,
    sip_port: u16,
    api_port: u16,
    rtp_ports: String,
    /// Send slots per packet interval: calls are spread over this many phases so the sender does
    /// not emit every call's packet in the same instant.
    slots: u32,
    threads: usize,
    log: String,
    log_filter: String,
    /// Exit non-zero when any packet is lost or cannot be sent (CI quick mode).
    fail_on_loss: bool,
    /// Before streaming, wait until the calls' setup transactions have ended and report the
    /// server's memory (PSS) per active call.
    memory: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: media_load (--callbridge PATH | --rtpengine PATH [--ng-port 22222]) [--calls N=50] [--seconds S=10] [--pps P=50]\n\
         \x20      [--sip-port 25060] [--api-port 28080] [--rtp-ports 12000-19999]\n\
         \x20      [--slots 10] [--threads 2] [--log /tmp/media_load-callbridge.log]\n\
         \x20      [--log-filter info] [--fail-on-loss]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        callbridge: String::new(),
        rtpengine: String::new(),
        ng_port: 22222,
        calls: 50,
        seconds: 10.0,
        pps: 50,
        sip_port: 25060,
        api_port: 28080,
        // Not 10000-11999: sip-tests' 200-call media test binds that slice, and both may run on
        // this shared machine at once. Below the ephemeral range (32768-60999), so the tool's own
        // port-0 sockets never sit on a relay port.
        rtp_ports: "12000-19999".into(),
        slots: 10,
        threads: 2,
        log: "/tmp/media_load-callbridge.log".into(),
        log_filter: "info".into(),
        fail_on_loss: false,
        memory: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        let bad = |flag: &str| -> ! {
            eprintln!("media_load: bad value for {flag}");
            usage()
        };
        match flag.as_str() {
            "--callbridge" => args.callbridge = value(),
            "--rtpengine" => args.rtpengine = value(),
            "--ng-port" => args.ng_port = value().parse().unwrap_or_else(|_| bad(&flag)),
            "--calls" => args.calls = value().parse().unwrap_or_else(|_| bad(&flag)),
            "--seconds" => args.seconds = value().parse().unwrap_or_else(|_| bad(&flag)),
            "--pps" => args.pps = value().parse().unwrap_or_else(|_| bad(&flag)),
            "--sip-port" => args.sip_port = value().parse().unwrap_or_else(|_| bad(&flag)),
            "--api-port" => args.api_port = value().parse().unwrap_or_else(|_| bad(&flag)),
            "--rtp-ports" => args.rtp_ports = value(),
            "--slots" => args.slots = value().parse().unwrap_or_else(|_| bad(&flag)),
            "--threads" => args.threads = value().parse().unwrap_or_else(|_| bad(&flag)),
            "--log" => args.log = value(),
            "--log-filter" => args.log_filter = value(),
            "--fail-on-loss" => args.fail_on_loss = true,
            "--memory" => args.memory = true,
            "-h" | "--help" => usage(),
            _ => {
                eprintln!("media_load: unknown flag {flag}");
                usage()
            }
        }
    }
    if args.callbridge.is_empty() == args.rtpengine.is_empty()
        || args.calls == 0
        || args.pps == 0
        || args.slots == 0
    {
        usage()
    }
    args
}

fn main() {
    let args = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(error) = runtime.block_on(run(args)) {
        eprintln!("media_load: {error}");
        std::process::exit(1);
    }
}

/// Kills the callbridge child however `run` ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl ChildGuard {
    /// Stops callbridge as a service manager would (SIGTERM), so that it drains and writes its
    /// last log lines; killed after 10 s if it has not exited.
    fn terminate(mut self) {
        let pid = self.0.id().to_string();
        let _ = Command::new("kill")
            .args(["-TERM", &pid])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Dropping kills it.
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: &str) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // The command name (field 2) is in parentheses and may hold spaces: split after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: f64 = fields
        .get(11)
        .and_then(|v| v.parse().ok())
        .ok_or("no utime")?;
    let stime: f64 = fields
        .get(12)
        .and_then(|v| v.parse().ok())
        .ok_or("no stime")?;
    Ok((utime + stime) / CLK_TCK)
}

/// Proportional set size of a process, in KiB (`/proc/<pid>/smaps_rollup`): its resident
/// memory with shared pages divided among their users. Kernel socket buffers are not in it.
fn pss_kib(pid: &str) -> Result<u64, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .map_err(|e| format!("/proc/{pid}/smaps_rollup: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "no Pss line in smaps_rollup".to_owned())
}

/// A gauge's value from the `/metrics` text (the sum over its label sets).
async fn metric_sum(api: SocketAddr, name: &str) -> Result<f64, String> {
    let (status, text) = http(api, "GET", "/metrics", None).await?;
    if status != 200 {
        return Err(format!("/metrics: {status}"));
    }
    Ok(text
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// A bare HTTP/1.1 exchange (`Connection: close`); returns status and body.
async fn http(
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
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
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

/// A minimal audio SDP whose media address is `addr`.
fn sdp(addr: SocketAddr, session_id: u64) -> String {
    format!(
        "v=0\r\no=- {session_id} 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\na=sendrecv\r\n",
        ip = addr.ip(),
        port = addr.port()
    )
}

/// The media address (`c=` IP, first `m=` port) of an SDP body.
fn sdp_media_addr(body: &[u8]) -> Result<SocketAddr, String> {
    let text = String::from_utf8_lossy(body);
    let ip = text
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))
        .map(str::trim)
        .ok_or_else(|| format!("no c= line in SDP:\n{text}"))?;
    let port = text
        .lines()
        .find_map(|l| l.strip_prefix("m="))
        .and_then(|m| m.split_whitespace().nth(1))
        .and_then(|p| p.parse::<u16>().ok())
        .ok_or_else(|| format!("no m= port in SDP:\n{text}"))?;
    format!("{ip}:{port}")
        .parse()
        .map_err(|e| format!("SDP address {ip}:{port}: {e}"))
}

/// Writes a request or response from a head (lines without CRLF) and a body.
fn sip_text(lines: &[String], body: &str) -> Vec<u8> {
    let mut text = lines.join("\r\n");
    if !body.is_empty() {
        text.push_str("\r\nContent-Type: application/sdp");
    }
    text.push_str(&format!("\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
    text.into_bytes()
}

fn new_token(prefix: &str, n: usize) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let c = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}{n}x{c}x{nanos:x}")
}

/// One UDP SIP endpoint of the tool; skips what the caller is not waiting for.
struct SipSocket {
    socket: UdpSocket,
    local: SocketAddr,
    limits: ParseLimits,
    buf: Vec<u8>,
    /// Messages received that were not the one waited for (retransmissions, provisional
    /// responses, …), for the report.
    skipped: u64,
}

impl SipSocket {
    async fn bind(addr: &str) -> Result<SipSocket, String> {
        let socket = UdpSocket::bind(addr)
            .await
            .map_err(|e| format!("bind {addr}: {e}"))?;
        let local = socket.local_addr().map_err(|e| e.to_string())?;
        Ok(SipSocket {
            socket,
            local,
            limits: ParseLimits::default(),
            buf: vec![0; 65536],
            skipped: 0,
        })
    }

    async fn send(&self, bytes: &[u8], to: SocketAddr) -> Result<(), String> {
        self.socket
            .send_to(bytes, to)
            .await
            .map(|_| ())
            .map_err(|e| format!("SIP send: {e}"))
    }

    /// The next message for which `want` holds, within [`SIP_WAIT`].
    async fn wait_for(
        &mut self,
        what: &str,
        mut want: impl FnMut(&Message) -> bool,
    ) -> Result<(Message, SocketAddr), String> {
        let deadline = tokio::time::Instant::now() + SIP_WAIT;
        loop {
            let (len, from) =
                tokio::time::timeout_at(deadline, self.socket.recv_from(&mut self.buf))
                    .await
                    .map_err(|_| format!("{}: no {what} within {SIP_WAIT:?}", self.local))?
                    .map_err(|e| format!("SIP recv: {e}"))?;
            match Message::parse(&self.buf[..len], &self.limits) {
                Ok(message) if want(&message) => return Ok((message, from)),
                _ => self.skipped += 1,
            }
        }
    }
}

fn is_response(m: &Message, call_id: &str, status: u16, method: Method) -> bool {
    match m {
        Message::Response(r) => {
            r.status == status
                && r.headers.call_id() == Some(call_id)
                && r.headers
                    .cseq()
                    .map(|c| c.method == method)
                    .unwrap_or(false)
        }
        Message::Request(_) => false,
    }
}

fn is_request(m: &Message, method: Method, call_id: Option<&str>) -> bool {
    match m {
        Message::Request(r) => {
            r.method == method
                && match call_id {
                    Some(id) => r.headers.call_id() == Some(id),
                    None => true,
                }
        }
        Message::Response(_) => false,
    }
}

/// A 200 (or other) to `request` from the callee, with its tag, Contact and optional SDP.
fn callee_reply(request: &Request, status: u16, tag: &str, sdp_body: Option<&str>) -> Vec<u8> {
    let mut response = Response::to_request(request, status, None);
    if let Ok(to) = response.headers.to() {
        if to.tag().is_none() {
            response
                .headers
                .set(HeaderName::To, to.with_tag(tag).to_string());
        }
    }
    if (200..300).contains(&status) {
        response
            .headers
            .push(HeaderName::Contact, "<sip:callee@127.0.0.1>");
    }
    if let Some(body) = sdp_body {
        response
            .headers
            .push(HeaderName::ContentType, "application/sdp");
        response.body = body.to_owned().into_bytes().into();
    }
    response.to_bytes().to_vec()
}

/// One bridged call as the tool holds it.
struct Call {
    telnum: String,
    call_id: String,
    from_tag: String,
    /// callbridge's To tag and Contact on leg A.
    remote_tag: String,
    remote_target: String,
    /// The tool's RTP sockets for each side.
    phone_rtp: Arc<UdpSocket>,
    callee_rtp: Arc<UdpSocket>,
    /// Relay addresses: where the phone sends (from callbridge's 200 on leg A) and where the
    /// callee sends (from callbridge's INVITE on leg B).
    relay_for_phone: SocketAddr,
    relay_for_callee: SocketAddr,
}

const DIALLED: &str = "2001";
const TARGET: &str = "3001";

async fn setup_call(
    n: usize,
    api: SocketAddr,
    sip: SocketAddr,
    phone: &mut SipSocket,
    callee: &mut SipSocket,
) -> Result<Call, String> {
    let telnum = format!("{}", 100_000 + n);
    let body = format!(r#"{{"caller":"{DIALLED}","callee":"{TARGET}"}}"#);
    let (status, reply) = http(
        api,
        "POST",
        &format!("/api/user/{telnum}/makecall"),
        Some(&body),
    )
    .await?;
    if status != 200 {
        return Err(format!("makecall {telnum}: {status} {reply}"));
    }
    let phone_rtp = UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("bind phone RTP: {e}"))?;
    let callee_rtp = UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("bind callee RTP: {e}"))?;
    let phone_media = phone_rtp.local_addr().map_err(|e| e.to_string())?;
    let callee_media = callee_rtp.local_addr().map_err(|e| e.to_string())?;

    // Leg A: the phone's INVITE, SDP pointing at the phone's RTP socket.
    let call_id = new_token("load", n);
    let from_tag = new_token("pt", n);
    let offer = sdp(phone_media, n as u64 + 1);
    let invite = sip_text(
        &[
            format!("INVITE sip:{DIALLED}@{sip} SIP/2.0"),
            format!(
                "Via: SIP/2.0/UDP {};branch=z9hG4bK{};rport",
                phone.local,
                new_token("b", n)
            ),
            "Max-Forwards: 70".into(),
            format!("From: <sip:{telnum}@phone.test>;tag={from_tag}"),
            format!("To: <sip:{DIALLED}@{sip}>"),
            format!("Call-ID: {call_id}"),
            "CSeq: 1 INVITE".into(),
            format!("Contact: <sip:{telnum}@{}>", phone.local),
        ],
        &offer,
    );
    phone.send(&invite, sip).await?;

    // Leg B: callbridge's INVITE to the trunk; answer 200 with SDP at the callee's RTP socket.
    let (leg_b, from) = callee
        .wait_for("INVITE on leg B", |m| {
            is_request(m, Method::Invite, None)
                && m.headers().to().map(|t| t.tag().is_none()).unwrap_or(false)
        })
        .await?;
    let Message::Request(leg_b) = leg_b else {
        unreachable!()
    };
    let relay_for_callee = sdp_media_addr(&leg_b.body)?;
    let b_call_id = leg_b.headers.call_id().unwrap_or_default().to_owned();
    let callee_tag = new_token("ct", n);
    let answer = sdp(callee_media, n as u64 + 1_000_000);
    callee
        .send(&callee_reply(&leg_b, 200, &callee_tag, Some(&answer)), from)
        .await?;

    // Leg A answered: learn callbridge's tag, Contact and relay port; ACK.
    let (ok, _) = phone
        .wait_for("200 to the INVITE on leg A", |m| {
            is_response(m, &call_id, 200, Method::Invite)
        })
        .await?;
    let Message::Response(ok) = ok else {
        unreachable!()
    };
    let relay_for_phone = sdp_media_addr(&ok.body)?;
    let remote_tag = ok
        .headers
        .to()
        .ok()
        .and_then(|t| t.tag().map(str::to_owned))
        .ok_or("no To tag in callbridge's 200")?;
    let remote_target = ok
        .headers
        .contacts()
        .ok()
        .and_then(|c| c.first().map(|c| c.uri.as_str().to_owned()))
        .unwrap_or_else(|| format!("sip:{sip}"));
    let call = Call {
        telnum,
        call_id,
        from_tag,
        remote_tag,
        remote_target,
        phone_rtp: Arc::new(phone_rtp),
        callee_rtp: Arc::new(callee_rtp),
        relay_for_phone,
        relay_for_callee,
    };
    phone
        .send(&in_dialog_a(&call, phone.local, sip, "ACK", 1, n), sip)
        .await?;
    callee
        .wait_for("ACK on leg B", |m| {
            is_request(m, Method::Ack, Some(&b_call_id))
        })
        .await?;
    Ok(call)
}

/// Streams RTP both ways through the relay for every call and prints loss, latency and the
/// relay process's CPU per packet. `pid` is the relay's process.
async fn stream(args: &Args, calls: &[Call], pid: &str, server: &str) -> Result<(), String> {
    // Streaming.
    let base = Instant::now();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let per_socket = (args.seconds * f64::from(args.pps)) as usize + 16;
    let mut receivers = Vec::with_capacity(calls.len() * 2);
    for call in calls {
        receivers.push(tokio::spawn(receive(
            call.callee_rtp.clone(),
            0,
            base,
            stop_rx.clone(),
            per_socket,
        )));
        receivers.push(tokio::spawn(receive(
            call.phone_rtp.clone(),
            1,
            base,
            stop_rx.clone(),
            per_socket,
        )));
    }
    let targets: Vec<(Arc<UdpSocket>, SocketAddr, Arc<UdpSocket>, SocketAddr)> = calls
        .iter()
        .map(|c| {
            (
                c.phone_rtp.clone(),
                c.relay_for_phone,
                c.callee_rtp.clone(),
                c.relay_for_callee,
            )
        })
        .collect();
    let slots = args.slots as usize;
    let tick = Duration::from_secs_f64(1.0 / (f64::from(args.pps) * f64::from(args.slots)));
    let total_ticks = (args.seconds * f64::from(args.pps)) as u64 * u64::from(args.slots);

    let cpu_cb0 = cpu_seconds(pid)?;
    let cpu_tool0 = cpu_seconds("self")?;
    let load0 = loadavg();
    let wall0 = Instant::now();
    let sender = tokio::spawn(async move {
        let mut sent = [0u64; 2];
        let mut send_errors = 0u64;
        let mut late_ticks = 0u64;
        let mut packet = [0u8; RTP_HEADER + PAYLOAD];
        for (i, b) in packet[RTP_HEADER..].iter_mut().enumerate() {
            *b = 0xFF ^ (i as u8);
        }
        let mut interval = tokio::time::interval(tick);
        // Burst: a late tick is caught up, so the offered rate stays pps on average.
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for k in 0..total_ticks {
            let scheduled = interval.tick().await;
            if scheduled.elapsed() > tick {
                late_ticks += 1;
            }
            let slot = (k % slots as u64) as usize;
            let seq = (k / slots as u64) as u16;
            for (i, (phone_rtp, to_a, callee_rtp, to_b)) in
                targets.iter().enumerate().skip(slot).step_by(slots)
            {
                let now = base.elapsed().as_nanos() as u64;
                fill_rtp(&mut packet, seq, (i as u32) << 1, now);
                match phone_rtp.try_send_to(&packet, *to_a) {
                    Ok(_) => sent[0] += 1,
                    Err(_) => send_errors += 1,
                }
                let now = base.elapsed().as_nanos() as u64;
                fill_rtp(&mut packet, seq, ((i as u32) << 1) | 1, now);
                match callee_rtp.try_send_to(&packet, *to_b) {
                    Ok(_) => sent[1] += 1,
                    Err(_) => send_errors += 1,
                }
            }
        }
        (sent, send_errors, late_ticks)
    });
    let (sent, send_errors, late_ticks) = sender.await.map_err(|e| e.to_string())?;
    let send_wall = wall0.elapsed();
    tokio::time::sleep(DRAIN).await;
    let _ = stop.send(true);
    let cpu_cb1 = cpu_seconds(pid)?;
    let cpu_tool1 = cpu_seconds("self")?;
    let wall = wall0.elapsed();
    let load1 = loadavg();

    let mut received = [0u64; 2];
    let mut out_of_order = [0u64; 2];
    let mut latencies: [Vec<u32>; 2] = [Vec::new(), Vec::new()];
    for r in receivers {
        let s = r.await.map_err(|e| e.to_string())?;
        received[s.direction] += s.received;
        out_of_order[s.direction] += s.out_of_order;
        latencies[s.direction].extend_from_slice(&s.latencies_us);
    }

    let cb_cpu = cpu_cb1 - cpu_cb0;
    let tool_cpu = cpu_tool1 - cpu_tool0;
    let total_sent = sent[0] + sent[1];
    let total_received = received[0] + received[1];
    let mut all: Vec<u32> = latencies.iter().flatten().copied().collect();
    all.sort_unstable();
    for l in &mut latencies {
        l.sort_unstable();
    }

    println!();
    println!(
        "calls {}  pps/direction/call {}  seconds {:.1} (sending took {:.2?}; late ticks {}/{})",
        calls.len(),
        args.pps,
        args.seconds,
        send_wall,
        late_ticks,
        total_ticks
    );
    for (d, name) in ["phone->callee", "callee->phone"].iter().enumerate() {
        let lost = sent[d].saturating_sub(received[d]);
        println!(
            "  {name}: sent {}  received {}  lost {} ({:.3} %)  out-of-order {}  latency p50 {} us  p99 {} us  max {} us",
            sent[d],
            received[d],
            lost,
            100.0 * lost as f64 / sent[d].max(1) as f64,
            out_of_order[d],
            percentile(&latencies[d], 0.50),
            percentile(&latencies[d], 0.99),
            latencies[d].last().copied().unwrap_or(0),
        );
    }
    println!("  send errors (tool side): {send_errors}");
    let lost = total_sent.saturating_sub(total_received);
    if args.fail_on_loss && (lost > 0 || send_errors > 0) {
        return Err(format!(
            "{lost} packets lost and {send_errors} not sent through {server} (--fail-on-loss)"
        ));
    }
    println!(
        "packets sent {}  relayed (received) {}  lost {} ({:.3} %)",
        total_sent,
        total_received,
        total_sent.saturating_sub(total_received),
        100.0 * total_sent.saturating_sub(total_received) as f64 / total_sent.max(1) as f64
    );
    println!(
        "latency (both directions) p50 {} us  p99 {} us  p99.9 {} us  max {} us",
        percentile(&all, 0.50),
        percentile(&all, 0.99),
        percentile(&all, 0.999),
        all.last().copied().unwrap_or(0)
    );
    println!(
        "{server} CPU {:.2} s over {:.2?} wall ({:.0} % of one core)",
        cb_cpu,
        wall,
        100.0 * cb_cpu / wall.as_secs_f64()
    );
    println!(
        "{server}: PACKETS RELAYED PER CPU-SECOND: {:.0}",
        total_received as f64 / cb_cpu.max(0.01)
    );
    println!(
        "tool CPU {:.2} s ({:.0} % of one core); loadavg before [{load0}] after [{load1}]",
        tool_cpu,
        100.0 * tool_cpu / wall.as_secs_f64()
    );
    Ok(())
}

/// A request from the phone inside leg A's dialog.
fn in_dialog_a(
    call: &Call,
    local: SocketAddr,
    sip: SocketAddr,
    method: &str,
    cseq: u32,
    n: usize,
) -> Vec<u8> {
    sip_text(
        &[
            format!("{method} {} SIP/2.0", call.remote_target),
            format!(
                "Via: SIP/2.0/UDP {local};branch=z9hG4bK{};rport",
                new_token("b", n)
            ),
            "Max-Forwards: 70".into(),
            format!(
                "From: <sip:{}@phone.test>;tag={}",
                call.telnum, call.from_tag
            ),
            format!("To: <sip:{DIALLED}@{sip}>;tag={}", call.remote_tag),
            format!("Call-ID: {}", call.call_id),
            format!("CSeq: {cseq} {method}"),
            format!("Contact: <sip:{}@{local}>", call.telnum),
        ],
        "",
    )
}

/// Phone's BYE; callbridge BYEs leg B, the callee answers 200, the phone gets its 200.
async fn hang_up(
    n: usize,
    call: &Call,
    sip: SocketAddr,
    phone: &mut SipSocket,
    callee: &mut SipSocket,
) -> Result<(), String> {
    phone
        .send(&in_dialog_a(call, phone.local, sip, "BYE", 2, n), sip)
        .await?;
    let (bye, from) = callee
        .wait_for("BYE on leg B", |m| is_request(m, Method::Bye, None))
        .await?;
    let Message::Request(bye) = bye else {
        unreachable!()
    };
    callee
        .send(&callee_reply(&bye, 200, "unused", None), from)
        .await?;
    phone
        .wait_for("200 to BYE on leg A", |m| {
            is_response(m, &call.call_id, 200, Method::Bye)
        })
        .await?;
    Ok(())
}

/// An RTP packet: V=2, PT 0 (PCMU), seq, timestamp seq·160, ssrc; payload starts with the send
/// time (ns since `base`, big-endian u64) and the call index.
fn fill_rtp(packet: &mut [u8; RTP_HEADER + PAYLOAD], seq: u16, ssrc: u32, sent_ns: u64) {
    packet[0] = 0x80;
    packet[1] = 0x00;
    packet[2..4].copy_from_slice(&seq.to_be_bytes());
    packet[4..8].copy_from_slice(&(u32::from(seq).wrapping_mul(160)).to_be_bytes());
    packet[8..12].copy_from_slice(&ssrc.to_be_bytes());
    packet[12..20].copy_from_slice(&sent_ns.to_be_bytes());
}

/// What one receiving socket saw.
struct RecvStats {
    /// 0: phone → callee (received on the callee socket); 1: callee → phone.
    direction: usize,
    received: u64,
    /// Packets whose sequence number was not above the last one seen (reordering/duplicates).
    out_of_order: u64,
    latencies_us: Vec<u32>,
}

async fn receive(
    socket: Arc<UdpSocket>,
    direction: usize,
    base: Instant,
    mut stop: tokio::sync::watch::Receiver<bool>,
    expected: usize,
) -> RecvStats {
    let mut stats = RecvStats {
        direction,
        received: 0,
        out_of_order: 0,
        latencies_us: Vec::with_capacity(expected),
    };
    let mut buf = [0u8; 2048];
    let mut last_seq: Option<u16> = None;
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return stats,
            got = socket.recv_from(&mut buf) => {
                let Ok((len, _)) = got else { continue };
                let now = base.elapsed().as_nanos() as u64;
                if len < RTP_HEADER + 8 {
                    continue;
                }
                stats.received += 1;
                let seq = u16::from_be_bytes([buf[2], buf[3]]);
                if let Some(last) = last_seq {
                    if seq.wrapping_sub(last) == 0 || seq.wrapping_sub(last) > 0x8000 {
                        stats.out_of_order += 1;
                    }
                }
                last_seq = Some(seq);
                let mut sent = [0u8; 8];
                sent.copy_from_slice(&buf[12..20]);
                let sent_ns = u64::from_be_bytes(sent);
                let us = now.saturating_sub(sent_ns) / 1000;
                stats.latencies_us.push(us.min(u64::from(u32::MAX)) as u32);
            }
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Non-comment lines of `/metrics` that mention media.
async fn media_metrics(api: SocketAddr) -> Vec<String> {
    match http(api, "GET", "/metrics", None).await {
        Ok((200, text)) => text
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains("media_"))
            .map(str::to_owned)
            .collect(),
        Ok((status, _)) => vec![format!("/metrics: {status}")],
        Err(e) => vec![format!("/metrics: {e}")],
    }
}

/// Waits until the server holds no transaction (the calls' setup is over: 64·T1 after the last
/// 2xx), then prints its PSS growth since before the calls divided by the calls up.
async fn memory_per_call(
    api: SocketAddr,
    pid: &str,
    pss_base: u64,
    calls: usize,
) -> Result<(), String> {
    let waited = Instant::now();
    loop {
        let transactions = metric_sum(api, "callbridge_sip_transactions").await?;
        if transactions == 0.0 {
            break;
        }
        if waited.elapsed() > Duration::from_secs(60) {
            return Err(format!(
                "{transactions} transactions still alive after 60 s"
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let active = metric_sum(api, "callbridge_active_calls").await?;
    let pss_setup_over = pss_kib(pid)?;
    let setup_over_after = waited.elapsed();
    // Freed setup memory goes back to the kernel over the allocator's decay period (callbridge's
    // jemalloc: 1 s, by its background thread); the figure is taken once it has.
    tokio::time::sleep(MEMORY_SETTLE).await;
    let pss = pss_kib(pid)?;
    let per_call = |pss: u64| pss.saturating_sub(pss_base) as f64 / calls.max(1) as f64;
    println!(
        "memory: PSS {pss_base} KiB before the calls; with {calls} calls up ({active} active): \
         {pss_setup_over} KiB when the last setup transaction ended ({:.1?}), {pss} KiB {} s later: \
         MEMORY PER ACTIVE CALL: {:.1} KiB (at the end of setup: {:.1} KiB)",
        setup_over_after,
        MEMORY_SETTLE.as_secs(),
        per_call(pss),
        per_call(pss_setup_over),
    );
    Ok(())
}

async fn run(args: Args) -> Result<(), String> {
    if !args.rtpengine.is_empty() {
        return run_rtpengine(args).await;
    }
    let sip: SocketAddr = format!("127.0.0.1:{}", args.sip_port)
        .parse()
        .map_err(|e| format!("{e}"))?;
    let api: SocketAddr = format!("127.0.0.1:{}", args.api_port)
        .parse()
        .map_err(|e| format!("{e}"))?;
    // The trunk: callbridge sends leg B's INVITEs here.
    let mut callee = SipSocket::bind("127.0.0.1:0").await?;
    let mut phone = SipSocket::bind("127.0.0.1:0").await?;

    let overrides = [
        format!("sip.listen=\"{sip}\""),
        format!("api.listen=\"{api}\""),
        format!("sip.trunk=\"{}\"", callee.local),
        "sip.trusted_peers=[\"127.0.0.0/8\"]".to_owned(),
        // Short timers, as in the end-to-end tests: transactions end soon after the calls.
        "sip.t1_ms=100".to_owned(),
        "sip.t2_ms=400".to_owned(),
        "sip.t4_ms=500".to_owned(),
        format!("media.rtp_ports=\"{}\"", args.rtp_ports),
        "media.bind_ip=\"127.0.0.1\"".to_owned(),
        "media.public_ip=\"127.0.0.1\"".to_owned(),
        // Off: with many calls the first ones wait for the others' setup before media starts.
        "media.inactivity_secs=0".to_owned(),
        format!("log.filter=\"{}\"", args.log_filter),
    ];
    let log = File::create(&args.log).map_err(|e| format!("create {}: {e}", args.log))?;
    let mut command = Command::new(&args.callbridge);
    for o in &overrides {
        command.arg("--set").arg(o);
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", args.callbridge))?;
    let mut child = ChildGuard(child);
    let pid = child.0.id().to_string();

    // Wait for /healthz.
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.0.try_wait() {
            return Err(format!(
                "callbridge exited during startup ({status}); see {}",
                args.log
            ));
        }
        if let Ok((200, _)) = http(api, "GET", "/healthz", None).await {
            break;
        }
        if started.elapsed() > Duration::from_secs(10) {
            return Err("callbridge not healthy within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "callbridge pid {pid} healthy after {:.2?}; SIP {sip}, API {api}, trunk {}, rtp_ports {}",
        started.elapsed(),
        callee.local,
        args.rtp_ports
    );

    let pss_base = pss_kib(&pid)?;
    // Calls, one after the other.
    let setup_start = Instant::now();
    let cpu_cb_setup0 = cpu_seconds(&pid)?;
    let mut calls = Vec::with_capacity(args.calls);
    for n in 0..args.calls {
        let call = setup_call(n, api, sip, &mut phone, &mut callee)
            .await
            .map_err(|e| format!("call {n}: {e}"))?;
        calls.push(call);
    }
    let setup = setup_start.elapsed();
    let cpu_cb_setup = cpu_seconds(&pid)? - cpu_cb_setup0;
    println!(
        "{} calls bridged in {:.2?} ({:.0} calls/s; callbridge CPU {:.2} s; SIP messages skipped: phone {}, callee {})",
        calls.len(),
        setup,
        calls.len() as f64 / setup.as_secs_f64(),
        cpu_cb_setup,
        phone.skipped,
        callee.skipped,
    );
    if args.memory {
        memory_per_call(api, &pid, pss_base, calls.len()).await?;
    }
    let metrics_before = media_metrics(api).await;
    // Let setup stragglers (retransmission timers, logs) settle before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;

    stream(&args, &calls, &pid, "callbridge").await?;
    let metrics_after = media_metrics(api).await;
    println!(
        "callbridge media metrics before: {}",
        metrics_before.join("; ")
    );
    println!(
        "callbridge media metrics after:  {}",
        metrics_after.join("; ")
    );

    // Hang up.
    let hangup_start = Instant::now();
    let mut hangup_errors = 0;
    for (n, call) in calls.iter().enumerate() {
        if let Err(e) = hang_up(n, call, sip, &mut phone, &mut callee).await {
            hangup_errors += 1;
            if hangup_errors <= 3 {
                eprintln!("hang-up of call {n}: {e}");
            }
        }
    }
    println!(
        "hung up {} calls in {:.2?} ({} errors)",
        calls.len(),
        hangup_start.elapsed(),
        hangup_errors
    );
    if let Ok(Some(status)) = child.0.try_wait() {
        println!("callbridge exited early: {status}");
        if args.fail_on_loss {
            return Err(format!("callbridge exited early: {status}"));
        }
    }
    if args.fail_on_loss && hangup_errors > 0 {
        return Err(format!("{hangup_errors} calls could not be hung up"));
    }
    child.terminate();

    // What callbridge logged beyond info.
    let log_text = std::fs::read_to_string(&args.log).unwrap_or_default();
    let notable: Vec<&str> = log_text
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    println!(
        "callbridge log {}: {} lines, {} WARN/ERROR",
        args.log,
        log_text.lines().count(),
        notable.len()
    );
    for line in notable.iter().take(5) {
        println!("  {line}");
    }
    Ok(())
}

// ----- rtpengine (the reference relay) ---------------------------------------------------------

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
        let (len, _) = tokio::time::timeout(SIP_WAIT, socket.recv_from(&mut buf))
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

/// One call through rtpengine: offer from the phone, answer from the callee; the rewritten
/// SDPs tell each side where to send.
async fn setup_rtpengine_call(
    n: usize,
    ng_socket: &UdpSocket,
    ng_addr: SocketAddr,
) -> Result<Call, String> {
    let phone_rtp = UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("bind phone RTP: {e}"))?;
    let callee_rtp = UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("bind callee RTP: {e}"))?;
    let call_id = new_token("rtpe", n);
    let from_tag = new_token("pt", n);
    let to_tag = new_token("ct", n);
    let offer = sdp(
        phone_rtp.local_addr().map_err(|e| e.to_string())?,
        n as u64 + 1,
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
    let answer = sdp(
        callee_rtp.local_addr().map_err(|e| e.to_string())?,
        n as u64 + 1_000_000,
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
    Ok(Call {
        telnum: String::new(),
        call_id,
        from_tag,
        remote_tag: to_tag,
        remote_target: String::new(),
        phone_rtp: Arc::new(phone_rtp),
        callee_rtp: Arc::new(callee_rtp),
        relay_for_phone,
        relay_for_callee,
    })
}

/// The same measurement with rtpengine as the relay.
async fn run_rtpengine(args: Args) -> Result<(), String> {
    let ng_addr: SocketAddr = format!("127.0.0.1:{}", args.ng_port)
        .parse()
        .map_err(|e| format!("{e}"))?;
    let (first, last) = args
        .rtp_ports
        .split_once('-')
        .ok_or("--rtp-ports must be FIRST-LAST")?;
    let log = File::create(&args.log).map_err(|e| format!("create {}: {e}", args.log))?;
    // Userspace forwarding only (`--table=-1`): no kernel module on these machines, and the
    // comparison is between two userspace relays. Two threads, as there are two cores.
    let child = Command::new(&args.rtpengine)
        .args([
            "--config-file=none",
            "--interface=127.0.0.1",
            &format!("--listen-ng={ng_addr}"),
            &format!("--port-min={first}"),
            &format!("--port-max={last}"),
            "--table=-1",
            "--foreground",
            "--log-stderr",
            "--log-level=4",
            "--num-threads=2",
            "--delete-delay=0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", args.rtpengine))?;
    let mut child = ChildGuard(child);
    let pid = child.0.id().to_string();
    let ng_socket = UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("bind ng socket: {e}"))?;
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.0.try_wait() {
            return Err(format!(
                "rtpengine exited during startup ({status}); see {}",
                args.log
            ));
        }
        let ping = ng_request("ping", &[("command", "ping")]);
        let _ = ng_socket.send_to(&ping, ng_addr).await;
        let mut buf = [0u8; 256];
        if let Ok(Ok((len, _))) =
            tokio::time::timeout(Duration::from_millis(200), ng_socket.recv_from(&mut buf)).await
        {
            if ng_value(&buf[..len], "result").as_deref() == Some("pong") {
                break;
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            return Err("rtpengine did not answer ping within 10 s".into());
        }
    }
    println!(
        "rtpengine pid {pid} up after {:.2?}; ng {ng_addr}, ports {}",
        started.elapsed(),
        args.rtp_ports
    );
    let setup_start = Instant::now();
    let mut calls = Vec::with_capacity(args.calls);
    for n in 0..args.calls {
        calls.push(
            setup_rtpengine_call(n, &ng_socket, ng_addr)
                .await
                .map_err(|e| format!("call {n}: {e}"))?,
        );
    }
    println!(
        "{} calls set up in {:.2?}",
        calls.len(),
        setup_start.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stream(&args, &calls, &pid, "rtpengine").await?;
    for (n, call) in calls.iter().enumerate() {
        let _ = ng(
            &ng_socket,
            ng_addr,
            &format!("d{n}"),
            &[
                ("command", "delete"),
                ("call-id", &call.call_id),
                ("from-tag", &call.from_tag),
            ],
        )
        .await;
    }
    if let Ok(Some(status)) = child.0.try_wait() {
        println!("rtpengine exited early: {status}");
    }
    Ok(())
}
