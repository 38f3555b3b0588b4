"""The one conformance suite every ``Store`` backend passes.

A backend's test module subclasses :class:`StoreConformance` and provides one fixture,
``make_store``: a factory that returns a fresh, empty, writable store each time it is
called.  For example, an out-of-tree store::

    from artcache.testing import StoreConformance

    class TestMyStoreConformance(StoreConformance):
        @pytest.fixture
        def make_store(self, my_server):
            def make():
                return MyStore(my_server.url + "/" + uuid4().hex)
            return make

Stores made by the factory are closed at teardown.  The suite only uses the public
protocol (get, get_many, put, put_many, has, delete, iterate, close), so anything that
passes it can stand in for any other backend.  A store that declares ``can_list = False``
(an HTTP cache server without listings) skips the listing checks and must instead refuse
``iterate`` with a one-line ``StoreError``.

This module also holds helpers the other store tests share (deterministic payloads, key
builders).  pytest collects it only through a subclass in a test module.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator

import pytest

from artcache.errors import CorruptEntryError, StoreError
from artcache.store import KeyInfo, Store, ac_key, cas_key

StoreFactory = Callable[[], Store]


# -- shared helpers ----------------------------------------------------------------
def payload_for(seed: str, size: int) -> bytes:
    """Deterministic, incompressible-looking bytes derived from ``seed``: a reader that
    only knows the key can tell exactly which bytes are correct."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def blob(data: bytes) -> tuple[str, bytes]:
    """A ``cas/`` key and its bytes (the key is the SHA-256 of the bytes)."""
    return cas_key(hashlib.sha256(data).hexdigest()), data


def manifest_key(name: str) -> str:
    return ac_key(hashlib.sha256(name.encode()).hexdigest())


BAD_KEYS = [
    "",
    "cas/",
    "cas/" + "0" * 63,
    "cas/" + "0" * 65,
    "cas/" + "A" * 64,  # upper-case hex is not canonical
    "cas/" + "g" * 64,
    "other/" + "0" * 64,
    "ac/../../" + "0" * 58,
    "../cas/" + "0" * 64,
    "/cas/" + "0" * 64,
    "cas/" + "0" * 64 + "/",
    "cas\\" + "0" * 64,
    "cas/" + "0" * 64 + "\n",
]


class StoreConformance:
    """Behaviour every backend must have.  Subclasses provide ``make_store``."""

    @pytest.fixture
    def make_store(self) -> StoreFactory:
        raise NotImplementedError("a backend's test class must provide a make_store fixture")

    @pytest.fixture
    def store(self, make_store: StoreFactory) -> Iterator[Store]:
        s = make_store()
        try:
            yield s
        finally:
            s.close()

    # -- misses and round trips ------------------------------------------------------
    def test_miss_is_none(self, store: Store) -> None:
        assert store.get(manifest_key("absent")) is None
        assert store.get(blob(b"absent")[0]) is None
        assert store.has(manifest_key("absent")) is False

    @pytest.mark.parametrize("size", [0, 1, 27, 28, 29, 4096, 1 << 20, 3 * (1 << 20) + 7])
    def test_round_trip_sizes(self, store: Store, size: int) -> None:
        key, data = blob(payload_for(f"rt{size}", size))
        store.put(key, data)
        got = store.get(key)
        assert type(got) is bytes
        assert got == data
        assert store.has(key)

    def test_peek_reads_like_get(self, store: Store) -> None:
        key, data = blob(payload_for("peek", 3000))
        assert store.peek(key) is None
        store.put(key, data)
        assert store.peek(key) == data
        assert type(store.peek(key)) is bytes
        store.delete(key)
        assert store.peek(key) is None
        with pytest.raises(StoreError):
            store.peek("cas/nope")

    def test_all_byte_values_and_trailer_lookalike(self, store: Store) -> None:
        # Bytes that look like the local store's trailer must come back verbatim.
        data = bytes(range(256)) * 3 + b"ACF1" + b"\x00" * 24 + b"ACF1"
        key = manifest_key("bytes")
        store.put(key, data)
        assert store.get(key) == data

    def test_put_copies_its_input(self, store: Store) -> None:
        source = bytearray(b"original bytes")
        key = manifest_key("copy")
        store.put(key, bytes(source))
        source[:] = b"mutated! bytes"
        assert store.get(key) == b"original bytes"

    def test_returned_bytes_are_independent(self, store: Store) -> None:
        key = manifest_key("independent")
        store.put(key, b"abc")
        first = store.get(key)
        assert first == b"abc"
        assert store.get(key) == b"abc"

    def test_ac_overwrite_replaces(self, store: Store) -> None:
        key = manifest_key("overwrite")
        store.put(key, b"v1")
        store.put(key, b"version two")
        assert store.get(key) == b"version two"
        if store.can_list:
            assert [i.size for i in store.iterate(key)] == [len(b"version two")]

    def test_cas_put_is_idempotent(self, store: Store) -> None:
        key, data = blob(b"same bytes twice")
        store.put(key, data)
        store.put(key, data)
        assert store.get(key) == data
        if store.can_list:
            assert [i.key for i in store.iterate("cas/")] == [key]

    def test_keyspaces_are_separate(self, store: Store) -> None:
        name = hashlib.sha256(b"x").hexdigest()
        store.put(cas_key(name), b"x")
        assert store.get(ac_key(name)) is None
        store.put(ac_key(name), b"manifest")
        assert store.get(cas_key(name)) == b"x"
        assert store.get(ac_key(name)) == b"manifest"

    # -- delete ----------------------------------------------------------------------
    def test_delete(self, store: Store) -> None:
        key, data = blob(b"to delete")
        store.put(key, data)
        assert store.delete(key) is True
        assert store.get(key) is None
        assert store.has(key) is False
        assert store.delete(key) is False
        if store.can_list:
            assert list(store.iterate()) == []

    def test_delete_then_put_again(self, store: Store) -> None:
        key = manifest_key("again")
        store.put(key, b"one")
        store.delete(key)
        store.put(key, b"two")
        assert store.get(key) == b"two"

    # -- iterate ---------------------------------------------------------------------
    def test_iterate_lists_keys_and_sizes(self, store: Store) -> None:
        if not store.can_list:
            pytest.skip(f"{type(store).__name__} declares can_list = False")
        blobs = dict(blob(payload_for(f"it{i}", 100 * i)) for i in range(5))
        manifests = {manifest_key(f"m{i}"): payload_for(f"m{i}", 10 + i) for i in range(3)}
        for key, data in {**blobs, **manifests}.items():
            store.put(key, data)
        listed = {info.key: info for info in store.iterate()}
        assert set(listed) == set(blobs) | set(manifests)
        for key, data in {**blobs, **manifests}.items():
            assert isinstance(listed[key], KeyInfo)
            assert listed[key].size == len(data)
            assert listed[key].last_used >= 0.0
        assert {i.key for i in store.iterate("cas/")} == set(blobs)
        assert {i.key for i in store.iterate("ac/")} == set(manifests)
        some = next(iter(blobs))
        assert [i.key for i in store.iterate(some[:10])] == [k for k in blobs if k.startswith(some[:10])]
        assert list(store.iterate("nothing/")) == []

    def test_iterate_empty(self, store: Store) -> None:
        if not store.can_list:
            pytest.skip(f"{type(store).__name__} declares can_list = False")
        assert list(store.iterate()) == []

    def test_listing_matches_the_declared_capability(self, store: Store) -> None:
        key = manifest_key("listed")
        store.put(key, b"x")
        if store.can_list:
            assert [i.key for i in store.iterate()] == [key]
            return
        with pytest.raises(StoreError) as raised:  # says so, in one line
            list(store.iterate())
        message = str(raised.value)
        assert "list" in message and "\n" not in message

    # -- batches ---------------------------------------------------------------------
    def test_get_many_and_put_many(self, store: Store) -> None:
        items = dict(blob(payload_for(f"many{i}", 64)) for i in range(6))
        store.put_many(items)
        absent = manifest_key("absent")
        got = store.get_many([*items, absent])
        assert got == {**items, absent: None}

    # -- bounded reads and quarantine (Store base-class defaults pass these) -----------
    def test_get_bounded(self, store: Store) -> None:
        key, data = blob(payload_for("bounded", 3000))
        manifest = manifest_key("bounded")
        store.put_many({key: data, manifest: b"m" * 100})
        assert store.get_bounded(key, len(data)) == data
        assert store.get_bounded(manifest_key("absent"), 10) is None
        assert store.get_many_bounded({key: 5000, manifest: 100}) == {key: data, manifest: b"m" * 100}
        with pytest.raises(CorruptEntryError):
            store.get_bounded(key, len(data) - 1)
        with pytest.raises(CorruptEntryError):
            store.get_many_bounded({key: 10, manifest: 100})
        assert store.get(key) == data  # refused for that caller, not removed

    def test_quarantine_keeps_good_values(self, store: Store) -> None:
        key, data = blob(payload_for("quarantine", 500))
        store.put(key, data)
        store.quarantine(key)
        store.quarantine(blob(b"never stored")[0])
        assert store.get(key) == data

    # -- keys ------------------------------------------------------------------------
    @pytest.mark.parametrize("bad", BAD_KEYS)
    def test_bad_keys_are_refused(self, store: Store, bad: str) -> None:
        with pytest.raises(StoreError):
            store.put(bad, b"x")
        with pytest.raises(StoreError):
            store.get(bad)
        with pytest.raises(StoreError):
            store.has(bad)
        with pytest.raises(StoreError):
            store.delete(bad)
        if store.can_list:
            assert list(store.iterate()) == []

    def test_non_string_key_refused(self, store: Store) -> None:
        with pytest.raises(StoreError):
            store.get(b"cas/" + b"0" * 64)  # type: ignore[arg-type]

    # -- concurrency within one process -------------------------------------------------
    def test_threads_share_a_store(self, store: Store) -> None:
        keys = [manifest_key(f"thread{i}") for i in range(8)]
        errors: list[str] = []

        def work(worker: int) -> None:
            for round_ in range(30):
                key = keys[(worker + round_) % len(keys)]
                expected = payload_for(key, 2000)
                store.put(key, expected)
                got = store.get(key)
                if got is not None and got != expected:
                    errors.append(f"{key}: wrong bytes")

        threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        for key in keys:
            assert store.get(key) == payload_for(key, 2000)

    # -- lifecycle -------------------------------------------------------------------
    def test_context_manager_and_repr(self, make_store: StoreFactory) -> None:
        with make_store() as s:
            s.put(manifest_key("ctx"), b"in context")
            assert s.get(manifest_key("ctx")) == b"in context"
            assert type(s).__name__ in repr(s)
            assert isinstance(s.url, str) and s.url
