"""``Cache``: the public facade.  An :class:`~artcache.entries.EntryStore` (lookup, save,
trust, the error policy, stats) that also makes ``torch.compile`` backends."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .entries import CacheStats, EntryStore

if TYPE_CHECKING:
    from .backend import ArtcacheBackend
    from .frames import Precompiled

__all__ = ["Cache", "CacheStats"]


class Cache(EntryStore):
    """Lookup and save of compiled entries in a store, and backends that use them.

    ``Cache(store=...)`` takes a ``Store``, a URL, or a list of URLs (tiers, local first);
    ``None`` takes ``ARTCACHE_STORE`` (see :class:`~artcache.entries.EntryStore`).
    """

    def backend(self, *, mode: str | None = None, options: Mapping[str, Any] | None = None) -> ArtcacheBackend:
        """A ``torch.compile(backend=...)`` callable that uses this cache."""
        # Imported here, not at the top: the backend imports torch, and `import artcache`
        # (the CLI, store tools) must stay light.  backend.py sits below this module.
        from .backend import ArtcacheBackend

        return ArtcacheBackend(self, mode=mode, options=options)

    def precompile(
        self, fn: Callable[..., Any], *, mode: str | None = None, options: Mapping[str, Any] | None = None
    ) -> Precompiled:
        """``fn`` (a function, bound method or ``nn.Module``) compiled through the precompile
        tier: a hit in a fresh process runs without Dynamo tracing the frame
        (:mod:`artcache.frames`); anything else goes through ``torch.compile`` with this
        cache's backend."""
        from .backend import ArtcacheBackend
        from .frames import Precompiled

        options = {k: v for k, v in (options or {}).items() if k != "precompile"}  # this is the precompile tier
        return Precompiled(fn, self, ArtcacheBackend(self, mode=mode, options=options))
