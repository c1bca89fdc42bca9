//! SpamAssassin's spamd as a content scanner: the message sent with the
//! SPAMC/1.5 `SYMBOLS` command, spamd's score and rule names read back and
//! turned into a verdict (refuse the spam, or accept it with
//! `X-Spam-Status` and `X-Spam-Score` headers). Also the pieces the
//! network scanners share: connecting to a `ScannerAddress`, sending the
//! content checked against its stored size, reading a bounded reply.
//!
//! Place in the pipeline: one scanner kind of the scanning stage at the
//! final dot (`crate::scan`), run on the shard's executor. The stage
//! bounds how many scans run at once and applies the time limit; a scan
//! here only refuses to wait past the peer's end (an early close is an
//! error, never a hang) and never holds the whole message in memory.
//!
//! The request (spamc's): `SYMBOLS SPAMC/1.5\r\nContent-length: <size>\r\n`,
//! `User: <name>\r\n` when configured, `\r\n`, then exactly `<size>` octets
//! of content. What spamd 4.0.1 (Debian 12, shipped rules, `-L -x`)
//! answers, byte for byte:
//!
//! ```text
//! GTUBE:  SPAMD/1.1 0 EX_OK\r\nContent-length: 68\r\nSpam: True ; 1003.3 / 5.0\r\n\r\n
//!         GTUBE,MISSING_DATE,MISSING_MID,NO_RECEIVED,NO_RELAYS,TVD_SPACE_RATIO
//! clean:  SPAMD/1.1 0 EX_OK\r\nContent-length: 46\r\nSpam: False ; 3.3 / 5.0\r\n\r\n
//!         MISSING_DATE,MISSING_MID,NO_RECEIVED,NO_RELAYS
//! error:  SPAMD/1.0 76 Bad header line: (Content-Length mismatch: Expected 100 bytes, got 5 bytes)\r\n
//! ```
//!
//! (the rule names follow the blank line without a line end; spamd then
//! closes the connection). A status other than 0 (`EX_OK`) or a reply of
//! another shape is an `Err` for the scanning stage to act on.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpStream, UnixStream};

use crate::scan::content::{Chunks, Message, ScannerAddress, Verdict};
use crate::tls::Stream;

/// The longest reply read from spamd (status line, headers, rule names).
pub const MAX_REPLY_BYTES: usize = 64 * 1024;
/// The longest rule list in `X-Spam-Status` (`tests=...`); a longer one
/// ends with `,...`.
pub const MAX_HEADER_TESTS_BYTES: usize = 512;
/// The longest rule list in a refusal's reason (it goes into a 550 reply).
pub const MAX_REASON_TESTS_BYTES: usize = 160;
/// The longest `User:` name sent.
pub const MAX_USER_BYTES: usize = 64;

/// One spamd scanner.
#[derive(Clone, Debug, PartialEq)]
pub struct SpamdParams {
    pub address: ScannerAddress,
    /// Refuse a message scoring at least this; below it, accept with the
    /// headers whatever spamd's verdict. `None`: refuse what spamd calls
    /// spam (its `required_score`).
    pub reject_score: Option<f64>,
    /// The user whose preferences spamd applies (`User:`); `None` sends
    /// none and spamd uses its own.
    pub user: Option<String>,
}

/// Whether `user` can be sent as spamd's `User:` header: 1 to
/// `MAX_USER_BYTES` octets of letters, digits and `._@+-`.
pub fn check_user(user: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._@+-".contains(c);
    if user.is_empty() || user.len() > MAX_USER_BYTES || !user.chars().all(allowed) {
        return Err(format!("bad spamd user {user:?}: 1 to {MAX_USER_BYTES} letters, digits and the characters ._@+-"));
    }
    Ok(())
}

/// Scans `message` with the spamd at `params.address`. `Err` when spamd
/// cannot be reached, answers with an error, or answers something else
/// than a SPAMC/1.5 reply.
pub async fn scan(params: &SpamdParams, message: Message<'_>) -> Result<Verdict, String> {
    let (reply, eof) = exchange(params, message).await.map_err(|e| format!("spamd {}: {e}", params.address))?;
    let report = parse_reply(&reply, eof).map_err(|e| format!("spamd {}: {e}", params.address))?;
    Ok(verdict(params, &report))
}

/// Sends the request and the content; the reply's bytes, and whether the
/// connection ended (rather than the reply being complete).
async fn exchange(params: &SpamdParams, message: Message<'_>) -> Result<(Vec<u8>, bool), String> {
    let mut request = format!("SYMBOLS SPAMC/1.5\r\nContent-length: {}\r\n", message.size_bytes());
    if let Some(user) = &params.user {
        check_user(user)?;
        request.push_str(&format!("User: {user}\r\n"));
    }
    request.push_str("\r\n");
    let mut stream = connect(&params.address).await.map_err(|e| format!("connect: {e}"))?;
    let sent = async {
        stream.write_all(request.as_bytes()).await.map_err(Failure::Write)?;
        let mut content = Content::new(&message);
        let result = async {
            while let Some(chunk) = content.next().await? {
                stream.write_all(&chunk).await.map_err(Failure::Write)?;
            }
            Ok(())
        }
        .await;
        content.close().await;
        result
    }
    .await;
    finish(&mut stream, sent, MAX_REPLY_BYTES, reply_complete).await
}

/// Why sending a request stopped.
pub(super) enum Failure {
    /// The content could not be read or is not the size stored.
    Content(String),
    /// The peer stopped taking it; it may have answered why.
    Write(io::Error),
}

/// Reads the reply to a request sent with outcome `sent`: after a write
/// error, what the peer answered before closing (a complete reply, e.g.
/// a size limit), else the write error.
pub(super) async fn finish(
    stream: &mut Stream,
    sent: Result<(), Failure>,
    max_bytes: usize,
    complete: impl Fn(&[u8]) -> bool,
) -> Result<(Vec<u8>, bool), String> {
    match sent {
        Ok(()) => read_reply(stream, max_bytes, &complete).await,
        Err(Failure::Content(e)) => Err(e),
        Err(Failure::Write(e)) => match read_reply(stream, max_bytes, &complete).await {
            Ok((reply, _)) if complete(&reply) => Ok((reply, false)),
            _ => Err(format!("write: {e}")),
        },
    }
}

/// Connects to a scanner: a unix socket, or TCP to an IP address and port
/// or to a host name, resolved on the blocking pool (never on the shard's
/// executor) and tried address by address.
pub(super) async fn connect(address: &ScannerAddress) -> io::Result<Stream> {
    let hostport = match address {
        ScannerAddress::Unix(path) => {
            return UnixStream::connect(path).await.map(Stream::Unix).map_err(io::Error::from)
        }
        ScannerAddress::Tcp(hostport) => hostport,
    };
    let addrs: Vec<SocketAddr> = match hostport.parse::<SocketAddr>() {
        Ok(addr) => vec![addr],
        Err(_) => {
            let name = hostport.clone();
            glommio::executor()
                .spawn_blocking(move || name.to_socket_addrs().map(|addrs| addrs.take(16).collect()))
                .await?
        }
    };
    let mut last = io::Error::other(format!("{hostport} has no address"));
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(tcp) => return Ok(Stream::Plain(tcp)),
            Err(e) => last = io::Error::from(e),
        }
    }
    Err(last)
}

/// A message's content a chunk at a time, checked against its stored
/// size: a scanner told the size up front must get exactly that many
/// octets, and one that is not must not be sent more than was stored.
pub(super) struct Content<'a> {
    chunks: Chunks<'a>,
    size_bytes: u64,
    read_bytes: u64,
}

impl<'a> Content<'a> {
    pub(super) fn new(message: &'a Message<'_>) -> Content<'a> {
        Content { chunks: message.chunks(), size_bytes: message.size_bytes(), read_bytes: 0 }
    }

    /// The next chunk (at most `CHUNK_BYTES`), `None` after the last.
    pub(super) async fn next(&mut self) -> Result<Option<Vec<u8>>, Failure> {
        let chunk = self.chunks.next().await.map_err(|e| Failure::Content(format!("read the message: {e}")))?;
        match chunk {
            Some(chunk) => {
                self.read_bytes += chunk.len() as u64;
                if self.read_bytes > self.size_bytes {
                    return Err(self.wrong_size());
                }
                Ok(Some(chunk))
            }
            None if self.read_bytes != self.size_bytes => Err(self.wrong_size()),
            None => Ok(None),
        }
    }

    fn wrong_size(&self) -> Failure {
        Failure::Content(match self.read_bytes > self.size_bytes {
            true => format!("the message is longer than the {} bytes its envelope says", self.size_bytes),
            false => format!("the message is {} bytes, its envelope says {}", self.read_bytes, self.size_bytes),
        })
    }

    pub(super) async fn close(self) {
        self.chunks.close().await;
    }
}

/// Reads until `complete` says the reply is whole, the peer closes (the
/// flag is then true), or `max_bytes` have come (an error).
pub(super) async fn read_reply(
    stream: &mut Stream,
    max_bytes: usize,
    complete: &impl Fn(&[u8]) -> bool,
) -> Result<(Vec<u8>, bool), String> {
    let mut reply = Vec::new();
    let mut buf = vec![0u8; 4096];
    while !complete(&reply) {
        let n = stream.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Ok((reply, true));
        }
        if reply.len() + n > max_bytes {
            return Err(format!("reply longer than {max_bytes} bytes"));
        }
        reply.extend_from_slice(&buf[..n]);
    }
    Ok((reply, false))
}

/// `bytes` as text for an error message: printable ASCII, other octets as
/// `\xNN`, at most `max_chars` characters (then `...`).
pub(super) fn printable(bytes: &[u8], max_chars: usize) -> String {
    let mut text = String::new();
    for &b in bytes {
        if text.len() >= max_chars {
            text.push_str("...");
            break;
        }
        match b {
            b' '..=b'~' => text.push(b as char),
            _ => text.push_str(&format!("\\x{b:02x}")),
        }
    }
    text
}

/// What spamd said of a message.
#[derive(Debug, PartialEq)]
struct Report {
    spam: bool,
    /// The score and the threshold as spamd wrote them ("1003.3", "5.0").
    score: String,
    score_value: f64,
    required: String,
    /// Rule names (letters, digits, `_`), in spamd's order.
    tests: Vec<String>,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Whether a reply is whole: an error status line, or the headers and as
/// many octets as their Content-length says. Anything else that is not a
/// SPAMD status line is complete as soon as its first line is (it is an
/// error whatever follows).
fn reply_complete(reply: &[u8]) -> bool {
    let Some(line_end) = find(reply, b"\r\n") else { return false };
    match status(&reply[..line_end]) {
        Ok(0) => {}
        _ => return true,
    }
    let Some(head_end) = find(reply, b"\r\n\r\n") else { return false };
    let headers = String::from_utf8_lossy(&reply[line_end + 2..head_end]);
    match content_length(&headers) {
        Some(Ok(length)) => reply.len() - (head_end + 4) >= length,
        Some(Err(_)) => true,
        None => false,
    }
}

/// The code of a status line `SPAMD/1.1 0 EX_OK`.
fn status(line: &[u8]) -> Result<u32, String> {
    let bad = || format!("not a spamd reply: {:?}", printable(line, 120));
    let text = std::str::from_utf8(line).map_err(|_| bad())?;
    let mut words = text.split(' ');
    let (Some(protocol), Some(code)) = (words.next(), words.next()) else { return Err(bad()) };
    if !protocol.starts_with("SPAMD/") {
        return Err(bad());
    }
    code.parse::<u32>().map_err(|_| bad())
}

/// The value of the Content-length header among `headers` (CRLF-separated).
fn content_length(headers: &str) -> Option<Result<usize, String>> {
    let value = header(headers, "content-length")?;
    Some(value.parse::<usize>().map_err(|_| format!("bad Content-length {:?}", printable(value.as_bytes(), 40))))
}

fn header<'h>(headers: &'h str, name: &str) -> Option<&'h str> {
    headers.split("\r\n").find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// A score as spamd writes it ("-0.1", "1003.3"): the text and its value.
fn score(text: &str) -> Result<(String, f64), String> {
    let value = text.parse::<f64>().ok().filter(|v| v.is_finite());
    match value {
        Some(value) if text.len() <= 16 && text.chars().all(|c| c.is_ascii_digit() || "+-.".contains(c)) => {
            Ok((text.to_string(), value))
        }
        _ => Err(format!("bad score {:?}", printable(text.as_bytes(), 40))),
    }
}

/// Parses a whole reply (`eof`: the connection ended after it).
fn parse_reply(reply: &[u8], eof: bool) -> Result<Report, String> {
    let Some(line_end) = find(reply, b"\r\n") else {
        return Err(match reply.is_empty() {
            true => "connection closed without a reply".to_string(),
            false => format!("reply without a line end: {:?}", printable(reply, 120)),
        });
    };
    let code = status(&reply[..line_end])?;
    if code != 0 {
        return Err(format!("spamd answered {:?}", printable(&reply[..line_end], 200)));
    }
    let Some(head_end) = find(reply, b"\r\n\r\n") else {
        return Err("connection closed within the reply's headers".to_string());
    };
    let headers = std::str::from_utf8(&reply[line_end + 2..head_end])
        .map_err(|_| format!("reply headers not text: {:?}", printable(&reply[..head_end], 200)))?;
    let mut body = &reply[head_end + 4..];
    match content_length(headers) {
        Some(Ok(length)) if body.len() >= length => body = &body[..length],
        Some(Ok(length)) => {
            return Err(format!("connection closed {} bytes into a {length}-byte reply body", body.len()));
        }
        Some(Err(e)) => return Err(e),
        None if eof => {}
        None => return Err("reply without Content-length".to_string()),
    }
    let Some(spam) = header(headers, "spam") else {
        return Err(format!("reply without a Spam header: {:?}", printable(headers.as_bytes(), 200)));
    };
    // "True ; 1003.3 / 5.0"
    let bad = || format!("bad Spam header {:?}", printable(spam.as_bytes(), 80));
    let (flag, scores) = spam.split_once(';').ok_or_else(bad)?;
    let (got, required) = scores.split_once('/').ok_or_else(bad)?;
    let spam = match flag.trim() {
        f if f.eq_ignore_ascii_case("true") || f.eq_ignore_ascii_case("yes") => true,
        f if f.eq_ignore_ascii_case("false") || f.eq_ignore_ascii_case("no") => false,
        _ => return Err(bad()),
    };
    let (score, score_value) = score(got.trim())?;
    let (required, _) = self::score(required.trim())?;
    let tests = String::from_utf8_lossy(body)
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .map(str::to_string)
        .collect();
    Ok(Report { spam, score, score_value, required, tests })
}

/// Rule names joined with commas, at most `max_bytes` long: those that do
/// not fit are replaced by `...`.
fn join_tests(tests: &[String], max_bytes: usize) -> String {
    let mut out = String::new();
    for (i, test) in tests.iter().enumerate() {
        let comma = usize::from(!out.is_empty());
        let room = if i + 1 == tests.len() { 0 } else { 4 };
        if out.len() + comma + test.len() + room > max_bytes {
            out.push_str(if out.is_empty() { "..." } else { ",..." });
            break;
        }
        if comma == 1 {
            out.push(',');
        }
        out.push_str(test);
    }
    out
}

fn verdict(params: &SpamdParams, report: &Report) -> Verdict {
    let refuse = match params.reject_score {
        Some(limit) => report.score_value >= limit,
        None => report.spam,
    };
    let score = Some(report.score.clone());
    if refuse {
        let mut reason = format!("spam (score {} / {}", report.score, report.required);
        if !report.tests.is_empty() {
            reason.push_str(&format!(": {}", join_tests(&report.tests, MAX_REASON_TESTS_BYTES)));
        }
        reason.push(')');
        return Verdict::Reject { reason, score };
    }
    let mut status = format!(
        "X-Spam-Status: {}, score={} required={}",
        if report.spam { "Yes" } else { "No" },
        report.score,
        report.required
    );
    if !report.tests.is_empty() {
        status.push_str(&format!(" tests={}", join_tests(&report.tests, MAX_HEADER_TESTS_BYTES)));
    }
    Verdict::Accept { headers: vec![status, format!("X-Spam-Score: {}", report.score)], score }
}

#[cfg(test)]
pub(super) mod tests {
    use std::io::{Read, Write};
    use std::thread::JoinHandle;
    use std::time::Duration;

    use super::*;
    use crate::queue::{Body, Envelope, StoredBody};
    use crate::scan::content::CHUNK_BYTES;
    use crate::testing;

    pub(crate) trait Conn: Read + Write + Send {
        /// Ends the peer's side of the conversation: the client reads EOF.
        fn shut_write(&self);
    }
    impl Conn for std::net::TcpStream {
        fn shut_write(&self) {
            let _ = self.shutdown(std::net::Shutdown::Write);
        }
    }
    impl Conn for std::os::unix::net::UnixStream {
        fn shut_write(&self) {
            let _ = self.shutdown(std::net::Shutdown::Write);
        }
    }

    /// A one-connection peer on 127.0.0.1 (or a unix socket) run by
    /// `serve` on its own thread; what it returns comes back by the handle.
    pub(crate) fn listen<T: Send + 'static>(
        unix: bool,
        serve: impl FnOnce(&mut dyn Conn) -> T + Send + 'static,
    ) -> (ScannerAddress, JoinHandle<T>) {
        let timeout = Some(Duration::from_secs(10));
        if unix {
            let path = testing::tempdir("scanner").join("socket");
            let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
            let handle = std::thread::spawn(move || {
                let (mut conn, _) = listener.accept().unwrap();
                conn.set_read_timeout(timeout).unwrap();
                serve(&mut conn)
            });
            return (ScannerAddress::Unix(path), handle);
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = ScannerAddress::Tcp(listener.local_addr().unwrap().to_string());
        let handle = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(timeout).unwrap();
            serve(&mut conn)
        });
        (address, handle)
    }

    /// An envelope whose content is `bytes`, inline.
    pub(crate) fn inline(bytes: &[u8]) -> Envelope {
        let mut env = testing::envelope("00000000000000A1", &["rcpt@example.com"], 0);
        env.body = Body::Inline(bytes.into());
        env.size_bytes = bytes.len() as u64;
        env
    }

    /// An envelope whose content is `bytes`, in a body file.
    pub(crate) fn in_file(bytes: &[u8]) -> (Envelope, StoredBody) {
        let path = testing::tempdir("scanner-body").join("body-00000000000000A1");
        std::fs::write(&path, bytes).unwrap();
        let mut env = inline(b"");
        env.body = Body::File { size_bytes: bytes.len() as u64, checksum: 0 };
        env.size_bytes = bytes.len() as u64;
        (env, StoredBody::file(&path, bytes.len() as u64))
    }

    /// Content of `len` bytes in CRLF lines, a different pattern per line.
    pub(crate) fn content(len: usize) -> Vec<u8> {
        let mut out = b"Subject: big\r\n\r\n".to_vec();
        let mut line = 0u32;
        while out.len() < len {
            out.extend_from_slice(format!("line {line} {}\r\n", "x".repeat((line % 70) as usize)).as_bytes());
            line += 1;
        }
        out.truncate(len);
        out
    }

    /// What a fake scanner received: the request's head (up to the blank
    /// line), the octets its length header announced, and anything beyond.
    #[derive(Debug)]
    pub(crate) struct Request {
        pub head: String,
        pub content: Vec<u8>,
        pub extra: Vec<u8>,
    }

    /// A one-request peer (spamd, rspamd) that reads the head, then as many
    /// octets as its `length_header` line says, answers `reply`, ends its
    /// side, and keeps whatever the client sends after.
    pub(crate) fn fake_peer(
        unix: bool,
        length_header: &'static str,
        reply: Vec<u8>,
    ) -> (ScannerAddress, JoinHandle<Request>) {
        listen(unix, move |conn| {
            let mut head = Vec::new();
            let mut byte = [0u8];
            while !head.ends_with(b"\r\n\r\n") && head.len() < 100_000 {
                match conn.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            let head = String::from_utf8(head).unwrap();
            let length = head
                .split("\r\n")
                .find_map(|line| line.strip_prefix(length_header))
                .map_or(0, |v| v.parse::<usize>().unwrap());
            let mut content = Vec::new();
            let _ = (&mut *conn).take(length as u64).read_to_end(&mut content);
            let _ = conn.write_all(&reply);
            conn.shut_write();
            let mut extra = Vec::new();
            let _ = conn.read_to_end(&mut extra);
            Request { head, content, extra }
        })
    }

    fn fake_spamd(unix: bool, reply: &'static [u8]) -> (ScannerAddress, JoinHandle<Request>) {
        fake_peer(unix, "Content-length: ", reply.to_vec())
    }

    fn params(address: ScannerAddress, reject_score: Option<f64>, user: Option<&str>) -> SpamdParams {
        SpamdParams { address, reject_score, user: user.map(str::to_string) }
    }

    fn scan_inline(params: SpamdParams, bytes: &'static [u8]) -> Result<Verdict, String> {
        let (tx, rx) = std::sync::mpsc::channel();
        testing::run(move || {
            Box::pin(async move {
                let env = inline(bytes);
                let _ = tx.send(scan(&params, Message { env: &env, stored: &StoredBody::default() }).await);
            })
        });
        rx.recv().unwrap()
    }

    const GTUBE_MESSAGE: &[u8] = b"Subject: test\r\nFrom: a@example.org\r\nTo: b@example.org\r\n\r\n\
        XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r\n";
    const GTUBE_REPLY: &[u8] = b"SPAMD/1.1 0 EX_OK\r\nContent-length: 68\r\nSpam: True ; 1003.3 / 5.0\r\n\r\n\
        GTUBE,MISSING_DATE,MISSING_MID,NO_RECEIVED,NO_RELAYS,TVD_SPACE_RATIO";
    const CLEAN_REPLY: &[u8] = b"SPAMD/1.1 0 EX_OK\r\nContent-length: 46\r\nSpam: False ; 3.3 / 5.0\r\n\r\n\
        MISSING_DATE,MISSING_MID,NO_RECEIVED,NO_RELAYS";

    #[test]
    fn spam_is_refused_with_its_score_and_rules() {
        let (address, peer) = fake_spamd(false, GTUBE_REPLY);
        let verdict = scan_inline(params(address, None, None), GTUBE_MESSAGE);
        assert_eq!(
            verdict,
            Ok(Verdict::Reject {
                reason:
                    "spam (score 1003.3 / 5.0: GTUBE,MISSING_DATE,MISSING_MID,NO_RECEIVED,NO_RELAYS,TVD_SPACE_RATIO)"
                        .into(),
                score: Some("1003.3".into()),
            })
        );
        let request = peer.join().unwrap();
        assert_eq!(request.head, format!("SYMBOLS SPAMC/1.5\r\nContent-length: {}\r\n\r\n", GTUBE_MESSAGE.len()));
        assert_eq!(request.content, GTUBE_MESSAGE);
        assert_eq!(request.extra, b"");
    }

    #[test]
    fn clean_mail_is_accepted_with_headers_and_the_user_is_sent() {
        let (address, peer) = fake_spamd(false, CLEAN_REPLY);
        let verdict = scan_inline(params(address, None, Some("alice@example.com")), b"Subject: hi\r\n\r\nhello\r\n");
        assert_eq!(
            verdict,
            Ok(Verdict::Accept {
                headers: vec![
                    "X-Spam-Status: No, score=3.3 required=5.0 tests=MISSING_DATE,MISSING_MID,NO_RECEIVED,NO_RELAYS"
                        .into(),
                    "X-Spam-Score: 3.3".into(),
                ],
                score: Some("3.3".into()),
            })
        );
        let request = peer.join().unwrap();
        assert_eq!(request.head, "SYMBOLS SPAMC/1.5\r\nContent-length: 22\r\nUser: alice@example.com\r\n\r\n");
        assert_eq!(request.content, b"Subject: hi\r\n\r\nhello\r\n");
    }

    #[test]
    fn reject_score_decides_instead_of_spamd() {
        const SPAMMY: &[u8] = b"SPAMD/1.1 0 EX_OK\r\nContent-length: 11\r\nSpam: True ; 7.5 / 5.0\r\n\r\nBAYES_99,X1";
        // Spam to spamd, below the reject score: accepted, marked.
        let (address, _) = fake_spamd(false, SPAMMY);
        assert_eq!(
            scan_inline(params(address, Some(10.0), None), b"x\r\n"),
            Ok(Verdict::Accept {
                headers: vec![
                    "X-Spam-Status: Yes, score=7.5 required=5.0 tests=BAYES_99,X1".into(),
                    "X-Spam-Score: 7.5".into()
                ],
                score: Some("7.5".into()),
            })
        );
        // At the reject score: refused.
        let (address, _) = fake_spamd(false, SPAMMY);
        assert_eq!(
            scan_inline(params(address, Some(7.5), None), b"x\r\n"),
            Ok(Verdict::Reject { reason: "spam (score 7.5 / 5.0: BAYES_99,X1)".into(), score: Some("7.5".into()) })
        );
        // Not spam to spamd (a high threshold), above the reject score;
        // no rules: no tests= and none in the reason.
        let (address, _) =
            fake_spamd(false, b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\nSpam: False ; 12.0 / 15.0\r\n\r\n");
        assert_eq!(
            scan_inline(params(address, Some(10.0), None), b"x\r\n"),
            Ok(Verdict::Reject { reason: "spam (score 12.0 / 15.0)".into(), score: Some("12.0".into()) })
        );
        let (address, _) =
            fake_spamd(false, b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\nSpam: False ; -0.1 / 5.0\r\n\r\n");
        assert_eq!(
            scan_inline(params(address, Some(10.0), None), b"x\r\n"),
            Ok(Verdict::Accept {
                headers: vec!["X-Spam-Status: No, score=-0.1 required=5.0".into(), "X-Spam-Score: -0.1".into()],
                score: Some("-0.1".into()),
            })
        );
    }

    #[test]
    fn a_body_file_is_streamed_whole_in_chunks() {
        let bytes = content(3 * CHUNK_BYTES + 1234);
        let (address, peer) = fake_spamd(false, CLEAN_REPLY);
        let (tx, rx) = std::sync::mpsc::channel();
        let expected = bytes.clone();
        testing::run(move || {
            Box::pin(async move {
                let (env, path) = in_file(&bytes);
                let _ = tx.send(scan(&params(address, None, None), Message { env: &env, stored: &path }).await);
            })
        });
        assert!(matches!(rx.recv().unwrap(), Ok(Verdict::Accept { .. })));
        let request = peer.join().unwrap();
        assert_eq!(request.head, format!("SYMBOLS SPAMC/1.5\r\nContent-length: {}\r\n\r\n", expected.len()));
        assert_eq!(request.content.len(), expected.len());
        assert!(request.content == expected, "the content differs");
        assert_eq!(request.extra, b"");
    }

    #[test]
    fn a_body_shorter_than_its_envelope_says_is_an_error() {
        let (address, peer) = fake_spamd(false, CLEAN_REPLY);
        let (tx, rx) = std::sync::mpsc::channel();
        testing::run(move || {
            Box::pin(async move {
                let mut env = inline(b"Subject: x\r\n\r\nshort\r\n");
                env.size_bytes += 10;
                let _ =
                    tx.send(scan(&params(address, None, None), Message { env: &env, stored: &StoredBody::default() }).await);
            })
        });
        let error = rx.recv().unwrap().unwrap_err();
        assert!(error.contains("the message is 21 bytes, its envelope says 31"), "{error}");
        assert_eq!(peer.join().unwrap().content, b"Subject: x\r\n\r\nshort\r\n");
    }

    #[test]
    fn errors_and_malformed_replies() {
        let cases: &[(&[u8], &str)] = &[
            (
                b"SPAMD/1.0 76 Bad header line: (Content-Length mismatch: Expected 100 bytes, got 5 bytes)\r\n",
                "76 Bad header line",
            ),
            (b"SPAMD/1.1 69 EX_UNAVAILABLE\r\n", "69 EX_UNAVAILABLE"),
            (b"", "connection closed without a reply"),
            (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 20\r\n", "within the reply's headers"),
            (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 20\r\nSpam: True ; 9.0 / 5.0\r\n\r\nGTU", "3 bytes into a 20-byte"),
            (b"HTTP/1.1 200 OK\r\n\r\n", "not a spamd reply"),
            (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\n\r\n", "without a Spam header"),
            (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\nSpam: maybe\r\n\r\n", "bad Spam header"),
            (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\nSpam: True ; lots / 5.0\r\n\r\n", "bad score"),
            (b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\nSpam: True ; NaN / 5.0\r\n\r\n", "bad score"),
            (b"SPAMD/1.1 0 EX_OK\r\nContent-length: x\r\nSpam: True ; 9.0 / 5.0\r\n\r\n", "bad Content-length"),
            (b"no line end at all", "reply without a line end"),
        ];
        for (reply, wanted) in cases {
            let (address, _) = fake_spamd(false, reply);
            let error = scan_inline(params(address.clone(), None, None), b"x\r\n").unwrap_err();
            assert!(error.contains(wanted), "{:?}: {error}", String::from_utf8_lossy(reply));
            assert!(error.starts_with(&format!("spamd {address}: ")), "{error}");
        }
    }

    #[test]
    fn a_reply_is_read_to_a_bound() {
        let (address, _) = listen(false, |conn| {
            let mut request = Vec::new();
            let mut byte = [0u8];
            while !request.ends_with(b"\r\n\r\nx\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                request.push(byte[0]);
            }
            let _ = conn.write_all(b"SPAMD/1.1 0 EX_OK\r\nX-Filler: ");
            let filler = vec![b'a'; MAX_REPLY_BYTES];
            let _ = conn.write_all(&filler);
        });
        let error = scan_inline(params(address, None, None), b"x\r\n").unwrap_err();
        assert!(error.contains(&format!("reply longer than {MAX_REPLY_BYTES} bytes")), "{error}");
    }

    #[test]
    fn headers_stay_single_line_and_bounded() {
        let mut body = String::from("EVIL\r\nX-Injected: 1,GOOD_ONE,");
        for i in 0..300 {
            body.push_str(&format!("RULE_NUMBER_{i},"));
        }
        let reply =
            format!("SPAMD/1.1 0 EX_OK\r\nContent-length: {}\r\nSpam: True ; 6.0 / 5.0\r\n\r\n{body}", body.len());
        let (address, _) = fake_spamd(false, Box::leak(reply.into_bytes().into_boxed_slice()));
        let Ok(Verdict::Accept { headers, .. }) = scan_inline(params(address, Some(20.0), None), b"x\r\n") else {
            panic!("not accepted");
        };
        let status = &headers[0];
        assert!(
            status.starts_with("X-Spam-Status: Yes, score=6.0 required=5.0 tests=GOOD_ONE,RULE_NUMBER_0,"),
            "{status}"
        );
        assert!(status.ends_with(",..."), "{status}");
        let tests = status.split_once("tests=").unwrap().1;
        assert!(tests.len() <= MAX_HEADER_TESTS_BYTES && tests.len() > MAX_HEADER_TESTS_BYTES - 20, "{}", tests.len());
        assert!(status.bytes().all(|b| (b' '..=b'~').contains(&b)), "{status}");
        assert!(!status.contains("EVIL") && !status.contains("Injected"));

        let (address, _) = fake_spamd(
            false,
            Box::leak(
                format!("SPAMD/1.1 0 EX_OK\r\nContent-length: {}\r\nSpam: True ; 6.0 / 5.0\r\n\r\n{body}", body.len())
                    .into_bytes()
                    .into_boxed_slice(),
            ),
        );
        let Ok(Verdict::Reject { reason, .. }) = scan_inline(params(address, None, None), b"x\r\n") else {
            panic!("not refused");
        };
        assert!(
            reason.starts_with("spam (score 6.0 / 5.0: GOOD_ONE,RULE_NUMBER_0,") && reason.ends_with(",...)"),
            "{reason}"
        );
        assert!(reason.len() <= MAX_REASON_TESTS_BYTES + 30, "{}", reason.len());
    }

    #[test]
    fn join_tests_bounds() {
        let tests: Vec<String> = ["AAAA", "BBBB", "CCCC"].map(String::from).to_vec();
        assert_eq!(join_tests(&tests, 100), "AAAA,BBBB,CCCC");
        assert_eq!(join_tests(&tests, 14), "AAAA,BBBB,CCCC");
        assert_eq!(join_tests(&tests, 13), "AAAA,BBBB,...");
        assert_eq!(join_tests(&tests, 12), "AAAA,...");
        assert_eq!(join_tests(&tests, 7), "...");
        assert_eq!(join_tests(&[], 7), "");
    }

    #[test]
    fn over_a_unix_socket() {
        let (address, peer) = fake_spamd(true, GTUBE_REPLY);
        assert!(matches!(address, ScannerAddress::Unix(_)));
        assert!(matches!(scan_inline(params(address, None, None), GTUBE_MESSAGE), Ok(Verdict::Reject { .. })));
        assert_eq!(peer.join().unwrap().content, GTUBE_MESSAGE);
    }

    #[test]
    fn a_host_name_is_resolved() {
        let (address, peer) = fake_spamd(false, CLEAN_REPLY);
        let ScannerAddress::Tcp(hostport) = address else { unreachable!() };
        let port = hostport.rsplit_once(':').unwrap().1;
        let named: ScannerAddress = format!("localhost:{port}").parse().unwrap();
        assert!(matches!(scan_inline(params(named, None, None), b"x\r\n"), Ok(Verdict::Accept { .. })));
        assert_eq!(peer.join().unwrap().content, b"x\r\n");
    }

    #[test]
    fn unreachable_spamd_and_bad_users_are_errors() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let address = ScannerAddress::Tcp(format!("127.0.0.1:{port}"));
        let error = scan_inline(params(address.clone(), None, None), b"x\r\n").unwrap_err();
        assert!(error.starts_with(&format!("spamd 127.0.0.1:{port}: connect: ")), "{error}");
        let error = scan_inline(params(address, None, Some("a\r\nUser: b")), b"x\r\n").unwrap_err();
        assert!(error.contains("bad spamd user"), "{error}");
        assert!(check_user("debian-spamd").is_ok());
        assert!(check_user("").is_err() && check_user(&"u".repeat(MAX_USER_BYTES + 1)).is_err());
    }
}
