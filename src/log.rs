//! Log lines: one line per event, `key=value` pairs on stderr, so that a
//! postmaster can grep by queue id, client or status and a program can parse
//! them. Values with spaces, quotes or `=` are quoted. `--log-format json`
//! writes the same event as one JSON object per line (`{"ts":…,"event":…,
//! key: value…}`, every value a string) for log shippers; `[log] syslog =
//! true` sends each line to the local syslog socket (the journal's
//! `/dev/log`) with facility mail instead of stderr. Every line about one
//! message carries its queue id as `id`.
//!
//! Place in the pipeline: every stage (ingress, queue, delivery) reports here;
//! nothing reads it back.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// How lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `ts=… event=… key=value …`
    KeyValue,
    /// `{"ts":"…","event":"…","key":"value",…}`
    Json,
}

/// Which events are written (`log.level`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Every event.
    Info,
    /// Only the events that report a problem ([`is_warning`]).
    Warning,
}

static FORMAT: AtomicU8 = AtomicU8::new(0);
static LEVEL: AtomicU8 = AtomicU8::new(0);
static SYSLOG: OnceLock<UnixDatagram> = OnceLock::new();
/// syslog priority: facility mail (2) × 8 + severity info (6).
const SYSLOG_PRIORITY: u32 = 2 * 8 + 6;
/// syslog priority of an event that reports a problem: severity warning (4).
const SYSLOG_PRIORITY_WARNING: u32 = 2 * 8 + 4;
/// Longest datagram sent to syslog (longer lines are cut).
const SYSLOG_LINE_BYTES_MAX: usize = 8 * 1024;

/// Chooses the format of every later line.
pub fn set_format(format: Format) {
    FORMAT.store(if format == Format::Json { 1 } else { 0 }, Ordering::Relaxed);
}

/// Chooses which later events are written (`log.level`, changed by a reload).
pub fn set_level(level: Level) {
    LEVEL.store(if level == Level::Warning { 1 } else { 0 }, Ordering::Relaxed);
}

/// Whether an event reports a problem, by its name: what `log.level =
/// "warning"` keeps, and what syslog gets with severity warning.
pub fn is_warning(event: &str) -> bool {
    event == "fatal" || WARNING_SUFFIXES.iter().any(|suffix| event.ends_with(suffix))
}

/// Endings of the names of events that report a problem.
const WARNING_SUFFIXES: &[&str] = &["_error", "_failed", "_timeout", "_unusable", "_needs_restart"];

/// Sends every later line to the syslog socket at `path` (with facility
/// mail) instead of stderr.
pub fn use_syslog(path: &std::path::Path) -> Result<(), String> {
    let socket = UnixDatagram::unbound().map_err(|e| format!("syslog: {e}"))?;
    socket.connect(path).map_err(|e| format!("syslog socket {}: {e}", path.display()))?;
    let _ = SYSLOG.set(socket);
    Ok(())
}

/// Writes one log line: `ts=<unix.millis> event=<event> k=v ...`.
pub fn event(event: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
    let warning = is_warning(event);
    if !warning && LEVEL.load(Ordering::Relaxed) == 1 {
        return;
    }
    BUFFERS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffers) => {
            let (line, value) = &mut *buffers;
            write_event(line, value, event, warning, fields);
            // A rare long line does not keep its memory.
            if line.capacity() > LINE_BYTES_KEPT_MAX {
                *line = String::with_capacity(LINE_BYTES_INITIAL);
            }
            if value.capacity() > LINE_BYTES_KEPT_MAX {
                *value = String::new();
            }
        }
        // A value's Display that logs (none does) gets buffers of its own.
        Err(_) => write_event(&mut String::new(), &mut String::new(), event, warning, fields),
    });
}

thread_local! {
    /// The line being built and one value's text, reused by every line a
    /// thread writes: formatting allocates nothing once they have grown.
    static BUFFERS: std::cell::RefCell<(String, String)> =
        std::cell::RefCell::new((String::with_capacity(LINE_BYTES_INITIAL), String::new()));
}

/// Capacity of a thread's line buffer at first.
const LINE_BYTES_INITIAL: usize = 512;
/// A line buffer grown beyond this by a long line is given back.
const LINE_BYTES_KEPT_MAX: usize = 16 * 1024;

/// Formats one line into `line` (cleared first; `value` is scratch) and
/// writes it.
fn write_event(
    line: &mut String,
    value: &mut String,
    event: &str,
    warning: bool,
    fields: &[(&str, &dyn std::fmt::Display)],
) {
    line.clear();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let json = FORMAT.load(Ordering::Relaxed) == 1;
    if json {
        let _ = write!(line, "{{\"ts\":\"{}.{:03}\",\"event\":", now.as_secs(), now.subsec_millis());
        push_json(line, event);
    } else {
        let _ = write!(line, "ts={}.{:03} event={}", now.as_secs(), now.subsec_millis(), event);
    }
    for (key, val) in fields {
        value.clear();
        let _ = write!(value, "{}", val);
        if json {
            line.push(',');
            push_json(line, key);
            line.push(':');
            push_json(line, value);
        } else {
            line.push(' ');
            line.push_str(key);
            line.push('=');
            push_value(line, value);
        }
    }
    if json {
        line.push('}');
    }
    line.push('\n');
    if let Some(socket) = SYSLOG.get() {
        let mut datagram = format!(
            "<{}>ringpost[{}]: ",
            if warning { SYSLOG_PRIORITY_WARNING } else { SYSLOG_PRIORITY },
            std::process::id()
        )
        .into_bytes();
        let text = line.trim_end().as_bytes();
        datagram.extend_from_slice(&text[..text.len().min(SYSLOG_LINE_BYTES_MAX)]);
        if socket.send(&datagram).is_ok() {
            return;
        }
    }
    // One write per line keeps lines whole when shards log at the same time.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `text` as a JSON string.
fn push_json(line: &mut String, text: &str) {
    line.push('"');
    for c in text.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(line, "\\u{:04x}", c as u32);
            }
            c => line.push(c),
        }
    }
    line.push('"');
}

fn push_value(line: &mut String, value: &str) {
    let plain =
        !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'=' && b != b'\\');
    if plain {
        line.push_str(value);
        return;
    }
    line.push('"');
    for c in value.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(line, "\\x{:02x}", c as u32);
            }
            c => line.push(c),
        }
    }
    line.push('"');
}

#[cfg(test)]
mod tests {
    use super::{is_warning, push_json, push_value};

    #[test]
    fn problems_are_told_from_other_events_by_name() {
        for event in
            ["fatal", "queue_error", "reload_failed", "dnsbl_timeout", "scanner_unusable", "reload_needs_restart"]
        {
            assert!(is_warning(event), "{event}");
        }
        for event in ["queued", "delivered", "reload", "connect", "error_count"] {
            assert!(!is_warning(event), "{event}");
        }
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        push_json(&mut s, "a\"b\\c\n\u{1}é");
        assert_eq!(s, "\"a\\\"b\\\\c\\n\\u0001é\"");
    }

    #[test]
    fn values_are_quoted_when_needed() {
        let mut s = String::new();
        push_value(&mut s, "plain");
        assert_eq!(s, "plain");
        s.clear();
        push_value(&mut s, "two words");
        assert_eq!(s, "\"two words\"");
        s.clear();
        push_value(&mut s, "");
        assert_eq!(s, "\"\"");
        s.clear();
        push_value(&mut s, "a\"b\r\n");
        assert_eq!(s, "\"a\\\"b\\r\\n\"");
    }
}
