//! A real Kamailio playing callbridge's SIP carrier in end-to-end tests.
//!
//! callbridge answers its trunk's digest challenges (401 to REGISTER, 407 to INVITE) and
//! registers with it. A scripted trunk written in this crate would only check callbridge
//! against our own reading of RFC 2617/7616 and 3261; Kamailio is what carriers actually run,
//! so its challenges, nonces and verdicts are the ones that count. Each [`Carrier`] is one
//! Kamailio process started by the test on a free loopback port, with its configuration
//! (`sip-tests/kamailio/carrier.cfg`, compiled in), its `db_text` tables, its log and its pid
//! and runtime files in a temporary directory of its own; it is killed when dropped. Never a
//! system service, never a mock.
//!
//! What it does (see the configuration for the why of each part): REGISTER is challenged with
//! 401 (realm: the To domain) and then kept in memory; an initial INVITE is challenged with 407
//! (realm: the From domain), record-routed and relayed to [`CarrierOptions::callee`]; in-dialog
//! requests follow the route set; an OPTIONS with a user part asks whether that user is
//! registered ([`Carrier::is_registered`]), one without is a keepalive answered 200.
//!
//! With [`CarrierOptions::tls`] it also listens on TLS ([`Carrier::tls_addr`]), presenting a
//! certificate for its loopback address signed by a CA made for that carrier alone
//! ([`Carrier::ca_file`]: what callbridge's `tls.ca_file` names to trust it).
//!
//! Kamailio must be installed (Debian packages `kamailio`, and `kamailio-tls-modules` for TLS;
//! `scripts/ensure-tools.sh` installs both). A missing Kamailio fails the test with that
//! advice: these tests do not skip.

use std::fs::File;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sip_core::{ids, Message, ParseLimits};
use tempfile::TempDir;

use crate::tls::TestPki;

/// The configuration template; the harness fills in its `%NAME%` placeholders.
const CONFIG_TEMPLATE: &str = include_str!("../kamailio/carrier.cfg");

/// Where Debian's package puts the binary, for when `/usr/sbin` is not on `PATH`.
const DEBIAN_BINARY: &str = "/usr/sbin/kamailio";

/// How long Kamailio may take to answer its first OPTIONS before the test fails. It usually
/// answers within a few hundred milliseconds; the margin is for a loaded 2-core machine.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// How long a probe waits for Kamailio's answer (it answers locally, in well under this).
const PROBE_WAIT: Duration = Duration::from_secs(5);

/// How long Kamailio may take to stop its workers after SIGTERM before all are killed.
const STOP_WITHIN: Duration = Duration::from_secs(3);

/// Attempts at starting Kamailio when its port was taken between the check and its bind.
const START_ATTEMPTS: usize = 3;

/// The digest algorithm Kamailio puts in its challenges and checks answers with
/// (the `auth` module's `algorithm` parameter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// RFC 2617's MD5, what most carriers still send.
    #[default]
    Md5,
    /// RFC 7616's SHA-256 (RFC 8760 for SIP), which some carriers now require.
    Sha256,
}

impl Algorithm {
    /// The name in the challenge's `algorithm=` parameter and in Kamailio's configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }
}

/// How a test wants its carrier: who the one subscriber is, which challenges it sends, and
/// where it relays calls. Start from [`CarrierOptions::new`] and change fields.
#[derive(Clone, Debug)]
pub struct CarrierOptions {
    /// Where every accepted INVITE is relayed (over UDP): the test's scripted callee.
    pub callee: SocketAddr,
    /// The subscriber's digest username (printable ASCII, no spaces or quotes).
    pub username: String,
    /// The subscriber's password, stored in clear: Kamailio computes HA1 for whatever realm
    /// the request names.
    pub password: String,
    /// The digest algorithm of both challenges (one per carrier, as Kamailio configures it).
    pub algorithm: Algorithm,
    /// Initial INVITEs must carry credentials (407 otherwise). `false` plays a trunk that
    /// trusts its peer by IP address.
    pub challenge_invite: bool,
    /// REGISTERs must carry credentials (401 otherwise). `false` lets anything register.
    pub challenge_register: bool,
    /// Also listen for SIP over TLS, on a port of its own ([`Carrier::tls_addr`]).
    pub tls: bool,
}

impl CarrierOptions {
    /// One subscriber `callbridge`/`trunk-secret`, MD5, REGISTER and INVITE both challenged,
    /// calls relayed to `callee`.
    pub fn new(callee: SocketAddr) -> CarrierOptions {
        CarrierOptions {
            callee,
            username: "callbridge".to_owned(),
            password: "trunk-secret".to_owned(),
            algorithm: Algorithm::Md5,
            challenge_invite: true,
            challenge_register: true,
            tls: false,
        }
    }
}

/// One running Kamailio carrier; stopped (main process and workers) and its directory removed
/// on drop.
pub struct Carrier {
    child: Child,
    addr: SocketAddr,
    /// The TLS listener and the CA its certificate chains to, with `options.tls`.
    tls: Option<(SocketAddr, PathBuf)>,
    log_path: PathBuf,
    options: CarrierOptions,
    /// Kept last: removed only after the process is gone (fields drop after `Drop::drop`).
    dir: TempDir,
}

impl Carrier {
    /// Writes the configuration and tables, starts Kamailio on a free loopback port (UDP and
    /// TCP), and returns once it answers an OPTIONS over UDP and accepts a TCP connection.
    /// Panics, with Kamailio's log, when it is not installed, exits, or is not ready within
    /// 10 s.
    pub async fn start(options: CarrierOptions) -> Carrier {
        let binary = find_kamailio();
        check_credential("username", &options.username);
        check_credential("password", &options.password);
        let mut attempt = 1;
        loop {
            let mut carrier = Carrier::spawn(&binary, options.clone());
            match carrier.wait_ready().await {
                Ok(()) => return carrier,
                // Another process took the port between our check and Kamailio's bind: try
                // another port, a bounded number of times.
                Err(log) if attempt < START_ATTEMPTS && log.contains("Address already in use") => {
                    attempt += 1;
                }
                Err(log) => panic!(
                    "the Kamailio carrier did not start on {} (attempt {attempt}):\n{log}",
                    carrier.addr
                ),
            }
        }
    }

    /// Where the carrier listens, on UDP and TCP alike: callbridge's trunk address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the carrier listens for SIP over TLS; panics when it was started without
    /// [`CarrierOptions::tls`].
    pub fn tls_addr(&self) -> SocketAddr {
        self.tls
            .as_ref()
            .map(|(addr, _)| *addr)
            .expect("the carrier was started without CarrierOptions::tls")
    }

    /// The PEM certificate of the CA that signed the carrier's TLS certificate (for
    /// callbridge's `tls.ca_file`); panics when it was started without TLS.
    pub fn ca_file(&self) -> &Path {
        self.tls
            .as_ref()
            .map(|(_, ca_file)| ca_file.as_path())
            .expect("the carrier was started without CarrierOptions::tls")
    }

    /// The options it was started with (username, password, algorithm, ...).
    pub fn options(&self) -> &CarrierOptions {
        &self.options
    }

    /// Everything Kamailio wrote so far (stdout and stderr: its log, one line per request it
    /// received), for failure messages.
    pub fn log(&self) -> String {
        match std::fs::read(&self.log_path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(error) => format!("(cannot read {}: {error})", self.log_path.display()),
        }
    }

    /// The temporary directory holding the configuration, tables, log and runtime files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether `user` (the user part of an AOR) has a live registration: asks the carrier with
    /// an OPTIONS to `sip:user@carrier`, answered 200 when registered and 404 when not.
    /// Panics on any other answer or none.
    pub async fn is_registered(&self, user: &str) -> bool {
        match self.options_probe(Some(user)).await {
            Ok(200) => true,
            Ok(404) => false,
            Ok(status) => panic!(
                "registration probe for {user}: unexpected {status}\n{}",
                self.log()
            ),
            Err(error) => panic!("registration probe for {user}: {error}\n{}", self.log()),
        }
    }

    /// Writes the directory's files and spawns Kamailio on a port free at this moment.
    fn spawn(binary: &Path, options: CarrierOptions) -> Carrier {
        let dir = tempfile::Builder::new()
            .prefix("carrier-")
            .tempdir()
            .expect("create the carrier's temporary directory");
        let addr = free_port();
        let db_dir = dir.path().join("db");
        let run_dir = dir.path().join("run");
        std::fs::create_dir(&db_dir).expect("create the carrier's db directory");
        std::fs::create_dir(&run_dir).expect("create the carrier's runtime directory");
        write_tables(&db_dir, &options);
        let tls = options.tls.then(|| write_tls(dir.path(), addr.ip()));

        let config = render_config(&options, addr, &db_dir, tls.as_ref());
        let config_path = dir.path().join("carrier.cfg");
        std::fs::write(&config_path, config).expect("write the carrier's configuration");

        let log_path = dir.path().join("kamailio.log");
        let log = File::create(&log_path).expect("create the carrier's log file");
        let log_err = log.try_clone().expect("clone the log file handle");

        let mut command = Command::new(binary);
        command
            .arg("-f")
            .arg(&config_path)
            // Foreground, not daemonised: the harness owns the process and its exit status.
            .arg("-DD")
            // Log to stderr (captured into the log file), not syslog.
            .arg("-E")
            // Runtime files (FIFOs, sockets), pid file and working directory in the temp dir:
            // parallel carriers, and a system Kamailio, never share one.
            .arg("-Y")
            .arg(&run_dir)
            .arg("-P")
            .arg(dir.path().join("kamailio.pid"))
            .arg("-w")
            .arg(dir.path())
            // Small memory pools (MB, shared and per process): a test sends a few messages.
            .args(["-m", "32", "-M", "4"]);
        if options.challenge_invite {
            command.args(["-A", "CHALLENGE_INVITE"]);
        }
        if options.challenge_register {
            command.args(["-A", "CHALLENGE_REGISTER"]);
        }
        if options.tls {
            command.args(["-A", "WITH_TLS"]);
        }
        command
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            // Kamailio stays in the test's process group: a Ctrl-C that ends the test run ends
            // it too (Drop does not run then).
            .stderr(Stdio::from(log_err));
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        Carrier {
            child,
            addr,
            tls: tls.map(|tls| (tls.addr, tls.ca_file)),
            log_path,
            options,
            dir,
        }
    }

    /// Polls (bounded) until Kamailio answers a keepalive OPTIONS over UDP and accepts a TCP
    /// connection (and one on its TLS port); `Err(log)` when it exits or the time is up.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("kamailio exited ({status}):\n{}", self.log()));
            }
            let answered = matches!(
                self.options_probe_within(None, Duration::from_millis(200))
                    .await,
                Ok(200)
            );
            let tls_up = match &self.tls {
                Some((addr, _)) => tokio::net::TcpStream::connect(addr).await.is_ok(),
                None => true,
            };
            if answered && tls_up && tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "kamailio did not answer an OPTIONS within {READY_WITHIN:?}:\n{}",
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn options_probe(&self, user: Option<&str>) -> Result<u16, String> {
        self.options_probe_within(user, PROBE_WAIT).await
    }

    /// Sends one OPTIONS over UDP to the carrier (to `sip:user@addr`, or `sip:addr` without a
    /// user) and returns the final status of its answer. Kamailio answers these itself, so
    /// one datagram and one reply suffice on loopback.
    async fn options_probe_within(
        &self,
        user: Option<&str>,
        wait: Duration,
    ) -> Result<u16, String> {
        let socket = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|e| format!("bind the probe socket: {e}"))?;
        let local = socket
            .local_addr()
            .map_err(|e| format!("probe socket address: {e}"))?;
        let target = match user {
            Some(user) => format!("sip:{user}@{}", self.addr),
            None => format!("sip:{}", self.addr),
        };
        let probe = format!(
            "OPTIONS {target} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch={branch}\r\n\
             From: <sip:probe@{local}>;tag={tag}\r\n\
             To: <{target}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: 1 OPTIONS\r\n\
             Max-Forwards: 70\r\n\
             Content-Length: 0\r\n\r\n",
            branch = ids::new_branch(),
            tag = ids::new_tag(),
            call_id = ids::new_call_id("probe"),
        );
        socket
            .send_to(probe.as_bytes(), self.addr)
            .await
            .map_err(|e| format!("send the probe: {e}"))?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut buf = vec![0u8; 65536];
        loop {
            let (len, _) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf))
                .await
                .map_err(|_| format!("no answer to {target} within {wait:?}"))?
                .map_err(|e| format!("receive the probe's answer: {e}"))?;
            match Message::parse(&buf[..len], &ParseLimits::default()) {
                Ok(Message::Response(response)) if response.status >= 200 => {
                    return Ok(response.status)
                }
                // A provisional answer (none expected) or stray bytes: keep listening.
                Ok(_) | Err(_) => {}
            }
        }
    }
}

impl Drop for Carrier {
    fn drop(&mut self) {
        // SIGTERM to the main process: Kamailio stops its workers and reaps them itself, so
        // none is left holding the port or waiting for init. Nothing else is left behind: its
        // shared memory is anonymous and its files are in the temporary directory, removed
        // next.
        let pid = self.child.id();
        signal(pid, libc::SIGTERM);
        let deadline = Instant::now() + STOP_WITHIN;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        // Stuck: SIGKILL the workers (killing the main process alone would leave them
        // running), then the main process, while it is not yet reaped (so its children are
        // still its own).
        for worker in children(pid) {
            signal(worker, libc::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `signal` to process `pid` (std's `Child::kill` only sends SIGKILL).
pub(crate) fn signal(pid: u32, signal: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) has no memory-safety preconditions. The pids signalled are our
        // unreaped child and its own children, so none can have been reused.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// The children of process `pid` (Kamailio's workers), from `/proc/PID/task/*/children`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|child| child.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// The Kamailio binary: on `PATH`, else where Debian installs it; panics with how to install
/// it when neither exists.
fn find_kamailio() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("kamailio"))
            .find(|candidate| candidate.is_file())
    });
    on_path
        .or_else(|| Some(PathBuf::from(DEBIAN_BINARY)).filter(|p| p.is_file()))
        .unwrap_or_else(|| {
            panic!(
                "kamailio is not installed: the carrier tests need a real Kamailio. Install it \
                 with `apt-get install kamailio` (or run scripts/ensure-tools.sh)"
            )
        })
}

/// A loopback address whose port is free on both UDP and TCP right now. Drawn below the
/// kernel's ephemeral range (see [`crate::ports`]), where the port-0 sockets that tests open
/// by the hundred cannot take it before Kamailio (or the test's dnsmasq, [`crate::dnsmasq`])
/// binds it.
pub(crate) fn free_port() -> SocketAddr {
    for _ in 0..100 {
        let (port, _) = crate::ports::free_range(2);
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        if TcpListener::bind(addr).is_ok() && UdpSocket::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no loopback port free on both UDP and TCP for a test daemon");
}

/// Digest credentials go into a db_text row and a quoted digest parameter: keep them to
/// printable ASCII without spaces, quotes or backslashes, so neither needs escaping beyond
/// db_text's `\:`.
fn check_credential(what: &str, value: &str) {
    assert!(
        !value.is_empty()
            && value
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'),
        "carrier {what} {value:?}: use printable ASCII without spaces, quotes or backslashes"
    );
}

/// The db_text tables auth_db reads: `version` (auth_db refuses a `subscriber` table whose
/// version it does not know; 7 in Kamailio 5.x) and `subscriber`, one row. Only the columns
/// used are declared (db_text answers queries by column name); the domain is empty (null)
/// because lookups ignore it (`use_domain` 0), so the realm can be whatever the request says.
fn write_tables(db_dir: &Path, options: &CarrierOptions) {
    let version = "table_name(str) table_version(int)\nsubscriber:7\n";
    std::fs::write(db_dir.join("version"), version).expect("write the db_text version table");
    let escape = |value: &str| value.replace(':', "\\:");
    let mut subscriber =
        File::create(db_dir.join("subscriber")).expect("create the db_text subscriber table");
    write!(
        subscriber,
        "username(str) domain(str,null) password(str)\n{}::{}\n",
        escape(&options.username),
        escape(&options.password)
    )
    .expect("write the db_text subscriber table");
}

/// What the harness wrote for the carrier's TLS listener.
struct TlsFiles {
    /// The listener: the carrier's IP, a port of its own.
    addr: SocketAddr,
    /// The CA that signed the carrier's certificate (PEM).
    ca_file: PathBuf,
    /// The tls module's configuration file.
    config: PathBuf,
}

/// A CA of this carrier's own, a certificate it signs for `ip`, and the tls module's
/// configuration naming them, all in `dir`.
fn write_tls(dir: &Path, ip: IpAddr) -> TlsFiles {
    let pki = TestPki::new(dir, "carrier", "callbridge test carrier CA");
    let issued = pki.issue(dir, "carrier", &[&ip.to_string()]);
    let path = |p: &Path| {
        let text = p
            .to_str()
            .expect("temporary directory path is UTF-8")
            .to_owned();
        assert!(!text.contains(['"', '\n']), "temporary path has a quote");
        text
    };
    // Kamailio's tls.cfg: one profile for what it accepts, one for what it opens. TLS 1.2 and
    // up, as rustls speaks; no client certificate asked of callbridge, and callbridge's
    // certificate not verified when Kamailio connects to it (what is under test is
    // callbridge's side of TLS, not the carrier's).
    let config = format!(
        "[server:default]\n\
         method = TLSv1.2+\n\
         verify_certificate = no\n\
         require_certificate = no\n\
         certificate = {cert}\n\
         private_key = {key}\n\
         \n\
         [client:default]\n\
         method = TLSv1.2+\n\
         verify_certificate = no\n\
         require_certificate = no\n",
        cert = path(&issued.cert_file),
        key = path(&issued.key_file),
    );
    let config_path = dir.join("tls.cfg");
    std::fs::write(&config_path, config).expect("write the carrier's tls.cfg");
    TlsFiles {
        addr: free_port(),
        ca_file: pki.ca_file().to_owned(),
        config: config_path,
    }
}

/// The configuration template with its placeholders filled; panics if one is left (a
/// placeholder added to the file but not here).
fn render_config(
    options: &CarrierOptions,
    addr: SocketAddr,
    db_dir: &Path,
    tls: Option<&TlsFiles>,
) -> String {
    let db_dir = db_dir.to_str().expect("temporary directory path is UTF-8");
    assert!(
        !db_dir.contains('"'),
        "temporary directory path has a quote"
    );
    // Without TLS the lines naming these are left out by `#!ifdef WITH_TLS`; they are still
    // filled, so that no placeholder is ever left in the text.
    let (tls_port, tls_config) = match tls {
        Some(tls) => (
            tls.addr.port().to_string(),
            tls.config
                .to_str()
                .expect("temporary directory path is UTF-8")
                .to_owned(),
        ),
        None => ("0".to_owned(), String::new()),
    };
    let config = CONFIG_TEMPLATE
        .replace("%LISTEN_IP%", &addr.ip().to_string())
        .replace("%TLS_PORT%", &tls_port)
        .replace("%TLS_CONFIG%", &tls_config)
        .replace("%PORT%", &addr.port().to_string())
        .replace("%DB_DIR%", db_dir)
        .replace("%CALLEE%", &options.callee.to_string())
        .replace("%ALGORITHM%", options.algorithm.as_str());
    // Comments name placeholders too; only what Kamailio reads as configuration counts.
    for line in config.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut parts = line.split('%').skip(1).step_by(2);
        if let Some(name) = parts.find(|name| {
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
        }) {
            panic!("carrier.cfg placeholder %{name}% is not filled in by the harness: {line}");
        }
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_is_filled() {
        let options = CarrierOptions::new("127.0.0.1:5099".parse().unwrap());
        let config = render_config(
            &options,
            "127.0.0.1:15060".parse().unwrap(),
            Path::new("/tmp/x/db"),
            None,
        );
        for line in config.lines().filter(|l| !l.trim_start().starts_with('#')) {
            assert!(!line.contains('%'), "unfilled: {line}");
        }
        assert!(config.contains("listen=udp:127.0.0.1:15060"));
        assert!(config.contains("listen=tcp:127.0.0.1:15060"));
        assert!(config.contains(r#"$du = "sip:127.0.0.1:5099;transport=udp";"#));
        assert!(config.contains(r#"modparam("auth", "algorithm", "MD5")"#));
    }
}
