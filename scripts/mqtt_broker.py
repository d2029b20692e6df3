"""A standalone MQTT broker (the coordinator's embedded amqtt) on 127.0.0.1:PORT, for tests and local setups
that need a broker to come and go independently of the coordinator. Stops on SIGINT/SIGTERM.

Usage: python scripts/mqtt_broker.py PORT
"""

import asyncio
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coordinator.broker import EmbeddedBroker  # noqa: E402


async def serve(port: int) -> None:
    broker = EmbeddedBroker("127.0.0.1", port)
    await broker.start()
    print(f"MQTT broker listening on {broker.url}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await broker.stop()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
