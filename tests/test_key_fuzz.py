"""Key soundness (in the spirit of Inductor's ConfigFuzzer): every config entry, numerics
flag and compile option that can change the compiled program changes the key.

The config entries are enumerated from the live config modules, so an option that a new
torch adds is covered without editing this test; an entry may only be left out of the key
through ``keys.CONFIG_IGNORE``, which gives the reason.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from artcache._torch import settings as compat
from artcache import keys


def key_now(*, mode: str | None = None, options: dict[str, Any] | None = None) -> str:
    """The key the backend would compute right now for a fixed graph and inputs."""
    return keys.graph_key(
        graph_digest="0" * 64,
        inputs=["tensor float32 ('4',) stride=('1',) cpu grad=False"],
        custom_ops=[],
        configs=compat.config_snapshots(),
        numerics=compat.numerics_flags(cpu_code=True),
        environment={"torch": torch.__version__},
        compile_options={"mode": mode, "options": sorted(options or {})},
    ).key


def other_value(value: Any) -> Any:
    """A value different from ``value`` of a plausible type (validity is not needed: the
    key is computed, nothing is compiled)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 1.0
    if isinstance(value, str):
        return value + "_other"
    if value is None:
        return 7
    if isinstance(value, (list, tuple)):
        return type(value)([*value, "extra"])
    if isinstance(value, dict):
        return {**value, "extra_key": 1}
    if isinstance(value, (set, frozenset)):
        return type(value)({*value, "extra"})
    raise TypeError(type(value))


def _entries(module: Any) -> list[str]:
    return sorted(module.get_config_copy())


INDUCTOR = _entries(torch._inductor.config)
FUNCTORCH = _entries(torch._functorch.config)


@contextlib.contextmanager
def flipped(module: Any, name: str) -> Iterator[None]:
    current = module.get_config_copy()[name]
    with module.patch({name: other_value(current)}):
        yield


def _check(module: Any, name: str) -> None:
    base = key_now()
    with flipped(module, name):
        changed = key_now()
    if keys._ignored(name):
        assert changed == base, f"{name} is on the ignore list but still changes the key"
    else:
        assert changed != base, f"flipping {name} does not change the key"


@pytest.mark.parametrize("name", INDUCTOR)
def test_inductor_config_entry(name: str) -> None:
    _check(torch._inductor.config, name)


@pytest.mark.parametrize("name", FUNCTORCH)
def test_functorch_config_entry(name: str) -> None:
    _check(torch._functorch.config, name)


def test_ignore_list_is_small_and_explained() -> None:
    ignored = [n for n in INDUCTOR + FUNCTORCH if keys._ignored(n)]
    assert len(ignored) < 0.15 * len(INDUCTOR + FUNCTORCH)
    assert all(reason.strip() for reason in keys.CONFIG_IGNORE.values())


def test_custom_pass_without_uuid_is_uncacheable() -> None:
    from artcache.errors import Uncacheable

    with torch._inductor.config.patch(post_grad_custom_post_pass=lambda graph: None):
        with pytest.raises(Uncacheable, match="custom-pass"):
            key_now()


def test_custom_pass_uuid_enters_the_key() -> None:
    from torch._inductor.custom_graph_pass import CustomGraphPass

    class Pass(CustomGraphPass):
        def __init__(self, version: str) -> None:
            self.version = version

        def __call__(self, graph: torch.fx.Graph) -> None:
            return None

        def uuid(self) -> str:
            return self.version

    with torch._inductor.config.patch(post_grad_custom_post_pass=Pass("v1")):
        one = key_now()
    with torch._inductor.config.patch(post_grad_custom_post_pass=Pass("v2")):
        two = key_now()
    assert one != two and one != key_now()


@contextlib.contextmanager
def _numerics(flag: str) -> Iterator[None]:
    saved = {
        "det": torch.are_deterministic_algorithms_enabled(),
        "prec": torch.get_float32_matmul_precision(),
        "dtype": torch.get_default_dtype(),
        "tf32": torch.backends.cuda.matmul.allow_tf32,
        "fp16": torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction,
        "cudnn": torch.backends.cudnn.allow_tf32,
        "cudnn_det": torch.backends.cudnn.deterministic,
        "fill": torch.utils.deterministic.fill_uninitialized_memory,
        "threads": torch.get_num_threads(),
    }
    # The per-backend precision API: the legacy setters below also write it ("none" ->
    # "ieee"), which is a different key, so it is restored as it was.
    backends = [torch.backends, torch.backends.cuda.matmul, torch.backends.cudnn.conv, torch.backends.cudnn.rnn,
                torch.backends.mkldnn.matmul, torch.backends.mkldnn.conv, torch.backends.mkldnn.rnn]
    precisions = [b.fp32_precision for b in backends]
    try:
        if flag == "deterministic":
            torch.use_deterministic_algorithms(not saved["det"])
        elif flag == "matmul_precision":
            torch.set_float32_matmul_precision("medium" if saved["prec"] != "medium" else "high")
        elif flag == "default_dtype":
            torch.set_default_dtype(torch.float64)
        elif flag == "allow_tf32":
            torch.backends.cuda.matmul.allow_tf32 = not saved["tf32"]
        elif flag == "fp16_reduced":
            torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = not saved["fp16"]
        elif flag == "cudnn_tf32":
            torch.backends.cudnn.allow_tf32 = not saved["cudnn"]
        elif flag == "cudnn_deterministic":
            torch.backends.cudnn.deterministic = not saved["cudnn_det"]
        elif flag == "grad_mode":
            with torch.set_grad_enabled(not torch.is_grad_enabled()):
                yield
            return
        elif flag == "fill_uninitialized_memory":
            torch.utils.deterministic.fill_uninitialized_memory = not saved["fill"]
        elif flag == "warn_only":
            torch.use_deterministic_algorithms(saved["det"], warn_only=True)
        elif flag == "mkldnn_precision":
            torch.backends.mkldnn.matmul.fp32_precision = "bf16"
        elif flag == "cpu_threads":
            torch.set_num_threads(saved["threads"] + 1)
        yield
    finally:
        torch.use_deterministic_algorithms(saved["det"])
        torch.utils.deterministic.fill_uninitialized_memory = saved["fill"]
        torch.set_num_threads(saved["threads"])
        torch.set_float32_matmul_precision(saved["prec"])
        torch.set_default_dtype(saved["dtype"])
        torch.backends.cuda.matmul.allow_tf32 = saved["tf32"]
        torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = saved["fp16"]
        torch.backends.cudnn.allow_tf32 = saved["cudnn"]
        torch.backends.cudnn.deterministic = saved["cudnn_det"]
        for backend, precision in zip(backends, precisions):
            backend.fp32_precision = precision


@pytest.mark.parametrize(
    "flag",
    ["deterministic", "matmul_precision", "default_dtype", "allow_tf32", "fp16_reduced", "cudnn_tf32",
     "cudnn_deterministic", "grad_mode", "fill_uninitialized_memory", "warn_only", "mkldnn_precision",
     "cpu_threads"],
)
def test_numerics_flag_changes_key(flag: str) -> None:
    base = key_now()
    with _numerics(flag):
        changed = key_now()
    assert changed != base and key_now() == base


def test_compile_mode_and_options_change_key() -> None:
    base = key_now()
    assert key_now(mode="max-autotune") != base
    assert key_now(options={"epilogue_fusion": False}) != base
    with torch._inductor.config.patch(compat.mode_options("max-autotune", None)):
        tuned = key_now(mode="max-autotune")
    assert tuned != base


def test_environment_changes_key() -> None:
    def env_key(env: dict[str, str]) -> str:
        return keys.graph_key(graph_digest="0" * 64, inputs=[], custom_ops=[], configs={}, numerics={},
                              environment=env, compile_options={}).key

    base = {"torch": "2.13.0", "triton": "3.6.0", "gpu": "sm_90", "cpu_isa": "x86_64:avx2"}
    for name in base:
        assert env_key({**base, name: base[name] + "x"}) != env_key(base), name
