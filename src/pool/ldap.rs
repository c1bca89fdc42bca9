//! LDAP lookups (`source = "ldap:URL"`) for the pool: ldap3's blocking
//! client, one connection per worker (anonymous bind), a subtree search
//! under the URL's base DN with the router's query as the filter, `%s`
//! replaced by the key escaped per RFC 4515 (so a key cannot change the
//! filter); the values of the attribute named after `?` in the URL
//! (RFC 4516 style, `ldap://host:port/BASE?attr`) of every entry, joined
//! with ", ".
//!
//! Place in the pipeline: run by pool workers, never on a shard.

use std::time::Duration;

use crate::pool::{Backend, Connect};
use crate::route::source::{LookupError, LookupResult};

/// Values of one answer joined into the value; more are ignored.
pub const VALUES_MAX: usize = 1_000;
/// Longest wait for a connection and for each search.
const TIMEOUT: Duration = Duration::from_secs(5);

struct Ldap {
    conn: ldap3::LdapConn,
    base: String,
    filter: String,
    attribute: String,
}

impl Backend for Ldap {
    fn lookup(&mut self, key: &str) -> LookupResult {
        let filter = self.filter.replace("%s", &escape(key));
        let result = self
            .conn
            .with_timeout(TIMEOUT)
            .search(&self.base, ldap3::Scope::Subtree, &filter, vec![self.attribute.as_str()])
            .map_err(|e| LookupError::Temporary(format!("ldap: {e}")))?;
        let (entries, _) = result.success().map_err(|e| LookupError::Temporary(format!("ldap: {e}")))?;
        let mut values = Vec::new();
        for entry in entries {
            let entry = ldap3::SearchEntry::construct(entry);
            for (name, vals) in entry.attrs {
                if name.eq_ignore_ascii_case(&self.attribute) {
                    values.extend(vals);
                }
            }
            if values.len() >= VALUES_MAX {
                values.truncate(VALUES_MAX);
                break;
            }
        }
        Ok(if values.is_empty() { None } else { Some(values.join(", ")) })
    }
}

/// RFC 4515 §3: `*`, `(`, `)`, `\` and NUL as `\XX`.
pub fn escape(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for c in key.chars() {
        match c {
            '*' => out.push_str("\\2a"),
            '(' => out.push_str("\\28"),
            ')' => out.push_str("\\29"),
            '\\' => out.push_str("\\5c"),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

/// The pool's description and connector for `ldap://host:port/BASE?attr`.
pub fn connector(url: &str, query: &str) -> Result<(String, Connect), String> {
    let bad = |why: &str| format!("ldap:{url}: {why} (expected ldap://host:port/BASE_DN?attribute)");
    let rest = url.strip_prefix("ldap://").ok_or_else(|| bad("only ldap:// URLs"))?;
    let (hostport, path) = rest.split_once('/').ok_or_else(|| bad("no base DN"))?;
    let (base, attribute) = path.split_once('?').ok_or_else(|| bad("no attribute"))?;
    if base.is_empty() || attribute.is_empty() {
        return Err(bad("empty base DN or attribute"));
    }
    if !query.contains("%s") {
        return Err(format!("ldap:{url}: the query (an LDAP filter) must use %s for the key"));
    }
    let server = format!("ldap://{hostport}");
    let base = percent_decode(base);
    let attribute = attribute.to_string();
    let filter = query.to_string();
    let connect: Connect = Box::new(move || {
        let settings = ldap3::LdapConnSettings::new().set_conn_timeout(TIMEOUT);
        let conn = ldap3::LdapConn::with_settings(settings, &server).map_err(|e| e.to_string())?;
        Ok(Box::new(Ldap { conn, base: base.clone(), filter: filter.clone(), attribute: attribute.clone() }) as Box<dyn Backend>)
    });
    Ok((format!("ldap:{url}"), connect))
}

/// `%2C` and friends in a base DN written in a URL.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_values_are_escaped() {
        assert_eq!(escape("a*)(uid=*"), "a\\2a\\29\\28uid=\\2a");
        assert_eq!(escape("back\\slash"), "back\\5cslash");
        assert_eq!(percent_decode("dc%3Dtest"), "dc=test");
    }

    #[test]
    fn urls_are_checked() {
        assert!(connector("ldap://127.0.0.1:389/dc=test?mail", "(uid=%s)").is_ok());
        assert!(connector("ldaps://h/dc=test?mail", "(uid=%s)").is_err());
        assert!(connector("ldap://h/dc=test", "(uid=%s)").is_err());
        assert!(connector("ldap://h/dc=test?mail", "(uid=x)").is_err());
    }
}
