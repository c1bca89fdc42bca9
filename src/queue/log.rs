//! One envelope log of one shard (the head log or the retry log): its
//! segments, the records staged for its next batch, and the batch encoder.
//!
//! Place in the pipeline: owned by [`super::Queue`], whose committer task
//! takes the staged records, asks this module for the bytes of one batch
//! (segment header included when the batch opens a segment), writes them
//! with one O_DIRECT write and one fdatasync, and then wakes the waiters.
//! The writer rules of `queue-format/SPEC.md` section 10 are kept here:
//! one batch in flight, whole padded blocks, a new segment after a restart
//! or a failed batch, sequence numbers that jump by 2^32 when they do.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::rc::Rc;

use queue_format::{
    encoded_size_bytes, padded_size_bytes, BatchBuilder, Completion, LogKind, RecordBody, SegmentHeader,
    BLOCK_SIZE_BYTES, RECORD_SEQUENCE_RESTART_GAP, SEGMENT_HEADER_SIZE_BYTES,
};

use super::envelope::{AddressTexts, Envelope};
use super::QueueError;

/// Largest batch written at once (one write, one fdatasync).
pub const BATCH_BYTES_MAX: usize = 8 << 20;
/// Staged bytes per log beyond which new records wait for room.
pub const STAGED_BYTES_MAX: usize = 32 << 20;
/// Freed segment files kept per log for reuse (written once already, so
/// flushes inside them are the cheapest).
pub const FREE_SEGMENTS_MAX: usize = 2;
/// How far past a batch's end the committer zeroes a segment's blocks
/// that were never written (unwritten extents after fallocate): one
/// extent conversion, carried by one flush, per this many bytes of log
/// instead of one per batch.
pub const INITIALIZE_AHEAD_BYTES: u64 = 4 << 20;

/// The range to zero after a batch ending at `batch_end` (block-aligned)
/// in a segment of `size_bytes` whose first `initialized_bytes` are known
/// to be written: None while the batch stays inside them, else from the
/// batch's end (or the initialized part's, if further) to
/// [`INITIALIZE_AHEAD_BYTES`] past the batch, within the segment.
pub fn initialize_range(initialized_bytes: u64, batch_end: u64, size_bytes: u64) -> Option<(u64, usize)> {
    assert!(batch_end.is_multiple_of(BLOCK_SIZE_BYTES as u64) && batch_end <= size_bytes);
    if batch_end + INITIALIZE_AHEAD_BYTES / 2 <= initialized_bytes || initialized_bytes >= size_bytes {
        return None;
    }
    let from = initialized_bytes.max(batch_end);
    let to = (batch_end + INITIALIZE_AHEAD_BYTES).min(size_bytes);
    (to > from).then(|| (from, (to - from) as usize))
}

/// A freed segment file and how much of it is known to be written.
#[derive(Clone, Debug)]
pub struct FreeSegment {
    pub name: String,
    pub initialized_bytes: u64,
}

/// Where a record is: its log, segment and byte range in the segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub log: LogKind,
    pub segment_sequence: u64,
    pub offset: u32,
    pub size_bytes: u32,
}

/// A record waiting for the next batch, owned until it is encoded.
pub enum Staged {
    /// A first envelope (head log), with its addresses' text forms.
    Envelope(Envelope, AddressTexts),
    /// A replacement envelope (retry log).
    Replacement(Envelope, AddressTexts),
    Completion(Completion),
}

impl Staged {
    pub fn envelope(env: Envelope) -> Staged {
        let texts = AddressTexts::of(&env);
        Staged::Envelope(env, texts)
    }

    pub fn replacement(env: Envelope) -> Staged {
        let texts = AddressTexts::of(&env);
        Staged::Replacement(env, texts)
    }

    /// A completion waits for the next batch (nobody waits for it); any
    /// other record is someone's acknowledgement and is flushed at once.
    pub fn is_urgent(&self) -> bool {
        !matches!(self, Staged::Completion(_))
    }

    pub fn body(&self) -> RecordBody<'_> {
        match self {
            Staged::Envelope(env, texts) => RecordBody::Envelope(env.to_format(texts)),
            Staged::Replacement(env, texts) => RecordBody::ReplacementEnvelope(env.to_format(texts)),
            Staged::Completion(c) => RecordBody::Completion(*c),
        }
    }
}

/// What makes a first envelope's body file durable: its fdatasync, run by
/// the committer together with those of the other envelopes of the same
/// batch and before the batch is written (writer rule 4), so that one
/// journal commit of the file system covers many body files.
pub type BodySync = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>>>>;

/// How a staged record ended: durable at a location, or refused.
pub struct Waiter {
    outcome: Cell<Option<Result<Location, QueueError>>>,
    /// The body file's flush, for the committer to run (first envelopes
    /// with a body file only).
    body_sync: std::cell::RefCell<Option<BodySync>>,
    /// The record failed, but after its batch's write was issued: it may be
    /// on disk, and recovery may trust it (SPEC section 11, case 7).
    maybe_on_disk: Cell<bool>,
    event: event_listener::Event,
}

impl Waiter {
    pub fn new() -> Rc<Waiter> {
        Rc::new(Waiter {
            outcome: Cell::new(None),
            body_sync: std::cell::RefCell::new(None),
            maybe_on_disk: Cell::new(false),
            event: event_listener::Event::new(),
        })
    }

    pub fn finish(&self, outcome: Result<Location, QueueError>) {
        self.outcome.set(Some(outcome));
        self.event.notify(usize::MAX);
    }

    /// The batch failed; `maybe_on_disk` says whether its write was issued.
    pub fn fail(&self, error: QueueError, maybe_on_disk: bool) {
        self.maybe_on_disk.set(maybe_on_disk);
        self.finish(Err(error));
    }

    /// The record's body file must be flushed by `sync` before the record
    /// is written.
    pub fn set_body_sync(&self, sync: BodySync) {
        *self.body_sync.borrow_mut() = Some(sync);
    }

    /// The body flush the committer runs, taken once.
    pub fn take_body_sync(&self) -> Option<BodySync> {
        self.body_sync.borrow_mut().take()
    }

    pub fn maybe_on_disk(&self) -> bool {
        self.maybe_on_disk.get()
    }

    /// Waits until the batch holding the record was flushed (or failed).
    pub async fn wait(&self) -> Result<Location, QueueError> {
        loop {
            let listener = self.event.listen();
            if let Some(outcome) = self.outcome.take() {
                return outcome;
            }
            listener.await;
        }
    }
}

pub struct Segment<F> {
    pub file: Rc<F>,
    pub name: String,
    /// Records in this segment the index still needs.
    pub live: u32,
    /// Retry log only: the newest head-log segment when this one stopped
    /// taking records; it is kept until that head segment is gone
    /// (SPEC section 13). None while it is the active segment.
    pub sealed_head_sequence: Option<u64>,
    /// The first bytes of the file known to be written (records or the
    /// zeros of [`initialize_range`]); past them blocks may be unwritten
    /// extents.
    pub initialized_bytes: u64,
}

impl<F> Segment<F> {
    /// The index points at one more record of this segment.
    pub fn live_add(&mut self) {
        self.live_add_count(1);
    }

    /// The index points at `count` more records of this segment.
    pub fn live_add_count(&mut self, count: u32) {
        self.live = self
            .live
            .checked_add(count)
            .unwrap_or_else(|| panic!("invariant: segment {} has more live records than a segment holds", self.name));
    }

    /// The index stopped pointing at one record of this segment.
    pub fn live_remove(&mut self) {
        self.live = self
            .live
            .checked_sub(1)
            .unwrap_or_else(|| panic!("invariant: segment {} lost a live record it was not counted for", self.name));
    }
}

/// The segment taking batches.
pub struct Active {
    pub sequence: u64,
    /// Where the next batch goes (block-aligned).
    pub write_offset: u64,
    /// The header block goes out with the first batch (writer rule 1).
    pub header_pending: bool,
    pub record_sequence_first: u64,
}

pub struct LogState<F> {
    pub kind: LogKind,
    pub shard_index: u16,
    pub segment_size_bytes: u64,
    pub segments: BTreeMap<u64, Segment<F>>,
    pub active: Option<Active>,
    pub record_sequence_next: u64,
    pub segment_sequence_next: u64,
    pub staged: Vec<(Staged, Rc<Waiter>)>,
    pub staged_bytes: usize,
    /// Staged records someone waits for (all but completions).
    pub staged_urgent: usize,
    /// Start the next batch in a new segment (set by garbage collection).
    pub rotate_requested: bool,
    /// Freed segment files ready for reuse.
    pub free: Vec<FreeSegment>,
}

/// A batch ready to write: its bytes, where they go, and where each
/// record landed.
pub struct BatchOut {
    pub bytes: Vec<u8>,
    pub write_offset: u64,
    pub segment_sequence: u64,
    pub record_sequence_first: u64,
    pub record_sequence_next: u64,
    /// Per staged record: offset and size in the segment.
    pub placed: Vec<(u32, u32)>,
    pub record_count: usize,
}

pub fn segment_name(kind: LogKind, sequence: u64) -> String {
    format!("{}-{sequence:016x}.seg", kind_name(kind))
}

pub fn kind_name(kind: LogKind) -> &'static str {
    match kind {
        LogKind::Head => "head",
        LogKind::Retry => "retry",
        LogKind::Body => "bodylog",
    }
}

/// Parses `head-0000000000000001.seg` into (kind, sequence).
pub fn parse_segment_name(name: &str) -> Option<(LogKind, u64)> {
    let stem = name.strip_suffix(".seg")?;
    let (kind, seq) = stem.split_once('-')?;
    let kind = match kind {
        "head" => LogKind::Head,
        "retry" => LogKind::Retry,
        "bodylog" => LogKind::Body,
        _ => return None,
    };
    if seq.len() != 16 {
        return None;
    }
    Some((kind, u64::from_str_radix(seq, 16).ok()?))
}

impl<F> LogState<F> {
    pub fn new(kind: LogKind, shard_index: u16, segment_size_bytes: u64) -> LogState<F> {
        assert!(segment_size_bytes.is_multiple_of(BLOCK_SIZE_BYTES as u64));
        LogState {
            kind,
            shard_index,
            segment_size_bytes,
            segments: BTreeMap::new(),
            active: None,
            record_sequence_next: 1,
            segment_sequence_next: 1,
            staged: Vec::new(),
            staged_bytes: 0,
            staged_urgent: 0,
            rotate_requested: false,
            free: Vec::new(),
        }
    }

    /// Bytes a batch may hold: the batch limit and what a fresh segment holds.
    pub fn batch_capacity_bytes(&self) -> usize {
        BATCH_BYTES_MAX.min(self.segment_size_bytes as usize - SEGMENT_HEADER_SIZE_BYTES)
    }

    /// Takes staged records for one batch: as many as fit, at least one.
    /// Returns them with the unpadded batch size.
    pub fn take_batch(&mut self) -> (Vec<(Staged, Rc<Waiter>)>, usize) {
        let capacity = self.batch_capacity_bytes();
        let mut size = 0usize;
        let mut count = 0usize;
        for (staged, _) in &self.staged {
            let record = encoded_size_bytes(&staged.body());
            if count > 0 && padded_size_bytes(size + record) > capacity {
                break;
            }
            size += record;
            count += 1;
        }
        let taken: Vec<_> = self.staged.drain(..count).collect();
        let urgent = taken.iter().filter(|(staged, _)| staged.is_urgent()).count();
        self.staged_bytes = self
            .staged_bytes
            .checked_sub(size)
            .expect("invariant: staged_bytes counts every staged record's encoded size");
        self.staged_urgent = self
            .staged_urgent
            .checked_sub(urgent)
            .expect("invariant: staged_urgent counts every staged record but completions");
        self.check_staged(true);
        (taken, size)
    }

    /// The staged counters agree with the staged records: always the cheap
    /// bounds; with `exact`, in debug builds, the sums themselves (once per
    /// batch, not per record staged, to keep staging O(1)).
    fn check_staged(&self, exact: bool) {
        assert!(self.staged_urgent <= self.staged.len(), "invariant: more urgent records counted than staged");
        assert_eq!(
            self.staged.is_empty(),
            self.staged_bytes == 0,
            "invariant: staged_bytes is 0 exactly when nothing is staged"
        );
        if !exact {
            return;
        }
        debug_assert_eq!(
            self.staged_urgent,
            self.staged.iter().filter(|(staged, _)| staged.is_urgent()).count(),
            "invariant: staged_urgent"
        );
        debug_assert_eq!(
            self.staged_bytes,
            self.staged.iter().map(|(staged, _)| encoded_size_bytes(&staged.body())).sum::<usize>(),
            "invariant: staged_bytes"
        );
    }

    /// Whether the batch of `padded` bytes needs a new segment first.
    pub fn needs_segment(&self, padded: usize) -> bool {
        match &self.active {
            None => true,
            Some(active) => self.rotate_requested || active.write_offset + padded as u64 > self.segment_size_bytes,
        }
    }

    /// Encodes `records` into one batch for the active segment, header
    /// block first if the segment has none on disk yet.
    pub fn encode_batch(&self, records: &[(Staged, Rc<Waiter>)], size: usize, now_unix_ms: u64) -> BatchOut {
        let active = self.active.as_ref().expect("a segment is open before a batch is encoded");
        let padded = padded_size_bytes(size);
        let header_bytes = if active.header_pending { SEGMENT_HEADER_SIZE_BYTES } else { 0 };
        let mut bytes = vec![0u8; header_bytes + padded];
        if active.header_pending {
            let header = SegmentHeader {
                format_version: queue_format::FORMAT_VERSION,
                log_kind: self.kind,
                shard_index: self.shard_index,
                segment_sequence: active.sequence,
                record_sequence_first: active.record_sequence_first,
                created_unix_ms: now_unix_ms,
                segment_size_bytes: self.segment_size_bytes,
            };
            let block: &mut [u8; SEGMENT_HEADER_SIZE_BYTES] =
                (&mut bytes[..SEGMENT_HEADER_SIZE_BYTES]).try_into().expect("one block");
            header.encode(block).expect("the header of a configured segment is valid");
        }
        let batch_offset = active.write_offset;
        let mut builder =
            BatchBuilder::new(&mut bytes[header_bytes..], self.kind, self.shard_index, self.record_sequence_next);
        let mut placed = Vec::with_capacity(records.len());
        for (staged, _) in records {
            let start = builder.size_bytes();
            builder.push(&staged.body()).expect("records are checked when staged and the batch sized for them");
            let end = builder.size_bytes();
            placed.push(((batch_offset as usize + start) as u32, (end - start) as u32));
        }
        let batch = builder.finish();
        assert_eq!(batch.size_bytes, padded);
        let (record_sequence_first, record_sequence_next) = (batch.record_sequence_first, batch.record_sequence_next);
        BatchOut {
            bytes,
            write_offset: batch_offset - header_bytes as u64,
            segment_sequence: active.sequence,
            record_sequence_first,
            record_sequence_next,
            placed,
            record_count: records.len(),
        }
    }

    /// The batch is durable: the segment's write point moves past it.
    pub fn batch_durable(&mut self, batch: &BatchOut) {
        let active = self.active.as_mut().expect("the batch went to the active segment");
        assert_eq!(active.sequence, batch.segment_sequence);
        active.write_offset = batch.write_offset + batch.bytes.len() as u64;
        active.header_pending = false;
        self.record_sequence_next = batch.record_sequence_next;
        assert!(active.write_offset <= self.segment_size_bytes);
    }

    /// The batch failed: nothing of it is acknowledged, the segment is
    /// abandoned, and the next segment's numbers start past anything the
    /// failed batch may have left on disk (writer rule 7).
    pub fn batch_failed(&mut self, batch_record_sequence_next: u64) {
        self.active = None;
        self.record_sequence_next = batch_record_sequence_next + RECORD_SEQUENCE_RESTART_GAP;
    }

    /// Puts the completions of a failed batch back in front of the staged
    /// records, to be written again (writer rule 7).
    pub fn restage_front(&mut self, records: Vec<(Staged, Rc<Waiter>)>) {
        let mut again: Vec<(Staged, Rc<Waiter>)> = records;
        for (staged, _) in &again {
            self.count_staged(staged);
        }
        again.append(&mut self.staged);
        self.staged = again;
        self.check_staged(true);
    }

    fn count_staged(&mut self, staged: &Staged) {
        let size = encoded_size_bytes(&staged.body());
        self.staged_bytes = self.staged_bytes.checked_add(size).expect("staged bytes fit usize");
        self.staged_urgent =
            self.staged_urgent.checked_add(usize::from(staged.is_urgent())).expect("staged records fit usize");
    }

    /// Stage a record; the caller waits on the returned waiter.
    pub fn stage(&mut self, staged: Staged) -> Result<Rc<Waiter>, QueueError> {
        let body = staged.body();
        body.check().map_err(|e| QueueError::Io(std::io::Error::other(format!("record refused: {e}"))))?;
        let size = encoded_size_bytes(&body);
        if padded_size_bytes(size) > self.batch_capacity_bytes() {
            return Err(QueueError::Io(std::io::Error::other(format!(
                "record of {size} bytes does not fit a {}-byte segment",
                self.segment_size_bytes
            ))));
        }
        let waiter = Waiter::new();
        self.count_staged(&staged);
        self.staged.push((staged, waiter.clone()));
        self.check_staged(false);
        Ok(waiter)
    }

    pub fn newest_segment(&self) -> Option<u64> {
        self.segments.keys().next_back().copied()
    }

    pub fn oldest_segment(&self) -> Option<u64> {
        self.segments.keys().next().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::envelope::{Body, Recipient};
    use crate::queue::RcptState;
    use queue_format::CompletionReason;
    use std::sync::Arc;

    fn envelope(id: &str) -> Staged {
        Staged::envelope(Envelope {
            id: id.into(),
            sender: crate::smtp::address::ReversePath::Path(crate::queue::stored_address("s@example.org").unwrap()),
            recipients: vec![Recipient {
                address: crate::queue::stored_address("r@example.net").unwrap(),
                state: RcptState::Pending,
                last_reply: String::new(),
                folder: None,
                dsn: Default::default(),
            }],
            arrival_unix_ms: 1_000,
            next_retry_unix_ms: 1_000,
            attempt_count: 0,
            size_bytes: 3,
            body_8bit: false,
            body_binary: false,
            smtputf8: false,
            client: "[127.0.0.1]:1".into(),
            helo: "h".into(),
            body: Body::Inline(Arc::from(&b"abc"[..])),
            headers_prepended: Vec::new(),
            replica_of: None,
            held: false,
            auth: None,
            dsn: Default::default(),
            delay_warned: false,
        })
    }

    fn completion(id: &str) -> Staged {
        Staged::Completion(Completion {
            queue_id: crate::queue::envelope::queue_id_of(id),
            completion_unix_ms: 5,
            attempt_count: 0,
            reason: CompletionReason::Done,
        })
    }

    fn log() -> LogState<()> {
        LogState::new(LogKind::Head, 0, 64 * 1024)
    }

    #[test]
    fn staged_counters_follow_stage_take_and_restage() {
        let mut log = log();
        log.stage(envelope("000000000000AA00")).unwrap();
        log.stage(completion("000000000000BB00")).unwrap();
        log.stage(envelope("000000000000CC00")).unwrap();
        assert_eq!(log.staged_urgent, 2);
        let size: usize = log.staged.iter().map(|(s, _)| encoded_size_bytes(&s.body())).sum();
        assert_eq!(log.staged_bytes, size);
        let (taken, taken_bytes) = log.take_batch();
        assert_eq!((taken.len(), taken_bytes), (3, size));
        assert_eq!((log.staged_urgent, log.staged_bytes), (0, 0));
        // A failed batch's completion goes back in front.
        let completions: Vec<_> = taken.into_iter().filter(|(s, _)| !s.is_urgent()).collect();
        log.stage(envelope("000000000000DD00")).unwrap();
        log.restage_front(completions);
        assert_eq!(log.staged_urgent, 1);
        assert!(matches!(log.staged[0].0, Staged::Completion(_)));
        let (taken, _) = log.take_batch();
        assert_eq!(taken.len(), 2);
        assert_eq!((log.staged_urgent, log.staged_bytes), (0, 0));
    }

    #[test]
    #[should_panic(expected = "invariant: staged_urgent counts every staged record but completions")]
    fn a_lost_urgent_count_is_caught_when_the_batch_is_taken() {
        let mut log = log();
        log.stage(envelope("000000000000AA00")).unwrap();
        log.staged_urgent = 0;
        log.take_batch();
    }

    #[test]
    #[should_panic(expected = "invariant: staged_bytes counts every staged record's encoded size")]
    fn a_lost_byte_count_is_caught_when_the_batch_is_taken() {
        let mut log = log();
        log.stage(envelope("000000000000AA00")).unwrap();
        log.staged_bytes = 10;
        log.take_batch();
    }

    #[test]
    #[should_panic(expected = "invariant: staged_urgent")]
    fn an_urgent_count_that_disagrees_with_the_records_is_caught() {
        let mut log = log();
        log.stage(completion("000000000000AA00")).unwrap();
        log.staged_urgent = 1;
        log.restage_front(Vec::new());
    }

    fn segment() -> Segment<()> {
        Segment {
            file: Rc::new(()),
            name: "head-0000000000000001.seg".into(),
            live: 0,
            sealed_head_sequence: None,
            initialized_bytes: 0,
        }
    }

    #[test]
    fn zeros_run_ahead_of_the_batches_and_stop_at_the_segment_end() {
        const MIB: u64 = 1 << 20;
        let size = 64 * MIB;
        // A new segment: the first batch zeroes the 4 MiB after itself.
        assert_eq!(initialize_range(0, 8192, size), Some((8192, 4 << 20)));
        // Batches inside the first half of what is zeroed need nothing.
        let initialized = 8192 + 4 * MIB;
        assert_eq!(initialize_range(initialized, 64 * 1024, size), None);
        assert_eq!(initialize_range(initialized, 8192 + 2 * MIB, size), None);
        // Past the half, the next stretch is zeroed from where the last one ended.
        let end = 8192 + 2 * MIB + 4096;
        assert_eq!(
            initialize_range(initialized, end, size),
            Some((initialized, (end + 4 * MIB - initialized) as usize))
        );
        // A batch that overtook the zeros (larger than half of them) starts them again at its end.
        assert_eq!(initialize_range(MIB, 8 * MIB, size), Some((8 * MIB, 4 << 20)));
        // Never past the segment, and nothing once all of it is written.
        assert_eq!(initialize_range(62 * MIB, 63 * MIB, size), Some((63 * MIB, MIB as usize)));
        assert_eq!(initialize_range(size, size, size), None);
        assert_eq!(initialize_range(63 * MIB, size, size), None);
    }

    #[test]
    fn live_counts_go_up_and_down() {
        let mut segment = segment();
        segment.live_add();
        segment.live_add();
        segment.live_remove();
        assert_eq!(segment.live, 1);
    }

    #[test]
    #[should_panic(expected = "invariant: segment head-0000000000000001.seg lost a live record it was not counted for")]
    fn a_live_count_below_zero_is_caught() {
        segment().live_remove();
    }

    #[test]
    #[should_panic(
        expected = "invariant: segment head-0000000000000001.seg has more live records than a segment holds"
    )]
    fn a_live_count_past_its_type_is_caught() {
        let mut segment = segment();
        segment.live = u32::MAX;
        segment.live_add();
    }
}
