//! Fixed-width parts of the format as byte-exact structs. Every multi-byte
//! integer is little-endian (`zerocopy::little_endian`), whatever the host;
//! every struct is `Unaligned`, so it can be read from any offset. The byte
//! diagrams in SPEC.md and the offset assertions below describe the same
//! layout.

use core::mem::{offset_of, size_of};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::layout::*;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
pub(crate) struct SegmentHeaderRaw {
    pub magic: [u8; 8],
    pub format_version: U16,
    pub log_kind: u8,
    pub reserved_11: u8,
    pub shard_index: U16,
    pub reserved_14: U16,
    pub segment_sequence: U64,
    pub record_sequence_first: U64,
    pub created_unix_ms: U64,
    pub segment_size_bytes: U64,
    pub block_size_bytes: U32,
    pub reserved_52: [u8; 8],
    /// CRC32C of bytes [0, 60).
    pub checksum: U32,
}

const _: () = assert!(size_of::<SegmentHeaderRaw>() == SEGMENT_HEADER_USED_SIZE_BYTES);
const _: () = assert!(offset_of!(SegmentHeaderRaw, format_version) == 8);
const _: () = assert!(offset_of!(SegmentHeaderRaw, log_kind) == 10);
const _: () = assert!(offset_of!(SegmentHeaderRaw, shard_index) == 12);
const _: () = assert!(offset_of!(SegmentHeaderRaw, segment_sequence) == 16);
const _: () = assert!(offset_of!(SegmentHeaderRaw, record_sequence_first) == 24);
const _: () = assert!(offset_of!(SegmentHeaderRaw, created_unix_ms) == 32);
const _: () = assert!(offset_of!(SegmentHeaderRaw, segment_size_bytes) == 40);
const _: () = assert!(offset_of!(SegmentHeaderRaw, block_size_bytes) == 48);
const _: () = assert!(offset_of!(SegmentHeaderRaw, checksum) == SEGMENT_HEADER_CHECKSUM_OFFSET);

/// The segment header checksum covers every used byte before it.
pub(crate) const SEGMENT_HEADER_CHECKSUM_OFFSET: usize = 60;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
pub(crate) struct RecordHeaderRaw {
    /// CRC32C of bytes [4, record end): everything after this field.
    pub checksum: U32,
    pub payload_size_bytes: U32,
    pub record_sequence: U64,
    pub record_type: u8,
    pub record_flags: u8,
    pub log_kind: u8,
    pub reserved_19: u8,
    pub shard_index: U16,
    pub reserved_22: U16,
}

const _: () = assert!(size_of::<RecordHeaderRaw>() == RECORD_HEADER_SIZE_BYTES);
const _: () = assert!(offset_of!(RecordHeaderRaw, checksum) == 0);
const _: () = assert!(offset_of!(RecordHeaderRaw, payload_size_bytes) == 4);
const _: () = assert!(offset_of!(RecordHeaderRaw, record_sequence) == 8);
const _: () = assert!(offset_of!(RecordHeaderRaw, record_type) == 16);
const _: () = assert!(offset_of!(RecordHeaderRaw, record_flags) == 17);
const _: () = assert!(offset_of!(RecordHeaderRaw, log_kind) == 18);
const _: () = assert!(offset_of!(RecordHeaderRaw, shard_index) == 20);

/// Bytes of a record covered by its checksum start here.
pub(crate) const RECORD_CHECKSUM_COVERAGE_OFFSET: usize = 4;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
pub(crate) struct EnvelopeFixedRaw {
    pub queue_id: [u8; 16],
    pub arrival_unix_ms: U64,
    pub retry_next_unix_ms: U64,
    pub body_file_id: U64,
    pub body_size_bytes: U64,
    pub body_checksum: U32,
    pub attempt_count: U16,
    pub recipient_count: U16,
    pub envelope_flags: U16,
    pub body_kind: u8,
    pub reserved_59: u8,
    pub sender_size_bytes: U16,
    pub mail_params_size_bytes: U16,
    pub client_address_size_bytes: U16,
    pub client_helo_size_bytes: U16,
    pub headers_prepended_size_bytes: U16,
    pub reserved_70: U16,
    pub body_inline_size_bytes: U32,
    pub reserved_76: U32,
}

const _: () = assert!(size_of::<EnvelopeFixedRaw>() == ENVELOPE_FIXED_SIZE_BYTES);
const _: () = assert!(offset_of!(EnvelopeFixedRaw, arrival_unix_ms) == 16);
const _: () = assert!(offset_of!(EnvelopeFixedRaw, retry_next_unix_ms) == 24);
const _: () = assert!(offset_of!(EnvelopeFixedRaw, body_file_id) == 32);
const _: () = assert!(offset_of!(EnvelopeFixedRaw, body_size_bytes) == 40);
const _: () = assert!(offset_of!(EnvelopeFixedRaw, body_checksum) == 48);
const _: () = assert!(offset_of!(EnvelopeFixedRaw, attempt_count) == 52);
const _: () = assert!(offset_of!(EnvelopeFixedRaw, recipient_count) == 54);
const _: () = assert!(offset_of!(EnvelopeFixedRaw, envelope_flags) == 56);
const _: () = assert!(offset_of!(EnvelopeFixedRaw, body_kind) == 58);
const _: () = assert!(offset_of!(EnvelopeFixedRaw, sender_size_bytes) == 60);
const _: () = assert!(offset_of!(EnvelopeFixedRaw, headers_prepended_size_bytes) == 68);
const _: () = assert!(offset_of!(EnvelopeFixedRaw, body_inline_size_bytes) == 72);

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
pub(crate) struct RecipientFixedRaw {
    pub recipient_state: u8,
    pub reserved_1: u8,
    pub address_size_bytes: U16,
    pub params_size_bytes: U16,
    pub reply_size_bytes: U16,
}

const _: () = assert!(size_of::<RecipientFixedRaw>() == RECIPIENT_FIXED_SIZE_BYTES);
const _: () = assert!(offset_of!(RecipientFixedRaw, address_size_bytes) == 2);
const _: () = assert!(offset_of!(RecipientFixedRaw, reply_size_bytes) == 6);

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
pub(crate) struct CompletionRaw {
    pub queue_id: [u8; 16],
    pub completion_unix_ms: U64,
    pub attempt_count: U16,
    pub completion_reason: u8,
    pub reserved_27: [u8; 5],
}

const _: () = assert!(size_of::<CompletionRaw>() == COMPLETION_SIZE_BYTES);
const _: () = assert!(offset_of!(CompletionRaw, completion_unix_ms) == 16);
const _: () = assert!(offset_of!(CompletionRaw, attempt_count) == 24);
const _: () = assert!(offset_of!(CompletionRaw, completion_reason) == 26);

/// One entry of a body extent table (body kind 3).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
pub(crate) struct BodyExtentRaw {
    pub segment_sequence: U64,
    pub offset_bytes: U32,
    pub size_bytes: U32,
}

const _: () = assert!(size_of::<BodyExtentRaw>() == 16);
const _: () = assert!(offset_of!(BodyExtentRaw, offset_bytes) == 8);
const _: () = assert!(offset_of!(BodyExtentRaw, size_bytes) == 12);
