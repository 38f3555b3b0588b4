"""How the Redis store lays out a value, and the bounds a reader checks before fetching.

Kept apart from ``redis.py`` (the store's operations) because every field here comes from
a shared, hostile server: a chunk header is parsed and bounded here before anything it
names is fetched.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

# The most chunks one value may have (writers use larger chunks for values above 4 GiB).
# Bounds the commands and key names a hostile header can make a reader or writer handle:
# a pipelined command costs ~40 us in redis-py here, so 4096 chunks stay well under 1 s.
MAX_CHUNKS = 4096
# Chunks are fetched in pipelines of about this many bytes (so 1 MiB chunks still come
# one per round trip, which is fastest with hiredis, and tiny chunks come in bulk).
_FETCH_BATCH_BYTES = 1 << 20
_FETCH_BATCH_CHUNKS = 1024

_HEADER_MAGIC = b"ACH2"
_CHECKSUM_RE = re.compile(rb"[0-9a-f]{32}")
_TOKEN_RE = re.compile(rb"[0-9a-f]{32}")

# Deletes the value a reader refused, unless a writer replaced it since: KEYS are the
# inline, checksum and header names; ARGV[1] is the form that was read ("inline" or
# "header"), ARGV[2] the checksum (or "" if it had none) or header that came with it.
DELETE_IF_UNCHANGED = """
if ARGV[1] == 'header' then
  if redis.call('GET', KEYS[3]) == ARGV[2] then return redis.call('DEL', KEYS[3]) end
  return 0
end
if (redis.call('GET', KEYS[2]) or '') == ARGV[2] then return redis.call('DEL', KEYS[1], KEYS[2]) end
return 0
"""


@dataclass(frozen=True)
class Header:
    """``b"ACH2 <token> <count> <size> <xxh3-128 hex>"``: the commit point of a chunked
    value, naming its chunks ``#chunk:<token>:<0..count-1>``."""

    token: str
    count: int
    size: int
    checksum: bytes  # XXH3-128 of the whole payload

    def encode(self) -> bytes:
        return b"%s %s %d %d %s" % (_HEADER_MAGIC, self.token.encode(), self.count, self.size, self.checksum.hex().encode())

    @classmethod
    def decode(cls, raw: bytes) -> Header | None:
        parts = raw.split(b" ")
        if (len(parts) != 5 or parts[0] != _HEADER_MAGIC or not _TOKEN_RE.fullmatch(parts[1])
                or not _CHECKSUM_RE.fullmatch(parts[4])):
            return None
        try:
            count, size = int(parts[2]), int(parts[3])
        except ValueError:
            return None
        # At least one byte per chunk (an empty value is one empty chunk), and a cap: a
        # header naming more chunks than it could hold is not one artcache wrote.
        if count < 1 or size < 0 or count > MAX_CHUNKS or count > max(1, size):
            return None
        return cls(parts[1].decode(), count, size, bytes.fromhex(parts[4].decode()))


@dataclass(frozen=True)
class Oversized:
    """An inline value longer than its bound, left unread."""

    size: int


def lowest(*bounds: int | None) -> int | None:
    present = [b for b in bounds if b is not None]
    return min(present) if present else None


def batches(chunks: list[tuple[str, int]]) -> Iterator[list[tuple[str, int]]]:
    """Consecutive chunks grouped up to ``_FETCH_BATCH_BYTES`` or ``_FETCH_BATCH_CHUNKS``."""
    batch: list[tuple[str, int]] = []
    size = 0
    for item in chunks:
        batch.append(item)
        size += item[1]
        if size >= _FETCH_BATCH_BYTES or len(batch) >= _FETCH_BATCH_CHUNKS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
