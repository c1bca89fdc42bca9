//! The hand-off from the queue to delivery: the one way a message reaches
//! a delivery attempt, whether it is fresh (just committed), recovered at
//! start-up, or due again (handed over by a retry runner).
//!
//! Place in the pipeline: the queue fills it, delivery drains it with
//! [`Queue::take`]; delivery never learns about sessions, and ingress never
//! calls delivery. A message in the hand-off or with delivery is *in
//! flight* in the index, so no runner hands it over twice; delivery ends
//! that with [`Queue::defer`], [`Queue::complete`] or [`Queue::release`].
//!
//! Bounds: at most `envelopes_max` whole envelopes wait here. A fresh
//! message beyond that waits as its log location only (a few bytes; its
//! envelope is read back from the log when delivery takes it), and so does
//! every message recovered at start-up, so a spool of a million live
//! messages costs a million locations, not a million envelopes. The retry
//! runners wait for room instead: they read from the log anyway.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use queue_format::RecordBody;

use super::envelope::Envelope;
use super::log::Location;
use super::storage::{SegmentFile, Storage};
use super::{log_slot, Queue};

/// A message waiting for delivery.
pub(super) enum Ready {
    /// Its envelope, in memory (boxed: most entries of a long hand-off are
    /// locations, which should not be sized by an envelope).
    Envelope(Box<Envelope>),
    /// Where its newest envelope is in the log.
    At(Location),
}

const _: () = assert!(std::mem::size_of::<Ready>() <= 32, "a waiting location stays small");

pub(super) struct Handoff {
    ready: RefCell<VecDeque<Ready>>,
    /// How many entries of `ready` are whole envelopes.
    envelopes_count: Cell<usize>,
    envelopes_max: usize,
    /// Wakes delivery when something is ready.
    ready_event: event_listener::Event,
    /// Wakes runners when there is room for an envelope.
    room_event: event_listener::Event,
}

impl Handoff {
    pub(super) fn new(envelopes_max: usize) -> Handoff {
        assert!(envelopes_max > 0);
        Handoff {
            ready: RefCell::new(VecDeque::new()),
            envelopes_count: Cell::new(0),
            envelopes_max,
            ready_event: event_listener::Event::new(),
            room_event: event_listener::Event::new(),
        }
    }

    fn has_room(&self) -> bool {
        self.envelopes_count.get() < self.envelopes_max
    }

    fn push(&self, ready: Ready) {
        if matches!(ready, Ready::Envelope(_)) {
            assert!(self.has_room(), "envelopes in the hand-off above its bound");
            self.envelopes_count.set(self.envelopes_count.get() + 1);
        }
        self.ready.borrow_mut().push_back(ready);
        self.ready_event.notify(1);
    }

    fn pop(&self) -> Option<Ready> {
        let ready = self.ready.borrow_mut().pop_front()?;
        if matches!(ready, Ready::Envelope(_)) {
            let count = self.envelopes_count.get().checked_sub(1).expect("envelope count below zero");
            self.envelopes_count.set(count);
            self.room_event.notify(1);
        }
        Some(ready)
    }

    /// The location at the front, if the front is one.
    fn front_location(&self) -> Option<Location> {
        match self.ready.borrow().front() {
            Some(Ready::At(location)) => Some(*location),
            _ => None,
        }
    }

    /// Messages waiting (envelopes and locations).
    pub(super) fn len(&self) -> usize {
        self.ready.borrow().len()
    }

    pub(super) fn envelopes_count(&self) -> usize {
        self.envelopes_count.get()
    }

    pub(super) fn wake_all(&self) {
        self.ready_event.notify(usize::MAX);
        self.room_event.notify(usize::MAX);
    }
}

impl<S: Storage + 'static> Queue<S> {
    /// A fresh message is durable: to delivery, as its envelope while there
    /// is room, else as its location.
    pub(super) fn hand_fresh(&self, env: Envelope, location: Location) {
        if self.handoff.has_room() {
            self.handoff.push(Ready::Envelope(Box::new(env)));
        } else {
            self.handoff.push(Ready::At(location));
        }
    }

    /// A recovered message, by location.
    pub(super) fn hand_recovered(&self, location: Location) {
        self.handoff.push(Ready::At(location));
    }

    /// A runner hands over a due message, waiting for room. Returns false
    /// when the queue closed first (the message stays live in the log and
    /// is not in flight any more).
    pub(super) async fn hand_due(&self, env: Envelope) -> bool {
        loop {
            let listener = self.handoff.room_event.listen();
            if self.closed.get() {
                self.release(&env.id);
                return false;
            }
            if self.handoff.has_room() {
                self.handoff.push(Ready::Envelope(Box::new(env)));
                return true;
            }
            listener.await;
        }
    }

    /// The next message for a delivery attempt; None once the queue is
    /// closed. A message given by location is read back from its log
    /// before it leaves the hand-off, so this future may be dropped at any
    /// await without losing a message (delivery is the hand-off's only
    /// taker: the front stays where it is while it is read).
    pub async fn take(&self) -> Option<Envelope> {
        loop {
            let listener = self.handoff.ready_event.listen();
            if self.closed.get() {
                return None;
            }
            let Some(location) = self.handoff.front_location() else {
                match self.handoff.pop() {
                    Some(Ready::Envelope(env)) => {
                        if self.take_current(&env, None) {
                            return Some(*env);
                        }
                        continue;
                    }
                    Some(Ready::At(_)) => unreachable!("a location at the front is read first"),
                    None => {
                        listener.await;
                        continue;
                    }
                }
            };
            let read = self.read_ready(location).await;
            let popped = self.handoff.pop();
            assert!(
                matches!(popped, Some(Ready::At(front)) if front == location),
                "the hand-off's front moved while it was read: a second taker"
            );
            if let Some(env) = read {
                if self.take_current(&env, Some(location)) {
                    return Some(env);
                }
            }
        }
    }

    /// Whether a message leaving the hand-off is still to be attempted, and
    /// if so marks it taken. Skipped: a message deleted or bounced since it
    /// was handed over, held, already taken (a second copy: flushed while a
    /// runner handed it over), or whose newest envelope is no longer the
    /// one handed over (a newer record was written meanwhile).
    fn take_current(&self, env: &Envelope, location: Option<Location>) -> bool {
        let mut index = self.index.borrow_mut();
        let Some(entry) = index.get_mut(&env.queue_id()) else { return false };
        let current = match location {
            Some(location) => entry.location == location,
            None => entry.attempt_count == env.attempt_count,
        };
        if !current || entry.held || entry.attempting {
            return false;
        }
        entry.attempting = true;
        true
    }

    /// A message made due by an administration command (`queue flush`),
    /// by location: it may be past the hand-off's bound on envelopes.
    pub(super) fn hand_flushed(&self, location: Location) {
        self.handoff.push(Ready::At(location));
    }

    /// Everything waiting now, without waiting for more (tests).
    #[cfg(test)]
    pub(crate) async fn take_ready(&self) -> Vec<Envelope> {
        let mut out = Vec::new();
        while let Some(ready) = self.handoff.pop() {
            let (env, location) = match ready {
                Ready::Envelope(env) => (Some(*env), None),
                Ready::At(location) => (self.read_ready(location).await, Some(location)),
            };
            out.extend(env.filter(|env| self.take_current(env, location)));
        }
        out
    }

    /// Messages waiting in the hand-off: (all, as whole envelopes).
    pub fn handoff_counts(&self) -> (usize, usize) {
        (self.handoff.len(), self.handoff.envelopes_count())
    }

    /// Reads the envelope at `location`. A record that cannot be read is
    /// logged and stays live in the log: it is met again at the next start.
    async fn read_ready(&self, location: Location) -> Option<Envelope> {
        match self.read_envelope_at(location).await {
            Ok(env) => Some(env),
            Err(problem) => {
                crate::log::event(
                    "queue_read_error",
                    &[
                        ("shard", &self.shard_index),
                        ("segment", &location.segment_sequence),
                        ("offset", &location.offset),
                        ("error", &problem),
                    ],
                );
                None
            }
        }
    }

    /// The envelope record at `location`, decoded and checked.
    pub(super) async fn read_envelope_at(&self, location: Location) -> Result<Envelope, String> {
        let slot = log_slot(location.log);
        let file = {
            let log = self.logs[slot].borrow();
            let segment = log.segments.get(&location.segment_sequence).ok_or("segment is gone")?;
            segment.file.clone()
        };
        let bytes =
            file.read_at(location.offset as u64, location.size_bytes as usize).await.map_err(|e| e.to_string())?;
        // The frame's CRC covers the record; the location says which one it
        // is, so the sequence number needs no separate check here.
        let (record, _) = queue_format::decode(&bytes).map_err(|e| format!("{e:?}"))?;
        match &record.body {
            RecordBody::Envelope(env) | RecordBody::ReplacementEnvelope(env) => Envelope::from_format(env),
            _ => Err("not an envelope record".to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;
    use std::time::Duration;

    use queue_format::{CompletionReason, LogKind};

    use crate::clock::Clock;
    use crate::queue::storage::DiskStorage;
    use crate::queue::{Body, Envelope, Queue, QueueParams};

    fn run(test: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> + Send + 'static) {
        glommio::LocalExecutorBuilder::default().spawn(move || test()).unwrap().join().unwrap();
    }

    fn tempdir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ringpost-handoff-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn params(handoff_envelopes_max: usize) -> QueueParams {
        QueueParams {
            inline_max_bytes: 2048,
            segment_size_bytes: 256 * 1024,
            commit_delay: Duration::ZERO,
            retry_lags: vec![Duration::from_secs(600), Duration::from_secs(3600)],
            handoff_envelopes_max,
            body_sync: crate::queue::BodySyncMode::Each,
            body_store: crate::queue::BodyStore::Log,
        }
    }

    async fn open(dir: &std::path::Path, params: QueueParams, clock: Clock) -> Rc<Queue> {
        let storage = DiskStorage::open(dir).await.unwrap();
        let queue = Queue::open_with(storage, 0, params, clock).await.unwrap();
        for kind in [LogKind::Head, LogKind::Retry] {
            glommio::spawn_local(queue.clone().run_committer(kind)).detach();
        }
        for runner in 0..queue.params().retry_lags.len() {
            glommio::spawn_local(queue.clone().run_runner(runner)).detach();
        }
        queue
    }

    async fn accept(queue: &Queue, now_ms: u64) -> String {
        let mut writer = queue.create().await.unwrap();
        writer.write(b"Subject: t\r\n\r\nbody\r\n").await.unwrap();
        let id = writer.id().to_string();
        let env = crate::testing::envelope(&id, &["r@example.net"], now_ms);
        writer.commit(queue, env).await.unwrap();
        id
    }

    /// Whether `take` has a whole envelope now, without waiting for more.
    async fn take_now(queue: &Queue) -> Option<Envelope> {
        assert!(queue.handoff_counts().0 == queue.handoff_counts().1, "only envelopes, no locations");
        futures_lite::future::poll_once(queue.take()).await.flatten()
    }

    #[test]
    fn fresh_messages_past_the_bound_wait_as_locations_and_come_back_whole_in_order() {
        run(|| {
            Box::pin(async {
                let dir = tempdir("bound");
                let (clock, _) = Clock::manual(1_800_000_000_000);
                let queue = open(&dir, params(3), clock).await;
                let mut ids = Vec::new();
                for _ in 0..10 {
                    ids.push(accept(&queue, 1_800_000_000_000).await);
                }
                assert_eq!(queue.handoff_counts(), (10, 3), "3 envelopes in memory, 7 locations");
                let mut taken = Vec::new();
                for _ in 0..10 {
                    let env = queue.take().await.unwrap();
                    assert_eq!(env.recipients[0].address.to_string(), "r@example.net");
                    assert_eq!(env.body, Body::Inline(std::sync::Arc::from(&b"Subject: t\r\n\r\nbody\r\n"[..])));
                    taken.push(env.id);
                }
                assert_eq!(taken, ids);
                assert_eq!(queue.handoff_counts(), (0, 0));
                assert!(queue.entry(&ids[0]).unwrap().in_flight, "with delivery until it records the attempt");
            })
        });
    }

    #[test]
    fn a_take_dropped_while_it_reads_loses_nothing() {
        run(|| {
            Box::pin(async {
                let dir = tempdir("cancel");
                let (clock, _) = Clock::manual(1_800_000_000_000);
                let queue = open(&dir, params(4), clock.clone()).await;
                let id = accept(&queue, 1_800_000_000_000).await;
                queue.close();
                drop(queue);
                let queue = open(&dir, params(4), clock).await;
                assert_eq!(queue.handoff_counts(), (1, 0), "recovered by location");
                // The first poll starts the read from the log and is pending.
                assert!(futures_lite::future::poll_once(queue.take()).await.is_none());
                assert_eq!(queue.handoff_counts(), (1, 0), "still there after the take was dropped");
                assert_eq!(queue.take().await.unwrap().id, id);
                assert_eq!(queue.handoff_counts(), (0, 0));
            })
        });
    }

    #[test]
    fn recovery_hands_over_locations_only() {
        run(|| {
            Box::pin(async {
                let dir = tempdir("recover");
                let (clock, _) = Clock::manual(1_800_000_000_000);
                let queue = open(&dir, params(4), clock.clone()).await;
                for _ in 0..50 {
                    accept(&queue, 1_800_000_000_000).await;
                }
                queue.close();
                drop(queue);
                let queue = open(&dir, params(4), clock).await;
                assert_eq!(queue.handoff_counts(), (50, 0), "50 recovered, no envelope held in memory");
                let mut count = 0;
                while queue.handoff_counts().0 > 0 {
                    let env = queue.take().await.unwrap();
                    assert_eq!(env.attempt_count, 0);
                    count += 1;
                }
                assert_eq!(count, 50);
            })
        });
    }

    #[test]
    fn a_deferred_message_comes_back_when_the_clock_reaches_its_lag_and_not_before() {
        run(|| {
            Box::pin(async {
                let dir = tempdir("clock");
                let start_ms = 1_800_000_000_000;
                let (clock, manual) = Clock::manual(start_ms);
                let queue = open(&dir, params(4), clock).await;
                accept(&queue, start_ms).await;
                let mut env = queue.take().await.unwrap();
                env.attempt_count = 1;
                env.next_retry_unix_ms = start_ms + queue.retry_delay(1).as_millis() as u64;
                queue.defer(&env).await.unwrap();
                assert!(!queue.entry(&env.id).unwrap().in_flight, "deferred: the runners have it");
                for _ in 0..10 {
                    glommio::executor().yield_task_queue_now().await;
                }
                manual.advance(Duration::from_secs(599));
                for _ in 0..10 {
                    glommio::executor().yield_task_queue_now().await;
                }
                assert!(take_now(&queue).await.is_none(), "handed back before its lag");
                manual.advance(Duration::from_secs(1));
                let back = queue.take().await.unwrap();
                assert_eq!((back.id.as_str(), back.attempt_count), (env.id.as_str(), 1));
                queue.complete(&back, CompletionReason::Done).unwrap();
            })
        });
    }
}
