//! Configuration: one TOML file, `--set key=value` overrides, validation with
//! file/line/key in every error, and the embedded default that `ringpost serve`
//! runs with when no file is given. Every key is documented in `docs/config.md`.
//!
//! Place in the pipeline: read once at start-up by `main`, then shared
//! read-only (`Arc<Config>`) by every shard.
//!
//! SKELETON: the field set below is the agreed contract; loading, overrides,
//! validation and printing are filled in by the config work.

use std::net::SocketAddr;
use std::path::PathBuf;

/// A duration written in the config as `"250ms"`, `"30s"`, `"5m"`, `"1h"`, `"5d"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Duration(pub std::time::Duration);

/// An IPv4 or IPv6 network written as `"127.0.0.0/8"` or `"::1/128"` (a bare
/// address means a host network).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub prefix_len: u8,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub server: Server,
    pub smtp: Smtp,
    pub domains: Domains,
    pub local: Local,
    pub relay: Relay,
    pub delivery: Delivery,
    pub queue: Queue,
}

#[derive(Clone, Debug)]
pub struct Server {
    /// Name in the greeting, EHLO reply, Received headers, bounces. Default: the system host name.
    pub hostname: String,
    /// Addresses every shard listens on (SO_REUSEPORT). Default `["127.0.0.1:2525"]`.
    pub listen: Vec<SocketAddr>,
    /// Number of shards (executors). 0 = one per available core. Default 0.
    pub shards: usize,
    /// Pin each shard to its own core. Default true.
    pub pin: bool,
    /// Concurrent SMTP sessions per shard; beyond it new connections get 421 4.3.2. Default 10000.
    pub max_sessions_per_shard: usize,
    /// On SIGTERM/SIGINT: how long sessions may finish their transaction. Default "30s".
    pub drain_timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BareLf {
    /// A message containing a bare CR or LF is refused (550 5.6.11 after the final dot).
    Reject,
    /// Bare CR and bare LF are stored as CRLF; they never end DATA.
    Normalize,
}

#[derive(Clone, Debug)]
pub struct Smtp {
    /// Text after the host name in the 220 greeting. Default "ESMTP ringpost".
    pub greeting: String,
    /// Recipients per transaction; more get 452 4.5.3. Default 1000.
    pub max_recipients: usize,
    /// Largest message accepted (advertised in SIZE); larger gets 552 5.3.4. Default 26214400.
    pub max_message_bytes: u64,
    /// Longest DATA text line including CRLF (RFC 5321 §4.5.3.1.6). Default 1000.
    pub max_text_line_bytes: usize,
    /// Errors in one session before 421 4.7.0 and close. Default 10.
    pub max_errors: u32,
    /// Wait for a command (RFC 5321 §4.5.3.2.7: at least 5 minutes). Default "5m".
    pub command_timeout: Duration,
    /// Wait for the next block of DATA/BDAT content. Default "5m".
    pub data_timeout: Duration,
    /// Policy for bare CR/LF in DATA. Default "reject".
    pub bare_lf: BareLf,
}

#[derive(Clone, Debug)]
pub struct Domains {
    /// Domains delivered locally (Maildir). Default `["localhost"]`.
    pub local: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Local {
    /// Maildir path template; `{user}` is the recipient's local part (lower-cased,
    /// subaddress kept). Default "./var/mail/{user}/Maildir".
    pub maildir: String,
}

#[derive(Clone, Debug)]
pub struct Relay {
    /// Clients that may relay to any domain. Default `["127.0.0.0/8", "::1/128"]`.
    pub networks: Vec<Cidr>,
    /// Domains anyone may relay to (we are their MX). Default `[]`.
    pub domains: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Delivery {
    /// Next hop for every non-local recipient, "host:port". Default: unset (relayed
    /// recipients get 451 4.4.4 at RCPT until it is set).
    pub smarthost: Option<String>,
    /// Name sent in EHLO by the outbound client. Default: `server.hostname`.
    pub helo_name: Option<String>,
    /// Concurrent delivery attempts per shard. Default 100.
    pub max_concurrent_per_shard: usize,
    /// Outbound TCP connect timeout. Default "30s".
    pub connect_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct Queue {
    /// Spool directories; shard i uses `spool[i % n]`. Default `["./var/spool"]`.
    pub spool: Vec<PathBuf>,
    /// First retry delay after a temporary failure; doubles per attempt. Default "5m".
    pub retry_interval: Duration,
    /// Longest retry delay. Default "1h".
    pub retry_interval_max: Duration,
    /// Messages older than this bounce instead of being retried. Default "5d".
    pub max_age: Duration,
}
