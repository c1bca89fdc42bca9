//! One question against the configured name servers, sans-IO: the driver
//! sends what `Step::Send` says, feeds back what arrives (or the timeout,
//! or a transport error) and gets the next step, until `Step::Done`.
//!
//! The order follows resolv.conf(5): `attempts` rounds over the servers, in
//! the configured order (from a random one with `rotate`), one timeout per
//! transmission. Every transmission carries a fresh random id (RFC 5452
//! §9.2). A truncated UDP answer is asked again over TCP from the same
//! server (RFC 7766 §5); a FORMERR to a query with EDNS is asked again
//! without it (RFC 6891 §7); SERVFAIL, REFUSED and other errors move on to
//! the next server. UDP datagrams that do not match the transmission in
//! flight (source address, id, question) are ignored: the exchange keeps
//! waiting for the right one until the deadline.
//!
//! Place in the pipeline: driven by `resolver` (sockets and timers); its
//! result goes to the cache and to the caller.
//!
//! Bounds: at most `attempts × servers` slots, each at most one UDP and one
//! TCP transmission, plus one re-sent query without EDNS per exchange.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::query::{self, Interpretation, Question};
use super::random::Random;
use super::resolver::ResolverParams;
use super::{Lookup, ResolveError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// One query to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmission {
    pub server: SocketAddr,
    pub transport: Transport,
    pub id: u16,
    /// The encoded query (without TCP's length prefix).
    pub query: Vec<u8>,
    /// When to give up on this transmission and call `on_timeout`.
    pub deadline: Instant,
}

/// A definitive result for the question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    Answer(Lookup),
    /// The CNAME chain continues past this answer: ask for `target`.
    Chase { target: Question, hops: usize, ttl_s: u32 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Send(Transmission),
    Done(Result<Resolved, ResolveError>),
}

#[derive(Clone, Copy, Debug)]
struct Current {
    server: SocketAddr,
    transport: Transport,
    id: u16,
    deadline: Instant,
}

/// The state of one question's exchange with the servers.
#[derive(Debug)]
pub struct Exchange {
    question: Question,
    servers: Vec<SocketAddr>,
    server_first_index: usize,
    slot_count: usize,
    timeout: Duration,
    /// Slots (attempt × server) started so far.
    slot_started_count: usize,
    edns: bool,
    /// The transmission in flight; None before `start` and after `Done`.
    current: Option<Current>,
    failure_last: Option<ResolveError>,
    transmission_count: usize,
    /// Datagrams ignored as not matching.
    pub ignored_count: u64,
    /// The answer that ended the exchange had the AD bit set, to a secure
    /// question (`Question::secure`); false for any other.
    pub authentic: bool,
}

impl Exchange {
    pub fn new(question: Question, params: &ResolverParams, random: &mut Random) -> Exchange {
        assert!(!params.servers.is_empty() && params.attempts > 0, "parameters are validated");
        let server_first_index = if params.rotate { random.below(params.servers.len()) } else { 0 };
        Exchange {
            question,
            servers: params.servers.clone(),
            server_first_index,
            slot_count: params.servers.len() * params.attempts as usize,
            timeout: params.timeout,
            slot_started_count: 0,
            edns: true,
            current: None,
            failure_last: None,
            transmission_count: 0,
            ignored_count: 0,
            authentic: false,
        }
    }

    pub fn question(&self) -> &Question {
        &self.question
    }

    /// The first transmission.
    pub fn start(&mut self, random: &mut Random, now: Instant) -> Step {
        assert_eq!(self.transmission_count, 0, "start() once");
        self.next_slot(random, now)
    }

    /// A UDP datagram arrived from `from` for the transmission in flight.
    /// None: it does not match and is ignored; keep waiting until the
    /// deadline.
    pub fn on_udp_response(&mut self, from: SocketAddr, bytes: &[u8], random: &mut Random, now: Instant) -> Option<Step> {
        let current = self.current?;
        if current.transport != Transport::Udp || from != current.server {
            self.ignored_count += 1;
            return None;
        }
        match query::check_response(current.id, &self.question, bytes) {
            Ok(message) => Some(self.on_message(current, &message, random, now)),
            Err(_) => {
                self.ignored_count += 1;
                None
            }
        }
    }

    /// The whole response read from the TCP connection of the transmission
    /// in flight. A connection carries one query: a mismatch fails it.
    pub fn on_tcp_response(&mut self, bytes: &[u8], random: &mut Random, now: Instant) -> Step {
        let current = self.current.expect("a TCP response answers a transmission in flight");
        assert_eq!(current.transport, Transport::Tcp);
        match query::check_response(current.id, &self.question, bytes) {
            Ok(message) => self.on_message(current, &message, random, now),
            Err(mismatch) => {
                self.failure_last = Some(ResolveError::Io(format!("bad TCP response from {}: {mismatch:?}", current.server)));
                self.next_slot(random, now)
            }
        }
    }

    /// The deadline of the transmission in flight passed.
    pub fn on_timeout(&mut self, random: &mut Random, now: Instant) -> Step {
        assert!(self.current.is_some(), "a timeout ends a transmission in flight");
        self.failure_last = Some(ResolveError::Timeout);
        self.next_slot(random, now)
    }

    /// Sending, connecting or reading failed.
    pub fn on_transport_error(&mut self, error: String, random: &mut Random, now: Instant) -> Step {
        assert!(self.current.is_some(), "an error ends a transmission in flight");
        self.failure_last = Some(ResolveError::Io(error));
        self.next_slot(random, now)
    }

    /// The same transmission with a fresh id, for a driver whose socket
    /// already waits for a response with this one. Same deadline.
    pub fn reroll_id(&mut self, random: &mut Random) -> Transmission {
        let current = self.current.as_mut().expect("reroll_id() for a transmission in flight");
        current.id = random.next_u16();
        let current = *current;
        self.transmission(current)
    }

    fn on_message(
        &mut self,
        current: Current,
        message: &hickory_proto::op::Message,
        random: &mut Random,
        now: Instant,
    ) -> Step {
        let via_tcp = current.transport == Transport::Tcp;
        let interpretation = match query::interpret(&self.question, message, via_tcp) {
            Ok(interpretation) => interpretation,
            Err(error) => return self.done(Err(error)),
        };
        self.authentic = self.question.secure && message.authentic_data();
        match interpretation {
            Interpretation::Answer(lookup) => self.done(Ok(Resolved::Answer(lookup))),
            Interpretation::Chase { target, hops, ttl_s } => self.done(Ok(Resolved::Chase { target, hops, ttl_s })),
            Interpretation::Truncated => {
                debug_assert!(!via_tcp, "TC is ignored over TCP");
                self.send(current.server, Transport::Tcp, random, now)
            }
            Interpretation::ServerFailure(rcode) => {
                if rcode == hickory_proto::op::ResponseCode::FormErr && self.edns {
                    self.edns = false;
                    return self.send(current.server, current.transport, random, now);
                }
                self.failure_last = Some(ResolveError::ServerFailure { rcode: rcode.to_string() });
                self.next_slot(random, now)
            }
        }
    }

    fn next_slot(&mut self, random: &mut Random, now: Instant) -> Step {
        if self.slot_started_count == self.slot_count {
            let error = self.failure_last.take().unwrap_or(ResolveError::Timeout);
            return self.done(Err(error));
        }
        let server_index = (self.server_first_index + self.slot_started_count) % self.servers.len();
        self.slot_started_count += 1;
        self.send(self.servers[server_index], Transport::Udp, random, now)
    }

    fn send(&mut self, server: SocketAddr, transport: Transport, random: &mut Random, now: Instant) -> Step {
        self.transmission_count += 1;
        assert!(
            self.transmission_count <= 2 * self.slot_count + 1,
            "a slot is one UDP and one TCP transmission, plus one retry without EDNS"
        );
        let current = Current { server, transport, id: random.next_u16(), deadline: now + self.timeout };
        self.current = Some(current);
        Step::Send(self.transmission(current))
    }

    fn transmission(&self, current: Current) -> Transmission {
        Transmission {
            server: current.server,
            transport: current.transport,
            id: current.id,
            query: query::encode_query(current.id, &self.question, self.edns),
            deadline: current.deadline,
        }
    }

    fn done(&mut self, result: Result<Resolved, ResolveError>) -> Step {
        self.current = None;
        Step::Done(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::query::tests::{a, response_to, soa};
    use crate::dns::{RecordData, RecordKind};
    use hickory_proto::op::{Message, ResponseCode};
    use std::net::Ipv4Addr;

    const S1: &str = "192.0.2.53:53";
    const S2: &str = "198.51.100.53:53";

    fn params(servers: &[&str], attempts: u32) -> ResolverParams {
        ResolverParams {
            servers: servers.iter().map(|s| s.parse().unwrap()).collect(),
            attempts,
            timeout: Duration::from_secs(2),
            ..ResolverParams::default()
        }
    }

    fn send(step: Step) -> Transmission {
        match step {
            Step::Send(t) => t,
            Step::Done(result) => panic!("expected a transmission, got {result:?}"),
        }
    }

    fn a_answer(t: &Transmission) -> Vec<u8> {
        let mut response = response_to(&t.query, ResponseCode::NoError);
        response.add_answer(a("mx.example.", 60, [192, 0, 2, 25]));
        response.to_vec().unwrap()
    }

    fn expected_a() -> Step {
        let records = vec![RecordData::A(Ipv4Addr::new(192, 0, 2, 25))];
        Step::Done(Ok(Resolved::Answer(Lookup::Records { records, ttl_s: 60 })))
    }

    fn start(servers: &[&str], attempts: u32) -> (Exchange, Random, Transmission, Instant) {
        let mut random = Random::from_seed(42);
        let question = Question::new("mx.example", RecordKind::A).unwrap();
        let mut exchange = Exchange::new(question, &params(servers, attempts), &mut random);
        let now = Instant::now();
        let t = send(exchange.start(&mut random, now));
        (exchange, random, t, now)
    }

    #[test]
    fn a_secure_question_asks_for_the_ad_bit_and_reports_it() {
        for (secure, ad_in_answer, authentic) in
            [(true, true, true), (true, false, false), (false, true, false), (false, false, false)]
        {
            let mut random = Random::from_seed(7);
            let question = Question::new("mx.example", RecordKind::A).unwrap();
            let question = if secure { question.into_secure() } else { question };
            let mut exchange = Exchange::new(question, &params(&[S1], 1), &mut random);
            let now = Instant::now();
            let t = send(exchange.start(&mut random, now));
            assert_eq!(Message::from_vec(&t.query).unwrap().authentic_data(), secure);
            let mut response = response_to(&t.query, ResponseCode::NoError);
            response.add_answer(a("mx.example.", 60, [192, 0, 2, 25]));
            response.set_authentic_data(ad_in_answer);
            let step = exchange.on_udp_response(t.server, &response.to_vec().unwrap(), &mut random, now);
            assert_eq!(step, Some(expected_a()));
            assert_eq!(exchange.authentic, authentic, "secure {secure}, AD {ad_in_answer}");
        }
    }

    #[test]
    fn answer_over_udp() {
        let (mut exchange, mut random, t, now) = start(&[S1, S2], 2);
        assert_eq!((t.server, t.transport), (S1.parse().unwrap(), Transport::Udp));
        assert_eq!(t.deadline, now + Duration::from_secs(2));
        let query = Message::from_vec(&t.query).unwrap();
        assert_eq!(query.id(), t.id);
        assert!(query.extensions().is_some(), "EDNS first");
        let step = exchange.on_udp_response(t.server, &a_answer(&t), &mut random, now);
        assert_eq!(step, Some(expected_a()));
    }

    #[test]
    fn id_mismatch_and_wrong_source_are_ignored() {
        let (mut exchange, mut random, t, now) = start(&[S1], 1);
        let mut wrong_id = t.clone();
        wrong_id.id = t.id.wrapping_add(1);
        wrong_id.query = query::encode_query(wrong_id.id, exchange.question(), true);
        assert_eq!(exchange.on_udp_response(t.server, &a_answer(&wrong_id), &mut random, now), None);
        assert_eq!(exchange.on_udp_response(S2.parse().unwrap(), &a_answer(&t), &mut random, now), None);
        let other: SocketAddr = "192.0.2.53:5353".parse().unwrap();
        assert_eq!(exchange.on_udp_response(other, &a_answer(&t), &mut random, now), None, "the port counts");
        assert_eq!(exchange.on_udp_response(t.server, b"\x00\x01garbage", &mut random, now), None);
        let other_question = Question::new("other.example", RecordKind::A).unwrap();
        let spoof = response_to(&query::encode_query(t.id, &other_question, true), ResponseCode::NoError);
        assert_eq!(exchange.on_udp_response(t.server, &spoof.to_vec().unwrap(), &mut random, now), None);
        assert_eq!(exchange.ignored_count, 5);
        assert_eq!(exchange.on_udp_response(t.server, &a_answer(&t), &mut random, now), Some(expected_a()));
    }

    #[test]
    fn timeouts_walk_servers_then_attempts_with_fresh_ids() {
        let (mut exchange, mut random, t1, now) = start(&[S1, S2], 2);
        let t2 = send(exchange.on_timeout(&mut random, now));
        let t3 = send(exchange.on_timeout(&mut random, now));
        let t4 = send(exchange.on_timeout(&mut random, now));
        let servers: Vec<String> = [&t1, &t2, &t3, &t4].iter().map(|t| t.server.to_string()).collect();
        assert_eq!(servers, [S1, S2, S1, S2]);
        let ids: std::collections::HashSet<u16> = [&t1, &t2, &t3, &t4].iter().map(|t| t.id).collect();
        assert_eq!(ids.len(), 4, "every transmission has its own id");
        // A late answer to an earlier transmission no longer matches.
        assert_eq!(exchange.on_udp_response(t1.server, &a_answer(&t1), &mut random, now), None);
        assert_eq!(exchange.on_timeout(&mut random, now), Step::Done(Err(ResolveError::Timeout)));
    }

    #[test]
    fn truncation_asks_the_same_server_over_tcp() {
        let (mut exchange, mut random, t, now) = start(&[S1, S2], 1);
        let mut truncated = response_to(&t.query, ResponseCode::NoError);
        truncated.set_truncated(true);
        let later = now + Duration::from_millis(5);
        let tcp = send(exchange.on_udp_response(t.server, &truncated.to_vec().unwrap(), &mut random, later).unwrap());
        assert_eq!((tcp.server, tcp.transport), (t.server, Transport::Tcp));
        assert_ne!(tcp.id, t.id);
        assert_eq!(tcp.deadline, later + Duration::from_secs(2));
        // A UDP datagram is not the TCP answer.
        assert_eq!(exchange.on_udp_response(t.server, &a_answer(&tcp), &mut random, later), None);
        assert_eq!(exchange.on_tcp_response(&a_answer(&tcp), &mut random, later), expected_a());
    }

    #[test]
    fn tcp_failure_moves_to_the_next_server() {
        let (mut exchange, mut random, t, now) = start(&[S1, S2], 1);
        let mut truncated = response_to(&t.query, ResponseCode::NoError);
        truncated.set_truncated(true);
        let tcp = send(exchange.on_udp_response(t.server, &truncated.to_vec().unwrap(), &mut random, now).unwrap());
        assert_eq!(tcp.transport, Transport::Tcp);
        let next = send(exchange.on_transport_error("connection refused".into(), &mut random, now));
        assert_eq!((next.server, next.transport), (S2.parse().unwrap(), Transport::Udp));
        let step = exchange.on_timeout(&mut random, now);
        assert_eq!(step, Step::Done(Err(ResolveError::Timeout)));
    }

    #[test]
    fn tcp_mismatch_fails_the_slot() {
        let (mut exchange, mut random, t, now) = start(&[S1], 1);
        let mut truncated = response_to(&t.query, ResponseCode::NoError);
        truncated.set_truncated(true);
        let tcp = send(exchange.on_udp_response(t.server, &truncated.to_vec().unwrap(), &mut random, now).unwrap());
        let mut other = tcp.clone();
        other.id = tcp.id.wrapping_add(7);
        other.query = query::encode_query(other.id, exchange.question(), true);
        let step = exchange.on_tcp_response(&a_answer(&other), &mut random, now);
        assert!(matches!(step, Step::Done(Err(ResolveError::Io(_)))), "{step:?}");
    }

    #[test]
    fn servfail_tries_the_next_server_and_is_reported_last() {
        let (mut exchange, mut random, t, now) = start(&[S1, S2], 1);
        let servfail = response_to(&t.query, ResponseCode::ServFail).to_vec().unwrap();
        let t2 = send(exchange.on_udp_response(t.server, &servfail, &mut random, now).unwrap());
        assert_eq!(t2.server, S2.parse().unwrap());
        let refused = response_to(&t2.query, ResponseCode::Refused).to_vec().unwrap();
        let step = exchange.on_udp_response(t2.server, &refused, &mut random, now).unwrap();
        let Step::Done(Err(error)) = step else { panic!("{step:?}") };
        assert!(matches!(&error, ResolveError::ServerFailure { rcode } if rcode.contains("Refused")), "{error:?}");
        assert!(!error.is_permanent());
    }

    #[test]
    fn formerr_retries_without_edns_once() {
        let (mut exchange, mut random, t, now) = start(&[S1, S2], 1);
        let formerr = response_to(&t.query, ResponseCode::FormErr).to_vec().unwrap();
        let plain = send(exchange.on_udp_response(t.server, &formerr, &mut random, now).unwrap());
        assert_eq!(plain.server, t.server);
        assert!(Message::from_vec(&plain.query).unwrap().extensions().is_none());
        let formerr = response_to(&plain.query, ResponseCode::FormErr).to_vec().unwrap();
        let next = send(exchange.on_udp_response(plain.server, &formerr, &mut random, now).unwrap());
        assert_eq!(next.server, S2.parse().unwrap(), "a second FORMERR moves on");
        assert!(Message::from_vec(&next.query).unwrap().extensions().is_none(), "EDNS stays off");
    }

    #[test]
    fn negative_answer_ends_the_exchange() {
        let (mut exchange, mut random, t, now) = start(&[S1, S2], 1);
        let mut nx = response_to(&t.query, ResponseCode::NXDomain);
        nx.add_name_server(soa("example.", 3600, 300));
        let step = exchange.on_udp_response(t.server, &nx.to_vec().unwrap(), &mut random, now);
        assert_eq!(step, Some(Step::Done(Ok(Resolved::Answer(Lookup::NxDomain { ttl_s: 300 })))));
    }

    #[test]
    fn rotate_starts_at_a_random_server() {
        let servers = [S1, S2, "203.0.113.53:53"];
        let mut firsts = std::collections::HashSet::new();
        let mut random = Random::from_seed(9);
        for _ in 0..50 {
            let question = Question::new("mx.example", RecordKind::A).unwrap();
            let mut params = params(&servers, 1);
            params.rotate = true;
            let mut exchange = Exchange::new(question, &params, &mut random);
            firsts.insert(send(exchange.start(&mut random, Instant::now())).server);
        }
        assert_eq!(firsts.len(), 3);
    }

    #[test]
    fn reroll_keeps_server_and_deadline() {
        let (mut exchange, mut random, t, now) = start(&[S1], 1);
        let again = exchange.reroll_id(&mut random);
        assert_eq!((again.server, again.transport, again.deadline), (t.server, t.transport, t.deadline));
        assert_ne!(again.id, t.id);
        assert_eq!(exchange.on_udp_response(t.server, &a_answer(&t), &mut random, now), None, "the old id is gone");
        assert_eq!(exchange.on_udp_response(t.server, &a_answer(&again), &mut random, now), Some(expected_a()));
    }
}
