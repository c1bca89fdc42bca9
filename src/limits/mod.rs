//! Per-client limits: concurrent sessions, connections, messages and
//! recipients per minute of one client (an IPv4 address, or an IPv6
//! network of `policy.ipv6_prefix_len` bits), counted exactly across all
//! shards.
//!
//! Place in the pipeline: the accept loop asks [`Limits::connect`] before a
//! session starts (a refusal is 421 4.7.0 and the connection closes); the
//! session driver asks [`Limits::take_message`] at MAIL and
//! [`Limits::take_recipient`] at RCPT (a refusal is 451 4.7.0). The
//! [`SessionGuard`] a connection holds gives its session back on every exit
//! path (it is dropped with the session's task).
//!
//! One table for the whole process, shared by the shards: a client's
//! connections land on any shard (SO_REUSEPORT spreads them by a hash of
//! the 4-tuple), so every shard must see the same counts. The table is cut
//! into [`PARTS`] mutex-guarded parts by a hash of the client key, so shards
//! rarely meet on one lock, and each lock is held for a few hash-map
//! operations. Rates are token buckets in integer units (one event costs
//! [`UNITS_PER_EVENT`], a bucket of N per minute refills N units per
//! millisecond), so they are exact. The table is bounded by
//! `policy.client_table_entries`: when a part is full, clients with no open
//! session and idle for a minute (their buckets full again, nothing lost)
//! are evicted, then the longest idle clients with no open session.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use crate::config::{Cidr, Config};
use crate::smtp::reply::{Enhanced, Reply};

/// Parts the client table is cut into (each its own lock).
pub const PARTS: usize = 64;
/// Bucket units one event costs: the milliseconds of a minute, so that a
/// bucket of N events per minute refills N units per millisecond.
pub const UNITS_PER_EVENT: u64 = 60_000;
/// After this long without an event a client's buckets are full again and
/// its entry (with no open session) carries nothing worth keeping.
const IDLE_MS: u64 = 60_000;

/// A token bucket of `per_minute` events, refilled evenly over a minute.
/// A new bucket is full (a client may burst its whole minute at once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    units: u64,
    updated_ms: u64,
}

impl TokenBucket {
    pub fn full(per_minute: u32, now_ms: u64) -> TokenBucket {
        TokenBucket { units: per_minute as u64 * UNITS_PER_EVENT, updated_ms: now_ms }
    }

    fn refill(&mut self, per_minute: u32, now_ms: u64) {
        let elapsed_ms = now_ms.saturating_sub(self.updated_ms);
        let capacity = per_minute as u64 * UNITS_PER_EVENT;
        self.units = self.units.saturating_add(elapsed_ms.saturating_mul(per_minute as u64)).min(capacity);
        self.updated_ms = self.updated_ms.max(now_ms);
    }

    /// Takes one event's tokens if the bucket has them.
    pub fn take(&mut self, per_minute: u32, now_ms: u64) -> bool {
        self.refill(per_minute, now_ms);
        if self.units >= UNITS_PER_EVENT {
            self.units -= UNITS_PER_EVENT;
            true
        } else {
            false
        }
    }
}

/// The key a client is counted under: an IPv4 address as its IPv4-mapped
/// IPv6 form, an IPv6 address cut to `ipv6_prefix_len` bits.
pub fn client_key(ip: IpAddr, ipv6_prefix_len: u8) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(v4.to_ipv6_mapped()),
            None => {
                let bits = u128::from(v6);
                let len = ipv6_prefix_len.min(128) as u32;
                if len == 0 {
                    0
                } else {
                    bits & (u128::MAX << (128 - len))
                }
            }
        },
    }
}

/// What one client has done lately.
#[derive(Debug)]
struct Entry {
    sessions: u32,
    connections: TokenBucket,
    messages: TokenBucket,
    recipients: TokenBucket,
    last_seen_ms: u64,
}

struct Part {
    clients: HashMap<u128, Entry>,
}

/// The limits of `[policy]` that the table enforces (0 = no limit).
#[derive(Clone, Debug)]
struct Params {
    max_sessions: u32,
    connections_per_minute: u32,
    messages_per_minute: u32,
    recipients_per_minute: u32,
    exempt: Vec<Cidr>,
}

impl Params {
    fn of(config: &Config) -> Params {
        let policy = &config.policy;
        let mut exempt = config.relay.networks.clone();
        exempt.extend(policy.exempt_networks.iter().cloned());
        // A replicating peer's sessions are this pair's own traffic.
        exempt.extend(config.replicate.accept_from.iter().cloned());
        Params {
            max_sessions: policy.max_sessions_per_client,
            connections_per_minute: policy.max_connections_per_minute,
            messages_per_minute: policy.max_messages_per_minute,
            recipients_per_minute: policy.max_recipients_per_minute,
            exempt,
        }
    }
}

/// Why a client was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    Sessions,
    Connections,
    Messages,
    Recipients,
}

impl Refusal {
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Sessions => "max_sessions_per_client",
            Refusal::Connections => "max_connections_per_minute",
            Refusal::Messages => "max_messages_per_minute",
            Refusal::Recipients => "max_recipients_per_minute",
        }
    }

    /// The reply: 421 at connect, 451 at MAIL and RCPT.
    pub fn reply(self, ip: IpAddr) -> Reply {
        match self {
            Refusal::Sessions => {
                Reply::new(421, Enhanced(4, 7, 0), format!("Too many connections from [{ip}], try again later"))
            }
            Refusal::Connections => {
                Reply::new(421, Enhanced(4, 7, 0), format!("Too many connections from [{ip}], slow down"))
            }
            Refusal::Messages | Refusal::Recipients => {
                Reply::new(451, Enhanced(4, 7, 0), format!("Too much mail from [{ip}], slow down"))
            }
        }
    }
}

/// The process-wide per-client table.
pub struct Limits {
    /// The limits, replaced by a reload ([`Limits::reconfigure`]).
    params: RwLock<Arc<Params>>,
    /// How clients are keyed and how many are kept: the table's shape,
    /// set at start.
    ipv6_prefix_len: u8,
    entries_per_part: usize,
    parts: Box<[Mutex<Part>]>,
}

/// One open session of a counted client; dropping it ends the session in
/// the table.
pub struct SessionGuard {
    limits: Arc<Limits>,
    key: u128,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.limits.session_ended(self.key, now_ms());
    }
}

/// Milliseconds on a monotonic clock since the first call.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl Limits {
    pub fn new(config: &Config) -> Limits {
        let parts = (0..PARTS).map(|_| Mutex::new(Part { clients: HashMap::new() })).collect();
        Limits {
            params: RwLock::new(Arc::new(Params::of(config))),
            ipv6_prefix_len: config.policy.ipv6_prefix_len,
            entries_per_part: config.policy.client_table_entries.div_ceil(PARTS).max(1),
            parts,
        }
    }

    /// A reload's limits and exempt networks, for the clients' next steps
    /// (`policy.ipv6_prefix_len` and `policy.client_table_entries` keep
    /// their values from the start).
    pub fn reconfigure(&self, config: &Config) {
        *self.params.write().expect("limits lock") = Arc::new(Params::of(config));
    }

    fn params(&self) -> Arc<Params> {
        self.params.read().expect("limits lock").clone()
    }

    /// Whether any limit is set at all.
    fn limits_anything(p: &Params) -> bool {
        p.max_sessions > 0 || p.connections_per_minute > 0 || p.messages_per_minute > 0 || p.recipients_per_minute > 0
    }

    pub fn is_exempt(&self, ip: IpAddr) -> bool {
        self.params().exempt.iter().any(|net| net.contains(ip))
    }

    fn part(&self, key: u128) -> &Mutex<Part> {
        // The low bits of an IPv6 /64 key are zero: fold the halves.
        let folded = (key as u64) ^ ((key >> 64) as u64);
        let mixed = folded.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        &self.parts[mixed as usize % PARTS]
    }

    /// Clients tracked now (all parts).
    pub fn entries(&self) -> usize {
        self.parts.iter().map(|part| part.lock().expect("limits lock").clients.len()).sum()
    }

    /// Runs `f` on the client's entry, created (and room made) if needed.
    fn with_entry<T>(&self, p: &Params, key: u128, now_ms: u64, f: impl FnOnce(&mut Entry) -> T) -> T {
        let mut part = self.part(key).lock().expect("limits lock");
        if !part.clients.contains_key(&key) && part.clients.len() >= self.entries_per_part {
            evict(&mut part.clients, now_ms);
        }
        let entry = part.clients.entry(key).or_insert_with(|| Entry {
            sessions: 0,
            connections: TokenBucket::full(p.connections_per_minute, now_ms),
            messages: TokenBucket::full(p.messages_per_minute, now_ms),
            recipients: TokenBucket::full(p.recipients_per_minute, now_ms),
            last_seen_ms: now_ms,
        });
        entry.last_seen_ms = now_ms;
        f(entry)
    }

    /// A new connection from `ip`: the session's guard (None for an exempt
    /// client, or with no limit set), or why it is refused.
    pub fn connect(self: &Arc<Self>, ip: IpAddr, now_ms: u64) -> Result<Option<SessionGuard>, Refusal> {
        let p = self.params();
        if !Self::limits_anything(&p) || p.exempt.iter().any(|net| net.contains(ip)) {
            return Ok(None);
        }
        let key = client_key(ip, self.ipv6_prefix_len);
        self.with_entry(&p, key, now_ms, |entry| {
            if p.max_sessions > 0 && entry.sessions >= p.max_sessions {
                return Err(Refusal::Sessions);
            }
            if p.connections_per_minute > 0 && !entry.connections.take(p.connections_per_minute, now_ms) {
                return Err(Refusal::Connections);
            }
            entry.sessions += 1;
            Ok(())
        })?;
        Ok(Some(SessionGuard { limits: self.clone(), key }))
    }

    fn session_ended(&self, key: u128, now_ms: u64) {
        let mut part = self.part(key).lock().expect("limits lock");
        if let Some(entry) = part.clients.get_mut(&key) {
            entry.sessions = entry.sessions.saturating_sub(1);
            entry.last_seen_ms = now_ms;
        }
    }

    /// One message (an accepted MAIL) from `ip`: Err when over its rate.
    pub fn take_message(&self, ip: IpAddr, now_ms: u64) -> Result<(), Refusal> {
        let p = self.params();
        self.take(&p, ip, now_ms, p.messages_per_minute, Refusal::Messages, |entry| &mut entry.messages)
    }

    /// One recipient from `ip`: Err when over its rate.
    pub fn take_recipient(&self, ip: IpAddr, now_ms: u64) -> Result<(), Refusal> {
        let p = self.params();
        self.take(&p, ip, now_ms, p.recipients_per_minute, Refusal::Recipients, |entry| &mut entry.recipients)
    }

    fn take(
        &self,
        p: &Params,
        ip: IpAddr,
        now_ms: u64,
        per_minute: u32,
        refusal: Refusal,
        bucket: impl FnOnce(&mut Entry) -> &mut TokenBucket,
    ) -> Result<(), Refusal> {
        if per_minute == 0 || p.exempt.iter().any(|net| net.contains(ip)) {
            return Ok(());
        }
        let key = client_key(ip, self.ipv6_prefix_len);
        match self.with_entry(p, key, now_ms, |entry| bucket(entry).take(per_minute, now_ms)) {
            true => Ok(()),
            false => Err(refusal),
        }
    }

    /// Open sessions counted for `ip` (tests, diagnostics).
    pub fn sessions_of(&self, ip: IpAddr) -> u32 {
        let key = client_key(ip, self.ipv6_prefix_len);
        let part = self.part(key).lock().expect("limits lock");
        part.clients.get(&key).map_or(0, |entry| entry.sessions)
    }
}

/// Makes room in a full part: first every client with no open session idle
/// for [`IDLE_MS`], else the longest idle client with no open session.
/// Clients with open sessions stay (they are bounded by the sessions a
/// shard accepts), so a part can exceed its share by those.
fn evict(clients: &mut HashMap<u128, Entry>, now_ms: u64) {
    let before = clients.len();
    clients.retain(|_, entry| entry.sessions > 0 || now_ms.saturating_sub(entry.last_seen_ms) < IDLE_MS);
    if clients.len() < before {
        return;
    }
    let oldest = clients
        .iter()
        .filter(|(_, entry)| entry.sessions == 0)
        .min_by_key(|(_, entry)| entry.last_seen_ms)
        .map(|(key, _)| *key);
    if let Some(key) = oldest {
        clients.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(extra: &str) -> Arc<Limits> {
        let text = format!("[policy]\n{extra}\n");
        let config = crate::config::load_str(std::path::Path::new("t.toml"), &text, &[]).expect("config");
        Arc::new(Limits::new(&config))
    }

    #[test]
    fn bucket_allows_its_minute_then_refills_evenly() {
        let mut bucket = TokenBucket::full(6, 0);
        for _ in 0..6 {
            assert!(bucket.take(6, 0));
        }
        assert!(!bucket.take(6, 0));
        // One event every 10 s.
        assert!(!bucket.take(6, 9_999));
        assert!(bucket.take(6, 10_000));
        assert!(!bucket.take(6, 10_001));
        // A long pause refills to the capacity, not beyond.
        let mut later = 0;
        while bucket.take(6, 1_000_000) {
            later += 1;
        }
        assert_eq!(later, 6);
    }

    #[test]
    fn ipv6_clients_count_per_prefix() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a, 64), client_key(b, 64));
        assert_ne!(client_key(a, 64), client_key(c, 64));
        assert_ne!(client_key(a, 128), client_key(b, 128));
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(client_key(v4, 64), client_key(mapped, 64));
        assert_ne!(client_key(v4, 64), client_key("192.0.2.2".parse().unwrap(), 64));
    }

    #[test]
    fn sessions_are_limited_and_given_back_by_the_guard() {
        let limits = limits("max_sessions_per_client = 3");
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let guards: Vec<_> = (0..3).map(|_| limits.connect(ip, 0).unwrap().unwrap()).collect();
        assert_eq!(limits.connect(ip, 0).err(), Some(Refusal::Sessions));
        assert!(limits.connect("192.0.2.8".parse().unwrap(), 0).is_ok(), "another client");
        drop(guards);
        assert_eq!(limits.sessions_of(ip), 0);
        assert!(limits.connect(ip, 0).is_ok());
    }

    #[test]
    fn exempt_and_relay_networks_are_not_limited() {
        let limits =
            limits("max_sessions_per_client = 1\nmax_messages_per_minute = 1\nexempt_networks = [\"198.51.100.0/24\"]");
        let exempt: IpAddr = "198.51.100.5".parse().unwrap();
        let relay: IpAddr = "127.0.0.1".parse().unwrap(); // relay.networks default
        for ip in [exempt, relay] {
            let _a = limits.connect(ip, 0).unwrap();
            let _b = limits.connect(ip, 0).unwrap();
            assert!(limits.take_message(ip, 0).is_ok());
            assert!(limits.take_message(ip, 0).is_ok());
        }
        assert_eq!(limits.entries(), 0);
    }

    #[test]
    fn message_recipient_and_connection_rates() {
        let limits = limits(
            "max_sessions_per_client = 0\nmax_connections_per_minute = 2\nmax_messages_per_minute = 2\nmax_recipients_per_minute = 3",
        );
        let ip: IpAddr = "203.0.113.1".parse().unwrap();
        assert!(limits.connect(ip, 0).is_ok());
        assert!(limits.connect(ip, 0).is_ok());
        assert_eq!(limits.connect(ip, 0).err(), Some(Refusal::Connections));
        assert!(limits.take_message(ip, 0).is_ok());
        assert!(limits.take_message(ip, 0).is_ok());
        assert_eq!(limits.take_message(ip, 0), Err(Refusal::Messages));
        assert_eq!(limits.take_message(ip, 30_000), Ok(()));
        for _ in 0..3 {
            assert!(limits.take_recipient(ip, 0).is_ok());
        }
        assert_eq!(limits.take_recipient(ip, 0), Err(Refusal::Recipients));
        assert_eq!(Refusal::Recipients.reply(ip).summary(), "451 4.7.0 Too much mail from [203.0.113.1], slow down");
    }

    #[test]
    fn the_table_is_bounded_and_keeps_clients_with_sessions() {
        let limits = limits(&format!("client_table_entries = {PARTS}\nmax_messages_per_minute = 10"));
        let held: IpAddr = "10.0.0.1".parse().unwrap();
        let _guard = limits.connect(held, 0).unwrap().unwrap();
        for i in 0..10_000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            limits.take_message(ip, i as u64).unwrap();
        }
        assert!(limits.entries() <= PARTS + 1, "{} entries", limits.entries());
        assert_eq!(limits.sessions_of(held), 1);
    }
}
