//! The TLS security level of each outbound connection, and the settings it
//! is chosen from: DANE (RFC 7672) over MTA-STS (RFC 8461) over the
//! configured level (`delivery.tls`, a `[[transport]]` rule's `tls`).
//!
//! Place in the pipeline: `outbound` asks `levels` for the hosts of a
//! destination before it connects, and connects with the level's STARTTLS
//! requirement and rustls configuration. Per shard (`Security` lives in
//! the shard's `Connections`).
//!
//! Downgrade rules (docs/tls.md):
//! - DANE applies to a domain's MX hosts when `delivery.dane` is on, the
//!   resolver is trusted (`dns.dnssec_trusted`) and the MX answer was
//!   authenticated (AD). A host's usable TLSA records make TLS mandatory
//!   and the certificate must match them; TLSA records none of which is
//!   usable still make TLS mandatory (unauthenticated, RFC 7672 §2.2). A
//!   TLSA lookup that fails (SERVFAIL, timeout) defers that host (4.7.5):
//!   the zone is signed, the records may exist, so nothing is sent
//!   without them. An unsigned answer (AD clear) is no DANE.
//! - Otherwise an MTA-STS policy in `enforce` mode allows only the MX hosts
//!   its `mx` patterns match, each with a certificate verified for the MX
//!   name (4.7.5 otherwise); `testing` logs what enforce would refuse.
//! - Otherwise the configured level.
//!
//! Nothing here falls back to plaintext: only the configured `may` does.

use std::net::IpAddr;
use std::sync::Arc;

use crate::config::{Config, TlsPolicy};
use crate::deliver::mtasts::{MtaSts, StsMode};
use crate::dns::{Lookup, RecordData, RecordKind, Resolver};
use crate::smtp::reply::{Enhanced, Reply};
use crate::tls::dane::{self, Tlsa};

/// How one connection is secured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Level {
    /// Plaintext.
    None,
    /// STARTTLS when offered; plaintext when not, or when it fails.
    May,
    /// STARTTLS required, the certificate not checked.
    Encrypt,
    /// STARTTLS required, the certificate verified for the host name.
    Verify,
    /// STARTTLS required, the certificate matching a TLSA record.
    Dane(Vec<Tlsa>),
}

impl Level {
    pub fn of(policy: TlsPolicy) -> Level {
        match policy {
            TlsPolicy::None => Level::None,
            TlsPolicy::May => Level::May,
            TlsPolicy::Encrypt => Level::Encrypt,
            TlsPolicy::Verify => Level::Verify,
        }
    }

    /// The server is authenticated at this level (its sessions are not
    /// shared with deliveries that asked for less).
    pub fn authenticates(&self) -> bool {
        matches!(self, Level::Verify | Level::Dane(_))
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Level::None => "none",
            Level::May => "may",
            Level::Encrypt => "encrypt",
            Level::Verify => "verify",
            Level::Dane(_) => "dane",
        }
    }
}

/// The shard's settings for authenticated TLS.
pub struct Security {
    /// The rustls configuration of `verify` (roots of `delivery.tls_ca_file`
    /// or the system's), or why it could not be built.
    verify: Result<Arc<rustls::ClientConfig>, String>,
    dane: bool,
    /// The resolver's AD bit is believed.
    dnssec_trusted: bool,
    pub mta_sts: Option<MtaSts>,
}

impl Security {
    pub fn new(config: &Config) -> Security {
        let d = &config.delivery;
        let roots = crate::tls::load_roots(d.tls_ca_file.as_deref());
        let verify = roots.clone().map(crate::tls::verifying_config);
        let mta_sts = d.mta_sts.then(|| {
            let roots = match &d.mta_sts_ca_file {
                Some(path) => crate::tls::load_roots(Some(path)),
                None => roots.clone(),
            };
            MtaSts::new(roots.map(crate::tls::verifying_config))
        });
        Security { verify, dane: d.dane, dnssec_trusted: dnssec_trusted(config), mta_sts }
    }

    /// Why authenticated TLS cannot work with this configuration (a CA
    /// file that cannot be read), for the start-up to refuse.
    pub fn problem(&self, config: &Config) -> Option<String> {
        let needed = config.delivery.tls == TlsPolicy::Verify
            || config.delivery.mta_sts
            || config.delivery.tls_ca_file.is_some()
            || config.transports.iter().any(|r| r.tls == Some(TlsPolicy::Verify));
        match (&self.verify, needed) {
            (Err(e), true) => Some(format!("delivery.tls_ca_file: {e}")),
            _ => self.mta_sts.as_ref().and_then(|sts| sts.problem()),
        }
    }

    /// The rustls configuration of the `verify` level.
    pub fn verify_config(&self) -> Result<&Arc<rustls::ClientConfig>, Reply> {
        self.verify
            .as_ref()
            .map_err(|e| Reply::new(451, Enhanced(4, 7, 5), format!("no trusted roots to verify with: {e}")))
    }
}

/// Whether the AD bit of the configured resolvers is believed: as
/// `dns.dnssec_trusted` says, else when every server is on this host.
pub fn dnssec_trusted(config: &Config) -> bool {
    if let Some(trusted) = config.dns.dnssec_trusted {
        return trusted;
    }
    let servers = match crate::dns::params_for(&config.dns) {
        Ok(params) => params.servers,
        Err(_) => return false,
    };
    !servers.is_empty() && servers.iter().all(|server| server.ip().is_loopback())
}

/// A host of a destination with the level to connect to it at, or the
/// reason it must not be used now.
pub type HostLevel = Result<Level, Reply>;

/// The level for each of `hosts` (MX names of `domain`, in order; a name
/// may repeat, one entry per address), from DANE, MTA-STS and `configured`.
pub async fn levels(
    security: &Security,
    resolver: &Resolver,
    domain: &str,
    hosts: &[String],
    configured: TlsPolicy,
    queue_id: &str,
) -> Vec<HostLevel> {
    let mut levels: Vec<Option<HostLevel>> = vec![None; hosts.len()];
    if security.dane && security.dnssec_trusted && mx_is_secure(resolver, domain).await {
        for (index, host) in hosts.iter().enumerate() {
            // One TLSA lookup per name (the cache answers the repeats).
            levels[index] = dane_level(resolver, host).await;
        }
    }
    let sts = match &security.mta_sts {
        Some(sts) if levels.iter().any(Option::is_none) => sts.policy(resolver, domain).await,
        _ => None,
    };
    let configured = Level::of(configured);
    levels
        .into_iter()
        .zip(hosts)
        .map(|(level, host)| {
            if let Some(level) = level {
                return level;
            }
            let Some(policy) = &sts else {
                return Ok(configured.clone());
            };
            let matched = policy.mx_matches(host);
            match policy.mode {
                StsMode::Enforce if matched => Ok(Level::Verify),
                StsMode::Enforce => Err(Reply::new(
                    451,
                    Enhanced(4, 7, 5),
                    format!("MTA-STS policy of {domain} does not allow MX host {host}"),
                )),
                StsMode::Testing => {
                    if !matched {
                        crate::log::event(
                            "mta_sts_testing",
                            &[
                                ("id", &queue_id),
                                ("domain", &domain),
                                ("host", &host),
                                ("problem", &"mx not in the policy"),
                            ],
                        );
                    }
                    Ok(configured.clone())
                }
                StsMode::None => Ok(configured.clone()),
            }
        })
        .collect()
}

/// The domain's MX answer is authenticated data (no MX at all: its
/// address records are, for the implicit MX).
async fn mx_is_secure(resolver: &Resolver, domain: &str) -> bool {
    match resolver.lookup_secure(domain, RecordKind::Mx).await {
        Ok((Lookup::Records { .. }, authentic)) => authentic,
        Ok((Lookup::NoData { .. }, true)) => {
            matches!(resolver.lookup_secure(domain, RecordKind::A).await, Ok((Lookup::Records { .. }, true)))
        }
        _ => false,
    }
}

/// DANE's level for one MX host of a secure domain: `None` when the host
/// has no authenticated TLSA records (DANE does not apply).
async fn dane_level(resolver: &Resolver, host: &str) -> Option<HostLevel> {
    let name = format!("_25._tcp.{}", host.trim_end_matches('.'));
    match resolver.lookup_secure(&name, RecordKind::Tlsa).await {
        Ok((Lookup::Records { records, .. }, true)) => {
            let all: Vec<Tlsa> = records
                .into_iter()
                .filter_map(|r| match r {
                    RecordData::Tlsa(tlsa) => Some(tlsa),
                    _ => None,
                })
                .collect();
            let usable = dane::usable(all);
            // RFC 7672 §2.2: records, none usable: TLS all the same.
            Some(Ok(if usable.is_empty() { Level::Encrypt } else { Level::Dane(usable) }))
        }
        Ok(_) => None,
        Err(e) if e.is_permanent() => None,
        Err(e) => Some(Err(Reply::new(451, Enhanced(4, 7, 5), format!("TLSA lookup for {name} failed: {e}")))),
    }
}

/// The local address to connect from toward `addr`: the one of its family
/// in `sources`, if any.
pub fn source_for(sources: &[IpAddr], addr: IpAddr) -> Option<IpAddr> {
    sources.iter().copied().find(|source| source.is_ipv4() == addr.is_ipv4())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_address_is_chosen_by_family() {
        let sources: Vec<IpAddr> = vec!["127.0.0.2".parse().unwrap(), "::1".parse().unwrap()];
        assert_eq!(source_for(&sources, "192.0.2.1".parse().unwrap()), Some(sources[0]));
        assert_eq!(source_for(&sources, "2001:db8::1".parse().unwrap()), Some(sources[1]));
        assert_eq!(source_for(&sources[..1], "2001:db8::1".parse().unwrap()), None);
        assert_eq!(source_for(&[], "192.0.2.1".parse().unwrap()), None);
    }

    #[test]
    fn only_verify_and_dane_authenticate() {
        assert!(Level::Verify.authenticates());
        assert!(Level::Dane(vec![Tlsa { usage: 3, selector: 1, matching: 1, data: vec![0; 32] }]).authenticates());
        assert!(!Level::Encrypt.authenticates() && !Level::May.authenticates() && !Level::None.authenticates());
        assert_eq!(Level::of(TlsPolicy::Verify), Level::Verify);
    }

    #[test]
    fn the_resolver_is_trusted_when_configured_or_on_loopback() {
        let mut config = Config::default();
        config.dns.servers = vec!["127.0.0.1:53".parse().unwrap()];
        assert!(dnssec_trusted(&config));
        config.dns.servers.push("192.0.2.53:53".parse().unwrap());
        assert!(!dnssec_trusted(&config));
        config.dns.dnssec_trusted = Some(true);
        assert!(dnssec_trusted(&config));
        config.dns.servers = vec!["127.0.0.1:53".parse().unwrap()];
        config.dns.dnssec_trusted = Some(false);
        assert!(!dnssec_trusted(&config));
    }
}
