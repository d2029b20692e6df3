"""The credit ledger over a real SQLite file: reports → grants → maintained totals, in one transaction."""

import asyncio

from sqlalchemy import func, select

from coordinator import db
from coordinator.ingest import Ingestor
from coordinator.ledger import Batch, credit_for
from protocol.credit import CREDIT_RULE
from protocol.envelope import seal
from protocol.signing import SigningKey
from tests.coordinator.helpers import FLOPS, api_client, make_ledger, registration, report


def topic(key: SigningKey) -> str:
    return f"hearth/v1/swarms/spirals/nodes/{key.node_id}/reports"


async def setup(tmp_path, *people: tuple[str, str | None]):
    """A ledger, a decisions-only ingestor and registered volunteers: (ledger, ingestor, {name: key})."""
    ledger = await make_ledger(tmp_path)
    keys = {name: SigningKey.generate() for name, _ in people}
    async with api_client(ledger) as client:
        for name, team in people:
            response = await client.post("/api/v1/volunteers", content=registration(keys[name], name, team))
            assert response.status_code == 201, response.text
    return ledger, Ingestor(ledger, "127.0.0.1", 1), keys


async def ingest(ingestor: Ingestor, key: SigningKey, *samples_by_seq: tuple[int, int]) -> Batch:
    batch = Batch()
    for seq, samples in samples_by_seq:
        assert await ingestor.handle(topic(key), seal(report(key, seq, samples), key), batch) == "accepted"
    return batch


async def count(ledger, table, *where) -> int:
    async with ledger.engine.connect() as conn:
        return (await conn.execute(select(func.count()).select_from(table).where(*where))).scalar_one()


def test_a_grant_is_one_grant_row_tied_to_its_report_and_rule(tmp_path):
    async def scenario():
        ledger, ingestor, keys = await setup(tmp_path, ("ada", "lovelace"))
        await ledger.write(await ingest(ingestor, keys["ada"], (1, 1000), (2, 24)))
        async with ledger.engine.connect() as conn:
            rows = (await conn.execute(
                select(db.reports.c.seq, db.reports.c.status, db.reports.c.reason, db.grants.c.rule, db.grants.c.credit)
                .join(db.grants, db.grants.c.report_id == db.reports.c.id).order_by(db.reports.c.seq)
            )).all()  # fmt: skip
        assert [tuple(r) for r in rows] == [
            (1, "granted", None, CREDIT_RULE, credit_for(1000, FLOPS)),
            (2, "granted", None, CREDIT_RULE, credit_for(24, FLOPS)),
        ]
        assert CREDIT_RULE == "flops-v1" and await count(ledger, db.grants) == 2

    asyncio.run(scenario())


def test_a_replayed_report_changes_nothing(tmp_path):
    async def scenario():
        ledger, ingestor, keys = await setup(tmp_path, ("ada", "lovelace"))
        key = keys["ada"]
        payload = seal(report(key, 1, 1000), key)
        batch = Batch()
        assert await ingestor.handle(topic(key), payload, batch) == "accepted"
        await ledger.write(batch)
        async with ledger.engine.connect() as conn:
            before = {t.name: (await conn.execute(select(t))).all() for t in (db.reports, db.grants, db.volunteer_totals)}

        again = Batch()  # the same signed message redelivered (QoS 1) and re-sent from the outbox
        assert await ingestor.handle(topic(key), payload, again) == "replayed"
        assert await ingestor.handle(topic(key), payload, again) == "replayed"
        await ledger.write(again)
        async with ledger.engine.connect() as conn:
            after = {t.name: (await conn.execute(select(t))).all() for t in (db.reports, db.grants, db.volunteer_totals)}
        assert after == before
        assert await count(ledger, db.rejected_messages, db.rejected_messages.c.reason == "replayed") == 2

    asyncio.run(scenario())
