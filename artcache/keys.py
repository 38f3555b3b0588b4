"""Cache keys: a digest of named factors, each kept so that a miss can be explained.

A key is a pure function of the :class:`Factor` values passed in; nothing here reads
global state.  The compile path (``backend.py``) gathers each factor explicitly, once,
through the ``*_factor`` helpers below, and stores every factor's digest in the manifest
(``artcache explain`` diffs them).  Never in a key: paths, hostnames, pids, times.  A
CUDA device index is, through the graph factor (its nodes' example values): the generated
code names the index it was compiled on.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgpack
import torch

from .errors import Uncacheable

log = logging.getLogger(__name__)

# Bump when the key derivation changes meaning, so old entries can never be hit.
KEY_SCHEMA = 1

# Inductor / functorch config entries that cannot change the compiled program, with why.
# Everything else in the live config modules is part of the key (tests/test_key_fuzz.py
# checks that flipping any other entry changes the key).
CONFIG_IGNORE: Mapping[str, str] = {
    "compile_threads": "parallelism of compilation, not its result",
    "worker_start_method": "how compile workers start",
    "worker_log_path": "where compile workers log",
    "fx_graph_cache": "torch's own cache switch; artcache bypasses it",
    "fx_graph_remote_cache": "torch's own cache switch; artcache bypasses it",
    "autotune_local_cache": "where autotune results are cached, not which are chosen",
    "autotune_remote_cache": "where autotune results are cached, not which are chosen",
    "remote_gemm_autotune_cache": "where autotune results are cached, not which are chosen",
    "disable_progress": "progress bar display",
    "verbose_progress": "progress bar display",
    "precompilation_timeout_seconds": "time limit of a compile, not its output",
    "pre_grad_pass_timing": "logging of pass timings",
    "cuda.cutlass_dir": "a path (paths never enter keys); the CUTLASS version is an environment factor",
    "cutlass.cutlass_dir": "a path (paths never enter keys); the CUTLASS version is an environment factor",
    "xpu.cutlass_dir": "a path (paths never enter keys)",
    "force_disable_cudagraph_TESTING_ONLY": "torch test hook",
    "debug": "debug logging",
    "torchinductor_worker_logpath": "a log path",
    "autoheuristic_log_path": "a log path (collecting autoheuristic data, not using it)",
    "aot_inductor.output_path": "where AOTInductor writes its package (export path, a path)",
    "enabled_metric_tables": "metrics logging",
    "profile_bandwidth_regex": "profiling output",
    "profile_bandwidth_output": "profiling output",
    "profile_bandwidth": "adds profiling prints, not different results",
    "benchmark_kernel": "adds benchmarking harness code to the module, not different kernels",
    "benchmark_harness": "adds benchmarking harness code to the module, not different kernels",
    "trace.": "debug tracing and logging (prefix)",
    "_save_config_ignore": "bookkeeping of torch's own cache",
    "_cache_config_ignore_prefix": "bookkeeping of torch's own cache",
    "_cache_config_factory_keys": "bookkeeping of torch's own cache",
    "_profile_var": "profiling switch",
    # functorch
    "enable_autograd_cache": "torch's own AOTAutograd cache switch; artcache bypasses it",
    "enable_remote_autograd_cache": "torch's own AOTAutograd cache switch; artcache bypasses it",
    "bundled_autograd_cache": "torch's own AOTAutograd cache layout",
    "debug_assert": "adds assertions, not different results",
}

# Config entries holding user passes: they change output, so they enter the key through
# their ``uuid()`` (torch's CustomGraphPass protocol); a pass without one is uncacheable.
_PASS_SUFFIX = "_pass"
_PLAIN = (type(None), bool, int, float, str, bytes, list, tuple, dict, set, frozenset)


# Entries under an ignored prefix that still change the entry, with why.
CONFIG_KEEP: Mapping[str, str] = {
    "trace.provenance_tracking_level": "decides whether provenance data is stored in the compiled graph (torch keys it too)",
}


def _ignored(name: str) -> bool:
    if name in CONFIG_KEEP:
        return False
    return name in CONFIG_IGNORE or any(name.startswith(p) for p in CONFIG_IGNORE if p.endswith("."))


@dataclass(frozen=True)
class Factor:
    """One named input of the key: its digest and a short human-readable form."""

    name: str
    digest: str
    detail: str = ""


@dataclass(frozen=True)
class CacheKey:
    key: str
    factors: tuple[Factor, ...]

    def digests(self) -> dict[str, str]:
        return {f.name: f.digest for f in self.factors}

    def log(self) -> None:
        for f in self.factors:
            log.debug("artcache key %s: factor %-12s %s %s", self.key[:16], f.name, f.digest[:16], f.detail)


def canonical_bytes(value: Any) -> bytes:
    """Deterministic bytes of plain data (dicts sorted by key; floats by their repr)."""
    return msgpack.packb(_canonical(value), use_bin_type=True)


def _canonical(value: Any) -> Any:
    if isinstance(value, Mapping):
        return [[_canonical(k), _canonical(v)] for k, v in sorted(value.items(), key=lambda kv: repr(kv[0]))]
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_canonical(v) for v in value), key=repr)
    if isinstance(value, float):
        return repr(value) if (math.isnan(value) or math.isinf(value)) else value
    if value is None or isinstance(value, (bool, int, str, bytes)):
        return value
    raise Uncacheable("unhashable-factor", f"{type(value).__qualname__} is not plain data")


def factor(name: str, value: Any, detail: str = "") -> Factor:
    digest = hashlib.sha256(canonical_bytes([name, value])).hexdigest()
    return Factor(name, digest, detail)


def make_key(factors: Iterable[Factor]) -> CacheKey:
    ordered = tuple(sorted(factors, key=lambda f: f.name))
    names = [f.name for f in ordered]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate key factors: {names}")
    h = hashlib.sha256(f"artcache-key-v{KEY_SCHEMA}\n".encode())
    for f in ordered:
        h.update(f"{f.name}={f.digest}\n".encode())
    return CacheKey(h.hexdigest(), ordered)


# How many entries with different shape guards one key can hold (see guard_variant).
MAX_GUARD_VARIANTS = 4


def guard_variant(key: str, slot: int) -> str:
    """The key under which the ``slot``-th guard variant of ``key`` is filed (slot 0 is
    ``key`` itself).

    One graph can compile to different programs for different inputs: with dynamic shapes,
    a compile specializes on facts about the sizes (a slice bound, a 0/1 size) and records
    them as shape guards, which every factor of the key leaves out because they are known
    only after the compile.  torch's FX graph cache keeps a list of such entries per key;
    here each variant gets a slot of its own, derived from the key, looked up in order until
    one's guards accept the inputs.  Saving takes the first slot that was absent; two
    processes racing for a slot cost a later miss, never a wrong program, since every
    variant's guards are checked before it is used.
    """
    if slot == 0:
        return key
    return hashlib.sha256(f"artcache-guard-variant\n{key}\n{slot}".encode()).hexdigest()


def pass_uuid(custom_pass: Any, where: str) -> str:
    """A custom pass's ``uuid()``, torch's CustomGraphPass protocol.  Without one, or with
    an empty one (torch bypasses its own cache then too), nothing identifies what the pass
    does to the code: the graph is uncacheable."""
    uuid = getattr(custom_pass, "uuid", None)
    if not callable(uuid):
        raise Uncacheable("custom-pass", f"{where} is set to a pass without uuid()")
    value = uuid()
    if not value:
        raise Uncacheable("custom-pass", f"{where} is set to a pass whose uuid() is {value!r}")
    return str(value)


def config_values(config: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a config snapshot (``module.get_config_copy()``) that enter the key.

    Custom passes are replaced by their ``uuid()``; a pass without one is uncacheable,
    because nothing else identifies what it does.
    """
    out: dict[str, Any] = {}
    for name, value in config.items():
        if _ignored(name):
            continue
        if callable(value) or (name.endswith(_PASS_SUFFIX) and not isinstance(value, _PLAIN)):
            value = ["custom-pass", pass_uuid(value, f"config {name}")]
        try:
            canonical_bytes(value)
        except Uncacheable as exc:
            raise Uncacheable("config-value", f"config {name}: {exc.detail}") from exc
        out[name] = value
    return out


# -- the factors of a compiled graph ------------------------------------------------------
# Op namespaces whose implementations ship with torch (covered by the torch version factor).
_BUILTIN_NAMESPACES = frozenset({"aten", "prims", "higher_order", "inductor", "_c10d_functional", "c10d_functional",
                                 "_dtensor", "quantized", "debugprims", "rngprims", "profiler"})


def input_specs(gm: Any, example_inputs: Any) -> list[str]:
    """One line per graph input: dtype, symbolic shape and stride, device type, grad.

    Read from the placeholders' fake values, so a dynamic dimension appears as its symbol
    (``s0``) and not as this call's size: one entry then serves every size its guards accept.
    """
    specs = []
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for index, value in enumerate(example_inputs):
        meta = placeholders[index].meta.get("example_value") if index < len(placeholders) else None
        value = meta if meta is not None else value
        if hasattr(value, "dtype") and hasattr(value, "shape"):
            stride = tuple(str(s) for s in value.stride()) if value.layout == torch.strided else ()
            specs.append(
                f"tensor {str(value.dtype).removeprefix('torch.')} {tuple(str(s) for s in value.shape)} "
                f"stride={stride} {value.device.type} grad={bool(value.requires_grad)}"
            )
        elif isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            specs.append(f"{type(value).__name__} {value.node.expr}")
        else:
            specs.append(f"{type(value).__name__} {value!r}")
    return specs


def custom_op_factor_value(gm: Any, op_code: Any) -> list[list[str]]:
    """Per non-torch op the graph calls: its name, schema, and a digest of each piece of
    user code that tracing or compiling it can run (``op_code(op)`` gathers them by role
    from torch's registries; :func:`artcache.code_digest.code_digest` digests each, with
    the module-level values and closures it reads).

    A custom op's implementation is user code the torch version does not pin; if artcache
    cannot identify it, the graph is uncacheable rather than risk serving a stale kernel.
    """
    from .code_digest import code_digest

    out = []
    seen = set()
    for module in gm.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            target = node.target
            if node.op != "call_function":
                continue
            if isinstance(target, torch._ops.OpOverloadPacket):  # every overload it may resolve to
                overloads = [getattr(target, name) for name in target.overloads()]
            elif isinstance(target, torch._ops.OpOverload):
                overloads = [target]
            else:
                continue
            for op in overloads:
                if op.namespace in _BUILTIN_NAMESPACES or op in seen:
                    continue
                seen.add(op)
                digests = [f"{role}={code_digest(value)}" for role, value in sorted(op_code(op).items())]
                out.append([str(op), *digests])
    return sorted(out)


def graph_key(
    *,
    graph_digest: str,
    inputs: list[str],
    custom_ops: list[list[str]],
    configs: Mapping[str, Mapping[str, Any]],
    numerics: Mapping[str, Any],
    environment: Mapping[str, str],
    compile_options: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> CacheKey:
    """The key of one compiled graph: a pure function of what is passed in.  ``extra``:
    further factors by name (``artcache._torch.key_inputs.extra_factors``)."""
    factors = [
        Factor("graph", graph_digest, "canonical FX graph"),
        factor("inputs", inputs, f"{len(inputs)} inputs"),
        factor("custom_ops", custom_ops, ", ".join(op[0] for op in custom_ops)),
        *ambient_factors(configs=configs, numerics=numerics, environment=environment, compile_options=compile_options),
    ]
    factors += [factor(name, value) for name, value in sorted((extra or {}).items())]
    return make_key(factors)


def ambient_factors(
    *,
    configs: Mapping[str, Mapping[str, Any]],
    numerics: Mapping[str, Any],
    environment: Mapping[str, str],
    compile_options: Mapping[str, Any],
) -> list[Factor]:
    """The factors of a graph key that come from the process, not from the graph: a
    precompiled frame (``artcache.precompile``) recomputes them to check that the graph
    entry it names still fits this process."""
    return [
        factor("numerics", dict(numerics)),
        factor("environment", dict(environment), f"torch {environment.get('torch', '?')}"),
        factor("options", dict(compile_options)),
        *(factor(f"{name}_config", config_values(values)) for name, values in sorted(configs.items())),
    ]


# -- every input of torch's own cache keys, and what covers it here ---------------------
# torch's FX graph key (``FxGraphHashDetails``) and AOTAutograd key
# (``AOTAutogradCacheDetails``), by attribute name; ``fx_kwargs.*``, ``system_info.*`` and
# ``aot_config.*`` name the parts of those attributes.  Each value is either the factors
# (comma-separated; ``factor.field`` for one value inside a factor) whose values include
# that input, or ``ignored: <why>``.  Config modules (``inductor_config``,
# ``inductor_config_comms``, ``autograd_config``) map entry by entry to their config
# factor, except the entries ``CONFIG_IGNORE`` names.  tests/test_key_completeness.py
# enumerates torch's inputs on the installed torch, fails on one missing here, and flips
# each covered input to check that the key changes.
TORCH_KEY_COUNTERPARTS: Mapping[str, str] = {
    # FxGraphHashDetails
    "gm": "graph",
    "example_inputs": "inputs",
    "cache_key_tag": "cache_key_tag",
    "fx_kwargs.cudagraphs": "inductor_config.triton.cudagraphs",
    "fx_kwargs.boxed_forward_device_index": "ignored: a device index, and always empty when torch keys it (the first run fills it)",
    "fx_kwargs.cpp_wrapper": "inductor_config.cpp_wrapper",
    "fx_kwargs.fx_wrapper": "inductor_config.fx_wrapper",
    "fx_kwargs.extern_node_serializer": "ignored: only AOTInductor's export sets it; compile_fx, the compiler artcache calls, passes none",
    "fx_kwargs.get_decomp_fn": "environment.torch, custom_ops",
    "fx_kwargs.is_backward": "inputs, numerics.grad_enabled",
    "fx_kwargs.is_inference": "inputs, numerics.grad_enabled",
    "fx_kwargs.layout_opt": "graph, inductor_config.layout_optimization",
    "fx_kwargs.static_input_idxs": "static_inputs",
    "user_defined_triton_source": "user_triton_kernels",
    # Inductor's generated code names the CUDA index it was compiled on (device guards,
    # streams, allocations, the launchers' device), so an entry of cuda:0 must not serve
    # cuda:3.  The graph factor holds the index: the pickler writes every node's example
    # value with its device, index included, for graphs with or without tensor inputs.
    "default_cuda_device_index": "graph",
    "deterministic_algorithms_settings": "numerics.deterministic, numerics.deterministic_warn_only, numerics.fill_uninitialized_memory",
    "cpp_runtime_thread_count": "numerics.cpu_threads",
    "provenance_tracking_level": "inductor_config.trace.provenance_tracking_level",
    "default_dtype": "numerics.default_dtype",
    "cuda_matmul_settings": "numerics.cuda_matmul_fp32_precision, numerics.cuda_fp16_reduced, numerics.cuda_bf16_reduced",
    "cudagraph_override": "cudagraph_annotation",
    "cudagraph_annotation": "cudagraph_annotation",
    "torch_version": "environment.torch, environment.torch_git",
    "system_info.hash": "environment.cuda, environment.hip, environment.triton, environment.gpu",
    "system_info.device.name": "environment.gpu",  # the compute capability: kernels are valid across SKUs of one
    "system_info.version.triton": "environment.triton",
    "system_info.version.cuda": "environment.cuda",
    "system_info.version.hip": "environment.hip",
    "inductor_config": "inductor_config",
    "inductor_config_comms": "inductor_comms_config",
    "pre_grad_custom_pass": "inductor_config.pre_grad_custom_pass",
    "post_grad_custom_pre_pass": "inductor_config.post_grad_custom_pre_pass",
    "post_grad_custom_post_pass": "inductor_config.post_grad_custom_post_pass",
    "joint_custom_pre_pass": "inductor_config.joint_custom_pre_pass",
    "joint_custom_post_pass": "inductor_config.joint_custom_post_pass",
    "_pre_fusion_custom_pass": "inductor_config._pre_fusion_custom_pass",
    "_post_fusion_custom_pass": "inductor_config._post_fusion_custom_pass",
    "_fuse_ddp_communication_passes": "inductor_config._fuse_ddp_communication_passes",
    "_custom_partitioner_fn": "inductor_config.custom_partitioner_fn",
    "precompile_enabled": "ignored: functorch's bundled_autograd_cache, which artcache's capture always turns on, whatever the user's value",
    "custom_backend_passes": "custom_backends",
    "custom_backend_codegen_configs": "custom_backends",
    "var_to_hint_override": "shape_hints",
    # AOTAutogradCacheDetails
    "grad_enabled": "numerics.grad_enabled",
    "autocast_state": "autocast",
    "deterministic_algorithms": "numerics.deterministic",
    "autograd_config": "functorch_config",
    "triton_kernel_source_codes": "user_triton_kernels",
    "saved_tensors_hooks_fx_wrap_cache_hashes": "saved_tensors_hooks",
    "sac_context_fn_hashes": "checkpoint_policies",
    "region_activation_memory_budget": "graph",  # a node's "custom" metadata, part of the graph digest
    "custom_estimator_solver_uuids": "functorch_config.activation_memory_budget_runtime_estimator, functorch_config.activation_memory_budget_solver",
    "aot_config.num_params_buffers": "graph",  # lifted parameters and buffers are get_attr nodes, keyed by spec
    "aot_config.aot_id": "ignored: a per-process counter (torch leaves it out of its key too)",
    "aot_config.keep_inference_input_mutations": "ignored: compile_fx, the compiler artcache calls, always passes True",
    "aot_config.is_export": "ignored: always False in compile_fx",
    "aot_config.no_tangents": "ignored: always False in compile_fx",
    "aot_config.dynamic_shapes": "inputs",  # a dynamic size is its symbol in the input specs
    "aot_config.aot_autograd_arg_pos_to_source": "ignored: Dynamo's names for the inputs, read for guard and log messages; static marks are keyed as static_inputs",
    "aot_config.static_input_indices": "static_inputs",
    "aot_config.enable_log": "ignored: logging",
    "aot_config.pre_dispatch": "ignored: always False in compile_fx",
    "aot_config.precompile_backend_id": "ignored: set only by torch's own precompile, never on a backend call",
}
