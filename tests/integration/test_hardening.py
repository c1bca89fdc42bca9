"""End-to-end regressions for defects found by outside tools: each sends
the exact bytes that showed the defect to the real binary over a socket
and checks what ends up in the mailbox, at the next hop, or in the reply."""

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import missing_tool, wait_for


class Session:
    """A raw SMTP client: exact bytes out, replies in."""

    def __init__(self, port, timeout_s=20):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def reply(self):
        lines = []
        while True:
            line = self.file.readline()
            assert line, f"connection closed after {b''.join(lines)!r}"
            lines.append(line)
            if line[3:4] == b" ":
                return int(line[:3]), b"".join(lines)

    def send(self, data: bytes):
        self.sock.sendall(data)

    def command(self, data: bytes):
        self.send(data)
        return self.reply()

    def close(self):
        self.sock.close()


def transaction(s, sender, recipients, ehlo=b"client.test"):
    assert s.command(b"EHLO " + ehlo + b"\r\n")[0] == 250
    assert s.command(b"MAIL FROM:<" + sender + b">\r\n")[0] == 250
    for r in recipients:
        code, text = s.command(b"RCPT TO:<" + r + b">\r\n")
        assert code == 250, text


def test_received_header_has_a_semicolon_with_many_recipients(ringpost):
    rp = ringpost()
    s = Session(rp.port)
    transaction(s, b"a@example.org", [b"one@localhost", b"two@localhost"])
    assert s.command(b"DATA\r\n")[0] == 354
    assert s.command(b"Subject: two\r\n\r\nhello\r\n.\r\n")[0] == 250
    s.close()
    for user in ("one", "two"):
        data = wait_for(lambda: rp.maildir_files(user), what="delivery")[0].read_bytes()
        header, _ = data.split(b"\nSubject: two", 1)
        received = header.split(b"Received: ", 1)[1]
        # RFC 5322 3.6.7: the tokens, then ";", then the date.
        tokens, date = received.rsplit(b";", 1)
        assert b"from client.test" in tokens and b"by mx.test" in tokens, received
        assert date.strip().split()[0].rstrip(b",") in (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"), received


BINARY = (b"Content-Type: application/octet-stream\r\nSubject: binary\r\n\r\n"
          b"\x00\x01\r\n.\r\nbare LF\nbare CR\r\xff\xfe no final CRLF")


def test_binarymime_is_relayed_byte_for_byte_over_bdat(ringpost):
    # The next hop is a second ringpost: it offers CHUNKING and BINARYMIME,
    # and delivers example.net to its Maildir.
    inner = ringpost({"domains.local": '["example.net"]'})
    outer = ringpost({"delivery.smarthost": f'"127.0.0.1:{inner.port}"'})
    s = Session(outer.port)
    assert s.command(b"EHLO client.test\r\n")[0] == 250
    # BODY=BINARYMIME, as RFC 3030 requires for binary content, over BDAT.
    assert s.command(b"MAIL FROM:<a@example.org> BODY=BINARYMIME\r\n")[0] == 250
    assert s.command(b"RCPT TO:<bin@example.net>\r\n")[0] == 250
    s.send(b"BDAT %d LAST\r\n" % len(BINARY) + BINARY)
    code, text = s.reply()
    assert code == 250, text
    s.close()
    delivered = wait_for(lambda: inner.maildir_files("bin"), what="relayed delivery")[0].read_bytes()
    assert delivered.startswith(b"Return-Path: <a@example.org>\r\n"), delivered[:80]
    assert delivered.endswith(BINARY), delivered[-120:]
    assert delivered.count(b"Received: ") == 2, delivered


def test_binarymime_to_a_hop_without_it_fails_with_563_and_sends_nothing(ringpost, smtp_sink):
    sink = smtp_sink()
    rp = ringpost({"delivery.smarthost": f'"127.0.0.1:{sink.port}"'})
    s = Session(rp.port)
    assert s.command(b"EHLO client.test\r\n")[0] == 250
    assert s.command(b"MAIL FROM:<a@localhost> BODY=BINARYMIME\r\n")[0] == 250
    assert s.command(b"RCPT TO:<far@example.net>\r\n")[0] == 250
    s.send(b"BDAT %d LAST\r\n" % len(BINARY) + BINARY)
    assert s.reply()[0] == 250
    s.close()
    bounce = wait_for(lambda: rp.maildir_files("a"), what="the bounce")[0].read_bytes()
    assert b"5.6.3" in bounce, bounce
    assert not [m for m in sink.messages() if b"Subject: binary" in m], "nothing of it went out"


def test_undeclared_8bit_content_is_not_sent_to_a_7bit_hop(ringpost, smtp_sink):
    sink = smtp_sink("-8")  # smtp-sink without 8BITMIME
    rp = ringpost({"delivery.smarthost": f'"127.0.0.1:{sink.port}"'})
    s = Session(rp.port)
    # No BODY=8BITMIME, as Exim 4.96 and OpenSMTPD send it.
    transaction(s, b"a@localhost", [b"far@example.net"])
    assert s.command(b"DATA\r\n")[0] == 354
    assert s.command(b"Subject: 8bit\r\n\r\ncaf\xc3\xa9\r\n.\r\n")[0] == 250
    s.close()
    bounce = wait_for(lambda: rp.maildir_files("a"), what="the bounce")[0].read_bytes()
    assert b"5.6.3" in bounce, bounce
    assert not [m for m in sink.messages() if b"caf\xc3\xa9" in m]


def test_undeclared_8bit_content_goes_as_8bitmime_to_a_hop_that_has_it(ringpost, smtp_sink):
    sink = smtp_sink()
    rp = ringpost({"delivery.smarthost": f'"127.0.0.1:{sink.port}"'})
    s = Session(rp.port)
    transaction(s, b"a@localhost", [b"far@example.net"])
    assert s.command(b"DATA\r\n")[0] == 354
    assert s.command(b"Subject: 8bit ok\r\n\r\ncaf\xc3\xa9\r\n.\r\n")[0] == 250
    s.close()
    message = sink.wait_message(b"Subject: 8bit ok")[0]
    assert b"BODY=8BITMIME" in message.upper(), message[:400]


def test_nul_in_data_is_refused_after_the_real_end(ringpost):
    rp = ringpost()
    s = Session(rp.port)
    transaction(s, b"a@example.org", [b"nul@localhost"])
    assert s.command(b"DATA\r\n")[0] == 354
    code, text = s.command(b"Subject: x\r\n\r\nhello\r\n\x00.\r\nmore\r\n.\r\n")
    assert code == 550 and b"5.6.0" in text, text
    # The session goes on: the line after the NUL was content, not a command.
    assert s.command(b"NOOP\r\n")[0] == 250
    s.close()
    time.sleep(0.5)
    assert rp.maildir_files("nul") == []


def test_nul_strip_keeps_one_message(ringpost):
    rp = ringpost({"smtp.nul": "strip"})
    s = Session(rp.port)
    transaction(s, b"a@example.org", [b"nul@localhost"])
    assert s.command(b"DATA\r\n")[0] == 354
    code, text = s.command(b"Subject: x\r\n\r\nhello\r\n\x00.\r\nmore\r\n.\r\n")
    assert code == 250, text
    s.close()
    data = wait_for(lambda: rp.maildir_files("nul"), what="delivery")[0].read_bytes()
    assert b"\x00" not in data
    assert data.endswith(b"hello\n.\nmore\n"), data


def test_command_ended_by_bare_lf_is_refused(ringpost):
    rp = ringpost()
    s = Session(rp.port)
    code, text = s.command(b"NOOP\n")
    assert code == 500 and b"5.5.2" in text, text
    s.close()


def test_command_ended_by_bare_lf_is_accepted_when_normalizing(ringpost):
    rp = ringpost({"smtp.bare_lf": "normalize"})
    s = Session(rp.port)
    code, text = s.command(b"NOOP\n")
    assert code == 250, text
    s.close()


def test_normalized_dot_line_keeps_its_dot(ringpost):
    rp = ringpost({"smtp.bare_lf": "normalize"})
    s = Session(rp.port)
    transaction(s, b"a@example.org", [b"dot@localhost"])
    assert s.command(b"DATA\r\n")[0] == 354
    assert s.command(b"Subject: dot\r\n\r\na\r\n.\nb\r\n.\r\n")[0] == 250
    s.close()
    data = wait_for(lambda: rp.maildir_files("dot"), what="delivery")[0].read_bytes()
    assert data.endswith(b"\na\n.\nb\n"), data


def test_client_return_path_is_dropped(ringpost):
    rp = ringpost()
    s = Session(rp.port)
    transaction(s, b"real@example.org", [b"rp@localhost"])
    assert s.command(b"DATA\r\n")[0] == 354
    assert s.command(b"Return-Path: <forged@evil.test>\r\nSubject: rp\r\n\r\nReturn-Path: in body\r\n.\r\n")[0] == 250
    s.close()
    data = wait_for(lambda: rp.maildir_files("rp"), what="delivery")[0].read_bytes()
    assert data.startswith(b"Return-Path: <real@example.org>\n"), data
    assert b"forged@evil.test" not in data
    assert data.count(b"Return-Path:") == 2 and data.endswith(b"\nReturn-Path: in body\n"), data


def test_slow_dribble_is_closed_within_the_command_timeout(ringpost):
    rp = ringpost({"smtp.command_timeout": '"6s"'})
    s = Session(rp.port, timeout_s=15)
    started = time.monotonic()
    reply = b""
    try:
        for byte in b"NOOP NOOP NOOP NOOP\r\n":
            s.send(bytes([byte]))
            time.sleep(2)
            if time.monotonic() - started > 12:
                break
    except (BrokenPipeError, ConnectionResetError):
        pass
    s.sock.settimeout(5)
    try:
        reply = s.file.read()
    except (socket.timeout, ConnectionResetError):
        pass
    elapsed = time.monotonic() - started
    assert b"421 4.4.2" in reply, reply
    assert elapsed < 12, elapsed
    s.close()
    assert "reason=timeout" in rp.log_text()


@pytest.fixture
def small_fs():
    """A 64 MiB ext4 file system on a loop device, mounted for the test."""
    if os.geteuid() != 0 or not shutil.which("losetup") or not shutil.which("mkfs.ext4"):
        missing_tool("the full-disk test needs root, losetup and mkfs.ext4 (e2fsprogs)")
    work = Path(tempfile.mkdtemp(prefix="ringpost-smallfs-"))
    image, mount = work / "fs.img", work / "mnt"
    mount.mkdir()
    subprocess.run(["truncate", "-s", "64M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)])
        shutil.rmtree(work, ignore_errors=True)


def send_until_refused(port, body, count_max):
    """Sends `body` as new messages until one is not accepted: every reply."""
    replies = []
    s = Session(port)
    assert s.command(b"EHLO client.test\r\n")[0] == 250
    for _ in range(count_max):
        assert s.command(b"MAIL FROM:<a@example.org>\r\n")[0] == 250
        assert s.command(b"RCPT TO:<full@localhost>\r\n")[0] == 250
        assert s.command(b"DATA\r\n")[0] == 354
        code, text = s.command(body + b".\r\n")
        replies.append((code, text))
        if code != 250:
            break
    s.close()
    return replies


def test_a_real_full_disk_answers_452(ringpost, small_fs):
    spool = small_fs / "spool"
    # Delivery is held back (an unreachable Maildir would fail; a long
    # early wait is not needed): messages stay in the queue, so the head
    # log must open new segments.
    rp = ringpost({"queue.spool": f'["{spool}"]', "queue.segment_size_bytes": str(4 << 20),
                   "server.shards": "1", "local.maildir": '"/proc/ringpost-no-such-dir/{user}"'})
    # One message opens the first segment; then fill what is left.
    assert send_until_refused(rp.port, b"Subject: first\r\n\r\nx\r\n", 1)[0][0] == 250
    filler = small_fs / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=100"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Inline messages (60 KiB, under queue.inline_max_bytes) fill the
    # preallocated segment; the next one cannot be allocated.
    inline = b"Subject: inline\r\n\r\n" + (b"y" * 998 + b"\r\n") * 60
    replies = send_until_refused(rp.port, inline, 200)
    code, text = replies[-1]
    assert len(replies) > 1 and code == 452 and b"4.3.1" in text, replies[-3:]
    # A message for a body file of its own: refused the same way.
    large = b"Subject: large\r\n\r\n" + (b"z" * 998 + b"\r\n") * 2000
    code, text = send_until_refused(rp.port, large, 1)[0]
    assert code == 452 and b"4.3.1" in text, text
    # Both paths met the full disk: the head log's next segment (its
    # batch failed) and the large message's body file.
    log = rp.log_text()
    assert "event=queue_flush_failed" in log, log[-2000:]
    assert "event=queue_error" in log, log[-2000:]
    # Room again: the queue takes mail again.
    filler.unlink()
    code, text = send_until_refused(rp.port, b"Subject: after\r\n\r\nroom again\r\n", 1)[0]
    assert code == 250, text
