//! The delivery engine of one shard: takes envelopes the shard accepted or
//! recovered, attempts delivery (Maildir for local recipients; SMTP for the
//! rest, grouped by destination — the smarthost, or each domain's MX
//! hosts — one transaction per group), records per-recipient results in
//! the queue, hands messages with recipients left to the retry runners,
//! and sends one bounce per message, once no recipient is pending any
//! more, listing every recipient that failed permanently (never to `<>`).
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
use crate::deliver::connections::Connections;
use crate::deliver::outbound::{self, Destination, Outbound};
use crate::config::TransportKind;
use crate::deliver::{dsn, lmtp, maildir, pipe};
use crate::dns::{Resolver, ResolverParams};
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
/// Recipients per SMTP transaction; more to one destination are split
/// (Postfix's smtp_destination_recipient_limit is 50).
pub const RECIPIENTS_PER_TRANSACTION_MAX: usize = 100;
/// How often idle outbound connections are looked at.
const CONNECTION_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// How a group of a message's recipients is delivered.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Path {
    /// Into Maildirs by this path template.
    Maildir(String),
    /// SMTP, by a transport rule (its index) or by default.
    Smtp { destination: Destination, rule: Option<usize> },
    Lmtp { rule: usize },
    Pipe { rule: usize },
}

/// The domain of an address as stored ("" for a bare local part).
fn domain_of(address: &str) -> &str {
    address.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
}

/// The same temporary failure for `count` recipients.
fn transient_all(count: usize, class: u8, subject: u16, detail: u16, text: &str) -> Vec<RcptOutcome> {
    let reply = crate::smtp::reply::Reply::new(451, crate::smtp::reply::Enhanced(class, subject, detail), text);
    (0..count).map(|_| RcptOutcome::Transient(reply.clone())).collect()
}

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
    resolver: Resolver,
    connections: Connections,
    tls_client: Arc<rustls::ClientConfig>,
}

impl Delivery {
    pub fn new(
        config: Arc<Config>,
        queue: Rc<Queue>,
        shard_index: usize,
        dns: ResolverParams,
        tls_client: Arc<rustls::ClientConfig>,
    ) -> Result<Delivery, String> {
        let permits = Rc::new(Semaphore::new(config.delivery.max_concurrent_per_shard as u64));
        let resolver = Resolver::new(dns).map_err(|e| format!("dns: {e}"))?;
        let connections = Connections::new(&config);
        Ok(Delivery {
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
            resolver,
            connections,
            tls_client,
        })
    }

    /// Closes every idle outbound connection (QUIT, then close).
    pub async fn close_connections(&self) {
        self.connections.close_all().await;
    }

    /// Counters of the outbound connections.
    pub fn connection_stats(&self) -> crate::deliver::connections::ConnectionStats {
        self.connections.stats()
    }

    /// Closes idle outbound connections that have waited too long, until
    /// the shard closes; then closes them all.
    pub async fn sweep_connections(self: Rc<Self>, shard: Rc<Shard>) {
        loop {
            if shard.phase() == Phase::Closing {
                self.connections.close_all().await;
                return;
            }
            let phase_changed = shard.phase_listener();
            futures_lite::future::or(phase_changed, async {
                glommio::timer::sleep(CONNECTION_SWEEP_INTERVAL).await;
            })
            .await;
            self.connections.sweep().await;
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
        let results = self.deliver_pending(&env).await;
        self.record(&mut env, results, false);
        self.finish(env).await;
    }

    /// Early delivery (`delivery.early_ms`): before `env` is committed, tries
    /// its recipients for up to that long. Only when every recipient goes
    /// out by SMTP (no Maildir, LMTP, pipe or routers, whose deliveries are
    /// their own kind of commit). Returns how many recipients are now
    /// delivered (their states set in `env`), or None when nothing was tried
    /// or the time ran out before the outcome was known.
    pub async fn deliver_early(&self, env: &mut Envelope) -> Option<usize> {
        let early = Duration::from_millis(u64::from(self.config.delivery.early_ms));
        if early.is_zero() || crate::route::current_with_routers().is_some() {
            return None;
        }
        if env.recipients.iter().any(|r| !matches!(self.path_of(&r.address), Path::Smtp { .. })) {
            return None;
        }
        let attempt = self.deliver_pending(env);
        let results = glommio::timer::timeout(early, async { Ok(attempt.await) }).await.ok()?;
        // attempt_count stays 0: the envelope goes into the head log as a
        // new one, with the early deliveries among its recipients' states.
        Some(self.record(env, results, true))
    }

    /// One delivery attempt for every pending recipient of `env`: each
    /// recipient's outcome and where it went.
    async fn deliver_pending(&self, env: &Envelope) -> Vec<(usize, RcptOutcome, String)> {
        let id = env.id.as_str();
        let mut groups: std::collections::BTreeMap<Path, Vec<usize>> = std::collections::BTreeMap::new();
        let routing = crate::route::current_with_routers();
        let mut routed = Vec::new();
        for (i, r) in env.recipients.iter().enumerate() {
            if r.state == RcptState::Pending {
                // With [[router]] tables the routers decide, as at RCPT,
                // except for a domain a [[transport]] rule names (a "*"
                // rule does not take routing away from the routers).
                let domain = domain_of(&r.address);
                let ruled = self.config.transport_for(domain).is_some_and(|rule| rule.names(domain));
                if routing.is_some() && !ruled {
                    routed.push(i);
                } else {
                    groups.entry(self.path_of(&r.address)).or_default().push(i);
                }
            }
        }
        let mut results: Vec<(usize, RcptOutcome, String)> = Vec::new();
        if let Some(engine) = &routing {
            for i in routed {
                results.push((i, self.deliver_routed(engine, &env, i).await, "routed".to_string()));
            }
        }
        let out = Outbound {
            config: &self.config,
            resolver: &self.resolver,
            connections: &self.connections,
            tls_client: &self.tls_client,
        };
        let body_path = self.queue.body_path(id);
        for (path, indexes) in &groups {
            match path {
                Path::Maildir(template) => {
                    for &i in indexes {
                        results.push((i, self.deliver_local(&env, i, template, None).await, "local".to_string()));
                    }
                }
                Path::Smtp { destination, rule } => {
                    let rule = rule.map(|r| &self.config.transports[r]);
                    let policy = outbound::Policy {
                        tls: rule.and_then(|r| r.tls).unwrap_or(self.config.delivery.tls),
                        max_connections: rule
                            .and_then(|r| r.max_connections)
                            .unwrap_or(self.config.delivery.max_connections_per_destination),
                    };
                    for group in indexes.chunks(RECIPIENTS_PER_TRANSACTION_MAX) {
                        let delivered = outbound::deliver(&out, destination, policy, &body_path, &env, group).await;
                        let tls = if delivered.tls { " tls=yes" } else { "" };
                        let relay = format!("{} conn_use={}{tls}", delivered.relay, delivered.conn_use);
                        results.extend(group.iter().copied().zip(delivered.outcomes).map(|(i, o)| (i, o, relay.clone())));
                    }
                }
                Path::Lmtp { rule } => {
                    let rule = &self.config.transports[*rule];
                    let hop = rule.nexthop.as_deref().unwrap_or_default();
                    let outcomes = match hop.parse::<lmtp::LmtpTarget>() {
                        Ok(target) => {
                            let max = rule.max_connections.unwrap_or(self.config.delivery.max_connections_per_destination);
                            let _turn = self.connections.destination_permit(hop, max).await;
                            let mut outcomes = Vec::with_capacity(indexes.len());
                            for group in indexes.chunks(RECIPIENTS_PER_TRANSACTION_MAX) {
                                outcomes.extend(
                                    lmtp::deliver(
                                        &target,
                                        self.config.helo_name(),
                                        self.config.delivery.connect_timeout.0,
                                        &body_path,
                                        &env,
                                        group,
                                    )
                                    .await,
                                );
                            }
                            outcomes
                        }
                        Err(e) => transient_all(indexes.len(), 4, 3, 5, &e),
                    };
                    let relay = format!("lmtp:{hop}");
                    results.extend(indexes.iter().copied().zip(outcomes).map(|(i, o)| (i, o, relay.clone())));
                }
                Path::Pipe { rule } => {
                    let rule = &self.config.transports[*rule];
                    let outcomes = match pipe::PipeParams::from_rule(&rule.command, rule.user.as_deref(), rule.group.as_deref(), rule.timeout.0) {
                        Ok(params) => {
                            let max = rule.max_connections.unwrap_or(self.config.delivery.max_connections_per_destination);
                            let _turn = self.connections.destination_permit(&rule.command[0], max).await;
                            pipe::deliver(&params, &body_path, &env, indexes).await
                        }
                        Err(e) => transient_all(indexes.len(), 4, 3, 5, &e),
                    };
                    let relay = format!("pipe:{}", rule.command[0]);
                    results.extend(indexes.iter().copied().zip(outcomes).map(|(i, o)| (i, o, relay.clone())));
                }
            }
        }
        results
    }

    /// Applies outcomes to `env` and logs them. Early: only deliveries
    /// count (a refusal is left pending, for the normal attempt to meet
    /// again and report). Returns the number delivered.
    fn record(&self, env: &mut Envelope, results: Vec<(usize, RcptOutcome, String)>, early: bool) -> usize {
        let mut delivered = 0;
        for (i, outcome, relay) in results {
            if early && !matches!(outcome, RcptOutcome::Delivered(_)) {
                continue;
            }
            let r = &mut env.recipients[i];
            let (state, reply) = match &outcome {
                RcptOutcome::Delivered(reply) => (RcptState::Delivered, reply.summary()),
                RcptOutcome::Transient(reply) => (RcptState::Pending, reply.summary()),
                RcptOutcome::Permanent(reply) => (RcptState::Failed, reply.summary()),
            };
            r.state = state;
            r.last_reply = reply;
            let status = match state {
                RcptState::Delivered => {
                    delivered += 1;
                    if early { "delivered_early" } else { "delivered" }
                }
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
                    ("relay", &relay),
                    ("status", &status),
                    ("attempt", &env.attempt_count),
                    ("reply", &r.last_reply),
                ],
            );
        }
        delivered
    }

    /// How a recipient is delivered: the first `[[transport]]` rule for
    /// its domain, else Maildir for a local domain, else SMTP to the
    /// smarthost or the domain's MX hosts.
    fn path_of(&self, address: &str) -> Path {
        let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        let found = self.config.transports.iter().position(|rule| !domain.is_empty() && rule.matches(domain));
        if let Some(index) = found {
            let rule = &self.config.transports[index];
            return match rule.transport {
                TransportKind::Smtp => {
                    let destination = match &rule.nexthop {
                        Some(hop) => Destination::Smarthost(hop.clone()),
                        None => Destination::Domain(domain.trim_end_matches('.').to_ascii_lowercase()),
                    };
                    Path::Smtp { destination, rule: Some(index) }
                }
                TransportKind::Lmtp => Path::Lmtp { rule: index },
                TransportKind::Pipe => Path::Pipe { rule: index },
                TransportKind::Maildir => {
                    Path::Maildir(rule.maildir.clone().unwrap_or_else(|| self.config.local.maildir.clone()))
                }
            };
        }
        match route_of_text(&self.config, address) {
            Route::Local => Path::Maildir(self.config.local.maildir.clone()),
            Route::Relay => Path::Smtp { destination: Destination::of(&self.config, address), rule: None },
        }
    }

    /// Delivers recipient `index` where the routers send it: each local
    /// final address to its Maildir, each SMTP delivery to its next hop
    /// (or the smarthost, or the MX hosts of the final address's domain).
    /// All must succeed for the recipient to count as delivered.
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
        let out = Outbound {
            config: &self.config,
            resolver: &self.resolver,
            connections: &self.connections,
            tls_client: &self.tls_client,
        };
        let policy = outbound::Policy {
            tls: self.config.delivery.tls,
            max_connections: self.config.delivery.max_connections_per_destination,
        };
        let mut replies = Vec::new();
        for delivery in deliveries {
            let outcome = match (delivery.transport.as_str(), &delivery.next_hop) {
                ("local", _) => {
                    self.deliver_local(env, index, &self.config.local.maildir, Some(&delivery.address)).await
                }
                ("pipe" | "file", _) => RcptOutcome::Permanent(Reply::new(
                    550,
                    Enhanced(5, 3, 5),
                    format!("{} deliveries from aliases are not supported; use a [[transport]] pipe rule", delivery.transport),
                )),
                (_, hop) => {
                    let destination = match hop {
                        Some(hop) => Destination::Smarthost(crate::route::socket_host(hop)),
                        None => Destination::of(&self.config, &delivery.address),
                    };
                    let mut one = env.clone();
                    one.recipients[index].address = delivery.address.clone();
                    let body = self.queue.body_path(&env.id);
                    let delivered = outbound::deliver(&out, &destination, policy, &body, &one, &[index]).await;
                    delivered.outcomes.into_iter().next().unwrap_or_else(|| {
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

    async fn deliver_local(&self, env: &Envelope, index: usize, template: &str, routed: Option<&str>) -> RcptOutcome {
        use crate::smtp::reply::{Enhanced, Reply};
        let address = routed.map_or_else(|| env.recipients[index].address.clone(), str::to_string);
        let user = address.rsplit_once('@').map(|(l, _)| l).unwrap_or(&address).to_string();
        let path = match maildir::expand_template(template, &user) {
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

    /// Records the attempt. While recipients are pending, the message goes
    /// to the retry runners with every recipient's state. Once none is, one
    /// bounce lists every failed recipient (unless the sender is `<>`) and
    /// the message is removed; if the bounce cannot be queued, the message
    /// stays (states kept) and the bounce is tried again later.
    async fn finish(&self, mut env: Envelope) {
        let now_ms = crate::queue::unix_now_ms();
        let age = Duration::from_millis(now_ms.saturating_sub(env.arrival_unix_ms));
        let mut reason = CompletionReason::Done;
        if env.pending_count() > 0 && age >= self.config.queue.max_age.0 {
            reason = CompletionReason::Expired;
            for r in env.recipients.iter_mut() {
                if r.state == RcptState::Pending {
                    r.state = RcptState::Failed;
                    r.last_reply = format!("4.4.7 message expired in queue; last: {}", r.last_reply);
                }
            }
        }
        let mut bounce_failed = false;
        if env.pending_count() == 0 && !env.is_null_sender() {
            let failed: Vec<usize> =
                (0..env.recipients.len()).filter(|&i| env.recipients[i].state == RcptState::Failed).collect();
            if !failed.is_empty() {
                if let Err(e) = self.bounce(&env, &failed).await {
                    log::event("bounce_error", &[("id", &env.id), ("error", &e)]);
                    bounce_failed = true;
                }
            }
        }
        let recorded = if env.pending_count() == 0 && !bounce_failed {
            self.queue.complete(&env, reason).map(|()| "removed")
        } else {
            let delay = if bounce_failed {
                QUEUE_ERROR_RETRY
            } else {
                self.queue.retry_delay(env.attempt_count)
            };
            env.next_retry_unix_ms = now_ms + delay.as_millis() as u64;
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
            body_binary: false,
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
