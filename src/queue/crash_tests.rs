//! Crash consistency at every sync: a recorded run of the queue on the
//! simulated disk (`simstorage.rs`), then a crash after each of its disk
//! operations in turn, recovery, and a comparison of the recovered queue
//! with a model of what was durable at that point.
//!
//! Place in the pipeline: tests of the queue's writer and recovery rules
//! (`queue-format/SPEC.md` sections 10 and 11) below the delivery and
//! ingress layers; the deterministic simulation (`crate::sim`) tests the
//! whole shard on the same disk.
//!
//! The recorded run commits messages through [`MessageWriter::commit`]
//! (inline and body-file bodies, several at once so batches hold several
//! records), defers some (replacement envelopes in the retry log),
//! completes some, rotates segments and lets the collector retire the dead
//! ones, with some fdatasyncs failing. Every disk operation is journaled.
//! For every operation k, the disk as of k is rebuilt from the journal and
//! crashed with its unflushed sectors all lost, all kept, and twice kept,
//! lost or torn at random; then the queue is opened on it
//! ([`Queue::open_with`]) and the model says:
//!
//! - a record acknowledged (its commit or defer returned) at or before k is
//!   present with at least that attempt count, unless its completion was
//!   durable by then;
//! - a message whose completion was durable at or before k is gone;
//! - nothing is present that was not staged before k, nor with an attempt
//!   count that was not staged before k, nor with other content than was
//!   staged, and every present body file passes the body check;
//! - no body file outlives recovery without a live envelope naming it.
//!
//! What SPEC allows is counted, not failed: an envelope recovered without
//! having been acknowledged (section 11, cases 2, 5 and 7) and a completed
//! message that comes back because its completion was not yet durable
//! (case 9). After each crash point the recovered queue takes one more
//! message and is crashed and recovered again: nothing present before is
//! lost, the new message is there (writer rule 6 on a spool after a crash).

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use queue_format::{CompletionReason, LogKind};

use super::simstorage::{CrashMode, DiskState, Op, Rng, SimDisk, SimStorage};
use super::*;

const START_UNIX_MS: u64 = 1_800_000_000_000;
/// Bytes the simulated disk holds.
const DISK_CAPACITY_BYTES: u64 = 64 << 20;

fn params() -> QueueParams {
    QueueParams {
        inline_max_bytes: 2048,
        segment_size_bytes: 64 * 1024,
        commit_delay: Duration::ZERO,
        retry_lags: vec![Duration::from_secs(60), Duration::from_secs(600)],
        handoff_envelopes_max: 64,
        body_sync: BodySyncMode::Each,
        body_store: crate::queue::BodyStore::Log,
    }
}

fn run<T: Send + 'static>(
    make: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> T {
    glommio::LocalExecutorBuilder::default()
        .preempt_timer(Duration::from_secs(3600))
        .spawn(move || async move { make().await })
        .expect("executor starts")
        .join()
        .expect("executor ends")
}

/// What the recorded run did, each at the journal position it happened.
#[derive(Clone, Debug)]
enum Event {
    /// A record of `id` with this attempt count was staged (it may reach
    /// the disk from here on).
    Staged { id: String, attempt_count: u16, body: Vec<u8> },
    /// Its commit or defer returned: acknowledged.
    Acked { id: String, attempt_count: u16 },
    /// The completion was staged.
    CompletionStaged { id: String },
    /// The completion is durable (the index let the message go).
    CompletionDurable { id: String },
}

struct Recorded {
    journal: Vec<Op>,
    events: Vec<(usize, Event)>,
    seed: u64,
}

fn body_for(rng: &mut Rng, number: usize) -> Vec<u8> {
    let size_bytes = if rng.below(3) == 0 { rng.range(2100, 9000) } else { rng.range(40, 1500) } as usize;
    let mut body = format!("Subject: message {number}\r\n\r\n").into_bytes();
    while body.len() < size_bytes {
        body.push(b'a' + (body.len() % 26) as u8);
    }
    body
}

fn journal_at(disk: &SimDisk) -> usize {
    disk.state.borrow().journal_len()
}

async fn open_on(disk: &SimDisk, clock: Clock) -> std::io::Result<Rc<Queue<SimStorage>>> {
    Queue::open_with(disk.storage(), 0, params(), clock).await
}

fn start_tasks(queue: &Rc<Queue<SimStorage>>) -> Vec<glommio::Task<()>> {
    let mut tasks = Vec::new();
    for kind in [LogKind::Head, LogKind::Retry] {
        tasks.push(glommio::spawn_local(queue.clone().run_committer(kind)));
    }
    tasks.push(glommio::spawn_local(queue.clone().run_collector()));
    tasks
}

/// Receives and commits one message, noting what was staged and acked.
async fn accept(
    queue: Rc<Queue<SimStorage>>,
    disk: SimDisk,
    body: Vec<u8>,
    events: Rc<std::cell::RefCell<Vec<(usize, Event)>>>,
) -> Option<Envelope> {
    let mut writer = queue.create().await.ok()?;
    for chunk in body.chunks(1500) {
        if writer.write(chunk).await.is_err() {
            return None;
        }
    }
    let id = writer.id().to_string();
    let env = crate::testing::envelope(&id, &["r@example.net", "s@example.com"], queue.clock().unix_ms());
    events
        .borrow_mut()
        .push((journal_at(&disk), Event::Staged { id: id.clone(), attempt_count: 0, body: body.clone() }));
    writer.commit(&queue, env).await.ok()?;
    events.borrow_mut().push((journal_at(&disk), Event::Acked { id: id.clone(), attempt_count: 0 }));
    queue.take_ready().await.into_iter().find(|env| env.id == id)
}

/// The recorded run: about `steps` steps of accepting, deferring and
/// completing, with `sync_error_ppm` of the flushes failing.
fn record(seed: u64, steps: usize, sync_error_ppm: u32) -> Recorded {
    run(move || {
        Box::pin(async move {
            let disk = SimDisk::new(seed, DISK_CAPACITY_BYTES);
            {
                let mut state = disk.state.borrow_mut();
                state.record();
                state.rates.sync_error_ppm = sync_error_ppm;
                state.rates.latency_yields_max = 3;
            }
            let (clock, manual) = Clock::manual(START_UNIX_MS);
            let queue = open_on(&disk, clock).await.expect("an empty disk opens");
            let tasks = start_tasks(&queue);
            let events = Rc::new(std::cell::RefCell::new(Vec::new()));
            let mut rng = Rng::new(seed);
            let mut taken: Vec<Envelope> = Vec::new();
            let mut completing: Vec<String> = Vec::new();
            let mut number = 0;
            for _ in 0..steps {
                manual.advance(Duration::from_millis(rng.range(1, 50)));
                match rng.below(10) {
                    0..=5 => {
                        let together = rng.range(1, 4);
                        let mut running = Vec::new();
                        for _ in 0..together {
                            number += 1;
                            let body = body_for(&mut rng, number);
                            running.push(glommio::spawn_local(accept(
                                queue.clone(),
                                disk.clone(),
                                body,
                                events.clone(),
                            )));
                        }
                        for task in running {
                            taken.extend(task.await);
                        }
                    }
                    6 | 7 if !taken.is_empty() => {
                        let at = rng.below(taken.len() as u64) as usize;
                        let mut env = taken[at].clone();
                        env.attempt_count += 1;
                        env.next_retry_unix_ms = queue.clock().unix_ms() + 60_000;
                        env.recipients[0].state = RcptState::Delivered;
                        let staged =
                            Event::Staged { id: env.id.clone(), attempt_count: env.attempt_count, body: Vec::new() };
                        events.borrow_mut().push((journal_at(&disk), staged));
                        if queue.defer(&env).await.is_ok() {
                            let acked = Event::Acked { id: env.id.clone(), attempt_count: env.attempt_count };
                            events.borrow_mut().push((journal_at(&disk), acked));
                            taken[at] = env;
                        }
                    }
                    8 | 9 if !taken.is_empty() => {
                        let at = rng.below(taken.len() as u64) as usize;
                        let env = taken.swap_remove(at);
                        if queue.complete(&env, CompletionReason::Done).is_ok() {
                            events
                                .borrow_mut()
                                .push((journal_at(&disk), Event::CompletionStaged { id: env.id.clone() }));
                            completing.push(env.id.clone());
                        }
                    }
                    _ => {}
                }
                completing.retain(|id| {
                    if queue.entry(id).is_some() {
                        return true;
                    }
                    events.borrow_mut().push((journal_at(&disk), Event::CompletionDurable { id: id.clone() }));
                    false
                });
            }
            queue.close();
            for task in tasks {
                task.await;
            }
            let journal = disk.state.borrow_mut().take_journal();
            let events = events.borrow().clone();
            Recorded { journal, events, seed }
        })
    })
}

/// What the model expects at crash point k.
#[derive(Default, Debug)]
struct Expect {
    /// id → highest acknowledged attempt count, for messages not known completed.
    must: BTreeMap<String, u16>,
    /// id → highest staged attempt count (anything present must be here).
    may: BTreeMap<String, u16>,
    bodies: BTreeMap<String, Vec<u8>>,
    /// Completion durable by k: must be gone.
    gone: BTreeSet<String>,
    /// Completion staged (maybe durable) by k.
    completing: BTreeSet<String>,
    /// Acknowledged by k (attempt 0).
    acked_first: BTreeSet<String>,
}

fn expect_at(events: &[(usize, Event)], k: usize) -> Expect {
    let mut expect = Expect::default();
    for (at, event) in events {
        match event {
            Event::Staged { id, attempt_count, body } if *at <= k => {
                let may = expect.may.entry(id.clone()).or_default();
                *may = (*may).max(*attempt_count);
                if *attempt_count == 0 {
                    expect.bodies.insert(id.clone(), body.clone());
                }
            }
            Event::Acked { id, attempt_count } if *at <= k => {
                let must = expect.must.entry(id.clone()).or_default();
                *must = (*must).max(*attempt_count);
                if *attempt_count == 0 {
                    expect.acked_first.insert(id.clone());
                }
            }
            Event::CompletionStaged { id } if *at <= k => {
                expect.completing.insert(id.clone());
            }
            Event::CompletionDurable { id } if *at <= k => {
                expect.gone.insert(id.clone());
            }
            _ => {}
        }
    }
    for id in expect.completing.iter().chain(expect.gone.iter()) {
        expect.must.remove(id);
    }
    expect
}

/// What the crash points found that SPEC allows.
#[derive(Default, Debug)]
struct Counts {
    crash_points: usize,
    recoveries: usize,
    recovered_unacknowledged: usize,
    completed_came_back: usize,
}

/// The live messages of a recovered queue: id → (attempt count, envelope).
async fn live_set(queue: &Queue<SimStorage>) -> BTreeMap<String, (u16, Envelope)> {
    let entries: Vec<(QueueId, Entry)> = queue.index.borrow().iter().map(|(id, e)| (*id, *e)).collect();
    let mut out = BTreeMap::new();
    for (id, entry) in entries {
        let env = queue.read_envelope_at(entry.location).await.expect("a live record reads back");
        assert_eq!(env.attempt_count, entry.attempt_count);
        out.insert(id_text(&id), (entry.attempt_count, env));
    }
    out
}

/// Opens the queue on `state` and checks it against `expect`; returns the
/// recovered live set.
async fn check_point(
    state: DiskState,
    expect: &Expect,
    counts: &mut Counts,
    context: &str,
) -> (SimDisk, BTreeMap<String, (u16, Envelope)>) {
    let disk = SimDisk::from_state(state);
    let (clock, _) = Clock::manual(START_UNIX_MS + 3_600_000);
    let queue = match open_on(&disk, clock).await {
        Ok(queue) => queue,
        Err(e) => panic!("{context}: recovery failed: {e}"),
    };
    counts.recoveries += 1;
    let live = live_set(&queue).await;
    for (id, acked) in &expect.must {
        let Some((attempt_count, _)) = live.get(id) else {
            panic!("{context}: acknowledged message {id} (attempt {acked}) lost");
        };
        assert!(attempt_count >= acked, "{context}: {id} recovered at attempt {attempt_count}, acknowledged {acked}");
    }
    for id in &expect.gone {
        assert!(!live.contains_key(id), "{context}: {id} came back after its completion was durable");
    }
    for (id, (attempt_count, env)) in &live {
        let Some(staged) = expect.may.get(id) else {
            panic!("{context}: {id} recovered but never staged before this point");
        };
        assert!(attempt_count <= staged, "{context}: {id} at attempt {attempt_count}, staged at most {staged}");
        let body = &expect.bodies[id];
        assert_eq!(env.size_bytes, body.len() as u64, "{context}: {id} size");
        match &env.body {
            Body::Inline(bytes) => assert_eq!(&bytes[..], &body[..], "{context}: {id} inline body"),
            Body::File { checksum, .. } | Body::Log { checksum, .. } => {
                assert_eq!(*checksum, queue_format::checksum::crc32c_append(0, body), "{context}: {id} checksum");
                if let Err(e) = queue.check_body(env).await {
                    panic!("{context}: {id} recovered with a damaged body: {e}");
                }
            }
        }
        if !expect.acked_first.contains(id) {
            counts.recovered_unacknowledged += 1;
        }
        if expect.completing.contains(id) {
            counts.completed_came_back += 1;
        }
    }
    let named: BTreeSet<String> = live
        .iter()
        .filter(|(_, (_, env))| matches!(env.body, Body::File { .. }))
        .map(|(id, _)| body_name(id))
        .collect();
    for name in disk.storage().list().unwrap() {
        if name.starts_with("body-") {
            assert!(named.contains(&name), "{context}: orphan body file {name} left after recovery");
        }
    }
    drop(queue);
    (disk, live)
}

/// After a crash point: the recovered queue takes a new message; crashed
/// again with nothing unflushed kept, it still has everything it had and
/// the new message too.
async fn check_restart(disk: SimDisk, before: BTreeMap<String, (u16, Envelope)>, counts: &mut Counts, context: &str) {
    let (clock, _) = Clock::manual(START_UNIX_MS + 7_200_000);
    let queue = open_on(&disk, clock.clone()).await.unwrap_or_else(|e| panic!("{context}: reopen failed: {e}"));
    let tasks = start_tasks(&queue);
    let mut writer = queue.create().await.unwrap();
    writer.write(b"Subject: after the crash\r\n\r\nbody\r\n").await.unwrap();
    let id = writer.id().to_string();
    let env = crate::testing::envelope(&id, &["r@example.net"], clock.unix_ms());
    writer.commit(&queue, env).await.unwrap_or_else(|e| panic!("{context}: commit after recovery failed: {e}"));
    drop(tasks);
    drop(queue);
    disk.crash(CrashMode::Nothing);
    let (clock, _) = Clock::manual(START_UNIX_MS + 7_300_000);
    let queue = open_on(&disk, clock).await.unwrap_or_else(|e| panic!("{context}: second recovery failed: {e}"));
    counts.recoveries += 1;
    let after = live_set(&queue).await;
    assert!(after.contains_key(&id), "{context}: the message acknowledged after recovery was lost");
    for (id, (attempt_count, _)) in &before {
        let Some((again, _)) = after.get(id) else { panic!("{context}: {id} lost by the second crash") };
        assert_eq!(again, attempt_count, "{context}: {id} changed across the second crash");
    }
}

/// Crashes after every operation of a recorded run (with four ways of
/// treating unflushed sectors) and checks each recovery.
fn crash_everywhere(recorded: Recorded) -> Counts {
    run(move || {
        Box::pin(async move {
            let Recorded { journal, events, seed } = recorded;
            let mut counts = Counts::default();
            let mut state = DiskState::new(seed, DISK_CAPACITY_BYTES);
            for k in 0..=journal.len() {
                if k > 0 {
                    state.apply(&journal[k - 1]);
                }
                let at_sync_or_write = k == 0 || journal[k - 1].is_write_or_flush();
                let expect = expect_at(&events, k);
                counts.crash_points += 1;
                let modes: &[CrashMode] = if at_sync_or_write {
                    &[CrashMode::Nothing, CrashMode::Everything, CrashMode::Random, CrashMode::Random]
                } else {
                    &[CrashMode::Random]
                };
                for (variant, mode) in modes.iter().enumerate() {
                    let mut crashed = state.clone();
                    crashed.rng = Rng::new(seed ^ ((k as u64) << 8) ^ variant as u64);
                    crashed.crash(*mode);
                    let context =
                        format!("seed {seed}, crash after operation {k} of {} ({mode:?} #{variant})", journal.len());
                    let (disk, live) = check_point(crashed, &expect, &mut counts, &context).await;
                    if variant == modes.len() - 1 {
                        check_restart(disk, live, &mut counts, &context).await;
                    }
                }
            }
            counts
        })
    })
}

#[test]
fn every_crash_point_of_a_run_recovers_what_was_durable() {
    let mut totals = Counts::default();
    for seed in 1..=3 {
        let recorded = record(seed, 40, 0);
        let counts = crash_everywhere(recorded);
        totals.crash_points += counts.crash_points;
        totals.recoveries += counts.recoveries;
        totals.recovered_unacknowledged += counts.recovered_unacknowledged;
        totals.completed_came_back += counts.completed_came_back;
    }
    eprintln!("crash consistency: {totals:?}");
    assert!(totals.crash_points > 300, "the runs were long enough: {totals:?}");
    assert!(totals.recovered_unacknowledged > 0, "some crash fell between a write and its acknowledgement");
    assert!(totals.completed_came_back > 0, "some crash fell before a completion was durable");
}

#[test]
fn every_crash_point_of_a_run_with_failing_flushes_recovers_what_was_durable() {
    let mut failures = 0;
    for seed in 11..=13 {
        let recorded = record(seed, 40, 60_000);
        failures += recorded.journal.iter().filter(|op| matches!(op, Op::SyncFailed { .. })).count();
        crash_everywhere(recorded);
    }
    assert!(failures > 0, "some flush failed in the recorded runs");
}

/// The model is strict enough to catch a lost acknowledgement: dropping one
/// durable write from the journal of a run is noticed.
#[test]
fn a_crash_point_that_loses_an_acknowledged_record_is_caught() {
    let recorded = record(21, 20, 0);
    let segments: BTreeSet<u64> = recorded
        .journal
        .iter()
        .filter_map(|op| match op {
            Op::Create { inode, .. } => Some(*inode),
            _ => None,
        })
        .collect();
    let first_sync = recorded
        .journal
        .iter()
        .position(|op| matches!(op, Op::Sync { inode } if segments.contains(inode)))
        .expect("the run flushed a segment");
    // Every segment write before that flush reaches the disk as zeros: the
    // batch the flush acknowledged is not there.
    let mut journal = recorded.journal.clone();
    for op in journal.iter_mut().take(first_sync) {
        if let Op::Write { inode, bytes, .. } = op {
            if segments.contains(inode) {
                *bytes = std::sync::Arc::from(vec![0u8; bytes.len()]);
            }
        }
    }
    let broken = Recorded { journal, events: recorded.events, seed: recorded.seed };
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| crash_everywhere(broken)));
    assert!(caught.is_err(), "losing a flushed batch went unnoticed");
}

/// A body file's name is as durable as its envelope: a crash right after
/// the commit (nothing unflushed kept, the directory as of its last flush)
/// finds the body file. Before the committer flushed the directory with
/// the batch's body files, the name could be lost with the envelope
/// durable (strict POSIX: fsync(2) of a file does not make its name
/// durable).
#[test]
fn a_body_file_is_found_after_a_crash_right_after_its_commit() {
    run(|| {
        Box::pin(async {
            let disk = SimDisk::new(31, DISK_CAPACITY_BYTES);
            let (clock, _) = Clock::manual(START_UNIX_MS);
            let queue = open_on(&disk, clock.clone()).await.unwrap();
            let tasks = start_tasks(&queue);
            let events = Rc::new(std::cell::RefCell::new(Vec::new()));
            // The first batch opens the head log's first segment, and that
            // flushes the directory; the body file is created after it.
            let small = accept(queue.clone(), disk.clone(), b"Subject: s\r\n\r\nsmall\r\n".to_vec(), events.clone());
            small.await.expect("committed");
            let body = vec![b'x'; 10_000];
            let env = accept(queue.clone(), disk.clone(), body.clone(), events).await.expect("committed");
            drop(tasks);
            drop(queue);
            disk.crash(CrashMode::Nothing);
            let queue = open_on(&disk, clock).await.unwrap();
            let recovered = queue.take_ready().await;
            assert_eq!(recovered.len(), 2);
            assert_eq!(recovered[1].id, env.id);
            queue.check_body(&recovered[1]).await.expect("the body file survived the crash");
        })
    });
}
