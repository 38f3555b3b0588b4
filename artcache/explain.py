"""Why did a lookup miss?  Compare a missed key's factors with the stored entries.

The subject is a miss record (written by the backend into the local tier's activity log)
or a stored entry; candidates are the stored entries, nearest first: every entry of the
same graph before any other (the same graph compiled under other conditions is where a
miss's cause is), then fewest differing factors, then most recently used.  The nearest
``MAX_CANDIDATES`` are kept unless ``limit=None`` (``explain --all``); ``omitted`` says
how many were left out.  For each differing factor the readable values behind the
digests are compared (``torch 2.13.0 vs 2.11.0``, ``inductor config max_autotune``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .activity import ActivityLog
from .catalog import read_manifest
from .entry import decode_manifest
from .errors import ArtcacheError
from .store import Store

MAX_CANDIDATES = 3


@dataclass(frozen=True)
class FactorDiff:
    factor: str
    changes: tuple[str, ...]  # readable differences; empty when only the digest is known


@dataclass(frozen=True)
class Candidate:
    key: str
    title: str
    same_graph: bool
    differing: tuple[FactorDiff, ...]


@dataclass(frozen=True)
class Explanation:
    key: str
    source: str  # "miss record" or "stored entry"
    stored: bool  # the key itself is in the store now (e.g. saved after the miss)
    candidates: tuple[Candidate, ...]
    omitted: int = 0  # candidates left out by the limit


def _value_changes(name: str, ours: Any, theirs: Any) -> tuple[str, ...]:
    if isinstance(ours, Mapping) and isinstance(theirs, Mapping):
        out = []
        label = name.replace("_config", " config")
        for k in sorted(set(ours) | set(theirs)):
            a, b = ours.get(k, "(default)"), theirs.get(k, "(default)")
            if a != b:
                out.append(f"{label} {k}: {a} vs {b}" if "config" in name else f"{k} {a} vs {b}")
        return tuple(out)
    if isinstance(ours, list) and isinstance(theirs, list):
        out = [f"{name}[{i}]: {a} vs {b}" for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
        if len(ours) != len(theirs):
            out.append(f"{name}: {len(ours)} vs {len(theirs)} items")
        return tuple(out)
    return () if ours == theirs else (f"{name}: {ours} vs {theirs}",)


def _subject(store: Store, activity: ActivityLog | None, ref: str | None) -> tuple[str, str, dict[str, str], dict[str, Any]]:
    record = activity.miss_record(ref) if activity is not None else None
    if record is not None:
        return record["key"], "miss record", dict(record.get("factors", {})), dict(record.get("values", {}))
    if ref:
        from .catalog import find_entry

        key = find_entry(store, ref)
        manifest = read_manifest(store, key)
        return key, "stored entry", dict(manifest.factors), dict(manifest.summary.get("factor_values", {}))
    raise ArtcacheError("no recorded miss to explain (give a key, or run a compile that misses first)")


def explain(
    store: Store, activity: ActivityLog | None, ref: str | None = None, *, limit: int | None = MAX_CANDIDATES
) -> Explanation:
    key, source, factors, values = _subject(store, activity, ref)
    candidates: list[tuple[Candidate, float]] = []
    stored = False
    for info in store.iterate("ac/"):
        other = info.key[3:]
        if other == key:  # itself (saved after the miss): nothing to learn from comparing
            stored = True
            continue
        raw = store.peek(info.key)
        if raw is None:
            continue
        try:
            manifest = decode_manifest(raw)
        except ArtcacheError:
            continue
        theirs = manifest.summary.get("factor_values", {})
        diffs = []
        for name in sorted(set(factors) | set(manifest.factors)):
            if factors.get(name) == manifest.factors.get(name):
                continue
            diffs.append(FactorDiff(name, _value_changes(name, values.get(name), theirs.get(name))))
        same_graph = factors.get("graph") == manifest.factors.get("graph")
        candidate = Candidate(other, str(manifest.summary.get("title", "")), same_graph, tuple(diffs))
        candidates.append((candidate, info.last_used))
    candidates.sort(key=lambda item: (not item[0].same_graph, len(item[0].differing), -item[1], item[0].key))
    ranked = tuple(c for c, _used in candidates)
    kept = ranked if limit is None else ranked[:limit]
    return Explanation(key, source, stored, kept, len(ranked) - len(kept))
