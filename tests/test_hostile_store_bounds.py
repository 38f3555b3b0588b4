"""Bounded before read: a hostile stored value costs a reader at most 1 s and at most
twice the bound in memory, whatever size it claims or has.

* Local: a sparse file (a few KiB on disk) of huge apparent size under a manifest or a
  blob key, with a plausible trailer; the bound is checked with ``fstat`` first.
* Redis: chunk headers that declare more chunks than a cap or than exist, many tiny
  chunks, a declared size far above the bound, and inline values above the bound.

Memory is measured with tracemalloc (every ``bytes`` a read builds is a Python
allocation), time in a separate run without it.
"""

from __future__ import annotations

import struct
import time
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from artcache import Cache
from artcache.config import Settings
from artcache.digest import checksum, content_digest
from artcache.entry import BlobRef, Manifest, encode_manifest
from artcache.errors import CorruptEntryError
from artcache.store import LocalStore, ac_key, cas_key
from artcache.store.base import MAX_MANIFEST_BYTES

from .redis_server import RedisServer, redis_server  # noqa: F401 (fixture)
from artcache.testing import blob, manifest_key, payload_for

KEY = "3c" * 32
SETTINGS = Settings(store_urls=("memory://",))
MAX_SECONDS = 1.0
HUGE = 1 << 31  # apparent size of the sparse files: 2 GiB, a few KiB on disk


def cost(plant: Callable[[], None], read: Callable[[], Any]) -> tuple[Any, float, int]:
    """(result, seconds, peak traced bytes) of ``read`` after ``plant``, twice: once
    timed, once under tracemalloc (which slows Python down)."""
    plant()
    start = time.perf_counter()
    result = _call(read)
    seconds = time.perf_counter() - start
    plant()
    tracemalloc.start()
    try:
        _call(read)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, seconds, peak


def _call(read: Callable[[], Any]) -> Any:
    try:
        return read()
    except CorruptEntryError as exc:
        return exc


def assert_bounded(seconds: float, peak: int, bound: int) -> None:
    assert seconds < MAX_SECONDS, f"{seconds:.2f} s"
    assert peak <= 2 * bound, f"peak {peak} bytes for a bound of {bound}"


# -- local: sparse files ---------------------------------------------------------------
def plant_sparse(store: LocalStore, key: str, size: int = HUGE) -> Path:
    """A file of apparent ``size`` bytes ending in a trailer that claims all of them."""
    space, name = key.split("/")
    path = store.root / space / name[:2] / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(size - 28)
        f.write(struct.pack("<16sQ4s", b"\0" * 16, size - 28, b"ACF1"))
    assert path.stat().st_blocks * 512 < 1 << 20  # really sparse
    return path


def test_sparse_manifest_costs_nothing_to_refuse(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    cache = Cache(store, settings=SETTINGS, strict=False)
    result, seconds, peak = cost(lambda: plant_sparse(store, ac_key(KEY)), lambda: cache.lookup(KEY))
    assert result is None and cache.stats().lookups == 2
    assert_bounded(seconds, peak, MAX_MANIFEST_BYTES)
    assert peak < 1 << 20  # refused on fstat alone, nothing read
    assert store.quarantined == 2 and not store.has(ac_key(KEY))


def test_sparse_blob_is_bounded_by_the_size_its_manifest_declares(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    data = payload_for("declared", 1000)
    digest = content_digest(data)
    manifest = Manifest(KEY, {}, {}, 0.0, "test", (BlobRef("object", digest, len(data), ""),), {})
    store.put(ac_key(KEY), encode_manifest(manifest))
    cache = Cache(store, settings=SETTINGS, strict=False)
    result, seconds, peak = cost(lambda: plant_sparse(store, cas_key(digest)), lambda: cache.lookup(KEY))
    assert result is None and cache.stats().misses == {"corrupt": 2}
    assert_bounded(seconds, peak, 64 * 1024)  # a few KiB of manifest and bookkeeping


def test_get_bounded_refuses_before_reading(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    key, data = blob(payload_for("bounded", 4096))
    result, seconds, peak = cost(lambda: plant_sparse(store, key), lambda: store.get_bounded(key, 1 << 20))
    assert isinstance(result, CorruptEntryError) and "more than the 1048576 expected" in str(result)
    assert_bounded(seconds, peak, 1 << 20)
    # A value within its bound is served; the refused one was left in place (the bound
    # is the caller's, and a caller's bound may be the wrong one).
    store.delete(key)
    store.put(key, data)
    assert store.get_bounded(key, len(data)) == data
    with pytest.raises(CorruptEntryError):
        store.get_bounded(key, len(data) - 1)
    assert store.get(key) == data
    assert store.get_many_bounded({key: len(data), blob(b"absent")[0]: 10}) == {key: data, blob(b"absent")[0]: None}


def test_manifest_above_the_bound_is_never_written(tmp_path: Path) -> None:
    from artcache.errors import StoreError

    store = LocalStore(tmp_path / "store")
    with pytest.raises(StoreError, match="manifest"):
        store.put(manifest_key("big"), b"m" * (MAX_MANIFEST_BYTES + 1))


# -- Redis: hostile chunk headers and oversized values ------------------------------------
@pytest.fixture
def hostile_redis(redis_server: RedisServer) -> tuple[Any, Any, str]:
    redis = pytest.importorskip("redis")
    from artcache.store.redis import RedisStore

    namespace = "b" + uuid.uuid4().hex[:12]
    store = RedisStore.from_url(f"{redis_server.url}?prefix={namespace}")
    client = redis.Redis.from_url(redis_server.url)
    yield store, client, f"artcache:v2:{namespace}:"
    for name in client.scan_iter(match=f"artcache:v2:{namespace}:*", count=10_000):
        client.delete(name)


def plant_header(client: Any, base: str, key: str, *, count: int, size: int, chunks: list[bytes] | None = None,
                 digest: bytes | None = None) -> None:
    space, name = key.split("/")
    token = uuid.uuid4().hex
    pipe = client.pipeline(transaction=False)
    for i, chunk in enumerate(chunks or []):
        pipe.set(f"{base}#chunk:{token}:{i}", chunk)
    pipe.execute()
    value_sum = digest if digest is not None else checksum(b"".join(chunks or []))
    client.set(f"{base}#hdr:{space}:{name}", b"ACH2 %s %d %d %s" % (token.encode(), count, size, value_sum.hex().encode()))


@pytest.mark.parametrize("count", [5_000_000, 10**12])
def test_chunk_header_declaring_absent_chunks_is_cheap_to_read_overwrite_and_delete(
    hostile_redis: tuple[Any, Any, str], count: int
) -> None:
    store, client, base = hostile_redis
    key = manifest_key("many-chunks")
    plant = lambda: plant_header(client, base, key, count=count, size=count, chunks=[b"x"])
    for operation in (lambda: store.get(key), lambda: store.put(key, b"legit"), lambda: store.delete(key)):
        result, seconds, peak = cost(plant, operation)
        assert not isinstance(result, BaseException) or isinstance(result, CorruptEntryError)
        assert_bounded(seconds, peak, 1 << 20)
    plant()
    store.put(key, b"legit")
    assert store.get(key) == b"legit"


def test_many_tiny_chunks_that_exist_are_refused_or_read_quickly(hostile_redis: tuple[Any, Any, str]) -> None:
    store, client, base = hostile_redis
    from artcache.store.redis import MAX_CHUNKS

    for n in (MAX_CHUNKS + 1, MAX_CHUNKS):
        key = manifest_key(f"tiny{n}")
        chunks = [b"y"] * n
        result, seconds, peak = cost(lambda k=key, n=n, c=chunks: plant_header(client, base, k, count=n, size=n, chunks=c),
                                     lambda k=key: store.get(k))
        assert result is None if n > MAX_CHUNKS else result == b"y" * n
        assert_bounded(seconds, peak, MAX_MANIFEST_BYTES)


def test_declared_size_above_the_bound_is_refused_before_reading(hostile_redis: tuple[Any, Any, str]) -> None:
    store, client, base = hostile_redis
    big = b"z" * (MAX_MANIFEST_BYTES + (4 << 20))
    key = manifest_key("declared-big")
    result, seconds, peak = cost(lambda: plant_header(client, base, key, count=1, size=len(big), chunks=[big]),
                                 lambda: store.get(key))
    assert result is None
    assert_bounded(seconds, peak, 1 << 20)  # nothing fetched: the header alone is refused
    # A caller's bound on a chunked blob, and a header that lies about the size.
    blob_key, data = blob(payload_for("chunked-blob", 3 << 20))
    result, seconds, peak = cost(
        lambda: plant_header(client, base, blob_key, count=3, size=len(data),
                             chunks=[data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20)]),
        lambda: store.get_bounded(blob_key, 1 << 20),
    )
    assert isinstance(result, CorruptEntryError)
    assert_bounded(seconds, peak, 1 << 20)
    plant_header(client, base, blob_key, count=1, size=10, chunks=[data])  # 3 MiB behind "10 bytes"
    tracemalloc.start()
    try:
        assert store.get(blob_key) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_inline_value_above_the_bound_is_refused_reading_at_most_the_bound(hostile_redis: tuple[Any, Any, str]) -> None:
    store, client, base = hostile_redis
    key, data = blob(payload_for("inline", 1 << 20) * 16)  # 16 MiB, stored whole

    def plant() -> None:
        client.set(f"{base}cas:{key[4:]}", data)
        client.set(f"{base}#sum:cas:{key[4:]}", checksum(data) + struct.pack("<Q", len(data)) + b"ACF1")

    result, seconds, peak = cost(plant, lambda: store.get_bounded(key, 1 << 20))
    assert isinstance(result, CorruptEntryError)
    assert_bounded(seconds, peak, 1 << 20)
    assert store.get(key) == data  # unbounded, it is a good value

    manifest = manifest_key("inline-manifest")
    big = b"m" * (MAX_MANIFEST_BYTES + 1)

    def plant_manifest() -> None:
        client.set(f"{base}ac:{manifest[3:]}", big)
        client.set(f"{base}#sum:ac:{manifest[3:]}", checksum(big) + struct.pack("<Q", len(big)) + b"ACF1")

    result, seconds, peak = cost(plant_manifest, lambda: store.get(manifest))
    assert result is None
    assert_bounded(seconds, peak, MAX_MANIFEST_BYTES)


def test_hostile_redis_manifest_is_a_clean_miss_through_the_cache(hostile_redis: tuple[Any, Any, str]) -> None:
    store, client, base = hostile_redis
    cache = Cache(store, settings=SETTINGS, strict=False)
    result, seconds, peak = cost(
        lambda: plant_header(client, base, ac_key(KEY), count=10**12, size=10**15, chunks=[b"x"]),
        lambda: cache.lookup(KEY),
    )
    assert result is None
    assert_bounded(seconds, peak, 1 << 20)


def test_chunked_values_within_bounds_still_round_trip(hostile_redis: tuple[Any, Any, str]) -> None:
    from artcache.store.redis import RedisStore

    _store, client, base = hostile_redis
    namespace = base.split(":")[2]
    url = client.connection_pool.connection_kwargs
    store = RedisStore.from_url(f"redis://{url['host']}:{url['port']}/0?prefix={namespace}&chunk=1000")
    key, data = blob(payload_for("round-trip", 25_000))
    store.put(key, data)
    assert store.get(key) == data
    assert store.get_bounded(key, len(data)) == data
    with pytest.raises(CorruptEntryError):
        store.get_bounded(key, len(data) - 1)
    # A value that would need more than MAX_CHUNKS chunks of the configured size is
    # written in larger chunks: the cap bounds readers, not what can be stored.
    from artcache.store.redis import MAX_CHUNKS

    big_key, big = blob(payload_for("many-chunks", 1000 * MAX_CHUNKS + 12345))
    store.put(big_key, big)
    assert store.get(big_key) == big
    headers = [client.get(n) for n in client.scan_iter(match=f"{base}#hdr:cas:{big_key[4:]}")]
    assert len(headers) == 1 and int(headers[0].split()[2]) <= MAX_CHUNKS
