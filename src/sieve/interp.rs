//! Runs a compiled script over an [`Input`] and collects the [`Actions`].
//!
//! Evaluation is dynamic and lazy in the message: envelope-only input runs
//! until a test needs the header or size (or a vacation needs the
//! recipient check), and then reports [`Outcome::NeedsContent`]. RFC 5228
//! action semantics live here: implicit keep and what cancels it, `:copy`,
//! duplicate fileinto/redirect collapsed, reject conflicts (RFC 5429), and
//! the RFC 3834/5230 reasons not to answer with a vacation response.

use std::collections::HashMap;

use super::actions::{Action, Actions, Vacation};
use super::compile::{AddrPart, Cmd, Match, MatchKind, Modifier, Program, Test, VacationCmd};
use super::matcher::{self, OutOfSteps};
use super::message::{self, Field};
use super::{Input, Limits, Outcome};

/// Why evaluation ends early.
enum Halt {
    Content,
    Error(String),
    Stop,
}

impl From<OutOfSteps> for Halt {
    fn from(_: OutOfSteps) -> Halt {
        Halt::Error("evaluation step limit exceeded".into())
    }
}

struct Run<'a> {
    prog: &'a Program,
    input: &'a Input<'a>,
    limits: &'a Limits,
    fields: Option<Vec<Field>>,
    steps: u64,
    vars: HashMap<String, String>,
    match_vars: Vec<String>,
    actions: Vec<Action>,
    implicit_keep: bool,
    redirects: usize,
}

pub fn evaluate(prog: &Program, input: &Input, limits: &Limits) -> Outcome {
    let fields = input.message.as_ref().map(|m| message::parse_header(m.header));
    let mut run = Run {
        prog,
        input,
        limits,
        fields,
        steps: limits.max_steps,
        vars: HashMap::new(),
        match_vars: Vec::new(),
        actions: Vec::new(),
        implicit_keep: true,
        redirects: 0,
    };
    match run.block(&prog.cmds) {
        Ok(()) | Err(Halt::Stop) => {}
        Err(Halt::Content) => return Outcome::NeedsContent,
        Err(Halt::Error(e)) => return Outcome::Error(e),
    }
    // The implicit keep stores in INBOX: not again after an explicit store there.
    let implicit_keep = run.implicit_keep && !run.stores_inbox();
    Outcome::Done(Actions { list: run.actions, implicit_keep })
}

fn is_inbox(folder: &str) -> bool {
    folder.eq_ignore_ascii_case("INBOX")
}

fn set_case_first(s: &str, upper: bool) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => {
            let f = if upper { f.to_ascii_uppercase() } else { f.to_ascii_lowercase() };
            std::iter::once(f).chain(c).collect()
        }
        None => String::new(),
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

impl Run<'_> {
    fn step(&mut self) -> Result<(), Halt> {
        if self.steps == 0 {
            return Err(Halt::Error("evaluation step limit exceeded".into()));
        }
        self.steps -= 1;
        Ok(())
    }

    fn fields(&self) -> Result<&[Field], Halt> {
        self.fields.as_deref().ok_or(Halt::Content)
    }

    /// `${name}` and `${N}` expansion (RFC 5229 section 3), when the script
    /// requires "variables".
    fn expand(&self, s: &str) -> String {
        if !self.prog.variables || !s.contains("${") {
            return s.to_string();
        }
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while let Some(p) = rest.find("${") {
            out.push_str(&rest[..p]);
            let after = &rest[p + 2..];
            let name_end = after.find('}');
            let replaced = name_end.and_then(|e| {
                let name = &after[..e];
                if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
                    let idx: usize = name.trim_start_matches('0').parse().unwrap_or(0);
                    Some((self.match_vars.get(idx).cloned().unwrap_or_default(), e))
                } else if !name.is_empty()
                    && (name.as_bytes()[0].is_ascii_alphabetic() || name.as_bytes()[0] == b'_')
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    Some((self.vars.get(&name.to_ascii_lowercase()).cloned().unwrap_or_default(), e))
                } else {
                    None
                }
            });
            match replaced {
                Some((v, e)) => {
                    out.push_str(&v);
                    rest = &after[e + 1..];
                }
                None => {
                    out.push_str("${");
                    rest = after;
                }
            }
            if out.len() > self.limits.max_string_len {
                break;
            }
        }
        out.push_str(rest);
        truncate(out, self.limits.max_string_len)
    }

    fn expand_all(&self, v: &[String]) -> Vec<String> {
        v.iter().map(|s| self.expand(s)).collect()
    }

    fn block(&mut self, cmds: &[Cmd]) -> Result<(), Halt> {
        for c in cmds {
            self.step()?;
            self.command(c)?;
        }
        Ok(())
    }

    fn push(&mut self, a: Action) -> Result<(), Halt> {
        if self.actions.len() >= self.limits.max_actions {
            return Err(Halt::Error("too many actions".into()));
        }
        self.actions.push(a);
        Ok(())
    }

    /// An explicit keep or fileinto "INBOX" is already in the list.
    fn stores_inbox(&self) -> bool {
        self.actions.iter().any(|a| match a {
            Action::Keep => true,
            Action::FileInto { folder, .. } => is_inbox(folder),
            _ => false,
        })
    }

    fn rejected(&self) -> bool {
        self.actions.iter().any(|a| matches!(a, Action::Reject { .. }))
    }

    /// The RFC 5429 conflicts, worded as Pigeonhole words them.
    fn conflict(&self, what: &str) -> Halt {
        let why =
            if what == "vacation" { "also sends a response to the sender" } else { "tries to deliver the message" };
        Halt::Error(format!("reject/ereject action conflicts with other action: the {what} action {why}"))
    }

    fn command(&mut self, c: &Cmd) -> Result<(), Halt> {
        match c {
            Cmd::If { branches, otherwise } => {
                for (t, body) in branches {
                    if self.test(t)? {
                        return self.block(body);
                    }
                }
                if let Some(b) = otherwise {
                    self.block(b)?;
                }
                Ok(())
            }
            Cmd::Stop => Err(Halt::Stop),
            Cmd::Keep => {
                if self.rejected() {
                    return Err(self.conflict("keep"));
                }
                self.implicit_keep = false;
                if !self.stores_inbox() {
                    self.push(Action::Keep)?;
                }
                Ok(())
            }
            Cmd::Discard => {
                self.implicit_keep = false;
                if !self.actions.contains(&Action::Discard) {
                    self.push(Action::Discard)?;
                }
                Ok(())
            }
            Cmd::FileInto { folder, copy } => {
                if self.rejected() {
                    return Err(self.conflict("fileinto"));
                }
                let folder = self.expand(folder);
                if !*copy {
                    self.implicit_keep = false;
                }
                // keep is fileinto "INBOX" (RFC 5228 section 4.2): one store.
                if is_inbox(&folder) && self.stores_inbox() {
                    return Ok(());
                }
                let dup = self.actions.iter_mut().find_map(|a| match a {
                    Action::FileInto { folder: f, copy } if *f == folder => Some(copy),
                    _ => None,
                });
                match dup {
                    Some(c) => *c = *c && *copy,
                    None => self.push(Action::FileInto { folder, copy: *copy })?,
                }
                Ok(())
            }
            Cmd::Redirect { address, copy } => {
                if self.rejected() {
                    return Err(self.conflict("redirect"));
                }
                let address = self.expand(address);
                let address = address.trim();
                let address = address.strip_prefix('<').and_then(|a| a.strip_suffix('>')).unwrap_or(address);
                if address.rsplit_once('@').is_none_or(|(l, d)| l.is_empty() || d.is_empty()) {
                    return Err(Halt::Error(format!("redirect: invalid address '{address}'")));
                }
                let address = address.to_string();
                if !*copy {
                    self.implicit_keep = false;
                }
                let dup = self.actions.iter_mut().find_map(|a| match a {
                    Action::Redirect { address: r, copy } if same_address(r, &address) => Some(copy),
                    _ => None,
                });
                match dup {
                    Some(c) => *c = *c && *copy,
                    None => {
                        if self.redirects >= self.limits.max_redirects {
                            return Err(Halt::Error("too many redirect actions".into()));
                        }
                        self.redirects += 1;
                        self.push(Action::Redirect { address, copy: *copy })?;
                    }
                }
                Ok(())
            }
            Cmd::Reject { text, extended } => {
                if self.rejected() {
                    return Err(Halt::Error("duplicate reject action".into()));
                }
                for a in &self.actions {
                    let what = match a {
                        Action::Keep => "keep",
                        Action::FileInto { .. } => "fileinto",
                        Action::Redirect { .. } => "redirect",
                        Action::Vacation(_) => "vacation",
                        _ => continue,
                    };
                    return Err(self.conflict(what));
                }
                self.implicit_keep = false;
                let text = self.expand(text);
                self.push(Action::Reject { text, extended: *extended })
            }
            Cmd::Set { name, value, modifiers } => {
                let mut v = self.expand(value);
                for m in modifiers {
                    v = match m {
                        Modifier::Lower => v.to_ascii_lowercase(),
                        Modifier::Upper => v.to_ascii_uppercase(),
                        Modifier::LowerFirst => set_case_first(&v, false),
                        Modifier::UpperFirst => set_case_first(&v, true),
                        Modifier::QuoteWildcard => matcher::quote_wildcard(&v),
                        Modifier::Length => v.chars().count().to_string(),
                    };
                }
                if !self.vars.contains_key(name) && self.vars.len() >= self.limits.max_variables {
                    return Err(Halt::Error("too many variables".into()));
                }
                self.vars.insert(name.clone(), truncate(v, self.limits.max_string_len));
                Ok(())
            }
            Cmd::Vacation(v) => self.vacation(v),
        }
    }

    fn header_values(&self, names: &[String]) -> Result<Vec<String>, Halt> {
        let fields = self.fields()?;
        let mut out = Vec::new();
        for n in names {
            for f in fields.iter().filter(|f| f.name.eq_ignore_ascii_case(n)) {
                out.push(message::decoded_value(&f.raw));
            }
        }
        Ok(out)
    }

    fn addresses(&self, names: &[String]) -> Result<Vec<message::Address>, Halt> {
        let fields = self.fields()?;
        let mut out = Vec::new();
        for n in names {
            for f in fields.iter().filter(|f| f.name.eq_ignore_ascii_case(n)) {
                out.extend(message::parse_addresses(&f.raw));
            }
        }
        Ok(out)
    }

    fn test(&mut self, t: &Test) -> Result<bool, Halt> {
        self.step()?;
        match t {
            Test::True => Ok(true),
            Test::False => Ok(false),
            Test::Not(x) => Ok(!self.test(x)?),
            Test::AllOf(ts) => {
                for x in ts {
                    if !self.test(x)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            Test::AnyOf(ts) => {
                for x in ts {
                    if self.test(x)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            Test::Exists(names) => {
                let names = self.expand_all(names);
                let fields = self.fields()?;
                Ok(names.iter().all(|n| fields.iter().any(|f| f.name.eq_ignore_ascii_case(n))))
            }
            Test::Size { over, limit } => {
                let size = self.input.message.as_ref().ok_or(Halt::Content)?.size;
                Ok(if *over { size > *limit } else { size < *limit })
            }
            Test::Header { names, keys, m } => {
                let names = self.expand_all(names);
                let values = self.header_values(&names)?;
                let values: Vec<Option<String>> = values.into_iter().map(Some).collect();
                self.compare(&values, keys, *m)
            }
            Test::Address { part, names, keys, m } => {
                let names = self.expand_all(names);
                let addrs = self.addresses(&names)?;
                let values: Vec<Option<String>> = addrs.iter().map(|a| address_part(a, *part)).collect();
                self.compare(&values, keys, *m)
            }
            Test::Envelope { part, names, keys, m } => {
                let names = self.expand_all(names);
                let mut values = Vec::new();
                for n in &names {
                    let a = match n.to_ascii_lowercase().as_str() {
                        "from" => &self.input.envelope.sender,
                        "to" => &self.input.envelope.recipient,
                        _ => continue,
                    };
                    let a = a.trim();
                    let a = a.strip_prefix('<').and_then(|x| x.strip_suffix('>')).unwrap_or(a);
                    let addr = message::Address {
                        all: a.to_string(),
                        parts: a.rsplit_once('@').map(|(l, d)| (l.to_string(), d.to_string())),
                    };
                    if a.is_empty() {
                        // The null reverse-path: only its :all part exists (RFC 5228 section 5.4).
                        values.push(if *part == AddrPart::All { Some(String::new()) } else { None });
                    } else {
                        values.push(address_part(&addr, *part));
                    }
                }
                self.compare(&values, keys, *m)
            }
            Test::Str { sources, keys, m } => {
                let sources = self.expand_all(sources);
                let values: Vec<Option<String>> = if matches!(m.kind, MatchKind::Count(_)) {
                    sources.into_iter().filter(|s| !s.is_empty()).map(Some).collect()
                } else {
                    sources.into_iter().map(Some).collect()
                };
                self.compare(&values, keys, *m)
            }
        }
    }

    /// Compares values against keys; `None` values exist (for `:count`) but
    /// match nothing.
    fn compare(&mut self, values: &[Option<String>], keys: &[String], m: Match) -> Result<bool, Halt> {
        let keys = self.expand_all(keys);
        if let MatchKind::Count(rel) = m.kind {
            let n = values.iter().filter(|v| v.is_some()).count().to_string();
            return Ok(keys.iter().any(|k| matcher::relate(rel, matcher::order(m.cmp, &n, k))));
        }
        for v in values.iter().flatten() {
            for k in &keys {
                self.step()?;
                let hit = match m.kind {
                    MatchKind::Is => matcher::is(m.cmp, v, k),
                    MatchKind::Contains => matcher::contains(m.cmp, v, k),
                    MatchKind::Value(rel) => matcher::relate(rel, matcher::order(m.cmp, v, k)),
                    MatchKind::Matches => match matcher::matches(m.cmp, v, k, &mut self.steps)? {
                        Some(caps) => {
                            if self.prog.variables {
                                let mut mv = vec![v.clone()];
                                mv.extend(caps.into_iter().take(9));
                                self.match_vars = mv;
                            }
                            true
                        }
                        None => false,
                    },
                    MatchKind::Count(_) => false,
                };
                if hit {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    fn vacation(&mut self, v: &VacationCmd) -> Result<(), Halt> {
        if self.actions.iter().any(|a| matches!(a, Action::Vacation(_))) {
            return Err(Halt::Error("duplicate vacation action".into()));
        }
        if self.rejected() {
            return Err(self.conflict("vacation"));
        }
        let fields = self.fields()?;
        let env = &self.input.envelope;
        let mut addresses: Vec<String> = vec![env.recipient.clone()];
        addresses.extend(env.user_addresses.iter().cloned());
        addresses.extend(v.addresses.iter().map(|a| self.expand(a)));
        let addresses: Vec<String> = addresses
            .into_iter()
            .map(|a| {
                let a = a.trim();
                a.strip_prefix('<').and_then(|x| x.strip_suffix('>')).unwrap_or(a).to_string()
            })
            .filter(|a| !a.is_empty())
            .collect();
        let skipped = vacation_skip(fields, &env.sender, &addresses);
        let subject = match &v.subject {
            Some(s) => self.expand(s),
            None => {
                let orig = fields
                    .iter()
                    .find(|f| f.name.eq_ignore_ascii_case("subject"))
                    .map(|f| message::decoded_value(&f.raw))
                    .unwrap_or_default();
                format!("Auto: {orig}")
            }
        };
        let from = v.from.as_ref().map(|f| self.expand(f));
        let reason = self.expand(&v.reason);
        let handle = match &v.handle {
            Some(h) => self.expand(h),
            None => format!(
                "{}{}{}{}",
                reason,
                v.subject.as_deref().unwrap_or(""),
                from.as_deref().unwrap_or("<default-from>"),
                if v.mime { "<MIME>" } else { "<NO-MIME>" }
            ),
        };
        let days = v.days.unwrap_or(7).max(1);
        let to = env.sender.trim().trim_start_matches('<').trim_end_matches('>').to_string();
        self.push(Action::Vacation(Vacation {
            to,
            from,
            subject,
            reason,
            mime: v.mime,
            days,
            handle,
            addresses,
            skipped,
        }))
    }
}

/// Local parts compare exactly, domains without regard to case.
fn same_address(a: &str, b: &str) -> bool {
    match (a.rsplit_once('@'), b.rsplit_once('@')) {
        (Some((la, da)), Some((lb, db))) => la == lb && da.eq_ignore_ascii_case(db),
        _ => a == b,
    }
}

fn address_part(a: &message::Address, part: AddrPart) -> Option<String> {
    match part {
        AddrPart::All => Some(a.all.clone()),
        AddrPart::Local => a.parts.as_ref().map(|(l, _)| l.clone()),
        AddrPart::Domain => a.parts.as_ref().map(|(_, d)| d.clone()),
        AddrPart::User => a.parts.as_ref().map(|(l, _)| l.split_once('+').map_or(l.as_str(), |(u, _)| u).to_string()),
        AddrPart::Detail => a.parts.as_ref().and_then(|(l, _)| l.split_once('+').map(|(_, d)| d.to_string())),
    }
}

/// Why a vacation response must not be sent (RFC 3834 section 2, RFC 5230
/// section 4.5), or `None`. `addresses` are the user's own addresses.
pub fn vacation_skip(fields: &[Field], sender: &str, addresses: &[String]) -> Option<String> {
    let sender = sender.trim();
    let sender = sender.strip_prefix('<').and_then(|x| x.strip_suffix('>')).unwrap_or(sender);
    if sender.is_empty() {
        return Some("null sender".into());
    }
    let local = sender.rsplit_once('@').map_or(sender, |(l, _)| l).to_ascii_lowercase();
    if local == "mailer-daemon" || local.starts_with("owner-") || local.ends_with("-request") || local == "listserv" {
        return Some("sender is a system or list address".into());
    }
    if addresses.iter().any(|a| a.eq_ignore_ascii_case(sender)) {
        return Some("sender is the user".into());
    }
    for f in fields {
        let name = f.name.to_ascii_lowercase();
        let value = message::decoded_value(&f.raw).to_ascii_lowercase();
        if name == "auto-submitted" {
            let kind = value.split(|c: char| c == ';' || c.is_whitespace()).next().unwrap_or("");
            if kind != "no" {
                return Some("message is auto-submitted".into());
            }
        }
        // Microsoft's X-Auto-Response-Suppress: All or OOF (out of office).
        if name == "x-auto-response-suppress" && value.split(',').any(|v| matches!(v.trim(), "all" | "oof")) {
            return Some("message suppresses auto responses".into());
        }
        if name.starts_with("list-") {
            return Some("message is from a mailing list".into());
        }
        if name == "precedence" && matches!(value.trim(), "bulk" | "list" | "junk") {
            return Some(format!("message has precedence {}", value.trim()));
        }
    }
    let recipient_headers = ["to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc"];
    let mentioned =
        fields.iter().filter(|f| recipient_headers.iter().any(|h| f.name.eq_ignore_ascii_case(h))).any(|f| {
            message::parse_addresses(&f.raw).iter().any(|a| {
                let all = match &a.parts {
                    Some((l, d)) => format!("{l}@{d}"),
                    None => a.all.clone(),
                };
                addresses.iter().any(|u| u.eq_ignore_ascii_case(&all))
            })
        });
    if !mentioned {
        return Some("none of the user's addresses is in To, Cc, Bcc or Resent-*".into());
    }
    None
}
