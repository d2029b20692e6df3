"""Task assets on the coordinator: operator uploads (streamed past the API's body limit, stored once by sha256),
immutable downloads with Range, and a tiny-lm swarm whose text becomes shards listed in its manifest."""

import asyncio
import hashlib
from contextlib import asynccontextmanager

import httpx
import pytest

from coordinator.api import Services
from coordinator.app import create_app
from coordinator.assets import AssetStore
from hearth.tasks.text import generate_text
from tests.coordinator.helpers import make_ledger

TOKEN = "operator-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SMALL_LM = {"layers": 1, "d_model": 32, "heads": 2, "seq_len": 32, "shard_kb": 8}


@asynccontextmanager
async def client_for(tmp_path, max_bytes: int = 10**9):
    ledger = await make_ledger(tmp_path)
    store = AssetStore(tmp_path / "assets", max_bytes=max_bytes)
    app = create_app(Services(ledger, "mqtt://127.0.0.1:1883", TOKEN, assets=store))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            client.store = store
            yield client
    finally:
        await ledger.engine.dispose()


async def upload(client, content: bytes) -> dict:
    response = await client.post("/api/v1/assets", content=content, headers=AUTH)
    assert response.status_code == 201, response.text
    return response.json()


def test_upload_is_stored_once_by_digest_and_served_immutable_with_ranges(tmp_path):
    async def scenario():
        content = generate_text(200 * 1024, seed=1)  # over the API's 64 KiB body limit for everything else
        digest = hashlib.sha256(content).hexdigest()
        async with client_for(tmp_path) as client:
            refused = await client.post("/api/v1/assets", content=b"x", headers={"Authorization": "Bearer wrong"})
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
            first, again = await upload(client, content), await upload(client, content)
            assert first == again == {"sha256": digest, "size": len(content), "url": f"/api/v1/assets/{digest}"}
            assert sorted(p.name for p in client.store.root.iterdir()) == [digest]  # no second copy, no temporary left

            whole = await client.get(first["url"])
            assert whole.status_code == 200 and whole.content == content
            assert "immutable" in whole.headers["cache-control"] and whole.headers["accept-ranges"] == "bytes"
            part = await client.get(first["url"], headers={"Range": "bytes=100-199"})
            assert part.status_code == 206 and part.content == content[100:200]

            for wrong in ("0" * 64, "not-a-digest", digest.upper()):
                missing = await client.get(f"/api/v1/assets/{wrong}")
                assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_asset"

    asyncio.run(scenario())


def test_an_upload_over_the_stores_limit_is_refused_and_nothing_is_kept(tmp_path):
    async def scenario():
        async with client_for(tmp_path, max_bytes=1000) as client:
            response = await client.post("/api/v1/assets", content=b"y" * 1001, headers=AUTH)
            assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"
            assert list(client.store.root.iterdir()) == []
            # Other routes keep the API's body limit: the exemption is the upload path alone.
            big = await client.post("/api/v1/swarms", content=b"{" + b" " * 70_000 + b"}", headers=AUTH)
            assert big.status_code == 413

    asyncio.run(scenario())


def test_a_tiny_lm_swarm_lists_its_text_as_shards_and_a_held_out_part(tmp_path):
    async def scenario():
        text = generate_text(40 * 1024, seed=2)
        async with client_for(tmp_path) as client:
            uploaded = await upload(client, text)
            body = {"swarm_id": "lm", "task": "tiny-lm", "task_options": SMALL_LM, "assets": {"text": uploaded["sha256"]}}
            response = await client.post("/api/v1/swarms", json=body, headers=AUTH)
            assert response.status_code == 201, response.text
            manifest = response.json()
            names = [asset["name"] for asset in manifest["assets"]]
            assert names == ["text-0000", "text-0001", "text-0002", "text-0003", "text-0004", "text-heldout"]
            parts = []
            for asset in manifest["assets"]:
                served = await client.get(asset["url"])
                assert hashlib.sha256(served.content).hexdigest() == asset["sha256"] and len(served.content) == asset["size"]
                parts.append(served.content)
            assert b"".join(parts) == text  # the shards, then the held-out end: nothing lost or repeated
            assert len(parts[-1]) == len(text) // 10
            assert manifest["task_options"] == SMALL_LM
            fetched = (await client.get("/api/v1/swarms/lm")).json()
            assert fetched["assets"] == manifest["assets"]

    asyncio.run(scenario())


@pytest.mark.parametrize("body, message", [
    ({"task": "lm-finetune"}, "needs the asset(s) checkpoint"),
    ({"task": "tiny-lm", "assets": {"pictures": "UPLOADED"}}, "takes no asset pictures; it takes: text"),
    ({"task": "tiny-lm", "assets": {"text": "0" * 64}}, "nothing was uploaded with sha256"),
    ({"task": "tiny-lm", "task_options": {"d_model": 30, "heads": 4}}, "must be a multiple of heads"),
    ({"task": "tiny-lm", "task_options": {"depth": 3}}, "has no option(s) depth"),
    ({"task": "lm-finetune", "task_options": {"layers": 2}, "assets": {"checkpoint": "UPLOADED"}}, "drop layers"),
])  # fmt: skip
def test_a_swarm_whose_files_or_options_do_not_fit_its_task_is_refused_with_the_reason(tmp_path, body, message):
    async def scenario():
        async with client_for(tmp_path) as client:
            uploaded = await upload(client, generate_text(4096, seed=3))
            assets = {name: uploaded["sha256"] if value == "UPLOADED" else value for name, value in body.get("assets", {}).items()}
            response = await client.post("/api/v1/swarms", json={"swarm_id": "bad", **body, "assets": assets}, headers=AUTH)
            assert response.status_code == 400, response.text
            assert response.json()["error"]["code"] == "invalid_swarm" and message in response.json()["error"]["message"]

    asyncio.run(scenario())
