"""`ringpost sieve test` against Dovecot Pigeonhole's `sieve-test` as the
reference: every script in tests/sieve/scripts over every message in
tests/sieve/messages, under two envelopes, must give the same canonical
action list (stored folders, redirects, discard, reject text, vacation sent
or not, runtime error). `ringpost sieve check` must report the right line
for the scripts with deliberate errors in tests/sieve/errors, which
Pigeonhole must refuse too.

sieve-test runs with a private configuration in a temporary directory; it
only prints what it would do, except for the vacation decision, which it
takes at execution time: for that it runs once more with -e (in a fresh
directory, so its duplicate memory is empty)."""

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import conftest
from conftest import RINGPOST

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "tests" / "sieve"
SCRIPTS = sorted((CORPUS / "scripts").glob("*.sieve"))
MESSAGES = sorted((CORPUS / "messages").glob("*.eml"))
ERRORS = sorted((CORPUS / "errors").glob("*.sieve"))
SIEVE_TEST = "/usr/bin/sieve-test"
ENVELOPES = [
    ("joe@example.com", "me@ex.org"),
    ("alice+dev@lists.example.org", "me+lists@ex.org"),
]


def require_tools():
    if not os.access(SIEVE_TEST, os.X_OK):
        pytest.fail(f"{SIEVE_TEST} is missing: install the Debian package dovecot-sieve (tests/run does)")
    if not RINGPOST.exists():
        pytest.fail(f"{RINGPOST} is missing: cargo build --profile {conftest.PROFILE} --bin ringpost")


class Pigeonhole:
    """A private configuration for sieve-test in a directory of its own."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="sieve-ref-", dir="/tmp"))
        os.chmod(self.dir, 0o777)
        conf = [f"mail_location = maildir:{self.dir}/Maildir"]
        if os.geteuid() == 0:
            # sieve-test refuses to run mail access as root.
            conf += ["mail_uid = nobody", "mail_gid = nogroup"]
        conf += ["plugin {", "  sieve_extensions = +vacation", "}"]
        (self.dir / "dovecot.conf").write_text("\n".join(conf) + "\n")

    def run(self, script, message, sender, recipient, execute=False):
        work = Path(tempfile.mkdtemp(dir=self.dir))
        os.chmod(work, 0o777)
        shutil.copy(script, work / "script.sieve")
        shutil.copy(message, work / "message.eml")
        for p in work.iterdir():
            os.chmod(p, 0o644)
        args = [SIEVE_TEST, "-c", str(self.dir / "dovecot.conf"), "-f", sender, "-a", recipient, "-r", recipient]
        if execute:
            args.append("-e")
            conf = work / "dovecot.conf"
            conf.write_text((self.dir / "dovecot.conf").read_text().replace(f"{self.dir}/Maildir", f"{work}/Maildir"))
            os.chmod(conf, 0o644)
            args[2] = str(conf)
        args += [str(work / "script.sieve"), str(work / "message.eml")]
        env = dict(os.environ, HOME=str(work))
        p = subprocess.run(args, capture_output=True, text=True, env=env, timeout=30)
        shutil.rmtree(work, ignore_errors=True)
        return p.returncode, p.stdout + p.stderr

    def actions(self, script, message, sender, recipient):
        rc, out = self.run(script, message, sender, recipient)
        if "final result: failed" in out:
            return ["error", "store INBOX"], out
        assert rc == 0, f"sieve-test failed ({rc}):\n{out}"
        acts = []
        for line in out.splitlines():
            m = re.match(r"^ \* (.*)$", line)
            if not m:
                continue
            a = m.group(1)
            if a.startswith("store message in folder: "):
                acts.append("store " + a[len("store message in folder: "):])
            elif a.startswith("redirect message to: "):
                acts.append("redirect " + a[len("redirect message to: "):].strip("<>"))
            elif a == "discard":
                acts.append("discard")
            elif a.startswith("reject message with reason: "):
                acts.append("reject " + a[len("reject message with reason: "):])
            elif a.startswith("send vacation message"):
                _, executed = self.run(script, message, sender, recipient, execute=True)
                if "sent vacation response" in executed:
                    acts.append("vacation yes")
                elif re.search(r"discard(ing|ed) vacation (response|reply)|not sending vacation response", executed):
                    acts.append("vacation no")
                else:
                    acts.append("vacation unknown: " + executed)
            else:
                acts.append("unknown " + a)
        return sorted(set(acts)), out

    def check(self, script):
        work = Path(tempfile.mkdtemp(dir=self.dir))
        os.chmod(work, 0o777)
        shutil.copy(script, work / "script.sieve")
        os.chmod(work / "script.sieve", 0o644)
        msg = work / "m.eml"
        msg.write_text("From: a@b.example\nSubject: x\n\nx\n")
        os.chmod(msg, 0o644)
        args = [SIEVE_TEST, "-c", str(self.dir / "dovecot.conf"), str(work / "script.sieve"), str(msg)]
        p = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, HOME=str(work)), timeout=30)
        shutil.rmtree(work, ignore_errors=True)
        return p.returncode, p.stdout + p.stderr

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def pigeonhole():
    require_tools()
    ph = Pigeonhole()
    yield ph
    ph.close()


def unquote(s):
    """The quoted string at the start of s (the CLI's format) and the rest."""
    assert s.startswith('"'), s
    out, i = [], 1
    while s[i] != '"':
        if s[i] == "\\":
            i += 1
            c = s[i]
            if c == "x":
                out.append(chr(int(s[i + 1:i + 3], 16)))
                i += 2
            else:
                out.append({"n": "\n", "r": "\r", "t": "\t"}.get(c, c))
        else:
            out.append(s[i])
        i += 1
    return "".join(out), s[i + 1:]


def ringpost_actions(script, message, sender, recipient):
    p = subprocess.run(
        [str(RINGPOST), "sieve", "test", "--sender", sender, "--recipient", recipient, str(script), str(message)],
        capture_output=True, text=True, timeout=30,
    )
    assert p.returncode == 0, f"ringpost sieve test failed ({p.returncode}): {p.stderr}"
    acts = []
    for line in p.stdout.splitlines():
        if line == "keep":
            acts.append("store INBOX")
        elif line == "discard":
            acts.append("discard")
        elif line.startswith("error: "):
            acts.append("error")
        elif line.startswith(("fileinto ", "redirect ")):
            verb, rest = line.split(" ", 1)
            rest = rest.removeprefix(":copy ")
            value, _ = unquote(rest)
            acts.append(("store " if verb == "fileinto" else "redirect ") + value)
        elif line.startswith(("reject ", "ereject ")):
            value, _ = unquote(line.split(" ", 1)[1])
            # sieve-test shows each line break of the reason as "??".
            acts.append("reject " + value.replace("\r\n", "\n").replace("\n", "??"))
        elif line.startswith("vacation skipped:"):
            acts.append("vacation no")
        elif line.startswith("vacation to "):
            acts.append("vacation yes")
        else:
            acts.append("unknown " + line)
    return sorted(set(acts)), p.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_against_pigeonhole(pigeonhole, script):
    assert MESSAGES, "no messages in tests/sieve/messages"
    failures = []
    for message in MESSAGES:
        for sender, recipient in ENVELOPES:
            want, ref_out = pigeonhole.actions(script, message, sender, recipient)
            got, our_out = ringpost_actions(script, message, sender, recipient)
            if want != got:
                failures.append(
                    f"{message.name} from {sender} to {recipient}:\n  sieve-test: {want}\n  ringpost:   {got}\n"
                    f"  --- sieve-test output:\n{ref_out}\n  --- ringpost output:\n{our_out}"
                )
    assert not failures, f"{script.name}: {len(failures)} case(s) differ\n" + "\n".join(failures)


def expected_line(script):
    m = re.search(r"^# error at line (\d+)", script.read_text(), re.M)
    assert m, f"{script.name} has no '# error at line N' comment"
    return int(m.group(1))


@pytest.mark.parametrize("script", ERRORS, ids=[s.stem for s in ERRORS])
def test_check_reports_line(pigeonhole, script):
    line = expected_line(script)
    p = subprocess.run([str(RINGPOST), "sieve", "check", str(script)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1, p.stdout + p.stderr
    m = re.match(rf"^{re.escape(str(script))}:(\d+):(\d+): .+", p.stderr)
    assert m, p.stderr
    assert int(m.group(1)) == line, p.stderr
    rc, out = pigeonhole.check(script)
    assert rc != 0, f"sieve-test accepted {script.name}:\n{out}"
    # For an unterminated string or comment ringpost names the line where
    # it starts, and Pigeonhole the end of the script "before end of …
    # started at line N".
    lines = [int(n) for n in re.findall(r"line (\d+): error|started at line (\d+)", out) for n in n if n]
    assert line in lines, f"sieve-test reports lines {lines}:\n{out}"


def test_check_ok():
    require_tools()
    for script in SCRIPTS:
        p = subprocess.run([str(RINGPOST), "sieve", "check", str(script)], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0 and p.stdout == f"{script}: OK\n", p.stdout + p.stderr


def test_envelope_only():
    """At RCPT time: a decision from the envelope alone, or "needs content"."""
    require_tools()
    tmp = Path(tempfile.mkdtemp())
    try:
        script = tmp / "s.sieve"
        script.write_text(
            'require ["envelope", "reject", "fileinto"];\n'
            'if envelope :is "from" "spammer@bad.example" { reject "go away"; }\n'
            'elsif header :contains "subject" "x" { fileinto "x"; }\n'
        )

        def run(sender):
            p = subprocess.run(
                [str(RINGPOST), "sieve", "test", "--envelope-only", "--sender", sender, "--recipient", "me@ex.org",
                 str(script)],
                capture_output=True, text=True, timeout=30,
            )
            assert p.returncode == 0, p.stderr
            return p.stdout

        assert run("spammer@bad.example") == 'reject "go away"\n'
        assert run("friend@good.example") == "needs content\n"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# Where Pigeonhole and the RFC disagree, ringpost follows the RFC. Each
# case records both answers, so a change on either side shows up here.
KNOWN_DIFFERENCES = {
    "leading-question-mark.sieve": {"rfc": ["store INBOX"], "pigeonhole": ["store matched"]},
    "string-default-comparator.sieve": {"rfc": ["store matched"], "pigeonhole": ["store INBOX"]},
}


@pytest.mark.parametrize("name", sorted(KNOWN_DIFFERENCES))
def test_known_differences(pigeonhole, name):
    script = CORPUS / "known-differences" / name
    message = CORPUS / "messages" / "plain.eml"
    sender, recipient = ENVELOPES[0]
    got, _ = ringpost_actions(script, message, sender, recipient)
    assert got == KNOWN_DIFFERENCES[name]["rfc"]
    want, out = pigeonhole.actions(script, message, sender, recipient)
    assert want == KNOWN_DIFFERENCES[name]["pigeonhole"], f"sieve-test changed its answer:\n{out}"


# Vacation decisions adapted from Pigeonhole tests/extensions/vacation/reply.svtest:
# (name, header lines, envelope sender, envelope recipient, vacation arguments).
VACATION_CASES = [
    ("own address", "From: sirius@example.com\nTo: sirius@example.com\nCc: stephan@example.com",
     "stephan@example.com", "stephan@example.com", ""),
    ("alternative address", "From: sirius@example.com\nTo: sirius@example.com\nCc: stephan@example.com",
     "sirius@example.com", "stephan@example.com", ':addresses "sirius@example.com"'),
    ("mailing list", "From: timo@example.com\nTo: dovecot@lists.example.com\nList-ID: <dovecot.lists.example.com>",
     "dovecot-bounces+timo=example.com@lists.example.com", "dovecot@lists.example.com", ""),
    ("bulk", "From: spam@example.com\nTo: stephan@example.com\nPrecedence: bulk",
     "spam@example.com", "stephan@example.com", ""),
    ("auto-submitted", "From: spam@example.com\nTo: stephan@example.com\nAuto-submitted: yes",
     "spam@example.com", "stephan@example.com", ""),
    ("suppress all", "From: spam@example.com\nTo: stephan@example.com\nX-Auto-Response-Suppress: All",
     "spam@example.com", "stephan@example.com", ""),
    ("suppress oof", "From: spam@example.com\nTo: stephan@example.com\nX-Auto-Response-Suppress: DR, OOF, RN",
     "spam@example.com", "stephan@example.com", ""),
    ("system address", "From: dovecot@lists.example.com\nTo: stephan@example.com",
     "dovecot-request@lists.example.com", "stephan@example.com", ""),
    ("implicitly delivered", "From: timo@example.com\nTo: all@example.com",
     "timo@example.com", "stephan@example.com", ""),
    ("explicitly delivered", "From: timo@example.com\nTo: stephan@example.com",
     "timo@example.com", "stephan@example.com", ""),
    ("in cc", "From: timo@example.com\nTo: all@example.com\nCc: \"Stephan\" <STEPHAN@example.com>",
     "timo@example.com", "stephan@example.com", ""),
    ("auto-submitted no", "From: timo@example.com\nTo: stephan@example.com\nAuto-Submitted: no",
     "timo@example.com", "stephan@example.com", ""),
]


@pytest.mark.parametrize("case", VACATION_CASES, ids=[c[0] for c in VACATION_CASES])
def test_vacation_decision(pigeonhole, case, tmp_path):
    name, headers, sender, recipient, args = case
    script = tmp_path / "vacation.sieve"
    script.write_text(f'require "vacation";\nvacation {args} "I am gone";\n')
    message = tmp_path / "message.eml"
    message.write_text(headers + "\nSubject: Frop!\n\nFrop!\n")
    want, out = pigeonhole.actions(script, message, sender, recipient)
    got, ours = ringpost_actions(script, message, sender, recipient)
    assert want == got, f"{name}: sieve-test {want}, ringpost {got}\n{out}\n{ours}"
