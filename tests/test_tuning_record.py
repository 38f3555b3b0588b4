"""Which recorded autotuning winners an entry keeps (GPU path logic, testable without a GPU)."""

from __future__ import annotations

from artcache._triton_compat import KernelRefs, TuningRecorder, kernel_names_in

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
