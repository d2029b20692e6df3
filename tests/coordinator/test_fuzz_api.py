"""Fuzzing the JSON API and the website in-process (httpx ASGI client, real SQLite ledger): signed registrations,
attaches and team actions that look genuine but carry hostile values or mutated bytes (the decoder's strategies,
tests/protocol/test_fuzz_envelope.py), with real, wrong and missing account keys; swarm definitions with hostile
JSON; every documented GET route with hostile path segments and query values. No answer is a 5xx, every error
uses the one shape without echoing the input, and the error counter (Prometheus) moves once per error answer.
The app is set up as `hearth coordinator serve` sets it up (exports, assets, checkpoints, the coordinator key)."""

import asyncio
import json
import threading
import time
from collections import Counter
from urllib.parse import quote

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.api import Services
from coordinator.app import create_app
from coordinator.assets import AssetStore
from coordinator.checkpoints import CheckpointStore
from coordinator.exports import write_exports
from coordinator.metrics import CoordinatorMetrics
from coordinator.tokens import TokenIssuer, load_or_create_key
from protocol.signing import SigningKey
from tests.coordinator.helpers import make_ledger, registration
from tests.protocol.test_fuzz_envelope import (EDGE_INTS, EDGE_TEXT, FUZZ_SETTINGS, apply_mutation, json_values,
                                               mutations, valid_fields)

OPERATOR = "operator-secret"
SIGNED_PATHS = {"registration": "/api/v1/volunteers", "attach": "/api/v1/accounts/nodes",
                "team_action": "/api/v1/teams/actions"}  # fmt: skip
segments = (st.sampled_from(EDGE_TEXT) | st.text(max_size=30) | st.sampled_from(EDGE_INTS).map(str)
            | st.sampled_from(("alice", "spirals", "latest", "1", "..", "%2e%2e", "red", "index.json")))  # fmt: skip
query_values = segments | json_values.map(lambda v: json.dumps(v)[:200])
QUERY_KEYS = ("limit", "offset", "sort", "search", "view", "page", "epoch", "x")
SWARM_FIELDS = ("swarm_id", "task", "title", "target_batch_size", "batch_size", "learning_rate", "matchmaking_time",
                "averaging_timeout", "average_state_every", "compression", "local_updates", "warmup_epochs", "access",
                "task_options", "data", "privacy")  # fmt: skip


class Client:
    """The app on its own event loop in a thread, so hypothesis (synchronous) can drive it request by request."""

    def __init__(self, tmp_path):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-api", daemon=True)
        self.thread.start()
        self.metrics = CoordinatorMetrics()
        self.statuses: Counter[int] = Counter()
        self._call(self._start(tmp_path))

    async def _start(self, tmp_path) -> None:
        self.ledger = await make_ledger(tmp_path)
        services = Services(self.ledger, "mqtt://127.0.0.1:1883", OPERATOR, exports_dir=tmp_path / "exports",
                            assets=AssetStore(tmp_path / "assets"), issuer=TokenIssuer(load_or_create_key(tmp_path)))
        await write_exports(self.ledger.engine, services.exports_dir)  # as `hearth coordinator serve` has them
        app = create_app(services, self.metrics)
        app.state.checkpoints = CheckpointStore(tmp_path / "checkpoints", keep=2)
        self.routes = sorted((path, method.upper()) for path, item in app.openapi()["paths"].items() for method in item
                             if method == "get")  # fmt: skip
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                                      base_url="http://test")  # fmt: skip

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(120)

    def request(self, method: str, url: str, **kwargs) -> httpx.Response:
        response = self._call(self.http.request(method, url, **kwargs))
        self.statuses[response.status_code] += 1
        # 503 is a documented "not on this coordinator" (audits off, no DHT peer); 500 would be a crash
        assert response.status_code < 500 or response.status_code == 503, (method, url, kwargs, response.text[:500])
        is_page = response.headers.get("content-type", "").startswith("text/html")
        if response.status_code >= 400 and not is_page:  # the website answers browsers with pages
            body = response.json()
            assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
            assert 0 < len(body["error"]["message"]) < 600, body  # refusals never echo a huge input
        return response

    def close(self) -> None:
        async def stop() -> None:
            await self.http.aclose()
            await self.ledger.engine.dispose()

        self._call(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def url_quote(value: str) -> str:
    """Percent-encoded as a hostile client may send it: lone surrogates as their (invalid) UTF-8 bytes."""
    return quote(value.encode("utf-8", "surrogatepass"), safe="")


def test_generated_requests_never_get_a_5xx_and_every_error_is_counted(tmp_path):
    client = Client(tmp_path)
    try:
        alice, bob = SigningKey.generate(), SigningKey.generate()
        keys = {}
        for name, key in (("alice", alice), ("bob", bob)):
            created = client.request("POST", "/api/v1/volunteers", content=registration(key, name, "red"))
            assert created.status_code == 201, created.text
            keys[name] = created.json()
        bearers = {"none": None, "alice": keys["alice"]["account_key"], "alice_attach": keys["alice"]["attach_key"],
                   "bob": keys["bob"]["account_key"], "garbage": "acct-1-" + "A" * 40, "operator": OPERATOR,
                   "empty": ""}  # fmt: skip
        fresh_keys = [SigningKey.generate() for _ in range(8)]
        signers = {"alice": alice, "bob": bob, **{f"new{i}": k for i, k in enumerate(fresh_keys)}}

        def headers(bearer: str, json_type: bool = False) -> dict:
            out = {"content-type": "application/json"} if json_type else {}
            if bearers[bearer] is not None:
                out["Authorization"] = f"Bearer {bearers[bearer]}"
            return out

        @settings(max_examples=300, **FUZZ_SETTINGS)
        @given(kind=st.sampled_from(tuple(SIGNED_PATHS)), signer=st.sampled_from(tuple(signers)),
               other=st.sampled_from(tuple(signers)), mutation=mutations, seq=st.integers(1, 10**6),
               bearer=st.sampled_from(tuple(bearers)), action=st.sampled_from(("create", "join", "leave")),
               skew=st.sampled_from((0, 0, 0, 400, -400, 1e12)))  # fmt: skip
        def signed_requests(kind, signer, other, mutation, seq, bearer, action, skew):
            fields = valid_fields(kind, signers[signer], seq, time.time() + skew)
            if kind == "team_action":
                fields["action"] = action
                fields["team"] = "red" if seq % 3 == 0 else fields["team"]
            body = apply_mutation(fields, signers[signer], signers[other], mutation)
            client.request("POST", SIGNED_PATHS[kind], content=body, headers=headers(bearer))

        @settings(max_examples=100, **FUZZ_SETTINGS)
        @given(fields=st.dictionaries(st.sampled_from(SWARM_FIELDS), json_values, max_size=6),
               swarm_id=st.sampled_from(("fuzz", "spirals", "a" * 64, "Bad Id", "")) | st.text(max_size=10),
               task=st.sampled_from(("spirals", "nope", "")), bearer=st.sampled_from(("operator", "none", "garbage")))  # fmt: skip
        def swarm_definitions(fields, swarm_id, task, bearer):
            body = json.dumps({"swarm_id": swarm_id, "task": task, **fields}).encode()
            client.request("POST", "/api/v1/swarms", content=body, headers=headers(bearer, json_type=True))

        @settings(max_examples=80, **FUZZ_SETTINGS)
        @given(path=st.sampled_from(("/api/v1/accounts/name", "/api/v1/accounts/attach-key")),
               name=json_values | st.sampled_from(EDGE_TEXT), bearer=st.sampled_from(tuple(bearers)))  # fmt: skip
        def account_changes(path, name, bearer):
            client.request("POST", path, content=json.dumps({"name": name}).encode(), headers=headers(bearer, True))

        @settings(max_examples=250, **FUZZ_SETTINGS)
        @given(route=st.sampled_from(client.routes), values=st.lists(segments, min_size=3, max_size=3),
               params=st.dictionaries(st.sampled_from(QUERY_KEYS), query_values, max_size=3),
               bearer=st.sampled_from(tuple(bearers)))  # fmt: skip
        def reads(route, values, params, bearer):
            path = route[0]
            for value in values:
                if "{" in path:
                    start = path.index("{")
                    path = path[:start] + (url_quote(value) or "x") + path[path.index("}", start) + 1:]
            query = "&".join(f"{url_quote(k)}={url_quote(v)}" for k, v in params.items())
            client.request("GET", f"{path}?{query}" if query else path, headers=headers(bearer))

        signed_requests()
        swarm_definitions()
        account_changes()
        reads()
    finally:
        client.close()

    # The deep paths ran: registrations, attaches and team actions were accepted as well as refused.
    assert client.statuses[201] >= 10 and client.statuses[200] >= 50, client.statuses
    assert sum(n for status, n in client.statuses.items() if 400 <= status < 500) >= 300, client.statuses
    exposition = client.metrics.exposition(None, None).decode()
    for status, count in client.statuses.items():
        if status >= 400:
            assert f'hearth_http_errors_total{{status="{status}"}} {float(count)}' in exposition, (status, count)
    assert 'hearth_http_errors_total{status="500"}' not in exposition
