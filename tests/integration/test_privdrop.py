"""Privilege separation: started as root with server.user, ringpost binds
its listeners and control socket, gives the spool to that user and runs as
it (every uid and gid field in /proc/<pid>/status); without server.user a
configuration file makes root refuse to serve."""

import array
import os
import pwd
import signal
import socket
import struct
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


def children(pid):
    """Process ids whose parent is pid."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "status").read_text()
            except OSError:
                continue
            ppid = [line.split()[1] for line in text.splitlines() if line.startswith("PPid:")]
            if ppid and int(ppid[0]) == pid:
                found.append(int(entry.name))
    return found


def status_field(pid, key):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].strip()
    return None


def gone(pid):
    """The process exited (no entry, or a zombie not yet reaped)."""
    try:
        return status_field(pid, "State").startswith("Z")
    except OSError:
        return True


# CAP_KILL, CAP_SETGID, CAP_SETUID: all the helper keeps.
HELPER_CAPS = (1 << 5) | (1 << 6) | (1 << 7)


def pipe_config(workdir, name, out):
    """server.user = name; a pipe transport as daemon, a slow one as daemon
    with a 1 s limit, a pipe scanner as bin, each writing its ids to out."""
    for prog, text in {
        "deliver": f'#!/bin/sh\nid -u > {out}/deliver-$1; id -g >> {out}/deliver-$1; cat > {out}/deliver-$1.msg\n',
        "slow": f'#!/bin/sh\necho $$ > {out}/slow.pid\nsleep 60 &\necho $! > {out}/slow-child.pid\nwait\n',
        "scan": f'#!/bin/sh\nid -u > {out}/scan-$1; id -g >> {out}/scan-$1; cat > /dev/null\n'
                'echo "X-Scanned: uid=$(id -u)"\nexit 0\n',
    }.items():
        path = workdir / prog
        path.write_text(text)
        path.chmod(0o755)
    transports = (f'[{{domains = ["pipe.test"], transport = "pipe", command = ["{workdir}/deliver", "{{user}}"], '
                  f'user = "daemon"}}, {{domains = ["slow.test"], transport = "pipe", command = ["{workdir}/slow"], '
                  f'user = "daemon", timeout = "1s"}}]')
    scanner = f'[{{name = "ids", kind = "pipe", command = ["{workdir}/scan", "{{queue_id}}"], user = "bin"}}]'
    return {"server.user": f'"{name}"', "transport": transports, "scanner": scanner}


def test_pipes_with_users_of_their_own_run_through_the_root_helper(system_user, workdir):
    name, uid, gid = system_user
    out = workdir / "out"
    out.mkdir()
    os.chmod(out, 0o777)
    daemon, bin_ = pwd.getpwnam("daemon"), pwd.getpwnam("bin")
    server = start(workdir, pipe_config(workdir, name, out))
    try:
        pid = server.proc.pid
        ids = status_ids(f"/proc/{pid}/status")
        assert ids["Uid"] == [uid] * 4 and ids["Gid"] == [gid] * 4, ids
        assert "event=pipe_helper_started" in server.log_text()
        # The one root process left: the helper, with three capabilities.
        helpers = children(pid)
        assert len(helpers) == 1, helpers
        helper = helpers[0]
        assert status_ids(f"/proc/{helper}/status")["Uid"] == [0] * 4
        assert Path(f"/proc/{helper}/cmdline").read_bytes().split(b"\0")[1] == b"pipe-helper"
        assert int(status_field(helper, "CapEff"), 16) == HELPER_CAPS
        assert int(status_field(helper, "CapPrm"), 16) == HELPER_CAPS
        assert int(status_field(helper, "CapBnd"), 16) == HELPER_CAPS
        assert int(status_field(helper, "CapInh"), 16) == 0
        assert sorted(os.listdir(f"/proc/{helper}/fd"), key=int) == ["0", "1", "2", "3"]

        send(server.port, "alice@pipe.test", "through-the-helper")
        done = out / "deliver-alice"
        wait_for(lambda: (out / "deliver-alice.msg").exists() and done.exists() and
                 len(done.read_text().split()) == 2, what="pipe delivery")
        assert done.read_text().split() == [str(daemon.pw_uid), str(daemon.pw_gid)]
        wait_for(lambda: b"through-the-helper" in (out / "deliver-alice.msg").read_bytes(), what="message")
        message = (out / "deliver-alice.msg").read_text()
        assert f"X-Scanned: uid={bin_.pw_uid}" in message, message
        scans = [p for p in out.iterdir() if p.name.startswith("scan-")]
        assert scans and scans[0].read_text().split() == [str(bin_.pw_uid), str(bin_.pw_gid)]

        # At its time limit the program's process group is killed.
        send(server.port, "bob@slow.test", "too-slow")
        wait_for(lambda: (out / "slow-child.pid").exists() and (out / "slow-child.pid").read_text().strip(),
                 what="the slow program")
        slow, slow_child = int((out / "slow.pid").read_text()), int((out / "slow-child.pid").read_text())
        assert status_ids(f"/proc/{slow}/status")["Uid"] == [daemon.pw_uid] * 4
        wait_for(lambda: gone(slow) and gone(slow_child), timeout_s=15, what="the group killed")
        wait_for(lambda: "killed after 1 s" in server.log_text(), what="the deferral")
        assert children(pid) == [helper], "nothing else runs as the server's child"
    finally:
        assert server.stop() == 0
    wait_for(lambda: gone(helper), timeout_s=10, what="the helper's exit after SIGTERM")


def test_the_helper_exits_when_the_server_is_killed(system_user, workdir):
    name, _, _ = system_user
    out = workdir / "out"
    out.mkdir()
    server = start(workdir, pipe_config(workdir, name, out))
    helpers = children(server.proc.pid)
    assert len(helpers) == 1, helpers
    server.stop(sig=signal.SIGKILL)
    wait_for(lambda: gone(helpers[0]), timeout_s=10, what="the helper's exit after kill -9")


def test_no_helper_without_pipes_of_other_users(system_user, workdir):
    name, _, _ = system_user
    server = start(workdir, {"server.user": f'"{name}"'})
    try:
        assert children(server.proc.pid) == []
        assert "pipe_helper_started" not in server.log_text()
    finally:
        server.stop()


def helper_list(entries):
    """The allowed list as the helper reads it (src/pipehelper.rs)."""
    def s(text):
        b = text.encode()
        return struct.pack("<I", len(b)) + b
    out = b"RPH1" + struct.pack("<I", len(entries))
    for kind, uid, gid, groups, argv in entries:
        out += struct.pack("<BIII", kind, uid, gid, len(groups)) + b"".join(struct.pack("<I", g) for g in groups)
        out += struct.pack("<I", len(argv)) + b"".join(s(a) for a in argv)
    return out


def spawn_request(index, argv, vars=()):
    def s(text):
        b = text.encode()
        return struct.pack("<I", len(b)) + b
    out = struct.pack("<BII", 1, index, len(argv)) + b"".join(s(a) for a in argv)
    return out + struct.pack("<I", len(vars)) + b"".join(s(k) + s(v) for k, v in vars)


def ask_helper(sock, request):
    """Sends a spawn request with fresh stdio pipes and a reply socket:
    (the first reply, the reply socket, the stdout read end)."""
    (in_r, in_w), (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe(), os.pipe()
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [in_r, out_w, err_w,
                                                                                         theirs.fileno()]))])
    for fd in (in_r, out_w, err_w, in_w, err_r):
        os.close(fd)
    theirs.close()
    mine.settimeout(10)
    return mine.recv(65536), mine, out_r


def test_the_helper_runs_only_what_its_allowed_list_holds(workdir):
    daemon = pwd.getpwnam("daemon")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    # The helper finds its socket as fd 3.
    helper = subprocess.Popen([str(RINGPOST), "pipe-helper"], stdin=subprocess.PIPE, pass_fds=(3,),
                              preexec_fn=lambda: os.dup2(theirs.fileno(), 3))
    theirs.close()
    try:
        helper.stdin.write(helper_list([(0, daemon.pw_uid, daemon.pw_gid, [daemon.pw_gid],
                                         ["/usr/bin/id", "-{user}"])]))
        helper.stdin.close()
        ours.settimeout(10)
        assert ours.recv(100) == b"\0", "ready"

        reply, _, _ = ask_helper(ours, spawn_request(1, ["/usr/bin/id", "-u"]))
        assert reply[0] == 3 and b"no allowed entry #1" in reply, reply
        reply, _, _ = ask_helper(ours, spawn_request(0, ["/bin/sh", "-u"]))
        assert reply[0] == 3 and b"not allowed" in reply, reply
        reply, _, _ = ask_helper(ours, spawn_request(0, ["/usr/bin/id", "-u", "-g"]))
        assert reply[0] == 3 and b"not allowed" in reply, reply
        reply, _, _ = ask_helper(ours, spawn_request(0, ["/usr/bin/id", "u"]))
        assert reply[0] == 3 and b"not allowed" in reply, reply

        reply, mine, out_r = ask_helper(ours, spawn_request(0, ["/usr/bin/id", "-u"], [("USER", "x")]))
        assert reply[0] == 1, reply
        (child,) = struct.unpack("<i", reply[1:5])
        exited = mine.recv(100)
        assert exited[0] == 2 and struct.unpack("<ii", exited[1:9]) == (child, 0), exited
        with os.fdopen(out_r, "rb") as f:
            assert f.read().strip() == str(daemon.pw_uid).encode()
    finally:
        ours.close()
    assert helper.wait(timeout=10) == 0, "the helper exits when its socket closes"

def test_unknown_server_user_is_refused(workdir):
    port = free_port()
    text = f'[server]\nlisten = ["127.0.0.1:{port}"]\nuser = "no-such-ringpost-user"\n'
    run = run_config(workdir, text)
    assert run.returncode == 2, run
    assert "no such user" in run.stderr, run.stderr
