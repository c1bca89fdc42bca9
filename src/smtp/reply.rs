//! SMTP replies (RFC 5321 §4.2) with enhanced status codes (RFC 2034, RFC 3463).

use std::fmt::Write as _;

/// An enhanced status code `class.subject.detail`, e.g. `5.1.1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Enhanced(pub u8, pub u16, pub u16);

impl std::fmt::Display for Enhanced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// One SMTP reply, possibly multi-line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<Enhanced>,
    /// Text lines, without code, enhanced code or CRLF. Never empty.
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, enhanced: Enhanced, text: impl Into<String>) -> Reply {
        debug_assert!((200..600).contains(&code));
        debug_assert_eq!(u16::from(enhanced.0), code / 100, "enhanced class matches reply class");
        Reply { code, enhanced: Some(enhanced), lines: vec![text.into()] }
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// Appends the wire form (every line with code, enhanced code, CRLF).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let n = self.lines.len();
        let mut s = String::new();
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i + 1 == n { ' ' } else { '-' };
            s.clear();
            match self.enhanced {
                Some(e) => write!(s, "{}{}{} {}\r\n", self.code, sep, e, line),
                None => write!(s, "{}{}{}\r\n", self.code, sep, line),
            }
            .expect("writing to a String cannot fail");
            out.extend_from_slice(s.as_bytes());
        }
    }

    /// One-line text form for logs and DSNs: `550 5.1.1 text`.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = write!(s, "{}", self.code);
        if let Some(e) = self.enhanced {
            let _ = write!(s, " {}", e);
        }
        for l in &self.lines {
            s.push(' ');
            s.push_str(l);
        }
        s
    }
}
