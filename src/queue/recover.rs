//! Recovery: one sequential pass over a shard's segments rebuilds the index
//! (queue id → newest envelope record) and says where each log ends.
//!
//! Place in the pipeline: run by [`super::Queue::open`] before the shard
//! takes connections, and by the `ringpost queue` tools on a running or
//! stopped spool. It works on segment bytes only (no I/O), so its rules —
//! SPEC section 11 — are tested on hand-made logs: the newest generation
//! wins, a Completion kills every record of its id in either log, a torn
//! tail ends a segment and nothing after it is trusted.

use std::collections::{HashMap, HashSet};

use queue_format::{
    LogExpect, LogKind, LogReader, LogStop, QueueId, RecordBody, SegmentHeader, SegmentHeaderError, StopReason,
};

use super::envelope::Envelope;
use super::log::Location;
use super::storage::Arriving;

/// What the scan learnt about one segment file.
#[derive(Clone, Debug)]
pub struct ScannedSegment {
    pub kind: LogKind,
    pub sequence: u64,
    pub name: String,
    /// None: the header failed its checks; the segment holds nothing trusted.
    pub header: Option<SegmentHeader>,
    /// Why the header failed its checks.
    pub header_error: Option<SegmentHeaderError>,
    pub stop: Option<LogStop>,
    pub records: u64,
    /// A problem worth a log line (media damage, a misnamed file).
    pub problem: Option<String>,
}

/// A message's newest envelope record as found so far.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub location: Location,
    pub record_sequence: u64,
    pub attempt_count: u16,
    pub retry_next_unix_ms: u64,
    pub arrival_unix_ms: u64,
    pub body_file: bool,
    /// The record carries the HELD flag: an operator held the message.
    pub held: bool,
    /// The decoded envelope, when the caller asked to keep it (boxed: a
    /// recovery that does not keep them holds a million candidates).
    pub envelope: Option<Box<Envelope>>,
}

/// A map keyed by queue id. Ids are made by the queue, never by a peer,
/// so the hash need not resist chosen keys: foldhash with a fixed seed is
/// several times faster than the standard SipHash on a 16-byte id, and the
/// same spool gives the same iteration order on every run.
pub type IdMap<V> = HashMap<QueueId, V, foldhash::fast::FixedState>;
pub type IdSet = HashSet<QueueId, foldhash::fast::FixedState>;
/// A map keyed by (log slot, segment sequence).
pub type SegmentMap<V> = HashMap<(usize, u64), V, foldhash::fast::FixedState>;

/// What the scan keeps of a message's newest envelope record so far: the
/// whole [`Candidate`] (the `ringpost queue` tools), or the queue's own
/// index entry, so that recovery fills the index itself and builds no
/// second table.
pub trait Live {
    fn of(candidate: Candidate) -> Self;
    /// The generation that decides which record is newest (SPEC section 11).
    fn attempt_count(&self) -> u16;
    fn location(&self) -> Location;
    fn body_file(&self) -> bool;
}

impl Live for Candidate {
    fn of(candidate: Candidate) -> Candidate {
        candidate
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

/// A retry-log envelope record in log order, for the runners' spans.
#[derive(Clone, Copy, Debug)]
pub struct RetryRecord {
    pub location: Location,
    pub record_sequence: u64,
    pub retry_next_unix_ms: u64,
}

pub struct Scan<V = Candidate> {
    pub live: IdMap<V>,
    /// The live messages whose newest envelope's body is in the body log:
    /// the first and last segment of its extents.
    pub body_log: IdMap<(u64, u64)>,
    pub completed: IdSet,
    pub segments: Vec<ScannedSegment>,
    /// Per log (head, retry): the last trusted record sequence number.
    pub record_sequence_last: [Option<u64>; 2],
    /// Records read, all types.
    pub records: u64,
    /// Every retry-log envelope record merged, in log order, when asked
    /// for ([`Scan::keeping_retry_order`]); [`Scan::retry_live`] keeps the
    /// ones still newest.
    pub retry_order: Option<Vec<RetryRecord>>,
    /// Retry-log records of `retry_order` that a newer record or a
    /// completion killed: (segment, offset). Few: a spool's retry log
    /// holds about one record per message.
    retry_dead: HashSet<(u64, u32), foldhash::fast::FixedState>,
    /// What `live` holds, counted as the merge goes (so that no walk of a
    /// million entries follows the scan): live messages per segment, keyed
    /// by (log slot, segment sequence), ...
    pub live_per_segment: SegmentMap<u32>,
    /// ... those in the head log, ...
    pub live_in_head: usize,
    /// ... and those whose body is a file of its own.
    pub live_body_files: usize,
}

impl<V> Default for Scan<V> {
    fn default() -> Scan<V> {
        Scan {
            live: IdMap::default(),
            body_log: IdMap::default(),
            completed: IdSet::default(),
            segments: Vec::new(),
            record_sequence_last: [None; 2],
            records: 0,
            retry_order: None,
            retry_dead: HashSet::default(),
            live_per_segment: SegmentMap::default(),
            live_in_head: 0,
            live_body_files: 0,
        }
    }
}

pub fn log_index(kind: LogKind) -> usize {
    match kind {
        LogKind::Head => 0,
        LogKind::Retry => 1,
        LogKind::Body => unreachable!("the body log holds no records"),
    }
}

/// One segment read on its own: its records in order, not yet set against
/// the segments before it. Made by [`scan_segment`] from the bytes alone,
/// so that it can run beside the executor (a helper thread, while the next
/// segment is read); [`Scan::add_scanned`] then merges segments in order.
#[derive(Debug)]
pub struct SegmentScan {
    pub segment: ScannedSegment,
    /// First record sequence number the header names, for the check
    /// against the previous segment of the same log.
    record_sequence_first: Option<u64>,
    /// The last trusted record's sequence number, all types.
    record_sequence_last: Option<u64>,
    items: Vec<ScanItem>,
    /// The envelopes whose body is in the body log, with the first and
    /// last body segment of their extents: few, and kept beside the items
    /// so that the merge of every other record stays as it was.
    body_log: Vec<(QueueId, Location, (u64, u64))>,
}

/// One envelope or completion record of a segment, as the index needs it.
#[derive(Debug)]
enum ScanItem {
    Envelope(QueueId, Candidate),
    Completion(QueueId),
}

/// Records a segment's list has room for before it first grows.
const SCAN_ITEMS_INITIAL: usize = 4096;

impl SegmentScan {
    /// Bytes of the segment's trusted records per envelope record among
    /// them (completions and padding counted in): what sizes the index
    /// for the rest of its log. None without an envelope record.
    pub fn envelope_bytes(&self) -> Option<usize> {
        let envelopes = self.items.iter().filter(|item| matches!(item, ScanItem::Envelope(..))).count();
        let end = self.segment.stop?.offset;
        let records_bytes = end.saturating_sub(queue_format::SEGMENT_HEADER_SIZE_BYTES);
        (envelopes > 0).then(|| records_bytes.div_ceil(envelopes))
    }

    /// An empty scan of one segment, allocated by the caller's thread:
    /// [`scan_segment`] may run on a helper thread, and the list it fills
    /// grows (realloc) in the arena it was allocated in, so that the
    /// helper threads' allocator arenas keep nothing once recovery ends.
    pub fn new(kind: LogKind, sequence: u64, name: &str) -> SegmentScan {
        SegmentScan {
            segment: ScannedSegment {
                kind,
                sequence,
                name: name.to_string(),
                header: None,
                header_error: None,
                stop: None,
                records: 0,
                problem: None,
            },
            record_sequence_first: None,
            record_sequence_last: None,
            items: Vec::with_capacity(SCAN_ITEMS_INITIAL),
            body_log: Vec::new(),
        }
    }
}

/// Reads one segment's records into `out` (from [`SegmentScan::new`]):
/// every record checked whole (CRC, frame, envelope), the ones the index
/// needs kept. `keep` says whether to keep the decoded envelopes. The
/// records are read as the bytes arrive: where a record reaches past what
/// is in so far, the walk waits for more and takes it up again at that
/// record, and only the bytes that are all in decide where the log ends,
/// so the outcome is the one of a walk over the whole segment.
pub fn scan_segment(mut out: SegmentScan, arriving: &Arriving<'_>, keep: bool) -> SegmentScan {
    let (kind, sequence) = (out.segment.kind, out.segment.sequence);
    let scanned = &mut out.segment;
    let (mut bytes, mut all_in) = arriving.wait(queue_format::SEGMENT_HEADER_SIZE_BYTES);
    let (header, reader) = match LogReader::open_segment(bytes) {
        Ok(pair) => pair,
        Err(e) => {
            scanned.header_error = Some(e);
            scanned.problem = Some(format!("segment header refused: {e}"));
            return out;
        }
    };
    scanned.header = Some(header);
    if header.log_kind != kind || header.segment_sequence != sequence {
        scanned.problem = Some(format!(
            "header says log {:?} segment {} but the file name says {:?} {}; not read",
            header.log_kind, header.segment_sequence, kind, sequence
        ));
        return out;
    }
    out.record_sequence_first = Some(header.record_sequence_first);
    // As `LogReader::open_segment` does: bytes past the header's size are
    // not the segment's.
    let size_bytes = usize::try_from(header.segment_size_bytes).unwrap_or(usize::MAX);
    // Without `keep`, the index needs only an envelope's fixed fields:
    // every record is still checked whole, but its recipients are not
    // collected.
    fn depth(reader: LogReader<'_>, keep: bool) -> LogReader<'_> {
        if keep {
            reader
        } else {
            reader.summaries()
        }
    }
    let mut reader = depth(reader, keep);
    let stop = loop {
        for entry in reader.by_ref() {
            scanned.records += 1;
            out.record_sequence_last = Some(entry.record.frame.record_sequence);
            let location = Location {
                log: kind,
                segment_sequence: sequence,
                offset: entry.offset as u32,
                size_bytes: entry.size_bytes as u32,
            };
            match &entry.record.body {
                RecordBody::Envelope(env) | RecordBody::ReplacementEnvelope(env) => {
                    if let queue_format::BodyRef::Log { extents, .. } = env.body {
                        let mut segments = queue_format::body_extents(extents).map(|e| e.segment_sequence);
                        if let Some(first) = segments.next() {
                            out.body_log.push((env.queue_id, location, (first, segments.last().unwrap_or(first))));
                        }
                    }
                    out.items.push(ScanItem::Envelope(
                        env.queue_id,
                        Candidate {
                            location,
                            record_sequence: entry.record.frame.record_sequence,
                            attempt_count: env.attempt_count,
                            retry_next_unix_ms: env.retry_next_unix_ms,
                            arrival_unix_ms: env.arrival_unix_ms,
                            body_file: matches!(env.body, queue_format::BodyRef::File { .. }),
                            held: env.flags.contains(queue_format::EnvelopeFlags::HELD),
                            envelope: if keep { Envelope::from_format(env).ok().map(Box::new) } else { None },
                        },
                    ))
                }
                RecordBody::Completion(c) => out.items.push(ScanItem::Completion(c.queue_id)),
                RecordBody::Padding { .. } => {}
            }
        }
        if all_in || bytes.len() >= size_bytes {
            break reader.stop();
        }
        // The walk stopped inside the bytes in so far: a record cut off by
        // the end of what has arrived, or the log's true end. Either way it
        // is taken up again where it stopped once more bytes are in.
        let (offset, record_sequence_next) = (reader.offset(), reader.record_sequence_next());
        (bytes, all_in) = arriving.wait(bytes.len() + 1);
        let expect = LogExpect { log_kind: header.log_kind, shard_index: header.shard_index, record_sequence_next };
        reader = depth(LogReader::new(&bytes[..bytes.len().min(size_bytes)], offset, expect), keep);
    };
    scanned.stop = stop;
    if let Some(stop) = stop {
        if !stop.reason.is_clean() {
            scanned.problem =
                Some(format!("log ends at offset {}: {}", stop.offset, queue_format::dump::stop_reason(&stop.reason)));
        }
    }
    out
}

impl<V: Live> Scan<V> {
    /// A scan that also lists the retry log's envelope records in log order.
    pub fn keeping_retry_order() -> Scan<V> {
        Scan { retry_order: Some(Vec::new()), ..Scan::default() }
    }

    /// Reads one segment. Segments go in order: every head segment by
    /// sequence, then every retry segment by sequence. `keep` says whether
    /// to keep the decoded envelopes of this log.
    pub fn add_segment(&mut self, kind: LogKind, sequence: u64, name: &str, bytes: &[u8], keep: bool) {
        self.add_scanned(scan_segment(SegmentScan::new(kind, sequence, name), &Arriving::whole(bytes), keep));
    }

    /// Merges one segment read by [`scan_segment`], in the order of
    /// [`Scan::add_segment`].
    pub fn add_scanned(&mut self, scan: SegmentScan) {
        let SegmentScan { mut segment, record_sequence_first, record_sequence_last, items, body_log } = scan;

        let slot = log_index(segment.kind);
        if let (Some(first), Some(last)) = (record_sequence_first, self.record_sequence_last[slot]) {
            if first <= last {
                segment.problem = Some(format!(
                    "first record sequence {first} is not past the previous segment's last {last}; not read"
                ));
                segment.stop = None;
                segment.records = 0;
                self.segments.push(segment);
                return;
            }
        }
        self.records += segment.records;
        if record_sequence_last.is_some() {
            self.record_sequence_last[slot] = record_sequence_last;
        }
        // Live messages of this segment, counted here and added to
        // `live_per_segment` once the segment is merged.
        let mut live_here = 0u32;
        for item in items {
            match item {
                ScanItem::Envelope(id, candidate) => {
                    if self.completed.contains(&id) {
                        continue;
                    }
                    let location = candidate.location;
                    if let Some(order) = self.retry_order.as_mut().filter(|_| slot == 1) {
                        order.push(RetryRecord {
                            location,
                            record_sequence: candidate.record_sequence,
                            retry_next_unix_ms: candidate.retry_next_unix_ms,
                        });
                    }
                    let body_file = candidate.body_file;
                    // The message's earlier live record this one replaces.
                    let replaced = match self.live.entry(id) {
                        std::collections::hash_map::Entry::Vacant(slot) => {
                            slot.insert(V::of(candidate));
                            None
                        }
                        // Equal generations: the later record of the log wins.
                        std::collections::hash_map::Entry::Occupied(mut slot)
                            if candidate.attempt_count >= slot.get().attempt_count() =>
                        {
                            if !self.body_log.is_empty() {
                                self.body_log.remove(&id);
                            }
                            Some(slot.insert(V::of(candidate)))
                        }
                        // An older generation: dead on arrival.
                        std::collections::hash_map::Entry::Occupied(_) => {
                            self.note_dead(Some(location));
                            continue;
                        }
                    };
                    live_here += 1;
                    self.live_in_head += usize::from(location.log == LogKind::Head);
                    self.live_body_files += usize::from(body_file);
                    if let Some(old) = replaced {
                        self.untally(&old, &segment, &mut live_here);
                        self.note_dead(Some(old.location()));
                    }
                }
                ScanItem::Completion(id) => {
                    let old = self.live.remove(&id);
                    if let Some(old) = &old {
                        self.untally(old, &segment, &mut live_here);
                    }
                    if !self.body_log.is_empty() {
                        self.body_log.remove(&id);
                    }
                    self.note_dead(old.map(|old| old.location()));
                    self.completed.insert(id);
                }
            }
        }
        if live_here > 0 {
            *self.live_per_segment.entry((slot, segment.sequence)).or_default() += live_here;
        }
        // The segment's envelopes in the body log that are still their
        // message's newest, after the whole segment is merged.
        for (id, location, range) in body_log {
            if self.live.get(&id).is_some_and(|live| live.location() == location) {
                self.body_log.insert(id, range);
            }
        }
        self.segments.push(segment);
    }

    /// Takes a live message that a newer record or a completion replaced
    /// out of the counts; `live_here` counts the segment being merged.
    fn untally(&mut self, old: &V, merging: &ScannedSegment, live_here: &mut u32) {
        let location = old.location();
        let key = (log_index(location.log), location.segment_sequence);
        if key == (log_index(merging.kind), merging.sequence) {
            *live_here -= 1;
        } else {
            let count = self.live_per_segment.get_mut(&key).expect("invariant: a live message's segment is counted");
            *count -= 1;
        }
        self.live_in_head -= usize::from(location.log == LogKind::Head);
        self.live_body_files -= usize::from(old.body_file());
    }

    /// Asserts that the counts kept during the merge are what `live` holds
    /// (a walk of every entry: checked builds and tests only).
    #[cfg(debug_assertions)]
    pub fn check_counts(&self) {
        let mut per_segment = SegmentMap::<u32>::default();
        for live in self.live.values() {
            let location = live.location();
            *per_segment.entry((log_index(location.log), location.segment_sequence)).or_default() += 1;
        }
        let mut counted = self.live_per_segment.clone();
        counted.retain(|_, count| *count > 0);
        assert_eq!(counted, per_segment, "invariant: live messages per segment counted during the merge");
        let in_head = self.live.values().filter(|live| live.location().log == LogKind::Head).count();
        assert_eq!(self.live_in_head, in_head, "invariant: live messages in the head log");
        let body_files = self.live.values().filter(|live| live.body_file()).count();
        assert_eq!(self.live_body_files, body_files, "invariant: live messages with a body file");
    }

    /// A record no longer its message's newest: forgotten by `retry_live`.
    fn note_dead(&mut self, dead: Option<Location>) {
        if let Some(dead) = dead.filter(|d| d.log == LogKind::Retry && self.retry_order.is_some()) {
            self.retry_dead.insert((dead.segment_sequence, dead.offset));
        }
    }

    /// The retry-log records still their message's newest, in log order
    /// (with [`Scan::keeping_retry_order`]; empty without).
    pub fn retry_live(&mut self) -> Vec<RetryRecord> {
        let mut order = self.retry_order.take().unwrap_or_default();
        if !self.retry_dead.is_empty() {
            let dead = std::mem::take(&mut self.retry_dead);
            order.retain(|r| !dead.contains(&(r.location.segment_sequence, r.location.offset)));
        }
        order
    }

    /// The first segment whose header is whole but of a version this build
    /// does not read: its name and version.
    pub fn unsupported_version(&self) -> Option<(&str, u16)> {
        self.segments.iter().find_map(|s| match s.header_error {
            Some(SegmentHeaderError::UnsupportedVersion(version)) => Some((s.name.as_str(), version)),
            _ => None,
        })
    }

    /// The stop of each segment that ended neither cleanly nor at the end:
    /// expected only in the newest segment of a log (a torn last batch).
    pub fn damaged(&self) -> impl Iterator<Item = &ScannedSegment> {
        self.segments.iter().filter(|s| s.problem.is_some())
    }
}

/// Why recovery refuses to open a shard's spool. Each is a spool this build
/// cannot read whole; nothing in it is changed, and the shard does not start.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(
        "segment {file} is {size_bytes} bytes, above queue.segment_size_bytes ({size_bytes_max}): \
         not read; set queue.segment_size_bytes to at least {size_bytes} to read it"
    )]
    SegmentTooLarge { file: String, size_bytes: u64, size_bytes_max: u64 },
    #[error(
        "segment {file} is in queue format version {version}; this build reads versions {} to {}",
        queue_format::FORMAT_VERSION_READ_MIN,
        queue_format::FORMAT_VERSION
    )]
    UnsupportedVersion { file: String, version: u16 },
}

impl From<RecoveryError> for std::io::Error {
    fn from(error: RecoveryError) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, error)
    }
}

/// Whether a stop is the ordinary end of a segment's data.
pub fn is_clean_stop(stop: &Option<LogStop>) -> bool {
    match stop {
        None => true,
        Some(stop) => matches!(stop.reason, StopReason::EndOfBytes | StopReason::Zeroed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::envelope::{Body, Recipient};
    use crate::queue::log::{LogState, Staged};
    use crate::queue::RcptState;
    use queue_format::{Completion, CompletionReason};
    use std::sync::Arc;

    fn env(id: &str, attempt: u16) -> Envelope {
        Envelope {
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
            next_retry_unix_ms: 2_000,
            attempt_count: attempt,
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
        }
    }

    /// A whole segment file with the given batches (each a list of records).
    fn segment(kind: LogKind, sequence: u64, first: u64, batches: Vec<Vec<Staged>>) -> (Vec<u8>, u64) {
        let size = 64 * 1024u64;
        let mut log: LogState<()> = LogState::new(kind, 0, size);
        log.record_sequence_next = first;
        log.active = Some(crate::queue::log::Active {
            sequence,
            write_offset: queue_format::SEGMENT_HEADER_SIZE_BYTES as u64,
            header_pending: true,
            record_sequence_first: first,
        });
        let mut file = vec![0u8; size as usize];
        for batch in batches {
            for staged in batch {
                log.stage(staged).unwrap();
            }
            let (records, bytes) = log.take_batch();
            let out = log.encode_batch(&records, bytes, 0);
            let at = out.write_offset as usize;
            file[at..at + out.bytes.len()].copy_from_slice(&out.bytes);
            log.batch_durable(&out);
        }
        (file, log.record_sequence_next)
    }

    fn completion(id: &str) -> Staged {
        Staged::Completion(Completion {
            queue_id: crate::queue::envelope::queue_id_of(id),
            completion_unix_ms: 5,
            attempt_count: 0,
            reason: CompletionReason::Done,
        })
    }

    const A: &str = "000000000000AA00";
    const B: &str = "000000000000BB00";
    const C: &str = "000000000000CC00";

    #[test]
    fn newest_generation_wins_and_completions_kill_across_logs() {
        let (head, _) = segment(
            LogKind::Head,
            1,
            1,
            vec![vec![Staged::envelope(env(A, 0)), Staged::envelope(env(B, 0))], vec![Staged::envelope(env(C, 0))]],
        );
        let (retry, _) = segment(
            LogKind::Retry,
            1,
            1,
            vec![vec![Staged::replacement(env(A, 1)), Staged::replacement(env(B, 1))], vec![completion(B)]],
        );
        let mut scan = Scan::<Candidate>::default();
        scan.add_segment(LogKind::Head, 1, "head", &head, true);
        scan.add_segment(LogKind::Retry, 1, "retry", &retry, true);
        assert_eq!(scan.live.len(), 2, "A (replaced) and C (fresh) live; B completed");
        let a = &scan.live[&crate::queue::envelope::queue_id_of(A)];
        assert_eq!((a.location.log, a.attempt_count), (LogKind::Retry, 1));
        let c = &scan.live[&crate::queue::envelope::queue_id_of(C)];
        assert_eq!((c.location.log, c.attempt_count), (LogKind::Head, 0));
        assert_eq!(**c.envelope.as_ref().unwrap(), env(C, 0));
        assert_eq!(scan.record_sequence_last, [Some(5), Some(5)], "3 records and 2 paddings per log");
        assert_eq!(scan.damaged().count(), 0);
        // Counted during the merge: C in the head segment, A in the retry
        // segment (B's two records were counted, then taken back).
        scan.check_counts();
        assert_eq!(scan.live_in_head, 1);
        assert_eq!(scan.live_per_segment.get(&(0, 1)), Some(&1));
        assert_eq!(scan.live_per_segment.get(&(1, 1)), Some(&1));
    }

    /// The runners' spans after recovery: every retry record still its
    /// message's newest, in log order; a record replaced by a newer one
    /// (in either order of generations) or killed by a completion is not
    /// among them.
    #[test]
    fn retry_live_keeps_the_newest_retry_records_in_log_order() {
        const D: &str = "000000000000DD00";
        let (head, _) = segment(LogKind::Head, 1, 1, vec![vec![Staged::envelope(env(D, 0))], vec![completion(C)]]);
        let (retry_1, next) = segment(
            LogKind::Retry,
            1,
            1,
            vec![
                vec![Staged::replacement(env(A, 1)), Staged::replacement(env(B, 2))],
                vec![Staged::replacement(env(C, 1))],
            ],
        );
        // B again with an older generation (it stays dead on arrival), A
        // again with a newer one, D's first retry record, then D completed.
        let (retry_2, _) = segment(
            LogKind::Retry,
            2,
            next,
            vec![
                vec![Staged::replacement(env(B, 1)), Staged::replacement(env(A, 2))],
                vec![Staged::replacement(env(D, 1))],
                vec![completion(D)],
            ],
        );
        let scan_of = |keep: bool| {
            let mut scan = if keep { Scan::<Candidate>::keeping_retry_order() } else { Scan::<Candidate>::default() };
            scan.add_segment(LogKind::Head, 1, "head", &head, false);
            scan.add_segment(LogKind::Retry, 1, "retry-1", &retry_1, false);
            scan.add_segment(LogKind::Retry, 2, "retry-2", &retry_2, false);
            scan
        };
        let mut scan = scan_of(true);
        let live: Vec<Location> = scan.retry_live().iter().map(|r| r.location).collect();
        let newest = |id: &str| scan.live[&crate::queue::envelope::queue_id_of(id)].location;
        assert_eq!(live, vec![newest(B), newest(A)], "B (generation 2) then A (generation 2), in log order");
        assert_eq!((newest(B).segment_sequence, newest(A).segment_sequence), (1, 2));
        assert_eq!(scan.live.len(), 2, "C and D completed");
        // A's first record taken back from segment 1, D's from segment 2
        // while it was merged.
        scan.check_counts();
        assert_eq!((scan.live_per_segment[&(1, 1)], scan.live_per_segment[&(1, 2)], scan.live_in_head), (1, 1, 0));
        assert!(scan_of(false).retry_live().is_empty(), "no order kept unless asked");
    }

    #[test]
    fn torn_tail_ends_the_segment_and_nothing_after_it_is_trusted() {
        let (mut head, _) = segment(
            LogKind::Head,
            1,
            1,
            vec![
                vec![Staged::envelope(env(A, 0))],
                vec![Staged::envelope(env(B, 0))],
                vec![Staged::envelope(env(C, 0))],
            ],
        );
        // Tear the second batch (block 2): one byte flipped inside B's record.
        head[2 * 4096 + 100] ^= 0xFF;
        let mut scan = Scan::<Candidate>::default();
        scan.add_segment(LogKind::Head, 1, "head", &head, false);
        let live: Vec<_> = scan.live.keys().copied().collect();
        assert_eq!(live, vec![crate::queue::envelope::queue_id_of(A)], "C follows the tear and is not trusted");
        let damaged: Vec<_> = scan.damaged().collect();
        assert_eq!(damaged.len(), 1);
        assert_eq!(damaged[0].stop.unwrap().offset, 2 * 4096);
    }

    #[test]
    fn truncated_file_and_bad_header() {
        let (head, _) = segment(LogKind::Head, 1, 1, vec![vec![Staged::envelope(env(A, 0))]]);
        // Cut in the middle of the first batch: nothing trusted, nothing panics.
        for cut in [0, 100, 4096, 4096 + 30, 4096 + 120] {
            let mut scan = Scan::<Candidate>::default();
            scan.add_segment(LogKind::Head, 1, "head", &head[..cut], false);
            assert!(scan.live.is_empty(), "cut at {cut}");
        }
        // Cut in the padding after it: the envelope is whole, and trusted.
        let mut scan = Scan::<Candidate>::default();
        scan.add_segment(LogKind::Head, 1, "head", &head[..8191], false);
        assert_eq!(scan.live.len(), 1);
        let mut bad = head.clone();
        bad[20] ^= 1;
        let mut scan = Scan::<Candidate>::default();
        scan.add_segment(LogKind::Head, 1, "head", &bad, false);
        assert!(scan.live.is_empty());
        assert!(scan.segments[0].header.is_none());
    }

    #[test]
    fn misnamed_segment_and_sequence_going_backwards_are_not_read() {
        let (one, _) = segment(LogKind::Head, 1, 1, vec![vec![Staged::envelope(env(A, 0))]]);
        let (two, _) = segment(LogKind::Head, 2, 1, vec![vec![Staged::envelope(env(B, 0))]]);
        let mut scan = Scan::<Candidate>::default();
        scan.add_segment(LogKind::Head, 1, "one", &one, false);
        scan.add_segment(LogKind::Head, 2, "two", &two, false);
        assert_eq!(scan.live.len(), 1, "segment 2 restarts numbering: refused");
        let mut scan = Scan::<Candidate>::default();
        scan.add_segment(LogKind::Head, 7, "one", &one, false);
        assert!(scan.live.is_empty());
        assert!(scan.segments[0].problem.as_ref().unwrap().contains("file name"));
    }

    /// What sizes the index: bytes of trusted records per envelope, the
    /// log's unwritten rest not counted; nothing for a segment without an
    /// envelope or whose header failed.
    #[test]
    fn envelope_bytes_counts_the_trusted_records_per_envelope() {
        let batches: Vec<Vec<Staged>> = (0..6)
            .map(|b| (0..10).map(|i| Staged::envelope(env(&format!("{:014X}{:02X}", b + 1, i), 0))).collect())
            .collect();
        let (bytes, _) = segment(LogKind::Head, 1, 1, batches);
        let scanned = scan_segment(SegmentScan::new(LogKind::Head, 1, "head"), &Arriving::whole(&bytes), false);
        let end = scanned.segment.stop.unwrap().offset;
        assert!(end > 10_000 && end < bytes.len(), "six batches, then unwritten space: {end}");
        let per_envelope = scanned.envelope_bytes().unwrap();
        assert_eq!(per_envelope, (end - queue_format::SEGMENT_HEADER_SIZE_BYTES).div_ceil(60));
        assert!((150..1_000).contains(&per_envelope), "{per_envelope}");

        let (bytes, _) = segment(LogKind::Head, 1, 1, vec![vec![completion(A)]]);
        assert_eq!(
            scan_segment(SegmentScan::new(LogKind::Head, 1, "head"), &Arriving::whole(&bytes), false).envelope_bytes(),
            None
        );
        let mut bad = bytes.clone();
        bad[20] ^= 1;
        assert_eq!(
            scan_segment(SegmentScan::new(LogKind::Head, 1, "head"), &Arriving::whole(&bad), false).envelope_bytes(),
            None
        );
    }
    /// A segment decoded as its chunked read brings it in gives what a
    /// decode of the whole segment gives, wherever the chunks cut the
    /// records: a full log, a torn record in the middle, a file cut short,
    /// a damaged header; and, keeping envelopes, the same envelopes.
    #[test]
    fn a_scan_following_a_chunked_read_equals_a_scan_of_the_whole() {
        let batches: Vec<Vec<Staged>> = (0..12)
            .map(|b| {
                let mut batch: Vec<Staged> =
                    (0..7).map(|i| Staged::envelope(env(&format!("{:014X}{:02X}", b + 1, i), 0))).collect();
                batch.push(completion(&format!("{:014X}{:02X}", b + 1, 3)));
                batch
            })
            .collect();
        let (full, _) = segment(LogKind::Retry, 4, 1, batches);
        let end = scan_segment(SegmentScan::new(LogKind::Retry, 4, "r"), &Arriving::whole(&full), false)
            .segment
            .stop
            .unwrap()
            .offset;
        assert!(end > 12_000, "twelve batches: {end}");
        let mut torn = full.clone();
        torn[end / 2] ^= 0x40;
        let mut header = full.clone();
        header[20] ^= 1;
        let cases: [(&str, &[u8]); 4] =
            [("full", &full), ("torn", &torn), ("cut", &full[..end * 2 / 3]), ("header", &header)];
        let dir = std::env::temp_dir().join(format!("ringpost-arriving-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in cases {
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            for keep in [false, true] {
                let whole = scan_segment(SegmentScan::new(LogKind::Retry, 4, "r"), &Arriving::whole(bytes), keep);
                let whole = format!("{whole:?}");
                for chunk_bytes in [1, 777, 4096, 10_000, 1 << 20] {
                    let arriving = crate::queue::storage::read_arriving(&path, full.len(), chunk_bytes, |arriving| {
                        scan_segment(SegmentScan::new(LogKind::Retry, 4, "r"), arriving, keep)
                    })
                    .unwrap();
                    assert_eq!(format!("{arriving:?}"), whole, "{name}, keep {keep}, chunks of {chunk_bytes}");
                }
            }
        }
        let scanned = scan_segment(SegmentScan::new(LogKind::Retry, 4, "r"), &Arriving::whole(&torn), false);
        assert!(scanned.segment.stop.unwrap().offset < end && scanned.segment.problem.is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
