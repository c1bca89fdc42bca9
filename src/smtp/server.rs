//! The SMTP server state machine (RFC 5321 with PIPELINING, SIZE, 8BITMIME,
//! ENHANCEDSTATUSCODES, SMTPUTF8, CHUNKING, BINARYMIME and DSN), sans-IO: the
//! driver feeds received bytes and the current time, and takes back replies
//! to write and events to act on. No sockets, no timers, no async here.
//!
//! Place in the pipeline: `src/ingress/` owns the socket and runs one
//! `Server` per connection; every question that needs policy (accept this
//! sender? this recipient? is the message safely queued?) comes out as an
//! event and waits for `decide()`. The machine itself enforces the protocol
//! limits: command line length, recipient count, message size, text line
//! length, bare CR/LF, NUL, error count and timeouts.
//!
//! Bounds: the input buffer holds at most one incomplete command line
//! (< `COMMAND_LINE_BYTES_MAX`, or `PARAMETER_LINE_BYTES_MAX` for MAIL and
//! RCPT) plus one read of the driver, and never more
//! than `INPUT_BYTES_MAX`; content leaves in `Body` chunks of at most
//! `BODY_CHUNK_BYTES_MAX` (+ `BODY_CHUNK_SLACK_BYTES`); at most
//! `EVENT_QUEUE_MAX` events wait. An idle session (between transactions,
//! nothing buffered) keeps no input buffer above `INPUT_IDLE_BYTES_MAX`, no
//! event queue and no content state (`retained_heap_bytes()`).
//!
//! Content ends only at `<CR><LF>.<CR><LF>` on the wire (RFC 5321 §4.1.1.4);
//! a bare CR or LF never starts or ends a line for that purpose, so no
//! variant such as `<LF>.<LF>` can end a message early and smuggle a second
//! one past the filters of this or the next hop (RFC 5321 §2.3.8). With
//! `BareLfPolicy::Normalize` a bare CR or LF is stored as CRLF, and a line
//! that holds only a dot and ends that way is stored as the line `.`
//! (content, which delivery stuffs again). A command line must end in CRLF
//! too: under `Reject` a bare LF gets 500 5.5.2 and the line is not run.
//!
//! NUL octets in text content (DATA, and BDAT without BODY=BINARYMIME) are
//! refused (550 5.6.0 after the end of the content) or removed
//! (`NulPolicy`): a next hop that drops NULs before it looks for the end of
//! data must never see `<CR><LF><NUL>.<CR><LF>` turn into an end. The end
//! is found on the wire octets, NULs included, before anything is removed.
//!
//! The header section of received content (up to its first empty line)
//! loses every `Return-Path:` field, continuation lines included (RFC 5321
//! §4.4: the final delivery adds the one true Return-Path), and every
//! `Authentication-Results:` field that claims this host's name as its
//! authserv-id (RFC 8601 §5: only our own verdicts may carry it; ringpost
//! adds its own above the stored message). The filter works on the stored
//! lines as they stream, holding back at most `HEADER_HOLD_BYTES_MAX`
//! octets of a line start, and at most `AR_HOLD_BYTES_MAX` of an
//! Authentication-Results field's start until its authserv-id is read. Octets above 127 are
//! noted while content is scanned (`Transaction::content_8bit`), since many
//! clients send 8-bit content without BODY=8BITMIME.
//!
//! Timeouts: a command line must be complete within `command_timeout` of
//! the moment the machine started waiting for it (after the reply to the
//! previous line); input that does not complete a line does not extend it,
//! so a client dribbling one octet at a time is closed with 421 4.4.2.
//! Content must arrive at a rate of at least one block of
//! `DATA_BLOCK_BYTES` octets per `data_timeout`: the deadline is set at the
//! 354 reply (or the BDAT command) and again each time a whole block has
//! arrived, never by smaller pieces (RFC 5321 §4.5.3.2.6 speaks of data
//! blocks). A steady transfer above that rate is never cut off, however
//! long the message.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::address::{
    parse_forward_path, parse_mail_params, parse_rcpt_params, parse_reverse_path,
};
pub use super::address::{Address, BodyType, MailParams, RcptParams, ReversePath};
pub use super::dsn::{MailDsn, RcptDsn};
use super::address::{AddressError, ParamError};
use super::reply::{Enhanced, Reply};

mod auth;
pub use auth::{Credentials, Password};

/// Longest command line including CRLF (RFC 5321 §4.5.3.1.4).
pub const COMMAND_LINE_BYTES_MAX: usize = 512;
/// Longest MAIL or RCPT line: the DSN parameters may add 112 octets to
/// MAIL and 522 to RCPT (RFC 3461 §5); both get the larger.
pub const PARAMETER_LINE_BYTES_MAX: usize = COMMAND_LINE_BYTES_MAX + 522;
// A command line is copied onto the stack in a buffer of the larger size.
const _: () = assert!(COMMAND_LINE_BYTES_MAX <= PARAMETER_LINE_BYTES_MAX);
/// Largest `Body` chunk handed to the driver (a chunk may exceed it by
/// `BODY_CHUNK_SLACK_BYTES`).
pub const BODY_CHUNK_BYTES_MAX: usize = 64 * 1024;
/// How far a `Body` chunk may exceed `BODY_CHUNK_BYTES_MAX`: a line end, and
/// the start of a header line held back by the Return-Path filter.
pub const BODY_CHUNK_SLACK_BYTES: usize = AR_HOLD_BYTES_MAX + 2;
/// Most unprocessed input the machine holds; a driver that feeds more than
/// this without polling gets the session closed with 421.
pub const INPUT_BYTES_MAX: usize = 1024 * 1024;
/// Most events waiting in the machine at one time.
const EVENT_QUEUE_MAX: usize = 4;
/// Longest HELO/EHLO argument (a domain, RFC 5321 §4.5.3.1.2).
const HELO_BYTES_MAX: usize = 255;
/// Content octets that must arrive within one `data_timeout`; each whole
/// block sets the deadline again.
pub const DATA_BLOCK_BYTES: u64 = 64 * 1024;
/// Input buffer capacity kept between commands; a larger one (after a big
/// read) is freed once it is empty.
const INPUT_IDLE_BYTES_MAX: usize = 256;
/// Most octets of a header line start held back while the line may still be
/// a `Return-Path:` field ("Return-Path" and the white space after it).
const HEADER_HOLD_BYTES_MAX: usize = 32;
/// The header field removed from received content, lower-case.
const RETURN_PATH: &[u8] = b"return-path";
/// The header field removed when its authserv-id is this host's name.
const AUTH_RESULTS: &[u8] = b"authentication-results";
/// Most octets of an Authentication-Results field start held back until
/// its authserv-id (a host name, at most 255 octets) has been read; a field
/// whose authserv-id does not end within them is dropped.
const AR_HOLD_BYTES_MAX: usize = 512;

/// What to do with a bare CR or LF in message content (RFC 5321 §2.3.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BareLfPolicy {
    /// Refuse the whole message with 550 5.6.11 after its end.
    Reject,
    /// Store each bare CR or LF as CRLF.
    Normalize,
}

/// What to do with a NUL octet in text content (DATA, and BDAT without
/// BODY=BINARYMIME).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NulPolicy {
    /// Refuse the whole message with 550 5.6.0 after its end.
    Reject,
    /// Remove NUL octets from the stored content.
    Strip,
}

/// The machine's limits and names; shared by every session of a process.
#[derive(Clone, Debug)]
pub struct ServerParams {
    /// In the 220 greeting and the EHLO reply.
    pub hostname: String,
    /// Text after the host name in the 220 greeting, e.g. "ESMTP ringpost".
    pub greeting: String,
    /// More RCPTs than this get 452 4.5.3 (RFC 5321 §4.5.3.1.8).
    pub max_recipients: usize,
    /// Advertised as SIZE; larger MAIL SIZE= or content gets 552 5.3.4.
    pub max_message_bytes: u64,
    /// Longest content text line including CRLF (RFC 5321 §4.5.3.1.6);
    /// longer refuses the message with 500 5.6.0 after its end.
    pub max_text_line_bytes: usize,
    /// Client errors tolerated; the next one gets 421 4.7.0 and a close.
    pub max_errors: u32,
    /// Longest time for one command line, from the moment the machine
    /// waits for it to its CRLF.
    pub command_timeout: Duration,
    /// Longest time for each `DATA_BLOCK_BYTES` of content.
    pub data_timeout: Duration,
    /// Bare CR or LF in content, and bare LF ending a command line.
    pub bare_lf: BareLfPolicy,
    /// NUL in text content.
    pub nul: NulPolicy,
    /// Offer STARTTLS (RFC 3207): the driver can upgrade the connection.
    pub starttls: bool,
}

/// The two ends of the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    pub addr: SocketAddr,
    pub local: SocketAddr,
}

/// What the driver must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Needs more input (the driver must first flush `take_output()` to the
    /// socket, then read).
    NeedInput,
    /// HELO/EHLO seen; the machine already replied (250). Informational.
    Helo { name: String, esmtp: bool },
    /// MAIL FROM parsed and valid; waits for `decide(reply)`.
    Mail {
        reverse_path: ReversePath,
        params: MailParams,
    },
    /// RCPT TO parsed and valid, within the recipient limit; waits for
    /// `decide(reply)` (2xx accepts the recipient, anything else refuses it).
    Rcpt {
        forward_path: Address,
        params: RcptParams,
    },
    /// The message content starts (DATA got 354, or the first BDAT chunk).
    DataStart,
    /// Content bytes, un-dot-stuffed, in order; CRLF line endings unless
    /// the transaction is BODY=BINARYMIME; without NUL octets in text
    /// content and without `Return-Path:` header fields.
    Body(Vec<u8>),
    /// The content ended well and passed every check; waits for
    /// `decide(reply)`, the reply to the final dot or BDAT LAST (the driver
    /// makes the message durable before it answers 250).
    DataEnd,
    /// The content was refused or abandoned; the machine has already sent
    /// `reply` (if the peer is still there); the driver discards what it
    /// stored.
    DataAborted { reply: Reply },
    /// Waiting for a `decide()` call.
    Pending,
    /// The session is over; the driver flushes output and closes.
    Close,
    /// STARTTLS was accepted: the driver flushes the 220 reply, runs the
    /// TLS handshake, then calls `tls_started()` (or closes on failure).
    /// Input received after the STARTTLS line has been discarded.
    StartTls,
    /// `XREPLDONE` from a replication peer (only when
    /// [`Server::offer_replicas`] was called): the messages it queued under
    /// these ids are finished there, so their replicas here can go; no id
    /// is a heartbeat. The machine already replied (250). Informational.
    ReplicaDone { ids: Vec<String> },
    /// `XREPLTAKEN <shard>` from a replication peer: which of the replicas
    /// of that shard's messages were taken over here since it last asked;
    /// waits for `decide(reply)`, the reply listing them.
    ReplicaTaken { shard: u8 },
    /// A SASL exchange (AUTH, after [`Server::offer_auth`]) is complete;
    /// waits for `decide(reply)`: 235 authenticates the session, 535 and
    /// 454 do not, 421 closes it.
    Auth { mechanism: &'static str, credentials: Credentials },
    /// A message of a SCRAM exchange (decoded from base64; `first`: the
    /// client's first message); waits for `decide(reply)`: 334 with the
    /// next challenge (base64) continues, 235 (after `set_auth_login`)
    /// authenticates, anything else ends the exchange.
    AuthStep { mechanism: &'static str, first: bool, data: Vec<u8> },
}

/// A mail transaction: from an accepted MAIL to the end of its content or
/// RSET (RFC 5321 §3.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    pub reverse_path: ReversePath,
    pub params: MailParams,
    /// The recipients accepted so far, in order.
    pub recipients: Vec<Address>,
    /// The DSN parameters (NOTIFY, ORCPT) of each accepted recipient, in
    /// the same order.
    pub recipient_dsn: Vec<RcptDsn>,
    pub helo_name: String,
    /// The Received "with" value (RFC 3848, RFC 6531).
    pub protocol: &'static str,
    /// BDAT has been used: DATA and RCPT are out of sequence now.
    pub chunking: bool,
    /// The content held octets above 127, declared or not; set when the
    /// content ends (read it at `Event::DataEnd`).
    pub content_8bit: bool,
}

impl Transaction {
    /// The message must be stored and relayed as 8-bit: declared with
    /// BODY=8BITMIME or BODY=BINARYMIME, or octets above 127 were seen.
    pub fn body_8bit(&self) -> bool {
        self.params.body_8bit() || self.content_8bit
    }

    /// Declared BODY=BINARYMIME (RFC 3030): stored and relayed as it is.
    pub fn body_binary(&self) -> bool {
        self.params.body == Some(BodyType::BinaryMime)
    }
}

#[derive(Clone, Debug)]
struct Helo {
    name: String,
    esmtp: bool,
}

/// Where input goes.
#[derive(Clone, Debug)]
enum Mode {
    /// Reading command lines.
    Command,
    /// Discarding the rest of an overlong command line (already answered).
    SkipLine,
    /// Reading DATA content up to CRLF.CRLF.
    Data,
    /// Reading a BDAT chunk; `refusal` set means discard the octets, then
    /// send that reply.
    Bdat {
        chunk_bytes: u64,
        remaining_bytes: u64,
        last: bool,
        refusal: Option<Box<Reply>>,
    },
    /// Content complete; pass the last Body, then DataEnd or DataAborted.
    ContentDone,
    /// STARTTLS answered 220; waiting for the driver's handshake.
    Handshake,
    /// Reading a line of a SASL exchange (after a 334 challenge).
    Auth,
    Closed,
}

/// A question the driver must answer with `decide()`.
#[derive(Clone, Debug)]
enum Pending {
    Mail {
        reverse_path: ReversePath,
        params: MailParams,
    },
    Rcpt {
        forward_path: Address,
        dsn: RcptDsn,
    },
    DataEnd,
    ReplicaTaken,
    Auth {
        user: String,
    },
    AuthStep,
}

/// What `poll`'s loop does after one step.
enum Flow {
    Continue,
    NeedInput,
}

/// The sans-IO SMTP server for one connection.
pub struct Server {
    params: Arc<ServerParams>,
    peer: PeerInfo,
    /// Received bytes; `input[input_pos..]` is not processed yet.
    input: Vec<u8>,
    input_pos: usize,
    output: Vec<u8>,
    mode: Mode,
    helo: Option<Helo>,
    txn: Option<Box<Transaction>>,
    /// Present from the start of a message's content to its end or abort.
    content: Option<Box<Content>>,
    body: Vec<u8>,
    pending: Option<Box<Pending>>,
    events: VecDeque<Event>,
    error_count: u32,
    deadline: Instant,
    /// The next `NeedInput` sets a new deadline: a command line was
    /// consumed, the mode changed or a question was answered.
    rearm: bool,
    /// Content octets consumed since the deadline was set.
    block_bytes: u64,
    /// TLS is active on the connection (after STARTTLS and its handshake).
    tls_active: bool,
    /// The client is a replication peer: XREPLICA and XREPLDONE are offered.
    replicas: bool,
    /// Whether pipelining that was not offered is refused, and was.
    pipelining: Pipelining,
    /// AUTH, on listeners that offer it (boxed: one pointer for the rest).
    sasl: Option<Box<auth::SaslState>>,
}

/// `Server::strict_pipelining`, in one byte (every idle session pays for
/// the machine's size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pipelining {
    Lenient,
    Strict,
    /// Refused, and the session closed.
    Violated,
}

/// `now + timeout`, or a year from now if that cannot be represented.
fn deadline_after(now: Instant, timeout: Duration) -> Instant {
    now.checked_add(timeout)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 86_400)))
        .unwrap_or(now)
}

impl Server {
    /// Starts a session and queues the 220 greeting.
    pub fn new(params: Arc<ServerParams>, peer: PeerInfo, now: Instant) -> Server {
        let mut s = Server {
            deadline: deadline_after(now, params.command_timeout),
            rearm: true,
            block_bytes: 0,
            params,
            peer,
            input: Vec::new(),
            input_pos: 0,
            output: Vec::new(),
            mode: Mode::Command,
            helo: None,
            txn: None,
            content: None,
            body: Vec::new(),
            pending: None,
            events: VecDeque::new(),
            error_count: 0,
            tls_active: false,
            replicas: false,
            pipelining: Pipelining::Lenient,
            sasl: None,
        };
        let text = format!("{} {}", s.params.hostname, s.params.greeting);
        s.send(&Reply {
            code: 220,
            enhanced: None,
            lines: vec![text],
        });
        s
    }

    /// The client may store replicas here (`replicate.accept_from`): EHLO
    /// offers XREPLICA, MAIL takes `XREPLICA=<queue id>` and the command
    /// `XREPLDONE [<queue id> ...]` is known. Called before the first poll.
    pub fn offer_replicas(&mut self) {
        self.replicas = true;
    }

    /// Refuse pipelining the client was not offered (RFC 2920 §3.1): more
    /// input behind a command line before its reply was sent, when that
    /// command was DATA (content before the 354) or HELO, or when the
    /// session greeted with HELO (which offers no PIPELINING). QUIT is
    /// always let through, and so is input behind EHLO (many clients
    /// send EHLO and their first MAIL together). The client gets
    /// 554 5.5.0 and the session closes. Called before the first poll.
    pub fn strict_pipelining(&mut self) {
        self.pipelining = Pipelining::Strict;
    }

    /// Whether the session was closed for improper pipelining.
    pub fn pipelining_violated(&self) -> bool {
        self.pipelining == Pipelining::Violated
    }

    /// Appends received bytes. The driver reads (and feeds) only after
    /// `poll` said `NeedInput`, so the buffer holds one read plus at most
    /// an incomplete command line.
    pub fn feed(&mut self, input: &[u8]) {
        if matches!(self.mode, Mode::Closed) {
            return;
        }
        self.compact();
        if self.input.len().saturating_add(input.len()) > INPUT_BYTES_MAX {
            debug_assert!(false, "driver fed {} bytes without polling", input.len());
            self.close_with(Reply::new(
                421,
                Enhanced(4, 3, 0),
                format!("{} input buffer full", self.params.hostname),
            ));
            return;
        }
        self.input.extend_from_slice(input);
    }

    /// Runs the machine on buffered input until it needs the driver.
    pub fn poll(&mut self, now: Instant) -> Event {
        loop {
            debug_assert!(self.events.len() <= EVENT_QUEUE_MAX);
            if let Some(e) = self.events.pop_front() {
                return e;
            }
            if self.pending.is_some() {
                return Event::Pending;
            }
            let flow = match self.mode {
                Mode::Closed => return Event::Close,
                Mode::Command => self.step_command(),
                Mode::SkipLine => self.step_skip_line(),
                Mode::Data => self.step_data(),
                Mode::Bdat { .. } => self.step_bdat(),
                Mode::ContentDone => self.step_content_done(),
                Mode::Handshake => return Event::StartTls,
                Mode::Auth => self.step_auth(),
            };
            if let Flow::NeedInput = flow {
                self.compact();
                self.arm_deadline(now);
                self.release_idle_memory();
                return Event::NeedInput;
            }
        }
    }

    /// Answers the pending Mail, Rcpt or DataEnd event. A 421 reply also
    /// ends the session.
    pub fn decide(&mut self, reply: Reply) {
        let Some(pending) = self.pending.take() else {
            debug_assert!(false, "decide() without a pending question");
            return;
        };
        self.rearm = true;
        match *pending {
            Pending::Mail {
                reverse_path,
                params,
            } => {
                if reply.is_positive() {
                    self.txn = Some(Box::new(self.new_transaction(reverse_path, params)));
                }
            }
            Pending::Rcpt { forward_path, dsn } => {
                if let (true, Some(t)) = (reply.is_positive(), self.txn.as_mut()) {
                    t.recipients.push(forward_path);
                    t.recipient_dsn.push(dsn);
                }
            }
            Pending::DataEnd => {
                // RFC 5321 §4.1.1.4: the end of data ends the transaction,
                // whatever the reply.
                self.txn = None;
            }
            Pending::ReplicaTaken => {}
            Pending::Auth { user } => self.auth_decided(user, &reply),
            Pending::AuthStep => self.auth_step_decided(&reply),
        }
        if reply.code == 421 {
            self.close_with(reply);
        } else {
            self.send(&reply);
        }
    }

    /// Replies queued for the socket (maybe empty).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// By when the awaited input must be complete: the command line being
    /// read (`command_timeout` from the moment the machine began waiting for
    /// it), or the current block of content (`data_timeout` per
    /// `DATA_BLOCK_BYTES`). Input that completes neither leaves it alone.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The deadline passed: 421 4.4.2 and Close.
    pub fn on_timeout(&mut self, _now: Instant) {
        let text = format!(
            "{} timeout exceeded, closing connection",
            self.params.hostname
        );
        self.close_with(Reply::new(421, Enhanced(4, 4, 2), text));
    }

    /// The server is stopping: 421 4.3.2 and Close.
    pub fn shutdown(&mut self) {
        let text = format!(
            "{} service shutting down, closing connection",
            self.params.hostname
        );
        self.close_with(Reply::new(421, Enhanced(4, 3, 2), text));
    }

    /// The client closed its side: any content in progress is abandoned
    /// (DataAborted, with a reply no one will read), then Close.
    pub fn on_eof(&mut self) {
        if matches!(self.mode, Mode::Closed) {
            return;
        }
        if self.content.take().is_some() {
            let reply = Reply::new(
                451,
                Enhanced(4, 4, 2),
                "connection closed during message content",
            );
            self.events.push_back(Event::DataAborted { reply });
        }
        self.enter_closed();
    }

    /// The TLS handshake after STARTTLS succeeded: the session starts over
    /// (RFC 3207 §4.2: the client must EHLO again; nothing from before is
    /// remembered) and STARTTLS is no longer offered.
    pub fn tls_started(&mut self, now: Instant) {
        debug_assert!(
            matches!(self.mode, Mode::Handshake),
            "tls_started() only after StartTls"
        );
        if !matches!(self.mode, Mode::Handshake) {
            return;
        }
        self.tls_active = true;
        self.helo = None;
        self.txn = None;
        self.body = Vec::new();
        self.input = Vec::new();
        self.input_pos = 0;
        self.mode = Mode::Command;
        self.deadline = deadline_after(now, self.params.command_timeout);
        self.rearm = false;
        self.block_bytes = 0;
        self.auth_reset();
    }

    /// Whether TLS is active.
    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// True from an accepted MAIL until the end of its transaction.
    pub fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }

    pub fn transaction(&self) -> Option<&Transaction> {
        self.txn.as_deref()
    }

    pub fn helo_name(&self) -> Option<&str> {
        self.helo.as_ref().map(|h| h.name.as_str())
    }

    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    /// Client errors counted so far.
    pub fn error_count(&self) -> u32 {
        self.error_count
    }

    /// Heap octets the machine holds on to: buffer capacities, the event
    /// queue, the boxed transaction, question and content state, and the
    /// capacities of the strings inside them.
    pub fn retained_heap_bytes(&self) -> usize {
        use std::mem::size_of;
        let address =
            |a: &Address| a.local_part.capacity() + a.domain.as_ref().map_or(0, String::capacity);
        let mut total = self.input.capacity()
            + self.output.capacity()
            + self.body.capacity()
            + self.events.capacity() * size_of::<Event>();
        if let Some(h) = &self.helo {
            total += h.name.capacity();
        }
        if let Some(t) = &self.txn {
            total += size_of::<Transaction>()
                + t.helo_name.capacity()
                + t.recipients.capacity() * size_of::<Address>()
                + t.recipients.iter().map(address).sum::<usize>();
            if let ReversePath::Path(a) = &t.reverse_path {
                total += address(a);
            }
        }
        if self.content.is_some() {
            total += size_of::<Content>();
        }
        if self.pending.is_some() {
            total += size_of::<Pending>();
        }
        total + self.auth_heap_bytes()
    }

    /// The Received "with" value: "SMTP" after HELO, "ESMTP" after EHLO,
    /// "UTF8SMTP" for an SMTPUTF8 transaction (RFC 3848, RFC 6531 §3.7.3).
    pub fn protocol(&self) -> &'static str {
        let utf8 = self.txn.as_ref().is_some_and(|t| t.params.smtputf8);
        let esmtp = self.helo.as_ref().is_some_and(|h| h.esmtp);
        self.with_auth(protocol_name(esmtp, utf8, self.tls_active))
    }

    // ---- output and bookkeeping ----

    fn send(&mut self, reply: &Reply) {
        reply.write_to(&mut self.output);
    }

    fn reply(&mut self, code: u16, enhanced: Enhanced, text: impl Into<String>) {
        self.send(&Reply::new(code, enhanced, text));
    }

    /// A reply caused by a client mistake: counted, and past `max_errors`
    /// replaced by 421 4.7.0 and a close.
    fn client_error(&mut self, code: u16, enhanced: Enhanced, text: impl Into<String>) {
        self.error_count = self.error_count.saturating_add(1);
        if self.error_count > self.params.max_errors {
            let text = format!(
                "{} too many errors, closing connection",
                self.params.hostname
            );
            self.close_with(Reply::new(421, Enhanced(4, 7, 0), text));
        } else {
            self.reply(code, enhanced, text);
        }
    }

    /// Sends `reply`, abandons any content (DataAborted) and closes.
    fn close_with(&mut self, reply: Reply) {
        if matches!(self.mode, Mode::Closed) {
            return;
        }
        self.send(&reply);
        if self.content.take().is_some() {
            self.events.push_back(Event::DataAborted { reply });
        }
        self.enter_closed();
    }

    fn enter_closed(&mut self) {
        self.pending = None;
        self.txn = None;
        self.content = None;
        self.body = Vec::new();
        self.input = Vec::new();
        self.input_pos = 0;
        self.mode = Mode::Closed;
    }

    /// Sets the deadline for what `NeedInput` waits for: anew after a
    /// command line, a mode change, an answered question or a whole block
    /// of content; otherwise (part of a line or block arrived) it stays.
    fn arm_deadline(&mut self, now: Instant) {
        if self.block_bytes >= DATA_BLOCK_BYTES {
            self.rearm = true;
        }
        if !self.rearm {
            return;
        }
        self.rearm = false;
        self.block_bytes = 0;
        let timeout = match self.mode {
            Mode::Data | Mode::Bdat { .. } => self.params.data_timeout,
            _ => self.params.command_timeout,
        };
        self.deadline = deadline_after(now, timeout);
    }

    /// Between commands: frees an input buffer grown by a big read, and
    /// between transactions the event queue, so an idle session holds
    /// little more than its HELO name.
    fn release_idle_memory(&mut self) {
        if !matches!(self.mode, Mode::Command) {
            return;
        }
        if self.input.is_empty() && self.input.capacity() > INPUT_IDLE_BYTES_MAX {
            self.input = Vec::new();
        }
        if self.txn.is_none() && self.events.is_empty() && self.events.capacity() > 0 {
            self.events = VecDeque::new();
        }
        if self.content.is_none() && self.body.is_empty() && self.body.capacity() > 0 {
            self.body = Vec::new();
        }
    }

    /// Counts content octets toward the current data block.
    fn count_block(&mut self, used: usize) {
        self.block_bytes = self.block_bytes.saturating_add(used as u64);
    }

    fn compact(&mut self) {
        if self.input_pos > 0 {
            self.input.drain(..self.input_pos);
            self.input_pos = 0;
        }
    }

    fn push_event(&mut self, e: Event) {
        debug_assert!(self.events.len() < EVENT_QUEUE_MAX);
        self.events.push_back(e);
    }

    fn new_transaction(&self, reverse_path: ReversePath, params: MailParams) -> Transaction {
        let (helo_name, esmtp) = match &self.helo {
            Some(h) => (h.name.clone(), h.esmtp),
            None => (String::new(), false),
        };
        let protocol = self.with_auth(protocol_name(esmtp, params.smtputf8, self.tls_active));
        Transaction {
            reverse_path,
            params,
            recipients: Vec::new(),
            recipient_dsn: Vec::new(),
            helo_name,
            protocol,
            chunking: false,
            content_8bit: false,
        }
    }

    /// Ends the transaction (RSET, HELO, EHLO). Content already passed to
    /// the driver (BDAT chunks) is abandoned with DataAborted carrying the
    /// reply that the command got.
    fn reset_transaction(&mut self, reply: &Reply) {
        self.txn = None;
        self.body.clear();
        if self.content.take().is_some() {
            self.push_event(Event::DataAborted {
                reply: reply.clone(),
            });
        }
    }

    // ---- commands ----

    fn step_command(&mut self) -> Flow {
        let avail = &self.input[self.input_pos..];
        let line_bytes_max = line_bytes_max(avail);
        let Some(lf) = avail.iter().position(|&b| b == b'\n') else {
            if avail.len() >= line_bytes_max {
                self.input_pos = self.input.len();
                self.mode = Mode::SkipLine;
                // Continue, not NeedInput: the error may have been one too
                // many and closed the session.
                self.line_too_long();
                return Flow::Continue;
            }
            return Flow::NeedInput;
        };
        let line_bytes = lf + 1;
        if line_bytes > line_bytes_max {
            self.input_pos += line_bytes;
            self.rearm = true;
            self.line_too_long();
            return Flow::Continue;
        }
        // Copied out of the input, which the command may change, onto the
        // stack: a line that fits here is no longer than the longest
        // allowed, and a command costs no allocation for its line.
        let mut copy = [0u8; PARAMETER_LINE_BYTES_MAX];
        copy[..lf].copy_from_slice(&avail[..lf]);
        let line = &copy[..lf];
        self.input_pos += line_bytes;
        self.rearm = true;
        let line = match line.strip_suffix(b"\r") {
            Some(line) => line,
            None if self.params.bare_lf == BareLfPolicy::Normalize => line,
            None => {
                self.bare_lf_command(line);
                return Flow::Continue;
            }
        };
        match std::str::from_utf8(line) {
            Ok(text) if !text.chars().any(|c| c.is_control()) => {
                let text = text.trim_end_matches(' ');
                let unanswered_input = self.input_pos < self.input.len();
                if self.pipelining == Pipelining::Strict && unanswered_input && self.improper_pipelining(text) {
                    self.pipelining = Pipelining::Violated;
                    self.close_with(Reply::new(
                        554,
                        Enhanced(5, 5, 0),
                        "Improper use of SMTP command pipelining",
                    ));
                    return Flow::Continue;
                }
                self.command(text);
            }
            _ => self.client_error(
                500,
                Enhanced(5, 5, 2),
                "syntax error: invalid characters in command",
            ),
        }
        Flow::Continue
    }

    /// A command line ended by a bare LF under `BareLfPolicy::Reject`: not
    /// run (RFC 5321 §2.3.8). A BDAT refused this way cannot be delimited,
    /// so the chunks before it can no longer become a whole message.
    fn bare_lf_command(&mut self, line: &[u8]) {
        let reply = Reply::new(
            500,
            Enhanced(5, 5, 2),
            "syntax error: command lines must end with CRLF (RFC 5321 section 2.3.8)",
        );
        self.client_error(500, Enhanced(5, 5, 2), reply.lines.concat());
        let bdat = line
            .get(..4)
            .is_some_and(|verb| verb.eq_ignore_ascii_case(b"BDAT"));
        if bdat {
            self.abandon_chunking(&reply);
        }
    }

    fn line_too_long(&mut self) {
        self.client_error(
            500,
            Enhanced(5, 5, 2),
            "line too long: command lines are limited to 512 octets",
        );
    }

    fn step_skip_line(&mut self) -> Flow {
        let avail = &self.input[self.input_pos..];
        match avail.iter().position(|&b| b == b'\n') {
            Some(lf) => {
                self.input_pos += lf + 1;
                self.mode = Mode::Command;
                self.rearm = true;
                Flow::Continue
            }
            None => {
                self.input_pos = self.input.len();
                Flow::NeedInput
            }
        }
    }

    /// Whether a command followed by more input breaks RFC 2920: DATA or
    /// HELO, or any command but QUIT and EHLO after HELO (no PIPELINING).
    fn improper_pipelining(&self, line: &str) -> bool {
        let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
        match verb.as_str() {
            "QUIT" | "EHLO" => false,
            "HELO" | "DATA" => true,
            _ => self.helo.as_ref().is_some_and(|h| !h.esmtp),
        }
    }

    fn command(&mut self, line: &str) {
        let (verb, args) = match line.split_once(' ') {
            Some((v, a)) => (v, a),
            None => (line, ""),
        };
        // Upper-cased on the stack: no verb known here is longer than 10.
        let mut upper = [0u8; 10];
        let verb = match upper.get_mut(..verb.len()) {
            Some(bytes) => {
                bytes.copy_from_slice(verb.as_bytes());
                bytes.make_ascii_uppercase();
                std::str::from_utf8(bytes).unwrap_or("")
            }
            None => "",
        };
        match verb {
            "EHLO" => self.cmd_helo(args, true),
            "HELO" => self.cmd_helo(args, false),
            "MAIL" => self.cmd_mail(args),
            "RCPT" => self.cmd_rcpt(args),
            "DATA" => self.cmd_data(args),
            "BDAT" => self.cmd_bdat(args),
            "RSET" => self.cmd_rset(args),
            "NOOP" => self.reply(250, Enhanced(2, 0, 0), "OK"),
            "STARTTLS" => self.cmd_starttls(args),
            "AUTH" if self.sasl.is_some() => self.cmd_auth(args),
            "XREPLDONE" if self.replicas => self.cmd_repldone(args),
            "XREPLTAKEN" if self.replicas => self.cmd_repltaken(args),
            "QUIT" => {
                let text = format!("{} closing connection", self.params.hostname);
                self.close_with(Reply::new(221, Enhanced(2, 0, 0), text));
            }
            "VRFY" if args.is_empty() => {
                self.client_error(501, Enhanced(5, 5, 4), "syntax: VRFY <address>")
            }
            "VRFY" => self.reply(
                252,
                Enhanced(2, 1, 5),
                "cannot VRFY user, but will accept message and attempt delivery",
            ),
            "EXPN" => self.reply(502, Enhanced(5, 5, 1), "EXPN not available"),
            "HELP" => self.reply(
                214,
                Enhanced(2, 0, 0),
                "commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY",
            ),
            // A web client or proxy talking to the SMTP port (cross-protocol
            // attacks): nothing useful follows, so close at once.
            "GET" | "POST" | "HEAD" | "PUT" | "CONNECT" | "OPTIONS" => {
                let text = format!(
                    "{} this is an SMTP server, closing connection",
                    self.params.hostname
                );
                self.close_with(Reply::new(421, Enhanced(4, 7, 0), text));
            }
            _ => self.client_error(500, Enhanced(5, 5, 1), "command not recognized"),
        }
    }

    fn cmd_helo(&mut self, args: &str, esmtp: bool) {
        let name = args.split(' ').find(|s| !s.is_empty()).unwrap_or("");
        if name.is_empty() {
            let verb = if esmtp { "EHLO" } else { "HELO" };
            return self.client_error(501, Enhanced(5, 5, 4), format!("syntax: {} <domain>", verb));
        }
        if name.len() > HELO_BYTES_MAX {
            return self.client_error(501, Enhanced(5, 5, 4), "HELO/EHLO argument too long");
        }
        let host = self.params.hostname.clone();
        let reply = if esmtp {
            let lines = vec![
                host,
                "PIPELINING".to_string(),
                format!("SIZE {}", self.params.max_message_bytes),
                "8BITMIME".to_string(),
                "ENHANCEDSTATUSCODES".to_string(),
                "SMTPUTF8".to_string(),
                "CHUNKING".to_string(),
                "BINARYMIME".to_string(),
                // RFC 3461: NOTIFY, ORCPT, RET and ENVID (`super::dsn`).
                "DSN".to_string(),
            ];
            let mut lines = lines;
            if self.params.starttls && !self.tls_active {
                lines.push("STARTTLS".to_string());
            }
            if let Some(auth) = self.auth_keyword() {
                lines.push(auth);
            }
            if self.replicas {
                lines.push("XREPLICA".to_string());
            }
            // RFC 2034 §3: no enhanced code in the reply to EHLO/HELO.
            Reply {
                code: 250,
                enhanced: None,
                lines,
            }
        } else {
            Reply {
                code: 250,
                enhanced: None,
                lines: vec![host],
            }
        };
        self.send(&reply);
        self.reset_transaction(&reply);
        self.helo = Some(Helo {
            name: name.to_string(),
            esmtp,
        });
        self.push_event(Event::Helo {
            name: name.to_string(),
            esmtp,
        });
    }

    fn cmd_starttls(&mut self, args: &str) {
        if !self.params.starttls {
            return self.client_error(502, Enhanced(5, 5, 1), "STARTTLS not available");
        }
        if self.tls_active {
            return self.client_error(503, Enhanced(5, 5, 1), "TLS already active");
        }
        if !args.is_empty() {
            return self.client_error(
                501,
                Enhanced(5, 5, 4),
                "syntax: STARTTLS takes no arguments",
            );
        }
        if self.content.is_some() {
            return self.client_error(
                503,
                Enhanced(5, 5, 1),
                "STARTTLS not allowed during message content",
            );
        }
        self.reply(220, Enhanced(2, 0, 0), "Ready to start TLS");
        // RFC 3207 §5: whatever the client sent after STARTTLS in the clear
        // must not be acted on after the handshake (command injection).
        self.input.clear();
        self.input_pos = 0;
        self.txn = None;
        self.mode = Mode::Handshake;
    }

    fn cmd_rset(&mut self, args: &str) {
        if !args.is_empty() {
            return self.client_error(501, Enhanced(5, 5, 4), "syntax: RSET takes no arguments");
        }
        let reply = Reply::new(250, Enhanced(2, 0, 0), "OK");
        self.send(&reply);
        self.reset_transaction(&reply);
    }

    fn cmd_mail(&mut self, args: &str) {
        let esmtp = match &self.helo {
            None => return self.client_error(503, Enhanced(5, 5, 1), "send HELO or EHLO first"),
            Some(h) => h.esmtp,
        };
        if self.txn.is_some() {
            return self.client_error(503, Enhanced(5, 5, 1), "nested MAIL command");
        }
        if self.auth_required_refusal() {
            return;
        }
        let Some(path_and_params) = strip_prefix_ignore_case(args, "FROM:") else {
            return self.client_error(501, Enhanced(5, 5, 4), "syntax: MAIL FROM:<address>");
        };
        let path_and_params = path_and_params.trim_start_matches(' ');
        let (reverse_path, rest) = match parse_reverse_path(path_and_params, true) {
            Ok(x) => x,
            Err(e) => return self.address_error(e, Enhanced(5, 1, 7), "sender"),
        };
        let Some(param_text) = params_after_path(rest) else {
            return self.client_error(
                501,
                Enhanced(5, 1, 7),
                "syntax: junk after the sender address",
            );
        };
        if !param_text.is_empty() && !esmtp {
            return self.client_error(555, Enhanced(5, 5, 4), "MAIL parameters need EHLO");
        }
        let param_text = match self.without_auth_param(param_text) {
            Ok(text) => text,
            Err(e) => return self.param_error(e),
        };
        let params = match parse_mail_params(&param_text, self.params.max_message_bytes) {
            Ok(p) => p,
            Err(e) => return self.param_error(e),
        };
        if params.replica_of.is_some() && !self.replicas {
            return self.param_error(ParamError::Unsupported("XREPLICA".to_string()));
        }
        let utf8_path = matches!(&reverse_path, ReversePath::Path(a) if a.is_utf8());
        if utf8_path && !params.smtputf8 {
            return self.address_error(AddressError::NonAscii, Enhanced(5, 1, 7), "sender");
        }
        self.pending = Some(Box::new(Pending::Mail {
            reverse_path: reverse_path.clone(),
            params: params.clone(),
        }));
        self.push_event(Event::Mail {
            reverse_path,
            params,
        });
    }

    /// `XREPLDONE [<queue id> ...]`: at most what fits a command line
    /// (about 29 ids); no id is a heartbeat. Not allowed in a transaction,
    /// so it never mixes with a replica being sent.
    fn cmd_repldone(&mut self, args: &str) {
        if self.txn.is_some() {
            return self.client_error(503, Enhanced(5, 5, 1), "XREPLDONE not allowed in a transaction");
        }
        let mut ids = Vec::new();
        for id in args.split(' ').filter(|id| !id.is_empty()) {
            if super::address::parse_queue_id_param(id).is_none() {
                return self.client_error(501, Enhanced(5, 5, 4), "syntax: XREPLDONE [<queue id> ...]");
            }
            ids.push(id.to_string());
        }
        self.reply(250, Enhanced(2, 0, 0), format!("{} noted", ids.len()));
        self.push_event(Event::ReplicaDone { ids });
    }

    /// `XREPLTAKEN <shard>`: the shard is two upper-case hex digits, as in
    /// the last two of its queue ids.
    fn cmd_repltaken(&mut self, args: &str) {
        if self.txn.is_some() {
            return self.client_error(503, Enhanced(5, 5, 1), "XREPLTAKEN not allowed in a transaction");
        }
        let hex = args.len() == 2 && args.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
        let Some(shard) = hex.then(|| u8::from_str_radix(args, 16).ok()).flatten() else {
            return self.client_error(501, Enhanced(5, 5, 4), "syntax: XREPLTAKEN <shard>");
        };
        self.pending = Some(Box::new(Pending::ReplicaTaken));
        self.push_event(Event::ReplicaTaken { shard });
    }

    fn cmd_rcpt(&mut self, args: &str) {
        let Some(txn) = &self.txn else {
            return self.client_error(503, Enhanced(5, 5, 1), "need MAIL before RCPT");
        };
        if txn.chunking {
            return self.client_error(503, Enhanced(5, 5, 1), "RCPT not allowed after BDAT");
        }
        let (smtputf8, recipient_count) = (txn.params.smtputf8, txn.recipients.len());
        let Some(path_and_params) = strip_prefix_ignore_case(args, "TO:") else {
            return self.client_error(501, Enhanced(5, 5, 4), "syntax: RCPT TO:<address>");
        };
        let path_and_params = path_and_params.trim_start_matches(' ');
        let (forward_path, rest) = match parse_forward_path(path_and_params, true) {
            Ok(x) => x,
            Err(e) => return self.address_error(e, Enhanced(5, 1, 3), "recipient"),
        };
        let Some(param_text) = params_after_path(rest) else {
            return self.client_error(
                501,
                Enhanced(5, 1, 3),
                "syntax: junk after the recipient address",
            );
        };
        if !param_text.is_empty() && !self.helo.as_ref().is_some_and(|h| h.esmtp) {
            return self.client_error(555, Enhanced(5, 5, 4), "RCPT parameters need EHLO");
        }
        let params = match parse_rcpt_params(param_text) {
            Ok(p) => p,
            Err(e) => return self.param_error(e),
        };
        if forward_path.is_utf8() && !smtputf8 {
            return self.address_error(AddressError::NonAscii, Enhanced(5, 1, 3), "recipient");
        }
        if recipient_count >= self.params.max_recipients {
            // RFC 5321 §4.5.3.1.10: a limit, not a client mistake.
            return self.reply(452, Enhanced(4, 5, 3), "too many recipients");
        }
        self.pending = Some(Box::new(Pending::Rcpt {
            forward_path: forward_path.clone(),
            dsn: params.dsn.clone(),
        }));
        self.push_event(Event::Rcpt {
            forward_path,
            params,
        });
    }

    fn address_error(&mut self, e: AddressError, syntax_code: Enhanced, role: &str) {
        match e {
            AddressError::NonAscii => self.client_error(
                553,
                Enhanced(5, 6, 7),
                format!("non-ASCII {} address requires SMTPUTF8", role),
            ),
            AddressError::Syntax(why) => self.client_error(
                501,
                syntax_code,
                format!("bad {} address syntax: {}", role, why),
            ),
            AddressError::LocalPartTooLong
            | AddressError::DomainTooLong
            | AddressError::PathTooLong => self.client_error(
                501,
                Enhanced(5, 1, 3),
                format!("bad {} address: {}", role, e),
            ),
        }
    }

    fn param_error(&mut self, e: ParamError) {
        match e {
            ParamError::Syntax(why) => {
                self.client_error(501, Enhanced(5, 5, 4), format!("syntax: {}", why))
            }
            ParamError::Unsupported(key) => self.client_error(
                555,
                Enhanced(5, 5, 4),
                format!("unsupported parameter {}", key),
            ),
            ParamError::TooBig { .. } => {
                let text = format!(
                    "message size exceeds fixed maximum of {} octets",
                    self.params.max_message_bytes
                );
                self.reply(552, Enhanced(5, 3, 4), text)
            }
        }
    }

    fn cmd_data(&mut self, args: &str) {
        if !args.is_empty() {
            return self.client_error(501, Enhanced(5, 5, 4), "syntax: DATA takes no arguments");
        }
        let Some(txn) = &self.txn else {
            return self.client_error(503, Enhanced(5, 5, 1), "need MAIL before DATA");
        };
        if txn.chunking {
            return self.client_error(503, Enhanced(5, 5, 1), "DATA not allowed after BDAT");
        }
        if txn.params.body == Some(BodyType::BinaryMime) {
            // RFC 3030 §3.
            return self.client_error(503, Enhanced(5, 5, 1), "BODY=BINARYMIME requires BDAT");
        }
        if txn.recipients.is_empty() {
            // Normal under PIPELINING when every RCPT was refused: no count.
            return self.reply(503, Enhanced(5, 5, 1), "no valid recipients");
        }
        self.send(&Reply {
            code: 354,
            enhanced: None,
            lines: vec!["End data with <CR><LF>.<CR><LF>".to_string()],
        });
        self.content = Some(Box::new(Content::new(&self.params, true, true)));
        self.mode = Mode::Data;
        self.push_event(Event::DataStart);
    }

    fn cmd_bdat(&mut self, args: &str) {
        let mut words = args.split(' ').filter(|w| !w.is_empty());
        let size = words
            .next()
            .filter(|w| w.len() <= 20 && w.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|w| w.parse::<u64>().ok());
        let Some(chunk_bytes) = size else {
            // The chunk cannot be delimited; its octets will be read as
            // commands and fail there. Content already received can no
            // longer become a whole message.
            let reply = Reply::new(501, Enhanced(5, 5, 4), "syntax: BDAT <size> [LAST]");
            self.client_error(501, Enhanced(5, 5, 4), reply.lines.concat());
            return self.abandon_chunking(&reply);
        };
        let last = match (words.next(), words.next()) {
            (None, _) => Some(false),
            (Some(w), None) if w.eq_ignore_ascii_case("LAST") => Some(true),
            _ => None,
        };
        let refusal = match (&self.txn, last) {
            (_, None) => Some(Reply::new(
                501,
                Enhanced(5, 5, 4),
                "syntax: BDAT <size> [LAST]",
            )),
            (None, _) => Some(Reply::new(503, Enhanced(5, 5, 1), "need MAIL before BDAT")),
            (Some(t), _) if t.recipients.is_empty() => {
                Some(Reply::new(503, Enhanced(5, 5, 1), "no valid recipients"))
            }
            _ => None,
        }
        .map(Box::new);
        if refusal.is_none() {
            if let Some(t) = self.txn.as_mut() {
                if !t.chunking {
                    t.chunking = true;
                    let binary = t.body_binary();
                    self.content = Some(Box::new(Content::new(&self.params, false, !binary)));
                    self.push_event(Event::DataStart);
                }
            }
        }
        self.mode = Mode::Bdat {
            chunk_bytes,
            remaining_bytes: chunk_bytes,
            last: last.unwrap_or(false),
            refusal,
        };
    }

    /// A refused BDAT chunk fails the transaction (RFC 3030 §2): the
    /// chunks before it must never be delivered without it.
    fn abandon_chunking(&mut self, reply: &Reply) {
        if self.content.is_some() && self.txn.as_ref().is_some_and(|t| t.chunking) {
            self.reset_transaction(reply);
        }
    }

    // ---- content ----

    fn step_data(&mut self) -> Flow {
        let Some(content) = self.content.as_mut() else {
            debug_assert!(false, "Data mode without content");
            self.mode = Mode::Command;
            return Flow::Continue;
        };
        let avail = &self.input[self.input_pos..];
        if avail.is_empty() {
            return self.flush_body_or(Flow::NeedInput);
        }
        let (used, ended) = content.consume(avail, &mut self.body, BODY_CHUNK_BYTES_MAX);
        self.input_pos += used;
        self.count_block(used);
        if ended {
            self.mode = Mode::ContentDone;
        } else if self.body.len() >= BODY_CHUNK_BYTES_MAX {
            return self.flush_body_or(Flow::Continue);
        }
        Flow::Continue
    }

    /// Passes the collected content on as a Body event, if there is any.
    fn flush_body_or(&mut self, flow: Flow) -> Flow {
        if self.body.is_empty() {
            return flow;
        }
        let chunk = std::mem::take(&mut self.body);
        self.push_event(Event::Body(chunk));
        Flow::Continue
    }

    fn step_bdat(&mut self) -> Flow {
        let Mode::Bdat {
            chunk_bytes,
            remaining_bytes,
            last,
            ref refusal,
        } = self.mode
        else {
            return Flow::Continue;
        };
        if remaining_bytes == 0 {
            let refusal = refusal.clone();
            return self.bdat_chunk_done(chunk_bytes, last, refusal);
        }
        let avail = self.input.len() - self.input_pos;
        if avail == 0 {
            return self.flush_body_or(Flow::NeedInput);
        }
        let take = usize::try_from(remaining_bytes)
            .unwrap_or(usize::MAX)
            .min(avail);
        let used = match (refusal, self.content.as_mut()) {
            (None, Some(content)) => {
                let chunk = &self.input[self.input_pos..self.input_pos + take];
                content
                    .consume(chunk, &mut self.body, BODY_CHUNK_BYTES_MAX)
                    .0
            }
            _ => take,
        };
        self.input_pos += used;
        self.count_block(used);
        if let Mode::Bdat {
            remaining_bytes, ..
        } = &mut self.mode
        {
            debug_assert!(used as u64 <= *remaining_bytes);
            *remaining_bytes = remaining_bytes.saturating_sub(used as u64);
        }
        if self.body.len() >= BODY_CHUNK_BYTES_MAX {
            return self.flush_body_or(Flow::Continue);
        }
        Flow::Continue
    }

    fn bdat_chunk_done(
        &mut self,
        chunk_bytes: u64,
        last: bool,
        refusal: Option<Box<Reply>>,
    ) -> Flow {
        self.mode = Mode::Command;
        self.rearm = true;
        if let Some(reply) = refusal {
            let enhanced = reply.enhanced.unwrap_or(Enhanced(5, 5, 1));
            self.client_error(reply.code, enhanced, reply.lines.concat());
            self.abandon_chunking(&reply);
            return Flow::Continue;
        }
        let Some(content) = self.content.as_mut() else {
            debug_assert!(false, "BDAT chunk without content");
            return Flow::Continue;
        };
        if last {
            self.mode = Mode::ContentDone;
            return Flow::Continue;
        }
        if content.refusal.is_some() {
            // RFC 3030 §2: a refused chunk fails the transaction at once.
            self.mode = Mode::ContentDone;
            return Flow::Continue;
        }
        self.reply(
            250,
            Enhanced(2, 0, 0),
            format!("{} octets received", chunk_bytes),
        );
        self.flush_body_or(Flow::Continue)
    }

    /// After the end of content: the last Body, then DataEnd (waiting for
    /// the driver) or DataAborted with the machine's own reply.
    fn step_content_done(&mut self) -> Flow {
        let refusal = match self.content.as_mut() {
            Some(c) => {
                c.finish(&mut self.body);
                if let Some(t) = self.txn.as_mut() {
                    t.content_8bit = c.eight_bit;
                }
                c.refusal
            }
            None => None,
        };
        self.mode = Mode::Command;
        self.rearm = true;
        self.content = None;
        match refusal {
            None => {
                let flow = self.flush_body_or(Flow::Continue);
                self.pending = Some(Box::new(Pending::DataEnd));
                self.push_event(Event::DataEnd);
                flow
            }
            Some(r) => {
                self.body.clear();
                self.txn = None;
                let reply = r.reply(&self.params);
                self.send(&reply);
                self.push_event(Event::DataAborted { reply });
                Flow::Continue
            }
        }
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// What follows a path must be nothing or SP-separated parameters.
fn params_after_path(rest: &str) -> Option<&str> {
    if rest.is_empty() {
        return Some("");
    }
    rest.strip_prefix(' ').map(|p| p.trim_start_matches(' '))
}

/// Why content was refused; the first reason found wins.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    TooBig,
    BareLineEnd,
    LineTooLong,
    Nul,
}

impl Refusal {
    fn reply(self, params: &ServerParams) -> Reply {
        match self {
            Refusal::TooBig => Reply::new(
                552,
                Enhanced(5, 3, 4),
                format!(
                    "message size exceeds fixed maximum of {} octets",
                    params.max_message_bytes
                ),
            ),
            Refusal::BareLineEnd => Reply::new(
                550,
                Enhanced(5, 6, 11),
                "bare CR or LF not allowed (RFC 5321 section 2.3.8)",
            ),
            Refusal::LineTooLong => Reply::new(
                500,
                Enhanced(5, 6, 0),
                format!(
                    "line too long: text lines are limited to {} octets (RFC 5321 section 4.5.3.1.6)",
                    params.max_text_line_bytes
                ),
            ),
            Refusal::Nul => Reply::new(
                550,
                Enhanced(5, 6, 0),
                "NUL octets not allowed in message content",
            ),
        }
    }
}

/// Where the content parser stands on the wire. A line starts only after
/// CRLF (or at the very start of DATA content, right after the command's
/// CRLF); a bare CR or LF never starts one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    LineStart,
    /// "." at the start of a line.
    Dot,
    /// "." CR at the start of a line: one LF away from the end.
    DotCr,
    /// Inside a line.
    Mid,
    /// CR seen; LF makes it a line end, anything else makes it bare.
    Cr,
}

/// Content of one message as it arrives: dot-unstuffing and end detection
/// (DATA only), bare CR/LF and NUL policies, text line and size limits,
/// 8-bit detection, and the Return-Path filter on the header section.
#[derive(Clone, Debug)]
struct Content {
    /// DATA content (dot-stuffed, ends at CRLF.CRLF); false for BDAT.
    dot_stuffed: bool,
    /// False for BINARYMIME: octets pass as they are, no line rules.
    text: bool,
    normalize: bool,
    strip_nul: bool,
    wire: Wire,
    /// BINARYMIME, header section: a CR waits for the next octet (CRLF is
    /// a line end, anything else keeps the CR as line content).
    binary_cr: bool,
    /// Octets in the current stored line, CRLF not counted.
    line_bytes: usize,
    line_bytes_max: usize,
    content_bytes: u64,
    content_bytes_max: u64,
    refusal: Option<Refusal>,
    /// An octet above 127 was seen.
    eight_bit: bool,
    headers: HeaderFilter,
}

impl Content {
    fn new(params: &ServerParams, dot_stuffed: bool, text: bool) -> Content {
        Content {
            dot_stuffed,
            text,
            normalize: params.bare_lf == BareLfPolicy::Normalize,
            strip_nul: params.nul == NulPolicy::Strip,
            wire: Wire::LineStart,
            binary_cr: false,
            line_bytes: 0,
            line_bytes_max: params.max_text_line_bytes.saturating_sub(2),
            content_bytes: 0,
            content_bytes_max: params.max_message_bytes,
            refusal: None,
            eight_bit: false,
            headers: HeaderFilter::new(&params.hostname),
        }
    }

    fn refuse(&mut self, r: Refusal) {
        if self.refusal.is_none() {
            self.refusal = Some(r);
        }
    }

    fn count(&mut self, n: usize) {
        self.content_bytes = self.content_bytes.saturating_add(n as u64);
        if self.content_bytes > self.content_bytes_max {
            self.refuse(Refusal::TooBig);
        }
    }

    /// Stores text octets (no CR, LF or NUL among them).
    fn emit_text(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        self.line_bytes = self.line_bytes.saturating_add(bytes.len());
        if self.line_bytes > self.line_bytes_max {
            self.refuse(Refusal::LineTooLong);
        }
        self.count(bytes.len());
        if self.refusal.is_none() {
            self.headers.text(bytes, out);
        }
    }

    fn emit_eol(&mut self, out: &mut Vec<u8>) {
        self.line_bytes = 0;
        self.count(2);
        if self.refusal.is_none() {
            self.headers.eol(b"\r\n", out);
        }
    }

    fn bare_line_end(&mut self, out: &mut Vec<u8>) {
        if self.normalize {
            self.emit_eol(out);
        } else {
            self.refuse(Refusal::BareLineEnd);
        }
    }

    /// A NUL octet on the wire: it still counts as line content for end
    /// detection (the caller moves to `Wire::Mid`), but is never stored.
    fn nul(&mut self) {
        if !self.strip_nul {
            self.refuse(Refusal::Nul);
        }
    }

    /// Consumes from `input` until it is used up, the end of DATA content
    /// is found, or `out` holds `out_cap` bytes. Returns the octets used and
    /// whether the end was found (the terminator is used, not stored).
    fn consume(&mut self, input: &[u8], out: &mut Vec<u8>, out_cap: usize) -> (usize, bool) {
        if !self.text {
            let take = input.len().min(out_cap.saturating_sub(out.len()));
            let bytes = &input[..take];
            self.count(take);
            if !self.eight_bit && bytes.iter().any(|&b| b >= 0x80) {
                self.eight_bit = true;
            }
            if self.refusal.is_none() {
                self.binary_out(bytes, out);
            }
            return (take, false);
        }
        let mut i = 0;
        while i < input.len() && out.len() < out_cap {
            let b = input[i];
            match self.wire {
                Wire::LineStart if self.dot_stuffed && b == b'.' => {
                    self.wire = Wire::Dot;
                    i += 1;
                }
                Wire::LineStart | Wire::Mid => {
                    i += self.consume_in_line(&input[i..], out, out_cap);
                }
                // A dot at the start of a line followed by anything but CR is
                // a stuffing dot: drop it and read the octet as line content.
                Wire::Dot if b == b'\r' => {
                    self.wire = Wire::DotCr;
                    i += 1;
                }
                // "." and a bare LF: under Normalize a line holding only a
                // dot, which is content (it ended no message on the wire).
                Wire::Dot if b == b'\n' => {
                    self.emit_text(out, b".");
                    self.wire = Wire::Mid;
                }
                Wire::Dot => self.wire = Wire::Mid,
                Wire::DotCr if b == b'\n' => {
                    self.wire = Wire::LineStart;
                    return (i + 1, true);
                }
                // "." and a bare CR: as "." and a bare LF above; the CR is
                // pending.
                Wire::DotCr => {
                    self.emit_text(out, b".");
                    self.wire = Wire::Cr;
                }
                Wire::Cr if b == b'\n' => {
                    self.emit_eol(out);
                    self.wire = Wire::LineStart;
                    i += 1;
                }
                Wire::Cr => {
                    self.bare_line_end(out);
                    self.wire = Wire::Mid;
                }
            }
        }
        (i, false)
    }

    /// Inside a line (or at its start, not on a stuffing dot): consumes one
    /// CR, LF or NUL, or a run of other octets, noting octets above 127.
    /// Returns the octets used (>= 1).
    fn consume_in_line(&mut self, input: &[u8], out: &mut Vec<u8>, out_cap: usize) -> usize {
        debug_assert!(!input.is_empty());
        match input[0] {
            b'\r' => {
                self.wire = Wire::Cr;
                1
            }
            b'\n' => {
                // A bare LF ends no line on the wire: what follows is Mid.
                self.bare_line_end(out);
                self.wire = Wire::Mid;
                1
            }
            0 => {
                self.nul();
                self.wire = Wire::Mid;
                1
            }
            _ => {
                // Room for the run and for what the header filter holds back.
                let room = out_cap
                    .saturating_sub(out.len())
                    .saturating_sub(self.headers.held_bytes())
                    .max(1);
                let window = &input[..input.len().min(room)];
                // The run ends at the next CR, LF or NUL (SIMD search).
                let run = memchr::memchr3(b'\r', b'\n', 0, window).unwrap_or(window.len());
                if !self.eight_bit && !window[..run].is_ascii() {
                    self.eight_bit = true;
                }
                self.emit_text(out, &window[..run]);
                self.wire = Wire::Mid;
                run
            }
        }
    }

    /// BINARYMIME octets, stored as they are, except that the header
    /// section goes through the Return-Path filter: there a line ends at LF
    /// (CRLF or bare), and a bare CR is line content.
    fn binary_out(&mut self, mut bytes: &[u8], out: &mut Vec<u8>) {
        while let Some(&b) = bytes.first() {
            if self.headers.in_body() && !self.binary_cr {
                out.extend_from_slice(bytes);
                return;
            }
            if self.binary_cr {
                self.binary_cr = false;
                if b == b'\n' {
                    self.headers.eol(b"\r\n", out);
                    bytes = &bytes[1..];
                } else {
                    self.headers.text(b"\r", out);
                }
                continue;
            }
            match b {
                b'\r' => {
                    self.binary_cr = true;
                    bytes = &bytes[1..];
                }
                b'\n' => {
                    self.headers.eol(b"\n", out);
                    bytes = &bytes[1..];
                }
                _ => {
                    let run = bytes
                        .iter()
                        .position(|&c| c == b'\r' || c == b'\n')
                        .unwrap_or(bytes.len());
                    self.headers.text(&bytes[..run], out);
                    bytes = &bytes[run..];
                }
            }
        }
    }

    /// The end of the content: a CR left waiting for its LF is bare (text)
    /// or kept (BINARYMIME), and what the header filter held is released.
    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.text && self.wire == Wire::Cr {
            self.bare_line_end(out);
            self.wire = Wire::Mid;
        }
        if self.refusal.is_some() {
            return;
        }
        if self.binary_cr {
            self.binary_cr = false;
            self.headers.text(b"\r", out);
        }
        self.headers.finish(out);
    }
}

/// Where the Return-Path filter stands in the stored content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HeaderState {
    /// At the start of a line of the header section.
    LineStart,
    /// At the start of a line whose octets so far (all held back) are a
    /// prefix of "Return-Path", or that whole name and white space.
    Name,
    /// The rest of this line is kept.
    Pass,
    /// The rest of this line is dropped.
    Drop,
    /// An Authentication-Results field up to its colon was read (held in
    /// `ar_held`); its authserv-id is being read.
    ArId,
    /// Past the first empty line: everything is kept.
    Body,
}

/// Drops every `Return-Path:` field (name compared case-insensitively, white
/// space allowed before the colon, continuation lines included) from the
/// header section, i.e. before the first empty line. Streams: it sees the
/// stored lines as runs of line octets and line ends, and holds back at
/// most `HEADER_HOLD_BYTES_MAX` octets of one line start. A line starting
/// with "Return-Path" and more white space than that is dropped too.
///
/// An `Authentication-Results:` field is held (at most
/// `AR_HOLD_BYTES_MAX` octets, allocated only then) until its authserv-id
/// ends (at `;`, white space, `(` or the line end): it is dropped when the
/// id is `hostname` (case-insensitively), empty on the first line (folded
/// or a comment first: it could hide our name), or too long to hold.
#[derive(Clone, Debug)]
struct HeaderFilter {
    state: HeaderState,
    held: [u8; HEADER_HOLD_BYTES_MAX],
    held_len: usize,
    /// The field being read is dropped: its continuation lines go too.
    dropping: bool,
    /// This host's name, lower-case: the authserv-id that is ours.
    hostname: Box<[u8]>,
    /// An Authentication-Results field's start, while its id is read.
    ar_held: Vec<u8>,
    /// Where the authserv-id starts in `ar_held`, once a non-blank octet
    /// after the colon was seen.
    ar_id_start: Option<usize>,
}

impl HeaderFilter {
    fn new(hostname: &str) -> HeaderFilter {
        HeaderFilter {
            state: HeaderState::LineStart,
            held: [0; HEADER_HOLD_BYTES_MAX],
            held_len: 0,
            dropping: false,
            hostname: hostname.to_ascii_lowercase().into_bytes().into_boxed_slice(),
            ar_held: Vec::new(),
            ar_id_start: None,
        }
    }

    /// Whether the octets held so far and `lower` next are a prefix of
    /// `name`.
    fn prefix_of(&self, name: &[u8], lower: u8) -> bool {
        let n = self.held_len;
        n < name.len() && name[n] == lower && self.held[..n].eq_ignore_ascii_case(&name[..n])
    }

    /// Whether the octets held start with the whole of `name`.
    fn holds_name(&self, name: &[u8]) -> bool {
        self.held_len >= name.len() && self.held[..name.len()].eq_ignore_ascii_case(name)
    }

    /// An octet of an Authentication-Results field after its colon.
    fn ar_octet(&mut self, b: u8, out: &mut Vec<u8>) {
        let blank = b == b' ' || b == b'\t';
        if self.ar_id_start.is_none() && blank {
            self.ar_hold(b);
            return;
        }
        if self.ar_id_start.is_none() {
            if b == b'(' || b == b';' {
                // No id before a comment or the results: drop it.
                self.ar_drop();
                return;
            }
            self.ar_id_start = Some(self.ar_held.len());
            self.ar_hold(b);
            return;
        }
        if blank || b == b';' || b == b'(' {
            if self.ar_id_is_ours() {
                self.ar_drop();
            } else {
                out.extend_from_slice(&self.ar_held);
                self.ar_release();
                out.push(b);
                self.state = HeaderState::Pass;
            }
            return;
        }
        self.ar_hold(b);
    }

    fn ar_hold(&mut self, b: u8) {
        if self.ar_held.len() >= AR_HOLD_BYTES_MAX {
            self.ar_drop();
            return;
        }
        self.ar_held.push(b);
    }

    fn ar_id_is_ours(&self) -> bool {
        match self.ar_id_start {
            Some(start) => self.ar_held[start..].eq_ignore_ascii_case(&self.hostname),
            None => true,
        }
    }

    fn ar_drop(&mut self) {
        self.ar_release();
        self.dropping = true;
        if self.state == HeaderState::ArId {
            self.state = HeaderState::Drop;
        }
    }

    fn ar_release(&mut self) {
        self.ar_held = Vec::new();
        self.ar_id_start = None;
    }

    fn in_body(&self) -> bool {
        self.state == HeaderState::Body
    }

    fn held_bytes(&self) -> usize {
        self.held_len
    }

    /// Line octets (no line end among them).
    fn text(&mut self, mut bytes: &[u8], out: &mut Vec<u8>) {
        while let Some(&b) = bytes.first() {
            match self.state {
                HeaderState::Body | HeaderState::Pass => {
                    out.extend_from_slice(bytes);
                    return;
                }
                HeaderState::Drop => return,
                HeaderState::ArId => {
                    self.ar_octet(b, out);
                    bytes = &bytes[1..];
                }
                HeaderState::LineStart if b == b' ' || b == b'\t' => {
                    // A continuation line belongs to the field before it.
                    self.state = if self.dropping {
                        HeaderState::Drop
                    } else {
                        HeaderState::Pass
                    };
                }
                HeaderState::LineStart => {
                    self.dropping = false;
                    self.state = HeaderState::Name;
                }
                HeaderState::Name => {
                    self.name_octet(b, out);
                    bytes = &bytes[1..];
                }
            }
        }
    }

    fn name_octet(&mut self, b: u8, out: &mut Vec<u8>) {
        debug_assert!(self.held_len <= HEADER_HOLD_BYTES_MAX);
        let return_path = self.holds_name(RETURN_PATH);
        let auth_results = self.holds_name(AUTH_RESULTS);
        let whole_name = return_path || auth_results;
        let blank = b == b' ' || b == b'\t';
        let lower = b.to_ascii_lowercase();
        let name_ends = b == b':' || (blank && self.held_len == HEADER_HOLD_BYTES_MAX);
        if return_path && name_ends {
            self.held_len = 0;
            self.dropping = true;
            self.state = HeaderState::Drop;
        } else if auth_results && name_ends {
            let mut held = Vec::with_capacity(AR_HOLD_BYTES_MAX);
            held.extend_from_slice(&self.held[..self.held_len]);
            held.push(b);
            self.ar_held = held;
            self.ar_id_start = None;
            self.held_len = 0;
            self.state = HeaderState::ArId;
            if b != b':' {
                // White space past the hold before the colon: not ours to keep.
                self.ar_drop();
            }
        } else if (whole_name && blank)
            || (!whole_name && (self.prefix_of(RETURN_PATH, lower) || self.prefix_of(AUTH_RESULTS, lower)))
        {
            self.held[self.held_len] = b;
            self.held_len += 1;
        } else {
            self.release(out);
            out.push(b);
            self.state = HeaderState::Pass;
        }
    }

    /// A line end, written as `ending` when the line is kept.
    fn eol(&mut self, ending: &[u8], out: &mut Vec<u8>) {
        match self.state {
            // The empty line ends the header section.
            HeaderState::LineStart => {
                self.state = HeaderState::Body;
                out.extend_from_slice(ending);
            }
            HeaderState::Name => {
                self.release(out);
                out.extend_from_slice(ending);
                self.state = HeaderState::LineStart;
            }
            HeaderState::Pass => {
                out.extend_from_slice(ending);
                self.state = HeaderState::LineStart;
            }
            HeaderState::Drop => self.state = HeaderState::LineStart,
            HeaderState::ArId => {
                if self.ar_id_is_ours() {
                    self.ar_release();
                    self.dropping = true;
                } else {
                    out.extend_from_slice(&self.ar_held);
                    self.ar_release();
                    out.extend_from_slice(ending);
                }
                self.state = HeaderState::LineStart;
            }
            HeaderState::Body => out.extend_from_slice(ending),
        }
    }

    /// The content ended inside a line start that was held back: it was no
    /// Return-Path field, keep it.
    fn finish(&mut self, out: &mut Vec<u8>) {
        if self.state == HeaderState::Name {
            self.release(out);
            self.state = HeaderState::Pass;
        }
        if self.state == HeaderState::ArId {
            if !self.ar_id_is_ours() {
                out.extend_from_slice(&self.ar_held);
            }
            self.ar_release();
            self.state = HeaderState::Pass;
        }
    }

    fn release(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.held[..self.held_len]);
        self.held_len = 0;
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;

/// The Received "with" keyword (RFC 3848, RFC 6531 §3.7.3).
/// The longest line allowed for the command `line` starts with: MAIL and
/// RCPT may carry DSN parameters (RFC 3461 §5), others get RFC 5321's.
fn line_bytes_max(line: &[u8]) -> usize {
    let verb = line.get(..5).unwrap_or_default();
    if verb.eq_ignore_ascii_case(b"MAIL ") || verb.eq_ignore_ascii_case(b"RCPT ") {
        PARAMETER_LINE_BYTES_MAX
    } else {
        COMMAND_LINE_BYTES_MAX
    }
}

fn protocol_name(esmtp: bool, utf8: bool, tls: bool) -> &'static str {
    match (esmtp, utf8, tls) {
        (false, _, false) => "SMTP",
        (false, _, true) => "SMTPS",
        (true, false, false) => "ESMTP",
        (true, false, true) => "ESMTPS",
        (true, true, false) => "UTF8SMTP",
        (true, true, true) => "UTF8SMTPS",
    }
}
