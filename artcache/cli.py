"""The ``artcache`` command: parse arguments, call the library, print.  No logic here.

Every command that prints data takes ``--format table|json``; every command that deletes
takes ``--dry-run`` and prints its plan first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from . import __version__, catalog
from .config import parse_size, settings_from_env
from .errors import ArtcacheError
from .store import Store, open_store
from .summary_view import render_entry


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def _emit(args: argparse.Namespace, data: Any, table: str) -> None:
    if args.format == "json":
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        print(table)


def _open(args: argparse.Namespace) -> Store:
    settings = settings_from_env()
    urls = args.store.split(",") if args.store else list(settings.store_urls)
    return open_store(urls)


# -- commands ---------------------------------------------------------------------------
def cmd_ls(args: argparse.Namespace, store: Store) -> int:
    snap = catalog.scan(store)
    rows = [
        [e.key[:16], e.status, _human(e.size), str(e.blob_count), _when(e.created), _when(e.last_used), e.title]
        for e in snap.entries
    ]
    table = _table(rows, ["ENTRY", "STATUS", "SIZE", "BLOBS", "CREATED", "LAST USED", "TITLE"])
    table += f"\n{len(snap.entries)} entries, {snap.blob_count} blobs, {_human(snap.total_bytes)} in {snap.url}"
    _emit(args, {"url": snap.url, "entries": [asdict(e) for e in snap.entries]}, table)
    return 0


def cmd_inspect(args: argparse.Namespace, store: Store) -> int:
    key = catalog.find_entry(store, args.entry)
    manifest = catalog.read_manifest(store, key)
    _emit(args, asdict(manifest), render_entry(manifest))
    return 0


def cmd_stats(args: argparse.Namespace, store: Store) -> int:
    snap = catalog.scan(store)
    by_status: dict[str, int] = {}
    for e in snap.entries:
        by_status[e.status] = by_status.get(e.status, 0) + 1
    data = {
        "url": snap.url,
        "entries": len(snap.entries),
        "entries_by_status": by_status,
        "blobs": snap.blob_count,
        "blob_bytes": snap.blob_bytes,
        "total_bytes": snap.total_bytes,
        "orphan_blobs": len(snap.orphan_blobs),
        "quarantined_files": snap.quarantined_files,
    }
    rows = [[k, _human(v) if k.endswith("bytes") else str(v)] for k, v in data.items()]
    _emit(args, data, _table(rows, ["STAT", "VALUE"]))
    return 0


def cmd_verify(args: argparse.Namespace, store: Store) -> int:
    report = catalog.verify(store)
    rows = [[p.key[:16], p.kind, p.detail] for p in report.problems]
    table = _table(rows, ["ENTRY", "PROBLEM", "DETAIL"]) if rows else "no problems"
    table += (
        f"\nchecked {report.entries_checked} entries, {report.blobs_checked} blobs, "
        f"{_human(report.bytes_checked)}: {'OK' if report.ok else f'{len(report.problems)} problem(s)'}"
    )
    _emit(args, asdict(report) | {"ok": report.ok}, table)
    return 0 if report.ok else 1


def _run_plan(args: argparse.Namespace, store: Store, plan: catalog.DeletePlan) -> int:
    rows = [[d.key[:20], _human(d.size), d.reason] for d in plan.deletions]
    verb = "would delete" if args.dry_run else "deleting"
    table = (_table(rows, ["KEY", "SIZE", "REASON"]) + "\n") if rows else ""
    table += f"{verb} {len(plan.deletions)} keys, {_human(plan.bytes)}"
    result = None if args.dry_run else catalog.execute(store, plan)
    data = {"dry_run": args.dry_run, "plan": asdict(plan), "result": asdict(result) if result else None}
    _emit(args, data, table)
    return 0


def cmd_gc(args: argparse.Namespace, store: Store) -> int:
    max_size = parse_size(args.max_size) if args.max_size else settings_from_env().max_size
    return _run_plan(args, store, catalog.plan_gc(store, max_size))


def cmd_rm(args: argparse.Namespace, store: Store) -> int:
    keys = [catalog.find_entry(store, ref) for ref in args.entries]
    return _run_plan(args, store, catalog.plan_rm(store, keys))


# -- parser -----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="artcache", description="Inspect and manage an artcache store.")
    parser.add_argument("--version", action="version", version=f"artcache {__version__}")
    parser.add_argument("--store", help="store URL(s), comma-separated (default: $ARTCACHE_STORE)")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str, *, fmt: bool = True, dry: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--store", default=argparse.SUPPRESS, help="store URL(s), comma-separated")
        if fmt:
            p.add_argument("--format", choices=("table", "json"), default="table")
        if dry:
            p.add_argument("--dry-run", action="store_true", help="print the plan, delete nothing")
        return p

    add("ls", "list entries").set_defaults(func=cmd_ls)
    p = add("inspect", "show what an entry holds")
    p.add_argument("entry", help="entry key or unique prefix")
    p.set_defaults(func=cmd_inspect)
    add("stats", "store totals").set_defaults(func=cmd_stats)
    add("verify", "check every manifest and blob (exit 1 on problems)").set_defaults(func=cmd_verify)
    p = add("gc", "remove broken entries, old orphan blobs, and LRU entries over a size", dry=True)
    p.add_argument("--max-size", help="shrink the store to this size (e.g. 20G); default $ARTCACHE_MAX_SIZE")
    p.set_defaults(func=cmd_gc)
    p = add("rm", "remove entries and the blobs only they use", dry=True)
    p.add_argument("entries", nargs="+", help="entry keys or unique prefixes")
    p.set_defaults(func=cmd_rm)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with _open(args) as store:
            return int(args.func(args, store))
    except ArtcacheError as exc:
        print(f"artcache: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
