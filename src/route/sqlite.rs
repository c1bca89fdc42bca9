//! SQLite tables (`source = "sqlite:PATH"`, the embedded default database)
//! and the TTL cache put in front of every source that is not in memory.
//!
//! Place in the pipeline: looked up by routers on the shard's executor.
//! SQLite blocks, so each query runs on a blocking thread
//! (`glommio::executor().spawn_blocking`), at most
//! `route.sqlite_max_in_flight` at once per source; one more waits up to
//! `SQLITE_WAIT_MS` for a free connection, then answers 451 4.3.0.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::source::{LookupError, LookupFuture, LookupResult, LookupSource};

/// How long a lookup waits for one of the connections before giving up
/// with a temporary error.
pub const SQLITE_WAIT_MS: u64 = 2_000;
/// Rows of one answer joined into the value; more are ignored.
pub const SQLITE_ROWS_MAX: usize = 1_000;

struct Pool {
    /// Idle connections; at most `max_in_flight` exist.
    idle: Vec<rusqlite::Connection>,
    open: usize,
}

pub struct SqliteSource {
    path: String,
    query: String,
    max_in_flight: usize,
    pool: Arc<Mutex<Pool>>,
}

impl SqliteSource {
    /// Opens `path` read-only and prepares `query` once, so a bad query is
    /// refused at load (and at SIGHUP, which then keeps the old tables).
    pub fn open(path: &str, query: &str, max_in_flight: usize) -> Result<SqliteSource, String> {
        assert!(max_in_flight > 0, "route.sqlite_max_in_flight is at least 1");
        let connection = connect(path)?;
        connection.prepare(query).map_err(|e| format!("sqlite:{path}: query {query:?}: {e}"))?;
        let pool = Pool { idle: vec![connection], open: 1 };
        Ok(SqliteSource {
            path: path.to_string(),
            query: query.to_string(),
            max_in_flight,
            pool: Arc::new(Mutex::new(pool)),
        })
    }

    /// Takes an idle connection or opens one while fewer than
    /// `max_in_flight` exist; `Ok(None)` when all are busy.
    fn take(&self) -> Result<Option<rusqlite::Connection>, LookupError> {
        let mut pool = self.pool.lock().expect("sqlite pool lock");
        if let Some(connection) = pool.idle.pop() {
            return Ok(Some(connection));
        }
        if pool.open >= self.max_in_flight {
            return Ok(None);
        }
        pool.open += 1;
        drop(pool);
        match connect(&self.path) {
            Ok(connection) => Ok(Some(connection)),
            Err(e) => {
                self.pool.lock().expect("sqlite pool lock").open -= 1;
                Err(LookupError::Temporary(e))
            }
        }
    }

    async fn query_async(&self, key: &str) -> LookupResult {
        let deadline = Instant::now() + Duration::from_millis(SQLITE_WAIT_MS);
        let connection = loop {
            if let Some(connection) = self.take()? {
                break connection;
            }
            if Instant::now() >= deadline {
                return Err(LookupError::Temporary(format!(
                    "sqlite:{}: {} lookups in flight",
                    self.path, self.max_in_flight
                )));
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        };
        let pool = self.pool.clone();
        let query = self.query.clone();
        let key = key.to_string();
        let result = glommio::executor()
            .spawn_blocking(move || {
                let result = run_query(&connection, &query, &key);
                pool.lock().expect("sqlite pool lock").idle.push(connection);
                result
            })
            .await;
        result.map_err(|e| LookupError::Temporary(format!("sqlite:{}: {e}", self.path)))
    }
}

fn connect(path: &str) -> Result<rusqlite::Connection, String> {
    use rusqlite::OpenFlags;
    let connection =
        rusqlite::Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .map_err(|e| format!("sqlite:{path}: {e}"))?;
    let _ = connection.busy_timeout(Duration::from_millis(SQLITE_WAIT_MS));
    Ok(connection)
}

fn run_query(connection: &rusqlite::Connection, query: &str, key: &str) -> Result<Option<String>, rusqlite::Error> {
    let mut statement = connection.prepare_cached(query)?;
    let mut rows = statement.query([key])?;
    let mut values: Vec<String> = Vec::new();
    while let Some(row) = rows.next()? {
        let value: rusqlite::types::Value = row.get(0)?;
        let text = match value {
            rusqlite::types::Value::Null => continue,
            rusqlite::types::Value::Integer(i) => i.to_string(),
            rusqlite::types::Value::Real(f) => f.to_string(),
            rusqlite::types::Value::Text(t) => t,
            rusqlite::types::Value::Blob(b) => String::from_utf8_lossy(&b).into_owned(),
        };
        values.push(text);
        if values.len() >= SQLITE_ROWS_MAX {
            break;
        }
    }
    Ok(if values.is_empty() { None } else { Some(values.join(", ")) })
}

impl LookupSource for SqliteSource {
    fn lookup<'a>(&'a self, key: &'a str) -> LookupFuture<'a> {
        Box::pin(self.query_async(key))
    }

    fn describe(&self) -> String {
        format!("sqlite:{}", self.path)
    }
}

/// Answers (found and not found) of another source, kept for `ttl`; at most
/// `max_entries`, and when full the expired ones go, or all of them. Errors
/// are not cached.
pub struct Cached {
    inner: Arc<dyn LookupSource>,
    ttl: Duration,
    max_entries: usize,
    map: Mutex<HashMap<String, (Instant, Option<String>)>>,
}

impl Cached {
    pub fn new(inner: Arc<dyn LookupSource>, ttl: Duration, max_entries: usize) -> Cached {
        assert!(max_entries > 0, "route.cache_entries is at least 1");
        Cached { inner, ttl, max_entries, map: Mutex::new(HashMap::new()) }
    }

    async fn lookup_cached(&self, key: &str) -> LookupResult {
        let now = Instant::now();
        if let Some((at, value)) = self.map.lock().expect("cache lock").get(key) {
            if now.duration_since(*at) < self.ttl {
                return Ok(value.clone());
            }
        }
        let value = self.inner.lookup(key).await?;
        if !self.ttl.is_zero() {
            let mut map = self.map.lock().expect("cache lock");
            if map.len() >= self.max_entries {
                map.retain(|_, (at, _)| now.duration_since(*at) < self.ttl);
                if map.len() >= self.max_entries {
                    map.clear();
                }
            }
            map.insert(key.to_string(), (now, value.clone()));
        }
        Ok(value)
    }
}

impl LookupSource for Cached {
    fn lookup<'a>(&'a self, key: &'a str) -> LookupFuture<'a> {
        Box::pin(self.lookup_cached(key))
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}
