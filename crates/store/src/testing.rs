//! A throwaway PostgreSQL server for tests (feature `testing`): the store's own tests run
//! every scenario against it as well as against SQLite, and other crates' tests (sip-tests)
//! can do the same.
//!
//! [`PgServer::start`] runs Debian's `initdb` and `pg_ctl start` from
//! `/usr/lib/postgresql/<version>/bin` (or `$CALLBRIDGE_PG_BIN`) on a data directory in a
//! fresh temporary directory, listening on `127.0.0.1` at a free port, with `fsync` off (a
//! test server loses nothing that matters). PostgreSQL refuses to run as root, so as root the
//! commands run as the `postgres` user (`runuser`). Dropping the server stops it
//! (`pg_ctl stop -m immediate`) and removes its directory; a watchdog shell does the same when
//! the test process ends without dropping it (the [`shared`] server of a test binary, a
//! panic, a kill).
//!
//! [`require`] is what a test calls: the shared server, or `None` when `CALLBRIDGE_SKIP_PG=1`
//! says to leave PostgreSQL out. Without PostgreSQL installed, it panics with a message that
//! says how to install it: a missing database must fail a test run, not skip it silently.
//!
//! Each [`TestDatabase`] is a new database on the server, created with a linguistic (ICU
//! `en-US`) default collation where the server supports it, so that the store's own byte
//! order (`COLLATE "C"`) is what the tests see, not the test server's locale.

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::{env, fs, process, thread};

use parking_lot::Mutex;

/// Set to `1` to run the tests without PostgreSQL (their SQLite half only).
pub const SKIP_ENV: &str = "CALLBRIDGE_SKIP_PG";

/// A directory holding `initdb` and `pg_ctl`, to use instead of Debian's.
pub const BIN_ENV: &str = "CALLBRIDGE_PG_BIN";

/// Why a test server could not be started or used.
#[derive(Debug, thiserror::Error)]
pub enum PgServerError {
    /// No PostgreSQL server binaries were found.
    #[error(
        "PostgreSQL is not installed (no initdb in /usr/lib/postgresql/*/bin nor in ${BIN_ENV}): \
         install Debian's postgresql package (apt-get install -y postgresql, which \
         scripts/ensure-tools.sh does), or set {SKIP_ENV}=1 to leave the PostgreSQL tests out"
    )]
    NotInstalled,
    /// A command failed.
    #[error("{command} failed: {detail}")]
    Command {
        /// The command, shortened.
        command: String,
        /// Its exit status and output.
        detail: String,
    },
    /// A file or process operation failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The server refused a statement or a connection.
    #[error("{0}")]
    Postgres(#[from] postgres::Error),
}

/// A PostgreSQL server of its own for a test run: see the module's doc.
pub struct PgServer {
    bin: PathBuf,
    base: PathBuf,
    port: u16,
    /// `Some("postgres")` when running as root.
    run_as: Option<String>,
    watchdog: Mutex<Option<Child>>,
    databases: AtomicU32,
}

impl PgServer {
    /// Initialises and starts a new server (a second or two).
    pub fn start() -> Result<PgServer, PgServerError> {
        static SERVERS: AtomicU32 = AtomicU32::new(0);
        let bin = find_bin()?;
        let base = env::temp_dir().join(format!(
            "callbridge-pg-{}-{}",
            process::id(),
            SERVERS.fetch_add(1, Ordering::Relaxed)
        ));
        if base.exists() {
            fs::remove_dir_all(&base)?;
        }
        fs::create_dir(&base)?;
        let run_as = if fs::metadata(&base)?.uid() == 0 {
            let uid = id_of("-u")?;
            let gid = id_of("-g")?;
            std::os::unix::fs::chown(&base, Some(uid), Some(gid))?;
            Some("postgres".to_owned())
        } else {
            None
        };
        let port = free_port()?;
        let server = PgServer {
            bin,
            base,
            port,
            run_as,
            watchdog: Mutex::new(None),
            databases: AtomicU32::new(0),
        };
        server.spawn_watchdog()?;
        let data = server.data();
        server.pg(
            "initdb",
            &[
                "-D",
                path_str(&data)?,
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )?;
        server.start_again()?;
        Ok(server)
    }

    /// The port the server listens on (`127.0.0.1`).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of `database` on this server, as user `postgres` (no password: `trust`).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// A new, empty database (see [`TestDatabase`]).
    pub fn create_database(&self) -> Result<TestDatabase, PgServerError> {
        let name = format!("test_{}", self.databases.fetch_add(1, Ordering::Relaxed));
        let admin = self.url("postgres");
        let (create_admin, create_name) = (admin.clone(), name.clone());
        // A thread of its own: the client may not run on a tokio worker thread.
        run_off_thread(move || {
            let mut client = postgres::Client::connect(&create_admin, postgres::NoTls)?;
            let icu = format!(
                "CREATE DATABASE {create_name} TEMPLATE template0 \
                 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
            );
            if client.batch_execute(&icu).is_err() {
                // A server built without ICU: the initdb locale (C) it is.
                client.batch_execute(&format!("CREATE DATABASE {create_name}"))?;
            }
            Ok(())
        })?;
        Ok(TestDatabase {
            url: self.url(&name),
            admin,
            name,
        })
    }

    /// Stops the server (`pg_ctl stop -m fast`: sessions are ended, the server shuts down
    /// cleanly), e.g. to see how a store behaves while its database is down.
    pub fn stop_fast(&self) -> Result<(), PgServerError> {
        let data = self.data();
        self.pg(
            "pg_ctl",
            &["-D", path_str(&data)?, "-w", "-m", "fast", "stop"],
        )
        .map(drop)
    }

    /// Starts the (stopped) server again on the same port and data.
    pub fn start_again(&self) -> Result<(), PgServerError> {
        let data = self.data();
        let log = self.base.join("server.log");
        let options = format!(
            "-k {} -p {} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=300",
            path_str(&self.base)?,
            self.port
        );
        self.pg(
            "pg_ctl",
            &[
                "-D",
                path_str(&data)?,
                "-l",
                path_str(&log)?,
                "-w",
                "-t",
                "60",
                "-o",
                &options,
                "start",
            ],
        )
        .map(drop)
    }

    fn data(&self) -> PathBuf {
        self.base.join("data")
    }

    /// Runs the server binary `program` (as `postgres` when root).
    fn pg(&self, program: &str, args: &[&str]) -> Result<Output, PgServerError> {
        let path = self.bin.join(program);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(&path);
                command
            }
            None => Command::new(&path),
        };
        command
            .args(args)
            .stdin(Stdio::null())
            .current_dir(&self.base);
        let output = command.output()?;
        if !output.status.success() {
            return Err(PgServerError::Command {
                command: format!("{program} {}", args.first().copied().unwrap_or_default()),
                detail: format!(
                    "{}: {}{}",
                    output.status,
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            });
        }
        Ok(output)
    }

    /// A shell that waits for this process to end, then stops the server and removes its
    /// directory: the cleanup of a server never dropped.
    fn spawn_watchdog(&self) -> Result<(), PgServerError> {
        const SCRIPT: &str = r#"pid=$1; pg_ctl=$2; data=$3; base=$4; user=$5
while kill -0 "$pid" 2>/dev/null; do sleep 0.5; done
if [ -n "$user" ]; then
    runuser -u "$user" -- "$pg_ctl" -D "$data" -m immediate stop
else
    "$pg_ctl" -D "$data" -m immediate stop
fi >/dev/null 2>&1
rm -rf "$base""#;
        let child = Command::new("sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("watchdog")
            .arg(process::id().to_string())
            .arg(self.bin.join("pg_ctl"))
            .arg(self.data())
            .arg(&self.base)
            .arg(self.run_as.as_deref().unwrap_or_default())
            // Nothing of the test's output pipes: a runner waits for them to close.
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        *self.watchdog.lock() = Some(child);
        Ok(())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.get_mut().take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        if let Ok(data) = path_str(&self.data()) {
            let _ = self.pg("pg_ctl", &["-D", data, "-m", "immediate", "stop"]);
        }
        let _ = fs::remove_dir_all(&self.base);
    }
}

/// A database of its own on a [`PgServer`], dropped (with its sessions) when this is.
pub struct TestDatabase {
    url: String,
    admin: String,
    name: String,
}

impl TestDatabase {
    /// Its URL, for [`PostgresStore::open`](crate::PostgresStore::open).
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Best effort: a stopped server keeps it, and goes away with its directory.
        let _ = run_off_thread(move || {
            let mut client = postgres::Client::connect(&admin, postgres::NoTls)?;
            client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))?;
            Ok(())
        });
    }
}

/// The test binary's one server, started on first use and stopped by its watchdog when the
/// process ends.
pub fn shared() -> Result<&'static PgServer, String> {
    static SHARED: OnceLock<Result<PgServer, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| PgServer::start().map_err(|error| error.to_string()))
        .as_ref()
        .map_err(Clone::clone)
}

/// Whether `CALLBRIDGE_SKIP_PG=1` leaves PostgreSQL out.
pub fn skipped() -> bool {
    env::var(SKIP_ENV).is_ok_and(|value| value == "1")
}

/// The shared server, or `None` when [`SKIP_ENV`] is `1`.
///
/// # Panics
///
/// When the server cannot be started (PostgreSQL not installed, ...): the message says why
/// and how to install it or skip it.
pub fn require() -> Option<&'static PgServer> {
    if skipped() {
        return None;
    }
    match shared() {
        Ok(server) => Some(server),
        Err(error) => panic!("the PostgreSQL tests need a PostgreSQL server: {error}"),
    }
}

/// Runs `f` on a thread of its own and waits for it: rust-postgres's blocking client must not
/// run on a tokio worker thread, where a `#[tokio::test]` may call this module.
fn run_off_thread(
    f: impl FnOnce() -> Result<(), PgServerError> + Send + 'static,
) -> Result<(), PgServerError> {
    thread::spawn(f).join().unwrap_or_else(|_| {
        Err(PgServerError::Command {
            command: "postgres client".to_owned(),
            detail: "its thread panicked".to_owned(),
        })
    })
}

/// The newest `/usr/lib/postgresql/<version>/bin` with an `initdb`, or `$CALLBRIDGE_PG_BIN`.
fn find_bin() -> Result<PathBuf, PgServerError> {
    if let Some(dir) = env::var_os(BIN_ENV) {
        let dir = PathBuf::from(dir);
        return if dir.join("initdb").is_file() {
            Ok(dir)
        } else {
            Err(PgServerError::NotInstalled)
        };
    }
    let root = Path::new("/usr/lib/postgresql");
    let Ok(entries) = fs::read_dir(root) else {
        return Err(PgServerError::NotInstalled);
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version)
        .map(|(_, bin)| bin)
        .ok_or(PgServerError::NotInstalled)
}

/// The `postgres` user's uid (`-u`) or gid (`-g`).
fn id_of(flag: &str) -> Result<u32, PgServerError> {
    let output = Command::new("id").args([flag, "postgres"]).output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim().parse().map_err(|_| PgServerError::Command {
        command: format!("id {flag} postgres"),
        detail: format!(
            "{}: no postgres user? {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ),
    })
}

/// A TCP port free on 127.0.0.1 right now.
fn free_port() -> Result<u16, PgServerError> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn path_str(path: &Path) -> Result<&str, PgServerError> {
    path.to_str().ok_or_else(|| PgServerError::Command {
        command: "path".to_owned(),
        detail: format!("{} is not UTF-8", path.display()),
    })
}
