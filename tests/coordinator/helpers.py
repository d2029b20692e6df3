"""Shared helpers for the coordinator tests: an in-process ledger + API, signed messages, waiting on conditions."""

import asyncio
import time
from contextlib import asynccontextmanager
from pathlib import Path
from inspect import isawaitable
from typing import Awaitable, Callable

import httpx
from sqlalchemy.pool import NullPool

from coordinator import db
from coordinator.api import Services
from coordinator.app import create_app
from coordinator.ledger import Ledger
from protocol.envelope import seal
from protocol.messages import ContributionReport, NodeStatus, VolunteerRegistration
from protocol.signing import SigningKey

FLOPS = 3_685_888
SWARM = {
    "swarm_id": "spirals", "title": "Spirals", "run_id": "hearth-spirals-00000000", "task": "spirals",
    "hyperparameters": {"target_batch_size": 4096, "batch_size": 256, "learning_rate": 0.002,
                        "matchmaking_time": 3.0, "averaging_timeout": 30.0},
    "flops_per_sample": FLOPS,
}  # fmt: skip


async def make_ledger(tmp_path: Path, url: str | None = None) -> Ledger:
    """A ledger at the newest migration with the spirals swarm: a SQLite file in tmp_path, or `url` (the
    `ledger_url` fixture). No PostgreSQL connection outlives the test's event loop (NullPool)."""
    url = url or f"sqlite+aiosqlite:///{tmp_path / 'ledger.sqlite3'}"
    engine = db.create_engine(url, **({"poolclass": NullPool} if url.startswith("postgresql") else {}))
    await db.create_schema(engine)
    ledger = Ledger(engine)
    await ledger.load()
    await ledger.create_swarm(dict(SWARM))
    return ledger


@asynccontextmanager
async def api_client(ledger: Ledger, token: str = "operator-secret"):
    services = Services(ledger, "mqtt://127.0.0.1:1883", token)
    app = create_app(services)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        client.services = services
        yield client


def registration(key: SigningKey, name: str, team: str | None = None) -> bytes:
    return seal(VolunteerRegistration(name=name, team=team, public_key=key.public_key, time=time.time()), key)


def report(key: SigningKey, seq: int, samples: int = 1000, swarm_id: str = "spirals", node_id: str | None = None,
           **fields) -> ContributionReport:  # fmt: skip
    return ContributionReport(
        node_id=node_id or key.node_id, swarm_id=swarm_id, seq=seq, epoch=fields.pop("epoch", seq), samples=samples,
        compute_seconds=fields.pop("compute_seconds", 1.5), device="cpu", time=time.time(), **fields,
    )  # fmt: skip


def broker_login(registered: dict) -> dict:
    """aiomqtt.Client's login from a registration answer: the broker admits only logged-in nodes by default."""
    return {"username": registered["broker_username"], "password": registered["broker_password"]}


def status(key: SigningKey, state: str = "online", swarm_id: str = "spirals") -> NodeStatus:
    return NodeStatus(node_id=key.node_id, swarm_id=swarm_id, state=state, time=time.time(), device="cpu:2")


async def wait_for(condition: Callable[[], Awaitable[bool] | bool], timeout: float = 15.0,
                   what: str = "condition") -> None:
    """Wait until `condition()` (a plain or an async function) is true."""
    deadline = time.monotonic() + timeout
    while not await _holds(condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def _holds(condition: Callable[[], Awaitable[bool] | bool]) -> bool:
    result = condition()
    return bool(await result if isawaitable(result) else result)
