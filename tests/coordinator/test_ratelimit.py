"""Per-IP token buckets: the arithmetic with a fake clock, then 429 and recovery through a real uvicorn."""

import pytest

from coordinator.config import CoordinatorConfig
from coordinator.ratelimit import RateLimiter, TokenBucket, parse_rate
from tests.conftest import CoordinatorProcess, run_hearth
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


def test_serve_applies_its_rate_limit_option(tmp_path):
    coordinator = CoordinatorProcess(tmp_path / "data", "--rate-limit", "60/min")  # 1/s, bursts of 5
    try:
        responses = [coordinator.api.get("/api/v1/stats") for _ in range(20)]
        statuses = [r.status_code for r in responses]
        assert statuses[:5] == [200] * 5 and 429 in statuses, statuses  # 20 requests take far less than 15 s
        refused = responses[statuses.index(429)]
        assert refused.headers["retry-after"] == "1" and refused.json()["error"]["code"] == "rate_limited"
        assert "hearth_http_rate_limited_total" in coordinator.api.get("/metrics").text
    finally:
        assert coordinator.stop() == 0
