//! The metrics responder: a minimal HTTP/1.x server on `metrics.listen`
//! that answers `GET /metrics` with [`super::encode`]'s text.
//!
//! Place in the pipeline: beside the shards, on a thread of its own
//! (started and stopped by `crate::shard::run`, like the control socket),
//! so a slow scraper never holds up an SMTP session, and a scrape costs
//! the shards nothing but the relaxed loads of their atomics.
//!
//! One request per connection, answered and closed (`Connection: close`):
//! the request head (request line and header lines up to the blank line)
//! must arrive within [`CLIENT_TIMEOUT`] and fit in [`REQUEST_BYTES_MAX`]
//! bytes (431 beyond); a request body is not read. `GET /metrics` (a query
//! string ignored) gets 200; another path 404; another method on it 405;
//! a request line that is not HTTP 400. Connections are served one at a
//! time: the thread holds at most one client, for at most the timeout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::log;

/// Longest request head (request line and headers).
pub const REQUEST_BYTES_MAX: usize = 8 * 1024;
/// How long a client may take to send its request, and to read the reply.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long unread input is drained after the response, at most.
const LINGER: Duration = Duration::from_millis(200);
/// Most unread input drained after the response.
const LINGER_BYTES_MAX: usize = 64 * 1024;
/// How often the thread looks at the stop flag while no client comes.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// What a request head asked for, or why it is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// `GET /metrics`.
    Metrics,
    /// Incomplete: more bytes are needed.
    Partial,
    /// Refused with this status.
    Refused(u16),
}

/// Reads the request head in `bytes` (what has arrived so far).
pub fn parse(bytes: &[u8]) -> Request {
    let Some(end) = head_end(bytes) else {
        return match bytes.len() >= REQUEST_BYTES_MAX {
            true => Request::Refused(431),
            false => Request::Partial,
        };
    };
    if end > REQUEST_BYTES_MAX {
        return Request::Refused(431);
    }
    let head = &bytes[..end];
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = head[..line_end].strip_suffix(b"\r").unwrap_or(&head[..line_end]);
    let Ok(line) = std::str::from_utf8(line) else {
        return Request::Refused(400);
    };
    let mut words = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (words.next(), words.next(), words.next(), words.next())
    else {
        return Request::Refused(400);
    };
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return Request::Refused(400);
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) || !target.starts_with('/') {
        return Request::Refused(400);
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    match (method, path) {
        ("GET", "/metrics") => Request::Metrics,
        (_, "/metrics") => Request::Refused(405),
        _ => Request::Refused(404),
    }
}

/// The length of the head through its blank line (CRLF CRLF, or LF LF).
fn head_end(bytes: &[u8]) -> Option<usize> {
    let crlf = bytes.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = bytes.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    }
}

/// The whole response to `request` (None for an incomplete one).
pub fn respond(request: &Request) -> Option<Vec<u8>> {
    let (status, content_type, body) = match request {
        Request::Partial => return None,
        Request::Metrics => (200, super::CONTENT_TYPE, super::encode()),
        Request::Refused(status) => (*status, "text/plain; charset=utf-8", format!("{}\n", reason(*status))),
    };
    let allow = if *request == Request::Refused(405) { "Allow: GET\r\n" } else { "" };
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        reason(status),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    Some(out)
}

/// The running responder; `stop` ends its thread.
pub struct Responder {
    addr: SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

/// Binds `addr` and serves it on a new thread.
pub fn start(addr: SocketAddr) -> Result<Responder, String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("metrics.listen {addr}: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| format!("metrics.listen {addr}: {e}"))?;
    let addr = listener.local_addr().unwrap_or(addr);
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = stop.clone();
    let thread = std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || serve(listener, thread_stop))
        .map_err(|e| format!("metrics thread: {e}"))?;
    log::event("metrics_listen", &[("address", &addr)]);
    Ok(Responder { addr, thread: Some(thread), stop })
}

impl Responder {
    /// The address bound (with the port chosen, for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Waits up to [`POLL_INTERVAL`] for a connection to accept on `listener`.
fn wait_readable(listener: &TcpListener) {
    use std::os::fd::AsRawFd;
    let mut fds = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd for the duration of the call.
    let ready = unsafe { libc::poll(&mut fds, 1, POLL_INTERVAL.as_millis() as libc::c_int) };
    if ready < 0 {
        std::thread::sleep(POLL_INTERVAL);
    }
}

fn serve(listener: TcpListener, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = answer(stream) {
                    log::event("metrics_error", &[("error", &e)]);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => wait_readable(&listener),
            Err(e) => {
                log::event("metrics_error", &[("error", &e)]);
                std::thread::sleep(POLL_INTERVAL);
            }
        }
    }
}

/// Reads one request head from `stream` (within the size limit and the
/// timeout) and writes its response.
fn answer(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    let request = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Request::Refused(408);
        }
        stream.set_read_timeout(Some(left))?;
        let n = match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                break Request::Refused(408);
            }
            Err(e) => return Err(e),
        };
        let room = (REQUEST_BYTES_MAX + 1).saturating_sub(head.len());
        head.extend_from_slice(&buf[..n.min(room)]);
        match parse(&head) {
            Request::Partial => continue,
            request => break request,
        }
    };
    if let Some(response) = respond(&request) {
        stream.write_all(&response)?;
    }
    // Unread input at close would reset the connection, and the client
    // could lose the response: read what is left for a moment first.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(LINGER));
    let mut drained = 0;
    while drained < LINGER_BYTES_MAX {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads_are_parsed_and_refused_by_their_faults() {
        assert_eq!(parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Request::Metrics);
        assert_eq!(parse(b"GET /metrics?name[]=x HTTP/1.0\r\n\r\n"), Request::Metrics);
        assert_eq!(parse(b"GET /metrics HTTP/1.1\n\n"), Request::Metrics);
        assert_eq!(parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"), Request::Partial);
        assert_eq!(parse(b""), Request::Partial);
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n"), Request::Refused(404));
        assert_eq!(parse(b"GET /metricsx HTTP/1.1\r\n\r\n"), Request::Refused(404));
        assert_eq!(parse(b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"), Request::Refused(405));
        assert_eq!(parse(b"HEAD /other HTTP/1.1\r\n\r\n"), Request::Refused(404));
        assert_eq!(parse(b"GET /metrics\r\n\r\n"), Request::Refused(400));
        assert_eq!(parse(b"GET /metrics HTTP/2.0\r\n\r\n"), Request::Refused(400));
        assert_eq!(parse(b"GET  /metrics HTTP/1.1\r\n\r\n"), Request::Refused(400));
        assert_eq!(parse(b"get /metrics HTTP/1.1\r\n\r\n"), Request::Refused(400));
        assert_eq!(parse(b"GET metrics HTTP/1.1\r\n\r\n"), Request::Refused(400));
        assert_eq!(parse(b"GET /\xff HTTP/1.1\r\n\r\n"), Request::Refused(400));
        assert_eq!(parse(b"\r\n\r\n"), Request::Refused(400));
        // The size limit: a head without its end, and one that ends past it.
        let long = vec![b'a'; REQUEST_BYTES_MAX];
        assert_eq!(parse(&long), Request::Refused(431));
        let mut late = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        late.extend(std::iter::repeat_n(b'a', REQUEST_BYTES_MAX));
        late.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse(&late), Request::Refused(431));
    }

    #[test]
    fn responses_carry_status_length_and_close() {
        let ok = String::from_utf8(respond(&Request::Metrics).expect("a response")).expect("text");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Type: text/plain; version=0.0.4"));
        let (head, body) = ok.split_once("\r\n\r\n").expect("head and body");
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert!(head.contains("Connection: close"));
        let refused = String::from_utf8(respond(&Request::Refused(405)).expect("a response")).expect("text");
        assert!(refused.starts_with("HTTP/1.1 405 Method Not Allowed\r\n") && refused.contains("Allow: GET\r\n"));
        assert_eq!(respond(&Request::Partial), None);
    }

    fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).expect("connects");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        // A refusal may come (and the socket close) before all is written.
        let _ = stream.write_all(request);
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply);
        String::from_utf8_lossy(&reply).into_owned()
    }

    #[test]
    fn the_responder_serves_scrapes_and_refuses_the_rest() {
        let responder = start("127.0.0.1:0".parse().expect("address")).expect("binds");
        let addr = responder.addr();
        let ok = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("# TYPE ringpost_sessions_open gauge"));
        assert!(exchange(addr, b"GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        assert!(exchange(addr, b"DELETE /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405 "));
        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 3 * REQUEST_BYTES_MAX));
        assert!(exchange(addr, &big).starts_with("HTTP/1.1 431 "));
        // A client that sends half a head and waits gets 408 after the timeout.
        let started = Instant::now();
        let mut slow = TcpStream::connect(addr).expect("connects");
        slow.write_all(b"GET /metrics HTTP/1.1\r\n").expect("writes");
        let mut reply = String::new();
        let _ = slow.read_to_string(&mut reply);
        assert!(reply.starts_with("HTTP/1.1 408 "), "{reply}");
        assert!(started.elapsed() >= CLIENT_TIMEOUT - Duration::from_millis(100));
        // Returns once the thread has ended (the listener closed with it;
        // its port may be taken by another test at once, so not probed).
        responder.stop();
    }
}
