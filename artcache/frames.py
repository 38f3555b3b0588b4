"""The precompile tier: a hit in a fresh process runs a frame without Dynamo tracing it.

``artcache.precompile(fn)`` (or ``Cache.precompile``) wraps a function or module.  At a
call it binds the arguments and looks up a *frame entry*, keyed by named factors: the
digest of the frame's code and the values it reads (:func:`artcache.code_digest.code_digest`),
the argument specs, the environment (torch version and build, Python, devices), mode and
options.  A frame entry holds what Dynamo produced for the frame, as plain data:

* **guards**: every guard Dynamo installed, translated to checks that read the frame's
  locals and globals through access paths (``artcache._torch.frame_capture``): tensor
  facts, constant values, types and named objects by identity, dict lengths, absent
  attributes; plus one snapshot of the global state (grad mode, autocast, default dtype
  and device, deterministic algorithms, mode stacks, saved-tensor hooks);
* **shape guards**, for a frame traced with symbolic shapes (dimensions marked dynamic):
  the ShapeEnv's guards as expression trees over sizes, strides and storage offsets read
  at access paths (:mod:`artcache.shape_expr`), evaluated by a small interpreter; a tensor
  check leaves its symbolic sizes to them, and the frame key leaves marked dimensions out;
* **the replay**: the access path of each graph input (a SymInt input is a size read at
  its path) and how the frame's return value is built from the graph's outputs.  A frame
  that is one graph and has no Python side effect needs nothing more; a frame with graph
  breaks or side effects is a *chain entry* instead, whose steps hold Dynamo's transformed
  code (which applies the side effects) and resume functions (:mod:`artcache.frame_resume`);
* the **graph entry key** of that graph (an ordinary artcache entry), digests of every
  user function Dynamo inlined, and the version of every installed package (other than
  torch and the standard library, environment factors) whose code it inlined: an entry
  recorded before an upgrade of such a package is refused.

A call evaluates the guards before anything runs; all must hold.  Then the graph entry is
looked up, its process-dependent factors (configs, numerics, environment, options) are
recomputed here and compared with those in its manifest (a graph with symbolic shapes:
the first of its guard variants, ``keys.guard_variant``, whose own shape guards accept the
sizes, interpreted as the frame's are), and the compiled graph is called
with the inputs read through the paths.  Anything else (no entry, a failed guard, a frame
that cannot qualify, an entry that cannot be read) falls back to ``torch.compile`` with
the artcache backend: Dynamo traces and the graphs still hit.  The fallback's first trace
in a process records a frame entry when the frame qualifies, or counts why it does not
(``Precompiled.reasons``, and ``precompile-<reason>`` in ``Cache.stats().uncacheable``).

Frame entries go through the safe pickler (plain data only), are signed like every entry,
and ``artcache inspect`` shows their guards, inputs and graph key.

:class:`FrameTier` is what both ways into the tier share (key, load, record, save); the
wrapper here is one, ``torch.compile`` with precompile on is the other
(:mod:`artcache.frame_hook`); the checks and the replay itself are in
:mod:`artcache.frame_replay`.
"""

from __future__ import annotations

import inspect
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import torch

from . import chain_capture, code_records, frame_resume, keys, pickler
from ._torch import code_codec, guard_tree
from ._torch import frame_capture as fc
from ._torch import settings as torch_settings
from .code_digest import code_digest
from .entries import EntryStore
from .entry import BlobRole, NewBlob, SummaryKey
from .errors import ArtcacheError, CorruptEntryError, NotPrecompilable, Uncacheable
from .frame_entry import (
    CONSTANTS,
    NO_GRAPH,
    FRAME_SCHEMA,
    FrameEntry,
    guard_text,
    output_structure,
    path_text,
)
from .frame_replay import Frame, Recorder, Replay
from .output_code import CompiledGraph

log = logging.getLogger(__name__)

# Graph factors a frame entry pins itself (its code digests, guards and argument specs):
# the others are recomputed from this process before the graph entry is used.
_GRAPH_FACTORS = frozenset({"graph", "inputs", "custom_ops", "static_inputs", "cudagraph_annotation",
                            "checkpoint_policies", "saved_tensors_hooks", "user_triton_kernels"})
# Graph factors holding user code that Dynamo does not inline (so no guard covers it), and
# the weights a frozen graph compiled in (Dynamo guards on no parameter's values, and a
# replay skips the backend's weights check): a frame with any of them is not precompiled.
_USER_CODE_FACTORS = ("custom_ops", "checkpoint_policies", "saved_tensors_hooks", "user_triton_kernels",
                      "frozen_weights")


class FrameTier:
    """What both ways into the precompile tier share: a frame's key, loading and checking
    a frame entry, recording one while Dynamo compiles the frame, and saving it.
    ``code_fn`` is the plain function whose frame is served; ``backend`` the
    :class:`~artcache.backend.ArtcacheBackend` graphs compile through.  ``reasons`` counts
    why calls went through Dynamo, ``refusals`` why the frame is not precompilable."""

    # Which entries can be served: those recorded on torch's wrapper frame (True), on the
    # function's own frame (False), or both (None: the wrapper calls either frame itself).
    wrapped_frames: bool | None = None
    # How a replayed step's code runs with the functions it calls traced (set by the way
    # into the tier that has a Dynamo context to trace them with, :mod:`artcache.frame_hook`);
    # None: chains with called frames are neither recorded nor served.
    _callees: Callable[[Callable[..., Any]], Callable[..., Any]] | None = None

    def __init__(self, code_fn: Callable[..., Any], cache: EntryStore, backend: Any) -> None:
        self._code_fn = code_fn
        self._globals: Mapping[str, Any] = getattr(code_fn, "__globals__", {})
        self.cache = cache
        self._backend = backend
        self._recorder = Recorder(backend)
        # The recorder notes compiles only inside a record (``_record``): a fallback after a
        # failed guard or an unreadable entry compiles through it without noting anything.
        self._recorder.recording = False
        self._replays: list[Replay] = []
        self._tried: set[str] = set()
        self._code_digest: str | None = None
        self.reasons: Counter[str] = Counter()
        self.refusals: dict[str, str] = {}  # why the frame is not precompilable, in full
        self.replayed = 0

    def _frame_key(self, f_locals: Mapping[str, Any],
                   extra: Mapping[str, Any] | None = None) -> tuple[keys.CacheKey, dict[str, Any]]:
        if self._code_digest is None:
            self._code_digest = code_digest(self._code_fn)
        tensors = [v for v in f_locals.values() if isinstance(v, torch.Tensor)]
        values = {
            "frame_code": f"{self._code_fn.__module__}.{self._code_fn.__qualname__} {self._code_digest}",
            "frame_args": [_arg_spec(name, value) for name, value in f_locals.items()],
            "environment": self._backend.fingerprint(tensors),
            "options": {"mode": self._backend.mode, "options": sorted(self._backend.options)},
            "precompile": FRAME_SCHEMA,
            **(extra or {}),
        }
        return keys.make_key(keys.factor(name, value) for name, value in values.items()), values

    # -- the hit ---------------------------------------------------------------------------
    def _load(self, key: str, frame: Frame) -> tuple[Replay | None, str]:
        loaded = self.cache.lookup(key)
        if loaded is None:
            return None, "absent"
        try:
            doc = pickler.loads(loaded.blob(BlobRole.OBJECT), {}, verify=True)
            chain = frame_resume.ChainEntry.from_plain(doc) if frame_resume.is_chain(doc) else None
            entry = chain.steps[0].frame if chain is not None else FrameEntry.from_plain(doc)
            if chain is None and entry.graph_key == NO_GRAPH:
                raise CorruptEntryError("a one-graph frame entry without a graph")
            if self.wrapped_frames is not None and entry.wrapped != self.wrapped_frames:
                self.cache.reject(key, "wrapped-frame")
                return None, "wrapped-frame"
            if chain is not None and chain.calls and self._callees is None:
                self.cache.reject(key, "called-frames")
                return None, "called-frames"
            replay = Replay(entry, _never_called, self._globals) if chain is None else frame_resume.ChainReplay(
                chain, self._code_fn, self._load_graph, self._backend, self.reasons, self._callees)
            failed, values = replay.check(frame)
            if failed is not None:
                log.info("artcache: precompiled frame %s: guard failed: %s", key[:16], failed)
                self.cache.reject(key, "guards")
                return None, "guards"
            for module, qualname, digest in (chain or entry).traced:
                if code_records.traced_now(module, qualname, digest) != digest:
                    self.cache.reject(key, "traced-code")
                    return None, "traced-code"
            if chain is not None and chain.called:
                called = self._called_replays(chain)
                if called is None:
                    self.cache.reject(key, "called-code")
                    return None, "called-code"
                replay.called = called  # type: ignore[attr-defined]
            compiled = self._load_graph(entry, [values[at] for at in replay.inputs])
            if compiled is None:
                self.cache.reject(key, "graph")
                return None, "graph"
        except ArtcacheError as exc:
            error: ArtcacheError = exc
        except Exception as exc:  # noqa: BLE001 - the rebuild boundary (artcache.entries docstring)
            # Evaluating stored guards and rebuilding the graph run torch code on stored
            # data; whatever it raises, the call goes on through Dynamo (strict mode raises).
            error = CorruptEntryError(f"frame entry {key[:16]} could not be used: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
        else:
            self.cache.record_hit(loaded, 0.0)
            replay.compiled = compiled
            return replay, ""
        self.cache.degrade("precompile", error)
        self.cache.reject(key, "unloadable")
        return None, "unloadable"

    def _called_replays(self, chain: frame_resume.ChainEntry) -> list[tuple[Any, frame_resume.ChainReplay]] | None:
        """Each called frame's function, found by its name, with its chain's replay; None
        when a function is not found or its code is not the recorded one."""
        out = []
        for called in chain.called:
            assert called.name is not None  # validated: every called chain is named
            fn = code_records.called_function(called.name)
            if fn is None:
                log.info("artcache: called frame %s is not the recorded one", ".".join(called.name[:2]))
                return None
            out.append((fn, frame_resume.ChainReplay(called, fn, self._load_graph, self._backend, self.reasons,
                                                     self._callees)))
        return out

    def _load_graph(self, entry: FrameEntry, inputs: list[Any]) -> Callable[..., Any] | None:
        if entry.graph_key == NO_GRAPH:
            return _never_called
        if not all(isinstance(t, torch.Tensor) or type(t) is int for t in inputs):
            return None
        found = self._lookup_graph(entry.graph_key, inputs)
        if found is None:
            return None
        loaded, graph = found
        ambient = self._backend.ambient_digests(entry.cpu_code, inputs)
        stored = loaded.manifest.factors
        if set(stored) != set(ambient) | (_GRAPH_FACTORS & set(stored)) or any(
                stored[name] != digest for name, digest in ambient.items()):
            log.info("artcache: graph entry %s was made under other settings", entry.graph_key[:16])
            self.cache.reject(entry.graph_key, "settings")
            return None
        with torch_settings.inductor_config_patch(torch_settings.mode_options(self._backend.mode, self._backend.options)):
            compiled = graph.load(inputs, cudagraphs=torch_settings.cudagraphs_enabled(), ints_checked=True)
        self.cache.record_hit(loaded, 0.0)
        return compiled  # type: ignore[no-any-return]

    def _lookup_graph(self, key: str, inputs: list[Any]) -> tuple[Any, CompiledGraph] | None:
        """The graph entry of ``key`` whose Inductor shape guards accept ``inputs``: a graph
        with symbolic shapes may have been saved under a guard variant of its key (for other
        sizes, ``keys.guard_variant``), looked up in order as the backend does."""
        for slot in range(keys.MAX_GUARD_VARIANTS):
            variant = keys.guard_variant(key, slot)
            loaded = self.cache.lookup(variant)
            if loaded is None:
                return None
            graph = CompiledGraph.from_loaded(loaded)
            if graph.guards_hold(inputs, int_symbols=True):
                return loaded, graph
            self.cache.reject(variant, "guards")
        return None

    # -- the record: Dynamo compiles the frame, artcache notes what it produced ----------
    def _record(self, key: keys.CacheKey, factors: dict[str, Any], f_locals: Mapping[str, Any],
                call: Callable[[], Any]) -> Any:
        """``call()`` (the frame through Dynamo) with the recorder on; then save the frame
        entry, or count why the frame is not precompilable."""
        self.cache.record_miss_details(key.key, {"factors": key.digests(), "values": factors})  # for explain
        state, hooks_empty = fc.global_state(), fc.global_hooks_empty()
        self._recorder.reset()
        self._recorder.recording = True
        try:
            with code_codec.bytecode_hook(self._recorder.on_bytecode):
                out = call()
            try:
                entry = self._capture(out, state, hooks_empty)
            except NotPrecompilable as exc:
                self.reasons[f"not-precompilable:{exc.reason}"] += 1
                self.refusals[exc.reason] = str(exc)
                self.cache.record_uncacheable(f"precompile-{exc.reason}")
                log.info("artcache: frame %s is not precompilable (%s)", self._code_fn.__qualname__, exc)
                return out
        finally:
            self._recorder.reset()
            self._recorder.recording = False
        self._save(key, entry, factors, f_locals)
        return out

    def _capture(self, out: Any, state: str, hooks_empty: bool) -> FrameEntry | frame_resume.ChainEntry:
        rec = self._recorder
        if rec.graphs and chain_capture.needs_code(rec):
            return chain_capture.capture(rec, self._code_fn, state, hooks_empty, self._chain_step,
                                         code_records.called_name if self._callees is not None else None)
        if len(rec.graphs) != 1:
            raise NotPrecompilable("graph-count" if rec.graphs else "no-graph", f"{len(rec.graphs)} graphs")
        graph = rec.graphs[0]
        if graph.trace is None:
            raise NotPrecompilable("trace", graph.problem)
        graph.trace.check()
        wrapped = fc.is_inline_wrapper(graph.trace.frame_code)
        if graph.trace.frame_code is not getattr(self._code_fn, "__code__", None) and not wrapped:
            raise NotPrecompilable("nested-frame", graph.trace.frame_code.co_name)
        if rec.guard_problem is not None:
            raise rec.guard_problem
        if rec.guard_calls != 1 or rec.guards is None:
            raise NotPrecompilable("guard-sets", f"{rec.guard_calls} guard sets")
        if not hooks_empty:
            raise NotPrecompilable("global-module-hooks")
        return self._step_entry(graph, rec.guards, state, out, wrapped)

    def _chain_step(self, graph: Any, guards: list[list[Any]], state: str, traced: list[Any]) -> FrameEntry:
        """A chain step's frame entry: of its graph (:meth:`_step_entry`), or, for a frame
        Dynamo converted without one, its guards, global state and the code it traced."""
        if graph is not None:
            return self._step_entry(graph, guards, state)
        return FrameEntry(guards, state, [], ["c", None], NO_GRAPH, False, code_records.traced_records(traced, [], guards),
                          False, [])

    def _step_entry(self, graph: Any, guards: list[list[Any]], state: str, out: Any = None,
                    wrapped: bool = False) -> FrameEntry:
        """The frame entry of one recorded graph with its frame's guards and global state
        (``out``: the frame's return value, built from the graph's outputs; None for a step
        of a chain, whose code builds it)."""
        if graph.lifted:
            raise NotPrecompilable("lifted-attributes", f"{graph.lifted} tensors")
        if len(graph.keys) != 1:
            raise NotPrecompilable("graph-uncacheable")
        graph_key, info = graph.keys[0]
        for name in _USER_CODE_FACTORS:
            if info.get(name):
                raise NotPrecompilable(f"graph-{name}")
        if graph.outputs is None or len(graph.inputs) != len(graph.trace.input_paths):
            raise NotPrecompilable("graph-not-called")
        structure = output_structure(out, graph.outputs, graph.inputs) if out is not None else ["c", None]
        records = code_records.traced_records(graph.trace.traced_code, [graph.trace.frame_code], guards)
        return FrameEntry(guards, state, graph.trace.input_paths, structure, graph_key, bool(info["cpu_code"]),
                          records, wrapped, fc.storage_groups(graph.inputs))

    def _save(self, key: keys.CacheKey, entry: FrameEntry | frame_resume.ChainEntry, values: dict[str, Any],
              f_locals: Mapping[str, Any]) -> None:
        try:
            data = pickler.dumps(entry.plain()).data
        except Uncacheable as exc:
            self.cache.record_uncacheable(f"precompile-{exc.reason}")
            return
        summary = {
            SummaryKey.TITLE: f"precompiled frame {self._code_fn.__module__}.{self._code_fn.__qualname__}",
            **(entry.summary() if isinstance(entry, frame_resume.ChainEntry) else {
                SummaryKey.INPUTS: [path_text(p) for p in entry.inputs],
                SummaryKey.GUARDS: [guard_text(g) for g in entry.guards] + ["global state " + entry.state],
                "graph_entry": entry.graph_key,
                "traced_code": [f"{m}.{q} {d[:16]}" for m, q, d in entry.traced]}),
            SummaryKey.FACTOR_VALUES: values,
        }
        tensors = [v for v in f_locals.values() if isinstance(v, torch.Tensor)]
        self.cache.save(key.key, [NewBlob(BlobRole.OBJECT, data)], factors=key.digests(),
                        environment=self._backend.fingerprint(tensors), summary=summary)


class Precompiled(FrameTier):
    """``fn`` (a function, bound method or module) called through the precompile tier;
    see the module docstring."""

    def __init__(self, fn: Callable[..., Any], cache: EntryStore, backend: Any) -> None:
        target = fn.forward if isinstance(fn, torch.nn.Module) else fn
        super().__init__(getattr(target, "__func__", target), cache, backend)
        self.fn = fn
        self._module = fn if isinstance(fn, torch.nn.Module) else None
        self._self = getattr(target, "__self__", None)
        self._signature = inspect.signature(self._code_fn, follow_wrapped=False)  # the code's own parameters
        code = getattr(self._code_fn, "__code__", None)
        self._cells = list(zip(code.co_freevars, self._code_fn.__closure__ or ())) if code is not None else []
        self._target = target
        self._dynamo: Callable[..., Any] | None = None
        self._dynamo_recording: Callable[..., Any] | None = None
        self._dynamo_module: Callable[..., Any] | None = None

    # -- the call --------------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._module is not None and _module_hooks(self._module):
            # Hooks run in the module's __call__: compile the module itself (no frame entry).
            self.reasons["module-hooks"] += 1
            if self._dynamo_module is None:
                self._dynamo_module = torch.compile(self._module, backend=self._backend, dynamic=False)
            return self._dynamo_module(*args, **kwargs)
        frame = self._bind(args, kwargs)
        fc.new_generation()  # a new call, to CUDA-graph trees (Dynamo's context is not entered)
        for replay in self._replays:
            ok, out = replay.try_call(frame)
            if ok:
                self.replayed += 1
                return out
        try:
            key, factors = self._frame_key(frame.direct)
        except Uncacheable as exc:
            self.reasons[f"key-{exc.reason}"] += 1
            return self._through_dynamo(*args, **kwargs)
        if key.key in self._tried:  # looked up once in this process: Dynamo's own cache serves it now
            return self._through_dynamo(*args, **kwargs)
        self._tried.add(key.key)
        replay, reason = self._load(key.key, frame)
        if replay is None:
            self.reasons[reason] += 1
            if reason != "absent":
                return self._through_dynamo(*args, **kwargs)
            return self._record(key, factors, frame.direct, lambda: self._recording_dynamo(*args, **kwargs))
        self._replays.append(replay)
        failed, values = replay.check(frame)
        if failed is not None:  # the global state changed since the check a moment ago
            return self._through_dynamo(*args, **kwargs)
        out = replay.run_frame(frame, values)
        # From the next call on, torch's C++ guards check what the Python checks just did.
        replay.set_tree(guard_tree.build(None, replay.f_globals, replay.nodes, values, replay.checks, None,
                                         replay.distinct_inputs))
        self.replayed += 1
        return out

    def _recording_dynamo(self, *args: Any, **kwargs: Any) -> Any:
        """The fallback of a record: as :meth:`_through_dynamo`, with the recorder's guard
        filter, which reads every guard Dynamo builds (torch then builds the frame's guards
        twice: once for the filter, once kept), so only a record pays for it.  Both share
        one backend, the recorder: Dynamo's cache entries of either serve the other."""
        if self._dynamo_recording is None:
            self._dynamo_recording = torch.compile(self._target, backend=self._recorder, dynamic=False,
                                                   options={"guard_filter_fn": self._recorder.guard_filter})
        return self._dynamo_recording(*args, **kwargs)

    def _through_dynamo(self, *args: Any, **kwargs: Any) -> Any:
        """The fallback: ``torch.compile`` with the recording artcache backend (built at the
        first fallback, so that a process served by replays never sets Dynamo up)."""
        if self._dynamo is None:
            self._dynamo = torch.compile(self._target, backend=self._recorder, dynamic=False)
        return self._dynamo(*args, **kwargs)

    def _bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> Frame:
        def direct() -> dict[str, Any]:
            bound = self._signature.bind(*((self._self,) if self._self is not None else ()), *args, **kwargs)
            bound.apply_defaults()
            found = dict(bound.arguments)
            for name, cell in self._cells:
                try:
                    found.setdefault(name, cell.cell_contents)
                except ValueError:  # an empty cell
                    pass
            return found

        # Bound only when read: a replay of torch's wrapper frame reads fn, args and kwargs.
        return Frame(None, {"fn": self._target, "args": args, "kwargs": dict(kwargs)}, direct)


def _never_called(*args: Any) -> Any:
    raise AssertionError("a frame entry's guards are checked before its graph is loaded")


def _module_hooks(module: torch.nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks or not fc.global_hooks_empty())


def _module_structure(module: torch.nn.Module) -> str:
    """A digest of a module's tree (names, classes, training flags): two modules of one
    class with different children get different frame keys, each its own entry."""
    tree = [[n, f"{type(m).__module__}.{type(m).__qualname__}", m.training] for n, m in module.named_modules()]
    return keys.factor("module", tree).digest[:16]


def _arg_spec(name: str, value: Any) -> str:
    if isinstance(value, torch.nn.Module):
        return f"{name}: module {type(value).__module__}.{type(value).__qualname__} {_module_structure(value)}"
    if isinstance(value, torch.Tensor):
        # Dimensions marked dynamic (torch._dynamo.mark_dynamic) are symbols in the graph:
        # their sizes are checked by the entry's shape guards, not keyed.
        dynamic = getattr(value, "_dynamo_dynamic_indices", None) or ()
        shape = tuple("*" if i in dynamic else n for i, n in enumerate(value.shape))
        return (f"{name}: tensor {str(value.dtype).removeprefix('torch.')} {shape} {value.device.type}"
                f" grad={value.requires_grad}")
    if type(value) in CONSTANTS:
        return f"{name}: {value!r}"
    return f"{name}: {type(value).__module__}.{type(value).__qualname__}"


