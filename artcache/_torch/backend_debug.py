"""Torch's backend debugging wrapper, made without importing it until a graph is compiled.

``torch._dynamo.optimize`` (what ``torch.compile`` calls) wraps every backend with
``get_compiler_fn``, whose first line imports ``torch._dynamo.repro.after_dynamo`` for its
``WrapBackendDebug`` (the minifier's hook, which reads ``config.repro_after`` at each
compile).  That module imports ``torch._dynamo.testing``, AOTAutograd and its partitioner,
which import networkx: about 0.1 s of a CPU process's first ``torch.compile`` call (torch
2.13, this project's benchmark VM), spent before anything is traced.  A precompiled hit
compiles nothing, so it never calls the wrapper; it still paid that import.

:func:`install` replaces ``torch._dynamo.eval_frame.get_compiler_fn`` (once per process)
with a function that behaves as torch's except inside :func:`deferred` on this thread:
there it returns a :class:`_DeferredWrapBackendDebug` for a backend given as a callable
(the precompile tier's recorder).  That object carries what ``WrapBackendDebug.__init__``
sets (the backend's ``__dict__``, name, ``_torchdynamo_orig_backend``, ``_compiler_name``,
``get_compiler_config``), which is all Dynamo reads from it before it compiles, and builds
torch's own ``WrapBackendDebug`` at its first call, so every compile runs through torch's
wrapper as before.  Checked on torch 2.13 and 2.11 (``get_compiler_fn`` and
``WrapBackendDebug.__init__`` read the same there).
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_PATCHED = "_artcache_deferred_backend_debug"
_AFTER_DYNAMO = "torch._dynamo.repro.after_dynamo"
_THREAD = threading.local()


class _DeferredWrapBackendDebug:
    """Stands in for ``WrapBackendDebug(compiler_fn, compiler_name)`` until it is called."""

    def __init__(self, compiler_fn: Callable[..., Any], compiler_name: str | None) -> None:
        # What WrapBackendDebug.__init__ sets, in its order (torch 2.11-2.13).
        functools.wraps(compiler_fn)(self)
        self._torchdynamo_orig_backend = compiler_fn
        self._compiler_name = compiler_name
        if hasattr(compiler_fn, "__name__"):
            self.__name__ = compiler_fn.__name__
        if hasattr(compiler_fn, "compiler_name"):
            self.__name__ = compiler_fn.compiler_name
        if hasattr(compiler_fn, "get_compiler_config"):
            self.get_compiler_config = compiler_fn.get_compiler_config

    def __call__(self, gm: Any, example_inputs: Any, **kwargs: Any) -> Any:
        # Two threads compiling at once may each build one; the wrapper holds no state.
        from torch._dynamo.repro.after_dynamo import WrapBackendDebug

        return WrapBackendDebug(self._torchdynamo_orig_backend, self._compiler_name)(gm, example_inputs, **kwargs)


def install() -> bool:
    """Replace Dynamo's ``get_compiler_fn`` with the deferring one (once per process).
    False, and nothing replaced, where this torch does not have it."""
    from torch._dynamo import eval_frame

    original = getattr(eval_frame, "get_compiler_fn", None)
    if original is None or getattr(original, _PATCHED, False):
        return original is not None
    lookup = getattr(eval_frame, "lookup_backend", None)
    if not callable(lookup):
        return False

    @functools.wraps(original)
    def get_compiler_fn(compiler_fn: Any) -> Any:
        named = hasattr(compiler_fn, "compiler_name")
        if (not getattr(_THREAD, "on", False) or _AFTER_DYNAMO in sys.modules or compiler_fn is None
                or isinstance(compiler_fn, str) or (named and not isinstance(compiler_fn.compiler_name, str))):
            return original(compiler_fn)  # torch's, as it is (the import done, or its errors)
        return _DeferredWrapBackendDebug(lookup(compiler_fn), compiler_fn.compiler_name if named else None)

    setattr(get_compiler_fn, _PATCHED, True)
    eval_frame.get_compiler_fn = get_compiler_fn
    return True


@contextmanager
def deferred() -> Iterator[None]:
    """Within: ``torch._dynamo.optimize`` on this thread wraps a callable backend without
    importing torch's debugging wrapper (see the module's docstring)."""
    prior = getattr(_THREAD, "on", False)
    _THREAD.on = True
    try:
        yield
    finally:
        _THREAD.on = prior
