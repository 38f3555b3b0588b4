"""File primitives of the local store: framed files, atomic publish, verified reads.

A stored file is ``payload || trailer`` (the frame of ``_frame.py``): a verified read costs
one read of the payload into an exact-size ``bytes`` plus one XXH3 pass.

Crash model: a writer may die at any instruction, and the machine may lose power.
Files are written to a temp name in the store's own ``tmp/`` directory (same file
system, so ``os.replace`` is atomic), fsynced, then renamed into place: a reader sees the
whole old file, the whole new file or nothing.  The checksum catches what fsync ordering
cannot promise after power loss (a renamed file whose data never reached the disk).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from pathlib import Path

from ..digest import checksum
from ._frame import TRAILER_SIZE, parse_trailer, trailer

# Touch a file's mtime (our LRU clock) on read only when it is older than this: one
# utime per file per minute keeps reads cheap while keeping eviction order meaningful.
TOUCH_AFTER_S = 60.0


# Temp names must be unique across processes (pid), threads (thread id) and calls within
# one thread (counter): monotonic_ns alone can repeat on a coarse clock, and a clash makes
# O_EXCL fail a perfectly good write.
_tmp_counter = itertools.count()


class TornFile(Exception):
    """Internal: a framed file failed its checks.  The store turns it into a quarantine.

    ``inode`` identifies the file that failed, so the store quarantines that file and not
    a good one a writer renamed over the same path in the meantime.
    """

    def __init__(self, message: str, inode: int | None = None) -> None:
        super().__init__(message)
        self.inode = inode


def write_atomic(final: Path, tmp_dir: Path, payload: bytes, *, durable: bool) -> None:
    """Publish ``payload`` at ``final`` via a temp file + (fsync) + rename.

    The temp file is removed if anything fails before the rename, so a failing disk or
    rename leaves no partial file under a real key.
    """
    tmp = tmp_dir / f"{final.name}.{os.getpid()}.{threading.get_ident()}.{next(_tmp_counter)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
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
        try:
            os.replace(tmp, final)
        except FileNotFoundError:
            # The shard directory is created lazily; a concurrent gc may also remove an
            # empty one between our mkdir and the rename, so create and retry once.
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def read_verified(path: Path | str, *, mark_used: bool = True) -> bytes | None:
    """The payload at ``path``; ``None`` if absent; ``TornFile`` if it fails its checks.

    Four syscalls besides open/close (fstat, two preads, and a utime at most once a
    minute per file): the trailer is read first so the payload lands in one ``bytes``
    object of the exact size with no slicing copy, then one XXH3 pass verifies it.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        size = st.st_size
        if size < TRAILER_SIZE:
            raise TornFile(f"{size} bytes, shorter than the trailer", st.st_ino)
        parsed = parse_trailer(os.pread(fd, TRAILER_SIZE, size - TRAILER_SIZE))
        if parsed is None or parsed[1] != size - TRAILER_SIZE:
            raise TornFile("bad trailer (truncated or not an artcache file)", st.st_ino)
        sum_, length = parsed
        payload = _read_exact(fd, length, st.st_ino)
    finally:
        os.close(fd)
    if checksum(payload) != sum_:
        raise TornFile("checksum mismatch", st.st_ino)
    if mark_used and time.time() - st.st_mtime > TOUCH_AFTER_S:
        touch(path)
    return payload


def touch(path: Path | str) -> None:
    """Mark ``path`` as recently used.  Best effort: a read-only store can't record it."""
    try:
        now = time.time_ns()  # precise, like write_atomic's stamp (see there)
        os.utime(path, ns=(now, now))
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


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
