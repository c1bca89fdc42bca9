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
