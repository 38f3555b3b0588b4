"""Stores: where blobs and manifests live.  :func:`open_store` turns URLs into a ``Store``.

URLs (comma-separated for tiers, fastest first)::

    file:///abs/path[?ro=1][&fsync=0][&shared=1]
                                        local directory (LocalStore); ``shared=1``
                                        accepts a directory others can write
    memory://[name][?ro=1]             in-process (MemoryStore)
    redis://host:port/db[?ro=1][&prefix=ns][&ttl=S][&timeout=S]
                                        Redis (RedisStore, needs the ``redis`` extra);
                                        ``timeout`` bounds connects and reads (default 2 s)
    http[s]://[user:pw@]host[:port][/prefix][?ro=1][&timeout=S][&verify=0][&ca=/path]
        [&token_file=/path][&list=1][&cas=plain]
                                        HTTP cache server speaking bazel-remote's protocol
                                        (HttpStore, needs the ``http`` extra); bearer token
                                        from ``token_file`` or ARTCACHE_HTTP_TOKEN; see
                                        ``artcache/store/http.py``
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

from ..errors import CorruptEntryError, StoreError
from .base import KeyInfo, Store, ac_key, cas_key, check_key
from .local import LocalStore
from .memory import MemoryStore
from .tiered import ErrorHandler, TieredStore, WritePolicy, log_tier_error

__all__ = [
    "KeyInfo",
    "LocalStore",
    "MemoryStore",
    "Store",
    "TieredStore",
    "WritePolicy",
    "ac_key",
    "cas_key",
    "check_key",
    "open_store",
]

_TRUE = {"1", "true", "yes", "on"}


def _options(query: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}


def _flag(options: dict[str, str], name: str, default: bool) -> bool:
    if name not in options:
        return default
    return options[name].strip().lower() in _TRUE


def open_one(url: str, *, max_size: int | None = None, http_token: str | None = None) -> Store:
    """One store from one URL.  ``max_size`` applies to a local directory store;
    ``http_token`` is the bearer token for an HTTP store whose URL names no credentials."""
    parts = urlsplit(url.strip())
    options = _options(parts.query)
    read_only = _flag(options, "ro", False)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise StoreError(f"{url}: file URLs take an absolute path (file:///path)")
        path = unquote(parts.path)
        if not path:
            raise StoreError(f"{url}: no path")
        return LocalStore(path, max_size=max_size, durable=_flag(options, "fsync", True), read_only=read_only,
                          shared=_flag(options, "shared", False))
    if parts.scheme == "memory":
        return MemoryStore(read_only=read_only, name=parts.netloc + parts.path)
    if parts.scheme in ("redis", "rediss"):
        from .redis import RedisStore  # optional dependency: import only when asked for

        return RedisStore.from_url(url)
    if parts.scheme in ("http", "https"):
        from .http import HttpStore  # optional dependency: import only when asked for

        return HttpStore.from_url(url, token=http_token)
    shown = urlunsplit((parts.scheme, parts.hostname or "", parts.path, "", ""))  # no credentials
    raise StoreError(f"unsupported store URL {shown!r} (use file:///path, memory://, redis://host:port/db, "
                     "http(s)://host/prefix)")


def open_store(
    urls: str | Sequence[str],
    *,
    max_size: int | None = None,
    write_policy: WritePolicy = WritePolicy.ANY,
    on_error: ErrorHandler = log_tier_error,
    http_token: str | None = None,
) -> Store:
    """A store for one URL, or a :class:`TieredStore` for several (first is local).

    ``max_size`` caps the first tier only: it is the local disk budget.  ``http_token``
    (``Settings.http_token``) is passed to HTTP tiers.
    """
    if isinstance(urls, str):
        urls = [u for u in urls.split(",") if u.strip()]
    if not urls:
        raise StoreError("no store URL given")
    stores = [open_one(u, max_size=max_size if i == 0 else None, http_token=http_token) for i, u in enumerate(urls)]
    if len(stores) == 1:
        store = stores[0]
        if store.verifies_content:
            # A lone shared store has no tiered store to report its rejected blobs to
            # the caller's error policy: report them here.
            store.on_corrupt = lambda key, why: on_error(
                store, "get", CorruptEntryError(f"{key} from {store.url}: {why}")
            )
        return store
    return TieredStore(stores, write_policy=write_policy, on_error=on_error)
