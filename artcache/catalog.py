"""What a store holds: scans, verification and deletion plans, as frozen dataclasses.

Modelled on huggingface_hub's cache scan: the CLI (and tests) call these functions and
print or check the results; deletes are planned first (:class:`DeletePlan`) and carried
out separately (:func:`execute`), so ``--dry-run`` shows exactly what would go.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from .digest import content_digest
from .entry import Manifest, decode_manifest
from .errors import ArtcacheError, CorruptEntryError, IncompatibleEntryError
from .store import KeyInfo, Store, ac_key, cas_key

# Blobs are written before their manifest, so a blob nobody references may belong to a
# save in flight.  Orphans younger than this are left alone by gc.
ORPHAN_GRACE_S = 3600.0


@dataclass(frozen=True)
class EntryInfo:
    key: str
    status: str  # "ok", "missing-blobs", "corrupt", "incompatible"
    detail: str
    created: float
    last_used: float
    producer: str
    title: str
    manifest_bytes: int
    blob_count: int
    blob_bytes: int
    missing_blobs: int

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
    key: str
    kind: str  # "corrupt-manifest", "incompatible", "missing-blob", "bad-blob"
    detail: str


@dataclass(frozen=True)
class VerifyReport:
    url: str
    entries_checked: int
    blobs_checked: int
    bytes_checked: int
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


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
    status, detail, manifest = "ok", "", None
    if raw is None:
        status, detail = "corrupt", "manifest unreadable (quarantined or removed)"
    else:
        try:
            manifest = decode_manifest(raw)
        except IncompatibleEntryError as exc:
            status, detail = "incompatible", str(exc)
        except CorruptEntryError as exc:
            status, detail = "corrupt", str(exc)
    if manifest is None:
        return EntryInfo(key, status, detail, 0.0, info.last_used, "", "", info.size, 0, 0, 0), None
    missing = sum(1 for ref in manifest.blobs if ref.digest not in blob_sizes)
    if missing:
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


# -- verification -------------------------------------------------------------------
def verify(store: Store) -> VerifyReport:
    """Decode every manifest and check every blob it names against its SHA-256."""
    problems: list[Problem] = []
    checked: dict[str, bool] = {}
    entries = 0
    nbytes = 0
    for info in store.iterate("ac/"):
        entries += 1
        key = info.key[3:]
        raw = store.peek(info.key)
        if raw is None:
            problems.append(Problem(key, "corrupt-manifest", "failed its checksum; quarantined"))
            continue
        try:
            manifest = decode_manifest(raw)
        except IncompatibleEntryError as exc:
            problems.append(Problem(key, "incompatible", str(exc)))
            continue
        except CorruptEntryError as exc:
            problems.append(Problem(key, "corrupt-manifest", str(exc)))
            continue
        for ref in manifest.blobs:
            if ref.digest not in checked:
                data = store.peek(cas_key(ref.digest))
                nbytes += len(data) if data is not None else 0
                checked[ref.digest] = data is not None and content_digest(data) == ref.digest
                if data is None:
                    problems.append(Problem(key, "missing-blob", f"{ref.role} {ref.digest[:16]} absent"))
                elif not checked[ref.digest]:
                    problems.append(Problem(key, "bad-blob", f"{ref.role} {ref.digest[:16]} fails sha256"))
    return VerifyReport(store.url, entries, len(checked), nbytes, tuple(problems))


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
