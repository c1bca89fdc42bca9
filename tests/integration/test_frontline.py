"""The front line against a real unbound on loopback: DNSBL/DNSWL scoring
(refused at the greeting or at RCPT, allowlists outweighing, a silent name
server timing out to "not listed"), the greet pause and early talkers,
strict pipelining, HELO signatures, and reverse DNS (PTR required, and
forward-confirmed). Clients bind 127.0.0.x source addresses to be
different clients."""

import smtplib
import socket
import subprocess
import time

import pytest

from conftest import Ringpost, Unbound, wait_for

# DNSBL bl.test lists 127.0.0.2, .3 and .5 (.5 with an answer outside the
# configured range); DNSWL wl.test lists .3. PTR: .1 -> good.test (which
# resolves back), .4 -> liar.test (which does not), .6 has none.
ZONES = ["bl.test", "wl.test", "good.test", "liar.test", "127.in-addr.arpa"]
RECORDS = [
    "2.0.0.127.bl.test. 300 IN A 127.0.0.2",
    "3.0.0.127.bl.test. 300 IN A 127.0.0.2",
    "5.0.0.127.bl.test. 300 IN A 127.0.0.200",
    "3.0.0.127.wl.test. 300 IN A 127.0.0.5",
    "good.test. 300 IN A 127.0.0.1",
    "liar.test. 300 IN A 127.0.0.99",
    "1.0.0.127.in-addr.arpa. 300 IN PTR good.test.",
    "2.0.0.127.in-addr.arpa. 300 IN PTR good.test.",
    "4.0.0.127.in-addr.arpa. 300 IN PTR liar.test.",
]


class Zones(Unbound):
    """unbound serving several static zones (the fixture's serves one)."""

    def __init__(self, workdir, zones, records):
        super().__init__(workdir, zones[0], records, zones=zones)


@pytest.fixture
def zones(tmp_path):
    server = Zones(tmp_path / "unbound", ZONES, RECORDS)
    yield server
    server.stop()


class Configured(Ringpost):
    """A ringpost started with a configuration file (and the usual --set lines)."""

    def __init__(self, workdir, config_text, settings):
        super().__init__(workdir, settings)
        self.config_path = workdir / "ringpost.toml"
        self.config_path.write_text(config_text)

    def args(self, command="serve"):
        args = super().args(command)
        return [args[0], "-c", str(self.config_path)] + args[1:]


@pytest.fixture
def front(tmp_path):
    """Factory: front(config_text, dns_port, **settings) starts a ringpost."""
    started = []

    def start(config_text, dns_port, settings=None):
        workdir = tmp_path / f"rp{len(started)}"
        workdir.mkdir()
        all_settings = {"dns.servers": f'["127.0.0.1:{dns_port}"]', "dns.timeout": '"1s"', "dns.attempts": "1"}
        all_settings.update(settings or {})
        rp = Configured(workdir, config_text, all_settings).start()
        started.append(rp)
        return rp

    yield start
    for rp in started:
        rp.stop()


DNSBLS = """
[[dnsbl]]
zone = "bl.test"
answers = ["127.0.0.2", "127.0.0.4..127.0.0.11"]

[[dnsbl]]
zone = "wl.test"
weight = -2
"""


def greeting(port, source, timeout_s=10):
    """The first reply of a connection from `source`, and whether the server then closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s, source_address=(source, 0)) as s:
        f = s.makefile("rb")
        line = f.readline().decode()
        if line.startswith("220"):
            s.sendall(b"QUIT\r\n")
            return line, None
        return line, f.read() == b""


def smtp_from(port, source, **kw):
    return smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=20, **kw)


def test_listed_clients_are_refused_at_the_greeting(zones, front):
    rp = front(DNSBLS, zones.port)
    line, closed = greeting(rp.port, "127.0.0.2")
    assert line.startswith("554 5.7.1 Service unavailable; client [127.0.0.2] blocked using bl.test"), line
    assert closed
    assert greeting(rp.port, "127.0.0.3")[0].startswith("220"), "the allowlist outweighs"
    assert greeting(rp.port, "127.0.0.5")[0].startswith("220"), "an answer outside the ranges is not a listing"
    with smtp_from(rp.port, "127.0.0.1") as s:
        s.ehlo("client.test")
        assert s.sendmail("a@example.org", ["clean@localhost"], b"Subject: clean\r\n\r\nbody\r\n") == {}
    log = rp.log_text()
    assert "event=dnsbl client=127.0.0.2 zones=bl.test weight=1 action=reject_at_greeting" in log
    assert "event=dnsbl client=127.0.0.3 zones=bl.test,wl.test weight=-1 action=pass" in log
    wait_for(lambda: rp.maildir_files("clean"), what="delivery")


def test_reject_at_rcpt_still_takes_mail_for_postmaster(zones, front):
    rp = front(DNSBLS + '\n[policy]\ndnsbl_action = "reject_at_rcpt"\n', zones.port)
    with smtp_from(rp.port, "127.0.0.2") as s:
        s.ehlo("client.test")
        assert s.mail("a@example.org")[0] == 250
        code, text = s.rcpt("user@localhost")
        assert code == 554 and b"blocked using bl.test" in text, text
        assert s.rcpt("postmaster@localhost")[0] == 250
    assert "action=reject_at_rcpt" in rp.log_text()


def test_a_silent_name_server_times_out_to_not_listed(front):
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        rp = front(DNSBLS + '\n[policy]\ndnsbl_timeout = "1s"\n', silent.getsockname()[1],
                   {"dns.timeout": '"5s"'})
        started = time.monotonic()
        line, _ = greeting(rp.port, "127.0.0.2")
        waited = time.monotonic() - started
        assert line.startswith("220"), line
        assert 0.8 <= waited < 4, waited
        assert "event=dnsbl_timeout zone=bl.test" in rp.log_text()
    finally:
        silent.close()


def test_early_talkers_are_refused_and_patient_clients_greeted(zones, front):
    rp = front('[policy]\ngreet_pause = "2s"\n', zones.port)
    with socket.create_connection(("127.0.0.1", rp.port), timeout=10) as s:
        s.sendall(b"EHLO impatient.test\r\n")
        f = s.makefile("rb")
        line = f.readline().decode()
        assert line.startswith("554 5.5.1"), line
        assert f.read() == b""
    started = time.monotonic()
    with smtp_from(rp.port, "127.0.0.1") as s:
        assert time.monotonic() - started >= 1.9
        assert s.ehlo("patient.test")[0] == 250
        assert s.sendmail("a@example.org", ["patient@localhost"], b"Subject: waited\r\n\r\nbody\r\n") == {}
    assert "event=early_talker client=127.0.0.1:" in rp.log_text()


def test_strict_pipelining(zones, front):
    rp = front("", zones.port)
    # After HELO nothing was offered: a second command in the same packet.
    with socket.create_connection(("127.0.0.1", rp.port), timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")
        s.sendall(b"HELO bot.test\r\nMAIL FROM:<a@example.org>\r\n")
        line = f.readline().decode()
        assert line.startswith("554 5.5.0 Improper use of SMTP command pipelining"), line
    # Content sent with DATA, before the 354.
    with socket.create_connection(("127.0.0.1", rp.port), timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")
        s.sendall(b"EHLO bot.test\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        s.sendall(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<x@localhost>\r\nDATA\r\nSubject: early\r\n\r\n.\r\n")
        replies = [f.readline().decode() for _ in range(3)]
        assert replies[0].startswith("250") and replies[1].startswith("250"), replies
        assert replies[2].startswith("554 5.5.0"), replies
    assert "event=improper_pipelining" in rp.log_text()
    # Clients that pipeline as offered still work: swaks, smtp-source, smtplib.
    out = subprocess.run(["swaks", "--server", f"127.0.0.1:{rp.port}", "--from", "s@example.org",
                          "--to", "swaks@localhost", "--pipeline"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    out = subprocess.run(["/usr/sbin/smtp-source", "-s", "2", "-m", "10", "-f", "src@example.org",
                          "-t", "source@localhost", f"127.0.0.1:{rp.port}"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    with smtp_from(rp.port, "127.0.0.1") as s:
        assert s.sendmail("a@example.org", ["lib@localhost"], b"Subject: lib\r\n\r\nbody\r\n") == {}
    wait_for(lambda: len(rp.maildir_files("source")) == 10, what="smtp-source's messages")
    wait_for(lambda: rp.maildir_files("swaks") and rp.maildir_files("lib"), what="delivery")


HELO_CHECKS = """
[policy]
helo_require = true
helo_reject_ip_mismatch = true

[[helo_check]]
pattern = "^bot[0-9]+\\\\.example$"
action = "tag"

[[helo_check]]
name = "friend.example"
text = "Not my friend"
"""


def test_helo_signatures_are_refused_and_counted_as_malware(zones, front):
    rp = front(HELO_CHECKS, zones.port)
    with smtp_from(rp.port, "127.0.0.1") as s:
        s.ehlo("BOT42.example")
        code, text = s.mail("a@example.org")
        assert code == 550 and b"5.7.1" in text and b"malware" in text, text
        s.ehlo("friend.example")
        code, text = s.mail("a@example.org")
        assert (code, text) == (550, b"5.7.1 Not my friend")
        s.ehlo("[10.1.2.3]")
        code, text = s.mail("a@example.org")
        assert code == 550 and b"not your address" in text, text
        s.ehlo("[127.0.0.1]")
        assert s.mail("a@example.org")[0] == 250, "the client's own address literal"
    log = rp.log_text()
    assert "event=helo_check client=127.0.0.1:" in log
    assert "helo=BOT42.example check=helo_check[0] action=tag" in log
    assert "check=helo_reject_ip_mismatch action=reject" in log


def test_reverse_dns(zones, front):
    rp = front('[policy]\nreverse_dns = "require_forward_confirmed"\n', zones.port)
    def mail_from(source):
        with smtp_from(rp.port, source) as s:
            s.ehlo("client.test")
            return s.mail("a@example.org")
    assert mail_from("127.0.0.1")[0] == 250, "good.test resolves back"
    code, text = mail_from("127.0.0.4")
    assert code == 550 and b"liar.test does not resolve to [127.0.0.4]" in text, text
    code, text = mail_from("127.0.0.6")
    assert code == 550 and b"cannot find your reverse hostname" in text, text
    log = rp.log_text()
    assert "event=reverse_dns client=127.0.0.1 verdict=pass name=good.test" in log
    assert "event=reverse_dns client=127.0.0.4 verdict=mismatch name=liar.test" in log

    plain = front('[policy]\nreverse_dns = "require"\n', zones.port)
    with smtp_from(plain.port, "127.0.0.4") as s:
        s.ehlo("client.test")
        assert s.mail("a@example.org")[0] == 250, "a PTR is enough without forward confirmation"


def test_reverse_dns_temporary_failure(front):
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        rp = front('[policy]\nreverse_dns = "require"\n', silent.getsockname()[1])
        with smtp_from(rp.port, "127.0.0.1") as s:
            s.ehlo("client.test")
            code, text = s.mail("a@example.org")
            assert code == 450 and text.startswith(b"4.7.1"), text
    finally:
        silent.close()


def test_client_access_matches_the_forward_confirmed_reverse_name(zones, front, tmp_path):
    table = tmp_path / "client_access"
    table.write_text("good.test REJECT Named and shamed\nliar.test REJECT an unconfirmed name must not match\n")
    rp = front(f'[policy]\nclient_access = "{table}"\n', zones.port, {"relay.networks": "[]"})

    def rcpt(source):
        with smtp_from(rp.port, source) as s:
            s.ehlo("client.test")
            assert s.mail("a@example.org")[0] == 250
            return s.rcpt("bob@localhost")

    code, text = rcpt("127.0.0.1")
    assert code == 554 and b"5.7.1 Client host rejected: Named and shamed" in text, text
    # .4's PTR name does not resolve back: the name keys are not tried,
    # and without reverse_dns nothing refuses it for having no name.
    assert rcpt("127.0.0.4")[0] == 250
    assert rcpt("127.0.0.6")[0] == 250
    assert "event=reverse_dns client=127.0.0.4 verdict=mismatch name=liar.test" in rp.log_text()
