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
//! This file is the command line and the order of a run; the parts are modules of the
//! `callbridge_benches` library: [`process`] (CPU, PSS, the child), [`http`] (API and
//! `/metrics`), [`sip_ua`] (the phones and the callee), [`rtp`] (generator and checker) and
//! [`rtpengine`] (the reference's `ng` client). None depends on sip-tests, which starts the
//! whole server in-process: SIP is written as text and read back with `sip_core::Message::parse`,
//! HTTP is a bare HTTP/1.1 exchange over a TcpStream.

use std::fs::File;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use callbridge_benches::process::{cpu_seconds, pss_kib, ChildGuard};
use callbridge_benches::rtp::StreamConfig;
use callbridge_benches::sip_ua::SipSocket;
use callbridge_benches::{http, rtp, rtpengine, sip_ua};
use tokio::net::UdpSocket;

/// `--memory`: how long after the setup transactions end the memory is measured.
const MEMORY_SETTLE: Duration = Duration::from_secs(5);

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

impl Args {
    fn stream_config(&self) -> StreamConfig {
        StreamConfig {
            seconds: self.seconds,
            pps: self.pps,
            slots: self.slots,
            fail_on_loss: self.fail_on_loss,
        }
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
        let transactions = http::metric_sum(api, "callbridge_sip_transactions").await?;
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
    let active = http::metric_sum(api, "callbridge_active_calls").await?;
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
        // Records in an in-memory store: nothing left in the working directory.
        "store.path=\"\"".to_owned(),
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
    let pid = child.pid();

    // Wait for /healthz.
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.0.try_wait() {
            return Err(format!(
                "callbridge exited during startup ({status}); see {}",
                args.log
            ));
        }
        if let Ok((200, _)) = http::exchange(api, "GET", "/healthz", None).await {
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
        let call = sip_ua::setup_call(n, api, sip, &mut phone, &mut callee)
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
    let metrics_before = http::media_metrics(api).await;
    // Let setup stragglers (retransmission timers, logs) settle before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;

    rtp::stream(
        &args.stream_config(),
        calls.iter().map(|c| &c.media),
        &pid,
        "callbridge",
    )
    .await?;
    let metrics_after = http::media_metrics(api).await;
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
        if let Err(e) = sip_ua::hang_up(n, &call.leg_a, sip, &mut phone, &mut callee).await {
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
    let child = rtpengine::command(&args.rtpengine, ng_addr, first, last)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", args.rtpengine))?;
    let mut child = ChildGuard(child);
    let pid = child.pid();
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
        if rtpengine::ping(&ng_socket, ng_addr, Duration::from_millis(200)).await {
            break;
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
            rtpengine::setup_call(n, &ng_socket, ng_addr)
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
    rtp::stream(
        &args.stream_config(),
        calls.iter().map(|c| &c.media),
        &pid,
        "rtpengine",
    )
    .await?;
    for (n, call) in calls.iter().enumerate() {
        let _ = rtpengine::delete_call(n, call, &ng_socket, ng_addr).await;
    }
    if let Ok(Some(status)) = child.0.try_wait() {
        println!("rtpengine exited early: {status}");
    }
    Ok(())
}
