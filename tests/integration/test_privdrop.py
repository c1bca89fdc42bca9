"""Privilege separation: started as root with server.user, ringpost binds
its listeners and control socket, gives the spool to that user and runs as
it (every uid and gid field in /proc/<pid>/status); without server.user a
configuration file makes root refuse to serve."""

import os
import shutil
import smtplib
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from conftest import RINGPOST, Ringpost, free_port, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="privilege separation is tested as root")


@pytest.fixture
def system_user():
    """A system user and group of its own, removed after the test."""
    name = f"rpdrop{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                    "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True)
    pw = subprocess.run(["getent", "passwd", name], check=True, capture_output=True, text=True).stdout.split(":")
    try:
        yield name, int(pw[2]), int(pw[3])
    finally:
        subprocess.run(["userdel", name], capture_output=True)
        subprocess.run(["groupdel", name], capture_output=True)


@pytest.fixture
def workdir():
    """A directory the dropped user can reach (pytest's tmp_path is root's alone)."""
    d = Path(tempfile.mkdtemp(prefix="ringpost-privdrop-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def status_ids(path):
    fields = {}
    for line in Path(path).read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            fields[key] = [int(v) for v in value.split()]
    return fields


def owners(root):
    """(path, uid, gid) of root and everything under it."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [dirpath] + [os.path.join(dirpath, n) for n in dirnames + filenames]:
            st = os.lstat(name)
            found.append((name, st.st_uid, st.st_gid))
    return found


def send(port, to, body):
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.sendmail("sender@example.net", [to], f"Subject: {body}\r\n\r\n{body}\r\n")


def start(workdir, settings):
    server = Ringpost(workdir, settings)
    server.settings.pop("server.allow_root", None)
    return server.start()


def test_server_runs_as_server_user_with_its_spool(system_user, workdir):
    name, uid, gid = system_user
    mail = workdir / "mail"
    mail.mkdir()
    os.chown(mail, uid, gid)
    # A spool left by a run as root: its files become the user's.
    first = Ringpost(workdir, {"server.allow_root": "true"}).start()
    send(first.port, "alice@localhost", "as-root")
    wait_for(lambda: first.maildir_files("alice"), what="delivery as root")
    assert first.stop() == 0
    assert any(u == 0 for _, u, _ in owners(first.spool)), "the first run left root's files"
    shutil.rmtree(mail / "alice")

    server = start(workdir, {"server.user": f'"{name}"'})
    try:
        pid = server.proc.pid
        ids = status_ids(f"/proc/{pid}/status")
        assert ids["Uid"] == [uid] * 4, ids
        assert ids["Gid"] == [gid] * 4, ids
        assert ids["Groups"] == [gid], ids
        for task in Path(f"/proc/{pid}/task").iterdir():
            task_ids = status_ids(task / "status")
            assert task_ids["Uid"] == [uid] * 4 and task_ids["Gid"] == [gid] * 4, (task, task_ids)
        wrong = [(p, u, g) for p, u, g in owners(server.spool) if (u, g) != (uid, gid)]
        assert not wrong, wrong
        assert (server.spool / "ringpost.sock").is_socket()
        assert "event=privileges_dropped" in server.log_text()

        send(server.port, "alice@localhost", "as-user")
        files = wait_for(lambda: server.maildir_files("alice"), what="delivery to the Maildir")
        assert b"as-user" in files[0].read_bytes()
        st = files[0].stat()
        assert (st.st_uid, st.st_gid) == (uid, gid)

        stats = subprocess.run(server.args("stats"), capture_output=True, text=True, timeout=10)
        assert stats.returncode == 0 and "accepted" in stats.stdout, stats.stderr
    finally:
        assert server.stop() == 0
    assert not (server.spool / "ringpost.sock").exists(), "the socket is removed at the stop"


def test_spool_directory_is_created_for_the_user(system_user, workdir):
    name, uid, gid = system_user
    spool = workdir / "new" / "spool"
    server = start(workdir, {"server.user": f'"{name}"', "queue.spool": f'["{spool}"]'})
    try:
        st = spool.stat()
        assert (st.st_uid, st.st_gid) == (uid, gid)
        assert status_ids(f"/proc/{server.proc.pid}/status")["Uid"] == [uid] * 4
    finally:
        server.stop()


def run_config(workdir, text, *extra):
    config = workdir / "ringpost.toml"
    config.write_text(text)
    return subprocess.run([str(RINGPOST), "-c", str(config), *extra, "serve"], cwd=workdir,
                          capture_output=True, text=True, timeout=30)


def test_root_without_server_user_is_refused_with_a_file(workdir):
    port = free_port()
    text = f'[server]\nlisten = ["127.0.0.1:{port}"]\n[queue]\nspool = ["{workdir}/spool"]\n'
    run = run_config(workdir, text)
    assert run.returncode == 2, run
    assert "refusing to run as root" in run.stderr and "server.user" in run.stderr, run.stderr
    assert not (workdir / "spool").exists(), "nothing is started"


def test_pipe_as_another_user_is_refused(system_user, workdir):
    name, _, _ = system_user
    port = free_port()
    text = (f'[server]\nlisten = ["127.0.0.1:{port}"]\nuser = "{name}"\n[queue]\nspool = ["{workdir}/spool"]\n'
            '[[transport]]\ndomains = ["pipe.example"]\ntransport = "pipe"\ncommand = ["/bin/cat"]\nuser = "nobody"\n')
    run = run_config(workdir, text)
    assert run.returncode == 2, run
    assert "cannot switch to another user" in run.stderr, run.stderr


def test_unknown_server_user_is_refused(workdir):
    port = free_port()
    text = f'[server]\nlisten = ["127.0.0.1:{port}"]\nuser = "no-such-ringpost-user"\n'
    run = run_config(workdir, text)
    assert run.returncode == 2, run
    assert "no such user" in run.stderr, run.stderr
