from __future__ import annotations

import struct

import msgpack
import pytest

from artcache.entry import (
    FORMAT_VERSION,
    MAGIC,
    MAX_CORE_BYTES,
    MAX_MANIFEST_BYTES,
    BlobRef,
    Manifest,
    decode_core,
    decode_envelope,
    decode_manifest,
    encode_envelope,
    encode_manifest,
    encode_parts,
    signed_message,
)
from artcache.errors import CorruptEntryError, IncompatibleEntryError

DIGEST = "ab" * 32


def make_manifest(**over: object) -> Manifest:
    fields: dict[str, object] = dict(
        key="cd" * 32,
        factors={"graph": "1" * 64, "torch": "2" * 64},
        environment={"torch": "2.13.0", "python": "3.11"},
        created=1700000000.5,
        producer="artcache test",
        blobs=(BlobRef("code", DIGEST, 10, "graph.py"), BlobRef("constant", "ef" * 32, 4096, "w")),
        summary={"title": "t", "kernels": [{"name": "k", "kind": "cpp", "size": 3}]},
        compile_seconds=2.5,
    )
    fields.update(over)
    return Manifest(**fields)  # type: ignore[arg-type]


def core_doc() -> dict[str, object]:
    return msgpack.unpackb(encode_parts(make_manifest())[0], raw=False)  # type: ignore[no-any-return]


def with_core(doc: object, summary: bytes = b"\x80") -> bytes:
    return encode_envelope(msgpack.packb(doc, use_bin_type=True), summary)


def header(version: int = FORMAT_VERSION, signer: int = 0, sig: int = 0, core: int = 0, summary: int = 0) -> bytes:
    return struct.pack("<8sIBBII", MAGIC, version, signer, sig, core, summary)


def test_round_trip() -> None:
    m = make_manifest()
    assert decode_manifest(encode_manifest(m)) == m


def test_a_lookup_parses_the_core_only() -> None:
    m = make_manifest()
    envelope = decode_envelope(encode_manifest(m))
    core = decode_core(envelope.core)
    assert core.summary == {} and core.compile_seconds == 2.5 and core.blobs == m.blobs
    # A summary that would not even parse is never looked at by a lookup.
    assert decode_core(decode_envelope(encode_envelope(bytes(envelope.core), b"\xc1")).core).key == m.key


def test_encoding_is_deterministic() -> None:
    a = make_manifest(factors={"b": "2", "a": "1"})
    b = make_manifest(factors={"a": "1", "b": "2"})
    assert encode_manifest(a) == encode_manifest(b)


def test_unknown_version_is_incompatible() -> None:
    core, summary = encode_parts(make_manifest())
    raw = header(FORMAT_VERSION + 1, core=len(core), summary=len(summary)) + core + summary
    with pytest.raises(IncompatibleEntryError, match="version 3"):
        decode_manifest(raw)


def test_a_format_1_envelope_is_incompatible() -> None:
    """Format 1 was a msgpack array [MAGIC, 1, body, signature, signer]."""
    body = msgpack.packb({"key": "cd" * 32}, use_bin_type=True)
    raw = msgpack.packb([MAGIC, 1, body, None, None], use_bin_type=True)
    with pytest.raises(IncompatibleEntryError, match="version 1"):
        decode_envelope(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        header()[:10],
        b"NOTMAGIC" + header()[8:],
        encode_manifest(make_manifest())[:-7],
        encode_manifest(make_manifest()) + b"\0",
        header(signer=16, sig=0),
        header(signer=3, sig=64) + b"abc" + b"\0" * 64,
        header(signer=16, sig=64) + b"NOT-HEX-KEY-ID!!" + b"\0" * 64,
        header(core=MAX_CORE_BYTES + 1),
        header(core=1 << 31, summary=1 << 31),
        b"\0" * (MAX_MANIFEST_BYTES + 1),
    ],
    ids=["empty", "short", "magic", "truncated", "padded", "signer-without-signature", "signer-length",
         "signer-not-hex", "core-over-cap", "lengths-overflow", "over-cap"],
)
def test_malformed_envelopes_are_corrupt(raw: bytes) -> None:
    with pytest.raises(CorruptEntryError):
        decode_envelope(raw)


@pytest.mark.parametrize(
    "change",
    [
        {"key": "../../etc/passwd"},
        {"blobs": [["code", "zz", 1, ""]]},
        {"blobs": [["code", DIGEST, -1, ""]]},
        {"blobs": [["code", DIGEST, 2**62, ""]]},
        {"blobs": [["code", DIGEST, 1]]},
        {"blobs": "nope"},
        {"blobs": [[["code"], DIGEST, 1, ""]]},  # a container where a string belongs
        {"factors": {"a": 1}},
        {"factors": {"a": ["x"] * 1000}},
        {"created": "yesterday"},
        {"extra": 1},
    ],
)
def test_malformed_cores_are_corrupt(change: dict[str, object]) -> None:
    doc = core_doc()
    doc.update(change)
    with pytest.raises(CorruptEntryError):
        decode_manifest(with_core(doc))


def test_missing_field_is_corrupt() -> None:
    doc = core_doc()
    del doc["blobs"]
    with pytest.raises(CorruptEntryError, match="missing"):
        decode_manifest(with_core(doc))


def test_trailing_bytes_after_the_core_are_corrupt() -> None:
    core, summary = encode_parts(make_manifest())
    with pytest.raises(CorruptEntryError, match="trailing"):
        decode_core(decode_envelope(encode_envelope(core + b"\x01", summary)).core)


def test_envelope_carries_signature_slot() -> None:
    core, summary = encode_parts(make_manifest())
    env = decode_envelope(encode_envelope(core, summary, b"s" * 64, "0123456789abcdef"))
    assert env.signature == b"s" * 64 and env.signer == "0123456789abcdef"
    assert bytes(env.core) == core and bytes(env.summary) == summary
    assert env.signed_message == signed_message(FORMAT_VERSION, core, summary)
    # The lengths are signed: the same bytes split differently sign differently.
    assert signed_message(FORMAT_VERSION, core + summary[:1], summary[1:]) != env.signed_message


def test_summary_must_be_plain_data() -> None:
    with pytest.raises(CorruptEntryError):
        encode_parts(make_manifest(summary={"x": object()}))


def test_a_writer_refuses_what_readers_refuse() -> None:
    many = tuple(BlobRef("data", f"{i:064x}", 1, f"{i:064x}") for i in range(MAX_CORE_BYTES // 100))
    with pytest.raises(CorruptEntryError, match="limits"):
        encode_parts(make_manifest(blobs=many))
    with pytest.raises(CorruptEntryError, match="limit"):
        encode_parts(make_manifest(summary={"graph": "x" * MAX_MANIFEST_BYTES}))
