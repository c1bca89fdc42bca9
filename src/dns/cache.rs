//! The answer cache: definitive answers by question until their TTL runs
//! out, negative ones included (NXDOMAIN and NODATA for the SOA's
//! min(TTL, MINIMUM), RFC 2308 §5). Truncated responses and server failures
//! are never cached; answers with a TTL of 0 are not stored.
//!
//! Place in the pipeline: in front of every exchange of a shard's resolver;
//! most mail goes to a few domains, so most lookups end here.
//!
//! Bounds: at most `entries_max` entries. When full, expired entries go
//! first, then the entry closest to expiry (the one worth least). The time
//! is passed in: there is no clock inside, so tests step time by hand.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::query::Question;
use super::{Lookup, TTL_MAX_S};

#[derive(Debug)]
struct Entry {
    lookup: Lookup,
    /// The answer came with the AD bit set (only asked for by secure
    /// questions, `Question::secure`).
    authentic: bool,
    expires_at: Instant,
    /// Tie-breaker in `by_expiry` for entries expiring at the same instant.
    sequence: u64,
}

/// A bounded TTL cache of definitive answers.
#[derive(Debug)]
pub struct Cache {
    entries_max: usize,
    entries: HashMap<Question, Entry>,
    /// The same entries ordered by expiry: eviction order.
    by_expiry: BTreeMap<(Instant, u64), Question>,
    sequence_next: u64,
    pub stats: CacheStats,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub inserts: u64,
    /// Entries removed before their expiry to make room.
    pub evictions: u64,
}

impl Cache {
    pub fn new(entries_max: usize) -> Cache {
        assert!(entries_max > 0, "a cache holds at least one entry");
        Cache {
            entries_max,
            entries: HashMap::with_capacity(entries_max.min(4096)),
            by_expiry: BTreeMap::new(),
            sequence_next: 0,
            stats: CacheStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The answer for `question` if it is still valid at `now`, its TTL
    /// lowered to the seconds left (rounded up, so never 0).
    pub fn get(&mut self, question: &Question, now: Instant) -> Option<Lookup> {
        self.get_authentic(question, now).map(|(lookup, _)| lookup)
    }

    /// As `get`, with whether the answer was authenticated data.
    pub fn get_authentic(&mut self, question: &Question, now: Instant) -> Option<(Lookup, bool)> {
        let Some(entry) = self.entries.get(question) else {
            self.stats.misses += 1;
            return None;
        };
        if entry.expires_at <= now {
            self.remove(question);
            self.stats.misses += 1;
            return None;
        }
        let left = entry.expires_at - now;
        let left_s = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        debug_assert!(left_s >= 1 && left_s <= u64::from(entry.lookup.ttl_s()));
        self.stats.hits += 1;
        Some((entry.lookup.clone().with_ttl_s(left_s as u32), entry.authentic))
    }

    /// Stores `lookup` for its TTL from `now`, replacing any older answer.
    /// A TTL of 0 stores nothing (and drops the older answer).
    pub fn insert(&mut self, question: Question, lookup: Lookup, now: Instant) {
        self.insert_authentic(question, lookup, false, now)
    }

    /// As `insert`, saying whether the answer was authenticated data.
    pub fn insert_authentic(&mut self, question: Question, lookup: Lookup, authentic: bool, now: Instant) {
        debug_assert!(question.secure || !authentic, "only secure questions ask for the AD bit");
        assert!(lookup.ttl_s() <= TTL_MAX_S, "TTLs are capped before they reach the cache");
        self.remove(&question);
        if lookup.ttl_s() == 0 {
            return;
        }
        if self.entries.len() == self.entries_max {
            self.make_room(now);
        }
        let expires_at = now + Duration::from_secs(u64::from(lookup.ttl_s()));
        let sequence = self.sequence_next;
        self.sequence_next += 1;
        self.by_expiry.insert((expires_at, sequence), question.clone());
        self.entries.insert(question, Entry { lookup, authentic, expires_at, sequence });
        self.stats.inserts += 1;
        assert!(self.entries.len() <= self.entries_max);
        debug_assert_eq!(self.entries.len(), self.by_expiry.len());
    }

    /// Removes every entry expired at `now`.
    pub fn purge_expired(&mut self, now: Instant) {
        while let Some((&(expires_at, _), _)) = self.by_expiry.first_key_value() {
            if expires_at > now {
                break;
            }
            let (_, question) = self.by_expiry.pop_first().expect("checked non-empty");
            self.entries.remove(&question);
        }
        debug_assert_eq!(self.entries.len(), self.by_expiry.len());
    }

    /// Frees one slot: expired entries first, else the entry expiring
    /// soonest.
    fn make_room(&mut self, now: Instant) {
        self.purge_expired(now);
        if self.entries.len() < self.entries_max {
            return;
        }
        let (_, question) = self.by_expiry.pop_first().expect("a full cache has entries");
        self.entries.remove(&question);
        self.stats.evictions += 1;
    }

    fn remove(&mut self, question: &Question) {
        if let Some(entry) = self.entries.remove(question) {
            let removed = self.by_expiry.remove(&(entry.expires_at, entry.sequence));
            debug_assert!(removed.is_some(), "every entry is in the expiry index");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::{RecordData, RecordKind};
    use std::net::Ipv4Addr;

    fn q(name: &str, kind: RecordKind) -> Question {
        Question::new(name, kind).unwrap()
    }

    fn records(ttl_s: u32) -> Lookup {
        Lookup::Records { records: vec![RecordData::A(Ipv4Addr::new(192, 0, 2, 1))], ttl_s }
    }

    #[test]
    fn positive_answer_until_ttl() {
        let t0 = Instant::now();
        let mut cache = Cache::new(8);
        cache.insert(q("example.com", RecordKind::A), records(300), t0);
        assert_eq!(cache.get(&q("EXAMPLE.com.", RecordKind::A), t0), Some(records(300)));
        assert_eq!(cache.get(&q("example.com", RecordKind::A), t0 + Duration::from_millis(100_500)), Some(records(200)));
        assert_eq!(cache.get(&q("example.com", RecordKind::Aaaa), t0), None, "the type is part of the key");
        assert_eq!(cache.get(&q("example.com", RecordKind::A), t0 + Duration::from_secs(300)), None);
        assert!(cache.is_empty(), "an expired entry is removed when found");
    }

    #[test]
    fn negative_answers_are_cached_and_expire() {
        let t0 = Instant::now();
        let mut cache = Cache::new(8);
        let nx = q("nothing.example", RecordKind::Mx);
        let nodata = q("example.com", RecordKind::Aaaa);
        cache.insert(nx.clone(), Lookup::NxDomain { ttl_s: 300 }, t0);
        cache.insert(nodata.clone(), Lookup::NoData { ttl_s: 60 }, t0);
        let t1 = t0 + Duration::from_secs(59);
        assert_eq!(cache.get(&nx, t1), Some(Lookup::NxDomain { ttl_s: 241 }));
        assert_eq!(cache.get(&nodata, t1), Some(Lookup::NoData { ttl_s: 1 }));
        let t2 = t0 + Duration::from_secs(60);
        assert_eq!(cache.get(&nodata, t2), None);
        assert_eq!(cache.get(&nx, t2), Some(Lookup::NxDomain { ttl_s: 240 }));
        assert_eq!(cache.get(&nx, t0 + Duration::from_secs(300)), None);
    }

    #[test]
    fn ttl_zero_is_not_stored_and_replaces() {
        let t0 = Instant::now();
        let mut cache = Cache::new(8);
        let question = q("example.com", RecordKind::A);
        cache.insert(question.clone(), records(60), t0);
        cache.insert(question.clone(), Lookup::NxDomain { ttl_s: 0 }, t0);
        assert_eq!(cache.get(&question, t0), None);
        assert!(cache.is_empty());
    }

    #[test]
    fn bounded_with_soonest_expiry_evicted() {
        let t0 = Instant::now();
        let mut cache = Cache::new(3);
        cache.insert(q("a.example", RecordKind::A), records(100), t0);
        cache.insert(q("b.example", RecordKind::A), records(10), t0);
        cache.insert(q("c.example", RecordKind::A), records(50), t0);
        cache.insert(q("d.example", RecordKind::A), records(70), t0);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.stats.evictions, 1);
        assert_eq!(cache.get(&q("b.example", RecordKind::A), t0), None, "the soonest to expire went");
        // Expired entries make room before any live one is evicted.
        let t1 = t0 + Duration::from_secs(60);
        cache.insert(q("e.example", RecordKind::A), records(10), t1);
        assert_eq!(cache.stats.evictions, 1);
        assert_eq!(cache.get(&q("c.example", RecordKind::A), t1), None);
        assert!(cache.get(&q("a.example", RecordKind::A), t1).is_some());
        assert!(cache.get(&q("d.example", RecordKind::A), t1).is_some());
        for i in 0..100 {
            cache.insert(q(&format!("n{i}.example"), RecordKind::Mx), Lookup::NoData { ttl_s: 1 + i }, t1);
            assert!(cache.len() <= 3);
        }
        cache.purge_expired(t1 + Duration::from_secs(TTL_MAX_S as u64));
        assert!(cache.is_empty());
    }
}
