"""Accounts: a volunteer (the `volunteers` row) owns one or more nodes (`nodes.volunteer_id`), each with its own key.

Like BOINC, an account has two secrets, shown once when made and stored here only as SHA-256:
- the account key `acct-<id>-<secret>`: needed for every account-level action (team create/join/leave, rename,
  detach a node, rotate the attach key);
- the attach key `attach-<id>-<secret>`: can only attach a new node and read the account.
A node key signs reports; stolen alone it cannot spend the account. Detaching a node revokes its key for good:
its credit stays with the account, its later reports are refused.

Ledgers from before accounts have volunteers without keys: their node claims them once, with a fresh signed
registration (`claim_keys`), the first time `hearth join` runs after the upgrade.
"""

import hashlib
import hmac
import logging
import secrets
from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from coordinator import db
from coordinator.queries import iso, rac_now
from protocol.messages import NodeAttach
from protocol.signing import node_id_for

logger = logging.getLogger(__name__)

ACCOUNT, ATTACH = "acct", "attach"
_ABSENT = hashlib.sha256(b"no such key").hexdigest()  # compared against when the account is unknown


class AccountRefused(Exception):
    """An account request that cannot be honoured: HTTP status, error code and a one-line message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def new_key(kind: str, volunteer_id: int) -> str:
    return f"{kind}-{volunteer_id}-{secrets.token_urlsafe(32)}"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_key(key: str) -> tuple[str, int]:
    """(kind, volunteer id) of a key's public prefix; AccountRefused(401) when it is not a Hearth key."""
    kind, _, rest = key.partition("-")
    volunteer_id, _, secret = rest.partition("-")
    if kind not in (ACCOUNT, ATTACH) or not volunteer_id.isdigit() or len(volunteer_id) > 18 or not secret:
        raise AccountRefused(401, "malformed_key", "that is not a Hearth account or attach key "
                                                   "(it starts with acct- or attach-)")  # fmt: skip
    return kind, int(volunteer_id)


def fresh_keys(volunteer_id: int) -> tuple[dict[str, str], dict[str, str]]:
    """New keys for an account: (shown once to the volunteer, the hash columns to store)."""
    keys = {"account_key": new_key(ACCOUNT, volunteer_id), "attach_key": new_key(ATTACH, volunteer_id)}
    return keys, {"account_key_hash": key_hash(keys["account_key"]), "attach_key_hash": key_hash(keys["attach_key"])}


async def issue_keys(conn, volunteer_id: int) -> dict[str, str]:
    """Give a just-created account its keys; returns them (the only time they are seen)."""
    keys, hashes = fresh_keys(volunteer_id)
    await conn.execute(update(db.volunteers).where(db.volunteers.c.id == volunteer_id).values(**hashes))
    return keys


async def claim_keys(conn, volunteer_id: int) -> Optional[dict[str, str]]:
    """Keys for an account from before accounts, once: None if it has them already (a concurrent claim loses)."""
    keys, hashes = fresh_keys(volunteer_id)
    v = db.volunteers
    claimed = await conn.execute(
        update(v).where(v.c.id == volunteer_id, v.c.account_key_hash.is_(None)).values(**hashes)
    )
    if claimed.rowcount != 1:
        return None
    logger.info("Volunteer %s claimed the keys of an account from before accounts", volunteer_id)
    return keys


async def authenticate(conn, key: Optional[str], need: str = ACCOUNT, doing: str = "this") -> Any:
    """The account row (id, name, team, kind) the key opens; AccountRefused unless it is right and strong enough.
    `need` ACCOUNT: only the account key; ATTACH: the attach key or the account key."""
    if not key:
        raise AccountRefused(401, "missing_key", f"{doing} needs your account key (Authorization: Bearer acct-…)"
                             if need == ACCOUNT else f"{doing} needs your attach key or account key")  # fmt: skip
    kind, volunteer_id = parse_key(key)
    v = db.volunteers
    row = (await conn.execute(
        select(v.c.id, v.c.name, v.c.team, v.c.account_key_hash, v.c.attach_key_hash).where(v.c.id == volunteer_id)
    )).first()  # fmt: skip
    stored = None if row is None else (row.account_key_hash if kind == ACCOUNT else row.attach_key_hash)
    if not hmac.compare_digest(stored or _ABSENT, key_hash(key)) or stored is None:
        what = "account key" if kind == ACCOUNT else "attach key"
        rotated = " (it may have been rotated: `hearth account show` on a PC with the account key shows the new one)"
        raise AccountRefused(401, "wrong_key", f"wrong {what}: it opens no account here"
                             + (rotated if kind == ATTACH else ""))  # fmt: skip
    if need == ACCOUNT and kind != ACCOUNT:
        raise AccountRefused(403, "account_key_needed",
                             f"the attach key can only attach nodes; {doing} needs the account key")  # fmt: skip
    return row, kind


async def attach(ledger, message: NodeAttach, key: Optional[str], now: Optional[datetime] = None) -> tuple[dict, bool]:
    """Attach a verified NodeAttach's node to the account `key` opens: (record, created). Idempotent per node."""
    now = now or datetime.now(timezone.utc)
    node_id = node_id_for(message.public_key)
    n = db.nodes
    async with ledger.engine.begin() as conn:
        account, _ = await authenticate(conn, key, ATTACH, "attaching a node")
        existing = (await conn.execute(select(n.c.volunteer_id, n.c.detached_at).where(n.c.node_id == node_id))).first()
        record = {"name": account.name, "team": account.team, "node_id": node_id}
        if existing is not None:
            refuse_if_detached(existing)
            if existing.volunteer_id != account.id:
                raise AccountRefused(409, "node_in_other_account", "this node already belongs to another account; a "
                                     "node belongs to one account (detach it there, then use a fresh data dir here)")
            return record, False
        try:
            await conn.execute(insert(n).values(
                node_id=node_id, public_key=message.public_key, volunteer_id=account.id, peer_id=message.peer_id,
                device="", online=False, last_seq=0, created_at=now,
            ))  # fmt: skip
        except IntegrityError as e:  # the same node attached concurrently
            raise AccountRefused(409, "node_registered", "this node was registered at the same time; retry") from e
    logger.info("Attached node %s to volunteer %s", node_id, account.name)
    return record, True


def refuse_if_detached(node) -> None:
    if node.detached_at is not None:
        raise AccountRefused(403, "node_detached", "this node was detached from its account and its key is revoked; "
                                                   "start it with a fresh data dir to make a new node key")  # fmt: skip


async def detach(ledger, key: Optional[str], node_id: str, now: Optional[datetime] = None) -> dict:
    """Detach one of the account's nodes: its key may no longer report; its credit stays with the account."""
    n = db.nodes
    async with ledger.engine.begin() as conn:
        account, _ = await authenticate(conn, key, ACCOUNT, "detaching a node")
        done = await conn.execute(
            update(n).where(n.c.node_id == node_id, n.c.volunteer_id == account.id, n.c.detached_at.is_(None))
            .values(detached_at=now or datetime.now(timezone.utc), online=False)
        )  # fmt: skip
        if done.rowcount != 1:
            raise AccountRefused(404, "unknown_node", f"no attached node {node_id!r} in account {account.name!r}")
    ledger.nodes.pop(node_id, None)  # ingest refuses its reports from now on (refresh_node skips detached nodes)
    logger.info("Volunteer %s detached node %s", account.name, node_id)
    return {"name": account.name, "node_id": node_id, "detached": True}


async def rotate_attach_key(engine, key: Optional[str]) -> dict:
    """A new attach key for the account; the old one stops working. Shown once."""
    async with engine.begin() as conn:
        account, _ = await authenticate(conn, key, ACCOUNT, "rotating the attach key")
        attach_key = new_key(ATTACH, account.id)
        await conn.execute(update(db.volunteers).where(db.volunteers.c.id == account.id)
                           .values(attach_key_hash=key_hash(attach_key)))  # fmt: skip
    logger.info("Volunteer %s rotated the attach key", account.name)
    return {"name": account.name, "attach_key": attach_key}


async def rename(engine, key: Optional[str], name: str) -> dict:
    """Change the account's display name (already validated); 409 if another account has it."""
    v = db.volunteers
    async with engine.begin() as conn:
        account, _ = await authenticate(conn, key, ACCOUNT, "renaming the account")
        taken = (await conn.execute(select(v.c.id).where(v.c.name == name, v.c.id != account.id))).first()
        if taken is not None:
            raise AccountRefused(409, "name_taken", f"the name {name!r} is already taken")
        try:
            await conn.execute(update(v).where(v.c.id == account.id).values(name=name))
        except IntegrityError as e:
            raise AccountRefused(409, "name_taken", f"the name {name!r} is already taken") from e
    logger.info("Volunteer %s renamed to %s", account.name, name)
    return {"name": name, "previous_name": account.name}


async def require_account_key(conn, key: Optional[str], volunteer_id: int, doing: str) -> None:
    """For node-signed actions (teams): the account key of the signing node's own account."""
    account, _ = await authenticate(conn, key, ACCOUNT, doing)
    if account.id != volunteer_id:
        raise AccountRefused(403, "other_account", "that account key belongs to another account than this node's")


async def account_detail(engine, key: Optional[str]) -> dict:
    """The account `key` opens (either key): name, team, founder, totals and every node with its own totals.
    The volunteer's totals equal the sum over its nodes (both are upserted with each grant)."""
    v, vt, n, nt, t = db.volunteers, db.volunteer_totals, db.nodes, db.node_totals, db.teams
    async with engine.connect() as conn:
        account, kind = await authenticate(conn, key, ATTACH, "reading the account")
        row = (await conn.execute(
            select(v.c.created_at, vt.c.credit, vt.c.samples, vt.c.reports, vt.c.rac, vt.c.rac_updated_at,
                   vt.c.pending_credit, t.c.founder_id)
            .outerjoin(vt, vt.c.volunteer_id == v.c.id).outerjoin(t, t.c.name == v.c.team).where(v.c.id == account.id)
        )).one()  # fmt: skip
        nodes = await conn.execute(
            select(n.c.node_id, n.c.device, n.c.online, n.c.last_seen, n.c.created_at, n.c.detached_at,
                   nt.c.credit, nt.c.samples, nt.c.reports)
            .outerjoin(nt, nt.c.node_id == n.c.node_id).where(n.c.volunteer_id == account.id).order_by(n.c.created_at)
        )  # fmt: skip
        nodes = [
            {"node_id": r.node_id, "device": r.device, "online": bool(r.online) and r.detached_at is None,
             "last_seen": iso(r.last_seen), "created_at": iso(r.created_at), "detached_at": iso(r.detached_at),
             "credit": r.credit or 0.0, "samples": r.samples or 0, "reports": r.reports or 0}
            for r in nodes
        ]  # fmt: skip
    return {
        "name": account.name, "team": account.team, "founder": row.founder_id == account.id,
        "created_at": iso(row.created_at), "credit": row.credit or 0.0, "samples": row.samples or 0,
        "reports": row.reports or 0, "pending_credit": row.pending_credit or 0.0,
        "recent_average_credit": rac_now(row.rac or 0.0, row.rac_updated_at), "key": kind, "nodes": nodes,
    }  # fmt: skip


async def node_state(conn, node_id: str) -> Optional[Any]:
    """(volunteer_id, detached_at, account_key_hash) of a registered node, or None; for registration."""
    v, n = db.volunteers, db.nodes
    return (await conn.execute(
        select(n.c.volunteer_id, n.c.detached_at, v.c.account_key_hash)
        .join(v, v.c.id == n.c.volunteer_id).where(n.c.node_id == node_id)
    )).first()  # fmt: skip
