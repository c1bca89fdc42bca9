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
    /// Its envelope, in memory.
    Envelope(Envelope),
    /// Where its newest envelope is in the log.
    At(Location),
}

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
            let count = self
                .envelopes_count
                .get()
                .checked_sub(1)
                .expect("envelope count below zero");
            self.envelopes_count.set(count);
            self.room_event.notify(1);
        }
        Some(ready)
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
            self.handoff.push(Ready::Envelope(env));
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
                self.handoff.push(Ready::Envelope(env));
                return true;
            }
            listener.await;
        }
    }

    /// The next message for a delivery attempt; None once the queue is
    /// closed. A message given by location is read back from its log.
    pub async fn take(&self) -> Option<Envelope> {
        loop {
            let listener = self.handoff.ready_event.listen();
            if self.closed.get() {
                return None;
            }
            match self.handoff.pop() {
                Some(Ready::Envelope(env)) => return Some(env),
                Some(Ready::At(location)) => {
                    if let Some(env) = self.read_ready(location).await {
                        return Some(env);
                    }
                }
                None => listener.await,
            }
        }
    }

    /// Everything waiting now, without waiting for more (tests).
    #[cfg(test)]
    pub(crate) async fn take_ready(&self) -> Vec<Envelope> {
        let mut out = Vec::new();
        while let Some(ready) = self.handoff.pop() {
            match ready {
                Ready::Envelope(env) => out.push(env),
                Ready::At(location) => out.extend(self.read_ready(location).await),
            }
        }
        out
    }

    /// Messages waiting in the hand-off: (all, as whole envelopes).
    pub fn handoff_counts(&self) -> (usize, usize) {
        (self.handoff.len(), self.handoff.envelopes_count())
    }

    /// Reads the envelope at `location`. A record that cannot be read is
    /// logged and left live in the log, out of flight: it is met again at
    /// the next start.
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
            let segment = log
                .segments
                .get(&location.segment_sequence)
                .ok_or("segment is gone")?;
            segment.file.clone()
        };
        let bytes = file
            .read_at(location.offset as u64, location.size_bytes as usize)
            .await
            .map_err(|e| e.to_string())?;
        // The frame's CRC covers the record; the location says which one it
        // is, so the sequence number needs no separate check here.
        let (record, _) = queue_format::decode(&bytes).map_err(|e| format!("{e:?}"))?;
        match &record.body {
            RecordBody::Envelope(env) | RecordBody::ReplacementEnvelope(env) => {
                Envelope::from_format(env)
            }
            _ => Err("not an envelope record".to_string()),
        }
    }
}
