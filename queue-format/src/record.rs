//! The typed records of the envelope logs and their invariants.
//!
//! Record table (the values are the `record_type` byte; see SPEC.md for the
//! byte diagram of each payload):
//!
//! | type | name                | meaning |
//! |------|---------------------|---------|
//! | 0    | (none)              | never written: a zero type byte at a record start is unwritten space, the end of the log |
//! | 1    | Padding             | zero payload; closes a batch on a 4 KiB boundary; carries no meaning |
//! | 2    | Envelope            | a message as accepted: sender, recipients, body (inline, body file or body log). First record of every message |
//! | 3    | ReplacementEnvelope | the whole envelope again with updated recipient states and the next retry time; supersedes every earlier envelope of the message |
//! | 4    | (retired)           | RecipientResult in version 1, never written; refused as an unknown type since version 2 |
//! | 5    | Completion          | the message is done; every record of its queue id, earlier or in the other log, is dead |
//!
//! Decoded records borrow from the bytes they were read from: a start-up
//! scan of a whole log copies no bodies.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, IntoBytes};

use crate::error::{Field, LimitError};
use crate::layout::*;
use crate::wire::BodyExtentRaw;

/// Which of a shard's logs a segment belongs to. Records belong to the head
/// and retry logs only; the body log's segments hold body bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum LogKind {
    /// New envelopes, and completions of messages finished on their first
    /// attempt.
    Head = 1,
    /// Replacement envelopes, and the completions of messages whose newest
    /// envelope is a replacement.
    Retry = 2,
    /// Body segments: the bodies of head-log Envelopes, appended as they
    /// arrive (body kind 3). No records: a record framed with this kind is
    /// refused.
    Body = 3,
}

impl LogKind {
    pub fn from_u8(value: u8) -> Option<LogKind> {
        match value {
            1 => Some(LogKind::Head),
            2 => Some(LogKind::Retry),
            3 => Some(LogKind::Body),
            _ => None,
        }
    }
}

/// The `record_type` byte. Type 4 was RecipientResult in version 1 (never
/// written); it is no longer a record type and a reader refuses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordType {
    Padding = 1,
    Envelope = 2,
    ReplacementEnvelope = 3,
    Completion = 5,
}

impl RecordType {
    pub fn from_u8(value: u8) -> Option<RecordType> {
        match value {
            1 => Some(RecordType::Padding),
            2 => Some(RecordType::Envelope),
            3 => Some(RecordType::ReplacementEnvelope),
            5 => Some(RecordType::Completion),
            _ => None,
        }
    }
}

/// A message's queue id: 16 ASCII upper-case hex digits (`0-9`, `A-F`), as
/// the writer makes them (microseconds since the epoch and the shard index).
/// Unique for the life of a spool and never reused. The encoder refuses any
/// other bytes and the decoder reports them, so a decoded record's id is
/// always text.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(pub [u8; QUEUE_ID_SIZE_BYTES]);

impl QueueId {
    /// The id spelt by `text`, if it is 16 upper-case hex digits.
    pub fn parse(text: &[u8]) -> Result<QueueId, LimitError> {
        let bytes: [u8; QUEUE_ID_SIZE_BYTES] =
            text.try_into().map_err(|_| LimitError::QueueIdNotHex)?;
        let id = QueueId(bytes);
        id.check()?;
        Ok(id)
    }

    /// Every byte is an upper-case hex digit.
    pub fn check(&self) -> Result<(), LimitError> {
        let hex = |b: &u8| b.is_ascii_digit() || (b'A'..=b'F').contains(b);
        if self.0.iter().all(hex) {
            Ok(())
        } else {
            Err(LimitError::QueueIdNotHex)
        }
    }

    /// The id as text (it is ASCII once checked).
    pub fn as_str(&self) -> Option<&str> {
        self.check().ok()?;
        core::str::from_utf8(&self.0).ok()
    }
}

impl core::fmt::Debug for QueueId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "QueueId({self})")
    }
}

impl core::fmt::Display for QueueId {
    /// The 16 digits; an id that is not text (refused by the codec) shows
    /// as its bytes escaped, so a log line never hides what was there.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.as_str() {
            Some(text) => f.write_str(text),
            None => write!(f, "\"{}\"", self.0.escape_ascii()),
        }
    }
}

/// Per-recipient delivery state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecipientState {
    /// Not yet delivered; the reply, if any, is the last temporary failure.
    Pending = 1,
    /// The next hop accepted it (its reply is kept).
    Delivered = 2,
    /// Permanently failed (its reply is kept for the bounce).
    Failed = 3,
}

impl RecipientState {
    pub fn from_u8(value: u8) -> Option<RecipientState> {
        match value {
            1 => Some(RecipientState::Pending),
            2 => Some(RecipientState::Delivered),
            3 => Some(RecipientState::Failed),
            _ => None,
        }
    }
}

/// Why a message left the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CompletionReason {
    /// Every recipient is delivered or failed (any bounce is its own message).
    Done = 1,
    /// The queue lifetime ran out; the pending recipients were bounced.
    Expired = 2,
    /// Removed without delivery and without a bounce by ringpost itself
    /// (a replica whose peer took the message over).
    Removed = 3,
    /// An operator deleted the message (`ringpost queue delete`): no
    /// bounce was sent for its pending recipients.
    Deleted = 4,
}

impl CompletionReason {
    pub fn from_u8(value: u8) -> Option<CompletionReason> {
        match value {
            1 => Some(CompletionReason::Done),
            2 => Some(CompletionReason::Expired),
            3 => Some(CompletionReason::Removed),
            4 => Some(CompletionReason::Deleted),
            _ => None,
        }
    }
}

/// Envelope flag bits (u16). Bits not named here must be zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct EnvelopeFlags(u16);

impl EnvelopeFlags {
    /// The content is 8-bit: MAIL FROM carried BODY=8BITMIME, or the
    /// content had octets above 127 without it (delivered as 8BITMIME).
    pub const BODY_8BITMIME: EnvelopeFlags = EnvelopeFlags(1 << 0);
    /// MAIL FROM carried SMTPUTF8: addresses and headers may be UTF-8.
    pub const SMTPUTF8: EnvelopeFlags = EnvelopeFlags(1 << 1);
    /// The sender is the null reverse path `<>` (a bounce); `sender` is empty.
    pub const NULL_SENDER: EnvelopeFlags = EnvelopeFlags(1 << 2);
    /// MAIL FROM carried BODY=BINARYMIME (RFC 3030): the content is
    /// binary, delivered byte for byte and only with BDAT.
    pub const BODY_BINARYMIME: EnvelopeFlags = EnvelopeFlags(1 << 3);
    /// A replica: a copy held for the peer that accepted the message
    /// (`mail_params` holds its `XREPLICA=<origin queue id>`), delivered
    /// only if that peer stops confirming it is alive.
    pub const REPLICA: EnvelopeFlags = EnvelopeFlags(1 << 4);
    /// Held by an operator (`ringpost queue hold`): never attempted until a
    /// newer envelope without the bit supersedes this one. Only a
    /// ReplacementEnvelope carries it.
    pub const HELD: EnvelopeFlags = EnvelopeFlags(1 << 5);
    /// The sender has been sent the message's delay warning (an RFC 3464
    /// report with `Action: delayed`, `queue.delay_warning_after`): none
    /// is sent again. Set in the first ReplacementEnvelope written after
    /// the warning was queued and kept in every later one.
    pub const DELAY_WARNED: EnvelopeFlags = EnvelopeFlags(1 << 6);
    /// Every bit the format defines.
    pub const ALL: EnvelopeFlags = EnvelopeFlags(0b111_1111);

    pub const fn empty() -> EnvelopeFlags {
        EnvelopeFlags(0)
    }
    pub const fn bits(self) -> u16 {
        self.0
    }
    /// None if a bit v1 does not define is set.
    pub const fn from_bits(bits: u16) -> Option<EnvelopeFlags> {
        if bits & !Self::ALL.0 == 0 {
            Some(EnvelopeFlags(bits))
        } else {
            None
        }
    }
    pub const fn contains(self, other: EnvelopeFlags) -> bool {
        self.0 & other.0 == other.0
    }
    pub const fn union(self, other: EnvelopeFlags) -> EnvelopeFlags {
        EnvelopeFlags(self.0 | other.0)
    }
}

/// Where the message body lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyRef<'a> {
    /// The body bytes are in the record. Their CRC32C is stored beside them
    /// (computed by the encoder) so delivery can pass it on unchanged.
    Inline(&'a [u8]),
    /// The body is in its own file, named by `file_id` in the shard's body
    /// directory; it is `size_bytes` long and its CRC32C is `checksum`.
    File {
        file_id: u64,
        size_bytes: u64,
        checksum: u32,
    },
    /// The body is in the shard's body log, in the pieces its extent table
    /// lists, in body order; it is `size_bytes` long and `checksum` is the
    /// CRC32C of the pieces' bytes, one after the other. Envelopes only.
    Log {
        /// `extents`: the raw extent table, BODY_EXTENT_SIZE_BYTES per extent.
        extents: &'a [u8],
        size_bytes: u64,
        checksum: u32,
    },
}

/// One piece of a body in the body log: `size_bytes` bytes at `offset_bytes`
/// from the start of the body segment numbered `segment_sequence`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyExtent {
    /// The body segment's sequence number, at least 1.
    pub segment_sequence: u64,
    /// From the start of the segment file: at least 4096, past the header.
    pub offset_bytes: u32,
    /// At least 1; `offset_bytes + size_bytes` is at most 2^32.
    pub size_bytes: u32,
}

/// Size of one entry of a body extent table.
pub const BODY_EXTENT_SIZE_BYTES: usize = 16;
/// Most extents one body has: the table fits the inline body's place.
pub const BODY_EXTENTS_MAX: usize = 65536;

const _: () = assert!(core::mem::size_of::<BodyExtentRaw>() == BODY_EXTENT_SIZE_BYTES);
const _: () = assert!(BODY_EXTENTS_MAX * BODY_EXTENT_SIZE_BYTES <= INLINE_BODY_SIZE_BYTES_MAX);

/// The extents of a table (one the decoder accepted, or one made by
/// encode_body_extents). Bytes after the last whole entry are ignored.
pub fn body_extents(table: &[u8]) -> impl Iterator<Item = BodyExtent> + '_ {
    table
        .chunks_exact(BODY_EXTENT_SIZE_BYTES)
        .filter_map(|entry| BodyExtentRaw::read_from_bytes(entry).ok())
        .map(|raw| BodyExtent {
            segment_sequence: raw.segment_sequence.get(),
            offset_bytes: raw.offset_bytes.get(),
            size_bytes: raw.size_bytes.get(),
        })
}

/// Appends the table form of `extents` to `out`.
pub fn encode_body_extents(extents: &[BodyExtent], out: &mut Vec<u8>) {
    out.reserve(extents.len() * BODY_EXTENT_SIZE_BYTES);
    for extent in extents {
        let raw = BodyExtentRaw {
            segment_sequence: U64::new(extent.segment_sequence),
            offset_bytes: U32::new(extent.offset_bytes),
            size_bytes: U32::new(extent.size_bytes),
        };
        out.extend_from_slice(raw.as_bytes());
    }
}

/// The number of extents in a table of `size_bytes` bytes, if that is a
/// valid table size: a whole number of entries, 1..=BODY_EXTENTS_MAX.
pub(crate) fn body_extent_count(size_bytes: usize) -> Result<usize, LimitError> {
    if !size_bytes.is_multiple_of(BODY_EXTENT_SIZE_BYTES) {
        return Err(LimitError::BodyExtentsTableSize { size_bytes });
    }
    let count = size_bytes / BODY_EXTENT_SIZE_BYTES;
    if count == 0 {
        return Err(LimitError::BodyExtentsEmpty);
    }
    limit(Field::BodyExtents, count, BODY_EXTENTS_MAX)?;
    Ok(count)
}

/// Every rule of a body's extent table (SPEC.md section 6.1): its size,
/// each extent in bounds, body order (segments never go back, extents of
/// one segment never overlap), and sizes adding up to the body's.
fn check_body_extents(table: &[u8], body_size_bytes: u64) -> Result<(), LimitError> {
    body_extent_count(table.len())?;
    let mut total: u64 = 0;
    let mut previous: Option<BodyExtent> = None;
    for (index, extent) in body_extents(table).enumerate() {
        if extent.segment_sequence == 0 {
            return Err(LimitError::BodyExtentSegmentZero { index });
        }
        if (extent.offset_bytes as usize) < SEGMENT_HEADER_SIZE_BYTES {
            return Err(LimitError::BodyExtentInHeader {
                index,
                offset_bytes: extent.offset_bytes,
            });
        }
        if extent.size_bytes == 0 {
            return Err(LimitError::BodyExtentSizeZero { index });
        }
        let end = extent.offset_bytes as u64 + extent.size_bytes as u64;
        if end > SEGMENT_SIZE_BYTES_MAX {
            return Err(LimitError::BodyExtentPastSegmentEnd { index });
        }
        if let Some(previous) = previous {
            if extent.segment_sequence < previous.segment_sequence {
                return Err(LimitError::BodyExtentSegmentBackwards { index });
            }
            let previous_end = previous.offset_bytes as u64 + previous.size_bytes as u64;
            if extent.segment_sequence == previous.segment_sequence
                && (extent.offset_bytes as u64) < previous_end
            {
                return Err(LimitError::BodyExtentOverlap { index });
            }
        }
        // At most 2^16 extents of less than 2^32 bytes: no overflow.
        total += extent.size_bytes as u64;
        previous = Some(extent);
    }
    if total != body_size_bytes {
        return Err(LimitError::BodyExtentsSizeMismatch {
            extents_size_bytes: total,
            body_size_bytes,
        });
    }
    Ok(())
}

/// One recipient inside an envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recipient<'a> {
    pub state: RecipientState,
    /// The RCPT TO address without angle brackets, 1..=512 bytes.
    pub address: &'a [u8],
    /// Raw ESMTP RCPT parameters (NOTIFY=, ORCPT=, XFOLDER=), possibly empty.
    pub params: &'a [u8],
    /// The last reply for this recipient (empty if none yet).
    pub reply: &'a [u8],
}

/// Payload of Envelope and ReplacementEnvelope records (one layout, two types).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub queue_id: QueueId,
    pub arrival_unix_ms: u64,
    /// When the next delivery attempt is due; it picks the runner.
    pub retry_next_unix_ms: u64,
    /// Delivery attempts made so far. It is also the envelope's generation:
    /// an Envelope has 0, each ReplacementEnvelope one more than the last.
    pub attempt_count: u16,
    pub flags: EnvelopeFlags,
    /// MAIL FROM address without angle brackets; empty iff NULL_SENDER.
    pub sender: &'a [u8],
    /// Raw ESMTP MAIL parameters (BODY=, ENVID=, RET=), possibly empty.
    pub mail_params: &'a [u8],
    pub client_address: &'a [u8],
    pub client_helo: &'a [u8],
    pub headers_prepended: &'a [u8],
    /// 1..=RECIPIENT_COUNT_MAX recipients; their index is their position.
    pub recipients: Vec<Recipient<'a>>,
    pub body: BodyRef<'a>,
}

/// Payload of a Completion record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub queue_id: QueueId,
    pub completion_unix_ms: u64,
    /// The envelope generation that was current when the message finished.
    pub attempt_count: u16,
    pub reason: CompletionReason,
}

/// The record header fields other than type, size and checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordFrame {
    /// Position in its log: the first record of a log is 1, each next
    /// record one more (across segments gaps are allowed, see SPEC.md).
    pub record_sequence: u64,
    pub log_kind: LogKind,
    pub shard_index: u16,
}

/// What a record says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordBody<'a> {
    Padding { payload_size_bytes: u32 },
    Envelope(Envelope<'a>),
    ReplacementEnvelope(Envelope<'a>),
    Completion(Completion),
}

/// One record: its frame and its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub frame: RecordFrame,
    pub body: RecordBody<'a>,
}

impl RecordBody<'_> {
    pub fn record_type(&self) -> RecordType {
        match self {
            RecordBody::Padding { .. } => RecordType::Padding,
            RecordBody::Envelope(_) => RecordType::Envelope,
            RecordBody::ReplacementEnvelope(_) => RecordType::ReplacementEnvelope,
            RecordBody::Completion(_) => RecordType::Completion,
        }
    }

    /// The message this record is about (None for Padding).
    pub fn queue_id(&self) -> Option<QueueId> {
        match self {
            RecordBody::Padding { .. } => None,
            RecordBody::Envelope(e) | RecordBody::ReplacementEnvelope(e) => Some(e.queue_id),
            RecordBody::Completion(c) => Some(c.queue_id),
        }
    }

    /// Every limit and invariant of SPEC.md that the value alone can break.
    /// The encoder refuses a body that fails it; the decoder reports it.
    pub fn check(&self) -> Result<(), LimitError> {
        match self {
            RecordBody::Padding { payload_size_bytes } => limit(
                Field::Padding,
                *payload_size_bytes as usize,
                PADDING_PAYLOAD_SIZE_BYTES_MAX,
            ),
            RecordBody::Envelope(e) => e.check(false),
            RecordBody::ReplacementEnvelope(e) => e.check(true),
            RecordBody::Completion(c) => c.queue_id.check(),
        }
    }
}

fn limit(field: Field, size: usize, max: usize) -> Result<(), LimitError> {
    if size > max {
        Err(LimitError::FieldTooLong { field, size, max })
    } else {
        Ok(())
    }
}

impl Envelope<'_> {
    fn check(&self, replacement: bool) -> Result<(), LimitError> {
        self.check_fixed(replacement)?;
        limit(
            Field::Recipients,
            self.recipients.len(),
            RECIPIENT_COUNT_MAX,
        )?;
        if self.recipients.is_empty() {
            return Err(LimitError::RecipientsEmpty);
        }
        for recipient in &self.recipients {
            recipient.check()?;
        }
        if replacement
            && !self
                .recipients
                .iter()
                .any(|r| r.state == RecipientState::Pending)
        {
            return Err(LimitError::NothingPending);
        }
        Ok(())
    }

    /// The checks of a summary decode (`codec::decode_summary`), whose
    /// recipients were checked one by one as they were read and not kept.
    pub(crate) fn check_summary(&self, replacement: bool) -> Result<(), LimitError> {
        debug_assert!(self.recipients.is_empty(), "a summary keeps no recipients");
        self.check_fixed(replacement)
    }

    /// Every check but those of the recipient list.
    fn check_fixed(&self, replacement: bool) -> Result<(), LimitError> {
        self.queue_id.check()?;
        limit(Field::Sender, self.sender.len(), ADDRESS_SIZE_BYTES_MAX)?;
        limit(
            Field::MailParams,
            self.mail_params.len(),
            ESMTP_PARAMS_SIZE_BYTES_MAX,
        )?;
        limit(
            Field::ClientAddress,
            self.client_address.len(),
            CLIENT_ADDRESS_SIZE_BYTES_MAX,
        )?;
        limit(
            Field::ClientHelo,
            self.client_helo.len(),
            CLIENT_HELO_SIZE_BYTES_MAX,
        )?;
        limit(
            Field::HeadersPrepended,
            self.headers_prepended.len(),
            HEADERS_PREPENDED_SIZE_BYTES_MAX,
        )?;
        if self.flags.contains(EnvelopeFlags::NULL_SENDER) != self.sender.is_empty() {
            return Err(LimitError::NullSenderMismatch);
        }
        match self.body {
            BodyRef::Inline(bytes) => {
                limit(Field::InlineBody, bytes.len(), INLINE_BODY_SIZE_BYTES_MAX)?
            }
            BodyRef::File { file_id, .. } => {
                if file_id == 0 {
                    return Err(LimitError::BodyFileIdZero);
                }
            }
            BodyRef::Log {
                extents,
                size_bytes,
                ..
            } => {
                if replacement {
                    return Err(LimitError::BodyLogReplacement);
                }
                check_body_extents(extents, size_bytes)?;
            }
        }
        if replacement {
            if self.attempt_count == 0 {
                return Err(LimitError::AttemptCount { attempt_count: 0 });
            }
            if self.retry_next_unix_ms < self.arrival_unix_ms {
                return Err(LimitError::RetryBeforeArrival);
            }
        } else if self.attempt_count != 0 {
            return Err(LimitError::AttemptCount {
                attempt_count: self.attempt_count,
            });
        } else if self.flags.contains(EnvelopeFlags::HELD) {
            return Err(LimitError::HeldFirstEnvelope);
        }
        Ok(())
    }
}

impl Recipient<'_> {
    pub(crate) fn check(&self) -> Result<(), LimitError> {
        if self.address.is_empty() {
            return Err(LimitError::RecipientAddressEmpty);
        }
        limit(
            Field::RecipientAddress,
            self.address.len(),
            ADDRESS_SIZE_BYTES_MAX,
        )?;
        limit(
            Field::RecipientParams,
            self.params.len(),
            ESMTP_PARAMS_SIZE_BYTES_MAX,
        )?;
        limit(Field::Reply, self.reply.len(), REPLY_SIZE_BYTES_MAX)
    }
}
