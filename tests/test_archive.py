"""Bundles: export then import gives identical entries; any tampering refuses the whole
bundle and imports nothing.  Real stores on disk, real files, the CLI in real processes."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import random
import struct
import subprocess
import sys
import termios
import tracemalloc
from pathlib import Path

import msgpack
import pytest

from artcache import Cache, CorruptEntryError, NewBlob, UntrustedEntryError, catalog
from artcache.archive import BUNDLE_MAGIC, export_bundle, import_bundle, verify_bundle
from artcache.config import Settings
from artcache.entry import MAX_MANIFEST_BYTES, decode_envelope, decode_manifest, encode_envelope
from artcache.errors import ArtcacheError, IncompatibleEntryError
from artcache.signing import TrustPolicy
from artcache.store import LocalStore, Store, ac_key, cas_key

from .conftest import REPO, run_cli

KEYS = [c * 64 for c in "abc"]
_RECORD = struct.Struct("<c32sQ32s")
_HEADER_SIZE = len(BUNDLE_MAGIC) + 4
_TRAILER_SIZE = 1 + 8 + 32


def populate(root: Path, signing_key: str | None = None) -> LocalStore:
    store = LocalStore(root)
    cache = Cache(store, settings=Settings(store_urls=("memory://",), signing_key=signing_key), strict=True)
    shared = os.urandom(40_000)
    for i, key in enumerate(KEYS):
        cache.save(
            key,
            [NewBlob("code", f"def f{i}(x): return x".encode()), NewBlob("constant", shared, "w"),
             NewBlob("kernel", os.urandom(3000 * (i + 1)), f"k{i}.so")],
            factors={"graph": str(i) * 64}, environment={"torch": "2.13.0"}, summary={"title": f"model {i}"},
        )
    return store


def contents(store: Store) -> dict[str, bytes]:
    out = {}
    for info in store.iterate(""):
        data = store.peek(info.key)
        assert data is not None
        out[info.key] = data
    return out


def records(data: bytes) -> list[tuple[int, int, bytes]]:
    """(start, end, kind) of each record: an independent reader of the documented format."""
    pos, out = _HEADER_SIZE, []
    while data[pos:pos + 1] != b"T":
        kind, _key, length, _sha = _RECORD.unpack_from(data, pos)
        out.append((pos, pos + _RECORD.size + length, kind))
        pos += _RECORD.size + length
    assert len(data) - pos == _TRAILER_SIZE
    return out


def with_trailer(body: bytes, count: int) -> bytes:
    return body + b"T" + struct.pack("<Q", count) + hashlib.sha256(body).digest()


@pytest.fixture
def source(tmp_path: Path) -> LocalStore:
    return populate(tmp_path / "a")


@pytest.fixture
def bundle_file(source: LocalStore, tmp_path: Path) -> Path:
    path = tmp_path / "entries.acb"
    result = export_bundle(source, path)
    assert (result.entries, result.blobs, result.skipped) == (3, 7, ())
    return path


def test_export_import_round_trip_is_identical(source: LocalStore, bundle_file: Path, tmp_path: Path) -> None:
    dest = LocalStore(tmp_path / "b")
    result = import_bundle(dest, bundle_file)
    assert (result.entries, result.blobs_written, result.blobs_present) == (3, 7, 0)
    assert contents(dest) == contents(source)
    assert catalog.verify(dest).ok and catalog.verify(dest).entries_checked == 3
    for key in KEYS:
        entry = Cache(dest, settings=Settings(store_urls=("memory://",)), strict=True).lookup(key)
        assert entry is not None and decode_manifest(dest.get(ac_key(key)) or b"").summary["title"].startswith("model")


def test_layout_is_blobs_first_then_manifests_then_trailer(bundle_file: Path) -> None:
    data = bundle_file.read_bytes()
    assert data.startswith(BUNDLE_MAGIC)
    kinds = [k for _s, _e, k in records(data)]
    assert kinds == [b"B"] * 7 + [b"M"] * 3


def test_import_again_skips_present_blobs(source: LocalStore, bundle_file: Path) -> None:
    result = import_bundle(source, bundle_file)
    assert (result.entries, result.blobs_written, result.blobs_present) == (3, 0, 7)


def test_export_selected_keys_and_skip_broken(source: LocalStore, tmp_path: Path) -> None:
    one = export_bundle(source, tmp_path / "one.acb", [KEYS[1]])
    assert (one.entries, one.blobs) == (1, 3)
    kernel = next(r.digest for r in catalog.read_manifest(source, KEYS[0]).blobs if r.role == "kernel")
    source.delete(cas_key(kernel))
    everything = export_bundle(source, tmp_path / "all.acb")
    assert everything.entries == 2 and [s.key for s in everything.skipped] == [KEYS[0]]
    with pytest.raises(ArtcacheError, match="blobs absent"):
        export_bundle(source, tmp_path / "named.acb", [KEYS[0]])
    assert not (tmp_path / "named.acb").exists()
    dest = LocalStore(tmp_path / "b")
    import_bundle(dest, tmp_path / "all.acb")
    assert sorted(i.key for i in dest.iterate("ac/")) == [ac_key(KEYS[1]), ac_key(KEYS[2])]


def _assert_refused(data: bytes, tmp_path: Path, match: str | None = None) -> None:
    bad = tmp_path / "bad.acb"
    bad.write_bytes(data)
    dest = LocalStore(tmp_path / "dest")
    with pytest.raises(CorruptEntryError, match=match):
        import_bundle(dest, bad)
    assert list(dest.iterate("")) == []  # nothing at all imported, not even blobs


def test_flipped_byte_in_a_blob_is_refused(bundle_file: Path, tmp_path: Path) -> None:
    data = bytearray(bundle_file.read_bytes())
    start, end, kind = records(bytes(data))[3]
    assert kind == b"B"
    data[(start + _RECORD.size + end) // 2] ^= 0x40
    _assert_refused(bytes(data), tmp_path, "does not match its sha256")


def test_flipped_byte_in_the_last_blob_is_refused_before_any_write(bundle_file: Path, tmp_path: Path) -> None:
    # The damage sits after six good blobs: a one-pass importer would have written those.
    data = bytearray(bundle_file.read_bytes())
    start, end, _ = records(bytes(data))[6]
    data[end - 1] ^= 0x01
    _assert_refused(bytes(data), tmp_path)


@pytest.mark.parametrize("cut", ["header", "mid-blob", "mid-manifest", "no-trailer", "half-trailer"])
def test_truncated_bundle_is_refused(bundle_file: Path, tmp_path: Path, cut: str) -> None:
    data = bundle_file.read_bytes()
    recs = records(data)
    at = {
        "header": 10,
        "mid-blob": (recs[2][0] + recs[2][1]) // 2,
        "mid-manifest": (recs[-1][0] + recs[-1][1]) // 2,
        "no-trailer": len(data) - _TRAILER_SIZE,
        "half-trailer": len(data) - 20,
    }[cut]
    _assert_refused(data[:at], tmp_path, "truncated")


def test_reordered_records_are_refused(bundle_file: Path, tmp_path: Path) -> None:
    data = bundle_file.read_bytes()
    (s0, e0, _), (s1, e1, _) = records(data)[:2]
    swapped = data[:s0] + data[s1:e1] + data[s0:e0] + data[e1:]
    _assert_refused(swapped, tmp_path, "trailer does not match")


def test_manifest_moved_before_its_blobs_is_refused_even_with_a_consistent_trailer(
    bundle_file: Path, tmp_path: Path
) -> None:
    data = bundle_file.read_bytes()
    recs = records(data)
    ms, me, kind = recs[-1]
    assert kind == b"M"
    body = data[:_HEADER_SIZE] + data[ms:me] + data[_HEADER_SIZE:ms]
    _assert_refused(with_trailer(body, len(recs)), tmp_path, "does not precede it")


def test_forged_trailers_are_refused(bundle_file: Path, tmp_path: Path) -> None:
    data = bundle_file.read_bytes()
    body, trailer = data[:-_TRAILER_SIZE], data[-_TRAILER_SIZE:]
    count = struct.unpack("<Q", trailer[1:9])[0]
    _assert_refused(body + trailer[:1] + struct.pack("<Q", count - 1) + trailer[9:], tmp_path, "trailer")
    _assert_refused(body + trailer[:-1] + bytes([trailer[-1] ^ 1]), tmp_path, "trailer")
    _assert_refused(data + b"\0", tmp_path, "after the trailer")
    # Drop the last manifest and write a fresh, self-consistent trailer: that is a valid
    # (smaller) bundle, so the trailer alone can't stop it; count and order still hold.
    recs = records(data)
    smaller = with_trailer(data[:recs[-1][0]], len(recs) - 1)
    dest = LocalStore(tmp_path / "smaller")
    (tmp_path / "smaller.acb").write_bytes(smaller)
    assert import_bundle(dest, tmp_path / "smaller.acb").entries == 2


def _replace_last_manifest(data: bytes, payload: bytes) -> bytes:
    recs = records(data)
    s, _e, kind = recs[-1]
    assert kind == b"M"
    _kind, key, _len, _sha = _RECORD.unpack_from(data, s)
    body = data[:s] + _RECORD.pack(kind, key, len(payload), hashlib.sha256(payload).digest()) + payload
    return with_trailer(body, len(recs))


def test_hostile_manifest_records_are_bounded(bundle_file: Path, tmp_path: Path) -> None:
    """Manifests in an archive get the lookup's bounds: the record length is capped before
    it is read, the core is read against its schema, and a format-1 manifest is refused."""
    data = bundle_file.read_bytes()
    bomb_core = b"\x81\xa5blobs\xdd\xff\xff\xff\xff"  # {"blobs": <array of 2**32 items>}
    _assert_refused(_replace_last_manifest(data, encode_envelope(bomb_core, b"\x80")), tmp_path, "malformed|not valid")
    v1 = msgpack.packb([b"ARTCACHE", 1, b"\x80", None, None], use_bin_type=True)
    with pytest.raises(IncompatibleEntryError, match="version 1"):
        (tmp_path / "v1.acb").write_bytes(_replace_last_manifest(data, v1))
        import_bundle(LocalStore(tmp_path / "v1"), tmp_path / "v1.acb")
    recs = records(data)
    s, _e, _kind = recs[-1]
    _kind, key, _len, sha = _RECORD.unpack_from(data, s)
    huge = data[:s] + _RECORD.pack(b"M", key, MAX_MANIFEST_BYTES + 1, sha)  # no payload follows
    tracemalloc.start()
    try:
        _assert_refused(huge, tmp_path, "claims")
        assert tracemalloc.get_traced_memory()[1] < 1 << 20
    finally:
        tracemalloc.stop()


def test_rehashed_blob_substitution_is_refused(bundle_file: Path, tmp_path: Path) -> None:
    """A forger who fixes the record digest and the trailer still can't change a blob:
    its key is its SHA-256, and the manifest (maybe signed) names that key."""
    data = bundle_file.read_bytes()
    s, e, _ = records(data)[0]
    kind, key, length, _sha = _RECORD.unpack_from(data, s)
    fake = os.urandom(length)
    rec = _RECORD.pack(kind, key, length, hashlib.sha256(fake).digest()) + fake
    forged = data[:s] + rec + data[e:-_TRAILER_SIZE]
    _assert_refused(with_trailer(forged, len(records(data))), tmp_path, "does not match its sha256")


def test_not_a_bundle_and_future_version(tmp_path: Path, bundle_file: Path) -> None:
    _assert_refused(b"PK\x03\x04" + b"\0" * 100, tmp_path, "bad magic")
    data = bytearray(bundle_file.read_bytes())
    data[len(BUNDLE_MAGIC)] = 9
    (tmp_path / "v9.acb").write_bytes(bytes(data))
    with pytest.raises(IncompatibleEntryError):
        import_bundle(LocalStore(tmp_path / "v9"), tmp_path / "v9.acb")


def test_signed_manifests_stay_signed_and_trust_is_enforced_on_import(tmp_path: Path) -> None:
    keys = {}
    for name in ("alice", "mallory"):
        proc = run_cli("keygen", "--out", str(tmp_path / name), "--format", "json")
        assert proc.returncode == 0, proc.stderr
        keys[name] = json.loads(proc.stdout)
    source = populate(tmp_path / "a", signing_key=keys["alice"]["private_path"])
    export_bundle(source, tmp_path / "signed.acb")
    alice = TrustPolicy.from_setting((keys["alice"]["public_key"],))
    dest = LocalStore(tmp_path / "b")
    import_bundle(dest, tmp_path / "signed.acb", trust=alice)
    assert contents(dest) == contents(source)
    trusting = Cache(dest, settings=Settings(store_urls=("memory://",), trusted_keys=(keys["alice"]["public_key"],)))
    assert all(trusting.lookup(k) is not None for k in KEYS)
    # A bundle trusted by nobody here is refused whole, before any body is parsed.
    mallory = TrustPolicy.from_setting((keys["mallory"]["public_key"],))
    other = LocalStore(tmp_path / "c")
    with pytest.raises(UntrustedEntryError):
        import_bundle(other, tmp_path / "signed.acb", trust=mallory)
    assert list(other.iterate("")) == []
    # A rewritten manifest with a recomputed record digest and trailer passes every
    # integrity check, but not the signature.
    data = (tmp_path / "signed.acb").read_bytes()
    recs = records(data)
    s, e, _ = recs[-1]
    kind, key, _len, _sha = _RECORD.unpack_from(data, s)
    env = decode_envelope(data[s + _RECORD.size:e])
    summary = msgpack.unpackb(env.summary, raw=False)
    summary["title"] = "evil"
    payload = encode_envelope(bytes(env.core), msgpack.packb(summary, use_bin_type=True), env.signature, env.signer)
    forged = data[:s] + _RECORD.pack(kind, key, len(payload), hashlib.sha256(payload).digest()) + payload
    (tmp_path / "forged.acb").write_bytes(with_trailer(forged, len(recs)))
    verify_bundle(tmp_path / "forged.acb")  # self-consistent...
    with pytest.raises(UntrustedEntryError):  # ...but not signed by alice
        import_bundle(LocalStore(tmp_path / "d"), tmp_path / "forged.acb", trust=alice)


def test_verify_streams_large_blobs(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "big", durable=False)
    cache = Cache(store, settings=Settings(store_urls=("memory://",)), strict=True)
    blob_size = 6 << 20
    for i, key in enumerate(KEYS):
        # incompressible, so that the blobs are stored (and bundled) at their full size
        cache.save(key, [NewBlob("constant", random.Random(i).randbytes(blob_size))], factors={}, environment={})
    export_bundle(store, tmp_path / "big.acb")
    assert (tmp_path / "big.acb").stat().st_size > 3 * blob_size
    tracemalloc.start()
    try:
        verify_bundle(tmp_path / "big.acb")
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 << 20, f"verify held {peak} bytes at once"  # chunks, not blobs or the file


# -- the CLI --------------------------------------------------------------------------------
def test_cli_export_import_json(source: LocalStore, tmp_path: Path) -> None:
    src, dst = f"file://{source.root}", f"file://{tmp_path / 'b'}"
    bundle = tmp_path / "ci.acb"
    proc = run_cli("--store", src, "export", str(bundle), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["entries"], doc["blobs"], doc["bytes"]) == (3, 7, bundle.stat().st_size)
    assert proc.stderr == ""  # not a terminal: no progress bar
    proc = run_cli("import", str(bundle), "--format", "json", env={"ARTCACHE_STORE": dst})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["entries"] == 3
    assert run_cli("--store", dst, "verify").returncode == 0
    assert contents(LocalStore(tmp_path / "b")) == contents(source)
    table = run_cli("--store", src, "export", str(tmp_path / "two.acb"), "--keys", "aaaa", "bbbb")
    assert table.returncode == 0 and "exported 2 entries, 5 blobs" in table.stdout


def test_cli_refuses_a_tampered_bundle(bundle_file: Path, tmp_path: Path) -> None:
    data = bytearray(bundle_file.read_bytes())
    data[_HEADER_SIZE + _RECORD.size + 3] ^= 0xFF
    bundle_file.write_bytes(bytes(data))
    dst = tmp_path / "b"
    proc = run_cli("--store", f"file://{dst}", "import", str(bundle_file))
    assert proc.returncode == 2 and "bundle refused" in proc.stderr
    assert list(LocalStore(dst).iterate("")) == []


def test_cli_import_under_trust(tmp_path: Path) -> None:
    key = json.loads(run_cli("keygen", "--out", str(tmp_path / "k"), "--format", "json").stdout)
    populate(tmp_path / "a")  # unsigned
    run_cli("--store", f"file://{tmp_path / 'a'}", "export", str(tmp_path / "x.acb"))
    proc = run_cli("--store", f"file://{tmp_path / 'b'}", "import", str(tmp_path / "x.acb"),
                   env={"ARTCACHE_TRUSTED_KEYS": key["public_path"]})
    assert proc.returncode == 2 and "not signed" in proc.stderr


def _run_on_tty(args: list[str]) -> str:
    """Run the CLI with stderr on a pseudo-terminal; return what it wrote there."""
    master, slave = pty.openpty()
    # A fresh pty is 0 columns wide and tqdm would draw an empty bar: give it 80x24.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ARTCACHE_")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.Popen([sys.executable, "-m", "artcache.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=120) == 0
    return b"".join(chunks).decode(errors="replace")


def test_progress_bar_on_a_terminal_only_and_not_with_no_progress(source: LocalStore, tmp_path: Path) -> None:
    pytest.importorskip("tqdm")
    src = f"file://{source.root}"
    shown = _run_on_tty(["--store", src, "export", str(tmp_path / "p.acb")])
    assert "export:" in shown and "B/s" in shown
    hidden = _run_on_tty(["--store", src, "export", str(tmp_path / "q.acb"), "--no-progress"])
    assert hidden == ""


# -- the real compile path, each phase a fresh process --------------------------------------
_UNTRUSTED_PROBE = """
import json, torch
from tests import _tripwire
_tripwire.install()
import artcache
from tests.corpus.programs import PROGRAMS
from tests.corpus.runner import run_program
cache = artcache.Cache(strict=False)
backend = cache.backend()
try:
    run_program(PROGRAMS["mlp_train"], lambda fn: torch.compile(fn, backend=backend))
    outcome = "ran"
except RuntimeError as exc:  # the tripwire (a RuntimeError), wrapped by Dynamo in another
    outcome = "tripwire" if "tripwire" in str(exc) else repr(exc)
s = cache.stats()
print(json.dumps({"outcome": outcome, "hits": s.hits, "misses": s.misses}))
"""


def _corpus_phase(phase: str, out: Path, env: dict[str, str]) -> dict[str, object]:
    import torch

    full = {k: v for k, v in os.environ.items() if not k.startswith("ARTCACHE_")}
    full.update(env, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "tests.corpus.runner", "--phase", phase, "--out", str(out), "--programs", "mlp_train"],
        cwd=REPO, env=full, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, f"{phase} failed:\n{proc.stderr[-6000:]}"
    return torch.load(out, weights_only=True)  # type: ignore[no-any-return]  # our own result file


def _move_through_bundle(tmp_path: Path, env_a: dict[str, str], env_b: dict[str, str]) -> tuple[str, dict[str, object]]:
    """Cold compile into A, export, import into an empty B; return B's URL and cold results."""
    store_a, store_b = f"file://{tmp_path / 'A'}", f"file://{tmp_path / 'B'}"
    cold = _corpus_phase("cold", tmp_path / "cold.pt", env_a | {
        "ARTCACHE_STORE": store_a, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "ind-a")})
    assert json.loads(str(cold["stats"]))["saves"] >= 1
    bundle = tmp_path / "ci-artifact.acb"
    proc = run_cli("--store", store_a, "export", str(bundle), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("--store", store_b, "import", str(bundle), "--format", "json", env=env_b)
    assert proc.returncode == 0, proc.stderr
    assert run_cli("--store", store_b, "verify").returncode == 0
    return store_b, cold


def _assert_warm_hits(tmp_path: Path, store_b: str, env_b: dict[str, str], cold: dict[str, object]) -> None:
    warm = _corpus_phase("warm", tmp_path / "warm.pt", env_b | {
        "ARTCACHE_STORE": store_b, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "ind-b")})
    import torch

    cold_stats, warm_stats = json.loads(str(cold["stats"])), json.loads(str(warm["stats"]))
    assert warm_stats["hits"] == cold_stats["saves"] and warm_stats["misses"] == {} and warm_stats["saves"] == 0
    c, w = cold["results"]["mlp_train"], warm["results"]["mlp_train"]  # type: ignore[index]
    for kind in ("outputs", "grads"):
        assert len(c[kind]) == len(w[kind]) > 0
        assert all(torch.equal(a, b) for a, b in zip(c[kind], w[kind])), kind


@pytest.mark.slow
def test_bundle_warm_start_unsigned(tmp_path: Path) -> None:
    store_b, cold = _move_through_bundle(tmp_path, {}, {})
    _assert_warm_hits(tmp_path, store_b, {}, cold)


@pytest.mark.slow
def test_bundle_warm_start_signed_and_trusted(tmp_path: Path) -> None:
    keys = {}
    for name in ("alice", "mallory"):
        proc = run_cli("keygen", "--out", str(tmp_path / name), "--format", "json")
        assert proc.returncode == 0, proc.stderr
        keys[name] = json.loads(proc.stdout)
    trust_alice = {"ARTCACHE_TRUSTED_KEYS": keys["alice"]["public_path"]}
    store_b, cold = _move_through_bundle(
        tmp_path, {"ARTCACHE_SIGNING_KEY": keys["alice"]["private_path"]}, trust_alice)
    _assert_warm_hits(tmp_path, store_b, trust_alice, cold)
    # B trusting another key: the entry is refused (a miss, "untrusted") and the process
    # falls through to a real compile, which the tripwires stop.
    proc = subprocess.run(
        [sys.executable, "-c", _UNTRUSTED_PROBE], cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("ARTCACHE_")}, "PYTHONPATH": str(REPO),
             "ARTCACHE_STORE": store_b, "ARTCACHE_TRUSTED_KEYS": keys["mallory"]["public_key"],
             "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "ind-m")},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"outcome": "tripwire", "hits": 0, "misses": {"untrusted": 1}}, proc.stderr[-3000:]
    assert "not trusted" in proc.stderr
