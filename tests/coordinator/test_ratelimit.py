"""Per-IP token buckets: the arithmetic with a fake clock, then 429 and recovery through a real uvicorn; the
stricter budget of account actions (registration, attach, team actions) per client address."""

import asyncio
import time

import httpx
import pytest

from coordinator.api import Services
from coordinator.app import create_app
from coordinator.config import CoordinatorConfig
from coordinator.metrics import CoordinatorMetrics
from coordinator.ratelimit import RateLimiter, TokenBucket, describe_rate, is_account_action, parse_rate
from protocol.envelope import seal
from protocol.messages import NodeAttach, TeamAction
from protocol.signing import SigningKey
from tests.conftest import CoordinatorProcess, run_hearth
from tests.coordinator.helpers import make_ledger, registration
from tests.coordinator.live_server import live_server


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_bucket_bursts_then_refills_at_its_rate():
    bucket = TokenBucket(rate=2.0, capacity=3.0, tokens=3.0, updated=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)  # one token every 1/rate s
    assert bucket.take(0.25) == pytest.approx(0.25)  # a refused request takes nothing
    assert bucket.take(0.5) == 0.0
    assert bucket.take(100.0) == 0.0 and bucket.tokens == pytest.approx(2.0)  # refills up to capacity only


def test_limiter_keeps_one_bucket_per_client():
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=2, clock=clock)
    assert [limiter.check("a") for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]
    assert limiter.check("b") == 0.0  # another address is not slowed down by "a"
    clock.now += 1.0
    assert limiter.check("a") == 0.0 and limiter.check("a") > 0


def test_limiter_forgets_the_least_recent_client_beyond_its_size():
    clock = FakeClock()
    limiter = RateLimiter(rate=1.0, burst=1, clock=clock, max_clients=2)
    limiter.check("a"), limiter.check("b"), limiter.check("a"), limiter.check("c")
    assert len(limiter) == 2
    assert limiter.check("a") > 0  # kept: seen recently, bucket empty
    assert limiter.check("b") == 0.0  # forgotten, so a fresh bucket


def test_default_burst_and_refusals():
    assert RateLimiter(rate=20.0).burst == 100.0
    assert RateLimiter(rate=0.1).burst == 1.0
    with pytest.raises(ValueError):
        RateLimiter(rate=0)


def test_rate_option_parsing():
    assert parse_rate("20") == 20.0 and parse_rate("20/s") == 20.0 and parse_rate("600/min") == 10.0
    assert parse_rate("0") == 0.0
    for bad in ("fast", "-1", "5/hour", "inf", "nan"):
        with pytest.raises(ValueError, match="--rate-limit"):
            parse_rate(bad)
    with pytest.raises(ValueError, match="--account-rate-limit must look like"):
        parse_rate("often", "--account-rate-limit")
    assert describe_rate(20.0) == "20/s" and describe_rate(0.1) == "6/min"
    assert CoordinatorConfig().account_rate_limit == pytest.approx(0.1) and CoordinatorConfig().account_burst == 20
    with pytest.raises(ValueError, match="--account-burst"):
        CoordinatorConfig(account_burst=0)
    assert CoordinatorConfig(rate_limit=0).rate_limit == 0
    with pytest.raises(ValueError):
        CoordinatorConfig(rate_limit=-1)


def test_serve_refuses_a_bad_rate_limit_in_one_line(tmp_path):
    result = run_hearth("coordinator", "serve", "--data-dir", str(tmp_path), "--rate-limit", "lots")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--rate-limit must look like 20, 20/s or 600/min (0 disables), got 'lots'" in result.stderr


def test_http_429_with_retry_after_then_recovery(tmp_path):
    clock = FakeClock()
    with live_server(tmp_path, rate_limit=2.0, clock=clock) as client:
        burst = [client.get("/api/v1/leaderboard").status_code for _ in range(10)]
        assert burst == [200] * 10  # 5 s worth of requests at 2/s

        limited = client.get("/api/v1/leaderboard")
        assert limited.status_code == 429 and limited.headers["retry-after"] == "1"
        assert limited.json()["error"]["code"] == "rate_limited" and "2/s" in limited.json()["error"]["message"]
        assert client.get("/").status_code == 429  # the website is public too
        assert client.get("/healthz").status_code == 200  # operator endpoints are not limited
        metrics = client.get("/metrics").text
        assert "hearth_http_rate_limited_total 2.0" in metrics
        assert 'hearth_http_errors_total{status="429"} 2.0' in metrics

        clock.now += 0.5  # one token back
        assert client.get("/api/v1/leaderboard").status_code == 200
        assert client.get("/api/v1/leaderboard").status_code == 429
        clock.now += 60  # full again, but no more than the burst
        assert [client.get("/api/v1/stats").status_code for _ in range(11)] == [200] * 10 + [429]


def test_serve_applies_its_rate_limit_options(tmp_path):
    coordinator = CoordinatorProcess(tmp_path / "data", "--rate-limit", "60/min",  # 1/s, bursts of 5
                                     "--account-rate-limit", "1/min", "--account-burst", "2")  # fmt: skip
    try:
        # Account actions first, while the general bucket is full: the third registration meets the stricter budget.
        registered = [coordinator.api.post("/api/v1/volunteers", content=registration(SigningKey.generate(), f"v{i}"))
                      for i in range(3)]  # fmt: skip
        assert [r.status_code for r in registered] == [201, 201, 429], [r.text for r in registered]
        assert registered[2].json()["error"]["code"] == "rate_limited" and "1/min" in registered[2].text
        assert 1 <= int(registered[2].headers["retry-after"]) <= 60

        responses = [coordinator.api.get("/api/v1/stats") for _ in range(20)]
        statuses = [r.status_code for r in responses]
        assert 429 in statuses, statuses  # 20 requests take far less than 15 s
        refused = responses[statuses.index(429)]
        assert refused.headers["retry-after"] == "1" and refused.json()["error"]["code"] == "rate_limited"
        assert "hearth_http_rate_limited_total" in coordinator.api.get("/metrics").text
    finally:
        assert coordinator.stop() == 0


def test_serve_refuses_bad_account_limits_in_one_line(tmp_path):
    for option, value, message in (("--account-rate-limit", "often", "--account-rate-limit must look like"),
                                   ("--account-burst", "0", "--account-burst")):  # fmt: skip
        result = run_hearth("coordinator", "serve", "--data-dir", str(tmp_path), option, value)
        assert result.returncode == 2 and "Traceback" not in result.stderr and message in result.stderr, result.stderr


def test_account_actions_are_the_state_changing_account_routes():
    def scope(method: str, path: str) -> dict:
        return {"type": "http", "method": method, "path": path}

    limited = [("POST", "/api/v1/volunteers"), ("POST", "/api/v1/volunteers/"), ("POST", "/api/v1/teams/actions"),
               ("POST", "/api/v1/accounts/nodes"), ("DELETE", "/api/v1/accounts/nodes/" + "0" * 32),
               ("POST", "/api/v1/accounts/attach-key"), ("POST", "/api/v1/accounts/name"), ("DELETE", "/api/v1/accounts/me")]  # fmt: skip
    free = [("GET", "/api/v1/volunteers/alice"), ("GET", "/api/v1/accounts/me"), ("GET", "/api/v1/teams"),
            ("POST", "/api/v1/swarms"), ("GET", "/"), ("GET", "/api/v1/leaderboard"), ("GET", "/api/v1/accounts/me/export"),
            ("POST", "/api/v1/swarms/spirals/access-token"), ("POST", "/api/v1/volunteers/alice/ban")]  # fmt: skip
    assert all(is_account_action(scope(*request)) for request in limited)
    assert not any(is_account_action(scope(*request)) for request in free)


def test_account_actions_share_a_strict_budget_per_client_address(tmp_path):
    """Registration, attach and team actions draw from one small bucket per IP (fake clock): the one error shape
    with Retry-After, counted; reads and other addresses go on; the bucket refills at its rate."""

    async def scenario():
        ledger = await make_ledger(tmp_path)
        clock, metrics = FakeClock(), CoordinatorMetrics()
        app = create_app(Services(ledger, "mqtt://127.0.0.1:1883", "operator-secret"), metrics, rate_limit=1000.0,
                         clock=clock, account_rate_limit=0.1, account_burst=3)  # fmt: skip

        def client_at(ip: str) -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=(ip, 40000))
            return httpx.AsyncClient(transport=transport, base_url="http://test")

        async with client_at("203.0.113.7") as mallory, client_at("198.51.100.2") as alice:
            keys = [SigningKey.generate() for _ in range(6)]
            answers = [await mallory.post("/api/v1/volunteers", content=registration(keys[i], f"sock-{i}")) for i in range(3)]
            assert [a.status_code for a in answers] == [201, 201, 201]
            account_key = answers[0].json()["account_key"]

            refused = [
                await mallory.post("/api/v1/volunteers", content=registration(keys[3], "sock-3")),
                await mallory.post("/api/v1/teams/actions", headers={"Authorization": f"Bearer {account_key}"},
                                   content=seal(TeamAction(action="create", team="socks", public_key=keys[0].public_key,
                                                           time=time.time()), keys[0])),
                await mallory.post("/api/v1/accounts/nodes", headers={"Authorization": f"Bearer {account_key}"},
                                   content=seal(NodeAttach(public_key=keys[4].public_key, time=time.time()), keys[4])),
            ]  # fmt: skip
            for answer in refused:
                assert answer.status_code == 429, answer.text
                assert answer.headers["retry-after"] == "10"  # one token every 10 s at 6/min
                assert answer.json() == {"error": {"code": "rate_limited", "message": "too many account actions from "
                                                   "this address (limit 6/min); retry in 10 s"}}  # fmt: skip
            assert (await mallory.get("/api/v1/volunteers/sock-0")).status_code == 200  # reads are not account actions
            assert (await alice.post("/api/v1/volunteers", content=registration(keys[5], "alice"))).status_code == 201

            clock.now += 10.0  # one token back
            assert (await mallory.post("/api/v1/volunteers", content=registration(keys[3], "sock-3"))).status_code == 201
            again = await mallory.post("/api/v1/volunteers", content=registration(keys[4], "sock-4"))
            assert again.status_code == 429 and again.headers["retry-after"] == "10"
            board = (await alice.get("/api/v1/leaderboard")).json()
        await ledger.engine.dispose()
        assert sorted(v["name"] for v in board["volunteers"]) == ["alice", "sock-0", "sock-1", "sock-2", "sock-3"]
        exposition = metrics.exposition(None, None).decode()
        assert "hearth_http_rate_limited_total 4.0" in exposition
        assert 'hearth_http_errors_total{status="429"} 4.0' in exposition

    asyncio.run(scenario())
