//! PostgreSQL lookups (`source = "postgres:URL"`) for the pool: the
//! `postgres` crate's blocking client, one connection per worker, the
//! router's query with `$1` as the key; the first column of every row, as
//! text, joined with ", " (at most `ROWS_MAX` rows).
//!
//! Place in the pipeline: run by pool workers, never on a shard.

use crate::pool::{Backend, Connect};
use crate::route::source::{LookupError, LookupResult};

/// Rows of one answer joined into the value; more are ignored.
pub const ROWS_MAX: usize = 1_000;
/// Longest wait for a connection to open.
const CONNECT_TIMEOUT_S: u64 = 5;

struct Postgres {
    client: postgres::Client,
    statement: postgres::Statement,
}

impl Backend for Postgres {
    fn lookup(&mut self, key: &str) -> LookupResult {
        let rows = self
            .client
            .query(&self.statement, &[&key])
            .map_err(|e| LookupError::Temporary(format!("postgres: {e}")))?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut values = Vec::with_capacity(rows.len().min(ROWS_MAX));
        for row in rows.iter().take(ROWS_MAX) {
            let value: Option<String> =
                row.try_get(0).map_err(|e| LookupError::Config(format!("postgres: the first column must be text: {e}")))?;
            if let Some(value) = value {
                values.push(value);
            }
        }
        Ok(Some(values.join(", ")))
    }
}

/// The pool's description (the URL without its password) and connector.
pub fn connector(url: &str, query: &str) -> Result<(String, Connect), String> {
    let mut config: postgres::Config = url.parse().map_err(|e| format!("postgres:{}: {e}", redact(url)))?;
    config.connect_timeout(std::time::Duration::from_secs(CONNECT_TIMEOUT_S));
    if !query.contains("$1") {
        return Err(format!("postgres:{}: the query must use $1 for the key", redact(url)));
    }
    let description = format!("postgres:{}", redact(url));
    let query = query.to_string();
    let connect: Connect = Box::new(move || {
        let mut client = config.connect(postgres::NoTls).map_err(|e| e.to_string())?;
        let statement = client.prepare(&query).map_err(|e| format!("query {query:?}: {e}"))?;
        Ok(Box::new(Postgres { client, statement }) as Box<dyn Backend>)
    });
    Ok((description, connect))
}

/// The URL with any password replaced by "***".
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(super::redact("postgresql://u:secret@h/db"), "postgresql://u:***@h/db");
        assert_eq!(super::redact("postgresql://u@h/db"), "postgresql://u@h/db");
        assert_eq!(super::redact("host=/tmp dbname=x"), "host=/tmp dbname=x");
    }
}
