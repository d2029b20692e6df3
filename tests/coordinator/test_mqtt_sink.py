"""The sink's own PUBLISH parser (coordinator/mqtt_sink.py) on hand-made packets: whole QoS 0/1 packets are taken
with their PUBACKs; partial ones, QoS 2 and MQTT 5 packets with properties are left to paho, untouched.
(Every ingest test over Mosquitto and amqtt runs the whole client on it.)"""

import struct

from coordinator.mqtt_sink import _take_publish, packet_bounds
from scripts.bench_ingest import publish_packet

TOPIC = "hearth/v1/swarms/spirals/nodes/0123456789abcdef0123456789abcdef/reports"


def take_all(data: bytes, v5: bool = False) -> tuple[list, bytes, bytes]:
    buffer, got, acks = bytearray(data), [], bytearray()
    while buffer and _take_publish(buffer, v5, lambda topic, payload: got.append((topic, payload)), acks):
        pass
    return got, bytes(acks), bytes(buffer)


def test_whole_qos1_packets_are_taken_and_acknowledged_together():
    payloads = [b"x" * n for n in (0, 1, 127, 128, 20_000)]  # one- to three-byte remaining lengths
    data = b"".join(publish_packet(TOPIC, p, packet_id=i + 1) for i, p in enumerate(payloads))
    got, acks, left = take_all(data)
    assert got == [(TOPIC, p) for p in payloads] and left == b""
    assert acks == b"".join(b"\x40\x02" + struct.pack("!H", i + 1) for i in range(len(payloads)))


def test_a_partial_packet_stays_for_the_next_read():
    whole, second = publish_packet(TOPIC, b"a" * 300, 7), publish_packet(TOPIC, b"b" * 300, 8)
    for cut in (1, 2, 50, len(second) - 1):
        got, acks, left = take_all(whole + second[:cut])
        assert got == [(TOPIC, b"a" * 300)] and acks == b"\x40\x02\x00\x07" and left == second[:cut]


def test_qos0_needs_no_ack_and_qos2_other_packets_and_v5_properties_go_to_paho():
    body = struct.pack("!H", len(TOPIC)) + TOPIC.encode() + b"payload"
    assert take_all(b"\x30" + bytes([len(body)]) + body) == ([(TOPIC, b"payload")], b"", b"")
    qos2 = publish_packet(TOPIC, b"p", 3).replace(b"\x32", b"\x34", 1)
    assert take_all(qos2) == ([], b"", qos2)
    suback = b"\x90\x03\x00\x01\x01"
    assert take_all(suback) == ([], b"", suback)
    v5 = struct.pack("!H", len(TOPIC)) + TOPIC.encode() + b"\x00\x09"
    plain, alias = v5 + b"\x00" + b"p", v5 + b"\x03\x23\x00\x01" + b"p"  # no properties / a topic alias
    assert take_all(b"\x32" + bytes([len(plain)]) + plain, v5=True) == ([(TOPIC, b"p")], b"\x40\x02\x00\x09", b"")
    packet = b"\x32" + bytes([len(alias)]) + alias
    assert take_all(packet, v5=True) == ([], b"", packet)


def test_packet_bounds_reads_one_to_four_byte_remaining_lengths_and_waits_for_the_rest():
    for size in (0, 127, 128, 16_384, 2_097_152):  # remaining lengths of one, two, three and four bytes
        packet = publish_packet(TOPIC, b"x" * size, packet_id=1)
        start = 1 + next(i for i, byte in enumerate(packet[1:], 1) if byte < 128)
        assert packet_bounds(packet) == (start, len(packet))
        assert packet_bounds(packet + b"\xe0\x00") == (start, len(packet))  # the next packet is not part of it
        assert packet_bounds(packet[:-1]) is None and packet_bounds(packet[:start - 1]) is None
    assert packet_bounds(b"\xe0\x00") == (2, 2)  # DISCONNECT: no body


def test_a_remaining_length_over_four_bytes_is_no_packet_so_paho_refuses_it():
    malformed = b"\x32\xff\xff\xff\xff\x01" + b"x" * 100
    assert packet_bounds(malformed) is None
    assert take_all(malformed) == ([], b"", malformed)
