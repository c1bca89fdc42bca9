//! `seekbench`: what a queue layout costs the disk, per message.
//!
//! Compares, on the same filesystem and in one run, a log-structured queue
//! with group commit, a file per message (Postfix, qmail) and an append-only
//! file with a flush per message, at several concurrencies. Besides the
//! rate it reports flush calls per message and, from /sys/block/<dev>/stat,
//! the write and flush requests the device really saw, so a relay's disk
//! can be sized from it. The method is described in docs/seekbench.md.

use clap::Parser;
use ringpost_tools::seek::{run_case, CaseConfig, Layout, CONCURRENCY_MAX};
use ringpost_tools::sys::{sys_block_dir_for, BlockStat};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Disk seek/flush benchmark of three queue layouts for small messages:
/// log (O_DIRECT appends to a preallocated segment, one fdatasync per
/// batch), file-per-message (create, write, fsync, rename, unlink) and
/// append-fsync (one file, fdatasync per message).
#[derive(Parser, Debug)]
#[command(name = "seekbench", version)]
struct Args {
    /// Parent directory; the run creates and removes its own subdirectory
    /// there. Put it on the disk you want to measure.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Messages per case (a case also stops at --case-seconds).
    #[arg(short = 'n', long, default_value_t = 10_000)]
    count: u64,
    /// Message (record) size in bytes.
    #[arg(short = 's', long, default_value = "1k", value_parser = ringpost_tools::dist::parse_quantity)]
    message_size: u64,
    /// Concurrent writers, comma-separated.
    #[arg(short = 'c', long, default_value = "1,4,16,64,256", value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Layouts to run, comma-separated: log, file-per-message, append-fsync,
    /// and log-recycled (the log in a segment written once before).
    #[arg(long, default_value = "log,file-per-message,append-fsync", value_delimiter = ',', value_parser = Layout::parse)]
    layouts: Vec<Layout>,
    /// Time limit of one case in seconds; the rate counts what completed.
    #[arg(long, default_value_t = 7.0)]
    case_seconds: f64,
    /// Largest log batch in bytes.
    #[arg(long, default_value = "1m", value_parser = ringpost_tools::dist::parse_quantity)]
    batch_max: u64,
    /// Seconds of idle device counters sampled before the run, to show
    /// what other load the disk carries.
    #[arg(long, default_value_t = 1.0)]
    idle_seconds: f64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("seekbench: {e}");
        std::process::exit(1);
    }
}

struct Row {
    layout: Layout,
    concurrency: usize,
    messages: u64,
    elapsed_s: f64,
    flush_calls: u64,
    app_bytes: u64,
    device: Option<BlockStat>,
    latency_p50_us: u64,
    latency_p99_us: u64,
    direct_io: bool,
}

impl Row {
    fn per_message(&self, n: u64) -> f64 {
        n as f64 / self.messages.max(1) as f64
    }

    fn json(&self) -> serde_json::Value {
        let dev = self.device.map(|d| {
            serde_json::json!({
                "writes_per_message": self.per_message(d.write_ios),
                "flushes_per_message": self.per_message(d.flush_ios),
                "bytes_per_message": self.per_message(d.write_sectors * 512),
                "writes": d.write_ios,
                "flushes": d.flush_ios,
                "sectors": d.write_sectors,
            })
        });
        serde_json::json!({
            "layout": self.layout.name(),
            "concurrency": self.concurrency,
            "messages": self.messages,
            "elapsed_s": self.elapsed_s,
            "messages_per_s": self.messages as f64 / self.elapsed_s.max(1e-9),
            "flushes_per_message": self.per_message(self.flush_calls),
            "app_bytes_per_message": self.per_message(self.app_bytes),
            "device": dev,
            "latency_us_p50": self.latency_p50_us,
            "latency_us_p99": self.latency_p99_us,
            "direct_io": self.direct_io,
        })
    }
}

/// Removes the work directory however the run ends.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sync_all() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

fn run(args: Args) -> Result<(), String> {
    if args.concurrency.iter().any(|&c| c == 0 || c > CONCURRENCY_MAX) {
        return Err(format!("--concurrency values must be 1..={CONCURRENCY_MAX}"));
    }
    if args.message_size < 16 || args.message_size > (1 << 20) {
        return Err("--message-size must be between 16 bytes and 1 MiB".into());
    }
    let work = WorkDir(args.dir.join(format!("seekbench-{}", std::process::id())));
    std::fs::create_dir_all(&work.0).map_err(|e| format!("{}: {e}", work.0.display()))?;
    let sys_dir = sys_block_dir_for(&work.0).ok();
    if sys_dir.is_none() && !args.json {
        eprintln!(
            "seekbench: no block device found for {}; device columns are empty",
            work.0.display()
        );
    }
    let read_stat = |dir: &Option<PathBuf>| dir.as_deref().and_then(|d| BlockStat::read(d).ok());
    sync_all();
    let idle = sample_idle(&sys_dir, Duration::from_secs_f64(args.idle_seconds));
    let mut rows = Vec::new();
    for &layout in &args.layouts {
        for &concurrency in &args.concurrency {
            let cfg = CaseConfig {
                dir: work.0.clone(),
                count: args.count,
                message_bytes: args.message_size as usize,
                concurrency,
                time_max: Duration::from_secs_f64(args.case_seconds),
                batch_bytes_max: args.batch_max as usize,
            };
            sync_all();
            let before = read_stat(&sys_dir);
            let out =
                run_case(layout, &cfg).map_err(|e| format!("{} c={concurrency}: {e}", layout.name()))?;
            let after = read_stat(&sys_dir);
            let device = before.zip(after).map(|(b, a)| a.since(&b));
            let row = Row {
                layout,
                concurrency,
                messages: out.messages,
                elapsed_s: out.elapsed.as_secs_f64(),
                flush_calls: out.flush_calls,
                app_bytes: out.app_bytes,
                device,
                latency_p50_us: out.latency_us.value_at_quantile(0.5),
                latency_p99_us: out.latency_us.value_at_quantile(0.99),
                direct_io: out.direct_io,
            };
            if !args.json {
                eprintln!(
                    "seekbench: {:<16} c={:<4} {:>8.0} msg/s",
                    layout.name(),
                    concurrency,
                    row.messages as f64 / row.elapsed_s.max(1e-9)
                );
            }
            rows.push(row);
        }
    }
    let device_name = sys_dir
        .as_deref()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned());
    if args.json {
        let v = serde_json::json!({
            "dir": work.0.display().to_string(),
            "device": device_name,
            "message_bytes": args.message_size,
            "count": args.count,
            "idle": idle.map(|(s, secs)| serde_json::json!({
                "seconds": secs,
                "writes_per_s": s.write_ios as f64 / secs,
                "flushes_per_s": s.flush_ios as f64 / secs,
            })),
            "results": rows.iter().map(Row::json).collect::<Vec<_>>(),
        });
        println!("{v}");
    } else {
        print_table(&rows, device_name.as_deref(), idle, &args);
    }
    Ok(())
}

fn sample_idle(sys_dir: &Option<PathBuf>, len: Duration) -> Option<(BlockStat, f64)> {
    let dir = sys_dir.as_deref()?;
    if len.is_zero() {
        return None;
    }
    let before = BlockStat::read(dir).ok()?;
    let t = Instant::now();
    std::thread::sleep(len);
    let after = BlockStat::read(dir).ok()?;
    Some((after.since(&before), t.elapsed().as_secs_f64()))
}

fn print_table(rows: &[Row], device: Option<&str>, idle: Option<(BlockStat, f64)>, args: &Args) {
    println!(
        "seekbench: {} messages of {} bytes per case, device {}",
        args.count,
        args.message_size,
        device.unwrap_or("unknown")
    );
    if let Some((s, secs)) = idle {
        println!(
            "idle device before the run: {:.1} writes/s, {:.1} flushes/s (other load counts in every row)",
            s.write_ios as f64 / secs,
            s.flush_ios as f64 / secs
        );
    }
    println!(
        "{:<17} {:>5} {:>7} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}",
        "layout",
        "conc",
        "msgs",
        "msg/s",
        "flush/m",
        "devwr/m",
        "devfl/m",
        "devB/m",
        "appB/m",
        "p50 us",
        "p99 us"
    );
    for r in rows {
        let (w, f, b) = match r.device {
            Some(d) => (
                format!("{:.3}", r.per_message(d.write_ios)),
                format!("{:.3}", r.per_message(d.flush_ios)),
                format!("{:.0}", r.per_message(d.write_sectors * 512)),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "{:<17} {:>5} {:>7} {:>9.0} {:>8.3} {:>9} {:>9} {:>9} {:>9.0} {:>8} {:>8}{}",
            r.layout.name(),
            r.concurrency,
            r.messages,
            r.messages as f64 / r.elapsed_s.max(1e-9),
            r.per_message(r.flush_calls),
            w,
            f,
            b,
            r.per_message(r.app_bytes),
            r.latency_p50_us,
            r.latency_p99_us,
            if r.direct_io { "" } else { "  (no O_DIRECT)" }
        );
    }
}
