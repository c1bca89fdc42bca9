//! Counters by class: what became of each connection, transaction and
//! message the front line saw, in the classes a postmaster reads off a
//! busy MX (relay attempts, known malware, blacklisted clients, early
//! talkers, rate-limited clients, invalid recipients and senders, SPF and
//! DMARC refusals, spam, viruses, accepted mail).
//!
//! Place in the pipeline: every stage that refuses or accepts counts here
//! with [`count`]; `ringpost stats` and the shutdown log read the totals
//! ([`snapshot`]) and a [`History`] of them turns totals into rates. The
//! counters are process-wide relaxed atomics, each on its own cache line:
//! the one mutable thing the shards share, written a few times per
//! connection and read rarely.

use std::sync::atomic::{AtomicU64, Ordering};

/// The classes counted, in the order they are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// A client outside `relay.networks` named a domain that is not ours.
    RelayAttempt,
    /// A HELO matched a `[[helo_check]]` tagged as malware.
    KnownMalware,
    /// A client whose DNSBL weight reached `policy.dnsbl_threshold`.
    Blacklisted,
    /// A client that talked before the greeting.
    EarlyTalker,
    /// A client over one of its per-client limits.
    RateLimited,
    /// RCPT refused: no such user (routers, callouts, tables).
    InvalidRecipient,
    /// MAIL refused by sender checks.
    InvalidSender,
    /// Refused for SPF (fail) or DMARC (p=reject).
    AuthRefused,
    /// Refused by a content scanner as spam.
    Spam,
    /// Refused by a content scanner as a virus.
    Virus,
    /// A message accepted (250 after its final dot).
    Accepted,
}

impl Class {
    pub const ALL: [Class; 11] = [
        Class::RelayAttempt,
        Class::KnownMalware,
        Class::Blacklisted,
        Class::EarlyTalker,
        Class::RateLimited,
        Class::InvalidRecipient,
        Class::InvalidSender,
        Class::AuthRefused,
        Class::Spam,
        Class::Virus,
        Class::Accepted,
    ];

    /// The name in `ringpost stats` and the log.
    pub fn name(self) -> &'static str {
        match self {
            Class::RelayAttempt => "relay_attempt",
            Class::KnownMalware => "known_malware",
            Class::Blacklisted => "blacklisted",
            Class::EarlyTalker => "early_talker",
            Class::RateLimited => "rate_limited",
            Class::InvalidRecipient => "invalid_recipient",
            Class::InvalidSender => "invalid_sender",
            Class::AuthRefused => "spf_dmarc_refused",
            Class::Spam => "spam",
            Class::Virus => "virus",
            Class::Accepted => "accepted",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One counter alone on its cache line, so shards counting different
/// classes do not share one.
#[repr(align(64))]
struct Counter(AtomicU64);

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: Counter = Counter(AtomicU64::new(0));
static COUNTERS: [Counter; Class::ALL.len()] = [ZERO; Class::ALL.len()];

/// Counts one event of `class`.
pub fn count(class: Class) {
    COUNTERS[class.index()].0.fetch_add(1, Ordering::Relaxed);
}

/// The totals since the process started, in [`Class::ALL`] order.
pub fn snapshot() -> [u64; Class::ALL.len()] {
    let mut totals = [0; Class::ALL.len()];
    for (total, counter) in totals.iter_mut().zip(&COUNTERS) {
        *total = counter.0.load(Ordering::Relaxed);
    }
    totals
}

/// Snapshots taken once a second, the last `HISTORY_SECONDS` of them: the
/// rate of a class over the last minute is its newest total minus its
/// oldest, over the seconds between them.
pub struct History {
    samples: std::collections::VecDeque<(u64, [u64; Class::ALL.len()])>,
}

/// Seconds of snapshots a [`History`] keeps.
pub const HISTORY_SECONDS: usize = 60;

impl History {
    pub fn new() -> History {
        History { samples: std::collections::VecDeque::with_capacity(HISTORY_SECONDS + 1) }
    }

    /// Adds the totals seen at `unix_ms`, forgetting the oldest beyond a minute.
    pub fn push(&mut self, unix_ms: u64, totals: [u64; Class::ALL.len()]) {
        self.samples.push_back((unix_ms, totals));
        while self.samples.len() > HISTORY_SECONDS + 1 {
            self.samples.pop_front();
        }
    }

    /// Per class: events per second over the kept minute (0 with fewer than
    /// two samples).
    pub fn rates_per_second(&self) -> [f64; Class::ALL.len()] {
        let mut rates = [0.0; Class::ALL.len()];
        let (Some((t0, first)), Some((t1, last))) = (self.samples.front(), self.samples.back()) else {
            return rates;
        };
        let seconds = (t1.saturating_sub(*t0)) as f64 / 1000.0;
        if seconds <= 0.0 {
            return rates;
        }
        for (i, rate) in rates.iter_mut().enumerate() {
            *rate = last[i].saturating_sub(first[i]) as f64 / seconds;
        }
        rates
    }
}

impl Default for History {
    fn default() -> History {
        History::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_and_rates_span_the_minute() {
        let before = snapshot()[Class::Virus.index()];
        count(Class::Virus);
        count(Class::Virus);
        assert_eq!(snapshot()[Class::Virus.index()], before + 2);
        let mut history = History::new();
        let mut totals = [0; Class::ALL.len()];
        for second in 0..=120u64 {
            totals[Class::Accepted.index()] = second * 10;
            history.push(second * 1000, totals);
        }
        assert_eq!(history.samples.len(), HISTORY_SECONDS + 1);
        assert!((history.rates_per_second()[Class::Accepted.index()] - 10.0).abs() < 1e-9);
        assert_eq!(history.rates_per_second()[Class::Spam.index()], 0.0);
    }
}
