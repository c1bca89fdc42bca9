//! Prints the effective configuration as TOML with every key, in the order of
//! `docs/config.md`. Loading the printed text gives back an equal `Config`.
//!
//! Place in the pipeline: used by `ringpost check-config` after loading, and
//! by start-up logging; never on a hot path.

use std::fmt::{self, Write as _};

use super::Config;

/// A TOML basic string: `"…"` with `"`, `\` and control characters escaped.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A TOML array of strings, one line.
fn string_array<T: fmt::Display>(items: &[T]) -> String {
    let quoted_items: Vec<String> = items.iter().map(|item| quoted(&item.to_string())).collect();
    format!("[{}]", quoted_items.join(", "))
}

pub fn to_toml(config: &Config) -> String {
    let mut out = String::new();
    write_all(&mut out, config).expect("writing to a String cannot fail");
    out
}

fn write_all(out: &mut String, c: &Config) -> fmt::Result {
    let s = &c.server;
    writeln!(out, "[server]")?;
    writeln!(out, "hostname = {}", quoted(&s.hostname))?;
    writeln!(out, "listen = {}", string_array(&s.listen))?;
    writeln!(out, "shards = {}", s.shards)?;
    writeln!(out, "pin = {}", s.pin)?;
    writeln!(out, "max_sessions_per_shard = {}", s.max_sessions_per_shard)?;
    writeln!(out, "drain_timeout = {}", quoted(&s.drain_timeout.to_string()))?;
    match &s.control_socket {
        Some(path) => writeln!(out, "control_socket = {}", quoted(&path.to_string_lossy()))?,
        None => writeln!(out, "control_socket = \"\"  # unset: ringpost.sock in the first spool directory")?,
    }
    match &s.user {
        Some(user) => writeln!(out, "user = {}", quoted(user))?,
        None => writeln!(out, "user = \"\"  # unset: no privilege drop")?,
    }
    writeln!(out, "allow_root = {}", s.allow_root)?;

    let m = &c.smtp;
    writeln!(out, "\n[smtp]")?;
    writeln!(out, "greeting = {}", quoted(&m.greeting))?;
    writeln!(out, "max_recipients = {}", m.max_recipients)?;
    writeln!(out, "max_message_bytes = {}", m.max_message_bytes)?;
    writeln!(out, "max_text_line_bytes = {}", m.max_text_line_bytes)?;
    writeln!(out, "max_errors = {}", m.max_errors)?;
    writeln!(out, "command_timeout = {}", quoted(&m.command_timeout.to_string()))?;
    writeln!(out, "data_timeout = {}", quoted(&m.data_timeout.to_string()))?;
    writeln!(out, "bare_lf = {}", quoted(m.bare_lf.as_str()))?;
    writeln!(out, "nul = {}", quoted(m.nul.as_str()))?;

    writeln!(out, "\n[domains]")?;
    writeln!(out, "local = {}", string_array(&c.domains.local))?;

    writeln!(out, "\n[local]")?;
    writeln!(out, "maildir = {}", quoted(&c.local.maildir))?;

    writeln!(out, "\n[relay]")?;
    writeln!(out, "networks = {}", string_array(&c.relay.networks))?;
    writeln!(out, "domains = {}", string_array(&c.relay.domains))?;

    let d = &c.delivery;
    writeln!(out, "\n[delivery]")?;
    match &d.smarthost {
        Some(host) => writeln!(out, "smarthost = {}", quoted(host))?,
        None => writeln!(out, "smarthost = \"\"  # unset: relayed recipients go to their domain's MX hosts")?,
    }
    match &d.helo_name {
        Some(name) => writeln!(out, "helo_name = {}", quoted(name))?,
        None => writeln!(out, "helo_name = \"\"  # unset: server.hostname is sent")?,
    }
    writeln!(out, "max_concurrent_per_shard = {}", d.max_concurrent_per_shard)?;
    writeln!(out, "port = {}", d.port)?;
    writeln!(out, "connect_timeout = {}", quoted(&d.connect_timeout.to_string()))?;
    writeln!(out, "max_connections_per_destination = {}", d.max_connections_per_destination)?;
    writeln!(out, "max_connections_per_shard = {}", d.max_connections_per_shard)?;
    writeln!(out, "connection_reuse_time = {}", quoted(&d.connection_reuse_time.to_string()))?;
    writeln!(out, "max_transactions_per_connection = {}", d.max_transactions_per_connection)?;
    writeln!(out, "tls = {}", quoted(d.tls.as_str()))?;
    writeln!(out, "early_ms = {}", d.early_ms)?;
    writeln!(out, "hold_all = {}", d.hold_all)?;
    writeln!(out, "chunking = {}", d.chunking)?;
    let sources: Vec<String> = d.source_address.iter().map(|a| a.to_string()).collect();
    writeln!(out, "source_address = {}", string_array(&sources))?;
    match &d.tls_ca_file {
        Some(p) => writeln!(out, "tls_ca_file = {}", quoted(&p.to_string_lossy()))?,
        None => writeln!(out, "tls_ca_file = \"\"  # unset: the system's roots")?,
    }
    writeln!(out, "mta_sts = {}", d.mta_sts)?;
    match &d.mta_sts_ca_file {
        Some(p) => writeln!(out, "mta_sts_ca_file = {}", quoted(&p.to_string_lossy()))?,
        None => writeln!(out, "mta_sts_ca_file = \"\"  # unset: tls_ca_file's roots")?,
    }
    writeln!(out, "dane = {}", d.dane)?;

    writeln!(out, "\n[tls]")?;
    let unset = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.to_string_lossy().into_owned());
    match unset(&c.tls.cert) {
        Some(cert) => writeln!(out, "cert = {}", quoted(&cert))?,
        None => writeln!(out, "cert = \"\"  # unset: STARTTLS is not offered")?,
    }
    match unset(&c.tls.key) {
        Some(key) => writeln!(out, "key = {}", quoted(&key))?,
        None => writeln!(out, "key = \"\"")?,
    }

    let n = &c.dns;
    writeln!(out, "\n[dns]")?;
    let servers: Vec<String> = n.servers.iter().map(|server| server.to_string()).collect();
    writeln!(
        out,
        "servers = {}{}",
        string_array(&servers),
        if servers.is_empty() { "  # empty: /etc/resolv.conf" } else { "" }
    )?;
    match n.timeout {
        Some(timeout) => writeln!(out, "timeout = {}", quoted(&timeout.to_string()))?,
        None => writeln!(out, "timeout = \"\"  # unset: resolv.conf's, else 5s")?,
    }
    match n.attempts {
        Some(attempts) => writeln!(out, "attempts = {attempts}")?,
        None => writeln!(out, "attempts = \"\"  # unset: resolv.conf's, else 2")?,
    }
    match n.dnssec_trusted {
        Some(trusted) => writeln!(out, "dnssec_trusted = {trusted}")?,
        None => writeln!(out, "dnssec_trusted = \"\"  # unset: trusted when every server is loopback")?,
    }

    let q = &c.queue;
    let spool: Vec<String> = q.spool.iter().map(|path| path.to_string_lossy().into_owned()).collect();
    writeln!(out, "\n[queue]")?;
    writeln!(out, "spool = {}", string_array(&spool))?;
    let lags: Vec<String> = q.retry_lags.iter().map(|lag| lag.to_string()).collect();
    writeln!(out, "retry_lags = {}", string_array(&lags))?;
    writeln!(out, "max_age = {}", quoted(&q.max_age.to_string()))?;
    writeln!(out, "delay_warning_after = {}", quoted(&q.delay_warning_after.to_string()))?;
    writeln!(out, "inline_max_bytes = {}", q.inline_max_bytes)?;
    writeln!(out, "segment_size_bytes = {}", q.segment_size_bytes)?;
    writeln!(out, "commit_delay_us = {}", q.commit_delay_us)?;
    writeln!(out, "body_sync = {}", quoted(&q.body_sync))?;
    writeln!(out, "body_store = {}", quoted(&q.body_store))?;
    for rule in &c.transports {
        writeln!(out, "\n[[transport]]")?;
        writeln!(out, "domains = {}", string_array(&rule.domains))?;
        writeln!(out, "transport = {}", quoted(rule.transport.as_str()))?;
        if let Some(hop) = &rule.nexthop {
            writeln!(out, "nexthop = {}", quoted(hop))?;
        }
        if let Some(tls) = rule.tls {
            writeln!(out, "tls = {}", quoted(tls.as_str()))?;
        }
        if let Some(sources) = &rule.source_address {
            let sources: Vec<String> = sources.iter().map(|a| a.to_string()).collect();
            writeln!(out, "source_address = {}", string_array(&sources))?;
        }
        if let Some(name) = &rule.helo_name {
            writeln!(out, "helo_name = {}", quoted(name))?;
        }
        if let Some(max) = rule.max_connections {
            writeln!(out, "max_connections = {max}")?;
        }
        if !rule.command.is_empty() {
            writeln!(out, "command = {}", string_array(&rule.command))?;
        }
        if let Some(user) = &rule.user {
            writeln!(out, "user = {}", quoted(user))?;
        }
        if let Some(group) = &rule.group {
            writeln!(out, "group = {}", quoted(group))?;
        }
        writeln!(out, "timeout = {}", quoted(&rule.timeout.to_string()))?;
        if let Some(maildir) = &rule.maildir {
            writeln!(out, "maildir = {}", quoted(maildir))?;
        }
        write_callout(out, rule.callout.as_ref())?;
    }

    let r = &c.route;
    writeln!(out, "\n[route]")?;
    writeln!(out, "max_rewrites = {}", r.max_rewrites)?;
    writeln!(out, "max_alias_depth = {}", r.max_alias_depth)?;
    writeln!(out, "max_expansion = {}", r.max_expansion)?;
    writeln!(out, "subaddress_separators = {}", string_array(&r.subaddress_separators))?;
    writeln!(out, "verify_sender = {}", r.verify_sender)?;
    writeln!(out, "cache_ttl = {}", quoted(&r.cache_ttl.to_string()))?;
    writeln!(out, "cache_entries = {}", r.cache_entries)?;
    writeln!(out, "sqlite_max_in_flight = {}", r.sqlite_max_in_flight)?;

    let v = &c.verify;
    writeln!(out, "\n[verify]")?;
    writeln!(out, "callout_timeout = {}", quoted(&v.callout_timeout.to_string()))?;
    writeln!(out, "callout_positive_ttl = {}", quoted(&v.callout_positive_ttl.to_string()))?;
    writeln!(out, "callout_negative_ttl = {}", quoted(&v.callout_negative_ttl.to_string()))?;
    writeln!(out, "callout_cache_entries = {}", v.callout_cache_entries)?;
    writeln!(out, "callout_max_per_host = {}", v.callout_max_per_host)?;
    writeln!(out, "callout_rate_per_domain = {}", v.callout_rate_per_domain)?;

    for scanner in &c.scanners {
        writeln!(out, "\n[[scanner]]")?;
        writeln!(out, "name = {}", quoted(&scanner.name))?;
        writeln!(out, "kind = {}", quoted(scanner.kind.as_str()))?;
        if scanner.kind == super::ScannerKind::Pipe {
            writeln!(out, "command = {}", string_array(&scanner.command))?;
            for (key, value) in [("user", &scanner.user), ("group", &scanner.group)] {
                if let Some(value) = value {
                    writeln!(out, "{key} = {}", quoted(value))?;
                }
            }
        } else {
            writeln!(out, "address = {}", quoted(&scanner.address))?;
        }
        writeln!(out, "timeout = {}", quoted(&scanner.timeout.to_string()))?;
        writeln!(out, "max_concurrent = {}", scanner.max_concurrent)?;
        writeln!(out, "queue_max = {}", scanner.queue_max)?;
        writeln!(out, "on_failure = {}", quoted(scanner.on_failure.as_str()))?;
        if let Some(max) = scanner.max_size_bytes {
            writeln!(out, "max_size_bytes = {max}")?;
        }
        if let Some(score) = scanner.reject_score {
            writeln!(out, "reject_score = {:?}", score.as_f64())?;
        }
    }

    let r = &c.replicate;
    writeln!(out, "\n[replicate]")?;
    match &r.peer {
        Some(peer) => writeln!(out, "peer = {}", quoted(peer))?,
        None => writeln!(out, "# no peer: this node sends no replicas")?,
    }
    writeln!(out, "timeout = {}", quoted(&r.timeout.to_string()))?;
    writeln!(out, "on_failure = {}", quoted(r.on_failure.as_str()))?;
    writeln!(out, "takeover_after = {}", quoted(&r.takeover_after.to_string()))?;
    writeln!(out, "accept_from = {}", string_array(&r.accept_from))?;

    let p = &c.policy;
    writeln!(out, "\n[policy]")?;
    writeln!(out, "ipv6_prefix_len = {}", p.ipv6_prefix_len)?;
    writeln!(out, "max_sessions_per_client = {}", p.max_sessions_per_client)?;
    writeln!(out, "max_connections_per_minute = {}", p.max_connections_per_minute)?;
    writeln!(out, "max_messages_per_minute = {}", p.max_messages_per_minute)?;
    writeln!(out, "max_recipients_per_minute = {}", p.max_recipients_per_minute)?;
    writeln!(out, "exempt_networks = {}", string_array(&p.exempt_networks))?;
    writeln!(out, "client_table_entries = {}", p.client_table_entries)?;
    for (key, table) in [
        ("client_access", &p.client_access),
        ("helo_access", &p.helo_access),
        ("sender_access", &p.sender_access),
        ("recipient_access", &p.recipient_access),
    ] {
        match table {
            Some(path) => writeln!(out, "{key} = {}", quoted(&path.to_string_lossy()))?,
            None => writeln!(out, "{key} = \"\"")?,
        }
    }
    let f = &c.policy.front;
    writeln!(out, "dnsbl_threshold = {}", f.dnsbl_threshold)?;
    writeln!(out, "dnsbl_action = {}", quoted(f.dnsbl_action.as_str()))?;
    writeln!(out, "dnsbl_timeout = {}", quoted(&f.dnsbl_timeout.to_string()))?;
    writeln!(out, "greet_pause = {}", quoted(&f.greet_pause.to_string()))?;
    writeln!(out, "strict_pipelining = {}", f.strict_pipelining)?;
    writeln!(out, "helo_require = {}", f.helo_require)?;
    writeln!(out, "helo_reject_own_name = {}", f.helo_reject_own_name)?;
    writeln!(out, "helo_reject_ip_mismatch = {}", f.helo_reject_ip_mismatch)?;
    writeln!(out, "helo_reject_invalid = {}", f.helo_reject_invalid)?;
    writeln!(out, "reverse_dns = {}", quoted(f.reverse_dns.as_str()))?;
    for dnsbl in &c.dnsbls {
        writeln!(out, "\n[[dnsbl]]")?;
        writeln!(out, "zone = {}", quoted(&dnsbl.zone))?;
        let answers: Vec<String> = dnsbl
            .answers
            .iter()
            .map(|(low, high)| if low == high { low.to_string() } else { format!("{low}..{high}") })
            .collect();
        writeln!(out, "answers = {}", string_array(&answers))?;
        writeln!(out, "weight = {}", dnsbl.weight)?;
    }
    for check in &c.helo_checks {
        writeln!(out, "\n[[helo_check]]")?;
        match &check.matcher {
            super::HeloMatch::Pattern(pattern) => writeln!(out, "pattern = {}", quoted(pattern))?,
            super::HeloMatch::Name(name) => writeln!(out, "name = {}", quoted(name))?,
        }
        writeln!(out, "action = {}", quoted(check.action.as_str()))?;
        if check.action == super::HeloAction::Reject {
            writeln!(out, "text = {}", quoted(&check.text))?;
        }
    }
    if let Some(a) = &c.email_auth {
        writeln!(out, "\n[email_auth]")?;
        writeln!(out, "spf = {}", quoted(a.spf.as_str()))?;
        writeln!(out, "dmarc = {}", quoted(a.dmarc.as_str()))?;
        writeln!(out, "max_size_bytes = {}", a.max_size_bytes)?;
        writeln!(out, "timeout = {}", quoted(&a.timeout.to_string()))?;
        writeln!(out, "max_lookups = {}", a.max_lookups)?;
    }
    writeln!(out, "\n[log]")?;
    writeln!(out, "format = {}", quoted(&c.log.format))?;
    writeln!(out, "syslog = {}", c.log.syslog)?;
    writeln!(out, "syslog_socket = {}", quoted(&c.log.syslog_socket.to_string_lossy()))?;
    writeln!(out, "level = {}", quoted(&c.log.level))?;
    if let Some(v) = &c.sieve {
        writeln!(out, "\n[sieve]")?;
        let text = |value: &Option<String>| quoted(value.as_deref().unwrap_or(""));
        let path = |value: &Option<std::path::PathBuf>| {
            quoted(&value.as_ref().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default())
        };
        writeln!(out, "scripts = {}", text(&v.scripts))?;
        writeln!(out, "source = {}", text(&v.source))?;
        writeln!(out, "query = {}", text(&v.query))?;
        writeln!(out, "pool = {}", text(&v.pool))?;
        writeln!(out, "before = {}", path(&v.before))?;
        writeln!(out, "vacation_db = {}", path(&v.vacation_db))?;
        writeln!(out, "max_script_bytes = {}", v.max_script_bytes)?;
        writeln!(out, "max_redirects = {}", v.max_redirects)?;
        writeln!(out, "cache_entries = {}", v.cache_entries)?;
    }
    writeln!(out, "\n[metrics]")?;
    match &c.metrics.listen {
        Some(addr) => writeln!(out, "listen = {}", quoted(&addr.to_string()))?,
        None => writeln!(out, "listen = \"\"  # unset: no metrics responder")?,
    }
    write_submission(out, c)?;
    for k in &c.dkim_sign {
        writeln!(out, "\n[[dkim_sign]]")?;
        writeln!(out, "domain = {}", quoted(&k.domain))?;
        writeln!(out, "selector = {}", quoted(&k.selector))?;
        writeln!(out, "key = {}", quoted(&k.key.to_string_lossy()))?;
        writeln!(out, "headers = {}", string_array(&k.headers))?;
    }

    for (name, pool) in &c.pools {
        writeln!(out, "\n[pool.{name}]")?;
        writeln!(out, "max_connections = {}", pool.max_connections)?;
        writeln!(out, "queue_max = {}", pool.queue_max)?;
        writeln!(out, "timeout = {}", quoted(&super::Duration(pool.timeout).to_string()))?;
    }

    if c.routers.is_empty() {
        writeln!(out, "\n# no [[router]]: recipients are classified by domains.local and [relay]")?;
    }
    for router in &c.routers {
        writeln!(out, "\n[[router]]")?;
        writeln!(out, "name = {}", quoted(&router.name))?;
        writeln!(out, "driver = {}", quoted(router.driver.as_str()))?;
        for (key, list) in
            [("domains", &router.domains), ("local_parts", &router.local_parts), ("senders", &router.senders)]
        {
            if !list.is_empty() {
                writeln!(out, "{key} = {}", string_array(list))?;
            }
        }
        if let Some(file) = &router.file {
            writeln!(out, "file = {}", quoted(&file.to_string_lossy()))?;
        }
        for (key, value) in [
            ("source", &router.source),
            ("query", &router.query),
            ("host", &router.host),
            ("transport", &router.transport),
            ("pool", &router.pool),
        ] {
            if let Some(value) = value {
                writeln!(out, "{key} = {}", quoted(value))?;
            }
        }
        if !router.rules.is_empty() {
            writeln!(out, "rules = [")?;
            for (pattern, replacement) in &router.rules {
                writeln!(out, "  [{}, {}],", quoted(pattern), quoted(replacement))?;
            }
            writeln!(out, "]")?;
        }
        write_callout(out, router.callout.as_ref())?;
    }
    Ok(())
}

/// `verify = "callout"` and its options, when set.
fn write_callout(out: &mut String, callout: Option<&super::Callout>) -> fmt::Result {
    let Some(callout) = callout else { return Ok(()) };
    writeln!(out, "verify = \"callout\"")?;
    writeln!(out, "callout_random = {}", callout.random)?;
    writeln!(out, "callout_sender = {}", quoted(&callout.sender.as_config()))?;
    writeln!(out, "callout_defer_ok = {}", callout.defer_ok)
}

/// `[auth]` and the `[[listener]]` tables, when set.
fn write_submission(out: &mut String, c: &Config) -> fmt::Result {
    use super::SaslBackend;
    if let Some(a) = &c.sasl {
        writeln!(out, "\n[auth]")?;
        writeln!(out, "backend = {}", quoted(a.backend.as_str()))?;
        match &a.backend {
            SaslBackend::Table(path) => writeln!(out, "table = {}", quoted(&path.to_string_lossy()))?,
            SaslBackend::Dovecot(path) => writeln!(out, "dovecot_socket = {}", quoted(&path.to_string_lossy()))?,
            SaslBackend::Ldap { url, bind_dn } => {
                writeln!(out, "ldap = {}", quoted(url))?;
                writeln!(out, "ldap_bind_dn = {}", quoted(bind_dn))?;
            }
        }
        writeln!(out, "max_failures = {}", a.max_failures)?;
        writeln!(out, "max_failures_per_client = {}", a.max_failures_per_client)?;
        writeln!(out, "failure_window = {}", quoted(&a.failure_window.to_string()))?;
        writeln!(out, "failure_delay = {}", quoted(&a.failure_delay.to_string()))?;
        writeln!(out, "max_concurrent = {}", a.max_concurrent)?;
        writeln!(out, "queue_max = {}", a.queue_max)?;
        writeln!(out, "timeout = {}", quoted(&a.timeout.to_string()))?;
        let maps = a.sender_login_maps.as_ref().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        writeln!(out, "sender_login_maps = {}", quoted(&maps))?;
    }
    for l in &c.listeners {
        writeln!(out, "\n[[listener]]")?;
        writeln!(out, "address = {}", quoted(&l.address.to_string()))?;
        writeln!(out, "role = {}", quoted(l.role.as_str()))?;
        writeln!(out, "tls = {}", quoted(l.tls.as_str()))?;
        if let Some(networks) = &l.relay_networks {
            writeln!(out, "relay_networks = {}", string_array(networks))?;
        }
        writeln!(out, "frontline = {}", l.frontline)?;
        writeln!(out, "auth = {}", l.auth)?;
    }
    Ok(())
}
