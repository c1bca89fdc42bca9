"""The private rspamd of the `rspamd` fixture answers as ringpost's rspamd
client (src/scan/rspamd.rs) expects: a POST to /checkv2 with the envelope
in headers gets a 200 and a JSON body with the action, the score and the
required score; GTUBE gets "reject". Spoken to with http.client here, so
a broken fixture shows up before any test through ringpost uses it."""

import http.client
import json
import socket

from conftest import GTUBE

GTUBE_MESSAGE = (b"Subject: test\r\nFrom: a@example.org\r\nTo: b@example.org\r\n\r\n" + GTUBE + b"\r\n")
CLEAN_MESSAGE = (b"Subject: hello\r\nFrom: Alice <a@example.org>\r\nTo: Bob <b@example.org>\r\n"
                 b"Date: Tue, 01 Dec 2026 12:00:00 +0000\r\nMessage-ID: <clean.1@example.org>\r\n\r\n"
                 b"Just a few words between friends.\r\n")
ENVELOPE = {"From": "sender@example.org", "Rcpt": "rcpt@example.com", "IP": "127.0.0.1",
            "Helo": "client.test", "Queue-Id": "00000000000000A1", "Connection": "close"}


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=30)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self.path)


def checkv2(address, message):
    """POST /checkv2: the status and the decoded JSON body."""
    if address.startswith("unix:"):
        conn = UnixHTTPConnection(address[len("unix:"):])
    else:
        host, port = address.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", "/checkv2", body=message, headers=ENVELOPE)
        reply = conn.getresponse()
        body = reply.read(256 * 1024)
        assert reply.getheader("Content-Length") == str(len(body))
        return reply.status, json.loads(body)
    finally:
        conn.close()


def test_rspamd_rejects_gtube(rspamd):
    status, report = checkv2(rspamd.address, GTUBE_MESSAGE)
    assert status == 200, report
    assert report["action"] == "reject", report
    assert "GTUBE" in report["symbols"], report
    assert isinstance(report["score"], float) and isinstance(report["required_score"], float)


def test_rspamd_rejects_gtube_over_its_unix_socket(rspamd):
    status, report = checkv2(rspamd.unix_address, GTUBE_MESSAGE)
    assert status == 200 and report["action"] == "reject", report


def test_rspamd_lets_a_plain_message_through(rspamd):
    status, report = checkv2(rspamd.address, CLEAN_MESSAGE)
    assert status == 200, report
    assert report["action"] == "no action", report
    assert report["score"] < report["required_score"]
