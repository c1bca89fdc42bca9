//! The `ringpost` command: `serve` runs the MTA, `check-config` validates and
//! prints the effective configuration.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ringpost", version, about = "A thread-per-core Mail Transfer Agent for high-volume relays")]
struct Cli {
    /// Configuration file (TOML). Without it the embedded default is used.
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    /// Override one key: `--set server.shards=1`, `--set 'server.listen=["127.0.0.1:2600"]'`.
    /// The value is TOML; a bare word is taken as a string.
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    overrides: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the MTA until SIGTERM or SIGINT (then drain and exit).
    Serve,
    /// Validate the configuration and print it with every default filled in.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match ringpost::config::load(cli.config.as_deref(), &cli.overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringpost: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::CheckConfig => {
            print!("{}", config.to_toml());
            ExitCode::SUCCESS
        }
        Command::Serve => serve(config),
    }
}

fn serve(config: ringpost::config::Config) -> ExitCode {
    ringpost::raise_fd_limit();
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // A second signal while draining exits at once.
        let registered = signal_hook::flag::register_conditional_shutdown(signal, 1, stop.clone())
            .and_then(|_| signal_hook::flag::register(signal, stop.clone()));
        if let Err(e) = registered {
            eprintln!("ringpost: cannot install signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    match ringpost::shard::run(Arc::new(config), stop) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            ringpost::log::event("fatal", &[("error", &e)]);
            ExitCode::FAILURE
        }
    }
}
