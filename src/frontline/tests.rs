//! Unit tests of the front line's pure parts: answer ranges, address
//! reversal, scoring, HELO checks, reverse DNS verdicts, the greet pause.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use super::dnsbl::{is_listed, parse_answer_range, reversed, total};
use super::pause::{Pause, State};
use super::rdns::{decide, ptr_name, Verdict};
use super::helo;
use crate::config::{Dnsbl, FrontPolicy, HeloAction, HeloCheck, HeloMatch, ReverseDns};
use crate::dns::{Lookup, RecordData, ResolveError};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn answer_ranges() {
    let one = Ipv4Addr::new(127, 0, 0, 2);
    assert_eq!(parse_answer_range("127.0.0.2").unwrap(), (one, one));
    assert_eq!(
        parse_answer_range("127.0.0.4..127.0.0.11").unwrap(),
        (Ipv4Addr::new(127, 0, 0, 4), Ipv4Addr::new(127, 0, 0, 11))
    );
    assert!(parse_answer_range("127.0.0.11..127.0.0.4").is_err());
    assert!(parse_answer_range("localhost").is_err());
    assert!(parse_answer_range("::1").is_err());
}

#[test]
fn reversal_by_octet_and_nibble() {
    assert_eq!(reversed(ip("192.0.2.1")), "1.2.0.192");
    assert_eq!(reversed(ip("::ffff:192.0.2.1")), "1.2.0.192", "IPv4-mapped is IPv4");
    assert_eq!(
        reversed(ip("2001:db8::1")),
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
    );
    assert_eq!(ptr_name(ip("127.0.0.2")), "2.0.0.127.in-addr.arpa");
    assert!(ptr_name(ip("2001:db8::1")).ends_with(".8.b.d.0.1.0.0.2.ip6.arpa"));
}

#[test]
fn listing_by_answers() {
    let a = |d| Ipv4Addr::new(127, 0, 0, d);
    assert!(is_listed(&[a(2)], &[]), "any answer without ranges");
    assert!(!is_listed(&[], &[]));
    let ranges = [(a(2), a(2)), (a(4), a(11))];
    assert!(is_listed(&[a(10)], &ranges));
    assert!(!is_listed(&[a(3)], &ranges));
    assert!(is_listed(&[a(3), a(4)], &ranges));
}

fn zone(name: &str, weight: i64) -> Dnsbl {
    Dnsbl { zone: name.to_string(), answers: Vec::new(), weight }
}

#[test]
fn scoring() {
    let zones = [zone("bl.test", 1), zone("big.test", 3), zone("wl.test", -5)];
    let listed = total(&zones, &[true, true, false], 1);
    assert_eq!(listed.weight, 4);
    assert_eq!(listed.blocked_by.as_deref(), Some("big.test"), "the heaviest listing zone is named");
    let allowed = total(&zones, &[true, true, true], 1);
    assert_eq!(allowed.weight, -1);
    assert_eq!(allowed.blocked_by, None, "the allowlist outweighs");
    assert_eq!(allowed.zones, vec!["bl.test", "big.test", "wl.test"]);
    let below = total(&zones, &[true, false, false], 2);
    assert_eq!(below.blocked_by, None, "below the threshold");
    let nothing = total(&zones, &[false, false, false], 0);
    assert_eq!(nothing.blocked_by, None, "no listing zone, nothing to name");
}

#[test]
fn helo_rules_and_builtins() {
    let policy = FrontPolicy {
        helo_reject_own_name: true,
        helo_reject_ip_mismatch: true,
        helo_reject_invalid: true,
        ..FrontPolicy::default()
    };
    let rules = vec![
        HeloCheck { matcher: HeloMatch::Pattern("^bot[0-9]+\\.evil$".into()), action: HeloAction::Tag, text: String::new() },
        HeloCheck { matcher: HeloMatch::Name("friend".into()), action: HeloAction::Reject, text: "go away".into() },
    ];
    let (client, local) = (ip("192.0.2.7"), ip("192.0.2.1"));
    let check = |name: &str| helo::check(&policy, &rules, name, "mx.example", client, local);
    let tagged = check("BOT42.evil").unwrap();
    assert_eq!((tagged.action, tagged.check.as_str(), tagged.builtin), (HeloAction::Tag, "helo_check[0]", false));
    assert_eq!(check("Friend").unwrap().text, "go away", "names are case-insensitive; rules before built-ins");
    assert_eq!(check("MX.example").unwrap().check, "helo_reject_own_name");
    assert_eq!(check("[192.0.2.1]").unwrap().check, "helo_reject_own_name");
    assert_eq!(check("[192.0.2.9]").unwrap().check, "helo_reject_ip_mismatch");
    assert_eq!(check("[192.0.2.7]"), None, "the client's own literal");
    assert_eq!(check("[IPv6:::ffff:192.0.2.7]"), None);
    assert_eq!(check("localhost").unwrap().check, "helo_reject_invalid");
    assert_eq!(check("192.0.2.7").unwrap().check, "helo_reject_invalid", "an address needs brackets");
    assert_eq!(check("bad_name.example").unwrap().check, "helo_reject_invalid");
    assert_eq!(check("client.example.org"), None);
    let off = FrontPolicy::default();
    assert_eq!(helo::check(&off, &[], "localhost", "mx.example", client, local), None, "built-ins are off by default");
    assert!(helo::compile("(unclosed").is_err());
}

#[test]
fn reverse_dns_verdicts() {
    let client = ip("192.0.2.7");
    let ptr = |name: &str| Ok(Lookup::Records { records: vec![RecordData::Ptr(name.into())], ttl_s: 60 });
    let a = |addr: [u8; 4]| Ok(Lookup::Records { records: vec![RecordData::A(Ipv4Addr::from(addr))], ttl_s: 60 });
    let require = ReverseDns::Require;
    let fcrdns = ReverseDns::RequireForwardConfirmed;
    assert_eq!(decide(require, client, &ptr("host.example"), &[]), Verdict::Pass("host.example".into()));
    assert_eq!(decide(require, client, &Ok(Lookup::NxDomain { ttl_s: 60 }), &[]), Verdict::Absent);
    assert_eq!(decide(require, client, &Err(ResolveError::Timeout), &[]), Verdict::TempFail);
    let good = [("host.example".to_string(), a([192, 0, 2, 7]))];
    assert_eq!(decide(fcrdns, client, &ptr("host.example"), &good), Verdict::Pass("host.example".into()));
    let other = [("host.example".to_string(), a([192, 0, 2, 8]))];
    assert_eq!(decide(fcrdns, client, &ptr("host.example"), &other), Verdict::Mismatch("host.example".into()));
    let failed = [("host.example".to_string(), Err(ResolveError::Timeout))];
    assert_eq!(decide(fcrdns, client, &ptr("host.example"), &failed), Verdict::TempFail);
    let codes = |v: Verdict| v.refusal(client).map(|r| r.code);
    assert_eq!(codes(Verdict::TempFail), Some(450));
    assert_eq!(codes(Verdict::Absent), Some(550));
    assert_eq!(codes(Verdict::Mismatch("x.example".into())), Some(550));
    assert_eq!(codes(Verdict::Pass("x.example".into())), None);
}

#[test]
fn greet_pause_states() {
    let t0 = Instant::now();
    let mut quiet = Pause::new(t0, Duration::from_secs(2));
    assert_eq!(quiet.state(), State::Waiting);
    quiet.on_time(t0 + Duration::from_secs(1));
    assert_eq!(quiet.state(), State::Waiting);
    quiet.on_time(t0 + Duration::from_secs(2));
    assert_eq!(quiet.state(), State::Done);
    quiet.on_input(5);
    assert_eq!(quiet.state(), State::Done, "input after the pause is the session's");

    let mut talker = Pause::new(t0, Duration::from_secs(2));
    talker.on_input(4);
    assert_eq!(talker.state(), State::EarlyTalker);
    talker.on_time(t0 + Duration::from_secs(3));
    assert_eq!(talker.state(), State::EarlyTalker);

    let mut gone = Pause::new(t0, Duration::from_secs(2));
    gone.on_input(0);
    assert_eq!(gone.state(), State::Closed);

    assert_eq!(Pause::new(t0, Duration::ZERO).state(), State::Done, "no pause");
}

// ---- configuration: [policy] keys, [[dnsbl]], [[helo_check]] ----

fn load(text: &str) -> Result<crate::config::Config, String> {
    crate::config::load_str(std::path::Path::new("config.toml"), text, &[]).map_err(|e| e.to_string())
}

const FRONT_CONFIG: &str = r#"
[policy]
dnsbl_threshold = 3
dnsbl_action = "reject_at_rcpt"
dnsbl_timeout = "500ms"
greet_pause = "3s"
strict_pipelining = false
helo_require = true
helo_reject_own_name = true
helo_reject_ip_mismatch = true
helo_reject_invalid = true
reverse_dns = "require_forward_confirmed"

[[dnsbl]]
zone = "Zen.Example."
answers = ["127.0.0.2", "127.0.0.4..127.0.0.11"]
weight = 2

[[dnsbl]]
zone = "wl.example"
weight = -5

[[helo_check]]
pattern = "^bot[0-9]+\\.example$"
action = "tag"

[[helo_check]]
name = "Friend.Example"
text = "Not my friend"
"#;

#[test]
fn front_config_reads_and_prints_back_equal() {
    let config = load(FRONT_CONFIG).expect("loads");
    let front = &config.policy.front;
    assert_eq!(front.dnsbl_threshold, 3);
    assert_eq!(front.dnsbl_action, crate::config::DnsblAction::RejectAtRcpt);
    assert_eq!(front.dnsbl_timeout.0, Duration::from_millis(500));
    assert_eq!(front.greet_pause.0, Duration::from_secs(3));
    assert!(!front.strict_pipelining && front.helo_require && front.helo_reject_invalid);
    assert_eq!(front.reverse_dns, ReverseDns::RequireForwardConfirmed);
    assert_eq!(config.dnsbls.len(), 2);
    assert_eq!(config.dnsbls[0].zone, "zen.example");
    assert_eq!(config.dnsbls[0].answers.len(), 2);
    assert_eq!((config.dnsbls[0].weight, config.dnsbls[1].weight), (2, -5));
    assert_eq!(config.helo_checks[0].action, HeloAction::Tag);
    assert_eq!(config.helo_checks[1].matcher, HeloMatch::Name("friend.example".into()));
    assert_eq!(config.helo_checks[1].text, "Not my friend");
    let printed = config.to_toml();
    assert_eq!(load(&printed).expect("printed config loads"), config, "{printed}");
    let defaults = load("").expect("loads");
    assert_eq!(defaults.policy.front, FrontPolicy::default());
    assert!(defaults.policy.front.strict_pipelining, "on by default");
    assert_eq!(load(&defaults.to_toml()).expect("printed defaults load"), defaults);
}

#[test]
fn front_config_errors_name_file_line_and_key() {
    let error = load("[policy]\n\ndnsbl_action = \"drop\"\n").unwrap_err();
    assert!(error.starts_with("config.toml:3:") && error.contains("policy.dnsbl_action"), "{error}");
    let error = load("[policy]\ngreet_pause = \"2m\"\n").unwrap_err();
    assert!(error.contains("policy.greet_pause") && error.contains("at most 60s"), "{error}");
    let error = load("[policy]\nreverse_dns = \"yes\"\n").unwrap_err();
    assert!(error.starts_with("config.toml:2:") && error.contains("policy.reverse_dns"), "{error}");
    let error = load("[[dnsbl]]\nzone = \"bl.example\"\nanswers = [\"127.0.0.9..127.0.0.2\"]\n").unwrap_err();
    assert!(error.starts_with("config.toml:3:") && error.contains("dnsbl[0].answers[0]"), "{error}");
    let error = load("[[dnsbl]]\nweight = 2\n").unwrap_err();
    assert!(error.contains("dnsbl[0]") && error.contains("needs zone"), "{error}");
    let error = load("[[dnsbl]]\nzone = \"a.example\"\n[[dnsbl]]\nzone = \"A.example\"\n").unwrap_err();
    assert!(error.starts_with("config.toml:4:") && error.contains("listed above"), "{error}");
    let error = load("[[helo_check]]\npattern = \"(unclosed\"\n").unwrap_err();
    assert!(error.starts_with("config.toml:2:") && error.contains("helo_check[0].pattern"), "{error}");
    let error = load("[[helo_check]]\nname = \"x.example\"\naction = \"tag\"\ntext = \"no\"\n").unwrap_err();
    assert!(error.contains("helo_check[0].text"), "{error}");
    let error = load("[[helo_check]]\naction = \"reject\"\n").unwrap_err();
    assert!(error.contains("needs pattern or name"), "{error}");
    let error = load("[[dnsbl]]\nzone = \"a.example\"\ncolour = 1\n").unwrap_err();
    assert!(error.contains("unknown key dnsbl[0].colour"), "{error}");
    let many: String = (0..17).map(|i| format!("[[dnsbl]]\nzone = \"z{i}.example\"\n")).collect();
    assert!(load(&many).unwrap_err().contains("at most 16"));
}
