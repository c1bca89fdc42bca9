//! `ringpost sendmail`: the sendmail(1) interface local programs expect
//! (cron, mail(1), PHP's mail(), git send-email). It reads one message on
//! standard input and submits it over SMTP to the local server's first
//! listen address; it keeps no queue of its own, so a server that is not
//! running is a temporary failure (`EX_TEMPFAIL`) the caller retries.
//!
//! Place in the pipeline: outside the server, a client like any other; the
//! server's RCPT policy, Sieve and the queue then treat the message as mail
//! from 127.0.0.1. What sendmail(1) callers rely on is done here: `-t`
//! takes the recipients from To/Cc/Bcc (and removes Bcc), a header block
//! without From, Date or Message-ID gets them, `-f` sets the envelope
//! sender, `-F` the full name, a lone `.` line ends the input unless `-i`
//! or `-oi`, `-bs` speaks SMTP on standard input and output. Exit codes
//! are sysexits.h's.
//!
//! Bounds: the message is read whole into memory, at most
//! `MESSAGE_BYTES_MAX`; at most `RECIPIENTS_MAX` recipients; every reply
//! line is read within `TIMEOUT`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Largest message read from standard input.
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Most recipients of one submission.
pub const RECIPIENTS_MAX: usize = 1000;
/// Longest wait for the server's reply.
const TIMEOUT: Duration = Duration::from_secs(120);
/// Longest reply line read.
const REPLY_LINE_BYTES_MAX: usize = 4096;

/// sysexits.h.
pub mod exit {
    pub const OK: u8 = 0;
    pub const USAGE: u8 = 64;
    pub const DATAERR: u8 = 65;
    pub const NOUSER: u8 = 67;
    pub const UNAVAILABLE: u8 = 69;
    pub const SOFTWARE: u8 = 70;
    pub const IOERR: u8 = 74;
    pub const TEMPFAIL: u8 = 75;
}

/// What the command line asked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// `-t`: recipients from the header block (added to those given).
    pub from_headers: bool,
    /// `-i` / `-oi`: a line with a lone `.` is content, not the end.
    pub ignore_dots: bool,
    /// `-f`: the envelope sender (`<>` for the null sender).
    pub sender: Option<String>,
    /// `-F`: the full name of the From: field added when there is none.
    pub full_name: Option<String>,
    /// `-bs`: SMTP on standard input and output.
    pub smtp_on_stdio: bool,
    pub recipients: Vec<String>,
}

/// Reads sendmail's traditional options; unknown `-o`/`-B`/`-q` style
/// options that change nothing here are accepted and ignored, as
/// Postfix's sendmail does with most of them.
pub fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut i = 0;
    let value = |i: &mut usize, flag: &str, inline: &str| -> Result<String, String> {
        if !inline.is_empty() {
            return Ok(inline.to_string());
        }
        *i += 1;
        args.get(*i).cloned().ok_or_else(|| format!("option {flag} needs a value"))
    };
    while i < args.len() {
        let arg = &args[i];
        match arg.as_str() {
            "--" => {
                o.recipients.extend(args[i + 1..].iter().cloned());
                break;
            }
            "-t" => o.from_headers = true,
            "-i" | "-oi" => o.ignore_dots = true,
            "-bs" => o.smtp_on_stdio = true,
            "-bm" => {}
            a if a.starts_with("-f") => o.sender = Some(value(&mut i, "-f", &a[2..])?),
            a if a.starts_with("-r") => o.sender = Some(value(&mut i, "-r", &a[2..])?),
            a if a.starts_with("-F") => o.full_name = Some(value(&mut i, "-F", &a[2..])?),
            a if a.starts_with("-o") || a.starts_with("-B") || a.starts_with("-N") || a.starts_with("-R") => {
                // -oem, -odi, -B8BITMIME, -N never, -R hdrs: nothing to do,
                // but those with a separate value take it.
                if matches!(a, "-B" | "-N" | "-R" | "-O") {
                    i += 1;
                }
            }
            "-v" => {}
            a if a.starts_with("-b") => return Err(format!("mode {a} is not supported (only -bm and -bs)")),
            a if a.starts_with('-') && a.len() > 1 => return Err(format!("unknown option {a}")),
            _ => o.recipients.push(arg.clone()),
        }
        i += 1;
    }
    if o.recipients.len() > RECIPIENTS_MAX {
        return Err(format!("more than {RECIPIENTS_MAX} recipients"));
    }
    Ok(o)
}

/// Reads the message from `input`: CRLF line ends, a lone `.` ending it
/// unless `ignore_dots`.
pub fn read_message(input: &mut dyn BufRead, ignore_dots: bool) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = input.read_until(b'\n', &mut line).map_err(|e| format!("reading the message: {e}"))?;
        if n == 0 {
            break;
        }
        while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            line.pop();
        }
        if !ignore_dots && line == b"." {
            break;
        }
        if out.len() + line.len() + 2 > MESSAGE_BYTES_MAX {
            return Err(format!("message larger than {MESSAGE_BYTES_MAX} bytes"));
        }
        out.extend_from_slice(&line);
        out.extend_from_slice(b"\r\n");
    }
    Ok(out)
}

/// The message with the fields a submission needs (From, Date,
/// Message-ID when missing; Bcc removed with `-t`), and the recipients
/// `-t` found in To, Cc and Bcc.
pub fn prepare(
    message: &[u8],
    options: &Options,
    sender: &str,
    hostname: &str,
    now: std::time::SystemTime,
    unique: &str,
) -> (Vec<u8>, Vec<String>) {
    let end = header_end(message);
    let (head, body) = message.split_at(end);
    let fields = split_fields(head);
    let has = |name: &str| fields.iter().any(|f| field_name(f).eq_ignore_ascii_case(name));
    let mut found = Vec::new();
    let mut out = Vec::with_capacity(message.len() + 256);
    for f in &fields {
        let name = field_name(f);
        let is_recipient_field = ["to", "cc", "bcc"].iter().any(|n| name.eq_ignore_ascii_case(n));
        if options.from_headers && is_recipient_field {
            let value = String::from_utf8_lossy(&f[name.len() + 1..]).into_owned();
            found.extend(addresses_in(&value));
        }
        if options.from_headers && name.eq_ignore_ascii_case("bcc") {
            continue;
        }
        out.extend_from_slice(f);
    }
    let mut added = String::new();
    if !has("from") {
        match &options.full_name {
            Some(name) => added.push_str(&format!("From: \"{}\" <{sender}>\r\n", name.replace(['"', '\r', '\n'], ""))),
            None => added.push_str(&format!("From: <{sender}>\r\n")),
        }
    }
    if !has("date") {
        added.push_str(&format!("Date: {}\r\n", crate::smtp::received::rfc5322_date(now)));
    }
    if !has("message-id") {
        added.push_str(&format!("Message-ID: <{unique}@{hostname}>\r\n"));
    }
    let mut message = added.into_bytes();
    message.extend_from_slice(&out);
    // The empty line between the fields and the body, when the input had
    // none (only fields, or no fields at all).
    if !body.starts_with(b"\r\n") {
        message.extend_from_slice(b"\r\n");
    }
    message.extend_from_slice(body);
    (message, found)
}

/// Where the header block ends: at the empty line (which belongs to the
/// body part here), or at the end when there is none. A first line that
/// is not a field (no colon before a space) means no header block.
fn header_end(message: &[u8]) -> usize {
    let mut at = 0;
    while at < message.len() {
        let line_end = message[at..].windows(2).position(|w| w == b"\r\n").map_or(message.len(), |p| at + p + 2);
        let line = &message[at..line_end];
        if line == b"\r\n" {
            return at;
        }
        let continuation = line.starts_with(b" ") || line.starts_with(b"\t");
        let field = line.iter().position(|b| *b == b':').is_some_and(|c| c > 0 && !line[..c].contains(&b' '));
        if !continuation && !field {
            return at;
        }
        at = line_end;
    }
    message.len()
}

/// The header block's fields, each with its continuation lines and CRLFs.
fn split_fields(head: &[u8]) -> Vec<&[u8]> {
    let mut fields: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let mut at = 0;
    while at < head.len() {
        let line_end = head[at..].windows(2).position(|w| w == b"\r\n").map_or(head.len(), |p| at + p + 2);
        let next_is_continuation = head.get(line_end).is_some_and(|b| *b == b' ' || *b == b'\t');
        if !next_is_continuation {
            fields.push(&head[start..line_end]);
            start = line_end;
        }
        at = line_end;
    }
    fields
}

fn field_name(field: &[u8]) -> &str {
    let colon = field.iter().position(|b| *b == b':').unwrap_or(0);
    std::str::from_utf8(&field[..colon]).unwrap_or("").trim()
}

/// The addresses of an address-list field value: what is in angle
/// brackets, else each comma-separated word with an `@`.
fn addresses_in(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let unfolded = value.replace(['\r', '\n'], " ");
    for part in split_outside_quotes(&unfolded) {
        let part = part.trim();
        let address = match (part.rfind('<'), part.rfind('>')) {
            (Some(a), Some(b)) if a < b => part[a + 1..b].trim().to_string(),
            // A bare local name ("To: root"), as cron writes it, counts too.
            _ => match part.split_whitespace().find(|w| w.contains('@')) {
                Some(word) => word.to_string(),
                None if !part.contains(char::is_whitespace) => part.to_string(),
                None => String::new(),
            },
        };
        // A group's name ends at its colon ("undisclosed-recipients:;").
        let address = address.trim_end_matches(';').rsplit(':').next().unwrap_or("").trim().to_string();
        if !address.is_empty() {
            out.push(address);
        }
    }
    out
}

fn split_outside_quotes(value: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut angle) = (0, false, false);
    for (i, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                parts.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts
}

/// A recipient as given, qualified with `hostname` when it has no domain.
pub fn qualify(address: &str, hostname: &str) -> String {
    let address = address.trim().trim_start_matches('<').trim_end_matches('>');
    if address.contains('@') || address.is_empty() {
        address.to_string()
    } else {
        format!("{address}@{hostname}")
    }
}

/// Why a submission failed: its exit code and the text printed.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub text: String,
}

/// Submits `message` from `sender` to `recipients` at `server`.
pub fn submit(
    server: SocketAddr,
    helo: &str,
    sender: &str,
    recipients: &[String],
    message: &[u8],
) -> Result<String, Failure> {
    let io = |e: std::io::Error| Failure { code: exit::TEMPFAIL, text: format!("{server}: {e}") };
    let stream = TcpStream::connect_timeout(&server, Duration::from_secs(10))
        .map_err(|e| Failure { code: exit::TEMPFAIL, text: format!("cannot reach the server at {server}: {e}") })?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    let mut reader = BufReader::new(stream.try_clone().map_err(io)?);
    let mut writer = stream;
    let expect = |reader: &mut BufReader<TcpStream>, what: &str, ok: u16| -> Result<String, Failure> {
        let (code, text) =
            read_reply(reader).map_err(|e| Failure { code: exit::TEMPFAIL, text: format!("{what}: {e}") })?;
        if code == ok || (ok == 250 && (200..300).contains(&code)) {
            return Ok(text);
        }
        let exit_code = match (code, what) {
            (400..=499, _) => exit::TEMPFAIL,
            (_, w) if w.starts_with("RCPT") => exit::NOUSER,
            (_, "MAIL FROM") | (_, "DATA") | (_, "end of data") => exit::DATAERR,
            _ => exit::UNAVAILABLE,
        };
        Err(Failure { code: exit_code, text: format!("{what}: {text}") })
    };
    expect(&mut reader, "greeting", 220)?;
    writer.write_all(format!("EHLO {helo}\r\n").as_bytes()).map_err(io)?;
    expect(&mut reader, "EHLO", 250)?;
    writer.write_all(format!("MAIL FROM:<{sender}>\r\n").as_bytes()).map_err(io)?;
    expect(&mut reader, "MAIL FROM", 250)?;
    for r in recipients {
        writer.write_all(format!("RCPT TO:<{r}>\r\n").as_bytes()).map_err(io)?;
        expect(&mut reader, &format!("RCPT TO:<{r}>"), 250)?;
    }
    writer.write_all(b"DATA\r\n").map_err(io)?;
    expect(&mut reader, "DATA", 354)?;
    let mut stuffed = Vec::with_capacity(message.len() + 64);
    for line in message.split_inclusive(|b| *b == b'\n') {
        if line.starts_with(b".") {
            stuffed.push(b'.');
        }
        stuffed.extend_from_slice(line);
    }
    if !stuffed.ends_with(b"\r\n") {
        stuffed.extend_from_slice(b"\r\n");
    }
    stuffed.extend_from_slice(b".\r\n");
    writer.write_all(&stuffed).map_err(io)?;
    let text = expect(&mut reader, "end of data", 250)?;
    let _ = writer.write_all(b"QUIT\r\n");
    Ok(text)
}

/// One SMTP reply: its code and its lines joined by a space.
fn read_reply<R: BufRead>(reader: &mut R) -> std::io::Result<(u16, String)> {
    let mut text = String::new();
    loop {
        let mut line = Vec::new();
        let n = reader.by_ref().take(REPLY_LINE_BYTES_MAX as u64).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        let line = String::from_utf8_lossy(&line).trim_end().to_string();
        let code: u16 = line.get(..3).and_then(|c| c.parse().ok()).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not an SMTP reply: {line:?}"))
        })?;
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok((code, text));
        }
    }
}

/// `-bs`: copies standard input to the server and its replies to standard
/// output until either side closes.
pub fn relay_stdio(server: SocketAddr) -> Result<(), Failure> {
    let stream = TcpStream::connect_timeout(&server, Duration::from_secs(10))
        .map_err(|e| Failure { code: exit::TEMPFAIL, text: format!("cannot reach the server at {server}: {e}") })?;
    let mut from_server = stream.try_clone().map_err(|e| Failure { code: exit::IOERR, text: e.to_string() })?;
    let copier = std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_server, &mut std::io::stdout().lock());
    });
    let mut to_server = stream;
    let _ = std::io::copy(&mut std::io::stdin().lock(), &mut to_server);
    let _ = to_server.shutdown(std::net::Shutdown::Write);
    let _ = copier.join();
    Ok(())
}

/// The login name of the calling user (the default envelope sender's
/// local part).
pub fn login_name() -> String {
    if let Ok(name) = std::env::var("LOGNAME").or_else(|_| std::env::var("USER")) {
        if !name.is_empty() && !name.contains(['@', ' ', '<', '>']) {
            return name;
        }
    }
    // SAFETY: getpwuid returns a pointer into static storage or NULL; it
    // is read at once, on this thread, before any other call that could
    // overwrite it.
    unsafe {
        let pw = libc::getpwuid(libc::getuid());
        if !pw.is_null() && !(*pw).pw_name.is_null() {
            if let Ok(name) = std::ffi::CStr::from_ptr((*pw).pw_name).to_str() {
                return name.to_string();
            }
        }
    }
    "nobody".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(args: &[&str]) -> Options {
        parse_args(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn options_as_cron_php_and_git_pass_them() {
        let o = opts(&["-t", "-i", "-f", "root@example.org", "-FCron Daemon", "-oem", "bob"]);
        assert!(o.from_headers && o.ignore_dots);
        assert_eq!(o.sender.as_deref(), Some("root@example.org"));
        assert_eq!(o.full_name.as_deref(), Some("Cron Daemon"));
        assert_eq!(o.recipients, vec!["bob".to_string()]);
        assert!(opts(&["-oi", "--", "-weird@example.org"]).recipients == vec!["-weird@example.org".to_string()]);
        assert!(parse_args(&["-bp".to_string()]).is_err());
        assert!(parse_args(&["-f".to_string()]).is_err());
    }

    #[test]
    fn a_lone_dot_ends_the_input_unless_i() {
        let input = b"Subject: x\n\nline\n.\nafter\n";
        assert_eq!(read_message(&mut &input[..], false).unwrap(), b"Subject: x\r\n\r\nline\r\n");
        assert_eq!(read_message(&mut &input[..], true).unwrap(), b"Subject: x\r\n\r\nline\r\n.\r\nafter\r\n");
    }

    #[test]
    fn missing_fields_are_added_and_bcc_taken_with_t() {
        let o = Options { from_headers: true, full_name: Some("Cron Daemon".into()), ..Options::default() };
        let message = b"To: Bob <bob@example.org>, \"Smith, Carol\" <carol@example.org>\r\nBcc: dave\r\nSubject: hi\r\n\r\nbody\r\n";
        let (out, found) = prepare(message, &o, "root@mx.example", "mx.example", std::time::UNIX_EPOCH, "ABC");
        let text = String::from_utf8(out).unwrap();
        assert_eq!(found, vec!["bob@example.org", "carol@example.org", "dave"]);
        assert!(text.starts_with("From: \"Cron Daemon\" <root@mx.example>\r\nDate: "), "{text}");
        assert!(text.contains("Message-ID: <ABC@mx.example>\r\n"));
        assert!(!text.contains("Bcc"), "{text}");
        assert!(text.ends_with("Subject: hi\r\n\r\nbody\r\n"), "{text}");
        // A message that is only a body gets its header block in front.
        let (out, _) = prepare(b"just text\r\n", &Options::default(), "a@b", "b", std::time::UNIX_EPOCH, "X");
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Message-ID: <X@b>\r\n\r\njust text\r\n"), "{text}");
    }

    #[test]
    fn bare_names_are_qualified() {
        assert_eq!(qualify("root", "mx.example"), "root@mx.example");
        assert_eq!(qualify("<bob@example.org>", "mx.example"), "bob@example.org");
    }
}
