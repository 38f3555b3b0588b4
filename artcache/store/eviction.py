"""The local store's size cap: an index of what the store holds, kept incrementally in an
append-only journal, and eviction by whole entries.

**What is evicted.**  The unit is an entry: its manifest (``ac/<key>``) and the blobs no
other entry names.  A blob stays while any manifest in the store names it; the manifest
goes first, so a crash in the middle leaves unreferenced blobs (collected later), never
an entry with missing blobs.  Blobs no entry names (a save in flight, a bare ``put``) are
units of their own.  Order: quarantined files and temp files of dead writers, then entries
and unreferenced blobs by last use (the file's mtime, which reads refresh), least recent
first.  Unreferenced blobs used in the last :data:`IN_FLIGHT_S` seconds may belong to a save
whose manifest is not written yet: they go only when nothing else is left and the store is
still over its cap, oldest first (so only a cap smaller than the saves in flight can take
a blob from under a save; that entry then reads as a miss and is rebuilt).

**The journal** (``.evict.journal`` in the store root; ``_journal.py``) is a cache of the store, never the
truth: a header line, a binary snapshot of the index (:meth:`Index.snapshot`: what the
store held when the journal was last written whole, loaded in one pass), then one text
line per put or removal, each line with its own CRC-32::

    H 2 <nonce> <total> <files> <snapshot bytes> <snapshot crc>   header (Journal._header)
    T <total>                                            checkpoint: the total, after an eviction
    + <space> <name> <bytes> <mtime_ns> <digest,...|->   a file was (re)written; ac: its blobs
    - <space> <name> <bytes>                             a file was removed

A capped put needs only the total: a new process starts from the last checkpoint (each
eviction ends with one) and then reads only what others appended since, so a save costs
O(1) bookkeeping.  The first eviction of a process loads the snapshot and replays the
lines after it into an index, and each eviction after that costs O(what it removes).  The
last-use times in it are hints: eviction checks each candidate's mtime before removing it.

**Concurrency.**  Every put appends its line and publishes its file holding ``.evict.lock``
shared (a batch of puts, ``put_many``, holds it once and appends its lines in one write);
eviction, rebuild and compaction hold it exclusive.  So an evictor sees every entry
published before it started, and a put that re-uses a blob either touches it before the
evictor looks (the blob is then recent and kept) or finds it gone and writes it again.

**Crash story.**  A line is appended before its file is published: a writer killed in
between leaves a line for a file that is not there, which eviction drops when it checks
the file.  A torn or foreign line fails its CRC or its parse: the journal counts as
damaged, and so does a snapshot that fails its CRC or its parse, a missing journal, a
wrong header, or one over :data:`MAX_JOURNAL_BYTES`.  A damaged journal is rebuilt by a
scan of the store under the exclusive lock, written to ``tmp/`` and renamed into place.
Compaction (when the journal holds many more lines than the store has files) writes the
index the same way.

**Hostile contents.**  Whoever can write the store can write the journal.  Every line is
bounded (:data:`MAX_LINE`), checked and parsed against a fixed grammar, the snapshot is
fixed-size records whose sizes and counts are checked (names are hex digests in both:
nothing in the journal can name a path), a journal that is a link or has other
names is never opened or appended to, and the worst a forged journal can do is evict
entries early or late, as anyone who can write the store could anyway.
"""

from __future__ import annotations

import heapq
import re
import secrets
import sys
import zlib
from array import array
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from itertools import compress

import msgpack

from ..entry import MAX_BLOBS, decode_envelope
from ..errors import ArtcacheError

JOURNAL_NAME = ".evict.journal"
JOURNAL_VERSION = 2
# A journal larger than this is damage (it is compacted long before, see _needs_compaction).
MAX_JOURNAL_BYTES = 1 << 30
MAX_LINE = 96 + MAX_BLOBS * 65
# A blob that no entry names and that was used this recently may belong to a save whose
# manifest is not written yet.
IN_FLIGHT_S = 60.0
# Last-use times in the journal within this of the file's mtime count as current.
MTIME_SLACK_NS = 1_000_000_000
_MAX_SIZE = 1 << 50

_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_PUT_RE = re.compile(r"\+ (cas|ac) ([0-9a-f]{64}) ([0-9]{1,16}) ([0-9]{1,19}) (-|[0-9a-f]{64}(?:,[0-9a-f]{64})*)")
_REMOVE_RE = re.compile(r"- (cas|ac) ([0-9a-f]{64}) ([0-9]{1,16})")
_CHECKPOINT_RE = re.compile(r"T ([0-9]{1,16})")


def manifest_refs(data: bytes | memoryview) -> tuple[str, ...]:
    """The blob digests a manifest names; ``()`` for a value that is not a readable
    manifest (the store is a byte store: an ``ac/`` value need not be one).

    Bookkeeping only (nothing is loaded from it), so only the ``blobs`` field is read:
    one msgpack pass with every limit set from the core's length, its envelope's sizes
    checked first (``entry.decode_envelope``)."""
    try:
        core = decode_envelope(data).core
        n = len(core)
        doc = msgpack.unpackb(core, raw=False, strict_map_key=True, max_str_len=n, max_bin_len=0,
                              max_array_len=min(n, MAX_BLOBS), max_map_len=n // 2, max_ext_len=0)
    except (ArtcacheError, msgpack.UnpackException, ValueError, TypeError):
        return ()
    blobs = doc.get("blobs") if isinstance(doc, dict) else None
    if not isinstance(blobs, list):
        return ()
    digests = set()
    for blob in blobs:
        if not (isinstance(blob, list) and len(blob) >= 2 and isinstance(blob[1], str)
                and _DIGEST_RE.fullmatch(blob[1])):
            return ()
        digests.add(blob[1])
    return tuple(sorted(digests))


def put_line(key: str, size: int, mtime_ns: int, refs: Iterable[str] = ()) -> bytes:
    space, name = key.split("/", 1)
    joined = ",".join(refs) or "-"
    return _framed(f"+ {space} {name} {size} {mtime_ns} {joined}".encode("ascii"))


def remove_line(key: str, size: int) -> bytes:
    """``size``: the bytes the file held (a reader that follows only the total needs it)."""
    space, name = key.split("/", 1)
    return _framed(f"- {space} {name} {size}".encode("ascii"))


def _framed(body: bytes) -> bytes:
    return body + b" %08x\n" % zlib.crc32(body)


def checkpoint_line(total: int) -> bytes:
    """``T <total>``: the bytes the store holds, as an evictor (holding the lock
    exclusive, its index up to date) knows them: a new process starts from the last one."""
    return _framed(f"T {total}".encode("ascii"))


def header_line(total: int, files: int, snapshot_bytes: int, snapshot_crc: int = 0) -> bytes:
    """The first line: see :meth:`Journal._header`."""
    return _framed(f"H {JOURNAL_VERSION} {secrets.token_hex(8)} {total} {files} {snapshot_bytes} "
                   f"{snapshot_crc:08x}".encode("ascii"))


# The snapshot of n files is columns, each in the files' order: n keyspaces (a byte, 0:
# cas, 1: ac), n digests (32 bytes), n sizes on disk and n last uses in ns (u64 little
# endian), n counts of blob digests an entry names (u16), then those digests (32 bytes
# each), entry after entry.  Columns load with a few calls each, not a loop per file.
_RECORD_BYTES = 1 + 32 + 8 + 8 + 2
_SPACES = ("cas/", "ac/")
_SWAP = sys.byteorder != "little"


class Index:
    """What the journal says the store holds: sizes, last uses, and which blobs each
    entry names.  Keys are ``"cas/<digest>"`` and ``"ac/<key>"``."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[int, int]] = {}  # key -> (bytes on disk, last use ns)
        self.refs: dict[str, tuple[str, ...]] = {}  # ac key -> blob keys it names
        self.users: dict[str, int] = {}  # blob key -> how many entries name it
        self.total = 0
        self.lines = 0
        self.damaged = False
        # The eviction queue, built from ``files`` when first needed (pop_oldest): until
        # then, loading and replaying push nothing.
        self._heap: list[tuple[int, str]] = []
        self._queued = False

    # -- replay --------------------------------------------------------------------
    def apply(self, line: bytes) -> None:
        """Apply one journal line (without its newline); a line that fails its checks
        marks the index damaged."""
        self.replay((line,))

    def replay(self, lines: Iterable[bytes]) -> None:
        """Apply journal lines (each without its newline), in order; a line that fails
        its checks marks the index damaged, and the others still apply."""
        crc32, put_re, remove_re = zlib.crc32, _PUT_RE.fullmatch, _REMOVE_RE.fullmatch
        for line in lines:
            self.lines += 1
            if len(line) > MAX_LINE or len(line) < 10 or line[-9] != 32:  # b" "
                self.damaged = True
                continue
            body = line[:-9]
            try:
                if int(line[-8:], 16) != crc32(body):
                    raise ValueError("crc")
                text = body.decode("ascii")  # UnicodeDecodeError is a ValueError
            except ValueError:
                self.damaged = True
                continue
            if text[0] == "+" and (put := put_re(text)) is not None:
                space, name, size, mtime, refs = put.groups()
                if int(size) > _MAX_SIZE:
                    self.damaged = True
                    continue
                named = tuple("cas/" + r for r in refs.split(",")) if space == "ac" and refs != "-" else ()
                self.put(space + "/" + name, int(size), int(mtime), named)
            elif text[0] == "-" and (removal := remove_re(text)) is not None:
                self.remove(removal.group(1) + "/" + removal.group(2))
            elif _CHECKPOINT_RE.fullmatch(text) is None:  # a checkpoint changes nothing here
                self.damaged = True

    # -- changes -------------------------------------------------------------------
    def put(self, key: str, size: int, mtime_ns: int, refs: tuple[str, ...] = ()) -> None:
        old = self.files.get(key)
        if old is not None:
            self.total -= old[0]
        self.files[key] = (size, mtime_ns)
        self.total += size
        if key.startswith("ac/"):
            for blob in refs:
                self.users[blob] = self.users.get(blob, 0) + 1
            self._release(self.refs.pop(key, ()))
            if refs:
                self.refs[key] = refs
        if not self._queued:
            return
        heapq.heappush(self._heap, (mtime_ns, key))
        if len(self._heap) > 2 * len(self.files) + 1024:
            self._requeue_all()

    def remove(self, key: str) -> list[str]:
        """Forget ``key``; the blobs no entry names any more (if it was an entry)."""
        old = self.files.pop(key, None)
        if old is not None:
            self.total -= old[0]
        return self._release(self.refs.pop(key, ()))

    def touch(self, key: str, mtime_ns: int) -> None:
        """``key`` was last used at ``mtime_ns``: re-queued there."""
        self.set_last_use(key, mtime_ns)
        heapq.heappush(self._heap, (mtime_ns, key))

    def set_last_use(self, key: str, mtime_ns: int) -> None:
        size, _old = self.files[key]
        self.files[key] = (size, mtime_ns)

    def _release(self, refs: tuple[str, ...]) -> list[str]:
        freed = []
        for blob in refs:
            left = self.users.get(blob, 0) - 1
            if left > 0:
                self.users[blob] = left
            else:
                self.users.pop(blob, None)
                freed.append(blob)
                if blob in self.files and self._queued:  # an eviction candidate of its own again
                    heapq.heappush(self._heap, (self.files[blob][1], blob))
        return freed

    # -- eviction order ------------------------------------------------------------
    def _requeue_all(self) -> None:
        """The queue afresh: every unit (a blob an entry names is not one; it is queued
        again when the last entry naming it goes, see _release)."""
        files = self.files
        self._heap = [(files[k][1], k) for k in files.keys() - self.users.keys()]
        heapq.heapify(self._heap)
        self._queued = True

    def pop_oldest(self) -> tuple[str, int] | None:
        """The least recently used unit (an entry, or a blob no entry names) as
        ``(key, last use)``, removed from the queue (not from the index)."""
        if not self._queued:
            self._requeue_all()
        while self._heap:
            mtime, key = heapq.heappop(self._heap)
            current = self.files.get(key)
            if current is None or current[1] != mtime or self.users.get(key, 0) > 0:
                continue  # stale: removed, touched since, or now named by an entry
            return key, mtime
        return None

    def requeue(self, key: str) -> None:
        if key in self.files:
            heapq.heappush(self._heap, (self.files[key][1], key))

    def snapshot(self) -> bytes:
        """This index as the journal's snapshot (see :data:`_RECORD_BYTES`)."""
        keys, values, refs = list(self.files), list(self.files.values()), self.refs
        named = [refs.get(key, ()) for key in keys]
        columns = [
            array("Q", [size for size, _t in values]),
            array("Q", [max(t, 0) for _s, t in values]),  # a file may be stamped before 1970
            array("H", [len(blobs) for blobs in named]),
        ]
        if _SWAP:
            for column in columns:
                column.byteswap()
        return b"".join([
            bytes(key[0] == "a" for key in keys),
            bytes.fromhex("".join([key[3:] if key[0] == "a" else key[4:] for key in keys])),
            *(column.tobytes() for column in columns),
            bytes.fromhex("".join([blob[4:] for blobs in named for blob in blobs])),
        ])

    def load(self, snapshot: bytes, files: int) -> None:
        """Fill an empty index from a snapshot of ``files`` files; damaged if it does not
        parse as exactly that (sizes and counts are checked, digests are any bytes, and
        hex names can't name a path)."""
        n = files
        view = memoryview(snapshot)
        if len(view) < n * _RECORD_BYTES:
            self.damaged = True
            return
        spaces = view[:n]
        sizes, mtimes, counts = array("Q"), array("Q"), array("H")
        sizes.frombytes(view[33 * n : 41 * n])
        mtimes.frombytes(view[41 * n : 49 * n])
        counts.frombytes(view[49 * n : 51 * n])
        if _SWAP:
            for column in (sizes, mtimes, counts):
                column.byteswap()
        named = view[51 * n :].hex()
        if n and (max(spaces) > 1 or max(sizes) > _MAX_SIZE or max(counts) > MAX_BLOBS) or len(named) != 64 * sum(counts):
            self.damaged = True
            return
        digests = view[n : 33 * n].hex()
        keys = list(map(str.__add__, map(_SPACES.__getitem__, spaces), (digests[i : i + 64] for i in range(0, 64 * n, 64))))
        self.files = dict(zip(keys, zip(sizes, mtimes)))
        if len(self.files) != n:
            self.damaged = True  # a key twice
            return
        blobs = ["cas/" + named[i : i + 64] for i in range(0, len(named), 64)]
        at = 0
        for i in compress(range(n), counts):  # the entries that name blobs
            if not spaces[i]:
                self.damaged = True  # a blob naming blobs
                return
            self.refs[keys[i]] = tuple(blobs[at : at + counts[i]])
            at += counts[i]
        self.users = dict(Counter(blobs))
        self.total, self.lines = sum(sizes), n


@dataclass
class EvictionPlan:
    """How an eviction went: the keys it removed and the bytes it believes are left."""

    removed: list[str]
    total: int


def evict(
    index: Index,
    *,
    cap: int,
    target: int,
    extra: int,
    keep: Collection[str],
    now_ns: int,
    state: Callable[[str], int | None],
    remove: Callable[[str], bool],
    record: Callable[[str, int], None],
) -> EvictionPlan:
    """Bring ``index.total + extra`` down to ``target`` (``extra``: bytes on disk outside
    the index, e.g. temp files of writes in flight).

    ``keep``: keys never evicted (the puts that called for this eviction).  ``state(key)``
    is the file's last use now (its mtime in ns; ``None``: absent), ``remove(key)`` deletes it (``False``:
    it was not there), ``record(key, size)`` journals a removal.  Entries go as a
    whole: the manifest first, then each blob no other entry names, unless it was used
    after the entry itself.  A blob no entry names that was used in the last IN_FLIGHT_S
    seconds may be one a save in flight has just written or found present (its manifest
    comes next): such blobs go last, oldest first, and only while the store is over
    ``cap`` itself.
    """
    removed: list[str] = []
    recent: dict[str, int] = {}  # unnamed blobs possibly of a save in flight -> mtime
    held: list[str] = []
    in_flight_ns = int(IN_FLIGHT_S * 1e9)

    def drop(key: str) -> list[str]:
        if remove(key):
            removed.append(key)
        return forget(key)

    def forget(key: str) -> list[str]:
        record(key, index.files[key][0] if key in index.files else 0)
        return index.remove(key)

    while index.total + extra > target:
        unit = index.pop_oldest()
        if unit is None:
            break
        key, hint = unit
        if key in keep:
            held.append(key)
            continue
        used = state(key)
        if used is None:  # gone already (removed by hand, quarantined, a crashed put)
            forget(key)  # its blobs, if no longer named, are queued again
            continue
        if abs(used - hint) > MTIME_SLACK_NS:
            index.touch(key, used)  # used (or backdated) since: re-queued
            continue
        if key.startswith("cas/") and now_ns - used < in_flight_ns:
            recent[key] = used
            continue
        for blob in drop(key):
            blob_used = state(blob)
            if blob_used is None:
                forget(blob)
            elif blob in keep or blob_used > used:
                # Used after its entry: by a save in flight that found it present, or
                # by a lookup.  Kept, unnamed, and judged like any unnamed blob.
                if now_ns - blob_used < in_flight_ns or blob in keep:
                    index.set_last_use(blob, blob_used)
                    recent[blob] = blob_used
                else:
                    index.touch(blob, blob_used)
            else:
                drop(blob)
    # Last resort: unnamed recent blobs, oldest first, only down to the cap itself.
    for key in sorted(recent, key=recent.__getitem__):
        if index.total + extra <= cap:
            break
        if key not in keep and key in index.files and index.users.get(key, 0) == 0:
            drop(key)
    for key in held + list(recent):
        index.requeue(key)
    return EvictionPlan(removed, index.total + extra)
