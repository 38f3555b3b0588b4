"""Directories of a local store, opened without ever following a symlink.

A store directory may be shared, and whoever can write into it can plant symlinks (to
files or to directories, anywhere under the root) and hard links.  So every directory
under the root is opened one component at a time, relative to the directory above it
(``openat`` with ``O_NOFOLLOW | O_DIRECTORY``), and every open, create, rename, unlink
and scan of a file is relative to such a descriptor.  A planted symlink makes that one
operation fail (``ELOOP``) instead of acting on the link's target, so nothing outside the
root is ever read, created, written, renamed or deleted.  Path-based checks (``lstat``
then ``open``) would leave a window between the check and the use; descriptors do not.

Each directory is checked when it is opened, on the descriptor itself (``fstat``): it must
be owned by this user or by root, and not writable by group or others unless its sticky
bit is set (the rule of OpenSSH's StrictModes; git's safe.directory refuses foreign owners
in the same spirit).  A group-writable directory whose group is the user's private group
(the user is its only member, the common ``umask 002`` setup) counts as private.  A store
shared on purpose skips these checks with ``file:///path?shared=1``; it still never
follows a symlink.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

from ..errors import StoreError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO planted under a key name would otherwise block until a
# writer appears; with it the open returns at once and the fstat check refuses it.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# O_EXCL refuses any existing name, a symlink included (even a dangling one).
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
PRIVATE_DIR_MODE = 0o755
SHARED_DIR_MODE = 0o777  # the umask of the sharing users decides

_LINK_ERRNOS = (errno.ELOOP, errno.ENOTDIR)


def private_group() -> int | None:
    """The gid of this user's private group (named like the user, no other member)."""
    try:
        user = pwd.getpwuid(os.geteuid())
        group = grp.getgrgid(user.pw_gid)
    except KeyError:
        return None
    if group.gr_name == user.pw_name and set(group.gr_mem) <= {user.pw_name}:
        return user.pw_gid
    return None


def unsafe_reason(st: os.stat_result, *, uid: int, private_gid: int | None) -> str:
    """Why a directory with status ``st`` lets others than ``uid`` write into it; ``""``
    if it doesn't."""
    if st.st_uid not in (uid, 0):
        return f"owned by uid {st.st_uid}, not by you (uid {uid}) or root"
    if st.st_mode & stat.S_ISVTX:
        return ""  # like /tmp: others may add entries but not remove or rename ours
    if st.st_mode & stat.S_IWOTH:
        return f"writable by everyone (mode {stat.S_IMODE(st.st_mode):04o})"
    if st.st_mode & stat.S_IWGRP and st.st_gid != private_gid:
        return f"writable by group {st.st_gid} (mode {stat.S_IMODE(st.st_mode):04o})"
    return ""


class DirTree:
    """Descriptors of a store root and the directories under it.

    The root and its top-level directories (``cas``, ``ac``, ``tmp``, ...) are opened
    once and kept; a kept descriptor whose directory was removed (``st_nlink == 0``, e.g.
    someone cleaned the store by hand) is reopened by name.  Replaced descriptors are
    closed only by :meth:`close`: another thread may still be using the number, and a
    closed number can be reused by an unrelated open.  Deeper directories (shards) are
    opened per operation.
    """

    def __init__(self, root: Path, *, shared: bool) -> None:
        self.root = root
        self.shared = shared
        self.dir_mode = SHARED_DIR_MODE if shared else PRIVATE_DIR_MODE
        self._uid = os.geteuid()
        self._private_gid = private_group()
        self._lock = threading.RLock()  # top() of a subdirectory opens the root under it
        self._kept: dict[str, int] = {}  # "" is the root
        self._retired: list[int] = []

    # -- checks --------------------------------------------------------------------
    def check(self, fd: int, where: str) -> None:
        """Refuse a directory descriptor (opened with ``O_DIRECTORY``, so a directory)
        that others can write into; ``where`` is its path under the root, for messages."""
        if self.shared:
            return
        why = unsafe_reason(os.fstat(fd), uid=self._uid, private_gid=self._private_gid)
        if why:
            raise StoreError(
                f"refusing store directory {self._path(where)}: {why}; if it is shared on purpose, "
                f"open it with file://{self.root}?shared=1"
            )

    def _path(self, where: str) -> str:
        # Built only for messages: joining paths on every open costs more than the open.
        return f"{self.root}/{where}" if where else str(self.root)

    # -- opening -------------------------------------------------------------------
    def open_root(self, *, create: bool) -> int:
        """A new descriptor of the root (the caller closes it).  The path down to the
        root is the user's own configuration; the root itself must not be a symlink."""
        if create:
            self.root.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.mkdir(self.root, self.dir_mode)
            except FileExistsError:
                pass
        try:
            fd = os.open(self.root, DIR_FLAGS)
        except OSError as exc:
            if exc.errno in _LINK_ERRNOS:
                raise StoreError(f"refusing store root {self.root}: a symlink or not a directory") from exc
            raise
        try:
            self.check(fd, "")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def open_under(self, parent: int, name: str, where: str, *, create: bool) -> int:
        """A new descriptor of directory ``name`` under ``parent`` (the caller closes it);
        ``FileNotFoundError`` if it is absent and ``create`` is false."""
        try:
            try:
                fd = os.open(name, DIR_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                if not create:
                    raise
                # Created only when missing: a mkdir that fails with EEXIST still costs
                # a directory lock and, on overlay file systems, most of a millisecond.
                try:
                    os.mkdir(name, self.dir_mode, dir_fd=parent)
                except FileExistsError:
                    pass  # another process created it first
                fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in _LINK_ERRNOS:
                raise StoreError(f"refusing store path {self._path(where)}: a symlink or not a directory") from exc
            raise
        try:
            self.check(fd, where)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def top(self, name: str = "", *, create: bool = False, revalidate: bool = False) -> int:
        """The kept descriptor of the root (``""``) or of a top-level directory.  Do not
        close it.  ``FileNotFoundError`` if absent and ``create`` is false.

        ``revalidate`` reopens a kept directory that was removed.  Callers ask for it only
        after an operation under the kept descriptor failed with ``ENOENT`` (which is what
        every lookup in a removed directory returns): checking on every call would cost an
        ``fstat`` on every read.
        """
        fd = self._kept.get(name)
        if fd is not None and not (revalidate and self._removed(fd)):
            return fd
        with self._lock:
            fd = self._kept.get(name)
            if fd is not None and not self._removed(fd):
                return fd  # another thread reopened it meanwhile, or it was fine after all
            if name:
                new = self.open_under(self.top(create=create, revalidate=True), name, name, create=create)
            else:
                new = self.open_root(create=create)
            if fd is not None:
                self._retired.append(fd)
            self._kept[name] = new
            return new

    @staticmethod
    def _removed(fd: int) -> bool:
        return os.fstat(fd).st_nlink == 0

    def open_sub(self, top: str, name: str, *, create: bool = False) -> int:
        """A new descriptor of ``top/name`` (a shard); the caller closes it.  (Not a
        context manager: this is on every read, where one costs as much as the open.)"""
        where = f"{top}/{name}"
        try:
            return self.open_under(self.top(top, create=create), name, where, create=create)
        except FileNotFoundError:
            # Absent, or the kept top-level directory was removed (then reopened here).
            return self.open_under(self.top(top, create=create, revalidate=True), name, where, create=create)

    def close(self) -> None:
        with self._lock:
            fds = list(self._kept.values()) + self._retired
            self._kept.clear()
            self._retired.clear()
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def __del__(self) -> None:
        self.close()


class ShardFiles:
    """Files named ``<top>/<name>`` (``name`` a hex digest: its shard is ``<top>/<name[:2]>``)
    for one pass that checks and removes many (eviction): each shard is opened once
    (:meth:`DirTree.open_sub`) and kept until :meth:`close`.  Not thread-safe."""

    def __init__(self, tree: DirTree) -> None:
        self._tree = tree
        self._shards: dict[str, int | None] = {}
        # The key mtime_ns() found last, and found a regular file: its shard and name.
        self._regular: tuple[str, int, str] = ("", -1, "")

    def _shard(self, key: str) -> tuple[int | None, str]:
        top, name = key.split("/", 1)
        where = key[: len(top) + 3]
        if where not in self._shards:
            try:
                self._shards[where] = self._tree.open_sub(top, name[:2])
            except FileNotFoundError:
                self._shards[where] = None
        return self._shards[where], name

    def mtime_ns(self, key: str) -> int | None:
        """The mtime (ns) of the file under ``key`` if it is a regular file, else ``None``."""
        shard, name = self._shard(key)
        st = lstat_at(shard, name) if shard is not None else None
        if st is None or not stat.S_ISREG(st.st_mode):
            return None
        self._regular = (key, shard, name)  # type: ignore[assignment]
        return st.st_mtime_ns

    def remove(self, key: str) -> bool:
        """Remove the regular file under ``key``; ``True`` if removed.  Right after
        :meth:`mtime_ns` found it, without a second check (:func:`unlink_entry`)."""
        last, shard, name = self._regular
        if last == key:
            self._regular = ("", -1, "")
            return unlink_entry(shard, name)
        found, name = self._shard(key)
        return found is not None and unlink_regular(found, name)

    def close(self) -> None:
        for fd in self._shards.values():
            if fd is not None:
                os.close(fd)
        self._shards.clear()


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    """The status of entry ``name`` itself (a link is not followed); ``None`` if absent."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def unlink_regular(dir_fd: int, name: str) -> bool:
    """Remove ``name`` if it is a regular file; ``True`` if removed.  ``unlinkat`` never
    follows a link, so even if the entry is swapped for one after the check, only the
    entry inside the store goes."""
    st = lstat_at(dir_fd, name)
    if st is None or not stat.S_ISREG(st.st_mode):
        return False
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def unlink_entry(dir_fd: int, name: str) -> bool:
    """Remove ``name``, which the caller has just found to be a regular file with
    :func:`lstat_at` (:func:`unlink_regular` without its own check); ``True`` if removed.
    Like there, ``unlinkat`` never follows a link, and a directory swapped in after the
    check is left (``EISDIR``)."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except (FileNotFoundError, IsADirectoryError):
        return False
    return True


def regular_files(dir_fd: int) -> Iterator[tuple[str, os.stat_result]]:
    """(name, status) of the regular files in a directory; links and others are skipped."""
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                yield entry.name, st


def subdirectories(dir_fd: int) -> list[str]:
    """Names of the real directories (not links to one) in a directory."""
    with os.scandir(dir_fd) as entries:
        return [e.name for e in entries if e.is_dir(follow_symlinks=False)]
