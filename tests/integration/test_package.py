"""The Debian package: `cargo deb --no-build` from the build under test
(conftest.BIN_DIR: the release build, or the profile tests/run builds),
installed with dpkg on this machine, started as its systemd unit starts it
(under systemd when PID 1 is systemd, else by running the unit's ExecStart
directly), a message accepted and delivered, then purged without a trace.

A ringpost package installed on this machine by anything but this test is
left alone (the test is skipped)."""

import os
import shlex
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

import conftest
from conftest import ROOT, RINGPOST, free_port, missing_tool, wait_for, wait_port

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="installing a package needs root")

PACKAGE = "ringpost"
CONFIG = Path("/etc/ringpost/ringpost.toml")
SPOOL = Path("/var/spool/ringpost")
STATE = Path("/var/lib/ringpost")
UNIT_PATHS = [Path("/lib/systemd/system/ringpost.service"), Path("/usr/lib/systemd/system/ringpost.service")]
DROPIN = Path("/run/systemd/system/ringpost.service.d/test.conf")
# Written before the test installs the package, removed after the purge:
# a package found installed with it is a leftover of this test.
MARKER = Path("/run/ringpost-package-test")


def installed():
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", PACKAGE], capture_output=True, text=True)
    return r.returncode == 0 and "install ok installed" in r.stdout


def purge():
    return subprocess.run(["dpkg", "--purge", PACKAGE], capture_output=True, text=True)


def under_systemd():
    return Path("/proc/1/comm").read_text().strip() == "systemd" and Path("/run/systemd/system").is_dir()


def ringpost_pids():
    """Processes running the installed binary."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "exe").startswith("/usr/sbin/ringpost"):
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def status_ids(pid):
    ids = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid"):
            ids[key] = [int(v) for v in value.split()]
    return ids


@pytest.fixture
def deb(tmp_path):
    if shutil.which("dpkg") is None:
        missing_tool("dpkg is not installed")
    if subprocess.run(["cargo", "deb", "--version"], capture_output=True).returncode != 0:
        missing_tool("cargo-deb is not installed (cargo install cargo-deb --locked)")
    if not RINGPOST.is_file():
        pytest.fail(f"{RINGPOST} is missing: build with cargo build --profile {conftest.PROFILE} first")
    out = tmp_path / "deb"
    out.mkdir()
    built = subprocess.run(["cargo", "deb", "--no-build", "--profile", conftest.PROFILE, "--strip", "--fast",
                            "--output", str(out)], cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    debs = sorted(out.glob("ringpost_*.deb"))
    assert len(debs) == 1, (debs, built.stdout, built.stderr)
    return debs[0]


@pytest.fixture
def package(deb):
    """Installs the package; purges it (and stops what the test started) after."""
    if installed():
        if not MARKER.exists():
            pytest.skip("a ringpost package is installed on this machine already")
        purge()
    MARKER.write_text("ringpost package test\n")
    started = []
    try:
        r = subprocess.run(["dpkg", "-i", str(deb)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        yield started
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if under_systemd():
            subprocess.run(["systemctl", "stop", "ringpost"], capture_output=True)
            if DROPIN.exists():
                DROPIN.unlink()
                subprocess.run(["systemctl", "daemon-reload"], capture_output=True)
        if installed():
            purge()
        MARKER.unlink(missing_ok=True)


def unit_file():
    for path in UNIT_PATHS:
        if path.is_file():
            return path
    raise AssertionError(f"no unit file in {UNIT_PATHS}")


def unit_value(text, key):
    values = [line.split("=", 1)[1].strip() for line in text.splitlines() if line.startswith(f"{key}=")]
    assert values, f"{key}= is missing from the unit"
    return values[-1]


def test_package_installs_runs_and_purges(package):
    started = package
    # The files, the conffile and the user.
    assert os.access("/usr/sbin/ringpost", os.X_OK)
    unit = unit_file()
    unit_text = unit.read_text()
    assert unit_value(unit_text, "Type") == "notify"
    assert unit_value(unit_text, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert unit_value(unit_text, "NoNewPrivileges") == "yes"
    assert unit_value(unit_text, "ProtectSystem") == "strict"
    conffiles = subprocess.run(["dpkg-query", "-W", "-f=${Conffiles}", PACKAGE], capture_output=True, text=True).stdout
    assert str(CONFIG) in conffiles
    pw = subprocess.run(["getent", "passwd", "ringpost"], capture_output=True, text=True)
    assert pw.returncode == 0, "postinst creates the ringpost user"
    _, _, uid, gid, *_ = pw.stdout.strip().split(":")
    uid, gid = int(uid), int(gid)
    assert subprocess.run(["getent", "group", "ringpost"], capture_output=True).returncode == 0
    for d in (SPOOL, STATE):
        st = d.stat()
        assert (st.st_uid, st.st_gid) == (uid, gid), d
    st = CONFIG.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, gid, 0o640)

    # The shipped configuration is valid as it is.
    check = subprocess.run(["/usr/sbin/ringpost", "-c", str(CONFIG), "check-config"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert 'user = "ringpost"' in check.stdout

    # Started as the unit starts it, with a loopback port and local
    # delivery for the test.
    port = free_port()
    overrides = {
        "server.listen": f'["127.0.0.1:{port}"]',
        "server.shards": "2",
        "server.pin": "false",
        "server.drain_timeout": '"5s"',
        "domains.local": '["localhost"]',
        "local.maildir": f'"{STATE}/mail/{{user}}/Maildir"',
    }
    exec_start = shlex.split(unit_value(unit_text, "ExecStart"))
    assert exec_start[-1] == "serve"
    argv = exec_start[:-1]
    for key, value in overrides.items():
        argv += ["--set", f"{key}={value}"]
    argv.append("serve")
    log = tempfile.TemporaryFile()
    if under_systemd():
        DROPIN.parent.mkdir(parents=True, exist_ok=True)
        DROPIN.write_text("[Service]\nExecStart=\nExecStart=" + shlex.join(argv) + "\n")
        subprocess.run(["systemctl", "daemon-reload"], check=True)
        subprocess.run(["systemctl", "start", "ringpost"], check=True, timeout=60)
        pid = int(subprocess.run(["systemctl", "show", "-p", "MainPID", "--value", "ringpost"],
                                 capture_output=True, text=True, check=True).stdout)
        wait_port(port)
    else:
        # READY=1 reaches the socket a service manager would listen on.
        # After the drop the server sends as ringpost: the socket's
        # directory must let that user through, as systemd's does.
        notify_path = Path(tempfile.mkdtemp(prefix="ringpost-notify-")) / "notify.sock"
        os.chmod(notify_path.parent, 0o755)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        os.chmod(notify_path, 0o777)
        notify.settimeout(30)
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NOTIFY_SOCKET": str(notify_path)}
        proc = subprocess.Popen(argv, cwd=unit_value(unit_text, "WorkingDirectory"), env=env,
                                stdout=log, stderr=log)
        started.append(proc)
        try:
            assert notify.recv(64) == b"READY=1"
        finally:
            notify.close()
            shutil.rmtree(notify_path.parent, ignore_errors=True)
        pid = proc.pid
        wait_port(port, proc=proc)
    ids = status_ids(pid)
    assert ids == {"Uid": [uid] * 4, "Gid": [gid] * 4}, ids
    assert (SPOOL / "ringpost.sock").is_socket()

    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("client.test")
        refused = s.sendmail("sender@example.net", ["alice@localhost"], "Subject: packaged\r\n\r\nfrom the package\r\n")
        assert refused == {}
    new = STATE / "mail" / "alice" / "Maildir" / "new"
    files = wait_for(lambda: sorted(new.iterdir()) if new.is_dir() else [], what="delivery to the Maildir")
    assert b"from the package" in files[0].read_bytes()
    assert files[0].stat().st_uid == uid

    # Stopped as the unit stops it (SIGTERM), then purged.
    if under_systemd():
        subprocess.run(["systemctl", "stop", "ringpost"], check=True, timeout=60)
    else:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    if under_systemd():
        # Under the unit its lines go to the journal.
        text = subprocess.run(["journalctl", "-u", "ringpost", "--no-pager", "-o", "cat"],
                              capture_output=True, text=True).stdout
    else:
        log.seek(0)
        text = log.read().decode(errors="replace")
    assert "event=privileges_dropped user=ringpost" in text, text
    r = purge()
    assert r.returncode == 0, r.stdout + r.stderr
    assert not installed()
    for path in [Path("/usr/sbin/ringpost"), CONFIG.parent, SPOOL, STATE, *UNIT_PATHS]:
        assert not path.exists(), f"{path} is left after the purge"
    assert subprocess.run(["getent", "passwd", "ringpost"], capture_output=True).returncode != 0
    assert subprocess.run(["getent", "group", "ringpost"], capture_output=True).returncode != 0
    assert ringpost_pids() == [], "nothing of the package runs any more"
