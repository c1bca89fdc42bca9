"""Users' Sieve scripts at the SMTP conversation, end to end: a recipient
valid for one sender only (550 at RCPT, nothing bounced), `user+detail`
valid for listed details only, a header-dependent `ereject` refused at the
final dot, the second content-dependent recipient of a transaction told
452, `fileinto` into a Maildir++ folder, `redirect` to another user, and
vacation answering a sender once. Python's smtplib is the client;
smtp-sink (Postfix) receives what goes out (the vacation responses)."""

import smtplib

from conftest import wait_for

SCRIPTS = {
    "bob": """require ["envelope", "reject"];
if not envelope :is "from" "friend@example.org" {
    reject "Bob takes mail from friends only";
}
""",
    "carol": """require ["envelope", "subaddress", "ereject"];
if envelope :detail "to" ["lists", "shop"] {
    keep;
} elsif envelope :matches "to" "carol+*" {
    ereject "No such address";
}
""",
    "dave": """require "ereject";
if header :contains "subject" "buy now" {
    ereject "No adverts, thank you";
}
""",
    "erin": """require "ereject";
if header :contains "subject" "lottery" { ereject "Not interested"; }
""",
    "frank": """require "fileinto";
if header :contains "list-id" "rust-users" {
    fileinto "Lists/rust";
}
""",
    "gina": """redirect "henry@localhost";
""",
    "ivan": """require "vacation";
vacation :days 7 :subject "Away until Monday" "I am away; your mail will wait.";
""",
}


def start(ringpost, smtp_sink, tmp_path):
    scripts = tmp_path / "sieve"
    scripts.mkdir()
    for user, text in SCRIPTS.items():
        (scripts / f"{user}.sieve").write_text(text)
    sink = smtp_sink()
    rp = ringpost({
        "sieve.scripts": f'"{scripts}/{{user}}.sieve"',
        "delivery.smarthost": f'"127.0.0.1:{sink.port}"',
    })
    return rp, sink


def message(subject, to="x@localhost", extra=""):
    return (f"From: <alice@example.org>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '-')}@example.org>\r\n{extra}\r\nHello.\r\n")


def client(rp, sender):
    c = smtplib.SMTP("127.0.0.1", rp.port, timeout=30)
    c.ehlo("client.test")
    assert c.mail(sender)[0] == 250
    return c


def test_envelope_decisions_at_rcpt(ringpost, smtp_sink, tmp_path):
    rp, sink = start(ringpost, smtp_sink, tmp_path)
    with client(rp, "stranger@example.net") as c:
        code, text = c.rcpt("bob@localhost")
        assert code == 550 and text == b"5.7.1 Bob takes mail from friends only", text
        assert c.rcpt("carol+shop@localhost")[0] == 250
        code, text = c.rcpt("carol+other@localhost")
        assert code == 550 and text == b"5.7.1 No such address", text
        assert c.rcpt("carol@localhost")[0] == 250, "no detail: the script keeps"
        assert c.data(message("for carol").encode())[0] == 250
    with client(rp, "friend@example.org") as c:
        assert c.rcpt("bob@localhost")[0] == 250
        assert c.data(message("from a friend").encode())[0] == 250
    # Without routers a local part keeps its subaddress in local.maildir.
    wait_for(lambda: rp.maildir_files("carol") and rp.maildir_files("carol+shop") and rp.maildir_files("bob"),
             what="carol's and bob's mail")
    assert len(rp.maildir_files("bob")) == 1
    # Refused at RCPT: nothing was accepted for the stranger, so nothing bounced.
    log = rp.log_text()
    assert "event=bounce" not in log
    assert "event=sieve_refused" in log and "to=bob@localhost" in log


def test_content_decisions_at_the_final_dot(ringpost, smtp_sink, tmp_path):
    rp, sink = start(ringpost, smtp_sink, tmp_path)
    with client(rp, "alice@example.org") as c:
        assert c.rcpt("dave@localhost")[0] == 250
        # A second recipient whose script needs the content must wait.
        code, text = c.rcpt("erin@localhost")
        assert code == 452 and text.startswith(b"4.5.3 "), text
        # A recipient without a script rides along, and so does one whose
        # script needs the content but cannot refuse (no reject in it).
        assert c.rcpt("zed@localhost")[0] == 250
        assert c.rcpt("frank@localhost")[0] == 250
        code, text = c.data(message("buy now!").encode())
        assert code == 550 and text == b"5.7.1 No adverts, thank you", text
    with client(rp, "alice@example.org") as c:
        assert c.rcpt("dave@localhost")[0] == 250
        assert c.data(message("minutes").encode())[0] == 250
    with client(rp, "alice@example.org") as c:
        assert c.rcpt("erin@localhost")[0] == 250
        assert c.data(message("urgent").encode())[0] == 250
    wait_for(lambda: rp.maildir_files("dave") and rp.maildir_files("erin"), what="dave's and erin's mail")
    assert rp.maildir_files("zed") == [], "refused at the final dot for every recipient"
    assert rp.maildir_files("frank") == []
    assert b"Subject: minutes" in rp.maildir_files("dave")[0].read_bytes()


def test_fileinto_redirect_and_vacation(ringpost, smtp_sink, tmp_path):
    rp, sink = start(ringpost, smtp_sink, tmp_path)
    with client(rp, "alice@example.org") as c:
        assert c.rcpt("frank@localhost")[0] == 250
        assert c.data(message("release", extra="List-Id: Rust users <rust-users.example.org>\r\n").encode())[0] == 250
    folder = rp.mail / "frank" / "Maildir" / ".Lists.rust"
    wait_for(lambda: (folder / "new").is_dir() and list((folder / "new").iterdir()), what="frank's folder")
    assert (folder / "maildirfolder").exists()
    assert rp.maildir_files("frank") == [], "filed, not kept in the inbox"

    with client(rp, "alice@example.org") as c:
        assert c.rcpt("gina@localhost")[0] == 250
        assert c.data(message("forward me").encode())[0] == 250
    wait_for(lambda: rp.maildir_files("henry"), what="henry's redirected copy")
    assert b"Subject: forward me" in rp.maildir_files("henry")[0].read_bytes()
    assert b"Return-Path: <alice@example.org>" in rp.maildir_files("henry")[0].read_bytes(), "sender kept"
    assert rp.maildir_files("gina") == []

    for subject in ("first", "second"):
        with client(rp, "alice@example.org") as c:
            assert c.rcpt("ivan@localhost")[0] == 250
            assert c.data(message(subject, to="ivan@localhost").encode())[0] == 250
    # List mail gets no response (RFC 3834).
    with client(rp, "lister@example.org") as c:
        assert c.rcpt("ivan@localhost")[0] == 250
        assert c.data(message("digest", to="ivan@localhost", extra="Precedence: bulk\r\n").encode())[0] == 250
    wait_for(lambda: len(rp.maildir_files("ivan")) == 3, what="ivan's three messages")
    responses = sink.wait_message(b"Subject: Away until Monday")
    wait_for(lambda: "event=vacation_skipped" in rp.log_text() and rp.log_text().count("event=vacation_") >= 3,
             what="the vacation decisions")
    responses = [m for m in sink.messages() if b"Away until Monday" in m]
    assert len(responses) == 1, responses
    response = responses[0]
    assert b"Auto-Submitted: auto-replied" in response
    assert b"In-Reply-To: <first@example.org>" in response
    assert b"I am away; your mail will wait." in response
    log = rp.log_text()
    assert log.count("event=vacation_sent") == 1
    assert "answered within :days" in log


def test_scripts_from_a_sqlite_table_and_a_before_script(ringpost, tmp_path):
    import sqlite3
    db = tmp_path / "scripts.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE scripts (user TEXT PRIMARY KEY, script TEXT)")
        conn.execute("INSERT INTO scripts VALUES (?, ?)", ("kim@localhost", 'require "reject"; reject "Kim has left";'))
    before = tmp_path / "before.sieve"
    before.write_text('require "fileinto";\nif header :is "x-spam-flag" "YES" { fileinto "Junk"; }\n')
    rp = ringpost({
        "sieve.source": f'"sqlite:{db}"',
        "sieve.query": '"SELECT script FROM scripts WHERE user = ?1"',
        "sieve.before": f'"{before}"',
    })
    with client(rp, "alice@example.org") as c:
        code, text = c.rcpt("kim@localhost")
        assert code == 550 and text == b"5.7.1 Kim has left", text
        assert c.rcpt("lee@localhost")[0] == 250
        assert c.data(message("spam", extra="X-Spam-Flag: YES\r\n").encode())[0] == 250
    junk = rp.mail / "lee" / "Maildir" / ".Junk" / "new"
    wait_for(lambda: junk.is_dir() and list(junk.iterdir()), what="lee's Junk folder")
    assert rp.maildir_files("lee") == []


def test_a_before_script_that_does_not_compile_stops_the_start(tmp_path):
    import subprocess
    from conftest import Ringpost
    before = tmp_path / "before.sieve"
    before.write_text('if header :is "subject" "x" {\n  keep\n}\n')
    rp = Ringpost(tmp_path, {"sieve.before": f'"{before}"'})
    done = subprocess.run(rp.args(), capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert done.returncode != 0
    assert f"sieve.before {before}:2:3: missing ';'" in done.stderr, done.stderr
    done = subprocess.run(rp.args("check-config"), capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert done.returncode == 2 and f"{before}:2:3" in done.stderr, done.stderr
