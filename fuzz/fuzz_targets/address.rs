//! Any text as the argument of MAIL FROM and RCPT TO: the envelope parsers
//! of `ringpost::smtp::address` and the DSN parameters of
//! `ringpost::smtp::dsn`.
//!
//! Input layout: byte 0 bit 0 says SMTPUTF8 (UTF-8 addresses allowed), the
//! rest is the text (not UTF-8: nothing to parse, as the server refuses
//! such a line before it parses it). The seed corpus (`fuzz/make-corpus`)
//! is the MAIL and RCPT arguments of the transcript tests.
//!
//! Checked:
//! - the parsers return, never panic;
//! - what they accept obeys the limits (local part 64 octets, domain 255)
//!   and, printed, parses back to the same value with nothing left over;
//!   the rest they return is a suffix of the input;
//! - without SMTPUTF8, nothing accepted holds a non-ASCII character;
//! - accepted MAIL and RCPT parameters: their DSN part printed (`wire`)
//!   reads back the same, both as parameters and as stored in the queue;
//! - xtext: any text encodes to valid xtext that decodes to the text.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ringpost::smtp::address::{
    check_domain, parse_forward_path, parse_mail_params, parse_mailbox, parse_rcpt_params, parse_reverse_path, Address,
    ReversePath, DOMAIN_BYTES_MAX, LOCAL_PART_BYTES_MAX,
};
use ringpost::smtp::dsn::{is_xtext, stored_mail, stored_rcpt, xtext_decode, xtext_encode};

fn check_address(address: &Address, utf8: bool) {
    assert!(address.local_part.len() <= LOCAL_PART_BYTES_MAX + 2, "local part {:?}", address.local_part);
    if let Some(domain) = &address.domain {
        assert!(domain.len() <= DOMAIN_BYTES_MAX, "domain of {} octets", domain.len());
        assert!(!domain.is_empty());
        assert_eq!(parse_mailbox(&address.to_string(), utf8).as_ref(), Ok(address), "mailbox {address}");
    }
    if !utf8 {
        assert!(!address.is_utf8(), "non-ASCII {address} without SMTPUTF8");
    }
}

fn check_paths(text: &str, utf8: bool) {
    if let Ok((path, rest)) = parse_reverse_path(text, utf8) {
        assert!(text.ends_with(rest));
        if let ReversePath::Path(address) = &path {
            check_address(address, utf8);
        }
        let printed = path.to_string();
        assert_eq!(parse_reverse_path(&printed, utf8), Ok((path.clone(), "")), "reverse path {printed}");
    }
    if let Ok((address, rest)) = parse_forward_path(text, utf8) {
        assert!(text.ends_with(rest));
        check_address(&address, utf8);
        let printed = format!("<{address}>");
        assert_eq!(parse_forward_path(&printed, utf8), Ok((address.clone(), "")), "forward path {printed}");
    }
    if let Ok(address) = parse_mailbox(text, utf8) {
        check_address(&address, utf8);
    }
    let _ = check_domain(text, utf8);
}

fn check_params(text: &str) {
    if let Ok(params) = parse_mail_params(text, 1_000_000) {
        let wire = params.dsn.wire();
        let again = parse_mail_params(&wire, 1_000_000).expect("printed MAIL parameters parse");
        assert_eq!(again.dsn, params.dsn, "MAIL parameters {wire}");
        assert_eq!(stored_mail(&wire), params.dsn, "stored MAIL parameters {wire}");
        if let Some(size) = params.size {
            assert!(size <= 1_000_000);
        }
    }
    if let Ok(params) = parse_rcpt_params(text) {
        let wire = params.dsn.wire();
        let again = parse_rcpt_params(&wire).expect("printed RCPT parameters parse");
        assert_eq!(again.dsn, params.dsn, "RCPT parameters {wire}");
        assert_eq!(stored_rcpt(&wire), params.dsn, "stored RCPT parameters {wire}");
    }
}

fn check_xtext(text: &str) {
    let encoded = xtext_encode(text);
    assert!(is_xtext(&encoded), "{encoded:?} is not xtext");
    assert_eq!(xtext_decode(&encoded).as_deref(), Some(text));
    if is_xtext(text) {
        let _ = xtext_decode(text);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let utf8 = flags & 1 != 0;
    check_paths(text, utf8);
    // The server splits `<path> params` at the path's end.
    let params = match parse_reverse_path(text, true) {
        Ok((_, rest)) => rest,
        Err(_) => text,
    };
    check_params(params.trim_start_matches(' '));
    check_xtext(text);
});
