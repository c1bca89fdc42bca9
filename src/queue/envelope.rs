//! The envelope of a queued message as the rest of ringpost sees it: sender,
//! recipients with their delivery state, the facts delivery and bounces
//! need, and where the body is (inline bytes, or its own body file).
//!
//! Place in the pipeline: built by ingress at the final dot, carried by
//! delivery, and turned into a `queue_format::Envelope` record (and back)
//! by the log. The conversions here are the only place the two meet.

use std::sync::Arc;

use queue_format::{BodyRef, EnvelopeFlags, QueueId, RecipientState};

use crate::smtp::address::{Address, ReversePath};
use crate::smtp::dsn::{self, xtext_decode, xtext_encode, MailDsn, RcptDsn};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RcptState {
    /// Not yet delivered; retried until delivered, failed, or too old.
    Pending,
    /// Accepted by the next hop or written to the mailbox.
    Delivered,
    /// Permanently failed; reported in a bounce (unless the sender is null).
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipient {
    pub address: Address,
    pub state: RcptState,
    /// The last reply or error seen for this recipient, for logs and bounces.
    pub last_reply: String,
    /// The mailbox folder a Sieve `fileinto` chose for this copy (local
    /// delivery into the Maildir++ folder `.NAME/`); `None`: the inbox.
    /// Stored as the record's recipient parameter `XFOLDER=<xtext>`.
    pub folder: Option<Box<str>>,
    /// NOTIFY= and ORCPT= of its RCPT TO (RFC 3461), stored in the
    /// record's recipient parameters in their wire form.
    pub dsn: RcptDsn,
}

impl Recipient {
    /// The recipients a transaction accepted, each pending with its DSN
    /// parameters, in RCPT order: the recipients of a new envelope.
    pub fn pending_of(txn: &crate::smtp::server::Transaction) -> Vec<Recipient> {
        txn.recipients
            .iter()
            .zip(&txn.recipient_dsn)
            .map(|(address, dsn)| Recipient {
                address: address.clone(),
                state: RcptState::Pending,
                last_reply: String::new(),
                folder: None,
                dsn: dsn.clone(),
            })
            .collect()
    }
}

/// Where the content of a message is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// Inside the envelope record (messages up to `queue.inline_max_bytes`).
    Inline(Arc<[u8]>),
    /// In the body file named by the queue id (`body-<id>`).
    File { size_bytes: u64, checksum: u32 },
    /// In the shard's body log: the extents' table as the record holds it
    /// (`queue_format::body_extents` reads it). Only a fresh envelope in
    /// the head log has one: a replacement's body is a body file.
    Log { size_bytes: u64, checksum: u32, extents: Arc<[u8]> },
}

impl Body {
    /// The body log segments the body's extents are in, first and last
    /// (they are a range: a body is appended in order).
    pub fn log_segments(&self) -> Option<(u64, u64)> {
        let Body::Log { extents, .. } = self else {
            return None;
        };
        let mut all = queue_format::body_extents(extents).map(|extent| extent.segment_sequence);
        let first = all.next()?;
        Some((first, all.last().unwrap_or(first)))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// 16 upper-case hex digits: microseconds since the epoch and the shard.
    pub id: String,
    /// The reverse path of MAIL FROM, `<>` for a bounce.
    pub sender: ReversePath,
    pub recipients: Vec<Recipient>,
    pub arrival_unix_ms: u64,
    pub next_retry_unix_ms: u64,
    /// Delivery attempts so far; also the envelope's generation in the log.
    pub attempt_count: u16,
    /// Content size in octets as stored (CRLF line endings).
    pub size_bytes: u64,
    /// 8-bit content: declared BODY=8BITMIME, or octets above 127 seen
    /// while it was received (RFC 6152 §3: never sent to a 7-bit peer).
    pub body_8bit: bool,
    /// BODY=BINARYMIME (RFC 3030): stored and relayed byte for byte, and
    /// only with BDAT.
    pub body_binary: bool,
    pub smtputf8: bool,
    /// The client's address and HELO name, for logs.
    pub client: Box<str>,
    pub helo: Box<str>,
    /// Header lines (each ending in CRLF) added above the stored content
    /// at delivery: what content scanners add. The stored content is never
    /// rewritten. At most `queue_format::HEADERS_PREPENDED_SIZE_BYTES_MAX`.
    pub headers_prepended: Vec<u8>,
    /// The queue id the origin gave this message when this envelope is a
    /// replica held for a peer (`[replicate]`): stored, never delivered
    /// unless that peer falls silent. None for every other message, and
    /// for a replica once it is taken over.
    pub replica_of: Option<Box<str>>,
    /// Held by an operator (`ringpost queue hold`): not attempted until
    /// released. Stored as the HELD flag of a replacement envelope.
    pub held: bool,
    /// The login of the SMTP AUTH session that submitted the message
    /// (`crate::sasl`); None for mail from an unauthenticated client.
    /// Stored as `AUTH=<xtext>` in `mail_params` (RFC 4954 §5's
    /// parameter, with the identity the session proved).
    pub auth: Option<Box<str>>,
    /// RET= and ENVID= of MAIL FROM (RFC 3461), stored in the record's
    /// `mail_params` in their wire form.
    pub dsn: MailDsn,
    /// The delay warning has been queued for the sender: none again.
    /// Stored as the DELAY_WARNED flag of a replacement envelope.
    pub delay_warned: bool,
    pub body: Body,
}

impl Envelope {
    /// A message ringpost writes itself (a bounce, a vacation response):
    /// from `<>` to `to`, arriving now, its `content` already written by
    /// the message writer named `id`.
    pub fn from_null_sender(id: String, to: Address, content: &[u8], smtputf8: bool, now_ms: u64) -> Envelope {
        Envelope {
            id,
            sender: ReversePath::Null,
            recipients: vec![Recipient {
                address: to,
                state: RcptState::Pending,
                last_reply: String::new(),
                folder: None,
                // RFC 3461 §6.2: a report about a report is never wanted.
                dsn: RcptDsn { notify: Some(dsn::Notify::NEVER), orcpt: None },
            }],
            arrival_unix_ms: now_ms,
            next_retry_unix_ms: now_ms,
            attempt_count: 0,
            size_bytes: content.len() as u64,
            // A report about a UTF-8 address (RFC 6533) carries 8-bit text.
            body_8bit: content.iter().any(|b| *b >= 0x80),
            body_binary: false,
            smtputf8,
            client: "local".into(),
            helo: "".into(),
            body: Body::Inline(Default::default()),
            headers_prepended: Vec::new(),
            replica_of: None,
            held: false,
            auth: None,
            dsn: MailDsn::default(),
            delay_warned: false,
        }
    }

    pub fn pending_count(&self) -> usize {
        self.recipients.iter().filter(|r| r.state == RcptState::Pending).count()
    }
    pub fn is_null_sender(&self) -> bool {
        self.sender == ReversePath::Null
    }
    pub fn queue_id(&self) -> QueueId {
        queue_id_of(&self.id)
    }
}

/// The record form of a queue id known to be well formed: one made by
/// `Queue::next_id`, or read from a record (the decoder refuses any other,
/// SPEC section 6.1). Anything else is a bug here, never disk content, and
/// stops the program; text from outside goes through [`parse_queue_id`].
pub fn queue_id_of(id: &str) -> QueueId {
    match parse_queue_id(id) {
        Ok(qid) => qid,
        Err(_) => panic!("queue ids are 16 upper-case hex digits: {id:?}"),
    }
}

/// The queue id spelt by text from outside (an operator's argument).
pub fn parse_queue_id(id: &str) -> Result<QueueId, queue_format::LimitError> {
    QueueId::parse(id.as_bytes())
}

/// The text form of a queue id read from the log.
pub fn id_text(id: &QueueId) -> String {
    id.to_string()
}

fn state_to_format(state: RcptState) -> RecipientState {
    match state {
        RcptState::Pending => RecipientState::Pending,
        RcptState::Delivered => RecipientState::Delivered,
        RcptState::Failed => RecipientState::Failed,
    }
}

fn state_from_format(state: RecipientState) -> RcptState {
    match state {
        RecipientState::Pending => RcptState::Pending,
        RecipientState::Delivered => RcptState::Delivered,
        RecipientState::Failed => RcptState::Failed,
    }
}

/// The body file id of a message: its queue id read as a hex number.
pub fn body_file_id(id: &str) -> u64 {
    u64::from_str_radix(id, 16).unwrap_or(0).max(1)
}

/// Keeps the first `max` bytes of a reply, cut on a character boundary.
fn bounded(text: &str, max: usize) -> &[u8] {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text.as_bytes()[..end]
}

/// Whole header lines of `headers` that fit in `max` bytes (the scanning
/// stage never adds more; this only keeps a record within its format).
fn bounded_bytes(headers: &[u8], max: usize) -> &[u8] {
    if headers.len() <= max {
        return headers;
    }
    let end = headers[..max].windows(2).rposition(|w| w == b"\r\n").map_or(0, |at| at + 2);
    &headers[..end]
}

/// An address as the log stores it (`local@domain`, or a bare `postmaster`),
/// read back. The text was written from a parsed [`Address`], so the domain
/// is what follows the last `@` (a domain never holds one); a stored text
/// with an empty part is refused.
pub fn stored_address(text: &str) -> Result<Address, String> {
    match text.rsplit_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() => {
            Ok(Address { local_part: local.to_string(), domain: Some(domain.to_string()) })
        }
        None if text.eq_ignore_ascii_case("postmaster") => Ok(Address { local_part: text.to_string(), domain: None }),
        _ => Err(format!("not a stored address: {text:?}")),
    }
}

impl Envelope {
    /// The record form, borrowing from `self` and from `texts`, the text
    /// forms of its addresses ([`AddressTexts::of`]).
    pub fn to_format<'a>(&'a self, texts: &'a AddressTexts) -> queue_format::Envelope<'a> {
        debug_assert_eq!(texts.recipients.len(), self.recipients.len());
        let mut flags = EnvelopeFlags::empty();
        if self.body_8bit {
            flags = flags.union(EnvelopeFlags::BODY_8BITMIME);
        }
        if self.body_binary {
            flags = flags.union(EnvelopeFlags::BODY_BINARYMIME);
        }
        if self.smtputf8 {
            flags = flags.union(EnvelopeFlags::SMTPUTF8);
        }
        if self.is_null_sender() {
            flags = flags.union(EnvelopeFlags::NULL_SENDER);
        }
        if self.replica_of.is_some() {
            flags = flags.union(EnvelopeFlags::REPLICA);
        }
        if self.held {
            flags = flags.union(EnvelopeFlags::HELD);
        }
        if self.delay_warned {
            flags = flags.union(EnvelopeFlags::DELAY_WARNED);
        }
        let body = match &self.body {
            Body::Inline(bytes) => BodyRef::Inline(bytes),
            Body::File { size_bytes, checksum } => {
                BodyRef::File { file_id: body_file_id(&self.id), size_bytes: *size_bytes, checksum: *checksum }
            }
            Body::Log { size_bytes, checksum, extents } => {
                BodyRef::Log { extents, size_bytes: *size_bytes, checksum: *checksum }
            }
        };
        queue_format::Envelope {
            queue_id: self.queue_id(),
            arrival_unix_ms: self.arrival_unix_ms,
            retry_next_unix_ms: self.next_retry_unix_ms.max(self.arrival_unix_ms),
            attempt_count: self.attempt_count,
            flags,
            sender: texts.sender.as_bytes(),
            mail_params: texts.mail_params.as_bytes(),
            client_address: bounded(&self.client, queue_format::CLIENT_ADDRESS_SIZE_BYTES_MAX),
            client_helo: bounded(&self.helo, queue_format::CLIENT_HELO_SIZE_BYTES_MAX),
            headers_prepended: bounded_bytes(&self.headers_prepended, queue_format::HEADERS_PREPENDED_SIZE_BYTES_MAX),
            recipients: self
                .recipients
                .iter()
                .zip(&texts.recipients)
                .zip(&texts.recipient_params)
                .map(|((r, address), params)| queue_format::Recipient {
                    state: state_to_format(r.state),
                    address: address.as_bytes(),
                    params: params.as_bytes(),
                    reply: bounded(&r.last_reply, queue_format::REPLY_SIZE_BYTES_MAX),
                })
                .collect(),
            body,
        }
    }

    /// The owned form of a record read from the log; an address the log
    /// holds that is not one (never written so) is refused.
    pub fn from_format(record: &queue_format::Envelope<'_>) -> Result<Envelope, String> {
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        let address = |bytes: &[u8]| {
            std::str::from_utf8(bytes).map_err(|_| "address is not UTF-8".to_string()).and_then(stored_address)
        };
        let sender = if record.flags.contains(EnvelopeFlags::NULL_SENDER) {
            ReversePath::Null
        } else {
            ReversePath::Path(address(record.sender)?)
        };
        let mut recipients = Vec::with_capacity(record.recipients.len());
        for r in &record.recipients {
            recipients.push(Recipient {
                address: address(r.address)?,
                state: state_from_format(r.state),
                last_reply: text(r.reply),
                folder: folder_param(r.params),
                dsn: dsn::stored_rcpt(&text(r.params)),
            });
        }
        let replica_of = match record.flags.contains(EnvelopeFlags::REPLICA) {
            false => None,
            true => Some(replica_param(record.mail_params).ok_or("a replica without XREPLICA=<queue id>")?),
        };
        let (body, size_bytes) = match record.body {
            BodyRef::Inline(bytes) => (Body::Inline(Arc::from(bytes)), bytes.len() as u64),
            BodyRef::File { size_bytes, checksum, .. } => (Body::File { size_bytes, checksum }, size_bytes),
            BodyRef::Log { extents, size_bytes, checksum } => {
                (Body::Log { size_bytes, checksum, extents: Arc::from(extents) }, size_bytes)
            }
        };
        Ok(Envelope {
            id: id_text(&record.queue_id),
            sender,
            recipients,
            arrival_unix_ms: record.arrival_unix_ms,
            next_retry_unix_ms: record.retry_next_unix_ms,
            attempt_count: record.attempt_count,
            size_bytes,
            body_8bit: record.flags.contains(EnvelopeFlags::BODY_8BITMIME),
            body_binary: record.flags.contains(EnvelopeFlags::BODY_BINARYMIME),
            smtputf8: record.flags.contains(EnvelopeFlags::SMTPUTF8),
            client: text(record.client_address).into(),
            helo: text(record.client_helo).into(),
            headers_prepended: record.headers_prepended.to_vec(),
            replica_of,
            held: record.flags.contains(EnvelopeFlags::HELD),
            auth: auth_param(record.mail_params),
            dsn: dsn::stored_mail(&text(record.mail_params)),
            delay_warned: record.flags.contains(EnvelopeFlags::DELAY_WARNED),
            body,
        })
    }
}

/// The text forms of an envelope's addresses, which its record borrows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressTexts {
    sender: String,
    recipients: Vec<String>,
    /// The record's `mail_params`: `XREPLICA=<id>` for a replica,
    /// `AUTH=<xtext>` for an authenticated submission, and the DSN
    /// parameters (`RET=`, `ENVID=`) if any.
    mail_params: String,
    /// Each recipient's `params`: `XFOLDER=<xtext>` for a filed copy, and
    /// the DSN parameters (`NOTIFY=`, `ORCPT=`) if any.
    recipient_params: Vec<String>,
}

/// A filed copy's folder in a recipient's `params` (`XFOLDER=<xtext>`,
/// RFC 3461's xtext so that any folder name fits one parameter).
fn folder_param(params: &[u8]) -> Option<Box<str>> {
    let text = std::str::from_utf8(params).ok()?;
    let value = text.split(' ').find_map(|param| param.strip_prefix("XFOLDER="))?;
    let decoded = xtext_decode(value)?;
    (!decoded.is_empty()).then(|| decoded.into())
}

/// The `mail_params` of `env`: `XREPLICA=<id>`, `AUTH=<xtext>`, space
/// separated; the login is cut to what fits the field.
fn mail_params_text(env: &Envelope) -> String {
    let mut params = Vec::new();
    if let Some(id) = &env.replica_of {
        params.push(format!("XREPLICA={id}"));
    }
    let dsn = env.dsn.wire();
    let dsn = dsn.trim_start();
    if !dsn.is_empty() {
        params.push(dsn.to_string());
    }
    if let Some(login) = &env.auth {
        let mut encoded = xtext_encode(login);
        // What is left beside the replica's id and the DSN parameters
        // (ENVID is at most 100 bytes): the login is cut to fit.
        let room = queue_format::ESMTP_PARAMS_SIZE_BYTES_MAX
            - "AUTH= XREPLICA=0123456789ABCDEF".len()
            - if dsn.is_empty() { 0 } else { dsn.len() + 1 };
        if encoded.len() > room {
            let mut cut = room;
            // Never inside a +HH escape.
            while cut > 0 && encoded.as_bytes()[cut.saturating_sub(2)..cut].contains(&b'+') {
                cut -= 1;
            }
            encoded.truncate(cut);
        }
        params.push(format!("AUTH={encoded}"));
    }
    params.join(" ")
}

/// The login in `mail_params` (`AUTH=<xtext>`).
fn auth_param(mail_params: &[u8]) -> Option<Box<str>> {
    let text = std::str::from_utf8(mail_params).ok()?;
    let value = text.split(' ').find_map(|param| param.strip_prefix("AUTH="))?;
    let decoded = xtext_decode(value)?;
    (!decoded.is_empty()).then(|| decoded.into())
}

/// The origin's queue id in a replica's `mail_params` (`XREPLICA=<id>`).
fn replica_param(mail_params: &[u8]) -> Option<Box<str>> {
    let text = std::str::from_utf8(mail_params).ok()?;
    let id = text.split(' ').find_map(|param| param.strip_prefix("XREPLICA="))?;
    parse_queue_id(id).ok()?;
    Some(id.into())
}

/// A recipient's stored parameters: XFOLDER, then NOTIFY and ORCPT. The
/// server bounds ORCPT and a folder name is short, so they fit the field;
/// if they did not, ORCPT (only ever copied into a report) is left out
/// rather than make the record one the format refuses.
fn recipient_params(r: &Recipient) -> String {
    let mut params = r.folder.as_deref().map(|f| format!("XFOLDER={}", xtext_encode(f))).unwrap_or_default();
    let mut with_dsn = params.clone();
    with_dsn.push_str(&r.dsn.wire());
    if with_dsn.len() <= queue_format::ESMTP_PARAMS_SIZE_BYTES_MAX {
        return with_dsn.trim_start().to_string();
    }
    params.push_str(&RcptDsn { notify: r.dsn.notify, orcpt: None }.wire());
    params.trim_start().to_string()
}

impl AddressTexts {
    pub fn of(env: &Envelope) -> AddressTexts {
        AddressTexts {
            sender: match &env.sender {
                ReversePath::Null => String::new(),
                ReversePath::Path(a) => a.to_string(),
            },
            recipients: env.recipients.iter().map(|r| r.address.to_string()).collect(),
            mail_params: mail_params_text(env),
            recipient_params: env.recipients.iter().map(recipient_params).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(body: Body) -> Envelope {
        Envelope {
            id: "0006201A2B3C4D01".into(),
            sender: ReversePath::Path(stored_address("a@example.org").unwrap()),
            recipients: vec![
                Recipient {
                    address: stored_address("b@example.net").unwrap(),
                    state: RcptState::Pending,
                    last_reply: String::new(),
                    folder: None,
                    dsn: RcptDsn { notify: Some(dsn::Notify::SUCCESS), orcpt: Some("rfc822;b+2Bx@example.net".into()) },
                },
                Recipient {
                    address: stored_address("c@example.net").unwrap(),
                    state: RcptState::Delivered,
                    last_reply: "250 2.0.0 ok".into(),
                    folder: Some("Lists/rust é".into()),
                    dsn: RcptDsn::default(),
                },
            ],
            arrival_unix_ms: 1_767_225_600_000,
            next_retry_unix_ms: 1_767_225_900_000,
            attempt_count: 2,
            size_bytes: 5,
            body_8bit: true,
            body_binary: true,
            smtputf8: false,
            client: "[127.0.0.1]:4000".into(),
            helo: "client.example".into(),
            headers_prepended: b"X-Spam-Status: No, score=0.1\r\nX-Virus-Scanned: clamd\r\n".to_vec(),
            replica_of: None,
            held: false,
            auth: None,
            dsn: MailDsn { ret: Some(dsn::Ret::Hdrs), envid: Some("QQ314159".into()) },
            delay_warned: false,
            body,
        }
    }

    #[test]
    fn round_trip_inline_and_file() {
        for body in [Body::Inline(Arc::from(&b"hello"[..])), Body::File { size_bytes: 5, checksum: 7 }] {
            let env = sample(body);
            let texts = AddressTexts::of(&env);
            let back = Envelope::from_format(&env.to_format(&texts)).unwrap();
            assert_eq!(back, env);
        }
    }

    #[test]
    fn auth_login_round_trips_in_mail_params() {
        let mut env = sample(Body::Inline(Arc::from(&b"hello"[..])));
        env.auth = Some("alice+x=y é".into());
        let texts = AddressTexts::of(&env);
        let record = env.to_format(&texts);
        // The sample carries DSN parameters too; the login follows them.
        assert_eq!(record.mail_params, "RET=HDRS ENVID=QQ314159 AUTH=alice+2Bx+3Dy+20+C3+A9".as_bytes());
        assert_eq!(Envelope::from_format(&record).unwrap(), env);
        env.replica_of = Some("0006201A2B3C4D02".into());
        env.auth = Some("b".repeat(2000).into());
        let texts = AddressTexts::of(&env);
        let record = env.to_format(&texts);
        assert!(record.mail_params.len() <= queue_format::ESMTP_PARAMS_SIZE_BYTES_MAX);
        let back = Envelope::from_format(&record).unwrap();
        assert_eq!(back.replica_of, env.replica_of);
        assert!(back.auth.as_deref().is_some_and(|a| a.len() > 850 && a.bytes().all(|b| b == b'b')), "cut to fit");
        assert_eq!(back.dsn, env.dsn, "the DSN parameters are kept whole");
    }

    #[test]
    fn replica_round_trip() {
        let mut env = sample(Body::Inline(Arc::from(&b"hello"[..])));
        env.replica_of = Some("0006201A2B3C4D02".into());
        env.dsn = MailDsn::default();
        let texts = AddressTexts::of(&env);
        let record = env.to_format(&texts);
        assert!(record.flags.contains(EnvelopeFlags::REPLICA));
        assert_eq!(record.mail_params, b"XREPLICA=0006201A2B3C4D02");
        assert_eq!(Envelope::from_format(&record).unwrap(), env);
        // The flag without its parameter is not a replica anyone can confirm.
        let mut bare = record.clone();
        bare.mail_params = b"";
        assert!(Envelope::from_format(&bare).is_err());
    }

    #[test]
    fn held_round_trip() {
        let mut env = sample(Body::Inline(Arc::from(&b"hello"[..])));
        env.attempt_count = 1;
        env.held = true;
        let texts = AddressTexts::of(&env);
        let record = env.to_format(&texts);
        assert!(record.flags.contains(EnvelopeFlags::HELD));
        assert_eq!(Envelope::from_format(&record).unwrap(), env);
        env.held = false;
        let texts = AddressTexts::of(&env);
        assert!(!env.to_format(&texts).flags.contains(EnvelopeFlags::HELD));
    }

    #[test]
    fn dsn_parameters_and_delay_warning_round_trip() {
        let mut env = sample(Body::Inline(Arc::from(&b"hello"[..])));
        env.replica_of = Some("0006201A2B3C4D02".into());
        env.delay_warned = true;
        env.recipients[1].dsn.notify = Some(dsn::Notify::NEVER);
        let texts = AddressTexts::of(&env);
        let record = env.to_format(&texts);
        assert!(record.flags.contains(EnvelopeFlags::DELAY_WARNED));
        assert_eq!(record.mail_params, b"XREPLICA=0006201A2B3C4D02 RET=HDRS ENVID=QQ314159");
        assert_eq!(record.recipients[0].params, b"NOTIFY=SUCCESS ORCPT=rfc822;b+2Bx@example.net");
        assert_eq!(record.recipients[1].params, b"XFOLDER=Lists/rust+20+C3+A9 NOTIFY=NEVER");
        assert_eq!(Envelope::from_format(&record).unwrap(), env);
        env.delay_warned = false;
        let texts = AddressTexts::of(&env);
        assert!(!env.to_format(&texts).flags.contains(EnvelopeFlags::DELAY_WARNED));
    }

    #[test]
    fn recipient_params_stay_within_the_field() {
        let mut env = sample(Body::Inline(Arc::from(&b"hello"[..])));
        env.recipients[0].folder = Some("f".repeat(700).into());
        env.recipients[0].dsn.orcpt = Some(format!("rfc822;{}", "o".repeat(490)).into());
        let texts = AddressTexts::of(&env);
        let record = env.to_format(&texts);
        assert!(record.recipients[0].params.len() <= queue_format::ESMTP_PARAMS_SIZE_BYTES_MAX);
        let back = Envelope::from_format(&record).unwrap();
        assert_eq!(back.recipients[0].dsn.notify, Some(dsn::Notify::SUCCESS));
        assert_eq!(back.recipients[0].dsn.orcpt, None);
    }

    #[test]
    fn long_reply_is_cut_on_a_character_boundary() {
        let mut env = sample(Body::Inline(Arc::from(&b"hello"[..])));
        env.recipients[0].last_reply = "é".repeat(600);
        let texts = AddressTexts::of(&env);
        let record = env.to_format(&texts);
        assert!(record.recipients[0].reply.len() <= queue_format::REPLY_SIZE_BYTES_MAX);
        assert!(std::str::from_utf8(record.recipients[0].reply).is_ok());
    }
}
