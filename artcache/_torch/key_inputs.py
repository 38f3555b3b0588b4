"""Key inputs read from torch internals that torch's own FX graph and AOTAutograd cache
keys hash and that artcache's graph, input, config and numerics factors do not reach.

Each function returns plain data for one key factor (``keys.graph_key(extra=...)``).
``keys.TORCH_KEY_COUNTERPARTS`` maps every input of torch's keys to the factor that
covers it; ``tests/test_key_completeness.py`` checks that table against the installed
torch and flips each input to see the key change.  Checked on torch 2.13
(``FxGraphHashDetails`` in torch/_inductor/codecache.py, ``AOTAutogradCacheDetails``
in torch/_functorch/_aot_autograd/autograd_cache.py); every read tolerates an attribute
that another version lacks.

Nothing here reads a device index: the graph factor already holds the CUDA index of
every tensor the graph touches (its nodes' example values), which the generated code
names too.
"""

from __future__ import annotations

import importlib
import itertools
import sys
from collections.abc import Iterator
from typing import Any

import torch

from ..code_digest import code_digest
from ..keys import pass_uuid


def _graph_modules(gm: torch.fx.GraphModule) -> Iterator[torch.fx.GraphModule]:
    for module in gm.modules():
        if isinstance(module, torch.fx.GraphModule):
            yield module


def autocast_state() -> dict[str, str]:
    """The dtype of every device type under autocast right now.  AOTAutograd traces the
    graph under the ambient autocast, so the casts it inserts are baked into the program
    (torch's ``autocast_state``)."""
    supported = getattr(torch._C, "_autocast_supported_devices", lambda: ["cpu", "cuda"])
    return {device: str(torch.get_autocast_dtype(device)).removeprefix("torch.")
            for device in sorted(supported()) if torch.is_autocast_enabled(device)}


def cache_key_tag() -> str:
    """``torch.compiler.config.cache_key_tag``: a user's explicit partition of compile
    caches (torch's ``cache_key_tag``), honoured here too."""
    config = getattr(torch.compiler, "config", None)
    return str(getattr(config, "cache_key_tag", "") or "")


def static_inputs(gm: torch.fx.GraphModule) -> list[list[Any]]:
    """Graph inputs Dynamo marked static (parameters, ``mark_static_address``): AOTAutograd
    reads the mark from the placeholder's ``tensor_dict`` (``static_input_indices``), and
    CUDA graphs then read those inputs in place instead of copying them at every call.
    ``tensor_dict`` is volatile metadata, left out of the graph digest."""
    out = []
    for position, node in enumerate(gm.graph.find_nodes(op="placeholder")):
        mark = (node.meta.get("tensor_dict") or {}).get("_dynamo_static_input_type")
        if mark:
            out.append([position, str(mark)])
    return out


def shape_hint_overrides() -> dict[str, int]:
    """Hints the user gave for dynamic sizes (``mark_dynamic(..., hint_override=)``): the
    graph's symbols name the sizes, not these hints, which steer Inductor's choices
    (torch's ``var_to_hint_override``).  Read from the shape env of the trace in progress."""
    context = torch._guards.TracingContext.try_get()
    fake_mode = getattr(context, "fake_mode", None) if context is not None else None
    shape_env = getattr(fake_mode, "shape_env", None)
    overrides = getattr(shape_env, "var_to_hint_override", None) or {}
    return {str(symbol): int(value) for symbol, value in sorted(overrides.items(), key=lambda kv: str(kv[0]))}


def cudagraph_annotation(gm: torch.fx.GraphModule) -> list[Any] | None:
    """A region's CUDA-graph override set in user code, kept by Dynamo in ``gm.meta``
    (which the graph digest leaves out): forward and backward setting, or None."""
    annotation = gm.meta.get("cudagraph_annotation")
    if annotation is None:
        return None
    return [getattr(annotation, "fwd", None), getattr(annotation, "bwd", None)]


def checkpoint_policies(gm: torch.fx.GraphModule) -> list[str]:
    """Selective activation checkpointing: the ``context_fn`` of each checkpointed region
    decides which activations are saved and which recomputed.  Dynamo keeps it in the
    region's ``GraphModule.meta``; torch keys on a hash the user must attach, artcache on
    a digest of the function's code and the values it reads."""
    return [code_digest(fn) for module in _graph_modules(gm)
            if (fn := module.meta.get("_checkpoint_context_fn")) is not None]


def saved_tensors_hooks(gm: torch.fx.GraphModule) -> list[str]:
    """Saved-tensor hooks given as GraphModules are traced into the program: Dynamo
    installs them as ``saved_tensors_hooks_pack_0`` / ``_unpack_0`` submodules that no node
    calls (so the graph digest, which follows the nodes, does not see them) and
    AOTAutograd inlines them into the forward and backward."""
    from ..pickler import hash_object

    return [f"{name}={hash_object(getattr(gm, name))}"
            for name in ("saved_tensors_hooks_pack_0", "saved_tensors_hooks_unpack_0") if hasattr(gm, name)]


def user_triton_kernels(gm: torch.fx.GraphModule) -> list[list[Any]]:
    """Source of user-written Triton kernels the graph launches, with their constant
    arguments and autotuning configs (the graph names them only by side-table indices),
    and of the kernels of custom ops built with ``torch.library.triton_op``."""
    from torch.utils._triton import has_triton_package

    if not has_triton_package():
        return []
    from torch._higher_order_ops.triton_kernel_wrap import (
        kernel_side_table,
        triton_kernel_wrapper_functional,
        triton_kernel_wrapper_mutation,
    )

    found: list[tuple[str, Any, Any]] = []  # (role, kernel, constant args)
    for module in _graph_modules(gm):
        for node in itertools.chain(
            module.graph.find_nodes(op="call_function", target=triton_kernel_wrapper_functional),
            module.graph.find_nodes(op="call_function", target=triton_kernel_wrapper_mutation),
        ):
            kernel = kernel_side_table.get_kernel(node.kwargs["kernel_idx"])
            found.append(("launch", kernel, kernel_side_table.get_constant_args(node.kwargs["constant_args_idx"])))
        # find_nodes(op="call_function") needs a target before torch 2.13: walk the nodes.
        for node in module.graph.nodes:
            if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
                for kernel in _op_triton_kernels(node.target):
                    found.append((f"op {node.target._name}", kernel, None))
    if not found:
        return []
    from torch._inductor.codegen.wrapper import user_defined_triton_kernel_transitive_closure_source_code
    from triton.runtime.autotuner import Autotuner

    out = []
    for role, kernel, constants in found:
        configs = None
        if isinstance(kernel, Autotuner):
            configs = sorted(sorted(str(kv) for kv in c.all_kwargs().items()) for c in kernel.configs or ())
            kernel = kernel.fn
        source = user_defined_triton_kernel_transitive_closure_source_code(kernel)
        out.append([role, source, repr(constants), repr(configs)])
    return out


def _op_triton_kernels(op: Any) -> list[Any]:
    library_triton = sys.modules.get("torch._library.triton")
    get = getattr(library_triton, "get_triton_kernels_for_op", None)
    return list(get(op._name)) if get is not None else []


def custom_backends() -> dict[str, Any]:
    """Custom passes and codegen configs registered per device with
    ``register_backend_for_device`` (torch's ``custom_backend_passes`` and
    ``custom_backend_codegen_configs``).  Read only where Inductor's codegen registry is
    loaded: a process that never imported it cannot have registered anything there."""
    common = sys.modules.get("torch._inductor.codegen.common")
    if common is None:
        return {}
    out: dict[str, Any] = {}
    for device, custom_pass in sorted(getattr(common, "custom_backend_passes", {}).items()):
        if custom_pass is None:
            continue
        out[f"pass {device}"] = pass_uuid(custom_pass, f"the custom pass registered for {device}")
    for device, config in sorted(getattr(common, "custom_backend_codegen_configs", {}).items()):
        if config is not None:
            values = config.save_config_portable(ignore_private_configs=False)
            out[f"codegen config {device}"] = {k: values[k] for k in sorted(values)}
    return out


def extra_factors(gm: torch.fx.GraphModule) -> dict[str, Any]:
    """Factor name -> value, for ``keys.graph_key(extra=...)``."""
    return {
        **ambient_extra_factors(),
        "static_inputs": static_inputs(gm),
        "cudagraph_annotation": cudagraph_annotation(gm),
        "checkpoint_policies": checkpoint_policies(gm),
        "saved_tensors_hooks": saved_tensors_hooks(gm),
        "user_triton_kernels": user_triton_kernels(gm),
    }


def ambient_extra_factors() -> dict[str, Any]:
    """The extra factors read from the process alone (no graph needed)."""
    return {
        "autocast": autocast_state(),
        "cache_key_tag": cache_key_tag(),
        "shape_hints": shape_hint_overrides(),
        "custom_backends": custom_backends(),
    }


def extra_configs() -> dict[str, dict[str, Any]]:
    """Config modules torch's FX graph key saves besides Inductor's (``config_comms``:
    how collectives are reordered and overlapped), as ``keys.graph_key(configs=...)``
    takes them."""
    try:
        comms = importlib.import_module("torch._inductor.config_comms")
    except ImportError:  # a torch without it
        return {}
    return {"inductor_comms": comms.get_config_copy()}
