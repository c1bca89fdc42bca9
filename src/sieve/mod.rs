//! Sieve mail filtering (RFC 5228) as a sans-IO library: compile a user's
//! script once, evaluate it per recipient, get back the actions to carry
//! out. No file, socket or clock is touched here; delivery, sending
//! vacation responses and remembering who got one are the caller's.
//!
//! Place: the MTA evaluates a user's script at RCPT time with the envelope
//! only ([`Outcome::NeedsContent`] says the script needs the message) and
//! again at the final dot with the header block and size; the resulting
//! [`Actions`] are stored in the queue's envelope ([`Actions::to_bytes`])
//! so a retry does not run the script again.
//!
//! Supported: `require`, `if`/`elsif`/`else`, `stop`, `keep`, `discard`,
//! `redirect`, `fileinto`, the tests `address`, `header`, `envelope`,
//! `exists`, `size`, `allof`, `anyof`, `not`, `true`, `false`; the
//! extensions fileinto, reject and ereject (RFC 5429), envelope, variables
//! (RFC 5229), relational (RFC 5231), subaddress (RFC 5233, separator
//! `+`), copy (RFC 3894), vacation (RFC 5230) and the comparators
//! `i;octet`, `i;ascii-casemap`, `i;ascii-numeric`. See docs/sieve.md.
//!
//! Layout: `lexer` → `parser` (generic tree) → `compile` (checked program)
//! → `interp` (evaluation, using `matcher` and `message`) → `actions`.

mod actions;
mod compile;
mod interp;
mod lexer;
mod matcher;
mod message;
mod parser;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

pub use actions::{quote, Action, Actions, DecodeError, Vacation};

/// Bounds on scripts and their evaluation. Every one is enforced; going
/// over one is a [`CompileError`] or an [`Outcome::Error`], never a panic.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest script accepted, in bytes.
    pub max_script_size: usize,
    /// Deepest nesting of blocks and tests.
    pub max_nesting: usize,
    /// Commands, tests, comparisons and matcher steps per evaluation.
    pub max_steps: u64,
    /// Distinct redirect targets per message.
    pub max_redirects: usize,
    /// Actions per evaluation.
    pub max_actions: usize,
    /// Variables per evaluation.
    pub max_variables: usize,
    /// Longest value of a variable or expanded string, in bytes.
    pub max_string_len: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_script_size: 1 << 20,
            max_nesting: 32,
            max_steps: 100_000,
            max_redirects: 4,
            max_actions: 32,
            max_variables: 128,
            max_string_len: 4096,
        }
    }
}

/// A compile error with its position (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

impl std::error::Error for CompileError {}

/// A compiled script: cheap to clone and share between threads.
#[derive(Debug, Clone)]
pub struct Script {
    prog: Arc<compile::Program>,
}

impl Script {
    /// Whether some path through the script needs the message (a header,
    /// address, exists or size test, or vacation). A script for which this
    /// is false never returns [`Outcome::NeedsContent`].
    pub fn needs_content_statically(&self) -> bool {
        self.prog.uses_content
    }

    /// Whether the script can refuse the message (it requires `reject` or
    /// `ereject`; without them `reject` does not compile).
    pub fn can_reject(&self) -> bool {
        self.prog.can_reject
    }
}

/// Compiles a script.
pub fn compile(text: &[u8], limits: &Limits) -> Result<Script, CompileError> {
    if text.len() > limits.max_script_size {
        return Err(CompileError {
            line: 1,
            column: 1,
            message: format!("script too large ({} bytes, at most {})", text.len(), limits.max_script_size),
        });
    }
    let (toks, lex_error) = lexer::tokenize_prefix(text);
    let tree = match lex_error {
        None => parser::parse(&toks, limits.max_nesting, end_position(text))?,
        // The first error in the script wins: a syntax error before the
        // lexical one, else the lexical one.
        Some(lex) => {
            let at = (lex.line, lex.column);
            match parser::parse(&toks, limits.max_nesting, at) {
                Err(e) if (e.line, e.column) < at => return Err(e),
                _ => return Err(lex),
            }
        }
    };
    let prog = compile::compile(&tree)?;
    Ok(Script { prog: Arc::new(prog) })
}

fn end_position(text: &[u8]) -> (usize, usize) {
    let line = 1 + text.iter().filter(|&&b| b == b'\n').count();
    let last = text.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    (line, 1 + text.len() - last)
}

/// The SMTP envelope as the script sees it.
#[derive(Debug, Clone, Default)]
pub struct Envelope {
    /// The reverse-path without angle brackets; empty for `<>`.
    pub sender: String,
    /// The recipient address as given in RCPT TO.
    pub recipient: String,
    /// The user's other addresses, for the vacation recipient check (the
    /// recipient and `:addresses` are always included).
    pub user_addresses: Vec<String>,
    pub client_ip: Option<IpAddr>,
}

/// The message, when it is there (at the final dot).
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// The raw header section (up to and optionally including the empty line).
    pub header: &'a [u8],
    /// The size of the whole message in bytes, for the `size` test.
    pub size: u64,
}

impl<'a> Message<'a> {
    /// Splits a whole RFC 5322 message: its header section and its size.
    pub fn from_whole(msg: &'a [u8]) -> Message<'a> {
        let end = find_header_end(msg);
        Message { header: &msg[..end], size: msg.len() as u64 }
    }
}

fn find_header_end(msg: &[u8]) -> usize {
    let mut i = 0;
    while i < msg.len() {
        let line_end = msg[i..].iter().position(|&b| b == b'\n').map_or(msg.len(), |p| i + p + 1);
        let line = &msg[i..line_end];
        if line == b"\n" || line == b"\r\n" {
            return i;
        }
        i = line_end;
    }
    msg.len()
}

/// What a script is evaluated over.
#[derive(Debug, Clone, Default)]
pub struct Input<'a> {
    pub envelope: Envelope,
    /// `None` at RCPT time.
    pub message: Option<Message<'a>>,
}

/// The result of one evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done(Actions),
    /// The evaluation reached a test that needs the message and none was
    /// given: evaluate again with the message.
    NeedsContent,
    /// A runtime error (a limit, a reject conflict, …): the caller keeps
    /// the message (implicit keep) and logs the text.
    Error(String),
}

/// Evaluates a script over an input.
pub fn evaluate(script: &Script, input: &Input, limits: &Limits) -> Outcome {
    interp::evaluate(&script.prog, input, limits)
}

/// Whether some path of the script needs the message; see
/// [`Script::needs_content_statically`].
pub fn needs_content_statically(script: &Script) -> bool {
    script.needs_content_statically()
}

/// The vacation decision on its own: why no response may be sent to
/// `sender` for a message with this header block, given the user's
/// addresses, or `None` if one may.
pub fn vacation_skip_reason(header: &[u8], sender: &str, user_addresses: &[String]) -> Option<String> {
    interp::vacation_skip(&message::parse_header(header), sender, user_addresses)
}
