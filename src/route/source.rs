//! Lookup sources: the tables routers read (text files, cdb, SQLite,
//! PostgreSQL, LDAP) behind one interface, so a router does not care where
//! its table lives.
//!
//! Place in the pipeline: called by routers during RCPT verification and
//! delivery routing, on the shard's executor. A source that blocks (a
//! network database) must not block the executor: it hands the query to a
//! bounded pool (`crate::pool`) and awaits the answer.

use std::future::Future;
use std::pin::Pin;

/// Why a lookup gave no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LookupError {
    /// The back end is busy, slow or down: the caller answers 451 4.3.0 and
    /// the client tries again later.
    Temporary(String),
    /// The table itself is broken (bad query, missing file): also 451 4.3.0
    /// at RCPT, but logged as a configuration problem.
    Config(String),
}

/// The answer of a lookup: `None` when the key is not in the table, or the
/// value stored for it as text (several rows of a database joined with ", ").
pub type LookupResult = Result<Option<String>, LookupError>;

/// A future of one lookup, awaited on the shard that asked.
pub type LookupFuture<'a> = Pin<Box<dyn Future<Output = LookupResult> + 'a>>;

/// One table, shared by every shard.
pub trait LookupSource: Send + Sync {
    /// Looks `key` up. Keys are passed exactly as the router built them
    /// (the router lower-cases where the table format says so).
    fn lookup<'a>(&'a self, key: &'a str) -> LookupFuture<'a>;

    /// The source as the user wrote it, for logs and `ringpost route`
    /// (passwords removed).
    fn describe(&self) -> String;
}
