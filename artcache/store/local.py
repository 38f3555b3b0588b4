"""Local directory store: the fast first tier.

Layout under ``root``::

    cas/<2 hex>/<sha256>    blobs            (sharded: 256 directories per keyspace)
    ac/<2 hex>/<key>        manifests
    tmp/                    temp files of in-flight writes (same file system as the keys)
    quarantine/             files that failed their checks, kept for inspection
    .evict.lock             shared by each put, exclusive while evicting (see eviction.py)
    .evict.journal          the size cap's index of the store (see eviction.py)
    leases/                 lock files of single-flight compiles (``flock``, see leases.py)

Concurrency: any number of processes may read and write at once.  Reads take no lock
(publication is an atomic rename, so a reader sees a whole file or none).  A put (or a
``put_many``, once for all its files) holds ``.evict.lock`` shared while it journals and
publishes, and eviction holds it exclusive, so an evictor sees every entry published
before it and never removes a blob that a put has just found present (``eviction.py``:
whole entries, an incremental index).

A store directory may be shared, so nothing in it is trusted (``_nofollow.py``): every
operation is relative to a directory descriptor opened without following links, reads
open with ``O_NOFOLLOW``, and deletes (eviction, gc, rm) remove only regular files under
names this class makes (``<sha256>``, ``<sha256>.<pid>.<thread>.<n>.tmp``,
``<sha256>.<ns>.<pid>.bad``).  A root or directory others can write is refused unless
the store is opened with ``shared=True`` (URL ``?shared=1``).
"""

from __future__ import annotations

import fcntl
import os
import re
import stat
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..digest import content_digest
from ..errors import CorruptEntryError, StoreError
from . import _fs
from ._nofollow import DirTree, ShardFiles, lstat_at, regular_files, subdirectories, unlink_regular
from ._journal import Journal
from .eviction import Index, checkpoint_line, manifest_refs, remove_line
from .eviction import evict as evict_units
from .base import KEYSPACES, MAX_MANIFEST_BYTES, KeyInfo, Store, check_key
from .leases import FileLease, Lease

# After an eviction the store is brought down to this fraction of the cap, so that a
# steady stream of writes does not evict on every put (and eviction, which costs what it
# removes, is amortized over the puts in between).
EVICT_LOW_WATER = 0.9
# Temp files older than this belong to a writer that died; eviction removes them.
STALE_TMP_S = 3600.0
EVICT_LOCK_TIMEOUT_S = 30.0
_LOCK_POLL_S = 0.02
_LOCK_NAME = ".evict.lock"

_SHARD_RE = re.compile(r"[0-9a-f]{2}")
_NAME_RE = re.compile(r"[0-9a-f]{64}")
# The names this store gives temp and quarantined files (see _fs.temp_name, _set_aside).
_TMP_RE = re.compile(r"[0-9a-f]{64}\.\d+\.\d+\.\d+\.tmp")
_BAD_RE = re.compile(r"[0-9a-f]{64}\.\d+\.\d+\.bad")


@dataclass(frozen=True)
class _File:
    """One file of the store as eviction sees it."""

    top: str  # "cas", "ac", "tmp" or "quarantine"
    shard: str  # "" outside the keyspaces
    name: str
    size: int
    mtime: float
    mtime_ns: int = 0

    @property
    def key(self) -> str | None:
        return f"{self.top}/{self.name}" if self.top in KEYSPACES else None


class LocalStore(Store):
    bounded_reads = True  # get_bounded checks the size with fstat before reading

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        max_size: int | None = None,
        durable: bool = True,
        read_only: bool = False,
        shared: bool = False,
    ) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = "file://" + str(self.root)
        self.max_size = max_size
        self.durable = durable
        self.read_only = read_only
        self.shared = shared
        self.quarantined = 0
        self._tree = DirTree(self.root, shared=shared)
        # What the store holds, kept from the journal that every writer appends to: a
        # capped put reads only the lines appended since its last put (eviction.py).
        self._journal = Journal(self._tree.top)
        try:
            if not read_only:
                for sub in (*KEYSPACES, "tmp", "quarantine"):
                    self._tree.top(sub, create=True)
            else:
                self._tree.top()  # refuses a root others can write, like a writable store
        except FileNotFoundError:
            pass  # a read-only store on a missing directory is an empty store
        except OSError as exc:
            raise StoreError(f"cannot create store at {self.root}: {exc}") from exc

    # -- paths ---------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        """Where ``key`` lives (for messages and benchmarks; never opened by path)."""
        space, name = check_key(key)
        return self.root / space / name[:2] / name

    # -- protocol ------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        return self._read(key, mark_used=True, max_bytes=None)

    def peek(self, key: str) -> bytes | None:
        return self._read(key, mark_used=False, max_bytes=None)

    def get_bounded(self, key: str, max_bytes: int) -> bytes | None:
        return self._read(key, mark_used=True, max_bytes=max_bytes)

    def get_many_bounded(self, bounds: Mapping[str, int]) -> dict[str, bytes | None]:
        return {key: self._read(key, mark_used=True, max_bytes=cap) for key, cap in bounds.items()}

    def _read(self, key: str, *, mark_used: bool, max_bytes: int | None) -> bytes | None:
        space, name = check_key(key)
        # A manifest larger than any the store writes is damage or a plant: quarantined,
        # like a torn file.  A value over the caller's own bound is refused and left.
        store_cap = MAX_MANIFEST_BYTES if space == "ac" else None
        caps = [c for c in (store_cap, max_bytes) if c is not None]
        try:
            shard = self._tree.open_sub(space, name[:2])
            try:
                try:
                    found = _fs.read_verified(shard, name, max_bytes=min(caps) if caps else None,
                                              mark_used=mark_used)
                except _fs.TornFile as why:
                    self._set_aside(shard, name, why.inode)
                    if self.on_corrupt is not None:
                        # Set aside and read as a miss; whoever opened the store hears of
                        # it, so a recompile it causes is not silent.
                        self.on_corrupt(key, f"{why.args[0]}; quarantined")
                    return None
                except _fs.TooLarge as big:
                    if store_cap is not None and big.size > store_cap:
                        # Damage or a plant: set aside (a legitimate save heals it) and
                        # reported, so the caller's error policy warns about it.
                        self._set_aside(shard, name, big.inode)
                        raise CorruptEntryError(
                            f"{key} in {self.url} holds {big.size} bytes, over the {store_cap}-byte manifest "
                            "limit; quarantined"
                        ) from None
                    raise CorruptEntryError(
                        f"{key} in {self.url} holds {big.size} bytes, more than the {max_bytes} expected"
                    ) from None
            finally:
                os.close(shard)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"read {key} from {self.url}: {exc}") from exc
        return found[0] if found is not None else None

    def put(self, key: str, data: bytes) -> None:
        self.put_many({key: data})

    def put_many(self, items: Mapping[str, bytes]) -> None:
        """Write each value like :meth:`put`, in order, holding ``.evict.lock`` shared
        once for all of them: their journal lines go in one append before the first is
        published, and a capped store accounts (and evicts) once, after the last."""
        self._check_writable()
        todo = []
        for key, data in items.items():
            space, name = check_key(key)
            if space == "ac" and len(data) > MAX_MANIFEST_BYTES:
                raise StoreError(f"{key}: a {len(data)}-byte manifest exceeds the {MAX_MANIFEST_BYTES}-byte bound")
            if self.max_size is not None and len(data) + _fs.TRAILER_SIZE > self.max_size:
                raise StoreError(f"{key}: {len(data)} bytes exceed the store cap {self.max_size}")
            todo.append((key, space, name, data))
        if not todo:
            return
        shards: list[int] = []
        new: list[tuple[int, str, str, str, bytes]] = []
        current = todo[0][0]  # the key being written, for the message if it fails

        def records() -> list[tuple[str, int, int, tuple[str, ...]]]:  # made only where there is a journal
            now = time.time_ns()
            return [(key, len(data) + _fs.TRAILER_SIZE, now, manifest_refs(data) if space == "ac" else ())
                    for _shard, key, space, _name, data in new]

        try:
            try:
                with self._lock(fcntl.LOCK_SH):
                    for current, space, name, data in todo:
                        shards.append(self._tree.open_sub(space, name[:2], create=True))
                        # Content-addressed and already present with exactly these bytes:
                        # touch it (an evictor, which waits for this lock, then sees it in
                        # use) and skip it.  Bytes that differ, fail their trailer, or are
                        # not a regular file are replaced: a damaged or planted blob heals
                        # on the next legitimate save.
                        if not (space == "cas" and _fs.holds(shards[-1], name, data)):
                            new.append((shards[-1], current, space, name, data))
                    # Journaled before any is published: a crash in between leaves lines
                    # for files that are not there, which eviction drops.
                    total = self._journal.append(records, follow=self.max_size is not None)
                    for shard, current, space, name, data in new:
                        self._write(shard, space, name, data)
            finally:
                for shard in shards:
                    os.close(shard)
        except OSError as exc:
            raise StoreError(f"write {current} to {self.url}: {exc}") from exc
        if self.max_size is not None:
            self._account(total, keep=frozenset(key for key, *_rest in todo))

    def _write(self, shard: int, space: str, name: str, data: bytes) -> None:
        tmp_dir = self._tree.top("tmp", create=True)
        try:
            tmp = _fs.write_temp(tmp_dir, name, data, durable=self.durable)
        except FileNotFoundError:  # tmp/ was removed (e.g. by hand): recreate it, once
            tmp_dir = self._tree.top("tmp", create=True, revalidate=True)
            tmp = _fs.write_temp(tmp_dir, name, data, durable=self.durable)
        try:
            try:
                _fs.publish(tmp_dir, tmp, shard, name)
            except IsADirectoryError:
                # A directory was planted under the key's name: move it aside, then publish.
                self._set_aside(shard, name, None)
                _fs.publish(tmp_dir, tmp, shard, name)
            except FileNotFoundError:
                # The shard was removed since we opened it (a rename into a removed
                # directory fails): open it afresh, creating it, and retry once.
                fresh = self._tree.open_sub(space, name[:2], create=True)
                try:
                    _fs.publish(tmp_dir, tmp, fresh, name)
                finally:
                    os.close(fresh)
        except BaseException:
            _fs.discard(tmp_dir, tmp)
            raise

    def has(self, key: str) -> bool:
        space, name = check_key(key)
        try:
            shard = self._tree.open_sub(space, name[:2])
            try:
                st = lstat_at(shard, name)
            finally:
                os.close(shard)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StoreError(f"has {key} in {self.url}: {exc}") from exc
        return st is not None and stat.S_ISREG(st.st_mode)

    def delete(self, key: str) -> bool:
        self._check_writable()
        space, name = check_key(key)
        try:
            shard = self._tree.open_sub(space, name[:2])
            try:
                with self._lock(fcntl.LOCK_SH):
                    st = lstat_at(shard, name)
                    removed = unlink_regular(shard, name)
                    if removed and st is not None:
                        self._journal.append(remove_line(key, st.st_size))
                    return removed
            finally:
                os.close(shard)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StoreError(f"delete {key} from {self.url}: {exc}") from exc

    def iterate(self, prefix: str = "") -> Iterator[KeyInfo]:
        for space in KEYSPACES:
            if not (space + "/").startswith(prefix[: len(space) + 1]):
                continue
            for item in self._scan_space(space):
                key = f"{space}/{item.name}"
                if key.startswith(prefix):
                    yield KeyInfo(key, _fs.payload_size(item.size), item.mtime)

    def quarantine(self, key: str) -> None:
        """Set aside the file under ``key`` if it fails its checks (for ``cas/``: its
        SHA-256 address).  Checked here again, so a good file is never moved."""
        if self.read_only:
            return
        space, name = check_key(key)
        try:
            shard = self._tree.open_sub(space, name[:2])
            try:
                try:
                    found = _fs.read_verified(shard, name, mark_used=False)
                except _fs.TornFile as why:
                    self._set_aside(shard, name, why.inode)
                    return
                if found is not None and space == "cas" and content_digest(found[0]) != name:
                    self._set_aside(shard, name, found[1])
            finally:
                os.close(shard)
        except (OSError, StoreError):
            pass  # best effort (absent, unreadable, an unsafe shard): the reader refuses it anyway

    def close(self) -> None:
        self._journal.close()
        self._tree.close()

    # -- quarantine ----------------------------------------------------------------
    def _set_aside(self, shard: int, name: str, inode: int | None) -> None:
        """Move an entry that failed its checks to ``quarantine/``, so the key reads as a
        miss and the entry is rebuilt, while the bad bytes stay for a post-mortem.  The
        rename moves the entry itself: if it is a link, the link, never its target."""
        self.quarantined += 1
        if self.read_only:
            return
        st = lstat_at(shard, name)
        if st is None or (inode is not None and st.st_ino != inode):
            return  # another reader quarantined it, or a writer replaced it: keep that
        dest = f"{name}.{time.time_ns()}.{os.getpid()}.bad"
        try:
            try:
                _fs.publish(shard, name, self._tree.top("quarantine", create=True), dest)
            except FileNotFoundError:
                # Another reader quarantined it first, or quarantine/ was removed (then
                # recreated here): try once more.
                _fs.publish(shard, name, self._tree.top("quarantine", create=True, revalidate=True), dest)
        except FileNotFoundError:
            pass
        except OSError:
            # Can't move it (e.g. permissions): deleting still stops it being served.
            try:
                os.unlink(name, dir_fd=shard)
            except OSError:
                pass

    def _quarantine_key(self, key: str, inode: int | None) -> None:
        """Quarantine the file under ``key`` if it is still ``inode`` (for tests of the
        race with a writer)."""
        space, name = check_key(key)
        shard = self._tree.open_sub(space, name[:2])
        try:
            self._set_aside(shard, name, inode)
        finally:
            os.close(shard)

    def quarantined_files(self) -> int:
        return len(self.quarantined_names())

    def quarantined_names(self) -> list[str]:
        """Names of the files in ``quarantine/``."""
        try:
            names = regular_files(self._tree.top("quarantine", revalidate=True))
            return sorted(name for name, _st in names if _BAD_RE.fullmatch(name))
        except FileNotFoundError:
            return []

    # -- size cap and eviction -----------------------------------------------------
    def disk_usage(self) -> int:
        """Bytes on disk under keys, temp files and quarantine (a full scan)."""
        return sum(f.size for f in self._all_files())

    def evict(
        self, max_size: int, *, low_water: float = EVICT_LOW_WATER, keep: str | None = None
    ) -> list[str]:
        """Evict whole entries, least recently used first, until the store is at or under
        ``max_size * low_water``; return the keys removed.  Holds the eviction lock.

        ``keep`` (a key) is never evicted: a put calls this right after writing its key,
        and a put whose own bytes vanish before it returns would be a silent loss.
        """
        self._check_writable()
        if keep is not None:
            check_key(keep)
        target = int(max_size * low_water)
        return self._evict(target, target, frozenset({keep} if keep is not None else ()))

    def _evict(self, cap: int, target: int, keep: frozenset[str]) -> list[str]:
        """If the store holds more than ``cap``, bring it to ``target`` (eviction.evict)."""
        try:
            with self._lock(fcntl.LOCK_EX), self._journal.held():
                index = self._journal.index()
                if index is None:  # missing or damaged: rebuilt from the files themselves
                    index = self._rebuild_index()
                removed = self._evict_locked(index, cap, target, keep)
                if self._journal.needs_compaction():
                    self._rewrite_journal(index)
                return removed
        except OSError as exc:
            raise StoreError(f"evict from {self.url}: {exc}") from exc

    def _evict_locked(self, index: Index, cap: int, target: int, keep: frozenset[str]) -> list[str]:
        extras = list(self._extra_files())
        extra = sum(f.size for f in extras)
        if index.total + extra <= cap:
            return []
        # Quarantined files and temp files of dead writers go first, oldest first.
        now = time.time()
        for f in sorted(extras, key=lambda f: f.mtime):
            if index.total + extra <= target:
                break
            if f.top == "tmp" and now - f.mtime <= STALE_TMP_S:
                continue  # an in-flight write of a live process
            self._remove(f)
            extra -= f.size
        # Shards stay open for the whole eviction, and its journal lines are written at
        # its end in one append (lost in a crash, they only make the index count files
        # that are gone, which the next eviction drops).  Keys come from the index:
        # parsed from the journal's grammar or found by a scan under valid names.
        files = ShardFiles(self._tree)
        lines: list[bytes] = []
        try:
            plan = evict_units(index, cap=cap, target=target, extra=extra, keep=keep, now_ns=time.time_ns(),
                               state=files.mtime_ns, remove=files.remove, record=lambda key, size: lines.append(remove_line(key, size)))
        finally:
            files.close()
            lines.append(checkpoint_line(index.total))
            self._journal.append(b"".join(lines), applied=True)
        return plan.removed

    def _rebuild_index(self) -> Index:
        """The index from a scan of the keyspaces (every manifest read for the blobs it
        names), written as the new journal.  Caller holds the lock exclusive."""
        index = Index()
        for space in KEYSPACES:
            for f in self._scan_space(space):
                refs = self._refs_on_disk(f) if space == "ac" else ()
                index.put(f"{space}/{f.name}", f.size, f.mtime_ns, refs)
        try:
            self._rewrite_journal(index)
        except OSError:
            pass  # e.g. a directory planted under its name: this eviction uses the scan alone
        return index

    def _refs_on_disk(self, f: _File) -> tuple[str, ...]:
        try:
            shard = self._tree.open_sub(f.top, f.shard)
            try:
                found = _fs.read_verified(shard, f.name, max_bytes=MAX_MANIFEST_BYTES, mark_used=False)
            finally:
                os.close(shard)
        except (OSError, _fs.TornFile, _fs.TooLarge):
            return ()  # unreadable: an entry of its own, its blobs unnamed
        return tuple(f"cas/{d}" for d in manifest_refs(found[0])) if found is not None else ()

    def _rewrite_journal(self, index: Index) -> None:
        tmp_dir = self._tree.top("tmp", create=True, revalidate=True)
        self._journal.rewrite(index, tmp_dir, _fs.temp_name("0" * 64), durable=self.durable)

    @contextmanager
    def _lock(self, mode: int) -> Iterator[None]:
        """``flock`` on ``.evict.lock`` (released by the kernel if the holder dies):
        shared by puts, exclusive by eviction.  Each holder opens the file anew (a lock
        belongs to an open file, and threads must not share one); the file is opened
        without following a link and never written to."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(_LOCK_NAME, flags, 0o644, dir_fd=self._tree.top())
        except FileNotFoundError:
            fd = os.open(_LOCK_NAME, flags, 0o644, dir_fd=self._tree.top(revalidate=True))
        except OSError as exc:
            raise StoreError(f"eviction lock {self.root / _LOCK_NAME}: {exc}") from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise StoreError(f"eviction lock {self.root / _LOCK_NAME} is not a regular file")
            deadline = time.monotonic() + EVICT_LOCK_TIMEOUT_S
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StoreError(
                            f"eviction lock on {self.root} busy for {EVICT_LOCK_TIMEOUT_S}s"
                        ) from None
                    time.sleep(_LOCK_POLL_S)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _remove(self, f: _File) -> None:
        try:
            if f.shard:
                shard = self._tree.open_sub(f.top, f.shard)
                try:
                    unlink_regular(shard, f.name)
                finally:
                    os.close(shard)
            else:
                unlink_regular(self._tree.top(f.top), f.name)
        except FileNotFoundError:
            pass

    def _account(self, total: int | None, *, keep: frozenset[str]) -> None:
        """After a capped put: evict if the store is over its cap.  ``total``: the bytes
        the store holds, as the put's journal append left them (``None``: unknown)."""
        assert self.max_size is not None
        if total is None or total > self.max_size or self._journal.needs_compaction():
            self._evict(self.max_size, int(self.max_size * EVICT_LOW_WATER), keep)

    @property
    def local_root(self) -> Path:
        return self.root

    # -- leases (single-flight compiles) --------------------------------------------
    supports_leases = True

    def try_lease(self, key: str) -> Lease | None:
        self._check_writable()
        space, name = check_key(key)
        try:
            return FileLease.try_acquire(str(self.root / "leases"), f"{space}-{name}")
        except OSError as exc:
            raise StoreError(f"cannot take a lease in {self.root}: {exc}") from exc

    # -- scanning ------------------------------------------------------------------
    def _scan_space(self, space: str) -> Iterator[_File]:
        """Regular files under valid key names in a keyspace.  Links, other names and
        shards that are links are skipped; each shard is listed then closed."""
        try:
            shards = [s for s in subdirectories(self._tree.top(space, revalidate=True)) if _SHARD_RE.fullmatch(s)]
        except FileNotFoundError:
            return
        for shard_name in shards:
            try:
                shard = self._tree.open_sub(space, shard_name)
                try:
                    found = [
                        _File(space, shard_name, name, st.st_size, st.st_mtime, st.st_mtime_ns)
                        for name, st in regular_files(shard)
                        if _NAME_RE.fullmatch(name) and name.startswith(shard_name)
                    ]
                finally:
                    os.close(shard)
            except FileNotFoundError:  # removed by a concurrent gc
                continue
            yield from found

    def _all_files(self) -> Iterator[_File]:
        for space in KEYSPACES:
            yield from self._scan_space(space)
        yield from self._extra_files()

    def _extra_files(self) -> Iterator[_File]:
        """Temp files and quarantined files (outside the keyspaces and the index)."""
        for top, pattern in (("tmp", _TMP_RE), ("quarantine", _BAD_RE)):
            try:
                found = [
                    _File(top, "", name, st.st_size, st.st_mtime, st.st_mtime_ns)
                    for name, st in regular_files(self._tree.top(top, revalidate=True))
                    if pattern.fullmatch(name)
                ]
            except FileNotFoundError:
                continue
            yield from found
