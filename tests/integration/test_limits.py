"""Per-client limits, access tables and the counters of `ringpost stats`,
against the real binary with two shards. Clients bind their source to
different 127.0.0.x addresses to be different clients; relay.networks is
emptied so that loopback clients are limited at all."""

import re
import signal
import socket
import subprocess
import time

from conftest import wait_for


class Client:
    """A raw SMTP client from source address `source`."""

    def __init__(self, port, source="127.0.0.1", timeout_s=20):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s, source_address=(source, 0))
        self.file = self.sock.makefile("rb")
        self.greeting = self.reply()

    def reply(self):
        lines = []
        while True:
            line = self.file.readline()
            assert line, f"connection closed after {b''.join(lines)!r}"
            lines.append(line)
            if line[3:4] == b" ":
                return int(line[:3]), b"".join(lines).decode()

    def command(self, text):
        self.sock.sendall(text.encode() + b"\r\n")
        return self.reply()

    def close(self):
        # The file holds the socket open too.
        self.file.close()
        self.sock.close()


LIMITED = {"relay.networks": "[]"}


def settings(**policy):
    out = dict(LIMITED)
    for key, value in policy.items():
        out[f"policy.{key}"] = value
    return out


def test_sixty_sessions_from_one_client_with_fifty_allowed_leave_ten_refused(ringpost):
    rp = ringpost(settings(max_sessions_per_client="50"))
    clients = [Client(rp.port, "127.0.0.2") for _ in range(60)]
    codes = [c.greeting[0] for c in clients]
    assert codes.count(220) == 50, codes
    assert codes.count(421) == 10, codes
    refused = [c.greeting[1] for c in clients if c.greeting[0] == 421]
    assert all("4.7.0 Too many connections from [127.0.0.2]" in text for text in refused), refused
    # The accepted ones landed on both shards: the count is one for the process.
    connects = re.findall(r"event=connect shard=(\d+) client=127\.0\.0\.2:", rp.log_text())
    assert len(connects) == 50
    assert set(connects) == {"0", "1"}, connects
    # Another client is not affected.
    other = Client(rp.port, "127.0.0.3")
    assert other.greeting[0] == 220
    other.close()
    # Every exit gives the session back: QUIT, a plain close, a refused one.
    for i, c in enumerate(clients):
        if c.greeting[0] == 220 and i % 2 == 0:
            assert c.command("QUIT")[0] == 221
        c.close()

    wait_for(lambda: len(re.findall(r"event=disconnect shard=\d+ client=127\.0\.0\.2:", rp.log_text())) == 50,
             timeout_s=10, what="the sessions to end")
    again = [Client(rp.port, "127.0.0.2") for _ in range(51)]
    assert [c.greeting[0] for c in again] == [220] * 50 + [421]
    for c in again:
        c.close()
    assert rp.log_text().count("event=rate_limited") >= 10


def test_connections_per_minute(ringpost):
    rp = ringpost(settings(max_sessions_per_client="0", max_connections_per_minute="3"))
    codes = []
    for _ in range(5):
        c = Client(rp.port, "127.0.0.4")
        codes.append(c.greeting[0])
        c.close()
    assert codes == [220, 220, 220, 421, 421]
    assert Client(rp.port, "127.0.0.5").greeting[0] == 220


def test_messages_and_recipients_per_minute(ringpost):
    rp = ringpost(settings(max_messages_per_minute="3", max_recipients_per_minute="5"))
    c = Client(rp.port, "127.0.0.6")
    assert c.command("EHLO client.test")[0] == 250
    for _ in range(3):
        assert c.command("MAIL FROM:<a@example.org>")[0] == 250
        assert c.command("RSET")[0] == 250
    code, text = c.command("MAIL FROM:<a@example.org>")
    assert code == 451 and "4.7.0 Too much mail from [127.0.0.6], slow down" in text, text
    # Another client on another connection (perhaps another shard) has its own.
    d = Client(rp.port, "127.0.0.7")
    assert d.command("EHLO client.test")[0] == 250
    assert d.command("MAIL FROM:<a@example.org>")[0] == 250
    for i in range(5):
        assert d.command(f"RCPT TO:<u{i}@localhost>")[0] == 250
    code, text = d.command("RCPT TO:<u9@localhost>")
    assert code == 451 and "4.7.0 Too much mail from [127.0.0.7]" in text, text
    # A second connection of the same client shares its bucket.
    e = Client(rp.port, "127.0.0.7")
    assert e.command("EHLO client.test")[0] == 250
    assert e.command("MAIL FROM:<a@example.org>")[0] == 250
    assert e.command("RCPT TO:<x@localhost>")[0] == 451
    for x in (c, d, e):
        x.close()


def test_exempt_and_relay_networks_are_not_limited(ringpost):
    rp = ringpost({
        "relay.networks": '["127.0.0.8/32"]',
        "policy.exempt_networks": '["127.0.0.9/32"]',
        "policy.max_sessions_per_client": "2",
    })
    held = []
    for source in ("127.0.0.8", "127.0.0.9"):
        for _ in range(5):
            c = Client(rp.port, source)
            assert c.greeting[0] == 220, (source, c.greeting)
            held.append(c)
    limited = [Client(rp.port, "127.0.0.10") for _ in range(3)]
    assert [c.greeting[0] for c in limited] == [220, 220, 421]
    for c in held + limited:
        c.close()


def test_access_tables(ringpost, tmp_path):
    (tmp_path / "client").write_text("127.0.0.11 REJECT You are not welcome\n127.0.0 DUNNO\n127.0.0.12 OK\n")
    (tmp_path / "helo").write_text("bad.helo 550 5.7.9 Bad HELO name\n")
    (tmp_path / "sender").write_text("later@example.org DEFER\nspammer@ REJECT\n")
    (tmp_path / "recipient").write_text("trap@localhost DISCARD\nclosed@localhost 452 4.2.2 Mailbox full\n")
    rp = ringpost(settings(
        client_access=f'"{tmp_path / "client"}"',
        helo_access=f'"{tmp_path / "helo"}"',
        sender_access=f'"{tmp_path / "sender"}"',
        recipient_access=f'"{tmp_path / "recipient"}"',
    ))

    def rcpt(source, helo, sender, recipient):
        c = Client(rp.port, source)
        assert c.command(f"EHLO {helo}")[0] == 250
        assert c.command(f"MAIL FROM:<{sender}>")[0] == 250
        result = c.command(f"RCPT TO:<{recipient}>")
        return c, result

    c, (code, text) = rcpt("127.0.0.11", "ok.helo", "a@example.org", "bob@localhost")
    assert code == 554 and "5.7.1 Client host rejected: You are not welcome" in text, text
    c.close()
    # OK for the client ends the access checks: its bad HELO passes.
    c, (code, text) = rcpt("127.0.0.12", "bad.helo", "spammer@example.org", "bob@localhost")
    assert code == 250, text
    c.close()
    c, (code, text) = rcpt("127.0.0.13", "bad.helo", "a@example.org", "bob@localhost")
    assert code == 550 and "5.7.9 Helo command rejected: Bad HELO name" in text, text
    c.close()
    c, (code, text) = rcpt("127.0.0.13", "ok.helo", "later@example.org", "bob@localhost")
    assert code == 450 and "4.7.1 Sender address rejected: Access denied" in text, text
    c.close()
    c, (code, text) = rcpt("127.0.0.13", "ok.helo", "spammer@other.example", "bob@localhost")
    assert code == 554 and "Sender address rejected" in text, text
    c.close()
    c, (code, text) = rcpt("127.0.0.13", "ok.helo", "a@example.org", "closed@localhost")
    assert code == 452 and "4.2.2 Recipient address rejected: Mailbox full" in text, text
    c.close()
    # DISCARD: accepted, then dropped after the final dot.
    c, (code, text) = rcpt("127.0.0.13", "ok.helo", "a@example.org", "trap@localhost")
    assert code == 250, text
    assert c.command("DATA")[0] == 354
    code, text = c.command("Subject: trap\r\n\r\nbody\r\n.")
    assert code == 250, text
    # The next transaction on the session is not discarded.
    assert c.command("MAIL FROM:<a@example.org>")[0] == 250
    assert c.command("RCPT TO:<bob@localhost>")[0] == 250
    assert c.command("DATA")[0] == 354
    assert c.command("Subject: kept\r\n\r\nbody\r\n.")[0] == 250
    c.close()
    wait_for(lambda: rp.maildir_files("bob"), what="bob's message")
    assert rp.maildir_files("trap") == []
    assert "event=discarded" in rp.log_text()
    # SIGHUP reads the tables again.
    (tmp_path / "client").write_text("127.0.0.13 DEFER come back later\n")
    rp.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "event=reload " in rp.log_text(), what="the reload")
    c, (code, text) = rcpt("127.0.0.13", "ok.helo", "a@example.org", "bob@localhost")
    assert code == 450 and "Client host rejected: come back later" in text, text
    c.close()
    c, (code, text) = rcpt("127.0.0.11", "ok.helo", "a@example.org", "bob@localhost")
    assert code == 250, text
    c.close()


def stats(rp):
    out = subprocess.run(rp.args("stats"), capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    table = {}
    for line in out.stdout.splitlines()[1:]:
        name, total, rate = line.split()
        table[name] = (int(total), float(rate))
    return table


def test_stats_of_a_running_server(ringpost):
    rp = ringpost(settings(max_sessions_per_client="1", max_recipients_per_minute="2"))
    c = Client(rp.port, "127.0.0.20")
    assert Client(rp.port, "127.0.0.20").greeting[0] == 421  # rate_limited 1
    assert c.command("EHLO client.test")[0] == 250
    assert c.command("MAIL FROM:<a@example.org>")[0] == 250
    assert c.command("RCPT TO:<x@elsewhere.example>")[0] == 550  # relay_attempt 1
    assert c.command("RCPT TO:<bob@localhost>")[0] == 250
    assert c.command("RCPT TO:<carol@localhost>")[0] == 451  # rate_limited 2
    assert c.command("DATA")[0] == 354
    assert c.command("Subject: hi\r\n\r\nbody\r\n.")[0] == 250  # accepted 1
    c.close()
    table = stats(rp)
    assert table["relay_attempt"][0] == 1, table
    assert table["rate_limited"][0] == 2, table
    assert table["accepted"][0] == 1, table
    assert table["spam"][0] == 0, table
    assert set(table) >= {"relay_attempt", "invalid_recipient", "invalid_sender", "virus", "accepted"}
    # Rates over the last minute: once the snapshots span the events.
    time.sleep(2.5)
    table = stats(rp)
    assert table["accepted"][1] > 0, table
    assert rp.stop() == 0
    line = [l for l in rp.log_text().splitlines() if "event=stats " in l][-1]
    assert "accepted=1" in line and "rate_limited=2" in line and "relay_attempt=1" in line, line
    assert not (rp.spool / "ringpost.sock").exists()
