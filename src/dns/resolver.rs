//! A shard's stub resolver on glommio: answers from the cache, or drives an
//! `Exchange` over the shard's own sockets. Many queries are in flight at
//! once on a small pool of UDP sockets per address family, each bound to a
//! port the kernel picks at random (Linux randomises UDP port 0 binds) and
//! replaced by a fresh one after `socket_queries_max` queries, so the source
//! port keeps changing (RFC 5452 §9.2). One receive task per socket hands
//! each datagram to the query waiting for its (socket, id); the exchange
//! then checks source address, id and question. Truncated answers are asked
//! again over TCP (a connection per query, RFC 7766 §5). A question
//! already on the wire is not asked twice: later lookups wait for its answer.
//!
//! Place in the pipeline: one per shard, used by `mx::route()` for
//! delivery; nothing crosses shards. Servers and options come from
//! /etc/resolv.conf (`ResolverParams::from_resolv_conf`) unless the
//! configuration names them.
//!
//! Bounds: `queries_in_flight_max` exchanges at once (beyond it a lookup
//! fails at once with `QueriesInFlightExceeded`, a temporary error);
//! `udp_sockets_per_family` pooled sockets plus retired ones that still
//! wait for answers (at most one per query in flight); `DATAGRAMS_QUEUED_MAX`
//! datagrams queued per query; `cache_entries_max` cached answers; a UDP
//! response of `UDP_RECEIVE_BYTES_MAX`, a TCP one of 65,535 bytes.

use std::cell::{Cell, RefCell};
use std::cmp::min;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::{TcpStream, UdpSocket};
use glommio::Task;

use super::cache::Cache;
use super::exchange::{Exchange, Resolved, Step, Transmission, Transport};
use super::query::{self, Question};
use super::random::Random;
use super::{Lookup, RecordKind, ResolveError, CNAME_CHAIN_LENGTH_MAX, SERVER_COUNT_MAX, TTL_MAX_S};

/// Largest UDP response read; we advertise 1232 bytes with EDNS, a larger
/// datagram is cut here and then fails to decode (and is ignored).
pub const UDP_RECEIVE_BYTES_MAX: usize = 4096;
/// Datagrams queued for one query before more are dropped (a flood of
/// spoofed answers cannot grow memory).
pub const DATAGRAMS_QUEUED_MAX: usize = 4;
/// Fresh ids tried when the chosen one is already waiting on the socket.
const ID_REROLL_COUNT_MAX: usize = 8;
/// resolv.conf(5): "Up to MAXNS (currently 3) name servers may be listed".
const RESOLV_CONF_SERVER_COUNT_MAX: usize = 3;

/// The resolver's settings. `Default` is what an empty resolv.conf means:
/// the name server on this host, a 5 s timeout, 2 attempts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolverParams {
    /// Recursive name servers, tried in order. At most `SERVER_COUNT_MAX`.
    pub servers: Vec<SocketAddr>,
    /// How long to wait for each transmission (UDP, or TCP connect+answer).
    pub timeout: Duration,
    /// Rounds over the servers.
    pub attempts: u32,
    /// Start each question at a random server (resolv.conf `rotate`).
    pub rotate: bool,
    /// UDP sockets pooled per address family.
    pub udp_sockets_per_family: usize,
    /// Queries one UDP socket carries before it is replaced by a socket on
    /// a new random port.
    pub socket_queries_max: u32,
    /// Exchanges (questions not answered from the cache) at once.
    pub queries_in_flight_max: usize,
    pub cache_entries_max: usize,
}

impl Default for ResolverParams {
    fn default() -> ResolverParams {
        ResolverParams {
            servers: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 53))],
            timeout: Duration::from_secs(5),
            attempts: 2,
            rotate: false,
            udp_sockets_per_family: 4,
            socket_queries_max: 256,
            queries_in_flight_max: 256,
            cache_entries_max: 10_000,
        }
    }
}

impl ResolverParams {
    /// Reads resolv.conf(5) text: `nameserver` lines (the first three, port
    /// 53, IPv6 with an optional `%scope`) and `options timeout:n`
    /// (capped at 30), `attempts:n` (capped at 5) and `rotate`, as glibc
    /// does. Malformed lines are skipped, as glibc does. `search`, `domain`
    /// and `ndots` do not apply: mail domains are fully qualified
    /// (RFC 5321 §2.3.5). Without a nameserver line, the local host.
    pub fn from_resolv_conf(text: &str) -> ResolverParams {
        let mut params = ResolverParams { servers: Vec::new(), ..ResolverParams::default() };
        for line in text.lines() {
            let mut words = line.split_ascii_whitespace();
            match words.next() {
                Some("nameserver") => {
                    let server = words.next().and_then(parse_nameserver);
                    if let Some(server) = server {
                        if params.servers.len() < RESOLV_CONF_SERVER_COUNT_MAX {
                            params.servers.push(server);
                        }
                    }
                }
                Some("options") => {
                    for option in words {
                        params.apply_option(option);
                    }
                }
                _ => {}
            }
        }
        if params.servers.is_empty() {
            params.servers = ResolverParams::default().servers;
        }
        params
    }

    /// `from_resolv_conf` on /etc/resolv.conf; a missing file means the
    /// defaults.
    pub fn from_system() -> io::Result<ResolverParams> {
        match std::fs::read_to_string("/etc/resolv.conf") {
            Ok(text) => Ok(ResolverParams::from_resolv_conf(&text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(ResolverParams::default()),
            Err(e) => Err(e),
        }
    }

    fn apply_option(&mut self, option: &str) {
        let (key, value) = match option.split_once(':') {
            Some((key, value)) => (key, value.parse::<u32>().ok()),
            None => (option, None),
        };
        match (key, value) {
            ("timeout", Some(n)) => self.timeout = Duration::from_secs(u64::from(n.clamp(1, 30))),
            ("attempts", Some(n)) => self.attempts = n.clamp(1, 5),
            ("rotate", None) => self.rotate = true,
            _ => {}
        }
    }

    /// Checks every bound; `Resolver::new` refuses parameters that fail.
    pub fn validate(&self) -> Result<(), String> {
        if self.servers.is_empty() || self.servers.len() > SERVER_COUNT_MAX {
            return Err(format!("dns: 1 to {SERVER_COUNT_MAX} servers, not {}", self.servers.len()));
        }
        if self.timeout.is_zero() || self.attempts == 0 {
            return Err("dns: timeout and attempts must be positive".to_string());
        }
        if self.udp_sockets_per_family == 0 || self.socket_queries_max == 0 {
            return Err("dns: the UDP pool needs sockets that carry queries".to_string());
        }
        if self.queries_in_flight_max == 0 || self.cache_entries_max == 0 {
            return Err("dns: queries in flight and cache entries must be positive".to_string());
        }
        Ok(())
    }
}

/// `1.2.3.4`, `2001:db8::1` or `fe80::1%eth0`, port 53.
fn parse_nameserver(text: &str) -> Option<SocketAddr> {
    let (address, scope) = match text.split_once('%') {
        Some((address, scope)) => (address, Some(scope)),
        None => (text, None),
    };
    match (address.parse::<IpAddr>().ok()?, scope) {
        (IpAddr::V4(v4), None) => Some(SocketAddr::from((v4, 53))),
        (IpAddr::V6(v6), None) => Some(SocketAddr::from((v6, 53))),
        (IpAddr::V6(v6), Some(scope)) => Some(SocketAddr::V6(SocketAddrV6::new(v6, 53, 0, scope_id(scope)?))),
        (IpAddr::V4(_), Some(_)) => None,
    }
}

fn scope_id(scope: &str) -> Option<u32> {
    if let Ok(index) = scope.parse::<u32>() {
        return Some(index);
    }
    let name = std::ffi::CString::new(scope).ok()?;
    // SAFETY: `name` is a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Counters of one resolver, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResolverStats {
    pub lookups: u64,
    pub cache_hits: u64,
    /// Lookups that waited for the same question already on the wire.
    pub lookups_coalesced: u64,
    pub udp_queries_sent: u64,
    pub tcp_queries_sent: u64,
    pub timeouts: u64,
    /// Datagrams for no waiting query, or that did not match it.
    pub datagrams_ignored: u64,
    pub datagrams_dropped_queue_full: u64,
    pub sockets_opened: u64,
    pub receive_errors: u64,
    pub queries_refused_in_flight: u64,
}

type Datagram = (SocketAddr, Vec<u8>);
/// The query waiting on each (socket, id).
type Waiters = HashMap<(u64, u16), LocalSender<Datagram>>;

/// A shard's resolver. Use it from one executor; a socket's receive task
/// runs in the task queue of the lookup that opened the socket, and ends
/// when the socket is retired and idle, or when the resolver is dropped.
pub struct Resolver {
    params: ResolverParams,
    cache: RefCell<Cache>,
    random: RefCell<Random>,
    pool: Rc<RefCell<UdpPool>>,
    stats: Rc<RefCell<ResolverStats>>,
    in_flight_count: Cell<usize>,
    /// Questions on the wire now; a second lookup of one waits for the
    /// first one's answer instead of asking again. At most one entry per
    /// exchange in flight.
    shared: RefCell<HashMap<Question, Rc<SharedExchange>>>,
}

/// The result of an exchange, for the lookups that wait on it.
#[derive(Default)]
struct SharedExchange {
    /// The answer and whether it was authenticated data.
    result: RefCell<Option<Result<(Resolved, bool), ResolveError>>>,
    done: event_listener::Event,
}

impl Resolver {
    pub fn new(params: ResolverParams) -> Result<Resolver, String> {
        params.validate()?;
        let stats = Rc::new(RefCell::new(ResolverStats::default()));
        let pool = UdpPool::new(&params, stats.clone());
        Ok(Resolver {
            cache: RefCell::new(Cache::new(params.cache_entries_max)),
            random: RefCell::new(Random::from_os()),
            pool: Rc::new(RefCell::new(pool)),
            stats,
            in_flight_count: Cell::new(0),
            shared: RefCell::new(HashMap::new()),
            params,
        })
    }

    pub fn params(&self) -> &ResolverParams {
        &self.params
    }

    pub fn stats(&self) -> ResolverStats {
        *self.stats.borrow()
    }

    pub fn cache_len(&self) -> usize {
        self.cache.borrow().len()
    }

    /// Exchanges in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight_count.get()
    }

    /// UDP sockets open now: the pool's, and retired ones still awaited.
    pub fn udp_socket_count(&self) -> usize {
        self.pool.borrow().open.len()
    }

    /// The resolver's random source, for choices that go with its answers
    /// (the order of equal MX hosts). Never hold it across an await.
    pub(crate) fn random(&self) -> std::cell::RefMut<'_, Random> {
        self.random.borrow_mut()
    }

    /// The records of `kind` for `domain`, or a definitive negative answer.
    pub async fn lookup(&self, domain: &str, kind: RecordKind) -> Result<Lookup, ResolveError> {
        let question = Question::new(domain, kind)?;
        self.lookup_question(&question).await
    }

    /// As `lookup`, for a parsed question. CNAME chains a server leaves
    /// unfinished are followed with new questions, `CNAME_CHAIN_LENGTH_MAX`
    /// CNAMEs in all.
    pub async fn lookup_question(&self, question: &Question) -> Result<Lookup, ResolveError> {
        Ok(self.resolve(question).await?.0)
    }

    /// The answer to `question` and whether it is authenticated data (only
    /// ever for a secure question), from the cache or the servers, CNAME
    /// chains followed.
    async fn resolve(&self, question: &Question) -> Result<(Lookup, bool), ResolveError> {
        self.stats.borrow_mut().lookups += 1;
        crate::metrics::DNS_LOOKUPS.inc();
        let mut current = question.clone();
        let mut hops_total = 0;
        let mut chain_ttl_s = TTL_MAX_S;
        let mut chain_authentic = true;
        loop {
            let cached = self.cache.borrow_mut().get_authentic(&current, Instant::now());
            let (resolved, authentic) = match cached {
                Some((lookup, authentic)) => {
                    self.stats.borrow_mut().cache_hits += 1;
                    crate::metrics::DNS_CACHE_HITS.inc();
                    (Resolved::Answer(lookup), authentic)
                }
                None => {
                    let started = Instant::now();
                    let resolved = self.exchange_shared(&current).await;
                    crate::metrics::DNS_QUERY_LATENCY.since(started);
                    crate::metrics::DNS_QUERIES.inc(usize::from(resolved.is_err()));
                    resolved?
                }
            };
            chain_authentic &= authentic;
            match resolved {
                Resolved::Answer(lookup) if hops_total == 0 => return Ok((lookup, authentic)),
                Resolved::Answer(lookup) => {
                    // The chain's answer is also the original question's.
                    let ttl_s = min(chain_ttl_s, lookup.ttl_s());
                    let lookup = lookup.with_ttl_s(ttl_s);
                    self.cache.borrow_mut().insert_authentic(
                        question.clone(),
                        lookup.clone(),
                        chain_authentic,
                        Instant::now(),
                    );
                    return Ok((lookup, chain_authentic));
                }
                Resolved::Chase { target, hops, ttl_s } => {
                    assert!(hops > 0, "a chase follows at least one CNAME");
                    hops_total += hops;
                    if hops_total > CNAME_CHAIN_LENGTH_MAX {
                        return Err(ResolveError::CnameChainTooLong {
                            name: question.name_text(),
                            limit: CNAME_CHAIN_LENGTH_MAX,
                        });
                    }
                    chain_ttl_s = min(chain_ttl_s, ttl_s);
                    // A chase's question is built plain: a secure chain
                    // asks each of its parts securely.
                    current = if question.secure { target.into_secure() } else { target };
                }
            }
        }
    }

    /// The records of `kind` for `domain` asked with the AD bit, and whether
    /// the answer is authenticated data (RFC 4035 §3.2.3): what DANE
    /// decides by. A CNAME chain the server leaves unfinished is followed,
    /// authentic only if every part is. Whether the server's AD bit is
    /// believed at all is the caller's decision (`dns.dnssec_trusted`).
    pub async fn lookup_secure(&self, domain: &str, kind: RecordKind) -> Result<(Lookup, bool), ResolveError> {
        let question = Question::secure(domain, kind)?;
        self.resolve(&question).await
    }

    /// The answer of the exchange for `question` already in flight, or of a
    /// new one that later lookups of the same question share.
    async fn exchange_shared(&self, question: &Question) -> Result<(Resolved, bool), ResolveError> {
        let existing = self.shared.borrow().get(question).cloned();
        if let Some(shared) = existing {
            self.stats.borrow_mut().lookups_coalesced += 1;
            loop {
                let listener = shared.done.listen();
                if let Some(result) = shared.result.borrow().clone() {
                    return result;
                }
                listener.await;
            }
        }
        let shared = Rc::new(SharedExchange::default());
        self.shared.borrow_mut().insert(question.clone(), shared.clone());
        let leader = SharedLeader { resolver: self, question, shared };
        let result = self.exchange(question).await;
        *leader.shared.result.borrow_mut() = Some(result.clone());
        result
    }

    /// One question on the wire, with the cache filled from its answer;
    /// with whether the answer was authenticated data.
    async fn exchange(&self, question: &Question) -> Result<(Resolved, bool), ResolveError> {
        let _in_flight = self.enter()?;
        let mut exchange = Exchange::new(question.clone(), &self.params, &mut self.random.borrow_mut());
        let mut step = exchange.start(&mut self.random.borrow_mut(), Instant::now());
        loop {
            step = match step {
                Step::Done(result) => {
                    let authentic = exchange.authentic;
                    if let Ok(Resolved::Answer(lookup)) = &result {
                        self.cache.borrow_mut().insert_authentic(
                            question.clone(),
                            lookup.clone(),
                            authentic,
                            Instant::now(),
                        );
                    }
                    return result.map(|resolved| (resolved, authentic));
                }
                Step::Send(t) if t.transport == Transport::Udp => self.send_udp(&mut exchange, t).await,
                Step::Send(t) => self.send_tcp(&mut exchange, t).await,
            };
        }
    }

    fn enter(&self) -> Result<InFlight<'_>, ResolveError> {
        let count = self.in_flight_count.get();
        if count == self.params.queries_in_flight_max {
            self.stats.borrow_mut().queries_refused_in_flight += 1;
            return Err(ResolveError::QueriesInFlightExceeded { limit: self.params.queries_in_flight_max });
        }
        assert!(count < self.params.queries_in_flight_max);
        self.in_flight_count.set(count + 1);
        Ok(InFlight { count: &self.in_flight_count })
    }

    async fn send_udp(&self, exchange: &mut Exchange, mut t: Transmission) -> Step {
        let mut rerolls = 0;
        let registration = loop {
            let registered = UdpPool::register(&self.pool, t.server, t.id, &mut self.random.borrow_mut());
            match registered {
                Ok(registration) => break registration,
                Err(RegisterError::IdInUse) if rerolls < ID_REROLL_COUNT_MAX => {
                    rerolls += 1;
                    t = exchange.reroll_id(&mut self.random.borrow_mut());
                }
                Err(error) => {
                    let error = format!("{error}");
                    return exchange.on_transport_error(error, &mut self.random.borrow_mut(), Instant::now());
                }
            }
        };
        self.stats.borrow_mut().udp_queries_sent += 1;
        if let Err(e) = registration.socket.send_to(&t.query, t.server).await {
            let error = format!("send to {}: {e}", t.server);
            return exchange.on_transport_error(error, &mut self.random.borrow_mut(), Instant::now());
        }
        loop {
            let wait = t.deadline.saturating_duration_since(Instant::now());
            let received = futures_lite::future::or(registration.receiver.recv(), async {
                glommio::timer::sleep(wait).await;
                None
            })
            .await;
            let now = Instant::now();
            let Some((from, bytes)) = received else {
                self.stats.borrow_mut().timeouts += 1;
                return exchange.on_timeout(&mut self.random.borrow_mut(), now);
            };
            if let Some(step) = exchange.on_udp_response(from, &bytes, &mut self.random.borrow_mut(), now) {
                return step;
            }
            self.stats.borrow_mut().datagrams_ignored += 1;
        }
    }

    async fn send_tcp(&self, exchange: &mut Exchange, t: Transmission) -> Step {
        self.stats.borrow_mut().tcp_queries_sent += 1;
        let wait = t.deadline.saturating_duration_since(Instant::now());
        let attempt = async { Some(tcp_exchange(t.server, &t.query, wait).await) };
        let timer = async {
            glommio::timer::sleep(wait).await;
            None
        };
        let result = futures_lite::future::or(attempt, timer).await;
        let now = Instant::now();
        let mut random = self.random.borrow_mut();
        match result {
            None => {
                self.stats.borrow_mut().timeouts += 1;
                exchange.on_timeout(&mut random, now)
            }
            Some(Err(error)) => exchange.on_transport_error(format!("TCP to {}: {error}", t.server), &mut random, now),
            Some(Ok(bytes)) => exchange.on_tcp_response(&bytes, &mut random, now),
        }
    }
}

/// The lookup that runs a shared exchange. When it ends, normally or by
/// its future being dropped, the exchange is unlisted and its waiters are
/// woken; if it had no result yet, they get a temporary error.
struct SharedLeader<'a> {
    resolver: &'a Resolver,
    question: &'a Question,
    shared: Rc<SharedExchange>,
}

impl Drop for SharedLeader<'_> {
    fn drop(&mut self) {
        let removed = self.resolver.shared.borrow_mut().remove(self.question);
        debug_assert!(removed.is_some_and(|r| Rc::ptr_eq(&r, &self.shared)));
        let mut result = self.shared.result.borrow_mut();
        if result.is_none() {
            *result = Some(Err(ResolveError::Io("the shared lookup was abandoned".to_string())));
        }
        drop(result);
        self.shared.done.notify(usize::MAX);
    }
}

/// One exchange counted in flight; uncounted when dropped (also when the
/// lookup's future is dropped midway).
struct InFlight<'a> {
    count: &'a Cell<usize>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let count = self.count.get();
        assert!(count > 0, "in-flight count balanced");
        self.count.set(count - 1);
    }
}

/// One query over TCP: the length-prefixed query out, the length-prefixed
/// response back (RFC 1035 §4.2.2), then the connection is closed.
async fn tcp_exchange(server: SocketAddr, query: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    if timeout.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "no time left"));
    }
    let mut stream = TcpStream::connect_timeout(server, timeout)
        .await
        .map_err(|e| io::Error::other(e.to_string()))?;
    let length = u16::try_from(query.len()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "query too long"))?;
    let mut framed = Vec::with_capacity(2 + query.len());
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let mut prefix = [0u8; 2];
    stream.read_exact(&mut prefix).await?;
    let response_bytes = usize::from(u16::from_be_bytes(prefix));
    if response_bytes < query::HEADER_BYTES {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "response shorter than a header"));
    }
    let mut response = vec![0u8; response_bytes];
    stream.read_exact(&mut response).await?;
    Ok(response)
}

#[derive(Debug, thiserror::Error)]
enum RegisterError {
    #[error("id already waiting on this socket")]
    IdInUse,
    #[error("cannot open a UDP socket: {0}")]
    Open(io::Error),
}

/// A UDP socket of the pool.
struct OpenSocket {
    socket: Rc<UdpSocket>,
    queries_count: u32,
    /// Registrations (queries waiting) on this socket.
    pending_count: usize,
    /// Out of the pool; closed when its last query is done.
    retired: bool,
    /// The receive loop; dropping it cancels the task and closes the socket.
    _receiver: Task<()>,
}

/// The UDP sockets of one resolver: `udp_sockets_per_family` slots per
/// family, each holding the id of an open socket.
struct UdpPool {
    socket_queries_max: u32,
    slots_ipv4: Vec<Option<u64>>,
    slots_ipv6: Vec<Option<u64>>,
    open: HashMap<u64, OpenSocket>,
    socket_id_next: u64,
    waiters: Rc<RefCell<Waiters>>,
    stats: Rc<RefCell<ResolverStats>>,
}

/// A query waiting on a socket; deregisters itself when dropped.
struct Registration {
    pool: Rc<RefCell<UdpPool>>,
    key: (u64, u16),
    socket: Rc<UdpSocket>,
    receiver: LocalReceiver<Datagram>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let closed = self.pool.borrow_mut().deregister(self.key);
        // The receive task is cancelled outside the pool's borrow.
        drop(closed);
    }
}

impl UdpPool {
    fn new(params: &ResolverParams, stats: Rc<RefCell<ResolverStats>>) -> UdpPool {
        UdpPool {
            socket_queries_max: params.socket_queries_max,
            slots_ipv4: vec![None; params.udp_sockets_per_family],
            slots_ipv6: vec![None; params.udp_sockets_per_family],
            open: HashMap::new(),
            socket_id_next: 0,
            waiters: Rc::new(RefCell::new(HashMap::new())),
            stats,
        }
    }

    /// Registers query `id` to `server` on a random socket of the server's
    /// family, opening or replacing that socket as needed.
    fn register(pool_rc: &Rc<RefCell<UdpPool>>, server: SocketAddr, id: u16, random: &mut Random) -> Result<Registration, RegisterError> {
        let mut retired = None;
        let mut pool = pool_rc.borrow_mut();
        let ipv4 = server.is_ipv4();
        let slot_index = random.below(pool.slots(ipv4).len());
        let slot = pool.slots(ipv4)[slot_index];
        let socket_id = match slot {
            Some(socket_id) if pool.open[&socket_id].queries_count < pool.socket_queries_max => socket_id,
            _ => {
                if let Some(old) = slot {
                    pool.slots(ipv4)[slot_index] = None;
                    retired = pool.retire(old);
                }
                let socket_id = pool.open_socket(ipv4).map_err(RegisterError::Open)?;
                pool.slots(ipv4)[slot_index] = Some(socket_id);
                socket_id
            }
        };
        let key = (socket_id, id);
        if pool.waiters.borrow().contains_key(&key) {
            return Err(RegisterError::IdInUse);
        }
        let (sender, receiver) = local_channel::new_bounded(DATAGRAMS_QUEUED_MAX);
        pool.waiters.borrow_mut().insert(key, sender);
        let open = pool.open.get_mut(&socket_id).expect("slots name open sockets");
        assert!(!open.retired, "slots name sockets in the pool");
        open.queries_count += 1;
        open.pending_count += 1;
        let socket = open.socket.clone();
        drop(pool);
        // A retired socket's receive task is cancelled outside the borrow.
        drop(retired);
        Ok(Registration { pool: pool_rc.clone(), key, socket, receiver })
    }

    fn slots(&mut self, ipv4: bool) -> &mut Vec<Option<u64>> {
        if ipv4 {
            &mut self.slots_ipv4
        } else {
            &mut self.slots_ipv6
        }
    }

    /// Takes a socket out of its slot; returns it when nothing waits on it,
    /// for the caller to drop (and so close) outside the pool's borrow.
    fn retire(&mut self, socket_id: u64) -> Option<OpenSocket> {
        let open = self.open.get_mut(&socket_id).expect("slots name open sockets");
        open.retired = true;
        if open.pending_count == 0 {
            return self.open.remove(&socket_id);
        }
        None
    }

    fn deregister(&mut self, key: (u64, u16)) -> Option<OpenSocket> {
        let removed = self.waiters.borrow_mut().remove(&key);
        assert!(removed.is_some(), "a registration is deregistered once");
        let open = self.open.get_mut(&key.0).expect("a registered socket is open");
        assert!(open.pending_count > 0);
        open.pending_count -= 1;
        if open.retired && open.pending_count == 0 {
            return self.open.remove(&key.0);
        }
        None
    }

    /// Binds a new socket to port 0 of the family's wildcard address (the
    /// kernel picks a random free port) and starts its receive task.
    fn open_socket(&mut self, ipv4: bool) -> io::Result<u64> {
        let (domain, local) = if ipv4 {
            (socket2::Domain::IPV4, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
        } else {
            (socket2::Domain::IPV6, SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)))
        };
        let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
        if !ipv4 {
            // Answers from IPv4 servers never arrive as mapped addresses.
            socket.set_only_v6(true)?;
        }
        socket.bind(&local.into())?;
        // SAFETY: the descriptor is a bound UDP socket that `into_raw_fd`
        // gave up; glommio's socket now owns it alone.
        let socket = Rc::new(unsafe { UdpSocket::from_raw_fd(socket.into_raw_fd()) });
        let socket_id = self.socket_id_next;
        self.socket_id_next += 1;
        let receiver = glommio::spawn_local(receive_loop(socket.clone(), socket_id, self.waiters.clone(), self.stats.clone()));
        self.open.insert(
            socket_id,
            OpenSocket { socket, queries_count: 0, pending_count: 0, retired: false, _receiver: receiver },
        );
        self.stats.borrow_mut().sockets_opened += 1;
        Ok(socket_id)
    }
}

/// Hands every datagram on `socket` to the query waiting for its id.
async fn receive_loop(socket: Rc<UdpSocket>, socket_id: u64, waiters: Rc<RefCell<Waiters>>, stats: Rc<RefCell<ResolverStats>>) {
    let mut buffer = vec![0u8; UDP_RECEIVE_BYTES_MAX];
    loop {
        let (size, from) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(_) => {
                stats.borrow_mut().receive_errors += 1;
                // Errors on an unconnected UDP socket are rare and transient
                // (no ICMP errors are reported): pause instead of spinning.
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let datagram = &buffer[..size];
        let sender_found = query::message_id(datagram).and_then(|id| {
            let waiters = waiters.borrow();
            waiters.get(&(socket_id, id)).map(|sender| sender.try_send((from, datagram.to_vec())).is_ok())
        });
        match sender_found {
            None => stats.borrow_mut().datagrams_ignored += 1,
            Some(false) => stats.borrow_mut().datagrams_dropped_queue_full += 1,
            Some(true) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_servers_and_options() {
        let text = "\
# comment
; another
domain example.com
search example.com example.net
nameserver 192.0.2.1
nameserver   2001:db8::53   # trailing words are ignored
nameserver not-an-address
nameserver 192.0.2.2
nameserver 192.0.2.3
options ndots:2 timeout:3 attempts:4 rotate
";
        let params = ResolverParams::from_resolv_conf(text);
        let servers: Vec<String> = params.servers.iter().map(|s| s.to_string()).collect();
        assert_eq!(servers, ["192.0.2.1:53", "[2001:db8::53]:53", "192.0.2.2:53"], "the first three valid ones");
        assert_eq!(params.timeout, Duration::from_secs(3));
        assert_eq!(params.attempts, 4);
        assert!(params.rotate);
        assert!(params.validate().is_ok());
    }

    #[test]
    fn resolv_conf_defaults_and_caps() {
        let params = ResolverParams::from_resolv_conf("");
        assert_eq!(params, ResolverParams::default());
        assert_eq!(params.servers, vec!["127.0.0.1:53".parse::<SocketAddr>().unwrap()]);
        let params = ResolverParams::from_resolv_conf("options timeout:0 attempts:99\noptions timeout:120");
        assert_eq!(params.timeout, Duration::from_secs(30));
        assert_eq!(params.attempts, 5);
        let params = ResolverParams::from_resolv_conf("options attempts:0 timeout:x");
        assert_eq!((params.attempts, params.timeout), (1, Duration::from_secs(5)));
    }

    #[test]
    fn resolv_conf_scoped_ipv6() {
        let params = ResolverParams::from_resolv_conf("nameserver fe80::1%2\nnameserver fe80::2%lo\nnameserver 192.0.2.1%1");
        let scopes: Vec<u32> = params
            .servers
            .iter()
            .map(|s| match s {
                SocketAddr::V6(v6) => v6.scope_id(),
                SocketAddr::V4(_) => panic!("a scoped IPv4 address is invalid"),
            })
            .collect();
        assert_eq!(scopes[0], 2);
        assert_eq!(scopes.len(), 2);
        assert!(scopes[1] > 0, "lo has an interface index");
    }

    #[test]
    fn validate_rejects_unbounded_settings() {
        let ok = ResolverParams::default();
        assert!(ok.validate().is_ok());
        for broken in [
            ResolverParams { servers: vec![], ..ok.clone() },
            ResolverParams { servers: vec![ok.servers[0]; SERVER_COUNT_MAX + 1], ..ok.clone() },
            ResolverParams { timeout: Duration::ZERO, ..ok.clone() },
            ResolverParams { attempts: 0, ..ok.clone() },
            ResolverParams { udp_sockets_per_family: 0, ..ok.clone() },
            ResolverParams { socket_queries_max: 0, ..ok.clone() },
            ResolverParams { queries_in_flight_max: 0, ..ok.clone() },
            ResolverParams { cache_entries_max: 0, ..ok.clone() },
        ] {
            assert!(broken.validate().is_err(), "{broken:?}");
            assert!(Resolver::new(broken).is_err());
        }
    }
}
