"""HTTP store: a shared tier on an HTTP cache server, over urllib3 with pooled connections.

It speaks the bazel-remote HTTP cache protocol, which is artcache's own keyspaces:
``GET``/``PUT``/``HEAD`` (and ``DELETE`` where the server allows it) on
``<base>/cas/<sha256>`` and ``<base>/ac/<key>``.  bazel-remote, nginx with WebDAV
(``dav_methods PUT DELETE; create_full_put_path on;``) and generic repositories of
Artifactory or Nexus serve it.

URL::

    http[s]://[user:password@]host[:port][/prefix][?timeout=2][&ro=1][&verify=0][&ca=/path]
        [&token_file=/path][&list=1][&cas=plain][&pool=8]

* Credentials: ``user:password@`` is HTTP basic authentication; ``token_file=`` names a
  file holding a bearer token; otherwise the ``ARTCACHE_HTTP_TOKEN`` setting (read by
  :func:`artcache.config.settings_from_env`), if set, is sent as a bearer token to every
  HTTP tier that names no credentials of its own.  A token in the URL itself is refused:
  URLs end up in shell histories, CI logs and process listings.  No credential appears
  in ``url``, ``repr``, an error message or a log line.
* ``verify=0`` turns TLS certificate verification off; ``ca=`` names a CA bundle file.
* ``timeout`` bounds every connect and every read (default 2 s) and nothing is retried,
  so a dead or stalled server costs one bounded wait; the tiered store then skips the
  tier for its cool-down.  (It bounds each socket read, not a whole response: a server
  that trickles bytes slower than one per timeout keeps a read going.)
* ``list=1``: the server lists a directory as JSON the way nginx's
  ``autoindex on; autoindex_format json;`` does.  Without it the store declares
  ``can_list = False`` and :meth:`iterate` raises a one-line ``StoreError``
  (bazel-remote cannot list), so ``artcache ls``/``gc``/``verify`` need a local tier or
  a listing server.
* ``cas=plain`` stores blobs as their bare bytes, as bazel-remote requires (it checks
  every ``/cas/`` upload against its SHA-256 address; run it with
  ``--disable_http_ac_validation`` for the manifests).  Each blob read is then checked
  against its SHA-256 address, which on a fast link costs more than the transfer.
* ``pool`` is the number of pooled connections, and of blobs fetched at once.

Every value carries the integrity trailer of ``_frame.py`` (XXH3-128 and length, as in the
local and Redis stores), manifests included, except blobs under ``cas=plain``.  A value
that fails its check reads as a miss, is counted in ``corrupt`` and is reported to
``on_corrupt`` (the tiered store and ``open_store`` route that to the ``Cache``'s error
policy).  A read takes the payload and the trailer as two reads of the response, so the
payload reaches the caller as the very ``bytes`` the socket filled: cutting the trailer
off one buffer copies the value once more (three times the GET at 1 MiB here).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from ..digest import content_digest
from ..errors import StoreConfigError, StoreError
from ._frame import TRAILER_SIZE, check_framed, trailer
from .base import KEYSPACES, KeyInfo, Store, check_key, unknown_option_message

try:
    import urllib3
    from urllib3.exceptions import HTTPError as Urllib3Error
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise StoreError("http:// and https:// stores need the http extra: pip install 'artcache[http]'") from exc

CorruptHandler = Callable[[str, str], None]  # (key, why)

DEFAULT_TIMEOUT_S = 2.0
DEFAULT_POOL = 8
# Sizes are bounded before anything is read: a server may be hostile or broken.
MAX_VALUE_BYTES = 1 << 34
MAX_LISTING_BYTES = 256 << 20
# Reads larger than this go in pieces of this size, so that what is allocated follows the
# bytes that actually arrive, not the length a server announces.
_READ_PIECE = 64 << 20
_OPTIONS = ("timeout", "ro", "verify", "ca", "token_file", "list", "cas", "pool")
_SECRET_OPTIONS = ("token", "access_token", "password", "auth")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class HttpStore(Store):
    verifies_content = True  # checks every value itself: the tiered store need not hash again

    def __init__(
        self,
        base_url: str,
        *,
        url: str,
        authorization: str | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        verify_tls: bool = True,
        ca_path: str | None = None,
        read_only: bool = False,
        can_list: bool = False,
        plain_cas: bool = False,
        pool_size: int = DEFAULT_POOL,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise StoreError(f"{url}: expected http://host[:port][/prefix] or https://...")
        if timeout_s <= 0 or pool_size < 1:
            raise StoreError(f"{url}: timeout and pool must be positive")
        self.url = url
        self.read_only = read_only
        self.can_list = can_list
        self.plain_cas = plain_cas
        self.pool_size = pool_size
        self._path = parts.path.rstrip("/")
        self._headers: dict[str, str] = {"Accept-Encoding": "identity"}
        if authorization is not None:
            self._headers["Authorization"] = authorization
        self._put_headers = {**self._headers, "Content-Type": "application/octet-stream"}
        pool_args: dict[str, Any] = {
            "maxsize": pool_size,
            "block": False,
            # No retries and no redirects: a retry would multiply the bounded wait of a
            # dead server (the tiered store's cool-down is the recovery), and a redirect
            # could carry the credentials to another host.
            "retries": urllib3.Retry(total=False, redirect=False),
            "timeout": urllib3.Timeout(connect=timeout_s, read=timeout_s),
        }
        if parts.scheme == "https":
            pool_args["cert_reqs"] = "CERT_REQUIRED" if verify_tls else "CERT_NONE"
            if ca_path is not None:
                pool_args["ca_certs"] = ca_path
        with self._errors("open"):
            self._pool = urllib3.connection_from_url(urlunsplit((parts.scheme, parts.netloc, "", "", "")), **pool_args)
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()
        self.corrupt = 0  # values that failed their check and were not served
        self.on_corrupt: CorruptHandler | None = None

    @classmethod
    def from_url(cls, url: str, *, token: str | None = None) -> HttpStore:
        """A store for ``url``; ``token`` is the bearer token from the settings, used
        when the URL names no credentials of its own."""
        parts = urlsplit(url.strip())
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        shown = _redacted(parts, [(k, v) for k, v in pairs if k in _OPTIONS])
        for name, _value in pairs:
            if name.lower() in _SECRET_OPTIONS:
                raise StoreConfigError(f"{shown}: do not put a {name} in a store URL (it ends up in logs); "
                                 "use token_file=/path or ARTCACHE_HTTP_TOKEN")
            if name not in _OPTIONS:
                raise StoreConfigError(unknown_option_message(shown, name, _OPTIONS))
        options = dict(pairs)
        try:
            timeout = float(options.get("timeout", DEFAULT_TIMEOUT_S))
            pool = int(options.get("pool", DEFAULT_POOL))
            _port = parts.port  # raises on a malformed port
        except ValueError as exc:
            raise StoreConfigError(f"{shown}: bad timeout, pool or port ({exc})") from exc
        authorization = _authorization(parts, options.get("token_file"), token, shown)
        ca = options.get("ca") or None
        if ca is not None and not Path(ca).is_file():
            raise StoreConfigError(f"{shown}: CA bundle {ca} is not a file")
        cas = options.get("cas", "framed")
        if cas not in ("framed", "plain"):
            raise StoreConfigError(f"{shown}: cas must be 'framed' or 'plain', got {cas!r}")
        base = urlunsplit((parts.scheme, _netloc(parts), parts.path, "", ""))
        return cls(
            base,
            url=shown,
            authorization=authorization,
            timeout_s=timeout,
            verify_tls=_flag(options, "verify", True, shown),
            ca_path=ca,
            read_only=_flag(options, "ro", False, shown),
            can_list=_flag(options, "list", False, shown),
            plain_cas=cas == "plain",
            pool_size=pool,
        )

    # -- plumbing ---------------------------------------------------------------------
    def _target(self, key: str) -> str:
        check_key(key)
        return f"{self._path}/{key}"

    @contextmanager
    def _errors(self, operation: str, key: str = "") -> Iterator[None]:
        try:
            yield
        except (Urllib3Error, OSError) as exc:
            # Refused or timed-out connects, read timeouts, resets, TLS failures,
            # truncated bodies: all are "this tier failed".  urllib3's messages name the
            # host and path, never the headers, so no credential is in them.
            what = f"{operation} {key}" if key else operation
            raise StoreError(f"{what} on {self.url}: {type(exc).__name__}: {exc}") from exc

    def _request(self, method: str, key: str, *, body: bytes | None = None) -> urllib3.BaseHTTPResponse:
        headers = self._headers if body is None else self._put_headers
        return self._pool.urlopen(method, self._target(key), body=body, headers=headers, preload_content=False)

    def _failed(self, operation: str, key: str, response: urllib3.BaseHTTPResponse) -> StoreError:
        if response.status in (401, 403):
            why = "the server refused the credentials (or none were given)"
        elif response.status in (405, 501):
            why = f"the server does not allow {operation.upper()}"
        else:
            why = "unexpected answer"
        return StoreError(f"{operation} {key} on {self.url}: HTTP {response.status} {response.reason}: {why}")

    @staticmethod
    def _finish(response: urllib3.BaseHTTPResponse) -> None:
        """Return the connection to the pool, reading what is left of a small body so
        it can carry the next request, or closing it if much is left."""
        remaining = getattr(response, "length_remaining", None)
        if remaining is not None and remaining > 1 << 16:
            response.close()
        else:
            response.drain_conn()
        response.release_conn()

    def _reject(self, key: str, why: str) -> None:
        self.corrupt += 1
        if self.on_corrupt is not None:
            self.on_corrupt(key, why)
        return None

    # -- reads ------------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        with self._errors("get", key):
            return self._get(key)

    def _get(self, key: str) -> bytes | None:
        space, name = check_key(key)
        response = self._request("GET", key)
        try:
            if response.status == 404:
                return None
            if response.status != 200:
                raise self._failed("get", key, response)
            length = response.length_remaining
            if length is not None and length > MAX_VALUE_BYTES:
                return self._reject(key, f"the server offers {length} bytes, over the {MAX_VALUE_BYTES} limit")
            plain = self.plain_cas and space == "cas"
            if length is None:  # no Content-Length (a chunked answer): read to a bound
                value = _read_up_to(response, MAX_VALUE_BYTES + 1)
                if len(value) > MAX_VALUE_BYTES:
                    return self._reject(key, f"value over the {MAX_VALUE_BYTES} limit")
                if not plain and len(value) < TRAILER_SIZE:
                    return self._reject(key, "value is shorter than its integrity trailer")
                payload, raw_trailer = (value, b"") if plain else (value[:-TRAILER_SIZE], value[-TRAILER_SIZE:])
            elif plain:
                payload, raw_trailer = _read_up_to(response, length), b""
            elif length < TRAILER_SIZE:
                return self._reject(key, "value is shorter than its integrity trailer")
            else:
                # Two reads: the payload arrives as its own ``bytes``, no copy to cut it.
                payload = _read_up_to(response, length - TRAILER_SIZE)
                raw_trailer = _read_up_to(response, TRAILER_SIZE)
        finally:
            self._finish(response)
        if plain:
            if content_digest(payload) != name:
                return self._reject(key, "bytes do not match their sha256 address")
            return payload
        why = check_framed(payload, raw_trailer)
        return payload if not why else self._reject(key, why)

    def get_many(self, keys: Iterable[str]) -> dict[str, bytes | None]:
        wanted = list(dict.fromkeys(keys))
        for key in wanted:
            check_key(key)
        if len(wanted) <= 1 or self.pool_size == 1:
            return {key: self.get(key) for key in wanted}
        # Blobs are fetched ``pool_size`` at a time, each on a pooled connection: over a
        # real network the round trips overlap instead of adding up.  Every request has
        # the same bounded wait, so a dead server still costs one timeout.
        futures = [self._pool_executor().submit(self.get, key) for key in wanted]
        return {key: future.result() for key, future in zip(wanted, futures)}

    def _pool_executor(self) -> ThreadPoolExecutor:
        with self._executor_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.pool_size, thread_name_prefix="artcache-http")
            return self._executor

    def has(self, key: str) -> bool:
        with self._errors("has", key):
            response = self._request("HEAD", key)
            try:
                if response.status in (200, 204):
                    return True
                if response.status == 404:
                    return False
                raise self._failed("has", key, response)
            finally:
                self._finish(response)

    def iterate(self, prefix: str = "") -> Iterator[KeyInfo]:
        if not self.can_list:
            raise StoreError(f"{self.url} cannot list keys: the HTTP cache protocol has no listing "
                             "(add list=1 for a server with nginx-style JSON listings)")
        for space in KEYSPACES:
            if (space + "/").startswith(prefix[: len(space) + 1]):
                with self._errors("iterate"):
                    listing = self._listing(space)
                yield from (info for info in listing if info.key.startswith(prefix))

    def _listing(self, space: str) -> list[KeyInfo]:
        response = self._pool.urlopen("GET", f"{self._path}/{space}/", headers=self._headers, preload_content=False)
        try:
            if response.status == 404:  # nothing was ever written to this keyspace
                return []
            if response.status != 200:
                raise self._failed("list", space + "/", response)
            raw = _read_up_to(response, MAX_LISTING_BYTES + 1)
        finally:
            self._finish(response)
        if len(raw) > MAX_LISTING_BYTES:
            raise StoreError(f"list {space}/ on {self.url}: listing over {MAX_LISTING_BYTES} bytes")
        try:
            items = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise StoreError(f"list {space}/ on {self.url}: not a JSON listing (is autoindex_format json set?)") from exc
        if not isinstance(items, list):
            raise StoreError(f"list {space}/ on {self.url}: not a JSON listing (is autoindex_format json set?)")
        out = []
        framed = not (self.plain_cas and space == "cas")
        for item in items:
            info = _listed(space, item, TRAILER_SIZE if framed else 0)
            if info is not None:
                out.append(info)
        return out

    # -- writes -----------------------------------------------------------------------
    def put(self, key: str, data: bytes) -> None:
        self.put_many({key: data})

    def put_many(self, items: Mapping[str, bytes]) -> None:
        for key in items:
            check_key(key)
        self._check_writable()
        for key, data in items.items():
            plain = self.plain_cas and key.startswith("cas/")
            body = bytes(data) if plain else b"".join((data, trailer(data)))
            with self._errors("put", key):
                response = self._request("PUT", key, body=body)
                try:
                    if not 200 <= response.status < 300:
                        raise self._failed("put", key, response)
                finally:
                    self._finish(response)

    def delete(self, key: str) -> bool:
        check_key(key)
        self._check_writable()
        with self._errors("delete", key):
            response = self._request("DELETE", key)
            try:
                if response.status == 404:
                    return False
                if not 200 <= response.status < 300:
                    raise self._failed("delete", key, response)
                return True
            finally:
                self._finish(response)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
        self._pool.close()


def _read_up_to(response: urllib3.BaseHTTPResponse, size: int) -> bytes:
    """At most ``size`` bytes of the body: fewer only at its end.  Up to ``_READ_PIECE``
    in one read, which hands back the ``bytes`` the socket filled; above that in pieces
    joined at the end (one copy, for values that large)."""
    if size <= _READ_PIECE:
        return response.read(size, decode_content=False)
    pieces: list[bytes] = []
    got = 0
    while got < size:
        piece = response.read(min(_READ_PIECE, size - got), decode_content=False)
        if not piece:
            break
        pieces.append(piece)
        got += len(piece)
    return b"".join(pieces)


# -- URL helpers --------------------------------------------------------------------------
def _netloc(parts: Any) -> str:
    """host[:port] without credentials (IPv6 hosts bracketed again)."""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{host}:{port}" if port else host


def _redacted(parts: Any, options: list[tuple[str, str]]) -> str:
    """The URL as shown in messages and listings: no user, no password, known options only."""
    return urlunsplit((parts.scheme, _netloc(parts), parts.path, urlencode(options), ""))


def _flag(options: Mapping[str, str], name: str, default: bool, shown: str) -> bool:
    value = options.get(name)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise StoreConfigError(f"{shown}: option {name} must be 1 or 0, got {value!r}")


def _authorization(parts: Any, token_file: str | None, token: str | None, shown: str) -> str | None:
    """The ``Authorization`` header value, from the URL's user, a token file or the setting."""
    has_user = parts.username is not None or parts.password is not None
    if has_user and token_file:
        raise StoreConfigError(f"{shown}: give either user:password@ or token_file=, not both")
    if has_user:
        user, password = unquote(parts.username or ""), unquote(parts.password or "")
        return urllib3.make_headers(basic_auth=f"{user}:{password}")["authorization"]
    if token_file:
        try:
            file_token = Path(token_file).expanduser().read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise StoreConfigError(f"{shown}: cannot read token_file {token_file}: {type(exc).__name__}") from exc
        if not file_token or any(c in file_token for c in "\r\n"):
            raise StoreConfigError(f"{shown}: token_file {token_file} must hold one line, the token")
        return f"Bearer {file_token}"
    if token:
        return f"Bearer {token.strip()}"
    return None


def _listed(space: str, item: object, trailer_size: int) -> KeyInfo | None:
    """A ``KeyInfo`` from one entry of an nginx JSON listing, or ``None`` if it is not a
    stored value of ours (a directory, a temp file, a malformed entry)."""
    if not isinstance(item, dict) or item.get("type") != "file":
        return None
    name, size = item.get("name"), item.get("size")
    if not isinstance(name, str) or not isinstance(size, int) or size < trailer_size:
        return None
    key = f"{space}/{name}"
    try:
        check_key(key)
    except StoreError:
        return None
    last_used = 0.0
    mtime = item.get("mtime")
    if isinstance(mtime, str):
        try:
            last_used = parsedate_to_datetime(mtime).timestamp()
        except (TypeError, ValueError):
            last_used = 0.0
    return KeyInfo(key, size - trailer_size, last_used)

