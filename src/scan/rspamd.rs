//! Rspamd as a content scanner: the message posted to rspamd's HTTP
//! `/checkv2` endpoint with its envelope in request headers, rspamd's JSON
//! answer (its action, score and symbols) turned into a verdict: refuse
//! (`reject`), try later (`soft reject`, `greylist`), or accept with
//! `X-Spam-Status`, `X-Spam-Action` and `X-Rspamd-Score` headers.
//!
//! Place in the pipeline: one scanner kind of the scanning stage at the
//! final dot (`crate::scan`), run on the shard's executor; the stage
//! bounds concurrency and applies the time limit. Connecting (TCP or a
//! unix socket), sending the content checked against its stored size and
//! reading a bounded reply are shared with `spamd`; the content is sent a
//! chunk at a time, never whole in memory.
//!
//! The request: `POST /checkv2 HTTP/1.1` with `Host`, `Content-Length`
//! (the stored size), `From` (the reverse path, empty for `<>`), one
//! `Rcpt` per recipient, `IP`, `Helo`, `Queue-Id`, `Connection: close`,
//! then exactly the content. What rspamd 3.4 (Debian 12, shipped rules, no
//! redis, no network tests) answers, the JSON on one line (wrapped here),
//! then closes the connection:
//!
//! ```text
//! GTUBE:  HTTP/1.1 200 OK\r\nConnection: close\r\nServer: rspamd/3.4\r\n
//!         Date: Tue, 01 Dec 2026 15:17:50 GMT\r\nContent-Length: 226\r\n
//!         Content-Type: application/json\r\n\r\n
//!         {"is_skipped":true,"score":15.0,"required_score":15.0,"action":"reject",
//!         "symbols":{"GTUBE":{"name":"GTUBE","score":0.0,"metric_score":0.0}},
//!         "messages":{"smtp_message":"Gtube pattern"},"message-id":"undef",
//!         "time_real":0.356306}
//! clean:  HTTP/1.1 200 OK\r\n ... Content-Length: 1792\r\n ... \r\n
//!         {"is_skipped":false,"score":2.199999,"required_score":15.0,
//!         "action":"no action","symbols":{"TO_DN_ALL":{"name":"TO_DN_ALL",
//!         "score":0.0,"metric_score":0.0,"description":"All the recipients
//!         have display names"},"FORGED_RECIPIENTS":{"name":"FORGED_RECIPIENTS",
//!         "score":2.0,...,"options":["m:b@example.org","s:rcpt@example.com"]},
//!         ...},"messages":{},"message-id":"clean.1@example.org",
//!         "time_real":0.002034,"milter":{"remove_headers":{"X-Spam":0}}}
//! ```
//!
//! The refusal's reason is rspamd's `smtp_message` when it gives one, else
//! the scores and the scoring symbols, highest first.
//!
//! A status other than 200, a reply that is not whole (shorter than its
//! Content-Length, cut by the peer), not JSON or without an action and
//! scores is an error, which the stage turns into its configured failure
//! action.

use std::net::{IpAddr, SocketAddr};

use futures_lite::AsyncWriteExt;
use serde::Deserialize;

use crate::scan::content::{Message, ScannerAddress, Verdict};
use crate::scan::spamd::{connect, finish, printable, Content, Failure};
use crate::smtp::address::ReversePath;

/// The longest reply read from rspamd (status line, headers, JSON).
pub const MAX_REPLY_BYTES: usize = 256 * 1024;
/// The longest symbol list in a refusal's reason (it goes into a 550
/// reply); a longer one ends with `,...`.
pub const MAX_REASON_SYMBOLS_BYTES: usize = 160;
/// The longest text of rspamd's own (`messages.smtp_message`) used as a
/// reason.
pub const MAX_SMTP_MESSAGE_BYTES: usize = 200;
/// The longest envelope value (address, HELO name) sent in a header.
pub const MAX_FIELD_BYTES: usize = 1024;

/// One rspamd scanner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RspamdParams {
    pub address: ScannerAddress,
}

/// Scans `message` with the rspamd at `params.address`. `Err` when rspamd
/// cannot be reached, answers with an HTTP error, or answers something
/// that is not a whole `/checkv2` reply.
pub async fn scan(params: &RspamdParams, message: Message<'_>) -> Result<Verdict, String> {
    let fail = |e: String| format!("rspamd {}: {e}", params.address);
    let head = request_head(params, &message).map_err(fail)?;
    let (reply, eof) = exchange(params, &head, message).await.map_err(fail)?;
    let body = parse_http(&reply, eof).map_err(fail)?;
    let report: Report = serde_json::from_slice(body)
        .map_err(|e| format!("bad JSON reply ({e}): {:?}", printable(body, 200)))
        .map_err(fail)?;
    verdict(&report).map_err(fail)
}

/// `value` when it can go into a header line: no control characters (so
/// no line end), at most `MAX_FIELD_BYTES`.
fn field(value: &str) -> Option<&str> {
    (value.len() <= MAX_FIELD_BYTES && !value.chars().any(char::is_control)).then_some(value)
}

/// The client's IP address from the envelope's `client` text: an address
/// (`192.0.2.1`, `2001:db8::1`), or an address and port
/// (`[192.0.2.1]:25`, `192.0.2.1:25`).
fn client_ip(client: &str) -> Option<IpAddr> {
    if let Ok(ip) = client.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(addr) = client.parse::<SocketAddr>() {
        return Some(addr.ip());
    }
    let (bracketed, _) = client.strip_prefix('[')?.split_once(']')?;
    bracketed.parse().ok()
}

/// The request line and headers, up to and including the blank line.
fn request_head(params: &RspamdParams, message: &Message<'_>) -> Result<String, String> {
    let env = message.env;
    let host = match &params.address {
        ScannerAddress::Tcp(hostport) => hostport.as_str(),
        ScannerAddress::Unix(_) => "localhost",
    };
    let mut head = format!(
        "POST /checkv2 HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n",
        message.size_bytes()
    );
    let from = match &env.sender {
        ReversePath::Null => String::new(),
        ReversePath::Path(address) => address.to_string(),
    };
    let from = field(&from).ok_or_else(|| format!("sender {:?} cannot be sent", printable(from.as_bytes(), 80)))?;
    head.push_str(&format!("From: {from}\r\n"));
    for recipient in &env.recipients {
        let rcpt = recipient.address.to_string();
        let rcpt =
            field(&rcpt).ok_or_else(|| format!("recipient {:?} cannot be sent", printable(rcpt.as_bytes(), 80)))?;
        head.push_str(&format!("Rcpt: {rcpt}\r\n"));
    }
    if let Some(ip) = client_ip(&env.client) {
        head.push_str(&format!("IP: {ip}\r\n"));
    }
    // The client's own words: sent only when they fit a header line.
    if let Some(helo) = field(&env.helo).filter(|helo| !helo.is_empty()) {
        head.push_str(&format!("Helo: {helo}\r\n"));
    }
    if let Some(id) = field(&env.id) {
        head.push_str(&format!("Queue-Id: {id}\r\n"));
    }
    head.push_str("\r\n");
    Ok(head)
}

/// Sends the request and the content; the reply's bytes, and whether the
/// connection ended (rather than the reply being complete).
async fn exchange(params: &RspamdParams, head: &str, message: Message<'_>) -> Result<(Vec<u8>, bool), String> {
    let mut stream = connect(&params.address).await.map_err(|e| format!("connect: {e}"))?;
    let sent = async {
        stream.write_all(head.as_bytes()).await.map_err(Failure::Write)?;
        let mut content = Content::new(&message);
        let result = async {
            while let Some(chunk) = content.next().await? {
                stream.write_all(&chunk).await.map_err(Failure::Write)?;
            }
            stream.flush().await.map_err(Failure::Write)
        }
        .await;
        content.close().await;
        result
    }
    .await;
    finish(&mut stream, sent, MAX_REPLY_BYTES, reply_complete).await
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A reply's status code, its header block (after the status line) and
/// where its body starts; `None` while the headers are not all there.
fn split_head(reply: &[u8]) -> Option<(&[u8], &[u8], usize)> {
    let end = find(reply, b"\r\n\r\n")?;
    let head = &reply[..end];
    let (status, headers) = match find(head, b"\r\n") {
        Some(i) => (&head[..i], &head[i + 2..]),
        None => (head, &b""[..]),
    };
    Some((status, headers, end + 4))
}

/// The value of header `name` (case-insensitive) in a header block.
fn header<'a>(headers: &'a [u8], name: &str) -> Option<&'a str> {
    headers.split(|&b| b == b'\n').find_map(|line| {
        let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// Whether a reply is whole: its headers and as many octets as their
/// Content-Length says. Without a Content-Length the body ends when the
/// peer closes. Something that is not an HTTP status line is complete as
/// soon as its first line is (it is an error whatever follows).
fn reply_complete(reply: &[u8]) -> bool {
    if reply.len() >= 5 && !reply.starts_with(b"HTTP/") {
        return reply.contains(&b'\n');
    }
    let Some((_, headers, start)) = split_head(reply) else { return false };
    match header(headers, "Content-Length").map(str::parse::<usize>) {
        Some(Ok(length)) => reply.len() - start >= length,
        Some(Err(_)) => true,
        None => false,
    }
}

/// The body of a whole 200 reply; `eof`: the peer closed the connection.
fn parse_http(reply: &[u8], eof: bool) -> Result<&[u8], String> {
    if reply.is_empty() {
        return Err("connection closed without a reply".into());
    }
    let line_end = find(reply, b"\r\n").or_else(|| find(reply, b"\n"));
    let Some(line_end) = line_end else {
        return Err(format!("reply without a line end: {:?}", printable(reply, 200)));
    };
    let status_line = &reply[..line_end];
    let code = std::str::from_utf8(status_line)
        .ok()
        .and_then(|line| line.strip_prefix("HTTP/1."))
        .and_then(|rest| rest.split(' ').nth(1))
        .filter(|code| code.len() == 3)
        .and_then(|code| code.parse::<u16>().ok());
    let Some(code) = code else {
        return Err(format!("not an HTTP reply: {:?}", printable(status_line, 200)));
    };
    let Some((_, headers, start)) = split_head(reply) else {
        return Err(format!("connection closed within the reply's headers (status {code})"));
    };
    let mut body = &reply[start..];
    match header(headers, "Content-Length") {
        Some(text) => {
            let length = text.parse::<usize>().map_err(|_| format!("bad Content-Length {text:?}"))?;
            if body.len() < length {
                return Err(format!("connection closed {} bytes into a {length}-byte body", body.len()));
            }
            body = &body[..length];
        }
        None if header(headers, "Transfer-Encoding").is_some() => {
            return Err("a reply with a Transfer-Encoding is not taken".into());
        }
        None if !eof => return Err("reply without a Content-Length".into()),
        None => {}
    }
    if code != 200 {
        return Err(format!("HTTP status {}: {:?}", printable(status_line, 200), printable(body, 200)));
    }
    Ok(body)
}

/// The fields of a `/checkv2` reply that decide the verdict.
#[derive(Debug, Deserialize)]
struct Report {
    action: String,
    score: f64,
    required_score: f64,
    #[serde(default)]
    symbols: std::collections::BTreeMap<String, Symbol>,
    #[serde(default)]
    messages: Messages,
}

#[derive(Debug, Deserialize)]
struct Symbol {
    #[serde(default)]
    score: f64,
}

#[derive(Debug, Default, Deserialize)]
struct Messages {
    smtp_message: Option<String>,
}

/// A score as text: at most two decimals, at least one (`1500.0`, `3.25`).
fn score_text(score: f64) -> String {
    let text = format!("{score:.2}");
    match text.strip_suffix('0') {
        Some(shorter) if !shorter.ends_with('.') => shorter.to_string(),
        _ => text,
    }
}

/// The names of the symbols that scored, highest first, joined with
/// commas into at most `max_bytes` (then `,...`). Only names of letters,
/// digits and `_` are taken.
fn symbol_list(symbols: &std::collections::BTreeMap<String, Symbol>, max_bytes: usize) -> String {
    let mut scored: Vec<(&str, f64)> = symbols
        .iter()
        .filter(|(name, symbol)| {
            symbol.score != 0.0 && !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
        .map(|(name, symbol)| (name.as_str(), symbol.score))
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
    let mut out = String::new();
    let count = scored.len();
    for (i, (name, _)) in scored.into_iter().enumerate() {
        let separator = if out.is_empty() { 0 } else { 1 };
        // Room for ",..." unless this is the last name.
        let ellipsis = if i + 1 < count { 4 } else { 0 };
        if out.len() + separator + name.len() + ellipsis > max_bytes {
            out.push_str(if out.is_empty() { "..." } else { ",..." });
            break;
        }
        if separator == 1 {
            out.push(',');
        }
        out.push_str(name);
    }
    out
}

fn verdict(report: &Report) -> Result<Verdict, String> {
    if !report.score.is_finite() || !report.required_score.is_finite() {
        return Err("bad score".into());
    }
    let score = score_text(report.score);
    let required = score_text(report.required_score);
    // Rspamd's own text for the client, made single-line and bounded.
    let smtp_message = report
        .messages
        .smtp_message
        .as_deref()
        .map(str::trim)
        .filter(|text| !text.is_empty())
        .map(|text| printable(text.as_bytes(), MAX_SMTP_MESSAGE_BYTES));
    let scores = format!("score {score} / {required}");
    let score_header = format!("X-Rspamd-Score: {score}");
    match report.action.as_str() {
        "reject" => {
            let reason = smtp_message.unwrap_or_else(|| {
                let symbols = symbol_list(&report.symbols, MAX_REASON_SYMBOLS_BYTES);
                match symbols.is_empty() {
                    true => format!("spam ({scores})"),
                    false => format!("spam ({scores}: {symbols})"),
                }
            });
            Ok(Verdict::Reject { reason, score: Some(score) })
        }
        action @ ("soft reject" | "greylist") => {
            let reason = smtp_message.unwrap_or_else(|| format!("try again later ({action}, {scores})"));
            Ok(Verdict::Tempfail { reason })
        }
        action @ ("add header" | "rewrite subject") => Ok(Verdict::Accept {
            headers: vec![
                format!("X-Spam-Status: Yes, score={score} required={required}"),
                format!("X-Spam-Action: {action}"),
                score_header,
            ],
            score: Some(score),
        }),
        "no action" => Ok(Verdict::Accept {
            headers: vec![format!("X-Spam-Status: No, score={score} required={required}"), score_header],
            score: Some(score),
        }),
        other => Err(format!("unknown action {:?}", printable(other.as_bytes(), 40))),
    }
}

#[cfg(test)]
mod tests {
    use crate::queue::StoredBody;
    use std::thread::JoinHandle;

    use super::*;
    use crate::scan::content::CHUNK_BYTES;
    use crate::scan::spamd::tests::{content, fake_peer, in_file, inline, listen, Request};
    use crate::testing;

    /// A one-request HTTP peer answering `reply` after the content.
    fn fake_rspamd(unix: bool, reply: Vec<u8>) -> (ScannerAddress, JoinHandle<Request>) {
        fake_peer(unix, "Content-Length: ", reply)
    }

    fn http(status: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\nConnection: close\r\nServer: rspamd/3.4\r\nContent-Length: {}\r\n\
             Content-Type: application/json\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn json(action: &str, score: f64, extra: &str) -> String {
        format!(
            r#"{{"is_skipped":false,"score":{score},"required_score":15.0,"action":"{action}",
            "thresholds":{{"reject":15.0,"add header":6.0,"greylist":4.0}},
            "symbols":{{"GTUBE":{{"name":"GTUBE","score":0.0,"metric_score":0.0}},
            "MISSING_DATE":{{"name":"MISSING_DATE","score":1.0}},"R_SPF_NA":{{"name":"R_SPF_NA","score":0.0}},
            "MISSING_MID":{{"name":"MISSING_MID","score":2.5}}}}{extra}}}"#
        )
    }

    fn scan_with(address: ScannerAddress, env: crate::queue::Envelope) -> Result<Verdict, String> {
        let (tx, rx) = std::sync::mpsc::channel();
        testing::run(move || {
            Box::pin(async move {
                let params = RspamdParams { address };
                let _ = tx.send(scan(&params, Message { env: &env, stored: &StoredBody::default() }).await);
            })
        });
        rx.recv().unwrap()
    }

    fn scan_inline(address: ScannerAddress, bytes: &[u8]) -> Result<Verdict, String> {
        scan_with(address, inline(bytes))
    }

    /// The private rspamd's answer to GTUBE_MESSAGE, as observed.
    const GTUBE_JSON: &str = r#"{"is_skipped":true,"score":15.0,"required_score":15.0,"action":"reject","symbols":{"GTUBE":{"name":"GTUBE","score":0.0,"metric_score":0.0}},"messages":{"smtp_message":"Gtube pattern"},"message-id":"undef","time_real":0.356306}"#;

    #[test]
    fn gtube_as_rspamd_answers_it_is_refused() {
        let (address, peer) = fake_rspamd(false, http("200 OK", GTUBE_JSON));
        assert_eq!(
            scan_inline(address, GTUBE_MESSAGE),
            Ok(Verdict::Reject { reason: "Gtube pattern".into(), score: Some("15.0".into()) })
        );
        assert_eq!(peer.join().unwrap().content, GTUBE_MESSAGE);
    }

    const GTUBE_MESSAGE: &[u8] = b"Subject: test\r\nFrom: a@example.org\r\nTo: b@example.org\r\n\r\n\
        XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n";

    #[test]
    fn the_request_carries_the_envelope_and_exactly_the_content() {
        let (address, peer) = fake_rspamd(false, http("200 OK", &json("reject", 0.0, "")));
        let host = address.to_string();
        let mut env = inline(GTUBE_MESSAGE);
        env.recipients.push(env.recipients[0].clone());
        env.recipients[1].address = crate::queue::stored_address("second@example.net").unwrap();
        env.client = "192.0.2.7".into();
        let verdict = scan_with(address, env);
        assert_eq!(
            verdict,
            Ok(Verdict::Reject {
                reason: "spam (score 0.0 / 15.0: MISSING_MID,MISSING_DATE)".into(),
                score: Some("0.0".into())
            })
        );
        let request = peer.join().unwrap();
        assert_eq!(
            request.head,
            format!(
                "POST /checkv2 HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\
                 From: sender@example.org\r\nRcpt: rcpt@example.com\r\nRcpt: second@example.net\r\n\
                 IP: 192.0.2.7\r\nHelo: client.test\r\nQueue-Id: 00000000000000A1\r\n\r\n",
                GTUBE_MESSAGE.len()
            )
        );
        assert_eq!(request.content, GTUBE_MESSAGE);
        assert_eq!(request.extra, b"");
    }

    #[test]
    fn null_sender_bracketed_client_and_bad_helo() {
        let (address, peer) = fake_rspamd(false, http("200 OK", &json("no action", 1.5, "")));
        let mut env = inline(b"x\r\n");
        env.sender = ReversePath::Null;
        env.client = "[2001:db8::1]:4000".into();
        env.helo = "evil\r\nRcpt: injected@example.com".into();
        assert!(matches!(scan_with(address, env), Ok(Verdict::Accept { .. })));
        let head = peer.join().unwrap().head;
        assert!(head.contains("\r\nFrom: \r\n"), "{head}");
        assert!(head.contains("\r\nIP: 2001:db8::1\r\n"), "{head}");
        assert!(!head.contains("Helo") && !head.contains("injected"), "{head}");
        assert_eq!(client_ip("127.0.0.1"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(client_ip("[127.0.0.1]:1"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(client_ip("10.0.0.1:25"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(client_ip("local"), None);
    }

    #[test]
    fn each_action_gives_its_verdict() {
        let cases: Vec<(String, Verdict)> = vec![
            (
                json("no action", 3.5, ""),
                Verdict::Accept {
                    headers: vec!["X-Spam-Status: No, score=3.5 required=15.0".into(), "X-Rspamd-Score: 3.5".into()],
                    score: Some("3.5".into()),
                },
            ),
            (
                json("no action", 2.199999, ""),
                Verdict::Accept {
                    headers: vec!["X-Spam-Status: No, score=2.2 required=15.0".into(), "X-Rspamd-Score: 2.2".into()],
                    score: Some("2.2".into()),
                },
            ),
            (
                json("add header", 7.25, ""),
                Verdict::Accept {
                    headers: vec![
                        "X-Spam-Status: Yes, score=7.25 required=15.0".into(),
                        "X-Spam-Action: add header".into(),
                        "X-Rspamd-Score: 7.25".into(),
                    ],
                    score: Some("7.25".into()),
                },
            ),
            (
                json("rewrite subject", 8.0, ""),
                Verdict::Accept {
                    headers: vec![
                        "X-Spam-Status: Yes, score=8.0 required=15.0".into(),
                        "X-Spam-Action: rewrite subject".into(),
                        "X-Rspamd-Score: 8.0".into(),
                    ],
                    score: Some("8.0".into()),
                },
            ),
            (
                json("greylist", 4.5, ""),
                Verdict::Tempfail { reason: "try again later (greylist, score 4.5 / 15.0)".into() },
            ),
            (
                json("soft reject", 4.5, r#","messages":{"smtp_message":"Try again later\r\n550 injected"}"#),
                Verdict::Tempfail { reason: "Try again later\\x0d\\x0a550 injected".into() },
            ),
            (
                json("reject", 1500.0, r#","messages":{"smtp_message":"Gtube pattern"}"#),
                Verdict::Reject { reason: "Gtube pattern".into(), score: Some("1500.0".into()) },
            ),
            (
                json("reject", 16.0, r#","messages":{}"#),
                Verdict::Reject {
                    reason: "spam (score 16.0 / 15.0: MISSING_MID,MISSING_DATE)".into(),
                    score: Some("16.0".into()),
                },
            ),
        ];
        for (body, wanted) in cases {
            let (address, _) = fake_rspamd(false, http("200 OK", &body));
            assert_eq!(scan_inline(address, b"x\r\n"), Ok(wanted), "{body}");
        }
    }

    #[test]
    fn a_body_file_is_streamed_whole_in_chunks() {
        let bytes = content(3 * CHUNK_BYTES + 1234);
        let (address, peer) = fake_rspamd(false, http("200 OK", &json("no action", 0.0, "")));
        let (tx, rx) = std::sync::mpsc::channel();
        let expected = bytes.clone();
        testing::run(move || {
            Box::pin(async move {
                let (env, path) = in_file(&bytes);
                let _ = tx.send(scan(&RspamdParams { address }, Message { env: &env, stored: &path }).await);
            })
        });
        assert!(matches!(rx.recv().unwrap(), Ok(Verdict::Accept { .. })));
        let request = peer.join().unwrap();
        assert!(request.head.contains(&format!("\r\nContent-Length: {}\r\n", expected.len())), "{}", request.head);
        assert_eq!(request.content.len(), expected.len());
        assert!(request.content == expected, "the content differs");
        assert_eq!(request.extra, b"");
    }

    #[test]
    fn errors_and_malformed_replies() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (http("500 Internal Server Error", r#"{"error":"cannot parse input"}"#), "HTTP status HTTP/1.1 500"),
            (http("200 OK", "not json"), "bad JSON reply"),
            (http("200 OK", r#"{"action":"reject"}"#), "bad JSON reply"),
            (http("200 OK", &json("discard", 1.0, "")), "unknown action \"discard\""),
            (b"".to_vec(), "connection closed without a reply"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n".to_vec(), "within the reply's headers"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n{\"action\":".to_vec(), "10 bytes into a 200-byte body"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n{}".to_vec(), "bad Content-Length"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{}".to_vec(), "Transfer-Encoding"),
            (b"SPAMD/1.1 0 EX_OK\r\n\r\n".to_vec(), "not an HTTP reply"),
            (b"no line end at all".to_vec(), "reply without a line end"),
        ];
        for (reply, wanted) in cases {
            let (address, _) = fake_rspamd(false, reply.clone());
            let error = scan_inline(address.clone(), b"x\r\n").unwrap_err();
            assert!(error.contains(wanted), "{:?}: {error}", String::from_utf8_lossy(&reply));
            assert!(error.starts_with(&format!("rspamd {address}: ")), "{error}");
        }
        // Without a Content-Length the body ends where the peer closes.
        let reply = format!("HTTP/1.0 200 OK\r\n\r\n{}", json("no action", 0.0, ""));
        let (address, _) = fake_rspamd(false, reply.into_bytes());
        assert!(matches!(scan_inline(address, b"x\r\n"), Ok(Verdict::Accept { .. })));
    }

    #[test]
    fn a_whole_reply_is_taken_without_waiting_for_the_close() {
        let reply = http("200 OK", &json("no action", 1.0, ""));
        let (address, peer) = listen(false, move |conn| {
            let mut request = Vec::new();
            let mut byte = [0u8];
            while !request.ends_with(b"\r\n\r\nx\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                request.push(byte[0]);
            }
            let _ = conn.write_all(&reply);
            // The connection stays open: the client must stop at the
            // Content-Length and close first (else this read times out).
            let mut rest = Vec::new();
            conn.read_to_end(&mut rest).map(|_| rest)
        });
        assert!(matches!(scan_inline(address, b"x\r\n"), Ok(Verdict::Accept { .. })));
        assert_eq!(peer.join().unwrap().expect("the client closed"), b"");
    }

    #[test]
    fn an_early_close_is_an_error() {
        let (address, _) = listen(false, |conn| {
            let mut buf = [0u8; 16];
            let _ = conn.read(&mut buf);
        });
        let error = scan_inline(address, &content(4 * CHUNK_BYTES)).unwrap_err();
        assert!(
            ["connection closed without a reply", "write: ", "read: "].iter().any(|w| error.contains(w)),
            "{error}"
        );
    }

    #[test]
    fn a_body_shorter_than_its_envelope_says_is_an_error() {
        let (address, peer) = fake_rspamd(false, http("200 OK", &json("no action", 0.0, "")));
        let mut env = inline(b"Subject: x\r\n\r\nshort\r\n");
        env.size_bytes += 10;
        let error = scan_with(address, env).unwrap_err();
        assert!(error.contains("the message is 21 bytes, its envelope says 31"), "{error}");
        drop(peer);
    }

    #[test]
    fn a_reply_is_read_to_a_bound() {
        let mut reply = b"HTTP/1.1 200 OK\r\nX-Filler: ".to_vec();
        reply.extend(std::iter::repeat_n(b'a', MAX_REPLY_BYTES));
        let (address, _) = fake_rspamd(false, reply);
        let error = scan_inline(address, b"x\r\n").unwrap_err();
        assert!(error.contains(&format!("reply longer than {MAX_REPLY_BYTES} bytes")), "{error}");
    }

    #[test]
    fn reasons_stay_bounded_and_symbol_names_clean() {
        let mut symbols = String::from(r#""EVIL\r\nX":{"score":99.0}"#);
        for i in 0..300 {
            symbols.push_str(&format!(r#","SYMBOL_NUMBER_{i:03}":{{"score":1.0}}"#));
        }
        let body = format!(r#"{{"action":"reject","score":300.0,"required_score":15.0,"symbols":{{{symbols}}}}}"#);
        let (address, _) = fake_rspamd(false, http("200 OK", &body));
        let Ok(Verdict::Reject { reason, .. }) = scan_inline(address, b"x\r\n") else { panic!("not refused") };
        assert!(reason.starts_with("spam (score 300.0 / 15.0: SYMBOL_NUMBER_000,SYMBOL_NUMBER_001,"), "{reason}");
        assert!(reason.ends_with(",...)"), "{reason}");
        assert!(reason.len() <= MAX_REASON_SYMBOLS_BYTES + 40, "{}", reason.len());
        assert!(!reason.contains("EVIL"), "{reason}");

        let long = "x".repeat(1000);
        let body =
            format!(r#"{{"action":"reject","score":20,"required_score":15,"messages":{{"smtp_message":"{long}"}}}}"#);
        let (address, _) = fake_rspamd(false, http("200 OK", &body));
        let Ok(Verdict::Reject { reason, score }) = scan_inline(address, b"x\r\n") else { panic!("not refused") };
        assert_eq!(reason.len(), MAX_SMTP_MESSAGE_BYTES + 3);
        assert_eq!(score.as_deref(), Some("20.0"));
    }

    #[test]
    fn scores_as_text() {
        assert_eq!(score_text(1500.0), "1500.0");
        assert_eq!(score_text(3.25), "3.25");
        assert_eq!(score_text(3.1), "3.1");
        assert_eq!(score_text(-0.5), "-0.5");
        assert_eq!(score_text(2.0 / 3.0), "0.67");
    }

    #[test]
    fn over_a_unix_socket() {
        let (address, peer) = fake_rspamd(true, http("200 OK", &json("reject", 1500.0, "")));
        assert!(matches!(address, ScannerAddress::Unix(_)));
        assert!(matches!(scan_inline(address, GTUBE_MESSAGE), Ok(Verdict::Reject { .. })));
        let request = peer.join().unwrap();
        assert!(request.head.contains("\r\nHost: localhost\r\n"), "{}", request.head);
        assert_eq!(request.content, GTUBE_MESSAGE);
    }

    #[test]
    fn unreachable_rspamd_is_an_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let address = ScannerAddress::Tcp(format!("127.0.0.1:{port}"));
        let error = scan_inline(address, b"x\r\n").unwrap_err();
        assert!(error.starts_with(&format!("rspamd 127.0.0.1:{port}: connect: ")), "{error}");
    }
}
