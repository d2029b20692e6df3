"""Ingestion through a real embedded amqtt broker into a real SQLite and PostgreSQL ledger: one good report is granted,
every kind of bad input is rejected once with its reason recorded and counted, and ingestion goes on."""

import asyncio
import json

import aiomqtt
from sqlalchemy import select

from coordinator import db
from coordinator.broker import EmbeddedBroker
from coordinator.ingest import Ingestor
from coordinator.ledger import credit_for
from protocol.envelope import seal
from protocol.signing import SigningKey
from protocol.topics import report_topic, status_topic
from tests.coordinator.helpers import FLOPS, make_ledger, report, status, wait_for


def test_ingestion_through_the_broker(tmp_path, ledger_url):
    async def scenario():
        ledger = await make_ledger(tmp_path, ledger_url)
        broker = EmbeddedBroker("127.0.0.1", 0)
        await broker.start()
        ingestor = Ingestor(ledger, "127.0.0.1", broker.port)
        await ingestor.start()
        try:
            await asyncio.wait_for(ingestor.subscribed.wait(), 10)
            key = await _exercise(ledger, ingestor, broker.port)
            # The broker goes away and comes back on the same port: ingestion reconnects and goes on.
            port = broker.port
            await broker.stop()
            await wait_for(lambda: not ingestor.subscribed.is_set(), what="the ingest client to notice")
            broker = EmbeddedBroker("127.0.0.1", port)
            await broker.start()
            await asyncio.wait_for(ingestor.subscribed.wait(), 20)
            async with aiomqtt.Client("127.0.0.1", port) as client:
                await client.publish(report_topic("spirals", key.node_id), seal(report(key, seq=3), key), qos=1)
            await wait_for(lambda: ingestor.counters["accepted"] == 3, what="a grant after reconnecting")
        finally:
            await ingestor.stop()
            await broker.stop()
            await ledger.engine.dispose()

    asyncio.run(scenario())


async def _register(ledger, key: SigningKey, name: str) -> None:
    from tests.coordinator.helpers import registration
    from protocol.envelope import open_envelope, parse_body
    from protocol.messages import VolunteerRegistration

    await ledger.register(parse_body(open_envelope(registration(key, name)), VolunteerRegistration))


async def _exercise(ledger, ingestor: Ingestor, port: int) -> SigningKey:
    alice, bob, stranger = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    await _register(ledger, alice, "alice")
    await _register(ledger, bob, "bob")
    topic = report_topic("spirals", alice.node_id)
    good = seal(report(alice, seq=1, samples=5000), alice)
    bad = [
        ("bad_signature", topic, seal(report(alice, seq=2), stranger)),
        ("replayed", topic, good),
        ("malformed", topic, b"this is not json"),
        ("oversized", topic, b"x" * 20_000),
        ("unsupported_version", topic, seal(report(alice, seq=3, protocol_version=99), alice)),
        ("unknown_sender", report_topic("spirals", stranger.node_id), seal(report(stranger, seq=1), stranger)),
        ("topic_mismatch", report_topic("spirals", bob.node_id), seal(report(alice, seq=4), alice)),
        ("unknown_swarm", report_topic("nope", alice.node_id), seal(report(alice, seq=5, swarm_id="nope"), alice)),
    ]
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.publish(topic, good, qos=1)
        for _, bad_topic, payload in bad:
            await client.publish(bad_topic, payload, qos=1)
        await client.publish(topic, seal(report(alice, seq=2, samples=7), alice), qos=1)  # the next in sequence
        await client.publish(status_topic("spirals", alice.node_id), seal(status(alice), alice), qos=1, retain=True)

        async def settled() -> bool:
            return ingestor.counters["accepted"] == 2 and ingestor.counters["status"] == 1

        await wait_for(settled, what="two grants and a status")
        await asyncio.sleep(0)  # the writer task commits the batch it just decided

    async def written() -> bool:
        async with ledger.engine.connect() as conn:
            granted = (await conn.execute(select(db.reports.c.seq))).scalars().all()
            node = (await conn.execute(select(db.nodes.c.online).where(db.nodes.c.node_id == alice.node_id))).scalar()
        return sorted(granted) == [1, 2] and node is True

    await wait_for(written, what="the ledger to hold both grants")
    for reason, _, _ in bad:
        assert ingestor.counters[reason] == 1, (reason, dict(ingestor.counters))
    async with ledger.engine.connect() as conn:
        rejected = (await conn.execute(select(db.rejected_messages))).all()
        reports = (await conn.execute(select(db.reports).order_by(db.reports.c.seq))).all()
        totals = (await conn.execute(select(db.volunteer_totals).where(db.volunteer_totals.c.credit > 0))).all()
    assert sorted(r.reason for r in rejected) == sorted(reason for reason, _, _ in bad)
    replay = next(r for r in rejected if r.reason == "replayed")
    assert replay.node_id == alice.node_id and replay.seq == 1 and len(replay.payload_sha256) == 64
    assert [(r.seq, r.status, r.credit) for r in reports] == [(1, "granted", credit_for(5000, FLOPS)), (2, "granted", credit_for(7, FLOPS))]
    assert len(totals) == 1 and totals[0].samples == 5007 and totals[0].reports == 2
    assert totals[0].credit == credit_for(5000, FLOPS) + credit_for(7, FLOPS)

    # The offline last will flips presence.
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.publish(status_topic("spirals", alice.node_id), seal(status(alice, "offline"), alice), qos=1)

    async def offline() -> bool:
        async with ledger.engine.connect() as conn:
            return (await conn.execute(select(db.nodes.c.online).where(db.nodes.c.node_id == alice.node_id))).scalar() is False

    await wait_for(offline, what="the node to go offline")
    assert json.dumps(dict(ingestor.counters))  # counters stay JSON-serialisable for /api/v1/stats
    return alice


def test_a_failing_ingest_loop_is_logged_and_started_again_and_nothing_is_lost(tmp_path, ledger_url, caplog):
    async def scenario():
        ledger = await make_ledger(tmp_path, ledger_url)
        broker = EmbeddedBroker("127.0.0.1", 0)
        await broker.start()
        ingestor = Ingestor(ledger, "127.0.0.1", broker.port)
        route, failures = ingestor._route, []

        async def fails_once(item, now):  # a bug hit by the first report the writer routes
            if not failures:
                failures.append(item)
                raise RuntimeError("injected")
            return await route(item, now)

        ingestor._route = fails_once
        await ingestor.start()
        try:
            await asyncio.wait_for(ingestor.subscribed.wait(), 10)
            alice = SigningKey.generate()
            await _register(ledger, alice, "alice")
            topic, first = report_topic("spirals", alice.node_id), seal(report(alice, seq=1, samples=5000), alice)
            async with aiomqtt.Client("127.0.0.1", broker.port) as client:
                await client.publish(topic, first, qos=1)
                await wait_for(lambda: ingestor.counters["task_failures"] == 1, what="the injected failure")
                await client.publish(topic, first, qos=1)  # no receipt came: the node's outbox sends it again
                await client.publish(topic, seal(report(alice, seq=2, samples=7), alice), qos=1)

            async def both_written() -> bool:
                async with ledger.engine.connect() as conn:
                    return sorted((await conn.execute(select(db.reports.c.seq))).scalars().all()) == [1, 2]

            await wait_for(both_written, what="both reports in the ledger after the restart")
            assert ingestor.counters["accepted"] == 2 and ingestor.counters["replayed"] == 0
            assert "Ingest's write loop failed; starting it again" in caplog.text
        finally:
            await ingestor.stop()
            await broker.stop()
            await ledger.engine.dispose()

    asyncio.run(scenario())


def test_a_receipt_built_without_its_model_is_the_models_canonical_bytes():
    """Ingest writes receipts' bytes directly (no model per receipt); nodes verify and parse them as Receipt."""
    from coordinator.ingest import receipt_body
    from protocol.encoding import canonical_bytes
    from protocol.messages import Receipt

    model = Receipt(node_id="9c923893f8ae810ae1ac27a506758832", swarm_id="spirals", last_seq=7, time=1795990000.25)
    assert receipt_body(model.node_id, model.swarm_id, 7, 1795990000.25) == canonical_bytes(model.model_dump(mode="json"))


def test_ingest_freezes_the_startup_heap_once():
    """The garbage collector's full passes skip what existed when ingest started (imports, caches)."""
    import gc

    from coordinator.ingest import freeze_startup_heap

    freeze_startup_heap()
    frozen = gc.get_freeze_count()
    assert frozen > 0
    garbage = [object() for _ in range(1000)]
    freeze_startup_heap()  # a second ingestor in the same process: nothing more is frozen
    assert gc.get_freeze_count() == frozen and garbage
