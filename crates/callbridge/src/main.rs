//! The `callbridge` binary: command line, configuration, logging, wiring and signals.

use std::path::PathBuf;
use std::process::ExitCode;

use callbridge::config::Config;
use clap::Parser;

mod log_writer;

/// callbridge: a SIP B2BUA with a built-in HTTP API that bridges a phone's call to the target
/// it registered with `makecall`, showing the target only the dedicated number.
///
/// Configuration comes from built-in defaults, then `--config FILE` (TOML), then environment
/// variables `CALLBRIDGE_<SECTION>_<KEY>` (e.g. `CALLBRIDGE_SIP_LISTEN=0.0.0.0:5060`), then
/// `--set section.key=value`, each overriding the one before.
#[derive(Debug, Parser)]
#[command(name = "callbridge", version)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Overrides one key, e.g. `--set sip.listen=127.0.0.1:5070` (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    overrides: Vec<String>,

    /// Prints the effective configuration as TOML and exits.
    #[arg(long)]
    print_config: bool,
}

/// See the comment on the dependency in Cargo.toml: memory freed after a burst goes back to the
/// kernel instead of staying resident as fragments of glibc's heap.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    abort_on_panic();
    // Purging of freed pages happens in jemalloc's own thread, on time, rather than only when
    // some thread next allocates (a bridged call's relay allocates nothing, so a quiet process
    // would otherwise keep the pages of a past burst).
    let purge_thread = tikv_jemalloc_ctl::background_thread::write(true);
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref(), std::env::vars(), &cli.overrides) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("callbridge: {error}");
            return ExitCode::from(2);
        }
    };
    if cli.print_config {
        match toml::to_string_pretty(&config) {
            Ok(text) => {
                print!("{text}");
                return ExitCode::SUCCESS;
            }
            Err(error) => {
                eprintln!("callbridge: cannot print configuration: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
    // Held until main returns: dropping it flushes the log lines still queued.
    let _log_flush = init_logging(&config);
    if let Err(error) = purge_thread {
        tracing::warn!(%error, "jemalloc background thread not started; freed memory is returned later");
    }
    raise_open_file_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("callbridge: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> ExitCode {
    let running = match callbridge::start(&config).await {
        Ok(running) => running,
        Err(error) => {
            tracing::error!(%error, "cannot start");
            eprintln!("callbridge: {error}");
            return ExitCode::FAILURE;
        }
    };
    running.status.set_heap_probe(heap_stats);
    wait_for_signal().await;
    tracing::info!("signal received; shutting down");
    running.shutdown();
    running.join().await;
    ExitCode::SUCCESS
}

/// jemalloc's totals for `/metrics` (`callbridge_heap_bytes`). Its statistics are a snapshot
/// refreshed by advancing the epoch, so each scrape advances it first.
fn heap_stats() -> Option<api::HeapStats> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    let read = |value: Result<usize, tikv_jemalloc_ctl::Error>| value.ok().map(|v| v as u64);
    Some(api::HeapStats {
        allocated: read(stats::allocated::read())?,
        active: read(stats::active::read())?,
        resident: read(stats::resident::read())?,
        retained: read(stats::retained::read())?,
    })
}

/// A panic in any thread or task ends the process, after the default message (with the
/// panicking thread and location) is printed. Without it tokio would catch the panic of the SIP
/// task, and the process would go on with its HTTP side saying OK and no SIP at all; a
/// supervisor (deploy/callbridge.service, `Restart=always`) brings a dead process back.
fn abort_on_panic() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        eprintln!("callbridge: aborting after a panic");
        std::process::abort();
    }));
}

/// SIGINT (Ctrl-C) or SIGTERM (what service managers and `docker stop` send).
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Every relay port is a socket: raise the soft open-file limit to the hard one so that the
/// whole `media.rtp_ports` range fits (1024, the usual soft default, would stop at ~250 calls).
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(error) => tracing::warn!(%error, "could not raise the open-file limit"),
    }
}

/// Structured logs to stderr: `log.format = "json"` for machines, `"text"` for people;
/// `log.filter` (or `RUST_LOG`) chooses what is logged. Every call's lines carry its callid.
/// Log lines are written by a background thread ([`log_writer`]), so a burst of calls never
/// waits on stderr; if 16 MiB of lines are waiting, further lines are dropped (and counted)
/// rather than slowing calls down.
fn init_logging(config: &Config) -> log_writer::FlushGuard {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(&config.log.filter).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let (writer, guard) = log_writer::spawn(std::io::stderr());
    let on_panic = writer.clone();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        on_panic.flush_now();
        default_hook(info);
    }));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    guard
}
