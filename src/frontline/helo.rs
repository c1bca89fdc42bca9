//! HELO/EHLO name checks: the `[[helo_check]]` rules (a regular expression
//! or a literal name, refused or tagged as known malware) and the built-in
//! checks `policy.helo_reject_own_name`, `helo_reject_ip_mismatch` and
//! `helo_reject_invalid`.
//!
//! Place in the pipeline: the session driver hands each HELO/EHLO name to
//! [`check`] (through `crate::frontline::Session::on_helo`); a refusal is
//! kept and given to the MAIL commands that follow (like Postfix's
//! `smtpd_delay_reject`), so the HELO reply itself stays 250 and the log
//! line can name the sender. Rules are compiled once per shard and
//! configuration (`HELO_CHECKS_MAX` of them, patterns of at most 1024
//! bytes, each automaton bounded by `REGEX_SIZE_BYTES_MAX`).

use std::cell::RefCell;
use std::net::IpAddr;
use std::rc::Rc;

use regex::Regex;

use crate::config::{FrontPolicy, HeloAction, HeloCheck, HeloMatch};

/// The reply text of a `[[helo_check]]` refusal without its own.
pub const DEFAULT_TEXT: &str = "Client host rejected: HELO name refused";
/// The reply text of a refusal for a tagged (known malware) HELO.
pub const MALWARE_TEXT: &str = "Client host rejected: known malware signature in HELO";
/// Largest compiled automaton of one pattern.
const REGEX_SIZE_BYTES_MAX: usize = 1 << 20;

/// Compiles a `[[helo_check]]` pattern: searched in the name (anchor it
/// with `^…$`), case-insensitive, like a Postfix regexp table.
pub fn compile(pattern: &str) -> Result<Regex, String> {
    regex::RegexBuilder::new(pattern)
        .case_insensitive(true)
        .size_limit(REGEX_SIZE_BYTES_MAX)
        .build()
        .map_err(|e| format!("bad regular expression: {e}"))
}

/// What a HELO name failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// `helo_check[i]`, or the built-in check's key.
    pub check: String,
    pub action: HeloAction,
    pub text: String,
    /// A built-in check: refused only with `policy.helo_require`.
    pub builtin: bool,
}

/// The compiled rules of one configuration.
struct Compiled {
    checks: Vec<HeloCheck>,
    patterns: Vec<Option<Regex>>,
}

thread_local! {
    /// The shard's compiled rules, for the configuration they came from.
    static COMPILED: RefCell<Option<Rc<Compiled>>> = const { RefCell::new(None) };
}

fn compiled(checks: &[HeloCheck]) -> Rc<Compiled> {
    COMPILED.with(|cell| {
        let mut cell = cell.borrow_mut();
        if let Some(c) = cell.as_ref().filter(|c| c.checks == checks) {
            return c.clone();
        }
        let patterns = checks
            .iter()
            .map(|check| match &check.matcher {
                HeloMatch::Pattern(p) => compile(p).ok(),
                HeloMatch::Name(_) => None,
            })
            .collect();
        let c = Rc::new(Compiled { checks: checks.to_vec(), patterns });
        *cell = Some(c.clone());
        c
    })
}

/// The first check `name` fails: the rules in order, then the enabled
/// built-in checks. `hostname` is ours, `client` and `local` the two ends.
pub fn check(
    policy: &FrontPolicy,
    checks: &[HeloCheck],
    name: &str,
    hostname: &str,
    client: IpAddr,
    local: IpAddr,
) -> Option<Failure> {
    if !checks.is_empty() {
        let compiled = compiled(checks);
        for (index, (rule, pattern)) in compiled.checks.iter().zip(&compiled.patterns).enumerate() {
            let hit = match (&rule.matcher, pattern) {
                (HeloMatch::Name(literal), _) => name.eq_ignore_ascii_case(literal),
                (HeloMatch::Pattern(_), Some(regex)) => regex.is_match(name),
                (HeloMatch::Pattern(_), None) => false,
            };
            if hit {
                let text = match rule.action {
                    HeloAction::Reject => rule.text.clone(),
                    HeloAction::Tag => MALWARE_TEXT.to_string(),
                };
                return Some(Failure { check: format!("helo_check[{index}]"), action: rule.action, text, builtin: false });
            }
        }
    }
    let builtin = |check: &str, text: String| Failure {
        check: check.to_string(),
        action: HeloAction::Reject,
        text,
        builtin: true,
    };
    let literal = address_literal(name);
    if policy.helo_reject_own_name {
        let ours = name.eq_ignore_ascii_case(hostname)
            || literal.is_some_and(|ip| same_ip(ip, local))
            || name.parse::<IpAddr>().is_ok_and(|ip| same_ip(ip, local));
        if ours {
            return Some(builtin("helo_reject_own_name", format!("Client host rejected: {name} is my name")));
        }
    }
    if policy.helo_reject_ip_mismatch {
        if let Some(ip) = literal.filter(|ip| !same_ip(*ip, client)) {
            return Some(builtin(
                "helo_reject_ip_mismatch",
                format!("Client host rejected: HELO [{ip}] is not your address"),
            ));
        }
    }
    if policy.helo_reject_invalid && literal.is_none() && !is_valid_domain(name) {
        return Some(builtin("helo_reject_invalid", format!("Client host rejected: invalid HELO name {name}")));
    }
    None
}

fn same_ip(a: IpAddr, b: IpAddr) -> bool {
    super::dnsbl::canonical(a) == super::dnsbl::canonical(b)
}

/// The address of an address literal: `[192.0.2.1]` or `[IPv6:2001:db8::1]`
/// (RFC 5321 §4.1.3).
pub fn address_literal(name: &str) -> Option<IpAddr> {
    let inner = name.strip_prefix('[')?.strip_suffix(']')?;
    if inner.len() > 5 && inner[..5].eq_ignore_ascii_case("ipv6:") {
        return inner[5..].parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
    }
    inner.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// A fully qualified domain name as RFC 5321 §4.1.2 writes one: at least two
/// labels of letters, digits and inner hyphens, each 1 to 63 bytes, 253 in
/// all, the last not all digits (so a bare IP address is not a name).
pub fn is_valid_domain(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > 253 {
        return false;
    }
    let labels: Vec<&str> = name.split('.').collect();
    let label_ok = |label: &&str| {
        !label.is_empty()
            && label.len() <= 63
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    labels.len() >= 2
        && labels.iter().all(label_ok)
        && !labels.last().is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
}
