"""Which recorded autotuning winners an entry keeps (GPU path logic, testable without a GPU)."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from artcache._torch.triton_serve import KernelRefs, kernel_names_in
from artcache._torch.triton_tuning import TuningRecorder

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

    assert not CompiledGraph(None).triton_kernels()


def _entry(static_names: list[str]) -> object:
    """The shape of torch's bundled entry that the GPU path reads: a forward graph with a
    TritonBundle of statically launchable autotuners."""
    from types import SimpleNamespace

    autotuners = [SimpleNamespace(kernel_name=name) for name in static_names]
    graph = SimpleNamespace(_triton_bundle=SimpleNamespace(static_autotuners=autotuners))
    return SimpleNamespace(compiled_fw=SimpleNamespace(result=graph), compiled_bw=None)


def test_a_kernel_without_a_static_autotuner_is_rebuilt_through_triton() -> None:
    from artcache._torch.triton_serve import rebuilt_through_triton

    names = frozenset(kernel_names_in(WRAPPER))
    both = _entry(["triton_poi_fused_add_0", "triton_red_fused_sum_1"])
    assert not rebuilt_through_triton(both, KernelRefs(frozenset({"c1.py", "c2.py"}), names))
    one = _entry(["triton_poi_fused_add_0"])
    assert rebuilt_through_triton(one, KernelRefs(frozenset({"c1.py"}), names))
    assert not rebuilt_through_triton(_entry([]), KernelRefs(frozenset(), frozenset()))


def test_the_triton_cache_variable_is_put_back(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from artcache._torch.triton_serve import _env_restored

    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    with _env_restored("TRITON_CACHE_DIR"):
        os.environ["TRITON_CACHE_DIR"] = "/private/dir"  # what CachingAutotuner.__init__ does
    assert "TRITON_CACHE_DIR" not in os.environ
    monkeypatch.setenv("TRITON_CACHE_DIR", "/users/dir")
    with _env_restored("TRITON_CACHE_DIR"):
        os.environ["TRITON_CACHE_DIR"] = "/private/dir"
    assert os.environ["TRITON_CACHE_DIR"] == "/users/dir"


@dataclass
class _Config:
    """The fields of a Triton ``Config`` that torch's ``hash_configs`` and
    ``triton_config_to_hashable`` read (a CPU-only torch has no Triton to build one)."""

    kwargs: dict[str, int]
    num_warps: int
    num_stages: int = 1


class _Tuner:
    """The attributes of a compiling process's ``CachingAutotuner`` after its first-run
    tuning: one launcher left, compile results with the halved candidate."""

    def __init__(self, filename: str, winner: _Config, results: list[_Config]) -> None:
        self.filename = filename
        self.inductor_meta = {"kernel_name": "triton_red_fused_0"}
        self.launchers = [SimpleNamespace(config=winner)]
        self.compile_results = [SimpleNamespace(config=c) for c in results]


def test_a_halved_block_choice_is_recorded_and_settles_its_kernel_on_the_hit(monkeypatch: pytest.MonkeyPatch) -> None:
    from artcache._torch import triton_tuning as tuning
    from artcache._torch.triton_serve import select_tuned

    rec = tuning.TuningRecorder()
    monkeypatch.setattr(tuning, "_RECORDER", rec)
    bundled = _Config({"XBLOCK": 1, "R0_BLOCK": 2048}, num_warps=16)
    half = _Config({"XBLOCK": 1, "R0_BLOCK": 1024}, num_warps=16)
    tuner = _Tuner("/cold/ab/cab12.py", bundled, [bundled, half])

    tuning._record_scaled_choice(tuner)  # _dynamic_scale_rblock never added candidates
    assert rec.winners == {} and rec.version == 0

    rec.bundled_configs[tuner] = [bundled]  # what the recorder's _dynamic_scale_rblock keeps
    tuning._record_scaled_choice(tuner)
    (key, data), = rec.winners.items()
    assert key.startswith("cab12.py:") and data["R0_BLOCK"] == 2048 and data["num_warps"] == 16
    assert rec.extra_results == {}  # the bundled config won: nothing more to keep

    # A kernel torch gave an AutotuneCache: its save (wrapped) records the winner, not this.
    saved = _Tuner("/cold/cd/ccd34.py", bundled, [bundled, half])
    saved.save_cache_hook = lambda *args, **kwargs: None
    rec.bundled_configs[saved] = [bundled, _Config({"XBLOCK": 2, "R0_BLOCK": 2048}, num_warps=16)]
    tuning._record_scaled_choice(saved)
    assert list(rec.winners) == [key] and rec.extra_results == {}

    # The hit: the bundle holds the static autotuner as it was before the candidate (another
    # directory, the same file name); its one result is the recorded winner.
    stored = SimpleNamespace(filename="/warm/ab/cab12.py", compile_results=[SimpleNamespace(config=_Config(dict(bundled.kwargs), 16))])
    entry = _entry([])
    entry.compiled_fw.result._triton_bundle.static_autotuners = [SimpleNamespace(kernel_name="triton_red_fused_0", kernel=stored)]
    selection = select_tuned(entry, rec.winners, rec.extra_results)
    assert selection.outcome == {"triton_red_fused_0": "tuned"}
    assert selection.settled_files == frozenset({"cab12.py"})

    # Another kernel's record settles nothing here.
    other = select_tuned(entry, {"cother.py:" + key.partition(":")[2]: data}, {})
    assert other.outcome == {"triton_red_fused_0": "single-config"} and not other.settled_files


def test_rblock_scaling_is_skipped_for_settled_kernels_only() -> None:
    from torch._inductor.runtime.triton_heuristics import CachingAutotuner

    from artcache._torch.triton_serve import _rblock_scaling_skipped

    original = CachingAutotuner.__dict__["_dynamic_scale_rblock"]
    settled, other = CachingAutotuner.__new__(CachingAutotuner), CachingAutotuner.__new__(CachingAutotuner)
    settled.filename, other.filename = "/warm/ab/csettled.py", "/warm/cd/cother.py"
    with _rblock_scaling_skipped(CachingAutotuner, frozenset({"csettled.py"})):
        assert settled._dynamic_scale_rblock() is None
        with pytest.raises(AttributeError):  # torch's own ran: it needs a compiled kernel
            other._dynamic_scale_rblock()
    assert CachingAutotuner.__dict__["_dynamic_scale_rblock"] is original
