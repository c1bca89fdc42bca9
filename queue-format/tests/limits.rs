//! Every limit is hit and every typed error is produced, on both sides: the
//! encoder refuses values a reader would refuse, and the decoder, the log
//! reader and the segment header parser name what is wrong.

mod common;

use common::*;
use queue_format::*;

fn head(record_sequence: u64, body: RecordBody<'_>) -> Record<'_> {
    Record {
        frame: frame(LogKind::Head, record_sequence),
        body,
    }
}

fn encode_envelope_error(change: impl FnOnce(&mut Envelope<'static>)) -> EncodeError {
    let mut envelope = envelope_inline();
    change(&mut envelope);
    encode(&head(1, RecordBody::Envelope(envelope)), &mut Vec::new()).unwrap_err()
}

fn too_long(field: Field, size: usize, max: usize) -> EncodeError {
    EncodeError::Limit(LimitError::FieldTooLong { field, size, max })
}

static BIG: [u8; INLINE_BODY_SIZE_BYTES_MAX + 1] = [b'x'; INLINE_BODY_SIZE_BYTES_MAX + 1];

#[test]
fn encoder_refuses_fields_above_their_maximum() {
    let cases: Vec<(EncodeError, EncodeError)> = vec![
        (
            encode_envelope_error(|e| e.sender = &BIG[..513]),
            too_long(Field::Sender, 513, 512),
        ),
        (
            encode_envelope_error(|e| e.mail_params = &BIG[..1025]),
            too_long(Field::MailParams, 1025, 1024),
        ),
        (
            encode_envelope_error(|e| e.client_address = &BIG[..65]),
            too_long(Field::ClientAddress, 65, 64),
        ),
        (
            encode_envelope_error(|e| e.client_helo = &BIG[..513]),
            too_long(Field::ClientHelo, 513, 512),
        ),
        (
            encode_envelope_error(|e| e.headers_prepended = &BIG[..16385]),
            too_long(Field::HeadersPrepended, 16385, 16384),
        ),
        (
            encode_envelope_error(|e| {
                e.recipients = vec![e.recipients[0]; RECIPIENT_COUNT_MAX + 1]
            }),
            too_long(Field::Recipients, 1001, 1000),
        ),
        (
            encode_envelope_error(|e| e.recipients[1].address = &BIG[..513]),
            too_long(Field::RecipientAddress, 513, 512),
        ),
        (
            encode_envelope_error(|e| e.recipients[1].params = &BIG[..1025]),
            too_long(Field::RecipientParams, 1025, 1024),
        ),
        (
            encode_envelope_error(|e| e.recipients[0].reply = &BIG[..1025]),
            too_long(Field::Reply, 1025, 1024),
        ),
        (
            encode_envelope_error(|e| e.body = BodyRef::Inline(&BIG[..])),
            too_long(
                Field::InlineBody,
                INLINE_BODY_SIZE_BYTES_MAX + 1,
                INLINE_BODY_SIZE_BYTES_MAX,
            ),
        ),
    ];
    for (got, want) in cases {
        assert_eq!(got, want);
    }
    let padding = RecordBody::Padding {
        payload_size_bytes: PADDING_PAYLOAD_SIZE_BYTES_MAX as u32 + 1,
    };
    let error = encode(&head(1, padding), &mut Vec::new()).unwrap_err();
    assert_eq!(error, too_long(Field::Padding, 4096, 4095));
}

#[test]
fn encoder_accepts_every_field_at_its_maximum() {
    let mut envelope = envelope_inline();
    envelope.sender = &BIG[..ADDRESS_SIZE_BYTES_MAX];
    envelope.mail_params = &BIG[..ESMTP_PARAMS_SIZE_BYTES_MAX];
    envelope.client_address = &BIG[..CLIENT_ADDRESS_SIZE_BYTES_MAX];
    envelope.client_helo = &BIG[..CLIENT_HELO_SIZE_BYTES_MAX];
    envelope.headers_prepended = &BIG[..HEADERS_PREPENDED_SIZE_BYTES_MAX];
    let recipient = Recipient {
        state: RecipientState::Pending,
        address: &BIG[..ADDRESS_SIZE_BYTES_MAX],
        params: &BIG[..ESMTP_PARAMS_SIZE_BYTES_MAX],
        reply: &BIG[..REPLY_SIZE_BYTES_MAX],
    };
    envelope.recipients = vec![recipient; RECIPIENT_COUNT_MAX];
    envelope.body = BodyRef::Inline(&BIG[..INLINE_BODY_SIZE_BYTES_MAX]);
    let record = head(1, RecordBody::Envelope(envelope));
    let mut bytes = Vec::new();
    let size = encode(&record, &mut bytes).unwrap();
    assert_eq!(
        size,
        RECORD_HEADER_SIZE_BYTES + ENVELOPE_PAYLOAD_SIZE_BYTES_MAX
    );
    assert!(size <= RECORD_SIZE_BYTES_MAX);
    assert!(size as u64 + 2 * BLOCK_SIZE_BYTES as u64 <= SEGMENT_SIZE_BYTES_FOR_RECORD_MAX);
    assert_eq!(decode(&bytes).unwrap().0, record);
}

#[test]
fn encoder_refuses_broken_invariants() {
    let invariant = |error| EncodeError::Limit(error);
    for id in [
        [0u8; 16],
        *b"0006201a2b3c4d01",
        *b"0006201A2B3C4D0G",
        *b"0006201A2B3C4D0 ",
        *b"\x01\x9b\x7a\x3c\x00\x00\x00\x03\x00\x00\x00\x00\x00\x00\x00\x01",
    ] {
        assert_eq!(
            encode_envelope_error(|e| e.queue_id = QueueId(id)),
            invariant(LimitError::QueueIdNotHex),
            "{id:?}"
        );
    }
    assert_eq!(
        QueueId::parse(b"0006201A2B3C4D01"),
        Ok(QueueId(*b"0006201A2B3C4D01"))
    );
    assert_eq!(
        QueueId::parse(b"0006201A2B3C4D0"),
        Err(LimitError::QueueIdNotHex)
    );
    assert_eq!(
        QueueId::parse(b"0006201A2B3C4D011"),
        Err(LimitError::QueueIdNotHex)
    );
    assert_eq!(
        QueueId::parse(b"0006201a2b3c4d01"),
        Err(LimitError::QueueIdNotHex)
    );
    assert_eq!(
        encode_envelope_error(|e| e.recipients.clear()),
        invariant(LimitError::RecipientsEmpty)
    );
    assert_eq!(
        encode_envelope_error(|e| e.sender = b""),
        invariant(LimitError::NullSenderMismatch)
    );
    assert_eq!(
        encode_envelope_error(|e| e.flags = e.flags.union(EnvelopeFlags::NULL_SENDER)),
        invariant(LimitError::NullSenderMismatch)
    );
    assert_eq!(
        encode_envelope_error(|e| e.recipients[0].address = b""),
        invariant(LimitError::RecipientAddressEmpty)
    );
    assert_eq!(
        encode_envelope_error(|e| e.body = BodyRef::File {
            file_id: 0,
            size_bytes: 1,
            checksum: 0
        }),
        invariant(LimitError::BodyFileIdZero)
    );
    assert_eq!(
        encode_envelope_error(|e| e.attempt_count = 1),
        invariant(LimitError::AttemptCount { attempt_count: 1 })
    );
    assert_eq!(
        encode_envelope_error(|e| e.flags = e.flags.union(EnvelopeFlags::HELD)),
        invariant(LimitError::HeldFirstEnvelope)
    );

    let replacement_error = |change: fn(&mut Envelope<'static>)| {
        let mut envelope = replacement_envelope();
        change(&mut envelope);
        encode(
            &head(1, RecordBody::ReplacementEnvelope(envelope)),
            &mut Vec::new(),
        )
        .unwrap_err()
    };
    assert_eq!(
        replacement_error(|e| e.attempt_count = 0),
        invariant(LimitError::AttemptCount { attempt_count: 0 })
    );
    assert_eq!(
        replacement_error(|e| e.retry_next_unix_ms = e.arrival_unix_ms - 1),
        invariant(LimitError::RetryBeforeArrival)
    );
    assert_eq!(
        replacement_error(|e| e.recipients[1].state = RecipientState::Failed),
        invariant(LimitError::NothingPending)
    );
    let mut completion = completion();
    completion.queue_id = QueueId(*b"0006201A2B3C4D0x");
    let error = encode(
        &head(1, RecordBody::Completion(completion)),
        &mut Vec::new(),
    )
    .unwrap_err();
    assert_eq!(error, invariant(LimitError::QueueIdNotHex));
}

#[test]
fn encode_into_a_short_buffer_fails_cleanly() {
    let record = head(1, RecordBody::Completion(completion()));
    let mut buffer = [0u8; 55];
    assert_eq!(
        encode_into(&record, &mut buffer),
        Err(EncodeError::BufferTooSmall {
            needed: 56,
            available: 55
        })
    );
    assert_eq!(buffer, [0u8; 55]);
    let mut buffer = [0u8; 60];
    assert_eq!(encode_into(&record, &mut buffer), Ok(56));
}

fn envelope_bytes() -> Vec<u8> {
    let mut bytes = Vec::new();
    encode(
        &head(1000, RecordBody::Envelope(envelope_inline())),
        &mut bytes,
    )
    .unwrap();
    bytes
}

/// Applies `change` to an encoded record and makes its checksum good again,
/// so the decoder's field checks are what refuse it.
fn resealed(mut bytes: Vec<u8>, change: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    change(&mut bytes);
    let checksum = checksum::crc32c(&bytes[4..]);
    bytes[..4].copy_from_slice(&checksum.to_le_bytes());
    bytes
}

#[test]
fn decoder_names_each_fault() {
    let envelope = envelope_bytes();
    let payload = RECORD_HEADER_SIZE_BYTES;
    // Each record here breaks one rule: the summary decoder (which checks
    // recipients as it reads them) names the same fault.
    let decode_error = |bytes: &[u8]| {
        let error = decode(bytes).unwrap_err();
        assert_eq!(decode_summary(bytes).unwrap_err(), error);
        error
    };

    assert_eq!(
        decode_error(&[]),
        DecodeError::Truncated {
            needed: 24,
            available: 0
        }
    );
    assert_eq!(decode_error(&[0; 10]), DecodeError::Zeroed);
    assert_eq!(decode_error(&[0; 100]), DecodeError::Zeroed);
    for cut in 1..envelope.len() {
        assert!(
            matches!(
                decode_error(&envelope[..cut]),
                DecodeError::Truncated { .. }
            ),
            "cut at {cut}"
        );
    }
    for bit in 0..envelope.len() * 8 {
        let mut flipped = envelope.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        assert!(decode(&flipped).is_err(), "bit {bit} flipped and accepted");
    }
    let mut huge = envelope.clone();
    huge[4..8].copy_from_slice(&(RECORD_PAYLOAD_SIZE_BYTES_MAX as u32 + 1).to_le_bytes());
    assert!(matches!(decode_error(&huge), DecodeError::BadLength { .. }));
    let mut bad_crc = envelope.clone();
    bad_crc[0] ^= 0xff;
    assert!(matches!(
        decode_error(&bad_crc),
        DecodeError::BadChecksum { .. }
    ));

    assert_eq!(
        decode_error(&resealed(envelope.clone(), |b| b[16] = 0)),
        DecodeError::BadType(0)
    );
    assert_eq!(
        decode_error(&resealed(envelope.clone(), |b| b[16] = 6)),
        DecodeError::BadType(6)
    );
    // Type 4 was RecipientResult in version 1; it is no type now.
    assert_eq!(
        decode_error(&resealed(envelope.clone(), |b| b[16] = 4)),
        DecodeError::BadType(4)
    );
    assert_eq!(
        decode_error(&resealed(envelope.clone(), |b| b[17] = 1)),
        DecodeError::BadRecordFlags(1)
    );
    assert_eq!(
        decode_error(&resealed(envelope.clone(), |b| b[18] = 3)),
        DecodeError::BadLogKind(3)
    );
    assert_eq!(
        decode_error(&resealed(envelope.clone(), |b| b[19] = 1)),
        DecodeError::ReservedNotZero
    );
    assert_eq!(
        decode_error(&resealed(envelope.clone(), |b| b[payload + 59] = 1)),
        DecodeError::ReservedNotZero
    );
    assert_eq!(
        decode_error(&resealed(envelope.clone(), |b| b[payload + 56] = 0x80)),
        DecodeError::BadEnvelopeFlags(0x80)
    );
    assert_eq!(
        decode_error(&resealed(envelope.clone(), |b| b[payload + 56] = 0x20)),
        DecodeError::Invariant(LimitError::HeldFirstEnvelope)
    );
    assert_eq!(
        decode_error(&resealed(envelope.clone(), |b| b[payload + 58] = 3)),
        DecodeError::BadBodyKind(3)
    );
    assert_eq!(
        decode_error(&resealed(envelope.clone(), |b| b[payload + 48] ^= 1)),
        DecodeError::BodyMismatch
    );
    assert_eq!(
        decode_error(&resealed(envelope.clone(), |b| b
            [payload + 54..payload + 56]
            .copy_from_slice(&1001u16.to_le_bytes()))),
        DecodeError::FieldTooLong {
            field: Field::Recipients,
            size: 1001,
            max: 1000
        }
    );
    assert_eq!(
        decode_error(&resealed(envelope.clone(), |b| b
            [payload + 60..payload + 62]
            .copy_from_slice(&513u16.to_le_bytes()))),
        DecodeError::FieldTooLong {
            field: Field::Sender,
            size: 513,
            max: 512
        }
    );
    assert_eq!(
        decode_error(&resealed(envelope.clone(), |b| b
            [payload + 60..payload + 62]
            .copy_from_slice(&500u16.to_le_bytes()))),
        DecodeError::FieldOverrun {
            field: Some(Field::Sender)
        }
    );
    assert_eq!(
        decode_error(&resealed(envelope.clone(), |b| b
            [payload + 54..payload + 56]
            .copy_from_slice(&1u16.to_le_bytes()))),
        DecodeError::TrailingBytes { count: 25 }
    );
    assert_eq!(
        decode_error(&resealed(envelope.clone(), |b| b[payload..payload + 16].fill(0))),
        DecodeError::Invariant(LimitError::QueueIdNotHex)
    );
    assert_eq!(
        decode_error(&resealed(envelope.clone(), |b| b[payload + 15] = b'g')),
        DecodeError::Invariant(LimitError::QueueIdNotHex)
    );

    let mut padding = Vec::new();
    encode(
        &head(
            5,
            RecordBody::Padding {
                payload_size_bytes: 8,
            },
        ),
        &mut padding,
    )
    .unwrap();
    assert_eq!(
        decode_error(&resealed(padding, |b| b[30] = 1)),
        DecodeError::PaddingNotZero
    );

    let mut completion_bytes = Vec::new();
    encode(
        &head(5, RecordBody::Completion(completion())),
        &mut completion_bytes,
    )
    .unwrap();
    assert_eq!(
        decode_error(&resealed(completion_bytes.clone(), |b| b[payload + 26] = 9)),
        DecodeError::BadCompletionReason(9)
    );
    assert_eq!(
        decode_error(&resealed(completion_bytes.clone(), |b| b[payload + 26] = 5)),
        DecodeError::BadCompletionReason(5)
    );
    let deleted = resealed(completion_bytes.clone(), |b| b[payload + 26] = 4);
    match decode(&deleted).unwrap().0.body {
        RecordBody::Completion(c) => assert_eq!(c.reason, CompletionReason::Deleted),
        other => panic!("not a completion: {other:?}"),
    }
    let longer = resealed(completion_bytes, |b| {
        b.push(0);
        b[4..8].copy_from_slice(&33u32.to_le_bytes());
    });
    assert_eq!(
        decode_error(&longer),
        DecodeError::BadLength {
            payload_size_bytes: 33
        }
    );

    // The first recipient entry follows the fixed part and the variable fields.
    let fields = envelope_inline();
    let recipient = payload
        + ENVELOPE_FIXED_SIZE_BYTES
        + fields.sender.len()
        + fields.mail_params.len()
        + fields.client_address.len()
        + fields.client_helo.len()
        + fields.headers_prepended.len();
    assert_eq!(envelope[recipient], RecipientState::Pending as u8);
    assert_eq!(
        decode_error(&resealed(envelope.clone(), |b| b[recipient] = 0)),
        DecodeError::BadRecipientState(0)
    );
    assert_eq!(
        decode_error(&resealed(envelope.clone(), |b| b[recipient] = 4)),
        DecodeError::BadRecipientState(4)
    );
}

fn header_block() -> [u8; SEGMENT_HEADER_SIZE_BYTES] {
    let mut block = [0u8; SEGMENT_HEADER_SIZE_BYTES];
    segment_header(LogKind::Retry, 5, 77)
        .encode(&mut block)
        .unwrap();
    block
}

fn header_resealed(change: impl FnOnce(&mut [u8])) -> Result<SegmentHeader, SegmentHeaderError> {
    let mut block = header_block();
    change(&mut block);
    let checksum = checksum::crc32c(&block[..60]);
    block[60..64].copy_from_slice(&checksum.to_le_bytes());
    SegmentHeader::decode(&block)
}

#[test]
fn segment_header_faults() {
    let block = header_block();
    assert_eq!(
        SegmentHeader::decode(&block),
        Ok(segment_header(LogKind::Retry, 5, 77))
    );
    assert_eq!(
        SegmentHeader::decode(&block[..4095]),
        Err(SegmentHeaderError::Truncated {
            needed: 4096,
            available: 4095
        })
    );
    assert_eq!(
        SegmentHeader::decode(&[0u8; 4096]),
        Err(SegmentHeaderError::BadMagic)
    );
    let mut flipped = block;
    flipped[20] ^= 4;
    assert!(matches!(
        SegmentHeader::decode(&flipped),
        Err(SegmentHeaderError::BadChecksum { .. })
    ));
    assert_eq!(
        header_resealed(|b| b[8] = 3),
        Err(SegmentHeaderError::UnsupportedVersion(3))
    );
    assert_eq!(
        header_resealed(|b| b[8] = 0),
        Err(SegmentHeaderError::UnsupportedVersion(0))
    );
    assert_eq!(
        header_resealed(|b| b[8] = 1).map(|h| h.format_version),
        Ok(1)
    );
    assert_eq!(
        header_resealed(|b| b[10] = 0),
        Err(SegmentHeaderError::BadLogKind(0))
    );
    assert_eq!(
        header_resealed(|b| b[49] = 0x20),
        Err(SegmentHeaderError::BadBlockSize(8192))
    );
    assert_eq!(
        header_resealed(|b| b[40] = 1),
        Err(SegmentHeaderError::BadSegmentSize(64 * 1024 * 1024 + 1))
    );
    assert_eq!(
        header_resealed(|b| b[55] = 1),
        Err(SegmentHeaderError::ReservedNotZero)
    );
    assert_eq!(
        header_resealed(|b| b[4000] = 1),
        Err(SegmentHeaderError::ReservedNotZero)
    );
    let mut small = segment_header(LogKind::Head, 1, 1);
    small.segment_size_bytes = SEGMENT_SIZE_BYTES_MIN - BLOCK_SIZE_BYTES as u64;
    assert_eq!(
        small.encode(&mut [0u8; 4096]),
        Err(SegmentHeaderError::BadSegmentSize(small.segment_size_bytes))
    );
}

#[test]
fn batch_padding_rules() {
    assert_eq!(batch::padded_size_bytes(0), 0);
    assert_eq!(batch::padded_size_bytes(4096), 4096);
    assert_eq!(batch::padded_size_bytes(4096 - 24), 4096);
    assert_eq!(batch::padded_size_bytes(4096 - 23), 8192);
    assert_eq!(batch::padded_size_bytes(4096 - 1), 8192);
    assert_eq!(batch::padded_size_bytes(4097), 8192);

    let empty = BatchBuilder::new(vec![0u8; 4096], LogKind::Head, 0, 9).finish();
    assert_eq!(
        (
            empty.size_bytes,
            empty.record_count,
            empty.record_sequence_next
        ),
        (0, 0, 9)
    );

    // A record that leaves a gap too short for a padding header: the padding
    // runs through the next block. An inline body sized to end 23 bytes
    // before the block boundary.
    let mut envelope = envelope_inline();
    envelope.body = BodyRef::Inline(&[]);
    let empty_size = encoded_size_bytes(&RecordBody::Envelope(envelope.clone()));
    envelope.body = BodyRef::Inline(&BIG[..4096 - 23 - empty_size]);
    let mut builder = BatchBuilder::new(vec![0u8; 3 * 4096], LogKind::Head, SHARD_INDEX, 1);
    assert_eq!(builder.push(&RecordBody::Envelope(envelope)), Ok(1));
    assert_eq!(builder.size_bytes(), 4096 - 23);
    assert_eq!(
        builder.push(&RecordBody::Padding {
            payload_size_bytes: 0
        }),
        Err(PushError::PaddingPushed)
    );
    let batch = builder.finish();
    assert_eq!(batch.size_bytes, 8192);
    let expect = LogExpect {
        log_kind: LogKind::Head,
        shard_index: SHARD_INDEX,
        record_sequence_next: 1,
    };
    let mut reader = LogReader::new(&batch.buffer[..batch.size_bytes], 0, expect);
    let last = reader.by_ref().last().unwrap();
    assert_eq!(
        last.record.body,
        RecordBody::Padding {
            payload_size_bytes: 23 + 4096 - 24
        }
    );
    assert_eq!(
        reader.stop(),
        Some(LogStop {
            offset: 8192,
            reason: StopReason::EndOfBytes
        })
    );

    // Full: a record whose padded end passes the buffer is refused whole.
    let mut builder = BatchBuilder::new(vec![0u8; 4096], LogKind::Head, 0, 1);
    let mut envelope = envelope_inline();
    envelope.body = BodyRef::Inline(&BIG[..5000]);
    let body = RecordBody::Envelope(envelope);
    assert_eq!(
        builder.push(&body),
        Err(PushError::Full {
            record_size_bytes: encoded_size_bytes(&body)
        })
    );
    assert!(builder.is_empty());
    let mut bad = envelope_inline();
    bad.recipients.clear();
    assert_eq!(
        builder.push(&RecordBody::Envelope(bad)),
        Err(PushError::Encode(EncodeError::Limit(
            LimitError::RecipientsEmpty
        )))
    );
}

#[test]
fn reader_stops_at_foreign_and_misplaced_records() {
    let mut bytes = Vec::new();
    encode(&head(1, RecordBody::Completion(completion())), &mut bytes).unwrap();
    let expect = LogExpect {
        log_kind: LogKind::Retry,
        shard_index: SHARD_INDEX,
        record_sequence_next: 1,
    };
    let mut reader = LogReader::new(&bytes, 0, expect);
    assert!(reader.next().is_none());
    let stop = reader.stop().unwrap();
    assert_eq!(
        stop,
        LogStop {
            offset: 0,
            reason: StopReason::WrongLog {
                log_kind: LogKind::Head,
                shard_index: SHARD_INDEX
            }
        }
    );
    assert!(!stop.reason.is_clean());

    let mut bytes = Vec::new();
    encode(
        &head(
            1,
            RecordBody::Padding {
                payload_size_bytes: 100,
            },
        ),
        &mut bytes,
    )
    .unwrap();
    let expect = LogExpect {
        log_kind: LogKind::Head,
        shard_index: SHARD_INDEX,
        record_sequence_next: 1,
    };
    let mut reader = LogReader::new(&bytes, 0, expect);
    assert!(reader.next().is_none());
    assert_eq!(
        reader.stop(),
        Some(LogStop {
            offset: 0,
            reason: StopReason::MisplacedPadding
        })
    );

    // A short zero tail is unwritten space; a short non-zero tail is torn.
    let mut bytes = Vec::new();
    encode(&head(1, RecordBody::Completion(completion())), &mut bytes).unwrap();
    bytes.extend([0u8; 10]);
    let mut reader = LogReader::new(&bytes, 0, expect);
    assert_eq!(reader.by_ref().count(), 1);
    assert_eq!(
        reader.stop(),
        Some(LogStop {
            offset: 56,
            reason: StopReason::Zeroed
        })
    );
    bytes.push(1);
    let mut reader = LogReader::new(&bytes, 0, expect);
    assert_eq!(reader.by_ref().count(), 1);
    assert!(matches!(
        reader.stop().unwrap().reason,
        StopReason::Corrupt(DecodeError::Truncated { .. })
    ));
}

#[test]
fn open_segment_reads_no_further_than_the_stated_size() {
    let mut header = segment_header(LogKind::Head, 1, 1);
    header.segment_size_bytes = SEGMENT_SIZE_BYTES_MIN;
    let mut segment = vec![0u8; SEGMENT_SIZE_BYTES_MIN as usize + 4096];
    header
        .encode((&mut segment[..4096]).try_into().unwrap())
        .unwrap();
    let mut builder = BatchBuilder::new(
        vec![0u8; SEGMENT_SIZE_BYTES_MIN as usize - 4096],
        LogKind::Head,
        SHARD_INDEX,
        1,
    );
    let mut count = 0;
    while builder.push(&RecordBody::Completion(completion())).is_ok() {
        count += 1;
    }
    let batch = builder.finish();
    assert_eq!(batch.size_bytes, SEGMENT_SIZE_BYTES_MIN as usize - 4096);
    segment[4096..SEGMENT_SIZE_BYTES_MIN as usize].copy_from_slice(&batch.buffer);
    // A record beyond the segment's end must not be read.
    encode_into(
        &head(
            batch.record_sequence_next,
            RecordBody::Completion(completion()),
        ),
        &mut segment[SEGMENT_SIZE_BYTES_MIN as usize..],
    )
    .unwrap();
    let (_, mut reader) = LogReader::open_segment(&segment).unwrap();
    let read = reader
        .by_ref()
        .filter(|e| matches!(e.record.body, RecordBody::Completion(_)))
        .count();
    assert_eq!(read, count);
    assert_eq!(
        reader.stop(),
        Some(LogStop {
            offset: SEGMENT_SIZE_BYTES_MIN as usize,
            reason: StopReason::EndOfBytes
        })
    );
}
