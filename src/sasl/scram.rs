//! SCRAM-SHA-256 (RFC 5802, RFC 7677) for SMTP AUTH, server side, without
//! channel binding (`-PLUS` is not offered, so a client's `y,,` header is
//! accepted and `p=` refused). The user's secrets are what
//! `doveadm pw -s SCRAM-SHA-256` writes into the `table` back end:
//! `{SCRAM-SHA-256}iterations,salt,StoredKey,ServerKey` (base64 fields);
//! the password never reaches the server.
//!
//! Place in the pipeline: the session driver (`crate::ingress::listener`)
//! runs one [`Exchange`] per SCRAM attempt between the machine's
//! `Event::AuthStep`s; the secrets come from the back end's pool
//! (`Sasl::scram_secrets`). The server's work here is two HMACs and a
//! hash: cheap enough for the shard. PBKDF2, the expensive step, is the
//! client's (and `verify_password`'s, on the pool, for PLAIN and LOGIN
//! against a SCRAM entry).

use base64::Engine as _;
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = hmac::Hmac<Sha256>;

/// The prefix of a SCRAM-SHA-256 entry.
pub const SCHEME: &str = "{SCRAM-SHA-256}";
/// Most PBKDF2 iterations accepted in an entry (a check must stay bounded).
const ITERATIONS_MAX: u32 = 1_000_000;
/// Fewest, as RFC 7677 §4 asks.
const ITERATIONS_MIN: u32 = 4096;

/// A user's stored SCRAM secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Secrets {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

impl Secrets {
    /// Parses `{SCRAM-SHA-256}i,salt,StoredKey,ServerKey` (a fifth field,
    /// the salted password some tools add, is ignored).
    pub fn parse(entry: &str) -> Option<Secrets> {
        let rest = entry.strip_prefix(SCHEME)?;
        let mut fields = rest.split(',');
        let iterations: u32 = fields.next()?.parse().ok()?;
        if !(ITERATIONS_MIN..=ITERATIONS_MAX).contains(&iterations) {
            return None;
        }
        let salt = b64().decode(fields.next()?).ok()?;
        let stored_key = b64().decode(fields.next()?).ok()?.try_into().ok()?;
        let server_key = b64().decode(fields.next()?).ok()?.try_into().ok()?;
        Some(Secrets { iterations, salt, stored_key, server_key })
    }

    /// Secrets no password matches, for a user the back end does not know
    /// (the exchange then fails at the proof, as for a wrong password,
    /// and does not tell which names exist).
    pub fn unknown(user: &str) -> Secrets {
        let salt = Sha256::digest(format!("ringpost-unknown-user\0{user}").as_bytes())[..16].to_vec();
        Secrets { iterations: ITERATIONS_MIN, salt, stored_key: [0; 32], server_key: [0; 32] }
    }

    /// Whether `password` is the one these secrets were made from (PLAIN
    /// and LOGIN against a SCRAM entry): PBKDF2, so run it on the pool.
    pub fn matches_password(&self, password: &str) -> bool {
        let salted = pbkdf2_sha256(password.as_bytes(), &self.salt, self.iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        constant_time_eq(&stored, &self.stored_key)
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA256 with one 32-octet block (RFC 8018 §5.2), SCRAM's Hi().
fn pbkdf2_sha256(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut block = salt.to_vec();
    block.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &block);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        for (o, x) in out.iter_mut().zip(u.iter()) {
            *o ^= x;
        }
    }
    out
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The client's first message, parsed: the user and what the rest of the
/// exchange needs.
#[derive(Debug, PartialEq, Eq)]
pub struct ClientFirst {
    pub user: String,
    /// `n=...,r=...` (without the GS2 header), part of the AuthMessage.
    bare: String,
    /// The GS2 header (`n,,` or `y,,`), which `c=` must echo.
    gs2_header: String,
    client_nonce: String,
}

/// `saslname` (RFC 5802 §5.1): `=2C` is `,`, `=3D` is `=`.
fn unescape_name(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return None,
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Some(out)
}

impl ClientFirst {
    pub fn parse(message: &[u8]) -> Option<ClientFirst> {
        let text = std::str::from_utf8(message).ok()?;
        let (gs2_flag, rest) = text.split_once(',')?;
        let (authzid, bare) = rest.split_once(',')?;
        // No channel binding offered: `p=` is refused; an authzid other
        // than the user is refused below.
        if gs2_flag != "n" && gs2_flag != "y" {
            return None;
        }
        let mut attributes = bare.split(',');
        let user = unescape_name(attributes.next()?.strip_prefix("n=")?)?;
        let client_nonce = attributes.next()?.strip_prefix("r=")?.to_string();
        let printable = |s: &str| !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',');
        if user.is_empty() || user.len() > super::CREDENTIAL_BYTES_MAX || !printable(&client_nonce) {
            return None;
        }
        if let Some(authzid) = authzid.strip_prefix("a=") {
            // An empty one (as some clients send) is none.
            if !authzid.is_empty() && unescape_name(authzid)? != user {
                return None;
            }
        } else if !authzid.is_empty() {
            return None;
        }
        Some(ClientFirst { user, bare: bare.to_string(), gs2_header: format!("{gs2_flag},{authzid},"), client_nonce })
    }
}

/// One SCRAM exchange after the server's first message.
#[derive(Debug)]
pub struct Exchange {
    pub user: String,
    secrets: Secrets,
    client_first_bare: String,
    server_first: String,
    gs2_header: String,
    nonce: String,
}

impl Exchange {
    /// The server's first message for `first` with `secrets` and the
    /// server's part of the nonce (random, printable).
    pub fn start(first: ClientFirst, secrets: Secrets, server_nonce: &str) -> (Exchange, String) {
        let nonce = format!("{}{server_nonce}", first.client_nonce);
        let server_first = format!("r={nonce},s={},i={}", b64().encode(&secrets.salt), secrets.iterations);
        let exchange = Exchange {
            user: first.user,
            secrets,
            client_first_bare: first.bare,
            server_first: server_first.clone(),
            gs2_header: first.gs2_header,
            nonce,
        };
        (exchange, server_first)
    }

    /// Checks the client's final message; `Some(server-final)` when its
    /// proof is right.
    pub fn finish(&self, message: &[u8]) -> Option<String> {
        let text = std::str::from_utf8(message).ok()?;
        let (without_proof, proof) = text.rsplit_once(",p=")?;
        let mut attributes = without_proof.split(',');
        let binding = b64().decode(attributes.next()?.strip_prefix("c=")?).ok()?;
        if binding != self.gs2_header.as_bytes() || attributes.next()?.strip_prefix("r=")? != self.nonce {
            return None;
        }
        let proof: [u8; 32] = b64().decode(proof).ok()?.try_into().ok()?;
        let auth_message = format!("{},{},{without_proof}", self.client_first_bare, self.server_first);
        let signature = hmac(&self.secrets.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ signature[i];
        }
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        if !constant_time_eq(&stored, &self.secrets.stored_key) {
            return None;
        }
        let server_signature = hmac(&self.secrets.server_key, auth_message.as_bytes());
        Some(format!("v={}", b64().encode(server_signature)))
    }
}

/// A server nonce: 18 random octets, base64.
pub fn server_nonce() -> String {
    let mut bytes = [0u8; 18];
    // getrandom(2); on failure the time and the address of a stack value,
    // hashed (a nonce must be unique, not secret).
    // SAFETY: the pointer and length describe `bytes`.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got != bytes.len() as isize {
        let seed = format!("{:?}{:p}", std::time::SystemTime::now(), &bytes);
        bytes.copy_from_slice(&Sha256::digest(seed.as_bytes())[..18]);
    }
    b64().encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 §3's example: user "user", password "pencil".
    #[test]
    fn rfc7677_example_exchange() {
        let salt = b64().decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let salted = pbkdf2_sha256(b"pencil", &salt, 4096);
        let client_key = hmac(&salted, b"Client Key");
        let secrets = Secrets {
            iterations: 4096,
            salt,
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        };
        assert!(secrets.matches_password("pencil") && !secrets.matches_password("pen"));
        let first = ClientFirst::parse(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
        let (exchange, server_first) = Exchange::start(first, secrets, "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
        assert_eq!(
            server_first,
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let client_final = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        assert_eq!(exchange.finish(client_final).as_deref(), Some("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="));
        let mut wrong = client_final.to_vec();
        let at = wrong.len() - 5;
        wrong[at] ^= 1;
        assert_eq!(exchange.finish(&wrong), None);
    }

    #[test]
    fn doveadm_entries_and_bad_messages() {
        let entry = "{SCRAM-SHA-256}4096,ObthB+BzJiJ/f+Jk6bJjzg==,uSKw/SM2OuDUOheASHT3TFuzc4GN673M8iW+Bz0W+sY=,oAe0CPCEe4C7E0NKfXxkDBzClS5hJR+KUSeMpYuW/ko=";
        let secrets = Secrets::parse(entry).expect("doveadm pw -s SCRAM-SHA-256 -p pw");
        assert!(secrets.matches_password("pw"));
        assert!(Secrets::parse("{SCRAM-SHA-256}1,AAAA,AAAA,AAAA").is_none());
        assert!(ClientFirst::parse(b"p=tls-unique,,n=user,r=abc").is_none(), "no channel binding");
        assert!(ClientFirst::parse(b"n,a=admin,n=user,r=abc").is_none(), "no other authzid");
        assert_eq!(ClientFirst::parse(b"y,,n=us=2Cer,r=abc").unwrap().user, "us,er");
        assert_eq!(ClientFirst::parse(b"n,a=,n=user,r=abc").unwrap().gs2_header, "n,a=,");
        assert!(ClientFirst::parse(b"n,a=user,n=user,r=abc").is_some());
        assert!(ClientFirst::parse(b"n,,n=us=xxer,r=abc").is_none());
        assert_eq!(server_nonce().len(), 24);
    }
}
