"""Early delivery (`delivery.early_ms`): the message is offered to the next
hop before it is committed. All recipients accepted: the client's 250
comes with no local commit at all. Some refused: the message is committed
with the accepted ones marked delivered, so they are never sent twice. A
next hop too slow: the message is committed and delivered as usual."""

import smtplib
import time

from conftest import free_port, wait_for
from test_delivery import sink_rcpts


def queued_lines(rp):
    return [line for line in rp.log_text().splitlines() if "event=queued " in line]


def test_all_accepted_means_no_commit(ringpost, smtp_sink):
    sink = smtp_sink()
    rp = ringpost({"delivery.smarthost": f'"127.0.0.1:{sink.port}"', "delivery.early_ms": "5000"})
    with smtplib.SMTP("127.0.0.1", rp.port) as s:
        s.ehlo("client.test")
        s.mail("a@client.test")
        s.rcpt("b@remote.test")
        s.rcpt("c@remote.test")
        code, text = s.data(b"Subject: early\r\n\r\nHi.\r\n")
    assert code == 250 and b"delivered as" in text, text
    # The sink had the message before the client had its 250.
    assert [m for m in sink.messages() if b"Subject: early" in m]
    log = rp.log_text()
    assert "event=relayed_early" in log and log.count("status=delivered_early") == 2
    assert queued_lines(rp) == [], "never written to the queue"
    assert rp.queue_live() == 0
    time.sleep(0.5)
    assert len([m for m in sink.messages() if b"Subject: early" in m]) == 1


def test_partly_refused_commits_only_what_is_left(ringpost, smtp_sink, postfix):
    sink = smtp_sink()
    port = free_port()
    postfix("127.0.0.1", port, sink.port, ["remote.test"], access=["bad@remote.test 550 5.1.1 no such user"])
    rp = ringpost({"delivery.smarthost": f'"127.0.0.1:{port}"', "delivery.early_ms": "5000",
                   "delivery.connection_reuse_time": '"0s"'})
    with smtplib.SMTP("127.0.0.1", rp.port) as s:
        s.sendmail("sender@localhost", ["good@remote.test", "bad@remote.test"], "Subject: partly\r\n\r\nHi.\r\n")
    assert len(queued_lines(rp)) == 1, "committed, for the refused recipient"
    bounce = wait_for(lambda: rp.maildir_files("sender"), what="the bounce for the refused recipient")
    assert b"bad@remote.test" in bounce[0].read_bytes()
    time.sleep(1.0)
    assert sorted(r for rcpts in sink_rcpts(sink, "partly") for r in rcpts) == ["<good@remote.test>"], \
        "the early recipient is not delivered again"


def test_too_slow_a_next_hop_means_the_usual_commit(ringpost, smtp_sink):
    sink = smtp_sink("-w", "2")  # smtp-sink waits 2 s before answering DATA
    rp = ringpost({"delivery.smarthost": f'"127.0.0.1:{sink.port}"', "delivery.early_ms": "300"})
    started = time.monotonic()
    with smtplib.SMTP("127.0.0.1", rp.port) as s:
        s.sendmail("a@client.test", ["b@remote.test"], "Subject: slow\r\n\r\nHi.\r\n")
    assert time.monotonic() - started < 2.0, "the client waited about early_ms, not the next hop"
    assert len(queued_lines(rp)) == 1
    sink.wait_message(b"Subject: slow", timeout_s=30)
    wait_for(lambda: "status=delivered " in rp.log_text(), what="the normal delivery")
