//! MTA-STS (RFC 8461): a domain's published promise that its MX hosts
//! offer TLS with a certificate valid for their names. The `_mta-sts.DOMAIN`
//! TXT record (`v=STSv1; id=…`) says a policy exists and which version it
//! is; the policy itself comes over HTTPS from
//! `https://mta-sts.DOMAIN/.well-known/mta-sts.txt` (certificate verified,
//! no redirects, at most `POLICY_BYTES_MAX`), and is cached for its
//! `max_age`, fetched again when the TXT record's id changes.
//!
//! Place in the pipeline: `security::levels` asks for the policy of a
//! domain before delivering to its MX hosts; one `MtaSts` per shard (its
//! cache is the shard's).
//!
//! Failures (RFC 8461 §5.1, §3.3): no TXT record, or a fetch that fails,
//! leaves a cached policy that has not expired in force; with none, the
//! domain has no policy (delivery goes at the configured level).
//!
//! Bounds: `CACHE_ENTRIES_MAX` domains (the entry closest to expiry goes
//! first), `POLICY_BYTES_MAX` of body, `HEAD_BYTES_MAX` of response head,
//! `MX_PATTERN_COUNT_MAX` patterns, `FETCH_TIMEOUT` for the whole fetch.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use rustls::pki_types::ServerName;

use crate::dns::{Lookup, RecordData, RecordKind, Resolver};

/// Largest policy body (RFC 8461 §3.2: 64 KiB).
pub const POLICY_BYTES_MAX: usize = 64 * 1024;
/// Largest response head (status line and header fields).
pub const HEAD_BYTES_MAX: usize = 8 * 1024;
/// Domains whose policies a shard keeps.
pub const CACHE_ENTRIES_MAX: usize = 1024;
/// `mx` lines kept from one policy.
pub const MX_PATTERN_COUNT_MAX: usize = 64;
/// Longest `max_age` (RFC 8461 §3.2: 31557600 seconds, one year).
pub const MAX_AGE_S_MAX: u64 = 31_557_600;
/// The whole fetch: connect, handshake, request, response.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(20);
/// The HTTPS port of the policy host.
pub const HTTPS_PORT: u16 = 443;

/// A policy's mode (RFC 8461 §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StsMode {
    Enforce,
    Testing,
    None,
}

/// A parsed policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StsPolicy {
    pub mode: StsMode,
    /// Lower-case, without a final dot: "mx.example.org" or "*.example.org".
    pub mx: Vec<String>,
    pub max_age_s: u64,
}

impl StsPolicy {
    /// Parses a policy body (RFC 8461 §3.2): `key: value` lines (CRLF or
    /// LF), `version: STSv1`, `mode`, `max_age` and, except in mode
    /// `none`, at least one `mx`. Unknown keys are ignored.
    pub fn parse(body: &[u8]) -> Result<StsPolicy, String> {
        let text = std::str::from_utf8(body).map_err(|_| "the policy is not UTF-8".to_string())?;
        let (mut version, mut mode, mut max_age_s, mut mx) = (None, None, None, Vec::new());
        for line in text.lines() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let Some((key, value)) = line.split_once(':') else {
                return Err(format!("not a key: value line: {line:?}"));
            };
            let value = value.trim();
            match key.trim() {
                "version" => version = Some(value.to_string()),
                "mode" => {
                    mode = Some(match value {
                        "enforce" => StsMode::Enforce,
                        "testing" => StsMode::Testing,
                        "none" => StsMode::None,
                        other => return Err(format!("unknown mode {other:?}")),
                    })
                }
                "max_age" => {
                    let age: u64 = value.parse().map_err(|_| format!("bad max_age {value:?}"))?;
                    max_age_s = Some(age.min(MAX_AGE_S_MAX));
                }
                "mx" => {
                    if mx.len() < MX_PATTERN_COUNT_MAX {
                        mx.push(value.trim_end_matches('.').to_ascii_lowercase());
                    }
                }
                _ => {}
            }
        }
        if version.as_deref() != Some("STSv1") {
            return Err("version is not STSv1".to_string());
        }
        let mode = mode.ok_or("no mode")?;
        let max_age_s = max_age_s.ok_or("no max_age")?;
        if mode != StsMode::None && mx.is_empty() {
            return Err("no mx".to_string());
        }
        Ok(StsPolicy { mode, mx, max_age_s })
    }

    /// Whether MX host `host` is one the policy names (RFC 8461 §4.1: a
    /// `*.` pattern matches exactly one more label on the left).
    pub fn mx_matches(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx.iter().any(|pattern| match pattern.strip_prefix("*.") {
            Some(parent) => host.split_once('.').is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
            None => *pattern == host,
        })
    }
}

/// The id of a `_mta-sts` TXT record (RFC 8461 §3.1): the one record that
/// starts with `v=STSv1`; None when there is none, or more than one.
pub fn txt_id(records: &[Vec<u8>]) -> Option<String> {
    let mut found = None;
    for record in records {
        let Ok(text) = std::str::from_utf8(record) else {
            continue;
        };
        let mut fields = text.split(';').map(str::trim);
        if fields.next() != Some("v=STSv1") {
            continue;
        }
        if found.is_some() {
            return None;
        }
        let id = fields.find_map(|field| field.strip_prefix("id="))?;
        if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        found = Some(id.to_string());
    }
    found
}

/// What to do for a domain, from its cached policy's id and the id its
/// TXT record has now.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// The cached policy, if any, is in force: the TXT record is gone (or
    /// broken), or names the cached version.
    UseCached,
    /// Fetch the policy: none cached, or the TXT record names a new id.
    Fetch(String),
}

fn next_step(cached_id: Option<&str>, txt_id: Option<String>) -> Step {
    match txt_id {
        None => Step::UseCached,
        Some(id) if cached_id == Some(id.as_str()) => Step::UseCached,
        Some(id) => Step::Fetch(id),
    }
}

struct Cached {
    id: String,
    policy: StsPolicy,
    expires_at: Instant,
}

/// A shard's MTA-STS: the HTTPS client settings and the policy cache.
pub struct MtaSts {
    tls: Result<Arc<rustls::ClientConfig>, String>,
    cache: RefCell<HashMap<String, Cached>>,
}

impl MtaSts {
    pub fn new(tls: Result<Arc<rustls::ClientConfig>, String>) -> MtaSts {
        MtaSts { tls, cache: RefCell::new(HashMap::new()) }
    }

    pub fn problem(&self) -> Option<String> {
        self.tls.as_ref().err().map(|e| format!("delivery.mta_sts_ca_file: {e}"))
    }

    /// The policy in force for `domain`, if any.
    pub async fn policy(&self, resolver: &Resolver, domain: &str) -> Option<StsPolicy> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let now = Instant::now();
        let cached = self.cached(&domain, now);
        let id = match resolver.lookup(&format!("_mta-sts.{domain}"), RecordKind::Txt).await {
            Ok(Lookup::Records { records, .. }) => {
                let texts: Vec<Vec<u8>> = records
                    .into_iter()
                    .filter_map(|r| match r {
                        RecordData::Txt(text) => Some(text),
                        _ => None,
                    })
                    .collect();
                txt_id(&texts)
            }
            _ => None,
        };
        let id = match next_step(cached.as_ref().map(|(id, _)| id.as_str()), id) {
            Step::UseCached => return cached.map(|(_, policy)| policy),
            Step::Fetch(id) => id,
        };
        match self.fetch(resolver, &domain).await {
            Ok(policy) => {
                crate::log::event(
                    "mta_sts_policy",
                    &[("domain", &domain), ("id", &id), ("mode", &format!("{:?}", policy.mode).to_lowercase())],
                );
                self.store(&domain, id, policy.clone(), now);
                Some(policy)
            }
            Err(problem) => {
                crate::log::event("mta_sts_fetch_failed", &[("domain", &domain), ("problem", &problem)]);
                cached.map(|(_, policy)| policy)
            }
        }
    }

    fn cached(&self, domain: &str, now: Instant) -> Option<(String, StsPolicy)> {
        let mut cache = self.cache.borrow_mut();
        match cache.get(domain) {
            Some(entry) if entry.expires_at > now => Some((entry.id.clone(), entry.policy.clone())),
            Some(_) => {
                cache.remove(domain);
                None
            }
            None => None,
        }
    }

    fn store(&self, domain: &str, id: String, policy: StsPolicy, now: Instant) {
        let mut cache = self.cache.borrow_mut();
        if cache.len() >= CACHE_ENTRIES_MAX && !cache.contains_key(domain) {
            cache.retain(|_, entry| entry.expires_at > now);
            if cache.len() >= CACHE_ENTRIES_MAX {
                let soonest = cache.iter().min_by_key(|(_, entry)| entry.expires_at).map(|(d, _)| d.clone());
                if let Some(soonest) = soonest {
                    cache.remove(&soonest);
                }
            }
        }
        let expires_at = now + Duration::from_secs(policy.max_age_s);
        cache.insert(domain.to_string(), Cached { id, policy, expires_at });
        assert!(cache.len() <= CACHE_ENTRIES_MAX);
    }

    /// Fetches and parses the policy of `domain` within `FETCH_TIMEOUT`.
    async fn fetch(&self, resolver: &Resolver, domain: &str) -> Result<StsPolicy, String> {
        let tls = self.tls.as_ref().map_err(Clone::clone)?.clone();
        let host = format!("mta-sts.{domain}");
        let addrs = match resolver.lookup(&host, RecordKind::A).await {
            Ok(lookup) => lookup.addresses().0,
            Err(e) => return Err(format!("{host}: {e}")),
        };
        let Some(ip) = addrs.first().copied() else {
            return Err(format!("{host}: no IPv4 address"));
        };
        let addr = SocketAddr::new(IpAddr::V4(ip), HTTPS_PORT);
        let body = glommio::timer::timeout(FETCH_TIMEOUT, async { Ok(https_get(tls, addr, &host).await) })
            .await
            .map_err(|e| format!("{host}: {e}"))??;
        StsPolicy::parse(&body)
    }
}

/// `GET /.well-known/mta-sts.txt` from `host` at `addr` over TLS: the body
/// of a 200 answer, at most `POLICY_BYTES_MAX`. HTTP/1.0, so that the
/// answer is never chunked and ends when the server closes.
async fn https_get(tls: Arc<rustls::ClientConfig>, addr: SocketAddr, host: &str) -> Result<Vec<u8>, String> {
    let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: {e}"))?;
    let tcp = glommio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect to {addr}: {e}"))?;
    let mut stream = futures_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {host}: {e}"))?;
    let request = format!(
        "GET /.well-known/mta-sts.txt HTTP/1.0\r\nHost: {host}\r\nUser-Agent: ringpost\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("write to {host}: {e}"))?;
    stream.flush().await.map_err(|e| format!("write to {host}: {e}"))?;
    let mut response = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(n) => n,
            // A server that closes without close_notify ends the body too.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(format!("read from {host}: {e}")),
        };
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
        if response.len() > HEAD_BYTES_MAX + POLICY_BYTES_MAX {
            return Err(format!("{host}: the answer is longer than {POLICY_BYTES_MAX} bytes"));
        }
    }
    body_of(&response).map_err(|e| format!("{host}: {e}"))
}

/// The body of an HTTP response to the policy request: status 200 (no
/// redirects, RFC 8461 §3.3), a `text/plain` Content-Type when one is
/// given, at most `POLICY_BYTES_MAX` bytes.
pub fn body_of(response: &[u8]) -> Result<Vec<u8>, String> {
    let end = response.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no end of the response head")?;
    if end > HEAD_BYTES_MAX {
        return Err(format!("response head longer than {HEAD_BYTES_MAX} bytes"));
    }
    let head = std::str::from_utf8(&response[..end]).map_err(|_| "response head not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    if code != "200" {
        return Err(format!("answered {status:?}"));
    }
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.trim().eq_ignore_ascii_case("content-type")
                && !value.trim().to_ascii_lowercase().starts_with("text/plain")
            {
                return Err(format!("Content-Type {:?}, not text/plain", value.trim()));
            }
        }
    }
    let body = &response[end + 4..];
    if body.len() > POLICY_BYTES_MAX {
        return Err(format!("policy longer than {POLICY_BYTES_MAX} bytes"));
    }
    Ok(body.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_refuse_what_the_rfc_refuses() {
        let body =
            b"version: STSv1\r\nmode: enforce\r\nmx: mail.example.org\r\nmx: *.example.net\r\nmax_age: 86400\r\n";
        let policy = StsPolicy::parse(body).unwrap();
        assert_eq!(policy.mode, StsMode::Enforce);
        assert_eq!(policy.max_age_s, 86400);
        assert_eq!(policy.mx, vec!["mail.example.org".to_string(), "*.example.net".to_string()]);
        assert_eq!(StsPolicy::parse(b"version: STSv1\nmode: none\nmax_age: 10\n").unwrap().mode, StsMode::None);
        assert!(StsPolicy::parse(b"version: STSv2\nmode: enforce\nmx: a\nmax_age: 1\n").is_err());
        assert!(StsPolicy::parse(b"version: STSv1\nmode: enforce\nmax_age: 1\n").is_err(), "no mx");
        assert!(StsPolicy::parse(b"version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n").is_err());
        assert!(StsPolicy::parse(b"version: STSv1\nmode: testing\nmx: a\n").is_err(), "no max_age");
        let long = StsPolicy::parse(b"version: STSv1\nmode: testing\nmx: a\nmax_age: 999999999999\n").unwrap();
        assert_eq!(long.max_age_s, MAX_AGE_S_MAX);
    }

    #[test]
    fn mx_patterns_match_one_label_for_a_wildcard() {
        let policy =
            StsPolicy::parse(b"version: STSv1\nmode: enforce\nmx: mail.example.org\nmx: *.example.net\nmax_age: 1\n")
                .unwrap();
        assert!(policy.mx_matches("mail.example.org"));
        assert!(policy.mx_matches("MAIL.example.org."));
        assert!(policy.mx_matches("mx1.example.net"));
        assert!(!policy.mx_matches("a.b.example.net"), "one label only");
        assert!(!policy.mx_matches("example.net"));
        assert!(!policy.mx_matches("other.example.org"));
    }

    #[test]
    fn txt_records_give_the_id_of_the_one_sts_record() {
        assert_eq!(txt_id(&[b"v=STSv1; id=20260101T000000".to_vec()]).as_deref(), Some("20260101T000000"));
        assert_eq!(txt_id(&[b"v=spf1 -all".to_vec(), b"v=STSv1;id=abc;".to_vec()]).as_deref(), Some("abc"));
        assert_eq!(txt_id(&[b"v=spf1 -all".to_vec()]), None);
        assert_eq!(txt_id(&[b"v=STSv1; id=a".to_vec(), b"v=STSv1; id=b".to_vec()]), None, "two records");
        assert_eq!(txt_id(&[b"v=STSv1; id=no-dashes".to_vec()]), None);
        assert_eq!(txt_id(&[b"v=STSv1;".to_vec()]), None);
    }

    #[test]
    fn a_new_txt_id_fetches_the_policy_again_and_a_missing_record_keeps_the_cached_one() {
        assert_eq!(next_step(None, Some("a1".to_string())), Step::Fetch("a1".to_string()));
        assert_eq!(next_step(Some("a1"), Some("a1".to_string())), Step::UseCached);
        assert_eq!(next_step(Some("a1"), Some("b2".to_string())), Step::Fetch("b2".to_string()));
        assert_eq!(next_step(Some("a1"), None), Step::UseCached, "RFC 8461 §5.1: keep the cached policy");
        assert_eq!(next_step(None, None), Step::UseCached);
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_the_newest_policies() {
        let sts = MtaSts::new(Err("unused".to_string()));
        let policy = |age| StsPolicy { mode: StsMode::Enforce, mx: vec!["mx.example".to_string()], max_age_s: age };
        let now = Instant::now();
        for i in 0..CACHE_ENTRIES_MAX + 10 {
            sts.store(&format!("d{i}.example"), "1".to_string(), policy(1000 + i as u64), now);
        }
        assert_eq!(sts.cache.borrow().len(), CACHE_ENTRIES_MAX);
        // The entries closest to expiry went first.
        assert!(sts.cached("d0.example", now).is_none());
        assert!(sts.cached(&format!("d{}.example", CACHE_ENTRIES_MAX + 9), now).is_some());
        // An expired entry is gone when asked for.
        let later = now + Duration::from_secs(1000 + CACHE_ENTRIES_MAX as u64 + 20);
        assert!(sts.cached(&format!("d{}.example", CACHE_ENTRIES_MAX + 9), later).is_none());
    }

    #[test]
    fn only_a_200_text_plain_answer_gives_a_body() {
        let ok = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nversion: STSv1\n";
        assert_eq!(body_of(ok).unwrap(), b"version: STSv1\n");
        assert!(body_of(b"HTTP/1.0 301 Moved\r\nLocation: https://x/\r\n\r\n").is_err(), "no redirects");
        assert!(body_of(b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\nx").is_err());
        assert!(body_of(b"HTTP/1.0 200 OK\r\n").is_err());
        let mut big = b"HTTP/1.0 200 OK\r\n\r\n".to_vec();
        big.extend(std::iter::repeat(b'a').take(POLICY_BYTES_MAX + 1));
        assert!(body_of(&big).is_err());
    }
}
