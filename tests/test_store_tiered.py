"""TieredStore: conformance over several tier layouts, read-through with backfill,
read-only tiers, digest checks on lower tiers, write policies, and tier cool-down."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from artcache.errors import CorruptEntryError, StoreError
from artcache.store import LocalStore, MemoryStore, Store, TieredStore, WritePolicy, open_store

from artcache.testing import StoreConformance, StoreFactory, blob, manifest_key, payload_for


class RecordingHandler:
    """``on_error`` that records what the tiered store reported."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Exception]] = []

    def __call__(self, store: Store, operation: str, error: Exception) -> None:
        self.calls.append((store.url, operation, error))


class BrokenStore(MemoryStore):
    """A real MemoryStore whose reads and/or writes fail like an unreachable remote."""

    def __init__(self, *, fail_get: bool = False, fail_put: bool = False) -> None:
        super().__init__(name="broken")
        self.fail_get = fail_get
        self.fail_put = fail_put
        self.get_calls = 0

    def get(self, key: str) -> bytes | None:
        self.get_calls += 1
        if self.fail_get:
            raise StoreError("connection refused")
        return super().get(key)

    def put(self, key: str, data: bytes) -> None:
        if self.fail_put:
            raise StoreError("disk full")
        super().put(key, data)


# -- conformance over tier layouts ---------------------------------------------------
class TestTieredLocalMemoryConformance(StoreConformance):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> StoreFactory:
        counter = iter(range(1000))
        return lambda: TieredStore([LocalStore(tmp_path / f"s{next(counter)}"), MemoryStore()])


class TestTieredMemoryLocalAllPolicyConformance(StoreConformance):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> StoreFactory:
        counter = iter(range(1000))
        return lambda: TieredStore(
            [MemoryStore(), LocalStore(tmp_path / f"s{next(counter)}")], write_policy=WritePolicy.ALL
        )


class TestTieredWithReadOnlyTierConformance(StoreConformance):
    """A writable local tier over a read-only (shared, seeded elsewhere) local tier."""

    @pytest.fixture
    def make_store(self, tmp_path: Path) -> StoreFactory:
        counter = iter(range(1000))

        def make() -> Store:
            n = next(counter)
            shared = tmp_path / f"shared{n}"
            LocalStore(shared)  # create the directory a read-only tier opens
            return open_store(f"file://{tmp_path}/local{n},file://{shared}?ro=1")

        return make


class TestTieredFromUrlsConformance(StoreConformance):
    @pytest.fixture
    def make_store(self, tmp_path: Path) -> StoreFactory:
        counter = iter(range(1000))
        return lambda: open_store(f"file://{tmp_path}/s{next(counter)}?fsync=0,memory://remote")


# -- read-through and backfill ------------------------------------------------------
def test_lower_tier_hit_is_backfilled_into_faster_tiers(tmp_path: Path) -> None:
    top, middle, bottom = LocalStore(tmp_path / "top"), MemoryStore(), MemoryStore()
    tiered = TieredStore([top, middle, bottom])
    key, data = blob(payload_for("backfill", 10_000))
    manifest = manifest_key("backfill")
    bottom.put(key, data)
    bottom.put(manifest, b"manifest bytes")
    assert top.get(key) is None and middle.get(key) is None

    assert tiered.get_many([key, manifest]) == {key: data, manifest: b"manifest bytes"}
    assert top.get(key) == data and middle.get(key) == data
    assert top.get(manifest) == b"manifest bytes"

    bottom.delete(key)
    assert tiered.get(key) == data  # now served by the top tier


def test_backfill_skips_read_only_tiers(tmp_path: Path) -> None:
    key, data = blob(b"seeded in the bottom tier")
    ro_top = MemoryStore(read_only=True)
    middle, bottom = MemoryStore(), MemoryStore()
    bottom.put(key, data)
    assert TieredStore([ro_top, middle, bottom]).get(key) == data
    assert ro_top.get(key) is None
    assert middle.get(key) == data


def test_peek_does_not_backfill_and_checks_digests(tmp_path: Path) -> None:
    top, bottom = LocalStore(tmp_path / "top"), MemoryStore()
    key, data = blob(payload_for("peeked", 1000))
    bad_key, bad_data = blob(payload_for("peek-bad", 1000))
    bottom.put(key, data)
    bottom.put(bad_key, b"y" + bad_data[1:])
    tiered = TieredStore([top, bottom], on_error=RecordingHandler())
    assert tiered.peek(key) == data
    assert top.get(key) is None
    assert tiered.peek(bad_key) is None


def test_top_tier_hit_does_not_touch_lower_tiers() -> None:
    top, bottom = MemoryStore(), BrokenStore(fail_get=True)
    key, data = blob(b"local")
    top.put(key, data)
    assert TieredStore([top, bottom]).get(key) == data
    assert bottom.get_calls == 0


# -- read-only tiers ------------------------------------------------------------------
def test_read_only_tier_refuses_writes_and_is_skipped_by_puts(tmp_path: Path) -> None:
    shared = LocalStore(tmp_path / "shared")
    seeded_key, seeded = blob(b"seeded")
    shared.put(seeded_key, seeded)
    ro = open_store(f"file://{tmp_path}/shared?ro=1")
    with pytest.raises(StoreError):
        ro.put(manifest_key("x"), b"x")

    local = MemoryStore()
    tiered = TieredStore([local, ro])
    key, data = blob(b"new entry")
    tiered.put(key, data)
    assert local.get(key) == data
    assert shared.get(key) is None
    assert tiered.get(seeded_key) == seeded


def test_all_read_only_tiered_store_refuses_writes(tmp_path: Path) -> None:
    tiered = TieredStore([MemoryStore(read_only=True), MemoryStore(read_only=True)])
    assert tiered.read_only
    with pytest.raises(StoreError):
        tiered.put(manifest_key("x"), b"x")
    with pytest.raises(StoreError):
        tiered.delete(manifest_key("x"))


# -- lower tiers are checked against their sha256 address -----------------------------
def test_lower_tier_bytes_failing_their_address_are_not_served(tmp_path: Path) -> None:
    handler = RecordingHandler()
    top, bottom = LocalStore(tmp_path / "top"), MemoryStore(name="remote")
    key, data = blob(payload_for("tamper", 4096))
    bottom.put(key, b"tampered" + data[8:])  # a shared tier serving the wrong bytes
    tiered = TieredStore([top, bottom], on_error=handler)

    assert tiered.get(key) is None
    assert top.get(key) is None  # and the bad bytes are not backfilled
    [(url, operation, error)] = handler.calls
    assert url == "memory://remote" and operation == "get"
    assert isinstance(error, CorruptEntryError)
    # Corrupt data is not a health problem: the tier is not benched, good data still flows.
    bottom.delete(key)
    bottom.put(key, data)
    assert tiered.get(key) == data
    assert top.get(key) == data


def test_a_good_copy_in_a_deeper_tier_wins_over_a_tampered_one(tmp_path: Path) -> None:
    key, data = blob(payload_for("layers", 512))
    middle, bottom = MemoryStore(), MemoryStore()
    middle.put(key, b"x" * 512)
    bottom.put(key, data)
    top = MemoryStore()
    assert TieredStore([top, middle, bottom], on_error=RecordingHandler()).get(key) == data
    assert top.get(key) == data


# -- write policies -------------------------------------------------------------------
def test_write_policy_any_succeeds_if_one_tier_accepts() -> None:
    handler = RecordingHandler()
    good, bad = MemoryStore(), BrokenStore(fail_put=True)
    tiered = TieredStore([good, bad], write_policy=WritePolicy.ANY, on_error=handler)
    key, data = blob(b"any")
    tiered.put(key, data)
    assert good.get(key) == data
    assert [op for _url, op, _e in handler.calls] == ["put"]


def test_write_policy_any_fails_if_no_tier_accepts() -> None:
    tiered = TieredStore(
        [BrokenStore(fail_put=True), BrokenStore(fail_put=True)], write_policy=WritePolicy.ANY,
        on_error=RecordingHandler(),
    )
    with pytest.raises(StoreError):
        tiered.put(*blob(b"nowhere"))


def test_write_policy_all_fails_if_any_tier_refuses() -> None:
    good, bad = MemoryStore(), BrokenStore(fail_put=True)
    tiered = TieredStore([good, bad], write_policy=WritePolicy.ALL, on_error=RecordingHandler())
    with pytest.raises(StoreError, match="policy all"):
        tiered.put(*blob(b"all"))
    # ALL skips read-only tiers: they are not part of the write set.
    ok = TieredStore([MemoryStore(), MemoryStore(read_only=True)], write_policy=WritePolicy.ALL)
    key, data = blob(b"all ok")
    ok.put(key, data)
    assert ok.get(key) == data


def test_open_store_passes_write_policy(tmp_path: Path) -> None:
    tiered = open_store([f"file://{tmp_path}", "memory://"], write_policy=WritePolicy.ALL)
    assert isinstance(tiered, TieredStore) and tiered.write_policy is WritePolicy.ALL


# -- failing tiers cool down ----------------------------------------------------------
def test_failing_tier_is_skipped_for_the_cooldown() -> None:
    handler = RecordingHandler()
    top, bottom = MemoryStore(), BrokenStore(fail_get=True)
    tiered = TieredStore([top, bottom], cooldown_s=3600, on_error=handler)
    assert tiered.get(manifest_key("a")) is None
    assert tiered.get(manifest_key("b")) is None
    assert bottom.get_calls == 1  # benched after the first failure
    assert len(handler.calls) == 1
    tiered.cooldown_s = 0
    tiered._down_until = [0.0, 0.0]
    bottom.fail_get = False
    key, data = blob(b"recovered")
    bottom.put(key, data)
    assert tiered.get(key) == data


def test_strict_handler_raises() -> None:
    def strict(store: Store, operation: str, error: Exception) -> None:
        raise error

    tiered = TieredStore([MemoryStore(), BrokenStore(fail_get=True)], on_error=strict)
    with pytest.raises(StoreError, match="connection refused"):
        tiered.get(manifest_key("x"))


def test_digest_helper_matches_keys() -> None:
    key, data = blob(b"abc")
    assert key == "cas/" + hashlib.sha256(b"abc").hexdigest()
