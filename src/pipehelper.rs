//! The pipe helper: the one part of ringpost that stays root after the drop
//! to `server.user`, so that pipe transports and pipe scanners configured
//! with another `user` or `group` can still run as those ids.
//!
//! Place in the pipeline: `crate::shard::run`, still root, calls [`start`]
//! before the drop when some configured pipe runs as ids other than
//! `server.user`'s (`crate::privdrop::helper_entries`); it runs the current
//! executable as `ringpost pipe-helper` (a hidden subcommand, [`main`]),
//! writes the allowed list on its standard input and keeps one end of a
//! `socketpair(AF_UNIX, SOCK_SEQPACKET)`, inherited by the helper as fd 3.
//! `crate::deliver::pipe::run_program` (pipe transports and pipe scanners)
//! then goes through [`run`] for ids other than the process's own, on the
//! blocking pool as before.
//!
//! What the helper may do is fixed by root at its start: the allowed list
//! holds exactly the configured pipes whose ids differ from `server.user`'s,
//! each as (argv template, uid, gid, groups). A request names an entry and
//! carries the expanded argv; the helper runs it only if argv[0] is the
//! entry's argv[0] byte for byte and every other argument matches the
//! entry's template, where each placeholder of that kind of pipe
//! (`{sender}`, `{recipient}`, `{user}`, `{domain}`, `{extension}` for a
//! transport; `{sender}`, `{client_ip}`, `{queue_id}`, `{recipients}` for a
//! scanner) matches any text and a scanner's element that is exactly
//! `{recipients}` any number of arguments. So the unprivileged server can
//! run no program, under no ids, with no literal argument that root did not
//! configure; what it chooses is only the text standing for placeholders, as
//! a message's addresses do anyway. A configuration reloaded later cannot
//! add entries: a new pipe with its own user needs a restart.
//!
//! The helper, at its start: ignores SIGINT and SIGHUP, points stdin at
//! `/dev/null` once the list is read, closes every fd but 0, 1, 2 and the
//! socket, drops every capability from its bounding, permitted, effective
//! and inheritable sets but CAP_SETUID, CAP_SETGID (to switch ids) and
//! CAP_KILL (to kill a timed-out child running as another user), and says
//! it is ready. It exits when the socket closes (the server exits or dies).
//!
//! Protocol (integers little-endian; a string is a u32 length and bytes):
//!
//! - allowed list, on the helper's stdin: `RPH1`, u32 count, then per entry
//!   u8 kind (0 transport, 1 scanner), u32 uid, u32 gid, u32 count and that
//!   many u32 groups, u32 count and that many argv strings.
//! - ready, helper to server on the socket: u8 0.
//! - spawn, server to helper on the socket: u8 1, u32 entry index, u32
//!   count and the argv strings, u32 count and that many (name, value)
//!   string pairs for the environment (besides `PATH=/usr/bin:/bin`), with
//!   four fds by SCM_RIGHTS: the child's stdin, stdout, stderr, and the
//!   request's reply socket (one end of a fresh SEQPACKET pair).
//! - on the reply socket, helper to server: `started` u8 1, i32 pid, later
//!   `exited` u8 2, i32 pid, i32 wait status; or instead `refused` u8 3 and
//!   a reason string (not allowed, too many children, fork or exec failed).
//! - on the reply socket, server to helper: `kill` u8 2: SIGKILL to the
//!   child's process group. The reply socket is the only way to name a
//!   child, so only children the helper started can be killed.
//!
//! The child: its own process group, the three fds as 0, 1, 2, default
//! signal dispositions, `setgroups` to the entry's groups, `setgid`,
//! `setuid` (checked with getuid/geteuid/getgid/getegid), chdir `/`,
//! `execve` with only `PATH` and the request's variables.
//!
//! Bounds: `MESSAGE_BYTES_MAX` per message, `ALLOWED_BYTES_MAX` for the
//! list, `CHILDREN_MAX` children at once (more are refused).

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ChildStdin;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The fd the helper finds its socket on.
pub const SOCKET_FD: RawFd = 3;
/// Largest spawn request or reply.
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024;
/// Largest allowed list.
pub const ALLOWED_BYTES_MAX: usize = 1 << 20;
/// Children running at once.
pub const CHILDREN_MAX: usize = 256;
/// Environment variables in one request.
const VARS_MAX: usize = 32;
/// Entries in the allowed list.
const ENTRIES_MAX: usize = 4096;
/// How long the server waits for the helper's `started` or `refused`.
const START_WAIT: Duration = Duration::from_secs(30);

const CAP_KILL: u32 = 5;
const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;

/// Which placeholders a template has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Transport,
    Scanner,
}

impl Kind {
    fn tokens(self) -> &'static [&'static str] {
        match self {
            Kind::Transport => &["{sender}", "{recipient}", "{user}", "{domain}", "{extension}"],
            Kind::Scanner => &["{sender}", "{client_ip}", "{queue_id}", "{recipients}"],
        }
    }
}

/// One (program, uid, gid) root allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub argv: Vec<String>,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups of the child (the user's, `gid` included).
    pub groups: Vec<u32>,
}

/// A piece of an argument template.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Any,
}

fn pieces<'a>(template: &'a str, tokens: &[&str]) -> Vec<Piece<'a>> {
    let mut out = Vec::new();
    let mut rest = template;
    loop {
        let next = tokens.iter().filter_map(|t| rest.find(t).map(|at| (at, t.len()))).min();
        match next {
            Some((at, len)) => {
                if at > 0 {
                    out.push(Piece::Text(&rest[..at]));
                }
                out.push(Piece::Any);
                rest = &rest[at + len..];
            }
            None => {
                if !rest.is_empty() {
                    out.push(Piece::Text(rest));
                }
                return out;
            }
        }
    }
}

/// Whether `arg` is an expansion of `template` (placeholders match any text).
fn arg_matches(template: &str, arg: &str, tokens: &[&str]) -> bool {
    let pieces = pieces(template, tokens);
    let mut rest = arg;
    for (index, piece) in pieces.iter().enumerate() {
        let Piece::Text(text) = piece else { continue };
        let after_any = index > 0 && pieces[index - 1] == Piece::Any;
        let last = index == pieces.len() - 1;
        if !after_any {
            let Some(tail) = rest.strip_prefix(text) else { return false };
            rest = tail;
            if last && !rest.is_empty() {
                return false;
            }
        } else if last {
            return rest.ends_with(text);
        } else {
            let Some(at) = rest.find(text) else { return false };
            rest = &rest[at + text.len()..];
        }
    }
    rest.is_empty() || pieces.last() == Some(&Piece::Any)
}

/// Whether `argv` may run as `entry`: argv[0] identical, the other
/// arguments expansions of the template (see the module header).
pub fn allows(entry: &Entry, argv: &[String]) -> bool {
    let (Some(program), Some(template)) = (argv.first(), entry.argv.first()) else { return false };
    if program != template {
        return false;
    }
    let (template, argv) = (&entry.argv[1..], &argv[1..]);
    let tokens = entry.kind.tokens();
    // can[i][j]: template[i..] matches argv[j..].
    let mut can = vec![vec![false; argv.len() + 1]; template.len() + 1];
    can[template.len()][argv.len()] = true;
    for i in (0..template.len()).rev() {
        let spread = entry.kind == Kind::Scanner && template[i] == "{recipients}";
        for j in (0..=argv.len()).rev() {
            can[i][j] = if spread {
                can[i + 1][j] || (j < argv.len() && can[i][j + 1])
            } else {
                j < argv.len() && can[i + 1][j + 1] && arg_matches(&template[i], &argv[j], tokens)
            };
        }
    }
    can[0][0]
}

// --- encoding -------------------------------------------------------------

/// Why a message could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    Short,
    TooMany(&'static str),
    BadTag(u8),
    NotUtf8,
    BadMagic,
    Trailing,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Short => write!(f, "message cut short"),
            DecodeError::TooMany(what) => write!(f, "too many {what}"),
            DecodeError::BadTag(tag) => write!(f, "unknown message type {tag}"),
            DecodeError::NotUtf8 => write!(f, "string not UTF-8"),
            DecodeError::BadMagic => write!(f, "not an allowed list"),
            DecodeError::Trailing => write!(f, "bytes after the message"),
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Short);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(self.u32()? as i32)
    }
    /// A count, each item at least `item_bytes` long (so a count cannot
    /// promise more than the message holds).
    fn count(&mut self, item_bytes: usize, max: usize, what: &'static str) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        if n > max {
            return Err(DecodeError::TooMany(what));
        }
        if n.saturating_mul(item_bytes) > self.0.len() {
            return Err(DecodeError::Short);
        }
        Ok(n)
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        let n = self.u32()? as usize;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::NotUtf8)
    }
    fn strings(&mut self, what: &'static str) -> Result<Vec<String>, DecodeError> {
        let n = self.count(4, MESSAGE_BYTES_MAX, what)?;
        (0..n).map(|_| self.string()).collect()
    }
    fn end(&self) -> Result<(), DecodeError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Trailing)
        }
    }
}

fn put_u32(out: &mut Vec<u8>, n: u32) {
    out.extend_from_slice(&n.to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_u32(out, s.len() as u32);
    out.extend_from_slice(s.as_bytes());
}

fn put_strs(out: &mut Vec<u8>, list: &[String]) {
    put_u32(out, list.len() as u32);
    for s in list {
        put_str(out, s);
    }
}

/// The allowed list as the helper reads it.
pub fn encode_allowed(entries: &[Entry]) -> Vec<u8> {
    let mut out = b"RPH1".to_vec();
    put_u32(&mut out, entries.len() as u32);
    for e in entries {
        out.push(if e.kind == Kind::Scanner { 1 } else { 0 });
        put_u32(&mut out, e.uid);
        put_u32(&mut out, e.gid);
        put_u32(&mut out, e.groups.len() as u32);
        for &g in &e.groups {
            put_u32(&mut out, g);
        }
        put_strs(&mut out, &e.argv);
    }
    out
}

pub fn decode_allowed(bytes: &[u8]) -> Result<Vec<Entry>, DecodeError> {
    let mut r = Reader(bytes);
    if r.take(4)? != b"RPH1" {
        return Err(DecodeError::BadMagic);
    }
    let n = r.count(17, ENTRIES_MAX, "entries")?;
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let kind = match r.u8()? {
            0 => Kind::Transport,
            1 => Kind::Scanner,
            tag => return Err(DecodeError::BadTag(tag)),
        };
        let (uid, gid) = (r.u32()?, r.u32()?);
        let groups = r.count(4, 65_536, "groups")?;
        let groups = (0..groups).map(|_| r.u32()).collect::<Result<Vec<u32>, _>>()?;
        let argv = r.strings("arguments")?;
        if argv.is_empty() {
            return Err(DecodeError::Short);
        }
        entries.push(Entry { kind, argv, uid, gid, groups });
    }
    r.end()?;
    Ok(entries)
}

/// A server-to-helper message.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Spawn { entry: u32, argv: Vec<String>, vars: Vec<(String, String)> },
    Kill,
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Request::Spawn { entry, argv, vars } => {
                out.push(1);
                put_u32(&mut out, *entry);
                put_strs(&mut out, argv);
                put_u32(&mut out, vars.len() as u32);
                for (k, v) in vars {
                    put_str(&mut out, k);
                    put_str(&mut out, v);
                }
            }
            Request::Kill => out.push(2),
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Request, DecodeError> {
        let mut r = Reader(bytes);
        let request = match r.u8()? {
            1 => {
                let entry = r.u32()?;
                let argv = r.strings("arguments")?;
                let n = r.count(8, VARS_MAX, "variables")?;
                let vars = (0..n).map(|_| Ok((r.string()?, r.string()?))).collect::<Result<Vec<_>, _>>()?;
                Request::Spawn { entry, argv, vars }
            }
            2 => Request::Kill,
            tag => return Err(DecodeError::BadTag(tag)),
        };
        r.end()?;
        Ok(request)
    }
}

/// A helper-to-server message.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Ready,
    Started { pid: i32 },
    Exited { pid: i32, status: i32 },
    Refused { reason: String },
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Reply::Ready => out.push(0),
            Reply::Started { pid } => {
                out.push(1);
                put_u32(&mut out, *pid as u32);
            }
            Reply::Exited { pid, status } => {
                out.push(2);
                put_u32(&mut out, *pid as u32);
                put_u32(&mut out, *status as u32);
            }
            Reply::Refused { reason } => {
                out.push(3);
                let cut = reason.char_indices().map(|(i, _)| i).take_while(|&i| i < 1024).last().unwrap_or(0);
                put_str(&mut out, if reason.len() > 1024 { &reason[..cut] } else { reason });
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Reply, DecodeError> {
        let mut r = Reader(bytes);
        let reply = match r.u8()? {
            0 => Reply::Ready,
            1 => Reply::Started { pid: r.i32()? },
            2 => Reply::Exited { pid: r.i32()?, status: r.i32()? },
            3 => Reply::Refused { reason: r.string()? },
            tag => return Err(DecodeError::BadTag(tag)),
        };
        r.end()?;
        Ok(reply)
    }
}

// --- socket calls ---------------------------------------------------------

fn os_error(what: &str) -> std::io::Error {
    let e = std::io::Error::last_os_error();
    std::io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// A `SOCK_SEQPACKET` pair, close-on-exec.
pub fn seqpacket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    if unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) } != 0 {
        return Err(os_error("socketpair"));
    }
    // SAFETY: both descriptors are new and ours alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn pipe_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(os_error("pipe2"));
    }
    // SAFETY: both descriptors are new and ours alone.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends one message with `fds` attached.
pub fn send(socket: RawFd, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    assert!(bytes.len() <= MESSAGE_BYTES_MAX && fds.len() <= 4);
    let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
    let mut control = [0u64; 8];
    // SAFETY: a zeroed msghdr is valid; the pointers set below stay valid
    // for the call, and the control buffer is large enough for four fds
    // (CMSG_SPACE(16) <= 64 bytes) and aligned for cmsghdr.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            let data_len = std::mem::size_of_val(fds) as u32;
            msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = libc::CMSG_SPACE(data_len) as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg) as *mut RawFd, fds.len());
        }
        loop {
            let sent = libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL);
            if sent >= 0 {
                return Ok(());
            }
            if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                return Err(os_error("sendmsg"));
            }
        }
    }
}

/// Receives one message and the fds attached (close-on-exec). `Ok(None)`:
/// the other end closed.
pub fn recv(socket: RawFd) -> std::io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut buffer = vec![0u8; MESSAGE_BYTES_MAX];
    let mut iov = libc::iovec { iov_base: buffer.as_mut_ptr() as *mut libc::c_void, iov_len: buffer.len() };
    let mut control = [0u64; 16];
    // SAFETY: as in `send`; recvmsg writes at most the lengths given, and
    // each SCM_RIGHTS fd it reports is a new descriptor now ours.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let got = loop {
            let got = libc::recvmsg(socket, &mut msg, libc::MSG_CMSG_CLOEXEC);
            if got >= 0 {
                break got as usize;
            }
            if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                return Err(os_error("recvmsg"));
            }
        };
        let mut fds = Vec::new();
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data_len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg) as *const RawFd;
                for i in 0..data_len / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        if got == 0 && fds.is_empty() {
            return Ok(None);
        }
        if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "message larger than allowed"));
        }
        buffer.truncate(got);
        Ok(Some((buffer, fds)))
    }
}

/// Waits until `fd` is readable (or closed) or `timeout` passes: true if
/// readable.
fn readable_within(fd: RawFd, timeout: Duration) -> std::io::Result<bool> {
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return if e.kind() == std::io::ErrorKind::Interrupted { Ok(false) } else { Err(e) };
    }
    Ok(n > 0)
}

// --- the server's side ----------------------------------------------------

struct Helper {
    socket: Mutex<OwnedFd>,
    allowed: Vec<Entry>,
    pid: u32,
}

static HELPER: OnceLock<Helper> = OnceLock::new();

/// The helper's process id, when one runs.
pub fn helper_pid() -> Option<u32> {
    HELPER.get().map(|h| h.pid)
}

/// Whether a helper runs.
pub fn running() -> bool {
    HELPER.get().is_some()
}

/// Starts the helper with `entries` (as root, before the drop) and waits
/// until it is ready.
pub fn start(entries: Vec<Entry>) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    if HELPER.get().is_some() {
        return Err("pipe helper already started".into());
    }
    let exe = std::env::current_exe().map_err(|e| format!("pipe helper: current executable: {e}"))?;
    let (ours, theirs) = seqpacket_pair().map_err(|e| format!("pipe helper: {e}"))?;
    let theirs_fd = theirs.as_raw_fd();
    let mut command = std::process::Command::new(exe);
    command
        .arg("pipe-helper")
        .env_clear()
        .current_dir("/")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit());
    // SAFETY: only dup2 and fcntl, async-signal-safe, run between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if theirs_fd == SOCKET_FD {
                let flags = libc::fcntl(SOCKET_FD, libc::F_GETFD);
                if flags < 0 || libc::fcntl(SOCKET_FD, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(theirs_fd, SOCKET_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| format!("pipe helper: start: {e}"))?;
    drop(theirs);
    let list = encode_allowed(&entries);
    let written = child.stdin.take().expect("stdin is piped").write_all(&list);
    written.map_err(|e| format!("pipe helper: allowed list: {e}"))?;
    let ready = match readable_within(ours.as_raw_fd(), START_WAIT) {
        Ok(true) => recv(ours.as_raw_fd()),
        Ok(false) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer")),
        Err(e) => Err(e),
    };
    match ready {
        Ok(Some((bytes, _))) if Reply::decode(&bytes) == Ok(Reply::Ready) => {}
        Ok(Some((bytes, _))) => {
            let why = match Reply::decode(&bytes) {
                Ok(Reply::Refused { reason }) => reason,
                other => format!("unexpected answer {other:?}"),
            };
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("pipe helper: {why}"));
        }
        Ok(None) => {
            let _ = child.wait();
            return Err("pipe helper exited at its start".into());
        }
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("pipe helper: {e}"));
        }
    }
    let pid = child.id();
    // The helper outlives nothing but this process; its exit status is not
    // waited for (it exits when this process does).
    std::mem::forget(child);
    HELPER
        .set(Helper { socket: Mutex::new(ours), allowed: entries, pid })
        .map_err(|_| "pipe helper already started")?;
    Ok(())
}

/// Whether `run_program` should go through the helper for `uid`/`gid`.
pub fn wanted(uid: u32, gid: u32) -> bool {
    // SAFETY: these calls only read the process's ids.
    let (own_uid, own_gid) = unsafe { (libc::getuid(), libc::getgid()) };
    running() && (uid, gid) != (own_uid, own_gid)
}

/// A program the helper started: its standard fds, and where its exit
/// status comes.
pub struct Spawned {
    pub stdin: ChildStdin,
    pub stdout: std::fs::File,
    pub stderr: std::fs::File,
    pub waiter: Waiter,
    pub pid: i32,
}

/// The request's reply socket: the exit status comes on it.
pub struct Waiter {
    reply: OwnedFd,
}

fn other(text: String) -> std::io::Error {
    std::io::Error::other(text)
}

/// Asks the helper to start `argv` as `uid`/`gid` with `vars`.
pub fn spawn(argv: &[String], vars: &[(&str, String)], uid: u32, gid: u32) -> std::io::Result<Spawned> {
    let helper = HELPER.get().ok_or_else(|| other("no pipe helper runs".into()))?;
    let index =
        helper.allowed.iter().position(|e| (e.uid, e.gid) == (uid, gid) && allows(e, argv)).ok_or_else(|| {
            other(format!(
                "{} as uid {uid} gid {gid} is not among the pipes allowed when ringpost started (restart to add it)",
                argv.first().map_or("", |a| a)
            ))
        })?;
    spawn_entry(helper.socket.lock().map_err(|_| other("pipe helper lock".into()))?.as_raw_fd(), index, argv, vars)
}

/// The request for entry `index` on `socket` (public for the tests that
/// talk to a helper directly).
pub fn spawn_entry(socket: RawFd, index: usize, argv: &[String], vars: &[(&str, String)]) -> std::io::Result<Spawned> {
    let request = Request::Spawn {
        entry: u32::try_from(index).map_err(|_| other("entry index".into()))?,
        argv: argv.to_vec(),
        vars: vars.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
    }
    .encode();
    if request.len() > MESSAGE_BYTES_MAX {
        return Err(other(format!("arguments longer than {MESSAGE_BYTES_MAX} bytes")));
    }
    let (stdin_r, stdin_w) = pipe_pair()?;
    let (stdout_r, stdout_w) = pipe_pair()?;
    let (stderr_r, stderr_w) = pipe_pair()?;
    let (reply, reply_theirs) = seqpacket_pair()?;
    send(
        socket,
        &request,
        &[stdin_r.as_raw_fd(), stdout_w.as_raw_fd(), stderr_w.as_raw_fd(), reply_theirs.as_raw_fd()],
    )?;
    drop((stdin_r, stdout_w, stderr_w, reply_theirs));
    if !readable_within(reply.as_raw_fd(), START_WAIT)? {
        return Err(other("pipe helper did not answer".into()));
    }
    match recv(reply.as_raw_fd())? {
        Some((bytes, _)) => match Reply::decode(&bytes) {
            Ok(Reply::Started { pid }) => Ok(Spawned {
                stdin: ChildStdin::from(stdin_w),
                stdout: std::fs::File::from(stdout_r),
                stderr: std::fs::File::from(stderr_r),
                waiter: Waiter { reply },
                pid,
            }),
            Ok(Reply::Refused { reason }) => Err(other(format!("pipe helper refused: {reason}"))),
            other_reply => Err(other(format!("pipe helper: unexpected answer {other_reply:?}"))),
        },
        None => Err(other("pipe helper closed the request".into())),
    }
}

impl Waiter {
    /// Waits for the exit status until `deadline`; then kills the child's
    /// process group and returns `None`.
    pub fn wait(&self, deadline: Instant) -> std::io::Result<Option<std::process::ExitStatus>> {
        let fd = self.reply.as_raw_fd();
        let mut killed = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if !killed && left.is_zero() {
                send(fd, &Request::Kill.encode(), &[])?;
                killed = true;
            }
            let wait = if killed { Duration::from_secs(3600) } else { left };
            if !readable_within(fd, wait)? {
                continue;
            }
            match recv(fd)? {
                Some((bytes, _)) => match Reply::decode(&bytes) {
                    Ok(Reply::Exited { status, .. }) => {
                        return Ok(if killed { None } else { Some(std::process::ExitStatus::from_raw(status)) })
                    }
                    other_reply => return Err(other(format!("pipe helper: unexpected answer {other_reply:?}"))),
                },
                None => return Err(other("pipe helper closed the request".into())),
            }
        }
    }
}

// --- the helper -----------------------------------------------------------

/// `ringpost pipe-helper`: the helper process (see the module header).
pub fn main() -> std::process::ExitCode {
    match helper() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringpost pipe-helper: {e}");
            let _ = send(SOCKET_FD, &Reply::Refused { reason: e }.encode(), &[]);
            std::process::ExitCode::from(2)
        }
    }
}

fn helper() -> Result<(), String> {
    // SAFETY: signal() with SIG_IGN changes only this process's dispositions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    // SAFETY: fcntl on a plain descriptor number.
    if unsafe { libc::fcntl(SOCKET_FD, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(format!("fd {SOCKET_FD} is not the server's socket: {}", std::io::Error::last_os_error()));
    }
    let mut list = Vec::new();
    std::io::stdin().lock().take(ALLOWED_BYTES_MAX as u64 + 1).read_to_end(&mut list).map_err(|e| e.to_string())?;
    if list.len() > ALLOWED_BYTES_MAX {
        return Err(format!("allowed list larger than {ALLOWED_BYTES_MAX} bytes"));
    }
    let allowed = decode_allowed(&list).map_err(|e| format!("allowed list: {e}"))?;
    close_other_fds()?;
    // SAFETY: geteuid only reads the process's effective uid.
    if unsafe { libc::geteuid() } != 0 {
        return Err("must be started as root".into());
    }
    drop_capabilities()?;
    send(SOCKET_FD, &Reply::Ready.encode(), &[]).map_err(|e| e.to_string())?;
    serve(&allowed)
}

/// stdin to /dev/null; every fd but 0, 1, 2 and the socket closed.
fn close_other_fds() -> Result<(), String> {
    let null = std::fs::File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?;
    // SAFETY: dup2 onto fd 0; `null` stays open for the call.
    if unsafe { libc::dup2(null.as_raw_fd(), 0) } < 0 {
        return Err(format!("dup2: {}", std::io::Error::last_os_error()));
    }
    drop(null);
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| format!("/proc/self/fd: {e}"))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > SOCKET_FD)
        .collect();
    for fd in fds {
        // SAFETY: closes a descriptor this process holds and no Rust object
        // owns (only the directory stream's own, already closed, may fail).
        unsafe { libc::close(fd) };
    }
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Keeps CAP_SETUID, CAP_SETGID and CAP_KILL (those of them it has) in
/// its permitted and effective sets, nothing inheritable, and drops every
/// other capability from the bounding set too. Without CAP_SETPCAP (a
/// systemd unit's `CapabilityBoundingSet` lacking it) the bounding set
/// cannot shrink and stays what the unit gave; the permitted set is what
/// the helper can use, and setuid() clears it in every child.
fn drop_capabilities() -> Result<(), String> {
    let keep = [CAP_KILL, CAP_SETGID, CAP_SETUID];
    let last: u32 =
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(40);
    // CAP_SETPCAP (8), which dropping needs, goes last.
    for cap in (0..=last).filter(|&c| c != 8).chain([8]) {
        if keep.contains(&cap) {
            continue;
        }
        // SAFETY: prctl with plain integers.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        let errno = std::io::Error::last_os_error().raw_os_error();
        if rc != 0 && errno != Some(libc::EINVAL) && errno != Some(libc::EPERM) {
            return Err(format!("PR_CAPBSET_DROP {cap}: {}", std::io::Error::last_os_error()));
        }
    }
    let mut header = CapHeader { version: 0x2008_0522, pid: 0 };
    let mut current = [CapData::default(); 2];
    // SAFETY: capget writes a version-3 header's two data structs.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut CapHeader, current.as_mut_ptr()) } != 0 {
        return Err(format!("capget: {}", std::io::Error::last_os_error()));
    }
    let needed = (1u32 << CAP_SETUID) | (1 << CAP_SETGID);
    if current[0].permitted & needed != needed {
        return Err("CAP_SETUID and CAP_SETGID are needed to run pipes as their users".into());
    }
    let mask = keep.iter().fold(0u32, |m, &c| m | (1 << c)) & current[0].permitted;
    let data = [CapData { effective: mask, permitted: mask, inheritable: 0 }, CapData::default()];
    // SAFETY: capset reads a version-3 header and two data structs.
    if unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) } != 0 {
        return Err(format!("capset: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

struct Running {
    pid: i32,
    pidfd: OwnedFd,
    /// `None` once the server's end closed.
    reply: Option<OwnedFd>,
}

fn serve(allowed: &[Entry]) -> Result<(), String> {
    let mut children: Vec<Running> = Vec::new();
    loop {
        let mut pfds = vec![libc::pollfd { fd: SOCKET_FD, events: libc::POLLIN, revents: 0 }];
        for child in &children {
            pfds.push(libc::pollfd { fd: child.pidfd.as_raw_fd(), events: libc::POLLIN, revents: 0 });
            let fd = child.reply.as_ref().map_or(-1, |r| r.as_raw_fd());
            pfds.push(libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
        }
        // SAFETY: `pfds` holds pfds.len() valid entries (a negative fd is ignored).
        let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll: {}", std::io::Error::last_os_error()));
        }
        let mut gone = Vec::new();
        for (index, child) in children.iter_mut().enumerate() {
            let (pid_events, reply_events) = (pfds[1 + 2 * index].revents, pfds[2 + 2 * index].revents);
            if reply_events != 0 {
                let fd = child.reply.as_ref().map(|r| r.as_raw_fd()).unwrap_or(-1);
                match recv(fd) {
                    Ok(Some((bytes, _))) => {
                        if Request::decode(&bytes) == Ok(Request::Kill) {
                            // SAFETY: the child is a group leader this
                            // process started and has not reaped.
                            unsafe { libc::kill(-child.pid, libc::SIGKILL) };
                        }
                    }
                    _ => child.reply = None,
                }
            }
            if pid_events != 0 {
                let mut status = 0;
                // SAFETY: waits for a child of this process.
                if unsafe { libc::waitpid(child.pid, &mut status, libc::WNOHANG) } == child.pid {
                    if let Some(reply) = &child.reply {
                        let _ = send(reply.as_raw_fd(), &Reply::Exited { pid: child.pid, status }.encode(), &[]);
                    }
                    gone.push(index);
                }
            }
        }
        for index in gone.into_iter().rev() {
            children.swap_remove(index);
        }
        if pfds[0].revents != 0 {
            match recv(SOCKET_FD) {
                Ok(Some((bytes, fds))) => {
                    if let Some(child) = handle(allowed, &bytes, fds, children.len()) {
                        children.push(child);
                    }
                }
                // The server exited or died.
                Ok(None) | Err(_) => return Ok(()),
            }
        }
    }
}

/// One spawn request: the child started, or the refusal sent.
fn handle(allowed: &[Entry], bytes: &[u8], fds: Vec<OwnedFd>, running: usize) -> Option<Running> {
    let Ok([stdin, stdout, stderr, reply]) = <[OwnedFd; 4]>::try_from(fds) else { return None };
    let refuse = |reason: String| {
        let _ = send(reply.as_raw_fd(), &Reply::Refused { reason }.encode(), &[]);
        None
    };
    let (index, argv, vars) = match Request::decode(bytes) {
        Ok(Request::Spawn { entry, argv, vars }) => (entry as usize, argv, vars),
        Ok(Request::Kill) => return refuse("kill on the main socket".into()),
        Err(e) => return refuse(format!("bad request: {e}")),
    };
    let Some(entry) = allowed.get(index) else { return refuse(format!("no allowed entry #{index}")) };
    if !allows(entry, &argv) {
        return refuse(format!("{:?} is not allowed by entry #{index} ({:?})", argv, entry.argv));
    }
    if running >= CHILDREN_MAX {
        return refuse(format!("{CHILDREN_MAX} programs running already"));
    }
    let bad_var = |k: &str| k.is_empty() || k.contains('=') || k == "PATH";
    if vars.iter().any(|(k, _)| bad_var(k)) {
        return refuse("bad environment variable name".into());
    }
    let c = |s: &str| std::ffi::CString::new(s).ok();
    let Some(args) = argv.iter().map(|a| c(a)).collect::<Option<Vec<_>>>() else {
        return refuse("argument with a NUL".into());
    };
    let env: Option<Vec<_>> =
        std::iter::once(c("PATH=/usr/bin:/bin")).chain(vars.iter().map(|(k, v)| c(&format!("{k}={v}")))).collect();
    let Some(env) = env else { return refuse("variable with a NUL".into()) };
    let mut arg_ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    arg_ptrs.push(std::ptr::null());
    let mut env_ptrs: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    let (errors_r, errors_w) = match pipe_pair() {
        Ok(pair) => pair,
        Err(e) => return refuse(e.to_string()),
    };
    let fds = [stdin.as_raw_fd(), stdout.as_raw_fd(), stderr.as_raw_fd()];
    // SAFETY: this process has one thread; the child calls only
    // async-signal-safe functions on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return refuse(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: in the child; see above. Never returns.
        unsafe { child(entry, &fds, arg_ptrs.as_ptr(), env_ptrs.as_ptr(), errors_w.as_raw_fd()) }
    }
    drop(errors_w);
    drop((stdin, stdout, stderr));
    let mut errno = [0u8; 4];
    let mut errors = std::fs::File::from(errors_r);
    if let Ok(4) = errors.read(&mut errno) {
        let mut status = 0;
        // SAFETY: reaps the child that failed before exec.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let e = std::io::Error::from_raw_os_error(i32::from_le_bytes(errno));
        return refuse(format!("{}: {e}", argv[0]));
    }
    // SAFETY: pidfd_open with a pid this process started and not reaped.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        // SAFETY: as above.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        return refuse(format!("pidfd_open: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a new descriptor, ours alone.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    let _ = send(reply.as_raw_fd(), &Reply::Started { pid }.encode(), &[]);
    Some(Running { pid, pidfd, reply: Some(reply) })
}

/// The forked child: ids, fds, signals, exec. On failure the errno goes
/// to `errors` and the child exits 127.
unsafe fn child(
    entry: &Entry,
    fds: &[RawFd; 3],
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    errors: RawFd,
) -> ! {
    let fail = |errors: RawFd| -> ! {
        let errno = *libc::__errno_location();
        let bytes = errno.to_le_bytes();
        libc::write(errors, bytes.as_ptr() as *const libc::c_void, 4);
        libc::_exit(127)
    };
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    for signal in [libc::SIGINT, libc::SIGHUP, libc::SIGPIPE, libc::SIGTERM] {
        libc::signal(signal, libc::SIG_DFL);
    }
    if libc::setpgid(0, 0) != 0 {
        fail(errors);
    }
    for (target, &fd) in fds.iter().enumerate() {
        if libc::dup2(fd, target as libc::c_int) < 0 {
            fail(errors);
        }
    }
    if libc::setgroups(entry.groups.len(), entry.groups.as_ptr()) != 0
        || libc::setgid(entry.gid) != 0
        || libc::setuid(entry.uid) != 0
    {
        fail(errors);
    }
    if libc::getuid() != entry.uid
        || libc::geteuid() != entry.uid
        || libc::getgid() != entry.gid
        || libc::getegid() != entry.gid
    {
        *libc::__errno_location() = libc::EPERM;
        fail(errors);
    }
    if libc::chdir(c"/".as_ptr()) != 0 {
        fail(errors);
    }
    libc::execve(*argv, argv, envp);
    fail(errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: Kind, argv: &[&str]) -> Entry {
        Entry { kind, argv: argv.iter().map(|s| s.to_string()).collect(), uid: 1, gid: 1, groups: vec![1] }
    }

    fn v(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn allowed_list_round_trips() {
        let entries = vec![
            entry(Kind::Transport, &["/usr/bin/procmail", "-d", "{user}"]),
            Entry { groups: vec![1, 5, 100], ..entry(Kind::Scanner, &["/bin/scan", "{recipients}"]) },
        ];
        let bytes = encode_allowed(&entries);
        assert_eq!(decode_allowed(&bytes), Ok(entries));
        assert_eq!(decode_allowed(&bytes[..bytes.len() - 1]), Err(DecodeError::Short));
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(decode_allowed(&extra), Err(DecodeError::Trailing));
        assert_eq!(decode_allowed(b"XXXX\0\0\0\0"), Err(DecodeError::BadMagic));
        // A count promising more than the message holds is refused at once.
        let mut huge = b"RPH1".to_vec();
        put_u32(&mut huge, 4000);
        assert_eq!(decode_allowed(&huge), Err(DecodeError::Short));
    }

    #[test]
    fn requests_and_replies_round_trip() {
        let spawn = Request::Spawn {
            entry: 3,
            argv: v(&["/bin/cat", "a b", ""]),
            vars: vec![("SENDER".into(), "x@example.net".into())],
        };
        assert_eq!(Request::decode(&spawn.encode()), Ok(spawn));
        assert_eq!(Request::decode(&Request::Kill.encode()), Ok(Request::Kill));
        assert_eq!(Request::decode(&[9]), Err(DecodeError::BadTag(9)));
        assert_eq!(Request::decode(&[]), Err(DecodeError::Short));
        for reply in [
            Reply::Ready,
            Reply::Started { pid: 4242 },
            Reply::Exited { pid: 4242, status: 75 << 8 },
            Reply::Refused { reason: "no".into() },
        ] {
            assert_eq!(Reply::decode(&reply.encode()), Ok(reply));
        }
        let mut vars = vec![1, 0, 0, 0, 0];
        put_u32(&mut vars, 0);
        put_u32(&mut vars, VARS_MAX as u32 + 1);
        assert_eq!(Request::decode(&vars), Err(DecodeError::TooMany("variables")));
        let long = Reply::Refused { reason: "é".repeat(2000) }.encode();
        assert!(long.len() <= 1 + 4 + 1024);
    }

    #[test]
    fn only_expansions_of_the_template_are_allowed() {
        let t = entry(Kind::Transport, &["/usr/bin/deliver", "-f", "{sender}", "--to={user}@{domain}"]);
        assert!(allows(&t, &v(&["/usr/bin/deliver", "-f", "a@b", "--to=bob@example.org"])));
        assert!(allows(&t, &v(&["/usr/bin/deliver", "-f", "", "--to=@"])));
        assert!(!allows(&t, &v(&["/usr/bin/other", "-f", "a@b", "--to=bob@example.org"])), "another program");
        assert!(!allows(&t, &v(&["/usr/bin/deliver", "-x", "a@b", "--to=bob@example.org"])), "another literal");
        assert!(!allows(&t, &v(&["/usr/bin/deliver", "-f", "a@b", "--from=bob@example.org"])));
        assert!(!allows(&t, &v(&["/usr/bin/deliver", "-f", "a@b"])), "an argument fewer");
        assert!(!allows(&t, &v(&["/usr/bin/deliver", "-f", "a@b", "--to=b@c", "-e"])), "an argument more");
        assert!(!allows(&t, &v(&[])));
        // A scanner's `{recipients}` element: any number of arguments.
        let s = entry(Kind::Scanner, &["/bin/scan", "--id={queue_id}", "{recipients}", "--end"]);
        assert!(allows(&s, &v(&["/bin/scan", "--id=Q1", "--end"])));
        assert!(allows(&s, &v(&["/bin/scan", "--id=Q1", "a@b", "c@d", "--end"])));
        assert!(!allows(&s, &v(&["/bin/scan", "--id=Q1", "a@b", "c@d"])));
        // Transport placeholders are not a scanner's, and the reverse.
        assert!(!allows(&entry(Kind::Scanner, &["/bin/x", "{user}"]), &v(&["/bin/x", "bob"])));
        assert!(allows(&entry(Kind::Scanner, &["/bin/x", "{user}"]), &v(&["/bin/x", "{user}"])));
        assert!(!allows(&entry(Kind::Transport, &["/bin/x", "{recipients}"]), &v(&["/bin/x", "a", "b"])));
    }

    #[test]
    fn argument_patterns() {
        let tokens = Kind::Transport.tokens();
        assert!(arg_matches("{user}", "anything at all", tokens));
        assert!(arg_matches("a{user}b{domain}c", "aXbYc", tokens));
        assert!(arg_matches("a{user}b{domain}c", "abc", tokens));
        assert!(arg_matches("a{user}b{domain}c", "abbbcbc", tokens));
        assert!(!arg_matches("a{user}b{domain}c", "abcd", tokens));
        assert!(!arg_matches("a{user}b", "xab", tokens));
        assert!(arg_matches("plain", "plain", tokens));
        assert!(!arg_matches("plain", "plain2", tokens));
        assert!(!arg_matches("plain", "", tokens));
        assert!(arg_matches("", "", tokens));
        assert!(arg_matches("{user}{domain}", "", tokens));
    }

    #[test]
    fn messages_pass_with_their_fds() {
        let (a, b) = seqpacket_pair().unwrap();
        let (r, w) = pipe_pair().unwrap();
        send(a.as_raw_fd(), &Reply::Started { pid: 7 }.encode(), &[w.as_raw_fd()]).unwrap();
        drop(w);
        let (bytes, fds) = recv(b.as_raw_fd()).unwrap().unwrap();
        assert_eq!(Reply::decode(&bytes), Ok(Reply::Started { pid: 7 }));
        assert_eq!(fds.len(), 1);
        std::fs::File::from(fds.into_iter().next().unwrap()).write_all(b"through").unwrap();
        let mut got = [0u8; 7];
        std::fs::File::from(r).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"through");
        drop(a);
        assert!(recv(b.as_raw_fd()).unwrap().is_none(), "a closed end reads as None");
    }
}
