"""Signed manifests and the trust check: real keys (from ``artcache keygen`` in a real
process), real stores on disk, and lookups that must refuse before parsing anything."""

from __future__ import annotations

import base64
import json
import logging
import secrets
import stat
from pathlib import Path
from typing import Any

import msgpack
import pytest

from artcache import Cache, NewBlob, UntrustedEntryError
from artcache.config import Settings, settings_from_env
from artcache.entry import FORMAT_VERSION, decode_envelope, encode_envelope, signed_message
from artcache.errors import ArtcacheError
from artcache.signing import Signer, TrustPolicy, key_id, parse_key
from artcache.store import LocalStore, TieredStore, ac_key
from artcache.store.redis import RedisStore

from .conftest import run_cli, run_python
from .redis_server import RedisServer, redis_server  # noqa: F401 (fixture)
from artcache.testing import payload_for

KEY = "5a" * 32


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """Two key pairs made by the real ``artcache keygen`` command."""
    out: dict[str, dict[str, str]] = {}
    root = tmp_path_factory.mktemp("keys")
    for name in ("alice", "mallory"):
        proc = run_cli("keygen", "--out", str(root / name), "--format", "json")
        assert proc.returncode == 0, proc.stderr
        out[name] = json.loads(proc.stdout)
    return out


def settings(signing_key: str | None = None, trusted: tuple[str, ...] = ()) -> Settings:
    return Settings(store_urls=("memory://",), signing_key=signing_key, trusted_keys=trusted)


def save(store: LocalStore, signing_key: str | None, key: str = KEY) -> None:
    cache = Cache(store, settings=settings(signing_key), strict=True)
    manifest = cache.save(
        # incompressible, so that the constant is stored as its 5000 bytes
        key, [NewBlob("code", b"print('hi')"), NewBlob("constant", payload_for("w", 5000), "w")],
        factors={"graph": "g" * 64}, environment={"torch": "test"}, summary={"title": "signed"},
    )
    assert manifest is not None


def reader(store: LocalStore, trusted: tuple[str, ...], *, strict: bool = False) -> Cache:
    return Cache(store, settings=settings(trusted=trusted), strict=strict)


def envelope_fields(store: LocalStore, key: str = KEY) -> dict[str, Any]:
    raw = store.get(ac_key(key))
    assert raw is not None
    env = decode_envelope(raw)
    return {"core": bytes(env.core), "summary": bytes(env.summary), "signature": env.signature, "signer": env.signer}


def rewrite(store: LocalStore, fields: dict[str, Any], key: str = KEY) -> None:
    store.put(ac_key(key), encode_envelope(fields["core"], fields["summary"], fields["signature"], fields["signer"]))


# -- keygen ---------------------------------------------------------------------------
def test_keygen_writes_a_private_file_0600_and_a_matching_public_key(keys: dict[str, dict[str, str]]) -> None:
    alice = keys["alice"]
    private = Path(alice["private_path"])
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert Path(alice["public_path"]).read_text().strip() == alice["public_key"]
    assert len(alice["public_key"]) == 44 and len(alice["key_id"]) == 16
    # The key file, its text and the path all name the same key; its public half matches.
    by_path = Signer.from_setting(str(private))
    by_text = Signer.from_setting(private.read_text().strip())
    assert by_path.public_key == by_text.public_key == base64.b64decode(alice["public_key"])
    assert by_path.key_id == alice["key_id"] == key_id(by_path.public_key)
    sig = by_path.sign(b"payload")
    TrustPolicy.from_setting((alice["public_path"],))  # a path works as a trusted key too
    assert len(sig) == 64


def test_keygen_refuses_to_overwrite(keys: dict[str, dict[str, str]]) -> None:
    prefix = keys["alice"]["private_path"].removesuffix(".key")
    before = Path(prefix + ".key").read_bytes()
    proc = run_cli("keygen", "--out", prefix)
    assert proc.returncode == 2 and "exists" in proc.stderr
    assert Path(prefix + ".key").read_bytes() == before


def test_keygen_does_not_touch_a_store(tmp_path: Path) -> None:
    store = tmp_path / "never"
    proc = run_cli("keygen", "--out", str(tmp_path / "k"), env={"ARTCACHE_STORE": f"file://{store}"})
    assert proc.returncode == 0, proc.stderr
    assert not store.exists() and proc.stdout.strip().splitlines()[-1] == (tmp_path / "k.pub").read_text().strip()


def test_bad_key_settings_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ArtcacheError, match="neither a base64"):
        parse_key(str(tmp_path / "nope"), "public key")
    (tmp_path / "junk.pub").write_text("not a key\n")
    with pytest.raises(ArtcacheError, match="ARTCACHE_TRUSTED_KEYS.*does not hold"):
        Cache(LocalStore(tmp_path / "s"), settings=settings(trusted=(str(tmp_path / "junk.pub"),)), strict=True)
    # Not strict: one warning and the cache is off (a trust setting that cannot be
    # honoured must not serve entries the user meant to refuse).
    off = Cache(LocalStore(tmp_path / "s"), settings=settings(trusted=(str(tmp_path / "junk.pub"),)))
    assert off.settings.disabled and off.lookup(KEY) is None


def test_env_settings_reach_the_cache(keys: dict[str, dict[str, str]]) -> None:
    s = settings_from_env({
        "ARTCACHE_SIGNING_KEY": keys["alice"]["private_path"],
        "ARTCACHE_TRUSTED_KEYS": f"{keys['alice']['public_key']}, {keys['mallory']['public_path']}",
    })
    assert s.signing_key == keys["alice"]["private_path"] and len(s.trusted_keys) == 2
    assert TrustPolicy.from_setting(s.trusted_keys).key_ids == tuple(
        sorted([keys["alice"]["key_id"], keys["mallory"]["key_id"]])
    )


def test_missing_pynacl_is_a_clear_error_and_unconfigured_needs_none(keys: dict[str, dict[str, str]], store_url: str) -> None:
    block = "import sys; sys.modules['nacl'] = None; sys.modules['nacl.signing'] = None\nimport artcache\n"
    plain = run_python(block + f"artcache.Cache({store_url!r}).lookup('00' * 32); print('ok')")
    assert plain.returncode == 0 and plain.stdout.strip() == "ok", plain.stderr
    signed = run_python(block + f"artcache.Cache({store_url!r})",
                        env={"ARTCACHE_TRUSTED_KEYS": keys["alice"]["public_key"], "ARTCACHE_STRICT": "1"})
    assert signed.returncode != 0 and "PyNaCl is not installed" in signed.stderr and "artcache[sign]" in signed.stderr
    lenient = run_python(block + f"print(artcache.Cache({store_url!r}).settings.disabled)",
                         env={"ARTCACHE_TRUSTED_KEYS": keys["alice"]["public_key"]})
    assert lenient.returncode == 0 and lenient.stdout.strip() == "True", lenient.stderr
    assert "PyNaCl is not installed" in lenient.stderr and "ARTCACHE_TRUSTED_KEYS" in lenient.stderr


# -- writers sign, readers check ------------------------------------------------------
def test_signed_entry_is_accepted_under_trust(keys: dict[str, dict[str, str]], store_dir: Path) -> None:
    store = LocalStore(store_dir)
    save(store, keys["alice"]["private_path"])
    fields = envelope_fields(store)
    assert fields["signer"] == keys["alice"]["key_id"] and len(fields["signature"]) == 64
    cache = reader(store, (keys["mallory"]["public_key"], keys["alice"]["public_key"]), strict=True)
    entry = cache.lookup(KEY)
    assert entry is not None and entry.blob("code") == b"print('hi')"
    assert cache.stats().hits == 1 and cache.stats().misses == {}


def test_signed_entry_reads_fine_without_trust(keys: dict[str, dict[str, str]], store_dir: Path) -> None:
    store = LocalStore(store_dir)
    save(store, keys["alice"]["private_path"])
    assert reader(store, (), strict=True).lookup(KEY) is not None


def _refused(store: LocalStore, trusted: str, caplog: pytest.LogCaptureFixture) -> None:
    cache = reader(store, (trusted,))
    with caplog.at_level(logging.WARNING, logger="artcache"):
        assert cache.lookup(KEY) is None
    stats = cache.stats()
    assert stats.misses == {"untrusted": 1} and stats.hits == 0
    assert stats.errors == {"lookup:UntrustedEntryError": 1}
    assert "UntrustedEntryError" not in caplog.text and "continuing without the cache" in caplog.text
    with pytest.raises(UntrustedEntryError):
        reader(store, (trusted,), strict=True).lookup(KEY)


def test_unsigned_entry_is_refused(keys: dict[str, dict[str, str]], store_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = LocalStore(store_dir)
    save(store, None)
    _refused(store, keys["alice"]["public_key"], caplog)


def test_entry_signed_by_an_untrusted_key_is_refused(
    keys: dict[str, dict[str, str]], store_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = LocalStore(store_dir)
    save(store, keys["mallory"]["private_path"])
    _refused(store, keys["alice"]["public_key"], caplog)


def test_untrusted_signature_claiming_a_trusted_key_id_is_refused(
    keys: dict[str, dict[str, str]], store_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = LocalStore(store_dir)
    save(store, keys["mallory"]["private_path"])
    fields = envelope_fields(store)
    fields["signer"] = keys["alice"]["key_id"]  # the signer slot is a hint, not a credential
    rewrite(store, fields)
    _refused(store, keys["alice"]["public_key"], caplog)


def test_body_modified_after_signing_is_refused(
    keys: dict[str, dict[str, str]], store_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = LocalStore(store_dir)
    save(store, keys["alice"]["private_path"])
    fields = envelope_fields(store)
    summary = msgpack.unpackb(fields["summary"], raw=False)
    summary["title"] = "tampered"  # still a perfectly valid manifest
    fields["summary"] = msgpack.packb(summary, use_bin_type=True)
    rewrite(store, fields)
    assert reader(store, ()).lookup(KEY) is not None  # without trust it would load
    _refused(store, keys["alice"]["public_key"], caplog)


def test_flipped_signature_bit_is_refused(
    keys: dict[str, dict[str, str]], store_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = LocalStore(store_dir)
    save(store, keys["alice"]["private_path"])
    fields = envelope_fields(store)
    sig = bytearray(fields["signature"])
    sig[10] ^= 0x01
    fields["signature"] = bytes(sig)
    rewrite(store, fields)
    _refused(store, keys["alice"]["public_key"], caplog)


def test_trust_is_checked_before_the_body_is_parsed(
    keys: dict[str, dict[str, str]], store_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A core that would fail to decode reads as "untrusted", not "corrupt": the signature
    check ran first and nothing in the manifest was looked at."""
    store = LocalStore(store_dir)
    garbage = b"\xc1 this is not msgpack"
    store.put(ac_key(KEY), encode_envelope(garbage, b"", b"\0" * 64, keys["alice"]["key_id"]))
    plain = reader(store, ())
    assert plain.lookup(KEY) is None
    assert plain.stats().misses == {"corrupt": 1}  # without trust the core is parsed, and fails
    _refused(store, keys["alice"]["public_key"], caplog)


def test_a_validly_signed_garbage_body_only_fails_after_the_check(keys: dict[str, dict[str, str]], store_dir: Path) -> None:
    """The converse: a trusted signature lets the core through to parsing (and a corrupt
    one is then "corrupt"), so the check is not just refusing everything odd."""
    store = LocalStore(store_dir)
    signer = Signer.from_setting(keys["alice"]["private_path"])
    core = b"\xc1 this is not msgpack"
    sig = signer.sign(signed_message(FORMAT_VERSION, core, b""))
    store.put(ac_key(KEY), encode_envelope(core, b"", sig, signer.key_id))
    cache = reader(store, (keys["alice"]["public_key"],))
    assert cache.lookup(KEY) is None and cache.stats().misses == {"corrupt": 1}


def test_blob_swapped_under_a_signed_manifest_is_refused(keys: dict[str, dict[str, str]], store_dir: Path) -> None:
    """The signature covers blob digests; under trust the blob bytes are held to them even
    though the local tier's own check is a non-cryptographic checksum."""
    store = LocalStore(store_dir)
    save(store, keys["alice"]["private_path"])
    victim = next(i.key for i in store.iterate("cas/") if i.size == 5000)
    (store_dir / "cas" / victim[4:6] / victim[4:]).unlink()
    store.put(victim, b"X" * 5000)  # re-framed: passes the local checksum
    cache = reader(store, (keys["alice"]["public_key"],))
    assert cache.lookup(KEY) is None and cache.stats().misses == {"corrupt": 1}


def test_blob_rewritten_consistently_in_redis_is_refused_under_trust(
    keys: dict[str, dict[str, str]], redis_server: RedisServer  # noqa: F811
) -> None:
    """Redis checks each value against an XXH3 checksum it keeps beside it: a writer who
    rewrites a blob *and* its checksum passes that check.  Under trust the SHA-256 address
    (covered by the signature) is what catches it; without trust such a writer could as
    well have written a whole new entry, which is why unsigned reads take the checksum."""
    store = RedisStore.from_url(f"{redis_server.url}?prefix=sig{secrets.token_hex(4)}")
    save(store, keys["alice"]["private_path"])  # type: ignore[arg-type]
    victim = next(i.key for i in store.iterate("cas/") if i.size == 5000)
    store.put(victim, b"X" * 5000)  # new value and a matching checksum under the old address
    assert store.get(victim) == b"X" * 5000  # the checksum alone cannot tell
    cache = reader(store, (keys["alice"]["public_key"],))  # type: ignore[arg-type]
    assert cache.lookup(KEY) is None and cache.stats().misses == {"corrupt": 1}


def test_signing_and_trust_in_fresh_processes(keys: dict[str, dict[str, str]], store_url: str) -> None:
    code = (
        "import artcache, json\n"
        "c = artcache.Cache()\n"
        "key = '77' * 32\n"
        "if c.lookup(key) is None: c.save(key, [artcache.NewBlob('code', b'x')], factors={}, environment={})\n"
        "s = c.stats(); print(json.dumps({'hits': s.hits, 'misses': s.misses}))\n"
    )
    env = {"ARTCACHE_STORE": store_url}
    writer = run_python(code, env=env | {"ARTCACHE_SIGNING_KEY": keys["alice"]["private_path"]})
    assert writer.returncode == 0, writer.stderr
    ok = run_python(code, env=env | {"ARTCACHE_TRUSTED_KEYS": keys["alice"]["public_path"]})
    assert json.loads(ok.stdout) == {"hits": 1, "misses": {}}, ok.stderr
    bad = run_python(code, env=env | {"ARTCACHE_TRUSTED_KEYS": keys["mallory"]["public_key"]})
    assert json.loads(bad.stdout.splitlines()[-1]) == {"hits": 0, "misses": {"untrusted": 1}}
    assert "not trusted" in bad.stderr
    # The process with other trust settings compiled and saved: it must not have replaced
    # the signed entry, so a reader trusting its writer still hits it.
    again = run_python(code, env=env | {"ARTCACHE_TRUSTED_KEYS": keys["alice"]["public_path"]})
    assert json.loads(again.stdout) == {"hits": 1, "misses": {}}, again.stderr


def test_a_reader_without_a_trusted_signing_key_never_shadows_a_signed_entry(
    keys: dict[str, dict[str, str]], tmp_path: Path
) -> None:
    """Tiers as on a CI machine: an empty local tier over a shared one holding an entry
    signed by alice.  A process trusting other keys misses, compiles and saves: nothing of
    it may land in either tier, or the local copy would shadow the signed one."""
    shared = LocalStore(tmp_path / "shared")
    save(shared, keys["alice"]["private_path"])
    signed = shared.get(ac_key(KEY))

    def tiers() -> TieredStore:
        return TieredStore([LocalStore(tmp_path / "local"), shared])

    for trusted, signing_key in (((keys["mallory"]["public_key"],), None),
                                 ((keys["mallory"]["public_key"],), keys["alice"]["private_path"])):
        other = Cache(tiers(), settings=settings(signing_key, trusted))
        assert other.lookup(KEY) is None and other.stats().misses == {"untrusted": 1}
        assert other.save(KEY, [NewBlob("code", b"unsigned")], factors={}, environment={}) is None
        # (The lookup backfilled the signed bytes into the local tier: the same entry.)
        assert LocalStore(tmp_path / "local").get(ac_key(KEY)) in (None, signed) and shared.get(ac_key(KEY)) == signed
    alice = Cache(tiers(), settings=settings(trusted=(keys["alice"]["public_key"],)), strict=True)
    assert alice.lookup(KEY) is not None
    # A process that signs with a key it trusts saves as before.
    both = Cache(tiers(), settings=settings(keys["alice"]["private_path"], (keys["alice"]["public_key"],)), strict=True)
    assert both.save("6b" * 32, [NewBlob("code", b"x")], factors={}, environment={}) is not None
