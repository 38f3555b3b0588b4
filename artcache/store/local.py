"""Local directory store: the fast first tier.

Layout under ``root``::

    cas/<2 hex>/<sha256>    blobs            (sharded: 256 directories per keyspace)
    ac/<2 hex>/<key>        manifests
    tmp/                    temp files of in-flight writes (same file system as the keys)
    quarantine/             files that failed their checksum, kept for inspection
    .evict.lock             held only while evicting
    leases/                 lock files of single-flight compiles (``flock``, see leases.py)

Concurrency: any number of processes may read and write at once.  Reads take no lock
(publication is an atomic rename, so a reader sees a whole file or none).  Writers take
no lock either; only eviction takes ``.evict.lock`` so two evictors don't both delete.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import StoreError
from . import _fs
from .base import KEYSPACES, KeyInfo, Store, check_key
from .leases import FileLease, Lease

# After an eviction the store is brought down to this fraction of the cap, so that a
# steady stream of writes does not evict on every put.
EVICT_LOW_WATER = 0.9
# Temp files older than this belong to a writer that died; eviction removes them.
STALE_TMP_S = 3600.0
EVICT_LOCK_TIMEOUT_S = 30.0


class LocalStore(Store):
    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        max_size: int | None = None,
        durable: bool = True,
        read_only: bool = False,
    ) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = "file://" + str(self.root)
        self._root_str = str(self.root)
        self.max_size = max_size
        self.durable = durable
        self.read_only = read_only
        self.quarantined = 0
        self._tmp = self.root / "tmp"
        self._quarantine = self.root / "quarantine"
        # Bytes this process believes the store holds; None until first needed.  Other
        # processes write too, so it is only a trigger: eviction always rescans, and after
        # writing ``_rescan_every`` bytes of its own a process rescans, so writes of other
        # processes are noticed too (the cap's overshoot is bounded by that amount per
        # concurrent writer; a single process never leaves the store above the cap).
        self._approx_size: int | None = None
        self._written_since_scan = 0
        self._rescan_every = (
            max(1, int(max_size * (1 - EVICT_LOW_WATER) / 4)) if max_size is not None else 0
        )
        if not read_only:
            try:
                for sub in (*KEYSPACES, "tmp", "quarantine"):
                    (self.root / sub).mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create store at {self.root}: {exc}") from exc

    # -- paths ---------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        return Path(self._path_str(key))

    def _path_str(self, key: str) -> str:
        # The read path uses plain strings: three pathlib joins cost more than the
        # open+read syscalls of a small blob.
        space, name = check_key(key)
        return f"{self._root_str}/{space}/{name[:2]}/{name}"

    # -- protocol ------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        return self._read(key, mark_used=True)

    def peek(self, key: str) -> bytes | None:
        return self._read(key, mark_used=False)

    def _read(self, key: str, *, mark_used: bool) -> bytes | None:
        path = self._path_str(key)
        try:
            return _fs.read_verified(path, mark_used=mark_used)
        except _fs.TornFile as why:
            self._quarantine_file(Path(path), str(why), why.inode)
            return None
        except OSError as exc:
            raise StoreError(f"read {key} from {self.url}: {exc}") from exc

    def put(self, key: str, data: bytes) -> None:
        self._check_writable()
        path = self._path(key)
        if key.startswith("cas/") and path.exists():
            # Content-addressed and already present: same bytes by construction.  Touch it
            # so that an eviction racing with this put prefers other, older files.
            _fs.touch(path)
            return
        if self.max_size is not None and len(data) + _fs.TRAILER_SIZE > self.max_size:
            raise StoreError(f"{key}: {len(data)} bytes exceed the store cap {self.max_size}")
        try:
            # No mkdir of the shard here: write_atomic creates it only when the rename
            # reports it missing, which saves a syscall on every put but the first.
            _fs.write_atomic(path, self._tmp, data, durable=self.durable)
        except OSError as exc:
            raise StoreError(f"write {key} to {self.url}: {exc}") from exc
        if self.max_size is not None:
            self._account(len(data) + _fs.TRAILER_SIZE, keep=path)

    def has(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> bool:
        self._check_writable()
        try:
            os.unlink(self._path(key))
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StoreError(f"delete {key} from {self.url}: {exc}") from exc

    def iterate(self, prefix: str = "") -> Iterator[KeyInfo]:
        for space in KEYSPACES:
            if not (space + "/").startswith(prefix[: len(space) + 1]):
                continue
            for entry in self._scan_space(space):
                key = f"{space}/{entry.name}"
                if not key.startswith(prefix):
                    continue
                try:
                    st = entry.stat()
                except FileNotFoundError:  # deleted by a concurrent gc
                    continue
                yield KeyInfo(key, _fs.payload_size(st.st_size), st.st_mtime)

    # -- size cap and eviction -----------------------------------------------------
    def disk_usage(self) -> int:
        """Bytes on disk under keys, temp files and quarantine (a full scan)."""
        total = 0
        for _path, size, _mtime in self._all_files():
            total += size
        return total

    def evict(
        self, max_size: int, *, low_water: float = EVICT_LOW_WATER, keep: str | None = None
    ) -> list[str]:
        """Delete least-recently-used files until the store is at or under
        ``max_size * low_water``; return the keys removed.  Holds the eviction lock.

        ``keep`` (a key) is never evicted: a put calls this right after writing its key,
        and a put whose own bytes vanish before it returns would be a silent loss.
        """
        self._check_writable()
        keep_path = self._path(keep) if keep is not None else None
        try:
            with FileLock(str(self.root / ".evict.lock"), timeout=EVICT_LOCK_TIMEOUT_S):
                return self._evict_locked(int(max_size * low_water), keep_path)
        except Timeout as exc:
            raise StoreError(f"eviction lock on {self.root} busy for {EVICT_LOCK_TIMEOUT_S}s") from exc
        except OSError as exc:
            raise StoreError(f"evict from {self.url}: {exc}") from exc

    def _evict_locked(self, target: int, keep_path: Path | None = None) -> list[str]:
        files = list(self._all_files())
        total = sum(size for _p, size, _m in files)
        now = time.time()
        removed: list[str] = []
        # Quarantined files and stale temp files go first, then keys by last use.
        def order(item: tuple[Path, int, float]) -> tuple[int, float]:
            path, _size, mtime = item
            if path.parent == self._quarantine:
                return (0, mtime)
            if path.parent == self._tmp:
                return (0, mtime) if now - mtime > STALE_TMP_S else (2, mtime)
            return (1, mtime)
        for path, size, mtime in sorted(files, key=order):
            if total <= target:
                break
            if path.parent == self._tmp and now - mtime <= STALE_TMP_S:
                continue  # an in-flight write of a live process
            if path == keep_path:
                continue
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            total -= size
            space_dir = path.parent.parent
            # Compare whole directories, not names: a store rooted at ".../ac" must not
            # report its temp files as keys.
            if space_dir.parent == self.root and space_dir.name in KEYSPACES:
                removed.append(f"{space_dir.name}/{path.name}")
        self._approx_size = total
        self._written_since_scan = 0
        return removed

    def _account(self, added: int, *, keep: Path) -> None:
        assert self.max_size is not None
        if self._approx_size is None or self._written_since_scan + added >= self._rescan_every:
            self._approx_size = self.disk_usage()  # includes the file just written
            self._written_since_scan = 0
        else:
            self._approx_size += added
            self._written_since_scan += added
        if self._approx_size > self.max_size:
            space_dir = keep.parent.parent
            self.evict(self.max_size, keep=f"{space_dir.name}/{keep.name}")

    @property
    def local_root(self) -> Path:
        return self.root

    def quarantined_files(self) -> int:
        try:
            return sum(1 for _ in os.scandir(self._quarantine))
        except FileNotFoundError:
            return 0

    # -- leases (single-flight compiles) --------------------------------------------
    supports_leases = True

    def try_lease(self, key: str) -> Lease | None:
        self._check_writable()
        space, name = check_key(key)
        try:
            return FileLease.try_acquire(str(self.root / "leases"), f"{space}-{name}")
        except OSError as exc:
            raise StoreError(f"cannot take a lease in {self.root}: {exc}") from exc

    # -- quarantine ----------------------------------------------------------------
    def _quarantine_file(self, path: Path, why: str, inode: int | None = None) -> None:
        """Move a file that failed its checks aside, so the key reads as a miss and
        the entry is rebuilt, while the bad bytes stay available for a post-mortem."""
        self.quarantined += 1
        if self.read_only:
            return
        try:
            if inode is not None and os.stat(path).st_ino != inode:
                return  # a writer already replaced the bad file with a new one: keep that
        except FileNotFoundError:
            return  # another reader quarantined it first
        except OSError:
            pass  # can't tell; quarantining a good file only costs a rebuild
        dest = self._quarantine / f"{path.name}.{time.time_ns()}.{os.getpid()}.bad"
        try:
            try:
                os.replace(path, dest)
            except FileNotFoundError:
                if not path.exists():
                    return  # another reader quarantined it first
                # quarantine/ itself is gone (someone cleaned the store by hand)
                self._quarantine.mkdir(parents=True, exist_ok=True)
                os.replace(path, dest)
        except FileNotFoundError:
            pass
        except OSError:
            # Can't move it (e.g. permissions): deleting still stops it being served.
            try:
                os.unlink(path)
            except OSError:
                pass

    # -- scanning ------------------------------------------------------------------
    def _scan_space(self, space: str) -> Iterator[os.DirEntry[str]]:
        try:
            shards = list(os.scandir(self.root / space))
        except FileNotFoundError:
            return
        for shard in shards:
            if not shard.is_dir():
                continue
            try:
                yield from (e for e in os.scandir(shard.path) if len(e.name) == 64)
            except FileNotFoundError:
                continue

    def _all_files(self) -> Iterator[tuple[Path, int, float]]:
        dirs = [self._tmp, self._quarantine]
        for space in KEYSPACES:
            for entry in self._scan_space(space):
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                yield Path(entry.path), st.st_size, st.st_mtime
        for directory in dirs:
            try:
                entries = list(os.scandir(directory))
            except FileNotFoundError:
                continue
            for entry in entries:
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                yield Path(entry.path), st.st_size, st.st_mtime
