//! DNS for mail routing: where does mail for a domain go? The MX records,
//! sorted by preference (random order among equals), each host resolved to
//! its A and AAAA addresses; the domain itself when it has no MX (the
//! implicit MX, RFC 5321 §5.1); an immediate permanent failure for a null MX
//! (RFC 7505) or a domain that does not exist; a temporary failure when the
//! name servers fail or do not answer.
//!
//! Place in the pipeline: delivery asks `mx::route()` before it connects to
//! a next hop and maps a `RouteError` to a 5xx or 4xx result with its
//! enhanced status code (5.1.2, 5.1.10, 5.4.4, 4.4.3). Each shard is to own
//! one `Resolver`: its own UDP sockets on its own executor, its own cache;
//! nothing is shared across shards. (Wiring into `src/shard/` and the
//! `dns.*` configuration keys comes with the delivery engine.)
//!
//! Layers, bottom up, each testable alone:
//! - `query`: the wire format (hickory-proto), sans-IO: encode a question,
//!   check that a response belongs to it, interpret it (CNAME chains,
//!   NODATA/NXDOMAIN with negative TTLs, truncation, server failures).
//! - `exchange`: one question against the configured servers, sans-IO:
//!   which server next, a fresh random id per transmission, TCP after a
//!   truncated UDP answer, EDNS off after FORMERR, timeouts and attempts.
//! - `cache`: answers by question until their TTL runs out, negative ones
//!   included (RFC 2308); bounded, the time passed in.
//! - `resolver`: the glommio driver: a small pool of UDP sockets on random
//!   ports per address family, many queries in flight (bounded), TCP.
//! - `mx`: the mail routing lookup on top of the resolver.
//! - `random`: query ids, socket choice and MX shuffles from getrandom(2), or
//!   from a seed in tests.
//!
//! Limits: servers `SERVER_COUNT_MAX`, CNAME chain `CNAME_CHAIN_LENGTH_MAX`,
//! TTLs `TTL_MAX_S` and `NEGATIVE_TTL_MAX_S`, records per answer
//! `query::RECORD_COUNT_MAX`, MX hosts `mx::HOST_COUNT_MAX`, queries in
//! flight and cache entries per `ResolverParams`.

pub mod cache;
pub mod exchange;
pub mod mx;
pub mod query;
pub mod random;
pub mod resolver;

use std::net::{Ipv4Addr, Ipv6Addr};

pub use mx::{route, Route, RouteError, RouteHost};
pub use resolver::{Resolver, ResolverParams, ResolverStats};

/// CNAMEs followed for one question, across re-queries; one more is an
/// error (a loop, or a chain no sane zone needs).
pub const CNAME_CHAIN_LENGTH_MAX: usize = 8;
/// Longest time a positive answer is cached, whatever its TTL says.
pub const TTL_MAX_S: u32 = 24 * 3600;
/// Longest time a negative answer is cached: RFC 2308 §5 finds one to three
/// hours a sensible ceiling.
pub const NEGATIVE_TTL_MAX_S: u32 = 3 * 3600;
/// Name servers used, from resolv.conf or the configuration.
pub const SERVER_COUNT_MAX: usize = 8;

/// The record types mail routing asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    A,
    Aaaa,
    Mx,
    /// Reverse DNS (`crate::frontline`'s client checks).
    Ptr,
    /// TXT (RFC 1035 §3.3.14), for SPF, DKIM keys and DMARC policies.
    Txt,
    /// TLSA (RFC 6698), for DANE.
    Tlsa,
}

/// An MX record (RFC 1035 §3.3.9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MxRecord {
    pub preference: u16,
    /// Lower-case, A-labels, without the final dot; the root is ".".
    pub exchange: String,
}

impl MxRecord {
    /// The exchange is the root: the null MX of RFC 7505 (when alone).
    pub fn is_root_exchange(&self) -> bool {
        self.exchange == "."
    }
}

/// The data of one record of an asked type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordData {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Mx(MxRecord),
    /// A PTR target: lower-case, A-labels, without the final dot.
    Ptr(String),
    /// One TXT record, its character-strings concatenated (RFC 7208 §3.3,
    /// RFC 6376 §3.6.2.2); at most `query::TXT_RECORD_BYTES_MAX` bytes.
    Txt(Vec<u8>),
    /// A TLSA record (data at most `tls::dane::TLSA_DATA_BYTES_MAX` bytes).
    Tlsa(crate::tls::dane::Tlsa),
}

/// A definitive answer to one question, with the seconds it stays valid
/// (0: use it now, do not cache it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Records of the asked type (after any CNAMEs); never empty.
    Records { records: Vec<RecordData>, ttl_s: u32 },
    /// The name exists but has no record of the asked type.
    NoData { ttl_s: u32 },
    /// The name does not exist.
    NxDomain { ttl_s: u32 },
}

impl Lookup {
    pub fn ttl_s(&self) -> u32 {
        match self {
            Lookup::Records { ttl_s, .. } | Lookup::NoData { ttl_s } | Lookup::NxDomain { ttl_s } => *ttl_s,
        }
    }

    /// The same answer valid for `ttl_s` seconds.
    pub fn with_ttl_s(mut self, ttl_s_new: u32) -> Lookup {
        match &mut self {
            Lookup::Records { ttl_s, .. } | Lookup::NoData { ttl_s } | Lookup::NxDomain { ttl_s } => {
                *ttl_s = ttl_s_new
            }
        }
        self
    }

    /// The IPv4 and IPv6 addresses among the records.
    pub fn addresses(&self) -> (Vec<Ipv4Addr>, Vec<Ipv6Addr>) {
        let (mut ipv4, mut ipv6) = (Vec::new(), Vec::new());
        if let Lookup::Records { records, .. } = self {
            for record in records {
                match record {
                    RecordData::A(a) => ipv4.push(*a),
                    RecordData::Aaaa(aaaa) => ipv6.push(*aaaa),
                    RecordData::Mx(_) | RecordData::Ptr(_) | RecordData::Txt(_) | RecordData::Tlsa(_) => {}
                }
            }
        }
        (ipv4, ipv6)
    }
}

/// Why a question got no definitive answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// Not a valid domain name (permanent).
    #[error("invalid domain name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    /// More than `limit` CNAMEs, or a loop (permanent: the data as
    /// published cannot be followed).
    #[error("CNAME chain from {name} longer than {limit}")]
    CnameChainTooLong { name: String, limit: usize },
    /// No server answered in time, on any attempt.
    #[error("no answer from the name servers")]
    Timeout,
    /// The last server answered SERVFAIL, REFUSED or another error code.
    #[error("name server failure ({rcode})")]
    ServerFailure { rcode: String },
    /// Sockets could not be opened or used.
    #[error("name server unreachable: {0}")]
    Io(String),
    /// The shard's bound on queries in flight was reached; nothing was sent.
    #[error("more than {limit} DNS queries in flight")]
    QueriesInFlightExceeded { limit: usize },
}

impl ResolveError {
    /// Permanent errors will not go away by asking again later.
    pub fn is_permanent(&self) -> bool {
        matches!(self, ResolveError::InvalidName { .. } | ResolveError::CnameChainTooLong { .. })
    }
}

/// Parses a name server as `dns.servers` writes it: `"192.0.2.53"`,
/// `"192.0.2.53:5353"`, `"2001:db8::53"` or `"[2001:db8::53]:5353"`; the
/// port defaults to 53.
pub fn parse_server(text: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::{IpAddr, SocketAddr};
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return if addr.port() == 0 { Err(format!("bad name server {text:?}: port 0")) } else { Ok(addr) };
    }
    match text.parse::<IpAddr>() {
        Ok(ip) => Ok(SocketAddr::new(ip, 53)),
        Err(_) => Err(format!(
            "bad name server {text:?}: expected an IP address, \"addr:port\" or \"[v6addr]:port\""
        )),
    }
}

/// The resolver settings for a configuration: resolv.conf's, with
/// `dns.servers`, `dns.timeout` and `dns.attempts` taking precedence.
pub fn params_for(config: &crate::config::Dns) -> std::io::Result<ResolverParams> {
    let mut params = ResolverParams::from_system()?;
    if !config.servers.is_empty() {
        params.servers = config.servers.clone();
    }
    if let Some(timeout) = config.timeout {
        params.timeout = timeout.0;
    }
    if let Some(attempts) = config.attempts {
        params.attempts = attempts;
    }
    Ok(params)
}

#[cfg(test)]
mod parse_server_tests {
    use super::parse_server;

    #[test]
    fn forms() {
        assert_eq!(parse_server("127.0.0.1").unwrap().to_string(), "127.0.0.1:53");
        assert_eq!(parse_server("127.0.0.1:5353").unwrap().to_string(), "127.0.0.1:5353");
        assert_eq!(parse_server("::1").unwrap().to_string(), "[::1]:53");
        assert_eq!(parse_server("[::1]:5353").unwrap().to_string(), "[::1]:5353");
        assert!(parse_server("ns.example").is_err());
        assert!(parse_server("127.0.0.1:0").is_err());
    }
}
