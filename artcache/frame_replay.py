"""The parts of the precompile tier that run a frame entry and record one: a loaded
entry's guards compiled to checks over the frame's locals (:class:`Replay`), and the
backend that records what Dynamo produced while it compiles a frame (:class:`Recorder`).
Used by the wrapper (:mod:`artcache.frames`) and by ``torch.compile`` with precompile on
(:mod:`artcache.frame_hook`)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import Any

import torch

from . import shape_expr
from ._torch import code_codec, rebuild
from ._torch import frame_capture as fc
from .errors import NotPrecompilable
from .frame_entry import FrameEntry, build_output, guard_text

MISSING = object()


def check_fn(check: list[Any]) -> Callable[[Any, Any], bool]:
    """One stored check as a function of (value at its path, value at its second path).
    Named objects are resolved once: a check then compares identity with the object the
    name gave when the replay was made (a later rebinding of the name makes no new match)."""
    kind, _, want = check
    if kind == "same":
        return lambda value, other: value is other
    if kind == "eq":
        return lambda value, other: fc.constant_form(value) == want
    if kind == "tensor":
        tensor = fc.tensor_check(want)
        return lambda value, other: tensor(value)
    if kind == "torch":
        return lambda value, other: fc.torch_constant(value) == want
    if kind == "code":
        code = fc.code_check(want)
        return lambda value, other: code(value)
    if kind == "keys":
        return lambda value, other: fc.has_keys(value, want)
    if kind in ("type", "is"):
        named = fc.resolve_named(want)
        if named is None:
            return lambda value, other: False
        if kind == "type":
            return lambda value, other: type(value) is named
        return lambda value, other: value is named
    if kind == "absent":
        return lambda value, other: want not in getattr(value, "__dict__", {})
    if kind == "contains":
        key, present = want
        return lambda value, other: fc.has_key(value, key, present)
    if kind == "hasattr":
        return lambda value, other: hasattr(value, want)
    if kind == "lacks":
        return lambda value, other: not hasattr(value, want)

    def length(value: Any, other: Any) -> bool:  # "len"
        try:
            return len(value) == want
        except TypeError:
            return False

    return length


class Frame:
    """A call's locals two ways: the function's own (arguments bound, defaults applied,
    closure cells by name), and those of torch's wrapper Dynamo traces for torch's own
    functions (``fn``, ``args``, ``kwargs``: see ``FrameEntry.wrapped``).  ``direct`` may
    be given as a function, called the first time it is read."""

    __slots__ = ("_bind", "_direct", "wrapped")

    def __init__(self, direct: dict[str, Any] | None, wrapped: dict[str, Any],
                 bind: Callable[[], dict[str, Any]] | None = None) -> None:
        self._direct = direct
        self.wrapped = wrapped
        self._bind = bind

    @property
    def direct(self) -> dict[str, Any]:
        if self._direct is None:
            self._direct = self._bind() if self._bind is not None else {}
        return self._direct


class Replay:
    """A loaded frame entry: its guards and the compiled graph it calls.

    Guard paths share prefixes (``L['self']._modules['fc1']`` under many guards), so each
    distinct prefix is one node, resolved once per call in order."""

    def __init__(self, entry: FrameEntry, compiled: Callable[..., Any], f_globals: Mapping[str, Any]) -> None:
        self.entry = entry
        self.compiled = compiled
        self.f_globals = fc.wrapper_globals() if entry.wrapped else f_globals
        self._nodes: list[tuple[int, str, Any]] = []  # (parent node or -1, step, key)
        index: dict[tuple[Any, ...], int] = {}

        def node(path: list[list[Any]]) -> int:
            key: tuple[Any, ...] = ()
            parent = -1
            for step, name in path:
                key += ((step, name, type(name).__name__),)
                if key not in index:
                    index[key] = len(self._nodes)
                    self._nodes.append((parent, step, name))
                parent = index[key]
            return parent

        self._checks = []
        # Shape guards relate several paths: each is evaluated on all the values of a call.
        self._shape_checks: list[tuple[Callable[[list[Any]], bool], list[Any]]] = []
        seen = set()
        for check in entry.guards:
            if check[0] == "shape":
                self._shape_checks.append((shape_expr.evaluator(check[2], node), check))
                continue
            at, other = node(check[1]), node(check[2]) if check[0] == "same" else -1
            identity = (check[0], at, other, repr(check[2]))
            if identity not in seen:  # Dynamo repeats some guards (hook dicts, generic-dict checks)
                seen.add(identity)
                self._checks.append((at, other, check_fn(check), check))
        self.inputs = [node(path) for path in entry.inputs]
        self._state: fc.StateCheck | None = None
        needed: set[int] = set()
        for at in self.inputs:
            while at >= 0 and at not in needed:
                needed.add(at)
                at = self._nodes[at][0]
        # The nodes the graph inputs are read through (a call whose checks already held,
        # by a guard tree, reads only these).
        self._input_nodes = sorted(needed)
        # Inputs recorded as tensors of distinct storages: a guard tree checks that they
        # still are (torch's no-aliasing guard), in place of storage_groups in Python.
        storage = entry.storage
        self.distinct_inputs = (list(self.inputs) if len(storage) >= 2 and storage == list(range(len(storage)))
                                else [])
        self.tree_keep: list[Any] = []  # objects a guard tree compares by identity
        self.tree: Any = None  # torch's guards for these checks over a dict of locals, when built
        self.tree_aliasing = False  # whether the tree checks the inputs' aliasing

    @property
    def nodes(self) -> list[tuple[int, str, Any]]:
        return self._nodes

    @property
    def checks(self) -> list[tuple[int, int, list[Any]]]:
        """``(node, second node or -1, stored check)`` per distinct check."""
        return [(at, other, check) for at, other, _, check in self._checks] + [
            (-1, -1, check) for _, check in self._shape_checks]

    def _resolve_all(self, frame: Frame, only: list[int] | None = None) -> list[Any]:
        f_locals = frame.wrapped if self.entry.wrapped else frame.direct
        values: list[Any] = [MISSING] * len(self._nodes) if only is not None else []
        for at in only if only is not None else range(len(self._nodes)):
            parent, step, name = self._nodes[at]
            obj = f_locals if step == "L" else self.f_globals if step == "G" else sys.modules if step == "M" else (
                values[parent])
            if obj is MISSING:
                value: Any = MISSING
            elif step in ("L", "G", "M"):
                value = obj.get(name, MISSING)
            else:
                value = fc.step_value(obj, step, name, MISSING)
            if only is None:
                values.append(value)
            else:
                values[at] = value
        return values

    def inputs_if_unaliased(self, frame: Frame) -> list[Any] | None:
        """The graph inputs of a call whose other checks held (a guard tree checked them),
        or None when one is missing or they alias otherwise than when recorded."""
        values = self._resolve_all(frame, self._input_nodes)
        inputs = [values[at] for at in self.inputs]
        if any(value is MISSING for value in inputs):
            return None
        if not self.tree_aliasing and fc.storage_groups(inputs) != self.entry.storage:
            return None
        return inputs

    def set_tree(self, built: tuple[Any, list[Any]] | None) -> bool:
        """Use a guard tree :func:`artcache._torch.guard_tree.build` made for this replay
        (with ``no_aliasing=self.distinct_inputs``); False when none was built."""
        if built is None:
            return False
        self.tree, self.tree_keep = built
        self.tree_aliasing = bool(self.distinct_inputs)
        return True

    def check(self, frame: Frame) -> tuple[str | None, list[Any]]:
        """The first failing check (or ``None``) and every path's value for this call."""
        values = self._resolve_all(frame)
        for at, other, holds, check in self._checks:
            value = values[at]
            if value is MISSING or not holds(value, values[other] if other >= 0 else None):
                return guard_text(check), values
        for holds_shape, check in self._shape_checks:
            if not holds_shape(values):
                return guard_text(check), values
        if self._state is None:
            if fc.global_state() != self.entry.state:
                return "global state", values
            self._state = fc.StateCheck()  # verified equal: from now on the fast check
        elif not self._state.holds():
            return "global state", values
        if not fc.global_hooks_empty():
            return "global module hooks", values
        inputs = [values[at] for at in self.inputs]
        if any(value is MISSING for value in inputs):  # every input has a tensor guard; never reached
            return "graph input missing", values
        if fc.storage_groups(inputs) != self.entry.storage:
            return "inputs alias differently", values
        return None, values

    def try_call(self, frame: Frame) -> tuple[bool, Any]:
        """Check the guards; if they all hold, run the graph and rebuild the frame's result.
        With a guard tree built, torch's guards check (a failed tree is a failed call: the
        caller goes on to Dynamo)."""
        if self.tree is not None:
            if not self.tree.root.check(frame.wrapped if self.entry.wrapped else frame.direct):
                return False, None
            inputs = self.inputs_if_unaliased(frame)
            return (False, None) if inputs is None else (True, self.run_inputs(inputs))
        failed, values = self.check(frame)
        if failed is not None:
            return False, None
        return True, self.run(values)

    def run(self, values: list[Any]) -> Any:
        """Run the graph on the inputs of a checked call and rebuild the frame's result."""
        return self.run_inputs([values[at] for at in self.inputs])

    def run_inputs(self, inputs: list[Any]) -> Any:
        return build_output(self.entry.output, self.compiled(*inputs), inputs)

    def run_frame(self, frame: Frame, values: list[Any]) -> Any:
        """Run a checked call (``values`` from :meth:`check`); a chain's replay runs the
        frame's code (:mod:`artcache.frame_resume`)."""
        return self.run(values)

    def run_checked(self, frame: Frame) -> tuple[bool, Any]:
        """Run a call whose checks a guard tree held: False when its inputs alias otherwise."""
        inputs = self.inputs_if_unaliased(frame)
        return (False, None) if inputs is None else (True, self.run_inputs(inputs))


class GraphRecord:
    """One backend call during a recorded Dynamo compile."""

    def __init__(self) -> None:
        self.trace: fc.FrameTrace | None = None
        self.problem = ""
        self.keys: list[tuple[str, dict[str, Any]]] = []
        self.lifted = 0
        self.outputs: Any = None
        self.inputs: list[Any] = []
        self.callable: Any = None  # what the backend returned to Dynamo (its transformed code calls it)


class Recorder:
    """The backend and guard filter given to Dynamo on the fallback path: compiles through
    the artcache backend and notes what the frame entry needs."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend  # an ArtcacheBackend (whose on_key reports graph keys)
        self.recording = True  # off: graphs compile through the backend, nothing is noted
        self.graphs: list[GraphRecord] = []
        self.guards: list[list[Any]] | None = None
        self.guard_problem: NotPrecompilable | None = None
        self.guard_calls = 0
        # In order: ("graph", GraphRecord), ("guards", checks or NotPrecompilable, global
        # state), ("code", code, transformed code, (traced code, frame globals) or None)
        # when Dynamo finished converting a frame.
        self.events: list[tuple[Any, ...]] = []

    def reset(self) -> None:
        self.graphs, self.guards, self.guard_problem, self.guard_calls = [], None, None, 0
        self.events = []

    def on_bytecode(self, code: Any, out: Any) -> None:
        if self.recording:
            self.events.append(("code", code, out, code_codec.conversion_output(code)))

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        if not self.recording:
            return self.backend(gm, example_inputs)  # type: ignore[no-any-return]
        record = GraphRecord()
        self.graphs.append(record)
        self.events.append(("graph", record))
        try:
            record.trace = fc.FrameTrace(gm)
        except (AttributeError, KeyError, TypeError) as exc:  # a torch without what the trace reads
            record.problem = f"trace unreadable: {type(exc).__name__}: {exc}"
        record.lifted = len(rebuild.lifted_inputs(gm))
        self.backend.on_key = lambda key, info: record.keys.append((key, info))
        try:
            compiled = self.backend(gm, example_inputs)
        finally:
            self.backend.on_key = None

        def run(*args: Any) -> Any:
            out = compiled(*args)
            if record.outputs is None:
                record.outputs, record.inputs = out, list(args)
            return out

        if getattr(compiled, "_boxed_call", False):
            run._boxed_call = True  # type: ignore[attr-defined]
        record.callable = run
        return run

    def guard_filter(self, entries: list[Any]) -> list[bool]:
        if not self.recording:
            return [True] * len(entries)
        self.guard_calls += 1
        try:
            dims = {k: v for g in self.graphs if g.trace is not None for k, v in g.trace.dims.items()}
            self.guards = fc.translate_guards(entries, dims)
            self.events.append(("guards", self.guards, code_codec.frame_state()))
        except NotPrecompilable as exc:
            self.guard_problem = exc
            self.events.append(("guards", exc, ""))
        return [True] * len(entries)
