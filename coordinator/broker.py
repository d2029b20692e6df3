"""The MQTT transport: an embedded amqtt broker for zero set-up, or a check that an external one answers."""

import asyncio
import logging
from typing import Optional

from coordinator.tls import broker_listeners

logger = logging.getLogger(__name__)


class BrokerUnavailable(RuntimeError):
    """The broker could not be started or reached; the message is meant for the operator."""


class EmbeddedBroker:
    """amqtt running in this event loop on host:port (port 0 picks a free one). Anonymous clients allowed, unless
    `auth_secret` is set before start(): then logins and topics follow coordinator/broker_acl.py."""

    auth_secret: Optional[str] = None

    def __init__(self, host: str = "127.0.0.1", port: int = 1883, tls_cert=None, tls_key=None):
        self.host = host
        self.requested_port = port
        self.tls_cert, self.tls_key = tls_cert, tls_key  # MQTT over TLS on host:port (coordinator/tls.py)
        self.port: Optional[int] = None
        self.local_port: Optional[int] = None  # plain MQTT for this process's own clients (TLS: on 127.0.0.1)
        self._broker = None

    async def start(self) -> None:
        from amqtt.broker import Broker
        from amqtt.errors import BrokerError

        from coordinator.broker_acl import amqtt_plugins

        config = {
            "listeners": broker_listeners(self.host, self.requested_port, self.tls_cert, self.tls_key),
            "plugins": amqtt_plugins(self.auth_secret) if self.auth_secret else
            {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self._broker = Broker(config)
        try:
            await self._broker.start()
        except BrokerError as e:
            self._broker = None
            cause = e.__cause__ or e
            raise BrokerUnavailable(f"cannot start the MQTT broker on {self.host}:{self.requested_port}: {cause}") from e
        self.port = self._bound_port("tls" if self.tls_cert else "default")
        self.local_port = self._bound_port("default")
        logger.info("Embedded MQTT broker listening on %s:%s", self.host, self.port)

    def _bound_port(self, listener: str = "default") -> int:
        server = self._broker._servers[listener].instance  # amqtt keeps the asyncio.Server here
        return server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls_cert else 'mqtt'}://{self.host}:{self.port}"

    async def stop(self) -> None:
        if self._broker is None:
            return
        broker, self._broker = self._broker, None
        try:
            await broker.shutdown()
        except Exception:  # a half-stopped broker must not block the rest of the shutdown
            logger.exception("Error while stopping the embedded MQTT broker")


async def check_reachable(host: str, port: int, timeout: float = 5.0) -> None:
    """Raise BrokerUnavailable unless a TCP connection to the broker opens within `timeout` seconds."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError) as e:
        raise BrokerUnavailable(f"cannot reach the MQTT broker at mqtt://{host}:{port}: {e or 'timed out'}") from e
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
