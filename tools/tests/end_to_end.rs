//! End-to-end tests of the load tools: a real `ringpost-sink` child process
//! on a loopback port, real `ringpost-blast` runs against it, and a tiny
//! `seekbench` run. Counts and accepted ids must agree on both sides.

use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringpost-tools-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Sink {
    child: Child,
    addr: String,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Sink {
    fn start(log_ids: &PathBuf, extra: &[&str]) -> Sink {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ringpost-sink"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--json",
                "--report-interval",
                "0s",
                "--log-ids",
            ])
            .arg(log_ids)
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start ringpost-sink");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .expect("listening line")
            .to_string();
        Sink { child, addr, stdout }
    }

    /// Sends SIGTERM and returns the final totals.
    fn stop(mut self) -> Value {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) }, 0);
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).unwrap();
        assert!(self.child.wait().unwrap().success());
        serde_json::from_str(rest.lines().last().expect("totals line")).expect("totals JSON")
    }
}

impl Drop for Sink {
    /// A failed test must not leave a sink running.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn blast(addr: &str, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_ringpost-blast"))
        .arg(addr)
        .arg("--json")
        .args(args)
        .output()
        .expect("run ringpost-blast");
    assert!(
        out.status.success(),
        "blast failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("blast JSON")
}

fn id_set(path: &PathBuf) -> BTreeSet<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn blast_against_sink(name: &str, pipelining: &str, messages_per_connection: &str) {
    let dir = scratch_dir(name);
    let (sink_ids, blast_ids) = (dir.join("sink-ids"), dir.join("blast-ids"));
    let sink = Sink::start(&sink_ids, &[]);
    let report = blast(
        &sink.addr,
        &[
            "--count",
            "200",
            "--connections",
            "10",
            "--pipelining",
            pipelining,
            "--messages-per-connection",
            messages_per_connection,
            "--size",
            "1k:80,20k:20",
            "--recipients",
            "1:80,3:20",
            "--log-accepted",
            blast_ids.to_str().unwrap(),
        ],
    );
    let totals = sink.stop();
    assert_eq!(report["attempted"], 200, "{report}");
    assert_eq!(report["completed"], 200, "{report}");
    assert_eq!(report["accepted"], 200, "{report}");
    assert_eq!(report["replies"]["final"]["250"], 200);
    assert_eq!(report["errors"].as_object().unwrap().len(), 0, "{report}");
    assert_eq!(totals["messages_accepted"], report["accepted"], "{totals}");
    assert_eq!(
        totals["rcpt_accepted"], report["replies"]["rcpt"]["250"],
        "{totals}"
    );
    assert_eq!(totals["connections"], report["connections_opened"], "{totals}");
    assert_eq!(totals["messages_without_id"], 0);
    let opened = report["connections_opened"].as_u64().unwrap();
    if messages_per_connection == "1" {
        assert_eq!(opened, 200);
    } else {
        assert!(opened <= 10, "{opened}");
    }
    let (a, b) = (id_set(&blast_ids), id_set(&sink_ids));
    assert_eq!(a.len(), 200);
    assert_eq!(a, b);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn pipelined_new_connection_per_message() {
    blast_against_sink("pipe-new", "on", "1");
}

#[test]
fn pipelined_reused_connections() {
    blast_against_sink("pipe-reuse", "on", "0");
}

#[test]
fn lockstep_new_connection_per_message() {
    blast_against_sink("lock-new", "off", "1");
}

#[test]
fn lockstep_reused_connections() {
    blast_against_sink("lock-reuse", "off", "0");
}

#[test]
fn rcpt_reject_gives_only_5xx_at_rcpt() {
    for pipelining in ["on", "off"] {
        let dir = scratch_dir(&format!("reject-{pipelining}"));
        let sink_ids = dir.join("sink-ids");
        let sink = Sink::start(&sink_ids, &["--rcpt-reject", "1.0", "--seed", "3"]);
        let report = blast(
            &sink.addr,
            &["--count", "50", "--connections", "5", "--pipelining", pipelining],
        );
        let totals = sink.stop();
        let rcpt = report["replies"]["rcpt"].as_object().unwrap();
        assert!(!rcpt.is_empty());
        assert!(rcpt.keys().all(|code| code.starts_with('5')), "{report}");
        assert_eq!(report["accepted"], 0);
        assert_eq!(report["replies"]["final"].as_object().unwrap().len(), 0);
        assert_eq!(report["errors"].as_object().unwrap().len(), 0, "{report}");
        assert_eq!(totals["rcpt_rejected"], 50);
        assert_eq!(totals["messages_accepted"], 0);
        assert_eq!(std::fs::read_to_string(&sink_ids).unwrap_or_default(), "");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn data_shares_are_seeded_and_counted() {
    let dir = scratch_dir("data-shares");
    let (sink_ids, blast_ids) = (dir.join("sink-ids"), dir.join("blast-ids"));
    let sink = Sink::start(
        &sink_ids,
        &["--data-reject", "0.2", "--data-tempfail", "0.2", "--seed", "9"],
    );
    let report = blast(
        &sink.addr,
        &[
            "--count",
            "300",
            "--connections",
            "8",
            "--log-accepted",
            blast_ids.to_str().unwrap(),
        ],
    );
    let totals = sink.stop();
    let finals = &report["replies"]["final"];
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    assert_eq!(
        n(&finals["250"]) + n(&finals["451"]) + n(&finals["554"]),
        300,
        "{report}"
    );
    assert!(n(&finals["451"]) > 20 && n(&finals["554"]) > 20, "{report}");
    assert_eq!(totals["messages_tempfailed"], finals["451"]);
    assert_eq!(totals["messages_rejected"], finals["554"]);
    assert_eq!(id_set(&blast_ids), id_set(&sink_ids));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn seekbench_tiny_run_reports_three_layouts() {
    let dir = scratch_dir("seek");
    let out = Command::new(env!("CARGO_BIN_EXE_seekbench"))
        .args([
            "--count",
            "50",
            "--concurrency",
            "1,4",
            "--idle-seconds",
            "0",
            "--json",
            "--dir",
        ])
        .arg(&dir)
        .output()
        .expect("run seekbench");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 6);
    let layouts: BTreeSet<&str> = results.iter().map(|r| r["layout"].as_str().unwrap()).collect();
    assert_eq!(
        layouts,
        BTreeSet::from(["log", "file-per-message", "append-fsync"])
    );
    for r in results {
        assert_eq!(r["messages"], 50, "{r}");
        assert!(r["messages_per_s"].as_f64().unwrap() > 0.0);
        assert!(r["flushes_per_message"].as_f64().unwrap() <= 1.0);
    }
    // The run removes its own files.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    std::fs::remove_dir_all(&dir).unwrap();
}
