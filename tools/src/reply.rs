//! Parsing SMTP replies on the client side.
//!
//! A reply is one or more lines `NNN-text` ending with a line `NNN text`
//! (RFC 5321 section 4.2). The parser works on a byte buffer and never
//! panics: it reports a complete reply, that more bytes are needed, or a
//! typed error for input no server should send.

/// Longest reply accepted (all lines together).
pub const REPLY_BYTES_MAX: usize = 64 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub enum ReplyError {
    TooLong,
    BadCode,
}

/// A complete reply: its code, bytes consumed, and whether any line
/// announced PIPELINING (only meaningful for an EHLO reply).
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub consumed_bytes: usize,
    pub pipelining: bool,
}

/// Parses the first reply in `buf`; `Ok(None)` means incomplete.
pub fn parse_reply(buf: &[u8]) -> Result<Option<Reply>, ReplyError> {
    let mut pos = 0;
    let mut pipelining = false;
    loop {
        let Some(nl) = buf[pos..].iter().position(|&b| b == b'\n') else {
            return if buf.len() > REPLY_BYTES_MAX {
                Err(ReplyError::TooLong)
            } else {
                Ok(None)
            };
        };
        let line = &buf[pos..pos + nl + 1];
        pos += nl + 1;
        if pos > REPLY_BYTES_MAX {
            return Err(ReplyError::TooLong);
        }
        if line.len() < 4 || !line[..3].iter().all(u8::is_ascii_digit) {
            // A bare "NNN\r\n" is legal: code only.
            if line.len() >= 3
                && line[..3].iter().all(u8::is_ascii_digit)
                && line[3..].trim_ascii().is_empty()
            {
                return Ok(Some(Reply {
                    code: code_of(line),
                    consumed_bytes: pos,
                    pipelining,
                }));
            }
            return Err(ReplyError::BadCode);
        }
        let text = line[4..].trim_ascii();
        if text.eq_ignore_ascii_case(b"PIPELINING") {
            pipelining = true;
        }
        match line[3] {
            b'-' => continue,
            b' ' | b'\r' | b'\n' => {
                return Ok(Some(Reply {
                    code: code_of(line),
                    consumed_bytes: pos,
                    pipelining,
                }))
            }
            _ => return Err(ReplyError::BadCode),
        }
    }
}

fn code_of(line: &[u8]) -> u16 {
    line[..3]
        .iter()
        .fold(0u16, |acc, &d| acc * 10 + u16::from(d - b'0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multi() {
        let r = parse_reply(b"250 ok\r\nrest").unwrap().unwrap();
        assert_eq!((r.code, r.consumed_bytes, r.pipelining), (250, 8, false));
        let ehlo = b"250-host\r\n250-PIPELINING\r\n250 SIZE 10\r\n";
        let r = parse_reply(ehlo).unwrap().unwrap();
        assert_eq!((r.code, r.consumed_bytes, r.pipelining), (250, ehlo.len(), true));
        assert_eq!(parse_reply(b"250-host\r\n250-PIPE").unwrap(), None);
        assert_eq!(parse_reply(b"354\r\n").unwrap().unwrap().code, 354);
        assert_eq!(parse_reply(b"xyz\r\n"), Err(ReplyError::BadCode));
    }
}
