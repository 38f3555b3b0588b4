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

from collections.abc import Callable, Sequence
from urllib.parse import parse_qs, unquote, urlsplit

from ..config import redact_url
from ..errors import CorruptEntryError, StoreConfigError, StoreError
from .base import KeyInfo, Store, ac_key, cas_key, check_key, unknown_option_message
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
_FALSE = {"0", "false", "no", "off"}
_FILE_OPTIONS = ("ro", "fsync", "shared")
_MEMORY_OPTIONS = ("ro",)

# Called with a URL (redacted) that could not be opened and the error; the tier is left out.
BadTierHandler = Callable[[str, StoreError], None]


def _options(query: str, shown: str, known: Sequence[str]) -> dict[str, str]:
    options = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    for name in options:
        if name not in known:
            raise StoreConfigError(unknown_option_message(shown, name, known))
    return options


def _flag(options: dict[str, str], name: str, default: bool, shown: str) -> bool:
    if name not in options:
        return default
    value = options[name].strip().lower()
    if value not in _TRUE | _FALSE:
        raise StoreConfigError(f"{shown}: option {name} must be 1 or 0, got {options[name]!r}")
    return value in _TRUE


def open_one(url: str, *, max_size: int | None = None, http_token: str | None = None) -> Store:
    """One store from one URL.  ``max_size`` applies to a local directory store;
    ``http_token`` is the bearer token for an HTTP store whose URL names no credentials."""
    parts = urlsplit(url.strip())
    shown = redact_url(url)
    if parts.scheme == "file":
        options = _options(parts.query, shown, _FILE_OPTIONS)
        if parts.netloc not in ("", "localhost"):
            raise StoreConfigError(f"{shown}: file URLs take an absolute path (file:///path)")
        path = unquote(parts.path)
        if not path:
            raise StoreConfigError(f"{shown}: no path (file:///path)")
        return LocalStore(path, max_size=max_size, durable=_flag(options, "fsync", True, shown),
                          read_only=_flag(options, "ro", False, shown), shared=_flag(options, "shared", False, shown))
    if parts.scheme == "memory":
        options = _options(parts.query, shown, _MEMORY_OPTIONS)
        return MemoryStore(read_only=_flag(options, "ro", False, shown), name=parts.netloc + parts.path)
    if parts.scheme in ("redis", "rediss"):
        from .redis import RedisStore  # optional dependency: import only when asked for

        return RedisStore.from_url(url)
    if parts.scheme in ("http", "https"):
        from .http import HttpStore  # optional dependency: import only when asked for

        return HttpStore.from_url(url, token=http_token)
    raise StoreConfigError(f"unsupported store URL {shown!r} (use file:///path, memory://, redis://host:port/db, "
                           "http(s)://host/prefix)")


def open_store(
    urls: str | Sequence[str],
    *,
    max_size: int | None = None,
    write_policy: WritePolicy = WritePolicy.ANY,
    on_error: ErrorHandler = log_tier_error,
    http_token: str | None = None,
    on_bad_tier: BadTierHandler | None = None,
) -> Store:
    """A store for one URL, or a :class:`TieredStore` for several (first is local).

    ``max_size`` caps the first tier only: it is the local disk budget.  ``http_token``
    (``Settings.http_token``) is passed to HTTP tiers.

    A URL that cannot be opened raises ``StoreError`` (``StoreConfigError`` for one that
    is wrong as written); with ``on_bad_tier``, it is reported there instead and only that
    tier is left out (``StoreError`` if none is left).
    """
    if isinstance(urls, str):
        urls = [u for u in urls.split(",") if u.strip()]
    if not urls:
        raise StoreError("no store URL given")
    stores = []
    for index, url in enumerate(urls):
        try:
            stores.append(open_one(url, max_size=max_size if index == 0 else None, http_token=http_token))
        except StoreError as exc:
            if on_bad_tier is None:
                raise
            on_bad_tier(redact_url(url), exc)
    if not stores:
        raise StoreError("no store could be opened")
    if len(stores) == 1:
        store = stores[0]
        if store.verifies_content or store.local_root is not None:
            # A lone store has no tiered store to report its rejected (or, locally,
            # set-aside) values to the caller's error policy: report them here.
            store.on_corrupt = lambda key, why: on_error(
                store, "get", CorruptEntryError(f"{key} from {store.url}: {why}")
            )
        return store
    return TieredStore(stores, write_policy=write_policy, on_error=on_error)
