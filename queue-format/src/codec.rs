//! One record to bytes ([`encode`], [`encode_into`]) and back ([`decode`]).
//!
//! The encoder checks the value against every limit first and returns a
//! typed error instead of writing a record a reader would refuse; in debug
//! builds it also decodes what it wrote and asserts it got the value back.
//! The decoder never panics: every length is checked before it is used, a
//! count is bounded before anything is allocated for it, and every decoded
//! value passes the same checks as an encoded one.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::checksum::crc32c;
use crate::error::{DecodeError, EncodeError, Field, LimitError};
use crate::layout::*;
use crate::record::*;
use crate::wire::*;

/// Body kind byte of an envelope.
const BODY_KIND_INLINE: u8 = 1;
const BODY_KIND_FILE: u8 = 2;
const BODY_KIND_LOG: u8 = 3;

/// Size in bytes of the whole encoded record (header and payload). Only
/// meaningful for a body that passes [`RecordBody::check`].
pub fn encoded_size_bytes(body: &RecordBody<'_>) -> usize {
    RECORD_HEADER_SIZE_BYTES + payload_size_bytes(body)
}

fn payload_size_bytes(body: &RecordBody<'_>) -> usize {
    match body {
        RecordBody::Padding { payload_size_bytes } => *payload_size_bytes as usize,
        RecordBody::Envelope(e) | RecordBody::ReplacementEnvelope(e) => envelope_size_bytes(e),
        RecordBody::Completion(_) => COMPLETION_SIZE_BYTES,
    }
}

fn envelope_size_bytes(e: &Envelope<'_>) -> usize {
    let recipients: usize = e
        .recipients
        .iter()
        .map(|r| RECIPIENT_FIXED_SIZE_BYTES + r.address.len() + r.params.len() + r.reply.len())
        .sum();
    let inline = match e.body {
        BodyRef::Inline(bytes) => bytes.len(),
        BodyRef::File { .. } => 0,
        BodyRef::Log { extents, .. } => extents.len(),
    };
    ENVELOPE_FIXED_SIZE_BYTES
        + e.sender.len()
        + e.mail_params.len()
        + e.client_address.len()
        + e.client_helo.len()
        + e.headers_prepended.len()
        + recipients
        + inline
}

/// Appends the encoded record to `out`; returns its size in bytes.
pub fn encode(record: &Record<'_>, out: &mut Vec<u8>) -> Result<usize, EncodeError> {
    if record.frame.log_kind == LogKind::Body {
        return Err(EncodeError::BodyLogRecord);
    }
    record.body.check()?;
    let start = out.len();
    let size = encoded_size_bytes(&record.body);
    out.resize(start + size, 0);
    let written = encode_into(record, &mut out[start..])?;
    assert_eq!(written, size);
    Ok(written)
}

/// Writes the encoded record at the start of `out`; returns its size in bytes.
pub fn encode_into(record: &Record<'_>, out: &mut [u8]) -> Result<usize, EncodeError> {
    if record.frame.log_kind == LogKind::Body {
        return Err(EncodeError::BodyLogRecord);
    }
    record.body.check()?;
    let size = encoded_size_bytes(&record.body);
    // Checked values are bounded (layout.rs proves the envelope maximum).
    assert!(size <= RECORD_SIZE_BYTES_MAX);
    if out.len() < size {
        return Err(EncodeError::BufferTooSmall {
            needed: size,
            available: out.len(),
        });
    }
    let out = &mut out[..size];
    let mut put = Put {
        buf: out,
        position: 0,
    };
    put.fixed(&RecordHeaderRaw {
        checksum: U32::new(0),
        payload_size_bytes: U32::new((size - RECORD_HEADER_SIZE_BYTES) as u32),
        record_sequence: U64::new(record.frame.record_sequence),
        record_type: record.body.record_type() as u8,
        record_flags: 0,
        log_kind: record.frame.log_kind as u8,
        reserved_19: 0,
        shard_index: U16::new(record.frame.shard_index),
        reserved_22: U16::new(0),
    });
    match &record.body {
        RecordBody::Padding { payload_size_bytes } => put.zeros(*payload_size_bytes as usize),
        RecordBody::Envelope(e) | RecordBody::ReplacementEnvelope(e) => put_envelope(&mut put, e),
        RecordBody::Completion(c) => put.fixed(&CompletionRaw {
            queue_id: c.queue_id.0,
            completion_unix_ms: U64::new(c.completion_unix_ms),
            attempt_count: U16::new(c.attempt_count),
            completion_reason: c.reason as u8,
            reserved_27: [0; 5],
        }),
    }
    assert_eq!(put.position, size);
    let checksum = crc32c(&out[RECORD_CHECKSUM_COVERAGE_OFFSET..]);
    out[..4].copy_from_slice(&checksum.to_le_bytes());

    #[cfg(debug_assertions)]
    {
        let (decoded, consumed) = decode(out).expect("an encoded record decodes");
        assert_eq!(consumed, size);
        assert!(decoded == *record, "an encoded record decodes to itself");
    }
    Ok(size)
}

fn put_envelope(put: &mut Put<'_>, e: &Envelope<'_>) {
    let (body_kind, body_file_id, body_size_bytes, body_checksum, inline) = match e.body {
        BodyRef::Inline(bytes) => (
            BODY_KIND_INLINE,
            0,
            bytes.len() as u64,
            crc32c(bytes),
            bytes,
        ),
        BodyRef::File {
            file_id,
            size_bytes,
            checksum,
        } => (BODY_KIND_FILE, file_id, size_bytes, checksum, &[][..]),
        BodyRef::Log {
            extents,
            size_bytes,
            checksum,
        } => (BODY_KIND_LOG, 0, size_bytes, checksum, extents),
    };
    put.fixed(&EnvelopeFixedRaw {
        queue_id: e.queue_id.0,
        arrival_unix_ms: U64::new(e.arrival_unix_ms),
        retry_next_unix_ms: U64::new(e.retry_next_unix_ms),
        body_file_id: U64::new(body_file_id),
        body_size_bytes: U64::new(body_size_bytes),
        body_checksum: U32::new(body_checksum),
        attempt_count: U16::new(e.attempt_count),
        recipient_count: U16::new(e.recipients.len() as u16),
        envelope_flags: U16::new(e.flags.bits()),
        body_kind,
        reserved_59: 0,
        sender_size_bytes: U16::new(e.sender.len() as u16),
        mail_params_size_bytes: U16::new(e.mail_params.len() as u16),
        client_address_size_bytes: U16::new(e.client_address.len() as u16),
        client_helo_size_bytes: U16::new(e.client_helo.len() as u16),
        headers_prepended_size_bytes: U16::new(e.headers_prepended.len() as u16),
        reserved_70: U16::new(0),
        body_inline_size_bytes: U32::new(inline.len() as u32),
        reserved_76: U32::new(0),
    });
    put.bytes(e.sender);
    put.bytes(e.mail_params);
    put.bytes(e.client_address);
    put.bytes(e.client_helo);
    put.bytes(e.headers_prepended);
    for r in &e.recipients {
        put.fixed(&RecipientFixedRaw {
            recipient_state: r.state as u8,
            reserved_1: 0,
            address_size_bytes: U16::new(r.address.len() as u16),
            params_size_bytes: U16::new(r.params.len() as u16),
            reply_size_bytes: U16::new(r.reply.len() as u16),
        });
        put.bytes(r.address);
        put.bytes(r.params);
        put.bytes(r.reply);
    }
    put.bytes(inline);
}

/// A write cursor over a buffer whose size was computed beforehand: running
/// past its end is a bug in `payload_size_bytes`, so slicing may panic.
struct Put<'b> {
    buf: &'b mut [u8],
    position: usize,
}

impl Put<'_> {
    fn bytes(&mut self, bytes: &[u8]) {
        self.buf[self.position..self.position + bytes.len()].copy_from_slice(bytes);
        self.position += bytes.len();
    }
    fn zeros(&mut self, count: usize) {
        self.buf[self.position..self.position + count].fill(0);
        self.position += count;
    }
    fn fixed<T: IntoBytes + Immutable>(&mut self, value: &T) {
        self.bytes(value.as_bytes());
    }
}

/// Decodes the record at the start of `bytes`. Returns it and the number of
/// bytes it occupies; bytes after it are not looked at. Never panics.
pub fn decode(bytes: &[u8]) -> Result<(Record<'_>, usize), DecodeError> {
    decode_at_depth(bytes, Depth::Full)
}

/// [`decode`] without collecting an envelope's recipients: the record is
/// checked exactly as [`decode`] checks it (checksum, every length, every
/// recipient's fields and limits, the pending recipient of a replacement),
/// and is trusted or refused exactly when [`decode`] would trust or refuse
/// it, but an Envelope or ReplacementEnvelope comes back with an empty
/// `recipients` (nothing allocated for them). For a scan that needs only
/// an envelope's fixed fields, as recovery's index does. Where a record
/// breaks several rules, the error named may be another of them than the
/// one [`decode`] names.
pub fn decode_summary(bytes: &[u8]) -> Result<(Record<'_>, usize), DecodeError> {
    decode_at_depth(bytes, Depth::Summary)
}

/// How much of an envelope's variable part a decode builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Depth {
    Full,
    Summary,
}

pub(crate) fn decode_at_depth(bytes: &[u8], depth: Depth) -> Result<(Record<'_>, usize), DecodeError> {
    let Ok((header, _)) = RecordHeaderRaw::read_from_prefix(bytes) else {
        if bytes.iter().all(|&b| b == 0) && !bytes.is_empty() {
            return Err(DecodeError::Zeroed);
        }
        return Err(DecodeError::Truncated {
            needed: RECORD_HEADER_SIZE_BYTES,
            available: bytes.len(),
        });
    };
    if header.as_bytes().iter().all(|&b| b == 0) {
        return Err(DecodeError::Zeroed);
    }
    let payload_size_bytes = header.payload_size_bytes.get();
    if payload_size_bytes as usize > RECORD_PAYLOAD_SIZE_BYTES_MAX {
        return Err(DecodeError::BadLength { payload_size_bytes });
    }
    let size = RECORD_HEADER_SIZE_BYTES + payload_size_bytes as usize;
    if bytes.len() < size {
        return Err(DecodeError::Truncated {
            needed: size,
            available: bytes.len(),
        });
    }
    let record_bytes = &bytes[..size];
    let stored = header.checksum.get();
    let computed = crc32c(&record_bytes[RECORD_CHECKSUM_COVERAGE_OFFSET..]);
    if stored != computed {
        return Err(DecodeError::BadChecksum { stored, computed });
    }
    let frame = decode_frame(&header)?;
    let record_type =
        RecordType::from_u8(header.record_type).ok_or(DecodeError::BadType(header.record_type))?;
    let payload = &record_bytes[RECORD_HEADER_SIZE_BYTES..];
    let body = match record_type {
        RecordType::Padding => decode_padding(payload)?,
        RecordType::Envelope => RecordBody::Envelope(decode_envelope(payload, depth, false)?),
        RecordType::ReplacementEnvelope => {
            RecordBody::ReplacementEnvelope(decode_envelope(payload, depth, true)?)
        }
        RecordType::Completion => RecordBody::Completion(decode_completion(payload)?),
    };
    match (depth, &body) {
        (Depth::Summary, RecordBody::Envelope(e)) => e.check_summary(false)?,
        (Depth::Summary, RecordBody::ReplacementEnvelope(e)) => e.check_summary(true)?,
        _ => {
            body.check()?;
            assert_eq!(encoded_size_bytes(&body), size);
        }
    }
    Ok((Record { frame, body }, size))
}

fn decode_frame(header: &RecordHeaderRaw) -> Result<RecordFrame, DecodeError> {
    if header.record_flags != 0 {
        return Err(DecodeError::BadRecordFlags(header.record_flags));
    }
    if header.reserved_19 != 0 || header.reserved_22.get() != 0 {
        return Err(DecodeError::ReservedNotZero);
    }
    // Body segments hold no records: log kind 3 frames none.
    let log_kind = LogKind::from_u8(header.log_kind)
        .filter(|&kind| kind != LogKind::Body)
        .ok_or(DecodeError::BadLogKind(header.log_kind))?;
    Ok(RecordFrame {
        record_sequence: header.record_sequence.get(),
        log_kind,
        shard_index: header.shard_index.get(),
    })
}

fn decode_padding(payload: &[u8]) -> Result<RecordBody<'_>, DecodeError> {
    if payload.len() > PADDING_PAYLOAD_SIZE_BYTES_MAX {
        return Err(DecodeError::BadLength {
            payload_size_bytes: payload.len() as u32,
        });
    }
    if payload.iter().any(|&b| b != 0) {
        return Err(DecodeError::PaddingNotZero);
    }
    Ok(RecordBody::Padding {
        payload_size_bytes: payload.len() as u32,
    })
}

fn decode_completion(payload: &[u8]) -> Result<Completion, DecodeError> {
    let bad_length = DecodeError::BadLength {
        payload_size_bytes: payload.len() as u32,
    };
    if payload.len() != COMPLETION_SIZE_BYTES {
        return Err(bad_length);
    }
    let raw = CompletionRaw::read_from_bytes(payload).map_err(|_| bad_length)?;
    if raw.reserved_27 != [0; 5] {
        return Err(DecodeError::ReservedNotZero);
    }
    let reason = CompletionReason::from_u8(raw.completion_reason)
        .ok_or(DecodeError::BadCompletionReason(raw.completion_reason))?;
    Ok(Completion {
        queue_id: QueueId(raw.queue_id),
        completion_unix_ms: raw.completion_unix_ms.get(),
        attempt_count: raw.attempt_count.get(),
        reason,
    })
}

/// Decodes an envelope payload. `Depth::Summary` checks each recipient as
/// it is read (the checks `Envelope::check` makes of the list) instead of
/// collecting them: `replacement` says whether one must be pending.
fn decode_envelope(
    payload: &[u8],
    depth: Depth,
    replacement: bool,
) -> Result<Envelope<'_>, DecodeError> {
    let mut take = Take { bytes: payload };
    let raw: EnvelopeFixedRaw = take.fixed()?;
    if raw.reserved_59 != 0 || raw.reserved_70.get() != 0 || raw.reserved_76.get() != 0 {
        return Err(DecodeError::ReservedNotZero);
    }
    let flags_bits = raw.envelope_flags.get();
    let flags =
        EnvelopeFlags::from_bits(flags_bits).ok_or(DecodeError::BadEnvelopeFlags(flags_bits))?;
    let recipient_count = raw.recipient_count.get() as usize;
    if recipient_count > RECIPIENT_COUNT_MAX {
        return Err(DecodeError::FieldTooLong {
            field: Field::Recipients,
            size: recipient_count,
            max: RECIPIENT_COUNT_MAX,
        });
    }
    let sender = take.field(
        raw.sender_size_bytes.get() as usize,
        Field::Sender,
        ADDRESS_SIZE_BYTES_MAX,
    )?;
    let mail_params = take.field(
        raw.mail_params_size_bytes.get() as usize,
        Field::MailParams,
        ESMTP_PARAMS_SIZE_BYTES_MAX,
    )?;
    let client_address = take.field(
        raw.client_address_size_bytes.get() as usize,
        Field::ClientAddress,
        CLIENT_ADDRESS_SIZE_BYTES_MAX,
    )?;
    let client_helo = take.field(
        raw.client_helo_size_bytes.get() as usize,
        Field::ClientHelo,
        CLIENT_HELO_SIZE_BYTES_MAX,
    )?;
    let headers_prepended = take.field(
        raw.headers_prepended_size_bytes.get() as usize,
        Field::HeadersPrepended,
        HEADERS_PREPENDED_SIZE_BYTES_MAX,
    )?;
    let mut recipients = Vec::new();
    match depth {
        Depth::Full => {
            recipients.reserve_exact(recipient_count);
            for _ in 0..recipient_count {
                recipients.push(take_recipient(&mut take)?);
            }
        }
        Depth::Summary => {
            if recipient_count == 0 {
                return Err(LimitError::RecipientsEmpty.into());
            }
            let mut pending = false;
            for _ in 0..recipient_count {
                let recipient = take_recipient(&mut take)?;
                recipient.check()?;
                pending |= recipient.state == RecipientState::Pending;
            }
            if replacement && !pending {
                return Err(LimitError::NothingPending.into());
            }
        }
    }
    let inline_size = raw.body_inline_size_bytes.get() as usize;
    let inline = if raw.body_kind == BODY_KIND_LOG {
        // The extent table stands in the inline body's place.
        body_extent_count(inline_size)?;
        take.field(
            inline_size,
            Field::BodyExtents,
            BODY_EXTENTS_MAX * BODY_EXTENT_SIZE_BYTES,
        )?
    } else {
        take.field(inline_size, Field::InlineBody, INLINE_BODY_SIZE_BYTES_MAX)?
    };
    take.finish()?;
    let body = decode_body_ref(&raw, inline)?;
    Ok(Envelope {
        queue_id: QueueId(raw.queue_id),
        arrival_unix_ms: raw.arrival_unix_ms.get(),
        retry_next_unix_ms: raw.retry_next_unix_ms.get(),
        attempt_count: raw.attempt_count.get(),
        flags,
        sender,
        mail_params,
        client_address,
        client_helo,
        headers_prepended,
        recipients,
        body,
    })
}

fn take_recipient<'a>(take: &mut Take<'a>) -> Result<Recipient<'a>, DecodeError> {
    let raw: RecipientFixedRaw = take.fixed()?;
    if raw.reserved_1 != 0 {
        return Err(DecodeError::ReservedNotZero);
    }
    let state = RecipientState::from_u8(raw.recipient_state)
        .ok_or(DecodeError::BadRecipientState(raw.recipient_state))?;
    let address = take.field(
        raw.address_size_bytes.get() as usize,
        Field::RecipientAddress,
        ADDRESS_SIZE_BYTES_MAX,
    )?;
    let params = take.field(
        raw.params_size_bytes.get() as usize,
        Field::RecipientParams,
        ESMTP_PARAMS_SIZE_BYTES_MAX,
    )?;
    let reply = take.field(
        raw.reply_size_bytes.get() as usize,
        Field::Reply,
        REPLY_SIZE_BYTES_MAX,
    )?;
    Ok(Recipient {
        state,
        address,
        params,
        reply,
    })
}

fn decode_body_ref<'a>(
    raw: &EnvelopeFixedRaw,
    inline: &'a [u8],
) -> Result<BodyRef<'a>, DecodeError> {
    let size_bytes = raw.body_size_bytes.get();
    let checksum = raw.body_checksum.get();
    match raw.body_kind {
        BODY_KIND_INLINE => {
            let consistent = raw.body_file_id.get() == 0
                && size_bytes == inline.len() as u64
                && checksum == crc32c(inline);
            if !consistent {
                return Err(DecodeError::BodyMismatch);
            }
            Ok(BodyRef::Inline(inline))
        }
        BODY_KIND_FILE => {
            if !inline.is_empty() {
                return Err(DecodeError::BodyMismatch);
            }
            Ok(BodyRef::File {
                file_id: raw.body_file_id.get(),
                size_bytes,
                checksum,
            })
        }
        BODY_KIND_LOG => {
            if raw.body_file_id.get() != 0 {
                return Err(DecodeError::BodyMismatch);
            }
            // The table's rules are the value's, checked with the envelope.
            Ok(BodyRef::Log {
                extents: inline,
                size_bytes,
                checksum,
            })
        }
        other => Err(DecodeError::BadBodyKind(other)),
    }
}

/// A read cursor over one record's payload. Every step checks the length
/// first, so no input makes it panic.
struct Take<'a> {
    bytes: &'a [u8],
}

impl<'a> Take<'a> {
    fn fixed<T: FromBytes + KnownLayout + Immutable>(&mut self) -> Result<T, DecodeError> {
        let (value, rest) = T::read_from_prefix(self.bytes)
            .map_err(|_| DecodeError::FieldOverrun { field: None })?;
        self.bytes = rest;
        Ok(value)
    }

    fn field(&mut self, size: usize, field: Field, max: usize) -> Result<&'a [u8], DecodeError> {
        if size > max {
            return Err(DecodeError::FieldTooLong { field, size, max });
        }
        if size > self.bytes.len() {
            return Err(DecodeError::FieldOverrun { field: Some(field) });
        }
        let (value, rest) = self.bytes.split_at(size);
        self.bytes = rest;
        Ok(value)
    }

    fn finish(&self) -> Result<(), DecodeError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                count: self.bytes.len(),
            })
        }
    }
}
