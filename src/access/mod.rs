//! Access tables in Postfix's access(5) format: `policy.client_access`,
//! `policy.helo_access`, `policy.sender_access` and
//! `policy.recipient_access`, each a text table or a cdb file (a name
//! ending in `.cdb`, built by `ringpost makemap`), read through the table
//! code of `crate::route::table`.
//!
//! Place in the pipeline: opened at start-up and at SIGHUP (a broken table
//! keeps the tables in use), asked by the session driver at RCPT, before the
//! per-client recipient rate and the relay and routing checks (like
//! Postfix's `smtpd_delay_reject = yes`: a client or HELO refusal is given
//! at RCPT, where the log names the recipient, and a client the table
//! refuses can still say QUIT politely). The tables are asked in the order
//! client, HELO, sender, recipient; the first result that is not `DUNNO`
//! decides. `OK` ends the access checks (the relay and routing checks still
//! run: `OK` never opens the relay); `REJECT` and `DEFER` refuse the
//! recipient (554 5.7.1 and 450 4.7.1, with the table's text or "Access
//! denied"); a `4NN`/`5NN` code refuses with that code and text; `DISCARD`
//! accepts the recipient and drops the whole message after its final dot
//! with a 250.
//!
//! Keys: a client by its address (`192.0.2.1`, `2001:db8::1`), then its
//! networks by dropping octets (`192.0.2`, `192.0`, `192`) or IPv6 groups
//! (`2001:db8:0:0:0:0:0`, …, `2001`), then its reverse name and that name's
//! parent domains (`host.example.com`, `example.com`, `.example.com`, …)
//! when a name is known. A HELO name and its parent domains. A sender or
//! recipient by its address (`user@example.com`), its domain and parent
//! domains, then its local part (`user@`); the null sender is `<>`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};

use crate::config::Policy;
use crate::route::table::{parse_text, CdbTable};
use crate::smtp::reply::{Enhanced, Reply};

/// Longest text kept from a table's result (the rest is cut).
const RESULT_TEXT_BYTES_MAX: usize = 200;

/// What an access table says about a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Passes the access checks (not the relay or routing checks).
    Ok,
    /// 554 5.7.1, with this text if given.
    Reject(Option<String>),
    /// 450 4.7.1, with this text if given.
    Defer(Option<String>),
    /// Accept, then drop the message after its final dot.
    Discard,
    /// A 4NN or 5NN reply as the table gives it.
    Code(u16, Option<Enhanced>, String),
    /// Go on with the next key or table.
    Dunno,
}

/// Parses an access(5) result (case-insensitive words).
pub fn parse_action(value: &str) -> Result<Action, String> {
    let value = value.trim();
    let (word, rest) = match value.find([' ', '\t']) {
        Some(space) => (&value[..space], value[space..].trim()),
        None => (value, ""),
    };
    let text = || (!rest.is_empty()).then(|| bounded(rest));
    match word.to_ascii_uppercase().as_str() {
        "OK" => Ok(Action::Ok),
        "DUNNO" => Ok(Action::Dunno),
        "REJECT" => Ok(Action::Reject(text())),
        "DEFER" => Ok(Action::Defer(text())),
        "DISCARD" => Ok(Action::Discard),
        "" => Err("empty result".into()),
        code if code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()) => {
            let number: u16 = code.parse().expect("three digits");
            if !(400..600).contains(&number) {
                return Err(format!("{code}: only 4NN and 5NN codes"));
            }
            let (enhanced, text) = match rest.split_once(' ').map_or((rest, ""), |(a, b)| (a, b)) {
                (first, more) => match parse_enhanced(first) {
                    Some(e) if e.0 as u16 == number / 100 => (Some(e), more.trim()),
                    Some(_) => return Err(format!("{value}: the enhanced code's class differs from {code}")),
                    None => (None, rest),
                },
            };
            let text = if text.is_empty() { "Access denied".to_string() } else { bounded(text) };
            Ok(Action::Code(number, enhanced, text))
        }
        other => Err(format!("{other}: not an access result (OK, REJECT, DEFER, DISCARD, DUNNO, 4NN or 5NN text)")),
    }
}

fn parse_enhanced(text: &str) -> Option<Enhanced> {
    let mut parts = text.split('.');
    let class: u8 = parts.next()?.parse().ok()?;
    let subject: u16 = parts.next()?.parse().ok()?;
    let detail: u16 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !(class == 4 || class == 5) || subject > 999 || detail > 999 {
        return None;
    }
    Some(Enhanced(class, subject, detail))
}

/// Text without control characters, at most [`RESULT_TEXT_BYTES_MAX`].
fn bounded(text: &str) -> String {
    let mut out: String = text.chars().filter(|c| !c.is_control()).collect();
    if out.len() > RESULT_TEXT_BYTES_MAX {
        let mut end = RESULT_TEXT_BYTES_MAX;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

/// One access table.
pub enum Table {
    /// A text table, parsed and checked when opened.
    Text(HashMap<String, Action>),
    /// A cdb file; a result is parsed when looked up.
    Cdb(CdbTable),
}

impl Table {
    pub fn open(path: &Path) -> Result<Table, String> {
        if path.extension().is_some_and(|e| e == "cdb") {
            return Ok(Table::Cdb(CdbTable::open(path)?));
        }
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Table::from_text(path, &text)
    }

    pub fn from_text(path: &Path, text: &str) -> Result<Table, String> {
        let mut map = HashMap::new();
        for (key, value) in parse_text(path, text)? {
            let action = parse_action(&value).map_err(|e| format!("{}: key {key}: {e}", path.display()))?;
            map.insert(key, action);
        }
        Ok(Table::Text(map))
    }

    /// The result for `key` (lower case). A cdb result that does not parse
    /// is a temporary refusal: the table is broken, not the client.
    pub fn get(&self, key: &str) -> Option<Action> {
        match self {
            Table::Text(map) => map.get(key).cloned(),
            Table::Cdb(cdb) => match cdb.get(key) {
                Ok(None) => None,
                Ok(Some(value)) => Some(parse_action(&value).unwrap_or_else(|e| {
                    crate::log::event("access_table_error", &[("key", &key), ("error", &e)]);
                    Action::Code(451, Some(Enhanced(4, 3, 0)), "Server configuration error".into())
                })),
                Err(e) => {
                    crate::log::event("access_table_error", &[("key", &key), ("error", &format!("{e:?}"))]);
                    Some(Action::Code(451, Some(Enhanced(4, 3, 0)), "Server configuration error".into()))
                }
            },
        }
    }

    /// The first result that is not DUNNO among `keys`, in order.
    fn first(&self, keys: &[String]) -> Option<Action> {
        keys.iter().filter_map(|key| self.get(key)).find(|action| *action != Action::Dunno)
    }
}

/// The four tables of `[policy]`, each optional.
#[derive(Default)]
pub struct Access {
    pub client: Option<Table>,
    pub helo: Option<Table>,
    pub sender: Option<Table>,
    pub recipient: Option<Table>,
}

/// What the access checks decided for one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Go on with the other checks.
    Continue,
    /// Accept the recipient; drop the message at its final dot.
    Discard,
    /// Refuse the recipient with this reply.
    Refuse(Reply),
}

/// Which table decided, for the reply's text and the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    Client,
    Helo,
    Sender,
    Recipient,
}

impl Which {
    fn subject(self) -> &'static str {
        match self {
            Which::Client => "Client host rejected",
            Which::Helo => "Helo command rejected",
            Which::Sender => "Sender address rejected",
            Which::Recipient => "Recipient address rejected",
        }
    }
}

impl Access {
    pub fn open(policy: &Policy) -> Result<Access, String> {
        let open = |path: &Option<std::path::PathBuf>| path.as_deref().map(Table::open).transpose();
        Ok(Access {
            client: open(&policy.client_access)?,
            helo: open(&policy.helo_access)?,
            sender: open(&policy.sender_access)?,
            recipient: open(&policy.recipient_access)?,
        })
    }

    /// Whether `policy.client_access` is in use (then the client's
    /// forward-confirmed reverse name is looked up when it connects).
    pub fn has_client_table(&self) -> bool {
        self.client.is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.client.is_none() && self.helo.is_none() && self.sender.is_none() && self.recipient.is_none()
    }

    /// Decides one RCPT: the client at `ip` (reverse name `client_name` if
    /// known), its HELO name, the transaction's sender (`""` for the null
    /// sender) and the recipient. The second value names the table that
    /// refused.
    pub fn check(
        &self,
        ip: IpAddr,
        client_name: Option<&str>,
        helo: Option<&str>,
        sender: &str,
        recipient: &str,
    ) -> (Decision, Option<Which>) {
        let tables: [(Which, Option<&Table>); 4] = [
            (Which::Client, self.client.as_ref()),
            (Which::Helo, self.helo.as_ref()),
            (Which::Sender, self.sender.as_ref()),
            (Which::Recipient, self.recipient.as_ref()),
        ];
        for (which, table) in tables {
            let Some(table) = table else { continue };
            let keys = match which {
                Which::Client => client_keys(ip, client_name),
                Which::Helo => match helo {
                    Some(name) => domain_keys(&name.to_lowercase(), false),
                    None => Vec::new(),
                },
                Which::Sender => address_keys(sender),
                Which::Recipient => address_keys(recipient),
            };
            let Some(action) = table.first(&keys) else { continue };
            let subject = which.subject();
            let decision = match action {
                Action::Dunno => continue,
                Action::Ok => return (Decision::Continue, None),
                Action::Discard => return (Decision::Discard, None),
                Action::Reject(text) => Reply::new(
                    554,
                    Enhanced(5, 7, 1),
                    format!("{subject}: {}", text.as_deref().unwrap_or("Access denied")),
                ),
                Action::Defer(text) => Reply::new(
                    450,
                    Enhanced(4, 7, 1),
                    format!("{subject}: {}", text.as_deref().unwrap_or("Access denied")),
                ),
                Action::Code(code, enhanced, text) => {
                    let enhanced = enhanced.unwrap_or(Enhanced((code / 100) as u8, 7, 1));
                    Reply::new(code, enhanced, format!("{subject}: {text}"))
                }
            };
            return (Decision::Refuse(decision), Some(which));
        }
        (Decision::Continue, None)
    }
}

/// The tables in use, shared by every shard; replaced whole at SIGHUP.
static LIVE: RwLock<Option<Arc<Access>>> = RwLock::new(None);

/// Makes `access` the tables every later RCPT is checked against.
pub fn install(access: Arc<Access>) {
    *LIVE.write().expect("access tables lock") = Some(access);
}

/// The tables in use; `None` before `install` (tests, tools): no tables.
pub fn current() -> Option<Arc<Access>> {
    LIVE.read().expect("access tables lock").clone().filter(|access| !access.is_empty())
}

/// A client's keys: address, networks, reverse name and parent domains.
pub fn client_keys(ip: IpAddr, name: Option<&str>) -> Vec<String> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let mut keys = vec![ip.to_string()];
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            keys.push(format!("{}.{}.{}", o[0], o[1], o[2]));
            keys.push(format!("{}.{}", o[0], o[1]));
            keys.push(format!("{}", o[0]));
        }
        IpAddr::V6(v6) => {
            let groups: Vec<String> = v6.segments().iter().map(|g| format!("{g:x}")).collect();
            for len in (1..groups.len()).rev() {
                keys.push(groups[..len].join(":"));
            }
        }
    }
    if let Some(name) = name {
        keys.extend(domain_keys(&name.trim_end_matches('.').to_lowercase(), true));
    }
    keys
}

/// A name and its parent domains; `dotted`: each parent also as `.parent`
/// (Postfix's form for "subdomains of").
fn domain_keys(name: &str, dotted: bool) -> Vec<String> {
    let mut keys = Vec::new();
    if name.is_empty() {
        return keys;
    }
    keys.push(name.to_string());
    let mut rest = name;
    while let Some(dot) = rest.find('.') {
        rest = &rest[dot + 1..];
        if rest.is_empty() {
            break;
        }
        keys.push(rest.to_string());
        if dotted {
            keys.push(format!(".{rest}"));
        }
    }
    keys
}

/// An address's keys: `user@domain`, the domain and its parents, `user@`;
/// the null sender is `<>`.
pub fn address_keys(address: &str) -> Vec<String> {
    let address = address.trim_start_matches('<').trim_end_matches('>').to_lowercase();
    if address.is_empty() {
        return vec!["<>".to_string()];
    }
    let mut keys = vec![address.clone()];
    if let Some(at) = address.rfind('@') {
        keys.extend(domain_keys(&address[at + 1..], true));
        keys.push(address[..=at].to_string());
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_parse() {
        assert_eq!(parse_action("OK"), Ok(Action::Ok));
        assert_eq!(parse_action("dunno"), Ok(Action::Dunno));
        assert_eq!(parse_action("REJECT"), Ok(Action::Reject(None)));
        assert_eq!(parse_action("REJECT go away"), Ok(Action::Reject(Some("go away".into()))));
        assert_eq!(parse_action("DEFER later"), Ok(Action::Defer(Some("later".into()))));
        assert_eq!(parse_action("DISCARD"), Ok(Action::Discard));
        assert_eq!(parse_action("550 5.7.2 No spam here"), Ok(Action::Code(550, Some(Enhanced(5, 7, 2)), "No spam here".into())));
        assert_eq!(parse_action("421 come back"), Ok(Action::Code(421, None, "come back".into())));
        assert!(parse_action("250 fine").is_err());
        assert!(parse_action("550 4.7.1 mixed").is_err());
        assert!(parse_action("PERMIT").is_err());
        // Postfix results this server does not implement are refused, not guessed.
        assert!(parse_action("DEFER_IF_PERMIT").is_err());
        assert!(parse_action("HOLD").is_err());
    }

    #[test]
    fn a_text_table_checks_its_results_when_opened() {
        let error = Table::from_text(Path::new("/etc/access"), "1.2.3.4 OK\nspam.example BOUNCE\n").err().unwrap();
        assert!(error.contains("/etc/access") && error.contains("spam.example"), "{error}");
    }

    #[test]
    fn keys_go_from_the_most_to_the_least_specific() {
        let ip: IpAddr = "192.0.2.10".parse().unwrap();
        assert_eq!(
            client_keys(ip, Some("Mail.Example.COM.")),
            ["192.0.2.10", "192.0.2", "192.0", "192", "mail.example.com", "example.com", ".example.com", "com", ".com"]
        );
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let keys = client_keys(v6, None);
        assert_eq!(keys[0], "2001:db8::1");
        assert_eq!(keys[1], "2001:db8:0:0:0:0:0");
        assert_eq!(keys.last().unwrap(), "2001");
        assert_eq!(address_keys("<Bob@Sub.Example.org>"), ["bob@sub.example.org", "sub.example.org", "example.org", ".example.org", "org", ".org", "bob@"]);
        assert_eq!(address_keys(""), ["<>"]);
    }

    #[test]
    fn the_first_table_with_a_result_decides() {
        let table = |text: &str| Some(Table::from_text(Path::new("t"), text).unwrap());
        let access = Access {
            client: table("192.0.2 REJECT no thanks\n192.0.2.1 DUNNO\n198.51.100.1 OK\n"),
            helo: table("bad.helo 550 5.7.9 Bad HELO\n"),
            sender: table("spammer@ DEFER\nexample.net DISCARD\n"),
            recipient: table("abuse@blocked.example OK\nblocked.example REJECT\n"),
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let (decision, which) = access.check(ip("192.0.2.9"), None, Some("x"), "a@b.c", "r@d.e");
        assert_eq!(decision, Decision::Refuse(Reply::new(554, Enhanced(5, 7, 1), "Client host rejected: no thanks")));
        assert_eq!(which, Some(Which::Client));
        // DUNNO for the address goes on to the network's REJECT.
        assert!(matches!(access.check(ip("192.0.2.1"), None, None, "", "r@d.e").0, Decision::Refuse(_)));
        // OK ends the access checks: a bad HELO no longer matters.
        assert_eq!(access.check(ip("198.51.100.1"), None, Some("bad.helo"), "", "").0, Decision::Continue);
        let (decision, which) = access.check(ip("203.0.113.1"), None, Some("bad.helo"), "", "r@d.e");
        assert_eq!(decision, Decision::Refuse(Reply::new(550, Enhanced(5, 7, 9), "Helo command rejected: Bad HELO")));
        assert_eq!(which, Some(Which::Helo));
        let (decision, _) = access.check(ip("203.0.113.1"), None, None, "spammer@x.org", "r@d.e");
        assert_eq!(decision, Decision::Refuse(Reply::new(450, Enhanced(4, 7, 1), "Sender address rejected: Access denied")));
        assert_eq!(access.check(ip("203.0.113.1"), None, None, "a@mail.example.net", "r@d.e").0, Decision::Discard);
        let (_, which) = access.check(ip("203.0.113.1"), None, None, "a@b.c", "x@blocked.example");
        assert_eq!(which, Some(Which::Recipient));
        assert_eq!(access.check(ip("203.0.113.1"), None, None, "a@b.c", "abuse@blocked.example").0, Decision::Continue);
    }
}
