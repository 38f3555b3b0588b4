"""CompiledGraph: everything needed to rebuild one compiled graph in a new process.

An entry's blobs (roles):

``object``   the pickled ``BundledAOTAutogradResult`` (artcache's pickler, msgpack): forward
             and backward ``CompiledFxGraph`` with their generated source, Triton bundle,
             output strides and shape guards, and AOTAutograd's runtime metadata
``data``     out-of-band bytes of that document (tensor storages, large byte strings),
             named by digest
``kernel``   a C++ kernel library, named ``<CppCodeCache class>:<input digest>``

Loading builds only allowlisted types (``_torch_compat.entry_allowlist``), then
:meth:`CompiledGraph.load` runs torch's post-compile steps (wrapper module load, input
realignment, CUDA-graph wrapping, output strides, guards) with C++ kernels served from
the entry: nothing is traced, lowered, compiled or tuned.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import _torch_compat as compat
from . import pickler
from .cache import LoadedEntry, NewBlob
from .errors import CorruptEntryError, Uncacheable

# Graph text shown by `artcache inspect` is capped: it is for reading, not for rebuilding.
MAX_GRAPH_TEXT = 64 * 1024


@dataclass(frozen=True)
class CompiledGraph:
    entry: Any  # torch's BundledAOTAutogradResult
    cpp_kernels: Mapping[str, compat.CppKernel]

    # -- saving ------------------------------------------------------------------------
    def to_blobs(self) -> list[NewBlob]:
        """Serialize; raises ``Uncacheable`` if the entry holds a type we cannot store."""
        if self.entry is None:
            raise Uncacheable("no-entry", "AOTAutograd produced no cacheable result for this graph")
        doc = pickler.dumps(self.entry, allow=compat.entry_allowlist())
        blobs = [NewBlob("object", doc.data)]
        blobs += [NewBlob("data", data, digest) for digest, data in sorted(doc.blobs.items())]
        blobs += [
            NewBlob("kernel", k.library, f"{k.cache_class}:{k.key}") for k in sorted(self.cpp_kernels.values(), key=lambda k: k.key)
        ]
        return blobs

    # -- loading -----------------------------------------------------------------------
    @classmethod
    def from_loaded(cls, loaded: LoadedEntry) -> CompiledGraph:
        manifest = loaded.manifest
        data = {ref.name: loaded.blobs[ref.digest] for ref in manifest.blobs if ref.role == "data"}
        # The store verified every blob (checksum locally, SHA-256 from shared tiers), so
        # the pickler need not hash them again on this, the warm-start path.
        entry = pickler.loads(loaded.blob("object"), data, allow=compat.entry_allowlist(), verify=False)
        kernels: dict[str, compat.CppKernel] = {}
        for ref in manifest.blobs:
            if ref.role != "kernel":
                continue
            cache_class, sep, key = ref.name.partition(":")
            if not sep or not cache_class.isidentifier():
                raise CorruptEntryError(f"bad kernel blob name {ref.name!r}")
            kernels[key] = compat.CppKernel(key, cache_class, loaded.blobs[ref.digest])
        return cls(entry, kernels)

    def guards_hold(self, example_inputs: Sequence[Any]) -> bool:
        return compat.guards_hold(self.entry, example_inputs)

    def load(self, example_inputs: Sequence[Any], *, cudagraphs: bool) -> Callable[..., Any]:
        """The compiled callable (runs torch's post-compile steps; compiles nothing)."""
        with compat.serve_cpp_kernels(self.cpp_kernels, compat.kernel_library_dir()):
            return compat.rebuild(self.entry, example_inputs, cudagraphs=cudagraphs)

    # -- inspect ---------------------------------------------------------------------------
    def summary(self, gm: torch.fx.GraphModule, input_specs: Sequence[str]) -> dict[str, Any]:
        """Plain data for the manifest, read by ``artcache inspect`` (no code runs there)."""
        graphs = [g for g in (_output_code(self.entry.compiled_fw), _output_code(self.entry.compiled_bw)) if g is not None]
        kernels = [
            {"name": k.key[:16], "kind": "cpp", "loader": k.cache_class, "bytes": len(k.library)}
            for k in sorted(self.cpp_kernels.values(), key=lambda k: k.key)
        ]
        autotune: list[dict[str, Any]] = []
        for graph in graphs:
            bundle = getattr(graph, "_triton_bundle", None)
            for artifacts in getattr(bundle, "kernel_artifacts", None) or ():
                files = getattr(artifacts, "artifacts", ())
                kernels.append({
                    "name": str(getattr(artifacts, "kernel_hash", ""))[:16],
                    "kind": "triton",
                    "device": str(getattr(artifacts, "device", "")),
                    "bytes": sum(len(getattr(f, "payload", b"")) for f in files),
                })
            for tuner in getattr(bundle, "static_autotuners", None) or ():
                autotune.append({"kernel": str(getattr(tuner, "kernel_name", "")), "kind": "static-launcher"})
        constants = []
        for graph in graphs:
            for name, value in (getattr(graph, "constants", None) or {}).items():
                if isinstance(value, torch.Tensor):
                    constants.append({"name": name, "shape": list(value.shape), "dtype": str(value.dtype),
                                      "bytes": value.numel() * value.element_size()})
        guards = self.entry.guards_expr
        text = gm.code if len(gm.code) <= MAX_GRAPH_TEXT else gm.code[:MAX_GRAPH_TEXT] + "\n# ... truncated"
        nodes = sum(1 for n in gm.graph.nodes if n.op == "call_function")
        return {
            "title": f"{nodes}-op graph, {'training (forward + backward)' if self.entry.compiled_bw else 'inference'}",
            "inputs": list(input_specs),
            "guards": [g.strip() for g in guards.split(" and ")] if guards else [],
            "graph": text,
            "kernels": kernels,
            "constants": constants,
            "autotune": autotune,
            "generated_source_bytes": sum(len(getattr(g, "source_code", "") or "") for g in graphs),
        }


def _output_code(part: Any) -> Any:
    return getattr(part, "result", None) if part is not None else None
