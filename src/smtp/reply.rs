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

    /// Appends the wire form (every line with code, enhanced code, CRLF),
    /// straight into `out`: no string per line.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        // Room for the whole reply at once (an enhanced code is at most
        // "5.999.999 "): one allocation into an empty buffer, not one per
        // doubling.
        out.reserve(self.lines.iter().map(|line| line.len() + 4 + 10 + 2).sum());
        let n = self.lines.len();
        for (i, line) in self.lines.iter().enumerate() {
            out.extend_from_slice(itoa_code(self.code).as_slice());
            out.push(if i + 1 == n { b' ' } else { b'-' });
            if let Some(e) = self.enhanced {
                let _ = std::io::Write::write_fmt(out, format_args!("{e} "));
            }
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// One-line text form for logs and DSNs: `550 5.1.1 text`.
    pub fn summary(&self) -> String {
        let text_bytes: usize = self.lines.iter().map(|l| l.len() + 1).sum();
        let mut s = String::with_capacity(12 + text_bytes);
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

/// The three digits of a reply code (100..=999; others are clamped, as no
/// reply carries one).
fn itoa_code(code: u16) -> [u8; 3] {
    let code = code.clamp(100, 999);
    [b'0' + (code / 100) as u8, b'0' + (code / 10 % 10) as u8, b'0' + (code % 10) as u8]
}
