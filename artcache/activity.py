"""What the cache did, remembered across processes: the source of ``artcache stats`` and
``artcache explain``.

Lives beside the local tier (``<root>/activity/``), never in the shared keyspaces:
``events.jsonl`` gets one JSON line per hit, miss, save or uncacheable graph (appended
with ``O_APPEND`` in one ``write`` under 4 KiB, which POSIX keeps whole between concurrent
writers on a local file system), and ``misses/<key>.json`` keeps what each missed key was
made of, so ``explain`` can diff it against stored entries later.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Rotate the event log past this size (one old generation is kept).
MAX_EVENTS_BYTES = 4 * 1024 * 1024
MAX_MISS_RECORDS = 256
_LINE_LIMIT = 4000  # below PIPE_BUF (4096): a single append stays whole


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
    def __init__(self, root: Path) -> None:
        self.root = root / "activity"
        self.events = self.root / "events.jsonl"
        self.misses = self.root / "misses"

    # -- writing (best effort: losing a stats line must never fail a compile) ------------
    def record(self, event: str, **fields: Any) -> None:
        line = json.dumps({"t": round(time.time(), 3), "event": event, **fields}, sort_keys=True)
        if len(line) > _LINE_LIMIT:
            line = json.dumps({"t": round(time.time(), 3), "event": event, "key": fields.get("key", "")})
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._rotate_if_large()
            fd = os.open(self.events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, (line + "\n").encode())
            finally:
                os.close(fd)
        except OSError:
            pass

    def record_miss(self, key: str, details: Mapping[str, Any]) -> None:
        path = self.misses / f"{key}.json"
        try:
            self.misses.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"key": key, "t": time.time(), **details}, sort_keys=True, default=str))
            os.replace(tmp, path)  # readers see the old record or the new one, whole
            self._prune_misses()
        except OSError:
            pass

    def _rotate_if_large(self) -> None:
        try:
            if self.events.stat().st_size > MAX_EVENTS_BYTES:
                os.replace(self.events, self.events.with_suffix(".jsonl.1"))
        except FileNotFoundError:
            pass

    def _prune_misses(self) -> None:
        records = sorted(self.misses.glob("*.json"), key=lambda p: p.stat().st_mtime)
        for old in records[:-MAX_MISS_RECORDS]:
            try:
                old.unlink()
            except FileNotFoundError:
                pass

    # -- reading ----------------------------------------------------------------------
    def iter_events(self) -> Iterator[dict[str, Any]]:
        for path in (self.events.with_suffix(".jsonl.1"), self.events):
            try:
                lines = path.read_text().splitlines()
            except FileNotFoundError:
                continue
            for line in lines:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash is skipped, not fatal

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

    def miss_record(self, key: str | None = None) -> dict[str, Any] | None:
        """The record of a missed key (or prefix), or the most recent one."""
        try:
            records = sorted(self.misses.glob("*.json"), key=lambda p: p.stat().st_mtime)
        except FileNotFoundError:
            return None
        if key:
            records = [p for p in records if p.stem.startswith(key)]
        if not records:
            return None
        try:
            return json.loads(records[-1].read_text())  # type: ignore[no-any-return]
        except (OSError, json.JSONDecodeError):
            return None
