//! On-disk layout of ringpost's envelope logs: segment headers, records,
//! checksums, and the 4 KiB batches the group committer writes.
//!
//! Place in the pipeline: `src/queue/` (the log writer, the recovery scan,
//! the runners) hands this crate typed values and gets bytes back, and hands
//! it bytes read from a segment file and gets typed values back. This crate
//! does no I/O, owns no files and keeps no clock: time is passed in.
//!
//! `SPEC.md` beside this crate is the source of truth for every byte; the
//! code follows it, and the checked-in vectors in `vectors/` pin both.
//!
//! The parts:
//! - [`layout`]: block size, header sizes, every limit, as constants with
//!   compile-time checks of the facts the format relies on.
//! - [`segment`]: the 4 KiB segment header at offset 0 of every segment file
//!   (of the head and retry logs, and of the body log's body segments).
//! - [`record`]: the typed records (envelope, replacement envelope,
//!   completion, padding) and their invariants, and the extent table of a
//!   body in the body log.
//! - [`codec`]: `encode_*` and [`decode`]: one record to bytes and back.
//! - [`reader`]: [`LogReader`], which walks a segment and stops at the first
//!   untrusted byte (the torn tail), saying where and why.
//! - [`batch`]: [`BatchBuilder`], which packs staged records into one
//!   block-aligned batch for a single O_DIRECT write and fdatasync.
//! - [`dump`]: a stable, human-readable text form of records and logs, used
//!   by the test vectors and by the log-dump tool.
//!
//! ```
//! use queue_format::*;
//!
//! // The committer stages records into one batch for its next write.
//! let completion = Completion {
//!     queue_id: QueueId(*b"0006201A2B3C4D01"),
//!     completion_unix_ms: 1_767_225_600_000,
//!     attempt_count: 0,
//!     reason: CompletionReason::Done,
//! };
//! let mut builder = BatchBuilder::new(vec![0u8; 4 * BLOCK_SIZE_BYTES], LogKind::Head, 0, 1);
//! assert_eq!(builder.push(&RecordBody::Completion(completion)), Ok(1));
//! let batch = builder.finish();
//! assert_eq!(batch.size_bytes, BLOCK_SIZE_BYTES); // padded to a whole block
//!
//! // Recovery reads it back and learns where the trusted log ends.
//! let expect = LogExpect { log_kind: LogKind::Head, shard_index: 0, record_sequence_next: 1 };
//! let mut reader = LogReader::new(&batch.buffer[..batch.size_bytes], 0, expect);
//! let first = reader.next().unwrap();
//! assert_eq!(first.record.body, RecordBody::Completion(completion));
//! assert!(reader.all(|entry| matches!(entry.record.body, RecordBody::Padding { .. })));
//! assert_eq!(reader.stop().unwrap().reason, StopReason::EndOfBytes);
//! ```

#![forbid(unsafe_code)]

pub mod batch;
pub mod checksum;
pub mod codec;
pub mod dump;
pub mod error;
pub mod layout;
pub mod reader;
pub mod record;
pub mod segment;
mod wire;

pub use batch::{padded_size_bytes, Batch, BatchBuilder, PushError};
pub use codec::{decode, decode_summary, encode, encode_into, encoded_size_bytes};
pub use error::{DecodeError, EncodeError, Field, LimitError};
pub use layout::*;
pub use reader::{LogEntry, LogExpect, LogReader, LogStop, StopReason};
pub use record::{
    body_extents, encode_body_extents, BodyExtent, BodyRef, Completion, CompletionReason, Envelope,
    EnvelopeFlags, LogKind, QueueId, Recipient, RecipientState, Record, RecordBody, RecordFrame,
    RecordType, BODY_EXTENTS_MAX, BODY_EXTENT_SIZE_BYTES,
};
pub use segment::{SegmentHeader, SegmentHeaderError};
