"""Torch's precompile-entry hook, reached from ``torch.compile(fn, backend=...)``: the
precompile tier without a wrapper (:mod:`artcache.frame_hook`).

Torch's C eval-frame keeps, per code object, a list of *precompile entries* (a guard
manager and a code object; ``torch._C._dynamo.eval_frame._load_precompile_entry``, what
``torch._dynamo.package.CompilePackage.install`` uses).  When a frame of that code runs
under a Dynamo callback, the entries are checked first, in order, before Dynamo's own cache
entries and before Dynamo is asked to trace: the first whose guard manager passes on the
frame's locals runs its code in place of the frame's; when none passes, the frame goes on
as if there were none (cache entries, then tracing).  Checked on torch 2.13 (CPU, Python
3.11): the guard manager gets the frame's locals as a dict (arguments and closure cells by
name), and runs with the eval-frame callback unset (Python it calls is not traced); the
code runs in the frame itself, so it must have the frame's layout of locals, cells and free
variables (:func:`replacement_code` keeps them); frames called from that code are traced as
usual unless the callee is ``torch._dynamo.disable``d.

What is reached here:

* ``torch._dynamo.optimize``, which ``torch.compile`` calls after it built its backend
  wrapper: :func:`install_compile_patch` wraps it once, so that a decision function sees
  the backend and the function being compiled before the first call (no backend gets the
  function before tracing otherwise).  The wrapper changes nothing unless the decision
  returns an attach function; then the backend's debugging wrapper is made without its
  import (:mod:`artcache._torch.backend_debug`).
* ``_TorchDynamoContext.enter_exit_hooks`` (run on every call of the compiled function),
  the context's callback, ``GuardManagerWrapper``'s root ``add_lambda_guard``,
  ``_load_precompile_entry``, ``_reset_precompile_entries``, ``trace_rules.check`` and the
  bytecode tools that build the replacement code.

Any of these missing (another torch) makes :func:`available` false and nothing is patched:
``torch.compile`` goes through Dynamo as it would without artcache.
"""

from __future__ import annotations

import functools
import logging
import types
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)

_PATCHED = "_artcache_precompile_patch"
_CO_GENERATOR_LIKE = 0x20 | 0x80 | 0x100 | 0x200  # generator, coroutine, iterable coroutine, async generator


def available() -> bool:
    """Whether this torch has every internal the hook uses."""
    try:
        from torch._C._dynamo import eval_frame
        from torch._dynamo import bytecode_transformation, trace_rules
        from torch._dynamo.eval_frame import _TorchDynamoContext
        from torch._dynamo.guards import GuardManagerWrapper
    except ImportError:
        return False
    return (hasattr(eval_frame, "_load_precompile_entry") and hasattr(eval_frame, "_reset_precompile_entries")
            and hasattr(GuardManagerWrapper(), "root") and hasattr(GuardManagerWrapper().root, "add_lambda_guard")
            and hasattr(bytecode_transformation, "transform_code_object") and hasattr(trace_rules, "check")
            and callable(_TorchDynamoContext) and callable(getattr(torch._dynamo, "optimize", None)))


class _AttachOnCall:
    """What the patched ``optimize`` returns when the decision asked for it: calling it
    with the function (as ``torch.compile`` does at once) runs the attach function, then
    returns what torch's context returns.  Anything else is the context's."""

    def __init__(self, ctx: Any, attach: Callable[[Any, Any], None]) -> None:
        self._ctx = ctx
        self._attach = attach

    def __call__(self, fn: Any) -> Any:
        self._attach(self._ctx, fn)
        return self._ctx(fn)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    def __enter__(self) -> Any:
        return self._ctx.__enter__()

    def __exit__(self, *exc: object) -> Any:
        return self._ctx.__exit__(*exc)


def install_compile_patch(decide: Callable[[dict[str, Any]], Callable[[Any, Any], None] | None]) -> bool:
    """Wrap ``torch._dynamo.optimize`` (once per process): ``decide(kwargs)`` sees the
    keyword arguments ``torch.compile`` passes (``backend`` is its backend wrapper,
    ``guard_filter_fn``), may change them in place, and returns ``attach(ctx, fn)`` or
    ``None``.  False when this torch lacks the hook (nothing patched)."""
    import torch._dynamo

    from . import backend_debug

    if getattr(torch._dynamo.optimize, _PATCHED, False):
        return True
    if not available():
        return False
    original = torch._dynamo.optimize
    defers = backend_debug.install()

    @functools.wraps(original)
    def optimize(*args: Any, **kwargs: Any) -> Any:
        attach = decide(kwargs) if not args else None  # torch.compile passes keywords only
        if attach is not None and defers:
            # A hit compiles nothing: torch's debugging wrapper is imported at the first
            # compile (a miss), not here (:mod:`artcache._torch.backend_debug`).
            with backend_debug.deferred():
                ctx = original(*args, **kwargs)
        else:
            ctx = original(*args, **kwargs)
        if attach is None or not isinstance(ctx, torch._dynamo.eval_frame._TorchDynamoContext):
            return ctx  # disabled (a null decorator), or not for artcache
        return _AttachOnCall(ctx, attach)

    setattr(optimize, _PATCHED, True)
    torch._dynamo.optimize = optimize
    return True


def compile_wrapper_backend(backend: Any) -> tuple[Any, dict[str, Any]] | None:
    """The compiler function and keyword arguments (``mode``, ``options``) of the backend
    wrapper ``torch.compile`` made, or None for another kind of backend."""
    compiler = getattr(backend, "compiler_fn", None)
    extra = getattr(backend, "kwargs", None)
    if compiler is None or not isinstance(extra, dict):
        return None
    return compiler, extra


def traced_frame(fn: Any) -> tuple[types.FunctionType, types.FunctionType, bool] | None:
    """For ``fn`` (a function, bound method or module) handed to ``torch.compile``: the
    function whose frame Dynamo will trace, the plain function that frame runs ``fn``'s
    code for (a module's ``forward``), and whether the first is torch's inline wrapper
    (``external_utils.wrap_inline``: torch's own functions and modules, whose code Dynamo
    skips, are traced through it; its locals are ``fn``, ``args`` and ``kwargs``).  None
    for anything else (a builtin, a generator, a callable object)."""
    from torch._dynamo import config, external_utils, trace_rules

    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    func = getattr(target, "__func__", target)
    if not isinstance(func, types.FunctionType) or func.__code__.co_flags & _CO_GENERATOR_LIKE:
        return None
    if isinstance(fn, torch.nn.Module):
        wrapped = bool(config.wrap_top_frame) or (isinstance(target, types.MethodType) and trace_rules.check(target))
    else:
        wrapped = bool(config.wrap_top_frame) or bool(trace_rules.check(target))
    if not wrapped:
        return func, func, False
    inner = external_utils.wrap_inline(fn)
    return (inner, func, True) if isinstance(inner, types.FunctionType) else None


def add_enter_hook(ctx: Any, enter: Callable[[], Callable[[], None]]) -> None:
    """Run ``enter()`` on every call of what ``ctx`` compiles, its return value on exit
    (``_TorchDynamoContext.enter_exit_hooks``)."""
    ctx.enter_exit_hooks.append(enter)


def disable(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` run with Dynamo's callback unset (the replacement code calls it inside a
    frame Dynamo watches; what it calls must not be traced)."""
    return torch._dynamo.disable(fn, reason="artcache precompiled frame")


def callees_traced(ctx: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]] | None:
    """A function that makes ``fn`` run with the functions it calls seen by ``ctx``'s
    callback (``_callback_from_stance``, as ``_TorchDynamoContext`` sets it on each call), so
    that a frame Dynamo compiled on its own reaches its precompile entry or Dynamo.  For a
    replayed frame's transformed code, as Dynamo runs its own: that code itself must be
    marked skipped first (:func:`skip`, once per code object).  None when this torch lacks
    either (checked on torch 2.13 and 2.11).  What is looked up here is looked up once: the
    returned wrapper runs on every replayed call."""
    from torch._C._dynamo.eval_frame import set_eval_frame
    from torch._dynamo import eval_frame

    from_stance = getattr(eval_frame, "_callback_from_stance", None)
    if getattr(eval_frame, "skip_code", None) is None or from_stance is None or not hasattr(ctx, "callback"):
        return None

    def traced_callees(fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            prior = set_eval_frame(from_stance(ctx.callback))
            try:
                return fn(*args, **kwargs)
            finally:
                set_eval_frame(prior)

        return call

    return traced_callees


def skip(code: types.CodeType) -> None:
    """Mark ``code`` so that Dynamo never traces its frames (the functions they call still
    go through the callback): code artcache made, run under a Dynamo callback."""
    from torch._dynamo import eval_frame

    eval_frame.skip_code(code)


def replacement_code(code: types.CodeType, runner_name: str) -> types.CodeType:
    """``code`` with its body replaced by ``return <runner_name>()`` (a global): the same
    arguments, locals, cells and free variables, so that it can run in a frame of ``code``."""
    from torch._dynamo import bytecode_transformation as bt

    def transform(instructions: list[Any], code_options: dict[str, Any]) -> None:
        prologue = []
        for inst in instructions:
            prologue.append(inst)
            if inst.opname == "RESUME":
                break
        else:
            prologue = [inst for inst in instructions if inst.opname in ("MAKE_CELL", "COPY_FREE_VARS")]
        if runner_name not in code_options["co_names"]:
            code_options["co_names"] = (*code_options["co_names"], runner_name)
        body = [*bt.add_push_null(bt.create_instruction("LOAD_GLOBAL", argval=runner_name)),
                *bt.create_call_function(0, False), bt.create_instruction("RETURN_VALUE")]
        instructions[:] = [*prologue, *body]

    return bt.transform_code_object(code, transform)[0]  # type: ignore[no-any-return]


# Per code object, the precompile entries artcache installed, in the order torch checks
# them: guard trees of loaded entries first (cheap, C++), then the deciding guards.
_ENTRIES: dict[types.CodeType, list[tuple[bool, Any, types.CodeType]]] = {}


def install_entry(code: types.CodeType, guard: Callable[[dict[str, Any]], bool], replacement: types.CodeType,
                  description: str) -> None:
    """Add a precompile entry to ``code``: ``guard(f_locals)`` decides, ``replacement``
    runs in the frame when it returns True."""
    from torch._dynamo.guards import GuardManagerWrapper

    manager = GuardManagerWrapper()
    manager.root.add_lambda_guard(guard, [description], None)
    _install(code, (False, manager, replacement))


def install_tree(code: types.CodeType, manager: Any, replacement: types.CodeType) -> None:
    """Add a precompile entry whose guard manager is a tree of torch's guards
    (:mod:`artcache._torch.guard_tree`), checked before the deciding guards."""
    _install(code, (True, manager, replacement))


def _install(code: types.CodeType, entry: tuple[bool, Any, types.CodeType]) -> None:
    from torch._C._dynamo.eval_frame import (
        _load_precompile_entry,
        _reset_precompile_entries,
    )

    entries = _ENTRIES.setdefault(code, [])
    entries.append(entry)
    entries.sort(key=lambda e: not e[0])  # stable: trees first, each kind in installation order
    _reset_precompile_entries(code)  # torch appends: reinstall all in this order
    for _, manager, replacement in entries:
        _load_precompile_entry(code, manager, replacement)
