//! The `ringpost` command: `serve` runs the MTA, `check-config` validates and
//! prints the effective configuration, `queue` shows what the spool holds,
//! `route` shows how the routers decide for an address, `makemap` builds a
//! cdb table, `stats` asks a running server for its counters, `sieve` checks
//! and tries Sieve scripts. SIGHUP while serving reloads every key that can
//! change without a restart (`ringpost::reload`). `serve` started as root drops to `server.user` once its
//! listeners are bound (`ringpost::privdrop`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ringpost", version, about = "A thread-per-core Mail Transfer Agent for high-volume relays")]
struct Cli {
    /// Configuration file (TOML). Without it the embedded default is used.
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    /// Override one key: `--set server.shards=1`, `--set 'server.listen=["127.0.0.1:2600"]'`.
    /// The value is TOML; a bare word is taken as a string.
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    overrides: Vec<String>,
    /// Log lines as `kv` (`key=value`, the default) or `json` (one object
    /// a line); overrides `log.format`.
    #[arg(long = "log-format", value_name = "FORMAT", global = true, value_parser = ["kv", "json"])]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the MTA until SIGTERM or SIGINT (then drain and exit).
    Serve,
    /// Validate the configuration and print it with every default filled in.
    CheckConfig,
    /// Look at the queue (list, show, stats, dump: on a running or stopped
    /// spool, reading only), or act on a running server's queue through its
    /// control socket (flush, hold, release, delete, bounce, requeue).
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Route addresses through the configured routers and print each step
    /// and the decision (like exim -bt).
    Route {
        /// Verify mode, as at RCPT: print the SMTP reply too.
        #[arg(long)]
        verify: bool,
        /// With --verify: perform the callouts of rules and routers with
        /// verify = "callout" (as for a client in relay.networks), print
        /// each conversation and the decision.
        #[arg(long)]
        callout: bool,
        /// The envelope sender (for routers with a `senders` condition).
        #[arg(long, default_value = "")]
        sender: String,
        #[arg(required = true)]
        addresses: Vec<String>,
    },
    /// The queue's live messages, like sendmail's mailq (`queue list`).
    Mailq,
    /// Ask the running server (through its control socket) for its counters
    /// by class: totals since start and per second over the last minute.
    Stats,
    /// Reload the running server (as SIGHUP: every key but those
    /// `check-config` lists as needing a restart) and print the outcome,
    /// with the changed keys that wait for a restart; exit status 1 when
    /// the new configuration was refused and the running one kept.
    Reload,
    /// Build TEXTFILE.cdb from a text table (written to a temporary file and
    /// renamed into place).
    Makemap {
        /// `cdb` (the only format; may be omitted) and the text table.
        #[arg(required = true, num_args = 1..=2)]
        args: Vec<String>,
    },
    /// sendmail(1): submit one message from standard input to the local
    /// server (`ringpost sendmail [-t] [-i] [-f sender] [-F name] [-oi]
    /// [-bs] [recipients…]`; also when the binary is called as
    /// `sendmail`). Exit codes from sysexits.h. Handled before the other
    /// commands, so this entry is for `--help` only.
    #[command(disable_help_flag = true)]
    Sendmail {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Check a Sieve script, or run one over a message and print its actions
    /// (docs/sieve.md).
    Sieve {
        #[command(subcommand)]
        command: SieveCommand,
    },
}

#[derive(Subcommand)]
enum SieveCommand {
    /// Compile a script: `FILE: OK`, or `FILE:LINE:COLUMN: message` and exit 1.
    Check { file: PathBuf },
    /// Evaluate a script over a message and print the actions, one a line.
    Test {
        /// The envelope sender (empty for the null sender).
        #[arg(long, default_value = "")]
        sender: String,
        /// The envelope recipient.
        #[arg(long)]
        recipient: String,
        /// Another of the user's addresses, for the vacation recipient check.
        #[arg(long = "address")]
        addresses: Vec<String>,
        /// Evaluate with the envelope only, as at RCPT time.
        #[arg(long)]
        envelope_only: bool,
        file: PathBuf,
        /// An RFC 5322 message file, `-` for standard input.
        message: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Every live message with its pending recipients, like mailq.
    List,
    /// One message's whole envelope.
    Show {
        /// The queue id (16 hex digits, as in the 250 reply and the logs).
        id: String,
    },
    /// Segments, live messages and body files per shard.
    Stats,
    /// Decode a segment file record by record.
    Dump {
        /// A segment file (`head-….seg`, `retry-….seg`).
        segment: PathBuf,
    },
    /// Attempt now: make a message (or every message) due at once.
    Flush(Which),
    /// Hold a message (or every message): never attempted until released,
    /// across restarts.
    Hold(Which),
    /// Release a held message (or every held message): due now.
    Release(Which),
    /// Remove a message (or every message) without a bounce.
    Delete(Which),
    /// Fail every pending recipient of a message now, with a bounce (DSN)
    /// to its sender, as for a message that expired.
    Bounce {
        /// The queue id (16 hex digits).
        id: String,
    },
    /// Route a message again from scratch at an attempt made now (after a
    /// routing change): routing is looked up at every attempt, so this
    /// flushes it and closes the shard's idle outbound connections.
    Requeue {
        /// The queue id (16 hex digits).
        id: String,
    },
}

/// One message by id, or `--all`.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct Which {
    /// The queue id (16 hex digits, as in the 250 reply and the logs).
    id: Option<String>,
    /// Every message in the queue.
    #[arg(long)]
    all: bool,
}

impl Which {
    fn target(&self) -> String {
        match &self.id {
            Some(id) if !self.all => id.clone(),
            _ => "ALL".to_string(),
        }
    }
}

fn main() -> ExitCode {
    // sendmail(1)'s options are not clap's: `ringpost [-c F] [--set K=V]
    // sendmail ...`, or the binary called as `sendmail` through a link.
    let argv: Vec<String> = std::env::args().collect();
    // The privileged pipe helper, started by `serve` as root before the
    // drop (crate::pipehelper); not a command for people, not in --help.
    if argv.len() == 2 && argv[1] == "pipe-helper" {
        return ringpost::pipehelper::main();
    }
    if let Some((config, overrides, args)) = sendmail_invocation(&argv) {
        return sendmail(config, &overrides, &args);
    }
    // Called as `mailq` through a link: the queue's list.
    if argv.first().and_then(|a| std::path::Path::new(a).file_name()).is_some_and(|n| n == "mailq") {
        return match ringpost::config::load(default_config_file().as_deref(), &[]) {
            Ok(config) => queue(&config, QueueCommand::List),
            Err(e) => {
                eprintln!("ringpost: {e}");
                ExitCode::from(2)
            }
        };
    }
    let cli = Cli::parse();
    // Sieve scripts are checked and tried without any configuration.
    let cli = match cli.command {
        Command::Sieve { command } => return sieve(command),
        command => Cli { command, ..cli },
    };
    let config = match ringpost::config::load(cli.config.as_deref(), &cli.overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringpost: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::CheckConfig => {
            if let Err(e) = ringpost::ingress::filters::check(&config) {
                eprintln!("ringpost: {e}");
                return ExitCode::from(2);
            }
            if let Some(e) = ringpost::deliver::security::Security::new(&config).problem(&config) {
                eprintln!("ringpost: {e}");
                return ExitCode::from(2);
            }
            print!("{}{}", config.to_toml(), ringpost::reload::restart_note());
            ExitCode::SUCCESS
        }
        Command::Serve => {
            let format = cli.log_format.as_deref().unwrap_or(&config.log.format);
            ringpost::log::set_format(if format == "json" { ringpost::log::Format::Json } else { ringpost::log::Format::KeyValue });
            if config.log.syslog {
                if let Err(e) = ringpost::log::use_syslog(&config.log.syslog_socket) {
                    eprintln!("ringpost: {e}");
                    return ExitCode::from(2);
                }
            }
            // SAFETY: geteuid only reads the process's effective uid.
            let euid = unsafe { libc::geteuid() };
            if let Some(refusal) = ringpost::privdrop::root_refusal(euid, &config, cli.config.is_some()) {
                eprintln!("ringpost: {refusal}");
                return ExitCode::from(2);
            }
            let identity = match privileges(&config) {
                Ok(identity) => identity,
                Err(e) => {
                    eprintln!("ringpost: {e}");
                    return ExitCode::from(2);
                }
            };
            serve(config, cli.config, cli.overrides, identity)
        }
        Command::Queue { command } => queue(&config, command),
        Command::Route { verify, callout, sender, addresses } if callout => {
            callout_route(config, verify, sender, addresses)
        }
        Command::Route { verify, sender, addresses, .. } => route(config, verify, sender, addresses),
        Command::Makemap { args } => makemap(&args),
        Command::Sieve { command } => sieve(command),
        Command::Sendmail { args } => sendmail(cli.config, &cli.overrides, &args),
        Command::Stats => printed(ringpost::control::ask(&config.control_socket_path(), "STATS")),
        Command::Reload => printed(ringpost::control::ask(&config.control_socket_path(), "RELOAD")),
        Command::Mailq => queue(&config, QueueCommand::List),
    }
}

fn makemap(args: &[String]) -> ExitCode {
    let path = match args {
        [path] => path,
        [kind, path] if kind == "cdb" => path,
        [kind, _] => {
            eprintln!("ringpost: makemap: unknown map type {kind:?} (only cdb)");
            return ExitCode::from(2);
        }
        _ => unreachable!("clap takes one or two arguments"),
    };
    match ringpost::route::table::makemap(std::path::Path::new(path)) {
        Ok((out, count)) => {
            println!("{}: {count} entries", out.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringpost: makemap: {e}");
            ExitCode::from(1)
        }
    }
}

/// The configuration file, overrides and sendmail arguments when the
/// command line is a sendmail(1) call.
fn sendmail_invocation(argv: &[String]) -> Option<(Option<PathBuf>, Vec<String>, Vec<String>)> {
    let called = std::path::Path::new(argv.first()?).file_name()?.to_str()?;
    let (mut config, mut overrides) = (None, Vec::new());
    if called == "sendmail" {
        return Some((default_config_file(), overrides, argv[1..].to_vec()));
    }
    let mut i = 1;
    while i < argv.len() {
        let arg = argv[i].as_str();
        match arg {
            "sendmail" => {
                let config = config.or_else(default_config_file);
                return Some((config, overrides, argv[i + 1..].to_vec()));
            }
            "-c" | "--config" => {
                config = Some(PathBuf::from(argv.get(i + 1)?));
                i += 1;
            }
            "--set" => {
                overrides.push(argv.get(i + 1)?.clone());
                i += 1;
            }
            a if a.starts_with("--config=") => config = Some(PathBuf::from(&a["--config=".len()..])),
            a if a.starts_with("--set=") => overrides.push(a["--set=".len()..].to_string()),
            _ => return None,
        }
        i += 1;
    }
    None
}

/// The configuration sendmail reads without `-c`: `$RINGPOST_CONFIG`, or
/// the package's `/etc/ringpost/ringpost.toml` when it exists, else the
/// embedded default.
fn default_config_file() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("RINGPOST_CONFIG") {
        return Some(PathBuf::from(path));
    }
    let installed = PathBuf::from("/etc/ringpost/ringpost.toml");
    installed.exists().then_some(installed)
}

/// `ringpost sendmail`: one message from standard input to the local
/// server (src/sendmail.rs); exit codes from sysexits.h.
fn sendmail(config: Option<PathBuf>, overrides: &[String], args: &[String]) -> ExitCode {
    use ringpost::sendmail::{self as sm, exit};
    let fail = |code: u8, text: &str| {
        eprintln!("ringpost sendmail: {text}");
        ExitCode::from(code)
    };
    let options = match sm::parse_args(args) {
        Ok(o) => o,
        Err(e) => return fail(exit::USAGE, &e),
    };
    let config = match ringpost::config::load(config.as_deref(), overrides) {
        Ok(c) => c,
        Err(e) => return fail(exit::USAGE, &e.to_string()),
    };
    // The first mx listener that speaks plain SMTP first (server.listen,
    // then [[listener]] tables): submission ones would ask for AUTH.
    let listeners = config.all_listeners();
    let mx = listeners
        .iter()
        .find(|l| l.role == ringpost::config::ListenerRole::Mx && l.tls != ringpost::config::ListenerTls::Implicit);
    let Some(listen) = mx.map(|l| l.address) else {
        return fail(exit::UNAVAILABLE, "no mx listener (server.listen, [[listener]]): no server to submit to");
    };
    let mut server = listen;
    if server.ip().is_unspecified() {
        server.set_ip(match server.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    if options.smtp_on_stdio {
        return match sm::relay_stdio(server) {
            Ok(()) => ExitCode::SUCCESS,
            Err(f) => fail(f.code, &f.text),
        };
    }
    let hostname = config.server.hostname.clone();
    let sender = match &options.sender {
        Some(s) if s == "<>" || s.is_empty() => String::new(),
        Some(s) => sm::qualify(s, &hostname),
        None => format!("{}@{hostname}", sm::login_name()),
    };
    let message = match sm::read_message(&mut std::io::stdin().lock(), options.ignore_dots) {
        Ok(m) => m,
        Err(e) => return fail(exit::IOERR, &e),
    };
    let unique = format!(
        "{}.{}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros(),
        std::process::id()
    );
    let from_field = if sender.is_empty() { format!("MAILER-DAEMON@{hostname}") } else { sender.clone() };
    let (message, found) = sm::prepare(&message, &options, &from_field, &hostname, std::time::SystemTime::now(), &unique);
    let mut recipients: Vec<String> = options.recipients.iter().map(|r| sm::qualify(r, &hostname)).collect();
    recipients.extend(found.iter().map(|r| sm::qualify(r, &hostname)));
    recipients.dedup();
    if recipients.is_empty() {
        return fail(exit::USAGE, "no recipients (give them as arguments, or use -t)");
    }
    if recipients.len() > sm::RECIPIENTS_MAX {
        return fail(exit::USAGE, &format!("more than {} recipients", sm::RECIPIENTS_MAX));
    }
    match sm::submit(server, &hostname, &sender, &recipients, &message) {
        Ok(_) => ExitCode::from(exit::OK),
        Err(f) => fail(f.code, &f.text),
    }
}

/// `ringpost sieve check` and `ringpost sieve test`.
fn sieve(command: SieveCommand) -> ExitCode {
    use ringpost::sieve;
    let limits = sieve::Limits::default();
    let file = match &command {
        SieveCommand::Check { file } | SieveCommand::Test { file, .. } => file.clone(),
    };
    let text = match std::fs::read(&file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("ringpost: sieve: {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    let script = match sieve::compile(&text, &limits) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{}:{e}", file.display());
            return ExitCode::from(1);
        }
    };
    let SieveCommand::Test { sender, recipient, addresses, envelope_only, message, .. } = command else {
        println!("{}: OK", file.display());
        return ExitCode::SUCCESS;
    };
    let raw = match (&message, envelope_only) {
        (_, true) => Vec::new(),
        (None, false) => {
            eprintln!("ringpost: sieve test: a MESSAGE (or --envelope-only) is needed");
            return ExitCode::from(2);
        }
        (Some(p), false) => {
            let read = if p.as_os_str() == "-" {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).map(|_| buf)
            } else {
                std::fs::read(p)
            };
            match read {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("ringpost: sieve: {}: {e}", p.display());
                    return ExitCode::from(2);
                }
            }
        }
    };
    let input = sieve::Input {
        envelope: sieve::Envelope { sender, recipient, user_addresses: addresses, client_ip: None },
        message: if envelope_only { None } else { Some(sieve::Message::from_whole(&raw)) },
    };
    match sieve::evaluate(&script, &input, &limits) {
        sieve::Outcome::NeedsContent => println!("needs content"),
        sieve::Outcome::Error(e) => {
            println!("error: {e}");
            println!("keep");
        }
        sieve::Outcome::Done(actions) => {
            for a in &actions.list {
                println!("{a}");
            }
            if actions.implicit_keep && !actions.list.contains(&sieve::Action::Keep) {
                println!("keep");
            }
        }
    }
    ExitCode::SUCCESS
}

/// `ringpost route --verify --callout`: the RCPT decision of each address
/// with its callouts performed, each conversation printed.
fn callout_route(config: ringpost::config::Config, _verify: bool, sender: String, addresses: Vec<String>) -> ExitCode {
    use ringpost::route::Engine;
    let engine = match Engine::build(&config) {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("ringpost: {e}");
            return ExitCode::from(2);
        }
    };
    let dns = match ringpost::dns::params_for(&config.dns) {
        Ok(dns) => dns,
        Err(e) => {
            eprintln!("ringpost: cannot read /etc/resolv.conf: {e}");
            return ExitCode::from(2);
        }
    };
    let ran = glommio::LocalExecutorBuilder::default().name("route").spawn(move || async move {
        let resolver = ringpost::dns::Resolver::new(dns).map_err(|e| format!("dns: {e}"))?;
        let connections = ringpost::deliver::connections::Connections::new(&config);
        let tls_client = ringpost::tls::client_config();
        let out = ringpost::deliver::outbound::Outbound {
            config: Arc::new(config.clone()),
            resolver: &resolver,
            connections: &connections,
            tls_client: &tls_client,
        };
        let client_ip = std::net::IpAddr::from([127, 0, 0, 1]);
        let mut all_ok = true;
        for text in &addresses {
            let address = match ringpost::queue::stored_address(text.trim_start_matches('<').trim_end_matches('>')) {
                Ok(address) => address,
                Err(e) => {
                    println!("{text}: not an address: {e}");
                    all_ok = false;
                    continue;
                }
            };
            let routing = Some(&engine).filter(|engine| !engine.is_empty());
            let (mut reply, plans) =
                ringpost::ingress::policy::decide_rcpt(&config, routing, client_ip, &address, &sender).await;
            if plans.is_empty() || !reply.is_positive() {
                println!(
                    "# no callout for <{address}> (no verify = \"callout\" on its rule or router, or refused before)"
                );
            }
            if reply.is_positive() {
                for plan in &plans {
                    println!("# callout to {} for <{}>", plan.hop.key(), plan.address);
                    let (transcript, verified) = ringpost::verify::callout_once(&out, &config, plan, &sender).await;
                    for line in transcript {
                        println!("{line}");
                    }
                    reply = verified;
                    if !reply.is_positive() {
                        break;
                    }
                }
            }
            all_ok &= reply.is_positive();
            println!("RCPT TO:<{address}> -> {}", reply.summary());
        }
        connections.close_all().await;
        Ok::<bool, String>(all_ok)
    });
    match ran.map(|handle| handle.join()) {
        Ok(Ok(Ok(true))) => ExitCode::SUCCESS,
        Ok(Ok(Ok(false))) => ExitCode::from(1),
        Ok(Ok(Err(e))) => {
            eprintln!("ringpost: route: {e}");
            ExitCode::FAILURE
        }
        Ok(Err(e)) | Err(e) => {
            eprintln!("ringpost: route: {e}");
            ExitCode::FAILURE
        }
    }
}

fn route(config: ringpost::config::Config, verify: bool, sender: String, addresses: Vec<String>) -> ExitCode {
    use ringpost::route::{Decision, Engine, Mode};
    let engine = match Engine::build(&config) {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("ringpost: {e}");
            return ExitCode::from(2);
        }
    };
    if engine.is_empty() {
        println!(
            "# no [[router]] configured: local domains {:?} go to local.maildir, others to delivery.smarthost",
            config.domains.local
        );
    }
    let mode = if verify { Mode::Verify } else { Mode::Deliver };
    let ran = glommio::LocalExecutorBuilder::default().name("route").spawn(move || async move {
        let mut all_ok = true;
        for address in &addresses {
            let routed = engine.route(address, &sender, mode).await;
            for line in &routed.trace {
                println!("{line}");
            }
            match &routed.decision {
                Decision::Deliver { deliveries, failed } => {
                    for d in deliveries {
                        let hop = d.next_hop.as_deref().map(|h| format!(" via {h}")).unwrap_or_default();
                        println!("{address} -> <{}> transport {}{hop} (router {})", d.address, d.transport, d.router);
                    }
                    for (member, reply) in failed {
                        println!("{address} -> <{member}> failed: {}", reply.summary());
                    }
                }
                Decision::Reject(reply) => {
                    all_ok = false;
                    println!("{address} is undeliverable: {}", reply.summary());
                }
                Decision::Defer(reply) => {
                    all_ok = false;
                    println!("{address} is deferred: {}", reply.summary());
                }
                Decision::Discard => println!("{address} is discarded"),
            }
            if verify {
                println!("RCPT TO:<{address}> -> {}", routed.decision.verify_reply().summary());
            }
        }
        all_ok
    });
    match ran.map(|handle| handle.join()) {
        Ok(Ok(true)) => ExitCode::SUCCESS,
        Ok(Ok(false)) => ExitCode::from(1),
        Ok(Err(e)) | Err(e) => {
            eprintln!("ringpost: route: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Watches the SIGHUP flag: re-reads the configuration and installs what
/// a reload changes (`ringpost::reload`); a broken file, table, script or
/// certificate keeps what is in use and is logged with its file:line.
fn watch_reload(hangup: Arc<AtomicBool>, stop: Arc<AtomicBool>, path: Option<PathBuf>, overrides: Vec<String>) {
    use std::sync::atomic::Ordering;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(RELOAD_POLL_MS));
        if !hangup.swap(false, Ordering::Relaxed) {
            continue;
        }
        let result = ringpost::config::load(path.as_deref(), &overrides)
            .map_err(|e| e.to_string())
            .and_then(ringpost::reload::reload);
        if let Err(e) = &result {
            ringpost::log::event("reload_failed", &[("error", e), ("kept", &"the running configuration")]);
        }
        ringpost::control::note_reload(
            result.map_err(|e| format!("reload failed, the running configuration is kept: {e}")),
        );
    }
}

/// How often the reload watcher looks at the SIGHUP flag.
const RELOAD_POLL_MS: u64 = 200;

fn queue(config: &ringpost::config::Config, command: QueueCommand) -> ExitCode {
    use ringpost::queue::tools;
    let result = match command {
        QueueCommand::List => tools::list(config),
        QueueCommand::Stats => tools::stats(config),
        QueueCommand::Dump { segment } => tools::dump(&segment),
        QueueCommand::Flush(which) => admin(config, "FLUSH", &which.target()),
        QueueCommand::Hold(which) => admin(config, "HOLD", &which.target()),
        QueueCommand::Release(which) => admin(config, "RELEASE", &which.target()),
        QueueCommand::Delete(which) => admin(config, "DELETE", &which.target()),
        QueueCommand::Bounce { id } => admin(config, "BOUNCE", &id),
        QueueCommand::Requeue { id } => admin(config, "REQUEUE", &id),
        QueueCommand::Show { id } => match tools::show(config, &id) {
            Ok(Some(text)) => Ok(text),
            Ok(None) => {
                eprintln!("ringpost: {id}: no such message in the queue");
                return ExitCode::from(1);
            }
            Err(e) => Err(e),
        },
    };
    printed(result)
}

/// A queue command sent to the running server's control socket. An id that
/// is not one is refused here, before the server is asked.
fn admin(config: &ringpost::config::Config, op: &str, target: &str) -> std::io::Result<String> {
    let is_id = target.len() == 16 && target.bytes().all(|b| b.is_ascii_hexdigit());
    if target != "ALL" && !is_id {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{target:?} is not a queue id (16 hex digits)"),
        ));
    }
    ringpost::control::ask(&config.control_socket_path(), &format!("QUEUE {op} {target}"))
        .map_err(std::io::Error::other)
}

/// A command's text on standard output, or its error on standard error
/// (exit status 1).
fn printed<E: std::fmt::Display>(result: Result<String, E>) -> ExitCode {
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ringpost: {e}");
            ExitCode::from(1)
        }
    }
}

/// The account to drop to (`server.user`), looked up, with the pipes that
/// could not run as it refused; None when there is no drop to make (unset,
/// or started as that user already).
fn privileges(config: &ringpost::config::Config) -> Result<Option<ringpost::privdrop::Identity>, String> {
    let Some(name) = &config.server.user else {
        return Ok(None);
    };
    let identity = ringpost::privdrop::lookup(name)?;
    ringpost::privdrop::check_pipes(config, &identity)?;
    let needed = ringpost::privdrop::needs_drop(&identity)?;
    Ok(Some(identity).filter(|_| needed))
}

fn serve(
    config: ringpost::config::Config,
    path: Option<PathBuf>,
    overrides: Vec<String>,
    identity: Option<ringpost::privdrop::Identity>,
) -> ExitCode {
    ringpost::raise_fd_limit();
    if let Err(e) = ringpost::route::reload(&config) {
        eprintln!("ringpost: {e}");
        return ExitCode::from(2);
    }
    let hangup = Arc::new(AtomicBool::new(false));
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGHUP, hangup.clone()) {
        eprintln!("ringpost: cannot install SIGHUP handler: {e}");
        return ExitCode::FAILURE;
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // A second signal while draining exits at once.
        let registered = signal_hook::flag::register_conditional_shutdown(signal, 1, stop.clone())
            .and_then(|_| signal_hook::flag::register(signal, stop.clone()));
        if let Err(e) = registered {
            eprintln!("ringpost: cannot install signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("reload".into())
            .spawn(move || watch_reload(hangup, stop, path, overrides))
            .expect("spawn the reload thread");
    }
    match ringpost::shard::run(Arc::new(config), stop, identity) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            ringpost::log::event("fatal", &[("error", &e)]);
            ExitCode::FAILURE
        }
    }
}
