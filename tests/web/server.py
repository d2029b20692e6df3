"""A real coordinator web app for the browser tests: uvicorn on 127.0.0.1 (free port) in a background thread,
over a real SQLite ledger that the test seeds and changes through the Ledger API while pages are open."""

import asyncio
import socket
import threading
from concurrent.futures import Future
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional

from coordinator.api import Services
from coordinator.app import _Server, create_app, listening_socket
from coordinator.ledger import Batch, Ledger
from protocol.credit import credit_for
from protocol.messages import VolunteerRegistration
from protocol.signing import SigningKey
from tests.coordinator.helpers import FLOPS, make_ledger

START_TIMEOUT = 30.0
SWARM_ID = "spirals"


class SeededCoordinator:
    """Start with `start()`, stop with `stop()` (always, even when a test fails)."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.url = ""
        self.ledger: Optional[Ledger] = None
        self.nodes: dict[str, dict] = {}  # volunteer name → {node_id, volunteer_id, seq}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None
        self._ready: Future = Future()

    def start(self) -> "SeededCoordinator":
        sock = listening_socket("127.0.0.1", 0)  # the coordinator's own, TCP_NODELAY included
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main(sock)), name="web-test-server", daemon=True)
        self._thread.start()
        self._ready.result(timeout=START_TIMEOUT)
        return self

    async def _main(self, sock: socket.socket) -> None:
        import uvicorn

        try:
            self._loop = asyncio.get_running_loop()
            self.ledger = await make_ledger(self.tmp_path)
            app = create_app(Services(self.ledger, "mqtt://127.0.0.1:1883", "operator-secret"))
            self._server = _Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
            task = asyncio.create_task(self._server.serve(sockets=[sock]))
            while not self._server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
            self._ready.set_result(True)
            await task
        except BaseException as e:
            if not self._ready.done():
                self._ready.set_exception(e)
            raise
        finally:
            if self.ledger is not None:
                await self.ledger.engine.dispose()

    def call(self, make: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
        """Run a coroutine on the server's event loop (where the ledger's engine lives) and return its result."""
        return asyncio.run_coroutine_threadsafe(make(), self._loop).result(timeout)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(15)

    # Seeding, through the Ledger API (the functions below), on the server's event loop.

    def register(self, name: str, team: Optional[str] = None) -> None:
        self.nodes[name] = self.call(lambda: register(self.ledger, name, team))

    def report(self, name: str, samples: int, epoch: int, loss: Optional[float] = None, days_ago: float = 0.0,
               group_size: int = 2) -> None:  # fmt: skip
        self.call(lambda: grant(self.ledger, self.nodes[name], samples, epoch, loss, days_ago, group_size))


async def register(ledger: Ledger, name: str, team: Optional[str] = None) -> dict:
    """Register a volunteer with one node: {node_id, volunteer_id, seq} for `grant`."""
    key = SigningKey.generate()
    registration = VolunteerRegistration(name=name, team=team, public_key=key.public_key,
                                         time=datetime.now(timezone.utc).timestamp())  # fmt: skip
    record, _ = await ledger.register(registration)
    return {"node_id": record["node_id"], "volunteer_id": ledger.nodes[record["node_id"]].volunteer_id, "seq": 0}


async def grant(ledger: Ledger, node: dict, samples: int, epoch: int = 1, loss: Optional[float] = None,
                days_ago: float = 0.0, group_size: int = 2) -> None:  # fmt: skip
    """Write one verified report of `node`, granted `days_ago` days ago."""
    node["seq"] += 1
    at = datetime.now(timezone.utc) - timedelta(days=days_ago)
    values = dict(node_id=node["node_id"], volunteer_id=node["volunteer_id"], swarm_id=SWARM_ID, seq=node["seq"],
                  epoch=epoch, samples=samples, compute_seconds=1.5, device="cpu", loss=loss, group_size=group_size,
                  status="granted", reason=None, credit=credit_for(samples, FLOPS), received_at=at)  # fmt: skip
    await ledger.write(Batch(grants=[values]), now=at)
