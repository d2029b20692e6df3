"""A real `hearth coordinator serve --db postgresql+asyncpg://…` process: it migrates the empty database at
start, registers a volunteer and credits a report sent over its broker; a database it cannot reach is one line."""

import asyncio
import time

import aiomqtt
from sqlalchemy import func, select
from sqlalchemy.pool import NullPool

from coordinator import db, migrations
from hearth.processes import wait_until
from protocol.envelope import seal
from protocol.signing import SigningKey
from protocol.topics import report_topic
from scripts.postgres import free_port
from tests.conftest import CoordinatorProcess, run_hearth
from tests.coordinator.helpers import broker_login, registration, report


def test_serve_on_postgresql_registers_and_credits_a_report(tmp_path, postgres_url):
    # --no-verify-work: the report below stands for no training, so the (default) work check would never grant it
    coordinator = CoordinatorProcess(tmp_path / "data", "--db", postgres_url, "--no-verify-work")
    try:
        key = SigningKey.generate()
        registered = coordinator.api.post("/api/v1/volunteers", content=registration(key, "pat", "elephants"))
        assert registered.status_code == 201, registered.text

        async def publish() -> None:
            host, port = coordinator.info["broker_url"].removeprefix("mqtt://").split(":")
            async with aiomqtt.Client(host, int(port), **broker_login(registered.json())) as client:
                await client.publish(report_topic("spirals", key.node_id), seal(report(key, seq=1, samples=432), key), qos=1)

        asyncio.run(publish())
        board = wait_until(lambda: (b := coordinator.get("/api/v1/leaderboard"))["volunteers"] and
                           b["volunteers"][0]["credit"] > 0 and b, 30, what="the report to be credited")  # fmt: skip
        assert [(v["name"], v["team"], v["reports"]) for v in board["volunteers"]] == [("pat", "elephants", 1)]
        assert coordinator.get("/api/v1/teams/elephants")["credit"] == board["volunteers"][0]["credit"]
    finally:
        assert coordinator.stop() == 0, coordinator.log_path.read_text()

    async def stored() -> tuple:
        engine = db.create_engine(postgres_url, poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                revision = await conn.run_sync(migrations.current_revision)
                counts = [(await conn.execute(select(func.count()).select_from(t))).scalar_one()
                          for t in (db.reports, db.grants, db.volunteers)]  # fmt: skip
            return revision, counts
        finally:
            await engine.dispose()

    assert asyncio.run(stored()) == (migrations.head_revision(), [1, 1, 1])


def test_an_unreachable_database_is_a_one_line_error(tmp_path):
    url = f"postgresql+asyncpg://hearth:secret@127.0.0.1:{free_port()}/ledger"
    started = time.monotonic()
    result = run_hearth("coordinator", "serve", "--data-dir", str(tmp_path / "data"), "--port", "0", "--broker-port", "0",
                        "--dht-port", "0", "--db", url, timeout=120)  # fmt: skip
    assert result.returncode != 0 and time.monotonic() - started < 120
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: cannot open the ledger database postgresql+asyncpg://hearth:***@127.0.0.1:"), result.stderr
    assert "Traceback" not in result.stderr and "secret" not in result.stderr
