//! The SMTP server side of `ringpost-sink`, as a sans-IO state machine.
//!
//! `SinkSession::step` takes the bytes received so far, appends replies to
//! an output buffer and says how many input bytes it consumed. It stops at
//! the end of each message (`Step::Final`) so the socket driver can add a
//! delay, record the message and then send the final reply, and at QUIT.
//! Pipelined commands are handled one line at a time, in order; replies
//! accumulate until the driver needs more input and flushes them.
//! Lines are bounded: an over-long command line is answered with 500 and
//! skipped, an over-long data line is consumed in pieces.
//! The message content itself is discarded; only the header section is
//! kept (bounded) to find the message's `X-Blast-Id` or `Message-ID`.

use crate::rng::{hash_bytes, unit_f64, Rng};

/// Longest command line, including CRLF (RFC 5321 says 512; be generous).
pub const COMMAND_LINE_BYTES_MAX: usize = 2048;
/// Data lines longer than this are consumed in pieces of this size.
pub const DATA_LINE_BYTES_MAX: usize = 8192;
/// Header bytes kept per message to find its id.
pub const HEADER_SCAN_BYTES_MAX: usize = 16 * 1024;
/// Longest id logged.
pub const ID_BYTES_MAX: usize = 256;
/// The driver's input buffer must hold this many bytes.
pub const INPUT_BUFFER_BYTES_MIN: usize = DATA_LINE_BYTES_MAX * 2;

/// How the sink answers; shares are probabilities in `[0, 1]`.
#[derive(Clone, Debug)]
pub struct SinkPolicy {
    pub hostname: String,
    pub rcpt_tempfail: f64,
    pub rcpt_reject: f64,
    pub data_tempfail: f64,
    pub data_reject: f64,
    /// When set, every decision is a hash of the seed and the envelope or
    /// message id, so the same message gets the same answer in every run.
    pub seed: Option<u64>,
    pub message_size_bytes_max: u64,
    pub rcpts_per_message_max: usize,
}

impl Default for SinkPolicy {
    fn default() -> SinkPolicy {
        SinkPolicy {
            hostname: "sink.invalid".into(),
            rcpt_tempfail: 0.0,
            rcpt_reject: 0.0,
            data_tempfail: 0.0,
            data_reject: 0.0,
            seed: None,
            message_size_bytes_max: 64 << 20,
            rcpts_per_message_max: 1000,
        }
    }
}

/// What the driver must do after `step`.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// All complete input was consumed; flush the output and read more.
    NeedMore,
    /// A message ended: flush the output, record it, then send `reply`.
    Final(FinalReply),
    /// QUIT was answered: flush the output and close.
    Quit,
}

#[derive(Debug, PartialEq, Eq)]
pub struct FinalReply {
    pub reply: &'static str,
    pub accepted: bool,
    pub id: Option<String>,
    pub rcpt_count: u32,
    pub size_bytes: u64,
}

/// Counts the driver drains into the process totals.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionCounts {
    pub rcpt_accepted: u64,
    pub rcpt_tempfailed: u64,
    pub rcpt_rejected: u64,
    pub messages_accepted: u64,
    pub messages_tempfailed: u64,
    pub messages_rejected: u64,
    pub bytes_received: u64,
}

enum Mode {
    Command,
    /// Skipping the rest of an over-long command line.
    SkipLine,
    Data {
        at_line_start: bool,
    },
    Bdat {
        remaining_bytes: u64,
        last: bool,
        failed: Option<&'static str>,
    },
}

struct Transaction {
    from: Vec<u8>,
    rcpt_count: u32,
    rcpt_accepted: u32,
    size_bytes: u64,
    headers: Vec<u8>,
    headers_done: bool,
}

pub struct SinkSession<'p> {
    policy: &'p SinkPolicy,
    mode: Mode,
    txn: Option<Transaction>,
    rng: Rng,
    pub counts: SessionCounts,
}

const REPLY_ACCEPTED: &str = "250 2.0.0 Ok: queued\r\n";
const REPLY_DATA_TEMPFAIL: &str = "451 4.3.0 Temporary failure (sink policy)\r\n";
const REPLY_DATA_REJECT: &str = "554 5.7.1 Message rejected (sink policy)\r\n";
const REPLY_TOO_BIG: &str = "552 5.3.4 Message too big\r\n";

impl<'p> SinkSession<'p> {
    pub fn new(policy: &'p SinkPolicy, session_seed: u64) -> SinkSession<'p> {
        SinkSession {
            policy,
            mode: Mode::Command,
            txn: None,
            rng: Rng::new(session_seed),
            counts: SessionCounts::default(),
        }
    }

    pub fn greeting(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(format!("220 {} ESMTP ringpost-sink\r\n", self.policy.hostname).as_bytes());
    }

    /// Consumes complete input from `input`, appending replies to `out`.
    pub fn step(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, Step) {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            // A BDAT chunk always progresses (it asks for input itself).
            let was_bdat = matches!(self.mode, Mode::Bdat { .. });
            let (used, step) = match self.mode {
                Mode::Command => self.command(rest, out),
                Mode::SkipLine => self.skip_line(rest),
                Mode::Data { .. } => self.data(rest),
                Mode::Bdat { .. } => self.bdat(rest, out),
            };
            pos += used;
            match step {
                Some(step) => return (pos, step),
                None if used == 0 && !was_bdat => return (pos, Step::NeedMore),
                None => {}
            }
        }
    }

    fn command(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, Option<Step>) {
        let Some(nl) = input.iter().position(|&b| b == b'\n') else {
            if input.len() >= COMMAND_LINE_BYTES_MAX {
                out.extend_from_slice(b"500 5.5.6 Line too long\r\n");
                self.mode = Mode::SkipLine;
                return (input.len(), None);
            }
            return (0, None);
        };
        if nl + 1 > COMMAND_LINE_BYTES_MAX {
            out.extend_from_slice(b"500 5.5.6 Line too long\r\n");
            return (nl + 1, None);
        }
        let line = input[..nl].strip_suffix(b"\r").unwrap_or(&input[..nl]);
        let step = self.execute(line, out);
        (nl + 1, step)
    }

    fn skip_line(&mut self, input: &[u8]) -> (usize, Option<Step>) {
        match input.iter().position(|&b| b == b'\n') {
            Some(nl) => {
                self.mode = Mode::Command;
                (nl + 1, None)
            }
            None => (input.len(), None),
        }
    }

    fn execute(&mut self, line: &[u8], out: &mut Vec<u8>) -> Option<Step> {
        let verb_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
        let verb = line[..verb_end].to_ascii_uppercase();
        let arg = line[verb_end..].trim_ascii();
        match verb.as_slice() {
            b"EHLO" => {
                self.txn = None;
                let text = format!(
                    "250-{}\r\n250-PIPELINING\r\n250-SIZE {}\r\n250-8BITMIME\r\n\
                     250-ENHANCEDSTATUSCODES\r\n250 CHUNKING\r\n",
                    self.policy.hostname, self.policy.message_size_bytes_max
                );
                out.extend_from_slice(text.as_bytes());
            }
            b"HELO" => {
                self.txn = None;
                out.extend_from_slice(format!("250 {}\r\n", self.policy.hostname).as_bytes());
            }
            b"MAIL" => self.mail(arg, out),
            b"RCPT" => self.rcpt(arg, out),
            b"DATA" => {
                if let Some(reply) = self.data_refusal() {
                    out.extend_from_slice(reply.as_bytes());
                } else {
                    out.extend_from_slice(b"354 End data with <CR><LF>.<CR><LF>\r\n");
                    self.mode = Mode::Data { at_line_start: true };
                }
            }
            b"BDAT" => self.bdat_command(arg, out),
            b"RSET" => {
                self.txn = None;
                out.extend_from_slice(b"250 2.0.0 Ok\r\n");
            }
            b"NOOP" => out.extend_from_slice(b"250 2.0.0 Ok\r\n"),
            b"VRFY" => out.extend_from_slice(b"252 2.0.0 Cannot verify\r\n"),
            b"QUIT" => {
                out.extend_from_slice(b"221 2.0.0 Bye\r\n");
                return Some(Step::Quit);
            }
            _ => out.extend_from_slice(b"500 5.5.2 Command not recognized\r\n"),
        }
        None
    }

    fn mail(&mut self, arg: &[u8], out: &mut Vec<u8>) {
        if self.txn.is_some() {
            out.extend_from_slice(b"503 5.5.1 Nested MAIL command\r\n");
            return;
        }
        let Some(path) = strip_prefix_ci(arg, b"FROM:") else {
            out.extend_from_slice(b"501 5.5.4 Syntax: MAIL FROM:<address>\r\n");
            return;
        };
        let (addr, params) = split_path(path);
        if let Some(size) = param_value(params, b"SIZE=") {
            if size > self.policy.message_size_bytes_max {
                out.extend_from_slice(REPLY_TOO_BIG.as_bytes());
                return;
            }
        }
        self.txn = Some(Transaction {
            from: addr.to_vec(),
            rcpt_count: 0,
            rcpt_accepted: 0,
            size_bytes: 0,
            headers: Vec::new(),
            headers_done: false,
        });
        out.extend_from_slice(b"250 2.1.0 Ok\r\n");
    }

    fn rcpt(&mut self, arg: &[u8], out: &mut Vec<u8>) {
        let policy = self.policy;
        let Some(txn) = self.txn.as_mut() else {
            out.extend_from_slice(b"503 5.5.1 Need MAIL first\r\n");
            return;
        };
        let Some(path) = strip_prefix_ci(arg, b"TO:") else {
            out.extend_from_slice(b"501 5.5.4 Syntax: RCPT TO:<address>\r\n");
            return;
        };
        if txn.rcpt_count as usize >= policy.rcpts_per_message_max {
            out.extend_from_slice(b"452 4.5.3 Too many recipients\r\n");
            return;
        }
        txn.rcpt_count += 1;
        let (addr, _) = split_path(path);
        let draw = match policy.seed {
            Some(seed) => unit_f64(hash_bytes(seed, &[b"rcpt", &txn.from, addr])),
            None => self.rng.next_f64(),
        };
        if draw < policy.rcpt_reject {
            self.counts.rcpt_rejected += 1;
            out.extend_from_slice(b"550 5.1.1 Recipient rejected (sink policy)\r\n");
        } else if draw < policy.rcpt_reject + policy.rcpt_tempfail {
            self.counts.rcpt_tempfailed += 1;
            out.extend_from_slice(b"450 4.2.1 Recipient tempfailed (sink policy)\r\n");
        } else {
            self.counts.rcpt_accepted += 1;
            txn.rcpt_accepted += 1;
            out.extend_from_slice(b"250 2.1.5 Ok\r\n");
        }
    }

    /// Why DATA or BDAT cannot start now, if it cannot.
    fn data_refusal(&self) -> Option<&'static str> {
        match &self.txn {
            None => Some("503 5.5.1 Need MAIL first\r\n"),
            Some(t) if t.rcpt_accepted == 0 => Some("554 5.5.1 No valid recipients\r\n"),
            Some(_) => None,
        }
    }

    fn bdat_command(&mut self, arg: &[u8], out: &mut Vec<u8>) {
        let mut words = arg.split(|&b| b == b' ').filter(|w| !w.is_empty());
        let size = words
            .next()
            .and_then(|w| std::str::from_utf8(w).ok()?.parse::<u64>().ok());
        let last = match words.next() {
            None => false,
            Some(w) if w.eq_ignore_ascii_case(b"LAST") => true,
            Some(_) => {
                out.extend_from_slice(b"501 5.5.4 Syntax: BDAT size [LAST]\r\n");
                return;
            }
        };
        let Some(size) = size else {
            out.extend_from_slice(b"501 5.5.4 Syntax: BDAT size [LAST]\r\n");
            return;
        };
        // A refused chunk is still read in full (RFC 3030 section 2).
        let failed = self.data_refusal();
        self.mode = Mode::Bdat {
            remaining_bytes: size,
            last,
            failed,
        };
    }

    fn data(&mut self, input: &[u8]) -> (usize, Option<Step>) {
        let Mode::Data { at_line_start } = self.mode else {
            unreachable!()
        };
        let (line_len, complete) = match input.iter().position(|&b| b == b'\n') {
            Some(nl) => (nl + 1, true),
            None if input.len() >= DATA_LINE_BYTES_MAX => (input.len(), false),
            None => return (0, None),
        };
        let line = &input[..line_len];
        if at_line_start && complete && (line == b".\r\n" || line == b".\n") {
            self.mode = Mode::Command;
            return (line_len, Some(Step::Final(self.finish())));
        }
        let content = if at_line_start && line.starts_with(b".") {
            &line[1..]
        } else {
            line
        };
        self.take_content(content);
        self.mode = Mode::Data {
            at_line_start: complete,
        };
        (line_len, None)
    }

    fn bdat(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, Option<Step>) {
        let Mode::Bdat {
            remaining_bytes,
            last,
            failed,
        } = self.mode
        else {
            unreachable!()
        };
        if remaining_bytes > 0 && input.is_empty() {
            return (0, Some(Step::NeedMore));
        }
        let take = (remaining_bytes.min(input.len() as u64)) as usize;
        if failed.is_none() {
            self.take_content(&input[..take]);
        }
        let remaining_bytes = remaining_bytes - take as u64;
        if remaining_bytes > 0 {
            self.mode = Mode::Bdat {
                remaining_bytes,
                last,
                failed,
            };
            return (take, None);
        }
        self.mode = Mode::Command;
        if let Some(reply) = failed {
            self.txn = None;
            out.extend_from_slice(reply.as_bytes());
            return (take, None);
        }
        if last {
            return (take, Some(Step::Final(self.finish())));
        }
        let size = self.txn.as_ref().map_or(0, |t| t.size_bytes);
        out.extend_from_slice(format!("250 2.0.0 {size} octets received\r\n").as_bytes());
        (take, None)
    }

    fn take_content(&mut self, content: &[u8]) {
        let Some(txn) = self.txn.as_mut() else { return };
        txn.size_bytes += content.len() as u64;
        self.counts.bytes_received += content.len() as u64;
        if !txn.headers_done {
            let room = HEADER_SCAN_BYTES_MAX - txn.headers.len();
            txn.headers.extend_from_slice(&content[..content.len().min(room)]);
            let h = &txn.headers;
            txn.headers_done = h.len() >= HEADER_SCAN_BYTES_MAX
                || h.starts_with(b"\r\n")
                || h.windows(4).any(|w| w == b"\r\n\r\n");
        }
    }

    fn finish(&mut self) -> FinalReply {
        let txn = self.txn.take().expect("a message ends only inside a transaction");
        let id = find_id(&txn.headers);
        let draw = match (self.policy.seed, &id) {
            (Some(seed), Some(id)) => unit_f64(hash_bytes(seed, &[b"data", id.as_bytes()])),
            (Some(seed), None) => unit_f64(hash_bytes(
                seed,
                &[b"data", &txn.from, &txn.size_bytes.to_le_bytes()],
            )),
            (None, _) => self.rng.next_f64(),
        };
        let (reply, accepted) = if txn.size_bytes > self.policy.message_size_bytes_max {
            (REPLY_TOO_BIG, false)
        } else if draw < self.policy.data_reject {
            (REPLY_DATA_REJECT, false)
        } else if draw < self.policy.data_reject + self.policy.data_tempfail {
            (REPLY_DATA_TEMPFAIL, false)
        } else {
            (REPLY_ACCEPTED, true)
        };
        match reply.as_bytes()[0] {
            b'2' => self.counts.messages_accepted += 1,
            b'4' => self.counts.messages_tempfailed += 1,
            _ => self.counts.messages_rejected += 1,
        }
        FinalReply {
            reply,
            accepted,
            id,
            rcpt_count: txn.rcpt_accepted,
            size_bytes: txn.size_bytes,
        }
    }
}

fn strip_prefix_ci<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    if s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix) {
        Some(s[prefix.len()..].trim_ascii_start())
    } else {
        None
    }
}

/// Splits `<addr> PARAMS` into the address (without brackets) and params.
fn split_path(path: &[u8]) -> (&[u8], &[u8]) {
    if let Some(rest) = path.strip_prefix(b"<") {
        if let Some(end) = rest.iter().position(|&b| b == b'>') {
            return (&rest[..end], rest[end + 1..].trim_ascii());
        }
    }
    let end = path.iter().position(|&b| b == b' ').unwrap_or(path.len());
    (&path[..end], path[end..].trim_ascii())
}

fn param_value(params: &[u8], key: &[u8]) -> Option<u64> {
    params
        .split(|&b| b == b' ')
        .find_map(|p| strip_prefix_ci(p, key))
        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
}

/// The `X-Blast-Id` value, else the `Message-ID` without angle brackets.
pub fn find_id(headers: &[u8]) -> Option<String> {
    let mut message_id = None;
    for line in headers.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if let Some(v) = strip_prefix_ci(line, b"X-Blast-Id:") {
            return clean_id(v);
        }
        if let Some(v) = strip_prefix_ci(line, b"Message-ID:") {
            let v = v.trim_ascii();
            let v = v.strip_prefix(b"<").unwrap_or(v);
            let v = v.strip_suffix(b">").unwrap_or(v);
            message_id = clean_id(v);
        }
    }
    message_id
}

fn clean_id(v: &[u8]) -> Option<String> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > ID_BYTES_MAX || !v.iter().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    String::from_utf8(v.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a whole transcript through a session, feeding `chunk` bytes at a time.
    fn run(policy: &SinkPolicy, input: &[u8], chunk: usize) -> (String, Vec<FinalReply>, SessionCounts) {
        let mut s = SinkSession::new(policy, 1);
        let mut out = Vec::new();
        s.greeting(&mut out);
        let mut buf = Vec::new();
        let mut finals = Vec::new();
        for piece in input.chunks(chunk) {
            buf.extend_from_slice(piece);
            loop {
                let (used, step) = s.step(&buf, &mut out);
                buf.drain(..used);
                match step {
                    Step::NeedMore => break,
                    Step::Final(f) => {
                        out.extend_from_slice(f.reply.as_bytes());
                        finals.push(f);
                    }
                    Step::Quit => return (String::from_utf8(out).unwrap(), finals, s.counts),
                }
            }
        }
        (String::from_utf8(out).unwrap(), finals, s.counts)
    }

    const PIPELINED: &[u8] =
        b"EHLO c\r\nMAIL FROM:<a@x> SIZE=100\r\nRCPT TO:<b@y>\r\nRCPT TO:<c@y>\r\nDATA\r\n\
        X-Blast-Id: run.1\r\nSubject: s\r\n\r\n..dot\r\nbody\r\n.\r\nQUIT\r\n";

    #[test]
    fn pipelined_transcript_any_chunking() {
        for chunk in [1, 3, 7, 1000] {
            let (out, finals, counts) = run(&SinkPolicy::default(), PIPELINED, chunk);
            let codes: Vec<&str> = out.lines().map(|l| &l[..4]).collect();
            assert_eq!(
                codes,
                [
                    "220 ", "250-", "250-", "250-", "250-", "250-", "250 ", "250 ", "250 ", "250 ", "354 ",
                    "250 ", "221 "
                ]
            );
            assert_eq!(finals.len(), 1);
            assert_eq!(finals[0].id.as_deref(), Some("run.1"));
            assert_eq!(finals[0].rcpt_count, 2);
            // "X-Blast-Id: run.1\r\n" 19 + "Subject: s\r\n" 12 + 2 + ".dot\r\n" 6 + "body\r\n" 6
            assert_eq!(finals[0].size_bytes, 45);
            assert_eq!(counts.messages_accepted, 1);
        }
    }

    #[test]
    fn rcpt_reject_all() {
        let policy = SinkPolicy {
            rcpt_reject: 1.0,
            seed: Some(5),
            ..SinkPolicy::default()
        };
        let (out, finals, counts) = run(&policy, PIPELINED, 1000);
        assert!(out.contains("550 5.1.1"));
        assert!(out.contains("554 5.5.1 No valid"));
        // The body lines are then commands, answered with 500; no message.
        assert!(finals.is_empty());
        assert_eq!(counts.rcpt_rejected, 2);
    }

    #[test]
    fn bdat_chunks() {
        let input = b"EHLO c\r\nMAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 21\r\nMessage-ID: <m.2@h>\r\nBDAT 5 LAST\r\n\r\nx\r\nQUIT\r\n";
        for chunk in [1, 5, 1000] {
            let (out, finals, _) = run(&SinkPolicy::default(), input, chunk);
            assert!(out.contains("250 2.0.0 21 octets received"), "{out}");
            assert_eq!(finals.len(), 1);
            assert_eq!(finals[0].id.as_deref(), Some("m.2@h"));
            assert_eq!(finals[0].size_bytes, 26);
        }
    }

    #[test]
    fn bdat_without_recipients_reads_chunk() {
        let input = b"MAIL FROM:<a@x>\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n";
        let (out, finals, _) = run(&SinkPolicy::default(), input, 1000);
        assert!(finals.is_empty());
        assert!(out.contains("554 5.5.1"));
        assert!(out.ends_with("250 2.0.0 Ok\r\n"), "{out}");
    }

    #[test]
    fn long_lines_bounded() {
        let mut input = b"EHLO c\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'A', COMMAND_LINE_BYTES_MAX * 3));
        input.extend_from_slice(b"\r\nNOOP\r\nMAIL FROM:<a>\r\nRCPT TO:<b>\r\nDATA\r\n");
        input.extend(std::iter::repeat_n(b'B', DATA_LINE_BYTES_MAX * 3));
        input.extend_from_slice(b"\r\n.\r\n");
        let (out, finals, _) = run(&SinkPolicy::default(), &input, 4096);
        assert_eq!(out.matches("500 5.5.6").count(), 1, "{out}");
        assert!(out.contains("250 2.0.0 Ok\r\n250 2.1.0"));
        assert_eq!(finals.len(), 1);
        assert_eq!(finals[0].size_bytes, DATA_LINE_BYTES_MAX as u64 * 3 + 2);
    }

    #[test]
    fn seeded_decisions_repeat() {
        let policy = SinkPolicy {
            rcpt_reject: 0.5,
            seed: Some(11),
            ..SinkPolicy::default()
        };
        let a = run(&policy, PIPELINED, 1000).0;
        let b = run(&policy, PIPELINED, 17).0;
        assert_eq!(a, b);
    }
}
