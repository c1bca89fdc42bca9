//! Configuration: one TOML file, `--set key=value` overrides, validation with
//! file/line/key in every error, and the embedded default that `ringpost serve`
//! runs with when no file is given. Every key is documented in `docs/config.md`.
//!
//! Place in the pipeline: read once at start-up by `main`, then shared
//! read-only (`Arc<Config>`) by every shard.
//!
//! Loading runs in two steps: the file and the overrides are merged into one
//! tree that remembers where each key and value was written (`source.rs`),
//! then the typed `Config` is read out of it with every value checked
//! (`read.rs`). `to_toml` (`print.rs`) prints the effective configuration.

mod email_auth;
mod submission;
mod sieve;
mod error;
mod print;
mod read;
mod source;
#[cfg(test)]
mod tests;
mod types;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

pub use email_auth::{DkimSign, DmarcMode, EmailAuth, SpfMode, DKIM_SIGN_HEADERS_DEFAULT};
pub use sieve::Sieve;
pub use submission::{Listener, ListenerRole, ListenerTls, Sasl, SaslBackend};
pub use error::{ConfigError, Origin};
pub use read::SHARD_COUNT_MAX;
pub use types::{check_host_name, check_smarthost, HOST_NAME_BYTES_MAX};

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

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub server: Server,
    pub smtp: Smtp,
    pub domains: Domains,
    pub local: Local,
    pub relay: Relay,
    pub delivery: Delivery,
    pub dns: Dns,
    pub tls: Tls,
    pub queue: Queue,
    /// `[[transport]]` rules, first match wins. Default: none.
    pub transports: Vec<TransportRule>,
    pub route: Route,
    /// `[pool.<name>]` limits for network lookup sources, by name.
    pub pools: Vec<(String, crate::pool::PoolParams)>,
    /// The `[[router]]` tables in order. Empty (the default): recipients are
    /// classified by `domains.local` and the relay settings alone.
    pub routers: Vec<Router>,
    pub verify: Verify,
    /// `[[scanner]]` tables: content scanners run in order over each
    /// message at its final dot. Default: none.
    pub scanners: Vec<Scanner>,
    pub replicate: Replicate,
    pub policy: Policy,
    /// `[[dnsbl]]` zones the front line scores each client with. Default: none.
    pub dnsbls: Vec<Dnsbl>,
    /// `[[helo_check]]` rules for HELO/EHLO names, first match wins. Default: none.
    pub helo_checks: Vec<HeloCheck>,
    /// `[email_auth]`: SPF, DKIM, DMARC and ARC verification of inbound
    /// mail. Default: absent (nothing is verified).
    pub email_auth: Option<EmailAuth>,
    /// `[[dkim_sign]]`: DKIM keys for outbound mail. Default: none.
    pub dkim_sign: Vec<DkimSign>,
    /// `[sieve]`: users' Sieve scripts, run at RCPT and at the final dot.
    /// Default: absent (no scripts run).
    pub sieve: Option<Sieve>,
    pub log: Log,
    pub metrics: Metrics,
    /// `[[listener]]` tables, besides the mx listeners of `server.listen`.
    /// Default: none.
    pub listeners: Vec<Listener>,
    /// `[auth]`: SMTP AUTH (RFC 4954) for the listeners that offer it.
    /// Default: absent (no AUTH).
    pub sasl: Option<Sasl>,
}

/// `[metrics]`: the Prometheus metrics responder (`crate::metrics`,
/// `docs/metrics.md`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Where `GET /metrics` is served. Default: unset (no responder).
    pub listen: Option<SocketAddr>,
}

/// `[log]`: where and how event lines are written (`crate::log`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log {
    /// `"kv"` (`key=value`, the default) or `"json"` (one object a line);
    /// `--log-format` overrides it.
    pub format: String,
    /// Send lines to the syslog socket (facility mail) instead of stderr.
    /// Default false.
    pub syslog: bool,
    /// The syslog socket. Default `/dev/log` (the journal's, under systemd).
    pub syslog_socket: PathBuf,
    /// `"info"` (the default: every event) or `"warning"` (only events
    /// that report a problem: `crate::log::is_warning`). Reloadable.
    pub level: String,
}

impl Default for Log {
    fn default() -> Log {
        Log {
            format: "kv".to_string(),
            syslog: false,
            syslog_socket: PathBuf::from("/dev/log"),
            level: "info".to_string(),
        }
    }
}

/// `[policy]`: the front line's checks on clients, HELO, senders and
/// recipients, and its per-client limits (`docs/config.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// IPv6 clients are counted per network of this prefix length (a
    /// host's /64 is usually all one customer). Default 64.
    pub ipv6_prefix_len: u8,
    /// Concurrent sessions of one client; beyond it 421 4.7.0 at connect.
    /// 0 = no limit. Default 50.
    pub max_sessions_per_client: u32,
    /// Connections one client may open per minute (a token bucket of this
    /// size refilled over a minute); beyond it 421 4.7.0. 0 = no limit. Default 0.
    pub max_connections_per_minute: u32,
    /// Messages (accepted MAIL commands) per client per minute; beyond it
    /// 451 4.7.0 at MAIL. 0 = no limit. Default 0.
    pub max_messages_per_minute: u32,
    /// Recipients per client per minute; beyond it 451 4.7.0 at RCPT.
    /// 0 = no limit. Default 0.
    pub max_recipients_per_minute: u32,
    /// Clients no per-client limit applies to (besides `relay.networks`). Default none.
    pub exempt_networks: Vec<Cidr>,
    /// Most clients the per-client table tracks at once; idle ones are
    /// evicted first. Default 100000.
    pub client_table_entries: usize,
    /// access(5) tables (text, or cdb when the name ends in `.cdb`),
    /// consulted at RCPT in this order: client, HELO, sender, recipient.
    /// Default: unset.
    pub client_access: Option<PathBuf>,
    pub helo_access: Option<PathBuf>,
    pub sender_access: Option<PathBuf>,
    pub recipient_access: Option<PathBuf>,
    /// The front line's client, greeting, HELO and reverse-DNS checks
    /// (`crate::frontline`).
    pub front: FrontPolicy,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            ipv6_prefix_len: 64,
            max_sessions_per_client: 50,
            max_connections_per_minute: 0,
            max_messages_per_minute: 0,
            max_recipients_per_minute: 0,
            exempt_networks: Vec::new(),
            client_table_entries: 100_000,
            client_access: None,
            helo_access: None,
            sender_access: None,
            recipient_access: None,
            front: FrontPolicy::default(),
        }
    }
}

/// The `[policy]` keys of the front line (`crate::frontline`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontPolicy {
    /// A client whose summed `[[dnsbl]]` weight reaches this is refused. Default 1.
    pub dnsbl_threshold: i64,
    /// Where a listed client is refused. Default "reject_at_greeting".
    pub dnsbl_action: DnsblAction,
    /// A DNSBL lookup without an answer by then counts as "not listed". Default "2s".
    pub dnsbl_timeout: Duration,
    /// The wait before the 220 greeting; input before it is an early talker. Default "0s".
    pub greet_pause: Duration,
    /// Refuse pipelining that was not offered (RFC 2920). Default true.
    pub strict_pipelining: bool,
    /// Refuse MAIL after a HELO name that fails an enabled built-in check
    /// (off: such failures are only logged). Default false.
    pub helo_require: bool,
    /// Built-in check: the HELO name is ours (host name or local address). Default false.
    pub helo_reject_own_name: bool,
    /// Built-in check: an address literal that is not the client's. Default false.
    pub helo_reject_ip_mismatch: bool,
    /// Built-in check: neither a valid domain nor an address literal. Default false.
    pub helo_reject_invalid: bool,
    /// Reverse DNS of the client. Default "off".
    pub reverse_dns: ReverseDns,
}

impl Default for FrontPolicy {
    fn default() -> FrontPolicy {
        FrontPolicy {
            dnsbl_threshold: 1,
            dnsbl_action: DnsblAction::RejectAtGreeting,
            dnsbl_timeout: Duration::from_secs(2),
            greet_pause: Duration::from_secs(0),
            strict_pipelining: true,
            helo_require: false,
            helo_reject_own_name: false,
            helo_reject_ip_mismatch: false,
            helo_reject_invalid: false,
            reverse_dns: ReverseDns::Off,
        }
    }
}

/// `policy.dnsbl_action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DnsblAction {
    /// 554 instead of the 220 greeting, then close.
    RejectAtGreeting,
    /// 554 to every RCPT (except to postmaster@).
    RejectAtRcpt,
}

impl DnsblAction {
    pub fn as_str(self) -> &'static str {
        match self {
            DnsblAction::RejectAtGreeting => "reject_at_greeting",
            DnsblAction::RejectAtRcpt => "reject_at_rcpt",
        }
    }
}

/// `policy.reverse_dns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReverseDns {
    Off,
    /// The client address has a PTR record.
    Require,
    /// A PTR name that resolves back to the client address (FCrDNS).
    RequireForwardConfirmed,
}

impl ReverseDns {
    pub fn as_str(self) -> &'static str {
        match self {
            ReverseDns::Off => "off",
            ReverseDns::Require => "require",
            ReverseDns::RequireForwardConfirmed => "require_forward_confirmed",
        }
    }
}

/// A `[[dnsbl]]` table: a DNS list queried with the client's reversed
/// address under `zone`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dnsbl {
    /// Lower-case, without the final dot.
    pub zone: String,
    /// The A records that count as listed, as inclusive ranges; empty: any.
    pub answers: Vec<(Ipv4Addr, Ipv4Addr)>,
    /// Added to the client's score when listed; negative for an allowlist. Default 1.
    pub weight: i64,
}

/// A `[[helo_check]]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeloCheck {
    pub matcher: HeloMatch,
    pub action: HeloAction,
    /// The reply text for action "reject". Default "Client host rejected: HELO name refused".
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeloMatch {
    /// `pattern`: a regular expression (case-insensitive) over the whole name.
    Pattern(String),
    /// `name`: the name itself, case-insensitive.
    Name(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeloAction {
    /// 550 5.7.1 with the rule's text.
    Reject,
    /// A known malware signature: counted as such, 550 5.7.1.
    Tag,
}

impl HeloAction {
    pub fn as_str(self) -> &'static str {
        match self {
            HeloAction::Reject => "reject",
            HeloAction::Tag => "tag",
        }
    }
}

/// `[replicate]`: before the 250, a copy of each message queued here is
/// also stored by a peer ringpost (`docs/replication.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replicate {
    /// "host:port" of the peer that holds this node's replicas. Default:
    /// unset (this node sends none).
    pub peer: Option<String>,
    /// How long the reply to the final dot waits for the peer. Default "5s".
    pub timeout: Duration,
    /// The peer did not store the copy in time: `tempfail` (451 4.3.0, the
    /// client tries again) or `accept` (250, the message is held here
    /// alone). Default tempfail.
    pub on_failure: OnFailure,
    /// A replica held here is delivered once the peer it belongs to has
    /// been silent (no replica, completion or heartbeat) for this long
    /// since it was stored. Default "30m".
    pub takeover_after: Duration,
    /// Clients that may store replicas here. Default: the peer's address
    /// (a pair replicating to each other), none without a peer.
    pub accept_from: Vec<Cidr>,
}

/// What a content scanner speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScannerKind {
    /// SpamAssassin's spamd (SPAMC/1.5).
    Spamd,
    /// ClamAV's clamd (zINSTREAM).
    Clamd,
    /// rspamd (HTTP `/checkv2`).
    Rspamd,
    /// A program reading the message on its standard input.
    Pipe,
}

impl ScannerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScannerKind::Spamd => "spamd",
            ScannerKind::Clamd => "clamd",
            ScannerKind::Rspamd => "rspamd",
            ScannerKind::Pipe => "pipe",
        }
    }
}

/// What a scanner that fails (cannot be reached, times out, answers
/// nonsense) means for the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    /// `451 4.7.1`: the client tries again later.
    Tempfail,
    /// The message goes on as if this scanner had accepted it.
    Accept,
}

impl OnFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            OnFailure::Tempfail => "tempfail",
            OnFailure::Accept => "accept",
        }
    }
}

/// A spam score in thousandths (`reject_score = 7.5` is 7500).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Score(pub i64);

impl Score {
    pub fn from_f64(score: f64) -> Score {
        Score((score * 1000.0).round() as i64)
    }

    pub fn as_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }
}

/// One `[[scanner]]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scanner {
    /// Unique; in logs and replies.
    pub name: String,
    pub kind: ScannerKind,
    /// `"host:port"` or `"unix:/path"`; empty for a pipe scanner.
    pub address: String,
    /// pipe: the program and its arguments (no shell).
    pub command: Vec<String>,
    /// pipe: the user and group it runs as (default `nobody`).
    pub user: Option<String>,
    pub group: Option<String>,
    /// Longest scan, waiting for a slot included. Default "30s".
    pub timeout: Duration,
    /// Scans running at once per shard. Default 8.
    pub max_concurrent: usize,
    /// Scans waiting for a slot per shard; one more gets 451 at once. Default 64.
    pub queue_max: usize,
    /// Default tempfail.
    pub on_failure: OnFailure,
    /// Larger messages are not given to this scanner. Default: unset (all).
    pub max_size_bytes: Option<u64>,
    /// spamd: refuse at or above this score; below it, accept and add the
    /// X-Spam headers. Default: unset (refuse what spamd calls spam).
    pub reject_score: Option<Score>,
}

/// `[verify]`: call-forward recipient verification (callouts), for the
/// rules and routers with `verify = "callout"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verify {
    /// How long a client's RCPT waits for a callout; after it, 451 4.4.3
    /// and the callout goes on to fill the cache. Default "20s".
    pub callout_timeout: Duration,
    /// How long an accepted address (or an accept-all domain) is cached. Default "24h".
    pub callout_positive_ttl: Duration,
    /// How long a refused address (or a domain refusing the probe's sender) is cached. Default "2h".
    pub callout_negative_ttl: Duration,
    /// Cached results per shard; the oldest go first. Default 1000000.
    pub callout_cache_entries: usize,
    /// Callouts in flight at once to one target host. Default 8.
    pub callout_max_per_host: usize,
    /// Callouts per second to one target domain (token bucket, burst the same). Default 50.
    pub callout_rate_per_domain: u32,
}

/// The sender of a callout's `MAIL FROM`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CalloutSender {
    /// `<>` (the default).
    Null,
    /// A fixed address, e.g. `postmaster@relay.example`.
    Address(String),
    /// The envelope sender of the transaction being verified (results are
    /// cached per sender and address).
    UseSender,
}

impl CalloutSender {
    pub fn as_config(&self) -> String {
        match self {
            CalloutSender::Null => "<>".to_string(),
            CalloutSender::Address(address) => address.clone(),
            CalloutSender::UseSender => "use-sender".to_string(),
        }
    }
}

/// `verify = "callout"` on a `[[transport]]` rule or a `[[router]]`: its
/// recipients are verified at RCPT by asking the next hop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Callout {
    /// `callout_random`: first ask for a random local part; a domain that
    /// accepts it accepts everything and is not verified per address.
    pub random: bool,
    /// `callout_sender`.
    pub sender: CalloutSender,
    /// `callout_defer_ok`: a callout that could not decide accepts the RCPT.
    pub defer_ok: bool,
}

/// How a transport rule delivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    Smtp,
    Lmtp,
    Pipe,
    Maildir,
}

impl TransportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Smtp => "smtp",
            TransportKind::Lmtp => "lmtp",
            TransportKind::Pipe => "pipe",
            TransportKind::Maildir => "maildir",
        }
    }
}

impl std::str::FromStr for TransportKind {
    type Err = String;

    fn from_str(text: &str) -> Result<TransportKind, String> {
        match text {
            "smtp" => Ok(TransportKind::Smtp),
            "lmtp" => Ok(TransportKind::Lmtp),
            "pipe" => Ok(TransportKind::Pipe),
            "maildir" => Ok(TransportKind::Maildir),
            _ => Err(format!("must be \"smtp\", \"lmtp\", \"pipe\" or \"maildir\", not {text:?}")),
        }
    }
}

/// One `[[transport]]` table: where mail for some domains goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportRule {
    /// "example.org" (that domain), ".example.org" (its subdomains) or "*".
    pub domains: Vec<String>,
    pub transport: TransportKind,
    /// smtp: "host:port" (the domain's MX hosts when unset); lmtp:
    /// "unix:/path" or "host:port".
    pub nexthop: Option<String>,
    /// smtp: overrides `delivery.tls`.
    pub tls: Option<TlsPolicy>,
    /// smtp: overrides `delivery.source_address` (at most one per family).
    pub source_address: Option<Vec<IpAddr>>,
    /// smtp: overrides `delivery.helo_name` for this rule's connections.
    pub helo_name: Option<String>,
    /// smtp and lmtp: overrides `delivery.max_connections_per_destination`.
    pub max_connections: Option<usize>,
    /// pipe: the program and its arguments (no shell).
    pub command: Vec<String>,
    /// pipe: the user and group it runs as.
    pub user: Option<String>,
    pub group: Option<String>,
    /// pipe: how long it may run.
    pub timeout: Duration,
    /// maildir: the path template (`{user}`); default `local.maildir`.
    pub maildir: Option<String>,
    /// smtp and lmtp: `verify = "callout"` and its options.
    pub callout: Option<Callout>,
}

impl TransportRule {
    /// Whether this rule covers `domain` (case-insensitive, without a final dot).
    pub fn matches(&self, domain: &str) -> bool {
        let domain = domain.trim_end_matches('.');
        self.domains.iter().any(|pattern| {
            if pattern == "*" {
                return true;
            }
            match pattern.strip_prefix('.') {
                Some(parent) => {
                    domain.len() > parent.len()
                        && domain[domain.len() - parent.len()..].eq_ignore_ascii_case(parent)
                        && domain.as_bytes()[domain.len() - parent.len() - 1] == b'.'
                }
                None => pattern.trim_end_matches('.').eq_ignore_ascii_case(domain),
            }
        })
    }

    /// Whether the rule names `domain` itself (not only through "*"): mail
    /// for it is accepted from any client, as for `relay.domains`.
    pub fn names(&self, domain: &str) -> bool {
        let named = TransportRule { domains: self.domains.iter().filter(|d| *d != "*").cloned().collect(), ..self.clone() };
        named.matches(domain)
    }
}

impl Config {
    /// The first transport rule for `domain`.
    pub fn transport_for(&self, domain: &str) -> Option<&TransportRule> {
        self.transports.iter().find(|rule| rule.matches(domain))
    }
}

/// Outbound TLS policy (Postfix's security levels of the same names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsPolicy {
    /// Never STARTTLS.
    None,
    /// STARTTLS when the server offers it; plaintext otherwise, or when the
    /// handshake fails (the message is then sent on a new plain connection).
    May,
    /// STARTTLS required: a server that does not offer it, or a failed
    /// handshake, defers the message (4.7.4 / 4.7.5).
    Encrypt,
    /// As `Encrypt`, and the certificate must chain to a trusted root
    /// (`delivery.tls_ca_file`, else the system's) and name the host
    /// connected to; otherwise the message is deferred (4.7.5).
    Verify,
}

impl TlsPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            TlsPolicy::None => "none",
            TlsPolicy::May => "may",
            TlsPolicy::Encrypt => "encrypt",
            TlsPolicy::Verify => "verify",
        }
    }
}

impl std::str::FromStr for TlsPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<TlsPolicy, String> {
        match text {
            "none" => Ok(TlsPolicy::None),
            "may" => Ok(TlsPolicy::May),
            "encrypt" => Ok(TlsPolicy::Encrypt),
            "verify" => Ok(TlsPolicy::Verify),
            _ => Err(format!("must be \"none\", \"may\", \"encrypt\" or \"verify\", not {text:?}")),
        }
    }
}

/// Inbound TLS.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Tls {
    /// PEM certificate chain; with `key`, STARTTLS is offered. Default unset.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`. Default unset.
    pub key: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// The control socket (`ringpost stats`). Default: unset, which is
    /// `ringpost.sock` in the first spool directory.
    pub control_socket: Option<PathBuf>,
    /// The account to run as once the listeners are bound (`crate::privdrop`).
    /// Default: unset (no drop).
    pub user: Option<String>,
    /// Run as root without `user` although a configuration file is given.
    /// Default false.
    pub allow_root: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BareLf {
    /// A message containing a bare CR or LF is refused (550 5.6.11 after the final dot).
    Reject,
    /// Bare CR and bare LF are stored as CRLF; they never end DATA.
    Normalize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nul {
    /// A message with a NUL octet in its text is refused (550 5.6.0 after its end).
    Reject,
    /// NUL octets are removed from the stored content.
    Strip,
}

#[derive(Clone, Debug, PartialEq, Eq)]
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
    /// Time for one command line, from the wait for it to its end (RFC 5321
    /// §4.5.3.2.7: at least 5 minutes). Default "5m".
    pub command_timeout: Duration,
    /// Time for each 64 KiB block of DATA/BDAT content. Default "5m".
    pub data_timeout: Duration,
    /// Policy for bare CR/LF in DATA and BDAT, and bare LF after a command. Default "reject".
    pub bare_lf: BareLf,
    /// Policy for NUL in DATA and in BDAT without BODY=BINARYMIME. Default "reject".
    pub nul: Nul,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Domains {
    /// Domains delivered locally (Maildir). Default `["localhost"]`.
    pub local: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Local {
    /// Maildir path template; `{user}` is the recipient's local part (lower-cased,
    /// subaddress kept). Default "./var/mail/{user}/Maildir".
    pub maildir: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relay {
    /// Clients that may relay to any domain. Default `["127.0.0.0/8", "::1/128"]`.
    pub networks: Vec<Cidr>,
    /// Domains anyone may relay to (we are their MX). Default `[]`.
    pub domains: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// Next hop for every non-local recipient, "host:port". Default: unset (relayed
    /// recipients go to the MX hosts of their domain).
    pub smarthost: Option<String>,
    /// TCP port of the MX hosts connected to. Default 25.
    pub port: u16,
    /// Name sent in EHLO by the outbound client. Default: `server.hostname`.
    pub helo_name: Option<String>,
    /// Concurrent delivery attempts per shard. Default 100.
    pub max_concurrent_per_shard: usize,
    /// Outbound TCP connect timeout. Default "30s".
    pub connect_timeout: Duration,
    /// Connections open at once per shard to one destination (a domain, or
    /// the smarthost). Default 20.
    pub max_connections_per_destination: usize,
    /// Outbound connections open at once per shard, in use or idle. Default 200.
    pub max_connections_per_shard: usize,
    /// How long an idle connection is kept for the next message to the same
    /// host. "0s" closes each connection after its message. Default "5s".
    pub connection_reuse_time: Duration,
    /// Transactions sent over one connection before it is closed. Default 100.
    pub max_transactions_per_connection: u32,
    /// STARTTLS toward next hops. Default "may".
    pub tls: TlsPolicy,
    /// Early delivery: after the final dot, try the next hop for up to this
    /// many milliseconds before committing the message. Default 0 (off).
    pub early_ms: u32,
    /// Accept and queue, deliver nothing: delivery takes no message from
    /// the queue (maintenance, measuring acceptance alone). Default false.
    pub hold_all: bool,
    /// Small text content goes in BDAT with MAIL and RCPT to next hops that
    /// offer CHUNKING and PIPELINING (RFC 3030), instead of after DATA.
    /// Default true.
    pub chunking: bool,
    /// Local addresses outbound connections are made from, at most one per
    /// family (IPv4, IPv6). Default: empty (the kernel chooses).
    pub source_address: Vec<IpAddr>,
    /// PEM roots for `tls = "verify"` and MTA-STS. Default: unset, the
    /// system's (`/etc/ssl/certs/ca-certificates.crt`).
    pub tls_ca_file: Option<PathBuf>,
    /// MTA-STS (RFC 8461) for MX deliveries. Default false.
    pub mta_sts: bool,
    /// PEM roots for the HTTPS fetch of MTA-STS policies. Default: unset,
    /// `tls_ca_file`'s roots.
    pub mta_sts_ca_file: Option<PathBuf>,
    /// DANE (RFC 7672) for MX deliveries, with a trusted validating
    /// resolver (`dns.dnssec_trusted`). Default false.
    pub dane: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dns {
    /// Recursive name servers, "addr" or "addr:port" ("[v6]:port"). Default:
    /// empty, meaning the `nameserver` lines of /etc/resolv.conf.
    pub servers: Vec<SocketAddr>,
    /// Wait for each query. Default: resolv.conf's `timeout`, else "5s".
    pub timeout: Option<Duration>,
    /// Rounds over the servers. Default: resolv.conf's `attempts`, else 2.
    pub attempts: Option<u32>,
    /// Whether the servers' AD bit (RFC 4035 §3.2.3) is believed. Default:
    /// unset, believed only when every server is a loopback address.
    pub dnssec_trusted: Option<bool>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queue {
    /// Spool directories; shard i uses `spool[i % n]`. Default `["./var/spool"]`.
    pub spool: Vec<PathBuf>,
    /// The lags of the retry runners behind the retry log's write point,
    /// shortest first. A message's n-th retry waits the n-th lag (the last
    /// one repeats). Default ["5m", "30m", "1h", "2h", "4h"].
    pub retry_lags: Vec<Duration>,
    /// Largest message kept inside its envelope record; larger ones get a
    /// body file. Default 65536, at most 1048576.
    pub inline_max_bytes: u32,
    /// Size of each log segment file. Default 64 MiB.
    pub segment_size_bytes: u64,
    /// How long the committer waits for more records before a flush, in
    /// microseconds. Default 0 (flush as soon as the previous flush returned).
    pub commit_delay_us: u32,
    /// How the committer makes a batch's body files durable: `"each"`
    /// (an fdatasync per file, all in flight together; the default) or
    /// `"syncfs"` (one syncfs(2) of the spool's file system per batch).
    pub body_sync: String,
    /// Where a fresh message's body above `inline_max_bytes` goes: `"log"`
    /// (appended to the shard's body log, flushed once per batch; the
    /// default) or `"files"` (a body file per message, flushed as
    /// `body_sync` says).
    pub body_store: String,
    /// Messages older than this bounce instead of being retried. Default "5d".
    pub max_age: Duration,
    /// A message still pending this long after its arrival gets one delay
    /// warning (`action: delayed` DSN) to its sender. Default "4h"; "0s": none.
    pub delay_warning_after: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Rewrites (rewrite rules and virtual-table targets) one address may go
    /// through before routing gives up with 550 5.4.6. Default 10.
    pub max_rewrites: u32,
    /// Nesting of alias expansions (aliases of aliases, `:include:`). Default 20.
    pub max_alias_depth: u32,
    /// Addresses one recipient may expand to (alias lists). Default 1000.
    pub max_expansion: usize,
    /// Characters that start a subaddress (`user+detail`), tried in order;
    /// the first one present splits. Default `["+"]`; `[]` turns subaddressing off.
    pub subaddress_separators: Vec<String>,
    /// Route the MAIL FROM address in verify mode too; a reject becomes the
    /// reply to MAIL. Default false.
    pub verify_sender: bool,
    /// How long lookup results from SQLite (and pooled) sources are cached. Default "60s".
    pub cache_ttl: Duration,
    /// Cached results per source. Default 10000.
    pub cache_entries: usize,
    /// SQLite lookups in flight at once (each on a blocking thread). Default 4.
    pub sqlite_max_in_flight: usize,
}

/// The driver of a router: what it does with an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    Rewrite,
    Aliases,
    Virtual,
    Mailertable,
    LocalUsers,
    Dnslookup,
    Smarthost,
}

impl Driver {
    pub const ALL: [Driver; 7] = [
        Driver::Rewrite,
        Driver::Aliases,
        Driver::Virtual,
        Driver::Mailertable,
        Driver::LocalUsers,
        Driver::Dnslookup,
        Driver::Smarthost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Rewrite => "rewrite",
            Driver::Aliases => "aliases",
            Driver::Virtual => "virtual",
            Driver::Mailertable => "mailertable",
            Driver::LocalUsers => "local_users",
            Driver::Dnslookup => "dnslookup",
            Driver::Smarthost => "smarthost",
        }
    }
}

/// One `[[router]]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Router {
    /// Name in logs and `ringpost route` output; unique.
    pub name: String,
    pub driver: Driver,
    /// Only addresses in these domains (`"@local"` stands for `domains.local`,
    /// `".example.org"` for every subdomain). Empty: any domain.
    pub domains: Vec<String>,
    /// Only these local parts (compared without subaddress). Empty: any.
    pub local_parts: Vec<String>,
    /// Only for these senders (`user@domain` or `@domain`). Empty: any.
    pub senders: Vec<String>,
    /// The table as a text file (cdb when the name ends in `.cdb`).
    pub file: Option<PathBuf>,
    /// The table as `sqlite:PATH`, `postgres:URL` or `ldap:URL`.
    pub source: Option<String>,
    /// The query of `source`; `?1` (SQL) or `%s` (LDAP) is the key.
    pub query: Option<String>,
    /// `rewrite`: regex → replacement rules, in order.
    pub rules: Vec<(String, String)>,
    /// `smarthost`: the next hop (`host:port`); default `delivery.smarthost`.
    pub host: Option<String>,
    /// Transport named in deliver outcomes. Default per driver: `local` for
    /// local_users, `smtp` for dnslookup and smarthost.
    pub transport: Option<String>,
    /// `postgres:` and `ldap:` sources: the `[pool.<name>]` limits to use.
    /// Default: the defaults of `crate::pool::PoolParams`.
    pub pool: Option<String>,
    /// dnslookup, smarthost, mailertable: `verify = "callout"` and its options.
    pub callout: Option<Callout>,
}

/// Reads the configuration: the TOML file at `path` if given (otherwise every
/// key takes its default), then each `--set key=value` override in order.
/// Unknown keys, wrong types and invalid values are refused with the file,
/// line, column and key (or the override) that caused them.
pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Config, ConfigError> {
    match path {
        None => load_str(Path::new("(none)"), "", overrides),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
            load_str(path, &text, overrides)
        }
    }
}

/// As `load`, with the file's text given; `path` names it in errors.
pub fn load_str(path: &Path, text: &str, overrides: &[String]) -> Result<Config, ConfigError> {
    let mut root = source::parse_file(path, text)?;
    for text in overrides {
        source::apply_override(&mut root, text)?;
    }
    read::read_config(&root, Config::default())
}

impl Config {
    /// The effective configuration as TOML, every key included; what
    /// `ringpost check-config` prints. Loading it gives back an equal `Config`.
    pub fn to_toml(&self) -> String {
        print::to_toml(self)
    }

    /// Number of shards to start: `server.shards`, or one per available core
    /// when it is 0.
    pub fn shard_count(&self) -> usize {
        match self.server.shards {
            0 => std::thread::available_parallelism().map_or(1, |count| count.get()).min(SHARD_COUNT_MAX),
            shards => shards,
        }
    }

    /// The control socket's path: `server.control_socket`, else
    /// `ringpost.sock` in the first spool directory.
    pub fn control_socket_path(&self) -> PathBuf {
        match &self.server.control_socket {
            Some(path) => path.clone(),
            None => self.spool_for_shard(0).join("ringpost.sock"),
        }
    }

    /// The vacation memory's file: `sieve.vacation_db`, or
    /// `sieve-vacation.sqlite` in the first spool directory.
    pub fn vacation_db_path(&self) -> Option<PathBuf> {
        let sieve = self.sieve.as_ref()?;
        Some(match &sieve.vacation_db {
            Some(path) => path.clone(),
            None => self.spool_for_shard(0).join("sieve-vacation.sqlite"),
        })
    }

    /// The spool directory of shard `shard`: `queue.spool[shard % n]`.
    pub fn spool_for_shard(&self, shard: usize) -> &Path {
        // Invariant: loading refuses an empty `queue.spool`.
        assert!(!self.queue.spool.is_empty(), "queue.spool must name at least one directory");
        &self.queue.spool[shard % self.queue.spool.len()]
    }

    /// Every listener: the addresses of `server.listen` (role mx, STARTTLS
    /// when `tls.cert` is set), then the `[[listener]]` tables.
    pub fn all_listeners(&self) -> Vec<Listener> {
        let tls = self.tls.cert.is_some() && self.tls.key.is_some();
        let simple = self.server.listen.iter().map(|address| Listener::mx(*address, tls));
        simple.chain(self.listeners.iter().cloned()).collect()
    }

    /// The name the outbound client sends in EHLO: `delivery.helo_name`, else
    /// `server.hostname`.
    pub fn helo_name(&self) -> &str {
        self.delivery.helo_name.as_deref().unwrap_or(&self.server.hostname)
    }
}

impl Relay {
    /// Whether a client at `ip` may relay to any domain (it is in `networks`).
    pub fn allows_client(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|network| network.contains(ip))
    }
}

impl Domains {
    /// Whether `domain` is delivered locally; case-insensitive, a trailing dot
    /// on either side ignored.
    pub fn is_local(&self, domain: &str) -> bool {
        let domain = domain.strip_suffix('.').unwrap_or(domain);
        self.local.iter().any(|local| local.strip_suffix('.').unwrap_or(local).eq_ignore_ascii_case(domain))
    }
}

/// The system host name (gethostname(2)), or "localhost" when it cannot be
/// read or is not a usable host name.
pub fn system_host_name() -> String {
    let mut buffer = [0u8; HOST_NAME_BYTES_MAX + 1];
    // SAFETY: the pointer and length describe `buffer`, which outlives the call.
    let rc = unsafe { libc::gethostname(buffer.as_mut_ptr().cast::<libc::c_char>(), buffer.len()) };
    if rc != 0 {
        return "localhost".to_string();
    }
    let name_len = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    match std::str::from_utf8(&buffer[..name_len]) {
        Ok(name) if check_host_name(name).is_ok() => name.to_string(),
        _ => "localhost".to_string(),
    }
}

impl Default for Config {
    /// The embedded default: a relay for the local host that listens on
    /// 127.0.0.1:2525 and keeps its spool and mail under the working directory.
    fn default() -> Config {
        Config {
            server: Server::default(),
            smtp: Smtp::default(),
            domains: Domains::default(),
            local: Local::default(),
            relay: Relay::default(),
            delivery: Delivery::default(),
            dns: Dns::default(),
            tls: Tls::default(),
            queue: Queue::default(),
            transports: Vec::new(),
            pools: Vec::new(),
            route: Route::default(),
            routers: Vec::new(),
            verify: Verify::default(),
            replicate: Replicate::default(),
            policy: Policy::default(),
            scanners: Vec::new(),
            dnsbls: Vec::new(),
            helo_checks: Vec::new(),
            email_auth: None,
            dkim_sign: Vec::new(),
            sieve: None,
            log: Log::default(),
            metrics: Metrics::default(),
            listeners: Vec::new(),
            sasl: None,
        }
    }
}

impl Default for Replicate {
    fn default() -> Replicate {
        Replicate {
            peer: None,
            timeout: Duration(std::time::Duration::from_secs(5)),
            on_failure: OnFailure::Tempfail,
            takeover_after: Duration(std::time::Duration::from_secs(30 * 60)),
            accept_from: Vec::new(),
        }
    }
}

impl Default for Verify {
    fn default() -> Verify {
        Verify {
            callout_timeout: Duration::from_secs(20),
            callout_positive_ttl: Duration::from_secs(24 * 3600),
            callout_negative_ttl: Duration::from_secs(2 * 3600),
            callout_cache_entries: 1_000_000,
            callout_max_per_host: 8,
            callout_rate_per_domain: 50,
        }
    }
}

impl Default for Route {
    fn default() -> Route {
        Route {
            max_rewrites: 10,
            max_alias_depth: 20,
            max_expansion: 1000,
            subaddress_separators: vec!["+".to_string()],
            verify_sender: false,
            cache_ttl: Duration::from_secs(60),
            cache_entries: 10_000,
            sqlite_max_in_flight: 4,
        }
    }
}

impl Default for Server {
    fn default() -> Server {
        Server {
            hostname: system_host_name(),
            listen: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 2525))],
            shards: 0,
            pin: true,
            max_sessions_per_shard: 10_000,
            drain_timeout: Duration::from_secs(30),
            control_socket: None,
            user: None,
            allow_root: false,
        }
    }
}

impl Default for Smtp {
    fn default() -> Smtp {
        Smtp {
            greeting: "ESMTP ringpost".to_string(),
            max_recipients: 1000,
            max_message_bytes: 26_214_400,
            max_text_line_bytes: 1000,
            max_errors: 10,
            command_timeout: Duration::from_secs(5 * 60),
            data_timeout: Duration::from_secs(5 * 60),
            bare_lf: BareLf::Reject,
            nul: Nul::Reject,
        }
    }
}

impl Default for Domains {
    fn default() -> Domains {
        Domains { local: vec!["localhost".to_string()] }
    }
}

impl Default for Local {
    fn default() -> Local {
        Local { maildir: "./var/mail/{user}/Maildir".to_string() }
    }
}

impl Default for Relay {
    fn default() -> Relay {
        Relay {
            networks: vec![
                Cidr { addr: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), prefix_len: 8 },
                Cidr { addr: IpAddr::V6(Ipv6Addr::LOCALHOST), prefix_len: 128 },
            ],
            domains: Vec::new(),
        }
    }
}

impl Default for Delivery {
    fn default() -> Delivery {
        Delivery {
            smarthost: None,
            helo_name: None,
            port: 25,
            max_concurrent_per_shard: 100,
            connect_timeout: Duration::from_secs(30),
            max_connections_per_destination: 20,
            max_connections_per_shard: 200,
            connection_reuse_time: Duration::from_secs(5),
            max_transactions_per_connection: 100,
            tls: TlsPolicy::May,
            early_ms: 0,
            hold_all: false,
            chunking: true,
            source_address: Vec::new(),
            tls_ca_file: None,
            mta_sts: false,
            mta_sts_ca_file: None,
            dane: false,
        }
    }
}

impl Default for Dns {
    fn default() -> Dns {
        Dns { servers: Vec::new(), timeout: None, attempts: None, dnssec_trusted: None }
    }
}

impl Default for Queue {
    fn default() -> Queue {
        Queue {
            spool: vec![PathBuf::from("./var/spool")],
            retry_lags: [5 * 60, 30 * 60, 60 * 60, 2 * 60 * 60, 4 * 60 * 60]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            inline_max_bytes: 65536,
            segment_size_bytes: 64 << 20,
            commit_delay_us: 0,
            body_sync: "each".to_string(),
            body_store: "log".to_string(),
            max_age: Duration::from_secs(5 * 24 * 60 * 60),
            delay_warning_after: Duration::from_secs(4 * 60 * 60),
        }
    }
}
