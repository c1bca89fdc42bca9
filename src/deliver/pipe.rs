//! Pipe delivery: the message on the standard input of a program, run
//! without a shell under a configured user and group, with a time limit,
//! its exit status read as sysexits.h codes (as Postfix's pipe(8) does).
//!
//! Place in the pipeline: a transport of the delivery engine, chosen by a
//! `[[transport]]` rule with `transport = "pipe"`. The program runs on the
//! blocking pool, never on the shard's executor.
//!
//! - argv: each element is expanded — `{sender}`, `{recipient}`, `{user}`
//!   (the local part), `{domain}`, `{extension}` (what follows the first
//!   '+' of the local part) — and passed as one argument, whatever it
//!   contains. When an element names a per-recipient token, the program
//!   runs once per recipient; otherwise once for all of them.
//! - stdin: `Return-Path: <sender>` and `Delivered-To: <recipient>` (the
//!   latter only when run per recipient), then the message with LF line
//!   endings, as mail programs on Unix expect; a BINARYMIME message byte
//!   for byte, those two lines ending in CRLF.
//! - environment: only `PATH=/usr/bin:/bin`, `SENDER`, `RECIPIENT` (the
//!   recipients separated by spaces), `USER`, `DOMAIN`, `EXTENSION`.
//! - exit status: 0 delivered; 75 (EX_TEMPFAIL) and the other codes
//!   sysexits.h calls temporary defer; the rest fail permanently with the
//!   enhanced code of Postfix's table; death by a signal or the time limit
//!   defers. The first line of what the program wrote (stdout, then
//!   stderr; at most `OUTPUT_BYTES_MAX`) is the reply text.

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::queue::{Body, Envelope, StoredBody};
use crate::smtp::client::RcptOutcome;
use crate::smtp::reply::{Enhanced, Reply};

/// Output of the program kept for the reply text.
const OUTPUT_BYTES_MAX: usize = 4096;
/// How often the child is looked at while it runs.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// Characters of the program's output in a reply text.
const REPLY_TEXT_CHARS_MAX: usize = 200;

/// A pipe transport, resolved from its `[[transport]]` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipeParams {
    pub argv: Vec<String>,
    pub uid: u32,
    pub gid: u32,
    pub timeout: Duration,
}

impl PipeParams {
    /// From a rule's command, user and group (names or numbers). Unset
    /// means `nobody` and that user's primary group when ringpost runs as
    /// root (a pipe never runs as root by default), and ringpost's own ids
    /// otherwise (after the drop to `server.user` nothing can switch to
    /// another user).
    pub fn from_rule(
        command: &[String],
        user: Option<&str>,
        group: Option<&str>,
        timeout: Duration,
    ) -> Result<PipeParams, String> {
        // SAFETY: these calls only read the process's ids.
        let (euid, uid, gid) = unsafe { (libc::geteuid(), libc::getuid(), libc::getgid()) };
        let (uid, primary_gid) = match user {
            Some(user) => lookup_user(user)?,
            None if euid != 0 => (uid, gid),
            None => lookup_user("nobody")?,
        };
        let gid = match group {
            Some(group) => lookup_group(group)?,
            None => primary_gid,
        };
        Ok(PipeParams { argv: command.to_vec(), uid, gid, timeout })
    }
}

pub(crate) fn lookup_user(name: &str) -> Result<(u32, u32), String> {
    let passwd = std::fs::read_to_string("/etc/passwd").map_err(|e| format!("/etc/passwd: {e}"))?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 4 && (fields[0] == name || fields[2] == name) {
            let uid = fields[2].parse().map_err(|_| format!("/etc/passwd: bad uid for {name}"))?;
            let gid = fields[3].parse().map_err(|_| format!("/etc/passwd: bad gid for {name}"))?;
            return Ok((uid, gid));
        }
    }
    name.parse::<u32>().map(|uid| (uid, uid)).map_err(|_| format!("no user {name:?} in /etc/passwd"))
}

pub(crate) fn lookup_group(name: &str) -> Result<u32, String> {
    let groups = std::fs::read_to_string("/etc/group").map_err(|e| format!("/etc/group: {e}"))?;
    for line in groups.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 3 && (fields[0] == name || fields[2] == name) {
            return fields[2].parse().map_err(|_| format!("/etc/group: bad gid for {name}"));
        }
    }
    name.parse::<u32>().map_err(|_| format!("no group {name:?} in /etc/group"))
}

/// The outcome of an exit status (sysexits.h, mapped as Postfix's
/// sys_exits table does).
pub fn outcome_of_exit(code: i32, text: &str) -> RcptOutcome {
    let (reply_code, enhanced, what) = match code {
        0 => return RcptOutcome::Delivered(Reply::new(250, Enhanced(2, 0, 0), text_or(text, "delivered"))),
        64 => (550, Enhanced(5, 3, 0), "command line usage error"),
        65 => (550, Enhanced(5, 6, 0), "data format error"),
        66 => (550, Enhanced(5, 3, 0), "cannot open input"),
        67 => (550, Enhanced(5, 1, 1), "user unknown"),
        68 => (550, Enhanced(5, 1, 2), "host name unknown"),
        69 => (550, Enhanced(5, 3, 0), "service unavailable"),
        70 => (550, Enhanced(5, 3, 0), "internal software error"),
        71 => (451, Enhanced(4, 3, 0), "system resource problem"),
        72 => (550, Enhanced(5, 3, 0), "critical OS file missing"),
        73 => (550, Enhanced(5, 2, 0), "cannot create output file"),
        74 => (451, Enhanced(4, 3, 0), "input/output error"),
        75 => (451, Enhanced(4, 3, 0), "temporary failure"),
        76 => (550, Enhanced(5, 5, 0), "remote error in protocol"),
        77 => (550, Enhanced(5, 7, 0), "permission denied"),
        78 => (550, Enhanced(5, 3, 5), "local configuration error"),
        // Not a sysexits.h code: Postfix defers these too.
        _ => (451, Enhanced(4, 3, 0), "unknown exit status"),
    };
    let reply = Reply::new(reply_code, enhanced, format!("{} (exit {code}){}", what, text_suffix(text)));
    if reply_code >= 500 {
        RcptOutcome::Permanent(reply)
    } else {
        RcptOutcome::Transient(reply)
    }
}

fn text_or(text: &str, default: &str) -> String {
    if text.is_empty() {
        default.to_string()
    } else {
        text.to_string()
    }
}

fn text_suffix(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

/// Delivers `env` to the recipients at `indexes` through the program.
pub async fn deliver(params: &PipeParams, stored: &StoredBody, env: &Envelope, indexes: &[usize]) -> Vec<RcptOutcome> {
    let per_recipient = params
        .argv
        .iter()
        .any(|arg| ["{recipient}", "{user}", "{domain}", "{extension}"].iter().any(|t| arg.contains(t)));
    let groups: Vec<Vec<usize>> =
        if per_recipient { indexes.iter().map(|&i| vec![i]).collect() } else { vec![indexes.to_vec()] };
    let mut outcomes = Vec::with_capacity(indexes.len());
    for group in groups {
        let recipients: Vec<String> = group.iter().map(|&i| env.recipients[i].address.to_string()).collect();
        let first = &env.recipients[group[0]].address;
        let job = Job {
            params: params.clone(),
            sender: match &env.sender {
                crate::smtp::address::ReversePath::Null => String::new(),
                crate::smtp::address::ReversePath::Path(a) => a.to_string(),
            },
            binary: env.body_binary,
            headers_prepended: env.headers_prepended.clone(),
            user: first.local_part.clone(),
            domain: first.domain.clone().unwrap_or_default(),
            recipients,
            per_recipient,
            body: env.body.clone(),
            stored: stored.clone(),
        };
        let outcome = glommio::executor().spawn_blocking(move || job.run()).await;
        outcomes.extend(group.iter().map(|_| outcome.clone()));
    }
    outcomes
}

/// One run of the program, on the blocking pool.
struct Job {
    params: PipeParams,
    sender: String,
    /// The local part and domain of the first recipient.
    user: String,
    domain: String,
    recipients: Vec<String>,
    /// BINARYMIME content: passed on byte for byte.
    binary: bool,
    /// Header lines added above the content (CRLF line ends).
    headers_prepended: Vec<u8>,
    per_recipient: bool,
    body: Body,
    stored: StoredBody,
}

impl Job {
    fn run(self) -> RcptOutcome {
        match self.run_checked() {
            Ok(outcome) => outcome,
            Err(e) => RcptOutcome::Transient(Reply::new(451, Enhanced(4, 3, 0), format!("pipe: {e}"))),
        }
    }

    fn run_checked(&self) -> std::io::Result<RcptOutcome> {
        let first = self.recipients.first().map(String::as_str).unwrap_or("");
        let (user, domain) = (self.user.as_str(), self.domain.as_str());
        let extension = user.split_once('+').map(|(_, ext)| ext).unwrap_or("");
        let expand = |arg: &str| {
            arg.replace("{sender}", &self.sender)
                .replace("{recipient}", first)
                .replace("{user}", user)
                .replace("{domain}", domain)
                .replace("{extension}", extension)
        };
        let argv: Vec<String> = self.params.argv.iter().map(|a| expand(a)).collect();
        let vars = [
            ("SENDER", self.sender.clone()),
            ("RECIPIENT", self.recipients.join(" ")),
            ("USER", user.to_string()),
            ("DOMAIN", domain.to_string()),
            ("EXTENSION", extension.to_string()),
        ];
        // Text goes out with LF line ends; binary content (BINARYMIME)
        // byte for byte, after header lines ending in CRLF like its own.
        let eol = if self.binary { "\r\n" } else { "\n" };
        let mut header = format!("Return-Path: <{}>{eol}", self.sender);
        if self.per_recipient {
            header.push_str(&format!("Delivered-To: {first}{eol}"));
        }
        let added = String::from_utf8_lossy(&self.headers_prepended);
        header.push_str(&if self.binary { added.into_owned() } else { added.replace("\r\n", "\n") });
        let (body, stored, line_ends) = (self.body.clone(), self.stored.clone(), binary_of(self.binary));
        let feed = move |stdin: &mut ChildStdin| write_message(stdin, header.as_bytes(), &body, &stored, line_ends);
        let Ran { status, stdout: out, stderr: err } =
            run_program(&argv, &vars, self.params.uid, self.params.gid, self.params.timeout, feed)?;
        let text = first_line(if out.trim().is_empty() { &err } else { &out });
        Ok(match status {
            None => RcptOutcome::Transient(Reply::new(
                451,
                Enhanced(4, 3, 0),
                format!("pipe: {} killed after {} s{}", argv[0], self.params.timeout.as_secs(), text_suffix(&text)),
            )),
            Some(status) => match (status.code(), status.signal()) {
                (Some(code), _) => outcome_of_exit(code, &text),
                (None, signal) => RcptOutcome::Transient(Reply::new(
                    451,
                    Enhanced(4, 3, 0),
                    format!("pipe: {} killed by signal {}{}", argv[0], signal.unwrap_or(0), text_suffix(&text)),
                )),
            },
        })
    }
}

fn binary_of(binary: bool) -> LineEnds {
    if binary {
        LineEnds::AsStored
    } else {
        LineEnds::Lf
    }
}

/// How content goes to a program's standard input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineEnds {
    /// CRLF as LF, as mail programs on Unix expect.
    Lf,
    /// Byte for byte (BINARYMIME content).
    AsStored,
}

/// Writes `prefix` and then the stored content (inline, or the body file's
/// or the body log's bytes at `stored`) to `out`.
pub fn write_message(
    out: &mut impl Write,
    prefix: &[u8],
    body: &Body,
    stored: &StoredBody,
    line_ends: LineEnds,
) -> std::io::Result<()> {
    out.write_all(prefix)?;
    if line_ends == LineEnds::AsStored {
        match body {
            Body::Inline(bytes) => out.write_all(bytes)?,
            Body::File { .. } | Body::Log { .. } => copy_stored(stored, out)?,
        }
        return out.flush();
    }
    let mut lf = LfWriter { inner: out, pending_cr: false, buffer: Vec::with_capacity(BODY_CHUNK_BYTES) };
    match body {
        Body::Inline(bytes) => lf.write_all(bytes)?,
        Body::File { .. } | Body::Log { .. } => copy_stored(stored, &mut lf)?,
    }
    lf.finish()
}

/// Bytes of a body file read, and of converted content written, at once.
const BODY_CHUNK_BYTES: usize = 64 * 1024;

/// The stored content to `out` in `BODY_CHUNK_BYTES` reads through one
/// buffer.
fn copy_stored(stored: &StoredBody, out: &mut impl Write) -> std::io::Result<()> {
    use std::io::Read;
    let mut file = stored.sync_reader();
    let mut buffer = vec![0u8; BODY_CHUNK_BYTES];
    loop {
        match file.read(&mut buffer) {
            Ok(0) => return Ok(()),
            Ok(n) => out.write_all(&buffer[..n])?,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// What a program left behind.
pub struct Ran {
    /// `None`: killed at its time limit.
    pub status: Option<std::process::ExitStatus>,
    /// The first `OUTPUT_BYTES_MAX` bytes of its output and error output.
    pub stdout: String,
    pub stderr: String,
}

/// Runs `argv` without a shell as `uid`/`gid`, in `/`, in a process group
/// of its own, with only `PATH=/usr/bin:/bin` and `vars` in its
/// environment; `feed` writes its standard input on a thread of its own
/// (so a program that stops reading cannot hold the caller past the time
/// limit); after `timeout` the whole group is killed. Runs on the calling
/// thread: call it from the blocking pool.
pub fn run_program(
    argv: &[String],
    vars: &[(&str, String)],
    uid: u32,
    gid: u32,
    timeout: Duration,
    feed: impl FnOnce(&mut ChildStdin) -> std::io::Result<()> + Send + 'static,
) -> std::io::Result<Ran> {
    if crate::pipehelper::wanted(uid, gid) {
        return run_through_helper(argv, vars, uid, gid, timeout, feed);
    }
    let mut command = Command::new(&argv[0]);
    command
        .args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .uid(uid)
        .gid(gid)
        .process_group(0);
    let mut child = command.spawn()?;
    let pid = child.id() as i32;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let writer = std::thread::spawn(move || feed(&mut stdin));
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let out_reader = std::thread::spawn(move || read_bounded(&mut stdout));
    let err_reader = std::thread::spawn(move || read_bounded(&mut stderr));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            // The whole process group: the program and what it started.
            // SAFETY: kill(2) with a negative pid signals a process group.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(POLL_INTERVAL);
    };
    let _ = writer.join();
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    Ok(Ran { status, stdout, stderr })
}

/// `run_program` for ids other than the process's own after the drop to
/// `server.user`: the privileged helper (`crate::pipehelper`) starts the
/// program, in a process group of its own, and kills that group at the
/// time limit when asked.
fn run_through_helper(
    argv: &[String],
    vars: &[(&str, String)],
    uid: u32,
    gid: u32,
    timeout: Duration,
    feed: impl FnOnce(&mut ChildStdin) -> std::io::Result<()> + Send + 'static,
) -> std::io::Result<Ran> {
    let deadline = Instant::now() + timeout;
    let crate::pipehelper::Spawned { mut stdin, mut stdout, mut stderr, waiter, .. } =
        crate::pipehelper::spawn(argv, vars, uid, gid)?;
    let writer = std::thread::spawn(move || feed(&mut stdin));
    let out_reader = std::thread::spawn(move || read_bounded(&mut stdout));
    let err_reader = std::thread::spawn(move || read_bounded(&mut stderr));
    let status = waiter.wait(deadline);
    let _ = writer.join();
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    Ok(Ran { status: status?, stdout, stderr })
}

/// Reads a pipe to its end, keeping the first `OUTPUT_BYTES_MAX` bytes.
fn read_bounded(pipe: &mut impl Read) -> String {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = pipe.read(&mut buf) {
        if n == 0 {
            break;
        }
        let room = OUTPUT_BYTES_MAX.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    String::from_utf8_lossy(&kept).into_owned()
}

fn first_line(text: &str) -> String {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    line.chars().filter(|c| !c.is_control()).take(REPLY_TEXT_CHARS_MAX).collect()
}

/// Writes CRLF as LF.
struct LfWriter<'a, W: Write + ?Sized> {
    inner: &'a mut W,
    pending_cr: bool,
    /// Converted bytes not yet written, at most `BODY_CHUNK_BYTES`.
    buffer: Vec<u8>,
}

impl<W: Write + ?Sized> LfWriter<'_, W> {
    fn finish(mut self) -> std::io::Result<()> {
        if self.pending_cr {
            self.buffer.push(b'\r');
            self.pending_cr = false;
        }
        self.flush()
    }

    fn push(&mut self, b: u8) -> std::io::Result<()> {
        if self.buffer.len() == BODY_CHUNK_BYTES {
            self.inner.write_all(&self.buffer)?;
            self.buffer.clear();
        }
        self.buffer.push(b);
        Ok(())
    }
}

impl<W: Write + ?Sized> Write for LfWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            if self.pending_cr {
                self.pending_cr = false;
                if b != b'\n' {
                    self.push(b'\r')?;
                }
            }
            if b == b'\r' {
                self.pending_cr = true;
            } else {
                self.push(b)?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buffer.is_empty() {
            self.inner.write_all(&self.buffer)?;
            self.buffer.clear();
        }
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysexits_map_like_postfix() {
        assert!(matches!(outcome_of_exit(0, ""), RcptOutcome::Delivered(_)));
        let RcptOutcome::Transient(r) = outcome_of_exit(75, "try later") else { panic!() };
        assert_eq!((r.code, r.enhanced), (451, Some(Enhanced(4, 3, 0))));
        assert!(r.summary().contains("try later"));
        let RcptOutcome::Permanent(r) = outcome_of_exit(67, "") else { panic!() };
        assert_eq!(r.enhanced, Some(Enhanced(5, 1, 1)));
        assert!(matches!(outcome_of_exit(71, ""), RcptOutcome::Transient(_)));
        assert!(matches!(outcome_of_exit(74, ""), RcptOutcome::Transient(_)));
        assert!(matches!(outcome_of_exit(77, ""), RcptOutcome::Permanent(_)));
        assert!(matches!(outcome_of_exit(1, ""), RcptOutcome::Transient(_)));
    }

    #[test]
    fn crlf_becomes_lf() {
        let mut out = Vec::new();
        let mut w = LfWriter { inner: &mut out, pending_cr: false, buffer: Vec::new() };
        w.write_all(b"a\r").unwrap();
        w.write_all(b"\nb\rc\r\n").unwrap();
        w.finish().unwrap();
        assert_eq!(out, b"a\nb\rc\n");
        // Larger than the buffer, in pieces: written in whole buffers, the
        // same bytes.
        let line = b"0123456789012345678901234567890123456789012345678901234567890123456789\r\n";
        let content: Vec<u8> = line.iter().copied().cycle().take(3 * BODY_CHUNK_BYTES + 5).collect();
        let mut out = Vec::new();
        let mut w = LfWriter { inner: &mut out, pending_cr: false, buffer: Vec::with_capacity(BODY_CHUNK_BYTES) };
        for piece in content.chunks(1000) {
            w.write_all(piece).unwrap();
            assert!(w.buffer.len() <= BODY_CHUNK_BYTES);
        }
        w.finish().unwrap();
        let want: Vec<u8> = String::from_utf8(content).unwrap().replace("\r\n", "\n").into_bytes();
        assert_eq!(out, want);
    }

    #[test]
    fn users_and_groups_resolve() {
        let p =
            PipeParams::from_rule(&["/bin/true".into()], Some("root"), Some("root"), Duration::from_secs(1)).unwrap();
        assert_eq!((p.uid, p.gid), (0, 0));
        let p = PipeParams::from_rule(&["/bin/true".into()], None, None, Duration::from_secs(1)).unwrap();
        assert_ne!(p.uid, 0, "nobody by default");
        assert!(PipeParams::from_rule(&["/bin/true".into()], Some("no-such-user-here"), None, Duration::from_secs(1))
            .is_err());
    }
}
