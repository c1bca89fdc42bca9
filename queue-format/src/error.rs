//! Typed errors. A [`LimitError`] is a value that breaks a documented limit
//! or invariant, found on either side; an [`EncodeError`] is why a value was
//! not written; a [`DecodeError`] is why bytes are not a trusted record.
//! In a log, any `DecodeError` ends the readable log at that record.

use thiserror::Error;

/// A variable-length field or count, named in errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Sender,
    MailParams,
    ClientAddress,
    ClientHelo,
    HeadersPrepended,
    Recipients,
    RecipientAddress,
    RecipientParams,
    Reply,
    InlineBody,
    /// The extent table of a body in the body log, counted in extents.
    BodyExtents,
    Padding,
}

#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum LimitError {
    #[error("{field:?} is {size}, above its maximum {max}")]
    FieldTooLong {
        field: Field,
        size: usize,
        max: usize,
    },
    #[error("queue id is not 16 upper-case hex digits")]
    QueueIdNotHex,
    #[error("envelope has no recipients")]
    RecipientsEmpty,
    #[error("recipient address is empty")]
    RecipientAddressEmpty,
    #[error("NULL_SENDER flag and empty sender disagree")]
    NullSenderMismatch,
    #[error("body file id is zero")]
    BodyFileIdZero,
    #[error("attempt count {attempt_count} is wrong for this record type")]
    AttemptCount { attempt_count: u16 },
    #[error("replacement envelope retries before the message arrived")]
    RetryBeforeArrival,
    #[error("replacement envelope has no pending recipient")]
    NothingPending,
    #[error("HELD flag on a first envelope (only a replacement envelope is held)")]
    HeldFirstEnvelope,
    #[error("body in the body log on a replacement envelope (its body is copied to a body file)")]
    BodyLogReplacement,
    #[error("body extent table of {size_bytes} bytes is not a whole number of 16-byte extents")]
    BodyExtentsTableSize { size_bytes: usize },
    #[error("body extent table is empty")]
    BodyExtentsEmpty,
    #[error("body extent {index} names segment sequence 0")]
    BodyExtentSegmentZero { index: usize },
    #[error("body extent {index} starts at offset {offset_bytes}, inside the segment header")]
    BodyExtentInHeader { index: usize, offset_bytes: u32 },
    #[error("body extent {index} is empty")]
    BodyExtentSizeZero { index: usize },
    #[error("body extent {index} ends past 4 GiB, the largest segment")]
    BodyExtentPastSegmentEnd { index: usize },
    #[error("body extent {index} is in an earlier segment than the extent before it")]
    BodyExtentSegmentBackwards { index: usize },
    #[error("body extent {index} starts before the end of the extent before it in its segment")]
    BodyExtentOverlap { index: usize },
    #[error("body extents hold {extents_size_bytes} bytes, the body is {body_size_bytes}")]
    BodyExtentsSizeMismatch {
        extents_size_bytes: u64,
        body_size_bytes: u64,
    },
}

#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum EncodeError {
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error("buffer holds {available} bytes, record needs {needed}")]
    BufferTooSmall { needed: usize, available: usize },
    /// A body segment (log kind 3) holds body bytes, never records.
    #[error("a record framed for the body log (body segments hold no records)")]
    BodyLogRecord,
}

#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The record header is all zeros: unwritten space, not a record.
    #[error("zeroed space: no record here")]
    Zeroed,
    /// The bytes end before the record does.
    #[error("truncated: record needs {needed} bytes, {available} remain")]
    Truncated { needed: usize, available: usize },
    #[error("payload size {payload_size_bytes} is above the maximum or wrong for the type")]
    BadLength { payload_size_bytes: u32 },
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadChecksum { stored: u32, computed: u32 },
    #[error("unknown record type {0}")]
    BadType(u8),
    #[error("unknown log kind {0}")]
    BadLogKind(u8),
    #[error("unknown record flags {0:#04x}")]
    BadRecordFlags(u8),
    #[error("unknown envelope flags {0:#06x}")]
    BadEnvelopeFlags(u16),
    #[error("unknown body kind {0}")]
    BadBodyKind(u8),
    #[error("unknown recipient state {0}")]
    BadRecipientState(u8),
    #[error("unknown completion reason {0}")]
    BadCompletionReason(u8),
    #[error("reserved bytes are not zero")]
    ReservedNotZero,
    #[error("padding payload is not zero")]
    PaddingNotZero,
    #[error("{field:?} is {size}, above its maximum {max}")]
    FieldTooLong {
        field: crate::error::Field,
        size: usize,
        max: usize,
    },
    #[error("field {field:?} runs past the end of the payload")]
    FieldOverrun { field: Option<Field> },
    #[error("{count} bytes left over after the payload's last field")]
    TrailingBytes { count: usize },
    /// Body kind 1: the inline size or checksum disagrees with the fixed
    /// part; body kind 2: inline bytes present; body kind 3: a body file id.
    #[error("body fields disagree with the body kind")]
    BodyMismatch,
    #[error("invariant broken: {0}")]
    Invariant(LimitError),
}

impl From<LimitError> for DecodeError {
    fn from(error: LimitError) -> DecodeError {
        match error {
            LimitError::FieldTooLong { field, size, max } => {
                DecodeError::FieldTooLong { field, size, max }
            }
            other => DecodeError::Invariant(other),
        }
    }
}
