"""Rate limits on the public HTTP endpoints: token buckets per client IP, in memory.

A client may burst up to `burst` requests, then gets `rate` per second; beyond that it is answered 429 with
Retry-After and the error shape, and counted in the coordinator's metrics. Two budgets: every public request
(`--rate-limit`, 20/s), and a much stricter one for the account actions that create or change state
(registration, attaching or detaching a node, team actions, renames, attach-key rotation, erasure:
`--account-rate-limit`, 6/min in bursts of 20), so one address cannot mint accounts or churn teams. Behind a
reverse proxy on the same host, uvicorn takes the client address from X-Forwarded-For (it trusts 127.0.0.1 by
default).
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
DEFAULT_ACCOUNT_RATE = 0.1  # account actions per second per client IP (6/min)
DEFAULT_ACCOUNT_BURST = 20  # a household's few PCs, or a volunteer trying things out, at once
# (method, path or path prefix ending in "/"): the account actions under the stricter budget
ACCOUNT_ACTIONS = (
    ("POST", "/api/v1/volunteers"), ("POST", "/api/v1/teams/actions"), ("POST", "/api/v1/accounts/nodes"),
    ("DELETE", "/api/v1/accounts/nodes/"), ("POST", "/api/v1/accounts/attach-key"), ("POST", "/api/v1/accounts/name"),
    ("DELETE", "/api/v1/accounts/me"),
)  # fmt: skip


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

    def forget_idle(self) -> int:
        """Drop the buckets that have refilled (a full bucket limits no more than none): client addresses are kept
        only while they limit something (coordinator/privacy.py). How many went."""
        now = self.clock()
        idle = [client for client, b in self._buckets.items() if b.tokens + (now - b.updated) * b.rate >= b.capacity]
        for client in idle:
            del self._buckets[client]
        return len(idle)


def is_account_action(scope: Scope) -> bool:
    """Does this request create or change an account, a node or a team membership?"""
    method, path = scope.get("method", ""), scope["path"]
    return any(method == m and (path.startswith(p) if p.endswith("/") else path.rstrip("/") == p)
               for m, p in ACCOUNT_ACTIONS)  # fmt: skip


def describe_rate(rate: float) -> str:
    """20 → "20/s", 0.1 → "6/min": the unit the operator would have written."""
    return f"{rate:g}/s" if rate >= 1 else f"{rate * 60:g}/min"


class RateLimitMiddleware:
    """ASGI middleware: 429 + Retry-After for a client over its rate; `on_limited()` counts each refusal.
    `applies(scope)` picks the requests this budget covers (default: every HTTP request but EXEMPT_PATHS)."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter, on_limited: Callable[[], None] = lambda: None,
                 applies: Optional[Callable[[Scope], bool]] = None, what: str = "requests"):  # fmt: skip
        self.app, self.limiter, self.on_limited = app, limiter, on_limited
        self.applies, self.what = applies or (lambda scope: scope["path"] not in EXEMPT_PATHS), what

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.applies(scope):
            return await self.app(scope, receive, send)
        client = scope.get("client")
        wait = self.limiter.check(client[0] if client else "unknown")
        if wait <= 0:
            return await self.app(scope, receive, send)
        self.on_limited()
        retry_after = max(1, math.ceil(wait))
        response = error_response(
            429, "rate_limited",
            f"too many {self.what} from this address (limit {describe_rate(self.limiter.rate)}); "
            f"retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )  # fmt: skip
        await response(scope, receive, send)


def parse_rate(text: str, option: str = "--rate-limit") -> float:
    """Rate option values: "20", "20/s", "600/min" → requests per second; "0" disables."""
    value, _, unit = text.strip().lower().partition("/")
    seconds = {"": 1.0, "s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0}.get(unit.strip())
    try:
        rate = float(value)
    except ValueError:
        rate = math.nan
    if seconds is None or not math.isfinite(rate) or rate < 0:
        raise ValueError(f"{option} must look like 20, 20/s or 600/min (0 disables), got {text!r}")
    return rate / seconds
