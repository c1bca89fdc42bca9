//! The mail routing lookup (RFC 5321 §5.1): the MX records of a domain,
//! sorted by preference with a random order among equal preferences, each
//! host resolved to its A and AAAA addresses. No MX record: the domain
//! itself is the one host (the implicit MX). Only root exchanges (`MX 0 .`):
//! the domain accepts no mail (null MX, RFC 7505) and delivery fails at once,
//! no address is looked up. NXDOMAIN is a permanent failure; SERVFAIL and
//! timeouts are temporary.
//!
//! Place in the pipeline: delivery calls `route()` per destination domain
//! and maps a `RouteError` to a per-recipient result: `reply()` gives the
//! SMTP reply with its enhanced status code (550 5.1.2 no such domain,
//! 556 5.1.10 null MX, 550 5.4.4 no usable host, 451 4.4.3 DNS failure).
//!
//! The decisions are sans-IO (`plan`, `assemble`) and tested without
//! sockets; `route` only runs them around the resolver's lookups.
//!
//! Bounds: at most `HOST_COUNT_MAX` hosts are resolved, one host at a time
//! (its A and AAAA at once), so one route holds at most two queries in
//! flight. Address literals (`[192.0.2.1]`) and the "our own host is an MX"
//! rule of RFC 5321 §5.1 are the caller's business.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::query::Question;
use super::random::Random;
use super::resolver::Resolver;
use super::{Lookup, RecordData, RecordKind, ResolveError};
use crate::smtp::reply::{Enhanced, Reply};

/// MX hosts resolved per domain (lowest preferences first); the rest are
/// dropped. Postfix tries 5 addresses by default (smtp_mx_address_limit).
pub const HOST_COUNT_MAX: usize = 10;

/// Where mail for a domain goes, best hosts first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The domain asked for, normalised (lower-case, A-labels, no final dot).
    pub domain: String,
    /// No MX records: the domain itself is the host (RFC 5321 §5.1).
    pub implicit: bool,
    /// Hosts with at least one address, in the order to try them. Never
    /// empty.
    pub hosts: Vec<RouteHost>,
}

/// One mail host with its addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteHost {
    pub name: String,
    pub preference: u16,
    pub ipv4: Vec<Ipv4Addr>,
    pub ipv6: Vec<Ipv6Addr>,
}

/// Why mail for a domain cannot go anywhere now. Permanent variants fail
/// the recipients at once; `Temporary` defers them.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The domain is not a valid DNS name.
    #[error("{domain:?} is not a valid domain: {reason}")]
    InvalidDomain { domain: String, reason: String },
    /// NXDOMAIN for the domain.
    #[error("{domain}: no such domain")]
    NoSuchDomain { domain: String },
    /// RFC 7505: the domain publishes a null MX and accepts no mail.
    #[error("{domain} accepts no mail (null MX)")]
    NullMx { domain: String },
    /// No MX host (nor the implicit one) has an address.
    #[error("{domain}: no mail host has an address")]
    NoAddress { domain: String },
    /// The DNS data cannot be followed (a CNAME loop, say).
    #[error("{domain}: {error}")]
    Unroutable { domain: String, error: ResolveError },
    /// SERVFAIL, timeouts, unreachable servers: try again later.
    #[error("{domain}: temporary DNS failure: {error}")]
    Temporary { domain: String, error: ResolveError },
}

impl RouteError {
    pub fn is_permanent(&self) -> bool {
        !matches!(self, RouteError::Temporary { .. })
    }

    /// The enhanced status code (RFC 3463; 5.1.10 from RFC 7505).
    pub fn enhanced(&self) -> Enhanced {
        match self {
            RouteError::InvalidDomain { .. } | RouteError::NoSuchDomain { .. } => Enhanced(5, 1, 2),
            RouteError::NullMx { .. } => Enhanced(5, 1, 10),
            RouteError::NoAddress { .. } | RouteError::Unroutable { .. } => Enhanced(5, 4, 4),
            RouteError::Temporary { .. } => Enhanced(4, 4, 3),
        }
    }

    /// The reply to record for the recipients: 556 for a null MX (the code
    /// RFC 7504 added for it), 550 for the other permanent failures, 451 for
    /// temporary ones.
    pub fn reply(&self) -> Reply {
        let code = match self {
            RouteError::NullMx { .. } => 556,
            RouteError::Temporary { .. } => 451,
            _ => 550,
        };
        let reply = Reply::new(code, self.enhanced(), self.to_string());
        debug_assert_eq!(reply.is_permanent(), self.is_permanent());
        reply
    }
}

/// A host to resolve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MxTarget {
    pub name: String,
    pub preference: u16,
}

/// The hosts to resolve, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub implicit: bool,
    pub targets: Vec<MxTarget>,
}

/// Decides from the MX answer for `domain` (normalised) which hosts to
/// resolve. Sans-IO.
pub fn plan(domain: &str, mx: &Lookup, random: &mut Random) -> Result<Plan, RouteError> {
    let records = match mx {
        Lookup::NxDomain { .. } => return Err(RouteError::NoSuchDomain { domain: domain.to_string() }),
        Lookup::NoData { .. } => return Ok(implicit(domain)),
        Lookup::Records { records, .. } => records,
    };
    let mut targets: Vec<MxTarget> = records
        .iter()
        .filter_map(|record| match record {
            RecordData::Mx(mx) => Some(MxTarget { name: mx.exchange.clone(), preference: mx.preference }),
            _ => None,
        })
        .collect();
    if targets.is_empty() {
        // Records of another type cannot answer an MX question; treat as NODATA.
        return Ok(implicit(domain));
    }
    // RFC 7505 §3 defines the null MX as the only MX, preference 0, exchange
    // "."; a set of nothing but root exchanges says the same, so it is
    // treated alike. A root exchange among real ones is skipped.
    if targets.iter().all(|t| t.name == ".") {
        return Err(RouteError::NullMx { domain: domain.to_string() });
    }
    targets.retain(|t| t.name != ".");
    order(&mut targets, random);
    dedupe(&mut targets);
    targets.truncate(HOST_COUNT_MAX);
    debug_assert!(!targets.is_empty());
    Ok(Plan { implicit: false, targets })
}

fn implicit(domain: &str) -> Plan {
    Plan { implicit: true, targets: vec![MxTarget { name: domain.to_string(), preference: 0 }] }
}

/// Sorts by preference; RFC 5321 §5.1: hosts of equal preference MUST be
/// tried in random order.
fn order(targets: &mut [MxTarget], random: &mut Random) {
    targets.sort_by_key(|t| t.preference);
    let mut start = 0;
    while start < targets.len() {
        let preference = targets[start].preference;
        let end = start + targets[start..].iter().take_while(|t| t.preference == preference).count();
        random.shuffle(&mut targets[start..end]);
        start = end;
    }
}

/// Keeps the first (best) occurrence of each host name.
fn dedupe(targets: &mut Vec<MxTarget>) {
    let mut seen = std::collections::HashSet::new();
    targets.retain(|t| seen.insert(t.name.clone()));
}

/// The A and AAAA results of one target.
pub type HostLookups = (Result<Lookup, ResolveError>, Result<Lookup, ResolveError>);

/// Builds the route from the address lookups of each planned target (same
/// order). Hosts without addresses are skipped; if none is left, a
/// temporary error among the lookups makes the failure temporary, else it
/// is permanent. Sans-IO.
pub fn assemble(domain: &str, plan: Plan, lookups: Vec<HostLookups>) -> Result<Route, RouteError> {
    assert_eq!(plan.targets.len(), lookups.len(), "one pair of lookups per target");
    let mut hosts = Vec::with_capacity(plan.targets.len());
    let mut temporary = None;
    let mut permanent = None;
    for (target, (a, aaaa)) in plan.targets.into_iter().zip(lookups) {
        let mut host = RouteHost { name: target.name, preference: target.preference, ipv4: Vec::new(), ipv6: Vec::new() };
        for result in [a, aaaa] {
            match result {
                Ok(lookup) => {
                    let (ipv4, ipv6) = lookup.addresses();
                    host.ipv4.extend(ipv4);
                    host.ipv6.extend(ipv6);
                }
                Err(error) if error.is_permanent() => permanent = Some(error),
                Err(error) => temporary = Some(error),
            }
        }
        if !host.ipv4.is_empty() || !host.ipv6.is_empty() {
            hosts.push(host);
        }
    }
    let domain = domain.to_string();
    if !hosts.is_empty() {
        return Ok(Route { domain, implicit: plan.implicit, hosts });
    }
    match (temporary, permanent) {
        (Some(error), _) => Err(RouteError::Temporary { domain, error }),
        (None, Some(error)) if plan.implicit => Err(RouteError::Unroutable { domain, error }),
        _ => Err(RouteError::NoAddress { domain }),
    }
}

/// Where mail for `domain` goes: MX lookup, then the hosts' addresses.
pub async fn route(resolver: &Resolver, domain: &str) -> Result<Route, RouteError> {
    let question = Question::new(domain, RecordKind::Mx).map_err(|error| RouteError::InvalidDomain {
        domain: domain.to_string(),
        reason: error.to_string(),
    })?;
    let domain = question.name_text();
    let mx = match resolver.lookup_question(&question).await {
        Ok(lookup) => lookup,
        Err(error) if error.is_permanent() => return Err(RouteError::Unroutable { domain, error }),
        Err(error) => return Err(RouteError::Temporary { domain, error }),
    };
    let plan = plan(&domain, &mx, &mut resolver.random())?;
    let mut lookups = Vec::with_capacity(plan.targets.len());
    for target in &plan.targets {
        let a = resolver.lookup(&target.name, RecordKind::A);
        let aaaa = resolver.lookup(&target.name, RecordKind::Aaaa);
        lookups.push(futures_lite::future::zip(a, aaaa).await);
    }
    assemble(&domain, plan, lookups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::MxRecord;

    fn mx_records(pairs: &[(u16, &str)]) -> Lookup {
        let records = pairs
            .iter()
            .map(|&(preference, exchange)| RecordData::Mx(MxRecord { preference, exchange: exchange.to_string() }))
            .collect();
        Lookup::Records { records, ttl_s: 300 }
    }

    fn names(plan: &Plan) -> Vec<&str> {
        plan.targets.iter().map(|t| t.name.as_str()).collect()
    }

    fn ipv4(last: u8) -> Result<Lookup, ResolveError> {
        Ok(Lookup::Records { records: vec![RecordData::A(Ipv4Addr::new(192, 0, 2, last))], ttl_s: 60 })
    }

    #[test]
    fn sorted_by_preference_random_among_equals() {
        let mx = mx_records(&[(20, "b.example"), (10, "a.example"), (30, "e.example"), (20, "c.example"), (10, "d.example")]);
        let mut random = Random::from_seed(5);
        let mut orders = std::collections::HashSet::new();
        for _ in 0..200 {
            let plan = plan("example.com", &mx, &mut random).unwrap();
            assert!(!plan.implicit);
            let prefs: Vec<u16> = plan.targets.iter().map(|t| t.preference).collect();
            assert_eq!(prefs, [10, 10, 20, 20, 30]);
            orders.insert(names(&plan).join(","));
        }
        // Two groups of two: four orders, each seen.
        assert_eq!(orders.len(), 4, "{orders:?}");
        assert!(orders.iter().all(|o| o.ends_with("e.example")));
    }

    #[test]
    fn no_mx_means_the_domain_itself() {
        let mut random = Random::from_seed(1);
        let plan = plan("example.com", &Lookup::NoData { ttl_s: 60 }, &mut random).unwrap();
        assert_eq!(plan, Plan { implicit: true, targets: vec![MxTarget { name: "example.com".into(), preference: 0 }] });
    }

    #[test]
    fn null_mx_fails_at_once_with_5_1_10() {
        let mut random = Random::from_seed(1);
        let error = plan("nomail.example", &mx_records(&[(0, ".")]), &mut random).unwrap_err();
        assert_eq!(error, RouteError::NullMx { domain: "nomail.example".into() });
        assert!(error.is_permanent());
        assert_eq!(error.enhanced(), Enhanced(5, 1, 10));
        let reply = error.reply();
        assert_eq!((reply.code, reply.enhanced), (556, Some(Enhanced(5, 1, 10))));
        // Not strictly RFC 7505 (preference 10, twice), same meaning.
        let error = plan("nomail.example", &mx_records(&[(10, "."), (20, ".")]), &mut random).unwrap_err();
        assert!(matches!(error, RouteError::NullMx { .. }));
    }

    #[test]
    fn root_exchange_among_real_ones_is_skipped() {
        let mut random = Random::from_seed(1);
        let plan = plan("example.com", &mx_records(&[(0, "."), (10, "mx.example.com")]), &mut random).unwrap();
        assert_eq!(names(&plan), ["mx.example.com"]);
    }

    #[test]
    fn nxdomain_is_permanent_5_1_2() {
        let mut random = Random::from_seed(1);
        let error = plan("nothing.example", &Lookup::NxDomain { ttl_s: 0 }, &mut random).unwrap_err();
        assert_eq!(error, RouteError::NoSuchDomain { domain: "nothing.example".into() });
        let reply = error.reply();
        assert_eq!((reply.code, reply.enhanced), (550, Some(Enhanced(5, 1, 2))));
    }

    #[test]
    fn hosts_are_bounded_and_deduplicated() {
        let mut pairs: Vec<(u16, String)> = (0..HOST_COUNT_MAX + 5).map(|i| (i as u16, format!("mx{i}.example"))).collect();
        pairs.push((50, "mx0.example".to_string()));
        let borrowed: Vec<(u16, &str)> = pairs.iter().map(|(p, n)| (*p, n.as_str())).collect();
        let mut random = Random::from_seed(1);
        let plan = plan("example.com", &mx_records(&borrowed), &mut random).unwrap();
        assert_eq!(plan.targets.len(), HOST_COUNT_MAX);
        assert_eq!(plan.targets[0], MxTarget { name: "mx0.example".into(), preference: 0 });
        let unique: std::collections::HashSet<&str> = names(&plan).into_iter().collect();
        assert_eq!(unique.len(), HOST_COUNT_MAX);
    }

    #[test]
    fn hosts_without_addresses_are_skipped() {
        let mut random = Random::from_seed(1);
        let plan = plan("example.com", &mx_records(&[(10, "a.example"), (20, "b.example"), (30, "c.example")]), &mut random).unwrap();
        let six = Ok(Lookup::Records { records: vec![RecordData::Aaaa(Ipv6Addr::LOCALHOST)], ttl_s: 60 });
        let lookups = vec![
            (Ok(Lookup::NxDomain { ttl_s: 60 }), Ok(Lookup::NxDomain { ttl_s: 60 })),
            (Err(ResolveError::Timeout), six),
            (ipv4(3), Ok(Lookup::NoData { ttl_s: 60 })),
        ];
        let route = assemble("example.com", plan, lookups).unwrap();
        let hosts: Vec<(&str, usize, usize)> = route.hosts.iter().map(|h| (h.name.as_str(), h.ipv4.len(), h.ipv6.len())).collect();
        assert_eq!(hosts, [("b.example", 0, 1), ("c.example", 1, 0)]);
        assert!(!route.implicit);
    }

    #[test]
    fn no_address_is_permanent_unless_a_lookup_failed_temporarily() {
        let mut random = Random::from_seed(1);
        let plan = plan("example.com", &mx_records(&[(10, "a.example"), (20, "b.example")]), &mut random).unwrap();
        let nx = || (Ok(Lookup::NxDomain { ttl_s: 60 }), Ok(Lookup::NoData { ttl_s: 60 }));
        let error = assemble("example.com", plan.clone(), vec![nx(), nx()]).unwrap_err();
        assert_eq!(error, RouteError::NoAddress { domain: "example.com".into() });
        assert_eq!(error.reply().enhanced, Some(Enhanced(5, 4, 4)));
        let servfail = ResolveError::ServerFailure { rcode: "Server Failure".into() };
        let error = assemble("example.com", plan, vec![nx(), (Err(servfail.clone()), Ok(Lookup::NoData { ttl_s: 0 }))]).unwrap_err();
        assert_eq!(error, RouteError::Temporary { domain: "example.com".into(), error: servfail });
        assert!(!error.is_permanent());
        let reply = error.reply();
        assert_eq!((reply.code, reply.enhanced), (451, Some(Enhanced(4, 4, 3))));
    }

    #[test]
    fn implicit_host_with_a_cname_loop_is_unroutable() {
        let mut random = Random::from_seed(1);
        let plan = plan("loop.example", &Lookup::NoData { ttl_s: 60 }, &mut random).unwrap();
        let error = ResolveError::CnameChainTooLong { name: "loop.example".into(), limit: 8 };
        let result = assemble("loop.example", plan, vec![(Err(error.clone()), Err(error.clone()))]);
        assert_eq!(result.unwrap_err(), RouteError::Unroutable { domain: "loop.example".into(), error });
    }

    #[test]
    fn implicit_route_keeps_the_domain() {
        let mut random = Random::from_seed(1);
        let plan = plan("example.com", &Lookup::NoData { ttl_s: 60 }, &mut random).unwrap();
        let route = assemble("example.com", plan, vec![(ipv4(9), Ok(Lookup::NoData { ttl_s: 60 }))]).unwrap();
        assert!(route.implicit);
        assert_eq!(route.hosts[0].name, "example.com");
        assert_eq!(route.hosts[0].ipv4, [Ipv4Addr::new(192, 0, 2, 9)]);
    }
}
