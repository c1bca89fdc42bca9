//! Tests of the queue on a real directory with faults injected: group
//! commit, what a failed flush, a full disk, a short or torn write
//! acknowledges (nothing), recovery after each, garbage collection and the
//! retry runners.

use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use glommio::LocalExecutorBuilder;
use queue_format::{CompletionReason, LogKind};

use super::storage::{DiskStorage, FaultStorage, Faults};
use super::*;

fn run<T: 'static>(make: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static) -> T
where
    T: Send,
{
    LocalExecutorBuilder::default()
        .spawn(move || async move { make().await })
        .expect("executor starts")
        .join()
        .expect("executor ends")
}

fn tempdir(name: &str) -> PathBuf {
    thread_local!(static N: Cell<u32> = const { Cell::new(0) });
    let n = N.with(|n| {
        n.set(n.get() + 1);
        n.get()
    });
    let dir = std::env::temp_dir().join(format!("ringpost-queue-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn params() -> QueueParams {
    QueueParams {
        inline_max_bytes: 2048,
        segment_size_bytes: 64 * 1024,
        commit_delay: Duration::ZERO,
        retry_lags: vec![Duration::from_millis(100), Duration::from_millis(300)],
    }
}

struct Opened {
    queue: Rc<Queue<FaultStorage>>,
    fresh: Vec<Envelope>,
    faults: Rc<Faults>,
}

async fn open(dir: &std::path::Path, params: QueueParams) -> Opened {
    let storage = FaultStorage::new(DiskStorage::open(dir).await.unwrap());
    let faults = storage.faults.clone();
    let (queue, fresh) = Queue::open_with(storage, 0, params).await.unwrap();
    for kind in [LogKind::Head, LogKind::Retry] {
        glommio::spawn_local(queue.clone().run_committer(kind)).detach();
    }
    glommio::spawn_local(queue.clone().run_collector()).detach();
    Opened { queue, fresh, faults }
}

fn template(id: &str) -> Envelope {
    Envelope {
        id: id.to_string(),
        sender: "s@example.org".into(),
        recipients: vec![Recipient { address: "r@example.net".into(), state: RcptState::Pending, last_reply: String::new() }],
        arrival_unix_ms: unix_now_ms(),
        next_retry_unix_ms: unix_now_ms(),
        attempt_count: 0,
        size_bytes: 0,
        body_8bit: false,
        body_binary: false,
        smtputf8: false,
        client: "[127.0.0.1]:1".into(),
        helo: "test".into(),
        body: Body::Inline(Default::default()),
    }
}

async fn accept<S: Storage + 'static>(queue: &Queue<S>, body: &[u8]) -> Result<Envelope, QueueError> {
    let mut writer = queue.create().await?;
    for chunk in body.chunks(1000) {
        writer.write(chunk).await?;
    }
    let env = template(writer.id());
    writer.commit(queue, env).await
}

fn files(dir: &std::path::Path, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

#[test]
fn accepted_messages_survive_a_restart_inline_and_in_body_files() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("restart");
            let q = open(&dir, params()).await;
            let small = accept(&q.queue, b"Subject: small\r\n\r\nhi\r\n").await.unwrap();
            let large_body: Vec<u8> = (0..5000u32).map(|i| b'a' + (i % 26) as u8).collect();
            let large = accept(&q.queue, &large_body).await.unwrap();
            assert!(matches!(small.body, Body::Inline(_)));
            assert!(matches!(large.body, Body::File { size_bytes: 5000, .. }));
            assert_eq!(files(&dir, "body-"), vec![format!("body-{}", large.id)], "one file, for the large one");
            drop(q);
            let q = open(&dir, params()).await;
            assert_eq!(q.fresh, vec![small.clone(), large.clone()]);
            assert_eq!(std::fs::read(q.queue.body_path(&large.id)).unwrap(), large_body);
            // Completed: gone after the next restart, body file too.
            q.queue.complete(&small, CompletionReason::Done).unwrap();
            q.queue.complete(&large, CompletionReason::Done).unwrap();
            // Completions ride the next flush, or their own after a while.
            glommio::timer::sleep(Duration::from_millis(400)).await;
            assert!(files(&dir, "body-").is_empty());
            drop(q);
            let q = open(&dir, params()).await;
            assert!(q.fresh.is_empty());
            assert_eq!(q.queue.live_count(), 0);
        })
    });
}

#[test]
fn concurrent_acceptances_share_flushes() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("group");
            let q = open(&dir, params()).await;
            let tasks: Vec<_> = (0..50)
                .map(|i| {
                    let queue = q.queue.clone();
                    glommio::spawn_local(async move { accept(&queue, format!("message {i}\r\n").as_bytes()).await })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            let stats = q.queue.stats(LogKind::Head);
            assert!(stats.flushes <= 3, "50 records staged together took {} flushes", stats.flushes);
            assert!(q.faults.syncs.get() <= 3);
            assert_eq!(q.queue.live_count(), 50);
        })
    });
}

#[test]
fn failed_flush_acknowledges_nothing_and_the_next_batch_uses_a_new_segment() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("syncfail");
            let q = open(&dir, params()).await;
            let first = accept(&q.queue, b"first\r\n").await.unwrap();
            q.faults.sync_error.set(Some(libc::EIO));
            let error = accept(&q.queue, b"second\r\n").await.unwrap_err();
            assert!(error.reply().summary().starts_with("451 4.3.0"), "{}", error.reply().summary());
            // The server goes on: the next message lands in a new segment.
            let third = accept(&q.queue, b"third\r\n").await.unwrap();
            assert_eq!(q.queue.entry(&third.id).unwrap().location.segment_sequence, 2);
            drop(q);
            let q = open(&dir, params()).await;
            let ids: Vec<&str> = q.fresh.iter().map(|e| e.id.as_str()).collect();
            // The failed batch may or may not be on disk (a duplicate at
            // worst); the acknowledged ones are.
            assert!(ids.contains(&first.id.as_str()) && ids.contains(&third.id.as_str()), "{ids:?}");
        })
    });
}

#[test]
fn full_disk_is_452_and_short_write_is_refused() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("enospc");
            let q = open(&dir, params()).await;
            accept(&q.queue, b"first\r\n").await.unwrap();
            q.faults.write_error.set(Some(libc::ENOSPC));
            let error = accept(&q.queue, b"second\r\n").await.unwrap_err();
            assert!(error.reply().summary().starts_with("452 4.3.1"), "{}", error.reply().summary());
            q.faults.write_short_bytes.set(Some(0));
            let error = accept(&q.queue, b"third\r\n").await.unwrap_err();
            assert_eq!(error.reply().code, 452);
            // A new segment cannot be created either: still a 452, still serving.
            q.faults.create_error.set(Some(libc::ENOSPC));
            q.queue.logs[0].borrow_mut().rotate_requested = true;
            assert_eq!(accept(&q.queue, b"fourth\r\n").await.unwrap_err().reply().code, 452);
            let fifth = accept(&q.queue, b"fifth\r\n").await.unwrap();
            drop(q);
            let q = open(&dir, params()).await;
            assert!(q.fresh.iter().any(|e| e.id == fifth.id));
        })
    });
}

#[test]
fn torn_write_then_crash_keeps_every_acknowledged_record() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("torn");
            let q = open(&dir, params()).await;
            let mut acked = Vec::new();
            for i in 0..5 {
                acked.push(accept(&q.queue, format!("before {i}\r\n").as_bytes()).await.unwrap().id);
            }
            // A batch of several records torn after its first sector, and the
            // process dies before fdatasync returns (here: it fails).
            q.faults.write_torn_bytes.set(Some(512));
            q.faults.sync_error.set(Some(libc::EIO));
            let tasks: Vec<_> = (0..10)
                .map(|i| {
                    let queue = q.queue.clone();
                    glommio::spawn_local(async move {
                        accept(&queue, format!("{}\r\n", "x".repeat(300 + i)).as_bytes()).await
                    })
                })
                .collect();
            for task in tasks {
                assert!(task.await.is_err(), "nothing of a failed batch is acknowledged");
            }
            drop(q);
            let q = open(&dir, params()).await;
            for id in &acked {
                assert!(q.fresh.iter().any(|e| &e.id == id), "acknowledged {id} lost");
            }
            assert!(q.fresh.len() < 15, "records after the tear are not trusted");
            // And writing goes on after the restart.
            accept(&q.queue, b"after\r\n").await.unwrap();
        })
    });
}

#[test]
fn dead_segments_are_collected_oldest_first_and_live_ones_kept() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("gc");
            let q = open(&dir, params()).await;
            // ~1.1 KiB records: a 64 KiB segment holds about 50.
            let body = vec![b'z'; 1000];
            let keep = accept(&q.queue, &body).await.unwrap();
            let mut done = Vec::new();
            for _ in 0..200 {
                done.push(accept(&q.queue, &body).await.unwrap());
            }
            let head_before = files(&dir, "head-");
            assert!(head_before.len() >= 4, "{head_before:?}");
            for env in &done {
                q.queue.complete(env, CompletionReason::Done).unwrap();
            }
            glommio::timer::sleep(Duration::from_millis(400)).await;
            // The first segment holds a live message: nothing may go yet, as
            // segments go oldest first.
            assert_eq!(files(&dir, "head-")[0], head_before[0]);
            assert_eq!(q.queue.segment_counts().0, files(&dir, "head-").len());
            assert!(files(&dir, "free-").is_empty());
            q.queue.complete(&keep, CompletionReason::Done).unwrap();
            // One more flush wakes the collector.
            accept(&q.queue, b"late\r\n").await.unwrap();
            glommio::timer::sleep(Duration::from_millis(100)).await;
            let head_after = files(&dir, "head-");
            assert_eq!(head_after.len(), 1, "only the active segment is left: {head_after:?}");
            assert_eq!(files(&dir, "free-").len(), log::FREE_SEGMENTS_MAX, "freed files kept for reuse");
            // Reused files serve the next segments. (One message at a time
            // is one 4 KiB batch each: 15 per segment.)
            let created_before = q.queue.storage.created.borrow().len();
            for _ in 0..25 {
                accept(&q.queue, &body).await.unwrap();
            }
            assert_eq!(q.queue.storage.created.borrow().len(), created_before, "no new file while freed ones exist");
            drop(q);
            let q = open(&dir, params()).await;
            assert_eq!(q.fresh.len(), 26);
        })
    });
}

#[test]
fn runners_hand_back_deferred_messages_at_their_lag_and_after_a_restart() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("runner");
            let q = open(&dir, params()).await;
            let (sender, receiver) = glommio::channels::local_channel::new_bounded(10);
            let sender = Rc::new(sender);
            for i in 0..2 {
                glommio::spawn_local(q.queue.clone().run_runner(i, sender.clone())).detach();
            }
            let mut env = accept(&q.queue, b"deferred\r\n").await.unwrap();
            env.attempt_count = 1;
            env.next_retry_unix_ms = unix_now_ms() + q.queue.retry_delay(1).as_millis() as u64;
            let deferred_at = std::time::Instant::now();
            q.queue.defer(&env).await.unwrap();
            let back = receiver.recv().await.unwrap();
            let waited = deferred_at.elapsed();
            assert_eq!(back.id, env.id);
            assert_eq!(back.attempt_count, 1);
            assert!(waited >= Duration::from_millis(90) && waited < Duration::from_millis(290), "{waited:?}");
            // Second deferral: the second runner (300 ms).
            let mut env = back;
            env.attempt_count = 2;
            env.next_retry_unix_ms = unix_now_ms() + q.queue.retry_delay(2).as_millis() as u64;
            let deferred_at = std::time::Instant::now();
            q.queue.defer(&env).await.unwrap();
            let back = receiver.recv().await.unwrap();
            assert!(deferred_at.elapsed() >= Duration::from_millis(290), "{:?}", deferred_at.elapsed());
            assert_eq!(back.attempt_count, 2);
            // Deferred once more, then the process stops: after the restart the
            // runners find it in the retry log.
            let mut env = back;
            env.attempt_count = 3;
            env.next_retry_unix_ms = unix_now_ms() + 200;
            q.queue.defer(&env).await.unwrap();
            q.queue.close();
            drop(q);
            let q = open(&dir, params()).await;
            assert!(q.fresh.is_empty(), "the head-log envelope is superseded");
            assert_eq!(q.queue.live_count(), 1);
            let (sender, receiver) = glommio::channels::local_channel::new_bounded(10);
            let sender = Rc::new(sender);
            for i in 0..2 {
                glommio::spawn_local(q.queue.clone().run_runner(i, sender.clone())).detach();
            }
            let back = receiver.recv().await.unwrap();
            assert_eq!((back.id.as_str(), back.attempt_count), (env.id.as_str(), 3));
            assert!(unix_now_ms() + 20 >= env.next_retry_unix_ms, "not handed back before it was due");
            q.queue.complete(&back, CompletionReason::Done).unwrap();
            glommio::timer::sleep(Duration::from_millis(400)).await;
            assert_eq!(q.queue.live_count(), 0);
        })
    });
}

#[test]
fn a_completion_whose_flush_failed_is_written_again() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("restage");
            let q = open(&dir, params()).await;
            let env = accept(&q.queue, b"done soon\r\n").await.unwrap();
            q.faults.sync_error.set(Some(libc::EIO));
            q.queue.complete(&env, CompletionReason::Done).unwrap();
            // Its own flush (after the completion delay) fails; it is staged
            // again and the next flush carries it.
            glommio::timer::sleep(Duration::from_millis(700)).await;
            assert_eq!(q.queue.stats(LogKind::Head).failures, 1);
            assert_eq!(q.queue.live_count(), 0);
            drop(q);
            let q = open(&dir, params()).await;
            assert!(q.fresh.is_empty());
        })
    });
}

// --- Queue ids and format versions as the spec states them --------------

/// Overwrites the queue id of the record at `location` and seals it again
/// (a fresh CRC32C): a well-framed record whose id is not hex.
fn replace_queue_id(dir: &std::path::Path, location: log::Location, id: &[u8; 16]) {
    let name = log::segment_name(location.log, location.segment_sequence);
    let mut bytes = std::fs::read(dir.join(&name)).unwrap();
    let start = location.offset as usize;
    let end = start + location.size_bytes as usize;
    let payload = start + queue_format::RECORD_HEADER_SIZE_BYTES;
    bytes[payload..payload + 16].copy_from_slice(id);
    let checksum = queue_format::checksum::crc32c(&bytes[start + 4..end]);
    bytes[start..start + 4].copy_from_slice(&checksum.to_le_bytes());
    std::fs::write(dir.join(&name), &bytes).unwrap();
}

#[test]
fn a_record_with_a_queue_id_that_is_not_hex_is_refused_at_recovery() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("bad-id");
            let q = open(&dir, params()).await;
            // Retry log: a deferred message. Head log: three batches.
            let mut deferred = accept(&q.queue, b"deferred\r\n").await.unwrap();
            deferred.attempt_count = 1;
            deferred.next_retry_unix_ms = unix_now_ms() + 60_000;
            q.queue.defer(&deferred).await.unwrap();
            let a = accept(&q.queue, b"a\r\n").await.unwrap();
            let b = accept(&q.queue, b"b\r\n").await.unwrap();
            let c = accept(&q.queue, b"c\r\n").await.unwrap();
            let location = q.queue.entry(&b.id).unwrap().location;
            q.queue.close();
            drop(q);
            replace_queue_id(&dir, location, b"00064723bb4a01zz");
            // Opens without a panic: the record is refused, the segment's log
            // ends there (reported with its offset), the other segments are read.
            let q = open(&dir, params()).await;
            let fresh: Vec<&str> = q.fresh.iter().map(|e| e.id.as_str()).collect();
            assert_eq!(fresh, vec![a.id.as_str()], "B is refused; C follows it in its segment and is not trusted");
            assert!(q.queue.entry(&deferred.id).is_some(), "the retry segment is read");
            assert!(q.queue.entry(&c.id).is_none());
            assert!(q.queue.entry("not a queue id").is_none());
            let view = tools::scan_shard(&dir).unwrap();
            let damaged: Vec<_> = view.scan.damaged().collect();
            assert_eq!(damaged.len(), 1);
            let problem = damaged[0].problem.as_deref().unwrap();
            assert_eq!(damaged[0].name, "head-0000000000000001.seg");
            assert!(problem.contains(&format!("offset {}", location.offset)), "{problem}");
            assert!(problem.contains("queue id is not 16 upper-case hex digits"), "{problem}");
            // The queue goes on.
            accept(&q.queue, b"after\r\n").await.unwrap();
        })
    });
}

#[test]
fn a_version_1_segment_is_read() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("version-1");
            let q = open(&dir, params()).await;
            let acked = accept(&q.queue, b"written by version 1\r\n").await.unwrap();
            q.queue.close();
            drop(q);
            // The same segment as a version 1 writer made it.
            let name = "head-0000000000000001.seg";
            let mut bytes = std::fs::read(dir.join(name)).unwrap();
            bytes[8..10].copy_from_slice(&1u16.to_le_bytes());
            let checksum = queue_format::checksum::crc32c(&bytes[..60]);
            bytes[60..64].copy_from_slice(&checksum.to_le_bytes());
            std::fs::write(dir.join(name), &bytes).unwrap();
            let q = open(&dir, params()).await;
            assert_eq!(q.fresh, vec![acked]);
        })
    });
}

#[test]
fn a_segment_of_a_format_version_this_build_does_not_read_stops_the_start() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("version");
            let q = open(&dir, params()).await;
            accept(&q.queue, b"kept\r\n").await.unwrap();
            q.queue.close();
            drop(q);
            let name = "head-0000000000000001.seg";
            let mut bytes = std::fs::read(dir.join(name)).unwrap();
            let future = queue_format::FORMAT_VERSION + 1;
            bytes[8..10].copy_from_slice(&future.to_le_bytes());
            let checksum = queue_format::checksum::crc32c(&bytes[..60]);
            bytes[60..64].copy_from_slice(&checksum.to_le_bytes());
            std::fs::write(dir.join(name), &bytes).unwrap();
            let storage = FaultStorage::new(DiskStorage::open(&dir).await.unwrap());
            let error = match Queue::open_with(storage, 0, params()).await {
                Ok(_) => panic!("a segment of version {future} was opened"),
                Err(error) => error,
            };
            match error.get_ref().and_then(|e| e.downcast_ref::<recover::RecoveryError>()) {
                Some(recover::RecoveryError::UnsupportedVersion { file, version }) => {
                    assert_eq!((file.as_str(), *version), (name, future));
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(std::fs::read(dir.join(name)).unwrap(), bytes, "not recycled");
        })
    });
}
