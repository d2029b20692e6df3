"""The coordinator's real HTTP app on a real uvicorn, in a background thread, over a real SQLite ledger."""

import asyncio
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

from coordinator.api import Services
from coordinator.app import _Server, create_app, listening_socket
from coordinator.assets import AssetStore
from coordinator.checkpoints import CheckpointStore
from coordinator.exports import write_exports
from coordinator.metrics import CoordinatorMetrics
from tests.coordinator.helpers import make_ledger

START_TIMEOUT = 30.0
OPERATOR_TOKEN = "operator-secret"


@contextmanager
def live_server(tmp_path: Path, **app_options) -> Iterator[httpx.Client]:
    """An httpx client for the app served on 127.0.0.1 at a free port; `app_options` go to create_app. The
    server and its ledger stop when the block ends, even on failure."""
    import uvicorn

    sock = listening_socket("127.0.0.1", 0)  # the coordinator's own, TCP_NODELAY included
    port = sock.getsockname()[1]
    ready, state = threading.Event(), {}

    async def main() -> None:
        ledger = await make_ledger(tmp_path)
        try:
            services = Services(ledger, "mqtt://127.0.0.1:1883", OPERATOR_TOKEN, exports_dir=tmp_path / "exports",
                                assets=AssetStore(tmp_path / "assets"))  # fmt: skip
            await write_exports(ledger.engine, services.exports_dir)
            metrics = CoordinatorMetrics()
            app = create_app(services, metrics, **app_options)
            app.state.checkpoints = CheckpointStore(tmp_path / "checkpoints", keep=2)  # as Coordinator.start sets it
            config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
            server = state["server"] = _Server(config)
            state["metrics"] = metrics
            task = asyncio.create_task(server.serve(sockets=[sock]))
            while not server.started and not task.done():
                await asyncio.sleep(0.01)
            ready.set()
            await task
        finally:
            ready.set()
            await ledger.engine.dispose()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as e:  # surfaced to the test below
            state["error"] = e

    thread = threading.Thread(target=run, name="uvicorn", daemon=True)
    thread.start()
    try:
        if not ready.wait(START_TIMEOUT) or "error" in state or not state["server"].started:
            raise RuntimeError(f"the test server did not start: {state.get('error')!r}")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            client.metrics = state["metrics"]
            yield client
    finally:
        if "server" in state:
            state["server"].should_exit = True
        thread.join(START_TIMEOUT)
        sock.close()
        assert not thread.is_alive(), "the test server did not stop"
