//! Any bytes as a Sieve script: `compile` returns, never panics, and a
//! script that compiles evaluates (with and without a message) without
//! panicking; any actions it yields survive the byte form round trip.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ringpost::sieve::{compile, evaluate, Actions, Envelope, Input, Limits, Message, Outcome};

const MESSAGE: &[u8] = b"From: \"Joe\" <joe+x@example.com>\r\nTo: me@ex.org, g: a@b.c;\r\n\
Subject: =?utf-8?q?caf=C3=A9?= [list] hello\r\nList-Id: <l.example>\r\nX-Score: 12\r\n\r\nbody\r\n";

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let Ok(script) = compile(data, &limits) else {
        return;
    };
    let envelope = Envelope {
        sender: "joe+x@example.com".into(),
        recipient: "me+tag@ex.org".into(),
        user_addresses: vec!["me@ex.org".into()],
        client_ip: None,
    };
    for message in [None, Some(Message::from_whole(MESSAGE))] {
        let input = Input { envelope: envelope.clone(), message };
        if let Outcome::Done(actions) = evaluate(&script, &input, &limits) {
            let bytes = actions.to_bytes();
            assert_eq!(Actions::from_bytes(&bytes).as_ref(), Ok(&actions));
        }
    }
    let _ = Actions::from_bytes(data);
});
