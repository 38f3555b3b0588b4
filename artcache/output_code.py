"""CompiledGraph: everything needed to rebuild one compiled graph in a new process.

An entry's blobs (roles):

``object``   the pickled ``BundledAOTAutogradResult`` (artcache's pickler, msgpack): forward
             and backward ``CompiledFxGraph`` with their generated source, Triton bundle,
             output strides and shape guards, and AOTAutograd's runtime metadata
``data``     out-of-band bytes of that document (tensor storages, large byte strings),
             named by digest
``kernel``   a C++ kernel library, named ``<CppCodeCache class>:<input digest>``
``extern_kernels`` (optional) import paths of the callables the generated wrappers call
             as ``extern_kernels.<name>`` (``_lean_load``: a hit then skips
             importing Inductor's compiler)
``tuning``   (GPU, optional) autotuning done at the first runs after the compile: winning
             configs per kernel and compiled coordinate-descent winners (pickled like
             ``object``; its large byte strings are ``data`` blobs too)

Loading builds only allowlisted types (``_torch_compat.entry_allowlist``), then
:meth:`CompiledGraph.load` runs torch's post-compile steps (wrapper module load, input
realignment, CUDA-graph wrapping, output strides, guards) with C++ kernels served from
the entry: nothing is traced, lowered, compiled or tuned.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from . import _torch_compat as compat
from . import _triton_compat as triton_compat
from . import _lean_load as lean_load
from . import pickler
from .cache import LoadedEntry, NewBlob
from .errors import CorruptEntryError, Uncacheable

log = logging.getLogger(__name__)

# Graph text shown by `artcache inspect` is capped: it is for reading, not for rebuilding.
MAX_GRAPH_TEXT = 64 * 1024


@dataclass(frozen=True)
class CompiledGraph:
    entry: Any  # torch's BundledAOTAutogradResult
    cpp_kernels: Mapping[str, compat.CppKernel]
    # "<kernel file>:<configs hash>" -> best config data (AutotuneCache.save's fields)
    winners: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    # "<kernel file>" -> compiled winners found by coordinate descent (StaticTritonCompileResult)
    tuned_results: Mapping[str, list[Any]] = field(default_factory=dict)
    # "<name>" -> import path of the callable the wrappers call as extern_kernels.<name>:
    # recorded at capture (:meth:`captured`), read back on load (``_lean_load``)
    extern_kernels: Mapping[str, lean_load.Ref] = field(default_factory=dict)

    @classmethod
    def captured(cls, entry: Any, cpp_kernels: Mapping[str, compat.CppKernel]) -> CompiledGraph:
        """The graph a compile just produced, in the compiling process (where Inductor's
        extern-kernel registry is loaded, so the references can be recorded)."""
        graph = cls(entry, cpp_kernels)
        sources = (getattr(part, "source_code", None) for part in graph._output_codes())
        refs = lean_load.extern_kernel_refs(source for source in sources if isinstance(source, str))
        return replace(graph, extern_kernels=refs)

    # -- GPU tuning --------------------------------------------------------------------
    def triton_kernels(self) -> triton_compat.KernelRefs:
        """The entry's Triton kernels: files of the statically launchable ones, names of all."""
        files = {
            triton_compat.kernel_file_key(getattr(sa.kernel, "filename", None))
            for sa in triton_compat.static_autotuners(self.entry)
        } - {""}
        names: set[str] = set()
        # getattr: an uncacheable graph leaves no entry, and this runs after every GPU compile.
        for graph in self._output_codes():
            if getattr(graph, "_triton_bundle", None) is not None:
                names |= triton_compat.kernel_names_in(getattr(graph, "source_code", "") or "")
        return triton_compat.KernelRefs(frozenset(files), frozenset(names))

    def tuning_state(self) -> tuple[dict[str, dict[str, Any]], dict[str, list[Any]]]:
        return dict(self.winners), {k: list(v) for k, v in self.tuned_results.items()}

    def with_tuning(self, winners: Mapping[str, dict[str, Any]], tuned: Mapping[str, list[Any]]) -> CompiledGraph:
        return replace(self, winners=dict(winners), tuned_results=dict(tuned))

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
        if self.extern_kernels:
            refs = {name: list(ref) for name, ref in sorted(self.extern_kernels.items())}
            doc = pickler.dumps(refs, allow=compat.entry_allowlist())
            blobs.append(NewBlob("extern_kernels", doc.data))
        if self.winners or self.tuned_results:
            tuning = {"winners": dict(sorted(self.winners.items())), "results": dict(sorted(self.tuned_results.items()))}
            tdoc = pickler.dumps(tuning, allow=compat.entry_allowlist())
            blobs.append(NewBlob("tuning", tdoc.data))
            known = {b.name for b in blobs if b.role == "data"}
            blobs += [NewBlob("data", data, digest) for digest, data in sorted(tdoc.blobs.items()) if digest not in known]
        return blobs

    # -- loading -----------------------------------------------------------------------
    @classmethod
    def from_loaded(cls, loaded: LoadedEntry) -> CompiledGraph:
        manifest = loaded.manifest
        data = {ref.name: loaded.blobs[ref.digest] for ref in manifest.blobs if ref.role == "data"}
        # The store verified every blob (an XXH3 checksum locally and in Redis, SHA-256 from
        # tiers without their own check and under trusted keys), so the pickler need not
        # hash them again on this, the warm-start path.
        entry = pickler.loads(loaded.blob("object"), data, allow=compat.entry_allowlist(), verify=False)
        kernels: dict[str, compat.CppKernel] = {}
        for ref in manifest.blobs:
            if ref.role != "kernel":
                continue
            cache_class, sep, key = ref.name.partition(":")
            if not sep or not cache_class.isidentifier():
                raise CorruptEntryError(f"bad kernel blob name {ref.name!r}")
            kernels[key] = compat.CppKernel(key, cache_class, loaded.blobs[ref.digest])
        winners: dict[str, dict[str, Any]] = {}
        tuned: dict[str, list[Any]] = {}
        if any(ref.role == "tuning" for ref in manifest.blobs):
            tuning = pickler.loads(loaded.blob("tuning"), data, allow=compat.entry_allowlist(), verify=False)
            if type(tuning) is not dict or type(tuning.get("winners")) is not dict or type(tuning.get("results")) is not dict:
                raise CorruptEntryError("bad tuning record")
            winners, tuned = tuning["winners"], tuning["results"]
        externs: dict[str, lean_load.Ref] = {}
        if any(ref.role == "extern_kernels" for ref in manifest.blobs):
            refs = pickler.loads(loaded.blob("extern_kernels"), data, allow=compat.entry_allowlist(), verify=False)
            if type(refs) is not dict or not all(
                type(name) is str and type(ref) is list and len(ref) == 2 and all(type(part) is str for part in ref)
                for name, ref in refs.items()
            ):
                raise CorruptEntryError("bad extern_kernels record")
            externs = {name: (ref[0], ref[1]) for name, ref in refs.items()}
        return cls(entry, kernels, winners, tuned, externs)

    def guards_hold(self, example_inputs: Sequence[Any]) -> bool:
        return compat.guards_hold(self.entry, example_inputs)

    def load(
        self, example_inputs: Sequence[Any], *, cudagraphs: bool, lifted: Sequence[torch.Tensor] = ()
    ) -> Callable[..., Any]:
        """The compiled callable (runs torch's post-compile steps; compiles nothing).
        ``lifted``: the live graph's parameters and buffers (``compat.lifted_inputs``)."""
        library_dir = compat.kernel_library_dir()
        tuned = triton_compat.select_tuned(self.entry, self.winners, self.tuned_results)
        if tuned.outcome:
            log.info("artcache: autotuning served from the entry: %s", sorted(tuned.outcome.items()))
        through_triton = triton_compat.rebuilt_through_triton(self.entry, self.triton_kernels())
        # Graphs with kernels rebuilt through triton.compile load by torch's own path: the
        # lean load has not been run on a GPU for them (_lean_load's docstring).
        lean = not through_triton
        graphs = self._output_codes()
        lightened = sum(lean_load.lighten(graph, self.extern_kernels) for graph in graphs) if lean else 0
        with compat.serve_cpp_kernels(self.cpp_kernels, library_dir), triton_compat.serve_triton(
            self.winners, triton_compat.private_triton_dir(library_dir), through_triton=through_triton,
            bundle_keys=triton_compat.static_bundle_keys(self.entry), settled_files=tuned.settled_files,
        ), lean_load.hit_post_compile(graphs, enabled=lean) as lean_post_compile:
            log.debug("artcache: %d of %d wrapper module(s) lightened; lean post-compile: %s",
                      lightened, len(graphs), lean_post_compile)
            return compat.rebuild(self.entry, example_inputs, cudagraphs=cudagraphs, lifted=lifted)

    def _output_codes(self) -> list[Any]:
        """The forward and backward ``CompiledFxGraph`` (those present)."""
        parts = (getattr(self.entry, "compiled_fw", None), getattr(self.entry, "compiled_bw", None))
        return [graph for graph in map(_output_code, parts) if graph is not None]

    # -- inspect ---------------------------------------------------------------------------
    def summary(self, gm: torch.fx.GraphModule, input_specs: Sequence[str]) -> dict[str, Any]:
        """Plain data for the manifest, read by ``artcache inspect`` (no code runs there)."""
        graphs = self._output_codes()
        kernels = [
            {"name": k.key[:16], "kind": "cpp", "loader": k.cache_class, "bytes": len(k.library)}
            for k in sorted(self.cpp_kernels.values(), key=lambda k: k.key)
        ]
        autotune: list[dict[str, Any]] = []
        for graph in graphs:
            bundle = getattr(graph, "_triton_bundle", None)
            for artifacts in getattr(bundle, "kernel_artifacts", None) or ():
                files = getattr(artifacts, "artifacts", ())
                names = sorted({f.filename.rsplit(".", 1)[0] for f in files if f.filename.endswith((".cubin", ".hsaco"))})
                kernels.append({
                    "name": ",".join(names) or str(getattr(artifacts, "kernel_hash", ""))[:16],
                    "kind": "triton",
                    "hash": str(getattr(artifacts, "kernel_hash", ""))[:16],
                    "device": str(getattr(artifacts, "device", "")),
                    "bytes": sum(len(getattr(f, "payload", b"")) for f in files),
                })
            for sa in getattr(bundle, "static_autotuners", None) or ():
                tuner = sa.kernel
                file_key = triton_compat.kernel_file_key(getattr(tuner, "filename", None))
                configs = [triton_compat.config_summary(r.config) for r in getattr(tuner, "compile_results", ())]
                chosen = [
                    {k: v for k, v in data.items() if k not in ("configs_hash",)}
                    for key, data in sorted(self.winners.items()) if key.partition(":")[0] == file_key
                ]
                autotune.append({
                    "kernel": str(getattr(sa, "kernel_name", "")),
                    "kind": "triton",
                    "configs": len(configs),
                    "choice": chosen[0] if chosen else (configs[0] if len(configs) == 1 else "tuned at first run"),
                    "compiled_after_bundle": len(self.tuned_results.get(file_key, ())),
                })
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
