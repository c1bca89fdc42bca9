//! Envelope policy for inbound SMTP: who may relay, which recipients are
//! valid, what a refused recipient is told. What a domain is to this relay
//! (local, taken by a transport rule, relayed) is decided by
//! `crate::route::domains`, the same code delivery asks.
//!
//! Place in the pipeline: called by the session driver when the SMTP state
//! machine presents a MAIL or RCPT; its answer becomes the reply.
//!
//! With `[[router]]` tables configured, routing is verification: at RCPT,
//! first the relay permission (a client outside `relay.networks` naming a
//! domain that is neither local nor in `relay.domains` gets 550 5.7.1, and
//! the routers are not asked), then the routers in verify mode decide 250,
//! 550 with the router's own text, or 451 4.3.0 when a lookup failed.
//! Without routers the decision is: local domain, relay client, relay
//! domain, or refused.
//!
//! A recipient accepted so far whose `[[transport]]` rule or deciding
//! `[[router]]` says `verify = "callout"` is then verified by its next hop
//! (`crate::verify`): the callout's answer is the reply.

use std::net::IpAddr;
use std::rc::Rc;

use crate::config::Config;
use crate::deliver::attempt::{routed_hop, rule_hop};
use crate::route::domains::{self, Disposition};
use crate::route::{Decision, Engine, Mode};
use crate::verify::{Plan, Verifier};
use crate::smtp::address::{Address, ReversePath};
use crate::smtp::reply::{Enhanced, Reply};

/// Decides RCPT TO for a client at `client_ip` in a transaction from
/// `sender` (`""` for the null sender). `routing`: the session's routing
/// engine, when it has routers; `verifier`: the shard's callouts.
pub async fn check_rcpt(
    config: &Config,
    routing: Option<&Engine>,
    verifier: Option<&Rc<Verifier>>,
    client_ip: IpAddr,
    address: &Address,
    sender: &str,
) -> Reply {
    let relay = config.relay.allows_client(client_ip);
    check_rcpt_relaying(config, routing, verifier, relay, address, sender).await
}

/// [`check_rcpt`] for a client that may relay (`relay`: in the listener's
/// relay networks, or authenticated) or not, whatever `relay.networks` says.
pub async fn check_rcpt_relaying(
    config: &Config,
    routing: Option<&Engine>,
    verifier: Option<&Rc<Verifier>>,
    relay: bool,
    address: &Address,
    sender: &str,
) -> Reply {
    let (reply, plans) = decide_rcpt_relaying(config, routing, relay, address, sender).await;
    let Some(verifier) = verifier.filter(|_| reply.is_positive() && !plans.is_empty()) else {
        return reply;
    };
    let mut verified = reply;
    for plan in plans {
        verified = verifier.verify(plan, sender).await;
        if !verified.is_positive() {
            break;
        }
    }
    verified
}

/// The decision before callouts, and the callouts it asks for.
pub async fn decide_rcpt(
    config: &Config,
    routing: Option<&Engine>,
    client_ip: IpAddr,
    address: &Address,
    sender: &str,
) -> (Reply, Vec<Plan>) {
    decide_rcpt_relaying(config, routing, config.relay.allows_client(client_ip), address, sender).await
}

/// [`decide_rcpt`] for a client that may relay or not.
async fn decide_rcpt_relaying(
    config: &Config,
    routing: Option<&Engine>,
    relay: bool,
    address: &Address,
    sender: &str,
) -> (Reply, Vec<Plan>) {
    let Some(engine) = routing.filter(|engine| !engine.is_empty()) else {
        let reply = check_rcpt_by_domain(config, relay, address);
        let plans = match domains::disposition(config, address) {
            Disposition::Rule(index) if reply.is_positive() => rule_plan(config, index, address).into_iter().collect(),
            _ => Vec::new(),
        };
        return (reply, plans);
    };
    if !domains::is_accepted_domain(engine.config(), address) && !relay {
        crate::stats::count(crate::stats::Class::RelayAttempt);
        return (Reply::new(550, Enhanced(5, 7, 1), "Relay access denied"), Vec::new());
    }
    // A domain a [[transport]] rule takes is delivered by that rule, not
    // by the routers: verified the same way.
    if domains::is_ruled(config, address) {
        let plans = match domains::disposition(config, address) {
            Disposition::Rule(index) => rule_plan(config, index, address).into_iter().collect(),
            _ => Vec::new(),
        };
        return (Reply::new(250, Enhanced(2, 1, 5), "Recipient ok"), plans);
    }
    let routed = engine.route(&address.to_string(), sender, Mode::Verify).await;
    let mut plans = Vec::new();
    if let Decision::Deliver { deliveries, .. } = &routed.decision {
        for delivery in deliveries {
            let options = engine.config().routers.iter().find(|r| r.name == delivery.router).and_then(|r| r.callout.clone());
            let (Some(options), Some((hop, final_address))) = (options, routed_hop(engine.config(), delivery)) else {
                continue;
            };
            plans.push(Plan { hop, options, domain: domains::mx_domain(&final_address), address: final_address.to_string() });
        }
    }
    (routed.decision.verify_reply(), plans)
}

/// The callout of transport rule `index` for `address`, if it asks for one.
fn rule_plan(config: &Config, index: usize, address: &Address) -> Option<Plan> {
    let options = config.transports[index].callout.clone()?;
    let hop = rule_hop(config, index, address)?;
    Some(Plan { hop, options, domain: domains::mx_domain(address), address: address.to_string() })
}

/// Decides MAIL FROM when `route.verify_sender` is on: the sender is routed
/// in verify mode and a refusal becomes the reply (the null sender passes).
pub async fn check_mail(routing: Option<&Engine>, sender: &ReversePath) -> Reply {
    let ok = Reply::new(250, Enhanced(2, 1, 0), "Sender ok");
    let (Some(engine), ReversePath::Path(address)) = (routing, sender) else { return ok };
    if engine.is_empty() || !engine.config().route.verify_sender {
        return ok;
    }
    let reply = engine.route(&address.to_string(), "", Mode::Verify).await.decision.verify_reply();
    if reply.is_positive() {
        ok
    } else {
        let mut reply = reply;
        if reply.enhanced == Some(Enhanced(5, 1, 1)) {
            reply.enhanced = Some(Enhanced(5, 1, 7));
            for line in &mut reply.lines {
                *line = line.replace("Recipient address rejected", "Sender address rejected");
            }
        }
        reply
    }
}

/// The decision without routers: by `domains.local` and `[relay]`.
fn check_rcpt_by_domain(config: &Config, relay: bool, address: &Address) -> Reply {
    if domains::is_local(config, address) {
        if crate::deliver::maildir::expand_template(&config.local.maildir, &address.local_part).is_err() {
            return Reply::new(550, Enhanced(5, 1, 3), "Bad recipient mailbox name");
        }
        return Reply::new(250, Enhanced(2, 1, 5), "Recipient ok");
    }
    // A domain named by a transport rule is ours to deliver, as are
    // relay.domains (a "*" rule only says how relayed mail goes).
    if !relay && !domains::is_accepted_domain(config, address) {
        crate::stats::count(crate::stats::Class::RelayAttempt);
        return Reply::new(550, Enhanced(5, 7, 1), "Relay access denied");
    }
    Reply::new(250, Enhanced(2, 1, 5), "Recipient ok")
}
