//! Log lines: one line per event, `key=value` pairs on stderr, so that a
//! postmaster can grep by queue id, client or status and a program can parse
//! them. Values with spaces, quotes or `=` are quoted.
//!
//! Place in the pipeline: every stage (ingress, queue, delivery) reports here;
//! nothing reads it back.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// Writes one log line: `ts=<unix.millis> event=<event> k=v ...`.
pub fn event(event: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
    let mut line = String::with_capacity(128);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let _ = write!(line, "ts={}.{:03} event={}", now.as_secs(), now.subsec_millis(), event);
    let mut value = String::new();
    for (key, val) in fields {
        value.clear();
        let _ = write!(value, "{}", val);
        line.push(' ');
        line.push_str(key);
        line.push('=');
        push_value(&mut line, &value);
    }
    line.push('\n');
    // One write per line keeps lines whole when shards log at the same time.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

fn push_value(line: &mut String, value: &str) {
    let plain = !value.is_empty()
        && value.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '=' && c != '\\');
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
    use super::push_value;

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
