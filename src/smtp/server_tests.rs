//! Transcript tests of the SMTP server machine: client bytes in, reply codes
//! (with enhanced codes) and events out, no sockets. Limits are tiny so that
//! every one of them is really hit.

use super::*;
use std::time::{Duration, Instant};

fn params() -> ServerParams {
    ServerParams {
        hostname: "mx.test".to_string(),
        greeting: "ESMTP ringpost".to_string(),
        max_recipients: 3,
        max_message_bytes: 1000,
        max_text_line_bytes: 100,
        max_errors: 5,
        command_timeout: Duration::from_secs(300),
        data_timeout: Duration::from_secs(600),
        bare_lf: BareLfPolicy::Reject,
        nul: NulPolicy::Reject,
        starttls: false,
    }
}

/// A recorded event, simplified for comparison.
#[derive(Debug, PartialEq, Eq, Clone)]
enum Ev {
    Helo(String, bool),
    Mail(String),
    Rcpt(String),
    DataStart,
    DataEnd,
    Aborted(String),
    Close,
    StartTls,
    ReplicaDone(Vec<String>),
    ReplicaTaken(u8),
    /// AUTH: mechanism, authzid, user, password.
    Auth(&'static str, String, String, String),
    /// A SCRAM message: first, data.
    AuthStep(bool, Vec<u8>),
}

type Decider = Box<dyn FnMut(&Event) -> Reply>;

/// Default answers: senders 250 2.1.0; recipients 250 2.1.5 unless the local
/// part starts with "unknown" (550 5.1.1); messages 250 2.0.0.
fn default_decider() -> Decider {
    Box::new(|e| match e {
        Event::Mail { .. } => Reply::new(250, Enhanced(2, 1, 0), "sender ok"),
        Event::Rcpt { forward_path, .. } if forward_path.local_part.starts_with("unknown") => {
            Reply::new(550, Enhanced(5, 1, 1), "no such user")
        }
        Event::Rcpt { .. } => Reply::new(250, Enhanced(2, 1, 5), "recipient ok"),
        _ => Reply::new(250, Enhanced(2, 0, 0), "queued"),
    })
}

struct Session {
    s: Server,
    now: Instant,
    decider: Decider,
    events: Vec<Ev>,
    /// Every Body chunk of the session, concatenated.
    body: Vec<u8>,
    body_chunks: usize,
    /// Reply summaries ("250 2.1.0" or "250") not yet checked.
    replies: Vec<String>,
    /// Raw reply lines of the whole session.
    raw: String,
    closed: bool,
}

impl Session {
    fn new() -> Session {
        Session::with(|_| {})
    }

    fn with(f: impl FnOnce(&mut ServerParams)) -> Session {
        let mut p = params();
        f(&mut p);
        let peer = PeerInfo {
            addr: "192.0.2.9:40000".parse().unwrap(),
            local: "192.0.2.1:25".parse().unwrap(),
        };
        let now = Instant::now();
        let mut t = Session {
            s: Server::new(Arc::new(p), peer, now),
            now,
            decider: default_decider(),
            events: Vec::new(),
            body: Vec::new(),
            body_chunks: 0,
            replies: Vec::new(),
            raw: String::new(),
            closed: false,
        };
        t.run();
        t.expect(&["220"]);
        t
    }

    /// A session after EHLO.
    fn ehlo() -> Session {
        let mut t = Session::new();
        t.send("EHLO client.test\r\n");
        t.expect(&["250"]);
        t.events.clear();
        t
    }

    fn ehlo_with(f: impl FnOnce(&mut ServerParams)) -> Session {
        let mut t = Session::with(f);
        t.send("EHLO client.test\r\n");
        t.expect(&["250"]);
        t.events.clear();
        t
    }

    fn send(&mut self, text: &str) {
        self.send_bytes(text.as_bytes());
    }

    fn send_bytes(&mut self, bytes: &[u8]) {
        self.s.feed(bytes);
        self.run();
    }

    /// Polls until the machine needs input or closes, answering questions.
    fn run(&mut self) {
        for _ in 0..1_000_000 {
            match self.s.poll(self.now) {
                Event::NeedInput => break,
                Event::Close => {
                    self.events.push(Ev::Close);
                    self.closed = true;
                    break;
                }
                Event::Pending => panic!("Pending without a question"),
                Event::Helo { name, esmtp } => self.events.push(Ev::Helo(name, esmtp)),
                e @ (Event::Mail { .. } | Event::Rcpt { .. } | Event::DataEnd) => {
                    match &e {
                        Event::Mail { reverse_path, .. } => {
                            self.events.push(Ev::Mail(reverse_path.to_string()))
                        }
                        Event::Rcpt { forward_path, .. } => {
                            self.events.push(Ev::Rcpt(forward_path.to_string()))
                        }
                        _ => self.events.push(Ev::DataEnd),
                    }
                    assert_eq!(self.s.poll(self.now), Event::Pending);
                    let r = (self.decider)(&e);
                    self.s.decide(r);
                }
                Event::DataStart => self.events.push(Ev::DataStart),
                Event::Body(b) => {
                    assert!(b.len() <= BODY_CHUNK_BYTES_MAX + BODY_CHUNK_SLACK_BYTES);
                    assert!(!b.is_empty());
                    self.body_chunks += 1;
                    self.body.extend_from_slice(&b);
                }
                Event::DataAborted { reply } => self.events.push(Ev::Aborted(summary(&reply))),
                Event::ReplicaDone { ids } => self.events.push(Ev::ReplicaDone(ids)),
                Event::ReplicaTaken { shard } => {
                    self.events.push(Ev::ReplicaTaken(shard));
                    assert_eq!(self.s.poll(self.now), Event::Pending);
                    let lines = vec!["0006201A2B3C4D01".to_string(), "1 taken over".to_string()];
                    self.s.decide(Reply { code: 250, enhanced: Some(Enhanced(2, 0, 0)), lines });
                }
                e @ Event::Auth { .. } => {
                    if let Event::Auth { mechanism, credentials } = &e {
                        let c = credentials.clone();
                        self.events.push(Ev::Auth(mechanism, c.authzid, c.user, c.password.0));
                    }
                    assert_eq!(self.s.poll(self.now), Event::Pending);
                    let r = (self.decider)(&e);
                    self.s.decide(r);
                }
                e @ Event::AuthStep { .. } => {
                    if let Event::AuthStep { first, data, .. } = &e {
                        self.events.push(Ev::AuthStep(*first, data.clone()));
                    }
                    assert_eq!(self.s.poll(self.now), Event::Pending);
                    let r = (self.decider)(&e);
                    if r.code == 235 {
                        self.s.set_auth_login("scram-user");
                    }
                    self.s.decide(r);
                }
                Event::StartTls => {
                    // The driver's handshake, always successful here.
                    self.events.push(Ev::StartTls);
                    self.s.tls_started(self.now);
                }
            }
        }
        self.collect();
    }

    fn collect(&mut self) {
        let out = self.s.take_output();
        let text = String::from_utf8(out).expect("replies are UTF-8");
        for line in text.split_terminator("\r\n") {
            assert!(line.len() >= 4, "short reply line {line:?}");
            if line.as_bytes()[3] == b' ' {
                self.replies.push(line_summary(line));
            }
        }
        self.raw.push_str(&text);
    }

    /// Asserts the replies since the last check, in order.
    fn expect(&mut self, want: &[&str]) {
        let got = std::mem::take(&mut self.replies);
        assert_eq!(got, want, "replies; transcript so far:\n{}", self.raw);
    }

    fn expect_events(&mut self, want: &[Ev]) {
        let got = std::mem::take(&mut self.events);
        assert_eq!(got, want);
    }

    /// MAIL, RCPT, DATA for one recipient, checked.
    fn start_data(&mut self) {
        self.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n");
        self.expect(&["250 2.1.0", "250 2.1.5", "354"]);
        self.events.clear();
        self.body.clear();
    }

    fn start_bdat(&mut self) {
        self.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n");
        self.expect(&["250 2.1.0", "250 2.1.5"]);
        self.events.clear();
        self.body.clear();
    }
}

fn summary(r: &Reply) -> String {
    match r.enhanced {
        Some(e) => format!("{} {}", r.code, e),
        None => r.code.to_string(),
    }
}

/// "250 2.1.0 text" -> "250 2.1.0"; "250 mx.test" -> "250".
fn line_summary(line: &str) -> String {
    let code = &line[..3];
    let rest = &line[4..];
    let token = rest.split(' ').next().unwrap_or("");
    let parts: Vec<&str> = token.split('.').collect();
    let enhanced = parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && parts[0].as_bytes()[0] == code.as_bytes()[0];
    if enhanced {
        format!("{} {}", code, token)
    } else {
        code.to_string()
    }
}

// ---- greeting, EHLO, HELO ----

#[test]
fn greeting_names_host() {
    let t = Session::new();
    assert_eq!(t.raw, "220 mx.test ESMTP ringpost\r\n");
}

#[test]
fn ehlo_lists_keywords() {
    let mut t = Session::new();
    t.send("EHLO client.test\r\n");
    t.expect(&["250"]);
    let lines: Vec<&str> = t.raw.split_terminator("\r\n").skip(1).collect();
    assert_eq!(
        lines,
        [
            "250-mx.test",
            "250-PIPELINING",
            "250-SIZE 1000",
            "250-8BITMIME",
            "250-ENHANCEDSTATUSCODES",
            "250-SMTPUTF8",
            "250-CHUNKING",
            "250-BINARYMIME",
            "250 DSN"
        ]
    );
    t.expect_events(&[Ev::Helo("client.test".into(), true)]);
    assert_eq!(t.s.helo_name(), Some("client.test"));
    assert_eq!(t.s.protocol(), "ESMTP");
}

#[test]
fn helo_plain_reply() {
    let mut t = Session::new();
    t.send("HELO client.test\r\n");
    t.expect(&["250"]);
    assert!(t.raw.ends_with("250 mx.test\r\n"));
    t.expect_events(&[Ev::Helo("client.test".into(), false)]);
    assert_eq!(t.s.protocol(), "SMTP");
}

#[test]
fn ehlo_without_argument() {
    let mut t = Session::new();
    t.send("EHLO\r\nHELO \r\n");
    t.expect(&["501 5.5.4", "501 5.5.4"]);
    assert_eq!(t.s.helo_name(), None);
}

#[test]
fn ehlo_argument_too_long() {
    let mut t = Session::new();
    t.send(&format!("EHLO {}\r\n", "a".repeat(300)));
    t.expect(&["501 5.5.4"]);
}

#[test]
fn verbs_are_case_insensitive() {
    let mut t = Session::new();
    t.send("ehlo client.test\r\nmail from:<a@example.com>\r\nrCpT To:<b@example.com>\r\nnoop\r\nrset\r\nQuIt\r\n");
    t.expect(&[
        "250",
        "250 2.1.0",
        "250 2.1.5",
        "250 2.0.0",
        "250 2.0.0",
        "221 2.0.0",
    ]);
    assert!(t.closed);
}

#[test]
fn ehlo_resets_transaction() {
    let mut t = Session::ehlo();
    t.send("MAIL FROM:<a@example.com>\r\nEHLO again.test\r\nRCPT TO:<b@example.com>\r\n");
    t.expect(&["250 2.1.0", "250", "503 5.5.1"]);
    assert!(!t.s.in_transaction());
    assert_eq!(t.s.helo_name(), Some("again.test"));
}

#[test]
fn helo_resets_transaction() {
    let mut t = Session::ehlo();
    t.send("MAIL FROM:<a@example.com>\r\nHELO again.test\r\nMAIL FROM:<a@example.com>\r\n");
    t.expect(&["250 2.1.0", "250", "250 2.1.0"]);
    assert_eq!(t.s.transaction().unwrap().protocol, "SMTP");
}

// ---- simple commands ----

#[test]
fn noop_help_vrfy_expn() {
    let mut t = Session::new();
    t.send("NOOP\r\nNOOP anything\r\nHELP\r\nVRFY user\r\nVRFY\r\nEXPN list\r\n");
    t.expect(&[
        "250 2.0.0",
        "250 2.0.0",
        "214 2.0.0",
        "252 2.1.5",
        "501 5.5.4",
        "502 5.5.1",
    ]);
}

#[test]
fn quit_closes_and_stays_closed() {
    let mut t = Session::ehlo();
    t.send("QUIT\r\nNOOP\r\n");
    t.expect(&["221 2.0.0"]);
    t.expect_events(&[Ev::Close]);
    assert_eq!(t.s.poll(t.now), Event::Close);
    t.s.feed(b"NOOP\r\n");
    assert_eq!(t.s.poll(t.now), Event::Close);
    assert!(t.s.take_output().is_empty());
}

#[test]
fn rset_resets_transaction() {
    let mut t = Session::ehlo();
    t.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nRSET\r\nRCPT TO:<b@example.com>\r\n");
    t.expect(&["250 2.1.0", "250 2.1.5", "250 2.0.0", "503 5.5.1"]);
}

#[test]
fn rset_with_argument_is_syntax_error() {
    let mut t = Session::ehlo();
    t.send("RSET now\r\n");
    t.expect(&["501 5.5.4"]);
}

#[test]
fn unknown_command() {
    let mut t = Session::ehlo();
    t.send("FROB\r\nSTARTTLS\r\n");
    // STARTTLS is known but not offered without a certificate.
    t.expect(&["500 5.5.1", "502 5.5.1"]);
}

#[test]
fn empty_line_is_an_error() {
    let mut t = Session::ehlo();
    t.send("\r\n");
    t.expect(&["500 5.5.1"]);
}

#[test]
fn lf_terminated_commands_accepted_when_normalizing() {
    let mut t = Session::with(|p| p.bare_lf = BareLfPolicy::Normalize);
    t.send("EHLO client.test\nMAIL FROM:<a@example.com>\nRCPT TO:<b@example.com>\nQUIT\n");
    t.expect(&["250", "250 2.1.0", "250 2.1.5", "221 2.0.0"]);
}

#[test]
fn bare_lf_noop_refused_and_not_run() {
    let mut t = Session::ehlo();
    t.send_bytes(b"NOOP\n");
    t.expect(&["500 5.5.2"]);
    assert!(
        t.raw.ends_with(
            "500 5.5.2 syntax error: command lines must end with CRLF (RFC 5321 section 2.3.8)\r\n"
        ),
        "{}",
        t.raw
    );
    assert_eq!(t.s.error_count(), 1);
    let mut t = Session::ehlo_with(|p| p.bare_lf = BareLfPolicy::Normalize);
    t.send_bytes(b"NOOP\n");
    t.expect(&["250 2.0.0"]);
    assert_eq!(t.s.error_count(), 0);
}

#[test]
fn bare_lf_ehlo_refused_so_mail_is_out_of_sequence() {
    let mut t = Session::new();
    t.send_bytes(b"EHLO x\nMAIL FROM:<a@b>\r\n");
    t.expect(&["500 5.5.2", "503 5.5.1"]);
    assert_eq!(t.s.helo_name(), None);
    assert!(!t.s.in_transaction());
    assert!(t.events.is_empty(), "{:?}", t.events);
    let mut t = Session::with(|p| p.bare_lf = BareLfPolicy::Normalize);
    t.send_bytes(b"EHLO x\nMAIL FROM:<a@b>\r\n");
    t.expect(&["250", "250 2.1.0"]);
    assert_eq!(t.s.helo_name(), Some("x"));
    assert!(t.s.in_transaction());
}

#[test]
fn bare_lf_quit_refused_and_session_stays() {
    let mut t = Session::ehlo();
    t.send_bytes(b"QUIT\n");
    t.expect(&["500 5.5.2"]);
    assert!(!t.closed);
    t.send("NOOP\r\n");
    t.expect(&["250 2.0.0"]);
    let mut t = Session::ehlo_with(|p| p.bare_lf = BareLfPolicy::Normalize);
    t.send_bytes(b"QUIT\n");
    t.expect(&["221 2.0.0"]);
    assert!(t.closed);
}

#[test]
fn bare_lf_bdat_refused_fails_the_chunked_transaction() {
    let mut t = Session::ehlo();
    t.start_bdat();
    // The refused BDAT's 3 octets are then read as a command line.
    t.send_bytes(b"BDAT 3\r\nabcBDAT 3 LAST\nxyz\r\n");
    t.expect(&["250 2.0.0", "500 5.5.2", "500 5.5.1"]);
    t.expect_events(&[Ev::DataStart, Ev::Aborted("500 5.5.2".into())]);
    assert!(!t.s.in_transaction());
}

#[test]
fn control_characters_in_command_refused() {
    let mut t = Session::new();
    t.send("EHLO a\rb\r\n");
    t.expect(&["500 5.5.2"]);
    t.send_bytes(b"EHLO \xff\xfe\r\n");
    t.expect(&["500 5.5.2"]);
    assert_eq!(t.s.helo_name(), None);
}

#[test]
fn http_request_closes_at_once() {
    let mut t = Session::new();
    t.send("GET / HTTP/1.1\r\nHost: mx.test\r\n\r\n");
    t.expect(&["421 4.7.0"]);
    assert!(t.closed);
}

#[test]
fn command_split_across_feeds() {
    let mut t = Session::new();
    t.send("EH");
    t.expect(&[]);
    t.send("LO client.te");
    t.expect(&[]);
    t.send("st\r");
    t.expect(&[]);
    t.send("\n");
    t.expect(&["250"]);
}

// ---- sequence ----

#[test]
fn mail_before_helo() {
    let mut t = Session::new();
    t.send("MAIL FROM:<a@example.com>\r\n");
    t.expect(&["503 5.5.1"]);
}

#[test]
fn rcpt_before_mail() {
    let mut t = Session::ehlo();
    t.send("RCPT TO:<b@example.com>\r\n");
    t.expect(&["503 5.5.1"]);
}

#[test]
fn data_before_mail() {
    let mut t = Session::ehlo();
    t.send("DATA\r\n");
    t.expect(&["503 5.5.1"]);
}

#[test]
fn data_without_good_recipient() {
    let mut t = Session::ehlo();
    t.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<unknown@example.com>\r\nDATA\r\n");
    t.expect(&["250 2.1.0", "550 5.1.1", "503 5.5.1"]);
    assert_eq!(
        t.s.error_count(),
        0,
        "no valid recipients under pipelining is not a client mistake"
    );
}

#[test]
fn nested_mail() {
    let mut t = Session::ehlo();
    t.send("MAIL FROM:<a@example.com>\r\nMAIL FROM:<c@example.com>\r\n");
    t.expect(&["250 2.1.0", "503 5.5.1"]);
    assert_eq!(
        t.s.transaction().unwrap().reverse_path.to_string(),
        "<a@example.com>"
    );
}

#[test]
fn refused_mail_starts_no_transaction() {
    let mut t = Session::ehlo();
    t.decider = Box::new(|e| match e {
        Event::Mail { .. } => Reply::new(550, Enhanced(5, 7, 1), "sender refused"),
        _ => Reply::new(250, Enhanced(2, 0, 0), "ok"),
    });
    t.send("MAIL FROM:<spam@example.com>\r\nRCPT TO:<b@example.com>\r\n");
    t.expect(&["550 5.7.1", "503 5.5.1"]);
    assert!(!t.s.in_transaction());
}

#[test]
fn data_with_argument() {
    let mut t = Session::ehlo();
    t.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA now\r\n");
    t.expect(&["250 2.1.0", "250 2.1.5", "501 5.5.4"]);
}

// ---- MAIL and RCPT syntax ----

#[test]
fn mail_space_after_colon_tolerated() {
    let mut t = Session::ehlo();
    t.send("MAIL FROM: <a@example.com>\r\nRCPT TO: <b@example.com>\r\n");
    t.expect(&["250 2.1.0", "250 2.1.5"]);
    t.expect_events(&[
        Ev::Mail("<a@example.com>".into()),
        Ev::Rcpt("b@example.com".into()),
    ]);
}

#[test]
fn mail_null_reverse_path() {
    let mut t = Session::ehlo();
    t.send("MAIL FROM:<>\r\n");
    t.expect(&["250 2.1.0"]);
    assert_eq!(t.s.transaction().unwrap().reverse_path, ReversePath::Null);
}

#[test]
fn mail_missing_from() {
    let mut t = Session::ehlo();
    t.send("MAIL <a@example.com>\r\nMAIL TO:<a@example.com>\r\nMAIL\r\n");
    t.expect(&["501 5.5.4", "501 5.5.4", "501 5.5.4"]);
}

#[test]
fn mail_without_brackets() {
    let mut t = Session::ehlo();
    t.send("MAIL FROM:a@example.com\r\n");
    t.expect(&["501 5.1.7"]);
}

#[test]
fn mail_bad_address_syntax() {
    let mut t = Session::ehlo();
    t.send("MAIL FROM:<a b@example.com>\r\nMAIL FROM:<a@exa mple.com>\r\nMAIL FROM:<a@>\r\nMAIL FROM:<a@example.com>junk\r\n");
    t.expect(&["501 5.1.7", "501 5.1.7", "501 5.1.7", "501 5.1.7"]);
}

#[test]
fn rcpt_bad_address_syntax() {
    let mut t = Session::ehlo();
    t.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<>\r\nRCPT TO:<b>\r\nRCPT TO:b@example.com\r\nRCPT <b@example.com>\r\n");
    t.expect(&[
        "250 2.1.0",
        "501 5.1.3",
        "501 5.1.3",
        "501 5.1.3",
        "501 5.5.4",
    ]);
}

#[test]
fn rcpt_postmaster_without_domain() {
    let mut t = Session::ehlo();
    t.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<postmaster>\r\nRCPT TO:<PostMaster>\r\n");
    t.expect(&["250 2.1.0", "250 2.1.5", "250 2.1.5"]);
    let r = &t.s.transaction().unwrap().recipients;
    assert!(r.iter().all(|a| a.domain.is_none()));
}

#[test]
fn quoted_local_parts() {
    let mut t = Session::ehlo();
    t.send("MAIL FROM:<\"a b\"@example.com>\r\nRCPT TO:<\"plain\"@example.com>\r\nRCPT TO:<\"x>y\"@example.com>\r\n");
    t.expect(&["250 2.1.0", "250 2.1.5", "250 2.1.5"]);
    t.expect_events(&[
        Ev::Mail("<\"a b\"@example.com>".into()),
        Ev::Rcpt("plain@example.com".into()),
        Ev::Rcpt("\"x>y\"@example.com".into()),
    ]);
}

#[test]
fn address_literals_in_paths() {
    let mut t = Session::ehlo();
    t.send("MAIL FROM:<a@[192.0.2.1]>\r\nRCPT TO:<b@[IPv6:2001:db8::1]>\r\nRCPT TO:<c@[192.0.2.999]>\r\n");
    t.expect(&["250 2.1.0", "250 2.1.5", "501 5.1.3"]);
}

#[test]
fn source_route_ignored() {
    let mut t = Session::ehlo();
    t.send("MAIL FROM:<@hop1.example,@hop2.example:a@example.com>\r\nRCPT TO:<@hop.example:b@example.com>\r\n");
    t.expect(&["250 2.1.0", "250 2.1.5"]);
    t.expect_events(&[
        Ev::Mail("<a@example.com>".into()),
        Ev::Rcpt("b@example.com".into()),
    ]);
}

#[test]
fn local_part_length_limit() {
    let mut t = Session::ehlo();
    let ok = "l".repeat(64);
    let long = "l".repeat(65);
    t.send(&format!("MAIL FROM:<{long}@example.com>\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<{ok}@example.com>\r\nRCPT TO:<{long}@example.com>\r\n"));
    t.expect(&["501 5.1.3", "250 2.1.0", "250 2.1.5", "501 5.1.3"]);
}

#[test]
fn domain_length_limit() {
    let mut t = Session::ehlo();
    let label = "d".repeat(63);
    // 252 octets: the longest that fits the 256-octet path with "b@".
    let domain = format!("{label}.{label}.{label}.{}", "d".repeat(60));
    let too_long = format!("{label}.{label}.{label}.{label}x");
    t.send(&format!(
        "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@{domain}>\r\nRCPT TO:<b@{too_long}>\r\n"
    ));
    t.expect(&["250 2.1.0", "250 2.1.5", "501 5.1.3"]);
}

#[test]
fn rcpt_parameters_refused() {
    let mut t = Session::ehlo();
    t.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com> XNOTIFY=NEVER\r\nRCPT TO:<b@example.com> =x\r\n");
    t.expect(&["250 2.1.0", "555 5.5.4", "501 5.5.4"]);
}

// ---- DSN (RFC 3461) ----

#[test]
fn dsn_is_offered() {
    let t = Session::ehlo();
    assert!(t.raw.contains("250-DSN\r\n") || t.raw.contains("250 DSN\r\n"), "{}", t.raw);
}

#[test]
fn dsn_parameters_are_kept_per_recipient() {
    let mut t = Session::ehlo();
    t.send(
        "MAIL FROM:<a@example.com> RET=HDRS ENVID=QQ314159\r\n\
         RCPT TO:<b@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bx@example.com\r\n\
         RCPT TO:<c@example.com> notify=never\r\n\
         RCPT TO:<d@example.com>\r\n",
    );
    t.expect(&["250 2.1.0", "250 2.1.5", "250 2.1.5", "250 2.1.5"]);
    let txn = t.s.transaction().unwrap();
    assert_eq!(txn.params.dsn.ret, Some(crate::smtp::dsn::Ret::Hdrs));
    assert_eq!(txn.params.dsn.envid.as_deref(), Some("QQ314159"));
    assert_eq!(txn.recipient_dsn.len(), 3);
    assert_eq!(txn.recipient_dsn[0].wire(), " NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bx@example.com");
    assert_eq!(txn.recipient_dsn[1].wire(), " NOTIFY=NEVER");
    assert!(txn.recipient_dsn[2].is_empty());
}

#[test]
fn dsn_refused_recipient_keeps_the_lists_in_step() {
    let mut t = Session::ehlo();
    t.send(
        "MAIL FROM:<a@example.com>\r\nRCPT TO:<unknown@example.com> NOTIFY=NEVER\r\n\
         RCPT TO:<b@example.com> NOTIFY=DELAY\r\n",
    );
    t.expect(&["250 2.1.0", "550 5.1.1", "250 2.1.5"]);
    let txn = t.s.transaction().unwrap();
    assert_eq!(txn.recipients.len(), 1);
    assert_eq!(txn.recipient_dsn[0].wire(), " NOTIFY=DELAY");
}

#[test]
fn dsn_notify_syntax_errors() {
    let mut t = Session::ehlo_with(|p| p.max_errors = 100);
    t.send("MAIL FROM:<a@example.com>\r\n");
    t.expect(&["250 2.1.0"]);
    for bad in [
        "NOTIFY=NEVER,SUCCESS",
        "NOTIFY=SUCCESS,NEVER",
        "NOTIFY=SUCCESS,SUCCESS",
        "NOTIFY=ALWAYS",
        "NOTIFY=SUCCESS,",
        "NOTIFY",
        "NOTIFY=",
        "NOTIFY=DELAY NOTIFY=FAILURE",
    ] {
        t.send(&format!("RCPT TO:<b@example.com> {bad}\r\n"));
        t.expect(&["501 5.5.4"]);
    }
    assert!(t.s.transaction().unwrap().recipients.is_empty());
}

#[test]
fn dsn_orcpt_syntax_errors() {
    let mut t = Session::ehlo_with(|p| p.max_errors = 100);
    t.send("MAIL FROM:<a@example.com>\r\n");
    t.expect(&["250 2.1.0"]);
    let long = format!("ORCPT=rfc822;{}", "x".repeat(500));
    for bad in [
        "ORCPT=b@example.com",
        "ORCPT=;b@example.com",
        "ORCPT=rfc822;",
        "ORCPT=rfc822;b+4@example.com",
        "ORCPT=rfc822;b+zz@example.com",
        "ORCPT",
        long.as_str(),
    ] {
        t.send(&format!("RCPT TO:<b@example.com> {bad}\r\n"));
        t.expect(&["501 5.5.4"]);
    }
    // ORCPT with '=' in the address must be xtext ("+3D").
    t.send("RCPT TO:<b@example.com> ORCPT=rfc822;b=c@example.com\r\n");
    t.expect(&["501 5.5.4"]);
    t.send("RCPT TO:<b@example.com> ORCPT=rfc822;b+3Dc@example.com\r\n");
    t.expect(&["250 2.1.5"]);
}

#[test]
fn dsn_ret_and_envid_syntax_errors() {
    let mut t = Session::ehlo_with(|p| p.max_errors = 100);
    let long = format!("ENVID={}", "x".repeat(101));
    for bad in ["RET=BODY", "RET", "RET=", "RET=FULL RET=HDRS", "ENVID", "ENVID=a+4", "ENVID=a+g1", long.as_str()] {
        t.send(&format!("MAIL FROM:<a@example.com> {bad}\r\n"));
        t.expect(&["501 5.5.4"]);
        assert!(!t.s.in_transaction(), "{bad}");
    }
    t.send(&format!("MAIL FROM:<a@example.com> RET=full ENVID={}\r\n", "x".repeat(100)));
    t.expect(&["250 2.1.0"]);
}

#[test]
fn dsn_parameters_need_ehlo() {
    let mut t = Session::new();
    t.send("HELO client.test\r\nMAIL FROM:<a@example.com> RET=HDRS\r\n");
    t.expect(&["250", "555 5.5.4"]);
    t.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com> NOTIFY=NEVER\r\nRCPT TO:<b@example.com>\r\n");
    t.expect(&["250 2.1.0", "555 5.5.4", "250 2.1.5"]);
}

// ---- MAIL parameters ----

#[test]
fn mail_size_within_limit() {
    let mut t = Session::ehlo();
    t.send("MAIL FROM:<a@example.com> SIZE=1000\r\n");
    t.expect(&["250 2.1.0"]);
    assert_eq!(t.s.transaction().unwrap().params.size, Some(1000));
}

#[test]
fn mail_size_over_limit() {
    let mut t = Session::ehlo();
    t.send("MAIL FROM:<a@example.com> SIZE=1001\r\nMAIL FROM:<a@example.com> SIZE=abc\r\n");
    t.expect(&["552 5.3.4", "501 5.5.4"]);
    assert!(!t.s.in_transaction());
}

#[test]
fn mail_body_parameter() {
    let mut t = Session::ehlo();
    t.send("MAIL FROM:<a@example.com> BODY=8BITMIME\r\nRSET\r\nMAIL FROM:<a@example.com> BODY=7bit\r\nRSET\r\nMAIL FROM:<a@example.com> BODY=9BIT\r\n");
    t.expect(&[
        "250 2.1.0",
        "250 2.0.0",
        "250 2.1.0",
        "250 2.0.0",
        "555 5.5.4",
    ]);
}

#[test]
fn mail_unknown_parameter() {
    let mut t = Session::ehlo();
    t.send("MAIL FROM:<a@example.com> AUTH=<>\r\nMAIL FROM:<a@example.com> SIZE=10 SIZE=10\r\n");
    t.expect(&["555 5.5.4", "501 5.5.4"]);
}

#[test]
fn mail_parameters_need_ehlo() {
    let mut t = Session::new();
    t.send(
        "HELO client.test\r\nMAIL FROM:<a@example.com> SIZE=10\r\nMAIL FROM:<a@example.com>\r\n",
    );
    t.expect(&["250", "555 5.5.4", "250 2.1.0"]);
}

// ---- SMTPUTF8 ----

#[test]
fn utf8_sender_without_smtputf8() {
    let mut t = Session::ehlo();
    t.send("MAIL FROM:<jösé@example.com>\r\n");
    t.expect(&["553 5.6.7"]);
}

#[test]
fn utf8_recipient_without_smtputf8() {
    let mut t = Session::ehlo();
    t.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@exämple.com>\r\n");
    t.expect(&["250 2.1.0", "553 5.6.7"]);
}

#[test]
fn utf8_with_smtputf8() {
    let mut t = Session::ehlo();
    t.send("MAIL FROM:<jösé@exämple.com> SMTPUTF8\r\nRCPT TO:<δοκιμή@παράδειγμα.δοκιμή>\r\n");
    t.expect(&["250 2.1.0", "250 2.1.5"]);
    assert_eq!(t.s.protocol(), "UTF8SMTP");
    assert_eq!(t.s.transaction().unwrap().protocol, "UTF8SMTP");
    t.expect_events(&[
        Ev::Mail("<jösé@exämple.com>".into()),
        Ev::Rcpt("δοκιμή@παράδειγμα.δοκιμή".into()),
    ]);
}

#[test]
fn smtputf8_with_value_refused() {
    let mut t = Session::ehlo();
    t.send("MAIL FROM:<a@example.com> SMTPUTF8=yes\r\n");
    t.expect(&["501 5.5.4"]);
}

// ---- recipients ----

#[test]
fn recipient_limit() {
    let mut t = Session::ehlo();
    t.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b1@example.com>\r\nRCPT TO:<b2@example.com>\r\nRCPT TO:<b3@example.com>\r\nRCPT TO:<b4@example.com>\r\n");
    t.expect(&[
        "250 2.1.0",
        "250 2.1.5",
        "250 2.1.5",
        "250 2.1.5",
        "452 4.5.3",
    ]);
    assert_eq!(t.s.transaction().unwrap().recipients.len(), 3);
    assert_eq!(t.s.error_count(), 0);
}

#[test]
fn refused_recipients_do_not_count_toward_limit() {
    let mut t = Session::ehlo();
    t.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<unknown1@example.com>\r\nRCPT TO:<unknown2@example.com>\r\nRCPT TO:<b1@example.com>\r\nRCPT TO:<b2@example.com>\r\nRCPT TO:<b3@example.com>\r\n");
    t.expect(&[
        "250 2.1.0",
        "550 5.1.1",
        "550 5.1.1",
        "250 2.1.5",
        "250 2.1.5",
        "250 2.1.5",
    ]);
    let r: Vec<String> =
        t.s.transaction()
            .unwrap()
            .recipients
            .iter()
            .map(|a| a.to_string())
            .collect();
    assert_eq!(r, ["b1@example.com", "b2@example.com", "b3@example.com"]);
}

#[test]
fn pending_blocks_until_decided() {
    let mut t = Session::ehlo();
    t.s.feed(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n");
    assert!(matches!(t.s.poll(t.now), Event::Mail { .. }));
    assert_eq!(t.s.poll(t.now), Event::Pending);
    assert_eq!(t.s.poll(t.now), Event::Pending);
    t.s.decide(Reply::new(250, Enhanced(2, 1, 0), "ok"));
    assert!(matches!(t.s.poll(t.now), Event::Rcpt { .. }));
    t.s.decide(Reply::new(250, Enhanced(2, 1, 5), "ok"));
    assert_eq!(t.s.poll(t.now), Event::NeedInput);
    t.collect();
    t.expect(&["250 2.1.0", "250 2.1.5"]);
}

#[test]
fn decide_421_closes() {
    let mut t = Session::ehlo();
    t.decider = Box::new(|_| Reply::new(421, Enhanced(4, 3, 0), "try later"));
    t.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n");
    t.expect(&["421 4.3.0"]);
    assert!(t.closed);
}

// ---- DATA ----

#[test]
fn simple_message() {
    let mut t = Session::ehlo();
    t.start_data();
    t.send("Subject: hi\r\n\r\nhello\r\n.\r\n");
    t.expect(&["250 2.0.0"]);
    assert_eq!(t.body, b"Subject: hi\r\n\r\nhello\r\n");
    t.expect_events(&[Ev::DataEnd]);
    assert!(
        !t.s.in_transaction(),
        "the end of data ends the transaction"
    );
    assert_eq!(t.s.helo_name(), Some("client.test"));
}

#[test]
fn transaction_visible_at_data_end() {
    let mut t = Session::ehlo();
    t.start_data();
    t.s.feed(b"x\r\n.\r\n");
    assert!(matches!(t.s.poll(t.now), Event::Body(_)));
    assert_eq!(t.s.poll(t.now), Event::DataEnd);
    let txn = t.s.transaction().expect("transaction kept until decided");
    assert_eq!(txn.recipients.len(), 1);
    assert_eq!(txn.helo_name, "client.test");
    t.s.decide(Reply::new(250, Enhanced(2, 0, 0), "queued"));
    assert!(t.s.transaction().is_none());
}

#[test]
fn empty_message() {
    let mut t = Session::ehlo();
    t.start_data();
    t.send(".\r\n");
    t.expect(&["250 2.0.0"]);
    assert!(t.body.is_empty());
}

#[test]
fn dot_unstuffing() {
    let mut t = Session::ehlo();
    t.start_data();
    t.send("..leading dot\r\n...two\r\n.\r\n");
    t.expect(&["250 2.0.0"]);
    assert_eq!(t.body, b".leading dot\r\n..two\r\n");
}

#[test]
fn dot_inside_line_is_content() {
    let mut t = Session::ehlo();
    t.start_data();
    t.send("a.\r\nb .\r\n. \r\n.\r\n");
    t.expect(&["250 2.0.0"]);
    assert_eq!(t.body, b"a.\r\nb .\r\n \r\n");
}

#[test]
fn second_message_on_same_connection() {
    let mut t = Session::ehlo();
    t.start_data();
    t.send("one\r\n.\r\n");
    t.expect(&["250 2.0.0"]);
    t.start_data();
    t.send("two\r\n.\r\n");
    t.expect(&["250 2.0.0"]);
    assert_eq!(t.body, b"two\r\n");
}

#[test]
fn rejected_message_reply_comes_from_decide() {
    let mut t = Session::ehlo();
    t.decider = Box::new(|e| match e {
        Event::DataEnd => Reply::new(554, Enhanced(5, 7, 1), "spam"),
        Event::Mail { .. } => Reply::new(250, Enhanced(2, 1, 0), "ok"),
        _ => Reply::new(250, Enhanced(2, 1, 5), "ok"),
    });
    t.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n");
    t.send("spam\r\n.\r\nMAIL FROM:<a@example.com>\r\n");
    t.expect(&["250 2.1.0", "250 2.1.5", "354", "554 5.7.1", "250 2.1.0"]);
}

#[test]
fn pipelined_transaction_in_one_feed() {
    let mut t = Session::new();
    t.send("EHLO client.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nRCPT TO:<c@example.com>\r\nDATA\r\n");
    t.expect(&["250", "250 2.1.0", "250 2.1.5", "250 2.1.5", "354"]);
    t.send("Subject: x\r\n\r\nbody\r\n.\r\nQUIT\r\n");
    t.expect(&["250 2.0.0", "221 2.0.0"]);
    assert_eq!(t.body, b"Subject: x\r\n\r\nbody\r\n");
    assert_eq!(
        t.events,
        [
            Ev::Helo("client.test".into(), true),
            Ev::Mail("<a@example.com>".into()),
            Ev::Rcpt("b@example.com".into()),
            Ev::Rcpt("c@example.com".into()),
            Ev::DataStart,
            Ev::DataEnd,
            Ev::Close
        ]
    );
}

#[test]
fn commands_after_data_in_same_packet_are_content() {
    let mut t = Session::ehlo();
    t.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nRSET\r\nQUIT\r\n.\r\n");
    t.expect(&["250 2.1.0", "250 2.1.5", "354", "250 2.0.0"]);
    assert_eq!(t.body, b"RSET\r\nQUIT\r\n");
    assert!(!t.closed);
}

#[test]
fn whole_session_in_one_feed() {
    let mut t = Session::new();
    t.send("EHLO c.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nhi\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<b@example.com>\r\nDATA\r\nbounce\r\n.\r\nQUIT\r\n");
    t.expect(&[
        "250",
        "250 2.1.0",
        "250 2.1.5",
        "354",
        "250 2.0.0",
        "250 2.1.0",
        "250 2.1.5",
        "354",
        "250 2.0.0",
        "221 2.0.0",
    ]);
    assert_eq!(t.body, b"hi\r\nbounce\r\n");
}

#[test]
fn content_one_byte_at_a_time_same_body() {
    let message = b"Subject: t\r\n\r\n..dot\r\nline two\r\n\r\n.x\r\nend\r\n.\r\n";
    let mut whole = Session::ehlo();
    whole.start_data();
    whole.send_bytes(message);
    whole.expect(&["250 2.0.0"]);
    let mut t = Session::ehlo();
    t.start_data();
    for b in message.iter() {
        t.send_bytes(std::slice::from_ref(b));
    }
    t.expect(&["250 2.0.0"]);
    assert_eq!(t.body, whole.body);
    assert_eq!(
        t.body,
        b"Subject: t\r\n\r\n.dot\r\nline two\r\n\r\nx\r\nend\r\n"
    );
}

#[test]
fn content_split_at_every_boundary_same_body() {
    let message: &[u8] = b"a\r\n..b\r\n.\rc\r\n.\n\r\n.\r\n";
    for policy in [BareLfPolicy::Reject, BareLfPolicy::Normalize] {
        let mut whole = Session::ehlo_with(|p| p.bare_lf = policy);
        whole.start_data();
        whole.send_bytes(message);
        let want_replies = std::mem::take(&mut whole.replies);
        for split in 0..=message.len() {
            let mut t = Session::ehlo_with(|p| p.bare_lf = policy);
            t.start_data();
            t.send_bytes(&message[..split]);
            t.send_bytes(&message[split..]);
            assert_eq!(t.replies, want_replies, "split at {split}");
            if whole.events.contains(&Ev::DataEnd) {
                assert_eq!(t.body, whole.body, "split at {split}");
            }
            assert_eq!(t.events, whole.events, "split at {split}");
        }
    }
}

#[test]
fn large_body_in_bounded_chunks() {
    let mut t = Session::ehlo_with(|p| {
        p.max_message_bytes = 1 << 20;
        p.max_text_line_bytes = 1000;
    });
    t.start_data();
    let line = format!("{}\r\n", "x".repeat(98));
    let mut content = line.repeat(5000);
    content.push_str(".\r\n");
    t.send(&content);
    t.expect(&["250 2.0.0"]);
    assert_eq!(t.body.len(), 500_000);
    assert!(t.body_chunks >= 500_000 / (BODY_CHUNK_BYTES_MAX + BODY_CHUNK_SLACK_BYTES));
}

#[test]
fn body_event_per_read_before_end() {
    let mut t = Session::ehlo();
    t.start_data();
    t.s.feed(b"partial line");
    assert_eq!(t.s.poll(t.now), Event::Body(b"partial line".to_vec()));
    assert_eq!(t.s.poll(t.now), Event::NeedInput);
}

// ---- content limits ----

#[test]
fn content_size_limit() {
    let mut t = Session::ehlo();
    t.start_data();
    let line = format!("{}\r\n", "y".repeat(48));
    t.send(&line.repeat(21));
    t.expect(&[]);
    t.send(".\r\n");
    t.expect(&["552 5.3.4"]);
    t.expect_events(&[Ev::Aborted("552 5.3.4".into())]);
    assert!(!t.s.in_transaction());
    t.send("MAIL FROM:<a@example.com>\r\n");
    t.expect(&["250 2.1.0"]);
}

#[test]
fn content_exactly_at_size_limit() {
    let mut t = Session::ehlo();
    t.start_data();
    let line = format!("{}\r\n", "y".repeat(48));
    t.send(&line.repeat(20));
    t.send(".\r\n");
    t.expect(&["250 2.0.0"]);
    assert_eq!(t.body.len(), 1000);
}

#[test]
fn text_line_length_limit() {
    let mut t = Session::ehlo();
    t.start_data();
    t.send(&format!("{}\r\n", "z".repeat(98)));
    t.send(&format!("{}\r\nmore\r\n", "z".repeat(99)));
    t.expect(&[]);
    t.send(".\r\n");
    t.expect(&["500 5.6.0"]);
    assert!(t.raw.contains("line too long"));
    t.expect_events(&[Ev::Aborted("500 5.6.0".into())]);
}

#[test]
fn dot_stuffing_does_not_count_toward_line_length() {
    let mut t = Session::ehlo();
    t.start_data();
    t.send(&format!(".{}\r\n.\r\n", ".".repeat(98)));
    t.expect(&["250 2.0.0"]);
}

#[test]
fn default_line_limit_of_1000() {
    let mut t = Session::ehlo_with(|p| {
        p.max_text_line_bytes = 1000;
        p.max_message_bytes = 10_000;
    });
    t.start_data();
    t.send(&format!("{}\r\n.\r\n", "w".repeat(998)));
    t.expect(&["250 2.0.0"]);
    t.start_data();
    t.send(&format!("{}\r\n.\r\n", "w".repeat(999)));
    t.expect(&["500 5.6.0"]);
}

// ---- bare CR / LF and smuggling ----

fn smuggle(policy: BareLfPolicy, fake_end: &str) -> Session {
    let mut t = Session::ehlo_with(|p| p.bare_lf = policy);
    t.start_data();
    t.send(&format!("before{fake_end}MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nsmuggled\r\n"));
    // Not ended: no reply, no MAIL event, everything was content.
    t.expect(&[]);
    assert!(t.events.is_empty(), "{:?}", t.events);
    t.send(".\r\n");
    t
}

fn assert_smuggling_refused(fake_end: &str) {
    let mut t = smuggle(BareLfPolicy::Reject, fake_end);
    t.expect(&["550 5.6.11"]);
    t.expect_events(&[Ev::Aborted("550 5.6.11".into())]);
    assert!(t.raw.contains("bare CR or LF"));
}

fn assert_smuggling_normalized(fake_end: &str) {
    let mut t = smuggle(BareLfPolicy::Normalize, fake_end);
    t.expect(&["250 2.0.0"]);
    t.expect_events(&[Ev::DataEnd]);
    let body = String::from_utf8(t.body.clone()).unwrap();
    assert!(body.starts_with("before"), "{body:?}");
    assert!(
        body.ends_with(
            "MAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nsmuggled\r\n"
        ),
        "{body:?}"
    );
    assert!(
        !body.replace("\r\n", "").contains('\r') && !body.replace("\r\n", "").contains('\n'),
        "{body:?}"
    );
}

#[test]
fn smuggle_lf_dot_lf_rejected() {
    assert_smuggling_refused("\n.\n");
}

#[test]
fn smuggle_crlf_dot_lf_rejected() {
    assert_smuggling_refused("\r\n.\n");
}

#[test]
fn smuggle_lf_dot_crlf_rejected() {
    assert_smuggling_refused("\n.\r\n");
}

#[test]
fn smuggle_cr_dot_cr_rejected() {
    assert_smuggling_refused("\r.\r");
}

#[test]
fn smuggle_cr_dot_lf_rejected() {
    assert_smuggling_refused("\r.\n");
}

#[test]
fn smuggle_crlf_dot_cr_rejected() {
    assert_smuggling_refused("\r\n.\r");
}

#[test]
fn smuggle_cr_dot_crlf_rejected() {
    assert_smuggling_refused("\r.\r\n");
}

#[test]
fn smuggle_crlf_dot_cr_cr_lf_rejected() {
    assert_smuggling_refused("\r\n.\r\r\n");
}

#[test]
fn smuggle_lf_dot_lf_normalized() {
    assert_smuggling_normalized("\n.\n");
}

#[test]
fn smuggle_crlf_dot_lf_normalized() {
    assert_smuggling_normalized("\r\n.\n");
}

#[test]
fn smuggle_lf_dot_crlf_normalized() {
    assert_smuggling_normalized("\n.\r\n");
}

#[test]
fn smuggle_cr_dot_cr_normalized() {
    assert_smuggling_normalized("\r.\r");
}

#[test]
fn smuggle_cr_dot_lf_normalized() {
    assert_smuggling_normalized("\r.\n");
}

#[test]
fn normalize_stores_crlf() {
    let mut t = Session::ehlo_with(|p| p.bare_lf = BareLfPolicy::Normalize);
    t.start_data();
    // After the bare LF, ".\r\n" is not at the start of a wire line: content.
    t.send("a\nb\rc\r\r\nd\n.\r\n");
    t.expect(&[]);
    t.send(".\r\n");
    t.expect(&["250 2.0.0"]);
    assert_eq!(t.body, b"a\r\nb\r\nc\r\n\r\nd\r\n.\r\n");
}

#[test]
fn reject_policy_refuses_single_bare_lf() {
    let mut t = Session::ehlo();
    t.start_data();
    t.send("Subject: x\n\r\nbody\r\n.\r\n");
    t.expect(&["550 5.6.11"]);
    assert!(!t.s.in_transaction());
}

#[test]
fn bare_lf_then_dot_at_real_line_start_still_ends() {
    // The terminator is CRLF.CRLF; a bare LF earlier on the line does not
    // hide a real one.
    let mut t = Session::ehlo_with(|p| p.bare_lf = BareLfPolicy::Normalize);
    t.start_data();
    t.send("x\ny\r\n.\r\nNOOP\r\n");
    t.expect(&["250 2.0.0", "250 2.0.0"]);
    assert_eq!(t.body, b"x\r\ny\r\n");
}

#[test]
fn smuggled_content_one_byte_at_a_time() {
    for policy in [BareLfPolicy::Reject, BareLfPolicy::Normalize] {
        let mut t = Session::ehlo_with(|p| p.bare_lf = policy);
        t.start_data();
        for b in b"a\n.\nMAIL FROM:<e@example.com>\r\n\r.\r\n.\r\n".iter() {
            t.send_bytes(std::slice::from_ref(b));
        }
        let want = if policy == BareLfPolicy::Reject {
            "550 5.6.11"
        } else {
            "250 2.0.0"
        };
        t.expect(&[want]);
        assert!(!t.events.iter().any(|e| matches!(e, Ev::Mail(_))));
    }
}

// ---- a dot line ended by a bare LF or CR (normalize) ----

#[test]
fn normalized_dot_line_is_content_not_an_end() {
    let mut t = Session::ehlo_with(|p| p.bare_lf = BareLfPolicy::Normalize);
    t.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n");
    t.expect(&["250 2.1.0", "250 2.1.5"]);
    t.events.clear();
    t.send_bytes(b"DATA\r\na\r\n.\nb\r\n.\r\n");
    t.expect(&["354", "250 2.0.0"]);
    t.expect_events(&[Ev::DataStart, Ev::DataEnd]);
    // Stored with CRLF line ends: the line "." is content.
    assert_eq!(t.body, b"a\r\n.\r\nb\r\n");
    // Delivery stuffs it again; the next hop sees one message.
    let wire = crate::deliver::dotstuff::stuff_all(&t.body);
    assert_eq!(wire, b"a\r\n..\r\nb\r\n.\r\n");
}

#[test]
fn normalized_dot_line_ended_by_bare_cr_keeps_its_dot() {
    let mut t = Session::ehlo_with(|p| p.bare_lf = BareLfPolicy::Normalize);
    t.start_data();
    t.send_bytes(b"a\r\n.\rb\r\n.\r\r\nc\r\n.\r\n");
    t.expect(&["250 2.0.0"]);
    assert_eq!(t.body, b"a\r\n.\r\nb\r\n.\r\n\r\nc\r\n");
}

#[test]
fn normalized_dot_line_split_at_every_offset() {
    let content: &[u8] = b"a\r\n.\nb\r\n.\rc\r\n.\r\n";
    for split in 0..=content.len() {
        let mut t = Session::ehlo_with(|p| p.bare_lf = BareLfPolicy::Normalize);
        t.start_data();
        t.send_bytes(&content[..split]);
        t.send_bytes(&content[split..]);
        t.expect(&["250 2.0.0"]);
        assert_eq!(t.body, b"a\r\n.\r\nb\r\n.\r\nc\r\n", "split at {split}");
    }
}

// ---- 8-bit content without BODY=8BITMIME ----

/// Feeds `content` after DATA's 354 and returns the transaction as the
/// driver sees it at DataEnd.
fn transaction_at_data_end(t: &mut Session, content: &[u8]) -> Transaction {
    t.s.feed(content);
    loop {
        match t.s.poll(t.now) {
            Event::Body(b) => t.body.extend_from_slice(&b),
            Event::DataEnd => break,
            e => panic!("unexpected {e:?}"),
        }
    }
    let txn = t.s.transaction().expect("transaction at DataEnd").clone();
    t.s.decide(Reply::new(250, Enhanced(2, 0, 0), "queued"));
    t.run();
    txn
}

#[test]
fn undeclared_8bit_content_is_detected() {
    let mut t = Session::ehlo();
    t.send("MAIL FROM:<a@b>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n");
    t.expect(&["250 2.1.0", "250 2.1.5", "354"]);
    let txn = transaction_at_data_end(&mut t, b"Subject: x\r\n\r\ncaf\xc3\xa9\r\n.\r\n");
    assert_eq!(txn.params.body, None);
    assert!(!txn.params.body_8bit());
    assert!(txn.content_8bit);
    assert!(txn.body_8bit());
    assert_eq!(t.body, b"Subject: x\r\n\r\ncaf\xc3\xa9\r\n");
    t.expect(&["250 2.0.0"]);
}

#[test]
fn ascii_content_is_not_8bit() {
    let mut t = Session::ehlo();
    t.send("MAIL FROM:<a@b>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n");
    t.expect(&["250 2.1.0", "250 2.1.5", "354"]);
    let txn = transaction_at_data_end(&mut t, b"Subject: x\r\n\r\ncafe\x7f\r\n.\r\n");
    assert!(!txn.content_8bit);
    assert!(!txn.body_8bit());
    // The next transaction starts clean.
    t.send("MAIL FROM:<a@b> BODY=8BITMIME\r\nRCPT TO:<b@example.com>\r\nDATA\r\n");
    t.expect(&["250 2.0.0", "250 2.1.0", "250 2.1.5", "354"]);
    let txn = transaction_at_data_end(&mut t, b"plain\r\n.\r\n");
    assert!(!txn.content_8bit, "nothing above 127 was seen");
    assert!(txn.body_8bit(), "declared");
}

#[test]
fn undeclared_8bit_in_bdat_and_split_across_feeds() {
    let mut t = Session::ehlo();
    t.start_bdat();
    t.send_bytes(b"BDAT 4\r\ncaf\xc3");
    t.expect(&["250 2.0.0"]);
    let txn = transaction_at_data_end(&mut t, b"BDAT 3 LAST\r\n\xa9\r\n");
    assert!(txn.content_8bit && txn.body_8bit() && !txn.body_binary());
    assert_eq!(t.body, b"caf\xc3\xa9\r\n");
}

// ---- NUL in content ----

const NUL_MESSAGE: &[u8] = b"DATA\r\nSubject: x\r\n\r\nhello\r\n\x00.\r\nmore\r\n.\r\n";

fn nul_session(policy: NulPolicy) -> Session {
    let mut t = Session::ehlo_with(|p| p.nul = policy);
    t.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n");
    t.expect(&["250 2.1.0", "250 2.1.5"]);
    t.events.clear();
    t.body.clear();
    t
}

#[test]
fn nul_rejected_after_the_real_end_of_data() {
    let mut t = nul_session(NulPolicy::Reject);
    t.send_bytes(NUL_MESSAGE);
    t.expect(&["354", "550 5.6.0"]);
    assert!(
        t.raw
            .contains("550 5.6.0 NUL octets not allowed in message content\r\n"),
        "{}",
        t.raw
    );
    t.expect_events(&[Ev::DataStart, Ev::Aborted("550 5.6.0".into())]);
    assert!(!t.s.in_transaction());
    // Nothing is answered before the final dot: "\0." ended nothing.
    let mut t = nul_session(NulPolicy::Reject);
    let (head, tail) = NUL_MESSAGE.split_at(NUL_MESSAGE.len() - 3);
    t.send_bytes(head);
    t.expect(&["354"]);
    t.send_bytes(tail);
    t.expect(&["550 5.6.0"]);
}

#[test]
fn nul_stripped_keeps_one_message_and_dot_semantics() {
    let mut t = nul_session(NulPolicy::Strip);
    t.send_bytes(NUL_MESSAGE);
    t.expect(&["354", "250 2.0.0"]);
    t.expect_events(&[Ev::DataStart, Ev::DataEnd]);
    // "\0." was a line with content on the wire; stripped, it is the line
    // ".", which is content.
    assert_eq!(t.body, b"Subject: x\r\n\r\nhello\r\n.\r\nmore\r\n");
    assert!(!t.body.contains(&0));
    // Relayed, it is stuffed and stays one message at the next hop.
    let wire = crate::deliver::dotstuff::stuff_all(&t.body);
    assert_eq!(wire, b"Subject: x\r\n\r\nhello\r\n..\r\nmore\r\n.\r\n");
    let mut next = nul_session(NulPolicy::Reject);
    next.send("DATA\r\n");
    next.send_bytes(&wire);
    next.expect(&["354", "250 2.0.0"]);
    next.expect_events(&[Ev::DataStart, Ev::DataEnd]);
    assert_eq!(next.body, t.body);
}

#[test]
fn nul_policy_at_every_split() {
    for policy in [NulPolicy::Reject, NulPolicy::Strip] {
        let mut whole = nul_session(policy);
        whole.send_bytes(NUL_MESSAGE);
        let want = std::mem::take(&mut whole.replies);
        for split in 0..=NUL_MESSAGE.len() {
            let mut t = nul_session(policy);
            t.send_bytes(&NUL_MESSAGE[..split]);
            t.send_bytes(&NUL_MESSAGE[split..]);
            assert_eq!(t.replies, want, "split at {split}");
            assert_eq!(t.events, whole.events, "split at {split}");
            if policy == NulPolicy::Strip {
                assert_eq!(t.body, whole.body, "split at {split}");
            }
        }
    }
}

#[test]
fn nul_in_plain_bdat_follows_the_policy() {
    let content: &[u8] = b"a\x00b\r\n";
    let mut t = nul_session(NulPolicy::Reject);
    t.send_bytes(b"BDAT 5 LAST\r\n");
    t.send_bytes(content);
    t.expect(&["550 5.6.0"]);
    let mut t = nul_session(NulPolicy::Strip);
    t.send_bytes(b"BDAT 5 LAST\r\n");
    t.send_bytes(content);
    t.expect(&["250 2.0.0"]);
    assert_eq!(t.body, b"ab\r\n");
}

#[test]
fn nul_in_binarymime_is_kept() {
    let content: &[u8] = b"\x00\r\n\x00.\r\n";
    for policy in [NulPolicy::Reject, NulPolicy::Strip] {
        let mut t = Session::ehlo_with(|p| p.nul = policy);
        t.send("MAIL FROM:<a@example.com> BODY=BINARYMIME\r\nRCPT TO:<b@example.com>\r\n");
        t.send_bytes(format!("BDAT {} LAST\r\n", content.len()).as_bytes());
        t.send_bytes(content);
        t.expect(&["250 2.1.0", "250 2.1.5", "250 2.0.0"]);
        assert_eq!(t.body, content);
    }
}

// ---- Return-Path fields in the header section ----

/// The stored content of `content` sent with DATA (dot-stuffed by the test).
fn stored_via_data(content: &[u8]) -> Vec<u8> {
    let mut t = Session::ehlo();
    t.start_data();
    t.send_bytes(&crate::deliver::dotstuff::stuff_all(content));
    t.expect(&["250 2.0.0"]);
    t.body
}

#[test]
fn return_path_dropped_from_the_header_section_only() {
    let content: &[u8] = b"Return-Path: <forged@x>\r\nSubject: a\r\n\r\nReturn-Path: in body\r\n";
    assert_eq!(
        stored_via_data(content),
        b"Subject: a\r\n\r\nReturn-Path: in body\r\n"
    );
}

#[test]
fn folded_return_path_dropped_whole() {
    let content: &[u8] =
        b"Return-Path: <a\r\n b>\r\nSubject: a\r\n\tfolded subject\r\n\r\nbody\r\n";
    assert_eq!(
        stored_via_data(content),
        b"Subject: a\r\n\tfolded subject\r\n\r\nbody\r\n"
    );
}

#[test]
fn return_path_name_variants() {
    let content: &[u8] = b"From: x\r\nreturn-PATH: <a>\r\nRETURN-PATH \t: <b>\r\n\tmore\r\nReturn-Paths: kept\r\nX-Return-Path: kept\r\nReturn-Path-X: kept\r\nReturn: kept\r\nReturn-Path kept\r\n .cont\r\n\r\nx\r\n";
    assert_eq!(
        stored_via_data(content),
        b"From: x\r\nReturn-Paths: kept\r\nX-Return-Path: kept\r\nReturn-Path-X: kept\r\nReturn: kept\r\nReturn-Path kept\r\n .cont\r\n\r\nx\r\n"
    );
    // A field name with more white space than is held back is dropped too.
    let long = format!("Return-Path{}: <c>\r\nSubject: s\r\n\r\n", " ".repeat(60));
    assert_eq!(stored_via_data(long.as_bytes()), b"Subject: s\r\n\r\n");
    // The first line of the content, and a content of one unfinished line.
    assert_eq!(stored_via_data(b"Return-Path: <d>\r\n"), b"");
    assert_eq!(
        stored_via_data(b"\r\nReturn-Path: <e>\r\n"),
        b"\r\nReturn-Path: <e>\r\n"
    );
}

// ---- Authentication-Results fields claiming this host (mx.test) ----

#[test]
fn authentication_results_claiming_our_name_are_dropped() {
    let content: &[u8] = b"Authentication-Results: mx.test; spf=pass smtp.mailfrom=a@b\r\n\
AUTHENTICATION-RESULTS :  MX.TEST ; dkim=pass\r\n\tcontinued\r\n\
Authentication-Results: other.test; dkim=fail\r\n\
Authentication-Results: mx.test.evil; spf=fail\r\n\
Authentication-Results: mx.test\r\n\
Authentication-Results:\r\n mx.test; folded before the id\r\n\
Authentication-Results: (comment) mx.test; spf=pass\r\n\
Authentication-Results-X: mx.test; kept\r\n\
Subject: s\r\n\r\nAuthentication-Results: mx.test; in the body\r\n";
    assert_eq!(
        stored_via_data(content),
        b"Authentication-Results: other.test; dkim=fail\r\n\
Authentication-Results: mx.test.evil; spf=fail\r\n\
Authentication-Results-X: mx.test; kept\r\n\
Subject: s\r\n\r\nAuthentication-Results: mx.test; in the body\r\n"
    );
    // The content may end in the field.
    assert_eq!(stored_via_data(b"Authentication-Results: other.test"), b"Authentication-Results: other.test\r\n");
}

/// DATA `content` (ending in the final dot) fed in two pieces, split at
/// every offset: each time accepted and stored as `want`.
fn stored_split_at_every_offset(content: &[u8], want: &[u8]) {
    for split in 0..=content.len() {
        let mut t = Session::ehlo();
        t.start_data();
        t.send_bytes(&content[..split]);
        t.send_bytes(&content[split..]);
        t.expect(&["250 2.0.0"]);
        assert_eq!(t.body, want, "split at {split}");
    }
}

#[test]
fn authentication_results_split_across_two_feeds_at_every_offset() {
    let content: &[u8] = b"Authentication-Results: mx.test; spf=pass\r\n\tdkim=pass\r\nAuthentication-Results: peer.test; spf=fail\r\nSubject: a\r\n\r\nbody\r\n.\r\n";
    let want: &[u8] = b"Authentication-Results: peer.test; spf=fail\r\nSubject: a\r\n\r\nbody\r\n";
    stored_split_at_every_offset(content, want);
}

#[test]
fn return_path_split_across_two_feeds_at_every_offset() {
    let content: &[u8] = b"Return-Path: <forged@x>\r\nReturn-Path: <a\r\n b>\r\nSubject: a\r\nReturn-Pat\r\n\r\nReturn-Path: in body\r\n.\r\n";
    let want: &[u8] = b"Subject: a\r\nReturn-Pat\r\n\r\nReturn-Path: in body\r\n";
    stored_split_at_every_offset(content, want);
    let mut t = Session::ehlo();
    t.start_data();
    for b in content {
        t.send_bytes(std::slice::from_ref(b));
    }
    t.expect(&["250 2.0.0"]);
    assert_eq!(t.body, want);
}

#[test]
fn return_path_dropped_from_bdat_content() {
    let content: &[u8] = b"Return-Path: <f>\r\nSubject: a\r\n\r\nb";
    let mut t = Session::ehlo();
    t.start_bdat();
    // Chunk boundaries inside the name.
    t.send_bytes(b"BDAT 9\r\nReturn-Pa");
    t.send_bytes(format!("BDAT {} LAST\r\n", content.len() - 9).as_bytes());
    t.send_bytes(&content[9..]);
    t.expect(&["250 2.0.0", "250 2.0.0"]);
    assert_eq!(t.body, b"Subject: a\r\n\r\nb");
    // BDAT content ending inside a held line start keeps it.
    let mut t = Session::ehlo();
    t.start_bdat();
    t.send_bytes(b"BDAT 6 LAST\r\nReturn");
    t.expect(&["250 2.0.0"]);
    assert_eq!(t.body, b"Return");
}

#[test]
fn return_path_dropped_from_binarymime_header_section() {
    let content: &[u8] = b"Return-Path: <f>\r\nReturn-Path: <g>\n\tcont\nSubject: \x00\xff\r\r\n\r\n\x00Return-Path: body\r\nReturn-Path: body\r";
    let want: &[u8] = b"Subject: \x00\xff\r\r\n\r\n\x00Return-Path: body\r\nReturn-Path: body\r";
    for split in 0..=content.len() {
        let mut t = Session::ehlo();
        t.send("MAIL FROM:<a@example.com> BODY=BINARYMIME\r\nRCPT TO:<b@example.com>\r\n");
        t.send_bytes(format!("BDAT {split}\r\n").as_bytes());
        t.send_bytes(&content[..split]);
        t.send_bytes(format!("BDAT {} LAST\r\n", content.len() - split).as_bytes());
        t.send_bytes(&content[split..]);
        t.expect(&["250 2.1.0", "250 2.1.5", "250 2.0.0", "250 2.0.0"]);
        assert_eq!(t.body, want, "split at {split}");
    }
}

#[test]
fn return_path_filter_keeps_body_chunks_bounded() {
    let mut t = Session::ehlo_with(|p| {
        p.max_message_bytes = 1 << 20;
        p.max_text_line_bytes = 1 << 20;
    });
    t.start_bdat();
    // A header line start held back right where a chunk fills up.
    let mut content = vec![b'x'; BODY_CHUNK_BYTES_MAX - 5];
    content.extend_from_slice(b"\r\nReturn-Path-like: y\r\n\r\n");
    content.extend(std::iter::repeat_n(b'z', BODY_CHUNK_BYTES_MAX));
    t.send_bytes(format!("BDAT {} LAST\r\n", content.len()).as_bytes());
    t.send_bytes(&content);
    t.expect(&["250 2.0.0"]);
    assert_eq!(t.body, content);
}

// ---- command line limits and errors ----

#[test]
fn command_line_at_limit() {
    let mut t = Session::ehlo();
    let line = format!("NOOP {}\r\n", "n".repeat(512 - 7));
    assert_eq!(line.len(), 512);
    t.send(&line);
    t.expect(&["250 2.0.0"]);
}

#[test]
fn dsn_lines_may_be_longer() {
    let mut t = Session::ehlo();
    let orcpt = format!("rfc822;{}", "o".repeat(493));
    let line = format!("RCPT TO:<{}@example.com> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT={orcpt}\r\n", "r".repeat(64));
    assert!(line.len() > COMMAND_LINE_BYTES_MAX && line.len() <= PARAMETER_LINE_BYTES_MAX);
    t.send("MAIL FROM:<a@example.com>\r\n");
    t.send(&line);
    t.expect(&["250 2.1.0", "250 2.1.5"]);
    t.send(&format!("RCPT TO:<b@example.com> ORCPT=rfc822;{}\r\n", "o".repeat(PARAMETER_LINE_BYTES_MAX)));
    t.expect(&["500 5.5.2"]);
    t.send(&format!("NOOP {}\r\n", "n".repeat(COMMAND_LINE_BYTES_MAX)));
    t.expect(&["500 5.5.2"]);
}

#[test]
fn command_line_too_long_in_one_piece() {
    let mut t = Session::ehlo();
    t.send(&format!("NOOP {}\r\nNOOP\r\n", "n".repeat(512 - 6)));
    t.expect(&["500 5.5.2", "250 2.0.0"]);
}

#[test]
fn command_line_too_long_rest_never_interpreted() {
    let mut t = Session::ehlo();
    // The tail of the long line looks like a command; it must be discarded.
    let head = format!("NOOP {}", "n".repeat(600));
    t.send(&head);
    t.expect(&["500 5.5.2"]);
    t.send("QUIT\r\n");
    t.expect(&[]);
    assert!(!t.closed);
    t.send("NOOP\r\n");
    t.expect(&["250 2.0.0"]);
}

#[test]
fn endless_line_keeps_buffer_bounded() {
    let mut t = Session::ehlo_with(|p| p.max_errors = 100);
    t.send("X");
    for _ in 0..100 {
        t.send(&"x".repeat(4096));
        assert!(t.s.input.len() < COMMAND_LINE_BYTES_MAX + 4096);
    }
    t.expect(&["500 5.5.2"]);
    t.send("\r\nNOOP\r\n");
    t.expect(&["250 2.0.0"]);
}

#[test]
fn too_many_errors_closes() {
    let mut t = Session::ehlo();
    t.send("BAD1\r\nBAD2\r\nBAD3\r\nBAD4\r\nBAD5\r\nBAD6\r\nNOOP\r\n");
    t.expect(&[
        "500 5.5.1",
        "500 5.5.1",
        "500 5.5.1",
        "500 5.5.1",
        "500 5.5.1",
        "421 4.7.0",
    ]);
    assert!(t.closed);
}

/// Found by the smtp_server fuzz target: an unterminated line too long
/// that is one error too many answered 421 but asked for more input, so a
/// driver waited for the client until its timeout instead of closing.
#[test]
fn unterminated_long_line_that_is_one_error_too_many_closes_at_once() {
    let mut t = Session::ehlo();
    t.send("BAD1\r\nBAD2\r\nBAD3\r\nBAD4\r\nBAD5\r\n");
    t.expect(&["500 5.5.1", "500 5.5.1", "500 5.5.1", "500 5.5.1", "500 5.5.1"]);
    t.send(&"x".repeat(600));
    t.expect(&["421 4.7.0"]);
    assert!(t.closed);
}

#[test]
fn error_count_includes_sequence_and_syntax_errors() {
    let mut t = Session::with(|p| p.max_errors = 2);
    t.send("MAIL FROM:<a@example.com>\r\nEHLO\r\nRCPT TO:<b@example.com>\r\n");
    t.expect(&["503 5.5.1", "501 5.5.4", "421 4.7.0"]);
    assert!(t.closed);
}

// ---- timeouts and shutdown ----

#[test]
fn command_deadline_and_timeout() {
    let mut t = Session::ehlo();
    assert_eq!(t.s.deadline(), t.now + Duration::from_secs(300));
    let later = t.now + Duration::from_secs(10);
    t.now = later;
    t.send("NOOP\r\n");
    assert_eq!(t.s.deadline(), later + Duration::from_secs(300));
    t.s.on_timeout(t.s.deadline());
    t.run();
    t.expect(&["250 2.0.0", "421 4.4.2"]);
    assert!(t.closed);
}

#[test]
fn data_deadline_and_timeout_aborts_content() {
    let mut t = Session::ehlo();
    t.start_data();
    assert_eq!(t.s.deadline(), t.now + Duration::from_secs(600));
    t.send("partial\r\n");
    t.s.on_timeout(t.s.deadline());
    t.run();
    t.expect(&["421 4.4.2"]);
    t.expect_events(&[Ev::Aborted("421 4.4.2".into()), Ev::Close]);
}

#[test]
fn deadline_back_to_command_timeout_after_data() {
    let mut t = Session::ehlo();
    t.start_data();
    t.send("x\r\n.\r\n");
    assert_eq!(t.s.deadline(), t.now + Duration::from_secs(300));
}

#[test]
fn dribbled_command_line_times_out_from_the_start_of_the_wait() {
    let mut t = Session::ehlo_with(|p| p.command_timeout = Duration::from_secs(6));
    let waiting_since = t.now;
    let deadline = waiting_since + Duration::from_secs(6);
    assert_eq!(t.s.deadline(), deadline);
    // The client sends one octet every 2 s; the driver reads each one, or
    // fires the timeout when the deadline comes first.
    let first_byte_at = waiting_since + Duration::from_secs(2);
    let mut timed_out_at = None;
    for (i, b) in b"NOOP".iter().enumerate() {
        let at = first_byte_at + Duration::from_secs(2 * i as u64);
        if at >= t.s.deadline() {
            timed_out_at = Some(t.s.deadline());
            t.now = t.s.deadline();
            t.s.on_timeout(t.now);
            t.run();
            break;
        }
        t.now = at;
        t.send_bytes(std::slice::from_ref(b));
        assert_eq!(
            t.s.deadline(),
            deadline,
            "octet {i} of an unfinished line moved the deadline"
        );
    }
    t.expect(&["421 4.4.2"]);
    assert!(t.closed);
    let timed_out_at = timed_out_at.expect("timed out");
    assert!(timed_out_at <= first_byte_at + Duration::from_secs(6));
}

#[test]
fn a_whole_command_line_sets_the_next_deadline() {
    let mut t = Session::ehlo_with(|p| p.command_timeout = Duration::from_secs(6));
    let start = t.now;
    t.now = start + Duration::from_secs(1);
    t.send("NO");
    assert_eq!(t.s.deadline(), start + Duration::from_secs(6));
    t.now = start + Duration::from_secs(5);
    // The line ends, the next one has begun in the same read.
    t.send("OP\r\nNO");
    t.expect(&["250 2.0.0"]);
    assert_eq!(t.s.deadline(), start + Duration::from_secs(11));
    t.now = start + Duration::from_secs(9);
    t.send("O");
    assert_eq!(t.s.deadline(), start + Duration::from_secs(11));
    // An overlong line is one line too: its refusal does not reset the clock.
    t.send(&"x".repeat(600));
    t.expect(&["500 5.5.2"]);
    assert_eq!(t.s.deadline(), start + Duration::from_secs(11));
}

#[test]
fn dribbled_data_content_times_out() {
    let mut t = Session::ehlo_with(|p| p.data_timeout = Duration::from_secs(6));
    t.start_data();
    let start = t.now;
    let deadline = start + Duration::from_secs(6);
    assert_eq!(t.s.deadline(), deadline);
    for i in 1..=2u64 {
        t.now = start + Duration::from_secs(2 * i);
        t.send("x\r\n");
        assert_eq!(t.s.deadline(), deadline);
    }
    t.now = deadline;
    t.s.on_timeout(t.now);
    t.run();
    t.expect(&["421 4.4.2"]);
    t.expect_events(&[Ev::Aborted("421 4.4.2".into()), Ev::Close]);
}

#[test]
fn steady_data_flow_is_not_cut_off() {
    // 2 MiB at 16 KiB per second: far longer than data_timeout, each
    // 64 KiB block well within it.
    let mut t = Session::ehlo_with(|p| {
        p.data_timeout = Duration::from_secs(6);
        p.max_message_bytes = 4 << 20;
    });
    t.start_data();
    let line = format!("{}\r\n", "d".repeat(62));
    let read = line.repeat(16 * 1024 / line.len());
    let mut sent_bytes = 0u64;
    let mut deadline_moves = 0;
    while sent_bytes < 2 << 20 {
        t.now += Duration::from_secs(1);
        assert!(t.now < t.s.deadline(), "cut off after {sent_bytes} octets");
        let before = t.s.deadline();
        t.send(&read);
        sent_bytes += read.len() as u64;
        if t.s.deadline() != before {
            deadline_moves += 1;
            assert_eq!(t.s.deadline(), t.now + Duration::from_secs(6));
        }
    }
    t.send(".\r\n");
    t.expect(&["250 2.0.0"]);
    assert_eq!(t.body.len() as u64, sent_bytes);
    assert!(
        deadline_moves >= (sent_bytes / DATA_BLOCK_BYTES) as usize - 1,
        "{deadline_moves}"
    );
}

#[test]
fn bdat_chunk_deadline_is_set_by_the_command_not_by_dribbled_octets() {
    let mut t = Session::ehlo_with(|p| p.data_timeout = Duration::from_secs(6));
    t.start_bdat();
    let start = t.now;
    t.now = start + Duration::from_secs(1);
    t.send("BDAT 10\r\nab");
    assert_eq!(t.s.deadline(), start + Duration::from_secs(7));
    t.now = start + Duration::from_secs(3);
    t.send("cd");
    assert_eq!(t.s.deadline(), start + Duration::from_secs(7));
    t.now = start + Duration::from_secs(7);
    t.s.on_timeout(t.now);
    t.run();
    t.expect(&["421 4.4.2"]);
    t.expect_events(&[Ev::DataStart, Ev::Aborted("421 4.4.2".into()), Ev::Close]);
}

#[test]
fn shutdown_sends_421() {
    let mut t = Session::ehlo();
    t.s.shutdown();
    t.run();
    t.expect(&["421 4.3.2"]);
    assert!(t.closed);
}

#[test]
fn eof_during_content_aborts() {
    let mut t = Session::ehlo();
    t.start_data();
    t.send("partial");
    t.s.on_eof();
    t.run();
    t.expect(&[]);
    t.expect_events(&[Ev::Aborted("451 4.4.2".into()), Ev::Close]);
}

// ---- BDAT ----

#[test]
fn bdat_single_last_chunk() {
    let mut t = Session::ehlo();
    t.start_bdat();
    t.send("BDAT 12 LAST\r\nhello\r\nworld");
    t.expect(&["250 2.0.0"]);
    t.expect_events(&[Ev::DataStart, Ev::DataEnd]);
    assert_eq!(t.body, b"hello\r\nworld");
    assert!(!t.s.in_transaction());
}

#[test]
fn bdat_several_chunks() {
    let mut t = Session::ehlo();
    t.start_bdat();
    t.send("BDAT 7\r\nhello\r\nBDAT 7\r\nworld\r\nBDAT 0 LAST\r\n");
    t.expect(&["250 2.0.0", "250 2.0.0", "250 2.0.0"]);
    assert_eq!(t.body, b"hello\r\nworld\r\n");
    t.expect_events(&[Ev::DataStart, Ev::DataEnd]);
}

#[test]
fn bdat_chunk_split_across_feeds() {
    let mut t = Session::ehlo();
    t.start_bdat();
    t.send("BDAT 10 LAST\r\n01234");
    t.expect(&[]);
    t.send("567");
    t.expect(&[]);
    t.send("89NOOP\r\n");
    t.expect(&["250 2.0.0", "250 2.0.0"]);
    assert_eq!(t.body, b"0123456789");
}

#[test]
fn bdat_content_is_not_dot_stuffed_and_may_hold_commands() {
    let mut t = Session::ehlo();
    t.start_bdat();
    let content = "..x\r\n.\r\nQUIT\r\n";
    t.send(&format!("BDAT {} LAST\r\n{}", content.len(), content));
    t.expect(&["250 2.0.0"]);
    assert_eq!(t.body, content.as_bytes());
    assert!(!t.closed);
}

#[test]
fn bdat_without_transaction_consumes_octets() {
    let mut t = Session::ehlo();
    t.send("BDAT 6\r\nQUIT\r\nNOOP\r\n");
    t.expect(&["503 5.5.1", "250 2.0.0"]);
    assert!(!t.closed);
    assert!(t.events.is_empty());
}

#[test]
fn bdat_without_recipients_consumes_octets() {
    let mut t = Session::ehlo();
    t.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<unknown@example.com>\r\nBDAT 6 LAST\r\nQUIT\r\n");
    t.expect(&["250 2.1.0", "550 5.1.1", "503 5.5.1"]);
    assert!(!t.closed);
}

#[test]
fn bdat_zero_last_is_empty_message() {
    let mut t = Session::ehlo();
    t.start_bdat();
    t.send("BDAT 0 LAST\r\n");
    t.expect(&["250 2.0.0"]);
    t.expect_events(&[Ev::DataStart, Ev::DataEnd]);
    assert!(t.body.is_empty());
}

#[test]
fn data_after_bdat_refused() {
    let mut t = Session::ehlo();
    t.start_bdat();
    t.send("BDAT 3\r\nabcDATA\r\nRCPT TO:<c@example.com>\r\n");
    t.expect(&["250 2.0.0", "503 5.5.1", "503 5.5.1"]);
    assert!(t.s.in_transaction());
}

#[test]
fn bdat_syntax_errors() {
    let mut t = Session::ehlo();
    t.start_bdat();
    t.send("BDAT\r\nBDAT x\r\nBDAT -1\r\n");
    t.expect(&["501 5.5.4", "501 5.5.4", "501 5.5.4"]);
    // A known size with a bad flag: the octets are still consumed.
    t.send("BDAT 4 FIRST\r\nQUITNOOP\r\n");
    t.expect(&["501 5.5.4", "250 2.0.0"]);
    assert!(!t.closed);
}

#[test]
fn refused_chunk_fails_the_transaction() {
    let mut t = Session::ehlo();
    t.start_bdat();
    t.send("BDAT 3\r\nabcBDAT 3 FIRST\r\ndefBDAT 3 LAST\r\nghi");
    t.expect(&["250 2.0.0", "501 5.5.4", "503 5.5.1"]);
    t.expect_events(&[Ev::DataStart, Ev::Aborted("501 5.5.4".into())]);
    t.start_bdat();
    t.send("BDAT 3\r\nabcBDAT x\r\n");
    t.expect(&["250 2.0.0", "501 5.5.4"]);
    t.expect_events(&[Ev::DataStart, Ev::Aborted("501 5.5.4".into())]);
    assert!(!t.s.in_transaction());
}

#[test]
fn bdat_size_limit_aborts_at_chunk_end() {
    let mut t = Session::ehlo_with(|p| p.max_text_line_bytes = 2000);
    t.start_bdat();
    let chunk = "q".repeat(1001);
    t.send(&format!("BDAT 1001\r\n{chunk}BDAT 3 LAST\r\nabc"));
    t.expect(&["552 5.3.4", "503 5.5.1"]);
    t.expect_events(&[Ev::DataStart, Ev::Aborted("552 5.3.4".into())]);
    assert!(!t.s.in_transaction());
}

#[test]
fn bdat_bare_lf_rejected_at_last() {
    let mut t = Session::ehlo();
    t.start_bdat();
    t.send("BDAT 4 LAST\r\na\nb\n");
    t.expect(&["550 5.6.11"]);
}

#[test]
fn bdat_crlf_split_across_chunks_is_not_bare() {
    let mut t = Session::ehlo();
    t.start_bdat();
    t.send("BDAT 2\r\na\rBDAT 2 LAST\r\n\nb");
    t.expect(&["250 2.0.0", "250 2.0.0"]);
    assert_eq!(t.body, b"a\r\nb");
}

#[test]
fn bdat_trailing_cr_is_bare() {
    let mut t = Session::ehlo();
    t.start_bdat();
    t.send("BDAT 2 LAST\r\na\r");
    t.expect(&["550 5.6.11"]);
}

#[test]
fn bdat_normalize_policy() {
    let mut t = Session::ehlo_with(|p| p.bare_lf = BareLfPolicy::Normalize);
    t.start_bdat();
    t.send("BDAT 5 LAST\r\na\nb\rc");
    t.expect(&["250 2.0.0"]);
    assert_eq!(t.body, b"a\r\nb\r\nc");
}

#[test]
fn bdat_binarymime_passes_any_octet() {
    let mut t = Session::ehlo();
    t.send("MAIL FROM:<a@example.com> BODY=BINARYMIME\r\nRCPT TO:<b@example.com>\r\nDATA\r\n");
    t.expect(&["250 2.1.0", "250 2.1.5", "503 5.5.1"]);
    let content: &[u8] = b"\x00\n\r\xff.\r\n\n";
    t.send_bytes(format!("BDAT {} LAST\r\n", content.len()).as_bytes());
    t.send_bytes(content);
    t.expect(&["250 2.0.0"]);
    assert_eq!(t.body, content);
}

#[test]
fn bdat_one_byte_at_a_time() {
    let mut t = Session::ehlo();
    t.start_bdat();
    for b in b"BDAT 5\r\nab\r\ncBDAT 2 LAST\r\nde".iter() {
        t.send_bytes(std::slice::from_ref(b));
    }
    t.expect(&["250 2.0.0", "250 2.0.0"]);
    assert_eq!(t.body, b"ab\r\ncde");
}

#[test]
fn rset_between_chunks_aborts_content() {
    let mut t = Session::ehlo();
    t.start_bdat();
    t.send("BDAT 3\r\nabcRSET\r\n");
    t.expect(&["250 2.0.0", "250 2.0.0"]);
    t.expect_events(&[Ev::DataStart, Ev::Aborted("250 2.0.0".into())]);
    assert!(!t.s.in_transaction());
}

#[test]
fn quit_between_chunks_aborts_content() {
    let mut t = Session::ehlo();
    t.start_bdat();
    t.send("BDAT 3\r\nabcQUIT\r\n");
    t.expect(&["250 2.0.0", "221 2.0.0"]);
    t.expect_events(&[Ev::DataStart, Ev::Aborted("221 2.0.0".into()), Ev::Close]);
}

#[test]
fn bdat_deadline_is_data_timeout() {
    let mut t = Session::ehlo();
    t.start_bdat();
    t.send("BDAT 100\r\nabc");
    assert_eq!(t.s.deadline(), t.now + Duration::from_secs(600));
}

#[test]
fn huge_bdat_without_transaction_discards_in_bounded_memory() {
    let mut t = Session::ehlo();
    t.send("BDAT 1000000\r\n");
    let block = vec![b'x'; 65536];
    let mut sent = 0;
    while sent + block.len() <= 1_000_000 {
        t.send_bytes(&block);
        sent += block.len();
        assert!(t.s.input.len() <= block.len());
    }
    t.send_bytes(&vec![b'x'; 1_000_000 - sent]);
    t.send("NOOP\r\n");
    t.expect(&["503 5.5.1", "250 2.0.0"]);
}

// ---- robustness ----

/// A small deterministic PRNG (xorshift64*), so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_input_never_panics_and_stays_bounded() {
    const PIECES: &[&str] = &[
        "EHLO x\r\n",
        "HELO y\r\n",
        "MAIL FROM:<a@b.c>\r\n",
        "MAIL FROM:<> SIZE=5 BODY=BINARYMIME\r\n",
        "RCPT TO:<d@e.f>\r\n",
        "RCPT TO:<postmaster>\r\n",
        "DATA\r\n",
        "BDAT 5\r\n",
        "BDAT 3 LAST\r\n",
        "BDAT 0 LAST\r\n",
        "RSET\r\n",
        "NOOP\r\n",
        ".\r\n",
        "\r\n.\r\n",
        "\n.\n",
        "\r.\r",
        "..x\r\n",
        "\r",
        "\n",
        ".",
        "\u{e9}",
        "<\"q\\\"\"@[IPv6:::1]>",
        "MAIL FROM:<\u{e9}@\u{e9}.x> SMTPUTF8\r\n",
        "Return-Path: <x>\r\n",
        "return-path",
        " folded\r\n",
        "\0",
        "\0.\r\n",
        "NOOP\n",
    ];
    for seed in 1..200u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let lenient = seed % 2 == 0;
        let mut t = Session::ehlo_with(|p| {
            p.max_errors = 1000;
            if lenient {
                p.bare_lf = BareLfPolicy::Normalize;
                p.nul = NulPolicy::Strip;
            }
        });
        for _ in 0..200 {
            let mut chunk: Vec<u8> = Vec::new();
            for _ in 0..rng.below(8) {
                if rng.below(4) == 0 {
                    let n = rng.below(300);
                    chunk.extend((0..n).map(|_| rng.next() as u8));
                } else {
                    chunk.extend_from_slice(PIECES[rng.below(PIECES.len())].as_bytes());
                }
            }
            t.send_bytes(&chunk);
            assert!(t.s.input.len() < PARAMETER_LINE_BYTES_MAX, "seed {seed}");
            if t.closed {
                break;
            }
        }
    }
}

// ---- STARTTLS (RFC 3207) ----

fn tls_session() -> Session {
    Session::ehlo_with(|p| p.starttls = true)
}

#[test]
fn starttls_is_advertised_only_when_configured_and_not_yet_active() {
    let mut t = Session::new();
    t.send("EHLO client.test\r\n");
    assert!(!t.raw.contains("STARTTLS"));
    let mut t = Session::with(|p| p.starttls = true);
    t.send("EHLO client.test\r\n");
    assert!(
        t.raw.contains("250-STARTTLS\r\n") || t.raw.contains("250 STARTTLS\r\n"),
        "{}",
        t.raw
    );
    t.expect(&["250"]);
    t.send("STARTTLS\r\n");
    t.expect(&["220 2.0.0"]);
    assert_eq!(t.events.last(), Some(&Ev::StartTls));
    assert!(t.s.tls_active());
    let before = t.raw.len();
    t.send("EHLO client.test\r\n");
    t.expect(&["250"]);
    assert!(
        !t.raw[before..].contains("STARTTLS"),
        "not offered again: {}",
        &t.raw[before..]
    );
    t.send("STARTTLS\r\n");
    t.expect(&["503 5.5.1"]);
}

#[test]
fn starttls_resets_the_session() {
    let mut t = tls_session();
    t.send("MAIL FROM:<a@example.com>\r\n");
    t.expect(&["250 2.1.0"]);
    t.send("STARTTLS\r\n");
    t.expect(&["220 2.0.0"]);
    // No HELO and no transaction survive the handshake.
    t.send("RCPT TO:<b@example.com>\r\n");
    t.expect(&["503 5.5.1"]);
    t.send("MAIL FROM:<a@example.com>\r\n");
    t.expect(&["503 5.5.1"]);
    t.send("EHLO client.test\r\nMAIL FROM:<a@example.com>\r\n");
    t.expect(&["250", "250 2.1.0"]);
    assert_eq!(t.s.protocol(), "ESMTPS");
}

#[test]
fn commands_pipelined_after_starttls_are_discarded() {
    let mut t = tls_session();
    // An attacker in the path appends a command to the client's STARTTLS
    // (CVE-2011-0411): it must never run inside the TLS session.
    t.send("STARTTLS\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<victim@example.com>\r\n");
    t.expect(&["220 2.0.0"]);
    assert_eq!(t.events, vec![Ev::StartTls]);
    t.send("EHLO client.test\r\n");
    t.expect(&["250"]);
    t.send("RCPT TO:<b@example.com>\r\n");
    t.expect(&["503 5.5.1"]);
}

#[test]
fn starttls_with_arguments_or_during_content_is_refused() {
    let mut t = tls_session();
    t.send("STARTTLS now\r\n");
    t.expect(&["501 5.5.4"]);
    assert!(!t.s.tls_active());
    t.start_data();
    t.send("STARTTLS\r\n.\r\n");
    // Inside DATA, "STARTTLS" is message content.
    t.expect(&["250 2.0.0"]);
    assert!(t.body.starts_with(b"STARTTLS\r\n"));
    assert!(!t.s.tls_active());
}

// ---- memory held by a session ----

/// Upper bound on the machine's own size; an idle session adds its socket
/// and the driver's read buffer.
const SERVER_BYTES_MAX: usize = 320;
/// Upper bound on the heap an idle, greeted session keeps.
const IDLE_HEAP_BYTES_MAX: usize = 512;

#[test]
fn the_machine_is_small() {
    assert!(
        std::mem::size_of::<Server>() <= SERVER_BYTES_MAX,
        "size_of::<Server>() = {}",
        std::mem::size_of::<Server>()
    );
}

#[test]
fn an_idle_session_keeps_little_heap() {
    let mut t = Session::new();
    assert!(
        t.s.retained_heap_bytes() <= IDLE_HEAP_BYTES_MAX,
        "{}",
        t.s.retained_heap_bytes()
    );
    t.send("EHLO client.test\r\n");
    t.expect(&["250"]);
    let after_ehlo = t.s.retained_heap_bytes();
    assert!(
        after_ehlo <= IDLE_HEAP_BYTES_MAX,
        "after EHLO: {after_ehlo}"
    );
    // A big pipelined read, then idle again.
    t.send(&"NOOP\r\n".repeat(2500));
    assert_eq!(t.replies.len(), 2500);
    t.replies.clear();
    let after_burst = t.s.retained_heap_bytes();
    assert!(
        after_burst <= IDLE_HEAP_BYTES_MAX,
        "after a 15 KB read: {after_burst}"
    );
    // A whole transaction with a large message, then idle again.
    t.s.feed(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n");
    t.run();
    let line = format!("{}\r\n", "m".repeat(48));
    t.send(&line.repeat(19));
    t.send(".\r\n");
    t.expect(&["250 2.1.0", "250 2.1.5", "354", "250 2.0.0"]);
    let after_message = t.s.retained_heap_bytes();
    assert!(
        after_message <= IDLE_HEAP_BYTES_MAX,
        "after a message: {after_message}"
    );
    eprintln!(
        "size_of::<Server>() = {}, retained heap: after EHLO {after_ehlo}, after a 15 KB read {after_burst}, after a message {after_message}",
        std::mem::size_of::<Server>()
    );
}

// ---- replication between peers (XREPLICA, XREPLDONE) ----

#[test]
fn replication_is_offered_only_to_peers() {
    let mut t = Session::ehlo();
    assert!(!t.raw.contains("XREPLICA"));
    t.send("MAIL FROM:<a@example.com> XREPLICA=0006201A2B3C4D01\r\n");
    t.expect(&["555 5.5.4"]);
    t.send("XREPLDONE 0006201A2B3C4D01\r\n");
    t.expect(&["500 5.5.1"]);
    assert!(t.events.is_empty());
}

#[test]
fn a_peer_sends_replicas_and_completions() {
    let mut t = Session::new();
    t.s.offer_replicas();
    t.send("EHLO origin.test\r\n");
    assert!(t.raw.contains("250-XREPLICA\r\n") || t.raw.contains("250 XREPLICA\r\n"), "{}", t.raw);
    t.expect(&["250"]);
    t.events.clear();
    t.send("XREPLDONE 0006201A2B3C4D01 0006201A2B3C4D02\r\nXREPLDONE\r\nXREPLDONE 123\r\n");
    t.expect(&["250 2.0.0", "250 2.0.0", "501 5.5.4"]);
    t.expect_events(&[
        Ev::ReplicaDone(vec!["0006201A2B3C4D01".to_string(), "0006201A2B3C4D02".to_string()]),
        Ev::ReplicaDone(Vec::new()),
    ]);
    t.send("XREPLTAKEN 01\r\nXREPLTAKEN 1\r\n");
    assert!(t.raw.contains("250-2.0.0 0006201A2B3C4D01\r\n250 2.0.0 1 taken over\r\n"), "{}", t.raw);
    t.expect(&["250 2.0.0", "501 5.5.4"]);
    t.expect_events(&[Ev::ReplicaTaken(1)]);
    t.send("MAIL FROM:<a@example.com> XREPLICA=0006201A2B3C4D03\r\n");
    t.expect(&["250 2.1.0"]);
    assert_eq!(t.s.transaction().unwrap().params.replica_of.as_deref(), Some("0006201A2B3C4D03"));
    // Not inside a transaction.
    t.send("XREPLDONE 0006201A2B3C4D01\r\n");
    t.expect(&["503 5.5.1"]);
}

/// `strict_pipelining`: content before the 354, and commands pipelined
/// after HELO, get 554 5.5.0 and a close; pipelining after EHLO, and one
/// command at a time after HELO, go on as before.
#[test]
fn strict_pipelining_refuses_what_was_not_offered() {
    let strict = || {
        let mut t = Session::new();
        t.s.strict_pipelining();
        t
    };
    let mut t = strict();
    t.send("EHLO client.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n");
    t.expect(&["250", "250 2.1.0", "250 2.1.5"]);
    t.send("DATA\r\nSubject: too early\r\n\r\nbody\r\n.\r\n");
    t.expect(&["554 5.5.0"]);
    assert!(t.closed && t.s.pipelining_violated());

    let mut t = strict();
    t.send("HELO client.test\r\nMAIL FROM:<a@example.com>\r\n");
    t.expect(&["554 5.5.0"]);
    assert!(t.closed);

    let mut t = strict();
    t.send("HELO client.test\r\n");
    t.expect(&["250"]);
    t.send("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.com>\r\n");
    t.expect(&["554 5.5.0"]);

    let mut t = strict();
    t.send("HELO client.test\r\n");
    t.send("MAIL FROM:<a@example.com>\r\n");
    t.send("RCPT TO:<b@example.com>\r\n");
    t.send("DATA\r\n");
    t.send("Subject: one at a time\r\n\r\nbody\r\n.\r\nQUIT\r\n");
    t.expect(&["250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"]);
    assert!(!t.s.pipelining_violated());

    let mut lenient = Session::new();
    lenient.send("HELO client.test\r\nMAIL FROM:<a@example.com>\r\n");
    lenient.expect(&["250", "250 2.1.0"]);
}

// ---- AUTH (RFC 4954) ----

/// The password "secret" is right for "alice"; anything else gets 535.
fn auth_decider() -> Decider {
    Box::new(|e| match e {
        Event::Auth { credentials, .. } if credentials.user == "alice" && credentials.password.0 == "secret" => {
            Reply::new(235, Enhanced(2, 7, 0), "Authentication successful")
        }
        Event::Auth { .. } => Reply::new(535, Enhanced(5, 7, 8), "Authentication credentials invalid"),
        other => default_decider()(other),
    })
}

/// A submission session (AUTH required), after STARTTLS and a second EHLO.
fn submission_over_tls() -> Session {
    let mut t = Session::with(|p| p.starttls = true);
    t.s.offer_auth(true, false);
    t.decider = auth_decider();
    t.send("EHLO client.test\r\n");
    assert!(!t.raw.contains("AUTH"), "no AUTH offered before TLS: {}", t.raw);
    t.send("STARTTLS\r\n");
    t.send("EHLO client.test\r\n");
    t.expect(&["250", "220 2.0.0", "250"]);
    assert!(t.raw.contains("250-AUTH PLAIN LOGIN\r\n") || t.raw.contains("250 AUTH PLAIN LOGIN\r\n"), "{}", t.raw);
    t.events.clear();
    t
}

fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[test]
fn auth_before_tls_is_538_and_mail_before_auth_is_530() {
    let mut t = Session::with(|p| p.starttls = true);
    t.s.offer_auth(true, false);
    t.send("EHLO client.test\r\n");
    t.expect(&["250"]);
    t.send(&format!("AUTH PLAIN {}\r\n", b64("\0alice\0secret")));
    t.expect(&["538 5.7.11"]);
    t.send("MAIL FROM:<a@example.com>\r\n");
    t.expect(&["530 5.7.0"]);
    assert!(t.events.iter().all(|e| !matches!(e, Ev::Auth(..) | Ev::Mail(_))), "{:?}", t.events);
}

#[test]
fn auth_plain_with_initial_response_authenticates_and_marks_the_protocol() {
    let mut t = submission_over_tls();
    t.send(&format!("AUTH PLAIN {}\r\n", b64("\0alice\0secret")));
    t.expect(&["235 2.7.0"]);
    t.expect_events(&[Ev::Auth("PLAIN", String::new(), "alice".into(), "secret".into())]);
    assert_eq!(t.s.authenticated(), Some("alice"));
    t.send("AUTH PLAIN =\r\n");
    t.expect(&["503 5.5.1"]);
    t.send("MAIL FROM:<alice@example.com> AUTH=<>\r\nRCPT TO:<b@example.com>\r\n");
    t.expect(&["250 2.1.0", "250 2.1.5"]);
    assert_eq!(t.s.transaction().map(|x| x.protocol), Some("ESMTPSA"));
    assert_eq!(t.s.protocol(), "ESMTPSA");
}

#[test]
fn auth_plain_and_login_by_challenge_and_failures() {
    let mut t = submission_over_tls();
    t.send("AUTH PLAIN\r\n");
    assert!(t.raw.ends_with("334 \r\n"), "{}", t.raw);
    t.send(&format!("{}\r\n", b64("\0alice\0wrong")));
    t.expect(&["334", "535 5.7.8"]);
    assert_eq!(t.s.authenticated(), None);
    t.send("AUTH LOGIN\r\n");
    t.send(&format!("{}\r\n", b64("alice")));
    t.send(&format!("{}\r\n", b64("secret")));
    t.expect(&["334", "334", "235 2.7.0"]);
    assert!(t.raw.contains("334 VXNlcm5hbWU6\r\n") && t.raw.contains("334 UGFzc3dvcmQ6\r\n"));
    assert_eq!(t.events.last(), Some(&Ev::Auth("LOGIN", String::new(), "alice".into(), "secret".into())));
    assert_eq!(t.s.authenticated(), Some("alice"));
}

#[test]
fn auth_exchange_errors_cancel_and_421_closes() {
    let mut t = submission_over_tls();
    t.send("AUTH CRAM-MD5\r\n");
    t.expect(&["504 5.5.4"]);
    t.send("AUTH LOGIN\r\n*\r\n");
    t.expect(&["334", "501 5.0.0"]);
    t.send("AUTH PLAIN !!!notbase64\r\n");
    t.expect(&["501 5.5.2"]);
    t.send(&format!("AUTH PLAIN {}\r\n", b64("no-nul-at-all")));
    t.expect(&["501 5.5.2"]);
    // Back to commands: the machine is not stuck in the exchange.
    t.send("NOOP\r\n");
    t.expect(&["250 2.0.0"]);
    t.decider = Box::new(|_| Reply::new(421, Enhanced(4, 7, 0), "too many failures"));
    t.send(&format!("AUTH PLAIN {}\r\n", b64("\0alice\0x")));
    t.expect(&["421 4.7.0"]);
    assert!(t.closed);
}

#[test]
fn auth_line_too_long_and_password_not_in_debug_output() {
    let mut t = submission_over_tls();
    t.send("AUTH PLAIN\r\n");
    t.send(&"A".repeat(5000));
    t.send("\r\nNOOP\r\n");
    t.expect(&["334", "500 5.5.6", "250 2.0.0"]);
    let c = Credentials { authzid: String::new(), user: "u".into(), password: Password("hunter2".into()) };
    assert!(!format!("{c:?}").contains("hunter2"));
}

#[test]
fn mail_auth_parameter_is_checked_and_refused_without_auth_offered() {
    let mut t = submission_over_tls();
    t.send(&format!("AUTH PLAIN {}\r\n", b64("\0alice\0secret")));
    t.expect(&["235 2.7.0"]);
    t.send("MAIL FROM:<a@example.com> AUTH=a+2Bb@example.com SIZE=10\r\n");
    t.expect(&["250 2.1.0"]);
    t.send("RSET\r\nMAIL FROM:<a@example.com> AUTH=bad+zz\r\n");
    t.expect(&["250 2.0.0", "501 5.5.4"]);
    // A listener without AUTH knows no such parameter.
    let mut plain = Session::ehlo();
    plain.send("MAIL FROM:<a@example.com> AUTH=<>\r\n");
    plain.expect(&["555 5.5.4"]);
    plain.send("AUTH PLAIN =\r\n");
    plain.expect(&["500 5.5.1"]);
}

#[test]
fn implicit_tls_offers_auth_at_once_and_a_handshake_forgets_the_login() {
    let mut t = Session::with(|p| p.starttls = false);
    t.s.offer_auth(true, false);
    t.s.tls_from_start();
    t.decider = auth_decider();
    t.send("EHLO client.test\r\n");
    assert!(t.raw.contains("AUTH PLAIN LOGIN") && !t.raw.contains("STARTTLS"), "{}", t.raw);
    t.send(&format!("AUTH PLAIN {}\r\n", b64("\0alice\0secret")));
    t.expect(&["250", "235 2.7.0"]);
    // An mx listener that offers AUTH does not require it.
    let mut mx = Session::with(|p| p.starttls = true);
    mx.s.offer_auth(false, false);
    mx.send("EHLO c\r\nMAIL FROM:<a@example.com>\r\n");
    mx.expect(&["250", "250 2.1.0"]);
}

#[test]
fn scram_messages_go_to_the_driver_until_its_235() {
    let mut t = submission_over_tls();
    assert!(!t.raw.contains("SCRAM"), "not offered unless asked for");
    let mut t2 = Session::with(|p| p.starttls = false);
    t2.s.offer_auth(true, false);
    t2.s.offer_scram();
    t2.s.tls_from_start();
    t2.send("EHLO client.test\r\n");
    assert!(t2.raw.contains("AUTH PLAIN LOGIN SCRAM-SHA-256"), "{}", t2.raw);
    t.s.offer_scram();
    // The driver: a 334 to the first two messages, 235 to the empty third.
    t.decider = Box::new(|e| match e {
        Event::AuthStep { data, .. } if data.is_empty() => Reply::new(235, Enhanced(2, 7, 0), "ok"),
        Event::AuthStep { .. } => Reply { code: 334, enhanced: None, lines: vec!["c2VydmVy".into()] },
        _ => Reply::new(250, Enhanced(2, 0, 0), "ok"),
    });
    t.send(&format!("AUTH SCRAM-SHA-256 {}\r\n", b64("n,,n=u,r=abc")));
    t.send(&format!("{}\r\n", b64("c=biws,r=abcdef,p=xyz")));
    t.send("=\r\n");
    t.expect(&["334", "334", "235 2.7.0"]);
    assert!(t.raw.contains("334 c2VydmVy\r\n"));
    assert_eq!(
        t.events,
        vec![
            Ev::AuthStep(true, b"n,,n=u,r=abc".to_vec()),
            Ev::AuthStep(false, b"c=biws,r=abcdef,p=xyz".to_vec()),
            Ev::AuthStep(false, Vec::new()),
        ]
    );
    assert_eq!(t.s.authenticated(), Some("scram-user"));
    // A refusal ends the exchange: the next line is a command again.
    let mut t = submission_over_tls();
    t.s.offer_scram();
    t.decider = Box::new(|_| Reply::new(535, Enhanced(5, 7, 8), "no"));
    t.send("AUTH SCRAM-SHA-256\r\n");
    t.send(&format!("{}\r\n", b64("n,,n=u,r=abc")));
    t.send("NOOP\r\n");
    t.expect(&["334", "535 5.7.8", "250 2.0.0"]);
    assert_eq!(t.s.authenticated(), None);
}
