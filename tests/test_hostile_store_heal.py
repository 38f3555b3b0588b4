"""Poison that heals: a stored value refused on read is set aside, a put over invalid
bytes replaces them, and a lower tier's bytes are checked against their SHA-256 address
before they are written into a higher tier.

The attacker can write the store (with artcache's own framing, so the bytes pass the
per-file checksum) but has no signing key; readers trust only the writer's key.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from artcache import Cache, NewBlob
from artcache.config import Settings
from artcache.digest import content_digest
from artcache.signing import generate
from artcache.store import (
    LocalStore,
    MemoryStore,
    TieredStore,
    cas_key,
    open_store,
)
from artcache.store._frame import trailer

from .conftest import run_python
from .redis_server import RedisServer, redis_server  # noqa: F401 (fixture)
from artcache.testing import blob, payload_for

KEY = "7e" * 32
SHARED = payload_for("shared constant", 6000)  # a blob every entry of the model shares
CODE = b"def call(args): return args"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(private key file, public key) of the legitimate writer."""
    pair = generate(tmp_path_factory.mktemp("keys") / "writer")
    return pair.private_path, pair.public_key


def writer(store: LocalStore | TieredStore, keys: tuple[str, str]) -> Cache:
    return Cache(store, settings=Settings(store_urls=("memory://",), signing_key=keys[0]), strict=False)


def reader(store: LocalStore | TieredStore, keys: tuple[str, str]) -> Cache:
    return Cache(store, settings=Settings(store_urls=("memory://",), trusted_keys=(keys[1],)), strict=False)


def save_entry(cache: Cache) -> None:
    assert cache.save(KEY, [NewBlob("code", CODE), NewBlob("constant", SHARED, "w")],
                      factors={}, environment={}) is not None


def plant_framed(root: Path, key: str, payload: bytes) -> None:
    """Overwrite a stored file with other bytes in artcache's own frame (they pass the
    per-file XXH3 check; only the SHA-256 address tells them apart)."""
    space, name = key.split("/")
    (root / space / name[:2] / name).write_bytes(payload + trailer(payload))


def hits_in_a_fresh_process(url: str, public_key: str) -> dict[str, object]:
    code = (
        "import json\n"
        "from artcache import Cache\n"
        "from artcache.config import Settings\n"
        f"cache = Cache({url!r}, settings=Settings(store_urls=('memory://',), trusted_keys=({public_key!r},)))\n"
        f"entry = cache.lookup({KEY!r})\n"
        "print(json.dumps({'hit': entry is not None, 'misses': cache.stats().misses}))\n"
    )
    proc = run_python(code, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# -- local: a tampered shared blob heals on the next legitimate save ---------------------
def test_tampered_shared_blob_heals_after_one_legitimate_save(tmp_path: Path, keys: tuple[str, str]) -> None:
    root = tmp_path / "store"
    save_entry(writer(LocalStore(root), keys))
    bad = b"X" * len(SHARED)  # same size, other bytes, valid frame
    plant_framed(root, cas_key(content_digest(SHARED)), bad)

    victim = reader(LocalStore(root), keys)
    assert victim.lookup(KEY) is None and victim.stats().misses == {"corrupt": 1}
    # The victim compiled and saves the entry again, as a miss does.
    save_entry(writer(LocalStore(root), keys))
    assert LocalStore(root).get(cas_key(content_digest(SHARED))) == SHARED
    assert hits_in_a_fresh_process(f"file://{root}", keys[1]) == {"hit": True, "misses": {}}


@pytest.mark.parametrize("damage", ["flipped-trailer", "truncated", "link", "directory"])
def test_put_replaces_stored_bytes_that_fail_their_checks(tmp_path: Path, damage: str) -> None:
    # Without any read in between: the put itself must not skip "because the key exists".
    store = LocalStore(tmp_path / "store")
    key, data = blob(payload_for("replace", 5000))
    store.put(key, data)
    path = tmp_path / "store" / "cas" / key[4:6] / key[4:]
    raw = path.read_bytes()
    path.unlink()
    if damage == "flipped-trailer":
        path.write_bytes(raw[:-10] + bytes([raw[-10] ^ 1]) + raw[-9:])
    elif damage == "truncated":
        path.write_bytes(raw[:100])
    elif damage == "link":
        (tmp_path / "elsewhere").write_bytes(raw)
        path.symlink_to(tmp_path / "elsewhere")
    else:
        path.mkdir()
    store.put(key, data)
    assert path.is_file() and not path.is_symlink() and path.read_bytes() == raw
    assert store.get(key) == data


def test_refused_blob_is_quarantined_on_request(tmp_path: Path) -> None:
    # A reader that refuses a blob (it fails its SHA-256 address) asks the store to set it
    # aside; the store checks again itself, and never moves a good blob.
    root = tmp_path / "store"
    store = LocalStore(root)
    good_key, good = blob(b"good blob")
    bad_key, bad = blob(b"will be tampered")
    store.put(good_key, good)
    store.put(bad_key, bad)
    plant_framed(root, bad_key, b"tampered!!" + bad[10:])
    store.quarantine(good_key)
    store.quarantine(bad_key)
    assert store.get(good_key) == good
    assert not store.has(bad_key) and len(store.quarantined_names()) == 1


# -- tiers: the lower tier's bytes are verified before backfill --------------------------
def test_tampered_lower_tier_blob_is_not_backfilled(tmp_path: Path, keys: tuple[str, str]) -> None:
    remote = MemoryStore(name="shared")
    save_entry(writer(TieredStore([LocalStore(tmp_path / "seed"), remote]), keys))
    digest = content_digest(SHARED)
    remote.put(cas_key(digest), b"X" * len(SHARED))  # tampered in the shared tier

    local = LocalStore(tmp_path / "local")
    victim = reader(TieredStore([local, remote]), keys)
    assert victim.lookup(KEY) is None
    assert local.get(cas_key(digest)) is None  # never written into the higher tier
    # The legitimate re-save heals both tiers.
    save_entry(writer(TieredStore([local, remote]), keys))
    assert remote.get(cas_key(digest)) == SHARED
    assert reader(TieredStore([LocalStore(tmp_path / "other"), remote]), keys).lookup(KEY) is not None


def test_tampered_redis_blob_with_a_valid_checksum_is_not_backfilled(
    tmp_path: Path, redis_server: RedisServer, keys: tuple[str, str]
) -> None:
    # Redis checks an XXH3 checksum on every value; whoever can write Redis writes a
    # matching one.  Only the SHA-256 address catches it, before any backfill.
    import redis as redis_py

    from artcache.store.redis import RedisStore

    namespace = "heal" + content_digest(str(tmp_path).encode())[:8]
    url = f"{redis_server.url}?prefix={namespace}"
    save_entry(writer(open_store(f"file://{tmp_path}/seed,{url}"), keys))  # type: ignore[arg-type]
    digest = content_digest(SHARED)
    RedisStore.from_url(url).put(cas_key(digest), b"X" * len(SHARED))  # checksum made to match

    tiered = open_store(f"file://{tmp_path}/local,{url}")
    assert isinstance(tiered, TieredStore)
    assert tiered.get(cas_key(digest)) is None
    assert LocalStore(tmp_path / "local").get(cas_key(digest)) is None
    # Refused: set aside in Redis too (it fails its address), so no reader fetches it again.
    client = redis_py.Redis.from_url(redis_server.url)
    assert not client.exists(f"artcache:v2:{namespace}:cas:{digest}")
    save_entry(writer(open_store(f"file://{tmp_path}/local2,{url}"), keys))  # type: ignore[arg-type]
    assert hits_in_a_fresh_process(f"file://{tmp_path}/fresh,{url}", keys[1]) == {"hit": True, "misses": {}}


@pytest.mark.parametrize("chunk", ["", "&chunk=1000"])
def test_redis_value_failing_its_checksum_is_deleted(redis_server: RedisServer, chunk: str) -> None:
    import redis as redis_py

    from artcache.store.redis import RedisStore

    namespace = "sum" + content_digest(chunk.encode() + b"x")[:8]
    store = RedisStore.from_url(f"{redis_server.url}?prefix={namespace}{chunk}")
    client = redis_py.Redis.from_url(redis_server.url)
    key, data = blob(payload_for("checksum", 2500))
    store.put(key, data)
    names = sorted(n for n in client.scan_iter(match=f"artcache:v2:{namespace}:*")
                   if b":#sum:" not in n and b":#hdr:" not in n)
    client.set(names[0], b"Z" + client.get(names[0])[1:])  # the value, or its first chunk
    assert store.get(key) is None
    assert list(client.scan_iter(match=f"artcache:v2:{namespace}:*")) == []  # value, sum, header, chunks
    store.put(key, data)
    assert store.get(key) == data
