//! The `callbridge` binary: command line, configuration, logging, wiring and signals.

mod config;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use config::Config;

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

fn main() -> ExitCode {
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
    eprintln!("callbridge: configuration loaded; the server wiring lands with the transport");
    ExitCode::SUCCESS
}
