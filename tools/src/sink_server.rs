//! The socket side of `ringpost-sink`: glommio executors accepting SMTP
//! connections and driving a `SinkSession` per connection.
//!
//! Each executor thread binds every listen address with SO_REUSEPORT (the
//! first one resolves port 0, the others bind the port it got), so the
//! kernel spreads connections over the threads. Counters are process-wide
//! atomics read by the main thread for periodic and final reports.

use crate::sink::{FinalReply, SessionCounts, SinkPolicy, SinkSession, Step, INPUT_BUFFER_BYTES_MIN};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use std::fs::File;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// Input buffer per connection.
pub const SESSION_INPUT_BYTES: usize = 64 * 1024;
const _: () = assert!(SESSION_INPUT_BYTES >= INPUT_BUFFER_BYTES_MIN);

pub struct SinkConfig {
    pub listen: Vec<SocketAddr>,
    pub threads: usize,
    pub policy: SinkPolicy,
    pub final_delay: Duration,
    pub log_ids: Option<File>,
    /// Connections beyond this (over all threads) get 421 and are closed.
    pub connections_max: u64,
    pub idle_timeout: Duration,
}

/// Process-wide counters.
#[derive(Default)]
pub struct SinkTotals {
    pub connections: AtomicU64,
    pub connections_active: AtomicU64,
    pub connections_refused: AtomicU64,
    pub rcpt_accepted: AtomicU64,
    pub rcpt_tempfailed: AtomicU64,
    pub rcpt_rejected: AtomicU64,
    pub messages_accepted: AtomicU64,
    pub messages_tempfailed: AtomicU64,
    pub messages_rejected: AtomicU64,
    pub messages_without_id: AtomicU64,
    pub bytes_received: AtomicU64,
    pub errors: AtomicU64,
}

impl SinkTotals {
    fn add(&self, c: &SessionCounts) {
        let pairs = [
            (&self.rcpt_accepted, c.rcpt_accepted),
            (&self.rcpt_tempfailed, c.rcpt_tempfailed),
            (&self.rcpt_rejected, c.rcpt_rejected),
            (&self.messages_accepted, c.messages_accepted),
            (&self.messages_tempfailed, c.messages_tempfailed),
            (&self.messages_rejected, c.messages_rejected),
            (&self.bytes_received, c.bytes_received),
        ];
        for (counter, n) in pairs {
            if n > 0 {
                counter.fetch_add(n, Relaxed);
            }
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "connections": self.connections.load(Relaxed),
            "connections_refused": self.connections_refused.load(Relaxed),
            "rcpt_accepted": self.rcpt_accepted.load(Relaxed),
            "rcpt_tempfailed": self.rcpt_tempfailed.load(Relaxed),
            "rcpt_rejected": self.rcpt_rejected.load(Relaxed),
            "messages_accepted": self.messages_accepted.load(Relaxed),
            "messages_tempfailed": self.messages_tempfailed.load(Relaxed),
            "messages_rejected": self.messages_rejected.load(Relaxed),
            "messages_without_id": self.messages_without_id.load(Relaxed),
            "bytes_received": self.bytes_received.load(Relaxed),
            "errors": self.errors.load(Relaxed),
        })
    }
}

struct Shared {
    policy: SinkPolicy,
    final_delay: Duration,
    log_ids: Option<File>,
    connections_max: u64,
    idle_timeout: Duration,
    totals: Arc<SinkTotals>,
}

/// Starts the executor threads; returns the bound addresses. The threads
/// run until the process exits.
pub fn start(config: SinkConfig, totals: Arc<SinkTotals>) -> io::Result<Vec<SocketAddr>> {
    let shared = Arc::new(Shared {
        policy: config.policy,
        final_delay: config.final_delay,
        log_ids: config.log_ids,
        connections_max: config.connections_max,
        idle_timeout: config.idle_timeout,
        totals,
    });
    let mut addrs = config.listen.clone();
    for index in 0..config.threads.max(1) {
        let (tx, rx) = std::sync::mpsc::channel::<io::Result<Vec<SocketAddr>>>();
        let shared = shared.clone();
        let want = addrs.clone();
        LocalExecutorBuilder::new(Placement::Unbound)
            .name(&format!("sink-{index}"))
            .spawn(move || serve(index as u64, want, shared, tx))
            .map_err(|e| io::Error::other(format!("executor: {e}")))?;
        addrs = rx
            .recv()
            .map_err(|_| io::Error::other("executor thread died"))??;
    }
    Ok(addrs)
}

async fn serve(
    thread_index: u64,
    addrs: Vec<SocketAddr>,
    shared: Arc<Shared>,
    ready: std::sync::mpsc::Sender<io::Result<Vec<SocketAddr>>>,
) {
    let mut listeners = Vec::new();
    for addr in &addrs {
        match TcpListener::bind(addr) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                let _ = ready.send(Err(io::Error::other(format!("bind {addr}: {e}"))));
                return;
            }
        }
    }
    let bound = listeners
        .iter()
        .map(|l| l.local_addr().expect("bound listener has an address"));
    let _ = ready.send(Ok(bound.collect()));
    let mut tasks = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let shared = shared.clone();
        let seed = (thread_index << 48) ^ ((i as u64) << 40);
        tasks.push(glommio::spawn_local(accept_loop(listener, shared, seed)));
    }
    for t in tasks {
        t.await;
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, seed_base: u64) {
    let mut accepted: u64 = 0;
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(_) => {
                shared.totals.errors.fetch_add(1, Relaxed);
                // Typically EMFILE: back off instead of spinning.
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        accepted += 1;
        let totals = &shared.totals;
        totals.connections.fetch_add(1, Relaxed);
        if totals.connections_active.fetch_add(1, Relaxed) >= shared.connections_max {
            totals.connections_refused.fetch_add(1, Relaxed);
            let shared = shared.clone();
            glommio::spawn_local(async move {
                let mut s = stream;
                let _ = s.write_all(b"421 4.3.2 Too many connections\r\n").await;
                shared.totals.connections_active.fetch_sub(1, Relaxed);
            })
            .detach();
            continue;
        }
        let shared = shared.clone();
        let seed = crate::rng::mix(seed_base ^ accepted ^ shared.policy.seed.unwrap_or(0));
        glommio::spawn_local(async move {
            if session(stream, &shared, seed).await.is_err() {
                shared.totals.errors.fetch_add(1, Relaxed);
            }
            shared.totals.connections_active.fetch_sub(1, Relaxed);
        })
        .detach();
    }
}

async fn session(mut stream: TcpStream, shared: &Shared, seed: u64) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(shared.idle_timeout))?;
    let mut sink = SinkSession::new(&shared.policy, seed);
    let mut out = Vec::with_capacity(4096);
    sink.greeting(&mut out);
    stream.write_all(&out).await?;
    out.clear();
    let mut buf = vec![0u8; SESSION_INPUT_BYTES];
    let (mut start, mut end) = (0usize, 0usize);
    loop {
        let (used, step) = sink.step(&buf[start..end], &mut out);
        start += used;
        shared.totals.add(&sink.counts);
        sink.counts = SessionCounts::default();
        match step {
            Step::NeedMore => {}
            Step::Final(reply) => {
                if !out.is_empty() {
                    stream.write_all(&out).await?;
                    out.clear();
                }
                finish_message(&mut stream, shared, reply).await?;
                continue;
            }
            Step::Quit => {
                stream.write_all(&out).await?;
                return Ok(());
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if start == end {
            (start, end) = (0, 0);
        } else if end == buf.len() {
            buf.copy_within(start..end, 0);
            (start, end) = (0, end - start);
        }
        let n = stream.read(&mut buf[end..]).await?;
        if n == 0 {
            return Ok(());
        }
        end += n;
    }
}

async fn finish_message(stream: &mut TcpStream, shared: &Shared, reply: FinalReply) -> io::Result<()> {
    if !shared.final_delay.is_zero() {
        glommio::timer::sleep(shared.final_delay).await;
    }
    if reply.accepted {
        match (&reply.id, &shared.log_ids) {
            (Some(id), Some(file)) => {
                // One write per line on an O_APPEND file: lines never interleave.
                (&*file).write_all(format!("{id}\n").as_bytes())?;
            }
            (None, _) => {
                shared.totals.messages_without_id.fetch_add(1, Relaxed);
            }
            _ => {}
        }
    }
    stream.write_all(reply.reply.as_bytes()).await
}
