"""Accounts through the JSON API, in-process (httpx ASGI client) on a real ledger (SQLite and PostgreSQL): one
account with several nodes, attach and account keys, detach, rotation, rename, and the claim of keys by a
volunteer from before accounts."""

import asyncio
import json
import time
from datetime import datetime, timezone

import pytest
from sqlalchemy import MetaData, Table, func, insert, select

from coordinator import accounts, db, migrations
from coordinator.accounts import AccountRefused
from coordinator.ingest import Ingestor
from coordinator.ledger import Batch
from protocol.envelope import seal
from protocol.messages import NodeAttach, TeamAction, VolunteerRegistration
from protocol.signing import SigningKey
from tests.coordinator.helpers import api_client, make_ledger, registration, report

ME, NODES, ROTATE, NAME, ACTIONS = ("/api/v1/accounts/me", "/api/v1/accounts/nodes", "/api/v1/accounts/attach-key",
                                    "/api/v1/accounts/name", "/api/v1/teams/actions")  # fmt: skip


def bearer(key: str | None) -> dict:
    return {"authorization": f"Bearer {key}"} if key else {}


def assert_error(response, status: int, code: str, words: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert words in body["error"]["message"] and "\n" not in body["error"]["message"], body


def attach_body(key: SigningKey, at: float | None = None, signer: SigningKey | None = None) -> bytes:
    return seal(NodeAttach(public_key=key.public_key, time=time.time() if at is None else at), signer or key)


def team_action(key: SigningKey, kind: str, team: str | None = None) -> bytes:
    return seal(TeamAction(action=kind, team=team, public_key=key.public_key, time=time.time()), key)


def run(tmp_path, url, scenario):
    async def main():
        ledger = await make_ledger(tmp_path, url)
        try:
            async with api_client(ledger) as client:
                await scenario(client, ledger)
        finally:
            await ledger.engine.dispose()

    asyncio.run(main())


async def earn(ledger, key: SigningKey, seq: int, samples: int = 1000) -> None:
    ingestor, batch = Ingestor(ledger, "127.0.0.1", 1), Batch()  # decisions only: no broker needed
    topic = f"hearth/v1/swarms/spirals/nodes/{key.node_id}/reports"
    outcome = await ingestor.handle(topic, seal(report(key, seq, samples), key), batch)
    await ledger.write(batch)
    return outcome


async def new_account(client, name: str) -> tuple[SigningKey, dict]:
    key = SigningKey.generate()
    created = await client.post("/api/v1/volunteers", content=registration(key, name))
    assert created.status_code == 201, created.text
    return key, created.json()


def test_keys_parse_and_are_random():
    assert accounts.parse_key("acct-12-abc") == ("acct", 12) and accounts.parse_key("attach-3-x-y_z") == ("attach", 3)
    for bad in ("", "acct", "acct-12", "acct-x-abc", "other-1-abc", "acct--abc", "acct-1" + "0" * 30 + "-a"):
        with pytest.raises(AccountRefused) as refused:
            accounts.parse_key(bad)
        assert refused.value.status == 401 and refused.value.code == "malformed_key"
    first, second = accounts.fresh_keys(7), accounts.fresh_keys(7)
    assert first[0]["account_key"] != second[0]["account_key"] and first[0]["account_key"].startswith("acct-7-")
    assert first[1]["account_key_hash"] == accounts.key_hash(first[0]["account_key"])
    assert len(first[0]["account_key"].split("-", 2)[2]) >= 43  # 32 random bytes


def test_one_account_several_nodes_and_totals(tmp_path, ledger_url):
    async def scenario(client, ledger):
        node_a, keys = await new_account(client, "alice")
        node_b = SigningKey.generate()
        attached = await client.post(NODES, content=attach_body(node_b), headers=bearer(keys["attach_key"]))
        assert attached.status_code == 201, attached.text
        assert attached.json() == {"volunteer": {"name": "alice", "team": None}, "node_id": node_b.node_id}
        again = await client.post(NODES, content=attach_body(node_b), headers=bearer(keys["attach_key"]))
        assert again.status_code == 200  # idempotent
        # B starting `hearth join` registers again: it is already alice's node, whatever name it sends.
        rejoined = await client.post("/api/v1/volunteers", content=registration(node_b, "someone-else"))
        assert rejoined.status_code == 200 and rejoined.json()["volunteer"]["name"] == "alice"
        assert "account_key" not in rejoined.json()

        assert await earn(ledger, node_a, 1, 1000) == "accepted"
        assert await earn(ledger, node_b, 1, 3000) == "accepted"
        assert await earn(ledger, node_b, 2, 500) == "accepted"

        for key in (keys["account_key"], keys["attach_key"]):  # either key reads the account
            me = (await client.get(ME, headers=bearer(key))).json()
            assert me["name"] == "alice" and [n["node_id"] for n in me["nodes"]] == [node_a.node_id, node_b.node_id]
        assert me["key"] == "attach" and [n["samples"] for n in me["nodes"]] == [1000, 3500]
        assert me["credit"] == pytest.approx(sum(n["credit"] for n in me["nodes"])) and me["credit"] > 0
        assert me["samples"] == 4500 and me["reports"] == 3

        # The volunteer's maintained total equals the sum over its nodes', in the tables themselves.
        async with ledger.engine.connect() as conn:
            v, vt, n, nt = db.volunteers, db.volunteer_totals, db.nodes, db.node_totals
            volunteer = (await conn.execute(select(vt.c.credit, vt.c.samples).join(v, v.c.id == vt.c.volunteer_id)
                                            .where(v.c.name == "alice"))).one()  # fmt: skip
            nodes = (await conn.execute(select(func.sum(nt.c.credit), func.sum(nt.c.samples))
                                        .join(n, n.c.node_id == nt.c.node_id).join(v, v.c.id == n.c.volunteer_id)
                                        .where(v.c.name == "alice"))).one()  # fmt: skip
            assert volunteer.credit == pytest.approx(nodes[0]) and volunteer.samples == nodes[1] == 4500
        public = (await client.get("/api/v1/volunteers/alice")).json()
        assert {node["node_id"] for node in public["nodes"]} == {node_a.node_id, node_b.node_id}
        assert public["credit"] == pytest.approx(me["credit"])
        assert "account_key_hash" not in json.dumps(public)

    run(tmp_path, ledger_url, scenario)


def test_wrong_and_weak_keys_are_refused(tmp_path, ledger_url):
    async def scenario(client, ledger):
        node_a, keys = await new_account(client, "alice")
        _, other = await new_account(client, "bob")
        node_b = SigningKey.generate()
        assert (await client.post(NODES, content=attach_body(node_b), headers=bearer(keys["attach_key"]))).status_code == 201
        wrong_secret = keys["attach_key"][:-4] + ("AAAA" if not keys["attach_key"].endswith("AAAA") else "BBBB")

        assert_error(await client.get(ME), 401, "missing_key", "needs your attach key or account key")
        assert_error(await client.get(ME, headers=bearer("hunter2")), 401, "malformed_key", "not a Hearth")
        assert_error(await client.get(ME, headers=bearer(wrong_secret)), 401, "wrong_key", "wrong attach key")
        assert_error(await client.get(ME, headers=bearer("acct-999-nosuchaccount")), 401, "wrong_key")
        fresh = SigningKey.generate()
        assert_error(await client.post(NODES, content=attach_body(fresh), headers=bearer(wrong_secret)), 401, "wrong_key")
        assert_error(await client.post(NODES, content=attach_body(fresh)), 401, "missing_key")

        # The weak key cannot detach, rotate or rename.
        weak = bearer(keys["attach_key"])
        for response in (await client.delete(f"{NODES}/{node_a.node_id}", headers=weak),
                         await client.post(ROTATE, headers=weak),
                         await client.post(NAME, json={"name": "mallory"}, headers=weak)):  # fmt: skip
            assert_error(response, 403, "account_key_needed", "needs the account key")

        # Node B's key alone (or with the attach key, or with another account's key) cannot change team.
        assert_error(await client.post(ACTIONS, content=team_action(node_b, "create", "Red")), 401, "missing_key")
        assert_error(await client.post(ACTIONS, content=team_action(node_b, "create", "Red"), headers=weak), 403,
                     "account_key_needed")  # fmt: skip
        assert_error(await client.post(ACTIONS, content=team_action(node_b, "create", "Red"),
                                       headers=bearer(other["account_key"])), 403, "other_account")  # fmt: skip
        # Signed by node B with alice's account key beside it: allowed (the CLI on a PC that holds both).
        created = await client.post(ACTIONS, content=team_action(node_b, "create", "Red"),
                                    headers=bearer(keys["account_key"]))  # fmt: skip
        assert created.status_code == 201 and created.json()["volunteer"] == "alice"
        assert (await client.get(ME, headers=weak)).json()["team"] == "Red"

        # Malformed attach requests: 4xx in the error shape, never 500.
        for body in (b"", b"[]", b"not json", attach_body(fresh, signer=SigningKey.generate()),
                     attach_body(fresh, at=time.time() - 600)):  # fmt: skip
            response = await client.post(NODES, content=body, headers=weak)
            assert 400 <= response.status_code < 500 and set(response.json()) == {"error"}, response.text
        assert_error(await client.delete(f"{NODES}/not-a-node", headers=bearer(keys["account_key"])), 400,
                     "invalid_node_id")  # fmt: skip
        assert_error(await client.post(NAME, json={"name": "bad\x00name"}, headers=bearer(keys["account_key"])),
                     422, "invalid_request")  # fmt: skip

    run(tmp_path, ledger_url, scenario)


def test_rotate_detach_rename(tmp_path, ledger_url):
    async def scenario(client, ledger):
        node_a, keys = await new_account(client, "alice")
        node_b, node_c = SigningKey.generate(), SigningKey.generate()
        strong = bearer(keys["account_key"])
        assert (await client.post(NODES, content=attach_body(node_b), headers=bearer(keys["attach_key"]))).status_code == 201

        rotated = await client.post(ROTATE, headers=strong)
        assert rotated.status_code == 200 and rotated.json()["attach_key"] != keys["attach_key"]
        assert_error(await client.post(NODES, content=attach_body(node_c), headers=bearer(keys["attach_key"])),
                     401, "wrong_key", "rotated")  # fmt: skip
        assert (await client.post(NODES, content=attach_body(node_c),
                                  headers=bearer(rotated.json()["attach_key"]))).status_code == 201  # fmt: skip
        assert await earn(ledger, node_b, 1) == "accepted"  # attached before the rotation: still reports

        # A node of another account cannot be attached here.
        bob_node, _ = await new_account(client, "bob")
        assert_error(await client.post(NODES, content=attach_body(bob_node), headers=strong), 409,
                     "node_in_other_account")  # fmt: skip
        assert_error(await client.delete(f"{NODES}/{bob_node.node_id}", headers=strong), 404, "unknown_node")

        detached = await client.delete(f"{NODES}/{node_b.node_id}", headers=strong)
        assert detached.status_code == 200 and detached.json()["detached"] is True
        assert await earn(ledger, node_b, 2) != "accepted"  # its key is revoked
        assert_error(await client.post("/api/v1/volunteers", content=registration(node_b, "alice")), 403,
                     "node_detached")  # fmt: skip
        assert_error(await client.post(NODES, content=attach_body(node_b), headers=strong), 403, "node_detached")
        assert_error(await client.delete(f"{NODES}/{node_b.node_id}", headers=strong), 404, "unknown_node")
        me = (await client.get(ME, headers=strong)).json()
        by_id = {n["node_id"]: n for n in me["nodes"]}
        assert by_id[node_b.node_id]["detached_at"] and by_id[node_b.node_id]["credit"] > 0  # its credit stays
        assert me["credit"] == pytest.approx(sum(n["credit"] for n in me["nodes"]))
        public = {n["node_id"]: n["detached"] for n in (await client.get("/api/v1/volunteers/alice")).json()["nodes"]}
        assert public == {node_a.node_id: False, node_b.node_id: True, node_c.node_id: False}
        await ledger.load()  # a restarted coordinator does not take its reports either
        assert node_b.node_id not in ledger.nodes and node_a.node_id in ledger.nodes

        assert_error(await client.post(NAME, json={"name": "bob"}, headers=strong), 409, "name_taken")
        renamed = await client.post(NAME, json={"name": "  Alice Liddell "}, headers=strong)
        assert renamed.json() == {"name": "Alice Liddell", "previous_name": "alice"}
        assert (await client.get("/api/v1/volunteers/Alice Liddell")).status_code == 200

    run(tmp_path, ledger_url, scenario)


def test_a_volunteer_from_before_accounts_claims_keys_once(tmp_path, ledger_url):
    """A ledger at the baseline revision (no key columns) with a volunteer and node, upgraded to head: the node
    fetches its account's keys once with a fresh signed registration; a stale copy claims nothing."""

    async def main():
        ledger = await make_ledger(tmp_path, ledger_url)
        key = SigningKey.generate()
        try:
            async with ledger.engine.connect() as conn:
                await conn.run_sync(migrations.downgrade_to, migrations.BASELINE)
            async with ledger.engine.begin() as conn:  # written as the baseline's code did: no key columns
                now, volunteer_id = datetime.now(timezone.utc), 1000
                await conn.execute(insert(_baseline(db.volunteers)).values(id=volunteer_id, name="old-timer",
                                                                            created_at=now))  # fmt: skip
                await conn.execute(insert(_baseline(db.volunteer_totals)).values(volunteer_id=volunteer_id))
                await conn.execute(insert(_baseline(db.nodes)).values(
                    node_id=key.node_id, public_key=key.public_key, volunteer_id=volunteer_id, device="",
                    online=False, last_seq=0, created_at=now))  # fmt: skip
            await db.create_schema(ledger.engine)
            await ledger.load()
            async with api_client(ledger) as client:
                stale = seal(VolunteerRegistration(name="old-timer", public_key=key.public_key,
                                                   time=time.time() - 3600), key)  # fmt: skip
                answer = await client.post("/api/v1/volunteers", content=stale)
                assert answer.status_code == 200 and "account_key" not in answer.json()
                claimed = await client.post("/api/v1/volunteers", content=registration(key, "old-timer"))
                assert claimed.status_code == 200 and claimed.json()["account_key"].startswith(f"acct-{volunteer_id}-")
                assert (await client.get(ME, headers=bearer(claimed.json()["account_key"]))).json()["name"] == "old-timer"
                again = await client.post("/api/v1/volunteers", content=registration(key, "old-timer"))
                assert again.status_code == 200 and "account_key" not in again.json()  # once only
        finally:
            await ledger.engine.dispose()

    asyncio.run(main())


def _baseline(table):
    """The table without the columns accounts added (absent at the baseline revision)."""
    added = {"account_key_hash", "attach_key_hash", "detached_at"}
    return Table(table.name, MetaData(), *[c._copy() for c in table.columns if c.name not in added])
