"""Text rendering of an entry for ``artcache inspect``.  Reads the manifest only:
inspecting never deserializes objects nor runs any code an entry holds.

The ``summary`` map of a manifest has these conventional sections (all optional; what
the compile path writes is described in :mod:`artcache.output_code`)::

    title      str                       what was compiled
    inputs     [str]                     input specs
    guards     [str]                     shape guards a hit must satisfy
    graph      str                       readable graph code
    kernels    [{name, kind, size}]      C++ / Triton kernels
    constants  [{name, shape, dtype, bytes}]
    autotune   [{name, choice, ...}]     chosen autotune configs
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from .entry import Manifest

_SECTIONS = ("title", "inputs", "guards", "graph", "kernels", "constants", "autotune")


def _rows(items: list[Any]) -> list[str]:
    out = []
    for item in items:
        if isinstance(item, dict):
            out.append("  " + "  ".join(f"{k}={v}" for k, v in item.items()))
        else:
            out.append(f"  {item}")
    return out or ["  (none)"]


def render_entry(manifest: Manifest) -> str:
    m = manifest
    s = m.summary
    lines = [
        f"entry        {m.key}",
        f"created      {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(m.created))} by {m.producer}",
    ]
    if s.get("title"):
        lines.append(f"title        {s['title']}")
    lines.append("environment")
    lines += [f"  {k:<22} {v}" for k, v in m.environment.items()]
    lines.append("factors (digests; `artcache explain` compares them)")
    lines += [f"  {k:<22} {v[:16]}" for k, v in m.factors.items()]
    sizes = Counter[str]()
    for ref in m.blobs:
        sizes[ref.role] += ref.size
    lines.append(f"sizes        {m.total_size} bytes in {len(m.blobs)} blobs")
    lines += [f"  {role:<22} {size} bytes" for role, size in sorted(sizes.items())]
    for section in ("inputs", "guards", "kernels", "constants", "autotune"):
        if section in s:
            value = s[section]
            lines.append(f"{section} ({len(value)})" if isinstance(value, list) else section)
            lines += _rows(value) if isinstance(value, list) else [f"  {value}"]
    for key in sorted(set(s) - set(_SECTIONS)):
        lines.append(f"{key}\n  {s[key]}")
    if "graph" in s:
        lines.append("graph")
        lines += ["  " + line for line in str(s["graph"]).splitlines()]
    return "\n".join(lines)
