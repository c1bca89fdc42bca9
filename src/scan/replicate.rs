//! Replication (`[replicate]`): before the client hears 250, a peer
//! ringpost also holds the message, so the mail a node accepted still goes
//! out if that node dies for good.
//!
//! Place in the pipeline, on the two nodes of a pair:
//! - Origin: the last data-callout stage at the final dot ([`Replicator`],
//!   after the scanners and early delivery, for the recipients still
//!   pending). It sends the message to the peer as an SMTP transaction whose
//!   MAIL carries `XREPLICA=<queue id>`; the final dot waits for the
//!   peer's 250 (within `replicate.timeout`) and then for its own commit.
//!   A notifier per shard tells the peer which messages are finished here
//!   (`XREPLDONE <id> ...`, batched every second; an empty one every few
//!   seconds is the heartbeat).
//! - Peer: ingress stores a replica from a client in
//!   `replicate.accept_from` under [`replica_id`], flagged REPLICA and due
//!   at arrival + `takeover_after`; delivery holds it ([`decide`]) while
//!   the origin keeps talking, and takes it over once the origin has been
//!   silent for `takeover_after`. Each shard's completer
//!   ([`run_completer`]) removes the replicas the origin reports finished.
//!
//! What each failure costs (peer down, origin dead after its 250, both
//! restarting, a partition) is in `docs/replication.md`: at most a
//! duplicate, never a loss.

use std::cell::{Cell, RefCell};
use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam::queue::ArrayQueue;
use futures_lite::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use queue_format::CompletionReason;

use crate::config::{Config, OnFailure};
use crate::deliver::attempt::Deliverer;
use crate::deliver::outbound::{self, Destination};
use crate::log;
use crate::queue::{Envelope, Queue, RcptState};
use crate::scan::Verdict;
use crate::smtp::client::{parse_reply_line, RcptOutcome};
use crate::smtp::reply::{Enhanced, Reply};

/// Set in the shard byte of a replica's id: a replica's id is its origin's
/// with this bit, so it never meets an id the peer makes itself (shards
/// number at most 128 when replication is on) and the origin's XREPLDONE
/// names it without a table.
const REPLICA_SHARD_BIT: u8 = 0x80;
/// Most shards of a node that replicates or holds replicas.
pub const REPLICATION_SHARDS_MAX: usize = REPLICA_SHARD_BIT as usize;
/// Finished ids waiting to be told to the peer, per shard; beyond it the
/// oldest are forgotten (their replicas are delivered again if the peer
/// ever takes over).
const DONE_PENDING_MAX: usize = 100_000;
/// Ids on one XREPLDONE line: 17 octets each, within a 512-octet line.
const DONE_IDS_PER_LINE: usize = 28;
/// XREPLDONE lines sent on one connection.
const DONE_LINES_PER_CONNECTION: usize = 256;
/// How often the notifier looks for finished messages.
const NOTIFY_INTERVAL: Duration = Duration::from_secs(1);
/// Longest time the peer hears nothing from an origin that is up.
const HEARTBEAT_INTERVAL_MAX: Duration = Duration::from_secs(10);
/// The notifier's whole conversation with the peer, at most.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);
/// Replica ids waiting for their shard's completer, per shard.
const INBOX_IDS_MAX: usize = 65_536;
/// How often a completer looks at its inbox.
const COMPLETER_INTERVAL: Duration = Duration::from_secs(1);
/// How long a completion for a replica that delivery holds is retried.
const IN_FLIGHT_RETRY: Duration = Duration::from_secs(60);
/// Origin ids of replicas taken over and not yet reported to the origin
/// (XREPLTAKEN), at most; beyond, the oldest are forgotten (the origin,
/// if it comes back, delivers those again).
const TAKEN_MAX: usize = 100_000;
/// Taken-over ids in one XREPLTAKEN reply; the rest wait for the next.
const TAKEN_PER_REPLY: usize = DONE_IDS_PER_LINE * 64;
/// The origin's first conversation at start, before its delivery starts.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(3);

/// The id the peer stores a replica under: the origin's id with
/// [`REPLICA_SHARD_BIT`] set in its shard byte. None for an id that is
/// not an origin's (a replica is never replicated again).
pub fn replica_id(origin_id: &str) -> Option<String> {
    let (time, shard) = origin_id.split_at_checked(14)?;
    let shard = u8::from_str_radix(shard, 16).ok()?;
    if origin_id.len() != 16 || shard & REPLICA_SHARD_BIT != 0 {
        return None;
    }
    Some(format!("{time}{:02X}", shard | REPLICA_SHARD_BIT))
}

/// Whether `id` names a replica (or a message taken over from one).
pub fn is_replica_id(id: &str) -> bool {
    id.get(14..).and_then(|shard| u8::from_str_radix(shard, 16).ok()).is_some_and(|s| s & REPLICA_SHARD_BIT != 0)
}

// ---- the peer's side ----

/// What the shards of a node share about the replicas it holds: one inbox
/// of finished replica ids per shard, and when the origin last spoke.
pub struct Held {
    inboxes: Vec<ArrayQueue<String>>,
    origin_heard_unix_ms: AtomicU64,
    /// Completions lost to a full inbox (their replicas wait for max_age).
    dropped: AtomicU64,
    /// Origin ids of the replicas taken over here, until the origin asks.
    taken: Mutex<VecDeque<String>>,
}

impl Held {
    /// At start the origin counts as just heard: a node that restarts
    /// gives it `takeover_after` to speak before taking anything over.
    pub fn new(shards: usize, now_unix_ms: u64) -> Arc<Held> {
        Arc::new(Held {
            inboxes: (0..shards).map(|_| ArrayQueue::new(INBOX_IDS_MAX)).collect(),
            origin_heard_unix_ms: AtomicU64::new(now_unix_ms),
            dropped: AtomicU64::new(0),
            taken: Mutex::new(VecDeque::new()),
        })
    }

    /// A replica is taken over: the origin, if it comes back, must not
    /// deliver its own copy too.
    pub fn took_over(&self, origin_id: &str) {
        let mut taken = self.taken.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if taken.len() >= TAKEN_MAX {
            taken.pop_front();
        }
        taken.push_back(origin_id.to_string());
    }

    /// The reply to `XREPLTAKEN <shard>`: the taken-over origin ids of that
    /// origin shard (the last two hex digits of an id), each said once.
    pub fn taken_reply(&self, shard: u8, now_unix_ms: u64) -> Reply {
        self.heard(now_unix_ms);
        let suffix = format!("{shard:02X}");
        let mut ids = Vec::new();
        {
            let mut taken = self.taken.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            taken.retain(|id| {
                let mine = ids.len() < TAKEN_PER_REPLY && id.ends_with(&suffix);
                if mine {
                    ids.push(id.clone());
                }
                !mine
            });
        }
        let mut lines: Vec<String> = ids.chunks(DONE_IDS_PER_LINE).map(|chunk| chunk.join(" ")).collect();
        lines.push(format!("{} taken over", ids.len()));
        Reply { code: 250, enhanced: Some(Enhanced(2, 0, 0)), lines }
    }

    /// The origin spoke (a replica, XREPLDONE or a heartbeat).
    pub fn heard(&self, now_unix_ms: u64) {
        self.origin_heard_unix_ms.fetch_max(now_unix_ms, Ordering::Relaxed);
    }

    pub fn heard_unix_ms(&self) -> u64 {
        self.origin_heard_unix_ms.load(Ordering::Relaxed)
    }

    /// The origin finished these messages: each shard's completer removes
    /// the replica if it holds it (a replica is on the shard whose session
    /// stored it, which the id does not say).
    pub fn note_done(&self, origin_ids: &[String], now_unix_ms: u64) {
        self.heard(now_unix_ms);
        for id in origin_ids.iter().filter_map(|id| replica_id(id)) {
            for inbox in &self.inboxes {
                if inbox.push(id.clone()).is_err() {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn take(&self, shard: usize) -> Vec<String> {
        let inbox = &self.inboxes[shard];
        std::iter::from_fn(|| inbox.pop()).take(INBOX_IDS_MAX).collect()
    }
}

/// What delivery does with a replica it is handed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// Keep it, untried, until then.
    Until { unix_ms: u64 },
    /// The origin is alive and has had the message for the queue's whole
    /// `max_age`: it delivered or bounced it, and its word was lost.
    Forget,
    /// The origin has been silent for `takeover_after`: deliver it.
    TakeOver,
}

/// The rule for a replica handed to delivery: not due yet, held; due and
/// the origin heard within `takeover_after`, held again until that much
/// silence (or forgotten past `max_age`); due and the origin silent that
/// long, taken over.
pub fn decide(
    env: &Envelope,
    now_unix_ms: u64,
    heard_unix_ms: u64,
    takeover_after: Duration,
    max_age: Duration,
) -> Hold {
    if now_unix_ms < env.next_retry_unix_ms {
        return Hold::Until { unix_ms: env.next_retry_unix_ms };
    }
    let takeover_after_ms = takeover_after.as_millis() as u64;
    if now_unix_ms.saturating_sub(heard_unix_ms) >= takeover_after_ms {
        return Hold::TakeOver;
    }
    if now_unix_ms.saturating_sub(env.arrival_unix_ms) >= max_age.as_millis() as u64 {
        return Hold::Forget;
    }
    Hold::Until { unix_ms: heard_unix_ms + takeover_after_ms }
}

/// One shard's completer: every second, removes the replicas its inbox
/// names that it holds. One that delivery holds at that moment (handed
/// over, not yet put back) is tried again for `IN_FLIGHT_RETRY`.
pub async fn run_completer(queue: Rc<Queue>, held: Arc<Held>, shard: usize, stop: Rc<Cell<bool>>) {
    let mut waiting: Vec<(String, Instant)> = Vec::new();
    while !stop.get() {
        glommio::timer::sleep(COMPLETER_INTERVAL).await;
        let now = Instant::now();
        let fresh = held.take(shard).into_iter().map(|id| (id, now));
        let ids: Vec<(String, Instant)> = std::mem::take(&mut waiting).into_iter().chain(fresh).collect();
        for (id, first) in ids {
            match queue.complete_idle(&id, CompletionReason::Done) {
                Ok(true) => log::event("replica_done", &[("id", &id)]),
                Ok(false) if queue.entry(&id).is_some() && first.elapsed() < IN_FLIGHT_RETRY => {
                    waiting.push((id, first))
                }
                Ok(false) => {}
                Err(e) => log::event("queue_error", &[("id", &id), ("error", &e)]),
            }
        }
    }
    let dropped = held.dropped.load(Ordering::Relaxed);
    if dropped > 0 {
        log::event("replica_completions_dropped", &[("shard", &shard), ("count", &dropped)]);
    }
}

// ---- the origin's side ----

/// The origin's side on one shard: the stage that sends replicas, and the
/// ids of finished messages the notifier has yet to tell the peer.
pub struct Replicator {
    deliverer: Rc<Deliverer>,
    peer: Destination,
    peer_text: String,
    timeout: Duration,
    on_failure: OnFailure,
    heartbeat: Duration,
    helo_name: String,
    /// This shard's index as its queue ids end (two hex digits).
    shard_hex: String,
    done: RefCell<VecDeque<String>>,
    done_forgotten: Cell<u64>,
    /// Messages here whose replicas the peer took over (and delivered):
    /// not delivered from here again.
    taken: RefCell<HashSet<String>>,
}

impl Replicator {
    /// None without `replicate.peer`.
    pub fn new(config: &Config, deliverer: Rc<Deliverer>) -> Option<Rc<Replicator>> {
        let r = &config.replicate;
        let peer = r.peer.clone()?;
        let shard_hex = format!("{:02X}", deliverer.shard_index());
        Some(Rc::new(Replicator {
            shard_hex,
            taken: RefCell::new(HashSet::new()),
            deliverer,
            peer: Destination::Smarthost(peer.clone()),
            peer_text: peer,
            timeout: r.timeout.0,
            on_failure: r.on_failure,
            heartbeat: (r.takeover_after.0 / 3).min(HEARTBEAT_INTERVAL_MAX).max(Duration::from_millis(100)),
            helo_name: config.helo_name().to_string(),
            done: RefCell::new(VecDeque::new()),
            done_forgotten: Cell::new(0),
        }))
    }

    /// The stage: the pending recipients of `env` go to the peer as a
    /// replica. The peer's 250 for all of them lets the message go on to
    /// its commit; anything else is `replicate.on_failure`.
    pub async fn run(&self, env: &mut Envelope) -> Verdict {
        let indexes: Vec<usize> =
            (0..env.recipients.len()).filter(|&i| env.recipients[i].state == RcptState::Pending).collect();
        if indexes.is_empty() || is_replica_id(&env.id) {
            return Verdict::Continue;
        }
        let started = Instant::now();
        let stored = self.deliverer.stored_body(env);
        let out = self.deliverer.outbound();
        let policy = self.deliverer.default_policy();
        // One transaction whose MAIL carries XREPLICA=<id>, with the content
        // delivery would send (the scanners' header lines above the body).
        let mut txn = outbound::transaction(env, &indexes);
        txn.replica_of = Some(env.id.clone());
        let content = outbound::Content { stored: &stored, env };
        let sent = glommio::timer::timeout(self.timeout, async {
            Ok(outbound::send(&out, &self.peer, policy, content, &txn).await)
        })
        .await;
        let latency_ms = started.elapsed().as_millis();
        let problem = match sent {
            Err(_) => format!("no reply within {}", crate::config::Duration(self.timeout)),
            Ok(delivered) => match delivered.outcomes.iter().find(|o| !matches!(o, RcptOutcome::Delivered(_))) {
                None => {
                    log::event("replicated", &[("id", &env.id), ("peer", &delivered.relay), ("ms", &latency_ms)]);
                    return Verdict::Continue;
                }
                Some(outcome) => format!("{}: {}", delivered.relay, outcome.reply().summary()),
            },
        };
        log::event(
            "replicate_failed",
            &[
                ("id", &env.id),
                ("peer", &self.peer_text),
                ("ms", &latency_ms),
                ("problem", &problem),
                ("action", &self.on_failure.as_str()),
            ],
        );
        match self.on_failure {
            OnFailure::Tempfail => {
                Verdict::Refuse(Reply::new(451, Enhanced(4, 3, 0), "Replication to the peer failed, try again later"))
            }
            OnFailure::Accept => Verdict::Continue,
        }
    }

    /// Message `id` is finished here (delivered, bounced, expired, or never
    /// committed after its replica was sent): its replica can go.
    pub fn note_done(&self, id: &str) {
        if is_replica_id(id) {
            return;
        }
        let mut done = self.done.borrow_mut();
        if done.len() >= DONE_PENDING_MAX {
            done.pop_front();
            self.done_forgotten.set(self.done_forgotten.get() + 1);
        }
        done.push_back(id.to_string());
    }

    /// Whether the peer took over message `id` (and so delivers it); each
    /// id is said once.
    pub fn taken_by_peer(&self, id: &str) -> bool {
        self.taken.borrow_mut().remove(id)
    }

    /// The first conversation, at start, before delivery begins: the peer
    /// hears this node is back, and says which of the messages it recovers
    /// the peer took over meanwhile.
    pub async fn greet_peer(&self) {
        match glommio::timer::timeout(STARTUP_TIMEOUT, async { Ok(self.tell(&[]).await) }).await {
            Ok(Ok(())) => {}
            Ok(Err(problem)) => log::event(
                "replicate_notify",
                &[("peer", &self.peer_text), ("state", &"failing"), ("problem", &problem)],
            ),
            Err(_) => log::event(
                "replicate_notify",
                &[("peer", &self.peer_text), ("state", &"failing"), ("problem", &"timed out")],
            ),
        }
    }

    /// The notifier: every second, what finished goes to the peer; at least
    /// every heartbeat interval, something does. Ids stay until the peer
    /// has answered for them. Ends when `stop` is set, after one last try.
    pub async fn run_notifier(self: Rc<Self>, stop: Rc<Cell<bool>>) {
        let mut last_told = Instant::now() - self.heartbeat;
        let mut failing = false;
        loop {
            let stopping = stop.get();
            if stopping && failing {
                break;
            }
            let due = !self.done.borrow().is_empty() || last_told.elapsed() >= self.heartbeat;
            let mut more = false;
            if due {
                let ids: Vec<String> = {
                    let mut done = self.done.borrow_mut();
                    let count = done.len().min(DONE_IDS_PER_LINE * DONE_LINES_PER_CONNECTION);
                    done.drain(..count).collect()
                };
                match glommio::timer::timeout(NOTIFY_TIMEOUT, async { Ok(self.tell(&ids).await) }).await {
                    Ok(Ok(())) => {
                        // A full batch: the rest goes at once, not a second later.
                        more = ids.len() == DONE_IDS_PER_LINE * DONE_LINES_PER_CONNECTION;
                        last_told = Instant::now();
                        if failing {
                            log::event("replicate_notify", &[("peer", &self.peer_text), ("state", &"ok")]);
                            failing = false;
                        }
                    }
                    result => {
                        // Kept, in order, for the next try (the oldest
                        // beyond the bound are forgotten).
                        let mut done = self.done.borrow_mut();
                        for id in ids.into_iter().rev() {
                            if done.len() >= DONE_PENDING_MAX {
                                self.done_forgotten.set(self.done_forgotten.get() + 1);
                                continue;
                            }
                            done.push_front(id);
                        }
                        drop(done);
                        if !failing {
                            let problem = match result {
                                Ok(Err(e)) => e,
                                _ => "timed out".to_string(),
                            };
                            log::event(
                                "replicate_notify",
                                &[("peer", &self.peer_text), ("state", &"failing"), ("problem", &problem)],
                            );
                            failing = true;
                        }
                    }
                }
            }
            if stopping {
                break;
            }
            if !more {
                glommio::timer::sleep(NOTIFY_INTERVAL).await;
            }
        }
        if self.done_forgotten.get() > 0 {
            log::event("replicate_done_forgotten", &[("peer", &self.peer_text), ("count", &self.done_forgotten.get())]);
        }
    }

    /// One conversation: EHLO, the XREPLDONE lines for `ids` (one empty
    /// line when there are none: the heartbeat), XREPLTAKEN, QUIT.
    async fn tell(&self, ids: &[String]) -> Result<(), String> {
        let out = self.deliverer.outbound();
        let addrs = outbound::addresses(&out, &self.peer).await.map_err(|reply| reply.summary())?;
        let mut last = String::from("no address");
        for addr in addrs {
            match tell_at(addr, &self.helo_name, ids, &self.shard_hex).await {
                Ok(taken) => {
                    for id in taken {
                        log::event("replica_taken_by_peer", &[("id", &id), ("peer", &self.peer_text)]);
                        let mut set = self.taken.borrow_mut();
                        if set.len() < TAKEN_MAX {
                            set.insert(id);
                        }
                    }
                    return Ok(());
                }
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        Err(last)
    }
}

/// The XREPLDONE lines for `ids`: one empty line for none.
fn done_lines(ids: &[String]) -> Vec<String> {
    if ids.is_empty() {
        return vec!["XREPLDONE\r\n".to_string()];
    }
    ids.chunks(DONE_IDS_PER_LINE).map(|chunk| format!("XREPLDONE {}\r\n", chunk.join(" "))).collect()
}

/// The conversation with the peer at `addr`; returns the ids of this
/// shard's messages whose replicas the peer took over.
async fn tell_at(addr: SocketAddr, helo_name: &str, ids: &[String], shard_hex: &str) -> Result<Vec<String>, String> {
    let stream = glommio::net::TcpStream::connect_timeout(addr, NOTIFY_TIMEOUT).await.map_err(|e| e.to_string())?;
    let mut stream = BufReader::new(stream);
    expect(&mut stream, 220).await?;
    stream.get_mut().write_all(format!("EHLO {helo_name}\r\n").as_bytes()).await.map_err(|e| e.to_string())?;
    let keywords = expect(&mut stream, 250).await?;
    if !keywords.iter().skip(1).any(|k| k.eq_ignore_ascii_case("XREPLICA")) {
        return Err("the peer does not take replicas from this host (no XREPLICA)".to_string());
    }
    let lines = done_lines(ids);
    let mut commands: String = lines.concat();
    commands.push_str(&format!("XREPLTAKEN {shard_hex}\r\nQUIT\r\n"));
    stream.get_mut().write_all(commands.as_bytes()).await.map_err(|e| e.to_string())?;
    for _ in &lines {
        expect(&mut stream, 250).await?;
    }
    // The ids' lines, then the count's.
    let mut taken_lines = expect(&mut stream, 250).await?;
    taken_lines.pop();
    let taken = taken_lines
        .iter()
        .flat_map(|line| line.split(' '))
        .filter(|word| crate::smtp::address::parse_queue_id_param(word).is_some())
        .map(str::to_string)
        .collect();
    let _ = expect(&mut stream, 221).await;
    Ok(taken)
}

/// Reads one reply; Err unless its code is `code`. Returns the text of
/// its lines, without an enhanced status code.
async fn expect<S: futures_lite::AsyncRead + Unpin>(
    stream: &mut BufReader<S>,
    code: u16,
) -> Result<Vec<String>, String> {
    let mut lines = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = (&mut *stream).take(1024).read_until(b'\n', &mut line).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".to_string());
        }
        let (got, last, text) = parse_reply_line(&line).map_err(|e| format!("{e:?}"))?;
        if got != code {
            return Err(format!("{got} {}", String::from_utf8_lossy(text).trim_end()));
        }
        let text = String::from_utf8_lossy(text).trim_end().to_string();
        lines.push(text.strip_prefix("2.0.0 ").map(str::to_string).unwrap_or(text));
        if last {
            return Ok(lines);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_ids_are_the_origins_with_the_shard_bit() {
        assert_eq!(replica_id("0006201A2B3C4D01").as_deref(), Some("0006201A2B3C4D81"));
        assert!(is_replica_id("0006201A2B3C4D81"));
        assert!(!is_replica_id("0006201A2B3C4D01"));
        // A replica is never replicated again; malformed ids have none.
        assert_eq!(replica_id("0006201A2B3C4D81"), None);
        assert_eq!(replica_id("0006201A2B3C4D"), None);
        assert_eq!(replica_id("0006201A2B3C4DZZ"), None);
    }

    fn on_executor(addr: SocketAddr, ids: Vec<String>) -> Result<Vec<String>, String> {
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move { tell_at(addr, "origin.test", &ids, "01").await })
            .unwrap()
            .join()
            .unwrap()
    }

    /// A peer on a thread: greets, offers XREPLICA (or not), answers 250
    /// to each XREPLDONE and 221 to QUIT; returns the lines it read.
    fn fake_peer(offer: bool) -> (SocketAddr, std::thread::JoinHandle<Vec<String>>) {
        use std::io::{BufRead, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut writer = stream;
            writer.write_all(b"220 peer.test ESMTP\r\n").unwrap();
            let mut seen = Vec::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 {
                    return seen;
                }
                let reply: &[u8] = match line.split(' ').next().unwrap().trim_end() {
                    "EHLO" if offer => b"250-peer.test\r\n250-PIPELINING\r\n250 XREPLICA\r\n",
                    "EHLO" => b"250-peer.test\r\n250 PIPELINING\r\n",
                    "QUIT" => b"221 bye\r\n",
                    "XREPLTAKEN" => b"250-2.0.0 0006201A2B3C4D01 0006201A2B3C4D03\r\n250 2.0.0 2 taken over\r\n",
                    _ => b"250 2.0.0 noted\r\n",
                };
                seen.push(line.trim_end().to_string());
                writer.write_all(reply).unwrap();
            }
        });
        (addr, handle)
    }

    #[test]
    fn the_notifier_tells_a_peer_what_finished() {
        let (addr, peer) = fake_peer(true);
        let ids: Vec<String> = (0..30).map(|i| format!("{:016X}", i)).collect();
        let told = on_executor(addr, ids);
        assert_eq!(told, Ok(vec!["0006201A2B3C4D01".to_string(), "0006201A2B3C4D03".to_string()]));
        let seen = peer.join().unwrap();
        assert_eq!(seen.len(), 5, "{seen:?}");
        assert_eq!(seen[0], "EHLO origin.test");
        assert!(seen[1].starts_with("XREPLDONE 0000000000000000 ") && seen[1].split(' ').count() == 29);
        assert_eq!(seen[2], "XREPLDONE 000000000000001C 000000000000001D");
        assert_eq!(seen[3], "XREPLTAKEN 01");
        assert_eq!(seen[4], "QUIT");
        // A server that does not offer XREPLICA is not told anything.
        let (addr, peer) = fake_peer(false);
        let told = on_executor(addr, Vec::new());
        assert!(told.unwrap_err().contains("XREPLICA"));
        assert_eq!(peer.join().unwrap(), vec!["EHLO origin.test".to_string()]);
    }

    #[test]
    fn done_lines_fit_a_command_line() {
        let ids: Vec<String> = (0..60).map(|i| format!("{:016X}", i)).collect();
        let lines = done_lines(&ids);
        assert_eq!(lines.len(), 3);
        assert!(lines.iter().all(|l| l.len() <= crate::smtp::server::COMMAND_LINE_BYTES_MAX));
        assert_eq!(done_lines(&[]), vec!["XREPLDONE\r\n".to_string()]);
    }

    #[test]
    fn held_fans_completions_out_to_every_shard() {
        let held = Held::new(2, 1_000);
        held.note_done(&["0006201A2B3C4D01".to_string(), "0006201A2B3C4D81".to_string()], 5_000);
        assert_eq!(held.heard_unix_ms(), 5_000);
        assert_eq!(held.take(0), vec!["0006201A2B3C4D81".to_string()]);
        assert_eq!(held.take(1), vec!["0006201A2B3C4D81".to_string()]);
        assert!(held.take(0).is_empty());
        // Heard never goes back.
        held.heard(4_000);
        assert_eq!(held.heard_unix_ms(), 5_000);
    }

    #[test]
    fn taken_over_ids_go_to_their_origin_shard_once() {
        let held = Held::new(1, 0);
        held.took_over("0006201A2B3C4D01");
        held.took_over("0006201A2B3C4D00");
        held.took_over("0006201A2B3C4E01");
        let reply = held.taken_reply(1, 7_000);
        assert_eq!(reply.lines, vec!["0006201A2B3C4D01 0006201A2B3C4E01".to_string(), "2 taken over".to_string()]);
        assert_eq!(held.heard_unix_ms(), 7_000);
        assert_eq!(held.taken_reply(1, 7_000).lines, vec!["0 taken over".to_string()]);
        assert_eq!(held.taken_reply(0, 7_000).lines[0], "0006201A2B3C4D00");
    }

    #[test]
    fn replicas_are_held_while_the_origin_speaks() {
        let minute = Duration::from_secs(60);
        let day = Duration::from_secs(86_400);
        let mut env = crate::testing::envelope("0006201A2B3C4D81", &["a@example.net"], 0);
        env.arrival_unix_ms = 0;
        env.next_retry_unix_ms = 30 * 60_000;
        // Not due: held until its time.
        assert_eq!(decide(&env, 60_000, 60_000, 30 * minute, day), Hold::Until { unix_ms: 30 * 60_000 });
        // Due, origin heard a minute ago: held until 30 minutes of silence.
        assert_eq!(decide(&env, 31 * 60_000, 30 * 60_000, 30 * minute, day), Hold::Until { unix_ms: 60 * 60_000 });
        // Due, origin silent for 30 minutes: taken over.
        assert_eq!(decide(&env, 40 * 60_000, 10 * 60_000, 30 * minute, day), Hold::TakeOver);
        // Origin alive past max_age: its word was lost; forgotten.
        assert_eq!(decide(&env, 86_400_000, 86_400_000 - 1, 30 * minute, day), Hold::Forget);
    }
}
