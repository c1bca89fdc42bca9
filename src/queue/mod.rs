//! The queue: where an accepted message becomes durable, and where delivery
//! finds it again.
//!
//! Place in the pipeline: ingress streams a message into a [`MessageWriter`]
//! while it is received and calls [`MessageWriter::commit`]; the 250 after DATA
//! is sent only when `commit` returned, that is when the body and the envelope
//! are on stable storage. Delivery then records progress with
//! [`Queue::defer`] (a durable replacement envelope) and [`Queue::complete`].
//! At start-up [`Queue::open`] returns every live envelope (recovery).
//!
//! This implementation is the simple, honest stand-in behind that interface:
//! one body file and one envelope file per message in the shard's spool
//! directory, each flushed with fdatasync, the envelope renamed into place
//! and the directory flushed. The log-structured queue (see DESIGN.md) will
//! implement the same interface with inlined bodies and group commit.

mod envelope;
mod spool;

pub use envelope::{Envelope, RcptState, Recipient};
pub use spool::{MessageWriter, Queue};

use crate::smtp::reply::{Enhanced, Reply};

/// Why a message could not be made durable. Nothing was acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("spool disk full: {0}")]
    NoSpace(std::io::Error),
    #[error("spool I/O error: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for QueueError {
    fn from(e: std::io::Error) -> Self {
        if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) {
            QueueError::NoSpace(e)
        } else {
            QueueError::Io(e)
        }
    }
}

impl QueueError {
    /// The reply to the final dot when the commit failed (RFC 3463: 4.3.1
    /// mail system full, 4.3.0 other mail system problem).
    pub fn reply(&self) -> Reply {
        match self {
            QueueError::NoSpace(_) => {
                Reply::new(452, Enhanced(4, 3, 1), "Insufficient system storage, try again later")
            }
            QueueError::Io(_) => {
                Reply::new(451, Enhanced(4, 3, 0), "Local error in processing, try again later")
            }
        }
    }
}
