"""Network lookup sources through bounded pools, against a real PostgreSQL
cluster and a real OpenLDAP slapd started on loopback by the test: hits,
misses, several rows, LDAP filter escaping; a back end that hangs
(pg_sleep) fills its pool, so further RCPTs get 451 within the pool's
timeout while file-based routing keeps answering; a stopped server gives
451 and the pool reconnects when it is back."""

import os
import pwd
import shutil
import smtplib
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from conftest import free_port, missing_tool, wait_for, wait_port
from test_routing import routed  # noqa: F401  (the fixture)

PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))


class PostgresCluster:
    """A private cluster in a temporary directory, run as the postgres user."""

    def __init__(self):
        if not PG_BIN:
            missing_tool("PostgreSQL is not installed (tests/run installs postgresql)")
        self.bin = PG_BIN[-1]
        self.dir = Path(tempfile.mkdtemp(prefix="ringpost-pg-"))
        os.chmod(self.dir, 0o755)
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.port = free_port()
        self._as_postgres([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres"])
        self.start()
        self.psql("CREATE TABLE users (address text, value text);"
                  "INSERT INTO users VALUES ('ann', 'ann'), ('list', 'a@example.org'), ('list', 'b@example.org');"
                  "CREATE FUNCTION slow(key text) RETURNS text AS $$ SELECT pg_sleep(10)::text || key $$ LANGUAGE sql;")

    def _as_postgres(self, args):
        pw = pwd.getpwnam("postgres")

        def demote():
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
        r = subprocess.run(args, preexec_fn=demote, capture_output=True, text=True, cwd=self.dir)
        if r.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {r.stdout}{r.stderr}")

    def start(self):
        self._as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-w",
                           "-o", f"-k {self.dir} -h 127.0.0.1 -p {self.port}", "start"])

    def stop(self):
        self._as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"])

    def psql(self, sql):
        subprocess.run([str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                        "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-c", sql], check=True, capture_output=True)

    def url(self):
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def cleanup(self):
        try:
            self.stop()
        except RuntimeError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def pg():
    cluster = PostgresCluster()
    yield cluster
    cluster.cleanup()


class Slapd:
    """A private slapd (mdb back end) with a test tree under dc=test."""

    def __init__(self):
        slapd = shutil.which("slapd") or "/usr/sbin/slapd"
        if not Path(slapd).exists():
            missing_tool("slapd is not installed (tests/run installs slapd)")
        self.dir = Path(tempfile.mkdtemp(prefix="ringpost-slapd-"))
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
suffix "dc=test"
rootdn "cn=admin,dc=test"
rootpw secret
directory {self.dir}/db
""")
        ldif = self.dir / "data.ldif"
        ldif.write_text("""dn: dc=test
objectClass: dcObject
objectClass: organization
dc: test
o: test

dn: uid=carol,dc=test
objectClass: inetOrgPerson
uid: carol
cn: Carol
sn: C
mail: carol@example.org

dn: uid=star,dc=test
objectClass: inetOrgPerson
uid: star
cn: Star
sn: S
mail: star@example.org
""")
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
def ldap():
    server = Slapd()
    yield server
    server.stop()


def rcpt_codes(rp, addresses):
    with smtplib.SMTP("127.0.0.1", rp.port, timeout=60) as client:
        client.ehlo("client.test")
        client.mail("sender@example.net")
        return [client.rcpt(a)[0] for a in addresses]


def test_postgres_lookups_hit_miss_and_several_rows(routed, pg):
    rp = routed(f"""
[domains]
local = ["example.org"]

[[router]]
name = "pg-users"
driver = "local_users"
source = "postgres:{pg.url()}"
query = "SELECT value FROM users WHERE address = $1"
""")
    assert rcpt_codes(rp, ["ann@example.org", "nobody@example.org"]) == [250, 550]
    out = subprocess.run([*rp.args("route"), "ann@example.org"], capture_output=True, text=True).stdout
    assert "router pg-users: deliver <ann@example.org>" in out, out


def test_a_hanging_backend_fills_its_pool_and_gives_451_while_files_answer(routed, pg, tmp_path):
    (tmp_path / "users").write_text("fred\n")
    rp = routed(f"""
[domains]
local = ["example.org", "files.example"]

[pool.slow]
max_connections = 2
queue_max = 2
timeout = "1s"

[[router]]
name = "files"
driver = "local_users"
domains = ["files.example"]
file = "DIR/users"

[[router]]
name = "slow-db"
driver = "local_users"
domains = ["example.org"]
source = "postgres:{pg.url()}"
query = "SELECT slow($1)"
pool = "slow"
""")
    results = {}

    def probe(name, address):
        started = time.monotonic()
        code = rcpt_codes(rp, [address])[0]
        results[name] = (code, time.monotonic() - started)

    # More lookups than workers and queue slots: all hang in pg_sleep(10).
    threads = [threading.Thread(target=probe, args=(f"db{i}", f"user{i}@example.org")) for i in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    # File-based routing keeps answering at once meanwhile.
    started = time.monotonic()
    assert rcpt_codes(rp, ["fred@files.example"]) == [250]
    assert time.monotonic() - started < 1.0
    for t in threads:
        t.join(timeout=30)
    for name, (code, seconds) in results.items():
        assert code == 451, (name, code)
        assert seconds < 3.0, f"{name} answered after {seconds:.1f} s, the pool's timeout is 1 s"
    assert len(results) == 6


def test_postgres_down_then_back(routed, pg):
    rp = routed(f"""
[domains]
local = ["example.org"]

[route]
cache_ttl = "0s"

[pool.db]
timeout = "2s"

[[router]]
name = "pg-users"
driver = "local_users"
source = "postgres:{pg.url()}"
query = "SELECT value FROM users WHERE address = $1"
pool = "db"
""")
    assert rcpt_codes(rp, ["ann@example.org"]) == [250]
    pg.stop()
    assert rcpt_codes(rp, ["ann@example.org"]) == [451]
    pg.start()
    wait_for(lambda: rcpt_codes(rp, ["ann@example.org"]) == [250], timeout_s=20, what="the pool to reconnect")


def test_ldap_lookups_and_filter_escaping(routed, ldap):
    rp = routed(f"""
[domains]
local = ["example.org"]

[[router]]
name = "directory"
driver = "local_users"
source = "ldap:ldap://127.0.0.1:{ldap.port}/dc=test?mail"
query = "(uid=%s)"
""")
    # "*" would match every entry if it reached the filter unescaped.
    assert rcpt_codes(rp, ["carol@example.org", "nobody@example.org", "*@example.org"]) == [250, 550, 550]


def test_ldap_down_gives_451(routed, ldap):
    rp = routed(f"""
[domains]
local = ["example.org"]

[pool.dir]
timeout = "2s"

[[router]]
name = "directory"
driver = "local_users"
source = "ldap:ldap://127.0.0.1:{ldap.port}/dc=test?mail"
query = "(uid=%s)"
pool = "dir"
""")
    ldap.stop()
    assert rcpt_codes(rp, ["carol@example.org"]) == [451]
