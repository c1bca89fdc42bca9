//! The outbound connections of one shard: SMTP sessions kept open after a
//! transaction for the next message to the same host, and the limits on
//! how many connections are open at once, per destination and in all.
//!
//! Place in the pipeline: used by `outbound` for every remote delivery.
//! Sessions are `!Send` (glommio sockets); each shard has its own cache.
//!
//! Limits: `delivery.max_connections_per_destination` (a semaphore per
//! destination, held while a delivery to it runs), `delivery.
//! max_connections_per_shard` (a permit per open connection, idle ones
//! included: when none is left, the oldest idle connection is closed),
//! `delivery.connection_reuse_time` (idle sessions older than that are
//! closed by `sweep`) and `delivery.max_transactions_per_connection`.
//!
//! A destination none of whose hosts accepted a connection is remembered
//! as down for [`DEAD_DESTINATION_TIME`] (10 s): its next deliveries are deferred
//! at once with the reply of the failed attempt instead of each trying the
//! same dead hosts again (as Postfix's queue manager marks a destination
//! dead), so a backlog for a host that is down costs a log record per
//! message, not a connection attempt. A delivery that reaches the
//! destination again forgets it.
//!
//! Connections are made from `delivery.source_address` (or a rule's) when
//! one of the destination's family is set; the shard's authenticated-TLS
//! settings (`security::Security`) live here too, beside the sessions
//! they secure.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use glommio::sync::{Semaphore, StaticPermit};

use crate::config::Config;
use crate::deliver::security::Security;
use crate::smtp::client::Client;
use crate::tls::Stream;

/// Destinations whose semaphores are kept while unused; beyond it, idle
/// ones are dropped.
const DESTINATION_ENTRIES_MAX: usize = 4096;
/// How long closing a session may take (writing QUIT).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a destination none of whose hosts accepted a connection is
/// deferred without trying it.
pub const DEAD_DESTINATION_TIME: Duration = Duration::from_secs(10);
/// Destinations remembered as down at once; past it, a new one is not
/// remembered (its deliveries try it as before).
const DEAD_DESTINATION_ENTRIES_MAX: usize = 4096;

/// An open SMTP session to one host.
pub struct Session {
    pub stream: Stream,
    pub client: Client,
    pub addr: SocketAddr,
    /// Transactions this session has carried.
    pub transaction_count: u32,
    /// The server was authenticated (`verify` or DANE) for this name.
    pub authenticated_as: Option<String>,
    _slot: StaticPermit,
    /// Counts the connection open in the metrics while it is.
    _open: crate::metrics::OpenConnection,
}

struct IdleSession {
    session: Session,
    since: Instant,
}

/// Counters for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    pub opened: u64,
    pub reused: u64,
    pub idle_now: usize,
}

pub struct Connections {
    reuse_time: Duration,
    transactions_max: u32,
    slots: Rc<Semaphore>,
    idle: RefCell<HashMap<SocketAddr, Vec<IdleSession>>>,
    idle_count: Cell<usize>,
    destinations: RefCell<HashMap<String, Rc<Semaphore>>>,
    /// Destinations down: until when, and the reply their deliveries get.
    dead: RefCell<HashMap<String, (Instant, crate::smtp::reply::Reply)>>,
    opened: Cell<u64>,
    reused: Cell<u64>,
    security: Security,
}

impl Connections {
    pub fn new(config: &Config) -> Connections {
        let d = &config.delivery;
        Connections {
            reuse_time: d.connection_reuse_time.0,
            transactions_max: d.max_transactions_per_connection,
            slots: Rc::new(Semaphore::new(d.max_connections_per_shard as u64)),
            idle: RefCell::new(HashMap::new()),
            idle_count: Cell::new(0),
            destinations: RefCell::new(HashMap::new()),
            dead: RefCell::new(HashMap::new()),
            opened: Cell::new(0),
            reused: Cell::new(0),
            security: Security::new(config),
        }
    }

    /// The shard's settings for authenticated TLS.
    pub fn security(&self) -> &Security {
        &self.security
    }

    pub fn stats(&self) -> ConnectionStats {
        ConnectionStats { opened: self.opened.get(), reused: self.reused.get(), idle_now: self.idle_count.get() }
    }

    /// Whether sessions are kept open after their transaction at all.
    pub fn reuse_enabled(&self) -> bool {
        !self.reuse_time.is_zero()
    }

    /// Waits for a turn to deliver to `destination` (a domain, a next hop,
    /// a local store): at most `max` at once (the first caller's `max`
    /// sizes the destination's semaphore).
    pub async fn destination_permit(&self, destination: &str, max: usize) -> Option<StaticPermit> {
        let semaphore = {
            let mut destinations = self.destinations.borrow_mut();
            if destinations.len() >= DESTINATION_ENTRIES_MAX && !destinations.contains_key(destination) {
                // Drop the semaphores nobody holds or waits for.
                // A held permit keeps a reference to its semaphore.
                destinations.retain(|_, s| Rc::strong_count(s) > 1);
            }
            // Looked up by the borrowed name first: a known destination
            // costs no allocation.
            match destinations.get(destination) {
                Some(semaphore) => semaphore.clone(),
                None => destinations
                    .entry(destination.to_string())
                    .or_insert_with(|| Rc::new(Semaphore::new(max.max(1) as u64)))
                    .clone(),
            }
        };
        semaphore.acquire_static_permit(1).await.ok()
    }

    /// The reply for a delivery to `destination` while it is remembered as
    /// down, or None (then it is tried).
    pub fn dead_reply(&self, destination: &str, now: Instant) -> Option<crate::smtp::reply::Reply> {
        let mut dead = self.dead.borrow_mut();
        let (until, reply) = dead.get(destination)?;
        if now < *until {
            return Some(reply.clone());
        }
        dead.remove(destination);
        None
    }

    /// No host of `destination` accepted a connection: remembered as down
    /// until `now` + [`DEAD_DESTINATION_TIME`], its deliveries answered
    /// with `reply` (temporary: a failed connection never fails mail).
    pub fn mark_dead(&self, destination: &str, now: Instant, reply: &crate::smtp::reply::Reply) {
        debug_assert!(!reply.is_permanent(), "a destination down defers, never fails");
        let mut dead = self.dead.borrow_mut();
        if dead.len() >= DEAD_DESTINATION_ENTRIES_MAX && !dead.contains_key(destination) {
            dead.retain(|_, (until, _)| now < *until);
            if dead.len() >= DEAD_DESTINATION_ENTRIES_MAX {
                return;
            }
        }
        let text = format!(
            "{} (destination down, not tried again for {} s)",
            reply.lines.join(" "),
            DEAD_DESTINATION_TIME.as_secs()
        );
        let reply = crate::smtp::reply::Reply::new(
            reply.code,
            reply.enhanced.unwrap_or(crate::smtp::reply::Enhanced(4, 4, 1)),
            text,
        );
        dead.insert(destination.to_string(), (now + DEAD_DESTINATION_TIME, reply));
    }

    /// A delivery reached `destination`: it is not down.
    pub fn mark_alive(&self, destination: &str) {
        let mut dead = self.dead.borrow_mut();
        if !dead.is_empty() {
            dead.remove(destination);
        }
    }

    /// An idle session to `addr`, if one is open and fresh enough.
    pub fn take_idle(&self, addr: SocketAddr) -> Option<Session> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        let now = Instant::now();
        while let Some(entry) = list.pop() {
            self.idle_count.set(self.idle_count.get() - 1);
            if now.duration_since(entry.since) < self.reuse_time {
                if list.is_empty() {
                    idle.remove(&addr);
                }
                self.reused.set(self.reused.get() + 1);
                crate::metrics::OUTBOUND_REUSED.inc();
                return Some(entry.session);
            }
            // Too old: dropping it closes the socket.
        }
        idle.remove(&addr);
        None
    }

    /// Opens a connection to `addr` within `timeout`, waiting for a free
    /// slot (closing the oldest idle session when none is free).
    pub async fn connect(&self, addr: SocketAddr, timeout: Duration) -> std::io::Result<(TcpStream, StaticPermit)> {
        self.connect_from(addr, None, timeout).await
    }

    /// As `connect`, from local address `source` when given.
    pub async fn connect_from(
        &self,
        addr: SocketAddr,
        source: Option<IpAddr>,
        timeout: Duration,
    ) -> std::io::Result<(TcpStream, StaticPermit)> {
        if self.slots.available() == 0 {
            self.close_oldest_idle().await;
        }
        let slot = self
            .slots
            .clone()
            .acquire_static_permit(1)
            .await
            .map_err(|e| std::io::Error::other(format!("connection slots closed: {e}")))?;
        let stream = match source {
            None => TcpStream::connect_timeout(addr, timeout).await.map_err(std::io::Error::from)?,
            Some(source) => connect_bound(addr, source, timeout).await?,
        };
        // Commands, content and the final dot go out in several writes and
        // the reply is awaited after the last: Nagle's algorithm would hold
        // that last small write for the peer's delayed ACK (about 40 ms).
        stream.set_nodelay(true).map_err(std::io::Error::from)?;
        self.opened.set(self.opened.get() + 1);
        crate::metrics::OUTBOUND_OPENED.inc();
        Ok((stream, slot))
    }

    /// Wraps a connected stream and its client into a session.
    pub fn session(&self, stream: TcpStream, client: Client, addr: SocketAddr, slot: StaticPermit) -> Session {
        Session {
            stream: Stream::Plain(stream),
            client,
            addr,
            transaction_count: 0,
            authenticated_as: None,
            _slot: slot,
            _open: crate::metrics::OpenConnection::new(),
        }
    }

    /// Keeps a session whose last transaction ended cleanly for the next
    /// message to its host, or closes it when it has carried enough.
    pub async fn put_idle(&self, session: Session) {
        if !self.reuse_enabled() || session.transaction_count >= self.transactions_max {
            close(session).await;
            return;
        }
        let addr = session.addr;
        self.idle.borrow_mut().entry(addr).or_default().push(IdleSession { session, since: Instant::now() });
        self.idle_count.set(self.idle_count.get() + 1);
    }

    /// Closes idle sessions older than `connection_reuse_time`; returns how
    /// many were closed.
    pub async fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut expired = Vec::new();
        {
            let mut idle = self.idle.borrow_mut();
            for list in idle.values_mut() {
                let (old, fresh): (Vec<_>, Vec<_>) =
                    list.drain(..).partition(|entry| now.duration_since(entry.since) >= self.reuse_time);
                *list = fresh;
                expired.extend(old);
            }
            idle.retain(|_, list| !list.is_empty());
        }
        self.idle_count.set(self.idle_count.get() - expired.len());
        let count = expired.len();
        for entry in expired {
            close(entry.session).await;
        }
        count
    }

    /// Closes every idle session (at shutdown).
    pub async fn close_all(&self) {
        let all: Vec<IdleSession> = self.idle.borrow_mut().drain().flat_map(|(_, list)| list).collect();
        self.idle_count.set(0);
        for entry in all {
            close(entry.session).await;
        }
    }

    async fn close_oldest_idle(&self) {
        let oldest = {
            let mut idle = self.idle.borrow_mut();
            let addr = idle
                .iter()
                .filter_map(|(addr, list)| list.first().map(|entry| (entry.since, *addr)))
                .min()
                .map(|(_, addr)| addr);
            addr.and_then(|addr| {
                let list = idle.get_mut(&addr)?;
                let entry = list.remove(0);
                if list.is_empty() {
                    idle.remove(&addr);
                }
                Some(entry)
            })
        };
        if let Some(entry) = oldest {
            self.idle_count.set(self.idle_count.get() - 1);
            close(entry.session).await;
        }
    }
}

/// A connection to `addr` from `source` (any port). glommio connects only
/// unbound sockets, so the socket is bound and connected on the blocking
/// pool (socket2's connect with a timeout) and handed to the executor.
async fn connect_bound(addr: SocketAddr, source: IpAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    if source.is_ipv4() != addr.is_ipv4() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "source and destination families differ"));
    }
    let socket = glommio::executor()
        .spawn_blocking(move || -> std::io::Result<Socket> {
            let domain = if addr.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
            let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
            socket
                .bind(&SocketAddr::new(source, 0).into())
                .map_err(|e| std::io::Error::new(e.kind(), format!("bind {source}: {e}")))?;
            socket.connect_timeout(&addr.into(), timeout)?;
            Ok(socket)
        })
        .await?;
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: the descriptor is a connected TCP socket this function owns;
    // `into_raw_fd` gives up that ownership to the stream.
    Ok(unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) })
}

/// Says QUIT (without waiting for the 221) and closes the socket.
pub async fn close(mut session: Session) {
    let _ = glommio::timer::timeout(CLOSE_TIMEOUT, async {
        let _ = session.stream.write_all(b"QUIT\r\n").await;
        let _ = session.stream.close().await;
        Ok(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::reply::{Enhanced, Reply};

    fn connections() -> Connections {
        let dir = crate::testing::tempdir("connections-dead");
        Connections::new(&crate::testing::config(&dir, ""))
    }

    #[test]
    fn a_destination_down_is_remembered_for_a_while_and_forgotten_when_reached() {
        let c = connections();
        let now = Instant::now();
        assert!(c.dead_reply("mx.example", now).is_none());
        let refused = Reply::new(451, Enhanced(4, 4, 1), "connect to mx.example[192.0.2.1]:25: Connection refused");
        c.mark_dead("mx.example", now, &refused);
        let reply = c.dead_reply("mx.example", now + Duration::from_secs(1)).expect("remembered");
        assert_eq!((reply.code, reply.enhanced), (451, Some(Enhanced(4, 4, 1))));
        assert!(reply.lines.join(" ").contains("Connection refused (destination down"), "{reply:?}");
        assert!(c.dead_reply("other.example", now).is_none(), "only that destination");
        // Past the window it is tried again.
        assert!(c.dead_reply("mx.example", now + DEAD_DESTINATION_TIME).is_none());
        assert!(c.dead.borrow().is_empty(), "an expired entry is dropped when looked up");
        // Reached again: forgotten at once.
        c.mark_dead("mx.example", now, &refused);
        c.mark_alive("mx.example");
        assert!(c.dead_reply("mx.example", now).is_none());
    }

    #[test]
    fn the_memory_of_destinations_down_is_bounded() {
        let c = connections();
        let now = Instant::now();
        let refused = Reply::new(451, Enhanced(4, 4, 1), "connect: Connection refused");
        for i in 0..DEAD_DESTINATION_ENTRIES_MAX + 10 {
            c.mark_dead(&format!("d{i}.example"), now, &refused);
        }
        assert_eq!(c.dead.borrow().len(), DEAD_DESTINATION_ENTRIES_MAX);
        assert!(c.dead_reply("d0.example", now).is_some());
        assert!(c.dead_reply(&format!("d{}.example", DEAD_DESTINATION_ENTRIES_MAX + 5), now).is_none(), "not kept");
        // Once the old entries expire, a new one finds room.
        let later = now + DEAD_DESTINATION_TIME;
        c.mark_dead("new.example", later, &refused);
        assert!(c.dead_reply("new.example", later).is_some());
        assert_eq!(c.dead.borrow().len(), 1);
    }
}
