"""Tiered store: local first, remote second (sccache-style).

* Reads go tier by tier; a hit in a lower tier is backfilled into the faster writable
  tiers above it.  A blob (``cas/``) fetched from a lower tier is checked against its
  SHA-256 address before it is backfilled (or served): lower tiers are shared, and a
  shared store is where corruption and tampering come from.  A blob that fails is
  reported, not written anywhere, and the tier it came from is asked to quarantine it
  (``Store.quarantine``), so the next legitimate save rewrites it.
  A tier that checks the integrity of its own values (``verifies_content = True``: Redis,
  with an XXH3 checksum on every value) reports what it rejects through its
  ``on_corrupt`` hook, which this class routes to ``on_error`` like its own digest
  failures.  Its blobs are still hashed before a backfill: whoever can write the tier can
  write a matching checksum, and the faster tier above trusts what it holds.  With
  nothing to backfill into, they are served on their checksum alone (authenticity comes
  from signed manifests: under trusted keys the ``Cache`` checks every blob's address).
* Bounded reads (``get_many_bounded``) pass each key's bound to every tier; a tier that
  refuses a value over its bound does not stop a lower tier from serving a good one.
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
from pathlib import Path

from ..digest import content_digest
from ..errors import CorruptEntryError, StoreError
from .base import KeyInfo, Store, check_key
from .leases import Lease

log = logging.getLogger(__name__)

ErrorHandler = Callable[[Store, str, Exception], None]


class WritePolicy(str, Enum):
    ALL = "all"  # a put succeeds only if every writable tier accepted it
    ANY = "any"  # a put succeeds if at least one writable tier accepted it


def log_tier_error(store: Store, operation: str, error: Exception) -> None:
    log.warning("artcache: %s on %s failed, skipping that tier for a while: %s", operation, store.url, error)


def _self_verifying(store: Store) -> bool:
    """Whether ``store`` checks every value's integrity itself before returning it."""
    return store.verifies_content


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
        self.bounded_reads = all(t.bounded_reads for t in self.tiers)  # bounds are passed down
        self.write_policy = write_policy
        self.cooldown_s = cooldown_s
        self.on_error = on_error
        self._down_until = [0.0] * len(self.tiers)
        for index, tier in enumerate(self.tiers):
            # Verifying tiers report each value they refuse; a local tier reports the
            # damaged files it sets aside.
            tier.on_corrupt = self._corrupt_reporter(index)

    @property
    def local_root(self) -> Path | None:
        """The first tier's directory, where this machine's activity is kept."""
        return self.tiers[0].local_root

    def quarantined_files(self) -> int:
        return sum(t.quarantined_files() for t in self.tiers)

    @property
    def supports_leases(self) -> bool:  # type: ignore[override]
        return any(t.supports_leases and not t.read_only for t in self.tiers)

    def try_lease(self, key: str) -> Lease | None:
        """A lease from the fastest tier that has them and is up: processes sharing that
        tier share the lease (a local directory: one machine; Redis: every machine)."""
        for index, tier in enumerate(self.tiers):
            if tier.supports_leases and not tier.read_only and self._available(index):
                try:
                    return tier.try_lease(key)
                except StoreError as exc:
                    self._failed(index, "lease", exc)
        raise StoreError(f"no tier of {self.url} can lease now")

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
        return self._get_many(list(keys), None)

    def get_many_bounded(self, bounds: Mapping[str, int]) -> dict[str, bytes | None]:
        return self._get_many(list(bounds), bounds)

    def _get_many(self, wanted: list[str], bounds: Mapping[str, int] | None) -> dict[str, bytes | None]:
        for key in wanted:
            check_key(key)
        found: dict[str, bytes | None] = dict.fromkeys(wanted)
        missing = list(wanted)
        refused: CorruptEntryError | None = None
        for index, tier in enumerate(self.tiers):
            if not missing:
                break
            if not self._available(index):
                continue
            try:
                if bounds is None:
                    got = tier.get_many(missing)
                else:
                    got = tier.get_many_bounded({k: bounds[k] for k in missing})
            except StoreError as exc:
                self._failed(index, "get", exc)
                continue
            except CorruptEntryError as exc:
                # A value over its bound in this tier: a lower tier may hold a good one
                # (then backfilled over it).  If none does, the caller gets this error.
                refused = refused or exc
                continue
            hits = {}
            for key, data in got.items():
                if data is None:
                    continue
                if index > 0 and not self._content_ok(index, key, data, backfill=True):
                    continue
                hits[key] = data
            if hits:
                found.update(hits)
                self._backfill(index, hits)
                missing = [k for k in missing if k not in hits]
        if refused is not None:
            if missing:
                raise refused
            self.on_error(self, "get", refused)
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
            if data is not None and (index == 0 or self._content_ok(index, key, data, backfill=False)):
                return data
        return None

    def _content_ok(self, index: int, key: str, data: bytes, *, backfill: bool) -> bool:
        """Whether a lower tier's value may be served (and backfilled, if ``backfill``)."""
        space, name = check_key(key)
        if space != "cas":
            return True
        if _self_verifying(self.tiers[index]) and not (backfill and self._backfill_targets(index)):
            return True  # its own checksum passed, and nothing above will store it
        if content_digest(data) == name:
            return True
        tier = self.tiers[index]
        self._failed(index, "get", CorruptEntryError(f"{key} from {tier.url} fails its digest"))
        if not tier.read_only:
            try:
                tier.quarantine(key)  # the tier checks again itself before removing it
            except StoreError as exc:
                self._failed(index, "quarantine", exc)
        return False

    def _backfill_targets(self, hit_index: int) -> list[int]:
        return [i for i in range(hit_index) if not self.tiers[i].read_only and self._available(i)]

    def _backfill(self, hit_index: int, items: dict[str, bytes]) -> None:
        for index in self._backfill_targets(hit_index):
            tier = self.tiers[index]
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

    def quarantine(self, key: str) -> None:
        check_key(key)
        for index, tier in enumerate(self.tiers):
            if tier.read_only or not self._available(index):
                continue
            try:
                tier.quarantine(key)
            except StoreError as exc:
                self._failed(index, "quarantine", exc)

    def close(self) -> None:
        for tier in self.tiers:
            tier.close()
