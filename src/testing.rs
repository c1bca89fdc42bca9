//! Test helpers for the socket drivers (ingress, delivery, outbound): a
//! shard assembled from its real parts on a temporary spool and a manual
//! clock, an SMTP client that speaks exact bytes, and a scripted SMTP peer
//! that records every line it receives. Both peers run on their own
//! threads with blocking std sockets on 127.0.0.1, so the shard's executor
//! is the only async code involved.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use glommio::{Latency, Shares};
use queue_format::LogKind;

use crate::clock::{Clock, ManualClock};
use crate::config::Config;
use crate::deliver::attempt::Deliverer;
use crate::deliver::engine::Delivery;
use crate::queue::{Queue, QueueParams};
use crate::shard::Shard;

/// A pending envelope from <sender@example.org> to `to`, arrived at
/// `now_ms`, its body to be filled in by the commit.
pub fn envelope(id: &str, to: &[&str], now_ms: u64) -> crate::queue::Envelope {
    use crate::queue::{stored_address, Body, Envelope, RcptState, Recipient};
    Envelope {
        id: id.to_string(),
        sender: crate::smtp::address::ReversePath::Path(
            stored_address("sender@example.org").unwrap(),
        ),
        recipients: to
            .iter()
            .map(|a| Recipient {
                address: stored_address(a).unwrap(),
                state: RcptState::Pending,
                last_reply: String::new(),
                folder: None,
                dsn: Default::default(),
            })
            .collect(),
        arrival_unix_ms: now_ms,
        next_retry_unix_ms: now_ms,
        attempt_count: 0,
        size_bytes: 0,
        body_8bit: false,
        body_binary: false,
        smtputf8: false,
        client: "127.0.0.1".into(),
        helo: "client.test".into(),
        body: Body::Inline(Default::default()),
        headers_prepended: Vec::new(),
        replica_of: None,
        held: false,
        auth: None,
            dsn: Default::default(),
            delay_warned: false,
    }
}

/// A fresh directory under the system's temp dir.
pub fn tempdir(name: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("ringpost-driver-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A configuration for a test shard: spool and Maildirs under `dir`, plus
/// the given TOML lines (sections other than those written here).
pub fn config(dir: &Path, extra: &str) -> Arc<Config> {
    config_with(dir, extra, &[])
}

/// The same with `--set key=value` overrides.
pub fn config_with(dir: &Path, extra: &str, overrides: &[&str]) -> Arc<Config> {
    let text = format!(
        "[server]\nhostname = \"mx.test\"\nshards = 1\npin = false\n\
         [queue]\nspool = [\"{spool}\"]\nretry_lags = [\"10m\", \"1h\"]\nsegment_size_bytes = 1048576\n\
         [local]\nmaildir = \"{mail}/{{user}}/Maildir\"\n[dns]\nservers = [\"127.0.0.1:1\"]\n{extra}",
        spool = dir.join("spool").display(),
        mail = dir.join("mail").display(),
    );
    let overrides: Vec<String> = overrides.iter().map(|o| o.to_string()).collect();
    Arc::new(
        crate::config::load_str(Path::new("test.toml"), &text, &overrides)
            .expect("test configuration"),
    )
}

/// The pieces of one shard, running on the current executor.
pub struct TestShard {
    pub shard: Rc<Shard>,
    pub manual: Rc<ManualClock>,
}

/// Opens the queue (with its committers and runners running) and builds
/// the shard around it; delivery is built but not started.
pub async fn shard(config: Arc<Config>, start_unix_ms: u64) -> TestShard {
    shard_in_mesh(config, start_unix_ms, 0, None).await
}

/// The same as shard `index` of several, its callouts connected to the
/// others' by `mesh` (see `crate::verify::mesh`; its requests are served).
pub async fn shard_in_mesh(
    config: Arc<Config>,
    start_unix_ms: u64,
    index: usize,
    mesh: Option<crate::verify::MeshEnd>,
) -> TestShard {
    let (clock, manual) = Clock::manual(start_unix_ms);
    let queue = Queue::open(
        &config.queue.spool[0],
        0,
        QueueParams::from_config(&config),
        clock.clone(),
    )
    .await
    .unwrap();
    for kind in [LogKind::Head, LogKind::Retry] {
        glommio::spawn_local(queue.clone().run_committer(kind)).detach();
    }
    for runner in 0..queue.params().retry_lags.len() {
        glommio::spawn_local(queue.clone().run_runner(runner)).detach();
    }
    let dns = crate::dns::params_for(&config.dns).unwrap();
    let deliverer = Rc::new(
        Deliverer::new(
            config.clone(),
            queue.clone(),
            0,
            dns,
            crate::tls::client_config(),
        )
        .unwrap(),
    );
    let delivery = Rc::new(Delivery::new(
        config.clone(),
        queue.clone(),
        deliverer.clone(),
    ));
    let stages = crate::scan::Stages::new(
        Some(crate::scan::scanners::Scanners::new(&config, queue.clone())),
        crate::scan::early::EarlyDelivery::new(deliverer.clone(), config.delivery.early_ms),
        None,
    );
    let verifier = Rc::new(crate::verify::Verifier::new(index, config.clone(), deliverer, clock.clone(), mesh));
    glommio::spawn_local(verifier.clone().serve()).detach();
    let executor = glommio::executor();
    let tq_smtp = executor.create_task_queue(Shares::Static(1000), Latency::NotImportant, "smtp");
    let tq_delivery =
        executor.create_task_queue(Shares::Static(250), Latency::NotImportant, "delivery");
    let shard = Rc::new(Shard::new(
        0,
        config,
        queue,
        delivery,
        stages,
        [tq_smtp, tq_delivery],
        None,
        verifier,
        crate::scan::replicate::Held::new(1, 0),
    ));
    TestShard { shard, manual }
}

/// Runs `test` on a new executor and waits for it.
pub fn run(
    test: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> + Send + 'static,
) {
    glommio::LocalExecutorBuilder::default()
        .spawn(move || test())
        .unwrap()
        .join()
        .unwrap();
}

/// Lets the executor run other tasks for a while of real time.
pub async fn settle(ms: u64) {
    glommio::timer::sleep(Duration::from_millis(ms)).await;
}

/// Runs a blocking client on its own thread while the executor goes on;
/// returns its result.
pub async fn client<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    let handle = std::thread::spawn(work);
    while !handle.is_finished() {
        settle(5).await;
    }
    handle.join().expect("client thread")
}

/// A blocking SMTP client speaking exact bytes.
pub struct RawClient {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl RawClient {
    pub fn connect(port: u16) -> RawClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        RawClient { stream, reader }
    }

    /// One reply, all its lines.
    pub fn reply(&mut self) -> String {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                return text;
            }
            text.push_str(&line);
            if line.as_bytes().get(3) == Some(&b' ') {
                return text;
            }
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn command(&mut self, bytes: &[u8]) -> String {
        self.send(bytes);
        self.reply()
    }
}

/// How the scripted peer answers a command: by the command's first word
/// (`MAIL`, `RCPT`, `DATA`, ...) and, for RCPT, the nth RCPT it has seen.
pub type Script = dyn Fn(&str, usize) -> String + Send + Sync;

/// A scripted SMTP server: every line it receives, per connection.
pub struct Peer {
    pub port: u16,
    pub transcript: Arc<Mutex<Vec<Vec<String>>>>,
}

impl Peer {
    /// Listens on 127.0.0.1; `script` answers each command (after the
    /// default greeting and EHLO reply; `DATA` gets 354, then the script's
    /// answer to `.` at the end of the content).
    pub fn start(script: Arc<Script>) -> Peer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let transcript = Arc::new(Mutex::new(Vec::new()));
        let seen = transcript.clone();
        std::thread::spawn(move || {
            let rcpt_count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (seen, script, rcpt_count) = (seen.clone(), script.clone(), rcpt_count.clone());
                std::thread::spawn(move || serve(stream, &seen, &*script, &rcpt_count));
            }
        });
        Peer { port, transcript }
    }

    pub fn connections(&self) -> Vec<Vec<String>> {
        self.transcript.lock().unwrap().clone()
    }

    /// Lines of every connection whose first word is `verb`.
    pub fn commands(&self, verb: &str) -> Vec<String> {
        self.connections()
            .concat()
            .into_iter()
            .filter(|line| line.starts_with(verb))
            .collect()
    }
}

fn serve(
    stream: TcpStream,
    seen: &Mutex<Vec<Vec<String>>>,
    script: &Script,
    rcpt_count: &std::sync::atomic::AtomicUsize,
) {
    let index = {
        let mut all = seen.lock().unwrap();
        all.push(Vec::new());
        all.len() - 1
    };
    let record = |line: &str| seen.lock().unwrap()[index].push(line.to_string());
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let _ = writer.write_all(b"220 peer.test ESMTP\r\n");
    let mut in_data = false;
    // Recipients accepted in the current transaction: DATA without one is
    // refused, as a real server does.
    let mut accepted = 0usize;
    loop {
        let mut raw = Vec::new();
        match reader.by_ref().take(100_000).read_until(b'\n', &mut raw) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&raw)
            .trim_end_matches(['\r', '\n'])
            .to_string();
        if in_data {
            if line == "." {
                in_data = false;
                record(".");
                let _ = writer.write_all(script(".", 0).as_bytes());
            } else {
                record(&format!("|{line}"));
            }
            continue;
        }
        record(&line);
        let verb = line
            .split([' ', ':'])
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let answer = match verb.as_str() {
            "EHLO" => {
                "250-peer.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"
                    .to_string()
            }
            "DATA" if accepted == 0 => "554 5.5.1 no valid recipients\r\n".to_string(),
            "DATA" => {
                in_data = true;
                "354 go ahead\r\n".to_string()
            }
            "QUIT" => {
                let _ = writer.write_all(b"221 bye\r\n");
                return;
            }
            "RSET" | "NOOP" => {
                accepted = 0;
                "250 2.0.0 ok\r\n".to_string()
            }
            "MAIL" => {
                accepted = 0;
                script("MAIL", 0)
            }
            "RCPT" => {
                let answer = script(
                    "RCPT",
                    rcpt_count.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
                );
                if answer.starts_with('2') {
                    accepted += 1;
                }
                answer
            }
            other => script(other, 0),
        };
        let _ = writer.write_all(answer.as_bytes());
    }
}
