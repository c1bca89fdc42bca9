"""DANE for SMTP (RFC 7672) against a private validating unbound serving
DNSSEC-signed zones (ldns-signzone, the zones' keys as trust anchors) and
a private Postfix with a certificate from a test CA: a TLSA record that
matches the certificate (DANE-EE "3 1 1", DANE-TA "2 0 1") → delivered
over TLS; a TLSA record that does not → deferred with 4.7.5, never sent
in plaintext; the same wrong record in an unsigned zone (AD clear) is not
believed → delivered at the configured level; a TLSA RRset whose
signature is broken (unbound answers SERVFAIL) → deferred, not sent
without DANE."""

import hashlib
import smtplib
import subprocess

from conftest import free_port, wait_for


def spki_sha256(cert_pem):
    """SHA-256 of the certificate's SubjectPublicKeyInfo (TLSA "x 1 1")."""
    pub = subprocess.run(["openssl", "x509", "-in", str(cert_pem), "-noout", "-pubkey"],
                         check=True, capture_output=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub,
                         check=True, capture_output=True).stdout
    return hashlib.sha256(der).hexdigest()


def cert_sha256(cert_pem):
    """SHA-256 of the whole certificate (TLSA "x 0 1")."""
    der = subprocess.run(["openssl", "x509", "-in", str(cert_pem), "-outform", "DER"],
                         check=True, capture_output=True).stdout
    return hashlib.sha256(der).hexdigest()


def zone(tlsa):
    return ["@ IN MX 10 mx1", "mx1 IN A 127.0.0.1", f"_25._tcp.mx1 IN TLSA {tlsa}"]


def send(rp, recipient, subject):
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=30) as s:
        s.sendmail("sender@localhost", [recipient], f"Subject: {subject}\r\n\r\nHello.\r\n")


def delivery_line(rp, recipient):
    def find():
        return [l for l in rp.log_text().splitlines() if "event=delivery " in l and f"to={recipient}" in l]
    return wait_for(find, what=f"a delivery line for {recipient}")[0]


def test_dane_delivers_on_a_match_and_defers_otherwise(ringpost, signed_unbound, postfix, smtp_sink, test_ca):
    ca = test_ca()
    cert, key = ca.issue([f"mx1.{d}" for d in ("ee.test", "ta.test", "wrong.test", "unsigned.test", "bogus.test")])
    leaf = cert.with_suffix("").with_suffix(".leaf.pem")
    good_ee = f"3 1 1 {spki_sha256(leaf)}"
    good_ta = f"2 0 1 {cert_sha256(ca.cert)}"
    wrong = "3 1 1 " + "00" * 32
    sink = smtp_sink()
    port = free_port()
    domains = ["ee.test", "ta.test", "wrong.test", "unsigned.test", "bogus.test"]
    postfix("127.0.0.1", port, sink.port, domains, tls=(cert, key))
    dns = signed_unbound({
        "ee.test": (zone(good_ee), True),
        "ta.test": (zone(good_ta), True),
        "wrong.test": (zone(wrong), True),
        "unsigned.test": (zone(wrong), False),
        "bogus.test": (zone(good_ee), True),
    }, tamper={"bogus.test": (spki_sha256(leaf), "11" * 32)})
    rp = ringpost({"dns.servers": f'["127.0.0.1:{dns.port}"]', "delivery.port": str(port),
                   "delivery.dane": "true", "delivery.tls": '"may"'})
    for domain in domains:
        send(rp, f"user@{domain}", f"to {domain}")
    sink.wait_message(b"Subject: to ee.test")
    sink.wait_message(b"Subject: to ta.test")
    sink.wait_message(b"Subject: to unsigned.test")
    for domain, level in (("ee.test", "dane"), ("ta.test", "dane"), ("unsigned.test", "may")):
        line = delivery_line(rp, f"user@{domain}")
        assert "status=delivered" in line and f"tls=yes tls_level={level}" in line, line
    wrong_line = delivery_line(rp, "user@wrong.test")
    assert "status=deferred" in wrong_line and "4.7.5" in wrong_line and "TLSA" in wrong_line, wrong_line
    bogus_line = delivery_line(rp, "user@bogus.test")
    assert "status=deferred" in bogus_line and "4.7.5" in bogus_line, bogus_line
    assert "TLSA lookup" in bogus_line and "failure" in bogus_line, bogus_line
    delivered = b"".join(sink.messages())
    assert b"Subject: to wrong.test" not in delivered and b"Subject: to bogus.test" not in delivered


def test_dane_is_off_unless_the_resolver_is_trusted(ringpost, signed_unbound, postfix, smtp_sink, test_ca):
    """The same wrong TLSA record, signed, with dns.dnssec_trusted = false:
    the AD bit is not believed, so DANE does not apply."""
    ca = test_ca()
    cert, key = ca.issue(["mx1.wrong.test"])
    sink = smtp_sink()
    port = free_port()
    postfix("127.0.0.1", port, sink.port, ["wrong.test"], tls=(cert, key))
    dns = signed_unbound({"wrong.test": (zone("3 1 1 " + "00" * 32), True)})
    rp = ringpost({"dns.servers": f'["127.0.0.1:{dns.port}"]', "delivery.port": str(port),
                   "delivery.dane": "true", "dns.dnssec_trusted": "false"})
    send(rp, "user@wrong.test", "untrusted resolver")
    sink.wait_message(b"Subject: untrusted resolver")
    line = delivery_line(rp, "user@wrong.test")
    assert "status=delivered" in line and "tls_level=may" in line, line
