"""`ringpost sendmail` as local programs use it: Debian's bsd-mailx (mail(1))
and git send-email (Debian's git-email) pointed at a wrapper that runs
`ringpost sendmail` against the test server, cron-style `-t` with Bcc, a
refused recipient printing the reply with sysexits' EX_NOUSER, and a server
that is not running giving EX_TEMPFAIL."""

import os
import shutil
import subprocess
from pathlib import Path

from conftest import RINGPOST, missing_tool, wait_for


def wrapper(rp, tmp_path):
    """A sendmail program for mail(1) and git: `ringpost sendmail` with the
    test server's settings."""
    path = tmp_path / "sendmail"
    sets = " ".join(f"--set '{k}={v}'" for k, v in rp.settings.items())
    path.write_text(f"#!/bin/sh\nexec {RINGPOST} {sets} sendmail \"$@\"\n")
    path.chmod(0o755)
    return path


def run_sendmail(rp, args, message, **kw):
    return subprocess.run(rp.args("sendmail") + args, input=message, capture_output=True,
                          timeout=60, **kw)


def test_mail_1_submits_through_ringpost_sendmail(ringpost, tmp_path):
    if not Path("/usr/bin/bsd-mailx").exists():
        missing_tool("bsd-mailx is not installed (tests/run installs it)")
    rp = ringpost()
    mailrc = tmp_path / "mailrc"
    mailrc.write_text(f"set sendmail={wrapper(rp, tmp_path)}\n")
    env = dict(os.environ, MAILRC=str(mailrc), HOME=str(tmp_path))
    done = subprocess.run(["/usr/bin/bsd-mailx", "-s", "from mail(1)", "bob@localhost"], input=b"Hello from mailx.\n",
                          env=env, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    files = wait_for(lambda: rp.maildir_files("bob"), what="bob's message")
    text = files[0].read_bytes()
    assert b"Subject: from mail(1)" in text and b"Hello from mailx." in text
    assert b"Message-ID: <" in text and b"Date: " in text


def test_git_send_email(ringpost, tmp_path):
    git = "/usr/bin/git"
    if not (Path(git).exists() and Path("/usr/lib/git-core/git-send-email").exists()):
        missing_tool("git-email is not installed (tests/run installs it)")
    # git send-email wants a dotted domain.
    rp = ringpost({"domains.local": '["localhost", "mx.test"]'})
    repo = tmp_path / "repo"
    repo.mkdir()
    env = dict(os.environ, HOME=str(tmp_path), GIT_AUTHOR_NAME="Alice", GIT_AUTHOR_EMAIL="alice@example.org",
               GIT_COMMITTER_NAME="Alice", GIT_COMMITTER_EMAIL="alice@example.org")
    (repo / "README").write_text("hello\n")
    for args in (["init", "-q"], ["add", "README"], ["commit", "-q", "-m", "A patch worth sending"]):
        subprocess.run([git] + args, cwd=repo, env=env, check=True, capture_output=True)
    patch = subprocess.run([git, "format-patch", "-1", "-o", str(tmp_path / "out")], cwd=repo, env=env, check=True,
                           capture_output=True, text=True).stdout.strip()
    done = subprocess.run([git, "send-email", "--confirm=never", "--quiet", "--to=carol@mx.test",
                           f"--smtp-server={wrapper(rp, tmp_path)}", patch],
                          cwd=repo, env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    files = wait_for(lambda: rp.maildir_files("carol"), what="carol's patch")
    assert b"A patch worth sending" in files[0].read_bytes()


def test_t_takes_recipients_from_the_header_and_hides_bcc(ringpost):
    rp = ringpost()
    message = (b"From: Cron Daemon <root@localhost>\nTo: dave@localhost\nBcc: erin@localhost\n"
               b"Subject: cron output\n\nall is well\n.\nnot read without -i\n")
    done = run_sendmail(rp, ["-t", "-f", "root@localhost"], message)
    assert done.returncode == 0, done.stderr
    for user in ("dave", "erin"):
        files = wait_for(lambda: rp.maildir_files(user), what=f"{user}'s copy")
        text = files[0].read_bytes()
        assert b"all is well" in text and b"not read" not in text
        assert b"Bcc" not in text
    assert b"Return-Path: <root@localhost>" in rp.maildir_files("dave")[0].read_bytes()


def test_refusals_and_a_stopped_server_give_sysexits_codes(ringpost):
    rp = ringpost({"relay.networks": "[]"})
    done = run_sendmail(rp, ["someone@far.example"], b"Subject: x\n\nbody\n")
    assert done.returncode == 67, (done.returncode, done.stderr)  # EX_NOUSER
    assert b"550 5.7.1" in done.stderr and b"RCPT TO:<someone@far.example>" in done.stderr, done.stderr
    done = run_sendmail(rp, [], b"Subject: x\n\nbody\n")
    assert done.returncode == 64, done.stderr  # EX_USAGE: no recipients
    rp.stop()
    done = run_sendmail(rp, ["bob@localhost"], b"Subject: x\n\nbody\n")
    assert done.returncode == 75, (done.returncode, done.stderr)  # EX_TEMPFAIL
    assert b"cannot reach the server" in done.stderr


def test_links_named_sendmail_and_mailq(ringpost, tmp_path):
    rp = ringpost()
    tables = {}
    for key, value in rp.settings.items():
        table, name = key.split(".", 1)
        # --set takes a bare word as a string; a file does not.
        bare = not (value[:1] in '"[\'' or value[:1].isdigit() or value in ("true", "false"))
        tables.setdefault(table, []).append(f'{name} = "{value}"' if bare else f"{name} = {value}")
    config = tmp_path / "ringpost.toml"
    config.write_text("".join(f"[{t}]\n" + "\n".join(lines) + "\n" for t, lines in tables.items()))
    for name in ("sendmail", "mailq"):
        (tmp_path / name).symlink_to(RINGPOST)
    env = dict(os.environ, RINGPOST_CONFIG=str(config))
    done = subprocess.run([str(tmp_path / "sendmail"), "-oi", "frank@localhost"], input=b"Subject: linked\n\nhi\n", env=env,
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    wait_for(lambda: rp.maildir_files("frank"), what="frank's message")
    done = subprocess.run([str(tmp_path / "mailq")], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
