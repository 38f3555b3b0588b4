"""Frames with graph breaks or Python side effects in the precompile tier
(:mod:`artcache.frames`): a chain of frame steps that replays what Dynamo produced
without Dynamo tracing.  A frame of one graph with side effects (it mutates an object
that existed before the call, or builds an object with attributes, as a Hugging Face
model's ``ModelOutput``) is a chain of one step: its transformed code calls the graph and
then applies them.

Dynamo compiles a frame with a graph break into *transformed bytecode*: it calls the
first compiled graph (a global ``__compiled_fn_*``), runs the unsupported instruction in
plain Python, then calls a *resume function* (a global ``__resume_at_*``), new code that
Dynamo generated from the frame's code and compiles as a frame of its own, with its own
guards, graph and, after a further break, resume function.  A *chain entry* holds one
**step** per frame Dynamo converted during the recorded call, the frame's own first:

* the step's guards, global state, graph inputs and their aliasing, graph entry key and
  inlined code digests (a :class:`~artcache.frame_entry.FrameEntry`, as for a one-graph frame);
* Dynamo's transformed code of the frame, and for a resume step the resume function's own
  code, as plain fields (:mod:`artcache._torch.code_codec`: no pickle, no marshal);
* the **bindings** of the globals the transformed code names that Dynamo installed: its
  graph (``graph``), a later step's resume function (``resume``, by step index: a chain
  has no cycle), the factory Dynamo installs for a resume function with free variables
  (``closure``: called with the frame's cells, it returns the resume function), a module
  by name (``module``), the builtins' dict (``builtins``), a builtin by its name (``builtin``:
  the builtins module's own, whatever the user's globals hold), or a user global the step's
  guards check (``global``, read from the user's globals).  Any other global Dynamo
  added, a constant that is not plain data, a frame compiled twice or a frame that is
  none of the chain's (a function called at the break that Dynamo compiled as a frame of
  its own) makes the frame not precompilable.

A replay (:class:`ChainReplay`) checks the first step's guards on the call's locals, as
for a one-graph frame; then runs the transformed code as a function of the frame's
arguments (the user's closure, the user's globals), with each binding installed in those
globals under a name artcache makes (never a stored name).  The transformed code also
applies the frame's Python side effects, as Dynamo's own cache entry does (a one-graph
frame entry, which has no code, refuses them).  A resume binding is a
:class:`ResumeStep`: called with the resume function's arguments, it checks that step's
guards on them (after its first served call through a tree of torch's guards, as for the
first step) and runs its transformed code with its graph (loaded at its first call);
when a guard fails or its graph cannot be loaded, that resume function alone is compiled
by ``torch.compile`` through the artcache backend (Dynamo traces the rest of the frame;
what already ran stays as it is), so a failed guard anywhere is never a wrong program.
Code objects are rebuilt only from an entry that passed the store's trust checks.
"""

from __future__ import annotations

import builtins
import re
import sys
import types
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ._torch import code_codec, guard_tree
from .entry import SummaryKey
from .errors import CorruptEntryError, NotPrecompilable
from .frame_entry import FrameEntry, guard_text, path_text
from .frame_replay import Frame, GraphRecord, Recorder, Replay

CHAIN_SCHEMA = 1
_MAX_STEPS = 32
_BOUND = re.compile(r"__(compiled_fn|resume_at|import|builtins_dict)_[A-Za-z0-9_]{0,200}|___module_[A-Za-z0-9_]{0,200}")
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*){0,32}")
_CO_VARARGS, _CO_VARKEYWORDS = 0x04, 0x08


@dataclass(frozen=True)
class Step:
    """One frame of a chain: ``code`` the resume function's code (None for the frame's own
    code), ``out`` Dynamo's transformed code of the frame, ``bindings`` ``[name, kind, arg]``."""

    code: dict[str, Any] | None
    out: dict[str, Any]
    bindings: list[list[Any]]
    frame: FrameEntry

    def plain(self) -> dict[str, Any]:
        return {"code": self.code, "out": self.out, "bindings": self.bindings, "frame": self.frame.plain()}


@dataclass(frozen=True)
class ChainEntry:
    """A frame with graph breaks, as plain data (see the module docstring)."""

    steps: list[Step]

    def plain(self) -> dict[str, Any]:
        return {"chain": CHAIN_SCHEMA, "steps": [s.plain() for s in self.steps]}

    @property
    def traced(self) -> list[list[str]]:
        return [t for s in self.steps for t in s.frame.traced]

    def summary(self) -> dict[str, Any]:
        """What ``artcache inspect`` shows: the first step's inputs and guards, then per
        step its graph entry, guards and bindings."""
        root = self.steps[0].frame
        return {
            SummaryKey.INPUTS: [path_text(p) for p in root.inputs],
            SummaryKey.GUARDS: [guard_text(g) for g in root.guards] + ["global state " + root.state],
            "graph_entry": root.graph_key,
            "resume_steps": [{"code": s.code["qualname"] if s.code else "", "graph_entry": s.frame.graph_key,
                              "guards": [guard_text(g) for g in s.frame.guards],
                              "bindings": [f"{b[1]} {b[2]}" for b in s.bindings]} for s in self.steps[1:]],
            "traced_code": [f"{m}.{q} {d[:16]}" for m, q, d in self.traced],
        }

    @classmethod
    def from_plain(cls, doc: Any) -> ChainEntry:
        """Validate a decoded document; CorruptEntryError on anything else.  The code
        documents are checked field by field here and built only by :class:`ChainReplay`."""
        if type(doc) is not dict or set(doc) != {"chain", "steps"} or doc["chain"] != CHAIN_SCHEMA:
            raise CorruptEntryError("bad chain entry document")
        raw = doc["steps"]
        if type(raw) is not list or not 0 < len(raw) <= _MAX_STEPS:
            raise CorruptEntryError("bad chain entry steps")
        steps = []
        for index, step in enumerate(raw):
            if type(step) is not dict or set(step) != {"code", "out", "bindings", "frame"}:
                raise CorruptEntryError("bad chain step")
            if (step["code"] is None) != (index == 0):
                raise CorruptEntryError("a chain's first step is the frame's own code, every other a resume function")
            if step["code"] is not None:
                code_codec.check(step["code"])
            code_codec.check(step["out"])
            _check_bindings(step["bindings"], index, len(raw))
            frame = FrameEntry.from_plain(step["frame"])
            if frame.wrapped:
                raise CorruptEntryError("a chain step on torch's wrapper frame")
            if any(b[1] == "global" and not _guarded_global(b[0], frame.guards) for b in step["bindings"]):
                raise CorruptEntryError("a chain step reads a global its guards do not check")
            steps.append(Step(step["code"], step["out"], step["bindings"], frame))
        return cls(steps)


def _check_bindings(bindings: Any, index: int, count: int) -> None:
    if type(bindings) is not list or len(bindings) > 256:
        raise CorruptEntryError("bad chain bindings")
    names = set()
    graphs = 0
    for binding in bindings:
        ok = type(binding) is list and len(binding) == 3 and type(binding[0]) is str
        kind, arg = (binding[1], binding[2]) if ok else (None, None)
        if kind == "global":  # a user global, checked by the step's guards (_guarded_global)
            ok = ok and _is_user_global(binding[0]) and arg == 0 and type(arg) is int
        elif kind == "builtin":  # a name of the builtins module
            ok = ok and _is_user_global(binding[0]) and hasattr(builtins, binding[0]) and arg == 0 and type(arg) is int
        elif kind == "module":  # under Dynamo's alias, or the name the user's module gave it
            ok = ok and (_BOUND.fullmatch(binding[0]) or _is_user_global(binding[0])) and (
                type(arg) is str and bool(_MODULE.fullmatch(arg)))
        elif not (ok and _BOUND.fullmatch(binding[0])):
            ok = False
        elif kind == "graph":
            ok = ok and arg == 0 and type(arg) is int
            graphs += 1
        elif kind in ("resume", "closure"):
            ok = ok and type(arg) is int and index < arg < count
        elif kind == "builtins":
            ok = ok and arg == 0 and type(arg) is int
        else:
            ok = False
        if not ok or binding[0] in names:
            raise CorruptEntryError("bad chain binding")
        names.add(binding[0])
    if graphs != 1:
        raise CorruptEntryError("a chain step calls exactly one graph")


def is_chain(doc: Any) -> bool:
    return type(doc) is dict and "chain" in doc


# -- the record ----------------------------------------------------------------------------
def needs_code(rec: Recorder) -> bool:
    """Whether the recorded call is a chain entry, not a one-graph frame entry: it compiled
    more than one graph, or its graph ended at a graph break, or its frame has Python side
    effects (a chain of one step, whose transformed code applies them after the graph)."""
    graph = rec.graphs[0] if len(rec.graphs) == 1 else None
    trace = graph.trace if graph else None
    return len(rec.graphs) > 1 or bool(trace and (trace.graph_break or trace.side_effects))


def capture(rec: Recorder, code_fn: Any, state: str, hooks_empty: bool,
            step_entry: Callable[[GraphRecord, list[list[Any]], str], FrameEntry]) -> ChainEntry:
    """The chain entry of a recorded call whose frame has graph breaks or side effects
    (:func:`needs_code`); NotPrecompilable
    with a reason when any step cannot be replayed.  ``step_entry`` makes a step's frame
    entry from its graph, guards and global state (the checks of a one-graph frame)."""
    if not code_codec.supported():
        raise NotPrecompilable("bytecode-python", "code objects are encoded for Python 3.11 and 3.12 only")
    if not hooks_empty:
        raise NotPrecompilable("global-module-hooks")
    # Dynamo converts one frame at a time: its graph is compiled, its code transformed (the
    # bytecode hook), then its guards are built (the guard filter).
    groups: list[tuple[types.CodeType, types.CodeType, list[GraphRecord], list[tuple[Any, str]]]] = []
    graphs: list[GraphRecord] = []
    for event in rec.events:
        if event[0] == "graph":
            graphs.append(event[1])
        elif event[0] == "code":
            groups.append((event[1], event[2], graphs, []))
            graphs = []
        elif groups and not graphs:
            groups[-1][3].append((event[1], event[2]))
        else:
            raise NotPrecompilable("bytecode-hook", "guards outside a converted frame")
    if graphs or not groups:
        raise NotPrecompilable("bytecode-hook", "a graph outside a converted frame")
    if len(groups) > _MAX_STEPS:  # a longer chain would be refused when read back
        raise NotPrecompilable("chain-length", f"{len(groups)} converted frames (at most {_MAX_STEPS})")
    codes = [group[0] for group in groups]
    if codes[0] is not getattr(code_fn, "__code__", None):
        raise NotPrecompilable("nested-frame", codes[0].co_name)
    if len({id(c) for c in codes}) != len(codes):
        raise NotPrecompilable("recompiled", "a frame was converted twice in one call")
    steps = []
    for index, (code, out, step_graphs, step_guards) in enumerate(groups):
        if len(step_guards) != 1:
            raise NotPrecompilable("guard-sets", f"{len(step_guards)} guard sets in one frame")
        guards, frame_state = step_guards[0]
        if isinstance(guards, NotPrecompilable):
            raise guards
        if index == 0 and frame_state != state:
            raise NotPrecompilable("global-state", "the frame's guards saw another global state than its call")
        if len(step_graphs) != 1:
            raise NotPrecompilable("resume-graphs", f"{len(step_graphs)} graphs in a frame of the chain")
        graph = step_graphs[0]
        trace = graph.trace
        if trace is None:
            raise NotPrecompilable("trace", graph.problem)
        if trace.frame_code is not code:
            raise NotPrecompilable("nested-frame", trace.frame_code.co_name)
        if trace.symbolic:
            raise NotPrecompilable("dynamic-shapes")
        if trace.input_problem:
            raise NotPrecompilable("graph-input", trace.input_problem)
        bindings = _bindings(code, out, code_fn.__globals__, codes, index, graph, guards)
        steps.append(Step(None if index == 0 else code_codec.encode(code), code_codec.encode(out), bindings,
                          step_entry(graph, guards, frame_state)))
    reached = {b[2] for s in steps for b in s.bindings if b[1] in ("resume", "closure")}
    if reached != set(range(1, len(steps))):
        raise NotPrecompilable("other-frames", "a frame converted in the call is not a resume function of the chain")
    return ChainEntry(steps)


def _bindings(code: types.CodeType, out: types.CodeType, f_globals: Mapping[str, Any], codes: list[types.CodeType],
              index: int, graph: GraphRecord, guards: list[list[Any]]) -> list[list[Any]]:
    own = set(code.co_names)
    bindings: list[list[Any]] = []
    if code_codec.stored_globals(out) - own:
        raise NotPrecompilable("bytecode-global", "stores a global Dynamo added")
    for name in sorted(code_codec.global_names(out) - own):
        value = f_globals.get(name)
        if name not in f_globals and _is_user_global(name) and hasattr(builtins, name):
            # A builtin the transformed code loads as a global (Dynamo's ``type(x)``): bound
            # to the builtins module's own, whatever the user's globals hold at replay.
            bindings.append([name, "builtin", 0])
            continue
        if (name in f_globals and _is_user_global(name) and isinstance(value, types.ModuleType)
                and sys.modules.get(value.__name__) is value and _MODULE.fullmatch(value.__name__)):
            # A module the user's module imported, loaded by Dynamo's code under the user's
            # name for it (``create_load_python_module``): bound to the module by its name.
            bindings.append([name, "module", value.__name__])
            continue
        if not _BOUND.fullmatch(name):
            # A global of the user's module that a function the frame calls reads (a class
            # a decorated ``forward`` builds its output with): the transformed code loads
            # it from the same globals, and the step's guards check it is the same object.
            if name in f_globals and _is_user_global(name) and _guarded_global(name, guards):
                bindings.append([name, "global", 0])
                continue
            raise NotPrecompilable("bytecode-global", name)
        if name.startswith("__compiled_fn") and code_codec.unwrapped(value) is graph.callable:
            bindings.append([name, "graph", 0])
        elif (name.startswith("__resume_at_") and isinstance(value, types.FunctionType)
              and any(value.__code__ is c for c in codes[index + 1:])):
            bindings.append([name, "resume", next(i for i, c in enumerate(codes) if c is value.__code__)])
        elif (name.startswith(("__import_", "___module_")) and isinstance(value, types.ModuleType)
              and sys.modules.get(value.__name__) is value and _MODULE.fullmatch(value.__name__)):
            bindings.append([name, "module", value.__name__])
        elif name.startswith("__builtins_dict__") and value is vars(builtins):
            bindings.append([name, "builtins", 0])
        elif name.startswith("__resume_at_") and any(_factory_code(value) is c for c in codes[index + 1:]):
            # A resume function with free variables: the transformed code calls Dynamo's
            # factory with the frame's cells, then the function it returns.
            made = _factory_code(value)
            bindings.append([name, "closure", next(i for i, c in enumerate(codes) if c is made)])
        elif name.startswith("__resume_at_"):
            raise NotPrecompilable("resume-not-compiled", name)
        else:
            raise NotPrecompilable("bytecode-global", name)
    if sum(1 for b in bindings if b[1] == "graph") != 1:
        raise NotPrecompilable("resume-graphs", "the frame's code does not call its graph once")
    return bindings


def _is_user_global(name: Any) -> bool:
    return type(name) is str and name.isidentifier() and not name.startswith("__") and len(name) <= 256


def _guarded_global(name: str, guards: Any) -> bool:
    """Whether ``guards`` check the identity or type of the frame's global ``name``."""
    return any(type(g) is list and len(g) == 3 and g[0] in ("is", "type") and g[1] == [["G", name]] for g in guards)


def _factory_code(value: Any) -> types.CodeType | None:
    """The resume code of Dynamo's factory for a resume function with free variables
    (``OutputGraph.install_resume_function_global``'s ``_make_fn``, torch 2.13), else None."""
    if not isinstance(value, types.FunctionType) or value.__code__.co_name != "_make_fn":
        return None
    found = [c.cell_contents for c in value.__closure__ or () if isinstance(c.cell_contents, types.CodeType)]
    return found[0] if len(found) == 1 else None


# -- the replay ----------------------------------------------------------------------------
def _signature(code: types.CodeType) -> tuple[Any, ...]:
    count = code.co_argcount + code.co_kwonlyargcount + bool(code.co_flags & _CO_VARARGS) + bool(
        code.co_flags & _CO_VARKEYWORDS)
    return (code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags & 0x0C,
            code.co_varnames[:count], code.co_freevars)


def _call_args(code: types.CodeType, f_locals: Mapping[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    """The arguments that call ``code`` with the parameters in ``f_locals``."""
    names = code.co_varnames
    args = [f_locals[n] for n in names[:code.co_argcount]]
    at = code.co_argcount + code.co_kwonlyargcount
    kwargs = {n: f_locals[n] for n in names[code.co_argcount:at]}
    if code.co_flags & _CO_VARARGS:
        args.extend(f_locals[names[at]])
        at += 1
    if code.co_flags & _CO_VARKEYWORDS:
        kwargs.update(f_locals[names[at]])
    return args, kwargs


class ChainReplay(Replay):
    """A loaded chain entry: the first step's checks (those of :class:`Replay`, over the
    frame's locals), the steps' code and the resume steps, installed at the first run."""

    def __init__(self, entry: ChainEntry, code_fn: Any,
                 load_graph: Callable[[FrameEntry, list[Any]], Callable[..., Any] | None], backend: Any,
                 reasons: Counter[str]) -> None:
        super().__init__(entry.steps[0].frame, _not_loaded, code_fn.__globals__)
        self.chain = entry
        self._fn = code_fn
        self._load_graph = load_graph
        self._backend = backend
        self._reasons = reasons
        # Built here, before any guard is evaluated: a malformed code document is refused.
        self._outs = [code_codec.decode(s.out) for s in entry.steps]
        self._codes = [code_fn.__code__] + [code_codec.decode(s.code) for s in entry.steps[1:]]  # type: ignore[arg-type]
        for step, code, out in zip(entry.steps, self._codes, self._outs):
            bound = {b[0] for b in step.bindings}
            names = code_codec.global_names(out)
            if _signature(code) != _signature(out) or not bound <= names or names - bound - set(code.co_names):
                raise CorruptEntryError("a chain step's code does not match its frame")
            # A resume function with free variables is reached only through its factory.
            if any(kind in ("resume", "closure") and (kind == "closure") != bool(self._codes[arg].co_freevars)
                   for _, kind, arg in step.bindings):
                raise CorruptEntryError("a chain step calls a resume function without its closure")
        self._functions: list[Callable[..., Any]] = []  # per step, made at the first run
        self.steps = [self] + [Replay(s.frame, _not_loaded, self.f_globals) for s in entry.steps[1:]]
        self._graphs: list[Callable[..., Any] | None] = [None] * len(entry.steps)
        self._fallbacks: dict[int, Callable[..., Any]] = {}
        self._unloadable: set[int] = set()

    def _install(self) -> None:
        """Bind each step's globals in the frame's globals under names made here, and make
        each step's function."""
        prefix = f"__artcache_chain_{id(self):x}"
        for index, (step, out) in enumerate(zip(self.chain.steps, self._outs)):
            names = {}
            for number, (name, kind, arg) in enumerate(step.bindings):
                if kind == "global":  # read from the user's globals, as Dynamo's code does
                    continue
                names[name] = f"{prefix}_{index}_{number}"
                value: Any = (self._graph_call(index) if kind == "graph" else ResumeStep(self, arg)
                              if kind == "resume" else _Factory(self, arg) if kind == "closure" else vars(builtins)
                              if kind == "builtins" else getattr(builtins, name)
                              if kind == "builtin" else sys.modules.get(arg))
                if value is None:
                    raise CorruptEntryError(f"a chain step names module {arg}, not imported here")
                self.f_globals[names[name]] = value  # type: ignore[index]
            closure = self._fn.__closure__ if index == 0 else None
            self._outs[index] = code_codec.renamed(out, names)
            # A resume function with free variables is made at each call, with that call's cells.
            self._functions.append(_no_function if index and out.co_freevars else types.FunctionType(
                self._outs[index], self.f_globals, self._codes[index].co_name, None, closure))

    def _graph_call(self, index: int) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            graph = self._graphs[index]
            assert graph is not None  # a step's function runs only once its graph is loaded
            return graph(*args)

        return call

    def run_frame(self, frame: Frame, values: list[Any]) -> Any:
        if not self._functions:
            self._install()
        self._graphs[0] = self.compiled
        args, kwargs = _call_args(self._codes[0], frame.direct)
        return self._functions[0](*args, **kwargs)

    def run_checked(self, frame: Frame) -> tuple[bool, Any]:
        # The transformed code reads the graph's inputs itself: they are resolved here only
        # to check their aliasing, which the guard tree checks when it can.
        if not self.tree_aliasing and self.inputs_if_unaliased(frame) is None:
            return False, None
        return True, self.run_frame(frame, [])

    def try_call(self, frame: Frame) -> tuple[bool, Any]:
        if self.tree is not None:
            if not self.tree.root.check(frame.direct):
                return False, None
            return self.run_checked(frame)
        failed, values = self.check(frame)
        return (False, None) if failed is not None else (True, self.run_frame(frame, values))

    def resume(self, index: int, args: tuple[Any, ...], closure: tuple[Any, ...] | None = None) -> Any:
        """A resume step called with its arguments (and the cells of its free variables):
        its checks, then its graph, else Dynamo compiles this resume function alone."""
        code = self._codes[index]
        replay = self.steps[index]
        f_locals = dict(zip(code.co_varnames[:code.co_argcount], args))
        for name, cell in zip(code.co_freevars, closure or ()):
            try:
                f_locals[name] = cell.cell_contents  # the frame's locals hold free variables by name
            except ValueError:  # an empty cell
                pass
        frame = Frame(f_locals, {})
        if replay.tree is not None:  # torch's guards, built at the step's first served call
            held = replay.tree.root.check(f_locals) and (
                replay.tree_aliasing or replay.inputs_if_unaliased(frame) is not None)
            failed: str | None = None if held else "guards"
        else:
            failed, values = replay.check(frame)
            if failed is None and self._graphs[index] is None and index not in self._unloadable:
                graph = self._load_graph(self.chain.steps[index].frame, [values[at] for at in replay.inputs])
                if graph is None:
                    self._unloadable.add(index)
                self._graphs[index] = graph
            if failed is None and self._graphs[index] is not None:
                replay.set_tree(guard_tree.build(None, self.f_globals, replay.nodes, values, replay.checks, None,
                                                 replay.distinct_inputs))
        if failed is None and self._graphs[index] is not None:
            if closure is None:
                return self._functions[index](*args)
            return types.FunctionType(self._outs[index], self.f_globals, code.co_name, None, closure)(*args)
        self._reasons["resume-guards" if failed is not None else "resume-graph"] += 1
        backend = self._backend

        def compile_graph(gm: Any, example_inputs: Any) -> Any:  # a plain function: no precompile tier
            return backend(gm, example_inputs)

        if closure is not None:  # a function of this call's cells (Dynamo's cache is per code object)
            fn = types.FunctionType(code, self.f_globals, code.co_name, None, closure)
            return torch.compile(fn, backend=compile_graph, dynamic=False)(*args)
        if index not in self._fallbacks:
            fn = types.FunctionType(code, self.f_globals, code.co_name)
            self._fallbacks[index] = torch.compile(fn, backend=compile_graph, dynamic=False)
        return self._fallbacks[index](*args)


class ResumeStep:
    """What a chain's transformed code calls in place of Dynamo's resume function."""

    def __init__(self, chain: ChainReplay, index: int) -> None:
        self._chain = chain
        self._index = index

    def __call__(self, *args: Any) -> Any:
        return self._chain.resume(self._index, args)


class _Factory:
    """What a chain's transformed code calls in place of Dynamo's factory of a resume
    function with free variables: the resume step, bound to the frame's cells."""

    def __init__(self, chain: ChainReplay, index: int) -> None:
        self._chain = chain
        self._index = index

    def __call__(self, closure: tuple[Any, ...]) -> Callable[..., Any]:
        if type(closure) is not tuple or len(closure) != len(self._chain._codes[self._index].co_freevars):
            raise TypeError("a resume function's closure does not match its code")
        return lambda *args: self._chain.resume(self._index, args, closure)


def _no_function(*args: Any) -> Any:
    raise AssertionError("a resume function with free variables is called with its cells")


def _not_loaded(*args: Any) -> Any:
    raise AssertionError("a chain step's graph runs only after it was loaded")
