"""The outbound source address and EHLO name: `delivery.source_address`
and `delivery.helo_name`, and a `[[transport]]` rule's own, seen by a
private Postfix smtpd (its `connect from` log lines and the Received
header it adds name the client address and the EHLO name)."""

import smtplib

from conftest import free_port, wait_for


def rule(**fields):
    def value(v):
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return '"' + v + '"'
    return "{" + ", ".join(f"{k} = {value(v)}" for k, v in fields.items()) + "}"


def send(rp, recipients, subject):
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=30) as s:
        s.sendmail("sender@localhost", recipients, f"Subject: {subject}\r\n\r\nHello.\r\n")


def received_from(message):
    """The Received field Postfix added (smtp-sink's own comes first; its
    dump has LF line ends), unfolded."""
    text = message.replace(b"\r\n", b"\n")
    head = text.split(b"\n\n", 1)[0].replace(b"\n\t", b" ").replace(b"\n ", b" ")
    return [line for line in head.split(b"\n") if line.startswith(b"Received:") and b"by downstream.test" in line][0]


def test_connections_come_from_the_configured_address_with_its_ehlo_name(ringpost, postfix, smtp_sink):
    sink = smtp_sink()
    port = free_port()
    downstream = postfix("127.0.0.1", port, sink.port, ["a.test", "b.test"])
    rp = ringpost({
        "delivery.smarthost": f'"127.0.0.1:{port}"',
        "delivery.source_address": '["127.0.0.2"]',
        "delivery.helo_name": '"out-a.test"',
        "transport": "[" + rule(domains=["b.test"], transport="smtp", nexthop=f"127.0.0.1:{port}",
                                source_address=["127.0.0.3"], helo_name="out-b.test") + "]",
    })
    send(rp, ["x@a.test"], "by default")
    send(rp, ["y@b.test"], "by rule")
    by_default = received_from(sink.wait_message(b"Subject: by default")[0])
    by_rule = received_from(sink.wait_message(b"Subject: by rule")[0])
    assert b"from out-a.test (" in by_default and b"[127.0.0.2])" in by_default, by_default
    assert b"from out-b.test (" in by_rule and b"[127.0.0.3])" in by_rule, by_rule
    # Postfix's line per accepted message names the client; the fixture's
    # own readiness probe connected from 127.0.0.1, and sent nothing.
    log = wait_for(lambda: downstream.log_text().count(": client=") >= 2 and downstream.log_text(),
                   what="Postfix's client lines")
    clients = [line.split(": client=")[1].split("[")[1].rstrip("]") for line in log.splitlines()
               if ": client=" in line]
    assert sorted(clients) == ["127.0.0.2", "127.0.0.3"], clients


def test_a_source_address_that_cannot_be_bound_defers_and_is_logged(ringpost, postfix, smtp_sink):
    sink = smtp_sink()
    port = free_port()
    postfix("127.0.0.1", port, sink.port, ["a.test"])
    # 192.0.2.1 (TEST-NET-1) is on no interface here: bind fails.
    rp = ringpost({"delivery.smarthost": f'"127.0.0.1:{port}"', "delivery.source_address": '["192.0.2.1"]'})
    send(rp, ["x@a.test"], "unbindable")
    line = wait_for(lambda: [l for l in rp.log_text().splitlines() if "event=delivery" in l and "x@a.test" in l],
                    what="the deferral")[0]
    assert "status=deferred" in line and "bind 192.0.2.1" in line, line
    assert sink.messages() == []


def test_each_family_gets_its_own_source_address(ringpost, smtp_sink, monkeypatch):
    """source_address with an IPv4 and an IPv6 address: a connection to an
    IPv4 next hop is made from the IPv4 one (127.0.0.3, not the kernel's
    127.0.0.1), one to an IPv6 next hop (a private Postfix on [::1]) from
    the IPv6 one: the IPv4 address would not connect there at all. (::1 is
    the only IPv6 address here, so the kernel would choose it too.)"""
    import conftest
    from conftest import Postfix
    # Postfix's master.cf wants "[::1]:port"; a socket connects to "::1".
    wait_port = conftest.wait_port
    monkeypatch.setattr(conftest, "wait_port",
                        lambda port, host="127.0.0.1", **kw: wait_port(port, host.strip("[]"), **kw))
    sink = smtp_sink()
    port4, port6 = free_port(), free_port()
    v4 = Postfix("127.0.0.1", port4, sink.port, ["four.test"])
    try:
        v6 = Postfix("[::1]", port6, sink.port, ["six.test"], main=["inet_protocols = all"])
    except Exception:
        v4.stop()
        raise
    try:
        rules = ("[" + rule(domains=["four.test"], transport="smtp", nexthop=f"127.0.0.1:{port4}") + ", "
                 + rule(domains=["six.test"], transport="smtp", nexthop=f"[::1]:{port6}") + "]")
        rp = ringpost({"delivery.source_address": '["127.0.0.3", "::1"]', "delivery.helo_name": '"out.test"',
                       "transport": rules})
        send(rp, ["x@four.test"], "over four")
        send(rp, ["y@six.test"], "over six")
        four = received_from(sink.wait_message(b"Subject: over four")[0])
        six = received_from(sink.wait_message(b"Subject: over six")[0])
        assert b"[127.0.0.3])" in four, four
        assert b"[IPv6:::1])" in six or b"[::1])" in six, six
    finally:
        v4.stop()
        v6.stop()
