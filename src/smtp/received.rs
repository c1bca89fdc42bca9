//! The Received trace header (RFC 5321 §4.4) that the server prepends to
//! every accepted message, and the RFC 5322 §3.3 date it ends with.
//!
//! Place in the pipeline: the ingress driver calls `received_header` when a
//! message's content starts (Event::DataStart) and writes the result to the
//! queue ahead of the body. Client-supplied parts (the HELO name) are
//! sanitized so that they cannot break the header's structure.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest HELO name copied into the header; longer names are cut.
const HELO_BYTES_MAX: usize = 255;

/// Builds `Received: from HELO ([ip])\r\n\t[(using TLS)\r\n\t]by HOST
/// (ringpost) with PROTO id ID\r\n\tfor <RCPT>; DATE\r\n`, or, without a
/// single recipient, `... id ID;\r\n\tDATE\r\n`: the `;` before the date is
/// always there (RFC 5322 §3.6.7). `tls` is the protocol version and cipher
/// when the session ran over TLS, as Postfix writes them.
/// `single_recipient` is given only when the transaction has exactly one
/// recipient (listing several would leak the others' addresses to each of
/// them).
pub fn received_header(
    hostname: &str,
    peer: SocketAddr,
    helo: Option<&str>,
    protocol: &str,
    queue_id: &str,
    single_recipient: Option<&str>,
    tls: Option<&str>,
    now: SystemTime,
) -> String {
    // Written in place: no string per part.
    let mut h = String::with_capacity(256);
    h.push_str("Received: from ");
    match helo.filter(|s| !s.is_empty()) {
        Some(helo) => push_sanitized(&mut h, helo),
        None => h.push_str("unknown"),
    }
    h.push_str(" (");
    push_address_literal(&mut h, peer.ip());
    h.push_str(")\r\n");
    if let Some(tls) = tls {
        h.push_str("\t(using ");
        for c in tls.chars().take(HELO_BYTES_MAX) {
            h.push(if c.is_control() || "()".contains(c) { '?' } else { c });
        }
        h.push_str(")\r\n");
    }
    h.push_str("\tby ");
    push_sanitized(&mut h, hostname);
    h.push_str(" (ringpost) with ");
    push_sanitized(&mut h, protocol);
    h.push_str(" id ");
    push_sanitized(&mut h, queue_id);
    match single_recipient {
        Some(rcpt) => {
            h.push_str("\r\n\tfor <");
            push_sanitized(&mut h, rcpt);
            h.push_str(">; ");
        }
        None => h.push_str(";\r\n\t"),
    }
    write_rfc5322_date(&mut h, now);
    h.push_str("\r\n");
    h
}

/// `[192.0.2.1]` or `[IPv6:2001:db8::1]` (RFC 5321 §4.1.3); an IPv4-mapped
/// IPv6 peer is shown as IPv4.
fn push_address_literal(h: &mut String, ip: IpAddr) {
    let _ = match ip {
        IpAddr::V4(v4) => write!(h, "[{}]", v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => write!(h, "[{}]", v4),
            None => write!(h, "[IPv6:{}]", v6),
        },
    };
}

/// Keeps a client-supplied token from changing the header's structure:
/// controls, white space and the characters that delimit comments, paths
/// and the date become `?`; what is appended to `out` is at most
/// `HELO_BYTES_MAX` bytes.
fn push_sanitized(out: &mut String, s: &str) {
    let mut written_bytes = 0;
    for c in s.chars() {
        if written_bytes + c.len_utf8() > HELO_BYTES_MAX {
            break;
        }
        let bad = c.is_control() || c.is_whitespace() || "()<>;\\\"".contains(c);
        let c = if bad { '?' } else { c };
        written_bytes += c.len_utf8();
        out.push(c);
    }
}

/// RFC 5322 §3.3 date-time in UTC: `Sat, 28 Nov 2026 11:24:30 +0000`.
/// Times before 1970 are shown as the epoch.
pub fn rfc5322_date(t: SystemTime) -> String {
    let mut date = String::with_capacity(32);
    write_rfc5322_date(&mut date, t);
    date
}

/// [`rfc5322_date`], appended to `out`.
fn write_rfc5322_date(out: &mut String, t: SystemTime) {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let second_of_day = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let _ = write!(
        out,
        "{}, {:02} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(month - 1) as usize],
        year,
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    );
}

/// Proleptic Gregorian (year, month 1..=12, day 1..=31) of a day count
/// since 1970-01-01 (H. Hinnant's `civil_from_days`, non-negative input).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097; // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era, 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1st, 0..=365
    let mp = (5 * doy + 2) / 153; // month from March, 0..=11
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn dates_against_known_timestamps() {
        assert_eq!(rfc5322_date(at(0)), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(at(1_795_865_070)),
            "Sat, 28 Nov 2026 11:24:30 +0000"
        );
        assert_eq!(
            rfc5322_date(at(951_782_400)),
            "Tue, 29 Feb 2000 00:00:00 +0000"
        );
        assert_eq!(
            rfc5322_date(at(4_107_542_399)),
            "Sun, 28 Feb 2100 23:59:59 +0000"
        );
        assert_eq!(
            rfc5322_date(at(1_709_164_800)),
            "Thu, 29 Feb 2024 00:00:00 +0000"
        );
        assert_eq!(
            rfc5322_date(at(1_735_689_599)),
            "Tue, 31 Dec 2024 23:59:59 +0000"
        );
        assert_eq!(
            rfc5322_date(UNIX_EPOCH - Duration::from_secs(5)),
            "Thu, 01 Jan 1970 00:00:00 +0000"
        );
    }

    #[test]
    fn header_shape() {
        let h = received_header(
            "host.name",
            "127.0.0.1:2525".parse().unwrap(),
            Some("helo.name"),
            "ESMTP",
            "0123ABC",
            Some("a@b"),
            None,
            at(1_795_865_070),
        );
        assert_eq!(
            h,
            "Received: from helo.name ([127.0.0.1])\r\n\tby host.name (ringpost) with ESMTP id 0123ABC\r\n\tfor <a@b>; Sat, 28 Nov 2026 11:24:30 +0000\r\n"
        );
    }

    #[test]
    fn header_after_starttls_names_the_cipher() {
        let h = received_header(
            "host.name",
            "127.0.0.1:2525".parse().unwrap(),
            Some("helo.name"),
            "ESMTPS",
            "0123ABC",
            None,
            Some("TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384"),
            at(1_795_865_070),
        );
        assert_eq!(
            h,
            "Received: from helo.name ([127.0.0.1])\r\n\t(using TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384)\r\n\tby host.name (ringpost) with ESMTPS id 0123ABC;\r\n\tSat, 28 Nov 2026 11:24:30 +0000\r\n"
        );
    }

    #[test]
    fn header_without_helo_or_recipient_and_ipv6() {
        let h = received_header(
            "mx",
            "[2001:db8::7]:25".parse().unwrap(),
            None,
            "SMTP",
            "X1",
            None,
            None,
            at(0),
        );
        assert_eq!(
            h,
            "Received: from unknown ([IPv6:2001:db8::7])\r\n\tby mx (ringpost) with SMTP id X1;\r\n\tThu, 01 Jan 1970 00:00:00 +0000\r\n"
        );
    }

    /// Every shape the header takes: a single recipient or none (no
    /// recipient yet, or several), with and without TLS.
    #[test]
    fn semicolon_before_the_date_in_every_shape() {
        let tls = "TLSv1.3 with cipher TLS13_AES_128_GCM_SHA256";
        let cases: [(Option<&str>, Option<&str>, &str); 4] = [
            (
                None,
                None,
                "Received: from c.test ([192.0.2.9])\r\n\tby mx.test (ringpost) with ESMTP id 00AB;\r\n\tSat, 28 Nov 2026 11:24:30 +0000\r\n",
            ),
            (
                Some("b@example.com"),
                None,
                "Received: from c.test ([192.0.2.9])\r\n\tby mx.test (ringpost) with ESMTP id 00AB\r\n\tfor <b@example.com>; Sat, 28 Nov 2026 11:24:30 +0000\r\n",
            ),
            (
                None,
                Some(tls),
                "Received: from c.test ([192.0.2.9])\r\n\t(using TLSv1.3 with cipher TLS13_AES_128_GCM_SHA256)\r\n\tby mx.test (ringpost) with ESMTP id 00AB;\r\n\tSat, 28 Nov 2026 11:24:30 +0000\r\n",
            ),
            (
                Some("b@example.com"),
                Some(tls),
                "Received: from c.test ([192.0.2.9])\r\n\t(using TLSv1.3 with cipher TLS13_AES_128_GCM_SHA256)\r\n\tby mx.test (ringpost) with ESMTP id 00AB\r\n\tfor <b@example.com>; Sat, 28 Nov 2026 11:24:30 +0000\r\n",
            ),
        ];
        for (rcpt, tls, want) in cases {
            let h = received_header(
                "mx.test",
                "192.0.2.9:40000".parse().unwrap(),
                Some("c.test"),
                "ESMTP",
                "00AB",
                rcpt,
                tls,
                at(1_795_865_070),
            );
            assert_eq!(h, want);
            // RFC 5322 §3.6.7: the date follows the last ";".
            let (_, date) = h.rsplit_once(';').expect("a ';' before the date");
            assert_eq!(date.trim(), "Sat, 28 Nov 2026 11:24:30 +0000");
        }
    }

    #[test]
    fn hostile_helo_is_defused() {
        let h = received_header(
            "mx",
            "192.0.2.1:25".parse().unwrap(),
            Some("a\r\nX-Evil: 1 (x)"),
            "ESMTP",
            "Q",
            None,
            None,
            at(0),
        );
        assert!(
            h.starts_with("Received: from a??X-Evil:?1??x? ([192.0.2.1])\r\n"),
            "{h}"
        );
        assert_eq!(h.matches("\r\n").count(), 3);
        let long = "a".repeat(1000);
        let h = received_header(
            "mx",
            "192.0.2.1:25".parse().unwrap(),
            Some(&long),
            "ESMTP",
            "Q",
            None,
            None,
            at(0),
        );
        assert!(h.len() < 400);
    }

    #[test]
    fn dates_agree_with_a_day_counter() {
        // Walk day by day from 1970 and compare with a naive calendar.
        let (mut y, mut m, mut d) = (1970u64, 1u64, 1u64);
        let leap =
            |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
        for days in 0..(200 * 366) {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            let month_days = match m {
                2 if leap(y) => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            d += 1;
            if d > month_days {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }
}
