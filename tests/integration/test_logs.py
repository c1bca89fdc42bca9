"""Log lines as log shippers take them: `log.format = "json"` (and the
`--log-format json` flag) gives one JSON object a line with the queue id on
every line about the message; `log.syslog = true` sends the lines to a
syslog socket with facility mail."""

import json
import smtplib
import socket
import subprocess
import threading

from conftest import Ringpost, wait_for


def send(rp, to="bob@localhost", subject="logged"):
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=30) as c:
        c.sendmail("alice@example.org", [to], f"Subject: {subject}\r\n\r\nbody\r\n")


def test_json_lines_carry_the_queue_id(ringpost):
    rp = ringpost({"log.format": '"json"'})
    send(rp)
    wait_for(lambda: rp.maildir_files("bob"), what="the delivery")
    wait_for(lambda: '"event":"delivery"' in rp.log_text(), what="the delivery line")
    events = [json.loads(line) for line in rp.log_text().splitlines() if line.strip()]
    queued = next(e for e in events if e["event"] == "queued")
    assert queued["from"] == "<alice@example.org>" and queued["to"] == "bob@localhost", queued
    delivery = [e for e in events if e["event"] == "delivery"]
    assert delivery and all(e["id"] == queued["id"] for e in delivery), delivery
    assert all(isinstance(v, str) for e in events for v in e.values())


def test_the_log_format_flag(tmp_path):
    rp = Ringpost(tmp_path, {})
    args = rp.args()
    rp.args = lambda command="serve": args[:1] + ["--log-format", "json"] + args[1:]
    rp.start()
    try:
        send(rp)
        wait_for(lambda: '"event":"queued"' in rp.log_text(), what="a JSON queued line")
    finally:
        rp.stop()
    assert subprocess.run(args[:1] + ["--log-format", "xml", "check-config"], capture_output=True).returncode == 2


def test_syslog_gets_the_lines_with_facility_mail(ringpost, tmp_path):
    path = tmp_path / "log.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(0.5)
    received = []
    done = threading.Event()

    def receive():
        while not done.is_set():
            try:
                received.append(server.recv(65536).decode(errors="replace"))
            except socket.timeout:
                continue
            except OSError:
                return

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    try:
        rp = ringpost({"log.syslog": "true", "log.syslog_socket": f'"{path}"'})
        send(rp)
        wait_for(lambda: any("event=queued" in d for d in received), what="a syslog datagram")
        line = next(d for d in received if "event=queued" in d)
        assert line.startswith("<22>ringpost["), line
        assert "event=queued" not in rp.log_text(), "not on stderr as well"
    finally:
        done.set()
        thread.join(timeout=5)
        server.close()
