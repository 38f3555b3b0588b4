"""artcache: a compiled-artifact cache and safe serializer for ``torch.compile``.

Public surface: :class:`Cache` (``Cache(store=...).backend()``), the ``artcache``
torch.compile backend (entry point), :func:`artcache.store.open_store`, and the error
hierarchy in :mod:`artcache.errors`.
"""

from __future__ import annotations

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
]
