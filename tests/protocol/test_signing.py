import stat

import pytest

from protocol.errors import BadSignature
from protocol.signing import SigningKey, node_id_for, verify


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
