//! Reverse DNS of the client: `policy.reverse_dns = "require"` needs a PTR
//! record for its address, `"require_forward_confirmed"` a PTR name that
//! resolves back to that address (FCrDNS).
//!
//! Place in the pipeline: `crate::frontline::admit` runs [`check`] when the
//! client connects, beside the DNSBL lookups; a failure becomes the reply
//! to the client's MAIL commands (450 4.7.1 when DNS failed temporarily,
//! 550 5.7.1 when the name is absent or does not match). Lookups go
//! through the shard's resolver and cache; at most `PTR_NAMES_MAX` PTR
//! names are resolved forward.

use std::net::IpAddr;

use crate::config::ReverseDns;
use crate::dns::{Lookup, RecordData, RecordKind, ResolveError, Resolver};
use crate::smtp::reply::{Enhanced, Reply};

/// PTR names of one address followed forward, at most.
pub const PTR_NAMES_MAX: usize = 4;

/// The result of the reverse DNS check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The address has the name (forward-confirmed when asked).
    Pass(String),
    /// DNS did not answer, or failed.
    TempFail,
    /// No PTR record.
    Absent,
    /// PTR names, none of which resolves back to the address.
    Mismatch(String),
}

impl Verdict {
    /// The refusal for MAIL, if any.
    pub fn refusal(&self, ip: IpAddr) -> Option<Reply> {
        match self {
            Verdict::Pass(_) => None,
            Verdict::TempFail => Some(Reply::new(
                450,
                Enhanced(4, 7, 1),
                format!("Client host rejected: cannot find your reverse hostname, [{ip}]"),
            )),
            Verdict::Absent => Some(Reply::new(
                550,
                Enhanced(5, 7, 1),
                format!("Client host rejected: cannot find your reverse hostname, [{ip}]"),
            )),
            Verdict::Mismatch(name) => Some(Reply::new(
                550,
                Enhanced(5, 7, 1),
                format!("Client host rejected: reverse hostname {name} does not resolve to [{ip}]"),
            )),
        }
    }

    /// The refusal for MAIL under `mode`, for a verdict that may have been
    /// looked up more strictly than `mode` asks (see [`lookup_mode`]): a
    /// PTR name that is not forward-confirmed passes `"require"`, and
    /// nothing is refused with `"off"`.
    pub fn refusal_under(&self, mode: ReverseDns, ip: IpAddr) -> Option<Reply> {
        match (mode, self) {
            (ReverseDns::Off, _) | (ReverseDns::Require, Verdict::Mismatch(_)) => None,
            _ => self.refusal(ip),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Pass(_) => "pass",
            Verdict::TempFail => "tempfail",
            Verdict::Absent => "absent",
            Verdict::Mismatch(_) => "mismatch",
        }
    }
}

/// How far to look: `mode`, or forward-confirmed whatever `mode` says
/// when the client's name is wanted (the `client_access` name keys match
/// only a confirmed name, as Postfix's do).
pub fn lookup_mode(mode: ReverseDns, wants_name: bool) -> ReverseDns {
    if wants_name {
        ReverseDns::RequireForwardConfirmed
    } else {
        mode
    }
}

/// The name under in-addr.arpa or ip6.arpa for `ip`.
pub fn ptr_name(ip: IpAddr) -> String {
    let ip = super::dnsbl::canonical(ip);
    let suffix = if ip.is_ipv4() { "in-addr.arpa" } else { "ip6.arpa" };
    format!("{}.{suffix}", super::dnsbl::reversed(ip))
}

/// The verdict from the PTR answer and the forward answers of its names
/// (`None` when `mode` does not ask for them).
pub fn decide(
    mode: ReverseDns,
    ip: IpAddr,
    ptr: &Result<Lookup, ResolveError>,
    forward: &[(String, Result<Lookup, ResolveError>)],
) -> Verdict {
    let names = match ptr {
        Err(e) if e.is_permanent() => return Verdict::Absent,
        Err(_) => return Verdict::TempFail,
        Ok(lookup) => ptr_names(lookup),
    };
    let Some(first) = names.first() else { return Verdict::Absent };
    if mode != ReverseDns::RequireForwardConfirmed {
        return Verdict::Pass(first.clone());
    }
    let ip = super::dnsbl::canonical(ip);
    let mut temporary = false;
    for (name, lookup) in forward {
        match lookup {
            Ok(lookup) => {
                let (v4, v6) = lookup.addresses();
                let hit = match ip {
                    IpAddr::V4(a) => v4.contains(&a),
                    IpAddr::V6(a) => v6.contains(&a),
                };
                if hit {
                    return Verdict::Pass(name.clone());
                }
            }
            Err(e) if !e.is_permanent() => temporary = true,
            Err(_) => {}
        }
    }
    if temporary {
        Verdict::TempFail
    } else {
        Verdict::Mismatch(first.clone())
    }
}

fn ptr_names(lookup: &Lookup) -> Vec<String> {
    match lookup {
        Lookup::Records { records, .. } => records
            .iter()
            .filter_map(|r| match r {
                RecordData::Ptr(name) => Some(name.clone()),
                _ => None,
            })
            .take(PTR_NAMES_MAX)
            .collect(),
        _ => Vec::new(),
    }
}

/// Runs the check for `ip` (None when `mode` is off).
pub async fn check(resolver: &Resolver, mode: ReverseDns, ip: IpAddr) -> Option<Verdict> {
    if mode == ReverseDns::Off {
        return None;
    }
    let ptr = resolver.lookup(&ptr_name(ip), RecordKind::Ptr).await;
    let mut forward = Vec::new();
    if mode == ReverseDns::RequireForwardConfirmed {
        if let Ok(lookup) = &ptr {
            let kind = if super::dnsbl::canonical(ip).is_ipv4() { RecordKind::A } else { RecordKind::Aaaa };
            for name in ptr_names(lookup) {
                let answer = resolver.lookup(&name, kind).await;
                forward.push((name, answer));
            }
        }
    }
    Some(decide(mode, ip, &ptr, &forward))
}
