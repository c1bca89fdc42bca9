//! The types of `[sieve]`: where users' Sieve scripts come from, the
//! global script run before them, the vacation memory, and the limits of
//! one evaluation (`docs/sieve.md`, `docs/config.md`).

use std::path::PathBuf;

/// `[sieve]`: present, every local recipient's script is run at RCPT (and
/// at the final dot when it needs the content).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sieve {
    /// A path template with `{user}` (the routed local part, without its
    /// subaddress) and `{domain}`; a missing file is an implicit keep.
    pub scripts: Option<String>,
    /// Or a table returning the script text: `sqlite:PATH`,
    /// `postgres:URL` or `ldap:URL`, with `query` (key: `user@domain`).
    pub source: Option<String>,
    pub query: Option<String>,
    /// The `[pool.NAME]` of a PostgreSQL or LDAP `source`.
    pub pool: Option<String>,
    /// A script run for every local recipient before the user's own.
    pub before: Option<PathBuf>,
    /// The SQLite file remembering vacation responses (who was answered
    /// when). Default: `sieve-vacation.sqlite` in the first spool.
    pub vacation_db: Option<PathBuf>,
    /// Longest script. Default 1 MiB.
    pub max_script_bytes: u64,
    /// Redirects one message may make per recipient. Default 4.
    pub max_redirects: u32,
    /// Compiled scripts kept. Default 100,000.
    pub cache_entries: usize,
}

impl Default for Sieve {
    fn default() -> Sieve {
        Sieve {
            scripts: None,
            source: None,
            query: None,
            pool: None,
            before: None,
            vacation_db: None,
            max_script_bytes: 1024 * 1024,
            max_redirects: 4,
            cache_entries: 100_000,
        }
    }
}
