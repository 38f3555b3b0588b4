"""CompiledGraph: everything needed to rebuild one compiled graph in a new process.

An entry's blobs (:class:`artcache.entry.BlobRole`): the pickled ``BundledAOTAutogradResult``
(``object``: forward and backward ``CompiledFxGraph`` with their generated source, Triton
bundle, output strides and shape guards, and AOTAutograd's runtime metadata) with its
out-of-band bytes (``data``), the C++ kernel libraries (``kernel``), the import paths of
the wrappers' extern kernels (``extern_kernels``, optional), the first runs' autotuning
(``tuning``, GPU, optional) and, for a frozen graph (Inductor's ``freezing``), the flat
arguments its forward still takes (``frozen``).  A frozen graph's constants (its weights as
freezing left them: folded or re-laid-out) are tensors of the pickled graph, so they are
``data`` blobs, content-addressed like every tensor storage.

Loading builds only allowlisted types (``artcache._torch.entry_types.entry_allowlist``),
then :meth:`CompiledGraph.load` runs torch's post-compile steps (wrapper module load, input
realignment, CUDA-graph wrapping, output strides, guards) with the kernels served from the
entry (:mod:`artcache.bundler`): nothing is traced, lowered, compiled or tuned.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from . import bundler, pickler
from ._torch import entry_parts, lean_load, rebuild
from ._torch.entry_types import entry_allowlist
from ._torch.freezing import ModelConstant
from .bundler import CppKernel, KernelBundle, KernelRefs
from .entry import BlobRole, LoadedEntry, NewBlob, SummaryKey
from .errors import CorruptEntryError, Uncacheable

log = logging.getLogger(__name__)

# Graph text shown by `artcache inspect` is capped: it is for reading, not for rebuilding.
MAX_GRAPH_TEXT = 64 * 1024


@dataclass(frozen=True)
class CompiledGraph:
    entry: Any  # torch's BundledAOTAutogradResult
    kernels: KernelBundle = field(default_factory=KernelBundle)
    # "<name>" -> import path of the callable the wrappers call as extern_kernels.<name>:
    # recorded at capture (:meth:`captured`), read back on load (``lean_load``)
    extern_kernels: Mapping[str, lean_load.Ref] = field(default_factory=dict)
    # A frozen graph: the indices of the flat arguments (lifted parameters and buffers,
    # then the graph's inputs) that its forward takes; None for every other graph.
    frozen_args: tuple[int, ...] | None = None
    # A frozen graph's constants that are views of the model's own parameters or buffers,
    # not stored: constant name -> the lifted input and view a hit binds (``freezing``).
    frozen_aliases: Mapping[str, ModelConstant] = field(default_factory=dict)

    @classmethod
    def captured(cls, capture: bundler.CompileCapture) -> CompiledGraph:
        """The graph a compile just produced, in the compiling process (where Inductor's
        extern-kernel registry is loaded, so the references can be recorded)."""
        graph = cls(capture.entry, capture.bundle, frozen_args=capture.frozen_args,
                    frozen_aliases=dict(capture.frozen_aliases))
        refs = lean_load.extern_kernel_refs(entry_parts.generated_sources(capture.entry))
        return replace(graph, extern_kernels=refs)

    # -- GPU tuning --------------------------------------------------------------------
    def triton_kernels(self) -> KernelRefs:
        return bundler.triton_kernels(self.entry)

    def with_tuning(self, winners: Mapping[str, dict[str, Any]], tuned: Mapping[str, list[Any]]) -> CompiledGraph:
        return replace(self, kernels=self.kernels.with_tuning(winners, tuned))

    # -- saving ------------------------------------------------------------------------
    def to_blobs(self) -> list[NewBlob]:
        """Serialize; raises ``Uncacheable`` if the entry holds a type we cannot store."""
        if self.entry is None:
            raise Uncacheable("no-entry", "AOTAutograd produced no cacheable result for this graph")
        allow = entry_allowlist()
        doc = pickler.dumps(self.entry, allow=allow)
        blobs = [NewBlob(BlobRole.OBJECT, doc.data)]
        blobs += [NewBlob(BlobRole.DATA, data, digest) for digest, data in sorted(doc.blobs.items())]
        blobs += [NewBlob(BlobRole.KERNEL, k.library, f"{k.cache_class}:{k.key}")
                  for k in sorted(self.kernels.cpp.values(), key=lambda k: k.key)]
        if self.extern_kernels:
            refs = {name: list(ref) for name, ref in sorted(self.extern_kernels.items())}
            blobs.append(NewBlob(BlobRole.EXTERN_KERNELS, pickler.dumps(refs, allow=allow).data))
        if self.frozen_args is not None:
            record: dict[str, Any] = {"args": list(self.frozen_args)}
            if self.frozen_aliases:
                record["lifted"] = {name: alias.to_record() for name, alias in sorted(self.frozen_aliases.items())}
            blobs.append(NewBlob(BlobRole.FROZEN, pickler.dumps(record, allow=allow).data))
        if self.kernels.winners or self.kernels.tuned:
            tuning = {"winners": dict(sorted(self.kernels.winners.items())), "results": dict(sorted(self.kernels.tuned.items()))}
            tdoc = pickler.dumps(tuning, allow=allow)
            blobs.append(NewBlob(BlobRole.TUNING, tdoc.data))
            known = {b.name for b in blobs if b.role == BlobRole.DATA}
            blobs += [NewBlob(BlobRole.DATA, data, digest) for digest, data in sorted(tdoc.blobs.items()) if digest not in known]
        return blobs

    # -- loading -----------------------------------------------------------------------
    @classmethod
    def from_loaded(cls, loaded: LoadedEntry) -> CompiledGraph:
        manifest = loaded.manifest
        data = {ref.name: loaded.blobs[ref.digest] for ref in manifest.blobs if ref.role == BlobRole.DATA}
        allow = entry_allowlist()
        # The store verified every blob (an XXH3 checksum locally and in Redis, SHA-256 from
        # tiers without their own check and under trusted keys), so the pickler need not
        # hash them again on this, the warm-start path.
        entry = pickler.loads(loaded.blob(BlobRole.OBJECT), data, allow=allow, verify=False)
        cpp: dict[str, CppKernel] = {}
        for ref in manifest.blobs:
            if ref.role != BlobRole.KERNEL:
                continue
            cache_class, sep, key = ref.name.partition(":")
            if not sep or not cache_class.isidentifier():
                raise CorruptEntryError(f"bad kernel blob name {ref.name!r}")
            cpp[key] = CppKernel(key, cache_class, loaded.blobs[ref.digest])
        winners: dict[str, dict[str, Any]] = {}
        tuned: dict[str, list[Any]] = {}
        if any(ref.role == BlobRole.TUNING for ref in manifest.blobs):
            tuning = pickler.loads(loaded.blob(BlobRole.TUNING), data, allow=allow, verify=False)
            if type(tuning) is not dict or type(tuning.get("winners")) is not dict or type(tuning.get("results")) is not dict:
                raise CorruptEntryError("bad tuning record")
            winners, tuned = tuning["winners"], tuning["results"]
        externs: dict[str, lean_load.Ref] = {}
        if any(ref.role == BlobRole.EXTERN_KERNELS for ref in manifest.blobs):
            refs = pickler.loads(loaded.blob(BlobRole.EXTERN_KERNELS), data, allow=allow, verify=False)
            if type(refs) is not dict or not all(
                type(name) is str and type(ref) is list and len(ref) == 2 and all(type(part) is str for part in ref)
                for name, ref in refs.items()
            ):
                raise CorruptEntryError("bad extern_kernels record")
            externs = {name: (ref[0], ref[1]) for name, ref in refs.items()}
        frozen_args, aliases = None, {}
        if any(ref.role == BlobRole.FROZEN for ref in manifest.blobs):
            record = pickler.loads(loaded.blob(BlobRole.FROZEN), data, allow=allow, verify=False)
            args = record.get("args") if type(record) is dict else None
            if type(args) is not list or not all(type(i) is int and 0 <= i < 1 << 20 for i in args):
                raise CorruptEntryError("bad frozen-graph record")
            frozen_args = tuple(args)
            lifted = record.get("lifted", {})
            if type(lifted) is not dict or not all(type(name) is str and 0 < len(name) <= 256 for name in lifted):
                raise CorruptEntryError("bad frozen-graph constants record")
            aliases = {name: ModelConstant.from_record(alias) for name, alias in lifted.items()}
        return cls(entry, KernelBundle(cpp, winners, tuned), externs, frozen_args, aliases)

    def guards_hold(self, example_inputs: Sequence[Any], *, int_symbols: bool = False) -> bool:
        return rebuild.guards_hold(self.entry, example_inputs, int_symbols=int_symbols)

    def load(
        self, example_inputs: Sequence[Any], *, cudagraphs: bool, lifted: Sequence[torch.Tensor] = (),
        ints_checked: bool = False,
    ) -> Callable[..., Any]:
        """The compiled callable (runs torch's post-compile steps; compiles nothing).
        ``lifted``: the live graph's parameters and buffers (``rebuild.lifted_inputs``);
        ``ints_checked``: a replayed frame's (``rebuild.rebuild``)."""
        graphs = entry_parts.output_codes(self.entry)
        with bundler.serving(self.entry, self.kernels) as plan:
            # Graphs with kernels rebuilt through triton.compile load by torch's own path:
            # the lean load has not been run on a GPU for them (lean_load's docstring).
            lean = not plan.through_triton
            lightened = sum(lean_load.lighten(graph, self.extern_kernels) for graph in graphs) if lean else 0
            with lean_load.hit_post_compile(graphs, enabled=lean) as lean_post_compile:
                log.debug("artcache: %d of %d wrapper module(s) lightened; lean post-compile: %s%s",
                          lightened, len(graphs), lean_post_compile,
                          "; kernels rebuilt through triton.compile" if plan.through_triton else "")
                return rebuild.rebuild(self.entry, example_inputs, cudagraphs=cudagraphs, lifted=lifted,
                                       frozen_args=self.frozen_args, frozen_aliases=self.frozen_aliases,
                                       ints_checked=ints_checked)

    # -- inspect ---------------------------------------------------------------------------
    def summary(self, gm: torch.fx.GraphModule, input_specs: Sequence[str]) -> dict[str, Any]:
        """Plain data for the manifest, read by ``artcache inspect`` (no code runs there)."""
        text = gm.code if len(gm.code) <= MAX_GRAPH_TEXT else gm.code[:MAX_GRAPH_TEXT] + "\n# ... truncated"
        training, frozen = entry_parts.has_backward(self.entry), self.frozen_args is not None
        return {
            SummaryKey.TITLE: graph_title(gm, training=training, frozen=frozen),
            SummaryKey.FUNCTION: graph_function(gm),
            SummaryKey.KIND: graph_kind(training=training, frozen=frozen),
            SummaryKey.INPUTS: list(input_specs),
            SummaryKey.GUARDS: entry_parts.guards(self.entry),
            SummaryKey.GRAPH: text,
            SummaryKey.KERNELS: bundler.kernel_summary(self.entry, self.kernels),
            SummaryKey.CONSTANTS: entry_parts.constants(self.entry) + [
                {"name": name, "shape": list(alias.shape), "stored": f"no: a view of the model's lifted input {alias.index}"}
                for name, alias in sorted(self.frozen_aliases.items())
            ],
            SummaryKey.AUTOTUNE: bundler.autotune_summary(self.entry, self.kernels),
            SummaryKey.GENERATED_SOURCE_BYTES: sum(len(s) for s in entry_parts.generated_sources(self.entry)),
        }


# The outermost frame of an FX node's stack trace: the function torch.compile traced.
_FRAME_RE = re.compile(r'File "([^"]+)", line (\d+), in ([^\s]+)')


def graph_function(gm: torch.fx.GraphModule) -> str:
    """The compiled function and where it is: "forward at model.py:42", from the first
    operation's stack trace (Dynamo records one per node); "" without one."""
    for node in gm.graph.nodes:
        if node.op not in ("call_function", "call_method", "call_module"):
            continue
        trace = node.meta.get("stack_trace")
        match = _FRAME_RE.search(trace) if isinstance(trace, str) else None
        if match:
            path, line, function = match.groups()
            return f"{function} at {os.path.basename(path)}:{line}"
    return ""


def graph_kind(*, training: bool, frozen: bool) -> str:
    return ("training" if training else "inference") + (", frozen" if frozen else "")


def graph_title(gm: torch.fx.GraphModule, *, training: bool = False, frozen: bool = False) -> str:
    """What a graph is to its user: "forward at model.py:42 (3 ops)" ("graph (3 ops)"
    without a stack trace), with ", training" or ", frozen" after the count."""
    ops = sum(1 for n in gm.graph.nodes if n.op in ("call_function", "call_method", "call_module"))
    count = f"{ops} op{'s' if ops != 1 else ''}{', training' if training else ''}{', frozen' if frozen else ''}"
    return f"{graph_function(gm) or 'graph'} ({count})"
