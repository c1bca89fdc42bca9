"""Delivery to the Internet the way a relay does it: recipients' domains
looked up in DNS (a private unbound serving a test zone), MX hosts tried in
preference order, the downstream MX a real Postfix that accepts, refuses
(550) and defers (451) chosen recipients, retries by the retry runners,
one bounce per message (RFC 3464) to the sender, connection reuse."""

import email
import smtplib
import socket
import time

from conftest import free_port, wait_for

MX_ADDR = "127.0.0.21"
DEAD_ADDR = "127.0.0.22"

ZONE = [
    "multi.test. 300 IN MX 10 mx.multi.test.",
    f"mx.multi.test. 300 IN A {MX_ADDR}",
    "fallback.test. 300 IN MX 10 dead.fallback.test.",
    "fallback.test. 300 IN MX 20 live.fallback.test.",
    f"dead.fallback.test. 300 IN A {DEAD_ADDR}",
    f"live.fallback.test. 300 IN A {MX_ADDR}",
    "nullmx.test. 300 IN MX 0 .",
    f"implicit.test. 300 IN A {MX_ADDR}",
]
DOMAINS = ["multi.test", "fallback.test", "implicit.test"]


def port_free_on(addr, port):
    with socket.socket() as s:
        try:
            s.bind((addr, port))
            return True
        except OSError:
            return False


def mx_port():
    """A port free on every test address (delivery.port is one for all MX hosts)."""
    while True:
        port = free_port()
        if port_free_on(MX_ADDR, port) and port_free_on(DEAD_ADDR, port):
            return port


def start_all(ringpost, smtp_sink, unbound, postfix, access=(), settings=None):
    dns = unbound("test", ZONE)
    sink = smtp_sink()
    port = mx_port()
    downstream = postfix(MX_ADDR, port, sink.port, DOMAINS, access)
    rp = ringpost({
        "dns.servers": f'["127.0.0.1:{dns.port}"]',
        "delivery.port": str(port),
        "delivery.connection_reuse_time": '"30s"',
        **(settings or {}),
    })
    return rp, sink, downstream


def send(rp, sender, recipients, subject, body="Hello.\r\n"):
    msg = f"From: <{sender}>\r\nTo: undisclosed\r\nSubject: {subject}\r\nMessage-ID: <{subject}@client.test>\r\n\r\n{body}"
    with smtplib.SMTP("127.0.0.1", rp.port) as s:
        refused = s.sendmail(sender, recipients, msg)
    assert refused == {}
    return msg


def sink_rcpts(sink, subject):
    """The recipients of each message the sink received with this subject."""
    found = []
    for m in sink.messages():
        lines = [line.rstrip(b"\r") for line in m.splitlines()]
        if f"Subject: {subject}".encode() in lines:
            # smtp-sink's X-Rcpt-Args: <addr> [ORCPT=...]
            rcpts = [line.split(b":", 1)[1].split()[0].decode() for line in lines
                     if line.startswith(b"X-Rcpt-Args:")]
            found.append(rcpts)
    return found


def bounces(rp, user="sender"):
    return [email.message_from_bytes(p.read_bytes()) for p in rp.maildir_files(user)]


def test_three_recipients_delivered_twice_bounced_once(ringpost, smtp_sink, unbound, postfix):
    # A reused session would keep talking to the smtpd process that read
    # the old access table: Postfix's reload reaches new sessions only.
    rp, sink, downstream = start_all(ringpost, smtp_sink, unbound, postfix, access=[
        "bad@multi.test 550 5.1.1 no such user here",
        "later@multi.test 451 4.2.0 try again later",
    ], settings={"delivery.connection_reuse_time": '"300ms"'})
    send(rp, "sender@localhost", ["good@multi.test", "bad@multi.test", "later@multi.test"], "three")
    wait_for(lambda: sink_rcpts(sink, "three"), what="the first delivery")
    wait_for(lambda: "later@multi.test" in rp.log_text() and "status=deferred" in rp.log_text(),
             what="the deferral")
    # One recipient is still pending: no bounce yet, one per message.
    time.sleep(1.5)
    assert bounces(rp) == []
    downstream.set_access(["bad@multi.test 550 5.1.1 no such user here"])
    wait_for(lambda: len(sink_rcpts(sink, "three")) == 2, timeout_s=30, what="the retried delivery")
    assert sorted(r for rcpts in sink_rcpts(sink, "three") for r in rcpts) == [
        "<good@multi.test>", "<later@multi.test>"]

    wait_for(lambda: bounces(rp), timeout_s=30, what="the bounce")
    time.sleep(1.0)
    got = bounces(rp)
    assert len(got) == 1, "one bounce per message"
    dsn = got[0]
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    parts = list(dsn.walk())
    status = [p for p in parts if p.get_content_type() == "message/delivery-status"]
    assert status, "a message/delivery-status part"
    status_text = status[0].as_string()
    assert "Final-Recipient: rfc822; bad@multi.test" in status_text
    assert "Status: 5.1.1" in status_text
    assert "Action: failed" in status_text
    assert "good@multi.test" not in status_text and "later@multi.test" not in status_text
    headers = [p for p in parts if p.get_content_type() in ("text/rfc822-headers", "message/rfc822")]
    assert headers and "Subject: three" in headers[0].as_string()
    assert dsn["From"], "the bounce has a From header"
    assert "MAILER-DAEMON" in dsn["From"].upper(), dsn["From"]
    # The bounce itself came from the null sender.
    raw = rp.maildir_files("sender")[0].read_bytes()
    assert raw.startswith(b"Return-Path: <>")
    assert rp.queue_live() == 0


def test_dead_first_mx_falls_back_to_the_second(ringpost, smtp_sink, unbound, postfix):
    rp, sink, _ = start_all(ringpost, smtp_sink, unbound, postfix)
    send(rp, "sender@localhost", ["someone@fallback.test"], "fallback")
    wait_for(lambda: sink_rcpts(sink, "fallback"), what="delivery through the second MX")
    log = rp.log_text()
    assert f"live.fallback.test[{MX_ADDR}]" in log
    assert "status=delivered" in log


def test_implicit_mx_is_the_domain_itself(ringpost, smtp_sink, unbound, postfix):
    rp, sink, _ = start_all(ringpost, smtp_sink, unbound, postfix)
    send(rp, "sender@localhost", ["someone@implicit.test"], "implicit")
    wait_for(lambda: sink_rcpts(sink, "implicit"), what="delivery to the domain's own address")
    assert f"implicit.test[{MX_ADDR}]" in rp.log_text()


def test_null_mx_and_missing_domain_bounce_at_once(ringpost, smtp_sink, unbound, postfix):
    rp, sink, _ = start_all(ringpost, smtp_sink, unbound, postfix)
    send(rp, "sender@localhost", ["someone@nullmx.test", "someone@nosuch.test"], "nowhere")
    wait_for(lambda: bounces(rp), what="the bounce")
    time.sleep(0.5)
    got = bounces(rp)
    assert len(got) == 1
    text = got[0].as_string()
    assert "Final-Recipient: rfc822; someone@nullmx.test" in text
    assert "Status: 5.1.10" in text
    assert "Final-Recipient: rfc822; someone@nosuch.test" in text
    assert "Status: 5.1.2" in text
    assert "attempt=1" in rp.log_text(), "no retry before the bounce"
    assert sink_rcpts(sink, "nowhere") == []


def test_connections_are_reused_per_destination(ringpost, smtp_sink, unbound, postfix):
    rp, sink, downstream = start_all(ringpost, smtp_sink, unbound, postfix, settings={"server.shards": "1"})
    count = 10
    with smtplib.SMTP("127.0.0.1", rp.port) as s:
        for i in range(count):
            s.sendmail("sender@localhost", [f"user{i}@multi.test"],
                       f"Subject: reuse {i}\r\nMessage-ID: <reuse{i}@client.test>\r\n\r\nHi.\r\n")
            # One at a time, so that each finds the last one's idle session.
            wait_for(lambda: sink_rcpts(sink, f"reuse {i}"), what=f"message {i} at the sink")
    log = rp.log_text()
    uses = [int(part.split("=")[1].rstrip('"')) for line in log.splitlines() if "event=delivery" in line
            for part in line.split() if part.startswith("conn_use=")]
    assert uses == list(range(1, count + 1)), f"one session carried them all: conn_use {uses}"
    log = downstream.log_text()
    # Less the fixture's own probe of the port (a session of no commands).
    connects = log.count("]: connect from") - log.count("commands=0/0")
    assert connects == 1, f"{connects} connections for {count} messages:\n{log}"


def test_a_restart_loses_no_schedule(ringpost, smtp_sink, unbound, postfix):
    rp, sink, downstream = start_all(ringpost, smtp_sink, unbound, postfix, access=[
        "later@multi.test 451 4.2.0 try again later",
    ], settings={"delivery.connection_reuse_time": '"0s"'})
    send(rp, "sender@localhost", ["later@multi.test", "now@multi.test"], "restart")
    wait_for(lambda: "status=deferred" in rp.log_text(), what="the deferral")
    wait_for(lambda: sink_rcpts(sink, "restart"), what="the first recipient's delivery")
    assert rp.stop() == 0
    downstream.set_access([])
    again = ringpost({k: v for k, v in rp.settings.items() if k != "server.listen"}, workdir=rp.workdir)
    # The retry comes from the recovered retry log, for the pending
    # recipient only: "now" is not delivered twice.
    wait_for(lambda: len(sink_rcpts(sink, "restart")) == 2, timeout_s=30, what="the retry after the restart")
    assert sorted(r for rcpts in sink_rcpts(sink, "restart") for r in rcpts) == [
        "<later@multi.test>", "<now@multi.test>"]
    wait_for(lambda: again.queue_live() == 0, what="the queue to empty")
