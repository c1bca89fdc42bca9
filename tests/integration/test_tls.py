"""STARTTLS (RFC 3207) both ways, with clients and servers no one here
wrote: swaks and Python's smtplib upgrade their sessions to ringpost; a
command injected after STARTTLS is never run; ringpost upgrades its own
sessions to a private Postfix smtpd, and with `delivery.tls = "encrypt"`
refuses to send to a server that does not offer STARTTLS."""

import smtplib
import socket
import ssl
import subprocess
import time

from conftest import free_port, wait_for


def tls_settings(test_cert):
    cert, key = test_cert
    return {"tls.cert": f'"{cert}"', "tls.key": f'"{key}"'}


def client_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_swaks_delivers_over_starttls(ringpost, test_cert):
    rp = ringpost(tls_settings(test_cert))
    r = subprocess.run(["swaks", "--server", f"127.0.0.1:{rp.port}", "--tls", "--to", "alice@localhost",
                        "--from", "bob@client.test", "--header", "Subject: over tls"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "250 STARTTLS" in r.stdout or "250-STARTTLS" in r.stdout
    assert "<~  250" in r.stdout, "swaks talked over TLS"
    files = wait_for(lambda: rp.maildir_files("alice"), what="delivery")
    text = files[0].read_text()
    assert "with ESMTPS id" in text
    assert "(using TLSv1." in text and "with cipher" in text
    assert "event=tls " in rp.log_text()


def test_smtplib_starttls_and_not_offered_without_a_certificate(ringpost, test_cert):
    rp = ringpost(tls_settings(test_cert))
    with smtplib.SMTP("127.0.0.1", rp.port) as s:
        s.ehlo("client.test")
        assert s.has_extn("starttls")
        s.starttls(context=client_context())
        s.ehlo("client.test")
        assert not s.has_extn("starttls"), "not offered again inside TLS"
        s.sendmail("bob@client.test", ["carol@localhost"], "Subject: smtplib tls\r\n\r\nHi.\r\n")
    wait_for(lambda: rp.maildir_files("carol"), what="delivery")

    plain = ringpost()
    with smtplib.SMTP("127.0.0.1", plain.port) as s:
        s.ehlo("client.test")
        assert not s.has_extn("starttls")
        code, _ = s.docmd("STARTTLS")
        assert code == 502


def read_reply(f):
    lines = []
    while True:
        line = f.readline()
        if not line:
            raise EOFError("connection closed")
        lines.append(line)
        if line[3:4] != b"-":
            return lines


def test_command_injected_after_starttls_is_not_run(ringpost, test_cert):
    rp = ringpost(tls_settings(test_cert))
    raw = socket.create_connection(("127.0.0.1", rp.port), timeout=10)
    f = raw.makefile("rb")
    assert read_reply(f)[0].startswith(b"220")
    raw.sendall(b"EHLO client.test\r\n")
    read_reply(f)
    # One packet: STARTTLS and, behind it, a command in the clear.
    raw.sendall(b"STARTTLS\r\nMAIL FROM:<evil@client.test>\r\n")
    assert read_reply(f)[0].startswith(b"220 2.0.0")
    tls = client_context().wrap_socket(raw, server_hostname="mx.test")
    tf = tls.makefile("rb")
    tls.sendall(b"RCPT TO:<victim@localhost>\r\n")
    # Had the MAIL run inside TLS, this RCPT would be accepted.
    reply = read_reply(tf)
    assert reply[0].startswith(b"503"), reply
    tls.sendall(b"QUIT\r\n")
    tls.close()


def test_relay_to_postfix_over_starttls(ringpost, smtp_sink, postfix, test_cert):
    sink = smtp_sink()
    port = free_port()
    downstream = postfix("127.0.0.1", port, sink.port, ["tls.test"], tls=test_cert)
    rp = ringpost({"delivery.smarthost": f'"127.0.0.1:{port}"'})
    with smtplib.SMTP("127.0.0.1", rp.port) as s:
        s.sendmail("bob@client.test", ["dave@tls.test"], "Subject: relayed over tls\r\n\r\nHi.\r\n")
    sink.wait_message(b"Subject: relayed over tls")
    wait_for(lambda: "TLS connection established from" in downstream.log_text(), what="Postfix's TLS log line")
    message = [m for m in sink.messages() if b"relayed over tls" in m][0]
    # Postfix's Received header for the hop from ringpost names the TLS session.
    assert b"(using TLSv1." in message
    assert "tls=yes" in rp.log_text()


def test_encrypt_policy_defers_when_the_server_offers_no_tls(ringpost, smtp_sink):
    sink = smtp_sink()  # Postfix's smtp-sink offers no STARTTLS by default
    rp = ringpost({"delivery.smarthost": f'"127.0.0.1:{sink.port}"', "delivery.tls": '"encrypt"'})
    with smtplib.SMTP("127.0.0.1", rp.port) as s:
        s.sendmail("bob@client.test", ["erin@remote.test"], "Subject: must be private\r\n\r\nHi.\r\n")
    wait_for(lambda: "status=deferred" in rp.log_text(), what="the deferral")
    log = rp.log_text()
    assert "4.7.4" in log and "TLS is required" in log
    time.sleep(0.5)
    assert not [m for m in sink.messages() if b"must be private" in m]
