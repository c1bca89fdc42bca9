//! Data callouts: the stages a message passes at the final dot, once it is
//! whole in its final place in the queue (inline buffer or body file) and
//! before the reply to the final dot is decided.
//!
//! Place in the pipeline: between receiving and committing. The session
//! driver builds the envelope, asks [`Stages::at_final_dot`], and acts on
//! the [`Verdict`]: commit and 250 (`Continue`), answer without committing
//! (`Done`: the message needs no queueing, e.g. every recipient already
//! accepted by the next hop), or refuse (`Refuse`: nothing is committed,
//! nothing stays live). A stage may change the envelope it is given
//! (recipient states, the scanners' added header lines), never the body.
//! Email authentication (`crate::auth`, `[email_auth]` and
//! `[[dkim_sign]]`) runs first, then the content scanners (`scanners`,
//! `[[scanner]]`), then early
//! delivery (`delivery.early_ms`), then replication to a peer
//! (`replicate`, `[replicate]`) for the recipients still pending.

pub mod clamd;
pub mod content;
pub mod early;
pub mod pipe;
pub mod replicate;
pub mod rspamd;
pub mod scanners;
pub mod spamd;

use crate::queue::Envelope;
use crate::smtp::reply::Reply;

/// What the stages decided for a message at its final dot.
#[derive(Debug)]
pub enum Verdict {
    /// Commit the envelope (as the stages left it) and answer 250.
    Continue,
    /// Answer this without committing anything: the message is taken
    /// care of already.
    Done(Reply),
    /// Answer this (4xx or 5xx) and commit nothing.
    Refuse(Reply),
}

/// The data-callout stages of one shard, in order: the content scanners,
/// early delivery, replication.
pub struct Stages {
    scanners: Option<scanners::Scanners>,
    early: Option<early::EarlyDelivery>,
    replicator: Option<std::rc::Rc<replicate::Replicator>>,
    auth: Option<std::rc::Rc<crate::auth::Auth>>,
}

impl Stages {
    pub fn new(
        scanners: Option<scanners::Scanners>,
        early: Option<early::EarlyDelivery>,
        replicator: Option<std::rc::Rc<replicate::Replicator>>,
    ) -> Stages {
        Stages { scanners: scanners.filter(|s| !s.is_empty()), early, replicator, auth: None }
    }

    /// With the email authentication stage (`crate::auth`), which runs
    /// before the others.
    pub fn with_auth(mut self, auth: Option<std::rc::Rc<crate::auth::Auth>>) -> Stages {
        self.auth = auth;
        self
    }

    /// The email authentication of this shard (also asked at MAIL FROM).
    pub fn auth(&self) -> Option<&crate::auth::Auth> {
        self.auth.as_deref()
    }

    /// Whether any stage runs: without one, the session commits at once
    /// and never makes the message's content available before its commit.
    pub fn is_empty(&self) -> bool {
        self.scanners.is_none() && self.early.is_none() && self.replicator.is_none() && self.auth.is_none()
    }

    /// The replication stage, told when a replicated message is not
    /// committed after all.
    pub fn replicator(&self) -> Option<&replicate::Replicator> {
        self.replicator.as_deref()
    }

    /// The replication stage, for the stages a reload builds.
    pub fn replicator_rc(&self) -> Option<std::rc::Rc<replicate::Replicator>> {
        self.replicator.clone()
    }

    /// Runs the stages over `env`, whose body (`env.body`) is complete but
    /// not yet committed.
    pub async fn at_final_dot(&self, env: &mut Envelope) -> Verdict {
        if let Some(auth) = &self.auth {
            if let crate::auth::Decision::Refuse(reply) = auth.at_final_dot(env).await {
                return Verdict::Refuse(reply);
            }
        }
        if let Some(scanners) = &self.scanners {
            if let scanners::Decision::Refuse(reply) = scanners.run(env).await {
                return Verdict::Refuse(reply);
            }
        }
        if let Some(early) = &self.early {
            match early.run(env).await {
                Verdict::Continue => {}
                other => return other,
            }
        }
        if let Some(replicator) = &self.replicator {
            return replicator.run(env).await;
        }
        Verdict::Continue
    }
}
