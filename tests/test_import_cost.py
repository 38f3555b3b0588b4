"""A hit does not pay for torch's import of redis-py (``artcache._torch.import_cost``), and
torch's own Redis remote cache still works afterwards: against a real ``redis-server``, in
a fresh process that was served a hit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import run_python
from .redis_server import RedisServer, redis_server  # noqa: F401 (fixture)

pytest.importorskip("redis")

_PROGRAM = r"""
import json, os, sys, torch
import artcache
cache = artcache.Cache()
fn = torch.compile(lambda x: (x.sin() * 2).sum(0), backend=cache.backend())
out = fn(torch.arange(12.0).reshape(3, 4))
report = {"hits": cache.stats().hits, "saves": cache.stats().saves, "redis_imported": "redis" in sys.modules}
# torch's Redis remote cache, as a user who enabled it would reach it, after the hit.
from torch._inductor import remote_cache
backend = remote_cache.RedisRemoteCacheBackend("artcache-test")
backend._put("k", b"value")
import redis
report.update(remote_get=backend._get("k").decode(), same_class=remote_cache.redis.Redis is redis.Redis,
              truthy=bool(remote_cache.redis))
print(json.dumps(report))
"""


def test_a_hit_imports_no_redis_and_torchs_redis_cache_still_works(
    tmp_path: Path, redis_server: RedisServer  # noqa: F811
) -> None:
    env = {"ARTCACHE_STORE": f"file://{tmp_path}/store", "TORCHINDUCTOR_REDIS_URL": redis_server.url}
    runs = []
    for phase in ("cold", "warm"):
        proc = run_python(_PROGRAM, env={**env, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / f"inductor-{phase}")})
        assert proc.returncode == 0, proc.stderr[-4000:]
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    cold, warm = runs
    assert cold["saves"] == 1 and warm["hits"] == 1, runs
    assert warm["redis_imported"] is False, "the hit imported redis-py"
    assert warm["remote_get"] == "value" and warm["same_class"] and warm["truthy"], warm
