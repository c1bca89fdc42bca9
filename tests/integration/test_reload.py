"""`ringpost reload` on a running server: the same reload as SIGHUP, answered
with its outcome; a broken Sieve `before` script is refused with its line
and column, and the running filters stay. A reload changes relay and SMTP
settings, the TLS certificate, transports, scanners and the log level for
new sessions; a key that needs a restart is named and keeps its value; a
certificate that does not load keeps everything that runs."""

import os
import smtplib
import socket
import ssl
import subprocess
import tempfile
import textwrap
import tomllib
from pathlib import Path

from conftest import RINGPOST, Ringpost


def rcpt(rp, to):
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=30) as c:
        c.ehlo("client.test")
        c.mail("alice@example.org")
        return c.rcpt(to)


def test_reload_applies_and_reports(ringpost, tmp_path):
    before = tmp_path / "before.sieve"
    before.write_text("keep;\n")
    rp = ringpost({"sieve.before": f'"{before}"'})
    assert rcpt(rp, "bob@localhost")[0] == 250
    before.write_text('require ["envelope", "reject"];\nif envelope :is "to" "bob@localhost" { reject "Bob moved"; }\n')
    done = subprocess.run(rp.args("reload"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("reloaded:"), (done.stdout, done.stderr)
    code, text = rcpt(rp, "bob@localhost")
    assert code == 550 and text == b"5.7.1 Bob moved", text
    before.write_text("if true {\n  keep\n}\n")
    done = subprocess.run(rp.args("reload"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "reload failed" in done.stderr and f"{before}:2:3" in done.stderr, done.stderr
    # The filters in use before the broken reload are still in use.
    assert rcpt(rp, "bob@localhost")[0] == 550
    assert "event=reload_failed" in rp.log_text()


class FileRingpost(Ringpost):
    """A server whose reloadable settings come from a configuration file
    (what a reload reads again); the fixture's `--set` ones stay fixed."""

    def __init__(self, workdir, config_path):
        super().__init__(workdir, {})
        self.config_path = config_path

    def args(self, command="serve"):
        args = super().args(command)
        return [args[0], "--config", str(self.config_path)] + args[1:]


def certificate(directory, name):
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def served_certificate_cn(port):
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        c.ehlo("client.test")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        c.starttls(context=context)
        der = c.sock.getpeercert(binary_form=True)
    pem = ssl.DER_cert_to_PEM_cert(der)
    text = subprocess.run(["openssl", "x509", "-noout", "-subject"], input=pem, capture_output=True,
                          text=True, check=True).stdout
    return text.strip().rsplit("=", 1)[-1].strip()


def banner(port):
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        return s.makefile("rb").readline().decode()


def reload(rp):
    return subprocess.run(rp.args("reload"), capture_output=True, text=True, timeout=60)


def test_reload_changes_relay_smtp_tls_transports_scanners_and_log_level(tmp_path, smtp_sink):
    sink = smtp_sink()
    old_cert, old_key = certificate(tmp_path, "old.mx.test")
    new_cert, new_key = certificate(tmp_path, "new.mx.test")
    # Pipe scanners run as nobody: the program must not be under pytest's
    # private tmp_path.
    where = Path(tempfile.mkdtemp(prefix="ringpost-reload-"))
    os.chmod(where, 0o755)
    refuse = where / "refuse"
    refuse.write_text("#!/bin/sh\nif grep -q REFUSE-ME; then echo 'Refused after reload'; exit 1; fi\nexit 0\n")
    refuse.chmod(0o755)
    config = tmp_path / "ringpost.toml"
    first = textwrap.dedent(f"""
        [smtp]
        greeting = "first greeting"
        [relay]
        networks = []
        [tls]
        cert = "{old_cert}"
        key = "{old_key}"
        """)
    config.write_text(first)
    workdir = tmp_path / "rp"
    workdir.mkdir()
    rp = FileRingpost(workdir, config).start()
    try:
        assert "first greeting" in banner(rp.port)
        assert served_certificate_cn(rp.port) == "old.mx.test"
        # Not a relay client, no rule for the domain: refused.
        assert rcpt(rp, "bob@remote.test")[0] == 550
        second = textwrap.dedent(f"""
            [server]
            max_sessions_per_shard = 77
            [smtp]
            greeting = "second greeting"
            [relay]
            networks = ["127.0.0.0/8"]
            [tls]
            cert = "{new_cert}"
            key = "{new_key}"
            [log]
            level = "warning"
            [[transport]]
            domains = ["remote.test"]
            transport = "smtp"
            nexthop = "127.0.0.1:{sink.port}"
            [[scanner]]
            name = "refuser"
            kind = "pipe"
            command = ["{refuse}"]
            """)
        config.write_text(second)
        done = reload(rp)
        assert done.returncode == 0, (done.stdout, done.stderr)
        assert "taken by 2 of 2 shards" in done.stdout, done.stdout
        # A key that needs a restart is named, and its running value kept.
        assert "need a restart" in done.stdout and "[server]" in done.stdout, done.stdout
        assert "event=reload_needs_restart keys=[server]" in rp.log_text()
        logged = len(rp.log_text())
        assert "second greeting" in banner(rp.port)
        assert served_certificate_cn(rp.port) == "new.mx.test"
        assert rcpt(rp, "bob@remote.test")[0] == 250
        with smtplib.SMTP("127.0.0.1", rp.port, timeout=30) as c:
            c.sendmail("alice@example.org", ["bob@remote.test"],
                       b"Subject: after reload\r\nMessage-ID: <after-reload@test>\r\n\r\nhello\r\n")
            try:
                c.sendmail("alice@example.org", ["bob@remote.test"], b"Subject: no\r\n\r\nREFUSE-ME\r\n")
                refused = None
            except smtplib.SMTPDataError as e:
                refused = (e.smtp_code, e.smtp_error)
        assert refused == (550, b"5.7.1 Message refused by refuser: Refused after reload"), refused
        # Delivered by the new transport rule.
        sink.wait_message(b"<after-reload@test>")
        # log.level = "warning": the sessions since the reload wrote no
        # connect or queued lines.
        since = rp.log_text()[logged:]
        assert "event=connect" not in since and "event=queued" not in since, since
        # A certificate that does not load keeps everything that runs.
        (tmp_path / "broken.pem").write_text("not a certificate\n")
        config.write_text(second.replace(str(new_cert), str(tmp_path / "broken.pem"))
                          .replace("second greeting", "third greeting"))
        done = reload(rp)
        assert done.returncode == 1 and "reload failed" in done.stderr and "tls" in done.stderr, done.stderr
        assert "second greeting" in banner(rp.port)
        assert served_certificate_cn(rp.port) == "new.mx.test"
        assert "event=reload_failed" in rp.log_text()
    finally:
        rp.stop()


def test_check_config_names_the_keys_that_need_a_restart(tmp_path):
    out = subprocess.run([str(RINGPOST), "--set", "server.allow_root=true", "check-config"],
                         capture_output=True, text=True, check=True).stdout
    note = out[out.index("need a restart"):]
    for key in ("[server]", "[queue]", "[dns]", "log.format", "delivery.hold_all"):
        assert f"#   {key}\n" in note, note
    # The note is a comment: the output still parses as the configuration.
    tomllib.loads(out)
