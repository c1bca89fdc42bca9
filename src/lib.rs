//! ringpost: a thread-per-core Mail Transfer Agent for high-volume relays.
//! See docs/ARCHITECTURE.md for the pipeline and why it is shaped so.
//!
//! The pipeline, one shard: ingress (sockets, SMTP sessions) → queue
//! (durable before 250) → deliver (Maildir, SMTP to the next hop, bounces).

pub mod access;
pub mod auth;
pub mod clock;
pub mod control;
pub mod config;
pub mod deliver;
pub mod dns;
pub mod frontline;
pub mod ingress;
pub mod limits;
pub mod log;
pub mod metrics;
pub mod notify;
pub mod pool;
pub mod pipehelper;
pub mod privdrop;
pub mod queue;
pub mod reload;
pub mod route;
pub mod sasl;
pub mod scan;
pub mod shard;
pub mod sendmail;
pub mod sieve;
pub mod smtp;
pub mod stats;
pub mod tls;
pub mod verify;
#[cfg(test)]
mod sim;
#[cfg(test)]
pub(crate) mod testing;

/// Entry points for the fuzz targets in `fuzz/` that no other caller needs;
/// not an API.
#[doc(hidden)]
pub mod fuzzing {
    use crate::smtp::client::{ReplyError, ReplyReader};
    use crate::smtp::reply::Reply;

    /// The SMTP client's reply reader on server bytes cut into `feeds`:
    /// every reply completed, up to and including the first error.
    pub fn read_replies(feeds: &[&[u8]]) -> Vec<Result<Reply, ReplyError>> {
        let mut reader = ReplyReader::default();
        let mut replies = Vec::new();
        for feed in feeds {
            reader.feed(feed, &mut replies);
            if replies.last().is_some_and(Result::is_err) {
                break;
            }
        }
        replies
    }
}

pub use config::load;

/// Raises the open-file limit to its hard maximum: every session holds a
/// socket, and a relay holds thousands.
pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
