//! The retry log's scan rate: fills a spool's retry log with deferred
//! envelopes through the queue's own API (`Queue::defer`, group-committed),
//! then times the start-up recovery scan that reads them back (one
//! sequential pass over the segments, every record decoded and checked).
//! Driven by `perf/retryscan`, which drops the page cache between the two
//! steps and measures the disk's own sequential read rate beside it.
//!
//! `fill ... due` writes envelopes whose next attempt is already due (for
//! `perf/backlog`, whose runners hand them all to delivery at once);
//! without it they are due in an hour. `scan` prints the envelopes found,
//! the seconds the open took and the resident memory (KiB) before and
//! after it, and at its peak.
//!
//! `RETRYSCAN_SEGMENT_MIB` sets the segment size in MiB (default 64);
//! a scan reads segments up to that size.
//!
//! Usage: retryscan fill SPOOL COUNT [due] | retryscan scan SPOOL

use std::path::PathBuf;
use std::time::{Duration, Instant};

use queue_format::LogKind;
use ringpost::clock::Clock;
use ringpost::queue::{stored_address, Body, Envelope, Queue, QueueParams, RcptState, Recipient};
use ringpost::smtp::address::ReversePath;

/// Deferrals in flight at once while filling.
const FILL_TASKS: usize = 512;

/// Segment size without `RETRYSCAN_SEGMENT_MIB`, in MiB.
const SEGMENT_MIB_DEFAULT: u64 = 64;

fn params() -> QueueParams {
    let segment_mib = match std::env::var("RETRYSCAN_SEGMENT_MIB") {
        Ok(mib) => mib.parse().unwrap_or_else(|_| {
            eprintln!("retryscan: RETRYSCAN_SEGMENT_MIB={mib} is not a whole number of MiB");
            std::process::exit(2)
        }),
        Err(_) => SEGMENT_MIB_DEFAULT,
    };
    QueueParams {
        inline_max_bytes: 65536,
        segment_size_bytes: segment_mib << 20,
        commit_delay: Duration::ZERO,
        // Long lags: nothing is handed out while the scan is measured.
        retry_lags: vec![Duration::from_secs(3600)],
        handoff_envelopes_max: 64,
        body_sync: ringpost::queue::BodySyncMode::Each,
        body_store: ringpost::queue::BodyStore::Log,
    }
}

fn envelope(id: String, i: u64, due: bool) -> Envelope {
    let now_ms = ringpost::clock::system_unix_ms();
    Envelope {
        id,
        sender: ReversePath::Path(stored_address(&format!("sender{i}@client.example")).expect("address")),
        recipients: vec![Recipient {
            address: stored_address(&format!("user{i}@remote.example")).expect("address"),
            state: RcptState::Pending,
            last_reply: "451 4.7.1 greylisted, try again later".to_string(),
            folder: None,
            dsn: Default::default(),
        }],
        arrival_unix_ms: now_ms,
        next_retry_unix_ms: if due { now_ms } else { now_ms + 3_600_000 },
        attempt_count: 1,
        size_bytes: 0,
        body_8bit: false,
        body_binary: false,
        smtputf8: false,
        client: "192.0.2.1".into(),
        helo: "client.example".into(),
        headers_prepended: Vec::new(),
        replica_of: None,
        held: false,
        auth: None,
        dsn: Default::default(),
        delay_warned: false,
        // A small message, inline as most deferred mail is.
        body: Body::Inline(std::sync::Arc::from(&b"Subject: deferred\r\n\r\nA one-line message body.\r\n"[..])),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!("usage: retryscan fill SPOOL COUNT [due] | retryscan scan SPOOL");
        std::process::exit(2)
    };
    let (mode, spool) = match args.as_slice() {
        [_, mode, spool, ..] => (mode.clone(), PathBuf::from(spool)),
        _ => usage(),
    };
    let count: u64 = match mode.as_str() {
        "fill" => args.get(3).and_then(|c| c.parse().ok()).unwrap_or_else(|| usage()),
        "scan" => 0,
        _ => usage(),
    };
    let due = args.get(4).map(String::as_str) == Some("due");
    // Helper threads as a shard has them (the scan decodes segments there).
    let handle = glommio::LocalExecutorBuilder::default()
        .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(4))
        .spawn(move || async move {
            let rss_before_kib = status_kib("VmRSS:");
            let started = Instant::now();
            let queue = Queue::open(&spool, 0, params(), Clock::System).await.expect("spool opens");
            let opened = started.elapsed();
            if mode == "scan" {
                let bytes: u64 = std::fs::read_dir(spool.join("shard-0"))
                    .expect("spool")
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().starts_with("retry-"))
                    .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                    .sum();
                println!(
                    "{{\"envelopes\": {}, \"seconds\": {:.3}, \"segment_bytes\": {}, \"rss_before_kib\": {}, \
                     \"rss_after_kib\": {}, \"rss_peak_kib\": {}}}",
                    queue.live_count(),
                    opened.as_secs_f64(),
                    bytes,
                    rss_before_kib,
                    status_kib("VmRSS:"),
                    status_kib("VmHWM:")
                );
                return;
            }
            let committers: Vec<_> = [LogKind::Head, LogKind::Retry]
                .into_iter()
                .map(|kind| glommio::spawn_local(queue.clone().run_committer(kind)))
                .collect();
            let per_task = count.div_ceil(FILL_TASKS as u64);
            let mut tasks = Vec::new();
            for t in 0..FILL_TASKS as u64 {
                let queue = queue.clone();
                tasks.push(glommio::spawn_local(async move {
                    for i in t * per_task..((t + 1) * per_task).min(count) {
                        let env = envelope(queue.next_id(), i, due);
                        queue.defer(&env).await.expect("deferral recorded");
                    }
                }));
            }
            for task in tasks {
                task.await;
            }
            queue.close();
            for c in committers {
                c.await;
            }
            eprintln!("filled {count} envelopes in {:.1} s", started.elapsed().as_secs_f64());
        })
        .expect("executor");
    handle.join().expect("ran");
}

/// A field of /proc/self/status, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}
