"""Who may do what on the MQTT broker. Every client logs in: a node as its node id, the coordinator as COORDINATOR_USER.
A password is the HMAC of the user name under the coordinator's broker secret (`broker-secret` in its data dir), so the
embedded broker checks it without a table and the coordinator hands each node its own at registration.

Rules (protocol/topics.py has the layout): a node publishes only its own `…/nodes/<its id>/reports` and `…/status`,
and subscribes to / receives only its own `…/nodes/<its id>/#` (receipts, audits); the coordinator may do anything.
Control topics (receipts, audits) are therefore the coordinator's alone.

- amqtt (the embedded broker): `HearthBrokerAuth`, one plugin for logins and topics (EmbeddedBroker(auth=…)).
- Mosquitto: `mosquitto_files()` writes a password file ($7$ PBKDF2-SHA512, as mosquitto_passwd does) and an ACL file
  with `%u` patterns; `hearth coordinator broker-files` writes them for every registered node.
"""

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from sqlalchemy import select

from coordinator import db
from coordinator.config import read_or_create_private_file
from protocol.topics import PREFIX

COORDINATOR_USER = "hearth-coordinator"
SECRET_FILE = "broker-secret"
NODE_PUBLISH = (f"{PREFIX}/swarms/+/nodes/%u/reports", f"{PREFIX}/swarms/+/nodes/%u/status")
NODE_READ = (f"{PREFIX}/swarms/+/nodes/%u/#",)


def load_or_create_secret(data_dir: Path) -> str:
    """The broker secret (hex), created once, readable by its owner only."""
    return read_or_create_private_file(Path(data_dir) / SECRET_FILE, lambda: secrets.token_hex(32))


def password_for(secret: str, username: str) -> str:
    digest = hmac.new(bytes.fromhex(secret), f"hearth-mqtt-v1:{username}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def covers(allowed: str, requested: str) -> bool:
    """Does the pattern `allowed` (with + and # wildcards) cover every topic the filter `requested` can name? A
    wildcard in `requested` is covered only by a wildcard at that level: `+/x` does not cover `a/x` requests of `+`."""
    allowed_levels, requested_levels = allowed.split("/"), requested.split("/")
    for i, level in enumerate(allowed_levels):
        if level == "#":
            return True
        if i >= len(requested_levels):
            return False
        asked = requested_levels[i]
        if asked == "#" or (level != "+" and asked != level) or (level == "+" and asked == ""):
            return False
    return len(requested_levels) == len(allowed_levels)


def node_may(username: str, topic: str, publish: bool) -> bool:
    patterns = NODE_PUBLISH if publish else NODE_READ
    return any(covers(pattern.replace("%u", username), topic) for pattern in patterns)


def _is_node_id(username: str) -> bool:
    return len(username) == 32 and all(c in "0123456789abcdef" for c in username)


class HearthBrokerAuth(BaseAuthPlugin, BaseTopicPlugin):
    """amqtt plugin: logins by HMAC password, topics by the rules above. Refusals are counted in `refused`. Nodes in
    `revoked` (banned volunteers': `revoke_banned`) can no longer log in, and a session they hold may do nothing."""

    refused: dict[str, int] = {}
    revoked: set[str] = set()

    async def authenticate(self, *, session) -> Optional[bool]:
        username, password = session.username or "", session.password or ""
        if isinstance(password, bytes):
            password = password.decode("utf-8", "replace")
        ok = (username == COORDINATOR_USER or _is_node_id(username)) and hmac.compare_digest(
            password.encode(), password_for(self.config.secret, username).encode()) and username not in self.revoked  # fmt: skip
        if not ok:
            self._count("login")
            self.context.logger.warning("MQTT login refused for user %r", username[:64])
        return ok

    async def topic_filtering(self, *, session=None, topic: Optional[str] = None, action=None) -> bool:
        username = (session.username if session else None) or ""
        if username == COORDINATOR_USER:
            return True
        allowed = (bool(topic) and _is_node_id(username) and username not in self.revoked
                   and node_may(username, topic, action == Action.PUBLISH))  # fmt: skip
        if not allowed and action != Action.RECEIVE:  # RECEIVE is asked for every other client's message: not a refusal
            self._count(action.value if action else "unknown")
            self.context.logger.info("MQTT %s refused for %r on %r", action, username[:64], (topic or "")[:200])
        return allowed

    def _count(self, what: str) -> None:
        HearthBrokerAuth.refused[what] = HearthBrokerAuth.refused.get(what, 0) + 1

    @dataclass
    class Config:
        secret: str = field(default="")


async def revoke_banned(engine) -> set[str]:
    """Revoke the embedded broker's logins of banned volunteers' nodes, and give back those of the unbanned: their
    reports were refused anyway, now they are not even carried. The node ids revoked."""
    n, v = db.nodes, db.volunteers
    async with engine.connect() as conn:
        rows = await conn.execute(select(n.c.node_id).join(v, v.c.id == n.c.volunteer_id)
                                  .where(v.c.banned_at.is_not(None)))  # fmt: skip
        node_ids = set(rows.scalars())
    HearthBrokerAuth.revoked = node_ids
    return node_ids


def amqtt_plugins(secret: str) -> dict:
    """The `plugins` section of an amqtt broker config that enforces these rules."""
    return {f"{HearthBrokerAuth.__module__}.{HearthBrokerAuth.__name__}": {"secret": secret}}


def mosquitto_password_line(username: str, password: str, salt: Optional[bytes] = None, iterations: int = 101) -> str:
    """One password-file line as `mosquitto_passwd` writes it ($7$: PBKDF2-SHA512)."""
    salt = salt or secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"{username}:$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def mosquitto_acl() -> str:
    lines = ["# Hearth (coordinator/broker_acl.py): nodes publish only under their own topics; control topics",
             "# (receipts, audits) are the coordinator's alone.", f"user {COORDINATOR_USER}", "topic readwrite #", "",
             *[f"pattern write {p}" for p in NODE_PUBLISH], *[f"pattern read {p}" for p in NODE_READ]]  # fmt: skip
    return "\n".join(lines) + "\n"


def mosquitto_files(directory: Path, secret: str, node_ids: Iterable[str]) -> tuple[Path, Path]:
    """Write `passwd` (the coordinator and every node) and `acl` into `directory`: (password file, ACL file).
    Mosquitto re-reads both on SIGHUP."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    users = [COORDINATOR_USER, *node_ids]
    passwd, acl = directory / "passwd", directory / "acl"
    _write_private(passwd, "".join(mosquitto_password_line(u, password_for(secret, u)) + "\n" for u in users))
    _write_private(acl, mosquitto_acl())
    return passwd, acl


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
