//! Sieve vacation responses (RFC 5230): the durable memory of who was
//! answered when, and the response message itself (RFC 3834).
//!
//! Place in the pipeline: after the final dot's 250, `crate::ingress::filters`
//! hands each `vacation` action whose message may be answered (the
//! interpreter has already refused `<>`, list and auto-submitted mail, and
//! mail not addressed to the user) to [`Memory::take`]; when it says yes,
//! [`compose`] builds the response, which is queued as a new message from
//! `<>` to the sender and delivered like any other.
//!
//! The memory is one SQLite file (`sieve.vacation_db`), a row per (user,
//! sender, handle) with the time until which that sender is not answered
//! again; it is written before the response is queued, so a crash can lose
//! a response but never send one twice within `:days`. Calls block, so the
//! shard runs them on its blocking pool. Bounds: expired rows are removed
//! every `PURGE_EVERY` responses; a response's reason is cut at
//! `REASON_BYTES_MAX`.

use std::path::Path;
use std::sync::Mutex;

/// Rows whose period has passed are removed after this many `take`s.
const PURGE_EVERY: u64 = 1000;
/// Longest reason text put into a response.
pub const REASON_BYTES_MAX: usize = 64 * 1024;
/// Longest subject put into a response.
const SUBJECT_BYTES_MAX: usize = 998 - "Subject: ".len();
/// Days `:days` may ask at most (RFC 5230 §4.1 lets a site bound it).
pub const DAYS_MAX: u64 = 365;

/// The vacation memory of the whole process.
pub struct Memory {
    connection: Mutex<rusqlite::Connection>,
    takes: std::sync::atomic::AtomicU64,
}

impl Memory {
    /// Opens (or creates) the memory at `path`.
    pub fn open(path: &Path) -> Result<Memory, String> {
        let describe = |e: rusqlite::Error| format!("sieve.vacation_db {}: {e}", path.display());
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| format!("sieve.vacation_db {}: {e}", parent.display()))?;
        }
        let connection = rusqlite::Connection::open(path).map_err(describe)?;
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = FULL;
                 CREATE TABLE IF NOT EXISTS vacation (
                     user TEXT NOT NULL,
                     sender TEXT NOT NULL,
                     handle TEXT NOT NULL,
                     quiet_until_unix_s INTEGER NOT NULL,
                     PRIMARY KEY (user, sender, handle)
                 );",
            )
            .map_err(describe)?;
        Ok(Memory { connection: Mutex::new(connection), takes: 0.into() })
    }

    /// Whether `user` answers `sender` now (`now_unix_s`) for `handle`; if
    /// so, the sender is not answered again for `days` days (recorded
    /// before this returns).
    pub fn take(&self, user: &str, sender: &str, handle: &str, days: u64, now_unix_s: u64) -> Result<bool, String> {
        let connection = self.connection.lock().map_err(|_| "vacation memory lock poisoned".to_string())?;
        let sender = sender.to_lowercase();
        let quiet: Option<i64> = connection
            .query_row(
                "SELECT quiet_until_unix_s FROM vacation WHERE user = ?1 AND sender = ?2 AND handle = ?3",
                rusqlite::params![user, sender, handle],
                |row| row.get(0),
            )
            .map(Some)
            .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(None) } else { Err(e) })
            .map_err(|e| e.to_string())?;
        if quiet.is_some_and(|until| until > now_unix_s as i64) {
            return Ok(false);
        }
        let until = now_unix_s.saturating_add(days.clamp(1, DAYS_MAX) * 86_400);
        connection
            .execute(
                "INSERT OR REPLACE INTO vacation (user, sender, handle, quiet_until_unix_s) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![user, sender, handle, until as i64],
            )
            .map_err(|e| e.to_string())?;
        let takes = self.takes.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if takes % PURGE_EVERY == 0 {
            let _ = connection
                .execute("DELETE FROM vacation WHERE quiet_until_unix_s <= ?1", rusqlite::params![now_unix_s as i64]);
        }
        Ok(true)
    }
}

/// What a response needs from the original message.
pub struct Original<'a> {
    /// The `Message-ID:` of the message answered, if it had one.
    pub message_id: Option<&'a str>,
    /// Its `Subject:` (decoded), for the default `Auto: ` subject.
    pub subject: Option<&'a str>,
}

/// The response to queue: `from` (the user, or `:from`) to `to` (the
/// envelope sender), with RFC 3834's `Auto-Submitted: auto-replied` and
/// threading fields. `reason` is the body (plain UTF-8 text), or with
/// `mime` a MIME entity (its own header fields, an empty line, its body).
pub struct Response<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub subject: &'a str,
    pub reason: &'a str,
    pub mime: bool,
    pub hostname: &'a str,
    pub date: std::time::SystemTime,
    pub unique: &'a str,
}

/// The response message, with CRLF line ends.
pub fn compose(response: &Response<'_>, original: &Original<'_>) -> Vec<u8> {
    let mut out = String::new();
    let clean = |text: &str| text.chars().filter(|c| !c.is_control()).collect::<String>();
    let subject = clean(response.subject);
    let subject = match original.subject {
        _ if !subject.is_empty() => subject,
        Some(s) => format!("Auto: {}", clean(s)),
        None => "Auto: (no subject)".to_string(),
    };
    let subject = cut(&subject, SUBJECT_BYTES_MAX);
    out.push_str(&format!("From: <{}>\r\n", clean(response.from)));
    out.push_str(&format!("To: <{}>\r\n", clean(response.to)));
    out.push_str(&format!("Subject: {}\r\n", encode_if_needed(subject)));
    out.push_str(&format!("Date: {}\r\n", crate::smtp::received::rfc5322_date(response.date)));
    out.push_str(&format!("Message-ID: <{}.vacation@{}>\r\n", response.unique, response.hostname));
    if let Some(id) = original.message_id.map(clean).filter(|id| !id.is_empty()) {
        out.push_str(&format!("In-Reply-To: {id}\r\nReferences: {id}\r\n"));
    }
    out.push_str("Auto-Submitted: auto-replied (vacation)\r\nPrecedence: bulk\r\nMIME-Version: 1.0\r\n");
    let reason = cut(response.reason, REASON_BYTES_MAX);
    if response.mime {
        // The reason is a MIME entity: its header fields follow ours.
        out.push_str(&crlf(reason));
    } else {
        out.push_str("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n");
        out.push_str(&crlf(reason));
    }
    if !out.ends_with("\r\n") {
        out.push_str("\r\n");
    }
    out.into_bytes()
}

fn cut(text: &str, max_bytes: usize) -> &str {
    if text.len() <= max_bytes {
        return text;
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Every line end as CRLF, and a leading dot left as it is (the queue
/// stores content unstuffed).
fn crlf(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\r', "\n").replace('\n', "\r\n")
}

/// A subject with non-ASCII text as one RFC 2047 B encoded-word per
/// 45-octet piece (so no line exceeds 78 characters by much).
fn encode_if_needed(subject: &str) -> String {
    if subject.is_ascii() {
        return subject.to_string();
    }
    let mut words = Vec::new();
    let mut piece = String::new();
    for c in subject.chars() {
        if piece.len() + c.len_utf8() > 45 {
            words.push(format!("=?utf-8?B?{}?=", base64(piece.as_bytes())));
            piece.clear();
        }
        piece.push(c);
    }
    if !piece.is_empty() {
        words.push(format!("=?utf-8?B?{}?=", base64(piece.as_bytes())));
    }
    words.join("\r\n ")
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sender_is_answered_once_per_period_and_per_handle() {
        let dir = crate::testing::tempdir("vacation-memory");
        let memory = Memory::open(&dir.join("v.sqlite")).unwrap();
        let day = 86_400;
        assert!(memory.take("bob", "Alice@Example.org", "h", 7, 1_000).unwrap());
        assert!(!memory.take("bob", "alice@example.org", "h", 7, 1_000 + day).unwrap(), "the same sender, any case");
        assert!(memory.take("bob", "alice@example.org", "other", 7, 1_000 + day).unwrap(), "another handle");
        assert!(memory.take("carol", "alice@example.org", "h", 7, 1_000 + day).unwrap(), "another user");
        assert!(memory.take("bob", "alice@example.org", "h", 7, 1_000 + 7 * day).unwrap(), "after the period");
        // Remembered across a reopen.
        drop(memory);
        let memory = Memory::open(&dir.join("v.sqlite")).unwrap();
        assert!(!memory.take("bob", "alice@example.org", "h", 7, 1_000 + 8 * day).unwrap());
    }

    #[test]
    fn the_response_is_an_auto_reply_in_the_thread() {
        let response = Response {
            from: "bob@example.org",
            to: "alice@example.net",
            subject: "",
            reason: "I am away.\nBack on Monday.",
            mime: false,
            hostname: "mx.example.org",
            date: std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_000_000),
            unique: "0001",
        };
        let original = Original { message_id: Some("<m1@example.net>"), subject: Some("Lunch?") };
        let text = String::from_utf8(compose(&response, &original)).unwrap();
        assert!(
            text.contains("From: <bob@example.org>\r\nTo: <alice@example.net>\r\nSubject: Auto: Lunch?\r\n"),
            "{text}"
        );
        assert!(text.contains("In-Reply-To: <m1@example.net>\r\nReferences: <m1@example.net>\r\n"));
        assert!(text.contains("Auto-Submitted: auto-replied (vacation)\r\n"));
        assert!(text.ends_with("\r\n\r\nI am away.\r\nBack on Monday.\r\n"), "{text}");
        let utf8 = Response { subject: "Abwesend – zurück am Montag", ..response };
        let text = String::from_utf8(compose(&utf8, &original)).unwrap();
        assert!(text.contains("Subject: =?utf-8?B?"), "{text}");
    }
}
