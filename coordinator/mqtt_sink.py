"""An aiomqtt client that drops each received message straight into a queue as a plain tuple.

aiomqtt builds a Message (with a validated Topic) per message and hands it out through a task and an
asyncio.wait per message, and paho reads each packet with several 1-byte recv() calls, builds an MQTTMessage,
and writes each PUBACK with its own send(): ~70 us of CPU per report, as much as its signature check. Here
paho reads through a 64 KiB buffer, and every complete QoS 0/1 PUBLISH packet in it is parsed here (a few us
each; also the first of a read, which matters at moderate load, when most reads hold one), their PUBACKs sent
together in one write; paho still handles everything else (CONNACK, SUBACK, PINGRESP, QoS 2, MQTT 5
properties) and the connection's life.
Iterating `client.messages` still raises MqttError when the connection drops (no messages come out of it).
"""

import asyncio
import time
from typing import Callable, Optional

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
        _buffer_reads(self._client, self._sink_publish)

    def _on_message(self, client: mqtt.Client, userdata, message: mqtt.MQTTMessage) -> None:
        # (topic, payload, received (monotonic), verdict: None until verified)
        self._sink_publish(message.topic, message.payload)

    def _sink_publish(self, topic: str, payload: bytes) -> None:
        self.sink.put_nowait((topic, payload, time.monotonic(), None))

    async def until_disconnected(self) -> None:
        """Return never; raise MqttError once the connection is lost."""
        async for _ in self.messages:
            pass


def _buffer_reads(paho: mqtt.Client, on_publish: Callable[[str, bytes], None]) -> None:
    """Serve paho's small recv() calls from one large read, and parse the PUBLISH packets in it here
    (`on_publish(topic, payload)`), acknowledging them in one write; paho reads only the other packets."""
    buffer = bytearray()
    acks = bytearray()
    read_packets = paho.loop_read
    v5 = paho._protocol == mqtt.MQTTv5

    def fill() -> bool:
        """Read what the socket holds into the buffer; False if the broker closed the connection."""
        sock = paho._sock
        if sock is None:
            raise ConnectionError("self._sock is None")
        data = sock.recv(READ_SIZE)  # BlockingIOError when nothing is there, as paho expects
        buffer.extend(data)
        return bool(data)

    def sock_recv(bufsize: int) -> bytes:
        if paho._in_packet["command"] == 0:  # paho starts a packet: the PUBLISH packets before it are ours
            while True:
                if not buffer and not fill():
                    return b""  # closed by the broker
                while buffer and _take_publish(buffer, v5, on_publish, acks):
                    pass
                if buffer:
                    break
        elif not buffer and not fill():
            return b""
        data = bytes(buffer[:bufsize])
        del buffer[:bufsize]
        return data

    def loop_read(max_packets: int = 1) -> mqtt.MQTTErrorCode:
        try:
            rc = read_packets(max_packets)
            while buffer and rc == mqtt.MQTTErrorCode.MQTT_ERR_SUCCESS and paho._sock is not None:
                # no read event will come for what is already buffered
                if paho._in_packet["command"] != 0 or not _take_publish(buffer, v5, on_publish, acks):
                    rc = read_packets(max_packets)
        finally:
            if acks and paho._sock is not None:
                paho._packet_queue(mqtt.PUBACK, bytes(acks), 0, 0)  # one write for them all (paho sends bytes as given)
            acks.clear()
        return rc

    paho._sock_recv = sock_recv
    paho.loop_read = loop_read


def packet_bounds(buffer: bytes | bytearray) -> Optional[tuple[int, int]]:
    """(start of the variable header, end) of the MQTT packet at the start of `buffer`, or None while it is not
    all there, or when its remaining length runs past the 4 bytes MQTT allows (malformed)."""
    length, multiplier, pos = 0, 1, 1
    while True:  # remaining length: a varint, 7 bits a byte, least significant first
        if pos >= len(buffer) or pos > 4:
            return None
        byte = buffer[pos]
        length += (byte & 127) * multiplier
        multiplier *= 128
        pos += 1
        if byte < 128:
            break
    end = pos + length
    return (pos, end) if len(buffer) >= end else None


def _take_publish(buffer: bytearray, v5: bool, on_publish: Callable[[str, bytes], None], acks: bytearray) -> bool:
    """Consume the QoS 0/1 PUBLISH packet at the start of `buffer` if it is there whole (and, under MQTT 5, has no
    properties): hand it to `on_publish` and add its PUBACK to `acks`. False, consuming nothing, otherwise."""
    header = buffer[0]
    qos = (header >> 1) & 3
    if header >> 4 != 3 or qos == 2:
        return False
    bounds = packet_bounds(buffer)
    if bounds is None:
        return False  # incomplete (or malformed: paho refuses it)
    pos, end = bounds
    if end - pos < 2:
        return False
    topic_end = pos + 2 + int.from_bytes(buffer[pos : pos + 2], "big")
    start = topic_end + (2 if qos else 0)
    if v5:
        if start >= end or buffer[start] != 0:
            return False  # properties (a topic alias, say): paho's full parser
        start += 1
    if start > end:
        return False
    topic = buffer[pos + 2 : topic_end].decode("utf-8", "replace")  # an invalid one is refused as malformed
    on_publish(topic, bytes(buffer[start:end]))
    if qos:
        acks += b"\x40\x02" + buffer[topic_end : topic_end + 2]  # PUBACK (MQTT 5: reason "success" omitted)
    del buffer[:end]
    return True
