"""Ed25519 identities: the only module that touches cryptography primitives.

Keys use `cryptography`; signing and verification use libsodium (PyNaCl), which checks a signature in about
half the CPU time, and the coordinator verifies every report it ingests. Both follow RFC 8032 (deterministic
signatures: either library gives the same bytes). libsodium releases the GIL during each call, but a thread of
them gains little beside a busy event loop: it must take the GIL back after every signature, which waits out
the interpreter's switch interval (5 ms) while the loop runs (measured in the coordinator's ingest).
"""

import base64
import functools
import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.bindings import crypto_sign, crypto_sign_open, crypto_sign_seed_keypair
from nacl.exceptions import BadSignatureError, CryptoError

from protocol.errors import BadSignature, MalformedMessage

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as e:
        raise MalformedMessage(f"invalid base64: {e}") from e


def node_id_for(public_key: str) -> str:
    """A short, stable, topic-safe pseudonym for a public key: 32 hex digits of its SHA-256."""
    return hashlib.sha256(b64decode(public_key)).hexdigest()[:32]


class SigningKey:
    """An Ed25519 private key with its public half in the wire form (URL-safe base64, unpadded)."""

    def __init__(self, private_key: Ed25519PrivateKey):
        self._key = private_key
        raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public_key = b64encode(raw)
        self.node_id = node_id_for(self.public_key)
        seed = private_key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                         serialization.NoEncryption())  # fmt: skip
        self._sodium_key = crypto_sign_seed_keypair(seed)[1]

    @classmethod
    def generate(cls) -> "SigningKey":
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> "SigningKey":
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 private key")
        return cls(key)

    @classmethod
    def load_or_create(cls, path: Path) -> "SigningKey":
        path = Path(path)
        if path.exists():
            return cls.load(path)
        key = cls.generate()
        key.save(path)
        return key

    def save(self, path: Path) -> None:
        """Write the key readable by its owner only (0600), never briefly world-readable."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        os.chmod(path, 0o600)

    def sign(self, data: bytes) -> str:
        return b64encode(crypto_sign(data, self._sodium_key)[:SIGNATURE_BYTES])

    def sign_many(self, messages: list[bytes]) -> list[str]:
        """`sign` for each."""
        return [self.sign(data) for data in messages]


def verify(public_key: str, signature: str, data: bytes) -> None:
    """Raise BadSignature unless `signature` is `public_key`'s signature of exactly `data`."""
    raw_sig = b64decode(signature)
    key = _public_key(public_key)
    if key is None or len(raw_sig) != SIGNATURE_BYTES:
        raise BadSignature("public key or signature has the wrong length")
    try:
        crypto_sign_open(raw_sig + data, key)
    except (BadSignatureError, CryptoError, ValueError) as e:
        raise BadSignature("signature does not match the message") from e


def verify_many(signed: list[tuple[str, str, bytes]]) -> list[BadSignature | MalformedMessage | None]:
    """`verify` for each (public key, signature, data): None where it holds, else the error."""
    errors: list[BadSignature | MalformedMessage | None] = []
    for public_key, signature, data in signed:
        try:
            verify(public_key, signature, data)
            errors.append(None)
        except (BadSignature, MalformedMessage) as e:
            errors.append(e)
    return errors


@functools.lru_cache(maxsize=100_000)  # a receiver sees the same few keys over and over
def _public_key(public_key: str) -> bytes | None:
    raw_key = b64decode(public_key)
    return raw_key if len(raw_key) == PUBLIC_KEY_BYTES else None
