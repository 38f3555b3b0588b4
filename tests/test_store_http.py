"""HttpStore against a real nginx (WebDAV PUT/DELETE): conformance with and without
listings, plain blobs, basic and bearer authentication, TLS, credentials kept out of every
message, damaged values as misses, and bounded waits on dead and stalled servers."""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from artcache import Cache, NewBlob
from artcache.config import settings_from_env
from artcache.errors import CorruptEntryError, StoreError
from artcache.store import LocalStore, Store, TieredStore, open_store

from .nginx_server import BASIC_PASSWORD, BASIC_USER, BEARER_TOKEN, NginxServer, nginx_server  # noqa: F401
from artcache.testing import StoreConformance, StoreFactory, blob, manifest_key, payload_for

pytest.importorskip("urllib3", reason="urllib3 is not installed (pip install 'artcache[http]')")
from artcache.store.http import HttpStore  # noqa: E402


def _ns() -> str:
    return "t" + uuid.uuid4().hex[:12]


class RecordingHandler:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Exception]] = []

    def __call__(self, store: Store, operation: str, error: Exception) -> None:
        self.calls.append((store.url, operation, error))


# -- conformance ----------------------------------------------------------------------
class TestHttpConformance(StoreConformance):
    """nginx with JSON listings: the whole suite, listing included."""

    @pytest.fixture
    def make_store(self, nginx_server: NginxServer) -> StoreFactory:  # noqa: F811
        return lambda: HttpStore.from_url(nginx_server.url("open", _ns()) + "?list=1")


class TestHttpWithoutListingConformance(StoreConformance):
    """A server that cannot list (like bazel-remote): the store says so, the suite skips listing."""

    @pytest.fixture
    def make_store(self, nginx_server: NginxServer) -> StoreFactory:  # noqa: F811
        return lambda: HttpStore.from_url(nginx_server.url("nolist", _ns()))


class TestHttpPlainBlobsConformance(StoreConformance):
    """``cas=plain``: blobs stored as their bare bytes (what bazel-remote accepts)."""

    @pytest.fixture
    def make_store(self, nginx_server: NginxServer) -> StoreFactory:  # noqa: F811
        return lambda: HttpStore.from_url(nginx_server.url("open", _ns()) + "?list=1&cas=plain")


class TestLocalOverHttpConformance(StoreConformance):
    @pytest.fixture
    def make_store(self, nginx_server: NginxServer, tmp_path: Path) -> StoreFactory:  # noqa: F811
        counter = iter(range(1000))
        return lambda: open_store(f"file://{tmp_path}/l{next(counter)}?fsync=0,{nginx_server.url('nolist', _ns())}")


# -- layout and options ---------------------------------------------------------------
def _file(server: NginxServer, location: str, prefix: str, key: str) -> Path:
    return server.root / location / prefix / key


def test_values_carry_the_trailer_and_plain_blobs_do_not(nginx_server: NginxServer) -> None:  # noqa: F811
    ns = _ns()
    key, data = blob(payload_for("layout", 5000))
    HttpStore.from_url(nginx_server.url("open", ns)).put(key, data)
    stored = _file(nginx_server, "open", ns, key).read_bytes()
    assert stored[:5000] == data and len(stored) == 5000 + 28 and stored.endswith(b"ACF1")
    plain_ns = _ns()
    plain = HttpStore.from_url(nginx_server.url("open", plain_ns) + "?cas=plain")
    plain.put(key, data)
    plain.put(manifest_key("m"), b"manifest")
    assert _file(nginx_server, "open", plain_ns, key).read_bytes() == data  # sha256(value) == address
    assert _file(nginx_server, "open", plain_ns, manifest_key("m")).read_bytes().endswith(b"ACF1")


def test_read_only_url(nginx_server: NginxServer) -> None:  # noqa: F811
    ns = _ns()
    key, data = blob(b"seeded by a writer")
    HttpStore.from_url(nginx_server.url("open", ns)).put(key, data)
    ro = open_store(nginx_server.url("open", ns) + "?ro=1")
    assert isinstance(ro, HttpStore) and ro.read_only
    assert ro.get(key) == data
    with pytest.raises(StoreError):
        ro.put(*blob(b"x"))
    with pytest.raises(StoreError):
        ro.delete(key)


@pytest.mark.parametrize("query", ["timeout=abc", "timeout=0", "pool=0", "ro=maybe", "verify=perhaps",
                                   "cas=zipped", "ca=/nonexistent/ca.pem", "retries=3"])
def test_bad_options_are_store_errors(nginx_server: NginxServer, query: str) -> None:  # noqa: F811
    with pytest.raises(StoreError):
        HttpStore.from_url(f"{nginx_server.url('open')}?{query}")


def test_default_timeout_is_two_seconds_and_nothing_is_retried(nginx_server: NginxServer) -> None:  # noqa: F811
    store = HttpStore.from_url(nginx_server.url("open"))
    timeout = store._pool.timeout
    assert timeout.connect_timeout == 2.0 and timeout.read_timeout == 2.0
    retries = store._pool.retries
    assert retries.total is False and retries.redirect == 0 and retries.raise_on_redirect is False


def test_unlisting_store_is_skipped_by_tiered_listing(nginx_server: NginxServer, tmp_path: Path) -> None:  # noqa: F811
    handler = RecordingHandler()
    tiered = open_store(f"file://{tmp_path}/local,{nginx_server.url('nolist', _ns())}", on_error=handler)
    key, data = blob(b"listed locally")
    tiered.put(key, data)
    assert [i.key for i in tiered.iterate()] == [key]
    assert handler.calls == []  # not listing is no failure, and the tier is not benched
    assert tiered.get(key) == data


# -- authentication and secrets -------------------------------------------------------
def test_basic_auth_from_the_url(nginx_server: NginxServer) -> None:  # noqa: F811
    ns = _ns()
    base = nginx_server.url("basic", ns).replace("http://", f"http://{BASIC_USER}:{BASIC_PASSWORD}@")
    store = HttpStore.from_url(base + "?list=1")
    key, data = blob(b"behind basic auth")
    store.put(key, data)
    assert store.get(key) == data and [i.key for i in store.iterate()] == [key]
    assert BASIC_PASSWORD not in store.url and BASIC_PASSWORD not in repr(store) and BASIC_USER not in store.url
    anonymous = HttpStore.from_url(nginx_server.url("basic", ns))
    wrong = HttpStore.from_url(base.replace(BASIC_PASSWORD, "not-the-password"))
    for bad in (anonymous, wrong):
        with pytest.raises(StoreError, match="HTTP 401") as raised:
            bad.get(key)
        assert "credentials" in str(raised.value) and "not-the-password" not in str(raised.value)


def test_bearer_token_from_a_file_or_the_environment(nginx_server: NginxServer, tmp_path: Path) -> None:  # noqa: F811
    ns = _ns()
    url = nginx_server.url("bearer", ns)
    token_file = tmp_path / "token"
    token_file.write_text(BEARER_TOKEN + "\n")
    key, data = blob(b"behind a bearer token")
    from_file = HttpStore.from_url(f"{url}?token_file={token_file}")
    from_file.put(key, data)
    assert from_file.get(key) == data
    assert BEARER_TOKEN not in from_file.url and BEARER_TOKEN not in repr(from_file)
    # ARTCACHE_HTTP_TOKEN, read by settings_from_env, reaches the HTTP tier through the Cache.
    settings = settings_from_env({"ARTCACHE_STORE": url, "ARTCACHE_HTTP_TOKEN": BEARER_TOKEN})
    assert BEARER_TOKEN not in repr(settings)
    cache = Cache(settings=settings, strict=True)
    assert cache.store.get(key) == data
    with pytest.raises(StoreError, match="HTTP 401"):
        HttpStore.from_url(url).get(key)  # no token: refused


def test_a_token_in_the_url_is_refused_without_printing_it(nginx_server: NginxServer) -> None:  # noqa: F811
    with pytest.raises(StoreError) as raised:
        open_store(f"{nginx_server.url('bearer')}?token={BEARER_TOKEN}")
    assert "token_file" in str(raised.value) and BEARER_TOKEN not in str(raised.value)
    with pytest.raises(StoreError) as raised:
        open_store(f"htps://{BASIC_USER}:{BASIC_PASSWORD}@example.invalid/x")  # a typo'd scheme
    assert BASIC_PASSWORD not in str(raised.value)


def test_credentials_never_reach_messages_or_logs(
    nginx_server: NginxServer, tmp_path: Path, caplog: pytest.LogCaptureFixture  # noqa: F811
) -> None:
    port = _closed_port()
    secret_urls = [
        f"http://{BASIC_USER}:{BASIC_PASSWORD}@127.0.0.1:{port}/x",  # refused connection
        nginx_server.url("basic", _ns()).replace("http://", f"http://{BASIC_USER}:wrong-{BASIC_PASSWORD}@"),
    ]
    caplog.set_level(logging.DEBUG)  # urllib3's debug lines too
    for remote in secret_urls:
        cache = Cache(store=f"file://{tmp_path}/{_ns()},{remote}", strict=False)
        assert cache.lookup("ab" * 32) is None
        assert cache.save("cd" * 32, [NewBlob("code", b"print(1)")], factors={}, environment={}) is not None
        texts = [repr(cache.store), cache.store.url, str(cache.stats().errors), caplog.text]
        assert cache.stats().errors  # it did fail, and said so
        for text in texts:
            assert BASIC_PASSWORD not in text


def test_env_token_is_sent_only_where_the_url_names_no_credentials(nginx_server: NginxServer) -> None:  # noqa: F811
    basic = nginx_server.url("basic", _ns()).replace("http://", f"http://{BASIC_USER}:{BASIC_PASSWORD}@")
    store = open_store(basic, http_token="some-other-token")
    store.put(*blob(b"basic wins"))  # the URL's own credentials are used, not the setting's


# -- TLS ------------------------------------------------------------------------------
@pytest.fixture
def tls(nginx_server: NginxServer) -> NginxServer:  # noqa: F811
    if nginx_server.cert_path is None:
        pytest.skip(nginx_server.tls_skip_reason)
    return nginx_server


def test_tls_with_a_ca_bundle_and_verification(tls: NginxServer) -> None:
    ns = _ns()
    key, data = blob(payload_for("tls", 70_000))
    store = HttpStore.from_url(f"{tls.https_url('open', ns)}?ca={tls.cert_path}&list=1")
    store.put(key, data)
    assert store.get(key) == data and [i.key for i in store.iterate()] == [key]
    with pytest.raises(StoreError, match="SSL|certificate"):
        HttpStore.from_url(tls.https_url("open", ns)).get(key)  # self-signed, not in the system CAs
    with pytest.warns(Warning):  # urllib3's InsecureRequestWarning: the user asked for it
        assert HttpStore.from_url(f"{tls.https_url('open', ns)}?verify=0").get(key) == data


# -- damaged values ---------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["flip", "truncate", "tiny", "no-trailer"])
def test_damaged_value_reads_as_a_miss_and_is_reported(nginx_server: NginxServer, damage: str) -> None:  # noqa: F811
    ns = _ns()
    store = HttpStore.from_url(nginx_server.url("open", ns))
    reported: list[tuple[str, str]] = []
    store.on_corrupt = lambda key, why: reported.append((key, why))
    key, data = blob(payload_for("damage", 3000))
    good_key, good = blob(b"untouched")
    store.put_many({key: data, good_key: good})
    path = _file(nginx_server, "open", ns, key)
    stored = path.read_bytes()
    damaged = {"flip": stored[:10] + bytes([stored[10] ^ 1]) + stored[11:], "truncate": stored[:-1],
               "tiny": stored[:5], "no-trailer": data}[damage]
    path.write_bytes(damaged)
    assert store.get_many([key, good_key]) == {key: None, good_key: good}
    assert store.corrupt == 1 and [k for k, _why in reported] == [key]
    store.put(key, data)  # a save heals it: PUT overwrites
    assert store.get(key) == data


def test_damaged_plain_blob_fails_its_address(nginx_server: NginxServer) -> None:  # noqa: F811
    ns = _ns()
    handler = RecordingHandler()
    store = open_store(nginx_server.url("open", ns) + "?cas=plain", on_error=handler)
    key, data = blob(payload_for("plain-damage", 2000))
    store.put(key, data)
    _file(nginx_server, "open", ns, key).write_bytes(b"Z" + data[1:])
    assert store.get(key) is None
    [(_url, operation, error)] = handler.calls  # a lone store reports through open_store
    assert operation == "get" and isinstance(error, CorruptEntryError) and "sha256" in str(error)


def test_damaged_blob_in_a_tier_is_not_served_or_backfilled(nginx_server: NginxServer, tmp_path: Path) -> None:  # noqa: F811
    ns = _ns()
    handler = RecordingHandler()
    tiered = open_store(f"file://{tmp_path}/local,{nginx_server.url('open', ns)}", on_error=handler)
    key, data = blob(payload_for("tier-damage", 4096))
    HttpStore.from_url(nginx_server.url("open", ns)).put(key, data)
    path = _file(nginx_server, "open", ns, key)
    path.write_bytes(b"Y" + path.read_bytes()[1:])
    assert tiered.get(key) is None
    assert LocalStore(tmp_path / "local").get(key) is None
    [(_url, operation, error)] = handler.calls
    assert operation == "get" and isinstance(error, CorruptEntryError)


# -- dead and stalled servers: one bounded wait per process, then the cool-down ---------
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed when the socket is: connections are refused


@pytest.fixture
def stalled_port() -> Iterator[int]:
    """A server that accepts every connection and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in held:
            conn.close()
        listener.close()


def _compile_path(cache: Cache, rounds: int) -> None:
    """What the backend does with the store for ``rounds`` graphs: a lookup that misses,
    then a save of the compiled blobs and the manifest."""
    for i in range(rounds):
        key = f"{i:064x}"
        assert cache.lookup(key) is None
        blobs = [NewBlob("code", payload_for(f"code{i}", 20_000)), NewBlob("kernel", payload_for(f"k{i}", 50_000))]
        assert cache.save(key, blobs, factors={}, environment={}) is not None


@pytest.mark.parametrize("server", ["closed-port", "stalled"])
def test_dead_server_costs_one_bounded_wait_per_process(
    server: str, stalled_port: int, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = _closed_port() if server == "closed-port" else stalled_port
    cache = Cache(store=f"file://{tmp_path}/local?fsync=0,http://127.0.0.1:{port}/cache", strict=False)
    start = time.monotonic()
    _compile_path(cache, rounds=5)
    elapsed = time.monotonic() - start
    assert elapsed < 2.5, elapsed  # the default 2 s timeout, once, for all five graphs
    if server == "stalled":
        assert elapsed > 1.5  # it did wait for the timeout (nothing answered)
    stats = cache.stats()
    assert stats.saves == 5 and sum(stats.misses.values()) == 5
    assert sum(stats.errors.values()) == 1 and all("StoreError" in kind for kind in stats.errors)
    assert caplog.text.count("continuing without the cache") == 1
    assert isinstance(cache.store, TieredStore) and LocalStore(tmp_path / "local").get("ac/" + f"{0:064x}")
    # The local tier got every entry: a later process hits it, the remote is not needed.
    again = Cache(store=f"file://{tmp_path}/local", strict=True)
    assert again.lookup(f"{4:064x}") is not None


def test_stalled_server_with_a_short_timeout(stalled_port: int) -> None:
    store = HttpStore.from_url(f"http://127.0.0.1:{stalled_port}/x?timeout=0.3")
    key, data = blob(b"stalled")
    for operation in (lambda: store.get(key), lambda: store.put(key, data), lambda: store.has(key),
                      lambda: store.delete(key), lambda: store.get_many([key, manifest_key("a")])):
        start = time.monotonic()
        with pytest.raises(StoreError, match="Timeout|timed out"):
            operation()
        assert time.monotonic() - start < 1.0


def test_server_paused_mid_run_is_bounded_then_skipped(nginx_server: NginxServer, tmp_path: Path) -> None:  # noqa: F811
    handler = RecordingHandler()
    tiered = open_store(f"file://{tmp_path}/local?fsync=0,{nginx_server.url('open', _ns())}?timeout=0.5",
                        on_error=handler)
    tiered.put(*blob(b"warm the pooled connection"))
    nginx_server.pause()
    try:
        start = time.monotonic()
        assert tiered.get(manifest_key("a")) is None
        first = time.monotonic() - start
        for i in range(10):
            assert tiered.get(manifest_key(f"b{i}")) is None
            tiered.put(*blob(f"local save {i}".encode()))
        total = time.monotonic() - start
    finally:
        nginx_server.resume()
    assert 0.4 < first < 1.2 and total < first + 0.5
    assert len(handler.calls) == 1


# -- a hostile server: announced sizes are not trusted -------------------------------------
def _canned_server(answer: bytes) -> tuple[int, threading.Thread, socket.socket]:
    """A server that answers every request on one connection with ``answer``, then closes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                request += chunk
            conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return int(listener.getsockname()[1]), thread, listener


@pytest.mark.parametrize("announced", [10 << 30, 1 << 40])
def test_announced_length_is_not_allocated_up_front(announced: int) -> None:
    import tracemalloc

    port, thread, listener = _canned_server(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\nonly these bytes" % announced)
    store = HttpStore.from_url(f"http://127.0.0.1:{port}/x")
    reported: list[str] = []
    store.on_corrupt = lambda key, why: reported.append(why)
    tracemalloc.start()
    try:
        try:
            got = store.get(manifest_key("huge"))
        except StoreError as exc:  # the body ended early: a failing server
            got, reported = None, [str(exc)]
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        thread.join(timeout=5)
        listener.close()
    assert got is None and reported
    assert peak < 128 << 20, f"held {peak} bytes for a {announced}-byte announcement"
