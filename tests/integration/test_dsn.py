"""Delivery status notifications with the DSN extension (RFC 3461): the
client's NOTIFY, ORCPT, RET and ENVID (sent by Python's smtplib) are kept
by ringpost and passed on to a next hop that offers DSN (a private
Postfix, which passes them on to smtp-sink, whose dump shows the
envelope it got); the reports ringpost sends back to the sender (local,
read from its Maildir and parsed with Python's email package) honour
them: a bounce with Original-Envelope-Id and Original-Recipient, headers
only for RET=HDRS, the whole message for RET=FULL, none for NOTIFY=NEVER,
a `relayed` report for NOTIFY=SUCCESS to a next hop without DSN
(smtp-sink -N), and one delay warning per message after
queue.delay_warning_after, also across a restart."""

import email
import smtplib
import subprocess
import time

from conftest import free_port, wait_for

DOMAIN = "dsn.test"


def send(rp, recipients, subject, mail_options=(), rcpt_options=None, body="Hello.\r\nSECRET-BODY-LINE\r\n"):
    """One message from sender@localhost (a local mailbox: the reports
    come back there). `rcpt_options` maps a recipient to its options."""
    msg = (f"From: <sender@localhost>\r\nTo: undisclosed\r\nSubject: {subject}\r\n"
           f"Message-ID: <{subject}@client.test>\r\n\r\n{body}")
    with smtplib.SMTP("127.0.0.1", rp.port) as s:
        s.ehlo("client.test")
        assert s.has_extn("dsn"), "DSN is offered"
        code, reply = s.mail("sender@localhost", list(mail_options))
        assert code == 250, reply
        for rcpt in recipients:
            code, reply = s.rcpt(rcpt, list((rcpt_options or {}).get(rcpt, ())))
            assert code == 250, reply
        code, reply = s.data(msg)
        assert code == 250, reply


def reports(rp):
    """Every report in the sender's mailbox, parsed."""
    return [email.message_from_bytes(p.read_bytes()) for p in rp.maildir_files("sender")]


def status_groups(report):
    """The per-message group and the per-recipient groups of a report's
    message/delivery-status part (parsed by the email package)."""
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    status = [p for p in report.walk() if p.get_content_type() == "message/delivery-status"]
    assert len(status) == 1, "one message/delivery-status part"
    groups = status[0].get_payload()
    return groups[0], groups[1:]


def returned_part(report):
    parts = [p for p in report.walk() if p.get_content_type() in ("text/rfc822-headers", "message/rfc822")]
    assert len(parts) == 1, [p.get_content_type() for p in report.walk()]
    return parts[0]


def subject_of(report):
    part = returned_part(report)
    if part.get_content_type() == "message/rfc822":
        return part.get_payload()[0]["Subject"]
    return email.message_from_string(part.get_payload())["Subject"]


def sink_envelope(sink, subject):
    """smtp-sink's record of the transaction that carried `subject`: its
    X-Mail-Args line and its X-Rcpt-Args lines."""
    for m in sink.messages():
        lines = [line.rstrip(b"\r").decode(errors="replace") for line in m.splitlines()]
        if f"Subject: {subject}" in lines:
            mail = [line for line in lines if line.startswith("X-Mail-Args:")]
            rcpts = [line for line in lines if line.startswith("X-Rcpt-Args:")]
            return mail, rcpts
    return None


def with_downstream(ringpost, smtp_sink, postfix, access=(), settings=None):
    """ringpost relaying through a private Postfix (offering DSN) that
    relays on to smtp-sink (offering DSN too)."""
    sink = smtp_sink()
    port = free_port()
    downstream = postfix("127.0.0.1", port, sink.port, [DOMAIN], access)
    rp = ringpost({"delivery.smarthost": f'"127.0.0.1:{port}"', **(settings or {})})
    return rp, sink, downstream


def test_dsn_is_offered_to_swaks(ringpost):
    rp = ringpost()
    out = subprocess.run(["swaks", "--server", f"127.0.0.1:{rp.port}", "--ehlo", "client.test",
                          "--quit-after", "EHLO", "--hide-informational"],
                         capture_output=True, text=True, timeout=30).stdout
    assert "<-  250-DSN" in out or "<-  250 DSN" in out, out


def test_bad_dsn_parameters_are_refused(ringpost):
    rp = ringpost()
    with smtplib.SMTP("127.0.0.1", rp.port) as s:
        s.ehlo("client.test")
        for options in (["RET=BODY"], ["ENVID=a+4"], [f"ENVID={'x' * 101}"]):
            code, reply = s.mail("sender@localhost", options)
            assert (code, reply[:5]) == (501, b"5.5.4"), (options, code, reply)
        code, _ = s.mail("sender@localhost", ["RET=HDRS", "ENVID=QQ1"])
        assert code == 250
        for options in (["NOTIFY=NEVER,SUCCESS"], ["NOTIFY=SOMETIMES"], ["ORCPT=bob@example.net"],
                        ["ORCPT=rfc822;bob+zz@example.net"], ["NOTIFY=DELAY", "NOTIFY=DELAY"]):
            code, reply = s.rcpt(f"ok@{DOMAIN}", options)
            assert (code, reply[:5]) == (501, b"5.5.4"), (options, code, reply)
        code, _ = s.rcpt(f"ok@{DOMAIN}", ["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;ok@dsn.test"])
        assert code == 250


def test_parameters_are_passed_on_to_a_next_hop_with_dsn(ringpost, smtp_sink, postfix):
    rp, sink, downstream = with_downstream(ringpost, smtp_sink, postfix)
    send(rp, [f"ok@{DOMAIN}", f"plain@{DOMAIN}"], "passed-on", mail_options=["RET=HDRS", "ENVID=QQ314159"],
         rcpt_options={f"ok@{DOMAIN}": ["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;first+2Bcopy@client.test"]})
    envelope = wait_for(lambda: sink_envelope(sink, "passed-on"), what="the relayed message at the sink")
    mail, rcpts = envelope
    # Postfix could only have these from ringpost: it passes on what it got.
    assert any("RET=HDRS" in line and "ENVID=QQ314159" in line for line in mail), mail
    ok = [line for line in rcpts if f"<ok@{DOMAIN}>" in line]
    assert ok and "NOTIFY=SUCCESS,DELAY" in ok[0] and "ORCPT=rfc822;first+2Bcopy@client.test" in ok[0], rcpts
    plain = [line for line in rcpts if f"<plain@{DOMAIN}>" in line]
    assert plain and "NOTIFY=" not in plain[0], rcpts
    assert f"127.0.0.1[127.0.0.1]:{downstream.port} conn_use=" in rp.log_text()
    # The next hop offered DSN: the success report is its job, not ringpost's.
    time.sleep(2.0)
    assert reports(rp) == []
    assert "kind=success" not in rp.log_text()


def test_refused_recipient_gets_one_report_with_envid_and_orcpt_headers_only(ringpost, smtp_sink, postfix):
    rp, sink, _ = with_downstream(ringpost, smtp_sink, postfix, access=[f"bad@{DOMAIN} 550 5.1.1 no such user here"])
    send(rp, [f"bad@{DOMAIN}", f"good@{DOMAIN}"], "refused", mail_options=["RET=HDRS", "ENVID=QQ+2B42"],
         rcpt_options={f"bad@{DOMAIN}": ["NOTIFY=FAILURE", "ORCPT=rfc822;Bad+2Blist@client.test"]})
    wait_for(lambda: reports(rp), what="the bounce")
    time.sleep(1.5)
    got = reports(rp)
    assert len(got) == 1, "exactly one report"
    report = got[0]
    assert "MAILER-DAEMON" in report["From"].upper()
    message_group, recipients = status_groups(report)
    assert message_group["Original-Envelope-Id"] == "QQ+42"
    assert message_group["Reporting-MTA"] == "dns; mx.test"
    assert len(recipients) == 1, "only the refused recipient"
    r = recipients[0]
    assert r["Action"] == "failed"
    assert r["Status"] == "5.1.1"
    assert r["Final-Recipient"] == f"rfc822; bad@{DOMAIN}"
    assert r["Original-Recipient"] == "rfc822; Bad+list@client.test"
    assert "550 5.1.1" in r["Diagnostic-Code"]
    part = returned_part(report)
    assert part.get_content_type() == "text/rfc822-headers"
    assert "Subject: refused" in part.get_payload()
    assert b"SECRET-BODY-LINE" not in rp.maildir_files("sender")[0].read_bytes(), "RET=HDRS: headers only"
    wait_for(lambda: sink_envelope(sink, "refused"), what="the good recipient's delivery")


def test_ret_full_returns_the_whole_message(ringpost, smtp_sink, postfix):
    rp, _, _ = with_downstream(ringpost, smtp_sink, postfix, access=[f"bad@{DOMAIN} 550 5.1.1 no such user here"])
    send(rp, [f"bad@{DOMAIN}"], "full", mail_options=["RET=FULL"])
    wait_for(lambda: reports(rp), what="the bounce")
    report = reports(rp)[0]
    part = returned_part(report)
    assert part.get_content_type() == "message/rfc822"
    original = part.get_payload()[0]
    assert original["Subject"] == "full"
    assert "SECRET-BODY-LINE" in original.get_payload()
    _, recipients = status_groups(report)
    assert recipients[0]["Action"] == "failed" and recipients[0]["Original-Recipient"] is None


def test_notify_never_sends_no_bounce(ringpost, smtp_sink, postfix):
    rp, _, _ = with_downstream(ringpost, smtp_sink, postfix, access=[f"bad@{DOMAIN} 550 5.1.1 no such user here",
                                                                     f"bad2@{DOMAIN} 550 5.1.1 no such user here"])
    send(rp, [f"bad@{DOMAIN}"], "never", rcpt_options={f"bad@{DOMAIN}": ["NOTIFY=NEVER"]})
    # NOTIFY without FAILURE: no failure report either.
    send(rp, [f"bad2@{DOMAIN}"], "success-only", rcpt_options={f"bad2@{DOMAIN}": ["NOTIFY=SUCCESS"]})
    wait_for(lambda: rp.log_text().count("status=failed") == 2, what="both failures")
    wait_for(lambda: rp.queue_live() == 0, what="both messages removed")
    time.sleep(1.5)
    assert reports(rp) == []
    assert "event=bounce" not in rp.log_text()


def test_success_to_a_next_hop_without_dsn_is_one_relayed_report(ringpost, smtp_sink):
    sink = smtp_sink("-N")  # smtp-sink without DSN in its EHLO reply
    rp = ringpost({"delivery.smarthost": f'"127.0.0.1:{sink.port}"'})
    send(rp, [f"ok@{DOMAIN}", f"quiet@{DOMAIN}"], "relayed", mail_options=["ENVID=RELAYED1"],
         rcpt_options={f"ok@{DOMAIN}": ["NOTIFY=SUCCESS", "ORCPT=rfc822;ok@client.test"]})
    mail, rcpts = wait_for(lambda: sink_envelope(sink, "relayed"), what="the message at the sink")
    assert not any("NOTIFY=" in line or "ORCPT=" in line for line in rcpts), "no DSN parameters without DSN"
    assert not any("ENVID=" in line for line in mail)
    wait_for(lambda: reports(rp), what="the success report")
    time.sleep(1.5)
    got = reports(rp)
    assert len(got) == 1, "one report"
    assert got[0]["Subject"] == "Successful Mail Delivery Report"
    message_group, recipients = status_groups(got[0])
    assert message_group["Original-Envelope-Id"] == "RELAYED1"
    assert [r["Final-Recipient"] for r in recipients] == [f"rfc822; ok@{DOMAIN}"]
    assert recipients[0]["Action"] == "relayed"
    assert recipients[0]["Status"].startswith("2.")
    assert recipients[0]["Original-Recipient"] == "rfc822; ok@client.test"
    assert returned_part(got[0]).get_content_type() == "text/rfc822-headers"


def test_success_of_a_local_delivery_is_a_delivered_report(ringpost):
    rp = ringpost()
    send(rp, ["mailbox@localhost"], "local-success", rcpt_options={"mailbox@localhost": ["NOTIFY=SUCCESS"]})
    wait_for(lambda: rp.maildir_files("mailbox"), what="the local delivery")
    wait_for(lambda: reports(rp), what="the success report")
    _, recipients = status_groups(reports(rp)[0])
    assert [(r["Action"], r["Status"]) for r in recipients] == [("delivered", "2.0.0")]
    assert recipients[0]["Diagnostic-Code"] is None, "the mailbox's file name is not reported"


def delay_counts(rp):
    """(delay warnings, failure reports) per subject."""
    counts = {}
    for report in reports(rp):
        _, recipients = status_groups(report)
        actions = {r["Action"] for r in recipients}
        assert len(actions) == 1, actions
        key = (subject_of(report), actions.pop())
        counts[key] = counts.get(key, 0) + 1
    return counts


def test_one_delay_warning_per_message_also_after_a_restart(ringpost, smtp_sink, postfix):
    sink = smtp_sink()
    port = free_port()
    postfix("127.0.0.1", port, sink.port, [DOMAIN],
            [f"later@{DOMAIN} 451 4.2.0 try again later", f"later2@{DOMAIN} 451 4.2.0 try again later"])
    settings = {
        "delivery.smarthost": f'"127.0.0.1:{port}"',
        "queue.delay_warning_after": '"2s"',
        "queue.max_age": '"16s"',
    }
    rp = ringpost(settings)
    workdir = rp.workdir
    send(rp, [f"later@{DOMAIN}"], "delayed", mail_options=["ENVID=DELAY1"],
         rcpt_options={f"later@{DOMAIN}": ["ORCPT=rfc822;later@client.test"]})
    # NOTIFY without DELAY: a failure report at the end, no warning.
    send(rp, [f"later2@{DOMAIN}"], "not-warned", rcpt_options={f"later2@{DOMAIN}": ["NOTIFY=FAILURE"]})
    wait_for(lambda: reports(rp), timeout_s=30, what="the delay warning")
    warning = reports(rp)[0]
    assert warning["Subject"] == "Delayed Mail (still being retried)"
    message_group, recipients = status_groups(warning)
    assert message_group["Original-Envelope-Id"] == "DELAY1"
    assert [(r["Action"], r["Status"]) for r in recipients] == [("delayed", "4.2.0")]
    assert recipients[0]["Original-Recipient"] == "rfc822; later@client.test"
    assert delay_counts(rp) == {("delayed", "delayed"): 1}

    # Restart: the envelope says the warning went; attempts go on, no second one.
    assert rp.stop() == 0
    deferred_before = rp.log_text().count(f"to=later@{DOMAIN}")
    rp = ringpost(settings, workdir=workdir)
    wait_for(lambda: rp.log_text().count(f"to=later@{DOMAIN}") >= deferred_before + 2, timeout_s=30,
             what="two more attempts after the restart")
    assert delay_counts(rp) == {("delayed", "delayed"): 1}

    # The queue lifetime runs out: the final bounce for each message.
    wait_for(lambda: len(reports(rp)) == 3, timeout_s=40, what="the final bounces")
    time.sleep(1.5)
    assert delay_counts(rp) == {("delayed", "delayed"): 1, ("delayed", "failed"): 1, ("not-warned", "failed"): 1}
    assert rp.queue_live() == 0
