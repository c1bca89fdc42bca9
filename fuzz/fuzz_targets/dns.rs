//! Any bytes as a name server's response: `ringpost::dns` checks it
//! against the question (`query::check_response`), interprets it
//! (`query::interpret`: CNAME chains, NODATA, NXDOMAIN, truncation,
//! server failures), runs it through an exchange (`exchange::Exchange`, UDP
//! then TCP), caches the answer (`cache::Cache`) and plans the MX route
//! from it (`mx::plan`, `mx::assemble`). The same bytes as text are also a
//! domain (`Question::new`) and a resolv.conf.
//!
//! Input layout: byte 0 chooses the record type asked for (bits 0..2), a
//! secure question (bit 3), whether the response's id is made to match
//! the exchange's transmission (bit 4, so that the fuzzer need not guess
//! ids), the rest is the response. The question is always for
//! `example.com`. The seed corpus (`fuzz/make-corpus`) holds responses of
//! every kind the resolver tests build.
//!
//! Checked:
//! - nothing panics;
//! - an answer has at most `RECORD_COUNT_MAX` records, never none, and a
//!   TTL of at most `TTL_MAX_S` (a negative one at most
//!   `NEGATIVE_TTL_MAX_S`); a chase stays within `CNAME_CHAIN_LENGTH_MAX`;
//! - every record of an answer has the asked type;
//! - the cache, kept tiny, hands the answer back unchanged but for a TTL
//!   no larger than the one stored, and never holds more than its bound;
//! - an MX plan has at most `HOST_COUNT_MAX` distinct hosts, none the root;
//! - a domain that makes a question prints to a name that makes the same
//!   question.

#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use ringpost::dns::cache::Cache;
use ringpost::dns::exchange::{Exchange, Resolved, Step, Transport};
use ringpost::dns::mx::{assemble, plan, HOST_COUNT_MAX};
use ringpost::dns::query::{check_response, interpret, message_id, Interpretation, Question, RECORD_COUNT_MAX};
use ringpost::dns::random::Random;
use ringpost::dns::{
    Lookup, RecordData, RecordKind, ResolveError, ResolverParams, CNAME_CHAIN_LENGTH_MAX, NEGATIVE_TTL_MAX_S, TTL_MAX_S,
};

const DOMAIN: &str = "example.com";
const CACHE_ENTRIES_MAX: usize = 2;
/// Transmissions one exchange may make: attempts × servers slots, each
/// UDP and TCP, and one more without EDNS.
const TRANSMISSION_COUNT_MAX: usize = 16;

const KINDS: [RecordKind; 6] =
    [RecordKind::A, RecordKind::Aaaa, RecordKind::Mx, RecordKind::Ptr, RecordKind::Txt, RecordKind::Tlsa];

fn kind_matches(kind: RecordKind, record: &RecordData) -> bool {
    matches!(
        (kind, record),
        (RecordKind::A, RecordData::A(_))
            | (RecordKind::Aaaa, RecordData::Aaaa(_))
            | (RecordKind::Mx, RecordData::Mx(_))
            | (RecordKind::Ptr, RecordData::Ptr(_))
            | (RecordKind::Txt, RecordData::Txt(_))
            | (RecordKind::Tlsa, RecordData::Tlsa(_))
    )
}

fn check_lookup(kind: RecordKind, lookup: &Lookup) {
    match lookup {
        Lookup::Records { records, ttl_s } => {
            assert!(!records.is_empty() && records.len() <= RECORD_COUNT_MAX, "{} records", records.len());
            assert!(*ttl_s <= TTL_MAX_S, "TTL {ttl_s}");
            for record in records {
                assert!(kind_matches(kind, record), "{record:?} for {kind:?}");
            }
        }
        Lookup::NoData { ttl_s } | Lookup::NxDomain { ttl_s } => {
            assert!(*ttl_s <= NEGATIVE_TTL_MAX_S, "negative TTL {ttl_s}");
        }
    }
}

fn check_interpretation(question: &Question, result: &Result<Interpretation, ResolveError>) {
    match result {
        Ok(Interpretation::Answer(lookup)) => check_lookup(question.kind, lookup),
        Ok(Interpretation::Chase { target, hops, ttl_s }) => {
            assert!(*hops >= 1 && *hops <= CNAME_CHAIN_LENGTH_MAX, "{hops} hops");
            assert!(*ttl_s <= TTL_MAX_S);
            assert_eq!(target.kind, question.kind);
        }
        Ok(Interpretation::Truncated | Interpretation::ServerFailure(_)) | Err(_) => {}
    }
}

/// `bytes` with its id replaced by `id` (when long enough to have one).
fn with_id(bytes: &[u8], id: u16) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if out.len() >= 2 {
        out[..2].copy_from_slice(&id.to_be_bytes());
    }
    out
}

/// The response through an exchange with two servers: every transmission
/// gets the same bytes (its id patched in when `match_id`).
fn run_exchange(question: &Question, response: &[u8], match_id: bool, now: Instant) -> Option<(Lookup, bool)> {
    let params = ResolverParams {
        servers: vec!["127.0.0.1:53".parse().unwrap(), "[::1]:53".parse().unwrap()],
        ..ResolverParams::default()
    };
    let mut random = Random::from_seed(u64::from(message_id(response).unwrap_or(0)));
    let mut exchange = Exchange::new(question.clone(), &params, &mut random);
    let mut step = exchange.start(&mut random, now);
    for _ in 0..TRANSMISSION_COUNT_MAX {
        let transmission = match step {
            Step::Done(Ok(Resolved::Answer(lookup))) => {
                check_lookup(question.kind, &lookup);
                return Some((lookup, exchange.authentic));
            }
            Step::Done(Ok(Resolved::Chase { hops, .. })) => {
                assert!(hops >= 1 && hops <= CNAME_CHAIN_LENGTH_MAX);
                return None;
            }
            Step::Done(Err(_)) => return None,
            Step::Send(transmission) => transmission,
        };
        assert!(transmission.deadline > now);
        let bytes = if match_id { with_id(response, transmission.id) } else { response.to_vec() };
        step = match transmission.transport {
            Transport::Tcp => exchange.on_tcp_response(&bytes, &mut random, now),
            Transport::Udp => {
                let stranger: SocketAddr = "192.0.2.53:53".parse().unwrap();
                assert_eq!(exchange.on_udp_response(stranger, &bytes, &mut random, now), None);
                match exchange.on_udp_response(transmission.server, &bytes, &mut random, now) {
                    Some(next) => next,
                    None => exchange.on_timeout(&mut random, now),
                }
            }
        };
    }
    panic!("an exchange made more than {TRANSMISSION_COUNT_MAX} transmissions");
}

fn check_cache(question: &Question, lookup: &Lookup, authentic: bool, now: Instant) {
    let mut cache = Cache::new(CACHE_ENTRIES_MAX);
    let other = Question::new("other.example", question.kind).expect("a valid name");
    cache.insert(other.clone(), Lookup::NoData { ttl_s: 60 }, now);
    cache.insert_authentic(question.clone(), lookup.clone(), authentic && question.secure, now);
    let third = Question::new("third.example", RecordKind::Txt).expect("a valid name");
    cache.insert(third, Lookup::NxDomain { ttl_s: 30 }, now);
    assert!(cache.len() <= CACHE_ENTRIES_MAX);
    let later = now + Duration::from_millis(1500);
    if let Some(cached) = cache.get(question, later) {
        assert!(cached.ttl_s() <= lookup.ttl_s() && cached.ttl_s() >= 1);
        assert_eq!(cached.with_ttl_s(lookup.ttl_s()), *lookup);
    }
    cache.purge_expired(now + Duration::from_secs(u64::from(TTL_MAX_S) + 1));
    assert!(cache.is_empty(), "{} entries outlive the longest TTL", cache.len());
}

fn check_route(lookup: &Lookup) {
    let mut random = Random::from_seed(7);
    let Ok(planned) = plan(DOMAIN, lookup, &mut random) else { return };
    assert!(!planned.targets.is_empty() && planned.targets.len() <= HOST_COUNT_MAX);
    let mut names: Vec<&str> = planned.targets.iter().map(|t| t.name.as_str()).collect();
    assert!(names.iter().all(|name| *name != "."), "the root as a host");
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), planned.targets.len(), "a host planned twice");
    let a = Lookup::Records { records: vec![RecordData::A([192, 0, 2, 25].into())], ttl_s: 60 };
    let lookups = planned.targets.iter().map(|_| (Ok(a.clone()), Err(ResolveError::Timeout))).collect();
    let route = assemble(DOMAIN, planned, lookups).expect("hosts with addresses make a route");
    assert!(!route.hosts.is_empty());
}

fn check_text(text: &str) {
    if let Ok(question) = Question::new(text, RecordKind::Mx) {
        let printed = question.name_text();
        let again = Question::new(&printed, RecordKind::Mx).expect("a printed name parses");
        assert_eq!(again, question, "{text:?} printed as {printed:?}");
    }
    let params = ResolverParams::from_resolv_conf(text);
    let _ = params.validate();
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, response)) = data.split_first() else { return };
    let kind = KINDS[usize::from(flags & 7) % KINDS.len()];
    let mut question = Question::new(DOMAIN, kind).expect("a valid name");
    if flags & 8 != 0 {
        question = question.into_secure();
    }
    let now = Instant::now();

    if let Some(id) = message_id(response) {
        if let Ok(message) = check_response(id, &question, response) {
            for via_tcp in [false, true] {
                check_interpretation(&question, &interpret(&question, &message, via_tcp));
            }
            for other in KINDS {
                let asked = question.with_kind(other);
                check_interpretation(&asked, &interpret(&asked, &message, true));
            }
        }
    }
    if let Some((lookup, authentic)) = run_exchange(&question, response, flags & 16 != 0, now) {
        check_cache(&question, &lookup, authentic, now);
        if kind == RecordKind::Mx {
            check_route(&lookup);
        }
    }
    if let Ok(text) = std::str::from_utf8(response) {
        check_text(text);
    }
});
