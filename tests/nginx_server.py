"""A real nginx for tests: WebDAV PUT/DELETE and JSON listings on a free loopback port.

Debian's ``/usr/sbin/nginx`` runs with a generated config, a prefix, pid, logs and temp
paths all under its own temp directory, so it needs no root privileges and touches
nothing outside that directory.  One process serves several locations, each a store
root with its own rules:

    /open/     no authentication, directory listings as JSON (``autoindex_format json``)
    /nolist/   no authentication, no listings (like bazel-remote, which cannot list)
    /basic/    HTTP basic authentication (``auth_basic`` with a generated password file)
    /bearer/   a bearer token (``Authorization: Bearer <token>``)

``https_port`` serves the same locations over TLS with a self-signed certificate for
``127.0.0.1`` (``cert_path``) when ``openssl`` is installed; ``tls_skip_reason`` says why
not otherwise.

Fixtures (import them into a test module to use them)::

    nginx_server        one server for the whole session (tests isolate by a path prefix)
    fresh_nginx_server  a server of the test's own, for tests that stop it

It skips, with the reason, when nginx or its WebDAV module is missing
(``scripts/test.sh`` installs nginx).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

START_TIMEOUT_S = 10.0
BASIC_USER = "builder"
BASIC_PASSWORD = "pw-basic-5f1e9c"
BEARER_TOKEN = "tok-bearer-8a2d47"
_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")


def nginx_binary() -> str | None:
    for path in _CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("nginx")


def _has_dav(binary: str) -> bool:
    # ``nginx -V`` prints its configure arguments to stderr.
    proc = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=10)
    return "--with-http_dav_module" in proc.stderr + proc.stdout


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _self_signed_cert(directory: Path) -> tuple[Path, Path] | str:
    """(certificate, key) for 127.0.0.1, or why there is none."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return "openssl is not installed: no certificate for the TLS tests"
    cert, key = directory / "cert.pem", directory / "key.pem"
    proc = subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        capture_output=True, text=True, timeout=60,
    )
    if proc.returncode != 0:
        return f"openssl could not make a certificate: {proc.stderr.strip()[-300:]}"
    return cert, key


_LOCATIONS = """
        location /open/ {{ {dav} autoindex on; autoindex_format json; }}
        location /nolist/ {{ {dav} }}
        location /basic/ {{ {dav} autoindex on; autoindex_format json;
            auth_basic "artcache"; auth_basic_user_file {htpasswd}; }}
        location /bearer/ {{ {dav} autoindex on; autoindex_format json;
            if ($http_authorization != "Bearer {token}") {{ return 401; }} }}
"""

_CONFIG = """
{user}
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    client_max_body_size 0;
    sendfile on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {dir}/root;
        {locations}
    }}
    {tls_server}
}}
"""

_TLS_SERVER = """server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {dir}/root;
        {locations}
    }}"""


@dataclass
class NginxServer:
    """One nginx master process (and its one worker) on loopback ports."""

    directory: Path
    port: int = 0
    https_port: int = 0
    cert_path: Path | None = None
    tls_skip_reason: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def root(self) -> Path:
        """The directory nginx serves: ``<root>/open/...`` is ``http://.../open/...``."""
        return self.directory / "root"

    def url(self, location: str = "open", prefix: str = "") -> str:
        path = f"/{location}/{prefix}".rstrip("/")
        return f"http://127.0.0.1:{self.port}{path}"

    def https_url(self, location: str = "open", prefix: str = "") -> str:
        path = f"/{location}/{prefix}".rstrip("/")
        return f"https://127.0.0.1:{self.https_port}{path}"

    def _write_config(self) -> Path:
        d = self.directory
        for sub in ("tmp", "root/open", "root/nolist", "root/basic", "root/bearer"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        # nginx's {PLAIN} scheme: a test password needs no crypt() hashing.
        (d / "htpasswd").write_text(f"{BASIC_USER}:{{PLAIN}}{BASIC_PASSWORD}\n")
        dav = "dav_methods PUT DELETE; create_full_put_path on; dav_access user:rw;"
        locations = _LOCATIONS.format(dav=dav, htpasswd=d / "htpasswd", token=BEARER_TOKEN)
        tls_server = ""
        if self.cert_path is not None:
            tls_server = _TLS_SERVER.format(port=self.https_port, cert=self.cert_path, key=d / "key.pem",
                                            dir=d, locations=locations)
        # Run as root, nginx would hand its worker to ``nobody``, which cannot enter this
        # private temp dir: keep the worker as the user running the tests.
        user = ""
        if os.geteuid() == 0:
            user = f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};"
        config = _CONFIG.format(user=user, dir=d, port=self.port, locations=locations, tls_server=tls_server)
        path = d / "nginx.conf"
        path.write_text(config)
        return path

    def start(self, attempts: int = 3) -> NginxServer:
        binary = nginx_binary()
        if binary is None:
            raise FileNotFoundError("nginx")
        cert = _self_signed_cert(self.directory)
        if isinstance(cert, str):
            self.tls_skip_reason = cert
        else:
            self.cert_path = cert[0]
        last_log = ""
        for _ in range(attempts):
            self.port = _free_port()
            self.https_port = _free_port() if self.cert_path is not None else 0
            config = self._write_config()
            self.process = subprocess.Popen(
                [binary, "-p", str(self.directory), "-c", str(config), "-e", str(self.directory / "error.log"),
                 "-g", "daemon off;"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            if self._wait_ready():
                return self
            self.stop()
            log = self.directory / "error.log"
            last_log = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"nginx did not start:\n{last_log}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        ports = [p for p in (self.port, self.https_port) if p]
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False  # exited: most likely a port was taken meanwhile
            try:
                for port in ports:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return True
            except OSError:
                time.sleep(0.02)
        return False

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def pause(self) -> None:
        """SIGSTOP the master and its worker: connections are accepted by the kernel
        (the listen backlog) but nothing answers, as with a stalled server."""
        for pid in self.all_pids():
            os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        for pid in self.all_pids():
            os.kill(pid, signal.SIGCONT)

    def all_pids(self) -> list[int]:
        pids = [self.pid]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                # field 4 of /proc/<pid>/stat is the parent pid (after the ")" of the name)
                if int(stat.rsplit(")", 1)[1].split()[1]) == self.pid:
                    pids.append(int(entry.name))
        return pids

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.resume()  # a stopped nginx cannot act on SIGQUIT
        self.process.send_signal(signal.SIGQUIT)  # graceful: the worker exits too
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def require_nginx() -> str:
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (scripts/test.sh installs it: apt-get install nginx)")
    if not _has_dav(binary):
        pytest.skip(f"{binary} was built without the WebDAV module (--with-http_dav_module)")
    pytest.importorskip("urllib3", reason="urllib3 is not installed (pip install 'artcache[http]')")
    return binary


def serve() -> Iterator[NginxServer]:
    require_nginx()
    with tempfile.TemporaryDirectory(prefix="artcache-nginx-") as tmp:
        server = NginxServer(Path(tmp)).start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def nginx_server() -> Iterator[NginxServer]:
    yield from serve()


@pytest.fixture
def fresh_nginx_server() -> Iterator[NginxServer]:
    yield from serve()
