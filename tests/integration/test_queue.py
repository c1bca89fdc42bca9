"""The log-structured queue seen from outside: no file per message (a
small one inside its envelope, a large one in the body log), a body file
for a deferred large one, the queue tools on a running and a stopped
spool, deferred mail coming back through the retry runners."""

import re
import smtplib
import subprocess

from conftest import free_port, wait_for


def send(port, count, body=b"Subject: q\r\n\r\nbody\r\n", rcpt="someone@example.net"):
    ids = []
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.ehlo("queue.test")
        for _ in range(count):
            s.mail("alice@example.org")
            assert s.rcpt(rcpt)[0] == 250
            code, text = s.data(body)
            assert code == 250, text
            ids.append(re.search(rb"queued as ([0-9A-F]{16})", text).group(1).decode())
    return ids


def queue_cmd(rp, *args, check=True):
    return subprocess.run(rp.args("queue") + list(args), capture_output=True, text=True, check=check)


def spool_files(rp):
    return sorted(p.name for p in rp.spool.rglob("*") if p.is_file())


def test_small_messages_create_no_files_and_tools_show_the_queue(ringpost, smtp_sink):
    port = free_port()
    rp = ringpost({"delivery.smarthost": f"127.0.0.1:{port}", "server.shards": "1"})
    before = spool_files(rp)
    ids = send(rp.port, 20)
    wait_for(lambda: rp.log_text().count("status=deferred") >= 20, what="20 deferrals")
    # Only segment files: nothing per message.
    after = spool_files(rp)
    assert all(name.endswith(".seg") for name in after), after
    assert len(after) - len(before) <= 2, (before, after)
    big = send(rp.port, 1, body=b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 100)[0]
    # Accepted into the body log; deferred (the next hop is down), its body
    # moves to a file of its own with the replacement envelope.
    assert any(name.startswith("bodylog-") for name in spool_files(rp)), spool_files(rp)
    wait_for(lambda: f"body-{big}" in spool_files(rp), what="the deferred message's body file")

    listing = queue_cmd(rp, "list").stdout
    for queue_id in ids + [big]:
        assert queue_id in listing
    assert "someone@example.net" in listing
    assert "-- " in listing and "21 messages" in listing
    shown = queue_cmd(rp, "show", ids[0]).stdout
    assert f"id: {ids[0]}" in shown and "from: <alice@example.org>" in shown
    assert "body: inline" in shown and "rcpt[0]: someone@example.net pending" in shown
    assert "body: file" in queue_cmd(rp, "show", big).stdout
    missing = queue_cmd(rp, "show", "0000000000000000", check=False)
    assert missing.returncode == 1 and "no such message" in missing.stderr
    assert rp.queue_live() == 21
    segment = next(rp.spool.rglob("head-*.seg"))
    dump = queue_cmd(rp, "dump", str(segment)).stdout
    assert "Envelope" in dump and ids[0] in dump

    # The next hop comes up: the runners hand the deferred mail back.
    sink = smtp_sink(port=port)
    wait_for(lambda: len(sink.messages()) >= 21, timeout_s=30, what="all 21 delivered after the retry")
    wait_for(lambda: rp.queue_live() == 0, what="queue to empty")
    wait_for(lambda: rp.body_files() == [], what="body file removed")
    assert rp.stop() == 0
    # The stopped spool reads the same.
    assert "Mail queue is empty" in queue_cmd(rp, "list").stdout
    stats = queue_cmd(rp, "stats").stdout
    assert "total live=0" in stats and "damaged=0" in stats
    assert "event=commit_stats" in rp.log_text()


def test_deferred_mail_survives_restart_in_the_retry_log(ringpost, smtp_sink):
    port = free_port()
    rp = ringpost({"delivery.smarthost": f"127.0.0.1:{port}", "queue.retry_lags": '["2s", "4s"]'})
    ids = send(rp.port, 5)
    wait_for(lambda: rp.log_text().count("status=deferred") >= 5, what="5 deferrals")
    assert rp.stop() == 0
    assert rp.queue_live() == 5
    assert "deferred=" in queue_cmd(rp, "stats").stdout
    sink = smtp_sink(port=port)
    rp.start()
    wait_for(lambda: len(sink.messages()) >= 5, timeout_s=30, what="the deferred mail delivered after the restart")
    wait_for(lambda: rp.queue_live() == 0, what="queue to empty")
    delivered = rp.log_text().count("status=delivered")
    assert delivered == 5, rp.log_text()[-3000:]
    for queue_id in ids:
        assert f"id={queue_id}" in rp.log_text()


def test_large_messages_go_to_the_body_log_and_arrive_whole(ringpost, smtp_sink):
    """Bodies above queue.inline_max_bytes, sent by smtplib, are appended to
    the body log (no file per message), relayed to Postfix's smtp-sink
    whole, and the body log segment is the only file they leave."""
    port = free_port()
    sink = smtp_sink(port=port)
    rp = ringpost({"delivery.smarthost": f"127.0.0.1:{port}", "server.shards": "1"})
    line = b"y" * 990
    bodies = {}
    for i in range(12):
        lines = 70 + 13 * i  # 70 to 213 KiB
        bodies[i] = (b"Subject: big %d\r\n\r\nstart-%05d\r\n" % (i, i)
                     + (b"%05d " % i + line + b"\r\n") * lines + b"end-%05d\r\n" % i, lines)
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=30) as s:
        s.ehlo("queue.test")
        for i, (body, _) in bodies.items():
            s.mail("alice@example.org")
            assert s.rcpt("someone@example.net")[0] == 250
            code, text = s.data(body)
            assert code == 250, text
    assert rp.body_files() == [], "no body file for a message accepted into the body log"
    assert list(rp.spool.rglob("bodylog-*.seg")), sorted(p.name for p in rp.spool.rglob("*"))
    # smtp-sink creates a message's file at MAIL and fills it as the
    # transaction goes on: wait for every message's last line.
    wait_for(lambda: all(any(b"end-%05d" % i in m for m in sink.messages()) for i in bodies),
             timeout_s=30, what="every message relayed")
    received = sink.messages()
    for i, (_, lines) in bodies.items():
        start = b"start-%05d" % i
        (message,) = [m for m in received if start in m]
        assert b"end-%05d" % i in message, f"message {i} cut short"
        assert message.count(b"%05d " % i + line) == lines, f"message {i}: lines lost or doubled"
    wait_for(lambda: rp.queue_live() == 0, what="queue to empty")
    assert rp.body_files() == []
    stats = queue_cmd(rp, "stats").stdout
    assert "body_log_segments=1" in stats, stats
    assert rp.stop() == 0
