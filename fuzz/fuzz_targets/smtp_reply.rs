//! The SMTP client's side of a conversation: any bytes as what the server
//! sends, read by the client's reply reader (`ringpost::fuzzing::
//! read_replies`) and by the whole client machine (`ringpost::smtp::client`)
//! running one or more transactions.
//!
//! Input layout: byte 0 chooses the client's settings (LMTP, pipelining,
//! STARTTLS, session reuse, body type, probe), bytes 1..9 seed the
//! generator of the driver's choices (feed cuts, TLS results, BDAT chunks,
//! time jumps), the rest is the server's bytes. The seed corpus
//! (`fuzz/make-corpus`) is the server side of the transcript tests.
//!
//! Checked:
//! - the reader gives the same replies however the bytes are cut;
//! - every reply it gives has a code 200..599, one to
//!   `REPLY_LINE_COUNT_MAX` lines, an enhanced code of the reply's class,
//!   and reads back the same from its own wire form;
//! - the client machine ends (`Done`) within a bounded number of steps,
//!   once the server's bytes are used up and the connection is lost;
//! - its outcome has one result per recipient, the malformed recipient
//!   refused with 501 5.1.3 before anything was sent for it, a delivered
//!   recipient only after MAIL was accepted, and no result without a code
//!   of its class;
//! - every output it writes is bounded.

#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use ringpost::smtp::client::{
    parse_enhanced, parse_reply_line, BodyType, Client, ClientEvent, ClientParams, RcptOutcome, StartTls, Transaction,
    ADDRESS_BYTES_MAX, BDAT_CHUNK_BYTES_MAX, REPLY_LINE_BYTES_MAX, REPLY_LINE_COUNT_MAX,
};
use ringpost::smtp::dsn::{MailDsn, RcptDsn};
use ringpost::smtp::reply::Reply;

/// Transactions one session may run (with `keep_open`).
const TRANSACTION_COUNT_MAX: usize = 3;
/// Steps (polls) of one session before the machine counts as looping.
const STEP_COUNT_MAX: usize = 100_000;
/// Most octets one `take_output` may return: the commands of one
/// pipelined group (EHLO, MAIL, every RCPT, DATA, each with an address of
/// at most `ADDRESS_BYTES_MAX` and its parameters) or one BDAT chunk.
const OUTPUT_BYTES_MAX: usize = BDAT_CHUNK_BYTES_MAX + 16 * (ADDRESS_BYTES_MAX + 600);
/// The recipient the client must refuse itself (an angle bracket).
const BAD_RECIPIENT: &str = "bad<rcpt@example.org";

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

/// Cuts `bytes` into feeds of random sizes (all at once for seed 0).
fn cut<'a>(bytes: &'a [u8], choices: &mut Choices, seed: u64) -> Vec<&'a [u8]> {
    let mut feeds = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let size = if seed == 0 { rest.len() } else { 1 + choices.below(rest.len() as u64) as usize };
        let (feed, later) = rest.split_at(size);
        feeds.push(feed);
        rest = later;
    }
    feeds
}

fn check_reply(reply: &Reply) {
    assert!((200..600).contains(&reply.code), "code {}", reply.code);
    assert!(!reply.lines.is_empty() && reply.lines.len() <= REPLY_LINE_COUNT_MAX);
    if let Some(enhanced) = reply.enhanced {
        assert_eq!(u16::from(enhanced.0), reply.code / 100, "enhanced class of {}", reply.code);
    }
}

fn check_reader(data: &[u8], seed: u64) {
    let choices = &mut Choices(seed);
    let whole = ringpost::fuzzing::read_replies(&[data]);
    let feeds = cut(data, choices, seed);
    let pieces = ringpost::fuzzing::read_replies(&feeds);
    assert_eq!(whole, pieces, "the replies depend on how the bytes were cut");
    for reply in whole.iter().flatten() {
        check_reply(reply);
        let mut wire = Vec::new();
        reply.write_to(&mut wire);
        let fits = wire.split(|&b| b == b'\n').all(|line| line.len() < REPLY_LINE_BYTES_MAX);
        if fits {
            assert_eq!(ringpost::fuzzing::read_replies(&[&wire]), vec![Ok(reply.clone())], "wire form {wire:?}");
        }
    }
    for line in data.split(|&b| b == b'\n') {
        if let Ok((code, _, text)) = parse_reply_line(line) {
            assert!((200..600).contains(&code));
            if let Some((enhanced, rest)) = parse_enhanced(&String::from_utf8_lossy(text), code) {
                assert_eq!(u16::from(enhanced.0), code / 100);
                assert!(String::from_utf8_lossy(text).ends_with(rest));
            }
        }
    }
}

fn transaction(flags: u8, index: usize) -> Transaction {
    let body = match (flags >> 4) & 3 {
        0 | 3 => BodyType::SevenBit,
        1 => BodyType::EightBitMime,
        _ => BodyType::BinaryMime,
    };
    let recipients = vec![format!("a{index}@example.org"), BAD_RECIPIENT.to_string(), format!("b{index}@example.net")];
    Transaction {
        reverse_path: if index == 1 { String::new() } else { "sender@example.com".to_string() },
        rcpt_dsn: vec![RcptDsn::default(); recipients.len()],
        recipients,
        size_bytes: 1234,
        body,
        smtputf8: flags & 64 != 0,
        probe: flags & 128 != 0,
        replica_of: None,
        mail_dsn: MailDsn::default(),
    }
}

fn check_outcome(txn: &Transaction, recipients: &[RcptOutcome], mail_accepted: bool) {
    assert_eq!(recipients.len(), txn.recipients.len(), "one result per recipient");
    for (address, outcome) in txn.recipients.iter().zip(recipients) {
        let reply = outcome.reply();
        let class = match outcome {
            RcptOutcome::Delivered(_) => 2,
            RcptOutcome::Transient(_) => 4,
            RcptOutcome::Permanent(_) => 5,
        };
        assert_eq!(reply.code / 100, class, "{outcome:?}");
        check_reply(reply);
        if address == BAD_RECIPIENT {
            assert_eq!(reply.code, 501, "{outcome:?}");
        }
        if class == 2 {
            assert!(mail_accepted, "a delivered recipient without an accepted MAIL");
        }
    }
}

fn run_client(flags: u8, data: &[u8], seed: u64) {
    let choices = &mut Choices(seed);
    let mut params = ClientParams::new("client.example");
    params.lmtp = flags & 1 != 0;
    params.pipelining_enabled = flags & 2 != 0;
    params.starttls = match (flags >> 2) & 3 {
        0 | 3 => StartTls::Never,
        1 => StartTls::IfOffered,
        _ => StartTls::Required,
    };
    params.keep_open = choices.below(2) == 0;
    params.transcript = choices.below(2) == 0;
    let mut now = Instant::now();
    let mut index = 0;
    let mut txn = transaction(flags, index);
    let mut client = Client::new(params, txn.clone(), now);
    let mut feeds = cut(data, choices, seed).into_iter();
    let mut connected = true;
    for _ in 0..STEP_COUNT_MAX {
        let event = client.poll(now);
        let output = client.take_output();
        assert!(output.len() <= OUTPUT_BYTES_MAX, "{} octets of output", output.len());
        match event {
            ClientEvent::NeedInput => match feeds.next() {
                Some(feed) => {
                    client.feed(feed);
                    if choices.below(32) == 0 {
                        now = client.deadline() + Duration::from_secs(1);
                    }
                }
                None if connected => {
                    connected = false;
                    client.on_connection_lost();
                }
                None => panic!("NeedInput after the connection was lost"),
            },
            ClientEvent::SendBody => {
                if choices.below(2) == 0 {
                    client.body_progress(now);
                }
                client.body_sent();
            }
            ClientEvent::SendChunk => {
                let last = choices.below(3) == 0;
                client.bdat_chunk(now, b"binary\0content\r\n", last);
            }
            ClientEvent::StartTls => {
                if choices.below(3) == 0 {
                    client.tls_failed(now, "handshake failure");
                } else {
                    client.tls_started(now);
                }
            }
            ClientEvent::Done(outcome) => {
                check_outcome(&txn, &outcome.recipients, outcome.mail_accepted);
                if let Some(reply) = &outcome.final_reply {
                    check_reply(reply);
                }
                index += 1;
                if !(outcome.reusable && connected && index < TRANSACTION_COUNT_MAX) {
                    return;
                }
                txn = transaction(flags, index);
                client.next_transaction(txn.clone(), now);
            }
        }
    }
    panic!("the client took {STEP_COUNT_MAX} steps without finishing");
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let seed = rest.get(..8).map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 octets")));
    let server_bytes = rest.get(8..).unwrap_or_default();
    check_reader(server_bytes, seed);
    run_client(flags, server_bytes, seed);
});
