"""Broker logins and topic rules (coordinator/broker_acl.py) on both real brokers: the embedded amqtt broker and a
Mosquitto process. A node may publish only under its own topics; control topics are the coordinator's alone."""

import asyncio
import secrets
import uuid

import aiomqtt
import pytest

from coordinator.broker import EmbeddedBroker
from coordinator.broker_acl import COORDINATOR_USER, HearthBrokerAuth, covers, mosquitto_files, password_for
from protocol.topics import REPORTS_FILTER, receipt_topic, report_topic, status_topic
from scripts.mosquitto import INSTALL_HINT, Mosquitto, mosquitto_binary

SWARM = "spirals"
TIMEOUT = 15.0


def test_covers():
    assert covers("a/+/n1/#", "a/s/n1/receipts") and covers("a/+/n1/#", "a/+/n1/receipts")
    assert not covers("a/+/n1/#", "a/s/+/receipts") and not covers("a/+/n1/#", "a/#")
    assert covers("a/+/n1/reports", "a/s/n1/reports") and not covers("a/+/n1/reports", "a/s/n1/reports/x")
    assert not covers("a/+/n1/reports", "a/s/n2/reports") and not covers("a/+/n1/reports", "a//n1/reports")


@pytest.fixture(params=["amqtt", "mosquitto"])
def broker(request, tmp_path):
    """(host, port, secret) of a broker that enforces Hearth's rules."""
    secret = secrets.token_hex(32)
    nodes = [uuid.uuid4().hex for _ in range(2)]
    if request.param == "mosquitto":
        if mosquitto_binary() is None:
            pytest.skip(f"no mosquitto binary; {INSTALL_HINT}")
        with Mosquitto(work_dir=tmp_path / "mosquitto", auth_files=mosquitto_files(tmp_path / "auth", secret, nodes)) as m:
            yield "127.0.0.1", m.port, secret, nodes
        return
    loop = asyncio.new_event_loop()
    embedded = EmbeddedBroker("127.0.0.1", 0)
    embedded.auth_secret = secret
    loop.run_until_complete(embedded.start())
    try:
        yield loop, embedded.port, secret, nodes
    finally:
        loop.run_until_complete(embedded.stop())
        loop.close()


def _client(port: int, username=None, password=None) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", port, username=username, password=password, identifier=uuid.uuid4().hex)


def run(broker, coro):
    loop = broker[0]
    return loop.run_until_complete(coro) if isinstance(loop, asyncio.AbstractEventLoop) else asyncio.run(coro)


async def publish_as(port: int, secret: str, user: str, topic: str, payload: bytes, retain: bool = False) -> None:
    """Publish on a connection of its own: Mosquitto answers a refused QoS 1 publish with a reason code that MQTT
    3.1.1 clients cannot read, and the connection ends; either way the broker has decided by then."""
    try:
        async with _client(port, user, password_for(secret, user)) as client:
            await client.publish(topic, payload, qos=1, retain=retain)
    except aiomqtt.MqttError:
        pass


async def _first(client: aiomqtt.Client) -> aiomqtt.Message:
    async with asyncio.timeout(TIMEOUT):
        async for message in client.messages:
            return message


def test_logins_are_checked(broker):
    _, port, secret, (alice, _) = broker
    refused_before = HearthBrokerAuth.refused.get("login", 0)

    async def scenario():
        for username, password in [(None, None), (alice, "wrong"), (alice, password_for(secret, COORDINATOR_USER)),
                                   ("somebody", password_for(secret, "somebody"))]:  # fmt: skip
            with pytest.raises(aiomqtt.MqttError):
                async with _client(port, username, password):
                    pass
        async with _client(port, alice, password_for(secret, alice)):
            pass

    run(broker, scenario())
    if isinstance(broker[0], asyncio.AbstractEventLoop):  # the embedded broker counts refusals (/api/v1/stats)
        assert HearthBrokerAuth.refused["login"] == refused_before + 4


def test_node_publishes_only_under_its_own_topics(broker):
    _, port, secret, (alice, bob) = broker

    async def scenario():
        async with _client(port, COORDINATOR_USER, password_for(secret, COORDINATOR_USER)) as coordinator, \
                _client(port, alice, password_for(secret, alice)) as node_a, \
                _client(port, bob, password_for(secret, bob)) as node_b:  # fmt: skip
            await coordinator.subscribe(REPORTS_FILTER, qos=1)
            # Alice reports as Bob, then as herself: the broker drops the forgeries (Mosquitto also disconnects her),
            # so the coordinator's first message is her own report, published after it refused them.
            await publish_as(port, secret, alice, report_topic(SWARM, bob), b"forged")
            await publish_as(port, secret, alice, status_topic(SWARM, bob), b"forged", retain=True)
            await node_a.publish(report_topic(SWARM, alice), b"genuine", qos=1)
            message = await _first(coordinator)
            assert (str(message.topic), message.payload) == (report_topic(SWARM, alice), b"genuine")

            # Receipts are control messages: Bob cannot write Alice's (nor can Alice), the coordinator can.
            await node_a.subscribe(receipt_topic(SWARM, alice), qos=1)
            await publish_as(port, secret, bob, receipt_topic(SWARM, alice), b"forged receipt", retain=True)
            await publish_as(port, secret, alice, receipt_topic(SWARM, alice), b"self-made receipt")
            await coordinator.publish(receipt_topic(SWARM, alice), b"receipt", qos=1)
            message = await _first(node_a)
            assert message.payload == b"receipt"

            # Nor may Bob read Alice's topics, even through wildcards (amqtt refuses the subscription, Mosquitto grants
            # it but delivers nothing): the first message Bob gets is his own receipt, sent after Alice's.
            for topic_filter in (receipt_topic(SWARM, alice), f"hearth/v1/swarms/{SWARM}/nodes/+/receipts", "#"):
                await node_b.subscribe(topic_filter, qos=1)
            await node_b.subscribe(receipt_topic(SWARM, bob), qos=1)
            await coordinator.publish(receipt_topic(SWARM, alice), b"for alice", qos=1)
            await coordinator.publish(receipt_topic(SWARM, bob), b"for bob", qos=1)
            message = await _first(node_b)
            assert (str(message.topic), message.payload) == (receipt_topic(SWARM, bob), b"for bob")

    run(broker, scenario())


def test_broker_files_for_registered_nodes(tmp_path):
    """`hearth coordinator broker-files` lets every registered node (and the coordinator) into a Mosquitto, no one
    else: not the nodes of a banned volunteer."""
    if mosquitto_binary() is None:
        pytest.skip(f"no mosquitto binary; {INSTALL_HINT}")
    from coordinator.broker_acl import load_or_create_secret
    from protocol.signing import SigningKey
    from coordinator import db
    from coordinator.ledger import utcnow
    from tests.conftest import run_hearth
    from tests.coordinator.helpers import make_ledger, registration

    data_dir, key, banned = tmp_path / "data", SigningKey.generate(), SigningKey.generate()
    data_dir.mkdir()

    async def register() -> None:
        from coordinator.api import Services
        from coordinator.app import create_app
        import httpx

        ledger = await make_ledger(data_dir)
        services = Services(ledger, "mqtt://127.0.0.1:1", "op", broker_secret=load_or_create_secret(data_dir))
        transport = httpx.ASGITransport(app=create_app(services))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            answer = (await client.post("/api/v1/volunteers", content=registration(key, "carol"))).json()
            assert (await client.post("/api/v1/volunteers", content=registration(banned, "mallory"))).status_code == 201
        async with ledger.engine.begin() as conn:  # as three failed audits leave it (coordinator/audits.py)
            await conn.execute(db.volunteers.update().where(db.volunteers.c.name == "mallory").values(banned_at=utcnow()))
        await ledger.engine.dispose()
        return answer

    answer = asyncio.run(register())
    assert answer["broker_username"] == key.node_id
    done = run_hearth("coordinator", "broker-files", "--data-dir", str(data_dir), "--out", str(tmp_path / "auth"))
    assert done.returncode == 0, done.stderr
    secret = load_or_create_secret(data_dir)
    stranger = uuid.uuid4().hex
    with Mosquitto(work_dir=tmp_path / "mosquitto", auth_files=(tmp_path / "auth" / "passwd", tmp_path / "auth" / "acl")) as m:

        async def scenario():
            async with _client(m.port, key.node_id, answer["broker_password"]) as node:
                await node.publish(report_topic(SWARM, key.node_id), b"hi", qos=1)
            async with _client(m.port, COORDINATOR_USER, password_for(secret, COORDINATOR_USER)):
                pass
            for user in (stranger, banned.node_id):
                with pytest.raises(aiomqtt.MqttError):
                    async with _client(m.port, user, password_for(secret, user)):
                        pass

        asyncio.run(scenario())


def test_a_banned_volunteers_node_is_refused_by_the_embedded_broker(tmp_path):
    """Once banned (failed audits, or the operator), a node can no longer log in, and the session it holds carries
    nothing more; lifting the ban gives the login back."""
    from sqlalchemy import update

    from coordinator import db
    from coordinator.broker_acl import revoke_banned
    from protocol.envelope import open_envelope, parse_body
    from protocol.messages import VolunteerRegistration
    from protocol.signing import SigningKey
    from coordinator.ledger import utcnow as utc_now
    from tests.coordinator.helpers import make_ledger, registration

    key, secret = SigningKey.generate(), secrets.token_hex(32)
    node = key.node_id

    async def scenario():
        ledger = await make_ledger(tmp_path)
        await ledger.register(parse_body(open_envelope(registration(key, "dodger")), VolunteerRegistration))
        broker = EmbeddedBroker("127.0.0.1", 0)
        broker.auth_secret = secret
        await broker.start()
        try:
            async with _client(broker.port, COORDINATOR_USER, password_for(secret, COORDINATOR_USER)) as coordinator, \
                    _client(broker.port, node, password_for(secret, node)) as held:  # fmt: skip
                await coordinator.subscribe(REPORTS_FILTER, qos=1)
                assert await revoke_banned(ledger.engine) == set()  # not banned (yet)
                async with ledger.engine.begin() as conn:
                    await conn.execute(update(db.volunteers).values(banned_at=utc_now()))
                assert await revoke_banned(ledger.engine) == {node}
                with pytest.raises(aiomqtt.MqttError):
                    async with _client(broker.port, node, password_for(secret, node)):
                        pass
                await held.publish(report_topic(SWARM, node), b"after the ban", qos=1)
                await coordinator.publish(report_topic(SWARM, COORDINATOR_USER), b"marker", qos=1)
                message = await _first(coordinator)  # the first message through is the coordinator's own
                assert message.payload == b"marker"
                async with ledger.engine.begin() as conn:  # the operator lifts the ban
                    await conn.execute(update(db.volunteers).values(banned_at=None))
                assert await revoke_banned(ledger.engine) == set()
                async with _client(broker.port, node, password_for(secret, node)):
                    pass
        finally:
            HearthBrokerAuth.revoked.discard(node)
            await broker.stop()
            await ledger.engine.dispose()

    asyncio.run(scenario())
