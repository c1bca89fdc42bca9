//! The router drivers and the walk of one address through the routers:
//! conditions, rewrites from the top, alias expansion with loop detection,
//! virtusertable and mailertable semantics, local users, smarthost and MX.
//!
//! Place in the pipeline: inside the routing engine (`route::Engine::route`),
//! run at RCPT in verify mode and before delivery.

use std::collections::HashSet;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use crate::config::{Config, Driver, Router};
use crate::smtp::reply::{Enhanced, Reply};

use super::source::LookupSource;
use super::{lookup_failed, Built, Decision, Delivery, Engine, Mode, Table};

/// Most entries of an `:include:` file.
const INCLUDE_ENTRIES_MAX: usize = 10_000;
/// Size limit of the compiled rewrite rule set (the regex crate's default is
/// too small for 10,000 rules).
const RULE_SET_BYTES_MAX: usize = 256 << 20;

/// A table kept outside ringpost (`sqlite:PATH`, `postgres:URL`,
/// `ldap:URL`) with its `query`: SQLite on its blocking threads, the
/// others behind the bounded pool named by `pool` (`[pool.NAME]`, else
/// the defaults). `owner` names the key in errors. Uncached.
pub(crate) fn open_source(
    config: &Config,
    spec: &str,
    query: &str,
    pool: Option<&str>,
    owner: &str,
) -> Result<Arc<dyn LookupSource>, String> {
    if let Some(path) = spec.strip_prefix("sqlite:") {
        return Ok(Arc::new(super::sqlite::SqliteSource::open(path, query, config.route.sqlite_max_in_flight)?));
    }
    let params = match pool {
        None => crate::pool::PoolParams::default(),
        Some(name) => config
            .pools
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
            .ok_or_else(|| format!("{owner}: no [pool.{name}] table"))?,
    };
    crate::pool::open_source(spec, query, &params)
}

/// Opens the table and compiles the rules of `router`.
pub(crate) fn build(config: &Config, router: &Router) -> Result<Built, String> {
    let table = match (&router.file, &router.source) {
        (Some(_), _) if router.driver == Driver::Rewrite => Table::None,
        (Some(path), _) => {
            let source: Arc<dyn LookupSource> = if path.extension().is_some_and(|e| e == "cdb") {
                Arc::new(super::table::CdbTable::open(path)?)
            } else {
                Arc::new(super::table::TextTable::open(path)?)
            };
            Table::Source(source)
        }
        (None, Some(spec)) => {
            let query = router.query.as_deref().unwrap_or_default();
            let owner = format!("router {}", router.name);
            let inner = open_source(config, spec, query, router.pool.as_deref(), &owner)?;
            let cached = super::sqlite::Cached::new(inner, config.route.cache_ttl.0, config.route.cache_entries);
            Table::Source(Arc::new(cached))
        }
        (None, None) => Table::None,
    };
    let mut rule_texts = router.rules.clone();
    if router.driver == Driver::Rewrite {
        if let Some(path) = &router.file {
            rule_texts.extend(read_rules(path)?);
        }
    }
    let mut rules = Vec::with_capacity(rule_texts.len());
    for (pattern, replacement) in &rule_texts {
        let regex = regex::Regex::new(pattern).map_err(|e| format!("rule {pattern:?}: {e}"))?;
        rules.push((regex, replacement.clone()));
    }
    let rule_set = if rules.len() > 8 {
        regex::RegexSetBuilder::new(rule_texts.iter().map(|(p, _)| p))
            .size_limit(RULE_SET_BYTES_MAX)
            .dfa_size_limit(RULE_SET_BYTES_MAX)
            .build()
            .ok()
    } else {
        None
    };
    let passwd = if router.driver == Driver::LocalUsers && matches!(table, Table::None) {
        Some(read_passwd(Path::new("/etc/passwd"))?)
    } else {
        None
    };
    Ok(Built { config: router.clone(), table, rules, rule_set, passwd })
}

/// Rewrite rules from a file: `REGEX REPLACEMENT` per line, `#` comments.
fn read_rules(path: &Path) -> Result<Vec<(String, String)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut rules = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((pattern, replacement)) = line.split_once([' ', '\t']) else {
            return Err(format!("{}:{}: expected REGEX REPLACEMENT", path.display(), index + 1));
        };
        if let Err(e) = regex::Regex::new(pattern) {
            return Err(format!("{}:{}: bad regex: {}", path.display(), index + 1, e.to_string().replace('\n', " ")));
        }
        rules.push((pattern.to_string(), replacement.trim().to_string()));
    }
    Ok(rules)
}

fn read_passwd(path: &Path) -> Result<HashSet<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|line| line.split(':').next())
        .filter(|n| !n.is_empty())
        .map(str::to_lowercase)
        .collect())
}

/// Splits a local part at the first subaddress separator present (tried in
/// the order of `route.subaddress_separators`): `(user, Some((sep, detail)))`.
pub fn split_subaddress<'a>(local: &'a str, separators: &[String]) -> (&'a str, Option<(&'a str, &'a str)>) {
    for separator in separators {
        if let Some(at) = local.find(separator.as_str()) {
            if at > 0 {
                let sep_end = at + separator.len();
                return (&local[..at], Some((&local[at..sep_end], &local[sep_end..])));
            }
        }
    }
    (local, None)
}

/// Parses `error:5.1.1:550 text` (or `error:550 text`) into a reply.
pub fn error_reply(value: &str) -> Option<Reply> {
    let rest = value.strip_prefix("error:")?;
    let (enhanced, rest) = match rest.split_once(':') {
        Some((status, rest)) if status.split('.').count() == 3 => (parse_enhanced(status), rest),
        _ => (None, rest),
    };
    let rest = rest.trim();
    let (code, text) = rest.split_once(' ').unwrap_or((rest, ""));
    let code: u16 = code.parse().ok().filter(|c| (400..600).contains(c)).unwrap_or(550);
    let default_enhanced = if code >= 500 { Enhanced(5, 1, 1) } else { Enhanced(4, 3, 0) };
    let enhanced = enhanced.filter(|e| u16::from(e.0) * 100 == code / 100 * 100).unwrap_or(default_enhanced);
    let text = if text.trim().is_empty() { "Address rejected" } else { text.trim() };
    let text: String = text.chars().filter(|c| !c.is_control()).collect();
    Some(Reply::new(code, enhanced, text))
}

fn parse_enhanced(text: &str) -> Option<Enhanced> {
    let mut parts = text.split('.');
    let class: u8 = parts.next()?.parse().ok().filter(|c| *c == 4 || *c == 5)?;
    Some(Enhanced(class, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// One walk: one address from the top, with everything it expands to.
pub(crate) struct Walk<'e> {
    engine: &'e Engine,
    sender: String,
    mode: Mode,
    pub trace: Vec<String>,
    expanded: usize,
}

type Boxed<'a> = Pin<Box<dyn Future<Output = Decision> + 'a>>;

/// What a router did with an address.
enum Step {
    Decline,
    Rewrite(String),
    Expand(Vec<String>),
    Decide(Decision),
}

impl<'e> Walk<'e> {
    pub(crate) fn new(engine: &'e Engine, sender: &str, mode: Mode) -> Walk<'e> {
        Walk { engine, sender: sender.to_lowercase(), mode, trace: Vec::new(), expanded: 0 }
    }

    fn note(&mut self, depth: u32, text: String) {
        self.trace.push(format!("{}{text}", "  ".repeat(depth as usize)));
    }

    /// Routes `address` from the top. `ancestors`: the aliases being
    /// expanded above it; `skip`: a router not to ask again (an alias that
    /// lists itself is delivered past its aliases router).
    pub(crate) fn route<'a>(
        &'a mut self,
        address: String,
        depth: u32,
        ancestors: Vec<String>,
        skip: Option<usize>,
        rewrites: u32,
    ) -> Boxed<'a> {
        Box::pin(async move {
            let route = &self.engine.config.route;
            let mut address = address;
            let mut skip = skip;
            let mut rewrites = rewrites;
            'restart: loop {
                self.note(depth, format!("<{address}>"));
                for (index, router) in self.engine.routers.iter().enumerate() {
                    if skip == Some(index) || !self.conditions_match(router, &address) {
                        continue;
                    }
                    let name = router.config.name.clone();
                    match self.step(router, &address).await {
                        Step::Decline => {
                            let table = router.table.describe();
                            self.note(
                                depth,
                                format!("  router {name} ({}, {table}): declined", router.config.driver.as_str()),
                            )
                        }
                        Step::Rewrite(new) => {
                            self.note(depth, format!("  router {name}: rewritten to <{new}>"));
                            rewrites += 1;
                            if rewrites > route.max_rewrites {
                                let text =
                                    format!("Routing loop: more than {} rewrites of <{address}>", route.max_rewrites);
                                self.note(depth, format!("  {text}"));
                                return Decision::Reject(Reply::new(550, Enhanced(5, 4, 6), text));
                            }
                            address = new;
                            skip = None;
                            continue 'restart;
                        }
                        Step::Expand(items) => {
                            self.note(depth, format!("  router {name}: expands to {}", items.join(", ")));
                            return self.expand(index, &name, address, items, depth, ancestors, rewrites).await;
                        }
                        Step::Decide(decision) => {
                            self.note(depth, format!("  router {name}: {}", describe(&decision)));
                            return decision;
                        }
                    }
                }
                let reply = Reply::new(550, Enhanced(5, 1, 1), format!("<{address}>: Unrouteable address"));
                self.note(depth, "  no router accepted the address: 550 5.1.1".to_string());
                return Decision::Reject(reply);
            }
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn expand(
        &mut self,
        router_index: usize,
        router: &str,
        address: String,
        items: Vec<String>,
        depth: u32,
        ancestors: Vec<String>,
        rewrites: u32,
    ) -> Decision {
        let route = &self.engine.config.route;
        if depth + 1 > route.max_alias_depth {
            return Decision::Reject(Reply::new(
                550,
                Enhanced(5, 4, 6),
                format!("Alias nesting deeper than {} at <{address}>", route.max_alias_depth),
            ));
        }
        let mut deliveries = Vec::new();
        let mut failed = Vec::new();
        let mut deferred = None;
        let mut discarded = false;
        let domain = address.rsplit_once('@').map_or("", |(_, d)| d).to_string();
        for item in items {
            self.expanded += 1;
            if self.expanded > route.max_expansion {
                return Decision::Reject(Reply::new(
                    550,
                    Enhanced(5, 4, 6),
                    format!("<{address}> expands to more than {} addresses", route.max_expansion),
                ));
            }
            if let Some(command) = item.strip_prefix('|') {
                deliveries.push(Delivery {
                    transport: "pipe".into(),
                    next_hop: None,
                    address: command.trim().to_string(),
                    router: router.into(),
                });
                continue;
            }
            if item == "/dev/null" {
                discarded = true;
                continue;
            }
            if item.starts_with('/') {
                deliveries.push(Delivery {
                    transport: "file".into(),
                    next_hop: None,
                    address: item,
                    router: router.into(),
                });
                continue;
            }
            let target =
                if item.contains('@') { item.to_lowercase() } else { format!("{}@{domain}", item.to_lowercase()) };
            let decision = if target == address {
                // An alias that lists itself: delivered past this router.
                self.route(target.clone(), depth + 1, ancestors.clone(), Some(router_index), rewrites).await
            } else if ancestors.contains(&target) {
                let mut chain = ancestors.clone();
                chain.push(address.clone());
                chain.push(target.clone());
                let text = format!("Alias loop: {}", chain.join(" -> "));
                self.note(depth + 1, text.clone());
                Decision::Reject(Reply::new(550, Enhanced(5, 4, 6), text))
            } else {
                let mut chain = ancestors.clone();
                chain.push(address.clone());
                self.route(target.clone(), depth + 1, chain, None, rewrites).await
            };
            match decision {
                Decision::Deliver { deliveries: more, failed: more_failed } => {
                    deliveries.extend(more);
                    failed.extend(more_failed);
                }
                Decision::Reject(reply) => failed.push((target, reply)),
                Decision::Defer(reply) => deferred = Some(deferred.unwrap_or(reply)),
                Decision::Discard => discarded = true,
            }
        }
        // A loop anywhere below refuses the whole alias: it is a broken table.
        if let Some((_, reply)) = failed.iter().find(|(_, r)| r.enhanced == Some(Enhanced(5, 4, 6))) {
            return Decision::Reject(reply.clone());
        }
        if let Some(reply) = deferred {
            return Decision::Defer(reply);
        }
        if !deliveries.is_empty() {
            return Decision::Deliver { deliveries, failed };
        }
        if let Some((_, reply)) = failed.into_iter().next() {
            return Decision::Reject(reply);
        }
        let _ = discarded;
        Decision::Discard
    }

    fn domain_matches(&self, patterns: &[String], domain: &str) -> bool {
        patterns.iter().any(|pattern| {
            if pattern == "@local" {
                self.engine.config.domains.is_local(domain)
            } else if let Some(suffix) = pattern.strip_prefix('.') {
                domain.ends_with(&format!(".{suffix}"))
            } else {
                pattern.trim_end_matches('.') == domain.trim_end_matches('.')
            }
        })
    }

    fn conditions_match(&self, router: &Built, address: &str) -> bool {
        let config = &router.config;
        let (local, domain) = address.rsplit_once('@').unwrap_or((address, ""));
        let domains_ok = if config.domains.is_empty() {
            match config.driver {
                // Without a domain condition these apply to local domains
                // only, the remote ones to the others.
                Driver::Aliases | Driver::LocalUsers => self.engine.config.domains.is_local(domain),
                Driver::Dnslookup | Driver::Smarthost => !self.engine.config.domains.is_local(domain),
                _ => true,
            }
        } else {
            self.domain_matches(&config.domains, domain)
        };
        if !domains_ok {
            return false;
        }
        if !config.local_parts.is_empty() {
            let (base, _) = split_subaddress(local, &self.engine.config.route.subaddress_separators);
            if !config.local_parts.iter().any(|l| l == base || l == local) {
                return false;
            }
        }
        if !config.senders.is_empty() {
            let sender_domain = self.sender.rsplit_once('@').map_or("", |(_, d)| d);
            let ok = config
                .senders
                .iter()
                .any(|s| *s == self.sender || s.strip_prefix('@').is_some_and(|d| d == sender_domain));
            if !ok {
                return false;
            }
        }
        true
    }

    async fn lookup(&self, router: &Built, key: &str) -> Result<Option<String>, Decision> {
        router.table.get(key).await.map_err(|e| Decision::Defer(lookup_failed(&router.config.name, &e)))
    }

    async fn step(&mut self, router: &Built, address: &str) -> Step {
        let (local, domain) = address.rsplit_once('@').unwrap_or((address, ""));
        let separators = &self.engine.config.route.subaddress_separators;
        let (base, detail) = split_subaddress(local, separators);
        let name = router.config.name.clone();
        match router.config.driver {
            Driver::Rewrite => {
                let index = match &router.rule_set {
                    Some(set) => set.matches(address).iter().next(),
                    None => router.rules.iter().position(|(regex, _)| regex.is_match(address)),
                };
                match index {
                    None => Step::Decline,
                    Some(index) => {
                        let (regex, replacement) = &router.rules[index];
                        Step::Rewrite(regex.replace(address, replacement.as_str()).to_lowercase())
                    }
                }
            }
            Driver::Aliases => {
                let mut keys = vec![local.to_string()];
                if detail.is_some() {
                    keys.push(base.to_string());
                }
                for key in keys {
                    match self.lookup(router, &key).await {
                        Err(decision) => return Step::Decide(decision),
                        Ok(None) => continue,
                        Ok(Some(value)) => return self.alias_items(&value, 0).map_or_else(Step::Decide, Step::Expand),
                    }
                }
                Step::Decline
            }
            Driver::Virtual => {
                // Precedence: the exact address, then user+*@domain (any
                // detail), then user@domain, then the @domain catch-all.
                let mut keys: Vec<(String, bool)> = vec![(address.to_string(), false)];
                if let Some((separator, _)) = detail {
                    keys.push((format!("{base}{separator}*@{domain}"), false));
                    keys.push((format!("{base}@{domain}"), false));
                }
                keys.push((format!("@{domain}"), true));
                for (key, catch_all) in keys {
                    let value = match self.lookup(router, &key).await {
                        Err(decision) => return Step::Decide(decision),
                        Ok(None) => continue,
                        Ok(Some(value)) => value,
                    };
                    self.trace.push(format!("    {name}: {key} -> {value}"));
                    if let Some(reply) = error_reply(&value) {
                        return Step::Decide(Decision::Reject(reply));
                    }
                    if value == "discard" {
                        return Step::Decide(Decision::Discard);
                    }
                    let (detail_text, with_separator) = match detail {
                        Some((separator, d)) => (d.to_string(), format!("{separator}{d}")),
                        None => (String::new(), String::new()),
                    };
                    let _ = catch_all;
                    let target = value.replace("%1", base).replace("%2", &detail_text).replace("%3", &with_separator);
                    let target = if let Some(target_domain) = target.strip_prefix('@') {
                        format!("{local}@{target_domain}")
                    } else {
                        target
                    };
                    if target.contains(',') {
                        return Step::Expand(
                            target.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect(),
                        );
                    }
                    return Step::Rewrite(self.engine.qualify(&target));
                }
                Step::Decline
            }
            Driver::Mailertable => {
                let mut keys = vec![domain.to_string()];
                let mut rest = domain;
                while let Some((_, parent)) = rest.split_once('.') {
                    keys.push(format!(".{parent}"));
                    rest = parent;
                }
                keys.push(".".to_string());
                for key in keys {
                    let value = match self.lookup(router, &key).await {
                        Err(decision) => return Step::Decide(decision),
                        Ok(None) => continue,
                        Ok(Some(value)) => value,
                    };
                    self.trace.push(format!("    {name}: {key} -> {value}"));
                    if let Some(reply) = error_reply(&value) {
                        return Step::Decide(Decision::Reject(reply));
                    }
                    let (transport, hop) = value.split_once(':').unwrap_or((value.as_str(), ""));
                    let hop = hop.trim();
                    let delivery = Delivery {
                        transport: transport.trim().to_string(),
                        next_hop: if hop.is_empty() { None } else { Some(hop.to_string()) },
                        address: address.to_string(),
                        router: name,
                    };
                    return Step::Decide(Decision::Deliver { deliveries: vec![delivery], failed: Vec::new() });
                }
                Step::Decline
            }
            Driver::LocalUsers => {
                let transport = router.config.transport.clone().unwrap_or_else(|| "local".into());
                let deliver = |base: &str| {
                    Step::Decide(Decision::Deliver {
                        deliveries: vec![Delivery {
                            transport: transport.clone(),
                            next_hop: None,
                            address: format!("{base}@{domain}"),
                            router: name.clone(),
                        }],
                        failed: Vec::new(),
                    })
                };
                let unknown = Step::Decide(Decision::Reject(Reply::new(
                    550,
                    Enhanced(5, 1, 1),
                    format!("<{address}>: Recipient address rejected: User unknown"),
                )));
                if let Some(passwd) = &router.passwd {
                    return if passwd.contains(base) { deliver(base) } else { unknown };
                }
                if detail.is_some() {
                    match self.lookup(router, local).await {
                        Err(decision) => return Step::Decide(decision),
                        Ok(Some(_)) => return deliver(base),
                        Ok(None) => {}
                    }
                }
                match self.lookup(router, base).await {
                    Err(decision) => Step::Decide(decision),
                    Ok(None) => unknown,
                    Ok(Some(value)) => match detail {
                        None => deliver(base),
                        Some((_, detail)) => {
                            // Per user: empty or "*": any subaddress; "none":
                            // none; otherwise the listed ones.
                            let value = value.trim();
                            let allowed = value.is_empty()
                                || value == "*"
                                || (value != "none"
                                    && value.split([',', ' ']).map(str::trim).any(|d| d.eq_ignore_ascii_case(detail)));
                            if allowed {
                                deliver(base)
                            } else {
                                unknown
                            }
                        }
                    },
                }
            }
            Driver::Dnslookup => {
                let transport = router.config.transport.clone().unwrap_or_else(|| "smtp".into());
                let delivery = Delivery { transport, next_hop: None, address: address.to_string(), router: name };
                Step::Decide(Decision::Deliver { deliveries: vec![delivery], failed: Vec::new() })
            }
            Driver::Smarthost => {
                let host = router.config.host.clone().or_else(|| self.engine.config.delivery.smarthost.clone());
                match host {
                    None => Step::Decide(Decision::Defer(Reply::new(
                        451,
                        Enhanced(4, 4, 4),
                        "No route to remote domains (smarthost unset)",
                    ))),
                    Some(host) => {
                        let transport = router.config.transport.clone().unwrap_or_else(|| "smtp".into());
                        let delivery =
                            Delivery { transport, next_hop: Some(host), address: address.to_string(), router: name };
                        Step::Decide(Decision::Deliver { deliveries: vec![delivery], failed: Vec::new() })
                    }
                }
            }
        }
    }

    /// The members of an aliases(5) value: comma-separated, `"…"` quoting,
    /// `:include:FILE` read in place (reading is no side effect).
    fn alias_items(&self, value: &str, include_depth: u32) -> Result<Vec<String>, Decision> {
        let mut items = Vec::new();
        for item in split_list(value) {
            if let Some(path) = item.strip_prefix(":include:") {
                if include_depth + 1 > self.engine.config.route.max_alias_depth {
                    return Err(Decision::Reject(Reply::new(550, Enhanced(5, 4, 6), "Include nesting too deep")));
                }
                let path = path.trim();
                let text = match std::fs::read_to_string(path) {
                    Ok(text) => text,
                    Err(e) => {
                        crate::log::event("include_failed", &[("path", &path), ("error", &e)]);
                        return Err(Decision::Defer(Reply::new(
                            451,
                            Enhanced(4, 3, 0),
                            "Temporary lookup failure, try again later",
                        )));
                    }
                };
                let joined: Vec<&str> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .take(INCLUDE_ENTRIES_MAX)
                    .collect();
                items.extend(self.alias_items(&joined.join(","), include_depth + 1)?);
            } else {
                items.push(item);
            }
        }
        let _ = self.mode;
        Ok(items)
    }
}

/// Splits an alias value at commas outside double quotes; quotes removed.
fn split_list(value: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in value.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                if !current.trim().is_empty() {
                    items.push(current.trim().to_string());
                }
                current.clear();
            }
            c => current.push(c),
        }
    }
    if !current.trim().is_empty() {
        items.push(current.trim().to_string());
    }
    items
}

fn describe(decision: &Decision) -> String {
    match decision {
        Decision::Deliver { deliveries, .. } => {
            let parts: Vec<String> = deliveries
                .iter()
                .map(|d| match &d.next_hop {
                    Some(hop) => format!("deliver <{}> by {} via {hop}", d.address, d.transport),
                    None => format!("deliver <{}> by {}", d.address, d.transport),
                })
                .collect();
            parts.join("; ")
        }
        Decision::Reject(reply) => format!("reject {}", reply.summary()),
        Decision::Defer(reply) => format!("defer {}", reply.summary()),
        Decision::Discard => "discard".to_string(),
    }
}
