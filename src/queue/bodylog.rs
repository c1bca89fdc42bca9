//! The body log: where the bodies larger than `queue.inline_max_bytes` of
//! a shard's fresh messages are kept, many to a file, so that one flush
//! makes a whole batch of them durable and no file is created or deleted
//! per message.
//!
//! Place in the pipeline: a [`super::MessageWriter`] appends a body here
//! while its message is received, a piece (an extent) each time it has
//! gathered a write's worth; concurrent sessions' extents interleave in
//! the segment being appended to. The head log's committer flushes the
//! segments a batch's bodies are in (one fdatasync per segment, however
//! many bodies) before it writes the batch (writer rule 4), so that the
//! envelope, which lists its body's extents, never names bytes that are
//! not durable. Delivery reads a body through [`StoredBody`], which also
//! reads body files. Only the head log's Envelope records name extents: a
//! message moved to the retry log has its body copied to a body file
//! first ([`super::Queue::append_replacement`]), so a segment lives about
//! as long as the first attempts of its messages (SPEC section 13).
//!
//! Files: `bodylog-<16 hex digits of the sequence>.seg`, a 4 KiB segment
//! header (log kind 3) and then raw bytes, written through the page cache,
//! at most `queue.segment_size_bytes` long; a segment's space is written
//! once and never reused. A segment is deleted when it is not the one being
//! appended to, no message being received has an uncommitted extent in it,
//! and no live message's newest envelope names an extent in it.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use queue_format::{BodyExtent, LogKind, SegmentHeader, SEGMENT_HEADER_SIZE_BYTES};

use super::envelope::Body;
use super::storage::{BodyFile, Storage};
use super::QueueError;

/// Segments a body log keeps before the next message's body goes to a body
/// file instead. Normally a shard keeps two or three (its messages are
/// delivered within seconds); many more means first attempts that last
/// (a slow next hop, a backlog in the hand-off), each keeping a whole
/// segment for one body: past this the disk taken is bounded by the body
/// files' one per message instead.
pub const SEGMENTS_MAX: usize = 16;

/// Largest single extent: a body's first write holds everything received
/// up to `queue.inline_max_bytes` (at most 1 MiB) and one write more.
const EXTENT_BYTES_MAX: usize = 1 << 20;

/// The name of body log segment `sequence`.
pub fn segment_name(sequence: u64) -> String {
    super::log::segment_name(LogKind::Body, sequence)
}

/// One body log segment.
struct Segment<F> {
    /// Open while it may still be flushed (those found at start-up are
    /// durable already and are only read, by path).
    file: Option<Rc<F>>,
    name: String,
    /// Where the next extent goes.
    append_offset_bytes: u64,
    /// Messages being received with an extent here that is not committed
    /// yet (or given up).
    writers: usize,
    /// Live messages whose newest envelope names an extent here, and
    /// envelopes of failed batches that may be on disk all the same.
    live: usize,
    /// Writes completed here, and how many of them the last successful
    /// flush covered.
    writes_done: u64,
    writes_synced: u64,
    syncing: bool,
    /// A write or a flush failed: nothing more goes in, and every later
    /// flush of it fails too (a failed fdatasync is never retried on the
    /// same pages: SPEC section 12).
    failed: bool,
    /// That failure was a full disk: the sessions it refuses hear 452.
    failed_no_space: bool,
}

struct State<F> {
    segments: BTreeMap<u64, Segment<F>>,
    /// The segment extents are appended to.
    active: Option<u64>,
    sequence_next: u64,
    /// A new segment is being created; appenders wait.
    opening: bool,
}

/// The body log of one shard.
pub struct BodyLog<S: Storage> {
    storage: Rc<S>,
    shard_index: u16,
    clock: crate::clock::Clock,
    segment_size_bytes: u64,
    state: RefCell<State<S::Body>>,
    /// Wakes appenders waiting for a segment and flushers waiting for a
    /// flush in flight.
    event: event_listener::Event,
    /// Wakes the queue's collector: a segment may have become collectable.
    gc_event: Rc<event_listener::Event>,
}

/// The segments a message being received holds extents in (each counted
/// once in its segment's `writers`), until [`BodyLog::release`].
#[derive(Debug, Default)]
pub struct Pins(Vec<u64>);

impl<S: Storage> BodyLog<S> {
    pub fn new(
        storage: Rc<S>,
        shard_index: u16,
        segment_size_bytes: u64,
        clock: crate::clock::Clock,
        gc_event: Rc<event_listener::Event>,
    ) -> BodyLog<S> {
        assert!(segment_size_bytes > SEGMENT_HEADER_SIZE_BYTES as u64 && segment_size_bytes <= 1 << 32);
        BodyLog {
            storage,
            shard_index,
            clock,
            segment_size_bytes,
            state: RefCell::new(State { segments: BTreeMap::new(), active: None, sequence_next: 1, opening: false }),
            event: event_listener::Event::new(),
            gc_event,
        }
    }

    /// Takes the segments found at start-up: `live` counts, per body
    /// segment, the live envelopes naming it. The others hold nothing a
    /// live envelope needs and are deleted. Returns how many were deleted.
    ///
    /// Of a segment only the header is read: one of a format version this
    /// build does not read stops the start (as a log segment's does); any
    /// other fault in it is reported, and the segment kept if an envelope
    /// names it (the body check before delivery then judges its extents).
    pub async fn recover(&self, found: Vec<u64>, live: &BTreeMap<u64, usize>) -> io::Result<usize> {
        let mut removed = 0;
        for sequence in found {
            let name = segment_name(sequence);
            if let Some(problem) = self.header_problem(&name, sequence).await? {
                crate::log::event(
                    "queue_recovery",
                    &[("shard", &self.shard_index), ("segment", &name), ("problem", &problem)],
                );
            }
            let mut state = self.state.borrow_mut();
            state.sequence_next = state.sequence_next.max(sequence + 1);
            match live.get(&sequence) {
                Some(&live) => {
                    crate::metrics::QUEUE_BODY_LOG_SEGMENTS.add(1);
                    state.segments.insert(
                        sequence,
                        Segment {
                            file: None,
                            name,
                            append_offset_bytes: self.segment_size_bytes,
                            writers: 0,
                            live,
                            writes_done: 0,
                            writes_synced: 0,
                            syncing: false,
                            failed: false,
                            failed_no_space: false,
                        },
                    );
                }
                None => {
                    drop(state);
                    self.storage.remove(&name).await?;
                    removed += 1;
                }
            }
        }
        // Found by name only: a directory flush makes the deletions durable.
        if removed > 0 {
            self.storage.sync_dir().await?;
        }
        Ok(removed)
    }

    /// Whether a new message's body may go here: fewer than
    /// [`SEGMENTS_MAX`] segments are kept. A message already appending
    /// may take one more.
    pub fn has_room(&self) -> bool {
        self.state.borrow().segments.len() < SEGMENTS_MAX
    }

    /// The largest extent [`BodyLog::append`] takes.
    pub fn extent_bytes_max(&self) -> usize {
        (self.segment_size_bytes as usize - SEGMENT_HEADER_SIZE_BYTES).min(EXTENT_BYTES_MAX)
    }

    /// What is wrong with body segment `name`'s header, if anything; an
    /// error for a version this build does not read.
    async fn header_problem(&self, name: &str, sequence: u64) -> io::Result<Option<String>> {
        let file = self.storage.open_body(name).await?;
        let bytes = file.read_at(0, SEGMENT_HEADER_SIZE_BYTES).await;
        let _ = file.close().await;
        let header = match SegmentHeader::decode(&bytes?) {
            Ok(header) => header,
            Err(queue_format::SegmentHeaderError::UnsupportedVersion(version)) => {
                crate::log::event(
                    "queue_recovery_refused",
                    &[("shard", &self.shard_index), ("segment", &name), ("format_version", &version)],
                );
                return Err(
                    super::recover::RecoveryError::UnsupportedVersion { file: name.to_string(), version }.into()
                );
            }
            Err(e) => return Ok(Some(format!("segment header refused: {e}"))),
        };
        let expected = (LogKind::Body, sequence, self.shard_index);
        let found = (header.log_kind, header.segment_sequence, header.shard_index);
        Ok((found != expected).then(|| format!("header says {found:?} but the file name and shard say {expected:?}")))
    }

    /// Appends `bytes` (at least one, at most [`BodyLog::extent_bytes_max`])
    /// as one extent, pinning its segment in `pins`.
    pub async fn append(&self, bytes: Vec<u8>, pins: &mut Pins) -> Result<BodyExtent, QueueError> {
        let len = bytes.len() as u64;
        assert!(len >= 1 && len <= self.extent_bytes_max() as u64, "an extent of {len} bytes");
        let (sequence, offset, file) = loop {
            let listener = self.event.listen();
            if let Some(place) = self.reserve(len) {
                break place;
            }
            if self.state.borrow().opening {
                listener.await;
                continue;
            }
            // Boxed: a new segment is rare, and its future is large.
            Box::pin(self.open_segment()).await?;
        };
        if !pins.0.contains(&sequence) {
            pins.0.push(sequence);
            self.state.borrow_mut().segments.get_mut(&sequence).expect("reserved in it").writers += 1;
        }
        let written = file.write_at(bytes, offset).await;
        let mut state = self.state.borrow_mut();
        let segment = state.segments.get_mut(&sequence).expect("pinned");
        let failure = match written {
            Ok(written) if written as u64 == len => None,
            Ok(written) => Some(QueueError::NoSpace(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("short write: {written} of {len} bytes"),
            ))),
            Err(error) => Some(QueueError::from(error)),
        };
        if let Some(failure) = failure {
            // Nothing more is appended after a possibly torn write.
            segment.failed = true;
            segment.failed_no_space |= matches!(failure, QueueError::NoSpace(_));
            if state.active == Some(sequence) {
                state.active = None;
            }
            self.gc_event.notify(1);
            return Err(failure);
        }
        segment.writes_done += 1;
        crate::metrics::QUEUE_BODY_LOG_BYTES.add(len);
        Ok(BodyExtent {
            segment_sequence: sequence,
            offset_bytes: u32::try_from(offset).expect("a segment is at most 4 GiB"),
            size_bytes: u32::try_from(len).expect("an extent is smaller than a segment"),
        })
    }

    /// Room for `len` bytes in the active segment, taken at once.
    fn reserve(&self, len: u64) -> Option<(u64, u64, Rc<S::Body>)> {
        let mut state = self.state.borrow_mut();
        let sequence = state.active?;
        let segment = state.segments.get_mut(&sequence).expect("the active segment exists");
        if segment.failed || segment.append_offset_bytes + len > self.segment_size_bytes {
            return None;
        }
        let offset = segment.append_offset_bytes;
        segment.append_offset_bytes += len;
        Some((sequence, offset, segment.file.clone().expect("the active segment is open")))
    }

    /// Creates the next segment with its header, and flushes the directory
    /// so that its name is durable before any envelope names it.
    async fn open_segment(&self) -> Result<(), QueueError> {
        let sequence = {
            let mut state = self.state.borrow_mut();
            state.opening = true;
            state.sequence_next
        };
        let result = self.create_segment(sequence).await;
        let mut state = self.state.borrow_mut();
        state.opening = false;
        self.event.notify(usize::MAX);
        let file = result?;
        state.sequence_next = sequence + 1;
        state.segments.insert(
            sequence,
            Segment {
                file: Some(Rc::new(file)),
                name: segment_name(sequence),
                append_offset_bytes: SEGMENT_HEADER_SIZE_BYTES as u64,
                writers: 0,
                live: 0,
                writes_done: 0,
                writes_synced: 0,
                syncing: false,
                failed: false,
                failed_no_space: false,
            },
        );
        state.active = Some(sequence);
        crate::metrics::QUEUE_BODY_LOG_SEGMENTS.add(1);
        // The segment appended to before may be done with.
        self.gc_event.notify(1);
        Ok(())
    }

    async fn create_segment(&self, sequence: u64) -> Result<S::Body, QueueError> {
        let name = segment_name(sequence);
        let file = self.storage.create_body(&name).await?;
        let header = SegmentHeader {
            format_version: queue_format::FORMAT_VERSION,
            log_kind: LogKind::Body,
            shard_index: self.shard_index,
            segment_sequence: sequence,
            record_sequence_first: 0,
            created_unix_ms: self.clock.unix_ms(),
            segment_size_bytes: self.segment_size_bytes,
        };
        // On the heap: the header block is not kept in the futures of every
        // session writing a body.
        let mut block = vec![0u8; SEGMENT_HEADER_SIZE_BYTES];
        let array: &mut [u8; SEGMENT_HEADER_SIZE_BYTES] = block.as_mut_slice().try_into().expect("one block");
        header.encode(array).expect("the header of a configured segment is valid");
        let written: Result<(), QueueError> = async {
            let written = file.write_at(block, 0).await?;
            if written != SEGMENT_HEADER_SIZE_BYTES {
                // A short write on a regular file: the file system is full.
                return Err(QueueError::NoSpace(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short write: {written} of {SEGMENT_HEADER_SIZE_BYTES} bytes of a body log segment header"),
                )));
            }
            Ok(self.storage.sync_dir().await?)
        }
        .await;
        if let Err(error) = written {
            let _ = file.close().await;
            let _ = self.storage.remove(&name).await;
            return Err(error);
        }
        Ok(file)
    }

    /// Makes every extent written so far in segments `first..=last`
    /// durable: one fdatasync per segment covers every writer that asked
    /// before it started.
    pub async fn sync(&self, first: u64, last: u64) -> io::Result<()> {
        for sequence in first..=last {
            self.sync_segment(sequence).await?;
        }
        Ok(())
    }

    async fn sync_segment(&self, sequence: u64) -> io::Result<()> {
        let gone = || io::Error::other(format!("body log segment {} is gone", segment_name(sequence)));
        let wanted = self.state.borrow().segments.get(&sequence).ok_or_else(gone)?.writes_done;
        loop {
            let listener = self.event.listen();
            let (file, target) = {
                let mut state = self.state.borrow_mut();
                let segment = state.segments.get_mut(&sequence).ok_or_else(gone)?;
                // Covered by a flush that succeeded: durable, whatever failed
                // since.
                if segment.writes_synced >= wanted {
                    return Ok(());
                }
                if segment.failed {
                    let kind = if segment.failed_no_space { io::ErrorKind::StorageFull } else { io::ErrorKind::Other };
                    return Err(io::Error::new(
                        kind,
                        format!("an earlier write or flush of body log segment {} failed", segment.name),
                    ));
                }
                if segment.syncing {
                    None
                } else {
                    segment.syncing = true;
                    Some((segment.file.clone().expect("a segment written to is open"), segment.writes_done))
                }
            }
            .unzip();
            let (Some(file), Some(target)) = (file, target) else {
                listener.await;
                continue;
            };
            let result = file.sync().await;
            let mut state = self.state.borrow_mut();
            let segment = state.segments.get_mut(&sequence).expect("a segment being flushed stays");
            segment.syncing = false;
            match &result {
                Ok(()) => segment.writes_synced = segment.writes_synced.max(target),
                Err(error) => {
                    segment.failed = true;
                    segment.failed_no_space |= super::storage::is_no_space(error);
                    if state.active == Some(sequence) {
                        state.active = None;
                    }
                }
            }
            drop(state);
            self.event.notify(usize::MAX);
            if result.is_err() {
                self.gc_event.notify(1);
            }
            result?;
        }
    }

    /// A live envelope (or one that may be on disk) names extents in
    /// segments `first..=last`.
    pub fn add_live(&self, first: u64, last: u64) {
        let mut state = self.state.borrow_mut();
        for (_, segment) in state.segments.range_mut(first..=last) {
            segment.live += 1;
        }
    }

    /// The envelope of [`BodyLog::add_live`] is no longer its message's
    /// newest, or its message is done.
    pub fn remove_live(&self, first: u64, last: u64) {
        let mut state = self.state.borrow_mut();
        for (_, segment) in state.segments.range_mut(first..=last) {
            segment.live = segment.live.checked_sub(1).expect("invariant: one live count per envelope naming it");
        }
        self.gc_event.notify(1);
    }

    /// The message of `pins` is committed or given up: its segments may go
    /// once nothing else keeps them.
    pub fn release(&self, pins: &mut Pins) {
        if pins.0.is_empty() {
            return;
        }
        let mut state = self.state.borrow_mut();
        for sequence in pins.0.drain(..) {
            let segment = state.segments.get_mut(&sequence).expect("a pinned segment stays");
            segment.writers = segment.writers.checked_sub(1).expect("invariant: one writer counted per pin");
        }
        self.gc_event.notify(1);
    }

    /// Segments no live envelope names and no message being received
    /// writes to.
    pub fn collectable(&self) -> Vec<u64> {
        let state = self.state.borrow();
        state
            .segments
            .iter()
            .filter(|(&sequence, segment)| {
                Some(sequence) != state.active && segment.writers == 0 && segment.live == 0 && !segment.syncing
            })
            .map(|(&sequence, _)| sequence)
            .collect()
    }

    /// Deletes segment `sequence` (from [`BodyLog::collectable`]).
    pub async fn remove(&self, sequence: u64) -> io::Result<()> {
        let Some(segment) = self.state.borrow_mut().segments.remove(&sequence) else {
            return Ok(());
        };
        if let Some(file) = segment.file {
            if let Ok(file) = Rc::try_unwrap(file) {
                let _ = file.close().await;
            }
        }
        crate::metrics::QUEUE_BODY_LOG_SEGMENTS.add(-1);
        self.storage.remove(&segment.name).await?;
        crate::log::event("queue_segment_retired", &[("shard", &self.shard_index), ("segment", &segment.name)]);
        Ok(())
    }

    /// The segments kept, by sequence.
    #[cfg(test)]
    pub fn kept(&self) -> Vec<u64> {
        self.state.borrow().segments.keys().copied().collect()
    }

    /// Checks the invariants: the active segment exists, is open and not
    /// failed; every segment's append point is within it.
    #[cfg(test)]
    pub fn check(&self) {
        let state = self.state.borrow();
        if let Some(active) = state.active {
            let segment = &state.segments[&active];
            assert!(segment.file.is_some() && !segment.failed, "invariant: the active body segment is usable");
        }
        for (sequence, segment) in &state.segments {
            assert!(*sequence < state.sequence_next);
            assert!(segment.append_offset_bytes <= self.segment_size_bytes);
            assert!(segment.writes_synced <= segment.writes_done);
        }
    }
}

/// A stored body's pieces, in order: (file name in the shard's directory,
/// offset, size). A body file is one piece; a body in the body log one per
/// extent; an inline body none.
pub fn pieces(id: &str, body: &Body) -> Vec<(String, u64, u64)> {
    match body {
        Body::Inline(_) => Vec::new(),
        Body::File { size_bytes, .. } => vec![(super::body_name(id), 0, *size_bytes)],
        Body::Log { extents, .. } => queue_format::body_extents(extents)
            .map(|e| (segment_name(e.segment_sequence), u64::from(e.offset_bytes), u64::from(e.size_bytes)))
            .collect(),
    }
}

/// A read position in a body made of pieces: the walk every reader of a
/// stored body shares ([`BodyReader`], [`SyncBodyReader`], the queue's own
/// reader through its storage).
#[derive(Debug, Default)]
pub struct PieceCursor {
    piece: usize,
    /// Into the current piece.
    offset_bytes: u64,
}

impl PieceCursor {
    /// The next read of at most `len` (at least one) bytes, given each
    /// piece's (offset, size): (piece, offset in its file, length); None at
    /// the body's end.
    pub fn next(&mut self, piece: impl Fn(usize) -> Option<(u64, u64)>, len: usize) -> Option<(usize, u64, usize)> {
        debug_assert!(len > 0, "a read of nothing");
        loop {
            let (offset, size) = piece(self.piece)?;
            let left = size - self.offset_bytes;
            if left == 0 {
                self.piece += 1;
                self.offset_bytes = 0;
                continue;
            }
            return Some((self.piece, offset + self.offset_bytes, left.min(len as u64) as usize));
        }
    }

    /// The read [`PieceCursor::next`] gave returned `read` bytes, at most
    /// what it asked. None means its file ended early: so does the body
    /// (the size check before delivery catches that).
    pub fn advance(&mut self, read: usize, asked: usize) {
        assert!(read <= asked, "a read returns at most what was asked");
        if read == 0 {
            self.piece = usize::MAX;
        } else {
            self.offset_bytes += read as u64;
        }
    }
}

/// Where a message's stored content is, for the readers outside the queue
/// (delivery, content scanning, DKIM): nothing for an inline body, the
/// body file, or the body log's extents, each a (file, offset, size)
/// piece. Read in order, the pieces are the body exactly as received.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredBody {
    pieces: Vec<Piece>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Piece {
    path: PathBuf,
    offset_bytes: u64,
    size_bytes: u64,
}

impl StoredBody {
    /// Where `body` of message `id` is, in the spool directory `dir`.
    pub fn of(dir: &Path, id: &str, body: &Body) -> StoredBody {
        let pieces = pieces(id, body)
            .into_iter()
            .map(|(name, offset_bytes, size_bytes)| Piece { path: dir.join(name), offset_bytes, size_bytes })
            .collect();
        StoredBody { pieces }
    }

    /// A stored body at `path`, whole (for tests and tools).
    pub fn file(path: &Path, size_bytes: u64) -> StoredBody {
        StoredBody { pieces: vec![Piece { path: path.to_path_buf(), offset_bytes: 0, size_bytes }] }
    }

    /// A reader from the start, on io_uring.
    pub fn reader(&self) -> BodyReader {
        BodyReader { body: self.clone(), cursor: PieceCursor::default(), file: None }
    }

    /// A reader from the start for a thread that may block.
    pub fn sync_reader(&self) -> SyncBodyReader {
        SyncBodyReader { body: self.clone(), cursor: PieceCursor::default(), file: None }
    }

    fn piece(&self, index: usize) -> Option<(u64, u64)> {
        self.pieces.get(index).map(|piece| (piece.offset_bytes, piece.size_bytes))
    }
}

/// Reads a [`StoredBody`] front to back; a file read by several pieces in
/// a row is opened once.
pub struct BodyReader {
    body: StoredBody,
    cursor: PieceCursor,
    file: Option<(PathBuf, glommio::io::BufferedFile)>,
}

impl BodyReader {
    /// Up to `len` bytes (at least one, unless the body is at its end);
    /// empty at the end.
    pub async fn read(&mut self, len: usize) -> io::Result<Vec<u8>> {
        let body = &self.body;
        let Some((index, offset, want)) = self.cursor.next(|i| body.piece(i), len) else {
            return Ok(Vec::new());
        };
        let path = &body.pieces[index].path;
        if self.file.as_ref().map(|(open, _)| open) != Some(path) {
            if let Some((_, file)) = self.file.take() {
                let _ = file.close().await;
            }
            let file = glommio::io::BufferedFile::open(path).await.map_err(io::Error::from)?;
            self.file = Some((path.clone(), file));
        }
        let (_, file) = self.file.as_ref().expect("opened above");
        let bytes = file.read_at(offset, want).await.map_err(io::Error::from)?;
        self.cursor.advance(bytes.len(), want);
        Ok(bytes.to_vec())
    }

    pub async fn close(mut self) {
        if let Some((_, file)) = self.file.take() {
            let _ = file.close().await;
        }
    }
}

/// [`BodyReader`] for a thread that may block: `std::io::Read`.
pub struct SyncBodyReader {
    body: StoredBody,
    cursor: PieceCursor,
    file: Option<(PathBuf, std::fs::File)>,
}

impl io::Read for SyncBodyReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        if out.is_empty() {
            return Ok(0);
        }
        let body = &self.body;
        let Some((index, offset, want)) = self.cursor.next(|i| body.piece(i), out.len()) else {
            return Ok(0);
        };
        let path = &body.pieces[index].path;
        if self.file.as_ref().map(|(open, _)| open) != Some(path) {
            self.file = Some((path.clone(), std::fs::File::open(path)?));
        }
        let (_, file) = self.file.as_ref().expect("opened above");
        let read = file.read_at(&mut out[..want], offset)?;
        self.cursor.advance(read, want);
        Ok(read)
    }
}
