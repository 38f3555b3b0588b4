"""The ``Store`` protocol: bytes in, bytes out, a miss is ``None``.

Every backend (local directory, memory, Redis, tiered) implements these few methods and
passes the shared conformance suite in ``tests/store_conformance.py``.

Keys live in two keyspaces, like a build cache (bazel-remote's CAS / action cache):

* ``cas/<sha256>``: immutable blobs, addressed by the SHA-256 of their bytes.
* ``ac/<sha256>``:  manifests, addressed by the cache key (a digest of named factors).

Keys are validated everywhere so that a key can never name a path outside a store.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType

from ..errors import StoreError

KEYSPACES = ("cas", "ac")
# fullmatch, not ``$``: ``$`` also matches before a trailing newline, which would let
# "cas/<hex>\n" alias "cas/<hex>" in one backend and be a different key in another.
_KEY_RE = re.compile(r"(cas|ac)/([0-9a-f]{64})")


def check_key(key: str) -> tuple[str, str]:
    """Split a key into (keyspace, name); raise ``StoreError`` on anything malformed."""
    match = _KEY_RE.fullmatch(key) if isinstance(key, str) else None
    if match is None:
        raise StoreError(f"invalid store key {key!r}: expected 'cas/<sha256>' or 'ac/<sha256>'")
    return match.group(1), match.group(2)


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


class Store(ABC):
    """A flat byte store.  Backends raise ``StoreError``; they never decide policy."""

    url: str = ""
    read_only: bool = False
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
