"""The record side of chain entries (:mod:`artcache.frame_resume`): from what the recorder
saw while Dynamo converted a call's frames, the chain of the top frame, its resume steps,
the resume functions Dynamo left to run as they are, and the frames of functions the call
reached that Dynamo compiled on their own (*called frames*: a decorator's wrapper calls
the function it wraps at a graph break, or a frame goes on in plain Python after a graph
break Dynamo cannot resume from, and every function it then calls is a frame of its own).

Dynamo converts one frame at a time: its graph is compiled (if it found one), its code
transformed (the bytecode hook), then its guards are built (the guard filter).  Each
converted frame is therefore one group of events; a group is a resume step of the chain of
the group whose transformed code names its resume function, else the first step of a chain
of its own, a called frame, named by the function that holds its code.
"""

from __future__ import annotations

import builtins
import sys
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import frame_resume
from ._torch import code_codec
from .errors import NotPrecompilable
from .frame_entry import FrameEntry
from .frame_replay import GraphRecord, Recorder
from .frame_resume import _BOUND, _MODULE, ChainEntry, Step, _guarded_global, _is_user_global

# All frames one recorded call may convert (the top frame's chain and every called frame's).
_MAX_FRAMES = 128

# step_entry(graph or None, guards, global state, traced code of a frame without a graph)
StepEntry = Callable[[GraphRecord | None, list[list[Any]], str, list[types.CodeType]], FrameEntry]


@dataclass
class _Group:
    """One frame Dynamo converted during the recorded call."""

    code: types.CodeType
    out: types.CodeType
    graphs: list[GraphRecord]
    guards: list[tuple[Any, str]]
    traced: list[types.CodeType] | None  # read at the bytecode hook (None: unreadable)
    f_globals: Mapping[str, Any] | None


def needs_code(rec: Recorder) -> bool:
    """Whether the recorded call is a chain entry, not a one-graph frame entry: it compiled
    more than one graph, or its graph ended at a graph break, or its frame has Python side
    effects (a chain of one step, whose transformed code applies them after the graph)."""
    graph = rec.graphs[0] if len(rec.graphs) == 1 else None
    trace = graph.trace if graph else None
    return len(rec.graphs) > 1 or bool(trace and (trace.graph_break or trace.side_effects))


def _groups(rec: Recorder) -> list[_Group]:
    groups: list[_Group] = []
    graphs: list[GraphRecord] = []
    for event in rec.events:
        if event[0] == "graph":
            graphs.append(event[1])
        elif event[0] == "code":
            traced, f_globals = event[3] if event[3] is not None else (None, None)
            groups.append(_Group(event[1], event[2], graphs, [], traced, f_globals))
            graphs = []
        elif groups and not graphs:
            groups[-1].guards.append((event[1], event[2]))
        else:
            raise NotPrecompilable("bytecode-hook", "guards outside a converted frame")
    if graphs or not groups:
        raise NotPrecompilable("bytecode-hook", "a graph outside a converted frame")
    return groups


def capture(rec: Recorder, code_fn: Any, state: str, hooks_empty: bool, step_entry: StepEntry,
            called_name: Callable[[types.CodeType], list[str]] | None) -> ChainEntry:
    """The chain entry of a recorded call whose frame has graph breaks or side effects
    (:func:`needs_code`); NotPrecompilable with a reason when any step cannot be replayed.
    ``step_entry`` makes a step's frame entry (the checks of a one-graph frame);
    ``called_name`` names a called frame's function (None: called frames and skipped
    resume functions are refused, for a way into the tier that cannot trace callees)."""
    if not code_codec.supported():
        raise NotPrecompilable("bytecode-python", "code objects are encoded for Python 3.11 and 3.12 only")
    if not hooks_empty:
        raise NotPrecompilable("global-module-hooks")
    groups = _groups(rec)
    codes = [group.code for group in groups]
    if codes[0] is not getattr(code_fn, "__code__", None):
        raise NotPrecompilable("nested-frame", codes[0].co_name)
    if len({id(c) for c in codes}) != len(codes):
        raise NotPrecompilable("recompiled", "a frame was converted twice in one call")
    if len(groups) > _MAX_FRAMES:
        raise NotPrecompilable("chain-length", f"{len(groups)} converted frames (at most {_MAX_FRAMES})")
    root_of: dict[int, int] = {}
    skipped: dict[int, list[types.CodeType]] = {}
    bindings: list[list[list[Any]]] = []
    for index, group in enumerate(groups):
        root = root_of.setdefault(index, index)
        if root and called_name is None:
            raise NotPrecompilable("other-frames", f"{group.code.co_name} is compiled as a frame of its own")
        f_globals = code_fn.__globals__ if root == 0 else group.f_globals
        if f_globals is None:
            raise NotPrecompilable("bytecode-hook", f"the globals of {group.code.co_name} are unreadable")
        made = _bindings(group, f_globals, codes, index, skipped.setdefault(root, []), called_name is not None)
        for _, kind, arg in made:
            if kind in ("resume", "closure"):
                if arg in root_of:
                    raise NotPrecompilable("recompiled", "a resume function is reached twice")
                root_of[arg] = root
        bindings.append(made)
    chains = []
    for root in sorted(set(root_of.values())):
        members = [i for i in range(len(groups)) if root_of[i] == root]
        if len(members) > frame_resume._MAX_STEPS:  # a longer chain would be refused when read back
            raise NotPrecompilable("chain-length", f"{len(members)} steps in one chain (at most {frame_resume._MAX_STEPS})")
        local = {g: i for i, g in enumerate(members)}
        steps = []
        for position, index in enumerate(members):
            group = groups[index]
            made = [[n, k, local[a]] if k in ("resume", "closure") else [n, k, a] for n, k, a in bindings[index]]
            frame = _step_frame(group, step_entry, state if index == 0 else None)
            steps.append(Step(None if position == 0 else code_codec.encode(group.code), code_codec.encode(group.out),
                              made, frame))
        name = None
        if root:
            assert called_name is not None  # refused above otherwise
            if groups[root].code.co_freevars:
                raise NotPrecompilable("called-closure", f"{groups[root].code.co_name} has free variables")
            name = called_name(groups[root].code)
        chains.append(ChainEntry(steps, [code_codec.encode(c) for c in skipped[root]], [], name))
    return ChainEntry(chains[0].steps, chains[0].skipped, chains[1:], None)


def _step_frame(group: _Group, step_entry: StepEntry, call_state: str | None) -> FrameEntry:
    """A step's frame entry: its guards and global state, and its graph when it has one.
    ``call_state``: the global state the top frame's call saw (its first step's guards
    must have seen the same)."""
    if len(group.guards) != 1:
        raise NotPrecompilable("guard-sets", f"{len(group.guards)} guard sets in one frame")
    guards, frame_state = group.guards[0]
    if isinstance(guards, NotPrecompilable):
        raise guards
    if call_state is not None and frame_state != call_state:
        raise NotPrecompilable("global-state", "the frame's guards saw another global state than its call")
    if len(group.graphs) > 1:
        raise NotPrecompilable("resume-graphs", f"{len(group.graphs)} graphs in a frame of the chain")
    if not group.graphs:
        if group.traced is None:
            raise NotPrecompilable("bytecode-hook", f"what Dynamo traced in {group.code.co_name} is unreadable")
        return step_entry(None, guards, frame_state, group.traced)
    graph = group.graphs[0]
    trace = graph.trace
    if trace is None:
        raise NotPrecompilable("trace", graph.problem)
    if trace.frame_code is not group.code:
        raise NotPrecompilable("nested-frame", trace.frame_code.co_name)
    if trace.symbolic:
        raise NotPrecompilable("dynamic-shapes")
    if trace.input_problem:
        raise NotPrecompilable("graph-input", trace.input_problem)
    return step_entry(graph, guards, frame_state, [])


def _bindings(group: _Group, f_globals: Mapping[str, Any], codes: list[types.CodeType], index: int,
              skipped: list[types.CodeType], calls: bool) -> list[list[Any]]:
    """The bindings of the globals a step's transformed code names (resume and closure
    bindings by index in ``codes``; skipped resume functions appended to ``skipped``)."""
    code, out = group.code, group.out
    graph = group.graphs[0] if group.graphs else None
    guards = group.guards[0][0] if len(group.guards) == 1 else []
    own = set(code.co_names)
    bindings: list[list[Any]] = []
    resumes = sum(1 for name in code_codec.global_names(out) - own if name.startswith("__resume_at_"))
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
        if name.startswith("__compiled_fn") and graph is not None and code_codec.unwrapped(value) is graph.callable:
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
        elif calls and resumes == 1 and name.startswith("__resume_at_") and _left_as_is(value) is not None:
            # The frame's one resume function (its code calls it whenever the frame returns,
            # so the recorded call did), which Dynamo did not convert: it found no graph in
            # it and left it to run as it is.  At replay it runs as it is, its callees traced.
            # (Of two, one per branch of a jump, the one not taken was never converted and
            # might have a graph: refused below.)  One with free variables is reached through
            # Dynamo's factory, as a converted one is (a ``closure`` binding).
            left = _left_as_is(value)
            if left not in skipped:
                skipped.append(left)
            bindings.append([name, "skipped", skipped.index(left)])
        elif name.startswith("__resume_at_"):
            raise NotPrecompilable("resume-not-compiled", name)
        else:
            raise NotPrecompilable("bytecode-global", name)
    if sum(1 for b in bindings if b[1] == "graph") != len(group.graphs):
        raise NotPrecompilable("resume-graphs", "the frame's code does not call its graph once")
    return bindings


def _left_as_is(value: Any) -> types.CodeType | None:
    """The code of a resume function global (itself, or Dynamo's factory of one with free
    variables), when it is Dynamo's resume code; else None."""
    code = value.__code__ if isinstance(value, types.FunctionType) and not value.__code__.co_freevars else (
        _factory_code(value))
    return code if code is not None and code.co_name.startswith("torch_dynamo_resume_in_") else None


def _factory_code(value: Any) -> types.CodeType | None:
    """The resume code of Dynamo's factory for a resume function with free variables
    (``OutputGraph.install_resume_function_global``'s ``_make_fn``, torch 2.13), else None."""
    if not isinstance(value, types.FunctionType) or value.__code__.co_name != "_make_fn":
        return None
    found = [c.cell_contents for c in value.__closure__ or () if isinstance(c.cell_contents, types.CodeType)]
    return found[0] if len(found) == 1 else None
