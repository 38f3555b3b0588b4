"""MemoryStore: conformance, read-only, LRU cap."""

from __future__ import annotations

import pytest

from artcache.errors import StoreError
from artcache.store import MemoryStore, open_store

from artcache.testing import StoreConformance, StoreFactory, blob, manifest_key, payload_for


class TestMemoryConformance(StoreConformance):
    @pytest.fixture
    def make_store(self) -> StoreFactory:
        return MemoryStore


class TestMemoryCappedConformance(StoreConformance):
    @pytest.fixture
    def make_store(self) -> StoreFactory:
        return lambda: MemoryStore(max_size=64 << 20)


def test_read_only_memory_store_refuses_writes() -> None:
    ro = open_store("memory://?ro=1")
    assert isinstance(ro, MemoryStore) and ro.read_only
    with pytest.raises(StoreError):
        ro.put(manifest_key("x"), b"x")
    with pytest.raises(StoreError):
        ro.delete(manifest_key("x"))
    assert ro.get(manifest_key("x")) is None


def test_memory_cap_evicts_least_recently_used() -> None:
    store = MemoryStore(max_size=10_000)
    keys = []
    for i in range(5):
        key, data = blob(payload_for(f"mem{i}", 2000))
        store.put(key, data)
        keys.append(key)
    assert store.get(keys[0]) is not None  # now the most recently used
    store.put(*blob(payload_for("mem-new", 2000)))
    assert store.has(keys[0])
    assert not store.has(keys[1])
    assert sum(i.size for i in store.iterate()) <= 10_000
    with pytest.raises(StoreError):
        store.put(*blob(b"x" * 10_001))


def test_memory_peek_does_not_refresh_lru() -> None:
    store = MemoryStore(max_size=4000)
    first, second = blob(payload_for("p1", 2000)), blob(payload_for("p2", 2000))
    store.put(*first)
    store.put(*second)
    assert store.peek(first[0]) == first[1]
    store.put(*blob(payload_for("p3", 2000)))
    assert not store.has(first[0])  # peek did not save it
    assert store.has(second[0])
