"""What the kill -9 tests share: the load tools (ringpost-blast, ringpost-sink)
as processes, and the sink's log of the ids it received, cut into ringpost's
lifetimes. Used by test_crash.py (22 rounds in the suite), test_faults.py and
tests/soak (1,000 rounds, outside the suite).

Nothing here looks at the spool: a test built on it sees only SMTP, the
sinks' logs of ids and ringpost's exit codes."""

import bisect
import json
import os
import re
import subprocess
import time
from pathlib import Path

import conftest
from conftest import ROOT, wait_port

BIN_DIR = conftest.BIN_DIR
TOOLS = ("ringpost", "ringpost-blast", "ringpost-sink")


def missing_binaries():
    """The load tools not built in BIN_DIR (an empty list when all are)."""
    return [str(BIN_DIR / tool) for tool in TOOLS if not (BIN_DIR / tool).is_file()]


class SinkLog:
    """The ids ringpost-sink appended to its --log-ids file, one per line,
    with marks at the ends of ringpost's lifetimes ("epochs")."""

    def __init__(self, path: Path):
        self.path = path
        self.marks = []

    def ids(self):
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        # The sink writes each line in one O_APPEND write; a line still
        # being written has no newline yet.
        return data[:data.rfind(b"\n") + 1].decode().split()

    def mark(self):
        """Ends the current epoch: what the sink logged so far belongs to it."""
        self.marks.append(len(self.ids()))

    def epoch_of(self, line_index):
        return bisect.bisect_right(self.marks, line_index)


class Sink:
    """One ringpost-sink process on a free loopback port, logging the id of
    every message it accepts to `ids.log` in its directory; `policy` are
    its refusal options (`--rcpt-reject 1`, `--rcpt-tempfail 0.5`...)."""

    def __init__(self, workdir: Path, name: str, policy=(), port=0):
        workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log = SinkLog(workdir / f"{name}-ids.log")
        self.out = open(workdir / f"{name}.out", "w+")
        self.err = open(workdir / f"{name}.err", "w")
        self.proc = subprocess.Popen(
            [str(BIN_DIR / "ringpost-sink"), "--listen", f"127.0.0.1:{port}", "--log-ids", str(self.log.path),
             "--report-interval", "0s", "--hostname", f"{name}.test", "--json", *policy],
            stdout=self.out, stderr=self.err)
        self.port = wait_for_listening(self.proc, self.out)
        wait_port(self.port, proc=self.proc)

    def stop(self):
        """Stops the sink: its final totals (a dict), None if it printed none."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.out.closed:
            return None
        self.out.seek(0)
        totals = None
        for line in self.out.read().splitlines():
            if line.startswith("{"):
                try:
                    totals = json.loads(line)
                except ValueError:
                    pass
        self.out.close()
        self.err.close()
        return totals


def wait_for_listening(sink, out, timeout_s=15):
    """The port from the sink's `listening ADDR` line."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out.seek(0)
        m = re.search(r"listening \S+:(\d+)", out.read())
        if m:
            return int(m.group(1))
        if sink.poll() is not None:
            raise RuntimeError(f"ringpost-sink exited with {sink.returncode}")
        time.sleep(0.02)
    raise TimeoutError("ringpost-sink did not print its address")


def blast_problem(rc, out, err):
    """None if blast ended well (its accepted log is then complete: it is
    flushed at the end of the run), else what went wrong."""
    if rc != 0:
        return f"exit code {rc}; stderr={err[-1000:]!r}"
    try:
        json.loads(out)
    except ValueError:
        return f"no JSON report; stdout={out[-500:]!r} stderr={err[-1000:]!r}"
    return None
