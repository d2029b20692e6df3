"""What the coordinator's key vouches for, as exact signed bytes: DHT access tokens of private swarms, the binding of
a node key to its libp2p identity, and control messages (receipts). Pure: the hivemind side lives in node/access.py
and coordinator/tokens.py.

A DHT access token (hivemind's AccessToken protobuf: username, public_key, expiration_time, signature) is valid when
`signature` is the coordinator's Ed25519 signature of `dht_token_statement(...)`: its username names the swarm's
run_id (or COORDINATOR_SCOPE for the coordinator's own peers, admitted by every private swarm) and the node, beside
the RSA public key the peer signs its DHT requests with and the expiry.
"""

from typing import Literal

from pydantic import Field

from protocol.encoding import canonical_bytes
from protocol.errors import BadSignature, MalformedMessage, StaleMessage
from protocol.messages import ID_PATTERN, Message
from protocol.signing import b64decode, b64encode, verify
from protocol.version import PROTOCOL_VERSION

COORDINATOR_SCOPE = "*"  # a token with this scope is the coordinator's own peer: valid in every private swarm
PEER_KEY_MAX_CHARS = 1024  # base64 of a DER RSA-4096 public key fits


class AccessTokenRequest(Message):
    """A node asks for a DHT access token of a private swarm. Signed by its node key; `time` bounds its life."""

    kind: Literal["access_token_request"] = "access_token_request"
    protocol_version: int = PROTOCOL_VERSION
    swarm_id: str = Field(pattern=ID_PATTERN)
    public_key: str = Field(min_length=43, max_length=43)
    peer_public_key: str = Field(min_length=1, max_length=PEER_KEY_MAX_CHARS)  # the proven PeerID's key, DER, base64
    time: float


class AccessTokenGrant(Message):
    """The coordinator's answer: hivemind AccessToken fields as text (bytes in URL-safe base64)."""

    username: str
    public_key: str = Field(max_length=PEER_KEY_MAX_CHARS)  # the peer's RSA key, OpenSSH form, base64
    expiration_time: str
    signature: str


def token_username(scope: str, name: str) -> str:
    """The token's username carries its scope: `<run_id or *>/<node id or coordinator>`."""
    return f"{scope}/{name}"


def dht_token_statement(username: str, peer_public_key: bytes, expiration_time: str) -> bytes:
    return canonical_bytes({"kind": "dht_access", "username": username, "public_key": b64encode(peer_public_key),
                            "expires": expiration_time})  # fmt: skip


def check_dht_token(coordinator_key: str, accepted_scopes, username: str, peer_public_key: bytes,
                    expiration_time: str, signature: bytes, now: float) -> str:  # fmt: skip
    """The scope of a token the coordinator signed, for one of `accepted_scopes` (a container; COORDINATOR_SCOPE is
    always accepted), unexpired at `now`; raises BadSignature / StaleMessage / MalformedMessage otherwise."""
    scope, _, name = username.partition("/")
    if not name or (scope not in accepted_scopes and scope != COORDINATOR_SCOPE):
        raise BadSignature(f"access token is for another swarm ({scope[:70]!r})")
    try:
        expires = float(expiration_time)
    except ValueError:
        raise MalformedMessage("token expiration time is not a number") from None
    if not expires > now:
        raise StaleMessage(f"access token expired {now - expires:.0f} s ago")
    verify(coordinator_key, b64encode(signature), dht_token_statement(username, peer_public_key, expiration_time))
    return scope


def peer_binding_statement(node_public_key: str, peer_id: str, time: float) -> bytes:
    """What a node's libp2p key signs at registration: it holds the key of `peer_id` and pairs it with this node key.
    The registration around it is signed by the node key, so each key vouches for the other."""
    return canonical_bytes({"kind": "peer_binding", "public_key": node_public_key, "peer_id": peer_id, "time": time})


def decode_token_bytes(text: str, what: str) -> bytes:
    data = b64decode(text)
    if not data:
        raise MalformedMessage(f"empty {what}")
    return data
