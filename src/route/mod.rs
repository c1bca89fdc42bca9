//! Routing: where an address goes, and therefore whether it is valid. One
//! ordered list of routers decides for delivery and, in verify mode (no side
//! effects), for RCPT-time checks (DESIGN.md, principle 3).
//!
//! Place in the pipeline: asked by ingress at RCPT (verify mode) and by the
//! delivery engine before each attempt. Table lookups go through
//! [`source::LookupSource`]; blocking back ends (PostgreSQL, LDAP) sit behind
//! the bounded pools of `crate::pool`.
//!
//! An address goes through the `[[router]]` tables in order; each router whose
//! conditions match either declines (the next one is asked), rewrites the
//! address (routing starts again from the top, at most `route.max_rewrites`
//! times), expands it into several addresses (aliases: each routed on its
//! own), or decides: deliver, reject, defer, discard. No router deciding is
//! 550 5.1.1. The engine is built from the configuration at start-up and at
//! SIGHUP ([`install`], [`current`]); a session keeps the engine it started
//! with.

pub mod domains;
pub mod drivers;
pub mod source;
pub mod sqlite;
pub mod table;

use std::sync::{Arc, RwLock};

use crate::config::{Config, Router};
use crate::smtp::reply::{Enhanced, Reply};
use source::{LookupError, LookupSource};

/// Whether routing may have side effects. The routers themselves never run
/// pipes or write files (those are transports); verify mode also skips
/// nothing but the DNS lookup of `dnslookup`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// At RCPT (and MAIL with `route.verify_sender`): decide validity only.
    Verify,
    /// Before a delivery attempt.
    Deliver,
}

/// Where one final address goes: what the delivery engine maps onto its
/// transports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// `local` (Maildir of the local part of `address`), `smtp` (to
    /// `next_hop`, or by MX when `None`), `pipe` (`address` is the command),
    /// `file` (`address` is the path), or a mailertable transport name
    /// (`esmtp`, `relay`, … : SMTP to `next_hop`).
    pub transport: String,
    /// `host`, `host:port` or `[ip]:port`; `None`: by MX of the address's domain.
    pub next_hop: Option<String>,
    /// The final address (after rewrites and aliases; subaddress removed for
    /// `local`), or the command/path for `pipe` and `file`.
    pub address: String,
    /// The router that decided.
    pub router: String,
}

/// What routing decided for one address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Deliver to each of these (one, or several after an alias list);
    /// `failed` lists the members of a list that were refused.
    Deliver { deliveries: Vec<Delivery>, failed: Vec<(String, Reply)> },
    /// Permanent refusal: the reply to RCPT, or the bounce's text.
    Reject(Reply),
    /// Try later: 451 at RCPT, a retry at delivery.
    Defer(Reply),
    /// Accepted and thrown away (an alias to /dev/null, a virtual `discard`).
    Discard,
}

impl Decision {
    /// The RCPT (or MAIL) reply of a verify-mode decision.
    pub fn verify_reply(&self) -> Reply {
        match self {
            Decision::Deliver { .. } | Decision::Discard => Reply::new(250, Enhanced(2, 1, 5), "Recipient ok"),
            Decision::Reject(reply) | Decision::Defer(reply) => reply.clone(),
        }
    }
}

/// The decision with the steps that led to it, for logs and `ringpost route`.
#[derive(Clone, Debug)]
pub struct Routed {
    pub decision: Decision,
    pub trace: Vec<String>,
}

/// The table a router reads.
pub(crate) enum Table {
    None,
    Source(Arc<dyn LookupSource>),
}

impl Table {
    pub(crate) async fn get(&self, key: &str) -> Result<Option<String>, LookupError> {
        match self {
            Table::None => Ok(None),
            Table::Source(source) => source.lookup(key).await,
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Table::None => "-".to_string(),
            Table::Source(source) => source.describe(),
        }
    }
}

/// One router ready to run: its configuration and its opened table.
pub(crate) struct Built {
    pub config: Router,
    pub table: Table,
    /// `rewrite`: compiled rules, and a set to find the first match fast.
    pub rules: Vec<(regex::Regex, String)>,
    pub rule_set: Option<regex::RegexSet>,
    /// `local_users` without a table: the system's user names.
    pub passwd: Option<std::collections::HashSet<String>>,
}

/// The routers of one configuration with their tables open.
pub struct Engine {
    pub(crate) config: Config,
    pub(crate) routers: Vec<Built>,
}

impl Engine {
    /// Opens every router's table. Errors name the router and the table
    /// (`path:line` for text tables).
    pub fn build(config: &Config) -> Result<Engine, String> {
        let mut routers = Vec::with_capacity(config.routers.len());
        for router in &config.routers {
            let built = drivers::build(config, router).map_err(|e| format!("router {}: {e}", router.name))?;
            routers.push(built);
        }
        Ok(Engine { config: config.clone(), routers })
    }

    /// Whether any `[[router]]` is configured; without, callers keep the
    /// classification by `domains.local` and `[relay]`.
    pub fn is_empty(&self) -> bool {
        self.routers.is_empty()
    }

    /// The configuration the engine was built from.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Routes `address` (`local@domain`, or a bare local part, which is taken
    /// in the first of `domains.local`) for a message from `sender`.
    pub async fn route(&self, address: &str, sender: &str, mode: Mode) -> Routed {
        let mut walk = drivers::Walk::new(self, sender, mode);
        let address = self.qualify(address);
        let mut decision = walk.route(address.clone(), 0, Vec::new(), None, 0).await;
        if let Decision::Reject(_) = decision {
            // RFC 5321 §4.5.1: postmaster of a local domain is always
            // accepted, whatever the tables say; it goes to its Maildir.
            let (local, domain) = address.rsplit_once('@').unwrap_or((&address, ""));
            if local == "postmaster" && self.config.domains.is_local(domain) {
                walk.trace.push(format!("postmaster of a local domain: deliver <{address}> by local"));
                let delivery =
                    Delivery { transport: "local".into(), next_hop: None, address, router: "postmaster".into() };
                decision = Decision::Deliver { deliveries: vec![delivery], failed: Vec::new() };
            }
        }
        Routed { decision, trace: walk.trace }
    }

    /// `local@domain`, lower-cased; a bare local part gets the first local domain.
    pub(crate) fn qualify(&self, address: &str) -> String {
        let address = address.trim().trim_start_matches('<').trim_end_matches('>');
        if address.contains('@') {
            address.to_lowercase()
        } else {
            let domain = self.config.domains.local.first().map_or("localhost", String::as_str);
            format!("{}@{}", address.to_lowercase(), domain.to_lowercase())
        }
    }
}

/// The reply for a lookup that failed: the client tries again later.
pub fn lookup_failed(router: &str, error: &LookupError) -> Reply {
    let (kind, detail) = match error {
        LookupError::Temporary(text) => ("temporary", text),
        LookupError::Config(text) => ("config", text),
    };
    crate::log::event("lookup_failed", &[("router", &router), ("kind", &kind), ("error", detail)]);
    Reply::new(451, Enhanced(4, 3, 0), "Temporary lookup failure, try again later")
}

static LIVE: RwLock<Option<Arc<Engine>>> = RwLock::new(None);

/// Makes `engine` the one new sessions and delivery attempts use.
pub fn install(engine: Arc<Engine>) {
    *LIVE.write().expect("routing engine lock") = Some(engine);
}

/// The engine in use; `None` before `install` (tests, tools), which callers
/// treat as "no routers".
pub fn current() -> Option<Arc<Engine>> {
    LIVE.read().expect("routing engine lock").clone()
}

/// The engine in use if it has routers.
pub fn current_with_routers() -> Option<Arc<Engine>> {
    current().filter(|engine| !engine.is_empty())
}

/// Builds the engine of `config` and installs it; on error the engine in
/// use stays. What SIGHUP runs after re-reading the configuration.
pub fn reload(config: &Config) -> Result<(), String> {
    let engine = Engine::build(config)?;
    install(Arc::new(engine));
    Ok(())
}

/// A next hop as the outbound client connects to it: `[192.0.2.1]:2525`
/// becomes `192.0.2.1:2525`, a missing port is 25.
pub fn socket_host(next_hop: &str) -> String {
    let hop = next_hop.trim();
    let (host, port) = match hop.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !host.ends_with(':') => (host, port),
        _ => (hop, "25"),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests;
