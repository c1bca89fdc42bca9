"""Mail submission (RFC 6409) with SMTP AUTH (RFC 4954), driven by clients
no one here wrote: swaks (`--auth PLAIN/LOGIN`, `--tls` for STARTTLS on a
587-style listener, `--tlsc` for implicit TLS on a 465-style one) and
Python's smtplib (`login()`, `SMTP_SSL`). The passwords are checked
against a table whose hashes were written by `openssl passwd -6`,
`doveadm pw -s SHA512-CRYPT` and the `argon2` CLI; authenticated mail is
relayed to a downstream smtp-sink and its Received field says ESMTPSA."""

import base64
import os
import signal
import smtplib
import ssl
import subprocess

import pytest

from conftest import free_port, wait_for, wait_port

PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}


def hashes():
    """user -> hash, each written by the tool that writes it in practice."""
    alice = subprocess.run(["openssl", "passwd", "-6", PASSWORDS["alice"]],
                           capture_output=True, text=True, check=True).stdout.strip()
    bob = subprocess.run(["doveadm", "pw", "-s", "SHA512-CRYPT", "-p", PASSWORDS["bob"]],
                         capture_output=True, text=True, check=True).stdout.strip()
    salt = os.urandom(12).hex()
    carol = subprocess.run(["argon2", salt, "-id", "-e"], input=PASSWORDS["carol"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert alice.startswith("$6$") and bob.startswith("{SHA512-CRYPT}$6$") and carol.startswith("$argon2id$")
    return {"alice": alice, "bob": bob, "carol": carol}


def client_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Submission:
    def __init__(self, rp, p587, p465):
        self.rp, self.p587, self.p465 = rp, p587, p465


def start_submission(ringpost, test_cert, tmp_path, sink, auth=None, extra=None):
    cert, key = test_cert
    table = tmp_path / "passwd"
    table.write_text("".join(f"{u}:{h}\n" for u, h in hashes().items()))
    p587, p465 = free_port(), free_port()
    settings = {
        "tls.cert": f'"{cert}"',
        "tls.key": f'"{key}"',
        # No one relays without AUTH, not even loopback.
        "relay.networks": "[]",
        "delivery.smarthost": f'"127.0.0.1:{sink.port}"',
        "listener": (f'[{{address = "127.0.0.1:{p587}", role = "submission"}}, '
                     f'{{address = "127.0.0.1:{p465}", role = "submission", tls = "implicit"}}]'),
        "auth.backend": '"table"',
        "auth.table": f'"{table}"',
        "auth.failure_delay": '"200ms"',
    }
    settings.update(auth or {})
    settings.update(extra or {})
    rp = ringpost(settings)
    wait_port(p587, proc=rp.proc)
    wait_port(p465, proc=rp.proc)
    return Submission(rp, p587, p465)


@pytest.fixture
def submission(ringpost, test_cert, tmp_path, smtp_sink):
    sink = smtp_sink()
    return start_submission(ringpost, test_cert, tmp_path, sink), sink


def swaks(*args):
    return subprocess.run(["swaks", "--h-Subject", "submitted", *args], capture_output=True, text=True, timeout=60)


def test_swaks_plain_over_starttls_relays_with_esmtpsa(submission):
    sub, sink = submission
    r = swaks("--server", f"127.0.0.1:{sub.p587}", "--tls", "--auth", "PLAIN", "--auth-user", "alice",
              "--auth-password", PASSWORDS["alice"], "--from", "alice@example.org", "--to", "dave@remote.test")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "235 2.7.0" in r.stdout
    message = sink.wait_message(b"submitted")[0]
    assert b"with ESMTPSA id" in message, message
    log = sub.rp.log_text()
    assert "event=auth " in log and "user=alice" in log and "result=ok" in log
    assert PASSWORDS["alice"] not in log, "the password is never logged"


def test_swaks_login_over_implicit_tls_with_a_doveadm_hash(submission):
    sub, sink = submission
    r = swaks("--server", f"127.0.0.1:{sub.p465}", "--tlsc", "--auth", "LOGIN", "--auth-user", "bob",
              "--auth-password", PASSWORDS["bob"], "--from", "bob@example.org", "--to", "erin@remote.test")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "STARTTLS" not in r.stdout.split("EHLO", 1)[1], "STARTTLS is not offered inside implicit TLS"
    message = sink.wait_message(b"erin@remote.test")[0]
    assert b"ESMTPSA" in message


def test_smtplib_login_with_an_argon2_hash_starttls_and_ssl(submission):
    sub, sink = submission
    with smtplib.SMTP("127.0.0.1", sub.p587, timeout=30) as s:
        s.ehlo("client.test")
        assert not s.has_extn("auth"), "AUTH is not offered before TLS"
        s.starttls(context=client_context())
        s.ehlo("client.test")
        assert "PLAIN" in s.esmtp_features["auth"] and "LOGIN" in s.esmtp_features["auth"]
        s.login("carol", PASSWORDS["carol"])
        s.sendmail("carol@example.org", ["frank@remote.test"], "Subject: smtplib 587\r\n\r\nHi.\r\n")
    with smtplib.SMTP_SSL("127.0.0.1", sub.p465, timeout=30, context=client_context()) as s:
        s.ehlo("client.test")
        s.login("alice", PASSWORDS["alice"])
        s.sendmail("alice@example.org", ["grace@remote.test"], "Subject: smtplib 465\r\n\r\nHi.\r\n")
    sink.wait_message(b"smtplib 587")
    sink.wait_message(b"smtplib 465")


def test_auth_before_tls_is_538_mail_before_auth_is_530(submission):
    sub, _ = submission
    with smtplib.SMTP("127.0.0.1", sub.p587, timeout=30) as s:
        s.ehlo("client.test")
        code, text = s.docmd("AUTH", "PLAIN AGFsaWNlAGFsaWNlLXB3")
        assert (code, text[:6]) == (538, b"5.7.11"), (code, text)
        s.starttls(context=client_context())
        s.ehlo("client.test")
        code, text = s.docmd("MAIL", "FROM:<alice@example.org>")
        assert (code, text[:5]) == (530, b"5.7.0"), (code, text)


def test_wrong_passwords_get_535_then_421_and_are_logged_without_the_password(submission):
    sub, _ = submission
    wrong = "AUTH", "PLAIN " + base64.b64encode(b"\0alice\0not-the-password").decode()
    with smtplib.SMTP("127.0.0.1", sub.p587, timeout=30) as s:
        s.ehlo("client.test")
        s.starttls(context=client_context())
        s.ehlo("client.test")
        for _ in range(2):
            code, text = s.docmd(*wrong)
            assert (code, text[:5]) == (535, b"5.7.8"), (code, text)
        # The third failure of the session (auth.max_failures = 3) closes it.
        code, text = s.docmd(*wrong)
        assert (code, text[:5]) == (421, b"4.7.0"), (code, text)
        with pytest.raises(smtplib.SMTPServerDisconnected):
            s.docmd("NOOP")
    log = sub.rp.log_text()
    assert log.count("result=invalid") == 2 and "result=blocked" in log
    assert "not-the-password" not in log


def test_unauthenticated_relay_is_refused_and_authenticated_relay_works(submission):
    sub, sink = submission
    # The mx listener (server.listen) with relay.networks = []: no relay.
    with smtplib.SMTP("127.0.0.1", sub.rp.port, timeout=30) as s:
        s.ehlo("client.test")
        assert not s.has_extn("auth"), "the mx listener does not offer AUTH"
        s.mail("alice@example.org")
        code, text = s.rcpt("dave@remote.test")
        assert (code, text[:5]) == (550, b"5.7.1"), (code, text)
    r = swaks("--server", f"127.0.0.1:{sub.p587}", "--tls", "--from", "x@example.org", "--to", "dave@remote.test")
    assert r.returncode != 0 and "530 5.7.0" in r.stdout, r.stdout
    r = swaks("--server", f"127.0.0.1:{sub.p587}", "--tls", "--auth", "PLAIN", "--auth-user", "alice",
              "--auth-password", PASSWORDS["alice"], "--from", "alice@example.org", "--to", "relayed@remote.test")
    assert r.returncode == 0, r.stdout
    sink.wait_message(b"relayed@remote.test")


def test_sender_login_maps_allow_own_addresses_only(ringpost, test_cert, tmp_path, smtp_sink):
    maps = tmp_path / "sender_logins"
    maps.write_text("alice@example.org alice\n@shared.example bob, alice\n")
    sub = start_submission(ringpost, test_cert, tmp_path, smtp_sink(),
                           auth={"auth.sender_login_maps": f'"{maps}"'})
    with smtplib.SMTP_SSL("127.0.0.1", sub.p465, timeout=30, context=client_context()) as s:
        s.ehlo("client.test")
        s.login("bob", PASSWORDS["bob"])
        code, text = s.mail("alice@example.org")
        assert (code, text[:5]) == (553, b"5.7.1"), (code, text)
        code, _ = s.mail("bob@shared.example")
        assert code == 250
    with smtplib.SMTP_SSL("127.0.0.1", sub.p465, timeout=30, context=client_context()) as s:
        s.ehlo("client.test")
        s.login("alice", PASSWORDS["alice"])
        assert s.mail("alice@example.org")[0] == 250
    assert "event=sender_login_mismatch" in sub.rp.log_text()
    # SIGHUP reads the map again: now bob owns the address too.
    maps.write_text("alice@example.org alice bob\n")
    sub.rp.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "event=reload " in sub.rp.log_text(), what="the reload")
    with smtplib.SMTP_SSL("127.0.0.1", sub.p465, timeout=30, context=client_context()) as s:
        s.ehlo("client.test")
        s.login("bob", PASSWORDS["bob"])
        assert s.mail("alice@example.org")[0] == 250


def greeting_delay_s(port, use_ssl=False):
    import socket
    import time
    started = time.monotonic()
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock = client_context().wrap_socket(raw) if use_ssl else raw
    with sock:
        assert sock.recv(512).startswith(b"220 ")
    return time.monotonic() - started


def test_greet_pause_applies_to_mx_not_to_submission(ringpost, test_cert, tmp_path, smtp_sink):
    sub = start_submission(ringpost, test_cert, tmp_path, smtp_sink(), extra={"policy.greet_pause": '"2s"'})
    assert greeting_delay_s(sub.rp.port) >= 1.9, "the mx listener pauses"
    assert greeting_delay_s(sub.p587) < 1.0, "submission greets at once"
    assert greeting_delay_s(sub.p465, use_ssl=True) < 1.0


def test_scram_sha_256_with_gnu_sasl_against_a_doveadm_entry(ringpost, test_cert, tmp_path, smtp_sink):
    """GNU SASL's client (gsasl --smtp) runs SCRAM-SHA-256 over STARTTLS;
    the table holds what `doveadm pw -s SCRAM-SHA-256` writes; the same
    entry serves PLAIN."""
    sub = start_submission(ringpost, test_cert, tmp_path, smtp_sink())
    scram = subprocess.run(["doveadm", "pw", "-s", "SCRAM-SHA-256", "-p", "heidi-pw"],
                           capture_output=True, text=True, check=True).stdout.strip()
    table = tmp_path / "passwd"
    table.write_text(table.read_text() + f"heidi:{scram}\n")

    def gsasl(password):
        return subprocess.run(["gsasl", "--smtp", f"--connect=127.0.0.1:{sub.p587}", "--starttls",
                               "--x509-ca-file=", "--no-cb", "-m", "SCRAM-SHA-256", "-a", "heidi",
                               "-z", "", "-p", password, "--verbose"],
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)

    ok = gsasl("heidi-pw")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "235" in ok.stdout + ok.stderr
    bad = gsasl("wrong")
    assert bad.returncode != 0, bad.stdout + bad.stderr
    log = sub.rp.log_text()
    assert "mechanism=SCRAM-SHA-256 user=heidi result=ok" in log
    assert "mechanism=SCRAM-SHA-256 user=heidi result=invalid" in log
    with smtplib.SMTP_SSL("127.0.0.1", sub.p465, timeout=30, context=client_context()) as s:
        s.ehlo("client.test")
        assert "SCRAM-SHA-256" in s.esmtp_features["auth"]
        code, _ = s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0heidi\0heidi-pw").decode())
        assert code == 235


def test_failures_are_limited_per_client_address_across_sessions(ringpost, test_cert, tmp_path, smtp_sink):
    sub = start_submission(ringpost, test_cert, tmp_path, smtp_sink(),
                           auth={"auth.max_failures_per_client": "2", "auth.failure_window": '"1h"'})
    wrong = "PLAIN " + base64.b64encode(b"\0alice\0wrong").decode()
    right = "PLAIN " + base64.b64encode(b"\0alice\0" + PASSWORDS["alice"].encode()).decode()
    with smtplib.SMTP_SSL("127.0.0.1", sub.p465, timeout=30, context=client_context()) as s:
        s.ehlo("client.test")
        assert s.docmd("AUTH", wrong)[0] == 535
    with smtplib.SMTP_SSL("127.0.0.1", sub.p465, timeout=30, context=client_context()) as s:
        s.ehlo("client.test")
        # The address's second failure reaches its limit: 421 and closed.
        assert s.docmd("AUTH", wrong)[0] == 421
    with smtplib.SMTP_SSL("127.0.0.1", sub.p465, timeout=30, context=client_context()) as s:
        s.ehlo("client.test")
        code, text = s.docmd("AUTH", right)
        assert (code, text[:5]) == (421, b"4.7.0"), "even the right password, until the window passes"


def test_a_cdb_table_built_by_makemap(ringpost, test_cert, tmp_path, smtp_sink):
    from conftest import RINGPOST
    text = tmp_path / "users"
    text.write_text("".join(f"{u}:{h}\n" for u, h in hashes().items()))
    subprocess.run([str(RINGPOST), "makemap", str(text)], check=True, capture_output=True)
    sub = start_submission(ringpost, test_cert, tmp_path, smtp_sink(), auth={"auth.table": f'"{text}.cdb"'})
    with smtplib.SMTP_SSL("127.0.0.1", sub.p465, timeout=30, context=client_context()) as s:
        s.ehlo("client.test")
        s.login("carol", PASSWORDS["carol"])
    assert "user=carol result=ok" in sub.rp.log_text()


def test_an_mx_listener_with_its_own_relay_networks(ringpost, smtp_sink):
    sink = smtp_sink()
    port = free_port()
    rp = ringpost({
        "relay.networks": "[]",
        "delivery.smarthost": f'"127.0.0.1:{sink.port}"',
        "listener": f'[{{address = "127.0.0.1:{port}", relay_networks = ["127.0.0.0/8"]}}]',
    })
    wait_port(port, proc=rp.proc)
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=30) as s:
        s.ehlo("client.test")
        s.mail("a@client.test")
        assert s.rcpt("x@remote.test")[0] == 550, "server.listen follows relay.networks"
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("client.test")
        s.sendmail("a@client.test", ["y@remote.test"], "Subject: own relay networks\r\n\r\nHi.\r\n")
    message = sink.wait_message(b"own relay networks")[0]
    assert b"with ESMTP id" in message
