"""The rankings behind the leaderboard (coordinator/rankings.py) and the API's sort and search, in process
(httpx ASGI client) over a real SQLite ledger written through the Ledger API."""

import asyncio

from coordinator import rankings
from coordinator.rankings import rankings_for
from tests.coordinator.helpers import api_client, make_ledger, wait_for
from tests.web.server import grant, register


def names(body: dict) -> list[str]:
    return [entry["name"] for entry in body["volunteers"]]


def test_small_ledgers_rank_exactly_after_every_grant(tmp_path):
    async def scenario():
        ledger = await make_ledger(tmp_path)
        nodes = {name: await register(ledger, name) for name in ("ada", "bob", "cy")}
        for name, samples in (("ada", 3000), ("bob", 2000), ("cy", 1000)):
            await grant(ledger, nodes[name], samples)
        async with api_client(ledger) as client:
            board = (await client.get("/api/v1/leaderboard")).json()
            assert names(board) == ["ada", "bob", "cy"] and [e["rank"] for e in board["volunteers"]] == [1, 2, 3]
            await grant(ledger, nodes["cy"], 5000)  # cy overtakes: the very next read shows it
            assert names((await client.get("/api/v1/leaderboard")).json()) == ["cy", "ada", "bob"]
            await register(ledger, "dee")  # a new volunteer, no credit yet: last
            body = (await client.get("/api/v1/leaderboard?limit=2&offset=2")).json()
            assert names(body) == ["bob", "dee"] and body["total"] == 4
            assert [e["rank"] for e in body["volunteers"]] == [3, 4]
            assert (await client.get("/api/v1/leaderboard?offset=900")).json()["volunteers"] == []
        await ledger.engine.dispose()

    asyncio.run(scenario())


def test_sort_by_recent_average_credit_and_search_by_name(tmp_path):
    async def scenario():
        ledger = await make_ledger(tmp_path)
        nodes = {name: await register(ledger, name) for name in ("old-timer", "newcomer", "next")}
        await grant(ledger, nodes["old-timer"], 9000, days_ago=60)  # most credit, but idle for two months
        await grant(ledger, nodes["newcomer"], 2000)
        await grant(ledger, nodes["next"], 1000)
        async with api_client(ledger) as client:
            assert names((await client.get("/api/v1/leaderboard")).json()) == ["old-timer", "newcomer", "next"]
            by_rac = (await client.get("/api/v1/leaderboard?sort=rac")).json()
            assert names(by_rac) == ["newcomer", "next", "old-timer"]
            rac = [e["recent_average_credit"] for e in by_rac["volunteers"]]
            assert rac == sorted(rac, reverse=True)
            found = (await client.get("/api/v1/leaderboard?search=ne")).json()
            assert names(found) == ["newcomer", "next"] and [e["rank"] for e in found["volunteers"]] == [2, 3]
            assert (await client.get("/api/v1/leaderboard?search=zzz")).json()["volunteers"] == []
            refused = await client.get("/api/v1/leaderboard?sort=name")
            assert refused.status_code == 422 and refused.json()["error"]["code"] == "invalid_request"
        await ledger.engine.dispose()

    asyncio.run(scenario())


def test_search_pages_count_their_matches(tmp_path):
    async def scenario():
        ledger = await make_ledger(tmp_path)
        nodes = {name: await register(ledger, name) for name in ("sam", "sara", "sol", "ted")}
        for samples, name in enumerate(nodes, start=1):
            await grant(ledger, nodes[name], 1000 * samples)
        async with api_client(ledger) as client:
            pages = [(await client.get(f"/api/v1/leaderboard?search=s&limit=2&offset={offset}")).json()
                     for offset in (0, 2, 4)]  # fmt: skip
            assert [names(page) for page in pages] == [["sam", "sara"], ["sol"], []]
            assert [page["total"] for page in pages] == [3, 3, 3]  # a full page, the short last one, past the end
            assert pages[0]["next"] is not None and pages[1]["next"] is None
            assert [e["rank"] for e in pages[0]["volunteers"] + pages[1]["volunteers"]] == [4, 3, 2]
            alone = (await client.get("/api/v1/leaderboard?search=te")).json()
            assert names(alone) == ["ted"] and alone["total"] == 1
        await ledger.engine.dispose()

    asyncio.run(scenario())


def test_large_ledgers_serve_the_previous_order_while_rebuilding(tmp_path, monkeypatch):
    monkeypatch.setattr(rankings, "EXACT_UP_TO", 0)  # behave as a large ledger
    monkeypatch.setattr(rankings, "AGE_PER_BUILD_SECOND", 0.0)  # and may be redone at once

    async def scenario():
        ledger = await make_ledger(tmp_path)
        nodes = {name: await register(ledger, name) for name in ("ada", "bob")}
        await grant(ledger, nodes["ada"], 2000)
        await grant(ledger, nodes["bob"], 1000)
        ranked = rankings_for(ledger.engine)
        first = await ranked.current()
        assert first.page("credit", 0, 10) == [nodes["ada"]["volunteer_id"], nodes["bob"]["volunteer_id"]]
        await grant(ledger, nodes["bob"], 5000)
        assert (await ranked.current()) is first  # answered at once with the previous order; a rebuild started

        async def reordered() -> bool:
            snapshot = await ranked.current()
            return snapshot.page("credit", 0, 1) == [nodes["bob"]["volunteer_id"]]

        await wait_for(reordered, timeout=10, what="the background rebuild")
        assert (await ranked.current()).rank(nodes["ada"]["volunteer_id"]) == 2
        await ledger.engine.dispose()

    asyncio.run(scenario())
