"""Text rendering of an entry for ``artcache inspect``.  Reads the manifest only:
inspecting never deserializes objects nor runs any code an entry holds, and every stored
string is printed escaped (:func:`artcache.cli_io.printable`).

The view starts with a short summary (what was compiled, what kind of graph, sizes, who
signed it, its kernels), then the shorter sections; the graph code and the full factor
values are long and come only when asked for (``--graph``, ``--factors``).

The ``summary`` map of a manifest has these conventional sections (all optional; what
the compile path writes is described in :mod:`artcache.output_code`)::

    title      str                       what was compiled
    function   str                       (optional) the compiled function, file:line
    kind       str                       (optional) inference / training ...
    inputs     [str]                     input specs
    guards     [str]                     shape guards a hit must satisfy
    graph      str                       readable graph code
    kernels    [{name, kind, size}]      C++ / Triton kernels
    constants  [{name, shape, dtype, bytes}]
    autotune   [{name, choice, ...}]     chosen autotune configs
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from .cli_io import human, printable, printable_lines, when
from .entry import Manifest

_SHOWN = frozenset({"title", "function", "kind", "inputs", "guards", "graph", "kernels", "constants", "autotune",
                    "factor_values", "compile_seconds", "generated_source_bytes"})
MAX_LISTED = 12  # kernels, inputs, guards... listed in the summary before "and N more"


@dataclass(frozen=True)
class SignerView:
    """Who signed an entry, as the reader sees it."""

    key_id: str  # "" when unsigned
    trusted: bool | None  # None: no trusted keys configured, so nothing was checked
    why: str = ""  # why a lookup would refuse it, when untrusted

    def text(self) -> str:
        verdict = {None: "", True: " (trusted: signature verified)", False: f" (untrusted: {self.why})"}[self.trusted]
        return ("unsigned" if not self.key_id else f"key {self.key_id}") + printable(verdict)


def _function_and_kind(summary: Any) -> tuple[str, str]:
    title = str(summary.get("title", ""))
    function = str(summary.get("function", "") or title.rsplit(", ", 1)[0])
    kind = str(summary.get("kind", "") or (title.rsplit(", ", 1)[1] if ", " in title else ""))
    return function, kind


def _item(item: Any) -> str:
    if isinstance(item, dict):
        return "  ".join(f"{printable(k)}={printable(v)}" for k, v in item.items())
    return printable(item)


def _listing(name: str, items: Any, *, limit: int | None = MAX_LISTED) -> list[str]:
    if not isinstance(items, list):
        return [f"{name}", f"  {printable(items)}"]
    shown = items if limit is None else items[:limit]
    lines = [f"{name} ({len(items)})"] + [f"  {_item(i)}" for i in shown]
    if len(shown) < len(items):
        lines.append(f"  ... and {len(items) - len(shown)} more (--format json lists all)")
    return lines


def _kernel_line(kernels: Any) -> str:
    if not isinstance(kernels, list) or not kernels:
        return "none"
    kinds = Counter(str(k.get("kind", "?")) if isinstance(k, dict) else "?" for k in kernels)
    total = sum(int(k.get("size", 0)) for k in kernels if isinstance(k, dict) and isinstance(k.get("size"), int))
    return f"{len(kernels)} (" + ", ".join(f"{n} {printable(kind)}" for kind, n in sorted(kinds.items())) + \
        (f"; {human(total)})" if total else ")")


def render_entry(manifest: Manifest, signer: SignerView, *, graph: bool = False, factors: bool = False) -> str:
    m = manifest
    s = m.summary
    function, kind = _function_and_kind(s)
    sizes = Counter[str]()
    for ref in m.blobs:
        sizes[ref.role] += ref.size
    by_role = ", ".join(f"{printable(role)} {human(size)}" for role, size in sorted(sizes.items(), key=lambda x: -x[1]))
    lines = [
        f"entry        {printable(m.key)}",
        f"function     {printable(function) or '-'}",
        f"kind         {printable(kind) or '-'}",
        f"size         {human(m.total_size)} in {len(m.blobs)} blobs" + (f" ({by_role})" if by_role else ""),
        f"signer       {signer.text()}",
        f"kernels      {_kernel_line(s.get('kernels'))}",
        f"created      {when(m.created)} by {printable(m.producer)}",
    ]
    if m.compile_seconds:
        lines.append(f"compile      {m.compile_seconds:.1f} s (saved at each hit)")
    if isinstance(s.get("kernels"), list) and s["kernels"]:
        lines += _listing("kernels", s["kernels"])
    for section in ("inputs", "guards", "constants", "autotune"):
        if section in s:
            lines += _listing(section, s[section])
    lines.append("environment")
    lines += [f"  {printable(k):<22} {printable(v)}" for k, v in m.environment.items()]
    for key in sorted(set(s) - _SHOWN):
        lines += [printable(key)] + ["  " + line for line in printable_lines(s[key])]
    if factors:
        values = s.get("factor_values", {}) if isinstance(s.get("factor_values"), dict) else {}
        lines.append("factors (digest, then the value behind it)")
        for name, digest in sorted(m.factors.items()):
            lines.append(f"  {printable(name):<22} {printable(digest)}")
            if name in values:
                text = json.dumps(values[name], indent=2, sort_keys=True, default=str)
                lines += ["    " + line for line in printable_lines(text)]
    if graph and "graph" in s:
        lines.append("graph")
        lines += ["  " + line for line in printable_lines(s["graph"])]
    hidden = [flag for flag, shown, present in (("--graph", graph, "graph" in s), ("--factors", factors, True))
              if present and not shown]
    if hidden:
        lines.append(f"(more with {' and '.join(hidden)}, or --format json)")
    return "\n".join(lines)
