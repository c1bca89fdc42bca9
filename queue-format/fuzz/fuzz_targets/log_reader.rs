//! Any bytes, read as a segment and as a bare run of records: the reader
//! never panics, yields records in order with consecutive sequence numbers,
//! and stops at an offset inside the bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use queue_format::{LogExpect, LogKind, LogReader};

fn walk(mut reader: LogReader<'_>, length: usize) {
    let mut offset_next = reader.offset();
    let mut sequence_next = reader.record_sequence_next();
    for entry in reader.by_ref() {
        assert_eq!(entry.offset, offset_next);
        assert_eq!(entry.record.frame.record_sequence, sequence_next);
        offset_next = entry.offset + entry.size_bytes;
        sequence_next = sequence_next.wrapping_add(1);
    }
    let stop = reader.stop().expect("a finished reader says why");
    assert_eq!(stop.offset, offset_next);
    assert!(stop.offset <= length);
}

fuzz_target!(|data: &[u8]| {
    if let Ok((_, reader)) = LogReader::open_segment(data) {
        walk(reader, data.len());
    }
    // Sequence and log taken from the first bytes, so matching records occur.
    let sequence = data
        .get(8..16)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()));
    let log_kind = if data.get(18) == Some(&2) {
        LogKind::Retry
    } else {
        LogKind::Head
    };
    let shard_index = data
        .get(20..22)
        .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
    let expect = LogExpect {
        log_kind,
        shard_index,
        record_sequence_next: sequence,
    };
    walk(LogReader::new(data, 0, expect), data.len());
});
