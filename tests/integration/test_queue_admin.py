"""Queue administration on a running server, through the control socket:
hold (durable across a restart), release, flush, delete (no bounce),
bounce (a DSN to the sender), the --all forms, delivery.hold_all, the
mailq alias, and the errors for an unknown id and a stopped server.

Mail is deferred by a next hop that refuses connections (a closed port);
an smtp-sink started on that port later accepts it."""

import email
import re
import smtplib
import subprocess
import time

from conftest import free_port, wait_for


def send(port, count, sender="alice@example.org", rcpt="someone@example.net", subject="admin"):
    ids = []
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.ehlo("admin.test")
        for i in range(count):
            s.mail(sender)
            assert s.rcpt(rcpt)[0] == 250
            code, text = s.data(f"Subject: {subject} {i}\r\n\r\nbody {i}\r\n".encode())
            assert code == 250, text
            ids.append(re.search(rb"queued as ([0-9A-F]{16})", text).group(1).decode())
    return ids


def queue_cmd(rp, *args):
    return subprocess.run(rp.args("queue") + list(args), capture_output=True, text=True)


def ok(rp, *args):
    done = queue_cmd(rp, *args)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def attempts(rp, queue_id):
    """Delivery attempts logged for a message (one line per recipient)."""
    return sum(1 for line in rp.log_text().splitlines()
               if "event=delivery " in line and f" id={queue_id} " in line)


def listing(rp):
    return ok(rp, "list")


def bounces(rp, user="sender"):
    return [email.message_from_bytes(p.read_bytes()) for p in rp.maildir_files(user)]


def test_hold_survives_a_restart_and_release_then_flush_delivers(ringpost, smtp_sink):
    port = free_port()
    rp = ringpost({"delivery.smarthost": f"127.0.0.1:{port}"})
    held, other = send(rp.port, 2)
    wait_for(lambda: attempts(rp, held) >= 1 and attempts(rp, other) >= 1, what="both deferred once")
    assert f"{held} held" in ok(rp, "hold", held)
    assert "already held" in ok(rp, "hold", held)
    assert f"{held}!" in listing(rp), "the listing marks a held message"
    before, other_before = attempts(rp, held), attempts(rp, other)
    time.sleep(4)  # past both retry lags (1s, 2s)
    assert attempts(rp, held) == before, "a held message is not attempted"
    assert attempts(rp, other) > other_before, "the other one is still retried"
    assert "event=queue_admin op=hold id=" + held in rp.log_text()

    # Restart: the hold is a record in the log.
    assert rp.stop() == 0
    assert f"{held}!" in listing(rp), "held on the stopped spool"
    assert "held: yes" in ok(rp, "show", held)
    rp.start()
    time.sleep(4)
    assert attempts(rp, held) == before, "still held after the restart"
    refused = queue_cmd(rp, "flush", held)
    assert refused.returncode == 1 and "is held; release it first" in refused.stderr

    sink = smtp_sink(port=port)
    sink.wait_message(other.encode())
    assert f"{held} released" in ok(rp, "release", held)
    assert "not held" in ok(rp, "release", held)
    ok(rp, "flush", held)
    sink.wait_message(held.encode(), timeout_s=10)
    wait_for(lambda: "status=delivered" in rp.log_text() and f" id={held} " in rp.log_text()
             and attempts(rp, held) > before, what="the released message delivered")
    wait_for(lambda: "Mail queue is empty" in listing(rp), what="the queue to empty")


def test_delete_removes_without_bounce_and_bounce_sends_a_dsn(ringpost):
    port = free_port()
    rp = ringpost({"delivery.smarthost": f"127.0.0.1:{port}"})
    deleted, bounced = send(rp.port, 2, sender="sender@localhost")
    wait_for(lambda: attempts(rp, deleted) >= 1 and attempts(rp, bounced) >= 1, what="both deferred")
    assert f"{deleted} deleted" in ok(rp, "delete", deleted)
    assert f"event=deleted id={deleted}" in rp.log_text()
    assert deleted not in listing(rp)
    gone = queue_cmd(rp, "delete", deleted)
    assert gone.returncode == 1 and f"no message {deleted} in the queue" in gone.stderr

    assert f"{bounced} bounced" in ok(rp, "bounce", bounced)
    wait_for(lambda: bounces(rp), what="the DSN delivered to the sender")
    time.sleep(1)
    dsns = bounces(rp)
    assert len(dsns) == 1, "one DSN, for the bounced message only"
    assert "MAILER-DAEMON" in dsns[0]["From"].upper()
    text = dsns[0].as_string()
    assert "someone@example.net" in text and "returned to the sender by the postmaster" in text
    assert f"original={bounced}" in rp.log_text()
    assert f"original={deleted}" not in rp.log_text()
    wait_for(lambda: "Mail queue is empty" in listing(rp), what="both gone")

    # After a restart the deleted message stays gone. (The listing reads
    # the spool while the server may be collecting the dead segments: it
    # is waited for, and recovery's own count is the check.)
    assert rp.stop() == 0
    rp.start()
    wait_for(lambda: rp.log_text().count("event=queue_recovered") >= 4, what="both shards recovered")
    recovered = [line for line in rp.log_text().splitlines() if "event=queue_recovered" in line][-2:]
    assert all(" live=0 " in line for line in recovered), recovered
    wait_for(lambda: "Mail queue is empty" in listing(rp), what="the listing to agree")

    # Errors: an id no message has, text that is no id, bounce --all.
    unknown = queue_cmd(rp, "hold", "0000000000000000")
    assert unknown.returncode == 1 and "no message 0000000000000000 in the queue" in unknown.stderr
    not_id = queue_cmd(rp, "delete", "xyz")
    assert not_id.returncode == 1 and "not a queue id" in not_id.stderr
    no_all = subprocess.run(rp.args("queue") + ["bounce", "--all"], capture_output=True, text=True)
    assert no_all.returncode != 0

    # The server is not running: the command says so.
    assert rp.stop() == 0
    stopped = queue_cmd(rp, "hold", "--all")
    assert stopped.returncode == 1 and "is the server running?" in stopped.stderr


def test_all_variants_act_on_every_shard(ringpost, smtp_sink):
    port = free_port()
    rp = ringpost({"delivery.smarthost": f"127.0.0.1:{port}"})
    ids = send(rp.port, 4) + send(rp.port, 4)
    wait_for(lambda: all(attempts(rp, i) >= 1 for i in ids), what="all deferred once")
    out = ok(rp, "hold", "--all")
    assert "held" in out and "error" not in out, out
    counts = {i: attempts(rp, i) for i in ids}
    time.sleep(4)
    assert {i: attempts(rp, i) for i in ids} == counts, "nothing attempted while all are held"
    assert all(f"{i}!" in listing(rp) for i in ids)

    sink = smtp_sink(port=port)
    assert "released" in ok(rp, "release", "--all")
    ok(rp, "flush", "--all")
    wait_for(lambda: all(any(i.encode() in m for m in sink.messages()) for i in ids), timeout_s=20,
             what="every released message delivered")
    wait_for(lambda: "Mail queue is empty" in listing(rp), what="the queue to empty")
    assert "no message" in ok(rp, "delete", "--all")

    # delete --all on deferred mail: gone, no bounce.
    sink.stop()
    more = send(rp.port, 3, sender="sender@localhost")
    wait_for(lambda: all(attempts(rp, i) >= 1 for i in more), what="deferred again")
    assert "deleted" in ok(rp, "delete", "--all")
    assert "Mail queue is empty" in listing(rp)
    time.sleep(1)
    assert bounces(rp) == []
    assert all(f"event=deleted id={i}" in rp.log_text() for i in more)


def test_hold_all_accepts_and_delivers_nothing_until_turned_off(ringpost, smtp_sink):
    sink = smtp_sink()
    rp = ringpost({"delivery.smarthost": f"127.0.0.1:{sink.port}", "delivery.hold_all": "true"})
    ids = send(rp.port, 5)
    time.sleep(3)
    assert sink.messages() == []
    assert "event=delivery " not in rp.log_text()
    assert "event=hold_all" in rp.log_text()
    mailq = subprocess.run(rp.args("mailq"), capture_output=True, text=True, check=True).stdout
    assert all(i in mailq for i in ids) and "5 messages" in mailq
    assert rp.stop() == 0
    rp.start()  # still hold_all: recovered, not delivered
    time.sleep(2)
    assert sink.messages() == []
    assert rp.stop() == 0
    rp.settings["delivery.hold_all"] = "false"
    rp.start()
    wait_for(lambda: len(sink.messages()) >= 5, timeout_s=20, what="delivered once hold_all is off")
    wait_for(lambda: "Mail queue is empty" in listing(rp), what="the queue to empty")
