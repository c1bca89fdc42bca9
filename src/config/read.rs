//! Reads the typed `Config` out of the merged source tree (`source.rs`):
//! refuses unknown keys, checks every value's type, validates it, and fills
//! every key that is absent from the defaults. Each error names the origin of
//! the value it refuses and its dotted key.
//!
//! Place in the pipeline: the second step of loading the configuration at
//! start-up: text -> `Table` (`source.rs`) -> `Config` (here).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use super::error::ConfigError;
use super::source::{Node, Table, Value};
use super::types::{check_host_name, check_smarthost};
use super::{
    BareLf, Cidr, Config, Delivery, Dns, Domains, Duration, Local, Nul, Queue, Relay, Server, Smtp, Tls, TlsPolicy,
    TransportKind, TransportRule,
};
use super::{
    Callout, CalloutSender, Dnsbl, DnsblAction, Driver, FrontPolicy, HeloAction, HeloCheck, HeloMatch, OnFailure,
    Policy, Replicate, ReverseDns, Route, Router, Scanner, ScannerKind, Score, Verify,
};

/// Most shards a configuration may ask for; far above any core count we run
/// on, low enough that a typing slip does not start a million threads.
pub const SHARD_COUNT_MAX: usize = 1024;

/// Most retry runners a shard runs.
const RETRY_LAGS_MAX: usize = 16;
/// Smallest segment: the header and a batch with a small envelope.
const SEGMENT_SIZE_BYTES_CONFIG_MIN: u64 = queue_format::SEGMENT_SIZE_BYTES_MIN;
/// Longest commit delay: 100 ms.
const COMMIT_DELAY_US_MAX: u32 = 100_000;

const ROOT_KEYS: &[&str] = &[
    "server",
    "smtp",
    "domains",
    "local",
    "relay",
    "delivery",
    "dns",
    "tls",
    "queue",
    "transport",
    "route",
    "router",
    "pool",
    "verify",
    "scanner",
    "replicate",
    "policy",
    "dnsbl",
    "helo_check",
    "email_auth",
    "dkim_sign",
    "sieve",
    "log",
    "metrics",
    "listener",
    "auth",
];
pub(super) const ROUTE_KEYS: &[&str] = &[
    "max_rewrites",
    "max_alias_depth",
    "max_expansion",
    "subaddress_separators",
    "verify_sender",
    "cache_ttl",
    "cache_entries",
    "sqlite_max_in_flight",
];
pub(super) const ROUTER_KEYS: &[&str] = &[
    "name",
    "driver",
    "domains",
    "local_parts",
    "senders",
    "file",
    "source",
    "query",
    "rules",
    "host",
    "transport",
    "pool",
    "verify",
    "callout_random",
    "callout_sender",
    "callout_defer_ok",
];
pub(super) const SCANNER_KEYS: &[&str] = &[
    "name",
    "kind",
    "address",
    "timeout",
    "max_concurrent",
    "queue_max",
    "on_failure",
    "max_size_bytes",
    "reject_score",
    "command",
    "user",
    "group",
];
/// Most `[[scanner]]` tables.
const SCANNERS_MAX: usize = 16;
pub(super) const POLICY_KEYS: &[&str] = &[
    "dnsbl_threshold",
    "dnsbl_action",
    "dnsbl_timeout",
    "greet_pause",
    "strict_pipelining",
    "helo_require",
    "helo_reject_own_name",
    "helo_reject_ip_mismatch",
    "helo_reject_invalid",
    "reverse_dns",
    "ipv6_prefix_len",
    "max_sessions_per_client",
    "max_connections_per_minute",
    "max_messages_per_minute",
    "max_recipients_per_minute",
    "exempt_networks",
    "client_table_entries",
    "client_access",
    "helo_access",
    "sender_access",
    "recipient_access",
];
pub(super) const DNSBL_KEYS: &[&str] = &["zone", "answers", "weight"];
pub(super) const HELO_CHECK_KEYS: &[&str] = &["pattern", "name", "action", "text"];
pub(super) const REPLICATE_KEYS: &[&str] = &["peer", "timeout", "on_failure", "takeover_after", "accept_from"];
pub(super) const VERIFY_KEYS: &[&str] = &[
    "callout_timeout",
    "callout_positive_ttl",
    "callout_negative_ttl",
    "callout_cache_entries",
    "callout_max_per_host",
    "callout_rate_per_domain",
];
/// Most cached callout results per shard.
const CALLOUT_CACHE_ENTRIES_MAX: usize = 100_000_000;
/// Longest callout timeout: a client gives up on a RCPT after 5 minutes (RFC 5321 §4.5.3.2.3).
const CALLOUT_TIMEOUT_MAX: std::time::Duration = std::time::Duration::from_secs(300);
pub(super) const POOL_KEYS: &[&str] = &["max_connections", "queue_max", "timeout"];
/// Most routers in one configuration.
const ROUTERS_MAX: usize = 256;
/// Most inline rewrite rules (a longer list belongs in a file).
const RULES_INLINE_MAX: usize = 10_000;
pub(super) const SERVER_KEYS: &[&str] = &[
    "hostname",
    "listen",
    "shards",
    "pin",
    "max_sessions_per_shard",
    "drain_timeout",
    "control_socket",
    "user",
    "allow_root",
];
pub(super) const SMTP_KEYS: &[&str] = &[
    "greeting",
    "max_recipients",
    "max_message_bytes",
    "max_text_line_bytes",
    "max_errors",
    "command_timeout",
    "data_timeout",
    "bare_lf",
    "nul",
];
pub(super) const DOMAINS_KEYS: &[&str] = &["local"];
pub(super) const LOCAL_KEYS: &[&str] = &["maildir"];
pub(super) const RELAY_KEYS: &[&str] = &["networks", "domains"];
pub(super) const DELIVERY_KEYS: &[&str] = &[
    "smarthost",
    "helo_name",
    "port",
    "max_concurrent_per_shard",
    "connect_timeout",
    "max_connections_per_destination",
    "max_connections_per_shard",
    "connection_reuse_time",
    "max_transactions_per_connection",
    "tls",
    "early_ms",
    "hold_all",
    "chunking",
    "source_address",
    "tls_ca_file",
    "mta_sts",
    "mta_sts_ca_file",
    "dane",
];
/// Longest early delivery: a client waits this long for its reply.
const EARLY_MS_MAX: u32 = 60_000;
pub(super) const TLS_KEYS: &[&str] = &["cert", "key"];
pub(super) const TRANSPORT_KEYS: &[&str] = &[
    "domains",
    "transport",
    "nexthop",
    "tls",
    "source_address",
    "helo_name",
    "max_connections",
    "command",
    "user",
    "group",
    "timeout",
    "maildir",
    "verify",
    "callout_random",
    "callout_sender",
    "callout_defer_ok",
];
/// Most `[[transport]]` rules.
const TRANSPORT_RULES_MAX: usize = 10_000;
pub(super) const DNS_KEYS: &[&str] = &["servers", "timeout", "attempts", "dnssec_trusted"];
/// Most name servers `dns.servers` may list.
const DNS_SERVER_COUNT_MAX: usize = crate::dns::SERVER_COUNT_MAX;
/// Longest DNS query timeout.
const DNS_TIMEOUT_MAX: std::time::Duration = std::time::Duration::from_secs(60);
/// Most rounds over the name servers.
const DNS_ATTEMPTS_MAX: u32 = 10;
pub(super) const QUEUE_KEYS: &[&str] =
    &["spool", "retry_lags", "max_age", "inline_max_bytes", "segment_size_bytes", "commit_delay_us", "body_sync", "body_store", "delay_warning_after"];

type Result<T> = std::result::Result<T, ConfigError>;

mod submission;
use submission::AUTH_KEYS;

/// One table of the configuration (`[server]`, …), possibly absent.
struct Section<'a> {
    name: &'static str,
    table: Option<&'a Table>,
}

impl<'a> Section<'a> {
    /// Finds table `name` in `root`, refusing a non-table value and unknown keys.
    fn open(root: &'a Table, name: &'static str, known: &[&str]) -> Result<Section<'a>> {
        let table = match root.get(name) {
            None => None,
            Some(entry) => match &entry.node.value {
                Value::Table(table) => Some(table),
                other => return Err(wrong_type(&entry.node, name, "a table", other)),
            },
        };
        if let Some(table) = table {
            refuse_unknown_keys(table, name, known)?;
        }
        Ok(Section { name, table })
    }

    fn node(&self, key: &str) -> Option<&'a Node> {
        self.table.and_then(|table| table.get(key)).map(|entry| &entry.node)
    }

    /// The value of `key` read by `convert`, or `default` when absent.
    fn read<T>(&self, key: &str, default: T, convert: impl Fn(&Node, &str) -> Result<T>) -> Result<T> {
        match self.node(key) {
            None => Ok(default),
            Some(node) => convert(node, &format!("{}.{key}", self.name)),
        }
    }
}

fn refuse_unknown_keys(table: &Table, prefix: &str, known: &[&str]) -> Result<()> {
    match table.entries.iter().find(|entry| !known.contains(&entry.key.as_str())) {
        None => Ok(()),
        Some(entry) => {
            let key = if prefix.is_empty() { entry.key.clone() } else { format!("{prefix}.{}", entry.key) };
            Err(ConfigError::UnknownKey { origin: entry.key_origin.clone(), key })
        }
    }
}

fn wrong_type(node: &Node, key: &str, expected: &'static str, found: &Value) -> ConfigError {
    ConfigError::WrongType { origin: node.origin.clone(), key: key.to_string(), expected, found: found.type_name() }
}

fn invalid(node: &Node, key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { origin: node.origin.clone(), key: key.to_string(), reason: reason.into() }
}

fn ensure(condition: bool, node: &Node, key: &str, reason: &str) -> Result<()> {
    if condition {
        Ok(())
    } else {
        Err(invalid(node, key, reason))
    }
}

fn string(node: &Node, key: &str) -> Result<String> {
    match &node.value {
        Value::String(s) => Ok(s.clone()),
        other => Err(wrong_type(node, key, "a string", other)),
    }
}

fn boolean(node: &Node, key: &str) -> Result<bool> {
    match &node.value {
        Value::Boolean(b) => Ok(*b),
        other => Err(wrong_type(node, key, "a boolean", other)),
    }
}

/// A non-negative integer that fits `T`.
fn integer<T: TryFrom<i64>>(node: &Node, key: &str) -> Result<T> {
    match &node.value {
        Value::Integer(i) if *i < 0 => Err(invalid(node, key, &format!("must not be negative, got {i}"))),
        Value::Integer(i) => T::try_from(*i).map_err(|_| invalid(node, key, &format!("{i} is too large"))),
        other => Err(wrong_type(node, key, "an integer", other)),
    }
}

/// A positive integer that fits `T`.
fn positive<T: TryFrom<i64>>(node: &Node, key: &str) -> Result<T> {
    if let Value::Integer(0) = node.value {
        return Err(invalid(node, key, "must be at least 1"));
    }
    integer(node, key)
}

/// A duration string (`"30s"`) or an integer number of seconds.
fn duration(node: &Node, key: &str) -> Result<Duration> {
    match &node.value {
        Value::String(text) => Duration::from_str(text).map_err(|reason| invalid(node, key, reason)),
        Value::Integer(_) => Ok(Duration::from_secs(integer(node, key)?)),
        other => Err(wrong_type(node, key, "a duration (\"30s\") or an integer of seconds", other)),
    }
}

/// A duration greater than zero.
fn duration_nonzero(node: &Node, key: &str) -> Result<Duration> {
    let value = duration(node, key)?;
    ensure(!value.0.is_zero(), node, key, "must be longer than 0s")?;
    Ok(value)
}

fn array<T>(node: &Node, key: &str, element: impl Fn(&Node, &str) -> Result<T>) -> Result<Vec<T>> {
    match &node.value {
        Value::Array(elements) => {
            elements.iter().enumerate().map(|(index, node)| element(node, &format!("{key}[{index}]"))).collect()
        }
        other => Err(wrong_type(node, key, "an array", other)),
    }
}

fn nonempty_array<T>(node: &Node, key: &str, element: impl Fn(&Node, &str) -> Result<T>) -> Result<Vec<T>> {
    let values = array(node, key, element)?;
    ensure(!values.is_empty(), node, key, "must not be empty")?;
    Ok(values)
}

fn host_name(node: &Node, key: &str) -> Result<String> {
    let name = string(node, key)?;
    check_host_name(&name).map_err(|reason| invalid(node, key, reason))?;
    Ok(name)
}

fn socket_addr(node: &Node, key: &str) -> Result<SocketAddr> {
    let text = string(node, key)?;
    text.parse().map_err(|_| {
        invalid(
            node,
            key,
            format!("bad socket address {text:?}: expected \"ip:port\" such as \"0.0.0.0:25\" or \"[::]:25\""),
        )
    })
}

fn cidr(node: &Node, key: &str) -> Result<Cidr> {
    let text = string(node, key)?;
    Cidr::from_str(&text).map_err(|reason| invalid(node, key, reason))
}

fn path(node: &Node, key: &str) -> Result<PathBuf> {
    let text = string(node, key)?;
    ensure(!text.is_empty(), node, key, "must not be empty")?;
    Ok(PathBuf::from(text))
}

/// A user name for `server.user`: what `useradd` accepts (letters, digits,
/// `_`, `-`, `.`, not starting with `-`), at most 32 characters.
fn user_name(node: &Node, key: &str) -> Result<String> {
    let name = string(node, key)?;
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    ensure(
        name.len() <= USER_NAME_BYTES_MAX && !name.starts_with('-') && name.chars().all(allowed),
        node,
        key,
        &format!("must be a user name (letters, digits, '_', '-', '.'; at most {USER_NAME_BYTES_MAX} characters)"),
    )?;
    Ok(name)
}

/// Longest `server.user` (the limit of `useradd`).
const USER_NAME_BYTES_MAX: usize = 32;

/// Text sent on one SMTP reply line: no CR, LF or other control characters.
fn reply_text(node: &Node, key: &str) -> Result<String> {
    let text = string(node, key)?;
    ensure(!text.chars().any(char::is_control), node, key, "must not contain control characters (CR, LF, …)")?;
    Ok(text)
}

/// An optional string; the empty string means unset (so `--set key=""` can
/// clear what the file set).
fn optional<T>(node: &Node, key: &str, convert: impl Fn(&Node, &str) -> Result<T>) -> Result<Option<T>> {
    match &node.value {
        Value::String(s) if s.is_empty() => Ok(None),
        _ => convert(node, key).map(Some),
    }
}

/// Builds the configuration from `root`, taking every absent key from `defaults`.
pub fn read_config(root: &Table, defaults: Config) -> Result<Config> {
    refuse_unknown_keys(root, "", ROOT_KEYS)?;
    Ok(Config {
        server: read_server(&Section::open(root, "server", SERVER_KEYS)?, defaults.server)?,
        smtp: read_smtp(&Section::open(root, "smtp", SMTP_KEYS)?, defaults.smtp)?,
        domains: read_domains(&Section::open(root, "domains", DOMAINS_KEYS)?, defaults.domains)?,
        local: read_local(&Section::open(root, "local", LOCAL_KEYS)?, defaults.local)?,
        relay: read_relay(&Section::open(root, "relay", RELAY_KEYS)?, defaults.relay)?,
        delivery: read_delivery(&Section::open(root, "delivery", DELIVERY_KEYS)?, defaults.delivery)?,
        dns: read_dns(&Section::open(root, "dns", DNS_KEYS)?, defaults.dns)?,
        tls: read_tls(&Section::open(root, "tls", TLS_KEYS)?, defaults.tls)?,
        queue: read_queue(&Section::open(root, "queue", QUEUE_KEYS)?, defaults.queue)?,
        transports: match root.get("transport") {
            None => defaults.transports,
            Some(entry) => read_transports(&entry.node)?,
        },
        route: read_route(&Section::open(root, "route", ROUTE_KEYS)?, defaults.route)?,
        routers: match root.get("router") {
            None => defaults.routers,
            Some(entry) => read_routers(&entry.node)?,
        },
        pools: match root.get("pool") {
            None => defaults.pools,
            Some(entry) => read_pools(&entry.node)?,
        },
        verify: read_verify(&Section::open(root, "verify", VERIFY_KEYS)?, defaults.verify)?,
        replicate: read_replicate(&Section::open(root, "replicate", REPLICATE_KEYS)?, defaults.replicate)?,
        policy: read_policy(&Section::open(root, "policy", POLICY_KEYS)?, defaults.policy)?,
        scanners: match root.get("scanner") {
            None => defaults.scanners,
            Some(entry) => read_scanners(&entry.node)?,
        },
        dnsbls: match root.get("dnsbl") {
            None => defaults.dnsbls,
            Some(entry) => read_dnsbls(&entry.node)?,
        },
        helo_checks: match root.get("helo_check") {
            None => defaults.helo_checks,
            Some(entry) => read_helo_checks(&entry.node)?,
        },
        email_auth: match root.get("email_auth") {
            None => defaults.email_auth,
            Some(_) => Some(read_email_auth(
                &Section::open(root, "email_auth", EMAIL_AUTH_KEYS)?,
                defaults.email_auth.unwrap_or_default(),
            )?),
        },
        dkim_sign: match root.get("dkim_sign") {
            None => defaults.dkim_sign,
            Some(entry) => read_dkim_sign(&entry.node)?,
        },
        log: read_log(&Section::open(root, "log", LOG_KEYS)?, defaults.log)?,
        sieve: match root.get("sieve") {
            None => defaults.sieve,
            Some(entry) => Some(read_sieve(
                &entry.node,
                &Section::open(root, "sieve", SIEVE_KEYS)?,
                defaults.sieve.unwrap_or_default(),
            )?),
        },
        metrics: read_metrics(&Section::open(root, "metrics", METRICS_KEYS)?, defaults.metrics)?,
        listeners: defaults.listeners,
        sasl: defaults.sasl,
    })
    .and_then(|config| read_submission(root, config))
}

/// `[auth]` and `[[listener]]`, read last: a listener is checked against
/// `tls.cert` and `[auth]`. With listeners and no `server.listen` in the
/// file, `server.listen` is empty.
fn read_submission(root: &Table, mut config: Config) -> Result<Config> {
    if let Some(entry) = root.get("auth") {
        config.sasl = Some(submission::read_auth(&entry.node, &Section::open(root, "auth", AUTH_KEYS)?)?);
    }
    let tls_configured = config.tls.cert.is_some() && config.tls.key.is_some();
    if let Some(entry) = root.get("listener") {
        config.listeners = submission::read_listeners(&entry.node, tls_configured, config.sasl.is_some())?;
        let listen_given = Section::open(root, "server", SERVER_KEYS)?.node("listen").is_some();
        if !listen_given {
            config.server.listen.clear();
        }
    }
    if let Some(entry) = root.get("server").filter(|_| config.server.listen.is_empty() && config.listeners.is_empty()) {
        let node = Section::open(root, "server", SERVER_KEYS)?.node("listen").unwrap_or(&entry.node);
        return Err(invalid(node, "server.listen", "must not be empty"));
    }
    let mut addresses: Vec<SocketAddr> = config.server.listen.clone();
    for listener in &config.listeners {
        if addresses.contains(&listener.address) {
            let node = &root.get("listener").expect("listeners were read from it").node;
            return Err(invalid(node, "listener", format!("{} is also in server.listen", listener.address)));
        }
        addresses.push(listener.address);
    }
    Ok(config)
}

/// The elements of an array of tables `[[name]]`, each with its key prefix
/// (`name[i]`), unknown keys refused, at most `max` of them.
fn tables_of<'a>(node: &'a Node, name: &str, known: &[&str], max: usize) -> Result<Vec<(&'a Node, &'a Table, String)>> {
    let Value::Array(elements) = &node.value else {
        return Err(wrong_type(node, name, "an array of tables ([[…]])", &node.value));
    };
    ensure(elements.len() <= max, node, name, &format!("at most {max} tables"))?;
    let mut tables = Vec::with_capacity(elements.len());
    for (index, element) in elements.iter().enumerate() {
        let prefix = format!("{name}[{index}]");
        let Value::Table(table) = &element.value else {
            return Err(wrong_type(element, &prefix, "a table", &element.value));
        };
        refuse_unknown_keys(table, &prefix, known)?;
        tables.push((element, table, prefix));
    }
    Ok(tables)
}

/// Most `[[dnsbl]]` tables (each is one query per new client).
const DNSBLS_MAX: usize = crate::frontline::DNSBLS_MAX;
/// Most `[[helo_check]]` tables.
const HELO_CHECKS_MAX: usize = 256;
/// Longest `[[helo_check]]` pattern.
const HELO_PATTERN_BYTES_MAX: usize = 1024;

/// `[[dnsbl]]`: DNS lists and allowlists with their weights.
fn read_dnsbls(node: &Node) -> Result<Vec<Dnsbl>> {
    let mut dnsbls: Vec<Dnsbl> = Vec::new();
    for (element, table, prefix) in tables_of(node, "dnsbl", DNSBL_KEYS, DNSBLS_MAX)? {
        let get = |key: &str| table.get(key).map(|entry| (&entry.node, format!("{prefix}.{key}")));
        let (node, key) = get("zone").ok_or_else(|| invalid(element, &prefix, "a dnsbl needs zone"))?;
        let zone = string(node, &key)?.trim_end_matches('.').to_ascii_lowercase();
        check_host_name(&zone).map_err(|reason| invalid(node, &key, reason))?;
        ensure(!dnsbls.iter().any(|d| d.zone == zone), node, &key, "this zone is listed above")?;
        let answers = match get("answers") {
            None => Vec::new(),
            Some((node, key)) => array(node, &key, |node, key| {
                let text = string(node, key)?;
                crate::frontline::dnsbl::parse_answer_range(&text).map_err(|reason| invalid(node, key, reason))
            })?,
        };
        let weight = match get("weight") {
            None => 1,
            Some((node, key)) => match node.value {
                Value::Integer(w) if w.abs() <= 1_000_000 => w,
                Value::Integer(_) => return Err(invalid(node, &key, "between -1000000 and 1000000")),
                ref other => return Err(wrong_type(node, &key, "an integer", other)),
            },
        };
        dnsbls.push(Dnsbl { zone, answers, weight });
    }
    Ok(dnsbls)
}

/// `[[helo_check]]`: HELO name rules, first match wins.
fn read_helo_checks(node: &Node) -> Result<Vec<HeloCheck>> {
    let mut checks = Vec::new();
    for (element, table, prefix) in tables_of(node, "helo_check", HELO_CHECK_KEYS, HELO_CHECKS_MAX)? {
        let get = |key: &str| table.get(key).map(|entry| (&entry.node, format!("{prefix}.{key}")));
        let matcher = match (get("pattern"), get("name")) {
            (Some((node, key)), None) => {
                let pattern = string(node, &key)?;
                ensure(pattern.len() <= HELO_PATTERN_BYTES_MAX, node, &key, "at most 1024 bytes")?;
                crate::frontline::helo::compile(&pattern).map_err(|reason| invalid(node, &key, reason))?;
                HeloMatch::Pattern(pattern)
            }
            (None, Some((node, key))) => {
                let name = string(node, &key)?;
                ensure(!name.is_empty() && name.len() <= 255, node, &key, "1 to 255 bytes")?;
                HeloMatch::Name(name.to_ascii_lowercase())
            }
            (Some((node, key)), Some(_)) => return Err(invalid(node, &key, "give pattern or name, not both")),
            (None, None) => return Err(invalid(element, &prefix, "a helo_check needs pattern or name")),
        };
        let action = match get("action") {
            None => HeloAction::Reject,
            Some((node, key)) => match string(node, &key)?.as_str() {
                "reject" => HeloAction::Reject,
                "tag" => HeloAction::Tag,
                other => return Err(invalid(node, &key, format!("must be \"reject\" or \"tag\", not {other:?}"))),
            },
        };
        let text = match get("text") {
            None => crate::frontline::helo::DEFAULT_TEXT.to_string(),
            Some((node, key)) => {
                ensure(action == HeloAction::Reject, node, &key, "only action = \"reject\" has a text")?;
                let text = reply_text(node, &key)?;
                ensure(!text.is_empty() && text.len() <= 400, node, &key, "1 to 400 bytes")?;
                text
            }
        };
        checks.push(HeloCheck { matcher, action, text });
    }
    Ok(checks)
}

/// `[[scanner]]`: content scanners, in order.
fn read_scanners(node: &Node) -> Result<Vec<Scanner>> {
    let Value::Array(elements) = &node.value else {
        return Err(wrong_type(node, "scanner", "an array of tables ([[scanner]])", &node.value));
    };
    ensure(elements.len() <= SCANNERS_MAX, node, "scanner", &format!("at most {SCANNERS_MAX} scanners"))?;
    let mut scanners: Vec<Scanner> = Vec::with_capacity(elements.len());
    for (index, element) in elements.iter().enumerate() {
        let prefix = format!("scanner[{index}]");
        let Value::Table(table) = &element.value else {
            return Err(wrong_type(element, &prefix, "a table", &element.value));
        };
        refuse_unknown_keys(table, &prefix, SCANNER_KEYS)?;
        let get = |key: &str| table.get(key).map(|entry| (&entry.node, format!("{prefix}.{key}")));
        let required = |key: &str| get(key).ok_or_else(|| invalid(element, &prefix, format!("a scanner needs {key}")));
        let (node, key) = required("name")?;
        let name = string(node, &key)?;
        let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
        ensure(ok, node, &key, "letters, digits, _ - . only")?;
        ensure(!scanners.iter().any(|s| s.name == name), node, &key, "a scanner of this name is defined above")?;
        let (node, key) = required("kind")?;
        let kind = match string(node, &key)?.as_str() {
            "spamd" => ScannerKind::Spamd,
            "clamd" => ScannerKind::Clamd,
            "rspamd" => ScannerKind::Rspamd,
            "pipe" => ScannerKind::Pipe,
            other => {
                let known = "\"spamd\", \"clamd\", \"rspamd\" or \"pipe\"";
                return Err(invalid(node, &key, format!("must be {known}, not {other:?}")));
            }
        };
        let opt_string = |key: &str| get(key).map(|(node, key)| string(node, &key)).transpose();
        let (address, command) = if kind == ScannerKind::Pipe {
            if let Some((node, key)) = get("address") {
                return Err(invalid(node, &key, "a pipe scanner runs a command; it has no address"));
            }
            let (node, key) = required("command")?;
            let command = nonempty_array(node, &key, string)?;
            ensure(command[0].starts_with('/'), node, &key, "the program must be an absolute path")?;
            (String::new(), command)
        } else {
            for key in ["command", "user", "group"] {
                if let Some((node, key)) = get(key) {
                    return Err(invalid(node, &key, "only a pipe scanner runs a command"));
                }
            }
            let (node, key) = required("address")?;
            let address = string(node, &key)?;
            address.parse::<crate::scan::content::ScannerAddress>().map_err(|reason| invalid(node, &key, reason))?;
            (address, Vec::new())
        };
        let (user, group) = (opt_string("user")?, opt_string("group")?);
        let timeout = match get("timeout") {
            None => Duration::from_secs(30),
            Some((node, key)) => duration_nonzero(node, &key)?,
        };
        let bounded = |key: &str, default: usize, max: usize| -> Result<usize> {
            match get(key) {
                None => Ok(default),
                Some((node, key)) => {
                    let value: usize = integer(node, &key)?;
                    ensure(value <= max, node, &key, &format!("at most {max}"))?;
                    Ok(value)
                }
            }
        };
        let max_concurrent = bounded("max_concurrent", 8, 10_000)?;
        if let (0, Some((node, key))) = (max_concurrent, get("max_concurrent")) {
            return Err(invalid(node, &key, "at least 1"));
        }
        let queue_max = bounded("queue_max", 64, 100_000)?;
        let on_failure = match get("on_failure") {
            None => OnFailure::Tempfail,
            Some((node, key)) => on_failure(node, &key)?,
        };
        let max_size_bytes = match get("max_size_bytes") {
            None => None,
            Some((node, key)) => Some(positive(node, &key)?),
        };
        let reject_score = match get("reject_score") {
            None => None,
            Some((node, key)) => {
                ensure(kind == ScannerKind::Spamd, node, &key, "only a spamd scanner has a score")?;
                let score = match node.value {
                    Value::Float(f) => f,
                    Value::Integer(i) => i as f64,
                    ref other => return Err(wrong_type(node, &key, "a number", other)),
                };
                ensure(score.is_finite() && score.abs() < 1e9, node, &key, "a finite score")?;
                Some(Score::from_f64(score))
            }
        };
        scanners.push(Scanner {
            name,
            kind,
            address,
            command,
            user,
            group,
            timeout,
            max_concurrent,
            queue_max,
            on_failure,
            max_size_bytes,
            reject_score,
        });
    }
    Ok(scanners)
}

fn on_failure(node: &Node, key: &str) -> Result<OnFailure> {
    match string(node, key)?.as_str() {
        "tempfail" => Ok(OnFailure::Tempfail),
        "accept" => Ok(OnFailure::Accept),
        other => Err(invalid(node, key, format!("must be \"tempfail\" or \"accept\", not {other:?}"))),
    }
}

/// Longest wait of a final dot for the peer's copy.
const REPLICATE_TIMEOUT_MAX: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// `[replicate]`. Without `accept_from`, replicas are taken from the
/// peer's address, which must then be an IP address.
fn read_replicate(section: &Section<'_>, d: Replicate) -> Result<Replicate> {
    let peer = section.read("peer", d.peer, |node, key| {
        optional(node, key, |node, key| {
            let text = string(node, key)?;
            check_smarthost(&text).map_err(|reason| invalid(node, key, reason.replace("smarthost", "peer")))?;
            Ok(text)
        })
    })?;
    let accept_from = match section.node("accept_from") {
        Some(node) => array(node, "replicate.accept_from", cidr)?,
        None => match (&peer, section.node("peer")) {
            (Some(text), Some(node)) => {
                let host = text.rsplit_once(':').map_or("", |(host, _)| host);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let Ok(addr) = host.parse::<std::net::IpAddr>() else {
                    return Err(invalid(
                        node,
                        "replicate.peer",
                        "is a host name: set replicate.accept_from to the networks the peer connects from",
                    ));
                };
                let prefix_len = if addr.is_ipv4() { 32 } else { 128 };
                vec![Cidr { addr, prefix_len }]
            }
            _ => d.accept_from,
        },
    };
    Ok(Replicate {
        peer,
        timeout: section.read("timeout", d.timeout, |node, key| {
            let value = duration_nonzero(node, key)?;
            ensure(value.0 <= REPLICATE_TIMEOUT_MAX, node, key, "at most 5m")?;
            Ok(value)
        })?,
        on_failure: section.read("on_failure", d.on_failure, on_failure)?,
        takeover_after: section.read("takeover_after", d.takeover_after, duration_nonzero)?,
        accept_from,
    })
}

/// `[policy]`.
fn read_policy(section: &Section<'_>, d: Policy) -> Result<Policy> {
    let per_minute = |node: &Node, key: &str| {
        let value: u32 = integer(node, key)?;
        ensure(value <= PER_MINUTE_MAX, node, key, &format!("at most {PER_MINUTE_MAX} (0 = no limit)"))?;
        Ok(value)
    };
    let table = |node: &Node, key: &str| optional(node, key, path);
    Ok(Policy {
        ipv6_prefix_len: section.read("ipv6_prefix_len", d.ipv6_prefix_len, |node, key| {
            let value: u8 = positive(node, key)?;
            ensure(value <= 128, node, key, "at most 128")?;
            Ok(value)
        })?,
        max_sessions_per_client: section.read("max_sessions_per_client", d.max_sessions_per_client, per_minute)?,
        max_connections_per_minute: section.read(
            "max_connections_per_minute",
            d.max_connections_per_minute,
            per_minute,
        )?,
        max_messages_per_minute: section.read("max_messages_per_minute", d.max_messages_per_minute, per_minute)?,
        max_recipients_per_minute: section.read(
            "max_recipients_per_minute",
            d.max_recipients_per_minute,
            per_minute,
        )?,
        exempt_networks: section.read("exempt_networks", d.exempt_networks, |node, key| array(node, key, cidr))?,
        client_table_entries: section.read("client_table_entries", d.client_table_entries, |node, key| {
            let value: usize = positive(node, key)?;
            ensure(value <= CLIENT_TABLE_ENTRIES_MAX, node, key, &format!("at most {CLIENT_TABLE_ENTRIES_MAX}"))?;
            Ok(value)
        })?,
        client_access: section.read("client_access", d.client_access, table)?,
        helo_access: section.read("helo_access", d.helo_access, table)?,
        sender_access: section.read("sender_access", d.sender_access, table)?,
        recipient_access: section.read("recipient_access", d.recipient_access, table)?,
        front: read_front_policy(section, d.front)?,
    })
}

/// Longest `policy.greet_pause` and `policy.dnsbl_timeout`.
const FRONT_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(60);

/// The front line's keys of `[policy]`.
fn read_front_policy(section: &Section<'_>, d: FrontPolicy) -> Result<FrontPolicy> {
    let short = |node: &Node, key: &str, nonzero: bool| -> Result<Duration> {
        let value = if nonzero { duration_nonzero(node, key)? } else { duration(node, key)? };
        ensure(value.0 <= FRONT_WAIT_MAX, node, key, "at most 60s")?;
        Ok(value)
    };
    Ok(FrontPolicy {
        dnsbl_threshold: section.read("dnsbl_threshold", d.dnsbl_threshold, |node, key| match node.value {
            Value::Integer(t) if t.abs() <= 1_000_000 => Ok(t),
            Value::Integer(_) => Err(invalid(node, key, "between -1000000 and 1000000")),
            ref other => Err(wrong_type(node, key, "an integer", other)),
        })?,
        dnsbl_action: section.read("dnsbl_action", d.dnsbl_action, |node, key| match string(node, key)?.as_str() {
            "reject_at_greeting" => Ok(DnsblAction::RejectAtGreeting),
            "reject_at_rcpt" => Ok(DnsblAction::RejectAtRcpt),
            other => {
                Err(invalid(node, key, format!("must be \"reject_at_greeting\" or \"reject_at_rcpt\", not {other:?}")))
            }
        })?,
        dnsbl_timeout: section.read("dnsbl_timeout", d.dnsbl_timeout, |node, key| short(node, key, true))?,
        greet_pause: section.read("greet_pause", d.greet_pause, |node, key| short(node, key, false))?,
        strict_pipelining: section.read("strict_pipelining", d.strict_pipelining, boolean)?,
        helo_require: section.read("helo_require", d.helo_require, boolean)?,
        helo_reject_own_name: section.read("helo_reject_own_name", d.helo_reject_own_name, boolean)?,
        helo_reject_ip_mismatch: section.read("helo_reject_ip_mismatch", d.helo_reject_ip_mismatch, boolean)?,
        helo_reject_invalid: section.read("helo_reject_invalid", d.helo_reject_invalid, boolean)?,
        reverse_dns: section.read("reverse_dns", d.reverse_dns, |node, key| match string(node, key)?.as_str() {
            "off" => Ok(ReverseDns::Off),
            "require" => Ok(ReverseDns::Require),
            "require_forward_confirmed" => Ok(ReverseDns::RequireForwardConfirmed),
            other => Err(invalid(
                node,
                key,
                format!("must be \"off\", \"require\" or \"require_forward_confirmed\", not {other:?}"),
            )),
        })?,
    })
}

/// Largest per-client limit (sessions, or events per minute).
const PER_MINUTE_MAX: u32 = 1_000_000;
/// Most clients the per-client table may be asked to track.
const CLIENT_TABLE_ENTRIES_MAX: usize = 10_000_000;

fn read_verify(section: &Section<'_>, d: Verify) -> Result<Verify> {
    Ok(Verify {
        callout_timeout: section.read("callout_timeout", d.callout_timeout, |node, key| {
            let value = duration_nonzero(node, key)?;
            ensure(value.0 <= CALLOUT_TIMEOUT_MAX, node, key, "at most 5m (a client's own RCPT timeout)")?;
            Ok(value)
        })?,
        callout_positive_ttl: section.read("callout_positive_ttl", d.callout_positive_ttl, duration)?,
        callout_negative_ttl: section.read("callout_negative_ttl", d.callout_negative_ttl, duration)?,
        callout_cache_entries: section.read("callout_cache_entries", d.callout_cache_entries, |node, key| {
            let value: usize = positive(node, key)?;
            ensure(value <= CALLOUT_CACHE_ENTRIES_MAX, node, key, &format!("at most {CALLOUT_CACHE_ENTRIES_MAX}"))?;
            Ok(value)
        })?,
        callout_max_per_host: section.read("callout_max_per_host", d.callout_max_per_host, |node, key| {
            let value: usize = positive(node, key)?;
            ensure(value <= 10_000, node, key, "at most 10000")?;
            Ok(value)
        })?,
        callout_rate_per_domain: section.read("callout_rate_per_domain", d.callout_rate_per_domain, |node, key| {
            let value: u32 = positive(node, key)?;
            ensure(value <= 1_000_000, node, key, "at most 1000000")?;
            Ok(value)
        })?,
    })
}

/// `verify = "callout"` and the `callout_*` options of one rule or router
/// (`get` finds a key of its table with its full name); `allowed` says
/// whether this kind of rule or router can verify by callout (else the
/// reason it cannot).
fn read_callout<'a>(
    get: impl Fn(&str) -> Option<(&'a Node, String)>,
    element: &Node,
    prefix: &str,
    allowed: std::result::Result<(), String>,
) -> Result<Option<Callout>> {
    let options = ["callout_random", "callout_sender", "callout_defer_ok"];
    let Some((node, key)) = get("verify") else {
        if let Some((node, key)) = options.iter().find_map(|option| get(option)) {
            return Err(invalid(node, &key, "callout options need verify = \"callout\""));
        }
        return Ok(None);
    };
    match string(node, &key)?.as_str() {
        "callout" => {}
        "none" => {
            return match options.iter().find_map(|option| get(option)) {
                Some((node, key)) => Err(invalid(node, &key, "callout options need verify = \"callout\"")),
                None => Ok(None),
            }
        }
        other => return Err(invalid(node, &key, format!("must be \"callout\" or \"none\", not {other:?}"))),
    }
    allowed.map_err(|reason| invalid(element, prefix, reason))?;
    let random = match get("callout_random") {
        None => false,
        Some((node, key)) => boolean(node, &key)?,
    };
    let defer_ok = match get("callout_defer_ok") {
        None => false,
        Some((node, key)) => boolean(node, &key)?,
    };
    let sender = match get("callout_sender") {
        None => CalloutSender::Null,
        Some((node, key)) => match string(node, &key)?.as_str() {
            "<>" | "" => CalloutSender::Null,
            "use-sender" => CalloutSender::UseSender,
            text => {
                let address = crate::queue::stored_address(text.trim_start_matches('<').trim_end_matches('>'))
                    .map_err(|e| invalid(node, &key, format!("\"<>\", \"use-sender\" or an address: {e}")))?;
                ensure(address.domain.is_some(), node, &key, "the address needs a domain")?;
                CalloutSender::Address(address.to_string())
            }
        },
    };
    Ok(Some(Callout { random, sender, defer_ok }))
}

/// `[[transport]]`: an array of tables, each checked for its transport's keys.
fn read_transports(node: &Node) -> Result<Vec<TransportRule>> {
    let Value::Array(elements) = &node.value else {
        return Err(wrong_type(node, "transport", "an array of tables ([[transport]])", &node.value));
    };
    ensure(elements.len() <= TRANSPORT_RULES_MAX, node, "transport", &format!("at most {TRANSPORT_RULES_MAX} rules"))?;
    let mut rules = Vec::with_capacity(elements.len());
    for (index, element) in elements.iter().enumerate() {
        let Value::Table(table) = &element.value else {
            return Err(wrong_type(element, "transport", "a table", &element.value));
        };
        let name = format!("transport[{index}]");
        refuse_unknown_keys(table, &name, TRANSPORT_KEYS)?;
        let get = |key: &str| table.get(key).map(|entry| (&entry.node, format!("{name}.{key}")));
        let (domains_node, key) = get("domains").ok_or_else(|| invalid(element, &name, "domains is required"))?;
        let domains = nonempty_array(domains_node, &key, |node, key| {
            let text = string(node, key)?;
            if text != "*" {
                check_host_name(text.strip_prefix('.').unwrap_or(&text))
                    .map_err(|reason| invalid(node, key, reason))?;
            }
            Ok(text.to_ascii_lowercase())
        })?;
        let (kind_node, key) = get("transport").ok_or_else(|| invalid(element, &name, "transport is required"))?;
        let transport =
            TransportKind::from_str(&string(kind_node, &key)?).map_err(|reason| invalid(kind_node, &key, reason))?;
        let opt_string = |key: &str| -> Result<Option<String>> {
            match get(key) {
                None => Ok(None),
                Some((node, key)) => optional(node, &key, string),
            }
        };
        let nexthop = opt_string("nexthop")?;
        if let (Some(hop), Some((node, key))) = (&nexthop, get("nexthop")) {
            let checked = match (transport, hop.strip_prefix("unix:")) {
                (TransportKind::Lmtp, Some(path)) if path.starts_with('/') => Ok(()),
                (TransportKind::Lmtp, Some(_)) => Err("a unix socket path must be absolute".to_string()),
                (TransportKind::Smtp | TransportKind::Lmtp, None) => check_smarthost(hop),
                _ => Err(format!("a {} transport takes no nexthop", transport.as_str())),
            };
            checked.map_err(|reason| invalid(node, &key, reason))?;
        }
        if transport == TransportKind::Lmtp && nexthop.is_none() {
            return Err(invalid(element, &name, "an lmtp transport needs nexthop (\"unix:/path\" or \"host:port\")"));
        }
        let tls = match get("tls") {
            None => None,
            Some((node, key)) => {
                Some(TlsPolicy::from_str(&string(node, &key)?).map_err(|reason| invalid(node, &key, reason))?)
            }
        };
        let source_address = match get("source_address") {
            None => None,
            Some((node, key)) => Some(source_addresses(node, &key)?),
        };
        let helo_name = match get("helo_name") {
            None => None,
            Some((node, key)) => Some(host_name(node, &key)?),
        };
        for (given, key) in [(source_address.is_some(), "source_address"), (helo_name.is_some(), "helo_name")] {
            if given && transport != TransportKind::Smtp {
                let (node, key) = get(key).expect("the key was read");
                return Err(invalid(
                    node,
                    &key,
                    format!("only an smtp transport takes {}", key.rsplit('.').next().unwrap_or("")),
                ));
            }
        }
        let max_connections = match get("max_connections") {
            None => None,
            Some((node, key)) => Some(positive(node, &key)?),
        };
        let command = match get("command") {
            None => Vec::new(),
            Some((node, key)) => nonempty_array(node, &key, string)?,
        };
        if transport == TransportKind::Pipe && command.is_empty() {
            return Err(invalid(element, &name, "a pipe transport needs command (the program and its arguments)"));
        }
        if let Some(program) = command.first() {
            if !program.starts_with('/') {
                let (node, key) = get("command").expect("command was read");
                return Err(invalid(node, &key, "the program must be an absolute path"));
            }
        }
        let user = opt_string("user")?;
        let group = opt_string("group")?;
        let timeout = match get("timeout") {
            None => Duration::from_secs(60),
            Some((node, key)) => duration_nonzero(node, &key)?,
        };
        let maildir = opt_string("maildir")?;
        if let (Some(template), Some((node, key))) = (&maildir, get("maildir")) {
            ensure(template.contains("{user}"), node, &key, "the Maildir template must contain {user}")?;
        }
        let allowed = match transport {
            TransportKind::Smtp | TransportKind::Lmtp => Ok(()),
            other => Err(format!("verify = \"callout\" needs an smtp or lmtp transport, not {}", other.as_str())),
        };
        let callout = read_callout(get, element, &name, allowed)?;
        rules.push(TransportRule {
            domains,
            transport,
            nexthop,
            tls,
            source_address,
            helo_name,
            max_connections,
            command,
            user,
            group,
            timeout,
            maildir,
            callout,
        });
    }
    Ok(rules)
}

fn read_route(section: &Section<'_>, d: Route) -> Result<Route> {
    Ok(Route {
        max_rewrites: section.read("max_rewrites", d.max_rewrites, |node, key| {
            let value: u32 = integer(node, key)?;
            ensure(value <= 1000, node, key, "at most 1000")?;
            Ok(value)
        })?,
        max_alias_depth: section.read("max_alias_depth", d.max_alias_depth, |node, key| {
            let value: u32 = positive(node, key)?;
            ensure(value <= 100, node, key, "at most 100")?;
            Ok(value)
        })?,
        max_expansion: section.read("max_expansion", d.max_expansion, |node, key| {
            let value: usize = positive(node, key)?;
            ensure(value <= 100_000, node, key, "at most 100000")?;
            Ok(value)
        })?,
        subaddress_separators: section.read("subaddress_separators", d.subaddress_separators, |node, key| {
            array(node, key, |node, key| {
                let text = string(node, key)?;
                let ok = text.chars().count() == 1
                    && !text.contains(['@', '"', '\\'])
                    && !text.chars().any(char::is_whitespace);
                ensure(ok, node, key, "a separator is one character other than @, \", \\ and space")?;
                Ok(text)
            })
        })?,
        verify_sender: section.read("verify_sender", d.verify_sender, boolean)?,
        cache_ttl: section.read("cache_ttl", d.cache_ttl, duration)?,
        cache_entries: section.read("cache_entries", d.cache_entries, positive)?,
        sqlite_max_in_flight: section.read("sqlite_max_in_flight", d.sqlite_max_in_flight, |node, key| {
            let value: usize = positive(node, key)?;
            ensure(value <= 256, node, key, "at most 256")?;
            Ok(value)
        })?,
    })
}

fn read_routers(node: &Node) -> Result<Vec<Router>> {
    let Value::Array(elements) = &node.value else {
        return Err(wrong_type(node, "router", "an array of tables ([[router]])", &node.value));
    };
    ensure(elements.len() <= ROUTERS_MAX, node, "router", &format!("at most {ROUTERS_MAX} routers"))?;
    let mut routers: Vec<Router> = Vec::with_capacity(elements.len());
    for (index, element) in elements.iter().enumerate() {
        let prefix = format!("router[{index}]");
        let Value::Table(table) = &element.value else {
            return Err(wrong_type(element, &prefix, "a table", &element.value));
        };
        refuse_unknown_keys(table, &prefix, ROUTER_KEYS)?;
        let get = |key: &str| table.get(key).map(|entry| &entry.node);
        let key_of = |key: &str| format!("{prefix}.{key}");
        let name = match get("name") {
            Some(node) => {
                let name = string(node, &key_of("name"))?;
                let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
                ensure(ok, node, &key_of("name"), "letters, digits, _ - . only")?;
                ensure(
                    !routers.iter().any(|r| r.name == name),
                    node,
                    &key_of("name"),
                    "a router of this name is defined above",
                )?;
                name
            }
            None => return Err(invalid(element, &prefix, "a router needs a name")),
        };
        let driver = match get("driver") {
            Some(node) => {
                let text = string(node, &key_of("driver"))?;
                match Driver::ALL.iter().find(|d| d.as_str() == text) {
                    Some(driver) => *driver,
                    None => {
                        let known: Vec<&str> = Driver::ALL.iter().map(|d| d.as_str()).collect();
                        return Err(invalid(
                            node,
                            &key_of("driver"),
                            format!("unknown driver {text:?}; one of {}", known.join(", ")),
                        ));
                    }
                }
            }
            None => return Err(invalid(element, &prefix, "a router needs a driver")),
        };
        let opt_string = |key: &str| get(key).map(|node| string(node, &key_of(key))).transpose();
        let list = |key: &str| -> Result<Vec<String>> {
            get(key)
                .map(|node| array(node, &key_of(key), |n, k| Ok(string(n, k)?.to_ascii_lowercase())))
                .transpose()
                .map(Option::unwrap_or_default)
        };
        let file = get("file").map(|node| path(node, &key_of("file"))).transpose()?;
        let source = opt_string("source")?;
        let query = opt_string("query")?;
        if let (Some(node), Some(text)) = (get("source"), &source) {
            let known = ["sqlite:", "postgres:", "postgresql:", "ldap:", "ldaps:"];
            ensure(
                known.iter().any(|p| text.starts_with(p)),
                node,
                &key_of("source"),
                "expected sqlite:PATH, postgres:URL or ldap:URL",
            )?;
            ensure(query.is_some(), node, &key_of("source"), "a source needs a query")?;
            ensure(file.is_none(), node, &key_of("source"), "give file or source, not both")?;
        }
        let rules = match get("rules") {
            None => Vec::new(),
            Some(node) => {
                let rules = array(node, &key_of("rules"), |n, k| {
                    let pair = array(n, k, string)?;
                    ensure(pair.len() == 2, n, k, "a rule is [\"REGEX\", \"REPLACEMENT\"]")?;
                    if let Err(e) = regex::Regex::new(&pair[0]) {
                        return Err(invalid(n, k, format!("bad regex: {}", e.to_string().replace('\n', " "))));
                    }
                    Ok((pair[0].clone(), pair[1].clone()))
                })?;
                ensure(rules.len() <= RULES_INLINE_MAX, node, &key_of("rules"), "too many inline rules; use file")?;
                rules
            }
        };
        let host = match get("host") {
            None => None,
            Some(node) => {
                let text = string(node, &key_of("host"))?;
                check_smarthost(&text).map_err(|reason| invalid(node, &key_of("host"), reason))?;
                Some(text)
            }
        };
        let transport = opt_string("transport")?;
        let pool = opt_string("pool")?;
        let needs_table = matches!(driver, Driver::Aliases | Driver::Virtual | Driver::Mailertable);
        if needs_table && file.is_none() && source.is_none() {
            return Err(invalid(element, &prefix, format!("driver {} needs file or source", driver.as_str())));
        }
        if driver == Driver::Rewrite && rules.is_empty() && file.is_none() {
            return Err(invalid(element, &prefix, "driver rewrite needs rules or file"));
        }
        if driver == Driver::Rewrite && source.is_some() {
            return Err(invalid(element, &prefix, "driver rewrite reads rules, not a source"));
        }
        let allowed = match driver {
            Driver::Dnslookup | Driver::Smarthost | Driver::Mailertable => Ok(()),
            other => Err(format!(
                "verify = \"callout\" is for dnslookup, smarthost and mailertable routers, not {}",
                other.as_str()
            )),
        };
        let callout = read_callout(|key| get(key).map(|node| (node, key_of(key))), element, &prefix, allowed)?;
        routers.push(Router {
            name,
            driver,
            domains: list("domains")?,
            local_parts: list("local_parts")?,
            senders: list("senders")?,
            file,
            source,
            query,
            rules,
            host,
            transport,
            pool,
            callout,
        });
    }
    Ok(routers)
}

/// `[pool.<name>]` tables.
fn read_pools(node: &Node) -> Result<Vec<(String, crate::pool::PoolParams)>> {
    let Value::Table(table) = &node.value else {
        return Err(wrong_type(node, "pool", "a table of [pool.<name>] tables", &node.value));
    };
    let mut pools = Vec::new();
    for entry in &table.entries {
        let name = format!("pool.{}", entry.key);
        let Value::Table(inner) = &entry.node.value else {
            return Err(wrong_type(&entry.node, &name, "a table", &entry.node.value));
        };
        refuse_unknown_keys(inner, &name, POOL_KEYS)?;
        let d = crate::pool::PoolParams::default();
        let get = |key: &str| inner.get(key).map(|e| (&e.node, format!("{name}.{key}")));
        let max_connections = match get("max_connections") {
            None => d.max_connections,
            Some((node, key)) => {
                let value: usize = positive(node, &key)?;
                let max = crate::pool::MAX_CONNECTIONS_MAX;
                ensure(value <= max, node, &key, &format!("at most {max}"))?;
                value
            }
        };
        let queue_max = match get("queue_max") {
            None => d.queue_max,
            Some((node, key)) => {
                let value: usize = integer(node, &key)?;
                let max = crate::pool::QUEUE_MAX_MAX;
                ensure(value <= max, node, &key, &format!("at most {max}"))?;
                value
            }
        };
        let timeout = match get("timeout") {
            None => d.timeout,
            Some((node, key)) => duration_nonzero(node, &key)?.0,
        };
        pools.push((entry.key.clone(), crate::pool::PoolParams { max_connections, queue_max, timeout }));
    }
    Ok(pools)
}

fn read_server(section: &Section<'_>, d: Server) -> Result<Server> {
    Ok(Server {
        hostname: section.read("hostname", d.hostname, host_name)?,
        listen: section.read("listen", d.listen, |node, key| array(node, key, socket_addr))?,
        shards: section.read("shards", d.shards, |node, key| {
            let shards = integer(node, key)?;
            ensure(shards <= SHARD_COUNT_MAX, node, key, &format!("at most {SHARD_COUNT_MAX} shards"))?;
            Ok(shards)
        })?,
        pin: section.read("pin", d.pin, boolean)?,
        max_sessions_per_shard: section.read("max_sessions_per_shard", d.max_sessions_per_shard, positive)?,
        drain_timeout: section.read("drain_timeout", d.drain_timeout, duration)?,
        control_socket: section.read("control_socket", d.control_socket, |node, key| optional(node, key, path))?,
        user: section.read("user", d.user, |node, key| optional(node, key, user_name))?,
        allow_root: section.read("allow_root", d.allow_root, boolean)?,
    })
}

fn read_smtp(section: &Section<'_>, d: Smtp) -> Result<Smtp> {
    Ok(Smtp {
        greeting: section.read("greeting", d.greeting, reply_text)?,
        max_recipients: section.read("max_recipients", d.max_recipients, positive)?,
        max_message_bytes: section.read("max_message_bytes", d.max_message_bytes, positive)?,
        max_text_line_bytes: section.read("max_text_line_bytes", d.max_text_line_bytes, |node, key| {
            let bytes: usize = integer(node, key)?;
            ensure(bytes >= 3, node, key, "must be at least 3 (one character and CRLF)")?;
            Ok(bytes)
        })?,
        max_errors: section.read("max_errors", d.max_errors, positive)?,
        command_timeout: section.read("command_timeout", d.command_timeout, duration_nonzero)?,
        data_timeout: section.read("data_timeout", d.data_timeout, duration_nonzero)?,
        bare_lf: section.read("bare_lf", d.bare_lf, |node, key| {
            BareLf::from_str(&string(node, key)?).map_err(|reason| invalid(node, key, reason))
        })?,
        nul: section.read("nul", d.nul, |node, key| {
            Nul::from_str(&string(node, key)?).map_err(|reason| invalid(node, key, reason))
        })?,
    })
}

fn read_domains(section: &Section<'_>, d: Domains) -> Result<Domains> {
    Ok(Domains { local: section.read("local", d.local, |node, key| array(node, key, host_name))? })
}

fn read_local(section: &Section<'_>, d: Local) -> Result<Local> {
    Ok(Local {
        maildir: section.read("maildir", d.maildir, |node, key| {
            let template = string(node, key)?;
            ensure(template.contains("{user}"), node, key, "the Maildir template must contain {user}")?;
            Ok(template)
        })?,
    })
}

fn read_relay(section: &Section<'_>, d: Relay) -> Result<Relay> {
    Ok(Relay {
        networks: section.read("networks", d.networks, |node, key| array(node, key, cidr))?,
        domains: section.read("domains", d.domains, |node, key| array(node, key, host_name))?,
    })
}

fn read_delivery(section: &Section<'_>, d: Delivery) -> Result<Delivery> {
    Ok(Delivery {
        smarthost: section.read("smarthost", d.smarthost, |node, key| {
            optional(node, key, |node, key| {
                let text = string(node, key)?;
                check_smarthost(&text).map_err(|reason| invalid(node, key, reason))?;
                Ok(text)
            })
        })?,
        helo_name: section.read("helo_name", d.helo_name, |node, key| optional(node, key, host_name))?,
        max_concurrent_per_shard: section.read("max_concurrent_per_shard", d.max_concurrent_per_shard, positive)?,
        port: section.read("port", d.port, positive)?,
        connect_timeout: section.read("connect_timeout", d.connect_timeout, duration_nonzero)?,
        max_connections_per_destination: section.read(
            "max_connections_per_destination",
            d.max_connections_per_destination,
            positive,
        )?,
        max_connections_per_shard: section.read("max_connections_per_shard", d.max_connections_per_shard, positive)?,
        connection_reuse_time: section.read("connection_reuse_time", d.connection_reuse_time, duration)?,
        max_transactions_per_connection: section.read(
            "max_transactions_per_connection",
            d.max_transactions_per_connection,
            positive,
        )?,
        tls: section.read("tls", d.tls, |node, key| {
            TlsPolicy::from_str(&string(node, key)?).map_err(|reason| invalid(node, key, reason))
        })?,
        early_ms: section.read("early_ms", d.early_ms, |node, key| {
            let value: u32 = integer(node, key)?;
            ensure(value <= EARLY_MS_MAX, node, key, &format!("at most {EARLY_MS_MAX}"))?;
            Ok(value)
        })?,
        hold_all: section.read("hold_all", d.hold_all, boolean)?,
        chunking: section.read("chunking", d.chunking, boolean)?,
        source_address: section.read("source_address", d.source_address, source_addresses)?,
        tls_ca_file: section.read("tls_ca_file", d.tls_ca_file, |node, key| optional(node, key, path))?,
        mta_sts: section.read("mta_sts", d.mta_sts, boolean)?,
        mta_sts_ca_file: section.read("mta_sts_ca_file", d.mta_sts_ca_file, |node, key| optional(node, key, path))?,
        dane: section.read("dane", d.dane, boolean)?,
    })
}

/// Local addresses to connect from: IP addresses, at most one per family.
fn source_addresses(node: &Node, key: &str) -> Result<Vec<std::net::IpAddr>> {
    let addrs = array(node, key, |node, key| {
        let text = string(node, key)?;
        text.parse::<std::net::IpAddr>().map_err(|_| invalid(node, key, format!("{text:?} is not an IP address")))
    })?;
    let v4 = addrs.iter().filter(|a| a.is_ipv4()).count();
    ensure(v4 <= 1 && addrs.len() - v4 <= 1, node, key, "at most one IPv4 and one IPv6 address")?;
    Ok(addrs)
}

fn read_tls(section: &Section<'_>, d: Tls) -> Result<Tls> {
    let tls = Tls {
        cert: section.read("cert", d.cert, |node, key| optional(node, key, path))?,
        key: section.read("key", d.key, |node, key| optional(node, key, path))?,
    };
    if tls.cert.is_some() != tls.key.is_some() {
        let (given, missing) = if tls.cert.is_some() { ("cert", "key") } else { ("key", "cert") };
        if let Some(node) = section.node(given) {
            return Err(invalid(node, &format!("tls.{given}"), format!("tls.{missing} must be set as well")));
        }
    }
    Ok(tls)
}

fn read_dns(section: &Section<'_>, d: Dns) -> Result<Dns> {
    Ok(Dns {
        servers: section.read("servers", d.servers, |node, key| {
            let servers = array(node, key, |node, key| {
                let text = string(node, key)?;
                crate::dns::parse_server(&text).map_err(|reason| invalid(node, key, reason))
            })?;
            ensure(
                servers.len() <= DNS_SERVER_COUNT_MAX,
                node,
                key,
                &format!("at most {DNS_SERVER_COUNT_MAX} servers"),
            )?;
            Ok(servers)
        })?,
        timeout: section.read("timeout", d.timeout, |node, key| {
            optional(node, key, |node, key| {
                let timeout = duration_nonzero(node, key)?;
                ensure(timeout.0 <= DNS_TIMEOUT_MAX, node, key, "at most 60s")?;
                Ok(timeout)
            })
        })?,
        attempts: section.read("attempts", d.attempts, |node, key| {
            optional(node, key, |node, key| {
                let attempts: u32 = positive(node, key)?;
                ensure(attempts <= DNS_ATTEMPTS_MAX, node, key, &format!("at most {DNS_ATTEMPTS_MAX}"))?;
                Ok(attempts)
            })
        })?,
        dnssec_trusted: section.read("dnssec_trusted", d.dnssec_trusted, |node, key| optional(node, key, boolean))?,
    })
}

fn read_queue(section: &Section<'_>, d: Queue) -> Result<Queue> {
    let queue = Queue {
        spool: section.read("spool", d.spool, |node, key| nonempty_array(node, key, path))?,
        retry_lags: section.read("retry_lags", d.retry_lags, |node, key| {
            let lags = nonempty_array(node, key, duration_nonzero)?;
            ensure(lags.len() <= RETRY_LAGS_MAX, node, key, &format!("at most {RETRY_LAGS_MAX} lags"))?;
            let increasing = lags.windows(2).all(|pair| pair[0].0 < pair[1].0);
            ensure(increasing, node, key, "lags must be strictly increasing, shortest first")?;
            Ok(lags)
        })?,
        max_age: section.read("max_age", d.max_age, duration_nonzero)?,
        delay_warning_after: section.read("delay_warning_after", d.delay_warning_after, duration)?,
        inline_max_bytes: section.read("inline_max_bytes", d.inline_max_bytes, |node, key| {
            let value: u32 = integer(node, key)?;
            let max = queue_format::INLINE_BODY_SIZE_BYTES_MAX as u32;
            ensure(value <= max, node, key, &format!("at most {max} (1 MiB)"))?;
            Ok(value)
        })?,
        segment_size_bytes: section.read("segment_size_bytes", d.segment_size_bytes, |node, key| {
            let value: u64 = integer(node, key)?;
            let (min, max) = (SEGMENT_SIZE_BYTES_CONFIG_MIN, queue_format::SEGMENT_SIZE_BYTES_MAX);
            ensure(
                (min..=max).contains(&value) && value % queue_format::BLOCK_SIZE_BYTES as u64 == 0,
                node,
                key,
                &format!("must be a multiple of 4096 between {min} and {max}"),
            )?;
            Ok(value)
        })?,
        commit_delay_us: section.read("commit_delay_us", d.commit_delay_us, |node, key| {
            let value: u32 = integer(node, key)?;
            ensure(value <= COMMIT_DELAY_US_MAX, node, key, &format!("at most {COMMIT_DELAY_US_MAX}"))?;
            Ok(value)
        })?,
        body_sync: section.read("body_sync", d.body_sync, |node, key| {
            let text = string(node, key)?;
            ensure(text == "each" || text == "syncfs", node, key, "expected \"each\" or \"syncfs\"")?;
            Ok(text)
        })?,
        body_store: section.read("body_store", d.body_store, |node, key| {
            let text = string(node, key)?;
            ensure(text == "log" || text == "files", node, key, "expected \"log\" or \"files\"")?;
            Ok(text)
        })?,
    };
    // A segment must hold its header and one batch with the largest inline
    // envelope this configuration produces.
    let needed = queue.inline_max_bytes as u64 + SEGMENT_SIZE_BYTES_CONFIG_MIN;
    if queue.segment_size_bytes < needed {
        let blamed = section.node("segment_size_bytes").map(|node| (node, "queue.segment_size_bytes"));
        let blamed = blamed.or_else(|| section.node("inline_max_bytes").map(|node| (node, "queue.inline_max_bytes")));
        if let Some((node, key)) = blamed {
            let reason = format!(
                "queue.segment_size_bytes ({}) must be at least queue.inline_max_bytes + {} ({needed})",
                queue.segment_size_bytes, SEGMENT_SIZE_BYTES_CONFIG_MIN
            );
            return Err(invalid(node, key, reason));
        }
    }
    Ok(queue)
}

const EMAIL_AUTH_KEYS: &[&str] = &["spf", "dmarc", "max_size_bytes", "timeout", "max_lookups"];
const DKIM_SIGN_KEYS: &[&str] = &["domain", "selector", "key", "headers"];
/// Most `[[dkim_sign]]` tables.
const DKIM_SIGN_MAX: usize = 256;
/// Most DNS lookups one verification may be allowed.
const EMAIL_AUTH_LOOKUPS_MAX: u32 = 256;

/// `[email_auth]`.
fn read_email_auth(section: &Section<'_>, d: super::EmailAuth) -> Result<super::EmailAuth> {
    Ok(super::EmailAuth {
        spf: section.read("spf", d.spf, |node, key| {
            string(node, key)?.parse().map_err(|reason: String| invalid(node, key, reason))
        })?,
        dmarc: section.read("dmarc", d.dmarc, |node, key| {
            string(node, key)?.parse().map_err(|reason: String| invalid(node, key, reason))
        })?,
        max_size_bytes: section.read("max_size_bytes", d.max_size_bytes, positive)?,
        timeout: section.read("timeout", d.timeout, duration_nonzero)?,
        max_lookups: section.read("max_lookups", d.max_lookups, |node, key| {
            let value: u32 = positive(node, key)?;
            ensure(value <= EMAIL_AUTH_LOOKUPS_MAX, node, key, "at most 256")?;
            Ok(value)
        })?,
    })
}

pub(super) const LOG_KEYS: &[&str] = &["format", "syslog", "syslog_socket", "level"];

/// `[log]`.
fn read_log(section: &Section<'_>, d: super::Log) -> Result<super::Log> {
    Ok(super::Log {
        format: section.read("format", d.format, |node, key| {
            let text = string(node, key)?;
            ensure(text == "kv" || text == "json", node, key, "expected \"kv\" or \"json\"")?;
            Ok(text)
        })?,
        syslog: section.read("syslog", d.syslog, boolean)?,
        syslog_socket: section.read("syslog_socket", d.syslog_socket, path)?,
        level: section.read("level", d.level, |node, key| {
            let text = string(node, key)?;
            ensure(text == "info" || text == "warning", node, key, "expected \"info\" or \"warning\"")?;
            Ok(text)
        })?,
    })
}

const SIEVE_KEYS: &[&str] = &[
    "scripts",
    "source",
    "query",
    "pool",
    "before",
    "vacation_db",
    "max_script_bytes",
    "max_redirects",
    "cache_entries",
];
pub(super) const METRICS_KEYS: &[&str] = &["listen"];

/// `[metrics]`.
fn read_metrics(section: &Section<'_>, d: super::Metrics) -> Result<super::Metrics> {
    Ok(super::Metrics { listen: section.read("listen", d.listen, |node, key| optional(node, key, socket_addr))? })
}

/// Longest Sieve script `sieve.max_script_bytes` allows.
const SIEVE_SCRIPT_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Most redirects `sieve.max_redirects` allows.
const SIEVE_REDIRECTS_MAX: u32 = 64;
/// Most compiled scripts `sieve.cache_entries` allows.
const SIEVE_CACHE_ENTRIES_MAX: usize = 10_000_000;

/// `[sieve]`.
fn read_sieve(node: &Node, section: &Section<'_>, d: super::Sieve) -> Result<super::Sieve> {
    let text = |node: &Node, key: &str| optional(node, key, string);
    let sieve = super::Sieve {
        scripts: section.read("scripts", d.scripts, text)?,
        source: section.read("source", d.source, text)?,
        query: section.read("query", d.query, text)?,
        pool: section.read("pool", d.pool, text)?,
        before: section.read("before", d.before, |node, key| optional(node, key, path))?,
        vacation_db: section.read("vacation_db", d.vacation_db, |node, key| optional(node, key, path))?,
        max_script_bytes: section.read("max_script_bytes", d.max_script_bytes, |node, key| {
            let value: u64 = positive(node, key)?;
            ensure(value <= SIEVE_SCRIPT_BYTES_MAX, node, key, "at most 16 MiB")?;
            Ok(value)
        })?,
        max_redirects: section.read("max_redirects", d.max_redirects, |node, key| {
            let value: u32 = integer(node, key)?;
            ensure(value <= SIEVE_REDIRECTS_MAX, node, key, "at most 64")?;
            Ok(value)
        })?,
        cache_entries: section.read("cache_entries", d.cache_entries, |node, key| {
            let value: usize = positive(node, key)?;
            ensure(value <= SIEVE_CACHE_ENTRIES_MAX, node, key, "at most 10000000")?;
            Ok(value)
        })?,
    };
    let at = |key: &str| section.node(key).unwrap_or(node);
    if let Some(template) = &sieve.scripts {
        ensure(template.contains("{user}"), at("scripts"), "sieve.scripts", "the path template needs {user}")?;
    }
    if let Some(source) = &sieve.source {
        let known = ["sqlite:", "postgres:", "postgresql:", "ldap:", "ldaps:"];
        ensure(
            known.iter().any(|p| source.starts_with(p)),
            at("source"),
            "sieve.source",
            "expected sqlite:PATH, postgres:URL or ldap:URL",
        )?;
        ensure(sieve.query.is_some(), at("source"), "sieve.source", "a source needs a query")?;
        ensure(sieve.scripts.is_none(), at("source"), "sieve.source", "give scripts or source, not both")?;
    }
    ensure(
        sieve.scripts.is_some() || sieve.source.is_some() || sieve.before.is_some(),
        node,
        "sieve",
        "needs scripts, source or before",
    )?;
    Ok(sieve)
}

/// `[[dkim_sign]]`: one key per domain. The key file is read when the
/// shards start, not here.
fn read_dkim_sign(node: &Node) -> Result<Vec<super::DkimSign>> {
    let Value::Array(elements) = &node.value else {
        return Err(wrong_type(node, "dkim_sign", "an array of tables ([[dkim_sign]])", &node.value));
    };
    ensure(elements.len() <= DKIM_SIGN_MAX, node, "dkim_sign", "at most 256 keys")?;
    let mut keys: Vec<super::DkimSign> = Vec::with_capacity(elements.len());
    for (index, element) in elements.iter().enumerate() {
        let prefix = format!("dkim_sign[{index}]");
        let Value::Table(table) = &element.value else {
            return Err(wrong_type(element, &prefix, "a table", &element.value));
        };
        refuse_unknown_keys(table, &prefix, DKIM_SIGN_KEYS)?;
        let get = |key: &str| table.get(key).map(|entry| (&entry.node, format!("{prefix}.{key}")));
        let required = |key: &str| get(key).ok_or_else(|| invalid(element, &prefix, format!("a DKIM key needs {key}")));
        let (node, key) = required("domain")?;
        let domain = host_name(node, &key)?.to_ascii_lowercase();
        ensure(!keys.iter().any(|k| k.domain == domain), node, &key, "a key for this domain is defined above")?;
        let (node, key) = required("selector")?;
        let selector = string(node, &key)?;
        let ok = !selector.is_empty()
            && selector.len() <= 63
            && selector.split('.').all(|label| {
                !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            });
        ensure(ok, node, &key, "a DNS label (letters, digits, - and _)")?;
        let (node, key) = required("key")?;
        let key_path = path(node, &key)?;
        let headers = match get("headers") {
            None => super::DKIM_SIGN_HEADERS_DEFAULT.iter().map(|h| h.to_string()).collect(),
            Some((node, key)) => {
                let headers = nonempty_array(node, &key, string)?;
                let ok = headers.iter().all(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic() && b != b':'));
                ensure(ok, node, &key, "header field names (printable, no colon)")?;
                ensure(
                    headers.iter().any(|h| h.eq_ignore_ascii_case("from")),
                    node,
                    &key,
                    "must include From (RFC 6376 §5.4)",
                )?;
                headers
            }
        };
        keys.push(super::DkimSign { domain, selector, key: key_path, headers });
    }
    Ok(keys)
}
