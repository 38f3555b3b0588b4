"""Key completeness against torch's own cache keys, on the installed torch.

torch's FX graph cache keys on the attributes of ``FxGraphHashDetails`` and its AOTAutograd
cache on those of ``AOTAutogradCacheDetails``.  These tests enumerate them (the attributes
of instances built during a real compile, plus every ``self.<name> =`` in the two classes'
source, so conditionally set ones count too), with the parts of ``fx_kwargs``, the system
info, the AOT config and the configs they save, and check each against
``artcache.keys.TORCH_KEY_COUNTERPARTS``: a torch that adds an input fails here until the
table says what covers it.  Then each covered input is changed as a user would change it
(a context manager, a setting, a different program) and artcache's key, computed by the
backend on a real Dynamo graph, must change.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import inspect
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

import artcache
from artcache._torch import settings as compat
from artcache._torch import key_inputs
from artcache import keys
from artcache.backend import ArtcacheBackend
from artcache.environment import fingerprint

# Parents expanded into named parts below; the table names the parts.
_EXPANDED = ("fx_kwargs", "system_info", "aot_config")
# system_info parts torch adds only where a GPU is visible (CacheBase.get_system).
_GPU_SYSTEM_INFO = ("system_info.device.name", "system_info.version.triton", "system_info.version.cuda",
                    "system_info.version.hip")
_GPU_ENVIRONMENT = ("triton", "gpu")


class _Recorded(Exception):
    """Ends the compile once torch built its FX graph key details: nothing more is needed."""


def _assigned_attributes(cls: type) -> set[str]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    names = set()
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        for target in targets:
            if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
                names.add(target.attr)
    return names


def _flatten(prefix: str, value: Any) -> set[str]:
    if isinstance(value, dict):
        return set().union(*(_flatten(f"{prefix}.{k}", v) for k, v in value.items())) if value else {prefix}
    return {prefix}


@functools.cache
def torch_key_inputs() -> tuple[frozenset[str], dict[str, Any]]:
    """Names of every input of torch's two keys, and one live details instance per class."""
    from torch._functorch._aot_autograd import autograd_cache
    from torch._functorch._aot_autograd.schemas import CacheableAOTConfig
    from torch._inductor import codecache

    instances: dict[str, Any] = {}
    originals = {cls: cls.__init__ for cls in (codecache.FxGraphHashDetails, autograd_cache.AOTAutogradCacheDetails)}

    def recording(original: Callable[..., None]) -> Callable[..., None]:
        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            original(self, *args, **kwargs)
            # AOTAutogradCacheDetails runs FxGraphHashDetails.__init__ through super():
            # record the finished object only.
            if type(self).__init__ is init or type(self) is codecache.FxGraphHashDetails:
                instances.setdefault(type(self).__name__, self)
            if type(self) is codecache.FxGraphHashDetails:
                raise _Recorded

        return init

    x = torch.randn(4, 4)
    w = torch.randn(4, 4, requires_grad=True)
    torch._dynamo.reset()
    try:
        for cls, original in originals.items():
            cls.__init__ = recording(original)
        with torch._inductor.config.patch(fx_graph_cache=True), torch._functorch.config.patch(enable_autograd_cache=True):
            with contextlib.suppress(Exception):
                torch.compile(lambda a, b: (a @ b).relu().sum(), backend="inductor")(x, w)
    finally:
        for cls, original in originals.items():
            cls.__init__ = original
        torch._dynamo.reset()
    assert set(instances) == {"FxGraphHashDetails", "AOTAutogradCacheDetails"}, instances.keys()

    names: set[str] = set()
    for cls in originals:
        names |= _assigned_attributes(cls)
    for instance in instances.values():
        names |= set(vars(instance))
        names |= {f"fx_kwargs.{k}" for k in instance.fx_kwargs}
    names |= _flatten("system_info", codecache.CacheBase.get_system())
    names |= {f"aot_config.{f.name}" for f in dataclasses.fields(CacheableAOTConfig)}
    names -= set(_EXPANDED)
    return frozenset(names), instances


def test_every_torch_key_input_has_a_counterpart() -> None:
    names, _ = torch_key_inputs()
    missing = sorted(names - set(keys.TORCH_KEY_COUNTERPARTS))
    assert not missing, f"inputs of torch's cache keys with no counterpart in keys.TORCH_KEY_COUNTERPARTS: {missing}"


def test_no_counterpart_for_an_input_torch_does_not_have() -> None:
    if tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) < (2, 13):
        pytest.skip("the table follows torch 2.13's keys; an older torch lacks some of their inputs")
    names, _ = torch_key_inputs()
    stale = sorted(set(keys.TORCH_KEY_COUNTERPARTS) - names - set(_GPU_SYSTEM_INFO))
    assert not stale, f"TORCH_KEY_COUNTERPARTS names inputs this torch's keys lack: {stale}"


# -- artcache's key, computed by the backend on a real Dynamo graph ---------------------
def backend_keys(fn: Callable[..., Any], *inputs: Any, **compile_kwargs: Any) -> list[keys.CacheKey]:
    """The key of every graph Dynamo captures from ``fn(*inputs)``, computed inside the
    backend call (as on a real compile, with the trace's context active); nothing compiles."""
    backend = ArtcacheBackend(artcache.Cache(store="memory://"))
    found: list[keys.CacheKey] = []

    def record(gm: torch.fx.GraphModule, example_inputs: Any) -> Any:
        found.append(backend._key(gm, example_inputs)[0])
        return gm.forward

    torch._dynamo.reset()
    try:
        torch.compile(fn, backend=record, **compile_kwargs)(*inputs)
    finally:
        torch._dynamo.reset()
    assert found, "Dynamo captured no graph"
    return found


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a @ b).sin().sum()


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(8, 4, generator=gen), torch.randn(4, 4, generator=gen, requires_grad=True)


def key_of(fn: Callable[..., Any] = _matmul, inputs: tuple[Any, ...] | None = None, **compile_kwargs: Any) -> str:
    return "/".join(k.key for k in backend_keys(fn, *(inputs or _inputs()), **compile_kwargs))


def test_counterparts_name_real_factors_and_values() -> None:
    factors = {f.name for f in backend_keys(_matmul, *_inputs())[0].factors}
    fields = {
        "numerics": set(compat.numerics_flags(cpu_code=True)),
        "environment": set(fingerprint()) | set(_GPU_ENVIRONMENT),
        "inductor_config": set(torch._inductor.config.get_config_copy()),
        "functorch_config": set(torch._functorch.config.get_config_copy()),
    }
    for name, counterpart in keys.TORCH_KEY_COUNTERPARTS.items():
        if counterpart.startswith("ignored:"):
            assert counterpart.removeprefix("ignored:").strip(), f"{name}: an ignored input needs its reason"
            continue
        for part in (p.strip() for p in counterpart.split(",")):
            factor, _, field = part.partition(".")
            assert factor in factors, f"{name} -> {part}: artcache's key has no factor {factor!r}"
            if field:
                assert field in fields[factor], f"{name} -> {part}: factor {factor} has no value {field!r}"
                if factor.endswith("_config"):
                    assert not keys._ignored(field), f"{name} -> {part}: that config entry is on the ignore list"


def test_every_config_entry_torch_saves_is_keyed_or_ignored_with_a_reason() -> None:
    """torch's key saves these configs; artcache keys every entry of each (the config
    fuzzer, tests/test_key_fuzz.py, flips them all) except CONFIG_IGNORE's."""
    from torch._inductor import config as inductor

    saved = {
        "inductor_config": (inductor.save_config_portable(ignore_private_configs=False), inductor.get_config_copy()),
        "autograd_config": (torch._functorch.config.get_serializable_config_copy(), torch._functorch.config.get_config_copy()),
    }
    comms = key_inputs.extra_configs().get("inductor_comms")
    if comms is not None:
        from torch._inductor import config_comms

        saved["inductor_config_comms"] = (config_comms.save_config_portable(ignore_private_configs=False), comms)
    for name, (torch_saves, artcache_reads) in saved.items():
        unseen = sorted(set(torch_saves) - set(artcache_reads))
        assert not unseen, f"{name}: torch keys {unseen}, which artcache's config snapshot lacks"
        for entry in torch_saves:
            if keys._ignored(entry):
                reason = keys.CONFIG_IGNORE.get(entry) or next(
                    r for p, r in keys.CONFIG_IGNORE.items() if p.endswith(".") and entry.startswith(p))
                assert reason.strip(), entry


# -- each covered input, changed as a user changes it, changes the key ------------------
@contextlib.contextmanager
def _setting(getter: Callable[[], Any], setter: Callable[[Any], None], value: Any) -> Iterator[None]:
    saved = getter()
    setter(value)
    try:
        yield
    finally:
        setter(saved)


def _attr_setting(obj: Any, name: str, value: Any) -> Any:
    return _setting(lambda: getattr(obj, name), lambda v: setattr(obj, name, v), value)


class _Pass(torch._inductor.custom_graph_pass.CustomGraphPass):
    def __init__(self, version: str) -> None:
        self.version = version

    def __call__(self, graph: torch.fx.Graph) -> None:
        return None

    def uuid(self) -> str:
        return self.version


def _cpu_backend_registry(table: str, value: Any) -> Any:
    from torch._inductor.codegen import common

    registry = getattr(common, table)
    return _setting(lambda: registry.get("cpu"), lambda v: registry.__setitem__("cpu", v), value)


def _hooks(scale: float) -> Any:
    class Pack(torch.nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return t * scale

    class Unpack(torch.nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return t

    return torch.autograd.graph.saved_tensors_hooks(torch.fx.symbolic_trace(Pack()), torch.fx.symbolic_trace(Unpack()))


def _checkpointed(policy: Callable[..., Any]) -> Callable[..., Any]:
    from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts

    def fn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        context = functools.partial(create_selective_checkpoint_contexts, policy)
        return checkpoint(lambda t: (t @ b).sin(), a, use_reentrant=False, context_fn=context).sum()

    return fn


def _save_mm(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_SAVE if op == torch.ops.aten.mm.default else CheckpointPolicy.PREFER_RECOMPUTE


def _recompute_all(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.PREFER_RECOMPUTE


def _with_budget(budget: float) -> Callable[..., Any]:
    def fn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        with torch.autograd.graph.region_activation_memory_budget(budget):
            return (a @ b).sin().sum()

    return fn


def _with_cudagraphs(fwd: bool, bwd: bool) -> Callable[..., Any]:
    def fn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        with torch._dynamo.override_cudagraphs(fwd=fwd, bwd=bwd):
            return (a @ b).sin().sum()

    return fn


def _static_weight() -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _inputs()
    torch._dynamo.mark_static_address(b)
    return a, b


def _hinted(hint: int) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _inputs()
    torch._dynamo.mark_dynamic(a, 0, hint_override=hint)
    return a, b


class _Module(torch.nn.Module):
    def __init__(self, buffers: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(4, 4))
        for i in range(buffers):
            self.register_buffer(f"b{i}", torch.randn(4))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        out = a @ self.w
        for buffer in self.buffers():
            out = out + buffer
        return out.sum()


def _solver(version: str) -> Any:
    from torch._inductor.custom_graph_pass import CustomKnapsackSolver

    class Solver(CustomKnapsackSolver):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError

        def uuid(self) -> str:
            return version

    return Solver()


def _partitioner(version: str) -> Any:
    from torch._inductor.custom_graph_pass import CustomPartitionerFn

    class Partitioner(CustomPartitionerFn):
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError

        def uuid(self) -> str:
            return version

    return Partitioner()


# torch input -> (baseline key, changed key) thunks.  Each pair differs in that input only.
Flip = Callable[[], tuple[str, str]]


def _under(context: Callable[[], Any], fn: Callable[..., Any] = _matmul) -> Flip:
    def flip() -> tuple[str, str]:
        base = key_of(fn)
        with context():
            changed = key_of(fn)
        return base, changed

    return flip


def _programs(base: Callable[[], str], changed: Callable[[], str]) -> Flip:
    return lambda: (base(), changed())


def _config(module: Any, **patch: Any) -> Flip:
    return _under(lambda: module.patch(**patch))


inductor, functorch = torch._inductor.config, torch._functorch.config
FLIPS: dict[str, Flip] = {
    "gm": _programs(lambda: key_of(_matmul), lambda: key_of(lambda a, b: (a @ b).cos().sum())),
    "example_inputs": _programs(lambda: key_of(), lambda: key_of(inputs=(torch.randn(6, 4), _inputs()[1]))),
    "cache_key_tag": _under(lambda: torch.compiler.config.patch(cache_key_tag="another-partition")),
    "fx_kwargs.cudagraphs": _config(inductor, **{"triton.cudagraphs": True}),
    "fx_kwargs.cpp_wrapper": _config(inductor, cpp_wrapper=True),
    "fx_kwargs.fx_wrapper": _config(inductor, fx_wrapper=True),
    "fx_kwargs.is_backward": _programs(lambda: key_of(), lambda: key_of(inputs=(_inputs()[0], _inputs()[1].detach()))),
    "fx_kwargs.is_inference": _under(torch.no_grad),
    "fx_kwargs.layout_opt": _config(inductor, layout_optimization=not inductor.layout_optimization),
    "fx_kwargs.static_input_idxs": _programs(lambda: key_of(), lambda: key_of(inputs=_static_weight())),
    "deterministic_algorithms_settings": _under(lambda: _setting(
        torch.are_deterministic_algorithms_enabled, torch.use_deterministic_algorithms, True)),
    "deterministic_algorithms_settings.warn_only": _under(lambda: _setting(
        lambda: (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()),
        lambda v: torch.use_deterministic_algorithms(v[0], warn_only=v[1]), (True, True))),
    "deterministic_algorithms_settings.fill_uninitialized_memory": _under(
        lambda: _attr_setting(torch.utils.deterministic, "fill_uninitialized_memory",
                              not torch.utils.deterministic.fill_uninitialized_memory)),
    "cpp_runtime_thread_count": _under(lambda: _setting(torch.get_num_threads, torch.set_num_threads,
                                                         torch.get_num_threads() + 1)),
    "provenance_tracking_level": _config(inductor, **{"trace.provenance_tracking_level": 1}),
    "default_dtype": _under(lambda: _setting(torch.get_default_dtype, torch.set_default_dtype, torch.float64)),
    "cuda_matmul_settings": _under(lambda: _attr_setting(torch.backends.cuda.matmul, "fp32_precision", "tf32")),
    "cuda_matmul_settings.fp16": _under(lambda: _attr_setting(
        torch.backends.cuda.matmul, "allow_fp16_reduced_precision_reduction",
        not torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction)),
    "cuda_matmul_settings.bf16": _under(lambda: _attr_setting(
        torch.backends.cuda.matmul, "allow_bf16_reduced_precision_reduction",
        not torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction)),
    "cudagraph_override": _programs(lambda: key_of(), lambda: key_of(_with_cudagraphs(True, True))),
    "cudagraph_annotation": _programs(lambda: key_of(_with_cudagraphs(True, False)), lambda: key_of(_with_cudagraphs(False, True))),
    "pre_grad_custom_pass": _config(inductor, pre_grad_custom_pass=_Pass("v1")),
    "post_grad_custom_pre_pass": _config(inductor, post_grad_custom_pre_pass=_Pass("v1")),
    "post_grad_custom_post_pass": _config(inductor, post_grad_custom_post_pass=_Pass("v1")),
    "joint_custom_pre_pass": _config(inductor, joint_custom_pre_pass=_Pass("v1")),
    "joint_custom_post_pass": _config(inductor, joint_custom_post_pass=_Pass("v1")),
    "_pre_fusion_custom_pass": _config(inductor, _pre_fusion_custom_pass=_Pass("v1")),
    "_post_fusion_custom_pass": _config(inductor, _post_fusion_custom_pass=_Pass("v1")),
    "_fuse_ddp_communication_passes": _config(inductor, _fuse_ddp_communication_passes=["fuse_ddp_with_concat_op"]),
    "_custom_partitioner_fn": _config(inductor, custom_partitioner_fn=_partitioner("v1")),
    "custom_backend_passes": _under(lambda: _cpu_backend_registry("custom_backend_passes", _Pass("v1"))),
    "custom_backend_codegen_configs": _under(lambda: _cpu_backend_registry("custom_backend_codegen_configs",
                                                                            torch._functorch.config)),
    "var_to_hint_override": _programs(lambda: key_of(inputs=_hinted(64)), lambda: key_of(inputs=_hinted(128))),
    "grad_enabled": _under(torch.no_grad),
    "autocast_state": _under(lambda: torch.autocast("cpu", dtype=torch.bfloat16)),
    "autocast_state.dtype": _programs(
        lambda: _autocast_key(torch.bfloat16), lambda: _autocast_key(torch.float16)),
    "deterministic_algorithms": _under(lambda: _setting(
        torch.are_deterministic_algorithms_enabled, torch.use_deterministic_algorithms, True)),
    "autograd_config": _config(functorch, activation_memory_budget=0.5),
    "saved_tensors_hooks_fx_wrap_cache_hashes": _programs(lambda: _hooked_key(1.0), lambda: _hooked_key(2.0)),
    "sac_context_fn_hashes": _programs(lambda: key_of(_checkpointed(_save_mm)), lambda: key_of(_checkpointed(_recompute_all))),
    "region_activation_memory_budget": _programs(lambda: key_of(_with_budget(0.5)), lambda: key_of(_with_budget(0.1))),
    "custom_estimator_solver_uuids": _programs(
        lambda: _solver_key("v1"), lambda: _solver_key("v2")),
    "aot_config.num_params_buffers": _programs(lambda: _module_key(1), lambda: _module_key(2)),
    "aot_config.dynamic_shapes": _programs(lambda: key_of(dynamic=False), lambda: key_of(dynamic=True)),
    "aot_config.static_input_indices": _programs(lambda: key_of(), lambda: key_of(inputs=_static_weight())),
}


def _autocast_key(dtype: torch.dtype) -> str:
    with torch.autocast("cpu", dtype=dtype):
        return key_of()


def _hooked_key(scale: float) -> str:
    with _hooks(scale):
        return key_of()


def _solver_key(version: str) -> str:
    with functorch.patch(activation_memory_budget_solver=_solver(version)):
        return key_of()


def _module_key(buffers: int) -> str:
    return key_of(_Module(buffers), (torch.randn(8, 4),))


# Covered inputs that cannot be changed on this machine, with why.
NOT_FLIPPABLE = {
    "fx_kwargs.get_decomp_fn": "torch's own decomposition table: pinned by the installed torch",
    "user_defined_triton_source": "needs Triton (GPU build); tests/gpu",
    "triton_kernel_source_codes": "needs Triton (GPU build); tests/gpu",
    "torch_version": "the installed torch (test_key_fuzz.py changes the environment factor's values)",
    "system_info.hash": "the installed CUDA/Triton/GPU",
    "inductor_config": "every entry is flipped by tests/test_key_fuzz.py",
    "inductor_config_comms": "every entry is flipped by test_comms_config_entry below",
    "default_cuda_device_index": "needs two CUDA devices; test_a_graph_on_another_cuda_index_has_another_key "
                                 "shows the graph factor names the index",
}


def _covered(name: str) -> bool:
    return not keys.TORCH_KEY_COUNTERPARTS[name].startswith("ignored:")


def test_every_covered_input_is_flipped_or_says_why_not() -> None:
    names, _ = torch_key_inputs()
    flipped = {name.split(".warn_only")[0].split(".fill_")[0].split(".fp16")[0].split(".bf16")[0].split(".dtype")[0]
               for name in FLIPS}
    unflipped = sorted(n for n in names if _covered(n) and n not in flipped and n not in NOT_FLIPPABLE)
    assert not unflipped, f"covered torch key inputs with no flip test: {unflipped}"


@pytest.mark.parametrize("name", sorted(FLIPS))
def test_changing_the_input_changes_artcache_key(name: str) -> None:
    base, changed = FLIPS[name]()
    assert base != changed, f"changing torch key input {name} leaves artcache's key unchanged"


_COMMS = sorted((key_inputs.extra_configs().get("inductor_comms") or {}))


@pytest.mark.parametrize("entry", _COMMS)
def test_comms_config_entry(entry: str) -> None:
    from torch._inductor import config_comms

    from .test_key_fuzz import other_value

    base = key_of()
    with config_comms.patch({entry: other_value(config_comms.get_config_copy()[entry])}):
        changed = key_of()
    assert changed != base, f"config_comms.{entry} does not change the key"


def test_extra_factors_read_no_device_index() -> None:
    """The extra factors read no device index (the graph factor holds it, below)."""
    values = repr(key_inputs.extra_factors(torch.fx.symbolic_trace(torch.nn.Linear(2, 2))))
    assert "cuda:" not in values and "device_index" not in values


@pytest.mark.parametrize("inputs", [True, False], ids=["tensor-input", "no-tensor-input"])
def test_a_graph_on_another_cuda_index_has_another_key(inputs: bool) -> None:
    """Inductor's code for a graph names the CUDA index it was compiled on, so the same
    graph on cuda:0 and cuda:3 must get two keys (an entry of one never runs on the other).
    The input specs name device types only; the graph factor, which holds every node's
    example value with its device, tells them apart, with or without a tensor input
    (torch's ``default_cuda_device_index``).  Fake tensors: no GPU needed."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    from artcache import pickler
    from artcache._torch.entry_types import entry_allowlist

    def sine(x: torch.Tensor) -> torch.Tensor:
        return x.sin() + 1

    graphs, specs = [], []
    for index in (0, 3):
        with FakeTensorMode():
            x = torch.empty(4, device=f"cuda:{index}")
            if inputs:
                gm, args = make_fx(sine)(x), [x]
            else:
                gm, args = make_fx(lambda: torch.ones(4, device=f"cuda:{index}").cos())(), []
        graphs.append(pickler.hash_object(gm, allow=entry_allowlist(), lifted_inputs=True))
        specs.append(keys.input_specs(gm, args))
    assert specs[0] == specs[1]
    assert graphs[0] != graphs[1]


def test_key_computation_does_not_need_a_gpu_or_a_subprocess() -> None:
    """The extra factors are read from in-process state only (the hit path starts no
    subprocess): reading them with the tripwire's subprocess ban in place works."""
    import subprocess

    original = subprocess.Popen.__init__

    def forbid(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a subprocess was started while computing the key")

    subprocess.Popen.__init__ = forbid  # type: ignore[method-assign]
    try:
        assert key_of()
    finally:
        subprocess.Popen.__init__ = original  # type: ignore[method-assign]



# -- a stale hit this table found, proven across fresh processes ------------------------
_HOOKED = """
class Pack(torch.nn.Module):
    def forward(self, t):
        return t * {scale}

class Unpack(torch.nn.Module):
    def forward(self, t):
        return t

hooks = lambda: torch.autograd.graph.saved_tensors_hooks(torch.fx.symbolic_trace(Pack()), torch.fx.symbolic_trace(Unpack()))

def grads(f):
    x = torch.linspace(-1, 1, 16).reshape(4, 4).requires_grad_()
    with hooks():
        f(x).backward()
    return x.grad.flatten().tolist()

fn = lambda a: (a @ a).sin().sum()
RESULT = grads(torch.compile(fn, backend=backend))
torch._dynamo.reset()
EAGER = grads(torch.compile(fn, backend="inductor"))  # a fresh plain compile under this process's hooks
"""


@pytest.mark.slow
def test_saved_tensors_hooks_given_as_graphs_are_in_the_key(tmp_path: Any) -> None:
    """Hooks given as GraphModules are inlined into the compiled forward and backward, but
    Dynamo hangs them on the graph as submodules no node calls.  A process whose pack hook
    differs must not be served the first process's program."""
    from .test_stale_hits import _run

    cold = _run(tmp_path, "cold", _HOOKED.format(scale=1.0))
    assert cold["saves"] == 1 and not cold["uncacheable"], cold
    same = _run(tmp_path, "same", _HOOKED.format(scale=1.0))
    assert same["hits"] == 1 and same["result"] == cold["result"], same
    warm = _run(tmp_path, "warm", _HOOKED.format(scale=2.0))
    assert warm["hits"] == 0 and warm["saves"] == 1, warm
    assert warm["result"] == warm["eager"], "the second process must run its own hooks' program"
    assert warm["result"] != cold["result"], "the hooks must change what the program computes"
