"""Stats exports (coordinator/exports.py): files read back with gzip + json/csv over a real SQLite and PostgreSQL ledger, the
routes in-process, the scheduler, and the export of a real `hearth coordinator serve` process."""

import asyncio
import csv
import gzip
import hashlib
import io
import json
from datetime import datetime, timezone

from sqlalchemy import insert, update

from coordinator import db, queries
from coordinator.exports import COLUMNS, FILES, ExportScheduler, write_exports
from coordinator.ingest import Ingestor
from coordinator.ledger import Batch
from hearth.processes import wait_until
from protocol.envelope import seal
from protocol.signing import SigningKey
from tests.coordinator.helpers import api_client, make_ledger, registration, report, wait_for
from tests.coordinator.test_api import assert_error

PEOPLE = {"ann": ("red", [1000, 500]), "bob": ("red", [70_000]), "cy": ("blue", [300]), "dee": (None, [])}
PRIVATE = {"public_key", "peer_id", "node_id", "ip", "addr", "address", "host", "hostname", "device", "device_name"}


async def seed(client, ledger) -> dict[str, SigningKey]:
    """Volunteers with teams and granted reports, a second node for ann, and one node on a GPU."""
    keys = {name: SigningKey.generate() for name in PEOPLE}
    for name, (team, _) in PEOPLE.items():
        assert (await client.post("/api/v1/volunteers", content=registration(keys[name], name, team))).status_code == 201
    ingestor, batch = Ingestor(ledger, "127.0.0.1", 1), Batch()
    for name, (_, amounts) in PEOPLE.items():
        for seq, amount in enumerate(amounts, start=1):
            topic = f"hearth/v1/swarms/spirals/nodes/{keys[name].node_id}/reports"
            assert await ingestor.handle(topic, seal(report(keys[name], seq, amount), keys[name]), batch) == "accepted"
    await ledger.write(batch)
    async with ledger.engine.begin() as conn:
        ann_id = (await conn.execute(db.volunteers.select().where(db.volunteers.c.name == "ann"))).first().id
        await conn.execute(insert(db.nodes).values(
            node_id="f" * 32, public_key="k" * 64, volunteer_id=ann_id, peer_id="12D3KooWsecret", device="",
            online=False, last_seq=0, created_at=datetime.now(timezone.utc)))  # fmt: skip
        await conn.execute(update(db.nodes).where(db.nodes.c.node_id == keys["bob"].node_id).values(device="cuda:0"))
    return keys


def read_export(directory, kind: str) -> tuple[list[dict], list[dict]]:
    """(rows of the JSON file, rows of the CSV file), after checking both carry exactly the public columns."""
    with gzip.open(directory / f"{kind}.json.gz", "rt", encoding="utf-8") as f:
        document = json.load(f)
    with gzip.open(directory / f"{kind}.csv.gz", "rt", encoding="utf-8", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert tuple(document["columns"]) == COLUMNS[kind]
    assert all(tuple(row) == COLUMNS[kind] for row in document[kind])
    assert all(tuple(row) == COLUMNS[kind] for row in csv_rows)
    assert not PRIVATE & set(COLUMNS[kind])
    return document[kind], csv_rows


def test_exports_match_the_ledger(tmp_path, ledger_url):
    async def scenario():
        ledger = await make_ledger(tmp_path, ledger_url)
        async with api_client(ledger) as client:
            keys = await seed(client, ledger)
        out = tmp_path / "exports"
        index = await write_exports(ledger.engine, out)
        board, total = await queries.leaderboard(ledger.engine, limit=1000)
        return keys, index, board, total

    keys, index, board, total = asyncio.run(scenario())
    out = tmp_path / "exports"
    assert sorted(p.name for p in out.iterdir()) == sorted([*FILES, "index.json"])  # no temporary files left
    assert json.loads((out / "index.json").read_text()) == index
    for name in FILES:
        assert index["files"][name]["sha256"] == hashlib.sha256((out / name).read_bytes()).hexdigest()
    assert index["rows"] == {"volunteers": 4, "teams": 2, "nodes": 5} and total == 4

    volunteers, volunteers_csv = read_export(out, "volunteers")
    assert [v["name"] for v in volunteers] == [e["name"] for e in board]  # same order as the leaderboard
    for row, entry in zip(volunteers, board):
        assert (row["team"], row["total_credit"], row["total_samples"], row["reports"]) == (
            entry["team"], entry["credit"], entry["samples"], entry["reports"])  # fmt: skip
        assert row["last_seen"] == entry["last_seen"] and row["created_at"]
    assert {v["name"]: v["nodes"] for v in volunteers} == {"ann": 2, "bob": 1, "cy": 1, "dee": 1}
    assert [(r["name"], float(r["total_credit"]), r["team"]) for r in volunteers_csv] == [
        (v["name"], v["total_credit"], v["team"] or "") for v in volunteers]  # fmt: skip

    teams, teams_csv = read_export(out, "teams")
    expected = {}
    for entry in board:
        if entry["team"]:
            members, credit = expected.get(entry["team"], (0, 0.0))
            expected[entry["team"]] = (members + 1, credit + entry["credit"])
    assert {t["team"]: (t["members"], t["total_credit"]) for t in teams} == expected
    assert [t["team"] for t in teams] == ["red", "blue"]
    assert [(r["team"], int(r["members"])) for r in teams_csv] == [(t["team"], t["members"]) for t in teams]

    nodes, nodes_csv = read_export(out, "nodes")
    by_fingerprint = {n["node"]: n for n in nodes}
    assert set(by_fingerprint) == {k.node_id[:8] for k in keys.values()} | {"f" * 8}
    bob = by_fingerprint[keys["bob"].node_id[:8]]
    assert (bob["volunteer"], bob["device_type"], bob["total_samples"], bob["reports"]) == ("bob", "cuda", 70_000, 1)
    assert bob["total_credit"] == next(e["credit"] for e in board if e["name"] == "bob")
    assert sum(n["total_credit"] for n in nodes if n["volunteer"] == "ann") == next(e["credit"] for e in board if e["name"] == "ann")
    assert len(nodes_csv) == 5
    everything = b"".join(gzip.decompress((out / name).read_bytes()) for name in FILES)
    for key in keys.values():  # nothing identifying beyond the 8-hex fingerprint
        assert key.public_key.encode() not in everything and key.node_id.encode() not in everything
    assert b"12D3KooWsecret" not in everything and b"k" * 64 not in everything


def test_routes_and_scheduler(tmp_path, ledger_url):
    async def scenario():
        ledger = await make_ledger(tmp_path, ledger_url)
        async with api_client(ledger) as client:
            assert_error(await client.get("/api/v1/exports/"), 503, "exports_unavailable")
            out = tmp_path / "exports"
            client.services.exports_dir = out
            assert_error(await client.get("/api/v1/exports/"), 503, "exports_not_ready")
            assert_error(await client.get("/api/v1/exports/volunteers.csv.gz"), 503, "exports_not_ready")
            assert_error(await client.get("/api/v1/exports/ledger.sqlite3"), 404, "unknown_export")
            assert_error(await client.get("/api/v1/exports/..%2Fledger.sqlite3"), 404, "not_found")
            await seed(client, ledger)

            async def exported() -> bool:
                return (out / "index.json").exists()

            scheduler = ExportScheduler(ledger.engine, out, interval=3600, first_delay=0)
            scheduler.start()
            try:
                await wait_for(exported, what="the first export")
            finally:
                await scheduler.stop()

            index = await client.get("/api/v1/exports/")
            assert index.status_code == 200 and index.headers["content-type"] == "application/json"
            assert index.json()["rows"]["volunteers"] == 4
            for name in FILES:
                response = await client.get(f"/api/v1/exports/{name}")
                assert response.status_code == 200 and response.headers["content-type"] == "application/gzip"
                assert hashlib.sha256(response.content).hexdigest() == index.json()["files"][name]["sha256"]
            teams = json.loads(gzip.decompress((await client.get("/api/v1/exports/teams.json.gz")).content))
            assert {t["team"] for t in teams["teams"]} == {"red", "blue"}

    asyncio.run(scenario())


def test_served_by_a_real_coordinator(coordinator):
    api = coordinator.api

    def index():
        response = api.get("/api/v1/exports/")
        assert response.status_code in (200, 503), response.text
        return response.status_code == 200 and response.json()

    found = wait_until(index, 60, what="the coordinator's first stats export")
    assert set(found["files"]) == set(FILES) and found["rows"]["volunteers"] >= 0
    assert (coordinator.data_dir / "exports" / "index.json").is_file()
    gz = api.get("/api/v1/exports/volunteers.csv.gz")
    assert gz.status_code == 200 and gz.headers["content-type"] == "application/gzip"
    header = next(csv.reader(io.StringIO(gzip.decompress(gz.content).decode())))
    assert tuple(header) == COLUMNS["volunteers"]
    assert api.get("/api/v1/exports/nope.json").status_code == 404
