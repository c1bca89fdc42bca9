"""MTA-STS (RFC 8461) end to end: a private unbound serves the
`_mta-sts` TXT records and the MX hosts, a local HTTPS server (Python's
http.server with a certificate from a test CA for the mta-sts.DOMAIN
names) serves the policies, a private Postfix with a certificate for its
MX name takes the mail. `enforce` with a matching MX → delivered over
verified TLS, the policy fetched once and then cached; a non-matching MX
→ deferred 4.7.5; `testing` → delivered, the mismatch logged."""

import http.server
import smtplib
import ssl
import threading

import pytest

from conftest import Unbound, free_port, wait_for

HTTPS_ADDR = "127.0.0.45"

POLICIES = {
    "mta-sts.sts.test": "version: STSv1\r\nmode: enforce\r\nmx: *.sts.test\r\nmax_age: 86400\r\n",
    "mta-sts.other.test": "version: STSv1\r\nmode: enforce\r\nmx: mx9.other.test\r\nmax_age: 86400\r\n",
    "mta-sts.testing.test": "version: STSv1\r\nmode: testing\r\nmx: mx9.testing.test\r\nmax_age: 86400\r\n",
}

ZONE = [
    "sts.test. 300 IN MX 10 mx1.sts.test.",
    "mx1.sts.test. 300 IN A 127.0.0.1",
    "other.test. 300 IN MX 10 mx1.other.test.",
    "mx1.other.test. 300 IN A 127.0.0.1",
    "testing.test. 300 IN MX 10 mx1.testing.test.",
    "mx1.testing.test. 300 IN A 127.0.0.1",
] + [f"{host}. 300 IN A {HTTPS_ADDR}" for host in POLICIES] + [
    f'_mta-sts.{host.removeprefix("mta-sts.")}. 300 IN TXT "v=STSv1; id=20261201"' for host in POLICIES
]


class PolicyServer:
    """HTTPS on HTTPS_ADDR:443 answering /.well-known/mta-sts.txt by Host."""

    def __init__(self, cert, key):
        self.requests = []
        requests = self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                host = (self.headers.get("Host") or "").split(":")[0]
                requests.append((host, self.path))
                body = POLICIES.get(host) if self.path == "/.well-known/mta-sts.txt" else None
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer((HTTPS_ADDR, 443), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert), str(key))
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def policy_server(test_ca):
    ca = test_ca()
    cert, key = ca.issue(list(POLICIES))
    try:
        server = PolicyServer(cert, key)
    except PermissionError:
        pytest.fail("binding port 443 needs root (the tests run as root)")
    server.ca = ca
    yield server
    server.stop()


@pytest.fixture
def sts_dns(tmp_path):
    """unbound with ZONE; the TXT texts are in double quotes, so each record
    is in single ones."""
    server = Unbound(tmp_path / "unbound", "test", ZONE, quote="'")
    yield server
    server.stop()


def send(rp, recipient, subject):
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=30) as s:
        s.sendmail("sender@localhost", [recipient], f"Subject: {subject}\r\n\r\nHello.\r\n")


def delivery_lines(rp, recipient, count=1):
    def find():
        lines = [l for l in rp.log_text().splitlines() if "event=delivery " in l and f"to={recipient}" in l]
        return len(lines) >= count and lines
    return wait_for(find, what=f"{count} delivery lines for {recipient}")


def world(ringpost, dns, postfix, smtp_sink, policy_server, settings=()):
    sink = smtp_sink()
    port = free_port()
    # The MX certificate comes from the same CA as the policy host's.
    cert, key = policy_server.ca.issue(["mx1.sts.test", "mx1.other.test", "mx1.testing.test"])
    postfix("127.0.0.1", port, sink.port, ["sts.test", "other.test", "testing.test"], tls=(cert, key))
    rp = ringpost({"dns.servers": f'["127.0.0.1:{dns.port}"]', "delivery.port": str(port),
                   "delivery.mta_sts": "true", "delivery.tls_ca_file": f'"{policy_server.ca.cert}"',
                   **dict(settings)})
    return sink, rp


def test_enforce_delivers_to_a_matching_mx_and_caches_the_policy(ringpost, sts_dns, postfix, smtp_sink,
                                                                 policy_server):
    sink, rp = world(ringpost, sts_dns, postfix, smtp_sink, policy_server, {"server.shards": "1"})
    send(rp, "a@sts.test", "first")
    sink.wait_message(b"Subject: first")
    send(rp, "b@sts.test", "second")
    sink.wait_message(b"Subject: second")
    for line in delivery_lines(rp, "a@sts.test") + delivery_lines(rp, "b@sts.test"):
        assert "status=delivered" in line and "tls=yes tls_level=verify" in line, line
    fetched = [r for r in policy_server.requests if r[0] == "mta-sts.sts.test"]
    assert fetched == [("mta-sts.sts.test", "/.well-known/mta-sts.txt")], policy_server.requests
    assert "event=mta_sts_policy" in rp.log_text() and "mode=enforce" in rp.log_text()


def test_enforce_defers_an_mx_the_policy_does_not_name(ringpost, sts_dns, postfix, smtp_sink, policy_server):
    sink, rp = world(ringpost, sts_dns, postfix, smtp_sink, policy_server)
    send(rp, "a@other.test", "not in the policy")
    line = delivery_lines(rp, "a@other.test")[0]
    assert "status=deferred" in line and "4.7.5" in line and "MTA-STS" in line, line
    assert sink.messages() == []


def test_testing_mode_delivers_and_logs_the_mismatch(ringpost, sts_dns, postfix, smtp_sink, policy_server):
    sink, rp = world(ringpost, sts_dns, postfix, smtp_sink, policy_server)
    send(rp, "a@testing.test", "testing mode")
    sink.wait_message(b"Subject: testing mode")
    assert "status=delivered" in delivery_lines(rp, "a@testing.test")[0]
    assert wait_for(lambda: "event=mta_sts_testing" in rp.log_text(), what="the testing-mode log line")


def test_without_a_trusted_policy_certificate_there_is_no_policy(ringpost, sts_dns, postfix, smtp_sink,
                                                                 policy_server, test_ca):
    """The policy host's certificate does not verify (another CA for the
    HTTPS fetch): the fetch fails, the domain has no policy, and the
    non-matching MX of other.test gets its mail at the configured level."""
    other = test_ca("Some Other CA")
    sink, rp = world(ringpost, sts_dns, postfix, smtp_sink, policy_server,
                     {"delivery.mta_sts_ca_file": f'"{other.cert}"'})
    send(rp, "a@other.test", "no policy")
    sink.wait_message(b"Subject: no policy")
    assert "event=mta_sts_fetch_failed" in rp.log_text()
