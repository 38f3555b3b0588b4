"""Digests used across artcache, in one place so the choice is visible.

* Content addresses (``cas/<digest>``), cache keys and factor digests are SHA-256 hex:
  collision resistant, in hashlib everywhere, and the name bundles and signatures cover.
* The local store's per-read integrity check is XXH3-128 (:func:`checksum`): it guards
  against torn writes and bit rot, not against an attacker, and costs ~0.03 ms/MiB
  where SHA-256 costs ~0.7 ms/MiB, so reads stay close to raw file speed.  Bytes that
  cross a trust boundary (remote tiers, bundles, ``artcache verify``) are checked
  against their SHA-256 address instead.
"""

from __future__ import annotations

import hashlib
import re

import xxhash

DIGEST_HEX_LEN = 64
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


def content_digest(data: bytes | bytearray | memoryview) -> str:
    """SHA-256 hex digest: the content address of ``data``."""
    return hashlib.sha256(data).hexdigest()


def is_digest(text: str) -> bool:
    return bool(_DIGEST_RE.match(text))


def checksum(data: bytes | bytearray | memoryview) -> bytes:
    """16-byte XXH3-128 integrity checksum (not a security boundary)."""
    return xxhash.xxh3_128_digest(data)
