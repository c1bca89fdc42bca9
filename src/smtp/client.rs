//! The outbound SMTP client state machine (RFC 5321 with SIZE, PIPELINING,
//! 8BITMIME, SMTPUTF8, CHUNKING, BINARYMIME, DSN and enhanced status codes),
//! sans-IO: one transaction (one sender, its recipients, one message) over
//! one connection. The driver feeds the bytes the server sent and the
//! current time, writes what `take_output()` returns, and streams the
//! content when asked to.
//!
//! Text content (7bit, 8BITMIME) goes after DATA, dot-stuffed by the driver,
//! or, when it fits in one chunk and the server offers CHUNKING and
//! PIPELINING, as it is stored in BDAT chunks written with MAIL and RCPT
//! (RFC 3030 §4.2: no 354 to wait for; if every RCPT is refused the server
//! refuses the chunk, whose octets were then sent for nothing). LMTP keeps
//! DATA.
//! Binary content (BODY=BINARYMIME, RFC 3030) goes in BDAT chunks of at most
//! `BDAT_CHUNK_BYTES_MAX` octets exactly as stored: the driver hands each
//! block to `bdat_chunk()`, which frames it. Only a server offering both
//! CHUNKING and BINARYMIME gets it; any other fails those recipients with
//! 554 5.6.3 before MAIL, as 8-bit content to a server without 8BITMIME
//! does (content is never converted). The chunks follow the replies to
//! RCPT; with PIPELINING up to `BDAT_IN_FLIGHT_MAX` chunks wait for their
//! replies at once, without it (and in LMTP, whose final chunk gets one
//! reply per recipient) each chunk waits for the reply to the one before.
//!
//! DSN (RFC 3461): the transaction's RET, ENVID, NOTIFY and ORCPT go on
//! MAIL and RCPT only to a server that offers DSN, and never in LMTP
//! (where ringpost itself reports the final delivery); `Outcome::extensions`
//! tells the driver whether they went, and so whether a success report is
//! still ringpost's to send (RFC 3461 §5.2.2).
//!
//! Place in the pipeline: `src/deliver/` opens the connection, runs one
//! `Client` per attempt and turns the `Outcome` (one result per recipient,
//! in order) into queue records, retries and bounces. Call-forward
//! verification (`crate::verify`) drives the same machine with a probe
//! transaction (`Transaction::probe`): MAIL and RCPT, no content, each
//! RCPT reply the outcome of its recipient, and RSET before the session's
//! next transaction.
//!
//! Bounds: a reply line is at most `REPLY_LINE_BYTES_MAX` bytes and a reply
//! at most `REPLY_LINE_COUNT_MAX` lines; the machine holds at most one
//! incomplete line, one incomplete reply, and no more complete replies than
//! it has commands outstanding (anything more is a protocol error). Every
//! wait has a deadline (RFC 5321 §4.5.3.2).
//!
//! Failure is always per recipient and never a panic: a timeout, a lost
//! connection or a malformed reply makes every recipient without a final
//! answer transient (4.4.2 or 4.5.0), so the message is retried later.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use super::address::BodyType;
use super::dsn::{MailDsn, RcptDsn};
use super::reply::{Enhanced, Reply};

/// Longest reply line the machine accepts, CRLF included.
pub const REPLY_LINE_BYTES_MAX: usize = 4096;
/// Most lines of one (multi-line) reply.
pub const REPLY_LINE_COUNT_MAX: usize = 100;
/// Longest address the machine will put in a command. RFC 5321 §4.5.3.1.3
/// allows 256 octets for a path; UTF-8 addresses (RFC 6531) may need more
/// bytes, so the bound is looser and only keeps commands bounded.
pub const ADDRESS_BYTES_MAX: usize = 1000;
/// Largest BDAT chunk the machine frames.
pub const BDAT_CHUNK_BYTES_MAX: usize = 64 * 1024;
/// Most output buffer capacity a session keeps between writes.
const OUTPUT_BYTES_KEPT_MAX: usize = 4096;
/// Most lines an outcome's transcript keeps.
pub const TRANSCRIPT_LINES_MAX: usize = 200;
/// Most BDAT chunks sent and not yet answered, with PIPELINING: the
/// replies the server queues meanwhile stay few, so neither side blocks.
pub const BDAT_IN_FLIGHT_MAX: usize = 8;

/// How long to wait for each reply (RFC 5321 §4.5.3.2). `data_block` bounds
/// the driver's wait while it writes content (one block to the next).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub greeting: Duration,
    /// EHLO and HELO; RFC 5321 names none, so the MAIL value is the default.
    pub ehlo: Duration,
    pub mail: Duration,
    pub rcpt: Duration,
    /// For the 354 after DATA.
    pub data_init: Duration,
    pub data_block: Duration,
    /// For the reply to the final dot.
    pub data_final: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            greeting: Duration::from_secs(5 * 60),
            ehlo: Duration::from_secs(5 * 60),
            mail: Duration::from_secs(5 * 60),
            rcpt: Duration::from_secs(5 * 60),
            data_init: Duration::from_secs(2 * 60),
            data_block: Duration::from_secs(3 * 60),
            data_final: Duration::from_secs(10 * 60),
        }
    }
}

/// Whether to ask for TLS (RFC 3207) after EHLO.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartTls {
    Never,
    /// When the server offers it.
    IfOffered,
    /// A server that does not offer it fails the transaction (4.7.4).
    Required,
}

/// Settings shared by every connection of a transport.
#[derive(Clone, Debug)]
pub struct ClientParams {
    /// Our name in EHLO/HELO.
    pub helo_name: String,
    pub timeouts: Timeouts,
    /// Use PIPELINING when the server offers it (RFC 2920).
    pub pipelining_enabled: bool,
    /// Send text content of at most `BDAT_CHUNK_BYTES_MAX` octets in one
    /// `BDAT <n> LAST` pipelined with MAIL and RCPT (RFC 3030 §4.2) when
    /// the server offers CHUNKING and PIPELINING, instead of waiting for
    /// the 354 to DATA: one write and one round trip less per message,
    /// and no dot-stuffing. Never in LMTP.
    pub chunking_enabled: bool,
    /// After a transaction that ended cleanly, stay connected instead of
    /// sending QUIT, so that `next_transaction()` can reuse the session.
    pub keep_open: bool,
    pub starttls: StartTls,
    /// Speak LMTP (RFC 2033): LHLO, and one reply per accepted recipient
    /// after the final dot.
    pub lmtp: bool,
    /// Record the commands sent and the replies received in the outcome's
    /// `transcript` (at most `TRANSCRIPT_LINES_MAX` lines), for tools that
    /// show a conversation (`ringpost route --callout`).
    pub transcript: bool,
}

impl ClientParams {
    pub fn new(helo_name: impl Into<String>) -> ClientParams {
        ClientParams {
            helo_name: helo_name.into(),
            timeouts: Timeouts::default(),
            pipelining_enabled: true,
            chunking_enabled: true,
            keep_open: false,
            starttls: StartTls::Never,
            lmtp: false,
            transcript: false,
        }
    }
}

/// One message to one server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    /// Without angle brackets; "" is the null sender `<>`.
    pub reverse_path: String,
    /// Without angle brackets, in canonical wire form. At least one.
    pub recipients: Vec<String>,
    /// Size of the content as stored, for SIZE= (RFC 1870).
    pub size_bytes: u64,
    /// How the content must travel: `SevenBit` after DATA; `EightBitMime`
    /// after DATA with BODY=8BITMIME (RFC 6152); `BinaryMime` in BDAT
    /// chunks with BODY=BINARYMIME (RFC 3030).
    pub body: BodyType,
    /// The message needs SMTPUTF8 (RFC 6531). Non-ASCII addresses imply it.
    pub smtputf8: bool,
    /// A call-forward probe: MAIL and RCPT only, no content. Each RCPT's
    /// reply is that recipient's outcome (2xx `Delivered`); the session
    /// ends with RSET pending (kept open) or QUIT.
    pub probe: bool,
    /// A replica for a peer ringpost (`[replicate]`): MAIL carries
    /// `XREPLICA=<this queue id>`, and a server that does not offer
    /// XREPLICA is refused without asking.
    pub replica_of: Option<String>,
    /// RET and ENVID (RFC 3461), sent with MAIL to a server offering DSN.
    pub mail_dsn: MailDsn,
    /// NOTIFY and ORCPT of each recipient, in the order of `recipients`
    /// (or empty: none), sent with RCPT to a server offering DSN.
    pub rcpt_dsn: Vec<RcptDsn>,
}

impl Transaction {
    /// A call-forward probe from `sender` ("" for `<>`) for `recipients`:
    /// no content, so no size and 7-bit.
    pub fn probe(sender: &str, recipients: Vec<String>) -> Transaction {
        Transaction {
            reverse_path: sender.to_string(),
            recipients,
            size_bytes: 0,
            body: BodyType::SevenBit,
            smtputf8: false,
            probe: true,
            replica_of: None,
            mail_dsn: MailDsn::default(),
            rcpt_dsn: Vec::new(),
        }
    }

    fn needs_smtputf8(&self) -> bool {
        self.smtputf8
            || !self.reverse_path.is_ascii()
            || self.recipients.iter().any(|r| !r.is_ascii())
    }
}

/// What the server offered in its EHLO reply (RFC 5321 §4.1.1.1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    pub pipelining: bool,
    pub size_advertised: bool,
    /// The fixed maximum from `SIZE n`; 0 when none was stated.
    pub size_max_bytes: u64,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub enhanced_status_codes: bool,
    pub starttls: bool,
    /// CHUNKING: BDAT (RFC 3030).
    pub chunking: bool,
    /// BINARYMIME (RFC 3030), usable only with CHUNKING.
    pub binary_mime: bool,
    /// XREPLICA: a ringpost peer that stores replicas from this client.
    pub replica: bool,
    /// DSN (RFC 3461): the server takes NOTIFY, ORCPT, RET and ENVID and
    /// reports on the message itself from here on.
    pub dsn: bool,
}

impl Extensions {
    fn from_keywords(keywords: &[String]) -> Extensions {
        let mut ext = Extensions::default();
        for line in keywords {
            let mut words = line.split_ascii_whitespace();
            match words.next().unwrap_or_default() {
                "PIPELINING" => ext.pipelining = true,
                "SIZE" => {
                    ext.size_advertised = true;
                    ext.size_max_bytes = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
                }
                "8BITMIME" => ext.eight_bit_mime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "ENHANCEDSTATUSCODES" => ext.enhanced_status_codes = true,
                "STARTTLS" => ext.starttls = true,
                "CHUNKING" => ext.chunking = true,
                "BINARYMIME" => ext.binary_mime = true,
                "XREPLICA" => ext.replica = true,
                "DSN" => ext.dsn = true,
                _ => {}
            }
        }
        ext
    }
}

/// The result for one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcptOutcome {
    /// The server took responsibility (2xx to the final dot).
    Delivered(Reply),
    /// Try again later.
    Transient(Reply),
    /// Give up and bounce.
    Permanent(Reply),
}

impl RcptOutcome {
    pub fn reply(&self) -> &Reply {
        match self {
            RcptOutcome::Delivered(r) | RcptOutcome::Transient(r) | RcptOutcome::Permanent(r) => r,
        }
    }

    /// Classifies a reply by its first digit; None for 1xx and 3xx, which
    /// are never final.
    fn from_reply(reply: &Reply) -> Option<RcptOutcome> {
        match reply.code / 100 {
            2 => Some(RcptOutcome::Delivered(reply.clone())),
            4 => Some(RcptOutcome::Transient(reply.clone())),
            5 => Some(RcptOutcome::Permanent(reply.clone())),
            _ => None,
        }
    }
}

/// Everything the attempt found out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// One per recipient of the transaction, in order.
    pub recipients: Vec<RcptOutcome>,
    /// The text of the 220 greeting, lines joined with a space (shared
    /// with the client: every transaction of a session has the same).
    pub server_greeting: Option<Arc<str>>,
    /// The EHLO reply lines after the first, keyword upper-cased (shared
    /// likewise).
    pub ehlo_keywords: Arc<[String]>,
    pub extensions: Extensions,
    /// The reply to the final dot, if the content was sent.
    pub final_reply: Option<Reply>,
    /// The greeting and EHLO (or HELO) succeeded on this connection.
    pub session_established: bool,
    /// The server accepted MAIL FROM for this transaction.
    pub mail_accepted: bool,
    /// The session is at a clean point and open (`keep_open` was set): the
    /// driver may keep the connection for `next_transaction()`.
    pub reusable: bool,
    /// The connection was reused and failed before the server answered
    /// anything of this transaction (it had closed the idle session): the
    /// driver should try the transaction again on a fresh connection.
    pub stale: bool,
    /// The session runs over TLS.
    pub tls: bool,
    /// The TLS handshake failed (the driver said so with `tls_failed()`).
    pub tls_failed: bool,
    /// `C: command` and `S: reply` lines, when `ClientParams::transcript`.
    pub transcript: Vec<String>,
}

/// What the driver should do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// Write `take_output()`, then read from the server and `feed()` it,
    /// or call `on_timeout()` at `deadline()`.
    NeedInput,
    /// Write `take_output()`, then stream the content through
    /// `deliver::dotstuff::DotStuffer` (terminator included) and call
    /// `body_sent()`.
    SendBody,
    /// BINARYMIME, or small text content to a server that offers CHUNKING
    /// (`ClientParams::chunking_enabled`): read the next block of the
    /// content as stored (at most `BDAT_CHUNK_BYTES_MAX` octets; empty at
    /// the end), give it to `bdat_chunk()` with `last` set when no content
    /// follows it, write `take_output()` (the commands before the chunk
    /// and the chunk, in one write), and poll again.
    SendChunk,
    /// The server said 220 to STARTTLS: run the TLS handshake, then call
    /// `tls_started()`, or `tls_failed()`.
    StartTls,
    /// The attempt is over. Write `take_output()` (usually QUIT) without
    /// waiting for the 221, then close the connection.
    Done(Outcome),
}

/// Why a reply could not be parsed or did not fit the conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyError {
    LineTooLong,
    TooManyLines,
    /// Not three digits 2xx..5xx followed by SP, '-' or the line end.
    BadCode,
    /// The lines of one multi-line reply carry different codes.
    CodeMismatch,
    /// A reply with no command outstanding.
    Unexpected,
    /// A code that makes no sense at this point (e.g. 354 to RCPT).
    WrongCode(u16),
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyError::LineTooLong => f.write_str("reply line too long"),
            ReplyError::TooManyLines => f.write_str("reply has too many lines"),
            ReplyError::BadCode => f.write_str("malformed reply code"),
            ReplyError::CodeMismatch => f.write_str("inconsistent codes in multi-line reply"),
            ReplyError::Unexpected => f.write_str("unexpected reply"),
            ReplyError::WrongCode(code) => write!(f, "unexpected reply code {code}"),
        }
    }
}

/// Splits server bytes into replies. Holds one incomplete line and one
/// incomplete reply at most.
#[derive(Debug, Default)]
pub(crate) struct ReplyReader {
    line: Vec<u8>,
    code: Option<u16>,
    enhanced: Option<Enhanced>,
    lines: Vec<String>,
}

impl ReplyReader {
    /// Consumes `input` and returns every reply completed by it. After an
    /// error the reader's state is meaningless; the caller stops using it.
    pub(crate) fn feed(&mut self, input: &[u8], out: &mut Vec<Result<Reply, ReplyError>>) {
        let mut rest = input;
        while !rest.is_empty() {
            let (chunk, complete) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], true),
                None => (rest, false),
            };
            rest = &rest[chunk.len() + usize::from(complete)..];
            // The stored line excludes LF: with it, at most REPLY_LINE_BYTES_MAX.
            if self.line.len() + chunk.len() >= REPLY_LINE_BYTES_MAX {
                out.push(Err(ReplyError::LineTooLong));
                return;
            }
            self.line.extend_from_slice(chunk);
            if complete {
                // The line's buffer is kept for the next line.
                let line = std::mem::take(&mut self.line);
                let taken = self.take_line(&line);
                self.line = line;
                self.line.clear();
                match taken {
                    Ok(Some(reply)) => out.push(Ok(reply)),
                    Ok(None) => {}
                    Err(e) => {
                        out.push(Err(e));
                        return;
                    }
                }
            }
        }
    }

    /// Adds one line (without LF); returns the reply it completes, if any.
    fn take_line(&mut self, line: &[u8]) -> Result<Option<Reply>, ReplyError> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let (code, last, text) = parse_reply_line(line)?;
        if self.code.is_some_and(|c| c != code) {
            return Err(ReplyError::CodeMismatch);
        }
        if self.lines.len() + 1 >= REPLY_LINE_COUNT_MAX && !last {
            return Err(ReplyError::TooManyLines);
        }
        self.code = Some(code);
        let text = String::from_utf8_lossy(text);
        let text = match parse_enhanced(&text, code) {
            Some((enhanced, rest)) => {
                if self.enhanced.is_none() {
                    self.enhanced = Some(enhanced);
                }
                rest.to_string()
            }
            None => text.into_owned(),
        };
        self.lines.push(text);
        if !last {
            return Ok(None);
        }
        self.code = None;
        Ok(Some(Reply {
            code,
            enhanced: self.enhanced.take(),
            lines: std::mem::take(&mut self.lines),
        }))
    }
}

/// Parses `ddd[SP|-]text`; returns the code, whether this is the last line,
/// and the text.
pub fn parse_reply_line(line: &[u8]) -> Result<(u16, bool, &[u8]), ReplyError> {
    let digits = line.get(..3).ok_or(ReplyError::BadCode)?;
    if !digits.iter().all(u8::is_ascii_digit) || !(b'2'..=b'5').contains(&digits[0]) {
        return Err(ReplyError::BadCode);
    }
    let code = digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    match line.get(3) {
        None => Ok((code, true, &[])),
        Some(b' ') => Ok((code, true, &line[4..])),
        Some(b'-') => Ok((code, false, &line[4..])),
        Some(_) => Err(ReplyError::BadCode),
    }
}

/// Parses an enhanced status code (RFC 2034) at the start of `text` whose
/// class matches `code`; returns it and the text after it.
pub fn parse_enhanced(text: &str, code: u16) -> Option<(Enhanced, &str)> {
    let (token, rest) = match text.find(' ') {
        Some(i) => (&text[..i], &text[i + 1..]),
        None => (text, ""),
    };
    let mut parts = token.split('.');
    let class: u8 = parse_status_number(parts.next()?, 1)?.try_into().ok()?;
    let subject = parse_status_number(parts.next()?, 3)?;
    let detail = parse_status_number(parts.next()?, 3)?;
    if parts.next().is_some() || !matches!(class, 2 | 4 | 5) || u16::from(class) != code / 100 {
        return None;
    }
    Some((Enhanced(class, subject, detail), rest))
}

fn parse_status_number(s: &str, digits_max: usize) -> Option<u16> {
    if s.is_empty() || s.len() > digits_max || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A command whose reply is outstanding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Await {
    Greeting,
    Ehlo,
    Helo,
    Mail,
    Rcpt(usize),
    Data,
    Dot,
    Rset,
    StartTls,
    /// LMTP: the reply to the final dot (or BDAT LAST) for the recipient
    /// at this index.
    LmtpDot(usize),
    /// A BDAT chunk; the last one's reply is the final reply (SMTP).
    Bdat {
        last: bool,
    },
}

impl Await {
    fn name(self) -> &'static str {
        match self {
            Await::Greeting => "the greeting",
            Await::Ehlo => "EHLO",
            Await::Helo => "HELO",
            Await::Mail => "MAIL FROM",
            Await::Rcpt(_) => "RCPT TO",
            Await::Data => "DATA",
            Await::Dot => "end of data",
            Await::Rset => "RSET",
            Await::StartTls => "STARTTLS",
            Await::LmtpDot(_) => "end of data",
            Await::Bdat { last: false } => "BDAT",
            Await::Bdat { last: true } => "BDAT LAST",
        }
    }

    fn timeout(self, t: &Timeouts) -> Duration {
        match self {
            Await::Greeting => t.greeting,
            Await::Ehlo | Await::Helo => t.ehlo,
            Await::Mail | Await::Rset | Await::StartTls => t.mail,
            Await::Rcpt(_) => t.rcpt,
            Await::Data => t.data_init,
            Await::Bdat { last: false } => t.data_block,
            Await::Dot | Await::LmtpDot(_) | Await::Bdat { last: true } => t.data_final,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Commands and replies.
    Talking,
    /// The driver is writing the content.
    Body,
    /// The driver is sending BDAT chunks (replies are acted on meanwhile).
    Chunks,
    /// The driver is running the TLS handshake.
    Tls,
    Done,
}

/// One outbound SMTP transaction.
#[derive(Debug)]
pub struct Client {
    params: ClientParams,
    txn: Transaction,
    phase: Phase,
    reader: ReplyReader,
    /// Replies parsed but not yet acted on; never more than `awaiting`.
    replies: VecDeque<Result<Reply, ReplyError>>,
    /// Scratch for the replies one `feed()` completes (kept empty, for its
    /// capacity).
    parsed: Vec<Result<Reply, ReplyError>>,
    /// Commands sent whose replies have not been acted on, in order.
    awaiting: VecDeque<Await>,
    /// The command whose reply is being acted on.
    answering: Option<Await>,
    output: Vec<u8>,
    /// The first bytes of `output` already in the transcript (commands and
    /// BDAT lines before a chunk's content).
    output_noted_bytes: usize,
    deadline: Instant,
    /// The deadline must be re-armed from the next `poll()`'s time.
    rearm: bool,
    now_last: Instant,
    pipelined: bool,
    mail_failed: bool,
    /// Recipients the server accepted and that wait for the final reply.
    accepted: Vec<bool>,
    results: Vec<Option<RcptOutcome>>,
    /// Next recipient to send RCPT for when not pipelining.
    rcpt_next_index: usize,
    greeting: Option<Arc<str>>,
    ehlo_keywords: Arc<[String]>,
    extensions: Extensions,
    final_reply: Option<Reply>,
    outcome: Option<Outcome>,
    session_established: bool,
    mail_accepted: bool,
    /// Set when the transaction ended at a clean point with the session open.
    reusable: bool,
    /// The server may still hold transaction state: RSET before the next.
    needs_rset: bool,
    /// This transaction runs on a session an earlier one used.
    reused: bool,
    /// Replies acted on in this transaction.
    txn_reply_count: usize,
    stale: bool,
    tls_active: bool,
    tls_failed: bool,
    /// A BDAT chunk was refused: the server failed the transaction (RFC 3030
    /// §2); no more chunks, remaining replies are only consumed.
    chunk_failed: bool,
    transcript: Vec<String>,
}

impl Client {
    pub fn new(params: ClientParams, txn: Transaction, now: Instant) -> Client {
        debug_assert!(!txn.recipients.is_empty(), "a transaction has recipients");
        let results = txn
            .recipients
            .iter()
            .map(|r| check_address(r, Enhanced(5, 1, 3)))
            .collect();
        let deadline = now + params.timeouts.greeting;
        let count = txn.recipients.len();
        Client {
            params,
            txn,
            phase: Phase::Talking,
            reader: ReplyReader::default(),
            replies: VecDeque::new(),
            parsed: Vec::new(),
            awaiting: VecDeque::from([Await::Greeting]),
            answering: None,
            output: Vec::new(),
            output_noted_bytes: 0,
            deadline,
            rearm: false,
            now_last: now,
            pipelined: false,
            mail_failed: false,
            accepted: vec![false; count],
            results,
            rcpt_next_index: 0,
            greeting: None,
            ehlo_keywords: Arc::from([]),
            extensions: Extensions::default(),
            final_reply: None,
            outcome: None,
            session_established: false,
            mail_accepted: false,
            reusable: false,
            needs_rset: false,
            reused: false,
            txn_reply_count: 0,
            stale: false,
            tls_active: false,
            tls_failed: false,
            chunk_failed: false,
            transcript: Vec::new(),
        }
    }

    /// The TLS handshake succeeded: EHLO again (RFC 3207 §4.2).
    pub fn tls_started(&mut self, now: Instant) {
        debug_assert_eq!(self.phase, Phase::Tls, "tls_started() only after StartTls");
        if self.phase != Phase::Tls {
            return;
        }
        self.tls_active = true;
        self.phase = Phase::Talking;
        self.extensions = Extensions::default();
        self.ehlo_keywords = Arc::from([]);
        self.send(
            now,
            format!("EHLO {}\r\n", self.params.helo_name),
            Await::Ehlo,
        );
    }

    /// The TLS handshake failed: the connection is unusable.
    pub fn tls_failed(&mut self, now: Instant, error: &str) {
        if self.phase != Phase::Tls {
            return;
        }
        self.now_last = now;
        self.phase = Phase::Talking;
        self.tls_failed = true;
        self.abort(Reply::new(
            451,
            Enhanced(4, 7, 5),
            format!("TLS handshake failed: {error}"),
        ));
    }

    /// Starts the next transaction on a session whose last outcome was
    /// `reusable`: RSET first if the server may hold state, then MAIL.
    pub fn next_transaction(&mut self, txn: Transaction, now: Instant) {
        assert!(
            self.phase == Phase::Done && self.reusable,
            "next_transaction() only after a reusable outcome"
        );
        debug_assert!(!txn.recipients.is_empty(), "a transaction has recipients");
        self.results = txn
            .recipients
            .iter()
            .map(|r| check_address(r, Enhanced(5, 1, 3)))
            .collect();
        self.accepted = vec![false; txn.recipients.len()];
        self.txn = txn;
        self.phase = Phase::Talking;
        self.replies.clear();
        self.awaiting.clear();
        self.answering = None;
        self.output.clear();
        self.now_last = now;
        self.pipelined = false;
        self.mail_failed = false;
        self.rcpt_next_index = 0;
        self.final_reply = None;
        self.outcome = None;
        self.mail_accepted = false;
        self.reusable = false;
        self.reused = true;
        self.txn_reply_count = 0;
        self.stale = false;
        self.chunk_failed = false;
        if std::mem::take(&mut self.needs_rset) {
            self.send(now, "RSET\r\n".to_string(), Await::Rset);
        } else {
            self.start_mail(now);
        }
    }

    /// The longest wait for writing one block of content.
    pub fn data_block_timeout(&self) -> Duration {
        self.params.timeouts.data_block
    }

    /// Takes bytes the server sent. Nothing is acted on until `poll()`.
    pub fn feed(&mut self, input: &[u8]) {
        if self.phase == Phase::Done || self.replies.back().is_some_and(|r| r.is_err()) {
            return;
        }
        let mut parsed = std::mem::take(&mut self.parsed);
        self.reader.feed(input, &mut parsed);
        // While the body is written, an early reply answers the coming dot.
        let allowed = self.awaiting.len() + usize::from(self.phase == Phase::Body);
        for reply in parsed.drain(..) {
            let failed = reply.is_err();
            if self.replies.len() >= allowed {
                self.replies.push_back(Err(ReplyError::Unexpected));
                break;
            }
            self.replies.push_back(reply);
            if failed {
                break;
            }
        }
        self.parsed = parsed;
    }

    /// Acts on the replies fed so far and on the time; says what to do next.
    pub fn poll(&mut self, now: Instant) -> ClientEvent {
        self.now_last = now;
        if self.rearm {
            self.arm(now);
        }
        while matches!(self.phase, Phase::Talking | Phase::Chunks) {
            let Some(reply) = self.replies.pop_front() else {
                break;
            };
            match reply {
                Ok(reply) => self.on_reply(now, reply),
                Err(e) => self.protocol_error(e),
            }
        }
        if !matches!(self.phase, Phase::Done | Phase::Tls) && now >= self.deadline {
            self.on_timeout(now);
        }
        match self.phase {
            Phase::Talking => ClientEvent::NeedInput,
            Phase::Body => ClientEvent::SendBody,
            Phase::Chunks if self.chunks_in_flight() < self.chunks_in_flight_max() => {
                ClientEvent::SendChunk
            }
            Phase::Chunks => ClientEvent::NeedInput,
            Phase::Tls => ClientEvent::StartTls,
            Phase::Done => {
                // Handed over, not copied: a later poll builds an equal
                // one again, as nothing changes once the attempt is done.
                ClientEvent::Done(self.outcome.take().unwrap_or_else(|| self.build_outcome()))
            }
        }
    }

    /// Bytes to write to the server.
    pub fn take_output(&mut self) -> Vec<u8> {
        let output = std::mem::take(&mut self.output);
        let noted = std::mem::take(&mut self.output_noted_bytes);
        if self.params.transcript && self.phase != Phase::Chunks {
            self.note_commands(&output[noted.min(output.len())..]);
        }
        output
    }

    fn note_commands(&mut self, commands: &[u8]) {
        for line in commands.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let line = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line));
            self.note(format!("C: {line}"));
        }
    }

    /// Gives back a buffer `take_output()` returned, once written: the
    /// next commands are written into it instead of a new one (a session
    /// keeps at most `OUTPUT_BYTES_KEPT_MAX` of it).
    pub fn give_back_output(&mut self, mut written: Vec<u8>) {
        if self.output.is_empty() && written.capacity() <= OUTPUT_BYTES_KEPT_MAX {
            written.clear();
            self.output = written;
        }
    }

    fn note(&mut self, line: String) {
        if self.transcript.len() < TRANSCRIPT_LINES_MAX {
            self.transcript.push(line);
        }
    }

    /// The driver wrote the whole content, terminator included.
    pub fn body_sent(&mut self) {
        debug_assert_eq!(self.phase, Phase::Body, "body_sent() only after SendBody");
        if self.phase != Phase::Body {
            return;
        }
        self.phase = Phase::Talking;
        if self.params.lmtp {
            for index in 0..self.accepted.len() {
                if self.accepted[index] && self.results[index].is_none() {
                    self.awaiting.push_back(Await::LmtpDot(index));
                }
            }
        } else {
            self.awaiting.push_back(Await::Dot);
        }
        self.rearm = true;
        self.deadline = self.now_last + self.params.timeouts.data_final;
    }

    /// Frames the next block of binary content after `SendChunk`: appends
    /// `BDAT <n>[ LAST]` and the octets, unchanged, to the output. `last`
    /// says no content follows (an empty last block is `BDAT 0 LAST`).
    pub fn bdat_chunk(&mut self, now: Instant, chunk: &[u8], last: bool) {
        debug_assert_eq!(
            self.phase,
            Phase::Chunks,
            "bdat_chunk() only after SendChunk"
        );
        debug_assert!(
            chunk.len() <= BDAT_CHUNK_BYTES_MAX,
            "chunk of {} octets",
            chunk.len()
        );
        if self.phase != Phase::Chunks {
            return;
        }
        self.now_last = now;
        let command = if last {
            format!("BDAT {} LAST\r\n", chunk.len())
        } else {
            format!("BDAT {}\r\n", chunk.len())
        };
        self.output.reserve(command.len() + chunk.len());
        self.output.extend_from_slice(command.as_bytes());
        if self.params.transcript {
            // The commands before the chunk, and its BDAT line, but not
            // its content.
            let pending = self.output.split_off(self.output_noted_bytes);
            self.note_commands(&pending);
            self.output.extend_from_slice(&pending);
        }
        self.output.extend_from_slice(chunk);
        self.output_noted_bytes = self.output.len();
        let was_idle = self.awaiting.is_empty();
        if last && self.params.lmtp {
            // RFC 2033 §4.2: one reply per accepted recipient to BDAT LAST.
            for index in 0..self.accepted.len() {
                if self.accepted[index] && self.results[index].is_none() {
                    self.awaiting.push_back(Await::LmtpDot(index));
                }
            }
        } else {
            self.awaiting.push_back(Await::Bdat { last });
        }
        if last {
            self.phase = Phase::Talking;
        }
        if was_idle || last {
            self.arm(now);
        }
    }

    /// The driver wrote another block of content: the data-block timeout
    /// starts again.
    pub fn body_progress(&mut self, now: Instant) {
        if self.phase == Phase::Body {
            self.now_last = now;
            self.deadline = now + self.params.timeouts.data_block;
        }
    }

    /// When the driver must give up waiting and call `on_timeout()`.
    pub fn deadline(&self) -> Instant {
        match self.phase {
            Phase::Done => self.now_last,
            _ => self.deadline,
        }
    }

    /// The wait for the server (or for the content write) took too long.
    pub fn on_timeout(&mut self, now: Instant) {
        if self.phase == Phase::Done {
            return;
        }
        self.now_last = now;
        let what = match (self.phase, self.awaiting.front()) {
            (Phase::Body, _) | (Phase::Chunks, None) => {
                "timeout while sending message content".to_string()
            }
            (_, Some(a)) => format!("timeout waiting for reply to {}", a.name()),
            (_, None) => "timeout".to_string(),
        };
        self.abort(Reply::new(451, Enhanced(4, 4, 2), what));
    }

    /// The connection closed or failed. Replies that arrived before are
    /// acted on first, so a final reply already received still counts.
    pub fn on_connection_lost(&mut self) {
        if self.phase == Phase::Done {
            return;
        }
        let now = self.now_last;
        while matches!(self.phase, Phase::Talking | Phase::Chunks) {
            let Some(reply) = self.replies.pop_front() else {
                break;
            };
            match reply {
                Ok(reply) => self.on_reply(now, reply),
                Err(e) => self.protocol_error(e),
            }
        }
        if self.phase == Phase::Done {
            return;
        }
        let what = match (self.phase, self.awaiting.front()) {
            (Phase::Body, _) | (Phase::Chunks, _) => {
                "connection lost while sending message content".to_string()
            }
            (_, Some(a)) => format!("connection lost while waiting for reply to {}", a.name()),
            (_, None) => "connection lost".to_string(),
        };
        self.abort(Reply::new(451, Enhanced(4, 4, 2), what));
    }

    /// Ends the attempt without QUIT: unresolved recipients get `reply`.
    fn abort(&mut self, reply: Reply) {
        self.stale = self.reused && self.txn_reply_count == 0;
        self.output.clear();
        self.resolve_unresolved(&RcptOutcome::Transient(reply));
        self.finish();
    }

    fn protocol_error(&mut self, e: ReplyError) {
        let what = match self.answering.or(self.awaiting.front().copied()) {
            Some(a) => format!("protocol error in reply to {}: {e}", a.name()),
            None => format!("protocol error: {e}"),
        };
        self.resolve_unresolved(&RcptOutcome::Transient(Reply::new(
            451,
            Enhanced(4, 5, 0),
            what,
        )));
        self.quit();
    }

    fn on_reply(&mut self, now: Instant, reply: Reply) {
        let Some(awaited) = self.awaiting.pop_front() else {
            self.protocol_error(ReplyError::Unexpected);
            return;
        };
        self.answering = Some(awaited);
        self.txn_reply_count += 1;
        if self.params.transcript {
            let mut wire = Vec::new();
            reply.write_to(&mut wire);
            for line in String::from_utf8_lossy(&wire).lines() {
                self.note(format!("S: {line}"));
            }
        }
        if reply.code == 421 && self.reused && self.txn_reply_count == 1 {
            // The server closed the idle session; no reply of this
            // transaction counts.
            self.txn_reply_count = 0;
        }
        if reply.code == 421 {
            // The server is closing the channel (RFC 5321 §3.8): no QUIT.
            self.abort(reply);
            return;
        }
        match awaited {
            Await::Greeting => self.on_greeting(now, reply),
            Await::Ehlo => self.on_ehlo(now, reply),
            Await::Helo => self.on_helo(now, reply),
            Await::Mail => self.on_mail(now, reply),
            Await::Rcpt(index) => self.on_rcpt(now, index, reply),
            Await::Data => self.on_data(reply),
            Await::Dot => self.on_dot(reply),
            Await::Rset => self.on_rset(now, reply),
            Await::StartTls => self.on_starttls(now, reply),
            Await::LmtpDot(index) => self.on_lmtp_dot(index, reply),
            Await::Bdat { last } => self.on_bdat(last, reply),
        }
        self.answering = None;
        if matches!(self.phase, Phase::Talking | Phase::Chunks) {
            self.arm(now);
        }
    }

    fn on_greeting(&mut self, now: Instant, reply: Reply) {
        self.greeting = Some(reply.lines.join(" ").into());
        match reply.code {
            220 => {
                let verb = if self.params.lmtp { "LHLO" } else { "EHLO" };
                self.send(
                    now,
                    format!("{verb} {}\r\n", self.params.helo_name),
                    Await::Ehlo,
                )
            }
            400..=599 => self.fail_and_quit(reply),
            code => self.protocol_error(ReplyError::WrongCode(code)),
        }
    }

    fn on_ehlo(&mut self, now: Instant, reply: Reply) {
        match reply.code {
            200..=299 => {
                self.ehlo_keywords = reply
                    .lines
                    .iter()
                    .skip(1)
                    .map(|l| upper_keyword(l))
                    .collect();
                self.extensions = Extensions::from_keywords(&self.ehlo_keywords);
                if !self.tls_active && self.params.starttls != StartTls::Never {
                    if self.extensions.starttls {
                        self.send(now, "STARTTLS\r\n".to_string(), Await::StartTls);
                        return;
                    }
                    if self.params.starttls == StartTls::Required {
                        self.fail_and_quit(Reply::new(
                            451,
                            Enhanced(4, 7, 4),
                            "TLS is required, but was not offered by the server",
                        ));
                        return;
                    }
                }
                self.session_established = true;
                self.start_mail(now);
            }
            // LMTP has no HELO to fall back to (RFC 2033 §4.1).
            500..=599 if self.params.lmtp => self.fail_and_quit(reply),
            500..=599 => self.send(
                now,
                format!("HELO {}\r\n", self.params.helo_name),
                Await::Helo,
            ),
            400..=499 => self.fail_and_quit(reply),
            code => self.protocol_error(ReplyError::WrongCode(code)),
        }
    }

    fn on_helo(&mut self, now: Instant, reply: Reply) {
        match reply.code {
            200..=299 => {
                self.session_established = true;
                self.start_mail(now);
            }
            400..=599 => self.fail_and_quit(reply),
            code => self.protocol_error(ReplyError::WrongCode(code)),
        }
    }

    fn on_starttls(&mut self, now: Instant, reply: Reply) {
        match reply.code {
            220 => {
                self.phase = Phase::Tls;
                self.awaiting.clear();
            }
            _ if self.params.starttls == StartTls::Required => {
                let text = format!(
                    "TLS is required, but STARTTLS was refused: {}",
                    reply.summary()
                );
                self.fail_and_quit(Reply::new(451, Enhanced(4, 7, 4), text));
            }
            // Opportunistic: go on in plaintext.
            200..=599 => {
                self.session_established = true;
                self.start_mail(now);
            }
            code => self.protocol_error(ReplyError::WrongCode(code)),
        }
    }

    fn on_rset(&mut self, now: Instant, reply: Reply) {
        match reply.code {
            200..=299 => self.start_mail(now),
            // The session is no good for this transaction; a fresh one may
            // be. The outcome is transient whatever the class of the reply
            // to RSET, so a 5xx one is carried as the text of a 4.5.0.
            _ => {
                self.stale = true;
                let reply = if reply.is_transient() {
                    reply
                } else {
                    Reply::new(451, Enhanced(4, 5, 0), format!("RSET refused: {}", reply.summary()))
                };
                self.resolve_unresolved(&RcptOutcome::Transient(reply));
                self.quit();
            }
        }
    }

    /// Checks what the server can take, then sends MAIL (and, pipelining,
    /// every RCPT and DATA in the same batch, RFC 2920 §3.1).
    fn start_mail(&mut self, now: Instant) {
        if let Some(reply) = self.local_refusal() {
            self.resolve_unresolved(&class_outcome(reply));
            self.end_transaction(false);
            return;
        }
        if self.results.iter().all(Option::is_some) {
            self.end_transaction(false);
            return;
        }
        let mut output = std::mem::take(&mut self.output);
        self.write_mail_command(&mut output);
        self.output = output;
        self.awaiting.push_back(Await::Mail);
        self.pipelined = self.extensions.pipelining && self.params.pipelining_enabled;
        if self.pipelined {
            for index in 0..self.txn.recipients.len() {
                if self.results[index].is_none() {
                    self.push_rcpt(index);
                }
            }
            // Binary content waits for the RCPT replies, then goes in BDAT
            // chunks (sent to no one, a chunk would be wasted); a probe
            // sends none. Small text content goes at once in BDAT (a
            // wasted chunk is cheaper than a round trip), else after DATA.
            if self.early_chunk() {
                self.phase = Phase::Chunks;
            } else if self.txn.body != BodyType::BinaryMime && !self.txn.probe {
                self.output.extend_from_slice(b"DATA\r\n");
                self.awaiting.push_back(Await::Data);
            }
        }
        self.arm(now);
    }

    /// Text content small enough for one chunk, to a server that takes
    /// BDAT pipelined with MAIL and RCPT ([`ClientParams::chunking_enabled`]).
    fn early_chunk(&self) -> bool {
        self.pipelined
            && self.params.chunking_enabled
            && self.extensions.chunking
            && !self.params.lmtp
            && !self.txn.probe
            && self.txn.body != BodyType::BinaryMime
            && self.txn.size_bytes <= BDAT_CHUNK_BYTES_MAX as u64
    }

    /// A reason to refuse the whole transaction without asking the server.
    fn local_refusal(&self) -> Option<Reply> {
        let ext = &self.extensions;
        if let Some(RcptOutcome::Permanent(reply)) =
            check_address(&self.txn.reverse_path, Enhanced(5, 1, 7))
        {
            return Some(reply);
        }
        if self.txn.replica_of.is_some() && !ext.replica {
            return Some(Reply::new(554, Enhanced(5, 5, 1), "the peer does not take replicas from this host (no XREPLICA)"));
        }
        if self.txn.needs_smtputf8() && !ext.smtputf8 {
            return Some(Reply::new(
                553,
                Enhanced(5, 6, 7),
                "message needs SMTPUTF8, which the server does not offer",
            ));
        }
        if self.txn.body == BodyType::EightBitMime && !ext.eight_bit_mime {
            return Some(Reply::new(
                554,
                Enhanced(5, 6, 3),
                "conversion required but not supported: 8-bit content and the server does not offer 8BITMIME",
            ));
        }
        if self.txn.body == BodyType::BinaryMime && !(ext.chunking && ext.binary_mime) {
            return Some(Reply::new(
                554,
                Enhanced(5, 6, 3),
                "conversion required but not supported: binary content and the server does not offer BINARYMIME and CHUNKING",
            ));
        }
        if ext.size_max_bytes > 0 && self.txn.size_bytes > ext.size_max_bytes {
            return Some(Reply::new(
                552,
                Enhanced(5, 3, 4),
                format!(
                    "message size {} exceeds the server's limit of {} bytes",
                    self.txn.size_bytes, ext.size_max_bytes
                ),
            ));
        }
        None
    }

    /// Appends the MAIL command line to `command` (written in place: no
    /// string of its own).
    fn write_mail_command(&self, command: &mut Vec<u8>) {
        command.extend_from_slice(b"MAIL FROM:<");
        command.extend_from_slice(self.txn.reverse_path.as_bytes());
        command.push(b'>');
        if self.extensions.size_advertised && !self.txn.probe {
            let _ = std::io::Write::write_fmt(command, format_args!(" SIZE={}", self.txn.size_bytes));
        }
        match self.txn.body {
            BodyType::SevenBit => {}
            BodyType::EightBitMime => command.extend_from_slice(b" BODY=8BITMIME"),
            BodyType::BinaryMime => command.extend_from_slice(b" BODY=BINARYMIME"),
        }
        if self.txn.needs_smtputf8() {
            command.extend_from_slice(b" SMTPUTF8");
        }
        if let Some(id) = &self.txn.replica_of {
            command.extend_from_slice(b" XREPLICA=");
            command.extend_from_slice(id.as_bytes());
        }
        if self.sends_dsn() {
            command.extend_from_slice(self.txn.mail_dsn.wire().as_bytes());
        }
        command.extend_from_slice(b"\r\n");
    }

    /// The DSN parameters go to this server: it offers DSN, and it is no
    /// LMTP store (the final delivery, which ringpost reports itself).
    fn sends_dsn(&self) -> bool {
        self.extensions.dsn && !self.params.lmtp && !self.txn.probe
    }

    fn push_rcpt(&mut self, index: usize) {
        let dsn = match self.txn.rcpt_dsn.get(index) {
            Some(dsn) if self.sends_dsn() => dsn.wire(),
            _ => String::new(),
        };
        self.output.extend_from_slice(b"RCPT TO:<");
        self.output.extend_from_slice(self.txn.recipients[index].as_bytes());
        self.output.push(b'>');
        self.output.extend_from_slice(dsn.as_bytes());
        self.output.extend_from_slice(b"\r\n");
        self.awaiting.push_back(Await::Rcpt(index));
    }

    fn on_mail(&mut self, now: Instant, reply: Reply) {
        match reply.code {
            200..=299 => {
                self.mail_accepted = true;
                if !self.pipelined {
                    self.next_rcpt_or_data(now);
                }
            }
            400..=599 => {
                self.mail_failed = true;
                self.resolve_unresolved(&class_outcome(reply));
                if !self.pipelined {
                    self.end_transaction(true);
                }
            }
            code => self.protocol_error(ReplyError::WrongCode(code)),
        }
    }

    fn on_rcpt(&mut self, now: Instant, index: usize, reply: Reply) {
        if !self.mail_failed {
            match reply.code {
                200..=299 if self.txn.probe => self.results[index] = Some(RcptOutcome::Delivered(reply)),
                200..=299 => self.accepted[index] = true,
                400..=599 => self.results[index] = Some(class_outcome(reply)),
                code => {
                    self.protocol_error(ReplyError::WrongCode(code));
                    return;
                }
            }
        }
        if !self.pipelined {
            self.next_rcpt_or_data(now);
        } else if self.txn.probe && self.awaiting.is_empty() {
            self.end_probe();
        } else if self.txn.body == BodyType::BinaryMime && self.awaiting.is_empty() {
            self.start_content(now);
        }
    }

    /// Without pipelining: the next RCPT, else DATA (or BDAT) if anyone
    /// was accepted, else QUIT.
    fn next_rcpt_or_data(&mut self, now: Instant) {
        while self.rcpt_next_index < self.txn.recipients.len() {
            let index = self.rcpt_next_index;
            self.rcpt_next_index += 1;
            if self.results[index].is_none() {
                self.push_rcpt(index);
                self.arm(now);
                return;
            }
        }
        if self.txn.probe {
            self.end_probe();
        } else if self.txn.body == BodyType::BinaryMime {
            self.start_content(now);
        } else if self.accepted.iter().any(|&a| a) {
            self.send(now, "DATA\r\n".to_string(), Await::Data);
        } else {
            self.end_transaction(true);
        }
    }

    /// A probe whose every RCPT is answered: the server holds a
    /// transaction (MAIL was accepted) that RSET clears before the next.
    /// A server counts refused RCPTs against the session (Postfix's
    /// smtpd_soft_error_limit delays every reply after 10, its hard limit
    /// of 20 ends the session), so a probe that was refused does not keep
    /// its session for the next one.
    fn end_probe(&mut self) {
        debug_assert!(self.awaiting.is_empty());
        self.resolve_unresolved(&RcptOutcome::Transient(Reply::new(451, Enhanced(4, 5, 0), "no reply for this recipient")));
        if self.results.iter().any(|r| matches!(r, Some(RcptOutcome::Permanent(_)))) {
            self.quit();
        } else {
            self.end_transaction(true);
        }
    }

    /// BINARYMIME, every RCPT answered: the chunks if anyone was accepted,
    /// else the end of the transaction.
    fn start_content(&mut self, now: Instant) {
        debug_assert!(self.awaiting.is_empty());
        if self.mail_failed || !self.accepted.iter().any(|&a| a) {
            self.end_transaction(true);
            return;
        }
        self.phase = Phase::Chunks;
        self.deadline = now + self.params.timeouts.data_block;
    }

    fn chunks_in_flight(&self) -> usize {
        self.awaiting
            .iter()
            .filter(|a| matches!(a, Await::Bdat { .. }))
            .count()
    }

    /// LMTP and servers without PIPELINING answer each chunk before the
    /// next is sent.
    fn chunks_in_flight_max(&self) -> usize {
        if self.pipelined && !self.params.lmtp {
            BDAT_IN_FLIGHT_MAX
        } else {
            1
        }
    }

    /// The reply to a BDAT chunk. A refused chunk fails the transaction
    /// (RFC 3030 §2): the recipients get that reply, nothing more is sent,
    /// and the replies to chunks already sent are consumed.
    fn on_bdat(&mut self, last: bool, reply: Reply) {
        if !(200..600).contains(&reply.code) || (300..400).contains(&reply.code) {
            self.protocol_error(ReplyError::WrongCode(reply.code));
            return;
        }
        if self.chunk_failed {
            if self.awaiting.is_empty() {
                self.end_transaction(true);
            }
            return;
        }
        if last {
            self.on_dot(reply);
            return;
        }
        if reply.is_positive() {
            return;
        }
        self.chunk_failed = true;
        self.resolve_unresolved(&class_outcome(reply));
        if self.phase == Phase::Chunks {
            self.phase = Phase::Talking;
        }
        if self.awaiting.is_empty() {
            self.end_transaction(true);
        }
    }

    fn on_data(&mut self, reply: Reply) {
        match reply.code {
            354 if self.accepted.iter().any(|&a| a) && !self.mail_failed => {
                self.phase = Phase::Body;
                self.awaiting.clear();
                self.deadline = self.now_last + self.params.timeouts.data_block;
            }
            354 => {
                // Pipelined, and every RCPT failed, yet the server wants
                // content: send an empty message's end (RFC 2920 §3.1).
                self.output.extend_from_slice(b".\r\n");
                self.quit();
            }
            400..=599 => {
                self.resolve_unresolved(&class_outcome(reply));
                self.end_transaction(true);
            }
            code => self.protocol_error(ReplyError::WrongCode(code)),
        }
    }

    /// LMTP: one recipient's outcome; the transaction ends with the last.
    fn on_lmtp_dot(&mut self, index: usize, reply: Reply) {
        match RcptOutcome::from_reply(&reply) {
            Some(outcome) => {
                self.results[index] = Some(outcome);
                self.final_reply = Some(reply);
                if !self.awaiting.iter().any(|a| matches!(a, Await::LmtpDot(_))) {
                    self.end_transaction(false);
                }
            }
            None => self.protocol_error(ReplyError::WrongCode(reply.code)),
        }
    }

    fn on_dot(&mut self, reply: Reply) {
        match RcptOutcome::from_reply(&reply) {
            Some(outcome) => {
                self.final_reply = Some(reply);
                self.resolve_unresolved(&outcome);
                self.end_transaction(false);
            }
            None => self.protocol_error(ReplyError::WrongCode(reply.code)),
        }
    }

    fn send(&mut self, now: Instant, command: String, awaited: Await) {
        self.output.extend_from_slice(command.as_bytes());
        self.awaiting.push_back(awaited);
        self.arm(now);
    }

    /// Starts the timer for the oldest outstanding command.
    fn arm(&mut self, now: Instant) {
        self.rearm = false;
        if let Some(a) = self.awaiting.front() {
            self.deadline = now + a.timeout(&self.params.timeouts);
        }
    }

    fn fail_and_quit(&mut self, reply: Reply) {
        self.resolve_unresolved(&class_outcome(reply));
        self.quit();
    }

    /// The transaction is over and the session is at a clean point: keep it
    /// open for the next one when asked to, else QUIT. `needs_rset`: the
    /// server may still hold a transaction (MAIL accepted, no final dot).
    fn end_transaction(&mut self, needs_rset: bool) {
        if !self.params.keep_open {
            self.quit();
            return;
        }
        self.needs_rset = needs_rset;
        self.reusable = true;
        self.finish();
    }

    /// Sends QUIT and ends; the 221 is not waited for.
    fn quit(&mut self) {
        self.output.extend_from_slice(b"QUIT\r\n");
        self.finish();
    }

    fn resolve_unresolved(&mut self, outcome: &RcptOutcome) {
        for result in self.results.iter_mut().filter(|r| r.is_none()) {
            *result = Some(outcome.clone());
        }
    }

    fn finish(&mut self) {
        self.phase = Phase::Done;
        self.awaiting.clear();
        self.replies.clear();
        self.outcome = Some(self.build_outcome());
    }

    fn build_outcome(&self) -> Outcome {
        debug_assert!(self.phase != Phase::Done || self.results.iter().all(Option::is_some));
        let recipients = self
            .results
            .iter()
            .map(|r| {
                r.clone().unwrap_or_else(|| {
                    RcptOutcome::Transient(Reply::new(
                        451,
                        Enhanced(4, 5, 0),
                        "no reply for this recipient",
                    ))
                })
            })
            .collect();
        Outcome {
            recipients,
            server_greeting: self.greeting.clone(),
            ehlo_keywords: self.ehlo_keywords.clone(),
            extensions: self.extensions.clone(),
            final_reply: self.final_reply.clone(),
            session_established: self.session_established,
            mail_accepted: self.mail_accepted,
            reusable: self.reusable,
            stale: self.stale,
            tls: self.tls_active,
            tls_failed: self.tls_failed,
            transcript: self.transcript.clone(),
        }
    }
}

/// 4xx is transient and anything else here permanent: only called with
/// 4xx and 5xx replies.
fn class_outcome(reply: Reply) -> RcptOutcome {
    debug_assert!((400..600).contains(&reply.code));
    if reply.is_transient() {
        RcptOutcome::Transient(reply)
    } else {
        RcptOutcome::Permanent(reply)
    }
}

/// None if `address` can go into a command; otherwise a local permanent
/// refusal with `enhanced` (5.1.3 for recipients, 5.1.7 for the sender).
fn check_address(address: &str, enhanced: Enhanced) -> Option<RcptOutcome> {
    let why = if address.len() > ADDRESS_BYTES_MAX {
        "address too long"
    } else if address.bytes().any(|b| b.is_ascii_control()) {
        "control character in address"
    } else if address.contains(['<', '>']) {
        "angle bracket in address"
    } else {
        return None;
    };
    Some(RcptOutcome::Permanent(Reply::new(501, enhanced, why)))
}

/// `size 1000` -> `SIZE 1000`: the keyword upper-cased, parameters kept.
fn upper_keyword(line: &str) -> String {
    match line.split_once(' ') {
        Some((keyword, params)) => format!("{} {}", keyword.to_ascii_uppercase(), params),
        None => line.to_ascii_uppercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EHLO_PLAIN: &str = "250-mx.example.net\r\n250-SIZE 1000000\r\n250 8BITMIME\r\n";
    const EHLO_PIPE: &str =
        "250-mx.example.net hello\r\n250-PIPELINING\r\n250-SIZE\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n";

    fn txn(recipients: &[&str]) -> Transaction {
        Transaction {
            reverse_path: "alice@example.org".into(),
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
            size_bytes: 1234,
            body: BodyType::SevenBit,
            smtputf8: false,
            probe: false,
            replica_of: None,
            mail_dsn: MailDsn::default(),
            rcpt_dsn: Vec::new(),
        }
    }

    /// A client and a clock; the test plays the server.
    struct Fake {
        client: Client,
        now: Instant,
    }

    impl Fake {
        fn new(t: Transaction) -> Fake {
            let now = Instant::now();
            Fake {
                client: Client::new(ClientParams::new("relay.example.org"), t, now),
                now,
            }
        }

        fn with_params(params: ClientParams, t: Transaction) -> Fake {
            let now = Instant::now();
            Fake {
                client: Client::new(params, t, now),
                now,
            }
        }

        /// The server says `text`; returns the client's next event.
        fn say(&mut self, text: &str) -> ClientEvent {
            self.client.feed(text.as_bytes());
            self.client.poll(self.now)
        }

        fn sent(&mut self) -> String {
            String::from_utf8(self.client.take_output()).expect("commands are UTF-8")
        }

        /// Greeting and EHLO with the given EHLO reply; returns what the
        /// client sent after the EHLO reply.
        fn open(&mut self, ehlo_reply: &str) -> String {
            assert_eq!(self.client.poll(self.now), ClientEvent::NeedInput);
            assert_eq!(self.sent(), "");
            assert_eq!(
                self.say("220 mx.example.net ESMTP\r\n"),
                ClientEvent::NeedInput
            );
            assert_eq!(self.sent(), "EHLO relay.example.org\r\n");
            self.say(ehlo_reply);
            self.sent()
        }
    }

    fn done(event: ClientEvent) -> Outcome {
        match event {
            ClientEvent::Done(o) => o,
            other => panic!("expected Done, got {other:?}"),
        }
    }

    fn codes(o: &Outcome) -> Vec<(char, u16)> {
        o.recipients
            .iter()
            .map(|r| match r {
                RcptOutcome::Delivered(r) => ('D', r.code),
                RcptOutcome::Transient(r) => ('T', r.code),
                RcptOutcome::Permanent(r) => ('P', r.code),
            })
            .collect()
    }

    fn enhanced_of(o: &Outcome, index: usize) -> Option<Enhanced> {
        o.recipients[index].reply().enhanced
    }

    #[test]
    fn one_at_a_time_with_mixed_recipients() {
        let mut f = Fake::new(txn(&["a@x.net", "b@x.net"]));
        assert_eq!(
            f.open(EHLO_PLAIN),
            "MAIL FROM:<alice@example.org> SIZE=1234\r\n"
        );
        assert_eq!(f.say("250 2.1.0 ok\r\n"), ClientEvent::NeedInput);
        assert_eq!(f.sent(), "RCPT TO:<a@x.net>\r\n");
        f.say("250 2.1.5 ok\r\n");
        assert_eq!(f.sent(), "RCPT TO:<b@x.net>\r\n");
        f.say("550 5.1.1 no such user\r\n");
        assert_eq!(f.sent(), "DATA\r\n");
        assert_eq!(f.say("354 go ahead\r\n"), ClientEvent::SendBody);
        assert_eq!(f.sent(), "");
        assert_eq!(f.client.poll(f.now), ClientEvent::SendBody);
        f.client.body_sent();
        assert_eq!(f.client.poll(f.now), ClientEvent::NeedInput);
        let o = done(f.say("250 2.0.0 queued as 123\r\n"));
        assert_eq!(f.sent(), "QUIT\r\n");
        assert_eq!(codes(&o), vec![('D', 250), ('P', 550)]);
        assert_eq!(enhanced_of(&o, 1), Some(Enhanced(5, 1, 1)));
        assert_eq!(
            o.recipients[1].reply().lines,
            vec!["no such user".to_string()]
        );
        assert_eq!(o.final_reply.as_ref().map(|r| r.code), Some(250));
        assert_eq!(o.server_greeting.as_deref(), Some("mx.example.net ESMTP"));
        assert_eq!(
            o.ehlo_keywords.to_vec(),
            vec!["SIZE 1000000".to_string(), "8BITMIME".to_string()]
        );
        assert!(!o.extensions.pipelining);
        assert_eq!(o.extensions.size_max_bytes, 1_000_000);
        // Done stays Done, and nothing more is written.
        assert_eq!(done(f.client.poll(f.now)), o);
        f.client.on_connection_lost();
        f.client.on_timeout(f.now);
        assert_eq!(done(f.client.poll(f.now)), o);
        assert_eq!(f.sent(), "");
    }

    #[test]
    fn pipelined_batch_and_three_way_results() {
        let mut f = Fake::new(txn(&["a@x.net", "b@x.net", "c@x.net"]));
        let batch = f.open(EHLO_PIPE);
        assert_eq!(
            batch,
            "MAIL FROM:<alice@example.org> SIZE=1234\r\nRCPT TO:<a@x.net>\r\nRCPT TO:<b@x.net>\r\n\
             RCPT TO:<c@x.net>\r\nDATA\r\n"
        );
        let replies = "250 2.1.0 ok\r\n250 2.1.5 ok\r\n451 4.7.1 greylisted\r\n550 5.1.1 unknown\r\n354 go\r\n";
        assert_eq!(f.say(replies), ClientEvent::SendBody);
        f.client.body_sent();
        let o = done(f.say("250 2.0.0 ok\r\n"));
        assert_eq!(codes(&o), vec![('D', 250), ('T', 451), ('P', 550)]);
        assert_eq!(f.sent(), "QUIT\r\n");
        assert!(
            o.extensions.pipelining && o.extensions.smtputf8 && o.extensions.enhanced_status_codes
        );
        assert_eq!(o.extensions.size_max_bytes, 0);
    }

    #[test]
    fn pipelined_replies_fed_one_byte_at_a_time() {
        let mut f = Fake::new(txn(&["a@x.net", "b@x.net"]));
        f.open(EHLO_PIPE);
        let replies = "250-2.1.0 sender\r\n250 2.1.0 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n";
        let mut last = ClientEvent::NeedInput;
        for b in replies.bytes() {
            f.client.feed(&[b]);
            last = f.client.poll(f.now);
        }
        assert_eq!(last, ClientEvent::SendBody);
        f.client.body_sent();
        for b in "250 2.0.0 ok\r\n".bytes() {
            f.client.feed(&[b]);
            last = f.client.poll(f.now);
        }
        assert_eq!(codes(&done(last)), vec![('D', 250), ('D', 250)]);
    }

    #[test]
    fn pipelining_can_be_turned_off() {
        let mut params = ClientParams::new("relay.example.org");
        params.pipelining_enabled = false;
        let mut f = Fake::with_params(params, txn(&["a@x.net"]));
        assert_eq!(
            f.open(EHLO_PIPE),
            "MAIL FROM:<alice@example.org> SIZE=1234\r\n"
        );
    }

    #[test]
    fn final_reply_transient_and_permanent() {
        for (reply, expected) in [("452 4.3.1 full\r\n", 'T'), ("554 5.7.1 spam\r\n", 'P')] {
            let mut f = Fake::new(txn(&["a@x.net", "b@x.net"]));
            f.open(EHLO_PIPE);
            f.say("250 ok\r\n250 ok\r\n550 no\r\n354 go\r\n");
            f.client.body_sent();
            let o = done(f.say(reply));
            assert_eq!(
                o.recipients[0].reply().code,
                reply[..3].parse::<u16>().unwrap()
            );
            assert_eq!(codes(&o)[0].0, expected);
            assert_eq!(
                codes(&o)[1],
                ('P', 550),
                "a refused recipient keeps its own reply"
            );
        }
    }

    #[test]
    fn greeting_421_and_554() {
        let mut f = Fake::new(txn(&["a@x.net", "b@x.net"]));
        let o = done(f.say("421 4.3.2 busy, try later\r\n"));
        assert_eq!(codes(&o), vec![('T', 421), ('T', 421)]);
        assert_eq!(f.sent(), "", "no QUIT to a server that is closing");

        let mut f = Fake::new(txn(&["a@x.net"]));
        let o = done(f.say("554-mx.example.net no SMTP service here\r\n554 go away\r\n"));
        assert_eq!(codes(&o), vec![('P', 554)]);
        assert_eq!(o.recipients[0].reply().lines.len(), 2);
        assert_eq!(f.sent(), "QUIT\r\n");

        let mut f = Fake::new(txn(&["a@x.net"]));
        let o = done(f.say("450 not now\r\n"));
        assert_eq!(codes(&o), vec![('T', 450)]);
    }

    #[test]
    fn greeting_with_wrong_code_is_a_protocol_error() {
        let mut f = Fake::new(txn(&["a@x.net"]));
        let o = done(f.say("250 hello?\r\n"));
        assert_eq!(codes(&o), vec![('T', 451)]);
        assert_eq!(enhanced_of(&o, 0), Some(Enhanced(4, 5, 0)));
    }

    #[test]
    fn ehlo_refused_falls_back_to_helo() {
        let mut f = Fake::new(txn(&["a@x.net"]));
        assert_eq!(
            f.open("502 5.5.1 command not implemented\r\n"),
            "HELO relay.example.org\r\n"
        );
        f.say("250 mx.example.net\r\n");
        assert_eq!(
            f.sent(),
            "MAIL FROM:<alice@example.org>\r\n",
            "no SIZE without EHLO"
        );
        f.say("250 ok\r\n");
        assert_eq!(f.sent(), "RCPT TO:<a@x.net>\r\n");
        f.say("250 ok\r\n");
        assert_eq!(f.sent(), "DATA\r\n");
        assert_eq!(f.say("354 go\r\n"), ClientEvent::SendBody);
        f.client.body_sent();
        assert_eq!(codes(&done(f.say("250 ok\r\n"))), vec![('D', 250)]);
    }

    #[test]
    fn helo_refused_too() {
        let mut f = Fake::new(txn(&["a@x.net"]));
        f.open("500 what\r\n");
        let o = done(f.say("550 5.7.1 go away\r\n"));
        assert_eq!(codes(&o), vec![('P', 550)]);
        assert_eq!(f.sent(), "QUIT\r\n");
    }

    #[test]
    fn ehlo_transient_failure() {
        let mut f = Fake::new(txn(&["a@x.net"]));
        f.client.poll(f.now);
        f.say("220 hi\r\n");
        f.sent();
        let o = done(f.say("451 4.3.0 local problem\r\n"));
        assert_eq!(codes(&o), vec![('T', 451)]);
        assert_eq!(f.sent(), "QUIT\r\n");
    }

    #[test]
    fn smtputf8_needed() {
        // Not offered: refused locally, nothing but QUIT sent.
        let mut t = txn(&["jörg@x.net", "b@x.net"]);
        let mut f = Fake::new(t.clone());
        assert_eq!(f.open(EHLO_PLAIN), "QUIT\r\n");
        let o = done(f.client.poll(f.now));
        assert_eq!(codes(&o), vec![('P', 553), ('P', 553)]);
        assert_eq!(enhanced_of(&o, 0), Some(Enhanced(5, 6, 7)));
        // Offered: MAIL says SMTPUTF8.
        let mut f = Fake::new(t.clone());
        assert!(f
            .open(EHLO_PIPE)
            .starts_with("MAIL FROM:<alice@example.org> SIZE=1234 SMTPUTF8\r\n"));
        // The flag alone also requires it.
        t.recipients = vec!["a@x.net".into()];
        t.smtputf8 = true;
        let mut f = Fake::new(t);
        assert_eq!(f.open(EHLO_PLAIN), "QUIT\r\n");
    }

    #[test]
    fn eight_bit_body() {
        let mut t = txn(&["a@x.net"]);
        t.body = BodyType::EightBitMime;
        let mut f = Fake::new(t.clone());
        assert_eq!(f.open("250-mx\r\n250 SIZE\r\n"), "QUIT\r\n");
        let o = done(f.client.poll(f.now));
        assert_eq!(codes(&o), vec![('P', 554)]);
        assert_eq!(enhanced_of(&o, 0), Some(Enhanced(5, 6, 3)));
        assert!(o.recipients[0].reply().lines[0].contains("conversion required but not supported"));
        let mut f = Fake::new(t);
        assert_eq!(
            f.open(EHLO_PLAIN),
            "MAIL FROM:<alice@example.org> SIZE=1234 BODY=8BITMIME\r\n"
        );
    }

    #[test]
    fn message_larger_than_the_server_takes() {
        let mut t = txn(&["a@x.net"]);
        t.size_bytes = 2_000_000;
        let mut f = Fake::new(t);
        assert_eq!(f.open(EHLO_PLAIN), "QUIT\r\n");
        let o = done(f.client.poll(f.now));
        assert_eq!(codes(&o), vec![('P', 552)]);
        assert_eq!(enhanced_of(&o, 0), Some(Enhanced(5, 3, 4)));
    }

    #[test]
    fn null_sender() {
        let mut t = txn(&["a@x.net"]);
        t.reverse_path = String::new();
        let mut f = Fake::new(t);
        assert_eq!(f.open(EHLO_PLAIN), "MAIL FROM:<> SIZE=1234\r\n");
    }

    #[test]
    fn mail_refused_without_pipelining() {
        let mut f = Fake::new(txn(&["a@x.net", "b@x.net"]));
        f.open(EHLO_PLAIN);
        let o = done(f.say("451 4.3.0 try later\r\n"));
        assert_eq!(codes(&o), vec![('T', 451), ('T', 451)]);
        assert_eq!(f.sent(), "QUIT\r\n");
    }

    #[test]
    fn mail_refused_with_pipelining_consumes_the_batch() {
        let mut f = Fake::new(txn(&["a@x.net", "b@x.net"]));
        f.open(EHLO_PIPE);
        assert_eq!(
            f.say("550 5.7.1 sender blocked\r\n"),
            ClientEvent::NeedInput
        );
        assert_eq!(f.sent(), "");
        let o = done(
            f.say("503 5.5.1 no MAIL\r\n503 5.5.1 no MAIL\r\n503 5.5.1 no valid recipients\r\n"),
        );
        assert_eq!(codes(&o), vec![('P', 550), ('P', 550)]);
        assert_eq!(enhanced_of(&o, 1), Some(Enhanced(5, 7, 1)));
        assert_eq!(f.sent(), "QUIT\r\n");
    }

    #[test]
    fn every_recipient_refused_without_pipelining() {
        let mut f = Fake::new(txn(&["a@x.net", "b@x.net"]));
        f.open(EHLO_PLAIN);
        f.say("250 ok\r\n");
        f.sent();
        f.say("550 no\r\n");
        assert_eq!(f.sent(), "RCPT TO:<b@x.net>\r\n");
        let o = done(f.say("452 4.5.3 too many recipients\r\n"));
        assert_eq!(f.sent(), "QUIT\r\n", "no DATA without a recipient");
        assert_eq!(codes(&o), vec![('P', 550), ('T', 452)]);
    }

    #[test]
    fn every_recipient_refused_pipelined_data_refused() {
        let mut f = Fake::new(txn(&["a@x.net"]));
        f.open(EHLO_PIPE);
        let o = done(f.say("250 ok\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n"));
        assert_eq!(codes(&o), vec![('P', 550)]);
        assert_eq!(f.sent(), "QUIT\r\n");
    }

    #[test]
    fn every_recipient_refused_pipelined_but_data_accepted() {
        let mut f = Fake::new(txn(&["a@x.net"]));
        f.open(EHLO_PIPE);
        let o = done(f.say("250 ok\r\n450 4.2.0 later\r\n354 go\r\n"));
        assert_eq!(codes(&o), vec![('T', 450)]);
        assert_eq!(
            f.sent(),
            ".\r\nQUIT\r\n",
            "an empty message ends the DATA (RFC 2920)"
        );
    }

    #[test]
    fn data_refused() {
        let mut f = Fake::new(txn(&["a@x.net", "b@x.net"]));
        f.open(EHLO_PLAIN);
        f.say("250 ok\r\n");
        f.say("250 ok\r\n");
        f.say("550 no\r\n");
        assert_eq!(
            f.sent(),
            "RCPT TO:<a@x.net>\r\nRCPT TO:<b@x.net>\r\nDATA\r\n"
        );
        let o = done(f.say("451 4.3.0 no\r\n"));
        assert_eq!(codes(&o), vec![('T', 451), ('P', 550)]);
    }

    #[test]
    fn data_answered_with_2xx_is_a_protocol_error() {
        let mut f = Fake::new(txn(&["a@x.net"]));
        f.open(EHLO_PIPE);
        let o = done(f.say("250 ok\r\n250 ok\r\n250 ok\r\n"));
        assert_eq!(codes(&o), vec![('T', 451)]);
        assert_eq!(enhanced_of(&o, 0), Some(Enhanced(4, 5, 0)));
    }

    #[test]
    fn rcpt_answered_with_354_is_a_protocol_error() {
        let mut f = Fake::new(txn(&["a@x.net", "b@x.net"]));
        f.open(EHLO_PLAIN);
        f.say("250 ok\r\n");
        f.say("250 ok\r\n");
        let o = done(f.say("354 what\r\n"));
        assert_eq!(codes(&o), vec![('T', 451), ('T', 451)]);
        assert!(o.recipients[0].reply().lines[0].contains("RCPT TO"));
        assert_eq!(
            f.sent(),
            "RCPT TO:<a@x.net>\r\nRCPT TO:<b@x.net>\r\nQUIT\r\n"
        );
    }

    #[test]
    fn final_reply_354_is_a_protocol_error() {
        let mut f = Fake::new(txn(&["a@x.net"]));
        f.open(EHLO_PIPE);
        f.say("250 ok\r\n250 ok\r\n354 go\r\n");
        f.client.body_sent();
        let o = done(f.say("354 again\r\n"));
        assert_eq!(codes(&o), vec![('T', 451)]);
        assert_eq!(o.final_reply, None);
    }

    #[test]
    fn server_closing_mid_transaction() {
        let mut f = Fake::new(txn(&["a@x.net", "b@x.net"]));
        f.open(EHLO_PIPE);
        let o = done(f.say("250 ok\r\n550 no\r\n421 4.4.2 shutting down\r\n"));
        assert_eq!(codes(&o), vec![('P', 550), ('T', 421)]);
        assert_eq!(f.sent(), "");
    }

    #[test]
    fn malformed_replies_are_protocol_errors() {
        let bad = [
            "hello world\r\n",
            "25\r\n",
            "250x ok\r\n",
            "650 ok\r\n",
            "199 ok\r\n",
            "250-one\r\n251 two\r\n",
        ];
        for text in bad {
            let mut f = Fake::new(txn(&["a@x.net"]));
            f.open(EHLO_PLAIN);
            let o = done(f.say(text));
            assert_eq!(codes(&o), vec![('T', 451)], "{text:?}");
            assert_eq!(enhanced_of(&o, 0), Some(Enhanced(4, 5, 0)), "{text:?}");
            assert_eq!(f.sent(), "QUIT\r\n");
        }
    }

    #[test]
    fn reply_line_limit() {
        let mut f = Fake::new(txn(&["a@x.net"]));
        f.open(EHLO_PLAIN);
        let long = format!("250 {}", "x".repeat(REPLY_LINE_BYTES_MAX));
        // No line end yet: still refused once the limit is passed.
        let o = done(f.say(&long));
        assert!(o.recipients[0].reply().lines[0].contains("too long"));
        // Exactly at the limit is fine.
        let mut f = Fake::new(txn(&["a@x.net"]));
        f.open(EHLO_PLAIN);
        let fits = format!("250 {}\r\n", "x".repeat(REPLY_LINE_BYTES_MAX - 6));
        assert_eq!(fits.len(), REPLY_LINE_BYTES_MAX);
        assert_eq!(f.say(&fits), ClientEvent::NeedInput);
        assert_eq!(f.sent(), "RCPT TO:<a@x.net>\r\n");
    }

    #[test]
    fn reply_line_count_limit() {
        let mut f = Fake::new(txn(&["a@x.net"]));
        f.open(EHLO_PLAIN);
        let mut text = "250-x\r\n".repeat(REPLY_LINE_COUNT_MAX - 1);
        text.push_str("250 last\r\n");
        assert_eq!(
            f.say(&text),
            ClientEvent::NeedInput,
            "exactly the limit is fine"
        );
        f.sent();
        let text = "250-x\r\n".repeat(REPLY_LINE_COUNT_MAX + 1);
        let o = done(f.say(&text));
        assert!(o.recipients[0].reply().lines[0].contains("too many lines"));
    }

    #[test]
    fn unsolicited_reply_is_a_protocol_error() {
        let mut f = Fake::new(txn(&["a@x.net"]));
        let o = done(f.say("220 hi\r\n250 what is this\r\n"));
        assert_eq!(codes(&o), vec![('T', 451)]);
        assert!(o.recipients[0].reply().lines[0].contains("unexpected"));
    }

    #[test]
    fn bare_lf_and_code_only_lines() {
        let mut f = Fake::new(txn(&["a@x.net"]));
        f.client.poll(f.now);
        f.say("220\n");
        assert_eq!(f.sent(), "EHLO relay.example.org\r\n");
        f.say("250-mx\n250 pipelining\n");
        assert!(f.sent().ends_with("DATA\r\n"));
    }

    #[test]
    fn unusable_addresses_are_refused_locally() {
        let mut f = Fake::new(txn(&["a@x.net", "evil@x.net>\r\nRSET", "b@x.net"]));
        let batch = f.open(EHLO_PIPE);
        assert_eq!(
            batch,
            "MAIL FROM:<alice@example.org> SIZE=1234\r\nRCPT TO:<a@x.net>\r\nRCPT TO:<b@x.net>\r\nDATA\r\n"
        );
        f.say("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n");
        f.client.body_sent();
        let o = done(f.say("250 ok\r\n"));
        assert_eq!(codes(&o), vec![('D', 250), ('P', 501), ('D', 250)]);
        assert_eq!(enhanced_of(&o, 1), Some(Enhanced(5, 1, 3)));

        let mut t = txn(&["a@x.net"]);
        t.reverse_path = "a\r\nb@x".into();
        let mut f = Fake::new(t);
        assert_eq!(f.open(EHLO_PIPE), "QUIT\r\n");
        let o = done(f.client.poll(f.now));
        assert_eq!(enhanced_of(&o, 0), Some(Enhanced(5, 1, 7)));

        let mut f = Fake::new(txn(&["x\0y@x.net"]));
        assert_eq!(f.open(EHLO_PIPE), "QUIT\r\n", "nothing left to send");
    }

    #[test]
    fn deadlines_per_state() {
        let t = Timeouts::default();
        let mut f = Fake::new(txn(&["a@x.net"]));
        let start = f.now;
        assert_eq!(f.client.deadline(), start + t.greeting);
        assert_eq!(t.greeting, Duration::from_secs(300));
        f.now = start + Duration::from_secs(10);
        f.say("220 hi\r\n");
        assert_eq!(f.client.deadline(), f.now + t.ehlo);
        f.say(EHLO_PLAIN);
        assert_eq!(f.client.deadline(), f.now + Duration::from_secs(300));
        f.say("250 ok\r\n");
        assert_eq!(f.client.deadline(), f.now + t.rcpt);
        f.say("250 ok\r\n");
        assert_eq!(f.client.deadline(), f.now + Duration::from_secs(120));
        f.say("354 go\r\n");
        assert_eq!(f.client.deadline(), f.now + Duration::from_secs(180));
        f.now += Duration::from_secs(100);
        f.client.body_progress(f.now);
        assert_eq!(f.client.deadline(), f.now + t.data_block);
        f.now += Duration::from_secs(1);
        f.client.body_sent();
        assert_eq!(f.client.poll(f.now), ClientEvent::NeedInput);
        assert_eq!(f.client.deadline(), f.now + Duration::from_secs(600));
    }

    #[test]
    fn pipelined_deadline_follows_the_oldest_command() {
        let mut f = Fake::new(txn(&["a@x.net"]));
        f.open(EHLO_PIPE);
        assert_eq!(f.client.deadline(), f.now + Timeouts::default().mail);
        f.say("250 ok\r\n250 ok\r\n");
        assert_eq!(f.client.deadline(), f.now + Timeouts::default().data_init);
    }

    #[test]
    fn timeout_waiting_for_greeting() {
        let mut f = Fake::new(txn(&["a@x.net", "b@x.net"]));
        assert_eq!(
            f.client.poll(f.now + Duration::from_secs(299)),
            ClientEvent::NeedInput
        );
        let o = done(f.client.poll(f.now + Duration::from_secs(300)));
        assert_eq!(codes(&o), vec![('T', 451), ('T', 451)]);
        assert_eq!(enhanced_of(&o, 0), Some(Enhanced(4, 4, 2)));
        assert!(o.recipients[0].reply().lines[0].contains("greeting"));
        assert_eq!(f.sent(), "");
    }

    #[test]
    fn timeout_after_some_recipients_resolved() {
        let mut f = Fake::new(txn(&["a@x.net", "b@x.net", "c@x.net"]));
        f.open(EHLO_PIPE);
        f.say("250 ok\r\n250 ok\r\n550 no\r\n");
        f.client.on_timeout(f.now);
        let o = done(f.client.poll(f.now));
        assert_eq!(codes(&o), vec![('T', 451), ('P', 550), ('T', 451)]);
        assert!(o.recipients[0].reply().lines[0].contains("RCPT TO"));
        assert_eq!(f.sent(), "");
    }

    #[test]
    fn timeout_waiting_for_final_reply() {
        let mut f = Fake::new(txn(&["a@x.net"]));
        f.open(EHLO_PIPE);
        f.say("250 ok\r\n250 ok\r\n354 go\r\n");
        f.client.body_sent();
        f.client.poll(f.now);
        let o = done(f.client.poll(f.now + Duration::from_secs(600)));
        assert_eq!(codes(&o), vec![('T', 451)]);
        assert!(o.recipients[0].reply().lines[0].contains("end of data"));
    }

    #[test]
    fn connection_lost_before_the_final_reply() {
        let mut f = Fake::new(txn(&["a@x.net", "b@x.net"]));
        f.open(EHLO_PIPE);
        f.say("250 ok\r\n250 ok\r\n550 no\r\n354 go\r\n");
        f.client.body_sent();
        f.client.poll(f.now);
        f.client.on_connection_lost();
        let o = done(f.client.poll(f.now));
        assert_eq!(codes(&o), vec![('T', 451), ('P', 550)]);
        assert_eq!(enhanced_of(&o, 0), Some(Enhanced(4, 4, 2)));
        assert_eq!(f.sent(), "");
    }

    #[test]
    fn connection_lost_during_the_body() {
        let mut f = Fake::new(txn(&["a@x.net"]));
        f.open(EHLO_PIPE);
        assert_eq!(
            f.say("250 ok\r\n250 ok\r\n354 go\r\n"),
            ClientEvent::SendBody
        );
        f.client.on_connection_lost();
        let o = done(f.client.poll(f.now));
        assert!(o.recipients[0].reply().lines[0].contains("content"));
        assert_eq!(codes(&o), vec![('T', 451)]);
    }

    #[test]
    fn connection_lost_after_the_final_reply_arrived() {
        // The final reply was fed but not yet polled when the close came.
        let mut f = Fake::new(txn(&["a@x.net"]));
        f.open(EHLO_PIPE);
        f.say("250 ok\r\n250 ok\r\n354 go\r\n");
        f.client.body_sent();
        f.client.poll(f.now);
        f.client.feed(b"250 2.0.0 ok\r\n");
        f.client.on_connection_lost();
        let o = done(f.client.poll(f.now));
        assert_eq!(codes(&o), vec![('D', 250)]);
        assert_eq!(f.sent(), "QUIT\r\n");
    }

    #[test]
    fn early_reply_during_the_body_answers_the_dot() {
        let mut f = Fake::new(txn(&["a@x.net"]));
        f.open(EHLO_PIPE);
        f.say("250 ok\r\n250 ok\r\n354 go\r\n");
        f.client.feed(b"554 5.7.0 rejected early\r\n");
        f.client.body_sent();
        let o = done(f.client.poll(f.now));
        assert_eq!(codes(&o), vec![('P', 554)]);
    }

    #[test]
    fn enhanced_codes_parsed_and_stripped() {
        assert_eq!(
            parse_enhanced("5.1.1 no such user", 550),
            Some((Enhanced(5, 1, 1), "no such user"))
        );
        assert_eq!(
            parse_enhanced("4.7.10", 451),
            Some((Enhanced(4, 7, 10), ""))
        );
        assert_eq!(parse_enhanced("5.1.1 wrong class", 450), None);
        assert_eq!(parse_enhanced("5.1 short", 550), None);
        assert_eq!(parse_enhanced("5.1.1.1 long", 550), None);
        assert_eq!(parse_enhanced("5.1234.1 wide", 550), None);
        assert_eq!(parse_enhanced("3.1.1 bad class", 354), None);
        assert_eq!(parse_enhanced("mx.example.net", 220), None);
        assert_eq!(parse_enhanced("", 250), None);
        let mut reader = ReplyReader::default();
        let mut out = Vec::new();
        reader.feed(b"550-5.1.1 first\r\n550 5.1.1 second\r\n", &mut out);
        let reply = out.pop().unwrap().unwrap();
        assert_eq!(reply.enhanced, Some(Enhanced(5, 1, 1)));
        assert_eq!(reply.lines, vec!["first".to_string(), "second".to_string()]);
        assert_eq!(reply.summary(), "550 5.1.1 first second");
    }

    #[test]
    fn reply_line_parser() {
        assert_eq!(parse_reply_line(b"250 ok"), Ok((250, true, &b"ok"[..])));
        assert_eq!(parse_reply_line(b"250-ok"), Ok((250, false, &b"ok"[..])));
        assert_eq!(parse_reply_line(b"250"), Ok((250, true, &b""[..])));
        assert_eq!(parse_reply_line(b""), Err(ReplyError::BadCode));
        assert_eq!(parse_reply_line(b"2a0 x"), Err(ReplyError::BadCode));
        assert_eq!(parse_reply_line(b"250_x"), Err(ReplyError::BadCode));
        assert_eq!(parse_reply_line("25ö".as_bytes()), Err(ReplyError::BadCode));
    }

    #[test]
    fn non_utf8_reply_text_does_not_panic() {
        let mut f = Fake::new(txn(&["a@x.net"]));
        f.open(EHLO_PIPE);
        f.client.feed(b"250 \xff\xfe ok\r\n250 ok\r\n354 go\r\n");
        assert_eq!(f.client.poll(f.now), ClientEvent::SendBody);
    }

    #[test]
    fn any_byte_sequence_never_panics() {
        // A small deterministic fuzz: random bytes at every state.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let alphabet: &[u8] = b"0123456789 -\r\n.2345abc\xff";
        for round in 0..1000 {
            let binary = round % 2 == 1;
            let t = if binary {
                binary_txn(&["a@x.net", "b@x.net"])
            } else {
                txn(&["a@x.net", "b@x.net"])
            };
            let mut f = Fake::new(t);
            if binary {
                // Into the chunks, then random replies.
                f.open(EHLO_BINARY);
                f.client.feed(b"250 ok\r\n250 ok\r\n250 ok\r\n");
            }
            for _ in 0..20 {
                let len = (next() % 40) as usize;
                let bytes: Vec<u8> = (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect();
                f.client.feed(&bytes);
                match f.client.poll(f.now) {
                    ClientEvent::SendBody => f.client.body_sent(),
                    ClientEvent::SendChunk => f.client.bdat_chunk(f.now, &bytes, next() % 3 == 0),
                    ClientEvent::Done(o) => {
                        assert_eq!(o.recipients.len(), 2);
                        break;
                    }
                    ClientEvent::NeedInput => {}
                    ClientEvent::StartTls => f.client.tls_failed(f.now, "test"),
                }
                f.client.take_output();
            }
        }
    }

    fn keep_open() -> ClientParams {
        ClientParams {
            keep_open: true,
            ..ClientParams::new("relay.example.org")
        }
    }

    /// Sends the body of the pipelined transaction that `sent` started and
    /// answers the final dot with `dot_reply`.
    fn finish_body(f: &mut Fake, dot_reply: &str) -> Outcome {
        assert_eq!(f.client.poll(f.now), ClientEvent::SendBody);
        f.client.body_sent();
        done(f.say(dot_reply))
    }

    #[test]
    fn reused_session_sends_the_next_mail_without_quit() {
        let mut f = Fake::with_params(keep_open(), txn(&["a@x.net"]));
        assert_eq!(
            f.open(EHLO_PIPE),
            "MAIL FROM:<alice@example.org> SIZE=1234\r\nRCPT TO:<a@x.net>\r\nDATA\r\n"
        );
        f.say("250 2.1.0 ok\r\n250 2.1.5 ok\r\n354 go\r\n");
        let first = finish_body(&mut f, "250 2.0.0 queued as A\r\n");
        assert_eq!(codes(&first), vec![('D', 250)]);
        assert!(first.reusable && first.session_established && first.mail_accepted && !first.stale);
        assert_eq!(f.sent(), "", "no QUIT on a session kept open");

        f.client
            .next_transaction(txn(&["b@x.net", "c@x.net"]), f.now);
        assert_eq!(f.client.poll(f.now), ClientEvent::NeedInput);
        assert_eq!(
            f.sent(),
            "MAIL FROM:<alice@example.org> SIZE=1234\r\nRCPT TO:<b@x.net>\r\nRCPT TO:<c@x.net>\r\nDATA\r\n"
        );
        f.say("250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 unknown\r\n354 go\r\n");
        let second = finish_body(&mut f, "250 2.0.0 queued as B\r\n");
        assert_eq!(codes(&second), vec![('D', 250), ('P', 550)]);
        assert!(second.reusable);
    }

    #[test]
    fn rset_before_reuse_after_every_recipient_failed() {
        let mut f = Fake::with_params(keep_open(), txn(&["a@x.net"]));
        f.open(EHLO_PIPE);
        let first =
            done(f.say("250 2.1.0 ok\r\n550 5.1.1 unknown\r\n554 5.5.1 no valid recipients\r\n"));
        assert_eq!(codes(&first), vec![('P', 550)]);
        assert!(first.reusable);
        assert_eq!(f.sent(), "");

        f.client.next_transaction(txn(&["b@x.net"]), f.now);
        f.client.poll(f.now);
        assert_eq!(f.sent(), "RSET\r\n");
        f.say("250 2.0.0 reset\r\n");
        assert_eq!(
            f.sent(),
            "MAIL FROM:<alice@example.org> SIZE=1234\r\nRCPT TO:<b@x.net>\r\nDATA\r\n"
        );
        f.say("250 ok\r\n250 ok\r\n354 go\r\n");
        let second = finish_body(&mut f, "250 ok\r\n");
        assert_eq!(codes(&second), vec![('D', 250)]);
    }

    /// Found by the smtp_reply fuzz target: a 550 to the RSET before a
    /// reused transaction came out as a transient result carrying a 5xx
    /// reply.
    #[test]
    fn rset_refused_with_5xx_gives_transient_results_of_class_4() {
        let mut f = Fake::with_params(keep_open(), txn(&["a@x.net"]));
        f.open(EHLO_PIPE);
        let first =
            done(f.say("250 2.1.0 ok\r\n550 5.1.1 unknown\r\n554 5.5.1 no valid recipients\r\n"));
        assert!(first.reusable);
        f.client.next_transaction(txn(&["b@x.net"]), f.now);
        f.client.poll(f.now);
        assert_eq!(f.sent(), "RSET\r\n");
        let o = done(f.say("550 5.2.0 refused\r\n"));
        assert!(o.stale && !o.reusable);
        assert_eq!(codes(&o), vec![('T', 451)]);
        assert_eq!(enhanced_of(&o, 0), Some(Enhanced(4, 5, 0)));
        assert_eq!(o.recipients[0].reply().lines, vec!["RSET refused: 550 5.2.0 refused".to_string()]);
        // A 4xx reply to RSET is kept as it is.
        let mut f = Fake::with_params(keep_open(), txn(&["a@x.net"]));
        f.open(EHLO_PIPE);
        done(f.say("250 2.1.0 ok\r\n550 5.1.1 unknown\r\n554 5.5.1 no valid recipients\r\n"));
        f.client.next_transaction(txn(&["b@x.net"]), f.now);
        f.client.poll(f.now);
        f.sent();
        let o = done(f.say("454 4.3.0 busy\r\n"));
        assert_eq!(codes(&o), vec![('T', 454)]);
    }

    #[test]
    fn idle_session_closed_by_the_server_is_stale() {
        let mut f = Fake::with_params(keep_open(), txn(&["a@x.net"]));
        f.open(EHLO_PIPE);
        f.say("250 ok\r\n250 ok\r\n354 go\r\n");
        assert!(finish_body(&mut f, "250 ok\r\n").reusable);

        // The server timed the idle session out with a 421 and closed it.
        f.client.next_transaction(txn(&["b@x.net"]), f.now);
        f.client.poll(f.now);
        f.sent();
        let o = done(f.say("421 4.4.2 idle timeout\r\n"));
        assert!(o.stale && !o.reusable);
        assert_eq!(codes(&o), vec![('T', 421)]);

        // Or closed it without a word.
        let mut f = Fake::with_params(keep_open(), txn(&["a@x.net"]));
        f.open(EHLO_PIPE);
        f.say("250 ok\r\n250 ok\r\n354 go\r\n");
        finish_body(&mut f, "250 ok\r\n");
        f.client.next_transaction(txn(&["b@x.net"]), f.now);
        f.client.poll(f.now);
        f.client.on_connection_lost();
        let o = done(f.client.poll(f.now));
        assert!(o.stale && !o.reusable);
    }

    #[test]
    fn a_failure_after_the_first_reply_of_a_reused_transaction_is_not_stale() {
        let mut f = Fake::with_params(keep_open(), txn(&["a@x.net"]));
        f.open(EHLO_PIPE);
        f.say("250 ok\r\n250 ok\r\n354 go\r\n");
        finish_body(&mut f, "250 ok\r\n");
        f.client.next_transaction(txn(&["b@x.net"]), f.now);
        f.client.poll(f.now);
        f.sent();
        f.say("250 ok\r\n");
        f.client.on_connection_lost();
        let o = done(f.client.poll(f.now));
        assert!(!o.stale && !o.reusable);
        assert_eq!(codes(&o), vec![('T', 451)]);
    }

    #[test]
    fn without_keep_open_the_session_ends_with_quit() {
        let mut f = Fake::new(txn(&["a@x.net"]));
        f.open(EHLO_PIPE);
        f.say("250 ok\r\n250 ok\r\n354 go\r\n");
        let o = finish_body(&mut f, "250 ok\r\n");
        assert!(!o.reusable);
        assert_eq!(f.sent(), "QUIT\r\n");
    }

    #[test]
    fn greeting_failure_is_a_session_failure() {
        let mut f = Fake::with_params(keep_open(), txn(&["a@x.net"]));
        f.client.poll(f.now);
        let o = done(f.say("421 4.3.2 busy\r\n"));
        assert!(!o.session_established && !o.mail_accepted && !o.reusable);
        let mut f = Fake::with_params(keep_open(), txn(&["a@x.net"]));
        f.client.poll(f.now);
        let o = done(f.say("554 5.7.1 go away\r\n"));
        assert!(!o.session_established);
        assert_eq!(codes(&o), vec![('P', 554)]);
    }

    fn tls_params(starttls: StartTls) -> ClientParams {
        ClientParams {
            starttls,
            ..ClientParams::new("relay.example.org")
        }
    }

    const EHLO_TLS: &str = "250-mx.example.net\r\n250-PIPELINING\r\n250 STARTTLS\r\n";

    #[test]
    fn starttls_when_offered_then_ehlo_again() {
        let mut f = Fake::with_params(tls_params(StartTls::IfOffered), txn(&["a@x.net"]));
        assert_eq!(f.open(EHLO_TLS), "STARTTLS\r\n");
        assert_eq!(f.say("220 2.0.0 go ahead\r\n"), ClientEvent::StartTls);
        assert_eq!(f.sent(), "");
        f.client.tls_started(f.now);
        assert_eq!(f.client.poll(f.now), ClientEvent::NeedInput);
        assert_eq!(f.sent(), "EHLO relay.example.org\r\n");
        // The server must not offer STARTTLS again; if it does, no loop.
        f.say(EHLO_TLS);
        assert_eq!(
            f.sent(),
            "MAIL FROM:<alice@example.org>\r\nRCPT TO:<a@x.net>\r\nDATA\r\n"
        );
        f.say("250 ok\r\n250 ok\r\n354 go\r\n");
        f.client.body_sent();
        let o = done(f.say("250 ok\r\n"));
        assert!(o.tls && !o.tls_failed);
        assert_eq!(codes(&o), vec![('D', 250)]);
    }

    #[test]
    fn starttls_not_offered() {
        // Opportunistic: plaintext.
        let mut f = Fake::with_params(tls_params(StartTls::IfOffered), txn(&["a@x.net"]));
        assert!(f.open(EHLO_PIPE).starts_with("MAIL FROM:"));
        // Required: a temporary failure, 4.7.4, and no MAIL.
        let mut f = Fake::with_params(tls_params(StartTls::Required), txn(&["a@x.net"]));
        assert_eq!(f.open(EHLO_PIPE), "QUIT\r\n");
        let o = done(f.client.poll(f.now));
        assert_eq!(codes(&o), vec![('T', 451)]);
        assert_eq!(enhanced_of(&o, 0), Some(Enhanced(4, 7, 4)));
        // Never: not even when offered.
        let mut f = Fake::with_params(tls_params(StartTls::Never), txn(&["a@x.net"]));
        assert!(f.open(EHLO_TLS).starts_with("MAIL FROM:"));
    }

    #[test]
    fn starttls_refused_or_handshake_failed() {
        let mut f = Fake::with_params(tls_params(StartTls::IfOffered), txn(&["a@x.net"]));
        f.open(EHLO_TLS);
        f.say("454 4.7.0 TLS not available\r\n");
        assert!(
            f.sent().starts_with("MAIL FROM:"),
            "opportunistic goes on in plaintext"
        );

        let mut f = Fake::with_params(tls_params(StartTls::Required), txn(&["a@x.net"]));
        f.open(EHLO_TLS);
        let o = done(f.say("454 4.7.0 TLS not available\r\n"));
        assert_eq!(enhanced_of(&o, 0), Some(Enhanced(4, 7, 4)));

        let mut f = Fake::with_params(tls_params(StartTls::IfOffered), txn(&["a@x.net"]));
        f.open(EHLO_TLS);
        assert_eq!(f.say("220 go\r\n"), ClientEvent::StartTls);
        f.client.tls_failed(f.now, "bad record mac");
        let o = done(f.client.poll(f.now));
        assert!(o.tls_failed && !o.reusable);
        assert_eq!(enhanced_of(&o, 0), Some(Enhanced(4, 7, 5)));
        assert_eq!(
            f.sent(),
            "",
            "nothing more is written on a failed TLS connection"
        );
    }

    fn lmtp_params() -> ClientParams {
        ClientParams {
            lmtp: true,
            ..ClientParams::new("relay.example.org")
        }
    }

    const LHLO_PIPE: &str =
        "250-store.example.net\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250 8BITMIME\r\n";

    #[test]
    fn lmtp_gets_one_reply_per_accepted_recipient() {
        let mut f = Fake::with_params(
            lmtp_params(),
            txn(&["a@x.net", "b@x.net", "c@x.net", "d@x.net"]),
        );
        assert_eq!(f.client.poll(f.now), ClientEvent::NeedInput);
        f.say("220 store LMTP\r\n");
        assert_eq!(f.sent(), "LHLO relay.example.org\r\n");
        f.say(LHLO_PIPE);
        assert_eq!(
            f.sent(),
            "MAIL FROM:<alice@example.org>\r\nRCPT TO:<a@x.net>\r\nRCPT TO:<b@x.net>\r\nRCPT TO:<c@x.net>\r\nRCPT TO:<d@x.net>\r\nDATA\r\n"
        );
        assert_eq!(
            f.say("250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n250 ok\r\n250 ok\r\n354 go\r\n"),
            ClientEvent::SendBody
        );
        f.client.body_sent();
        // a, c and d were accepted: three replies, in RCPT order.
        assert_eq!(f.say("250 2.0.0 a saved\r\n"), ClientEvent::NeedInput);
        assert_eq!(f.say("452 4.2.2 c over quota\r\n"), ClientEvent::NeedInput);
        let o = done(f.say("550 5.2.0 d refused\r\n"));
        assert_eq!(
            codes(&o),
            vec![('D', 250), ('P', 550), ('T', 452), ('P', 550)]
        );
        assert_eq!(enhanced_of(&o, 2), Some(Enhanced(4, 2, 2)));
        assert_eq!(f.sent(), "QUIT\r\n");
    }

    #[test]
    fn lmtp_connection_lost_between_per_recipient_replies() {
        let mut f = Fake::with_params(lmtp_params(), txn(&["a@x.net", "b@x.net"]));
        f.client.poll(f.now);
        f.say("220 store LMTP\r\n");
        f.say(LHLO_PIPE);
        f.say("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n");
        f.client.body_sent();
        f.say("250 2.0.0 a saved\r\n");
        f.client.on_connection_lost();
        let o = done(f.client.poll(f.now));
        // a stays delivered; b is retried.
        assert_eq!(codes(&o), vec![('D', 250), ('T', 451)]);
    }

    #[test]
    fn lmtp_without_pipelining_and_no_helo_fallback() {
        let mut f = Fake::with_params(lmtp_params(), txn(&["a@x.net"]));
        f.client.poll(f.now);
        f.say("220 store LMTP\r\n");
        f.sent();
        let o = done(f.say("500 5.5.1 what\r\n"));
        assert_eq!(codes(&o), vec![('P', 500)]);
        assert!(!f.sent().contains("HELO"));
    }

    // ---- DSN parameters passed on (RFC 3461) ----

    fn dsn_txn() -> Transaction {
        use crate::smtp::dsn::{Notify, Ret};
        Transaction {
            mail_dsn: MailDsn { ret: Some(Ret::Hdrs), envid: Some("QQ314159".into()) },
            rcpt_dsn: vec![
                RcptDsn { notify: Some(Notify::SUCCESS), orcpt: Some("rfc822;a+2B1@x.net".into()) },
                RcptDsn::default(),
            ],
            ..txn(&["a@x.net", "b@x.net"])
        }
    }

    #[test]
    fn dsn_parameters_go_to_a_server_that_offers_dsn() {
        let mut f = Fake::new(dsn_txn());
        let sent = f.open("250-mx.example.net\r\n250-PIPELINING\r\n250 DSN\r\n");
        assert_eq!(
            sent,
            "MAIL FROM:<alice@example.org> RET=HDRS ENVID=QQ314159\r\n\
             RCPT TO:<a@x.net> NOTIFY=SUCCESS ORCPT=rfc822;a+2B1@x.net\r\n\
             RCPT TO:<b@x.net>\r\nDATA\r\n"
        );
        f.say("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n");
        f.client.body_sent();
        let o = done(f.say("250 2.0.0 queued\r\n"));
        assert!(o.extensions.dsn);
    }

    #[test]
    fn dsn_parameters_are_left_out_without_dsn() {
        let mut f = Fake::new(dsn_txn());
        let sent = f.open("250-mx.example.net\r\n250 PIPELINING\r\n");
        assert_eq!(sent, "MAIL FROM:<alice@example.org>\r\nRCPT TO:<a@x.net>\r\nRCPT TO:<b@x.net>\r\nDATA\r\n");
        f.say("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n");
        f.client.body_sent();
        let o = done(f.say("250 2.0.0 queued\r\n"));
        assert!(!o.extensions.dsn);
    }

    #[test]
    fn dsn_parameters_never_go_to_lmtp() {
        let mut f = Fake::with_params(lmtp_params(), dsn_txn());
        f.client.poll(f.now);
        f.say("220 store LMTP\r\n");
        assert!(f.sent().starts_with("LHLO"));
        f.say("250-store\r\n250-PIPELINING\r\n250 DSN\r\n");
        let sent = f.sent();
        assert!(!sent.contains("NOTIFY") && !sent.contains("RET=") && !sent.contains("ENVID"), "{sent}");
    }

    // ---- BINARYMIME in BDAT chunks (RFC 3030) ----

    const EHLO_BINARY: &str = "250-mx.example.net\r\n250-PIPELINING\r\n250-SIZE\r\n250-8BITMIME\r\n250-CHUNKING\r\n250 BINARYMIME\r\n";
    const EHLO_BINARY_NO_PIPELINING: &str =
        "250-mx.example.net\r\n250-CHUNKING\r\n250 BINARYMIME\r\n";
    /// NUL, bare CR, bare LF, a line "." and no final CRLF.
    const BINARY: &[u8] = b"\x00\x01\xff\r\nbare\rcr\nbare lf\r\n.\r\n..\r\nend\x00";

    fn binary_txn(recipients: &[&str]) -> Transaction {
        Transaction {
            body: BodyType::BinaryMime,
            size_bytes: BINARY.len() as u64,
            ..txn(recipients)
        }
    }

    /// Plays the driver: while the client asks for chunks, hands it the
    /// next `chunk_bytes` of `content` (from `offset`); returns the octets
    /// written and the event that ended the run.
    fn send_chunks(
        f: &mut Fake,
        content: &[u8],
        offset: &mut usize,
        chunk_bytes: usize,
    ) -> (Vec<u8>, ClientEvent) {
        let mut wire = f.client.take_output();
        loop {
            match f.client.poll(f.now) {
                ClientEvent::SendChunk => {
                    let end = (*offset + chunk_bytes).min(content.len());
                    f.client
                        .bdat_chunk(f.now, &content[*offset..end], end == content.len());
                    *offset = end;
                    wire.extend_from_slice(&f.client.take_output());
                }
                other => return (wire, other),
            }
        }
    }

    #[test]
    fn binary_content_goes_out_as_stored_in_one_bdat_last() {
        let mut f = Fake::new(binary_txn(&["a@x.net"]));
        // No DATA in the batch: the chunk waits for the RCPT replies.
        assert_eq!(
            f.open(EHLO_BINARY),
            format!(
                "MAIL FROM:<alice@example.org> SIZE={} BODY=BINARYMIME\r\nRCPT TO:<a@x.net>\r\n",
                BINARY.len()
            )
        );
        assert_eq!(f.say("250 2.1.0 ok\r\n"), ClientEvent::NeedInput);
        assert_eq!(f.say("250 2.1.5 ok\r\n"), ClientEvent::SendChunk);
        let mut offset = 0;
        let (wire, event) = send_chunks(&mut f, BINARY, &mut offset, BDAT_CHUNK_BYTES_MAX);
        assert_eq!(event, ClientEvent::NeedInput);
        let mut want = format!("BDAT {} LAST\r\n", BINARY.len()).into_bytes();
        want.extend_from_slice(BINARY);
        assert_eq!(wire, want, "not stuffed, not normalized, no CRLF added");
        assert_eq!(f.client.deadline(), f.now + Timeouts::default().data_final);
        let o = done(f.say("250 2.0.0 queued\r\n"));
        assert_eq!(codes(&o), vec![('D', 250)]);
        assert_eq!(o.final_reply.map(|r| r.code), Some(250));
        assert!(o.extensions.chunking && o.extensions.binary_mime);
        assert_eq!(f.sent(), "QUIT\r\n");
    }

    const TEXT: &[u8] = b"Subject: t\r\n\r\n.leading dot\r\nend\r\n";

    fn text_txn(recipients: &[&str]) -> Transaction {
        Transaction {
            size_bytes: TEXT.len() as u64,
            ..txn(recipients)
        }
    }

    /// Greeting and EHLO; then the chunks the client asks for at once.
    fn open_early(f: &mut Fake, ehlo_reply: &str) -> (Vec<u8>, ClientEvent) {
        assert_eq!(
            f.say("220 mx.example.net ESMTP\r\n"),
            ClientEvent::NeedInput
        );
        assert_eq!(f.sent(), "EHLO relay.example.org\r\n");
        f.client.feed(ehlo_reply.as_bytes());
        let mut offset = 0;
        send_chunks(f, TEXT, &mut offset, BDAT_CHUNK_BYTES_MAX)
    }

    fn early_wire(recipients: &[&str]) -> Vec<u8> {
        let mut want = format!("MAIL FROM:<alice@example.org> SIZE={}\r\n", TEXT.len());
        for r in recipients {
            want.push_str(&format!("RCPT TO:<{r}>\r\n"));
        }
        want.push_str(&format!("BDAT {} LAST\r\n", TEXT.len()));
        let mut want = want.into_bytes();
        want.extend_from_slice(TEXT);
        want
    }

    #[test]
    fn small_text_content_goes_in_one_bdat_last_with_mail_and_rcpt() {
        let mut f = Fake::new(text_txn(&["a@x.net"]));
        let (wire, event) = open_early(&mut f, EHLO_BINARY);
        assert_eq!(event, ClientEvent::NeedInput);
        assert_eq!(
            wire,
            early_wire(&["a@x.net"]),
            "one write, no DATA, not stuffed"
        );
        let o = done(f.say("250 2.1.0 ok\r\n250 2.1.5 ok\r\n250 2.0.0 queued\r\n"));
        assert_eq!(codes(&o), vec![('D', 250)]);
        assert_eq!(o.final_reply.map(|r| r.code), Some(250));
    }

    #[test]
    fn an_early_chunk_to_no_recipient_is_refused_and_the_refusals_stay() {
        let mut f = Fake::new(text_txn(&["a@x.net", "b@x.net"]));
        let (wire, _) = open_early(&mut f, EHLO_BINARY);
        assert_eq!(wire, early_wire(&["a@x.net", "b@x.net"]));
        let o = done(
            f.say("250 2.1.0 ok\r\n550 5.1.1 unknown\r\n450 4.2.1 try later\r\n554 5.5.1 no valid recipients\r\n"),
        );
        assert_eq!(codes(&o), vec![('P', 550), ('T', 450)]);
        // The content's octets were consumed by the refusal: the session
        // ends cleanly.
        assert_eq!(f.sent(), "QUIT\r\n");
    }

    #[test]
    fn an_early_chunk_after_a_refused_mail_changes_nothing() {
        let mut f = Fake::new(text_txn(&["a@x.net"]));
        open_early(&mut f, EHLO_BINARY);
        let o = done(f.say("451 4.3.0 try later\r\n503 5.5.1 no MAIL\r\n503 5.5.1 no MAIL\r\n"));
        assert_eq!(codes(&o), vec![('T', 451)]);
    }

    #[test]
    fn text_goes_after_data_without_chunking_in_lmtp_when_large_or_when_disabled() {
        let data_after = |params: ClientParams, t: Transaction, ehlo: &str| {
            let mut f = Fake::with_params(params, t);
            let sent = f.open(ehlo);
            assert!(sent.ends_with("DATA\r\n"), "{sent}");
            assert_eq!(f.client.poll(f.now), ClientEvent::NeedInput);
        };
        let params = ClientParams::new("relay.example.org");
        // No CHUNKING offered.
        data_after(params.clone(), text_txn(&["a@x.net"]), EHLO_PIPE);
        // Larger than one chunk.
        let large = Transaction {
            size_bytes: BDAT_CHUNK_BYTES_MAX as u64 + 1,
            ..txn(&["a@x.net"])
        };
        data_after(params.clone(), large, EHLO_BINARY);
        // Turned off.
        data_after(
            ClientParams {
                chunking_enabled: false,
                ..params.clone()
            },
            text_txn(&["a@x.net"]),
            EHLO_BINARY,
        );
    }

    #[test]
    fn the_transcript_has_the_bdat_line_but_not_the_content() {
        let params = ClientParams {
            transcript: true,
            ..ClientParams::new("relay.example.org")
        };
        let mut f = Fake::with_params(params, text_txn(&["a@x.net"]));
        open_early(&mut f, EHLO_BINARY);
        let o = done(f.say("250 ok\r\n250 ok\r\n250 queued\r\n"));
        let sent: Vec<&str> = o
            .transcript
            .iter()
            .filter(|l| l.starts_with("C: "))
            .map(|l| l.as_str())
            .collect();
        assert_eq!(
            sent,
            vec![
                "C: EHLO relay.example.org",
                &format!("C: MAIL FROM:<alice@example.org> SIZE={}", TEXT.len()),
                "C: RCPT TO:<a@x.net>",
                &format!("C: BDAT {} LAST", TEXT.len()),
            ]
        );
    }

    #[test]
    fn binary_content_in_several_chunks_pipelined() {
        let mut f = Fake::new(binary_txn(&["a@x.net", "b@x.net"]));
        f.open(EHLO_BINARY);
        assert_eq!(
            f.say("250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n"),
            ClientEvent::SendChunk
        );
        let mut offset = 0;
        let (wire, event) = send_chunks(&mut f, BINARY, &mut offset, 4);
        // Up to BDAT_IN_FLIGHT_MAX chunks go before a reply is waited for.
        assert_eq!(event, ClientEvent::NeedInput);
        assert_eq!(offset, 4 * BDAT_IN_FLIGHT_MAX);
        let mut want = Vec::new();
        for chunk in BINARY[..offset].chunks(4) {
            want.extend_from_slice(b"BDAT 4\r\n");
            want.extend_from_slice(chunk);
        }
        assert_eq!(wire, want);
        // One reply frees one place.
        assert_eq!(f.say("250 2.0.0 4 octets\r\n"), ClientEvent::SendChunk);
        let mut wire = Vec::new();
        loop {
            let (more, event) = send_chunks(&mut f, BINARY, &mut offset, 4);
            wire.extend_from_slice(&more);
            if offset == BINARY.len() {
                assert_eq!(event, ClientEvent::NeedInput);
                break;
            }
            assert_eq!(f.say("250 ok\r\n"), ClientEvent::SendChunk);
        }
        let rest = &BINARY[4 * BDAT_IN_FLIGHT_MAX..];
        let mut want = Vec::new();
        for (i, chunk) in rest.chunks(4).enumerate() {
            let last = (i + 1) * 4 >= rest.len();
            let command = if last {
                format!("BDAT {} LAST\r\n", chunk.len())
            } else {
                "BDAT 4\r\n".to_string()
            };
            want.extend_from_slice(command.as_bytes());
            want.extend_from_slice(chunk);
        }
        assert_eq!(wire, want);
        let outstanding = f.client.chunks_in_flight();
        assert!(outstanding >= 1);
        for _ in 1..outstanding {
            assert_eq!(f.say("250 ok\r\n"), ClientEvent::NeedInput);
        }
        let o = done(f.say("250 2.0.0 queued\r\n"));
        assert_eq!(codes(&o), vec![('D', 250), ('P', 550)]);
    }

    #[test]
    fn binary_content_without_pipelining_waits_for_each_chunk() {
        let mut f = Fake::new(binary_txn(&["a@x.net"]));
        assert_eq!(
            f.open(EHLO_BINARY_NO_PIPELINING),
            format!("MAIL FROM:<alice@example.org> BODY=BINARYMIME\r\n")
        );
        f.say("250 ok\r\n");
        assert_eq!(f.sent(), "RCPT TO:<a@x.net>\r\n");
        assert_eq!(f.say("250 ok\r\n"), ClientEvent::SendChunk);
        let mut offset = 0;
        let (wire, event) = send_chunks(&mut f, BINARY, &mut offset, 16);
        assert_eq!(event, ClientEvent::NeedInput);
        assert_eq!(offset, 16);
        let mut want = b"BDAT 16\r\n".to_vec();
        want.extend_from_slice(&BINARY[..16]);
        assert_eq!(wire, want);
        assert_eq!(f.client.deadline(), f.now + Timeouts::default().data_block);
        assert_eq!(f.say("250 ok\r\n"), ClientEvent::SendChunk);
        let (wire, event) = send_chunks(&mut f, BINARY, &mut offset, 16);
        assert_eq!(event, ClientEvent::NeedInput);
        assert!(wire.starts_with(b"BDAT 16\r\n"));
        assert_eq!(f.say("250 ok\r\n"), ClientEvent::SendChunk);
        let (wire, _) = send_chunks(&mut f, BINARY, &mut offset, 16);
        let mut want = format!("BDAT {} LAST\r\n", BINARY.len() - 32).into_bytes();
        want.extend_from_slice(&BINARY[32..]);
        assert_eq!(wire, want);
        let o = done(f.say("250 2.0.0 ok\r\n"));
        assert_eq!(codes(&o), vec![('D', 250)]);
    }

    #[test]
    fn empty_binary_content_is_one_empty_last_chunk() {
        let mut f = Fake::new(Transaction {
            size_bytes: 0,
            ..binary_txn(&["a@x.net"])
        });
        f.open(EHLO_BINARY);
        assert_eq!(f.say("250 ok\r\n250 ok\r\n"), ClientEvent::SendChunk);
        let (wire, _) = send_chunks(&mut f, b"", &mut 0, 4);
        assert_eq!(wire, b"BDAT 0 LAST\r\n");
    }

    #[test]
    fn binary_content_to_a_server_without_binarymime_or_chunking_is_refused_locally() {
        for ehlo in [
            "250-mx\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 CHUNKING\r\n",
            "250-mx\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 BINARYMIME\r\n",
            EHLO_PIPE,
        ] {
            let mut f = Fake::new(binary_txn(&["a@x.net", "b@x.net"]));
            // No MAIL, nothing of the content: QUIT only.
            assert_eq!(f.open(ehlo), "QUIT\r\n", "{ehlo:?}");
            let o = done(f.client.poll(f.now));
            assert_eq!(codes(&o), vec![('P', 554), ('P', 554)]);
            for index in 0..2 {
                assert_eq!(enhanced_of(&o, index), Some(Enhanced(5, 6, 3)));
            }
            assert!(o.recipients[0].reply().lines[0].contains("BINARYMIME"));
            assert!(!o.mail_accepted);
        }
    }

    #[test]
    fn refused_chunk_fails_the_transaction_and_stops_the_content() {
        let mut f = Fake::with_params(keep_open(), binary_txn(&["a@x.net", "b@x.net"]));
        f.open(EHLO_BINARY);
        assert_eq!(
            f.say("250 ok\r\n250 ok\r\n250 ok\r\n"),
            ClientEvent::SendChunk
        );
        let mut offset = 0;
        let (_, event) = send_chunks(&mut f, BINARY, &mut offset, 4);
        assert_eq!(event, ClientEvent::NeedInput);
        let in_flight = f.client.chunks_in_flight();
        assert_eq!(in_flight, BDAT_IN_FLIGHT_MAX);
        // The first chunk is refused: no more chunks, the rest is consumed.
        assert_eq!(
            f.say("554 5.6.0 content refused\r\n"),
            ClientEvent::NeedInput
        );
        for _ in 2..in_flight {
            assert_eq!(
                f.say("503 5.5.1 no transaction\r\n"),
                ClientEvent::NeedInput
            );
        }
        let o = done(f.say("503 5.5.1 no transaction\r\n"));
        assert_eq!(codes(&o), vec![('P', 554), ('P', 554)]);
        assert_eq!(enhanced_of(&o, 1), Some(Enhanced(5, 6, 0)));
        assert!(o.reusable);
        assert_eq!(f.sent(), "");
        // The server may hold a half-received transaction: RSET first.
        f.client.next_transaction(txn(&["c@x.net"]), f.now);
        assert_eq!(f.sent(), "RSET\r\n");
    }

    #[test]
    fn binary_content_with_every_recipient_refused_sends_no_chunk() {
        let mut f = Fake::new(binary_txn(&["a@x.net"]));
        f.open(EHLO_BINARY);
        let o = done(f.say("250 ok\r\n550 5.1.1 unknown\r\n"));
        assert_eq!(codes(&o), vec![('P', 550)]);
        assert_eq!(f.sent(), "QUIT\r\n");
        let mut f = Fake::new(binary_txn(&["a@x.net"]));
        f.open(EHLO_BINARY);
        let o = done(f.say("451 4.3.0 later\r\n503 5.5.1 no MAIL\r\n"));
        assert_eq!(codes(&o), vec![('T', 451)]);
    }

    #[test]
    fn timeout_waiting_for_a_chunk_reply() {
        let mut f = Fake::new(binary_txn(&["a@x.net"]));
        f.open(EHLO_BINARY_NO_PIPELINING);
        f.say("250 ok\r\n");
        f.say("250 ok\r\n");
        let mut offset = 0;
        send_chunks(&mut f, BINARY, &mut offset, 16);
        f.now = f.client.deadline();
        let o = done(f.client.poll(f.now));
        assert_eq!(codes(&o), vec![('T', 451)]);
        assert!(
            o.recipients[0].reply().lines[0].contains("BDAT"),
            "{:?}",
            o.recipients[0]
        );
    }

    #[test]
    fn lmtp_binary_content_gets_one_reply_per_recipient_after_bdat_last() {
        let mut f = Fake::with_params(
            lmtp_params(),
            binary_txn(&["a@x.net", "b@x.net", "c@x.net"]),
        );
        f.client.poll(f.now);
        f.say("220 store LMTP\r\n");
        assert_eq!(f.sent(), "LHLO relay.example.org\r\n");
        f.say("250-store\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 BINARYMIME\r\n");
        assert_eq!(
            f.sent(),
            "MAIL FROM:<alice@example.org> BODY=BINARYMIME\r\nRCPT TO:<a@x.net>\r\nRCPT TO:<b@x.net>\r\nRCPT TO:<c@x.net>\r\n"
        );
        assert_eq!(
            f.say("250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n250 ok\r\n"),
            ClientEvent::SendChunk
        );
        let mut offset = 0;
        // LMTP waits for each chunk's reply, pipelining or not.
        let (wire, event) = send_chunks(&mut f, BINARY, &mut offset, 20);
        assert_eq!(event, ClientEvent::NeedInput);
        assert!(wire.starts_with(b"BDAT 20\r\n\x00"));
        assert_eq!(f.say("250 ok\r\n"), ClientEvent::SendChunk);
        let (wire, event) = send_chunks(&mut f, BINARY, &mut offset, 20);
        assert_eq!(event, ClientEvent::NeedInput);
        assert!(wire.starts_with(format!("BDAT {} LAST\r\n", BINARY.len() - 20).as_bytes()));
        assert_eq!(f.say("250 2.0.0 a saved\r\n"), ClientEvent::NeedInput);
        let o = done(f.say("452 4.2.2 c over quota\r\n"));
        assert_eq!(codes(&o), vec![('D', 250), ('P', 550), ('T', 452)]);
    }

    fn probe(recipients: &[&str]) -> Transaction {
        Transaction::probe("", recipients.iter().map(|r| r.to_string()).collect())
    }

    /// A probe with PIPELINING: MAIL and every RCPT in one batch, no DATA,
    /// no SIZE; each RCPT reply is its recipient's outcome; a probe whose
    /// RCPTs were all accepted keeps the session, with RSET before its
    /// next transaction; a refused one ends it.
    #[test]
    fn probe_pipelined_asks_rcpt_only_and_keeps_the_session() {
        let params = ClientParams { keep_open: true, transcript: true, ..ClientParams::new("relay.example.org") };
        let mut f = Fake::with_params(params.clone(), probe(&["random-x@dept.test", "x@dept.test"]));
        assert_eq!(f.open(EHLO_PIPE), "MAIL FROM:<>\r\nRCPT TO:<random-x@dept.test>\r\nRCPT TO:<x@dept.test>\r\n");
        let o = done(f.say("250 2.1.0 Ok\r\n550 5.1.1 unknown\r\n250 2.1.5 Ok\r\n"));
        assert_eq!(codes(&o), vec![('P', 550), ('D', 250)]);
        assert!(!o.reusable && o.mail_accepted);
        assert_eq!(f.sent(), "QUIT\r\n", "a refused probe does not keep its session");
        assert!(o.transcript.contains(&"C: MAIL FROM:<>".to_string()), "{:?}", o.transcript);
        assert!(o.transcript.contains(&"S: 550 5.1.1 unknown".to_string()), "{:?}", o.transcript);

        let mut f = Fake::with_params(params, probe(&["x@dept.test"]));
        assert_eq!(f.open(EHLO_PIPE), "MAIL FROM:<>\r\nRCPT TO:<x@dept.test>\r\n");
        let o = done(f.say("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"));
        assert!(o.reusable);
        assert_eq!(f.sent(), "", "no DATA, no QUIT: the session is kept");
        // The next transaction on the session starts with RSET.
        f.client.next_transaction(probe(&["y@dept.test"]), f.now);
        assert_eq!(f.client.poll(f.now), ClientEvent::NeedInput);
        assert_eq!(f.sent(), "RSET\r\n");
        assert_eq!(f.say("250 2.0.0 Ok\r\n"), ClientEvent::NeedInput);
        assert_eq!(f.sent(), "MAIL FROM:<>\r\nRCPT TO:<y@dept.test>\r\n");
        let o = done(f.say("250 2.1.0 Ok\r\n451 4.3.0 try later\r\n"));
        assert_eq!(codes(&o), vec![('T', 451)]);
    }

    /// Without PIPELINING, one command at a time; without keep_open, QUIT.
    /// A refused MAIL fails every recipient with its reply.
    #[test]
    fn probe_without_pipelining_and_refused_null_sender() {
        let mut f = Fake::new(probe(&["a@dept.test", "b@dept.test"]));
        assert_eq!(f.open(EHLO_PLAIN), "MAIL FROM:<>\r\n");
        assert_eq!(f.say("250 ok\r\n"), ClientEvent::NeedInput);
        assert_eq!(f.sent(), "RCPT TO:<a@dept.test>\r\n");
        assert_eq!(f.say("250 ok\r\n"), ClientEvent::NeedInput);
        assert_eq!(f.sent(), "RCPT TO:<b@dept.test>\r\n");
        let o = done(f.say("550 5.1.1 no\r\n"));
        assert_eq!(codes(&o), vec![('D', 250), ('P', 550)]);
        assert_eq!(f.sent(), "QUIT\r\n");

        let mut f = Fake::new(probe(&["a@dept.test"]));
        assert_eq!(f.open(EHLO_PIPE), "MAIL FROM:<>\r\nRCPT TO:<a@dept.test>\r\n");
        let o = done(f.say("553 5.7.1 null sender refused\r\n503 5.5.1 need MAIL\r\n"));
        assert_eq!(codes(&o), vec![('P', 553)]);
        assert!(!o.mail_accepted);
    }
}
