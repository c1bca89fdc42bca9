"""The private spamd and clamd of the `spamd` and `clamd` fixtures answer
as ringpost's scanner clients (src/scan/spamd.rs, src/scan/clamd.rs)
expect: SPAMC/1.5 SYMBOLS replies with the Spam header and the rule names
after a Content-length, zINSTREAM replies ending in NUL. Spoken to with
tiny clients here, so a broken fixture shows up before any test through
ringpost uses it."""

import socket
import struct

from conftest import Clamd, EICAR, EICAR_NAME, GTUBE


def connect(address):
    """A socket to "host:port" or "unix:/path"."""
    if address.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(20)
        s.connect(address[len("unix:"):])
        return s
    host, port = address.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=20)


def read_all(s, limit=65536):
    data = b""
    while len(data) <= limit:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def spamc(address, message, user=None):
    """SYMBOLS over SPAMC/1.5: (status line, headers, body) of the reply."""
    head = b"SYMBOLS SPAMC/1.5\r\nContent-length: %d\r\n" % len(message)
    if user:
        head += b"User: %s\r\n" % user.encode()
    with connect(address) as s:
        s.sendall(head + b"\r\n" + message)
        reply = read_all(s)
    head, _, body = reply.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return status, headers, body


def instream(address, chunks):
    """zINSTREAM: each chunk framed by its big-endian length, then zero."""
    with connect(address) as s:
        try:
            s.sendall(b"zINSTREAM\0")
            for chunk in chunks:
                s.sendall(struct.pack(">I", len(chunk)) + chunk)
            s.sendall(struct.pack(">I", 0))
        except (BrokenPipeError, ConnectionResetError):
            pass  # clamd stopped reading (a size limit): its answer is still there
        return read_all(s)


HAM = (b"Date: Mon, 1 Dec 2025 10:00:00 +0000\r\nFrom: Alice <alice@example.org>\r\nTo: bob@example.com\r\n"
       b"Subject: lunch\r\nMessage-ID: <lunch.1@example.org>\r\n\r\nShall we meet at noon by the fountain?\r\n")
SPAM = (b"From: a@example.org\r\nTo: b@example.com\r\nSubject: test\r\n\r\n" + GTUBE + b"\r\n")


def test_spamd_scores_gtube_as_spam(spamd):
    status, headers, body = spamc(spamd.address, SPAM)
    assert status == "SPAMD/1.1 0 EX_OK"
    flag, scores = headers["spam"].split(";")
    score, required = (float(x) for x in scores.split("/"))
    assert flag.strip() == "True" and score >= 1000 and required == 5.0, headers
    assert int(headers["content-length"]) == len(body)
    assert b"GTUBE" in body.split(b","), body


def test_spamd_passes_a_plain_message(spamd):
    status, headers, body = spamc(spamd.address, HAM, user="nobody")
    assert status == "SPAMD/1.1 0 EX_OK"
    flag, scores = headers["spam"].split(";")
    assert flag.strip() == "False" and float(scores.split("/")[0]) < 5.0, headers
    assert int(headers["content-length"]) == len(body)
    assert b"\r" not in body and b"\n" not in body


def test_spamd_answers_on_its_unix_socket(spamd):
    status, headers, _ = spamc(spamd.unix_address, SPAM)
    assert status == "SPAMD/1.1 0 EX_OK" and headers["spam"].startswith("True ;")


def test_spamd_refuses_a_short_message_with_an_error_status(spamd):
    with connect(spamd.address) as s:
        s.sendall(b"SYMBOLS SPAMC/1.5\r\nContent-length: 100\r\n\r\nshort")
        s.shutdown(socket.SHUT_WR)
        reply = read_all(s)
    assert reply.startswith(b"SPAMD/1.0 76 Bad header line: (Content-Length mismatch"), reply
    assert reply.endswith(b"\r\n") and reply.count(b"\r\n") == 1


def test_clamd_finds_eicar_across_chunks(clamd):
    # The test string split between two chunks, after a chunk of text.
    message = b"Subject: x\r\n\r\n" + b"a" * 70000 + b"\r\n" + EICAR + b"\r\n"
    cut = 70000 + len(EICAR) // 2
    reply = instream(clamd.address, [message[:65536], message[65536:cut], message[cut:]])
    assert reply == f"stream: {EICAR_NAME} FOUND\0".encode()


def test_clamd_passes_a_clean_message(clamd):
    assert instream(clamd.address, [HAM]) == b"stream: OK\0"
    assert instream(clamd.unix_address, [HAM]) == b"stream: OK\0"
    assert instream(clamd.unix_address, [SPAM.replace(GTUBE, EICAR)]) == f"stream: {EICAR_NAME} FOUND\0".encode()


def test_clamd_answers_past_its_stream_limit():
    limited = Clamd(conf=["StreamMaxLength 1M"])
    try:
        reply = instream(limited.address, [b"x" * 65536] * 20)
    finally:
        limited.stop()
    assert reply == b"INSTREAM size limit exceeded. ERROR\0"
