"""An ingest worker process: one MQTT 5 client on the shared subscriptions `$share/hearth-ingest/…`, so the
broker spreads messages over all workers; it verifies each message (coordinator/verify.py) and sends the
verdicts, in batches, to the coordinator, which orders, decides and writes them.

A worker acknowledges messages to the broker as they arrive: what it holds when it dies is sent again by the
nodes' outboxes (no receipt covers it), so nothing is lost. It exits when the coordinator is gone.
"""

import asyncio
import logging
import os
import time

import aiomqtt

from coordinator import db
from coordinator.ingest import freeze_startup_heap
from coordinator.ledger import Ledger
from coordinator.mqtt_sink import SinkClient, login
from coordinator.verify import CHECK_BATCH, Verifier
from protocol.topics import REPORTS_FILTER, STATUS_FILTER, shared

logger = logging.getLogger(__name__)

GROUP = "hearth-ingest"
HEARTBEAT = 0.5
MAX_BATCH = 1000


def run_worker(index: int, database_url: str, host: str, port: int, connection, credentials=None) -> None:
    """Process entry point (multiprocessing, spawn); `credentials`: the coordinator's broker login, if any."""
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s ingest-worker-{index} %(levelname)s %(message)s")
    try:
        asyncio.run(_work(index, database_url, host, port, connection, credentials))
    except (BrokenPipeError, EOFError, KeyboardInterrupt):
        pass  # the coordinator stopped


async def _work(index: int, database_url: str, host: str, port: int, connection, credentials=None) -> None:
    engine = db.create_engine(database_url)
    ledger = Ledger(engine)
    await ledger.load()
    freeze_startup_heap()
    verifier = Verifier(ledger)
    parent = os.getppid()
    incoming: asyncio.Queue = asyncio.Queue()
    pending: list = []
    checking = False  # messages are being verified (a key lookup, signatures in a thread)
    arrived = asyncio.Event()

    async def forward() -> None:
        """Send what was verified, with the time this worker has caught up to when it read all it was sent
        (the coordinator waits for that before it gives up on a gap in a node's sequence); at least every
        HEARTBEAT seconds."""
        nonlocal pending
        while True:
            try:
                await asyncio.wait_for(arrived.wait(), HEARTBEAT)
            except asyncio.TimeoutError:
                pass
            arrived.clear()
            while not incoming.empty() and len(pending) < MAX_BATCH:
                await asyncio.sleep(0)  # let the receiver verify what is queued: fewer, larger sends
            out, pending = pending, []
            caught_up = time.monotonic() if incoming.empty() and not checking else None
            await asyncio.to_thread(connection.send, (caught_up, out))  # blocks when the coordinator falls behind

    async def watch_parent() -> None:
        while os.getppid() == parent:
            await asyncio.sleep(1.0)
        raise BrokenPipeError("the coordinator is gone")

    async def receive() -> None:
        nonlocal checking
        while True:
            items = [await incoming.get()]
            while len(items) < CHECK_BATCH and not incoming.empty():
                items.append(incoming.get_nowait())
            checking = True
            try:  # Verifier.check_many turns every failure, a bug's included, into a Rejected verdict
                verdicts = await verifier.check_many([(topic, payload) for topic, payload, _, _ in items])
            finally:
                checking = False
            pending.extend((topic, payload, received, verdict)
                           for (topic, payload, received, _), verdict in zip(items, verdicts))  # fmt: skip
            arrived.set()

    backoff = 0.5
    watcher = asyncio.create_task(watch_parent())
    try:
        while True:
            try:
                async with SinkClient(host, port, identifier=f"hearth-ingest-{index}-{os.getpid()}",
                                      protocol=aiomqtt.ProtocolVersion.V5, sink=incoming,
                                      **login(credentials)) as client:  # fmt: skip
                    await client.subscribe(shared(REPORTS_FILTER, GROUP), qos=1)
                    await client.subscribe(shared(STATUS_FILTER, GROUP), qos=1)
                    connection.send("subscribed")
                    backoff = 0.5
                    tasks = {asyncio.create_task(client.until_disconnected()), asyncio.create_task(receive()),
                             asyncio.create_task(forward())}  # fmt: skip
                    try:
                        done, _ = await asyncio.wait(tasks | {watcher}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for task in tasks:
                            task.cancel()
                    for task in done:
                        task.result()  # MqttError: reconnect; BrokenPipeError: the coordinator is gone
            except aiomqtt.MqttError as e:
                logger.warning("Lost the MQTT broker (%s); reconnecting in %.1f s", e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
    finally:
        watcher.cancel()
        await engine.dispose()
