"""The credit ledger on real SQLite and PostgreSQL (`ledger_url`): reports → grants → maintained totals, in one
transaction."""

import asyncio
import math
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from coordinator import db, migrations
from coordinator import ledger as ledger_module
from coordinator import queries
from coordinator.ingest import Ingestor
from coordinator.ledger import Batch, credit_for
from protocol.credit import CREDIT_RULE
from protocol.envelope import seal
from protocol.signing import SigningKey
from tests.coordinator.helpers import FLOPS, api_client, make_ledger, registration, report


def topic(key: SigningKey) -> str:
    return f"hearth/v1/swarms/spirals/nodes/{key.node_id}/reports"


async def setup(tmp_path, url, *people: tuple[str, str | None]):
    """A ledger, a decisions-only ingestor and registered volunteers: (ledger, ingestor, {name: key})."""
    ledger = await make_ledger(tmp_path, url)
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


def test_a_grant_is_one_grant_row_tied_to_its_report_and_rule(tmp_path, ledger_url):
    async def scenario():
        ledger, ingestor, keys = await setup(tmp_path, ledger_url, ("ada", "lovelace"))
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


def test_a_replayed_report_changes_nothing(tmp_path, ledger_url):
    async def scenario():
        ledger, ingestor, keys = await setup(tmp_path, ledger_url, ("ada", "lovelace"))
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


T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)
TOTALS = (db.node_totals, db.volunteer_totals, db.team_totals, db.swarm_totals)


async def totals(ledger) -> dict:
    async with ledger.engine.connect() as conn:
        return {t.name: [dict(r._mapping) for r in await conn.execute(select(t))] for t in TOTALS}


def test_a_grant_updates_all_four_totals_with_recent_average_credit(tmp_path, ledger_url):
    async def scenario():
        ledger, ingestor, keys = await setup(tmp_path, ledger_url, ("ada", "lovelace"), ("bob", "lovelace"), ("cy", None))
        await ledger.write(await ingest(ingestor, keys["ada"], (1, 1000), (2, 24)), now=T0)
        await ledger.write(await ingest(ingestor, keys["bob"], (1, 500)), now=T0 + timedelta(days=1))
        await ledger.write(await ingest(ingestor, keys["cy"], (1, 7)), now=T0 + timedelta(days=1))
        got = await totals(ledger)
        ada, bob, cy = credit_for(1024, FLOPS), credit_for(500, FLOPS), credit_for(7, FLOPS)
        first = math.log(2) / 7  # a first grant counts with BOINC's short-interval weight
        node = {r["node_id"]: r for r in got["node_totals"]}
        assert node[keys["ada"].node_id]["credit"] == pytest.approx(ada) and node[keys["ada"].node_id]["reports"] == 2
        assert node[keys["ada"].node_id]["rac"] == pytest.approx(ada * first)
        assert [(r["team"], r["reports"], r["samples"]) for r in got["team_totals"]] == [("lovelace", 3, 1524)]
        team = got["team_totals"][0]
        w = 0.5 ** (1 / 7)
        assert team["credit"] == pytest.approx(ada + bob)
        assert team["rac"] == pytest.approx(ada * first * w + (1 - w) * bob / 1)  # BOINC: avg·w + (1−w)·credit/Δdays
        assert [(r["swarm_id"], r["reports"], r["samples"]) for r in got["swarm_totals"]] == [("spirals", 4, 1531)]
        assert got["swarm_totals"][0]["credit"] == pytest.approx(ada + bob + cy)
        vol = {r["volunteer_id"]: r for r in got["volunteer_totals"]}
        assert sorted(round(r["credit"], 9) for r in vol.values()) == sorted(round(c, 9) for c in (ada, bob, cy))
        assert all(r["pending_credit"] == 0 and r["pending_reports"] == 0 for r in vol.values())
        assert await count(ledger, db.grants) == 4

    asyncio.run(scenario())


def test_a_failure_mid_transaction_changes_nothing(tmp_path, ledger_url, monkeypatch):
    async def scenario():
        ledger, ingestor, keys = await setup(tmp_path, ledger_url, ("ada", "lovelace"))
        await ledger.write(await ingest(ingestor, keys["ada"], (1, 1000)), now=T0)
        before = await totals(ledger), await count(ledger, db.reports), await count(ledger, db.grants)
        real = ledger_module._upsert_totals

        def fail_at_the_swarm(conn, table, sums, now):
            if table is db.swarm_totals:  # reports, grants, node/volunteer/team totals are already written
                raise RuntimeError("disk full")
            real(conn, table, sums, now)

        monkeypatch.setattr(ledger_module, "_upsert_totals", fail_at_the_swarm)
        with pytest.raises(RuntimeError):
            await ledger.write(await ingest(ingestor, keys["ada"], (2, 500)), now=T0 + timedelta(days=1))
        assert (await totals(ledger), await count(ledger, db.reports), await count(ledger, db.grants)) == before

    asyncio.run(scenario())


def test_pending_reports_count_as_pending_until_granted(tmp_path, ledger_url):
    async def scenario():
        ledger, ingestor, keys = await setup(tmp_path, ledger_url, ("ada", "lovelace"))
        batch = await ingest(ingestor, keys["ada"], (1, 1000), (2, 24))
        batch.grants[1]["status"] = "pending"  # e.g. its epoch is not confirmed yet
        await ledger.write(batch, now=T0)
        async with api_client(ledger) as client:
            detail = (await client.get("/api/v1/volunteers/ada")).json()
        assert detail["credit"] == pytest.approx(credit_for(1000, FLOPS))
        assert detail["pending_credit"] == pytest.approx(credit_for(24, FLOPS)) and detail["pending_reports"] == 1
        assert [(a["seq"], a["status"], a["rule"]) for a in detail["audit"]] == [(2, "pending", None), (1, "granted", CREDIT_RULE)]

        async with ledger.engine.connect() as conn:
            pending = (await conn.execute(select(db.reports.c.id).where(db.reports.c.status == "pending"))).scalars().all()
        assert await ledger.grant_pending(pending, now=T0) == 1
        assert await ledger.grant_pending(pending, now=T0) == 0  # already granted: nothing twice
        async with api_client(ledger) as client:
            detail = (await client.get("/api/v1/volunteers/ada")).json()
        assert detail["credit"] == pytest.approx(credit_for(1024, FLOPS)) and detail["reports"] == 2
        assert detail["pending_credit"] == 0 and detail["pending_reports"] == 0
        assert await count(ledger, db.grants) == 2

    asyncio.run(scenario())


def test_team_leaderboard_and_page_show_recent_average_credit(tmp_path, ledger_url):
    async def scenario():
        ledger, ingestor, keys = await setup(tmp_path, ledger_url, ("ada", "lovelace"), ("bob", "lovelace"), ("cy", "babbage"))
        day = datetime.now(timezone.utc) - timedelta(days=7)  # granted a week ago, idle since: RAC has halved
        await ledger.write(await ingest(ingestor, keys["ada"], (1, 1000)), now=day)
        await ledger.write(await ingest(ingestor, keys["bob"], (1, 1000)), now=day)
        await ledger.write(await ingest(ingestor, keys["cy"], (1, 10)), now=day)
        async with api_client(ledger) as client:
            teams = (await client.get("/api/v1/teams")).json()
            page = (await client.get("/")).text
            board = (await client.get("/api/v1/leaderboard")).json()
        assert teams["total"] == 2
        assert [(t["rank"], t["team"], t["members"], t["reports"]) for t in teams["teams"]] == [
            (1, "lovelace", 2, 2), (2, "babbage", 1, 1)]  # fmt: skip
        lovelace = teams["teams"][0]
        assert lovelace["credit"] == pytest.approx(2 * credit_for(1000, FLOPS))
        stored = credit_for(1000, FLOPS) * math.log(2) / 7 * 2  # two first grants in one batch of the team row
        assert lovelace["recent_average_credit"] == pytest.approx(stored / 2, rel=1e-3)
        assert board["volunteers"][0]["recent_average_credit"] == pytest.approx(stored / 4, rel=1e-3)
        assert ">RAC</th>" in page

    asyncio.run(scenario())


def test_a_ledger_from_before_grants_and_totals_is_upgraded_in_place(tmp_path, ledger_url):
    async def scenario():
        ledger, ingestor, keys = await setup(tmp_path, ledger_url, ("ada", "lovelace"), ("bob", None))
        await ledger.write(await ingest(ingestor, keys["ada"], (1, 1000), (2, 24)), now=T0)
        await ledger.write(await ingest(ingestor, keys["bob"], (1, 500)), now=T0)
        expected = await totals(ledger)
        async with ledger.engine.connect() as conn:  # back to a ledger from before migrations, grants, totals, teams
            await conn.run_sync(migrations.downgrade_to, migrations.BASELINE)
        async with ledger.engine.begin() as conn:
            for table in ("alembic_version", "grants", "node_totals", "team_totals", "swarm_totals", "team_actions",
                          "teams"):  # fmt: skip
                await conn.exec_driver_sql(f"DROP TABLE {table}")
            for column in ("rac", "rac_updated_at", "pending_credit", "pending_reports"):
                await conn.exec_driver_sql(f"ALTER TABLE volunteer_totals DROP COLUMN {column}")

        await db.create_schema(ledger.engine)
        async with ledger.engine.connect() as conn:
            assert await conn.run_sync(migrations.current_revision) == migrations.head_revision()
            founders = (await conn.execute(select(db.teams.c.name, db.teams.c.founder_id))).all()
        assert [(name, founder) for name, founder in founders] == [("lovelace", 1)]  # ada, its earliest member
        got = await totals(ledger)
        for table, key in (("node_totals", "node_id"), ("team_totals", "team"), ("swarm_totals", "swarm_id")):
            assert {r[key]: (round(r["credit"], 9), r["samples"], r["reports"]) for r in got[table]} == \
                   {r[key]: (round(r["credit"], 9), r["samples"], r["reports"]) for r in expected[table]}  # fmt: skip
        assert await count(ledger, db.grants, db.grants.c.rule == CREDIT_RULE) == 3
        rows, total = await queries.leaderboard(ledger.engine)
        assert total == 2 and [row["name"] for row in rows] == ["ada", "bob"]
        await db.create_schema(ledger.engine)  # a second start changes nothing
        assert await count(ledger, db.grants) == 3

    asyncio.run(scenario())
