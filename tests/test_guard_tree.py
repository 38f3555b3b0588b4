"""torch's guard tree built from stored checks (``artcache._torch.guard_tree``), checked
directly on dicts of locals: each leaf holds where the stored check holds, and fails where
it fails (the tree replaces the Python checks after a replay's first call)."""

from __future__ import annotations

import types
from typing import Any

import torch

from artcache._torch import guard_tree


def _tree(value: Any, check: list[Any]) -> Any:
    built = guard_tree.build(None, {}, [(-1, "L", "v")], [value], [(0, -1, check)], None)
    assert built is not None, check
    return built[0].root


def test_a_dict_key_check_holds_only_for_a_dict_with_that_presence() -> None:
    absent = _tree({"a": 1}, ["contains", [["L", "v"]], ["b", False]])
    assert absent.check({"v": {"a": 1}}) and absent.check({"v": {}})
    assert not absent.check({"v": {"b": 2}})
    assert not absent.check({"v": types.MappingProxyType({"a": 1})})  # another type
    present = _tree({"b": 1}, ["contains", [["L", "v"]], ["b", True]])
    assert present.check({"v": {"b": 0}}) and not present.check({"v": {"a": 0}})


def test_a_class_namespace_key_check_reads_the_mapping_proxy() -> None:
    class Holder:
        attribute_map: dict[str, str] = {}

    proxy = Holder.__dict__
    check = _tree(proxy, ["contains", [["L", "v"]], ["kind", False]])
    assert check.check({"v": proxy})
    Holder.kind = 1  # type: ignore[attr-defined]
    assert not check.check({"v": proxy})


def test_inputs_recorded_distinct_must_stay_distinct() -> None:
    a, b = torch.randn(3), torch.randn(3)
    facts = [["tensor", [["L", n]], ["Tensor", "torch.float32", "cpu", [3], [1], 0, False,
                                      str(torch._C._dispatch_keys(a))]] for n in ("a", "b")]
    nodes = [(-1, "L", "a"), (-1, "L", "b")]
    built = guard_tree.build(None, {}, nodes, [a, b], [(0, -1, facts[0]), (1, -1, facts[1])], None, [0, 1])
    assert built is not None
    root = built[0].root
    assert root.check({"a": a, "b": b}) and root.check({"a": torch.randn(3), "b": torch.randn(3)})
    assert not root.check({"a": a, "b": a})  # one storage for both: the recorded graph assumed two
