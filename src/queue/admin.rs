//! Queue administration on a running shard: hold, release, delete and
//! flush a message, and claim one for a bounce (`ringpost queue hold`,
//! ...; the requests come from the control socket, see
//! `crate::control` and `crate::deliver::engine::Delivery::serve_admin`).
//!
//! Place in the pipeline: inside the queue, beside the runners. Each
//! command acts on one message's index entry and, where the change must
//! survive a restart, writes a record first and changes the index when it
//! is durable:
//!
//! - hold: a ReplacementEnvelope with the HELD flag (SPEC section 6.1), the
//!   message's state otherwise unchanged. Recovery finds it as the newest
//!   envelope and keeps the message held; the runners pass over it.
//! - release: a ReplacementEnvelope without the flag, due now.
//! - delete: a Completion with reason Deleted; no bounce.
//! - flush: no record; the message goes to the hand-off at once.
//!
//! A replacement written here keeps the message's attempt count, except
//! that a message never attempted (count 0, its envelope in the head log)
//! gets 1: a ReplacementEnvelope's count is at least 1, and it must
//! supersede the head-log envelope. Equal counts go to the later record.
//!
//! A held message is written again, unchanged, by the oldest runner each
//! time it passes it (`runner.rs`), so that nothing live stays behind that
//! runner; release, delete and claim wait for such a record to be durable.
//!
//! A message being attempted is not deleted or bounced (the attempt
//! records its own outcome; the command says to try again). Holding one is
//! remembered in memory and made durable by the attempt's replacement,
//! which then carries the flag; if the attempt finishes the message, there
//! is nothing left to hold.

use queue_format::{Completion, CompletionReason, LogKind, QueueId};

use super::envelope::Envelope;
use super::log::Staged;
use super::storage::Storage;
use super::{parse_queue_id, Entry, Queue};

/// How long a command waits for a held message's record being written
/// again by the oldest runner: rounds of `CARRY_WAIT_ROUND`.
const CARRY_WAIT_ROUNDS: usize = 200;
const CARRY_WAIT_ROUND: std::time::Duration = std::time::Duration::from_millis(10);

/// What an administration command did to one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Done {
    Held,
    /// Being attempted now: held once the attempt records its outcome.
    HeldAfterAttempt,
    AlreadyHeld,
    Released,
    NotHeld,
    Deleted,
    Flushed,
    /// Already in the hand-off or being attempted.
    AlreadyDue,
}

impl Done {
    pub fn text(self) -> &'static str {
        match self {
            Done::Held => "held",
            Done::HeldAfterAttempt => "being attempted now; held when the attempt ends",
            Done::AlreadyHeld => "already held",
            Done::Released => "released",
            Done::NotHeld => "not held",
            Done::Deleted => "deleted",
            Done::Flushed => "due now",
            Done::AlreadyDue => "already due or being attempted",
        }
    }
}

/// Why a command could not act on a message.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no message {0} in the queue")]
    Unknown(String),
    #[error("message {0} is being attempted now; try again when the attempt ends")]
    Attempting(String),
    #[error("message {0} is held; release it first")]
    Held(String),
    #[error("message {0} has no pending recipient")]
    NothingPending(String),
    #[error("message {id}: {problem}")]
    Unreadable { id: String, problem: String },
    #[error("message {id}: {error}")]
    Queue { id: String, error: super::QueueError },
}

impl<S: Storage + 'static> Queue<S> {
    fn admin_entry(&self, id: &str) -> Result<(QueueId, Entry), AdminError> {
        let unknown = || AdminError::Unknown(id.to_string());
        let qid = parse_queue_id(id).map_err(|_| unknown())?;
        let entry = self.index.borrow().get(&qid).copied().ok_or_else(unknown)?;
        Ok((qid, entry))
    }

    /// The entry once no runner is writing it again: a held message in
    /// flight and not being attempted is one the oldest runner is carrying
    /// forward (see `runner.rs`), which takes one flush. A command must not
    /// race that record.
    async fn admin_entry_settled(&self, id: &str) -> Result<(QueueId, Entry), AdminError> {
        for _ in 0..CARRY_WAIT_ROUNDS {
            let (qid, entry) = self.admin_entry(id)?;
            if !(entry.held && entry.in_flight && !entry.attempting) {
                return Ok((qid, entry));
            }
            glommio::timer::sleep(CARRY_WAIT_ROUND).await;
        }
        Err(AdminError::Attempting(id.to_string()))
    }

    fn admin_update(&self, qid: &QueueId, update: impl FnOnce(&mut Entry)) {
        if let Some(entry) = self.index.borrow_mut().get_mut(qid) {
            update(entry);
        }
    }

    /// The ids of every live message, in id order (for `--all`).
    pub fn live_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.index.borrow().keys().map(super::id_text).collect();
        ids.sort();
        ids
    }

    /// Holds a message: it is not attempted until released, across
    /// restarts. Returns once the hold is durable.
    pub async fn hold(&self, id: &str) -> Result<Done, AdminError> {
        let (qid, entry) = self.admin_entry(id)?;
        if entry.held {
            return Ok(Done::AlreadyHeld);
        }
        if entry.attempting {
            self.admin_update(&qid, |e| e.held = true);
            return Ok(Done::HeldAfterAttempt);
        }
        // Held at once in memory (a copy in the hand-off is skipped), and
        // in flight while the record is written (no runner hands it over).
        self.admin_update(&qid, |e| {
            e.held = true;
            e.in_flight = true;
        });
        match self.write_held(id, entry, true).await {
            Ok(()) => Ok(Done::Held),
            Err(error) => {
                self.admin_undo(&qid, entry);
                Err(error)
            }
        }
    }

    /// Releases a held message: due now (the first runner hands it over
    /// after its lag; `flush` hands it over at once).
    pub async fn unhold(&self, id: &str) -> Result<Done, AdminError> {
        let (qid, entry) = self.admin_entry_settled(id).await?;
        if !entry.held {
            return Ok(Done::NotHeld);
        }
        if entry.attempting {
            // Held while its attempt runs: not durable yet, forgotten.
            self.admin_update(&qid, |e| e.held = false);
            return Ok(Done::Released);
        }
        self.admin_update(&qid, |e| e.in_flight = true);
        match self.write_held(id, entry, false).await {
            Ok(()) => Ok(Done::Released),
            Err(error) => {
                self.admin_undo(&qid, entry);
                Err(error)
            }
        }
    }

    /// The index entry as it was before a command whose record failed. A
    /// head-log message is given back to the hand-off (no runner reads the
    /// head log); a copy already there is skipped as not current.
    fn admin_undo(&self, qid: &QueueId, before: Entry) {
        let mut before = before;
        if before.location.log == LogKind::Head && !before.attempting {
            before.in_flight = true;
            self.hand_flushed(before.location);
        }
        self.admin_update(qid, |e| *e = before);
    }

    /// Writes the message's envelope again with the HELD flag set or
    /// cleared; the index follows when it is durable.
    async fn write_held(&self, id: &str, entry: Entry, held: bool) -> Result<(), AdminError> {
        let mut env = self
            .read_envelope_at(entry.location)
            .await
            .map_err(|problem| AdminError::Unreadable { id: id.to_string(), problem })?;
        if env.pending_count() == 0 {
            return Err(AdminError::NothingPending(id.to_string()));
        }
        env.held = held;
        env.attempt_count = env.attempt_count.max(1);
        if !held {
            env.next_retry_unix_ms = self.clock.unix_ms();
        }
        self.append_replacement(env).await.map(|_| ()).map_err(|error| AdminError::Queue { id: id.to_string(), error })
    }

    /// Deletes a message without a bounce. Returns once the completion
    /// (reason Deleted) is durable; its body file goes with it.
    pub async fn delete(&self, id: &str) -> Result<Done, AdminError> {
        let (qid, entry) = self.admin_entry_settled(id).await?;
        if entry.attempting {
            return Err(AdminError::Attempting(id.to_string()));
        }
        // Nothing takes it while the completion is written.
        self.admin_update(&qid, |e| {
            e.attempting = true;
            e.in_flight = true;
        });
        let completion = Completion {
            queue_id: qid,
            completion_unix_ms: self.clock.unix_ms(),
            attempt_count: entry.attempt_count,
            reason: CompletionReason::Deleted,
        };
        match self.append(entry.location.log, Staged::Completion(completion)).await {
            Ok(_) => {
                crate::log::event(
                    "deleted",
                    &[("id", &id), ("shard", &self.shard_index), ("attempts", &entry.attempt_count)],
                );
                Ok(Done::Deleted)
            }
            Err(error) => {
                self.admin_undo(&qid, entry);
                Err(AdminError::Queue { id: id.to_string(), error })
            }
        }
    }

    /// Makes a message due now: to the hand-off at once, whatever its
    /// retry time. A held message is not flushed.
    pub fn flush(&self, id: &str) -> Result<Done, AdminError> {
        let (qid, entry) = self.admin_entry(id)?;
        if entry.held {
            return Err(AdminError::Held(id.to_string()));
        }
        if entry.in_flight {
            return Ok(Done::AlreadyDue);
        }
        self.admin_update(&qid, |e| e.in_flight = true);
        self.hand_flushed(entry.location);
        Ok(Done::Flushed)
    }

    /// Takes a message for an immediate bounce (`queue bounce`): its newest
    /// envelope, marked as taken by delivery, so nothing else attempts it.
    /// The caller records the outcome (a completion, or a replacement) or
    /// gives it back with [`Queue::release`].
    pub async fn claim(&self, id: &str) -> Result<Envelope, AdminError> {
        let (qid, entry) = self.admin_entry_settled(id).await?;
        if entry.attempting {
            return Err(AdminError::Attempting(id.to_string()));
        }
        self.admin_update(&qid, |e| {
            e.attempting = true;
            e.in_flight = true;
        });
        match self.read_envelope_at(entry.location).await {
            Ok(env) => Ok(env),
            Err(problem) => {
                self.admin_undo(&qid, entry);
                Err(AdminError::Unreadable { id: id.to_string(), problem })
            }
        }
    }
}
