//! The types of `[[listener]]` (listening addresses with a role and a TLS
//! mode) and `[auth]` (SMTP AUTH, RFC 4954, for mail submission).
//!
//! Place in the pipeline: read by `read/submission.rs` with the rest of the
//! file, printed by `print.rs`; the listeners are bound by `crate::shard`,
//! their sessions run by `crate::ingress`, and `[auth]` is used by
//! `crate::sasl`. Every key is documented in `docs/config.md`. `[auth]` is
//! SASL (who the client is); `[email_auth]` is SPF/DKIM/DMARC (who the
//! message is from).

use std::net::SocketAddr;
use std::path::PathBuf;

use super::{Cidr, Duration};

/// What a listener is for (`listener.role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerRole {
    /// Mail from other MTAs: the front line runs, relay by `relay.networks`.
    Mx,
    /// Mail from users' clients (RFC 6409): AUTH before MAIL, relay for the
    /// authenticated, no DNSBL or greet pause.
    Submission,
}

impl ListenerRole {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerRole::Mx => "mx",
            ListenerRole::Submission => "submission",
        }
    }
}

impl std::str::FromStr for ListenerRole {
    type Err = String;

    fn from_str(text: &str) -> Result<ListenerRole, String> {
        match text {
            "mx" => Ok(ListenerRole::Mx),
            "submission" => Ok(ListenerRole::Submission),
            other => Err(format!("must be \"mx\" or \"submission\", not {other:?}")),
        }
    }
}

/// How a listener uses TLS (`listener.tls`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenerTls {
    /// STARTTLS offered (RFC 3207).
    StartTls,
    /// The TLS handshake comes before the greeting (RFC 8314, port 465).
    Implicit,
    /// Plain text only.
    None,
}

impl ListenerTls {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerTls::StartTls => "starttls",
            ListenerTls::Implicit => "implicit",
            ListenerTls::None => "none",
        }
    }
}

impl std::str::FromStr for ListenerTls {
    type Err = String;

    fn from_str(text: &str) -> Result<ListenerTls, String> {
        match text {
            "starttls" => Ok(ListenerTls::StartTls),
            "implicit" => Ok(ListenerTls::Implicit),
            "none" => Ok(ListenerTls::None),
            other => Err(format!("must be \"starttls\", \"implicit\" or \"none\", not {other:?}")),
        }
    }
}

/// One `[[listener]]` table, or one `server.listen` address (role mx,
/// STARTTLS when `tls.cert` is set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    pub address: SocketAddr,
    /// Default "mx".
    pub role: ListenerRole,
    /// Default "starttls" when `tls.cert` is set, else "none".
    pub tls: ListenerTls,
    /// Clients that may relay without AUTH through this listener. Default:
    /// `relay.networks` for mx, none for submission.
    pub relay_networks: Option<Vec<Cidr>>,
    /// The front line's connection checks (DNSBL, greet pause, reverse
    /// DNS) run for this listener. Default true for mx, false for submission.
    pub frontline: bool,
    /// AUTH is offered (needs `[auth]`). Default true for submission,
    /// false for mx.
    pub auth: bool,
}

impl Listener {
    /// `server.listen`'s form of a listener.
    pub fn mx(address: SocketAddr, tls_configured: bool) -> Listener {
        Listener {
            address,
            role: ListenerRole::Mx,
            tls: if tls_configured { ListenerTls::StartTls } else { ListenerTls::None },
            relay_networks: None,
            frontline: true,
            auth: false,
        }
    }
}

/// Where `[auth]` checks a password (`auth.backend`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SaslBackend {
    /// `auth.table`: `user:hash` lines (text or cdb).
    Table(PathBuf),
    /// `auth.dovecot_socket`: Dovecot's auth client socket.
    Dovecot(PathBuf),
    /// `auth.ldap` and `auth.ldap_bind_dn`: a simple bind as the user.
    Ldap { url: String, bind_dn: String },
}

impl SaslBackend {
    pub fn as_str(&self) -> &'static str {
        match self {
            SaslBackend::Table(_) => "table",
            SaslBackend::Dovecot(_) => "dovecot",
            SaslBackend::Ldap { .. } => "ldap",
        }
    }
}

/// `[auth]`: SMTP AUTH for the listeners that offer it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sasl {
    pub backend: SaslBackend,
    /// Failed attempts one session may make; the next gets 421 4.7.0 and
    /// the session is closed. Default 3.
    pub max_failures: u32,
    /// Failed attempts from one client address within `failure_window`;
    /// past it AUTH gets 421 4.7.0 at once. Default 10.
    pub max_failures_per_client: u32,
    /// Default "10m".
    pub failure_window: Duration,
    /// The wait before each 535 reply. Default "1s".
    pub failure_delay: Duration,
    /// Checks running at once (back-end workers, shared by the process).
    /// Default 4.
    pub max_concurrent: usize,
    /// Checks waiting for a worker; one more gets 454 4.7.0. Default 64.
    pub queue_max: usize,
    /// Longest a check waits for its answer. Default "10s".
    pub timeout: Duration,
    /// Address -> logins allowed to send as it (text or cdb). Default unset
    /// (any sender).
    pub sender_login_maps: Option<PathBuf>,
}
