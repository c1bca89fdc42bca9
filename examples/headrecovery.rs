//! What recovering a large head log costs in memory: fills a spool's head
//! log with committed messages through the queue's own API
//! (`MessageWriter::commit`, group-committed, small inline bodies), then
//! opens it again the way a shard starts and reports how many messages
//! came back, how many wait in the hand-off to delivery as whole envelopes
//! (none: recovered messages wait as log locations) and the process's
//! resident memory before and after the recovery.
//!
//! Usage: headrecovery fill SPOOL COUNT | headrecovery scan SPOOL

use std::path::PathBuf;
use std::time::{Duration, Instant};

use queue_format::LogKind;
use ringpost::clock::Clock;
use ringpost::queue::{stored_address, Body, Envelope, Queue, QueueParams, RcptState, Recipient};
use ringpost::smtp::address::ReversePath;

/// Commits in flight at once while filling.
const FILL_TASKS: usize = 512;

fn params() -> QueueParams {
    QueueParams {
        inline_max_bytes: 65536,
        segment_size_bytes: 64 << 20,
        commit_delay: Duration::ZERO,
        retry_lags: vec![Duration::from_secs(3600)],
        handoff_envelopes_max: 400,
        body_sync: ringpost::queue::BodySyncMode::Each,
        body_store: ringpost::queue::BodyStore::Log,
    }
}

fn envelope(id: String, i: u64, now_ms: u64) -> Envelope {
    Envelope {
        id,
        sender: ReversePath::Path(stored_address(&format!("sender{i}@client.example")).expect("address")),
        recipients: vec![Recipient {
            address: stored_address(&format!("user{i}@remote.example")).expect("address"),
            state: RcptState::Pending,
            last_reply: String::new(),
            folder: None,
            dsn: Default::default(),
        }],
        arrival_unix_ms: now_ms,
        next_retry_unix_ms: now_ms,
        attempt_count: 0,
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
        body: Body::Inline(Default::default()),
    }
}

/// Resident and peak resident memory of this process, KiB.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = || -> ! {
        eprintln!("usage: headrecovery fill SPOOL COUNT | headrecovery scan SPOOL");
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
    let handle = glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let (rss_before_kib, _) = memory_kib();
            let started = Instant::now();
            let queue = Queue::open(&spool, 0, params(), Clock::System).await.expect("spool opens");
            let opened = started.elapsed();
            if mode == "scan" {
                let (rss_kib, hwm_kib) = memory_kib();
                let (waiting, envelopes) = queue.handoff_counts();
                println!(
                    "{{\"live\": {}, \"handoff_waiting\": {waiting}, \"handoff_envelopes\": {envelopes}, \
                     \"seconds\": {:.3}, \"rss_before_kib\": {rss_before_kib}, \"rss_kib\": {rss_kib}, \
                     \"hwm_kib\": {hwm_kib}}}",
                    queue.live_count(),
                    opened.as_secs_f64(),
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
                        let mut writer = queue.create().await.expect("writer");
                        writer.write(b"Subject: recovery\r\n\r\nA one-line message body.\r\n").await.expect("write");
                        let env = envelope(writer.id().to_string(), i, queue.clock().unix_ms());
                        writer.commit(&queue, env).await.expect("commit");
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
            eprintln!("filled {count} messages in {:.1} s", started.elapsed().as_secs_f64());
        })
        .expect("executor");
    handle.join().expect("ran");
}
