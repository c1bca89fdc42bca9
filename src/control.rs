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
//! lines, and closes. Requests now: `STATS`. Later commands (queue
//! administration) add words, not a new framing.

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

/// The running control socket; `stop` ends its thread and removes it.
pub struct Control {
    path: PathBuf,
    thread: Option<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

/// Binds the control socket at `path` and serves it on a new thread. A
/// socket file left by a process that is gone is replaced; one that
/// answers belongs to a running server, which is an error.
pub fn start(path: &Path) -> Result<Control, String> {
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
        .spawn(move || serve(listener, thread_stop))
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

fn serve(listener: UnixListener, stop: Arc<AtomicBool>) {
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
                if let Err(e) = answer(stream, &history) {
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
fn answer(stream: UnixStream, history: &History) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new((&stream).take(REQUEST_BYTES_MAX as u64)).read_line(&mut line)?;
    let reply = reply_to(line.trim(), history);
    (&stream).write_all(reply.as_bytes())
}

/// The whole reply to one request line.
pub fn reply_to(request: &str, history: &History) -> String {
    let mut words = request.split_ascii_whitespace();
    match words.next().map(str::to_ascii_uppercase).as_deref() {
        Some("STATS") => format!("OK\n{}", stats_text(&stats::snapshot(), history)),
        Some(other) => format!("ERR unknown request {other:?} (requests: STATS)\n"),
        None => "ERR empty request (requests: STATS)\n".to_string(),
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
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
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
        let control = start(&path).expect("starts");
        assert!(start(&path).is_err(), "a second server on the same socket");
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
}
