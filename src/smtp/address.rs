//! Envelope syntax: the RFC 5321 §4.1.2 Path and Mailbox grammar (with the
//! RFC 6531 UTF-8 extension) and the ESMTP parameters of MAIL and RCPT.
//!
//! Place in the pipeline: called by the SMTP server machine
//! (`smtp::server`) on the argument of MAIL FROM and RCPT TO; the typed
//! values it returns travel on to routing, verification and the queue.
//! Parsers never panic and never allocate more than their (already bounded)
//! input.

use std::fmt;

/// Longest local part, RFC 5321 §4.5.3.1.1.
pub const LOCAL_PART_BYTES_MAX: usize = 64;
/// Longest domain, RFC 5321 §4.5.3.1.2.
pub const DOMAIN_BYTES_MAX: usize = 255;
/// Longest path including the angle brackets, RFC 5321 §4.5.3.1.3.
pub const PATH_BYTES_MAX: usize = 256;
/// Longest label of a domain name (RFC 1035 §2.3.4).
const LABEL_BYTES_MAX: usize = 63;

/// A mailbox. The local part is kept in its canonical wire form: a quoted
/// string whose content is a valid dot-string is stored unquoted (RFC 5321
/// §4.1.2 makes the two equivalent); otherwise it stays quoted.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Address {
    pub local_part: String,
    /// `None` only for the special recipient `<postmaster>` (RFC 5321 §4.5.1).
    pub domain: Option<String>,
}

impl Address {
    /// True for `<postmaster>` without a domain.
    pub fn is_bare_postmaster(&self) -> bool {
        self.domain.is_none()
    }

    /// True if any part uses characters outside ASCII.
    pub fn is_utf8(&self) -> bool {
        !self.local_part.is_ascii() || self.domain.as_deref().is_some_and(|d| !d.is_ascii())
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.domain {
            Some(d) => write!(f, "{}@{}", self.local_part, d),
            None => f.write_str(&self.local_part),
        }
    }
}

/// The argument of MAIL FROM: a mailbox, or the null path `<>` used by
/// bounces (RFC 5321 §4.5.5).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ReversePath {
    Null,
    Path(Address),
}

impl fmt::Display for ReversePath {
    /// The bracketed form, `<>` or `<local@domain>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => f.write_str("<>"),
            ReversePath::Path(a) => write!(f, "<{}>", a),
        }
    }
}

/// Why a path was refused; the server turns each into a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressError {
    /// Not RFC 5321 syntax; the text says what is wrong.
    Syntax(&'static str),
    LocalPartTooLong,
    DomainTooLong,
    PathTooLong,
    /// Non-ASCII characters in a transaction that did not say SMTPUTF8.
    NonAscii,
}

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressError::Syntax(why) => f.write_str(why),
            AddressError::LocalPartTooLong => f.write_str("local part longer than 64 octets"),
            AddressError::DomainTooLong => f.write_str("domain longer than 255 octets"),
            AddressError::PathTooLong => f.write_str("path longer than 256 octets"),
            AddressError::NonAscii => f.write_str("non-ASCII address requires SMTPUTF8"),
        }
    }
}

/// Parses a reverse path at the start of `s` (`<>` or a Path). Returns the
/// path and the rest of `s` after the closing `>`.
pub fn parse_reverse_path(s: &str, utf8: bool) -> Result<(ReversePath, &str), AddressError> {
    if let Some(rest) = s.strip_prefix("<>") {
        return Ok((ReversePath::Null, rest));
    }
    let (a, rest) = parse_path(s, utf8)?;
    Ok((ReversePath::Path(a), rest))
}

/// Parses a forward path at the start of `s`: a Path, or the special
/// `<postmaster>` (any case). Returns the address and the rest of `s`.
pub fn parse_forward_path(s: &str, utf8: bool) -> Result<(Address, &str), AddressError> {
    let pm = "<postmaster>";
    if s.len() >= pm.len() && s.is_char_boundary(pm.len()) && s[..pm.len()].eq_ignore_ascii_case(pm)
    {
        let address = Address {
            local_part: s[1..pm.len() - 1].to_string(),
            domain: None,
        };
        return Ok((address, &s[pm.len()..]));
    }
    if s.starts_with("<>") {
        return Err(AddressError::Syntax("null path is not a valid recipient"));
    }
    parse_path(s, utf8)
}

/// Path = "<" [ A-d-l ":" ] Mailbox ">" (the source route is parsed and
/// dropped, RFC 5321 §4.1.2 and Appendix C).
fn parse_path(s: &str, utf8: bool) -> Result<(Address, &str), AddressError> {
    let Some(inner_start) = s.strip_prefix('<') else {
        return Err(AddressError::Syntax("address must be in angle brackets"));
    };
    let close =
        find_path_end(inner_start).ok_or(AddressError::Syntax("missing closing angle bracket"))?;
    if close + 2 > PATH_BYTES_MAX {
        return Err(AddressError::PathTooLong);
    }
    let inner = &inner_start[..close];
    let rest = &inner_start[close + 1..];
    if !utf8 && !inner.is_ascii() {
        return Err(AddressError::NonAscii);
    }
    let mailbox = skip_source_route(inner, utf8)?;
    Ok((parse_mailbox(mailbox, utf8)?, rest))
}

/// Index of the `>` that closes the path, skipping quoted strings.
fn find_path_end(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut quoted = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'>' if !quoted => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// A-d-l = At-domain *( "," At-domain ) ":"; returns what follows it.
fn skip_source_route(s: &str, utf8: bool) -> Result<&str, AddressError> {
    if !s.starts_with('@') {
        return Ok(s);
    }
    let colon = s
        .find(':')
        .ok_or(AddressError::Syntax("source route without colon"))?;
    for hop in s[..colon].split(',') {
        let domain = hop
            .strip_prefix('@')
            .ok_or(AddressError::Syntax("bad source route"))?;
        check_domain(domain, utf8)?;
    }
    Ok(&s[colon + 1..])
}

/// Mailbox = Local-part "@" ( Domain / address-literal ).
pub fn parse_mailbox(s: &str, utf8: bool) -> Result<Address, AddressError> {
    if !utf8 && !s.is_ascii() {
        return Err(AddressError::NonAscii);
    }
    let at = find_local_part_end(s)?;
    let (local_wire, domain) = (&s[..at], &s[at + 1..]);
    if local_wire.len() > LOCAL_PART_BYTES_MAX {
        return Err(AddressError::LocalPartTooLong);
    }
    let local_part = canonical_local_part(local_wire, utf8)?;
    if domain.starts_with('[') {
        check_address_literal(domain)?;
    } else {
        check_domain(domain, utf8)?;
    }
    Ok(Address {
        local_part,
        domain: Some(domain.to_string()),
    })
}

/// Index of the `@` that ends the local part.
fn find_local_part_end(s: &str) -> Result<usize, AddressError> {
    if !s.starts_with('"') {
        return s.find('@').ok_or(AddressError::Syntax("missing @domain"));
    }
    let bytes = s.as_bytes();
    let mut i = 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => {
                return match bytes.get(i + 1) {
                    Some(b'@') => Ok(i + 1),
                    _ => Err(AddressError::Syntax(
                        "quoted local part must be followed by @domain",
                    )),
                }
            }
            _ => i += 1,
        }
    }
    Err(AddressError::Syntax("unterminated quoted string"))
}

/// Validates a Dot-string or Quoted-string local part and returns its
/// canonical form.
fn canonical_local_part(wire: &str, utf8: bool) -> Result<String, AddressError> {
    if wire.is_empty() {
        return Err(AddressError::Syntax("empty local part"));
    }
    if !wire.starts_with('"') {
        if !is_dot_string(wire, utf8) {
            return Err(AddressError::Syntax("invalid character in local part"));
        }
        return Ok(wire.to_string());
    }
    let content = unquote(wire, utf8)?;
    if is_dot_string(&content, utf8) {
        return Ok(content);
    }
    let mut quoted = String::with_capacity(content.len() + 2);
    quoted.push('"');
    for c in content.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    Ok(quoted)
}

/// Quoted-string = DQUOTE *QcontentSMTP DQUOTE; returns the content with
/// quoted pairs resolved.
fn unquote(wire: &str, utf8: bool) -> Result<String, AddressError> {
    let inner = wire
        .strip_prefix('"')
        .and_then(|w| w.strip_suffix('"'))
        .ok_or(AddressError::Syntax("bad quoted string"))?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(p) if (' '..='~').contains(&p) => out.push(p),
                _ => return Err(AddressError::Syntax("bad quoted pair")),
            }
        } else if is_qtext(c, utf8) {
            out.push(c);
        } else {
            return Err(AddressError::Syntax("invalid character in quoted string"));
        }
    }
    Ok(out)
}

/// qtextSMTP = %d32-33 / %d35-91 / %d93-126 (and UTF-8 under RFC 6531).
fn is_qtext(c: char, utf8: bool) -> bool {
    matches!(c, ' '..='!' | '#'..='[' | ']'..='~') || (utf8 && !c.is_ascii() && !c.is_control())
}

/// atext (RFC 5322 §3.2.3), and UTF-8 under RFC 6531.
fn is_atext(c: char, utf8: bool) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~".contains(c)
        || (utf8 && !c.is_ascii() && !c.is_control() && !c.is_whitespace())
}

/// Dot-string = Atom *("." Atom).
fn is_dot_string(s: &str, utf8: bool) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(|c| is_atext(c, utf8)))
}

/// Domain = sub-domain *("." sub-domain); sub-domain = Let-dig [Ldh-str]
/// (under RFC 6531 a sub-domain may be a U-label: non-ASCII letters count as
/// Let-dig here; IDNA validity is the resolver's business).
pub fn check_domain(d: &str, utf8: bool) -> Result<(), AddressError> {
    if d.len() > DOMAIN_BYTES_MAX {
        return Err(AddressError::DomainTooLong);
    }
    if d.is_empty() {
        return Err(AddressError::Syntax("empty domain"));
    }
    if !utf8 && !d.is_ascii() {
        return Err(AddressError::NonAscii);
    }
    let let_dig =
        |c: char| c.is_ascii_alphanumeric() || (utf8 && !c.is_ascii() && c.is_alphanumeric());
    for label in d.split('.') {
        let first_last_ok =
            label.chars().next().is_some_and(let_dig) && label.chars().last().is_some_and(let_dig);
        let body_ok = label
            .chars()
            .all(|c| let_dig(c) || c == '-' || (utf8 && !c.is_ascii() && !c.is_control()));
        if !first_last_ok || !body_ok || label.len() > LABEL_BYTES_MAX {
            return Err(AddressError::Syntax("invalid domain name"));
        }
    }
    Ok(())
}

/// address-literal = "[" ( IPv4 / "IPv6:" IPv6 / General-address-literal ) "]".
pub fn check_address_literal(s: &str) -> Result<(), AddressError> {
    if s.len() > DOMAIN_BYTES_MAX {
        return Err(AddressError::DomainTooLong);
    }
    let inner = s
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .ok_or(AddressError::Syntax("bad address literal"))?;
    if inner.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok(());
    }
    if inner
        .get(..5)
        .is_some_and(|tag| tag.eq_ignore_ascii_case("IPv6:"))
    {
        return match inner[5..].parse::<std::net::Ipv6Addr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(AddressError::Syntax("bad IPv6 address literal")),
        };
    }
    // General-address-literal = Standardized-tag ":" 1*dcontent
    let (tag, content) = inner
        .split_once(':')
        .ok_or(AddressError::Syntax("bad address literal"))?;
    let tag_ok = !tag.is_empty()
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !tag.ends_with('-')
        && !tag.eq_ignore_ascii_case("IPv6");
    let content_ok =
        !content.is_empty() && content.bytes().all(|b| matches!(b, 33..=90 | 94..=126));
    if tag_ok && content_ok {
        Ok(())
    } else {
        Err(AddressError::Syntax("bad address literal"))
    }
}

/// The BODY parameter of MAIL (RFC 6152, RFC 3030).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyType {
    SevenBit,
    EightBitMime,
    /// Only with BDAT (RFC 3030 §3); DATA is refused in such a transaction.
    BinaryMime,
}

/// ESMTP parameters of MAIL FROM that the server understands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailParams {
    /// SIZE=n (RFC 1870): the client's estimate of the message size.
    pub size: Option<u64>,
    /// BODY=... (RFC 6152, RFC 3030); `None` when not given.
    pub body: Option<BodyType>,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// `XREPLICA=<queue id>`: the message is a replica of the one the
    /// client queued under this id (ringpost's replication, between peers
    /// only; the server refuses it from anyone else).
    pub replica_of: Option<Box<str>>,
    /// RET= and ENVID= (RFC 3461).
    pub dsn: super::dsn::MailDsn,
}

impl MailParams {
    /// True if the client declared content that is not 7-bit.
    pub fn body_8bit(&self) -> bool {
        matches!(
            self.body,
            Some(BodyType::EightBitMime | BodyType::BinaryMime)
        )
    }
}

/// ESMTP parameters of RCPT TO: those of the DSN extension.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RcptParams {
    /// NOTIFY= and ORCPT= (RFC 3461).
    pub dsn: super::dsn::RcptDsn,
}

/// Why a parameter list was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParamError {
    /// Not `keyword[=value]` syntax, a repeated keyword or a bad value.
    Syntax(&'static str),
    /// A keyword the server does not implement (555 5.5.4).
    Unsupported(String),
    /// SIZE larger than the server accepts (552 5.3.4).
    TooBig { size: u64 },
}

/// Splits `SP`-separated `keyword[=value]` pairs (RFC 5321 §4.1.2
/// Mail-parameters). Returns them with the keyword upper-cased.
fn split_params(s: &str) -> Result<Vec<(String, Option<&str>)>, ParamError> {
    let mut out = Vec::new();
    for item in s.split(' ').filter(|x| !x.is_empty()) {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        };
        let key_ok = key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !key_ok {
            return Err(ParamError::Syntax("bad parameter keyword"));
        }
        if value.is_some_and(|v| v.is_empty() || v.chars().any(|c| c == '=' || c.is_control())) {
            return Err(ParamError::Syntax("bad parameter value"));
        }
        let key = key.to_ascii_uppercase();
        if out.iter().any(|(k, _)| *k == key) {
            return Err(ParamError::Syntax("parameter given twice"));
        }
        out.push((key, value));
    }
    Ok(out)
}

/// Parses MAIL FROM parameters against the server's limits.
pub fn parse_mail_params(s: &str, size_bytes_max: u64) -> Result<MailParams, ParamError> {
    let mut p = MailParams::default();
    for (key, value) in split_params(s)? {
        match (key.as_str(), value) {
            ("SIZE", Some(v)) => {
                if v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ParamError::Syntax("bad SIZE value"));
                }
                let size = v
                    .parse::<u64>()
                    .map_err(|_| ParamError::Syntax("bad SIZE value"))?;
                if size > size_bytes_max {
                    return Err(ParamError::TooBig { size });
                }
                p.size = Some(size);
            }
            ("BODY", Some(v)) => {
                p.body = Some(match v.to_ascii_uppercase().as_str() {
                    "7BIT" => BodyType::SevenBit,
                    "8BITMIME" => BodyType::EightBitMime,
                    "BINARYMIME" => BodyType::BinaryMime,
                    _ => return Err(ParamError::Unsupported(format!("BODY={}", v))),
                });
            }
            ("SMTPUTF8", None) => p.smtputf8 = true,
            ("XREPLICA", Some(v)) => {
                let id = parse_queue_id_param(v).ok_or(ParamError::Syntax("bad XREPLICA value"))?;
                p.replica_of = Some(id.into());
            }
            ("SIZE" | "BODY" | "XREPLICA", None) | ("SMTPUTF8", Some(_)) => {
                return Err(ParamError::Syntax("bad parameter value"));
            }
            _ if super::dsn::mail_param(&key, value, &mut p.dsn)? => {}
            _ => return Err(ParamError::Unsupported(key)),
        }
    }
    Ok(p)
}

/// A queue id in a replication command or parameter: 16 upper-case hex
/// digits, as ringpost makes them.
pub fn parse_queue_id_param(text: &str) -> Option<&str> {
    let hex = text.len() == 16 && text.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
    hex.then_some(text)
}

/// Parses RCPT TO parameters: NOTIFY and ORCPT (RFC 3461); any other is
/// refused.
pub fn parse_rcpt_params(s: &str) -> Result<RcptParams, ParamError> {
    let mut p = RcptParams::default();
    for (key, value) in split_params(s)? {
        if !super::dsn::rcpt_param(&key, value, &mut p.dsn)? {
            return Err(ParamError::Unsupported(key));
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(s: &str) -> Result<Address, AddressError> {
        parse_forward_path(s, false).map(|(a, _)| a)
    }

    #[test]
    fn plain_mailbox() {
        let a = fwd("<user@example.com>").unwrap();
        assert_eq!(a.local_part, "user");
        assert_eq!(a.domain.as_deref(), Some("example.com"));
        assert_eq!(a.to_string(), "user@example.com");
    }

    #[test]
    fn quoted_local_part_canonical() {
        assert_eq!(fwd("<\"user\"@example.com>").unwrap().local_part, "user");
        assert_eq!(
            fwd("<\"john doe\"@example.com>").unwrap().local_part,
            "\"john doe\""
        );
        assert_eq!(
            fwd("<\"a\\\"b\"@example.com>").unwrap().local_part,
            "\"a\\\"b\""
        );
        assert_eq!(fwd("<\"a>b\"@example.com>").unwrap().local_part, "\"a>b\"");
    }

    #[test]
    fn address_literals() {
        assert!(fwd("<a@[192.0.2.1]>").is_ok());
        assert!(fwd("<a@[IPv6:2001:db8::1]>").is_ok());
        assert!(fwd("<a@[300.0.2.1]>").is_err());
        assert!(fwd("<a@[IPv6:zz::1]>").is_err());
        assert!(fwd("<a@[x-tag:stuff]>").is_ok());
    }

    #[test]
    fn source_route_ignored() {
        let a = fwd("<@relay1.example,@relay2.example:user@example.com>").unwrap();
        assert_eq!(a.to_string(), "user@example.com");
        assert!(fwd("<@relay1.example user@example.com>").is_err());
    }

    #[test]
    fn bad_syntax() {
        for s in [
            "user@example.com",
            "<user@example.com",
            "<user>",
            "<user@>",
            "<@example.com>",
            "<us er@example.com>",
            "<user..x@example.com>",
            "<.user@example.com>",
            "<user@-example.com>",
            "<user@example..com>",
            "<user@exa_mple.com>",
            "<\"unterminated@example.com>",
        ] {
            assert!(matches!(fwd(s), Err(AddressError::Syntax(_))), "{s}");
        }
    }

    #[test]
    fn limits() {
        let local = "a".repeat(64);
        assert!(fwd(&format!("<{local}@example.com>")).is_ok());
        let local = "a".repeat(65);
        assert_eq!(
            fwd(&format!("<{local}@example.com>")),
            Err(AddressError::LocalPartTooLong)
        );
        let label = "b".repeat(63);
        let domain = [label.as_str(); 4].join(".");
        assert_eq!(domain.len(), 255);
        assert_eq!(
            parse_mailbox(&format!("a@{domain}"), false).map(|_| ()),
            Ok(())
        );
        let domain = format!("{domain}x");
        assert_eq!(
            parse_mailbox(&format!("a@{domain}"), false),
            Err(AddressError::DomainTooLong)
        );
    }

    #[test]
    fn utf8_needs_smtputf8() {
        assert_eq!(fwd("<jösé@example.com>"), Err(AddressError::NonAscii));
        let (a, _) = parse_forward_path("<jösé@exämple.com>", true).unwrap();
        assert_eq!(a.to_string(), "jösé@exämple.com");
        assert!(a.is_utf8());
    }

    #[test]
    fn postmaster_and_null() {
        let a = fwd("<PostMaster>").unwrap();
        assert!(a.is_bare_postmaster());
        assert!(fwd("<>").is_err());
        let (r, rest) = parse_reverse_path("<> SIZE=10", false).unwrap();
        assert_eq!(r, ReversePath::Null);
        assert_eq!(rest, " SIZE=10");
    }

    #[test]
    fn mail_params() {
        let p = parse_mail_params("SIZE=100 BODY=8bitmime SMTPUTF8", 1000).unwrap();
        assert_eq!(
            p,
            MailParams {
                size: Some(100),
                body: Some(BodyType::EightBitMime),
                smtputf8: true,
                replica_of: None,
                dsn: Default::default(),
            }
        );
        let p = parse_mail_params("RET=HDRS ENVID=x+2By SIZE=1", 1000).unwrap();
        assert_eq!(p.dsn.wire(), " RET=HDRS ENVID=x+2By");
        assert!(matches!(parse_mail_params("RET=NONE", 1000), Err(ParamError::Syntax(_))));
        let p = parse_mail_params("XREPLICA=0006201A2B3C4D01", 1000).unwrap();
        assert_eq!(p.replica_of.as_deref(), Some("0006201A2B3C4D01"));
        assert!(parse_mail_params("XREPLICA=0006201a2b3c4d01", 1000).is_err());
        assert!(parse_mail_params("XREPLICA", 1000).is_err());
        assert_eq!(
            parse_mail_params("SIZE=1001", 1000),
            Err(ParamError::TooBig { size: 1001 })
        );
        assert!(matches!(
            parse_mail_params("SIZE=x", 1000),
            Err(ParamError::Syntax(_))
        ));
        assert!(matches!(
            parse_mail_params("SIZE=99999999999999999999999", 1000),
            Err(ParamError::Syntax(_))
        ));
        assert!(matches!(
            parse_mail_params("FOO=1", 1000),
            Err(ParamError::Unsupported(_))
        ));
        assert!(matches!(
            parse_mail_params("BODY=9BIT", 1000),
            Err(ParamError::Unsupported(_))
        ));
        assert!(matches!(
            parse_mail_params("SIZE=1 SIZE=2", 1000),
            Err(ParamError::Syntax(_))
        ));
        assert!(matches!(
            parse_rcpt_params("XNOTIFY=NEVER"),
            Err(ParamError::Unsupported(_))
        ));
        assert!(parse_rcpt_params("NOTIFY=NEVER").is_ok());
        assert_eq!(parse_rcpt_params(""), Ok(RcptParams::default()));
    }

    #[test]
    fn random_paths_never_panic() {
        let alphabet: Vec<char> = "<>@.:,[]\"\\ aZ09-_é€IPv6".chars().collect();
        let mut x: u64 = 0x1234_5678_9abc_def1;
        for _ in 0..20_000 {
            let mut s = String::new();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 40) as usize;
            for k in 0..len {
                s.push(alphabet[((x >> (k % 50)) as usize + k * 7) % alphabet.len()]);
            }
            for utf8 in [false, true] {
                let _ = parse_forward_path(&s, utf8);
                let _ = parse_reverse_path(&s, utf8);
                let _ = parse_mailbox(&s, utf8);
            }
            let _ = parse_mail_params(&s, 1000);
        }
    }
}
