//! The delivery engine of one shard: takes envelopes the shard accepted or
//! recovered, attempts delivery (Maildir for local recipients, SMTP to the
//! smarthost for the rest), records per-recipient results in the queue,
//! schedules retries with exponential back-off, and sends one bounce per
//! attempt for the recipients that failed permanently (never to `<>`).
//!
//! Place in the pipeline: after the queue. Runs in the shard's low-share
//! task queue; at most `delivery.max_concurrent_per_shard` attempts at once.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use glommio::sync::Semaphore;

use crate::config::Config;
use crate::deliver::{dsn, maildir, outbound};
use crate::ingress::policy::{route_of_text, Route};
use crate::log;
use crate::queue::{Body, Envelope, Queue, RcptState};
use queue_format::CompletionReason;
use crate::shard::{Phase, Shard};
use crate::smtp::client::RcptOutcome;

/// Longest sleep of the scheduler between looks at the clock.
const SCHEDULER_SLEEP_MAX: Duration = Duration::from_secs(60);
/// Original header bytes attached to a bounce at most.
const BOUNCE_HEADERS_BYTES_MAX: usize = 64 * 1024;
/// Wait before trying again to record an attempt the queue could not take.
const QUEUE_ERROR_RETRY: Duration = Duration::from_secs(10);
/// Messages held in memory per permit, at most, before the runners wait.
const BACKLOG_PER_PERMIT: usize = 4;

pub struct Delivery {
    config: Arc<Config>,
    queue: Rc<Queue>,
    shard_index: usize,
    /// Every live envelope of the shard, by queue id.
    envelopes: RefCell<HashMap<String, Envelope>>,
    /// (due time, queue id) of envelopes waiting for an attempt.
    schedule: RefCell<BinaryHeap<Reverse<(u64, String)>>>,
    wake: event_listener::Event,
    permits: Rc<Semaphore>,
    attempts_active: std::cell::Cell<usize>,
    idle: event_listener::Event,
    /// Set when the scheduler has stopped: nothing more is taken in.
    closing: std::cell::Cell<bool>,
    /// Wakes runners waiting for room in memory.
    room: event_listener::Event,
}

impl Delivery {
    pub fn new(config: Arc<Config>, queue: Rc<Queue>, shard_index: usize) -> Delivery {
        let permits = Rc::new(Semaphore::new(config.delivery.max_concurrent_per_shard as u64));
        Delivery {
            config,
            queue,
            shard_index,
            envelopes: RefCell::new(HashMap::new()),
            schedule: RefCell::new(BinaryHeap::new()),
            wake: event_listener::Event::new(),
            permits,
            attempts_active: std::cell::Cell::new(0),
            idle: event_listener::Event::new(),
            closing: std::cell::Cell::new(false),
            room: event_listener::Event::new(),
        }
    }

    /// Takes the messages the retry runners hand over, waiting while too
    /// many are in memory. Ends when every runner has stopped.
    pub async fn take_due(self: Rc<Self>, due: glommio::channels::local_channel::LocalReceiver<Envelope>) {
        let backlog_max = self.config.delivery.max_concurrent_per_shard as usize * BACKLOG_PER_PERMIT;
        while let Some(env) = due.recv().await {
            loop {
                let listener = self.room.listen();
                if self.closing.get() || self.envelopes.borrow().len() < backlog_max {
                    break;
                }
                listener.await;
            }
            if self.closing.get() {
                self.queue.release(&env.id);
                continue;
            }
            self.submit(env);
        }
    }

    /// Takes a durable envelope: fresh (attempted at once) or recovered
    /// (attempted at its next-retry time).
    pub fn submit(&self, env: Envelope) {
        let due = env.next_retry_unix_ms / 1000;
        let id = env.id.clone();
        self.envelopes.borrow_mut().insert(id.clone(), env);
        self.schedule.borrow_mut().push(Reverse((due, id)));
        self.wake.notify(1);
    }

    /// The scheduler: starts an attempt for each due envelope, bounded by
    /// the permits, until the shard closes.
    pub async fn run(self: Rc<Self>, shard: Rc<Shard>) {
        loop {
            let woken = self.wake.listen();
            let phase_changed = shard.phase_listener();
            if shard.phase() == Phase::Closing {
                self.closing.set(true);
                self.room.notify(usize::MAX);
                return;
            }
            let now = crate::unix_now_s();
            let due = self.pop_due(now);
            if let Some(id) = due {
                let permit = match self.permits.clone().acquire_static_permit(1).await {
                    Ok(p) => p,
                    Err(_) => return,
                };
                let this = self.clone();
                this.attempts_active.set(this.attempts_active.get() + 1);
                let task = glommio::spawn_local_into(
                    async move {
                        this.attempt(&id).await;
                        drop(permit);
                        this.attempts_active.set(this.attempts_active.get() - 1);
                        this.idle.notify(usize::MAX);
                    },
                    shard.tq_delivery,
                );
                if let Ok(t) = task {
                    t.detach();
                }
                continue;
            }
            let sleep_s = self.schedule.borrow().peek().map(|Reverse((due, _))| due.saturating_sub(now));
            let sleep = sleep_s.map(Duration::from_secs).unwrap_or(SCHEDULER_SLEEP_MAX).min(SCHEDULER_SLEEP_MAX);
            let timer = async {
                glommio::timer::sleep(sleep.max(Duration::from_millis(10))).await;
            };
            futures_lite::future::or(futures_lite::future::or(woken, phase_changed), timer).await;
        }
    }

    fn pop_due(&self, now_s: u64) -> Option<String> {
        let mut schedule = self.schedule.borrow_mut();
        match schedule.peek() {
            Some(Reverse((due, _))) if *due <= now_s => schedule.pop().map(|Reverse((_, id))| id),
            _ => None,
        }
    }

    /// Waits for attempts in progress to finish, up to `deadline`.
    pub async fn wait_idle(&self, deadline: Instant) {
        loop {
            let listener = self.idle.listen();
            if self.attempts_active.get() == 0 {
                return;
            }
            let wait = deadline.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                return;
            }
            futures_lite::future::or(listener, async {
                glommio::timer::sleep(wait).await;
            })
            .await;
        }
    }

    /// One delivery attempt for every pending recipient of a message.
    async fn attempt(&self, id: &str) {
        let Some(mut env) = self.envelopes.borrow().get(id).cloned() else { return };
        env.attempt_count += 1;
        let mut local = Vec::new();
        let mut remote = Vec::new();
        let routing = crate::route::current_with_routers();
        for (i, r) in env.recipients.iter().enumerate() {
            if r.state == RcptState::Pending {
                match route_of_text(&self.config, &r.address) {
                    _ if routing.is_some() => local.push(i),
                    Route::Local => local.push(i),
                    Route::Relay => remote.push(i),
                }
            }
        }
        let mut results: Vec<(usize, RcptOutcome)> = Vec::new();
        for i in local {
            let outcome = match &routing {
                Some(engine) => self.deliver_routed(engine, &env, i).await,
                None => self.deliver_local(&env, i, None).await,
            };
            results.push((i, outcome));
        }
        if !remote.is_empty() {
            let outcomes = outbound::deliver(&self.config, &self.queue.body_path(id), &env, &remote).await;
            results.extend(remote.iter().copied().zip(outcomes));
        }
        let mut failed_now = Vec::new();
        for (i, outcome) in results {
            let r = &mut env.recipients[i];
            let (state, reply) = match &outcome {
                RcptOutcome::Delivered(reply) => (RcptState::Delivered, reply.summary()),
                RcptOutcome::Transient(reply) => (RcptState::Pending, reply.summary()),
                RcptOutcome::Permanent(reply) => (RcptState::Failed, reply.summary()),
            };
            r.state = state;
            r.last_reply = reply;
            if state == RcptState::Failed {
                failed_now.push(i);
            }
            let status = match state {
                RcptState::Delivered => "delivered",
                RcptState::Pending => "deferred",
                RcptState::Failed => "failed",
            };
            log::event(
                "delivery",
                &[
                    ("shard", &self.shard_index),
                    ("id", &env.id),
                    ("from", &format!("<{}>", env.sender)),
                    ("to", &r.address),
                    ("status", &status),
                    ("attempt", &env.attempt_count),
                    ("reply", &r.last_reply),
                ],
            );
        }
        self.finish(env, failed_now).await;
    }

    /// Delivers recipient `index` where the routers send it: each local
    /// final address to its Maildir, each SMTP next hop through the outbound
    /// client. All must succeed for the recipient to count as delivered.
    async fn deliver_routed(&self, engine: &crate::route::Engine, env: &Envelope, index: usize) -> RcptOutcome {
        use crate::route::{Decision, Mode};
        use crate::smtp::reply::{Enhanced, Reply};
        let routed = engine.route(&env.recipients[index].address, &env.sender, Mode::Deliver).await;
        let deliveries = match routed.decision {
            Decision::Reject(reply) => return RcptOutcome::Permanent(reply),
            Decision::Defer(reply) => return RcptOutcome::Transient(reply),
            Decision::Discard => return RcptOutcome::Delivered(Reply::new(250, Enhanced(2, 0, 0), "discarded by routing")),
            Decision::Deliver { deliveries, .. } => deliveries,
        };
        let mut replies = Vec::new();
        for delivery in deliveries {
            let outcome = match (delivery.transport.as_str(), &delivery.next_hop) {
                ("local", _) => self.deliver_local(env, index, Some(&delivery.address)).await,
                ("pipe" | "file", _) => RcptOutcome::Permanent(Reply::new(
                    550,
                    Enhanced(5, 3, 5),
                    format!("{} transport not available", delivery.transport),
                )),
                (_, hop) => {
                    let hop = hop.clone().or_else(|| self.config.delivery.smarthost.clone());
                    let Some(hop) = hop.map(|h| crate::route::socket_host(&h)) else {
                        return RcptOutcome::Transient(Reply::new(451, Enhanced(4, 4, 4), "no next hop for MX routing yet"));
                    };
                    let mut config = (*self.config).clone();
                    config.delivery.smarthost = Some(hop);
                    let mut one = env.clone();
                    one.recipients[index].address = delivery.address.clone();
                    let body = self.queue.body_path(&env.id);
                    let outcomes = outbound::deliver(&config, &body, &one, &[index]).await;
                    outcomes.into_iter().next().unwrap_or_else(|| {
                        RcptOutcome::Transient(Reply::new(451, Enhanced(4, 3, 0), "no outcome from outbound delivery"))
                    })
                }
            };
            match outcome {
                RcptOutcome::Delivered(reply) => replies.push(reply),
                other => return other,
            }
        }
        let reply = replies.pop().unwrap_or_else(|| Reply::new(250, Enhanced(2, 0, 0), "delivered"));
        RcptOutcome::Delivered(reply)
    }

    async fn deliver_local(&self, env: &Envelope, index: usize, routed: Option<&str>) -> RcptOutcome {
        use crate::smtp::reply::{Enhanced, Reply};
        let address = routed.map_or_else(|| env.recipients[index].address.clone(), str::to_string);
        let user = address.rsplit_once('@').map(|(l, _)| l).unwrap_or(&address).to_string();
        let path = match maildir::expand_template(&self.config.local.maildir, &user) {
            Ok(p) => p,
            Err(_) => return RcptOutcome::Permanent(Reply::new(550, Enhanced(5, 1, 3), "Bad mailbox name")),
        };
        let body_path = self.queue.body_path(&env.id);
        let body = env.body.clone();
        let hostname = self.config.server.hostname.clone();
        let prefix = format!("Return-Path: <{}>\r\n", env.sender).into_bytes();
        let result = glommio::executor()
            .spawn_blocking(move || -> std::io::Result<std::path::PathBuf> {
                match body {
                    Body::Inline(bytes) => maildir::deliver(&path, &hostname, &prefix, &mut &bytes[..]),
                    Body::File { .. } => {
                        let mut file = std::fs::File::open(&body_path)?;
                        maildir::deliver(&path, &hostname, &prefix, &mut file)
                    }
                }
            })
            .await;
        match result {
            Ok(file) => RcptOutcome::Delivered(Reply::new(
                250,
                Enhanced(2, 0, 0),
                format!("delivered to {}", file.display()),
            )),
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) => {
                RcptOutcome::Transient(Reply::new(452, Enhanced(4, 2, 2), format!("mailbox full: {e}")))
            }
            Err(e) => RcptOutcome::Transient(Reply::new(451, Enhanced(4, 3, 0), format!("maildir: {e}"))),
        }
    }

    /// Records the attempt: bounce for new permanent failures, then either
    /// remove the message or write its replacement envelope and reschedule.
    async fn finish(&self, mut env: Envelope, mut failed_now: Vec<usize>) {
        let now_ms = crate::queue::unix_now_ms();
        let age = Duration::from_millis(now_ms.saturating_sub(env.arrival_unix_ms));
        let mut reason = CompletionReason::Done;
        if env.pending_count() > 0 && age >= self.config.queue.max_age.0 {
            reason = CompletionReason::Expired;
            for (i, r) in env.recipients.iter_mut().enumerate() {
                if r.state == RcptState::Pending {
                    r.state = RcptState::Failed;
                    r.last_reply = format!("4.4.7 message expired in queue; last: {}", r.last_reply);
                    failed_now.push(i);
                }
            }
        }
        if !failed_now.is_empty() && !env.is_null_sender() {
            if let Err(e) = self.bounce(&env, &failed_now).await {
                // Not a single failed recipient is forgotten: they become pending
                // again, so that a later attempt reports them.
                log::event("bounce_error", &[("id", &env.id), ("error", &e)]);
                for &i in &failed_now {
                    env.recipients[i].state = RcptState::Pending;
                }
            }
        }
        let recorded = if env.pending_count() == 0 {
            self.queue.complete(&env, reason).map(|()| "removed")
        } else {
            env.next_retry_unix_ms = now_ms + self.queue.retry_delay(env.attempt_count).as_millis() as u64;
            self.queue.defer(&env).await.map(|()| "deferred")
        };
        match recorded {
            Ok(what) => {
                if what == "removed" {
                    log::event("removed", &[("id", &env.id)]);
                }
                // Deferred messages come back through the retry runners.
                self.envelopes.borrow_mut().remove(&env.id);
                self.room.notify(1);
            }
            Err(e) => {
                // Kept in memory and recorded again later; the states
                // reached so far stay with it.
                log::event("queue_error", &[("id", &env.id), ("error", &e)]);
                env.next_retry_unix_ms = now_ms + QUEUE_ERROR_RETRY.as_millis() as u64;
                self.submit(env);
            }
        }
    }

    /// Queues one DSN to the sender listing `failed` recipients.
    async fn bounce(&self, env: &Envelope, failed: &[usize]) -> Result<(), crate::queue::QueueError> {
        let headers = self.original_headers(env).await;
        let now = SystemTime::now();
        let input = dsn::BounceInput {
            reporting_mta: self.config.server.hostname.clone(),
            queue_id: env.id.clone(),
            original_sender: env.sender.clone(),
            arrival: std::time::UNIX_EPOCH + Duration::from_millis(env.arrival_unix_ms),
            now,
            recipients: failed
                .iter()
                .map(|&i| dsn::FailedRecipient::from_reply_text(&env.recipients[i].address, &env.recipients[i].last_reply))
                .collect(),
            original_headers: headers,
        };
        let message = dsn::build_bounce(&input);
        let mut writer = self.queue.create().await?;
        writer.write(&message).await?;
        let now_ms = crate::queue::unix_now_ms();
        let bounce = Envelope {
            id: writer.id().to_string(),
            sender: String::new(),
            recipients: vec![crate::queue::Recipient {
                address: env.sender.clone(),
                state: RcptState::Pending,
                last_reply: String::new(),
            }],
            arrival_unix_ms: now_ms,
            next_retry_unix_ms: now_ms,
            attempt_count: 0,
            size_bytes: writer.size_bytes(),
            // A report about a UTF-8 address (RFC 6533) carries 8-bit text.
            body_8bit: message.iter().any(|b| *b >= 0x80),
            smtputf8: env.smtputf8,
            client: "local".into(),
            helo: String::new(),
            body: Body::Inline(Default::default()),
        };
        let bounce = writer.commit(&self.queue, bounce).await?;
        log::event("bounce", &[("id", &bounce.id), ("original", &env.id), ("to", &env.sender)]);
        self.submit(bounce);
        Ok(())
    }

    /// The original message's header block (up to the empty line), bounded.
    async fn original_headers(&self, env: &Envelope) -> Vec<u8> {
        let path = self.queue.body_path(&env.id);
        let body = env.body.clone();
        glommio::executor()
            .spawn_blocking(move || {
                use std::io::Read;
                let mut buf = Vec::new();
                match body {
                    Body::Inline(bytes) => buf.extend_from_slice(&bytes[..bytes.len().min(BOUNCE_HEADERS_BYTES_MAX)]),
                    Body::File { .. } => {
                        if let Ok(f) = std::fs::File::open(&path) {
                            let _ = f.take(BOUNCE_HEADERS_BYTES_MAX as u64).read_to_end(&mut buf);
                        }
                    }
                }
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.truncate(end + 2);
                }
                buf
            })
            .await
    }
}
