"""Property-based: each backend, driven by random operation sequences, behaves like a dict.

The model is ``dict[str, bytes]``.  Backend-specific rules exercise what a dict cannot do
(reopening a local store, corrupting a file on disk, losing the fast tier of a tiered
store) and update the model with what the store promises in that case.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from artcache.store import LocalStore, MemoryStore, Store, TieredStore, ac_key, cas_key

AC_KEYS = [ac_key(hashlib.sha256(f"manifest{i}".encode()).hexdigest()) for i in range(5)]
PAYLOADS = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"", b"ACF1", b"\x00" * 28, bytes(range(256)) * 40]),
)
PREFIXES = st.sampled_from(["", "cas/", "ac/", "ac/0", "cas/a", "c", "a", "zzz"])

MACHINE_SETTINGS = settings(
    max_examples=75,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.model: dict[str, bytes] = {}
        self.dir = Path(tempfile.mkdtemp(prefix="artcache-sm-"))
        self.store = self.make_store()

    def make_store(self) -> Store:
        raise NotImplementedError

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def known_keys(self) -> list[str]:
        return sorted(set(AC_KEYS) | set(self.model))

    @rule(index=st.integers(0, len(AC_KEYS) - 1), data=PAYLOADS)
    def put_manifest(self, index: int, data: bytes) -> None:
        self.store.put(AC_KEYS[index], data)
        self.model[AC_KEYS[index]] = data

    @rule(data=PAYLOADS)
    def put_blob(self, data: bytes) -> None:
        key = cas_key(hashlib.sha256(data).hexdigest())
        self.store.put(key, data)
        self.model[key] = data

    @rule(data=st.data())
    def get(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(self.known_keys()))
        assert self.store.get(key) == self.model.get(key)

    @rule(data=st.data())
    def get_many(self, data: st.DataObject) -> None:
        keys = data.draw(st.lists(st.sampled_from(self.known_keys()), max_size=4))
        assert self.store.get_many(keys) == {k: self.model.get(k) for k in keys}

    @rule(data=st.data())
    def has(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(self.known_keys()))
        assert self.store.has(key) == (key in self.model)

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(self.known_keys()))
        assert self.store.delete(key) == (key in self.model)
        self.model.pop(key, None)

    @rule(prefix=PREFIXES)
    def iterate(self, prefix: str) -> None:
        listed = {info.key: info.size for info in self.store.iterate(prefix)}
        assert listed == {k: len(v) for k, v in self.model.items() if k.startswith(prefix)}

    @invariant()
    def everything_reads_back(self) -> None:
        for key, value in self.model.items():
            assert self.store.get(key) == value


class MemoryMachine(StoreMachine):
    def make_store(self) -> Store:
        return MemoryStore()


class LocalMachine(StoreMachine):
    def make_store(self) -> Store:
        # fsync is orthogonal to these properties and only slows the search down.
        return LocalStore(self.dir, durable=False)

    @rule()
    def reopen(self) -> None:
        self.store = LocalStore(self.dir, durable=False)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data(), how=st.sampled_from(["flip", "truncate", "empty"]))
    def corrupt_on_disk(self, data: st.DataObject, how: str) -> None:
        key = data.draw(st.sampled_from(sorted(self.model)))
        space, name = key.split("/")
        path = self.dir / space / name[:2] / name
        raw = bytearray(path.read_bytes())
        if how == "flip":
            position = data.draw(st.integers(0, len(raw) - 1))
            raw[position] ^= 1 << data.draw(st.integers(0, 7))
        elif how == "truncate":
            del raw[data.draw(st.integers(0, len(raw) - 1)) :]
        else:
            raw = bytearray()
        path.write_bytes(bytes(raw))
        # Promise: a corrupt file reads as a miss (and is quarantined), never as bytes.
        assert self.store.get(key) is None
        assert not path.exists()
        del self.model[key]


class TieredMachine(StoreMachine):
    def make_store(self) -> Store:
        self.top = LocalStore(self.dir, durable=False)
        self.bottom = MemoryStore()
        return TieredStore([self.top, self.bottom])

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def lose_fast_tier_copy(self, data: st.DataObject) -> None:
        # The local tier is a cache of the remote one: losing a local file (eviction,
        # a wiped disk) must not lose the entry; the next read backfills it.
        key = data.draw(st.sampled_from(sorted(self.model)))
        self.top.delete(key)
        assert self.store.get(key) == self.model[key]
        assert self.top.get(key) == self.model[key]


TestMemoryStoreMachine = MemoryMachine.TestCase
TestMemoryStoreMachine.settings = MACHINE_SETTINGS
TestLocalStoreMachine = LocalMachine.TestCase
TestLocalStoreMachine.settings = MACHINE_SETTINGS
TestTieredStoreMachine = TieredMachine.TestCase
TestTieredStoreMachine.settings = MACHINE_SETTINGS
