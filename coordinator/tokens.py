"""The coordinator's key and what it vouches for: identity bindings (a node key ↔ its libp2p PeerID), DHT access
tokens for private swarms (`access: token`), and the coordinator's own token for its private DHT peer.

A token goes only to a node that is registered, not detached, whose volunteer is not banned (volunteers.banned_at is
the one source of truth), for a swarm that exists and is private, and for the RSA key of the PeerID the node proved at
registration. Tokens expire after `lifetime` seconds; nodes renew them at half-life, so a ban takes effect within one
lifetime.
"""

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from sqlalchemy import select, update

from coordinator import db
from hearth.authorizer import openssh_public_key, peer_id_of, verify_rsa
from protocol.errors import BadSignature, MalformedMessage
from protocol.messages import MAX_CLOCK_SKEW
from protocol.signing import SigningKey, b64decode, b64encode, node_id_for
from protocol.tokens import (COORDINATOR_SCOPE, AccessTokenGrant, AccessTokenRequest, dht_token_statement,
                             peer_binding_statement, token_username)

logger = logging.getLogger(__name__)

DEFAULT_TOKEN_LIFETIME = 600.0  # seconds; a banned volunteer's nodes fall out within this


class TokenRefused(Exception):
    """No token for this request: HTTP status, error code and a one-line message for the volunteer."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def load_or_create_key(data_dir: Path) -> SigningKey:
    """The coordinator's Ed25519 key (mode 0600) in its data dir; its public half is in every manifest."""
    return SigningKey.load_or_create(Path(data_dir) / "coordinator.key")


def proven_peer_id(public_key: str, peer_id: Optional[str], peer_public_key: Optional[str],
                   peer_signature: Optional[str], sent_at: float) -> Optional[str]:  # fmt: skip
    """The peer_id of a registration or attach if its proof holds (or None when it names none); BadSignature /
    MalformedMessage when it names one without a valid proof: a forged binding."""
    if peer_id is None:
        return None
    if not peer_public_key or not peer_signature:
        raise MalformedMessage("peer_id needs peer_public_key and peer_signature (proof of the libp2p key)")
    der = b64decode(peer_public_key)
    try:
        derived = peer_id_of(der)
    except ValueError as e:
        raise MalformedMessage(f"peer_public_key is not an RSA public key: {e}") from None
    if derived != peer_id:
        raise BadSignature("peer_id is not the hash of peer_public_key")
    if not verify_rsa(der, peer_signature, peer_binding_statement(public_key, peer_id, sent_at)):
        raise BadSignature("peer_signature does not match the binding of this node key to peer_id")
    return peer_id


@dataclass
class TokenIssuer:
    key: SigningKey
    lifetime: float = DEFAULT_TOKEN_LIFETIME

    def issue(self, scope: str, name: str, peer_der: bytes, now: Optional[float] = None) -> AccessTokenGrant:
        username = token_username(scope, name)
        public = openssh_public_key(peer_der)
        expires = f"{(now or time.time()) + self.lifetime:.3f}"
        signature = self.key.sign(dht_token_statement(username, public, expires))
        return AccessTokenGrant(username=username, public_key=b64encode(public), expiration_time=expires,
                                signature=signature)  # fmt: skip

    def own_token(self, peer_der: bytes) -> AccessTokenGrant:
        """The coordinator's own peers' token, valid in every private swarm."""
        return self.issue(COORDINATOR_SCOPE, "coordinator", peer_der)

    async def for_node(self, engine, request: AccessTokenRequest) -> AccessTokenGrant:
        """A verified request's token; TokenRefused says why not."""
        node_id = node_id_for(request.public_key)
        n, v, s = db.nodes, db.volunteers, db.swarms
        async with engine.connect() as conn:
            swarm = (await conn.execute(select(s.c.run_id, s.c.access).where(s.c.swarm_id == request.swarm_id))).first()
            node = (await conn.execute(
                select(n.c.peer_id, n.c.detached_at, v.c.banned_at, v.c.deleted_at, v.c.name)
                .join(v, v.c.id == n.c.volunteer_id).where(n.c.node_id == node_id)
            )).first()  # fmt: skip
        if swarm is None:
            raise TokenRefused(404, "unknown_swarm", f"no swarm {request.swarm_id!r}")
        if swarm.access != "token":
            raise TokenRefused(409, "open_swarm", f"swarm {request.swarm_id!r} is open: it needs no access token")
        if node is None:
            raise TokenRefused(403, "unknown_node", "this node is not registered here; run `hearth join` to register")
        if node.detached_at is not None or node.deleted_at is not None:
            raise TokenRefused(403, "node_detached", "this node's key was revoked (detached or account deleted)")
        if node.banned_at is not None:
            logger.info("Refused an access token to node %s: volunteer %s is banned", node_id, node.name)
            raise TokenRefused(403, "banned", "this volunteer is banned from this coordinator's private swarms")
        der = b64decode(request.peer_public_key)
        try:
            peer_id = peer_id_of(der)
        except ValueError:
            raise TokenRefused(400, "malformed", "peer_public_key is not an RSA public key") from None
        if node.peer_id is None or peer_id != node.peer_id:
            raise TokenRefused(403, "unproven_peer", "this node has not proven that it holds this libp2p identity; "
                                                     "register again (hearth join does) to bind it")  # fmt: skip
        return self.issue(swarm.run_id, node_id, der)


async def bind_peer(engine, node_id: str, peer_id: str, sent_at: float) -> None:
    """Record a proven peer_id for an already registered node (a new libp2p identity, or a node registered before
    bindings were proven). Only a fresh proof rebinds: an old captured registration cannot bring back an old peer."""
    if abs(sent_at - time.time()) > MAX_CLOCK_SKEW:
        return
    async with engine.begin() as conn:
        await conn.execute(update(db.nodes).where(db.nodes.c.node_id == node_id, db.nodes.c.detached_at.is_(None))
                           .values(peer_id=peer_id))  # fmt: skip


async def set_banned(engine, name: str, banned: bool) -> Optional[dict]:
    """Ban (or unban) the volunteer called `name`: {name, banned_at}, or None if there is none."""
    v = db.volunteers
    async with engine.begin() as conn:
        row = (await conn.execute(select(v.c.id, v.c.banned_at).where(v.c.name == name))).first()
        if row is None:
            return None
        when = (row.banned_at or datetime.now(timezone.utc)) if banned else None
        await conn.execute(update(v).where(v.c.id == row.id).values(banned_at=when))
    logger.warning("Volunteer %s %s", name, "banned" if banned else "unbanned")
    return {"name": name, "banned_at": when.isoformat() if when else None}


async def private_run_ids(engine) -> list[str]:
    async with engine.connect() as conn:
        return list((await conn.execute(select(db.swarms.c.run_id).where(db.swarms.c.access == "token"))).scalars())


def private_peer_authorizer(issuer: TokenIssuer):
    """The authorizer of the coordinator's private DHT peer: a fresh RSA key, its own tokens signed on the spot, and
    any token this coordinator signed accepted (each node checks the swarm scope itself)."""
    from hivemind.utils.crypto import RSAPrivateKey

    from hearth.authorizer import CoordinatorTokenAuthorizer, der_public_key, token_from_grant

    rsa_key = RSAPrivateKey()
    der = der_public_key(rsa_key)

    async def own_token():
        return token_from_grant(issuer.own_token(der))

    return CoordinatorTokenAuthorizer(issuer.key.public_key, None, own_token, rsa_key)
