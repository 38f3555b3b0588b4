"""Redis store: the shared remote tier, on redis-py (hiredis parses replies when installed).

URL::

    redis://[:password@]host:port/db[?prefix=ci1][&ttl=86400][&timeout=2][&ro=1][&chunk=8M]

Layout under the namespace ``base = "artcache:v2:" [+ prefix + ":"]``::

    {base}cas:<sha256>          a blob up to ``inline_max`` bytes, stored whole
    {base}ac:<key>              a manifest, stored whole
    {base}#sum:<space>:<name>   the integrity trailer of that inline value (``_frame.py``:
                                XXH3-128 and length)
    {base}#hdr:<space>:<name>   header of a chunked value:
                                b"ACH2 <token> <count> <size> <xxh3-128 hex of the value>"
    {base}#chunk:<token>:<i>    its chunks, ``chunk_size`` bytes each

``v2`` is the layout version (``v1`` values, checked against their SHA-256 address, are
not read).  Internal names start with ``#``, which a namespace cannot contain, so no
namespace's keys can be mistaken for another's headers, checksums or chunks.

Why this shape:

* A chunked value is published by its header, written *after* all its chunks, so a reader
  never sees a partial value.  Chunks are named by a random per-write token, never by the
  key, so two writers of one ``ac/`` key cannot interleave their chunks; the header names
  exactly one complete set.
* The inline, checksum and header keys of one store key are read with one ``MGET``
  (atomic in Redis, one round trip) and written in one ``MULTI`` that also deletes the
  other form, so a reader sees the old value with its checksum, the new one with its
  own, or nothing.  The checksum lives in its own key rather than after the value: the
  value then reaches the caller as the very ``bytes`` redis-py built, where stripping a
  trailer copied every value once more (a 1 MiB copy into fresh memory cost ~1.3 ms
  here, twice the GET).
* Large replies are slow in redis-py (one 64 MiB GET costs ~4x the same bytes fetched as
  1 MiB GETs here), so chunks are 1 MiB even though only values above 8 MiB are chunked.
* Every value, blob or manifest, carries an XXH3-128 checksum that is checked before it
  is returned: this store is shared, and a shared store sees damaged and half-written
  values.  A value that fails reads as a miss (``None``, as the ``Store`` protocol says of
  corrupt data), is counted in ``corrupt`` and is reported to ``on_corrupt`` (the tiered
  store and ``open_store`` route that to the ``Cache``'s error policy).  Not SHA-256:
  hashing a 1 MiB GET with SHA-256 cost as much as the GET itself (0.63x of raw), and
  without signatures it would authenticate nothing, since whoever can rewrite a blob here
  can as well write a manifest naming new blobs.  Under ``ARTCACHE_TRUSTED_KEYS`` the
  ``Cache`` checks every blob against its SHA-256 address (the signature covers those).
* Bounded before read.  A chunk header may name at most ``MAX_CHUNKS`` chunks, never more
  than its size in bytes, and the chunks' lengths (one pipelined ``STRLEN`` each) must add
  up to the declared size before any chunk is fetched; chunks are then fetched with
  ``GETRANGE`` up to their length, a few at a time.  A manifest (``ac/``) above
  ``MAX_MANIFEST_BYTES``, or a value above a caller's bound (``get_bounded``), is refused
  having read at most the bound (``GETRANGE``).  So a header that declares billions of
  chunks, or chunks that do not exist, or a value far larger than expected, costs a
  reader (and a writer replacing it) a few round trips and no allocation past the bound.
* A value that fails its checksum, or a blob that fails its SHA-256 address
  (:meth:`RedisStore.quarantine`), is deleted, so that the next legitimate write
  replaces it and no reader fetches it again.  The delete is conditional (a Lua script
  compares the checksum or header that was read), so a good value a writer stored
  meanwhile is kept.
* Every network call runs under connect and read timeouts (2 s by default) with no
  retries, and every redis-py or socket error becomes ``StoreError``: a dead or stalled
  server costs one bounded wait, and the tiered store then skips it for a cool-down.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..config import parse_size, redact_url
from ..digest import checksum, checksum_hasher, content_digest
from ..errors import ConfigError, CorruptEntryError, StoreConfigError, StoreError
from ._frame import check_framed, trailer
from ._redis_layout import (
    DELETE_IF_UNCHANGED,
    MAX_CHUNKS,
    Header,
    Oversized,
    batches,
    lowest,
)
from .base import KEYSPACES, MAX_MANIFEST_BYTES, KeyInfo, Store, check_key, unknown_option_message
from .leases import Lease, RedisLease

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise StoreError("redis:// stores need the redis extra: pip install 'artcache[redis]' (and hiredis)") from exc

CorruptHandler = Callable[[str, str], None]  # (key, why)

DEFAULT_TIMEOUT_S = 2.0
DEFAULT_CHUNK_SIZE = 1 << 20
DEFAULT_INLINE_MAX = 8 << 20
# Chunks outlive their header by this much, so that with a TTL the header (the commit
# point) always expires first and no reader finds a header whose chunks are gone.
CHUNK_TTL_GRACE_S = 600
_SCAN_COUNT = 1000
_LAYOUT = "artcache:v2:"
_NAMESPACE_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_OUR_OPTIONS = ("prefix", "namespace", "ttl", "timeout", "ro", "chunk")
_OPTION_HELP = {
    "port": "expected redis://host:port/db with a numeric port",
    "timeout": "seconds, e.g. timeout=2",
    "ttl": "whole seconds, e.g. ttl=86400",
    "chunk": "a size, e.g. chunk=8M",
}
# redis-py's own URL options (its URL_QUERY_ARGUMENT_PARSERS and TLS settings).
_REDIS_PY_OPTIONS = frozenset({
    "db", "socket_timeout", "socket_connect_timeout", "socket_read_size", "socket_keepalive",
    "retry_on_timeout", "retry_on_error", "max_connections", "health_check_interval",
    "ssl_check_hostname", "ssl_include_verify_flags", "ssl_exclude_verify_flags", "ssl_min_version",
    "protocol", "client_name", "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile",
})
_TRUE = {"1", "true", "yes", "on"}


class RedisStore(Store):
    verifies_content = True  # checks every value's XXH3 checksum itself (not its SHA-256)
    bounded_reads = True  # get_bounded never fetches past the bound

    def __init__(
        self,
        client: redis.Redis,
        *,
        url: str,
        namespace: str = "",
        ttl_s: int | None = None,
        read_only: bool = False,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        inline_max: int = DEFAULT_INLINE_MAX,
    ) -> None:
        if namespace and not _NAMESPACE_RE.fullmatch(namespace):
            raise StoreError(f"{url}: namespace must match {_NAMESPACE_RE.pattern}, got {namespace!r}")
        if chunk_size < 1 or inline_max < 0:
            raise StoreError(f"{url}: chunk sizes must be positive")
        if ttl_s is not None and ttl_s < 1:
            raise StoreError(f"{url}: ttl must be at least 1 second")
        self._client = client
        self.url = url
        self.read_only = read_only
        self.ttl_s = ttl_s
        self.chunk_size = chunk_size
        self.inline_max = inline_max
        self._base = f"{_LAYOUT}{namespace}:" if namespace else _LAYOUT
        self.corrupt = 0  # values that failed their checksum and were not served
        self.on_corrupt: CorruptHandler | None = None
        self._delete_if_unchanged = client.register_script(DELETE_IF_UNCHANGED)

    @classmethod
    def from_url(cls, url: str) -> RedisStore:
        """A store for ``url``.  An option neither artcache nor redis-py knows is refused
        by name (a typo such as ``tll=60`` would otherwise reach redis-py as a keyword
        and fail at the first command); sizes take ``parse_size`` units (``chunk=8M``)."""
        parts = urlsplit(url.strip())
        shown = redact_url(url)
        ours: dict[str, str] = {}
        theirs: list[tuple[str, str]] = []
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name in _OUR_OPTIONS:
                ours[name] = value
            elif name in _REDIS_PY_OPTIONS:  # redis-py's own options pass through
                theirs.append((name, value))
            else:
                raise StoreConfigError(unknown_option_message(shown, name, _OUR_OPTIONS))
        option = ""
        try:
            option = "port"
            _port = parts.port  # raises on a malformed port
            option = "timeout"
            timeout = float(ours.get("timeout", DEFAULT_TIMEOUT_S))
            option = "ttl"
            ttl = int(ours["ttl"]) if ours.get("ttl") else None
            option = "chunk"
            chunk = parse_size(ours["chunk"]) if ours.get("chunk") else None
        except (ValueError, ConfigError) as exc:
            value = ours.get(option, "") if option != "port" else ""
            raise StoreConfigError(f"{shown}: bad {option}{f' {value!r}' if value else ''} "
                                   f"({_OPTION_HELP[option]})") from exc
        if timeout <= 0:
            raise StoreConfigError(f"{shown}: timeout must be positive ({_OPTION_HELP['timeout']})")
        connection_url = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(theirs), ""))
        try:
            client = redis.Redis.from_url(
                connection_url,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                # No retries: a retry would multiply the bounded wait of a dead server.
                # The tiered store's cool-down is the recovery mechanism.
                retry=Retry(NoBackoff(), 0),
                health_check_interval=0,
            )
        except (ValueError, TypeError, redis.RedisError) as exc:
            # redis-py's messages quote parts of the URL: only its exception type is shown.
            raise StoreConfigError(f"{shown}: not a usable redis URL ({type(exc).__name__}); "
                                   "expected redis://[:password@]host:port/db") from None
        return cls(
            client,
            url=_redacted(parts.scheme, parts.hostname, parts.port, parts.path, parts.query),
            namespace=ours.get("prefix") or ours.get("namespace") or "",
            ttl_s=ttl,
            read_only=ours.get("ro", "").strip().lower() in _TRUE,
            chunk_size=chunk if chunk is not None else DEFAULT_CHUNK_SIZE,
            inline_max=chunk if chunk is not None else DEFAULT_INLINE_MAX,
        )

    # -- names ----------------------------------------------------------------------
    def _inline(self, key: str) -> str:
        space, name = check_key(key)
        return f"{self._base}{space}:{name}"

    def _header(self, key: str) -> str:
        space, name = check_key(key)
        return f"{self._base}#hdr:{space}:{name}"

    def _sum(self, key: str) -> str:
        space, name = check_key(key)
        return f"{self._base}#sum:{space}:{name}"

    def _chunk(self, token: str, index: int) -> str:
        return f"{self._base}#chunk:{token}:{index}"

    @contextmanager
    def _errors(self, operation: str) -> Iterator[None]:
        try:
            yield
        except (redis.RedisError, OSError) as exc:
            # ConnectionError, TimeoutError (the bounded wait), ResponseError (e.g. OOM,
            # READONLY replica), and raw socket errors: all are "this tier failed".
            raise StoreError(f"{operation} on {self.url}: {type(exc).__name__}: {exc}") from exc

    # -- reads ----------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        return self._get_many({key: None})[key]

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        return self._get_many(dict.fromkeys(keys))

    def get_many_bounded(self, bounds: Mapping[str, int]) -> dict[str, bytes | None]:
        return self._get_many(dict(bounds))

    def _get_many(self, bounds: dict[str, int | None]) -> dict[str, bytes | None]:
        """Every key's value (``None`` if absent or refused); ``CorruptEntryError`` if one
        exceeds its caller's bound."""
        wanted = list(bounds)
        for key in wanted:
            check_key(key)
        n = len(wanted)
        result: dict[str, bytes | None] = {}
        if not wanted:
            return result
        # The store's own bound on manifests, and each caller's bound: whichever is lower.
        caps = [lowest(bounds[k], MAX_MANIFEST_BYTES if k.startswith("ac/") else None) for k in wanted]
        with self._errors("get"):
            # An atomic snapshot of every form of every key: one MGET when nothing is
            # bounded (blobs); else see _bounded_snapshot.
            names = [self._inline(k) for k in wanted] + [self._sum(k) for k in wanted] + [self._header(k) for k in wanted]
            if all(cap is None for cap in caps):
                values: list[Any] = self._client.mget(names)
            else:
                values = self._bounded_snapshot(names, caps)
            for i, key in enumerate(wanted):
                inline, sum_, header = values[i], values[n + i], values[2 * n + i]
                if isinstance(inline, Oversized):
                    result[key] = self._over(key, bounds[key], inline.size, ("inline", sum_))
                elif inline is not None:
                    why = check_framed(inline, sum_)
                    result[key] = inline if not why else self._reject(key, why, ("inline", sum_))
                elif header is not None:
                    result[key] = self._read_chunked(key, header, bounds[key], caps[i])
                else:
                    result[key] = None
        return result

    def _bounded_snapshot(self, names: list[str], caps: list[int | None]) -> list[Any]:
        """Like one MGET of ``names`` (inline, checksum and header names of n keys), but
        an inline value above its cap is never fetched: it comes back as ``Oversized``.

        One MULTI reads the lengths of bounded values (STRLEN) with everything else; a
        second MULTI fetches the bounded values within their cap together with their
        checksum and header again (so each value is paired with its own checksum, even
        if a writer replaced it in between), by GETRANGE up to the cap: a value that grew
        meanwhile still costs at most the cap.
        """
        n = len(caps)
        pipe = self._client.pipeline(transaction=True)
        for name, cap in zip(names[:n], caps):
            if cap is None:
                pipe.get(name)
            else:
                pipe.strlen(name)
        pipe.mget(names[n:])
        *firsts, rest = pipe.execute()
        values: list[Any] = firsts + list(rest)
        # STRLEN is 0 for an absent value: absent unless a checksum came with it.
        fetch = [(i, cap) for i, cap in enumerate(caps)
                 if cap is not None and (0 < firsts[i] <= cap or (firsts[i] == 0 and rest[i] is not None))]
        for i, cap in enumerate(caps):
            if cap is not None:
                values[i] = Oversized(firsts[i]) if firsts[i] > cap else None
        if fetch:
            pipe = self._client.pipeline(transaction=True)
            for i, cap in fetch:
                pipe.getrange(names[i], 0, cap)  # at most cap + 1 bytes
                pipe.get(names[n + i])
                pipe.get(names[2 * n + i])
            replies = pipe.execute()
            for j, (i, cap) in enumerate(fetch):
                inline, sum_, header = replies[3 * j : 3 * j + 3]
                present = bool(inline) or sum_ is not None  # GETRANGE of an absent key is b""
                values[i] = (Oversized(len(inline)) if len(inline) > cap else inline) if present else None
                values[n + i], values[2 * n + i] = sum_, header
        return values

    def _over(self, key: str, bound: int | None, size: int | str, evidence: tuple[str, bytes | None]) -> None:
        """A value above its bound: refused for the caller if the bound is the caller's,
        rejected (and deleted) if no writer could have stored it (a manifest above
        ``MAX_MANIFEST_BYTES``)."""
        if bound is not None and (not key.startswith("ac/") or bound <= MAX_MANIFEST_BYTES):
            raise CorruptEntryError(f"{key} in {self.url} holds {size} bytes, more than the {bound} expected")
        return self._reject(key, f"{size} bytes, above the {MAX_MANIFEST_BYTES}-byte bound of a manifest", evidence)

    def _read_chunked(self, key: str, raw_header: bytes, bound: int | None, cap: int | None) -> bytes | None:
        header = Header.decode(raw_header)
        if header is None:
            return self._reject(key, "malformed chunk header (or more chunks than a value may have)", ("header", raw_header))
        if cap is not None and header.size > cap:
            return self._over(key, bound, header.size, ("header", raw_header))
        names = [self._chunk(header.token, i) for i in range(header.count)]
        # The chunks' lengths first (one round trip): nothing is fetched unless every
        # chunk exists and together they hold exactly the declared size.
        pipe = self._client.pipeline(transaction=False)
        for name in names:
            pipe.strlen(name)
        lengths: list[int] = pipe.execute()
        if 0 in lengths and header.size > 0:
            # The value was overwritten or deleted after we read its header (its old
            # chunks are removed after the new header is published): a miss, not an error.
            return None
        if sum(lengths) != header.size:
            return self._reject(key, f"chunks hold {sum(lengths)} bytes, header says {header.size}", ("header", raw_header))
        hasher = checksum_hasher()
        parts: list[bytes] = []
        for batch in batches(list(zip(names, lengths))):
            if len(batch) == 1:
                # One GETRANGE rather than a pipeline: with hiredis, large replies in one
                # read buffer cost more than the extra round trips (measured here).
                got = [self._client.getrange(batch[0][0], 0, max(0, batch[0][1] - 1))]
            else:
                pipe = self._client.pipeline(transaction=False)
                for name, length in batch:
                    pipe.getrange(name, 0, max(0, length - 1))
                got = pipe.execute()
            for part, (_name, length) in zip(got, batch):
                if len(part) != length:
                    return None  # replaced or removed while we read: a miss
                hasher.update(part)  # hash as chunks arrive: no second pass over the value
                parts.append(part)
        if hasher.digest() != header.checksum:
            return self._reject(key, "bytes fail their checksum", ("header", raw_header))
        return b"".join(parts)

    def _reject(self, key: str, why: str, evidence: tuple[str, bytes | None]) -> None:
        self.corrupt += 1
        self._delete_refused(key, evidence)
        if self.on_corrupt is not None:
            self.on_corrupt(key, why)
        return None

    def _delete_refused(self, key: str, evidence: tuple[str, bytes | None]) -> None:
        """Delete a refused value so that the next write replaces it, unless it changed
        since it was read.  Best effort: a reader that cannot delete still refuses it."""
        if self.read_only:
            return
        form, seen = evidence
        try:
            deleted = self._delete_if_unchanged(
                keys=[self._inline(key), self._sum(key), self._header(key)], args=[form, seen or b""]
            )
            if deleted and form == "header":
                self._drop_chunks([seen])
        except redis.RedisError:
            pass

    def quarantine(self, key: str) -> None:
        """Delete the value under ``key`` if it fails its checksum or (``cas/``) its
        SHA-256 address, read again here; a good value is kept."""
        space, name = check_key(key)
        if self.read_only:
            return
        with self._errors("quarantine"):
            inline, sum_, header = self._client.mget([self._inline(key), self._sum(key), self._header(key)])
            if inline is not None:
                evidence: tuple[str, bytes | None] = ("inline", sum_)
                data: bytes | None = inline if not check_framed(inline, sum_) else None
            elif header is not None:
                evidence = ("header", header)
                data = self._read_chunked(key, header, None, None)  # deletes it if damaged
                if data is None:
                    return
            else:
                return
            if data is None or (space == "cas" and content_digest(data) != name):
                self.corrupt += 1
                self._delete_refused(key, evidence)

    def has(self, key: str) -> bool:
        with self._errors("has"):
            return bool(self._client.exists(self._inline(key), self._header(key)))

    def iterate(self, prefix: str = "") -> Iterator[KeyInfo]:
        with self._errors("iterate"):
            for space in KEYSPACES:
                if not (space + "/").startswith(prefix[: len(space) + 1]):
                    continue
                yield from self._iterate_space(space, prefix)

    def _iterate_space(self, space: str, prefix: str) -> Iterator[KeyInfo]:
        inline_base, header_base = f"{self._base}{space}:", f"{self._base}#hdr:{space}:"
        for form_base, chunked in ((inline_base, False), (header_base, True)):
            names = [n.decode() for n in self._client.scan_iter(match=form_base + "*", count=_SCAN_COUNT)]
            # Another namespace may extend ours (``artcache:v2:`` vs ``artcache:v2:x:``):
            # keep only names whose remainder is a valid key.
            keys = {n: f"{space}/{n[len(form_base):]}" for n in names}
            keys = {n: k for n, k in keys.items() if _is_key(k) and k.startswith(prefix)}
            if not keys:
                continue
            pipe = self._client.pipeline(transaction=False)
            for name in keys:
                if chunked:
                    pipe.get(name)
                else:
                    pipe.strlen(name)
            for (name, key), value in zip(keys.items(), pipe.execute()):
                if chunked:
                    header = Header.decode(value) if value is not None else None
                    if header is None:
                        continue  # deleted since the scan, or not ours
                    yield KeyInfo(key, header.size, 0.0)
                elif value or self._client.exists(name):  # STRLEN of a deleted key is 0 too
                    yield KeyInfo(key, int(value), 0.0)

    # -- writes ---------------------------------------------------------------------
    def put(self, key: str, data: bytes) -> None:
        self.put_many({key: data})

    def put_many(self, items: Mapping[str, bytes]) -> None:
        for key, data in items.items():
            check_key(key)
            if key.startswith("ac/") and len(data) > MAX_MANIFEST_BYTES:
                raise StoreError(f"{key}: a {len(data)}-byte manifest exceeds the {MAX_MANIFEST_BYTES}-byte bound")
        self._check_writable()
        with self._errors("put"):
            small = {k: bytes(v) for k, v in items.items() if len(v) <= self.inline_max}
            if small:
                self._put_inline(small)
            for key, data in items.items():
                if len(data) > self.inline_max:
                    self._put_chunked(key, bytes(data))

    def _put_inline(self, items: Mapping[str, bytes]) -> None:
        # MULTI: each value appears together with the removal of a chunked form of the
        # same key, so no reader sees both (MGET prefers inline, but a stale header would
        # otherwise outlive the overwrite and leak its chunks).
        pipe = self._client.pipeline(transaction=True)
        for key, data in items.items():
            pipe.get(self._header(key))
            pipe.set(self._inline(key), data, ex=self.ttl_s)
            pipe.set(self._sum(key), trailer(data), ex=self.ttl_s)
            pipe.delete(self._header(key))
        replies = pipe.execute()
        self._drop_chunks([replies[i] for i in range(0, len(replies), 4)])

    def _put_chunked(self, key: str, data: bytes) -> None:
        token = secrets.token_hex(16)
        chunk_size = max(self.chunk_size, -(-len(data) // MAX_CHUNKS))  # at most MAX_CHUNKS
        count = max(1, -(-len(data) // chunk_size))
        chunk_ttl = self.ttl_s + CHUNK_TTL_GRACE_S if self.ttl_s is not None else None
        view = memoryview(data)
        # Chunks first, in bounded batches (no 64 MiB request buffer); nothing names them
        # until the header below is published, so a crash here leaves only orphans
        # (reclaimed by their TTL when one is set).
        batch = self._client.pipeline(transaction=False)
        pending = 0
        for index in range(count):
            piece = view[index * chunk_size : (index + 1) * chunk_size]
            batch.set(self._chunk(token, index), piece.tobytes(), ex=chunk_ttl)
            pending += len(piece)
            if pending >= 8 * chunk_size:
                batch.execute()
                pending = 0
        batch.execute()
        # The commit point: header set and inline form removed in one MULTI.
        pipe = self._client.pipeline(transaction=True)
        pipe.get(self._header(key))
        pipe.set(self._header(key), Header(token, count, len(data), checksum(data)).encode(), ex=self.ttl_s)
        pipe.delete(self._inline(key), self._sum(key))
        old_header, _ok, _deleted = pipe.execute()
        self._drop_chunks([old_header])

    def _drop_chunks(self, headers: Sequence[bytes | None]) -> None:
        """Delete the chunks of replaced or deleted headers.  A reader that read an old
        header just before may then find a chunk gone: it reads that as a miss."""
        names: list[str] = []
        for raw in headers:
            header = Header.decode(raw) if raw is not None else None
            if header is not None:
                names += [self._chunk(header.token, i) for i in range(header.count)]
        for start in range(0, len(names), 1000):
            self._client.delete(*names[start : start + 1000])

    def delete(self, key: str) -> bool:
        check_key(key)
        self._check_writable()
        with self._errors("delete"):
            pipe = self._client.pipeline(transaction=True)
            pipe.get(self._header(key))
            pipe.exists(self._inline(key), self._header(key))
            pipe.delete(self._inline(key), self._sum(key), self._header(key))
            old_header, removed, _deleted = pipe.execute()
            self._drop_chunks([old_header])
        return bool(removed)

    # -- leases (single-flight compiles) --------------------------------------------
    supports_leases = True

    def try_lease(self, key: str) -> Lease | None:
        self._check_writable()
        space, name = check_key(key)
        with self._errors("lease"):
            return RedisLease.try_acquire(self._client, f"{self._base}#lease:{space}:{name}")

    def close(self) -> None:
        with self._errors("close"):
            self._client.close()


def _redacted(scheme: str, host: str | None, port: int | None, path: str, query: str) -> str:
    """The URL without its password: ``url`` is printed in warnings and listings."""
    kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if "password" not in k.lower()]
    netloc = (host or "") + (f":{port}" if port else "")
    return urlunsplit((scheme, netloc, path or "/0", urlencode(kept), ""))


def _is_key(key: str) -> bool:
    try:
        check_key(key)
    except StoreError:
        return False
    return True
