//! One delivery attempt of one message: for each pending recipient, the
//! transport that takes it — a `[[transport]]` rule (SMTP next hop, LMTP,
//! pipe, Maildir), a local Maildir, SMTP to the smarthost or the domain's
//! MX hosts, or wherever the `[[router]]` tables send it — grouped so that
//! one SMTP transaction carries every recipient of one destination.
//!
//! Place in the pipeline: the library both callers of a delivery share —
//! the delivery engine (`engine.rs`), with messages the queue hands over,
//! and the early-delivery stage at the final dot (`crate::scan`), with a
//! message not yet committed. It owns the shard's outbound side (DNS
//! resolver, outbound connections, TLS client settings) and records
//! nothing: callers apply the outcomes ([`record`]) and tell the queue.
//! Its choice of next hop is also what a call-forward callout connects to
//! (`rule_hop`, `routed_hop`, used by `crate::verify` through ingress).

use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::Arc;

use crate::config::{Config, TransportKind};
use crate::deliver::connections::{ConnectionStats, Connections};
use crate::deliver::outbound::{self, Destination, Outbound};
use crate::deliver::{lmtp, maildir, pipe};
use crate::dns::{Resolver, ResolverParams};
use crate::log;
use crate::queue::{stored_address, Body, Envelope, Queue, RcptState, StoredBody};
use crate::route::domains::{self, Disposition};
use crate::smtp::address::{Address, ReversePath};
use crate::smtp::client::RcptOutcome;
use crate::smtp::reply::{Enhanced, Reply};

/// Recipients per SMTP transaction; more to one destination are split
/// (Postfix's smtp_destination_recipient_limit is 50).
pub const RECIPIENTS_PER_TRANSACTION_MAX: usize = 100;

/// One recipient's outcome: its index in the envelope, the outcome, where
/// it went (for the log), and what a success means for its reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempted {
    pub index: usize,
    pub outcome: RcptOutcome,
    pub relay: String,
    pub reached: Reached,
}

/// Where a delivered recipient's message now is, which decides its success
/// report (RFC 3461 §5.2.2, RFC 3464 §2.3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reached {
    /// Its mailbox (Maildir, LMTP store, pipe): `Action: delivered`.
    Mailbox,
    /// A next hop that does not offer DSN: `Action: relayed`, and no
    /// report will come from further on.
    Relayed,
    /// A next hop that offers DSN and got the DSN parameters: any success
    /// report is its job, none comes from here.
    RelayedWithDsn,
}

impl Attempted {
    fn new(index: usize, outcome: RcptOutcome, relay: String, reached: Reached) -> Attempted {
        Attempted { index, outcome, relay, reached }
    }
}

/// How a group of a message's recipients is delivered.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Path {
    /// Into Maildirs by this path template.
    Maildir(String),
    /// SMTP, by a transport rule (its index) or by default.
    Smtp {
        destination: Destination,
        rule: Option<usize>,
    },
    Lmtp {
        rule: usize,
    },
    Pipe {
        rule: usize,
    },
}

/// Pairs the recipient indexes of one delivery with its outcomes, in order,
/// each with where it went (the last recipient takes `relay` itself).
fn attempted(
    indexes: &[usize],
    outcomes: Vec<RcptOutcome>,
    relay: String,
    reached: Reached,
) -> impl Iterator<Item = Attempted> + '_ {
    debug_assert_eq!(indexes.len(), outcomes.len(), "one outcome per recipient");
    let count = indexes.len();
    let mut relay = Some(relay);
    indexes.iter().copied().zip(outcomes).enumerate().map(move |(n, (i, o))| {
        let relay = if n + 1 == count { relay.take() } else { relay.clone() };
        Attempted::new(i, o, relay.unwrap_or_default(), reached)
    })
}

/// The same temporary failure for `count` recipients.
fn transient_all(count: usize, class: u8, subject: u16, detail: u16, text: &str) -> Vec<RcptOutcome> {
    let reply = Reply::new(451, Enhanced(class, subject, detail), text);
    (0..count).map(|_| RcptOutcome::Transient(reply.clone())).collect()
}

/// Where one recipient's SMTP or LMTP goes, chosen as delivery chooses
/// it: what a call-forward callout (`crate::verify`) connects to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hop {
    Smtp { destination: Destination, policy: outbound::Policy },
    Lmtp(lmtp::LmtpTarget),
}

impl Hop {
    /// The name the per-host callout limit counts by, and logs show.
    pub fn key(&self) -> String {
        match self {
            Hop::Smtp { destination, .. } => destination.key().to_string(),
            Hop::Lmtp(target) => target.to_string(),
        }
    }
}

/// The SMTP settings of a transport rule (or the defaults without one).
fn smtp_policy(config: &Config, rule: Option<usize>) -> outbound::Policy {
    let index = rule;
    let rule = rule.map(|index| &config.transports[index]);
    outbound::Policy {
        tls: rule.and_then(|r| r.tls).unwrap_or(config.delivery.tls),
        rule: index,
        max_connections: rule
            .and_then(|r| r.max_connections)
            .unwrap_or(config.delivery.max_connections_per_destination),
        transcript: false,
    }
}

/// Where SMTP goes for an address under an smtp transport rule: its
/// `nexthop`, else the MX hosts of the address's domain.
fn rule_destination(rule: &crate::config::TransportRule, address: &Address) -> Destination {
    match &rule.nexthop {
        Some(hop) => Destination::Smarthost(hop.clone()),
        None => Destination::Domain(domains::mx_domain(address)),
    }
}

/// Where SMTP goes for an address the routers sent to `next_hop` (or by
/// MX of the final address, or to the smarthost, when `None`).
fn routed_destination(config: &Config, next_hop: Option<&str>, final_address: &Address) -> Destination {
    match next_hop {
        Some(hop) => Destination::Smarthost(crate::route::socket_host(hop)),
        None => Destination::of(config, final_address),
    }
}

/// The hop of `address` under transport rule `index`, if it is SMTP or LMTP.
pub fn rule_hop(config: &Config, index: usize, address: &Address) -> Option<Hop> {
    let rule = &config.transports[index];
    match rule.transport {
        TransportKind::Smtp => {
            Some(Hop::Smtp { destination: rule_destination(rule, address), policy: smtp_policy(config, Some(index)) })
        }
        TransportKind::Lmtp => rule.nexthop.as_deref()?.parse().ok().map(Hop::Lmtp),
        TransportKind::Pipe | TransportKind::Maildir => None,
    }
}

/// The hop of a routers' delivery, with its final address, if it goes by
/// SMTP (what every transport but `local`, `pipe` and `file` does).
pub fn routed_hop(config: &Config, delivery: &crate::route::Delivery) -> Option<(Hop, Address)> {
    if matches!(delivery.transport.as_str(), "local" | "pipe" | "file") {
        return None;
    }
    let final_address = stored_address(&delivery.address).ok()?;
    let destination = routed_destination(config, delivery.next_hop.as_deref(), &final_address);
    Some((Hop::Smtp { destination, policy: smtp_policy(config, None) }, final_address))
}

/// The shard's transports.
pub struct Deliverer {
    /// Replaced by a reload ([`Deliverer::set_config`]); an attempt keeps
    /// the one it started with.
    config: std::cell::RefCell<Arc<Config>>,
    queue: Rc<Queue>,
    shard_index: usize,
    resolver: Resolver,
    connections: Connections,
    tls_client: Arc<rustls::ClientConfig>,
}

impl Deliverer {
    pub fn new(
        config: Arc<Config>,
        queue: Rc<Queue>,
        shard_index: usize,
        dns: ResolverParams,
        tls_client: Arc<rustls::ClientConfig>,
    ) -> Result<Deliverer, String> {
        let resolver = Resolver::new(dns).map_err(|e| format!("dns: {e}"))?;
        let connections = Connections::new(&config);
        if let Some(problem) = connections.security().problem(&config) {
            return Err(problem);
        }
        Ok(Deliverer { config: std::cell::RefCell::new(config), queue, shard_index, resolver, connections, tls_client })
    }

    /// The configuration an attempt that starts now uses.
    pub fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// A reload's configuration, for the attempts that start from now on.
    pub fn set_config(&self, config: Arc<Config>) {
        *self.config.borrow_mut() = config;
    }

    pub fn shard_index(&self) -> usize {
        self.shard_index
    }

    pub fn connections(&self) -> &Connections {
        &self.connections
    }

    /// Counters of the outbound connections.
    pub fn connection_stats(&self) -> ConnectionStats {
        self.connections.stats()
    }

    /// The outbound side (resolver, connections, TLS client), for callouts.
    pub fn outbound(&self) -> Outbound<'_> {
        Outbound {
            config: self.config(),
            resolver: &self.resolver,
            connections: &self.connections,
            tls_client: &self.tls_client,
        }
    }

    /// Where a message's content is stored.
    pub fn stored_body(&self, env: &Envelope) -> StoredBody {
        self.queue.stored_body(env)
    }

    /// The SMTP settings of a destination no transport rule names.
    pub fn default_policy(&self) -> outbound::Policy {
        smtp_policy(&self.config(), None)
    }

    /// Whether every recipient of `env` goes out by SMTP without the
    /// routers (what early delivery may try: Maildir, LMTP and pipe
    /// deliveries are commits of their own).
    pub fn all_by_smtp(&self, env: &Envelope) -> bool {
        let config = self.config();
        crate::route::current_with_routers().is_none()
            && env.recipients.iter().all(|r| matches!(self.path_of(&config, &r.address), Path::Smtp { .. }))
    }

    /// One delivery attempt for every pending recipient of `env`: each
    /// recipient's outcome and where it went.
    pub async fn deliver_pending(&self, env: &Envelope) -> Vec<Attempted> {
        // A body file that is not what its envelope says is never
        // delivered: every pending recipient waits for the next attempt
        // (the queue has logged what is wrong with it).
        if let Err(damaged) = self.queue.check_body(env).await {
            let reply = Reply::new(451, Enhanced(4, 3, 0), format!("queued content is damaged: {}", damaged.problem));
            return (0..env.recipients.len())
                .filter(|&i| env.recipients[i].state == RcptState::Pending)
                .map(|i| {
                    Attempted::new(i, RcptOutcome::Transient(reply.clone()), "queue".to_string(), Reached::Mailbox)
                })
                .collect();
        }
        let config = self.config();
        let mut groups: std::collections::BTreeMap<Path, Vec<usize>> = std::collections::BTreeMap::new();
        let routing = crate::route::current_with_routers();
        let mut routed = Vec::new();
        for (i, r) in env.recipients.iter().enumerate() {
            if r.state == RcptState::Pending {
                // With [[router]] tables the routers decide, as at RCPT,
                // except for a domain a [[transport]] rule names (a "*"
                // rule does not take routing away from the routers).
                if routing.is_some() && !domains::is_ruled(&config, &r.address) {
                    routed.push(i);
                } else {
                    groups.entry(self.path_of(&config, &r.address)).or_default().push(i);
                }
            }
        }
        let mut results: Vec<Attempted> = Vec::new();
        if let Some(engine) = &routing {
            for i in routed {
                let (outcome, reached) = self.deliver_routed(&config, engine, env, i).await;
                results.push(Attempted::new(i, outcome, "routed".to_string(), reached));
            }
        }
        let out = Outbound {
            config: config.clone(),
            resolver: &self.resolver,
            connections: &self.connections,
            tls_client: &self.tls_client,
        };
        let stored = self.queue.stored_body(env);
        for (path, indexes) in &groups {
            match path {
                Path::Maildir(template) => {
                    for &i in indexes {
                        let outcome = self.deliver_local(env, i, template, None).await;
                        results.push(Attempted::new(i, outcome, "local".to_string(), Reached::Mailbox));
                    }
                }
                Path::Smtp { destination, rule } => {
                    let policy = smtp_policy(&config, *rule);
                    for group in indexes.chunks(RECIPIENTS_PER_TRANSACTION_MAX) {
                        let delivered = outbound::deliver(&out, destination, policy, &stored, env, group).await;
                        let mut relay = delivered.relay;
                        let _ = write!(relay, " conn_use={}", delivered.conn_use);
                        if delivered.tls {
                            let _ = write!(relay, " tls=yes tls_level={}", delivered.tls_level);
                        }
                        let reached = if delivered.dsn { Reached::RelayedWithDsn } else { Reached::Relayed };
                        results.extend(attempted(group, delivered.outcomes, relay, reached));
                    }
                }
                Path::Lmtp { rule } => {
                    let rule = &config.transports[*rule];
                    let hop = rule.nexthop.as_deref().unwrap_or_default();
                    let outcomes = match hop.parse::<lmtp::LmtpTarget>() {
                        Ok(target) => {
                            let max = rule.max_connections.unwrap_or(config.delivery.max_connections_per_destination);
                            let _turn = self.connections.destination_permit(hop, max).await;
                            let mut outcomes = Vec::with_capacity(indexes.len());
                            for group in indexes.chunks(RECIPIENTS_PER_TRANSACTION_MAX) {
                                outcomes.extend(
                                    lmtp::deliver(
                                        &target,
                                        config.helo_name(),
                                        config.delivery.connect_timeout.0,
                                        &stored,
                                        env,
                                        group,
                                    )
                                    .await,
                                );
                            }
                            outcomes
                        }
                        Err(e) => transient_all(indexes.len(), 4, 3, 5, &e),
                    };
                    let relay = format!("lmtp:{hop}");
                    results.extend(attempted(indexes, outcomes, relay, Reached::Mailbox));
                }
                Path::Pipe { rule } => {
                    let rule = &config.transports[*rule];
                    let outcomes = match pipe::PipeParams::from_rule(
                        &rule.command,
                        rule.user.as_deref(),
                        rule.group.as_deref(),
                        rule.timeout.0,
                    ) {
                        Ok(params) => {
                            let max = rule.max_connections.unwrap_or(config.delivery.max_connections_per_destination);
                            let _turn = self.connections.destination_permit(&rule.command[0], max).await;
                            pipe::deliver(&params, &stored, env, indexes).await
                        }
                        Err(e) => transient_all(indexes.len(), 4, 3, 5, &e),
                    };
                    let relay = format!("pipe:{}", rule.command[0]);
                    results.extend(attempted(indexes, outcomes, relay, Reached::Mailbox));
                }
            }
        }
        results
    }

    /// How a recipient is delivered: the first `[[transport]]` rule for
    /// its domain, else Maildir for a local domain, else SMTP to the
    /// smarthost or the domain's MX hosts.
    fn path_of(&self, config: &Config, address: &Address) -> Path {
        match domains::disposition(config, address) {
            Disposition::Rule(index) => {
                let rule = &config.transports[index];
                match rule.transport {
                    TransportKind::Smtp => {
                        Path::Smtp { destination: rule_destination(rule, address), rule: Some(index) }
                    }
                    TransportKind::Lmtp => Path::Lmtp { rule: index },
                    TransportKind::Pipe => Path::Pipe { rule: index },
                    TransportKind::Maildir => {
                        Path::Maildir(rule.maildir.clone().unwrap_or_else(|| config.local.maildir.clone()))
                    }
                }
            }
            Disposition::Local => Path::Maildir(config.local.maildir.clone()),
            Disposition::Remote => Path::Smtp { destination: Destination::of(config, address), rule: None },
        }
    }

    /// Delivers recipient `index` where the routers send it: each local
    /// final address to its Maildir, each SMTP delivery to its next hop
    /// (or the smarthost, or the MX hosts of the final address's domain).
    /// All must succeed for the recipient to count as delivered; it is
    /// reported as relayed if any SMTP hop did not offer DSN.
    async fn deliver_routed(
        &self,
        config: &Arc<Config>,
        engine: &crate::route::Engine,
        env: &Envelope,
        index: usize,
    ) -> (RcptOutcome, Reached) {
        let mut reached = Reached::Mailbox;
        let outcome = self.deliver_routed_to(config, engine, env, index, &mut reached).await;
        (outcome, reached)
    }

    async fn deliver_routed_to(
        &self,
        config: &Arc<Config>,
        engine: &crate::route::Engine,
        env: &Envelope,
        index: usize,
        reached: &mut Reached,
    ) -> RcptOutcome {
        use crate::route::{Decision, Mode};
        let sender = match &env.sender {
            ReversePath::Null => String::new(),
            ReversePath::Path(a) => a.to_string(),
        };
        let routed = engine.route(&env.recipients[index].address.to_string(), &sender, Mode::Deliver).await;
        let deliveries = match routed.decision {
            Decision::Reject(reply) => return RcptOutcome::Permanent(reply),
            Decision::Defer(reply) => return RcptOutcome::Transient(reply),
            Decision::Discard => {
                return RcptOutcome::Delivered(Reply::new(250, Enhanced(2, 0, 0), "discarded by routing"))
            }
            Decision::Deliver { deliveries, .. } => deliveries,
        };
        let out = Outbound {
            config: config.clone(),
            resolver: &self.resolver,
            connections: &self.connections,
            tls_client: &self.tls_client,
        };
        let policy = smtp_policy(config, None);
        let mut replies = Vec::new();
        for delivery in deliveries {
            // The routers' final address is where their rewriting ends: read
            // as an address once, here.
            let final_address = match stored_address(&delivery.address) {
                Ok(a) => a,
                Err(_) if matches!(delivery.transport.as_str(), "pipe" | "file") => {
                    env.recipients[index].address.clone()
                }
                Err(e) => {
                    return RcptOutcome::Permanent(Reply::new(
                        550,
                        Enhanced(5, 1, 3),
                        format!("routed to a bad address: {e}"),
                    ))
                }
            };
            let outcome = match (delivery.transport.as_str(), &delivery.next_hop) {
                ("local", _) => self.deliver_local(env, index, &config.local.maildir, Some(&final_address)).await,
                ("pipe" | "file", _) => RcptOutcome::Permanent(Reply::new(
                    550,
                    Enhanced(5, 3, 5),
                    format!(
                        "{} deliveries from aliases are not supported; use a [[transport]] pipe rule",
                        delivery.transport
                    ),
                )),
                (_, hop) => {
                    let destination = routed_destination(config, hop.as_deref(), &final_address);
                    let mut one = env.clone();
                    one.recipients[index].address = final_address.clone();
                    let body = self.queue.stored_body(env);
                    let delivered = outbound::deliver(&out, &destination, policy, &body, &one, &[index]).await;
                    *reached = match (*reached, delivered.dsn) {
                        (Reached::Relayed, _) | (_, false) => Reached::Relayed,
                        (_, true) => Reached::RelayedWithDsn,
                    };
                    delivered.outcomes.into_iter().next().unwrap_or_else(|| {
                        RcptOutcome::Transient(Reply::new(451, Enhanced(4, 3, 0), "no outcome from outbound delivery"))
                    })
                }
            };
            match outcome {
                RcptOutcome::Delivered(reply) => replies.push(reply),
                other => return other,
            }
        }
        let reply = replies.pop().unwrap_or_else(|| Reply::new(250, Enhanced(2, 0, 0), "delivered"));
        RcptOutcome::Delivered(reply)
    }

    async fn deliver_local(
        &self,
        env: &Envelope,
        index: usize,
        template: &str,
        routed: Option<&Address>,
    ) -> RcptOutcome {
        let address = routed.unwrap_or(&env.recipients[index].address);
        let path = match maildir::expand_template(template, &address.local_part) {
            Ok(p) => p,
            Err(_) => return RcptOutcome::Permanent(Reply::new(550, Enhanced(5, 1, 3), "Bad mailbox name")),
        };
        // A copy a Sieve `fileinto` chose goes into that Maildir++ folder.
        let folder = match env.recipients[index].folder.as_deref().map(maildir::folder_dir) {
            None | Some(Ok(None)) => None,
            Some(Ok(Some(dir))) => Some(dir),
            Some(Err(e)) => {
                return RcptOutcome::Permanent(Reply::new(550, Enhanced(5, 2, 0), format!("Bad folder name: {e}")))
            }
        };
        let path = match &folder {
            Some(dir) => path.join(dir),
            None => path,
        };
        let stored = self.queue.stored_body(env);
        let body = env.body.clone();
        let hostname = self.config().server.hostname.clone();
        let mut prefix = format!("Return-Path: {}\r\n", env.sender).into_bytes();
        prefix.extend_from_slice(&env.headers_prepended);
        let line_ends = if env.body_binary { maildir::LineEnds::AsStored } else { maildir::LineEnds::Lf };
        let result = glommio::executor()
            .spawn_blocking(move || -> std::io::Result<std::path::PathBuf> {
                if folder.is_some() {
                    maildir::create_folder(&path)?;
                }
                match body {
                    Body::Inline(bytes) => maildir::deliver(&path, &hostname, &prefix, &mut &bytes[..], line_ends),
                    Body::File { .. } | Body::Log { .. } => {
                        let mut file = stored.sync_reader();
                        maildir::deliver(&path, &hostname, &prefix, &mut file, line_ends)
                    }
                }
            })
            .await;
        match result {
            Ok(file) => {
                RcptOutcome::Delivered(Reply::new(250, Enhanced(2, 0, 0), format!("delivered to {}", file.display())))
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT) => {
                RcptOutcome::Transient(Reply::new(452, Enhanced(4, 2, 2), format!("mailbox full: {e}")))
            }
            Err(e) => RcptOutcome::Transient(Reply::new(451, Enhanced(4, 3, 0), format!("maildir: {e}"))),
        }
    }
}

/// Applies outcomes to `env` and logs them (deferred lines: the caller
/// awaits `log::written` before the message's record). Early: only deliveries
/// count (a refusal is left pending, for the normal attempt to meet
/// again and report). Returns the number delivered.
pub fn record(shard_index: usize, env: &mut Envelope, results: Vec<Attempted>, early: bool) -> usize {
    let mut delivered = 0;
    for Attempted { index: i, outcome, relay, .. } in results {
        if early && !matches!(outcome, RcptOutcome::Delivered(_)) {
            continue;
        }
        let r = &mut env.recipients[i];
        let (state, reply) = match &outcome {
            RcptOutcome::Delivered(reply) => (RcptState::Delivered, reply.summary()),
            RcptOutcome::Transient(reply) => (RcptState::Pending, reply.summary()),
            RcptOutcome::Permanent(reply) => (RcptState::Failed, reply.summary()),
        };
        r.state = state;
        r.last_reply = reply;
        let status = match state {
            RcptState::Delivered => {
                delivered += 1;
                if early {
                    "delivered_early"
                } else {
                    "delivered"
                }
            }
            RcptState::Pending => "deferred",
            RcptState::Failed => "failed",
        };
        crate::metrics::DELIVERY_RECIPIENTS.inc_named(status);
        log::defer(
            "delivery",
            &[
                ("shard", &shard_index),
                ("id", &env.id),
                ("from", &env.sender),
                ("to", &r.address),
                ("relay", &relay),
                ("status", &status),
                ("attempt", &env.attempt_count),
                ("reply", &r.last_reply),
            ],
        );
    }
    delivered
}
