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
        decode_error(&resealed(envelope.clone(), |b| b[payload + 58] = 4)),
        DecodeError::BadBodyKind(4)
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
        header_resealed(|b| b[8] = 4),
        Err(SegmentHeaderError::UnsupportedVersion(4))
    );
    assert_eq!(
        header_resealed(|b| b[8] = 2).map(|h| h.format_version),
        Ok(2)
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
        header_resealed(|b| b[10] = 4),
        Err(SegmentHeaderError::BadLogKind(4))
    );
    // A body segment has no first record, and exists from version 3 on.
    assert_eq!(
        header_resealed(|b| b[10] = 3),
        Err(SegmentHeaderError::BodySegmentRecordSequence(77))
    );
    assert_eq!(
        header_resealed(|b| {
            b[10] = 3;
            b[24..32].fill(0);
        })
        .map(|h| (h.log_kind, h.record_sequence_first)),
        Ok((LogKind::Body, 0))
    );
    assert_eq!(
        header_resealed(|b| {
            b[8] = 2;
            b[10] = 3;
            b[24..32].fill(0);
        }),
        Err(SegmentHeaderError::BadLogKind(3))
    );
    let mut body = segment_header(LogKind::Body, 1, 0);
    body.format_version = 2;
    assert_eq!(
        body.encode(&mut [0u8; 4096]),
        Err(SegmentHeaderError::BadLogKind(3))
    );
    body.format_version = FORMAT_VERSION;
    body.record_sequence_first = 1;
    assert_eq!(
        body.encode(&mut [0u8; 4096]),
        Err(SegmentHeaderError::BodySegmentRecordSequence(1))
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

fn log_body(extents: &[BodyExtent]) -> (Vec<u8>, u64) {
    let mut table = Vec::new();
    encode_body_extents(extents, &mut table);
    let size_bytes = extents.iter().map(|e| e.size_bytes as u64).sum();
    (table, size_bytes)
}

fn extent(segment_sequence: u64, offset_bytes: u32, size_bytes: u32) -> BodyExtent {
    BodyExtent {
        segment_sequence,
        offset_bytes,
        size_bytes,
    }
}

/// Encodes an Envelope whose body is `table` in the body log.
fn encode_body_log(table: &[u8], size_bytes: u64) -> Result<Vec<u8>, EncodeError> {
    let mut envelope = envelope_body_log();
    envelope.body = BodyRef::Log {
        extents: table,
        size_bytes,
        checksum: 0x0123_4567,
    };
    let mut bytes = Vec::new();
    encode(&head(1, RecordBody::Envelope(envelope)), &mut bytes)?;
    Ok(bytes)
}

#[test]
fn body_log_tables_round_trip() {
    let cases: Vec<Vec<BodyExtent>> = vec![
        vec![extent(1, 4096, 1)],
        BODY_LOG_EXTENTS.to_vec(),
        // Touching extents of one segment, then a jump of several segments.
        vec![
            extent(3, 4096, 100),
            extent(3, 4196, 100),
            extent(9, 8192, 7),
        ],
        // The last byte of the largest segment.
        vec![extent(u64::MAX, u32::MAX, 1)],
        vec![extent(2, 4096, u32::MAX - 4095)],
        // The most extents a body has.
        (0..BODY_EXTENTS_MAX as u64)
            .map(|i| extent(1 + i / 1000, 4096 + (i % 1000) as u32 * 65536, 65536))
            .collect(),
    ];
    for extents in cases {
        let (table, size_bytes) = log_body(&extents);
        assert_eq!(table.len(), extents.len() * BODY_EXTENT_SIZE_BYTES);
        assert_eq!(body_extents(&table).collect::<Vec<_>>(), extents);
        let bytes = encode_body_log(&table, size_bytes).unwrap();
        let (record, size) = decode(&bytes).unwrap();
        assert_eq!(size, bytes.len());
        assert_eq!(decode_summary(&bytes).unwrap().1, size);
        let RecordBody::Envelope(envelope) = record.body else {
            panic!("not an envelope");
        };
        assert_eq!(
            envelope.body,
            BodyRef::Log {
                extents: &table,
                size_bytes,
                checksum: 0x0123_4567,
            }
        );
        // The table stands in the inline body's place.
        let payload = RECORD_HEADER_SIZE_BYTES;
        assert_eq!(bytes[payload + 58], 3);
        assert_eq!(&bytes[payload + 32..payload + 40], &[0; 8]);
        assert_eq!(
            &bytes[payload + 72..payload + 76],
            &(table.len() as u32).to_le_bytes()
        );
        assert_eq!(&bytes[bytes.len() - table.len()..], &table[..]);
    }
}

/// Each broken rule of an extent table, refused by the encoder and, in the
/// bytes of a valid record changed to break it, by the decoder.
#[test]
fn body_log_tables_refused_both_ways() {
    let invariant = |error| DecodeError::Invariant(error);
    let cases: Vec<(Vec<BodyExtent>, LimitError)> = vec![
        (vec![], LimitError::BodyExtentsEmpty),
        (
            vec![extent(0, 4096, 10)],
            LimitError::BodyExtentSegmentZero { index: 0 },
        ),
        (
            vec![extent(1, 4096, 10), extent(1, 4106, 0)],
            LimitError::BodyExtentSizeZero { index: 1 },
        ),
        (
            vec![extent(1, 4095, 10)],
            LimitError::BodyExtentInHeader {
                index: 0,
                offset_bytes: 4095,
            },
        ),
        (
            vec![extent(1, 0, 10)],
            LimitError::BodyExtentInHeader {
                index: 0,
                offset_bytes: 0,
            },
        ),
        (
            vec![extent(1, u32::MAX, 2)],
            LimitError::BodyExtentPastSegmentEnd { index: 0 },
        ),
        (
            vec![
                extent(2, 4096, 10),
                extent(3, 4096, 10),
                extent(2, 8192, 10),
            ],
            LimitError::BodyExtentSegmentBackwards { index: 2 },
        ),
        (
            vec![extent(2, 4096, 10), extent(2, 4105, 10)],
            LimitError::BodyExtentOverlap { index: 1 },
        ),
        // An extent before the previous one in the same segment.
        (
            vec![extent(2, 8192, 10), extent(2, 4096, 10)],
            LimitError::BodyExtentOverlap { index: 1 },
        ),
    ];
    for (extents, error) in cases {
        let (table, size_bytes) = log_body(&extents);
        assert_eq!(
            encode_body_log(&table, size_bytes),
            Err(EncodeError::Limit(error)),
            "{extents:?}"
        );
        // The same table written into a record by hand is refused too.
        let (good, good_size) = log_body(&[extent(1, 4096, 1)]);
        let bytes = encode_body_log(&good, good_size).unwrap();
        let bytes = with_table(bytes, &table, size_bytes);
        assert_eq!(decode(&bytes).unwrap_err(), invariant(error), "{extents:?}");
        assert!(decode_summary(&bytes).is_err());
    }

    // Sizes that do not add up to the body's.
    let (table, size_bytes) = log_body(&BODY_LOG_EXTENTS);
    for wrong in [size_bytes - 1, size_bytes + 1, 0, u64::MAX] {
        let error = LimitError::BodyExtentsSizeMismatch {
            extents_size_bytes: size_bytes,
            body_size_bytes: wrong,
        };
        assert_eq!(
            encode_body_log(&table, wrong),
            Err(EncodeError::Limit(error))
        );
        let bytes = with_table(encode_body_log(&table, size_bytes).unwrap(), &table, wrong);
        assert_eq!(decode(&bytes).unwrap_err(), invariant(error));
    }

    // A table that is not a whole number of extents.
    for cut in [1, 8, 15] {
        let short = &table[..table.len() - cut];
        let error = LimitError::BodyExtentsTableSize {
            size_bytes: short.len(),
        };
        assert_eq!(
            encode_body_log(short, size_bytes),
            Err(EncodeError::Limit(error))
        );
        let bytes = with_table(
            encode_body_log(&table, size_bytes).unwrap(),
            short,
            size_bytes,
        );
        assert_eq!(decode(&bytes).unwrap_err(), invariant(error));
        assert_eq!(decode_summary(&bytes).unwrap_err(), invariant(error));
    }

    // More extents than a body has.
    let many: Vec<BodyExtent> = (0..BODY_EXTENTS_MAX as u64 + 1)
        .map(|i| extent(1 + i, 4096, 1))
        .collect();
    let (table, size_bytes) = log_body(&many);
    let too_many = LimitError::FieldTooLong {
        field: Field::BodyExtents,
        size: BODY_EXTENTS_MAX + 1,
        max: BODY_EXTENTS_MAX,
    };
    assert_eq!(
        encode_body_log(&table, size_bytes),
        Err(EncodeError::Limit(too_many))
    );
    let (one, one_size) = log_body(&many[..1]);
    let bytes = with_table(encode_body_log(&one, one_size).unwrap(), &table, size_bytes);
    assert_eq!(
        decode(&bytes).unwrap_err(),
        DecodeError::FieldTooLong {
            field: Field::BodyExtents,
            size: BODY_EXTENTS_MAX + 1,
            max: BODY_EXTENTS_MAX,
        }
    );

    // A body file id beside a table.
    let (table, size_bytes) = log_body(&BODY_LOG_EXTENTS);
    let bytes = encode_body_log(&table, size_bytes).unwrap();
    let payload = RECORD_HEADER_SIZE_BYTES;
    assert_eq!(
        decode(&resealed(bytes.clone(), |b| b[payload + 32] = 1)).unwrap_err(),
        DecodeError::BodyMismatch
    );
    // A table cut short of its stated size overruns the payload.
    let overrun = resealed(bytes.clone(), |b| {
        let inline = (table.len() as u32 + 16).to_le_bytes();
        b[payload + 72..payload + 76].copy_from_slice(&inline);
    });
    assert_eq!(
        decode(&overrun).unwrap_err(),
        DecodeError::FieldOverrun {
            field: Some(Field::BodyExtents)
        }
    );
}

/// Replaces the extent table at the end of an encoded body-log envelope
/// with `table` and its body size with `size_bytes`, fixing every length
/// and the checksum.
fn with_table(mut bytes: Vec<u8>, table: &[u8], size_bytes: u64) -> Vec<u8> {
    let payload = RECORD_HEADER_SIZE_BYTES;
    let old = u32::from_le_bytes(bytes[payload + 72..payload + 76].try_into().unwrap()) as usize;
    bytes.truncate(bytes.len() - old);
    bytes.extend_from_slice(table);
    let payload_size = (bytes.len() - payload) as u32;
    resealed(bytes, |b| {
        b[4..8].copy_from_slice(&payload_size.to_le_bytes());
        b[payload + 40..payload + 48].copy_from_slice(&size_bytes.to_le_bytes());
        b[payload + 72..payload + 76].copy_from_slice(&(table.len() as u32).to_le_bytes());
    })
}

/// A replacement's body is never in the body log: refused both ways.
#[test]
fn body_log_in_a_replacement_envelope_is_refused() {
    let mut envelope = envelope_body_log();
    envelope.attempt_count = 1;
    let replacement = Record {
        frame: frame(LogKind::Retry, 1),
        body: RecordBody::ReplacementEnvelope(envelope),
    };
    assert_eq!(
        encode(&replacement, &mut Vec::new()),
        Err(EncodeError::Limit(LimitError::BodyLogReplacement))
    );
    // The valid Envelope made a ReplacementEnvelope by hand.
    let mut bytes = Vec::new();
    encode(
        &head(1, RecordBody::Envelope(envelope_body_log())),
        &mut bytes,
    )
    .unwrap();
    let payload = RECORD_HEADER_SIZE_BYTES;
    let bytes = resealed(bytes, |b| {
        b[16] = RecordType::ReplacementEnvelope as u8;
        b[18] = LogKind::Retry as u8;
        b[payload + 52..payload + 54].copy_from_slice(&1u16.to_le_bytes());
    });
    let error = DecodeError::Invariant(LimitError::BodyLogReplacement);
    assert_eq!(decode(&bytes).unwrap_err(), error);
    assert_eq!(decode_summary(&bytes).unwrap_err(), error);
    // The same bytes with an inline body decode: the body kind is the fault.
    let mut inline = envelope_inline();
    inline.attempt_count = 1;
    let mut bytes = Vec::new();
    let record = Record {
        frame: frame(LogKind::Retry, 1),
        body: RecordBody::ReplacementEnvelope(inline),
    };
    encode(&record, &mut bytes).unwrap();
    assert_eq!(decode(&bytes).unwrap().0, record);
}

/// Body segments hold no records: none is framed for them, none is read
/// from them.
#[test]
fn no_records_in_the_body_log() {
    let record = Record {
        frame: frame(LogKind::Body, 1),
        body: RecordBody::Completion(completion()),
    };
    assert_eq!(
        encode(&record, &mut Vec::new()),
        Err(EncodeError::BodyLogRecord)
    );
    assert_eq!(
        encode_into(&record, &mut [0u8; 100]),
        Err(EncodeError::BodyLogRecord)
    );
    let mut builder = BatchBuilder::new(vec![0u8; 4096], LogKind::Body, SHARD_INDEX, 1);
    assert_eq!(
        builder.push(&RecordBody::Completion(completion())),
        Err(PushError::Encode(EncodeError::BodyLogRecord))
    );
    assert_eq!(builder.finish().size_bytes, 0);

    // A record header saying log kind 3 is refused.
    let mut bytes = Vec::new();
    encode(&head(1, RecordBody::Completion(completion())), &mut bytes).unwrap();
    let bytes = resealed(bytes, |b| b[18] = 3);
    assert_eq!(decode(&bytes).unwrap_err(), DecodeError::BadLogKind(3));

    // A reader expecting the body log reads nothing, whatever the bytes.
    let mut bytes = Vec::new();
    encode(&head(1, RecordBody::Completion(completion())), &mut bytes).unwrap();
    let expect = LogExpect {
        log_kind: LogKind::Body,
        shard_index: SHARD_INDEX,
        record_sequence_next: 1,
    };
    let mut reader = LogReader::new(&bytes, 0, expect);
    assert!(reader.next().is_none());
    assert_eq!(
        reader.stop(),
        Some(LogStop {
            offset: 0,
            reason: StopReason::BodySegment
        })
    );
}
