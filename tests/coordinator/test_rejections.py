"""Hostile reports are 100 % rejected: forged signatures, replays, reports for another node, wrong protocol
versions and clock skew (past and future). Each goes through the real ingestion path (verify → sequencer →
ledger, real SQLite; once over a real MQTT broker) and must be refused with its own reason, recorded in
rejected_messages and counted (ingest counters, Prometheus); the genuine reports around them are still granted.
The API's signed endpoints (registration, attach, team actions) refuse the same forgeries with the error shape."""

import asyncio
import hashlib
import json
import time
from collections import Counter
from typing import NamedTuple

import aiomqtt
import httpx
import pytest
from sqlalchemy import select

from coordinator import db
from coordinator.api import Services
from coordinator.app import create_app
from coordinator.broker import EmbeddedBroker
from coordinator.ingest import Ingestor
from coordinator.ledger import Batch, Ledger
from coordinator.metrics import CoordinatorMetrics
from coordinator.verify import MAX_REPORT_AGE, Verifier
from protocol.encoding import canonical_bytes
from protocol.messages import MAX_CLOCK_SKEW
from protocol.signing import SigningKey
from protocol.topics import report_topic, status_topic
from tests.coordinator.helpers import make_ledger, registration, wait_for
from tests.coordinator.test_api_errors import assert_error

DAY = 86400.0


def report_fields(key: SigningKey, seq: int, at: float, **changes) -> dict:
    fields = {"kind": "report", "protocol_version": 1, "node_id": key.node_id, "swarm_id": "spirals", "seq": seq,
              "epoch": seq, "samples": 1000, "compute_seconds": 1.5, "device": "cpu", "loss": 0.5, "time": at}  # fmt: skip
    fields.update(changes)
    return {k: v for k, v in fields.items() if v is not ...}  # `...` drops a field


def status_fields(key: SigningKey, at: float, **changes) -> dict:
    return {"kind": "status", "protocol_version": 1, "node_id": key.node_id, "swarm_id": "spirals", "state": "online",
            "time": at, **changes}  # fmt: skip


def envelope(body: bytes, sig: str) -> bytes:
    return canonical_bytes({"body": body.decode("utf-8"), "sig": sig})


def signed(fields: dict, key: SigningKey) -> bytes:
    """What any client can send: its own fields, signed with a key of its choosing."""
    body = canonical_bytes(fields)
    return envelope(body, key.sign(body))


class Case(NamedTuple):
    name: str
    reason: str  # the rejection reason, or "accepted" / "status" for the genuine messages around the attacks
    topic: str
    payload: bytes


def hostile_cases(alice: SigningKey, bob: SigningKey, stranger: SigningKey, now: float) -> list[Case]:
    """Alice and Bob are registered; the stranger is not. Alice's seq 1 comes first and is granted; every attack
    follows; Alice's seq 2 (two days old: it waited in her outbox) and seq 3 (a minute ahead: a clock within
    the allowed skew) are granted after them, so no attack disturbed her sequence."""
    a_topic, b_topic = report_topic("spirals", alice.node_id), report_topic("spirals", bob.node_id)
    genuine = signed(report_fields(alice, 1, now), alice)
    body = canonical_bytes(report_fields(alice, 2, now))
    good_sig = alice.sign(body)
    flipped = good_sig[:10] + ("A" if good_sig[10] != "A" else "B") + good_sig[11:]
    return [
        Case("genuine report, seq 1", "accepted", a_topic, genuine),
        # Forged signatures.
        Case("signed by an unregistered key", "bad_signature", a_topic, signed(report_fields(alice, 2, now), stranger)),
        Case("signed by another registered node", "bad_signature", a_topic, signed(report_fields(alice, 2, now), bob)),
        Case("body changed after signing", "bad_signature", a_topic,
             envelope(body.replace(b'"samples":1000', b'"samples":9000'), good_sig)),
        Case("signature with one character changed", "bad_signature", a_topic, envelope(body, flipped)),
        Case("signature cut short", "bad_signature", a_topic, envelope(body, good_sig[:-4])),
        Case("empty signature", "bad_signature", a_topic, envelope(body, "")),
        Case("signature of another message", "bad_signature", a_topic,
             envelope(body, alice.sign(canonical_bytes(report_fields(alice, 9, now))))),
        Case("signature not base64", "bad_signature", a_topic, envelope(body, "@" * 86)),
        # Reports for another node.
        Case("Alice's key claims Bob's report, on Bob's topic", "bad_signature", b_topic,
             signed(report_fields(bob, 1, now), alice)),
        Case("Alice's key claims Bob's report, on her topic", "bad_signature", a_topic,
             signed(report_fields(bob, 1, now), alice)),
        Case("Alice's genuine report sent on Bob's topic", "topic_mismatch", b_topic,
             signed(report_fields(alice, 2, now), alice)),
        Case("Bob's genuine report replayed on Alice's topic", "topic_mismatch", a_topic,
             signed(report_fields(bob, 1, now), bob)),
        Case("a report for one swarm on another swarm's topic", "topic_mismatch", report_topic("other", alice.node_id),
             signed(report_fields(alice, 2, now), alice)),
        Case("Alice's presence on Bob's status topic", "topic_mismatch", status_topic("spirals", bob.node_id),
             signed(status_fields(alice, now, state="paused"), alice)),
        Case("an unregistered node's own report", "unknown_sender", report_topic("spirals", stranger.node_id),
             signed(report_fields(stranger, 1, now), stranger)),
        # Replays.
        Case("the granted report's bytes again", "replayed", a_topic, genuine),
        Case("seq 1 signed anew with other numbers", "replayed", a_topic,
             signed(report_fields(alice, 1, now, samples=10**6), alice)),
        # Wrong protocol versions.
        *[Case(f"protocol version {v!r}", "unsupported_version", a_topic,
               signed(report_fields(alice, 2, now, protocol_version=v), alice))
          for v in (0, 2, 99, -1, 2**70, "1", 1.0, None, ...)],
        Case("protocol version true", "malformed", a_topic, signed(report_fields(alice, 2, now, protocol_version=True), alice)),
        # Clock skew: a future date always, a past one beyond what an outbox may hold.
        Case("dated an hour ahead", "clock_skew", a_topic, signed(report_fields(alice, 2, now + 3600), alice)),
        Case("dated just past the allowed skew", "clock_skew", a_topic,
             signed(report_fields(alice, 2, now + MAX_CLOCK_SKEW + 30), alice)),
        Case("dated in the year 5000", "clock_skew", a_topic, signed(report_fields(alice, 2, 95_617_584_000.0), alice)),
        Case("dated too long ago", "clock_skew", a_topic,
             signed(report_fields(alice, 2, now - MAX_REPORT_AGE - DAY), alice)),
        Case("dated before 1970", "clock_skew", a_topic, signed(report_fields(alice, 2, -1e18), alice)),
        Case("presence dated a day ahead", "clock_skew", status_topic("spirals", alice.node_id),
             signed(status_fields(alice, now + DAY), alice)),
        # The genuine reports after the attacks.
        Case("genuine report, seq 2, two days in the outbox", "accepted", a_topic,
             signed(report_fields(alice, 2, now - 2 * DAY), alice)),
        Case("genuine report, seq 3, clock a minute fast", "accepted", a_topic,
             signed(report_fields(alice, 3, now + 60), alice)),
        Case("genuine presence", "status", status_topic("spirals", alice.node_id), signed(status_fields(alice, now), alice)),
    ]


async def _register(ledger, key: SigningKey, name: str) -> None:
    from protocol.envelope import open_envelope, parse_body
    from protocol.messages import VolunteerRegistration

    await ledger.register(parse_body(open_envelope(registration(key, name)), VolunteerRegistration))


async def _rejections(ledger) -> dict[str, str]:
    """payload sha256 → recorded reason."""
    async with ledger.engine.connect() as conn:
        rows = (await conn.execute(select(db.rejected_messages.c.payload_sha256, db.rejected_messages.c.reason))).all()
    return {digest: reason for digest, reason in rows}


async def _granted_seqs(ledger, node_id: str) -> list[int]:
    async with ledger.engine.connect() as conn:
        return sorted((await conn.execute(select(db.reports.c.seq).where(db.reports.c.node_id == node_id))).scalars())


def _assert_every_case(cases: list[Case], outcomes: dict[str, str], ingestor: Ingestor, metrics: CoordinatorMetrics,
                       rejected: dict[str, str]) -> None:  # fmt: skip
    wrong = {c.name: (c.reason, outcomes.get(c.name)) for c in cases if outcomes.get(c.name) != c.reason}
    assert not wrong, wrong  # case → (expected, got)
    expected = Counter(c.reason for c in cases)
    for reason, count in expected.items():
        assert ingestor.counters[reason] == count, (reason, dict(ingestor.counters))
    hostile = [c for c in cases if c.reason not in ("accepted", "status")]
    for case in hostile:  # each one on record with its reason (identical payloads are one case's reason too)
        assert rejected[hashlib.sha256(case.payload).hexdigest()] == case.reason, case.name
    exposition = metrics.exposition(None, None).decode()
    report_rejections = Counter(c.reason for c in hostile if "/reports" in c.topic)
    for reason, count in report_rejections.items():
        assert f'hearth_reports_rejected_total{{reason="{reason}"}} {float(count)}' in exposition, (reason, count)
    accepted = sum(c.reason == "accepted" for c in cases)
    assert f"hearth_reports_accepted_total {float(accepted)}" in exposition
    assert f"hearth_reports_received_total {float(accepted + sum(report_rejections.values()))}" in exposition


def test_every_hostile_report_is_rejected_with_its_reason(tmp_path, ledger_url):
    """The whole matrix through Ingestor.handle (verify and decide, in order) into the ledger."""

    async def scenario():
        ledger = await make_ledger(tmp_path, ledger_url)
        metrics = CoordinatorMetrics()
        ingestor = Ingestor(ledger, "127.0.0.1", 1, metrics=metrics)  # decisions only: no broker needed
        alice, bob, stranger = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
        await _register(ledger, alice, "alice")
        await _register(ledger, bob, "bob")
        cases = hostile_cases(alice, bob, stranger, time.time())
        batch, outcomes = Batch(), {}
        for case in cases:
            outcomes[case.name] = await ingestor.handle(case.topic, case.payload, batch)
        await ledger.write(batch)
        try:
            _assert_every_case(cases, outcomes, ingestor, metrics, await _rejections(ledger))
            assert await _granted_seqs(ledger, alice.node_id) == [1, 2, 3]
            assert await _granted_seqs(ledger, bob.node_id) == []
        finally:
            await ledger.engine.dispose()

    asyncio.run(scenario())


def test_every_hostile_report_is_rejected_over_a_real_broker(tmp_path):
    """The same matrix published to a real (embedded amqtt) broker, through the running ingest loop."""

    async def scenario():
        ledger = await make_ledger(tmp_path)
        broker = EmbeddedBroker("127.0.0.1", 0)
        await broker.start()
        metrics = CoordinatorMetrics()
        ingestor = Ingestor(ledger, "127.0.0.1", broker.port, metrics=metrics)
        await ingestor.start()
        try:
            await asyncio.wait_for(ingestor.subscribed.wait(), 10)
            alice, bob, stranger = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
            await _register(ledger, alice, "alice")
            await _register(ledger, bob, "bob")
            cases = hostile_cases(alice, bob, stranger, time.time())
            async with aiomqtt.Client("127.0.0.1", broker.port) as client:
                await client.publish(cases[0].topic, cases[0].payload, qos=1)
                await wait_for(lambda: ingestor.counters["accepted"] == 1, what="the first grant")
                for case in cases[1:]:  # one publisher, QoS 1: the broker keeps this order
                    await client.publish(case.topic, case.payload, qos=1)

                async def all_decided() -> bool:
                    decided = sum(ingestor.counters[r] for r in {c.reason for c in cases})
                    return decided == len(cases) and len(await _granted_seqs(ledger, alice.node_id)) == 3

                await wait_for(all_decided, what="every message to be decided and written")
            rejected = await _rejections(ledger)
            outcomes = {c.name: rejected.get(hashlib.sha256(c.payload).hexdigest(), c.reason if c.reason in
                                              ("accepted", "status") else "not rejected") for c in cases}  # fmt: skip
            outcomes[cases[0].name] = "accepted"  # its bytes are also the replay's: that row says "replayed"
            _assert_every_case(cases, outcomes, ingestor, metrics, rejected)
            assert await _granted_seqs(ledger, alice.node_id) == [1, 2, 3]
            assert json.dumps(dict(ingestor.counters))
        finally:
            await ingestor.stop()
            await broker.stop()
            await ledger.engine.dispose()

    asyncio.run(scenario())


def test_replays_stay_refused_after_a_restart(tmp_path):
    """A new coordinator process reads each node's last sequence number from the ledger: old reports replayed to
    it are refused, not granted a second time."""

    async def scenario():
        ledger = await make_ledger(tmp_path)
        alice = SigningKey.generate()
        await _register(ledger, alice, "alice")
        topic, now = report_topic("spirals", alice.node_id), time.time()
        sent = [signed(report_fields(alice, seq, now), alice) for seq in (1, 2, 3)]
        batch, first = Batch(), Ingestor(ledger, "127.0.0.1", 1)
        assert [await first.handle(topic, payload, batch) for payload in sent] == ["accepted"] * 3
        await ledger.write(batch)
        await ledger.engine.dispose()

        restarted = Ledger(db.create_engine(f"sqlite+aiosqlite:///{tmp_path / 'ledger.sqlite3'}"))
        await restarted.load()  # the same SQLite file, caches loaded afresh
        again, batch = Ingestor(restarted, "127.0.0.1", 1), Batch()
        try:
            assert [await again.handle(topic, payload, batch) for payload in reversed(sent)] == ["replayed"] * 3
            fresh = signed(report_fields(alice, 4, now), alice)
            assert await again.handle(topic, fresh, batch) == "accepted"
            await restarted.write(batch)
            assert await _granted_seqs(restarted, alice.node_id) == [1, 2, 3, 4]
        finally:
            await restarted.engine.dispose()

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["report", "status"])
def test_clock_skew_bounds(tmp_path, kind):
    """At the edges, with a fake clock: MAX_CLOCK_SKEW ahead is allowed, beyond is not; a report may be
    MAX_REPORT_AGE old (an outbox waiting out an outage), a presence message any age (a last will is signed at
    connect time and may be delivered days later)."""

    async def scenario():
        ledger = await make_ledger(tmp_path)
        key, now = SigningKey.generate(), 2_000_000_000.0
        await _register(ledger, key, "alice")
        verifier = Verifier(ledger, clock=lambda: now)
        topic = (report_topic if kind == "report" else status_topic)("spirals", key.node_id)

        async def reason(at: float) -> str:
            fields = report_fields(key, 1, at) if kind == "report" else status_fields(key, at)
            try:
                await verifier.check(topic, signed(fields, key))
            except Exception as e:
                return getattr(e, "reason", repr(e))
            return "ok"

        try:
            assert await reason(now + MAX_CLOCK_SKEW) == "ok"
            assert await reason(now + MAX_CLOCK_SKEW + 1) == "clock_skew"
            assert await reason(now - MAX_REPORT_AGE) == "ok"
            assert await reason(now - MAX_REPORT_AGE - 1) == ("clock_skew" if kind == "report" else "ok")
        finally:
            await ledger.engine.dispose()

    asyncio.run(scenario())


def test_the_api_refuses_forged_misversioned_and_skewed_signed_requests(tmp_path):
    """Registration, attach and team actions: 400 in the error shape with the reason as the code, counted."""
    from protocol.envelope import seal
    from protocol.messages import NodeAttach, TeamAction

    async def scenario():
        ledger = await make_ledger(tmp_path)
        metrics = CoordinatorMetrics()
        app = create_app(Services(ledger, "mqtt://127.0.0.1:1883", "operator-secret"), metrics)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            alice, mallory, node = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
            created = await client.post("/api/v1/volunteers", content=registration(alice, "alice"))
            assert created.status_code == 201
            auth = {"Authorization": f"Bearer {created.json()['account_key']}"}
            now = time.time()

            def reg(**changes) -> dict:
                return {"kind": "registration", "protocol_version": 1, "name": "mallory", "public_key": alice.public_key,
                        "time": now, **changes}  # fmt: skip

            def attach(**changes) -> dict:
                return {"kind": "attach", "protocol_version": 1, "public_key": node.public_key, "time": now, **changes}

            def team(**changes) -> dict:
                return {"kind": "team_action", "protocol_version": 1, "action": "create", "team": "red",
                        "public_key": alice.public_key, "time": now, **changes}  # fmt: skip

            refused = [  # (path, body, code)
                ("/api/v1/volunteers", signed(reg(), mallory), "bad_signature"),  # Alice's key claimed by Mallory
                ("/api/v1/volunteers", signed(reg(protocol_version=2), alice), "unsupported_version"),
                ("/api/v1/volunteers", signed(reg(protocol_version="1"), alice), "unsupported_version"),
                ("/api/v1/accounts/nodes", signed(attach(), mallory), "bad_signature"),  # a node key claimed by another
                ("/api/v1/accounts/nodes", signed(attach(protocol_version=0), node), "unsupported_version"),
                ("/api/v1/accounts/nodes", signed(attach(time=now + 3600), node), "stale"),
                ("/api/v1/accounts/nodes", signed(attach(time=now - 3600), node), "stale"),
                ("/api/v1/teams/actions", signed(team(), mallory), "bad_signature"),
                ("/api/v1/teams/actions", signed(team(protocol_version=99), alice), "unsupported_version"),
                ("/api/v1/teams/actions", signed(team(time=1e300), alice), "stale"),
            ]
            for path, body, code in refused:
                error = assert_error(await client.post(path, content=body, headers=auth), 400, code)
                assert len(error["message"]) < 400, error
            # None of them changed anything: the genuine requests still work, once.
            assert (await client.post("/api/v1/accounts/nodes", headers=auth,
                                      content=seal(NodeAttach(public_key=node.public_key, time=now), node))).status_code == 201
            action = seal(TeamAction(action="create", team="red", public_key=alice.public_key, time=now), alice)
            assert (await client.post("/api/v1/teams/actions", content=action, headers=auth)).status_code == 201
            assert_error(await client.post("/api/v1/teams/actions", content=action, headers=auth), 409, "replayed")
            assert (await client.get("/api/v1/volunteers/mallory")).status_code == 404
            # An app without the coordinator's key (as here) says so; it once answered 500 (found by the API fuzz).
            assert_error(await client.get("/api/v1/coordinator-key"), 404, "no_signing_key")
        await ledger.engine.dispose()
        exposition = metrics.exposition(None, None).decode()
        assert f'hearth_http_errors_total{{status="400"}} {float(len(refused))}' in exposition

    asyncio.run(scenario())
