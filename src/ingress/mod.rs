//! The socket side of inbound SMTP: accept loops and session drivers.
//!
//! Place in the pipeline: first stage. A session driver owns one TCP
//! connection and one sans-IO [`Server`] machine; it moves bytes between
//! them, answers the machine's MAIL/RCPT questions with [`policy`], streams
//! message content into the queue while it is received, and sends the reply
//! to the final dot only after the data-callout stages (`crate::scan`) have
//! passed it and the queue has made it durable. The session never talks to
//! delivery: the queue hands committed messages on.

pub mod filters;
pub mod listener;
pub mod policy;
#[cfg(test)]
mod tests;
pub mod vacation;

use std::cell::RefCell;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_lite::{AsyncRead, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use crate::log;
use crate::queue::{Body, Envelope, MessageWriter, QueueError, Recipient};
use crate::scan::{replicate as replica, Verdict};
use crate::shard::{Phase, Shard};
use crate::smtp::reply::{Enhanced, Reply};
use crate::smtp::server::{Event, PeerInfo, Server};
use crate::tls::Stream;

/// Bytes read from the socket at a time; the SMTP machine's input buffer
/// holds at most one read.
const READ_BYTES: usize = 16 * 1024;

thread_local! {
    /// The shard's one read buffer. A read borrows it only inside a poll
    /// that found bytes on the socket, and the bytes go to the session's
    /// machine before the poll returns; so a session waiting for input
    /// holds no buffer, and one buffer serves every session of the shard
    /// (a shard is one thread, which runs one poll at a time).
    static READ_BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; READ_BYTES].into_boxed_slice());
}

/// Accepts connections on one listener until the shard starts draining;
/// its sessions run as `listening` says (role, TLS, relay, front line).
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, listening: Rc<listener::Listening>) {
    loop {
        let accepted = {
            let phase_changed = shard.phase_listener();
            if shard.phase() != Phase::Running {
                break;
            }
            let accept = async { Some(listener.accept().await) };
            let stop = async {
                phase_changed.await;
                None
            };
            futures_lite::future::or(accept, stop).await
        };
        let stream = match accepted {
            None => continue, // phase changed; the loop head re-checks it
            Some(Ok(stream)) => stream,
            Some(Err(e)) => {
                log::event("accept_error", &[("shard", &shard.index), ("error", &e)]);
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if shard.sessions_active() >= shard.config().server.max_sessions_per_shard {
            glommio::spawn_local_into(refuse_busy(stream), shard.tq_smtp).map(|t| t.detach()).ok();
            continue;
        }
        // The client's place in the per-client table, given back when the
        // session's task ends, however it ends.
        let guard = match stream.peer_addr() {
            Ok(peer) => match shard.limits.connect(peer.ip(), crate::limits::now_ms()) {
                Ok(guard) => guard,
                Err(refusal) => {
                    crate::stats::count(crate::stats::Class::RateLimited);
                    log::event("rate_limited", &[("client", &peer), ("limit", &refusal.name())]);
                    glommio::spawn_local_into(refuse(stream, refusal.reply(peer.ip())), shard.tq_smtp)
                        .map(|t| t.detach())
                        .ok();
                    continue;
                }
            },
            Err(_) => None,
        };
        shard.session_started();
        let session_shard = shard.clone();
        let listening = listening.clone();
        let task = glommio::spawn_local_into(
            async move {
                let _guard = guard;
                run_session(&session_shard, stream, &listening).await;
                session_shard.session_ended();
            },
            shard.tq_smtp,
        );
        match task {
            Ok(task) => {
                task.detach();
            }
            Err(e) => {
                shard.session_ended();
                log::event("spawn_error", &[("error", &e)]);
            }
        };
    }
}

async fn refuse_busy(mut stream: TcpStream) {
    let mut out = Vec::new();
    Reply::new(421, Enhanced(4, 3, 2), "Too many connections, try again later").write_to(&mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.close().await;
}

async fn refuse(mut stream: TcpStream, reply: Reply) {
    let mut out = Vec::new();
    reply.write_to(&mut out);
    let _ = stream.write_all(&out).await;
    let _ = stream.close().await;
}

/// What the session waits for besides input.
enum Wake {
    /// Bytes read and fed to the machine (0: the client closed).
    Input(std::io::Result<usize>),
    Timeout,
    PhaseChanged,
}

/// A message being received in the current transaction.
struct Incoming {
    writer: Option<MessageWriter>,
    id: String,
    error: Option<QueueError>,
}

async fn run_session(shard: &Shard, tcp: TcpStream, listening: &listener::Listening) {
    let (peer, local) = match (tcp.peer_addr(), tcp.local_addr()) {
        (Ok(p), Ok(l)) => (p, l),
        _ => return,
    };
    let config = shard.config();
    let _ = tcp.set_write_timeout(Some(config.smtp.command_timeout.0));
    let mut stream = Stream::Plain(tcp);
    let started = Instant::now();
    // Written with the lines of the other tasks of this executor turn.
    log::defer("connect", &[("shard", &shard.index), ("client", &peer)]);
    log::written().await;
    let mut machine = Server::new(listening.params(shard), PeerInfo { addr: peer, local }, started);
    listening.prepare(&mut machine);
    if config.replicate.accept_from.iter().any(|net| net.contains(peer.ip())) {
        machine.offer_replicas();
    }
    if config.policy.front.strict_pipelining {
        machine.strict_pipelining();
    }
    drop(config);
    let mut incoming: Option<Incoming> = None;
    // The listener for the shard's phase the waits for input share.
    let mut phase_changed: Option<event_listener::EventListener> = None;
    // From an accepted MAIL until the envelope is staged: tells the
    // committer a record is coming (queue.commit_delay_us).
    let mut expected: Option<crate::queue::RecordExpected> = None;
    let mut messages_accepted: u32 = 0;
    // An access table said DISCARD for a recipient of this transaction.
    let mut discard = false;
    // The Sieve decisions of this transaction (crate::ingress::filters).
    let mut sieve: Option<Box<filters::Txn>> = None;
    let mut close_reason = "quit";
    // The routers this session decides with; a SIGHUP reaches new sessions.
    let routing = crate::route::current_with_routers();
    // Implicit TLS (RFC 8314): the handshake before the greeting.
    if let Err(reason) = Box::pin(listening.start_tls(shard, &mut stream, &mut machine, peer)).await {
        log::event("disconnect", &[("shard", &shard.index), ("client", &peer), ("reason", &reason)]);
        return;
    }
    // Failed AUTH attempts of this session (crate::sasl).
    let mut auth_failures: u32 = 0;
    // A SCRAM exchange between its steps (boxed: one pointer when idle).
    let mut scram: Option<Box<listener::ScramSession>> = None;
    // The front line's checks before the greeting (crate::frontline),
    // where the listener runs them.
    let admitted = match listening.listener.frontline {
        true => crate::frontline::admit(shard, &mut stream, peer).await,
        false => Ok(crate::frontline::Session::default()),
    };
    let mut front = match admitted {
        Ok(front) => front,
        Err(reason) => {
            // Refused instead of the greeting: the machine closes silently.
            close_reason = reason;
            machine.take_output();
            machine.on_eof();
            crate::frontline::Session::default()
        }
    };
    loop {
        if expected.is_some() && !machine.in_transaction() {
            expected = None;
        }
        if discard && !machine.in_transaction() {
            discard = false;
        }
        if sieve.is_some() && !machine.in_transaction() {
            sieve = None;
        }
        match machine.poll(Instant::now()) {
            Event::NeedInput => {
                if shard.phase() == Phase::Closing
                    || (shard.phase() == Phase::Draining && !machine.in_transaction())
                {
                    machine.shutdown();
                    close_reason = "shutdown";
                    continue;
                }
                if flush(&mut stream, &mut machine).await.is_err() {
                    close_reason = "write_error";
                    break;
                }
                match wait_input(shard, &mut stream, &mut machine, &mut phase_changed).await {
                    Wake::Input(Ok(0)) => {
                        close_reason = "client_closed";
                        break;
                    }
                    Wake::Input(Ok(_)) => {}
                    Wake::Input(Err(_)) => {
                        close_reason = "read_error";
                        break;
                    }
                    Wake::Timeout => {
                        close_reason = "timeout";
                        machine.on_timeout(Instant::now());
                    }
                    Wake::PhaseChanged => {}
                }
            }
            Event::Helo { name, esmtp } => {
                log::event("helo", &[("client", &peer), ("helo", &name), ("esmtp", &esmtp)]);
                front.on_helo(shard, &name, peer, machine.peer().local);
            }
            Event::Mail { reverse_path, params } => {
                // A replica's sender and recipients were checked by the
                // origin, which accepted the message.
                let reply = match params.replica_of {
                    Some(_) => Reply::new(250, Enhanced(2, 1, 0), "Ok"),
                    None if front.refuses_mail() => front.mail_refusal(peer),
                    None => match listener::sender_login_refusal(&machine, &reverse_path, peer) {
                        Some(refusal) => refusal,
                        None => Box::pin(check_sender(shard, routing.as_deref(), &machine, peer, &reverse_path)).await,
                    },
                };
                if reply.is_positive() {
                    expected = Some(shard.queue.expect_record());
                }
                machine.decide(reply);
            }
            Event::Rcpt { forward_path, .. } => {
                // The sender of the transaction the machine holds (not kept
                // beside it: every byte of the session's state is paid by
                // every idle session).
                let sender = match machine.transaction().map(|t| &t.reverse_path) {
                    Some(crate::smtp::address::ReversePath::Path(a)) => a.to_string(),
                    _ => String::new(),
                };
                let replica = machine.transaction().is_some_and(|t| t.params.replica_of.is_some());
                let reply = match replica {
                    true => Reply::new(250, Enhanced(2, 1, 5), "Ok"),
                    false if front.refuses_rcpt(&forward_path) => front.rcpt_refusal(peer),
                    false => match front_rcpt(shard, &machine, peer, front.client_name(), &forward_path, &sender) {
                        Front::Refuse(reply) => reply,
                        Front::Discard => {
                            discard = true;
                            Reply::new(250, Enhanced(2, 1, 5), "Recipient ok")
                        }
                        Front::Continue => policy::check_rcpt_relaying(
                            &shard.config(),
                            routing.as_deref(),
                            Some(&shard.verifier),
                            listening.relay_allowed(&shard.config(), peer.ip(), machine.authenticated()),
                            &forward_path,
                            &sender,
                        )
                        .await,
                    },
                };
                // A local recipient's Sieve script decides last (boxed: its
                // state must not size every idle session).
                let reply = match reply.is_positive() && !replica && !discard && shard.config().sieve.is_some() {
                    true => {
                        let filtering =
                            Box::pin(sieve_rcpt(shard, routing.as_deref(), &mut sieve, peer, &forward_path, &sender));
                        filtering.await.unwrap_or(reply)
                    }
                    false => reply,
                };
                if !reply.is_positive() && reply.enhanced.is_some_and(|e| e.0 == 5 && e.1 == 1) {
                    crate::stats::count(crate::stats::Class::InvalidRecipient);
                }
                if reply.is_positive() {
                    crate::metrics::RECIPIENTS_ACCEPTED.inc();
                }
                if !reply.is_positive() {
                    log::event(
                        "rcpt_refused",
                        &[("client", &peer), ("to", &forward_path), ("reply", &reply.summary())],
                    );
                }
                machine.decide(reply);
            }
            Event::DataStart => incoming = Some(start_message(shard, &machine, peer, stream.describe()).await),
            Event::Body(chunk) => {
                if let Some(m) = incoming.as_mut() {
                    write_body(m, &chunk).await;
                }
            }
            Event::DataEnd => {
                expected = None;
                let reply = match incoming.take() {
                    Some(m) if discard => {
                        if let Some(w) = m.writer {
                            w.abort().await;
                        }
                        log::event("discarded", &[("id", &m.id), ("client", &peer)]);
                        Reply::new(250, Enhanced(2, 0, 0), format!("Ok: queued as {}", m.id))
                    }
                    Some(m) => {
                        // Boxed, allocated for the final dot only: its state
                        // (the envelope, the writer's commit) would otherwise
                        // size every idle session's task (2.9 KiB of it).
                        let finishing = Box::pin(finish_timed(shard, &machine, peer, m, sieve.take()));
                        finishing.await
                    }
                    None => QueueError::Io(std::io::Error::other("no message in progress")).reply(),
                };
                if reply.is_positive() {
                    messages_accepted += 1;
                }
                machine.decide(reply);
                end_if_draining(shard, &mut machine);
            }
            Event::DataAborted { reply } => {
                if let Some(m) = incoming.take() {
                    log::event("message_refused", &[("id", &m.id), ("client", &peer), ("reply", &reply.summary())]);
                    if let Some(w) = m.writer {
                        w.abort().await;
                    }
                }
                end_if_draining(shard, &mut machine);
            }
            Event::Pending => {
                debug_assert!(false, "every question is answered before polling again");
                break;
            }
            Event::Close => {
                if machine.pipelining_violated() {
                    log::event("improper_pipelining", &[("client", &peer)]);
                    close_reason = "improper_pipelining";
                }
                let _ = flush(&mut stream, &mut machine).await;
                break;
            }
            Event::Auth { mechanism, credentials } => {
                let tls = machine.tls_active();
                let checking = Box::pin(listener::check_auth(shard, peer, mechanism, credentials, tls, auth_failures));
                let (reply, failed) = checking.await;
                if failed {
                    auth_failures = auth_failures.saturating_add(1);
                }
                if reply.code == 421 {
                    close_reason = "auth_failures";
                }
                machine.decide(reply);
            }
            Event::AuthStep { first, data, .. } => {
                let stepping = Box::pin(listener::scram_step(shard, peer, &mut scram, first, data, auth_failures));
                let (reply, login, failed) = stepping.await;
                if failed {
                    auth_failures = auth_failures.saturating_add(1);
                }
                if reply.code == 421 {
                    close_reason = "auth_failures";
                }
                if let Some(login) = login {
                    machine.set_auth_login(&login);
                }
                machine.decide(reply);
            }
            Event::ReplicaDone { ids } => {
                shard.held.note_done(&ids, shard.queue.clock().unix_ms());
            }
            Event::ReplicaTaken { shard: origin_shard } => {
                machine.decide(shard.held.taken_reply(origin_shard, shard.queue.clock().unix_ms()));
            }
            Event::StartTls => {
                let Some(config) = shard.tls_server() else {
                    debug_assert!(false, "STARTTLS is offered only with a server configuration");
                    break;
                };
                if flush(&mut stream, &mut machine).await.is_err() {
                    close_reason = "write_error";
                    break;
                }
                match stream.accept(config).await {
                    Ok(()) => {
                        let tls = stream.describe().unwrap_or_default();
                        log::event("tls", &[("client", &peer), ("tls", &tls)]);
                        machine.tls_started(Instant::now());
                    }
                    Err(e) => {
                        log::event("tls_failed", &[("client", &peer), ("error", &e)]);
                        close_reason = "tls_failed";
                        break;
                    }
                }
            }
        }
    }
    if let Some(m) = incoming.take() {
        if let Some(w) = m.writer {
            w.abort().await;
        }
    }
    let _ = stream.close().await;
    log::defer(
        "disconnect",
        &[
            ("shard", &shard.index),
            ("client", &peer),
            ("reason", &close_reason),
            ("messages", &messages_accepted),
            ("duration_ms", &started.elapsed().as_millis()),
        ],
    );
    log::written().await;
}

/// While draining, a session whose transaction just ended gets 421 instead
/// of a reply to its next command.
fn end_if_draining(shard: &Shard, machine: &mut Server) {
    if shard.phase() != Phase::Running {
        machine.shutdown();
    }
}

/// The Sieve script of a local recipient at RCPT: its refusal, if any
/// (else the decision is kept in `txn` for the final dot).
async fn sieve_rcpt(
    shard: &Shard,
    routing: Option<&crate::route::Engine>,
    txn: &mut Option<Box<filters::Txn>>,
    peer: SocketAddr,
    rcpt: &crate::smtp::address::Address,
    sender: &str,
) -> Option<Reply> {
    let filters = filters::current()?;
    let config = shard.config();
    let user = filters.local_user(&config, routing, rcpt, sender).await?;
    match filters.at_rcpt(txn, rcpt, user, sender, peer.ip()).await {
        Ok(()) => None,
        Err(reply) => {
            if reply.code >= 500 {
                crate::stats::count(crate::stats::Class::InvalidRecipient);
            }
            log::event("sieve_refused", &[("client", &peer), ("to", rcpt), ("reply", &reply.summary())]);
            Some(reply)
        }
    }
}

/// What the front line's checks (access tables, the recipient rate)
/// decided for one RCPT before the relay and routing checks.
enum Front {
    Continue,
    Discard,
    Refuse(Reply),
}

/// The access tables (`crate::access`), then the client's recipient rate
/// (`crate::limits`); each refusal is counted by its class.
fn front_rcpt(
    shard: &Shard,
    machine: &Server,
    peer: SocketAddr,
    client_name: Option<&str>,
    rcpt: &crate::smtp::address::Address,
    sender: &str,
) -> Front {
    use crate::access::{Decision, Which};
    use crate::stats::{count, Class};
    if let Some(access) = crate::access::current() {
        // The client's name was looked up (forward-confirmed) when it
        // connected, if the client table is in use.
        let recipient = rcpt.to_string();
        match access.check(peer.ip(), client_name, machine.helo_name(), sender, &recipient) {
            (Decision::Continue, _) => {}
            (Decision::Discard, _) => return Front::Discard,
            (Decision::Refuse(reply), which) => {
                match which {
                    Some(Which::Sender) => count(Class::InvalidSender),
                    // (a 5.1.x reply is counted with the other refused RCPTs)
                    Some(Which::Recipient) if !reply.enhanced.is_some_and(|e| e.0 == 5 && e.1 == 1) => {
                        count(Class::InvalidRecipient)
                    }
                    _ => {}
                }
                return Front::Refuse(reply);
            }
        }
    }
    if let Err(refusal) = shard.limits.take_recipient(peer.ip(), crate::limits::now_ms()) {
        count(Class::RateLimited);
        log::event("rate_limited", &[("client", &peer), ("limit", &refusal.name())]);
        return Front::Refuse(refusal.reply(peer.ip()));
    }
    Front::Continue
}

async fn flush(stream: &mut Stream, machine: &mut Server) -> std::io::Result<()> {
    let out = machine.take_output();
    if !out.is_empty() {
        stream.write_all(&out).await?;
    }
    Ok(())
}

/// Reads once into the machine, unless the machine's deadline passes or
/// the shard's phase changes in a way that concerns this session first.
///
/// `phase_changed` is the session's listener for the shard's phase, kept
/// from one wait to the next (one allocation per session, not per wait)
/// and dropped once it has fired: a change it heard while the session was
/// busy wakes the next wait at once, which then looks at the phase.
async fn wait_input(
    shard: &Shard,
    stream: &mut Stream,
    machine: &mut Server,
    phase_changed: &mut Option<event_listener::EventListener>,
) -> Wake {
    let (deadline, in_transaction) = (machine.deadline(), machine.in_transaction());
    let phase = shard.phase();
    let listener = phase_changed.get_or_insert_with(|| shard.phase_listener());
    if shard.phase() != phase {
        *phase_changed = None;
        return Wake::PhaseChanged;
    }
    let wait = deadline.saturating_duration_since(Instant::now());
    let read = async { Wake::Input(ReadInto { stream, machine }.await) };
    let timer = async {
        glommio::timer::sleep(wait).await;
        Wake::Timeout
    };
    let watch_phase = phase == Phase::Running || (phase == Phase::Draining && in_transaction);
    let phase_wait = async {
        if watch_phase {
            listener.await;
            Wake::PhaseChanged
        } else {
            futures_lite::future::pending().await
        }
    };
    let wake = futures_lite::future::or(read, futures_lite::future::or(timer, phase_wait)).await;
    if matches!(wake, Wake::PhaseChanged) {
        *phase_changed = None;
    }
    wake
}

/// One read from the socket into the machine, through the shard's read
/// buffer. The streams under `Stream` wait for readability without a
/// buffer (glommio's unbuffered TCP and Unix streams poll for readiness,
/// then receive; rustls keeps its records in its own state), so the buffer
/// is taken only while bytes are copied, and dropping this future between
/// polls loses nothing.
struct ReadInto<'a> {
    stream: &'a mut Stream,
    machine: &'a mut Server,
}

impl Future for ReadInto<'_> {
    type Output = std::io::Result<usize>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        READ_BUFFER.with(|cell| {
            // Invariant: a poll of one session never runs inside another's.
            let mut buf = cell.borrow_mut();
            assert_eq!(buf.len(), READ_BYTES);
            let read = Pin::new(&mut *this.stream).poll_read(cx, &mut buf[..]);
            if let Poll::Ready(Ok(n)) = read {
                assert!(n <= READ_BYTES);
                this.machine.feed(&buf[..n]);
            }
            read
        })
    }
}

/// The reply to MAIL FROM: the sender policy, then SPF (`[email_auth]`)
/// for a sender it accepted. Boxed by the session: its state is not in
/// every session's.
async fn check_sender(
    shard: &Shard,
    routing: Option<&crate::route::Engine>,
    machine: &Server,
    peer: SocketAddr,
    sender: &crate::smtp::address::ReversePath,
) -> Reply {
    let reply = policy::check_mail(routing, sender).await;
    if !reply.is_positive() {
        // A lookup that failed (4xx) says nothing of the sender.
        if reply.code >= 500 {
            crate::stats::count(crate::stats::Class::InvalidSender);
        }
        return reply;
    }
    let stages = shard.stages();
    let reply = match stages.auth() {
        Some(auth) => {
            let helo = machine.helo_name().unwrap_or_default();
            auth.check_mail(peer.ip(), helo, sender).await.unwrap_or(reply)
        }
        None => reply,
    };
    if !reply.is_positive() {
        return reply;
    }
    if let Err(refusal) = shard.limits.take_message(peer.ip(), crate::limits::now_ms()) {
        crate::stats::count(crate::stats::Class::RateLimited);
        log::event("rate_limited", &[("client", &peer), ("limit", &refusal.name())]);
        return refusal.reply(peer.ip());
    }
    reply
}

async fn start_message(shard: &Shard, machine: &Server, peer: SocketAddr, tls: Option<String>) -> Incoming {
    // A replica keeps the id derived from its origin's, and its content as
    // the origin would deliver it (the origin's Received line included).
    if let Some(origin) = machine.transaction().and_then(|t| t.params.replica_of.as_deref()) {
        return match replica::replica_id(origin).and_then(|id| shard.queue.create_with_id(&id)) {
            Some(writer) => Incoming { id: writer.id().to_string(), writer: Some(writer), error: None },
            None => {
                let e = QueueError::Io(std::io::Error::other(format!("replica of {origin} is held already")));
                log::event("queue_error", &[("client", &peer), ("error", &e)]);
                Incoming { writer: None, id: String::new(), error: Some(e) }
            }
        };
    }
    let mut writer = match shard.queue.create().await {
        Ok(w) => w,
        Err(e) => {
            log::event("queue_error", &[("client", &peer), ("error", &e)]);
            return Incoming { writer: None, id: String::new(), error: Some(e) };
        }
    };
    let id = writer.id().to_string();
    let single_rcpt = machine.transaction().and_then(|t| match t.recipients.as_slice() {
        [one] => Some(one.to_string()),
        _ => None,
    });
    let header = crate::smtp::received::received_header(
        &shard.config().server.hostname,
        peer,
        machine.helo_name(),
        machine.protocol(),
        &id,
        single_rcpt.as_deref(),
        tls.as_deref(),
        shard.queue.clock().system_time(),
    );
    let mut m = Incoming { writer: None, id, error: None };
    if let Err(e) = writer.write(header.as_bytes()).await {
        writer.abort().await;
        m.error = Some(e);
    } else {
        m.writer = Some(writer);
    }
    m
}

async fn write_body(m: &mut Incoming, chunk: &[u8]) {
    crate::metrics::RECEIVED_BYTES.add(chunk.len() as u64);
    let Some(writer) = m.writer.as_mut() else { return };
    if let Err(e) = writer.write(chunk).await {
        log::event("queue_error", &[("id", &m.id), ("error", &e)]);
        if let Some(w) = m.writer.take() {
            w.abort().await;
        }
        m.error = Some(e);
    }
}

/// [`finish_message`], its time from the final dot to a 250 observed.
async fn finish_timed(
    shard: &Shard,
    machine: &Server,
    peer: SocketAddr,
    m: Incoming,
    sieve: Option<Box<filters::Txn>>,
) -> Reply {
    let started = Instant::now();
    let reply = finish_message(shard, machine, peer, m, sieve).await;
    if reply.is_positive() {
        crate::metrics::FINAL_DOT_LATENCY.since(started);
    }
    reply
}

async fn finish_message(
    shard: &Shard,
    machine: &Server,
    peer: SocketAddr,
    m: Incoming,
    sieve: Option<Box<filters::Txn>>,
) -> Reply {
    if let Some(e) = m.error {
        return e.reply();
    }
    let (Some(mut writer), Some(txn)) = (m.writer, machine.transaction()) else {
        return QueueError::Io(std::io::Error::other("transaction lost")).reply();
    };
    let now_ms = shard.queue.clock().unix_ms();
    let mut env = Envelope {
        id: m.id,
        sender: txn.reverse_path.clone(),
        recipients: Recipient::pending_of(txn),
        arrival_unix_ms: now_ms,
        next_retry_unix_ms: now_ms,
        attempt_count: 0,
        size_bytes: writer.size_bytes(),
        // Declared, or octets above 127 seen in the content (RFC 6152 §3).
        body_8bit: txn.body_8bit(),
        body_binary: txn.body_binary(),
        smtputf8: txn.params.smtputf8,
        client: peer.ip().to_string().into(),
        helo: machine.helo_name().unwrap_or_default().into(),
        body: Body::Inline(Default::default()),
        headers_prepended: Vec::new(),
        replica_of: txn.params.replica_of.clone(),
        held: false,
        auth: machine.authenticated().map(Into::into),
        dsn: txn.params.dsn.clone(),
        delay_warned: false,
    };
    let replica = env.replica_of.is_some();
    if replica {
        // Held untried until the origin has been silent this long.
        env.next_retry_unix_ms = now_ms + shard.config().replicate.takeover_after.0.as_millis() as u64;
        shard.held.heard(now_ms);
    }
    let sieve = sieve.filter(|_| !replica);
    let stages = shard.stages();
    // The Sieve scripts and the data-callout stages see the whole message
    // before its commit (a replica passed them at its origin).
    if !replica && (!stages.is_empty() || sieve.is_some()) {
        match writer.body_before_commit().await {
            Ok(body) => {
                env.body = body;
                env.size_bytes = writer.size_bytes();
            }
            Err(e) => {
                log::event("queue_error", &[("id", &env.id), ("client", &peer), ("error", &e)]);
                writer.abort().await;
                return e.reply();
            }
        }
    }
    // What the scripts leave for after the commit (vacation responses):
    // one pointer in the session's state, as the session pays for each
    // byte kept across the commit.
    let mut after: Option<Box<filters::AfterCommit>> = None;
    if let Some(txn) = sieve {
        // Bound first: a future built inside the awaiting statement would
        // keep its unboxed storage in the session's state.
        let deciding = Box::pin(filters::at_final_dot(&shard.queue, txn, &mut env, peer));
        match deciding.await {
            filters::FinalDot::Continue(pending) => after = pending,
            filters::FinalDot::Reply(reply) => {
                writer.abort().await;
                return reply;
            }
        }
    }
    if !replica && !stages.is_empty() {
        // Boxed, and allocated only when a stage runs: a stage's state
        // (early delivery holds a whole outbound attempt, about 35 KiB) is
        // the largest a session can be in, and an unboxed one would size
        // every idle session's task by it.
        match Box::pin(stages.at_final_dot(&mut env)).await {
            Verdict::Continue => {}
            Verdict::Done(reply) => {
                writer.abort().await;
                if reply.is_positive() {
                    crate::stats::count(crate::stats::Class::Accepted);
                    if let Some(after) = after {
                        let sending = Box::pin(after.send(&shard.queue, &env.id));
                        sending.await;
                    }
                }
                return reply;
            }
            Verdict::Refuse(reply) => {
                log::event("message_refused", &[("id", &env.id), ("client", &peer), ("reply", &reply.summary())]);
                writer.abort().await;
                return reply;
            }
        }
    }
    let id = env.id.clone();
    // The log's recipient list, in one string (the envelope goes to the queue).
    let to_bytes = env
        .recipients
        .iter()
        .map(|r| r.address.local_part.len() + r.address.domain.as_ref().map_or(0, |d| d.len()) + 2);
    let mut to = String::with_capacity(to_bytes.sum());
    for r in &env.recipients {
        if !to.is_empty() {
            to.push(',');
        }
        let _ = write!(to, "{}", r.address);
    }
    let from = env.sender.to_string();
    let size_bytes = writer.size_bytes();
    match writer.commit(&shard.queue, env).await {
        Ok(()) if replica => {
            log::event("replica_stored", &[("id", &id), ("client", &peer), ("from", &from), ("to", &to)]);
            Reply::new(250, Enhanced(2, 0, 0), format!("Ok: replica held as {id}"))
        }
        Ok(()) => {
            crate::stats::count(crate::stats::Class::Accepted);
            if let Some(after) = after {
                let sending = Box::pin(after.send(&shard.queue, &id));
                sending.await;
            }
            // The line is written before the reply goes out, in one write
            // with the lines of the other messages the same flush made durable.
            log::defer(
                "queued",
                &[
                    ("id", &id),
                    ("client", &peer),
                    ("from", &from),
                    ("to", &to),
                    ("size", &size_bytes),
                ],
            );
            log::written().await;
            Reply::new(250, Enhanced(2, 0, 0), format!("Ok: queued as {id}"))
        }
        Err(e) => {
            log::event("queue_error", &[("id", &id), ("client", &peer), ("error", &e)]);
            // Its replica, if the peer holds one, is not needed.
            if let Some(replicator) = stages.replicator() {
                replicator.note_done(&id);
            }
            e.reply()
        }
    }
}

#[cfg(test)]
mod session_tests {
    use super::*;
    use std::sync::Arc;

    /// A session's task is allocated at the size of its future's largest
    /// state, whichever state it is in, so this is most of what an idle
    /// session costs (perf/capacity measures the rest: glommio's readiness
    /// source, about 0.5 KiB). The reply to the final dot (the envelope,
    /// the commit, 2.9 KiB; inside it the data-callout stages, boxed again),
    /// the Sieve work at RCPT and the message writer's slow paths (content
    /// past the inline limit, a message given up: 1.1 KiB together) are
    /// boxed and allocated only while they run; what stays inline is the
    /// machine, the stream, the front line's and the transaction's pointers
    /// and the smaller awaits, about 2.7 KiB. The bound is close above it,
    /// so that growth is seen.
    const SESSION_FUTURE_BYTES_MAX: usize = 2816;
    /// What waiting for input adds to the session's state: no read buffer.
    const WAIT_INPUT_FUTURE_BYTES_MAX: usize = 256;

    /// The size of the future an async fn of a shard and a socket returns.
    fn future_bytes<'a, F>(_: fn(&'a Shard, TcpStream, &'a listener::Listening) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn session_future_bytes() {
        let session_bytes = future_bytes(run_session);
        type Listener = Option<event_listener::EventListener>;
        fn wait<'a>(
            shard: &'a Shard,
            stream: &'a mut Stream,
            machine: &'a mut Server,
            phase: &'a mut Listener,
        ) -> impl Future + 'a {
            wait_input(shard, stream, machine, phase)
        }
        fn wait_bytes<'a, F>(_: fn(&'a Shard, &'a mut Stream, &'a mut Server, &'a mut Listener) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let wait_input_bytes = wait_bytes(wait);
        eprintln!("run_session future: {session_bytes} bytes; wait_input future: {wait_input_bytes} bytes");
        assert!(session_bytes <= SESSION_FUTURE_BYTES_MAX, "run_session future: {session_bytes} bytes");
        assert!(wait_input_bytes <= WAIT_INPUT_FUTURE_BYTES_MAX, "wait_input future: {wait_input_bytes} bytes");
    }

    /// A read waits for the socket without the shard's buffer, loses
    /// nothing when dropped while waiting, and hands what it read to the
    /// machine; the end of the stream reads 0.
    #[test]
    fn read_feeds_the_machine() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                let mut client = TcpStream::connect(addr).await.unwrap();
                let tcp = listener.accept().await.unwrap();
                let peer = PeerInfo { addr: tcp.peer_addr().unwrap(), local: addr };
                let mut stream = Stream::Plain(tcp);
                let params = Arc::new(crate::shard::server_params(&crate::config::Config::default()));
                let mut machine = Server::new(params, peer, Instant::now());
                assert_eq!(machine.poll(Instant::now()), Event::NeedInput);
                assert!(!machine.take_output().is_empty(), "the greeting");

                let waiting = futures_lite::future::poll_once(ReadInto { stream: &mut stream, machine: &mut machine });
                assert!(waiting.await.is_none(), "nothing sent yet");
                assert!(READ_BUFFER.with(|cell| cell.try_borrow_mut().is_ok()), "no buffer held while waiting");

                client.write_all(b"EHLO client.test\r\n").await.unwrap();
                let n = ReadInto { stream: &mut stream, machine: &mut machine }.await.unwrap();
                assert_eq!(n, b"EHLO client.test\r\n".len());
                assert_eq!(machine.poll(Instant::now()), Event::Helo { name: "client.test".to_string(), esmtp: true });

                client.close().await.unwrap();
                let n = ReadInto { stream: &mut stream, machine: &mut machine }.await.unwrap();
                assert_eq!(n, 0);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
