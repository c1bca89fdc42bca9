//! The callout cache of one shard: what a back end said about an address
//! (or about a whole domain), kept in memory until its TTL passes, bounded
//! by `verify.callout_cache_entries` with the oldest entry evicted first.
//!
//! Place in the pipeline: read at RCPT before any callout is started, and
//! written when a callout ends with a definite answer (2xx or 5xx; a 4xx,
//! a timeout or a failed connection is never cached). The shard that owns
//! a domain's callouts keeps the authoritative copy; the other shards keep
//! what they were told in a cache of their own, so that a repeated RCPT is
//! answered on the shard where it arrives, without a message between
//! threads and without a lock.
//!
//! Memory: an entry is its key (kind, sender, address: about 40 bytes in
//! practice), the value (a reply text for refusals) and a slot in the age
//! order, about 150 bytes all told; 1,000,000 entries are about 150 MiB
//! per shard at most.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use crate::smtp::reply::Reply;

/// What is remembered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cached {
    /// The address was accepted.
    Accept,
    /// The address was refused by `host` with `reply` (its RCPT reply).
    Reject { host: String, reply: Reply },
    /// The domain accepts any local part (a random one was accepted).
    AcceptAll,
    /// The domain refused a random local part: its addresses are verified
    /// one by one.
    NotAcceptAll,
    /// The domain's next hop refused the callout before any RCPT (`MAIL
    /// FROM` refused, the domain does not exist, a null MX): every address
    /// of it is refused with this.
    DomainRefuses { host: String, reply: Reply },
}

/// A cache key: an address (with the sender it was asked with, "" for
/// the null sender or a fixed one) or a domain.
pub fn address_key(sender: &str, address: &str) -> Rc<str> {
    format!("a {sender} {address}").into()
}

pub fn domain_key(sender: &str, domain: &str) -> Rc<str> {
    format!("d {sender} {domain}").into()
}

struct Entry {
    value: Cached,
    expires_unix_ms: u64,
    /// The insertion this entry came from, to tell a live slot in the age
    /// order from one the key has since been inserted again over.
    seq: u64,
}

/// Counters of one cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub entries: usize,
    pub evicted: u64,
    pub expired: u64,
}

pub struct Cache {
    entries_max: usize,
    map: HashMap<Rc<str>, Entry>,
    /// Keys by age of insertion, oldest first; may hold slots of keys
    /// inserted again or expired (`seq` tells), at most twice the entries.
    order: VecDeque<(Rc<str>, u64)>,
    seq_next: u64,
    evicted: u64,
    expired: u64,
}

impl Cache {
    pub fn new(entries_max: usize) -> Cache {
        assert!(entries_max >= 1);
        Cache { entries_max, map: HashMap::new(), order: VecDeque::new(), seq_next: 0, evicted: 0, expired: 0 }
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats { entries: self.map.len(), evicted: self.evicted, expired: self.expired }
    }

    /// The live value for `key` at `now_unix_ms`; an expired one is removed.
    pub fn get(&mut self, key: &str, now_unix_ms: u64) -> Option<Cached> {
        self.get_with_expiry(key, now_unix_ms).map(|(value, _)| value)
    }

    /// The live value for `key` and when it expires.
    pub fn get_with_expiry(&mut self, key: &str, now_unix_ms: u64) -> Option<(Cached, u64)> {
        let entry = self.map.get(key)?;
        if entry.expires_unix_ms > now_unix_ms {
            return Some((entry.value.clone(), entry.expires_unix_ms));
        }
        self.map.remove(key);
        self.expired += 1;
        None
    }

    /// Remembers `value` for `key` until `expires_unix_ms`, evicting the
    /// oldest entries beyond the bound.
    pub fn insert(&mut self, key: Rc<str>, value: Cached, expires_unix_ms: u64) {
        let seq = self.seq_next;
        self.seq_next += 1;
        self.map.insert(key.clone(), Entry { value, expires_unix_ms, seq });
        self.order.push_back((key, seq));
        while self.map.len() > self.entries_max {
            let Some((oldest, seq)) = self.order.pop_front() else { break };
            if self.map.get(&oldest).is_some_and(|e| e.seq == seq) {
                self.map.remove(&oldest);
                self.evicted += 1;
            }
        }
        if self.order.len() > 2 * self.entries_max.max(self.map.len()) {
            self.compact();
        }
        debug_assert!(self.map.len() <= self.entries_max);
    }

    /// Drops the age-order slots of keys that were inserted again, expired
    /// or evicted.
    fn compact(&mut self) {
        let map = &self.map;
        self.order.retain(|(key, seq)| map.get(key).is_some_and(|e| e.seq == *seq));
        debug_assert_eq!(self.order.len(), self.map.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::reply::Enhanced;

    #[test]
    fn entries_expire_at_their_ttl() {
        let mut cache = Cache::new(10);
        cache.insert(address_key("", "a@x.test"), Cached::Accept, 1_000);
        assert_eq!(cache.get("a  a@x.test", 999), Some(Cached::Accept));
        assert_eq!(cache.get("a  a@x.test", 1_000), None);
        assert_eq!(cache.stats().expired, 1);
        assert_eq!(cache.stats().entries, 0);
    }

    #[test]
    fn the_oldest_entry_goes_first_and_the_bound_holds() {
        let mut cache = Cache::new(3);
        for i in 0..3 {
            cache.insert(address_key("", &format!("u{i}@x.test")), Cached::Accept, u64::MAX);
        }
        // Inserting u0 again makes it the youngest: u1 goes next.
        cache.insert(address_key("", "u0@x.test"), Cached::Accept, u64::MAX);
        cache.insert(address_key("", "u3@x.test"), Cached::Accept, u64::MAX);
        assert_eq!(cache.get(&address_key("", "u1@x.test"), 0), None);
        for live in ["u0", "u2", "u3"] {
            assert!(cache.get(&address_key("", &format!("{live}@x.test")), 0).is_some(), "{live}");
        }
        assert_eq!(cache.stats().evicted, 1);
        for i in 0..10_000 {
            cache.insert(address_key("", &format!("v{}@x.test", i % 7)), Cached::Accept, u64::MAX);
            assert!(cache.map.len() <= 3);
            assert!(cache.order.len() <= 6 + 1, "age order bounded: {}", cache.order.len());
        }
    }

    #[test]
    fn keys_tell_senders_and_domains_apart() {
        let mut cache = Cache::new(10);
        let reply = Reply::new(550, Enhanced(5, 1, 1), "no");
        cache.insert(address_key("s@y.test", "a@x.test"), Cached::Reject { host: "mx".into(), reply }, u64::MAX);
        cache.insert(domain_key("", "x.test"), Cached::AcceptAll, u64::MAX);
        assert_eq!(cache.get(&address_key("", "a@x.test"), 0), None);
        assert!(matches!(cache.get(&address_key("s@y.test", "a@x.test"), 0), Some(Cached::Reject { .. })));
        assert_eq!(cache.get(&domain_key("", "x.test"), 0), Some(Cached::AcceptAll));
        assert_eq!(cache.get(&domain_key("s@y.test", "x.test"), 0), None);
    }
}
