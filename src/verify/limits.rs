//! Protection of the back ends from callouts: at most
//! `verify.callout_max_per_host` callouts in flight to one target host, and
//! at most `verify.callout_rate_per_domain` started per second for one
//! target domain (a token bucket whose burst is the same number). A
//! callout beyond either is not queued: its RCPT gets 451 at once, so a
//! dictionary attack of random local parts reaches the department's
//! server no faster than configured, and nothing waits without bound.
//!
//! Place in the pipeline: consulted by the shard that owns a domain's
//! callouts (`verify::Verifier`), after the cache and the coalescing of
//! callouts already in flight, before a new callout starts.
//!
//! Bounds: buckets and host counters are kept for at most `KEYS_MAX`
//! domains and hosts; beyond it the buckets that are full again and the
//! hosts with nothing in flight are dropped (they carry no state).

use std::collections::HashMap;

/// Domains (buckets) and hosts (counters) remembered at once.
pub const KEYS_MAX: usize = 10_000;

struct Bucket {
    /// Tokens, in thousandths, at `at_unix_ms`.
    milli_tokens: u64,
    at_unix_ms: u64,
}

/// Why a callout may not start now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// `callout_max_per_host` callouts to this host are in flight.
    HostBusy,
    /// The domain's bucket is empty.
    RateLimited,
}

pub struct Limits {
    rate_per_s: u64,
    max_per_host: usize,
    buckets: HashMap<String, Bucket>,
    in_flight: HashMap<String, usize>,
}

impl Limits {
    pub fn new(rate_per_s: u32, max_per_host: usize) -> Limits {
        assert!(rate_per_s >= 1 && max_per_host >= 1);
        Limits { rate_per_s: u64::from(rate_per_s), max_per_host, buckets: HashMap::new(), in_flight: HashMap::new() }
    }

    /// Takes a slot for `host` and a token of `domain`, or says why not.
    /// A granted start must be followed by `finished(host)`.
    pub fn try_start(&mut self, domain: &str, host: &str, now_unix_ms: u64) -> Result<(), Refused> {
        if self.in_flight.get(host).copied().unwrap_or(0) >= self.max_per_host {
            return Err(Refused::HostBusy);
        }
        let full = self.rate_per_s * 1000;
        if self.buckets.len() >= KEYS_MAX && !self.buckets.contains_key(domain) {
            let rate = self.rate_per_s;
            self.buckets.retain(|_, b| refill(b, rate, now_unix_ms) < full);
        }
        let bucket =
            self.buckets.entry(domain.to_string()).or_insert(Bucket { milli_tokens: full, at_unix_ms: now_unix_ms });
        bucket.milli_tokens = refill(bucket, self.rate_per_s, now_unix_ms);
        bucket.at_unix_ms = bucket.at_unix_ms.max(now_unix_ms);
        if bucket.milli_tokens < 1000 {
            return Err(Refused::RateLimited);
        }
        bucket.milli_tokens -= 1000;
        if self.in_flight.len() >= KEYS_MAX && !self.in_flight.contains_key(host) {
            self.in_flight.retain(|_, count| *count > 0);
        }
        *self.in_flight.entry(host.to_string()).or_insert(0) += 1;
        Ok(())
    }

    /// A callout to `host` that `try_start` allowed has ended.
    pub fn finished(&mut self, host: &str) {
        let count = self.in_flight.get_mut(host).expect("a finished callout was started");
        *count = count.checked_sub(1).expect("callouts in flight below zero");
        if *count == 0 {
            self.in_flight.remove(host);
        }
    }

    /// Callouts in flight to `host`.
    pub fn in_flight(&self, host: &str) -> usize {
        self.in_flight.get(host).copied().unwrap_or(0)
    }
}

/// The bucket's tokens (thousandths) at `now_unix_ms`, at most full.
fn refill(bucket: &Bucket, rate_per_s: u64, now_unix_ms: u64) -> u64 {
    let elapsed_ms = now_unix_ms.saturating_sub(bucket.at_unix_ms);
    // rate_per_s tokens per 1000 ms: rate_per_s thousandths per ms.
    bucket.milli_tokens.saturating_add(elapsed_ms.saturating_mul(rate_per_s)).min(rate_per_s * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_a_burst_then_a_steady_flow() {
        let mut limits = Limits::new(5, 1000);
        let mut started = 0;
        for _ in 0..100 {
            if limits.try_start("dept.test", "mx", 0).is_ok() {
                started += 1;
            }
        }
        assert_eq!(started, 5, "the burst");
        assert_eq!(limits.try_start("dept.test", "mx", 0), Err(Refused::RateLimited));
        assert_eq!(limits.try_start("other.test", "mx", 0), Ok(()), "another domain has its own bucket");
        // Over 10 s at one attempt per millisecond: 5 per second more.
        let mut later = 0;
        for ms in 1..=10_000 {
            if limits.try_start("dept.test", "mx", ms).is_ok() {
                later += 1;
            }
        }
        assert_eq!(later, 50);
        // A clock that goes back refills nothing.
        assert_eq!(limits.try_start("dept.test", "mx", 5_000), Err(Refused::RateLimited));
    }

    #[test]
    fn hosts_are_limited_while_callouts_are_in_flight() {
        let mut limits = Limits::new(1000, 2);
        assert_eq!(limits.try_start("a.test", "mx1", 0), Ok(()));
        assert_eq!(limits.try_start("b.test", "mx1", 0), Ok(()));
        assert_eq!(limits.try_start("c.test", "mx1", 0), Err(Refused::HostBusy));
        assert_eq!(limits.try_start("c.test", "mx2", 0), Ok(()));
        limits.finished("mx1");
        assert_eq!(limits.in_flight("mx1"), 1);
        assert_eq!(limits.try_start("c.test", "mx1", 0), Ok(()));
        limits.finished("mx1");
        limits.finished("mx1");
        limits.finished("mx2");
        assert_eq!(limits.in_flight("mx1"), 0);
        assert!(limits.in_flight.is_empty());
    }

    #[test]
    fn remembered_keys_are_bounded() {
        let mut limits = Limits::new(1, 1);
        for i in 0..(3 * KEYS_MAX) {
            let key = format!("d{i}.test");
            let _ = limits.try_start(&key, &key, i as u64 * 1000);
            limits.finished(&key);
            assert!(limits.buckets.len() <= KEYS_MAX);
        }
    }
}
