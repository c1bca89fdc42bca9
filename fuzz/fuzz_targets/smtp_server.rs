//! The SMTP server machine (`ringpost::smtp::server`) as ingress drives it,
//! with the client's bytes and every choice of the driver taken from the
//! fuzz input: how the bytes are cut into feeds, the verdict to each
//! question (MAIL, RCPT, end of data, AUTH, SCRAM steps, XREPLTAKEN), when
//! the clock jumps past the deadline, when the client closes.
//!
//! Input layout: byte 0 chooses the session's settings (bare LF and NUL
//! policies, STARTTLS, AUTH, SCRAM, replication, strict pipelining), bytes
//! 1..9 seed the generator of the driver's choices, the rest is what the
//! client sends. The seed corpus (`fuzz/make-corpus`) is the client side of
//! the transcript tests behind a zero header.
//!
//! Checked on every step, besides the machine's own debug assertions:
//! - a `Body` chunk is at most `BODY_CHUNK_BYTES_MAX + BODY_CHUNK_SLACK_BYTES`;
//! - content events come in order (DataStart, Body*, DataEnd or
//!   DataAborted) and only inside a transaction with a recipient;
//! - Mail only outside a transaction, Rcpt only inside one, and a
//!   transaction holds at most `max_recipients` recipients, each with its
//!   DSN parameters;
//! - `Pending` never comes back, since every question is answered at once;
//! - no reply without a cause: a second poll after `NeedInput` with nothing
//!   fed writes nothing, and the replies written never outnumber the
//!   greeting, the command lines fed, the overlong lines, the verdicts and
//!   the driver's own calls (timeout, end of file, shutdown, TLS);
//! - after `Close`, polling says `Close` and writes nothing, whatever is fed;
//! - the heap the session keeps stays bounded.

#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use ringpost::smtp::reply::{Enhanced, Reply};
use ringpost::smtp::server::{
    BareLfPolicy, Event, NulPolicy, PeerInfo, Server, ServerParams, BODY_CHUNK_BYTES_MAX, BODY_CHUNK_SLACK_BYTES,
    COMMAND_LINE_BYTES_MAX,
};

const MAX_RECIPIENTS: usize = 3;
/// Most octets in one feed: the driver reads into a buffer of this size.
const FEED_BYTES_MAX: usize = 1024;
/// Heap a session may keep: one read, one body chunk and its slack, the
/// command and AUTH lines, and the boxed states around them, with room for
/// the doubling of vectors.
const RETAINED_HEAP_BYTES_MAX: usize = 4 * (FEED_BYTES_MAX + BODY_CHUNK_BYTES_MAX + BODY_CHUNK_SLACK_BYTES);
/// Polls per step before the machine counts as looping.
const POLL_COUNT_MAX: usize = 10_000;

/// splitmix64: the driver's choices, from the seed in the input.
struct Choices(u64);

impl Choices {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

fn params(flags: u8) -> ServerParams {
    ServerParams {
        hostname: "mx.test".to_string(),
        greeting: "ESMTP ringpost".to_string(),
        max_recipients: MAX_RECIPIENTS,
        max_message_bytes: 1000,
        max_text_line_bytes: 100,
        max_errors: 5,
        command_timeout: Duration::from_secs(300),
        data_timeout: Duration::from_secs(600),
        bare_lf: if flags & 1 == 0 { BareLfPolicy::Reject } else { BareLfPolicy::Normalize },
        nul: if flags & 2 == 0 { NulPolicy::Reject } else { NulPolicy::Strip },
        starttls: flags & 4 != 0,
    }
}

/// Replies written in `output`: the last line of each (code and a space).
fn reply_count(output: &[u8]) -> usize {
    output.split(|&b| b == b'\n').filter(|line| line.len() >= 4 && line[3] == b' ').count()
}

struct Driver {
    server: Server,
    choices: Choices,
    now: Instant,
    in_content: bool,
    closed: bool,
    /// Causes a reply may have: greeting, LF-ended lines, overlong lines,
    /// verdicts and driver calls.
    causes: usize,
    replies: usize,
}

impl Driver {
    fn verdict(&mut self, event: &Event) -> Reply {
        let pick = self.choices.below(8);
        match event {
            Event::Auth { .. } => match pick {
                0..=3 => Reply::new(235, Enhanced(2, 7, 0), "authenticated"),
                4 | 5 => Reply::new(535, Enhanced(5, 7, 8), "bad credentials"),
                6 => Reply::new(454, Enhanced(4, 7, 0), "try later"),
                _ => Reply::new(421, Enhanced(4, 7, 0), "closing"),
            },
            Event::AuthStep { .. } => match pick {
                0..=3 => Reply { code: 334, enhanced: None, lines: vec!["cj1ub25jZQ==".to_string()] },
                4 | 5 => {
                    self.server.set_auth_login("user");
                    Reply::new(235, Enhanced(2, 7, 0), "authenticated")
                }
                6 => Reply::new(535, Enhanced(5, 7, 8), "bad proof"),
                _ => Reply::new(421, Enhanced(4, 7, 0), "closing"),
            },
            _ => match pick {
                0..=4 => Reply::new(250, Enhanced(2, 0, 0), "ok"),
                5 => Reply::new(451, Enhanced(4, 3, 0), "try later"),
                6 => Reply::new(550, Enhanced(5, 7, 1), "refused"),
                _ => Reply::new(421, Enhanced(4, 3, 0), "closing"),
            },
        }
    }

    fn take_output(&mut self) {
        let output = self.server.take_output();
        self.replies += reply_count(&output);
        assert!(
            self.replies <= self.causes,
            "{} replies for {} causes; last output {:?}",
            self.replies,
            self.causes,
            String::from_utf8_lossy(&output)
        );
        if self.closed {
            assert!(output.is_empty(), "output after Close");
        }
    }

    fn check_transaction(&self) {
        if let Some(t) = self.server.transaction() {
            assert!(t.recipients.len() <= MAX_RECIPIENTS, "{} recipients", t.recipients.len());
            assert_eq!(t.recipients.len(), t.recipient_dsn.len());
        }
        let retained_bytes = self.server.retained_heap_bytes();
        assert!(retained_bytes <= RETAINED_HEAP_BYTES_MAX, "session keeps {retained_bytes} heap octets");
    }

    /// Polls until the machine needs input or closes, answering every
    /// question with a verdict from the input.
    fn run(&mut self) {
        for _ in 0..POLL_COUNT_MAX {
            let event = self.server.poll(self.now);
            self.check_transaction();
            match &event {
                Event::NeedInput => {
                    self.take_output();
                    assert_eq!(self.server.poll(self.now), Event::NeedInput, "a second poll with no input");
                    assert!(self.server.take_output().is_empty(), "a reply with no input");
                    return;
                }
                Event::Close => {
                    self.take_output();
                    self.closed = true;
                    assert_eq!(self.server.poll(self.now), Event::Close);
                    return;
                }
                Event::Pending => panic!("Pending with every question answered"),
                Event::Helo { .. } | Event::ReplicaDone { .. } => {}
                Event::Mail { .. } => assert!(!self.server.in_transaction(), "MAIL inside a transaction"),
                Event::Rcpt { .. } => assert!(self.server.in_transaction(), "RCPT outside a transaction"),
                Event::DataStart => {
                    assert!(!self.in_content, "DataStart twice");
                    let t = self.server.transaction().expect("content inside a transaction");
                    assert!(!t.recipients.is_empty(), "content without a recipient");
                    self.in_content = true;
                }
                Event::Body(chunk) => {
                    assert!(self.in_content, "Body outside content");
                    assert!(chunk.len() <= BODY_CHUNK_BYTES_MAX + BODY_CHUNK_SLACK_BYTES);
                }
                Event::DataEnd => {
                    assert!(self.in_content, "DataEnd outside content");
                    self.in_content = false;
                }
                Event::DataAborted { .. } => {
                    // The reply may be positive: RSET between BDAT chunks
                    // abandons the content with 250.
                    assert!(self.in_content, "DataAborted outside content");
                    self.in_content = false;
                }
                Event::StartTls => {
                    self.take_output();
                    self.causes += 1;
                    if self.choices.below(4) == 0 {
                        self.server.on_eof();
                    } else {
                        self.server.tls_started(self.now);
                    }
                    continue;
                }
                Event::ReplicaTaken { .. } | Event::Auth { .. } | Event::AuthStep { .. } => {}
            }
            if matches!(
                event,
                Event::Mail { .. }
                    | Event::Rcpt { .. }
                    | Event::DataEnd
                    | Event::ReplicaTaken { .. }
                    | Event::Auth { .. }
                    | Event::AuthStep { .. }
            ) {
                let reply = self.verdict(&event);
                self.causes += 1;
                self.server.decide(reply);
            }
        }
        panic!("the machine polled {POLL_COUNT_MAX} times without needing input");
    }

    fn feed(&mut self, bytes: &[u8]) {
        let line_count = bytes.iter().filter(|&&b| b == b'\n').count();
        // An overlong line is answered before its end; a line may also be
        // answered twice when it is the error that closes the session.
        self.causes += 2 * (line_count + bytes.len() / COMMAND_LINE_BYTES_MAX + 1);
        self.server.feed(bytes);
        self.run();
    }

    /// Driver calls that may happen between reads.
    fn interrupt(&mut self) {
        match self.choices.below(64) {
            0 => {
                // The clock passes the deadline.
                self.now = self.server.deadline() + Duration::from_secs(1);
                self.causes += 1;
                self.server.on_timeout(self.now);
            }
            1 => {
                self.now += Duration::from_secs(self.choices.below(1000));
            }
            _ => return,
        }
        self.run();
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let seed = rest.get(..8).map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 octets")));
    let mut input = rest.get(8..).unwrap_or_default();

    let peer = PeerInfo { addr: "192.0.2.9:40000".parse().unwrap(), local: "192.0.2.1:25".parse().unwrap() };
    let now = Instant::now();
    let mut server = Server::new(Arc::new(params(flags)), peer, now);
    if flags & 8 != 0 {
        server.offer_auth(flags & 16 != 0, flags & 32 != 0);
        if flags & 64 != 0 {
            server.offer_scram();
        }
    }
    if flags & 128 != 0 {
        server.offer_replicas();
        server.strict_pipelining();
    }
    let mut driver =
        Driver { server, choices: Choices(seed), now, in_content: false, closed: false, causes: 1, replies: 0 };
    driver.run();

    // Seed 0 feeds the whole input at once, as the transcripts' lines are
    // fed; any other seed cuts it at random points.
    while !input.is_empty() {
        let feed_bytes = if seed == 0 {
            input.len().min(FEED_BYTES_MAX)
        } else {
            1 + driver.choices.below(FEED_BYTES_MAX.min(input.len()) as u64) as usize
        };
        let (feed, later) = input.split_at(feed_bytes);
        input = later;
        driver.feed(feed);
        if seed != 0 {
            driver.interrupt();
        }
    }

    // The end of the session: the client closes, or the server stops.
    driver.causes += 1;
    if seed & 1 == 0 {
        driver.server.on_eof();
    } else {
        driver.server.shutdown();
    }
    driver.run();
    assert!(driver.closed, "no Close after the end of the session");
    assert!(!driver.in_content, "content neither ended nor aborted at Close");
    driver.server.feed(b"QUIT\r\n");
    assert_eq!(driver.server.poll(driver.now), Event::Close);
    assert!(driver.server.take_output().is_empty(), "output after Close");
});
