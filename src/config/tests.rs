//! Tests of configuration loading: defaults, overrides of each kind, the
//! printed round trip, and every error kind with its exact file:line:column
//! and key.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::*;

fn load_text(text: &str) -> Result<Config, ConfigError> {
    load_str(Path::new("config.toml"), text, &[])
}

fn load_with(text: &str, overrides: &[&str]) -> Result<Config, ConfigError> {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    load_str(Path::new("config.toml"), text, &overrides)
}

/// The error's text, for a text that must fail to load.
fn error_of(text: &str) -> String {
    match load_text(text) {
        Ok(config) => panic!("loaded, expected an error: {config:?}"),
        Err(error) => error.to_string(),
    }
}

fn override_error_of(overrides: &[&str]) -> String {
    match load_with("", overrides) {
        Ok(config) => panic!("loaded, expected an error: {config:?}"),
        Err(error) => error.to_string(),
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("test socket address")
}

// ---- defaults ----

#[test]
fn defaults_match_the_documented_values() {
    let c = Config::default();
    assert!(!c.server.hostname.is_empty());
    assert_eq!(c.server.listen, vec![addr("127.0.0.1:2525")]);
    assert_eq!(c.server.shards, 0);
    assert!(c.server.pin);
    assert_eq!(c.server.max_sessions_per_shard, 10_000);
    assert_eq!(c.server.drain_timeout.to_string(), "30s");
    assert_eq!(c.smtp.greeting, "ESMTP ringpost");
    assert_eq!(c.smtp.max_recipients, 1000);
    assert_eq!(c.smtp.max_message_bytes, 26_214_400);
    assert_eq!(c.smtp.max_text_line_bytes, 1000);
    assert_eq!(c.smtp.max_errors, 10);
    assert_eq!(c.smtp.command_timeout.to_string(), "5m");
    assert_eq!(c.smtp.data_timeout.to_string(), "5m");
    assert_eq!(c.smtp.bare_lf, BareLf::Reject);
    assert_eq!(c.domains.local, vec!["localhost".to_string()]);
    assert_eq!(c.local.maildir, "./var/mail/{user}/Maildir");
    let networks: Vec<String> = c.relay.networks.iter().map(Cidr::to_string).collect();
    assert_eq!(networks, vec!["127.0.0.0/8", "::1/128"]);
    assert!(c.relay.domains.is_empty());
    assert_eq!(c.delivery.smarthost, None);
    assert_eq!(c.delivery.helo_name, None);
    assert_eq!(c.delivery.max_concurrent_per_shard, 100);
    assert_eq!(c.delivery.connect_timeout.to_string(), "30s");
    assert!(c.delivery.chunking);
    assert_eq!(c.queue.spool, vec![PathBuf::from("./var/spool")]);
    let lags: Vec<String> = c.queue.retry_lags.iter().map(|lag| lag.to_string()).collect();
    assert_eq!(lags, ["5m", "30m", "1h", "2h", "4h"]);
    assert_eq!(c.queue.inline_max_bytes, 65536);
    assert_eq!(c.queue.segment_size_bytes, 64 << 20);
    assert_eq!(c.queue.commit_delay_us, 0);
    assert_eq!(c.queue.max_age.to_string(), "5d");
}

#[test]
fn no_file_and_empty_file_give_the_defaults() {
    assert_eq!(load(None, &[]).expect("defaults load"), Config::default());
    assert_eq!(load_text("").expect("empty file loads"), Config::default());
    assert_eq!(load_text("# only a comment\n\n[server]\n").expect("empty table loads"), Config::default());
}

#[test]
fn system_host_name_is_a_host_name() {
    let name = system_host_name();
    assert!(check_host_name(&name).is_ok(), "{name:?}");
}

#[test]
fn a_full_file_loads() {
    let text = r#"
[server]
hostname = "mx1.example.org"
listen = ["0.0.0.0:25", "[::]:25"]
shards = 4
pin = false
max_sessions_per_shard = 500
drain_timeout = "10s"

[smtp]
greeting = "ESMTP ready"
max_recipients = 100
max_message_bytes = 10485760
max_text_line_bytes = 2000
max_errors = 3
command_timeout = 300
data_timeout = "10m"
bare_lf = "normalize"

[domains]
local = ["example.org", "Example.NET."]

[local]
maildir = "/srv/mail/{user}/Maildir"

[relay]
networks = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]
domains = ["relay.example.com"]

[delivery]
smarthost = "[2001:db8::1]:2525"
helo_name = "out.example.org"
max_concurrent_per_shard = 20
connect_timeout = "5s"
chunking = false

[queue]
spool = ["/var/spool/a", "/var/spool/b"]
retry_lags = ["1m", "2h"]
max_age = "3d"
inline_max_bytes = 4096
segment_size_bytes = 1048576
commit_delay_us = 2000
"#;
    let c = load_text(text).expect("full file loads");
    assert_eq!(c.server.hostname, "mx1.example.org");
    assert_eq!(c.server.listen, vec![addr("0.0.0.0:25"), addr("[::]:25")]);
    assert_eq!(c.server.shards, 4);
    assert!(!c.server.pin);
    assert_eq!(c.smtp.command_timeout.0, std::time::Duration::from_secs(300));
    assert_eq!(c.smtp.bare_lf, BareLf::Normalize);
    assert_eq!(c.relay.networks[2], Cidr { addr: ip("192.0.2.7"), prefix_len: 32 });
    assert_eq!(c.delivery.smarthost.as_deref(), Some("[2001:db8::1]:2525"));
    assert_eq!(c.helo_name(), "out.example.org");
    assert!(!c.delivery.chunking);
    assert_eq!(c.queue.max_age.0, std::time::Duration::from_secs(3 * 86_400));
    assert_eq!(c.spool_for_shard(3), Path::new("/var/spool/b"));
}

#[test]
fn dotted_keys_and_inline_tables_are_the_same_keys() {
    let dotted = load_text("server.shards = 3\nsmtp = { max_errors = 4 }\n").expect("loads");
    assert_eq!(dotted.server.shards, 3);
    assert_eq!(dotted.smtp.max_errors, 4);
}

// ---- overrides ----

#[test]
fn override_bare_word_is_a_string() {
    let c = load_with("", &["delivery.smarthost=127.0.0.1:2626", "server.hostname=mx.test"]).expect("loads");
    assert_eq!(c.delivery.smarthost.as_deref(), Some("127.0.0.1:2626"));
    assert_eq!(c.server.hostname, "mx.test");
    let c = load_with("", &["delivery.smarthost=[::1]:2626", "smtp.greeting=ESMTP it's ready"]).expect("loads");
    assert_eq!(c.delivery.smarthost.as_deref(), Some("[::1]:2626"));
    assert_eq!(c.smtp.greeting, "ESMTP it's ready");
}

#[test]
fn override_toml_values_of_each_type() {
    let c = load_with(
        "",
        &[
            r#"server.listen=["127.0.0.1:2600", "[::1]:2600"]"#,
            "server.shards=1",
            "server.pin=false",
            r#"server.drain_timeout="5s""#,
            r#"queue.retry_lags=["1s", "2s"]"#,
            "smtp.command_timeout=90",
            r#"local.maildir="/tmp/mail/{user}/Maildir""#,
            "smtp.greeting='ESMTP test'",
        ],
    )
    .expect("loads");
    assert_eq!(c.server.listen, vec![addr("127.0.0.1:2600"), addr("[::1]:2600")]);
    assert_eq!(c.server.shards, 1);
    assert!(!c.server.pin);
    assert_eq!(c.server.drain_timeout.to_string(), "5s");
    assert_eq!(c.queue.retry_lags.len(), 2);
    assert_eq!(c.smtp.command_timeout.to_string(), "90s");
    assert_eq!(c.local.maildir, "/tmp/mail/{user}/Maildir");
    assert_eq!(c.smtp.greeting, "ESMTP test");
}

#[test]
fn override_replaces_the_file_value_and_later_overrides_win() {
    let text = "[server]\nshards = 8\n[delivery]\nsmarthost = \"mx.example.org:25\"\n";
    let c = load_with(text, &["server.shards=2", "server.shards=3", "delivery.smarthost="]).expect("loads");
    assert_eq!(c.server.shards, 3);
    assert_eq!(c.delivery.smarthost, None, "an empty value clears an optional key");
}

#[test]
fn override_with_a_whole_table() {
    let c = load_with("", &["relay={ networks = [\"10.1.0.0/16\"], domains = [\"example.org\"] }"]).expect("loads");
    assert_eq!(c.relay.networks, vec![Cidr::from_str("10.1.0.0/16").expect("cidr")]);
    assert_eq!(c.relay.domains, vec!["example.org".to_string()]);
}

#[test]
fn override_errors_name_the_argument() {
    assert_eq!(
        override_error_of(&["server.shards=many"]),
        "--set server.shards=many: server.shards: expected an integer, found a string"
    );
    assert_eq!(override_error_of(&["server.lisen=1"]), "--set server.lisen=1: unknown key server.lisen");
    assert_eq!(override_error_of(&["server.pin"]), "--set server.pin: expected key=value");
    assert_eq!(
        override_error_of(&["server..pin=true"]),
        "--set server..pin=true: the key must be a dotted path such as server.listen"
    );
    assert_eq!(
        override_error_of(&["server.shards=1", "server.shards.x=1"]),
        "--set server.shards.x=1: server.shards is an integer, not a table"
    );
    assert_eq!(
        override_error_of(&["server.shards.x=1"]),
        "--set server.shards.x=1: server.shards: expected an integer, found a table"
    );
    assert!(override_error_of(&["smtp.greeting=\"unterminated"])
        .starts_with("--set smtp.greeting=\"unterminated: TOML syntax error"));
    assert!(override_error_of(&[r#"server.listen=["127.0.0.1:2600""#])
        .starts_with(r#"--set server.listen=["127.0.0.1:2600": TOML syntax error"#));
    assert_eq!(
        override_error_of(&["relay.networks=[\"10.0.0.0/8\", \"fe80::/129\"]"]),
        "--set relay.networks=[\"10.0.0.0/8\", \"fe80::/129\"]: relay.networks[1]: \
         bad network \"fe80::/129\": prefix length must be 0 to 128"
    );
}

#[test]
fn override_error_wins_over_the_file_line_it_replaced() {
    let error = load_with("[server]\nshards = 2\n", &["server.shards=2000"]).expect_err("too many shards");
    assert_eq!(error.origin(), Some(&Origin::Override("server.shards=2000".to_string())));
    assert_eq!(error.key(), Some("server.shards"));
}

// ---- round trip ----

#[test]
fn printed_defaults_load_back_equal() {
    let config = Config::default();
    let printed = config.to_toml();
    assert_eq!(load_text(&printed).expect("printed config loads"), config, "{printed}");
}

#[test]
fn printed_custom_config_loads_back_equal() {
    let mut config = load_with(
        "",
        &[
            r#"server.listen=["0.0.0.0:25", "[::]:25"]"#,
            "server.hostname=mx.example.org",
            "server.shards=2",
            "server.pin=false",
            "server.drain_timeout=\"1500ms\"",
            "smtp.bare_lf=normalize",
            "smtp.greeting='ESMTP \"quoted\" \\ back'",
            r#"domains.local=["example.org", "example.net."]"#,
            r#"relay.networks=["10.0.0.0/8", "2001:db8::/32", "::ffff:10.0.0.0/104"]"#,
            r#"relay.domains=["relay.example.com"]"#,
            "delivery.smarthost=[::1]:2626",
            "delivery.helo_name=[192.0.2.1]",
            r#"queue.spool=["/a/spool", "/b/spool with space"]"#,
            "queue.max_age=36h",
        ],
    )
    .expect("loads");
    config.smtp.greeting.push('\u{e9}');
    let printed = config.to_toml();
    assert_eq!(load_text(&printed).expect("printed config loads"), config, "{printed}");
}

#[test]
fn printed_config_has_every_key() {
    let printed = Config::default().to_toml();
    for (table, keys) in all_keys() {
        let section = printed.split(&format!("[{table}]\n")).nth(1).expect("table printed");
        let section = section.split("\n[").next().unwrap_or(section);
        for key in keys {
            assert!(section.lines().any(|line| line.starts_with(&format!("{key} = "))), "{table}.{key}");
        }
    }
    assert!(load_with("", &["server.shards=1"]).expect("loads").to_toml().contains("\nshards = 1\n"));
}

#[test]
fn docs_example_loads_and_docs_list_every_key() {
    let docs = include_str!("../../docs/config.md");
    let example = docs.split("```toml\n").nth(1).and_then(|rest| rest.split("```").next()).expect("example");
    let config = load_str(Path::new("docs/config.md"), example, &[]).expect("the documented example loads");
    assert_eq!(config.delivery.smarthost.as_deref(), Some("smtp.provider.example:587"));
    for (table, keys) in all_keys() {
        let section = docs.split(&format!("## `[{table}]`")).nth(1).expect("table documented");
        let section = section.split("\n## ").next().unwrap_or(section);
        for key in keys {
            assert!(section.contains(&format!("| `{key}` |")), "{table}.{key} documented");
        }
    }
}

#[test]
fn packaged_example_loads_as_an_mx_relay() {
    let text = include_str!("../../debian/ringpost.toml");
    let config = load_str(Path::new("debian/ringpost.toml"), text, &[]).expect("the packaged configuration loads");
    assert_eq!(config.server.user.as_deref(), Some("ringpost"));
    assert!(!config.server.allow_root);
    assert!(config.domains.local.is_empty(), "a relay delivers nothing locally");
    assert_eq!(config.queue.spool, vec![std::path::PathBuf::from("/var/spool/ringpost")]);
    assert_eq!(config.transports.len(), 1);
    assert_eq!(load_str(Path::new("printed"), &config.to_toml(), &[]).expect("printed loads"), config);
}

#[test]
fn server_user_is_a_user_name() {
    let config = load_with("[server]\nuser = \"ringpost\"\nallow_root = true\n", &[]).expect("loads");
    assert_eq!((config.server.user.as_deref(), config.server.allow_root), (Some("ringpost"), true));
    assert_eq!(load_with("[server]\nuser = \"\"\n", &[]).expect("loads").server.user, None, "empty is unset");
    for bad in ["-rf", "a b", "root:0", "x/y", &"a".repeat(33)] {
        assert!(load_with(&format!("[server]\nuser = \"{bad}\"\n"), &[]).is_err(), "{bad:?} refused");
    }
    assert!(load_with("[server]\nallow_root = \"yes\"\n", &[]).is_err());
}

fn all_keys() -> [(&'static str, &'static [&'static str]); 14] {
    [
        ("server", read::SERVER_KEYS),
        ("smtp", read::SMTP_KEYS),
        ("domains", read::DOMAINS_KEYS),
        ("local", read::LOCAL_KEYS),
        ("relay", read::RELAY_KEYS),
        ("dns", read::DNS_KEYS),
        ("tls", read::TLS_KEYS),
        ("delivery", read::DELIVERY_KEYS),
        ("queue", read::QUEUE_KEYS),
        ("route", read::ROUTE_KEYS),
        ("verify", read::VERIFY_KEYS),
        ("policy", read::POLICY_KEYS),
        ("metrics", read::METRICS_KEYS),
        ("log", read::LOG_KEYS),
    ]
}

#[test]
fn policy_limits_and_tables_load_print_and_refuse_bad_values() {
    let config = load_with(
        "[policy]\nmax_sessions_per_client = 7\nmax_recipients_per_minute = 100\nexempt_networks = [\"10.0.0.0/8\"]\nclient_access = \"/etc/ca\"\n",
        &[],
    )
    .expect("loads");
    assert_eq!(config.policy.max_sessions_per_client, 7);
    assert_eq!(config.policy.max_recipients_per_minute, 100);
    assert_eq!(config.policy.ipv6_prefix_len, 64);
    assert_eq!(config.policy.client_access.as_deref(), Some(Path::new("/etc/ca")));
    assert_eq!(load_with(&config.to_toml(), &[]).expect("printed loads"), config);
    assert_eq!(config.control_socket_path(), Path::new("./var/spool/ringpost.sock"));
    assert_eq!(
        error_of("[policy]\nipv6_prefix_len = 129\n"),
        "config.toml:2:19: policy.ipv6_prefix_len: at most 128"
    );
}

// ---- errors with file:line:column and key ----

#[test]
fn syntax_error_names_file_line_and_column() {
    let error = error_of("[server]\nshards = 1\npin = tru\n");
    assert!(error.starts_with("config.toml:3:7: TOML syntax error: "), "{error}");
    let error = error_of("[server]\nlisten = [\"127.0.0.1:25\"\n\n[smtp]\n");
    assert!(!error.contains('\n'), "{error}");
    assert!(error.starts_with("config.toml:4:1: TOML syntax error: "), "{error}");
    assert!(!error.contains('\n'), "one line: {error}");
}

#[test]
fn unknown_key_names_file_line_and_key() {
    assert_eq!(
        error_of("[server]\nhostname = \"mx.example.org\"\nlisen = [\"127.0.0.1:25\"]\n"),
        "config.toml:3:1: unknown key server.lisen"
    );
    assert_eq!(error_of("# comment\n\n[srever]\nshards = 1\n"), "config.toml:3:2: unknown key srever");
    assert_eq!(error_of("[smtp]\nlimits = { max = 1 }\n"), "config.toml:2:1: unknown key smtp.limits");
    assert_eq!(error_of("server = { shards = 1, pinned = true }\n"), "config.toml:1:24: unknown key server.pinned");
    assert_eq!(error_of("\n\nqueue.spol = [\"/x\"]\n"), "config.toml:3:7: unknown key queue.spol");
}

#[test]
fn wrong_type_names_file_line_and_key() {
    assert_eq!(
        error_of("[server]\nshards = \"4\"\n"),
        "config.toml:2:10: server.shards: expected an integer, found a string"
    );
    assert_eq!(error_of("[server]\npin = 1\n"), "config.toml:2:7: server.pin: expected a boolean, found an integer");
    assert_eq!(
        error_of("[server]\nlisten = \"127.0.0.1:25\"\n"),
        "config.toml:2:10: server.listen: expected an array, found a string"
    );
    assert_eq!(error_of("smtp = 5\n"), "config.toml:1:8: smtp: expected a table, found an integer");
    assert_eq!(
        error_of("[smtp]\nmax_message_bytes = 1.5e6\n"),
        "config.toml:2:21: smtp.max_message_bytes: expected an integer, found a float"
    );
    assert_eq!(
        error_of("[queue]\nmax_age = true\n"),
        "config.toml:2:11: queue.max_age: expected a duration (\"30s\") or an integer of seconds, found a boolean"
    );
}

#[test]
fn bad_cidr_names_the_line_of_the_element() {
    // The file of the integration test `test_check_config_reports_file_and_line`.
    let error = load_str(
        Path::new("/tmp/bad.toml"),
        "[server]\nlisten = [\"127.0.0.1:2525\"]\n\n[relay]\nnetworks = [\"10.0.0.0/33\"]\n",
        &[],
    )
    .expect_err("bad prefix");
    assert_eq!(
        error.to_string(),
        "/tmp/bad.toml:5:13: relay.networks[0]: bad network \"10.0.0.0/33\": prefix length must be 0 to 32"
    );
    assert_eq!(
        error_of("[relay]\nnetworks = [\n  \"10.0.0.0/8\",\n  \"10.0.0.1/8\",\n]\n"),
        "config.toml:4:3: relay.networks[1]: bad network \"10.0.0.1/8\": \
         address has bits set after the prefix (did you mean 10.0.0.0/8?)"
    );
    assert_eq!(
        error_of("[relay]\nnetworks = [\"localhost/8\"]\n"),
        "config.toml:2:13: relay.networks[0]: bad network \"localhost/8\": \"localhost\" is not an IPv4 or IPv6 address"
    );
}

#[test]
fn bad_values_name_file_line_and_key() {
    let cases: &[(&str, &str)] = &[
        ("[server]\ndrain_timeout = \"30 s\"\n", "config.toml:2:17: server.drain_timeout: bad duration \"30 s\": unknown unit \" s\" (use ms, s, m, h or d)"),
        ("[smtp]\n\ndata_timeout = \"5w\"\n", "config.toml:3:16: smtp.data_timeout: bad duration \"5w\": unknown unit \"w\" (use ms, s, m, h or d)"),
        ("[smtp]\ncommand_timeout = \"0s\"\n", "config.toml:2:19: smtp.command_timeout: must be longer than 0s"),
        ("[server]\nlisten = [\"127.0.0.1\"]\n", "config.toml:2:11: server.listen[0]: bad socket address \"127.0.0.1\": expected \"ip:port\" such as \"0.0.0.0:25\" or \"[::]:25\""),
        ("[server]\nlisten = []\n", "config.toml:2:10: server.listen: must not be empty"),
        ("[server]\nshards = 5000\n", "config.toml:2:10: server.shards: at most 1024 shards"),
        ("[server]\nshards = -1\n", "config.toml:2:10: server.shards: must not be negative, got -1"),
        ("[server]\nhostname = \"mx example\"\n", "config.toml:2:12: server.hostname: \"mx example\" is not a host name (letters, digits, '-', '_' in dot-separated labels)"),
        ("[smtp]\nmax_recipients = 0\n", "config.toml:2:18: smtp.max_recipients: must be at least 1"),
        ("[smtp]\nmax_errors = 5000000000\n", "config.toml:2:14: smtp.max_errors: 5000000000 is too large"),
        ("[smtp]\nbare_lf = \"strip\"\n", "config.toml:2:11: smtp.bare_lf: must be \"reject\" or \"normalize\", not \"strip\""),
        ("[smtp]\nnul = \"normalize\"\n", "config.toml:2:7: smtp.nul: must be \"reject\" or \"strip\", not \"normalize\""),
        ("[smtp]\ngreeting = \"hi\\r\\n250 fake\"\n", "config.toml:2:12: smtp.greeting: must not contain control characters (CR, LF, …)"),
        ("[local]\nmaildir = \"/var/mail/Maildir\"\n", "config.toml:2:11: local.maildir: the Maildir template must contain {user}"),
        ("[delivery]\nsmarthost = \"mx.example.org\"\n", "config.toml:2:13: delivery.smarthost: bad smarthost \"mx.example.org\": expected \"host:port\""),
        ("[delivery]\nsmarthost = \"mx.example.org:0\"\n", "config.toml:2:13: delivery.smarthost: bad smarthost \"mx.example.org:0\": port must be 1 to 65535"),
        ("[delivery]\nsmarthost = \"::1:25\"\n", "config.toml:2:13: delivery.smarthost: bad smarthost \"::1:25\": write an IPv6 address in brackets, \"[::1]:25\""),
        ("[queue]\nspool = []\n", "config.toml:2:9: queue.spool: must not be empty"),
        ("[queue]\nretry_lags = [\"1h\", \"5m\"]\n", "config.toml:2:14: queue.retry_lags: lags must be strictly increasing, shortest first"),
        ("[queue]\nretry_lags = []\n", "config.toml:2:14: queue.retry_lags: must not be empty"),
        ("[queue]\ninline_max_bytes = 2000000\n", "config.toml:2:20: queue.inline_max_bytes: at most 1048576 (1 MiB)"),
        ("[queue]\nsegment_size_bytes = 65537\n", "config.toml:2:22: queue.segment_size_bytes: must be a multiple of 4096 between 65536 and 4294967296"),
        ("[queue]\nsegment_size_bytes = 65536\n", "config.toml:2:22: queue.segment_size_bytes: queue.segment_size_bytes (65536) must be at least queue.inline_max_bytes + 65536 (131072)"),
        ("[queue]\ncommit_delay_us = 200000\n", "config.toml:2:19: queue.commit_delay_us: at most 100000"),
        ("[domains]\nlocal = [\"example.org\", \"\"]\n", "config.toml:2:25: domains.local[1]: must not be empty"),
    ];
    for (text, expected) in cases {
        assert_eq!(&error_of(text), expected, "for {text:?}");
    }
}

#[test]
fn error_accessors_give_origin_and_key() {
    let error = load_text("\n[server]\nshards = \"x\"\n").expect_err("wrong type");
    assert_eq!(error.key(), Some("server.shards"));
    assert_eq!(error.origin().and_then(Origin::line), Some(3));
    assert!(matches!(error, ConfigError::WrongType { expected: "an integer", found: "a string", .. }));
}

#[test]
fn missing_file_is_a_read_error() {
    let path = Path::new("/nonexistent/ringpost/config.toml");
    let error = load(Some(path), &[]).expect_err("no such file");
    assert!(matches!(error, ConfigError::Read { .. }));
    assert!(error.to_string().starts_with("/nonexistent/ringpost/config.toml: cannot read configuration"));
}

#[test]
fn load_reads_a_file_and_applies_overrides() {
    let dir = std::env::temp_dir().join(format!("ringpost-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("ringpost.toml");
    std::fs::write(&path, "[server]\nshards = 2\nlisen = 1\n").expect("write config");
    let error = load(Some(&path), &[]).expect_err("unknown key");
    assert_eq!(error.to_string(), format!("{}:3:1: unknown key server.lisen", path.display()));
    std::fs::write(&path, "[server]\nshards = 2\n").expect("write config");
    let config = load(Some(&path), &["server.pin=false".to_string()]).expect("loads");
    assert_eq!((config.server.shards, config.server.pin), (2, false));
    std::fs::remove_dir_all(&dir).expect("clean up");
}

// ---- value types ----

#[test]
fn durations_parse_and_print_back() {
    for text in ["250ms", "30s", "5m", "1h", "5d", "1500ms", "90s", "36h", "0s", "7us", "3ns"] {
        let duration = Duration::from_str(text).expect(text);
        assert_eq!(duration.to_string(), text);
    }
    assert_eq!(Duration::from_str("250ms").expect("ms").0, std::time::Duration::from_millis(250));
    assert_eq!(Duration::from_str("5d").expect("d").0, std::time::Duration::from_secs(432_000));
    assert_eq!(Duration::from_str("45").expect("bare").0, std::time::Duration::from_secs(45));
    assert_eq!(Duration::from_str("60s").expect("60s").to_string(), "1m", "printed in the largest exact unit");
    for bad in ["", "s", "-5s", "5 s", "5.5s", "5w", "99999999999999999999d", "9999999999999d"] {
        assert!(Duration::from_str(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn cidrs_parse_and_print_back() {
    for text in ["127.0.0.0/8", "::1/128", "0.0.0.0/0", "::/0", "2001:db8::/32", "192.0.2.7/32"] {
        assert_eq!(Cidr::from_str(text).expect(text).to_string(), text);
    }
    assert_eq!(Cidr::from_str("192.0.2.7").expect("host").to_string(), "192.0.2.7/32");
    assert_eq!(Cidr::from_str("2001:db8::1").expect("host").to_string(), "2001:db8::1/128");
    for bad in ["10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/+8", "10.0.0.1/8", "::1/64", "10.0.0/8", "x/8"] {
        assert!(Cidr::from_str(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn cidr_contains() {
    let net = Cidr::from_str("10.1.0.0/16").expect("cidr");
    assert!(net.contains(ip("10.1.2.3")));
    assert!(!net.contains(ip("10.2.0.1")));
    assert!(net.contains(ip("::ffff:10.1.200.1")), "IPv4-mapped client matches the IPv4 network");
    assert!(!net.contains(ip("::ffff:10.2.0.1")));
    assert!(!net.contains(ip("2001:db8::1")));
    let odd = Cidr::from_str("192.0.2.128/25").expect("cidr");
    assert!(odd.contains(ip("192.0.2.200")) && !odd.contains(ip("192.0.2.127")));
    let any4 = Cidr::from_str("0.0.0.0/0").expect("cidr");
    assert!(any4.contains(ip("203.0.113.9")) && !any4.contains(ip("2001:db8::1")));
    let v6 = Cidr::from_str("2001:db8::/32").expect("cidr");
    assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
    assert!(!v6.contains(ip("10.0.0.1")));
    let mapped = Cidr::from_str("::ffff:10.0.0.0/104").expect("cidr");
    assert!(mapped.contains(ip("10.9.9.9")), "IPv4 client matches a mapped IPv6 network");
    let host = Cidr::from_str("::1").expect("cidr");
    assert!(host.contains(ip("::1")) && !host.contains(ip("::2")));
}

#[test]
fn smarthost_forms() {
    for good in ["127.0.0.1:2626", "mx.example.org:25", "[::1]:2525", "relay:587"] {
        assert!(check_smarthost(good).is_ok(), "{good}");
    }
    for bad in ["mx.example.org", ":25", "mx:", "mx:99999", "[::1:25", "[mx]:25", "m x:25"] {
        assert!(check_smarthost(bad).is_err(), "{bad}");
    }
}

// ---- helpers ----

#[test]
fn shard_count_and_spools() {
    let mut config = Config::default();
    assert!(config.shard_count() >= 1);
    config.server.shards = 3;
    assert_eq!(config.shard_count(), 3);
    config.queue.spool = vec![PathBuf::from("/a"), PathBuf::from("/b")];
    let spools: Vec<&Path> = (0..4).map(|shard| config.spool_for_shard(shard)).collect();
    assert_eq!(spools, [Path::new("/a"), Path::new("/b"), Path::new("/a"), Path::new("/b")]);
}

#[test]
fn helo_name_defaults_to_the_host_name() {
    let mut config = load_with("", &["server.hostname=mx.example.org"]).expect("loads");
    assert_eq!(config.helo_name(), "mx.example.org");
    config.delivery.helo_name = Some("out.example.org".to_string());
    assert_eq!(config.helo_name(), "out.example.org");
}

#[test]
fn relay_allows_clients_in_its_networks() {
    let relay = Config::default().relay;
    assert!(relay.allows_client(ip("127.0.0.1")));
    assert!(relay.allows_client(ip("127.200.0.1")));
    assert!(relay.allows_client(ip("::1")));
    assert!(relay.allows_client(ip("::ffff:127.0.0.1")));
    assert!(!relay.allows_client(ip("192.0.2.1")));
    assert!(!relay.allows_client(ip("::2")));
    let none = Relay { networks: Vec::new(), domains: Vec::new() };
    assert!(!none.allows_client(ip("127.0.0.1")));
}

#[test]
fn local_domains_ignore_case_and_trailing_dot() {
    let domains = Domains { local: vec!["Example.org".to_string(), "mail.example.net.".to_string()] };
    assert!(domains.is_local("example.org"));
    assert!(domains.is_local("EXAMPLE.ORG."));
    assert!(domains.is_local("mail.example.net"));
    assert!(!domains.is_local("sub.example.org"));
    assert!(!domains.is_local("example.org.evil"));
    assert!(!domains.is_local(""));
    assert!(Config::default().domains.is_local("LOCALHOST"));
}

#[test]
fn transport_rules_load_print_and_match() {
    let text = r#"
[[transport]]
domains = ["store.test", ".dept.test"]
transport = "lmtp"
nexthop = "unix:/run/dovecot/lmtp"
max_connections = 4

[[transport]]
domains = ["*"]
transport = "smtp"
tls = "encrypt"

[[transport]]
domains = ["tickets.test"]
transport = "pipe"
command = ["/usr/local/bin/import", "{user}"]
user = "nobody"
timeout = "2m"
"#;
    let config = load_text(text).expect("loads");
    assert_eq!(config.transports.len(), 3);
    assert_eq!(config.transport_for("STORE.test").map(|r| r.transport), Some(TransportKind::Lmtp));
    assert_eq!(config.transport_for("a.dept.test").map(|r| r.transport), Some(TransportKind::Lmtp));
    assert_eq!(config.transport_for("dept.test").map(|r| r.transport), Some(TransportKind::Smtp), "'.dept.test' is subdomains only");
    assert_eq!(config.transport_for("xdept.test").map(|r| r.transport), Some(TransportKind::Smtp));
    assert!(config.transports[0].names("store.test"));
    assert!(!config.transports[1].names("anything.test"), "a catch-all names no domain");
    let printed = config.to_toml();
    assert_eq!(load_text(&printed).expect("printed config loads"), config, "{printed}");
}

#[test]
fn transport_rule_errors_name_the_line() {
    assert_eq!(
        error_of("[[transport]]\ndomains = [\"a.test\"]\ntransport = \"carrier-pigeon\"\n"),
        "config.toml:3:13: transport[0].transport: must be \"smtp\", \"lmtp\", \"pipe\" or \"maildir\", not \"carrier-pigeon\""
    );
    assert!(error_of("[[transport]]\ndomains = [\"a.test\"]\ntransport = \"pipe\"\n").contains("needs command"));
    assert!(error_of("[[transport]]\ndomains = [\"a.test\"]\ntransport = \"pipe\"\ncommand = [\"relative\"]\n")
        .starts_with("config.toml:4:11: transport[0].command: the program must be an absolute path"));
    assert!(error_of("[[transport]]\ndomains = [\"a.test\"]\ntransport = \"lmtp\"\nnexthop = \"unix:run/lmtp\"\n")
        .contains("must be absolute"));
    assert!(error_of("[[transport]]\ndomains = [\"a.test\"]\ntransport = \"smtp\"\ncolour = 1\n")
        .contains("unknown key transport[0].colour"));
}

// ---- [route] and [[router]] ----

#[test]
fn routers_load_print_back_and_refuse_mistakes() {
    let text = r#"
[route]
max_rewrites = 5
subaddress_separators = ["+", "-"]
verify_sender = true

[[router]]
name = "rewrite"
driver = "rewrite"
rules = [["^(.*)@old\\.example$", "$1@example.org"]]

[[router]]
name = "virtual"
driver = "virtual"
file = "/etc/mail/virtusertable.cdb"
domains = ["Example.com", ".example.net", "@local"]

[[router]]
name = "users"
driver = "local_users"
source = "sqlite:/var/lib/users.db"
query = "SELECT details FROM users WHERE name = ?1"

[[router]]
name = "out"
driver = "smarthost"
host = "relay.example:2525"
senders = ["@example.org"]
"#;
    let config = load_text(text).expect("loads");
    assert_eq!(config.route.max_rewrites, 5);
    assert_eq!(config.route.subaddress_separators, vec!["+", "-"]);
    assert_eq!(config.routers.len(), 4);
    assert_eq!(config.routers[1].domains, vec!["example.com", ".example.net", "@local"]);
    assert_eq!(config.routers[0].rules, vec![("^(.*)@old\\.example$".to_string(), "$1@example.org".to_string())]);
    let printed = config.to_toml();
    assert_eq!(load_text(&printed).expect("printed loads"), config);

    let error = error_of("[[router]]\nname = \"a\"\ndriver = \"teleport\"\n");
    assert!(error.contains(":3:10: router[0].driver: unknown driver \"teleport\""), "{error}");
    let error = error_of("[[router]]\nname = \"a\"\ndriver = \"virtual\"\n");
    assert!(error.contains("router[0]: driver virtual needs file or source"), "{error}");
    let error = error_of("[[router]]\nname = \"a\"\ndriver = \"rewrite\"\nrules = [[\"(\", \"x\"]]\n");
    assert!(error.contains(":4:10: router[0].rules[0]: bad regex"), "{error}");
    let error = error_of("[[router]]\nname = \"a\"\ndriver = \"dnslookup\"\n[[router]]\nname = \"a\"\ndriver = \"dnslookup\"\n");
    assert!(error.contains(":5:8: router[1].name: a router of this name is defined above"), "{error}");
    let error = error_of("[[router]]\nname = \"a\"\ndriver = \"dnslookup\"\ncolour = 1\n");
    assert!(error.contains(":4:1: unknown key router[0].colour"), "{error}");
    let error = error_of("[route]\nsubaddress_separators = [\"@\"]\n");
    assert!(error.contains(":2:26: route.subaddress_separators[0]"), "{error}");
}

#[test]
fn smtp_nul_defaults_to_reject_and_loads_strip() {
    assert_eq!(load_text("").expect("defaults").smtp.nul, Nul::Reject);
    let config = load_text("[smtp]\nnul = \"strip\"\n").expect("strip");
    assert_eq!(config.smtp.nul, Nul::Strip);
    assert_eq!(load_text(&config.to_toml()).expect("printed config loads"), config);
}

#[test]
fn callouts_load_print_and_refuse_what_cannot_verify() {
    let text = r#"
[[transport]]
domains = ["dept.test"]
transport = "smtp"
nexthop = "127.0.0.1:2526"
verify = "callout"
callout_random = true
callout_sender = "postmaster@relay.test"

[[router]]
name = "mt"
driver = "mailertable"
file = "/dev/null"
verify = "callout"
callout_sender = "use-sender"
callout_defer_ok = true

[verify]
callout_timeout = "5s"
callout_rate_per_domain = 10
"#;
    let config = load_text(text).expect("loads");
    let rule = config.transports[0].callout.clone().expect("the rule verifies");
    assert!(rule.random && !rule.defer_ok);
    assert_eq!(rule.sender, super::CalloutSender::Address("postmaster@relay.test".into()));
    let router = config.routers[0].callout.clone().expect("the router verifies");
    assert_eq!((router.sender, router.defer_ok), (super::CalloutSender::UseSender, true));
    assert_eq!(config.verify.callout_timeout.0, std::time::Duration::from_secs(5));
    assert_eq!(config.verify.callout_rate_per_domain, 10);
    assert_eq!(config.verify.callout_max_per_host, 8);
    let printed = config.to_toml();
    assert_eq!(load_text(&printed).expect("printed loads"), config);

    let error = error_of("[[transport]]\ndomains = [\"d.test\"]\ntransport = \"pipe\"\ncommand = [\"/bin/true\"]\nverify = \"callout\"\n");
    assert!(error.starts_with("config.toml:1:1: ") && error.contains("needs an smtp or lmtp transport"), "{error}");
    let error = error_of("[[router]]\nname = \"a\"\ndriver = \"aliases\"\nfile = \"/dev/null\"\nverify = \"callout\"\n");
    assert!(error.contains("dnslookup, smarthost and mailertable"), "{error}");
    let error = error_of("[[transport]]\ndomains = [\"d.test\"]\ntransport = \"smtp\"\ncallout_random = true\n");
    assert!(error.starts_with("config.toml:4:") && error.contains("need verify = \"callout\""), "{error}");
    let error = error_of("[[transport]]\ndomains = [\"d.test\"]\ntransport = \"smtp\"\nverify = \"yes\"\n");
    assert!(error.starts_with("config.toml:4:") && error.contains("\"callout\" or \"none\""), "{error}");
    let error = error_of("[verify]\ncallout_timeout = \"10m\"\n");
    assert!(error.contains("at most 5m"), "{error}");
    let error = error_of("[verify]\ncallout_max_per_host = 0\n");
    assert!(error.starts_with("config.toml:2:"), "{error}");
}

#[test]
fn scanners_load_print_and_refuse_bad_values() {
    let text = r#"
[[scanner]]
name = "av"
kind = "clamd"
address = "unix:/run/clamav/clamd.ctl"

[[scanner]]
name = "spam"
kind = "spamd"
address = "127.0.0.1:783"
timeout = "10s"
max_concurrent = 4
queue_max = 0
on_failure = "accept"
max_size_bytes = 1048576
reject_score = 7.5

[[scanner]]
name = "filter"
kind = "pipe"
command = ["/usr/local/bin/filter", "{sender}", "{recipients}"]
user = "filter"
"#;
    let config = load_text(text).expect("loads");
    assert_eq!(config.scanners.len(), 3);
    assert_eq!(config.scanners[2].command.len(), 3);
    assert_eq!((config.scanners[2].user.as_deref(), config.scanners[2].group.as_deref()), (Some("filter"), None));
    let av = &config.scanners[0];
    assert_eq!((av.kind, av.max_concurrent, av.queue_max), (super::ScannerKind::Clamd, 8, 64));
    assert_eq!((av.on_failure, av.timeout.0), (super::OnFailure::Tempfail, std::time::Duration::from_secs(30)));
    let spam = &config.scanners[1];
    assert_eq!(spam.reject_score, Some(super::Score(7500)));
    assert_eq!((spam.max_concurrent, spam.queue_max, spam.max_size_bytes), (4, 0, Some(1_048_576)));
    assert_eq!(load_text(&config.to_toml()).expect("printed loads"), config);

    let error = error_of("[[scanner]]\nname = \"x\"\nkind = \"milter\"\naddress = \"127.0.0.1:1\"\n");
    assert!(error.starts_with("config.toml:3:") && error.contains("\"rspamd\" or \"pipe\""), "{error}");
    assert_eq!(
        load_text("[[scanner]]\nname = \"r\"\nkind = \"rspamd\"\naddress = \"127.0.0.1:11333\"\n").unwrap().scanners[0].kind,
        super::ScannerKind::Rspamd
    );
    let error = error_of("[[scanner]]\nname = \"x\"\nkind = \"pipe\"\ncommand = [\"bin/f\"]\n");
    assert!(error.starts_with("config.toml:4:") && error.contains("absolute path"), "{error}");
    let error = error_of("[[scanner]]\nname = \"x\"\nkind = \"pipe\"\naddress = \"127.0.0.1:1\"\n");
    assert!(error.contains("has no address"), "{error}");
    let error = error_of("[[scanner]]\nname = \"x\"\nkind = \"clamd\"\naddress = \"127.0.0.1:1\"\ncommand = [\"/bin/f\"]\n");
    assert!(error.contains("only a pipe scanner"), "{error}");
    let error = error_of("[[scanner]]\nname = \"x\"\nkind = \"clamd\"\naddress = \"unix:relative\"\n");
    assert!(error.starts_with("config.toml:4:") && error.contains("absolute"), "{error}");
    let error = error_of("[[scanner]]\nname = \"x\"\nkind = \"clamd\"\naddress = \"127.0.0.1:1\"\nreject_score = 5\n");
    assert!(error.contains("only a spamd scanner"), "{error}");
    let error = error_of("[[scanner]]\nname = \"x\"\nkind = \"clamd\"\n");
    assert!(error.contains("a scanner needs address"), "{error}");
    let error = error_of("[[scanner]]\nname = \"x\"\nkind = \"clamd\"\naddress = \"127.0.0.1:1\"\nmax_concurrent = 0\n");
    assert!(error.starts_with("config.toml:5:") && error.contains("at least 1"), "{error}");
}

#[test]
fn metrics_listen_loads_prints_and_refuses_bad_addresses() {
    assert_eq!(load_with("", &[]).expect("loads").metrics.listen, None);
    let config = load_with("[metrics]\nlisten = \"127.0.0.1:9025\"\n", &[]).expect("loads");
    assert_eq!(config.metrics.listen, Some("127.0.0.1:9025".parse().expect("address")));
    assert_eq!(load_with(&config.to_toml(), &[]).expect("printed loads"), config);
    let unset = load_with("[metrics]\nlisten = \"\"\n", &[]).expect("loads");
    assert_eq!(load_with(&unset.to_toml(), &[]).expect("printed loads"), unset);
    assert!(error_of("[metrics]\nlisten = \"localhost\"\n").contains("metrics.listen: bad socket address"));
    assert!(error_of("[metrics]\nport = 1\n").contains("metrics.port"));
}

#[test]
fn outbound_source_address_tls_verify_dane_and_mta_sts_load_print_and_refuse_bad_values() {
    let config = load_with(
        "[delivery]\nsource_address = [\"192.0.2.7\", \"2001:db8::7\"]\ntls = \"verify\"\ntls_ca_file = \"/etc/ca.pem\"\n\
         mta_sts = true\ndane = true\n\n[dns]\ndnssec_trusted = true\n\n[[transport]]\ndomains = [\"b.test\"]\n\
         transport = \"smtp\"\nsource_address = [\"192.0.2.8\"]\nhelo_name = \"out-b.example\"\ntls = \"verify\"\n",
        &[],
    )
    .expect("loads");
    let d = &config.delivery;
    assert_eq!(d.source_address.len(), 2);
    assert_eq!(d.tls, TlsPolicy::Verify);
    assert_eq!(d.tls_ca_file.as_deref(), Some(Path::new("/etc/ca.pem")));
    assert!(d.mta_sts && d.dane && d.mta_sts_ca_file.is_none());
    assert_eq!(config.dns.dnssec_trusted, Some(true));
    let rule = &config.transports[0];
    assert_eq!(rule.source_address.as_deref(), Some(&["192.0.2.8".parse().unwrap()][..]));
    assert_eq!(rule.helo_name.as_deref(), Some("out-b.example"));
    assert_eq!(load_with(&config.to_toml(), &[]).expect("printed loads"), config);
    let error = load_with("[delivery]\nsource_address = [\"192.0.2.7\", \"192.0.2.8\"]\n", &[]).expect_err("two IPv4");
    assert!(error.to_string().contains("at most one IPv4 and one IPv6 address"), "{error}");
    let error = load_with("[delivery]\nsource_address = [\"host.example\"]\n", &[]).expect_err("a name");
    assert!(error.to_string().contains("is not an IP address"), "{error}");
    let error = load_with(
        "[[transport]]\ndomains = [\"b.test\"]\ntransport = \"lmtp\"\nnexthop = \"unix:/run/lmtp\"\nhelo_name = \"x.example\"\n",
        &[],
    )
    .expect_err("not smtp");
    assert!(error.to_string().contains("only an smtp transport takes helo_name"), "{error}");
    let error = load_with("[delivery]\ntls = \"dane\"\n", &[]).expect_err("not a level");
    assert!(error.to_string().contains("\"verify\""), "{error}");
}
