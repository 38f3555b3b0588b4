"""Which recorded autotuning winners an entry keeps (GPU path logic, testable without a GPU)."""

from __future__ import annotations

import pytest

from artcache._triton_compat import KernelRefs, kernel_names_in
from artcache._triton_tuning import TuningRecorder

WRAPPER = """
triton_poi_fused_add_0 = async_compile.triton('triton_poi_fused_add_0', '''
import triton
''', device_str='cuda')

triton_red_fused_sum_1 = async_compile.triton("triton_red_fused_sum_1", '''
''', device_str='cuda')
cpp_fused_mul_2 = async_compile.cpp_pybinding(['float*'], '''
''')
"""


def _recorder() -> TuningRecorder:
    rec = TuningRecorder()
    rec.winners = {
        "cstatic.py:h1": {"XBLOCK": 128},
        "cnonstatic.py:h2": {"XBLOCK": 64},
        "cother.py:h3": {"XBLOCK": 32},
    }
    rec.names = {"cstatic.py": "triton_poi_fused_add_0", "cnonstatic.py": "triton_red_fused_sum_1", "cother.py": "triton_per_x_9"}
    rec.extra_results = {"cnonstatic.py": ["compiled-winner"]}
    return rec


def test_kernel_names_come_from_the_wrapper_source() -> None:
    assert kernel_names_in(WRAPPER) == {"triton_poi_fused_add_0", "triton_red_fused_sum_1"}
    assert kernel_names_in("") == set()


def test_winners_of_kernels_known_by_file_or_by_name_are_kept() -> None:
    rec = _recorder()
    winners, extra = rec.for_kernels(KernelRefs(frozenset({"cstatic.py"}), frozenset(kernel_names_in(WRAPPER))))
    assert set(winners) == {"cstatic.py:h1", "cnonstatic.py:h2"}  # cother.py belongs to another graph
    assert extra == {"cnonstatic.py": ["compiled-winner"]}


def test_without_names_only_static_kernels_are_kept() -> None:
    winners, extra = _recorder().for_kernels(KernelRefs(frozenset({"cstatic.py"}), frozenset()))
    assert set(winners) == {"cstatic.py:h1"} and extra == {}
    assert not KernelRefs(frozenset(), frozenset())
    assert KernelRefs(frozenset(), frozenset({"k"}))


def test_a_graph_without_an_entry_has_no_triton_kernels() -> None:
    # An uncacheable GPU graph leaves no entry; the backend still asks after its compile.
    from artcache.output_code import CompiledGraph

    assert not CompiledGraph(None, {}).triton_kernels()


def _entry(static_names: list[str]) -> object:
    """The shape of torch's bundled entry that the GPU path reads: a forward graph with a
    TritonBundle of statically launchable autotuners."""
    from types import SimpleNamespace

    autotuners = [SimpleNamespace(kernel_name=name) for name in static_names]
    graph = SimpleNamespace(_triton_bundle=SimpleNamespace(static_autotuners=autotuners))
    return SimpleNamespace(compiled_fw=SimpleNamespace(result=graph), compiled_bw=None)


def test_a_kernel_without_a_static_autotuner_is_rebuilt_through_triton() -> None:
    from artcache._triton_compat import rebuilt_through_triton

    names = frozenset(kernel_names_in(WRAPPER))
    both = _entry(["triton_poi_fused_add_0", "triton_red_fused_sum_1"])
    assert not rebuilt_through_triton(both, KernelRefs(frozenset({"c1.py", "c2.py"}), names))
    one = _entry(["triton_poi_fused_add_0"])
    assert rebuilt_through_triton(one, KernelRefs(frozenset({"c1.py"}), names))
    assert not rebuilt_through_triton(_entry([]), KernelRefs(frozenset(), frozenset()))


def test_the_triton_cache_variable_is_put_back(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from artcache._triton_compat import _env_restored

    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    with _env_restored("TRITON_CACHE_DIR"):
        os.environ["TRITON_CACHE_DIR"] = "/private/dir"  # what CachingAutotuner.__init__ does
    assert "TRITON_CACHE_DIR" not in os.environ
    monkeypatch.setenv("TRITON_CACHE_DIR", "/users/dir")
    with _env_restored("TRITON_CACHE_DIR"):
        os.environ["TRITON_CACHE_DIR"] = "/private/dir"
    assert os.environ["TRITON_CACHE_DIR"] == "/users/dir"
