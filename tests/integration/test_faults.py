"""Real faults under load, end to end: ringpost's spool on a small ext4 file
system of its own (a loop device), many clients at once, and the disk
failing under them.

- Full: the file system fills up while ringpost-blast and smtplib clients
  send; clients get 452 4.3.1, nothing acknowledged is lost, and when space
  returns the same process takes mail again and delivers everything it
  acknowledged, each message exactly once.
- Dead: ext4's own shutdown (every later operation fails with EIO), then
  the loop device loses its backing store. The kernel here has no
  device-mapper driver, and a loop device that lost its store still takes
  data writes, so the shutdown stands in for a dm `error` table;
  docs/reliability.md has the details. Clients get 4xx (451 4.3.0), never a
  250 for a message sent after the disk died, and the log names the error.
- Read-only: the file system turns read-only under load (an ext4 error
  with errors=remount-ro); the same replies.
"""

import collections
import fcntl
import json
import os
import shutil
import smtplib
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

import conftest
from conftest import free_port, missing_tool, wait_for
from crashkit import BIN_DIR, Sink, blast_problem, missing_binaries

# _IOR('X', 125, __u32) and its "do not flush the journal" flag (linux/ext4.h).
EXT4_IOC_SHUTDOWN = 0x8004587D
EXT4_GOING_FLAGS_NOLOGFLUSH = 2


class LoopFs:
    """An ext4 file system on a loop device of its own, mounted."""

    def __init__(self, size_mib, options=None):
        if os.geteuid() != 0 or not shutil.which("losetup") or not shutil.which("mkfs.ext4"):
            missing_tool("the fault tests need root, losetup and mkfs.ext4 (e2fsprogs)")
        self.work = Path(tempfile.mkdtemp(prefix="ringpost-faults-"))
        self.image, self.mount = self.work / "fs.img", self.work / "mnt"
        self.mount.mkdir()
        subprocess.run(["truncate", "-s", f"{size_mib}M", str(self.image)], check=True)
        self.device = subprocess.run(["losetup", "--find", "--show", str(self.image)], check=True,
                                     capture_output=True, text=True).stdout.strip()
        subprocess.run(["mkfs.ext4", "-q", "-F", self.device], check=True)
        subprocess.run(["mount", *(["-o", options] if options else []), self.device, str(self.mount)], check=True)
        self.filler = self.mount / "filler"

    def free_bytes(self):
        st = os.statvfs(self.mount)
        return st.f_bavail * st.f_frsize

    def fill(self, leave_bytes):
        """Takes all but about `leave_bytes` of the free space."""
        take_mib = max(0, (self.free_bytes() - leave_bytes) >> 20)
        subprocess.run(["dd", "if=/dev/zero", f"of={self.filler}", "bs=1M", f"count={take_mib}", "conv=fsync"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def unfill(self):
        self.filler.unlink()

    def kill_device(self):
        """From now on every operation on the file system fails with EIO.

        ext4's own shutdown (EXT4_IOC_SHUTDOWN, NOLOGFLUSH: what xfstests'
        `godown` does) comes first: a loop device whose image was truncated
        and whose capacity was re-read to 0 still takes data writes (the
        block layer skips its end-of-device check for a size of 0; they land
        in the image, which grows again), so an O_DIRECT write into blocks
        already written, and the flush after it, succeed on it; only reads
        and the file system's metadata writes fail. Then the device loses
        its store as well, so nothing later reaches the image."""
        fd = os.open(self.mount, os.O_RDONLY)
        try:
            fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", EXT4_GOING_FLAGS_NOLOGFLUSH))
        finally:
            os.close(fd)
        os.truncate(self.image, 0)
        subprocess.run(["losetup", "--set-capacity", self.device], check=True)

    def turn_read_only(self):
        """An error reported to ext4 (its sysfs `trigger_fs_error`): mounted
        with errors=remount-ro, the file system turns read-only at once."""
        name = os.path.basename(os.path.realpath(self.device))
        Path(f"/sys/fs/ext4/{name}/trigger_fs_error").write_text("ringpost test: turn read-only\n")

    def close(self):
        subprocess.run(["umount", "-l", str(self.mount)], capture_output=True)
        subprocess.run(["losetup", "-d", self.device], capture_output=True)
        shutil.rmtree(self.work, ignore_errors=True)


@pytest.fixture
def loop_fs():
    made = []

    def make(size_mib, **kwargs):
        fs = LoopFs(size_mib, **kwargs)
        made.append(fs)
        return fs

    yield make
    for fs in made:
        fs.close()


@pytest.fixture
def sinks(tmp_path):
    started = []

    def start(name, policy=(), port=0):
        sink = Sink(tmp_path / "sinks", name, policy, port)
        started.append(sink)
        return sink

    yield start
    for sink in started:
        sink.stop()


@pytest.fixture(autouse=True)
def tools(monkeypatch):
    if missing := missing_binaries():
        pytest.fail(f"missing {', '.join(missing)} (cargo build --profile {conftest.PROFILE} --workspace --bins)")
    monkeypatch.setattr(conftest, "RINGPOST", BIN_DIR / "ringpost")


class Clients:
    """Threads of smtplib, each sending messages one after another on its own
    connection (reconnecting after an error) until stopped, recording every
    final reply with the times the final dot was sent and answered."""

    def __init__(self, port, prefix, count, sizes_bytes, recipient="c{n}@example.net"):
        self.port, self.prefix = port, prefix
        self.sizes_bytes = sizes_bytes
        self.recipient = recipient
        self.replies = []  # (id, code, text, sent_at, answered_at)
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(t,), daemon=True) for t in range(count)]
        for th in self.threads:
            th.start()

    def message(self, blast_id, size_bytes):
        head = (f"From: <c@example.org>\r\nTo: <c@example.net>\r\nSubject: fault {blast_id}\r\n"
                f"Message-ID: <{blast_id}@clients.invalid>\r\nX-Blast-Id: {blast_id}\r\n\r\n").encode()
        line = b"x" * 78 + b"\r\n"
        return head + line * max(1, (size_bytes - len(head)) // len(line))

    def run(self, t):
        n = 0
        while not self.stop_event.is_set():
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=20) as s:
                    s.ehlo("clients.test")
                    while not self.stop_event.is_set():
                        blast_id = f"{self.prefix}-t{t}.{n}"
                        body = self.message(blast_id, self.sizes_bytes[n % len(self.sizes_bytes)])
                        n += 1
                        code, text = s.mail("c@example.org")
                        if code != 250:
                            self.record(blast_id, code, text, time.monotonic())
                            s.rset()
                            continue
                        code, text = s.rcpt(self.recipient.replace("{n}", str(n % 7)))
                        if code != 250:
                            self.record(blast_id, code, text, time.monotonic())
                            s.rset()
                            continue
                        code, text = s.data(body)
                        # smtplib sends the content and the dot in one go: the
                        # time before data() returns bounds when it was sent.
                        self.record(blast_id, code, text, time.monotonic())
            except (OSError, smtplib.SMTPException) as e:
                self.record(f"{self.prefix}-t{t}.error", -1, str(e).encode(), time.monotonic())
                time.sleep(0.1)

    def record(self, blast_id, code, text, answered_at):
        with self.lock:
            self.replies.append((blast_id, code, text.decode(errors="replace"), answered_at))

    def stop(self):
        self.stop_event.set()
        for th in self.threads:
            th.join(timeout=60)
            assert not th.is_alive(), "an SMTP client hangs"

    def accepted(self):
        return {r[0] for r in self.replies if r[1] == 250}


def run_blast(port, run_id, log_path, duration_s, connections, sizes):
    args = [str(BIN_DIR / "ringpost-blast"), f"127.0.0.1:{port}", "--duration", f"{duration_s}s",
            "--connections", str(connections), "--size", sizes, "--recipients", "2",
            "--run-id", run_id, "--log-accepted", str(log_path), "--to", "user{n}@example.net",
            "--to-count", "50", "--timeout", "20s", "--json"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def blast_result(proc, log_path, timeout_s):
    out, err = proc.communicate(timeout=timeout_s)
    problem = blast_problem(proc.returncode, out, err)
    assert problem is None, f"ringpost-blast failed: {problem}"
    report = json.loads(out)
    ids = log_path.read_text().split() if log_path.exists() else []
    assert len(ids) == report["accepted"], (len(ids), report["accepted"])
    return report, ids


def final_codes(report):
    """Blast's replies to the final dot: {code: count}."""
    return {int(code): n for code, n in report["replies"].get("final", {}).items()}


def test_a_full_disk_under_load_answers_452_and_loses_nothing(ringpost, loop_fs, sinks, tmp_path):
    fs = loop_fs(96)
    # The next hop is down at first (nothing listens on its port): every
    # message stays queued, so the spool fills.
    hop_port = free_port()
    rp = ringpost({
        "queue.spool": f'["{fs.mount / "spool"}"]',
        "queue.segment_size_bytes": str(4 << 20),
        "delivery.smarthost": f'"127.0.0.1:{hop_port}"',
        "delivery.connect_timeout": '"1s"',
    })
    # Some mail first: the segments exist, deliveries are deferred.
    warm = Clients(rp.port, "warm", 2, [1024])
    wait_for(lambda: len(warm.accepted()) >= 20, what="the first acceptances")
    warm.stop()
    # Leave room for a few dozen 200 KiB messages, then load: 8 blast
    # connections (1 KiB and 200 KiB) and 4 smtplib clients (200 KiB).
    fs.fill(leave_bytes=12 << 20)
    blast_log = tmp_path / "blast-full.log"
    blast = run_blast(rp.port, "full", blast_log, 8, 8, "1k:50,200k:50")
    clients = Clients(rp.port, "full", 4, [200 * 1024, 1024])
    full = wait_for(lambda: [r for r in clients.replies if r[1] == 452], timeout_s=30,
                    what="a 452 from the full disk")
    report, blast_ids = blast_result(blast, blast_log, 60)
    clients.stop()
    code, text = full[0][1], full[0][2]
    assert code == 452 and "4.3.1" in text, full[0]
    codes = final_codes(report)
    assert codes.get(452, 0) > 0, f"blast saw no 452 at the final dot: {report['replies']}"
    assert set(codes) <= {250, 452}, f"replies other than 250 and 452 to the final dot: {report['replies']}"
    other = collections.Counter(r[1] for r in clients.replies if r[1] not in (250, 452))
    assert not other, f"the smtplib clients got other replies: {other} {clients.replies[-5:]}"
    assert "event=queue_flush_failed" in rp.log_text() or "event=queue_error" in rp.log_text()
    acknowledged = warm.accepted() | clients.accepted() | set(blast_ids)

    # Space returns; the next hop comes up. Nothing is restarted.
    fs.unfill()
    after = Clients(rp.port, "after", 2, [1024, 200 * 1024])
    wait_for(lambda: len(after.accepted()) >= 10, timeout_s=30, what="acceptance after space returned")
    after.stop()
    refused_after = [r for r in after.replies if r[1] != 250]
    assert not refused_after, f"refused after space returned: {refused_after[:5]}"
    acknowledged |= after.accepted()
    sink = sinks("hop", port=hop_port)
    missing = lambda: acknowledged - set(sink.log.ids())  # noqa: E731
    try:
        wait_for(lambda: not missing(), timeout_s=60, what="every acknowledged message at the next hop")
    except TimeoutError:
        pytest.fail(f"LOST: {len(missing())} of {len(acknowledged)} acknowledged messages never arrived: "
                    f"{sorted(missing())[:20]}\n{rp.log_text()[-3000:]}")
    wait_for(lambda: rp.queue_live() == 0, timeout_s=30, what="the queue to drain")
    delivered = collections.Counter(sink.log.ids())
    twice = {i: n for i, n in delivered.items() if n > 1}
    assert not twice, f"delivered more than once without a restart: {twice}"
    unacked = set(delivered) - acknowledged
    assert not unacked, f"delivered without a 250 (a 452 must mean not queued): {sorted(unacked)[:20]}"
    print(f"\nfull disk: acknowledged {len(acknowledged)} (blast {len(blast_ids)}, smtplib "
          f"{len(clients.accepted())}), 452 replies: blast {codes.get(452, 0)}, smtplib "
          f"{sum(1 for r in clients.replies if r[1] == 452)}; delivered {len(delivered)}, lost 0")


def refused_after(ringpost, fs, sinks, kill, what):
    """Clients send while `kill` breaks the spool's file system; returns
    ringpost's log after checking that nothing sent after it got a 250."""
    sink = sinks("hop")
    rp = ringpost({
        "queue.spool": f'["{fs.mount / "spool"}"]',
        "queue.segment_size_bytes": str(4 << 20),
        "delivery.smarthost": f'"127.0.0.1:{sink.port}"',
    })
    clients = Clients(rp.port, "dead", 6, [1024, 100 * 1024, 1024])
    wait_for(lambda: len(clients.accepted()) >= 30, what=f"acceptances before {what}")
    kill()
    died_at = time.monotonic()
    time.sleep(4)
    clients.stop()
    late = [r for r in clients.replies if r[3] > died_at]
    # A reply that came after the death may be for a message committed just
    # before it; a message sent after the death never gets a 250. The
    # clients send one message at a time: the one after a reply that came
    # after the death was wholly sent after it.
    by_thread = collections.defaultdict(list)
    for r in clients.replies:
        by_thread[r[0].rsplit(".", 1)[0]].append(r)
    lies = []
    for replies in by_thread.values():
        after = [r for r in replies if r[3] > died_at]
        lies += [r for r in after[1:] if r[1] == 250]
    assert not lies, f"250 for messages sent after {what}: {lies[:5]}"
    refusals = [r for r in late if 400 <= r[1] < 500]
    assert refusals, f"no 4xx after {what}: {late[-10:]}"
    assert any(r[1] == 451 and "4.3.0" in r[2] for r in refusals), refusals[:5]
    bad = [r for r in late if not (r[1] == 250 or 400 <= r[1] < 500 or r[1] == -1)]
    assert not bad, f"replies other than 4xx after {what}: {bad[:5]}"
    print(f"\n{what}: {len(clients.accepted())} acknowledged, {len(late)} replies after it: "
          f"{collections.Counter(r[1] for r in late)}; ringpost "
          + ("still running" if rp.proc.poll() is None else f"exited with {rp.proc.returncode}"))
    return rp.log_text()


def test_a_dead_disk_answers_451_and_never_250(ringpost, loop_fs, sinks):
    fs = loop_fs(96)
    log = refused_after(ringpost, fs, sinks, fs.kill_device, "the disk died")
    assert "Input/output error" in log or "os error 5" in log, log[-3000:]


def test_a_file_system_turned_read_only_answers_451_and_never_250(ringpost, loop_fs, sinks):
    # ext4 turned read-only by an error answers fdatasync with success and
    # flushes nothing, while writes into blocks already written (segments
    # are zeroed ahead of their records) can still go through: ringpost
    # must see that the flush counted for nothing.
    fs = loop_fs(96, options="errors=remount-ro")
    log = refused_after(ringpost, fs, sinks, fs.turn_read_only, "the file system turned read-only")
    assert "Read-only file system" in log or "os error 30" in log, log[-3000:]
