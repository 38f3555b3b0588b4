"""Ed25519 signing of manifests, and the trust check readers run before parsing them.

Keys are raw Ed25519 keys written as standard base64 (44 characters): the 32-byte seed
for a private key, the 32-byte point for a public key.  The text form is the file form,
so a key file's contents can be pasted into a CI secret (``ARTCACHE_SIGNING_KEY``) as is.

A key id is the first 16 hex digits of the SHA-256 of the public key.  It goes into the
envelope's ``signer`` slot only as a *hint* for which trusted key to try: the signature
itself is what is checked, so a forged id gains nothing.  What is signed is
:func:`artcache.entry.signed_message`, a digest of the envelope's raw fields: the check
runs on the stored bytes as they are, before any of them is parsed.

PyNaCl (the ``sign`` extra) is imported only when signing or trust is configured, so an
installation without it works as long as neither is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .entry import FORMAT_VERSION, SIGNATURE_BYTES, SIGNER_ID_CHARS, Envelope, encode_envelope, signed_message
from .errors import ArtcacheError, ConfigError, UntrustedEntryError

log = logging.getLogger(__name__)

KEY_BYTES = 32
KEY_ID_HEX = SIGNER_ID_CHARS


def _nacl_signing() -> ModuleType:
    """``nacl.signing``, or a clear error saying how to get it."""
    try:
        import nacl.signing
    except ImportError as exc:
        raise ArtcacheError(
            "manifest signing is configured (ARTCACHE_SIGNING_KEY or ARTCACHE_TRUSTED_KEYS) "
            "but PyNaCl is not installed: pip install 'artcache[sign]'"
        ) from exc
    return nacl.signing


def key_id(public_key: bytes) -> str:
    return hashlib.sha256(public_key).hexdigest()[:KEY_ID_HEX]


def encode_key(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _decode_b64_key(text: str) -> bytes | None:
    """The 32 key bytes if ``text`` is a base64 key, else ``None``."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == KEY_BYTES else None


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ArtcacheError(f"cannot read {what} file {path}: {exc}") from exc
    raw = _decode_b64_key(text)
    if raw is None:
        raise ArtcacheError(f"{what} file {path} does not hold a base64 Ed25519 key")
    return raw


def parse_key(value: str, what: str) -> bytes:
    """A key given as base64 text or as a path to a key file.

    A value that decodes to exactly 32 bytes is taken as a key; anything else as a path
    (no 44-character base64 string is a plausible file name, and the reverse holds too).
    """
    raw = _decode_b64_key(value)
    if raw is not None:
        return raw
    path = Path(value).expanduser()
    if not path.is_file():
        # A private key's value may be the (mistyped) secret itself: it is never shown.
        shown = "the value" if what == "private key" else repr(value)
        raise ArtcacheError(f"{what}: {shown} is neither a base64 Ed25519 key nor an existing key file")
    if what == "private key" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        # Like ssh, point out a key others can read; refusing would break read-only CI mounts.
        log.warning("artcache: private key file %s is readable by other users (chmod 600 it)", path)
    return _read_key_file(path, what)


# -- writers ----------------------------------------------------------------------------
class Signer:
    """Signs manifest envelopes with one private key."""

    def __init__(self, seed: bytes) -> None:
        self._key: Any = _nacl_signing().SigningKey(seed)
        self.public_key: bytes = bytes(self._key.verify_key)
        self.key_id = key_id(self.public_key)

    @classmethod
    def from_setting(cls, value: str) -> Signer:
        return cls(parse_key(value, "private key"))

    def sign(self, payload: bytes) -> bytes:
        return bytes(self._key.sign(payload).signature)


def sign_envelope(core: bytes, summary: bytes, signer: Signer | None) -> bytes:
    """Envelope bytes for a manifest's core and summary, signed when ``signer`` is given."""
    if signer is None:
        return encode_envelope(core, summary)
    signature = signer.sign(signed_message(FORMAT_VERSION, core, summary))
    return encode_envelope(core, summary, signature, signer.key_id)


# -- readers ----------------------------------------------------------------------------
class TrustPolicy:
    """The public keys whose signatures a reader accepts."""

    def __init__(self, public_keys: list[bytes]) -> None:
        if not public_keys:
            raise ArtcacheError("a trust policy needs at least one public key")
        signing = _nacl_signing()
        self._keys: dict[str, Any] = {key_id(k): signing.VerifyKey(k) for k in public_keys}
        self._bad_signature: type[Exception] = _bad_signature_error()

    @classmethod
    def from_setting(cls, values: tuple[str, ...] | list[str]) -> TrustPolicy:
        return cls([parse_key(v, "public key") for v in values])

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self._keys))

    def trusts(self, key_id: str) -> bool:
        return key_id in self._keys

    def check(self, envelope: Envelope) -> None:
        """Raise ``UntrustedEntryError`` unless ``envelope`` carries a valid signature by a
        trusted key.  Looks only at the envelope: core and summary stay unparsed bytes."""
        if envelope.signature is None or envelope.signer is None:
            raise UntrustedEntryError("entry is not signed and trusted keys are configured")
        verify_key = self._keys.get(envelope.signer)
        if verify_key is None:
            raise UntrustedEntryError(f"entry is signed by key {envelope.signer!r}, which is not trusted")
        if len(envelope.signature) != SIGNATURE_BYTES:
            raise UntrustedEntryError(f"entry signature is {len(envelope.signature)} bytes, not {SIGNATURE_BYTES}")
        try:
            verify_key.verify(envelope.signed_message, envelope.signature)
        except self._bad_signature as exc:
            raise UntrustedEntryError(f"entry signature by key {envelope.signer} does not verify") from exc


def _bad_signature_error() -> type[Exception]:
    import nacl.exceptions  # present whenever nacl.signing imported

    return nacl.exceptions.BadSignatureError  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Keys:
    """What the settings ask for: a signer for writes, a trust policy for reads."""

    signer: Signer | None
    trust: TrustPolicy | None


def load_keys(signing_key: str | None, trusted_keys: tuple[str, ...]) -> Keys:
    """Build both from :class:`artcache.config.Settings` values.  Nothing configured means
    nothing imported; a configured but unusable key raises ``ArtcacheError`` (failing
    loudly beats silently writing unsigned or reading untrusted entries): a ``ConfigError``
    naming the variable (``EntryStore`` turns it into a warning and a disabled cache)."""
    try:
        signer = Signer.from_setting(signing_key) if signing_key else None
    except ArtcacheError as exc:
        raise ConfigError(f"ARTCACHE_SIGNING_KEY: {exc} (set it to a key file made by `artcache keygen`, "
                          "or its contents)") from exc
    try:
        trust = TrustPolicy.from_setting(trusted_keys) if trusted_keys else None
    except ArtcacheError as exc:
        raise ConfigError(f"ARTCACHE_TRUSTED_KEYS: {exc} (set it to comma-separated public keys or .pub files)") from exc
    return Keys(signer=signer, trust=trust)


# -- key generation ---------------------------------------------------------------------
@dataclass(frozen=True)
class KeyPair:
    private_path: str
    public_path: str
    public_key: str  # base64
    key_id: str


def generate(prefix: str | os.PathLike[str], *, force: bool = False) -> KeyPair:
    """Write ``PREFIX.key`` (private, mode 0600) and ``PREFIX.pub``; refuse to overwrite
    unless ``force``."""
    signing = _nacl_signing()
    key = signing.SigningKey.generate()
    seed, public = bytes(key), bytes(key.verify_key)
    base = Path(prefix).expanduser()
    private_path = base.with_name(base.name + ".key")
    public_path = base.with_name(base.name + ".pub")
    if not force:
        for path in (private_path, public_path):
            if path.exists():
                raise ArtcacheError(f"{path} exists; pass --force to overwrite it")
    _write_private(private_path, (encode_key(seed) + "\n").encode("ascii"))
    try:
        public_path.write_text(encode_key(public) + "\n", encoding="ascii")
    except OSError as exc:
        raise ArtcacheError(f"cannot write {public_path}: {exc}") from exc
    return KeyPair(str(private_path), str(public_path), encode_key(public), key_id(public))


def _write_private(path: Path, data: bytes) -> None:
    # Created with 0600 from the start (never briefly world-readable), and chmod'ed in case
    # it already existed (--force) with wider permissions.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, data)
        finally:
            os.close(fd)
    except OSError as exc:
        raise ArtcacheError(f"cannot write {path}: {exc}") from exc
