//! DANE for SMTP (RFC 7672): the certificate check of a connection to an
//! MX host that published TLSA records in a DNSSEC-signed zone. A rustls
//! `ServerCertVerifier` of ringpost's own: the certificate chain the
//! server sends is accepted when one usable TLSA record matches it.
//!
//! Place in the pipeline: `crate::deliver::security` looks the records up
//! (`_25._tcp.MX`, believed only with the AD bit of a trusted resolver)
//! and builds a client configuration with this verifier for the one
//! connection; `Stream::connect` runs the handshake with it. A mismatch
//! fails the handshake, which the client machine reports as 4.7.5, and
//! the delivery is deferred: never sent in plaintext instead.
//!
//! What matches (RFC 7672 §3.1, RFC 6698 §2.1):
//! - usage 3 (DANE-EE): the server's own certificate (selector 0, the
//!   whole certificate; 1, its SubjectPublicKeyInfo) is the record's data
//!   (matching 0), or hashes to it (1: SHA-256, 2: SHA-512). Neither the
//!   name nor the validity dates are checked (§3.1.1).
//! - usage 2 (DANE-TA): a certificate the server sends (or, for "2 0 0",
//!   the record itself) matches the record and is the trust anchor the
//!   server's certificate chains to, with the MX name in it and within its
//!   validity dates (§3.1.2, §3.2.2).
//!
//! Usages 0 and 1 (PKIX-TA, PKIX-EE) and other selectors or matching types
//! are unusable (§3.1.3) and left out before the verifier is built; a set
//! with no usable record is no DANE at all.
//!
//! Bounds: at most `TLSA_RECORD_COUNT_MAX` records per host, at most
//! `TLSA_DATA_BYTES_MAX` bytes each (a certificate).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// TLSA records kept for one host; more are ignored.
pub const TLSA_RECORD_COUNT_MAX: usize = 16;
/// Largest TLSA data kept (a full certificate, selector 0 matching 0).
pub const TLSA_DATA_BYTES_MAX: usize = 8192;

/// One TLSA record (RFC 6698 §2.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

impl Tlsa {
    /// Usable for SMTP (RFC 7672 §3.1.3): DANE-TA or DANE-EE, a known
    /// selector and matching type, data of the length the type implies.
    pub fn is_usable(&self) -> bool {
        let length_ok = match self.matching {
            0 => !self.data.is_empty() && self.data.len() <= TLSA_DATA_BYTES_MAX,
            1 => self.data.len() == 32,
            2 => self.data.len() == 64,
            _ => false,
        };
        matches!(self.usage, 2 | 3) && matches!(self.selector, 0 | 1) && length_ok
    }

    /// Whether `cert` (DER) is what this record names, by its selector and
    /// matching type. A certificate that cannot be parsed for its public
    /// key does not match a selector-1 record.
    pub fn matches(&self, cert: &CertificateDer<'_>) -> bool {
        let selected: Vec<u8> = match self.selector {
            0 => cert.as_ref().to_vec(),
            1 => match webpki::anchor_from_trusted_cert(cert) {
                Ok(anchor) => webpki::spki_for_anchor(&anchor).as_ref().to_vec(),
                Err(_) => return false,
            },
            _ => return false,
        };
        match self.matching {
            0 => selected == self.data,
            1 => ring::digest::digest(&ring::digest::SHA256, &selected).as_ref() == self.data.as_slice(),
            2 => ring::digest::digest(&ring::digest::SHA512, &selected).as_ref() == self.data.as_slice(),
            _ => false,
        }
    }

    /// "3 1 1 8f00…" as in a zone file, the data cut short, for logs.
    pub fn describe(&self) -> String {
        let hex: String = self.data.iter().take(8).map(|b| format!("{b:02x}")).collect();
        format!("{} {} {} {hex}…", self.usage, self.selector, self.matching)
    }
}

/// The usable records of a set, at most `TLSA_RECORD_COUNT_MAX`.
pub fn usable(records: Vec<Tlsa>) -> Vec<Tlsa> {
    records.into_iter().filter(Tlsa::is_usable).take(TLSA_RECORD_COUNT_MAX).collect()
}

/// Accepts a server certificate chain when a TLSA record matches it.
#[derive(Debug)]
pub struct DaneVerifier {
    records: Vec<Tlsa>,
    provider: Arc<CryptoProvider>,
}

impl DaneVerifier {
    /// A verifier for `records`, which are usable and at least one.
    pub fn new(records: Vec<Tlsa>, provider: Arc<CryptoProvider>) -> DaneVerifier {
        assert!(!records.is_empty(), "DANE needs a usable TLSA record");
        assert!(records.iter().all(Tlsa::is_usable), "only usable records reach the verifier");
        DaneVerifier { records, provider }
    }

    /// DANE-TA: `anchor` is trusted; does the chain lead from it to an end
    /// entity certificate valid now for `server_name`?
    fn chains_to(
        &self,
        anchor: &CertificateDer<'_>,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> bool {
        let mut roots = RootCertStore::empty();
        if roots.add(anchor.clone().into_owned()).is_err() {
            return false;
        }
        let Ok(verifier) = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone()).build()
        else {
            return false;
        };
        verifier.verify_server_cert(end_entity, intermediates, server_name, &[], now).is_ok()
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        for record in &self.records {
            let matched = match record.usage {
                3 => record.matches(end_entity),
                2 => {
                    let in_chain = intermediates.iter().chain(std::iter::once(end_entity)).any(|cert| {
                        record.matches(cert) && self.chains_to(cert, end_entity, intermediates, server_name, now)
                    });
                    // "2 0 0": the record is the anchor itself, whether or
                    // not the server sends it.
                    in_chain
                        || (record.selector == 0 && record.matching == 0) && {
                            let anchor = CertificateDer::from(record.data.clone());
                            self.chains_to(&anchor, end_entity, intermediates, server_name, now)
                        }
                }
                _ => false,
            };
            if matched {
                return Ok(ServerCertVerified::assertion());
            }
        }
        Err(rustls::Error::General("no TLSA record matches the certificate chain (DANE)".to_string()))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(usage: u8, selector: u8, matching: u8, data: Vec<u8>) -> Tlsa {
        Tlsa { usage, selector, matching, data }
    }

    #[test]
    fn only_dane_usages_known_selectors_and_right_lengths_are_usable() {
        assert!(record(3, 1, 1, vec![0; 32]).is_usable());
        assert!(record(2, 0, 2, vec![0; 64]).is_usable());
        assert!(record(3, 0, 0, vec![1, 2, 3]).is_usable());
        assert!(!record(1, 1, 1, vec![0; 32]).is_usable(), "PKIX-EE is unusable for SMTP");
        assert!(!record(0, 1, 1, vec![0; 32]).is_usable(), "PKIX-TA is unusable for SMTP");
        assert!(!record(3, 2, 1, vec![0; 32]).is_usable());
        assert!(!record(3, 1, 3, vec![0; 32]).is_usable());
        assert!(!record(3, 1, 1, vec![0; 31]).is_usable(), "a SHA-256 is 32 bytes");
        assert!(!record(3, 0, 0, Vec::new()).is_usable());
        let many: Vec<Tlsa> = (0..40).map(|_| record(3, 1, 1, vec![0; 32])).collect();
        assert_eq!(usable(many).len(), TLSA_RECORD_COUNT_MAX);
    }

    #[test]
    fn full_certificate_records_match_by_content_and_digest() {
        let cert = CertificateDer::from(b"not really a certificate".to_vec());
        let sha256 = ring::digest::digest(&ring::digest::SHA256, cert.as_ref()).as_ref().to_vec();
        let sha512 = ring::digest::digest(&ring::digest::SHA512, cert.as_ref()).as_ref().to_vec();
        assert!(record(3, 0, 0, cert.as_ref().to_vec()).matches(&cert));
        assert!(record(3, 0, 1, sha256.clone()).matches(&cert));
        assert!(record(3, 0, 2, sha512).matches(&cert));
        let mut wrong = sha256;
        wrong[0] ^= 1;
        assert!(!record(3, 0, 1, wrong).matches(&cert));
        // No public key can be read from it: selector 1 never matches.
        assert!(!record(3, 1, 0, cert.as_ref().to_vec()).matches(&cert));
    }
}
