//! A real dnsmasq serving a test zone on loopback, for the trunk's RFC 3263 resolution
//! (callbridge's `trunk_dns`, `dns.servers`).
//!
//! Why a real DNS server: the resolution goes through hickory-resolver's wire protocol, cache
//! and TTL handling, and only a server that speaks DNS exercises them; dnsmasq (Debian package
//! `dnsmasq-base`) serves NAPTR, SRV and address records from its command line, with a TTL of
//! our choosing, and starts in milliseconds. Each [`Dnsmasq`] is one process started by the
//! test on a free loopback port (UDP and TCP), with no upstream, no `/etc/hosts`, no
//! configuration file and its log in a temporary directory of its own; it is stopped when
//! dropped. Names of the zone it was not given answer NXDOMAIN (`--local`), never a lookup
//! elsewhere.
//!
//! dnsmasq must be installed (`scripts/ensure-tools.sh` installs it). A missing dnsmasq fails
//! the test with that advice: these tests do not skip.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::carrier::{free_port, signal};

/// Where Debian's package puts the binary, for when `/usr/sbin` is not on `PATH`.
const DEBIAN_BINARY: &str = "/usr/sbin/dnsmasq";

/// How long dnsmasq may take to answer its first query before the test fails (it answers
/// within milliseconds; the margin is for a loaded 2-core machine).
const READY_WITHIN: Duration = Duration::from_secs(10);

/// How long dnsmasq may take to exit after SIGTERM before it is killed.
const STOP_WITHIN: Duration = Duration::from_secs(2);

/// Attempts at starting dnsmasq when its port was taken between the check and its bind.
const START_ATTEMPTS: usize = 3;

/// A NAPTR record (RFC 3403; flag `s`, no regexp: what RFC 3263 reads).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NaptrRecord {
    pub name: String,
    pub order: u16,
    pub preference: u16,
    /// `SIP+D2U`, `SIP+D2T`, `SIPS+D2T`, ...
    pub service: String,
    /// The SRV name, e.g. `_sip._udp.carrier.test`.
    pub replacement: String,
}

/// An SRV record (RFC 2782).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvRecord {
    /// The owner name, e.g. `_sip._udp.carrier.test`.
    pub name: String,
    pub target: String,
    pub port: u16,
    pub priority: u16,
    pub weight: u16,
}

/// What a [`Dnsmasq`] serves: records under one zone, all with the same TTL. Exists so that
/// a test states its zone as data, and can restart the server with another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsRecords {
    /// The zone (e.g. `test`): every name must be inside it, and every other name in it
    /// answers NXDOMAIN.
    pub zone: String,
    /// The TTL of every answer, in seconds (`--local-ttl`).
    pub ttl_secs: u32,
    pub naptr: Vec<NaptrRecord>,
    pub srv: Vec<SrvRecord>,
    /// Address records (A or AAAA by the address).
    pub hosts: Vec<(String, IpAddr)>,
}

impl DnsRecords {
    /// No records in `zone`, TTL 1 s.
    pub fn new(zone: &str) -> DnsRecords {
        DnsRecords {
            zone: zone.to_owned(),
            ttl_secs: 1,
            naptr: Vec::new(),
            srv: Vec::new(),
            hosts: Vec::new(),
        }
    }

    pub fn ttl(mut self, secs: u32) -> DnsRecords {
        self.ttl_secs = secs;
        self
    }

    pub fn naptr(
        mut self,
        name: &str,
        order: u16,
        preference: u16,
        service: &str,
        replacement: &str,
    ) -> DnsRecords {
        self.naptr.push(NaptrRecord {
            name: name.to_owned(),
            order,
            preference,
            service: service.to_owned(),
            replacement: replacement.to_owned(),
        });
        self
    }

    pub fn srv(
        mut self,
        name: &str,
        target: &str,
        port: u16,
        priority: u16,
        weight: u16,
    ) -> DnsRecords {
        self.srv.push(SrvRecord {
            name: name.to_owned(),
            target: target.to_owned(),
            port,
            priority,
            weight,
        });
        self
    }

    pub fn host(mut self, name: &str, ip: IpAddr) -> DnsRecords {
        self.hosts.push((name.to_owned(), ip));
        self
    }

    /// dnsmasq's options for these records. Panics on a name outside the zone or with a
    /// character dnsmasq's comma-separated options cannot carry.
    fn args(&self) -> Vec<String> {
        let zone = self.zone.as_str();
        check_name(zone, zone);
        let mut args = vec![
            format!("--local=/{zone}/"),
            format!("--local-ttl={}", self.ttl_secs),
        ];
        for r in &self.naptr {
            check_name(&r.name, zone);
            check_name(&r.replacement, zone);
            assert!(
                r.service
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'+'),
                "NAPTR service {:?}",
                r.service
            );
            // name,order,preference,flags,service,regexp,replacement
            args.push(format!(
                "--naptr-record={},{},{},s,{},,{}",
                r.name, r.order, r.preference, r.service, r.replacement
            ));
        }
        for r in &self.srv {
            check_name(&r.name, zone);
            check_name(&r.target, zone);
            args.push(format!(
                "--srv-host={},{},{},{},{}",
                r.name, r.target, r.port, r.priority, r.weight
            ));
        }
        for (name, ip) in &self.hosts {
            check_name(name, zone);
            args.push(format!("--host-record={name},{ip}"));
        }
        args
    }
}

/// Letters, digits, `-`, `_` and dots, inside `zone`: nothing dnsmasq would read as a
/// separator, and no name that would be looked up outside the server's own zone.
fn check_name(name: &str, zone: &str) {
    assert!(
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && (name == zone || name.ends_with(&format!(".{zone}"))),
        "DNS name {name:?}: use letters, digits, '-', '_' and '.', inside the zone {zone:?}"
    );
}

/// One running dnsmasq; stopped and its directory removed on drop.
pub struct Dnsmasq {
    child: Child,
    addr: SocketAddr,
    log_path: PathBuf,
    records: DnsRecords,
    /// Kept last: removed only after the process is gone (fields drop after `Drop::drop`).
    dir: TempDir,
}

impl Dnsmasq {
    /// Starts dnsmasq on a free loopback port serving `records`, and returns once it answers
    /// a query. Panics, with its log, when it is not installed, exits, or is not ready
    /// within 10 s.
    pub async fn start(records: DnsRecords) -> Dnsmasq {
        let binary = find_dnsmasq();
        let mut dir = tempfile::Builder::new()
            .prefix("dnsmasq-")
            .tempdir()
            .expect("create dnsmasq's temporary directory");
        let mut attempt = 1;
        loop {
            let addr = free_port();
            let log_path = dir.path().join(format!("dnsmasq-{attempt}.log"));
            let child = spawn(&binary, addr, &records, &log_path);
            let mut server = Dnsmasq {
                child,
                addr,
                log_path,
                records: records.clone(),
                dir,
            };
            match server.wait_ready().await {
                Ok(()) => return server,
                // Another process took the port between our check and dnsmasq's bind: try
                // another port, a bounded number of times.
                Err(log) if attempt < START_ATTEMPTS && log.contains("in use") => {
                    attempt += 1;
                    dir = server.stop_and_take_dir();
                }
                Err(log) => panic!("dnsmasq did not start on {addr} (attempt {attempt}):\n{log}"),
            }
        }
    }

    /// Stops the server and starts it again on the same port with `records` (dnsmasq reads
    /// its records only at start). Panics as [`Dnsmasq::start`] does.
    pub async fn restart(&mut self, records: DnsRecords) {
        self.stop();
        let binary = find_dnsmasq();
        let deadline = Instant::now() + READY_WITHIN;
        let mut round = 0;
        loop {
            round += 1;
            self.log_path = self.dir.path().join(format!("dnsmasq-restart-{round}.log"));
            self.child = spawn(&binary, self.addr, &records, &self.log_path);
            self.records = records.clone();
            match self.wait_ready().await {
                Ok(()) => return,
                // The port is ours, but the old process's sockets may not be closed yet.
                Err(log) if Instant::now() < deadline && log.contains("in use") => {
                    self.stop();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(log) => panic!("dnsmasq did not restart on {}:\n{log}", self.addr),
            }
        }
    }

    /// Where it answers, on UDP and TCP.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The records it serves.
    pub fn records(&self) -> &DnsRecords {
        &self.records
    }

    /// Everything it logged since its last start (one line per query, `--log-queries`), for
    /// failure messages.
    pub fn log(&self) -> String {
        match std::fs::read(&self.log_path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(error) => format!("(cannot read {}: {error})", self.log_path.display()),
        }
    }

    /// The temporary directory holding its logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Polls (bounded) until it answers a query over UDP; `Err(log)` when it exits or the
    /// time is up.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("dnsmasq exited ({status}):\n{}", self.log()));
            }
            if answers(self.addr, &self.records.zone).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "dnsmasq did not answer within {READY_WITHIN:?}:\n{}",
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then SIGKILL after [`STOP_WITHIN`]; reaped either way.
    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + STOP_WITHIN;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops a server that did not start, keeping its directory for the next attempt.
    fn stop_and_take_dir(mut self) -> TempDir {
        self.stop();
        let placeholder = tempfile::Builder::new()
            .prefix("dnsmasq-")
            .tempdir()
            .expect("create a temporary directory");
        std::mem::replace(&mut self.dir, placeholder)
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Spawns dnsmasq on `addr` serving `records`, its output to `log_path`.
fn spawn(binary: &Path, addr: SocketAddr, records: &DnsRecords, log_path: &Path) -> Child {
    let log = File::create(log_path).expect("create dnsmasq's log file");
    let log_err = log.try_clone().expect("clone the log file handle");
    let mut command = Command::new(binary);
    command
        // Foreground, not daemonised: the harness owns the process and its exit status.
        // (Debug mode also keeps the user it was started as: root or not, it needs no other.)
        .arg("--no-daemon")
        // Only the records given here: no /etc/resolv.conf upstreams, no /etc/hosts, no
        // /etc/dnsmasq.conf, no DHCP, no pid file.
        .arg("--no-resolv")
        .arg("--no-hosts")
        .arg("--conf-file=/dev/null")
        .arg("--pid-file=")
        // The loopback address only, bound as such: it never answers on another interface,
        // and another dnsmasq (a system one) on port 53 of another address does not collide.
        .arg("--bind-interfaces")
        .arg(format!("--listen-address={}", addr.ip()))
        .arg(format!("--port={}", addr.port()))
        // Log to stderr (captured into the log file), not syslog; every query, for failures.
        .arg("--log-facility=-")
        .arg("--log-queries")
        .args(records.args())
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        // dnsmasq stays in the test's process group: a Ctrl-C that ends the test run ends it
        // too (Drop does not run then).
        .stderr(Stdio::from(log_err));
    command
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()))
}

/// Whether a DNS server at `addr` answers a query (any answer) for `name` within 200 ms.
async fn answers(addr: SocketAddr, name: &str) -> bool {
    let Ok(socket) = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await else {
        return false;
    };
    let id: u16 = rand::random();
    if socket.send_to(&query(id, name), addr).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
    while let Ok(Ok((len, _))) = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await
    {
        if len >= 12 && buf[..2] == id.to_be_bytes() && buf[2] & 0x80 != 0 {
            return true;
        }
    }
    false
}

/// A DNS query (RFC 1035 §4.1) for the A records of `name`: header, one question.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut message = Vec::with_capacity(64);
    message.extend_from_slice(&id.to_be_bytes());
    // Flags: a standard query, recursion desired; one question.
    message.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        let len = u8::try_from(label.len()).expect("DNS label of at most 63 bytes");
        message.push(len);
        message.extend_from_slice(label.as_bytes());
    }
    // The root, QTYPE A, QCLASS IN.
    message.extend_from_slice(&[0, 0, 1, 0, 1]);
    message
}

/// The dnsmasq binary: on `PATH`, else where Debian installs it; panics with how to install
/// it when neither exists.
fn find_dnsmasq() -> PathBuf {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("dnsmasq"))
            .find(|candidate| candidate.is_file())
    });
    on_path
        .or_else(|| Some(PathBuf::from(DEBIAN_BINARY)).filter(|p| p.is_file()))
        .unwrap_or_else(|| {
            panic!(
                "dnsmasq is not installed: the trunk DNS tests need a real DNS server. Install \
                 it with `apt-get install dnsmasq-base` (or run scripts/ensure-tools.sh)"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_become_dnsmasq_options() {
        let records = DnsRecords::new("test")
            .ttl(2)
            .naptr("carrier.test", 10, 50, "SIP+D2U", "_sip._udp.carrier.test")
            .srv("_sip._udp.carrier.test", "a.carrier.test", 5070, 10, 1)
            .host("a.carrier.test", "127.0.0.2".parse().unwrap());
        assert_eq!(
            records.args(),
            [
                "--local=/test/",
                "--local-ttl=2",
                "--naptr-record=carrier.test,10,50,s,SIP+D2U,,_sip._udp.carrier.test",
                "--srv-host=_sip._udp.carrier.test,a.carrier.test,5070,10,1",
                "--host-record=a.carrier.test,127.0.0.2",
            ]
        );
    }

    #[test]
    #[should_panic(expected = "inside the zone")]
    fn names_outside_the_zone_are_refused() {
        DnsRecords::new("test")
            .host("carrier.example", "127.0.0.2".parse().unwrap())
            .args();
    }

    #[test]
    fn queries_are_well_formed() {
        let q = query(0x1234, "carrier.test.");
        assert_eq!(&q[..4], &[0x12, 0x34, 0x01, 0x00]);
        assert_eq!(&q[12..], b"\x07carrier\x04test\x00\x00\x01\x00\x01");
    }
}
