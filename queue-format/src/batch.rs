//! [`BatchBuilder`]: packs staged records into one batch for the group
//! committer, which writes it with one O_DIRECT write at a block-aligned
//! offset and makes it durable with one fdatasync.
//!
//! A finished batch is a whole number of 4 KiB blocks. The gap after the
//! last record is closed by one Padding record that ends exactly on the
//! boundary; a gap shorter than a record header cannot hold one, so the
//! padding then runs on through the next block. Batches therefore never
//! share a block, and a block made durable by an earlier fdatasync is never
//! written again: a torn write can only damage the batch being written.

use thiserror::Error;

use crate::codec::{encode_into, encoded_size_bytes};
use crate::error::EncodeError;
use crate::layout::*;
use crate::record::{LogKind, Record, RecordBody, RecordFrame};

#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum PushError {
    /// The record and the padding after it would not fit the buffer.
    /// Finish this batch; if even an empty batch cannot take the record,
    /// start a new segment.
    #[error("batch full: record of {record_size_bytes} bytes does not fit")]
    Full { record_size_bytes: usize },
    /// Padding is added by [`BatchBuilder::finish`], never pushed.
    #[error("padding records are added by finish, not pushed")]
    PaddingPushed,
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// A finished batch: `buffer[..size_bytes]` is what to write.
#[derive(Debug)]
pub struct Batch<B> {
    pub buffer: B,
    /// A multiple of [`BLOCK_SIZE_BYTES`] (zero for an empty batch).
    pub size_bytes: usize,
    /// Sequence number of the first record (padding included).
    pub record_sequence_first: u64,
    /// Sequence number the next batch of this log starts with.
    pub record_sequence_next: u64,
    /// Records in the batch, padding included.
    pub record_count: usize,
}

/// Builds one batch in a caller-owned buffer (for example the DMA buffer of
/// the O_DIRECT write). The buffer's length is the batch's capacity: the
/// writer passes at most the space left in the segment.
pub struct BatchBuilder<B> {
    buffer: B,
    size_bytes: usize,
    log_kind: LogKind,
    shard_index: u16,
    record_sequence_first: u64,
    record_sequence_next: u64,
}

/// Size of a batch of `size_bytes` bytes of records once padded.
pub fn padded_size_bytes(size_bytes: usize) -> usize {
    let gap = (BLOCK_SIZE_BYTES - size_bytes % BLOCK_SIZE_BYTES) % BLOCK_SIZE_BYTES;
    if gap == 0 {
        size_bytes
    } else if gap >= RECORD_HEADER_SIZE_BYTES {
        size_bytes + gap
    } else {
        size_bytes + gap + BLOCK_SIZE_BYTES
    }
}

impl<B: AsRef<[u8]> + AsMut<[u8]>> BatchBuilder<B> {
    pub fn new(
        buffer: B,
        log_kind: LogKind,
        shard_index: u16,
        record_sequence_next: u64,
    ) -> BatchBuilder<B> {
        BatchBuilder {
            buffer,
            size_bytes: 0,
            log_kind,
            shard_index,
            record_sequence_first: record_sequence_next,
            record_sequence_next,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.size_bytes == 0
    }

    /// Bytes of records so far, before padding.
    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }

    pub fn record_count(&self) -> usize {
        (self.record_sequence_next - self.record_sequence_first) as usize
    }

    /// Encodes `body` as the next record; returns the sequence number it got.
    pub fn push(&mut self, body: &RecordBody<'_>) -> Result<u64, PushError> {
        if matches!(body, RecordBody::Padding { .. }) {
            return Err(PushError::PaddingPushed);
        }
        body.check().map_err(EncodeError::from)?;
        let record_size_bytes = encoded_size_bytes(body);
        if padded_size_bytes(self.size_bytes + record_size_bytes) > self.buffer.as_ref().len() {
            return Err(PushError::Full { record_size_bytes });
        }
        let record = Record {
            frame: self.frame(),
            body: body.clone(),
        };
        let written = encode_into(&record, &mut self.buffer.as_mut()[self.size_bytes..])?;
        assert_eq!(written, record_size_bytes);
        self.size_bytes += written;
        self.record_sequence_next += 1;
        Ok(record.frame.record_sequence)
    }

    /// Pads the batch to a block boundary and hands it over.
    pub fn finish(mut self) -> Batch<B> {
        let padded = padded_size_bytes(self.size_bytes);
        // push() only accepted records whose padded end fits the buffer.
        assert!(padded <= self.buffer.as_ref().len());
        if padded > self.size_bytes {
            let gap = padded - self.size_bytes;
            assert!(
                gap >= RECORD_HEADER_SIZE_BYTES
                    && gap - RECORD_HEADER_SIZE_BYTES <= PADDING_PAYLOAD_SIZE_BYTES_MAX
            );
            let payload_size_bytes = (gap - RECORD_HEADER_SIZE_BYTES) as u32;
            let record = Record {
                frame: self.frame(),
                body: RecordBody::Padding { payload_size_bytes },
            };
            let written = encode_into(&record, &mut self.buffer.as_mut()[self.size_bytes..])
                .expect("padding within limits fits the checked buffer");
            assert_eq!(written, gap);
            self.size_bytes += written;
            self.record_sequence_next += 1;
        }
        assert!(self.size_bytes.is_multiple_of(BLOCK_SIZE_BYTES));
        Batch {
            record_count: self.record_count(),
            buffer: self.buffer,
            size_bytes: self.size_bytes,
            record_sequence_first: self.record_sequence_first,
            record_sequence_next: self.record_sequence_next,
        }
    }

    fn frame(&self) -> RecordFrame {
        RecordFrame {
            record_sequence: self.record_sequence_next,
            log_kind: self.log_kind,
            shard_index: self.shard_index,
        }
    }
}
