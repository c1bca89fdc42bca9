//! Connection-time and envelope policy for inbound SMTP: who may relay, which
//! recipients are local, what a refused recipient is told.
//!
//! Place in the pipeline: called by the session driver when the SMTP state
//! machine presents a MAIL or RCPT; its answer becomes the reply. The
//! routing engine will take over recipient decisions (routing is
//! verification); until then the decision is: local domain, relay client,
//! relay domain, or refused.

use std::net::IpAddr;

use crate::config::Config;
use crate::smtp::address::Address;
use crate::smtp::reply::{Enhanced, Reply};

/// Where an accepted recipient will go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// A mailbox in `local.maildir`.
    Local,
    /// Relayed through `delivery.smarthost`.
    Relay,
}

/// Classifies a recipient address: local (its domain is in `domains.local`,
/// or it is the bare `postmaster`) or remote.
pub fn route_of(config: &Config, address: &Address) -> Route {
    route_of_domain(config, address.domain.as_deref())
}

/// The same classification for a queued recipient, stored as text
/// (`local@domain`, or a bare `postmaster`).
pub fn route_of_text(config: &Config, address: &str) -> Route {
    route_of_domain(config, address.rsplit_once('@').map(|(_, domain)| domain))
}

fn route_of_domain(config: &Config, domain: Option<&str>) -> Route {
    match domain {
        None => Route::Local,
        Some(domain) if config.domains.is_local(domain) => Route::Local,
        Some(_) => Route::Relay,
    }
}

/// Decides RCPT TO for a client at `client_ip`.
pub fn check_rcpt(config: &Config, client_ip: IpAddr, address: &Address) -> Reply {
    match route_of(config, address) {
        Route::Local => {
            if crate::deliver::maildir::expand_template(&config.local.maildir, &address.local_part).is_err() {
                return Reply::new(550, Enhanced(5, 1, 3), "Bad recipient mailbox name");
            }
            Reply::new(250, Enhanced(2, 1, 5), "Recipient ok")
        }
        Route::Relay => {
            let domain = address.domain.as_deref().unwrap_or_default();
            // A domain named by a transport rule is ours to deliver, as are
            // relay.domains (a "*" rule only says how relayed mail goes).
            let relay_domain = config.relay.domains.iter().any(|d| domain_eq(d, domain))
                || config.transports.iter().any(|rule| rule.names(domain));
            if !config.relay.allows_client(client_ip) && !relay_domain {
                return Reply::new(550, Enhanced(5, 7, 1), "Relay access denied");
            }
            Reply::new(250, Enhanced(2, 1, 5), "Recipient ok")
        }
    }
}

fn domain_eq(a: &str, b: &str) -> bool {
    a.trim_end_matches('.').eq_ignore_ascii_case(b.trim_end_matches('.'))
}
