//! The queue: where an accepted message becomes durable, where delivery
//! records what became of it, and where a restart finds it again.
//!
//! Place in the pipeline: ingress streams a message into a
//! [`MessageWriter`] while it is received and calls [`MessageWriter::commit`];
//! the 250 after DATA is sent only when `commit` returned, that is when the
//! envelope record (and, for a large message, its body in the body log or
//! its body file) is on stable storage. The committed message then goes to delivery through the
//! queue's one bounded hand-off (`handoff.rs`, [`Queue::take`]), as do the
//! messages recovered at start-up and those the retry runners find due.
//! Delivery records each attempt with [`Queue::defer`] (a replacement
//! envelope in the retry log) or [`Queue::complete`].
//!
//! Layout (`queue-format/SPEC.md` has the bytes): per shard a head log and a
//! retry log, each a sequence of fixed-size segment files
//! (`head-<seq>.seg`, `retry-<seq>.seg`), written in 4 KiB-aligned O_DIRECT
//! batches; a message of at most `queue.inline_max_bytes` lives inside its
//! envelope record (no file of its own), a larger one in the body log
//! (`bodylog-<seq>.seg`, many bodies to a file: `bodylog.rs`) until its
//! first attempt ends, and in `body-<id>` once deferred (or from the start
//! with `queue.body_store = "files"`).
//!
//! Group commit: a record is staged in its log; the log's committer takes
//! everything staged since its last flush, writes it as one batch, issues
//! one fdatasync and only then wakes the sessions whose records were in it.
//! While that flush is in flight the next batch forms by itself.
//!
//! Garbage collection: the in-memory index knows the newest record of every
//! live message and counts the live records of every segment; a segment
//! whose records are all dead is deleted (or kept for reuse) whole, oldest
//! first, by the rules of SPEC section 13; a body log segment when no live
//! envelope names it.

pub mod admin;
mod bodylog;
mod envelope;
mod handoff;
pub mod log;
pub mod recover;
mod runner;
pub mod storage;
pub mod tools;

#[cfg(test)]
mod crash_tests;
#[cfg(test)]
pub mod simstorage;
#[cfg(test)]
mod tests;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use queue_format::{Completion, CompletionReason, LogKind, QueueId};

pub use bodylog::{BodyReader, StoredBody, SyncBodyReader};
pub use envelope::{
    body_file_id, id_text, parse_queue_id, queue_id_of, stored_address, Body, Envelope, RcptState, Recipient,
};
use log::{BodySync, Location, LogState, Staged, Waiter, FREE_SEGMENTS_MAX, STAGED_BYTES_MAX};
pub use runner::Span;
use storage::{BodyFile, DiskStorage, SegmentFile, Storage};

use crate::clock::Clock;
use crate::smtp::reply::{Enhanced, Reply};

/// Body bytes gathered before one write to a body file.
const BODY_WRITE_BYTES: usize = 64 * 1024;
/// Body bytes read at once when a body file's checksum is checked.
const BODY_CHECK_CHUNK_BYTES: usize = 256 * 1024;
/// Longest a completion waits for an acknowledgement's flush to ride
/// before it gets a flush of its own.
const COMPLETION_FLUSH_DELAY: Duration = Duration::from_millis(200);

/// Whole envelopes the hand-off holds per concurrent delivery attempt.
const HANDOFF_ENVELOPES_PER_ATTEMPT: usize = 4;

/// Segments recovery reads and decodes at once while the executor merges
/// an earlier one, each on a helper thread of the shard (it has
/// BLOCKING_THREADS_BASE of them at least): two keep a two-core machine's
/// cores busy and hold two segments' bytes in memory at most. The first
/// segment is read alone, so that the first merge starts as early as it
/// can.
const RECOVERY_SEGMENTS_IN_FLIGHT: usize = 2;

/// Allocations of this size and more get a mapping of their own, unmapped
/// when freed (glibc's starting threshold, kept fixed: see
/// [`fix_mmap_threshold`]).
const MMAP_THRESHOLD_BYTES: i32 = 128 << 10;

/// Free memory the allocator keeps at the top of a heap before it gives
/// it back: fixing the mapping threshold also stops glibc from raising
/// this one (from 128 KiB), and a heap top trimmed at each large free is
/// faulted in again at the next allocation.
const TRIM_THRESHOLD_BYTES: i32 = 8 << 20;

/// Fixes the allocator's threshold for allocations mapped on their own.
/// Left to itself glibc raises it to the size of each large block freed
/// (up to 32 MiB): once recovery frees its first segment's record list
/// (megabytes), the later ones and the scan's other large temporaries
/// come from the heaps instead, and part of what they leave stays
/// resident after the scan, which `malloc_trim` does not give back
/// (measured: 20 MiB for a million deferred messages in 64 MiB segments,
/// 89 MiB in 16 MiB segments). Fixed, every large temporary is unmapped
/// when freed. Process-wide and idempotent; every shard's recovery calls
/// it before its scan (whose `malloc_trim` then gives back what the
/// heaps' tops keep).
fn fix_mmap_threshold() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt(3) only changes the allocator's policy for later
    // allocations.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES);
    }
}

/// Index capacity recovery keeps whatever the spool held: more than four
/// times the live entries (and above this) is given back after the scan.
const INDEX_CAPACITY_KEPT: usize = 4096;

/// Why a message could not be made durable. Nothing was acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("spool disk full: {0}")]
    NoSpace(std::io::Error),
    #[error("spool I/O error: {0}")]
    Io(std::io::Error),
}

/// Classified by errno wherever it is wrapped ([`storage::is_no_space`]):
/// ENOSPC and EDQUOT are a full disk, whatever carries them.
impl From<std::io::Error> for QueueError {
    fn from(e: std::io::Error) -> Self {
        if storage::is_no_space(&e) {
            QueueError::NoSpace(e)
        } else {
            QueueError::Io(e)
        }
    }
}

impl From<glommio::GlommioError<()>> for QueueError {
    fn from(e: glommio::GlommioError<()>) -> Self {
        QueueError::from(storage::io_error(e))
    }
}

impl QueueError {
    /// The reply to the final dot when the commit failed (RFC 3463: 4.3.1
    /// mail system full, 4.3.0 other mail system problem).
    pub fn reply(&self) -> Reply {
        match self {
            QueueError::NoSpace(_) => {
                Reply::new(452, Enhanced(4, 3, 1), "Insufficient system storage, try again later")
            }
            QueueError::Io(_) => Reply::new(451, Enhanced(4, 3, 0), "Local error in processing, try again later"),
        }
    }

    /// The same error again, for every record of a failed batch.
    fn duplicate(&self) -> QueueError {
        let copy = |e: &std::io::Error| match e.raw_os_error() {
            Some(errno) => std::io::Error::from_raw_os_error(errno),
            None => std::io::Error::new(e.kind(), e.to_string()),
        };
        match self {
            QueueError::NoSpace(e) => QueueError::NoSpace(copy(e)),
            QueueError::Io(e) => QueueError::Io(copy(e)),
        }
    }
}

/// The queue settings a shard needs (from `[queue]`).
#[derive(Clone, Debug)]
pub struct QueueParams {
    pub inline_max_bytes: usize,
    pub segment_size_bytes: u64,
    pub commit_delay: Duration,
    pub retry_lags: Vec<Duration>,
    /// Whole envelopes waiting in the hand-off to delivery, at most.
    pub handoff_envelopes_max: usize,
    /// How a batch's body files are made durable (`queue.body_sync`).
    pub body_sync: BodySyncMode,
    /// Where the bodies of fresh messages larger than `inline_max_bytes`
    /// go (`queue.body_store`).
    pub body_store: BodyStore,
}

/// Where a fresh message's body larger than `queue.inline_max_bytes` is
/// kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyStore {
    /// Appended to the shard's body log, many bodies to a file, flushed
    /// once per batch (`bodylog.rs`).
    Log,
    /// A body file of its own (`body-<id>`).
    Files,
}

/// How the committer makes the body files of one batch durable before the
/// batch is written (writer rule 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodySyncMode {
    /// An fdatasync per body file, all in flight together.
    Each,
    /// One syncfs(2) of the spool's file system for the whole batch.
    Syncfs,
}

impl QueueParams {
    pub fn from_config(config: &crate::config::Config) -> QueueParams {
        let q = &config.queue;
        QueueParams {
            inline_max_bytes: q.inline_max_bytes as usize,
            segment_size_bytes: q.segment_size_bytes,
            commit_delay: Duration::from_micros(q.commit_delay_us as u64),
            retry_lags: q.retry_lags.iter().map(|lag| lag.0).collect(),
            handoff_envelopes_max: (config.delivery.max_concurrent_per_shard as usize)
                .saturating_mul(HANDOFF_ENVELOPES_PER_ATTEMPT)
                .max(1),
            body_sync: if q.body_sync == "syncfs" { BodySyncMode::Syncfs } else { BodySyncMode::Each },
            body_store: if q.body_store == "files" { BodyStore::Files } else { BodyStore::Log },
        }
    }
}

/// The index entry of a live message: where its newest envelope is.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub location: Location,
    pub attempt_count: u16,
    pub retry_next_unix_ms: u64,
    pub body_file: bool,
    /// In the hand-off or with delivery (fresh, recovered, or handed over
    /// by a runner), or a record about it is being written by an
    /// administration command: no runner hands it over again.
    pub in_flight: bool,
    /// Taken by delivery for an attempt (or claimed by `queue bounce` or
    /// `queue delete`): a copy still waiting in the hand-off is skipped.
    pub attempting: bool,
    /// Held by an operator: never attempted until released. Durable once
    /// the replacement envelope with the HELD flag is (see `admin.rs`).
    pub held: bool,
}

/// Recovery fills the index straight from the scan: a message found in
/// the head log is fresh (with delivery at once), one in the retry log
/// waits for its runner.
impl recover::Live for Entry {
    #[inline]
    fn of(candidate: recover::Candidate) -> Entry {
        Entry {
            location: candidate.location,
            attempt_count: candidate.attempt_count,
            retry_next_unix_ms: candidate.retry_next_unix_ms,
            body_file: candidate.body_file,
            in_flight: candidate.location.log == LogKind::Head,
            attempting: false,
            held: candidate.held,
        }
    }

    fn attempt_count(&self) -> u16 {
        self.attempt_count
    }

    fn location(&self) -> Location {
        self.location
    }

    fn body_file(&self) -> bool {
        self.body_file
    }
}

/// Records per flush, in power-of-two buckets: bucket i counts flushes of
/// [2^i, 2^(i+1)) records.
#[derive(Clone, Debug, Default)]
pub struct CommitStats {
    pub flushes: u64,
    pub records: u64,
    pub bytes: u64,
    pub failures: u64,
    pub batch_records_buckets: [u64; 16],
}

impl CommitStats {
    fn count(&mut self, records: usize, bytes: usize) {
        self.flushes += 1;
        self.records += records as u64;
        self.bytes += bytes as u64;
        let bucket = (usize::BITS - 1 - records.max(1).leading_zeros()) as usize;
        self.batch_records_buckets[bucket.min(15)] += 1;
    }

    /// `1:12,2-3:40,4-7:3`: records-per-flush ranges and their flush counts.
    pub fn histogram_text(&self) -> String {
        let mut parts = Vec::new();
        for (i, n) in self.batch_records_buckets.iter().enumerate() {
            if *n > 0 {
                let low = 1u64 << i;
                let high = (1u64 << (i + 1)) - 1;
                if low == high {
                    parts.push(format!("{low}:{n}"));
                } else {
                    parts.push(format!("{low}-{high}:{n}"));
                }
            }
        }
        parts.join(",")
    }
}

/// Moves the metrics' segment gauges by `sign` segments of `size_bytes`.
fn metrics_segment(sign: i64, size_bytes: u64) {
    crate::metrics::QUEUE_SEGMENTS.add(sign);
    crate::metrics::QUEUE_LOG_BYTES.add(sign.saturating_mul(size_bytes.min(i64::MAX as u64) as i64));
}

/// The queue of one shard.
pub struct Queue<S: Storage = DiskStorage> {
    /// Shared with the message writers, which create body files.
    storage: Rc<S>,
    shard_index: u16,
    params: QueueParams,
    clock: Clock,
    logs: [RefCell<LogState<S::File>>; 2],
    /// Wakes a log's committer when something is staged.
    staged_events: [event_listener::Event; 2],
    /// Wakes stagers waiting for room.
    space_event: event_listener::Event,
    index: RefCell<recover::IdMap<Entry>>,
    /// Retry-log batches in write order, for the runners.
    spans: RefCell<VecDeque<Span>>,
    /// Absolute number of `spans[0]`.
    spans_base: Cell<u64>,
    spans_event: event_listener::Event,
    /// Runners' positions (absolute span numbers).
    runner_cursors: RefCell<Vec<u64>>,
    /// Wakes the collector; shared with the body log.
    gc_event: Rc<event_listener::Event>,
    /// The bodies of fresh messages that are not inline (with
    /// `BodyStore::Log`).
    body_log: Rc<bodylog::BodyLog<S>>,
    /// The live messages whose newest envelope names the body log: the
    /// first and last segment of its extents (the body log's live counts).
    body_refs: RefCell<recover::IdMap<(u64, u64)>>,
    /// Messages whose body was copied to a body file, flushed, for a
    /// replacement whose batch failed after its write was issued: the copy
    /// is kept, and used again, never rewritten.
    bodies_copied: RefCell<recover::IdSet>,
    /// Body files of completed messages, removed by the collector.
    bodies_dead: RefCell<Vec<String>>,
    stats: [RefCell<CommitStats>; 2],
    last_id: Cell<u64>,
    /// Sessions inside a transaction whose envelope is not staged yet
    /// (see [`Queue::expect_record`]).
    expected: Rc<Cell<usize>>,
    closed: Cell<bool>,
    closed_event: event_listener::Event,
    handoff: handoff::Handoff,
}

/// Held by a session from an accepted MAIL until its envelope is staged or
/// the transaction ends: with a commit delay, the committer waits for the
/// records it announces instead of sleeping blindly.
pub struct RecordExpected {
    expected: Rc<Cell<usize>>,
}

impl Drop for RecordExpected {
    fn drop(&mut self) {
        let expected = self.expected.get().checked_sub(1);
        self.expected.set(expected.expect("invariant: one expected record counted per RecordExpected alive"));
    }
}

fn log_slot(kind: LogKind) -> usize {
    recover::log_index(kind)
}

pub(crate) fn body_name(id: &str) -> String {
    format!("body-{id}")
}

impl Queue<DiskStorage> {
    /// Opens the shard's spool directory (`<spool>/shard-N`), creating it if
    /// needed, and recovers it: the live messages of the head log wait in
    /// the hand-off (by location), those of the retry log come back through
    /// the runners.
    pub async fn open(spool: &Path, shard_index: u16, params: QueueParams, clock: Clock) -> std::io::Result<Rc<Queue>> {
        let dir = spool.join(format!("shard-{shard_index}"));
        std::fs::create_dir_all(&dir)?;
        let dir = std::fs::canonicalize(&dir)?;
        let storage = DiskStorage::open(&dir).await?;
        Queue::open_with(storage, shard_index, params, clock).await
    }
}

impl<S: Storage + 'static> Queue<S> {
    pub async fn open_with(
        storage: S,
        shard_index: u16,
        params: QueueParams,
        clock: Clock,
    ) -> std::io::Result<Rc<Queue<S>>> {
        assert!(!params.retry_lags.is_empty());
        let storage = Rc::new(storage);
        let gc_event = Rc::new(event_listener::Event::new());
        let body_log = Rc::new(bodylog::BodyLog::new(
            storage.clone(),
            shard_index,
            params.segment_size_bytes,
            clock.clone(),
            gc_event.clone(),
        ));
        let queue = Queue {
            body_log,
            body_refs: RefCell::new(recover::IdMap::default()),
            bodies_copied: RefCell::new(recover::IdSet::default()),
            handoff: handoff::Handoff::new(params.handoff_envelopes_max),
            clock,
            shard_index,
            logs: [
                RefCell::new(LogState::new(LogKind::Head, shard_index, params.segment_size_bytes)),
                RefCell::new(LogState::new(LogKind::Retry, shard_index, params.segment_size_bytes)),
            ],
            params,
            storage,
            staged_events: [event_listener::Event::new(), event_listener::Event::new()],
            space_event: event_listener::Event::new(),
            index: RefCell::new(recover::IdMap::default()),
            spans: RefCell::new(VecDeque::new()),
            spans_base: Cell::new(0),
            spans_event: event_listener::Event::new(),
            runner_cursors: RefCell::new(Vec::new()),
            gc_event,
            bodies_dead: RefCell::new(Vec::new()),
            stats: [RefCell::new(CommitStats::default()), RefCell::new(CommitStats::default())],
            last_id: Cell::new(0),
            expected: Rc::new(Cell::new(0)),
            closed: Cell::new(false),
            closed_event: event_listener::Event::new(),
        };
        let fresh = queue.recover().await?;
        for location in fresh {
            queue.hand_recovered(location);
        }
        let queue = Rc::new(queue);
        queue.runner_cursors.borrow_mut().resize(queue.params.retry_lags.len(), 0);
        Ok(queue)
    }

    /// The shard's clock, as the queue reads it.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Reads every segment, rebuilds the index and the runners' spans,
    /// removes orphan body files, and sets up the logs so that the next
    /// batch of each opens a new segment (writer rule 6). Returns where the
    /// head log's live messages are, in queue-id order, for delivery.
    async fn recover(&self) -> std::io::Result<Vec<Location>> {
        fix_mmap_threshold();
        let names = self.storage.list()?;
        let mut segments: Vec<(LogKind, u64, String)> = Vec::new();
        let mut bodies = Vec::new();
        let mut body_segments = Vec::new();
        for name in names {
            if let Some((kind, seq)) = log::parse_segment_name(&name) {
                if kind == LogKind::Body {
                    body_segments.push(seq);
                } else {
                    segments.push((kind, seq, name));
                }
            } else if name.starts_with("free-") && name.ends_with(".seg") {
                // A segment kept for reuse holds records of its earlier life
                // whose sequence numbers this start does not know: a log
                // found empty starts its numbers again, and a stale batch
                // with the very numbers a new one expects would be trusted
                // (SPEC section 4.2). Reused only within one process life.
                self.storage.remove(&name).await?;
            } else if let Some(id) = name.strip_prefix("body-") {
                bodies.push(id.to_string());
            }
        }
        segments.sort_by_key(|(kind, seq, _)| (log_slot(*kind), *seq));
        // The scan fills the index's own entries; the retry log's records
        // are listed in log order for the runners' spans.
        let mut scan = recover::Scan::<Entry>::keeping_retry_order();
        let mut files = Vec::new();
        let mut sizes = Vec::new();
        for (_, _, name) in &segments {
            let file = self.storage.open(name).await?;
            let size = file.size_bytes().await?;
            self.check_segment_size(name, size)?;
            files.push(Rc::new(file));
            sizes.push(size as usize);
        }
        // The index is filled by the scan: sized once per log, when the
        // log's first segment with envelopes is decoded, for the log's
        // bytes at the bytes per envelope of that segment, rather than grown
        // (and rehashed) step by step. Far more room than the spool needed
        // is given back after the scan.
        let mut log_bytes = [0usize; 2];
        for ((kind, ..), size) in segments.iter().zip(&sizes) {
            log_bytes[log_slot(*kind)] += size;
        }
        let mut log_reserved = [false; 2];
        // Segments are read and decoded RECOVERY_SEGMENTS_IN_FLIGHT at a
        // time, each on a helper thread (on the disk storage: started by
        // polling its future once, and decoded as its read brings it in),
        // while the executor merges the segments already done, in order.
        // Every segment is decoded alone; only the merge sees them together.
        let start = |i: usize| {
            let (kind, seq, name) = &segments[i];
            let out = recover::SegmentScan::new(*kind, *seq, name);
            Box::pin(files[i].read_with(sizes[i], move |bytes| recover::scan_segment(out, bytes, false)))
        };
        async fn start_polled<F: std::future::Future + Unpin>(mut read: F) -> (F, Option<F::Output>) {
            let done = futures_lite::future::poll_once(&mut read).await;
            (read, done)
        }
        let mut pending = std::collections::VecDeque::new();
        let mut started = 0;
        for _ in 0..segments.len() {
            if pending.is_empty() {
                pending.push_back(start_polled(start(started)).await);
                started += 1;
            }
            let (read, done) = pending.pop_front().expect("invariant: one read started per segment");
            let scanned = match done {
                Some(done) => done?,
                None => read.await?,
            };
            // The next reads start before this segment's merge, so that the
            // helpers read and decode while the executor merges.
            while started < segments.len() && pending.len() < RECOVERY_SEGMENTS_IN_FLIGHT {
                pending.push_back(start_polled(start(started)).await);
                started += 1;
            }
            let slot = log_slot(scanned.segment.kind);
            if !log_reserved[slot] {
                if let Some(bytes_per_envelope) = scanned.envelope_bytes() {
                    log_reserved[slot] = true;
                    scan.live.reserve(log_bytes[slot] / bytes_per_envelope.max(1));
                }
            }
            scan.add_scanned(scanned);
        }
        drop(pending);
        self.check_segment_versions(&scan)?;
        for segment in scan.damaged() {
            crate::log::event(
                "queue_recovery",
                &[
                    ("shard", &self.shard_index),
                    ("segment", &segment.name),
                    ("problem", &segment.problem.clone().unwrap_or_default()),
                ],
            );
        }
        let newest_head = segments.iter().filter(|s| s.0 == LogKind::Head).map(|s| s.1).max();
        for ((kind, seq, name), file) in segments.iter().zip(files) {
            let mut log = self.logs[log_slot(*kind)].borrow_mut();
            log.segments.insert(
                *seq,
                log::Segment {
                    file,
                    name: name.clone(),
                    live: 0,
                    sealed_head_sequence: Some(newest_head.unwrap_or(0)),
                    // Not known; only a reuse of the file would need it.
                    initialized_bytes: 0,
                },
            );
            metrics_segment(1, log.segment_size_bytes);
            log.segment_sequence_next = log.segment_sequence_next.max(seq + 1);
        }
        for (slot, last) in scan.record_sequence_last.iter().enumerate() {
            let mut log = self.logs[slot].borrow_mut();
            log.record_sequence_next = match last {
                Some(last) => last + 1 + queue_format::RECORD_SEQUENCE_RESTART_GAP,
                None => {
                    // Nothing trusted: still past any number a segment of this
                    // log could have used, if segments exist.
                    if log.segments.is_empty() {
                        1
                    } else {
                        1 + queue_format::RECORD_SEQUENCE_RESTART_GAP
                    }
                }
            };
        }
        // Index, live counts, fresh envelopes for delivery, spans for runners.
        #[cfg(debug_assertions)]
        scan.check_counts();
        let mut fresh = Vec::new();
        let mut index = self.index.borrow_mut();
        assert!(index.is_empty(), "invariant: recovery runs once, on an empty index");
        *index = std::mem::take(&mut scan.live);
        if index.capacity() > 4 * index.len().max(INDEX_CAPACITY_KEPT) {
            index.shrink_to_fit();
        }
        // Counted by the merge and added once: a million entries would
        // otherwise take a walk of the index and a million borrows of the
        // logs and of the metrics. Only the head log's messages, which go
        // to delivery at once, are looked for in the index.
        for ((slot, sequence), live) in std::mem::take(&mut scan.live_per_segment) {
            if let Some(segment) = self.logs[slot].borrow_mut().segments.get_mut(&sequence) {
                segment.live_add_count(live);
            }
        }
        if scan.live_in_head > 0 {
            fresh.reserve_exact(scan.live_in_head);
            fresh.extend(index.iter().filter(|(_, entry)| entry.in_flight).map(|(id, entry)| (*id, entry.location)));
        }
        let deferred = (index.len() - scan.live_in_head) as i64;
        let body_files = scan.live_body_files as i64;
        crate::metrics::queue_entries(index.len() as i64, deferred, body_files);
        // A span for each retry record that is still its message's newest,
        // in log order; then in the order the runners pass them (written
        // time), a stable sort that keeps log order among equal times and
        // finds the runs the log order already has.
        drop(index);
        let now = self.clock.unix_ms();
        let mut retry_live: Vec<(u64, Location, u64)> = scan
            .retry_live()
            .into_iter()
            .map(|r| (self.recovered_written_ms(r.retry_next_unix_ms, now), r.location, r.record_sequence))
            .collect();
        retry_live.sort_by_key(|(written, _, _)| *written);
        let mut spans = self.spans.borrow_mut();
        for (written, location, sequence) in retry_live {
            spans.push_back(Span::recovered(location, sequence, written));
        }
        drop(spans);
        // Body log segments no live envelope names hold nothing anyone needs
        // (SPEC section 11).
        body_segments.sort_unstable();
        let mut live_per_body_segment = BTreeMap::new();
        let body_refs = std::mem::take(&mut scan.body_log);
        for &(first, last) in body_refs.values() {
            let from = body_segments.partition_point(|&seq| seq < first);
            for &body in body_segments[from..].iter().take_while(|&&seq| seq <= last) {
                *live_per_body_segment.entry(body).or_insert(0) += 1;
            }
        }
        self.body_log.recover(body_segments, &live_per_body_segment).await?;
        *self.body_refs.borrow_mut() = body_refs;
        // Body files no live envelope names are orphans (SPEC section 11, case 8).
        let live_ids: std::collections::HashSet<String> = if bodies.is_empty() || scan.live_body_files == 0 {
            Default::default()
        } else {
            self.index.borrow().iter().filter(|(_, e)| e.body_file).map(|(id, _)| id_text(id)).collect()
        };
        for id in bodies {
            if !live_ids.contains(&id) {
                self.storage.remove(&body_name(&id)).await?;
            }
        }
        fresh.sort_by(|a, b| a.0 .0.cmp(&b.0 .0));
        let fresh: Vec<Location> = fresh.into_iter().map(|(_, location)| location).collect();
        let records = scan.records;
        drop(scan);
        // The scan's tables and what the helper threads allocated while
        // decoding are freed by now: the trim gives those pages back to the
        // system at once instead of leaving them with the allocator's
        // arenas (the decoded lists themselves are allocated by the
        // executor: `recover::SegmentScan::new`).
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim(3) only returns free memory to the system.
        unsafe {
            libc::malloc_trim(0);
        }
        crate::log::event(
            "queue_recovered",
            &[
                ("shard", &self.shard_index),
                ("segments", &segments.len()),
                ("records", &records),
                ("live", &self.index.borrow().len()),
                ("fresh", &fresh.len()),
            ],
        );
        Ok(fresh)
    }

    /// Recovery reads a segment whole: one larger than the configured
    /// segment size is refused, and the shard does not start, rather than
    /// read into memory without bound or be recycled as damaged (it may
    /// hold acknowledged mail written with a larger setting).
    fn check_segment_size(&self, name: &str, size_bytes: u64) -> std::io::Result<()> {
        let size_bytes_max = self.params.segment_size_bytes;
        if size_bytes <= size_bytes_max {
            return Ok(());
        }
        crate::log::event(
            "queue_recovery_refused",
            &[
                ("shard", &self.shard_index),
                ("segment", &name),
                ("size_bytes", &size_bytes),
                ("segment_size_bytes", &size_bytes_max),
            ],
        );
        Err(recover::RecoveryError::SegmentTooLarge { file: name.to_string(), size_bytes, size_bytes_max }.into())
    }

    /// A whole segment header of a version this build does not read is a
    /// spool from another version, not a torn write: the shard does not
    /// start, and the segment is left as it is (SPEC section 9).
    fn check_segment_versions(&self, scan: &recover::Scan<Entry>) -> std::io::Result<()> {
        let Some((name, version)) = scan.unsupported_version() else {
            return Ok(());
        };
        crate::log::event(
            "queue_recovery_refused",
            &[("shard", &self.shard_index), ("segment", &name), ("format_version", &version)],
        );
        Err(recover::RecoveryError::UnsupportedVersion { file: name.to_string(), version }.into())
    }

    /// For a recovered retry record: a write time such that the runner
    /// whose lag first covers the remaining wait reaches it at its retry
    /// time (and never later than now).
    fn recovered_written_ms(&self, retry_next_unix_ms: u64, now_ms: u64) -> u64 {
        let remaining = retry_next_unix_ms.saturating_sub(now_ms);
        let lags = &self.params.retry_lags;
        let lag = lags.iter().find(|lag| lag.as_millis() as u64 >= remaining).unwrap_or(lags.last().unwrap());
        retry_next_unix_ms.saturating_sub(lag.as_millis() as u64).min(now_ms)
    }

    pub fn params(&self) -> &QueueParams {
        &self.params
    }

    pub fn shard_index(&self) -> u16 {
        self.shard_index
    }

    /// A new queue id: microseconds since the epoch (strictly increasing
    /// within the shard) and the shard index, in upper-case hex.
    pub fn next_id(&self) -> String {
        let now_us = self.clock.unix_us();
        let id = now_us.max(self.last_id.get() + 1);
        self.last_id.set(id);
        format!("{:014X}{:02X}", id, self.shard_index)
    }

    pub fn body_path(&self, id: &str) -> PathBuf {
        self.storage.path().join(body_name(id))
    }

    /// Where a message's content is stored, for readers outside the queue.
    pub fn stored_body(&self, env: &Envelope) -> StoredBody {
        StoredBody::of(self.storage.path(), &env.id, &env.body)
    }

    /// The message's header block (up to and with the CRLF before the
    /// empty line; all of the first `max_bytes` when no empty line comes
    /// within them), read on the shard's blocking pool. For bounces (the
    /// returned headers) and the Sieve tests of the final dot.
    pub async fn header_block(&self, env: &Envelope, max_bytes: usize) -> Vec<u8> {
        let stored = self.stored_body(env);
        let body = env.body.clone();
        glommio::executor()
            .spawn_blocking(move || {
                use std::io::Read;
                let mut buf = Vec::new();
                match body {
                    Body::Inline(bytes) => buf.extend_from_slice(&bytes[..bytes.len().min(max_bytes)]),
                    Body::File { .. } | Body::Log { .. } => {
                        let _ = stored.sync_reader().take(max_bytes as u64).read_to_end(&mut buf);
                    }
                }
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.truncate(end + 2);
                }
                buf
            })
            .await
    }

    /// The whole stored content of a message, for a failure report that
    /// returns it (RET=FULL): None when it is longer than `max_bytes` or
    /// cannot be read (the report then carries the headers only).
    pub async fn content_within(&self, env: &Envelope, max_bytes: usize) -> Option<Vec<u8>> {
        if env.size_bytes > max_bytes as u64 {
            return None;
        }
        let stored = self.stored_body(env);
        let body = env.body.clone();
        glommio::executor()
            .spawn_blocking(move || {
                use std::io::Read;
                match body {
                    Body::Inline(bytes) => Some(bytes.to_vec()),
                    Body::File { .. } | Body::Log { .. } => {
                        let mut buf = Vec::new();
                        stored.sync_reader().take(max_bytes as u64 + 1).read_to_end(&mut buf).ok()?;
                        (buf.len() <= max_bytes).then_some(buf)
                    }
                }
            })
            .await
    }

    /// The wait before a message's next attempt after attempt `attempt_count`:
    /// the lag of the runner that will hand it back.
    pub fn retry_delay(&self, attempt_count: u16) -> Duration {
        let lags = &self.params.retry_lags;
        lags[(attempt_count.max(1) as usize - 1).min(lags.len() - 1)]
    }

    /// A session started a transaction whose envelope will be staged soon.
    pub fn expect_record(&self) -> RecordExpected {
        self.expected.set(self.expected.get() + 1);
        RecordExpected { expected: self.expected.clone() }
    }

    /// Starts a new message; its content is streamed with [`MessageWriter::write`].
    /// The writer shares the queue's storage, where it creates the body file
    /// of a message larger than `queue.inline_max_bytes`.
    pub async fn create(&self) -> Result<MessageWriter<S>, QueueError> {
        let id = self.next_id();
        Ok(self.writer(id))
    }

    fn writer(&self, id: String) -> MessageWriter<S> {
        let body_log = (self.params.body_store == BodyStore::Log).then(|| self.body_log.clone());
        MessageWriter::new(self.storage.clone(), body_log, id, self.params.inline_max_bytes)
    }

    /// Starts a message under a given id: a replica, which keeps the id
    /// derived from its origin's (`crate::scan::replicate::replica_id`).
    /// None when that id is live here already (the origin sent it again).
    pub fn create_with_id(&self, id: &str) -> Option<MessageWriter<S>> {
        if self.entry(id).is_some() {
            return None;
        }
        Some(self.writer(id.to_string()))
    }

    /// Stages a record in its log and waits until it is durable.
    async fn append(&self, kind: LogKind, staged: Staged) -> Result<Location, QueueError> {
        self.append_tracked(kind, staged).await.map_err(|(error, _)| error)
    }

    /// [`Queue::append`], saying on failure whether the record may be on
    /// disk all the same (its batch's write was issued).
    async fn append_tracked(&self, kind: LogKind, staged: Staged) -> Result<Location, (QueueError, bool)> {
        self.append_with_body(kind, staged, None).await
    }

    /// [`Queue::append_tracked`] for a first envelope whose body file the
    /// committer flushes (`body_sync`) with the others of its batch, before
    /// the batch is written.
    async fn append_with_body(
        &self,
        kind: LogKind,
        staged: Staged,
        body_sync: Option<BodySync>,
    ) -> Result<Location, (QueueError, bool)> {
        let slot = log_slot(kind);
        loop {
            let listener = self.space_event.listen();
            if self.logs[slot].borrow().staged_bytes < STAGED_BYTES_MAX {
                break;
            }
            listener.await;
        }
        let waiter = self.logs[slot].borrow_mut().stage(staged).map_err(|error| (error, false))?;
        if let Some(sync) = body_sync {
            waiter.set_body_sync(sync);
        }
        self.staged_events[slot].notify(1);
        waiter.wait().await.map_err(|error| (error, waiter.maybe_on_disk()))
    }

    /// Records a delivery attempt that left recipients pending: the whole
    /// envelope again, in the retry log, due at `env.next_retry_unix_ms`.
    /// A message held while its attempt ran stays held: the replacement
    /// carries the HELD flag.
    pub async fn defer(&self, env: &Envelope) -> Result<(), QueueError> {
        assert!(env.attempt_count >= 1 && env.pending_count() > 0);
        let mut env = env.clone();
        if self.entry(&env.id).is_some_and(|entry| entry.held) {
            env.held = true;
        }
        self.append_replacement(env).await?;
        Ok(())
    }

    /// Stages a replacement envelope in the retry log and waits until it is
    /// durable. A body in the body log is copied to a body file first, flushed
    /// with the batch: the retry log never names the body log (SPEC section
    /// 13), so that a body segment lives no longer than the first attempts
    /// of its messages.
    async fn append_replacement(&self, mut env: Envelope) -> Result<Location, QueueError> {
        let Body::Log { size_bytes, checksum, .. } = env.body else {
            return self.append(LogKind::Retry, Staged::replacement(env)).await;
        };
        if self.entry(&env.id).is_some_and(|entry| entry.body_file)
            || self.bodies_copied.borrow().contains(&env.queue_id())
        {
            // Copied already, whole and flushed: a durable replacement names
            // the body file, or one whose batch failed may. It is never
            // written again (a copy truncates first).
            env.body = Body::File { size_bytes, checksum };
            return self.append(LogKind::Retry, Staged::replacement(env)).await;
        }
        let name = body_name(&env.id);
        let file = match self.body_to_file(&env, &name).await {
            Ok(file) => Rc::new(file),
            Err(error) => {
                let _ = self.storage.remove(&name).await;
                return Err(error);
            }
        };
        env.body = Body::File { size_bytes, checksum };
        let sync = file.clone();
        let sync: BodySync = Box::pin(async move { sync.sync().await });
        let qid = env.queue_id();
        let appended = self.append_with_body(LogKind::Retry, Staged::replacement(env), Some(sync)).await;
        if let Ok(file) = Rc::try_unwrap(file) {
            let _ = file.close().await;
        }
        match appended {
            Ok(location) => Ok(location),
            Err((error, maybe_on_disk)) => {
                if maybe_on_disk {
                    self.bodies_copied.borrow_mut().insert(qid);
                } else {
                    let _ = self.storage.remove(&name).await;
                }
                Err(error)
            }
        }
    }

    /// Copies a body from the body log into body file `name`, written out
    /// (not flushed). The bytes are copied as they are: a damaged body is
    /// caught by the check before delivery, as it would have been.
    async fn body_to_file(&self, env: &Envelope, name: &str) -> Result<S::Body, QueueError> {
        let file = self.storage.create_body(name).await?;
        let mut reader = StorageReader::new(self.storage.clone(), &env.id, &env.body);
        let mut offset = 0u64;
        let copied: Result<(), QueueError> = async {
            loop {
                let bytes = reader.read(BODY_CHECK_CHUNK_BYTES).await?;
                if bytes.is_empty() {
                    return Ok(());
                }
                let len = bytes.len() as u64;
                write_all_at(&file, bytes, offset).await?;
                offset += len;
            }
        }
        .await;
        reader.close().await;
        match copied {
            Ok(()) => Ok(file),
            Err(error) => {
                let _ = file.close().await;
                Err(error)
            }
        }
    }

    /// Records that a message is finished. The completion rides the next
    /// batch (an acknowledgement's flush, or its own after at most
    /// `COMPLETION_FLUSH_DELAY`); nobody waits for it. The body file goes
    /// once it is durable. A crash before that delivers the message again
    /// (SPEC section 11, case 9).
    pub fn complete(&self, env: &Envelope, reason: CompletionReason) -> Result<(), QueueError> {
        let qid = env.queue_id();
        let Some(entry) = self.index.borrow().get(&qid).copied() else {
            return Ok(());
        };
        self.stage_completion(qid, entry, reason)
    }

    fn stage_completion(&self, queue_id: QueueId, entry: Entry, reason: CompletionReason) -> Result<(), QueueError> {
        let completion = Completion {
            queue_id,
            completion_unix_ms: self.clock.unix_ms(),
            attempt_count: entry.attempt_count,
            reason,
        };
        let slot = log_slot(entry.location.log);
        self.logs[slot].borrow_mut().stage(Staged::Completion(completion))?;
        self.staged_events[slot].notify(1);
        Ok(())
    }

    /// Finishes a live message that no delivery holds (not in the hand-off,
    /// not being attempted): a replica whose origin delivered it. Returns
    /// whether it was live and idle; a message in flight is left to its
    /// attempt.
    pub fn complete_idle(&self, id: &str, reason: CompletionReason) -> Result<bool, QueueError> {
        let Some(qid) = parse_queue_id(id).ok() else { return Ok(false) };
        let entry = {
            let mut index = self.index.borrow_mut();
            let Some(entry) = index.get_mut(&qid) else { return Ok(false) };
            if entry.in_flight {
                return Ok(false);
            }
            // Until the completion is durable (and removes the entry), no
            // runner hands the message over.
            entry.in_flight = true;
            *entry
        };
        let staged = self.stage_completion(qid, entry, reason);
        if staged.is_err() {
            self.release(id);
        }
        staged.map(|()| true)
    }

    /// The index entry of a message, if it is live (None for text that is
    /// not a queue id).
    pub fn entry(&self, id: &str) -> Option<Entry> {
        let qid = parse_queue_id(id).ok()?;
        self.index.borrow().get(&qid).copied()
    }

    /// Live messages in the index.
    pub fn live_count(&self) -> usize {
        self.index.borrow().len()
    }

    /// Per log (head, retry): the oldest segment an index entry points
    /// into, and whether every segment's live count equals the index
    /// entries pointing into it. For the simulation's check of SPEC
    /// section 13's bound; walks the whole index.
    pub fn live_segments(&self) -> [(Option<u64>, bool); 2] {
        let mut counts: [BTreeMap<u64, u32>; 2] = Default::default();
        for entry in self.index.borrow().values() {
            *counts[log_slot(entry.location.log)].entry(entry.location.segment_sequence).or_default() += 1;
        }
        std::array::from_fn(|slot| {
            let log = self.logs[slot].borrow();
            let agree =
                log.segments.iter().all(|(seq, segment)| counts[slot].get(seq).copied().unwrap_or(0) == segment.live)
                    && counts[slot].keys().all(|seq| log.segments.contains_key(seq));
            (counts[slot].keys().next().copied(), agree)
        })
    }

    /// Segment files of each log (head, retry).
    pub fn segment_counts(&self) -> (usize, usize) {
        (self.logs[0].borrow().segments.len(), self.logs[1].borrow().segments.len())
    }

    pub fn stats(&self, kind: LogKind) -> CommitStats {
        self.stats[log_slot(kind)].borrow().clone()
    }

    /// Delivery gave a message back unfinished (an I/O error while
    /// recording the attempt): a runner may hand it over again.
    pub fn release(&self, id: &str) {
        if let Some(entry) = self.index.borrow_mut().get_mut(&queue_id_of(id)) {
            entry.in_flight = false;
            entry.attempting = false;
        }
    }

    /// Stops the committers once everything staged is flushed, and the
    /// runners and the collector at once.
    pub fn close(&self) {
        self.closed.set(true);
        self.closed_event.notify(usize::MAX);
        for event in &self.staged_events {
            event.notify(usize::MAX);
        }
        self.spans_event.notify(usize::MAX);
        self.gc_event.notify(usize::MAX);
        self.handoff.wake_all();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// The committer of one log: one batch in flight at a time.
    pub async fn run_committer(self: Rc<Self>, kind: LogKind) {
        let slot = log_slot(kind);
        loop {
            let listener = self.staged_events[slot].listen();
            let (staged, urgent) = {
                let log = self.logs[slot].borrow();
                (log.staged.len(), log.staged_urgent)
            };
            if staged == 0 {
                if self.closed.get() {
                    return;
                }
                listener.await;
                continue;
            }
            if urgent == 0 && !self.closed.get() {
                // Only completions: let an acknowledgement's flush carry them.
                futures_lite::future::or(listener, async {
                    self.clock.sleep_short(COMPLETION_FLUSH_DELAY).await;
                })
                .await;
                if self.logs[slot].borrow().staged_urgent == 0 {
                    self.commit_batch(kind).await;
                }
                continue;
            }
            if !self.params.commit_delay.is_zero() {
                self.wait_for_expected(slot).await;
            }
            self.commit_batch(kind).await;
        }
    }

    /// With a commit delay: waits, at most that long, while sessions that
    /// announced an envelope have not staged it yet.
    async fn wait_for_expected(&self, slot: usize) {
        let deadline = std::time::Instant::now() + self.params.commit_delay;
        loop {
            let listener = self.staged_events[slot].listen();
            let now = std::time::Instant::now();
            if self.expected.get() == 0 || self.closed.get() || now >= deadline {
                return;
            }
            futures_lite::future::or(listener, async {
                glommio::timer::sleep((deadline - now).min(Duration::from_micros(250))).await;
            })
            .await;
        }
    }

    /// Opens the next segment of a log: a freed file renamed, or a new one
    /// allocated at full size; the directory is flushed before any record
    /// goes in, so the name is durable with the first batch. The collector
    /// is woken: the segment it seals may be dead.
    async fn open_segment(&self, kind: LogKind) -> std::io::Result<()> {
        let slot = log_slot(kind);
        let (sequence, free, size) = {
            let log = self.logs[slot].borrow();
            (log.segment_sequence_next, log.free.last().cloned(), log.segment_size_bytes)
        };
        let name = log::segment_name(kind, sequence);
        let mut file = None;
        if let Some(free) = free {
            self.logs[slot].borrow_mut().free.pop();
            self.storage.rename(&free.name, &name).await?;
            let reused = self.storage.open(&name).await?;
            if reused.size_bytes().await? == size {
                file = Some((reused, free.initialized_bytes));
            }
        }
        let (file, initialized_bytes) = match file {
            Some(file) => file,
            None => (self.storage.create(&name, size).await?, 0),
        };
        self.storage.sync_dir().await?;
        self.seal_active(kind);
        let mut log = self.logs[slot].borrow_mut();
        log.segment_sequence_next = sequence + 1;
        log.rotate_requested = false;
        let segment =
            log::Segment { file: Rc::new(file), name, live: 0, sealed_head_sequence: None, initialized_bytes };
        log.segments.insert(sequence, segment);
        metrics_segment(1, log.segment_size_bytes);
        log.active = Some(log::Active {
            sequence,
            write_offset: queue_format::SEGMENT_HEADER_SIZE_BYTES as u64,
            header_pending: true,
            record_sequence_first: log.record_sequence_next,
        });
        // The segment sealed here may be dead already (its records died
        // while it took more, or the collector asked for this rotation to
        // free a retry segment): the collector looks now, not at the next
        // durable batch, which a quiet shard may not have for a long time.
        self.gc_event.notify(1);
        Ok(())
    }

    /// The active segment stops taking records (a rotation, or a failed
    /// batch abandoning it). A retry segment remembers the newest head
    /// segment of that moment: it must outlive it (SPEC section 13).
    fn seal_active(&self, kind: LogKind) {
        let newest_head = self.logs[0].borrow().newest_segment();
        let mut log = self.logs[log_slot(kind)].borrow_mut();
        if let Some(active) = log.active.take() {
            let sealed = if kind == LogKind::Retry { newest_head } else { None };
            if let Some(segment) = log.segments.get_mut(&active.sequence) {
                segment.sealed_head_sequence = Some(sealed.unwrap_or(active.sequence));
            }
        }
    }

    async fn commit_batch(&self, kind: LogKind) {
        let slot = log_slot(kind);
        let (records, size) = self.logs[slot].borrow_mut().take_batch();
        self.space_event.notify(usize::MAX);
        let (records, size) = self.sync_bodies(records, size).await;
        if records.is_empty() {
            return;
        }
        let padded = queue_format::padded_size_bytes(size);
        let started = std::time::Instant::now();
        let result = self.write_batch(kind, &records, padded, size).await;
        match result {
            Ok((batch_locations, written_bytes)) => {
                crate::metrics::QUEUE_COMMIT_LATENCY.since(started);
                crate::metrics::QUEUE_FLUSHES.inc(slot);
                crate::metrics::QUEUE_FLUSH_RECORDS.observe(records.len() as u64);
                crate::metrics::QUEUE_WRITTEN_BYTES.add(written_bytes as u64);
                self.stats[slot].borrow_mut().count(records.len(), written_bytes);
                self.on_durable(kind, &records, &batch_locations);
                for ((_, waiter), location) in records.iter().zip(batch_locations) {
                    waiter.finish(Ok(location));
                }
                self.gc_event.notify(1);
            }
            Err((error, sequence_next)) => {
                // Encoded means its write was issued: it may be on disk.
                let maybe_on_disk = sequence_next.is_some();
                self.stats[slot].borrow_mut().failures += 1;
                crate::metrics::QUEUE_FLUSH_FAILURES.inc(slot);
                crate::log::event(
                    "queue_flush_failed",
                    &[
                        ("shard", &self.shard_index),
                        ("log", &log::kind_name(kind)),
                        ("records", &records.len()),
                        ("error", &error),
                    ],
                );
                self.seal_active(kind);
                let mut log = self.logs[slot].borrow_mut();
                let sequence_next = sequence_next.unwrap_or(log.record_sequence_next);
                log.batch_failed(sequence_next);
                drop(log);
                let mut completions = Vec::new();
                for (staged, waiter) in records {
                    if staged.is_urgent() {
                        waiter.fail(error.duplicate(), maybe_on_disk);
                    } else {
                        completions.push((staged, waiter));
                    }
                }
                self.logs[slot].borrow_mut().restage_front(completions);
            }
        }
    }

    /// Flushes the body files of the batch's first envelopes, all at once
    /// (their fdatasyncs in flight together, so the file system commits
    /// them in one journal transaction), before any of their envelopes is
    /// written (writer rule 4). A record whose body did not flush is
    /// refused (nothing of it was written) and leaves the batch.
    async fn sync_bodies(&self, records: Vec<(Staged, Rc<Waiter>)>, size: usize) -> (Vec<(Staged, Rc<Waiter>)>, usize) {
        let syncs: Vec<(usize, BodySync)> =
            records.iter().enumerate().filter_map(|(i, (_, waiter))| Some((i, waiter.take_body_sync()?))).collect();
        if syncs.is_empty() {
            return (records, size);
        }
        crate::metrics::QUEUE_BODY_SYNCS.add(syncs.len() as u64);
        // Only a new body file needs its directory flushed: a body log
        // segment's name was made durable when it was created.
        let files = syncs.iter().any(|(i, _)| match &records[*i].0 {
            Staged::Envelope(env, _) | Staged::Replacement(env, _) => !matches!(env.body, Body::Log { .. }),
            Staged::Completion(_) => false,
        });
        let (indexes, futures): (Vec<usize>, Vec<BodySync>) = syncs.into_iter().unzip();
        let results = match self.params.body_sync {
            BodySyncMode::Each if !files => join_all(futures).await,
            BodySyncMode::Each => {
                // A new file's name is durable only once its directory is
                // flushed (fsync(2)): one flush of the directory, in flight
                // with the files' (so it rides the same journal commit),
                // makes the batch's body file names as durable as their bytes.
                let (mut results, dir) = futures_lite::future::zip(join_all(futures), self.storage.sync_dir()).await;
                if let Err(e) = dir {
                    for result in results.iter_mut().filter(|result| result.is_ok()) {
                        *result = Err(std::io::Error::new(e.kind(), e.to_string()));
                    }
                }
                results
            }
            BodySyncMode::Syncfs => {
                // One flush of the file system covers every body file of
                // the batch (the files stay open until the batch is done).
                let synced = self.storage.sync_filesystem().await;
                drop(futures);
                indexes
                    .iter()
                    .map(|_| synced.as_ref().map(|_| ()).map_err(|e| std::io::Error::new(e.kind(), e.to_string())))
                    .collect()
            }
        };
        let failed: Vec<(usize, std::io::Error)> =
            indexes.into_iter().zip(results).filter_map(|(i, result)| Some((i, result.err()?))).collect();
        if failed.is_empty() {
            return (records, size);
        }
        let mut size = size;
        let mut kept = Vec::with_capacity(records.len() - failed.len());
        let mut failed = failed.into_iter().peekable();
        for (i, (staged, waiter)) in records.into_iter().enumerate() {
            match failed.next_if(|(index, _)| *index == i) {
                Some((_, error)) => {
                    size -= queue_format::encoded_size_bytes(&staged.body());
                    waiter.fail(QueueError::from(error), false);
                }
                None => kept.push((staged, waiter)),
            }
        }
        (kept, size)
    }

    /// Writes one batch and flushes it. On failure returns the error and,
    /// if the batch was encoded, the sequence number after it.
    async fn write_batch(
        &self,
        kind: LogKind,
        records: &[(Staged, Rc<Waiter>)],
        padded: usize,
        size: usize,
    ) -> Result<(Vec<Location>, usize), (QueueError, Option<u64>)> {
        let slot = log_slot(kind);
        let needs_segment = self.logs[slot].borrow().needs_segment(padded);
        if needs_segment {
            self.open_segment(kind).await.map_err(|e| (QueueError::from(e), None))?;
        }
        let (batch, file, initialize) = {
            let log = self.logs[slot].borrow();
            let batch = log.encode_batch(records, size, self.clock.unix_ms());
            let segment = &log.segments[&batch.segment_sequence];
            let end = batch.write_offset + batch.bytes.len() as u64;
            let initialize = log::initialize_range(segment.initialized_bytes, end, log.segment_size_bytes);
            (batch, segment.file.clone(), initialize)
        };
        let sequence_next = Some(batch.record_sequence_next);
        let written =
            file.write_at(&batch.bytes, batch.write_offset).await.map_err(|e| (QueueError::from(e), sequence_next))?;
        if written != batch.bytes.len() {
            let e = std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("short write: {written} of {} bytes", batch.bytes.len()),
            );
            return Err((QueueError::NoSpace(e), sequence_next));
        }
        // Zeros ahead of the records, flushed with them: the next batches
        // land in written blocks (SPEC section 12). Past every record, so
        // whatever of them reaches the disk changes nothing a reader sees.
        if let Some((offset, len)) = initialize {
            file.initialize(offset, len).await.map_err(|e| (QueueError::from(e), sequence_next))?;
            if let Some(segment) = self.logs[slot].borrow_mut().segments.get_mut(&batch.segment_sequence) {
                segment.initialized_bytes = segment.initialized_bytes.max(offset + len as u64);
            }
        }
        file.sync().await.map_err(|e| (QueueError::from(e), sequence_next))?;
        let locations = batch
            .placed
            .iter()
            .map(|&(offset, size_bytes)| Location {
                log: kind,
                segment_sequence: batch.segment_sequence,
                offset,
                size_bytes,
            })
            .collect();
        if kind == LogKind::Retry {
            self.push_span(Span::batch(&batch, self.clock.unix_ms()));
        }
        self.logs[slot].borrow_mut().batch_durable(&batch);
        Ok((locations, batch.bytes.len()))
    }

    /// The index follows the durable records: a newer envelope moves a
    /// message's entry (its old record dies), a completion removes it.
    fn on_durable(&self, kind: LogKind, records: &[(Staged, Rc<Waiter>)], locations: &[Location]) {
        let mut index = self.index.borrow_mut();
        for ((staged, _), location) in records.iter().zip(locations) {
            let old = match staged {
                Staged::Envelope(env, _) | Staged::Replacement(env, _) => {
                    let qid = env.queue_id();
                    self.body_log_forget(&qid);
                    if let Some((first, last)) = env.body.log_segments() {
                        assert!(
                            matches!(staged, Staged::Envelope(..)),
                            "invariant: only a fresh envelope names the body log"
                        );
                        self.body_log.add_live(first, last);
                        self.body_refs.borrow_mut().insert(qid, (first, last));
                    }
                    let entry = Entry {
                        location: *location,
                        attempt_count: env.attempt_count,
                        retry_next_unix_ms: env.next_retry_unix_ms,
                        body_file: matches!(env.body, Body::File { .. }),
                        // A fresh envelope is with delivery already; a
                        // replacement waits for its runner.
                        in_flight: matches!(staged, Staged::Envelope(..)),
                        attempting: false,
                        held: env.held,
                    };
                    crate::metrics::queue_entry(1, kind == LogKind::Retry, entry.body_file);
                    let old = index.insert(qid, entry);
                    self.logs[log_slot(kind)]
                        .borrow_mut()
                        .segments
                        .get_mut(&location.segment_sequence)
                        .expect("the batch's segment exists")
                        .live_add();
                    old
                }
                Staged::Completion(c) => {
                    self.body_log_forget(&c.queue_id);
                    let old = index.remove(&c.queue_id);
                    if let Some(old) = old {
                        if old.body_file {
                            self.bodies_dead.borrow_mut().push(body_name(&id_text(&c.queue_id)));
                        }
                    }
                    old
                }
            };
            if let Some(old) = old {
                crate::metrics::queue_entry(-1, old.location.log == LogKind::Retry, old.body_file);
                let mut log = self.logs[log_slot(old.location.log)].borrow_mut();
                if let Some(segment) = log.segments.get_mut(&old.location.segment_sequence) {
                    segment.live_remove();
                }
            }
        }
    }

    /// Message `qid`'s newest envelope is superseded or done: the body log
    /// segments it named lose it. Two emptiness checks for a message that
    /// never had its body in the body log.
    fn body_log_forget(&self, qid: &QueueId) {
        if !self.body_refs.borrow().is_empty() {
            if let Some((first, last)) = self.body_refs.borrow_mut().remove(qid) {
                self.body_log.remove_live(first, last);
            }
        }
        if !self.bodies_copied.borrow().is_empty() {
            self.bodies_copied.borrow_mut().remove(qid);
        }
    }

    /// Segments that may go now, oldest first per log (SPEC section 13).
    /// Asks the head log to move to a new segment when only its active
    /// segment keeps a dead retry segment alive.
    fn collectable(&self) -> Vec<(LogKind, u64)> {
        let mut out = Vec::new();
        let head_oldest_after: Option<u64>;
        {
            let head = self.logs[0].borrow();
            let active = head.active.as_ref().map(|a| a.sequence);
            let mut next_oldest = None;
            for (&seq, segment) in &head.segments {
                if Some(seq) == active || segment.live > 0 {
                    next_oldest = Some(seq);
                    break;
                }
                out.push((LogKind::Head, seq));
            }
            head_oldest_after = next_oldest;
        }
        let mut rotate_head = false;
        {
            let retry = self.logs[1].borrow();
            let active = retry.active.as_ref().map(|a| a.sequence);
            for (&seq, segment) in &retry.segments {
                if Some(seq) == active || segment.live > 0 {
                    break;
                }
                let sealed = segment.sealed_head_sequence.unwrap_or(u64::MAX);
                if let Some(oldest) = head_oldest_after {
                    if oldest <= sealed {
                        let head = self.logs[0].borrow();
                        rotate_head = head.active.as_ref().map(|a| a.sequence) == Some(oldest)
                            && head.segments.get(&oldest).map(|s| s.live) == Some(0);
                        break;
                    }
                }
                out.push((LogKind::Retry, seq));
            }
        }
        if rotate_head {
            self.logs[0].borrow_mut().rotate_requested = true;
        }
        out
    }

    /// The collector: deletes (or keeps for reuse) dead segments and the
    /// body files of completed messages.
    pub async fn run_collector(self: Rc<Self>) {
        loop {
            let listener = self.gc_event.listen();
            if self.closed.get() {
                return;
            }
            for (kind, seq) in self.collectable() {
                if let Err(e) = self.retire_segment(kind, seq).await {
                    crate::log::event("queue_gc_error", &[("shard", &self.shard_index), ("error", &e)]);
                }
            }
            for sequence in self.body_log.collectable() {
                if let Err(e) = self.body_log.remove(sequence).await {
                    crate::log::event("queue_gc_error", &[("shard", &self.shard_index), ("error", &e)]);
                }
            }
            let bodies = std::mem::take(&mut *self.bodies_dead.borrow_mut());
            for name in bodies {
                if let Err(e) = self.storage.remove(&name).await {
                    crate::log::event(
                        "queue_gc_error",
                        &[("shard", &self.shard_index), ("file", &name), ("error", &e)],
                    );
                }
            }
            listener.await;
        }
    }

    async fn retire_segment(&self, kind: LogKind, seq: u64) -> std::io::Result<()> {
        let slot = log_slot(kind);
        let Some(segment) = self.logs[slot].borrow_mut().segments.remove(&seq) else {
            return Ok(());
        };
        metrics_segment(-1, self.logs[slot].borrow().segment_size_bytes);
        let keep = self.logs[slot].borrow().free.len() < FREE_SEGMENTS_MAX;
        if keep {
            let free = format!("free-{}-{seq:016x}.seg", log::kind_name(kind));
            self.storage.rename(&segment.name, &free).await?;
            let initialized_bytes = segment.initialized_bytes;
            self.logs[slot].borrow_mut().free.push(log::FreeSegment { name: free, initialized_bytes });
        } else {
            self.storage.remove(&segment.name).await?;
        }
        crate::log::event(
            "queue_segment_retired",
            &[("shard", &self.shard_index), ("segment", &segment.name), ("reused", &keep)],
        );
        Ok(())
    }

    fn push_span(&self, span: Span) {
        self.spans.borrow_mut().push_back(span);
        self.spans_event.notify(usize::MAX);
    }
}

/// A message being received. Up to `queue.inline_max_bytes` its content is
/// kept in memory for the envelope record; past that it goes to the body
/// log (`queue.body_store = "log"`) or to its body file, its final resting
/// place either way, in 64 KiB writes, through the queue's [`Storage`]. A
/// write that fails removes the body file at once: a message that will not
/// be acknowledged leaves nothing behind (its extents in the body log are
/// dead space, reclaimed with their segment).
pub struct MessageWriter<S: Storage = DiskStorage> {
    storage: Rc<S>,
    /// Where a body past the inline limit goes; None: a body file.
    body_log: Option<Rc<bodylog::BodyLog<S>>>,
    /// The content is past the inline limit and goes to the body log.
    in_log: bool,
    /// The body log extents written so far, in order.
    extents: Vec<queue_format::BodyExtent>,
    /// The body log segments those extents are in, kept from collection
    /// until the envelope is committed or the message given up.
    pins: bodylog::Pins,
    id: String,
    /// The body file's name (`body-<id>`).
    name: String,
    inline: Vec<u8>,
    inline_max_bytes: usize,
    file: Option<S::Body>,
    /// A body file may exist under `name` (its creation was asked for).
    file_named: bool,
    /// A write or flush failed; the message cannot be committed.
    failed: bool,
    file_offset_bytes: u64,
    checksum: u32,
    size_bytes: u64,
}

/// Writes `bytes` at `offset`. A short write on a regular file means the
/// file system ran out of room part-way; it is reported as a full disk.
async fn write_all_at<F: BodyFile>(file: &F, bytes: Vec<u8>, offset: u64) -> Result<(), QueueError> {
    let len = bytes.len();
    if len == 0 {
        return Ok(());
    }
    let written = file.write_at(bytes, offset).await?;
    if written != len {
        return Err(QueueError::NoSpace(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            format!("short write: {written} of {len} bytes"),
        )));
    }
    Ok(())
}

impl<S: Storage> Drop for MessageWriter<S> {
    /// However the message ends, its body log segments are let go.
    fn drop(&mut self) {
        if let Some(body_log) = &self.body_log {
            body_log.release(&mut self.pins);
        }
    }
}

impl<S: Storage + 'static> MessageWriter<S> {
    fn new(
        storage: Rc<S>,
        body_log: Option<Rc<bodylog::BodyLog<S>>>,
        id: String,
        inline_max_bytes: usize,
    ) -> MessageWriter<S> {
        MessageWriter {
            storage,
            body_log,
            in_log: false,
            extents: Vec::new(),
            pins: bodylog::Pins::default(),
            name: body_name(&id),
            id,
            inline: Vec::new(),
            inline_max_bytes,
            file: None,
            file_named: false,
            failed: false,
            file_offset_bytes: 0,
            checksum: 0,
            size_bytes: 0,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Appends content. On an error the body file is already gone; the
    /// message can only be aborted.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), QueueError> {
        if self.failed {
            return Err(QueueError::Io(std::io::Error::other(format!("message {}: an earlier write failed", self.id))));
        }
        self.checksum = queue_format::checksum::crc32c_append(self.checksum, bytes);
        self.size_bytes += bytes.len() as u64;
        self.inline.extend_from_slice(bytes);
        if !self.spill_due() && !self.flush_due() {
            return Ok(());
        }
        // Boxed, allocated only once the content is past the inline limit
        // (once per write's worth there): the body file's creation and the
        // body log's append would otherwise size every session's task.
        let result = Box::pin(self.write_out()).await;
        if result.is_err() {
            self.failed = true;
            Box::pin(self.discard()).await;
        }
        result
    }

    /// Creates the body file once the content outgrows the inline limit, and
    /// writes the buffer out whenever a whole write's worth is gathered.
    async fn write_out(&mut self) -> Result<(), QueueError> {
        if self.spill_due() {
            if self.body_log.as_ref().is_some_and(|body_log| body_log.has_room()) {
                self.in_log = true;
            } else {
                self.file_named = true;
                self.file = Some(self.storage.create_body(&self.name).await?);
            }
        }
        if self.flush_due() {
            self.flush_buffer().await?;
        }
        Ok(())
    }

    /// The content has just outgrown the inline limit.
    fn spill_due(&self) -> bool {
        !self.spilled() && self.inline.len() > self.inline_max_bytes
    }

    /// Past the inline limit, a whole write's worth is gathered.
    fn flush_due(&self) -> bool {
        self.spilled() && self.inline.len() >= BODY_WRITE_BYTES
    }

    /// The content is past the inline limit.
    fn spilled(&self) -> bool {
        self.in_log || self.file.is_some()
    }

    async fn flush_buffer(&mut self) -> Result<(), QueueError> {
        if self.in_log {
            return self.append_extents().await;
        }
        let file = self.file.as_ref().expect("a body file is open");
        // The buffer grows again from empty: one allocated at its full size
        // for every session in DATA was measured to raise the resident
        // memory of 200 dribbling clients by half (test_scan_dribble.py).
        let bytes = std::mem::take(&mut self.inline);
        let len = bytes.len() as u64;
        write_all_at(file, bytes, self.file_offset_bytes).await?;
        self.file_offset_bytes += len;
        assert_eq!(self.file_offset_bytes, self.size_bytes, "every byte received is in the body file");
        Ok(())
    }

    /// Appends the buffer to the body log, in extents of at most what one
    /// takes; an extent that continues the previous one in its segment
    /// (no other session wrote between them) is merged with it.
    async fn append_extents(&mut self) -> Result<(), QueueError> {
        let body_log = self.body_log.clone().expect("a body in the log has one");
        let mut bytes = std::mem::take(&mut self.inline);
        let max = body_log.extent_bytes_max();
        while !bytes.is_empty() {
            let rest = if bytes.len() > max { bytes.split_off(max) } else { Vec::new() };
            let piece = std::mem::replace(&mut bytes, rest);
            let len = piece.len() as u64;
            let extent = body_log.append(piece, &mut self.pins).await?;
            self.file_offset_bytes += len;
            match self.extents.last_mut() {
                Some(last)
                    if last.segment_sequence == extent.segment_sequence
                        && u64::from(last.offset_bytes) + u64::from(last.size_bytes)
                            == u64::from(extent.offset_bytes)
                        && u32::try_from(u64::from(last.size_bytes) + u64::from(extent.size_bytes)).is_ok() =>
                {
                    last.size_bytes += extent.size_bytes;
                }
                _ => {
                    if self.extents.len() == queue_format::BODY_EXTENTS_MAX {
                        return Err(QueueError::Io(std::io::Error::other(format!(
                            "message {}: more than {} body log extents",
                            self.id,
                            queue_format::BODY_EXTENTS_MAX
                        ))));
                    }
                    self.extents.push(extent);
                }
            }
        }
        assert_eq!(self.file_offset_bytes, self.size_bytes, "every byte received is in the body log");
        Ok(())
    }

    /// The body as the body log holds it so far.
    fn log_body(&self) -> Body {
        let mut table = Vec::with_capacity(self.extents.len() * queue_format::BODY_EXTENT_SIZE_BYTES);
        queue_format::encode_body_extents(&self.extents, &mut table);
        Body::Log { size_bytes: self.size_bytes, checksum: self.checksum, extents: std::sync::Arc::from(table) }
    }

    /// Makes the message durable: the body file (if any) flushed, then the
    /// envelope record in the head log. Returns only when both are on
    /// stable storage; the message then goes to delivery through the
    /// hand-off.
    ///
    /// On failure nothing is acknowledged. The body file is removed, except
    /// when the envelope's batch failed after its write was issued: then the
    /// envelope may be on disk and be recovered after a restart, and its body
    /// is kept for it (an orphan, deleted at the next start, if it is not).
    pub async fn commit(mut self, queue: &Queue<S>, mut env: Envelope) -> Result<(), QueueError> {
        debug_assert_eq!(env.id, self.id);
        if self.failed {
            self.discard().await;
            return Err(QueueError::Io(std::io::Error::other(format!("message {}: an earlier write failed", self.id))));
        }
        env.size_bytes = self.size_bytes;
        let body = match self.finish_body(&mut env).await {
            Ok(body) => body,
            Err(error) => {
                self.discard().await;
                return Err(error);
            }
        };
        // The body file is flushed by the committer with the others of its
        // batch; the session keeps it open until then. Extents in the body
        // log: one flush of each segment covers every body of the batch.
        let sync = match (&body, env.body.log_segments(), &self.body_log) {
            (Some(file), _, _) => {
                let file = file.clone();
                Some(Box::pin(async move { file.sync().await }) as BodySync)
            }
            (None, Some((first, last)), Some(body_log)) => {
                let body_log = body_log.clone();
                Some(Box::pin(async move { body_log.sync(first, last).await }) as BodySync)
            }
            _ => None,
        };
        let appended = queue.append_with_body(LogKind::Head, Staged::envelope(env.clone()), sync).await;
        if let Some(file) = body {
            match Rc::try_unwrap(file) {
                Ok(file) => {
                    // Flushed or not, nothing more is written to it: a failed
                    // close loses nothing.
                    if let Err(e) = file.close().await {
                        crate::log::event("queue_error", &[("id", &self.id), ("file", &self.name), ("error", &e)]);
                    }
                }
                Err(_) => debug_assert!(false, "the committer keeps no body file after the batch"),
            }
        }
        // The body log segments are let go as the writer drops, on return.
        match appended {
            Ok(location) => {
                queue.hand_fresh(env, location);
                Ok(())
            }
            Err((error, maybe_on_disk)) => {
                if !maybe_on_disk {
                    self.discard().await;
                } else if let Some((first, last)) = env.body.log_segments() {
                    // The envelope may be recovered from the failed batch:
                    // its extents stay until the next start decides.
                    queue.body_log.add_live(first, last);
                }
                Err(error)
            }
        }
    }

    /// The body, complete: the inline bytes, the body log's extents, or the
    /// body file with every byte written out (not yet flushed: the
    /// committer flushes it, or the extents' segments, before the envelope
    /// is written, writer rule 4), returned to be flushed.
    async fn finish_body(&mut self, env: &mut Envelope) -> Result<Option<Rc<S::Body>>, QueueError> {
        if self.in_log {
            if !self.inline.is_empty() {
                self.flush_buffer().await?;
            }
            env.body = self.log_body();
            return Ok(None);
        }
        if self.file.is_none() {
            env.body = Body::Inline(std::sync::Arc::from(std::mem::take(&mut self.inline)));
            return Ok(None);
        }
        self.flush_buffer().await?;
        let file = self.file.take().expect("checked above");
        env.body = Body::File { size_bytes: self.size_bytes, checksum: self.checksum };
        Ok(Some(Rc::new(file)))
    }

    /// The content so far as a `Body`, for delivery before the commit
    /// (early delivery): the inline bytes, or the body file with its
    /// buffer written out (not yet flushed to stable storage).
    pub async fn body_before_commit(&mut self) -> Result<Body, QueueError> {
        if self.failed {
            return Err(QueueError::Io(std::io::Error::other(format!("message {}: an earlier write failed", self.id))));
        }
        if self.spilled() {
            if !self.inline.is_empty() {
                if let Err(error) = self.flush_buffer().await {
                    self.failed = true;
                    self.discard().await;
                    return Err(error);
                }
            }
            if self.in_log {
                return Ok(self.log_body());
            }
            Ok(Body::File { size_bytes: self.size_bytes, checksum: self.checksum })
        } else {
            Ok(Body::Inline(std::sync::Arc::from(self.inline.as_slice())))
        }
    }

    /// Drops a message that will not be acknowledged.
    /// Boxed, allocated only for a message given up: the writer and the
    /// closing of its body file would otherwise size every session's task.
    pub fn abort(mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> {
        Box::pin(async move { self.discard().await })
    }

    /// Closes and removes the body file, if there is one. Safe to repeat.
    async fn discard(&mut self) {
        if let Some(body_log) = &self.body_log {
            body_log.release(&mut self.pins);
        }
        if let Some(file) = self.file.take() {
            let _ = file.close().await;
        }
        if std::mem::take(&mut self.file_named) {
            if let Err(e) = self.storage.remove(&self.name).await {
                if e.kind() != std::io::ErrorKind::NotFound {
                    crate::log::event("queue_error", &[("id", &self.id), ("file", &self.name), ("error", &e)]);
                }
            }
        }
    }
}

/// Runs `futures` together until every one is done: their results in order.
async fn join_all(futures: Vec<BodySync>) -> Vec<std::io::Result<()>> {
    use std::task::Poll;
    let mut running: Vec<Option<BodySync>> = futures.into_iter().map(Some).collect();
    let mut results: Vec<Option<std::io::Result<()>>> = running.iter().map(|_| None).collect();
    futures_lite::future::poll_fn(|cx| {
        let mut pending = false;
        for (slot, result) in running.iter_mut().zip(results.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    Poll::Ready(done) => {
                        *result = Some(done);
                        *slot = None;
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    results.into_iter().map(|result| result.expect("every future finished")).collect()
}

/// Why a body file cannot be delivered from. Delivery defers the message:
/// damaged content is never sent.
#[derive(Debug, thiserror::Error)]
#[error("body file {file} of message {id}: {problem}")]
pub struct BodyDamaged {
    pub id: String,
    pub file: String,
    pub problem: BodyProblem,
}

#[derive(Debug, thiserror::Error)]
pub enum BodyProblem {
    #[error("missing")]
    Missing,
    #[error("unreadable: {0}")]
    Unreadable(std::io::Error),
    #[error("{found_bytes} bytes, the envelope says {expected_bytes}")]
    Size { expected_bytes: u64, found_bytes: u64 },
    #[error("crc32c {found:#010x}, the envelope says {expected:#010x}")]
    Checksum { expected: u32, found: u32 },
}

impl<S: Storage + 'static> Queue<S> {
    /// Checks a message's body before delivery uses it (SPEC section 6.1):
    /// a body file must exist with the size and CRC32C its envelope states.
    /// It is read front to back in chunks of `BODY_CHECK_CHUNK_BYTES`. An
    /// inline body needs no check here: the record's checksum covers it and
    /// the decoder compared its `body_checksum` when the record was read.
    ///
    /// On a mismatch it logs one `queue_body_damaged` line and returns the
    /// problem; the caller defers the message.
    pub async fn check_body(&self, env: &Envelope) -> Result<(), BodyDamaged> {
        let (size_bytes, checksum) = match env.body {
            Body::Inline(_) => return Ok(()),
            Body::File { size_bytes, checksum } | Body::Log { size_bytes, checksum, .. } => (size_bytes, checksum),
        };
        let name = match env.body {
            Body::Log { .. } => {
                let mut names: Vec<String> = bodylog::pieces(&env.id, &env.body).into_iter().map(|p| p.0).collect();
                names.dedup();
                format!("body log ({})", names.join(" "))
            }
            _ => body_name(&env.id),
        };
        let problem = match self.body_checksum(env, size_bytes).await {
            Ok(found) if found == checksum => return Ok(()),
            Ok(found) => BodyProblem::Checksum { expected: checksum, found },
            Err(problem) => problem,
        };
        crate::log::event(
            "queue_body_damaged",
            &[("id", &env.id), ("file", &name), ("problem", &problem), ("shard", &self.shard_index)],
        );
        Err(BodyDamaged { id: env.id.clone(), file: name, problem })
    }

    /// The CRC32C of a message's stored body, which must be `size_bytes`
    /// long: a body file of another size, or extents the body log's files
    /// do not hold whole, are refused.
    async fn body_checksum(&self, env: &Envelope, size_bytes: u64) -> Result<u32, BodyProblem> {
        let unreadable = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::NotFound => BodyProblem::Missing,
            _ => BodyProblem::Unreadable(e),
        };
        let mut reader = StorageReader::new(self.storage.clone(), &env.id, &env.body);
        if let Body::File { .. } = env.body {
            // A body file longer than its envelope says is refused too: its
            // size first, on the file the reader then reads.
            let name = body_name(&env.id);
            let file = self.storage.open_body(&name).await.map_err(unreadable)?;
            let found_bytes = file.size_bytes().await.map_err(BodyProblem::Unreadable);
            reader.file = Some((name, file));
            let problem = match found_bytes {
                Ok(found_bytes) if found_bytes == size_bytes => None,
                Ok(found_bytes) => Some(BodyProblem::Size { expected_bytes: size_bytes, found_bytes }),
                Err(problem) => Some(problem),
            };
            if let Some(problem) = problem {
                reader.close().await;
                return Err(problem);
            }
        }
        let mut checksum = 0u32;
        let mut found_bytes = 0u64;
        let result = loop {
            match reader.read(BODY_CHECK_CHUNK_BYTES).await {
                Ok(bytes) if bytes.is_empty() => break Ok(()),
                Ok(bytes) => {
                    checksum = queue_format::checksum::crc32c_append(checksum, &bytes);
                    found_bytes += bytes.len() as u64;
                    glommio::yield_if_needed().await;
                }
                Err(e) => break Err(unreadable(e)),
            }
        };
        reader.close().await;
        result?;
        if found_bytes != size_bytes {
            // Shorter than it said a moment ago, or extents past a file's end.
            return Err(BodyProblem::Size { expected_bytes: size_bytes, found_bytes });
        }
        Ok(checksum)
    }

    /// The body log's segments, and those of them the collector may delete
    /// now; checks the body log's invariants.
    #[cfg(test)]
    pub fn body_log_segments(&self) -> (Vec<u64>, Vec<u64>) {
        self.body_log.check();
        (self.body_log.kept(), self.body_log.collectable())
    }

    /// A message's whole stored content, read through the queue's storage
    /// after [`Queue::check_body`] (the simulation's deliveries).
    #[cfg(test)]
    pub async fn read_body(&self, env: &Envelope) -> Option<Vec<u8>> {
        if let Body::Inline(bytes) = &env.body {
            return Some(bytes.to_vec());
        }
        self.check_body(env).await.ok()?;
        let mut reader = StorageReader::new(self.storage.clone(), &env.id, &env.body);
        let mut content = Vec::new();
        let result = loop {
            match reader.read(BODY_CHECK_CHUNK_BYTES).await {
                Ok(bytes) if bytes.is_empty() => break Some(()),
                Ok(bytes) => content.extend_from_slice(&bytes),
                Err(_) => break None,
            }
        };
        reader.close().await;
        result.map(|()| content)
    }
}

/// Reads a stored body (a body file, or the body log's extents) through
/// the queue's [`Storage`], front to back: a file is opened once for all
/// its pieces in a row. A file shorter than a piece ends the body there;
/// the caller compares the bytes it got with the envelope's size.
struct StorageReader<S: Storage> {
    storage: Rc<S>,
    /// (file name, offset, size) per piece.
    pieces: Vec<(String, u64, u64)>,
    cursor: bodylog::PieceCursor,
    file: Option<(String, S::Body)>,
}

impl<S: Storage> StorageReader<S> {
    fn new(storage: Rc<S>, id: &str, body: &Body) -> StorageReader<S> {
        StorageReader { storage, pieces: bodylog::pieces(id, body), cursor: Default::default(), file: None }
    }

    /// Up to `len` bytes; empty at the end.
    async fn read(&mut self, len: usize) -> std::io::Result<Vec<u8>> {
        let pieces = &self.pieces;
        let Some((index, offset, want)) =
            self.cursor.next(|i| pieces.get(i).map(|&(_, offset, size)| (offset, size)), len)
        else {
            return Ok(Vec::new());
        };
        let name = &pieces[index].0;
        if self.file.as_ref().map(|(open, _)| open) != Some(name) {
            if let Some((_, file)) = self.file.take() {
                let _ = file.close().await;
            }
            self.file = Some((name.clone(), self.storage.open_body(name).await?));
        }
        let (_, file) = self.file.as_ref().expect("opened above");
        let bytes = file.read_at(offset, want).await?;
        self.cursor.advance(bytes.len(), want);
        Ok(bytes)
    }

    async fn close(mut self) {
        if let Some((_, file)) = self.file.take() {
            let _ = file.close().await;
        }
    }
}
