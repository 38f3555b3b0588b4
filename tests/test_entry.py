from __future__ import annotations

import msgpack
import pytest

from artcache.entry import (
    FORMAT_VERSION,
    MAGIC,
    BlobRef,
    Manifest,
    decode_envelope,
    decode_manifest,
    encode_body,
    encode_envelope,
    encode_manifest,
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
    )
    fields.update(over)
    return Manifest(**fields)  # type: ignore[arg-type]


def test_round_trip() -> None:
    m = make_manifest()
    assert decode_manifest(encode_manifest(m)) == m


def test_encoding_is_deterministic() -> None:
    a = make_manifest(factors={"b": "2", "a": "1"})
    b = make_manifest(factors={"a": "1", "b": "2"})
    assert encode_manifest(a) == encode_manifest(b)


def test_unknown_version_is_incompatible() -> None:
    body = encode_body(make_manifest())
    raw = msgpack.packb([MAGIC, FORMAT_VERSION + 1, body, None, None], use_bin_type=True)
    with pytest.raises(IncompatibleEntryError):
        decode_manifest(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x93\x01\x02",
        msgpack.packb([b"NOTMAGIC", FORMAT_VERSION, b"", None, None]),
        msgpack.packb({"key": "x"}),
        encode_manifest(make_manifest())[:-7],
        msgpack.packb([MAGIC, "1", b"", None, None], use_bin_type=True),
    ],
    ids=["empty", "short", "magic", "shape", "truncated", "version-type"],
)
def test_malformed_envelopes_are_corrupt(raw: bytes) -> None:
    with pytest.raises(CorruptEntryError):
        decode_manifest(raw)


@pytest.mark.parametrize(
    "change",
    [
        {"key": "../../etc/passwd"},
        {"blobs": [["code", "zz", 1, ""]]},
        {"blobs": [["code", DIGEST, -1, ""]]},
        {"blobs": [["code", DIGEST, 2**62, ""]]},
        {"blobs": "nope"},
        {"factors": {"a": 1}},
        {"created": "yesterday"},
    ],
)
def test_malformed_bodies_are_corrupt(change: dict[str, object]) -> None:
    doc = msgpack.unpackb(encode_body(make_manifest()), raw=False)
    doc.update(change)
    raw = encode_envelope(msgpack.packb(doc, use_bin_type=True))
    with pytest.raises(CorruptEntryError):
        decode_manifest(raw)


def test_missing_field_is_corrupt() -> None:
    doc = msgpack.unpackb(encode_body(make_manifest()), raw=False)
    del doc["blobs"]
    with pytest.raises(CorruptEntryError, match="missing"):
        decode_manifest(encode_envelope(msgpack.packb(doc, use_bin_type=True)))


def test_envelope_carries_signature_slot() -> None:
    body = encode_body(make_manifest())
    env = decode_envelope(encode_envelope(body, b"sig" * 20, "key-1"))
    assert env.signature == b"sig" * 20 and env.signer == "key-1" and env.body == body
    assert env.signed_bytes.startswith(MAGIC) and env.signed_bytes.endswith(body)


def test_summary_must_be_plain_data() -> None:
    with pytest.raises(CorruptEntryError):
        encode_body(make_manifest(summary={"x": object()}))
