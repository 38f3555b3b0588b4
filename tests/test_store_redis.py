"""RedisStore against a real redis-server: conformance (inline and chunked), namespaces,
TTL, read-only, address checks on every blob, bounded waits, and tiers over a dead Redis."""

from __future__ import annotations

import hashlib
import time
import uuid
from pathlib import Path

import pytest

from artcache.errors import CorruptEntryError, StoreError
from artcache.store import LocalStore, Store, TieredStore, open_store

from .redis_server import RedisServer, fresh_redis_server, redis_server  # noqa: F401 (fixtures)
from artcache.testing import StoreConformance, StoreFactory, blob, manifest_key, payload_for

redis = pytest.importorskip("redis", reason="redis-py is not installed (pip install 'artcache[redis]')")
from artcache.store.redis import RedisStore  # noqa: E402


def _ns() -> str:
    return "t" + uuid.uuid4().hex[:12]


class RecordingHandler:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Exception]] = []

    def __call__(self, store: Store, operation: str, error: Exception) -> None:
        self.calls.append((store.url, operation, error))


# -- conformance ----------------------------------------------------------------------
class TestRedisConformance(StoreConformance):
    @pytest.fixture
    def make_store(self, redis_server: RedisServer) -> StoreFactory:  # noqa: F811
        return lambda: RedisStore.from_url(f"{redis_server.url}?prefix={_ns()}")


class TestRedisChunkedConformance(StoreConformance):
    """Tiny chunks, so that every value above 1000 bytes takes the chunked path."""

    @pytest.fixture
    def make_store(self, redis_server: RedisServer) -> StoreFactory:  # noqa: F811
        return lambda: RedisStore.from_url(f"{redis_server.url}?namespace={_ns()}&chunk=1000&ttl=3600")


class TestLocalOverRedisConformance(StoreConformance):
    @pytest.fixture
    def make_store(self, redis_server: RedisServer, tmp_path: Path) -> StoreFactory:  # noqa: F811
        counter = iter(range(1000))
        return lambda: open_store(f"file://{tmp_path}/l{next(counter)}?fsync=0,{redis_server.url}?prefix={_ns()}")


# -- layout, chunking and namespaces --------------------------------------------------
@pytest.fixture
def client(redis_server: RedisServer) -> redis.Redis:  # noqa: F811
    return redis.Redis.from_url(redis_server.url)


def test_keys_are_namespaced_and_large_values_chunked(redis_server: RedisServer, client: redis.Redis) -> None:  # noqa: F811
    ns = _ns()
    store = RedisStore.from_url(f"{redis_server.url}?prefix={ns}&chunk=4096")
    small_key, small = blob(payload_for("small", 100))
    big_key, big = blob(payload_for("big", 10_000))
    store.put_many({small_key: small, big_key: big})
    names = sorted(n.decode() for n in client.scan_iter(match=f"artcache:v2:{ns}:*"))
    assert f"artcache:v2:{ns}:cas:{small_key[4:]}" in names
    assert f"artcache:v2:{ns}:#hdr:cas:{big_key[4:]}" in names
    assert len([n for n in names if ":#chunk:" in n]) == 3  # 4096 + 4096 + 1808
    assert f"artcache:v2:{ns}:#sum:cas:{small_key[4:]}" in names  # inline values: checksum key
    assert f"artcache:v2:{ns}:#sum:cas:{big_key[4:]}" not in names  # chunked: in the header
    assert store.get(big_key) == big
    # A value without its checksum (written by something else) is refused, and a delete
    # leaves neither form behind.
    client.delete(f"artcache:v2:{ns}:#sum:cas:{small_key[4:]}")
    assert store.get(small_key) is None and store.corrupt == 1
    store.put(small_key, small)
    assert store.get(small_key) == small and store.delete(small_key)
    assert not [n for n in client.scan_iter(match=f"artcache:v2:{ns}:*{small_key[4:]}")]
    # Another namespace on the same server sees none of it.
    assert RedisStore.from_url(f"{redis_server.url}?prefix={_ns()}").get(big_key) is None
    # Deleting a chunked value removes its chunks too.
    assert store.delete(big_key)
    assert not [n for n in client.scan_iter(match=f"artcache:v2:{ns}:#chunk:*")]


def test_overwrite_replaces_chunks_and_switches_forms(redis_server: RedisServer, client: redis.Redis) -> None:  # noqa: F811
    ns = _ns()
    store = RedisStore.from_url(f"{redis_server.url}?prefix={ns}&chunk=1000")
    key = manifest_key("forms")
    for value in (payload_for("a", 5000), b"small now", payload_for("b", 2500), payload_for("c", 3100)):
        store.put(key, value)
        assert store.get(key) == value
        assert [i.size for i in store.iterate("ac/")] == [len(value)]
    chunks = [n for n in client.scan_iter(match=f"artcache:v2:{ns}:#chunk:*")]
    assert len(chunks) == 4  # only the last value's chunks are left


def test_header_is_written_after_chunks(redis_server: RedisServer, client: redis.Redis) -> None:  # noqa: F811
    """A writer that dies between chunks and header leaves no visible (partial) value."""
    ns = _ns()
    store = RedisStore.from_url(f"{redis_server.url}?prefix={ns}&chunk=1000")
    key, data = blob(payload_for("torn", 3000))
    calls = 0
    real_pipeline = store._client.pipeline

    def dying_pipeline(transaction: bool = True) -> object:
        nonlocal calls
        calls += 1
        if transaction:  # the header's MULTI: the writer "dies" before publishing
            raise redis.ConnectionError("writer killed")
        return real_pipeline(transaction=transaction)

    store._client.pipeline = dying_pipeline  # type: ignore[method-assign]
    with pytest.raises(StoreError):
        store.put(key, data)
    store._client.pipeline = real_pipeline  # type: ignore[method-assign]
    assert calls == 2
    assert [n for n in client.scan_iter(match=f"artcache:v2:{ns}:#chunk:*")]  # orphans exist
    assert store.get(key) is None and not store.has(key) and list(store.iterate()) == []


def test_ttl_applies_to_values_and_chunks(redis_server: RedisServer, client: redis.Redis) -> None:  # noqa: F811
    ns = _ns()
    store = RedisStore.from_url(f"{redis_server.url}?prefix={ns}&ttl=100&chunk=1000")
    small_key, small = blob(b"with ttl")
    big_key, big = blob(payload_for("ttl", 2500))
    store.put_many({small_key: small, big_key: big})
    assert 0 < client.ttl(f"artcache:v2:{ns}:cas:{small_key[4:]}") <= 100
    assert 0 < client.ttl(f"artcache:v2:{ns}:#hdr:cas:{big_key[4:]}") <= 100
    for name in client.scan_iter(match=f"artcache:v2:{ns}:#chunk:*"):
        assert client.ttl(name) > 100  # chunks outlive their header: it expires first
    no_ttl = RedisStore.from_url(f"{redis_server.url}?prefix={_ns()}")
    no_ttl.put(small_key, small)
    assert client.ttl(f"artcache:v2:{no_ttl._base[12:]}cas:{small_key[4:]}") == -1


def test_read_only_url(redis_server: RedisServer) -> None:  # noqa: F811
    ns = _ns()
    key, data = blob(b"seeded by a writer")
    RedisStore.from_url(f"{redis_server.url}?prefix={ns}").put(key, data)
    ro = open_store(f"{redis_server.url}?prefix={ns}&ro=1")
    assert isinstance(ro, RedisStore) and ro.read_only
    assert ro.get(key) == data
    with pytest.raises(StoreError):
        ro.put(*blob(b"x"))
    with pytest.raises(StoreError):
        ro.delete(key)


def test_bad_options_are_store_errors(redis_server: RedisServer) -> None:  # noqa: F811
    for query in ("timeout=abc", "timeout=0", "ttl=x", "ttl=0", "prefix=a/b", "chunk=0"):
        with pytest.raises(StoreError):
            RedisStore.from_url(f"{redis_server.url}?{query}")


def test_password_is_not_in_the_url() -> None:
    store = RedisStore.from_url("redis://:hunter2@127.0.0.1:1/0?prefix=x")
    assert "hunter2" not in store.url and "hunter2" not in repr(store)


# -- every blob is checked against its address ---------------------------------------
@pytest.mark.parametrize("chunk", ["", "&chunk=1000"])
def test_tampered_blob_reads_as_a_miss_and_is_reported(
    redis_server: RedisServer, client: redis.Redis, chunk: str  # noqa: F811
) -> None:
    ns = _ns()
    store = RedisStore.from_url(f"{redis_server.url}?prefix={ns}{chunk}")
    reported: list[tuple[str, str]] = []
    store.on_corrupt = lambda key, why: reported.append((key, why))
    key, data = blob(payload_for("tamper", 2500))
    good_key, good = blob(b"untouched")
    store.put_many({key: data, good_key: good})
    names = [n for n in client.scan_iter(match=f"artcache:v2:{ns}:*") if b":#chunk:" in n or (key[4:].encode() in n and b":#" not in n)]
    victim = sorted(names)[0]
    value = client.get(victim)
    client.set(victim, b"X" + value[1:])  # one flipped byte, same length

    assert store.get_many([key, good_key]) == {key: None, good_key: good}
    assert store.corrupt == 1 and reported and reported[0][0] == key
    # Writing the blob again heals it (SET overwrites, unlike a skip-if-present).
    store.put(key, data)
    assert store.get(key) == data


@pytest.mark.parametrize("chunk", ["", "&chunk=100"])
def test_damaged_manifest_reads_as_a_miss(redis_server: RedisServer, client: redis.Redis, chunk: str) -> None:  # noqa: F811
    # Manifests carry the checksum too (layout v2): a truncated or flipped manifest is a miss.
    ns = _ns()
    store = RedisStore.from_url(f"{redis_server.url}?prefix={ns}{chunk}")
    key = manifest_key("damaged")
    store.put(key, payload_for("manifest", 700))
    names = sorted(n for n in client.scan_iter(match=f"artcache:v2:{ns}:*") if b":#hdr:" not in n and b":#sum:" not in n)
    victim = names[-1]  # the inline value, or the last chunk
    value = client.get(victim)
    client.set(victim, value[:-1] + bytes([value[-1] ^ 1]))
    assert store.get(key) is None and store.corrupt == 1


def test_tampered_blob_in_a_tier_is_reported_to_the_error_policy(
    redis_server: RedisServer, client: redis.Redis, tmp_path: Path  # noqa: F811
) -> None:
    ns = _ns()
    handler = RecordingHandler()
    tiered = open_store(f"file://{tmp_path}/local,{redis_server.url}?prefix={ns}", on_error=handler)
    key, data = blob(payload_for("tier-tamper", 4096))
    remote = RedisStore.from_url(f"{redis_server.url}?prefix={ns}")
    remote.put(key, data)
    client.set(f"artcache:v2:{ns}:cas:{key[4:]}", b"Y" + data[1:])
    assert tiered.get(key) is None
    assert LocalStore(tmp_path / "local").get(key) is None  # not backfilled
    [(_url, operation, error)] = handler.calls
    assert operation == "get" and isinstance(error, CorruptEntryError)
    # Refused, so deleted: the next write replaces it and no reader fetches it again.
    assert not client.exists(f"artcache:v2:{ns}:cas:{key[4:]}")
    # A lone Redis store reports through open_store's on_error as well.
    remote.put(key, data)
    client.set(f"artcache:v2:{ns}:cas:{key[4:]}", b"Y" + data[1:])
    lone_handler = RecordingHandler()
    lone = open_store(f"{redis_server.url}?prefix={ns}", on_error=lone_handler)
    assert lone.get(key) is None and isinstance(lone_handler.calls[0][2], CorruptEntryError)


# -- a dead or stalled server: bounded waits, StoreError, cool-down -------------------
def test_dead_server_raises_store_error_quickly(fresh_redis_server: RedisServer) -> None:  # noqa: F811
    store = RedisStore.from_url(f"{fresh_redis_server.url}?timeout=1")
    key, data = blob(b"before the crash")
    store.put(key, data)
    fresh_redis_server.kill()
    start = time.monotonic()
    for operation in (lambda: store.get(key), lambda: store.put(key, data), lambda: store.has(key),
                      lambda: list(store.iterate()), lambda: store.delete(key)):
        with pytest.raises(StoreError):
            operation()
    assert time.monotonic() - start < 2.0  # connection refused: no timeout needed


def test_stalled_server_is_bounded_by_the_timeout(fresh_redis_server: RedisServer) -> None:  # noqa: F811
    store = RedisStore.from_url(f"{fresh_redis_server.url}?timeout=0.3")
    key, data = blob(b"stalled")
    store.put(key, data)
    fresh_redis_server.pause()
    try:
        start = time.monotonic()
        with pytest.raises(StoreError, match="Timeout"):
            store.get(key)
        assert time.monotonic() - start < 1.0
    finally:
        fresh_redis_server.resume()


def _tiered(tmp_path: Path, url: str, handler: RecordingHandler) -> TieredStore:
    store = open_store(f"file://{tmp_path}/local?fsync=0,{url}", on_error=handler)
    assert isinstance(store, TieredStore)
    return store


def test_tiers_keep_working_when_redis_is_killed_mid_run(tmp_path: Path, fresh_redis_server: RedisServer) -> None:  # noqa: F811
    handler = RecordingHandler()
    tiered = _tiered(tmp_path, f"{fresh_redis_server.url}?timeout=1", handler)
    remote_only_key, remote_only = blob(b"only in redis")
    RedisStore.from_url(fresh_redis_server.url).put(remote_only_key, remote_only)
    key, data = blob(payload_for("both", 5000))
    tiered.put(key, data)
    assert tiered.get(remote_only_key) == remote_only  # read-through, backfilled locally

    fresh_redis_server.kill()
    start = time.monotonic()
    absent = manifest_key("absent")
    assert tiered.get(absent) is None  # the lookup that finds Redis dead
    assert tiered.get(key) == data and tiered.get(remote_only_key) == remote_only  # local tier
    new_key, new = blob(b"saved after the crash")
    tiered.put(new_key, new)  # ANY policy: the local tier accepted it
    assert tiered.get(new_key) == new
    for i in range(20):  # benched: later lookups do not touch Redis at all
        assert tiered.get(manifest_key(f"more{i}")) is None
    assert time.monotonic() - start < 1.5
    assert [op for _url, op, _e in handler.calls] == ["get"]  # one report, then cool-down
    assert all(isinstance(e, StoreError) for _url, _op, e in handler.calls)


def test_stalled_redis_costs_one_bounded_wait_then_is_skipped(
    tmp_path: Path, fresh_redis_server: RedisServer  # noqa: F811
) -> None:
    handler = RecordingHandler()
    tiered = _tiered(tmp_path, f"{fresh_redis_server.url}?timeout=0.5", handler)
    tiered.put(*blob(b"warm the connection"))
    fresh_redis_server.pause()
    try:
        start = time.monotonic()
        assert tiered.get(manifest_key("a")) is None
        first = time.monotonic() - start
        for i in range(10):
            assert tiered.get(manifest_key(f"b{i}")) is None
            tiered.put(*blob(f"local save {i}".encode()))
        total = time.monotonic() - start
    finally:
        fresh_redis_server.resume()
    assert 0.4 < first < 1.2 and total < first + 0.5
    assert len(handler.calls) == 1


def test_default_timeout_is_two_seconds(redis_server: RedisServer) -> None:  # noqa: F811
    store = RedisStore.from_url(redis_server.url)
    kwargs = store._client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 2.0 and kwargs["socket_connect_timeout"] == 2.0


def test_digest_helper() -> None:
    key, data = blob(b"abc")
    assert key == "cas/" + hashlib.sha256(b"abc").hexdigest()
