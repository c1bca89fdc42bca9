//! Users' Sieve scripts at the SMTP conversation (`[sieve]`; the language
//! itself is `crate::sieve`): a local recipient's script decides at RCPT
//! whether the address is valid for this envelope, and at the final dot
//! when it needs the message; what it decided is written into the
//! envelope before the commit, so delivery carries it out without running
//! the script again.
//!
//! Place in the pipeline: ingress asks [`Filters::at_rcpt`] after the
//! routers accepted a recipient delivered locally (transport `local`, or
//! a local domain without routers); the verdict is the RCPT reply (550
//! 5.7.1 for `reject`/`ereject`), or a decision kept in the transaction's
//! [`Txn`], or "needs the content": then the script runs again at the
//! final dot over the header block ([`Filters::at_final_dot`]). A
//! transaction holds at most one recipient whose script needs the content
//! (SMTP has one reply to the final dot for all recipients); later ones
//! get 452 4.5.3 and are sent again in a transaction of their own.
//!
//! How decisions are stored: each recipient of the envelope becomes the
//! copies its actions ask for: `keep` (and the implicit keep) the
//! recipient itself, `fileinto` the recipient with its folder
//! (`Recipient::folder`, the record's `XFOLDER=` parameter), `redirect` a
//! new recipient routed like any other (the envelope sender kept, RFC 5228
//! §4.2); `discard` leaves nothing. A transaction whose copies are all
//! discarded is answered 250 and not queued. `vacation` responses are sent
//! after the commit (`crate::ingress::vacation`).
//!
//! Bounds: scripts at most `sieve.max_script_bytes`, `sieve.max_redirects`
//! redirects per recipient, `sieve.cache_entries` compiled scripts (the
//! cache is emptied when full), the evaluation limits of
//! `crate::sieve::Limits`, the header block read at the final dot at most
//! `HEADER_BYTES_MAX`, no redirect of a message that has come through
//! `REDIRECT_HOPS_MAX` Received fields (loop protection). A script file is
//! stat'ed at each RCPT (a changed one is compiled again); a script that
//! does not compile, or fails while running, is logged and the message
//! kept, as Pigeonhole does.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::UNIX_EPOCH;

use crate::config::Config;
use crate::log;
use crate::queue::{Envelope, Queue, RcptState, Recipient};
use crate::route::source::LookupSource;
use crate::route::{Decision, Engine, Mode};
use crate::sieve::{self as lang, Action, Actions, Outcome, Script};
use crate::smtp::address::Address;
use crate::smtp::reply::{Enhanced, Reply};

/// The header block read for the final dot's scripts, at most.
pub const HEADER_BYTES_MAX: usize = 64 * 1024;
/// A message with this many Received fields is not redirected again.
pub const REDIRECT_HOPS_MAX: usize = 25;

/// How a script was last found, to see that it changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stamp {
    File { modified_ns: u128, len: u64 },
    Text(u64),
}

struct Cached {
    stamp: Stamp,
    /// `None`: the script does not compile (logged once per change).
    script: Option<Script>,
}

/// The scripts and memory of `[sieve]`, shared by every shard; replaced
/// whole at SIGHUP.
pub struct Filters {
    config: crate::config::Sieve,
    limits: lang::Limits,
    separators: Vec<String>,
    hostname: String,
    before: Option<Script>,
    source: Option<Arc<dyn LookupSource>>,
    cache: Mutex<HashMap<String, Cached>>,
    vacation: Option<Arc<super::vacation::Memory>>,
}

/// A local recipient: the routed user (without subaddress) and domain,
/// and the addresses that are the user's (for vacation).
#[derive(Clone, Debug)]
pub struct LocalUser {
    pub user: String,
    pub domain: String,
}

/// The recipient whose script waits for the content.
struct Waiting {
    recipient: Address,
    user: LocalUser,
    envelope: lang::Envelope,
}

/// The Sieve decisions of one transaction (boxed in the session, and
/// allocated only when a script ran).
#[derive(Default)]
pub struct Txn {
    decided: Vec<(Address, Actions, LocalUser)>,
    /// The one recipient whose script needs the content and may refuse.
    waiting: Option<Waiting>,
    /// Recipients whose scripts need the content but cannot refuse.
    deferred: Vec<Waiting>,
}

/// Why a user's script could not be had.
enum ScriptError {
    /// It is broken or misplaced (logged; the message is kept).
    Broken(String),
    /// Its file or table failed for now (451 at RCPT).
    Temporary(String),
}

impl ScriptError {
    fn of_io(path: &std::path::Path, e: std::io::Error) -> ScriptError {
        let text = format!("{}: {e}", path.display());
        match e.kind() {
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::InvalidData => ScriptError::Broken(text),
            _ => ScriptError::Temporary(text),
        }
    }
}

/// The scripts of one recipient, evaluated.
enum Evaluated {
    Refuse(Reply),
    Done(Actions),
    NeedsContent { can_reject: bool },
}

/// A vacation response to send once the message is queued.
pub struct PendingVacation {
    vacation: lang::Vacation,
    user: LocalUser,
    original_sender: String,
    header: Arc<Vec<u8>>,
}

/// What the final dot's scripts made of the transaction.
pub struct Applied {
    pub vacations: Vec<PendingVacation>,
}

impl Filters {
    /// Builds the filters of `config` (None without `[sieve]`); a `before`
    /// script that does not compile, or a source that cannot be opened,
    /// is an error.
    pub fn open(config: &Config) -> Result<Option<Filters>, String> {
        let Some(sieve) = &config.sieve else { return Ok(None) };
        let limits = limits(sieve);
        let before = compile_before(sieve, &limits)?;
        let source = match &sieve.source {
            None => None,
            Some(spec) => {
                let query = sieve.query.as_deref().unwrap_or_default();
                Some(crate::route::drivers::open_source(config, spec, query, sieve.pool.as_deref(), "sieve.pool")?)
            }
        };
        let vacation = match config.vacation_db_path() {
            Some(path) => Some(Arc::new(super::vacation::Memory::open(&path)?)),
            None => None,
        };
        Ok(Some(Filters {
            config: sieve.clone(),
            limits,
            separators: config.route.subaddress_separators.clone(),
            hostname: config.server.hostname.clone(),
            before,
            source,
            cache: Mutex::new(HashMap::new()),
            vacation,
        }))
    }

    /// The local user `address` is delivered to, if it is one recipient
    /// delivered locally (an alias to several users runs no script).
    pub async fn local_user(
        &self,
        config: &Config,
        routing: Option<&Engine>,
        address: &Address,
        sender: &str,
    ) -> Option<LocalUser> {
        let routed = match routing.filter(|engine| !engine.is_empty()) {
            Some(engine) => {
                if crate::route::domains::is_ruled(config, address) {
                    return None;
                }
                let routed = engine.route(&address.to_string(), sender, Mode::Verify).await;
                let Decision::Deliver { deliveries, .. } = routed.decision else { return None };
                let [delivery] = deliveries.as_slice() else { return None };
                if delivery.transport != "local" {
                    return None;
                }
                crate::queue::stored_address(&delivery.address).ok()?
            }
            None => match crate::route::domains::disposition(config, address) {
                crate::route::domains::Disposition::Local => address.clone(),
                _ => return None,
            },
        };
        let (user, _) = crate::route::drivers::split_subaddress(&routed.local_part, &self.separators);
        Some(LocalUser {
            user: user.to_lowercase(),
            domain: routed.domain.as_deref().unwrap_or(&self.hostname).to_lowercase(),
        })
    }

    /// The user's script: `Ok(None)` when there is none.
    async fn script(&self, user: &LocalUser) -> Result<Option<Script>, ScriptError> {
        let key = format!("{}@{}", user.user, user.domain);
        let (stamp, text) = if let Some(template) = &self.config.scripts {
            let path = script_path(template, user).map_err(ScriptError::Broken)?;
            let stamp = match std::fs::metadata(&path) {
                Ok(meta) => Stamp::File {
                    modified_ns: meta
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_nanos()),
                    len: meta.len(),
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(ScriptError::of_io(&path, e)),
            };
            if let Some(script) = self.cached(&key, stamp) {
                return Ok(script);
            }
            if stamp_len(stamp) > self.config.max_script_bytes {
                return Err(ScriptError::Broken(format!("{}: larger than sieve.max_script_bytes", path.display())));
            }
            let text = std::fs::read(&path).map_err(|e| ScriptError::of_io(&path, e))?;
            (stamp, text)
        } else if let Some(source) = &self.source {
            let text = match source.lookup(&key).await {
                Ok(Some(text)) => text.into_bytes(),
                Ok(None) => return Ok(None),
                Err(crate::route::source::LookupError::Temporary(e)) => {
                    return Err(ScriptError::Temporary(format!("sieve.source: {e}")))
                }
                Err(crate::route::source::LookupError::Config(e)) => {
                    return Err(ScriptError::Broken(format!("sieve.source: {e}")))
                }
            };
            let stamp = Stamp::Text(hash(&text));
            if let Some(script) = self.cached(&key, stamp) {
                return Ok(script);
            }
            (stamp, text)
        } else {
            return Ok(None);
        };
        let script = match lang::compile(&text, &self.limits) {
            Ok(script) => Some(script),
            Err(e) => {
                log::event("sieve_error", &[("user", &key), ("error", &e), ("action", &"keep")]);
                None
            }
        };
        let mut cache = self.cache.lock().expect("sieve cache lock");
        if cache.len() >= self.config.cache_entries {
            cache.clear();
        }
        cache.insert(key, Cached { stamp, script: script.clone() });
        Ok(script)
    }

    fn cached(&self, key: &str, stamp: Stamp) -> Option<Option<Script>> {
        let cache = self.cache.lock().expect("sieve cache lock");
        cache.get(key).filter(|c| c.stamp == stamp).map(|c| c.script.clone())
    }

    /// Runs the `before` script and the user's over `input`: their actions
    /// one after the other (the implicit keep stays only if neither
    /// cancelled it); or, when one of them needs the content, whether a
    /// script that needs it could refuse the message (one that does not
    /// `require` reject or ereject cannot). A `reject` decided from the
    /// envelope stands even then.
    async fn evaluate(&self, user: &LocalUser, input: &lang::Input<'_>) -> Evaluated {
        let own = match self.script(user).await {
            Ok(script) => script,
            Err(ScriptError::Broken(e)) => {
                log::event("sieve_error", &[("user", &user.user), ("error", &e), ("action", &"keep")]);
                None
            }
            // The script may refuse what it is not there to refuse: the
            // client tries again, as when the routers' table is down.
            Err(ScriptError::Temporary(e)) => {
                log::event("sieve_error", &[("user", &user.user), ("error", &e), ("action", &"tempfail")]);
                return Evaluated::Refuse(Reply::new(
                    451,
                    Enhanced(4, 3, 0),
                    "Temporary failure reading the recipient's filter",
                ));
            }
        };
        let mut all = Actions { list: Vec::new(), implicit_keep: true };
        let mut needs_content = false;
        let mut can_reject = false;
        for script in self.before.iter().chain(own.iter()) {
            match lang::evaluate(script, input, &self.limits) {
                Outcome::Done(actions) => {
                    all.implicit_keep &= actions.implicit_keep;
                    all.list.extend(actions.list);
                }
                Outcome::NeedsContent => {
                    needs_content = true;
                    can_reject |= script.can_reject();
                }
                Outcome::Error(e) => {
                    log::event("sieve_error", &[("user", &user.user), ("error", &e), ("action", &"keep")]);
                    return Evaluated::Done(Actions { list: Vec::new(), implicit_keep: true });
                }
            }
        }
        match (needs_content, refusal(&all)) {
            (_, Some(reply)) => Evaluated::Refuse(reply),
            (true, None) => Evaluated::NeedsContent { can_reject },
            (false, None) => Evaluated::Done(all),
        }
    }

    /// The script of `user` for the envelope of one RCPT.
    pub async fn at_rcpt(
        &self,
        txn: &mut Option<Box<Txn>>,
        recipient: &Address,
        user: LocalUser,
        sender: &str,
        client_ip: std::net::IpAddr,
    ) -> Result<(), Reply> {
        let envelope = lang::Envelope {
            sender: sender.to_string(),
            recipient: recipient.to_string(),
            user_addresses: vec![format!("{}@{}", user.user, user.domain)],
            client_ip: Some(client_ip),
        };
        let input = lang::Input { envelope, message: None };
        match self.evaluate(&user, &input).await {
            Evaluated::Refuse(reply) => Err(reply),
            Evaluated::Done(actions) => {
                if !is_plain_keep(&actions) {
                    txn.get_or_insert_with(Box::default).decided.push((recipient.clone(), actions, user));
                }
                Ok(())
            }
            Evaluated::NeedsContent { can_reject: false } => {
                // Decided at the final dot, without a say in its reply.
                let waiting = Waiting { recipient: recipient.clone(), user, envelope: input.envelope };
                txn.get_or_insert_with(Box::default).deferred.push(waiting);
                Ok(())
            }
            Evaluated::NeedsContent { can_reject: true } => {
                let t = txn.get_or_insert_with(Box::default);
                if t.waiting.is_some() {
                    return Err(Reply::new(452, Enhanced(4, 5, 3), "Try this recipient in another transaction"));
                }
                t.waiting = Some(Waiting { recipient: recipient.clone(), user, envelope: input.envelope });
                Ok(())
            }
        }
    }

    /// At the final dot, before the commit: runs the waiting script over
    /// the header block, then turns each recipient into the copies its
    /// actions ask for. `Err`: the reply refusing the message.
    pub async fn at_final_dot(&self, queue: &Queue, txn: Box<Txn>, env: &mut Envelope) -> Result<Applied, Reply> {
        let Txn { mut decided, waiting, deferred } = *txn;
        let needs_header = waiting.is_some()
            || !deferred.is_empty()
            || decided.iter().any(|(_, a, _)| a.list.iter().any(|x| matches!(x, Action::Redirect { .. })));
        let header = Arc::new(if needs_header { queue.header_block(env, HEADER_BYTES_MAX).await } else { Vec::new() });
        // The one script that may refuse first, then those that cannot.
        for (w, may_refuse) in waiting.into_iter().map(|w| (w, true)).chain(deferred.into_iter().map(|w| (w, false))) {
            let input = lang::Input {
                envelope: w.envelope,
                message: Some(lang::Message { header: &header, size: env.size_bytes }),
            };
            let actions = match self.evaluate(&w.user, &input).await {
                Evaluated::Done(actions) => actions,
                Evaluated::Refuse(reply) if may_refuse => return Err(reply),
                // Even with the header block a test may want more (a body
                // test this interpreter does not offer), or a script that
                // could not reject did: keep.
                Evaluated::Refuse(_) | Evaluated::NeedsContent { .. } => {
                    Actions { list: Vec::new(), implicit_keep: true }
                }
            };
            decided.push((w.recipient, actions, w.user));
        }
        // A response goes to the envelope sender, and never to `<>`.
        let original_sender = match &env.sender {
            crate::smtp::address::ReversePath::Path(a) => a.to_string(),
            crate::smtp::address::ReversePath::Null => String::new(),
        };
        let hops = received_count(&header);
        let mut vacations = Vec::new();
        let mut copies: Vec<Recipient> = Vec::with_capacity(env.recipients.len());
        for recipient in std::mem::take(&mut env.recipients) {
            let Some(at) = decided.iter().position(|(a, _, _)| *a == recipient.address) else {
                push_copy(&mut copies, recipient);
                continue;
            };
            let (_, actions, user) = decided.swap_remove(at);
            let mut redirects = 0;
            for action in actions.list {
                match action {
                    Action::Keep => push_copy(&mut copies, recipient.clone()),
                    Action::FileInto { folder, .. } => match crate::deliver::maildir::folder_dir(&folder) {
                        Ok(_) => push_copy(&mut copies, Recipient { folder: Some(folder.into()), ..recipient.clone() }),
                        Err(e) => {
                            log::event(
                                "sieve_error",
                                &[("id", &env.id), ("user", &user.user), ("error", &e), ("action", &"keep")],
                            );
                            push_copy(&mut copies, recipient.clone());
                        }
                    },
                    Action::Redirect { address, .. } => {
                        let target = crate::smtp::address::parse_mailbox(&address, env.smtputf8).ok();
                        match target {
                            Some(target) if hops < REDIRECT_HOPS_MAX && redirects < self.config.max_redirects => {
                                redirects += 1;
                                log::event("sieve_redirect", &[("id", &env.id), ("user", &user.user), ("to", &target)]);
                                push_copy(
                                    &mut copies,
                                    Recipient {
                                        address: target,
                                        state: RcptState::Pending,
                                        last_reply: String::new(),
                                        folder: None,
                                        dsn: recipient.dsn.clone(),
                                    },
                                );
                            }
                            _ => {
                                let why = if hops >= REDIRECT_HOPS_MAX {
                                    "loop: too many Received fields"
                                } else {
                                    "not redirected"
                                };
                                log::event(
                                    "sieve_error",
                                    &[
                                        ("id", &env.id),
                                        ("user", &user.user),
                                        ("redirect", &address),
                                        ("error", &why),
                                        ("action", &"keep"),
                                    ],
                                );
                                push_copy(&mut copies, recipient.clone());
                            }
                        }
                    }
                    Action::Discard => {}
                    Action::Reject { .. } => unreachable!("refused above"),
                    Action::Vacation(vacation) => vacations.push(PendingVacation {
                        vacation,
                        user: user.clone(),
                        original_sender: original_sender.clone(),
                        header: header.clone(),
                    }),
                }
            }
            if actions.implicit_keep {
                push_copy(&mut copies, recipient);
            }
        }
        if copies.len() > queue_format::RECIPIENT_COUNT_MAX {
            return Err(Reply::new(452, Enhanced(4, 5, 3), "Too many recipients after filtering"));
        }
        env.recipients = copies;
        Ok(Applied { vacations })
    }

    /// Sends the vacation responses of a queued message: each passes the
    /// memory (once per sender and `:days`) and is queued from `<>`.
    pub async fn send_vacations(&self, queue: &Queue, original_id: &str, vacations: Vec<PendingVacation>) {
        let Some(memory) = &self.vacation else { return };
        for pending in vacations {
            let v = &pending.vacation;
            let user_key = format!("{}@{}", pending.user.user, pending.user.domain);
            let skipped = match &v.skipped {
                Some(why) => Some(why.as_str()),
                None if pending.original_sender.is_empty() => Some("null sender"),
                None => None,
            };
            if let Some(why) = skipped {
                log::event("vacation_skipped", &[("original", &original_id), ("user", &user_key), ("reason", &why)]);
                continue;
            }
            let memory = memory.clone();
            let (to, handle, days) = (v.to.clone(), v.handle.clone(), v.days);
            let now_s = queue.clock().unix_ms() / 1000;
            let key = user_key.clone();
            let taken = glommio::executor().spawn_blocking(move || memory.take(&key, &to, &handle, days, now_s)).await;
            match taken {
                Ok(true) => {}
                Ok(false) => {
                    log::event(
                        "vacation_skipped",
                        &[("original", &original_id), ("user", &user_key), ("reason", &"answered within :days")],
                    );
                    continue;
                }
                Err(e) => {
                    log::event("vacation_error", &[("original", &original_id), ("user", &user_key), ("error", &e)]);
                    continue;
                }
            }
            if let Err(e) = self.queue_vacation(queue, original_id, &pending, &user_key).await {
                log::event("vacation_error", &[("original", &original_id), ("user", &user_key), ("error", &e)]);
            }
        }
    }

    async fn queue_vacation(
        &self,
        queue: &Queue,
        original_id: &str,
        pending: &PendingVacation,
        user_key: &str,
    ) -> Result<(), crate::queue::QueueError> {
        let v = &pending.vacation;
        let to = crate::queue::stored_address(&pending.original_sender)
            .map_err(|e| crate::queue::QueueError::Io(std::io::Error::other(e)))?;
        let fields = header_fields(&pending.header);
        let field = |name: &str| fields.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
        let mut writer = queue.create().await?;
        let unique = writer.id().to_string();
        let message = super::vacation::compose(
            &super::vacation::Response {
                from: v.from.as_deref().unwrap_or(user_key),
                to: &pending.original_sender,
                subject: &v.subject,
                reason: &v.reason,
                mime: v.mime,
                hostname: &self.hostname,
                date: queue.clock().system_time(),
                unique: &unique,
            },
            &super::vacation::Original { message_id: field("message-id"), subject: field("subject") },
        );
        writer.write(&message).await?;
        let now_ms = queue.clock().unix_ms();
        debug_assert_eq!(writer.size_bytes(), message.len() as u64);
        let response = Envelope::from_null_sender(unique.clone(), to, &message, false, now_ms);
        writer.commit(queue, response).await?;
        log::event(
            "vacation_sent",
            &[("id", &unique), ("original", &original_id), ("user", &user_key), ("to", &pending.original_sender)],
        );
        Ok(())
    }
}

fn limits(sieve: &crate::config::Sieve) -> lang::Limits {
    lang::Limits {
        max_script_size: sieve.max_script_bytes as usize,
        max_redirects: sieve.max_redirects as usize,
        ..lang::Limits::default()
    }
}

fn compile_before(sieve: &crate::config::Sieve, limits: &lang::Limits) -> Result<Option<Script>, String> {
    let Some(path) = &sieve.before else { return Ok(None) };
    let text = std::fs::read(path).map_err(|e| format!("sieve.before {}: {e}", path.display()))?;
    let script = lang::compile(&text, limits).map_err(|e| format!("sieve.before {}:{e}", path.display()))?;
    Ok(Some(script))
}

/// What `ringpost check-config` checks of `[sieve]` beyond the
/// configuration file: the `before` script compiles.
pub fn check(config: &Config) -> Result<(), String> {
    match &config.sieve {
        Some(sieve) => compile_before(sieve, &limits(sieve)).map(|_| ()),
        None => Ok(()),
    }
}

/// `template` with `{user}` and `{domain}` filled in, each checked as a
/// maildir user name is (no `/`, no leading `.`, no control character).
fn script_path(template: &str, user: &LocalUser) -> Result<PathBuf, String> {
    crate::deliver::maildir::expand_template("{user}", &user.domain)
        .map_err(|e| format!("domain {}: {e}", user.domain))?;
    crate::deliver::maildir::expand_template(&template.replace("{domain}", &user.domain), &user.user)
        .map_err(|e| format!("user {}: {e}", user.user))
}

fn stamp_len(stamp: Stamp) -> u64 {
    match stamp {
        Stamp::File { len, .. } => len,
        Stamp::Text(_) => 0,
    }
}

fn hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// The reply of a `reject` or `ereject` among `actions` (the first).
fn refusal(actions: &Actions) -> Option<Reply> {
    actions.list.iter().find_map(|a| match a {
        Action::Reject { text, .. } => {
            let text: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
            let text = text.trim();
            Some(Reply::new(
                550,
                Enhanced(5, 7, 1),
                if text.is_empty() { "Rejected by the recipient's filter" } else { text },
            ))
        }
        _ => None,
    })
}

/// Whether `actions` is what no script would have done: the implicit keep
/// and nothing else.
fn is_plain_keep(actions: &Actions) -> bool {
    actions.implicit_keep && actions.list.is_empty()
}

/// Adds a copy unless the same one (address and folder) is there.
fn push_copy(copies: &mut Vec<Recipient>, copy: Recipient) {
    if !copies.iter().any(|c| c.address == copy.address && c.folder == copy.folder) {
        copies.push(copy);
    }
}

/// Received fields in a header block.
fn received_count(header: &[u8]) -> usize {
    header.split(|b| *b == b'\n').filter(|line| line.len() >= 9 && line[..9].eq_ignore_ascii_case(b"received:")).count()
}

/// The unfolded fields of a header block, as (name, value) text.
fn header_fields(header: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(header);
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.split("\r\n").flat_map(|l| l.split('\n')) {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    fields
}

/// What the final dot's scripts decided for the session.
pub enum FinalDot {
    /// Go on to the stages and the commit (then send what is pending).
    Continue(Option<Box<AfterCommit>>),
    /// The reply to the final dot: a refusal, or a 250 for a message whose
    /// copies were all discarded (nothing to commit).
    Reply(Reply),
}

/// Vacation responses to send once the message is queued.
pub struct AfterCommit {
    filters: Arc<Filters>,
    vacations: Vec<PendingVacation>,
}

impl AfterCommit {
    pub async fn send(self, queue: &Queue, id: &str) {
        self.filters.send_vacations(queue, id, self.vacations).await;
    }
}

/// The final dot of a transaction whose recipients' scripts ran at RCPT
/// (called by the session driver with the message's body in place).
pub async fn at_final_dot(queue: &Queue, txn: Box<Txn>, env: &mut Envelope, peer: std::net::SocketAddr) -> FinalDot {
    // Installed at start; a SIGHUP that removed `[sieve]` leaves the
    // transaction's decisions unapplied (every recipient kept).
    let Some(filters) = current() else { return FinalDot::Continue(None) };
    let applied = match filters.at_final_dot(queue, txn, env).await {
        Ok(applied) => applied,
        Err(reply) => {
            log::event("message_refused", &[("id", &env.id), ("client", &peer), ("reply", &reply.summary())]);
            return FinalDot::Reply(reply);
        }
    };
    let after =
        (!applied.vacations.is_empty()).then(|| Box::new(AfterCommit { filters, vacations: applied.vacations }));
    if env.recipients.is_empty() {
        // Every copy was discarded by the scripts: accepted, not queued.
        log::event("discarded", &[("id", &env.id), ("client", &peer), ("by", &"sieve")]);
        if let Some(after) = after {
            after.send(queue, &env.id).await;
        }
        crate::stats::count(crate::stats::Class::Accepted);
        return FinalDot::Reply(Reply::new(250, Enhanced(2, 0, 0), format!("Ok: queued as {}", env.id)));
    }
    FinalDot::Continue(after)
}

/// The filters in use; replaced whole at SIGHUP.
static LIVE: RwLock<Option<Arc<Filters>>> = RwLock::new(None);

/// Makes `filters` the ones every later RCPT uses.
pub fn install(filters: Option<Arc<Filters>>) {
    *LIVE.write().expect("sieve filters lock") = filters;
}

/// The filters in use; `None` without `[sieve]`.
pub fn current() -> Option<Arc<Filters>> {
    LIVE.read().expect("sieve filters lock").clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_fields_are_counted_and_headers_unfolded() {
        let header = b"Received: from a\r\n\tby b\r\nreceived: x\r\nSubject: Hi\r\n there\r\nMessage-ID: <1@x>\r\n";
        assert_eq!(received_count(header), 2);
        let fields = header_fields(header);
        assert!(fields.contains(&("Subject".to_string(), "Hi there".to_string())));
        assert!(fields.contains(&("Message-ID".to_string(), "<1@x>".to_string())));
    }

    #[test]
    fn script_paths_refuse_names_that_leave_their_directory() {
        let user = |u: &str, d: &str| LocalUser { user: u.to_string(), domain: d.to_string() };
        let template = "/var/lib/ringpost/sieve/{domain}/{user}.sieve";
        assert_eq!(
            script_path(template, &user("bob", "example.org")).unwrap(),
            PathBuf::from("/var/lib/ringpost/sieve/example.org/bob.sieve")
        );
        assert!(script_path(template, &user("../etc", "example.org")).is_err());
        assert!(script_path(template, &user("bob", "a/b")).is_err());
        assert!(script_path(template, &user(".hidden", "example.org")).is_err());
    }

    /// A script table that is down for now.
    struct Down;

    impl LookupSource for Down {
        fn lookup<'a>(&'a self, _key: &'a str) -> crate::route::source::LookupFuture<'a> {
            Box::pin(async { Err(crate::route::source::LookupError::Temporary("timed out".into())) })
        }
        fn describe(&self) -> String {
            "down".into()
        }
    }

    #[test]
    fn a_script_table_that_is_down_is_451_at_rcpt() {
        let sieve = crate::config::Sieve { source: Some("sqlite:/nowhere".into()), ..Default::default() };
        let filters = Filters {
            limits: limits(&sieve),
            config: sieve,
            separators: vec!["+".into()],
            hostname: "mx.test".into(),
            before: None,
            source: Some(Arc::new(Down)),
            cache: Mutex::new(HashMap::new()),
            vacation: None,
        };
        let user = LocalUser { user: "bob".into(), domain: "example.org".into() };
        let rcpt = crate::smtp::address::parse_mailbox("bob@example.org", false).unwrap();
        let mut txn = None;
        let ip = "192.0.2.1".parse().unwrap();
        let refused = futures_lite::future::block_on(filters.at_rcpt(&mut txn, &rcpt, user, "a@b.example", ip));
        let reply = refused.expect_err("a temporary failure refuses for now");
        assert_eq!((reply.code, reply.enhanced), (451, Some(Enhanced(4, 3, 0))));
        assert!(txn.is_none(), "nothing decided");
    }

    #[test]
    fn rejects_become_550_with_the_scripts_text() {
        let actions = Actions {
            list: vec![Action::Keep, Action::Reject { text: "Not from you.\r\nGo away".into(), extended: true }],
            implicit_keep: false,
        };
        let reply = refusal(&actions).unwrap();
        assert_eq!((reply.code, reply.enhanced), (550, Some(Enhanced(5, 7, 1))));
        assert_eq!(reply.summary(), "550 5.7.1 Not from you.  Go away");
        assert!(refusal(&Actions { list: vec![Action::Discard], implicit_keep: false }).is_none());
    }
}
