"""Outbound TLS that authenticates (`delivery.tls = "verify"`): ringpost
delivers to a private Postfix whose certificate comes from a test CA
(openssl) only when the certificate chains to `delivery.tls_ca_file` and
names the MX host; a certificate for another name, or from a CA ringpost
does not trust, defers the message with 4.7.5 and nothing reaches
Postfix. A rule's `tls = "verify"` applies to its domains only."""

import smtplib

from conftest import free_port, wait_for

ZONE = [
    "good.test. 300 IN MX 10 mx1.good.test.",
    "mx1.good.test. 300 IN A 127.0.0.1",
    "badname.test. 300 IN MX 10 mx2.badname.test.",
    "mx2.badname.test. 300 IN A 127.0.0.1",
]


def send(rp, recipient, subject):
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=30) as s:
        s.sendmail("sender@localhost", [recipient], f"Subject: {subject}\r\n\r\nHello.\r\n")


def delivery_line(rp, recipient):
    def find():
        return [l for l in rp.log_text().splitlines() if "event=delivery " in l and f"to={recipient}" in l]
    return wait_for(find, what=f"a delivery line for {recipient}")[0]


def world(unbound, postfix, smtp_sink, ca):
    sink = smtp_sink()
    port = free_port()
    cert, key = ca.issue(["mx1.good.test"])
    downstream = postfix("127.0.0.1", port, sink.port, ["good.test", "badname.test"], tls=(cert, key))
    dns = unbound("test", ZONE)
    settings = {"dns.servers": f'["127.0.0.1:{dns.port}"]', "delivery.port": str(port)}
    return sink, downstream, settings


def test_verify_delivers_to_the_right_name_from_a_trusted_ca(ringpost, unbound, postfix, smtp_sink, test_ca):
    ca = test_ca()
    sink, downstream, settings = world(unbound, postfix, smtp_sink, ca)
    rp = ringpost({**settings, "delivery.tls": '"verify"', "delivery.tls_ca_file": f'"{ca.cert}"'})
    send(rp, "a@good.test", "verified")
    sink.wait_message(b"Subject: verified")
    line = delivery_line(rp, "a@good.test")
    assert "status=delivered" in line and "tls=yes tls_level=verify" in line, line
    assert "mx1.good.test[127.0.0.1]" in line


def test_verify_defers_a_certificate_for_another_name(ringpost, unbound, postfix, smtp_sink, test_ca):
    ca = test_ca()
    sink, downstream, settings = world(unbound, postfix, smtp_sink, ca)
    rp = ringpost({**settings, "delivery.tls": '"verify"', "delivery.tls_ca_file": f'"{ca.cert}"'})
    send(rp, "b@badname.test", "wrong name")
    line = delivery_line(rp, "b@badname.test")
    assert "status=deferred" in line and "4.7.5" in line, line
    assert "NotValidForName" in line or "not valid for" in line.lower(), line
    assert sink.messages() == []
    # ringpost did connect, and hung up in the handshake.
    assert "connect from" in downstream.log_text()


def test_verify_defers_a_certificate_from_an_unknown_ca(ringpost, unbound, postfix, smtp_sink, test_ca):
    ca, other = test_ca(), test_ca("Some Other CA")
    sink, downstream, settings = world(unbound, postfix, smtp_sink, ca)
    rp = ringpost({**settings, "delivery.tls": '"verify"', "delivery.tls_ca_file": f'"{other.cert}"'})
    send(rp, "a@good.test", "unknown ca")
    line = delivery_line(rp, "a@good.test")
    assert "status=deferred" in line and "4.7.5" in line and "UnknownIssuer" in line, line
    assert sink.messages() == []


def test_encrypt_still_delivers_where_verify_defers(ringpost, unbound, postfix, smtp_sink, test_ca):
    """The same unknown CA with the default level and a verify rule for
    another domain: the rule's domain is deferred, the rest delivered."""
    ca, other = test_ca(), test_ca("Some Other CA")
    sink, downstream, settings = world(unbound, postfix, smtp_sink, ca)
    rule = '[{domains = ["badname.test"], transport = "smtp", tls = "verify"}]'
    rp = ringpost({**settings, "delivery.tls": '"encrypt"', "delivery.tls_ca_file": f'"{other.cert}"',
                   "transport": rule})
    send(rp, "a@good.test", "encrypted only")
    send(rp, "b@badname.test", "verify by rule")
    sink.wait_message(b"Subject: encrypted only")
    assert "status=delivered" in delivery_line(rp, "a@good.test")
    line = delivery_line(rp, "b@badname.test")
    assert "status=deferred" in line and "4.7.5" in line, line


def test_an_unreadable_ca_file_stops_the_start_and_check_config(tmp_path):
    import subprocess
    from conftest import RINGPOST
    missing = tmp_path / "no-such-ca.pem"
    r = subprocess.run([str(RINGPOST), "--set", f'queue.spool=["{tmp_path}/spool"]', "--set", "server.allow_root=true",
                        "--set", f'server.listen=["127.0.0.1:{free_port()}"]', "--set", 'delivery.tls="verify"',
                        "--set", f'delivery.tls_ca_file="{missing}"', "serve"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "tls_ca_file" in r.stderr and "no-such-ca.pem" in r.stderr, r.stderr
    check = subprocess.run([str(RINGPOST), "--set", 'delivery.tls="verify"', "--set",
                            f'delivery.tls_ca_file="{missing}"', "check-config"],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 2 and "no-such-ca.pem" in check.stderr, check.stderr
