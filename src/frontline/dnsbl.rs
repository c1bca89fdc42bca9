//! DNSBL and DNSWL scoring: each `[[dnsbl]]` zone is asked for an A record
//! at the client's reversed address (`2.0.0.127.zone`; an IPv6 address by
//! nibble), all zones at once; a zone lists the client when it answers
//! with an address inside its `answers` ranges (any address without
//! them), and the weights of the listing zones add up to the client's
//! score (negative weights are allowlists).
//!
//! Place in the pipeline: `crate::frontline::admit` runs [`score`] when a
//! client connects, during the greet pause; the score decides between the
//! greeting and a 554. Lookups go through the shard's resolver and its
//! cache (answers live for the zone's TTL); each is bounded by
//! `policy.dnsbl_timeout`, after which the zone counts as "not listed".
//! At most `DNSBLS_MAX` zones, so at most that many queries per new client.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::config::Dnsbl;
use crate::dns::{Lookup, RecordData, RecordKind, Resolver};

/// Parses one `answers` entry: `"127.0.0.2"` or `"127.0.0.4..127.0.0.11"`.
pub fn parse_answer_range(text: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let parse = |part: &str| {
        part.trim()
            .parse::<Ipv4Addr>()
            .map_err(|_| format!("bad answer {text:?}: expected \"a.b.c.d\" or \"a.b.c.d..e.f.g.h\""))
    };
    let (low, high) = match text.split_once("..") {
        Some((low, high)) => (parse(low)?, parse(high)?),
        None => {
            let one = parse(text)?;
            (one, one)
        }
    };
    if u32::from(low) > u32::from(high) {
        return Err(format!("bad answer range {text:?}: the first address is above the last"));
    }
    Ok((low, high))
}

/// The client's address as a DNS list names it, without the zone:
/// `4.3.2.1` for 1.2.3.4, 32 reversed nibbles for IPv6. An IPv4-mapped
/// IPv6 address is the IPv4 address.
pub fn reversed(ip: IpAddr) -> String {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}")
        }
        IpAddr::V6(v6) => {
            let mut out = String::with_capacity(64);
            for byte in v6.octets().iter().rev() {
                for nibble in [byte & 0x0f, byte >> 4] {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
                }
            }
            out
        }
    }
}

/// An IPv4-mapped IPv6 address as IPv4; anything else as it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether a zone's A records list the client.
pub fn is_listed(records: &[Ipv4Addr], answers: &[(Ipv4Addr, Ipv4Addr)]) -> bool {
    records.iter().any(|record| {
        answers.is_empty()
            || answers.iter().any(|(low, high)| (u32::from(*low)..=u32::from(*high)).contains(&u32::from(*record)))
    })
}

/// The client's score over the zones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Score {
    /// The sum of the weights of the zones listing the client.
    pub weight: i64,
    /// The zones listing the client, in configuration order.
    pub zones: Vec<String>,
    /// The zone named in the refusal when the score reached the
    /// threshold: the listing zone of highest weight (first among equals).
    pub blocked_by: Option<String>,
}

/// Adds up the zones' verdicts (`listed[i]` for `zones[i]`).
pub fn total(zones: &[Dnsbl], listed: &[bool], threshold: i64) -> Score {
    let mut score = Score::default();
    let mut heaviest: Option<&Dnsbl> = None;
    for (zone, _) in zones.iter().zip(listed).filter(|(_, listed)| **listed) {
        score.weight = score.weight.saturating_add(zone.weight);
        score.zones.push(zone.zone.clone());
        if zone.weight > 0 && heaviest.is_none_or(|h| zone.weight > h.weight) {
            heaviest = Some(zone);
        }
    }
    if score.weight >= threshold {
        score.blocked_by = heaviest.map(|zone| zone.zone.clone());
    }
    score
}

/// Asks every zone about `ip` at once, each for at most `timeout`.
pub async fn score(resolver: &Resolver, zones: &[Dnsbl], ip: IpAddr, timeout: Duration, threshold: i64) -> Score {
    if zones.is_empty() {
        return Score::default();
    }
    let reversed = reversed(ip);
    let lookups = zones.iter().map(|zone| Box::pin(ask(resolver, zone, &reversed, timeout))).collect();
    let listed = JoinAll { futures: lookups, results: vec![None; zones.len()] }.await;
    total(zones, &listed, threshold)
}

/// One zone's verdict: timeouts and failures are "not listed".
async fn ask(resolver: &Resolver, zone: &Dnsbl, reversed: &str, timeout: Duration) -> bool {
    let name = format!("{reversed}.{}", zone.zone);
    let lookup = async { Some(resolver.lookup(&name, RecordKind::A).await) };
    let timer = async {
        glommio::timer::sleep(timeout).await;
        None
    };
    match futures_lite::future::or(lookup, timer).await {
        Some(Ok(Lookup::Records { records, .. })) => {
            let addresses: Vec<Ipv4Addr> = records
                .iter()
                .filter_map(|r| match r {
                    RecordData::A(a) => Some(*a),
                    _ => None,
                })
                .collect();
            is_listed(&addresses, &zone.answers)
        }
        Some(Ok(_)) => false,
        Some(Err(e)) => {
            crate::log::event("dnsbl_error", &[("zone", &zone.zone), ("error", &e)]);
            false
        }
        None => {
            crate::log::event("dnsbl_timeout", &[("zone", &zone.zone), ("timeout_ms", &timeout.as_millis())]);
            false
        }
    }
}

/// Polls every future until all are done; their outputs in order.
struct JoinAll<F: Future<Output = bool>> {
    futures: Vec<Pin<Box<F>>>,
    results: Vec<Option<bool>>,
}

impl<F: Future<Output = bool>> Future for JoinAll<F> {
    type Output = Vec<bool>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Vec<bool>> {
        let this = self.get_mut();
        let mut pending = false;
        for (future, result) in this.futures.iter_mut().zip(this.results.iter_mut()) {
            if result.is_some() {
                continue;
            }
            match future.as_mut().poll(cx) {
                Poll::Ready(listed) => *result = Some(listed),
                Poll::Pending => pending = true,
            }
        }
        if pending {
            return Poll::Pending;
        }
        Poll::Ready(this.results.iter().map(|r| r.unwrap_or(false)).collect())
    }
}
