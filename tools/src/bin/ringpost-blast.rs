//! `ringpost-blast`: an SMTP load generator for measuring MTAs.
//!
//! Runs many concurrent SMTP sessions on glommio executors against one
//! server, sends a fixed number of messages or runs for a duration, and
//! reports throughput, the latency of the final reply (HDR histogram, in
//! microseconds) and reply codes per protocol stage. With `--tag` and
//! `--log-accepted` it records exactly which messages the server accepted,
//! so a crash test can compare them with what arrived downstream.

use clap::Parser;
use ringpost_tools::blast::{self, BlastConfig};
use ringpost_tools::dist::{parse_duration, Dist};
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::time::Duration;

/// SMTP load generator: many concurrent sessions, per-message latency of
/// the final reply, reply codes per stage.
///
/// Sizes and recipient counts take a fixed value (`--size 1024`, `--size 4k`)
/// or a weighted list (`--size 1k:80,100k:20`: 80 % 1 KiB, 20 % 100 KiB).
#[derive(Parser, Debug)]
#[command(name = "ringpost-blast", version)]
struct Args {
    /// Server address, host:port.
    #[arg(default_value = "127.0.0.1:25")]
    server: String,
    /// Messages to attempt; the default is 1000 unless --duration is given.
    #[arg(short = 'n', long)]
    count: Option<u64>,
    /// Run for this long instead of a count (e.g. 10s, 500ms, 2m).
    #[arg(short = 'd', long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Concurrent SMTP sessions.
    #[arg(short = 'c', long, default_value_t = 50)]
    connections: u64,
    /// Messages per connection before QUIT; 1 = a new connection per
    /// message, 0 = reuse each connection until the run ends.
    #[arg(short = 'm', long, default_value_t = 0)]
    messages_per_connection: u64,
    /// Message size in bytes, fixed or weighted (1k:80,100k:20).
    #[arg(short = 's', long, default_value = "1k")]
    size: Dist,
    /// Recipients per message, fixed or weighted (1:90,5:10).
    #[arg(short = 'r', long, default_value = "1")]
    recipients: Dist,
    /// Send MAIL, RCPTs and DATA in one write when the server offers PIPELINING.
    #[arg(long, default_value = "on", value_parser = on_off, action = clap::ArgAction::Set, value_name = "on|off")]
    pipelining: bool,
    /// Open loop: start messages at this many per second (closed loop, as
    /// fast as the sessions allow, when absent).
    #[arg(long)]
    rate: Option<f64>,
    /// Executor threads the sessions are spread over.
    #[arg(short = 't', long, default_value_t = 1)]
    threads: usize,
    /// Put `<run-id>.<n>` in the Message-ID and an X-Blast-Id header.
    #[arg(long)]
    tag: bool,
    /// Run id for --tag (default: random).
    #[arg(long)]
    run_id: Option<String>,
    /// Write the id of every message answered 250 after the final dot to
    /// FILE, one per line (implies --tag).
    #[arg(long, value_name = "FILE")]
    log_accepted: Option<PathBuf>,
    /// Envelope sender and From: address.
    #[arg(long, default_value = "blast@example.org")]
    from: String,
    /// Recipient address; `{n}` is replaced by a number modulo --to-count.
    #[arg(long, default_value = "user{n}@example.net")]
    to: String,
    /// Distinct recipients the `{n}` in --to cycles through.
    #[arg(long, default_value_t = 1000)]
    to_count: u64,
    /// Name sent in EHLO/HELO.
    #[arg(long, default_value = "blast.example.org")]
    helo: String,
    /// Timeout for connecting and for each reply.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
    /// Seed for message sizes and recipient counts.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the report as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "yes" | "true" | "1" => Ok(true),
        "off" | "no" | "false" | "0" => Ok(false),
        _ => Err(format!("expected on or off, got {s:?}")),
    }
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("ringpost-blast: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), String> {
    let server = args
        .server
        .to_socket_addrs()
        .map_err(|e| format!("{}: {e}", args.server))?
        .next()
        .ok_or_else(|| format!("{}: no address", args.server))?;
    if args.connections == 0 || args.threads == 0 {
        return Err("--connections and --threads must be at least 1".into());
    }
    if let Some(rate) = args.rate {
        if !(rate > 0.0 && rate.is_finite()) {
            return Err("--rate must be positive".into());
        }
    }
    let count = match (args.count, args.duration) {
        (None, None) => Some(1000),
        (c, _) => c,
    };
    let nofile = ringpost_tools::sys::raise_nofile_limit().map_err(|e| format!("RLIMIT_NOFILE: {e}"))?;
    if nofile < args.connections + 64 {
        eprintln!(
            "ringpost-blast: warning: open-file limit {nofile} is below --connections {}",
            args.connections
        );
    }
    let log_accepted = match &args.log_accepted {
        Some(p) => Some(std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => None,
    };
    let config = BlastConfig {
        server,
        count,
        duration: args.duration,
        connections: args.connections,
        messages_per_connection: args.messages_per_connection,
        size: args.size,
        recipients: args.recipients,
        pipelining: args.pipelining,
        rate: args.rate,
        threads: args.threads,
        tag: args.tag || args.log_accepted.is_some(),
        run_id: args.run_id.unwrap_or_else(blast::new_run_id),
        from: args.from,
        to: args.to,
        to_count: args.to_count,
        helo: args.helo,
        timeout: args.timeout,
        seed: args.seed,
    };
    let report = blast::run(config, log_accepted).map_err(|e| e.to_string())?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}
