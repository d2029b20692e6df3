"""Rate limits on the public HTTP endpoints: one token bucket per client IP, in memory.

A client may burst up to `burst` requests, then gets `rate` per second; beyond that it is answered 429 with
Retry-After and the error shape, and counted in the coordinator's metrics. Behind a reverse proxy on the same
host, uvicorn takes the client address from X-Forwarded-For (it trusts 127.0.0.1 by default).
"""

import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Optional

from starlette.types import ASGIApp, Receive, Scope, Send

from coordinator.errors import error_response

DEFAULT_RATE = 20.0  # requests per second per client IP
BURST_SECONDS = 5.0  # the default burst: this many seconds' worth of requests
MAX_CLIENTS = 100_000  # buckets kept; the least recently seen client is forgotten first
EXEMPT_PATHS = ("/healthz", "/metrics")  # operator endpoints: health checks and Prometheus scrapes


@dataclass
class TokenBucket:
    """`capacity` tokens, refilled at `rate` per second; each request takes one."""

    rate: float
    capacity: float
    tokens: float
    updated: float

    def take(self, now: float) -> float:
        """Take a token: 0.0 if one was there, else the seconds until one will be (nothing is taken)."""
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """Token buckets by client key. `clock` is injectable so tests need no sleeps."""

    def __init__(self, rate: float, burst: Optional[float] = None, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = MAX_CLIENTS):  # fmt: skip
        if rate <= 0:
            raise ValueError("rate must be positive (0 disables the limiter: build none)")
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate * BURST_SECONDS)
        self.clock, self.max_clients = clock, max_clients
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def check(self, client: str) -> float:
        """0.0 to let this client's request through, else the seconds it should wait."""
        now = self.clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = TokenBucket(self.rate, self.burst, self.burst, now)
            if len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(client)
        return bucket.take(now)

    def __len__(self) -> int:
        return len(self._buckets)


class RateLimitMiddleware:
    """ASGI middleware: 429 + Retry-After for a client over its rate; `on_limited()` counts each refusal."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter, on_limited: Callable[[], None] = lambda: None):
        self.app, self.limiter, self.on_limited = app, limiter, on_limited

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            return await self.app(scope, receive, send)
        client = scope.get("client")
        wait = self.limiter.check(client[0] if client else "unknown")
        if wait <= 0:
            return await self.app(scope, receive, send)
        self.on_limited()
        retry_after = max(1, math.ceil(wait))
        response = error_response(
            429, "rate_limited",
            f"too many requests from this address (limit {self.limiter.rate:g}/s); retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )  # fmt: skip
        await response(scope, receive, send)


def parse_rate(text: str) -> float:
    """`--rate-limit` values: "20", "20/s", "600/min" → requests per second; "0" disables."""
    value, _, unit = text.strip().lower().partition("/")
    seconds = {"": 1.0, "s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0}.get(unit.strip())
    try:
        rate = float(value)
    except ValueError:
        rate = math.nan
    if seconds is None or not math.isfinite(rate) or rate < 0:
        raise ValueError(f"--rate-limit must look like 20, 20/s or 600/min (0 disables), got {text!r}")
    return rate / seconds
