"""Digests used across artcache, in one place so the choice is visible.

* Content addresses (``cas/<digest>``), cache keys and factor digests are SHA-256 hex:
  collision resistant, in hashlib everywhere, and the name bundles and signatures cover.
* The stores' per-read integrity check (local files and Redis values) is XXH3-128
  (:func:`checksum`): it guards against torn writes, truncation, bit rot and damage in
  transit, not against an attacker, and costs a small fraction of SHA-256 per byte
  (``benchmarks/store_bench.py``), so reads stay close to raw speed.  Authenticity is the job of signed
  manifests: under ``ARTCACHE_TRUSTED_KEYS`` every blob is checked against its SHA-256
  address, as are bundles, lower tiers without their own check, and ``artcache verify``.
  (Without signatures a SHA-256 check of blobs authenticates nothing: whoever can
  rewrite a blob in a shared store can as well write a new manifest naming new blobs.)
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


def checksum_hasher() -> xxhash.xxh3_128:
    """An incremental :func:`checksum` (``update`` per piece, then ``digest()``)."""
    return xxhash.xxh3_128()
