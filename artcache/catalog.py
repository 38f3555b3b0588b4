"""What a store holds: scans, verification and deletion plans, as frozen dataclasses.

Modelled on huggingface_hub's cache scan: the CLI (and tests) call these functions and
print or check the results; deletes are planned first (:class:`DeletePlan`) and carried
out separately (:func:`execute`), so ``--dry-run`` shows exactly what would go.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from .config import parse_size
from .digest import content_digest
from .entry import Manifest, decode_envelope, decode_manifest
from .errors import ArtcacheError, CorruptEntryError, IncompatibleEntryError, StoreError, UntrustedEntryError
from .signing import TrustPolicy
from .store import KeyInfo, Store, ac_key, cas_key

# Blobs are written before their manifest, so a blob nobody references may belong to a
# save in flight.  Orphans younger than this are left alone by gc.
ORPHAN_GRACE_S = 3600.0


@dataclass(frozen=True)
class EntryInfo:
    key: str
    status: str  # "ok", "missing-blobs", "corrupt", "incompatible", "misfiled"
    detail: str
    created: float
    last_used: float
    producer: str
    title: str
    manifest_bytes: int
    blob_count: int
    blob_bytes: int
    missing_blobs: int
    signer: str = ""  # key id of the signature (not checked here: `verify` checks it), "" unsigned

    @property
    def size(self) -> int:
        return self.manifest_bytes + self.blob_bytes


@dataclass(frozen=True)
class StoreScan:
    url: str
    entries: tuple[EntryInfo, ...]
    blob_count: int
    blob_bytes: int
    orphan_blobs: tuple[KeyInfo, ...]
    quarantined_files: int

    @property
    def total_bytes(self) -> int:
        return self.blob_bytes + sum(e.manifest_bytes for e in self.entries)


@dataclass(frozen=True)
class Problem:
    """One finding of :func:`verify`.  ``kind``:

    ``corrupt-manifest``  a manifest failed its checksum or does not decode
    ``incompatible``      a manifest of another format version
    ``misfiled``          a manifest filed under a key it does not claim
    ``untrusted``         under trusted keys: unsigned, or not by a trusted key, or forged
    ``missing-blob``      a blob a manifest names is absent
    ``corrupt-blob``      a blob failed the store's checksum (the store quarantined it)
    ``bad-blob``          a blob's bytes do not hash to its address (quarantined)
    ``tier-down``         a tier could not be read: what it holds was not checked
    """

    key: str
    kind: str
    detail: str
    quarantined: bool = False


@dataclass(frozen=True)
class VerifyReport:
    url: str
    entries_checked: int
    blobs_checked: int
    bytes_checked: int
    problems: tuple[Problem, ...]
    signers: dict[str, int] = field(default_factory=dict)  # key id ("" unsigned) -> entries
    trusted_signers: tuple[str, ...] = ()  # the key ids ARTCACHE_TRUSTED_KEYS names, if set

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def quarantined(self) -> tuple[str, ...]:
        return tuple(p.key for p in self.problems if p.quarantined)


@dataclass(frozen=True)
class TierFailure:
    url: str
    operation: str
    error: str


class TierErrors:
    """An ``on_error`` handler for :func:`artcache.store.open_store` that remembers which
    tiers failed (so a command that needs every tier can fail) and which values a tier
    refused as corrupt."""

    def __init__(self) -> None:
        self.down: list[TierFailure] = []
        self.corrupt: list[TierFailure] = []

    def __call__(self, store: Store, operation: str, error: Exception) -> None:
        failure = TierFailure(store.url, operation, str(error))
        (self.down if isinstance(error, StoreError) else self.corrupt).append(failure)

    def down_tiers(self) -> list[str]:
        return list(dict.fromkeys(f.url for f in self.down))


@dataclass(frozen=True)
class Deletion:
    key: str
    size: int
    reason: str


@dataclass(frozen=True)
class DeletePlan:
    url: str
    deletions: tuple[Deletion, ...]

    @property
    def bytes(self) -> int:
        return sum(d.size for d in self.deletions)


@dataclass(frozen=True)
class DeleteResult:
    deleted: int
    bytes: int
    already_gone: int


# -- reading ------------------------------------------------------------------------
def read_manifest(store: Store, key: str) -> Manifest:
    """The manifest of entry ``key``; raises ``ArtcacheError`` if absent or unreadable."""
    raw = store.peek(ac_key(key))
    if raw is None:
        raise ArtcacheError(f"no entry {key} in {store.url}")
    return decode_manifest(raw)


def find_entry(store: Store, ref: str) -> str:
    """Resolve a full key or a unique prefix (at least 4 hex digits) to a key."""
    ref = ref.strip().lower().removeprefix("ac/")
    if len(ref) < 4:
        raise ArtcacheError(f"entry reference {ref!r} is too short: give at least 4 hex digits")
    matches = [info.key[3:] for info in store.iterate("ac/" + ref)]
    if not matches:
        raise ArtcacheError(f"no entry matches {ref!r} in {store.url}")
    if len(matches) > 1:
        raise ArtcacheError(f"{ref!r} is ambiguous: {len(matches)} entries match")
    return matches[0]


def _entry_info(store: Store, info: KeyInfo, blob_sizes: dict[str, int]) -> tuple[EntryInfo, Manifest | None]:
    key = info.key[3:]
    raw = store.peek(info.key)
    status, detail, manifest, signer = "ok", "", None, ""
    if raw is None:
        status, detail = "corrupt", "manifest unreadable (quarantined or removed)"
    else:
        try:
            signer = decode_envelope(raw).signer or ""
            manifest = decode_manifest(raw)
        except IncompatibleEntryError as exc:
            status, detail = "incompatible", str(exc)
        except CorruptEntryError as exc:
            status, detail = "corrupt", str(exc)
    if manifest is None:
        return EntryInfo(key, status, detail, 0.0, info.last_used, "", "", info.size, 0, 0, 0, signer), None
    missing = sum(1 for ref in manifest.blobs if ref.digest not in blob_sizes)
    if manifest.key != key:
        # A lookup of `key` refuses it (the manifest is for another key): a plant or damage.
        status, detail = "misfiled", f"filed under {key[:16]} but claims key {manifest.key[:16]}"
    elif missing:
        status, detail = "missing-blobs", f"{missing} of {len(manifest.blobs)} blobs absent"
    entry = EntryInfo(
        key=key,
        status=status,
        detail=detail,
        created=manifest.created,
        last_used=info.last_used,
        producer=manifest.producer,
        title=str(manifest.summary.get("title", "")),
        manifest_bytes=info.size,
        blob_count=len(manifest.blobs),
        blob_bytes=sum(ref.size for ref in manifest.blobs),
        missing_blobs=missing,
        signer=signer,
    )
    return entry, manifest


def scan(store: Store) -> StoreScan:
    blobs = {info.key[4:]: info for info in store.iterate("cas/")}
    blob_sizes = {digest: info.size for digest, info in blobs.items()}
    entries = []
    referenced: set[str] = set()
    for info in store.iterate("ac/"):
        entry, manifest = _entry_info(store, info, blob_sizes)
        entries.append(entry)
        if manifest is not None:
            referenced.update(ref.digest for ref in manifest.blobs)
    orphans = tuple(info for digest, info in blobs.items() if digest not in referenced)
    quarantined = store.quarantined_files()
    entries.sort(key=lambda e: e.last_used, reverse=True)
    return StoreScan(
        url=store.url,
        entries=tuple(entries),
        blob_count=len(blobs),
        blob_bytes=sum(blob_sizes.values()),
        orphan_blobs=orphans,
        quarantined_files=quarantined,
    )


# -- selection (ls --sort/--filter/--limit) -------------------------------------------
# Sort orders and their natural direction: newest, largest first; names alphabetically.
SORT_KEYS = {
    "last-used": (lambda e: e.last_used, True),
    "created": (lambda e: e.created, True),
    "size": (lambda e: e.size, True),
    "blobs": (lambda e: e.blob_count, True),
    "key": (lambda e: e.key, False),
    "title": (lambda e: e.title.lower(), False),
    "status": (lambda e: e.status, False),
    "signer": (lambda e: e.signer, False),
}
FILTER_FIELDS = ("key", "status", "title", "signer", "producer")


def _matcher(expr: str) -> Callable[[EntryInfo], bool]:
    """One ``--filter``: ``FIELD=GLOB`` (case-insensitive), ``size>N``/``size<N`` (``20M``),
    or plain text found in the key or the title."""
    for op in (">", "<"):
        name, sep, value = expr.partition(op)
        if sep and name.strip() == "size":
            limit = parse_size(value)
            return (lambda e: e.size > limit) if op == ">" else (lambda e: e.size < limit)
    name, sep, pattern = expr.partition("=")
    if sep:
        name = name.strip().lower()
        if name not in FILTER_FIELDS:
            raise ArtcacheError(f"cannot filter on {name!r}: use one of {', '.join(FILTER_FIELDS)}, "
                                "size>N or size<N")
        pattern = pattern.lower()
        return lambda e: fnmatch.fnmatchcase(str(getattr(e, name)).lower(), pattern)
    text = expr.lower()
    return lambda e: text in e.title.lower() or e.key.startswith(text)


def select(entries: Sequence[EntryInfo], *, sort: str = "last-used", reverse: bool = False,
           filters: Sequence[str] = (), limit: int | None = None) -> tuple[EntryInfo, ...]:
    """The entries that pass every filter, sorted, at most ``limit`` of them."""
    if sort not in SORT_KEYS:
        raise ArtcacheError(f"cannot sort by {sort!r}: use one of {', '.join(SORT_KEYS)}")
    if limit is not None and limit < 0:
        raise ArtcacheError(f"--limit must be at least 0, not {limit}")
    tests = [_matcher(f) for f in filters]
    chosen = [e for e in entries if all(t(e) for t in tests)]
    keyfunc, descending = SORT_KEYS[sort]
    chosen.sort(key=lambda e: e.key)  # ties in a stable, meaningful order
    chosen.sort(key=keyfunc, reverse=descending != reverse)
    return tuple(chosen[:limit] if limit is not None else chosen)


# -- verification -------------------------------------------------------------------
def verify(store: Store, trust: TrustPolicy | None = None) -> VerifyReport:
    """Decode every manifest and check every blob it names against its SHA-256.

    A blob that fails is quarantined (the store moves it aside: a legitimate save heals
    it) and reported as such; an absent blob is only reported.  Under ``trust`` every
    manifest's signature is checked as a lookup would."""
    problems: list[Problem] = []
    checked: dict[str, bool] = {}
    signers: dict[str, int] = {}
    entries = 0
    nbytes = 0
    for info in store.iterate("ac/"):
        entries += 1
        key = info.key[3:]
        raw = store.peek(info.key)
        if raw is None:
            problems.append(Problem(key, "corrupt-manifest", "failed its checksum; quarantined", quarantined=True))
            continue
        try:
            envelope = decode_envelope(raw)
            signers[envelope.signer or ""] = signers.get(envelope.signer or "", 0) + 1
            if trust is not None:
                try:
                    trust.check(envelope)
                except UntrustedEntryError as exc:
                    problems.append(Problem(key, "untrusted", str(exc)))
            manifest = decode_manifest(raw)
        except IncompatibleEntryError as exc:
            problems.append(Problem(key, "incompatible", str(exc)))
            continue
        except CorruptEntryError as exc:
            problems.append(Problem(key, "corrupt-manifest", str(exc)))
            continue
        if manifest.key != key:
            problems.append(Problem(key, "misfiled", f"filed under {key[:16]} but claims key {manifest.key[:16]}"))
        for ref in manifest.blobs:
            if ref.digest in checked:
                continue
            blob = cas_key(ref.digest)
            present = store.has(blob)
            data = store.peek(blob) if present else None
            nbytes += len(data) if data is not None else 0
            checked[ref.digest] = data is not None and content_digest(data) == ref.digest
            what = f"{ref.role} {ref.digest[:16]}"
            if not present:
                problems.append(Problem(key, "missing-blob", f"{what} absent"))
            elif data is None:
                problems.append(Problem(key, "corrupt-blob", f"{what} failed its checksum; quarantined",
                                        quarantined=True))
            elif not checked[ref.digest]:
                store.quarantine(blob)  # the store checks the address again before moving it
                problems.append(Problem(key, "bad-blob", f"{what} fails sha256; quarantined", quarantined=True))
    trusted = trust.key_ids if trust is not None else ()
    return VerifyReport(store.url, entries, len(checked), nbytes, tuple(problems), signers, trusted)


# -- deletion plans -----------------------------------------------------------------
def plan_rm(store: Store, keys: Iterable[str]) -> DeletePlan:
    """Remove the given entries and the blobs no other entry references."""
    snapshot = scan(store)
    return _plan_removal(store, snapshot, _entry_refs(store, snapshot), dict.fromkeys(keys, "requested"))


def plan_gc(store: Store, max_size: int | None = None, *, now: float | None = None) -> DeletePlan:
    """Remove broken entries, old orphan blobs and, if ``max_size`` is given, the least
    recently used entries until the store fits."""
    now = time.time() if now is None else now
    snapshot = scan(store)
    refs = _entry_refs(store, snapshot)
    doomed = {e.key: e.status for e in snapshot.entries if e.status != "ok"}
    deletions = [
        Deletion(info.key, info.size, "orphan blob")
        for info in snapshot.orphan_blobs
        if now - info.last_used > ORPHAN_GRACE_S
    ]
    if max_size is not None:
        # Count what removing an entry really frees: blobs shared with a surviving entry stay.
        present = {info.key[4:]: info.size for info in store.iterate("cas/")}
        users: dict[str, int] = {}
        for entry_refs in refs.values():
            for digest in entry_refs:
                users[digest] = users.get(digest, 0) + 1
        total = snapshot.total_bytes - sum(d.size for d in deletions)

        def release(entry: EntryInfo) -> None:
            nonlocal total
            total -= entry.manifest_bytes
            for digest in refs.get(entry.key, {}):
                users[digest] -= 1
                if users[digest] == 0:
                    total -= present.get(digest, 0)

        for entry in snapshot.entries:
            if entry.key in doomed:
                release(entry)
        for entry in sorted(snapshot.entries, key=lambda e: e.last_used):
            if total <= max_size:
                break
            if entry.key not in doomed:
                doomed[entry.key] = "over size cap (least recently used)"
                release(entry)
    plan = _plan_removal(store, snapshot, refs, doomed)
    return DeletePlan(store.url, tuple(deletions) + plan.deletions)


def _entry_refs(store: Store, snapshot: StoreScan) -> dict[str, dict[str, int]]:
    """entry key -> {blob digest: size} for every readable manifest."""
    out: dict[str, dict[str, int]] = {}
    for entry in snapshot.entries:
        manifest = _try_manifest(store, entry.key)
        out[entry.key] = {r.digest: r.size for r in manifest.blobs} if manifest else {}
    return out


def _plan_removal(
    store: Store, snapshot: StoreScan, refs: dict[str, dict[str, int]], reasons: dict[str, str]
) -> DeletePlan:
    keep_refs: set[str] = set()
    doomed_refs: dict[str, int] = {}
    deletions: list[Deletion] = []
    for entry in snapshot.entries:
        if entry.key in reasons:
            deletions.append(Deletion(ac_key(entry.key), entry.manifest_bytes, reasons[entry.key]))
            doomed_refs.update(refs[entry.key])
        else:
            keep_refs.update(refs[entry.key])
    present = {info.key for info in store.iterate("cas/")}
    for digest, size in doomed_refs.items():
        if digest not in keep_refs and cas_key(digest) in present:
            deletions.append(Deletion(cas_key(digest), size, "blob of a removed entry"))
    return DeletePlan(store.url, tuple(deletions))


def _try_manifest(store: Store, key: str) -> Manifest | None:
    try:
        return read_manifest(store, key)
    except ArtcacheError:
        return None


def execute(store: Store, plan: DeletePlan) -> DeleteResult:
    """Carry out ``plan``.  Manifests go before blobs (the plan lists them first), so no
    reader ever finds a manifest whose blobs were removed on purpose."""
    deleted = gone = nbytes = 0
    for item in sorted(plan.deletions, key=lambda d: not d.key.startswith("ac/")):
        if store.delete(item.key):
            deleted += 1
            nbytes += item.size
        else:
            gone += 1
    return DeleteResult(deleted, nbytes, gone)
