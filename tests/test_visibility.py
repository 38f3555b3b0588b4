"""Every graph says what the cache did: one line on the ``artcache`` logger (hit, miss with
its reason, saved, or uncacheable with its reason; key prefix, title, seconds saved),
counts in ``torch._dynamo.utils.counters["artcache"]``, structured-trace artifacts for
tlparse, a warning when a damaged entry causes a recompile, and stats for a store with no
local directory."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from .conftest import run_cli, run_python
from .redis_server import RedisServer, redis_server  # noqa: F401 (fixtures)


def _records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("artcache") and "artcache:" in r.getMessage()
            and any(w in r.getMessage() for w in (" hit ", " miss ", " uncacheable "))]


def traced(x: torch.Tensor) -> torch.Tensor:
    return (x.cos() + 1.5).relu()  # the first op's line is in the title


TRACED_LINE = traced.__code__.co_firstlineno + 1


def _compile(fn, x: torch.Tensor) -> torch.Tensor:  # type: ignore[no-untyped-def]
    torch._dynamo.reset()
    return torch.compile(fn, backend="artcache")(x)


@pytest.fixture
def local_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    store = tmp_path / "store"
    monkeypatch.setenv("ARTCACHE_STORE", f"file://{store}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for name in [n for n in os.environ if n.startswith("ARTCACHE_") and n != "ARTCACHE_STORE"]:
        monkeypatch.delenv(name)
    return store


def test_one_line_per_graph_miss_then_hit(local_env: Path, caplog: pytest.LogCaptureFixture) -> None:
    counters.clear()
    x = torch.randn(8)
    with caplog.at_level(logging.INFO, logger="artcache"):
        _compile(traced, x)
    (line,) = _records(caplog)
    text = line.getMessage()
    assert "miss (absent)" in text and "saved" in text, text
    assert f"traced at test_visibility.py:{TRACED_LINE}" in text and "ops)" in text, text
    key_prefix = text.split("artcache: miss (absent) ")[1][:12]
    assert all(c in "0123456789abcdef" for c in key_prefix), text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="artcache"):
        _compile(traced, x)
    (line,) = _records(caplog)
    text = line.getMessage()
    assert f"artcache: hit {key_prefix}" in text and f"traced at test_visibility.py:{TRACED_LINE}" in text, text
    assert " s saved" in text or "saved " in text
    assert counters["artcache"]["hit"] == 1 and counters["artcache"]["miss"] == 1
    assert counters["artcache"]["miss_absent"] == 1 and counters["artcache"]["save"] == 1


def test_uncacheable_graph_says_why(local_env: Path, caplog: pytest.LogCaptureFixture) -> None:
    counters.clear()
    import torch._inductor.config as inductor_config
    from torch._inductor.custom_graph_pass import CustomGraphPass

    class Unnamed(CustomGraphPass):
        """A custom pass whose uuid() is None: what it does to the code cannot be keyed
        (torch bypasses its own cache for it too)."""

        def __call__(self, graph: torch.fx.Graph) -> None:
            return None

        def uuid(self) -> None:
            return None

    with caplog.at_level(logging.INFO, logger="artcache"), inductor_config.patch(post_grad_custom_post_pass=Unnamed()):
        _compile(traced, torch.randn(4))
    (line,) = _records(caplog)
    assert "uncacheable (custom-pass)" in line.getMessage() and "traced at" in line.getMessage()
    assert counters["artcache"]["uncacheable"] == 1 and counters["artcache"]["uncacheable_custom-pass"] == 1


def test_damaged_entry_recompile_is_a_warning(local_env: Path, caplog: pytest.LogCaptureFixture) -> None:
    counters.clear()
    x = torch.randn(6)
    _compile(traced, x)
    blobs = [p for p in (local_env / "cas").rglob("*") if p.is_file()]
    blob = max(blobs, key=lambda p: p.stat().st_size)
    raw = bytearray(blob.read_bytes())
    raw[len(raw) // 3] ^= 0x01
    blob.write_bytes(bytes(raw))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="artcache"):
        out = _compile(traced, x)
    assert torch.allclose(out, (x.cos() + 1.5).relu())
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("artcache")]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    text = warnings[0].getMessage()
    assert "damaged" in text and "miss (corrupt)" in text and "compiling again" in text, text
    assert counters["artcache"]["damaged"] == 1


def test_plain_miss_is_not_a_warning(local_env: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="artcache"):
        _compile(lambda t: t * 3 - 1, torch.randn(3))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_torch_logs_name_is_registered() -> None:
    import artcache.backend  # noqa: F401 - registers the log
    from torch._logging._internal import log_registry

    assert log_registry.is_log("artcache")  # a name of torch's own, listed in TORCH_LOGS=help
    logger = logging.getLogger("artcache")
    torch._logging.set_logs(modules={"artcache": logging.INFO})
    try:
        assert logger.getEffectiveLevel() == logging.INFO and logger.handlers
    finally:
        # torch's reset leaves its own logs unpropagated with torch's handler; put the
        # logger back as other tests (capturing through the root logger) expect it.
        torch._logging.set_logs()
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)


def test_torch_logs_and_trace_in_a_fresh_process(tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    code = (
        "import torch\n"
        "f = torch.compile(lambda x: x.sin() * 4, backend='artcache')\n"
        "f(torch.randn(5))\n"
    )
    env = {"ARTCACHE_STORE": f"file://{tmp_path}/store", "TORCH_LOGS": "artcache", "TORCH_TRACE": str(trace),
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "ind")}
    proc = run_python(code, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "artcache: miss (absent)" in proc.stderr, proc.stderr[-3000:]
    logs = "".join(p.read_text() for p in trace.glob("*.log"))
    assert '"artcache_miss"' in logs, logs[-3000:]


def test_redis_only_store_keeps_stats(
    tmp_path: Path, redis_server: RedisServer,  # noqa: F811
) -> None:
    from artcache import Cache, NewBlob
    from artcache.config import settings_from_env

    url = f"{redis_server.url}?prefix=stats{os.getpid()}"
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg"), "ARTCACHE_STORE": url}
    cache = Cache(settings=settings_from_env(env))
    key = "ab" * 32
    assert cache.lookup(key) is None
    cache.save(key, [NewBlob("code", b"print(1)")], factors={}, environment={}, summary={"compile_seconds": 2.0})
    entry = cache.lookup(key)
    assert entry is not None
    cache.record_hit(entry, 0.5)
    proc = run_cli("stats", "--format", "json", env=env)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["hits"] == 1 and data["misses"] == 1 and data["saves"] == 1, data
    assert not (tmp_path / "xdg" / "artcache").exists()  # kept apart from any local store


def test_redis_only_backend_logs_hits(
    tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("ARTCACHE_STORE", f"{redis_server.url}?prefix=vis{os.getpid()}")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    x = torch.randn(7)
    _compile(traced, x)
    with caplog.at_level(logging.INFO, logger="artcache"):
        _compile(traced, x)
    (line,) = _records(caplog)
    assert "artcache: hit" in line.getMessage()
    proc = run_cli("stats", "--format", "json",
                   env={"XDG_CACHE_HOME": str(tmp_path / "xdg"), "ARTCACHE_STORE": f"{redis_server.url}?prefix=vis{os.getpid()}"})
    data = json.loads(proc.stdout)
    assert data["hits"] == 1 and data["saves"] == 1, data
