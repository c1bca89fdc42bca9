//! Email authentication of inbound mail (SPF, DKIM, ARC, DMARC, with the
//! `mail-auth` crate; `[email_auth]`) and DKIM signing of outbound mail
//! (`[[dkim_sign]]`). Verification and signing are described in
//! `docs/email-auth.md`.
//!
//! Place in the pipeline: SPF at MAIL FROM (`check_mail`, called by the
//! session driver, `ingress::check_sender`, after the sender policy; a
//! `reject_fail` refusal is the reply to MAIL), the rest as the first data-callout stage at the final
//! dot (`at_final_dot`, from `crate::scan::Stages`, before the content
//! scanners): the message is whole in the queue and not yet committed.
//! The stage adds exactly one `Authentication-Results:` field (RFC 8601,
//! authserv-id `server.hostname`) and, for a From: domain with a key, one
//! `DKIM-Signature:` field to the envelope's `headers_prepended`, which
//! delivery writes above the stored content; the content is never
//! rewritten. Incoming Authentication-Results fields that claim our name
//! are removed while the message streams in (`crate::smtp::server`).
//!
//! DNS: every record comes from ringpost's resolver (`lookups`); the
//! evaluations are mail-auth's, run on the shard's executor (they do not
//! block: no lookup waits inside them).
//!
//! Bounds: the message is read into memory for DKIM, ARC and DMARC (and
//! for signing) only up to `email_auth.max_size_bytes`; a larger one is
//! recorded as not verified (`dkim=none`, with a comment) and not signed.
//! Lookups per check: `max_lookups`, within `timeout`.

pub mod lookups;
pub mod sign;

use std::net::IpAddr;
use std::rc::Rc;

use mail_auth::dmarc::Policy;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcOutput, DmarcResult, MessageAuthenticator,
    SpfOutput, SpfResult,
};

use crate::config::{Config, DmarcMode, EmailAuth, SpfMode};
use crate::log;
use crate::queue::{Envelope, Queue, StoredBody};
use crate::scan::content::Message;
use crate::smtp::address::ReversePath;
use crate::smtp::reply::{Enhanced, Reply};

use lookups::Caches;

/// The message size read for signing when `[email_auth]` is absent.
const SIGN_SIZE_BYTES_MAX_DEFAULT: u64 = 16 * 1024 * 1024;
/// Messages a shard holds whole for verification or signing at once; the
/// next final dot waits for one of them. With `max_size_bytes` this bounds
/// the stage's memory (8 × 16 MiB by default per shard).
const MESSAGES_HELD_MAX: u64 = 8;

/// The authentication of one shard.
pub struct Auth {
    /// `None`: `[email_auth]` is absent, only signing runs.
    verify: Option<EmailAuth>,
    hostname: String,
    /// The shard's transports, whose resolver (and its cache) answers
    /// every lookup here, as it does for delivery and the front line.
    deliverer: Rc<crate::deliver::attempt::Deliverer>,
    authenticator: MessageAuthenticator,
    signers: Vec<sign::Signer>,
    queue: Rc<Queue>,
    /// Permits to hold a message whole (`MESSAGES_HELD_MAX`).
    held: glommio::sync::Semaphore,
}

/// What the stage decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    Continue,
    Refuse(Reply),
}

impl Auth {
    /// The shard's authentication, `None` when neither `[email_auth]` nor
    /// `[[dkim_sign]]` is configured. Fails when a key cannot be loaded.
    pub fn new(
        config: &Config,
        deliverer: Rc<crate::deliver::attempt::Deliverer>,
        queue: Rc<Queue>,
    ) -> Result<Option<Auth>, String> {
        if config.email_auth.is_none() && config.dkim_sign.is_empty() {
            return Ok(None);
        }
        let signers = config.dkim_sign.iter().map(sign::Signer::load).collect::<Result<Vec<_>, String>>()?;
        Ok(Some(Auth {
            verify: config.email_auth.clone(),
            hostname: config.server.hostname.clone(),
            deliverer,
            authenticator: offline_authenticator()?,
            signers,
            queue,
            held: glommio::sync::Semaphore::new(MESSAGES_HELD_MAX),
        }))
    }

    /// SPF at MAIL FROM (`email_auth.spf = "reject_fail"`): the refusal,
    /// if any (550 5.7.23 for `fail`, 451 4.7.24 for `temperror`).
    pub async fn check_mail(&self, client_ip: IpAddr, helo: &str, sender: &ReversePath) -> Option<Reply> {
        let config = self.verify.as_ref().filter(|c| c.spf == SpfMode::RejectFail)?;
        let sender_text = sender_text(sender);
        let caches = Caches::default();
        let spf = self.spf(&caches, config, client_ip, helo, &sender_text).await;
        let reply = spf_refusal(&spf)?;
        crate::stats::count(crate::stats::Class::AuthRefused);
        log::event(
            "spf_refused",
            &[("client", &client_ip), ("helo", &helo), ("from", &sender), ("spf", &spf.result()), ("reply", &reply.summary())],
        );
        Some(reply)
    }

    async fn spf(&self, caches: &Caches, config: &EmailAuth, ip: IpAddr, helo: &str, sender: &str) -> SpfOutput {
        let helo = if helo.is_empty() { "unknown" } else { helo };
        let hostname = self.hostname.as_str();
        let spf = lookups::settle(self.deliverer.outbound().resolver, caches, config.max_lookups, config.timeout.0, || {
            let params = if sender.is_empty() {
                SpfParameters::verify_ehlo(ip, helo, hostname)
            } else {
                SpfParameters::verify_mail_from(ip, helo, hostname, sender)
            };
            self.authenticator.verify_spf(caches.params(params))
        })
        .await;
        temp_error_if_unanswered(spf, caches.temp_failure.get())
    }

    /// The stage at the final dot: verification (with `[email_auth]`) and
    /// signing (with a key for the From: domain).
    pub async fn at_final_dot(&self, env: &mut Envelope) -> Decision {
        let stored = self.queue.stored_body(env);
        let max_bytes = self.verify.as_ref().map_or(SIGN_SIZE_BYTES_MAX_DEFAULT, |c| c.max_size_bytes);
        // Held until the stage ends: the content read below lives as long.
        let _held = self.held.acquire_permit(1).await;
        let content = if env.size_bytes <= max_bytes { read_content(env, &stored, max_bytes).await } else { None };
        let parsed = content.as_deref().and_then(AuthenticatedMessage::parse);
        let mut decision = Decision::Continue;
        if let Some(config) = &self.verify {
            let (header, refusal) = self.verify(config, env, parsed.as_ref()).await;
            append_header(env, &header);
            if let Some(reply) = refusal {
                crate::stats::count(crate::stats::Class::AuthRefused);
                decision = Decision::Refuse(reply);
            }
        }
        if decision == Decision::Continue {
            if let (Some(content), Some(parsed)) = (content.as_deref(), parsed.as_ref()) {
                self.sign(env, content, parsed);
            }
        }
        decision
    }

    /// Verifies the message: its Authentication-Results field and, with
    /// `dmarc = "enforce"`, the refusal of a `p=reject` failure.
    async fn verify(
        &self,
        config: &EmailAuth,
        env: &Envelope,
        message: Option<&AuthenticatedMessage<'_>>,
    ) -> (String, Option<Reply>) {
        let ip: IpAddr = env.client.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let sender = sender_text(&env.sender);
        let caches = Caches::default();
        let started = std::time::Instant::now();
        let spf = match config.spf {
            SpfMode::Off => None,
            _ => Some(self.spf(&caches, config, ip, &env.helo, &sender).await),
        };
        let mut results = AuthenticationResults::new(&self.hostname);
        let mut extra = String::new();
        if let Some(spf) = &spf {
            results = results.with_spf_mailfrom_result(spf, ip, &sender, &env.helo);
        }
        let mut refusal = None;
        let mut dmarc_text = String::new();
        let mut dkim_text = String::new();
        match message {
            None => {
                let why = if env.size_bytes > config.max_size_bytes { "message too large to verify" } else { "no header section" };
                extra.push_str(&format!(";\r\n\tdkim=none ({why})"));
            }
            Some(message) => {
                let dkim: Vec<DkimOutput<'_>> =
                    lookups::settle(self.deliverer.outbound().resolver, &caches, config.max_lookups, config.timeout.0, || {
                        self.authenticator.verify_dkim(caches.params(message))
                    })
                    .await;
                let dkim = dkim.into_iter().map(|d| body_hash_mismatch_fails(message, d)).collect::<Vec<_>>();
                let arc = lookups::settle(self.deliverer.outbound().resolver, &caches, config.max_lookups, config.timeout.0, || {
                    self.authenticator.verify_arc(caches.params(message))
                })
                .await;
                let arc = arc_body_hash_mismatch_fails(arc);
                let from = message.from().to_string();
                if dkim.is_empty() {
                    extra.push_str(";\r\n\tdkim=none");
                } else {
                    results = results.with_dkim_results(&dkim, &from);
                }
                dkim_text = dkim.iter().map(|d| dkim_result_name(d.result())).collect::<Vec<_>>().join(",");
                if *arc.result() != DkimResult::None {
                    results = results.with_arc_result(&arc, ip);
                }
                if config.dmarc != DmarcMode::Off {
                    let mail_from_domain = match &env.sender {
                        ReversePath::Path(a) => a.domain.clone().unwrap_or_default().to_ascii_lowercase(),
                        ReversePath::Null => env.helo.to_ascii_lowercase(),
                    };
                    let no_spf = SpfOutput::default();
                    let spf_for_dmarc = spf.as_ref().unwrap_or(&no_spf);
                    let dmarc = lookups::settle(self.deliverer.outbound().resolver, &caches, config.max_lookups, config.timeout.0, || {
                        self.authenticator.verify_dmarc(caches.params(mail_auth::dmarc::verify::DmarcParameters::new(
                            message,
                            &dkim,
                            &mail_from_domain,
                            spf_for_dmarc,
                        )))
                    })
                    .await;
                    let verdict = dmarc_verdict(&dmarc);
                    if verdict == "none" && !dmarc.domain().is_empty() {
                        extra.push_str(&format!(";\r\n\tdmarc=none header.from={}", dmarc.domain()));
                    } else if verdict != "none" {
                        extra.push_str(&format!(
                            ";\r\n\tdmarc={verdict} header.from={} policy.dmarc={}",
                            dmarc.domain(),
                            policy_name(dmarc.policy())
                        ));
                    } else {
                        extra.push_str(";\r\n\tdmarc=none");
                    }
                    dmarc_text = verdict.to_string();
                    if config.dmarc == DmarcMode::Enforce && verdict == "fail" && dmarc.policy() == Policy::Reject {
                        refusal = Some(Reply::new(
                            550,
                            Enhanced(5, 7, 1),
                            format!("Message refused: DMARC policy of {} (p=reject)", dmarc.domain()),
                        ));
                    }
                }
            }
        }
        let body = results.to_string();
        let results_text = body.strip_prefix(self.hostname.as_str()).unwrap_or("");
        let mut header = format!("Authentication-Results: {}{results_text}{extra}", self.hostname);
        if results_text.is_empty() && extra.is_empty() {
            header.push_str("; none");
        }
        header.push_str("\r\n");
        let spf_text = spf.as_ref().map(|s| s.result().to_string()).unwrap_or_default();
        let reply = refusal.as_ref().map(|r| r.summary()).unwrap_or_default();
        log::event(
            "email_auth",
            &[
                ("id", &env.id),
                ("spf", &spf_text),
                ("dkim", &dkim_text),
                ("dmarc", &dmarc_text),
                ("lookups", &caches.lookups.get()),
                ("latency_ms", &started.elapsed().as_millis()),
                ("reply", &reply),
            ],
        );
        (header, refusal)
    }

    /// Signs the message with the key of its From: domain, if there is one.
    fn sign(&self, env: &mut Envelope, content: &[u8], message: &AuthenticatedMessage<'_>) {
        let from = message.from();
        let Some((_, domain)) = from.rsplit_once('@') else { return };
        let domain = domain.trim_end_matches('>').to_ascii_lowercase();
        let Some(signer) = self.signers.iter().find(|s| s.domain == domain) else { return };
        match signer.sign(content) {
            Ok(header) => append_header(env, &header),
            Err(e) => log::event("dkim_sign_failed", &[("id", &env.id), ("domain", &domain), ("error", &e)]),
        }
    }
}

/// A mail-auth authenticator that never sends a query: its resolver has
/// no name servers, and with mail-auth's `test` feature a name missing
/// from the caches is answered "no such name" without asking it.
fn offline_authenticator() -> Result<MessageAuthenticator, String> {
    use mail_auth::hickory_resolver::config::{ResolverConfig, ResolverOpts};
    MessageAuthenticator::new(ResolverConfig::from_parts(None, Vec::new(), Vec::new()), ResolverOpts::default())
        .map_err(|e| format!("email_auth: {e}"))
}

/// The sender as SPF and Authentication-Results want it: `local@domain`,
/// empty for the null sender.
fn sender_text(sender: &ReversePath) -> String {
    match sender {
        ReversePath::Path(a) => a.to_string(),
        ReversePath::Null => String::new(),
    }
}

/// The reply for an SPF result under `reject_fail`.
/// An SPF result computed while an A, AAAA or MX lookup failed
/// temporarily (answered "no such name" to mail-auth so that it could go
/// on) is `temperror`: RFC 7208 §4.4 and §5 end `check_host()` at such a
/// failure, so no later mechanism may decide. Errors stay as they are.
pub fn temp_error_if_unanswered(spf: SpfOutput, temp_failure: bool) -> SpfOutput {
    match spf.result() {
        SpfResult::TempError | SpfResult::PermError => spf,
        _ if temp_failure => spf.with_result(SpfResult::TempError),
        _ => spf,
    }
}

pub fn spf_refusal(spf: &SpfOutput) -> Option<Reply> {
    match spf.result() {
        SpfResult::Fail => Some(Reply::new(
            550,
            Enhanced(5, 7, 23),
            format!("SPF check failed: {} does not designate this host", spf.domain()),
        )),
        SpfResult::TempError => Some(Reply::new(
            451,
            Enhanced(4, 7, 24),
            format!("SPF temporary error for {}, try again later", spf.domain()),
        )),
        _ => None,
    }
}

/// The DMARC result (RFC 7489 §11.2): pass when SPF or DKIM passed
/// aligned; fail when the domain has a policy and neither did; the
/// temporary and permanent errors of the lookups; none without a policy.
pub fn dmarc_verdict(dmarc: &DmarcOutput) -> &'static str {
    let results = [dmarc.spf_result(), dmarc.dkim_result()];
    if results.iter().any(|r| **r == DmarcResult::Pass) {
        "pass"
    } else if results.iter().any(|r| matches!(r, DmarcResult::TempError(_))) {
        "temperror"
    } else if results.iter().any(|r| matches!(r, DmarcResult::PermError(_))) {
        "permerror"
    } else if dmarc.dmarc_record().is_some() {
        "fail"
    } else {
        "none"
    }
}

/// A body hash that does not match is a failed signature (RFC 6376
/// §6.1.3: PERMFAIL, "dkim=fail" in RFC 8601 terms, as OpenDKIM says
/// too); mail-auth calls it neutral.
fn body_hash_mismatch_fails<'x>(message: &'x AuthenticatedMessage<'x>, output: DkimOutput<'x>) -> DkimOutput<'x> {
    if *output.result() != DkimResult::Neutral(mail_auth::Error::FailedBodyHashMatch) {
        return output;
    }
    let Some(used) = output.signature() else { return output };
    let signature = message
        .dkim_headers
        .iter()
        .filter_map(|h| h.header.as_ref().ok())
        .find(|s| std::ptr::eq(*s, used));
    match signature {
        Some(signature) => DkimOutput::fail(mail_auth::Error::FailedBodyHashMatch).with_signature(signature),
        None => output,
    }
}

/// The same for the newest ARC-Message-Signature: its validation failed,
/// so the chain fails (RFC 8617 §5.2, step 4); mail-auth says neutral.
fn arc_body_hash_mismatch_fails(output: mail_auth::ArcOutput<'_>) -> mail_auth::ArcOutput<'_> {
    if *output.result() == DkimResult::Neutral(mail_auth::Error::FailedBodyHashMatch) {
        output.with_result(DkimResult::Fail(mail_auth::Error::FailedBodyHashMatch))
    } else {
        output
    }
}

fn policy_name(policy: Policy) -> &'static str {
    match policy {
        Policy::Reject => "reject",
        Policy::Quarantine => "quarantine",
        Policy::None | Policy::Unspecified => "none",
    }
}

fn dkim_result_name(result: &DkimResult) -> &'static str {
    match result {
        DkimResult::Pass => "pass",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}

/// Appends a header field (CRLF-terminated, possibly folded) to the
/// envelope's, as long as it fits the record
/// (`queue_format::HEADERS_PREPENDED_SIZE_BYTES_MAX`).
fn append_header(env: &mut Envelope, header: &str) {
    let fits = env.headers_prepended.len() + header.len() <= queue_format::HEADERS_PREPENDED_SIZE_BYTES_MAX;
    if !fits || !header.ends_with("\r\n") {
        log::event("auth_header_dropped", &[("id", &env.id), ("bytes", &header.len())]);
        return;
    }
    env.headers_prepended.extend_from_slice(header.as_bytes());
}

/// The stored content, if it is at most `max_bytes` long.
async fn read_content(env: &Envelope, stored: &StoredBody, max_bytes: u64) -> Option<Vec<u8>> {
    let message = Message { env, stored };
    let mut chunks = message.chunks();
    let mut content = Vec::with_capacity(usize::try_from(env.size_bytes.min(max_bytes)).unwrap_or(0));
    let mut result = Some(());
    loop {
        match chunks.next().await {
            Ok(Some(chunk)) => {
                if (content.len() + chunk.len()) as u64 > max_bytes {
                    result = None;
                    break;
                }
                content.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                log::event("auth_read_failed", &[("id", &env.id), ("error", &e)]);
                result = None;
                break;
            }
        }
    }
    chunks.close().await;
    result.map(|()| content)
}

#[cfg(test)]
mod tests;
