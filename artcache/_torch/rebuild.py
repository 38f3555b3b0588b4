"""The hit side: torch's post-compile steps on a loaded entry, and its shape guards.

``entry.wrap_post_compile`` runs the post-compile steps (loading the wrapper module, input
realignment, CUDA-graph wrapping, output strides, guards) exactly as torch's own cache hit
does; nothing is traced, lowered or compiled.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from . import shape_guards
from .capture import autograd_cache_module
from .freezing import ModelConstant, bind_model_constants, selecting


def guards_hold(entry: Any, example_inputs: Sequence[Any], *, int_symbols: bool = False) -> bool:
    """Whether the entry's Inductor shape guards accept these inputs (evaluated on hints,
    so nothing is installed into Dynamo's shape env yet).  With ``int_symbols`` the inputs
    are a replayed frame's (no SymInts): each plain int stands for the symbol at its place."""
    expr = getattr(entry, "guards_expr", None)
    if not expr:
        return True
    if int_symbols:
        # Parsed and interpreted by artcache, not evaluated by torch (no shape env here).
        return shape_guards.graph_guards_hold(expr, [s for s in example_inputs if type(s) is int])
    ac = autograd_cache_module()
    try:
        from torch.fx.experimental.symbolic_shapes import guarding_hint_or_throw as hint
    except ImportError:  # torch 2.11: the same hint under its older name
        from torch.fx.experimental.symbolic_shapes import size_hint as hint

    symints = ac.AOTAutogradCache._filter_backed_symints(list(example_inputs))
    hints = [hint(s) for s in symints]
    return bool(ac.AOTAutogradCache.evaluate_guards(expr, hints))


def lifted_inputs(gm: torch.nn.Module) -> list[torch.Tensor]:
    """The tensors AOTAutograd passes before the graph's own inputs on every call: the
    GraphModule's parameters, then its buffers, duplicates kept (``aot_module_simplified``
    in torch/_functorch/aot_autograd.py, torch 2.11-2.13).  Dynamo gives a graph such
    attributes for tensors it reaches outside the frame's inputs: a compiled optimizer
    step's state, for example.  A rebuilt entry is called with the live ones."""
    return [t for _, t in gm.named_parameters(remove_duplicate=False)] + [t for _, t in gm.named_buffers(remove_duplicate=False)]


def rebuild(
    entry: Any, example_inputs: Sequence[Any], *, cudagraphs: bool, lifted: Sequence[torch.Tensor] = (),
    frozen_args: Sequence[int] | None = None, frozen_aliases: Mapping[str, ModelConstant] | None = None,
    ints_checked: bool = False,
) -> Callable[..., Any]:
    """The compiled callable of ``entry``: torch's post-compile steps, no compilation.

    ``example_inputs`` are the graph's inputs; ``lifted`` (:func:`lifted_inputs`) go first
    in every call, as in torch's own compiled callable.  ``frozen_args``: for a frozen
    graph, the flat arguments its forward takes, and ``frozen_aliases`` its constants that
    are lifted inputs, bound to ``lifted`` here (``artcache._torch.freezing``).  Must run
    inside Dynamo's backend call, so that its TracingContext receives the output strides
    and the SymInt inputs carry the entry's guards into Dynamo's shape env; or, with
    ``ints_checked``, for a replayed frame (:mod:`artcache.frames`): the SymInt inputs are
    plain ints whose shape guards the caller checked (``guards_hold(int_symbols=True)``),
    and torch's own check of them (``_check_guards``, which needs SymInts and a shape env;
    torch 2.13) is skipped.
    """
    from torch._inductor.cudagraph_utils import BoxedDeviceIndex
    from torch._inductor.utils import BoxedBool

    fx_config = {
        "cudagraphs": BoxedBool(cudagraphs),
        # One object shared by forward and backward post-compile (CUDA-graph device index).
        "boxed_forward_device_index": BoxedDeviceIndex(None),
        "compile_region_name": None,
    }
    aot_config = entry.sanitized_aot_config
    if dataclasses.is_dataclass(aot_config) and hasattr(aot_config, "enable_log"):
        # Structured logging of the stored graph strings costs time and logs nothing new.
        aot_config = dataclasses.replace(aot_config, enable_log=False)
    bind_model_constants(entry, frozen_aliases or {}, lifted)
    context = torch._guards.TracingContext.try_get()
    tracing = contextlib.nullcontext() if context is not None else _fresh_tracing()
    with tracing, selecting(entry, frozen_args), _guards_checked(entry, ints_checked):
        compiled = entry.wrap_post_compile([*lifted, *example_inputs], aot_config, fx_config)

    if lifted:
        prefix = list(lifted)

        def forward(*args: Any) -> Any:
            return compiled([*prefix, *args])
    else:
        def forward(*args: Any) -> Any:
            return compiled(list(args))

    return torch._dynamo.disable(forward, reason="artcache compiled graph")  # type: ignore[no-any-return]


@contextlib.contextmanager
def _guards_checked(entry: Any, checked: bool) -> Any:
    """With ``checked``, the entry's guard expression hidden from its post-compile (see
    :func:`rebuild`); put back afterwards."""
    expr = getattr(entry, "guards_expr", None)
    if not checked or not expr:
        yield
        return
    entry.guards_expr = None
    try:
        yield
    finally:
        entry.guards_expr = expr


def _fresh_tracing() -> Any:
    from torch._subclasses import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    return torch._guards.tracing(torch._guards.TracingContext(FakeTensorMode(shape_env=ShapeEnv())))
