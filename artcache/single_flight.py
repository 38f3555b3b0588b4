"""Single-flight compiles: when several processes miss the same key at once, one compiles
and the others wait for its entry.

A job that starts 8 ranks, or a CI matrix that starts the same model 8 times, misses the
same keys at the same moment.  Without this, 8 processes compile the same graph at once
and fight for the same cores.  With it, the first to take the key's lease (a ``flock`` on
the local tier, ``SET NX`` with a TTL on Redis: :mod:`artcache.store.leases`) compiles and
saves; the others poll the store for the manifest and load it when it appears.

Never a hang, never a lost compile:

* the wait is bounded (``max_wait_s``) and logged; past it a waiter compiles itself;
* a leader that dies loses its lease (the kernel drops the ``flock``; Redis lets the key
  expire), and the next waiter to find the lease free takes it over;
* a store that cannot lease, or any store error while leasing, means "compile now";
* ``ARTCACHE_SINGLE_FLIGHT=0`` turns it off.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .errors import StoreError
from .store import Store, ac_key
from .store.leases import Lease

log = logging.getLogger(__name__)

DEFAULT_MAX_WAIT_S = 600.0
# A waiter checks for the manifest (one stat on a local tier, one EXISTS on Redis) from every
# 50 ms up to every 150 ms: a waiter sees the entry at most 150 ms after it is saved, and
# sixteen waiters cost about a hundred cheap checks a second.
_POLL_START_S = 0.05
_POLL_MAX_S = 0.15


@dataclass(frozen=True)
class Turn:
    """What :func:`turn` decided.  ``compile``: this process compiles (it leads, or there is
    nobody to wait for, or it waited too long); otherwise another process saved the entry
    while this one waited, and it should be loaded.  ``waited_s``: time spent waiting."""

    compile: bool
    waited_s: float = 0.0
    reason: str = ""


@contextlib.contextmanager
def turn(
    store: Store, key: str, *, enabled: bool = True, max_wait_s: float = DEFAULT_MAX_WAIT_S,
    clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Turn]:
    """Decide who compiles ``key``.  Holds the lease (if this process leads) until the
    block exits: compile and save inside it, so waiters find the entry when it frees."""
    if not enabled or store.read_only or not store.supports_leases:
        yield Turn(True, reason="off" if not enabled else "no-leases")
        return
    manifest = ac_key(key)
    if _saved(store, manifest):
        # The entry is there and this process could not use it (damaged, refused, guards):
        # nobody is about to save a better one, so there is nothing to wait for.
        yield Turn(True, reason="entry-unusable")
        return
    start = clock()
    delay = _POLL_START_S
    lease: Lease | None = None
    announced = False
    try:
        while True:
            try:
                lease = store.try_lease(manifest)
            except StoreError as exc:
                log.debug("artcache: no lease for %s (%s): compiling", key[:16], exc)
                yield Turn(True, clock() - start, "lease-error")
                return
            if lease is not None:
                # Leading.  The entry may have appeared between our miss and now (the previous
                # leader finished): then load it instead of compiling again.
                if _saved(store, manifest):
                    lease.release()
                    lease = None
                    yield Turn(False, clock() - start, "saved")
                    return
                if announced:
                    # We waited and the leader let go without saving an entry (the graph was
                    # uncacheable, or its compile failed).  Leading now would make every
                    # waiter compile in turn; let go and compile alongside the others.
                    lease.release()
                    lease = None
                    yield Turn(True, clock() - start, "leader-left-no-entry")
                    return
                yield Turn(True, clock() - start, "leader")
                return
            if _saved(store, manifest):
                yield Turn(False, clock() - start, "saved")
                return
            waited = clock() - start
            if waited >= max_wait_s:
                log.warning("artcache: waited %.0f s for another process to compile %s; compiling here",
                            waited, key[:16])
                yield Turn(True, waited, "wait-timeout")
                return
            if not announced:
                log.info("artcache: another process is compiling %s; waiting for its entry", key[:16])
                announced = True
            sleep(delay)
            delay = min(delay * 1.5, _POLL_MAX_S)
    finally:
        if lease is not None:
            lease.release()


def _saved(store: Store, manifest: str) -> bool:
    try:
        return store.has(manifest)
    except StoreError:
        return False
