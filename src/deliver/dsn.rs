//! Delivery status notifications (bounces and delay warnings): builds the
//! RFC 3464 `multipart/report` message that tells a sender which recipients
//! failed and why, with the original header block attached (RFC 6522).
//!
//! Place in the pipeline: the delivery engine calls `build_bounce` after an
//! attempt left recipients failed for good (or delayed too long), queues
//! the result as a new message from the null sender `<>`, and delivers it
//! like any other. Pure: no I/O, time passed in.
//!
//! When an address or the original headers are not ASCII (an SMTPUTF8
//! message) the report uses the RFC 6533 types (`utf-8` address type,
//! `message/global-delivery-status`, `message/global-headers`); the result
//! is then 8-bit and must travel with SMTPUTF8.
//!
//! Bounds: the attached headers are cut at `HEADERS_BYTES_MAX` (at a line
//! end), every text field at `FIELD_BYTES_MAX`.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::smtp::reply::Enhanced;

/// Most bytes of the original header block attached.
pub const HEADERS_BYTES_MAX: usize = 64 * 1024;
/// Longest diagnostic or address written into a report field; RFC 5322
/// lines stay under 998 bytes.
pub const FIELD_BYTES_MAX: usize = 900;

/// The Action field of one recipient (RFC 3464 §2.3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
        }
    }
}

/// One recipient reported on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedRecipient {
    /// Without angle brackets.
    pub address: String,
    pub action: Action,
    /// e.g. 5.1.1 (RFC 3463).
    pub status: Enhanced,
    /// With its type, e.g. "smtp; 550 5.1.1 no such user".
    pub diagnostic_code: Option<String>,
    /// The host that gave the diagnostic, if a remote one did.
    pub remote_mta: Option<String>,
}

impl FailedRecipient {
    /// A failed recipient from the one-line reply text kept in the queue:
    /// either an SMTP reply summary (`550 5.1.1 text`) or a local reason
    /// that starts with an enhanced code (`4.4.7 text`). The status comes
    /// from the enhanced code, else from the reply class.
    pub fn from_reply_text(address: &str, text: &str) -> FailedRecipient {
        let text = text.trim();
        let (status, diagnostic_code) = match reply_code_prefix(text) {
            Some((code, rest)) => {
                let status = parse_status(rest).unwrap_or(Enhanced((code / 100) as u8, 0, 0));
                (status, Some(format!("smtp; {text}")))
            }
            None => match parse_status(text) {
                Some(status) => (status, Some(format!("X-Ringpost; {text}"))),
                None if text.is_empty() => (Enhanced(5, 0, 0), None),
                None => (Enhanced(5, 0, 0), Some(format!("X-Ringpost; {text}"))),
            },
        };
        FailedRecipient {
            address: address.to_string(),
            action: Action::Failed,
            status,
            diagnostic_code,
            remote_mta: None,
        }
    }
}

/// Everything a report says.
#[derive(Clone, Debug)]
pub struct BounceInput {
    /// Our host name, for From, Message-ID and Reporting-MTA.
    pub reporting_mta: String,
    pub queue_id: String,
    /// The envelope sender of the original message; never empty.
    pub original_sender: String,
    pub arrival: SystemTime,
    pub now: SystemTime,
    pub recipients: Vec<FailedRecipient>,
    /// The original header block, up to (not including) the empty line.
    pub original_headers: Vec<u8>,
}

/// The complete report message, CRLF line endings.
pub fn build_bounce(b: &BounceInput) -> Vec<u8> {
    debug_assert!(
        !b.original_sender.is_empty(),
        "no report to the null sender (RFC 5321 §6.1)"
    );
    debug_assert!(
        !b.recipients.is_empty(),
        "a report names at least one recipient"
    );
    let headers = header_block(&b.original_headers);
    let global = !b.original_sender.is_ascii()
        || b.recipients.iter().any(|r| !r.address.is_ascii())
        || !headers.is_ascii();
    let boundary = boundary_for(b, &headers);
    let delayed_only = b.recipients.iter().all(|r| r.action == Action::Delayed);

    let mut m = String::with_capacity(4096);
    push_top_headers(&mut m, b, &boundary, delayed_only);
    m.push_str("This is a MIME-encapsulated message.\r\n\r\n");

    let _ = write!(m, "--{boundary}\r\n");
    let charset = if global { "utf-8" } else { "us-ascii" };
    let _ = write!(
        m,
        "Content-Description: Notification\r\nContent-Type: text/plain; charset={charset}\r\n\r\n"
    );
    push_explanation(&mut m, b, delayed_only);

    let _ = write!(m, "\r\n--{boundary}\r\n");
    let status_type = if global {
        "message/global-delivery-status"
    } else {
        "message/delivery-status"
    };
    let _ = write!(
        m,
        "Content-Description: Delivery report\r\nContent-Type: {status_type}\r\n\r\n"
    );
    push_status(&mut m, b);

    let _ = write!(m, "\r\n--{boundary}\r\n");
    let headers_type = if global {
        "message/global-headers"
    } else {
        "text/rfc822-headers"
    };
    let _ = write!(
        m,
        "Content-Description: Undelivered message headers\r\nContent-Type: {headers_type}\r\n\r\n"
    );
    let mut out = m.into_bytes();
    out.extend_from_slice(&headers);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

fn push_top_headers(m: &mut String, b: &BounceInput, boundary: &str, delayed_only: bool) {
    let host = field(&b.reporting_mta);
    let subject = if delayed_only {
        "Delayed Mail (still being retried)"
    } else {
        "Undelivered Mail Returned to Sender"
    };
    let now_s = unix_seconds(b.now);
    let _ = write!(m, "From: Mail Delivery System <MAILER-DAEMON@{host}>\r\n");
    let _ = write!(m, "To: <{}>\r\n", field(&b.original_sender));
    let _ = write!(m, "Subject: {subject}\r\n");
    let _ = write!(m, "Date: {}\r\n", rfc5322_date(b.now));
    let _ = write!(
        m,
        "Message-ID: <{}.{now_s}.dsn@{host}>\r\n",
        token(&b.queue_id)
    );
    m.push_str("Auto-Submitted: auto-replied\r\n");
    m.push_str("MIME-Version: 1.0\r\n");
    let _ = write!(m, "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n");
    m.push_str("\r\n");
}

fn push_explanation(m: &mut String, b: &BounceInput, delayed_only: bool) {
    let host = field(&b.reporting_mta);
    let _ = write!(m, "This is the mail system at host {host}.\r\n\r\n");
    if delayed_only {
        m.push_str("Your message could not yet be delivered to the recipients below.\r\n");
        m.push_str("Delivery will be attempted again; you do not need to resend it.\r\n\r\n");
    } else {
        m.push_str("Your message could not be delivered to one or more recipients.\r\n");
        m.push_str("It is attached below (headers only).\r\n\r\n");
    }
    for r in &b.recipients {
        let _ = write!(m, "<{}>: ", field(&r.address));
        match &r.diagnostic_code {
            Some(d) => {
                let reason = d.split_once("; ").map_or(d.as_str(), |(_, text)| text);
                let _ = write!(m, "{}\r\n", field(reason));
            }
            None => {
                let _ = write!(m, "{} (status {})\r\n", r.action.as_str(), r.status);
            }
        }
    }
}

fn push_status(m: &mut String, b: &BounceInput) {
    let _ = write!(m, "Reporting-MTA: dns; {}\r\n", field(&b.reporting_mta));
    let _ = write!(m, "X-Ringpost-Queue-ID: {}\r\n", token(&b.queue_id));
    let _ = write!(m, "Arrival-Date: {}\r\n", rfc5322_date(b.arrival));
    for r in &b.recipients {
        m.push_str("\r\n");
        let address_type = if r.address.is_ascii() {
            "rfc822"
        } else {
            "utf-8"
        };
        let _ = write!(
            m,
            "Final-Recipient: {address_type}; {}\r\n",
            field(&r.address)
        );
        let _ = write!(m, "Action: {}\r\n", r.action.as_str());
        let _ = write!(m, "Status: {}\r\n", r.status);
        if let Some(mta) = &r.remote_mta {
            let _ = write!(m, "Remote-MTA: dns; {}\r\n", field(mta));
        }
        if let Some(d) = &r.diagnostic_code {
            let _ = write!(m, "Diagnostic-Code: {}\r\n", field(d));
        }
        let _ = write!(m, "Last-Attempt-Date: {}\r\n", rfc5322_date(b.now));
    }
}

/// The original header block: cut at the empty line and at
/// `HEADERS_BYTES_MAX` (on a line end), bare LF made CRLF, ending in CRLF.
fn header_block(original: &[u8]) -> Vec<u8> {
    let mut end = original.len();
    for blank in [&b"\r\n\r\n"[..], b"\n\n"] {
        if let Some(i) = original.windows(blank.len()).position(|w| w == blank) {
            end = end.min(i + blank.len() / 2);
        }
    }
    if original.starts_with(b"\r\n") || original.starts_with(b"\n") {
        end = 0;
    }
    let mut block = &original[..end];
    if block.len() > HEADERS_BYTES_MAX {
        let cut = &block[..HEADERS_BYTES_MAX];
        block = match cut.iter().rposition(|&c| c == b'\n') {
            Some(i) => &cut[..=i],
            None => &[],
        };
    }
    let mut out = Vec::with_capacity(block.len() + 2);
    let mut cr_last = false;
    super::dotstuff::lf_to_crlf(block, &mut cr_last, &mut out);
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A boundary that occurs nowhere in the attached headers.
fn boundary_for(b: &BounceInput, headers: &[u8]) -> String {
    let base = format!(
        "{}.{}/{}",
        token(&b.queue_id),
        unix_seconds(b.now),
        token(&b.reporting_mta)
    );
    let mut boundary = base.clone();
    let mut n = 0u32;
    while contains(headers, boundary.as_bytes()) {
        n += 1;
        boundary = format!("{base}.{n}");
    }
    debug_assert!(boundary.len() <= 70 || b.queue_id.len() + b.reporting_mta.len() > 40);
    boundary
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Text made safe for one header field: control characters become spaces,
/// length bounded at a character boundary.
fn field(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(FIELD_BYTES_MAX));
    for c in s.chars() {
        if out.len() + c.len_utf8() > FIELD_BYTES_MAX {
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

/// Only characters allowed in a MIME boundary and a Message-ID left part.
fn token(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(64)
        .collect()
}

/// A reply code at the start of `text` (`550 ...` or `550`): the code and
/// the text after it.
fn reply_code_prefix(text: &str) -> Option<(u16, &str)> {
    let digits = text.get(..3)?;
    if !digits.bytes().all(|b| b.is_ascii_digit())
        || !matches!(digits.as_bytes()[0], b'2' | b'4' | b'5')
    {
        return None;
    }
    let rest = &text[3..];
    if !(rest.is_empty() || rest.starts_with(' ')) {
        return None;
    }
    Some((digits.parse().ok()?, rest.trim_start()))
}

/// An enhanced status code at the start of `text` (class 2, 4 or 5).
fn parse_status(text: &str) -> Option<Enhanced> {
    let token = text.split([' ', ';']).next()?;
    let mut parts = token.split('.');
    let mut number = |digits_max: usize| -> Option<u16> {
        let p = parts.next()?;
        if p.is_empty() || p.len() > digits_max || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        p.parse().ok()
    };
    let class = number(1)?;
    let subject = number(3)?;
    let detail = number(3)?;
    if parts.next().is_some() || !matches!(class, 2 | 4 | 5) {
        return None;
    }
    Some(Enhanced(class as u8, subject, detail))
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub use crate::smtp::received::rfc5322_date;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn input() -> BounceInput {
        BounceInput {
            reporting_mta: "mx1.example.org".into(),
            queue_id: "0F3A9C2B11".into(),
            original_sender: "alice@example.org".into(),
            arrival: at(1_700_000_000),
            now: at(1_700_003_600),
            recipients: vec![
                FailedRecipient::from_reply_text("bob@example.net", "550 5.1.1 <bob@example.net>: no such user"),
                FailedRecipient {
                    address: "carol@example.net".into(),
                    action: Action::Failed,
                    status: Enhanced(5, 2, 2),
                    diagnostic_code: Some("smtp; 552 5.2.2 mailbox full".into()),
                    remote_mta: Some("mx.example.net".into()),
                },
            ],
            original_headers: b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nbody text\r\n".to_vec(),
        }
    }

    /// Splits a message into (headers, body) at the first empty line.
    fn split_message(m: &str) -> (&str, &str) {
        let i = m.find("\r\n\r\n").expect("header/body separator");
        (&m[..i + 2], &m[i + 4..])
    }

    fn header<'a>(headers: &'a str, name: &str) -> Option<&'a str> {
        headers
            .split("\r\n")
            .find_map(|l| l.strip_prefix(name).and_then(|l| l.strip_prefix(": ")))
    }

    /// The parts of a multipart body, each as (headers, body).
    fn parts(body: &str, boundary: &str) -> Vec<(String, String)> {
        let close = format!("\r\n--{boundary}--\r\n");
        let inner = body
            .strip_suffix(close.as_str())
            .expect("closing delimiter at the end");
        let delimiter = format!("--{boundary}\r\n");
        let mut pieces = inner.split(delimiter.as_str());
        let preamble = pieces.next().expect("preamble");
        assert!(preamble.ends_with("\r\n"), "delimiter starts a line");
        let pieces: Vec<&str> = pieces.collect();
        let last_index = pieces.len() - 1;
        pieces
            .iter()
            .enumerate()
            .map(|(i, piece)| {
                // Every part but the last ends with the CRLF that belongs
                // to the next delimiter.
                let piece = if i < last_index {
                    piece.strip_suffix("\r\n").expect("CRLF before delimiter")
                } else {
                    piece
                };
                let (h, b) = split_message(piece);
                (h.to_string(), b.to_string())
            })
            .collect()
    }

    #[test]
    fn structure() {
        let b = input();
        let message = String::from_utf8(build_bounce(&b)).expect("ASCII report");
        assert!(!message.replace("\r\n", "").contains('\n'), "CRLF only");
        let (headers, body) = split_message(&message);
        assert_eq!(
            header(headers, "From"),
            Some("Mail Delivery System <MAILER-DAEMON@mx1.example.org>")
        );
        assert_eq!(header(headers, "To"), Some("<alice@example.org>"));
        assert_eq!(
            header(headers, "Subject"),
            Some("Undelivered Mail Returned to Sender")
        );
        assert_eq!(
            header(headers, "Date"),
            Some("Tue, 14 Nov 2023 23:13:20 +0000")
        );
        assert_eq!(
            header(headers, "Message-ID"),
            Some("<0F3A9C2B11.1700003600.dsn@mx1.example.org>")
        );
        assert_eq!(header(headers, "Auto-Submitted"), Some("auto-replied"));
        assert_eq!(header(headers, "MIME-Version"), Some("1.0"));
        assert_eq!(
            header(headers, "Content-Type"),
            Some("multipart/report; report-type=delivery-status;")
        );
        let boundary = headers
            .split("boundary=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("boundary parameter");
        assert!(boundary.len() <= 70);
        let parts = parts(body, boundary);
        assert_eq!(parts.len(), 3);

        let (h, text) = (&parts[0].0, &parts[0].1);
        assert_eq!(
            header(h, "Content-Type"),
            Some("text/plain; charset=us-ascii")
        );
        assert!(text.contains("<bob@example.net>: 550 5.1.1 <bob@example.net>: no such user"));
        assert!(text.contains("<carol@example.net>: 552 5.2.2 mailbox full"));

        let (h, status) = (&parts[1].0, &parts[1].1);
        assert_eq!(header(h, "Content-Type"), Some("message/delivery-status"));
        let groups: Vec<&str> = status.trim_end().split("\r\n\r\n").collect();
        assert_eq!(
            groups.len(),
            3,
            "per-message group and one group per recipient"
        );
        assert_eq!(
            header(groups[0], "Reporting-MTA"),
            Some("dns; mx1.example.org")
        );
        assert_eq!(header(groups[0], "X-Ringpost-Queue-ID"), Some("0F3A9C2B11"));
        assert_eq!(
            header(groups[0], "Arrival-Date"),
            Some("Tue, 14 Nov 2023 22:13:20 +0000")
        );
        let g = format!("{}\r\n", groups[1]);
        assert_eq!(
            header(&g, "Final-Recipient"),
            Some("rfc822; bob@example.net")
        );
        assert_eq!(header(&g, "Action"), Some("failed"));
        assert_eq!(header(&g, "Status"), Some("5.1.1"));
        assert_eq!(header(&g, "Remote-MTA"), None);
        assert_eq!(
            header(&g, "Diagnostic-Code"),
            Some("smtp; 550 5.1.1 <bob@example.net>: no such user")
        );
        assert_eq!(
            header(&g, "Last-Attempt-Date"),
            Some("Tue, 14 Nov 2023 23:13:20 +0000")
        );
        let g = format!("{}\r\n", groups[2]);
        assert_eq!(
            header(&g, "Final-Recipient"),
            Some("rfc822; carol@example.net")
        );
        assert_eq!(header(&g, "Status"), Some("5.2.2"));
        assert_eq!(header(&g, "Remote-MTA"), Some("dns; mx.example.net"));

        let (h, original) = (&parts[2].0, &parts[2].1);
        assert_eq!(header(h, "Content-Type"), Some("text/rfc822-headers"));
        assert_eq!(
            original,
            "From: alice@example.org\r\nTo: bob@example.net\r\nSubject: hi\r\n"
        );
        assert!(!message.contains("body text"), "headers only");
    }

    #[test]
    fn delay_warning() {
        let mut b = input();
        for r in &mut b.recipients {
            r.action = Action::Delayed;
            r.status = Enhanced(4, 4, 1);
        }
        let message = String::from_utf8(build_bounce(&b)).unwrap();
        assert!(message.contains("Subject: Delayed Mail (still being retried)\r\n"));
        assert!(message.contains("Action: delayed\r\n"));
        assert!(message.contains("Status: 4.4.1\r\n"));
        assert!(message.contains("you do not need to resend"));
    }

    #[test]
    fn from_reply_text_forms() {
        let r = FailedRecipient::from_reply_text("a@x", "550 5.1.1 no such user");
        assert_eq!(r.status, Enhanced(5, 1, 1));
        assert_eq!(
            r.diagnostic_code.as_deref(),
            Some("smtp; 550 5.1.1 no such user")
        );
        assert_eq!(r.action, Action::Failed);
        let r = FailedRecipient::from_reply_text("a@x", "554 rejected");
        assert_eq!(r.status, Enhanced(5, 0, 0));
        let r = FailedRecipient::from_reply_text(
            "a@x",
            "4.4.7 message expired in queue; last: 451 4.4.1 no answer",
        );
        assert_eq!(r.status, Enhanced(4, 4, 7));
        assert_eq!(
            r.diagnostic_code.as_deref(),
            Some("X-Ringpost; 4.4.7 message expired in queue; last: 451 4.4.1 no answer")
        );
        let r = FailedRecipient::from_reply_text("a@x", "");
        assert_eq!((r.status, r.diagnostic_code), (Enhanced(5, 0, 0), None));
        let r = FailedRecipient::from_reply_text("a@x", "something odd");
        assert_eq!(r.status, Enhanced(5, 0, 0));
        let r = FailedRecipient::from_reply_text("a@x", "5500 x");
        assert_eq!(r.status, Enhanced(5, 0, 0));
    }

    #[test]
    fn header_block_is_cut_and_normalized() {
        assert_eq!(header_block(b"A: 1\nB: 2\n\nbody"), b"A: 1\r\nB: 2\r\n");
        assert_eq!(header_block(b"A: 1\r\nB: 2"), b"A: 1\r\nB: 2\r\n");
        assert_eq!(header_block(b""), b"");
        assert_eq!(header_block(b"\r\nbody only"), b"");
        let mut big = Vec::new();
        while big.len() < HEADERS_BYTES_MAX + 100 {
            big.extend_from_slice(b"X-Filler: 0123456789012345678901234567890123456789\r\n");
        }
        let block = header_block(&big);
        assert!(block.len() <= HEADERS_BYTES_MAX);
        assert!(block.ends_with(b"\r\n"));
        assert!(block.starts_with(b"X-Filler: "));
    }

    #[test]
    fn empty_original_headers_still_has_three_parts() {
        let mut b = input();
        b.original_headers.clear();
        let message = String::from_utf8(build_bounce(&b)).unwrap();
        assert!(message.contains("Content-Type: text/rfc822-headers\r\n\r\n\r\n--"));
        assert!(message.ends_with("--\r\n"));
    }

    #[test]
    fn boundary_avoids_the_attached_headers() {
        let mut b = input();
        let plain = String::from_utf8(build_bounce(&b)).unwrap();
        let boundary = plain
            .split("boundary=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap()
            .to_string();
        b.original_headers = format!("X-Trap: --{boundary}\r\n").into_bytes();
        let message = String::from_utf8(build_bounce(&b)).unwrap();
        let chosen = message
            .split("boundary=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap();
        assert_ne!(chosen, boundary);
        assert!(!b
            .original_headers
            .windows(chosen.len())
            .any(|w| w == chosen.as_bytes()));
    }

    #[test]
    fn hostile_fields_cannot_add_headers() {
        let mut b = input();
        b.original_sender = "alice@example.org>\r\nBcc: victim@example.com".into();
        b.recipients[0].diagnostic_code = Some("smtp; 550 evil\r\nX-Injected: yes".into());
        b.reporting_mta = "mx1\r\nX-Host: bad".into();
        let message = String::from_utf8(build_bounce(&b)).unwrap();
        assert!(!message.contains("\r\nBcc:"));
        assert!(!message.contains("\r\nX-Injected:"));
        assert!(!message.contains("\r\nX-Host:"));
        let mut b = input();
        b.recipients[0].diagnostic_code = Some(format!("smtp; 550 {}", "é".repeat(2000)));
        let message = String::from_utf8(build_bounce(&b)).unwrap();
        assert!(message.split("\r\n").all(|l| l.len() <= 998));
    }

    #[test]
    fn utf8_addresses_use_the_global_types() {
        let mut b = input();
        b.recipients[0].address = "jörg@example.net".into();
        let message = String::from_utf8(build_bounce(&b)).unwrap();
        assert!(message.contains("Content-Type: message/global-delivery-status\r\n"));
        assert!(message.contains("Content-Type: message/global-headers\r\n"));
        assert!(message.contains("Final-Recipient: utf-8; jörg@example.net\r\n"));
        assert!(message.contains("Final-Recipient: rfc822; carol@example.net\r\n"));
        assert!(message.contains("charset=utf-8"));
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "null sender")]
    fn never_to_the_null_sender() {
        let mut b = input();
        b.original_sender.clear();
        build_bounce(&b);
    }
}
