"""Routing is verification, end to end with the real binary: routers from a
config file decide at RCPT (550 for unknown users, never a bounce; the
virtusertable's error: text verbatim), aliases fan out to Maildirs, a
mailertable entry sends a domain to its own next hop (Postfix smtp-sink),
cdb tables built by `ringpost makemap`, SQLite tables, SIGHUP reloads, and
`ringpost route`."""

import signal
import smtplib
import sqlite3
import subprocess

import pytest

from conftest import RINGPOST, Ringpost, wait_for


class Routed(Ringpost):
    """A ringpost started with a configuration file."""

    def __init__(self, workdir, config_text, settings=None):
        super().__init__(workdir, settings or {})
        self.config_path = workdir / "ringpost.toml"
        self.config_path.write_text(config_text)

    def args(self, command="serve"):
        args = super().args(command)
        return [args[0], "-c", str(self.config_path)] + args[1:]


@pytest.fixture
def routed(tmp_path):
    started = []

    def start(config_text, settings=None, name="rp"):
        workdir = tmp_path / f"{name}{len(started)}"
        workdir.mkdir()
        server = Routed(workdir, config_text.replace("DIR", str(tmp_path)), settings)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


def tables(tmp_path, sink_port=None):
    (tmp_path / "virtusertable").write_text(
        "info@example.com  alice\n"
        "sales+*@example.com  bob\n"
        "@example.com  error:5.1.1:550 No such mailbox at example.com, sorry\n")
    (tmp_path / "aliases").write_text("team: alice, bob, carol\nroot: alice\n")
    (tmp_path / "users").write_text("alice\nbob\ncarol\n")
    mailertable = "# partner mail goes straight to their gateway\n"
    if sink_port:
        mailertable += f"partner.example  smtp:[127.0.0.1]:{sink_port}\n"
    (tmp_path / "mailertable").write_text(mailertable)
    out = subprocess.run([str(RINGPOST), "makemap", "cdb", str(tmp_path / "users")],
                         capture_output=True, text=True, check=True).stdout
    assert "users.cdb: 3 entries" in out


CONFIG = """
[domains]
local = ["example.org", "localhost"]

[route]
subaddress_separators = ["+", "-"]

[[router]]
name = "virtual"
driver = "virtual"
domains = ["example.com"]
file = "DIR/virtusertable"

[[router]]
name = "mailertable"
driver = "mailertable"
file = "DIR/mailertable"

[[router]]
name = "aliases"
driver = "aliases"
file = "DIR/aliases"

[[router]]
name = "users"
driver = "local_users"
file = "DIR/users.cdb"
"""


def send(port, sender, recipients, body=b"Subject: routed\r\n\r\nhello\r\n"):
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        return client.sendmail(sender, recipients, body)


def test_unknown_user_is_refused_at_rcpt_and_known_ones_delivered(routed, tmp_path):
    tables(tmp_path)
    rp = routed(CONFIG)
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("sender@example.net")
        code, text = client.rcpt("nobody@example.org")
        assert (code, text) == (550, b"5.1.1 <nobody@example.org>: Recipient address rejected: User unknown")
        code, text = client.rcpt("ghost@example.com")
        # The virtusertable's error: text reaches the client verbatim.
        assert (code, text) == (550, b"5.1.1 No such mailbox at example.com, sorry")
        assert client.rcpt("alice+news@example.org")[0] == 250
        assert client.rcpt("info@example.com")[0] == 250
        assert client.rcpt("sales+q3@example.com")[0] == 250
        client.data(b"Subject: t\r\n\r\nbody\r\n")
    wait_for(lambda: len(rp.maildir_files("alice")) == 2, what="two messages for alice")
    wait_for(lambda: rp.maildir_files("bob"), what="virtusertable user+* to bob")
    # Refused at RCPT, so nothing bounces: no message for the sender anywhere.
    assert not (rp.mail / "sender").exists()
    assert "bounce" not in rp.log_text()


def test_alias_list_fans_out(routed, tmp_path):
    tables(tmp_path)
    rp = routed(CONFIG)
    send(rp.port, "sender@example.net", ["team@example.org"])
    for user in ("alice", "bob", "carol"):
        wait_for(lambda: rp.maildir_files(user), what=f"alias delivery to {user}")


def test_relay_check_comes_before_routing(routed, tmp_path):
    tables(tmp_path)
    rp = routed(CONFIG, {"relay.networks": "[]"})
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("sender@example.net")
        assert client.rcpt("x@elsewhere.example") == (550, b"5.7.1 Relay access denied")
        assert client.rcpt("alice@example.org")[0] == 250


def test_mailertable_sends_a_domain_to_its_own_next_hop(routed, smtp_sink, tmp_path):
    sink = smtp_sink()
    tables(tmp_path, sink.port)
    rp = routed(CONFIG)
    send(rp.port, "sender@example.org", ["someone@partner.example"], b"Subject: to partner\r\n\r\nmarker-42\r\n")
    sink.wait_message(b"marker-42")


def test_sqlite_table(routed, tmp_path):
    db = tmp_path / "users.sqlite"
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE users (name TEXT PRIMARY KEY, details TEXT)")
        connection.execute("INSERT INTO users VALUES ('dora', 'work')")
    rp = routed("""
[domains]
local = ["example.org"]

[[router]]
name = "users"
driver = "local_users"
source = "sqlite:DIR/users.sqlite"
query = "SELECT details FROM users WHERE name = ?1"
""")
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=30) as client:
        client.ehlo("client.test")
        client.mail("sender@example.net")
        assert client.rcpt("dora@example.org")[0] == 250
        assert client.rcpt("dora+work@example.org")[0] == 250
        assert client.rcpt("dora+play@example.org")[0] == 550
        assert client.rcpt("eric@example.org")[0] == 550
        client.data(b"Subject: t\r\n\r\nbody\r\n")
    wait_for(lambda: len(rp.maildir_files("dora")) == 2, what="both deliveries to dora")


def test_sighup_reloads_tables_without_dropping_sessions(routed, tmp_path):
    tables(tmp_path)
    rp = routed(CONFIG)
    client = smtplib.SMTP("127.0.0.1", rp.port, timeout=30)
    client.ehlo("client.test")
    client.mail("sender@example.net")
    assert client.rcpt("dave@example.org")[0] == 550
    (tmp_path / "users").write_text("alice\nbob\ncarol\ndave\n")
    subprocess.run([str(RINGPOST), "makemap", str(tmp_path / "users")], check=True, capture_output=True)
    rp.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "event=reload" in rp.log_text() or "\"reload\"" in rp.log_text(), what="reload logged")
    # The open session goes on (with the routers it started with).
    assert client.rcpt("alice@example.org")[0] == 250
    client.data(b"Subject: t\r\n\r\nbody\r\n")
    client.quit()
    send(rp.port, "sender@example.net", ["dave@example.org"])
    wait_for(lambda: rp.maildir_files("dave"), what="delivery to the reloaded user")
    # A broken table keeps the routers in use.
    (tmp_path / "aliases").write_text("ok: alice\n:broken\n")
    rp.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "aliases:2: entry without a key" in rp.log_text(), what="reload failure logged")
    send(rp.port, "sender@example.net", ["team@example.org"])
    wait_for(lambda: rp.maildir_files("carol"), what="old aliases still in use")


def test_route_command_prints_steps_and_decision(tmp_path):
    tables(tmp_path)
    config = tmp_path / "ringpost.toml"
    config.write_text(CONFIG.replace("DIR", str(tmp_path)))
    run = subprocess.run([str(RINGPOST), "-c", str(config), "route", "--verify", "team@example.org", "ghost@example.com"],
                         capture_output=True, text=True)
    assert run.returncode == 1, run.stderr
    out = run.stdout
    assert "router aliases: expands to alice, bob, carol" in out
    assert "team@example.org -> <carol@example.org> transport local (router users)" in out
    assert "RCPT TO:<team@example.org> -> 250 2.1.5 Recipient ok" in out
    assert "ghost@example.com is undeliverable: 550 5.1.1 No such mailbox at example.com, sorry" in out


def test_sender_verification_at_mail(routed, tmp_path):
    tables(tmp_path)
    rp = routed(CONFIG.replace("[route]\n", "[route]\nverify_sender = true\n"))
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=30) as client:
        client.ehlo("client.test")
        code, text = client.mail("forged@example.org")
        assert (code, text) == (550, b"5.1.7 <forged@example.org>: Sender address rejected: User unknown")
        assert client.mail("alice@example.org")[0] == 250
        client.rset()
        assert client.mail("")[0] == 250
