//! The front line: what a connection must pass before and around its
//! first commands — DNSBL/DNSWL scoring of the client address, the greet
//! pause that catches early talkers, reverse DNS, and HELO name checks
//! (strict pipelining lives in the SMTP machine, `Server::strict_pipelining`).
//!
//! Place in the pipeline: the first thing a session driver
//! (`crate::ingress::run_session`) runs after accepting a connection,
//! before the 220 greeting: [`admit`] starts the DNSBL queries (all zones
//! at once) and the reverse DNS lookup through the shard's own resolver
//! and its cache, and keeps the greeting back for `policy.greet_pause`
//! meanwhile. A client that talks first gets 554 5.5.1; a client whose
//! DNSBL score reaches `policy.dnsbl_threshold` gets 554 5.7.1 instead of
//! the greeting (or at each RCPT, with `dnsbl_action = "reject_at_rcpt"`).
//! Everything else the checks found is kept in a small [`Session`] (one
//! pointer, allocated only when there is something to refuse) and given
//! to the MAIL or RCPT commands that follow; then the routers and callouts
//! of `crate::ingress::policy` decide as before.
//!
//! Everything runs on the shard that owns the connection; the state of the
//! pause and the lookups lives in a boxed future that ends with the
//! greeting, so an idle session pays nothing for it. Bounds: `DNSBLS_MAX`
//! zones, each lookup `policy.dnsbl_timeout` (to "not listed"), the pause
//! at most 60 s, `rdns::PTR_NAMES_MAX` names followed forward, one read of
//! `PAUSE_READ_BYTES` during the pause.

pub mod dnsbl;
pub mod helo;
pub mod pause;
pub mod rdns;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use futures_lite::{AsyncReadExt, AsyncWriteExt};

use crate::config::{DnsblAction, HeloAction, ReverseDns};
use crate::log;
use crate::shard::Shard;
use crate::smtp::address::Address;
use crate::smtp::reply::{Enhanced, Reply};
use crate::stats::{count, Class};
use crate::tls::Stream;

/// Most `[[dnsbl]]` zones: each is one query per new client.
pub const DNSBLS_MAX: usize = 16;
/// Octets read at a time during the greet pause (only to see that
/// something came; it is not kept).
const PAUSE_READ_BYTES: usize = 64;

/// What the front line keeps for the rest of a session: the refusals it
/// owes the client's MAIL and RCPT commands, and the client's verified
/// reverse name for `policy.client_access`. Empty (no allocation) for a
/// client that passed everything and was not named.
#[derive(Default)]
pub struct Session {
    refusals: Option<Box<Refusals>>,
}

#[derive(Default)]
struct Refusals {
    /// The client's forward-confirmed reverse name (looked up when
    /// `policy.client_access` is in use or `reverse_dns` asks for it).
    client_name: Option<String>,
    /// `reject_at_rcpt`: the zone the client is listed in.
    dnsbl_zone: Option<String>,
    dnsbl_counted: bool,
    /// Reverse DNS failed: the reply to MAIL.
    rdns: Option<Reply>,
    /// The last HELO name failed a check that refuses.
    helo: Option<helo::Failure>,
    helo_counted: bool,
}

impl Session {
    fn refusals(&mut self) -> &mut Refusals {
        self.refusals.get_or_insert_with(Box::default)
    }

    /// The client said HELO/EHLO `name`: runs the HELO checks and keeps the
    /// refusal for its MAIL commands (a new HELO replaces it).
    pub fn on_helo(&mut self, shard: &Shard, name: &str, peer: SocketAddr, local: SocketAddr) {
        let config = shard.config();
        let policy = &config.policy.front;
        let any_builtin = policy.helo_reject_own_name || policy.helo_reject_ip_mismatch || policy.helo_reject_invalid;
        if config.helo_checks.is_empty() && !any_builtin {
            return;
        }
        let failure = helo::check(
            policy,
            &config.helo_checks,
            name,
            &config.server.hostname,
            peer.ip(),
            local.ip(),
        );
        let Some(failure) = failure else {
            if let Some(r) = self.refusals.as_mut() {
                r.helo = None;
            }
            return;
        };
        let enforced = !failure.builtin || policy.helo_require;
        let action = match (enforced, failure.action) {
            (false, _) => "log",
            (true, HeloAction::Reject) => "reject",
            (true, HeloAction::Tag) => "tag",
        };
        log::event(
            "helo_check",
            &[("client", &peer), ("helo", &name), ("check", &failure.check), ("action", &action)],
        );
        if enforced {
            let r = self.refusals();
            r.helo = Some(failure);
            r.helo_counted = false;
        }
    }

    /// The client's forward-confirmed reverse name, when it was looked up
    /// and confirmed (the `client_access` keys by name).
    pub fn client_name(&self) -> Option<&str> {
        self.refusals.as_ref().and_then(|r| r.client_name.as_deref())
    }

    /// Whether the front line refuses MAIL (then [`Session::mail_refusal`]
    /// is the reply). Asked before the routers, and apart from the reply,
    /// so that no reply is kept across their await.
    pub fn refuses_mail(&self) -> bool {
        self.refusals.as_ref().is_some_and(|r| r.rdns.is_some() || r.helo.is_some())
    }

    /// The reply to a refused MAIL: reverse DNS first, then the HELO check
    /// (a tagged HELO is counted as known malware once per HELO).
    pub fn mail_refusal(&mut self, peer: SocketAddr) -> Reply {
        let r = self.refusals();
        let reply = if let Some(reply) = &r.rdns {
            reply.clone()
        } else if let Some(failure) = &r.helo {
            if failure.action == HeloAction::Tag && !r.helo_counted {
                count(Class::KnownMalware);
                r.helo_counted = true;
            }
            Reply::new(550, Enhanced(5, 7, 1), failure.text.clone())
        } else {
            debug_assert!(false, "mail_refusal() without a refusal");
            Reply::new(451, Enhanced(4, 3, 0), "Local error in processing")
        };
        log::event("mail_refused", &[("client", &peer), ("reply", &reply.summary())]);
        reply
    }

    /// Whether the front line refuses RCPT to `to`: a listed client under
    /// `reject_at_rcpt`, except for mail to postmaster.
    pub fn refuses_rcpt(&self, to: &Address) -> bool {
        self.refusals.as_ref().is_some_and(|r| r.dnsbl_zone.is_some())
            && !to.local_part.eq_ignore_ascii_case("postmaster")
    }

    /// The reply to a refused RCPT (the client is counted as blacklisted
    /// once per connection).
    pub fn rcpt_refusal(&mut self, peer: SocketAddr) -> Reply {
        let r = self.refusals();
        if !r.dnsbl_counted {
            count(Class::Blacklisted);
            r.dnsbl_counted = true;
        }
        blocked_reply(peer.ip(), r.dnsbl_zone.as_deref().unwrap_or(""))
    }
}

fn blocked_reply(ip: IpAddr, zone: &str) -> Reply {
    Reply::new(554, Enhanced(5, 7, 1), format!("Service unavailable; client [{ip}] blocked using {zone}"))
}

/// Whether any connection-time check is configured.
fn anything_to_do(shard: &Shard, wants_name: bool) -> bool {
    let config = shard.config();
    let policy = &config.policy.front;
    !config.dnsbls.is_empty()
        || !policy.greet_pause.0.is_zero()
        || policy.reverse_dns != ReverseDns::Off
        || wants_name
}

/// Whether the client's verified reverse name is needed for the
/// `client_access` table's name keys.
fn wants_name() -> bool {
    crate::access::current().is_some_and(|access| access.has_client_table())
}

/// Runs the connection-time checks before the greeting. `Ok`: greet the
/// client (the machine's queued 220); `Err(reason)`: a refusal has been
/// written, close the connection.
pub async fn admit(shard: &Shard, stream: &mut Stream, peer: SocketAddr) -> Result<Session, &'static str> {
    let wants_name = wants_name();
    if !anything_to_do(shard, wants_name) {
        return Ok(Session::default());
    }
    // Boxed: the pause's and lookups' state must not stay in the session.
    Box::pin(admit_checked(shard, stream, peer, wants_name)).await
}

/// What woke the pause.
enum Wake {
    Read(std::io::Result<usize>),
    Time,
    Checks(Checks),
    PhaseChanged,
}

type Checks = (dnsbl::Score, Option<rdns::Verdict>);

async fn admit_checked(
    shard: &Shard,
    stream: &mut Stream,
    peer: SocketAddr,
    wants_name: bool,
) -> Result<Session, &'static str> {
    let config = shard.config();
    let policy = &config.policy.front;
    let ip = dnsbl::canonical(peer.ip());
    let deliverer = shard.delivery.deliverer().clone();
    let outbound = deliverer.outbound();
    let resolver = outbound.resolver;
    let checks = futures_lite::future::zip(
        dnsbl::score(resolver, &config.dnsbls, ip, policy.dnsbl_timeout.0, policy.dnsbl_threshold),
        rdns::check(resolver, rdns::lookup_mode(policy.reverse_dns, wants_name), ip),
    );
    futures_lite::pin!(checks);
    let mut results: Option<Checks> = None;
    let mut pause = pause::Pause::new(Instant::now(), policy.greet_pause.0);
    let mut buf = [0u8; PAUSE_READ_BYTES];
    while pause.state() == pause::State::Waiting {
        let wait = pause.deadline().saturating_duration_since(Instant::now());
        let checks_done = results.is_some();
        let phase_changed = shard.phase_listener();
        let read = async { Wake::Read(stream.read(&mut buf).await) };
        let timer = async {
            glommio::timer::sleep(wait).await;
            Wake::Time
        };
        let work = async {
            if checks_done {
                futures_lite::future::pending().await
            } else {
                Wake::Checks((&mut checks).await)
            }
        };
        let phase = async {
            phase_changed.await;
            Wake::PhaseChanged
        };
        let wake = futures_lite::future::or(read, futures_lite::future::or(timer, futures_lite::future::or(work, phase))).await;
        match wake {
            Wake::Read(Ok(n)) => pause.on_input(n),
            Wake::Read(Err(_)) => pause.on_input(0),
            Wake::Time => pause.on_time(Instant::now()),
            Wake::Checks(c) => results = Some(c),
            Wake::PhaseChanged => break,
        }
    }
    match pause.state() {
        pause::State::EarlyTalker => {
            log::event("early_talker", &[("client", &peer), ("greet_pause_ms", &policy.greet_pause.0.as_millis())]);
            count(Class::EarlyTalker);
            let reply = Reply::new(554, Enhanced(5, 5, 1), "Protocol error: talking before the greeting");
            write_reply(stream, &reply).await;
            return Err("early_talker");
        }
        pause::State::Closed => return Err("client_closed"),
        pause::State::Waiting | pause::State::Done => {}
    }
    let (score, rdns) = match results {
        Some(c) => c,
        None => checks.await,
    };
    let mut session = Session::default();
    if !score.zones.is_empty() {
        let action = match (&score.blocked_by, policy.dnsbl_action) {
            (None, _) => "pass",
            (Some(_), a) => a.as_str(),
        };
        let zones = score.zones.join(",");
        log::event(
            "dnsbl",
            &[("client", &ip), ("zones", &zones), ("weight", &score.weight), ("action", &action)],
        );
    }
    if let Some(zone) = score.blocked_by {
        match policy.dnsbl_action {
            DnsblAction::RejectAtGreeting => {
                count(Class::Blacklisted);
                write_reply(stream, &blocked_reply(ip, &zone)).await;
                return Err("dnsbl");
            }
            DnsblAction::RejectAtRcpt => session.refusals().dnsbl_zone = Some(zone),
        }
    }
    if let Some(verdict) = rdns {
        let name = match &verdict {
            rdns::Verdict::Pass(name) | rdns::Verdict::Mismatch(name) => name.as_str(),
            _ => "",
        };
        log::event("reverse_dns", &[("client", &ip), ("verdict", &verdict.as_str()), ("name", &name)]);
        if let Some(reply) = verdict.refusal_under(policy.reverse_dns, ip) {
            session.refusals().rdns = Some(reply);
        }
        if let rdns::Verdict::Pass(name) = verdict {
            if wants_name {
                session.refusals().client_name = Some(name);
            }
        }
    }
    Ok(session)
}

async fn write_reply(stream: &mut Stream, reply: &Reply) {
    let mut out = Vec::new();
    reply.write_to(&mut out);
    let _ = stream.write_all(&out).await;
}
