"""torch's global settings as artcache reads them: Inductor and functorch configs,
``mode=``/``options=``, numerics switches, and the compile entry point itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch


def compile_fx(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> Callable[..., Any]:
    from torch._inductor.compile_fx import compile_fx as inductor_compile_fx

    return inductor_compile_fx(gm, list(example_inputs))  # type: ignore[no-any-return]


def mode_options(mode: str | None, options: Mapping[str, Any] | None, dynamic: bool | None = None) -> dict[str, Any]:
    """The Inductor config patch that ``torch.compile(mode=..., options=...)`` applies."""
    from torch._inductor import list_mode_options

    patch: dict[str, Any] = dict(list_mode_options(mode, dynamic)) if mode else {}
    patch.update(options or {})
    return patch


def config_snapshots() -> dict[str, dict[str, Any]]:
    """The live Inductor and functorch configs (what a compile right now would use)."""
    return {
        "inductor": torch._inductor.config.get_config_copy(),
        "functorch": torch._functorch.config.get_config_copy(),
    }


# Per-backend float32 precision settings (torch >= 2.9's API).  A backend's "none"
# inherits from torch.backends.fp32_precision, whose "none" is full precision ("ieee"), so
# the key records each backend's *effective* precision: a process that set the default
# explicitly (set_float32_matmul_precision("highest") writes "ieee" where it read "none")
# computes the same and keys the same.  Once the per-backend API is used, the legacy
# getters (get_float32_matmul_precision, allow_tf32) may raise, and they only restate
# these values, so they are read only on a torch without the new API.
_FP32_BACKENDS = (
    ("cuda_matmul_fp32_precision", lambda: torch.backends.cuda.matmul.fp32_precision),
    ("cudnn_conv_fp32_precision", lambda: torch.backends.cudnn.conv.fp32_precision),
    ("cudnn_rnn_fp32_precision", lambda: torch.backends.cudnn.rnn.fp32_precision),
    ("mkldnn_matmul_fp32_precision", lambda: torch.backends.mkldnn.matmul.fp32_precision),
    ("mkldnn_conv_fp32_precision", lambda: torch.backends.mkldnn.conv.fp32_precision),
    ("mkldnn_rnn_fp32_precision", lambda: torch.backends.mkldnn.rnn.fp32_precision),
)


def _fp32_precisions() -> dict[str, Any]:
    root = _read(lambda: torch.backends.fp32_precision)
    inherited = root if root not in ("none", None) else "ieee"
    out = {}
    for name, getter in _FP32_BACKENDS:
        value = _read(getter)
        out[name] = inherited if value == "none" else value
    return out


def _read(getter: Callable[[], Any]) -> Any:
    """A global setting's value, or a marker naming why it could not be read: torch's
    getters raise RuntimeError for some combinations of settings (the legacy and per-backend
    precision APIs mixed), and a torch without the attribute raises AttributeError."""
    try:
        value = getter()
    except (RuntimeError, AttributeError) as exc:
        return f"unreadable: {type(exc).__name__}"
    return value if isinstance(value, (bool, int, float, str)) or value is None else str(value)


def numerics_flags(*, cpu_code: bool) -> dict[str, Any]:
    """Global switches that change what compiled kernels compute.

    ``cpu_code``: whether the graph may run as Inductor C++ code.  That code sizes its
    per-thread reduction buffers for the thread count at compile time, so a different
    ``torch.get_num_threads()`` needs another program (torch's own FX graph key includes it
    for the same reason); a graph that runs only on a GPU does not depend on it.
    """
    cuda = torch.backends.cuda.matmul
    flags: dict[str, Any] = {
        "deterministic": _read(torch.are_deterministic_algorithms_enabled),
        "deterministic_warn_only": _read(torch.is_deterministic_algorithms_warn_only_enabled),
        # Under deterministic algorithms, empty() and friends are filled (NaN, or the max
        # integer) inside the generated kernels: the fill is baked in.
        "fill_uninitialized_memory": _read(lambda: torch.utils.deterministic.fill_uninitialized_memory),
        "default_dtype": _read(lambda: str(torch.get_default_dtype())),
        "grad_enabled": _read(torch.is_grad_enabled),
        "cpu_capability": _read(torch.backends.cpu.get_cpu_capability),
        "cuda_fp16_reduced": _read(lambda: bool(cuda.allow_fp16_reduced_precision_reduction)),
        "cuda_bf16_reduced": _read(lambda: bool(cuda.allow_bf16_reduced_precision_reduction)),
        "cudnn_deterministic": _read(lambda: bool(torch.backends.cudnn.deterministic)),
    }
    if hasattr(torch.backends, "fp32_precision"):
        flags.update(_fp32_precisions())
    else:
        flags["float32_matmul_precision"] = _read(torch.get_float32_matmul_precision)
        flags["cuda_allow_tf32"] = _read(lambda: bool(cuda.allow_tf32))
        flags["cudnn_allow_tf32"] = _read(lambda: bool(torch.backends.cudnn.allow_tf32))
    if cpu_code:
        flags["cpu_threads"] = _cpp_thread_count()
    return flags


def _cpp_thread_count() -> int | str:
    """The thread count Inductor's C++ code is generated for (``parallel_num_threads``
    in torch/_inductor/utils.py): ``cpp.threads`` when set, else the runtime's count.
    With ``cpp.dynamic_threads`` the code reads the count at run time instead."""
    cpp = torch._inductor.config.cpp
    if cpp.dynamic_threads:
        return "dynamic"
    return int(cpp.threads) if cpp.threads >= 1 else torch.get_num_threads()


def may_run_cpu_code(gm: torch.fx.GraphModule, example_inputs: Sequence[Any]) -> bool:
    """Whether compiling ``gm`` may generate C++ code for the CPU: a CPU tensor among the
    inputs or among any node's values (the check of torch's FX graph key,
    ``FxGraphHashDetails._may_generate_cpu_cpp_code``), or no tensor anywhere to tell."""
    seen_tensor = False
    values: list[Any] = list(example_inputs)
    for module in gm.modules():
        if isinstance(module, torch.fx.GraphModule):
            for node in module.graph.nodes:
                values.extend(node.meta.get(k) for k in ("val", "example_value"))
    for value in values:
        for leaf in torch.utils._pytree.tree_leaves(value):
            if isinstance(leaf, torch.Tensor):
                seen_tensor = True
                if leaf.device.type == "cpu":
                    return True
    return not seen_tensor


def config_overrides() -> dict[str, dict[str, Any]]:
    """Config entries that differ from their defaults, per module (for ``artcache explain``:
    a key factor names only a digest; these name the values behind it)."""
    out: dict[str, dict[str, Any]] = {}
    for name, module in (("inductor", torch._inductor.config), ("functorch", torch._functorch.config)):
        is_default = getattr(module, "_is_default", None)
        values = module.get_config_copy()
        out[name] = {k: v for k, v in values.items() if is_default is not None and not is_default(k)}
    return out


def inductor_config_patch(patch: Mapping[str, Any]) -> contextlib.AbstractContextManager[Any]:
    """``torch._inductor.config.patch(patch)``: how ``mode=``/``options=`` apply."""
    return torch._inductor.config.patch(patch)  # type: ignore[no-any-return]


def cudagraphs_enabled() -> bool:
    return bool(torch._inductor.config.triton.cudagraphs)
