"""Fixtures for integration tests: the real ringpost binary and real peers
(Postfix's smtp-sink) started on loopback addresses, each in its own
temporary directory, stopped at the end of the test."""

import os
import shutil
import tempfile
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The binaries under test: RINGPOST_BIN_DIR (tests/run sets the test-checked
# profile's, target/test-checked: optimised, with debug assertions and
# overflow checks), by default the release build's.
BIN_DIR = Path(os.environ.get("RINGPOST_BIN_DIR") or ROOT / "target" / "release").resolve()
# The cargo profile that built them (target/debug is the dev profile's).
PROFILE = {"debug": "dev"}.get(BIN_DIR.name, BIN_DIR.name)
RINGPOST = BIN_DIR / "ringpost"
SMTP_SINK = "/usr/sbin/smtp-sink"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "timing: compares latencies measured in the test; background work is paused while it runs")


@pytest.fixture(autouse=True)
def _pause_background_work(request):
    """tests/run builds the fuzz targets at the lowest priority while the
    integration tests run, in a process group it names in
    RINGPOST_PAUSE_PGID. Even at nice 19 that build takes whatever CPU a
    test leaves for a moment, which moves a latency ratio: a test marked
    `timing` runs with the group stopped (SIGSTOP), and it goes on after."""
    pgid = os.environ.get("RINGPOST_PAUSE_PGID")
    if not pgid or request.node.get_closest_marker("timing") is None:
        yield
        return
    try:
        os.killpg(int(pgid), signal.SIGSTOP)
    except ProcessLookupError:  # the build has finished
        pgid = None
    try:
        yield
    finally:
        if pgid:
            try:
                os.killpg(int(pgid), signal.SIGCONT)
            except ProcessLookupError:
                pass


def missing_tool(message):
    """A peer the suite needs is not there: under tests/run, which checked
    its tools up front, that is a failure, never a silent skip."""
    if os.environ.get("RINGPOST_TESTS_PREFLIGHT") == "1":
        pytest.fail(message)
    pytest.skip(message)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, host="127.0.0.1", timeout_s=15.0, proc=None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port}")


def wait_for(predicate, timeout_s=20.0, what="condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


class Ringpost:
    """One ringpost process with its own spool and mail directories."""

    def __init__(self, workdir: Path, settings: dict):
        self.workdir = workdir
        self.port = free_port()
        self.spool = workdir / "spool"
        self.mail = workdir / "mail"
        self.log_path = workdir / "ringpost.log"
        self.settings = {
            "server.listen": f'["127.0.0.1:{self.port}"]',
            "server.hostname": "mx.test",
            "server.shards": "2",
            "server.pin": "false",
            "server.drain_timeout": '"5s"',
            # The tests run as root; some give a configuration file, where
            # root without server.user is refused unless allowed.
            "server.allow_root": "true",
            "queue.spool": f'["{self.spool}"]',
            "queue.retry_lags": '["1s", "2s"]',
            "local.maildir": f'"{self.mail}/{{user}}/Maildir"',
        }
        self.settings.update(settings)
        self.proc = None

    def args(self, command="serve"):
        args = [str(RINGPOST)]
        for key, value in self.settings.items():
            args += ["--set", f"{key}={value}"]
        return args + [command]

    def start(self):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args(), cwd=self.workdir, stderr=self.log, stdout=self.log)
        wait_port(self.port, proc=self.proc)
        return self

    def stop(self, sig=signal.SIGTERM, timeout_s=20):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        self.log.close()
        return code

    def log_text(self):
        return self.log_path.read_text(errors="replace")

    def maildir_files(self, user):
        new = self.mail / user / "Maildir" / "new"
        return sorted(new.iterdir()) if new.is_dir() else []

    def queue_stats(self):
        """`ringpost queue stats` of this spool: the totals as a dict."""
        out = subprocess.run(self.args("queue") + ["stats"], capture_output=True, check=True, text=True).stdout
        total = [line for line in out.splitlines() if line.startswith("total ")][-1]
        return {k: int(v) for k, v in (item.split("=") for item in total.split()[1:])}

    def queue_live(self):
        """Live messages in the spool, as a restart would find them."""
        return self.queue_stats()["live"]

    def body_files(self):
        return sorted(p for p in self.spool.rglob("body-*") if p.is_file())


@pytest.fixture
def ringpost(tmp_path):
    """Factory: ringpost(**settings) starts a server; all are stopped after the test."""
    started = []

    def start(settings=None, workdir=None):
        wd = workdir or tmp_path / f"rp{len(started)}"
        wd.mkdir(exist_ok=True)
        server = Ringpost(wd, settings or {}).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


class SmtpSink:
    """Postfix's smtp-sink, dumping each message to a file."""

    def __init__(self, workdir: Path, extra_args=(), port=None):
        self.port = port or free_port()
        # smtp-sink drops privileges to nobody (it refuses to run as root), so
        # its dump directory must be reachable by nobody: not under pytest's
        # private tmp_path.
        self.dump = Path(tempfile.mkdtemp(prefix="ringpost-sink-"))
        os.chmod(self.dump, 0o777)
        args = [SMTP_SINK]
        if os.geteuid() == 0:
            args += ["-u", "nobody"]
        args += ["-d", f"{self.dump}/%H%M%S.", *extra_args, f"127.0.0.1:{self.port}", "100"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, proc=self.proc)

    def messages(self):
        return [p.read_bytes() for p in sorted(self.dump.iterdir())]

    def wait_message(self, needle: bytes, timeout_s=30.0):
        """Waits until a dumped message contains `needle` (smtp-sink creates
        the file at MAIL and fills it as the transaction goes on)."""
        return wait_for(lambda: [m for m in self.messages() if needle in m],
                        timeout_s=timeout_s, what=f"smtp-sink to receive {needle!r}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        shutil.rmtree(self.dump, ignore_errors=True)


@pytest.fixture
def smtp_sink(tmp_path):
    sinks = []

    def start(*extra_args, port=None):
        sink = SmtpSink(tmp_path / f"sink{len(sinks)}", extra_args, port)
        sinks.append(sink)
        return sink

    yield start
    for sink in sinks:
        sink.stop()


def unbound_binary():
    for d in os.environ.get("PATH", "").split(":") + ["/usr/sbin", "/sbin"]:
        p = Path(d) / "unbound"
        if p.is_file():
            return p
    return None


class Unbound:
    """A private unbound on 127.0.0.1 and a free port, serving `records`
    (zone-file lines) from a static local zone `zone`, or from each of
    `zones`. `quote` encloses each record in unbound's configuration: a
    record whose TXT text is in double quotes needs single ones."""

    def __init__(self, workdir: Path, zone: str, records, zones=None, quote='"'):
        binary = unbound_binary()
        if binary is None:
            missing_tool("unbound is not installed (tests/run installs it)")
        workdir.mkdir(parents=True, exist_ok=True)
        zones = zones or [zone]
        data = "\n".join(
            [line for z in zones for line in (
                f'    local-zone: "{z}." static',
                f'    local-data: "{z}. 3600 IN SOA ns.{z}. admin.{z}. 1 3600 600 86400 60"')]
            + [f"    local-data: {quote}{r}{quote}" for r in records])
        for _ in range(5):
            self.port = free_port()
            conf = workdir / "unbound.conf"
            conf.write_text(f"""server:
    interface: 127.0.0.1@{self.port}
    port: {self.port}
    do-daemonize: no
    use-syslog: no
    logfile: ""
    chroot: ""
    username: ""
    directory: "{workdir}"
    pidfile: ""
    do-ip6: no
    num-threads: 1
    module-config: "iterator"
    access-control: 127.0.0.0/8 allow
{data}
remote-control:
    control-enable: no
""")
            self.log = open(workdir / "unbound.log", "ab")
            self.proc = subprocess.Popen([str(binary), "-d", "-c", str(conf)], stdout=self.log, stderr=self.log)
            if self._answers(zone):
                return
            self.stop()
        raise RuntimeError(f"unbound did not start; see {workdir}")

    def _answers(self, zone, timeout_s=5.0):
        """Whether unbound answers a query for the zone's SOA in time."""
        name = b"".join(bytes([len(label)]) + label.encode() for label in zone.split(".")) + b"\0"
        query = bytes.fromhex("123401000001000000000000") + name + bytes.fromhex("00060001")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(0.2)
                try:
                    s.sendto(query, ("127.0.0.1", self.port))
                    s.recvfrom(512)
                    return True
                except OSError:
                    time.sleep(0.05)
        return False

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def unbound(tmp_path):
    servers = []

    def start(zone, records):
        server = Unbound(tmp_path / f"unbound{len(servers)}", zone, records)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


class Postfix:
    """A private Postfix (its own main.cf, master.cf, queue and log) whose
    smtpd listens on `addr:port` and relays everything it accepts to
    `[127.0.0.1]:relay_port`. `access` lines go into a texthash recipient
    access map checked first, so tests can refuse or defer chosen
    recipients; `set_access()` changes them and reloads."""

    def __init__(self, addr: str, port: int, relay_port: int, relay_domains, access=(), tls=None, main=()):
        # Postfix's daemons run as postfix and must reach their data
        # directory: not under pytest's private (0700) tmp_path.
        workdir = Path(tempfile.mkdtemp(prefix="ringpost-postfix-"))
        os.chmod(workdir, 0o755)
        self.workdir, self.port = workdir, port
        self.etc, self.spool, self.data = workdir / "etc", workdir / "spool", workdir / "data"
        for d in (self.etc, self.spool, self.data):
            d.mkdir(parents=True)
        shutil.chown(self.data, "postfix")
        self.log_path = workdir / "postfix.log"
        self.access = self.etc / "access"
        self.access.write_text("".join(f"{line}\n" for line in access))
        master = Path("/etc/postfix/master.cf").read_text().splitlines()
        master = ["#" + l if l.split()[:2] in (["smtp", "inet"], ["submission", "inet"], ["smtps", "inet"]) else l
                  for l in master]
        master.append(f"{addr}:{port} inet n - n - - smtpd")
        (self.etc / "master.cf").write_text("\n".join(master) + "\n")
        (self.etc / "main.cf").write_text(f"""compatibility_level = 3.6
queue_directory = {self.spool}
data_directory = {self.data}
inet_interfaces = all
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
myhostname = downstream.test
mydestination =
relay_domains = {' '.join(relay_domains)}
relay_transport = smtp:[127.0.0.1]:{relay_port}
default_transport = smtp:[127.0.0.1]:{relay_port}
smtpd_recipient_restrictions = check_recipient_access texthash:{self.access}, permit_mynetworks, reject_unauth_destination
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
maillog_file = {self.log_path}
maillog_file_prefixes = {workdir}
""")
        if tls is not None:
            cert, key = tls
            with open(self.etc / "main.cf", "a") as f:
                f.write(f"smtpd_tls_security_level = may\nsmtpd_tls_cert_file = {cert}\n"
                        f"smtpd_tls_key_file = {key}\nsmtpd_tls_loglevel = 1\n"
                        "smtpd_tls_received_header = yes\n")
        if main:
            # `main` lines ("name = value") replace the same parameter's line
            # above, or are added.
            cf = (self.etc / "main.cf").read_text().splitlines()
            for line in main:
                name = line.split("=")[0].strip()
                at = [i for i, l in enumerate(cf) if l.split("=")[0].strip() == name]
                if at:
                    cf[at[0]] = line
                else:
                    cf.append(line)
            (self.etc / "main.cf").write_text("\n".join(cf) + "\n")
        for f in ("/etc/postfix/dynamicmaps.cf", "/etc/postfix/postfix-files"):
            if Path(f).exists():
                shutil.copy(f, self.etc)
        if Path("/etc/postfix/postfix-files.d").is_dir():
            shutil.copytree("/etc/postfix/postfix-files.d", self.etc / "postfix-files.d")
        self._postfix("start")
        wait_port(port, host=addr)

    def _postfix(self, command):
        r = subprocess.run(["postfix", "-c", str(self.etc), command], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"postfix {command} failed: {r.stdout}{r.stderr}")

    def set_access(self, lines):
        self.access.write_text("".join(f"{line}\n" for line in lines))
        self._postfix("reload")

    def log_text(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self):
        subprocess.run(["postfix", "-c", str(self.etc), "stop"], capture_output=True)
        shutil.rmtree(self.workdir, ignore_errors=True)


@pytest.fixture
def postfix(tmp_path):
    started = []

    def start(addr, port, relay_port, relay_domains, access=(), tls=None):
        server = Postfix(addr, port, relay_port, relay_domains, access, tls)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# Postfix's tarpit off: by default smtpd delays every reply by 1 s once a
# session has had 10 refused commands and disconnects after 20, which
# slows the callouts sharing a reused connection rather than refusing them.
POSTFIX_NO_TARPIT = ["smtpd_error_sleep_time = 0s", "smtpd_soft_error_limit = 100000",
                     "smtpd_hard_error_limit = 100000"]


class DeptPostfix(Postfix):
    """A department's mail server: a private Postfix on 127.0.0.1:`port`,
    the final relay for `domain`, that knows its `users` from
    relay_recipient_maps, so anyone else gets Postfix's own "550 5.1.1
    <x@domain>: Recipient address rejected: User unknown in relay recipient
    table". What it accepts goes to `[127.0.0.1]:relay_port` (a sink).
    Every RCPT it answers is logged ("info: RCPT from ... to=<x@domain>"),
    beside Postfix's "connect from" and reject lines, so tests count the
    verifications that reached it. `restrictions` come first in
    smtpd_recipient_restrictions (for instance "sleep 3" for a slow server);
    `tarpit=False` turns Postfix's error tarpit off; `main` lines override
    the rest of main.cf."""

    def __init__(self, port: int, relay_port: int, users, domain="dept.uni.test", restrictions=(), tarpit=True,
                 main=()):
        self.domain = domain
        self.users_file = Path(tempfile.mkdtemp(prefix="ringpost-dept-")) / "users"
        self.users_file.parent.chmod(0o755)
        self.users_file.write_text("".join(f"{u} OK\n" for u in users))
        self.rcpt_log = self.users_file.parent / "rcpt-log"
        self.rcpt_log.write_text("/./ INFO rcpt\n")
        checks = [*restrictions, f"check_recipient_access regexp:{self.rcpt_log}",
                  "permit_mynetworks", "reject_unauth_destination"]
        lines = [f"myhostname = mail.{domain}", "alias_maps =",
                 f"relay_recipient_maps = texthash:{self.users_file}",
                 "smtpd_recipient_restrictions = " + ", ".join(checks),
                 *([] if tarpit else POSTFIX_NO_TARPIT), *main]
        super().__init__("127.0.0.1", port, relay_port, [domain], main=lines)

    def lines(self, needle, address=None):
        """Log lines containing `needle` (and `<address>`, if given)."""
        return [line for line in self.log_text().splitlines()
                if needle in line and (address is None or f"<{address}>" in line)]

    def connections(self):
        """SMTP connections accepted so far."""
        return len(self.lines(": connect from "))

    def rcpts(self, address=None):
        """RCPT commands answered so far (to `address`, if given)."""
        return len(self.lines("info: RCPT from", address))

    def rejects(self, address=None):
        """RCPT commands refused so far (to `address`, if given)."""
        return len(self.lines("NOQUEUE: reject: RCPT from", address))

    def stop(self):
        super().stop()
        shutil.rmtree(self.users_file.parent, ignore_errors=True)


@pytest.fixture
def dept_postfix():
    """Factory: dept_postfix(port, relay_port, users, ...) starts a
    department server (DeptPostfix); all are stopped after the test."""
    if shutil.which("postfix") is None and not Path("/usr/sbin/postfix").exists():
        missing_tool("postfix is not installed (tests/run installs it)")
    started = []

    def start(port, relay_port, users, **kwargs):
        server = DeptPostfix(port, relay_port, users, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def test_cert(tmp_path_factory):
    """A self-signed certificate and key for mx.test (openssl), PEM paths."""
    d = tmp_path_factory.mktemp("cert")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=mx.test", "-addext", "subjectAltName=DNS:mx.test",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    os.chmod(d, 0o755)
    return cert, key



class Dovecot:
    """A private Dovecot with only its LMTP service, on 127.0.0.1:`port` and
    the unix socket `socket`; users from a passwd-file, mail in
    `mail/<user>/Maildir`, owned by nobody."""

    def __init__(self, users):
        if shutil.which("dovecot") is None and not Path("/usr/sbin/dovecot").exists():
            missing_tool("dovecot is not installed (tests/run installs dovecot-lmtpd)")
        # Dovecot's processes run as nobody and dovecot: not under pytest's
        # private (0700) tmp_path.
        self.dir = Path(tempfile.mkdtemp(prefix="ringpost-dovecot-"))
        os.chmod(self.dir, 0o755)
        self.mail = self.dir / "mail"
        self.mail.mkdir()
        shutil.chown(self.mail, "nobody", "nogroup")
        run = self.dir / "run"
        run.mkdir()
        uid = int(subprocess.run(["id", "-u", "nobody"], capture_output=True, text=True).stdout)
        gid = int(subprocess.run(["id", "-g", "nobody"], capture_output=True, text=True).stdout)
        (self.dir / "users").write_text("".join(
            f"{u}::{uid}:{gid}::{self.mail}/{u}::\n" for u in users))
        self.port = free_port()
        self.socket = run / "lmtp"
        self.conf = self.dir / "dovecot.conf"
        self.conf.write_text(f"""base_dir = {run}
state_dir = {self.dir}/state
log_path = {self.dir}/dovecot.log
protocols = lmtp
listen = 127.0.0.1
ssl = no
first_valid_uid = 1
auth_username_format = %Ln
mail_location = maildir:{self.mail}/%n/Maildir
passdb {{
  driver = passwd-file
  args = {self.dir}/users
}}
userdb {{
  driver = passwd-file
  args = {self.dir}/users
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.port}
  }}
  unix_listener lmtp {{
    mode = 0666
  }}
}}
""")
        self.proc = subprocess.Popen(["dovecot", "-F", "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=open(self.dir / "stderr.log", "wb"))
        wait_port(self.port, proc=self.proc)
        wait_for(lambda: self.socket.exists(), what="dovecot's LMTP socket")

    def maildir_files(self, user):
        new = self.mail / user / "Maildir" / "new"
        return sorted(new.iterdir()) if new.is_dir() else []

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


@pytest.fixture
def dovecot():
    started = []

    def start(users):
        server = Dovecot(users)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def sbin_binary(name):
    """`name` on PATH or in /usr/sbin or /sbin, None if absent."""
    found = shutil.which(name)
    if found:
        return Path(found)
    for d in ("/usr/sbin", "/sbin"):
        if (Path(d) / name).is_file():
            return Path(d) / name
    return None


# The test strings every spam and virus scanner knows: GTUBE (SpamAssassin
# scores it 1000) and the EICAR test file (the private clamd's only
# signature).
GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
# What the private clamd calls it (signatures outside ClamAV's official
# databases get ".UNOFFICIAL").
EICAR_NAME = "Eicar-Test-Signature.UNOFFICIAL"


def wait_answer(port, request, expect, proc, what, timeout_s=20.0):
    """Waits until the daemon on 127.0.0.1:`port` answers `request` with
    a reply starting with `expect`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before answering")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2.0) as s:
                s.sendall(request)
                reply = s.recv(256)
                if reply.startswith(expect):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{what} does not answer on 127.0.0.1:{port}")


class PrivateDaemon:
    """What the private scanner daemons share: a process (`proc`) writing
    to `output`, its log at `log_path`, its files under `dir`."""

    def log_text(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.output.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Spamd(PrivateDaemon):
    """A private spamd: SpamAssassin's rules as the package ships them
    (/usr/share/spamassassin, never sa-update's), no network tests (-L), no
    per-user settings (-x), no Bayes and no learning, on 127.0.0.1:`port`
    (`address`) and the unix socket `socket` (`unix_address`). GTUBE scores
    1000 and more; its required score is 5.0."""

    RULES = Path("/usr/share/spamassassin")

    def __init__(self):
        binary = sbin_binary("spamd")
        if binary is None:
            missing_tool("spamd is not installed (tests/run installs spamassassin and spamd)")
        pre = sorted(Path("/etc/spamassassin").glob("*.pre"))
        if not pre or not (self.RULES / "10_default_prefs.cf").exists():
            missing_tool("SpamAssassin's rules or plugin list are missing (tests/run installs spamassassin)")
        # spamd scans as nobody when started as root: not under pytest's
        # private (0700) tmp_path.
        self.dir = Path(tempfile.mkdtemp(prefix="ringpost-spamd-"))
        os.chmod(self.dir, 0o755)
        site = self.dir / "site"
        site.mkdir()
        # The plugin list (.pre files) from the package; local settings of
        # this machine's /etc/spamassassin are not taken.
        for p in pre:
            shutil.copy(p, site)
        (site / "local.cf").write_text("use_bayes 0\nbayes_auto_learn 0\ndns_available no\nskip_rbl_checks 1\n")
        self.port = free_port()
        self.socket = self.dir / "spamd.sock"
        self.address = f"127.0.0.1:{self.port}"
        self.unix_address = f"unix:{self.socket}"
        self.log_path = self.dir / "spamd.log"
        args = [str(binary), "--listen", self.address, "--listen", str(self.socket), "--socketmode", "0666",
                "--allowed-ips", "127.0.0.1", "-x", "-L", "--min-children", "1", "--max-children", "2",
                "-C", str(self.RULES), "--siteconfigpath", str(site), "-s", "stderr"]
        if os.geteuid() == 0:
            args += ["-u", "nobody"]
        self.output = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, cwd=self.dir, stdout=self.output, stderr=self.output)
        try:
            wait_answer(self.port, b"PING SPAMC/1.5\r\n\r\n", b"SPAMD/", self.proc, "spamd")
        except Exception:
            self.stop()
            raise


@pytest.fixture(scope="session")
def spamd():
    """One private spamd (Spamd) for the whole session: it keeps no state
    between messages (no Bayes, no learning, no per-user settings)."""
    server = Spamd()
    yield server
    server.stop()


class Clamd(PrivateDaemon):
    """A private clamd on 127.0.0.1:`port` (`address`) and the unix socket
    `socket` (`unix_address`), its database one signature for the EICAR
    test string (`EICAR_NAME`), no freshclam. `conf` lines ("Name value")
    are added to its clamd.conf, e.g. "StreamMaxLength 1M"."""

    def __init__(self, conf=()):
        binary = sbin_binary("clamd")
        if binary is None:
            missing_tool("clamd is not installed (tests/run installs clamav-daemon)")
        self.dir = Path(tempfile.mkdtemp(prefix="ringpost-clamd-"))
        os.chmod(self.dir, 0o755)
        db = self.dir / "db"
        db.mkdir()
        # An extended (.ndb) signature: name, any file type, any offset, hex.
        (db / "eicar.ndb").write_text(f"Eicar-Test-Signature:0:*:{EICAR.hex()}\n")
        self.port = free_port()
        self.socket = self.dir / "clamd.sock"
        self.address = f"127.0.0.1:{self.port}"
        self.unix_address = f"unix:{self.socket}"
        self.log_path = self.dir / "clamd.log"
        self.conf = self.dir / "clamd.conf"
        lines = [f"TCPSocket {self.port}", "TCPAddr 127.0.0.1", f"LocalSocket {self.socket}", "LocalSocketMode 666",
                 "Foreground yes", f"DatabaseDirectory {db}", f"TemporaryDirectory {self.dir}",
                 f"LogFile {self.log_path}", "LogTime yes", "SelfCheck 0", "MaxThreads 4", *conf]
        self.conf.write_text("".join(f"{line}\n" for line in lines))
        self.output = open(self.dir / "clamd.out", "ab")
        self.proc = subprocess.Popen([str(binary), "-c", str(self.conf)], cwd=self.dir,
                                     stdout=self.output, stderr=self.output)
        try:
            wait_answer(self.port, b"zPING\0", b"PONG\0", self.proc, "clamd")
            wait_for(lambda: self.socket.exists(), timeout_s=10, what="clamd's unix socket")
        except Exception:
            self.stop()
            raise


@pytest.fixture(scope="session")
def clamd():
    """One private clamd (Clamd) for the whole session; a test that needs
    other settings starts its own Clamd(conf=[...]) and stops it."""
    server = Clamd()
    yield server
    server.stop()


class Rspamd(PrivateDaemon):
    """A private rspamd: the package's configuration and rules
    (/etc/rspamd, /usr/share/rspamd) with a private local.d/override.d
    that keeps only the scanner worker ("normal", on 127.0.0.1:`port`,
    `address`, and the unix socket `socket`, `unix_address`), and turns
    off everything that needs redis or the network (RBLs, SPF, DKIM,
    DMARC, fuzzy hashes, maps fetched over HTTP, ...). DNS goes to a
    closed loopback port, so a lookup fails at once instead of waiting.
    GTUBE gets the action "reject"."""

    CONFDIR = Path("/etc/rspamd")
    # Modules that query DNS, redis or remote maps, or export to servers.
    OFF = ("antivirus", "arc", "asn", "bimi", "clickhouse", "dcc", "dkim", "dkim_signing", "dmarc", "elastic",
           "emails", "external_services", "fuzzy_check", "greylist", "history_redis", "metadata_exporter",
           "hfilter", "multimap", "mx_check", "neural", "p0f", "phishing", "ratelimit", "rbl", "replies", "reputation",
           "rspamd_update", "spf", "surbl", "url_redirector", "whitelist")

    def __init__(self):
        binary = sbin_binary("rspamd")
        if binary is None:
            missing_tool("rspamd is not installed (tests/run installs it)")
        if not (self.CONFDIR / "rspamd.conf").exists():
            missing_tool("rspamd's shipped configuration /etc/rspamd/rspamd.conf is missing (tests/run installs it)")
        # The workers run as _rspamd when started as root: not under
        # pytest's private (0700) tmp_path.
        self.dir = Path(tempfile.mkdtemp(prefix="ringpost-rspamd-"))
        os.chmod(self.dir, 0o755)
        local = self.dir / "local.d"
        override = self.dir / "override.d"
        local.mkdir()
        override.mkdir()
        self.port = free_port()
        self.socket = self.dir / "rspamd.sock"
        self.address = f"127.0.0.1:{self.port}"
        self.unix_address = f"unix:{self.socket}"
        self.log_path = self.dir / "rspamd.log"
        (override / "worker-normal.inc").write_text(
            f'bind_socket = "127.0.0.1:{self.port}";\n'
            f'bind_socket = "{self.socket} mode=0666";\n'
            "count = 1;\n")
        for worker in ("worker-controller.inc", "worker-proxy.inc", "worker-fuzzy.inc"):
            (override / worker).write_text("enabled = false;\ncount = 0;\n")
        (local / "options.inc").write_text(
            'dns { nameserver = ["127.0.0.1:1"]; timeout = 0.1s; retransmits = 1; }\n'
            'control_socket = "";\n')
        (override / "logging.inc").write_text(f'type = "file";\nfilename = "{self.log_path}";\nlevel = "notice";\n')
        for module in self.OFF:
            (local / f"{module}.conf").write_text("enabled = false;\n")
        args = [str(binary), "-f", "-c", str(self.CONFDIR / "rspamd.conf"),
                "--var", f"CONFDIR={self.CONFDIR}", "--var", f"LOCAL_CONFDIR={self.dir}",
                "--var", f"DBDIR={self.dir}", "--var", f"RUNDIR={self.dir}", "--var", f"LOGDIR={self.dir}"]
        if os.geteuid() == 0:
            args += ["-u", "_rspamd", "-g", "_rspamd"]
            shutil.chown(self.dir, "_rspamd", "_rspamd")
        self.output = open(self.dir / "rspamd.out", "ab")
        self.proc = subprocess.Popen(args, cwd=self.dir, stdout=self.output, stderr=self.output)
        try:
            # rspamd compiles its TLD list and regular expressions before
            # its worker listens: on a small machine that takes a while.
            wait_answer(self.port, b"GET /ping HTTP/1.0\r\n\r\n", b"HTTP/1.", self.proc, "rspamd", timeout_s=180)
            wait_for(lambda: self.socket.exists(), timeout_s=10, what="rspamd's unix socket")
        except Exception:
            self.stop()
            raise


@pytest.fixture(scope="session")
def rspamd():
    """One private rspamd (Rspamd) for the whole session: no redis, so it
    keeps no state between messages (no Bayes, no greylisting, no rates)."""
    server = Rspamd()
    yield server
    server.stop()


# --- Outbound TLS: a test certificate authority, signed DNS zones --------

class TestCA:
    """A certificate authority made with openssl for one test: `issue(names)`
    gives a server certificate (PEM chain: leaf, then the CA) and its key
    for those DNS names. Files are world-readable (Postfix's smtpd reads
    them)."""

    def __init__(self, directory: Path, name="Ringpost Test CA"):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.cert, self.key = self.dir / "ca.pem", self.dir / "ca.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                        "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
                        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
                        "-keyout", str(self.key), "-out", str(self.cert)], check=True, capture_output=True)
        self.count = 0

    def issue(self, names):
        self.count += 1
        base = self.dir / f"leaf{self.count}"
        key, csr, leaf, chain = (base.with_suffix(s) for s in (".key", ".csr", ".leaf.pem", ".pem"))
        ext = base.with_suffix(".ext")
        ext.write_text("basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
                       "subjectAltName=" + ",".join(f"DNS:{n}" for n in names) + "\n")
        subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={names[0]}",
                        "-keyout", str(key), "-out", str(csr)], check=True, capture_output=True)
        subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(self.cert), "-CAkey", str(self.key),
                        "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(leaf)],
                       check=True, capture_output=True)
        chain.write_bytes(leaf.read_bytes() + self.cert.read_bytes())
        for f in (key, leaf, chain):
            os.chmod(f, 0o644)
        return chain, key


@pytest.fixture
def test_ca():
    """Factory: test_ca(name) makes a TestCA; removed after the test."""
    made = []

    def make(name="Ringpost Test CA"):
        ca = TestCA(Path(tempfile.mkdtemp(prefix="ringpost-ca-")), name)
        made.append(ca)
        return ca

    yield make
    for ca in made:
        shutil.rmtree(ca.dir, ignore_errors=True)


class SignedUnbound:
    """A private validating unbound on 127.0.0.1 and a free port that is
    authoritative for zone files it is given (`auth-zone`), each signed with
    ldns-signzone when asked, and trusts the signed ones' keys
    (`trust-anchor-file`): answers from a signed zone carry the AD bit,
    answers from an unsigned one do not. `zones` maps a zone name to
    (records, signed). `tamper` maps a zone name to (old, new): text of the
    signed zone file replaced after signing, so that its signatures no
    longer match (unbound then answers SERVFAIL for that RRset)."""

    def __init__(self, workdir: Path, zones, tamper=None):
        binary = unbound_binary()
        if binary is None:
            missing_tool("unbound is not installed (tests/run installs it)")
        if shutil.which("ldns-signzone") is None:
            missing_tool("ldns-signzone is not installed (tests/run installs ldnsutils)")
        workdir.mkdir(parents=True, exist_ok=True)
        auth, anchors = [], []
        for zone, (records, signed) in zones.items():
            text = (f"$ORIGIN {zone}.\n$TTL 300\n@ IN SOA ns.{zone}. admin.{zone}. 1 3600 600 86400 60\n"
                    f"@ IN NS ns.{zone}.\nns IN A 127.0.0.1\n" + "".join(f"{r}\n" for r in records))
            path = workdir / f"{zone}.zone"
            path.write_text(text)
            if signed:
                key = subprocess.run(["ldns-keygen", "-a", "ECDSAP256SHA256", "-k", zone], cwd=workdir,
                                     check=True, capture_output=True, text=True).stdout.strip()
                subprocess.run(["ldns-signzone", str(path), key], cwd=workdir, check=True,
                               capture_output=True)
                path = workdir / f"{zone}.zone.signed"
                anchors.append(workdir / f"{key}.ds")
                if tamper and zone in tamper:
                    old, new = tamper[zone]
                    signed_text = path.read_text()
                    assert old in signed_text, f"{old!r} not in the signed {zone}"
                    path.write_text(signed_text.replace(old, new))
            auth.append(f'auth-zone:\n    name: "{zone}."\n    zonefile: "{path}"\n    for-upstream: yes\n'
                        "    for-downstream: no\n    fallback-enabled: no\n")
        trust = "".join(f'    trust-anchor-file: "{a}"\n' for a in anchors)
        # unbound answers names under test., invalid. etc. itself (RFC 6761
        # defaults) unless told not to.
        trust += "".join(f'    local-zone: "{tld}." nodefault\n' for tld in {z.rsplit(".", 1)[-1] for z in zones})
        for _ in range(5):
            self.port = free_port()
            conf = workdir / "unbound.conf"
            conf.write_text(f"""server:
    interface: 127.0.0.1@{self.port}
    port: {self.port}
    do-daemonize: no
    use-syslog: no
    logfile: ""
    chroot: ""
    username: ""
    directory: "{workdir}"
    pidfile: ""
    do-ip6: no
    num-threads: 1
    module-config: "validator iterator"
    access-control: 127.0.0.0/8 allow
    val-log-level: 2
{trust}
remote-control:
    control-enable: no
{''.join(auth)}""")
            self.log = open(workdir / "unbound.log", "ab")
            self.proc = subprocess.Popen([str(binary), "-d", "-c", str(conf)], stdout=self.log, stderr=self.log)
            if Unbound._answers(self, next(iter(zones))):
                return
            self.stop()
        raise RuntimeError(f"unbound did not start; see {workdir}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture
def signed_unbound(tmp_path):
    """Factory: signed_unbound({zone: (records, signed)}) starts a
    SignedUnbound; all are stopped after the test."""
    servers = []

    def start(zones, tamper=None):
        server = SignedUnbound(tmp_path / f"signed-unbound{len(servers)}", zones, tamper)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
