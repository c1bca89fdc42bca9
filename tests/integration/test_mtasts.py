"""MTA-STS (RFC 8461) end to end: a private unbound serves the
`_mta-sts` TXT records and the MX hosts, a local HTTPS server (Python's
http.server with a certificate from a test CA for the mta-sts.DOMAIN
names) serves the policies, a private Postfix with a certificate for its
MX name takes the mail. `enforce` with a matching MX → delivered over
verified TLS, the policy fetched once and then cached; a non-matching MX
→ deferred 4.7.5; `testing` → delivered, the mismatch logged."""

import http.server
import shutil
import smtplib
import ssl
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import Unbound, free_port, unbound_binary, wait_for

HTTPS_ADDR = "127.0.0.45"

POLICIES = {
    "mta-sts.sts.test": "version: STSv1\r\nmode: enforce\r\nmx: *.sts.test\r\nmax_age: 86400\r\n",
    "mta-sts.other.test": "version: STSv1\r\nmode: enforce\r\nmx: mx9.other.test\r\nmax_age: 86400\r\n",
    "mta-sts.testing.test": "version: STSv1\r\nmode: testing\r\nmx: mx9.testing.test\r\nmax_age: 86400\r\n",
    "mta-sts.rotate.test": "version: STSv1\r\nmode: enforce\r\nmx: mx1.rotate.test\r\nmax_age: 86400\r\n",
}

ZONE = [
    "sts.test. 300 IN MX 10 mx1.sts.test.",
    "mx1.sts.test. 300 IN A 127.0.0.1",
    "other.test. 300 IN MX 10 mx1.other.test.",
    "mx1.other.test. 300 IN A 127.0.0.1",
    "testing.test. 300 IN MX 10 mx1.testing.test.",
    "mx1.testing.test. 300 IN A 127.0.0.1",
    "rotate.test. 300 IN MX 10 mx1.rotate.test.",
    "mx1.rotate.test. 300 IN A 127.0.0.1",
] + [f"{host}. 300 IN A {HTTPS_ADDR}" for host in POLICIES] + [
    # rotate.test's TXT record lives 1 s: the test changes its id.
    f'_mta-sts.{host.removeprefix("mta-sts.")}. {1 if "rotate" in host else 300} IN TXT "v=STSv1; id=20261201"'
    for host in POLICIES
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
    """unbound with ZONE (the TXT texts are in double quotes, so each record
    is in single ones), restarted on the same port with unbound-control on
    a unix socket, so that a test can change a record
    (`server.control(...)`)."""
    server = Unbound(tmp_path / "unbound", "test", ZONE, quote="'")
    control_dir = Path(tempfile.mkdtemp(prefix="rp-ubctl-"))
    conf = tmp_path / "unbound" / "unbound.conf"
    text = conf.read_text().replace(
        "remote-control:\n    control-enable: no\n",
        f"remote-control:\n    control-enable: yes\n    control-interface: {control_dir}/ctl\n"
        "    control-use-cert: no\n")
    server.stop()
    conf.write_text(text)
    server.log = open(tmp_path / "unbound" / "unbound.log", "ab")
    server.proc = subprocess.Popen([str(unbound_binary()), "-d", "-c", str(conf)], stdout=server.log,
                                   stderr=server.log)
    assert server._answers("test"), "unbound restarted with its control socket"

    def control(*args):
        subprocess.run(["unbound-control", "-c", str(conf), *args], check=True, capture_output=True)
    server.control = control
    yield server
    server.stop()
    shutil.rmtree(control_dir, ignore_errors=True)


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
    cert, key = policy_server.ca.issue(["mx1.sts.test", "mx1.other.test", "mx1.testing.test", "mx1.rotate.test"])
    postfix("127.0.0.1", port, sink.port, ["sts.test", "other.test", "testing.test", "rotate.test"],
            tls=(cert, key))
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


def test_a_new_txt_id_fetches_the_policy_again(ringpost, sts_dns, postfix, smtp_sink, policy_server):
    """The policy changes (its MX pattern no longer names the MX host) and
    the TXT record gets a new id: the next delivery fetches the new
    policy, which defers it."""
    sink, rp = world(ringpost, sts_dns, postfix, smtp_sink, policy_server, {"server.shards": "1"})
    send(rp, "a@rotate.test", "old policy")
    sink.wait_message(b"Subject: old policy")
    POLICIES["mta-sts.rotate.test"] = "version: STSv1\r\nmode: enforce\r\nmx: mx9.rotate.test\r\nmax_age: 86400\r\n"
    try:
        sts_dns.control("local_data_remove", "_mta-sts.rotate.test.")
        sts_dns.control("local_data", '_mta-sts.rotate.test. 1 IN TXT "v=STSv1; id=20261202"')
        time.sleep(1.5)  # the old TXT answer's TTL
        send(rp, "b@rotate.test", "new policy")
        line = delivery_lines(rp, "b@rotate.test")[0]
    finally:
        POLICIES["mta-sts.rotate.test"] = \
            "version: STSv1\r\nmode: enforce\r\nmx: mx1.rotate.test\r\nmax_age: 86400\r\n"
    assert "status=deferred" in line and "4.7.5" in line and "MTA-STS" in line, line
    fetched = [r for r in policy_server.requests if r[0] == "mta-sts.rotate.test"]
    assert len(fetched) == 2, policy_server.requests


def test_enforce_needs_a_verified_certificate_even_where_the_configured_level_is_may(
        ringpost, sts_dns, postfix, smtp_sink, policy_server, test_ca):
    """The policy is fetched (its host's CA is mta_sts_ca_file) and names
    the MX host, but the MX certificate does not chain to tls_ca_file: with
    delivery.tls = "may" the message is still deferred with 4.7.5, never
    sent unverified or in plaintext."""
    other = test_ca("Some Other CA")
    sink, rp = world(ringpost, sts_dns, postfix, smtp_sink, policy_server,
                     {"delivery.tls": '"may"', "delivery.tls_ca_file": f'"{other.cert}"',
                      "delivery.mta_sts_ca_file": f'"{policy_server.ca.cert}"'})
    send(rp, "a@sts.test", "unverified mx")
    line = delivery_lines(rp, "a@sts.test")[0]
    assert "status=deferred" in line and "4.7.5" in line and "UnknownIssuer" in line, line
    assert "event=mta_sts_policy" in rp.log_text()
    assert sink.messages() == []
