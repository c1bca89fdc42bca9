"""Overload, in the suite's size (perf/overload does the recorded runs with
10,000 sessions, docs/reliability.md): slow-loris sessions that never finish
a line beside a live session, the session limit refusing the surplus, and a
delivery backlog (next hop down) beside acceptance.

The live-latency bound here is looser than perf/overload's 2x: the suite
shares the machine with its own other processes, so a single scheduling
hiccup must not fail it; the bound still fails a server that serves the live
session after the loris ones (a round over every session per reply)."""

import importlib.machinery
import importlib.util
import json
import resource
import smtplib
import subprocess
import sys
import time

import pytest

import conftest
from conftest import ROOT, free_port, wait_for
from crashkit import BIN_DIR, Sink, missing_binaries

LORIS_SESSIONS = 1500

# Latencies with and without the load are compared: nothing else may run.
pytestmark = pytest.mark.timing


def load_overload():
    loader = importlib.machinery.SourceFileLoader("perf_overload", str(ROOT / "perf" / "overload"))
    spec = importlib.util.spec_from_loader("perf_overload", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


overload = load_overload()


@pytest.fixture(autouse=True)
def tools(monkeypatch):
    if missing := missing_binaries():
        pytest.fail(f"missing {', '.join(missing)} (cargo build --profile {conftest.PROFILE} --workspace --bins)")
    monkeypatch.setattr(conftest, "RINGPOST", BIN_DIR / "ringpost")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = LORIS_SESSIONS + 2048
    if hard < want:
        pytest.skip(f"the file-descriptor limit {hard} is below {want}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))


@pytest.fixture
def sink(tmp_path):
    s = Sink(tmp_path / "sinks", "hop")
    yield s
    s.stop()


class Loris:
    """perf/overload's slow-loris child: `count` sessions, one octet each
    every `interval_s`, never a whole line."""

    def __init__(self, port, count, path, interval_s=2.0):
        self.path = path
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "perf" / "overload"), "--loris-child", str(port),
                                      str(count), str(interval_s), str(path)])
        self.opened = overload.wait_loris(path, "greeted", timeout_s=60)

    def state(self):
        return overload.last_loris(self.path)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def test_slow_loris_sessions_leave_a_live_session_alone(ringpost, sink, tmp_path):
    rp = ringpost({"delivery.smarthost": f'"127.0.0.1:{sink.port}"'})
    unloaded = overload.live_session(rp.port, 200)
    rss_before = overload.rss_kib(rp.proc.pid)
    loris = Loris(rp.port, LORIS_SESSIONS, tmp_path / "loris.jsonl")
    try:
        assert loris.opened["greeted"] == LORIS_SESSIONS, loris.opened
        # Every loris session has sent octets of its EHLO line at least once.
        wait_for(lambda: (loris.state() or {}).get("round", 0) >= 2, timeout_s=20, what="two loris rounds")
        rss_loaded = overload.rss_kib(rp.proc.pid)
        loaded = overload.live_session(rp.port, 200)
        state = loris.state()
    finally:
        loris.stop()
    print(f"\nslow loris: {LORIS_SESSIONS} sessions, RSS {rss_before} -> {rss_loaded} KiB; live session "
          f"unloaded {unloaded}, loaded {loaded}; loris at the end {state}")
    assert unloaded["failures"] == 0 and loaded["failures"] == 0, (unloaded, loaded)
    assert loaded["transactions"] == 200
    assert state["open"] == LORIS_SESSIONS and state["closed"] == 0, state
    for what in ("mail_p99_us", "txn_p99_us"):
        bound = max(2 * unloaded[what], unloaded[what] + 20_000)
        assert loaded[what] <= bound, f"loaded {what} {loaded[what]} µs above {bound} (unloaded {unloaded})"
    kib_per_session = (rss_loaded - rss_before) / LORIS_SESSIONS
    assert kib_per_session < 32, f"{kib_per_session:.1f} KiB of RSS per slow-loris session"
    assert rp.proc.poll() is None


def test_the_session_limit_refuses_the_surplus_with_421(ringpost, sink, tmp_path):
    rp = ringpost({"delivery.smarthost": f'"127.0.0.1:{sink.port}"', "server.max_sessions_per_shard": "100"})
    loris = Loris(rp.port, 300, tmp_path / "loris.jsonl")
    try:
        opened = loris.opened
    finally:
        loris.stop()
    # Two shards of 100 sessions each; SO_REUSEPORT spreads connections by
    # a hash of the address pair, so a shard may fill a little before the other.
    assert 150 <= opened["greeted"] <= 200, opened
    assert opened["greeted"] + opened["refused_421"] == 300, opened
    # Once they are gone, a session gets in again.
    def one_transaction():
        try:
            return overload.live_session(rp.port, 1)["transactions"] == 1
        except (OSError, smtplib.SMTPException):
            return False
    wait_for(one_transaction, timeout_s=20, what="a session again")


def test_a_delivery_backlog_leaves_acceptance_alone(ringpost):
    # The next hop is down (nothing listens); retries come every second or two.
    hop_port = free_port()
    rp = ringpost({"delivery.smarthost": f'"127.0.0.1:{hop_port}"', "delivery.connect_timeout": '"1s"'})
    rate, duration_s = 100, 20
    load = subprocess.Popen(
        [str(BIN_DIR / "ringpost-blast"), f"127.0.0.1:{rp.port}", "--duration", f"{duration_s}s",
         "--connections", "8", "--rate", str(rate), "--size", "1k:90,100k:10", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples = []
    while load.poll() is None:
        samples.append(overload.rss_kib(rp.proc.pid))
        time.sleep(1)
    out, err = load.communicate()
    assert load.returncode == 0, err
    report = json.loads(out)
    queued = rp.queue_live()
    print(f"\nbacklog: accepted {report['accepted']} of {report['attempted']} at {report['accepted_per_s']:.0f}/s, "
          f"final-dot p99 {report['latency_us']['p99']} µs, queued {queued}, RSS samples (KiB) {samples}")
    assert report["accepted"] == report["attempted"] and not report["errors"], report
    assert report["accepted"] >= 0.9 * rate * duration_s, report
    assert queued >= report["accepted"], "the deferred mail must still be queued"
    assert "event=delivery" in rp.log_text() and "status=deferred" in rp.log_text()
    growth_kib = max(samples) - samples[0]
    assert growth_kib < 64 * 1024, f"RSS grew {growth_kib} KiB with {queued} messages queued: {samples}"
