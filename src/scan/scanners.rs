//! The content-scanning stage: the `[[scanner]]` tables, run in order over
//! a message at its final dot, each behind a bounded pool of its own.
//!
//! Place in the pipeline: a data-callout stage (`crate::scan::Stages`),
//! before early delivery. The message is whole in its final place in the
//! queue and not yet committed; each scanner reads it from there (inline
//! bytes or its body file, in chunks: never a copy of the whole message,
//! never a temporary file). A refusal or a temporary failure becomes the
//! reply to the final dot and nothing is committed; an acceptance may add
//! header lines, which the envelope carries (`headers_prepended`) and
//! delivery writes above the stored content.
//!
//! Load smoothing: a scanner runs at most `max_concurrent` scans at once
//! per shard, and at most `queue_max` more wait for a slot; the next final
//! dot gets `451 4.7.1 Content scanner busy` at once. A scan, its wait
//! included, is given `timeout`; after it, or when the scanner cannot be
//! reached or answers nonsense, `on_failure` decides (`451 4.7.1`, or on
//! as if accepted). A scanner only slows the messages it scans: a session
//! without one never waits for it.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use glommio::sync::Semaphore;

use super::clamd::{self, ClamdParams};
use super::content::{Message, ScannerAddress, Verdict as Said};
use super::pipe::{self, PipeScanParams};
use super::rspamd::{self, RspamdParams};
use super::spamd::{self, SpamdParams};
use crate::config::{Config, OnFailure, Scanner as ScannerConfig, ScannerKind};
use crate::log;
use crate::queue::{Envelope, Queue, StoredBody};
use crate::smtp::reply::{Enhanced, Reply};

/// Longest reason quoted in a reply (a reply line is at most 512 octets).
const REASON_BYTES_MAX: usize = 300;

/// One scanner and its pool.
struct Pool {
    config: ScannerConfig,
    /// Where a network scanner listens; how a pipe scanner runs (or why
    /// it cannot: an unknown user or group).
    target: Target,
    slots: Rc<Semaphore>,
    running: Cell<usize>,
    waiting: Cell<usize>,
}

/// What a scanner is reached by.
enum Target {
    Address(ScannerAddress),
    Program(Result<PipeScanParams, String>),
}

/// What the stage decided for a message.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Go on to the commit (added header lines are in the envelope).
    Continue,
    /// Answer this and commit nothing.
    Refuse(Reply),
}

/// The scanners of one shard, in order.
pub struct Scanners {
    pools: Vec<Pool>,
    queue: Rc<Queue>,
}

impl Scanners {
    /// Every `[[scanner]]` of `config` (their addresses were checked when
    /// the configuration was read).
    pub fn new(config: &Config, queue: Rc<Queue>) -> Scanners {
        let pools = config
            .scanners
            .iter()
            .map(|scanner| Pool {
                target: match scanner.kind {
                    ScannerKind::Pipe => Target::Program(PipeScanParams::new(
                        &scanner.command,
                        scanner.user.as_deref(),
                        scanner.group.as_deref(),
                        scanner.timeout.0,
                    )),
                    ScannerKind::Spamd | ScannerKind::Clamd | ScannerKind::Rspamd => {
                        Target::Address(scanner.address.parse().expect("scanner addresses are checked at load"))
                    }
                },
                slots: Rc::new(Semaphore::new(scanner.max_concurrent as u64)),
                running: Cell::new(0),
                waiting: Cell::new(0),
                config: scanner.clone(),
            })
            .collect::<Vec<Pool>>();
        for pool in &pools {
            if let Target::Program(Err(e)) = &pool.target {
                // Every message it is given fails by on_failure; said once here.
                log::event("scanner_unusable", &[("scanner", &pool.config.name), ("error", e)]);
            }
        }
        Scanners { pools, queue }
    }

    pub fn is_empty(&self) -> bool {
        self.pools.is_empty()
    }

    /// Runs every scanner over `env` (its content complete at `env.body`,
    /// or in its body file), in order, until one refuses.
    pub async fn run(&self, env: &mut Envelope) -> Decision {
        let stored = self.queue.stored_body(env);
        for pool in &self.pools {
            let started = Instant::now();
            let (said, what) = pool.scan(env, &stored).await;
            crate::metrics::SCANS.inc(match &said {
                Outcome::Said(Said::Accept { .. }) => 0,
                Outcome::Said(Said::Reject { .. }) => 1,
                Outcome::Said(Said::Tempfail { .. }) => 2,
                Outcome::Failed(_) => 3,
                Outcome::Busy => 4,
                Outcome::Skipped => 5,
            });
            let decision = match &said {
                Outcome::Skipped => Decision::Continue,
                Outcome::Busy => {
                    Decision::Refuse(Reply::new(451, Enhanced(4, 7, 1), "Content scanner busy, try again later"))
                }
                Outcome::Failed(_) if pool.config.on_failure == OnFailure::Accept => Decision::Continue,
                Outcome::Failed(_) => Decision::Refuse(Reply::new(
                    451,
                    Enhanced(4, 7, 1),
                    format!("Content scanner {} unavailable, try again later", pool.config.name),
                )),
                Outcome::Said(Said::Accept { headers, .. }) => {
                    add_headers(env, headers, &pool.config.name);
                    Decision::Continue
                }
                Outcome::Said(Said::Reject { reason, .. }) => {
                    // clamd refuses viruses; spamd, rspamd and pipe
                    // filters (content filters) refuse spam.
                    crate::stats::count(match pool.config.kind {
                        crate::config::ScannerKind::Clamd => crate::stats::Class::Virus,
                        _ => crate::stats::Class::Spam,
                    });
                    Decision::Refuse(Reply::new(
                    550,
                    Enhanced(5, 7, 1),
                    format!("Message refused by {}: {}", pool.config.name, bounded(reason)),
                ))
                }
                Outcome::Said(Said::Tempfail { reason }) => Decision::Refuse(Reply::new(
                    451,
                    Enhanced(4, 7, 1),
                    format!("Message deferred by {}: {}", pool.config.name, bounded(reason)),
                )),
            };
            let score = match &said {
                Outcome::Said(Said::Accept { score: Some(s), .. } | Said::Reject { score: Some(s), .. }) => s.as_str(),
                _ => "",
            };
            let reason = match &said {
                Outcome::Failed(why) => why.as_str(),
                Outcome::Said(Said::Reject { reason, .. } | Said::Tempfail { reason }) => reason.as_str(),
                _ => "",
            };
            let reply = match &decision {
                Decision::Continue => String::new(),
                Decision::Refuse(reply) => reply.summary(),
            };
            log::event(
                "scan",
                &[
                    ("id", &env.id),
                    ("scanner", &pool.config.name),
                    ("verdict", &what),
                    ("score", &score),
                    ("reason", &reason),
                    ("latency_ms", &started.elapsed().as_millis()),
                    ("reply", &reply),
                ],
            );
            if let Decision::Refuse(_) = decision {
                return decision;
            }
        }
        Decision::Continue
    }
}

/// What one scanner did with one message.
#[derive(Debug)]
enum Outcome {
    /// Larger than its `max_size_bytes`.
    Skipped,
    /// Its pool and wait queue were full.
    Busy,
    /// It could not be asked, or did not answer in time (the reason).
    Failed(String),
    Said(Said),
}

impl Pool {
    /// Waits for a slot (within the scanner's time limit, its queue
    /// bounded) and scans: the outcome and its name for the log.
    async fn scan(&self, env: &Envelope, stored: &StoredBody) -> (Outcome, String) {
        if self.config.max_size_bytes.is_some_and(|max| env.size_bytes > max) {
            return (Outcome::Skipped, "skipped".to_string());
        }
        let free = self.running.get() < self.config.max_concurrent;
        if !free && self.waiting.get() >= self.config.queue_max {
            return (Outcome::Busy, "busy".to_string());
        }
        let timeout = self.config.timeout.0;
        let work = async {
            let permit = {
                let _waiting = Counted::new(&self.waiting);
                self.slots.acquire_permit(1).await
            };
            let Ok(_permit) = permit else {
                return Err("the scanner's pool is closed".to_string());
            };
            let _running = Counted::new(&self.running);
            let message = Message { env, stored };
            match (&self.target, self.config.kind) {
                (Target::Address(address), ScannerKind::Spamd) => {
                    let params = SpamdParams {
                        address: address.clone(),
                        reject_score: self.config.reject_score.map(|s| s.as_f64()),
                        user: None,
                    };
                    spamd::scan(&params, message).await
                }
                (Target::Address(address), ScannerKind::Rspamd) => {
                    rspamd::scan(&RspamdParams { address: address.clone() }, message).await
                }
                (Target::Address(address), _) => clamd::scan(&ClamdParams { address: address.clone() }, message).await,
                (Target::Program(Ok(params)), _) => pipe::scan(params, message).await,
                (Target::Program(Err(e)), _) => Err(e.clone()),
            }
        };
        let result = glommio::timer::timeout(timeout, async { Ok(work.await) }).await;
        match result {
            Ok(Ok(said)) => {
                let what = match &said {
                    Said::Accept { .. } => "accept",
                    Said::Reject { .. } => "reject",
                    Said::Tempfail { .. } => "tempfail",
                };
                (Outcome::Said(said), what.to_string())
            }
            Ok(Err(e)) => (Outcome::Failed(e), "failed".to_string()),
            Err(_) => (Outcome::Failed(format!("no verdict within {} ms", timeout.as_millis())), "timeout".to_string()),
        }
    }
}

/// Counts a waiting or running scan while it lives (a scan given up at
/// its time limit is dropped wherever it is, and uncounted then).
struct Counted<'a>(&'a Cell<usize>);

impl<'a> Counted<'a> {
    fn new(count: &'a Cell<usize>) -> Counted<'a> {
        count.set(count.get() + 1);
        Counted(count)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().checked_sub(1).expect("scan count below zero"));
    }
}

/// Appends a scanner's header lines to the envelope's, as long as they
/// fit the record (`queue_format::HEADERS_PREPENDED_SIZE_BYTES_MAX`); a
/// line with CR or LF in it, or one that does not fit, is left out.
fn add_headers(env: &mut Envelope, headers: &[String], scanner: &str) {
    for line in headers {
        let clean = !line.is_empty() && !line.contains(['\r', '\n']) && line.contains(':');
        let fits = env.headers_prepended.len() + line.len() + 2 <= queue_format::HEADERS_PREPENDED_SIZE_BYTES_MAX;
        if !(clean && fits) {
            log::event("scan_header_dropped", &[("id", &env.id), ("scanner", &scanner), ("line", line)]);
            continue;
        }
        env.headers_prepended.extend_from_slice(line.as_bytes());
        env.headers_prepended.extend_from_slice(b"\r\n");
    }
}

fn bounded(text: &str) -> String {
    let one_line: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if one_line.len() <= REASON_BYTES_MAX {
        return one_line;
    }
    let mut end = REASON_BYTES_MAX;
    while !one_line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &one_line[..end])
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use crate::testing::{self, RawClient};

    const START_MS: u64 = 1_800_000_000_000;

    /// A clamd on 127.0.0.1 that reads each INSTREAM whole, waits
    /// `delay_ms`, and answers `answer`; counts the streams it read.
    fn fake_clamd(answer: &'static str, delay_ms: u64) -> (u16, Arc<AtomicUsize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut command = [0u8; 10];
                    if stream.read_exact(&mut command).is_err() || &command != b"zINSTREAM\0" {
                        return;
                    }
                    loop {
                        let mut size = [0u8; 4];
                        if stream.read_exact(&mut size).is_err() {
                            return;
                        }
                        let size = u32::from_be_bytes(size) as usize;
                        if size == 0 {
                            break;
                        }
                        let mut chunk = vec![0u8; size];
                        if stream.read_exact(&mut chunk).is_err() {
                            return;
                        }
                    }
                    seen.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(delay_ms));
                    let _ = stream.write_all(answer.as_bytes());
                });
            }
        });
        (port, count)
    }

    fn scanner(port: u16, extra: &str) -> String {
        format!("[[scanner]]\nname = \"av\"\nkind = \"clamd\"\naddress = \"127.0.0.1:{port}\"\n{extra}\n")
    }

    async fn listen(shard: &std::rc::Rc<crate::shard::Shard>) -> u16 {
        let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        glommio::spawn_local(crate::ingress::accept_loop(shard.clone(), listener, crate::ingress::listener::Listening::mx(shard))).detach();
        port
    }

    /// One message through a session: the reply to its final dot.
    fn send(port: u16, body: &str) -> String {
        let mut c = RawClient::connect(port);
        c.reply();
        c.command(b"EHLO client.test\r\n");
        c.command(b"MAIL FROM:<a@example.org>\r\n");
        c.command(b"RCPT TO:<bob@localhost>\r\n");
        c.command(b"DATA\r\n");
        let reply = c.command(format!("Subject: t\r\n\r\n{body}\r\n.\r\n").as_bytes());
        c.command(b"QUIT\r\n");
        reply
    }

    #[test]
    fn a_virus_is_refused_at_the_final_dot_and_nothing_is_committed() {
        let (scanner_port, scanned) = fake_clamd("stream: Eicar-Test-Signature FOUND\0", 0);
        testing::run(move || {
            Box::pin(async move {
                let dir = testing::tempdir("scan-virus");
                let t = testing::shard(testing::config(&dir, &scanner(scanner_port, "")), START_MS).await;
                let port = listen(&t.shard).await;
                let reply = testing::client(move || send(port, "X5O!P%@AP")).await;
                assert_eq!(reply, "550 5.7.1 Message refused by av: virus Eicar-Test-Signature found\r\n");
                assert_eq!(scanned.load(Ordering::SeqCst), 1);
                testing::settle(50).await;
                assert_eq!(t.shard.queue.live_count(), 0, "a refused message leaves nothing live");
            })
        });
    }

    #[test]
    fn a_clean_message_is_committed_with_the_scanners_header_line() {
        let (scanner_port, _) = fake_clamd("stream: OK\0", 0);
        testing::run(move || {
            Box::pin(async move {
                let dir = testing::tempdir("scan-clean");
                let t = testing::shard(testing::config(&dir, &scanner(scanner_port, "")), START_MS).await;
                let port = listen(&t.shard).await;
                let reply = testing::client(move || send(port, "hello")).await;
                assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
                let env = t.shard.queue.take().await.unwrap();
                assert_eq!(env.headers_prepended, b"X-Virus-Scanned: clamd\r\n");
                let crate::queue::Body::Inline(body) = &env.body else { panic!("inline") };
                assert!(body.ends_with(b"Subject: t\r\n\r\nhello\r\n"), "the stored content is not rewritten");
            })
        });
    }

    /// One slot and one place in the queue: with two messages scanning,
    /// the third final dot gets 451 at once; a message too large for the
    /// scanner is not held up at all.
    #[test]
    fn a_full_pool_answers_451_at_once() {
        let (scanner_port, scanned) = fake_clamd("stream: OK\0", 600);
        testing::run(move || {
            Box::pin(async move {
                let dir = testing::tempdir("scan-busy");
                let extra = scanner(scanner_port, "max_concurrent = 1\nqueue_max = 1\nmax_size_bytes = 300");
                let t = testing::shard(testing::config(&dir, &extra), START_MS).await;
                let port = listen(&t.shard).await;
                let results = testing::client(move || {
                    let threads: Vec<_> = (0..2).map(|_| std::thread::spawn(move || send(port, "hello"))).collect();
                    std::thread::sleep(Duration::from_millis(200));
                    let started = std::time::Instant::now();
                    let third = send(port, "hello");
                    let third_ms = started.elapsed().as_millis();
                    let started = std::time::Instant::now();
                    let large = send(port, &"x".repeat(400));
                    let large_ms = started.elapsed().as_millis();
                    let first: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
                    (first, third, third_ms, large, large_ms)
                })
                .await;
                let (first, third, third_ms, large, large_ms) = results;
                assert!(first.iter().all(|r| r.starts_with("250 ")), "{first:?}");
                assert_eq!(third, "451 4.7.1 Content scanner busy, try again later\r\n");
                assert!(third_ms < 300, "at once: {third_ms} ms");
                assert!(large.starts_with("250 "), "{large}");
                assert!(large_ms < 300, "not scanned, not queued: {large_ms} ms");
                assert_eq!(scanned.load(Ordering::SeqCst), 2);
            })
        });
    }

    #[test]
    fn a_scanner_that_is_down_tempfails_or_is_passed_over() {
        let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        testing::run(move || {
            Box::pin(async move {
                let dir = testing::tempdir("scan-down");
                let t = testing::shard(testing::config(&dir, &scanner(down, "")), START_MS).await;
                let port = listen(&t.shard).await;
                let reply = testing::client(move || send(port, "hello")).await;
                assert_eq!(reply, "451 4.7.1 Content scanner av unavailable, try again later\r\n");
                let dir = testing::tempdir("scan-down-accept");
                let t =
                    testing::shard(testing::config(&dir, &scanner(down, "on_failure = \"accept\"")), START_MS).await;
                let port = listen(&t.shard).await;
                let reply = testing::client(move || send(port, "hello")).await;
                assert!(reply.starts_with("250 "), "{reply}");
                let env = t.shard.queue.take().await.unwrap();
                assert!(env.headers_prepended.is_empty());
            })
        });
    }

    #[test]
    fn a_slow_scanner_times_out_to_on_failure() {
        let (scanner_port, _) = fake_clamd("stream: OK\0", 2_000);
        testing::run(move || {
            Box::pin(async move {
                let dir = testing::tempdir("scan-slow");
                let t = testing::shard(testing::config(&dir, &scanner(scanner_port, "timeout = \"300ms\"")), START_MS)
                    .await;
                let port = listen(&t.shard).await;
                let started = std::time::Instant::now();
                let reply = testing::client(move || send(port, "hello")).await;
                assert_eq!(reply, "451 4.7.1 Content scanner av unavailable, try again later\r\n");
                assert!(started.elapsed() < Duration::from_millis(1_500));
            })
        });
    }
}
