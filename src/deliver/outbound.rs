//! Outbound SMTP: delivers one message to the recipients of one
//! destination (a domain's MX hosts, or the smarthost). Finds the hosts
//! (DNS on the shard's resolver), tries them in preference order with
//! fallback to the next address when a host cannot be reached or refuses
//! the session, reuses an idle session to the same host when one is open,
//! and drives the sans-IO [`Client`] over the socket, streaming the body
//! from the queue through the dot-stuffer.
//!
//! Place in the pipeline: the SMTP transport of the delivery engine, and
//! the connection side of call-forward callouts (`probe`: the same hosts,
//! fallback, limits and sessions, a transaction without content).
//! Returns one outcome per recipient; connection failures, timeouts and
//! temporary DNS failures are transient, a null MX or a domain that does
//! not exist is permanent.
//!
//! Each host is connected to at the TLS level `security::levels` chooses
//! (DANE, MTA-STS, or the configured level), from the configured source
//! address, with the configured EHLO name (a transport rule's when the
//! delivery goes by one).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};

use crate::config::{Config, TlsPolicy};
use crate::deliver::connections::{self, Connections, Session};
use crate::deliver::dotstuff::DotStuffer;
use crate::deliver::security::{self, Level};
use crate::dns::{RecordKind, Resolver};
use crate::queue::{Body, BodyReader, Envelope, StoredBody};
use crate::smtp::address::{Address, ReversePath};
use crate::smtp::client::{
    BodyType, Client, ClientEvent, ClientParams, Outcome, RcptOutcome, StartTls, Transaction, BDAT_CHUNK_BYTES_MAX,
};
use crate::smtp::reply::{Enhanced, Reply};
use crate::tls::Stream;

/// Body bytes read from the queue file at a time.
const BODY_READ_BYTES: usize = 64 * 1024;
/// Reply bytes read from the server at a time.
const READ_BYTES: usize = 16 * 1024;
/// Addresses tried for one delivery, over all MX hosts (Postfix's
/// smtp_mx_address_limit is 5).
pub const ADDRESS_TRIES_MAX: usize = 5;

/// Where the recipients of one group go.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    /// `delivery.smarthost`, "host:port".
    Smarthost(String),
    /// The MX hosts of a domain (lower-case).
    Domain(String),
}

impl Destination {
    /// The key the per-destination connection limit counts by.
    pub fn key(&self) -> &str {
        match self {
            Destination::Smarthost(host) | Destination::Domain(host) => host,
        }
    }

    /// The destination of a recipient address for this configuration.
    pub fn of(config: &Config, address: &Address) -> Destination {
        match &config.delivery.smarthost {
            Some(host) => Destination::Smarthost(host.clone()),
            None => Destination::Domain(crate::route::domains::mx_domain(address)),
        }
    }
}

/// What one delivery to a destination found out.
pub struct Delivered {
    /// One per recipient index given, in order.
    pub outcomes: Vec<RcptOutcome>,
    /// The host that gave the outcomes, `name[addr]:port`, or the
    /// destination when no host was reached.
    pub relay: String,
    /// The transaction's number on its connection (1 for a new connection).
    pub conn_use: u32,
    /// The transaction ran over TLS.
    pub tls: bool,
    /// The TLS level the host was connected at (`security::Level::as_str`),
    /// "" when no host was reached.
    pub tls_level: &'static str,
    /// The name of the host that gave the outcomes (the MX or smarthost
    /// name as configured or found, an IP address when given as one), or
    /// the destination when no host was reached.
    pub host: String,
    /// The conversation, when `Policy::transcript` asked for it.
    pub transcript: Vec<String>,
    /// The host that gave the outcomes accepted MAIL FROM.
    pub mail_accepted: bool,
    /// That host offered DSN (RFC 3461): the NOTIFY, ORCPT, RET and ENVID
    /// of the message went with it, and further reports are its job.
    pub dsn: bool,
}

/// A message's content, for the transactions that send one (a call-forward
/// probe has none).
#[derive(Clone, Copy)]
pub struct Content<'a> {
    pub stored: &'a StoredBody,
    pub env: &'a Envelope,
}

/// The shard's outbound side: resolver, connections and settings.
pub struct Outbound<'a> {
    /// The configuration the attempt started with.
    pub config: Arc<Config>,
    pub resolver: &'a Resolver,
    pub connections: &'a Connections,
    pub tls_client: &'a Arc<rustls::ClientConfig>,
}

/// Per-destination settings (from a transport rule or the defaults).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub tls: TlsPolicy,
    /// The `[[transport]]` rule the delivery goes by (its source address
    /// and EHLO name), if any.
    pub rule: Option<usize>,
    pub max_connections: usize,
    /// Keep the conversation in `Delivered::transcript` (new connections only).
    pub transcript: bool,
}

/// A host to try: its name (for logs, SNI and certificate checks),
/// address and TLS level (or why it must not be used now).
struct Target {
    name: String,
    addr: SocketAddr,
    level: security::HostLevel,
}

/// Delivers `env` to the recipients at `indexes`, all of `destination`.
pub async fn deliver(
    out: &Outbound<'_>,
    destination: &Destination,
    policy: Policy,
    stored: &StoredBody,
    env: &Envelope,
    indexes: &[usize],
) -> Delivered {
    let txn = transaction(env, indexes);
    attempt(out, destination, policy, &txn, Some(Content { stored, env }), Memory::Deliveries).await
}

/// Whether an attempt remembers a destination that cannot be reached (and
/// is deferred at once while it is remembered). Deliveries do; callouts and
/// replicas, which answer a client waiting now, try every time.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Memory {
    Deliveries,
    None,
}

/// A call-forward probe of `destination`: `MAIL FROM:<sender>` and `RCPT
/// TO` for each of `recipients`, no content, on the hosts delivery would
/// use, in the same order, with the same fallback, limits and session
/// reuse. The outcome of each recipient is the reply to its RCPT.
pub async fn probe(
    out: &Outbound<'_>,
    destination: &Destination,
    policy: Policy,
    sender: &str,
    recipients: Vec<String>,
) -> Delivered {
    debug_assert!(!recipients.is_empty());
    let txn = Transaction::probe(sender, recipients);
    attempt(out, destination, policy, &txn, None, Memory::None).await
}

/// One transaction `txn` with `content` to `destination`, as delivery
/// sends it (a replica for the replication peer, `crate::scan::replicate`).
pub async fn send(
    out: &Outbound<'_>,
    destination: &Destination,
    policy: Policy,
    content: Content<'_>,
    txn: &Transaction,
) -> Delivered {
    attempt(out, destination, policy, txn, Some(content), Memory::None).await
}

/// The addresses of a destination, in the order delivery tries them.
pub async fn addresses(out: &Outbound<'_>, destination: &Destination) -> Result<Vec<SocketAddr>, Reply> {
    Ok(targets(out, destination, TlsPolicy::None).await?.into_iter().map(|target| target.addr).collect())
}

/// One transaction of `txn` to `destination`: its hosts in order, the next
/// one when a host cannot be reached, will not talk, or refuses for now.
async fn attempt(
    out: &Outbound<'_>,
    destination: &Destination,
    policy: Policy,
    txn: &Transaction,
    content: Option<Content<'_>>,
    memory: Memory,
) -> Delivered {
    let count = txn.recipients.len();
    let all = |reply: Reply, relay: String, host: String| Delivered {
        outcomes: (0..count)
            .map(|_| {
                if reply.is_permanent() {
                    RcptOutcome::Permanent(reply.clone())
                } else {
                    RcptOutcome::Transient(reply.clone())
                }
            })
            .collect(),
        relay,
        conn_use: 0,
        tls: false,
        tls_level: "",
        host,
        transcript: Vec::new(),
        mail_accepted: false,
        dsn: false,
    };
    let key = || destination.key().to_string();
    if memory == Memory::Deliveries {
        if let Some(reply) = out.connections.dead_reply(destination.key(), Instant::now()) {
            return all(reply, key(), key());
        }
    }
    let mut targets = match targets(out, destination, policy.tls).await {
        Ok(targets) => targets,
        Err(reply) => return all(reply, key(), key()),
    };
    targets.truncate(ADDRESS_TRIES_MAX);
    if let Destination::Domain(domain) = destination {
        let names: Vec<String> = targets.iter().map(|t| t.name.clone()).collect();
        let id = content.map(|c| c.env.id.as_str()).unwrap_or("");
        let levels = security::levels(out.connections.security(), out.resolver, domain, &names, policy.tls, id).await;
        for (target, level) in targets.iter_mut().zip(levels) {
            target.level = level;
        }
    }
    for target in targets.iter_mut() {
        if matches!(target.level, Ok(Level::Verify)) {
            if let Err(reply) = out.connections.security().verify_config() {
                target.level = Err(reply);
            }
        }
    }
    let Some(_turn) = out.connections.destination_permit(destination.key(), policy.max_connections).await else {
        return all(Reply::new(451, Enhanced(4, 3, 0), "delivery is shutting down"), key(), key());
    };
    let mut last: Option<Delivered> = None;
    // Whether some host accepted a connection, and the reply of the last
    // that did not.
    let mut reached = false;
    let mut unreachable: Option<Reply> = None;
    for target in targets.iter().take(ADDRESS_TRIES_MAX) {
        // Room for what the log adds to it (connection use, TLS level).
        let mut relay = String::with_capacity(target.name.len() + 96);
        let _ = write!(relay, "{}[{}]:{}", target.name, target.addr.ip(), target.addr.port());
        if let Err(reply) = &target.level {
            last = Some(all(reply.clone(), relay, target.name.clone()));
            continue;
        }
        let (outcome, conn_use) = match transact(out, target, policy, txn, content).await {
            Ok(done) => done,
            Err(e) => {
                let reply = Reply::new(451, Enhanced(4, 4, 1), format!("connect to {relay}: {e}"));
                unreachable = Some(reply.clone());
                last = Some(all(reply, relay, target.name.clone()));
                continue;
            }
        };
        reached = true;
        // The next host may do better when this one would not talk to us
        // at all, or refused the transaction for now (RFC 5321 §5.1).
        let session_failed = !outcome.session_established;
        let refused_for_now =
            !outcome.mail_accepted && outcome.recipients.iter().all(|r| matches!(r, RcptOutcome::Transient(_)));
        let delivered = Delivered {
            outcomes: outcome.recipients,
            relay,
            conn_use,
            tls: outcome.tls,
            tls_level: target.level.as_ref().map(Level::as_str).unwrap_or(""),
            host: target.name.clone(),
            transcript: outcome.transcript,
            mail_accepted: outcome.mail_accepted,
            dsn: outcome.extensions.dsn,
        };
        if session_failed || refused_for_now {
            last = Some(delivered);
            continue;
        }
        if memory == Memory::Deliveries {
            out.connections.mark_alive(destination.key());
        }
        return delivered;
    }
    match (memory, reached, &unreachable) {
        (Memory::Deliveries, false, Some(reply)) => out.connections.mark_dead(destination.key(), Instant::now(), reply),
        (Memory::Deliveries, true, _) => out.connections.mark_alive(destination.key()),
        _ => {}
    }
    last.unwrap_or_else(|| all(Reply::new(451, Enhanced(4, 4, 4), "no address to try"), key(), key()))
}

/// The client's transaction for the recipients of `env` at `indexes`.
/// Binary content (BODY=BINARYMIME) travels as binary whatever else is
/// known of it; otherwise 8-bit content as 8BITMIME.
pub fn transaction(env: &Envelope, indexes: &[usize]) -> Transaction {
    let body = if env.body_binary {
        BodyType::BinaryMime
    } else if env.body_8bit {
        BodyType::EightBitMime
    } else {
        BodyType::SevenBit
    };
    Transaction {
        reverse_path: match &env.sender {
            ReversePath::Null => String::new(),
            ReversePath::Path(a) => a.to_string(),
        },
        recipients: indexes.iter().map(|&i| env.recipients[i].address.to_string()).collect(),
        size_bytes: env.size_bytes + env.headers_prepended.len() as u64,
        body,
        smtputf8: env.smtputf8,
        probe: false,
        replica_of: None,
        mail_dsn: env.dsn.clone(),
        rcpt_dsn: indexes.iter().map(|&i| env.recipients[i].dsn.clone()).collect(),
    }
}

/// The addresses to try, best first: the smarthost's, or the MX hosts'
/// (IPv4 before IPv6 for each host: loopback-only and IPv4-only relays
/// are common, and an IPv6 failure costs a connect timeout).
async fn targets(out: &Outbound<'_>, destination: &Destination, tls: TlsPolicy) -> Result<Vec<Target>, Reply> {
    let level = || Ok(Level::of(tls));
    match destination {
        Destination::Smarthost(hostport) => {
            let (host, port) = split_host_port(hostport)
                .ok_or_else(|| Reply::new(451, Enhanced(4, 3, 5), format!("bad smarthost {hostport:?}")))?;
            if let Ok(ip) = host.parse::<IpAddr>() {
                return Ok(vec![Target { name: host.to_string(), addr: SocketAddr::new(ip, port), level: level() }]);
            }
            let a = out.resolver.lookup(host, RecordKind::A).await;
            let aaaa = out.resolver.lookup(host, RecordKind::Aaaa).await;
            let mut addrs: Vec<IpAddr> = Vec::new();
            let mut errors = Vec::new();
            for lookup in [a, aaaa] {
                match lookup {
                    Ok(lookup) => {
                        let (v4, v6) = lookup.addresses();
                        addrs.extend(v4.into_iter().map(IpAddr::V4));
                        addrs.extend(v6.into_iter().map(IpAddr::V6));
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
            if addrs.is_empty() {
                let why = if errors.is_empty() { "no address".to_string() } else { errors.join("; ") };
                return Err(Reply::new(451, Enhanced(4, 4, 3), format!("smarthost {host}: {why}")));
            }
            Ok(addrs
                .into_iter()
                .map(|ip| Target { name: host.to_string(), addr: SocketAddr::new(ip, port), level: level() })
                .collect())
        }
        Destination::Domain(domain) => {
            let route = crate::dns::route(out.resolver, domain).await.map_err(|e| e.reply())?;
            let port = out.config.delivery.port;
            let mut targets = Vec::new();
            for host in route.hosts {
                for ip in host.ipv4.iter().copied().map(IpAddr::V4).chain(host.ipv6.iter().copied().map(IpAddr::V6)) {
                    targets.push(Target { name: host.name.clone(), addr: SocketAddr::new(ip, port), level: level() });
                }
            }
            Ok(targets)
        }
    }
}

/// "host:port" or "[v6]:port" into its parts.
fn split_host_port(text: &str) -> Option<(&str, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    Some((host, port.parse().ok()?))
}

/// One transaction with `target`: on an idle session to it if there is
/// one (and once more on a fresh connection if that session turns out to
/// have been closed), else on a new connection. Err only when no
/// connection could be made.
async fn transact(
    out: &Outbound<'_>,
    target: &Target,
    policy: Policy,
    txn: &Transaction,
    content: Option<Content<'_>>,
) -> std::io::Result<(Outcome, u32)> {
    let level = match &target.level {
        Ok(level) => level,
        // attempt() skips a target that must not be used.
        Err(reply) => return Err(std::io::Error::other(reply.summary())),
    };
    // An authenticated level reuses only sessions authenticated for the
    // same name; the others any session to the address.
    let reuse = if policy.transcript { None } else { out.connections.take_idle(target.addr) };
    let reuse = match reuse {
        Some(session) if level.authenticates() && session.authenticated_as.as_deref() != Some(&target.name) => {
            connections::close(session).await;
            None
        }
        other => other,
    };
    if let Some(mut session) = reuse {
        session.client.next_transaction(txn.clone(), Instant::now());
        let outcome = run(&mut session, content, out.tls_client, &target.name).await;
        if !outcome.stale {
            let conn_use = session.transaction_count;
            finish_session(out.connections, session, &outcome).await;
            return Ok((outcome, conn_use));
        }
        connections::close(session).await;
    }
    let (starttls, tls_client) = match level {
        Level::None => (StartTls::Never, out.tls_client.clone()),
        Level::May => (StartTls::IfOffered, out.tls_client.clone()),
        Level::Encrypt => (StartTls::Required, out.tls_client.clone()),
        Level::Verify => match out.connections.security().verify_config() {
            Ok(config) => (StartTls::Required, config.clone()),
            // attempt() refuses such a target before it gets here.
            Err(reply) => return Err(std::io::Error::other(reply.summary())),
        },
        Level::Dane(records) => (StartTls::Required, crate::tls::dane_config(records.clone())),
    };
    let new = NewSession { starttls, tls_client: &tls_client, transcript: policy.transcript, rule: policy.rule };
    let (outcome, conn_use) = transact_new(out, target, txn, content, &new).await?;
    if outcome.tls_failed && *level == Level::May {
        // Opportunistic: a server whose TLS is broken still gets its mail,
        // in plaintext, on a new connection.
        let plain = NewSession { starttls: StartTls::Never, ..new };
        return transact_new(out, target, txn, content, &plain).await;
    }
    Ok((outcome, conn_use))
}

/// How a new connection is set up.
#[derive(Clone, Copy)]
struct NewSession<'a> {
    starttls: StartTls,
    tls_client: &'a Arc<rustls::ClientConfig>,
    transcript: bool,
    rule: Option<usize>,
}

/// One transaction on a new connection.
async fn transact_new(
    out: &Outbound<'_>,
    target: &Target,
    txn: &Transaction,
    content: Option<Content<'_>>,
    new: &NewSession<'_>,
) -> std::io::Result<(Outcome, u32)> {
    let rule = new.rule.map(|index| &out.config.transports[index]);
    let sources = rule.and_then(|r| r.source_address.as_deref()).unwrap_or(&out.config.delivery.source_address);
    let source = security::source_for(sources, target.addr.ip());
    let (stream, slot) =
        out.connections.connect_from(target.addr, source, out.config.delivery.connect_timeout.0).await?;
    let helo_name = rule.and_then(|r| r.helo_name.as_deref()).unwrap_or(out.config.helo_name());
    let mut params = ClientParams::new(helo_name.to_string());
    params.keep_open = out.connections.reuse_enabled();
    params.chunking_enabled = out.config.delivery.chunking;
    params.starttls = new.starttls;
    params.transcript = new.transcript;
    let client = Client::new(params, txn.clone(), Instant::now());
    let mut session = out.connections.session(stream, client, target.addr, slot);
    let outcome = run(&mut session, content, new.tls_client, &target.name).await;
    if outcome.tls && new.starttls == StartTls::Required && !Arc::ptr_eq(new.tls_client, out.tls_client) {
        session.authenticated_as = Some(target.name.clone());
    }
    let conn_use = session.transaction_count;
    finish_session(out.connections, session, &outcome).await;
    Ok((outcome, conn_use))
}

/// Keeps the session for the next message when it is at a clean point,
/// else writes what the client has left to say (QUIT) and closes it.
async fn finish_session(connections: &Connections, mut session: Session, outcome: &Outcome) {
    if outcome.reusable {
        connections.put_idle(session).await;
        return;
    }
    let out = session.client.take_output();
    let _ = glommio::timer::timeout(Duration::from_secs(5), async {
        if !out.is_empty() {
            let _ = session.stream.write_all(&out).await;
        }
        let _ = session.stream.close().await;
        Ok(())
    })
    .await;
}

/// Drives the session's client through one transaction (and the TLS
/// handshake when the client asks for it; `host` is the name sent in SNI).
async fn run(
    session: &mut Session,
    content: Option<Content<'_>>,
    tls_client: &Arc<rustls::ClientConfig>,
    host: &str,
) -> Outcome {
    session.transaction_count += 1;
    drive(&mut session.stream, &mut session.client, content, tls_client, host).await
}

/// Moves bytes between `stream` and `client` until the client's
/// transaction is over; streams the body (dot-stuffed after DATA, or in
/// BDAT chunks as stored) and runs the TLS handshake when the client asks
/// for them. Used for SMTP and LMTP alike; `content` is `None` for a
/// probe, which never asks for it.
pub async fn drive(
    stream: &mut Stream,
    client: &mut Client,
    content: Option<Content<'_>>,
    tls_client: &Arc<rustls::ClientConfig>,
    host: &str,
) -> Outcome {
    let block_timeout = client.data_block_timeout();
    let mut buf = ReadBuffer::take();
    let mut chunks = ChunkReader::default();
    let outcome = loop {
        match client.poll(Instant::now()) {
            ClientEvent::NeedInput => {
                let out = client.take_output();
                if !out.is_empty() && stream.write_all(&out).await.is_err() {
                    client.on_connection_lost();
                    continue;
                }
                client.give_back_output(out);
                let wait = client.deadline().saturating_duration_since(Instant::now());
                let read = async { Some(stream.read(&mut buf.0).await) };
                let timer = async {
                    glommio::timer::sleep(wait).await;
                    None
                };
                match futures_lite::future::or(read, timer).await {
                    Some(Ok(0)) | Some(Err(_)) => client.on_connection_lost(),
                    Some(Ok(n)) => client.feed(&buf.0[..n]),
                    None => client.on_timeout(Instant::now()),
                }
            }
            ClientEvent::SendBody => {
                let out = client.take_output();
                let Some(Content { stored, env }) = content else {
                    debug_assert!(false, "a transaction without content never asks for it");
                    client.on_connection_lost();
                    continue;
                };
                match send_body(stream, &out, env, stored, client, block_timeout).await {
                    Ok(()) => client.body_sent(),
                    Err(_) => client.on_connection_lost(),
                }
            }
            ClientEvent::SendChunk => {
                let Some(Content { stored, env }) = content else {
                    debug_assert!(false, "a transaction without content never asks for it");
                    client.on_connection_lost();
                    continue;
                };
                if send_chunk(stream, client, &mut chunks, env, stored, block_timeout).await.is_err() {
                    client.on_connection_lost();
                }
            }
            ClientEvent::StartTls => {
                let out = client.take_output();
                debug_assert!(out.is_empty(), "nothing is sent between STARTTLS's 220 and the handshake");
                match stream.connect(tls_client.clone(), host).await {
                    Ok(()) => client.tls_started(Instant::now()),
                    Err(e) => client.tls_failed(Instant::now(), &e.to_string()),
                }
            }
            ClientEvent::Done(outcome) => break outcome,
        }
    };
    chunks.close().await;
    outcome
}

/// Writes pending commands, then the dot-stuffed content (the envelope's
/// added header lines first) and its terminator, gathered into blocks of
/// about `BODY_READ_BYTES`: a small message goes out in one write, its
/// terminator with it. Each block must be written within the client's
/// data-block timeout (RFC 5321 §4.5.3.2.5), which every written block
/// restarts.
async fn send_body(
    stream: &mut Stream,
    pending: &[u8],
    env: &Envelope,
    stored: &StoredBody,
    client: &mut Client,
    block_timeout: Duration,
) -> std::io::Result<()> {
    let mut stuffer = DotStuffer::new();
    let mut wire = WireBuffer::take();
    wire.0.extend_from_slice(pending);
    stuffer.encode(&env.headers_prepended, &mut wire.0);
    match &env.body {
        Body::Inline(bytes) => {
            for chunk in bytes.chunks(BODY_READ_BYTES) {
                stuffer.encode(chunk, &mut wire.0);
                if wire.0.len() >= BODY_READ_BYTES {
                    write_within(stream, &wire.0, block_timeout).await?;
                    wire.0.clear();
                    client.body_progress(Instant::now());
                }
            }
        }
        Body::File { .. } | Body::Log { .. } => {
            let mut reader = stored.reader();
            let sent: std::io::Result<()> = async {
                loop {
                    let chunk = reader.read(BODY_READ_BYTES).await?;
                    if chunk.is_empty() {
                        return Ok(());
                    }
                    stuffer.encode(&chunk, &mut wire.0);
                    if wire.0.len() >= BODY_READ_BYTES {
                        write_within(stream, &wire.0, block_timeout).await?;
                        wire.0.clear();
                        client.body_progress(Instant::now());
                    }
                }
            }
            .await;
            reader.close().await;
            sent?;
        }
    }
    stuffer.finish(&mut wire.0);
    write_within(stream, &wire.0, block_timeout).await
}

/// The buffer a body is dot-stuffed into on its way to the socket, taken
/// from the shard's spares like [`ReadBuffer`]: no 72 KiB allocation per
/// message.
struct WireBuffer(Vec<u8>);

/// A wire buffer's capacity at first: a block and its stuffing, for most
/// content (it grows for content of many short lines starting with dots).
const WIRE_BYTES: usize = BODY_READ_BYTES + BODY_READ_BYTES / 8;
/// A spare grown beyond this is not kept.
const WIRE_BYTES_KEPT_MAX: usize = 4 * BODY_READ_BYTES;

thread_local! {
    static WIRE_BUFFERS: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Spare wire buffers a shard keeps (more bodies sent at once allocate).
const WIRE_BUFFERS_KEPT_MAX: usize = 16;

impl WireBuffer {
    fn take() -> WireBuffer {
        let spare = WIRE_BUFFERS.with(|spares| spares.borrow_mut().pop());
        WireBuffer(spare.unwrap_or_else(|| Vec::with_capacity(WIRE_BYTES)))
    }
}

impl Drop for WireBuffer {
    fn drop(&mut self) {
        let mut buffer = std::mem::take(&mut self.0);
        buffer.clear();
        WIRE_BUFFERS.with(|spares| {
            let mut spares = spares.borrow_mut();
            if spares.len() < WIRE_BUFFERS_KEPT_MAX && buffer.capacity() <= WIRE_BYTES_KEPT_MAX {
                spares.push(buffer);
            }
        });
    }
}

/// A read buffer of an outbound session, taken from the shard's spares and
/// given back when the transaction ends: none is allocated and zeroed per
/// message (measured with callgrind: the 16 KiB zeroing was 7% of a
/// relayed message's instructions).
struct ReadBuffer(Vec<u8>);

thread_local! {
    static READ_BUFFERS: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Spare read buffers a shard keeps (more transactions at once allocate).
const READ_BUFFERS_KEPT_MAX: usize = 64;

impl ReadBuffer {
    fn take() -> ReadBuffer {
        let spare = READ_BUFFERS.with(|spares| spares.borrow_mut().pop());
        ReadBuffer(spare.unwrap_or_else(|| vec![0u8; READ_BYTES]))
    }
}

impl Drop for ReadBuffer {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.0);
        debug_assert_eq!(buffer.len(), READ_BYTES);
        READ_BUFFERS.with(|spares| {
            let mut spares = spares.borrow_mut();
            if spares.len() < READ_BUFFERS_KEPT_MAX {
                spares.push(buffer);
            }
        });
    }
}

/// Writes the next block of content as stored, framed by the client as a
/// BDAT chunk, together with the commands before it (MAIL and RCPT, when
/// small text content goes with them) in one write, within the data-block
/// timeout.
async fn send_chunk(
    stream: &mut Stream,
    client: &mut Client,
    chunks: &mut ChunkReader,
    env: &Envelope,
    stored: &StoredBody,
    block_timeout: Duration,
) -> std::io::Result<()> {
    let (block, last) = if !chunks.headers_sent && !env.headers_prepended.is_empty() {
        chunks.headers_sent = true;
        match &env.body {
            // The added header lines and a small stored message: one chunk.
            Body::Inline(bytes) if env.headers_prepended.len() + bytes.len() <= BDAT_CHUNK_BYTES_MAX => {
                let mut block = Vec::with_capacity(env.headers_prepended.len() + bytes.len());
                block.extend_from_slice(&env.headers_prepended);
                block.extend_from_slice(bytes);
                chunks.offset_bytes = bytes.len() as u64;
                (block, true)
            }
            // Else they go first, as a chunk of their own.
            _ => (env.headers_prepended.clone(), false),
        }
    } else {
        chunks.next(&env.body, stored).await?
    };
    client.bdat_chunk(Instant::now(), &block, last);
    let out = client.take_output();
    write_within(stream, &out, block_timeout).await?;
    client.give_back_output(out);
    Ok(())
}

/// Reads stored content for BDAT in blocks of at most
/// `BDAT_CHUNK_BYTES_MAX`, exactly as stored, one block ahead so that the
/// last block is known as such when it is framed.
#[derive(Default)]
struct ChunkReader {
    /// The envelope's added header lines have been sent.
    headers_sent: bool,
    reader: Option<BodyReader>,
    /// Where the next read of inline content starts.
    offset_bytes: u64,
    ahead: Option<Vec<u8>>,
}

impl ChunkReader {
    /// The next block and whether it is the last (an empty content is one
    /// empty last block).
    async fn next(&mut self, body: &Body, stored: &StoredBody) -> std::io::Result<(Vec<u8>, bool)> {
        match body {
            Body::Inline(bytes) => {
                let start = usize::try_from(self.offset_bytes).unwrap_or(usize::MAX).min(bytes.len());
                let end = start.saturating_add(BDAT_CHUNK_BYTES_MAX).min(bytes.len());
                self.offset_bytes = end as u64;
                Ok((bytes[start..end].to_vec(), end == bytes.len()))
            }
            Body::File { .. } | Body::Log { .. } => {
                let current = match self.ahead.take() {
                    Some(block) => block,
                    None => self.read(stored).await?,
                };
                if current.is_empty() {
                    return Ok((current, true));
                }
                let next = self.read(stored).await?;
                let last = next.is_empty();
                if !last {
                    self.ahead = Some(next);
                }
                Ok((current, last))
            }
        }
    }

    async fn read(&mut self, stored: &StoredBody) -> std::io::Result<Vec<u8>> {
        self.reader.get_or_insert_with(|| stored.reader()).read(BDAT_CHUNK_BYTES_MAX).await
    }

    async fn close(self) {
        if let Some(reader) = self.reader {
            reader.close().await;
        }
    }
}

async fn write_within(stream: &mut Stream, bytes: &[u8], timeout: Duration) -> std::io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    glommio::timer::timeout(timeout, async { Ok(stream.write_all(bytes).await) }).await.map_err(std::io::Error::from)?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<T: Send + 'static>(
        make: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
    ) -> T {
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move { make().await })
            .expect("executor starts")
            .join()
            .expect("executor ends")
    }

    /// Every block the reader gives for `body`, with its `last` flag.
    async fn blocks(body: &Body, path: &StoredBody) -> Vec<(Vec<u8>, bool)> {
        let mut reader = ChunkReader::default();
        let mut out = Vec::new();
        loop {
            let (block, last) = reader.next(body, path).await.expect("read");
            assert!(block.len() <= BDAT_CHUNK_BYTES_MAX);
            out.push((block, last));
            if last {
                break;
            }
            assert!(out.len() < 100, "no last block");
        }
        reader.close().await;
        out
    }

    fn content(len: usize) -> Vec<u8> {
        // Binary: every octet value, CR and LF alone, dots at line starts.
        (0..len).map(|i| [0u8, b'\r', b'.', b'\n', 0xff, b'\n', b'.', (i % 251) as u8][i % 8]).collect()
    }

    #[test]
    fn chunk_reader_gives_the_content_exactly_and_marks_the_last_block() {
        let dir = std::env::temp_dir().join(format!("ringpost-chunks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let max = BDAT_CHUNK_BYTES_MAX;
        let sizes = [0, 1, max - 1, max, max + 1, 3 * max + 17];
        let dir_for_run = dir.clone();
        run(move || {
            Box::pin(async move {
                for len in sizes {
                    let bytes = content(len);
                    let path = dir_for_run.join(format!("body-{len}"));
                    std::fs::write(&path, &bytes).unwrap();
                    let file = Body::File { size_bytes: len as u64, checksum: 0 };
                    let inline = Body::Inline(bytes.clone().into());
                    for body in [&inline, &file] {
                        let got = blocks(body, &StoredBody::file(&path, len as u64)).await;
                        let joined: Vec<u8> = got.iter().flat_map(|(b, _)| b.clone()).collect();
                        assert_eq!(joined, bytes, "{len} octets");
                        assert!(got[..got.len() - 1].iter().all(|(b, last)| !last && b.len() == BDAT_CHUNK_BYTES_MAX));
                        assert_eq!(got.len(), len.div_ceil(BDAT_CHUNK_BYTES_MAX).max(1), "{len} octets");
                    }
                }
            })
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn transaction_carries_the_body_type_of_the_envelope() {
        use crate::queue::{RcptState, Recipient};
        let env = |body_8bit, body_binary| Envelope {
            id: "0000000000000001".to_string(),
            sender: ReversePath::Path(crate::queue::stored_address("a@example.org").unwrap()),
            recipients: ["b@example.net", "c@example.net"]
                .iter()
                .map(|a| Recipient {
                    address: crate::queue::stored_address(a).unwrap(),
                    state: RcptState::Pending,
                    last_reply: String::new(),
                    folder: None,
                    dsn: Default::default(),
                })
                .collect(),
            arrival_unix_ms: 0,
            next_retry_unix_ms: 0,
            attempt_count: 0,
            size_bytes: 3,
            body_8bit,
            body_binary,
            smtputf8: false,
            client: "".into(),
            helo: "".into(),
            body: Body::Inline(b"abc".to_vec().into()),
            headers_prepended: Vec::new(),
            replica_of: None,
            held: false,
            auth: None,
            dsn: Default::default(),
            delay_warned: false,
        };
        assert_eq!(transaction(&env(false, false), &[0]).body, BodyType::SevenBit);
        assert_eq!(transaction(&env(true, false), &[0]).body, BodyType::EightBitMime);
        assert_eq!(transaction(&env(true, true), &[1]).body, BodyType::BinaryMime);
        assert_eq!(transaction(&env(false, true), &[1]).body, BodyType::BinaryMime);
        assert_eq!(transaction(&env(false, true), &[1]).recipients, vec!["c@example.net".to_string()]);
    }
}
