"""A bad setting never kills the user's job: in the backend it is one warning that names
the variable or URL option and how to fix it, and the cache (or only the tier it concerns)
is off; ``ARTCACHE_STRICT=1`` raises.  In the CLI it is one line on stderr and exit 2.
Credentials never appear in a message."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import torch

from artcache.config import parse_size, redact_url, settings_from_env
from artcache.errors import ArtcacheError, ConfigError, StoreError
from artcache.store import open_store

from .conftest import run_cli
from .redis_server import RedisServer, redis_server  # noqa: F401 (fixtures)

SECRET = "hunter2-secret"


# -- sizes: one parser everywhere ------------------------------------------------------------
def test_redis_chunk_takes_a_size_like_readme() -> None:
    pytest.importorskip("redis")
    from artcache.store.redis import RedisStore

    store = RedisStore.from_url("redis://127.0.0.1:1/0?chunk=8M")
    assert store.chunk_size == 8 * 1024**2 and store.inline_max == 8 * 1024**2
    assert RedisStore.from_url("redis://127.0.0.1:1/0?chunk=1048576").chunk_size == 1 << 20


def test_bad_max_size_is_a_problem_not_a_crash() -> None:
    settings = settings_from_env({"ARTCACHE_MAX_SIZE": "garbage"})
    assert settings.max_size is None
    (problem,) = settings.problems
    assert "ARTCACHE_MAX_SIZE" in problem and "20G" in problem
    with pytest.raises(ConfigError, match="ARTCACHE_MAX_SIZE"):
        settings.check()
    assert parse_size("8M") == 8 * 1024**2


def test_unrecognized_flag_value_is_a_problem() -> None:
    settings = settings_from_env({"ARTCACHE_DISABLE": "maybe"})
    assert any("ARTCACHE_DISABLE" in p for p in settings.problems)
    assert settings_from_env({"ARTCACHE_DISABLE": "1", "ARTCACHE_STRICT": "off"}).problems == ()


# -- URL options rejected by name ------------------------------------------------------------
def test_unknown_redis_option_is_rejected_by_name() -> None:
    pytest.importorskip("redis")
    with pytest.raises(ConfigError) as raised:
        open_store(f"redis://:{SECRET}@127.0.0.1:1/0?tll=60")
    message = str(raised.value)
    assert "'tll'" in message and "ttl" in message and SECRET not in message
    assert isinstance(raised.value, StoreError)  # still a store error for the CLI and tiers


def test_unknown_file_option_is_rejected_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'fsyncc'"):
        open_store(f"file://{tmp_path}?fsyncc=0")


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{SECRET}@127.0.0.1:1/0?chunk=lots",
        f"redis://:{SECRET}@127.0.0.1:notaport/0",
        f"redis://user:{SECRET}@127.0.0.1:1/0?timeout=-1",
        f"rediss://:{SECRET}@127.0.0.1:1/0?ttl=soon",
    ],
)
def test_redis_url_errors_never_show_the_password(url: str) -> None:
    pytest.importorskip("redis")
    with pytest.raises(StoreError) as raised:
        open_store(url)
    assert SECRET not in str(raised.value)
    assert "\n" not in str(raised.value)


def test_redact_url() -> None:
    assert redact_url(f"redis://:{SECRET}@h:6379/0?ttl=5") == "redis://:***@h:6379/0?ttl=5"
    assert redact_url(f"https://bob:{SECRET}@h/p?timeout=1") == "https://bob:***@h/p?timeout=1"
    assert SECRET not in redact_url(f"https://h/p?token={SECRET}&ro=1")
    assert SECRET not in redact_url(f"redis://h:1/0?password={SECRET}")
    assert redact_url("file:///a/b?fsync=0") == "file:///a/b?fsync=0"
    assert SECRET not in redact_url(f"redis://:{SECRET}@h:notaport/0")


# -- the backend: a warning and a clean miss, strict raises ------------------------------------
def _compile_once(tag: float) -> None:
    torch._dynamo.reset()
    f = torch.compile(lambda x: (x + tag).sin() * 2, backend="artcache")
    x = torch.randn(5)
    assert torch.allclose(f(x), (x + tag).sin() * 2)


def _entries(store_dir: Path) -> int:
    return len([p for p in (store_dir / "ac").rglob("*") if p.is_file()]) if (store_dir / "ac").exists() else 0


def _config_warnings(caught: list[warnings.WarningMessage], records: list[logging.LogRecord]) -> list[str]:
    texts = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    texts += [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    return [t for t in texts if "artcache" in t]


def test_backend_bad_second_tier_keeps_the_local_tier(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    redis_server: RedisServer,  # noqa: F811
) -> None:
    local = tmp_path / "local"
    monkeypatch.setenv("ARTCACHE_STORE", f"file://{local},redis://:{SECRET}@127.0.0.1:{redis_server.port}/0?tll=60")
    with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        _compile_once(0.25)
        _compile_once(0.5)  # a second graph: no second warning
    texts = _config_warnings(caught, caplog.records)
    assert len(texts) == 1, texts
    assert "'tll'" in texts[0] and "ttl" in texts[0] and SECRET not in texts[0]
    assert _entries(local) == 2  # the local tier still served
    monkeypatch.setenv("ARTCACHE_STRICT", "1")
    with pytest.raises(Exception, match="tll"):
        _compile_once(0.75)


@pytest.mark.parametrize(
    "variable,value,named",
    [
        ("ARTCACHE_MAX_SIZE", "garbage", "ARTCACHE_MAX_SIZE"),
        ("ARTCACHE_SIGNING_KEY", "/nonexistent/artcache-signing.key", "ARTCACHE_SIGNING_KEY"),
        ("ARTCACHE_TRUSTED_KEYS", "not-a-key", "ARTCACHE_TRUSTED_KEYS"),
    ],
)
def test_backend_bad_setting_turns_the_cache_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    variable: str, value: str, named: str,
) -> None:
    pytest.importorskip("nacl")
    store = tmp_path / "store"
    monkeypatch.setenv("ARTCACHE_STORE", f"file://{store}")
    monkeypatch.setenv(variable, value)
    with caplog.at_level(logging.WARNING), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        _compile_once(1.25)
        _compile_once(1.5)
    texts = _config_warnings(caught, caplog.records)
    assert len(texts) == 1, texts
    assert named in texts[0] and "off" in texts[0]
    assert _entries(store) == 0
    monkeypatch.setenv("ARTCACHE_STRICT", "1")
    with pytest.raises(Exception, match=named):
        _compile_once(1.75)


# -- the CLI: one line, exit 2 -------------------------------------------------------------
@pytest.mark.parametrize(
    "env,args,named",
    [
        ({"ARTCACHE_MAX_SIZE": "garbage"}, ["gc", "--dry-run"], "ARTCACHE_MAX_SIZE"),
        ({}, ["--store", f"redis://:{SECRET}@127.0.0.1:1/0?tll=60", "ls"], "tll"),
        ({}, ["gc", "--max-size", "lots", "--dry-run"], "lots"),
        ({"ARTCACHE_DISABLE": "perhaps"}, ["ls"], "ARTCACHE_DISABLE"),
    ],
)
def test_cli_config_error_is_one_line_exit_2(tmp_path: Path, env: dict[str, str], args: list[str], named: str) -> None:
    pytest.importorskip("redis")
    full_env = {"ARTCACHE_STORE": f"file://{tmp_path}/store", **env}
    proc = run_cli(*args, env=full_env)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and SECRET not in proc.stderr, proc.stderr


def test_config_error_is_an_artcache_error() -> None:
    assert issubclass(ConfigError, ArtcacheError)


def test_a_down_tier_never_logs_its_credentials(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("redis")
    pytest.importorskip("urllib3")
    from artcache import Cache

    urls = f"file://{tmp_path}/l,redis://user:{SECRET}@127.0.0.1:1/0?timeout=0.2,http://bob:{SECRET}@127.0.0.1:1/c"
    cache = Cache(settings=settings_from_env({"ARTCACHE_STORE": urls, "XDG_CACHE_HOME": str(tmp_path)}))
    with caplog.at_level(logging.DEBUG, logger="artcache"):
        assert cache.lookup("ab" * 32) is None
    assert "127.0.0.1:1" in caplog.text and SECRET not in caplog.text
    assert SECRET not in repr(cache.store.url) and SECRET not in repr(cache.settings)
