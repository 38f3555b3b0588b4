"""Settings, read from the environment in exactly one function: :func:`settings_from_env`.

Everything else receives a :class:`Settings` value; nothing deeper reads ``os.environ``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from .errors import ConfigError

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
# Query options whose value is a credential: never shown.
_SECRET_OPTION_RE = re.compile(r"pass|token|secret|auth|key|cred", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Parse ``20G``, ``512M``, ``8M``, ``1.5GiB``, ``4096`` into bytes (binary units).

    The one size parser: ``ARTCACHE_MAX_SIZE``, ``gc --max-size`` and size options of
    store URLs (``chunk=8M``) all go through it."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ConfigError(f"not a size: {text!r} (expected e.g. 20G, 512M, 4096)")
    number, unit, _ = match.groups()
    return int(float(number) * _SIZE_UNITS[unit.lower()])


def redact_url(url: str) -> str:
    """``url`` as it may be printed: a password in it becomes ``***`` (a user name alone,
    which may be a token, too), and so does the value of any query option that looks like
    a credential (``token``, ``password``, ...).  Never raises, whatever the text."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    userinfo, at, hostport = netloc.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:***@{hostport}" if colon else f"***@{hostport}"
    pieces = []
    for piece in parts.query.split("&") if parts.query else []:
        name, equals, _value = piece.partition("=")
        pieces.append(f"{name}=***" if equals and _SECRET_OPTION_RE.search(unquote(name)) else piece)
    return urlunsplit((parts.scheme, netloc, parts.path, "&".join(pieces), ""))


def default_store_url(environ: Mapping[str, str]) -> str:
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return "file://" + str(Path(base) / "artcache")


def default_stats_dir(environ: Mapping[str, str]) -> str:
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "artcache-stats")


def stats_root(settings: Settings, store_url: str) -> Path:
    """Where this machine keeps the activity (hits, misses, saves) of a store that has no
    local directory of its own (a Redis- or HTTP-only store): one directory per store,
    named by a digest of its redacted URL under ``settings.stats_dir``."""
    name = hashlib.sha256(redact_url(store_url).encode()).hexdigest()[:16]
    return Path(settings.stats_dir) / name


def _flag(environ: Mapping[str, str], name: str, default: bool, problems: list[str]) -> bool:
    raw = environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False if value else default
    problems.append(f"{name}={raw!r} is not a switch: set it to 1 or 0 (or unset it)")
    return default


@dataclass(frozen=True)
class Settings:
    """What the environment asked for.  Build one with :func:`settings_from_env`."""

    store_urls: tuple[str, ...]
    max_size: int | None = None
    disabled: bool = False
    strict: bool = False
    signing_key: str | None = field(default=None, repr=False)  # may hold the private key itself
    trusted_keys: tuple[str, ...] = field(default_factory=tuple)
    single_flight: bool = True
    http_token: str | None = field(default=None, repr=False)  # a secret: never printed
    compress: bool = True  # zstd-compress blobs where it pays (when zstandard is installed)
    # torch.compile with the artcache backend serves frames without Dynamo where it can
    # (the precompile tier, artcache.frame_hook); a backend's own option overrides it.
    precompile: bool = False
    # Activity of stores without a local directory (see stats_root); empty: not kept.
    stats_dir: str = ""
    # One line per unusable variable, naming it and the fix; the value it had is ignored.
    # Whoever builds a cache from these settings decides what they mean (check()).
    problems: tuple[str, ...] = ()

    def __repr__(self) -> str:
        # Store URLs may carry passwords: shown redacted (secret fields are left out).
        shown = [f"store_urls={tuple(redact_url(u) for u in self.store_urls)!r}"]
        shown += [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.repr and f.name != "store_urls"]
        return f"Settings({', '.join(shown)})"

    def check(self) -> None:
        """Raise ``ConfigError`` naming the first problem, if any."""
        if self.problems:
            raise ConfigError(self.problems[0])


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
    ``ARTCACHE_PRECOMPILE``   ``1``: a hit skips Dynamo too (``torch.compile`` with the artcache
                              backend and ``Cache.backend()``; see ``artcache.frame_hook``)

    A value that cannot be used never raises here: it is ignored and described in
    ``Settings.problems`` (the backend warns and turns the cache off, strict mode and the
    CLI raise it).
    """
    env = os.environ if environ is None else environ
    problems: list[str] = []
    raw_store = env.get("ARTCACHE_STORE", "").strip()
    urls = tuple(u.strip() for u in raw_store.split(",") if u.strip()) or (default_store_url(env),)
    raw_size = env.get("ARTCACHE_MAX_SIZE", "").strip()
    max_size = None
    if raw_size:
        try:
            max_size = parse_size(raw_size)
        except ConfigError:
            problems.append(f"ARTCACHE_MAX_SIZE={raw_size!r} is not a size: set it like 20G, 512M or 4096 "
                            "(bytes), or unset it for no cap")
    raw_trusted = env.get("ARTCACHE_TRUSTED_KEYS", "").strip()
    return Settings(
        store_urls=urls,
        max_size=max_size,
        disabled=_flag(env, "ARTCACHE_DISABLE", False, problems),
        strict=_flag(env, "ARTCACHE_STRICT", False, problems),
        signing_key=env.get("ARTCACHE_SIGNING_KEY") or None,
        trusted_keys=tuple(k.strip() for k in raw_trusted.split(",") if k.strip()),
        single_flight=_flag(env, "ARTCACHE_SINGLE_FLIGHT", True, problems),
        http_token=env.get("ARTCACHE_HTTP_TOKEN", "").strip() or None,
        compress=_flag(env, "ARTCACHE_COMPRESS", True, problems),
        precompile=_flag(env, "ARTCACHE_PRECOMPILE", False, problems),
        stats_dir=default_stats_dir(env),
        problems=tuple(problems),
    )
