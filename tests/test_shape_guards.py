"""Shape guards of precompiled frames (``artcache.shape_expr``, ``artcache._torch.shape_guards``):
the translation of torch's guard text, the plain-data trees' validation against hostile
documents, the interpreter's semantics, and a replay that reads sizes at access paths."""

from __future__ import annotations

import types
from typing import Any

import pytest
import torch

from artcache import shape_expr
from artcache._torch import frame_capture as fc
from artcache._torch import shape_guards
from artcache.errors import CorruptEntryError, NotPrecompilable
from artcache.frame_entry import FrameEntry, guard_text
from artcache.frame_replay import Frame, Replay

X0 = [["L", "x"], ["size", 0]]
X1 = [["L", "x"], ["size", 1]]
Y0 = [["L", "y"], ["size", 0]]


def _translate(*code: str) -> list[list[Any]]:
    return shape_guards.translate(types.SimpleNamespace(code_list=list(code)))


def _holds(expr: list[Any], values: dict[str, int]) -> bool:
    order = {repr(X0): 0, repr(X1): 1, repr(Y0): 2}
    row = [values.get("x0"), values.get("x1"), values.get("y0")]
    return shape_expr.evaluator(expr, lambda path: order[repr(path)])(row)


def test_torch_guard_text_translates_to_trees() -> None:
    checks = _translate("(L['x'].size()[0] % 2) == 0", "L['y'].size()[0] <= (L['x'].size()[0] // 2)",
                        "2 <= L['x'].size()[1] <= 4096", "L['x'].stride()[0] == L['x'].size()[1]",
                        "max(L['x'].size()[0], -L['y'].size()[0]) != 3 or not L['x'].storage_offset()")
    assert [c[0] for c in checks] == ["shape"] * 5
    assert checks[0] == ["shape", X0, ["==", ["%", ["p", X0], ["int", 2]], ["int", 0]]]
    assert checks[1][2] == ["<=", ["p", Y0], ["//", ["p", X0], ["int", 2]]]
    assert checks[2][2] == ["and", ["<=", ["int", 2], ["p", X1]], ["<=", ["p", X1], ["int", 4096]]]
    assert checks[3][2] == ["==", ["p", [["L", "x"], ["stride", 0]]], ["p", X1]]
    assert checks[4][2][0] == "or" and checks[4][2][2] == ["not", ["p", [["L", "x"], ["offset", 0]]]]
    assert "(L['x'].size()[0] % 2) == 0" in guard_text(checks[0])


@pytest.mark.parametrize("code", [
    "L['x'].size()[0] ** 2 == 4",          # an operator the interpreter does not know
    "L['x'].size()[0] / 2 == 3",           # true division
    "Ne(L['x'].size()[0], 3)",             # a function call
    "L['n'] == 3",                          # an operand that is not a tensor property
    "G['__import_torch'].x.size()[0] == 1",  # one of Dynamo's own globals
    "L['x'].size(0) == 1",                  # another spelling than torch's
    "L['x'].size()[0] == 1.5",              # a float
    "L['x'].size()[0] if True else 1",
    "1 == 2",                               # a constant guard that does not hold
    "",
])
def test_untranslated_guards_make_the_frame_not_precompilable(code: str) -> None:
    with pytest.raises(NotPrecompilable) as exc:
        _translate(code)
    assert exc.value.reason == "shape-guard"


def test_a_guard_without_its_text_is_not_precompilable() -> None:
    with pytest.raises(NotPrecompilable):
        shape_guards.translate(types.SimpleNamespace())


def test_interpreter_semantics() -> None:
    [[_, _, mod], [_, _, div]] = _translate("(L['x'].size()[0] % 3) == 2", "(L['x'].size()[0] // 0) == 2")
    assert _holds(mod, {"x0": 5}) and not _holds(mod, {"x0": 6})
    assert not _holds(div, {"x0": 5})  # a division by zero is a failed guard, never an error
    [[_, _, neg]] = _translate("((-L['x'].size()[0]) // 2) == -3")  # floor division, as sympy's FloorDiv
    assert _holds(neg, {"x0": 5})
    [[_, _, big]] = _translate("(L['x'].size()[0] * L['x'].size()[0] * L['x'].size()[0]) >= 0")
    assert _holds(big, {"x0": 2**20}) and not _holds(big, {"x0": 2**21})  # past MAX_INT: fails
    [[_, _, either]] = _translate("L['x'].size()[0] == 1 or L['y'].size()[0] == 1")
    assert _holds(either, {"x0": 1}) and not _holds(either, {"x0": 2, "y0": 2})
    assert not _holds(either, {"y0": 1})  # a path that read no int fails the guard


def _entry(guards: list[list[Any]], inputs: list[Any] | None = None) -> dict[str, Any]:
    return FrameEntry(guards, fc.global_state(), inputs or [X0, [["L", "x"]]], ["o", 0], "a" * 64, True, [], False,
                      [-1, 1]).plain()


def test_well_formed_shape_guards_round_trip() -> None:
    from artcache import pickler

    doc = _entry([["tensor", [["L", "x"]], ["Tensor", "torch.float32", "cpu", [None, 3], [3, 1], 0, False, "k"]],
                  *_translate("(L['x'].size()[0] % 2) == 0", "2 <= L['x'].size()[0]")])
    loaded = pickler.loads(pickler.dumps(doc).data, {})
    assert FrameEntry.from_plain(loaded).plain() == doc


@pytest.mark.parametrize("expr", [
    ["pow", ["p", X0], ["int", 2]],                         # an unknown operator
    ["eval", "L['x'].size()[0] == 2"],                        # text
    "L['x'].size()[0] == 2",
    ["==", ["p", X0], ["int", 2**62]],                        # an int past the bound
    ["==", ["p", X0], ["int", True]],                         # a bool is not an int
    ["==", ["arg", 0], ["int", 1]],                           # a graph's own leaf, never stored
    ["==", ["p", [["L", "x"]]], ["int", 1]],                  # a path that reads no tensor property
    ["==", ["p", [["L", "x"], ["size", 0], ["a", "real"]]], ["int", 1]],  # a property step, then more
    ["==", ["p", [["L", "x"], ["size", -1]]], ["int", 1]],
    ["==", ["p", [["X", "os"], ["size", 0]]], ["int", 1]],
    ["==", ["p", X0]],                                        # wrong arity
    ["min", ["p", X0]],
    ["and", *[["==", ["p", X0], ["int", 1]]] * 90],          # past the node bound
    ["int", 1, 2],
    [],
])
def test_malformed_shape_guards_are_refused(expr: Any) -> None:
    with pytest.raises(CorruptEntryError):
        FrameEntry.from_plain(_entry([["shape", X0, expr]]))


def test_deep_and_wide_shape_guards_are_refused() -> None:
    deep: list[Any] = ["==", ["p", X0], ["int", 2]]
    for _ in range(shape_expr.MAX_DEPTH + 1):
        deep = ["not", deep]
    wide: list[Any] = ["p", X0]
    for _ in range(shape_expr.MAX_NODES):
        wide = ["+", wide, ["int", 1]]
    for expr in (deep, wide):
        with pytest.raises(CorruptEntryError):
            FrameEntry.from_plain(_entry([["shape", X0, expr]]))


def test_a_replay_reads_sizes_at_their_paths_and_checks_shape_guards() -> None:
    """A frame recorded with dimension 0 symbolic: its graph takes the size and the tensor;
    new sizes that hold the guards replay, others are refused, before the graph runs."""
    facts = fc.tensor_facts(torch.randn(6, 3))
    facts[3][0] = None  # symbolic: the shape guards check it
    entry = FrameEntry.from_plain(_entry([["tensor", [["L", "x"]], facts],
                                          *_translate("(L['x'].size()[0] % 2) == 0", "2 <= L['x'].size()[0]")]))
    calls = []

    def graph(n: int, x: torch.Tensor) -> tuple[torch.Tensor]:
        calls.append(n)
        return (x * n,)

    replay = Replay(entry, graph, {})
    for rows, ok in ((6, True), (10, True), (7, False), (0, False)):
        held, out = replay.try_call(Frame({"x": torch.ones(rows, 3)}, {}))
        assert held is ok, rows
        if ok:
            assert torch.equal(out, torch.full((rows, 3), float(rows)))
    assert calls == [6, 10]
    assert not replay.try_call(Frame({"x": torch.ones(6, 4)}, {}))[0]  # a static size still compared
    assert not replay.try_call(Frame({"x": torch.ones(6, 3).t().contiguous().t()}, {}))[0]  # strides too


@pytest.mark.parametrize(("code", "ints", "holds"), [
    ("2 <= L['t0'] and L['t0'] <= 4096", [5], True),
    ("2 <= L['t0'] and L['t0'] <= 4096", [5000], False),
    ("(L['t0'] % 2) == 0 and L['t1'] <= (L['t0'] // 2)", [8, 3], True),
    ("(L['t0'] % 2) == 0 and L['t1'] <= (L['t0'] // 2)", [8, 5], False),
    ("L['t3'] == 1", [1], False),                      # an input the graph does not have
    ("__import__('os').system('echo pwned')", [1], False),
    ("L['t0'].__class__ == 1", [1], False),
    ("L['t0'] ** 2 == 4", [2], False),
    ("(" * 3000 + "1" + ")" * 3000, [], False),        # too long, and too deep to parse
    ("(" * 500 + "L['t0']" + ")" * 500 + " == 1", [1], False),
    (None, [1], False),
])
def test_graph_entry_guards_are_interpreted_never_evaluated(code: Any, ints: list[int], holds: bool) -> None:
    assert shape_guards.graph_guards_hold(code, ints) is holds


def test_torchs_guard_tree_checks_shape_guards() -> None:
    """The same checks as a tree of torch's guards (what serves calls after the first hit):
    the tensor guard leaves the symbolic size alone, the shape guards decide it."""
    from artcache._torch import guard_tree

    facts = fc.tensor_facts(torch.randn(6, 3))
    facts[3][0] = None
    entry = FrameEntry.from_plain(_entry([["tensor", [["L", "x"]], facts],
                                          *_translate("(L['x'].size()[0] % 2) == 0", "2 <= L['x'].size()[0]")]))
    replay = Replay(entry, lambda n, x: (x,), {})
    failed, values = replay.check(Frame({"x": torch.ones(6, 3)}, {}))
    assert failed is None
    built = guard_tree.build(None, {}, replay.nodes, values, replay.checks, None)
    assert built is not None
    tree = built[0]
    for rows, ok in ((6, True), (10, True), (7, False), (0, False)):
        assert tree.root.check({"x": torch.ones(rows, 3)}) is ok, rows
    assert not tree.root.check({"x": torch.ones(6, 4)})
    assert not tree.root.check({"y": torch.ones(6, 3)})


def test_symbolic_sizes_without_shape_guards_are_not_precompilable() -> None:
    """A tensor check that leaves a size open is only safe next to the guards on it."""
    shape_env = types.SimpleNamespace(guard_type="SHAPE_ENV", orig_guard=types.SimpleNamespace(code_list=None))
    assert fc.translate_guards([shape_env], {}) == []
    with pytest.raises(NotPrecompilable) as exc:
        fc.translate_guards([shape_env], {"source": ([None, 3], [3, 1])})
    assert exc.value.reason == "shape-guard"


def test_a_large_graph_guard_conjunction_is_interpreted() -> None:
    """A graph entry's guards are one conjunction over all its symbols (bounded in text and
    nodes, not in operands)."""
    code = " and ".join(f"2 <= L['t{i}']" for i in range(300))
    assert shape_guards.graph_guards_hold(code, [5] * 300)
    assert not shape_guards.graph_guards_hold(code, [5] * 299 + [1])
    assert not shape_guards.graph_guards_hold(" and ".join(["2 <= L['t0']"] * 5000), [5])  # past the text bound
