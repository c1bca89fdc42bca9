//! The result of running a script: the actions in order, whether the
//! implicit keep applies, and their compact versioned byte form for the
//! queue's envelope (so a retry carries out the same decision without
//! running the script again).
//!
//! Byte form, version 1: `0x53 0x01`, a flags byte (bit 0: implicit keep),
//! a varint count, then per action a kind byte and its fields; strings are
//! a varint length and UTF-8 bytes, booleans one byte, numbers varints.
//! [`Actions::from_bytes`] checks every length and never panics.

use std::fmt;

/// One action for the caller to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Store in the default mailbox (an explicit `keep`).
    Keep,
    FileInto {
        folder: String,
        copy: bool,
    },
    Redirect {
        address: String,
        copy: bool,
    },
    /// The script discarded the message (cancels the implicit keep only).
    Discard,
    /// `reject` (`extended: false`, an MDN or SMTP refusal) or `ereject`
    /// (`extended: true`, refuse at SMTP level when possible).
    Reject {
        text: String,
        extended: bool,
    },
    Vacation(Vacation),
}

/// A vacation response to send, with its RFC 5230 parameters. Sending it
/// and remembering `handle` per sender for `days` are the caller's job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vacation {
    /// The address to respond to (the envelope sender).
    pub to: String,
    /// `:from`, if given (else the caller uses the recipient).
    pub from: Option<String>,
    /// `:subject`, or "Auto: " and the original subject.
    pub subject: String,
    /// The reason (the body, or a MIME entity with `mime`).
    pub reason: String,
    pub mime: bool,
    /// Days before the same sender gets a response again (at least 1).
    pub days: u64,
    /// `:handle`, or one derived from reason, subject, from and mime.
    pub handle: String,
    /// The user's addresses that were checked (recipient, `:addresses`).
    pub addresses: Vec<String>,
    /// Why no response may be sent (RFC 3834, RFC 5230 section 4.5):
    /// `None` means the response is to be sent, subject to the caller's
    /// once-per-`days` memory.
    pub skipped: Option<String>,
}

/// The actions of one evaluation, in the order the script gave them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Actions {
    pub list: Vec<Action>,
    /// The implicit keep (RFC 5228 section 2.10.2) applies: the message is
    /// also stored in the default mailbox. It is not in `list`, and it is
    /// false when `list` already stores there (`Keep`, `FileInto` "INBOX",
    /// which appear at most once between them).
    pub implicit_keep: bool,
}

/// The byte form could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sieve actions: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

const MAGIC: u8 = 0x53;
const VERSION: u8 = 1;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, DecodeError> {
        let v = *self.b.get(self.i).ok_or(DecodeError("truncated"))?;
        self.i += 1;
        Ok(v)
    }
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError("varint too long"))
    }
    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError("bad boolean")),
        }
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        let n = usize::try_from(self.varint()?).map_err(|_| DecodeError("string too long"))?;
        let end = self.i.checked_add(n).ok_or(DecodeError("string too long"))?;
        let s = self.b.get(self.i..end).ok_or(DecodeError("truncated string"))?;
        self.i = end;
        String::from_utf8(s.to_vec()).map_err(|_| DecodeError("string is not UTF-8"))
    }
    fn opt_string(&mut self) -> Result<Option<String>, DecodeError> {
        Ok(if self.bool()? { Some(self.string()?) } else { None })
    }
}

impl Actions {
    /// The compact byte form (see the module comment).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = vec![MAGIC, VERSION, u8::from(self.implicit_keep)];
        put_varint(&mut out, self.list.len() as u64);
        for a in &self.list {
            match a {
                Action::Keep => out.push(1),
                Action::FileInto { folder, copy } => {
                    out.push(2);
                    put_str(&mut out, folder);
                    out.push(u8::from(*copy));
                }
                Action::Redirect { address, copy } => {
                    out.push(3);
                    put_str(&mut out, address);
                    out.push(u8::from(*copy));
                }
                Action::Discard => out.push(4),
                Action::Reject { text, extended } => {
                    out.push(5);
                    put_str(&mut out, text);
                    out.push(u8::from(*extended));
                }
                Action::Vacation(v) => {
                    out.push(6);
                    put_str(&mut out, &v.to);
                    for o in [&v.from, &v.skipped] {
                        match o {
                            Some(s) => {
                                out.push(1);
                                put_str(&mut out, s);
                            }
                            None => out.push(0),
                        }
                    }
                    put_str(&mut out, &v.subject);
                    put_str(&mut out, &v.reason);
                    out.push(u8::from(v.mime));
                    put_varint(&mut out, v.days);
                    put_str(&mut out, &v.handle);
                    put_varint(&mut out, v.addresses.len() as u64);
                    for a in &v.addresses {
                        put_str(&mut out, a);
                    }
                }
            }
        }
        out
    }

    /// Decodes [`Actions::to_bytes`] output; any other input is an error.
    pub fn from_bytes(b: &[u8]) -> Result<Actions, DecodeError> {
        let mut r = Reader { b, i: 0 };
        if r.byte()? != MAGIC {
            return Err(DecodeError("not a sieve action list"));
        }
        if r.byte()? != VERSION {
            return Err(DecodeError("unknown version"));
        }
        let flags = r.byte()?;
        if flags > 1 {
            return Err(DecodeError("unknown flags"));
        }
        let n = r.varint()?;
        let mut list = Vec::new();
        for _ in 0..n {
            let a = match r.byte()? {
                1 => Action::Keep,
                2 => Action::FileInto { folder: r.string()?, copy: r.bool()? },
                3 => Action::Redirect { address: r.string()?, copy: r.bool()? },
                4 => Action::Discard,
                5 => Action::Reject { text: r.string()?, extended: r.bool()? },
                6 => {
                    let to = r.string()?;
                    let from = r.opt_string()?;
                    let skipped = r.opt_string()?;
                    let subject = r.string()?;
                    let reason = r.string()?;
                    let mime = r.bool()?;
                    let days = r.varint()?;
                    let handle = r.string()?;
                    let k = r.varint()?;
                    let mut addresses = Vec::new();
                    for _ in 0..k {
                        addresses.push(r.string()?);
                    }
                    Action::Vacation(Vacation { to, from, subject, reason, mime, days, handle, addresses, skipped })
                }
                _ => return Err(DecodeError("unknown action")),
            };
            list.push(a);
        }
        if r.i != b.len() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(Actions { list, implicit_keep: flags == 1 })
    }
}

/// Quotes a string for the one-line action format: `"` and `\` escaped,
/// control characters as `\n`, `\r`, `\t` or `\xHH`.
pub fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl fmt::Display for Action {
    /// One line: `keep`, `fileinto "F"` (`fileinto :copy "F"`), `redirect
    /// "a"`, `discard`, `reject "t"`, `ereject "t"`, `vacation to "s"
    /// subject "…"` or `vacation skipped: REASON`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Keep => write!(f, "keep"),
            Action::FileInto { folder, copy } => {
                write!(f, "fileinto {}{}", if *copy { ":copy " } else { "" }, quote(folder))
            }
            Action::Redirect { address, copy } => {
                write!(f, "redirect {}{}", if *copy { ":copy " } else { "" }, quote(address))
            }
            Action::Discard => write!(f, "discard"),
            Action::Reject { text, extended } => {
                write!(f, "{} {}", if *extended { "ereject" } else { "reject" }, quote(text))
            }
            Action::Vacation(v) => match &v.skipped {
                Some(why) => write!(f, "vacation skipped: {why}"),
                None => write!(f, "vacation to {} subject {} days {}", quote(&v.to), quote(&v.subject), v.days),
            },
        }
    }
}
