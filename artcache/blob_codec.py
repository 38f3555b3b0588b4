"""Blob encodings: zstd compression of the blobs of an entry, where it pays.

The CAS stays plain: ``cas/<sha256>`` holds bytes addressed by the SHA-256 of the bytes
stored there.  Whether those bytes are the blob itself or its zstd frame is a property of
the reference in the manifest (``BlobRef.encoding``, ``BlobRef.raw_size``), so every store,
every tier and every bundle carries compressed blobs as they are, with no format of its
own, and a signature over the manifest covers the encoding too.

* Saving compresses a blob only when the frame is at least ``MIN_SAVING`` smaller (kernel
  libraries and generated source shrink several times; float weights do not, and are
  stored as they are).  The level is fixed and the frame has no checksum or dictionary,
  so identical blobs give identical frames and still dedupe in the CAS.
* Loading decompresses with the output bounded by the manifest's ``raw_size``, never by
  the size a frame header claims: a damaged or hostile frame cannot make it allocate more
  than the entry says, and one that decodes to a different size is a corrupt entry.
* The ``zstandard`` package (the ``compress`` extra) is optional.  Without it entries are
  written uncompressed, and an entry with a compressed blob reads as an incompatible
  entry (a miss that names the missing package), never as a crash.
"""

from __future__ import annotations

from types import ModuleType

from .entry import BlobRef
from .errors import CorruptEntryError, IncompatibleEntryError

RAW = ""
ZSTD = "zstd"
ENCODINGS = (RAW, ZSTD)
ZSTD_LEVEL = 3
MIN_SIZE = 256  # smaller blobs are stored as they are: a frame header would eat the gain
MIN_SAVING = 0.20  # compress only when the frame is at least this much smaller (float weights save ~10%)
_MAX_WINDOW = 1 << 27  # libzstd's default decoding limit, stated: refuse bigger windows
_READ_PIECE = 64 << 20  # output is read at most this much at a time past what was decoded


def _zstd() -> ModuleType | None:
    try:
        import zstandard
    except ImportError:
        return None
    return zstandard


def zstd_available() -> bool:
    return _zstd() is not None


def encode(data: bytes, *, compress: bool = True) -> tuple[str, bytes]:
    """``(encoding, stored bytes)`` for a blob: its zstd frame when that pays, else itself."""
    zstd = _zstd() if compress and len(data) >= MIN_SIZE else None
    if zstd is None:
        return RAW, data
    frame = zstd.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=False, write_content_size=True).compress(data)
    if len(frame) <= len(data) * (1 - MIN_SAVING):
        return ZSTD, frame
    return RAW, data


def decode(ref: BlobRef, stored: bytes) -> bytes:
    """The blob's bytes from its ``stored`` bytes, as ``ref`` describes them."""
    if ref.encoding == RAW:
        return stored
    if ref.encoding != ZSTD:
        raise IncompatibleEntryError(f"blob {ref.digest[:16]} has encoding {ref.encoding!r}, unknown to this artcache")
    zstd = _zstd()
    if zstd is None:
        raise IncompatibleEntryError(
            f"blob {ref.digest[:16]} is zstd-compressed and the zstandard package is not installed: "
            "pip install 'artcache[compress]'"
        )
    raw_size = ref.raw_size if ref.raw_size is not None else 0
    try:
        reader = zstd.ZstdDecompressor(max_window_size=_MAX_WINDOW).stream_reader(stored, read_across_frames=True)
        # One read of exactly the declared size (plus one byte, to see a frame that holds
        # more) for the usual blob; bounded pieces for a large claim, so memory follows
        # what actually decodes rather than what the manifest says.
        if raw_size < _READ_PIECE:
            out = reader.read(raw_size + 1)
        else:
            pieces, got = [], 0
            while got <= raw_size:
                piece = reader.read(min(_READ_PIECE, raw_size + 1 - got))
                if not piece:
                    break
                pieces.append(piece)
                got += len(piece)
            out = b"".join(pieces)
    except zstd.ZstdError as exc:
        raise CorruptEntryError(f"blob {ref.digest[:16]} is not a valid zstd frame: {exc}") from exc
    if len(out) > raw_size:
        raise CorruptEntryError(f"blob {ref.digest[:16]} decompresses to more than the {raw_size} bytes its manifest says")
    if len(out) < raw_size:
        raise CorruptEntryError(f"blob {ref.digest[:16]} decompresses to {len(out)} bytes, manifest says {raw_size}")
    return out
