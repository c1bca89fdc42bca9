//! Sizes and limits of the on-disk format, with the facts the format relies
//! on checked at compile time. Every number here appears in `SPEC.md`; change
//! one and the other together, and bump [`FORMAT_VERSION`] if bytes change.

/// Version written in every segment header. See "Version history" in SPEC.md.
pub const FORMAT_VERSION: u16 = 3;
/// Oldest version a reader accepts. Version 1 and 2 segments are read as
/// version 3: every byte their writers made keeps its meaning (version 1
/// differs only in record type 4, which no version 1 writer wrote; version
/// 3 only adds the body log) (SPEC.md section 15).
pub const FORMAT_VERSION_READ_MIN: u16 = 1;
/// First version with the body log: body segments (log kind 3) and body
/// kind 3. A segment header of an earlier version never names log kind 3.
pub const FORMAT_VERSION_BODY_LOG: u16 = 3;

/// A queue id: 16 ASCII upper-case hex digits.
pub const QUEUE_ID_SIZE_BYTES: usize = 16;

/// The unit of alignment: segment headers and batches start and end on it.
/// Writes are O_DIRECT, so every write is a whole number of blocks at a
/// block-aligned offset.
pub const BLOCK_SIZE_BYTES: usize = 4096;

/// First eight bytes of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"RINGPOSQ";

/// The segment header occupies the whole first block, so records start aligned.
pub const SEGMENT_HEADER_SIZE_BYTES: usize = BLOCK_SIZE_BYTES;
/// Bytes of the segment header that carry fields; the rest of the block is zero.
pub const SEGMENT_HEADER_USED_SIZE_BYTES: usize = 64;

/// Smallest segment size a header may state (tests use tiny segments).
pub const SEGMENT_SIZE_BYTES_MIN: u64 = 64 * 1024;
/// Largest segment size a header may state: offsets within a segment fit u32.
pub const SEGMENT_SIZE_BYTES_MAX: u64 = 1 << 32;

/// Every record starts with this many header bytes.
pub const RECORD_HEADER_SIZE_BYTES: usize = 24;
/// Upper bound on any record's payload; a header stating more is corrupt.
pub const RECORD_PAYLOAD_SIZE_BYTES_MAX: usize = 4 << 20;
/// Upper bound on a whole record.
pub const RECORD_SIZE_BYTES_MAX: usize = RECORD_HEADER_SIZE_BYTES + RECORD_PAYLOAD_SIZE_BYTES_MAX;

/// A Padding record's payload is zeros, at most this long. The longest
/// padding record closes a gap too short for a record header (at most 23
/// bytes) plus one whole block: 4119 bytes, of which 4095 are payload.
pub const PADDING_PAYLOAD_SIZE_BYTES_MAX: usize = BLOCK_SIZE_BYTES - 1;

/// Envelope sender or recipient address, SMTPUTF8 included (RFC 5321 allows
/// 64 + 1 + 255; the slack covers SMTPUTF8 and source routes kept verbatim).
pub const ADDRESS_SIZE_BYTES_MAX: usize = 512;
/// Recipients in one envelope. Matches the SMTP server's per-transaction
/// limit: a client past it gets 452 and sends the rest in a new transaction.
pub const RECIPIENT_COUNT_MAX: usize = 1000;
/// Last reply text kept per recipient (multi-line replies are truncated by
/// the delivery side before they reach the queue).
pub const REPLY_SIZE_BYTES_MAX: usize = 1024;
/// Raw ESMTP parameters of MAIL FROM (BODY, ENVID, RET, ...) or of one RCPT
/// TO (NOTIFY, ORCPT), as accepted, space separated.
pub const ESMTP_PARAMS_SIZE_BYTES_MAX: usize = 1024;
/// Client address as text, for logs and Received headers ("[2001:db8::1]:25").
pub const CLIENT_ADDRESS_SIZE_BYTES_MAX: usize = 64;
/// HELO/EHLO argument as given by the client, for logs and Received headers.
pub const CLIENT_HELO_SIZE_BYTES_MAX: usize = 512;
/// Header lines added by ringpost and its content scanners, prepended to the
/// body at delivery: the body itself is never rewritten.
pub const HEADERS_PREPENDED_SIZE_BYTES_MAX: usize = 16 * 1024;
/// Largest body the format lets a record inline. `queue.inline_max_bytes`
/// (default [`INLINE_BODY_SIZE_BYTES_DEFAULT`]) must not exceed it.
pub const INLINE_BODY_SIZE_BYTES_MAX: usize = 1 << 20;
/// Default of `queue.inline_max_bytes`.
pub const INLINE_BODY_SIZE_BYTES_DEFAULT: usize = 64 * 1024;

/// Fixed part of an Envelope or ReplacementEnvelope payload.
pub const ENVELOPE_FIXED_SIZE_BYTES: usize = 80;
/// Fixed part of each recipient inside an envelope.
pub const RECIPIENT_FIXED_SIZE_BYTES: usize = 8;
/// Whole Completion payload.
pub const COMPLETION_SIZE_BYTES: usize = 32;

/// Largest possible recipient entry inside an envelope.
pub const RECIPIENT_SIZE_BYTES_MAX: usize = RECIPIENT_FIXED_SIZE_BYTES
    + ADDRESS_SIZE_BYTES_MAX
    + ESMTP_PARAMS_SIZE_BYTES_MAX
    + REPLY_SIZE_BYTES_MAX;

/// Largest possible envelope payload, every field at its maximum.
pub const ENVELOPE_PAYLOAD_SIZE_BYTES_MAX: usize = ENVELOPE_FIXED_SIZE_BYTES
    + ADDRESS_SIZE_BYTES_MAX
    + ESMTP_PARAMS_SIZE_BYTES_MAX
    + CLIENT_ADDRESS_SIZE_BYTES_MAX
    + CLIENT_HELO_SIZE_BYTES_MAX
    + HEADERS_PREPENDED_SIZE_BYTES_MAX
    + RECIPIENT_COUNT_MAX * RECIPIENT_SIZE_BYTES_MAX
    + INLINE_BODY_SIZE_BYTES_MAX;

/// Smallest segment that holds its header plus one batch carrying the
/// largest possible record and its padding.
pub const SEGMENT_SIZE_BYTES_FOR_RECORD_MAX: u64 = (SEGMENT_HEADER_SIZE_BYTES
    + RECORD_SIZE_BYTES_MAX
    + BLOCK_SIZE_BYTES
    + RECORD_HEADER_SIZE_BYTES) as u64;

// Facts the format relies on.
const _: () = assert!(BLOCK_SIZE_BYTES.is_power_of_two());
const _: () = assert!(SEGMENT_HEADER_SIZE_BYTES.is_multiple_of(BLOCK_SIZE_BYTES));
const _: () = assert!(SEGMENT_HEADER_USED_SIZE_BYTES <= SEGMENT_HEADER_SIZE_BYTES);
const _: () = assert!(SEGMENT_SIZE_BYTES_MIN.is_multiple_of(BLOCK_SIZE_BYTES as u64));
const _: () = assert!(SEGMENT_SIZE_BYTES_MAX.is_multiple_of(BLOCK_SIZE_BYTES as u64));
const _: () = assert!(SEGMENT_SIZE_BYTES_MIN > SEGMENT_HEADER_SIZE_BYTES as u64);
// Offsets and record sizes fit u32 everywhere.
const _: () = assert!(SEGMENT_SIZE_BYTES_MAX <= u32::MAX as u64 + 1);
const _: () = assert!(RECORD_SIZE_BYTES_MAX <= u32::MAX as usize);
// Any batch gap can be closed by one Padding record (see BatchBuilder).
const _: () = assert!(
    RECORD_HEADER_SIZE_BYTES + PADDING_PAYLOAD_SIZE_BYTES_MAX
        == (RECORD_HEADER_SIZE_BYTES - 1) + BLOCK_SIZE_BYTES
);
const _: () = assert!(PADDING_PAYLOAD_SIZE_BYTES_MAX <= RECORD_PAYLOAD_SIZE_BYTES_MAX);
// The largest envelope fits a record.
const _: () = assert!(ENVELOPE_PAYLOAD_SIZE_BYTES_MAX <= RECORD_PAYLOAD_SIZE_BYTES_MAX);
const _: () = assert!(INLINE_BODY_SIZE_BYTES_DEFAULT <= INLINE_BODY_SIZE_BYTES_MAX);
const _: () = assert!(FORMAT_VERSION_READ_MIN >= 1 && FORMAT_VERSION_READ_MIN <= FORMAT_VERSION);
const _: () = assert!(FORMAT_VERSION_BODY_LOG <= FORMAT_VERSION);
// Lengths stored as u16 fit u16; the recipient count fits u16.
const _: () = assert!(ADDRESS_SIZE_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(HEADERS_PREPENDED_SIZE_BYTES_MAX <= u16::MAX as usize);
const _: () = assert!(RECIPIENT_COUNT_MAX <= u16::MAX as usize);
const _: () = assert!(INLINE_BODY_SIZE_BYTES_MAX <= u32::MAX as usize);

/// After a crash, or after a write or fdatasync that failed, the writer does
/// not know how many records of its last batch reached the disk. It opens a
/// new segment whose first record sequence number is the last trusted one
/// plus this gap, so no record that may surface later in the abandoned
/// segment can share a sequence number with a new one (SPEC.md, "Writer
/// rules").
pub const RECORD_SEQUENCE_RESTART_GAP: u64 = 1 << 32;

// One batch (at most one segment) holds fewer records than the gap.
const _: () = assert!(
    SEGMENT_SIZE_BYTES_MAX / (RECORD_HEADER_SIZE_BYTES as u64) < RECORD_SEQUENCE_RESTART_GAP
);
