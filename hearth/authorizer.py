"""The hivemind side of private swarms, shared by the node and the coordinator's own DHT peer: a
`TokenAuthorizerBase` whose tokens are signed by the coordinator's Ed25519 key (protocol/tokens.py), and the libp2p
identity key (the PeerID's RSA key) that signs DHT requests, so a token names the very peer that proved its binding.

hivemind checks the tokens on every DHT request and response; a peer without a valid one cannot bootstrap, store or
read. The authorizer lives in the DHT process (forked), so its `fetch` runs there, in a thread.
"""

import base64
import hashlib
import logging
import time
from typing import Awaitable, Callable, Container, Optional

import multihash
from cryptography.hazmat.primitives import serialization
from hivemind.p2p.p2p_daemon_bindings.datastructures import PeerID
from hivemind.proto import crypto_pb2
from hivemind.proto.auth_pb2 import AccessToken
from hivemind.utils.auth import TokenAuthorizerBase
from hivemind.utils.crypto import RSAPrivateKey, RSAPublicKey

from protocol.errors import ProtocolError
from protocol.tokens import AccessTokenGrant, check_dht_token, decode_token_bytes

logger = logging.getLogger(__name__)

REFRESH_FRACTION = 0.5  # a token is renewed once half its life has passed
RETRY_SECONDS = 5.0  # after a failed renewal, the next try waits this long (requests in between use the old token)


class AccessDenied(RuntimeError):
    """This peer holds no valid access token (never had one, or could not renew it: e.g. its volunteer was banned)."""


def load_identity(path) -> RSAPrivateKey:
    """hivemind's libp2p identity file (a protobuf PrivateKey holding a DER RSA key) as hivemind's RSAPrivateKey."""
    try:
        proto = crypto_pb2.PrivateKey.FromString(open(path, "rb").read())
        if proto.key_type != crypto_pb2.KeyType.RSA:
            raise ValueError("not an RSA key")
        key = RSAPrivateKey.__new__(RSAPrivateKey)
        key.__setstate__({"_private_key": proto.data})
    except Exception as e:  # protobuf's DecodeError, cryptography's ValueError: one message for the volunteer
        if isinstance(e, OSError):
            raise
        raise ValueError(f"{path} does not hold an RSA libp2p key ({e})") from None
    return key


def der_public_key(key: RSAPrivateKey) -> bytes:
    return key._private_key.public_key().public_bytes(serialization.Encoding.DER,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo)  # fmt: skip


def peer_id_of(der: bytes) -> str:
    """The libp2p PeerID of an RSA public key (DER SubjectPublicKeyInfo): multihash sha2-256 of its protobuf."""
    encoded = crypto_pb2.PublicKey(key_type=crypto_pb2.RSA, data=der).SerializeToString()
    return PeerID(multihash.encode(hashlib.sha256(encoded).digest(), multihash.coerce_code("sha2-256"))).to_base58()


def openssh_public_key(der: bytes) -> bytes:
    """The form hivemind puts in AccessToken.public_key (RSAPublicKey.to_bytes)."""
    return serialization.load_der_public_key(der).public_bytes(serialization.Encoding.OpenSSH,
                                                               serialization.PublicFormat.OpenSSH)  # fmt: skip


def verify_rsa(der: bytes, signature_b64: str, data: bytes) -> bool:
    """hivemind's RSA-PSS check (its signatures are base64 text)."""
    try:
        public = serialization.load_der_public_key(der)
    except ValueError:
        return False
    return RSAPublicKey(public).verify(data, signature_b64.encode("ascii"))


def token_from_grant(grant: AccessTokenGrant) -> AccessToken:
    return AccessToken(username=grant.username, public_key=decode_token_bytes(grant.public_key, "public key"),
                       expiration_time=grant.expiration_time,
                       signature=decode_token_bytes(grant.signature, "signature"))  # fmt: skip


def grant_to_json(token: AccessToken) -> dict:
    def text(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")

    return {"username": token.username, "public_key": text(token.public_key),
            "expiration_time": token.expiration_time, "signature": text(token.signature)}  # fmt: skip


class CoordinatorTokenAuthorizer(TokenAuthorizerBase):
    """Accepts peers whose token the coordinator (`coordinator_key`) signed for one of `scopes` (None: any scope,
    for the coordinator's own peer); gets its own token from `fetch` (an async callable → AccessToken)."""

    def __init__(self, coordinator_key: str, scopes: Optional[Container[str]], fetch: Callable[[], Awaitable[AccessToken]],
                 local_private_key: RSAPrivateKey, clock: Callable[[], float] = time.time):  # fmt: skip
        super().__init__(local_private_key)
        self.coordinator_key, self.scopes, self.fetch, self.clock = coordinator_key, scopes, fetch, clock
        self._retry_at = 0.0
        self.refused = 0  # peers' tokens refused (counted in the DHT process)

    async def get_token(self) -> AccessToken:
        return await self.fetch()

    def is_token_valid(self, access_token: AccessToken) -> bool:
        scopes = self.scopes if self.scopes is not None else _Everything()
        try:
            check_dht_token(self.coordinator_key, scopes, access_token.username, access_token.public_key,
                            access_token.expiration_time, access_token.signature, self.clock())  # fmt: skip
            return True
        except ProtocolError as e:
            self.refused += 1
            logger.debug("Refused a DHT access token (%s): %s", access_token.username[:80], e)
            return False

    def does_token_need_refreshing(self, access_token: AccessToken) -> bool:
        try:
            expires = float(access_token.expiration_time)
        except ValueError:
            return True
        issued_for = getattr(self, "_lifetime", None) or 60.0
        return self.clock() >= expires - issued_for * (1 - REFRESH_FRACTION)

    async def refresh_token_if_needed(self) -> None:
        """hivemind's version asserts on a refused renewal; here a refusal keeps the old token until it expires (the
        next try after RETRY_SECONDS), then every request fails with AccessDenied: the peer falls out."""
        token = self._local_access_token
        if token is None or self.does_token_need_refreshing(token):
            async with self._refresh_lock:
                token = self._local_access_token
                if (token is None or self.does_token_need_refreshing(token)) and self.clock() >= self._retry_at:
                    try:
                        fresh = await self.get_token()
                        self._lifetime = max(1.0, float(fresh.expiration_time) - self.clock())
                        self._local_access_token = fresh
                    except Exception as e:  # refused (banned, detached) or unreachable: keep what we have for now
                        self._retry_at = self.clock() + RETRY_SECONDS
                        logger.warning("Could not renew the swarm access token: %s", e)
        token = self._local_access_token
        if token is None or not self.is_token_valid(token):
            raise AccessDenied("this peer has no valid access token for the private swarm")


class _Everything:
    def __contains__(self, item) -> bool:
        return True
