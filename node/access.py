"""The node's side of identity binding and private swarms.

- Binding: the libp2p identity (hivemind's p2p.key, made here on first run if hivemind has not yet) signs a statement
  pairing it with the node key; registration carries it, so the coordinator stores the PeerID only when proven. The same
  key also signs this node's DHT records and DHT requests, so they all trace back to the volunteer.
- Access: for an `access: token` swarm, the DHT gets an authorizer that fetches coordinator-signed tokens (signed
  request with the node key) and renews them at half-life; refused renewals (a ban) make the peer fall out at expiry.
"""

import base64
import logging
import time
from pathlib import Path
from typing import Optional

import httpx

from hearth.authorizer import AccessDenied, CoordinatorTokenAuthorizer, der_public_key, load_identity, token_from_grant
from protocol.envelope import seal
from protocol.messages import SwarmManifest
from protocol.signing import SigningKey
from protocol.tokens import AccessTokenGrant, AccessTokenRequest, peer_binding_statement

logger = logging.getLogger(__name__)

TOKEN_REQUEST_TIMEOUT = 10.0


class AccessRefused(RuntimeError):
    """The coordinator gave no token; the message is its reason, for the volunteer."""


def ensure_identity(path: Path) -> None:
    """Create hivemind's libp2p identity now if it does not exist (mode 0400), so it can be proven before the DHT
    starts."""
    if not Path(path).exists():
        from hivemind.p2p.p2p_daemon import P2P

        P2P.generate_identity(str(path))


def use_identity_for_records(path: Path) -> None:
    """Sign this process's DHT records (progress, by hivemind's RSASignatureValidator) with the libp2p identity key,
    the one the coordinator bound to this node, instead of a throwaway key."""
    from hivemind.utils.crypto import RSAPrivateKey

    RSAPrivateKey._process_wide_key = load_identity(path)


def peer_binding(identity_path: Path, node_public_key: str, sent_at: float) -> dict:
    """The registration fields that prove this node holds its PeerID's key: peer_id, peer_public_key,
    peer_signature (use with time=sent_at)."""
    from hearth.authorizer import peer_id_of

    key = load_identity(identity_path)
    der = der_public_key(key)
    peer_id = peer_id_of(der)
    signature = key.sign(peer_binding_statement(node_public_key, peer_id, sent_at)).decode("ascii")
    return {"peer_id": peer_id, "peer_public_key": _b64(der), "peer_signature": signature}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class SwarmAccess:
    """Fetches this node's access tokens for one private swarm."""

    def __init__(self, coordinator_url: str, key: SigningKey, manifest: SwarmManifest, identity_path: Path):
        if manifest.coordinator_key is None:
            raise AccessRefused("the coordinator published no key, so this private swarm's tokens cannot be checked")
        self.url = f"{coordinator_url.rstrip('/')}/api/v1/swarms/{manifest.swarm_id}/access-token"
        self.key, self.manifest, self.identity_path = key, manifest, identity_path
        self.rsa_key = load_identity(identity_path)
        self.der = der_public_key(self.rsa_key)

    def fetch(self) -> AccessTokenGrant:
        """A fresh token, or AccessRefused with the coordinator's reason."""
        request = AccessTokenRequest(swarm_id=self.manifest.swarm_id, public_key=self.key.public_key,
                                     peer_public_key=_b64(self.der), time=time.time())  # fmt: skip
        try:
            response = httpx.post(self.url, content=seal(request, self.key), timeout=TOKEN_REQUEST_TIMEOUT,
                                  headers={"content-type": "application/json"})  # fmt: skip
        except httpx.TransportError as e:
            raise AccessRefused(f"cannot reach the coordinator for an access token ({type(e).__name__})") from None
        if response.status_code != 200:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {response.status_code}"
            raise AccessRefused(f"no access token for swarm {self.manifest.swarm_id!r}: {message}")
        return AccessTokenGrant.model_validate(response.json())

    def authorizer(self, first: Optional[AccessTokenGrant] = None) -> CoordinatorTokenAuthorizer:
        """The DHT's authorizer: accepts peers with tokens for this swarm (or the coordinator's own), renews its own
        token from the coordinator (in the DHT process, in a thread)."""
        import asyncio

        async def fetch():
            return token_from_grant(await asyncio.to_thread(self.fetch))

        authorizer = CoordinatorTokenAuthorizer(self.manifest.coordinator_key, {self.manifest.run_id}, fetch,
                                                self.rsa_key)  # fmt: skip
        if first is not None:  # the DHT starts with it: no request to the coordinator before bootstrapping
            token = token_from_grant(first)
            authorizer._local_access_token = token
            authorizer._lifetime = max(1.0, float(token.expiration_time) - time.time())
        return authorizer


__all__ = ["AccessDenied", "AccessRefused", "SwarmAccess", "ensure_identity", "peer_binding", "use_identity_for_records"]
