//! The `dovecot` back end of SMTP AUTH: Dovecot's authentication client
//! protocol (version 1.2) over its auth socket, as Postfix speaks it with
//! `smtpd_sasl_type = dovecot`: on connect `VERSION` and `CPID` out, then
//! the server's `VERSION`, `MECH`, `SPID`, `CUID`, `COOKIE` lines up to
//! `DONE`; per check `AUTH <id> PLAIN service=smtp ... resp=<base64>` out
//! and `OK <id> ...` (valid), `FAIL <id> ...` (invalid; `temp` in it:
//! the back end failed) back. LOGIN is relayed as PLAIN: the session has
//! decoded both into the same three strings.
//!
//! Place in the pipeline: a `crate::pool::Backend`, one socket per pool
//! worker, held open between checks and opened again after an error.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;

use crate::pool::Backend;
use crate::route::source::{LookupError, LookupResult};

/// Longest wait for the socket and for each answer.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Longest line read from the server; a longer one is a broken peer.
const LINE_BYTES_MAX: usize = 16 * 1024;
/// Most handshake lines before `DONE`.
const HANDSHAKE_LINES_MAX: usize = 64;

pub struct Dovecot {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// The id of the last request; each request has its own.
    request_id: u32,
}

impl Dovecot {
    /// Connects and runs the handshake; the server must offer PLAIN.
    pub fn connect(path: &Path) -> Result<Dovecot, String> {
        let stream = UnixStream::connect(path).map_err(|e| format!("{}: {e}", path.display()))?;
        stream.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
        stream.set_write_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
        let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
        writer
            .write_all(format!("VERSION\t1\t2\nCPID\t{}\n", std::process::id()).as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let mut conn = Dovecot { reader: BufReader::new(stream), writer, request_id: 0 };
        let mut plain = false;
        for _ in 0..HANDSHAKE_LINES_MAX {
            let line = conn.read_line()?;
            let mut fields = line.split('\t');
            match fields.next() {
                Some("VERSION") if fields.next() != Some("1") => {
                    return Err(format!("{}: unsupported protocol {line:?}", path.display()));
                }
                Some("MECH") if fields.next().is_some_and(|m| m.eq_ignore_ascii_case("PLAIN")) => plain = true,
                Some("DONE") if plain => return Ok(conn),
                Some("DONE") => return Err(format!("{}: the server does not offer PLAIN", path.display())),
                _ => {}
            }
        }
        Err(format!("{}: no DONE in the handshake", path.display()))
    }

    fn read_line(&mut self) -> Result<String, String> {
        let mut line = Vec::new();
        let read = std::io::Read::take(&mut self.reader, LINE_BYTES_MAX as u64).read_until(b'\n', &mut line);
        match read {
            Ok(0) => Err("auth socket closed".into()),
            Ok(_) if line.last() != Some(&b'\n') => Err("auth socket line too long".into()),
            Ok(_) => Ok(String::from_utf8_lossy(&line[..line.len() - 1]).into_owned()),
            Err(e) => Err(format!("auth socket: {e}")),
        }
    }

    fn check(&mut self, request: &super::Request<'_>) -> LookupResult {
        let temporary = |e: String| LookupError::Temporary(format!("dovecot: {e}"));
        self.request_id = self.request_id.wrapping_add(1).max(1);
        let id = self.request_id;
        let mut plain = Vec::new();
        plain.extend_from_slice(request.authzid.as_bytes());
        plain.push(0);
        plain.extend_from_slice(request.user.as_bytes());
        plain.push(0);
        plain.extend_from_slice(request.password.as_bytes());
        let resp = base64::engine::general_purpose::STANDARD.encode(&plain);
        let mut line = format!("AUTH\t{id}\tPLAIN\tservice=smtp\tnologin\tno-penalty");
        if let Ok(ip) = request.client.parse::<std::net::IpAddr>() {
            line.push_str(&format!("\trip={ip}"));
        }
        if request.secured {
            line.push_str("\tsecured");
        }
        line.push_str(&format!("\tresp={resp}\n"));
        self.writer.write_all(line.as_bytes()).map_err(|e| temporary(e.to_string()))?;
        loop {
            let answer = self.read_line().map_err(temporary)?;
            let mut fields = answer.split('\t');
            let (verb, answer_id) = (fields.next(), fields.next());
            if answer_id != Some(id.to_string().as_str()) {
                continue; // an answer to a request given up on
            }
            let params: Vec<&str> = fields.collect();
            return match verb {
                Some("OK") => {
                    let user = params.iter().find_map(|p| p.strip_prefix("user=")).map(unescape);
                    Ok(Some(user.unwrap_or_else(|| request.user.to_string())))
                }
                Some("FAIL") if params.iter().any(|p| *p == "temp" || p.starts_with("temp=")) => {
                    Err(temporary("temporary failure".into()))
                }
                Some("FAIL") => Ok(None),
                // PLAIN with its initial response needs no more rounds.
                _ => Err(temporary(format!("unexpected answer {:?}", verb.unwrap_or("")))),
            };
        }
    }
}

/// Dovecot's tab escapes: `\x01` then `1`, `t`, `r`, `n`.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1}' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('1') => out.push('\u{1}'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

impl Backend for Dovecot {
    fn lookup(&mut self, key: &str) -> LookupResult {
        match super::Request::decode(key) {
            Some(request) => self.check(&request),
            None => Err(LookupError::Config("malformed check request".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tab_escapes() {
        assert_eq!(super::unescape("a\u{1}tb\u{1}1c"), "a\tb\u{1}c");
    }
}
