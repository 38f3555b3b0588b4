"""An import torch makes on a hit that the hit never uses, deferred to its first use.

Dynamo's first compile imports ``torch._functorch.aot_autograd`` and a hit decodes torch's
``BundledAOTAutogradResult``: both import ``torch._inductor.codecache``, which imports
``output_code`` -> ``runtime.autotune_cache`` -> ``torch._inductor.remote_cache``.  That
module runs ``import redis`` when it is
imported (torch 2.11-2.13: ``try: import redis / except ImportError: redis = None``) for
its Redis remote caches, and reads the module only when one of them is configured and a
compile reads or writes it (``RedisRemoteCacheBackend``: ``if not redis``, ``redis.Redis``,
``redis.exceptions.ConnectionError``).  Where redis-py is installed (8.x imports its asyncio
client, cluster support and every command mixin), that import cost 45-120 ms of a CPU warm
start's first call, measured in fresh processes: as much as the rest of the hit's work.

:func:`defer_unused_imports` (called when an artcache backend is made, and before a hit's
entry is decoded) imports ``torch._inductor.remote_cache`` itself, first, with
``import redis`` refused for this thread only, then gives the module a stand-in for
``redis`` that imports the real package at its first attribute access and hands out its
attributes; its truth value is true, as the module's is.  torch's remote cache behaves as
before whenever it is used; nothing else sees a difference (``sys.modules`` never holds the
stand-in, and another thread importing redis meanwhile gets the real package).

It does nothing where redis-py is not installed, where it or torch's remote-cache module is
already imported, or where the module does not read as above (another torch).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import threading
from collections.abc import Sequence
from typing import Any

_MODULE = "torch._inductor.remote_cache"
_PACKAGE = "redis"


class _DeferredPackage:
    """Stands in for a package a module imported but has not used yet."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"<deferred import of {self._name}>"


class _RefuseInThisThread(importlib.abc.MetaPathFinder):
    """Refuses one top-level package to one thread: its import raises ImportError there."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.thread = threading.get_ident()

    def find_spec(self, fullname: str, path: Sequence[str] | None = None, target: Any = None) -> None:
        if threading.get_ident() == self.thread and (fullname == self.name or fullname.startswith(self.name + ".")):
            raise ImportError(f"{fullname} is imported at its first use", name=fullname)
        return None


def defer_unused_imports() -> None:
    """Import torch's remote-cache module without importing redis (see the module
    docstring).  Cheap after the first call."""
    if _MODULE in sys.modules or _PACKAGE in sys.modules:
        return
    try:
        installed = importlib.util.find_spec(_PACKAGE) is not None
    except (ImportError, ValueError):
        installed = False
    if not installed:
        return
    finder = _RefuseInThisThread(_PACKAGE)
    sys.meta_path.insert(0, finder)
    try:
        module = importlib.import_module(_MODULE)
    except ImportError:
        return  # another torch: the hit imports what it needs its own way
    finally:
        sys.meta_path.remove(finder)
    if hasattr(module, _PACKAGE) and getattr(module, _PACKAGE) is None:
        setattr(module, _PACKAGE, _DeferredPackage(_PACKAGE))
