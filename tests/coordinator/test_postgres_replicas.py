"""Two coordinator replicas writing to one PostgreSQL ledger at the same time: batches that touch the same
nodes, volunteers, teams and swarm in opposite orders neither deadlock nor lose a grant (rows are locked in
key order)."""

import asyncio
from datetime import datetime, timezone

from sqlalchemy import select

from coordinator import db
from coordinator.ledger import Batch, Ledger
from protocol.signing import SigningKey
from tests.coordinator.helpers import api_client, make_ledger, registration

NODES, ROUNDS = 8, 15


def grant(node_id: str, volunteer_id: int, seq: int) -> dict:
    return dict(node_id=node_id, volunteer_id=volunteer_id, swarm_id="spirals", seq=seq, epoch=seq, samples=10,
                compute_seconds=1.0, device="cpu", loss=None, group_size=2, status="granted", reason=None,
                credit=1.0, received_at=datetime.now(timezone.utc))  # fmt: skip


def test_concurrent_replicas_in_opposite_orders_neither_deadlock_nor_lose_grants(tmp_path, postgres_url):
    async def scenario():
        first = await make_ledger(tmp_path, postgres_url)
        async with api_client(first) as client:
            for i in range(NODES):  # every volunteer in one of two teams, so team rows are shared too
                body = registration(SigningKey.generate(), f"v{i}", f"team{i % 2}")
                assert (await client.post("/api/v1/volunteers", content=body)).status_code == 201
        replicas = [Ledger(db.create_engine(postgres_url)) for _ in range(2)]  # pooled: both start at once
        nodes = sorted((node_id, info.volunteer_id) for node_id, info in first.nodes.items())
        try:
            for r in range(ROUNDS):
                forward, backward = Batch(), Batch()
                forward.grants = [grant(n, v, 2 * r + 1) for n, v in nodes]
                backward.grants = [grant(n, v, 2 * r + 2) for n, v in reversed(nodes)]
                await asyncio.gather(replicas[0].write(forward), replicas[1].write(backward))
        finally:
            for replica in replicas:
                await replica.engine.dispose()
        async with first.engine.connect() as conn:
            node_totals = dict((await conn.execute(select(db.node_totals.c.node_id, db.node_totals.c.reports))).all())
            team_totals = dict((await conn.execute(select(db.team_totals.c.team, db.team_totals.c.reports))).all())
            swarm = (await conn.execute(select(db.swarm_totals.c.reports))).scalar_one()
        assert node_totals == {n: 2 * ROUNDS for n, _ in nodes}
        assert team_totals == {"team0": NODES * ROUNDS, "team1": NODES * ROUNDS} and swarm == 2 * NODES * ROUNDS

    asyncio.run(scenario())
