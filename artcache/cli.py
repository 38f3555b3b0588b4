"""The ``artcache`` command: parse arguments, call the library, print.  No logic here.

Every command that prints data takes ``--format table|json``; every command that deletes
takes ``--dry-run`` and prints its plan first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from . import archive, catalog, signing
from ._version import __version__
from .config import parse_size, settings_from_env
from .errors import ArtcacheError
from .entries import activity_log
from .explain import explain
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
    settings.check()  # a bad ARTCACHE_* value is one line on stderr and exit 2
    urls = args.store.split(",") if args.store else list(settings.store_urls)
    return open_store(urls, http_token=settings.http_token)


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
    activity = activity_log(store, settings_from_env())
    if activity is not None:
        # Activity of every process on this machine that used this store (hits, misses,
        # time saved): beside the local tier, or in the stats directory of a remote one.
        totals = activity.totals()
        data.update(
            hits=totals.hits,
            misses=sum(totals.misses.values()),
            misses_by_reason=dict(totals.misses),
            saves=totals.saves,
            uncacheable_by_reason=dict(totals.uncacheable),
            loaded_bytes=totals.bytes_loaded,
            saved_bytes=totals.bytes_saved,
            seconds_saved=totals.seconds_saved,
        )
    rows = [[k, _human(v) if k.endswith("bytes") else str(v)] for k, v in data.items()]
    _emit(args, data, _table(rows, ["STAT", "VALUE"]))
    return 0


def cmd_explain(args: argparse.Namespace, store: Store) -> int:
    result = explain(store, activity_log(store, settings_from_env()), args.key)
    lines = [f"{result.source} {result.key[:16]}" + (" (stored now)" if result.stored else "")]
    if not result.candidates:
        lines.append("no stored entries to compare with")
    for c in result.candidates:
        lines.append(f"vs {c.key[:16]}  {c.title}  ({'same graph' if c.same_graph else 'different graph'}, "
                     f"{len(c.differing)} factor(s) differ)")
        for d in c.differing:
            lines.append(f"  {d.factor}" + ("" if d.changes else "  (digest differs)"))
            lines += [f"    {change}" for change in d.changes[:20]]
    _emit(args, asdict(result), "\n".join(lines))
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


def _progress(args: argparse.Namespace) -> archive.Progress | None:
    """A tqdm byte bar on stderr, or ``None``: no bar with --no-progress, when stderr is not
    a terminal (CI logs) or when tqdm (the ``progress`` extra) is not installed."""
    if args.no_progress or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None

    @contextmanager
    def bar(desc: str, total: int) -> Iterator[Callable[[int], None]]:
        with tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                  leave=False) as t:
            yield t.update

    return bar


def cmd_export(args: argparse.Namespace, store: Store) -> int:
    keys = [catalog.find_entry(store, ref) for ref in args.keys] if args.keys else None
    result = archive.export_bundle(store, args.file, keys, progress=_progress(args))
    rows = [[s.key[:16], s.reason] for s in result.skipped]
    table = (_table(rows, ["SKIPPED", "REASON"]) + "\n") if rows else ""
    table += f"exported {result.entries} entries, {result.blobs} blobs ({_human(result.bytes)}) to {result.path}"
    _emit(args, asdict(result), table)
    return 0


def cmd_import(args: argparse.Namespace, store: Store) -> int:
    # Under ARTCACHE_TRUSTED_KEYS a bundle holding any untrusted manifest is refused whole.
    trust = signing.load_keys(None, settings_from_env().trusted_keys).trust
    result = archive.import_bundle(store, args.file, trust=trust, progress=_progress(args))
    table = (
        f"imported {result.entries} entries, {result.blobs_written} blobs "
        f"({result.blobs_present} already present, {_human(result.bytes_written)} written) into {store.url}"
    )
    _emit(args, asdict(result), table)
    return 0


def cmd_keygen(args: argparse.Namespace, _store: Store | None) -> int:
    pair = signing.generate(args.out, force=args.force)
    table = (
        f"private key: {pair.private_path} (keep secret; set ARTCACHE_SIGNING_KEY to it or its contents)\n"
        f"public key:  {pair.public_path} (key id {pair.key_id}; readers add it to ARTCACHE_TRUSTED_KEYS)\n"
        f"{pair.public_key}"
    )
    _emit(args, asdict(pair), table)
    return 0


# -- parser -----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="artcache", description="Inspect and manage an artcache store.")
    parser.add_argument("--version", action="version", version=f"artcache {__version__}")
    parser.add_argument("--store", help="store URL(s), comma-separated (default: $ARTCACHE_STORE)")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(
        name: str, help_: str, *, fmt: bool = True, dry: bool = False, store: bool = True, progress: bool = False
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(needs_store=store)
        if store:
            p.add_argument("--store", default=argparse.SUPPRESS, help="store URL(s), comma-separated")
        if progress:
            p.add_argument("--no-progress", action="store_true", help="no progress bar (none is shown off a terminal)")
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
    p = add("explain", "why a key missed: the nearest stored entries and the factors that differ")
    p.add_argument("key", nargs="?", help="a missed key or entry key (prefix); default: the last recorded miss")
    p.set_defaults(func=cmd_explain)
    p = add("gc", "remove broken entries, old orphan blobs, and LRU entries over a size", dry=True)
    p.add_argument("--max-size", help="shrink the store to this size (e.g. 20G); default $ARTCACHE_MAX_SIZE")
    p.set_defaults(func=cmd_gc)
    p = add("rm", "remove entries and the blobs only they use", dry=True)
    p.add_argument("entries", nargs="+", help="entry keys or unique prefixes")
    p.set_defaults(func=cmd_rm)
    p = add("export", "write entries and their blobs to one self-verifying bundle file", progress=True)
    p.add_argument("file", help="bundle file to write")
    p.add_argument("--keys", nargs="+", metavar="K", help="entry keys or unique prefixes (default: every entry)")
    p.set_defaults(func=cmd_export)
    p = add("import", "verify a bundle file completely, then copy its entries into the store", progress=True)
    p.add_argument("file", help="bundle file to read")
    p.set_defaults(func=cmd_import)
    p = add("keygen", "make an Ed25519 key pair for signing manifests", store=False)
    p.add_argument("--out", default="artcache-signing", metavar="PREFIX",
                   help="write PREFIX.key (mode 0600) and PREFIX.pub (default: ./artcache-signing)")
    p.add_argument("--force", action="store_true", help="overwrite existing key files")
    p.set_defaults(func=cmd_keygen)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if not args.needs_store:  # keygen: opening a store would create its directory
            return int(args.func(args, None))
        with _open(args) as store:
            return int(args.func(args, store))
    except ArtcacheError as exc:
        print(f"artcache: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
