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
  the builtins module's own, whatever the user's globals hold), a user global the step's
  guards check (``global``, read from the user's globals), or a resume function Dynamo
  left to run as it is (``skipped``: it found no graph in it; its code is in the chain's
  ``skipped`` list).  Any other global Dynamo added, a constant that is not plain data or
  a frame compiled twice makes the frame not precompilable.

A step Dynamo converted without a graph (a decorator's wrapper that calls the function it
wraps at a break) has no graph binding (``frame_entry.NO_GRAPH``).  A function called from
a step's code that Dynamo compiled as a frame of its own is a *called frame*: a chain of
its own in the entry's ``called`` list, named by its function
(:mod:`artcache.chain_capture` records them, :mod:`artcache.code_records` names them).
Such a chain is served only through ``torch.compile`` (:mod:`artcache.frame_hook`): its
steps' code runs with the functions it calls seen by Dynamo's callback
(``precompile_hook.callees_traced``), as Dynamo runs its own transformed code, so that
each called function reaches the precompile entry artcache installs on its code.

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
from dataclasses import dataclass, field
from typing import Any

import torch

from ._torch import code_codec, guard_tree, precompile_hook
from ._torch import frame_capture as fc
from .entry import SummaryKey
from .errors import CorruptEntryError
from .frame_entry import NO_GRAPH, FrameEntry, guard_text, path_text
from .frame_replay import Frame, Replay

CHAIN_SCHEMA = 2
_MAX_STEPS = 32
_MAX_CALLED = 64
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
    """A frame with graph breaks, as plain data (see the module docstring).  ``skipped``:
    the code of resume functions Dynamo left to run as they are (it found no graph in
    them), by index of a ``skipped`` binding.  ``called``: the chains of functions the
    frame's code calls that Dynamo compiled as frames of their own, each named
    ``[module, qualname, pin, code shape]`` (``name``; None for the top frame's chain).
    A chain with either runs its code with the functions it calls traced (only the
    ``torch.compile`` way into the tier, :mod:`artcache.frame_hook`, serves it)."""

    steps: list[Step]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    called: list[ChainEntry] = field(default_factory=list)
    name: list[str] | None = None

    def plain(self) -> dict[str, Any]:
        return {"chain": CHAIN_SCHEMA, "steps": [s.plain() for s in self.steps], "skipped": self.skipped,
                "called": [c.plain() for c in self.called], "name": self.name}

    @property
    def calls(self) -> bool:
        """Whether replaying this chain needs the functions its code calls traced (so do
        its called frames' chains)."""
        return bool(self.skipped or self.called)

    @property
    def traced(self) -> list[list[str]]:
        return [t for s in self.steps for t in s.frame.traced] + [t for c in self.called for t in c.traced]

    def summary(self) -> dict[str, Any]:
        """What ``artcache inspect`` shows: the first step's inputs and guards, then per
        step its graph entry, guards and bindings, then the called frames."""
        root = self.steps[0].frame
        return {
            SummaryKey.INPUTS: [path_text(p) for p in root.inputs],
            SummaryKey.GUARDS: [guard_text(g) for g in root.guards] + ["global state " + root.state],
            "graph_entry": root.graph_key,
            "resume_steps": [{"code": s.code["qualname"] if s.code else "", "graph_entry": s.frame.graph_key,
                              "guards": [guard_text(g) for g in s.frame.guards],
                              "bindings": [f"{b[1]} {b[2]}" for b in s.bindings]} for s in self.steps[1:]],
            "skipped_resumes": [c["qualname"] for c in self.skipped],
            "called_frames": [f"{'.'.join(c.name[:2]) if c.name else ''}: {len(c.steps)} steps, "
                              f"{sum(len(s.frame.guards) for s in c.steps)} guards, graphs "
                              f"{[s.frame.graph_key[:16] for s in c.steps if s.frame.graph_key]}" for c in self.called],
            "traced_code": [f"{m}.{q} {d[:16]}" for m, q, d in self.traced],
        }

    @classmethod
    def from_plain(cls, doc: Any, top: bool = True) -> ChainEntry:
        """Validate a decoded document; CorruptEntryError on anything else.  The code
        documents are checked field by field here and built only by :class:`ChainReplay`.
        A first-version document (steps only) still reads."""
        if type(doc) is not dict or doc.get("chain") not in (1, CHAIN_SCHEMA):
            raise CorruptEntryError("bad chain entry document")
        fields = {"chain", "steps"} if doc["chain"] == 1 else {"chain", "steps", "skipped", "called", "name"}
        if set(doc) != fields:
            raise CorruptEntryError("bad chain entry document")
        skipped, called, name = doc.get("skipped", []), doc.get("called", []), doc.get("name")
        if type(skipped) is not list or len(skipped) > _MAX_STEPS or type(called) is not list or (
                len(called) > _MAX_CALLED or (called and not top)):
            raise CorruptEntryError("bad chain entry document")
        if (name is None) != top or (name is not None and not (
                type(name) is list and len(name) == 4 and all(type(v) is str and 0 < len(v) <= 512 for v in name)
                and bool(_MODULE.fullmatch(name[0])))):
            raise CorruptEntryError("bad called frame name")
        for code in skipped:
            code_codec.check(code)
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
            frame = FrameEntry.from_plain(step["frame"])
            _check_bindings(step["bindings"], index, len(raw), len(skipped), frame.graph_key != NO_GRAPH)
            if frame.wrapped:
                raise CorruptEntryError("a chain step on torch's wrapper frame")
            if any(b[1] == "global" and not _guarded_global(b[0], frame.guards) for b in step["bindings"]):
                raise CorruptEntryError("a chain step reads a global its guards do not check")
            steps.append(Step(step["code"], step["out"], step["bindings"], frame))
        return cls(steps, skipped, [cls.from_plain(c, top=False) for c in called], name)


def _check_bindings(bindings: Any, index: int, count: int, skipped: int, has_graph: bool) -> None:
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
        elif kind == "skipped":
            ok = ok and type(arg) is int and 0 <= arg < skipped
        elif kind == "builtins":
            ok = ok and arg == 0 and type(arg) is int
        else:
            ok = False
        if not ok or binding[0] in names:
            raise CorruptEntryError("bad chain binding")
        names.add(binding[0])
    if graphs != has_graph:
        raise CorruptEntryError("a chain step calls its graph once, or none when it has none")


def is_chain(doc: Any) -> bool:
    return type(doc) is dict and "chain" in doc


def _is_user_global(name: Any) -> bool:
    return type(name) is str and name.isidentifier() and not name.startswith("__") and len(name) <= 256


def _guarded_global(name: str, guards: Any) -> bool:
    """Whether ``guards`` check the identity or type of the frame's global ``name``."""
    return any(type(g) is list and len(g) == 3 and g[0] in ("is", "type") and g[1] == [["G", name]] for g in guards)


# -- the replay ----------------------------------------------------------------------------
def _signature(code: types.CodeType) -> tuple[Any, ...]:
    count = code.co_argcount + code.co_kwonlyargcount + bool(code.co_flags & _CO_VARARGS) + bool(
        code.co_flags & _CO_VARKEYWORDS)
    return (code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags & 0x0C,
            code.co_varnames[:count], code.co_freevars)


def call_args(code: types.CodeType, f_locals: Mapping[str, Any]) -> tuple[list[Any], dict[str, Any]]:
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
                 reasons: Counter[str], callees: Callable[[Callable[..., Any]], Callable[..., Any]] | None = None) -> None:
        super().__init__(entry.steps[0].frame, _not_loaded, code_fn.__globals__)
        self.chain = entry
        self._fn = code_fn
        # How a step's code runs with the functions it calls traced (precompile_hook.callees_traced),
        # for a chain that needs it (ChainEntry.calls); None: they run as the step's code runs.
        self._callees = callees if entry.calls or entry.name is not None else None
        if entry.calls and callees is None:
            raise CorruptEntryError("a chain that calls compiled frames is served through torch.compile only")
        self._skipped = [code_codec.decode(c) for c in entry.skipped]
        self.called: list[tuple[Any, ChainReplay]] = []  # (function, its chain): set by the tier
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
        each step's function.  With the callees traced, what the step's code calls that is
        artcache's (graphs, resume steps) is marked for Dynamo never to trace, and a skipped
        resume function runs as Dynamo left it: its frame not traced, its callees traced."""
        prefix = f"__artcache_chain_{id(self):x}"
        mark = fc.disable if self._callees is not None else (lambda f: f)
        skipped: list[Any] = []
        for code in self._skipped:
            precompile_hook.skip(code)
            # One with free variables is reached through a factory, called with the cells.
            skipped.append(mark(_SkippedFactory(code, self.f_globals)) if code.co_freevars
                           else types.FunctionType(code, self.f_globals, code.co_name))
        for index, (step, out) in enumerate(zip(self.chain.steps, self._outs)):
            names = {}
            for number, (name, kind, arg) in enumerate(step.bindings):
                if kind == "global":  # read from the user's globals, as Dynamo's code does
                    continue
                names[name] = f"{prefix}_{index}_{number}"
                value: Any = (mark(self._graph_call(index)) if kind == "graph" else mark(ResumeStep(self, arg))
                              if kind == "resume" else mark(_Factory(self, arg)) if kind == "closure"
                              else skipped[arg] if kind == "skipped" else vars(builtins)
                              if kind == "builtins" else getattr(builtins, name)
                              if kind == "builtin" else sys.modules.get(arg))
                if value is None:
                    raise CorruptEntryError(f"a chain step names module {arg}, not imported here")
                self.f_globals[names[name]] = value  # type: ignore[index]
            closure = self._fn.__closure__ if index == 0 else None
            self._outs[index] = code_codec.renamed(out, names)
            if self._callees is not None:  # the step's own frame is not traced, its callees are
                precompile_hook.skip(self._outs[index])
            # A resume function with free variables is made at each call, with that call's cells.
            self._functions.append(_no_function if index and out.co_freevars else self._runner(types.FunctionType(
                self._outs[index], self.f_globals, self._codes[index].co_name, None, closure)))

    def _runner(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        return fn if self._callees is None else self._callees(fn)

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
        args, kwargs = call_args(self._codes[0], frame.direct)
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
            return self._runner(types.FunctionType(self._outs[index], self.f_globals, code.co_name, None, closure))(*args)
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


class _SkippedFactory:
    """In place of Dynamo's factory of a resume function with free variables that Dynamo
    left to run as it is: the function of its code with the frame's cells."""

    def __init__(self, code: types.CodeType, f_globals: Any) -> None:
        self._code = code
        self._globals = f_globals

    def __call__(self, closure: tuple[Any, ...]) -> Callable[..., Any]:
        if type(closure) is not tuple or len(closure) != len(self._code.co_freevars):
            raise TypeError("a resume function's closure does not match its code")
        return types.FunctionType(self._code, self._globals, self._code.co_name, None, closure)


def _no_function(*args: Any) -> Any:
    raise AssertionError("a resume function with free variables is called with its cells")


def _not_loaded(*args: Any) -> Any:
    raise AssertionError("a chain step's graph runs only after it was loaded")
