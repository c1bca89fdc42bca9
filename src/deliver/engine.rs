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
use crate::queue::{Envelope, Queue, RcptState};
use crate::shard::{Phase, Shard};
use crate::smtp::client::RcptOutcome;

/// Longest sleep of the scheduler between looks at the clock.
const SCHEDULER_SLEEP_MAX: Duration = Duration::from_secs(60);
/// Original header bytes attached to a bounce at most.
const BOUNCE_HEADERS_BYTES_MAX: usize = 64 * 1024;

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
        }
    }

    /// Takes a durable envelope: fresh (attempted at once) or recovered
    /// (attempted at its next-retry time).
    pub fn submit(&self, env: Envelope) {
        let due = env.next_retry_unix_s;
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
        for (i, r) in env.recipients.iter().enumerate() {
            if r.state == RcptState::Pending {
                match route_of_text(&self.config, &r.address) {
                    Route::Local => local.push(i),
                    Route::Relay => remote.push(i),
                }
            }
        }
        let mut results: Vec<(usize, RcptOutcome)> = Vec::new();
        for i in local {
            results.push((i, self.deliver_local(&env, i).await));
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

    async fn deliver_local(&self, env: &Envelope, index: usize) -> RcptOutcome {
        use crate::smtp::reply::{Enhanced, Reply};
        let address = env.recipients[index].address.clone();
        let user = address.rsplit_once('@').map(|(l, _)| l).unwrap_or(&address).to_string();
        let path = match maildir::expand_template(&self.config.local.maildir, &user) {
            Ok(p) => p,
            Err(_) => return RcptOutcome::Permanent(Reply::new(550, Enhanced(5, 1, 3), "Bad mailbox name")),
        };
        let body_path = self.queue.body_path(&env.id);
        let hostname = self.config.server.hostname.clone();
        let prefix = format!("Return-Path: <{}>\r\n", env.sender).into_bytes();
        let result = glommio::executor()
            .spawn_blocking(move || -> std::io::Result<std::path::PathBuf> {
                let mut body = std::fs::File::open(&body_path)?;
                maildir::deliver(&path, &hostname, &prefix, &mut body)
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
        let now = crate::unix_now_s();
        let age_s = now.saturating_sub(env.arrival_unix_s);
        if env.pending_count() > 0 && age_s >= self.config.queue.max_age.0.as_secs() {
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
        if env.pending_count() == 0 {
            if let Err(e) = self.queue.complete(&env.id).await {
                log::event("queue_error", &[("id", &env.id), ("error", &e)]);
            }
            log::event("removed", &[("id", &env.id)]);
            self.envelopes.borrow_mut().remove(&env.id);
            return;
        }
        let shift = env.attempt_count.saturating_sub(1).min(20);
        let delay = self
            .config
            .queue
            .retry_interval
            .0
            .saturating_mul(1 << shift)
            .min(self.config.queue.retry_interval_max.0);
        env.next_retry_unix_s = now + delay.as_secs().max(1);
        if let Err(e) = self.queue.defer(&env).await {
            log::event("queue_error", &[("id", &env.id), ("error", &e)]);
        }
        self.submit(env);
    }

    /// Queues one DSN to the sender listing `failed` recipients.
    async fn bounce(&self, env: &Envelope, failed: &[usize]) -> Result<(), crate::queue::QueueError> {
        let headers = self.original_headers(&env.id).await;
        let now = SystemTime::now();
        let input = dsn::BounceInput {
            reporting_mta: self.config.server.hostname.clone(),
            queue_id: env.id.clone(),
            original_sender: env.sender.clone(),
            arrival: std::time::UNIX_EPOCH + Duration::from_secs(env.arrival_unix_s),
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
        let now_s = crate::unix_now_s();
        let bounce = Envelope {
            id: writer.id().to_string(),
            sender: String::new(),
            recipients: vec![crate::queue::Recipient {
                address: env.sender.clone(),
                state: RcptState::Pending,
                last_reply: String::new(),
            }],
            arrival_unix_s: now_s,
            next_retry_unix_s: now_s,
            attempt_count: 0,
            size_bytes: writer.size_bytes(),
            // A report about a UTF-8 address (RFC 6533) carries 8-bit text.
            body_8bit: message.iter().any(|b| *b >= 0x80),
            smtputf8: env.smtputf8,
            client: "local".into(),
            helo: String::new(),
        };
        writer.commit(&self.queue, &bounce).await?;
        log::event("bounce", &[("id", &bounce.id), ("original", &env.id), ("to", &env.sender)]);
        self.submit(bounce);
        Ok(())
    }

    /// The original message's header block (up to the empty line), bounded.
    async fn original_headers(&self, id: &str) -> Vec<u8> {
        let path = self.queue.body_path(id);
        glommio::executor()
            .spawn_blocking(move || {
                use std::io::Read;
                let mut buf = Vec::new();
                if let Ok(f) = std::fs::File::open(&path) {
                    let _ = f.take(BOUNCE_HEADERS_BYTES_MAX as u64).read_to_end(&mut buf);
                }
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.truncate(end + 2);
                }
                buf
            })
            .await
    }
}
