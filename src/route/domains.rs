//! What a recipient's domain is to this relay: local (delivered here),
//! taken by a `[[transport]]` rule, or remote — and whether mail for it
//! is accepted from any client. Decided here once, for RCPT and for
//! delivery alike, so the two can never disagree.
//!
//! Place in the pipeline: read by ingress's RCPT policy and by delivery's
//! choice of transport; both pass the parsed [`Address`], never a string
//! split at its `@`.

use crate::config::Config;
use crate::smtp::address::Address;

/// How a recipient is delivered when no `[[router]]` decides for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// The first `[[transport]]` rule that matches the domain (by its
    /// index in `config.transports`); a `"*"` rule matches every domain.
    Rule(usize),
    /// A mailbox in `local.maildir`: a domain in `domains.local`, or the
    /// bare `postmaster`.
    Local,
    /// SMTP to `delivery.smarthost`, or to the domain's MX hosts.
    Remote,
}

/// The disposition of `address` under `config`.
pub fn disposition(config: &Config, address: &Address) -> Disposition {
    let Some(domain) = address.domain.as_deref() else {
        return Disposition::Local;
    };
    if let Some(index) = config
        .transports
        .iter()
        .position(|rule| rule.matches(domain))
    {
        return Disposition::Rule(index);
    }
    if config.domains.is_local(domain) {
        Disposition::Local
    } else {
        Disposition::Remote
    }
}

/// Whether `address` is in a local domain (or is the bare `postmaster`).
pub fn is_local(config: &Config, address: &Address) -> bool {
    address
        .domain
        .as_deref()
        .is_none_or(|domain| config.domains.is_local(domain))
}

/// Whether a `[[transport]]` rule names the domain of `address` itself (a
/// `"*"` rule only says how relayed mail goes): such a domain is accepted
/// from any client, and delivered by its rule rather than by the routers.
pub fn is_ruled(config: &Config, address: &Address) -> bool {
    address.domain.as_deref().is_some_and(|domain| {
        config
            .transport_for(domain)
            .is_some_and(|rule| rule.names(domain))
    })
}

/// Whether mail for `address` is accepted from any client: a local domain,
/// a domain in `relay.domains`, or one a transport rule names.
pub fn is_accepted_domain(config: &Config, address: &Address) -> bool {
    if is_local(config, address) {
        return true;
    }
    let domain = address.domain.as_deref().unwrap_or_default();
    config
        .relay
        .domains
        .iter()
        .any(|relay| domain_eq(relay, domain))
        || config.transports.iter().any(|rule| rule.names(domain))
}

/// The domain that decides the next hop for `address` by MX: lower-case,
/// without a trailing dot ("" for the bare `postmaster`).
pub fn mx_domain(address: &Address) -> String {
    address
        .domain
        .as_deref()
        .unwrap_or_default()
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

fn domain_eq(a: &str, b: &str) -> bool {
    a.trim_end_matches('.')
        .eq_ignore_ascii_case(b.trim_end_matches('.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::stored_address;

    fn config(extra: &str) -> Config {
        let text = format!(
            "[domains]\nlocal = [\"here.test\"]\n[relay]\ndomains = [\"relayed.test\"]\n{extra}"
        );
        crate::config::load_str(std::path::Path::new("test.toml"), &text, &[]).expect("test config")
    }

    #[test]
    fn local_rule_and_remote_are_told_apart() {
        let c = config(
            "[[transport]]\ndomains = [\"lmtp.test\"]\ntransport = \"lmtp\"\nnexthop = \"127.0.0.1:24\"\n",
        );
        let a = |s: &str| stored_address(s).unwrap();
        assert_eq!(disposition(&c, &a("u@here.test")), Disposition::Local);
        assert_eq!(disposition(&c, &a("u@HERE.test.")), Disposition::Local);
        assert_eq!(disposition(&c, &a("postmaster")), Disposition::Local);
        assert_eq!(disposition(&c, &a("u@lmtp.test")), Disposition::Rule(0));
        assert_eq!(disposition(&c, &a("u@else.test")), Disposition::Remote);
        assert!(is_accepted_domain(&c, &a("u@relayed.test")));
        assert!(is_accepted_domain(&c, &a("u@lmtp.test")));
        assert!(is_accepted_domain(&c, &a("u@here.test")));
        assert!(!is_accepted_domain(&c, &a("u@else.test")));
        assert!(is_ruled(&c, &a("u@lmtp.test")));
        assert!(!is_ruled(&c, &a("u@else.test")));
    }

    #[test]
    fn a_star_rule_takes_delivery_but_accepts_nothing() {
        let c = config("[[transport]]\ndomains = [\"*\"]\ntransport = \"smtp\"\nnexthop = \"127.0.0.1:2626\"\n");
        let a = stored_address("u@else.test").unwrap();
        assert_eq!(disposition(&c, &a), Disposition::Rule(0));
        assert!(!is_accepted_domain(&c, &a));
        assert!(!is_ruled(&c, &a));
    }
}
