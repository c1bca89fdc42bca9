//! [`LogReader`]: walks the records of one segment in order and stops at the
//! first byte it cannot trust, reporting that offset and why.
//!
//! A record is trusted when it decodes (length in bounds, checksum good,
//! fields valid), belongs to the expected log, carries exactly the next
//! record sequence number, and, if it is Padding, ends on a block boundary.
//! The first record that fails any of these ends the readable log; nothing
//! after it is looked at (SPEC.md, "Recovery").
//!
//! A body segment (log kind 3) holds body bytes and no records: a reader of
//! one reads none and stops at once with [`StopReason::BodySegment`].

use crate::codec::{decode_at_depth, Depth};
use crate::error::DecodeError;
use crate::layout::*;
use crate::record::{LogKind, Record, RecordBody};
use crate::segment::{SegmentHeader, SegmentHeaderError};

/// What the reader expects of the next record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogExpect {
    pub log_kind: LogKind,
    pub shard_index: u16,
    pub record_sequence_next: u64,
}

/// One trusted record and where it lies in the segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry<'a> {
    /// Byte offset of the record from the start of the segment.
    pub offset: usize,
    pub size_bytes: usize,
    pub record: Record<'a>,
}

/// Why the readable log ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The bytes end exactly at a record boundary (a full segment).
    EndOfBytes,
    /// An all-zero record header: space never written. The normal end of
    /// the segment being written.
    Zeroed,
    /// Bytes that are not a valid record: a torn or cut-short write, or
    /// corruption.
    Corrupt(DecodeError),
    /// A valid record with the wrong sequence number: left from an earlier
    /// life of a recycled segment, or a misdirected write.
    SequenceMismatch { expected: u64, found: u64 },
    /// A valid record of another log: a misdirected write.
    WrongLog { log_kind: LogKind, shard_index: u16 },
    /// A Padding record that does not end on a block boundary.
    MisplacedPadding,
    /// The segment is a body segment (log kind 3): what follows its header
    /// is body bytes, not records, and none is read.
    BodySegment,
}

impl StopReason {
    /// True for the ends a healthy log has (full segment, unwritten space,
    /// a body segment's records, which are none); false for a torn tail or
    /// corruption.
    pub fn is_clean(&self) -> bool {
        matches!(
            self,
            StopReason::EndOfBytes | StopReason::Zeroed | StopReason::BodySegment
        )
    }
}

/// Where and why the readable log ends. `offset` is the first untrusted byte
/// (relative to the segment start); the writer never appends after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogStop {
    pub offset: usize,
    pub reason: StopReason,
}

/// Iterator over the trusted records of one segment. Yields [`LogEntry`]
/// values, Padding included, then ends; [`LogReader::stop`] says why.
pub struct LogReader<'a> {
    /// The segment from its first byte, so offsets are block-aligned.
    segment: &'a [u8],
    offset: usize,
    expect: LogExpect,
    stop: Option<LogStop>,
    depth: Depth,
}

impl<'a> LogReader<'a> {
    /// Checks the segment header and reads from the first record on. Bytes
    /// past the header's `segment_size_bytes` are ignored. A body segment's
    /// reader reads no record: it stops at offset 4096 with
    /// [`StopReason::BodySegment`].
    pub fn open_segment(
        segment: &'a [u8],
    ) -> Result<(SegmentHeader, LogReader<'a>), SegmentHeaderError> {
        let header = SegmentHeader::decode(segment)?;
        let size = usize::try_from(header.segment_size_bytes)
            .unwrap_or(usize::MAX)
            .min(segment.len());
        let expect = LogExpect {
            log_kind: header.log_kind,
            shard_index: header.shard_index,
            record_sequence_next: header.record_sequence_first,
        };
        Ok((
            header,
            LogReader::new(&segment[..size], SEGMENT_HEADER_SIZE_BYTES, expect),
        ))
    }

    /// Reads `segment` (which starts at the segment's first byte) from
    /// `offset` on, a record boundary the caller knows (for example the end
    /// of the last batch it wrote or read). Expecting the body log, it
    /// reads nothing and stops at `offset` with [`StopReason::BodySegment`].
    pub fn new(segment: &'a [u8], offset: usize, expect: LogExpect) -> LogReader<'a> {
        assert!(
            offset <= segment.len(),
            "start offset lies inside the given bytes"
        );
        LogReader {
            segment,
            offset,
            expect,
            stop: None,
            depth: Depth::Full,
        }
    }

    /// Yields envelopes as [`crate::decode_summary`] decodes them: every
    /// record trusted or refused as before, but an envelope's `recipients`
    /// left empty. For scans that need only the fixed fields.
    pub fn summaries(mut self) -> LogReader<'a> {
        self.depth = Depth::Summary;
        self
    }

    /// Where and why reading ended; None while records remain to be read.
    pub fn stop(&self) -> Option<LogStop> {
        self.stop
    }

    /// Offset of the next record (after the end: of the first untrusted byte).
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The sequence number the next record must carry.
    pub fn record_sequence_next(&self) -> u64 {
        self.expect.record_sequence_next
    }

    fn halt(&mut self, reason: StopReason) -> Option<LogEntry<'a>> {
        self.stop = Some(LogStop {
            offset: self.offset,
            reason,
        });
        None
    }
}

impl<'a> Iterator for LogReader<'a> {
    type Item = LogEntry<'a>;

    fn next(&mut self) -> Option<LogEntry<'a>> {
        if self.stop.is_some() {
            return None;
        }
        if self.expect.log_kind == LogKind::Body {
            return self.halt(StopReason::BodySegment);
        }
        let remaining = self.segment.get(self.offset..).unwrap_or(&[]);
        if remaining.is_empty() {
            return self.halt(StopReason::EndOfBytes);
        }
        let (record, size_bytes) = match decode_at_depth(remaining, self.depth) {
            Ok(decoded) => decoded,
            Err(DecodeError::Zeroed) => return self.halt(StopReason::Zeroed),
            Err(error) => return self.halt(StopReason::Corrupt(error)),
        };
        let frame = record.frame;
        if frame.log_kind != self.expect.log_kind || frame.shard_index != self.expect.shard_index {
            return self.halt(StopReason::WrongLog {
                log_kind: frame.log_kind,
                shard_index: frame.shard_index,
            });
        }
        if frame.record_sequence != self.expect.record_sequence_next {
            let expected = self.expect.record_sequence_next;
            return self.halt(StopReason::SequenceMismatch {
                expected,
                found: frame.record_sequence,
            });
        }
        let end = self.offset + size_bytes;
        if matches!(record.body, RecordBody::Padding { .. })
            && !end.is_multiple_of(BLOCK_SIZE_BYTES)
        {
            return self.halt(StopReason::MisplacedPadding);
        }
        let entry = LogEntry {
            offset: self.offset,
            size_bytes,
            record,
        };
        self.offset = end;
        self.expect.record_sequence_next = self.expect.record_sequence_next.wrapping_add(1);
        Some(entry)
    }
}
