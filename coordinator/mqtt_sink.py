"""An aiomqtt client that drops each received message straight into a queue as a plain tuple.

aiomqtt builds a Message (with a validated Topic) per message and hands it out through a task and an
asyncio.wait per message, and paho reads each packet with several 1-byte recv() calls and one packet per
readable event; at thousands of reports per second that was most of the coordinator's receive cost. Here paho
reads through a 64 KiB buffer and parses every complete packet it holds in one go.
Iterating `client.messages` still raises MqttError when the connection drops (no messages come out of it).
"""

import asyncio
import time

import aiomqtt
import paho.mqtt.client as mqtt

READ_SIZE = 64 * 1024


def login(credentials) -> dict:
    """aiomqtt keyword arguments for (username, password) on the broker (coordinator/broker_acl.py), or none."""
    return {} if credentials is None else {"username": credentials[0], "password": credentials[1]}


class SinkClient(aiomqtt.Client):
    def __init__(self, *args, sink: asyncio.Queue, **kwargs):
        super().__init__(*args, **kwargs)
        self.sink = sink
        _buffer_reads(self._client)

    def _on_message(self, client: mqtt.Client, userdata, message: mqtt.MQTTMessage) -> None:
        # (topic, payload, received (monotonic), verdict: None until verified)
        self.sink.put_nowait((message.topic, message.payload, time.monotonic(), None))

    async def until_disconnected(self) -> None:
        """Return never; raise MqttError once the connection is lost."""
        async for _ in self.messages:
            pass


def _buffer_reads(paho: mqtt.Client) -> None:
    """Serve paho's small recv() calls from one large read, and let a read event parse all buffered packets."""
    buffer = bytearray()
    read_packets = paho.loop_read

    def sock_recv(bufsize: int) -> bytes:
        if not buffer:
            sock = paho._sock
            if sock is None:
                raise ConnectionError("self._sock is None")
            data = sock.recv(READ_SIZE)  # BlockingIOError when nothing is there, as paho expects
            if not data:
                return data  # closed by the broker
            buffer.extend(data)
        data = bytes(buffer[:bufsize])
        del buffer[:bufsize]
        return data

    def loop_read(max_packets: int = 1) -> mqtt.MQTTErrorCode:
        rc = read_packets(max_packets)
        while buffer and rc == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS and paho._sock is not None:
            rc = read_packets(max_packets)  # no read event will come for what is already buffered
        return rc

    paho._sock_recv = sock_recv
    paho.loop_read = loop_read
