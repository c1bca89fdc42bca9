//! Delivery status notifications (bounces, delay warnings and success
//! reports): builds the RFC 3464 `multipart/report` message that tells a
//! sender what became of which recipients and why, with the original
//! header block attached (RFC 6522), or the whole message for a failure
//! when MAIL FROM asked for it with `RET=FULL` (RFC 3461 §4.3). The
//! sender's `ENVID` and each recipient's `ORCPT` come back as
//! Original-Envelope-Id and Original-Recipient (RFC 3464 §2.2.1, §2.3.1).
//!
//! Place in the pipeline: the delivery engine calls `build_bounce` after an
//! attempt left recipients failed for good, delivered (when their `NOTIFY`
//! asked for SUCCESS), or pending too long; it queues the result as a new
//! message from the null sender `<>` and delivers it like any other. Which
//! recipients are reported is the engine's choice (their `NOTIFY`); this
//! module only writes the report. Pure: no I/O, time passed in.
//!
//! When an address or the original headers are not ASCII (an SMTPUTF8
//! message) the report uses the RFC 6533 types (`utf-8` address type,
//! `message/global-delivery-status`, `message/global-headers`); the result
//! is then 8-bit and must travel with SMTPUTF8.
//!
//! Bounds: the attached headers are cut at `HEADERS_BYTES_MAX` (at a line
//! end), every text field at `FIELD_BYTES_MAX`; a whole message is
//! attached only up to `FULL_MESSAGE_BYTES_MAX` (a larger one gets its
//! headers only, and the text says so).

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::smtp::reply::Enhanced;

/// Most bytes of the original header block attached.
pub const HEADERS_BYTES_MAX: usize = 64 * 1024;
/// Longest diagnostic or address written into a report field; RFC 5322
/// lines stay under 998 bytes.
pub const FIELD_BYTES_MAX: usize = 900;
/// Largest original message attached whole to a failure report (RET=FULL).
pub const FULL_MESSAGE_BYTES_MAX: usize = 512 * 1024;

/// The Action field of one recipient (RFC 3464 §2.3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
    /// Delivered here, into the mailbox (Maildir, LMTP, pipe).
    Delivered,
    /// Handed to a next hop that does not offer DSN: no further report
    /// will come (RFC 3461 §5.2.2).
    Relayed,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
        }
    }

    fn is_success(self) -> bool {
        matches!(self, Action::Delivered | Action::Relayed)
    }
}

/// What kind of report a list of recipients makes: its subject and text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Failure,
    Delay,
    Success,
}

fn kind_of(recipients: &[FailedRecipient]) -> Kind {
    if recipients.iter().all(|r| r.action == Action::Delayed) {
        Kind::Delay
    } else if recipients.iter().all(|r| r.action.is_success()) {
        Kind::Success
    } else {
        Kind::Failure
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
    /// ORCPT of its RCPT TO: the address type and the address, decoded
    /// (Original-Recipient).
    pub original_recipient: Option<(String, String)>,
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
            original_recipient: None,
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
    /// ENVID of MAIL FROM, decoded (Original-Envelope-Id).
    pub envelope_id: Option<String>,
    /// The whole original message (RET=FULL), attached instead of the
    /// header block to a failure report; None: headers only.
    pub original_message: Option<Vec<u8>>,
    /// RET=FULL was asked for but the message was larger than
    /// `FULL_MESSAGE_BYTES_MAX` (or binary): the text says why only the
    /// headers came back.
    pub full_refused: bool,
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
    let kind = kind_of(&b.recipients);
    // The whole message only in a failure report (RFC 3461 §4.3).
    let full = b.original_message.as_deref().filter(|m| kind == Kind::Failure && m.len() <= FULL_MESSAGE_BYTES_MAX);
    let headers = match full {
        Some(message) => message_block(message),
        None => header_block(&b.original_headers),
    };
    let global = !b.original_sender.is_ascii()
        || b.recipients.iter().any(|r| !r.address.is_ascii())
        || !headers.is_ascii();
    let boundary = boundary_for(b, &headers);

    let mut m = String::with_capacity(4096);
    push_top_headers(&mut m, b, &boundary, kind);
    m.push_str("This is a MIME-encapsulated message.\r\n\r\n");

    let _ = write!(m, "--{boundary}\r\n");
    let charset = if global { "utf-8" } else { "us-ascii" };
    let _ = write!(
        m,
        "Content-Description: Notification\r\nContent-Type: text/plain; charset={charset}\r\n\r\n"
    );
    push_explanation(&mut m, b, kind, full.is_some());

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
    let (headers_type, description) = match (full.is_some(), global) {
        (true, false) => ("message/rfc822", "Undelivered message"),
        (true, true) => ("message/global", "Undelivered message"),
        (false, false) => ("text/rfc822-headers", "Message headers"),
        (false, true) => ("message/global-headers", "Message headers"),
    };
    let _ = write!(m, "Content-Description: {description}\r\nContent-Type: {headers_type}\r\n");
    if full.is_some() && headers.iter().any(|&c| c >= 0x80) {
        m.push_str("Content-Transfer-Encoding: 8bit\r\n");
    }
    m.push_str("\r\n");
    let mut out = m.into_bytes();
    out.extend_from_slice(&headers);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

fn push_top_headers(m: &mut String, b: &BounceInput, boundary: &str, kind: Kind) {
    let host = field(&b.reporting_mta);
    let subject = match kind {
        Kind::Delay => "Delayed Mail (still being retried)",
        Kind::Success => "Successful Mail Delivery Report",
        Kind::Failure => "Undelivered Mail Returned to Sender",
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

fn push_explanation(m: &mut String, b: &BounceInput, kind: Kind, full: bool) {
    let host = field(&b.reporting_mta);
    let _ = write!(m, "This is the mail system at host {host}.\r\n\r\n");
    match kind {
        Kind::Delay => {
            m.push_str("Your message could not yet be delivered to the recipients below.\r\n");
            m.push_str("Delivery will be attempted again; you do not need to resend it.\r\n\r\n");
        }
        Kind::Success => {
            m.push_str("Your message was delivered to the recipients below, or handed on to\r\n");
            m.push_str("a system that sends no further notice (\"relayed\").\r\n\r\n");
        }
        Kind::Failure if full => {
            m.push_str("Your message could not be delivered to one or more recipients.\r\n");
            m.push_str("It is attached below.\r\n\r\n");
        }
        Kind::Failure if b.full_refused || b.original_message.is_some() => {
            m.push_str("Your message could not be delivered to one or more recipients.\r\n");
            m.push_str("It was too large to return whole; its headers are attached below.\r\n\r\n");
        }
        Kind::Failure => {
            m.push_str("Your message could not be delivered to one or more recipients.\r\n");
            m.push_str("It is attached below (headers only).\r\n\r\n");
        }
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
    if let Some(envid) = &b.envelope_id {
        let _ = write!(m, "Original-Envelope-Id: {}\r\n", field(envid));
    }
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
        if let Some((kind, address)) = &r.original_recipient {
            let _ = write!(m, "Original-Recipient: {}; {}\r\n", token(kind), field(address));
        }
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

/// A whole message to attach: bare LF made CRLF, ending in CRLF.
fn message_block(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 2);
    let mut cr_last = false;
    super::dotstuff::lf_to_crlf(message, &mut cr_last, &mut out);
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
                    original_recipient: None,
                },
            ],
            original_headers: b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nbody text\r\n".to_vec(),
            envelope_id: None,
            original_message: None,
            full_refused: false,
        }
    }

    const ORIGINAL: &[u8] = b"From: alice@example.org\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nbody text\r\n";

    #[test]
    fn envelope_id_and_original_recipient() {
        let mut b = input();
        b.envelope_id = Some("QQ314159".into());
        b.recipients[0].original_recipient = Some(("rfc822".into(), "Bob+lists@example.net".into()));
        let message = String::from_utf8(build_bounce(&b)).unwrap();
        let status = message.split("Content-Type: message/delivery-status\r\n\r\n").nth(1).unwrap();
        assert!(status.starts_with("Original-Envelope-Id: QQ314159\r\nReporting-MTA: dns; mx1.example.org\r\n"));
        assert!(status.contains(
            "\r\n\r\nOriginal-Recipient: rfc822; Bob+lists@example.net\r\nFinal-Recipient: rfc822; bob@example.net\r\n"
        ));
        // The second recipient had no ORCPT: no such field in its group.
        assert_eq!(message.matches("Original-Recipient:").count(), 1);
        let plain = String::from_utf8(build_bounce(&input())).unwrap();
        assert!(!plain.contains("Original-Envelope-Id"));
    }

    #[test]
    fn success_reports() {
        let mut b = input();
        b.recipients[0] = FailedRecipient::from_reply_text("bob@example.net", "250 2.0.0 Ok: queued as 4XyZ1");
        b.recipients[0].action = Action::Relayed;
        b.recipients[1].action = Action::Delivered;
        b.recipients[1].status = Enhanced(2, 0, 0);
        b.recipients[1].diagnostic_code = None;
        b.original_message = Some(ORIGINAL.to_vec());
        let message = String::from_utf8(build_bounce(&b)).unwrap();
        assert!(message.contains("Subject: Successful Mail Delivery Report\r\n"));
        assert!(message.contains("Action: relayed\r\nStatus: 2.0.0\r\n"));
        assert!(message.contains("Action: delivered\r\nStatus: 2.0.0\r\n"));
        // RET=FULL is for failures: a success report carries headers only.
        assert!(message.contains("Content-Type: text/rfc822-headers\r\n"));
        assert!(!message.contains("body text"));
    }

    #[test]
    fn ret_full_attaches_the_message() {
        let mut b = input();
        b.original_message = Some(ORIGINAL.to_vec());
        let message = String::from_utf8(build_bounce(&b)).unwrap();
        assert!(message.contains("Content-Type: message/rfc822\r\n\r\nFrom: alice@example.org\r\n"));
        assert!(message.contains("\r\n\r\nbody text\r\n\r\n--"));
        assert!(!message.contains("text/rfc822-headers"));
        assert!(message.contains("It is attached below.\r\n"));
        // Too large: headers only, and the text says why.
        let mut big = ORIGINAL.to_vec();
        big.extend(std::iter::repeat_n(b'x', FULL_MESSAGE_BYTES_MAX));
        b.original_message = Some(big);
        let message = String::from_utf8(build_bounce(&b)).unwrap();
        assert!(message.contains("Content-Type: text/rfc822-headers\r\n"));
        assert!(message.contains("too large to return whole"));
        assert!(!message.contains("xxxx"));
    }

    #[test]
    fn ret_full_boundary_avoids_the_body() {
        let mut b = input();
        let plain = String::from_utf8(build_bounce(&b)).unwrap();
        let boundary = plain.split("boundary=\"").nth(1).and_then(|s| s.split('"').next()).unwrap().to_string();
        let mut original = ORIGINAL.to_vec();
        original.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        b.original_message = Some(original);
        let message = String::from_utf8(build_bounce(&b)).unwrap();
        let chosen = message.split("boundary=\"").nth(1).and_then(|s| s.split('"').next()).unwrap();
        assert_ne!(chosen, boundary);
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
