//! DKIM signing of outbound mail (`[[dkim_sign]]`): one key per From:
//! domain, loaded when the shard starts, and the `DKIM-Signature:` line a
//! message gets.
//!
//! Place in the pipeline: called by the authentication stage at the final
//! dot (`crate::auth`), once per message, never per delivery attempt: the
//! line goes into the envelope's `headers_prepended`, which delivery
//! writes above the stored content, so every attempt sends the same
//! signature. The stored content is what is signed (ringpost's Received
//! line is in it but not among the signed fields by default).
//!
//! Keys: PEM files, RSA (PKCS#1 `RSA PRIVATE KEY` or PKCS#8) signed as
//! rsa-sha256, or Ed25519 (PKCS#8) signed as ed25519-sha256 (RFC 8463).
//! Canonicalization relaxed/relaxed; no `l=`, so content added below the
//! body breaks the signature, as it should.

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;

use crate::config::DkimSign;

/// Largest key file read.
const KEY_FILE_BYTES_MAX: u64 = 64 * 1024;

/// A loaded private key.
enum Key {
    Rsa(RsaKey<Sha256>),
    Ed25519(Ed25519Key),
}

/// The signer of one key.
enum Built {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

/// One `[[dkim_sign]]` table with its key.
pub struct Signer {
    pub domain: String,
    signer: Built,
}

impl Signer {
    /// Reads and parses the key file of `config`.
    pub fn load(config: &DkimSign) -> Result<Signer, String> {
        let path = config.key.display();
        let size = std::fs::metadata(&config.key).map_err(|e| format!("dkim_sign key {path}: {e}"))?.len();
        if size > KEY_FILE_BYTES_MAX {
            return Err(format!("dkim_sign key {path}: larger than {KEY_FILE_BYTES_MAX} bytes"));
        }
        let pem = std::fs::read(&config.key).map_err(|e| format!("dkim_sign key {path}: {e}"))?;
        let key = parse_key(&pem).map_err(|e| format!("dkim_sign key {path}: {e}"))?;
        let signer = match key {
            Key::Rsa(key) => Built::Rsa(build(key, config)),
            Key::Ed25519(key) => Built::Ed25519(build(key, config)),
        };
        Ok(Signer { domain: config.domain.clone(), signer })
    }

    /// The `DKIM-Signature:` field for `message` (header section and
    /// body, CRLF line ends), folded, ending in CRLF.
    pub fn sign(&self, message: &[u8]) -> Result<String, String> {
        let signature = match &self.signer {
            Built::Rsa(signer) => signer.sign(message),
            Built::Ed25519(signer) => signer.sign(message),
        }
        .map_err(|e| format!("signing failed: {e}"))?;
        Ok(signature.to_header())
    }
}

fn build<T: SigningKey>(key: T, config: &DkimSign) -> DkimSigner<T, Done> {
    DkimSigner::from_key(key)
        .domain(config.domain.clone())
        .selector(config.selector.clone())
        .headers(config.headers.iter().cloned())
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
}

/// A PEM private key: RSA (PKCS#1 or PKCS#8) or Ed25519 (PKCS#8).
fn parse_key(pem: &[u8]) -> Result<Key, String> {
    let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("not a PEM private key: {e}"))?;
    match der {
        PrivateKeyDer::Pkcs1(der) => {
            RsaKey::<Sha256>::from_der(der.secret_pkcs1_der()).map(Key::Rsa).map_err(|e| e.to_string())
        }
        PrivateKeyDer::Pkcs8(der) => {
            let bytes = der.secret_pkcs8_der();
            if let Ok(key) = RsaKey::<Sha256>::from_pkcs8_der(bytes) {
                return Ok(Key::Rsa(key));
            }
            Ed25519Key::from_pkcs8_maybe_unchecked_der(bytes)
                .map(Key::Ed25519)
                .map_err(|e| format!("neither an RSA nor an Ed25519 key: {e}"))
        }
        _ => Err("an RSA or Ed25519 key is needed".to_string()),
    }
}
