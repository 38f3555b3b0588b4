"""The integrity frame shared by the local and Redis stores: ``payload || trailer``.

The 28-byte trailer is ``xxh3_128(payload) (16) || len(payload) as u64 LE (8) || b"ACF1" (4)``.
A trailer (not a header) lets a file read fetch the payload straight into one ``bytes`` of
the exact size; Redis keeps it in a key of its own, next to the value.  XXH3 catches torn writes, truncation, bit rot and damage in transit; it is
not a security boundary: authenticity comes from signed manifests, and under
``ARTCACHE_TRUSTED_KEYS`` every blob is checked against its SHA-256 address
(``Cache._fetch``).  See ``artcache.digest`` for why the per-read check is not SHA-256.
"""

from __future__ import annotations

import struct

from ..digest import checksum

TRAILER_MAGIC = b"ACF1"
_TRAILER = struct.Struct("<16sQ4s")
TRAILER_SIZE = _TRAILER.size  # 28


def trailer(payload: bytes | memoryview) -> bytes:
    return _TRAILER.pack(checksum(payload), len(payload), TRAILER_MAGIC)


def parse_trailer(raw: bytes) -> tuple[bytes, int] | None:
    """(checksum, payload length) from a trailer's bytes; ``None`` if it is not one."""
    if len(raw) != TRAILER_SIZE:
        return None
    sum_, length, magic = _TRAILER.unpack(raw)
    return (sum_, length) if magic == TRAILER_MAGIC else None


def check_framed(payload: bytes, raw_trailer: bytes | None) -> str:
    """``""`` if ``raw_trailer`` is the trailer of ``payload``, else what is wrong (for
    stores that keep the trailer apart from the value, like Redis)."""
    parsed = parse_trailer(raw_trailer) if raw_trailer is not None else None
    if parsed is None:
        return "no integrity trailer (damaged, or not written by artcache)"
    sum_, length = parsed
    if length != len(payload):
        return f"trailer says {length} bytes, value holds {len(payload)}"
    if checksum(payload) != sum_:
        return "bytes fail their checksum"
    return ""
