"""File primitives of the local store: framed files, atomic publish, verified reads.

A stored file is ``payload || trailer`` (the frame of ``_frame.py``): a verified read costs
one read of the payload into an exact-size ``bytes`` plus one XXH3 pass.

Every function takes a directory descriptor and a plain name (see ``_nofollow.py``):
files are opened with ``O_NOFOLLOW`` relative to a directory that was itself opened
without following links, so no operation here reaches outside the store.  A read
refuses anything but a regular file (a link, a FIFO, a directory) and checks the size
against the caller's bound with ``fstat`` before it reads a byte: a sparse file of huge
apparent size costs nothing.

Crash model: a writer may die at any instruction, and the machine may lose power.
Files are written to a temp name in the store's own ``tmp/`` directory (same file
system, so the rename is atomic), fsynced, then renamed into place: a reader sees the
whole old file, the whole new file or nothing.  The checksum catches what fsync ordering
cannot promise after power loss (a renamed file whose data never reached the disk).
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import threading
import time

from ..digest import checksum
from ._frame import TRAILER_SIZE, parse_trailer, trailer
from ._nofollow import CREATE_FLAGS, READ_FLAGS

# Touch a file's mtime (our LRU clock) on read only when it is older than this: one
# utime per file per minute keeps reads cheap while keeping eviction order meaningful.
TOUCH_AFTER_S = 60.0


# Temp names must be unique across processes (pid), threads (thread id) and calls within
# one thread (counter): monotonic_ns alone can repeat on a coarse clock, and a clash makes
# O_EXCL fail a perfectly good write.
_tmp_counter = itertools.count()


class TornFile(Exception):
    """Internal: a stored entry failed its checks.  The store turns it into a quarantine.

    ``inode`` identifies the entry that failed, so the store quarantines that entry and
    not a good file a writer renamed over the same name in the meantime.
    """

    def __init__(self, message: str, inode: int | None = None) -> None:
        super().__init__(message)
        self.inode = inode


class TooLarge(Exception):
    """Internal: a stored file holds more than the reader's bound (nothing was read)."""

    def __init__(self, size: int, inode: int) -> None:
        super().__init__(f"{size} bytes")
        self.size = size
        self.inode = inode


def temp_name(name: str) -> str:
    return f"{name}.{os.getpid()}.{threading.get_ident()}.{next(_tmp_counter)}.tmp"


def write_temp(tmp_dir: int, name: str, payload: bytes | memoryview, *, durable: bool) -> str:
    """Write ``payload`` and its trailer to a new temp file in ``tmp_dir``; its name.

    The temp file is removed if anything fails, so a failing disk leaves nothing behind.
    """
    tmp = temp_name(name)
    fd = os.open(tmp, CREATE_FLAGS, 0o644, dir_fd=tmp_dir)
    try:
        try:
            _write_all(fd, payload, trailer(payload))
            # mtime is the LRU clock.  The kernel stamps writes with a coarse clock (a few
            # ms), so files written in a burst would tie and evict in directory order;
            # stamping the precise time keeps eviction in true write order.
            now = time.time_ns()
            os.utime(fd, ns=(now, now))
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        discard(tmp_dir, tmp)
        raise
    return tmp


def publish(tmp_dir: int, tmp: str, dir_fd: int, name: str) -> None:
    """Rename a temp file over ``name`` in ``dir_fd``.  ``renameat`` replaces whatever
    entry has that name (a planted link included) and never follows a link."""
    os.replace(tmp, name, src_dir_fd=tmp_dir, dst_dir_fd=dir_fd)


def discard(tmp_dir: int, tmp: str) -> None:
    try:
        os.unlink(tmp, dir_fd=tmp_dir)
    except FileNotFoundError:
        pass


def read_verified(
    dir_fd: int, name: str, *, max_bytes: int | None = None, mark_used: bool = True
) -> tuple[bytes, int] | None:
    """(payload, inode) of the framed file ``name``; ``None`` if absent; ``TornFile`` if it
    fails its checks; ``TooLarge`` if its payload exceeds ``max_bytes``.

    Four syscalls besides open/close (fstat, two preads, and a utime at most once a
    minute per file): the trailer is read first so the payload lands in one ``bytes``
    object of the exact size with no slicing copy, then one XXH3 pass verifies it.
    """
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        raise TornFile("a symbolic link, not a file the store wrote", st.st_ino) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TornFile("not a regular file", st.st_ino)
        size = st.st_size
        if size < TRAILER_SIZE:
            raise TornFile(f"{size} bytes, shorter than the trailer", st.st_ino)
        if max_bytes is not None and size - TRAILER_SIZE > max_bytes:
            raise TooLarge(size - TRAILER_SIZE, st.st_ino)
        parsed = parse_trailer(os.pread(fd, TRAILER_SIZE, size - TRAILER_SIZE))
        if parsed is None or parsed[1] != size - TRAILER_SIZE:
            raise TornFile("bad trailer (truncated or not an artcache file)", st.st_ino)
        sum_, length = parsed
        payload = _read_exact(fd, length, st.st_ino)
        if checksum(payload) != sum_:
            raise TornFile("checksum mismatch", st.st_ino)
        # Only a file with no other name: a hard link's other names may be outside the
        # store, and touching it would change a file there.
        if mark_used and st.st_nlink == 1 and time.time() - st.st_mtime > TOUCH_AFTER_S:
            touch(fd)
    finally:
        os.close(fd)
    return payload, st.st_ino


def holds(dir_fd: int, name: str, payload: bytes | memoryview) -> bool:
    """Whether ``name`` is a regular file holding exactly ``payload`` and its trailer
    (so a put of the same bytes can skip the write).  Marks it used if so."""
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    except OSError:
        return False  # absent, a link, unreadable: write it
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != len(payload) + TRAILER_SIZE:
            return False
        if os.pread(fd, TRAILER_SIZE, len(payload)) != trailer(payload):
            return False
        # Compare the bytes, not a checksum: XXH3 is not collision resistant, and these
        # bytes may have been written by anyone who can write the store.
        if _read_exact(fd, len(payload), st.st_ino) != payload:
            return False
        if st.st_nlink == 1:
            touch(fd)
        return True
    except (OSError, TornFile):
        return False
    finally:
        os.close(fd)


def touch(fd: int) -> None:
    """Mark an open file as recently used.  Best effort: a read-only store can't."""
    try:
        now = time.time_ns()  # precise, like write_temp's stamp (see there)
        os.utime(fd, ns=(now, now))
    except OSError:
        pass


def payload_size(file_size: int) -> int:
    return max(0, file_size - TRAILER_SIZE)


def _write_all(fd: int, payload: bytes | memoryview, trailer: bytes) -> None:
    # One writev for payload and trailer: one syscall, and no copy to concatenate them.
    # Then loop for the short writes POSIX allows (signals, quotas, a full disk).
    written = os.writev(fd, [payload, trailer])
    for part in (payload, trailer):
        view = memoryview(part)[written:] if written < len(part) else memoryview(b"")
        written = max(0, written - len(part))
        while view:
            view = view[os.write(fd, view) :]


def _read_exact(fd: int, length: int, inode: int) -> bytes:
    # A single read into an exact-size bytes object is the common case for regular
    # files; the loop handles the short reads POSIX allows.
    data = os.pread(fd, length, 0)
    if len(data) == length:
        return data
    parts = [data]
    got = len(data)
    while got < length:
        chunk = os.pread(fd, length - got, got)
        if not chunk:
            raise TornFile(f"file shrank while reading ({got} of {length} bytes)", inode)
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)
