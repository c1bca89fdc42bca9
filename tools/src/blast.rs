//! The engine of `ringpost-blast`: SMTP client sessions on glommio
//! executors, and the report they produce.
//!
//! Message numbers come from one atomic counter shared by all threads, so
//! `--count N` sends exactly N attempts however the sessions are spread.
//! A session claims a number, opens a connection if it has none, runs one
//! transaction (pipelined when asked and offered), and closes after
//! `messages_per_connection` messages. Latency is measured from the moment
//! the write holding the final dot returns to the moment the final reply
//! is parsed, in microseconds, into a per-thread HDR histogram merged at
//! the end. Reply codes are counted per stage.

use crate::dist::Dist;
use crate::message::{expand_pattern, write_headers, BodyText, MessageSpec};
use crate::reply::{parse_reply, Reply, REPLY_BYTES_MAX};
use crate::rng::{mix, Rng};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Highest latency the histogram records (longer ones are clamped).
pub const LATENCY_US_MAX: u64 = 600_000_000;
/// Most recipients one message may have.
pub const RCPTS_PER_MESSAGE_MAX: u64 = 1000;

#[derive(Clone, Debug)]
pub struct BlastConfig {
    pub server: SocketAddr,
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    pub connections: u64,
    /// 0: reuse a connection until the run ends.
    pub messages_per_connection: u64,
    pub size: Dist,
    pub recipients: Dist,
    pub pipelining: bool,
    /// Open-loop target in messages per second; `None` is closed loop.
    pub rate: Option<f64>,
    pub threads: usize,
    pub tag: bool,
    pub run_id: String,
    pub from: String,
    pub to: String,
    pub to_count: u64,
    pub helo: String,
    pub timeout: Duration,
    pub seed: u64,
}

/// The stages whose replies are counted, in protocol order.
pub const STAGES: [&str; 8] = [
    "connect", "greeting", "ehlo", "mail", "rcpt", "data", "final", "quit",
];
const CONNECT: usize = 0;
const GREETING: usize = 1;
const EHLO: usize = 2;
const MAIL: usize = 3;
const RCPT: usize = 4;
const DATA: usize = 5;
const FINAL: usize = 6;
const QUIT: usize = 7;

/// What one thread (and, merged, the whole run) observed.
pub struct BlastStats {
    pub latency_us: Histogram<u64>,
    pub replies: Vec<BTreeMap<String, u64>>,
    pub errors: BTreeMap<String, u64>,
    pub attempted: u64,
    pub completed: u64,
    pub accepted: u64,
    pub connections_opened: u64,
    pub late_starts: u64,
}

impl BlastStats {
    fn new() -> BlastStats {
        BlastStats {
            latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds"),
            replies: vec![BTreeMap::new(); STAGES.len()],
            errors: BTreeMap::new(),
            attempted: 0,
            completed: 0,
            accepted: 0,
            connections_opened: 0,
            late_starts: 0,
        }
    }

    fn code(&mut self, stage: usize, code: u16) {
        *self.replies[stage].entry(code.to_string()).or_default() += 1;
    }

    fn error(&mut self, stage: usize, e: &io::Error) {
        let kind = match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => "timeout".to_string(),
            io::ErrorKind::InvalidData => "protocol".to_string(),
            io::ErrorKind::UnexpectedEof => "closed".to_string(),
            kind => format!("{kind:?}").to_lowercase(),
        };
        *self
            .errors
            .entry(format!("{}: {kind}", STAGES[stage]))
            .or_default() += 1;
    }

    fn merge(&mut self, other: BlastStats) {
        self.latency_us
            .add(&other.latency_us)
            .expect("same histogram bounds");
        for (mine, theirs) in self.replies.iter_mut().zip(other.replies) {
            for (k, v) in theirs {
                *mine.entry(k).or_default() += v;
            }
        }
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.attempted += other.attempted;
        self.completed += other.completed;
        self.accepted += other.accepted;
        self.connections_opened += other.connections_opened;
        self.late_starts += other.late_starts;
    }
}

/// The result of a run.
pub struct BlastReport {
    pub config: BlastConfig,
    pub elapsed: Duration,
    pub stats: BlastStats,
}

impl BlastReport {
    pub fn to_json(&self) -> serde_json::Value {
        let s = &self.stats;
        let h = &s.latency_us;
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let replies: serde_json::Map<String, serde_json::Value> = STAGES
            .iter()
            .zip(&s.replies)
            .map(|(stage, codes)| (stage.to_string(), serde_json::json!(codes)))
            .collect();
        serde_json::json!({
            "run_id": self.config.run_id,
            "server": self.config.server.to_string(),
            "connections": self.config.connections,
            "messages_per_connection": self.config.messages_per_connection,
            "pipelining": self.config.pipelining,
            "threads": self.config.threads,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "attempted": s.attempted,
            "completed": s.completed,
            "accepted": s.accepted,
            "messages_per_s": s.completed as f64 / secs,
            "accepted_per_s": s.accepted as f64 / secs,
            "connections_opened": s.connections_opened,
            "late_starts": s.late_starts,
            "latency_us": {
                "count": h.len(),
                "mean": if h.is_empty() { 0.0 } else { h.mean() },
                "p50": h.value_at_quantile(0.50),
                "p90": h.value_at_quantile(0.90),
                "p99": h.value_at_quantile(0.99),
                "p999": h.value_at_quantile(0.999),
                "max": h.max(),
            },
            "replies": replies,
            "errors": s.errors,
        })
    }

    pub fn to_table(&self) -> String {
        use std::fmt::Write as _;
        let s = &self.stats;
        let h = &s.latency_us;
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let mut t = String::new();
        let _ = writeln!(
            t,
            "run {}  server {}  {:.2} s",
            self.config.run_id, self.config.server, secs
        );
        let _ = writeln!(
            t,
            "messages  attempted {}  completed {}  accepted {}  connections opened {}",
            s.attempted, s.completed, s.accepted, s.connections_opened
        );
        let _ = writeln!(
            t,
            "rate      {:.0} msg/s completed, {:.0} msg/s accepted",
            s.completed as f64 / secs,
            s.accepted as f64 / secs
        );
        let _ = writeln!(t, "latency (final dot to reply, us)");
        let _ = writeln!(
            t,
            "  {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "p50", "p90", "p99", "p99.9", "max", "mean"
        );
        let _ = writeln!(
            t,
            "  {:>9} {:>9} {:>9} {:>9} {:>9} {:>9.0}",
            h.value_at_quantile(0.50),
            h.value_at_quantile(0.90),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max(),
            if h.is_empty() { 0.0 } else { h.mean() }
        );
        let _ = writeln!(t, "replies by stage");
        for (stage, codes) in STAGES.iter().zip(&s.replies) {
            let list: Vec<String> = codes.iter().map(|(c, n)| format!("{c}:{n}")).collect();
            let _ = writeln!(
                t,
                "  {:<9} {}",
                stage,
                if list.is_empty() {
                    "-".into()
                } else {
                    list.join("  ")
                }
            );
        }
        if s.errors.is_empty() {
            let _ = writeln!(t, "errors    none");
        } else {
            let _ = writeln!(t, "errors");
            for (k, n) in &s.errors {
                let _ = writeln!(t, "  {k}: {n}");
            }
        }
        if self.config.rate.is_some() {
            let _ = writeln!(
                t,
                "late starts (open loop, >1 ms behind schedule): {}",
                s.late_starts
            );
        }
        t
    }
}

/// State shared by every thread.
struct Shared {
    config: BlastConfig,
    next_number: AtomicU64,
    stop: AtomicBool,
    start: Instant,
    body: BodyText,
    accepted_log: Option<Mutex<BufWriter<File>>>,
}

impl Shared {
    /// The next message number, or `None` when the run is over.
    fn claim(&self) -> Option<u64> {
        if self.stop.load(Relaxed) {
            return None;
        }
        if let Some(d) = self.config.duration {
            if self.start.elapsed() >= d {
                self.stop.store(true, Relaxed);
                return None;
            }
        }
        let n = self.next_number.fetch_add(1, Relaxed);
        match self.config.count {
            Some(count) if n >= count => None,
            _ => Some(n),
        }
    }
}

/// Runs the whole load; blocks until every session has ended.
pub fn run(config: BlastConfig, log_accepted: Option<File>) -> io::Result<BlastReport> {
    assert!(config.threads >= 1 && config.connections >= 1);
    let body_bytes_max = config.size.max().min(crate::message::MESSAGE_SIZE_BYTES_MAX);
    let shared = Arc::new(Shared {
        body: BodyText::new(body_bytes_max, config.seed),
        next_number: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        start: Instant::now(),
        accepted_log: log_accepted.map(|f| Mutex::new(BufWriter::new(f))),
        config,
    });
    let threads = shared.config.threads as u64;
    let mut handles = Vec::new();
    for t in 0..threads {
        let sessions: Vec<u64> = (0..shared.config.connections)
            .filter(|s| s % threads == t)
            .collect();
        let shared = shared.clone();
        let handle = LocalExecutorBuilder::new(Placement::Unbound)
            .name(&format!("blast-{t}"))
            .spawn(move || thread_main(shared, sessions))
            .map_err(|e| io::Error::other(format!("executor: {e}")))?;
        handles.push(handle);
    }
    let mut stats = BlastStats::new();
    for h in handles {
        let thread_stats = h.join().map_err(|e| io::Error::other(format!("executor: {e}")))?;
        stats.merge(thread_stats);
    }
    let elapsed = shared.start.elapsed();
    if let Some(log) = &shared.accepted_log {
        log.lock()
            .map_err(|_| io::Error::other("log lock poisoned"))?
            .flush()?;
    }
    let config = shared.config.clone();
    Ok(BlastReport {
        config,
        elapsed,
        stats,
    })
}

async fn thread_main(shared: Arc<Shared>, sessions: Vec<u64>) -> BlastStats {
    let stats = Rc::new(RefCell::new(BlastStats::new()));
    let tasks: Vec<_> = sessions
        .into_iter()
        .map(|index| glommio::spawn_local(session_loop(shared.clone(), stats.clone(), index)))
        .collect();
    for t in tasks {
        t.await;
    }
    Rc::try_unwrap(stats)
        .ok()
        .expect("all sessions ended")
        .into_inner()
}

/// One open SMTP connection.
struct Conn {
    stream: TcpStream,
    rbuf: Vec<u8>,
    server_pipelining: bool,
    messages_sent: u64,
}

fn protocol_error(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl Conn {
    async fn read_reply(&mut self) -> io::Result<Reply> {
        let mut chunk = [0u8; 4096];
        loop {
            match parse_reply(&self.rbuf) {
                Ok(Some(reply)) => {
                    self.rbuf.drain(..reply.consumed_bytes);
                    return Ok(reply);
                }
                Ok(None) => {}
                Err(_) => return Err(protocol_error("malformed reply")),
            }
            if self.rbuf.len() > REPLY_BYTES_MAX {
                return Err(protocol_error("reply too long"));
            }
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.rbuf.extend_from_slice(&chunk[..n]);
        }
    }
}

async fn session_loop(shared: Arc<Shared>, stats: Rc<RefCell<BlastStats>>, index: u64) {
    let config = &shared.config;
    let mut rng = Rng::new(mix(config.seed ^ mix(index + 1)));
    let mut conn: Option<Conn> = None;
    let mut scratch = Scratch::default();
    while let Some(n) = shared.claim() {
        stats.borrow_mut().attempted += 1;
        if let Some(rate) = config.rate {
            let due = shared.start + Duration::from_secs_f64(n as f64 / rate);
            let now = Instant::now();
            if due > now {
                glommio::timer::sleep(due - now).await;
            } else if now - due > Duration::from_millis(1) {
                stats.borrow_mut().late_starts += 1;
            }
        }
        if conn.is_none() {
            match open(config, &stats).await {
                Ok(c) => conn = Some(c),
                Err(stage) => {
                    let _ = stage;
                    // Back off a little so a dead server does not spin the CPU.
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connection opened above");
        match transaction(&shared, c, n, &mut rng, &stats, &mut scratch).await {
            Ok(()) => {
                c.messages_sent += 1;
                let mpc = config.messages_per_connection;
                if mpc > 0 && c.messages_sent >= mpc {
                    quit(conn.take().expect("open"), &stats).await;
                }
            }
            Err((stage, e)) => {
                stats.borrow_mut().error(stage, &e);
                conn = None;
            }
        }
    }
    if let Some(c) = conn {
        quit(c, &stats).await;
    }
}

/// Connects, reads the greeting and says EHLO (HELO if EHLO is refused).
async fn open(config: &BlastConfig, stats: &Rc<RefCell<BlastStats>>) -> Result<Conn, usize> {
    let fail = |stage: usize, e: io::Error| {
        stats.borrow_mut().error(stage, &e);
        stage
    };
    let stream = match TcpStream::connect_timeout(config.server, config.timeout).await {
        Ok(s) => s,
        Err(e) => {
            let e: io::Error = e.into();
            let kind = match e.kind() {
                io::ErrorKind::TimedOut => "timeout".to_string(),
                k => format!("{k:?}").to_lowercase(),
            };
            stats.borrow_mut().replies[CONNECT]
                .entry(kind)
                .and_modify(|n| *n += 1)
                .or_insert(1);
            return Err(fail(CONNECT, e));
        }
    };
    {
        let mut s = stats.borrow_mut();
        *s.replies[CONNECT].entry("ok".into()).or_default() += 1;
        s.connections_opened += 1;
    }
    let setup = || -> io::Result<()> {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(config.timeout))?;
        stream.set_write_timeout(Some(config.timeout))?;
        Ok(())
    };
    setup().map_err(|e| fail(CONNECT, e))?;
    let mut c = Conn {
        stream,
        rbuf: Vec::with_capacity(4096),
        server_pipelining: false,
        messages_sent: 0,
    };
    let greeting = c.read_reply().await.map_err(|e| fail(GREETING, e))?;
    stats.borrow_mut().code(GREETING, greeting.code);
    if greeting.code != 220 {
        return Err(fail(GREETING, protocol_error("greeting not 220")));
    }
    let ehlo = format!("EHLO {}\r\n", config.helo);
    c.stream
        .write_all(ehlo.as_bytes())
        .await
        .map_err(|e| fail(EHLO, e))?;
    let reply = c.read_reply().await.map_err(|e| fail(EHLO, e))?;
    stats.borrow_mut().code(EHLO, reply.code);
    if reply.code == 250 {
        c.server_pipelining = reply.pipelining;
        return Ok(c);
    }
    let helo = format!("HELO {}\r\n", config.helo);
    c.stream
        .write_all(helo.as_bytes())
        .await
        .map_err(|e| fail(EHLO, e))?;
    let reply = c.read_reply().await.map_err(|e| fail(EHLO, e))?;
    stats.borrow_mut().code(EHLO, reply.code);
    if reply.code != 250 {
        return Err(fail(EHLO, protocol_error("HELO refused")));
    }
    Ok(c)
}

async fn quit(mut c: Conn, stats: &Rc<RefCell<BlastStats>>) {
    if c.stream.write_all(b"QUIT\r\n").await.is_ok() {
        if let Ok(r) = c.read_reply().await {
            stats.borrow_mut().code(QUIT, r.code);
        }
    }
}

/// Buffers reused from message to message.
#[derive(Default)]
struct Scratch {
    commands: Vec<u8>,
    message: Vec<u8>,
    recipients: Vec<String>,
}

type StageError = (usize, io::Error);

/// One mail transaction on an open connection. A refused transaction is
/// `Ok` (the server answered); only I/O and protocol failures are errors,
/// after which the connection is dropped.
async fn transaction(
    shared: &Shared,
    c: &mut Conn,
    n: u64,
    rng: &mut Rng,
    stats: &Rc<RefCell<BlastStats>>,
    scratch: &mut Scratch,
) -> Result<(), StageError> {
    let config = &shared.config;
    let rcpt_count = config.recipients.sample(rng).clamp(1, RCPTS_PER_MESSAGE_MAX);
    let size_bytes = config.size.sample(rng);
    build_message(shared, n, rcpt_count, size_bytes, scratch);
    let cmds = &mut scratch.commands;
    cmds.clear();
    let _ = write!(
        cmds,
        "MAIL FROM:<{}> SIZE={}\r\n",
        config.from,
        scratch.message.len()
    );
    let mail_end = cmds.len();
    for to in &scratch.recipients {
        let _ = write!(cmds, "RCPT TO:<{to}>\r\n");
    }
    let rcpts_end = cmds.len();
    cmds.extend_from_slice(b"DATA\r\n");

    let pipelined = config.pipelining && c.server_pipelining;
    let rcpt_accepted;
    if pipelined {
        c.stream.write_all(cmds).await.map_err(|e| (MAIL, e))?;
        let mail = c.read_reply().await.map_err(|e| (MAIL, e))?;
        stats.borrow_mut().code(MAIL, mail.code);
        rcpt_accepted = read_rcpt_replies(c, scratch.recipients.len(), stats).await?;
        let data = c.read_reply().await.map_err(|e| (DATA, e))?;
        stats.borrow_mut().code(DATA, data.code);
        if data.code != 354 {
            return reset(c).await;
        }
        debug_assert!(mail.code == 250 && rcpt_accepted > 0);
    } else {
        let mail = command(c, &scratch.commands[..mail_end], MAIL, stats).await?;
        if mail.code != 250 {
            return reset(c).await;
        }
        let mut accepted = 0;
        for line in scratch.commands[mail_end..rcpts_end].split_inclusive(|&b| b == b'\n') {
            if command(c, line, RCPT, stats).await?.code / 100 == 2 {
                accepted += 1;
            }
        }
        rcpt_accepted = accepted;
        if rcpt_accepted == 0 {
            return reset(c).await;
        }
        let data = command(c, b"DATA\r\n", DATA, stats).await?;
        if data.code != 354 {
            return reset(c).await;
        }
    }
    let _ = rcpt_accepted;
    c.stream
        .write_all(&scratch.message)
        .await
        .map_err(|e| (FINAL, e))?;
    let dot_sent = Instant::now();
    let reply = c.read_reply().await.map_err(|e| (FINAL, e))?;
    let latency_us = (dot_sent.elapsed().as_micros() as u64).clamp(1, LATENCY_US_MAX);
    let mut s = stats.borrow_mut();
    s.code(FINAL, reply.code);
    s.completed += 1;
    s.latency_us
        .record(latency_us)
        .expect("value clamped into bounds");
    if reply.code == 250 {
        s.accepted += 1;
        if let Some(log) = &shared.accepted_log {
            let mut w = log.lock().expect("log writer never panics while locked");
            let _ = writeln!(w, "{}.{}", config.run_id, n);
        }
    }
    Ok(())
}

async fn read_rcpt_replies(
    c: &mut Conn,
    count: usize,
    stats: &Rc<RefCell<BlastStats>>,
) -> Result<u64, StageError> {
    let mut accepted = 0;
    for _ in 0..count {
        let r = c.read_reply().await.map_err(|e| (RCPT, e))?;
        stats.borrow_mut().code(RCPT, r.code);
        if r.code / 100 == 2 {
            accepted += 1;
        }
    }
    Ok(accepted)
}

async fn command(
    c: &mut Conn,
    line: &[u8],
    stage: usize,
    stats: &Rc<RefCell<BlastStats>>,
) -> Result<Reply, StageError> {
    c.stream.write_all(line).await.map_err(|e| (stage, e))?;
    let r = c.read_reply().await.map_err(|e| (stage, e))?;
    stats.borrow_mut().code(stage, r.code);
    Ok(r)
}

/// Ends a refused transaction with RSET so the next one starts clean.
async fn reset(c: &mut Conn) -> Result<(), StageError> {
    c.stream.write_all(b"RSET\r\n").await.map_err(|e| (MAIL, e))?;
    c.read_reply().await.map_err(|e| (MAIL, e))?;
    Ok(())
}

/// Fills `scratch.message` with headers, dot-stuffed body and the final dot,
/// and `scratch.recipients` with the envelope recipients.
fn build_message(shared: &Shared, n: u64, rcpt_count: u64, size_bytes: u64, scratch: &mut Scratch) {
    let config = &shared.config;
    scratch.recipients.clear();
    for i in 0..rcpt_count {
        let k = (n.wrapping_mul(rcpt_count) + i) % config.to_count.max(1);
        scratch.recipients.push(expand_pattern(&config.to, k));
    }
    let id = format!("{}.{}", config.run_id, n);
    let unix_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let spec = MessageSpec {
        from: &config.from,
        to: &scratch.recipients,
        blast_id: config.tag.then_some(id.as_str()),
        number: n,
        unix_secs,
    };
    let msg = &mut scratch.message;
    msg.clear();
    write_headers(msg, &spec);
    let body_bytes = size_bytes.saturating_sub(msg.len() as u64);
    let (body, _) = shared.body.wire_prefix(body_bytes);
    msg.extend_from_slice(body);
    msg.extend_from_slice(b".\r\n");
}

/// A run id unique enough to tell runs apart in one sink log.
pub fn new_run_id() -> String {
    let mut rng = Rng::from_entropy();
    format!("{:012x}", rng.next_u64() & 0xFFFF_FFFF_FFFF)
}
