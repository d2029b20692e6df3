"""Teams through the JSON API, in-process (httpx ASGI client) over a real SQLite and PostgreSQL ledger."""

import asyncio
import json
import time

from coordinator.ingest import Ingestor
from coordinator.ledger import Batch
from protocol.envelope import seal
from protocol.messages import TeamAction
from protocol.signing import SigningKey
from tests.coordinator.helpers import api_client, make_ledger, registration, report

ACTIONS = "/api/v1/teams/actions"


def assert_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"], body


def action(key: SigningKey, kind: str, team: str | None = None, at: float | None = None, signer=None) -> bytes:
    message = TeamAction(action=kind, team=team, public_key=key.public_key, time=time.time() if at is None else at)
    return seal(message, signer or key)


async def post_action(client, body: bytes):
    """POST a signed team action with the account key of the signing node's account, as `hearth team` sends it."""
    try:
        public_key = json.loads(json.loads(body)["body"]).get("public_key")
    except (ValueError, KeyError, TypeError, AttributeError):
        public_key = None
    account_key = client.account_keys.get(public_key)
    return await client.post(ACTIONS, content=body, headers={"authorization": f"Bearer {account_key}"} if account_key else {})


def run(tmp_path, url, scenario):
    async def main():
        ledger = await make_ledger(tmp_path, url)
        async with api_client(ledger) as client:
            keys, client.account_keys = {}, {}
            for name in ("alice", "bob", "carol"):
                keys[name] = SigningKey.generate()
                registered = await client.post("/api/v1/volunteers", content=registration(keys[name], name))
                assert registered.status_code == 201
                client.account_keys[keys[name].public_key] = registered.json()["account_key"]
            await scenario(client, keys, ledger)
        await ledger.engine.dispose()

    asyncio.run(main())


def test_create_join_leave_and_founder(tmp_path, ledger_url):
    async def scenario(client, keys, ledger):
        created = await post_action(client, action(keys["alice"], "create", " Red  "))
        assert created.status_code == 201, created.text
        assert created.json() == {"volunteer": "alice", "action": "create", "team": "Red", "previous_team": None,
                                  "founder": True}  # fmt: skip
        joined = await post_action(client, action(keys["bob"], "join", "Red"))
        assert joined.status_code == 200 and joined.json()["founder"] is False
        team = (await client.get("/api/v1/teams/Red")).json()
        assert team["founder"] == "alice" and team["members"] == ["alice", "bob"] and team["members_total"] == 2
        assert team["credit"] == 0.0 and team["recent_average_credit"] == 0.0 and team["created_at"]

        # The founder may leave; the team and its founder stay.
        left = await post_action(client, action(keys["alice"], "leave"))
        assert left.status_code == 200 and left.json()["team"] is None and left.json()["previous_team"] == "Red"
        team = (await client.get("/api/v1/teams/Red")).json()
        assert team["founder"] == "alice" and team["members"] == ["bob"]
        assert (await client.get("/api/v1/volunteers/alice")).json()["team"] is None
        assert_error(await post_action(client, action(keys["alice"], "leave")), 409, "not_in_team")

        # At most one team: joining another leaves the first.
        assert (await post_action(client, action(keys["carol"], "create", "Blue"))).status_code == 201
        moved = await post_action(client, action(keys["bob"], "join", "Blue"))
        assert moved.json()["previous_team"] == "Red" and moved.json()["team"] == "Blue"
        assert (await client.get("/api/v1/teams/Red")).json()["members"] == []
        assert (await client.get("/api/v1/teams/Blue")).json()["members"] == ["bob", "carol"]

    run(tmp_path, ledger_url, scenario)


def test_refusals_use_the_error_shape(tmp_path, ledger_url):
    async def scenario(client, keys, ledger):
        assert (await post_action(client, action(keys["alice"], "create", "Red"))).status_code == 201
        assert_error(await post_action(client, action(keys["bob"], "create", "Red")), 409, "team_exists")
        assert_error(await post_action(client, action(keys["bob"], "join", "Nope")), 404, "unknown_team")
        assert_error(await client.get("/api/v1/teams/Nope"), 404, "unknown_team")

        # Signed by another key than the one named: forged.
        forged = action(keys["bob"], "leave", signer=SigningKey.generate())
        assert_error(await post_action(client, forged), 400, "bad_signature")
        # A valid signature by a key nobody registered.
        assert_error(await post_action(client, action(SigningKey.generate(), "join", "Red")), 403,
                     "not_registered")  # fmt: skip
        # Stale or from the future (more than 5 minutes off).
        for at in (time.time() - 301, time.time() + 301):
            assert_error(await post_action(client, action(keys["bob"], "join", "Red", at=at)), 400, "stale")
        # A replay of an applied action is refused, even after the state it set changed back.
        signed = action(keys["bob"], "join", "Red")
        assert (await post_action(client, signed)).status_code == 200
        assert (await post_action(client, action(keys["bob"], "leave"))).status_code == 200
        assert_error(await post_action(client, signed), 409, "replayed")
        assert (await client.get("/api/v1/volunteers/bob")).json()["team"] is None

        # Malformed input: 4xx, never 500.
        bad_name = json.dumps({"body": json.dumps({"kind": "team_action", "protocol_version": 1, "action": "join",
                                                   "team": "a\x00b", "public_key": keys["bob"].public_key,
                                                   "time": time.time()}), "sig": "x"})  # fmt: skip
        for body in (b"", b"not json", b"[]", b'{"body": "{}", "sig": "x"}', bad_name.encode(),
                     action(keys["bob"], "join", "Red").replace(b'\\"join\\"', b'\\"steal\\"')):  # fmt: skip
            response = await post_action(client, body)
            assert 400 <= response.status_code < 500, (body, response.text)
            assert set(response.json()) == {"error"}

    run(tmp_path, ledger_url, scenario)


def test_join_needs_a_name_and_names_are_validated():
    key = SigningKey.generate()
    for team in (None, "", "x" * 41, "bad\nname"):
        try:
            TeamAction(action="join", team=team, public_key=key.public_key, time=time.time())
        except ValueError:
            continue
        raise AssertionError(f"team {team!r} was accepted")
    assert TeamAction(action="leave", public_key=key.public_key, time=1.0).team is None


def test_registration_with_a_team_joins_or_creates_it(tmp_path, ledger_url):
    async def scenario(client, keys, ledger):
        dave, erin = SigningKey.generate(), SigningKey.generate()
        assert (await client.post("/api/v1/volunteers", content=registration(dave, "dave", "Green"))).status_code == 201
        assert (await client.post("/api/v1/volunteers", content=registration(erin, "erin", "Green"))).status_code == 201
        team = (await client.get("/api/v1/teams/Green")).json()
        assert team["founder"] == "dave" and team["members"] == ["dave", "erin"]
        assert_error(await post_action(client, action(keys["alice"], "create", "Green")), 409, "team_exists")

    run(tmp_path, ledger_url, scenario)


def test_credit_stays_with_the_team_it_was_earned_in(tmp_path, ledger_url):
    async def scenario(client, keys, ledger):
        ingestor, alice = Ingestor(ledger, "127.0.0.1", 1), keys["alice"]
        topic = f"hearth/v1/swarms/spirals/nodes/{alice.node_id}/reports"

        async def earn(seq: int) -> None:
            batch = Batch()
            assert await ingestor.handle(topic, seal(report(alice, seq, 1000), alice), batch) == "accepted"
            await ledger.write(batch)

        assert (await post_action(client, action(alice, "create", "Red"))).status_code == 201
        await earn(1)
        assert (await post_action(client, action(keys["bob"], "create", "Blue"))).status_code == 201
        assert (await post_action(client, action(alice, "join", "Blue"))).status_code == 200
        await earn(2)
        red, blue = [(await client.get(f"/api/v1/teams/{n}")).json() for n in ("Red", "Blue")]
        assert red["credit"] == blue["credit"] > 0 and red["reports"] == blue["reports"] == 1
        assert red["members"] == [] and blue["recent_average_credit"] > 0

    run(tmp_path, ledger_url, scenario)
