//! One seed of the simulation: the world (clock, disk, network, model),
//! the simulated clients and next hops, the delivery attempts, the crash
//! and restart, and the checks (see `mod.rs`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use queue_format::{CompletionReason, LogKind};

use crate::clock::{Clock, ManualClock};
use crate::deliver::dotstuff::DotStuffer;
use crate::queue::simstorage::{CrashMode, Rng, SimDisk, SimStorage};
use crate::queue::{Body, BodySyncMode, Envelope, Queue, QueueParams, RcptState, Recipient};
use crate::smtp::client::{self, ClientEvent, ClientParams, RcptOutcome};
use crate::smtp::reply::{Enhanced, Reply};
use crate::smtp::server::{BareLfPolicy, Event, NulPolicy, PeerInfo, Server, ServerParams};

const START_UNIX_MS: u64 = 1_800_000_000_000;
/// Next hop domains (`hopN.test`).
const HOPS: u64 = 4;
/// Concurrent client sessions and delivery attempts.
const CLIENTS: usize = 6;
const PERMITS: usize = 4;
pub const SEGMENT_SIZE_BYTES: u64 = 64 * 1024;
const INLINE_MAX_BYTES: usize = 2048;
/// Octets one feed gives a machine at most (one socket read).
const FEED_BYTES_MAX: usize = 4096;
/// Wait before recording again an attempt the queue refused (as delivery).
const QUEUE_ERROR_RETRY: Duration = Duration::from_secs(10);
/// Pending recipients fail after this (`queue.max_age`).
const MAX_AGE: Duration = Duration::from_secs(4 * 3600);
/// Yields of the driver per tick: every runnable task gets there.
const TICK_YIELDS: usize = 12;
/// Simulated time the drain may take before the queue counts as stuck.
const DRAIN_MS_MAX: u64 = 2 * 3600 * 1000;
const SIM_HEADER: &str = "X-Sim: ";
const BOUNCE_HEADER: &str = "X-Sim-Bounce: ";

fn retry_lags() -> Vec<Duration> {
    vec![Duration::from_secs(10), Duration::from_secs(60), Duration::from_secs(300)]
}

/// What one seed found.
#[derive(Clone, Debug, Default)]
pub struct SeedReport {
    pub seed: u64,
    pub messages: usize,
    pub acknowledged: usize,
    pub refused: usize,
    pub dropped: usize,
    pub deliveries: usize,
    pub bounced_recipients: usize,
    /// Second deliveries (or a delivery and a bounce) of one recipient
    /// with a crash between them (SPEC section 11, case 9).
    pub duplicates_after_crash: usize,
    /// Messages delivered whose commit began but was never acknowledged
    /// (SPEC section 11, cases 2, 5, 7).
    pub delivered_unacknowledged: usize,
    pub crashes: u64,
    pub sync_failures: u64,
    pub attempts: usize,
    pub ticks: u64,
    pub sim_ms: u64,
    pub trace_hash: u64,
    /// Most segment files of each log (head, retry) on disk at once.
    pub segments_max: [usize; 2],
}

/// A shard broken on purpose, to show that the checks catch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broken {
    Nothing,
    /// fdatasync flushes nothing: acknowledged messages die at a crash.
    LyingDisk,
    /// No collector runs: dead segments stay and a log outgrows its bound.
    NoCollector,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MsgState {
    /// The client is sending it.
    Sending,
    /// The client dropped before the final dot (or the content was refused).
    Dropped,
    /// The commit began.
    Committing,
    /// The commit failed: 4xx to the client.
    Refused,
    Acknowledged,
}

struct Msg {
    recipients: Vec<String>,
    state: MsgState,
    /// CRC32C and size of the content the server machine passed on.
    checksum: u32,
    size_bytes: u64,
    /// The life of the shard in which the state last changed.
    epoch: u32,
}

#[derive(Default)]
struct Model {
    messages: Vec<Msg>,
    /// (message, recipient) → epochs in which it was delivered or bounced.
    resolved: HashMap<(usize, usize), Vec<u32>>,
    deliveries: usize,
    bounced_recipients: usize,
    attempts: usize,
    /// Bounce id → lives in which it arrived.
    bounce_arrivals: HashMap<u64, Vec<u32>>,
    bounce_duplicates: usize,
    /// Bounce id → the life in which a commit of it failed. A failed commit
    /// may still have reached the disk (its batch written, the flush
    /// failed): after a crash recovery finds it beside the copy committed
    /// again, and both arrive in one life (SPEC section 11, case 7).
    bounce_commit_failed: HashMap<u64, u32>,
    /// Driver ticks from the final dot to the 250, per acknowledged message.
    commit_ticks: Vec<u64>,
}

/// How the next hops and the clients behave in this seed, in millionths.
#[derive(Clone, Debug)]
struct Behaviour {
    hop_refuse_ppm: u32,
    hop_drop_ppm: u32,
    rcpt_4xx_ppm: u32,
    rcpt_5xx_ppm: u32,
    dot_4xx_ppm: u32,
    dot_5xx_ppm: u32,
    client_drop_ppm: u32,
    dribble_ppm: u32,
    crash_per_tick_ppm: u32,
}

impl Behaviour {
    fn of(rng: &mut Rng) -> Behaviour {
        let mut pick = |max: u64| rng.below(max + 1) as u32;
        Behaviour {
            hop_refuse_ppm: pick(80_000),
            hop_drop_ppm: pick(60_000),
            rcpt_4xx_ppm: pick(100_000),
            rcpt_5xx_ppm: pick(50_000),
            dot_4xx_ppm: pick(60_000),
            dot_5xx_ppm: pick(30_000),
            client_drop_ppm: pick(60_000),
            dribble_ppm: pick(300_000),
            crash_per_tick_ppm: 200 + pick(2_000),
        }
    }

    /// Everything succeeds: the drain at the end of a seed.
    fn calm() -> Behaviour {
        Behaviour {
            hop_refuse_ppm: 0,
            hop_drop_ppm: 0,
            rcpt_4xx_ppm: 0,
            rcpt_5xx_ppm: 0,
            dot_4xx_ppm: 0,
            dot_5xx_ppm: 0,
            client_drop_ppm: 0,
            dribble_ppm: 0,
            crash_per_tick_ppm: 0,
        }
    }
}

/// Everything one seed shares between its tasks.
struct World {
    rng: RefCell<Rng>,
    disk: SimDisk,
    clock: Clock,
    manual: Rc<ManualClock>,
    /// `Instant` for the machines: a fixed origin plus the clock's time.
    origin: Instant,
    epoch: Cell<u32>,
    behaviour: RefCell<Behaviour>,
    model: RefCell<Model>,
    messages_target: usize,
    accepting: Cell<bool>,
    trace: Cell<u64>,
    server_params: Arc<ServerParams>,
    /// Bounces made so far (their ids).
    bounces: Cell<u64>,
    broken: Broken,
    /// The outage scenario: hop `.0` refuses every connection until unix
    /// ms `.1`.
    outage: Option<(u64, u64)>,
    /// Clients start no message at or after this unix ms.
    accept_until_ms: u64,
    /// A client's pause between two messages is below this, in ms.
    client_pause_ms: u64,
    /// Ticks of the driver so far (the outage scenario's commit latency:
    /// a commit takes no simulated time, only turns of the executor).
    tick: Cell<u64>,
}

impl World {
    fn now(&self) -> Instant {
        self.origin + Duration::from_millis(self.manual.unix_ms() - START_UNIX_MS)
    }

    fn chance(&self, ppm: u32) -> bool {
        self.rng.borrow_mut().chance(ppm)
    }

    fn below(&self, bound: u64) -> u64 {
        self.rng.borrow_mut().below(bound)
    }

    /// FNV-1a over what happened, in order: the determinism check.
    fn note(&self, what: &[u64]) {
        let mut hash = self.trace.get();
        for word in what {
            for byte in word.to_le_bytes() {
                hash ^= byte as u64;
                hash = hash.wrapping_mul(0x100_0000_01b3);
            }
        }
        self.trace.set(hash);
    }

    /// Waits `ms` of simulated time (0: one yield).
    async fn pause(&self, ms: u64) {
        if ms == 0 {
            futures_lite::future::yield_now().await;
        } else {
            self.clock.sleep(Duration::from_millis(ms)).await;
        }
    }
}

fn params() -> QueueParams {
    QueueParams {
        inline_max_bytes: INLINE_MAX_BYTES,
        segment_size_bytes: SEGMENT_SIZE_BYTES,
        commit_delay: Duration::ZERO,
        retry_lags: retry_lags(),
        handoff_envelopes_max: PERMITS * 4,
        body_sync: BodySyncMode::Each,
        body_store: crate::queue::BodyStore::Log,
    }
}

fn server_params(hostname: &str) -> ServerParams {
    ServerParams {
        hostname: hostname.to_string(),
        greeting: "ESMTP sim".to_string(),
        max_recipients: 100,
        max_message_bytes: 10 << 20,
        max_text_line_bytes: 1000,
        max_errors: 10,
        command_timeout: Duration::from_secs(300),
        data_timeout: Duration::from_secs(180),
        bare_lf: BareLfPolicy::Reject,
        nul: NulPolicy::Reject,
        starttls: false,
    }
}

fn peer() -> PeerInfo {
    let addr: SocketAddr = "192.0.2.1:40000".parse().expect("literal");
    let local: SocketAddr = "192.0.2.2:25".parse().expect("literal");
    PeerInfo { addr, local }
}

fn ok() -> Reply {
    Reply::new(250, Enhanced(2, 0, 0), "OK")
}

// ---------------------------------------------------------------- clients

/// The content of message `number`: a marker header, text lines of which
/// some start with a dot, and sometimes enough to need a body file.
fn content_for(world: &World, number: usize) -> Vec<u8> {
    let large = world.below(4) == 0;
    let size_bytes = if large { 2_500 + world.below(20_000) } else { 60 + world.below(1_500) } as usize;
    let mut body = format!("{SIM_HEADER}{number}\r\nSubject: m{number}\r\n\r\n").into_bytes();
    let mut line = 0u64;
    while body.len() < size_bytes {
        line += 1;
        if world.below(8) == 0 {
            body.extend_from_slice(b".");
        }
        let len = 10 + world.below(70);
        for i in 0..len {
            body.push(b'a' + ((line + i) % 26) as u8);
        }
        body.extend_from_slice(b"\r\n");
    }
    body
}

/// The octets a client sends for one message: everything pipelined.
fn wire_for(sender: &str, recipients: &[String], content: &[u8]) -> Vec<u8> {
    let mut wire = b"EHLO client.test\r\n".to_vec();
    wire.extend_from_slice(format!("MAIL FROM:<{sender}>\r\n").as_bytes());
    for r in recipients {
        wire.extend_from_slice(format!("RCPT TO:<{r}>\r\n").as_bytes());
    }
    wire.extend_from_slice(b"DATA\r\n");
    let mut stuffer = DotStuffer::new();
    stuffer.encode(content, &mut wire);
    stuffer.finish(&mut wire);
    wire.extend_from_slice(b"QUIT\r\n");
    wire
}

/// One simulated client: sends messages until the world stops accepting.
async fn client_loop(world: Rc<World>, queue: Rc<Queue<SimStorage>>) {
    while world.accepting.get() {
        let number = {
            let model = world.model.borrow();
            if model.messages.len() >= world.messages_target || world.manual.unix_ms() >= world.accept_until_ms {
                world.accepting.set(false);
                return;
            }
            model.messages.len()
        };
        let count = 1 + world.below(3) as usize;
        let recipients: Vec<String> = (0..count).map(|i| format!("r{i}@hop{}.test", world.below(HOPS))).collect();
        let sender = format!("s{number}@hop{}.test", world.below(HOPS));
        world.model.borrow_mut().messages.push(Msg {
            recipients: recipients.clone(),
            state: MsgState::Sending,
            checksum: 0,
            size_bytes: 0,
            epoch: world.epoch.get(),
        });
        let content = content_for(&world, number);
        session(&world, &queue, number, wire_for(&sender, &recipients, &content)).await;
        let state = world.model.borrow().messages[number].state;
        if state == MsgState::Sending {
            world.model.borrow_mut().messages[number].state = MsgState::Dropped;
        }
        world.note(&[1, number as u64, state as u64]);
        world.pause(world.below(world.client_pause_ms)).await;
    }
}

/// One inbound session, driven as `ingress::run_session` drives it.
async fn session(world: &World, queue: &Queue<SimStorage>, number: usize, wire: Vec<u8>) {
    let dribble = world.chance(world.behaviour.borrow().dribble_ppm);
    let drop_at = if world.chance(world.behaviour.borrow().client_drop_ppm) {
        world.below(wire.len() as u64) as usize
    } else {
        usize::MAX
    };
    let mut machine = Server::new(world.server_params.clone(), peer(), world.now());
    let mut sent = 0usize;
    let mut writer = None;
    let mut failed: Option<Reply> = None;
    let mut checksum = 0u32;
    let mut size_bytes = 0u64;
    loop {
        match machine.poll(world.now()) {
            Event::NeedInput => {
                let _ = machine.take_output();
                if world.now() >= machine.deadline() {
                    machine.on_timeout(world.now());
                    continue;
                }
                let end = wire.len().min(drop_at);
                if sent >= end {
                    machine.on_eof();
                    continue;
                }
                let most = if dribble { 1 + world.below(16) as usize } else { FEED_BYTES_MAX };
                let take = (1 + world.below(most as u64) as usize).min(end - sent);
                machine.feed(&wire[sent..sent + take]);
                sent += take;
                world.pause(if dribble { world.below(200) } else { world.below(3) }).await;
            }
            Event::Mail { .. } | Event::Rcpt { .. } => machine.decide(ok()),
            Event::DataStart => match queue.create().await {
                Ok(w) => writer = Some(w),
                Err(e) => failed = Some(e.reply()),
            },
            Event::Body(chunk) => {
                checksum = queue_format::checksum::crc32c_append(checksum, &chunk);
                size_bytes += chunk.len() as u64;
                if let Some(w) = writer.as_mut() {
                    if let Err(e) = w.write(&chunk).await {
                        failed = Some(e.reply());
                        writer = None;
                    }
                }
            }
            Event::DataEnd => {
                let reply =
                    finish_message(world, queue, &machine, number, writer.take(), failed.take(), checksum, size_bytes)
                        .await;
                machine.decide(reply);
            }
            Event::DataAborted { .. } => {
                if let Some(w) = writer.take() {
                    w.abort().await;
                }
            }
            Event::Close => return,
            _ => {}
        }
    }
}

/// The final dot: the envelope from the transaction, the commit, the reply.
#[allow(clippy::too_many_arguments)]
async fn finish_message(
    world: &World,
    queue: &Queue<SimStorage>,
    machine: &Server,
    number: usize,
    writer: Option<crate::queue::MessageWriter<SimStorage>>,
    failed: Option<Reply>,
    checksum: u32,
    size_bytes: u64,
) -> Reply {
    if let Some(reply) = failed {
        world.model.borrow_mut().messages[number].state = MsgState::Refused;
        return reply;
    }
    let (Some(writer), Some(txn)) = (writer, machine.transaction()) else {
        world.model.borrow_mut().messages[number].state = MsgState::Refused;
        return Reply::new(451, Enhanced(4, 3, 0), "transaction lost");
    };
    let now_ms = queue.clock().unix_ms();
    let tick = world.tick.get();
    let env = Envelope {
        id: writer.id().to_string(),
        sender: txn.reverse_path.clone(),
        recipients: Recipient::pending_of(txn),
        arrival_unix_ms: now_ms,
        next_retry_unix_ms: now_ms,
        attempt_count: 0,
        size_bytes: writer.size_bytes(),
        body_8bit: txn.body_8bit(),
        body_binary: false,
        smtputf8: false,
        client: "192.0.2.1".into(),
        helo: machine.helo_name().unwrap_or_default().into(),
        body: Body::Inline(Default::default()),
        headers_prepended: Vec::new(),
        replica_of: None,
        held: false,
        auth: None,
        dsn: txn.params.dsn.clone(),
        delay_warned: false,
    };
    {
        let mut model = world.model.borrow_mut();
        let msg = &mut model.messages[number];
        msg.state = MsgState::Committing;
        msg.checksum = checksum;
        msg.size_bytes = size_bytes;
    }
    match writer.commit(queue, env).await {
        Ok(()) => {
            let mut model = world.model.borrow_mut();
            model.messages[number].state = MsgState::Acknowledged;
            model.commit_ticks.push(world.tick.get() - tick);
            ok()
        }
        Err(e) => {
            let mut model = world.model.borrow_mut();
            model.messages[number].state = MsgState::Refused;
            model.messages[number].epoch = world.epoch.get();
            e.reply()
        }
    }
}

// --------------------------------------------------------------- delivery

/// The delivery scheduler, as the engine's: the hand-off's one taker, it
/// takes a message only with one of `PERMITS` permits free and runs each
/// attempt as a task of its own (dropped with it at a crash).
async fn delivery_loop(world: Rc<World>, queue: Rc<Queue<SimStorage>>) {
    let mut running: Vec<glommio::Task<()>> = Vec::with_capacity(PERMITS);
    loop {
        let mut still = Vec::with_capacity(PERMITS);
        for mut task in running.drain(..) {
            if futures_lite::future::poll_once(&mut task).await.is_none() {
                still.push(task);
            }
        }
        running = still;
        if running.len() >= PERMITS {
            futures_lite::future::yield_now().await;
            continue;
        }
        let Some(env) = queue.take().await else { return };
        let (world, queue) = (world.clone(), queue.clone());
        running.push(glommio::spawn_local(async move { attempt(&world, &queue, env).await }));
    }
}

/// What the content of a delivered or bounced message says it is.
enum Marker {
    Message(usize),
    /// A bounce of a message for some of its recipients: (message,
    /// recipients, bounce id, the life in which the attempt that made it ran).
    Bounce(usize, Vec<usize>, u64, u32),
}

fn marker_of(content: &[u8]) -> Option<Marker> {
    let text = std::str::from_utf8(&content[..content.len().min(200)]).ok()?;
    let first = text.lines().next()?;
    if let Some(rest) = first.strip_prefix(BOUNCE_HEADER) {
        let mut words = rest.split(' ');
        let number = words.next()?.parse().ok()?;
        let failed = words.next()?.split(',').filter_map(|w| w.parse().ok()).collect();
        let id = words.next()?.parse().ok()?;
        let epoch = words.next()?.parse().ok()?;
        return Some(Marker::Bounce(number, failed, id, epoch));
    }
    Some(Marker::Message(first.strip_prefix(SIM_HEADER)?.parse().ok()?))
}

async fn content_of(queue: &Queue<SimStorage>, env: &Envelope) -> Option<Vec<u8>> {
    queue.read_body(env).await
}

/// One attempt, as `deliver::engine::Delivery::attempt` makes it.
async fn attempt(world: &World, queue: &Queue<SimStorage>, mut env: Envelope) {
    env.attempt_count = env.attempt_count.saturating_add(1);
    world.model.borrow_mut().attempts += 1;
    let content = content_of(queue, &env).await;
    let sender = match &env.sender {
        crate::smtp::address::ReversePath::Null => String::new(),
        crate::smtp::address::ReversePath::Path(a) => a.to_string(),
    };
    let pending: Vec<usize> =
        (0..env.recipients.len()).filter(|&i| env.recipients[i].state == RcptState::Pending).collect();
    let mut by_hop: Vec<(String, Vec<usize>)> = Vec::new();
    for i in pending {
        let address = env.recipients[i].address.to_string();
        let hop = address.rsplit('@').next().unwrap_or_default().to_string();
        match by_hop.iter_mut().find(|(h, _)| *h == hop) {
            Some((_, list)) => list.push(i),
            None => by_hop.push((hop, vec![i])),
        }
    }
    for (_, indexes) in by_hop {
        let outcomes = match &content {
            Some(content) => {
                let recipients = indexes.iter().map(|&i| env.recipients[i].address.to_string()).collect();
                let (outcomes, took) = transact(world, sender.clone(), recipients, content).await;
                if let Some(Marker::Message(number)) = marker_of(content) {
                    let epoch = world.epoch.get();
                    let mut model = world.model.borrow_mut();
                    for t in took {
                        model.resolved.entry((number, indexes[t])).or_default().push(epoch);
                    }
                }
                outcomes
            }
            None => {
                indexes.iter().map(|_| RcptOutcome::Transient(Reply::new(451, Enhanced(4, 3, 0), "body"))).collect()
            }
        };
        for (&i, outcome) in indexes.iter().zip(outcomes) {
            let r = &mut env.recipients[i];
            r.state = match &outcome {
                RcptOutcome::Delivered(_) => RcptState::Delivered,
                RcptOutcome::Transient(_) => RcptState::Pending,
                RcptOutcome::Permanent(_) => RcptState::Failed,
            };
            r.last_reply = outcome.reply().summary();
        }
    }
    finish(world, queue, env, content).await;
}

/// Records the attempt, as `deliver::engine::Delivery::finish` does.
async fn finish(world: &World, queue: &Queue<SimStorage>, mut env: Envelope, content: Option<Vec<u8>>) {
    let now_ms = queue.clock().unix_ms();
    let age = Duration::from_millis(now_ms.saturating_sub(env.arrival_unix_ms));
    let mut reason = CompletionReason::Done;
    if env.pending_count() > 0 && age >= MAX_AGE {
        reason = CompletionReason::Expired;
        for r in env.recipients.iter_mut().filter(|r| r.state == RcptState::Pending) {
            r.state = RcptState::Failed;
        }
    }
    if env.pending_count() == 0 && !env.is_null_sender() {
        let failed: Vec<usize> =
            (0..env.recipients.len()).filter(|&i| env.recipients[i].state == RcptState::Failed).collect();
        if !failed.is_empty() {
            let number = content.as_deref().and_then(marker_of);
            let Some(Marker::Message(number)) = number else {
                panic!("a message without content failed permanently: {}", env.id);
            };
            let bounce_id = world.bounces.get();
            world.bounces.set(bounce_id + 1);
            while bounce(queue, &env, number, &failed, bounce_id, world.epoch.get()).await.is_err() {
                world.model.borrow_mut().bounce_commit_failed.entry(bounce_id).or_insert(world.epoch.get());
                if queue.is_closed() {
                    queue.release(&env.id);
                    return;
                }
                world.clock.sleep(QUEUE_ERROR_RETRY).await;
            }
        }
    }
    loop {
        let recorded = if env.pending_count() == 0 {
            queue.complete(&env, reason)
        } else {
            let delay = queue.retry_delay(env.attempt_count);
            env.next_retry_unix_ms = queue.clock().unix_ms() + delay.as_millis() as u64;
            queue.defer(&env).await
        };
        if recorded.is_ok() {
            return;
        }
        if queue.is_closed() {
            queue.release(&env.id);
            return;
        }
        world.clock.sleep(QUEUE_ERROR_RETRY).await;
    }
}

/// Queues the bounce of message `number` for its `failed` recipients: from
/// `<>` to the sender, its content a marker naming them.
async fn bounce(
    queue: &Queue<SimStorage>,
    env: &Envelope,
    number: usize,
    failed: &[usize],
    bounce_id: u64,
    epoch: u32,
) -> Result<(), crate::queue::QueueError> {
    let list: Vec<String> = failed.iter().map(|i| i.to_string()).collect();
    let content = format!(
        "{BOUNCE_HEADER}{number} {} {bounce_id} {epoch}\r\nSubject: failure\r\n\r\nreturned\r\n",
        list.join(",")
    );
    let mut writer = queue.create().await?;
    writer.write(content.as_bytes()).await?;
    let crate::smtp::address::ReversePath::Path(sender) = &env.sender else { unreachable!("no bounce to <>") };
    let now_ms = queue.clock().unix_ms();
    let mut report = env.clone();
    report.id = writer.id().to_string();
    report.sender = crate::smtp::address::ReversePath::Null;
    report.recipients = vec![Recipient {
        address: sender.clone(),
        state: RcptState::Pending,
        last_reply: String::new(),
        folder: None,
        dsn: Default::default(),
    }];
    report.arrival_unix_ms = now_ms;
    report.next_retry_unix_ms = now_ms;
    report.attempt_count = 0;
    report.delay_warned = false;
    writer.commit(queue, report).await
}

/// A pipe between the client machine and a next hop's server machine,
/// octets split at random.
fn split_feed(world: &World, bytes: &[u8], mut feed: impl FnMut(&[u8])) {
    let mut at = 0;
    while at < bytes.len() {
        let take = (1 + world.below(FEED_BYTES_MAX as u64) as usize).min(bytes.len() - at);
        feed(&bytes[at..at + take]);
        at += take;
    }
}

/// One SMTP transaction to a simulated next hop: the production client
/// machine against a production server machine whose decisions are the
/// seed's. Returns one outcome per recipient.
async fn transact(
    world: &World,
    sender: String,
    recipients: Vec<String>,
    content: &[u8],
) -> (Vec<RcptOutcome>, Vec<usize>) {
    let count = recipients.len();
    let behaviour = world.behaviour.borrow().clone();
    let hop_down = world.outage.is_some_and(|(hop, until_ms)| {
        world.manual.unix_ms() < until_ms && recipients[0].ends_with(&format!("@hop{hop}.test"))
    });
    if hop_down || world.chance(behaviour.hop_refuse_ppm) {
        world.pause(world.below(100)).await;
        let reply = Reply::new(451, Enhanced(4, 4, 1), "connection refused");
        return ((0..count).map(|_| RcptOutcome::Transient(reply.clone())).collect(), Vec::new());
    }
    let bounce = sender.is_empty();
    let txn = client::Transaction {
        reverse_path: sender,
        recipients,
        size_bytes: content.len() as u64,
        body: client::BodyType::SevenBit,
        smtputf8: false,
        probe: false,
        replica_of: None,
        mail_dsn: Default::default(),
        rcpt_dsn: Vec::new(),
    };
    // Half the attempts send small content in BDAT with MAIL and RCPT (the
    // hop offers CHUNKING), half after DATA.
    let mut params = ClientParams::new("sim.test");
    params.chunking_enabled = world.chance(500_000);
    let mut client = client::Client::new(params, txn, world.now());
    let mut chunk_offset = 0usize;
    let hop_params = Arc::new(server_params("hop.test"));
    let mut hop = Server::new(hop_params, peer(), world.now());
    let drop_at = world.chance(behaviour.hop_drop_ppm).then(|| world.below(40) as usize);
    let mut exchanges = 0usize;
    let mut received: Vec<u8> = Vec::new();
    let mut accepted: Vec<usize> = Vec::new();
    let mut took: Vec<usize> = Vec::new();
    let mut rcpt_index = 0usize;
    loop {
        // The hop runs on what it has.
        loop {
            match hop.poll(world.now()) {
                Event::Mail { .. } => hop.decide(ok()),
                Event::Rcpt { .. } => {
                    let reply = if !bounce && world.chance(behaviour.rcpt_5xx_ppm) {
                        Reply::new(550, Enhanced(5, 1, 1), "no such user")
                    } else if world.chance(behaviour.rcpt_4xx_ppm) {
                        Reply::new(450, Enhanced(4, 2, 0), "try later")
                    } else {
                        accepted.push(rcpt_index);
                        ok()
                    };
                    rcpt_index += 1;
                    hop.decide(reply);
                }
                Event::DataStart => received.clear(),
                Event::Body(chunk) => received.extend_from_slice(&chunk),
                Event::DataEnd => {
                    let reply = if !bounce && world.chance(behaviour.dot_5xx_ppm) {
                        Reply::new(554, Enhanced(5, 6, 0), "refused")
                    } else if world.chance(behaviour.dot_4xx_ppm) {
                        Reply::new(451, Enhanced(4, 3, 0), "try later")
                    } else {
                        arrived(world, &received);
                        took = accepted.clone();
                        ok()
                    };
                    hop.decide(reply);
                }
                Event::NeedInput | Event::Close => break,
                _ => {}
            }
        }
        let to_client = hop.take_output();
        split_feed(world, &to_client, |b| client.feed(b));
        exchanges += 1;
        if drop_at.is_some_and(|at| exchanges > at) {
            client.on_connection_lost();
        }
        match client.poll(world.now()) {
            ClientEvent::NeedInput | ClientEvent::StartTls => {}
            ClientEvent::SendChunk => {
                let end = (chunk_offset + client::BDAT_CHUNK_BYTES_MAX).min(content.len());
                client.bdat_chunk(world.now(), &content[chunk_offset..end], end == content.len());
                chunk_offset = end;
                let wire = client.take_output();
                split_feed(world, &wire, |b| hop.feed(b));
                continue;
            }
            ClientEvent::SendBody => {
                let mut wire = client.take_output();
                let mut stuffer = DotStuffer::new();
                stuffer.encode(content, &mut wire);
                stuffer.finish(&mut wire);
                client.body_sent();
                split_feed(world, &wire, |b| hop.feed(b));
                continue;
            }
            ClientEvent::Done(outcome) => {
                assert_eq!(outcome.recipients.len(), count, "one outcome per recipient");
                for &t in &took {
                    assert!(
                        matches!(outcome.recipients[t], RcptOutcome::Delivered(_)),
                        "the hop took a recipient the client does not count as delivered"
                    );
                }
                return (outcome.recipients, took);
            }
        }
        let to_hop = client.take_output();
        if to_hop.is_empty() && to_client.is_empty() {
            // Neither side has anything to say: the hop is silent.
            client.on_timeout(world.now());
            continue;
        }
        split_feed(world, &to_hop, |b| hop.feed(b));
        world.pause(world.below(20)).await;
    }
}

/// The next hop took a message: its content is checked against what its
/// client sent; a bounce resolves the recipients it names.
fn arrived(world: &World, content: &[u8]) {
    let epoch = world.epoch.get();
    let mut model = world.model.borrow_mut();
    match marker_of(content) {
        Some(Marker::Message(number)) => {
            let msg = model.messages.get(number).unwrap_or_else(|| panic!("delivered message {number} never sent"));
            assert!(
                matches!(msg.state, MsgState::Committing | MsgState::Refused | MsgState::Acknowledged),
                "message {number} delivered though its client dropped before the final dot ({:?})",
                msg.state
            );
            if msg.state == MsgState::Refused {
                assert!(epoch > msg.epoch, "message {number} delivered in the life that refused its commit");
            }
            assert_eq!(
                (queue_format::checksum::crc32c_append(0, content), content.len() as u64),
                (msg.checksum, msg.size_bytes),
                "message {number} delivered with other content than its client sent"
            );
            model.deliveries += 1;
            world.note(&[2, number as u64, epoch as u64]);
        }
        Some(Marker::Bounce(number, failed, id, made_in)) => {
            let failed_before_a_crash = model.bounce_commit_failed.get(&id).is_some_and(|&life| life < epoch);
            let arrivals = model.bounce_arrivals.entry(id).or_default();
            if let Some(&last) = arrivals.last() {
                assert!(epoch > last || failed_before_a_crash, "bounce {id} delivered twice in one life of the shard");
                model.bounce_duplicates += 1;
            } else {
                for i in failed {
                    model.resolved.entry((number, i)).or_default().push(made_in);
                    model.bounced_recipients += 1;
                }
            }
            model.bounce_arrivals.entry(id).or_default().push(epoch);
            world.note(&[3, number as u64, epoch as u64]);
        }
        None => panic!("a message without a marker arrived"),
    }
}

// ------------------------------------------------------------ the shard

/// One life of the shard: its queue and every task that runs in it.
struct Shard {
    queue: Rc<Queue<SimStorage>>,
    tasks: Vec<glommio::Task<()>>,
}

/// Counts the client tasks alive (dropped ones too: a crash cancels them).
struct Running(Rc<Cell<usize>>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Recovery, then the committers, runners, collector, delivery permits and
/// (while the world accepts) the clients.
async fn start(world: &Rc<World>, clients: &Rc<Cell<usize>>) -> Shard {
    let queue = match Queue::open_with(world.disk.storage(), 0, params(), world.clock.clone()).await {
        Ok(queue) => queue,
        Err(e) => panic!("recovery failed in life {}: {e}", world.epoch.get()),
    };
    world.note(&[4, world.epoch.get() as u64, queue.live_count() as u64]);
    let mut tasks = Vec::new();
    for kind in [LogKind::Head, LogKind::Retry] {
        tasks.push(glommio::spawn_local(queue.clone().run_committer(kind)));
    }
    for runner in 0..queue.params().retry_lags.len() {
        tasks.push(glommio::spawn_local(queue.clone().run_runner(runner)));
    }
    if world.broken != Broken::NoCollector {
        tasks.push(glommio::spawn_local(queue.clone().run_collector()));
    }
    tasks.push(glommio::spawn_local(delivery_loop(world.clone(), queue.clone())));
    if world.accepting.get() {
        for _ in 0..CLIENTS {
            clients.set(clients.get() + 1);
            let running = Running(clients.clone());
            let (world, queue) = (world.clone(), queue.clone());
            tasks.push(glommio::spawn_local(async move {
                let _running = running;
                client_loop(world, queue).await;
            }));
        }
    }
    Shard { queue, tasks }
}

/// Power lost: every task and the queue dropped where they stand, the disk
/// crashed, the shard started again by recovery.
async fn crash(world: &Rc<World>, shard: Shard, clients: &Rc<Cell<usize>>) -> Shard {
    drop(shard.tasks);
    drop(shard.queue);
    // Cancelled tasks are dropped by the executor: let it.
    for _ in 0..TICK_YIELDS {
        futures_lite::future::yield_now().await;
    }
    world.disk.crash(CrashMode::Random);
    world.epoch.set(world.epoch.get() + 1);
    world.note(&[5, world.manual.unix_ms()]);
    start(world, clients).await
}

/// SPEC section 13's bound on a log's size, checked from the disk's
/// files: a log keeps the segments from the one holding its oldest live
/// record to the newest, and no older one; the retry log also those sealed
/// while a head segment still on disk was there (every retry segment found
/// at a restart counts as sealed then). Live records are the index's
/// entries; the queue's per-segment live counts must equal them. The
/// collector works after the records die, so a segment older than that is
/// a violation only once it has stayed for `GRACE_TICKS` ticks.
struct Bound {
    /// Each retry segment seen sealed, with the newest head segment then.
    head_newest_at_retry_sealed: std::collections::BTreeMap<u64, u64>,
    /// Per log: consecutive ticks with a segment older than allowed.
    over_ticks: [u64; 2],
    /// Consecutive ticks with a body log segment kept or left too long.
    body_over_ticks: u64,
    segments_max: [usize; 2],
}

/// Ticks a dead segment may stay before the collector counts as behind.
const GRACE_TICKS: u64 = 200;

impl Bound {
    fn new() -> Bound {
        Bound {
            head_newest_at_retry_sealed: Default::default(),
            over_ticks: [0; 2],
            body_over_ticks: 0,
            segments_max: [0; 2],
        }
    }

    /// The sequences of each log's segment files on disk, oldest first.
    fn on_disk(world: &World) -> [Vec<u64>; 2] {
        let mut seqs: [Vec<u64>; 2] = Default::default();
        for name in world.disk.state.borrow().names() {
            match crate::queue::log::parse_segment_name(&name) {
                Some((LogKind::Head, seq)) => seqs[0].push(seq),
                Some((LogKind::Retry, seq)) => seqs[1].push(seq),
                Some((LogKind::Body, _)) | None => {}
            }
        }
        for log in &mut seqs {
            log.sort_unstable();
        }
        seqs
    }

    /// The body log: a segment the collector may delete goes, and a file
    /// the queue does not keep (one being created or deleted) is gone or
    /// kept, within the grace ticks.
    fn check_body_log(&mut self, world: &World, queue: &Queue<SimStorage>) {
        let (kept, collectable) = queue.body_log_segments();
        let strays: Vec<String> = world
            .disk
            .state
            .borrow()
            .names()
            .into_iter()
            .filter(|name| {
                matches!(crate::queue::log::parse_segment_name(name), Some((LogKind::Body, seq)) if !kept.contains(&seq))
            })
            .collect();
        if collectable.is_empty() && strays.is_empty() {
            self.body_over_ticks = 0;
            return;
        }
        self.body_over_ticks += 1;
        assert!(
            self.body_over_ticks <= GRACE_TICKS,
            "body log: segments {collectable:x?} stayed {GRACE_TICKS} ticks though no envelope can name them, \
             files {strays:?} though the queue does not keep them (it keeps {kept:x?})"
        );
    }

    /// After recovery: the order of the two logs' older writes is unknown,
    /// so every retry segment counts as sealed with the newest head segment.
    fn restart(&mut self, world: &World) {
        let [head, retry] = Bound::on_disk(world);
        let head_newest = head.last().copied().unwrap_or(0);
        for seq in retry {
            let sealed = self.head_newest_at_retry_sealed.entry(seq).or_insert(head_newest);
            *sealed = (*sealed).max(head_newest);
        }
        self.over_ticks = [0; 2];
    }

    fn check(&mut self, world: &World, queue: &Queue<SimStorage>) {
        self.check_body_log(world, queue);
        let [head, retry] = Bound::on_disk(world);
        let live = queue.live_segments();
        for (slot, (_, agree)) in live.iter().enumerate() {
            assert!(agree, "log {slot}: a segment's live count differs from the index entries in it");
        }
        let head_newest = head.last().copied().unwrap_or(0);
        let retry_newest = retry.last().copied().unwrap_or(0);
        for &seq in retry.iter().filter(|&&seq| seq != retry_newest) {
            self.head_newest_at_retry_sealed.entry(seq).or_insert(head_newest);
        }
        self.head_newest_at_retry_sealed.retain(|seq, _| retry.first().is_some_and(|oldest| seq >= oldest));
        // Head: nothing older than the oldest live head record's segment.
        let head_allowed = live[0].0.unwrap_or(u64::MAX).min(head_newest);
        // Retry: nothing older than the oldest live retry record's, unless
        // it was sealed while a head segment still here was (or one before
        // it: the checker sees a tick late).
        let retry_allowed = live[1].0.unwrap_or(u64::MAX).min(retry_newest);
        let retry_kept = |oldest: u64| {
            oldest >= retry_allowed
                || head.first().is_some_and(|&head_oldest| {
                    self.head_newest_at_retry_sealed.get(&oldest).is_some_and(|&sealed| sealed + 1 >= head_oldest)
                })
        };
        let fine = [
            head.first().is_none_or(|&oldest| oldest >= head_allowed),
            retry.first().is_none_or(|&oldest| retry_kept(oldest)),
        ];
        for (slot, segments) in [&head, &retry].into_iter().enumerate() {
            self.segments_max[slot] = self.segments_max[slot].max(segments.len());
            if fine[slot] {
                self.over_ticks[slot] = 0;
                continue;
            }
            self.over_ticks[slot] += 1;
            assert!(
                self.over_ticks[slot] <= GRACE_TICKS,
                "log {slot}: segment {:x} stayed {GRACE_TICKS} ticks though no live record needs it; \
                 head {head:x?}, retry {retry:x?}, retry sealed with head {:x?}; live {live:x?}",
                segments[0],
                self.head_newest_at_retry_sealed
            );
        }
    }
}

/// Runs seed `seed` with `messages_target` messages; panics on a broken
/// invariant (the caller prints the seed).
pub fn run_seed(seed: u64, messages_target: usize) -> SeedReport {
    run_seed_on(seed, messages_target, Broken::Nothing)
}

/// [`run_seed`] with a shard broken as `broken` says.
pub fn run_seed_on(seed: u64, messages_target: usize, broken: Broken) -> SeedReport {
    glommio::LocalExecutorBuilder::default()
        // Nothing is preempted by the machine's time: the schedule is the seed's.
        .preempt_timer(Duration::from_secs(3600))
        .spawn(move || async move { simulate(seed, messages_target, broken).await })
        .expect("the simulation's executor starts")
        .join()
        .expect("the simulation's executor ends")
}

/// Longest main phase, in ticks, before the seed counts as stuck.
const TICKS_MAX: u64 = 2_000_000;

async fn simulate(seed: u64, messages_target: usize, broken: Broken) -> SeedReport {
    let mut rng = Rng::new(seed);
    let behaviour = Behaviour::of(&mut rng);
    let disk = SimDisk::new(rng.next_u64(), 32 << 20);
    {
        let mut state = disk.state.borrow_mut();
        state.rates.sync_error_ppm = [0, 2_000, 20_000][rng.below(3) as usize];
        state.rates.write_error_ppm = [0, 0, 5_000][rng.below(3) as usize];
        state.rates.no_space_ppm = [0, 0, 3_000][rng.below(3) as usize];
        state.rates.latency_yields_max = rng.below(5) as u32;
        state.sync_lies = broken == Broken::LyingDisk;
    }
    let (clock, manual) = Clock::simulated(START_UNIX_MS);
    let world = Rc::new(World {
        rng: RefCell::new(rng),
        disk,
        clock,
        manual,
        origin: Instant::now(),
        epoch: Cell::new(0),
        behaviour: RefCell::new(behaviour),
        model: RefCell::new(Model::default()),
        messages_target,
        accepting: Cell::new(true),
        trace: Cell::new(0xcbf2_9ce4_8422_2325),
        server_params: Arc::new(server_params("mx.sim.test")),
        bounces: Cell::new(0),
        broken,
        outage: None,
        accept_until_ms: u64::MAX,
        client_pause_ms: 50,
        tick: Cell::new(0),
    });
    let clients = Rc::new(Cell::new(0usize));
    let mut bound = Bound::new();
    let mut shard = start(&world, &clients).await;
    let mut ticks = 0u64;
    while world.accepting.get() || clients.get() > 0 {
        ticks += 1;
        assert!(ticks < TICKS_MAX, "the main phase did not end");
        for _ in 0..TICK_YIELDS {
            futures_lite::future::yield_now().await;
        }
        world.manual.advance(Duration::from_millis(1 + world.below(20)));
        bound.check(&world, &shard.queue);
        let crash_ppm = world.behaviour.borrow().crash_per_tick_ppm;
        if world.chance(crash_ppm) {
            shard = crash(&world, shard, &clients).await;
            bound.restart(&world);
        }
    }
    // The drain: nothing fails any more; everything queued must leave.
    *world.behaviour.borrow_mut() = Behaviour::calm();
    world.disk.state.borrow_mut().rates = Default::default();
    drain(&world, &shard.queue, &mut bound, &mut ticks, || Duration::from_millis(500)).await;
    shard.queue.close();
    for task in shard.tasks {
        task.await;
    }
    let state = world.disk.state.borrow();
    assert_eq!(state.alignment_violations, 0, "a segment write broke O_DIRECT's alignment");
    let mut report = check(&world, seed, ticks, state.crashes, state.sync_failures);
    report.segments_max = bound.segments_max;
    report
}

/// Runs ticks until the queue is empty (live entries and hand-off), the
/// bound checked at each, the clock moved by `step` between them; fails
/// after `DRAIN_MS_MAX` of simulated time. Returns the simulated ms it took.
async fn drain(
    world: &World,
    queue: &Queue<SimStorage>,
    bound: &mut Bound,
    ticks: &mut u64,
    step: impl Fn() -> Duration,
) -> u64 {
    let drain_start_ms = world.manual.unix_ms();
    loop {
        *ticks += 1;
        world.tick.set(*ticks);
        for _ in 0..TICK_YIELDS {
            futures_lite::future::yield_now().await;
        }
        bound.check(world, queue);
        if queue.live_count() == 0 && queue.handoff_counts().0 == 0 {
            return world.manual.unix_ms() - drain_start_ms;
        }
        assert!(
            world.manual.unix_ms() - drain_start_ms < DRAIN_MS_MAX,
            "the queue did not drain: {} live",
            queue.live_count()
        );
        world.manual.advance(step());
    }
}

/// What the outage scenario found (see [`run_outage`]).
#[derive(Clone, Debug, Default)]
pub struct OutageReport {
    pub seed: u64,
    pub hop_down: bool,
    pub acknowledged: usize,
    /// Commits that failed (a 4xx to the client).
    pub refused: usize,
    /// Acknowledged messages with a recipient at the down hop.
    pub backlog: usize,
    /// Driver ticks from the final dot to the 250 (a commit takes no
    /// simulated time: the clock moves between ticks).
    pub commit_ticks_p50: u64,
    pub commit_ticks_p99: u64,
    pub commit_ticks_max: u64,
    /// Most index entries (live messages) at once, and when the hop came back.
    pub live_max: usize,
    pub live_at_return: usize,
    /// Most retry segments on disk at once.
    pub retry_segments_max: usize,
    /// Retry records written, and their mean size.
    pub retry_records: u64,
    pub retry_record_bytes_mean: u64,
    pub attempts: usize,
    pub deliveries: usize,
    /// Simulated ms from the hop's return until the queue was empty.
    pub drain_ms: u64,
}

/// The length of the outage scenario's accepting phase.
const OUTAGE_MS: u64 = 3600 * 1000;
/// Ticks between two checks of the bound in the outage scenario (the
/// check walks the index).
const OUTAGE_CHECK_TICKS: u64 = 16;
/// Most turns of the executor a write or flush takes in the outage scenario.
const OUTAGE_LATENCY_YIELDS_MAX: u32 = 24;

/// A next hop down for an hour of simulated time (a delivery backlog
/// under load): hop 0 refuses every connection for `OUTAGE_MS` while the
/// clients send at a steady rate (if `hop_down`; otherwise every hop is up,
/// the comparison), then comes back; no other fault, no crash. The queue's
/// bound is checked as in [`run_seed`], the backlog must drain once the hop
/// is back, and every acknowledged recipient is delivered exactly once.
pub fn run_outage(seed: u64, hop_down: bool) -> OutageReport {
    glommio::LocalExecutorBuilder::default()
        .preempt_timer(Duration::from_secs(3600))
        .spawn(move || async move { simulate_outage(seed, hop_down).await })
        .expect("the simulation's executor starts")
        .join()
        .expect("the simulation's executor ends")
}

async fn simulate_outage(seed: u64, hop_down: bool) -> OutageReport {
    let mut rng = Rng::new(seed);
    let disk = SimDisk::new(rng.next_u64(), 1 << 30);
    // No fault, but each write and flush takes a few turns of the
    // executor, so that a commit takes ticks and a slower one shows.
    disk.state.borrow_mut().rates.latency_yields_max = OUTAGE_LATENCY_YIELDS_MAX;
    let (clock, manual) = Clock::simulated(START_UNIX_MS);
    // The clients stop a minute before the hop comes back, so that the
    // backlog is whole when it does.
    let return_ms = START_UNIX_MS + OUTAGE_MS;
    let accept_until_ms = return_ms - 60_000;
    let world = Rc::new(World {
        rng: RefCell::new(rng),
        disk,
        clock,
        manual,
        origin: Instant::now(),
        epoch: Cell::new(0),
        behaviour: RefCell::new(Behaviour::calm()),
        model: RefCell::new(Model::default()),
        messages_target: usize::MAX,
        accepting: Cell::new(true),
        trace: Cell::new(0xcbf2_9ce4_8422_2325),
        server_params: Arc::new(server_params("mx.sim.test")),
        bounces: Cell::new(0),
        broken: Broken::Nothing,
        outage: hop_down.then_some((0, return_ms)),
        accept_until_ms,
        client_pause_ms: 6000,
        tick: Cell::new(0),
    });
    let clients = Rc::new(Cell::new(0usize));
    let mut bound = Bound::new();
    let shard = start(&world, &clients).await;
    let mut ticks = 0u64;
    let mut live_max = 0usize;
    while world.accepting.get() || clients.get() > 0 || world.manual.unix_ms() < return_ms {
        ticks += 1;
        world.tick.set(ticks);
        assert!(ticks < TICKS_MAX, "the accepting phase did not end");
        for _ in 0..TICK_YIELDS {
            futures_lite::future::yield_now().await;
        }
        world.manual.advance(Duration::from_millis(1 + world.below(20)));
        live_max = live_max.max(shard.queue.live_count());
        if ticks % OUTAGE_CHECK_TICKS == 0 {
            bound.check(&world, &shard.queue);
        }
    }
    let live_at_return = shard.queue.live_count();
    let drain_ms =
        drain(&world, &shard.queue, &mut bound, &mut ticks, || Duration::from_millis(1 + world.below(20))).await;
    let retry = shard.queue.stats(LogKind::Retry);
    shard.queue.close();
    for task in shard.tasks {
        task.await;
    }
    let state = world.disk.state.borrow();
    assert_eq!(state.alignment_violations, 0, "a segment write broke O_DIRECT's alignment");
    let seed_report = check(&world, seed, ticks, state.crashes, state.sync_failures);
    assert_eq!(seed_report.duplicates_after_crash, 0, "no crash, no duplicate");
    let model = world.model.borrow();
    let backlog = model
        .messages
        .iter()
        .filter(|m| m.state == MsgState::Acknowledged && m.recipients.iter().any(|r| r.ends_with("@hop0.test")))
        .count();
    let mut commit_ticks = model.commit_ticks.clone();
    commit_ticks.sort_unstable();
    let at = |share: f64| {
        let last = commit_ticks.len().saturating_sub(1);
        commit_ticks.get(((commit_ticks.len() as f64 * share) as usize).min(last)).copied().unwrap_or(0)
    };
    OutageReport {
        seed,
        hop_down,
        acknowledged: seed_report.acknowledged,
        refused: seed_report.refused,
        backlog,
        commit_ticks_p50: at(0.5),
        commit_ticks_p99: at(0.99),
        commit_ticks_max: commit_ticks.last().copied().unwrap_or(0),
        live_max,
        live_at_return,
        retry_segments_max: bound.segments_max[1],
        retry_records: retry.records,
        retry_record_bytes_mean: retry.bytes / retry.records.max(1),
        attempts: model.attempts,
        deliveries: model.deliveries,
        drain_ms,
    }
}

/// The end-of-seed checks (see `mod.rs`).
fn check(world: &World, seed: u64, ticks: u64, crashes: u64, sync_failures: u64) -> SeedReport {
    let model = world.model.borrow();
    let mut report = SeedReport {
        seed,
        messages: model.messages.len(),
        deliveries: model.deliveries,
        bounced_recipients: model.bounced_recipients,
        crashes,
        sync_failures,
        attempts: model.attempts,
        ticks,
        sim_ms: world.manual.unix_ms() - START_UNIX_MS,
        trace_hash: world.trace.get(),
        duplicates_after_crash: model.bounce_duplicates,
        ..SeedReport::default()
    };
    for (number, msg) in model.messages.iter().enumerate() {
        let resolved: Vec<&Vec<u32>> =
            (0..msg.recipients.len()).filter_map(|i| model.resolved.get(&(number, i))).collect();
        match msg.state {
            MsgState::Acknowledged => {
                report.acknowledged += 1;
                for i in 0..msg.recipients.len() {
                    let Some(epochs) = model.resolved.get(&(number, i)) else {
                        panic!(
                            "acknowledged message {number}: recipient {} neither delivered nor bounced",
                            msg.recipients[i]
                        );
                    };
                    report.duplicates_after_crash += duplicates(number, i, epochs);
                }
            }
            MsgState::Committing | MsgState::Refused => {
                if msg.state == MsgState::Refused {
                    report.refused += 1;
                }
                if !resolved.is_empty() {
                    report.delivered_unacknowledged += 1;
                }
                for (i, epochs) in
                    (0..msg.recipients.len()).filter_map(|i| Some((i, model.resolved.get(&(number, i))?)))
                {
                    report.duplicates_after_crash += duplicates(number, i, epochs);
                }
            }
            MsgState::Sending | MsgState::Dropped => {
                report.dropped += 1;
                assert!(resolved.is_empty(), "message {number} was dropped before its final dot but delivered");
            }
        }
    }
    report
}

/// A recipient resolved more than once is a duplicate SPEC allows only
/// with a crash between: each resolution (a delivery, or a bounce, by the
/// life of the attempt that made it) from a different life.
fn duplicates(number: usize, index: usize, epochs: &[u32]) -> usize {
    let mut epochs = epochs.to_vec();
    epochs.sort_unstable();
    for pair in epochs.windows(2) {
        assert!(
            pair[1] > pair[0],
            "message {number} recipient {index} resolved twice in one life of the shard (lives {epochs:?})"
        );
    }
    epochs.len() - 1
}
