"""``EntryStore``: lookup and save of whole entries (manifest + blobs), trust, the error
policy, and stats.

This module is the *one* place that decides what an error means for the user's job
(:meth:`EntryStore.degrade`): by default a read error is a warning and a miss, a write
error a warning (the store's write policy already decided whether it *is* an error),
and under ``strict`` every error raises.  Stores and the serializer only raise.

Four boundaries catch *any* exception (MemoryError, RecursionError, a library's own error)
and hand it to ``degrade``, so that the user's compile goes on: :meth:`EntryStore.lookup`
here (checking stored bytes runs msgpack, hashlib and store code on hostile input), and in
``backend.ArtcacheBackend`` the rebuild of a looked-up entry (``_load``: decoding, then
torch's post-compile code on stored data), the keying of a graph and the serialization of
a compile result (both walk the user's program), and in ``frames.Precompiled._load`` the
use of a precompiled frame entry (its guards and its graph's rebuild).  No other code
catches everything.

The public facade, :class:`artcache.Cache`, is an ``EntryStore`` that can also make a
torch.compile backend (``artcache/cache.py``); the backend itself needs only this class.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import blob_codec
from ._version import __version__
from .config import Settings, settings_from_env, stats_root
from .digest import content_digest, is_digest
from .entry import (
    MAX_MANIFEST_BYTES,
    BlobRef,
    LoadedEntry,
    Manifest,
    NewBlob,
    SummaryKey,
    decode_core,
    decode_envelope,
    encode_parts,
)
from .errors import (
    ArtcacheError,
    ConfigError,
    CorruptEntryError,
    IncompatibleEntryError,
    StoreError,
    UntrustedEntryError,
)
from .signing import load_keys, sign_envelope
from .activity import ActivityLog
from .store import MemoryStore, Store, ac_key, cas_key, open_store

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=256)
def _warn_once(message: str) -> None:
    """Log ``message`` as a warning the first time in this process.

    The one piece of process-wide memory here: the backend builds a cache per graph, and
    a configuration problem is worth one warning, not one per graph.  Python's own
    ``warnings`` registry cannot hold it: it is cleared whenever code enters
    ``warnings.catch_warnings``, which torch does while compiling."""
    log.warning("%s", message)


def local_root(store: Store) -> Path | None:
    """The directory of the local (first) tier, where per-machine activity is kept."""
    return store.local_root


def activity_log(store: Store, settings: Settings, *, writing: bool = False) -> ActivityLog | None:
    """Where this machine records what the cache did with ``store`` (``artcache stats``
    and ``explain`` read it): beside the local tier; for a store without one (Redis or
    HTTP only), in a directory of its own under ``settings.stats_dir`` (made when
    ``writing``).  ``None`` for an in-process store or no stats directory, and for
    writing beside a read-only local tier."""
    root = local_root(store)
    if root is not None:
        return None if writing and store.read_only else ActivityLog(root)
    if not store.persistent or not settings.stats_dir:
        return None
    path = stats_root(settings, store.url)
    if writing:
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            log.info("artcache: cannot keep stats in %s: %s", path, exc)
            return None
    return ActivityLog(path)


# Miss reasons of lookups that found stored bytes damaged (not merely absent or foreign).
DAMAGED_REASONS = frozenset({"corrupt", "lookup-error", "unloadable"})
_MISS_REASONS: dict[type[Exception], str] = {
    UntrustedEntryError: "untrusted",
    IncompatibleEntryError: "incompatible",
    CorruptEntryError: "corrupt",
    StoreError: "store-error",
}


@dataclass(frozen=True)
class Lookup:
    """What one lookup found: the entry, or the miss ``reason`` and what was wrong."""

    entry: LoadedEntry | None
    reason: str = ""
    detail: str = ""

    @property
    def damaged(self) -> bool:
        """The miss is a damaged entry (a recompile worth a warning), not an absent one."""
        return self.reason in DAMAGED_REASONS


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of one ``Cache``'s counters (see :meth:`Cache.stats`)."""

    hits: int = 0
    misses: Mapping[str, int] = field(default_factory=dict)
    uncacheable: Mapping[str, int] = field(default_factory=dict)
    errors: Mapping[str, int] = field(default_factory=dict)
    saves: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    lookup_seconds: float = 0.0

    @property
    def lookups(self) -> int:
        return self.hits + sum(self.misses.values())


class EntryStore:
    """Lookup and save of compiled entries in a store.

    ``store`` is a ``Store``, a URL, or a list of URLs (tiers, local first); ``None``
    takes ``settings.store_urls``.  ``settings`` defaults to the environment.

    With ``settings.signing_key`` every saved manifest is signed; with
    ``settings.trusted_keys`` a lookup refuses (miss ``"untrusted"``) any entry without a
    valid signature by one of them.

    A setting that cannot be used (``settings.problems``, a key that does not load) turns
    the cache off with one warning each (the store is then an empty in-process one and
    ``settings.disabled`` is true); a store URL that cannot be opened leaves out only that
    tier.  Under strict mode both raise (``ConfigError``, ``StoreError``).
    """

    def __init__(
        self,
        store: Store | str | Sequence[str] | None = None,
        *,
        settings: Settings | None = None,
        strict: bool | None = None,
    ) -> None:
        self.settings = settings if settings is not None else settings_from_env()
        self.strict = self.settings.strict if strict is None else strict
        self._hits = 0
        self._misses: Counter[str] = Counter()
        self._uncacheable: Counter[str] = Counter()
        self._errors: Counter[str] = Counter()
        self._saves = 0
        self._bytes_read = 0
        self._bytes_written = 0
        self._lookup_seconds = 0.0
        self._warned: set[str] = set()
        self._lookup_damage: list[str] | None = None  # set while a lookup runs
        self._lookup_warns = True
        self._lookup_counts = True
        problems = list(self.settings.problems)
        self._signer = self._trust = None
        try:
            keys = load_keys(self.settings.signing_key, self.settings.trusted_keys)
            self._signer, self._trust = keys.signer, keys.trust
        except ConfigError as exc:
            problems.append(str(exc))
        if problems:
            # A setting that cannot be used turns the whole cache off: its intent (a size
            # cap, signing, trust) cannot be honoured, and guessing could fill a disk or
            # serve entries the user meant to refuse.
            for problem in problems:
                self._bad_setting(problem, "the cache is off in this process")
            self.settings = replace(self.settings, disabled=True)
            self.store = MemoryStore()
        elif isinstance(store, Store):
            self.store = store
        else:
            urls = self.settings.store_urls if store is None else store
            bad_tiers = self._errors.total()
            try:
                self.store = open_store(urls, max_size=self.settings.max_size, on_error=self._tier_error,
                                        http_token=self.settings.http_token, on_bad_tier=self._bad_tier)
            except StoreError:
                if self.strict or self._errors.total() == bad_tiers:
                    raise  # strict, or not a tier's fault (no URL at all): the caller's error
                # Every tier was bad and each was warned about: the cache is off.
                self.settings = replace(self.settings, disabled=True)
                self.store = MemoryStore()
        self.activity = activity_log(self.store, self.settings, writing=True)

    # -- error policy (the one place) ------------------------------------------------
    def _bad_setting(self, problem: str, consequence: str, error: ArtcacheError | None = None) -> None:
        """A configuration error: raised under strict mode (``error``, else a
        ``ConfigError``), else one warning per process, however many graphs build a cache."""
        if self.strict:
            raise error if error is not None else ConfigError(problem)
        _warn_once(f"artcache: {problem}; {consequence} (ARTCACHE_STRICT=1 makes this an error)")

    def _bad_tier(self, url: str, error: StoreError) -> None:
        # Only this tier is left out; open_store raises if none is left.
        self._errors[f"open:{type(error).__name__}"] += 1
        text = str(error)
        message = f"cannot open the store: {text}" if url in text else f"cannot open the store {url}: {text}"
        self._bad_setting(message, "that store is not used", error)

    def degrade(self, operation: str, error: Exception, *, warn: bool = True) -> None:
        """Count ``error``; raise it under strict mode, else warn once per kind (unless
        ``warn`` is false: the caller reports it in its own words).

        An exception that is not an ``ArtcacheError`` (one a catch-all boundary caught:
        see the module docstring) counts under its own type and is raised, in strict
        mode, as a ``CorruptEntryError`` caused by it."""
        kind = f"{operation}:{type(error).__name__}"
        if not isinstance(error, ArtcacheError):
            wrapped = CorruptEntryError(f"{type(error).__name__}: {error}")
            wrapped.__cause__ = error
            error = wrapped
        self._errors[kind] += 1
        if self.strict:
            raise error
        if warn and kind not in self._warned:
            self._warned.add(kind)
            log.warning("artcache: %s failed, continuing without the cache: %s", operation, error)

    def _tier_error(self, store: Store, operation: str, error: Exception) -> None:
        # A tiered store reports each tier failure here; it has already skipped the tier.
        wrapped = error if isinstance(error, ArtcacheError) else StoreError(str(error))
        damage = self._lookup_damage
        if damage is not None and isinstance(wrapped, CorruptEntryError):
            # Damaged stored bytes seen during a lookup: the lookup names them in its
            # miss (or says the entry was healed from another tier).
            damage.append(str(wrapped))
            self.degrade(f"{operation} on {store.url}", wrapped, warn=self._lookup_warns)
            return
        self.degrade(f"{operation} on {store.url}", wrapped)

    # -- lookup ------------------------------------------------------------------------
    def lookup(self, key: str) -> LoadedEntry | None:
        """The entry stored under ``key`` with all its blobs, or ``None`` (a miss)."""
        return self.lookup_detailed(key).entry

    def lookup_detailed(self, key: str, *, warn: bool = True, count: bool = True) -> Lookup:
        """The entry, or why there is none.  With ``warn`` false, damaged stored bytes are
        counted (and raised under strict mode) but not logged: the caller (the backend's
        one line per graph) reports them.  Other errors (a tier down, an untrusted entry)
        warn as always.  With ``count`` false the lookup is not counted as a hit or miss:
        the caller looks up several keys for one graph and counts the outcome once
        (:meth:`count_lookup`)."""
        start = time.perf_counter()
        self._lookup_damage, self._lookup_warns, self._lookup_counts = [], warn, count
        detail = ""
        try:
            entry, reason = self._fetch(key)
        except (UntrustedEntryError, IncompatibleEntryError, CorruptEntryError, StoreError) as exc:
            self.degrade("lookup", exc, warn=warn or not isinstance(exc, CorruptEntryError))
            reason = next(r for t, r in _MISS_REASONS.items() if isinstance(exc, t))
            entry, detail = None, str(exc)
        except Exception as exc:  # noqa: BLE001 - the lookup boundary (module docstring)
            # Whatever checking hostile bytes raised beyond our own errors (a MemoryError
            # from a store, a RecursionError, a library's exception) is a miss with a
            # warning, never the user's failed compile; strict mode raises it.
            self.degrade("lookup", exc, warn=warn)
            entry, reason, detail = None, "lookup-error", f"{type(exc).__name__}: {exc}"
        finally:
            self._lookup_seconds += time.perf_counter() - start
            damage, self._lookup_damage = self._lookup_damage, None
        if damage and entry is None and reason in ("absent", "missing-blob"):
            # A store set aside a damaged manifest or blob and read it as absent.
            reason, detail = "corrupt", damage[0]
        elif damage and entry is not None:
            log.info("artcache: %s served after damage in one tier was skipped: %s", key[:12], damage[0])
        if entry is None and count:
            self.count_lookup(key, reason)
        return Lookup(entry, reason, detail)

    def count_lookup(self, key: str, miss_reason: str | None) -> None:
        """Count one lookup's outcome: a hit (``None``) or a miss with its reason."""
        if miss_reason is None:
            self._hits += 1
            return
        self._misses[miss_reason] += 1
        if self.activity is not None:
            self.activity.record("miss", key=key, reason=miss_reason)

    def _fetch(self, key: str) -> tuple[LoadedEntry | None, str]:
        """The entry, or ``None`` and the miss reason; raises on bad data.

        Bounded before trusted: the manifest is read only up to MAX_MANIFEST_BYTES, its
        envelope's sizes are checked, under trust its signature is checked over the raw
        bytes, and only then is its core parsed; each blob is read only up to the size
        the manifest declares."""
        raw = self._read_manifest(key)
        if raw is None:
            return None, "absent"
        envelope = decode_envelope(raw)
        if self._trust is not None:
            # Before decode_core: an untrusted manifest is never parsed, let alone its blobs.
            self._trust.check(envelope)
        manifest = decode_core(envelope.core)
        if manifest.key != key:
            raise CorruptEntryError(f"manifest under {key[:16]} claims key {manifest.key[:16]}")
        wanted = {ref.digest: ref for ref in manifest.blobs}
        if len(wanted) != len({(ref.digest, ref.size) for ref in manifest.blobs}):
            raise CorruptEntryError(f"manifest under {key[:16]} gives one blob two sizes")
        fetched = self._read_blobs(wanted)
        blobs: dict[str, bytes] = {}
        for digest, ref in wanted.items():
            data = fetched.get(cas_key(digest))
            if data is None:  # evicted, or never fully shared to this tier
                return None, "missing-blob"
            if len(data) != ref.size:
                raise CorruptEntryError(f"blob {digest[:16]} is {len(data)} bytes, manifest says {ref.size}")
            if self._trust is not None and content_digest(data) != digest:
                # The signature covers blob *digests*; the local tier's read check is a
                # non-cryptographic checksum, so under trust the address itself is checked.
                self.store.quarantine(cas_key(digest))  # so that the next save rewrites it
                raise CorruptEntryError(f"blob {digest[:16]} does not match its sha256 address")
            blobs[digest] = blob_codec.decode(ref, data)  # zstd-compressed blobs, bounded by ref.raw_size
        self._bytes_read += len(raw) + sum(len(b) for b in blobs.values())
        if self._lookup_counts:
            self._hits += 1
        return LoadedEntry(manifest, blobs), ""

    def _read_manifest(self, key: str) -> bytes | None:
        """The manifest's bytes, refused past MAX_MANIFEST_BYTES (stores with
        ``bounded_reads`` refuse before reading; the check here covers the others)."""
        raw = self.store.get_bounded(ac_key(key), MAX_MANIFEST_BYTES)
        if raw is not None and len(raw) > MAX_MANIFEST_BYTES:
            raise CorruptEntryError(f"manifest {key[:16]} is {len(raw)} bytes, over the {MAX_MANIFEST_BYTES} limit")
        return raw

    def _read_blobs(self, refs: Mapping[str, BlobRef]) -> Mapping[str, bytes | None]:
        """Each blob, refused past the size its manifest declares (before reading, where
        the store has ``bounded_reads``; the caller checks each length in any case)."""
        return self.store.get_many_bounded({cas_key(d): ref.size for d, ref in refs.items()})

    # -- save --------------------------------------------------------------------------
    def save(
        self,
        key: str,
        blobs: Sequence[NewBlob],
        *,
        factors: Mapping[str, str],
        environment: Mapping[str, str],
        summary: Mapping[str, Any] | None = None,
    ) -> Manifest | None:
        """Write ``blobs`` then the manifest (the commit point).  ``None`` if the write
        failed and the policy allowed continuing."""
        if not is_digest(key):
            raise ValueError(f"cache key must be a sha256 hex digest, got {key!r}")
        refs = []
        payload: dict[str, bytes] = {}
        for blob in blobs:
            encoding, stored = blob_codec.encode(blob.data, compress=self.settings.compress)
            digest = content_digest(stored)  # the address of the stored bytes, compressed or not
            refs.append(BlobRef(blob.role, digest, len(stored), blob.name, encoding,
                                len(blob.data) if encoding else None))
            payload[cas_key(digest)] = stored
        summary = dict(summary or {})
        manifest = Manifest(
            key=key,
            factors=dict(factors),
            environment=dict(environment),
            created=time.time(),
            producer=f"artcache {__version__}",
            blobs=tuple(refs),
            summary=summary,
            compile_seconds=float(summary.get(SummaryKey.COMPILE_SECONDS, 0.0) or 0.0),
        )
        if self._refuses_own_writes():
            return None
        try:
            envelope = sign_envelope(*encode_parts(manifest), self._signer)
            self.store.put_many(payload)
            self.store.put(ac_key(key), envelope)
        except (StoreError, CorruptEntryError) as exc:
            self.degrade("save", exc)
            return None
        self._saves += 1
        written = len(envelope) + sum(len(b) for b in payload.values())
        self._bytes_written += written
        if self.activity is not None:
            self.activity.record("save", key=key, bytes=written, compile_seconds=manifest.compile_seconds)
        return manifest

    def _refuses_own_writes(self) -> bool:
        """Under trusted keys, a process that cannot sign with a key it trusts writes no
        manifest: it would refuse the entry itself, and writing it would replace a signed
        entry (or shadow one in a slower tier) that trusting readers can use."""
        if self._trust is None or (self._signer is not None and self._trust.trusts(self._signer.key_id)):
            return False
        if "save:unsigned" not in self._warned:
            self._warned.add("save:unsigned")
            log.info("artcache: trusted keys are set and this process cannot sign with one of them: "
                     "compiled entries are not saved (set ARTCACHE_SIGNING_KEY to a trusted key to save)")
        return True

    # -- bookkeeping -------------------------------------------------------------------
    def reject(self, key: str, reason: str) -> None:
        """The caller could not use an entry that ``lookup`` returned (its shape guards
        reject the inputs, or it cannot be rebuilt): count that lookup as a miss."""
        self._hits -= 1
        self.count_lookup(key, reason)

    def record_hit(self, entry: LoadedEntry, load_seconds: float) -> None:
        """A looked-up entry was rebuilt and is in use: log the time it saved."""
        if self.activity is not None:
            compile_s = entry.manifest.compile_seconds
            self.activity.record("hit", key=entry.manifest.key, bytes=sum(len(b) for b in entry.blobs.values()),
                                 load_seconds=round(load_seconds, 4),
                                 saved_seconds=round(max(0.0, compile_s - load_seconds), 4))

    def record_miss_details(self, key: str, details: Mapping[str, Any]) -> None:
        """What a missed key was made of, for ``artcache explain``."""
        if self.activity is not None:
            self.activity.record_miss(key, details)

    def record_uncacheable(self, reason: str) -> None:
        self._uncacheable[reason] += 1
        if self.activity is not None:
            self.activity.record("uncacheable", reason=reason)

    def stats(self) -> CacheStats:
        return CacheStats(
            hits=self._hits,
            misses=dict(self._misses),
            uncacheable=dict(self._uncacheable),
            errors=dict(self._errors),
            saves=self._saves,
            bytes_read=self._bytes_read,
            bytes_written=self._bytes_written,
            lookup_seconds=self._lookup_seconds,
        )

    def close(self) -> None:
        self.store.close()
