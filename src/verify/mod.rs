//! Call-forward recipient verification ("callouts"): at RCPT, a recipient
//! whose `[[transport]]` rule or `[[router]]` says `verify = "callout"` is
//! checked by asking the next hop delivery would use — `MAIL FROM:<>`,
//! `RCPT TO:<address>`, then RSET (an accepting session is kept for the
//! next callout or delivery to that host) or QUIT — and the back end's answer
//! becomes the client's: 2xx is `250 2.1.5`, 5xx is `550` with the back
//! end's words, anything else `451 4.4.3` (or acceptance with
//! `callout_defer_ok`). Nothing is accepted to be bounced later, and
//! nothing touches the disk.
//!
//! Place in the pipeline: called by ingress's RCPT policy after routing
//! said where the recipient goes (`deliver::attempt::rule_hop` and
//! `routed_hop`, the same choice delivery makes). The callout itself is an
//! outbound probe through the shard's delivery client, resolver and
//! connections (`deliver::outbound::probe`, `deliver::lmtp::probe`).
//!
//! Every callout for a domain runs on the shard that owns the domain (by
//! hash), so that concurrent RCPTs for one address share one callout in
//! flight whichever shard their connections landed on (coalescing), the
//! per-domain rate and the per-host concurrency are counted in one place,
//! and the owner's cache answers for every shard. The shard where a RCPT
//! arrives looks in its own cache first (no lock, no message between
//! threads); on a miss it sends the request to the owner over a bounded
//! channel (full: `451 4.4.3` at once) and remembers the answer. Limits
//! (`verify::limits`) refuse a callout at once rather than queue it. A
//! client waits at most `verify.callout_timeout`; the callout then runs on
//! to its end and fills the cache, so the client's retry is answered from
//! memory.
//!
//! Bounds: the cache (`verify.callout_cache_entries` per shard), the
//! requests waiting for an owner shard (`REQUESTS_QUEUED_MAX` per owner),
//! the callouts in flight (`callout_max_per_host` per host, each with at
//! most one callout per address), and the clients waiting for one
//! callout (`WAITERS_PER_CALLOUT_MAX`; more get 451).

pub mod cache;
pub mod limits;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use futures_channel::{mpsc, oneshot};

use crate::clock::Clock;
use crate::config::{Callout, CalloutSender, Config};
use crate::deliver::attempt::{Deliverer, Hop};
use crate::deliver::lmtp;
use crate::deliver::outbound;
use crate::dns::random::Random;
use crate::log;
use crate::smtp::client::RcptOutcome;
use crate::smtp::reply::{Enhanced, Reply};
use cache::{address_key, domain_key, Cache, Cached};
use limits::{Limits, Refused};

/// Requests waiting for one owner shard, from all the others together
/// (the channel holds this many, plus one per sender).
pub const REQUESTS_QUEUED_MAX: usize = 1024;
/// Clients that may wait for one callout in flight.
pub const WAITERS_PER_CALLOUT_MAX: usize = 1024;
/// Longest back-end text quoted in a reply to the client (a reply line is
/// at most 512 octets, RFC 5321 §4.5.3.1.5).
const QUOTED_TEXT_BYTES_MAX: usize = 300;

/// What to verify: where delivery would send the recipient, how to ask,
/// and the address to ask for (as delivery would send it).
#[derive(Clone, Debug)]
pub struct Plan {
    pub hop: Hop,
    pub options: Callout,
    /// The address put in the probe's RCPT.
    pub address: String,
    /// Its domain, lower-case: the rate limit's and the owner's key.
    pub domain: String,
}

/// What a callout (or the cache) decided.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Accept,
    /// Refused by `host` with the back end's `reply`.
    Reject {
        host: String,
        reply: Reply,
        before_rcpt: bool,
    },
    /// Undecided: the back end said 4xx, could not be reached, or timed out.
    Defer {
        host: String,
        reply: Reply,
    },
    /// The callout was not started (a limit, a full queue, shutting down).
    Busy(&'static str),
}

/// What an owner shard answers a request with.
#[derive(Debug)]
struct Answer {
    outcome: Outcome,
    cached: bool,
    coalesced: bool,
    /// Cache entries the requester may keep: key, value, expiry.
    learned: Vec<(String, Cached, u64)>,
}

/// A request to the owner shard of a domain.
pub struct Request {
    plan: Plan,
    sender: String,
    reply: oneshot::Sender<Answer>,
}

/// One shard's ends of the channels between shards: a sender to every
/// shard (its own unused) and its own inbox.
pub struct MeshEnd {
    senders: Vec<mpsc::Sender<Request>>,
    inbox: mpsc::Receiver<Request>,
}

/// The channels between `shard_count` shards.
pub fn mesh(shard_count: usize) -> Vec<MeshEnd> {
    assert!(shard_count >= 1);
    let (senders, inboxes): (Vec<_>, Vec<_>) =
        (0..shard_count).map(|_| mpsc::channel::<Request>(REQUESTS_QUEUED_MAX)).unzip();
    inboxes.into_iter().map(|inbox| MeshEnd { senders: senders.clone(), inbox }).collect()
}

/// Counters of one shard, printed at shutdown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VerifyStats {
    /// Callouts this shard ran.
    pub started: u64,
    /// RCPTs that joined a callout already in flight.
    pub coalesced: u64,
    /// RCPTs answered from this shard's cache.
    pub cache_hits: u64,
    /// RCPTs whose client stopped waiting at `callout_timeout`.
    pub timeouts: u64,
    /// Callouts not started because of `callout_max_per_host` or
    /// `callout_rate_per_domain` (or a full queue).
    pub rate_limited: u64,
}

#[derive(Default)]
struct Counters {
    started: Cell<u64>,
    coalesced: Cell<u64>,
    cache_hits: Cell<u64>,
    timeouts: Cell<u64>,
    rate_limited: Cell<u64>,
}

fn bump(counter: &Cell<u64>) {
    counter.set(counter.get() + 1);
}

/// A callout in flight on its owner shard and the clients waiting for it.
struct InFlight {
    waiters: Vec<(oneshot::Sender<Answer>, bool)>,
}

/// The callouts of one shard.
pub struct Verifier {
    shard_index: usize,
    config: Arc<Config>,
    deliverer: Rc<Deliverer>,
    clock: Clock,
    cache: RefCell<Cache>,
    limits: RefCell<Limits>,
    in_flight: RefCell<HashMap<Rc<str>, InFlight>>,
    senders: RefCell<Vec<mpsc::Sender<Request>>>,
    inbox: RefCell<Option<mpsc::Receiver<Request>>>,
    random: RefCell<Random>,
    counters: Counters,
}

impl Verifier {
    /// The verifier of shard `shard_index`; `mesh` connects it to the
    /// other shards (`None`: this shard owns every domain).
    pub fn new(
        shard_index: usize,
        config: Arc<Config>,
        deliverer: Rc<Deliverer>,
        clock: Clock,
        mesh: Option<MeshEnd>,
    ) -> Verifier {
        let v = &config.verify;
        let (senders, inbox) = match mesh {
            Some(end) => (end.senders, Some(end.inbox)),
            None => (Vec::new(), None),
        };
        assert!(senders.is_empty() || shard_index < senders.len());
        Verifier {
            shard_index,
            cache: RefCell::new(Cache::new(v.callout_cache_entries)),
            limits: RefCell::new(Limits::new(v.callout_rate_per_domain, v.callout_max_per_host)),
            in_flight: RefCell::new(HashMap::new()),
            senders: RefCell::new(senders),
            inbox: RefCell::new(inbox),
            random: RefCell::new(Random::from_os()),
            counters: Counters::default(),
            config,
            deliverer,
            clock,
        }
    }

    pub fn stats(&self) -> VerifyStats {
        let c = &self.counters;
        VerifyStats {
            started: c.started.get(),
            coalesced: c.coalesced.get(),
            cache_hits: c.cache_hits.get(),
            timeouts: c.timeouts.get(),
            rate_limited: c.rate_limited.get(),
        }
    }

    /// Logs the counters (at shutdown).
    pub fn log_stats(&self) {
        let s = self.stats();
        let cache = self.cache.borrow().stats();
        log::event(
            "callout_stats",
            &[
                ("shard", &self.shard_index),
                ("started", &s.started),
                ("coalesced", &s.coalesced),
                ("cache_hits", &s.cache_hits),
                ("timeouts", &s.timeouts),
                ("rate_limited", &s.rate_limited),
                ("cache_entries", &cache.entries),
                ("cache_evicted", &cache.evicted),
            ],
        );
    }

    /// Serves the requests other shards send for the domains this shard
    /// owns, until every sender is gone. Spawned once per shard.
    pub async fn serve(self: Rc<Self>) {
        use futures_lite::StreamExt;
        let Some(mut inbox) = self.inbox.borrow_mut().take() else { return };
        while let Some(request) = inbox.next().await {
            self.start(request.plan, request.sender, request.reply);
        }
    }

    /// Stops taking requests from other shards (at shutdown): their
    /// senders here are dropped, so every shard's `serve` can end.
    pub fn close(&self) {
        self.senders.borrow_mut().clear();
    }

    /// The shard that owns the callouts of `domain`.
    fn owner_of(&self, domain: &str) -> usize {
        let shards = self.senders.borrow().len();
        if shards <= 1 {
            return self.shard_index;
        }
        owner_shard(domain, shards)
    }

    /// Verifies the recipient of `plan` for a transaction from
    /// `envelope_sender` ("" for `<>`): the reply to its RCPT.
    pub async fn verify(self: &Rc<Self>, plan: Plan, envelope_sender: &str) -> Reply {
        let started = Instant::now();
        let sender = probe_sender(&plan.options, envelope_sender);
        let key_sender = key_sender(&plan.options, &sender);
        let now_ms = self.clock.unix_ms();
        let cached = lookup(&mut self.cache.borrow_mut(), &plan, key_sender, now_ms);
        let answer = match cached {
            Some(outcome) => {
                bump(&self.counters.cache_hits);
                crate::metrics::CALLOUT_CACHE_HITS.inc();
                Answer { outcome, cached: true, coalesced: false, learned: Vec::new() }
            }
            None => self.ask_owner(&plan, sender.clone()).await,
        };
        if !answer.learned.is_empty() && self.owner_of(&plan.domain) != self.shard_index {
            let mut cache = self.cache.borrow_mut();
            for (key, value, expires) in answer.learned {
                cache.insert(key.into(), value, expires);
            }
        }
        let reply = client_reply(&plan, &answer.outcome);
        crate::metrics::CALLOUTS.inc_named(outcome_name(&answer.outcome));
        log::event(
            "callout",
            &[
                ("shard", &self.shard_index),
                ("target", &plan.hop.key()),
                ("address", &plan.address),
                ("sender", &sender),
                ("result", &outcome_name(&answer.outcome)),
                ("latency_ms", &started.elapsed().as_millis()),
                ("cached", &answer.cached),
                ("coalesced", &answer.coalesced),
                ("reply", &reply.summary()),
            ],
        );
        reply
    }

    /// Sends the request to the owner shard (or starts it here) and waits
    /// for the answer at most `callout_timeout`.
    async fn ask_owner(self: &Rc<Self>, plan: &Plan, sender: String) -> Answer {
        let (reply, answer) = oneshot::channel();
        let owner = self.owner_of(&plan.domain);
        if owner == self.shard_index {
            self.start(plan.clone(), sender, reply);
        } else {
            let request = Request { plan: plan.clone(), sender, reply };
            let sent = self.senders.borrow_mut()[owner].try_send(request);
            if sent.is_err() {
                bump(&self.counters.rate_limited);
                return busy("the callout queue is full");
            }
        }
        let timeout = self.config.verify.callout_timeout.0;
        let waited = glommio::timer::timeout(timeout, async { Ok(answer.await) }).await;
        match waited {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => busy("the callout was abandoned (shutting down)"),
            Err(_) => {
                bump(&self.counters.timeouts);
                let text = format!("no answer from {} within {} ms", plan.hop.key(), timeout.as_millis());
                Answer {
                    outcome: Outcome::Defer { host: plan.hop.key(), reply: Reply::new(451, Enhanced(4, 4, 2), text) },
                    cached: false,
                    coalesced: false,
                    learned: Vec::new(),
                }
            }
        }
    }

    /// On the owner shard: answers from the cache, joins the callout in
    /// flight for the same address, refuses beyond the limits, or starts a
    /// callout. Never waits.
    fn start(self: &Rc<Self>, plan: Plan, sender: String, reply: oneshot::Sender<Answer>) {
        let key_sender = key_sender(&plan.options, &sender).to_string();
        let now_ms = self.clock.unix_ms();
        let cached = lookup(&mut self.cache.borrow_mut(), &plan, &key_sender, now_ms);
        if let Some(outcome) = cached {
            bump(&self.counters.cache_hits);
            let learned = self.entries_for(&plan, &key_sender, now_ms);
            let _ = reply.send(Answer { outcome, cached: true, coalesced: false, learned });
            return;
        }
        let key = address_key(&key_sender, &plan.address);
        {
            let mut in_flight = self.in_flight.borrow_mut();
            if let Some(flight) = in_flight.get_mut(&key) {
                if flight.waiters.len() >= WAITERS_PER_CALLOUT_MAX {
                    bump(&self.counters.rate_limited);
                    let _ = reply.send(busy("too many clients wait for this callout"));
                } else {
                    bump(&self.counters.coalesced);
                    flight.waiters.push((reply, true));
                }
                return;
            }
        }
        let host = plan.hop.key();
        if let Err(refused) = self.limits.borrow_mut().try_start(&plan.domain, &host, now_ms) {
            bump(&self.counters.rate_limited);
            let why = match refused {
                Refused::HostBusy => "too many callouts to the host in flight",
                Refused::RateLimited => "callouts to the domain are rate-limited",
            };
            let _ = reply.send(busy(why));
            return;
        }
        bump(&self.counters.started);
        self.in_flight.borrow_mut().insert(key.clone(), InFlight { waiters: vec![(reply, false)] });
        // The callout outlives the RCPT that started it (continuation).
        let this = self.clone();
        let task = glommio::spawn_local(async move {
            this.run_callout(plan, sender, key_sender, key, host).await;
        });
        task.detach();
    }

    /// Runs one callout to its end, whoever still waits, and tells every
    /// waiter; definite answers go into the cache.
    async fn run_callout(self: Rc<Self>, plan: Plan, sender: String, key_sender: String, key: Rc<str>, host: String) {
        let started = Instant::now();
        let domain_state = self.cache.borrow_mut().get(&domain_key(&key_sender, &plan.domain), self.clock.unix_ms());
        let random = plan.options.random && domain_state.is_none();
        let recipients =
            probe_recipients(&plan.address, &plan.domain, random.then_some(&mut *self.random.borrow_mut()));
        let probed = probe(&self.deliverer, &self.config, &plan.hop, &sender, recipients).await;
        let now_ms = self.clock.unix_ms();
        let outcome = self.interpret(&plan, &key_sender, random, probed, now_ms);
        self.limits.borrow_mut().finished(&host);
        let flight = self.in_flight.borrow_mut().remove(&key);
        let waiters = flight.map(|f| f.waiters).unwrap_or_default();
        let learned = self.entries_for(&plan, &key_sender, now_ms);
        log::event(
            "callout_done",
            &[
                ("shard", &self.shard_index),
                ("target", &host),
                ("address", &plan.address),
                ("result", &outcome_name(&outcome)),
                ("latency_ms", &started.elapsed().as_millis()),
                ("waiters", &waiters.iter().filter(|(w, _)| !w.is_canceled()).count()),
            ],
        );
        for (waiter, coalesced) in waiters {
            let _ =
                waiter.send(Answer { outcome: outcome.clone(), cached: false, coalesced, learned: learned.clone() });
        }
    }

    /// Turns what the probe found into an outcome, remembering the
    /// definite parts of it.
    fn interpret(&self, plan: &Plan, key_sender: &str, random: bool, probed: Probed, now_ms: u64) -> Outcome {
        let v = &self.config.verify;
        let positive = now_ms.saturating_add(v.callout_positive_ttl.0.as_millis() as u64);
        let negative = now_ms.saturating_add(v.callout_negative_ttl.0.as_millis() as u64);
        let (outcome, domain) = read_probe(probed, random);
        // An accept-all domain's addresses are answered by the domain's entry.
        let accept_all = matches!(domain, Some(Cached::AcceptAll));
        let mut cache = self.cache.borrow_mut();
        if let Some(state) = domain {
            let expires = if matches!(state, Cached::DomainRefuses { .. }) { negative } else { positive };
            cache.insert(domain_key(key_sender, &plan.domain), state, expires);
        }
        match &outcome {
            Outcome::Accept if !accept_all => {
                cache.insert(address_key(key_sender, &plan.address), Cached::Accept, positive);
            }
            Outcome::Reject { host, reply, before_rcpt: false } => {
                let value = Cached::Reject { host: host.clone(), reply: reply.clone() };
                cache.insert(address_key(key_sender, &plan.address), value, negative);
            }
            _ => {}
        }
        outcome
    }

    /// The live cache entries that decide `plan`'s address, for a
    /// requester on another shard to keep.
    fn entries_for(&self, plan: &Plan, key_sender: &str, now_ms: u64) -> Vec<(String, Cached, u64)> {
        let mut cache = self.cache.borrow_mut();
        let mut learned = Vec::new();
        for key in [domain_key(key_sender, &plan.domain), address_key(key_sender, &plan.address)] {
            if let Some((value, expires)) = cache.get_with_expiry(&key, now_ms) {
                learned.push((key.to_string(), value, expires));
            }
        }
        learned
    }
}

/// The shard of `shards` that owns the callouts of `domain`: FNV-1a of the
/// domain, the same on every shard and every run.
pub(crate) fn owner_shard(domain: &str, shards: usize) -> usize {
    let hash = domain.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    (hash % shards as u64) as usize
}

/// The `MAIL FROM` of a callout ("" for `<>`).
fn probe_sender(options: &Callout, envelope_sender: &str) -> String {
    match &options.sender {
        CalloutSender::Null => String::new(),
        CalloutSender::Address(address) => address.clone(),
        CalloutSender::UseSender => envelope_sender.to_string(),
    }
}

/// The sender part of cache keys: only `use-sender` results depend on the
/// sender; `<>` and a fixed address are the same for every transaction.
fn key_sender<'a>(options: &Callout, sender: &'a str) -> &'a str {
    match options.sender {
        CalloutSender::UseSender => sender,
        CalloutSender::Null | CalloutSender::Address(_) => "",
    }
}

/// What the cache says of `plan`'s address: the domain's state first
/// (accept-all, refusing), then the address.
fn lookup(cache: &mut Cache, plan: &Plan, key_sender: &str, now_ms: u64) -> Option<Outcome> {
    match cache.get(&domain_key(key_sender, &plan.domain), now_ms) {
        Some(Cached::DomainRefuses { host, reply }) => return Some(Outcome::Reject { host, reply, before_rcpt: true }),
        Some(Cached::AcceptAll) if plan.options.random => return Some(Outcome::Accept),
        _ => {}
    }
    match cache.get(&address_key(key_sender, &plan.address), now_ms)? {
        Cached::Accept => Some(Outcome::Accept),
        Cached::Reject { host, reply } => Some(Outcome::Reject { host, reply, before_rcpt: false }),
        Cached::AcceptAll | Cached::NotAcceptAll | Cached::DomainRefuses { .. } => None,
    }
}

fn busy(why: &'static str) -> Answer {
    Answer { outcome: Outcome::Busy(why), cached: false, coalesced: false, learned: Vec::new() }
}

fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Accept => "accept",
        Outcome::Reject { .. } => "reject",
        Outcome::Defer { .. } => "defer",
        Outcome::Busy(_) => "busy",
    }
}

/// The back end's reply as quoted in ours: one line, bounded.
fn quoted(reply: &Reply) -> String {
    let mut text = reply.summary();
    if text.len() > QUOTED_TEXT_BYTES_MAX {
        let mut end = QUOTED_TEXT_BYTES_MAX;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

/// The reply to the client's RCPT for `outcome`.
fn client_reply(plan: &Plan, outcome: &Outcome) -> Reply {
    let address = &plan.address;
    let undecided = |text: String| {
        if plan.options.defer_ok {
            Reply::new(250, Enhanced(2, 1, 5), format!("<{address}>: Recipient ok (not verified: {text})"))
        } else {
            Reply::new(451, Enhanced(4, 4, 3), format!("<{address}>: Recipient not verified, try again later: {text}"))
        }
    };
    match outcome {
        Outcome::Accept => Reply::new(250, Enhanced(2, 1, 5), format!("<{address}>: Recipient ok (verified)")),
        Outcome::Reject { host, reply, before_rcpt } => {
            let enhanced = match reply.enhanced {
                Some(e) if e.0 == 5 && !before_rcpt => e,
                _ => Enhanced(5, 1, 1),
            };
            let said = if *before_rcpt { "refused the callout" } else { "said" };
            Reply::new(550, enhanced, format!("<{address}>: callout to {host} {said}: {}", quoted(reply)))
        }
        Outcome::Defer { host, reply } => undecided(format!("callout to {host}: {}", quoted(reply))),
        // A limit protects the back end whatever callout_defer_ok says.
        Outcome::Busy(why) => Reply::new(451, Enhanced(4, 4, 3), format!("Try again later ({why})")),
    }
}

/// What a probe says of the address asked for (its last recipient) and,
/// when it knows, of the whole domain: refusing before any RCPT, or (with
/// a random local part first) accepting everything or not.
fn read_probe(probed: Probed, random: bool) -> (Outcome, Option<Cached>) {
    let host = probed.host;
    let mut domain = None;
    if probed.refused_before_rcpt {
        if let Some(RcptOutcome::Permanent(reply)) = probed.outcomes.first() {
            let state = Cached::DomainRefuses { host: host.clone(), reply: reply.clone() };
            return (Outcome::Reject { host, reply: reply.clone(), before_rcpt: true }, Some(state));
        }
    }
    if random {
        match probed.outcomes.first() {
            Some(RcptOutcome::Delivered(_)) => return (Outcome::Accept, Some(Cached::AcceptAll)),
            Some(RcptOutcome::Permanent(_)) => domain = Some(Cached::NotAcceptAll),
            _ => {}
        }
    }
    let outcome = match probed.outcomes.last() {
        Some(RcptOutcome::Delivered(_)) => Outcome::Accept,
        Some(RcptOutcome::Permanent(reply)) => Outcome::Reject { host, reply: reply.clone(), before_rcpt: false },
        Some(RcptOutcome::Transient(reply)) => Outcome::Defer { host, reply: reply.clone() },
        None => Outcome::Defer { host, reply: Reply::new(451, Enhanced(4, 5, 0), "no outcome from the callout") },
    };
    (outcome, domain)
}

/// The recipients of a probe for `address`: a random local part of
/// `domain` first when `random`.
fn probe_recipients(address: &str, domain: &str, random: Option<&mut Random>) -> Vec<String> {
    let mut recipients = Vec::with_capacity(2);
    if let Some(random) = random {
        recipients.push(format!("rp-verify-{:016x}@{domain}", random.next_u64()));
    }
    recipients.push(address.to_string());
    recipients
}

/// What one probe found.
struct Probed {
    /// One per recipient asked for, in order.
    outcomes: Vec<RcptOutcome>,
    /// The host that answered (or the destination when none did).
    host: String,
    /// The next hop refused before any RCPT (MAIL refused, or the domain
    /// has no mail server): the first outcome says how.
    refused_before_rcpt: bool,
    transcript: Vec<String>,
}

async fn probe(deliverer: &Deliverer, config: &Config, hop: &Hop, sender: &str, recipients: Vec<String>) -> Probed {
    probe_with(&deliverer.outbound(), config, hop, sender, recipients, false).await
}

async fn probe_with(
    out: &outbound::Outbound<'_>,
    config: &Config,
    hop: &Hop,
    sender: &str,
    recipients: Vec<String>,
    transcript: bool,
) -> Probed {
    match hop {
        Hop::Smtp { destination, policy } => {
            let policy = outbound::Policy { transcript, ..*policy };
            let delivered = outbound::probe(out, destination, policy, sender, recipients).await;
            let refused_before_rcpt = !delivered.mail_accepted
                && !delivered.outcomes.is_empty()
                && delivered.outcomes.iter().all(|o| matches!(o, RcptOutcome::Permanent(_)));
            Probed {
                outcomes: delivered.outcomes,
                host: delivered.host,
                refused_before_rcpt,
                transcript: delivered.transcript,
            }
        }
        Hop::Lmtp(target) => {
            let (outcomes, transcript) = lmtp::probe(
                target,
                config.helo_name(),
                config.delivery.connect_timeout.0,
                sender,
                recipients,
                transcript,
            )
            .await;
            Probed { outcomes, host: target.to_string(), refused_before_rcpt: false, transcript }
        }
    }
}

/// One callout for `plan` through `out`, outside the cache and the
/// limits, with its transcript: what `ringpost route --verify --callout`
/// shows.
pub async fn callout_once(
    out: &outbound::Outbound<'_>,
    config: &Config,
    plan: &Plan,
    envelope_sender: &str,
) -> (Vec<String>, Reply) {
    let sender = probe_sender(&plan.options, envelope_sender);
    let mut random = Random::from_os();
    let recipients = probe_recipients(&plan.address, &plan.domain, plan.options.random.then_some(&mut random));
    let timeout = config.verify.callout_timeout.0;
    let probed = glommio::timer::timeout(timeout, async {
        Ok(probe_with(out, config, &plan.hop, &sender, recipients, true).await)
    })
    .await;
    let probed = match probed {
        Ok(probed) => probed,
        Err(_) => {
            let reply = Reply::new(451, Enhanced(4, 4, 2), format!("no answer within {} ms", timeout.as_millis()));
            let outcome = Outcome::Defer { host: plan.hop.key(), reply };
            return (Vec::new(), client_reply(plan, &outcome));
        }
    };
    let transcript = probed.transcript.clone();
    let (outcome, _) = read_probe(probed, plan.options.random);
    (transcript, client_reply(plan, &outcome))
}

#[cfg(test)]
mod tests;
