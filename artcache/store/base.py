"""The ``Store`` protocol: bytes in, bytes out, a miss is ``None``.

Every backend (local directory, memory, Redis, tiered) implements these few methods and
passes the shared conformance suite in ``tests/store_conformance.py``.

Keys live in two keyspaces, like a build cache (bazel-remote's CAS / action cache):

* ``cas/<sha256>``: immutable blobs, addressed by the SHA-256 of their bytes.
* ``ac/<sha256>``:  manifests, addressed by the cache key (a digest of named factors).

Keys are validated everywhere so that a key can never name a path outside a store.
"""

from __future__ import annotations

import difflib
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from ..entry import MAX_MANIFEST_BYTES as ENTRY_MANIFEST_CAP
from ..errors import CorruptEntryError, StoreError
from .leases import Lease

KEYSPACES = ("cas", "ac")
# No store writes a manifest (``ac/`` value) larger than this, and the local and Redis
# stores refuse to read one before allocating it: a manifest is parsed, so its size is
# bounded before a byte of it is read.
MAX_MANIFEST_BYTES = ENTRY_MANIFEST_CAP
# fullmatch, not ``$``: ``$`` also matches before a trailing newline, which would let
# "cas/<hex>\n" alias "cas/<hex>" in one backend and be a different key in another.
_KEY_RE = re.compile(r"(cas|ac)/([0-9a-f]{64})")


def check_key(key: str) -> tuple[str, str]:
    """Split a key into (keyspace, name); raise ``StoreError`` on anything malformed."""
    match = _KEY_RE.fullmatch(key) if isinstance(key, str) else None
    if match is None:
        raise StoreError(f"invalid store key {key!r}: expected 'cas/<sha256>' or 'ac/<sha256>'")
    return match.group(1), match.group(2)


def unknown_option_message(shown_url: str, name: str, known: Iterable[str]) -> str:
    """One line refusing URL option ``name`` by name, with the nearest known one."""
    known = list(known)
    near = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {near[0]!r}? " if near else ""
    return f"{shown_url}: unknown option {name!r} ({hint}known: {', '.join(known)})"


def cas_key(digest: str) -> str:
    return f"cas/{digest}"


def ac_key(cache_key: str) -> str:
    return f"ac/{cache_key}"


@dataclass(frozen=True)
class KeyInfo:
    """One stored key as listed by :meth:`Store.iterate`."""

    key: str
    size: int
    last_used: float  # seconds since the epoch; best effort (backends without it use 0.0)


# Called by a store that refused a value it read (key, why), so the caller's error policy
# hears of corruption that the store itself turned into a miss.
CorruptHandler = Callable[[str, str], None]


class Store(ABC):
    """A flat byte store.  Backends raise ``StoreError``; they never decide policy.

    Capabilities are declared here, with the defaults of a plain store, and overridden by
    the backends that have them; callers read them, they never probe a backend's type.
    """

    url: str = ""
    read_only: bool = False
    # get() checks each value's integrity itself (a checksum trailer) and returns None for
    # a value that fails, so a tiered store need not hash what it returns again.
    verifies_content: bool = False
    # Where a verifying store reports each value it refused (a local store: each damaged
    # file it set aside); set by whoever opened it.
    on_corrupt: CorruptHandler | None = None
    # Its contents outlive the process (false for an in-process store): then, when it has
    # no local_root, this machine's activity with it is kept in a stats directory.
    persistent: bool = True

    @property
    def local_root(self) -> Path | None:
        """The directory of a local store (per-machine activity is kept there), else None."""
        return None

    def quarantined_files(self) -> int:
        """How many files this store has set aside after they failed a check."""
        return 0

    def try_lease(self, key: str) -> Lease | None:
        """A lease on ``key`` for single-flight compiles, or ``None`` when another process
        holds it.  Raises ``StoreError`` where the store cannot lease (the default): the
        caller then compiles without waiting for anyone."""
        raise StoreError(f"store {self.url} has no leases")

    supports_leases: bool = False
    # True where get_bounded learns a value's size before reading it (never allocates
    # past the bound); the default implementation below reads first, then checks.
    bounded_reads: bool = False
    can_list: bool = True  # False: ``iterate`` raises StoreError (e.g. bazel-remote has no listing)

    @abstractmethod
    def get(self, key: str) -> bytes | None:
        """The bytes stored under ``key``, or ``None``.  Corrupt data reads as ``None``."""

    def peek(self, key: str) -> bytes | None:
        """Like :meth:`get`, but does not count as a use for LRU eviction (listing,
        verifying or planning a gc must not make every entry look recently used)."""
        return self.get(key)

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        """Several gets; network backends override this to pipeline them."""
        return {key: self.get(key) for key in keys}

    def get_bounded(self, key: str, max_bytes: int) -> bytes | None:
        """Like :meth:`get`, but a value of more than ``max_bytes`` raises
        ``CorruptEntryError`` (it is refused, and left in place)."""
        return self.get_many_bounded({key: max_bytes})[key]

    def get_many_bounded(self, bounds: Mapping[str, int]) -> dict[str, bytes | None]:
        """Several :meth:`get_bounded`, each key with its own bound."""
        found = self.get_many(bounds)
        for key, data in found.items():
            if data is not None and len(data) > bounds[key]:
                raise CorruptEntryError(f"{key} in {self.url} holds {len(data)} bytes, more than the {bounds[key]} expected")
        return found

    def quarantine(self, key: str) -> None:
        """A reader refused the value under ``key`` (for ``cas/``: it fails its SHA-256
        address): set it aside so that the next legitimate put rewrites it.  The store
        checks the value again itself, so a good value written meanwhile is kept.  Best
        effort; the default does nothing (a put replaces the value anyway)."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically: readers see the old value, the new
        value or nothing, never a torn one.  Raises ``StoreError`` if read-only."""

    def put_many(self, items: Mapping[str, bytes]) -> None:
        for key, data in items.items():
            self.put(key, data)

    @abstractmethod
    def has(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> bool:
        """Remove ``key``; ``True`` if something was removed."""

    @abstractmethod
    def iterate(self, prefix: str = "") -> Iterator[KeyInfo]:
        """Every key starting with ``prefix`` (e.g. ``"ac/"``), in no particular order.
        A store with ``can_list = False`` raises ``StoreError`` instead."""

    def close(self) -> None:
        """Release connections or handles.  The default has none."""

    def _check_writable(self) -> None:
        if self.read_only:
            raise StoreError(f"store {self.url} is read-only")

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
