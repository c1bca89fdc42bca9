//! Test messages as `ringpost-blast` sends them.
//!
//! A message is RFC 5322 headers (From, To, Subject, Date, Message-ID and,
//! when tagged, X-Blast-Id) and a body of printable text lines of at most
//! 78 characters ending in CRLF. Some body lines start with a dot so that
//! dot-stuffing is exercised on every run. The body text is generated once
//! per process, already dot-stuffed; a message of a given size takes a
//! prefix of whole lines, so building a message costs one header format.

use crate::rng::Rng;

/// Longest body line, excluding CRLF (RFC 5322 recommends at most 78).
pub const BODY_LINE_CHARS_MAX: usize = 78;
/// Upper bound on one generated message, so a typo cannot exhaust memory.
pub const MESSAGE_SIZE_BYTES_MAX: u64 = 64 << 20;

const WORDS: &[&str] = &[
    "relay",
    "queue",
    "segment",
    "flush",
    "shard",
    "envelope",
    "recipient",
    "sender",
    "delivery",
    "retry",
    "runner",
    "header",
    "body",
    "checksum",
    "record",
    "commit",
    "latency",
    "throughput",
    "spool",
    "domain",
    "mailbox",
    "transfer",
    "agent",
    "log",
];

/// Pre-generated, dot-stuffed body text and the offsets of its lines.
pub struct BodyText {
    wire: Vec<u8>,
    /// `raw_end[i]`: unstuffed bytes up to and including line `i`.
    raw_end: Vec<u64>,
    /// `wire_end[i]`: stuffed bytes up to and including line `i`.
    wire_end: Vec<usize>,
}

impl BodyText {
    /// Builds at least `raw_bytes_max` bytes of body text.
    pub fn new(raw_bytes_max: u64, seed: u64) -> BodyText {
        assert!(raw_bytes_max <= MESSAGE_SIZE_BYTES_MAX);
        let mut rng = Rng::new(seed);
        let mut body = BodyText {
            wire: Vec::new(),
            raw_end: Vec::new(),
            wire_end: Vec::new(),
        };
        let mut raw_total: u64 = 0;
        let mut line = String::with_capacity(BODY_LINE_CHARS_MAX);
        let mut index: u64 = 0;
        while raw_total < raw_bytes_max.max(1) {
            line.clear();
            match index % 23 {
                7 => line.push('.'),
                15 => line.push_str(".. leading dots are stuffed on the wire"),
                _ => {}
            }
            let target = 20 + rng.below((BODY_LINE_CHARS_MAX - 20) as u64 + 1) as usize;
            while line.len() < target {
                let w = WORDS[rng.below(WORDS.len() as u64) as usize];
                if line.len() + w.len() + 1 > BODY_LINE_CHARS_MAX {
                    break;
                }
                if !line.is_empty() {
                    line.push(' ');
                }
                line.push_str(w);
            }
            debug_assert!(line.len() <= BODY_LINE_CHARS_MAX);
            if line.starts_with('.') {
                body.wire.push(b'.');
            }
            body.wire.extend_from_slice(line.as_bytes());
            body.wire.extend_from_slice(b"\r\n");
            raw_total += line.len() as u64 + 2;
            body.raw_end.push(raw_total);
            body.wire_end.push(body.wire.len());
            index += 1;
        }
        body
    }

    /// Dot-stuffed whole lines whose unstuffed size is the largest not above
    /// `raw_bytes` (at least one line), and that unstuffed size.
    pub fn wire_prefix(&self, raw_bytes: u64) -> (&[u8], u64) {
        let lines = self.raw_end.partition_point(|&end| end <= raw_bytes).max(1);
        (&self.wire[..self.wire_end[lines - 1]], self.raw_end[lines - 1])
    }
}

/// The identity and envelope of one message.
pub struct MessageSpec<'a> {
    pub from: &'a str,
    pub to: &'a [String],
    /// `<run-id>.<n>` when tagging, else `None`.
    pub blast_id: Option<&'a str>,
    pub number: u64,
    pub unix_secs: u64,
}

/// Appends the header section (ending with the blank line) to `out`.
pub fn write_headers(out: &mut Vec<u8>, spec: &MessageSpec<'_>) {
    use std::io::Write;
    let _ = write!(out, "From: <{}>\r\n", spec.from);
    let _ = write!(out, "To: ");
    for (i, to) in spec.to.iter().enumerate() {
        if i > 0 {
            // Fold long recipient lists, one address per line.
            let _ = write!(out, ",\r\n ");
        }
        let _ = write!(out, "<{to}>");
    }
    let _ = write!(out, "\r\nSubject: ringpost-blast message {}\r\n", spec.number);
    let _ = write!(out, "Date: {}\r\n", rfc5322_date(spec.unix_secs));
    match spec.blast_id {
        Some(id) => {
            let _ = write!(out, "Message-ID: <{id}@blast.invalid>\r\nX-Blast-Id: {id}\r\n");
        }
        None => {
            let _ = write!(
                out,
                "Message-ID: <{}.{}@blast.invalid>\r\n",
                spec.unix_secs, spec.number
            );
        }
    }
    let _ = write!(
        out,
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    );
}

/// Formats a Unix time as an RFC 5322 date in UTC.
pub fn rfc5322_date(unix_secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix_secs / 86_400;
    let secs_of_day = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        secs_of_day / 3600,
        secs_of_day / 60 % 60,
        secs_of_day % 60
    )
}

/// Days since 1970-01-01 to (year, month 1..=12, day 1..=31), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Expands `{n}` in an address pattern.
pub fn expand_pattern(pattern: &str, n: u64) -> String {
    pattern.replace("{n}", &n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unstuff(wire: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for line in wire.split_inclusive(|&b| b == b'\n') {
            let line = if line.starts_with(b".") { &line[1..] } else { line };
            out.extend_from_slice(line);
        }
        out
    }

    #[test]
    fn body_lines_are_short_and_stuffed() {
        let body = BodyText::new(20_000, 9);
        let (wire, raw) = body.wire_prefix(10_000);
        assert!(raw <= 10_000 && raw > 9_000);
        assert_eq!(unstuff(wire).len() as u64, raw);
        let mut saw_dot = false;
        for line in wire.split(|&b| b == b'\n') {
            if line.is_empty() {
                continue;
            }
            assert!(line.ends_with(b"\r"));
            assert!(line.len() - 1 <= BODY_LINE_CHARS_MAX + 1);
            assert!(line.iter().all(|&b| b == b'\r' || (32..127).contains(&b)));
            if line.starts_with(b".") {
                saw_dot = true;
                assert!(line.starts_with(b".."), "unstuffed dot line");
            }
        }
        assert!(saw_dot);
        assert_eq!(body.wire_prefix(1).1, body.raw_end[0]);
    }

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(rfc5322_date(1_700_000_000), "Tue, 14 Nov 2023 22:13:20 +0000");
    }
}
