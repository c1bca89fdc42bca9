//! The DNS side of email authentication: mail-auth's evaluations read
//! their records from caches that ringpost's own resolver (`crate::dns`)
//! fills; mail-auth never sends a query itself.
//!
//! Place in the pipeline: under `crate::auth` (SPF at MAIL FROM; DKIM,
//! ARC and DMARC at the final dot). One `Caches` lives for one check.
//!
//! How a check runs (`settle`): the evaluation is run with the caches; a
//! name it asks for that is not in them is noted (`Table::get`) and, as
//! mail-auth is built with its `test` feature, answered "no such name" at
//! once without any network (mail-auth's `mock_resolve`). When the
//! evaluation ends, the noted names are looked up with ringpost's
//! resolver, all at once, their answers put in the caches, and the
//! evaluation runs again; when it notes nothing new, its result stands.
//! Each round costs an evaluation (microseconds for SPF and DMARC, a
//! header hash and signature check per DKIM signature) and one round of
//! DNS, of which there are as many as the deepest chain of lookups
//! (SPF includes, DMARC's walk up the tree).
//!
//! Bounds: at most `max_lookups` names are looked up per check, and all
//! of them within `timeout`; a name still unanswered then is a temporary
//! error (TXT) or noted as one (`temp_failure`, for A, AAAA and MX). A
//! TXT record is at most `crate::dns::query::TXT_RECORD_BYTES_MAX` bytes,
//! an answer at most `RECORD_COUNT_MAX` records. PTR is not looked up: the
//! SPF `ptr` mechanism (RFC 7208 §5.5: "SHOULD NOT be used") never
//! matches.

use std::borrow::Borrow;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::dmarc::Dmarc;
use mail_auth::hickory_resolver::proto::op::ResponseCode;
use mail_auth::spf::Spf;
use mail_auth::common::cache::NoCache;
use mail_auth::{Error, Parameters, ResolverCache, Txt, MX};

use crate::dns::{Lookup, RecordData, RecordKind, ResolveError, Resolver};

/// Longest name noted (a DNS name is at most 253 octets and a dot).
const NAME_BYTES_MAX: usize = 256;

/// The record types mail-auth asks for, as ringpost looks them up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Txt,
    Mx,
    A,
    Aaaa,
}

/// One of mail-auth's caches, keyed by the absolute, lower-case name
/// (with its final dot) mail-auth asks for.
pub struct Table<V> {
    kind: Kind,
    map: RefCell<HashMap<String, V>>,
    /// Names looked up that had no records (A, AAAA, MX: mail-auth's
    /// miss answer, "no such name", is then the right one).
    settled: RefCell<HashSet<String>>,
    /// Names asked for this round and not in the table.
    missed: RefCell<Vec<String>>,
}

impl<V> Table<V> {
    fn new(kind: Kind) -> Table<V> {
        Table { kind, map: RefCell::default(), settled: RefCell::default(), missed: RefCell::default() }
    }

    pub fn insert_value(&self, name: String, value: V) {
        self.map.borrow_mut().insert(name, value);
    }

    fn settle_negative(&self, name: String) {
        self.settled.borrow_mut().insert(name);
    }

    fn take_missed(&self) -> Vec<String> {
        std::mem::take(&mut *self.missed.borrow_mut())
    }
}

impl<V: Clone> ResolverCache<String, V> for Table<V> {
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(value) = self.map.borrow().get(name) {
            return Some(value.clone());
        }
        if self.settled.borrow().contains(name) {
            return None;
        }
        if let Some(text) = key_text(name) {
            let mut missed = self.missed.borrow_mut();
            if !missed.contains(&text) {
                missed.push(text);
            }
        }
        None
    }

    fn remove<Q>(&self, name: &Q) -> Option<V>
    where
        String: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.borrow_mut().remove(name)
    }

    fn insert(&self, key: String, value: V, _valid_until: Instant) {
        self.map.borrow_mut().insert(key, value);
    }
}

/// The text of a key mail-auth passes as `&Q` (always `str`): the octets
/// its `Hash` writes (a `str` writes its bytes, then 0xFF). A unit test
/// checks this stays so.
fn key_text<Q: Hash + ?Sized>(key: &Q) -> Option<String> {
    struct Octets(Vec<u8>, bool);
    impl Hasher for Octets {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            if self.0.len() + bytes.len() <= NAME_BYTES_MAX + 1 {
                self.0.extend_from_slice(bytes);
            } else {
                self.1 = true;
            }
        }
    }
    let mut octets = Octets(Vec::new(), false);
    key.hash(&mut octets);
    if octets.1 {
        return None;
    }
    let mut bytes = octets.0;
    if bytes.last() != Some(&0xff) {
        return None;
    }
    bytes.pop();
    let text = String::from_utf8(bytes).ok()?;
    (!text.is_empty() && text.is_ascii()).then_some(text)
}

/// The caches of one check.
pub struct Caches {
    pub txt: Table<Txt>,
    pub mx: Table<Arc<Vec<MX>>>,
    pub ipv4: Table<Arc<Vec<Ipv4Addr>>>,
    pub ipv6: Table<Arc<Vec<Ipv6Addr>>>,
    /// An A, AAAA or MX lookup failed for a while (timeout, SERVFAIL):
    /// the result that did not see it may be wrong, a temporary error.
    pub temp_failure: Cell<bool>,
    /// Names looked up so far.
    pub lookups: Cell<u32>,
}

pub type Params<'x, P> = Parameters<
    'x,
    P,
    Table<Txt>,
    Table<Arc<Vec<MX>>>,
    Table<Arc<Vec<Ipv4Addr>>>,
    Table<Arc<Vec<Ipv6Addr>>>,
    NoCache<std::net::IpAddr, Arc<Vec<String>>>,
>;

impl Default for Caches {
    fn default() -> Caches {
        Caches {
            txt: Table::new(Kind::Txt),
            mx: Table::new(Kind::Mx),
            ipv4: Table::new(Kind::A),
            ipv6: Table::new(Kind::Aaaa),
            temp_failure: Cell::new(false),
            lookups: Cell::new(0),
        }
    }
}

impl Caches {
    /// mail-auth's parameters `params` reading these caches.
    pub fn params<P>(&self, params: P) -> Params<'_, P> {
        Parameters::new(params)
            .with_txt_cache(&self.txt)
            .with_mx_cache(&self.mx)
            .with_ipv4_cache(&self.ipv4)
            .with_ipv6_cache(&self.ipv6)
    }

    fn take_missed(&self) -> Vec<(Kind, String)> {
        let mut missed = Vec::new();
        for (kind, names) in [
            (self.txt.kind, self.txt.take_missed()),
            (self.mx.kind, self.mx.take_missed()),
            (self.ipv4.kind, self.ipv4.take_missed()),
            (self.ipv6.kind, self.ipv6.take_missed()),
        ] {
            missed.extend(names.into_iter().map(|name| (kind, name)));
        }
        missed
    }

    /// Puts ringpost's answer for `name` into the table of `kind`.
    pub fn put(&self, kind: Kind, name: String, answer: Result<Lookup, ResolveError>) {
        match (kind, answer) {
            (Kind::Txt, Ok(Lookup::Records { records, .. })) => {
                let texts: Vec<&[u8]> = records
                    .iter()
                    .filter_map(|r| match r {
                        RecordData::Txt(bytes) => Some(bytes.as_slice()),
                        _ => None,
                    })
                    .collect();
                let txt = parse_txt(&name, &texts);
                self.txt.insert_value(name, txt);
            }
            (Kind::Txt, Ok(Lookup::NxDomain { .. })) => {
                self.txt.insert_value(name, Txt::Error(Error::DnsRecordNotFound(ResponseCode::NXDomain)))
            }
            (Kind::Txt, Ok(Lookup::NoData { .. })) => {
                self.txt.insert_value(name, Txt::Error(Error::DnsRecordNotFound(ResponseCode::NoError)))
            }
            (Kind::Txt, Err(e)) if e.is_permanent() => {
                self.txt.insert_value(name, Txt::Error(Error::DnsRecordNotFound(ResponseCode::NXDomain)))
            }
            (Kind::Txt, Err(e)) => self.txt.insert_value(name, Txt::Error(Error::DnsError(e.to_string()))),
            (Kind::Mx, Ok(Lookup::Records { records, .. })) => {
                let mut groups: Vec<MX> = Vec::new();
                for record in records {
                    let RecordData::Mx(mx) = record else { continue };
                    let exchange = if mx.exchange == "." { ".".to_string() } else { format!("{}.", mx.exchange) };
                    match groups.iter_mut().find(|g| g.preference == mx.preference) {
                        Some(group) => group.exchanges.push(exchange),
                        None => groups.push(MX { exchanges: vec![exchange], preference: mx.preference }),
                    }
                }
                groups.sort_unstable_by_key(|g| g.preference);
                self.mx.insert_value(name, Arc::new(groups));
            }
            (Kind::A, Ok(lookup @ Lookup::Records { .. })) => {
                self.ipv4.insert_value(name, Arc::new(lookup.addresses().0));
            }
            (Kind::Aaaa, Ok(lookup @ Lookup::Records { .. })) => {
                self.ipv6.insert_value(name, Arc::new(lookup.addresses().1));
            }
            (kind, answer) => {
                if matches!(&answer, Err(e) if !e.is_permanent()) {
                    self.temp_failure.set(true);
                }
                match kind {
                    Kind::Mx => self.mx.settle_negative(name),
                    Kind::A => self.ipv4.settle_negative(name),
                    Kind::Aaaa => self.ipv6.settle_negative(name),
                    Kind::Txt => unreachable!("every TXT answer is matched above"),
                }
            }
        }
    }

    /// A name that could not be looked up (over the bounds): a temporary
    /// error.
    fn give_up(&self, kind: Kind, name: String) {
        match kind {
            Kind::Txt => self.txt.insert_value(name, Txt::Error(Error::DnsError("not looked up".to_string()))),
            _ => self.put(kind, name, Err(ResolveError::Timeout)),
        }
    }
}

/// The TXT records of `name` parsed as what mail-auth asks that name for:
/// a DMARC policy under `_dmarc.`, a DKIM key under `._domainkey.`, else
/// an SPF record. The first record that parses wins (as mail-auth's own
/// lookup does).
pub fn parse_txt(name: &str, records: &[&[u8]]) -> Txt {
    fn first<T: TxtRecordParser + Into<Txt>>(records: &[&[u8]]) -> Txt {
        let mut result = Err(Error::InvalidRecordType);
        for record in records {
            result = T::parse(record);
            if result.is_ok() {
                break;
            }
        }
        result.into()
    }
    if name.starts_with("_dmarc.") {
        first::<Dmarc>(records)
    } else if name.contains("._domainkey.") {
        first::<DomainKey>(records)
    } else {
        first::<Spf>(records)
    }
}

/// Names that are never looked up: DKIM's report and ATPS queries, which
/// ringpost does not use.
fn is_unused(name: &str) -> bool {
    name.starts_with("_report._domainkey.") || name.contains("._atps.")
}

/// Runs `evaluate` until it asks for no name the caches lack, looking the
/// missing names up with `resolver` between runs (see the module comment
/// for the bounds). The last run's result is returned.
pub async fn settle<T, F, Fut>(
    resolver: &Resolver,
    caches: &Caches,
    max_lookups: u32,
    timeout: Duration,
    mut evaluate: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let result = evaluate().await;
        let missed: Vec<(Kind, String)> = caches.take_missed();
        if missed.is_empty() {
            return result;
        }
        let now = Instant::now();
        let mut asked = Vec::new();
        let mut over = Vec::new();
        for (kind, name) in missed {
            if is_unused(&name) {
                caches.put(kind, name, Ok(Lookup::NxDomain { ttl_s: 0 }));
            } else if caches.lookups.get() < max_lookups && now < deadline {
                caches.lookups.set(caches.lookups.get() + 1);
                asked.push((kind, name));
            } else {
                over.push((kind, name));
            }
        }
        if !over.is_empty() {
            // Over the bounds: what is missing is a temporary error, and
            // one last run sees that.
            for (kind, name) in over.into_iter().chain(asked) {
                caches.give_up(kind, name);
            }
            let result = evaluate().await;
            let _ = caches.take_missed();
            return result;
        }
        let lookups = asked.iter().map(|(kind, name)| {
            let record_kind = match kind {
                Kind::Txt => RecordKind::Txt,
                Kind::Mx => RecordKind::Mx,
                Kind::A => RecordKind::A,
                Kind::Aaaa => RecordKind::Aaaa,
            };
            resolver.lookup(name, record_kind)
        });
        let remaining = deadline.saturating_duration_since(Instant::now());
        let answers = glommio::timer::timeout(remaining, async { Ok(join_all(lookups.collect()).await) }).await;
        match answers {
            Ok(answers) => {
                for ((kind, name), answer) in asked.into_iter().zip(answers) {
                    caches.put(kind, name, answer);
                }
            }
            Err(_) => {
                for (kind, name) in asked {
                    caches.give_up(kind, name);
                }
            }
        }
    }
}

/// Awaits every future, concurrently, in order.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("every future finished")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_str_key_is_read_back_from_its_hash() {
        assert_eq!(key_text("example.com.").as_deref(), Some("example.com."));
        assert_eq!(key_text(&"_dmarc.a.test.".to_string()).as_deref(), Some("_dmarc.a.test."));
        assert_eq!(key_text(&"x".repeat(400)), None, "longer than a DNS name");
        assert_eq!(key_text(&7u32), None);
    }

    #[test]
    fn a_missed_name_is_noted_once_and_a_settled_one_not_at_all() {
        let table: Table<Txt> = Table::new(Kind::Txt);
        assert!(table.get("a.test.").is_none());
        assert!(table.get("a.test.").is_none());
        assert_eq!(table.take_missed(), vec!["a.test.".to_string()]);
        let caches = Caches::default();
        caches.put(Kind::A, "b.test.".to_string(), Ok(Lookup::NxDomain { ttl_s: 0 }));
        assert!(caches.ipv4.get("b.test.").is_none());
        assert!(caches.take_missed().is_empty());
        assert!(!caches.temp_failure.get());
        caches.put(Kind::Mx, "c.test.".to_string(), Err(ResolveError::Timeout));
        assert!(caches.temp_failure.get());
    }

    #[test]
    fn txt_records_are_parsed_by_what_their_name_is_for() {
        assert!(matches!(parse_txt("a.test.", &[b"google-site-verification=x", b"v=spf1 -all"]), Txt::Spf(_)));
        assert!(matches!(parse_txt("_dmarc.a.test.", &[b"v=DMARC1; p=reject"]), Txt::Dmarc(_)));
        assert!(matches!(parse_txt("s._domainkey.a.test.", &[b"v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="]), Txt::DomainKey(_)));
        assert!(matches!(parse_txt("a.test.", &[b"hello"]), Txt::Error(Error::InvalidRecordType)));
    }
}
