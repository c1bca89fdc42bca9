"""The Dovecot and LDAP back ends of SMTP AUTH, each against a real server
started privately on loopback: a Dovecot whose only service is auth (its
client socket, as Postfix uses it with `smtpd_sasl_type = dovecot`, users
in a passwd-file with `doveadm pw` hashes), and an OpenLDAP slapd bound to
as the user's DN. swaks and smtplib drive a submission listener."""

import os
import shutil
import smtplib
import ssl
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import free_port, missing_tool, wait_for, wait_port


def client_context():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class DovecotAuth:
    """A private Dovecot running only its auth service; `socket` is its
    auth-client listener."""

    def __init__(self, users):
        if shutil.which("dovecot") is None and not Path("/usr/sbin/dovecot").exists():
            missing_tool("dovecot is not installed (tests/run installs dovecot-lmtpd, which brings dovecot-core)")
        self.dir = Path(tempfile.mkdtemp(prefix="ringpost-dovecot-auth-"))
        os.chmod(self.dir, 0o755)
        run = self.dir / "run"
        run.mkdir()
        lines = []
        for user, password in users.items():
            hashed = subprocess.run(["doveadm", "pw", "-s", "SHA512-CRYPT", "-p", password],
                                    capture_output=True, text=True, check=True).stdout.strip()
            lines.append(f"{user}:{hashed}::::::\n")
        (self.dir / "users").write_text("".join(lines))
        self.socket = run / "auth-client"
        self.conf = self.dir / "dovecot.conf"
        self.conf.write_text(f"""base_dir = {run}
state_dir = {self.dir}/state
log_path = {self.dir}/dovecot.log
protocols = none
listen = 127.0.0.1
ssl = no
auth_mechanisms = plain login
auth_verbose = yes
passdb {{
  driver = passwd-file
  args = {self.dir}/users
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={self.dir}/home
}}
service auth {{
  unix_listener auth-client {{
    mode = 0666
  }}
}}
""")
        self.proc = subprocess.Popen(["dovecot", "-F", "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=open(self.dir / "stderr.log", "wb"))
        wait_for(lambda: self.socket.exists(), what="dovecot's auth-client socket")

    def log_text(self):
        p = self.dir / "dovecot.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def stop(self):
        subprocess.run(["doveadm", "-c", str(self.conf), "stop"], capture_output=True)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class SlapdPeople:
    """A private slapd with users under ou=people,dc=example,dc=test."""

    def __init__(self, users):
        slapd = shutil.which("slapd") or "/usr/sbin/slapd"
        if not Path(slapd).exists():
            missing_tool("slapd is not installed (tests/run installs slapd)")
        self.dir = Path(tempfile.mkdtemp(prefix="ringpost-slapd-auth-"))
        (self.dir / "db").mkdir()
        self.port = free_port()
        conf = self.dir / "slapd.conf"
        conf.write_text(f"""include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
modulepath /usr/lib/ldap
moduleload back_mdb
pidfile {self.dir}/slapd.pid
database mdb
suffix "dc=example,dc=test"
rootdn "cn=admin,dc=example,dc=test"
rootpw admin-secret
directory {self.dir}/db
""")
        entries = ["dn: dc=example,dc=test\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: example\n",
                   "dn: ou=people,dc=example,dc=test\nobjectClass: organizationalUnit\nou: people\n"]
        for user, password in users.items():
            hashed = subprocess.run(["slappasswd", "-s", password], capture_output=True, text=True,
                                    check=True).stdout.strip()
            entries.append(f"dn: uid={user},ou=people,dc=example,dc=test\nobjectClass: inetOrgPerson\n"
                           f"uid: {user}\ncn: {user}\nsn: {user}\nuserPassword: {hashed}\n")
        ldif = self.dir / "data.ldif"
        ldif.write_text("\n".join(entries))
        subprocess.run(["slapadd", "-f", str(conf), "-l", str(ldif)], check=True, capture_output=True)
        self.proc = subprocess.Popen([slapd, "-d", "0", "-f", str(conf), "-h", f"ldap://127.0.0.1:{self.port}/"],
                                     stdout=subprocess.DEVNULL, stderr=open(self.dir / "slapd.log", "wb"))
        wait_port(self.port, proc=self.proc)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def dovecot_auth():
    servers = []

    def start(users):
        server = DovecotAuth(users)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def slapd_people():
    servers = []

    def start(users):
        server = SlapdPeople(users)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def submission_server(ringpost, test_cert, sink, auth):
    cert, key = test_cert
    port = free_port()
    settings = {
        "tls.cert": f'"{cert}"',
        "tls.key": f'"{key}"',
        "relay.networks": "[]",
        "delivery.smarthost": f'"127.0.0.1:{sink.port}"',
        "listener": f'[{{address = "127.0.0.1:{port}", role = "submission"}}]',
        "auth.failure_delay": '"100ms"',
    }
    settings.update(auth)
    rp = ringpost(settings)
    wait_port(port, proc=rp.proc)
    return rp, port


def swaks(port, user, password, to, mechanism="PLAIN"):
    return subprocess.run(["swaks", "--server", f"127.0.0.1:{port}", "--tls", "--auth", mechanism,
                           "--auth-user", user, "--auth-password", password, "--from", f"{user}@example.org",
                           "--to", to, "--h-Subject", f"via {mechanism}"],
                          capture_output=True, text=True, timeout=60)


def test_dovecot_back_end_accepts_right_and_refuses_wrong_passwords(ringpost, test_cert, smtp_sink, dovecot_auth):
    dovecot = dovecot_auth({"dave": "dave-pw"})
    sink = smtp_sink()
    rp, port = submission_server(ringpost, test_cert, sink,
                                 {"auth.backend": '"dovecot"', "auth.dovecot_socket": f'"{dovecot.socket}"'})
    r = swaks(port, "dave", "dave-pw", "out1@remote.test")
    assert r.returncode == 0, r.stdout + r.stderr
    r = swaks(port, "dave", "dave-pw", "out2@remote.test", mechanism="LOGIN")
    assert r.returncode == 0, r.stdout + r.stderr
    sink.wait_message(b"out1@remote.test")
    sink.wait_message(b"out2@remote.test")
    r = swaks(port, "dave", "wrong-pw", "never@remote.test")
    assert r.returncode != 0 and "535 5.7.8" in r.stdout, r.stdout
    log = rp.log_text()
    assert log.count("result=ok") == 2 and "result=invalid" in log
    assert "dave-pw" not in log and "wrong-pw" not in log


def test_dovecot_socket_missing_is_a_temporary_failure(ringpost, test_cert, smtp_sink, tmp_path):
    sink = smtp_sink()
    rp, port = submission_server(ringpost, test_cert, sink,
                                 {"auth.backend": '"dovecot"', "auth.dovecot_socket": f'"{tmp_path}/no-socket"'})
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("client.test")
        s.starttls(context=client_context())
        s.ehlo("client.test")
        code, text = s.docmd("AUTH", "PLAIN AGRhdmUAZGF2ZS1wdw==")
        assert (code, text[:5]) == (454, b"4.7.0"), (code, text)
    assert "result=temporary" in rp.log_text()


def test_ldap_bind_back_end(ringpost, test_cert, smtp_sink, slapd_people):
    slapd = slapd_people({"erin": "erin-pw", "frank": "frank-pw"})
    sink = smtp_sink()
    rp, port = submission_server(ringpost, test_cert, sink, {
        "auth.backend": '"ldap"',
        "auth.ldap": f'"ldap://127.0.0.1:{slapd.port}"',
        "auth.ldap_bind_dn": '"uid=%u,ou=people,dc=example,dc=test"',
    })
    r = swaks(port, "erin", "erin-pw", "ldap-ok@remote.test")
    assert r.returncode == 0, r.stdout + r.stderr
    sink.wait_message(b"ldap-ok@remote.test")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("client.test")
        s.starttls(context=client_context())
        s.ehlo("client.test")
        # Frank's password for Erin, an unknown user, an empty password
        # (an unauthenticated bind, which slapd would accept) and a name
        # that tries to change the DN: all 535.
        for plain in [b"\0erin\0frank-pw", b"\0nobody\0x", b"\0erin\0", b"\0erin,ou=people\0erin-pw"]:
            import base64
            code, text = s.docmd("AUTH", "PLAIN " + base64.b64encode(plain).decode())
            if code == 421:
                break
            assert code in (535, 501), (plain, code, text)
    assert "erin-pw" not in rp.log_text()
