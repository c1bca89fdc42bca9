//! Reload: what SIGHUP and `ringpost reload` change on a running server.
//! The configuration is read again and every part that can change without
//! a restart is rebuilt and installed: the routers and their tables, the
//! access tables and the Sieve filters (process-wide, `crate::route`,
//! `crate::access`, `crate::ingress::filters`), and a new *live*
//! configuration with the TLS server settings built from it, which every
//! shard takes at its next tick (within `SHARD_TICK_MS`): relay, policy,
//! front line, `[smtp]`, `[tls]`, `[email_auth]`, `[[dkim_sign]]`,
//! `[[scanner]]`, transports and delivery settings, domains, `log.level`.
//! New sessions and delivery attempts use the new settings; those under way
//! finish with the ones they started with.
//!
//! The keys of [`RESTART_KEYS`] (listeners, shards, spool, queue format,
//! resolver, callouts, replication, metrics address, delivery's shard-wide
//! limits and connection pool, log destination) are
//! set when the process starts: a reload that changes one keeps the running
//! value, logs `event=reload_needs_restart keys=…` and says so in its
//! answer. A file that does not load, a table, a `before` script or a TLS
//! certificate that does not open keeps everything that is running.
//!
//! Place in the pipeline: beside it. The reload thread (`crate::main`'s
//! watcher) calls [`reload`]; the shards call [`current`] on their tick.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::config::Config;

/// The keys (or whole tables) that are read once at start; [`restart_keys`]
/// names those a new file changes. Everything else is reloaded.
pub const RESTART_KEYS: &[&str] = &[
    "[server]",
    "[queue]",
    "[dns]",
    "[verify]",
    "[replicate]",
    "[metrics]",
    "[[listener]]",
    "[auth] (but sender_login_maps)",
    "delivery.hold_all",
    "delivery.max_concurrent_per_shard",
    "delivery.max_connections_per_shard",
    "delivery.connection_reuse_time",
    "delivery.max_transactions_per_connection",
    "delivery.tls_ca_file",
    "delivery.mta_sts",
    "delivery.mta_sts_ca_file",
    "delivery.dane",
    "policy.ipv6_prefix_len",
    "policy.client_table_entries",
    "log.format",
    "log.syslog",
    "log.syslog_socket",
];

/// What shards run with since the newest reload (or the start).
pub struct Live {
    /// The number of the reload that installed it (0: the start).
    pub generation: u64,
    pub config: Arc<Config>,
    /// The server side of STARTTLS; None when `tls.cert` is unset.
    pub tls_server: Option<Arc<rustls::ServerConfig>>,
    /// Shards that took this generation.
    applied: AtomicUsize,
}

static LIVE: RwLock<Option<Arc<Live>>> = RwLock::new(None);
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The configuration a shard checks for a new generation this often.
pub const SHARD_TICK_MS: u64 = 100;
/// How long a reload waits for every shard to take the new settings.
const APPLY_WAIT_MS_MAX: u64 = 5_000;

/// The TLS server settings of `config`, or None when no certificate is set.
pub fn tls_server(config: &Config) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
    match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => Ok(Some(crate::tls::server_config(cert, key).map_err(|e| format!("tls: {e}"))?)),
        _ => Ok(None),
    }
}

/// Installs the settings the process starts with (generation 0).
pub fn start(config: Arc<Config>, tls_server: Option<Arc<rustls::ServerConfig>>) {
    GENERATION.store(0, Ordering::Release);
    set_log_level(&config);
    *LIVE.write().expect("live configuration lock") =
        Some(Arc::new(Live { generation: 0, config, tls_server, applied: AtomicUsize::new(0) }));
}

/// The newest generation's number: a shard that has taken it has nothing to do.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// The newest settings, when any were installed.
pub fn current() -> Option<Arc<Live>> {
    LIVE.read().expect("live configuration lock").clone()
}

/// A shard says it took `live`.
pub fn applied(live: &Live) {
    live.applied.fetch_add(1, Ordering::AcqRel);
}

/// The restart-only keys whose values differ between `running` and `new`.
pub fn restart_keys(running: &Config, new: &Config) -> Vec<&'static str> {
    let changed = [
        running.server != new.server,
        running.queue != new.queue,
        running.dns != new.dns,
        running.verify != new.verify,
        running.replicate != new.replicate,
        running.metrics != new.metrics,
        running.listeners != new.listeners,
        sasl_but_logins(running) != sasl_but_logins(new),
        running.delivery.hold_all != new.delivery.hold_all,
        running.delivery.max_concurrent_per_shard != new.delivery.max_concurrent_per_shard,
        running.delivery.max_connections_per_shard != new.delivery.max_connections_per_shard,
        running.delivery.connection_reuse_time != new.delivery.connection_reuse_time,
        running.delivery.max_transactions_per_connection != new.delivery.max_transactions_per_connection,
        running.delivery.tls_ca_file != new.delivery.tls_ca_file,
        running.delivery.mta_sts != new.delivery.mta_sts,
        running.delivery.mta_sts_ca_file != new.delivery.mta_sts_ca_file,
        running.delivery.dane != new.delivery.dane,
        running.policy.ipv6_prefix_len != new.policy.ipv6_prefix_len,
        running.policy.client_table_entries != new.policy.client_table_entries,
        running.log.format != new.log.format,
        running.log.syslog != new.log.syslog,
        running.log.syslog_socket != new.log.syslog_socket,
    ];
    const _: () = assert!(RESTART_KEYS.len() == 22);
    RESTART_KEYS.iter().zip(changed).filter(|(_, changed)| *changed).map(|(key, _)| *key).collect()
}

/// `[auth]` without the key a reload changes.
fn sasl_but_logins(config: &Config) -> Option<crate::config::Sasl> {
    config.sasl.clone().map(|sasl| crate::config::Sasl { sender_login_maps: None, ..sasl })
}

/// `new` with the restart-only keys of `running`: what a reload installs.
pub fn merged(running: &Config, mut new: Config) -> Config {
    new.server = running.server.clone();
    new.queue = running.queue.clone();
    new.dns = running.dns.clone();
    new.verify = running.verify.clone();
    new.replicate = running.replicate.clone();
    new.metrics = running.metrics.clone();
    new.listeners = running.listeners.clone();
    // The AUTH back end is built at start; its sender login map is reloaded.
    let logins = new.sasl.as_ref().and_then(|sasl| sasl.sender_login_maps.clone());
    new.sasl = running.sasl.clone();
    if let Some(sasl) = new.sasl.as_mut() {
        sasl.sender_login_maps = logins;
    }
    new.delivery.hold_all = running.delivery.hold_all;
    new.delivery.max_concurrent_per_shard = running.delivery.max_concurrent_per_shard;
    new.delivery.max_connections_per_shard = running.delivery.max_connections_per_shard;
    new.delivery.connection_reuse_time = running.delivery.connection_reuse_time;
    new.delivery.max_transactions_per_connection = running.delivery.max_transactions_per_connection;
    new.delivery.tls_ca_file = running.delivery.tls_ca_file.clone();
    new.delivery.mta_sts = running.delivery.mta_sts;
    new.delivery.mta_sts_ca_file = running.delivery.mta_sts_ca_file.clone();
    new.delivery.dane = running.delivery.dane;
    new.policy.ipv6_prefix_len = running.policy.ipv6_prefix_len;
    new.policy.client_table_entries = running.policy.client_table_entries;
    new.log.format = running.log.format.clone();
    new.log.syslog = running.log.syslog;
    new.log.syslog_socket = running.log.syslog_socket.clone();
    debug_assert!(restart_keys(running, &new).is_empty());
    new
}

/// Installs `config` (already loaded from the file): builds every reloadable
/// part first, so that one that fails keeps all that runs, then installs
/// them and waits (a few seconds at most) for the shards to take the new
/// generation. The answer says what changed and which changes wait for a
/// restart.
pub fn reload(config: Config) -> Result<String, String> {
    let running = current().ok_or("the server has not started")?;
    let restart = restart_keys(&running.config, &config);
    let config = merged(&running.config, config);
    // The access tables are opened first: a broken one keeps the routers
    // and the tables in use alike.
    let access = crate::access::Access::open(&config.policy)?;
    let filters = crate::ingress::filters::Filters::open(&config)?;
    let sender_logins = crate::sasl::SenderLogins::open(&config)?;
    let tls_server = tls_server(&config)?;
    for key in &config.dkim_sign {
        crate::auth::sign::Signer::load(key)?;
    }
    let engine = crate::route::Engine::build(&config)?;
    crate::route::install(Arc::new(engine));
    crate::access::install(Arc::new(access));
    crate::ingress::filters::install(filters.map(Arc::new));
    if let Some(sasl) = crate::sasl::current() {
        sasl.set_sender_logins(sender_logins);
    }
    set_log_level(&config);
    let shards = config.shard_count();
    let routers = config.routers.len();
    let generation = GENERATION.load(Ordering::Acquire) + 1;
    let live = Arc::new(Live { generation, config: Arc::new(config), tls_server, applied: AtomicUsize::new(0) });
    *LIVE.write().expect("live configuration lock") = Some(live.clone());
    GENERATION.store(generation, Ordering::Release);
    let deadline = Instant::now() + Duration::from_millis(APPLY_WAIT_MS_MAX);
    while live.applied.load(Ordering::Acquire) < shards && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let taken = live.applied.load(Ordering::Acquire);
    let restart_text = restart.join(",");
    crate::log::event(
        "reload",
        &[("generation", &generation), ("routers", &routers), ("shards", &taken), ("needs_restart", &restart_text)],
    );
    if !restart.is_empty() {
        crate::log::event("reload_needs_restart", &[("keys", &restart_text), ("kept", &"running values")]);
    }
    let mut answer =
        format!("reloaded: generation {generation}, {routers} routers, taken by {taken} of {shards} shards");
    if !restart.is_empty() {
        answer.push_str(&format!("; changed keys that need a restart (running values kept): {}", restart.join(", ")));
    }
    Ok(answer)
}

/// `log.level` of `config` for every later line.
fn set_log_level(config: &Config) {
    crate::log::set_level(if config.log.level == "warning" {
        crate::log::Level::Warning
    } else {
        crate::log::Level::Info
    });
}

/// The comment `check-config` prints after the configuration: which keys a
/// reload does not change.
pub fn restart_note() -> String {
    let mut text =
        String::from("\n# SIGHUP and `ringpost reload` re-read every key except these, which need a restart:\n");
    for key in RESTART_KEYS {
        text.push_str("#   ");
        text.push_str(key);
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_keys_name_what_changed_and_merged_keeps_the_running_values() {
        let running = Config::default();
        let mut new = Config::default();
        assert!(restart_keys(&running, &new).is_empty());
        new.server.max_sessions_per_shard += 1;
        new.log.syslog = !running.log.syslog;
        new.relay.networks.clear();
        new.smtp.max_recipients += 1;
        assert_eq!(restart_keys(&running, &new), ["[server]", "log.syslog"]);
        let merged = merged(&running, new.clone());
        assert_eq!(merged.server, running.server);
        assert_eq!(merged.log.syslog, running.log.syslog);
        // What a reload changes is kept from the new file.
        assert_eq!(merged.smtp.max_recipients, new.smtp.max_recipients);
        assert_eq!(merged.relay.networks, new.relay.networks);
    }

    #[test]
    fn every_restart_key_is_named_in_the_check_config_note() {
        let note = restart_note();
        for key in RESTART_KEYS {
            assert!(note.contains(key), "{key}");
        }
        assert!(note.lines().all(|l| l.is_empty() || l.starts_with('#')), "the note stays a TOML comment");
    }
}
