"""Transport rules ([[transport]]): a domain to Dovecot over LMTP (TCP and
unix socket), with per-recipient results; a domain to a program over a
pipe with sysexits.h codes, a user, a time limit and literal arguments; a
domain to its own SMTP next hop."""

import shutil
import smtplib
import tempfile
import time
from pathlib import Path

import pytest

from conftest import wait_for


def transport(**rule):
    """One [[transport]] rule as a --set value."""
    def value(v):
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, int):
            return str(v)
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "{" + ", ".join(f"{k} = {value(v)}" for k, v in rule.items()) + "}"


def rules(*tables):
    return {"transport": "[" + ", ".join(tables) + "]"}


def send(rp, sender, recipients, subject, body="Hello there.\r\n"):
    with smtplib.SMTP("127.0.0.1", rp.port) as s:
        return s.sendmail(sender, recipients, f"Subject: {subject}\r\n\r\n{body}")


def statuses(rp, address):
    return [line for line in rp.log_text().splitlines() if "event=delivery" in line and f"to={address} " in line]


def test_lmtp_to_dovecot_over_tcp_and_unix_socket(ringpost, dovecot):
    store = dovecot(["alice", "bob"])
    rp = ringpost(rules(
        transport(domains=["tcp.test"], transport="lmtp", nexthop=f"127.0.0.1:{store.port}"),
        transport(domains=["unix.test"], transport="lmtp", nexthop=f"unix:{store.socket}"),
    ))
    send(rp, "sender@localhost", ["alice@tcp.test", "bob@tcp.test", "nobody-here@tcp.test"], "over tcp")
    wait_for(lambda: store.maildir_files("alice") and store.maildir_files("bob"), what="LMTP delivery")
    text = store.maildir_files("alice")[0].read_text()
    assert "Subject: over tcp" in text and "Hello there." in text
    wait_for(lambda: statuses(rp, "nobody-here@tcp.test"), what="the unknown user's result")
    unknown = statuses(rp, "nobody-here@tcp.test")[0]
    assert "status=failed" in unknown and "5.1.1" in unknown, unknown
    # One bounce, for the unknown user only.
    bounce = wait_for(lambda: rp.maildir_files("sender"), what="the bounce")
    assert b"nobody-here@tcp.test" in bounce[0].read_bytes()

    send(rp, "sender@localhost", ["alice@unix.test"], "over unix")
    wait_for(lambda: len(store.maildir_files("alice")) == 2, what="delivery over the unix socket")
    assert any("relay=lmtp:unix:" in line and "status=delivered" in line for line in statuses(rp, "alice@unix.test"))


@pytest.fixture
def public_dir():
    """A directory nobody can reach (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="ringpost-pipe-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def write_script(directory, name, text):
    path = directory / name
    path.write_text("#!/bin/sh\n" + text)
    path.chmod(0o755)
    return path


def test_pipe_transport_exit_codes_user_and_timeout(ringpost, public_dir):
    tmp_path = public_dir
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)
    save = write_script(tmp_path, "save", f'id -u > {out}/uid.$1\ncat > "{out}/msg.$1"\nexit 0\n')
    tempfail = write_script(tmp_path, "tempfail", "echo 'mailbox locked' ; exit 75\n")
    nouser = write_script(tmp_path, "nouser", "echo 'no such mailbox' >&2 ; exit 67\n")
    slow = write_script(tmp_path, "slow", "sleep 30\n")
    rp = ringpost(rules(
        transport(domains=["save.test"], transport="pipe", command=[str(save), "{user}"], user="nobody"),
        transport(domains=["temp.test"], transport="pipe", command=[str(tempfail)]),
        transport(domains=["nouser.test"], transport="pipe", command=[str(nouser)]),
        transport(domains=["slow.test"], transport="pipe", command=[str(slow)], timeout="1s"),
    ))
    send(rp, "sender@localhost", ["carol@save.test", "x@temp.test", "y@nouser.test", "z@slow.test"], "piped")
    wait_for(lambda: (out / "msg.carol").exists(), what="the saved message")
    wait_for(lambda: statuses(rp, "z@slow.test"), timeout_s=20, what="the slow program's result")
    saved = (out / "msg.carol").read_text()
    assert saved.startswith("Return-Path: <sender@localhost>\nDelivered-To: carol@save.test\n")
    assert "Subject: piped\n" in saved and "\r" not in saved
    nobody = int(__import__("subprocess").run(["id", "-u", "nobody"], capture_output=True, text=True).stdout)
    assert int((out / "uid.carol").read_text()) == nobody
    temp = statuses(rp, "x@temp.test")[0]
    assert "status=deferred" in temp and "4.3.0" in temp and "mailbox locked" in temp
    perm = statuses(rp, "y@nouser.test")[0]
    assert "status=failed" in perm and "5.1.1" in perm and "no such mailbox" in perm
    slow_line = statuses(rp, "z@slow.test")[0]
    assert "status=deferred" in slow_line and "killed after 1 s" in slow_line


def test_pipe_arguments_are_never_shell_expanded(ringpost, public_dir):
    tmp_path = public_dir
    out = tmp_path / "args"
    out.mkdir()
    out.chmod(0o777)
    record = write_script(tmp_path, "record", f'printf "%s" "$1" > {out}/arg\ncat > /dev/null\n')
    rp = ringpost(rules(transport(domains=["args.test"], transport="pipe", command=[str(record), "{recipient}"])))
    hostile = '"$(touch /tmp/ringpost-pwned);x"@args.test'
    with smtplib.SMTP("127.0.0.1", rp.port) as s:
        s.sendmail("sender@localhost", [hostile], "Subject: args\r\n\r\nx\r\n")
    arg = wait_for(lambda: (out / "arg").exists() and (out / "arg").read_text(), what="the recorded argument")
    assert arg == hostile
    import os
    assert not os.path.exists("/tmp/ringpost-pwned")


def test_smtp_rule_sends_a_domain_to_its_own_next_hop(ringpost, smtp_sink):
    default_hop = smtp_sink()
    special_hop = smtp_sink()
    rp = ringpost({
        "delivery.smarthost": f'"127.0.0.1:{default_hop.port}"',
        **rules(transport(domains=[".special.test"], transport="smtp", nexthop=f"127.0.0.1:{special_hop.port}")),
    })
    send(rp, "sender@localhost", ["a@mx.special.test", "b@elsewhere.test"], "split")
    special_hop.wait_message(b"Subject: split")
    default_hop.wait_message(b"Subject: split")
    time.sleep(0.3)
    # Each hop got one transaction, with only its own recipient.
    assert len(special_hop.messages()) == 1 and len(default_hop.messages()) == 1
    assert b"a@mx.special.test" in special_hop.messages()[0]
    assert b"b@elsewhere.test" not in special_hop.messages()[0]
    assert b"b@elsewhere.test" in default_hop.messages()[0]
    assert b"a@mx.special.test" not in default_hop.messages()[0]
    # The domain named by a rule is accepted from any client; mail for the
    # parent domain itself is not covered by ".special.test".
    assert not [line for line in statuses(rp, "a@mx.special.test") if f":{default_hop.port}" in line]
