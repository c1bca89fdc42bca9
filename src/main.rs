//! The `ringpost` command: `serve` runs the MTA, `check-config` validates and
//! prints the effective configuration, `queue` shows what the spool holds.

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
    /// Look at the queue (works on a running or stopped spool; reads only).
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Every live message with its pending recipients, like mailq.
    List,
    /// One message's whole envelope.
    Show {
        /// The queue id (16 hex digits, as in the 250 reply and the logs).
        id: String,
    },
    /// Segments, live messages and body files per shard.
    Stats,
    /// Decode a segment file record by record.
    Dump {
        /// A segment file (`head-….seg`, `retry-….seg`).
        segment: PathBuf,
    },
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
        Command::Queue { command } => queue(&config, command),
    }
}

fn queue(config: &ringpost::config::Config, command: QueueCommand) -> ExitCode {
    use ringpost::queue::tools;
    let result = match command {
        QueueCommand::List => tools::list(config),
        QueueCommand::Stats => tools::stats(config),
        QueueCommand::Dump { segment } => tools::dump(&segment),
        QueueCommand::Show { id } => match tools::show(config, &id) {
            Ok(Some(text)) => Ok(text),
            Ok(None) => {
                eprintln!("ringpost: {id}: no such message in the queue");
                return ExitCode::from(1);
            }
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringpost: {e}");
            ExitCode::from(1)
        }
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
