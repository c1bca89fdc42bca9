//! The values behind the checked-in vectors, and a seeded PRNG shared by
//! the tests.

#![allow(dead_code)]

use queue_format::*;

pub const SHARD_INDEX: u16 = 3;
/// 2026-01-01T00:00:00Z.
pub const T0_UNIX_MS: u64 = 1_767_225_600_000;

/// A queue id as the writer makes them: microseconds since the epoch (14
/// hex digits) and the shard index (2), upper case.
pub fn queue_id(last: u8) -> QueueId {
    let text = format!("00064723BB4A{last:02X}{SHARD_INDEX:02X}");
    QueueId::parse(text.as_bytes()).unwrap()
}

pub fn frame(log_kind: LogKind, record_sequence: u64) -> RecordFrame {
    RecordFrame {
        record_sequence,
        log_kind,
        shard_index: SHARD_INDEX,
    }
}

pub const INLINE_BODY: &[u8] = b"From: Alice <alice@example.org>\r\n\
To: Bob <bob@example.net>\r\n\
Subject: lunch\r\n\
Message-ID: <20260101000000.1@example.org>\r\n\
\r\n\
Noon at the usual place?\r\n";

pub fn envelope_inline() -> Envelope<'static> {
    Envelope {
        queue_id: queue_id(1),
        arrival_unix_ms: T0_UNIX_MS,
        retry_next_unix_ms: T0_UNIX_MS,
        attempt_count: 0,
        flags: EnvelopeFlags::BODY_8BITMIME,
        sender: b"alice@example.org",
        mail_params: b"BODY=8BITMIME ENVID=QQ314159",
        client_address: b"[192.0.2.25]:41822",
        client_helo: b"mail.example.org",
        headers_prepended: b"Received: from mail.example.org ([192.0.2.25])\r\n\tby mx.example.net with ESMTP id 00064723BB4A0103\r\n",
        recipients: vec![
            Recipient {
                state: RecipientState::Pending,
                address: b"bob@example.net",
                params: b"NOTIFY=FAILURE,DELAY ORCPT=rfc822;bob@example.net",
                reply: b"",
            },
            Recipient { state: RecipientState::Pending, address: b"carol@example.com", params: b"", reply: b"" },
        ],
        body: BodyRef::Inline(INLINE_BODY),
    }
}

pub fn envelope_body_file() -> Envelope<'static> {
    Envelope {
        queue_id: queue_id(2),
        arrival_unix_ms: T0_UNIX_MS + 1_250,
        retry_next_unix_ms: T0_UNIX_MS + 1_250,
        attempt_count: 0,
        flags: EnvelopeFlags::SMTPUTF8.union(EnvelopeFlags::NULL_SENDER),
        sender: b"",
        mail_params: b"SMTPUTF8 RET=HDRS",
        client_address: b"[2001:db8::25]:50007",
        client_helo: b"[IPv6:2001:db8::25]",
        headers_prepended: b"",
        recipients: vec![Recipient {
            state: RecipientState::Pending,
            address: "j\u{f6}rg@b\u{fc}cher.example".as_bytes(),
            params: b"NOTIFY=NEVER",
            reply: b"",
        }],
        body: BodyRef::File {
            file_id: 0x0006_4723_BB4A_0203,
            size_bytes: 5_242_880,
            checksum: 0x1b2c_3d4e,
        },
    }
}

/// The pieces of a body in the body log as a receiving session appends
/// them, 64 KiB at a time: two in segment 6 with another session's pieces
/// between them, the last in segment 7 after a piece of another message.
pub const BODY_LOG_EXTENTS: [BodyExtent; 3] = [
    BodyExtent {
        segment_sequence: 6,
        offset_bytes: 4096,
        size_bytes: 65536,
    },
    BodyExtent {
        segment_sequence: 6,
        offset_bytes: 4096 + 3 * 65536,
        size_bytes: 65536,
    },
    BodyExtent {
        segment_sequence: 7,
        offset_bytes: 4096 + 65536,
        size_bytes: 21845,
    },
];

pub static BODY_LOG_TABLE: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let mut table = Vec::new();
    encode_body_extents(&BODY_LOG_EXTENTS, &mut table);
    table
});

pub fn envelope_body_log() -> Envelope<'static> {
    let mut envelope = envelope_inline();
    envelope.queue_id = queue_id(5);
    envelope.arrival_unix_ms = T0_UNIX_MS + 2_500;
    envelope.retry_next_unix_ms = T0_UNIX_MS + 2_500;
    envelope.headers_prepended = b"Received: from mail.example.org ([192.0.2.25])\r\n\tby mx.example.net with ESMTP id 00064723BB4A0503\r\n";
    envelope.body = BodyRef::Log {
        extents: &BODY_LOG_TABLE,
        size_bytes: 65536 + 65536 + 21845,
        checksum: 0x7e1f_a9c4,
    };
    envelope
}

pub fn replacement_envelope() -> Envelope<'static> {
    let mut envelope = envelope_inline();
    envelope.attempt_count = 2;
    envelope.retry_next_unix_ms = T0_UNIX_MS + 3_600_000;
    envelope.recipients[0].state = RecipientState::Delivered;
    envelope.recipients[0].reply = b"250 2.0.0 Ok: queued as 4XyZ1";
    envelope.recipients[1].reply = b"451 4.7.1 Greylisted, try again in 300 seconds";
    envelope
}

pub fn completion() -> Completion {
    Completion {
        queue_id: queue_id(1),
        completion_unix_ms: T0_UNIX_MS + 900,
        attempt_count: 0,
        reason: CompletionReason::Done,
    }
}

pub fn segment_header(
    log_kind: LogKind,
    segment_sequence: u64,
    record_sequence_first: u64,
) -> SegmentHeader {
    SegmentHeader {
        format_version: FORMAT_VERSION,
        log_kind,
        shard_index: SHARD_INDEX,
        segment_sequence,
        record_sequence_first,
        created_unix_ms: T0_UNIX_MS - 60_000,
        segment_size_bytes: 64 * 1024 * 1024,
    }
}

/// xorshift64*: small, seeded, good enough to drive tests; a failure
/// replays from its seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform-ish in [0, bound); bound > 0.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
    pub fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
    pub fn fill(&mut self, bytes: &mut [u8]) {
        for b in bytes {
            *b = self.next_u64() as u8;
        }
    }
}
