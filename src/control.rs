//! The control socket: a Unix socket (`server.control_socket`, by default
//! `ringpost.sock` in the first spool directory) through which commands
//! such as `ringpost stats` ask the running server.
//!
//! Place in the pipeline: beside the shards, on a thread of its own, so a
//! slow or stuck client never holds up an SMTP session. The same thread
//! snapshots the counters of `crate::stats` once a second into a
//! [`History`], from which the rates over the last minute are read.
//!
//! Protocol (one connection, one request): the client sends one request
//! line, at most [`REQUEST_BYTES_MAX`] bytes, ending in LF; the server
//! answers a status line, `OK` or `ERR <reason>`, then the reply's body
//! lines, and closes. Requests: `STATS`, `RELOAD` (as SIGHUP, answered
//! with the reload's outcome), and queue administration,
//! `QUEUE <FLUSH|HOLD|RELEASE|DELETE|BOUNCE|REQUEUE> <ID|ALL>` (BOUNCE and
//! REQUEUE take an id only).
//!
//! Queue commands act on the shard that owns the message: the last two
//! hex digits of a queue id are its shard's index (`Queue::next_id`). This
//! thread is no shard, so it sends the command over that shard's bounded
//! channel ([`AdminRequest`], [`admin_channels`]), which the shard's
//! executor serves (`Delivery::serve_admin`), and waits for the reply on a
//! channel of its own; `ALL` goes to every shard and the replies are
//! joined. A full channel or a shard that does not answer within
//! [`ADMIN_REPLY_TIMEOUT`] is an `ERR`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::log;
use crate::stats::{self, Class, History};

/// Longest request line.
pub const REQUEST_BYTES_MAX: usize = 1024;
/// How long a client may take to send its request or read the reply.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the thread looks for a client or the stop flag.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How often the counters are snapshotted.
const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);
/// Queue commands waiting for one shard at most.
pub const ADMIN_REQUESTS_QUEUED_MAX: usize = 16;
/// Longest wait for a shard's reply to a queue command (an `ALL` over a
/// large queue writes one record per message).
pub const ADMIN_REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `ask` waits for a reply.
const ASK_TIMEOUT: Duration = Duration::from_secs(75);

/// A queue administration command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminOp {
    Flush,
    Hold,
    Release,
    Delete,
    Bounce,
    Requeue,
}

impl AdminOp {
    fn parse(word: &str) -> Option<AdminOp> {
        Some(match word.to_ascii_uppercase().as_str() {
            "FLUSH" => AdminOp::Flush,
            "HOLD" => AdminOp::Hold,
            "RELEASE" => AdminOp::Release,
            "DELETE" => AdminOp::Delete,
            "BOUNCE" => AdminOp::Bounce,
            "REQUEUE" => AdminOp::Requeue,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            AdminOp::Flush => "flush",
            AdminOp::Hold => "hold",
            AdminOp::Release => "release",
            AdminOp::Delete => "delete",
            AdminOp::Bounce => "bounce",
            AdminOp::Requeue => "requeue",
        }
    }

    /// Whether `ALL` is allowed (bouncing or re-routing the whole queue is
    /// not one command's job).
    fn takes_all(self) -> bool {
        !matches!(self, AdminOp::Bounce | AdminOp::Requeue)
    }
}

/// One message, or every message of the shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminTarget {
    One(String),
    All,
}

/// A queue command sent to a shard; the shard answers on `reply` with the
/// reply's body lines, or the reason it could not act.
pub struct AdminRequest {
    pub op: AdminOp,
    pub target: AdminTarget,
    pub reply: std::sync::mpsc::SyncSender<Result<String, String>>,
}

/// The channels to every shard: the senders for the control thread, the
/// receivers one per shard.
pub fn admin_channels(
    shard_count: usize,
) -> (Vec<futures_channel::mpsc::Sender<AdminRequest>>, Vec<futures_channel::mpsc::Receiver<AdminRequest>>) {
    (0..shard_count).map(|_| futures_channel::mpsc::channel(ADMIN_REQUESTS_QUEUED_MAX)).unzip()
}

/// The running control socket; `stop` ends its thread and removes it.
pub struct Control {
    path: PathBuf,
    thread: Option<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

/// Binds the control socket at `path` and serves it on a new thread. A
/// socket file left by a process that is gone is replaced; one that
/// answers belongs to a running server, which is an error.
pub fn start(path: &Path, shards: Vec<futures_channel::mpsc::Sender<AdminRequest>>) -> Result<Control, String> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(format!("control socket {}: another server is running there", path.display()));
        }
        std::fs::remove_file(path).map_err(|e| format!("control socket {}: {e}", path.display()))?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("control socket {}: {e}", dir.display()))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| format!("control socket {}: {e}", path.display()))?;
    listener.set_nonblocking(true).map_err(|e| format!("control socket {}: {e}", path.display()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = stop.clone();
    let thread = std::thread::Builder::new()
        .name("control".into())
        .spawn(move || serve(listener, thread_stop, shards))
        .map_err(|e| format!("control socket thread: {e}"))?;
    log::event("control_socket", &[("path", &path.display())]);
    Ok(Control { path: path.to_path_buf(), thread: Some(thread), stop })
}

impl Control {
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn serve(listener: UnixListener, stop: Arc<AtomicBool>, mut shards: Vec<futures_channel::mpsc::Sender<AdminRequest>>) {
    let mut history = History::new();
    history.push(unix_ms(), stats::snapshot());
    let mut next_snapshot = Instant::now() + SNAPSHOT_INTERVAL;
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next_snapshot {
            history.push(unix_ms(), stats::snapshot());
            next_snapshot += SNAPSHOT_INTERVAL;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = answer(stream, &history, &mut shards) {
                    log::event("control_error", &[("error", &e)]);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(POLL_INTERVAL),
            Err(e) => {
                log::event("control_error", &[("error", &e)]);
                std::thread::sleep(POLL_INTERVAL);
            }
        }
    }
}

/// Reads one request from `stream` and writes its reply.
fn answer(
    stream: UnixStream,
    history: &History,
    shards: &mut [futures_channel::mpsc::Sender<AdminRequest>],
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new((&stream).take(REQUEST_BYTES_MAX as u64)).read_line(&mut line)?;
    // The write timeout covers the reply; the client waits longer for a
    // queue command than for STATS.
    stream.set_write_timeout(Some(ADMIN_REPLY_TIMEOUT))?;
    let reply = reply_to(line.trim(), history, shards);
    (&stream).write_all(reply.as_bytes())
}

/// The whole reply to one request line.
pub fn reply_to(
    request: &str,
    history: &History,
    shards: &mut [futures_channel::mpsc::Sender<AdminRequest>],
) -> String {
    let mut words = request.split_ascii_whitespace();
    match words.next().map(str::to_ascii_uppercase).as_deref() {
        Some("STATS") => format!("OK\n{}", stats_text(&stats::snapshot(), history)),
        Some("QUEUE") => match queue_request(&mut words, shards) {
            Ok(body) => format!("OK\n{body}"),
            Err(reason) => format!("ERR {}\n", reason.replace('\n', " ")),
        },
        Some("RELOAD") => match reload() {
            Ok(text) => format!("OK\n{text}\n"),
            Err(reason) => format!("ERR {}\n", reason.replace('\n', " ")),
        },
        Some(other) => format!("ERR unknown request {other:?} (requests: STATS, QUEUE, RELOAD)\n"),
        None => "ERR empty request (requests: STATS, QUEUE, RELOAD)\n".to_string(),
    }
}

/// The outcome of the newest reload: its number (0: none yet) and its
/// result, as the SIGHUP watcher reports it ([`note_reload`]).
static RELOADED: std::sync::Mutex<(u64, Result<String, String>)> = std::sync::Mutex::new((0, Ok(String::new())));
/// How long `RELOAD` waits for the watcher.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// The SIGHUP watcher says how a reload went (`Ok`: what was reloaded;
/// `Err`: why the running configuration was kept).
pub fn note_reload(result: Result<String, String>) {
    let mut last = RELOADED.lock().unwrap_or_else(|e| e.into_inner());
    *last = (last.0 + 1, result);
}

/// `RELOAD`: the same as SIGHUP (the process signals itself, so there is
/// one reload path), then waits for its outcome.
fn reload() -> Result<String, String> {
    let before = RELOADED.lock().unwrap_or_else(|e| e.into_inner()).0;
    // SAFETY: kill(2) to our own pid with SIGHUP, whose handler only sets
    // a flag (signal_hook).
    if unsafe { libc::kill(libc::getpid(), libc::SIGHUP) } != 0 {
        return Err(format!("cannot signal the server: {}", std::io::Error::last_os_error()));
    }
    let deadline = Instant::now() + RELOAD_TIMEOUT;
    while Instant::now() < deadline {
        {
            let last = RELOADED.lock().unwrap_or_else(|e| e.into_inner());
            if last.0 != before {
                return last.1.clone();
            }
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    Err("the reload did not finish within 30 s".to_string())
}

/// `QUEUE <op> <ID|ALL>`: parsed, sent to the owning shard (or to every
/// shard), and answered with the shards' replies.
fn queue_request<'a>(
    words: &mut impl Iterator<Item = &'a str>,
    shards: &mut [futures_channel::mpsc::Sender<AdminRequest>],
) -> Result<String, String> {
    const USAGE: &str = "usage: QUEUE <FLUSH|HOLD|RELEASE|DELETE|BOUNCE|REQUEUE> <ID|ALL>";
    let op = words.next().and_then(AdminOp::parse).ok_or(USAGE)?;
    let target = words.next().ok_or(USAGE)?;
    if words.next().is_some() {
        return Err(USAGE.to_string());
    }
    if shards.is_empty() {
        return Err("the server's shards do not take queue commands".to_string());
    }
    if target.eq_ignore_ascii_case("ALL") {
        if !op.takes_all() {
            return Err(format!("{} takes one queue id, not ALL", op.name()));
        }
        let mut waiting = Vec::new();
        for (index, shard) in shards.iter_mut().enumerate() {
            waiting.push((index, send(shard, index, op, AdminTarget::All)));
        }
        let mut out = String::new();
        for (index, sent) in waiting {
            match sent.and_then(|reply| wait(index, &reply)) {
                Ok(body) => out.push_str(&body),
                Err(reason) => out.push_str(&format!("shard {index}: error: {reason}\n")),
            }
        }
        return Ok(out);
    }
    let id = target.to_ascii_uppercase();
    let index = owner_shard(&id).ok_or_else(|| format!("{target:?} is not a queue id (16 hex digits)"))?;
    let Some(shard) = shards.get_mut(index) else {
        return Err(format!("no message {id} in the queue (no shard {index})"));
    };
    let reply = send(shard, index, op, AdminTarget::One(id))?;
    wait(index, &reply)
}

/// The shard owning a queue id: its last two hex digits.
pub fn owner_shard(id: &str) -> Option<usize> {
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    usize::from_str_radix(&id[14..], 16).ok()
}

fn send(
    shard: &mut futures_channel::mpsc::Sender<AdminRequest>,
    index: usize,
    op: AdminOp,
    target: AdminTarget,
) -> Result<std::sync::mpsc::Receiver<Result<String, String>>, String> {
    let (reply, answer) = std::sync::mpsc::sync_channel(1);
    shard.try_send(AdminRequest { op, target, reply }).map_err(|e| {
        if e.is_full() {
            format!("shard {index} has too many queue commands waiting; try again")
        } else {
            format!("shard {index} is stopping")
        }
    })?;
    Ok(answer)
}

fn wait(index: usize, answer: &std::sync::mpsc::Receiver<Result<String, String>>) -> Result<String, String> {
    match answer.recv_timeout(ADMIN_REPLY_TIMEOUT) {
        Ok(reply) => reply,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            Err(format!("shard {index} did not answer within {} s", ADMIN_REPLY_TIMEOUT.as_secs()))
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(format!("shard {index} is stopping")),
    }
}

/// The counters as `ringpost stats` prints them: per class its total since
/// start and its rate over the last minute.
pub fn stats_text(totals: &[u64; Class::ALL.len()], history: &History) -> String {
    let rates = history.rates_per_second();
    let mut out = format!("{:<20} {:>12} {:>14}\n", "class", "total", "per_second_1m");
    for (i, class) in Class::ALL.iter().enumerate() {
        out.push_str(&format!("{:<20} {:>12} {:>14.3}\n", class.name(), totals[i], rates[i]));
    }
    out
}

/// The totals as log fields (`event=stats relay_attempt=0 …`).
pub fn log_totals() {
    let totals = stats::snapshot();
    let fields: Vec<(&str, &dyn std::fmt::Display)> =
        Class::ALL.iter().zip(totals.iter()).map(|(class, total)| (class.name(), total as &dyn std::fmt::Display)).collect();
    log::event("stats", &fields);
}

/// `ringpost stats` and other clients: sends `request` to the socket at
/// `path` and returns the reply's body, or the server's refusal.
pub fn ask(path: &Path, request: &str) -> Result<String, String> {
    let mut stream =
        UnixStream::connect(path).map_err(|e| format!("control socket {}: {e} (is the server running?)", path.display()))?;
    stream.set_read_timeout(Some(ASK_TIMEOUT)).map_err(|e| e.to_string())?;
    stream.write_all(format!("{request}\n").as_bytes()).map_err(|e| e.to_string())?;
    let mut reply = String::new();
    stream.take(1 << 20).read_to_string(&mut reply).map_err(|e| format!("control socket {}: {e}", path.display()))?;
    let (status, body) = reply.split_once('\n').unwrap_or((reply.as_str(), ""));
    match status {
        "OK" => Ok(body.to_string()),
        _ => Err(status.strip_prefix("ERR ").unwrap_or(status).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_over_the_socket() {
        let dir = std::env::temp_dir().join(format!("ringpost-control-{}", std::process::id()));
        let path = dir.join("c.sock");
        let control = start(&path, Vec::new()).expect("starts");
        assert!(start(&path, Vec::new()).is_err(), "a second server on the same socket");
        stats::count(Class::RateLimited);
        let body = ask(&path, "STATS").expect("answers");
        let line = body.lines().find(|l| l.starts_with("rate_limited")).expect("the class");
        let total: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(total >= 1);
        assert_eq!(body.lines().count(), Class::ALL.len() + 1);
        assert!(ask(&path, "FROB").unwrap_err().contains("unknown request"));
        control.stop();
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Two fake shards answering on their channels: a command goes to the
    /// shard named by the id's last two digits, ALL to both.
    #[test]
    fn queue_commands_reach_the_owning_shard() {
        let dir = std::env::temp_dir().join(format!("ringpost-control-queue-{}", std::process::id()));
        let path = dir.join("c.sock");
        let (senders, inboxes) = admin_channels(2);
        let mut shards = Vec::new();
        for (index, mut inbox) in inboxes.into_iter().enumerate() {
            shards.push(std::thread::spawn(move || {
                futures_lite::future::block_on(async {
                    use futures_lite::StreamExt;
                    while let Some(request) = inbox.next().await {
                        let reply = match (&request.op, &request.target) {
                            (AdminOp::Hold, AdminTarget::One(id)) if id.ends_with("00") == (index == 0) => {
                                Ok(format!("{id} held by shard {index}\n"))
                            }
                            (AdminOp::Hold, AdminTarget::One(_)) => Err("sent to the wrong shard".to_string()),
                            (AdminOp::Delete, AdminTarget::One(id)) => Err(format!("no message {id} in the queue")),
                            (op, AdminTarget::All) => Ok(format!("shard {index}: 1 {}\n", op.name())),
                            _ => Err("unexpected".to_string()),
                        };
                        request.reply.send(reply).unwrap();
                    }
                })
            }));
        }
        let control = start(&path, senders).expect("starts");
        assert_eq!(ask(&path, "QUEUE HOLD 0006201A2B3C4D01").unwrap(), "0006201A2B3C4D01 held by shard 1\n");
        assert_eq!(ask(&path, "queue hold 0006201a2b3c4d00").unwrap(), "0006201A2B3C4D00 held by shard 0\n");
        assert_eq!(ask(&path, "QUEUE FLUSH ALL").unwrap(), "shard 0: 1 flush\nshard 1: 1 flush\n");
        let unknown = ask(&path, "QUEUE DELETE 0006201A2B3C4D01").unwrap_err();
        assert_eq!(unknown, "no message 0006201A2B3C4D01 in the queue");
        assert!(ask(&path, "QUEUE HOLD 0006201A2B3C4D07").unwrap_err().contains("no message"), "no shard 7");
        assert!(ask(&path, "QUEUE HOLD xyz").unwrap_err().contains("not a queue id"));
        assert!(ask(&path, "QUEUE BOUNCE ALL").unwrap_err().contains("takes one queue id"));
        assert!(ask(&path, "QUEUE FROB ALL").unwrap_err().starts_with("usage:"));
        assert!(ask(&path, "QUEUE HOLD").unwrap_err().starts_with("usage:"));
        control.stop();
        for shard in shards {
            shard.join().unwrap();
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
