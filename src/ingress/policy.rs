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

use std::net::IpAddr;

use crate::config::Config;
use crate::route::domains;
use crate::route::{Engine, Mode};
use crate::smtp::address::{Address, ReversePath};
use crate::smtp::reply::{Enhanced, Reply};

/// Decides RCPT TO for a client at `client_ip` in a transaction from
/// `sender` (`""` for the null sender). `routing`: the session's routing
/// engine, when it has routers.
pub async fn check_rcpt(
    config: &Config,
    routing: Option<&Engine>,
    client_ip: IpAddr,
    address: &Address,
    sender: &str,
) -> Reply {
    let Some(engine) = routing.filter(|engine| !engine.is_empty()) else {
        return check_rcpt_by_domain(config, client_ip, address);
    };
    if !domains::is_accepted_domain(engine.config(), address) && !config.relay.allows_client(client_ip) {
        return Reply::new(550, Enhanced(5, 7, 1), "Relay access denied");
    }
    // A domain a [[transport]] rule takes is delivered by that rule, not
    // by the routers: verified the same way.
    if domains::is_ruled(config, address) {
        return Reply::new(250, Enhanced(2, 1, 5), "Recipient ok");
    }
    let routed = engine.route(&address.to_string(), sender, Mode::Verify).await;
    routed.decision.verify_reply()
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
fn check_rcpt_by_domain(config: &Config, client_ip: IpAddr, address: &Address) -> Reply {
    if domains::is_local(config, address) {
        if crate::deliver::maildir::expand_template(&config.local.maildir, &address.local_part).is_err() {
            return Reply::new(550, Enhanced(5, 1, 3), "Bad recipient mailbox name");
        }
        return Reply::new(250, Enhanced(2, 1, 5), "Recipient ok");
    }
    // A domain named by a transport rule is ours to deliver, as are
    // relay.domains (a "*" rule only says how relayed mail goes).
    if !config.relay.allows_client(client_ip) && !domains::is_accepted_domain(config, address) {
        return Reply::new(550, Enhanced(5, 7, 1), "Relay access denied");
    }
    Reply::new(250, Enhanced(2, 1, 5), "Recipient ok")
}
