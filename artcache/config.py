"""Settings, read from the environment in exactly one function: :func:`settings_from_env`.

Everything else receives a :class:`Settings` value; nothing deeper reads ``os.environ``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ArtcacheError

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str) -> int:
    """Parse ``20G``, ``512M``, ``1.5GiB``, ``4096`` into bytes (binary units)."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ArtcacheError(f"not a size: {text!r} (expected e.g. 20G, 512M, 4096)")
    number, unit, _ = match.groups()
    return int(float(number) * _SIZE_UNITS[unit.lower()])


def default_store_url(environ: Mapping[str, str]) -> str:
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return "file://" + str(Path(base) / "artcache")


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    """What the environment asked for.  Build one with :func:`settings_from_env`."""

    store_urls: tuple[str, ...]
    max_size: int | None = None
    disabled: bool = False
    strict: bool = False
    signing_key: str | None = None
    trusted_keys: tuple[str, ...] = field(default_factory=tuple)
    single_flight: bool = True
    http_token: str | None = field(default=None, repr=False)  # a secret: never printed
    compress: bool = True  # zstd-compress blobs where it pays (when zstandard is installed)


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    """The only place artcache reads environment variables.

    ``ARTCACHE_STORE``        comma-separated store URLs, local tier first
    ``ARTCACHE_MAX_SIZE``     size cap of the local tier (``20G``)
    ``ARTCACHE_DISABLE``      ``1`` turns the cache off (compiles run as plain Inductor)
    ``ARTCACHE_STRICT``       ``1`` raises every error instead of degrading to a miss
    ``ARTCACHE_SIGNING_KEY``  private key (base64 or path) used to sign manifests
    ``ARTCACHE_TRUSTED_KEYS`` comma-separated public keys; entries signed by none are refused
    ``ARTCACHE_SINGLE_FLIGHT`` ``0`` turns off one-compile-for-many-processes (default on)
    ``ARTCACHE_HTTP_TOKEN``   bearer token for http(s):// tiers whose URL names no credentials
    ``ARTCACHE_COMPRESS``     ``0`` stores new blobs uncompressed (default: zstd where it pays)
    """
    env = os.environ if environ is None else environ
    raw_store = env.get("ARTCACHE_STORE", "").strip()
    urls = tuple(u.strip() for u in raw_store.split(",") if u.strip()) or (default_store_url(env),)
    raw_size = env.get("ARTCACHE_MAX_SIZE", "").strip()
    raw_trusted = env.get("ARTCACHE_TRUSTED_KEYS", "").strip()
    return Settings(
        store_urls=urls,
        max_size=parse_size(raw_size) if raw_size else None,
        disabled=_flag(env, "ARTCACHE_DISABLE"),
        strict=_flag(env, "ARTCACHE_STRICT"),
        signing_key=env.get("ARTCACHE_SIGNING_KEY") or None,
        trusted_keys=tuple(k.strip() for k in raw_trusted.split(",") if k.strip()),
        single_flight=env.get("ARTCACHE_SINGLE_FLIGHT", "1").strip().lower() not in {"0", "false", "no", "off"},
        http_token=env.get("ARTCACHE_HTTP_TOKEN", "").strip() or None,
        compress=env.get("ARTCACHE_COMPRESS", "1").strip().lower() not in {"0", "false", "no", "off"},
    )
