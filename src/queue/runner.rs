//! The retry runners: each reads the retry log sequentially at a fixed lag
//! behind its write point (`queue.retry_lags`) and hands the messages that
//! are due to delivery. They are also the garbage collector's other half:
//! the oldest runner leaves nothing live behind it, so a retry segment
//! older than the longest lag holds only dead records and is deleted whole.
//!
//! Place in the pipeline: inside the queue, in the shard's delivery task
//! queue; what a runner finds due goes to delivery through the queue's
//! hand-off, waiting while it is full. Fresh messages never pass here (the
//! commit hands them over); a replacement envelope comes back through the
//! runner whose lag equals its retry delay: a message deferred after its
//! n-th attempt waits the n-th lag, so the n-th runner reaches it exactly
//! when it is due.
//!
//! A runner's position is a list of spans: one per retry-log batch, with
//! the time it was written (recovery makes one span per live record, with
//! a write time chosen so the right runner reaches it at its retry time).

use std::rc::Rc;
use std::time::Duration;

use queue_format::{LogExpect, LogKind, LogReader, RecordBody};

use super::envelope::Envelope;
use super::log::{BatchOut, Location};
use super::storage::{SegmentFile, Storage};
use super::Queue;

/// Longest sleep of a runner between looks at the clock.
const RUNNER_SLEEP_MAX: Duration = Duration::from_secs(30);

/// A stretch of the retry log a runner reads in one go.
#[derive(Clone, Copy, Debug)]
pub struct Span {
    pub segment_sequence: u64,
    /// Offset in the segment of the first record (a record boundary).
    pub offset: u64,
    pub size_bytes: u64,
    pub record_sequence_first: u64,
    pub written_unix_ms: u64,
}

impl Span {
    pub(super) fn batch(batch: &BatchOut, written_unix_ms: u64) -> Span {
        let header = if batch.write_offset == 0 { queue_format::SEGMENT_HEADER_SIZE_BYTES as u64 } else { 0 };
        let offset = batch.write_offset + header;
        Span {
            segment_sequence: batch.segment_sequence,
            offset,
            size_bytes: batch.write_offset + batch.bytes.len() as u64 - offset,
            record_sequence_first: batch.record_sequence_first,
            written_unix_ms,
        }
    }

    pub(super) fn recovered(location: Location, record_sequence: u64, written_unix_ms: u64) -> Span {
        Span {
            segment_sequence: location.segment_sequence,
            offset: location.offset as u64,
            size_bytes: location.size_bytes as u64,
            record_sequence_first: record_sequence,
            written_unix_ms,
        }
    }
}

impl<S: Storage + 'static> Queue<S> {
    /// Runner `index` (lag `queue.retry_lags[index]`) until the queue closes.
    pub async fn run_runner(self: Rc<Self>, index: usize) {
        let lags = self.params.retry_lags.clone();
        let lag_ms = lags[index].as_millis() as u64;
        loop {
            if self.closed.get() {
                return;
            }
            let listener = self.spans_event.listen();
            let closed = self.closed_event.listen();
            let cursor = self.runner_cursors.borrow()[index];
            let span = {
                let spans = self.spans.borrow();
                let at = (cursor - self.spans_base.get()) as usize;
                spans.get(at).copied()
            };
            let Some(span) = span else {
                futures_lite::future::or(listener, closed).await;
                continue;
            };
            let now = self.clock.unix_ms();
            let due_at = span.written_unix_ms + lag_ms;
            if now < due_at {
                let wait = Duration::from_millis(due_at - now).min(RUNNER_SLEEP_MAX);
                futures_lite::future::or(closed, self.clock.sleep(wait)).await;
                continue;
            }
            if !self.run_span(&span, index, &lags).await {
                return;
            }
            self.runner_cursors.borrow_mut()[index] += 1;
            self.drop_passed_spans();
        }
    }

    /// Spans every runner has passed are forgotten.
    fn drop_passed_spans(&self) {
        let passed = self.runner_cursors.borrow().iter().copied().min().unwrap_or(0);
        let mut spans = self.spans.borrow_mut();
        while self.spans_base.get() < passed && !spans.is_empty() {
            spans.pop_front();
            self.spans_base.set(self.spans_base.get() + 1);
        }
    }

    /// Reads one span and hands over what is due at this runner. Returns
    /// false when the queue closed meanwhile.
    async fn run_span(&self, span: &Span, index: usize, lags: &[Duration]) -> bool {
        let file = {
            let retry = self.logs[1].borrow();
            match retry.segments.get(&span.segment_sequence) {
                Some(segment) => segment.file.clone(),
                // Deleted: all its records were dead.
                None => return true,
            }
        };
        let bytes = match file.read_at(span.offset, span.size_bytes as usize).await {
            Ok(bytes) => bytes,
            Err(e) => {
                crate::log::event("queue_runner_error", &[("shard", &self.shard_index), ("error", &e)]);
                return true;
            }
        };
        let expect = LogExpect {
            log_kind: LogKind::Retry,
            shard_index: self.shard_index,
            record_sequence_next: span.record_sequence_first,
        };
        let oldest = index + 1 == lags.len();
        let lag_before_ms = index.checked_sub(1).map(|i| lags[i].as_millis() as u64);
        let now = self.clock.unix_ms();
        let mut handed = Vec::new();
        let mut carried = Vec::new();
        for entry in LogReader::new(&bytes, 0, expect) {
            if entry.offset as u64 >= span.size_bytes {
                break;
            }
            let RecordBody::ReplacementEnvelope(env) = &entry.record.body else { continue };
            let offset = (span.offset + entry.offset as u64) as u32;
            let mut index_map = self.index.borrow_mut();
            let Some(current) = index_map.get_mut(&env.queue_id) else { continue };
            let newest = current.location.log == LogKind::Retry
                && current.location.segment_sequence == span.segment_sequence
                && current.location.offset == offset;
            if !newest || current.in_flight {
                continue;
            }
            // A held message waits for its release, whichever runner passes
            // it. The oldest runner writes it again at the write point, as
            // it is: nothing live stays behind the oldest runner, so the
            // retry log's bound holds for held messages too.
            if current.held {
                if oldest {
                    match Envelope::from_format(env) {
                        Ok(env) => {
                            current.in_flight = true;
                            carried.push(env);
                        }
                        Err(problem) => self.refused(span, offset, &problem),
                    }
                }
                continue;
            }
            // Due now, and not already due when the runner before this one
            // passed; the oldest runner takes whatever is still live.
            let is_due = env.retry_next_unix_ms <= now;
            let mine = match lag_before_ms {
                None => true,
                Some(before) => env.retry_next_unix_ms > span.written_unix_ms + before,
            };
            if oldest || (is_due && mine) {
                match Envelope::from_format(env) {
                    Ok(env) => {
                        current.in_flight = true;
                        handed.push(env);
                    }
                    Err(problem) => self.refused(span, offset, &problem),
                }
            }
        }
        for env in carried {
            self.carry_held(env).await;
        }
        let mut handed = handed.into_iter();
        for env in handed.by_ref() {
            if !self.hand_due(env).await {
                // Closed: what was not handed over is out of flight again.
                for env in handed {
                    self.release(&env.id);
                }
                return false;
            }
        }
        true
    }

    fn refused(&self, span: &Span, offset: u32, problem: &str) {
        crate::log::event(
            "queue_record_refused",
            &[
                ("shard", &self.shard_index),
                ("segment", &span.segment_sequence),
                ("offset", &offset),
                ("problem", &problem),
            ],
        );
    }

    /// Writes a held message's envelope again, unchanged, at the retry
    /// log's write point; its old record dies when the new one is durable.
    /// On failure (or once the queue is closing) the old record stays
    /// live and the message stays held.
    async fn carry_held(&self, env: Envelope) {
        if !self.closed.get() {
            match self.append_replacement(env.clone()).await {
                Ok(_) => return,
                Err(e) => crate::log::event("queue_error", &[("id", &env.id), ("error", &e)]),
            }
        }
        self.release(&env.id);
    }
}
