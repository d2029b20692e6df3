"""`hearth account export` and `hearth account delete` (coordinator/privacy.py): the export holds everything about
the volunteer; after erasure no personal value of theirs is left in any table (every row of every table is read
back), nor in the stats exports or the public API, while every total stays as it was. In-process on SQLite and
PostgreSQL, and the CLI against a real `hearth coordinator serve`."""

import asyncio
import gzip
import json
import time

from datetime import datetime, timezone

import aiomqtt
from sqlalchemy import func, insert, select, update

from coordinator import db
from coordinator.broker_acl import COORDINATOR_USER, load_or_create_secret, password_for
from coordinator.exports import write_exports
from coordinator.ingest import Ingestor
from coordinator.ledger import Batch
from node import accounts as node_accounts
from node.identity import NodeIdentity
from node.instance import InstanceLock
from protocol.envelope import seal
from protocol.messages import ContributionReport, NodeStatus
from protocol.signing import SigningKey
from protocol.topics import status_topic
from tests.conftest import run_hearth
from tests.coordinator.helpers import api_client, broker_login, make_ledger, registration, status, wait_for
from tests.coordinator.test_accounts import ACTIONS, NODES, assert_error, attach_body, bearer, team_action

EXPORT, ME = "/api/v1/accounts/me/export", "/api/v1/accounts/me"
PEER_IDS = {"alice": "QmAlicePeerXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX1", "alice-2": "QmAlicePeerYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYYY2",
            "bob": "QmBobPeerZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ3"}  # fmt: skip
DEVICE = "cpu-alices-thinkpad"  # what a node may put in `device`: shown nowhere, erased with the account


async def send(ledger, key: SigningKey, message) -> str:
    ingestor, batch = Ingestor(ledger, "127.0.0.1", 1), Batch()  # decisions only: no broker needed
    kind = "status" if isinstance(message, NodeStatus) else "reports"
    outcome = await ingestor.handle(f"hearth/v1/swarms/spirals/nodes/{key.node_id}/{kind}", seal(message, key), batch)
    await ledger.write(batch)
    return outcome


def contribution(key: SigningKey, seq: int, samples: int, device: str = "cpu") -> ContributionReport:
    return ContributionReport(node_id=key.node_id, swarm_id="spirals", seq=seq, epoch=seq, samples=samples,
                              compute_seconds=2.0, device=device, time=time.time())  # fmt: skip


async def seed(client, ledger) -> dict:
    """alice (two PCs, founder of team red, a team action, a rejected replay) and bob (team red)."""
    alice, alice_2, bob = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    created = await client.post("/api/v1/volunteers", content=registration(alice, "alice"))
    assert created.status_code == 201, created.text
    keys = created.json()
    assert (await client.post(ACTIONS, content=team_action(alice, "create", "red"),
                              headers=bearer(keys["account_key"]))).status_code == 201  # fmt: skip
    assert (await client.post(NODES, content=attach_body(alice_2), headers=bearer(keys["attach_key"]))).status_code == 201
    assert (await client.post("/api/v1/volunteers", content=registration(bob, "bob", "red"))).status_code == 201
    for seq, samples in enumerate((1000, 2500), start=1):
        assert await send(ledger, alice, contribution(alice, seq, samples, DEVICE)) == "accepted"
    assert await send(ledger, alice_2, contribution(alice_2, 1, 4000, "cuda:0")) == "accepted"
    assert await send(ledger, bob, contribution(bob, 1, 700)) == "accepted"
    assert await send(ledger, alice, contribution(alice, 2, 2500, DEVICE)) == "replayed"  # a rejected message
    status = NodeStatus(node_id=alice.node_id, swarm_id="spirals", state="online", time=time.time(), device=DEVICE)
    assert await send(ledger, alice, status) == "status"
    async with ledger.engine.begin() as conn:
        for name, key in (("alice", alice), ("alice-2", alice_2), ("bob", bob)):
            await conn.execute(update(db.nodes).where(db.nodes.c.node_id == key.node_id).values(peer_id=PEER_IDS[name]))
        await conn.execute(insert(db.node_trust).values(node_id=alice.node_id, passes_in_row=2, audits=2, failures=0))
        await conn.execute(insert(db.audits).values(
            node_id=alice_2.node_id, swarm_id="spirals", epoch=1, state_epoch=0, seed=7, batch_size=32, digest_size=64,
            status="passed", requested_at=datetime.now(timezone.utc)))  # fmt: skip
        hashes = (await conn.execute(select(db.volunteers.c.account_key_hash, db.volunteers.c.attach_key_hash)
                                     .where(db.volunteers.c.name == "alice"))).one()  # fmt: skip
        action_hashes = (await conn.execute(select(db.team_actions.c.body_sha256))).scalars().all()
    personal = {"alice", DEVICE, PEER_IDS["alice"], PEER_IDS["alice-2"], *hashes, *action_hashes}
    for key in (alice, alice_2):
        personal |= {key.public_key, key.node_id}
    return {"alice": alice, "alice_2": alice_2, "bob": bob, "keys": keys, "personal": personal}


async def every_value(engine) -> list[str]:
    """Every value of every row of every table, as text."""
    values = []
    async with engine.connect() as conn:
        for table in db.metadata.sorted_tables:
            for row in await conn.execute(select(table)):
                values += [str(value) for value in row]
    return values


async def totals(engine) -> dict:
    async with engine.connect() as conn:
        out = {}
        for table, key in ((db.team_totals, "team"), (db.swarm_totals, "swarm_id")):
            out[table.name] = sorted((r[key], round(r["credit"], 9), r["samples"], r["reports"])
                                     for r in (await conn.execute(select(table))).mappings())  # fmt: skip
        for table in (db.volunteer_totals, db.node_totals):
            sums = (await conn.execute(select(func.sum(table.c.credit), func.sum(table.c.samples),
                                              func.sum(table.c.reports), func.count()))).one()  # fmt: skip
            out[table.name] = (round(sums[0], 9), sums[1], sums[2], sums[3])
        trust = tuple((await conn.execute(select(func.count(), func.sum(db.node_trust.c.audits)))).one())
        out["audits"] = (trust, sorted((await conn.execute(select(db.audits.c.status))).scalars()))
        count, samples, credit = (await conn.execute(select(func.count(), func.sum(db.reports.c.samples),
                                                            func.sum(db.reports.c.credit)))).one()  # fmt: skip
        out["reports"] = (count, int(samples), round(credit, 9))
    return out


def leaks(texts: list[str], personal: set[str]) -> list[tuple[str, str]]:
    return [(secret, text[:120]) for text in texts for secret in personal if secret in text]


def test_export_then_erasure_leaves_aggregates_only(tmp_path, ledger_url):
    async def main():
        ledger = await make_ledger(tmp_path, ledger_url)
        try:
            async with api_client(ledger) as client:
                await scenario(client, ledger)
        finally:
            await ledger.engine.dispose()

    async def scenario(client, ledger):
        seeded = await seed(client, ledger)
        alice, alice_2, keys = seeded["alice"], seeded["alice_2"], seeded["keys"]

        # The export: everything, and only with the account key.
        assert_error(await client.get(EXPORT, headers=bearer(keys["attach_key"])), 403, "account_key_needed")
        assert_error(await client.get(EXPORT), 401, "missing_key")
        data = (await client.get(EXPORT, headers=bearer(keys["account_key"]))).json()
        assert data["volunteer"]["name"] == "alice" and data["team"] == {"name": "red", "founder": True,
                                                                         "created_at": data["team"]["created_at"]}
        nodes = {n["node_id"]: n for n in data["nodes"]}
        assert set(nodes) == {alice.node_id, alice_2.node_id}
        assert nodes[alice.node_id]["public_key"] == alice.public_key and nodes[alice.node_id]["device"] == DEVICE
        assert nodes[alice_2.node_id]["peer_id"] == PEER_IDS["alice-2"] and nodes[alice_2.node_id]["totals"]["samples"] == 4000
        assert sorted(r["samples"] for r in data["reports"]) == [1000, 2500, 4000]
        assert {g["report_id"] for g in data["grants"]} == {r["id"] for r in data["reports"]}
        assert [m["reason"] for m in data["rejected_messages"]] == ["replayed"]
        assert [a["action"] for a in data["team_actions"]] == ["create"] and data["totals"]["samples"] == 7500
        assert "bob" not in json.dumps(data)
        assert [a["node_id"] for a in data["audits"]] == [alice_2.node_id] and data["node_trust"][0]["audits"] == 2
        exported_before = json.dumps(data)

        before = await totals(ledger.engine)
        assert leaks(await every_value(ledger.engine), seeded["personal"])  # the scan finds what is there

        assert_error(await client.delete(ME, headers=bearer(keys["attach_key"])), 403, "account_key_needed")
        erased = await client.delete(ME, headers=bearer(keys["account_key"]))
        assert erased.status_code == 200 and erased.json() == {"erased": True, "nodes": 2, "reports": 3}

        assert leaks(await every_value(ledger.engine), seeded["personal"]) == []
        assert await totals(ledger.engine) == before
        exports = await write_exports(ledger.engine, tmp_path / "exports")
        texts = [gzip.decompress((tmp_path / "exports" / name).read_bytes()).decode() for name in exports["files"]]
        assert leaks(texts, seeded["personal"]) == []
        public = [(await client.get(path)).text for path in
                  ("/api/v1/leaderboard", "/api/v1/teams", "/api/v1/teams/red", "/api/v1/stats", "/", "/teams/red")]
        placeholder = (await client.get("/api/v1/leaderboard")).json()["volunteers"]
        placeholder = next(v["name"] for v in placeholder if v["name"] != "bob")
        assert placeholder.startswith("deleted-")
        public += [(await client.get(f"/api/v1/volunteers/{placeholder}")).text, (await client.get(f"/volunteers/{placeholder}")).text]
        assert leaks(public, seeded["personal"]) == [] and "bob" in public[0]

        # The keys open nothing now; the erased nodes may not report; the name is free again.
        assert_error(await client.get(ME, headers=bearer(keys["account_key"])), 401, "wrong_key")
        assert_error(await client.get(ME, headers=bearer(keys["attach_key"])), 401, "wrong_key")
        assert await send(ledger, alice_2, contribution(alice_2, 2, 100)) == "unknown_sender"
        assert (await client.post("/api/v1/volunteers", content=registration(SigningKey.generate(), "alice"))).status_code == 201
        assert "alice" in exported_before  # (the export taken before stays the volunteer's own copy)

    asyncio.run(main())


def test_cli_export_and_delete(coordinator, tmp_path):
    """`hearth account export -o FILE` and `hearth account delete --yes` on a real coordinator: the file holds the
    account; delete erases it there and removes this PC's identity files."""
    folder = tmp_path / "pc"
    identity = NodeIdentity.load_or_create(folder)
    name = f"erase-me-{identity.node_id[:6]}"
    answer = coordinator.api.post("/api/v1/volunteers", content=registration(identity.key, name))
    assert answer.status_code == 201, answer.text
    node_accounts.save_keys(folder, answer.json())
    identity.remember(name, None)
    common = ("--coordinator", coordinator.url, "--data-dir", str(folder))

    out = tmp_path / "me.json"
    result = run_hearth("account", "export", "-o", str(out), *common)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert data["volunteer"]["name"] == name and [n["public_key"] for n in data["nodes"]] == [identity.key.public_key]
    assert out.stat().st_mode & 0o077 == 0

    running = InstanceLock(folder)  # as a node running on this identity holds it
    running.acquire()
    try:
        busy = run_hearth("account", "delete", "--yes", *common)
    finally:
        running.release()
    assert busy.returncode != 0 and "stop it first" in busy.stderr and "Traceback" not in busy.stderr
    refused = run_hearth("account", "delete", *common, input="n\n")
    assert refused.returncode != 0 and "Aborted" in refused.stderr
    assert coordinator.get(f"/api/v1/volunteers/{name}")["name"] == name

    result = run_hearth("account", "delete", "--yes", *common)
    assert result.returncode == 0, result.stderr
    assert f"Erased {name!r}" in result.stdout and "account.key" in result.stdout
    assert coordinator.api.get(f"/api/v1/volunteers/{name}").status_code == 404
    assert not (folder / "node.key").exists() and not (folder / "account.key").exists()
    again = run_hearth("account", "export", *common)
    assert again.returncode != 0 and "no account key" in again.stderr and "Traceback" not in again.stderr


def test_erasure_clears_the_nodes_retained_broker_messages(coordinator, swarm):
    """A node's retained presence (and receipts) name its old node id on the broker: erasure deletes them."""
    key = SigningKey.generate()
    name = f"retained-{key.node_id[:6]}"
    answer = coordinator.api.post("/api/v1/volunteers", content=registration(key, name))
    assert answer.status_code == 201, answer.text
    registered, swarm_id = answer.json(), swarm["swarm_id"]
    host, port = coordinator.info["broker_url"].removeprefix("mqtt://").split(":")
    operator = {"username": COORDINATOR_USER,
                "password": password_for(load_or_create_secret(coordinator.data_dir), COORDINATOR_USER)}  # fmt: skip

    async def retained_topics() -> list[str]:
        """The old node id's retained topics: what a subscriber gets before a retained sentinel subscribed after."""
        sentinel = f"hearth/v1/test-sentinel/{key.node_id}"
        async with aiomqtt.Client(host, int(port), **operator) as client:
            await client.publish(sentinel, b"end", qos=1, retain=True)
            await client.subscribe(f"hearth/v1/swarms/+/nodes/{key.node_id}/#", qos=1)
            await client.subscribe(sentinel, qos=1)
            topics = []
            async with asyncio.timeout(30):
                async for message in client.messages:
                    if str(message.topic) == sentinel:
                        return topics
                    topics.append(str(message.topic))

    async def scenario():
        presence = status_topic(swarm_id, key.node_id)
        async with aiomqtt.Client(host, int(port), **broker_login(registered)) as node:
            await node.publish(presence, seal(status(key, swarm_id=swarm_id), key), qos=1, retain=True)
        assert set(await retained_topics()) == {presence}  # amqtt repeats retained messages per SUBSCRIBE
        await wait_for(lambda: coordinator.get(f"/api/v1/volunteers/{name}")["nodes"][0]["swarm_id"] == swarm_id,
                       what="the coordinator to take the presence")  # fmt: skip
        erased = coordinator.api.request("DELETE", ME, headers=bearer(registered["account_key"]))
        assert erased.status_code == 200, erased.text
        assert await retained_topics() == []

    asyncio.run(scenario())
