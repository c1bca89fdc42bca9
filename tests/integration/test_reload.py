"""`ringpost reload` on a running server: the same reload as SIGHUP, answered
with its outcome; a broken Sieve `before` script is refused with its line
and column, and the running filters stay."""

import smtplib
import subprocess


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
