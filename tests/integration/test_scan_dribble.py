"""Content scanning under a slow, wide load: 200 clients each dribble a
20 MiB message over about half a minute, all of them in the middle of
their DATA at the same time. ringpost's resident memory stays bounded
(each message goes to its body file as it arrives, none is held whole in
RAM), and a pipe scanner sees each message only after that client's final
dot, whole.

The scanner refuses every message (exit 1, its first output line the
reason), so the 4 GiB is received, written to the spool, scanned and
dropped, never delivered; the reason it prints carries what the scanner
saw (the client's marker, when it started, how many bytes it read, the
last line), and comes back to the client in the 550 reply."""

import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

from conftest import wait_for

CLIENTS = 200
MESSAGE_MIB = 20
# Each message goes out in PIECES pieces of PIECE_BYTES (whole 64-octet
# lines, no dots), 20 MiB in all, plus a few header lines and a last line.
LINE = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n"
PIECE_BYTES = 256 * 1024
PIECES = MESSAGE_MIB * 1024 * 1024 // PIECE_BYTES
FILLER = LINE * (PIECE_BYTES // len(LINE))
# Client i starts its content STAGGER_S * i / CLIENTS after the first, and
# sends a piece every DRIBBLE_S / PIECES: the last client starts well
# before the first one ends, so all 200 are mid-message together for
# about DRIBBLE_S - STAGGER_S, and the final dots (and scans) are spread
# over STAGGER_S rather than all at one instant.
DRIBBLE_S = 28.0
STAGGER_S = 10.0

# The scanner: notes when it started (CLOCK_MONOTONIC, the same clock as
# the test's time.monotonic_ns()), reads the whole message, and refuses it
# with one line saying what it saw.
SCANNER = r"""#!/usr/bin/python3 -IS
import sys, time
started = time.monotonic_ns()
stdin = sys.stdin.buffer
marker, total, tail = "-", 0, b""
while True:
    line = stdin.readline()
    total += len(line)
    if line.startswith(b"X-Dribble: "):
        marker = line.split()[1].decode()
    if line in (b"", b"\n"):
        break
while True:
    chunk = stdin.read(1 << 20)
    if not chunk:
        break
    total += len(chunk)
    tail = (tail + chunk)[-200:]
last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1].decode(errors="replace")
finished = time.monotonic_ns()
print(f"scanned {marker} id={sys.argv[1]} started={started} finished={finished} bytes={total} last={last}")
sys.exit(1)
"""


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


class Reader:
    """SMTP replies from a socket, line by line."""

    def __init__(self, sock):
        self.file = sock.makefile("rb")

    def reply(self):
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError(f"closed after {lines!r}")
            lines.append(line.rstrip(b"\r\n"))
            if len(line) < 4 or line[3:4] != b"-":
                return int(lines[-1][:3]), b"\n".join(l[4:] for l in lines)


def header(i):
    return (f"From: <sender@client.test>\r\nTo: <rcpt@far.test>\r\nSubject: dribble {i}\r\n"
            f"Message-ID: <dribble-{i}@client.test>\r\nX-Dribble: c{i}\r\n\r\n").encode()


def trailer(i):
    return f"end of c{i}\r\n".encode()


def lf_size(i):
    """The message's size with LF line ends, as the scanner reads it
    (without ringpost's Received header)."""
    lines = header(i).count(b"\r\n") + PIECES * FILLER.count(b"\r\n") + 1
    return len(header(i)) + PIECES * len(FILLER) + len(trailer(i)) - lines


def test_200_clients_dribbling_20_mib_each_rss_stays_bounded_and_scans_wait_for_the_dot(ringpost, smtp_sink, request):
    began = time.monotonic()
    # nobody must reach the program: not under pytest's private tmp_path.
    where = Path(tempfile.mkdtemp(prefix="ringpost-dribble-"))
    request.addfinalizer(lambda: shutil.rmtree(where, ignore_errors=True))
    os.chmod(where, 0o755)
    program = where / "scanner"
    program.write_text(SCANNER)
    program.chmod(0o755)
    sink = smtp_sink()
    # The scans come in bursts at the final dots and each reads 20 MiB:
    # room for all of them to wait (queue_max) and time to (timeout), so
    # that a busy or timed-out scanner never stands in for a verdict.
    scanner = (f'[{{name = "filter", kind = "pipe", command = ["{program}", "{{queue_id}}"], '
               f'queue_max = {CLIENTS}, timeout = "120s"}}]')
    rp = ringpost({"delivery.smarthost": f'"127.0.0.1:{sink.port}"', "scanner": scanner})
    pid = rp.proc.pid
    base_kib = rss_kib(pid)

    ready = threading.Barrier(CLIENTS + 1)
    first_piece_ns = [None] * CLIENTS
    dot_ns = [None] * CLIENTS
    replies = [None] * CLIENTS
    errors = []

    def client(i):
        try:
            with socket.create_connection(("127.0.0.1", rp.port), timeout=150) as s:
                r = Reader(s)
                assert r.reply()[0] == 220
                for command, code in ((b"EHLO client.test", 250), (b"MAIL FROM:<sender@client.test>", 250),
                                      (b"RCPT TO:<rcpt@far.test>", 250), (b"DATA", 354)):
                    s.sendall(command + b"\r\n")
                    got = r.reply()
                    assert got[0] == code, (command, got)
                ready.wait(timeout=60)
                start = time.monotonic() + STAGGER_S * i / CLIENTS
                for k in range(PIECES):
                    pause = start + k * DRIBBLE_S / PIECES - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                    if k == 0:
                        first_piece_ns[i] = time.monotonic_ns()
                        s.sendall(header(i))
                    s.sendall(FILLER)
                pause = start + DRIBBLE_S - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                s.sendall(trailer(i))
                dot_ns[i] = time.monotonic_ns()
                s.sendall(b".\r\n")
                replies[i] = r.reply()
                s.sendall(b"QUIT\r\n")
        except Exception as e:  # reported below, with the client's number
            errors.append((i, repr(e)))
            ready.abort()

    # ringpost's resident set, sampled while the clients run.
    samples = []
    done = threading.Event()

    def sample():
        while not done.is_set():
            samples.append((time.monotonic_ns(), rss_kib(pid)))
            time.sleep(0.1)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        ready.wait(timeout=60)
    except threading.BrokenBarrierError:
        pass
    for t in threads:
        t.join(timeout=180)
    done.set()
    sampler.join()
    hwm_kib = rss_kib(pid, "VmHWM")
    assert not errors, errors[:10]
    assert not [t for t in threads if t.is_alive()], "a client hung"

    # All 200 were mid-message at once: the last one sent its first piece
    # before the first one sent its final dot.
    overlap_from, overlap_to = max(first_piece_ns), min(dot_ns)
    assert overlap_from < overlap_to, "the clients' transfers overlapped"
    overlap_kib = [kib for at, kib in samples if overlap_from <= at <= overlap_to]
    assert len(overlap_kib) > 10, samples

    # Every message was refused by the scanner after it had read all of it.
    scanned = {}
    for i, (code, text) in enumerate(replies):
        assert code == 550, (i, code, text)
        prefix = b"5.7.1 Message refused by filter: scanned "
        assert text.startswith(prefix), (i, text)
        fields = text[len(prefix):].decode().split(" ", 5)
        assert fields[0] == f"c{i}", (i, text)
        values = dict(f.split("=", 1) for f in fields[1:])
        assert values["last"] == f"end of c{i}", (i, text)
        # The content with LF ends, and ringpost's Received header above it.
        extra = int(values["bytes"]) - lf_size(i)
        assert 0 < extra < 1000, (i, text)
        scanned[i] = (values["id"], int(values["started"]), int(values["finished"]))
    assert len({queue_id for queue_id, _, _ in scanned.values()}) == CLIENTS, "200 different messages"

    # Scans start only after each final dot: none before its own client's
    # dot, so none before the first dot of all, while 200 messages of
    # 20 MiB were arriving.
    early = [(i, started - dot_ns[i]) for i, (_, started, _) in scanned.items() if started <= dot_ns[i]]
    assert not early, early
    assert min(started for _, started, _ in scanned.values()) > min(dot_ns)

    # Resident memory. A session in DATA holds what it has received but
    # not yet written out: one 16 KiB socket read in the SMTP machine and
    # the body writer's buffer, written to the body file at every 64 KiB;
    # with its state, about 100 KiB, however large the message. A scan
    # streams the body file through small buffers. Measured on a 2-core
    # machine: about 12 MiB at start and 32 MiB at the peak, so about
    # 100 KiB per client over the start, as expected. The bound allows
    # 256 KiB per client over the start (50 MiB in all, two and a half
    # times the measure, a bit more than what a session could hold at
    # worst): 200 messages held whole would be 4 GiB, eighty times more.
    per_client_bound_kib = 256
    # VmHWM is only brought up to date now and then by the kernel and
    # may lag the sampled VmRSS: the larger of the two.
    peak_kib = max([hwm_kib] + [kib for _, kib in samples])
    bound_kib = base_kib + CLIENTS * per_client_bound_kib
    report = (f"RSS start {base_kib} KiB, peak {peak_kib} KiB (sampled {max(k for _, k in samples)}, "
              f"VmHWM {hwm_kib}, while all {CLIENTS} mid-message {max(overlap_kib)}), "
              f"{(peak_kib - base_kib) / CLIENTS:.0f} KiB per client over the start; bound {bound_kib} KiB")
    print(report)
    assert peak_kib <= bound_kib, report

    waits_ms = sorted((started - dot_ns[i]) / 1e6 for i, (_, started, _) in scanned.items())
    dribbles_s = sorted((dot_ns[i] - first_piece_ns[i]) / 1e9 for i in range(CLIENTS))
    events = sorted([(s, 1) for _, s, _ in scanned.values()] + [(f, -1) for _, _, f in scanned.values()])
    running = [0]
    for _, step in events:
        running.append(running[-1] + step)
    print(f"dribble {dribbles_s[0]:.1f}-{dribbles_s[-1]:.1f} s per client, all mid-message for "
          f"{(overlap_to - overlap_from) / 1e9:.1f} s; scan start after the dot {waits_ms[0]:.0f} ms min, "
          f"{waits_ms[len(waits_ms) // 2]:.0f} median, {waits_ms[-1]:.0f} max; at most {max(running)} scans at once")

    # Nothing was delivered and nothing is left in the queue.
    wait_for(lambda: rp.queue_live() == 0, what="the queue to be empty")
    assert rp.body_files() == [], "the refused messages' body files are gone"
    assert sink.messages() == []
    log = rp.log_text()
    assert log.count("verdict=reject") == CLIENTS, log[-2000:]
    print(f"took {time.monotonic() - began:.1f} s")
