"""Replication to a peer before the 250 ([replicate]), end to end with two
ringpost processes on loopback and Postfix's smtp-sink as the next hop.

The origin sends each message to its peer as a replica (MAIL ...
XREPLICA=<id>) and answers the final dot only once the peer said 250 and
its own commit is durable. The peer holds the replica untried; the
origin's XREPLDONE removes it once the message is delivered; if the origin
falls silent for replicate.takeover_after, the peer delivers what it holds.
Killing the origin with SIGKILL in the middle of a load must leave every
acknowledged message delivered at least once and at most twice (counted at
the sink by Message-ID)."""

import collections
import re
import signal
import smtplib
import threading
import time

import pytest

from conftest import free_port, wait_for

TAKEOVER = "4s"


def message(tag):
    return (f"From: <sender@client.test>\r\nTo: <rcpt@far.test>\r\nSubject: {tag}\r\n"
            f"Date: Tue, 01 Dec 2026 12:00:00 +0000\r\nMessage-ID: <{tag}@client.test>\r\n\r\n"
            f"replicated message {tag}\r\n").encode()


def send(rp, tag):
    """The reply to the final dot: (code, text)."""
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=30) as client:
        client.ehlo("client.test")
        assert client.mail("sender@client.test")[0] == 250
        assert client.rcpt("rcpt@far.test")[0] == 250
        return client.data(message(tag))


def pair(ringpost, sink, origin_extra=None):
    """A peer holding replicas and an origin replicating to it; both relay to the sink."""
    peer = ringpost({
        "server.hostname": "peer.test",
        "delivery.smarthost": f'"127.0.0.1:{sink.port}"',
        "replicate.accept_from": '["127.0.0.1/32"]',
        "replicate.takeover_after": f'"{TAKEOVER}"',
    })
    settings = {
        "server.hostname": "origin.test",
        "delivery.smarthost": f'"127.0.0.1:{sink.port}"',
        "replicate.peer": f'"127.0.0.1:{peer.port}"',
        "replicate.takeover_after": f'"{TAKEOVER}"',
    }
    settings.update(origin_extra or {})
    return ringpost(settings), peer


def count_by_message_id(sink):
    counts = collections.Counter()
    for m in sink.messages():
        found = re.search(rb"Message-ID: <([^>]+)@client.test>", m)
        if found:
            counts[found.group(1).decode()] += 1
    return counts


def test_the_peer_holds_a_replica_until_the_origin_reports_it_delivered(ringpost, smtp_sink):
    sink = smtp_sink()
    origin, peer = pair(ringpost, sink)
    code, text = send(origin, "one")
    assert code == 250, text
    origin_id = re.search(rb"queued as ([0-9A-F]{16})", text).group(1).decode()
    replica_id = origin_id[:14] + "%02X" % (int(origin_id[14:], 16) | 0x80)
    # Held at the peer before the client heard 250.
    assert f"event=replica_stored id={replica_id}" in peer.log_text()
    assert f"event=replicated id={origin_id}" in origin.log_text()
    sink.wait_message(b"Subject: one")
    # The origin's XREPLDONE removes it; nothing is taken over, even after
    # twice the takeover time (the origin's heartbeats keep it alive).
    wait_for(lambda: f"event=replica_done id={replica_id}" in peer.log_text(), what="the replica's removal")
    time.sleep(2 * 4 + 1)
    assert "replica_takeover" not in peer.log_text()
    assert count_by_message_id(sink) == {"one": 1}
    assert peer.queue_live() == 0


def test_a_dead_peer_tempfails_or_accepts_per_on_failure(ringpost, smtp_sink):
    sink = smtp_sink()
    closed = free_port()
    tempfail = ringpost({
        "delivery.smarthost": f'"127.0.0.1:{sink.port}"',
        "replicate.peer": f'"127.0.0.1:{closed}"',
        "replicate.timeout": '"2s"',
    })
    code, text = send(tempfail, "tempfailed")
    assert (code, text[:5]) == (451, b"4.3.0"), text
    assert "event=replicate_failed" in tempfail.log_text()
    assert tempfail.queue_live() == 0
    accept = ringpost({
        "delivery.smarthost": f'"127.0.0.1:{sink.port}"',
        "replicate.peer": f'"127.0.0.1:{closed}"',
        "replicate.on_failure": '"accept"',
    })
    code, text = send(accept, "accepted-alone")
    assert code == 250, text
    sink.wait_message(b"Subject: accepted-alone")
    assert count_by_message_id(sink) == {"accepted-alone": 1}


def test_a_client_outside_accept_from_cannot_store_replicas(ringpost, smtp_sink):
    sink = smtp_sink()
    rp = ringpost({"delivery.smarthost": f'"127.0.0.1:{sink.port}"'})
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=30) as client:
        code, ehlo = client.ehlo("client.test")
        assert b"XREPLICA" not in ehlo
        assert client.docmd("MAIL FROM:<sender@client.test> XREPLICA=0006201A2B3C4D01")[0] == 555
        assert client.docmd("XREPLDONE 0006201A2B3C4D01")[0] == 500


def test_origin_killed_after_its_250s_loses_nothing(ringpost, smtp_sink):
    """SIGKILL to the origin while clients are sending: the peer takes over
    what the origin had not reported delivered; the origin, restarted,
    delivers what it recovers. Every acknowledged message reaches the sink
    once, or twice at worst."""
    sink = smtp_sink()
    origin, peer = pair(ringpost, sink)
    acked = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(n):
        for i in range(1000):
            if stop.is_set():
                return
            tag = f"c{n}m{i}"
            try:
                code, _ = send(origin, tag)
            except (OSError, smtplib.SMTPException):
                return
            if code == 250:
                with lock:
                    acked.append(tag)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    started = time.monotonic()
    for t in threads:
        t.start()
    # Long enough for the origin to have delivered and reported some (its
    # notifier speaks every second) and not others.
    wait_for(lambda: len(acked) >= 150 and time.monotonic() - started >= 3, what="150 acknowledged messages")
    origin.proc.send_signal(signal.SIGKILL)
    origin.proc.wait()
    stop.set()
    for t in threads:
        t.join(timeout=30)
    origin.proc = None
    origin.log.close()
    acked_at_kill = list(acked)
    # The peer hears nothing from the origin now, and takes over.
    wait_for(lambda: "event=replica_takeover" in peer.log_text(), timeout_s=30, what="the peer's takeover")
    wait_for(lambda: peer.queue_live() == 0, timeout_s=60, what="the peer to deliver what it took over")
    # The origin comes back and delivers what it recovers.
    origin.start()
    wait_for(lambda: origin.queue_live() == 0, timeout_s=60, what="the restarted origin's queue to empty")
    time.sleep(1)
    counts = count_by_message_id(sink)
    missing = [tag for tag in acked_at_kill if counts[tag] == 0]
    too_many = {tag: counts[tag] for tag in acked_at_kill if counts[tag] > 2}
    duplicates = sum(1 for tag in acked_at_kill if counts[tag] == 2)
    takeovers = peer.log_text().count("event=replica_takeover")
    skipped = origin.log_text().count("event=removed_taken_by_peer")
    print(f"acknowledged {len(acked_at_kill)}, duplicates {duplicates}, taken over by the peer {takeovers}, "
          f"not sent again by the restarted origin {skipped}")
    assert not missing, missing
    assert not too_many, too_many
