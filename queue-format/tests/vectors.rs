//! The checked-in vectors in `vectors/` are the truth: each test encodes a
//! value and asserts the exact bytes of `NAME.bin`, decodes `NAME.bin` and
//! asserts the value, and asserts the text form in `NAME.txt`.
//!
//! To rewrite the files after a deliberate format change (which also bumps
//! FORMAT_VERSION and adds a line to SPEC.md's version history):
//! `RINGPOST_REGENERATE_VECTORS=1 cargo test -p queue-format --test vectors`

mod common;

use std::fs;
use std::path::PathBuf;

use common::*;
use queue_format::*;

fn vectors_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

fn regenerating() -> bool {
    std::env::var_os("RINGPOST_REGENERATE_VECTORS").is_some()
}

/// Returns the checked-in bytes of `name` (writing `bytes` and `text` first
/// when regenerating), after asserting they equal `bytes`.
fn checked_in_bytes(name: &str, bytes: &[u8], text: impl Fn(&[u8]) -> String) -> Vec<u8> {
    let bin_path = vectors_dir().join(format!("{name}.bin"));
    let txt_path = vectors_dir().join(format!("{name}.txt"));
    if regenerating() {
        fs::write(&bin_path, bytes).unwrap();
        fs::write(&txt_path, text(bytes)).unwrap();
    }
    let stored = fs::read(&bin_path).unwrap_or_else(|e| panic!("{}: {e}", bin_path.display()));
    assert!(
        stored == bytes,
        "{name}: encoding differs from the checked-in vector"
    );
    let stored_text =
        fs::read_to_string(&txt_path).unwrap_or_else(|e| panic!("{}: {e}", txt_path.display()));
    assert_eq!(
        text(&stored),
        stored_text,
        "{name}: text form differs from {name}.txt"
    );
    stored
}

fn record_text(bytes: &[u8]) -> String {
    let (record, size_bytes) = decode(bytes).expect("vector decodes");
    let mut out = String::new();
    dump::record(&record, Some((0, size_bytes)), &mut out);
    out
}

fn record_vector(name: &str, record: Record<'static>) {
    let mut encoded = Vec::new();
    let size_bytes = encode(&record, &mut encoded).unwrap();
    assert_eq!(size_bytes, encoded.len());
    let stored = checked_in_bytes(name, &encoded, record_text);
    let (decoded, consumed) = decode(&stored).unwrap();
    assert_eq!(consumed, stored.len());
    assert_eq!(decoded, record);
}

#[test]
fn segment_header_vector() {
    let header = segment_header(LogKind::Head, 42, 1000);
    let mut block = [0u8; SEGMENT_HEADER_SIZE_BYTES];
    header.encode(&mut block).unwrap();
    let text = |bytes: &[u8]| {
        let mut out = String::new();
        dump::segment_header(&SegmentHeader::decode(bytes).unwrap(), &mut out);
        out
    };
    let stored = checked_in_bytes("segment_header", &block, text);
    assert_eq!(SegmentHeader::decode(&stored), Ok(header));
    assert_eq!(&stored[..8], b"RINGPOSQ");
}

/// A header of an earlier `version`, as checked in with it under `name`
/// (unchanged since): still read, and encoded back to the same bytes.
fn earlier_header_vector(version: u16, name: &str) {
    let mut header = segment_header(LogKind::Head, 42, 1000);
    header.format_version = version;
    let mut block = [0u8; SEGMENT_HEADER_SIZE_BYTES];
    header.encode(&mut block).unwrap();
    let text = |bytes: &[u8]| {
        let mut out = String::new();
        dump::segment_header(&SegmentHeader::decode(bytes).unwrap(), &mut out);
        out
    };
    let stored = checked_in_bytes(name, &block, text);
    assert_eq!(SegmentHeader::decode(&stored), Ok(header));
    assert_eq!(&stored[8..10], &version.to_le_bytes());
}

/// A version 1 header (the vector checked in with version 1).
#[test]
fn segment_header_v1_vector() {
    earlier_header_vector(1, "segment_header_v1");
}

/// A version 2 header (the `segment_header` vector as checked in with
/// version 2).
#[test]
fn segment_header_v2_vector() {
    earlier_header_vector(2, "segment_header_v2");
}

/// A version 2 segment with its records: the version 2 header vector and
/// the records of `batch_padded` (record bytes carry no version) read as
/// they did under version 2.
#[test]
fn version_2_segment_with_records_reads() {
    let mut bytes = fs::read(vectors_dir().join("segment_header_v2.bin")).unwrap();
    bytes.extend(fs::read(vectors_dir().join("batch_padded.bin")).unwrap());
    let (header, mut reader) = LogReader::open_segment(&bytes).unwrap();
    assert_eq!(header.format_version, 2);
    assert_eq!(header.record_sequence_first, 1000);
    let entries: Vec<LogEntry<'_>> = reader.by_ref().collect();
    assert_eq!(entries.len(), 4);
    for (index, body) in batch_records().iter().enumerate() {
        assert_eq!(entries[index].record.body, *body);
    }
    assert_eq!(
        reader.stop(),
        Some(LogStop {
            offset: 2 * BLOCK_SIZE_BYTES,
            reason: StopReason::EndOfBytes
        })
    );
}

/// The header of a body segment: log kind 3, no first record.
#[test]
fn body_segment_header_vector() {
    let header = segment_header(LogKind::Body, 6, 0);
    let mut block = [0u8; SEGMENT_HEADER_SIZE_BYTES];
    header.encode(&mut block).unwrap();
    let text = |bytes: &[u8]| {
        let mut out = String::new();
        dump::segment_header(&SegmentHeader::decode(bytes).unwrap(), &mut out);
        out
    };
    let stored = checked_in_bytes("body_segment_header", &block, text);
    assert_eq!(SegmentHeader::decode(&stored), Ok(header));
    assert_eq!(stored[10], 3);
    assert_eq!(&stored[8..10], &3u16.to_le_bytes());
    // The bytes after the header are body bytes: no record is read.
    let mut segment = stored.clone();
    segment.extend(b"Subject: report\r\n\r\n");
    let (_, mut reader) = LogReader::open_segment(&segment).unwrap();
    assert!(reader.next().is_none());
    let stop = reader.stop().unwrap();
    assert_eq!(
        stop,
        LogStop {
            offset: SEGMENT_HEADER_SIZE_BYTES,
            reason: StopReason::BodySegment
        }
    );
    assert!(stop.reason.is_clean());
    assert!(dump::segment(&segment)
        .ends_with("stop offset=4096 clean: body segment: body bytes, no records\n"));
}

#[test]
fn segment_header_versions_outside_the_readable_range_are_refused() {
    for version in [0, FORMAT_VERSION + 1] {
        let mut header = segment_header(LogKind::Head, 42, 1000);
        header.format_version = version;
        let mut block = [0u8; SEGMENT_HEADER_SIZE_BYTES];
        assert_eq!(
            header.encode(&mut block),
            Err(SegmentHeaderError::UnsupportedVersion(version))
        );
        // The same bytes with a valid checksum, as a future writer would
        // make them: the reader names the version.
        header.format_version = FORMAT_VERSION;
        header.encode(&mut block).unwrap();
        block[8..10].copy_from_slice(&version.to_le_bytes());
        let checksum = checksum::crc32c(&block[..60]);
        block[60..64].copy_from_slice(&checksum.to_le_bytes());
        assert_eq!(
            SegmentHeader::decode(&block),
            Err(SegmentHeaderError::UnsupportedVersion(version))
        );
    }
}

#[test]
fn envelope_inline_vector() {
    record_vector(
        "envelope_inline",
        Record {
            frame: frame(LogKind::Head, 1000),
            body: RecordBody::Envelope(envelope_inline()),
        },
    );
}

#[test]
fn envelope_body_file_vector() {
    record_vector(
        "envelope_body_file",
        Record {
            frame: frame(LogKind::Head, 1001),
            body: RecordBody::Envelope(envelope_body_file()),
        },
    );
}

/// A body in the body log: three extents over two body segments.
#[test]
fn envelope_body_log_vector() {
    record_vector(
        "envelope_body_log",
        Record {
            frame: frame(LogKind::Head, 1005),
            body: RecordBody::Envelope(envelope_body_log()),
        },
    );
    let stored = fs::read(vectors_dir().join("envelope_body_log.bin")).unwrap();
    let (record, _) = decode(&stored).unwrap();
    let RecordBody::Envelope(envelope) = record.body else {
        panic!("not an envelope");
    };
    let BodyRef::Log { extents, .. } = envelope.body else {
        panic!("not in the body log");
    };
    assert_eq!(body_extents(extents).collect::<Vec<_>>(), BODY_LOG_EXTENTS);
}

#[test]
fn replacement_envelope_vector() {
    record_vector(
        "replacement_envelope",
        Record {
            frame: frame(LogKind::Retry, 2000),
            body: RecordBody::ReplacementEnvelope(replacement_envelope()),
        },
    );
}

/// A replacement envelope written by `ringpost queue hold`: the HELD flag
/// set, every recipient's state kept.
#[test]
fn replacement_envelope_held_vector() {
    let mut envelope = replacement_envelope();
    envelope.flags = envelope.flags.union(EnvelopeFlags::HELD);
    record_vector(
        "replacement_envelope_held",
        Record {
            frame: frame(LogKind::Retry, 2001),
            body: RecordBody::ReplacementEnvelope(envelope),
        },
    );
}

/// A replacement envelope written after the delay warning was queued: the
/// DELAY_WARNED flag set, and the DSN parameters (RFC 3461) of MAIL and of
/// each RCPT in the raw parameter fields, in their wire form.
#[test]
fn replacement_envelope_delay_warned_vector() {
    let mut envelope = replacement_envelope();
    envelope.flags = envelope.flags.union(EnvelopeFlags::DELAY_WARNED);
    envelope.mail_params = b"RET=HDRS ENVID=QQ314159";
    envelope.recipients[1].params = b"NOTIFY=FAILURE,DELAY ORCPT=rfc822;carol+2Blists@example.net";
    record_vector(
        "replacement_envelope_delay_warned",
        Record {
            frame: frame(LogKind::Retry, 2003),
            body: RecordBody::ReplacementEnvelope(envelope),
        },
    );
}

/// The completion of a message deleted by an operator.
#[test]
fn completion_deleted_vector() {
    let mut completion = completion();
    completion.reason = CompletionReason::Deleted;
    completion.attempt_count = 2;
    record_vector(
        "completion_deleted",
        Record {
            frame: frame(LogKind::Retry, 2002),
            body: RecordBody::Completion(completion),
        },
    );
}

/// The RecipientResult record of version 1 (the vector checked in with
/// version 1, unchanged): type 4 is no longer a record type, so its bytes
/// are refused like any unknown type, and its text form says so.
#[test]
fn retired_recipient_result_vector_is_refused() {
    let path = vectors_dir().join("recipient_result_v1.bin");
    let stored = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(stored[16], 4, "record_type byte");
    let error = decode(&stored).unwrap_err();
    assert_eq!(error, DecodeError::BadType(4));
    let text = format!("refused: {error}\n");
    let txt_path = vectors_dir().join("recipient_result_v1.txt");
    if regenerating() {
        fs::write(&txt_path, &text).unwrap();
    }
    assert_eq!(fs::read_to_string(&txt_path).unwrap(), text);
}

#[test]
fn completion_vector() {
    record_vector(
        "completion",
        Record {
            frame: frame(LogKind::Head, 1003),
            body: RecordBody::Completion(completion()),
        },
    );
}

#[test]
fn padding_vector() {
    record_vector(
        "padding",
        Record {
            frame: frame(LogKind::Head, 1004),
            body: RecordBody::Padding {
                payload_size_bytes: 40,
            },
        },
    );
}

fn batch_records() -> Vec<RecordBody<'static>> {
    vec![
        RecordBody::Envelope(envelope_inline()),
        RecordBody::Envelope(envelope_body_file()),
        RecordBody::Completion(completion()),
    ]
}

fn build_batch(
    log_kind: LogKind,
    record_sequence_first: u64,
    bodies: &[RecordBody<'_>],
) -> batch::Batch<Vec<u8>> {
    let mut builder = BatchBuilder::new(
        vec![0u8; 4 * BLOCK_SIZE_BYTES],
        log_kind,
        SHARD_INDEX,
        record_sequence_first,
    );
    for (index, body) in bodies.iter().enumerate() {
        assert_eq!(builder.push(body), Ok(record_sequence_first + index as u64));
    }
    builder.finish()
}

fn batch_bytes(
    log_kind: LogKind,
    record_sequence_first: u64,
    bodies: &[RecordBody<'_>],
) -> Vec<u8> {
    let batch = build_batch(log_kind, record_sequence_first, bodies);
    batch.buffer[..batch.size_bytes].to_vec()
}

fn batch_text(bytes: &[u8]) -> String {
    let expect = LogExpect {
        log_kind: LogKind::Head,
        shard_index: SHARD_INDEX,
        record_sequence_next: 1000,
    };
    let mut reader = LogReader::new(bytes, 0, expect);
    let mut out = String::new();
    for entry in reader.by_ref() {
        dump::record(
            &entry.record,
            Some((entry.offset, entry.size_bytes)),
            &mut out,
        );
    }
    dump::stop(&reader.stop().unwrap(), &mut out);
    out
}

#[test]
fn batch_padded_vector() {
    let bodies = batch_records();
    let batch = build_batch(LogKind::Head, 1000, &bodies);
    assert_eq!(batch.size_bytes, BLOCK_SIZE_BYTES);
    assert_eq!(
        (
            batch.record_sequence_first,
            batch.record_sequence_next,
            batch.record_count
        ),
        (1000, 1004, 4)
    );
    let stored = checked_in_bytes(
        "batch_padded",
        &batch.buffer[..batch.size_bytes],
        batch_text,
    );

    let expect = LogExpect {
        log_kind: LogKind::Head,
        shard_index: SHARD_INDEX,
        record_sequence_next: 1000,
    };
    let mut reader = LogReader::new(&stored, 0, expect);
    let entries: Vec<LogEntry<'_>> = reader.by_ref().collect();
    assert_eq!(entries.len(), 4);
    for (index, body) in bodies.iter().enumerate() {
        assert_eq!(
            entries[index].record,
            Record {
                frame: frame(LogKind::Head, 1000 + index as u64),
                body: body.clone()
            }
        );
    }
    let padding = &entries[3];
    assert!(matches!(padding.record.body, RecordBody::Padding { .. }));
    assert_eq!(padding.offset + padding.size_bytes, BLOCK_SIZE_BYTES);
    assert_eq!(
        reader.stop(),
        Some(LogStop {
            offset: BLOCK_SIZE_BYTES,
            reason: StopReason::EndOfBytes
        })
    );
}

fn segment_start(log_kind: LogKind, segment_sequence: u64, record_sequence_first: u64) -> Vec<u8> {
    let mut header = segment_header(log_kind, segment_sequence, record_sequence_first);
    header.segment_size_bytes = SEGMENT_SIZE_BYTES_MIN;
    let mut block = [0u8; SEGMENT_HEADER_SIZE_BYTES];
    header.encode(&mut block).unwrap();
    block.to_vec()
}

fn read_segment(bytes: &[u8]) -> (Vec<LogEntry<'_>>, LogStop) {
    let (_, mut reader) = LogReader::open_segment(bytes).unwrap();
    let entries = reader.by_ref().collect();
    (entries, reader.stop().unwrap())
}

#[test]
fn log_zeroed_end_vector() {
    let mut bytes = segment_start(LogKind::Head, 7, 1000);
    bytes.extend(batch_bytes(LogKind::Head, 1000, &batch_records()));
    bytes.extend([0u8; BLOCK_SIZE_BYTES]);
    let stored = checked_in_bytes("log_zeroed_end", &bytes, dump::segment);
    let (entries, stop) = read_segment(&stored);
    assert_eq!(entries.len(), 4);
    assert_eq!(
        stop,
        LogStop {
            offset: 2 * BLOCK_SIZE_BYTES,
            reason: StopReason::Zeroed
        }
    );
    assert!(stop.reason.is_clean());
}

/// A body that makes its envelope cross a block boundary.
static LONG_BODY: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let mut body = b"Subject: minutes\r\n\r\n".to_vec();
    for line in 0..120 {
        body.extend(
            format!("Line {line:03} of the minutes of the relay operators' meeting.\r\n").bytes(),
        );
    }
    body
});

#[test]
fn log_torn_tail_vector() {
    let mut long = envelope_inline();
    long.queue_id = queue_id(4);
    long.body = BodyRef::Inline(&LONG_BODY);
    let mut bytes = segment_start(LogKind::Head, 8, 1000);
    bytes.extend(batch_bytes(
        LogKind::Head,
        1000,
        &[RecordBody::Envelope(envelope_inline())],
    ));
    let second = [
        RecordBody::Envelope(envelope_body_file()),
        RecordBody::Envelope(long),
        RecordBody::Completion(completion()),
    ];
    let batch = batch_bytes(LogKind::Head, 1002, &second);
    assert_eq!(batch.len(), 2 * BLOCK_SIZE_BYTES);
    bytes.extend(&batch);
    // The crash tore the batch's second block: its first sector reached the
    // disk, the other seven still hold the zeros of the preallocated file.
    let torn_block = 3 * BLOCK_SIZE_BYTES;
    bytes[torn_block + 512..].fill(0);

    let stored = checked_in_bytes("log_torn_tail", &bytes, dump::segment);
    let (entries, stop) = read_segment(&stored);
    let sequences: Vec<u64> = entries
        .iter()
        .map(|e| e.record.frame.record_sequence)
        .collect();
    assert_eq!(sequences, [1000, 1001, 1002]);
    let torn_record_offset = entries[2].offset + entries[2].size_bytes;
    assert!(torn_record_offset < torn_block);
    assert_eq!(stop.offset, torn_record_offset);
    assert!(matches!(
        stop.reason,
        StopReason::Corrupt(DecodeError::BadChecksum { .. })
    ));
    assert!(!stop.reason.is_clean());
}

#[test]
fn log_stale_recycled_vector() {
    let mut bytes = segment_start(LogKind::Retry, 9, 2000);
    bytes.extend(batch_bytes(
        LogKind::Retry,
        2000,
        &[RecordBody::ReplacementEnvelope(replacement_envelope())],
    ));
    // The next block still holds a batch from the segment's previous life.
    bytes.extend(batch_bytes(
        LogKind::Retry,
        37,
        &[RecordBody::Completion(completion())],
    ));
    let stored = checked_in_bytes("log_stale_recycled", &bytes, dump::segment);
    let (entries, stop) = read_segment(&stored);
    assert_eq!(entries.len(), 2);
    assert_eq!(
        stop,
        LogStop {
            offset: 2 * BLOCK_SIZE_BYTES,
            reason: StopReason::SequenceMismatch {
                expected: 2002,
                found: 37
            }
        }
    );
}
