//! The simulation's seeds under `cargo test`: `SEEDS_DEFAULT` of them
//! (`RINGPOST_SIM_SEEDS` and `RINGPOST_SIM_FIRST_SEED` choose others,
//! `RINGPOST_SIM_SEED` replays one), the determinism check, and a check
//! that the invariants catch a broken shard.

use super::world::{run_outage, run_seed, run_seed_on, Broken, SeedReport, SEGMENT_SIZE_BYTES};

/// Seeds `cargo test` runs (about 45 s in the test-checked profile; seeds
/// 1-1000 all pass, docs/simulation.md).
const SEEDS_DEFAULT: u64 = 300;
/// Messages per seed under `cargo test` (`tests/sim-long` runs 2000).
const MESSAGES_DEFAULT: usize = 400;

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(text.trim().parse().unwrap_or_else(|_| panic!("{name}={text}: not a number")))
}

/// Runs one seed; on a failure prints how to replay it and fails.
fn run_or_report(seed: u64, messages: usize) -> SeedReport {
    match std::panic::catch_unwind(|| run_seed(seed, messages)) {
        Ok(report) => report,
        Err(panic) => {
            eprintln!("simulation failed: replay with RINGPOST_SIM_SEED={seed} (RINGPOST_SIM_MESSAGES={messages})");
            std::panic::resume_unwind(panic)
        }
    }
}

#[test]
fn seeds_keep_every_invariant() {
    let messages = env_u64("RINGPOST_SIM_MESSAGES").map_or(MESSAGES_DEFAULT, |n| n as usize);
    let seeds: Vec<u64> = match env_u64("RINGPOST_SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let first = env_u64("RINGPOST_SIM_FIRST_SEED").unwrap_or(1);
            let count = env_u64("RINGPOST_SIM_SEEDS").unwrap_or(SEEDS_DEFAULT);
            (first..first + count).collect()
        }
    };
    let started = std::time::Instant::now();
    let mut total = SeedReport::default();
    for &seed in &seeds {
        let r = run_or_report(seed, messages);
        assert_eq!(r.seed, seed);
        total.ticks += r.ticks;
        for slot in 0..2 {
            total.segments_max[slot] = total.segments_max[slot].max(r.segments_max[slot]);
        }
        if seeds.len() == 1 {
            eprintln!("{r:?}");
        }
        total.messages += r.messages;
        total.acknowledged += r.acknowledged;
        total.refused += r.refused;
        total.dropped += r.dropped;
        total.deliveries += r.deliveries;
        total.bounced_recipients += r.bounced_recipients;
        total.duplicates_after_crash += r.duplicates_after_crash;
        total.delivered_unacknowledged += r.delivered_unacknowledged;
        total.crashes += r.crashes;
        total.sync_failures += r.sync_failures;
        total.attempts += r.attempts;
        total.sim_ms += r.sim_ms;
    }
    eprintln!(
        "simulation: {} seeds from {} in {:.1} s: {} messages, {} acknowledged, {} refused (4xx), {} dropped by their \
         clients, {} deliveries, {} recipients bounced, {} attempts, {} crashes, {} failed flushes, {} duplicates after \
         a crash, {} unacknowledged delivered, {:.1} simulated hours in {} ticks, at most {} head and {} retry \
         segments",
        seeds.len(),
        seeds[0],
        started.elapsed().as_secs_f64(),
        total.messages,
        total.acknowledged,
        total.refused,
        total.dropped,
        total.deliveries,
        total.bounced_recipients,
        total.attempts,
        total.crashes,
        total.sync_failures,
        total.duplicates_after_crash,
        total.delivered_unacknowledged,
        total.sim_ms as f64 / 3_600_000.0,
        total.ticks,
        total.segments_max[0],
        total.segments_max[1]
    );
    if seeds.len() >= 50 {
        assert!(
            total.crashes > 0 && total.sync_failures > 0 && total.bounced_recipients > 0,
            "the faults ran: {total:?}"
        );
    }
}

/// A log found empty at a start began its numbers again while a segment
/// freed in its earlier life was kept for reuse: the reused file's stale
/// batch carried the very numbers the new one expected, was trusted, and a
/// completed message came back with its body file gone (this seed, at
/// 2,000 messages, found it). Freed segments are now deleted at start-up.
#[test]
fn a_segment_freed_before_a_restart_brings_no_record_back() {
    run_or_report(3140, 2000);
}

#[test]
fn a_seed_run_twice_gives_the_same_trace() {
    let first = run_seed(7, 300);
    let second = run_seed(7, 300);
    assert_eq!(first.trace_hash, second.trace_hash, "{first:?}\n{second:?}");
    assert_eq!(first.deliveries, second.deliveries);
    let other = run_seed(8, 300);
    assert_ne!(first.trace_hash, other.trace_hash, "another seed, another run");
}

/// A disk whose flushes flush nothing loses acknowledged messages at the
/// first crash: the checks must say so.
#[test]
fn a_disk_that_loses_acknowledged_writes_is_caught() {
    assert!(seeds_failing(1..=5, Broken::LyingDisk) > 0, "no seed noticed a disk that never flushes");
}

/// How many of `seeds` (300 messages each) fail their checks on a shard
/// broken as `broken`.
fn seeds_failing(seeds: std::ops::RangeInclusive<u64>, broken: Broken) -> usize {
    seeds.filter(|&seed| std::panic::catch_unwind(|| run_seed_on(seed, 300, broken)).is_err()).count()
}

/// A shard whose collector never runs keeps every dead segment: the check
/// of SPEC section 13's bound must say so.
#[test]
fn a_queue_that_keeps_dead_segments_is_caught() {
    assert_eq!(seeds_failing(1..=3, Broken::NoCollector), 3, "a seed did not notice a queue without its collector");
}

/// A next hop down for an hour of simulated time: acceptance is what it is
/// with every hop up (same seed, same clients), the queue's memory is the
/// backlog's index entries and nothing more, the retry log's disk follows
/// the backlog and not the attempts, and the backlog leaves once the hop
/// is back (each recipient exactly once: `run_outage` checks).
#[test]
fn a_next_hop_down_for_an_hour_leaves_acceptance_and_memory_alone() {
    let seed = env_u64("RINGPOST_SIM_SEED").unwrap_or(11);
    let up = run_outage(seed, false);
    let down = run_outage(seed, true);
    for r in [&up, &down] {
        eprintln!(
            "outage (seed {}, hop 0 {}): {} acknowledged, {} refused, backlog {} (live {} at the return, {} at most), \
             commit p50/p99/max {}/{}/{} ticks, {} retry records of {} bytes on average, at most {} retry segments, \
             {} attempts, {} deliveries, drained in {:.1} simulated s",
            r.seed,
            if r.hop_down { "down" } else { "up" },
            r.acknowledged,
            r.refused,
            r.backlog,
            r.live_at_return,
            r.live_max,
            r.commit_ticks_p50,
            r.commit_ticks_p99,
            r.commit_ticks_max,
            r.retry_records,
            r.retry_record_bytes_mean,
            r.retry_segments_max,
            r.attempts,
            r.deliveries,
            r.drain_ms as f64 / 1000.0
        );
    }
    assert_eq!((up.refused, down.refused), (0, 0), "a commit failed");
    assert!(down.backlog > 1000 && down.live_at_return == down.backlog, "the hop was not down: {down:?}");
    assert!(up.live_max < 100, "with every hop up the queue stays near empty: {up:?}");
    assert!(
        down.acknowledged as f64 >= 0.95 * up.acknowledged as f64,
        "acceptance fell: {} acknowledged with the hop down, {} up",
        down.acknowledged,
        up.acknowledged
    );
    assert!(
        down.commit_ticks_p99 <= 2 * up.commit_ticks_p99.max(1),
        "commits slowed: p99 {} ticks with the hop down, {} up",
        down.commit_ticks_p99,
        up.commit_ticks_p99
    );
    // Memory: one index entry per message still queued, a few in flight.
    assert!(down.live_max <= down.backlog + 64, "more live than the backlog: {down:?}");
    // Disk: the retry log holds about one record per deferred message per
    // longest lag, not one per attempt (each is tried about a dozen times).
    let retry_bytes = down.retry_segments_max as u64 * SEGMENT_SIZE_BYTES;
    let backlog_bytes = down.backlog as u64 * down.retry_record_bytes_mean;
    assert!(
        retry_bytes <= 3 * backlog_bytes + 4 * SEGMENT_SIZE_BYTES,
        "the retry log grew with the attempts: {retry_bytes} bytes on disk for {backlog_bytes} of backlog: {down:?}"
    );
    assert!(down.retry_records >= 4 * down.backlog as u64, "the backlog was hardly retried: {down:?}");
    // Back: the longest retry lag (300 s) and the attempts themselves.
    assert!(down.drain_ms <= 15 * 60 * 1000, "the backlog left slowly: {down:?}");
}
