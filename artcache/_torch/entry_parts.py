"""Reading a captured entry (torch's ``BundledAOTAutogradResult``) for artcache's own use:
its compiled graphs, their generated source, shape guards, constants and Triton bundles.

Attribute names are torch 2.11-2.13's (``compiled_fw``/``compiled_bw`` wrappers whose
``result`` is a ``CompiledFxGraph``; ``_triton_bundle``, ``constants``, ``source_code``,
``guards_expr`` on it).  Every read is a ``getattr`` with a default, so an entry of another
shape yields less to show, never an error.
"""

from __future__ import annotations

from typing import Any

import torch

from .triton_serve import config_summary, kernel_file_key


def output_codes(entry: Any) -> list[Any]:
    """The forward and backward ``CompiledFxGraph`` of ``entry`` (those present)."""
    parts = (getattr(entry, "compiled_fw", None), getattr(entry, "compiled_bw", None))
    return [graph for graph in (getattr(p, "result", None) if p is not None else None for p in parts) if graph is not None]


def has_backward(entry: Any) -> bool:
    return getattr(entry, "compiled_bw", None) is not None


def guards(entry: Any) -> list[str]:
    """The entry's shape guards, one per conjunct (as ``inspect`` shows them)."""
    expr = getattr(entry, "guards_expr", None)
    return [g.strip() for g in expr.split(" and ")] if isinstance(expr, str) and expr else []


def generated_sources(entry: Any) -> list[str]:
    return [s for s in (getattr(g, "source_code", None) for g in output_codes(entry)) if isinstance(s, str)]


def constants(entry: Any) -> list[dict[str, Any]]:
    """The tensors compiled into the graphs (``CompiledFxGraph.constants``), as plain data."""
    out = []
    for graph in output_codes(entry):
        for name, value in (getattr(graph, "constants", None) or {}).items():
            if isinstance(value, torch.Tensor):
                out.append({"name": name, "shape": list(value.shape), "dtype": str(value.dtype),
                            "bytes": value.numel() * value.element_size()})
    return out


def triton_kernel_summaries(entry: Any) -> list[dict[str, Any]]:
    """One record per Triton kernel in the entry's bundles: names, hash, device, bytes."""
    out = []
    for graph in output_codes(entry):
        bundle = getattr(graph, "_triton_bundle", None)
        for artifacts in getattr(bundle, "kernel_artifacts", None) or ():
            files = getattr(artifacts, "artifacts", ())
            names = sorted({f.filename.rsplit(".", 1)[0] for f in files if f.filename.endswith((".cubin", ".hsaco"))})
            out.append({
                "name": ",".join(names) or str(getattr(artifacts, "kernel_hash", ""))[:16],
                "kind": "triton",
                "hash": str(getattr(artifacts, "kernel_hash", ""))[:16],
                "device": str(getattr(artifacts, "device", "")),
                "bytes": sum(len(getattr(f, "payload", b"")) for f in files),
            })
    return out


def static_autotuner_summaries(entry: Any) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """``(kernel name, kernel file key, compiled configs)`` per statically launchable kernel."""
    out = []
    for graph in output_codes(entry):
        bundle = getattr(graph, "_triton_bundle", None)
        for sa in getattr(bundle, "static_autotuners", None) or ():
            tuner = sa.kernel
            configs = [config_summary(r.config) for r in getattr(tuner, "compile_results", ())]
            out.append((str(getattr(sa, "kernel_name", "")), kernel_file_key(getattr(tuner, "filename", None)), configs))
    return out
