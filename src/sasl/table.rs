//! The `table` back end of SMTP AUTH: `user:hash` lines in a text file (or
//! a cdb file built by `ringpost makemap`), the hash in one of the crypt(3)
//! forms that `openssl passwd -6` and `mkpasswd` write (SHA512-crypt,
//! `$6$`), that `doveadm pw -s SHA512-CRYPT` writes (`{SHA512-CRYPT}$6$`),
//! or argon2 (`$argon2id$`, `$argon2i$`, `$argon2d$`; `{ARGON2ID}` and
//! `{ARGON2I}` prefixes as doveadm writes them), or SCRAM-SHA-256 secrets
//! (`{SCRAM-SHA-256}`, `doveadm pw -s SCRAM-SHA-256`), which also serve
//! the SCRAM-SHA-256 mechanism (`scram.rs`). Checked by the RustCrypto
//! `sha-crypt` and `argon2` crates, in constant time.
//!
//! Place in the pipeline: a `crate::pool::Backend`, run on the pool's
//! worker threads (a SHA512-crypt check costs milliseconds, argon2 tens of
//! them: never on a shard). The text file is read again when its
//! modification time changes, so an edited table takes effect without a
//! restart.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::pool::Backend;
use crate::route::source::{LookupError, LookupResult};
use crate::route::table::{CdbTable, TextTable};

enum Source {
    Text { table: TextTable, modified: Option<SystemTime> },
    Cdb(CdbTable),
}

/// One worker's view of the table.
pub struct Table {
    path: PathBuf,
    source: Source,
}

impl Table {
    /// Opens `path`: cdb when its name ends in `.cdb`, else text.
    pub fn open(path: &Path) -> Result<Table, String> {
        let source = match path.extension().is_some_and(|e| e == "cdb") {
            true => Source::Cdb(CdbTable::open(path)?),
            false => Source::Text { table: TextTable::open(path)?, modified: modified(path) },
        };
        Ok(Table { path: path.to_path_buf(), source })
    }

    /// The stored hash of `user` (keys are lower-case), the text file read
    /// again first if it changed.
    fn hash_of(&mut self, user: &str) -> Result<Option<String>, LookupError> {
        if let Source::Text { modified: seen, .. } = &self.source {
            let now = modified(&self.path);
            if now != *seen {
                let table = TextTable::open(&self.path).map_err(LookupError::Config)?;
                self.source = Source::Text { table, modified: now };
            }
        }
        let key = user.to_lowercase();
        match &self.source {
            Source::Text { table, .. } => Ok(table.get(&key).map(str::to_string)),
            Source::Cdb(cdb) => cdb.get(&key),
        }
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Backend for Table {
    /// `key` is a check request (`super::Request`); the answer is the user
    /// name when the password matches its hash, None when it does not or
    /// the user is unknown.
    fn lookup(&mut self, key: &str) -> LookupResult {
        if let Some(user) = key.strip_prefix(super::SECRETS_KEY_PREFIX) {
            // SCRAM: the stored entry itself, when it is a SCRAM one.
            let entry = self.hash_of(user)?;
            return Ok(entry.filter(|e| e.trim().starts_with(super::scram::SCHEME)).map(|e| e.trim().to_string()));
        }
        let Some(request) = super::Request::decode(key) else {
            return Err(LookupError::Config("malformed check request".into()));
        };
        let Some(hash) = self.hash_of(request.user)? else {
            // The same work as a known user, so that timing does not tell
            // which names exist.
            let _ = verify(request.password, DUMMY_HASH);
            return Ok(None);
        };
        match verify(request.password, hash.trim()) {
            Ok(true) => Ok(Some(request.user.to_string())),
            Ok(false) => Ok(None),
            Err(e) => Err(LookupError::Config(format!("{}: user {}: {e}", self.path.display(), request.user))),
        }
    }
}

/// A SHA512-crypt hash of a random password, checked for unknown users.
const DUMMY_HASH: &str =
    "$6$dummysaltdummysa$nugqjtAXybNh6lsd0D/JK4h3hhYvg4m3Jbwgzv9tOHlgPIPBegPSB4c0hYuILAN10omAsKGxP3lZKog30nm4f.";

/// Whether `password` matches `hash`; `Err` for a hash in no known form.
pub fn verify(password: &str, hash: &str) -> Result<bool, &'static str> {
    if hash.starts_with(super::scram::SCHEME) {
        let secrets = super::scram::Secrets::parse(hash).ok_or("malformed {SCRAM-SHA-256} entry")?;
        return Ok(secrets.matches_password(password));
    }
    let hash = strip_scheme(hash)?;
    if hash.starts_with("$6$") {
        return Ok(sha_crypt::sha512_check(password, hash).is_ok());
    }
    if hash.starts_with("$argon2") {
        use argon2::password_hash::{PasswordHash, PasswordVerifier};
        let parsed = PasswordHash::new(hash).map_err(|_| "malformed argon2 hash")?;
        return Ok(argon2::Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok());
    }
    Err("unknown hash form (expected $6$, {SHA512-CRYPT}$6$ or $argon2id$)")
}

/// Removes a Dovecot `{SCHEME}` prefix that names a form `verify` knows.
fn strip_scheme(hash: &str) -> Result<&str, &'static str> {
    let Some(rest) = hash.strip_prefix('{') else { return Ok(hash) };
    let (scheme, value) = rest.split_once('}').ok_or("unterminated {SCHEME} prefix")?;
    match scheme.to_ascii_uppercase().as_str() {
        "SHA512-CRYPT" | "CRYPT" if value.starts_with("$6$") => Ok(value),
        "ARGON2I" | "ARGON2ID" if value.starts_with("$argon2") => Ok(value),
        _ => Err("unsupported {SCHEME} (SHA512-CRYPT, ARGON2I and ARGON2ID are)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // `openssl passwd -6 -salt saltsalt secret`
    const OPENSSL: &str =
        "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";

    #[test]
    fn sha512_crypt_in_both_spellings() {
        assert_eq!(verify("secret", OPENSSL), Ok(true));
        assert_eq!(verify("Secret", OPENSSL), Ok(false));
        assert_eq!(verify("secret", &format!("{{SHA512-CRYPT}}{OPENSSL}")), Ok(true));
        assert_eq!(verify("wrong", &format!("{{SHA512-CRYPT}}{OPENSSL}")), Ok(false));
    }

    #[test]
    fn argon2_verifies_and_unknown_forms_are_errors() {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let hash = argon2::Argon2::default().hash_password(b"pw", &salt).unwrap().to_string();
        assert!(hash.starts_with("$argon2id$"));
        assert_eq!(verify("pw", &hash), Ok(true));
        assert_eq!(verify("px", &hash), Ok(false));
        assert_eq!(verify("pw", &format!("{{ARGON2ID}}{hash}")), Ok(true));
        assert!(verify("pw", "{PLAIN}pw").is_err());
        assert!(verify("pw", "$1$md5$xyz").is_err());
        assert!(verify("pw", "pw").is_err(), "a clear-text password is not a hash");
        assert_eq!(verify("x", DUMMY_HASH).ok(), Some(false));
    }
}
