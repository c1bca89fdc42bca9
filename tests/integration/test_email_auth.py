"""Email authentication end to end: a private unbound serves the SPF,
DKIM key and DMARC records of the test domains, ringpost's own resolver
asks it, and the verdicts reach the client (550 5.7.23 for an SPF fail at
MAIL FROM, 550 5.7.1 for a DMARC p=reject failure at the final dot) or the
delivered copy (one Authentication-Results field with authserv-id mx.test,
above the stored message). Messages signed by OpenDKIM verify as
dkim=pass, a tampered copy as dkim=fail; an ARC seal by dkimpy's arcsign
as arc=pass, a tampered copy as arc=fail; ringpost's own signature
([[dkim_sign]]) on the copy smtp-sink received is verified by OpenDKIM."""

import itertools
import re
import shutil
import smtplib
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import Unbound, missing_tool

OPENDKIM = Path("/usr/sbin/opendkim")
GENKEY = Path("/usr/sbin/opendkim-genkey")


def need_opendkim():
    if not (OPENDKIM.exists() and GENKEY.exists()):
        missing_tool("opendkim and opendkim-tools are not installed (tests/run installs them)")


class TxtUnbound(Unbound):
    """conftest's unbound, with each local-data line in single quotes, as
    unbound wants records whose TXT text is in double quotes."""

    def __init__(self, workdir: Path, zone: str, records):
        super().__init__(workdir, zone, records, quote="'")


def dkim_key(directory, domain, selector):
    """opendkim-genkey's 2048-bit RSA key: (private key path, TXT text split
    in strings of at most 255 octets)."""
    subprocess.run([str(GENKEY), "-b", "2048", "-d", domain, "-s", selector, "-D", str(directory)], check=True)
    txt = (directory / f"{selector}.txt").read_text()
    p = re.sub(r"\s+", "", "".join(re.findall(r'"([^"]*)"', txt)))
    record = p.replace("h=sha256;", "")
    parts = [record[i:i + 200] for i in range(0, len(record), 200)]
    return directory / f"{selector}.private", " ".join(f'"{part}"' for part in parts), record


def private_dir():
    """A directory only root reads: opendkim refuses configuration and
    key files others could change."""
    directory = Path(tempfile.mkdtemp(prefix="ringpost-dkim-"))
    directory.chmod(0o700)
    return directory


def opendkim(directory, conf_lines, message: bytes):
    """opendkim in test mode (-t) over `message`: its output."""
    conf = directory / f"opendkim-{abs(hash(message)) % 100000}.conf"
    conf.write_text("\n".join(conf_lines + ["Syslog no", "UserID root"]) + "\n")
    msg = directory / "message.eml"
    msg.write_bytes(message)
    done = subprocess.run([str(OPENDKIM), "-x", str(conf), "-t", str(msg)], capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


def opendkim_sign(directory, key, domain, selector, message: bytes) -> bytes:
    """`message` with OpenDKIM's DKIM-Signature above it."""
    out = opendkim(directory, [f"Domain {domain}", f"Selector {selector}", f"KeyFile {key}", "Mode s",
                               "SignatureAlgorithm rsa-sha256", "Canonicalization relaxed/relaxed",
                               "RequireSafeKeys no"], message)
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("DKIM-Signature:"))
    header = [lines[start]] + list(itertools.takewhile(lambda line: line[:1] in ("\t", " "), lines[start + 1:]))
    return ("\r\n".join(header) + "\r\n").encode() + message


def message(from_addr, subject, body="Hello, Bob.", extra=""):
    return (f"From: Alice <{from_addr}>\r\nTo: <rcpt@far.test>\r\nSubject: {subject}\r\n"
            f"Date: Mon, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{subject}@client.test>\r\n{extra}"
            f"\r\n{body}\r\n").encode()


def send(rp, sender, content):
    """(reply to MAIL, reply to the final dot or None)."""
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=60) as client:
        client.ehlo("client.test")
        mail = client.mail(sender)
        if mail[0] != 250:
            return mail, None
        assert client.rcpt("rcpt@far.test")[0] == 250
        return mail, client.data(content)


def delivered(sink, subject):
    return sink.wait_message(f"Subject: {subject}".encode())[0]


def header_fields(raw: bytes):
    """The unfolded header fields of a dumped message."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode(errors="replace")
    head = re.sub(r"\r?\n[ \t]+", " ", head)
    return [line for line in head.splitlines() if line]


def our_results(raw: bytes):
    return [f for f in header_fields(raw) if f.lower().startswith("authentication-results: mx.test;")]


@pytest.fixture
def world(tmp_path, smtp_sink):
    """DNS for the test domains, a sink, and OpenDKIM's keys."""
    need_opendkim()
    keys = private_dir()
    sign_key, sign_txt, sign_record = dkim_key(keys, "sign.test", "s1")
    (keys / "out").mkdir()
    out_key, out_txt, out_record = dkim_key(keys / "out", "out.test", "rp")
    (keys / "arc").mkdir()
    arc_key, arc_txt, _ = dkim_key(keys / "arc", "fwd.test", "arc")
    records = [
        'pass.test. 300 IN TXT "v=spf1 ip4:127.0.0.1 -all"',
        'fail.test. 300 IN TXT "v=spf1 ip4:192.0.2.1 -all"',
        'sign.test. 300 IN TXT "v=spf1 ip4:192.0.2.1 -all"',
        f"s1._domainkey.sign.test. 300 IN TXT {sign_txt}",
        '_dmarc.sign.test. 300 IN TXT "v=DMARC1; p=reject"',
        '_dmarc.strict.test. 300 IN TXT "v=DMARC1; p=reject"',
        f"rp._domainkey.out.test. 300 IN TXT {out_txt}",
        f"arc._domainkey.fwd.test. 300 IN TXT {arc_txt}",
    ]
    dns = TxtUnbound(tmp_path / "dns", "test", records)
    sink = smtp_sink()
    yield {"dns": dns, "sink": sink, "keys": keys, "sign_key": sign_key, "out_key": out_key, "arc_key": arc_key,
           "sign_record": sign_record, "out_record": out_record}
    dns.stop()
    shutil.rmtree(keys, ignore_errors=True)


def settings(world, spf="reject_fail", dmarc="enforce", extra=None):
    s = {
        "dns.servers": f'["127.0.0.1:{world["dns"].port}"]',
        "delivery.smarthost": f'"127.0.0.1:{world["sink"].port}"',
        "email_auth.spf": f'"{spf}"',
        "email_auth.dmarc": f'"{dmarc}"',
    }
    s.update(extra or {})
    return s


def test_spf_fail_is_refused_at_mail_and_a_pass_is_recorded_once(ringpost, world):
    rp = ringpost(settings(world))
    mail, _ = send(rp, "someone@fail.test", message("someone@fail.test", "spf-fail"))
    assert mail[0] == 550, mail
    assert mail[1].startswith(b"5.7.23 "), mail
    # A forged verdict in our name is removed; another host's is kept.
    forged = "Authentication-Results: mx.test; spf=pass smtp.mailfrom=x@fail.test\r\n" \
             "Authentication-Results: other.test; dkim=pass\r\n"
    mail, data = send(rp, "someone@pass.test", message("someone@pass.test", "spf-pass", extra=forged))
    assert mail[0] == 250 and data[0] == 250, (mail, data)
    raw = delivered(world["sink"], "spf-pass")
    ours = our_results(raw)
    assert len(ours) == 1, header_fields(raw)
    assert "spf=pass" in ours[0] and "smtp.mailfrom=someone@pass.test" in ours[0], ours
    assert "dkim=none" in ours[0], ours
    assert any(f.startswith("Authentication-Results: other.test;") for f in header_fields(raw))
    fields = header_fields(raw)
    assert fields.index(ours[0]) < next(i for i, f in enumerate(fields) if f.startswith("Received: from client.test")), \
        "added above the stored message"


def test_an_opendkim_signature_passes_and_a_tampered_copy_fails(ringpost, world):
    rp = ringpost(settings(world, spf="tag", dmarc="tag"))
    signed = opendkim_sign(world["keys"], world["sign_key"], "sign.test", "s1",
                           message("alice@sign.test", "dkim-good"))
    mail, data = send(rp, "alice@sign.test", signed)
    assert data[0] == 250, data
    ours = our_results(delivered(world["sink"], "dkim-good"))
    assert len(ours) == 1, ours
    assert "dkim=pass header.d=sign.test header.s=s1" in ours[0], ours
    # SPF fails (192.0.2.1 only) but DKIM passes aligned: DMARC passes.
    assert "spf=fail" in ours[0] and "dmarc=pass" in ours[0], ours

    tampered = opendkim_sign(world["keys"], world["sign_key"], "sign.test", "s1",
                             message("alice@sign.test", "dkim-bad")).replace(b"Hello, Bob.", b"Hello, Eve.")
    mail, data = send(rp, "alice@sign.test", tampered)
    assert data[0] == 250, data
    ours = our_results(delivered(world["sink"], "dkim-bad"))
    assert "dkim=fail" in ours[0], ours
    # Neither SPF nor DKIM passed for sign.test (p=reject): tagged only.
    assert "dmarc=fail header.from=sign.test policy.dmarc=reject" in ours[0], ours


def test_dmarc_reject_is_enforced_or_tagged(ringpost, world):
    rp = ringpost(settings(world, spf="tag", dmarc="enforce"))
    # SPF passes for pass.test, which is not strict.test: not aligned.
    mail, data = send(rp, "someone@pass.test", message("alice@strict.test", "dmarc-enforced"))
    assert mail[0] == 250, mail
    assert data[0] == 550, data
    assert data[1].startswith(b"5.7.1 "), data
    assert "p=reject" in data[1].decode()
    rp_tag = ringpost(settings(world, spf="tag", dmarc="tag"))
    mail, data = send(rp_tag, "someone@pass.test", message("alice@strict.test", "dmarc-tagged"))
    assert data[0] == 250, data
    ours = our_results(delivered(world["sink"], "dmarc-tagged"))
    assert "dmarc=fail header.from=strict.test policy.dmarc=reject" in ours[0], ours
    assert not [m for m in world["sink"].messages() if b"dmarc-enforced" in m]


def test_ringposts_own_signature_verifies_with_opendkim(ringpost, world):
    key = world["out_key"]
    table = f'[{{domain = "out.test", selector = "rp", key = "{key}"}}]'
    rp = ringpost(settings(world, spf="tag", dmarc="tag", extra={"dkim_sign": table}))
    mail, data = send(rp, "someone@pass.test", message("bob@out.test", "signed-here"))
    assert data[0] == 250, data
    raw = delivered(world["sink"], "signed-here")
    fields = header_fields(raw)
    signatures = [f for f in fields if f.startswith("DKIM-Signature:")]
    assert len(signatures) == 1, fields
    assert "d=out.test" in signatures[0] and "s=rp" in signatures[0], signatures
    keys_file = world["keys"] / "test-keys"
    keys_file.write_text(f"rp._domainkey.out.test {world['out_record']}\n")
    out = opendkim(world["keys"], ["Mode v", f"TestPublicKeys {keys_file}"], raw)
    assert "verification (s=rp, d=out.test" in out and "succeeded" in out, out
    # The same copy changed by a byte no longer verifies.
    out = opendkim(world["keys"], ["Mode v", f"TestPublicKeys {keys_file}"], raw.replace(b"Hello, Bob.", b"Hello, Eve."))
    assert "failed" in out, out


ARCSIGN = Path("/usr/bin/arcsign")


def test_an_arc_seal_by_dkimpy_passes_and_a_tampered_copy_fails(ringpost, world):
    """A forwarder (dkimpy's arcsign, Debian's python3-dkim) seals the
    message it authenticated; ringpost verifies the chain."""
    if not ARCSIGN.exists():
        missing_tool("arcsign (python3-dkim) is not installed (tests/run installs it)")
    arc_key = world["arc_key"]
    rp = ringpost(settings(world, spf="tag", dmarc="tag"))

    def sealed(subject):
        verdict = "Authentication-Results: fwd.test; spf=pass smtp.mailfrom=alice@pass.test\r\n"
        done = subprocess.run([str(ARCSIGN), "arc", "fwd.test", str(arc_key), "fwd.test"],
                              input=message("alice@pass.test", subject, extra=verdict), capture_output=True, timeout=60)
        assert done.returncode == 0 and done.stdout.startswith(b"ARC-Seal:"), done.stderr[-2000:]
        return done.stdout

    mail, data = send(rp, "alice@pass.test", sealed("arc-good"))
    assert data[0] == 250, data
    ours = our_results(delivered(world["sink"], "arc-good"))
    assert len(ours) == 1 and "arc=pass" in ours[0], ours
    mail, data = send(rp, "alice@pass.test", sealed("arc-bad").replace(b"Hello, Bob.", b"Hello, Eve."))
    assert data[0] == 250, data
    ours = our_results(delivered(world["sink"], "arc-bad"))
    assert len(ours) == 1 and "arc=fail" in ours[0], ours


def test_ringposts_ed25519_signature_verifies_with_opendkim(ringpost, world, tmp_path):
    """RFC 8463: an Ed25519 key from openssl, the record's p= the raw
    32-octet public key."""
    key = tmp_path / "ed25519.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key)], check=True)
    spki = subprocess.run(["openssl", "pkey", "-in", str(key), "-pubout", "-outform", "DER"],
                          check=True, capture_output=True).stdout
    import base64
    record = f"v=DKIM1; k=ed25519; p={base64.b64encode(spki[-32:]).decode()}"
    table = f'[{{domain = "out.test", selector = "ed", key = "{key}"}}]'
    rp = ringpost(settings(world, spf="tag", dmarc="tag", extra={"dkim_sign": table}))
    mail, data = send(rp, "someone@pass.test", message("bob@out.test", "signed-ed25519"))
    assert data[0] == 250, data
    raw = delivered(world["sink"], "signed-ed25519")
    signatures = [f for f in header_fields(raw) if f.startswith("DKIM-Signature:")]
    assert len(signatures) == 1 and "a=ed25519-sha256" in signatures[0], signatures
    keys_file = world["keys"] / "test-keys-ed"
    keys_file.write_text(f"ed._domainkey.out.test {record}\n")
    out = opendkim(world["keys"], ["Mode v", f"TestPublicKeys {keys_file}"], raw)
    assert "verification (s=ed, d=out.test" in out and "succeeded" in out, out
    out = opendkim(world["keys"], ["Mode v", f"TestPublicKeys {keys_file}"], raw.replace(b"Hello, Bob.", b"Hello, Eve."))
    assert "failed" in out, out
