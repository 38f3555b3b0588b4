"""A lookup never fails the user's compile: whatever rebuilding a looked-up entry raises
(torch's own errors, MemoryError, RecursionError) is a miss with a reason and one warning,
and the graph is compiled normally; only ``ARTCACHE_STRICT=1`` raises.  The boundary is
``ArtcacheBackend._load`` (the lookup's own boundary is tested in test_hostile_lookup.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from artcache import Cache, blob_codec
from artcache._torch import entry_parts
from artcache.config import Settings
from artcache.entry import LoadedEntry, decode_manifest
from artcache.errors import CorruptEntryError
from artcache.output_code import CompiledGraph
from artcache.store import LocalStore, cas_key

from .conftest import run_python

SETTINGS = Settings(store_urls=("memory://",))
SCRIPT = (
    "import json, torch\n"
    "import artcache\n"
    "from tests.corpus.programs import PROGRAMS\n"
    "from tests.corpus.runner import run_program\n"
    "cache = artcache.Cache()\n"
    "record = run_program(PROGRAMS['mlp_infer'], lambda fn: torch.compile(fn, backend=cache.backend()))\n"
    "eager = run_program(PROGRAMS['mlp_infer'], None)\n"
    "ok = all(torch.allclose(a, b, atol=1e-5) for a, b in zip(record['outputs'], eager['outputs']))\n"
    "s = cache.stats()\n"
    "print(json.dumps({'ok': ok, 'hits': s.hits, 'misses': s.misses, 'saves': s.saves, 'errors': s.errors}))\n"
)


def _tamper(store: Path, *, rekey: bool) -> None:
    """Replace each entry's wrapper source by one that does not parse; with ``rekey`` also
    set ``cache_key`` to that source's hash, as torch would (a writer can compute it)."""
    from torch._inductor.codecache import code_hash

    local = LocalStore(store)
    for info in list(local.iterate("ac/")):
        manifest = decode_manifest(local.get(info.key) or b"")
        loaded = LoadedEntry(manifest, {r.digest: blob_codec.decode(r, local.get(cas_key(r.digest)) or b"")
                                        for r in manifest.blobs})
        graph = CompiledGraph.from_loaded(loaded)
        for code in entry_parts.output_codes(graph.entry):
            code.source_code = "def call(args):\n    return (\n"  # unbalanced: a SyntaxError
            if rekey:
                code.cache_key = code_hash(code.source_code.strip())
        Cache(local, settings=SETTINGS, strict=True).save(
            manifest.key, graph.to_blobs(), factors=manifest.factors, environment=manifest.environment,
            summary=dict(manifest.summary),
        )


@pytest.mark.parametrize("rekey", [True, False], ids=["source-and-its-key", "source-under-the-old-key"])
def test_an_entry_whose_rebuild_fails_is_a_miss(tmp_path: Path, rekey: bool) -> None:
    """A real entry whose stored wrapper source no longer parses.  With its key recomputed,
    torch raises a RuntimeError (its import of the module fails) inside the rebuild (the boundary in _load turns
    it into a miss).  Under the original key, torch would write that source where the
    recompiled graph's module goes, and the recompile itself would import it and fail: the
    decoder refuses such an entry.  Either way the next process compiles correctly with one
    warning and replaces the entry, and the process after it hits."""
    store = tmp_path / "store"
    env = {"ARTCACHE_STORE": f"file://{store}", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "ind-cold")}
    cold = run_python(SCRIPT, env=env)
    assert cold.returncode == 0, cold.stderr[-3000:]
    _tamper(store, rekey=rekey)
    warm = run_python(SCRIPT, env=env | {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "ind-warm")})
    assert warm.returncode == 0, warm.stderr[-3000:]
    result = json.loads(warm.stdout.strip().splitlines()[-1])
    assert result["ok"] and result["hits"] == 0 and result["misses"] == {"unloadable": 1} and result["saves"] == 1
    expected = "could not be rebuilt: RuntimeError: Failed to import" if rekey else "cache_key is not the hash of its source_code"
    assert warm.stderr.count(expected) == 1, warm.stderr[-3000:]
    again = run_python(SCRIPT, env=env | {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "ind-again")})
    assert json.loads(again.stdout.strip().splitlines()[-1])["hits"] == 1, again.stderr[-3000:]
    strict = run_python(SCRIPT, env=env | {"ARTCACHE_STRICT": "1", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "ind-s")})
    assert strict.returncode == 0  # the replaced entry is sound: strict mode hits it too


@pytest.mark.parametrize("error", [MemoryError(), RecursionError("maximum recursion depth exceeded")])
def test_memory_and_recursion_errors_in_decoding_are_a_miss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, error: Exception
) -> None:
    """Decoding is depth-limited and every size is bounded, so no stored bytes make it raise
    these deterministically: the decoder is monkeypatched to raise them."""
    cache = Cache(LocalStore(tmp_path / "store"), settings=SETTINGS)
    x = torch.randn(4, 4)

    def f(t: torch.Tensor) -> torch.Tensor:
        return (t @ t).relu() + 1

    torch._dynamo.reset()
    assert torch.allclose(torch.compile(f, backend=cache.backend())(x), f(x))
    assert cache.stats().saves == 1

    def explode(loaded: LoadedEntry) -> CompiledGraph:
        raise error

    monkeypatch.setattr(CompiledGraph, "from_loaded", staticmethod(explode))
    torch._dynamo.reset()
    with caplog.at_level(logging.WARNING, logger="artcache"):
        assert torch.allclose(torch.compile(f, backend=cache.backend())(x), f(x))
    stats = cache.stats()
    assert stats.misses.get("unloadable") == 1 and stats.errors == {"load:CorruptEntryError": 1}
    assert caplog.text.count("could not be rebuilt") == 1 and type(error).__name__ in caplog.text
    strict = Cache(LocalStore(tmp_path / "store"), settings=SETTINGS, strict=True)
    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed) as raised:  # Dynamo wraps what a backend raises
        torch.compile(f, backend=strict.backend())(x)
    inner = raised.value.inner_exception
    assert isinstance(inner, CorruptEntryError) and inner.__cause__ is error
