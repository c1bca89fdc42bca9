//! The envelope of a queued message: sender, recipients with their delivery
//! state, and the facts delivery and bounces need. Stored as one JSON
//! document per message by the spool stand-in.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RcptState {
    /// Not yet delivered; retried until delivered, failed, or too old.
    Pending,
    /// Accepted by the next hop or written to the mailbox.
    Delivered,
    /// Permanently failed; reported in a bounce (unless the sender is null).
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    pub address: String,
    pub state: RcptState,
    /// The last reply or error seen for this recipient, for logs and bounces.
    #[serde(default)]
    pub last_reply: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: String,
    /// The reverse path without angle brackets; empty for the null sender `<>`.
    pub sender: String,
    pub recipients: Vec<Recipient>,
    pub arrival_unix_s: u64,
    pub next_retry_unix_s: u64,
    pub attempt_count: u32,
    /// Content size in octets as stored (CRLF line endings).
    pub size_bytes: u64,
    pub body_8bit: bool,
    pub smtputf8: bool,
    /// The client's address and HELO name, for logs.
    pub client: String,
    pub helo: String,
}

impl Envelope {
    pub fn pending_count(&self) -> usize {
        self.recipients.iter().filter(|r| r.state == RcptState::Pending).count()
    }
    pub fn is_null_sender(&self) -> bool {
        self.sender.is_empty()
    }
}
