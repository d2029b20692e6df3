"""Volunteer privacy of the coordinator's public output, and the retention of network identities
(coordinator/privacy.py). A ledger is seeded with everything a node can hand the coordinator (keys, peer ids, a
device string naming the PC, a reachability check from a distinctive address); then every public GET route of the
API (all of /api/openapi.json but the keyed account routes), every website page and every stats export is read and
must carry none of it."""

import asyncio
import gzip
import re
import time
from datetime import datetime, timedelta, timezone

import httpx
from sqlalchemy import select, update

from coordinator import db
from coordinator.api import Services
from coordinator.app import create_app
from coordinator.exports import FILES, write_exports
from coordinator.monitor import DHTMonitor, ProgressSnapshot
from coordinator.privacy import RetentionSweeper, app_rate_limiters, forget_peer_ids, forget_unknown_senders
from coordinator.ratelimit import RateLimiter
from coordinator.reachability import ReachabilityProber
from hearth.progress import PeerProgress, SwarmProgress
from protocol.signing import SigningKey
from tests.coordinator.helpers import make_ledger, registration
from tests.coordinator.test_erasure import contribution, send

REQUESTER = "198.51.100.23"  # the address every request of this test comes from
NODE_ADDRESS = "/ip4/203.0.113.77/tcp/31337"
DEVICE = "cpu-bobs-desktop-SN4711"
PEERS = ["QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", "QmPZ9gcCEpqKTo6aq61g2nXGUhM4iCL3ewB6LDXZCtioEB"]
PAGES = ["/", "/?view=teams", "/?sort=rac&q=b", "/volunteers/bob", "/teams/blue", "/swarms", "/swarms/spirals", "/join"]


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def seed(client, ledger) -> set[str]:
    keys = {name: SigningKey.generate() for name in ("bob", "cy")}
    secrets_ = set()
    for name, key in keys.items():
        created = await client.post("/api/v1/volunteers", content=registration(key, name, "blue"))
        assert created.status_code == 201, created.text
        secrets_ |= {key.public_key, created.json()["account_key"], created.json()["attach_key"]}
        assert await send(ledger, key, contribution(key, 1, 900, DEVICE)) == "accepted"
    async with ledger.engine.begin() as conn:
        for key, peer in zip(keys.values(), PEERS):
            await conn.execute(update(db.nodes).where(db.nodes.c.node_id == key.node_id).values(peer_id=peer, device=DEVICE))
        secrets_ |= set((await conn.execute(select(db.volunteers.c.account_key_hash))).scalars())
    return secrets_ | set(PEERS) | {DEVICE, NODE_ADDRESS, "203.0.113.77", REQUESTER}


def public_paths(openapi: dict) -> list[str]:
    """Every GET path of the API with its parameters filled with seeded values; keyed account routes left out."""
    fill = {"swarm_id": "spirals", "epoch": "latest"}
    paths = []
    for path, operations in openapi["paths"].items():
        if "get" not in operations or path.startswith("/api/v1/accounts"):
            continue
        if "{name}" in path and path.startswith("/api/v1/exports"):
            paths += [path.replace("{name}", name) for name in (*FILES, "index.json")]
            continue
        name = "blue" if path.startswith("/api/v1/teams") else "bob"
        paths.append(re.sub(r"\{(\w+)(:path)?\}", lambda m: fill.get(m.group(1), name), path))
    return paths


def test_public_output_carries_no_keys_addresses_or_device_names(tmp_path):
    async def main():
        ledger = await make_ledger(tmp_path)
        monitor = DHTMonitor()  # not started: its latest progress read, as the dashboards see it
        peers = [PeerProgress(peer_id=peer, epoch=1, samples_accumulated=10, samples_per_second=50.0, time=time.time(),
                              client_mode=False) for peer in PEERS]  # fmt: skip
        monitor.progress["spirals"] = ProgressSnapshot(SwarmProgress(epoch=1, peers=peers), time.time())
        prober = ReachabilityProber(allowed_scopes=("public",))
        services = Services(ledger, "mqtt://127.0.0.1:1883", "operator-secret", monitor=monitor, reachability=prober,
                            exports_dir=tmp_path / "exports")  # fmt: skip
        app = create_app(services)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=(REQUESTER, 4242))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                secrets_ = await seed(client, ledger)
                # a reachability check names the node's address; the answer goes to the node alone
                check = await client.post("/api/v1/reachability", json={"peer_id": PEERS[0], "addrs": [NODE_ADDRESS]})
                assert check.status_code == 200 and check.json()["reachable"] is False
                await write_exports(ledger.engine, tmp_path / "exports")
                paths = public_paths((await client.get("/api/openapi.json")).json()) + PAGES + ["/metrics", "/healthz"]
                assert "/api/v1/volunteers/bob/reports" in paths and "/api/v1/exports/nodes.csv.gz" in paths
                statuses = {}
                for path in paths:
                    answer = await client.get(path)
                    body = gzip.decompress(answer.content).decode() if path.endswith(".gz") else answer.text
                    leaked = [s for s in secrets_ if s in body]
                    assert leaked == [], (path, leaked)
                    statuses[path] = answer.status_code
                read = [path for path, status in statuses.items() if status == 200]  # (others need keys, uploads…)
                assert {"/api/v1/volunteers/bob", "/api/v1/volunteers/bob/reports", "/api/v1/teams/blue/members",
                        "/api/v1/leaderboard", "/api/v1/stats", "/api/v1/exports/nodes.json.gz", "/metrics",
                        *PAGES} <= set(read), statuses  # fmt: skip
                detail = (await client.get("/api/v1/volunteers/bob")).json()
                assert detail["nodes"][0]["device"] == "" and detail["audit"][0]["device"] == ""
                progress = (await client.get("/api/v1/swarms/spirals/progress")).json()
                assert [p["peer_id"] for p in progress["peers"]] == [peer[-8:] for peer in PEERS]
        finally:
            await ledger.engine.dispose()

    asyncio.run(main())


def test_retention_forgets_peer_ids_and_addresses(tmp_path):
    async def main():
        ledger = await make_ledger(tmp_path)
        try:
            await scenario(ledger, [SigningKey.generate() for _ in range(3)])
        finally:
            await ledger.engine.dispose()

    async def scenario(ledger, keys):
        services = Services(ledger, "mqtt://127.0.0.1:1883", "operator-secret")
        clock = Clock()
        app = create_app(services, rate_limit=5.0, clock=clock)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=(REQUESTER, 4242))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for i, key in enumerate(keys):
                assert (await client.post("/api/v1/volunteers", content=registration(key, f"v{i}"))).status_code == 201
        now = datetime.now(timezone.utc)
        states = [(False, now - timedelta(hours=30)), (False, now - timedelta(hours=2)), (True, now - timedelta(hours=30))]
        async with ledger.engine.begin() as conn:
            for key, peer, (online, seen) in zip(keys, PEERS + ["QmThird"], states):
                await conn.execute(update(db.nodes).where(db.nodes.c.node_id == key.node_id)
                                   .values(peer_id=peer, online=online, last_seen=seen))  # fmt: skip
        assert await forget_peer_ids(ledger.engine, timedelta(hours=24)) == 1
        async with ledger.engine.connect() as conn:
            kept = dict((await conn.execute(select(db.nodes.c.node_id, db.nodes.c.peer_id))).all())
        assert kept == {keys[0].node_id: None, keys[1].node_id: PEERS[1], keys[2].node_id: "QmThird"}

        # an erased PC still running: its reports are refused and recorded under the id it claims, for a while
        stranger = SigningKey.generate()
        assert await send(ledger, stranger, contribution(stranger, 1, 100)) == "unknown_sender"
        assert await forget_unknown_senders(ledger.engine, timedelta(hours=24)) == 0  # recent: kept
        assert await forget_unknown_senders(ledger.engine, timedelta(hours=24), now + timedelta(hours=25)) == 1
        async with ledger.engine.connect() as conn:
            assert (await conn.execute(select(db.rejected_messages.c.node_id))).scalars().all() == []

        limiters = app_rate_limiters(app)
        assert [len(limiter) for limiter in limiters] == [1]  # the requester's bucket
        prober = ReachabilityProber(allowed_scopes=("public",))
        await prober.check(PEERS[0], ["/ip4/10.9.9.9/tcp/4001"], REQUESTER)
        sweeper = RetentionSweeper(ledger.engine, 24.0, limiters, prober)
        await sweeper.sweep()
        assert len(limiters[0]) == 1 and REQUESTER in str(prober._clients._hits)  # still limiting: kept
        clock.now += 60  # the bucket refilled; the checks' windows (≤ 60 s) passed
        assert limiters[0].forget_idle() == 1 and len(limiters[0]) == 0
        assert prober.forget_idle(now=time.monotonic() + 61) >= 2
        assert REQUESTER not in str(prober._clients._hits) and PEERS[0] not in str(prober._peers._hits)

    asyncio.run(main())
