"""Hostile stores: crafted entries are refused with a clear reason, the object documents they
hold are decoded without running anything from them (a sentinel file must not appear),
nothing crashes, and memory stays bounded.

What these tests do *not* show, because it is not true: that nothing in a store runs.  An
entry's generated wrapper source and C++/Triton kernel libraries are code, and a hit runs
them; a writer of an unsigned store can ship code that passes every check here.  Only
signed entries under ``ARTCACHE_TRUSTED_KEYS`` stop that (README, "Security model").

The shared (lower) tier is where hostile bytes come from: every case plants its entry in a
MemoryStore used as the remote tier under an empty local tier, exactly like a shared cache.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import tracemalloc
from pathlib import Path
from typing import Any

import msgpack
import pytest

from artcache import Cache, CorruptEntryError, IncompatibleEntryError
from artcache.config import Settings
from artcache.digest import content_digest
from artcache.entry import BlobRef, Manifest, decode_manifest, encode_envelope, encode_manifest
from artcache.output_code import CompiledGraph
from artcache.pickler import MAGIC as PICKLE_MAGIC
from artcache.store import LocalStore, MemoryStore, TieredStore, ac_key, cas_key

from .conftest import run_python

KEY = "ab" * 32
SETTINGS = Settings(store_urls=("memory://",))


def _ext(tag: int) -> msgpack.ExtType:
    return msgpack.ExtType(tag, b"")


def _doc(root: Any) -> bytes:
    return PICKLE_MAGIC + (1).to_bytes(2, "big") + msgpack.packb([root, []], use_bin_type=True)


class _Shell:
    """Builds payloads that would create ``sentinel`` if anything ran them."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.sentinel}",))


def _payloads(sentinel: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (object blob, substring of the expected refusal)."""
    deep: Any = 1
    for _ in range(500):
        deep = [deep]
    return {
        "raw-pickle": (pickle.dumps(_Shell(sentinel)), "bad magic"),
        "pickle-after-magic": (PICKLE_MAGIC + (1).to_bytes(2, "big") + pickle.dumps(_Shell(sentinel)), ""),
        "os-system-callable": (_doc([_ext(15), [_ext(21), "os:system"], [f"touch {sentinel}"], {}]), "not allowlisted"),
        "builtins-eval": (_doc([_ext(15), [_ext(21), "builtins:eval"], [f"open('{sentinel}','w')"], {}]), "not allowlisted"),
        "subprocess-class": (_doc([_ext(20), "subprocess:Popen", {"args": ["touch", str(sentinel)]}]), "not allowlisted"),
        "dunder-walk": (_doc([_ext(21), "torch:nn.Module.__subclasses__"]), ""),
        "unknown-ext": (_doc([_ext(99), 1]), ""),
        "truncated": (_doc({"a": list(range(100))})[:-9], ""),
        "deep-nesting": (_doc(deep), "deep"),
        "future-version": (PICKLE_MAGIC + (99).to_bytes(2, "big") + msgpack.packb([None, []]), "version"),
        "tensor-size-lie": (
            _doc([_ext(35), [_ext(30), "float32"], [2**40], [1], 0, 0, False, [_ext(31), "cpu"]]),
            "",
        ),
        "blob-ref-absent": (_doc([_ext(10), "cd" * 32, 2**40]), ""),
    }


def _plant(remote: MemoryStore, blobs: list[tuple[str, bytes]], *, declared: dict[str, int] | None = None) -> None:
    refs = []
    for role, data in blobs:
        digest = content_digest(data)
        remote.put(cas_key(digest), data)
        refs.append(BlobRef(role, digest, (declared or {}).get(role, len(data)), digest if role == "data" else ""))
    manifest = Manifest(KEY, {}, {}, 0.0, "hostile", tuple(refs), {})
    remote.put(ac_key(KEY), encode_manifest(manifest))


def _cache(tmp_path: Path, remote: MemoryStore, *, strict: bool = False) -> Cache:
    tiers = TieredStore([LocalStore(tmp_path / "local"), remote])
    return Cache(tiers, settings=SETTINGS, strict=strict)


@pytest.mark.parametrize("case", sorted(_payloads(Path("/x"))))
def test_crafted_object_is_refused_and_never_runs(tmp_path: Path, case: str) -> None:
    sentinel = tmp_path / "sentinel"
    blob, reason = _payloads(sentinel)[case]
    remote = MemoryStore()
    _plant(remote, [("object", blob)])
    cache = _cache(tmp_path, remote)
    loaded = cache.lookup(KEY)
    assert loaded is not None  # the manifest is fine; the object inside is hostile
    tracemalloc.start()
    with pytest.raises((CorruptEntryError, IncompatibleEntryError), match=reason or None):
        CompiledGraph.from_loaded(loaded)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert not sentinel.exists()
    assert peak < 64 * 2**20, f"decoding a hostile entry peaked at {peak} bytes"


def test_manifest_naming_absent_blob_is_a_miss(tmp_path: Path) -> None:
    remote = MemoryStore()
    _plant(remote, [("object", b"x" * 100)])
    (ref,) = [i.key for i in remote.iterate("cas/")]
    remote.delete(ref)
    cache = _cache(tmp_path, remote)
    assert cache.lookup(KEY) is None and cache.stats().misses == {"missing-blob": 1}


def test_blob_failing_its_digest_is_not_served(tmp_path: Path) -> None:
    remote = MemoryStore()
    _plant(remote, [("object", b"good" * 100)])
    (ref,) = [i.key for i in remote.iterate("cas/")]
    remote.put(ref, b"evil" * 100)  # same size, other bytes, under the good address
    cache = _cache(tmp_path, remote)
    assert cache.lookup(KEY) is None and cache.stats().misses == {"missing-blob": 1}
    assert not (tmp_path / "local" / "cas" / ref[4:6] / ref[4:]).exists()  # never backfilled


def test_huge_declared_size_is_refused_without_allocating(tmp_path: Path) -> None:
    remote = MemoryStore()
    _plant(remote, [("object", b"small")], declared={"object": 2**40})
    tracemalloc.start()
    cache = _cache(tmp_path, remote)
    assert cache.lookup(KEY) is None
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert cache.stats().misses == {"corrupt": 1} and peak < 16 * 2**20


@pytest.mark.parametrize(
    "manifest",
    [
        b"\x80" * 10,
        encode_envelope(b"\xc1", b""),
        encode_envelope(msgpack.packb({"key": KEY}), b"\x80"),
        encode_envelope(b"\x91" * 100_000 + b"\x01", b"\x80"),
        pickle.dumps({"key": KEY}),
    ],
    ids=["garbage", "bad-core", "missing-fields", "deep-core", "pickled-manifest"],
)
def test_malformed_manifest_is_a_corrupt_miss(tmp_path: Path, manifest: bytes) -> None:
    remote = MemoryStore()
    remote.put(ac_key(KEY), manifest)
    cache = _cache(tmp_path, remote)
    assert cache.lookup(KEY) is None and cache.stats().misses == {"corrupt": 1}


def test_hostile_entry_under_a_real_key_is_rebuilt(tmp_path: Path) -> None:
    """End to end: a real entry's object is swapped for a pickle bomb; the next process
    compiles correctly instead, runs nothing from the entry, and replaces it."""
    store = tmp_path / "store"
    env = {"ARTCACHE_STORE": f"file://{store}", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "ind")}
    script = (
        "import json, torch\n"
        "import artcache\n"
        "from tests.corpus.programs import PROGRAMS\n"
        "from tests.corpus.runner import run_program\n"
        "cache = artcache.Cache()\n"
        "backend = cache.backend()\n"
        "record = run_program(PROGRAMS['mlp_infer'], lambda fn: torch.compile(fn, backend=backend))\n"
        "eager = run_program(PROGRAMS['mlp_infer'], None)\n"
        "ok = all(torch.allclose(a, b, atol=1e-5) for a, b in zip(record['outputs'], eager['outputs']))\n"
        "s = cache.stats()\n"
        "print(json.dumps({'ok': ok, 'hits': s.hits, 'misses': s.misses, 'saves': s.saves}))\n"
    )
    cold = run_python(script, env=env)
    assert cold.returncode == 0, cold.stderr[-3000:]
    local = LocalStore(store)
    sentinel = tmp_path / "sentinel"
    for info in list(local.iterate("ac/")):
        manifest = decode_manifest(local.get(info.key) or b"")
        bomb = pickle.dumps(_Shell(sentinel))
        local.put(cas_key(content_digest(bomb)), bomb)
        blobs = tuple(BlobRef(r.role, content_digest(bomb), len(bomb), r.name) if r.role == "object" else r
                      for r in manifest.blobs)
        local.put(info.key, encode_manifest(dataclasses.replace(manifest, blobs=blobs)))
    shutil.rmtree(tmp_path / "ind")
    warm = run_python(script, env=env)
    assert warm.returncode == 0, warm.stderr[-3000:]
    result = json.loads(warm.stdout.strip().splitlines()[-1])
    assert result == {"ok": True, "hits": 0, "misses": {"unloadable": 1}, "saves": 1}
    assert not sentinel.exists()
    assert "bad magic" in warm.stderr  # the refusal is logged with its reason
