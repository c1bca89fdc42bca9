//! One DNS question on the wire, sans-IO: encodes a query (RFC 1035 §4.1,
//! with an EDNS0 OPT record, RFC 6891), checks that a response belongs to it
//! (id, QR bit, opcode, question: RFC 5452 §9.1) and interprets the answer:
//! records of the asked type after following CNAMEs (at most
//! `CNAME_CHAIN_LENGTH_MAX`), NODATA or NXDOMAIN with their negative TTL
//! (RFC 2308 §5), truncation (the caller retries over TCP, RFC 7766 §5) or a
//! server failure (the caller tries the next server).
//!
//! Place in the pipeline: the wire format under `exchange` (retries across
//! servers) and `resolver` (sockets). hickory-proto does the encoding and
//! decoding; its types stay inside `query` and `exchange`.
//!
//! Bounds: at most `RECORD_COUNT_MAX` records are kept per answer; a
//! response is at most 65,535 bytes (TCP's length prefix), and a decoding
//! error is a `Mismatch`, never a panic.

use std::cmp::min;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use super::{Lookup, MxRecord, RecordData, RecordKind, ResolveError};
use super::{CNAME_CHAIN_LENGTH_MAX, NEGATIVE_TTL_MAX_S, TTL_MAX_S};

/// The UDP payload size we advertise with EDNS0: the DNS Flag Day 2020
/// value, which avoids IP fragmentation on nearly every path. Larger
/// answers come truncated and are asked again over TCP.
pub const UDP_PAYLOAD_BYTES_MAX: u16 = 1232;
/// Records of the asked type kept from one answer; more are dropped. Mail
/// routing needs a handful of MX hosts and addresses, not hundreds.
pub const RECORD_COUNT_MAX: usize = 64;
/// The fixed DNS header (RFC 1035 §4.1.1).
pub const HEADER_BYTES: usize = 12;
/// Bytes kept of one TXT record's concatenated strings; a longer record is
/// dropped (a 4096-bit RSA DKIM key is about 800 bytes).
pub const TXT_RECORD_BYTES_MAX: usize = 8192;

/// A name and a record type, class IN. The name is absolute and lower-case
/// (internationalised names in their A-label form), so it is also the
/// cache's key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Question {
    name: Name,
    pub kind: RecordKind,
    /// Asked with the AD bit set (RFC 6840 §5.7), so that a validating
    /// resolver says whether the answer is authenticated data. A secure
    /// question is a cache key of its own.
    pub secure: bool,
}

impl Question {
    /// Parses a domain as given in an address (`example.com`, with or
    /// without the final dot; UTF-8 labels become A-labels, RFC 5891).
    pub fn new(domain: &str, kind: RecordKind) -> Result<Question, ResolveError> {
        let invalid = |reason: String| ResolveError::InvalidName { name: domain.to_string(), reason };
        let mut name = Name::from_str_relaxed(domain).map_err(|e| invalid(e.to_string()))?;
        name.set_fqdn(true);
        if name.is_root() {
            return Err(invalid("the root is not a mail domain".to_string()));
        }
        Ok(Question::from_name(name, kind))
    }

    /// As `new`, asking for the AD bit (DANE's lookups).
    pub fn secure(domain: &str, kind: RecordKind) -> Result<Question, ResolveError> {
        Ok(Question::new(domain, kind)?.into_secure())
    }

    /// The same question asking for the AD bit.
    pub fn into_secure(self) -> Question {
        Question { secure: true, ..self }
    }

    pub(crate) fn from_name(name: Name, kind: RecordKind) -> Question {
        let mut name = name.to_lowercase();
        name.set_fqdn(true);
        Question { name, kind, secure: false }
    }

    /// The name in text form, lower-case, without the final dot.
    pub fn name_text(&self) -> String {
        name_text(&self.name)
    }

    /// The same name with another record type.
    pub fn with_kind(&self, kind: RecordKind) -> Question {
        Question { name: self.name.clone(), kind, secure: self.secure }
    }
}

/// A name in text form: lower-case, A-labels, no final dot; the root is ".".
pub fn name_text(name: &Name) -> String {
    if name.is_root() {
        return ".".to_string();
    }
    let text = name.to_lowercase().to_ascii();
    match text.strip_suffix('.') {
        Some(stripped) => stripped.to_string(),
        None => text,
    }
}

impl RecordKind {
    pub(crate) fn record_type(self) -> RecordType {
        match self {
            RecordKind::A => RecordType::A,
            RecordKind::Aaaa => RecordType::AAAA,
            RecordKind::Mx => RecordType::MX,
            RecordKind::Ptr => RecordType::PTR,
            RecordKind::Txt => RecordType::TXT,
            RecordKind::Tlsa => RecordType::TLSA,
        }
    }
}

/// Encodes a recursive query for `question` with `id`; with `edns`, an OPT
/// record advertises `UDP_PAYLOAD_BYTES_MAX`.
pub fn encode_query(id: u16, question: &Question, edns: bool) -> Vec<u8> {
    let mut message = Message::new();
    message
        .set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .set_authentic_data(question.secure)
        .add_query(Query::query(question.name.clone(), question.kind.record_type()));
    if edns {
        let mut opt = Edns::new();
        opt.set_max_payload(UDP_PAYLOAD_BYTES_MAX).set_version(0);
        message.set_edns(opt);
    }
    // A question is one name of at most 255 bytes (checked by `Name`) and
    // one type: encoding it cannot fail.
    let bytes = message.to_vec().expect("a single-question query always encodes");
    debug_assert!(bytes.len() <= 512, "a query fits a classic UDP datagram");
    bytes
}

/// The id of a datagram, if it is long enough to be a DNS message.
pub fn message_id(bytes: &[u8]) -> Option<u16> {
    if bytes.len() < HEADER_BYTES {
        return None;
    }
    Some(u16::from_be_bytes([bytes[0], bytes[1]]))
}

/// Why a datagram is not the response to our query. Such datagrams are
/// ignored (late answers to an earlier attempt, or spoofing attempts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// Not decodable as a DNS message.
    Malformed,
    /// The QR bit says query, or the opcode is not QUERY.
    NotResponse,
    Id { expected: u16, got: u16 },
    /// The question section differs from ours.
    Question,
}

/// Decodes `bytes` and checks that they answer query `id` for `question`.
/// Error responses (FORMERR, SERVFAIL, NOTIMP, REFUSED) may come with an
/// empty question section; they are accepted on the id alone, since all
/// they can cause is trying the next server.
pub fn check_response(id: u16, question: &Question, bytes: &[u8]) -> Result<Message, Mismatch> {
    let got = message_id(bytes).ok_or(Mismatch::Malformed)?;
    if got != id {
        return Err(Mismatch::Id { expected: id, got });
    }
    let message = Message::from_vec(bytes).map_err(|_| Mismatch::Malformed)?;
    if message.message_type() != MessageType::Response || message.op_code() != OpCode::Query {
        return Err(Mismatch::NotResponse);
    }
    let queries = message.queries();
    let error_without_question = queries.is_empty() && is_server_failure(message.response_code());
    let same_question = queries.len() == 1
        && queries[0].name() == &question.name
        && queries[0].query_type() == question.kind.record_type()
        && queries[0].query_class() == DNSClass::IN;
    if !same_question && !error_without_question {
        return Err(Mismatch::Question);
    }
    Ok(message)
}

fn is_server_failure(rcode: ResponseCode) -> bool {
    !matches!(rcode, ResponseCode::NoError | ResponseCode::NXDomain)
}

/// What a matching response means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interpretation {
    /// Definitive: records, NODATA or NXDOMAIN, with the TTL to cache it for.
    Answer(Lookup),
    /// The CNAME chain leaves this response without records or a negative
    /// answer for its end: ask again for `target`. `hops` CNAMEs were
    /// followed, the smallest of their TTLs is `ttl_s`.
    Chase { target: Question, hops: usize, ttl_s: u32 },
    /// The TC bit over UDP: ask the same server over TCP. Nothing of a
    /// truncated response is used (RFC 2181 §9).
    Truncated,
    /// SERVFAIL, REFUSED, FORMERR, NOTIMP or another error: try the next
    /// server.
    ServerFailure(ResponseCode),
}

/// Interprets a response that passed `check_response`. `via_tcp`: the TC
/// bit is ignored, there is no larger transport to fall back to.
pub fn interpret(question: &Question, message: &Message, via_tcp: bool) -> Result<Interpretation, ResolveError> {
    if message.truncated() && !via_tcp {
        return Ok(Interpretation::Truncated);
    }
    let rcode = message.response_code();
    if is_server_failure(rcode) {
        return Ok(Interpretation::ServerFailure(rcode));
    }
    let wanted = question.kind.record_type();
    let mut name = question.name.clone();
    let mut ttl_s = TTL_MAX_S;
    let mut hops = 0;
    loop {
        let (records, records_ttl_s) = records_at(message.answers(), &name, wanted);
        if !records.is_empty() {
            let ttl_s = min(ttl_s, records_ttl_s);
            return Ok(Interpretation::Answer(Lookup::Records { records, ttl_s }));
        }
        let Some((target, cname_ttl_s)) = cname_at(message.answers(), &name) else {
            break;
        };
        hops += 1;
        if hops > CNAME_CHAIN_LENGTH_MAX {
            return Err(ResolveError::CnameChainTooLong {
                name: question.name_text(),
                limit: CNAME_CHAIN_LENGTH_MAX,
            });
        }
        ttl_s = min(ttl_s, cname_ttl_s);
        name = target;
    }
    // RFC 2308 §5: without an SOA a negative answer is not cached.
    let negative_ttl_s = negative_ttl_s(message).map(|negative| min(negative, ttl_s));
    if rcode == ResponseCode::NXDomain {
        // RFC 6604 §3: after CNAMEs the rcode is about the chain's last name.
        return Ok(Interpretation::Answer(Lookup::NxDomain { ttl_s: negative_ttl_s.unwrap_or(0) }));
    }
    if hops > 0 && negative_ttl_s.is_none() {
        let target = Question::from_name(name, question.kind);
        return Ok(Interpretation::Chase { target, hops, ttl_s });
    }
    Ok(Interpretation::Answer(Lookup::NoData { ttl_s: negative_ttl_s.unwrap_or(0) }))
}

/// The records of type `wanted` owned by `name`, at most
/// `RECORD_COUNT_MAX`, and the smallest TTL among them.
fn records_at(answers: &[Record], name: &Name, wanted: RecordType) -> (Vec<RecordData>, u32) {
    let mut records = Vec::new();
    let mut ttl_s = TTL_MAX_S;
    for record in answers {
        if record.name() != name || record.record_type() != wanted || record.dns_class() != DNSClass::IN {
            continue;
        }
        let Some(data) = record_data(record) else {
            continue;
        };
        if records.len() == RECORD_COUNT_MAX {
            break;
        }
        ttl_s = min(ttl_s, record.ttl());
        records.push(data);
    }
    (records, ttl_s)
}

fn record_data(record: &Record) -> Option<RecordData> {
    match record.data()? {
        RData::A(a) => Some(RecordData::A(a.0)),
        RData::AAAA(aaaa) => Some(RecordData::Aaaa(aaaa.0)),
        RData::MX(mx) => Some(RecordData::Mx(MxRecord {
            preference: mx.preference(),
            exchange: name_text(mx.exchange()),
        })),
        RData::PTR(ptr) => Some(RecordData::Ptr(name_text(&ptr.0))),
        RData::TXT(txt) => {
            let bytes: usize = txt.txt_data().iter().map(|part| part.len()).sum();
            if bytes > TXT_RECORD_BYTES_MAX {
                return None;
            }
            Some(RecordData::Txt(txt.txt_data().concat()))
        }
        RData::TLSA(tlsa) => {
            if tlsa.cert_data().len() > crate::tls::dane::TLSA_DATA_BYTES_MAX {
                return None;
            }
            Some(RecordData::Tlsa(crate::tls::dane::Tlsa {
                usage: u8::from(tlsa.cert_usage()),
                selector: u8::from(tlsa.selector()),
                matching: u8::from(tlsa.matching()),
                data: tlsa.cert_data().to_vec(),
            }))
        }
        _ => None,
    }
}

/// The CNAME owned by `name`: its target and TTL.
fn cname_at(answers: &[Record], name: &Name) -> Option<(Name, u32)> {
    answers.iter().find_map(|record| match record.data() {
        Some(RData::CNAME(cname)) if record.name() == name && record.dns_class() == DNSClass::IN => {
            Some((cname.0.clone(), record.ttl()))
        }
        _ => None,
    })
}

/// RFC 2308 §5: a negative answer lives for the smaller of the SOA record's
/// TTL and its MINIMUM field, here also at most `NEGATIVE_TTL_MAX_S`.
fn negative_ttl_s(message: &Message) -> Option<u32> {
    message.name_servers().iter().find_map(|record| match record.data() {
        Some(RData::SOA(soa)) => Some(min(min(record.ttl(), soa.minimum()), NEGATIVE_TTL_MAX_S)),
        _ => None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, SOA};
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::str::FromStr;

    pub(crate) fn name(text: &str) -> Name {
        Name::from_str(text).unwrap()
    }

    /// The response a server would send to `query`: id and question copied.
    pub(crate) fn response_to(query: &[u8], rcode: ResponseCode) -> Message {
        let query = Message::from_vec(query).unwrap();
        let mut response = Message::new();
        response
            .set_id(query.id())
            .set_message_type(MessageType::Response)
            .set_op_code(OpCode::Query)
            .set_recursion_desired(true)
            .set_recursion_available(true)
            .set_response_code(rcode)
            .add_queries(query.queries().to_vec());
        response
    }

    pub(crate) fn a(owner: &str, ttl_s: u32, addr: [u8; 4]) -> Record {
        Record::from_rdata(name(owner), ttl_s, RData::A(A(Ipv4Addr::from(addr))))
    }
    pub(crate) fn aaaa(owner: &str, ttl_s: u32, addr: Ipv6Addr) -> Record {
        Record::from_rdata(name(owner), ttl_s, RData::AAAA(AAAA(addr)))
    }
    pub(crate) fn mx(owner: &str, ttl_s: u32, preference: u16, exchange: &str) -> Record {
        Record::from_rdata(name(owner), ttl_s, RData::MX(MX::new(preference, name(exchange))))
    }
    pub(crate) fn cname(owner: &str, ttl_s: u32, target: &str) -> Record {
        Record::from_rdata(name(owner), ttl_s, RData::CNAME(CNAME(name(target))))
    }
    pub(crate) fn soa(zone: &str, ttl_s: u32, minimum_s: u32) -> Record {
        let data = SOA::new(name(&format!("ns.{zone}")), name(&format!("admin.{zone}")), 1, 3600, 600, 86400, minimum_s);
        Record::from_rdata(name(zone), ttl_s, RData::SOA(data))
    }

    fn ask(domain: &str, kind: RecordKind, id: u16) -> (Question, Vec<u8>) {
        let question = Question::new(domain, kind).unwrap();
        let query = encode_query(id, &question, true);
        (question, query)
    }

    fn answer(question: &Question, response: &Message) -> Result<Interpretation, ResolveError> {
        let bytes = response.to_vec().unwrap();
        let message = check_response(response.id(), question, &bytes).unwrap();
        interpret(question, &message, false)
    }

    #[test]
    fn query_encodes_question_edns_and_rd() {
        let (question, bytes) = ask("Example.COM", RecordKind::Mx, 0xBEEF);
        let message = Message::from_vec(&bytes).unwrap();
        assert_eq!(message.id(), 0xBEEF);
        assert!(message.recursion_desired());
        assert_eq!(message.message_type(), MessageType::Query);
        assert_eq!(message.queries().len(), 1);
        assert_eq!(message.queries()[0].name().to_ascii(), "example.com.");
        assert_eq!(message.queries()[0].query_type(), RecordType::MX);
        assert_eq!(message.max_payload(), UDP_PAYLOAD_BYTES_MAX);
        assert_eq!(question.name_text(), "example.com");
        let plain = Message::from_vec(&encode_query(1, &question, false)).unwrap();
        assert!(plain.extensions().is_none());
    }

    #[test]
    fn names_normalise_and_reject_root() {
        let q = Question::new("MX.Bücher.example.", RecordKind::A).unwrap();
        assert_eq!(q.name_text(), "mx.xn--bcher-kva.example");
        assert_eq!(q, Question::new("mx.xn--BCHER-kva.example", RecordKind::A).unwrap());
        assert!(matches!(Question::new(".", RecordKind::Mx), Err(ResolveError::InvalidName { .. })));
        assert!(matches!(Question::new("a..b", RecordKind::Mx), Err(ResolveError::InvalidName { .. })));
        let long = format!("{}.example", "a".repeat(64));
        assert!(Question::new(&long, RecordKind::Mx).is_err(), "labels are at most 63 bytes");
    }

    #[test]
    fn mismatched_responses_are_rejected() {
        let (question, query) = ask("example.com", RecordKind::A, 7);
        let mut response = response_to(&query, ResponseCode::NoError);
        response.add_answer(a("example.com.", 60, [192, 0, 2, 1]));
        let bytes = response.to_vec().unwrap();
        assert!(check_response(7, &question, &bytes).is_ok());
        assert_eq!(check_response(8, &question, &bytes).unwrap_err(), Mismatch::Id { expected: 8, got: 7 });
        let other = Question::new("example.org", RecordKind::A).unwrap();
        assert_eq!(check_response(7, &other, &bytes).unwrap_err(), Mismatch::Question);
        assert_eq!(check_response(7, &question.with_kind(RecordKind::Aaaa), &bytes).unwrap_err(), Mismatch::Question);
        assert_eq!(check_response(7, &question, &query).unwrap_err(), Mismatch::NotResponse);
        assert_eq!(check_response(7, &question, &bytes[..11]).unwrap_err(), Mismatch::Malformed);
        assert_eq!(check_response(7, &question, &bytes[..bytes.len() - 3]).unwrap_err(), Mismatch::Malformed);
        // The name matches whatever its case (no 0x20 randomisation here).
        let mut upper = response_to(&encode_query(7, &Question::new("EXAMPLE.com", RecordKind::A).unwrap(), false), ResponseCode::NoError);
        upper.queries_mut()[0].set_name(name("EXAMPLE.COM."));
        assert!(check_response(7, &question, &upper.to_vec().unwrap()).is_ok());
    }

    #[test]
    fn error_without_question_matches_on_id() {
        let (question, query) = ask("example.com", RecordKind::A, 9);
        let mut response = response_to(&query, ResponseCode::FormErr);
        response.take_queries();
        let bytes = response.to_vec().unwrap();
        let message = check_response(9, &question, &bytes).unwrap();
        assert_eq!(interpret(&question, &message, false).unwrap(), Interpretation::ServerFailure(ResponseCode::FormErr));
        let mut empty_ok = response_to(&query, ResponseCode::NoError);
        empty_ok.take_queries();
        assert_eq!(check_response(9, &question, &empty_ok.to_vec().unwrap()).unwrap_err(), Mismatch::Question);
    }

    #[test]
    fn records_with_min_ttl() {
        let (question, query) = ask("example.com", RecordKind::Mx, 1);
        let mut response = response_to(&query, ResponseCode::NoError);
        response.add_answer(mx("example.com.", 300, 10, "mx1.example.com."));
        response.add_answer(mx("example.com.", 200, 20, "MX2.example.com."));
        response.add_additional(a("mx1.example.com.", 5, [192, 0, 2, 1]));
        let expected = Lookup::Records {
            records: vec![
                RecordData::Mx(MxRecord { preference: 10, exchange: "mx1.example.com".into() }),
                RecordData::Mx(MxRecord { preference: 20, exchange: "mx2.example.com".into() }),
            ],
            ttl_s: 200,
        };
        assert_eq!(answer(&question, &response).unwrap(), Interpretation::Answer(expected));
    }

    #[test]
    fn ttl_is_capped() {
        let (question, query) = ask("example.com", RecordKind::Aaaa, 1);
        let mut response = response_to(&query, ResponseCode::NoError);
        response.add_answer(aaaa("example.com.", u32::MAX / 2, Ipv6Addr::LOCALHOST));
        let Interpretation::Answer(lookup) = answer(&question, &response).unwrap() else { panic!() };
        assert_eq!(lookup.ttl_s(), TTL_MAX_S);
    }

    #[test]
    fn records_beyond_the_bound_are_dropped() {
        let (question, query) = ask("big.example", RecordKind::A, 1);
        let mut response = response_to(&query, ResponseCode::NoError);
        for i in 0..(RECORD_COUNT_MAX + 10) {
            response.add_answer(a("big.example.", 60, [10, 0, (i / 256) as u8, i as u8]));
        }
        let Interpretation::Answer(Lookup::Records { records, .. }) = answer(&question, &response).unwrap() else {
            panic!()
        };
        assert_eq!(records.len(), RECORD_COUNT_MAX);
    }

    #[test]
    fn cname_chain_is_followed_with_min_ttl() {
        let (question, query) = ask("www.example.com", RecordKind::A, 1);
        let mut response = response_to(&query, ResponseCode::NoError);
        // Out of order on purpose: the chain is followed by owner name.
        response.add_answer(a("host.example.net.", 600, [192, 0, 2, 7]));
        response.add_answer(cname("alias.example.org.", 30, "host.example.net."));
        response.add_answer(cname("www.example.com.", 120, "alias.example.org."));
        response.add_answer(a("unrelated.example.", 1, [192, 0, 2, 99]));
        let expected = Lookup::Records { records: vec![RecordData::A(Ipv4Addr::new(192, 0, 2, 7))], ttl_s: 30 };
        assert_eq!(answer(&question, &response).unwrap(), Interpretation::Answer(expected));
    }

    #[test]
    fn cname_chain_is_bounded() {
        let chain = |length: usize| {
            let (question, query) = ask("c0.example", RecordKind::A, 1);
            let mut response = response_to(&query, ResponseCode::NoError);
            for i in 0..length {
                response.add_answer(cname(&format!("c{i}.example."), 60, &format!("c{}.example.", i + 1)));
            }
            response.add_answer(a(&format!("c{length}.example."), 60, [192, 0, 2, 1]));
            answer(&question, &response)
        };
        assert!(matches!(chain(CNAME_CHAIN_LENGTH_MAX), Ok(Interpretation::Answer(Lookup::Records { .. }))));
        let error = chain(CNAME_CHAIN_LENGTH_MAX + 1).unwrap_err();
        assert_eq!(error, ResolveError::CnameChainTooLong { name: "c0.example".into(), limit: CNAME_CHAIN_LENGTH_MAX });
        assert!(error.is_permanent());
    }

    #[test]
    fn cname_loop_ends_at_the_bound() {
        let (question, query) = ask("a.example", RecordKind::Mx, 1);
        let mut response = response_to(&query, ResponseCode::NoError);
        response.add_answer(cname("a.example.", 60, "b.example."));
        response.add_answer(cname("b.example.", 60, "a.example."));
        assert!(matches!(answer(&question, &response), Err(ResolveError::CnameChainTooLong { .. })));
    }

    #[test]
    fn cname_without_end_is_chased() {
        let (question, query) = ask("www.example.com", RecordKind::A, 1);
        let mut response = response_to(&query, ResponseCode::NoError);
        response.add_answer(cname("www.example.com.", 90, "cdn.example.net."));
        let target = Question::new("cdn.example.net", RecordKind::A).unwrap();
        assert_eq!(answer(&question, &response).unwrap(), Interpretation::Chase { target, hops: 1, ttl_s: 90 });
    }

    #[test]
    fn nxdomain_and_nodata_take_the_soa_ttl() {
        let (question, query) = ask("nothing.example", RecordKind::Mx, 1);
        let mut response = response_to(&query, ResponseCode::NXDomain);
        response.add_name_server(soa("example.", 3600, 300));
        let nx = Interpretation::Answer(Lookup::NxDomain { ttl_s: 300 });
        assert_eq!(answer(&question, &response).unwrap(), nx);
        let mut response = response_to(&query, ResponseCode::NoError);
        response.add_name_server(soa("example.", 60, 300));
        assert_eq!(answer(&question, &response).unwrap(), Interpretation::Answer(Lookup::NoData { ttl_s: 60 }));
        let mut response = response_to(&query, ResponseCode::NoError);
        response.add_name_server(soa("example.", 86400, 86400));
        assert_eq!(
            answer(&question, &response).unwrap(),
            Interpretation::Answer(Lookup::NoData { ttl_s: NEGATIVE_TTL_MAX_S })
        );
    }

    #[test]
    fn negative_answer_without_soa_is_not_cacheable() {
        let (question, query) = ask("nothing.example", RecordKind::A, 1);
        let response = response_to(&query, ResponseCode::NXDomain);
        assert_eq!(answer(&question, &response).unwrap(), Interpretation::Answer(Lookup::NxDomain { ttl_s: 0 }));
        let response = response_to(&query, ResponseCode::NoError);
        assert_eq!(answer(&question, &response).unwrap(), Interpretation::Answer(Lookup::NoData { ttl_s: 0 }));
    }

    #[test]
    fn nxdomain_at_the_end_of_a_cname_chain() {
        let (question, query) = ask("alias.example", RecordKind::A, 1);
        let mut response = response_to(&query, ResponseCode::NXDomain);
        response.add_answer(cname("alias.example.", 20, "gone.example."));
        response.add_name_server(soa("example.", 3600, 300));
        assert_eq!(answer(&question, &response).unwrap(), Interpretation::Answer(Lookup::NxDomain { ttl_s: 20 }));
    }

    #[test]
    fn truncation_is_signalled_over_udp_only() {
        let (question, query) = ask("big.example", RecordKind::A, 1);
        let mut response = response_to(&query, ResponseCode::NoError);
        response.set_truncated(true);
        response.add_answer(a("big.example.", 60, [192, 0, 2, 1]));
        assert_eq!(answer(&question, &response).unwrap(), Interpretation::Truncated);
        let bytes = response.to_vec().unwrap();
        let message = check_response(1, &question, &bytes).unwrap();
        assert!(matches!(interpret(&question, &message, true), Ok(Interpretation::Answer(Lookup::Records { .. }))));
    }

    #[test]
    fn server_errors_say_try_the_next_server() {
        let (question, query) = ask("example.com", RecordKind::A, 1);
        for rcode in [ResponseCode::ServFail, ResponseCode::Refused, ResponseCode::NotImp, ResponseCode::FormErr] {
            let response = response_to(&query, rcode);
            assert_eq!(answer(&question, &response).unwrap(), Interpretation::ServerFailure(rcode));
        }
    }

    #[test]
    fn garbage_never_panics() {
        let (question, query) = ask("example.com", RecordKind::Mx, 0x0102);
        let mut response = response_to(&query, ResponseCode::NoError);
        response.add_answer(mx("example.com.", 60, 10, "mx.example.com."));
        let bytes = response.to_vec().unwrap();
        let mut random = super::super::random::Random::from_seed(3);
        for _ in 0..2000 {
            let mut mutated = bytes.clone();
            for _ in 0..1 + random.below(4) {
                let i = 2 + random.below(mutated.len() - 2);
                mutated[i] = random.next_u16() as u8;
            }
            mutated.truncate(HEADER_BYTES + random.below(mutated.len() - HEADER_BYTES + 1));
            if let Ok(message) = check_response(0x0102, &question, &mutated) {
                let _ = interpret(&question, &message, false);
            }
        }
    }
}
