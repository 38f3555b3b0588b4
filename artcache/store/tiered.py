"""Tiered store: local first, remote second (sccache-style).

* Reads go tier by tier; a hit in a lower tier is backfilled into the faster writable
  tiers above it.  A blob (``cas/``) fetched from a lower tier is checked against its
  SHA-256 address before it is served or backfilled: lower tiers are shared, and a
  shared store is where corruption and tampering come from.
  A tier that checks the integrity of its own values (``verifies_content = True``: Redis,
  with an XXH3 checksum on every value) is not hashed a second time; it reports what it
  rejects through its ``on_corrupt`` hook, which this class routes to ``on_error`` like
  its own digest failures.  (Authenticity, as opposed to integrity, comes from signed
  manifests: under trusted keys the ``Cache`` checks every blob's SHA-256 address.)
* Writes follow an explicit :class:`WritePolicy`.
* A tier that raises is reported through ``on_error`` and skipped for ``cooldown_s``
  seconds, so a dead remote costs one timeout (the tier's own, bounded), not one per
  lookup, and writes skip it too while it cools down.

This class never decides whether an error is fatal: it reports each one to ``on_error``,
which the ``Cache`` facade supplies (warn and continue, or raise under strict mode).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from enum import Enum

from ..digest import content_digest
from ..errors import CorruptEntryError, StoreError
from .base import KeyInfo, Store, check_key

log = logging.getLogger(__name__)

ErrorHandler = Callable[[Store, str, Exception], None]


class WritePolicy(str, Enum):
    ALL = "all"  # a put succeeds only if every writable tier accepted it
    ANY = "any"  # a put succeeds if at least one writable tier accepted it


def log_tier_error(store: Store, operation: str, error: Exception) -> None:
    log.warning("artcache: %s on %s failed, skipping that tier for a while: %s", operation, store.url, error)


def _self_verifying(store: Store) -> bool:
    """Whether ``store`` checks every value's integrity itself before returning it."""
    return bool(getattr(store, "verifies_content", False))


class TieredStore(Store):
    def __init__(
        self,
        tiers: Sequence[Store],
        *,
        write_policy: WritePolicy = WritePolicy.ANY,
        cooldown_s: float = 30.0,
        on_error: ErrorHandler = log_tier_error,
    ) -> None:
        if not tiers:
            raise StoreError("a tiered store needs at least one tier")
        self.tiers = list(tiers)
        self.url = ",".join(t.url for t in self.tiers)
        self.read_only = all(t.read_only for t in self.tiers)
        self.write_policy = write_policy
        self.cooldown_s = cooldown_s
        self.on_error = on_error
        self._down_until = [0.0] * len(self.tiers)
        for index, tier in enumerate(self.tiers):
            if _self_verifying(tier):
                tier.on_corrupt = self._corrupt_reporter(index)  # type: ignore[attr-defined]

    def _corrupt_reporter(self, index: int) -> Callable[[str, str], None]:
        def report(key: str, why: str) -> None:
            self._failed(index, "get", CorruptEntryError(f"{key} from {self.tiers[index].url}: {why}"))

        return report

    # -- health --------------------------------------------------------------------
    def _available(self, index: int) -> bool:
        return time.monotonic() >= self._down_until[index]

    def _failed(self, index: int, operation: str, error: Exception) -> None:
        if isinstance(error, StoreError):
            # Only an unreachable/failing tier is benched; corrupt data is not its health.
            self._down_until[index] = time.monotonic() + self.cooldown_s
        self.on_error(self.tiers[index], operation, error)

    # -- reads ---------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        return self.get_many([key])[key]

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        wanted = list(keys)
        for key in wanted:
            check_key(key)
        found: dict[str, bytes | None] = dict.fromkeys(wanted)
        missing = list(wanted)
        for index, tier in enumerate(self.tiers):
            if not missing:
                break
            if not self._available(index):
                continue
            try:
                got = tier.get_many(missing)
            except StoreError as exc:
                self._failed(index, "get", exc)
                continue
            hits = {}
            for key, data in got.items():
                if data is None:
                    continue
                if index > 0 and not self._content_ok(index, key, data):
                    continue
                hits[key] = data
            if hits:
                found.update(hits)
                self._backfill(index, hits)
                missing = [k for k in missing if k not in hits]
        return found

    def peek(self, key: str) -> bytes | None:
        """A read that neither counts as a use nor backfills (for ls, verify, gc plans)."""
        check_key(key)
        for index, tier in enumerate(self.tiers):
            if not self._available(index):
                continue
            try:
                data = tier.peek(key)
            except StoreError as exc:
                self._failed(index, "peek", exc)
                continue
            if data is not None and (index == 0 or self._content_ok(index, key, data)):
                return data
        return None

    def _content_ok(self, index: int, key: str, data: bytes) -> bool:
        space, name = check_key(key)
        if space != "cas" or _self_verifying(self.tiers[index]) or content_digest(data) == name:
            return True
        self._failed(index, "get", CorruptEntryError(f"{key} from {self.tiers[index].url} fails its digest"))
        return False

    def _backfill(self, hit_index: int, items: dict[str, bytes]) -> None:
        for index in range(hit_index):
            tier = self.tiers[index]
            if tier.read_only or not self._available(index):
                continue
            try:
                tier.put_many(items)
            except StoreError as exc:
                self._failed(index, "backfill", exc)

    def has(self, key: str) -> bool:
        check_key(key)  # a caller's bad key is its bug, not a tier failure to bench
        for index, tier in enumerate(self.tiers):
            if not self._available(index):
                continue
            try:
                if tier.has(key):
                    return True
            except StoreError as exc:
                self._failed(index, "has", exc)
        return False

    def iterate(self, prefix: str = "") -> Iterator[KeyInfo]:
        seen: set[str] = set()
        for index, tier in enumerate(self.tiers):
            if not self._available(index) or not tier.can_list:
                continue  # a tier that cannot list is no failing tier: list the others
            try:
                for info in tier.iterate(prefix):
                    if info.key not in seen:
                        seen.add(info.key)
                        yield info
            except StoreError as exc:
                self._failed(index, "iterate", exc)

    # -- writes --------------------------------------------------------------------
    def put(self, key: str, data: bytes) -> None:
        self.put_many({key: data})

    def put_many(self, items: Mapping[str, bytes]) -> None:
        # Validate first: a bad key raised by a tier would otherwise be taken for a
        # failing tier, benching every tier (the whole cache) for the cool-down.
        for key in items:
            check_key(key)
        self._check_writable()
        accepted = 0
        errors: list[StoreError] = []
        for index, tier in enumerate(self.tiers):
            if tier.read_only:
                continue
            if not self._available(index):
                errors.append(StoreError(f"{tier.url} is cooling down after an error"))
                continue
            try:
                tier.put_many(items)
                accepted += 1
            except StoreError as exc:
                errors.append(exc)
                self._failed(index, "put", exc)
        if errors and (self.write_policy is WritePolicy.ALL or accepted == 0):
            raise StoreError(f"write to {self.url} failed under policy {self.write_policy.value}: {errors[0]}")

    def delete(self, key: str) -> bool:
        check_key(key)
        self._check_writable()
        removed = False
        for index, tier in enumerate(self.tiers):
            if tier.read_only:
                continue
            try:
                removed = tier.delete(key) or removed
            except StoreError as exc:
                self._failed(index, "delete", exc)
        return removed

    def close(self) -> None:
        for tier in self.tiers:
            tier.close()
