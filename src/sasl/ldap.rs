//! The `ldap` back end of SMTP AUTH: a simple bind (RFC 4513 §5.1.3) as
//! the user's DN, from `auth.ldap_bind_dn` with `%u` replaced by the user
//! name escaped per RFC 4514 (so a name cannot change the DN). Success
//! (result 0) is a valid password, `invalidCredentials` (49) an invalid one,
//! anything else a back-end failure. An empty password is refused before
//! any bind: RFC 4513 §5.1.2 makes it an unauthenticated bind, which a
//! server may accept for any name.
//!
//! Place in the pipeline: a `crate::pool::Backend` on the pool's workers
//! (ldap3's blocking client), one connection per worker, bound again for
//! every check.

use std::time::Duration;

use crate::pool::Backend;
use crate::route::source::{LookupError, LookupResult};

/// Longest wait for the connection and for each bind.
const TIMEOUT: Duration = Duration::from_secs(10);
/// LDAP result code invalidCredentials (RFC 4511 §4.1.9).
const INVALID_CREDENTIALS: u32 = 49;

pub struct Ldap {
    conn: ldap3::LdapConn,
    bind_dn: String,
}

impl Ldap {
    pub fn connect(url: &str, bind_dn: &str) -> Result<Ldap, String> {
        let settings = ldap3::LdapConnSettings::new().set_conn_timeout(TIMEOUT);
        let conn = ldap3::LdapConn::with_settings(settings, url).map_err(|e| format!("{url}: {e}"))?;
        Ok(Ldap { conn, bind_dn: bind_dn.to_string() })
    }
}

impl Backend for Ldap {
    fn lookup(&mut self, key: &str) -> LookupResult {
        let Some(request) = super::Request::decode(key) else {
            return Err(LookupError::Config("malformed check request".into()));
        };
        if request.password.is_empty() || request.user.is_empty() {
            return Ok(None);
        }
        let dn = self.bind_dn.replace("%u", &escape_dn_value(request.user));
        let result = self
            .conn
            .with_timeout(TIMEOUT)
            .simple_bind(&dn, request.password)
            .map_err(|e| LookupError::Temporary(format!("ldap: {e}")))?;
        match result.rc {
            0 => Ok(Some(request.user.to_string())),
            INVALID_CREDENTIALS => Ok(None),
            rc => Err(LookupError::Temporary(format!("ldap: bind result {rc} {}", result.text))),
        }
    }
}

/// RFC 4514 §2.4: `"`, `+`, `,`, `;`, `<`, `>`, `\`, `=` (and `#` or a space
/// at the start, a space at the end) escaped with `\`; NUL as `\00`.
pub fn escape_dn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (index, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' | '=' => {
                out.push('\\');
                out.push(c);
            }
            '#' if index == 0 => out.push_str("\\#"),
            ' ' if index == 0 || index == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn dn_values_are_escaped() {
        assert_eq!(super::escape_dn_value("alice"), "alice");
        assert_eq!(super::escape_dn_value("a,ou=admins"), "a\\,ou\\=admins");
        assert_eq!(super::escape_dn_value("#x "), "\\#x\\ ");
    }
}
