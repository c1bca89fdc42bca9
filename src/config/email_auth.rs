//! The types of `[email_auth]` (SPF, DKIM, DMARC and ARC verification of
//! inbound mail) and `[[dkim_sign]]` (DKIM signatures on outbound mail).
//!
//! Place in the pipeline: read by `read.rs` with the rest of the file,
//! printed by `print.rs`, used by `crate::auth` (at MAIL FROM and at the
//! final dot). Every key is documented in `docs/config.md`.

use std::path::PathBuf;

use super::Duration;

/// What the SPF verdict of MAIL FROM does (`email_auth.spf`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpfMode {
    /// Not checked.
    Off,
    /// Checked and recorded in Authentication-Results only.
    Tag,
    /// As `tag`, and `fail` gets 550 5.7.23 at MAIL FROM, `temperror`
    /// 451 4.7.24.
    RejectFail,
}

impl SpfMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SpfMode::Off => "off",
            SpfMode::Tag => "tag",
            SpfMode::RejectFail => "reject_fail",
        }
    }
}

impl std::str::FromStr for SpfMode {
    type Err = String;

    fn from_str(text: &str) -> Result<SpfMode, String> {
        match text {
            "off" => Ok(SpfMode::Off),
            "tag" => Ok(SpfMode::Tag),
            "reject_fail" => Ok(SpfMode::RejectFail),
            other => Err(format!("must be \"off\", \"tag\" or \"reject_fail\", not {other:?}")),
        }
    }
}

/// What the DMARC verdict of the From: domain does (`email_auth.dmarc`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmarcMode {
    /// Not evaluated.
    Off,
    /// Evaluated and recorded in Authentication-Results only.
    Tag,
    /// As `tag`, and a failure under `p=reject` gets 550 5.7.1 at the
    /// final dot (`p=quarantine` is recorded only).
    Enforce,
}

impl DmarcMode {
    pub fn as_str(self) -> &'static str {
        match self {
            DmarcMode::Off => "off",
            DmarcMode::Tag => "tag",
            DmarcMode::Enforce => "enforce",
        }
    }
}

impl std::str::FromStr for DmarcMode {
    type Err = String;

    fn from_str(text: &str) -> Result<DmarcMode, String> {
        match text {
            "off" => Ok(DmarcMode::Off),
            "tag" => Ok(DmarcMode::Tag),
            "enforce" => Ok(DmarcMode::Enforce),
            other => Err(format!("must be \"off\", \"tag\" or \"enforce\", not {other:?}")),
        }
    }
}

/// `[email_auth]`: present, DKIM and ARC are always verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmailAuth {
    /// Default "tag".
    pub spf: SpfMode,
    /// Default "tag".
    pub dmarc: DmarcMode,
    /// Larger messages are not verified at the final dot (their
    /// Authentication-Results says `dkim=none` with a reason); SPF is still
    /// checked at MAIL FROM. Default 16 MiB.
    pub max_size_bytes: u64,
    /// The DNS lookups of one check (SPF at MAIL, the rest at the final
    /// dot) end after this; what is missing then is a temporary error.
    /// Default "10s".
    pub timeout: Duration,
    /// DNS lookups one check may make (RFC 7208 §4.6.4 allows SPF 10
    /// mechanism lookups; DKIM keys, DMARC's tree walk and MX/A lookups
    /// come on top). Default 32.
    pub max_lookups: u32,
}

impl Default for EmailAuth {
    fn default() -> EmailAuth {
        EmailAuth {
            spf: SpfMode::Tag,
            dmarc: DmarcMode::Tag,
            max_size_bytes: 16 * 1024 * 1024,
            timeout: Duration(std::time::Duration::from_secs(10)),
            max_lookups: 32,
        }
    }
}

/// The header fields signed by default (RFC 6376 §5.4.1's recommendation,
/// From first).
pub const DKIM_SIGN_HEADERS_DEFAULT: &[&str] = &[
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

/// One `[[dkim_sign]]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DkimSign {
    /// Messages whose From: domain is this one (lower-case) are signed.
    pub domain: String,
    /// The `s=` tag: the key is published at `selector._domainkey.domain`.
    pub selector: String,
    /// A PEM file: an RSA key (PKCS#1 or PKCS#8) or an Ed25519 key (PKCS#8).
    pub key: PathBuf,
    /// Header field names signed (`h=`). Default `DKIM_SIGN_HEADERS_DEFAULT`.
    pub headers: Vec<String>,
}
