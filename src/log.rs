//! Log lines: one line per event, `key=value` pairs on stderr, so that a
//! postmaster can grep by queue id, client or status and a program can parse
//! them. Values with spaces, quotes or `=` are quoted. `--log-format json`
//! writes the same event as one JSON object per line (`{"ts":…,"event":…,
//! key: value…}`, every value a string) for log shippers; `[log] syslog =
//! true` sends each line to the local syslog socket (the journal's
//! `/dev/log`) with facility mail instead of stderr. Every line about one
//! message carries its queue id as `id`.
//!
//! A line a session or a delivery writes for each message is deferred
//! ([`defer`]) and written with the others of the same executor turn by
//! the first of them to wait ([`written`]): one write for the lines of a
//! whole group commit, each line still out before the reply it reports.
//!
//! Place in the pipeline: every stage (ingress, queue, delivery) reports here;
//! nothing reads it back.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;
use std::task::Waker;
use std::time::{SystemTime, UNIX_EPOCH};

/// How lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `ts=… event=… key=value …`
    KeyValue,
    /// `{"ts":"…","event":"…","key":"value",…}`
    Json,
}

/// Which events are written (`log.level`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Every event.
    Info,
    /// Only the events that report a problem ([`is_warning`]).
    Warning,
}

static FORMAT: AtomicU8 = AtomicU8::new(0);
static LEVEL: AtomicU8 = AtomicU8::new(0);
static SYSLOG: OnceLock<UnixDatagram> = OnceLock::new();
/// syslog priority: facility mail (2) × 8 + severity info (6).
const SYSLOG_PRIORITY: u32 = 2 * 8 + 6;
/// syslog priority of an event that reports a problem: severity warning (4).
const SYSLOG_PRIORITY_WARNING: u32 = 2 * 8 + 4;
/// Longest datagram sent to syslog (longer lines are cut).
const SYSLOG_LINE_BYTES_MAX: usize = 8 * 1024;

/// Chooses the format of every later line.
pub fn set_format(format: Format) {
    FORMAT.store(if format == Format::Json { 1 } else { 0 }, Ordering::Relaxed);
}

/// Chooses which later events are written (`log.level`, changed by a reload).
pub fn set_level(level: Level) {
    LEVEL.store(if level == Level::Warning { 1 } else { 0 }, Ordering::Relaxed);
}

/// Whether an event reports a problem, by its name: what `log.level =
/// "warning"` keeps, and what syslog gets with severity warning.
pub fn is_warning(event: &str) -> bool {
    event == "fatal" || WARNING_SUFFIXES.iter().any(|suffix| event.ends_with(suffix))
}

/// Endings of the names of events that report a problem.
const WARNING_SUFFIXES: &[&str] = &["_error", "_failed", "_timeout", "_unusable", "_needs_restart"];

/// Sends every later line to the syslog socket at `path` (with facility
/// mail) instead of stderr.
pub fn use_syslog(path: &std::path::Path) -> Result<(), String> {
    let socket = UnixDatagram::unbound().map_err(|e| format!("syslog: {e}"))?;
    socket.connect(path).map_err(|e| format!("syslog socket {}: {e}", path.display()))?;
    let _ = SYSLOG.set(socket);
    Ok(())
}

/// Writes one log line: `ts=<unix.millis> event=<event> k=v ...`. Lines
/// this thread deferred ([`defer`]) are written first, in the same write.
pub fn event(event: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
    let warning = is_warning(event);
    if !warning && LEVEL.load(Ordering::Relaxed) == 1 {
        return;
    }
    BUFFERS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffers) => {
            let (line, value) = &mut *buffers;
            line.clear();
            format_event(line, value, event, fields);
            write_line(line, warning);
            // A rare long line does not keep its memory.
            if line.capacity() > LINE_BYTES_KEPT_MAX {
                *line = String::with_capacity(LINE_BYTES_INITIAL);
            }
            if value.capacity() > LINE_BYTES_KEPT_MAX {
                *value = String::new();
            }
        }
        // A value's Display that logs (none does) gets buffers of its own.
        Err(_) => {
            let mut line = String::new();
            format_event(&mut line, &mut String::new(), event, fields);
            write_line(&line, warning);
        }
    });
}

/// Formats one line and keeps it with this thread's deferred lines, to be
/// written with them by the next [`written`] (or the next [`event`]): at a
/// high message rate one write for the lines of many messages, where a
/// write each costs about a tenth of a message's CPU. The caller awaits
/// [`written`] before anything that must follow the line (the reply
/// announcing what it records, the record that ends the message). Lines
/// for syslog, which takes one datagram each, are sent at once.
pub fn defer(event: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
    let warning = is_warning(event);
    if !warning && LEVEL.load(Ordering::Relaxed) == 1 {
        return;
    }
    if warning || SYSLOG.get().is_some() {
        return self::event(event, fields);
    }
    let deferred = BUFFERS.with(|buffers| {
        DEFERRED.with(|deferred| {
            let (Ok(mut buffers), Ok(mut deferred)) = (buffers.try_borrow_mut(), deferred.try_borrow_mut()) else {
                return false;
            };
            format_event(&mut deferred.text, &mut buffers.1, event, fields);
            if deferred.text.len() > DEFERRED_BYTES_MAX {
                write_batch(deferred);
            }
            true
        })
    });
    if !deferred {
        self::event(event, fields);
    }
}

/// Resolves once every line this thread deferred before the call is
/// written. The first task to wait for a batch writes it: it yields once
/// first, so that the other tasks ready in the same executor turn (the
/// sessions one group commit acknowledged) defer their lines into the same
/// write, and wait for it.
pub fn written() -> Written {
    let batch = DEFERRED.with(|deferred| deferred.try_borrow().ok().filter(|d| !d.text.is_empty()).map(|d| d.batch));
    Written { batch, state: WrittenState::Start }
}

/// The future of [`written`].
pub struct Written {
    /// The batch waited for; `None`: nothing was pending.
    batch: Option<u64>,
    state: WrittenState,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum WrittenState {
    Start,
    /// Yielded once, to write the batch when polled again.
    Leading,
    Waiting,
}

impl std::future::Future for Written {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        use std::task::Poll;
        let Some(batch) = self.batch else { return Poll::Ready(()) };
        let ready = DEFERRED.with(|deferred| {
            let mut deferred = deferred.borrow_mut();
            if deferred.batch != batch {
                return true;
            }
            match self.state {
                WrittenState::Start if !deferred.leading => {
                    deferred.leading = true;
                    self.state = WrittenState::Leading;
                    cx.waker().wake_by_ref();
                    false
                }
                WrittenState::Leading => {
                    write_batch(deferred);
                    true
                }
                WrittenState::Start | WrittenState::Waiting => {
                    self.state = WrittenState::Waiting;
                    if !deferred.waiters.iter().any(|w| w.will_wake(cx.waker())) {
                        deferred.waiters.push(cx.waker().clone());
                    }
                    false
                }
            }
        });
        if !ready {
            return Poll::Pending;
        }
        self.state = WrittenState::Start;
        self.batch = None;
        Poll::Ready(())
    }
}

impl Drop for Written {
    /// A writer given up before its turn writes the batch now: the tasks
    /// waiting for it are not left waiting.
    fn drop(&mut self) {
        let (Some(batch), WrittenState::Leading) = (self.batch, self.state) else { return };
        let _ = DEFERRED.try_with(|deferred| {
            let Ok(deferred) = deferred.try_borrow_mut() else { return };
            if deferred.batch == batch {
                write_batch(deferred);
            }
        });
    }
}

/// A thread's deferred lines.
struct Deferred {
    text: String,
    /// The number of the batch `text` holds (batches written so far).
    batch: u64,
    /// A task is to write the batch (it yielded and will be polled again).
    leading: bool,
    /// The tasks waiting for the batch, woken once it is written.
    waiters: Vec<Waker>,
}

/// Writes the thread's batch of deferred lines and wakes the tasks waiting
/// for it, once the batch is no longer borrowed.
fn write_batch(mut deferred: std::cell::RefMut<'_, Deferred>) {
    write_stderr(deferred.text.as_bytes());
    deferred.text.clear();
    if deferred.text.capacity() > DEFERRED_BYTES_MAX * 2 {
        deferred.text = String::new();
    }
    deferred.batch += 1;
    deferred.leading = false;
    let waiters = std::mem::take(&mut deferred.waiters);
    drop(deferred);
    waiters.into_iter().for_each(Waker::wake);
}

impl Drop for Deferred {
    /// Lines deferred when the thread ends are written.
    fn drop(&mut self) {
        if !self.text.is_empty() {
            write_stderr(self.text.as_bytes());
        }
    }
}

/// Deferred lines above this many bytes are written at once (a bound on
/// the buffer whatever the number of tasks a turn runs).
const DEFERRED_BYTES_MAX: usize = 64 * 1024;

thread_local! {
    /// The line being built and one value's text, reused by every line a
    /// thread writes: formatting allocates nothing once they have grown.
    static BUFFERS: std::cell::RefCell<(String, String)> =
        std::cell::RefCell::new((String::with_capacity(LINE_BYTES_INITIAL), String::new()));
    static DEFERRED: std::cell::RefCell<Deferred> =
        const { std::cell::RefCell::new(Deferred { text: String::new(), batch: 0, leading: false, waiters: Vec::new() }) };
}

/// Capacity of a thread's line buffer at first.
const LINE_BYTES_INITIAL: usize = 512;
/// A line buffer grown beyond this by a long line is given back.
const LINE_BYTES_KEPT_MAX: usize = 16 * 1024;

/// Appends one line to `line` (`value` is scratch).
fn format_event(line: &mut String, value: &mut String, event: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let json = FORMAT.load(Ordering::Relaxed) == 1;
    if json {
        let _ = write!(line, "{{\"ts\":\"{}.{:03}\",\"event\":", now.as_secs(), now.subsec_millis());
        push_json(line, event);
    } else {
        let _ = write!(line, "ts={}.{:03} event={}", now.as_secs(), now.subsec_millis(), event);
    }
    for (key, val) in fields {
        value.clear();
        let _ = write!(value, "{}", val);
        if json {
            line.push(',');
            push_json(line, key);
            line.push(':');
            push_json(line, value);
        } else {
            line.push(' ');
            line.push_str(key);
            line.push('=');
            push_value(line, value);
        }
    }
    if json {
        line.push('}');
    }
    line.push('\n');
}

/// Writes one formatted line: to syslog, or to stderr after this thread's
/// deferred lines (in one write).
fn write_line(line: &str, warning: bool) {
    if let Some(socket) = SYSLOG.get() {
        let mut datagram = format!(
            "<{}>ringpost[{}]: ",
            if warning { SYSLOG_PRIORITY_WARNING } else { SYSLOG_PRIORITY },
            std::process::id()
        )
        .into_bytes();
        let text = line.trim_end().as_bytes();
        datagram.extend_from_slice(&text[..text.len().min(SYSLOG_LINE_BYTES_MAX)]);
        if socket.send(&datagram).is_ok() {
            return;
        }
    }
    let with_deferred = DEFERRED.try_with(|deferred| {
        let Some(mut deferred) = deferred.try_borrow_mut().ok().filter(|d| !d.text.is_empty()) else {
            return false;
        };
        deferred.text.push_str(line);
        write_batch(deferred);
        true
    });
    if with_deferred != Ok(true) {
        write_stderr(line.as_bytes());
    }
}

/// One write keeps lines whole when shards log at the same time.
fn write_stderr(text: &[u8]) {
    #[cfg(test)]
    if tests::captured(text) {
        return;
    }
    let _ = std::io::stderr().lock().write_all(text);
}

/// `text` as a JSON string.
fn push_json(line: &mut String, text: &str) {
    line.push('"');
    for c in text.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(line, "\\u{:04x}", c as u32);
            }
            c => line.push(c),
        }
    }
    line.push('"');
}

fn push_value(line: &mut String, value: &str) {
    let plain =
        !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'=' && b != b'\\');
    if plain {
        line.push_str(value);
        return;
    }
    line.push('"');
    for c in value.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            c if c.is_control() => {
                let _ = write!(line, "\\x{:02x}", c as u32);
            }
            c => line.push(c),
        }
    }
    line.push('"');
}

#[cfg(test)]
mod tests {
    use super::{defer, event, is_warning, push_json, push_value, written, DEFERRED_BYTES_MAX};
    use std::cell::RefCell;
    use std::rc::Rc;

    thread_local! {
        /// This thread's writes, while a test captures them.
        static WRITES: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
    }

    /// Takes a write instead of stderr if this thread captures.
    pub(super) fn captured(text: &[u8]) -> bool {
        WRITES.with(|writes| match &mut *writes.borrow_mut() {
            Some(writes) => {
                writes.push(String::from_utf8_lossy(text).into_owned());
                true
            }
            None => false,
        })
    }

    fn capture() {
        WRITES.with(|writes| *writes.borrow_mut() = Some(Vec::new()));
    }

    fn writes() -> Vec<String> {
        WRITES.with(|writes| writes.borrow().clone().unwrap_or_default())
    }

    fn events_of(write: &str) -> Vec<&str> {
        write.lines().map(|line| line.split(' ').nth(1).unwrap_or_default()).collect()
    }

    /// Sessions acknowledged together write their lines in one write, each
    /// before its reply; a task ready later starts the next batch.
    #[test]
    fn lines_deferred_in_one_turn_share_a_write_made_before_any_reply() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                capture();
                let replies = Rc::new(RefCell::new(Vec::new()));
                let sessions: Vec<_> = (0..3)
                    .map(|i| {
                        let replies = replies.clone();
                        glommio::spawn_local(async move {
                            defer(&format!("queued{i}"), &[("id", &i)]);
                            written().await;
                            replies.borrow_mut().push((i, writes().len()));
                        })
                    })
                    .collect();
                for session in sessions {
                    session.await;
                }
                let batch = writes();
                assert_eq!(batch.len(), 1, "{batch:?}");
                assert_eq!(events_of(&batch[0]), ["event=queued0", "event=queued1", "event=queued2"]);
                let mut replies = replies.borrow().clone();
                replies.sort();
                assert_eq!(replies, [(0, 1), (1, 1), (2, 1)], "a reply went out before its line");
                defer("delivery", &[("id", &9)]);
                written().await;
                assert_eq!(writes().len(), 2);
                assert_eq!(events_of(&writes()[1]), ["event=delivery"]);
                // Nothing deferred: nothing to wait for.
                written().await;
                assert_eq!(writes().len(), 2);
            })
            .unwrap()
            .join()
            .unwrap();
    }

    /// A waker that counts its wakes.
    struct Counting(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Counting {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A line written at once takes the deferred ones with it, first; a
    /// task that was to write a batch and is dropped writes it, and the
    /// task waiting for it is woken.
    #[test]
    fn deferred_lines_are_written_by_the_next_line_or_a_dropped_writer() {
        use std::future::Future;
        use std::task::{Context, Poll};
        capture();
        defer("delivery", &[]);
        event("disconnect", &[]);
        assert_eq!(writes().len(), 1);
        assert_eq!(events_of(&writes()[0]), ["event=delivery", "event=disconnect"]);

        let counting = std::sync::Arc::new(Counting(Default::default()));
        let waker = std::task::Waker::from(counting.clone());
        let mut cx = Context::from_waker(&waker);
        defer("queued", &[]);
        let mut leader = Box::pin(written());
        // The writer yields once (waking itself)...
        assert!(leader.as_mut().poll(&mut cx).is_pending());
        assert_eq!(counting.0.load(std::sync::atomic::Ordering::Relaxed), 1);
        defer("queued2", &[]);
        let mut waiter = Box::pin(written());
        assert!(waiter.as_mut().poll(&mut cx).is_pending());
        assert_eq!(writes().len(), 1);
        // ... and is dropped before its turn.
        drop(leader);
        assert_eq!(writes().len(), 2);
        assert_eq!(events_of(&writes()[1]), ["event=queued", "event=queued2"]);
        assert_eq!(counting.0.load(std::sync::atomic::Ordering::Relaxed), 2, "the waiting task was not woken");
        assert_eq!(waiter.as_mut().poll(&mut cx), Poll::Ready(()));
    }

    /// Deferred lines never hold more than the bound.
    #[test]
    fn deferred_lines_are_bounded() {
        capture();
        let long = "x".repeat(1000);
        let lines = DEFERRED_BYTES_MAX / 1000 + 1;
        for _ in 0..lines {
            defer("delivery", &[("reply", &long)]);
        }
        let batch = writes();
        assert_eq!(batch.len(), 1);
        assert!(batch[0].len() > DEFERRED_BYTES_MAX && batch[0].len() < DEFERRED_BYTES_MAX + 1100);
        futures_lite::future::block_on(written());
        let batch = writes();
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[0].lines().count() + batch[1].lines().count(), lines);
    }

    #[test]
    fn problems_are_told_from_other_events_by_name() {
        for event in
            ["fatal", "queue_error", "reload_failed", "dnsbl_timeout", "scanner_unusable", "reload_needs_restart"]
        {
            assert!(is_warning(event), "{event}");
        }
        for event in ["queued", "delivered", "reload", "connect", "error_count"] {
            assert!(!is_warning(event), "{event}");
        }
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        push_json(&mut s, "a\"b\\c\n\u{1}é");
        assert_eq!(s, "\"a\\\"b\\\\c\\n\\u0001é\"");
    }

    #[test]
    fn values_are_quoted_when_needed() {
        let mut s = String::new();
        push_value(&mut s, "plain");
        assert_eq!(s, "plain");
        s.clear();
        push_value(&mut s, "two words");
        assert_eq!(s, "\"two words\"");
        s.clear();
        push_value(&mut s, "");
        assert_eq!(s, "\"\"");
        s.clear();
        push_value(&mut s, "a\"b\r\n");
        assert_eq!(s, "\"a\\\"b\\r\\n\"");
    }
}
