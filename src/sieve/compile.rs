//! Checks the generic tree from `parser.rs` against the supported commands,
//! tests and extensions, and builds the compiled form that `interp.rs` runs.
//!
//! Everything decidable before a message arrives is an error here, with the
//! line and column of the offending command, test or argument: unknown
//! commands, tests, tags and extensions, extensions used without `require`,
//! wrong argument counts and types, misplaced `elsif`/`else`/`require`.

use super::parser::{Arg, CommandNode, TestNode};
use super::CompileError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparator {
    Octet,
    Casemap,
    Numeric,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rel {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    Is,
    Contains,
    Matches,
    Count(Rel),
    Value(Rel),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match {
    pub kind: MatchKind,
    pub cmp: Comparator,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrPart {
    All,
    Local,
    Domain,
    User,
    Detail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modifier {
    Lower,
    Upper,
    LowerFirst,
    UpperFirst,
    QuoteWildcard,
    Length,
}

#[derive(Debug, Clone)]
pub enum Test {
    True,
    False,
    Not(Box<Test>),
    AllOf(Vec<Test>),
    AnyOf(Vec<Test>),
    Exists(Vec<String>),
    Size { over: bool, limit: u64 },
    Header { names: Vec<String>, keys: Vec<String>, m: Match },
    Address { part: AddrPart, names: Vec<String>, keys: Vec<String>, m: Match },
    Envelope { part: AddrPart, names: Vec<String>, keys: Vec<String>, m: Match },
    Str { sources: Vec<String>, keys: Vec<String>, m: Match },
}

#[derive(Debug, Clone)]
pub struct VacationCmd {
    pub days: Option<u64>,
    pub subject: Option<String>,
    pub from: Option<String>,
    pub addresses: Vec<String>,
    pub mime: bool,
    pub handle: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub enum Cmd {
    If { branches: Vec<(Test, Vec<Cmd>)>, otherwise: Option<Vec<Cmd>> },
    Stop,
    Keep,
    Discard,
    FileInto { folder: String, copy: bool },
    Redirect { address: String, copy: bool },
    Reject { text: String, extended: bool },
    Set { name: String, value: String, modifiers: Vec<Modifier> },
    Vacation(Box<VacationCmd>),
}

#[derive(Debug, Clone, Default)]
pub struct Program {
    pub cmds: Vec<Cmd>,
    /// `require "variables"`: strings are expanded and `:matches` sets `${0}`…`${9}`.
    pub variables: bool,
    /// The script can reach a test that needs the message (header, address,
    /// exists, size) or a vacation command.
    pub uses_content: bool,
    /// `require "reject"` or `"ereject"`: the script can refuse the message.
    pub can_reject: bool,
}

/// Extensions this implementation knows (the capability strings of `require`).
pub const EXTENSIONS: &[&str] = &[
    "fileinto",
    "reject",
    "ereject",
    "envelope",
    "variables",
    "relational",
    "subaddress",
    "copy",
    "vacation",
    "comparator-i;octet",
    "comparator-i;ascii-casemap",
    "comparator-i;ascii-numeric",
];

/// Header fields the `address` test accepts (RFC 5228 section 5.1: only
/// fields that hold addresses; the same set as Pigeonhole).
pub const ADDRESS_HEADERS: &[&str] = &[
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "bcc",
    "resent-from",
    "resent-sender",
    "resent-reply-to",
    "resent-to",
    "resent-cc",
    "resent-bcc",
    "delivered-to",
    "errors-to",
    "mail-followup-to",
    "mail-reply-to",
    "return-receipt-to",
    "x-original-to",
    "apparently-to",
];

struct Ctx {
    exts: Vec<String>,
    uses_content: bool,
}

fn err(line: usize, column: usize, message: impl Into<String>) -> CompileError {
    CompileError { line, column, message: message.into() }
}

impl Ctx {
    fn has(&self, e: &str) -> bool {
        self.exts.iter().any(|x| x == e)
    }
    fn need(&self, e: &str, what: &str, line: usize, column: usize) -> Result<(), CompileError> {
        if self.has(e) {
            Ok(())
        } else {
            Err(err(line, column, format!("{what} requires the \"{e}\" extension (require \"{e}\";)")))
        }
    }
}

/// Builds the compiled program from the command tree.
pub fn compile(nodes: &[CommandNode]) -> Result<Program, CompileError> {
    let mut ctx = Ctx { exts: Vec::new(), uses_content: false };
    let mut start = 0;
    for n in nodes {
        if n.name != "require" {
            break;
        }
        start += 1;
        if !n.tests.is_empty() || n.block.is_some() {
            return Err(err(n.line, n.column, "require takes only a string list"));
        }
        let caps = match n.args.as_slice() {
            [Arg::Strings { values, .. }] => values,
            _ => return Err(err(n.line, n.column, "require takes exactly one string list")),
        };
        for c in caps {
            let c = c.to_ascii_lowercase();
            if !EXTENSIONS.contains(&c.as_str()) {
                return Err(err(n.line, n.column, format!("require: unknown Sieve capability '{c}'")));
            }
            if !ctx.has(&c) {
                ctx.exts.push(c);
            }
        }
    }
    let cmds = block(&mut ctx, nodes.get(start..).unwrap_or(&[]))?;
    let can_reject = ctx.has("reject") || ctx.has("ereject");
    Ok(Program { cmds, variables: ctx.has("variables"), uses_content: ctx.uses_content, can_reject })
}

fn block(ctx: &mut Ctx, nodes: &[CommandNode]) -> Result<Vec<Cmd>, CompileError> {
    let mut out: Vec<Cmd> = Vec::new();
    let mut i = 0;
    while i < nodes.len() {
        let n = &nodes[i];
        i += 1;
        match n.name.as_str() {
            "if" => {
                let mut branches = vec![(cond(ctx, n)?, body(ctx, n)?)];
                let mut otherwise = None;
                while let Some(next) = nodes.get(i) {
                    match next.name.as_str() {
                        "elsif" => {
                            branches.push((cond(ctx, next)?, body(ctx, next)?));
                            i += 1;
                        }
                        "else" => {
                            no_args(next)?;
                            if !next.tests.is_empty() {
                                return Err(err(next.line, next.column, "else takes no test"));
                            }
                            otherwise = Some(body(ctx, next)?);
                            i += 1;
                            break;
                        }
                        _ => break,
                    }
                }
                out.push(Cmd::If { branches, otherwise });
            }
            "elsif" | "else" => {
                return Err(err(n.line, n.column, format!("{} without a preceding if", n.name)));
            }
            "require" => {
                return Err(err(n.line, n.column, "require is allowed only at the beginning of the script"));
            }
            _ => out.push(simple(ctx, n)?),
        }
    }
    Ok(out)
}

fn cond(ctx: &mut Ctx, n: &CommandNode) -> Result<Test, CompileError> {
    no_args(n)?;
    match (n.tests.as_slice(), n.test_list) {
        ([t], false) => test(ctx, t),
        _ => Err(err(n.line, n.column, format!("{} needs exactly one test", n.name))),
    }
}

fn body(ctx: &mut Ctx, n: &CommandNode) -> Result<Vec<Cmd>, CompileError> {
    match &n.block {
        Some(b) => block(ctx, b),
        None => Err(err(n.line, n.column, format!("{} needs a block", n.name))),
    }
}

fn no_args(n: &CommandNode) -> Result<(), CompileError> {
    match n.args.first() {
        Some(a) => {
            let (l, c) = a.pos();
            Err(err(l, c, format!("{} takes no arguments", n.name)))
        }
        None => Ok(()),
    }
}

/// Tagged and positional arguments of one command or test.
struct Args<'a> {
    what: &'a str,
    line: usize,
    column: usize,
    tags: Vec<(String, Option<&'a Arg>, (usize, usize))>,
    pos: Vec<&'a Arg>,
}

/// Tags that take one argument after them.
fn tag_takes_value(name: &str) -> bool {
    matches!(name, "comparator" | "count" | "value" | "days" | "subject" | "from" | "addresses" | "handle")
}

fn split_args<'a>(what: &'a str, line: usize, column: usize, args: &'a [Arg]) -> Result<Args<'a>, CompileError> {
    let mut a = Args { what, line, column, tags: Vec::new(), pos: Vec::new() };
    let mut i = 0;
    while i < args.len() {
        match &args[i] {
            Arg::Tag { name, line, column } => {
                if a.tags.iter().any(|(n, _, _)| n == name) {
                    return Err(err(*line, *column, format!("{what}: tag :{name} given more than once")));
                }
                let value = if tag_takes_value(name) {
                    i += 1;
                    match args.get(i) {
                        Some(v @ (Arg::Strings { .. } | Arg::Number { .. })) => Some(v),
                        _ => return Err(err(*line, *column, format!("{what}: tag :{name} needs an argument"))),
                    }
                } else {
                    None
                };
                a.tags.push((name.clone(), value, (*line, *column)));
            }
            other => {
                a.pos.push(other);
            }
        }
        i += 1;
    }
    Ok(a)
}

impl<'a> Args<'a> {
    fn take_tag(&mut self, name: &str) -> Option<(Option<&'a Arg>, (usize, usize))> {
        let idx = self.tags.iter().position(|(n, _, _)| n == name)?;
        let (_, v, p) = self.tags.remove(idx);
        Some((v, p))
    }
    fn finish_tags(&self) -> Result<(), CompileError> {
        match self.tags.first() {
            Some((n, _, (l, c))) => Err(err(*l, *c, format!("{}: unknown tag :{n}", self.what))),
            None => Ok(()),
        }
    }
    fn positional(&self, n: usize) -> Result<(), CompileError> {
        if self.pos.len() != n {
            return Err(err(
                self.line,
                self.column,
                format!("{} takes {n} positional argument(s), {} given", self.what, self.pos.len()),
            ));
        }
        Ok(())
    }
    fn string(&self, i: usize, name: &str) -> Result<String, CompileError> {
        match self.pos.get(i) {
            Some(Arg::Strings { values, list: false, .. }) => Ok(values.concat()),
            Some(a) => {
                let (l, c) = a.pos();
                Err(err(l, c, format!("{}: the {name} must be a string", self.what)))
            }
            None => Err(err(self.line, self.column, format!("{}: missing {name}", self.what))),
        }
    }
    fn strings(&self, i: usize, name: &str) -> Result<Vec<String>, CompileError> {
        match self.pos.get(i) {
            Some(Arg::Strings { values, .. }) => Ok(values.clone()),
            Some(a) => {
                let (l, c) = a.pos();
                Err(err(l, c, format!("{}: the {name} must be a string list", self.what)))
            }
            None => Err(err(self.line, self.column, format!("{}: missing {name}", self.what))),
        }
    }
}

fn tag_string(what: &str, v: Option<&Arg>, p: (usize, usize)) -> Result<String, CompileError> {
    match v {
        Some(Arg::Strings { values, list: false, .. }) => Ok(values.concat()),
        _ => Err(err(p.0, p.1, format!("{what}: the tag needs a string"))),
    }
}

fn simple(ctx: &mut Ctx, n: &CommandNode) -> Result<Cmd, CompileError> {
    let name = n.name.as_str();
    if n.block.is_some() {
        if !matches!(
            name,
            "stop" | "keep" | "discard" | "fileinto" | "redirect" | "reject" | "ereject" | "set" | "vacation"
        ) {
            return Err(err(n.line, n.column, format!("unknown command '{name}'")));
        }
        return Err(err(n.line, n.column, format!("{name} takes no block")));
    }
    let known = matches!(
        name,
        "stop" | "keep" | "discard" | "fileinto" | "redirect" | "reject" | "ereject" | "set" | "vacation"
    );
    if !n.tests.is_empty() && known {
        // `fileinto "a" keep;`: most likely a missing ';' after the arguments.
        let (line, column) = n.args.last().map_or((n.line, n.column), Arg::pos);
        return Err(err(line, column, format!("missing ';' after {name} command (it takes no test)")));
    }
    let (l, c) = (n.line, n.column);
    let mut a = split_args(name, l, c, &n.args)?;
    let cmd = match name {
        "stop" | "keep" | "discard" => {
            a.finish_tags()?;
            a.positional(0)?;
            match name {
                "stop" => Cmd::Stop,
                "keep" => Cmd::Keep,
                _ => Cmd::Discard,
            }
        }
        "fileinto" | "redirect" => {
            if name == "fileinto" {
                ctx.need("fileinto", "fileinto", l, c)?;
            }
            let copy = match a.take_tag("copy") {
                Some((_, (tl, tc))) => {
                    ctx.need("copy", ":copy", tl, tc)?;
                    true
                }
                None => false,
            };
            a.finish_tags()?;
            a.positional(1)?;
            let s = a.string(0, if name == "fileinto" { "folder" } else { "address" })?;
            if name == "fileinto" {
                Cmd::FileInto { folder: s, copy }
            } else {
                if !ctx.has("variables") && !plausible_address(&s) {
                    return Err(err(l, c, format!("redirect: invalid address '{s}'")));
                }
                Cmd::Redirect { address: s, copy }
            }
        }
        "reject" | "ereject" => {
            ctx.need(name, name, l, c)?;
            a.finish_tags()?;
            a.positional(1)?;
            Cmd::Reject { text: a.string(0, "reason")?, extended: name == "ereject" }
        }
        "set" => {
            ctx.need("variables", "set", l, c)?;
            let mut modifiers: Vec<Modifier> = Vec::new();
            for (t, m) in [
                ("lower", Modifier::Lower),
                ("upper", Modifier::Upper),
                ("lowerfirst", Modifier::LowerFirst),
                ("upperfirst", Modifier::UpperFirst),
                ("quotewildcard", Modifier::QuoteWildcard),
                ("length", Modifier::Length),
            ] {
                if a.take_tag(t).is_some() {
                    if modifiers.iter().any(|x| precedence(*x) == precedence(m)) {
                        return Err(err(l, c, "set: two modifiers of the same precedence"));
                    }
                    modifiers.push(m);
                }
            }
            modifiers.sort_by_key(|m| std::cmp::Reverse(precedence(*m)));
            a.finish_tags()?;
            a.positional(2)?;
            let var = a.string(0, "variable name")?;
            if !valid_var_name(&var) {
                return Err(err(l, c, format!("set: invalid variable name '{var}'")));
            }
            Cmd::Set { name: var.to_ascii_lowercase(), value: a.string(1, "value")?, modifiers }
        }
        "vacation" => {
            ctx.need("vacation", "vacation", l, c)?;
            ctx.uses_content = true;
            let days = match a.take_tag("days") {
                Some((Some(Arg::Number { value, .. }), _)) => Some(*value),
                Some((_, p)) => return Err(err(p.0, p.1, "vacation: :days needs a number")),
                None => None,
            };
            let subject = a.take_tag("subject").map(|(v, p)| tag_string("vacation :subject", v, p)).transpose()?;
            let from = a.take_tag("from").map(|(v, p)| tag_string("vacation :from", v, p)).transpose()?;
            let handle = a.take_tag("handle").map(|(v, p)| tag_string("vacation :handle", v, p)).transpose()?;
            let addresses = match a.take_tag("addresses") {
                Some((Some(Arg::Strings { values, .. }), _)) => values.clone(),
                Some((_, p)) => return Err(err(p.0, p.1, "vacation: :addresses needs a string list")),
                None => Vec::new(),
            };
            let mime = a.take_tag("mime").is_some();
            a.finish_tags()?;
            a.positional(1)?;
            let reason = a.string(0, "reason")?;
            Cmd::Vacation(Box::new(VacationCmd { days, subject, from, addresses, mime, handle, reason }))
        }
        "if" | "elsif" | "else" | "require" => return Err(err(l, c, format!("misplaced {name}"))),
        _ => return Err(err(l, c, format!("unknown command '{name}'"))),
    };
    Ok(cmd)
}

fn precedence(m: Modifier) -> u8 {
    match m {
        Modifier::Lower | Modifier::Upper => 40,
        Modifier::LowerFirst | Modifier::UpperFirst => 30,
        Modifier::QuoteWildcard => 20,
        Modifier::Length => 10,
    }
}

fn valid_var_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// A constant redirect target must look like `local@domain`.
fn plausible_address(s: &str) -> bool {
    let s = s.trim();
    let s = s.strip_prefix('<').and_then(|x| x.strip_suffix('>')).unwrap_or(s);
    match s.rsplit_once('@') {
        Some((l, d)) => !l.is_empty() && !d.is_empty() && !s.contains(char::is_whitespace),
        None => false,
    }
}

fn test(ctx: &mut Ctx, t: &TestNode) -> Result<Test, CompileError> {
    let (l, c) = (t.line, t.column);
    let name = t.name.as_str();
    match name {
        "not" | "allof" | "anyof" => {
            if let Some(a) = t.args.first() {
                let (al, ac) = a.pos();
                return Err(err(al, ac, format!("{name} takes no arguments")));
            }
            if name == "not" {
                return match (t.tests.as_slice(), t.test_list) {
                    ([x], false) => Ok(Test::Not(Box::new(test(ctx, x)?))),
                    _ => Err(err(l, c, "not needs exactly one test")),
                };
            }
            if !t.test_list {
                return Err(err(l, c, format!("{name} needs a test list in parentheses")));
            }
            let ts = t.tests.iter().map(|x| test(ctx, x)).collect::<Result<Vec<_>, _>>()?;
            return Ok(if name == "allof" { Test::AllOf(ts) } else { Test::AnyOf(ts) });
        }
        _ => {}
    }
    let known = matches!(name, "true" | "false" | "exists" | "size" | "header" | "address" | "envelope" | "string");
    if !known {
        return Err(err(l, c, format!("unknown test '{name}'")));
    }
    if let Some(x) = t.tests.first() {
        return Err(err(x.line, x.column, format!("{name} takes no tests")));
    }
    let mut a = split_args(name, l, c, &t.args)?;
    match name {
        "true" | "false" => {
            a.finish_tags()?;
            a.positional(0)?;
            Ok(if name == "true" { Test::True } else { Test::False })
        }
        "exists" => {
            ctx.uses_content = true;
            a.finish_tags()?;
            a.positional(1)?;
            Ok(Test::Exists(a.strings(0, "header list")?))
        }
        "size" => {
            ctx.uses_content = true;
            let over = a.take_tag("over");
            let under = a.take_tag("under");
            a.finish_tags()?;
            let over = match (over, under) {
                (Some(_), None) => true,
                (None, Some(_)) => false,
                _ => return Err(err(l, c, "size needs exactly one of :over and :under")),
            };
            a.positional(1)?;
            match a.pos.first() {
                Some(Arg::Number { value, .. }) => Ok(Test::Size { over, limit: *value }),
                _ => Err(err(l, c, "size: the limit must be a number")),
            }
        }
        _ => {
            if name == "envelope" {
                ctx.need("envelope", "envelope", l, c)?;
            }
            if name == "string" {
                ctx.need("variables", "string", l, c)?;
            }
            let m = match_args(ctx, &mut a)?;
            let part = if matches!(name, "address" | "envelope") { address_part(ctx, &mut a)? } else { AddrPart::All };
            a.finish_tags()?;
            a.positional(2)?;
            let names = a.strings(0, if name == "string" { "source" } else { "header list" })?;
            let keys = a.strings(1, "key list")?;
            match name {
                "header" => {
                    ctx.uses_content = true;
                    Ok(Test::Header { names, keys, m })
                }
                "address" => {
                    ctx.uses_content = true;
                    for h in &names {
                        let dynamic = ctx.has("variables") && h.contains("${");
                        if !dynamic && !ADDRESS_HEADERS.contains(&h.to_ascii_lowercase().as_str()) {
                            return Err(err(
                                l,
                                c,
                                format!("specified header '{h}' is not allowed for the address test"),
                            ));
                        }
                    }
                    Ok(Test::Address { part, names, keys, m })
                }
                "envelope" => {
                    for p in &names {
                        if !ctx.has("variables") && !matches!(p.to_ascii_lowercase().as_str(), "from" | "to") {
                            return Err(err(l, c, format!("envelope: unsupported envelope part '{p}'")));
                        }
                    }
                    Ok(Test::Envelope { part, names, keys, m })
                }
                _ => Ok(Test::Str { sources: names, keys, m }),
            }
        }
    }
}

fn match_args(ctx: &Ctx, a: &mut Args) -> Result<Match, CompileError> {
    let what = a.what.to_string();
    let mut kinds = Vec::new();
    for t in ["is", "contains", "matches"] {
        if let Some((_, p)) = a.take_tag(t) {
            kinds.push((
                match t {
                    "is" => MatchKind::Is,
                    "contains" => MatchKind::Contains,
                    _ => MatchKind::Matches,
                },
                p,
            ));
        }
    }
    for t in ["count", "value"] {
        if let Some((v, p)) = a.take_tag(t) {
            ctx.need("relational", &format!(":{t}"), p.0, p.1)?;
            let rel = match v {
                Some(Arg::Strings { values, list: false, .. }) => match values.concat().to_ascii_lowercase().as_str() {
                    "gt" => Rel::Gt,
                    "ge" => Rel::Ge,
                    "lt" => Rel::Lt,
                    "le" => Rel::Le,
                    "eq" => Rel::Eq,
                    "ne" => Rel::Ne,
                    other => {
                        return Err(err(p.0, p.1, format!("{what}: invalid relational operator '{other}'")));
                    }
                },
                _ => return Err(err(p.0, p.1, format!("{what}: :{t} needs a relational operator string"))),
            };
            kinds.push((if t == "count" { MatchKind::Count(rel) } else { MatchKind::Value(rel) }, p));
        }
    }
    if kinds.len() > 1 {
        let p = kinds[1].1;
        return Err(err(p.0, p.1, format!("{what}: more than one match type")));
    }
    let kind = kinds.first().map_or(MatchKind::Is, |k| k.0);
    let cmp = match a.take_tag("comparator") {
        Some((Some(Arg::Strings { values, list: false, .. }), p)) => {
            match values.concat().to_ascii_lowercase().as_str() {
                "i;octet" => Comparator::Octet,
                "i;ascii-casemap" => Comparator::Casemap,
                "i;ascii-numeric" => {
                    ctx.need("comparator-i;ascii-numeric", "comparator i;ascii-numeric", p.0, p.1)?;
                    Comparator::Numeric
                }
                other => return Err(err(p.0, p.1, format!("{what}: unknown comparator '{other}'"))),
            }
        }
        Some((_, p)) => return Err(err(p.0, p.1, format!("{what}: :comparator needs a string"))),
        None => Comparator::Casemap,
    };
    if cmp == Comparator::Numeric && matches!(kind, MatchKind::Contains | MatchKind::Matches) {
        return Err(err(
            a.line,
            a.column,
            format!("{what}: comparator i;ascii-numeric does not support this match type"),
        ));
    }
    Ok(Match { kind, cmp })
}

fn address_part(ctx: &Ctx, a: &mut Args) -> Result<AddrPart, CompileError> {
    let mut parts = Vec::new();
    for (t, p) in [
        ("all", AddrPart::All),
        ("localpart", AddrPart::Local),
        ("domain", AddrPart::Domain),
        ("user", AddrPart::User),
        ("detail", AddrPart::Detail),
    ] {
        if let Some((_, pos)) = a.take_tag(t) {
            if matches!(p, AddrPart::User | AddrPart::Detail) {
                ctx.need("subaddress", &format!(":{t}"), pos.0, pos.1)?;
            }
            parts.push((p, pos));
        }
    }
    if parts.len() > 1 {
        let p = parts[1].1;
        return Err(err(p.0, p.1, format!("{}: more than one address part", a.what)));
    }
    Ok(parts.first().map_or(AddrPart::All, |p| p.0))
}
