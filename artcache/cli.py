"""The ``artcache`` command: parse arguments, call the library, print.  No logic here.

Every command that prints data takes ``--format table|json``; every command that deletes
prints its plan first, takes ``--dry-run``, and on a terminal asks before deleting unless
``-y``.  Stored strings are printed escaped (:mod:`artcache.cli_io`).  A tier that fails
is skipped with a warning; ``verify``, ``export`` and ``import``, which need every tier,
exit 1 instead.  Closing stdout early (``| head``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, replace
from typing import Any

from . import archive, catalog, signing
from ._version import __version__
from .cli_io import confirm, emit, human, on_terminal, printable, shown_url, silence_stdout, table, when
from .config import parse_size, settings_from_env
from .entries import activity_log, local_root
from .entry import Envelope, decode_envelope, decode_manifest
from .errors import ArtcacheError, UntrustedEntryError
from .explain import MAX_CANDIDATES, explain
from .store import Store, TieredStore, ac_key, open_store
from .summary_view import SignerView, render_entry

# Exit codes: 0 done; 1 done but not wholly (problems found, a tier down, a delete
# declined); 2 a usage or configuration error, or a failure; 141 stdout closed early
# (``| head``), as a process killed by SIGPIPE would report it in a shell.
EXIT_INCOMPLETE = 1
EXIT_ERROR = 2
EXIT_PIPE = 128 + 13
MAX_CHANGES = 20  # readable changes shown per differing factor by `explain` (all with --all)


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    emit(args.format, data, text)


def _open(args: argparse.Namespace) -> Store:
    settings = settings_from_env()
    settings.check()  # a bad ARTCACHE_* value is one line on stderr and exit 2
    urls = args.store.split(",") if args.store else list(settings.store_urls)
    return open_store(urls, http_token=settings.http_token, on_error=args.tier_errors)


def _trust() -> signing.TrustPolicy | None:
    return signing.load_keys(None, settings_from_env().trusted_keys).trust


def _tiers_down(args: argparse.Namespace, what: str) -> int:
    """Exit status for a command that needs every tier: 1 (with a line per tier) if any
    was down, else 0."""
    down = args.tier_errors.down_tiers()
    for url in down:
        print(f"artcache: error: tier {shown_url(url)} is down: {what}", file=sys.stderr)
    return EXIT_INCOMPLETE if down else 0


def _signer_view(envelope: Envelope, trust: signing.TrustPolicy | None) -> SignerView:
    """Who signed, and under trusted keys whether a lookup would accept the signature."""
    signer = envelope.signer or ""
    if trust is None:
        return SignerView(signer, None)
    try:
        trust.check(envelope)
    except UntrustedEntryError as exc:
        return SignerView(signer, False, str(exc))
    return SignerView(signer, True)


# -- commands ---------------------------------------------------------------------------
def cmd_ls(args: argparse.Namespace, store: Store) -> int:
    snap = catalog.scan(store)
    chosen = catalog.select(snap.entries, sort=args.sort, reverse=args.reverse, filters=args.filter or (),
                            limit=args.limit)
    rows = [
        [e.key[:16], e.status, human(e.size), str(e.blob_count), when(e.created), when(e.last_used),
         e.signer or "-", e.title]
        for e in chosen
    ]
    text = table(rows, ["ENTRY", "STATUS", "SIZE", "BLOBS", "CREATED", "LAST USED", "SIGNER", "TITLE"])
    shown = f"{len(chosen)} of {len(snap.entries)}" if len(chosen) != len(snap.entries) else f"{len(snap.entries)}"
    text += f"\n{shown} entries, {snap.blob_count} blobs, {human(snap.total_bytes)} in {printable(shown_url(snap.url))}"
    data = {"url": shown_url(snap.url), "total_entries": len(snap.entries), "entries": [asdict(e) for e in chosen]}
    _emit(args, data, text)
    return 0


def cmd_inspect(args: argparse.Namespace, store: Store) -> int:
    key = catalog.find_entry(store, args.entry)
    raw = store.peek(ac_key(key))
    if raw is None:
        raise ArtcacheError(f"entry {key[:16]} vanished or failed its checksum")
    manifest = decode_manifest(raw)
    signer = _signer_view(decode_envelope(raw), _trust())
    data = asdict(manifest) | {"signer": signer.key_id or None, "trusted": signer.trusted}
    _emit(args, data, render_entry(manifest, signer, graph=args.graph, factors=args.factors))
    return 0


def _local_size(store: Store) -> int | None:
    """Bytes in the local tier (the one ARTCACHE_MAX_SIZE caps), or None without one."""
    local = store.tiers[0] if isinstance(store, TieredStore) else store
    if local.local_root is None:
        return None
    return sum(info.size for info in local.iterate(""))


def cmd_stats(args: argparse.Namespace, store: Store) -> int:
    snap = catalog.scan(store)
    settings = settings_from_env()
    by_status: dict[str, int] = {}
    for e in snap.entries:
        by_status[e.status] = by_status.get(e.status, 0) + 1
    local_bytes = _local_size(store)
    data: dict[str, Any] = {
        "url": shown_url(snap.url),
        "entries": len(snap.entries),
        "entries_by_status": by_status,
        "blobs": snap.blob_count,
        "blob_bytes": snap.blob_bytes,
        "total_bytes": snap.total_bytes,
        "local_bytes": local_bytes,
        "max_size": settings.max_size,
        "size_used": round(local_bytes / settings.max_size, 4) if settings.max_size and local_bytes is not None
        else None,
        "orphan_blobs": len(snap.orphan_blobs),
        "quarantined_files": snap.quarantined_files,
    }
    lines = [
        f"store              {printable(data['url'])}",
        f"entries            {len(snap.entries)}"
        + (f" ({', '.join(f'{n} {s}' for s, n in sorted(by_status.items()))})" if by_status else ""),
        f"blobs              {snap.blob_count} ({len(snap.orphan_blobs)} not used by any entry)",
    ]
    if local_bytes is None:
        lines.append(f"size               {human(snap.total_bytes)} (no local tier: no cap applies)")
    elif settings.max_size:
        lines.append(f"size               {human(local_bytes)} of {human(settings.max_size)} "
                     f"({100 * local_bytes / settings.max_size:.1f}%, ARTCACHE_MAX_SIZE)")
    else:
        lines.append(f"size               {human(local_bytes)} (no cap: set ARTCACHE_MAX_SIZE, e.g. 20G)")
    lines.append(f"quarantined files  {snap.quarantined_files}")
    activity = activity_log(store, settings)
    if activity is not None:
        # Activity of every process on this machine that used this store (hits, misses,
        # time saved): beside the local tier, or in the stats directory of a remote one.
        totals = activity.totals()
        misses = sum(totals.misses.values())
        lookups = totals.hits + misses
        data.update(
            hits=totals.hits,
            misses=misses,
            hit_rate=round(totals.hits / lookups, 4) if lookups else None,
            misses_by_reason=dict(totals.misses),
            saves=totals.saves,
            uncacheable_by_reason=dict(totals.uncacheable),
            loaded_bytes=totals.bytes_loaded,
            saved_bytes=totals.bytes_saved,
            seconds_saved=totals.seconds_saved,
            since=totals.first_event or None,
        )
        reasons = ", ".join(f"{printable(r)} {n}" for r, n in sorted(totals.misses.items()))
        lines += [
            f"hit rate           {100 * totals.hits / lookups:.1f}% ({totals.hits} of {lookups} lookups)"
            if lookups else "hit rate           - (no lookups recorded)",
            f"hits               {totals.hits} ({human(totals.bytes_loaded)} loaded, "
            f"{totals.seconds_saved:.1f} s of compiling saved)",
            f"misses             {misses}" + (f" ({reasons})" if reasons else ""),
            f"saves              {totals.saves} ({human(totals.bytes_saved)})",
        ]
        if totals.uncacheable:
            lines.append("uncacheable        " + ", ".join(f"{printable(r)} {n}" for r, n in
                                                           sorted(totals.uncacheable.items())))
        lines.append(f"since              {when(totals.first_event)}")
    if args.reset:
        if activity is None:
            raise ArtcacheError(f"{shown_url(store.url)} keeps no stats on this machine, so no counters to reset")
        activity.reset()
        data["reset"] = True
        lines.append("counters reset (entries and miss records kept)")
    _emit(args, data, "\n".join(lines))
    return 0


def cmd_explain(args: argparse.Namespace, store: Store) -> int:
    result = explain(store, activity_log(store, settings_from_env()), args.key,
                     limit=None if args.all else MAX_CANDIDATES)
    lines = [f"{result.source} {printable(result.key[:16])}" + (" (stored now)" if result.stored else "")]
    if not result.candidates:
        lines.append("no stored entries to compare with")
    for c in result.candidates:
        lines.append(f"vs {c.key[:16]}  {printable(c.title)}  ({'same graph' if c.same_graph else 'different graph'}"
                     f", {len(c.differing)} factor(s) differ)")
        for d in c.differing:
            lines.append(f"  {printable(d.factor)}" + ("" if d.changes else "  (digest differs)"))
            changes = d.changes if args.all else d.changes[:MAX_CHANGES]
            lines += [f"    {printable(change)}" for change in changes]
            if len(changes) < len(d.changes):
                lines.append(f"    ... and {len(d.changes) - len(changes)} more (--all)")
    if result.omitted:
        lines.append(f"{result.omitted} more entries not shown (--all)")
    _emit(args, asdict(result), "\n".join(lines))
    return 0


def cmd_verify(args: argparse.Namespace, store: Store) -> int:
    report = catalog.verify(store, _trust())
    down = [catalog.Problem("-", "tier-down", f"{shown_url(u)} could not be read: not checked")
            for u in args.tier_errors.down_tiers()]
    report = replace(report, problems=report.problems + tuple(down))
    rows = [[p.key[:16], p.kind, p.detail] for p in report.problems]
    text = table(rows, ["ENTRY", "PROBLEM", "DETAIL"]) if rows else "no problems"
    trusted = set(report.trusted_signers)
    signers = ", ".join(
        (f"key {k}" + ("" if not trusted else " (trusted)" if k in trusted else " (untrusted)") if k else "unsigned")
        + f" {n}" for k, n in sorted(report.signers.items())
    )
    if signers:
        text += f"\nsigners: {signers}"
    if report.quarantined:
        root = local_root(store)
        where = f"to {root / 'quarantine'}" if root is not None else "(a shared tier deletes them)"
        text += (f"\nquarantined {len(report.quarantined)} file(s) {printable(where)}: "
                 "a save of the same entry heals them")
    text += (
        f"\nchecked {report.entries_checked} entries, {report.blobs_checked} blobs, "
        f"{human(report.bytes_checked)}: {'OK' if report.ok else f'{len(report.problems)} problem(s)'}"
    )
    data = asdict(report) | {"ok": report.ok, "quarantined": list(report.quarantined), "url": shown_url(report.url)}
    _emit(args, data, text)
    return 0 if report.ok else EXIT_INCOMPLETE


def _run_plan(args: argparse.Namespace, store: Store, plan: catalog.DeletePlan) -> int:
    """Print the plan; then (unless --dry-run) ask on a terminal (unless -y), then delete."""
    rows = [[d.key[:20], human(d.size), d.reason] for d in plan.deletions]
    text = (table(rows, ["KEY", "SIZE", "REASON"]) + "\n") if rows else ""
    summary = f"{len(plan.deletions)} keys, {human(plan.bytes)}"
    ask = bool(plan.deletions) and not args.dry_run and not args.yes and on_terminal()
    data: dict[str, Any] = {"dry_run": args.dry_run, "plan": asdict(plan), "result": None}
    if args.dry_run or ask:
        _emit(args, data, text + f"would delete {summary}")
        if args.dry_run:
            return 0
        if not confirm(f"delete {summary}?"):
            print("nothing deleted", file=sys.stderr)
            return EXIT_INCOMPLETE
        result = catalog.execute(store, plan)
        if args.format != "json":
            print(f"deleted {result.deleted} keys, {human(result.bytes)}")
        return 0
    result = catalog.execute(store, plan)
    data["result"] = asdict(result)
    _emit(args, data, text + f"deleted {result.deleted} of {summary}")
    return 0


def cmd_gc(args: argparse.Namespace, store: Store) -> int:
    max_size = parse_size(args.max_size) if args.max_size else settings_from_env().max_size
    code = _run_plan(args, store, catalog.plan_gc(store, max_size))
    return code or _tiers_down(args, "nothing there was planned or deleted")


def cmd_rm(args: argparse.Namespace, store: Store) -> int:
    keys = [catalog.find_entry(store, ref) for ref in args.entries]
    code = _run_plan(args, store, catalog.plan_rm(store, keys))
    return code or _tiers_down(args, "the entries there were not deleted")


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
    text = (table(rows, ["SKIPPED", "REASON"]) + "\n") if rows else ""
    text += f"exported {result.entries} entries, {result.blobs} blobs ({human(result.bytes)}) to {printable(result.path)}"
    _emit(args, asdict(result), text)
    return _tiers_down(args, "the bundle holds only what the other tiers hold")


def cmd_import(args: argparse.Namespace, store: Store) -> int:
    # Under ARTCACHE_TRUSTED_KEYS a bundle holding any untrusted manifest is refused whole.
    result = archive.import_bundle(store, args.file, trust=_trust(), progress=_progress(args))
    text = (
        f"imported {result.entries} entries, {result.blobs_written} blobs "
        f"({result.blobs_present} already present, {human(result.bytes_written)} written) "
        f"into {printable(shown_url(store.url))}"
    )
    _emit(args, asdict(result), text)
    return _tiers_down(args, "the bundle was not imported into it")


def cmd_keygen(args: argparse.Namespace, _store: Store | None) -> int:
    pair = signing.generate(args.out, force=args.force)
    text = (
        f"private key: {printable(pair.private_path)} (keep secret; set ARTCACHE_SIGNING_KEY to it or its contents)\n"
        f"public key:  {printable(pair.public_path)} (key id {pair.key_id}; readers add it to ARTCACHE_TRUSTED_KEYS)\n"
        f"{pair.public_key}"
    )
    _emit(args, asdict(pair), text)
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
            p.add_argument("-y", "--yes", action="store_true",
                           help="do not ask (on a terminal the plan is printed and confirmed first)")
        return p

    p = add("ls", "list entries")
    p.add_argument("--sort", choices=tuple(catalog.SORT_KEYS), default="last-used",
                   help="order (default last-used: newest first; sizes largest first, names A-Z)")
    p.add_argument("--reverse", action="store_true", help="reverse the order")
    p.add_argument("--filter", action="append", metavar="EXPR",
                   help=f"keep entries matching EXPR: FIELD=GLOB ({', '.join(catalog.FILTER_FIELDS)}), "
                        "size>N, size<N (e.g. size>10M), or text in the key or title; repeat to combine")
    p.add_argument("--limit", type=int, metavar="N", help="show at most N entries")
    p.set_defaults(func=cmd_ls)
    p = add("inspect", "show what an entry holds: a summary first")
    p.add_argument("entry", help="entry key or unique prefix")
    p.add_argument("--graph", action="store_true", help="also print the graph code")
    p.add_argument("--factors", action="store_true", help="also print every key factor's full value")
    p.set_defaults(func=cmd_inspect)
    p = add("stats", "hit rate, size against the cap, store totals")
    p.add_argument("--reset", action="store_true", help="zero the hit/miss counters after printing them")
    p.set_defaults(func=cmd_stats)
    p = add("verify", "check every manifest and blob (exit 1 on problems or a tier down)")
    p.set_defaults(func=cmd_verify, needs_every_tier=True)
    p = add("explain", "why a key missed: the nearest stored entries and the factors that differ")
    p.add_argument("key", nargs="?", help="a missed key or entry key (prefix); default: the last recorded miss")
    p.add_argument("--all", action="store_true", help="every stored entry and every change, not the nearest")
    p.set_defaults(func=cmd_explain)
    p = add("gc", "remove broken entries, old orphan blobs, and LRU entries over a size", dry=True)
    p.add_argument("--max-size", help="shrink the store to this size (e.g. 20G); default $ARTCACHE_MAX_SIZE")
    p.set_defaults(func=cmd_gc, needs_every_tier=True)
    p = add("rm", "remove entries and the blobs only they use", dry=True)
    p.add_argument("entries", nargs="+", help="entry keys or unique prefixes")
    p.set_defaults(func=cmd_rm, needs_every_tier=True)
    p = add("export", "write entries and their blobs to one self-verifying bundle file", progress=True)
    p.add_argument("file", help="bundle file to write")
    p.add_argument("--keys", nargs="+", metavar="K", help="entry keys or unique prefixes (default: every entry)")
    p.set_defaults(func=cmd_export, needs_every_tier=True)
    p = add("import", "verify a bundle file completely, then copy its entries into the store", progress=True)
    p.add_argument("file", help="bundle file to read")
    p.set_defaults(func=cmd_import, needs_every_tier=True)
    p = add("keygen", "make an Ed25519 key pair for signing manifests", store=False)
    p.add_argument("--out", default="artcache-signing", metavar="PREFIX",
                   help="write PREFIX.key (mode 0600) and PREFIX.pub (default: ./artcache-signing)")
    p.add_argument("--force", action="store_true", help="overwrite existing key files")
    p.set_defaults(func=cmd_keygen)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.tier_errors = catalog.TierErrors()
    try:
        try:
            if not args.needs_store:  # keygen: opening a store would create its directory
                return int(args.func(args, None))
            with _open(args) as store:
                code = int(args.func(args, store))
            if not getattr(args, "needs_every_tier", False):
                for url in args.tier_errors.down_tiers():
                    print(f"artcache: warning: tier {shown_url(url)} is down; what it holds is not shown",
                          file=sys.stderr)
            return code
        finally:
            sys.stdout.flush()  # here, where a closed pipe is caught, not at exit
    except BrokenPipeError:
        silence_stdout()
        return EXIT_PIPE
    except ArtcacheError as exc:
        print(f"artcache: error: {printable(exc)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
