"""The Prometheus metrics responder (`[metrics]`, docs/metrics.md): scraped
over HTTP and read with the Prometheus client library's own parser, before
and after mail is accepted (for a smarthost and for a local Maildir),
refused as a relay attempt and delivered; requests that are not a scrape
get their HTTP errors; an address that cannot be bound stops the start."""

import smtplib
import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_port, wait_for, wait_port


def scrape(port):
    """Every sample as {(name, sorted labels): value}, and the families' types."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples, types = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, types


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def raw(port, request: bytes):
    """The status line of the response to `request`, sent as it is."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(request)
        except OSError:
            pass  # refused before the whole request was written
        reply = b""
        while True:
            try:
                chunk = s.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            reply += chunk
    return reply.split(b"\r\n", 1)[0].decode()


def start(ringpost, smtp_sink):
    sink = smtp_sink()
    metrics_port = free_port()
    rp = ringpost({
        "metrics.listen": f'"127.0.0.1:{metrics_port}"',
        "delivery.smarthost": f'"127.0.0.1:{sink.port}"',
        "relay.networks": "[]",
        "relay.domains": '["sink.test"]',
        "domains.local": '["local.test"]',
    })
    wait_port(metrics_port, proc=rp.proc)
    return rp, sink, metrics_port


def send(rp, recipient, subject):
    msg = f"From: <a@client.test>\r\nTo: <{recipient}>\r\nSubject: {subject}\r\n\r\nHello.\r\n"
    with smtplib.SMTP("127.0.0.1", rp.port) as s:
        assert s.sendmail("a@client.test", [recipient], msg) == {}


def test_scrapes_follow_sessions_queue_and_delivery(ringpost, smtp_sink):
    rp, sink, port = start(ringpost, smtp_sink)

    # The fixture's readiness probe is an SMTP session of its own; a shard
    # may accept it after the first scrape, so the baseline waits for it.
    def settled():
        samples, types = scrape(port)
        done = value(samples, "ringpost_sessions_total") >= 1 and value(samples, "ringpost_sessions_open") == 0
        return (samples, types) if done else None

    before, types = wait_for(settled, what="the readiness probe's session counted and closed")
    assert types["ringpost_sessions"] == "counter"
    assert types["ringpost_sessions_open"] == "gauge"
    assert types["ringpost_messages"] == "counter"
    for name in ("ringpost_final_dot_to_250_seconds", "ringpost_delivery_attempt_seconds",
                 "ringpost_dns_query_seconds", "ringpost_queue_commit_seconds", "ringpost_queue_flush_records"):
        assert types[name] == "histogram", name
    for cls in ("relay_attempt", "accepted", "invalid_recipient", "spam", "virus", "rate_limited"):
        assert ("ringpost_messages_total", (("class", cls),)) in before, cls

    send(rp, "one@sink.test", "metrics-1")
    send(rp, "two@sink.test", "metrics-2")
    send(rp, "alice@local.test", "metrics-3")
    with smtplib.SMTP("127.0.0.1", rp.port) as s:
        s.ehlo("client.test")
        assert s.mail("a@client.test")[0] == 250
        code, _ = s.rcpt("someone@elsewhere.test")
        assert code == 550
    sink.wait_message(b"metrics-1")
    sink.wait_message(b"metrics-2")
    wait_for(lambda: rp.maildir_files("alice"), what="the local delivery")

    def delivered():
        samples, _ = scrape(port)
        moved = value(samples, "ringpost_delivery_recipients_total", result="delivered") \
            - value(before, "ringpost_delivery_recipients_total", result="delivered")
        done = moved >= 3 and value(samples, "ringpost_queue_messages") == 0 \
            and value(samples, "ringpost_sessions_open") == 0
        return samples if done else None

    after = wait_for(delivered, what="three deliveries counted and the queue empty")

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("ringpost_sessions_total") == 4
    assert delta("ringpost_messages_total", **{"class": "accepted"}) == 3
    assert delta("ringpost_messages_total", **{"class": "relay_attempt"}) == 1
    assert delta("ringpost_recipients_accepted_total") == 3
    assert delta("ringpost_received_bytes_total") >= 3 * len("Subject: metrics-1\r\n")
    assert delta("ringpost_final_dot_to_250_seconds_count") == 3
    assert delta("ringpost_final_dot_to_250_seconds_bucket", le="+Inf") == 3
    assert delta("ringpost_final_dot_to_250_seconds_sum") > 0
    # Three envelopes and three completions: at least one head flush, and
    # every flush observed by both queue histograms.
    assert delta("ringpost_queue_flushes_total", log="head") >= 1
    flushes = delta("ringpost_queue_flushes_total", log="head") + delta("ringpost_queue_flushes_total", log="retry")
    assert delta("ringpost_queue_flush_records_count") == flushes
    assert delta("ringpost_queue_commit_seconds_count") == flushes
    assert delta("ringpost_queue_flush_records_sum") >= 6
    assert delta("ringpost_queue_written_bytes_total") >= 4096
    assert value(after, "ringpost_queue_segments") >= 1
    assert value(after, "ringpost_queue_log_bytes") > 0
    assert value(after, "ringpost_queue_deferred") == 0
    assert delta("ringpost_delivery_attempts_total") == 3
    assert delta("ringpost_delivery_recipients_total", result="delivered") == 3
    assert delta("ringpost_delivery_recipients_total", result="failed") == 0
    assert delta("ringpost_delivery_attempt_seconds_count") == 3
    assert delta("ringpost_outbound_connections_opened_total") >= 1
    assert value(after, "ringpost_delivery_attempts_active") == 0
    # Buckets are cumulative and end at the count.
    buckets = sorted((float(dict(labels)["le"]), v) for (name, labels), v in after.items()
                     if name == "ringpost_final_dot_to_250_seconds_bucket")
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))
    assert buckets[-1][1] == value(after, "ringpost_final_dot_to_250_seconds_count")


def test_requests_other_than_a_scrape_get_their_errors(ringpost, smtp_sink):
    _, _, port = start(ringpost, smtp_sink)
    assert raw(port, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n") == "HTTP/1.1 200 OK"
    assert raw(port, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n") == "HTTP/1.1 200 OK"
    assert raw(port, b"GET / HTTP/1.1\r\n\r\n") == "HTTP/1.1 404 Not Found"
    assert raw(port, b"GET /metrics/extra HTTP/1.1\r\n\r\n") == "HTTP/1.1 404 Not Found"
    assert raw(port, b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nab") == "HTTP/1.1 405 Method Not Allowed"
    assert raw(port, b"PUT /metrics HTTP/1.1\r\n\r\n") == "HTTP/1.1 405 Method Not Allowed"
    assert raw(port, b"hello\r\n\r\n") == "HTTP/1.1 400 Bad Request"
    big = b"GET /metrics HTTP/1.1\r\nX-Filler: " + b"a" * 20000 + b"\r\n\r\n"
    assert raw(port, big) == "HTTP/1.1 431 Request Header Fields Too Large"
    # Still serving after all of that.
    samples, _ = scrape(port)
    assert value(samples, "ringpost_sessions_open") == 0


def test_an_address_that_cannot_be_bound_stops_the_start(ringpost):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError):
            ringpost({"metrics.listen": f'"127.0.0.1:{port}"'})


def test_dns_lookups_and_their_latency_are_counted(ringpost, smtp_sink, unbound):
    """Mail for a domain found by MX in a private unbound: the lookups go
    on the wire once (the second message's come from the cache)."""
    dns = unbound("test", ["mx.test. 300 IN MX 10 host.mx.test.", "host.mx.test. 300 IN A 127.0.0.1"])
    sink = smtp_sink()
    port = free_port()
    rp = ringpost({
        "metrics.listen": f'"127.0.0.1:{port}"',
        "dns.servers": f'["127.0.0.1:{dns.port}"]',
        "delivery.port": str(sink.port),
        "relay.networks": "[]",
        "relay.domains": '["mx.test"]',
        "server.shards": "1",
    })
    wait_port(port, proc=rp.proc)
    before, _ = scrape(port)
    send(rp, "one@mx.test", "dns-1")
    sink.wait_message(b"dns-1")
    send(rp, "two@mx.test", "dns-2")
    sink.wait_message(b"dns-2")

    def counted():
        samples, _ = scrape(port)
        moved = value(samples, "ringpost_delivery_recipients_total", result="delivered") \
            - value(before, "ringpost_delivery_recipients_total", result="delivered")
        return samples if moved >= 2 else None

    after = wait_for(counted, what="two deliveries counted")

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("ringpost_dns_lookups_total") >= 4  # MX and A, twice
    assert delta("ringpost_dns_queries_total", result="answer") >= 2
    assert delta("ringpost_dns_queries_total", result="error") == 0
    assert delta("ringpost_dns_cache_hits_total") >= 2
    assert delta("ringpost_dns_query_seconds_count") == delta("ringpost_dns_queries_total", result="answer")
    assert delta("ringpost_delivery_attempt_seconds_count") == 2


def test_scans_are_counted_by_outcome(ringpost, smtp_sink):
    """A scanner that cannot be reached, with on_failure = "accept": the
    message is taken and the scan counted as failed."""
    sink = smtp_sink()
    port = free_port()
    scanner = f'[{{name = "spam", kind = "spamd", address = "127.0.0.1:{free_port()}", on_failure = "accept"}}]'
    rp = ringpost({
        "metrics.listen": f'"127.0.0.1:{port}"',
        "delivery.smarthost": f'"127.0.0.1:{sink.port}"',
        "relay.domains": '["sink.test"]',
        "scanner": scanner,
    })
    wait_port(port, proc=rp.proc)
    before, _ = scrape(port)
    send(rp, "one@sink.test", "scan-1")
    after, _ = scrape(port)
    for result, moved in (("failed", 1), ("accept", 0), ("reject", 0)):
        assert value(after, "ringpost_scans_total", result=result) \
            - value(before, "ringpost_scans_total", result=result) == moved, result
    sink.wait_message(b"scan-1")
