from __future__ import annotations

import pytest

from artcache.config import parse_size, settings_from_env
from artcache.errors import ArtcacheError


@pytest.mark.parametrize(
    "text,expected",
    [("4096", 4096), ("20G", 20 * 1024**3), ("512m", 512 * 1024**2), ("1.5GiB", int(1.5 * 1024**3)), ("2KB", 2048)],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "12Q", "-1G", "1e9"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ArtcacheError):
        parse_size(text)


def test_defaults_follow_xdg() -> None:
    s = settings_from_env({"XDG_CACHE_HOME": "/x/cache"})
    assert s.store_urls == ("file:///x/cache/artcache",)
    assert not s.strict and not s.disabled and s.max_size is None and s.trusted_keys == ()


def test_all_variables() -> None:
    s = settings_from_env(
        {
            "ARTCACHE_STORE": "file:///a, redis://h:6379/0 ,",
            "ARTCACHE_MAX_SIZE": "1G",
            "ARTCACHE_DISABLE": "1",
            "ARTCACHE_STRICT": "true",
            "ARTCACHE_SIGNING_KEY": "k",
            "ARTCACHE_TRUSTED_KEYS": "p1,p2",
        }
    )
    assert s.store_urls == ("file:///a", "redis://h:6379/0")
    assert s.max_size == 1024**3 and s.disabled and s.strict
    assert s.signing_key == "k" and s.trusted_keys == ("p1", "p2")
