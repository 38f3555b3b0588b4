"""The journal file of a local store's size cap, as one process reads and writes it (the
design, the line grammar and the crash story are in ``eviction.py``)."""

from __future__ import annotations

import os
import stat
import threading
import zlib
from collections.abc import Callable

from .eviction import (
    _MAX_SIZE,
    JOURNAL_NAME,
    JOURNAL_VERSION,
    MAX_JOURNAL_BYTES,
    MAX_LINE,
    Index,
    header_line,
    put_line,
)

# What a put journals: key, bytes on disk, mtime (ns), the blob digests an entry names.
PutRecord = tuple[str, int, int, tuple[str, ...]]

_MAX_HEADER = 256
_JOURNAL_FLAGS = os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# How far back from its end a new process looks for the last checkpoint.
_CHECKPOINT_SEARCH = 8 << 20
_CHECKPOINT_WINDOW = 256 << 10
# The journal is rewritten from the index once it holds this many lines more than twice
# the files it describes: rewriting costs O(files), so it is amortized over the lines.
COMPACT_MIN_LINES = 16384
# A process's own puts wait for its next eviction to enter its index, at most this many.
_MAX_PENDING = 1 << 16


class Journal:
    """The journal file of one store, as one process sees it.  ``root`` returns the
    store root's descriptor (opened without following links).  Thread-safe.

    A process reads it at two depths.  :meth:`total` (every capped put) needs only the
    bytes the store holds: the header's total plus each later line's size, so a new
    process reads only what was appended since the last checkpoint.  :meth:`index`
    (eviction) loads the snapshot and replays every line after it into an :class:`Index`
    once per process, then follows the tail like :meth:`total`.
    """

    def __init__(self, root: Callable[[], int]) -> None:
        self._root = root
        # Re-entrant: an evictor holds it across its whole eviction (:meth:`held`), so
        # that no other thread of the process applies lines to the index meanwhile.
        self._lock = threading.RLock()
        self._fd: int | None = None
        self._ino = 0
        self._reset()

    def _reset(self) -> None:
        self._offset = 0
        self._total = 0  # bytes, from the header and the lines after it
        self._base_files = 0  # files the header describes
        self._tail_lines = 0
        self._base_end = 0  # where the lines after the header's snapshot begin
        self._snapshot_crc = 0
        self._damaged = False
        self._index: Index | None = None
        self._pending: list[PutRecord] = []  # own puts journaled, not yet in the index
        self._pending_bytes = 0

    # -- the file ------------------------------------------------------------------
    def _open(self) -> bool:
        """Open the journal if it is there (a regular file with one name).  Caller
        holds ``_lock``."""
        self._close()
        try:
            fd = os.open(JOURNAL_NAME, _JOURNAL_FLAGS, dir_fd=self._root())
        except OSError:
            return False  # absent, a link (ELOOP), unreadable: the evictor rebuilds it
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)  # a FIFO, or a hard link whose other name may be outside the store
            return False
        self._fd, self._ino = fd, st.st_ino
        return True

    def _current(self) -> bool:
        """Whether our descriptor is the file under the journal's name, reopening it if
        not.  Caller holds ``_lock``."""
        try:
            st = os.stat(JOURNAL_NAME, dir_fd=self._root(), follow_symlinks=False)
        except FileNotFoundError:
            self._close()
            return False
        if self._fd is not None and st.st_ino == self._ino:
            return True
        return self._open()

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._reset()

    def close(self) -> None:
        with self._lock:
            self._close()

    def held(self) -> threading.RLock:
        """The lock that guards this object and its index (for an evictor to hold)."""
        return self._lock

    # -- writing (the caller holds .evict.lock, shared or exclusive) ---------------
    def append(self, lines: bytes | Callable[[], list[PutRecord]], *, follow: bool = False,
               applied: bool = False) -> int | None:
        """Append whole lines, or puts (``lines()`` makes them: only if needed), in one
        write, if the journal exists (if not, the next evictor builds it from a scan,
        which sees these writes).  With ``follow``: return the bytes the store holds, as
        :meth:`total` would, reading what others appended only if the write did not land
        where this process's reading stopped; ``None`` if unknown (missing or damaged).
        ``applied``: the index already holds what these lines say (an evictor's own)."""
        with self._lock:
            if not self._current():
                return None
            assert self._fd is not None
            puts = None if isinstance(lines, bytes) else lines()
            data = lines if puts is None else b"".join(put_line(*put) for put in puts)  # type: ignore[misc]
            if data:
                os.write(self._fd, data)  # O_APPEND: one write lands whole, after every other
                # Nothing else was appended since we last read (our write ends where our
                # reading stopped plus our lines): take our own lines in without reading.
                if self._offset and not self._damaged and os.lseek(self._fd, 0, os.SEEK_CUR) == self._offset + len(data):
                    if puts is not None:
                        for put in puts:
                            self._take_put(*put)
                    elif applied and self._index is not None:
                        self._flush()
                        self._index.lines += data.count(b"\n")
                        self._tail_lines = self._index.lines - self._base_files
                    else:
                        self._take(data.split(b"\n")[:-1])
                    self._offset += len(data)
                    if follow:
                        return self._known()
            return self._follow(full=False) if follow else None

    # -- reading -------------------------------------------------------------------
    def total(self) -> int | None:
        """Bytes the store holds, with every line appended since the last call; ``None``
        if the journal is missing or damaged (then rebuild it, holding the lock)."""
        with self._lock:
            return self._follow(full=False)

    def index(self) -> Index | None:
        """The whole index (replayed once per process, then followed); ``None`` if the
        journal is missing or damaged."""
        with self._lock:
            if self._follow(full=True) is None:
                return None
            self._flush()
            return self._index

    def _follow(self, *, full: bool) -> int | None:
        if not self._current():
            return None
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        if size > MAX_JOURNAL_BYTES or size == 0:
            return None  # too large to be ours, or without its header: damaged
        if full and self._index is None:
            self._reset()
            self._index = Index()
        if size > self._offset:
            self._read(size)
        return self._known()

    def _known(self) -> int | None:
        if self._damaged or (self._index is not None and self._index.damaged):
            return None
        return self._index.total + self._pending_bytes if self._index is not None else self._total

    def _read(self, size: int) -> None:
        assert self._fd is not None
        if self._offset == 0:
            head = os.pread(self._fd, _MAX_HEADER, 0)
            newline = head.find(b"\n")
            self._header(head[:newline] if newline >= 0 else b"")
            if self._damaged:
                return
            if self._base_end > size:
                self._damaged = True  # a journal is written whole: this one is cut short
                return
            # The header's snapshot is in its total: only an index reads it.
            self._offset = self._base_end
            if self._index is None:
                self._from_checkpoint(size)
            else:
                snapshot = os.pread(self._fd, self._base_end - newline - 1, newline + 1)
                if zlib.crc32(snapshot) != self._snapshot_crc:
                    self._damaged = True
                    return
                self._index.load(snapshot, self._base_files)
        if size <= self._offset:
            return
        data = os.pread(self._fd, size - self._offset, self._offset)
        end = data.rfind(b"\n") + 1  # a line being appended right now is left for later
        if end == 0:
            self._damaged |= len(data) > MAX_LINE
            return
        self._take(data[:end].split(b"\n")[:-1])
        self._offset += end

    def _take_put(self, key: str, size: int, mtime_ns: int, refs: tuple[str, ...]) -> None:
        """One put this process just journaled, taken in as its line would be: into
        the index when it is next needed (:meth:`_flush`), its size into the total now
        (a put over a file already there counts twice until then, as in a total read
        from the lines: the next eviction is a little early, never late)."""
        if self._index is not None:
            self._pending.append((key, size, mtime_ns, refs))
            self._pending_bytes += size
            if len(self._pending) >= _MAX_PENDING:
                self._flush()
        else:
            self._total += size
        self._tail_lines += 1

    def _flush(self) -> None:
        """Apply this process's own puts that are not in the index yet, in order."""
        index = self._index
        if index is None or not self._pending:
            return
        for key, size, mtime_ns, refs in self._pending:
            index.put(key, size, mtime_ns, tuple("cas/" + r for r in refs) if key[0] == "a" else ())
        index.lines += len(self._pending)
        self._pending, self._pending_bytes = [], 0

    def _take(self, lines: list[bytes]) -> None:
        if self._index is not None:
            self._flush()  # others' lines come after our own puts
            self._index.replay(lines)
            self._tail_lines = self._index.lines - self._base_files
        else:
            for line in lines:
                self._add(line)
            self._tail_lines += len(lines)

    def _from_checkpoint(self, size: int) -> None:
        """Start from the last checkpoint, if one is near the end: every line before it
        is in its total.  Searched backwards a window at a time (it is usually within
        the lines one eviction's worth of puts appends)."""
        assert self._fd is not None
        floor = max(self._base_end, size - _CHECKPOINT_SEARCH)
        end = size
        while end > floor:
            start = max(floor, end - _CHECKPOINT_WINDOW)
            # Past ``end`` by a checkpoint line's length: one starting before it ends there.
            data = os.pread(self._fd, min(size, end + 64) - start, start)
            at = data.rfind(b"\nT ", 0, end - start)
            while at >= 0:
                stop = data.find(b"\n", at + 1)
                fields = _checked(data[at + 1 : stop]) if stop > 0 else None
                if fields is not None and len(fields) == 2 and fields[1].isdigit() and len(fields[1]) <= 16:
                    self._total = int(fields[1])
                    self._offset = start + stop + 1
                    return
                at = data.rfind(b"\nT ", 0, at)
            end = start

    def _header(self, line: bytes) -> None:
        """``H <version> <nonce> <total bytes> <files> <snapshot bytes> <snapshot crc>``:
        the journal was last written whole holding ``files`` files, ``total bytes`` in
        all, described by the binary snapshot (``Index.snapshot``) in the ``snapshot
        bytes`` after the header, whose CRC-32 (hex) is ``snapshot crc``."""
        fields = _checked(line)
        try:
            if fields is None or fields[:2] != [b"H", b"%d" % JOURNAL_VERSION] or len(fields) != 7:
                raise ValueError("header")
            total, files, snapshot = int(fields[3]), int(fields[4]), int(fields[5])
            if not (0 <= total <= _MAX_SIZE and 0 <= files and 0 <= snapshot <= MAX_JOURNAL_BYTES):
                raise ValueError("header range")
            crc = int(fields[6], 16) if len(fields[6]) == 8 else -1
        except ValueError:
            self._damaged = True
            return
        self._total, self._base_files, self._base_end = total, files, len(line) + 1 + snapshot
        self._snapshot_crc = crc

    def _add(self, line: bytes) -> None:
        """One line's effect on the total (``+``: its size, ``-``: minus its size)."""
        fields = _checked(line)
        if fields is not None and len(fields) == 2 and fields[0] == b"T":
            return  # a checkpoint: what it says is what this process already counted
        try:
            if fields is None or len(fields) not in (4, 6) or fields[0] not in (b"+", b"-"):
                raise ValueError("record")
            size = int(fields[3])
            if not 0 <= size <= _MAX_SIZE:
                raise ValueError("size")
        except ValueError:
            self._damaged = True
            return
        self._total += size if fields[0] == b"+" else -size

    def needs_compaction(self) -> bool:
        files = len(self._index.files) if self._index is not None else self._base_files
        return self._tail_lines > 2 * files + COMPACT_MIN_LINES

    # -- rewriting (the caller holds .evict.lock exclusive) ------------------------
    def rewrite(self, index: Index, tmp_dir: int, temp_name: str, *, durable: bool) -> None:
        """Replace the journal with one that holds ``index`` (rebuild or compaction):
        written under ``tmp_dir`` (``temp_name``, which must not exist), then renamed
        into the root."""
        snapshot = index.snapshot()
        header = header_line(index.total, len(index.files), len(snapshot), zlib.crc32(snapshot))
        body = header + snapshot
        fd = os.open(temp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644, dir_fd=tmp_dir)
        try:
            try:
                view = memoryview(body)
                while view:
                    view = view[os.write(fd, view):]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp_name, JOURNAL_NAME, src_dir_fd=tmp_dir, dst_dir_fd=self._root())
        except BaseException:
            try:
                os.unlink(temp_name, dir_fd=tmp_dir)
            except FileNotFoundError:
                pass
            raise
        with self._lock:
            if self._open():
                self._index, self._offset = index, len(body)
                self._pending, self._pending_bytes = [], 0
                self._total, self._base_files, self._base_end = index.total, len(index.files), len(body)
                self._tail_lines = 0
                index.lines = len(index.files)
                index.damaged = False


def _checked(line: bytes) -> list[bytes] | None:
    """The fields of a journal line whose CRC matches, else ``None``."""
    if len(line) > MAX_LINE or len(line) < 10 or line[-9:-8] != b" ":
        return None
    body = line[:-9]
    try:
        if int(line[-8:], 16) != zlib.crc32(body):
            return None
    except ValueError:
        return None
    return body.split(b" ")
