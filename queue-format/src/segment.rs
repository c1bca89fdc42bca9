//! The segment header: the first 4 KiB block of every segment file. It names
//! the log the segment belongs to and the record sequence number its first
//! record carries, so a reader can chain segments and tell a stale or
//! misplaced segment from the live one. A body segment (log kind 3) has the
//! same header, with no first record: its `record_sequence_first` is 0.

use thiserror::Error;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, IntoBytes};

use crate::checksum::crc32c;
use crate::layout::*;
use crate::record::LogKind;
use crate::wire::{SegmentHeaderRaw, SEGMENT_HEADER_CHECKSUM_OFFSET};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The version the segment was written in: a writer puts
    /// [`FORMAT_VERSION`]; a reader accepts [`FORMAT_VERSION_READ_MIN`] up to
    /// it (kept so a decoded header encodes back to the same bytes).
    pub format_version: u16,
    pub log_kind: LogKind,
    pub shard_index: u16,
    /// Position of this segment in its log; a new or recycled segment gets
    /// one more than the newest segment of the log.
    pub segment_sequence: u64,
    /// Record sequence number of the first record in this segment; 0 in a
    /// body segment, which holds no records.
    pub record_sequence_first: u64,
    pub created_unix_ms: u64,
    /// Size of the segment file, header included; a multiple of 4 KiB.
    pub segment_size_bytes: u64,
}

#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum SegmentHeaderError {
    #[error("segment header needs {needed} bytes, {available} given")]
    Truncated { needed: usize, available: usize },
    #[error("not a ringpost segment (bad magic)")]
    BadMagic,
    #[error("segment header checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadChecksum { stored: u32, computed: u32 },
    #[error(
        "format version {0} is not one this reader reads ({} to {})",
        FORMAT_VERSION_READ_MIN,
        FORMAT_VERSION
    )]
    UnsupportedVersion(u16),
    #[error("unknown log kind {0}")]
    BadLogKind(u8),
    #[error("block size {0} is not 4096")]
    BadBlockSize(u32),
    #[error("segment size {0} is out of range or not a multiple of 4 KiB")]
    BadSegmentSize(u64),
    #[error("reserved bytes are not zero")]
    ReservedNotZero,
    #[error("body segment states record sequence {0}, not 0 (it holds no records)")]
    BodySegmentRecordSequence(u64),
}

impl SegmentHeader {
    /// The limits a header value must meet (shared by encode and decode).
    pub fn check(&self) -> Result<(), SegmentHeaderError> {
        if !(FORMAT_VERSION_READ_MIN..=FORMAT_VERSION).contains(&self.format_version) {
            return Err(SegmentHeaderError::UnsupportedVersion(self.format_version));
        }
        check_log_kind(self.log_kind, self.format_version)?;
        let size = self.segment_size_bytes;
        let aligned = size.is_multiple_of(BLOCK_SIZE_BYTES as u64);
        if !(SEGMENT_SIZE_BYTES_MIN..=SEGMENT_SIZE_BYTES_MAX).contains(&size) || !aligned {
            return Err(SegmentHeaderError::BadSegmentSize(size));
        }
        if self.log_kind == LogKind::Body && self.record_sequence_first != 0 {
            return Err(SegmentHeaderError::BodySegmentRecordSequence(
                self.record_sequence_first,
            ));
        }
        Ok(())
    }

    /// Writes the whole header block (fields, checksum, zero fill).
    pub fn encode(
        &self,
        out: &mut [u8; SEGMENT_HEADER_SIZE_BYTES],
    ) -> Result<(), SegmentHeaderError> {
        self.check()?;
        let mut raw = SegmentHeaderRaw {
            magic: SEGMENT_MAGIC,
            format_version: U16::new(self.format_version),
            log_kind: self.log_kind as u8,
            reserved_11: 0,
            shard_index: U16::new(self.shard_index),
            reserved_14: U16::new(0),
            segment_sequence: U64::new(self.segment_sequence),
            record_sequence_first: U64::new(self.record_sequence_first),
            created_unix_ms: U64::new(self.created_unix_ms),
            segment_size_bytes: U64::new(self.segment_size_bytes),
            block_size_bytes: U32::new(BLOCK_SIZE_BYTES as u32),
            reserved_52: [0; 8],
            checksum: U32::new(0),
        };
        raw.checksum = U32::new(crc32c(&raw.as_bytes()[..SEGMENT_HEADER_CHECKSUM_OFFSET]));
        out.fill(0);
        out[..SEGMENT_HEADER_USED_SIZE_BYTES].copy_from_slice(raw.as_bytes());
        debug_assert_eq!(SegmentHeader::decode(out), Ok(*self));
        Ok(())
    }

    /// Reads and checks the header block at the start of `bytes` (at least
    /// 4096 bytes: the zero fill after the fields is checked too). Never panics.
    pub fn decode(bytes: &[u8]) -> Result<SegmentHeader, SegmentHeaderError> {
        if bytes.len() < SEGMENT_HEADER_SIZE_BYTES {
            return Err(SegmentHeaderError::Truncated {
                needed: SEGMENT_HEADER_SIZE_BYTES,
                available: bytes.len(),
            });
        }
        let (raw, fill) = SegmentHeaderRaw::read_from_prefix(&bytes[..SEGMENT_HEADER_SIZE_BYTES])
            .map_err(|_| SegmentHeaderError::Truncated {
            needed: SEGMENT_HEADER_SIZE_BYTES,
            available: bytes.len(),
        })?;
        if raw.magic != SEGMENT_MAGIC {
            return Err(SegmentHeaderError::BadMagic);
        }
        let stored = raw.checksum.get();
        let computed = crc32c(&raw.as_bytes()[..SEGMENT_HEADER_CHECKSUM_OFFSET]);
        if stored != computed {
            return Err(SegmentHeaderError::BadChecksum { stored, computed });
        }
        let format_version = raw.format_version.get();
        if !(FORMAT_VERSION_READ_MIN..=FORMAT_VERSION).contains(&format_version) {
            return Err(SegmentHeaderError::UnsupportedVersion(format_version));
        }
        let log_kind =
            LogKind::from_u8(raw.log_kind).ok_or(SegmentHeaderError::BadLogKind(raw.log_kind))?;
        check_log_kind(log_kind, format_version)?;
        if raw.block_size_bytes.get() != BLOCK_SIZE_BYTES as u32 {
            return Err(SegmentHeaderError::BadBlockSize(raw.block_size_bytes.get()));
        }
        let reserved_zero =
            raw.reserved_11 == 0 && raw.reserved_14.get() == 0 && raw.reserved_52 == [0; 8];
        if !reserved_zero || fill.iter().any(|&b| b != 0) {
            return Err(SegmentHeaderError::ReservedNotZero);
        }
        let header = SegmentHeader {
            format_version,
            log_kind,
            shard_index: raw.shard_index.get(),
            segment_sequence: raw.segment_sequence.get(),
            record_sequence_first: raw.record_sequence_first.get(),
            created_unix_ms: raw.created_unix_ms.get(),
            segment_size_bytes: raw.segment_size_bytes.get(),
        };
        header.check()?;
        Ok(header)
    }
}

/// Log kind 3 (body segments) exists from version 3 on: no earlier writer
/// made one.
fn check_log_kind(log_kind: LogKind, format_version: u16) -> Result<(), SegmentHeaderError> {
    if log_kind == LogKind::Body && format_version < FORMAT_VERSION_BODY_LOG {
        return Err(SegmentHeaderError::BadLogKind(log_kind as u8));
    }
    Ok(())
}
