//! `ringpost-sink`: a fast SMTP server that accepts and discards mail.
//!
//! The downstream end of a benchmark or a test: it answers like a real MX
//! (PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES, CHUNKING), can refuse
//! or tempfail a chosen share of recipients and messages, can delay the
//! final reply, counts what it saw, and can log the id of every accepted
//! message so a test can prove which messages arrived.

use clap::Parser;
use ringpost_tools::dist::parse_duration;
use ringpost_tools::sink::SinkPolicy;
use ringpost_tools::sink_server::{self, SinkConfig, SinkTotals};
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// SMTP sink: accepts and discards mail, with configurable shares of
/// refusals, and counts messages and recipients.
///
/// Prints `listening ADDR` for each bound address on start, totals every
/// --report-interval on stderr, and final totals on stdout at exit
/// (SIGINT, SIGTERM, --exit-after or --duration).
#[derive(Parser, Debug)]
#[command(name = "ringpost-sink", version)]
struct Args {
    /// Address to listen on (repeatable); port 0 picks a free port.
    #[arg(short = 'l', long, default_value = "127.0.0.1:2525")]
    listen: Vec<String>,
    /// Executor threads (each accepts on every address via SO_REUSEPORT).
    #[arg(short = 't', long, default_value_t = 1)]
    threads: usize,
    /// Share of recipients answered 450 (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    rcpt_tempfail: f64,
    /// Share of recipients answered 550.
    #[arg(long, default_value_t = 0.0)]
    rcpt_reject: f64,
    /// Share of messages answered 451 after the final dot.
    #[arg(long, default_value_t = 0.0)]
    data_tempfail: f64,
    /// Share of messages answered 554 after the final dot.
    #[arg(long, default_value_t = 0.0)]
    data_reject: f64,
    /// Make refusals deterministic: a hash of the seed and the envelope
    /// (for RCPT) or the message id (after DATA) decides, so the same
    /// message gets the same answer in every run.
    #[arg(long)]
    seed: Option<u64>,
    /// Milliseconds to wait before each final reply.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Largest message accepted (advertised in SIZE).
    #[arg(long, default_value = "64m", value_parser = ringpost_tools::dist::parse_quantity)]
    size_max: u64,
    /// Most recipients per message; more get 452.
    #[arg(long, default_value_t = 1000)]
    rcpts_max: usize,
    /// Concurrent connections; more get 421.
    #[arg(long, default_value_t = 20_000)]
    connections_max: u64,
    /// Close a connection idle this long.
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Host name in the greeting and EHLO reply.
    #[arg(long, default_value = "sink.invalid")]
    hostname: String,
    /// Append the X-Blast-Id (else Message-ID) of every accepted message to
    /// FILE, one per line, written before the 250 is sent.
    #[arg(long, value_name = "FILE")]
    log_ids: Option<PathBuf>,
    /// Exit after this many accepted messages.
    #[arg(long)]
    exit_after: Option<u64>,
    /// Exit after this long.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Interval of the progress lines on stderr (0s: none).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    report_interval: Duration,
    /// Print the final totals as one JSON object.
    #[arg(long)]
    json: bool,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("ringpost-sink: {e}");
        std::process::exit(1);
    }
}

fn share(name: &str, v: f64) -> Result<f64, String> {
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("--{name} must be between 0 and 1"))
    }
}

fn run(args: Args) -> Result<(), String> {
    let mut listen: Vec<SocketAddr> = Vec::new();
    for l in &args.listen {
        let addr = l.to_socket_addrs().map_err(|e| format!("{l}: {e}"))?.next();
        listen.push(addr.ok_or_else(|| format!("{l}: no address"))?);
    }
    let policy = SinkPolicy {
        hostname: args.hostname.clone(),
        rcpt_tempfail: share("rcpt-tempfail", args.rcpt_tempfail)?,
        rcpt_reject: share("rcpt-reject", args.rcpt_reject)?,
        data_tempfail: share("data-tempfail", args.data_tempfail)?,
        data_reject: share("data-reject", args.data_reject)?,
        seed: args.seed,
        message_size_bytes_max: args.size_max,
        rcpts_per_message_max: args.rcpts_max,
    };
    let log_ids = match &args.log_ids {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("{}: {e}", p.display()))?,
        ),
        None => None,
    };
    ringpost_tools::sys::raise_nofile_limit().map_err(|e| format!("RLIMIT_NOFILE: {e}"))?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).map_err(|e| format!("signal: {e}"))?;
    }
    let totals = Arc::new(SinkTotals::default());
    let config = SinkConfig {
        listen,
        threads: args.threads,
        policy,
        final_delay: Duration::from_millis(args.delay_ms),
        log_ids,
        connections_max: args.connections_max,
        idle_timeout: args.idle_timeout,
    };
    let bound = sink_server::start(config, totals.clone()).map_err(|e| e.to_string())?;
    {
        let mut out = std::io::stdout().lock();
        for a in &bound {
            let _ = writeln!(out, "listening {a}");
        }
        let _ = out.flush();
    }
    wait_for_end(&args, &stop, &totals);
    let json = totals.to_json();
    if args.json {
        println!("{json}");
    } else if let serde_json::Value::Object(map) = json {
        for (k, v) in map {
            println!("{k:<22} {v}");
        }
    }
    let _ = std::io::stdout().flush();
    // Executor threads are serving forever; leave without joining them.
    std::process::exit(0);
}

fn wait_for_end(args: &Args, stop: &AtomicBool, totals: &SinkTotals) {
    let start = Instant::now();
    let mut last_report = start;
    let mut last_messages = 0;
    while !stop.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
        let messages = totals.messages_accepted.load(Relaxed);
        if args.exit_after.is_some_and(|n| messages >= n) {
            break;
        }
        if args.duration.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        let since = last_report.elapsed();
        if !args.report_interval.is_zero() && since >= args.report_interval {
            eprintln!(
                "ringpost-sink: {:.0} s: {} accepted ({:.0}/s), {} rcpts, {} connections active",
                start.elapsed().as_secs_f64(),
                messages,
                (messages - last_messages) as f64 / since.as_secs_f64(),
                totals.rcpt_accepted.load(Relaxed),
                totals.connections_active.load(Relaxed),
            );
            last_report = Instant::now();
            last_messages = messages;
        }
    }
}
