//! Tests of the queue on a real directory with faults injected: group
//! commit, what a failed flush, a full disk, a short or torn write (of a
//! segment or of a body file) acknowledges (nothing), recovery after each,
//! the body check at delivery, garbage collection and the retry runners;
//! how errors are classified; and one test on a real, small, full file
//! system.

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
        handoff_envelopes_max: 16,
        body_sync: crate::queue::BodySyncMode::Each,
        body_store: crate::queue::BodyStore::Files,
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
    let queue = Queue::open_with(storage, 0, params, Clock::System).await.unwrap();
    let fresh = queue.take_ready().await;
    for kind in [LogKind::Head, LogKind::Retry] {
        glommio::spawn_local(queue.clone().run_committer(kind)).detach();
    }
    glommio::spawn_local(queue.clone().run_collector()).detach();
    Opened { queue, fresh, faults }
}

fn template(id: &str) -> Envelope {
    Envelope {
        id: id.to_string(),
        sender: crate::smtp::address::ReversePath::Path(stored_address("s@example.org").unwrap()),
        recipients: vec![Recipient {
            address: stored_address("r@example.net").unwrap(),
            state: RcptState::Pending,
            last_reply: String::new(),
            folder: None,
            dsn: Default::default(),
        }],
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
        headers_prepended: Vec::new(),
        replica_of: None,
        held: false,
        auth: None,
        dsn: Default::default(),
        delay_warned: false,
    }
}

/// Receives and commits a message as ingress does: a failed write aborts.
async fn accept<S: Storage + 'static>(queue: &Queue<S>, body: &[u8]) -> Result<Envelope, QueueError> {
    let mut writer = queue.create().await?;
    for chunk in body.chunks(1000) {
        if let Err(e) = writer.write(chunk).await {
            writer.abort().await;
            return Err(e);
        }
    }
    let env = template(writer.id());
    writer.commit(queue, env).await?;
    // Committed: handed to delivery, which here is the test.
    let mut handed = queue.take_ready().await;
    assert_eq!(handed.len(), 1, "the commit hands exactly its message over");
    Ok(handed.remove(0))
}

fn unix_now_ms() -> u64 {
    crate::clock::system_unix_ms()
}

/// A body larger than `params().inline_max_bytes`: it gets a body file.
fn large_body(size_bytes: usize) -> Vec<u8> {
    (0..size_bytes).map(|i| b'a' + (i % 26) as u8).collect()
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
            // One more flush wakes the collector. It removes files one by
            // one, behind whatever else the disk is flushing: wait for it,
            // within a bound.
            accept(&q.queue, b"late\r\n").await.unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while files(&dir, "head-").len() > 1 && std::time::Instant::now() < deadline {
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
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
            // Freed files are not reused across a restart: the sequence
            // numbers of the records left in them are not known to it.
            assert!(files(&dir, "free-").is_empty(), "{:?}", files(&dir, "free-"));
        })
    });
}

#[test]
fn runners_hand_back_deferred_messages_at_their_lag_and_after_a_restart() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("runner");
            let q = open(&dir, params()).await;
            for i in 0..2 {
                glommio::spawn_local(q.queue.clone().run_runner(i)).detach();
            }
            let mut env = accept(&q.queue, b"deferred\r\n").await.unwrap();
            env.attempt_count = 1;
            env.next_retry_unix_ms = unix_now_ms() + q.queue.retry_delay(1).as_millis() as u64;
            let deferred_at = std::time::Instant::now();
            q.queue.defer(&env).await.unwrap();
            let back = q.queue.take().await.unwrap();
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
            let back = q.queue.take().await.unwrap();
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
            for i in 0..2 {
                glommio::spawn_local(q.queue.clone().run_runner(i)).detach();
            }
            let back = q.queue.take().await.unwrap();
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

// --- Errors classified by errno, however they are wrapped ---------------

/// The error glommio returns from a file operation (`create_enhanced`).
fn glommio_enhanced(errno: i32, op: &'static str) -> glommio::GlommioError<()> {
    glommio::GlommioError::EnhancedIoError {
        source: std::io::Error::from_raw_os_error(errno),
        op,
        path: Some(PathBuf::from("/spool/shard-0/head-0000000000000002.seg")),
        fd: Some(7),
    }
}

/// A wrapper of our own around a wrapped error, reached through `source()`.
#[derive(Debug, thiserror::Error)]
#[error("while opening a segment: {source}")]
struct Opening {
    #[source]
    source: storage::FileOpError,
}

fn is_452(error: &QueueError) -> bool {
    matches!(error, QueueError::NoSpace(_)) && error.reply().summary().starts_with("452 4.3.1")
}

fn is_451(error: &QueueError) -> bool {
    matches!(error, QueueError::Io(_)) && error.reply().summary().starts_with("451 4.3.0")
}

#[test]
fn full_disk_errors_are_452_however_they_are_wrapped() {
    use std::io::{Error, ErrorKind};
    for errno in [libc::ENOSPC, libc::EDQUOT] {
        // glommio's error itself, and our conversion of it.
        let error = QueueError::from(glommio_enhanced(errno, "Pre-allocate space"));
        assert!(is_452(&error), "{error:?}");
        let converted = storage::io_error(glommio_enhanced(errno, "Pre-allocate space"));
        assert_eq!(storage::errno_of(&converted), Some(errno));
        assert!(
            converted.to_string().contains("Pre-allocate space /spool/shard-0/head-0000000000000002.seg"),
            "{converted}"
        );
        // glommio's own conversion to io::Error drops the errno (the
        // source becomes text), keeping only the kind.
        let lossy = Error::from(glommio_enhanced(errno, "Writing"));
        assert_eq!(lossy.raw_os_error(), None);
        assert!(is_452(&QueueError::from(lossy)));
        // Plain, and an io::Error inside an io::Error of another kind.
        assert!(is_452(&QueueError::from(glommio::GlommioError::<()>::IoError(Error::from_raw_os_error(errno)))));
        assert!(is_452(&QueueError::from(Error::from_raw_os_error(errno))));
        let nested = Error::other(Error::from_raw_os_error(errno));
        assert_eq!(nested.kind(), ErrorKind::Other);
        assert!(is_452(&QueueError::from(nested)));
        // Deeper: a custom error whose source chain ends in the errno.
        let source = storage::FileOpError { op: "Syncing", path: "x".into(), source: Error::from_raw_os_error(errno) };
        let deep = Error::other(Opening { source });
        assert_eq!(storage::errno_of(&deep), Some(errno));
        assert!(is_452(&QueueError::from(deep)));
    }
    // Anything else is a 451.
    assert!(is_451(&QueueError::from(glommio_enhanced(libc::EIO, "Syncing"))));
    assert!(is_451(&QueueError::from(Error::from(glommio_enhanced(libc::EIO, "Syncing")))));
    assert!(is_451(&QueueError::from(Error::other("record refused"))));
    assert!(is_451(&QueueError::from(Error::other(Error::from_raw_os_error(libc::EBADF)))));
    assert_eq!(storage::errno_of(&Error::other("no errno here")), None);
    // A failed batch hands every waiter a copy with the same class.
    assert!(is_452(&QueueError::from(glommio_enhanced(libc::ENOSPC, "Writing")).duplicate()));
    assert!(is_451(&QueueError::from(glommio_enhanced(libc::EIO, "Writing")).duplicate()));
}

// --- Body files behind the storage trait --------------------------------

#[test]
fn a_full_disk_while_writing_a_body_file_is_452_and_leaves_nothing() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("body-enospc");
            let q = open(&dir, params()).await;
            let body = large_body(5000);
            // The file cannot be created, or a write fails, or a write is short.
            q.faults.body_create_error.set(Some(libc::ENOSPC));
            let error = accept(&q.queue, &body).await.unwrap_err();
            assert!(is_452(&error), "{error:?}");
            q.faults.body_write_error.set(Some(libc::ENOSPC));
            let error = accept(&q.queue, &body).await.unwrap_err();
            assert!(is_452(&error), "{error:?}");
            q.faults.body_write_error.set(Some(libc::EDQUOT));
            let error = accept(&q.queue, &body).await.unwrap_err();
            assert!(is_452(&error), "{error:?}");
            q.faults.body_write_short_bytes.set(Some(100));
            let error = accept(&q.queue, &body).await.unwrap_err();
            assert!(is_452(&error), "a short write is a full disk: {error:?}");
            assert!(q.faults.body_writes.get() >= 3);
            assert!(files(&dir, "body-").is_empty(), "no orphan body file: {:?}", files(&dir, "body-"));
            assert_eq!(q.queue.live_count(), 0, "nothing acknowledged");
            assert_eq!(q.faults.writes.get(), 0, "no envelope was written");
            // The next message goes through.
            let ok = accept(&q.queue, &body).await.unwrap();
            assert_eq!(files(&dir, "body-"), vec![format!("body-{}", ok.id)]);
            drop(q);
            let q = open(&dir, params()).await;
            assert_eq!(q.fresh.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), vec![ok.id.as_str()]);
        })
    });
}

#[test]
fn a_failed_body_flush_acknowledges_nothing() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("body-sync");
            let q = open(&dir, params()).await;
            q.faults.body_sync_error.set(Some(libc::EIO));
            let error = accept(&q.queue, &large_body(5000)).await.unwrap_err();
            assert!(is_451(&error), "{error:?}");
            assert_eq!(q.faults.body_syncs.get(), 1);
            assert_eq!(q.faults.writes.get(), 0, "writer rule 4: no envelope before the body is durable");
            assert!(files(&dir, "body-").is_empty());
            assert_eq!(q.queue.live_count(), 0);
            // A full disk reported by the flush is a 452.
            q.faults.body_sync_error.set(Some(libc::ENOSPC));
            assert!(is_452(&accept(&q.queue, &large_body(5000)).await.unwrap_err()));
            drop(q);
            let q = open(&dir, params()).await;
            assert!(q.fresh.is_empty());
        })
    });
}

/// `count` messages with body files committed by concurrent sessions in one
/// batch: the committer (with a commit delay) waits for the records the
/// sessions announced, and the announcements end once all are staged.
async fn commit_together(q: &Opened, count: usize) -> Vec<Result<String, QueueError>> {
    assert!(!q.queue.params.commit_delay.is_zero(), "the batch forms under a commit delay");
    let announced: Vec<RecordExpected> = (0..count).map(|_| q.queue.expect_record()).collect();
    let staged_before = q.queue.logs[0].borrow().staged.len();
    let sessions: Vec<_> = (0..count)
        .map(|_| {
            let queue = q.queue.clone();
            glommio::spawn_local(async move {
                let mut writer = queue.create().await?;
                writer.write(&large_body(5000)).await?;
                let env = template(writer.id());
                let id = env.id.clone();
                writer.commit(&queue, env).await.map(|()| id)
            })
        })
        .collect();
    while q.queue.logs[0].borrow().staged.len() < staged_before + count {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    drop(announced);
    let mut results = Vec::new();
    for session in sessions {
        results.push(session.await);
    }
    results
}

#[test]
fn body_files_of_one_batch_are_flushed_together_and_one_that_fails_leaves_the_others() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("body-group");
            let q = open(&dir, QueueParams { commit_delay: Duration::from_secs(10), ..params() }).await;
            const MESSAGES: usize = 8;
            // The next body flush fails (the first the committer runs).
            q.faults.body_sync_error.set(Some(libc::EIO));
            let mut committed = Vec::new();
            let mut refused = 0;
            for result in commit_together(&q, MESSAGES).await {
                match result {
                    Ok(id) => committed.push(id),
                    Err(error) => {
                        assert!(is_451(&error), "{error:?}");
                        refused += 1;
                    }
                }
            }
            assert_eq!((committed.len(), refused), (MESSAGES - 1, 1));
            assert_eq!(q.faults.body_syncs.get(), MESSAGES as u64, "every body flushed by the committer");
            assert_eq!(q.faults.writes.get(), 1, "one batch for all the messages");
            committed.sort();
            let mut bodies = files(&dir, "body-");
            bodies.sort();
            let expected: Vec<String> = committed.iter().map(|id| format!("body-{id}")).collect();
            assert_eq!(bodies, expected, "the refused message's body file is gone");
            assert_eq!(q.queue.live_count(), MESSAGES - 1);
            drop(q);
            let q = open(&dir, params()).await;
            let mut recovered: Vec<String> = q.fresh.iter().map(|e| e.id.clone()).collect();
            recovered.sort();
            assert_eq!(recovered, committed);
            for env in &q.fresh {
                q.queue.check_body(env).await.unwrap();
            }
        })
    });
}

#[test]
fn with_syncfs_one_file_system_flush_covers_the_batch_and_its_failure_refuses_the_batch() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("body-syncfs");
            let syncfs = crate::queue::BodySyncMode::Syncfs;
            let q =
                open(&dir, QueueParams { body_sync: syncfs, commit_delay: Duration::from_secs(10), ..params() }).await;
            const MESSAGES: usize = 6;
            for result in commit_together(&q, MESSAGES).await {
                result.unwrap();
            }
            assert_eq!(q.faults.filesystem_syncs.get(), 1, "one syncfs for the batch");
            assert_eq!(q.faults.body_syncs.get(), 0, "no fdatasync per body file");
            assert_eq!(files(&dir, "body-").len(), MESSAGES);
            // A failed syncfs: no body of the batch is known durable, so no
            // envelope of it is written and every session hears 451.
            q.faults.body_sync_error.set(Some(libc::EIO));
            let writes = q.faults.writes.get();
            for result in commit_together(&q, MESSAGES).await {
                assert!(is_451(&result.unwrap_err()));
            }
            assert_eq!(q.faults.writes.get(), writes, "writer rule 4");
            assert_eq!(files(&dir, "body-").len(), MESSAGES, "the refused bodies are removed");
            assert_eq!(q.queue.live_count(), MESSAGES);
        })
    });
}

#[test]
fn a_failed_envelope_flush_keeps_the_body_only_when_the_envelope_may_be_on_disk() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("body-keep");
            let q = open(&dir, params()).await;
            accept(&q.queue, b"first\r\n").await.unwrap();
            // The segment's fdatasync fails: the envelope may be on disk, so
            // its body stays for the recovery that might find it.
            q.faults.sync_error.set(Some(libc::EIO));
            let body = large_body(5000);
            let lost = accept(&q.queue, &body).await;
            assert!(is_451(&lost.unwrap_err()));
            let kept = files(&dir, "body-");
            assert_eq!(kept.len(), 1, "{kept:?}");
            // No segment can be created: nothing was written, the body goes.
            q.faults.create_error.set(Some(libc::ENOSPC));
            q.queue.logs[0].borrow_mut().rotate_requested = true;
            assert!(is_452(&accept(&q.queue, &body).await.unwrap_err()));
            assert_eq!(files(&dir, "body-"), kept);
            drop(q);
            // After a restart the body serves its recovered envelope, or, if
            // the envelope did not reach the disk, it is an orphan and goes.
            let q = open(&dir, params()).await;
            let recovered: Vec<&Envelope> = q.fresh.iter().filter(|e| matches!(e.body, Body::File { .. })).collect();
            match recovered.as_slice() {
                [] => assert!(files(&dir, "body-").is_empty()),
                [env] => {
                    assert_eq!(kept, vec![format!("body-{}", env.id)]);
                    q.queue.check_body(env).await.unwrap();
                }
                more => panic!("{more:?}"),
            }
        })
    });
}

// --- The body check at delivery -----------------------------------------

#[test]
fn check_body_refuses_truncated_changed_and_missing_body_files() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("check-body");
            let q = open(&dir, params()).await;
            // Larger than one check chunk, so the check reads several times.
            let body = large_body(BODY_CHECK_CHUNK_BYTES * 2 + 1234);
            let mut envs = Vec::new();
            for _ in 0..4 {
                envs.push(accept(&q.queue, &body).await.unwrap());
            }
            for env in &envs {
                q.queue.check_body(env).await.unwrap();
            }
            let inline = accept(&q.queue, b"small\r\n").await.unwrap();
            q.queue.check_body(&inline).await.unwrap();
            let path = |env: &Envelope| q.queue.body_path(&env.id);
            // Truncated.
            std::fs::OpenOptions::new().write(true).open(path(&envs[0])).unwrap().set_len(1000).unwrap();
            let damaged = q.queue.check_body(&envs[0]).await.unwrap_err();
            assert_eq!(damaged.id, envs[0].id);
            assert_eq!(damaged.file, format!("body-{}", envs[0].id));
            assert!(
                matches!(damaged.problem, BodyProblem::Size { found_bytes: 1000, expected_bytes } if expected_bytes == body.len() as u64),
                "{damaged}"
            );
            // One byte changed, far into the file.
            let mut bytes = std::fs::read(path(&envs[1])).unwrap();
            bytes[BODY_CHECK_CHUNK_BYTES + 17] ^= 0x20;
            std::fs::write(path(&envs[1]), &bytes).unwrap();
            let damaged = q.queue.check_body(&envs[1]).await.unwrap_err();
            assert!(matches!(damaged.problem, BodyProblem::Checksum { .. }), "{damaged}");
            // Gone.
            std::fs::remove_file(path(&envs[2])).unwrap();
            let damaged = q.queue.check_body(&envs[2]).await.unwrap_err();
            assert!(matches!(damaged.problem, BodyProblem::Missing), "{damaged}");
            assert!(damaged.to_string().contains("missing"));
            // Longer than it should be.
            let mut longer = std::fs::read(path(&envs[3])).unwrap();
            longer.push(b'\n');
            std::fs::write(path(&envs[3]), &longer).unwrap();
            assert!(matches!(q.queue.check_body(&envs[3]).await.unwrap_err().problem, BodyProblem::Size { .. }));
        })
    });
}

#[test]
fn a_torn_body_write_is_caught_by_the_body_check() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("body-torn");
            let q = open(&dir, params()).await;
            // The write claims success but only its first 512 bytes land.
            q.faults.body_write_torn_bytes.set(Some(512));
            let env = accept(&q.queue, &large_body(5000)).await.unwrap();
            let damaged = q.queue.check_body(&env).await.unwrap_err();
            assert!(
                matches!(damaged.problem, BodyProblem::Size { found_bytes: 512, expected_bytes: 5000 }),
                "{damaged}"
            );
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
            let error = match Queue::open_with(storage, 0, params(), Clock::System).await {
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

// --- Recovery reads bounded segments -----------------------------------

#[test]
fn a_segment_larger_than_the_segment_size_stops_the_start() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("too-large");
            let q = open(&dir, params()).await;
            let acked = accept(&q.queue, b"kept\r\n").await.unwrap();
            q.queue.close();
            drop(q);
            let name = "head-0000000000000001.seg";
            let size = std::fs::metadata(dir.join(name)).unwrap().len();
            assert_eq!(size, params().segment_size_bytes);
            std::fs::OpenOptions::new().write(true).open(dir.join(name)).unwrap().set_len(size * 2).unwrap();
            let storage = FaultStorage::new(DiskStorage::open(&dir).await.unwrap());
            let error = match Queue::open_with(storage, 0, params(), Clock::System).await {
                Ok(_) => panic!("a segment larger than queue.segment_size_bytes was read"),
                Err(error) => error,
            };
            let text = error.to_string();
            assert!(
                text.contains(name) && text.contains(&format!("{}", size * 2)) && text.contains(&size.to_string()),
                "{text}"
            );
            match error.get_ref().and_then(|e| e.downcast_ref::<recover::RecoveryError>()) {
                Some(recover::RecoveryError::SegmentTooLarge { file, size_bytes, size_bytes_max }) => {
                    assert_eq!((file.as_str(), *size_bytes, *size_bytes_max), (name, size * 2, size));
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(std::fs::metadata(dir.join(name)).unwrap().len(), size * 2, "left as it was");
            // With the setting raised to its size, it is read and nothing is lost.
            let mut larger = params();
            larger.segment_size_bytes = size * 2;
            let q = open(&dir, larger).await;
            assert_eq!(q.fresh.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), vec![acked.id.as_str()]);
        })
    });
}

// --- Counters that must not wrap -----------------------------------------

#[test]
fn expected_records_are_counted_up_and_down() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("expected");
            let q = open(&dir, params()).await;
            let first = q.queue.expect_record();
            let second = q.queue.expect_record();
            assert_eq!(q.queue.expected.get(), 2);
            drop(first);
            drop(second);
            assert_eq!(q.queue.expected.get(), 0);
        })
    });
}

#[test]
#[should_panic(expected = "invariant: one expected record counted per RecordExpected alive")]
fn an_expected_record_dropped_twice_is_caught() {
    let counter = Rc::new(Cell::new(0usize));
    drop(RecordExpected { expected: counter });
}

// --- A real, small, full file system --------------------------------------

/// A 64 MiB ext4 image on a loop device, mounted; everything undone on drop,
/// also when the test panics.
struct SmallFileSystem {
    image: PathBuf,
    mount_point: PathBuf,
    device: Option<String>,
    mounted: bool,
}

const SMALL_FILE_SYSTEM_BYTES: u64 = 64 << 20;

fn command(program: &str, args: &[&str]) -> Result<String, String> {
    let output = std::process::Command::new(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
    if !output.status.success() {
        return Err(format!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Why the small file system cannot be made here, if it cannot.
fn small_file_system_missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root (loop devices and mount need it)".into());
    }
    let dirs = ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"];
    for tool in ["losetup", "mkfs.ext4", "mount", "umount"] {
        if !dirs.iter().any(|d| std::path::Path::new(d).join(tool).exists()) {
            return Some(format!("{tool} not found"));
        }
    }
    None
}

impl SmallFileSystem {
    /// None (with a printed note) where the tools or root are missing,
    /// unless `RINGPOST_TESTS_PREFLIGHT=1` says they were checked: then
    /// their absence fails the test.
    fn make(name: &str) -> Option<SmallFileSystem> {
        if let Some(why) = small_file_system_missing() {
            if std::env::var("RINGPOST_TESTS_PREFLIGHT").as_deref() == Ok("1") {
                panic!("the full-disk test cannot run although RINGPOST_TESTS_PREFLIGHT=1: {why}");
            }
            eprintln!("skipping the full-disk test on a small file system: {why}");
            return None;
        }
        let base = std::env::temp_dir().join(format!("ringpost-smallfs-{name}-{}", std::process::id()));
        let mut fs = SmallFileSystem {
            image: base.with_extension("img"),
            mount_point: base.with_extension("mnt"),
            device: None,
            mounted: false,
        };
        let image = std::fs::File::create(&fs.image).unwrap();
        image.set_len(SMALL_FILE_SYSTEM_BYTES).unwrap();
        drop(image);
        let image_text = fs.image.to_str().unwrap().to_string();
        command("mkfs.ext4", &["-q", "-F", "-m", "0", &image_text]).unwrap();
        fs.device = Some(command("losetup", &["--find", "--show", &image_text]).unwrap());
        std::fs::create_dir_all(&fs.mount_point).unwrap();
        command("mount", &[fs.device.as_deref().unwrap(), fs.mount_point.to_str().unwrap()]).unwrap();
        fs.mounted = true;
        Some(fs)
    }
}

/// Writes a file in `mount_point` until its file system is full; returns
/// its path. Flushing can hand back blocks reserved while writing, so it
/// fills, flushes, and fills again.
fn fill_file_system(mount_point: &std::path::Path) -> PathBuf {
    use std::io::Write;
    let path = mount_point.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    for _round in 0..3 {
        for chunk_bytes in [1 << 20, 4096, 1] {
            let chunk = vec![0x5a; chunk_bytes];
            // A limit on the loop: the file system is 64 MiB.
            for _ in 0..(SMALL_FILE_SYSTEM_BYTES as usize / chunk_bytes + 1) {
                match file.write(&chunk) {
                    Ok(n) if n == chunk_bytes => continue,
                    Ok(_) => break,
                    Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                    Err(e) => panic!("filling: {e}"),
                }
            }
        }
        let _ = file.sync_all();
    }
    path
}

impl Drop for SmallFileSystem {
    fn drop(&mut self) {
        if self.mounted {
            let mount_point = self.mount_point.to_str().unwrap_or_default().to_string();
            if command("umount", &[&mount_point]).is_err() {
                // Still busy: detach it now, the kernel finishes when it can.
                let _ = command("umount", &["-l", &mount_point]);
            }
        }
        if let Some(device) = self.device.take() {
            let _ = command("losetup", &["-d", &device]);
        }
        let _ = std::fs::remove_dir(&self.mount_point);
        let _ = std::fs::remove_file(&self.image);
    }
}

#[test]
fn full_small_file_system_is_452_and_the_queue_works_again_once_space_is_freed() {
    let Some(fs) = SmallFileSystem::make("full") else { return };
    let mount_point = fs.mount_point.clone();
    let spool = fs.mount_point.join("spool");
    // The executor ends (and every file of the queue is closed) before `fs`
    // is dropped, so the unmount is not refused as busy.
    run(move || {
        Box::pin(async move {
            let dir = spool.join("shard-0");
            std::fs::create_dir_all(&dir).unwrap();
            let q = open(&dir, params()).await;
            let filler = fill_file_system(&mount_point);
            // The first batch needs a segment: its preallocation fails.
            let error = accept(&q.queue, b"no room\r\n").await.unwrap_err();
            assert!(is_452(&error), "segment preallocation on a full disk: {error:?}");
            assert!(files(&dir, "head-").is_empty(), "no empty segment left behind: {:?}", files(&dir, "head-"));
            // A large message: its body file cannot be written.
            let error = accept(&q.queue, &large_body(256 * 1024)).await.unwrap_err();
            assert!(is_452(&error), "body file on a full disk: {error:?}");
            assert!(files(&dir, "body-").is_empty(), "no orphan body file: {:?}", files(&dir, "body-"));
            assert_eq!(q.queue.live_count(), 0);
            // Room again: the queue works without a restart.
            std::fs::remove_file(&filler).unwrap();
            // SAFETY: sync has no preconditions.
            unsafe { libc::sync() };
            let small = accept(&q.queue, b"room again\r\n").await.unwrap();
            let large = accept(&q.queue, &large_body(256 * 1024)).await.unwrap();
            q.queue.check_body(&large).await.unwrap();
            q.queue.close();
            drop(q);
            let q = open(&dir, params()).await;
            let ids: Vec<&str> = q.fresh.iter().map(|e| e.id.as_str()).collect();
            assert_eq!(ids, vec![small.id.as_str(), large.id.as_str()]);
            q.queue.close();
        })
    });
    drop(fs);
}

/// Commits a message and leaves it in the hand-off (no delivery takes it).
async fn accept_untaken<S: Storage + 'static>(queue: &Queue<S>, body: &[u8]) -> String {
    let mut writer = queue.create().await.unwrap();
    writer.write(body).await.unwrap();
    let id = writer.id().to_string();
    writer.commit(queue, template(&id)).await.unwrap();
    id
}

fn start_runners<S: Storage + 'static>(queue: &Rc<Queue<S>>) {
    for i in 0..queue.params().retry_lags.len() {
        glommio::spawn_local(queue.clone().run_runner(i)).detach();
    }
}

/// What `take` has within `wait`, if anything.
async fn take_within<S: Storage + 'static>(queue: &Queue<S>, wait: Duration) -> Option<Envelope> {
    futures_lite::future::or(queue.take(), async {
        glommio::timer::sleep(wait).await;
        None
    })
    .await
}

#[test]
fn a_held_message_is_skipped_by_the_runners_stays_held_across_a_restart_and_comes_back_when_released() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("hold");
            let q = open(&dir, params()).await;
            start_runners(&q.queue);
            let mut env = accept(&q.queue, b"held\r\n").await.unwrap();
            env.attempt_count = 1;
            env.next_retry_unix_ms = unix_now_ms() + 100;
            q.queue.defer(&env).await.unwrap();
            assert_eq!(q.queue.hold(&env.id).await.unwrap(), admin::Done::Held);
            assert!(q.queue.entry(&env.id).unwrap().held);
            assert_eq!(q.queue.hold(&env.id).await.unwrap(), admin::Done::AlreadyHeld);
            assert!(matches!(q.queue.flush(&env.id), Err(admin::AdminError::Held(_))));
            // Past both lags: neither runner hands it over.
            assert!(take_within(&q.queue, Duration::from_millis(700)).await.is_none());
            q.queue.close();
            drop(q);

            let q = open(&dir, params()).await;
            assert!(q.fresh.is_empty());
            let entry = q.queue.entry(&env.id).expect("still queued");
            assert!(entry.held && entry.location.log == LogKind::Retry, "recovered held");
            start_runners(&q.queue);
            assert!(take_within(&q.queue, Duration::from_millis(700)).await.is_none(), "held after the restart");

            assert_eq!(q.queue.unhold(&env.id).await.unwrap(), admin::Done::Released);
            let back = take_within(&q.queue, Duration::from_millis(500)).await.expect("due once released");
            assert_eq!((back.id.as_str(), back.held, back.attempt_count), (env.id.as_str(), false, 1));
            q.queue.complete(&back, CompletionReason::Done).unwrap();
            // The completion is staged; the committer writes it in its own
            // time, which a loaded machine stretches.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while q.queue.live_count() != 0 && std::time::Instant::now() < deadline {
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(q.queue.live_count(), 0);
            q.queue.close();
            drop(q);
            let q = open(&dir, params()).await;
            assert_eq!(q.queue.live_count(), 0, "released and delivered: gone after a restart");
        })
    });
}

#[test]
fn holding_a_message_never_attempted_takes_it_out_of_the_hand_off_durably() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("hold-fresh");
            let q = open(&dir, params()).await;
            let id = accept_untaken(&q.queue, b"fresh\r\n").await;
            assert!(q.queue.entry(&id).unwrap().in_flight, "in the hand-off");
            assert_eq!(q.queue.hold(&id).await.unwrap(), admin::Done::Held);
            assert!(q.queue.take_ready().await.is_empty(), "the copy in the hand-off is skipped");
            q.queue.close();
            drop(q);

            let q = open(&dir, params()).await;
            assert!(q.fresh.is_empty(), "the held replacement supersedes the head-log envelope");
            let entry = q.queue.entry(&id).unwrap();
            assert!(entry.held && !entry.in_flight);
            assert_eq!(entry.attempt_count, 1, "a replacement's count is at least 1");
            start_runners(&q.queue);
            assert_eq!(q.queue.unhold(&id).await.unwrap(), admin::Done::Released);
            assert_eq!(q.queue.flush(&id).unwrap(), admin::Done::Flushed);
            let back = take_within(&q.queue, Duration::from_millis(50)).await.expect("flushed: due at once");
            assert_eq!(back.id, id);
            assert!(take_within(&q.queue, Duration::from_millis(300)).await.is_none(), "attempted once, not twice");
        })
    });
}

#[test]
fn a_hold_during_an_attempt_is_carried_by_the_attempts_replacement() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("hold-attempt");
            let q = open(&dir, params()).await;
            let mut env = accept(&q.queue, b"attempted\r\n").await.unwrap();
            assert!(q.queue.entry(&env.id).unwrap().attempting);
            assert_eq!(q.queue.hold(&env.id).await.unwrap(), admin::Done::HeldAfterAttempt);
            assert!(matches!(q.queue.delete(&env.id).await, Err(admin::AdminError::Attempting(_))));
            env.attempt_count = 1;
            env.next_retry_unix_ms = unix_now_ms();
            q.queue.defer(&env).await.unwrap();
            q.queue.close();
            drop(q);
            let q = open(&dir, params()).await;
            assert!(q.queue.entry(&env.id).unwrap().held);
        })
    });
}

#[test]
fn the_delay_warning_and_the_dsn_parameters_survive_a_hold_a_release_and_a_restart() {
    use crate::smtp::dsn::{MailDsn, Notify, RcptDsn, Ret};
    run(|| {
        Box::pin(async {
            let dir = tempdir("delay-warned");
            let q = open(&dir, params()).await;
            start_runners(&q.queue);
            let mut env = accept(&q.queue, b"warned\r\n").await.unwrap();
            env.attempt_count = 1;
            env.next_retry_unix_ms = unix_now_ms() + 100;
            env.delay_warned = true;
            env.dsn = MailDsn { ret: Some(Ret::Full), envid: Some("ID+2B1".into()) };
            env.recipients[0].dsn = RcptDsn { notify: Some(Notify::DELAY), orcpt: Some("rfc822;o@x".into()) };
            q.queue.defer(&env).await.unwrap();
            // Hold and release each write the envelope again.
            assert_eq!(q.queue.hold(&env.id).await.unwrap(), admin::Done::Held);
            q.queue.close();
            drop(q);

            let q = open(&dir, params()).await;
            start_runners(&q.queue);
            assert_eq!(q.queue.unhold(&env.id).await.unwrap(), admin::Done::Released);
            let back = take_within(&q.queue, Duration::from_millis(500)).await.expect("due once released");
            assert_eq!(back.id, env.id);
            assert!(back.delay_warned, "the warning is not sent again");
            assert_eq!(back.dsn, env.dsn);
            assert_eq!(back.recipients[0].dsn, env.recipients[0].dsn);
            q.queue.complete(&back, CompletionReason::Done).unwrap();
        })
    });
}

#[test]
fn a_deleted_message_is_gone_with_its_body_file_and_stays_gone_after_a_restart() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("delete");
            let q = open(&dir, params()).await;
            start_runners(&q.queue);
            let mut env = accept(&q.queue, &large_body(5000)).await.unwrap();
            assert_eq!(files(&dir, "body-").len(), 1);
            env.attempt_count = 1;
            env.next_retry_unix_ms = unix_now_ms() + 3_600_000;
            q.queue.defer(&env).await.unwrap();
            let fresh_id = accept_untaken(&q.queue, b"in the hand-off\r\n").await;
            assert_eq!(q.queue.delete(&env.id).await.unwrap(), admin::Done::Deleted);
            assert_eq!(q.queue.delete(&fresh_id).await.unwrap(), admin::Done::Deleted);
            assert!(q.queue.entry(&env.id).is_none() && q.queue.entry(&fresh_id).is_none());
            assert!(q.queue.take_ready().await.is_empty(), "a deleted message in the hand-off is skipped");
            assert!(matches!(q.queue.delete(&env.id).await, Err(admin::AdminError::Unknown(_))));
            assert!(matches!(q.queue.flush("not an id").unwrap_err(), admin::AdminError::Unknown(_)));
            glommio::timer::sleep(Duration::from_millis(100)).await;
            assert!(files(&dir, "body-").is_empty(), "the body file goes with the message");
            q.queue.close();
            drop(q);
            let q = open(&dir, params()).await;
            assert_eq!(q.queue.live_count(), 0, "deleted: not recovered");
            assert!(q.fresh.is_empty());
        })
    });
}

#[test]
fn flush_makes_a_deferred_message_due_at_once() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("flush");
            let q = open(&dir, params()).await;
            start_runners(&q.queue);
            let mut env = accept(&q.queue, b"later\r\n").await.unwrap();
            assert_eq!(q.queue.flush(&env.id).unwrap(), admin::Done::AlreadyDue, "being attempted");
            env.attempt_count = 1;
            env.next_retry_unix_ms = unix_now_ms() + 3_600_000;
            q.queue.defer(&env).await.unwrap();
            assert_eq!(q.queue.flush(&env.id).unwrap(), admin::Done::Flushed);
            let back = take_within(&q.queue, Duration::from_millis(50)).await.expect("due now");
            assert_eq!(back.id, env.id);
            assert_eq!(q.queue.live_ids(), vec![env.id.clone()]);
            // A claim (for a bounce) of a message being attempted is refused.
            assert!(matches!(q.queue.claim(&env.id).await, Err(admin::AdminError::Attempting(_))));
        })
    });
}

#[test]
fn the_oldest_runner_writes_a_held_message_forward_and_it_stays_held() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("carry");
            let q = open(&dir, params()).await;
            start_runners(&q.queue);
            let mut env = accept(&q.queue, b"carried\r\n").await.unwrap();
            env.attempt_count = 1;
            env.next_retry_unix_ms = unix_now_ms() + 100;
            q.queue.defer(&env).await.unwrap();
            q.queue.hold(&env.id).await.unwrap();
            let held_at = q.queue.entry(&env.id).unwrap().location;
            // Past the longest lag (300 ms): the oldest runner met it.
            assert!(take_within(&q.queue, Duration::from_millis(800)).await.is_none(), "still held");
            let entry = q.queue.entry(&env.id).unwrap();
            assert!(entry.held && !entry.in_flight);
            assert!(entry.location != held_at, "written again at the write point");
            assert_eq!(entry.attempt_count, 1, "written unchanged");
            q.queue.close();
            drop(q);
            let q = open(&dir, params()).await;
            assert!(q.queue.entry(&env.id).unwrap().held, "held after a restart");
            start_runners(&q.queue);
            assert_eq!(q.queue.delete(&env.id).await.unwrap(), admin::Done::Deleted);
            assert_eq!(q.queue.live_count(), 0);
        })
    });
}

/// The extents of a file as FIEMAP reports them: (offset, length,
/// unwritten), or None where the file system does not report extents.
fn extents(path: &std::path::Path) -> Option<Vec<(u64, u64, bool)>> {
    use std::os::fd::AsRawFd;
    const FS_IOC_FIEMAP: libc::c_ulong = 0xC020_660B;
    const FIEMAP_FLAG_SYNC: u64 = 1;
    const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x800;
    const EXTENTS_MAX: usize = 64;
    // struct fiemap: fm_start, fm_length, fm_flags | fm_mapped_extents << 32,
    // fm_extent_count | fm_reserved << 32; then 56-byte struct fiemap_extent each.
    let mut buffer = vec![0u64; 4 + 7 * EXTENTS_MAX];
    buffer[1] = u64::MAX;
    buffer[2] = FIEMAP_FLAG_SYNC;
    buffer[3] = EXTENTS_MAX as u64;
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: the buffer is a struct fiemap with room for the extents its fm_extent_count says.
    if unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_FIEMAP, buffer.as_mut_ptr()) } != 0 {
        return None;
    }
    let mapped = (buffer[2] >> 32) as usize;
    Some(
        (0..mapped.min(EXTENTS_MAX))
            .map(|i| {
                let e = &buffer[4 + 7 * i..4 + 7 * (i + 1)];
                (e[0], e[2], (e[5] as u32) & FIEMAP_EXTENT_UNWRITTEN != 0)
            })
            .collect(),
    )
}

#[test]
fn batches_land_in_blocks_zeroed_ahead_of_them() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("initialize");
            let mut p = params();
            p.segment_size_bytes = 16 << 20;
            let q = open(&dir, p).await;
            accept(&q.queue, b"one\r\n").await.unwrap();
            // The first batch (header block and one record block) zeroed
            // the 4 MiB after itself, before its flush.
            assert_eq!(*q.faults.initialized.borrow(), vec![(8192, 4 << 20)]);
            for _ in 0..20 {
                accept(&q.queue, b"more\r\n").await.unwrap();
            }
            assert_eq!(q.faults.initialized.borrow().len(), 1, "batches inside the zeroed blocks zero nothing");
            let name = files(&dir, "head-").remove(0);
            let path = dir.join(&name);
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(bytes.len(), 16 << 20);
            let records_end = 4096 * 22;
            assert!(bytes[records_end..(4 << 20) + 8192].iter().all(|&b| b == 0));
            // Where the file system reports extents, none of the zeroed
            // part is unwritten any more, and the rest still is.
            if let Some(extents) = extents(&path) {
                let unwritten_at = |offset: u64| {
                    extents.iter().any(|&(at, len, unwritten)| unwritten && at <= offset && offset < at + len)
                };
                assert!(!unwritten_at(0) && !unwritten_at(4096 * 22) && !unwritten_at((4 << 20) + 4096), "{extents:?}");
                assert!(unwritten_at(8 << 20), "past the zeroed part the segment is as fallocate left it: {extents:?}");
            }
            drop(q);
            let mut p = params();
            p.segment_size_bytes = 16 << 20;
            let q = open(&dir, p).await;
            assert_eq!(q.fresh.len(), 21, "every message is read back");
        })
    });
}

// --- The body log ---------------------------------------------------------

fn log_params() -> QueueParams {
    QueueParams { body_store: crate::queue::BodyStore::Log, ..params() }
}

/// Waits (a little) until the collector has deleted what it may.
async fn collected(q: &Opened, dir: &std::path::Path, bodylog_files: usize) -> Vec<String> {
    for _ in 0..200 {
        if files(dir, "bodylog-").len() == bodylog_files {
            break;
        }
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    let (kept, collectable) = q.queue.body_log_segments();
    assert!(collectable.is_empty(), "collectable but kept: {collectable:?} of {kept:?}");
    files(dir, "bodylog-")
}

#[test]
fn log_bodies_survive_a_restart_are_copied_to_a_body_file_when_deferred_and_their_segments_go() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("bodylog");
            let q = open(&dir, log_params()).await;
            let bodies: Vec<Vec<u8>> = (0..3).map(|i| large_body(5000 + i)).collect();
            let mut envs = Vec::new();
            for body in &bodies {
                envs.push(accept(&q.queue, body).await.unwrap());
            }
            let small = accept(&q.queue, b"Subject: small\r\n\r\nhi\r\n").await.unwrap();
            assert!(matches!(small.body, Body::Inline(_)));
            for (env, body) in envs.iter().zip(&bodies) {
                let Body::Log { size_bytes, .. } = env.body else { panic!("{:?}", env.body) };
                assert_eq!(size_bytes, body.len() as u64);
                q.queue.check_body(env).await.unwrap();
                assert_eq!(q.queue.read_body(env).await.as_deref(), Some(&body[..]));
            }
            assert!(files(&dir, "body-").is_empty(), "no body file: {:?}", files(&dir, "body-"));
            assert_eq!(files(&dir, "bodylog-").len(), 1, "the three bodies share a segment");
            drop(q);
            let q = open(&dir, log_params()).await;
            assert_eq!(q.fresh, [envs.clone(), vec![small.clone()]].concat());
            for (env, body) in envs.iter().zip(&bodies) {
                assert_eq!(q.queue.read_body(env).await.as_deref(), Some(&body[..]), "after a restart");
                // Readers outside the queue read it through its pieces.
                let mut read = Vec::new();
                std::io::Read::read_to_end(&mut q.queue.stored_body(env).sync_reader(), &mut read).unwrap();
                assert_eq!(read, *body);
            }
            // Deferred: the body moves to a body file with the replacement.
            let mut deferred = envs[0].clone();
            deferred.attempt_count = 1;
            deferred.next_retry_unix_ms = unix_now_ms() + 3_600_000;
            q.queue.defer(&deferred).await.unwrap();
            assert_eq!(files(&dir, "body-"), vec![format!("body-{}", deferred.id)]);
            assert_eq!(std::fs::read(q.queue.body_path(&deferred.id)).unwrap(), bodies[0]);
            // The others done: nothing names the segment, which goes.
            q.queue.complete(&envs[1], CompletionReason::Done).unwrap();
            q.queue.complete(&envs[2], CompletionReason::Done).unwrap();
            q.queue.complete(&small, CompletionReason::Done).unwrap();
            glommio::timer::sleep(Duration::from_millis(400)).await;
            assert!(collected(&q, &dir, 0).await.is_empty(), "the segment is deleted");
            drop(q);
            // The deferred message is read from its body file after a restart.
            let q = open(&dir, log_params()).await;
            assert_eq!(q.queue.live_ids(), vec![deferred.id.clone()]);
            let back = q.queue.read_envelope_at(q.queue.entry(&deferred.id).unwrap().location).await.unwrap();
            assert!(matches!(back.body, Body::File { .. }), "{:?}", back.body);
            assert_eq!(q.queue.read_body(&back).await.as_deref(), Some(&bodies[0][..]));
        })
    });
}

#[test]
fn bodies_of_one_batch_share_one_flush_of_their_segment_and_a_failed_one_refuses_them() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("bodylog-group");
            // Large enough for every body of the test.
            let params =
                QueueParams { commit_delay: Duration::from_secs(10), segment_size_bytes: 1 << 20, ..log_params() };
            let q = open(&dir, params.clone()).await;
            const MESSAGES: usize = 8;
            let header_syncs = q.faults.body_syncs.get();
            for result in commit_together(&q, MESSAGES).await {
                result.unwrap();
            }
            assert_eq!(q.faults.body_syncs.get() - header_syncs, 1, "one fdatasync of the segment for the batch");
            assert_eq!(q.faults.writes.get(), 1, "one batch");
            assert!(files(&dir, "body-").is_empty());
            // The segment's flush fails: no envelope of the batch is written,
            // every session hears 451, and the next bodies go to a new segment.
            let segments = files(&dir, "bodylog-");
            q.faults.body_sync_error.set(Some(libc::EIO));
            for result in commit_together(&q, MESSAGES).await {
                assert!(is_451(&result.unwrap_err()));
            }
            assert_eq!(q.faults.writes.get(), 1, "writer rule 4");
            assert_eq!(q.queue.take_ready().await.len(), MESSAGES, "the first batch's messages, handed over");
            let ok = accept(&q.queue, &large_body(5000)).await.unwrap();
            let now = files(&dir, "bodylog-");
            assert!(now.len() == segments.len() + 1 || now.len() == segments.len(), "{segments:?} {now:?}");
            let Body::Log { extents, .. } = &ok.body else { panic!() };
            let first = queue_format::body_extents(extents).next().unwrap().segment_sequence;
            assert!(!segments.contains(&bodylog::segment_name(first)), "a segment whose flush failed takes no more");
            assert_eq!(q.queue.live_count(), MESSAGES + 1);
            drop(q);
            let q = open(&dir, params).await;
            assert_eq!(q.fresh.len(), MESSAGES + 1);
            for env in &q.fresh {
                q.queue.check_body(env).await.unwrap();
            }
        })
    });
}

#[test]
fn a_full_disk_in_the_body_log_is_452_and_acknowledges_nothing() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("bodylog-enospc");
            let q = open(&dir, log_params()).await;
            let body = large_body(5000);
            // No segment can be created, or a write fails, or one is short.
            q.faults.body_create_error.set(Some(libc::ENOSPC));
            assert!(is_452(&accept(&q.queue, &body).await.unwrap_err()));
            assert!(files(&dir, "bodylog-").is_empty(), "no segment left behind");
            q.faults.body_write_error.set(Some(libc::ENOSPC));
            assert!(is_452(&accept(&q.queue, &body).await.unwrap_err()));
            q.faults.body_write_short_bytes.set(Some(100));
            let error = accept(&q.queue, &body).await.unwrap_err();
            assert!(is_452(&error), "a short write is a full disk: {error:?}");
            assert_eq!(q.queue.live_count(), 0, "nothing acknowledged");
            assert_eq!(q.faults.writes.get(), 0, "no envelope was written");
            let ok = accept(&q.queue, &body).await.unwrap();
            q.queue.check_body(&ok).await.unwrap();
            // Segments a failed write left are deleted once nothing names them.
            assert_eq!(collected(&q, &dir, 1).await.len(), 1, "only the segment in use stays");
            drop(q);
            let q = open(&dir, log_params()).await;
            assert_eq!(q.fresh.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), vec![ok.id.as_str()]);
            q.queue.check_body(&q.fresh[0]).await.unwrap();
        })
    });
}

#[test]
fn a_failed_envelope_flush_keeps_the_body_log_segment_for_the_next_start() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("bodylog-keep");
            let q = open(&dir, log_params()).await;
            accept(&q.queue, b"first\r\n").await.unwrap();
            q.faults.sync_error.set(Some(libc::EIO));
            let body = large_body(5000);
            assert!(is_451(&accept(&q.queue, &body).await.unwrap_err()));
            // The envelope may be on disk: the segment with its body stays.
            glommio::timer::sleep(Duration::from_millis(50)).await;
            let kept = files(&dir, "bodylog-");
            assert_eq!(kept.len(), 1, "{kept:?}");
            assert!(q.queue.body_log_segments().1.is_empty());
            drop(q);
            // After a restart the body serves its recovered envelope, or, if
            // the envelope did not reach the disk, the segment goes.
            let q = open(&dir, log_params()).await;
            let recovered: Vec<&Envelope> = q.fresh.iter().filter(|e| matches!(e.body, Body::Log { .. })).collect();
            match recovered.as_slice() {
                [] => assert!(files(&dir, "bodylog-").is_empty()),
                [env] => {
                    assert_eq!(files(&dir, "bodylog-"), kept);
                    assert_eq!(q.queue.read_body(env).await.as_deref(), Some(&body[..]));
                }
                more => panic!("{more:?}"),
            }
        })
    });
}

#[test]
fn check_body_refuses_a_body_log_segment_cut_short_or_changed() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("bodylog-check");
            let q = open(&dir, QueueParams { segment_size_bytes: 1 << 20, ..log_params() }).await;
            // Several extents: more than one write's worth each.
            let body = large_body(BODY_WRITE_BYTES * 2 + 1234);
            let a = accept(&q.queue, &body).await.unwrap();
            let b = accept(&q.queue, &body).await.unwrap();
            let Body::Log { extents, .. } = &b.body else { panic!() };
            let extents: Vec<_> = queue_format::body_extents(extents).collect();
            assert!(!extents.is_empty());
            assert_eq!(extents.iter().map(|e| u64::from(e.size_bytes)).sum::<u64>(), body.len() as u64);
            let path = dir.join(bodylog::segment_name(extents[0].segment_sequence));
            // One byte of the first body changed.
            let Body::Log { extents: a_extents, .. } = &a.body else { panic!() };
            let a_first = queue_format::body_extents(a_extents).next().unwrap();
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[a_first.offset_bytes as usize + 17] ^= 0x20;
            std::fs::write(&path, &bytes).unwrap();
            let damaged = q.queue.check_body(&a).await.unwrap_err();
            assert!(matches!(damaged.problem, BodyProblem::Checksum { .. }), "{damaged}");
            assert!(damaged.file.contains("bodylog-"), "{}", damaged.file);
            // The segment cut inside the second body.
            let last = extents.last().unwrap();
            let cut = u64::from(last.offset_bytes) + u64::from(last.size_bytes) - 10;
            std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(cut).unwrap();
            let damaged = q.queue.check_body(&b).await.unwrap_err();
            assert!(
                matches!(damaged.problem, BodyProblem::Size { expected_bytes, found_bytes }
                    if expected_bytes == body.len() as u64 && found_bytes == expected_bytes - 10),
                "{damaged}"
            );
            // Gone.
            std::fs::remove_file(&path).unwrap();
            assert!(matches!(q.queue.check_body(&b).await.unwrap_err().problem, BodyProblem::Missing));
        })
    });
}

#[test]
fn a_torn_body_log_write_is_caught_by_the_body_check() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("bodylog-torn");
            let q = open(&dir, log_params()).await;
            accept(&q.queue, &large_body(5000)).await.unwrap();
            // The write claims success but only its first 512 bytes land.
            q.faults.body_write_torn_bytes.set(Some(512));
            let env = accept(&q.queue, &large_body(5000)).await.unwrap();
            let damaged = q.queue.check_body(&env).await.unwrap_err();
            assert!(matches!(damaged.problem, BodyProblem::Checksum { .. } | BodyProblem::Size { .. }), "{damaged}");
        })
    });
}

#[test]
fn past_the_body_log_s_segment_bound_a_body_goes_to_a_body_file() {
    run(|| {
        Box::pin(async {
            let dir = tempdir("bodylog-bound");
            let q = open(&dir, log_params()).await;
            // One body per 64 KiB segment: each keeps a segment of its own.
            let body = large_body(40_000);
            let mut envs = Vec::new();
            for _ in 0..bodylog::SEGMENTS_MAX {
                envs.push(accept(&q.queue, &body).await.unwrap());
            }
            assert!(envs.iter().all(|env| matches!(env.body, Body::Log { .. })));
            assert_eq!(files(&dir, "bodylog-").len(), bodylog::SEGMENTS_MAX);
            let spilled = accept(&q.queue, &body).await.unwrap();
            assert!(matches!(spilled.body, Body::File { .. }), "{:?}", spilled.body);
            assert_eq!(files(&dir, "body-"), vec![format!("body-{}", spilled.id)]);
            assert_eq!(q.queue.read_body(&spilled).await.as_deref(), Some(&body[..]));
            // Delivered: the segments go but the one appended to.
            for env in envs.iter().chain([&spilled]) {
                q.queue.complete(env, CompletionReason::Done).unwrap();
            }
            glommio::timer::sleep(Duration::from_millis(400)).await;
            assert_eq!(collected(&q, &dir, 1).await.len(), 1);
            assert!(files(&dir, "body-").is_empty());
            assert!(matches!(accept(&q.queue, &body).await.unwrap().body, Body::Log { .. }), "room again");
        })
    });
}
