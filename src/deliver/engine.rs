//! The delivery engine of one shard: takes the messages the queue hands
//! over (fresh, recovered, or due again), attempts each with a permit
//! (through the shard's [`Deliverer`]), records per-recipient results in
//! the queue — a replacement envelope for the retry runners while
//! recipients are pending, a completion once none is — and sends the
//! message's delivery status notifications (RFC 3464, never to `<>`), each
//! only to recipients whose `NOTIFY` (RFC 3461) asks for it: one bounce
//! once no recipient is pending any more, listing every recipient that
//! failed permanently (NOTIFY without FAILURE, or NEVER: none); a success
//! report after an attempt for recipients delivered with NOTIFY=SUCCESS
//! (`delivered` into a mailbox, `relayed` to a next hop without DSN; a
//! next hop offering DSN got the parameters and reports itself); and one
//! delay warning per message once it has been pending
//! `queue.delay_warning_after`, recorded in its envelope (DELAY_WARNED) so
//! that it is sent once, also across restarts.
//!
//! Place in the pipeline: after the queue, and only after it: messages
//! come from [`Queue::take`], never from ingress. Runs in the shard's
//! low-share task queue; at most `delivery.max_concurrent_per_shard`
//! attempts at once, and it takes a message from the queue only when it
//! has a permit for it, so what delivery holds in memory is bounded by
//! the permits.
//!
//! With `delivery.hold_all` the scheduler takes nothing: messages are
//! accepted and stay queued. The engine also serves the queue commands
//! the control socket sends its shard (`serve_admin`): the queue does
//! hold, release, delete and flush itself (`crate::queue::admin`), the
//! engine adds bounce (it builds the DSN) and requeue (it owns the
//! outbound connections).

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::sync::Semaphore;
use queue_format::CompletionReason;

use crate::clock::Clock;
use crate::config::Config;
use crate::control::{AdminOp, AdminRequest, AdminTarget};
use crate::deliver::attempt::{self, Attempted, Deliverer, Reached};
use crate::deliver::dsn;
use crate::log;
use crate::queue::admin::Done;
use crate::queue::{Envelope, Queue, RcptState};
use crate::scan::replicate::{self, Held, Hold, Replicator};
use crate::shard::{Phase, Shard};
use crate::smtp::address::ReversePath;
use crate::smtp::client::RcptOutcome;
use crate::smtp::dsn::{Notify, Ret};

/// Original header bytes attached to a bounce at most.
const BOUNCE_HEADERS_BYTES_MAX: usize = 64 * 1024;
/// Wait before trying again to record an attempt the queue could not take.
const QUEUE_ERROR_RETRY: Duration = Duration::from_secs(10);
/// How often idle outbound connections are looked at.
const CONNECTION_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Errors listed in the reply to a queue command on every message.
const ADMIN_ERRORS_LISTED: usize = 20;
/// Messages a queue command on every message acts on at once.
const ADMIN_CONCURRENT: usize = 64;

pub struct Delivery {
    /// Replaced by a reload ([`Delivery::set_config`]).
    config: std::cell::RefCell<Arc<Config>>,
    queue: Rc<Queue>,
    deliverer: Rc<Deliverer>,
    clock: Clock,
    permits: Rc<Semaphore>,
    attempts_active: Cell<usize>,
    idle: event_listener::Event,
    /// The replicas this node holds for its peer, and when it last spoke.
    held: Arc<Held>,
    /// This node's replication stage, told of every message finished here.
    replicator: Option<Rc<Replicator>>,
}

impl Delivery {
    pub fn new(config: Arc<Config>, queue: Rc<Queue>, deliverer: Rc<Deliverer>) -> Delivery {
        let permits = Rc::new(Semaphore::new(config.delivery.max_concurrent_per_shard as u64));
        let clock = queue.clock().clone();
        Delivery {
            config: std::cell::RefCell::new(config),
            queue,
            deliverer,
            clock,
            permits,
            attempts_active: Cell::new(0),
            idle: event_listener::Event::new(),
            held: Held::new(1, 0),
            replicator: None,
        }
    }

    /// Replication: the replicas held here (shared by the node's shards),
    /// and this shard's replication stage, if the node replicates.
    pub fn with_replication(mut self, held: Arc<Held>, replicator: Option<Rc<Replicator>>) -> Delivery {
        self.held = held;
        self.replicator = replicator;
        self
    }

    pub fn deliverer(&self) -> &Rc<Deliverer> {
        &self.deliverer
    }

    /// A reload's configuration, for delivery and its attempts from now on
    /// (`delivery.hold_all` and `delivery.max_concurrent_per_shard` are
    /// read when the shard starts).
    pub fn set_config(&self, config: Arc<Config>) {
        self.deliverer.set_config(config.clone());
        *self.config.borrow_mut() = config;
    }

    fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// Attempts in progress.
    pub fn attempts_active(&self) -> usize {
        self.attempts_active.get()
    }

    /// Closes idle outbound connections that have waited too long, until
    /// the shard closes; then closes them all.
    pub async fn sweep_connections(self: Rc<Self>, shard: Rc<Shard>) {
        let connections = self.deliverer.connections();
        loop {
            if shard.phase() == Phase::Closing {
                connections.close_all().await;
                return;
            }
            let phase_changed = shard.phase_listener();
            futures_lite::future::or(phase_changed, async {
                glommio::timer::sleep(CONNECTION_SWEEP_INTERVAL).await;
            })
            .await;
            connections.sweep().await;
        }
    }

    /// Closes every idle outbound connection (QUIT, then close).
    pub async fn close_connections(&self) {
        self.deliverer.connections().close_all().await;
    }

    /// The scheduler: with a permit in hand, takes the next message from
    /// the queue and starts its attempt; until the shard closes.
    pub async fn run(self: Rc<Self>, shard: Rc<Shard>) {
        if self.config().delivery.hold_all {
            // Accept, deliver nothing: every message stays queued (the
            // hand-off keeps what it holds; the rest stays in the log).
            log::event("hold_all", &[("shard", &self.deliverer.shard_index())]);
            loop {
                let listener = shard.phase_listener();
                if shard.phase() == Phase::Closing {
                    return;
                }
                listener.await;
            }
        }
        loop {
            if shard.phase() == Phase::Closing {
                return;
            }
            let permit = match self.permits.clone().acquire_static_permit(1).await {
                Ok(p) => p,
                Err(_) => return,
            };
            let take = async { Some(self.queue.take().await) };
            // Only the shard's closing stops the wait for a message: while
            // the shard drains, delivery goes on.
            let closing = async {
                loop {
                    let listener = shard.phase_listener();
                    if shard.phase() == Phase::Closing {
                        return None;
                    }
                    listener.await;
                }
            };
            let env = match futures_lite::future::or(take, closing).await {
                None => return,       // the shard is closing
                Some(None) => return, // the queue closed
                Some(Some(env)) => env,
            };
            let this = self.clone();
            let count = this.attempts_active.get().checked_add(1).expect("attempt count overflow");
            this.attempts_active.set(count);
            // The attempt's future (about 11 KiB: every transport's state)
            // is boxed once here; spawned inline it would be copied four
            // times on its way into the task (measured with callgrind).
            let attempt = Box::pin(this.clone().attempt_owned(env));
            let started = glommio::spawn_local_into(
                async move {
                    attempt.await;
                    drop(permit);
                    let count = this.attempts_active.get().checked_sub(1).expect("attempt count below zero");
                    this.attempts_active.set(count);
                    this.idle.notify(usize::MAX);
                },
                shard.tq_delivery,
            );
            match started {
                Ok(task) => {
                    task.detach();
                }
                Err(e) => {
                    log::event("spawn_error", &[("error", &e)]);
                    let count = self.attempts_active.get().checked_sub(1).expect("attempt count below zero");
                    self.attempts_active.set(count);
                }
            }
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
    /// [`Delivery::attempt`] owning its delivery, to be boxed before it is spawned.
    async fn attempt_owned(self: Rc<Self>, env: Envelope) {
        self.attempt(env).await
    }

    async fn attempt(&self, mut env: Envelope) {
        if env.replica_of.is_some() && self.hold_replica(&mut env).await {
            return;
        }
        // The peer took this message over while this node was away, and
        // delivers it: it is not delivered from here as well.
        if self.replicator.as_ref().is_some_and(|r| r.taken_by_peer(&env.id)) {
            log::event("removed_taken_by_peer", &[("id", &env.id)]);
            self.complete_untried(&env, CompletionReason::Removed);
            return;
        }
        env.attempt_count = env.attempt_count.checked_add(1).unwrap_or(u16::MAX);
        crate::metrics::DELIVERY_ATTEMPTS.inc();
        crate::metrics::DELIVERY_ACTIVE.inc();
        let started = Instant::now();
        let results = self.deliverer.deliver_pending(&env).await;
        crate::metrics::DELIVERY_LATENCY.since(started);
        crate::metrics::DELIVERY_ACTIVE.dec();
        let successes = success_reports(&env, &results);
        attempt::record(self.deliverer.shard_index(), &mut env, results, false);
        log::written().await;
        if !successes.is_empty() {
            // A success report lost to a queue error is not tried again:
            // the delivery it tells of is done either way.
            let recipients = successes.iter().map(|&(i, action)| report_line(&env, i, action)).collect();
            if let Err(e) = self.report(&env, recipients, "success").await {
                log::event("dsn_error", &[("id", &env.id), ("kind", &"success"), ("error", &e)]);
            }
        }
        self.finish(env).await;
    }

    /// Removes a message delivery did not try; if the queue cannot take
    /// the completion, the message is given back (met again later).
    fn complete_untried(&self, env: &Envelope, reason: CompletionReason) {
        if let Err(e) = self.queue.complete(env, reason) {
            log::event("queue_error", &[("id", &env.id), ("error", &e)]);
            self.queue.release(&env.id);
        }
    }

    /// A replica handed over (fresh, recovered or by a runner): kept
    /// untried while its origin speaks (a replacement envelope due when it
    /// should be looked at again; returns true), or taken over (its flag
    /// cleared, delivered from here on like any message; returns false).
    async fn hold_replica(&self, env: &mut Envelope) -> bool {
        let now_ms = self.clock.unix_ms();
        let heard_ms = self.held.heard_unix_ms();
        let takeover_after = self.config().replicate.takeover_after.0;
        let origin = env.replica_of.clone().unwrap_or_default();
        match replicate::decide(env, now_ms, heard_ms, takeover_after, self.config().queue.max_age.0) {
            Hold::TakeOver => {
                let silent_s = now_ms.saturating_sub(heard_ms) / 1000;
                log::event(
                    "replica_takeover",
                    &[("id", &env.id), ("origin_id", &origin), ("origin_silent_s", &silent_s)],
                );
                self.held.took_over(&origin);
                env.replica_of = None;
                false
            }
            Hold::Forget => {
                log::event("replica_expired", &[("id", &env.id), ("origin_id", &origin)]);
                self.complete_untried(env, CompletionReason::Expired);
                true
            }
            Hold::Until { unix_ms } => {
                env.attempt_count = env.attempt_count.checked_add(1).unwrap_or(u16::MAX);
                env.next_retry_unix_ms = unix_ms;
                if let Err(e) = self.queue.defer(env).await {
                    log::event("queue_error", &[("id", &env.id), ("error", &e)]);
                    self.queue.release(&env.id);
                }
                true
            }
        }
    }

    /// Records the attempt. While recipients are pending, the message goes
    /// to the retry runners with every recipient's state (after its delay
    /// warning, once it is old enough). Once none is, one bounce lists
    /// every failed recipient whose NOTIFY asks for it (unless the sender
    /// is `<>`) and
    /// the message is removed; if the bounce cannot be queued, it is tried
    /// again every `QUEUE_ERROR_RETRY` before the message is removed. When the
    /// queue cannot take the record, it is tried again every
    /// `QUEUE_ERROR_RETRY` while the queue is open; after that the message
    /// is given back (it is live in the log and met again at the next start).
    async fn finish(&self, mut env: Envelope) {
        let now_ms = self.clock.unix_ms();
        let age = Duration::from_millis(now_ms.saturating_sub(env.arrival_unix_ms));
        let mut reason = CompletionReason::Done;
        if env.pending_count() > 0 && age >= self.config().queue.max_age.0 {
            reason = CompletionReason::Expired;
            for r in env.recipients.iter_mut() {
                if r.state == RcptState::Pending {
                    r.state = RcptState::Failed;
                    r.last_reply = format!("4.4.7 message expired in queue; last: {}", r.last_reply);
                }
            }
        }
        if env.pending_count() > 0 {
            self.warn_delay(&mut env, age).await;
        }
        if env.pending_count() == 0 && !env.is_null_sender() {
            let failed = failure_reported(&env);
            if !failed.is_empty() {
                // Nothing is pending, so no replacement envelope can hold
                // the message meanwhile (SPEC section 6.1: a replacement
                // has a pending recipient): the bounce is tried again
                // here while the queue is open. Given back when it
                // closes, the message's newest record is still live in
                // the log and is attempted again at the next start.
                while let Err(e) = self.bounce(&env, &failed).await {
                    log::event("bounce_error", &[("id", &env.id), ("error", &e)]);
                    if self.queue.is_closed() {
                        self.queue.release(&env.id);
                        return;
                    }
                    self.clock.sleep(QUEUE_ERROR_RETRY).await;
                }
            }
        }
        loop {
            let now_ms = self.clock.unix_ms();
            let recorded = if env.pending_count() == 0 {
                self.queue.complete(&env, reason).map(|()| "removed")
            } else {
                let delay = self.queue.retry_delay(env.attempt_count);
                env.next_retry_unix_ms = now_ms + delay.as_millis() as u64;
                self.queue.defer(&env).await.map(|()| "deferred")
            };
            match recorded {
                Ok(what) => {
                    if what == "removed" {
                        log::defer("removed", &[("id", &env.id)]);
                        log::written().await;
                        if let Some(replicator) = &self.replicator {
                            replicator.note_done(&env.id);
                        }
                    }
                    return;
                }
                Err(e) => {
                    log::event("queue_error", &[("id", &env.id), ("error", &e)]);
                    if self.queue.is_closed() {
                        self.queue.release(&env.id);
                        return;
                    }
                    self.clock.sleep(QUEUE_ERROR_RETRY).await;
                }
            }
        }
    }

    /// Serves the queue commands the control socket sends this shard (see
    /// `crate::control`), one at a time, until every sender is gone.
    pub async fn serve_admin(self: Rc<Self>, mut inbox: futures_channel::mpsc::Receiver<AdminRequest>) {
        use futures_lite::StreamExt;
        while let Some(request) = inbox.next().await {
            let reply = match &request.target {
                AdminTarget::One(id) => self.admin_one(request.op, id).await.map(|done| format!("{id} {done}\n")),
                AdminTarget::All => Ok(self.admin_all(request.op).await),
            };
            // The control thread may have stopped waiting: nothing to do.
            let _ = request.reply.try_send(reply);
        }
    }

    async fn admin_one(&self, op: AdminOp, id: &str) -> Result<String, String> {
        let queue = &self.queue;
        let done = match op {
            AdminOp::Flush => queue.flush(id).map(Done::text),
            AdminOp::Hold => queue.hold(id).await.map(Done::text),
            AdminOp::Release => queue.unhold(id).await.map(Done::text),
            AdminOp::Delete => queue.delete(id).await.map(Done::text),
            AdminOp::Bounce => return self.bounce_now(id).await.map(|()| "bounced".to_string()),
            AdminOp::Requeue => {
                // Routing is looked up again at every attempt; what an
                // attempt may reuse is an idle connection, closed here.
                let done = queue.flush(id).map_err(|e| e.to_string())?;
                self.deliverer.connections().close_all().await;
                return Ok(format!("{}; routed again at its attempt", done.text()));
            }
        };
        if let Ok(text) = done {
            log::event("queue_admin", &[("op", &op.name()), ("id", &id), ("result", &text)]);
        }
        done.map(str::to_string).map_err(|e| e.to_string())
    }

    /// One command on every live message of the shard: a count per
    /// outcome, and the errors (at most `ADMIN_ERRORS_LISTED`). Up to
    /// `ADMIN_CONCURRENT` messages at a time, so the records of a hold or
    /// a delete share flushes (group commit) instead of one each.
    async fn admin_all(self: &Rc<Self>, op: AdminOp) -> String {
        let mut counts: Vec<(String, usize)> = Vec::new();
        let mut errors = Vec::new();
        let mut error_count = 0usize;
        let ids = self.queue.live_ids();
        let mut results = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(ADMIN_CONCURRENT) {
            let tasks: Vec<_> = chunk
                .iter()
                .map(|id| {
                    let (this, id) = (self.clone(), id.clone());
                    glommio::spawn_local(async move { this.admin_one(op, &id).await })
                })
                .collect();
            for task in tasks {
                results.push(task.await);
            }
        }
        for result in results {
            match result {
                Ok(text) => match counts.iter_mut().find(|(t, _)| *t == text) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((text, 1)),
                },
                // Gone meanwhile (delivered, say): nothing to report.
                Err(e) if e.starts_with("no message") => {}
                Err(e) => {
                    error_count += 1;
                    if errors.len() < ADMIN_ERRORS_LISTED {
                        errors.push(e);
                    }
                }
            }
        }
        let shard = self.deliverer.shard_index();
        let mut out = String::new();
        if counts.is_empty() && error_count == 0 {
            out.push_str(&format!("shard {shard}: no message\n"));
        }
        for (text, n) in counts {
            out.push_str(&format!("shard {shard}: {n} {text}\n"));
        }
        if error_count > 0 {
            out.push_str(&format!("shard {shard}: {error_count} failed\n"));
        }
        for e in errors {
            out.push_str(&format!("shard {shard}: error: {e}\n"));
        }
        out
    }

    /// `queue bounce`: every pending recipient fails now, and one DSN to
    /// the sender lists every failed recipient, as for a message that
    /// expired (none for the null sender); the message is then removed.
    /// If the DSN cannot be queued, the message is left as it was.
    async fn bounce_now(&self, id: &str) -> Result<(), String> {
        let mut env = self.queue.claim(id).await.map_err(|e| e.to_string())?;
        if env.pending_count() == 0 {
            self.queue.release(id);
            return Err(format!("message {id} has no pending recipient"));
        }
        for r in env.recipients.iter_mut() {
            if r.state == RcptState::Pending {
                r.state = RcptState::Failed;
                r.last_reply = format!("5.0.0 returned to the sender by the postmaster; last: {}", r.last_reply);
            }
        }
        let failed = failure_reported(&env);
        if !env.is_null_sender() && !failed.is_empty() {
            if let Err(e) = self.bounce(&env, &failed).await {
                log::event("bounce_error", &[("id", &env.id), ("error", &e)]);
                self.queue.release(id);
                return Err(format!("message {id}: the bounce could not be queued: {e}"));
            }
        }
        if let Err(e) = self.queue.complete(&env, CompletionReason::Done) {
            // The bounce is queued; the message is met again (and bounced
            // again) only if this record is never written.
            log::event("queue_error", &[("id", &env.id), ("error", &e)]);
            self.queue.release(id);
            return Err(format!("message {id}: bounced, but its removal could not be recorded: {e}"));
        }
        log::event("bounced_by_admin", &[("id", &env.id), ("recipients", &env.recipients.len())]);
        log::event("removed", &[("id", &env.id)]);
        if let Some(replicator) = &self.replicator {
            replicator.note_done(&env.id);
        }
        Ok(())
    }

    /// Queues one DSN to the sender listing `failed` recipients.
    async fn bounce(&self, env: &Envelope, failed: &[usize]) -> Result<(), crate::queue::QueueError> {
        let recipients = failed.iter().map(|&i| report_line(env, i, dsn::Action::Failed)).collect();
        self.report(env, recipients, "failure").await
    }

    /// The delay warning, once per message: when it has been pending
    /// `queue.delay_warning_after` (not "0s") and not warned before, a DSN
    /// with `Action: delayed` for each pending recipient whose NOTIFY asks
    /// for delays. Once it is queued the envelope says so (DELAY_WARNED,
    /// written with the replacement that follows); if it cannot be
    /// queued, the next attempt tries again.
    async fn warn_delay(&self, env: &mut Envelope, age: Duration) {
        let after = self.config().queue.delay_warning_after.0;
        if env.delay_warned || after.is_zero() || age < after || env.is_null_sender() {
            return;
        }
        let delayed: Vec<usize> = (0..env.recipients.len())
            .filter(|&i| env.recipients[i].state == RcptState::Pending && env.recipients[i].dsn.wants(Notify::DELAY))
            .collect();
        if delayed.is_empty() {
            return;
        }
        let recipients = delayed.iter().map(|&i| report_line(env, i, dsn::Action::Delayed)).collect();
        match self.report(env, recipients, "delay").await {
            Ok(()) => env.delay_warned = true,
            Err(e) => log::event("dsn_error", &[("id", &env.id), ("kind", &"delay"), ("error", &e)]),
        }
    }

    /// Queues one report to the sender about `recipients` (`kind` names it
    /// in the log), with the original headers, or the whole message for a
    /// failure when MAIL FROM said RET=FULL.
    async fn report(
        &self,
        env: &Envelope,
        recipients: Vec<dsn::FailedRecipient>,
        kind: &str,
    ) -> Result<(), crate::queue::QueueError> {
        let ReversePath::Path(original_sender) = &env.sender else {
            unreachable!("no report is made for the null sender");
        };
        debug_assert!(!recipients.is_empty());
        let headers = self.queue.header_block(env, BOUNCE_HEADERS_BYTES_MAX).await;
        let full_wanted = kind == "failure" && env.dsn.ret == Some(Ret::Full);
        let original_message = match full_wanted && !env.body_binary {
            true => self.queue.content_within(env, dsn::FULL_MESSAGE_BYTES_MAX).await,
            false => None,
        };
        let now = self.clock.system_time();
        let input = dsn::BounceInput {
            reporting_mta: self.config().server.hostname.clone(),
            queue_id: env.id.clone(),
            original_sender: original_sender.to_string(),
            arrival: std::time::UNIX_EPOCH + Duration::from_millis(env.arrival_unix_ms),
            now,
            recipients,
            original_headers: headers,
            envelope_id: env.dsn.envid_text(),
            full_refused: full_wanted && original_message.is_none(),
            original_message,
        };
        let message = dsn::build_bounce(&input);
        let mut writer = self.queue.create().await?;
        writer.write(&message).await?;
        let now_ms = self.clock.unix_ms();
        debug_assert_eq!(writer.size_bytes(), message.len() as u64);
        let bounce = Envelope::from_null_sender(
            writer.id().to_string(),
            original_sender.clone(),
            &message,
            env.smtputf8,
            now_ms,
        );
        let bounce_id = bounce.id.clone();
        writer.commit(&self.queue, bounce).await?;
        log::event("bounce", &[("id", &bounce_id), ("original", &env.id), ("to", &env.sender), ("kind", &kind)]);
        Ok(())
    }
}

/// The failed recipients a failure report lists: those whose NOTIFY asks
/// for failures (all, without NOTIFY; none with NEVER).
fn failure_reported(env: &Envelope) -> Vec<usize> {
    (0..env.recipients.len())
        .filter(|&i| env.recipients[i].state == RcptState::Failed && env.recipients[i].dsn.wants(Notify::FAILURE))
        .collect()
}

/// The recipients of this attempt a success report lists, with their
/// action: delivered with NOTIFY=SUCCESS into a mailbox (`delivered`) or
/// to a next hop without DSN (`relayed`). A next hop with DSN reports
/// itself; the null sender gets no report.
fn success_reports(env: &Envelope, results: &[Attempted]) -> Vec<(usize, dsn::Action)> {
    if env.is_null_sender() {
        return Vec::new();
    }
    results
        .iter()
        .filter(|a| matches!(a.outcome, RcptOutcome::Delivered(_)))
        .filter(|a| env.recipients[a.index].dsn.wants(Notify::SUCCESS))
        .filter_map(|a| match a.reached {
            Reached::Mailbox => Some((a.index, dsn::Action::Delivered)),
            Reached::Relayed => Some((a.index, dsn::Action::Relayed)),
            Reached::RelayedWithDsn => None,
        })
        .collect()
}

/// One recipient's lines in a report: its last reply (a local delivery's
/// reply names a file and is left out), the action, its ORCPT.
fn report_line(env: &Envelope, index: usize, action: dsn::Action) -> dsn::FailedRecipient {
    let r = &env.recipients[index];
    let mut line = dsn::FailedRecipient::from_reply_text(&r.address.to_string(), &r.last_reply);
    line.action = action;
    match action {
        dsn::Action::Delivered => {
            line.status = crate::smtp::reply::Enhanced(2, 0, 0);
            line.diagnostic_code = None;
        }
        dsn::Action::Delayed if line.status.0 != 4 => line.status = crate::smtp::reply::Enhanced(4, 0, 0),
        dsn::Action::Relayed if line.status.0 != 2 => line.status = crate::smtp::reply::Enhanced(2, 0, 0),
        _ => {}
    }
    line.original_recipient = r.dsn.orcpt_text();
    line
}

#[cfg(test)]
mod future_sizes {
    use super::*;

    fn bytes<'a, A: 'a, F>(_: fn(&'a Delivery, A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// An attempt's future holds every transport's state; each attempt
    /// allocates one (boxed before it is spawned, so that spawning copies
    /// a pointer, not the state). A bound, so that growth is seen.
    const ATTEMPT_FUTURE_BYTES_MAX: usize = 16 * 1024;

    #[test]
    fn attempt_future_bytes() {
        let attempt_bytes = bytes(Delivery::attempt);
        eprintln!("attempt future: {attempt_bytes} bytes");
        assert!(attempt_bytes <= ATTEMPT_FUTURE_BYTES_MAX, "attempt future: {attempt_bytes} bytes");
    }
}
