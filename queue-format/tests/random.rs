//! Seeded random tests: random valid records round-trip through encode and
//! decode and through a batch and the log reader; random and mutated bytes
//! never make the decoder, the log reader or the segment header parser
//! panic; and any bytes the decoder accepts are canonical (they re-encode
//! to themselves).
//!
//! Each test runs for `RINGPOST_RANDOM_SECONDS` seconds (default 1) from
//! seed `RINGPOST_RANDOM_SEED` (default fixed); a failure prints its seed
//! and iteration and replays from them.

mod common;

use std::time::{Duration, Instant};

use common::Rng;
use queue_format::*;

fn seed() -> u64 {
    std::env::var("RINGPOST_RANDOM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_2026)
}

fn budget() -> Duration {
    let seconds = std::env::var("RINGPOST_RANDOM_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    Duration::from_secs_f64(seconds)
}

/// Runs `case` with a fresh PRNG per iteration until the time budget is
/// spent; a panic names the seed of the failing iteration.
fn run(name: &str, mut case: impl FnMut(&mut Rng, &[u8])) -> u64 {
    let pool = {
        let mut rng = Rng::new(seed());
        let mut pool = vec![0u8; 2 * INLINE_BODY_SIZE_BYTES_MAX];
        rng.fill(&mut pool);
        pool
    };
    let start = Instant::now();
    let mut iteration = 0u64;
    while iteration < 100 || start.elapsed() < budget() {
        let iteration_seed = seed() ^ iteration.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            case(&mut Rng::new(iteration_seed), &pool)
        }));
        if let Err(panic) = result {
            eprintln!(
                "{name}: failed at iteration {iteration}, iteration seed {iteration_seed:#x}"
            );
            std::panic::resume_unwind(panic);
        }
        iteration += 1;
    }
    iteration
}

/// A length in [min, max]: mostly short, sometimes the maximum itself.
fn length(rng: &mut Rng, min: usize, max: usize) -> usize {
    match rng.below(20) {
        0 => max,
        1 => min,
        2 => min + rng.below((max - min) as u64 + 1) as usize,
        _ => min + rng.below((max - min).min(40) as u64 + 1) as usize,
    }
}

fn slice<'a>(rng: &mut Rng, pool: &'a [u8], min: usize, max: usize) -> &'a [u8] {
    let size = length(rng, min, max);
    let start = rng.below((pool.len() - size) as u64 + 1) as usize;
    &pool[start..start + size]
}

fn queue_id(rng: &mut Rng) -> QueueId {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut bytes = [0u8; 16];
    for byte in &mut bytes {
        *byte = DIGITS[rng.below(16) as usize];
    }
    QueueId(bytes)
}

fn state(rng: &mut Rng) -> RecipientState {
    [
        RecipientState::Pending,
        RecipientState::Delivered,
        RecipientState::Failed,
    ][rng.below(3) as usize]
}

fn envelope<'a>(rng: &mut Rng, pool: &'a [u8], replacement: bool) -> Envelope<'a> {
    let null_sender = rng.chance(5);
    let mut flags = EnvelopeFlags::from_bits(rng.below(4) as u16).unwrap();
    if null_sender {
        flags = flags.union(EnvelopeFlags::NULL_SENDER);
    }
    let recipient_count = if rng.chance(300) {
        RECIPIENT_COUNT_MAX
    } else {
        1 + rng.below(5) as usize
    };
    let big = recipient_count < 10;
    let mut recipients: Vec<Recipient<'a>> = (0..recipient_count)
        .map(|_| Recipient {
            state: state(rng),
            address: slice(rng, pool, 1, if big { ADDRESS_SIZE_BYTES_MAX } else { 8 }),
            params: slice(
                rng,
                pool,
                0,
                if big { ESMTP_PARAMS_SIZE_BYTES_MAX } else { 8 },
            ),
            reply: slice(rng, pool, 0, if big { REPLY_SIZE_BYTES_MAX } else { 8 }),
        })
        .collect();
    let arrival_unix_ms = rng.next_u64() >> 1;
    let (attempt_count, retry_next_unix_ms) = if replacement {
        let index = rng.below(recipient_count as u64) as usize;
        recipients[index].state = RecipientState::Pending;
        (
            1 + rng.below(u16::MAX as u64) as u16,
            arrival_unix_ms + rng.below(1 << 40),
        )
    } else {
        (0, rng.next_u64())
    };
    let body = match rng.below(if replacement { 2 } else { 3 }) {
        0 => BodyRef::Inline(slice(rng, pool, 0, INLINE_BODY_SIZE_BYTES_MAX)),
        1 => BodyRef::File {
            file_id: rng.next_u64() | 1,
            size_bytes: rng.next_u64(),
            checksum: rng.next_u64() as u32,
        },
        _ => body_log(rng),
    };
    Envelope {
        queue_id: queue_id(rng),
        arrival_unix_ms,
        retry_next_unix_ms,
        attempt_count,
        flags,
        sender: if null_sender {
            b""
        } else {
            slice(rng, pool, 1, ADDRESS_SIZE_BYTES_MAX)
        },
        mail_params: slice(rng, pool, 0, ESMTP_PARAMS_SIZE_BYTES_MAX),
        client_address: slice(rng, pool, 0, CLIENT_ADDRESS_SIZE_BYTES_MAX),
        client_helo: slice(rng, pool, 0, CLIENT_HELO_SIZE_BYTES_MAX),
        headers_prepended: slice(rng, pool, 0, HEADERS_PREPENDED_SIZE_BYTES_MAX),
        recipients,
        body,
    }
}

/// A valid extent table of BODY_EXTENTS_MAX extents in body order: any run
/// of whole entries of it is a valid table too.
static EXTENT_TABLE: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let mut rng = Rng::new(seed());
    let mut extents = Vec::with_capacity(BODY_EXTENTS_MAX);
    let (mut segment_sequence, mut offset_bytes) = (1 + rng.below(1 << 40), 4096u64);
    while extents.len() < BODY_EXTENTS_MAX {
        if rng.chance(4) {
            segment_sequence += 1 + rng.below(3);
            offset_bytes = 4096 + rng.below(1 << 20);
        }
        // Mostly the writer's 64 KiB pieces, sometimes short, sometimes huge.
        let size_bytes = match rng.below(8) {
            0 => 1 + rng.below(65536),
            1 => 1 + rng.below(1 << 31),
            _ => 65536,
        };
        if offset_bytes + size_bytes > SEGMENT_SIZE_BYTES_MAX {
            segment_sequence += 1;
            offset_bytes = 4096;
            continue;
        }
        extents.push(BodyExtent {
            segment_sequence,
            offset_bytes: offset_bytes as u32,
            size_bytes: size_bytes as u32,
        });
        // The gaps hold other sessions' pieces.
        offset_bytes += size_bytes + if rng.chance(2) { 0 } else { rng.below(1 << 18) };
    }
    let mut table = Vec::new();
    encode_body_extents(&extents, &mut table);
    table
});

fn body_log(rng: &mut Rng) -> BodyRef<'static> {
    let count = length(rng, 1, BODY_EXTENTS_MAX);
    let first = rng.below((BODY_EXTENTS_MAX - count) as u64 + 1) as usize;
    let extents =
        &EXTENT_TABLE[first * BODY_EXTENT_SIZE_BYTES..(first + count) * BODY_EXTENT_SIZE_BYTES];
    BodyRef::Log {
        extents,
        size_bytes: body_extents(extents).map(|e| e.size_bytes as u64).sum(),
        checksum: rng.next_u64() as u32,
    }
}

fn body<'a>(rng: &mut Rng, pool: &'a [u8], padding: bool) -> RecordBody<'a> {
    match rng.below(if padding { 4 } else { 3 }) {
        0 => RecordBody::Envelope(envelope(rng, pool, false)),
        1 => RecordBody::ReplacementEnvelope(envelope(rng, pool, true)),
        2 => RecordBody::Completion(Completion {
            queue_id: queue_id(rng),
            completion_unix_ms: rng.next_u64(),
            attempt_count: rng.next_u64() as u16,
            reason: [
                CompletionReason::Done,
                CompletionReason::Expired,
                CompletionReason::Removed,
                CompletionReason::Deleted,
            ][rng.below(4) as usize],
        }),
        _ => RecordBody::Padding {
            payload_size_bytes: length(rng, 0, PADDING_PAYLOAD_SIZE_BYTES_MAX) as u32,
        },
    }
}

fn frame(rng: &mut Rng) -> RecordFrame {
    RecordFrame {
        record_sequence: rng.next_u64(),
        log_kind: if rng.chance(2) {
            LogKind::Head
        } else {
            LogKind::Retry
        },
        shard_index: rng.next_u64() as u16,
    }
}

/// If the decoder accepts `bytes`, they must be exactly what encoding the
/// decoded value produces; and the summary decoder accepts exactly what the
/// full one accepts.
fn assert_canonical(bytes: &[u8]) {
    let full = decode(bytes);
    assert_summary_agrees(bytes, &full);
    if let Ok((record, consumed)) = full {
        let mut again = Vec::new();
        assert_eq!(encode(&record, &mut again), Ok(consumed));
        assert!(again == bytes[..consumed], "accepted bytes are canonical");
    }
}

/// `decode_summary` trusts a record exactly when `decode` does, and gives
/// the same record but for an envelope's recipients, which it leaves out.
fn assert_summary_agrees(bytes: &[u8], full: &Result<(Record<'_>, usize), DecodeError>) {
    let summary = decode_summary(bytes);
    match (full, &summary) {
        (Ok((record, size)), Ok((short, short_size))) => {
            assert_eq!(size, short_size);
            let mut expected = record.clone();
            if let RecordBody::Envelope(e) | RecordBody::ReplacementEnvelope(e) = &mut expected.body {
                e.recipients.clear();
            }
            assert_eq!(&expected, short);
        }
        (Err(_), Err(_)) => {}
        _ => panic!("decode and decode_summary disagree: {full:?} vs {summary:?}"),
    }
}

fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        if bytes.is_empty() {
            return;
        }
        let index = rng.below(bytes.len() as u64) as usize;
        match rng.below(5) {
            0 => bytes[index] ^= 1 << rng.below(8),
            1 => bytes[index] = rng.next_u64() as u8,
            2 => bytes.truncate(index),
            3 => bytes[index] = [0x00, 0xff, 0x01, 0x7f, 0x80][rng.below(5) as usize],
            _ => {
                let end = (index + 1 + rng.below(16) as usize).min(bytes.len());
                bytes[index..end].fill(0);
            }
        }
    }
}

/// Rewrites the record checksum so mutations reach the payload parser.
fn fix_checksum(bytes: &mut [u8]) {
    if bytes.len() >= RECORD_HEADER_SIZE_BYTES {
        let payload_size = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
        let end = (RECORD_HEADER_SIZE_BYTES + payload_size).min(bytes.len());
        let checksum = checksum::crc32c(&bytes[4..end]);
        bytes[..4].copy_from_slice(&checksum.to_le_bytes());
    }
}

#[test]
fn valid_records_round_trip() {
    let iterations = run("valid_records_round_trip", |rng, pool| {
        let record = Record {
            frame: frame(rng),
            body: body(rng, pool, true),
        };
        let mut bytes = Vec::new();
        let size = encode(&record, &mut bytes).unwrap();
        assert_eq!(size, encoded_size_bytes(&record.body));
        let (decoded, consumed) = decode(&bytes).unwrap();
        assert_eq!(consumed, size);
        assert_eq!(decoded, record);
        assert_summary_agrees(&bytes, &Ok((decoded, consumed)));
        // Trailing bytes after a record are not its business.
        bytes.extend([0xAB; 7]);
        assert_eq!(decode(&bytes).unwrap().1, size);
        // Every strict prefix is refused, and never panics.
        let cut = rng.below(size as u64) as usize;
        assert!(decode(&bytes[..cut]).is_err());
    });
    eprintln!("valid_records_round_trip: {iterations} iterations");
}

#[test]
fn mutated_records_never_panic_and_accepted_bytes_are_canonical() {
    let iterations = run("mutated_records", |rng, pool| {
        let record = Record {
            frame: frame(rng),
            body: body(rng, pool, true),
        };
        let mut bytes = Vec::new();
        encode(&record, &mut bytes).unwrap();
        mutate(rng, &mut bytes);
        if rng.chance(2) {
            fix_checksum(&mut bytes);
        }
        assert_canonical(&bytes);
    });
    eprintln!("mutated_records: {iterations} iterations");
}

#[test]
fn random_bytes_never_panic() {
    let iterations = run("random_bytes", |rng, _| {
        let mut bytes = vec![0u8; length(rng, 0, 3 * BLOCK_SIZE_BYTES)];
        rng.fill(&mut bytes);
        if bytes.len() >= RECORD_HEADER_SIZE_BYTES && rng.chance(2) {
            // A plausible header: small size, known type and log, then a good checksum.
            let payload_size = (bytes.len() - RECORD_HEADER_SIZE_BYTES) as u32;
            bytes[4..8].copy_from_slice(&payload_size.to_le_bytes());
            bytes[16] = 1 + rng.below(5) as u8;
            bytes[17] = 0;
            bytes[18] = 1 + rng.below(2) as u8;
            bytes[19] = 0;
            bytes[22..24].fill(0);
            fix_checksum(&mut bytes);
        }
        assert_canonical(&bytes);
        let _ = SegmentHeader::decode(&bytes);
        let expect = LogExpect {
            log_kind: LogKind::Head,
            shard_index: 0,
            record_sequence_next: 0,
        };
        let mut reader = LogReader::new(&bytes, 0, expect);
        while reader.next().is_some() {}
        assert!(reader.stop().unwrap().offset <= bytes.len());
    });
    eprintln!("random_bytes: {iterations} iterations");
}

#[test]
fn batches_read_back_and_torn_logs_keep_their_prefix() {
    let iterations = run("torn_logs", |rng, pool| {
        let log_kind = if rng.chance(2) {
            LogKind::Head
        } else {
            LogKind::Retry
        };
        let shard_index = rng.next_u64() as u16;
        let sequence_first = rng.below(1 << 48);
        let header = SegmentHeader {
            format_version: FORMAT_VERSION_READ_MIN
                + rng.below((FORMAT_VERSION - FORMAT_VERSION_READ_MIN + 1) as u64) as u16,
            log_kind,
            shard_index,
            segment_sequence: rng.next_u64(),
            record_sequence_first: sequence_first,
            created_unix_ms: rng.next_u64(),
            segment_size_bytes: SEGMENT_SIZE_BYTES_MIN * (1 + rng.below(64)),
        };
        let mut segment = vec![0u8; SEGMENT_HEADER_SIZE_BYTES];
        header
            .encode((&mut segment[..]).try_into().unwrap())
            .unwrap();

        // Write batches until the segment is full, as the committer would.
        let mut written: Vec<(usize, RecordFrame)> = Vec::new();
        let mut sequence_next = sequence_first;
        while segment.len() < header.segment_size_bytes as usize {
            let space = header.segment_size_bytes as usize - segment.len();
            let capacity = space.min(BLOCK_SIZE_BYTES * (1 + rng.below(8) as usize));
            let mut builder =
                BatchBuilder::new(vec![0u8; capacity], log_kind, shard_index, sequence_next);
            for _ in 0..1 + rng.below(6) {
                let body = body(rng, pool, false);
                match builder.push(&body) {
                    Ok(_) => {}
                    Err(PushError::Full { .. }) => break,
                    Err(error) => panic!("valid record refused: {error}"),
                }
            }
            if builder.is_empty() {
                break;
            }
            let batch = builder.finish();
            assert_eq!(batch.size_bytes % BLOCK_SIZE_BYTES, 0);
            let base = segment.len();
            let expect = LogExpect {
                log_kind,
                shard_index,
                record_sequence_next: sequence_next,
            };
            let batch_bytes = &batch.buffer[..batch.size_bytes];
            for entry in LogReader::new(batch_bytes, 0, expect) {
                written.push((base + entry.offset + entry.size_bytes, entry.record.frame));
            }
            segment.extend_from_slice(batch_bytes);
            sequence_next = batch.record_sequence_next;
        }

        // The whole segment reads back.
        let (_, mut reader) = LogReader::open_segment(&segment).unwrap();
        let count = reader.by_ref().count();
        assert_eq!(count, written.len());
        assert!(reader.stop().unwrap().reason.is_clean());

        // Damage it from some offset on; everything wholly before survives.
        let damage_offset = SEGMENT_HEADER_SIZE_BYTES
            + rng.below((segment.len() - SEGMENT_HEADER_SIZE_BYTES) as u64 + 1) as usize;
        let mut torn = segment.clone();
        match rng.below(3) {
            0 => torn[damage_offset..].fill(0),
            1 => rng.fill(&mut torn[damage_offset..]),
            _ => torn.truncate(damage_offset),
        }
        let (_, reader) = LogReader::open_segment(&torn).unwrap();
        let read: Vec<LogEntry<'_>> = reader.collect();
        let intact = written
            .iter()
            .take_while(|(end, _)| *end <= damage_offset)
            .count();
        assert!(read.len() >= intact, "a record before the damage was lost");
        for (entry, (end, frame)) in read.iter().zip(&written) {
            assert_eq!(entry.offset + entry.size_bytes, *end);
            assert_eq!(entry.record.frame, *frame);
        }
    });
    eprintln!("torn_logs: {iterations} iterations");
}
