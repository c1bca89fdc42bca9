//! A stable text form of segment headers, records and logs: one line per
//! record field, bytes shown with `escape_ascii` (printable ASCII as is,
//! everything else as `\xNN`). The checked-in vectors' `.txt` files are in
//! this form, and the log-dump tool prints it.

use core::fmt::Write;

use crate::reader::{LogReader, LogStop, StopReason};
use crate::record::*;
use crate::segment::SegmentHeader;

/// Inline bodies longer than this are shown by size and checksum only.
const BODY_SHOWN_SIZE_BYTES_MAX: usize = 512;

fn text(bytes: &[u8]) -> String {
    format!("\"{}\"", bytes.escape_ascii())
}

fn log_kind(kind: LogKind) -> &'static str {
    match kind {
        LogKind::Head => "head",
        LogKind::Retry => "retry",
        LogKind::Body => "body",
    }
}

pub fn segment_header(header: &SegmentHeader, out: &mut String) {
    let SegmentHeader {
        format_version,
        log_kind: kind,
        shard_index,
        segment_sequence,
        record_sequence_first,
        created_unix_ms,
        segment_size_bytes,
    } = header;
    let _ = writeln!(
        out,
        "segment log={} shard={shard_index} segment_sequence={segment_sequence}",
        log_kind(*kind)
    );
    let _ = writeln!(out, "  format_version: {format_version}");
    let _ = writeln!(out, "  record_sequence_first: {record_sequence_first}");
    let _ = writeln!(out, "  created_unix_ms: {created_unix_ms}");
    let _ = writeln!(out, "  segment_size_bytes: {segment_size_bytes}");
}

/// The record, headed by its offset and size when known.
pub fn record(record: &Record<'_>, position: Option<(usize, usize)>, out: &mut String) {
    let frame = &record.frame;
    let _ = write!(out, "record");
    if let Some((offset, size_bytes)) = position {
        let _ = write!(out, " offset={offset} size={size_bytes}");
    }
    let _ = writeln!(
        out,
        " sequence={} log={} shard={} type={:?}",
        frame.record_sequence,
        log_kind(frame.log_kind),
        frame.shard_index,
        record.body.record_type()
    );
    match &record.body {
        RecordBody::Padding { payload_size_bytes } => {
            let _ = writeln!(out, "  payload_size_bytes: {payload_size_bytes}");
        }
        RecordBody::Envelope(e) | RecordBody::ReplacementEnvelope(e) => envelope(e, out),
        RecordBody::Completion(c) => {
            let _ = writeln!(out, "  queue_id: {}", c.queue_id);
            let _ = writeln!(out, "  completion_unix_ms: {}", c.completion_unix_ms);
            let _ = writeln!(out, "  attempt_count: {}", c.attempt_count);
            let _ = writeln!(out, "  reason: {:?}", c.reason);
        }
    }
}

fn envelope(e: &Envelope<'_>, out: &mut String) {
    let _ = writeln!(out, "  queue_id: {}", e.queue_id);
    let _ = writeln!(out, "  arrival_unix_ms: {}", e.arrival_unix_ms);
    let _ = writeln!(out, "  retry_next_unix_ms: {}", e.retry_next_unix_ms);
    let _ = writeln!(out, "  attempt_count: {}", e.attempt_count);
    let mut flags = Vec::new();
    for (flag, name) in [
        (EnvelopeFlags::BODY_8BITMIME, "BODY_8BITMIME"),
        (EnvelopeFlags::SMTPUTF8, "SMTPUTF8"),
        (EnvelopeFlags::NULL_SENDER, "NULL_SENDER"),
        (EnvelopeFlags::BODY_BINARYMIME, "BODY_BINARYMIME"),
        (EnvelopeFlags::REPLICA, "REPLICA"),
        (EnvelopeFlags::HELD, "HELD"),
        (EnvelopeFlags::DELAY_WARNED, "DELAY_WARNED"),
    ] {
        if e.flags.contains(flag) {
            flags.push(name);
        }
    }
    let _ = writeln!(out, "  flags: [{}]", flags.join(", "));
    let _ = writeln!(out, "  sender: {}", text(e.sender));
    let _ = writeln!(out, "  mail_params: {}", text(e.mail_params));
    let _ = writeln!(out, "  client_address: {}", text(e.client_address));
    let _ = writeln!(out, "  client_helo: {}", text(e.client_helo));
    let _ = writeln!(out, "  headers_prepended: {}", text(e.headers_prepended));
    for (index, r) in e.recipients.iter().enumerate() {
        let _ = writeln!(
            out,
            "  recipient[{index}]: state={:?} address={} params={} reply={}",
            r.state,
            text(r.address),
            text(r.params),
            text(r.reply)
        );
    }
    match e.body {
        BodyRef::Inline(bytes) => {
            let checksum = crate::checksum::crc32c(bytes);
            let _ = writeln!(
                out,
                "  body: inline size_bytes={} crc32c={checksum:#010x}",
                bytes.len()
            );
            if bytes.len() <= BODY_SHOWN_SIZE_BYTES_MAX {
                let _ = writeln!(out, "  body_bytes: {}", text(bytes));
            }
        }
        BodyRef::File {
            file_id,
            size_bytes,
            checksum,
        } => {
            let _ = writeln!(out, "  body: file file_id={file_id:#018x} size_bytes={size_bytes} crc32c={checksum:#010x}");
        }
        BodyRef::Log {
            extents,
            size_bytes,
            checksum,
        } => {
            let count = extents.len() / BODY_EXTENT_SIZE_BYTES;
            let _ = writeln!(
                out,
                "  body: log size_bytes={size_bytes} crc32c={checksum:#010x} extents={count}"
            );
            for (index, extent) in body_extents(extents).enumerate() {
                let _ = writeln!(
                    out,
                    "  extent[{index}]: segment_sequence={} offset_bytes={} size_bytes={}",
                    extent.segment_sequence, extent.offset_bytes, extent.size_bytes
                );
            }
        }
    }
}

pub fn stop(stop: &LogStop, out: &mut String) {
    let clean = if stop.reason.is_clean() {
        "clean"
    } else {
        "untrusted"
    };
    let reason = stop_reason(&stop.reason);
    let _ = writeln!(out, "stop offset={} {clean}: {reason}", stop.offset);
}

/// Why reading stopped, in words (`corrupt: checksum mismatch: ...`).
pub fn stop_reason(reason: &StopReason) -> String {
    match *reason {
        StopReason::EndOfBytes => "end of bytes".to_string(),
        StopReason::Zeroed => "zeroed space".to_string(),
        StopReason::Corrupt(error) => format!("corrupt: {error}"),
        StopReason::SequenceMismatch { expected, found } => {
            format!("sequence mismatch: expected {expected}, found {found}")
        }
        StopReason::WrongLog {
            log_kind: kind,
            shard_index,
        } => {
            format!("wrong log: {} shard {shard_index}", log_kind(kind))
        }
        StopReason::MisplacedPadding => "padding not ending on a block boundary".to_string(),
        StopReason::BodySegment => "body segment: body bytes, no records".to_string(),
    }
}

/// Every trusted record of a segment and where reading stopped.
pub fn segment(bytes: &[u8]) -> String {
    let mut out = String::new();
    match LogReader::open_segment(bytes) {
        Err(error) => {
            let _ = writeln!(out, "segment header rejected: {error}");
        }
        Ok((header, mut reader)) => {
            segment_header(&header, &mut out);
            for entry in reader.by_ref() {
                record(
                    &entry.record,
                    Some((entry.offset, entry.size_bytes)),
                    &mut out,
                );
            }
            if let Some(s) = reader.stop() {
                stop(&s, &mut out);
            }
        }
    }
    out
}
