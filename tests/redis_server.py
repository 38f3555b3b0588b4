"""A real ``redis-server`` for tests: started on a free loopback port in a temp dir, stopped after.

Fixtures (import them into a test module to use them)::

    redis_server        one server for the whole session (tests isolate by namespace)
    fresh_redis_server  a server of the test's own, for tests that kill or pause it

Both skip, with the reason, when ``redis-server`` or redis-py is not installed
(``scripts/test.sh`` installs both).
"""

from __future__ import annotations

import os
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


def _free_port() -> int:
    # The OS picks a free port; we release it and hand it to redis-server.  Another
    # process may take it in between: start() retries on a new port if the bind fails.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    """One ``redis-server`` process: no persistence, loopback only."""

    directory: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, attempts: int = 3) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server")
        last_log = ""
        for _ in range(attempts):
            self.port = _free_port()
            log = self.directory / f"redis-{self.port}.log"
            self.process = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(self.directory), "--logfile", str(log), "--daemonize", "no"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            if self._wait_ready():
                return self
            self.stop()
            last_log = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        raise RuntimeError(f"redis-server did not start:\n{last_log}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False  # exited: most likely the port was taken meanwhile
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown, connections reset."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def restart(self) -> None:
        """Start again on the same port after a kill or stop (clients reconnect to it)."""
        self.stop()
        binary = shutil.which("redis-server")
        assert binary is not None
        log = self.directory / f"redis-{self.port}-restart.log"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory), "--logfile", str(log), "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        if not self._wait_ready():
            raise RuntimeError(f"redis-server did not restart on port {self.port}")

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing answers (a stalled server)."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.resume()  # a paused server cannot act on SIGTERM
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def _require_redis() -> None:
    pytest.importorskip("redis", reason="redis-py is not installed (pip install 'artcache[redis]')")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (scripts/test.sh installs it: apt-get install redis-server)")


def _serve() -> Iterator[RedisServer]:
    _require_redis()
    with tempfile.TemporaryDirectory(prefix="artcache-redis-") as tmp:
        server = RedisServer(Path(tmp)).start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    yield from _serve()


@pytest.fixture
def fresh_redis_server() -> Iterator[RedisServer]:
    yield from _serve()
