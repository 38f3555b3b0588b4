"""Leases: one holder at a time for a name, released when the holder lets go or dies.

A store that supports leases (``Store.try_lease``) lets one of several processes that
missed the same key compile it while the others wait for its entry (``single_flight``).

* :class:`FileLease` (local directory): ``flock`` on ``<root>/leases/<name>``.  The kernel
  drops the lock when the holder's file descriptor closes, including when the process
  dies, so a dead leader never blocks anyone.  The file is opened with ``O_NOFOLLOW``
  relative to the leases directory, never through a symlink.
* :class:`RedisLease`: ``SET <name> <token> NX PX <ttl>``, renewed by a daemon thread every
  third of the TTL while held, and deleted only if it still holds our token (a Lua
  compare-and-delete).  A holder that dies stops renewing and the lease expires.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import threading
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 30.0


class Lease:
    """A held lease; :meth:`release` lets go (idempotent).  Usable as a context manager."""

    def release(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class FileLease(Lease):
    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def try_acquire(cls, directory: str, name: str) -> FileLease | None:
        """The lease on ``directory/name``, or ``None`` if another process holds it.
        ``name`` is a validated store key name (hex digits only)."""
        os.makedirs(directory, exist_ok=True)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError:
            os.close(fd)
            raise
        return cls(fd)

    def release(self) -> None:
        # Closing the descriptor drops the flock.  The file stays: unlinking it would race
        # with a process that opened it a moment ago and is about to lock it.
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
_RENEW = ("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) "
          "else return 0 end")


class RedisLease(Lease):
    def __init__(self, client: Any, name: str, token: str, ttl_s: float) -> None:
        self._client, self._name, self._token, self._ttl_ms = client, name, token, int(ttl_s * 1000)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="artcache-lease", daemon=True)
        self._thread.start()

    @classmethod
    def try_acquire(cls, client: Any, name: str, ttl_s: float = DEFAULT_TTL_S) -> RedisLease | None:
        token = secrets.token_hex(16)
        if not client.set(name, token, nx=True, px=int(ttl_s * 1000)):
            return None
        return cls(client, name, token, ttl_s)

    def _renew(self) -> None:
        while not self._stop.wait(self._ttl_ms / 3000):
            try:
                if not self._client.eval(_RENEW, 1, self._name, self._token, self._ttl_ms):
                    return  # expired meanwhile (a long stall): another process may lead now
            except Exception as exc:  # noqa: BLE001 - a renewal thread must never die loudly
                # Redis errors of any kind: the lease then expires and another process takes
                # over, which is the designed outcome of a lost holder.
                log.debug("artcache: lease renewal of %s failed: %s", self._name, exc)
                return

    def release(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        try:
            self._client.eval(_RELEASE, 1, self._name, self._token)
        except Exception as exc:  # noqa: BLE001 - the lease expires by itself
            log.debug("artcache: releasing lease %s failed (it will expire): %s", self._name, exc)
