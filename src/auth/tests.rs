//! Unit tests of the authentication stage's pieces that need no socket:
//! signing and verifying offline (the caches filled by hand), the
//! replies, the configuration.

use mail_auth::common::crypto::Ed25519Key;
use mail_auth::{AuthenticatedMessage, DkimResult, SpfOutput, SpfResult};

use super::lookups::{parse_txt, Caches};
use super::*;

const MESSAGE: &[u8] = b"From: Alice <alice@sign.test>\r\nTo: bob@example.org\r\nSubject: hello\r\nDate: Mon, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@sign.test>\r\n\r\nHello, Bob.\r\n";

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// An Ed25519 key as a PEM file, and its public key as a DKIM record.
fn ed25519_key(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let pkcs8 = Ed25519Key::generate_pkcs8().unwrap();
    let key = Ed25519Key::from_pkcs8_der(&pkcs8).unwrap();
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", base64(&pkcs8));
    let path = dir.join("ed25519.pem");
    std::fs::write(&path, pem).unwrap();
    (path, format!("v=DKIM1; k=ed25519; p={}", base64(&key.public_key())))
}

fn signer(key: std::path::PathBuf) -> sign::Signer {
    let config = crate::config::DkimSign {
        domain: "sign.test".to_string(),
        selector: "s1".to_string(),
        key,
        headers: crate::config::DKIM_SIGN_HEADERS_DEFAULT.iter().map(|h| h.to_string()).collect(),
    };
    sign::Signer::load(&config).unwrap()
}

/// The DKIM results of `message` with the key record `record` at
/// `s1._domainkey.sign.test`, verified without any network.
fn verify(message: &[u8], record: &str) -> Vec<DkimResult> {
    let caches = Caches::default();
    caches.txt.insert_value("s1._domainkey.sign.test.".to_string(), parse_txt("s1._domainkey.sign.test.", &[record.as_bytes()]));
    let authenticator = offline_authenticator().unwrap();
    let parsed = AuthenticatedMessage::parse(message).unwrap();
    let outputs = futures_lite::future::block_on(authenticator.verify_dkim(caches.params(&parsed)));
    outputs.into_iter().map(|o| body_hash_mismatch_fails(&parsed, o)).map(|o| o.result().clone()).collect()
}

#[test]
fn a_signature_made_here_verifies_and_a_changed_body_fails() {
    let dir = crate::testing::tempdir("auth-sign");
    let (key, record) = ed25519_key(&dir);
    let header = signer(key).sign(MESSAGE).unwrap();
    assert!(header.starts_with("DKIM-Signature: "), "{header}");
    assert!(header.ends_with("\r\n"));
    assert!(header.contains("d=sign.test") && header.contains("s=s1") && header.contains("a=ed25519-sha256"), "{header}");
    let signed = [header.as_bytes(), MESSAGE].concat();
    assert_eq!(verify(&signed, &record), vec![DkimResult::Pass]);
    let tampered = [header.as_bytes(), &MESSAGE[..MESSAGE.len() - 4], b"ob!\r\n"].concat();
    assert!(matches!(verify(&tampered, &record)[..], [DkimResult::Fail(_)]), "{:?}", verify(&tampered, &record));
}

#[test]
fn a_missing_key_record_is_noted_and_answered_offline() {
    let dir = crate::testing::tempdir("auth-miss");
    let (key, _) = ed25519_key(&dir);
    let header = signer(key).sign(MESSAGE).unwrap();
    let signed = [header.as_bytes(), MESSAGE].concat();
    let caches = Caches::default();
    let authenticator = offline_authenticator().unwrap();
    let parsed = AuthenticatedMessage::parse(&signed).unwrap();
    // No runtime, no name server: the miss is answered "no such name".
    let outputs = futures_lite::future::block_on(authenticator.verify_dkim(caches.params(&parsed)));
    assert!(matches!(outputs[0].result(), DkimResult::PermError(_) | DkimResult::TempError(_) | DkimResult::Fail(_)));
    use mail_auth::ResolverCache;
    caches.txt.insert_value("x.test.".to_string(), parse_txt("x.test.", &[b"v=spf1 -all"]));
    assert!(caches.txt.get("x.test.").is_some());
}

#[test]
fn spf_fail_and_temperror_are_refused_with_their_codes() {
    let fail = SpfOutput::new("a.test".to_string()).with_result(SpfResult::Fail);
    let reply = spf_refusal(&fail).unwrap();
    assert_eq!((reply.code, reply.enhanced), (550, Some(Enhanced(5, 7, 23))));
    let temp = SpfOutput::new("a.test".to_string()).with_result(SpfResult::TempError);
    let reply = spf_refusal(&temp).unwrap();
    assert_eq!((reply.code, reply.enhanced), (451, Some(Enhanced(4, 7, 24))));
    for result in [SpfResult::Pass, SpfResult::SoftFail, SpfResult::Neutral, SpfResult::None, SpfResult::PermError] {
        assert!(spf_refusal(&SpfOutput::new("a.test".to_string()).with_result(result)).is_none());
    }
}

#[test]
fn an_mx_lookup_that_timed_out_makes_the_spf_result_temperror() {
    use crate::dns::ResolveError;
    use mail_auth::spf::verify::SpfParameters;
    use super::lookups::Kind;
    let ip: std::net::IpAddr = "192.0.2.7".parse().unwrap();
    let spf = |mx_timed_out: bool| {
        let caches = Caches::default();
        let record = "spf.test.";
        caches.txt.insert_value(record.to_string(), parse_txt(record, &[b"v=spf1 mx ip4:192.0.2.7 -all"]));
        let answer = if mx_timed_out { Err(ResolveError::Timeout) } else { Ok(crate::dns::Lookup::NoData { ttl_s: 60 }) };
        caches.put(Kind::Mx, record.to_string(), answer);
        let authenticator = offline_authenticator().unwrap();
        let params = SpfParameters::verify_mail_from(ip, "client.test", "mx.local", "a@spf.test");
        let out = futures_lite::future::block_on(authenticator.verify_spf(caches.params(params)));
        temp_error_if_unanswered(out, caches.temp_failure.get()).result()
    };
    // The mechanism after the failed one matches: without the failure it
    // passes; with it, check_host() ends at the failure (RFC 7208 §4.4).
    assert_eq!(spf(false), SpfResult::Pass);
    assert_eq!(spf(true), SpfResult::TempError);
}

#[test]
fn headers_that_do_not_fit_the_record_are_left_out() {
    let mut env = crate::testing::envelope("auth1", &["bob@example.org"], 0);
    append_header(&mut env, "Authentication-Results: mx.test; none\r\n");
    assert_eq!(env.headers_prepended, b"Authentication-Results: mx.test; none\r\n");
    let huge = format!("X: {}\r\n", "a".repeat(queue_format::HEADERS_PREPENDED_SIZE_BYTES_MAX));
    append_header(&mut env, &huge);
    assert_eq!(env.headers_prepended.len(), 39);
}

#[test]
fn email_auth_and_dkim_sign_are_read_and_printed() {
    let text = "[email_auth]\nspf = \"reject_fail\"\ndmarc = \"enforce\"\nmax_size_bytes = 1000\n\n[[dkim_sign]]\ndomain = \"Sign.Test\"\nselector = \"s1\"\nkey = \"/etc/k.pem\"\n";
    let config = load(text).unwrap();
    let auth = config.email_auth.clone().unwrap();
    assert_eq!((auth.spf, auth.dmarc, auth.max_size_bytes), (SpfMode::RejectFail, DmarcMode::Enforce, 1000));
    assert_eq!(auth.timeout.0, std::time::Duration::from_secs(10));
    assert_eq!(config.dkim_sign[0].domain, "sign.test");
    assert_eq!(config.dkim_sign[0].headers[0], "From");
    let printed = config.to_toml();
    assert_eq!(load(&printed).unwrap(), config);
    assert!(crate::config::Config::default().email_auth.is_none());
    for bad in [
        "[email_auth]\nspf = \"hard\"\n",
        "[email_auth]\ndmarc = \"reject\"\n",
        "[email_auth]\nbogus = 1\n",
        "[[dkim_sign]]\ndomain = \"a.test\"\nselector = \"s\"\n",
        "[[dkim_sign]]\ndomain = \"a.test\"\nselector = \"s\"\nkey = \"/k\"\nheaders = [\"To\"]\n",
        "[[dkim_sign]]\ndomain = \"a.test\"\nselector = \"bad selector\"\nkey = \"/k\"\n",
    ] {
        assert!(load(bad).is_err(), "{bad}");
    }
}

fn load(text: &str) -> Result<crate::config::Config, crate::config::ConfigError> {
    crate::config::load_str(std::path::Path::new("t.toml"), text, &[])
}
