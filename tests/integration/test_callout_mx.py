"""Callouts go where delivery goes: a domain routed by MX (a private
unbound serving its zone, the first MX dead, the second a real Postfix that
refuses an unknown user) is verified on the second MX, for a transport rule
without nexthop and for a dnslookup router alike; the known user's message
is then delivered through the same MX."""

import smtplib

from conftest import RINGPOST, Ringpost, wait_for
from test_delivery import MX_ADDR, ZONE, mx_port, sink_rcpts


class Configured(Ringpost):
    """A ringpost started with a configuration file (and the usual --set lines)."""

    def __init__(self, workdir, config_text, settings):
        super().__init__(workdir, settings)
        self.config_path = workdir / "ringpost.toml"
        self.config_path.write_text(config_text)

    def args(self, command="serve"):
        args = super().args(command)
        return [args[0], "-c", str(self.config_path)] + args[1:]


RULE = """
[[transport]]
domains = ["fallback.test"]
transport = "smtp"
verify = "callout"
"""

ROUTER = """
[[router]]
name = "mx"
driver = "dnslookup"
domains = ["fallback.test"]
verify = "callout"
"""


def rcpt(port, address):
    with smtplib.SMTP("127.0.0.1", port) as s:
        s.ehlo("client.test")
        s.mail("sender@example.org")
        code, text = s.rcpt(address)
        return code, text.decode()


def start(tmp_path, name, config_text, dns_port, port):
    workdir = tmp_path / name
    workdir.mkdir()
    rp = Configured(workdir, config_text, {
        "dns.servers": f'["127.0.0.1:{dns_port}"]',
        "delivery.port": str(port),
        "relay.domains": '["fallback.test"]',
    })
    return rp.start()


def test_callouts_follow_the_mx_order_and_fallback(tmp_path, unbound, postfix, smtp_sink):
    dns = unbound("test", ZONE)
    sink = smtp_sink()
    port = mx_port()
    downstream = postfix(MX_ADDR, port, sink.port, ["fallback.test"],
                         access=["nobody@fallback.test 550 5.1.1 no such user here"])
    for name, text in [("rule", RULE), ("router", ROUTER)]:
        rp = start(tmp_path, name, text, dns.port, port)
        try:
            code, reply = rcpt(rp.port, "nobody@fallback.test")
            assert code == 550, reply
            assert reply.startswith("5.1.1 <nobody@fallback.test>: callout to live.fallback.test said: 550 5.1.1 "), reply
            assert "no such user here" in reply
            code, reply = rcpt(rp.port, "someone@fallback.test")
            assert code == 250, reply
            log = rp.log_text()
            assert "event=callout_done" in log and "target=fallback.test" in log, log
            # The message to the verified user goes the same way.
            with smtplib.SMTP("127.0.0.1", rp.port) as s:
                refused = s.sendmail("sender@example.org", ["someone@fallback.test"],
                                     f"Subject: via-{name}\r\n\r\nhello\r\n")
            assert refused == {}
            wait_for(lambda: sink_rcpts(sink, f"via-{name}") == [["<someone@fallback.test>"]],
                     what=f"delivery through the second MX ({name})")
        finally:
            rp.stop()
    # One callout refused per configuration, both answered by the live MX.
    assert downstream.log_text().count("NOQUEUE: reject: RCPT from") == 2
