"""End-to-end tests of the foundation: real ringpost binary, driven by
Python's smtplib, swaks and Postfix's smtp-source, relaying to Postfix's
smtp-sink, delivering to Maildir."""

import email
import re
import signal
import smtplib
import socket
import subprocess
import time

from conftest import RINGPOST, wait_for, wait_port, free_port

MESSAGE = (
    "From: Alice <alice@example.org>\r\n"
    "To: Bob <bob@localhost>\r\n"
    "Subject: byte-exact test\r\n"
    "Message-ID: <exact-1@example.org>\r\n"
    "\r\n"
    "First line.\r\n"
    ".A line that starts with a dot.\r\n"
    "..Two dots.\r\n"
    "\r\n"
    "Trailing text with 8-bit: caf\xc3\xa9\r\n"
)


def split_trace(data: bytes):
    """Splits a delivered message into its trace header block (Return-Path,
    Received) and the rest."""
    lines = data.split(b"\n")
    i = 0
    assert lines[0].startswith(b"Return-Path: <"), lines[0]
    i = 1
    assert lines[i].startswith(b"Received: from "), lines[i]
    i += 1
    while lines[i].startswith((b"\t", b" ")):
        i += 1
    return b"\n".join(lines[:i]) + b"\n", b"\n".join(lines[i:])


def test_smtplib_delivers_byte_exact_to_maildir(ringpost):
    rp = ringpost()
    body = MESSAGE.encode("latin-1")
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=10) as s:
        code, ehlo = s.ehlo("client.test")
        assert code == 250
        for keyword in (b"PIPELINING", b"SIZE", b"8BITMIME", b"ENHANCEDSTATUSCODES", b"SMTPUTF8", b"CHUNKING"):
            assert keyword in ehlo
        refused = s.sendmail("alice@example.org", ["bob@localhost"], body, mail_options=["BODY=8BITMIME"])
        assert refused == {}
    files = wait_for(lambda: rp.maildir_files("bob"), what="maildir delivery")
    assert len(files) == 1
    data = files[0].read_bytes()
    trace, rest = split_trace(data)
    assert trace.startswith(b"Return-Path: <alice@example.org>\n")
    assert b"from client.test ([127.0.0.1])" in trace
    assert b"by mx.test" in trace and b"for <bob@localhost>" in trace
    # The Maildir convention stores LF line endings; otherwise byte for byte.
    assert rest == body.replace(b"\r\n", b"\n")
    # The log line follows the Maildir link.
    wait_for(lambda: "status=delivered" in rp.log_text(), what="the delivery log line")


def test_swaks_delivers_to_maildir(ringpost):
    rp = ringpost()
    out = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{rp.port}", "--from", "carol@example.org",
         "--to", "dave@localhost", "--header", "Subject: swaks test", "--body", "hello from swaks"],
        capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"<-  250 2\.0\.0 Ok: queued as [0-9A-F]+", out.stdout), out.stdout
    files = wait_for(lambda: rp.maildir_files("dave"), what="maildir delivery")
    msg = email.message_from_bytes(files[0].read_bytes())
    assert msg["Subject"] == "swaks test"
    assert "hello from swaks" in msg.get_payload()


def read_reply(sock_file):
    lines = []
    while True:
        line = sock_file.readline()
        assert line, "connection closed"
        lines.append(line)
        if line[3:4] == b" ":
            return int(line[:3]), b"".join(lines)


def test_100_pipelined_messages_on_one_connection(ringpost):
    rp = ringpost()
    count = 100
    with socket.create_connection(("127.0.0.1", rp.port), timeout=20) as sock:
        f = sock.makefile("rb")
        assert read_reply(f)[0] == 220
        sock.sendall(b"EHLO pipeliner.test\r\n")
        assert read_reply(f)[0] == 250
        # Each batch: the previous message's content and final dot, then the
        # next MAIL, RCPT and DATA, all in one write (RFC 2920).
        pending = b""
        for n in range(count):
            sock.sendall(pending + f"MAIL FROM:<p@example.org>\r\nRCPT TO:<pipe@localhost>\r\nDATA\r\n".encode())
            if n > 0:
                code, text = read_reply(f)
                assert code == 250, text
            assert read_reply(f)[0] == 250  # MAIL
            assert read_reply(f)[0] == 250  # RCPT
            assert read_reply(f)[0] == 354  # DATA
            pending = f"Subject: pipelined {n}\r\n\r\nmessage {n}\r\n.\r\n".encode()
        sock.sendall(pending + b"QUIT\r\n")
        assert read_reply(f)[0] == 250
        assert read_reply(f)[0] == 221
    files = wait_for(lambda: len(rp.maildir_files("pipe")) == count and rp.maildir_files("pipe"),
                     what="100 deliveries")
    subjects = sorted(email.message_from_bytes(p.read_bytes())["Subject"] for p in files)
    assert subjects == sorted(f"pipelined {n}" for n in range(count))


def test_smtp_source_100_messages_one_connection(ringpost):
    rp = ringpost()
    out = subprocess.run(
        ["/usr/sbin/smtp-source", "-d", "-s", "1", "-m", "100", "-f", "src@example.org",
         "-t", "source@localhost", f"127.0.0.1:{rp.port}"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    wait_for(lambda: len(rp.maildir_files("source")) == 100, what="100 deliveries")


def test_relay_to_postfix_smtp_sink(ringpost, smtp_sink):
    sink = smtp_sink()
    rp = ringpost({"delivery.smarthost": f"127.0.0.1:{sink.port}"})
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=10) as s:
        s.sendmail("alice@example.org", ["remote@example.net"],
                   b"Subject: relayed\r\n\r\n.leading dot\r\nrelayed body\r\n")
    msgs = sink.wait_message(b"relayed body")
    assert len(sink.messages()) == 1
    assert b"X-Rcpt-Args: <remote@example.net>" in msgs[0]
    assert b"X-Mail-Args: <alice@example.org>" in msgs[0]
    assert b"\n.leading dot\n" in msgs[0].replace(b"\r\n", b"\n")
    assert b"Received: from" in msgs[0]
    wait_for(lambda: rp.queue_live() == 0, what="queue to empty")


def test_non_relay_client_gets_550_571(ringpost):
    rp = ringpost({"relay.networks": '["192.0.2.0/24"]', "delivery.smarthost": "127.0.0.1:9"})
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=10) as s:
        s.ehlo("outsider.test")
        s.mail("spam@example.org")
        code, text = s.rcpt("victim@example.net")
        assert code == 550 and text.startswith(b"5.7.1"), text
        # Local recipients are still accepted from anyone.
        code, _ = s.rcpt("postmaster")
        assert code == 250
        code, _ = s.rcpt("someone@localhost")
        assert code == 250


def test_permanent_failure_bounces_to_sender(ringpost, smtp_sink):
    sink = smtp_sink("-f", "RCPT")
    rp = ringpost({"delivery.smarthost": f"127.0.0.1:{sink.port}"})
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=10) as s:
        s.sendmail("writer@localhost", ["nobody@example.net"],
                   b"Subject: will bounce\r\nMessage-ID: <b1@localhost>\r\n\r\nbody\r\n")
    files = wait_for(lambda: rp.maildir_files("writer"), what="bounce in the sender's Maildir")
    bounce = email.message_from_bytes(files[0].read_bytes())
    assert bounce["Return-Path"] == "<>"
    assert bounce.get_content_type() == "multipart/report"
    assert bounce.get_param("report-type") == "delivery-status"
    parts = [p.get_content_type() for p in bounce.walk()]
    assert "message/delivery-status" in parts and "text/rfc822-headers" in parts
    raw = files[0].read_bytes()
    assert b"Final-Recipient: rfc822; nobody@example.net" in raw
    assert b"Action: failed" in raw
    assert b"Subject: will bounce" in raw
    wait_for(lambda: rp.queue_live() == 0, what="queue to empty")
    assert len(rp.maildir_files("writer")) == 1


def test_no_bounce_to_null_sender(ringpost, smtp_sink):
    sink = smtp_sink("-f", "RCPT")
    rp = ringpost({"delivery.smarthost": f"127.0.0.1:{sink.port}"})
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=10) as s:
        s.sendmail("<>", ["nobody@example.net"], b"Subject: a bounce itself\r\n\r\nbody\r\n")
    wait_for(lambda: "status=failed" in rp.log_text(), what="the permanent failure")
    wait_for(lambda: rp.queue_live() == 0, what="queue to empty")
    assert "event=bounce " not in rp.log_text()


def test_temporary_failure_is_retried(ringpost, smtp_sink):
    port = free_port()
    rp = ringpost({"delivery.smarthost": f"127.0.0.1:{port}"})
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=10) as s:
        s.sendmail("alice@example.org", ["later@example.net"], b"Subject: retried\r\n\r\nbody\r\n")
    wait_for(lambda: "status=deferred" in rp.log_text(), what="a deferral (nothing listens yet)")
    assert rp.queue_live() == 1
    # The next hop comes up on the port the message is waiting for.
    sink = smtp_sink(port=port)
    sink.wait_message(b"Subject: retried")
    wait_for(lambda: rp.queue_live() == 0, what="queue to empty")
    assert "status=delivered" in rp.log_text()


def test_queue_survives_kill_9(ringpost, smtp_sink):
    port = free_port()
    rp = ringpost({"delivery.smarthost": f"127.0.0.1:{port}"})
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=10) as s:
        s.sendmail("alice@example.org", ["kept@example.net"], b"Subject: kept\r\n\r\nbody\r\n")
    # kill -9: what got its 250 is on disk.
    assert rp.stop(signal.SIGKILL) != 0
    assert rp.queue_live() == 1
    sink = smtp_sink(port=port)
    rp.start()
    sink.wait_message(b"Subject: kept")


def test_sigterm_drains_open_transaction(ringpost):
    rp = ringpost()
    idle = socket.create_connection(("127.0.0.1", rp.port), timeout=10)
    idle_f = idle.makefile("rb")
    assert read_reply(idle_f)[0] == 220
    busy = socket.create_connection(("127.0.0.1", rp.port), timeout=10)
    f = busy.makefile("rb")
    assert read_reply(f)[0] == 220
    busy.sendall(b"EHLO busy.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<drain@localhost>\r\nDATA\r\n")
    for code in (250, 250, 250, 354):
        assert read_reply(f)[0] == code
    busy.sendall(b"Subject: drained\r\n\r\nfirst half\r\n")
    rp.proc.send_signal(signal.SIGTERM)
    # The idle session is told to go away at once.
    code, text = read_reply(idle_f)
    assert code == 421 and b"4.3.2" in text
    # The session in a transaction may finish it and gets its 250...
    busy.sendall(b"second half\r\n.\r\nNOOP\r\n")
    code, text = read_reply(f)
    assert code == 250, text
    # ...and then a 421 instead of the next command's reply.
    code, text = read_reply(f)
    assert code == 421
    assert rp.proc.wait(timeout=20) == 0
    # Nothing acknowledged is lost: delivered now or after the restart.
    rp.start()
    wait_for(lambda: rp.maildir_files("drain"), what="drained message delivered")


def test_smuggling_variants_do_not_end_data(ringpost):
    rp = ringpost()
    variants = [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r", b"\r.\r\n"]
    for v in variants:
        with socket.create_connection(("127.0.0.1", rp.port), timeout=10) as sock:
            f = sock.makefile("rb")
            read_reply(f)
            sock.sendall(b"EHLO smuggler.test\r\nMAIL FROM:<a@example.org>\r\n"
                         b"RCPT TO:<smug@localhost>\r\nDATA\r\n")
            for code in (250, 250, 250, 354):
                assert read_reply(f)[0] == code
            sock.sendall(b"Subject: outer\r\n\r\nouter" + v +
                         b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@localhost>\r\nDATA\r\n"
                         b"Subject: smuggled\r\n\r\ninner\r\n.\r\nQUIT\r\n")
            code, text = read_reply(f)
            # Refused as a whole: nothing after the fake terminator became a command.
            assert code == 550 and b"5.6.11" in text, (v, text)
            assert read_reply(f)[0] == 221
    time.sleep(0.5)
    assert rp.maildir_files("victim") == []
    assert rp.maildir_files("smug") == []


def test_smuggling_normalized_stays_one_message(ringpost):
    rp = ringpost({"smtp.bare_lf": "normalize"})
    with socket.create_connection(("127.0.0.1", rp.port), timeout=10) as sock:
        f = sock.makefile("rb")
        read_reply(f)
        sock.sendall(b"EHLO smuggler.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<smug@localhost>\r\nDATA\r\n")
        for code in (250, 250, 250, 354):
            assert read_reply(f)[0] == code
        sock.sendall(b"Subject: outer\r\n\r\nouter\n.\nMAIL FROM:<evil@example.org>\r\n"
                     b"RCPT TO:<victim@localhost>\r\n.\r\nQUIT\r\n")
        code, text = read_reply(f)
        assert code == 250, text
        assert read_reply(f)[0] == 221
    files = wait_for(lambda: rp.maildir_files("smug"), what="delivery")
    assert b"MAIL FROM:<evil@example.org>" in files[0].read_bytes()
    assert rp.maildir_files("victim") == []


def test_check_config_reports_file_and_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nlisten = ["127.0.0.1:2525"]\n\n[relay]\nnetworks = ["10.0.0.0/33"]\n')
    out = subprocess.run([str(RINGPOST), "--config", str(bad), "check-config"],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode != 0
    assert f"{bad}:5" in out.stderr and "networks" in out.stderr, out.stderr
    good = subprocess.run([str(RINGPOST), "--set", "server.shards=1", "check-config"],
                          capture_output=True, text=True, timeout=10)
    assert good.returncode == 0, good.stderr
    assert "shards = 1" in good.stdout


def test_embedded_default_serves_from_working_directory(tmp_path):
    """`ringpost serve` with no configuration: 127.0.0.1:2525, ./var/spool, ./var/mail."""
    try:
        with socket.create_connection(("127.0.0.1", 2525), timeout=0.5):
            import pytest
            pytest.skip("port 2525 is taken on this machine")
    except OSError:
        pass
    log = open(tmp_path / "log", "wb")
    proc = subprocess.Popen([str(RINGPOST), "serve"], cwd=tmp_path, stderr=log)
    try:
        wait_port(2525, proc=proc)
        out = subprocess.run(["swaks", "--server", "127.0.0.1:2525", "--to", "tour@localhost"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stdout
        new = tmp_path / "var" / "mail" / "tour" / "Maildir" / "new"
        wait_for(lambda: new.is_dir() and list(new.iterdir()), what="default Maildir delivery")
        assert (tmp_path / "var" / "spool").is_dir()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


def test_large_message_streams_through_queue_and_relay(ringpost, smtp_sink):
    sink = smtp_sink()
    rp = ringpost({"delivery.smarthost": f"127.0.0.1:{sink.port}"})
    lines = [f"line {n:07d} " + "x" * 60 for n in range(40000)]  # about 2.9 MiB
    lines[100] = "." + lines[100]
    body = ("Subject: big\r\n\r\n" + "\r\n".join(lines) + "\r\n").encode()
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=30) as s:
        s.sendmail("alice@example.org", ["big@localhost", "big@example.net"], body)
    local = wait_for(lambda: rp.maildir_files("big"), what="local delivery")
    _, rest = split_trace(local[0].read_bytes())
    assert rest == body.replace(b"\r\n", b"\n")
    got = sink.wait_message(lines[-1].encode())[0].replace(b"\r\n", b"\n")
    assert body.replace(b"\r\n", b"\n").split(b"\n\n", 1)[1] in got


def test_size_limit_gives_552(ringpost):
    rp = ringpost({"smtp.max_message_bytes": "10000"})
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=10) as s:
        s.ehlo("big.test")
        assert s.has_extn("size") and s.esmtp_features["size"] == "10000"
        code, text = s.mail("a@example.org", ["SIZE=20000"])
        assert code == 552 and text.startswith(b"5.3.4"), text
        s.rset()
        # Without SIZE at MAIL the limit is enforced on the content itself.
        assert s.mail("a@example.org")[0] == 250
        assert s.rcpt("toobig@localhost")[0] == 250
        code, text = s.data(b"Subject: x\r\n\r\n" + (b"y" * 70 + b"\r\n") * 300)
        assert code == 552 and text.startswith(b"5.3.4"), text
    time.sleep(0.3)
    assert rp.maildir_files("toobig") == []
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=10) as s:
        s.ehlo("long.test")
        assert s.mail("a@example.org")[0] == 250
        assert s.rcpt("toobig@localhost")[0] == 250
        code, text = s.data(b"Subject: x\r\n\r\n" + b"y" * 2000)
        assert code == 500 and text.startswith(b"5.6.0") and text.isascii(), text
    assert rp.queue_live() == 0 and rp.body_files() == []
