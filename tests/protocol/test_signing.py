import stat

import pytest

from protocol.errors import BadSignature
from protocol.signing import SigningKey, b64encode, node_id_for, verify, verify_many


def test_key_is_saved_owner_only_and_loads_back(tmp_path):
    path = tmp_path / "sub" / "node.key"
    key = SigningKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = SigningKey.load_or_create(path)
    assert again.public_key == key.public_key
    assert again.node_id == node_id_for(key.public_key)


def test_signature_verifies_only_for_the_exact_bytes_and_key():
    key, other = SigningKey.generate(), SigningKey.generate()
    signature = key.sign(b"hello")
    verify(key.public_key, signature, b"hello")
    with pytest.raises(BadSignature):
        verify(key.public_key, signature, b"hellO")
    with pytest.raises(BadSignature):
        verify(other.public_key, signature, b"hello")
    with pytest.raises(BadSignature):
        verify(key.public_key, signature[:-4], b"hello")


def test_libsodium_signs_the_same_bytes_as_cryptography_and_batches_agree():
    key, other = SigningKey.generate(), SigningKey.generate()
    messages = [b"", b"hello", bytes(range(256)) * 4]
    assert key.sign_many(messages) == [b64encode(key._key.sign(m)) for m in messages]  # RFC 8032: deterministic
    signatures = key.sign_many(messages)
    signed = [(key.public_key, s, m) for s, m in zip(signatures, messages)]
    signed += [(other.public_key, signatures[1], b"hello"), (key.public_key, "!!", b"hello")]
    errors = verify_many(signed)
    assert errors[:3] == [None, None, None]
    assert isinstance(errors[3], BadSignature) and errors[4] is not None
