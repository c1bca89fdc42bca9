//! SMTP AUTH (RFC 4954) for mail submission: who the client is, checked
//! against a password back end (`[auth] backend`): a table of hashes
//! (`table.rs`), Dovecot's auth socket (`dovecot.rs`) or an LDAP bind
//! (`ldap.rs`). Not to be confused with `crate::auth`, which is email
//! authentication (SPF, DKIM, DMARC) of the messages themselves.
//!
//! Place in the pipeline: the SMTP machine (`crate::smtp::server`) reads
//! the SASL exchange and hands the decoded credentials out as
//! `Event::Auth`; the session driver (`crate::ingress`) asks
//! [`Sasl::check`] for the reply. Every back end runs behind a
//! `crate::pool::Pool` of its own: at most `auth.max_concurrent` checks at
//! once on worker threads (never on a shard's executor), at most
//! `auth.queue_max` waiting, each answered within `auth.timeout`; a full
//! queue, a timeout or a back-end failure is 454 4.7.0 (try again later).
//!
//! Failures: each 535 5.7.8 comes after `auth.failure_delay`; a session's
//! `auth.max_failures`-th failure is answered 421 4.7.0 and the session
//! closed; a client address with `auth.max_failures_per_client` failures
//! within `auth.failure_window` gets 421 4.7.0 for AUTH at once until the
//! window passes (a bounded table of `FAILURE_CLIENTS_MAX` addresses).
//! Every outcome is logged as `event=auth` with the user and the result,
//! never the password.
//!
//! Sender login maps (`auth.sender_login_maps`): a table from an address
//! (or `@domain`) to the logins that may use it as MAIL FROM; an
//! authenticated client naming an address it does not own gets 553 5.7.1.

pub mod dovecot;
pub mod ldap;
pub mod scram;
pub mod table;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};

use crate::config::{Sasl as SaslConfig, SaslBackend};
use crate::pool::{Backend, Connect, Pool, PoolParams};
use crate::route::source::LookupError;
use crate::route::table::{CdbTable, TextTable};
use crate::smtp::reply::{Enhanced, Reply};

/// Most client addresses whose failures are counted at one time; a new
/// address past it is not counted until old entries expire.
pub const FAILURE_CLIENTS_MAX: usize = 100_000;
/// Longest user name, authorization identity or password accepted.
pub const CREDENTIAL_BYTES_MAX: usize = 1024;

/// A pool key asking for a user's SCRAM secrets (the user follows).
pub const SECRETS_KEY_PREFIX: &str = "\u{1}scram\0";

/// A check as the pool carries it: one string, fields joined by NUL
/// (which none of them can hold: the SASL decoders refuse it).
pub struct Request<'a> {
    pub client: &'a str,
    pub secured: bool,
    pub authzid: &'a str,
    pub user: &'a str,
    pub password: &'a str,
}

impl<'a> Request<'a> {
    pub fn encode(&self) -> String {
        let secured = if self.secured { "s" } else { "" };
        [self.client, secured, self.authzid, self.user, self.password].join("\0")
    }

    pub fn decode(key: &'a str) -> Option<Request<'a>> {
        let mut fields = key.split('\0');
        let request = Request {
            client: fields.next()?,
            secured: fields.next()? == "s",
            authzid: fields.next()?,
            user: fields.next()?,
            password: fields.next()?,
        };
        fields.next().is_none().then_some(request)
    }
}

/// The outcome of one check.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 235: the session is authenticated as this login.
    Valid(String),
    /// 535 5.7.8, counted as a failure.
    Invalid,
    /// 421 4.7.0: too many failures; the session is closed.
    Blocked,
    /// 454 4.7.0: the back end is busy or down.
    Temporary,
}

/// The back end, the failure counts and the sender login map of a process.
pub struct Sasl {
    config: SaslConfig,
    pool: Pool,
    failures: Mutex<HashMap<IpAddr, Failures>>,
    /// Replaced on SIGHUP ([`Sasl::set_sender_logins`]).
    sender_logins: RwLock<Option<Arc<SenderLogins>>>,
}

#[derive(Clone, Copy, Debug)]
struct Failures {
    count: u32,
    window_start_ms: u64,
}

/// The table of `auth.sender_login_maps`.
pub enum SenderLogins {
    Text(TextTable),
    Cdb(CdbTable),
}

impl SenderLogins {
    /// The table `config` names, opened; None without one.
    pub fn open(config: &crate::config::Config) -> Result<Option<SenderLogins>, String> {
        let Some(path) = config.sasl.as_ref().and_then(|s| s.sender_login_maps.as_ref()) else { return Ok(None) };
        let map = match path.extension().is_some_and(|e| e == "cdb") {
            true => SenderLogins::Cdb(CdbTable::open(path)?),
            false => SenderLogins::Text(TextTable::open(path)?),
        };
        Ok(Some(map))
    }
}

impl Sasl {
    /// Starts the back end's workers; a table or login map that cannot be
    /// read stops the start.
    pub fn open(config: &SaslConfig) -> Result<Sasl, String> {
        let (description, connect): (String, Connect) = match &config.backend {
            SaslBackend::Table(path) => {
                table::Table::open(path).map_err(|e| format!("auth.table: {e}"))?;
                let path = path.clone();
                (
                    format!("auth table {}", path.display()),
                    Box::new(move || table::Table::open(&path).map(|t| Box::new(t) as Box<dyn Backend>)),
                )
            }
            SaslBackend::Dovecot(path) => {
                let path = path.clone();
                (
                    format!("dovecot auth {}", path.display()),
                    Box::new(move || dovecot::Dovecot::connect(&path).map(|d| Box::new(d) as Box<dyn Backend>)),
                )
            }
            SaslBackend::Ldap { url, bind_dn } => {
                let (url, bind_dn) = (url.clone(), bind_dn.clone());
                (
                    format!("ldap auth {url}"),
                    Box::new(move || ldap::Ldap::connect(&url, &bind_dn).map(|l| Box::new(l) as Box<dyn Backend>)),
                )
            }
        };
        let sender_logins = match &config.sender_login_maps {
            None => None,
            Some(path) if path.extension().is_some_and(|e| e == "cdb") => {
                Some(SenderLogins::Cdb(CdbTable::open(path)?))
            }
            Some(path) => Some(SenderLogins::Text(TextTable::open(path)?)),
        };
        let params = PoolParams {
            max_connections: config.max_concurrent,
            queue_max: config.queue_max,
            timeout: config.timeout.0,
        };
        Ok(Sasl {
            config: config.clone(),
            pool: Pool::start(description, params, connect),
            failures: Mutex::new(HashMap::new()),
            sender_logins: RwLock::new(sender_logins.map(Arc::new)),
        })
    }

    /// The sender login map read again (SIGHUP).
    pub fn set_sender_logins(&self, logins: Option<SenderLogins>) {
        *self.sender_logins.write().expect("sender login map lock") = logins.map(Arc::new);
    }

    pub fn config(&self) -> &SaslConfig {
        &self.config
    }

    /// Whether `client` may try (fewer than `max_failures_per_client`
    /// failures in the current window).
    pub fn client_allowed(&self, client: IpAddr, now_ms: u64) -> bool {
        let window_ms = self.config.failure_window.0.as_millis() as u64;
        let failures = self.failures.lock().expect("auth failure table lock");
        match failures.get(&client) {
            Some(f) if now_ms.saturating_sub(f.window_start_ms) < window_ms => {
                f.count < self.config.max_failures_per_client
            }
            _ => true,
        }
    }

    /// Counts a failure of `client`.
    fn note_failure(&self, client: IpAddr, now_ms: u64) {
        let window_ms = self.config.failure_window.0.as_millis() as u64;
        let mut failures = self.failures.lock().expect("auth failure table lock");
        if failures.len() >= FAILURE_CLIENTS_MAX && !failures.contains_key(&client) {
            failures.retain(|_, f| now_ms.saturating_sub(f.window_start_ms) < window_ms);
            if failures.len() >= FAILURE_CLIENTS_MAX {
                return;
            }
        }
        let entry = failures.entry(client).or_insert(Failures { count: 0, window_start_ms: now_ms });
        if now_ms.saturating_sub(entry.window_start_ms) >= window_ms {
            *entry = Failures { count: 0, window_start_ms: now_ms };
        }
        entry.count = entry.count.saturating_add(1);
        debug_assert!(failures.len() <= FAILURE_CLIENTS_MAX);
    }

    /// Checks one set of credentials from `client`; `session_failures` is
    /// the count of the session's failures so far. Invalid answers wait
    /// `failure_delay` before they return.
    pub async fn check(&self, request: &Request<'_>, client: IpAddr, session_failures: u32) -> Outcome {
        let now_ms = crate::limits::now_ms();
        if !self.client_allowed(client, now_ms) {
            return Outcome::Blocked;
        }
        let valid = match self.pool.lookup(&request.encode()).await {
            Ok(Some(login)) => return Outcome::Valid(login),
            Ok(None) => false,
            Err(LookupError::Temporary(e) | LookupError::Config(e)) => {
                crate::log::event("auth_backend_error", &[("client", &client), ("error", &e)]);
                return Outcome::Temporary;
            }
        };
        debug_assert!(!valid);
        self.failed(client, session_failures).await
    }

    /// A failed attempt of `client`: counted, answered after
    /// `failure_delay`, Blocked at the session's or the client's limit.
    pub async fn failed(&self, client: IpAddr, session_failures: u32) -> Outcome {
        self.note_failure(client, crate::limits::now_ms());
        glommio::timer::sleep(self.config.failure_delay.0).await;
        if session_failures.saturating_add(1) >= self.config.max_failures
            || !self.client_allowed(client, crate::limits::now_ms())
        {
            Outcome::Blocked
        } else {
            Outcome::Invalid
        }
    }

    /// Whether SCRAM-SHA-256 can be offered: only the table back end hands
    /// out the secrets it needs.
    pub fn offers_scram(&self) -> bool {
        matches!(self.config.backend, SaslBackend::Table(_))
    }

    /// The SCRAM secrets of `user` (secrets no password matches for a user
    /// without a SCRAM entry); Err when the back end failed.
    pub async fn scram_secrets(&self, user: &str, client: IpAddr) -> Result<scram::Secrets, ()> {
        match self.pool.lookup(&format!("{SECRETS_KEY_PREFIX}{user}")).await {
            Ok(Some(entry)) => Ok(scram::Secrets::parse(&entry).unwrap_or_else(|| scram::Secrets::unknown(user))),
            Ok(None) => Ok(scram::Secrets::unknown(user)),
            Err(LookupError::Temporary(e) | LookupError::Config(e)) => {
                crate::log::event("auth_backend_error", &[("client", &client), ("error", &e)]);
                Err(())
            }
        }
    }

    /// Whether `login` may use `sender` as MAIL FROM under the sender
    /// login map (always, without one). The map's value lists logins
    /// separated by commas or white space; the address is looked up, then
    /// `@domain`. An address the map does not list is owned by no one.
    pub fn sender_allowed(&self, login: &str, sender: &str) -> Result<bool, String> {
        let map = self.sender_logins.read().expect("sender login map lock").clone();
        let Some(map) = map else { return Ok(true) };
        let sender = sender.to_lowercase();
        let mut keys = vec![sender.clone()];
        if let Some((_, domain)) = sender.rsplit_once('@') {
            keys.push(format!("@{domain}"));
        }
        for key in keys {
            let value = match &*map {
                SenderLogins::Text(t) => t.get(&key).map(str::to_string),
                SenderLogins::Cdb(c) => c.get(&key).map_err(|e| format!("{e:?}"))?,
            };
            if let Some(value) = value {
                return Ok(value.split([',', ' ', '\t']).any(|owner| owner.eq_ignore_ascii_case(login)));
            }
        }
        Ok(false)
    }
}

/// The reply to AUTH for an outcome.
pub fn reply(outcome: &Outcome, hostname: &str) -> Reply {
    match outcome {
        Outcome::Valid(_) => Reply::new(235, Enhanced(2, 7, 0), "Authentication successful"),
        Outcome::Invalid => Reply::new(535, Enhanced(5, 7, 8), "Authentication credentials invalid"),
        Outcome::Blocked => Reply::new(
            421,
            Enhanced(4, 7, 0),
            format!("{hostname} too many failed authentications, closing connection"),
        ),
        Outcome::Temporary => Reply::new(454, Enhanced(4, 7, 0), "Temporary authentication failure"),
    }
}

static LIVE: RwLock<Option<Arc<Sasl>>> = RwLock::new(None);

/// Makes `sasl` the process's AUTH back end (at start-up).
pub fn install(sasl: Option<Arc<Sasl>>) {
    *LIVE.write().expect("auth back end lock") = sasl;
}

/// The process's AUTH back end; None without `[auth]`.
pub fn current() -> Option<Arc<Sasl>> {
    LIVE.read().expect("auth back end lock").clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let r = Request { client: "192.0.2.1", secured: true, authzid: "", user: "alice", password: "p w" };
        let key = r.encode();
        let back = Request::decode(&key).unwrap();
        assert_eq!(
            (back.client, back.secured, back.authzid, back.user, back.password),
            ("192.0.2.1", true, "", "alice", "p w")
        );
        assert!(Request::decode("a\0b").is_none());
    }

    fn sasl_with(dir: &std::path::Path, table: &str, logins: Option<&str>) -> Sasl {
        let path = dir.join("passwd");
        std::fs::write(&path, table).unwrap();
        let sender_login_maps = logins.map(|text| {
            let p = dir.join("logins");
            std::fs::write(&p, text).unwrap();
            p
        });
        let config = SaslConfig {
            backend: SaslBackend::Table(path),
            max_failures: 2,
            max_failures_per_client: 3,
            failure_window: crate::config::Duration::from_secs(600),
            failure_delay: crate::config::Duration(std::time::Duration::from_millis(10)),
            max_concurrent: 1,
            queue_max: 4,
            timeout: crate::config::Duration::from_secs(5),
            sender_login_maps,
        };
        Sasl::open(&config).unwrap()
    }

    #[test]
    fn table_checks_count_failures_per_session_and_client() {
        let dir = crate::testing::tempdir("sasl-table");
        let hash = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";
        let sasl = sasl_with(&dir, &format!("alice:{hash}\n"), None);
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let ip: IpAddr = "192.0.2.7".parse().unwrap();
                let ask = |user: &'static str, password: &'static str| Request {
                    client: "192.0.2.7",
                    secured: true,
                    authzid: "",
                    user,
                    password,
                };
                assert_eq!(sasl.check(&ask("alice", "secret"), ip, 0).await, Outcome::Valid("alice".into()));
                assert_eq!(sasl.check(&ask("Alice", "secret"), ip, 0).await, Outcome::Valid("Alice".into()));
                assert_eq!(sasl.check(&ask("alice", "wrong"), ip, 0).await, Outcome::Invalid);
                assert_eq!(sasl.check(&ask("bob", "secret"), ip, 1).await, Outcome::Blocked, "the session's 2nd");
                // Two failures so far from this address; the third reaches the limit.
                assert_eq!(sasl.check(&ask("alice", "nope"), ip, 0).await, Outcome::Blocked);
                assert_eq!(sasl.check(&ask("alice", "secret"), ip, 0).await, Outcome::Blocked, "until the window ends");
                let other: IpAddr = "192.0.2.8".parse().unwrap();
                assert_eq!(sasl.check(&ask("alice", "secret"), other, 0).await, Outcome::Valid("alice".into()));
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn sender_login_maps_by_address_then_domain() {
        let dir = crate::testing::tempdir("sasl-logins");
        let sasl = sasl_with(&dir, "x:$6$a$b\n", Some("alice@example.org alice, carol\n@example.net admin\n"));
        assert_eq!(sasl.sender_allowed("alice", "Alice@Example.org"), Ok(true));
        assert_eq!(sasl.sender_allowed("carol", "alice@example.org"), Ok(true));
        assert_eq!(sasl.sender_allowed("bob", "alice@example.org"), Ok(false));
        assert_eq!(sasl.sender_allowed("admin", "anyone@example.net"), Ok(true));
        assert_eq!(sasl.sender_allowed("alice", "alice@elsewhere.test"), Ok(false), "owned by no one");
    }
}
