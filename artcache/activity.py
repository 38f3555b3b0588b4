"""What the cache did, remembered across processes: the source of ``artcache stats`` and
``artcache explain``.

Lives beside the local tier (``<root>/activity/``), never in the shared keyspaces:
``events.jsonl`` gets one JSON line per hit, miss, save or uncacheable graph (appended
with ``O_APPEND`` in one ``write`` under 4 KiB, which POSIX keeps whole between concurrent
writers on a local file system), and ``misses/<key>.json`` keeps what each missed key was
made of, so ``explain`` can diff it against stored entries later.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import stat
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .store._nofollow import (
    CREATE_FLAGS,
    DIR_FLAGS,
    PRIVATE_DIR_MODE,
    READ_FLAGS,
    lstat_at,
    regular_files,
)

# Rotate the event log past this size (one old generation is kept).
MAX_EVENTS_BYTES = 4 * 1024 * 1024
MAX_MISS_RECORDS = 256
MAX_MISS_RECORD_BYTES = 16 * 1024 * 1024
_LINE_LIMIT = 4000  # below PIPE_BUF (4096): a single append stays whole
_EVENTS = "events.jsonl"
_EVENTS_OLD = "events.jsonl.1"
_MISSES = "misses"
_RECORD_RE = re.compile(r"[0-9a-f]{64}\.json")
_RECORD_TMP_RE = re.compile(r"\.[0-9a-f]{64}\.json\.\d+\.\d+\.tmp")
_STALE_TMP_S = 3600.0
_tmp_counter = itertools.count()


@dataclass(frozen=True)
class ActivityTotals:
    hits: int = 0
    misses: Mapping[str, int] = field(default_factory=dict)
    saves: int = 0
    uncacheable: Mapping[str, int] = field(default_factory=dict)
    bytes_loaded: int = 0
    bytes_saved: int = 0
    seconds_saved: float = 0.0
    first_event: float = 0.0
    last_event: float = 0.0


class ActivityLog:
    """The activity directory of one local store.

    It lives inside a store directory that others may be able to write, so, like the
    store itself (``store/_nofollow.py``), it never follows a symlink: the directories
    are opened one at a time with ``O_NOFOLLOW`` and every file operation is relative to
    them; files are appended to only if they are regular files with no other name (a
    hard link's other name may be outside the store), temp files are created with
    ``O_EXCL``, pruning removes only regular files under the names this class makes,
    and reads are bounded.  Whoever can write the store can still forge the log (it is
    statistics, never code): what it holds is only ever counted and printed.
    """

    def __init__(self, root: Path) -> None:
        self.store_root = root
        self.root = root / "activity"
        self.events = self.root / _EVENTS
        self.misses = self.root / _MISSES

    # -- directories --------------------------------------------------------------------
    def _open_dir(self, *parts: str, create: bool) -> int:
        """A descriptor of ``activity/<parts>``, no link followed on the way (the caller
        closes it).  ``OSError`` if absent (and not ``create``) or not a real directory."""
        fd = os.open(self.store_root, DIR_FLAGS)
        try:
            for name in ("activity", *parts):
                if create:
                    try:
                        os.mkdir(name, PRIVATE_DIR_MODE, dir_fd=fd)
                    except FileExistsError:
                        pass
                child = os.open(name, DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    # -- writing (best effort: losing a stats line must never fail a compile) ------------
    def record(self, event: str, **fields: Any) -> None:
        line = json.dumps({"t": round(time.time(), 3), "event": event, **fields}, sort_keys=True)
        if len(line) > _LINE_LIMIT:
            line = json.dumps({"t": round(time.time(), 3), "event": event, "key": fields.get("key", "")})
        try:
            directory = self._open_dir(create=True)
        except OSError:
            return
        try:
            self._rotate_if_large(directory)
            fd = os.open(_EVENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_CLOEXEC, 0o644, dir_fd=directory)
            try:
                st = os.fstat(fd)
                if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                    os.write(fd, (line + "\n").encode())
            finally:
                os.close(fd)
        except OSError:
            pass
        finally:
            os.close(directory)

    def record_miss(self, key: str, details: Mapping[str, Any]) -> None:
        if not re.fullmatch(r"[0-9a-f]{64}", key):
            return  # the record's file is named by the key: only a digest is a safe name
        text = json.dumps({"key": key, "t": time.time(), **details}, sort_keys=True, default=str).encode()
        try:
            directory = self._open_dir(_MISSES, create=True)
        except OSError:
            return
        try:
            name = f"{key}.json"
            tmp = f".{name}.{os.getpid()}.{next(_tmp_counter)}.tmp"
            fd = os.open(tmp, CREATE_FLAGS, 0o644, dir_fd=directory)
            try:
                try:
                    view = memoryview(text)
                    while view:
                        view = view[os.write(fd, view) :]
                finally:
                    os.close(fd)
                # Readers see the old record or the new one, whole.
                os.replace(tmp, name, src_dir_fd=directory, dst_dir_fd=directory)
            except BaseException:
                _unlink_quietly(directory, tmp)
                raise
            self._prune_misses(directory)
        except OSError:
            pass
        finally:
            os.close(directory)

    def _rotate_if_large(self, directory: int) -> None:
        st = lstat_at(directory, _EVENTS)
        if st is not None and stat.S_ISREG(st.st_mode) and st.st_size > MAX_EVENTS_BYTES:
            # A rename moves the entry itself, never a link's target.
            os.replace(_EVENTS, _EVENTS_OLD, src_dir_fd=directory, dst_dir_fd=directory)

    def _prune_misses(self, directory: int) -> None:
        files = list(regular_files(directory))
        records = sorted((st.st_mtime, name) for name, st in files if _RECORD_RE.fullmatch(name))
        now = time.time()
        stale = [name for name, st in files if _RECORD_TMP_RE.fullmatch(name) and now - st.st_mtime > _STALE_TMP_S]
        for name in [n for _t, n in records[:-MAX_MISS_RECORDS]] + stale:
            _unlink_quietly(directory, name)

    # -- reading ----------------------------------------------------------------------
    def _read(self, parts: tuple[str, ...], name: str, limit: int) -> bytes | None:
        """The last ``limit`` bytes at most of regular file ``activity/<parts>/<name>``."""
        try:
            directory = self._open_dir(*parts, create=False)
        except OSError:
            return None
        try:
            fd = os.open(name, READ_FLAGS, dir_fd=directory)
        except OSError:
            return None
        finally:
            os.close(directory)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            start = max(0, st.st_size - limit)
            return os.pread(fd, st.st_size - start, start)
        except OSError:
            return None
        finally:
            os.close(fd)

    def iter_events(self) -> Iterator[dict[str, Any]]:
        for name in (_EVENTS_OLD, _EVENTS):
            # Rotation keeps each file near MAX_EVENTS_BYTES; a larger one was not written
            # by this class, and only its tail is read.
            data = self._read((), name, 2 * MAX_EVENTS_BYTES)
            if data is None:
                continue
            for line in data.decode(errors="replace").splitlines():
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash (or by the bound) is skipped, not fatal
                if isinstance(event, dict):
                    yield event

    def totals(self) -> ActivityTotals:
        hits = saves = bytes_loaded = bytes_saved = 0
        seconds = 0.0
        misses: Counter[str] = Counter()
        uncacheable: Counter[str] = Counter()
        first = last = 0.0
        for e in self.iter_events():
            kind = e.get("event")
            first = first or float(e.get("t", 0))
            last = float(e.get("t", last))
            if kind == "hit":
                hits += 1
                bytes_loaded += int(e.get("bytes", 0))
                seconds += float(e.get("saved_seconds", 0.0))
            elif kind == "miss":
                misses[str(e.get("reason", "absent"))] += 1
            elif kind == "save":
                saves += 1
                bytes_saved += int(e.get("bytes", 0))
            elif kind == "uncacheable":
                uncacheable[str(e.get("reason", "?"))] += 1
        return ActivityTotals(hits, dict(misses), saves, dict(uncacheable), bytes_loaded, bytes_saved,
                              round(seconds, 3), first, last)

    def reset(self) -> None:
        """Zero the counters (``artcache stats --reset``): the event log goes; the miss
        records stay, so ``explain`` still works.  A process appending meanwhile writes
        to the old file or starts a new one: at most its line is lost."""
        try:
            directory = self._open_dir(create=False)
        except OSError:
            return  # no activity yet: nothing to zero
        try:
            for name in (_EVENTS_OLD, _EVENTS):
                _unlink_quietly(directory, name)
        finally:
            os.close(directory)

    def miss_record(self, key: str | None = None) -> dict[str, Any] | None:
        """The record of a missed key (or prefix), or the most recent one."""
        try:
            directory = self._open_dir(_MISSES, create=False)
        except OSError:
            return None
        try:
            records = sorted((st.st_mtime, name) for name, st in regular_files(directory)
                             if _RECORD_RE.fullmatch(name))
        except OSError:
            return None
        finally:
            os.close(directory)
        names = [name for _t, name in records if not key or name.startswith(key)]
        if not names:
            return None
        data = self._read((_MISSES,), names[-1], MAX_MISS_RECORD_BYTES + 1)
        if data is None or len(data) > MAX_MISS_RECORD_BYTES:
            return None
        try:
            record = json.loads(data)
        except (ValueError, RecursionError):
            return None
        return record if isinstance(record, dict) else None


def _unlink_quietly(directory: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=directory)
    except OSError:
        pass  # already gone, or not ours to remove: pruning never fails a compile
