"""Content scanning at the final dot, end to end with real scanners: a
private clamd (one signature, the EICAR test string), a private spamd
(SpamAssassin's shipped rules) and a private rspamd scan each message in its final place in
ringpost's queue before the reply to its final dot. A virus or GTUBE gets
550 5.7.1 with the scanner's reason and nothing is queued; a clean message
gets 250 and arrives at the next hop (smtp-sink) with the scanner's header
lines above it and its content unchanged. A message kept in a body file
(larger than queue.inline_max_bytes) is streamed to clamd from the file. A
pipe scanner runs as nobody, refuses with its first line of output and
adds the header lines it prints."""

import os
import pwd
import shutil
import smtplib
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import EICAR, EICAR_NAME, GTUBE, wait_for


def scanner_settings(sink_port, *scanners):
    """--set values: relay to the sink, and these [[scanner]] tables."""
    tables = ", ".join("{" + ", ".join(f'{k} = "{v}"' for k, v in s.items()) + "}" for s in scanners)
    return {"delivery.smarthost": f'"127.0.0.1:{sink_port}"', "scanner": f"[{tables}]"}


def message(subject, body):
    return (f"From: <sender@client.test>\r\nTo: <rcpt@far.test>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject}@client.test>\r\n\r\n").encode() + body + b"\r\n"


def send(rp, content):
    """The reply to the final dot: (code, text)."""
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=60) as client:
        client.ehlo("client.test")
        assert client.mail("sender@client.test")[0] == 250
        assert client.rcpt("rcpt@far.test")[0] == 250
        return client.data(content)


def assert_unchanged(lines, content):
    """The client's message is in the delivered copy line for line."""
    sent = content.split(b"\r\n")[:-1]
    at = lines.index(sent[0])
    assert lines[at:at + len(sent)] == sent, lines


def delivered_lines(sink, subject):
    """The lines of the message the sink received with this subject."""
    found = sink.wait_message(f"Subject: {subject}".encode())
    return [line.rstrip(b"\r") for line in found[0].splitlines()]


@pytest.mark.parametrize("over", ["tcp", "unix"])
def test_clamd_refuses_the_eicar_string_and_passes_a_clean_message(ringpost, smtp_sink, clamd, over):
    sink = smtp_sink()
    address = clamd.address if over == "tcp" else clamd.unix_address
    rp = ringpost(scanner_settings(sink.port, {"name": "av", "kind": "clamd", "address": address}))
    code, text = send(rp, message(f"virus-{over}", EICAR))
    assert code == 550, text
    assert text == f"5.7.1 Message refused by av: virus {EICAR_NAME} found".encode(), text
    assert "verdict=reject" in rp.log_text()
    clean = message(f"clean-{over}", b"Nothing to see here.")
    code, text = send(rp, clean)
    assert code == 250, text
    lines = delivered_lines(sink, f"clean-{over}")
    at = lines.index(b"X-Virus-Scanned: clamd")
    assert lines[at + 1].startswith(b"Received: from client.test"), lines
    assert_unchanged(lines, clean)
    assert not [m for m in sink.messages() if b"virus-" in m], "the refused message went nowhere"
    wait_for(lambda: rp.queue_live() == 0, what="the queue to empty")


def test_a_body_file_is_streamed_to_clamd(ringpost, smtp_sink, clamd):
    sink = smtp_sink()
    rp = ringpost({**scanner_settings(sink.port, {"name": "av", "kind": "clamd", "address": clamd.address}),
                   "queue.inline_max_bytes": "4096"})
    filler = b"".join(b"line %06d of a message larger than the inline limit\r\n" % i for i in range(5000))
    code, text = send(rp, message("large-virus", filler + EICAR))
    assert code == 550 and EICAR_NAME.encode() in text, (code, text)
    code, text = send(rp, message("large-clean", filler))
    assert code == 250, text
    # smtp-sink writes the file as the content arrives: wait for its end.
    sink.wait_message(b"line 004999 of a message larger than the inline limit")
    lines = delivered_lines(sink, "large-clean")
    assert b"X-Virus-Scanned: clamd" in lines
    assert lines.count(b"line 004999 of a message larger than the inline limit") == 1
    wait_for(lambda: rp.queue_live() == 0, what="the queue to empty")
    assert rp.body_files() == [], "the refused message's body file is gone too"


def test_spamd_refuses_gtube_and_marks_a_clean_message(ringpost, smtp_sink, spamd):
    sink = smtp_sink()
    rp = ringpost(scanner_settings(sink.port, {"name": "spam", "kind": "spamd", "address": spamd.address}))
    code, text = send(rp, message("gtube", GTUBE))
    assert code == 550, text
    assert text.startswith(b"5.7.1 Message refused by spam: "), text
    assert b"GTUBE" in text, text
    clean = message("ham", b"Lunch at noon on Friday?")
    code, text = send(rp, clean)
    assert code == 250, text
    lines = delivered_lines(sink, "ham")
    status = [line for line in lines if line.startswith(b"X-Spam-Status: ")]
    assert len(status) == 1 and status[0].startswith(b"X-Spam-Status: No, score="), lines
    assert [line for line in lines if line.startswith(b"X-Spam-Score: ")], lines
    assert_unchanged(lines, clean)
    log = rp.log_text()
    assert "scanner=spam verdict=reject" in log and "scanner=spam verdict=accept" in log, log


def test_both_scanners_in_order_and_a_reject_score(ringpost, smtp_sink, spamd, clamd):
    sink = smtp_sink()
    rp = ringpost(scanner_settings(
        sink.port,
        {"name": "av", "kind": "clamd", "address": clamd.address},
        {"name": "spam", "kind": "spamd", "address": spamd.address},
    ))
    code, text = send(rp, message("both-virus", EICAR))
    assert code == 550 and b"by av" in text, text
    code, text = send(rp, message("both-clean", b"See you tomorrow."))
    assert code == 250, text
    lines = delivered_lines(sink, "both-clean")
    av, spam = lines.index(b"X-Virus-Scanned: clamd"), next(
        i for i, line in enumerate(lines) if line.startswith(b"X-Spam-Status: "))
    assert av < spam, "the scanners' lines in their order"

    # With a reject score above GTUBE's, GTUBE is accepted and marked.
    rp2 = ringpost({**scanner_settings(sink.port, {"name": "spam", "kind": "spamd", "address": spamd.address}),
                    "scanner": f'[{{name = "spam", kind = "spamd", address = "{spamd.address}", reject_score = 5000.0}}]'})
    code, text = send(rp2, message("gtube-marked", GTUBE))
    assert code == 250, text
    lines = delivered_lines(sink, "gtube-marked")
    assert [line for line in lines if line.startswith(b"X-Spam-Status: Yes, score=")], lines


def test_a_pipe_scanner_runs_as_nobody_refuses_and_adds_a_header(ringpost, smtp_sink):
    # nobody must reach the program: not under pytest's private tmp_path.
    where = Path(tempfile.mkdtemp(prefix="ringpost-filter-"))
    os.chmod(where, 0o755)
    program = where / "filter"
    program.write_text("#!/bin/sh\n"
                       "if grep -q 'PHISH-ME'; then echo 'Looks like phishing'; exit 1; fi\n"
                       "echo \"X-Filter: checked uid=$(id -u) from=$1 to=$2\"\n"
                       "exit 0\n")
    program.chmod(0o755)
    sink = smtp_sink()
    scanner = f'[{{name = "filter", kind = "pipe", command = ["{program}", "{{sender}}", "{{recipients}}"]}}]'
    rp = ringpost({"delivery.smarthost": f'"127.0.0.1:{sink.port}"', "scanner": scanner})
    code, text = send(rp, message("phish", b"Click here: PHISH-ME"))
    assert (code, text) == (550, b"5.7.1 Message refused by filter: Looks like phishing"), (code, text)
    clean = message("filtered", b"An ordinary note.")
    code, text = send(rp, clean)
    assert code == 250, text
    lines = delivered_lines(sink, "filtered")
    nobody = pwd.getpwnam("nobody").pw_uid
    assert f"X-Filter: checked uid={nobody} from=sender@client.test to=rcpt@far.test".encode() in lines, lines
    assert_unchanged(lines, clean)
    shutil.rmtree(where, ignore_errors=True)


def test_rspamd_refuses_gtube_and_marks_a_clean_message(ringpost, smtp_sink, rspamd):
    sink = smtp_sink()
    rp = ringpost(scanner_settings(sink.port, {"name": "rspamd", "kind": "rspamd", "address": rspamd.address}))
    code, text = send(rp, message("rspamd-gtube", GTUBE))
    assert code == 550, text
    assert text.startswith(b"5.7.1 Message refused by rspamd: "), text
    clean = (b"Date: Tue, 01 Dec 2026 12:00:00 +0000\r\nFrom: Sender <sender@client.test>\r\n"
             b"To: Someone <rcpt@far.test>\r\nSubject: rspamd-ham\r\nMessage-ID: <rspamd-ham@client.test>\r\n\r\n"
             b"The minutes of today's meeting are attached.\r\n")
    code, text = send(rp, clean)
    assert code == 250, text
    lines = delivered_lines(sink, "rspamd-ham")
    assert [line for line in lines if line.startswith(b"X-Rspamd-Score: ")], lines
    assert [line for line in lines if line.startswith(b"X-Spam-Status: ")], lines
    assert_unchanged(lines, clean)


def test_a_slow_scanner_is_bounded_and_others_do_not_wait(ringpost, smtp_sink):
    where = Path(tempfile.mkdtemp(prefix="ringpost-slow-"))
    os.chmod(where, 0o755)
    program = where / "slow"
    program.write_text("#!/bin/sh\ncat > /dev/null\nsleep 2\nexit 0\n")
    program.chmod(0o755)
    sink = smtp_sink()
    scanner = (f'[{{name = "slow", kind = "pipe", command = ["{program}"], max_concurrent = 2, queue_max = 1, '
               f'max_size_bytes = 2000}}]')
    # One shard, so that the pool's bound is the one every client meets.
    rp = ringpost({"delivery.smarthost": f'"127.0.0.1:{sink.port}"', "scanner": scanner, "server.shards": "1"})
    results = {}

    def one(i):
        started = time.monotonic()
        results[i] = (send(rp, message(f"slow-{i}", b"scan me")), time.monotonic() - started)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.7)  # two scanning, one waiting
    started = time.monotonic()
    busy = send(rp, message("slow-busy", b"scan me"))
    busy_s = time.monotonic() - started
    started = time.monotonic()
    # Above max_size_bytes: not given to the scanner, not held up by it.
    unscanned = send(rp, message("slow-large", b"\r\n".join([b"y" * 70] * 40)))
    unscanned_s = time.monotonic() - started
    for t in threads:
        t.join()
    assert busy == (451, b"4.7.1 Content scanner busy, try again later"), busy
    assert busy_s < 0.5, busy_s
    assert unscanned[0] == 250 and unscanned_s < 0.5, (unscanned, unscanned_s)
    codes = sorted(r[0][0] for r in results.values())
    assert codes == [250, 250, 250], results
    # Two scans ran at once (max_concurrent = 2), each about 2 s; the third
    # waited for a slot: about two scans' time.
    took = sorted(r[1] for r in results.values())
    assert took[1] < 3.5, results
    assert took[2] > 3.5, results
    shutil.rmtree(where, ignore_errors=True)
