"""The JSON API and the page, in-process (httpx ASGI client) over a real SQLite and PostgreSQL ledger."""

import asyncio
import math
from urllib.parse import quote

from coordinator.ingest import Ingestor
from coordinator.ledger import FLOPS_PER_CREDIT, Batch
from protocol.envelope import seal
from protocol.messages import SwarmManifest
from protocol.signing import SigningKey
from tests.coordinator.helpers import FLOPS, api_client, make_ledger, registration, report

XSS = "<script>alert(1)</script>"


def assert_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"], body


def test_registration(tmp_path, ledger_url):
    async def scenario():
        ledger = await make_ledger(tmp_path, ledger_url)
        async with api_client(ledger) as client:
            alice = SigningKey.generate()
            created = await client.post("/api/v1/volunteers", content=registration(alice, "alice", "red"))
            assert created.status_code == 201, created.text
            answer = created.json()
            assert answer.pop("account_key").startswith("acct-") and answer.pop("attach_key").startswith("attach-")
            assert answer == {"volunteer": {"name": "alice", "team": "red"}, "node_id": alice.node_id}

            again = await client.post("/api/v1/volunteers", content=registration(alice, "alice", "red"))
            assert again.status_code == 200 and again.json() == answer  # keys are shown once only

            mallory = SigningKey.generate()
            assert_error(await client.post("/api/v1/volunteers", content=registration(mallory, "alice")), 409, "name_taken")

            # Signed by a key other than the one it registers: no proof of possession.
            forged = seal(_reg(mallory.public_key, "mallory"), SigningKey.generate())
            assert_error(await client.post("/api/v1/volunteers", content=forged), 400, "bad_signature")
            assert_error(await client.post("/api/v1/volunteers", content=b"not json"), 400, "malformed")

            xss = await client.post("/api/v1/volunteers", content=registration(SigningKey.generate(), XSS))
            assert xss.status_code == 201 and xss.json()["volunteer"]["name"] == XSS
            detail = await client.get("/api/v1/volunteers/" + quote(XSS, safe=""))
            assert detail.status_code == 200 and detail.json()["name"] == XSS

            page = await client.get("/")
            assert page.status_code == 200 and "text/html" in page.headers["content-type"]
            assert XSS not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text

            stats = (await client.get("/api/v1/stats")).json()
            assert stats["volunteers"] == 2 and stats["nodes"] == 2

    asyncio.run(scenario())


def _reg(public_key: str, name: str):
    import time

    from protocol.messages import VolunteerRegistration

    return VolunteerRegistration(name=name, public_key=public_key, time=time.time())


def test_credit_rule_totals_and_leaderboard(tmp_path, ledger_url):
    async def scenario():
        ledger = await make_ledger(tmp_path, ledger_url)
        ingestor = Ingestor(ledger, "127.0.0.1", 1)  # decisions only: no broker needed
        async with api_client(ledger) as client:
            keys = {name: SigningKey.generate() for name in ("low", "high", "none")}
            for name, key in keys.items():
                assert (await client.post("/api/v1/volunteers", content=registration(key, name))).status_code == 201
            batch = Batch()
            samples = {"low": [1000, 24], "high": [70_000]}
            for name, amounts in samples.items():
                for seq, amount in enumerate(amounts, start=1):
                    payload = seal(report(keys[name], seq, amount), keys[name])
                    topic = f"hearth/v1/swarms/spirals/nodes/{keys[name].node_id}/reports"
                    assert await ingestor.handle(topic, payload, batch) == "accepted"
            await ledger.write(batch)

            board = (await client.get("/api/v1/leaderboard")).json()
            assert [e["name"] for e in board["volunteers"]] == ["high", "low", "none"]
            assert [e["rank"] for e in board["volunteers"]] == [1, 2, 3] and board["total"] == 3
            low = board["volunteers"][1]
            assert low["samples"] == 1024 and low["reports"] == 2
            assert low["credit"] == 1000 * FLOPS / 4.32e11 + 24 * FLOPS / 4.32e11
            assert FLOPS_PER_CREDIT == 4.32e11
            # just granted: BOINC's first-grant weight ln2/7 per day, decayed by the seconds since
            assert abs(low["recent_average_credit"] / (low["credit"] * math.log(2) / 7) - 1) < 1e-3
            assert board["volunteers"][2]["recent_average_credit"] == 0
            page2 = (await client.get("/api/v1/leaderboard", params={"limit": 1, "offset": 1})).json()
            assert [(e["rank"], e["name"]) for e in page2["volunteers"]] == [(2, "low")]
            found = (await client.get("/api/v1/leaderboard", params={"search": "h", "limit": 1})).json()  # a full page: counted
            assert [(e["rank"], e["name"]) for e in found["volunteers"]] == [(1, "high")] and found["total"] == 1
            past = (await client.get("/api/v1/leaderboard", params={"search": "n", "offset": 5})).json()
            assert past["volunteers"] == [] and past["total"] == 1

            detail = (await client.get("/api/v1/volunteers/high")).json()
            assert detail["credit"] == 70_000 * FLOPS / 4.32e11
            assert [(a["seq"], a["status"], a["credit"]) for a in detail["audit"]] == [(1, "granted", 70_000 * FLOPS / 4.32e11)]
            assert detail["nodes"][0]["node_id"] == keys["high"].node_id and detail["nodes"][0]["last_seq"] == 1

            assert_error(await client.get("/api/v1/leaderboard", params={"limit": 0}), 422, "invalid_request")
            assert_error(await client.get("/api/v1/volunteers/nobody"), 404, "unknown_volunteer")
            assert_error(await client.get("/no/such/page"), 404, "not_found")

    asyncio.run(scenario())


def test_manifest_and_operator_swarm_creation(tmp_path, ledger_url):
    async def scenario():
        ledger = await make_ledger(tmp_path, ledger_url)
        async with api_client(ledger, token="s3cret") as client:
            response = await client.get("/api/v1/swarms/spirals")
            assert response.status_code == 200
            manifest = SwarmManifest.model_validate_json(response.content)
            assert manifest.flops_per_sample == FLOPS and manifest.access == "open"
            assert manifest.broker_url == "mqtt://127.0.0.1:1883"
            listed = (await client.get("/api/v1/swarms")).json()["swarms"]
            assert [s["swarm_id"] for s in listed] == ["spirals"] and "progress" in listed[0]
            assert_error(await client.get("/api/v1/swarms/nope"), 404, "unknown_swarm")
            progress = (await client.get("/api/v1/swarms/spirals/progress")).json()
            assert progress["peers_online"] == 0

            body = {"swarm_id": "big-spirals", "task": "spirals", "target_batch_size": 8192, "average_state_every": 4}
            assert_error(await client.post("/api/v1/swarms", json=body), 401, "unauthorized")
            wrong = {"Authorization": "Bearer nope"}
            assert_error(await client.post("/api/v1/swarms", json=body, headers=wrong), 401, "unauthorized")
            auth = {"Authorization": "Bearer s3cret"}
            created = await client.post("/api/v1/swarms", json=body, headers=auth)
            assert created.status_code == 201, created.text
            new = SwarmManifest.model_validate_json(created.content)
            assert new.hyperparameters.target_batch_size == 8192 and new.run_id.startswith("hearth-big-spirals-")
            assert new.hyperparameters.average_state_every == 4 and manifest.hyperparameters.average_state_every == 1
            assert new.flops_per_sample == FLOPS
            assert_error(await client.post("/api/v1/swarms", json=body, headers=auth), 409, "swarm_exists")
            bad_task = {"swarm_id": "x", "task": "no-such-task"}
            assert_error(await client.post("/api/v1/swarms", json=bad_task, headers=auth), 400, "unknown_task")
            assert_error(await client.post("/api/v1/swarms", json={"swarm_id": "Bad Id"}, headers=auth), 422, "invalid_request")

            private = {"swarm_id": "private-tabular", "task": "tabular", "access": "token", "compression": "int8",
                       "local_updates": True, "warmup_epochs": 3, "task_options": {"hidden": 8}, "data": "local",
                       "privacy": {"clip_norm": 1.0, "noise_multiplier": 1.1, "delta": 1e-5, "epsilon_budget": 8}}  # fmt: skip
            created = await client.post("/api/v1/swarms", json=private, headers=auth)
            assert created.status_code == 201, created.text
            served = SwarmManifest.model_validate_json((await client.get("/api/v1/swarms/private-tabular")).content)
            assert served.access == "token" and served.data == "local" and served.task_options == {"hidden": 8}
            assert (served.hyperparameters.compression, served.hyperparameters.local_updates) == ("int8", True)
            assert served.hyperparameters.warmup_epochs == 3 and served.privacy.epsilon_budget == 8
            bad_privacy = {**private, "swarm_id": "p2", "privacy": {**private["privacy"], "delta": 2}}
            assert_error(await client.post("/api/v1/swarms", json=bad_privacy, headers=auth), 422, "invalid_request")
            shared_with_privacy = {**private, "swarm_id": "p3", "data": "shared"}
            assert_error(await client.post("/api/v1/swarms", json=shared_with_privacy, headers=auth), 400, "invalid_swarm")
            local_spirals = {"swarm_id": "p4", "data": "local"}
            assert_error(await client.post("/api/v1/swarms", json=local_spirals, headers=auth), 400, "invalid_swarm")

    asyncio.run(scenario())
