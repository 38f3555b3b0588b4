"""artcache: a compiled-artifact cache and safe serializer for ``torch.compile``.

Public surface: :class:`Cache` (``Cache(store=...).backend()``), :func:`precompile`, the ``artcache``
torch.compile backend (entry point), :func:`artcache.store.open_store`, and the error
hierarchy in :mod:`artcache.errors`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._version import __version__
from .cache import Cache, CacheStats
from .entry import LoadedEntry, NewBlob
from .errors import (
    ArtcacheError,
    ConfigError,
    CorruptEntryError,
    IncompatibleEntryError,
    StoreError,
    Uncacheable,
    UntrustedEntryError,
)

__all__ = [
    "ArtcacheError",
    "Cache",
    "CacheStats",
    "ConfigError",
    "CorruptEntryError",
    "IncompatibleEntryError",
    "LoadedEntry",
    "NewBlob",
    "StoreError",
    "Uncacheable",
    "UntrustedEntryError",
    "__version__",
    "precompile",
]


def precompile(fn: Any, *, cache: Cache | None = None, mode: str | None = None,
               options: Mapping[str, Any] | None = None) -> Any:
    """``fn`` (a function, bound method or ``nn.Module``) compiled through artcache's
    precompile tier: a hit in a fresh process skips Dynamo's tracing of the frame as well
    as the compiler; anything it cannot serve goes through ``torch.compile`` with the
    artcache backend (:mod:`artcache.frames`).  ``cache`` defaults to one configured from
    the environment."""
    return (cache if cache is not None else Cache()).precompile(fn, mode=mode, options=options)
