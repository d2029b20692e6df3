"""Fuzzing the ingestion path with 100,000 generated MQTT messages: verify (coordinator/verify.py) → the ingest
writer (sequencer, decisions) → the ledger (real SQLite), with the coordinator's embedded broker up.

Hypothesis draws each example's mutation (tests/protocol/test_fuzz_envelope.py: hostile values, wrong types,
bit flips, truncation, …) and a seed; the seed spreads it over FANOUT messages from honest-looking nodes (four
registered, one not), with in-sequence reports, replays, gaps, other nodes' and swarms' topics, skewed clocks and
resent payloads mixed in, so every stage runs, not only the first parse error. Verification may only accept or
reject with a known reason; the writer then decides every message exactly once (or holds it for its gap), never
with an internal error, and the ledger, ingest counters and Prometheus counters agree with each other and with
the verdicts, reason by reason."""

import asyncio
import logging
import random
import time
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from coordinator import db
from coordinator.broker import EmbeddedBroker
from coordinator.ingest import Ingestor
from coordinator.metrics import CoordinatorMetrics, rejection_reasons
from coordinator.verify import MAX_REPORT_AGE, Rejected, Verified, Verifier
from protocol.messages import MAX_CLOCK_SKEW
from protocol.signing import SigningKey
from protocol.topics import parse_node_topic, report_topic, status_topic
from tests.coordinator.helpers import make_ledger, registration, wait_for
from tests.protocol.test_fuzz_envelope import FUZZ_SETTINGS, apply_mutation, mutations, valid_fields

EXAMPLES, FANOUT = 1000, 100  # 100,000 messages
NOT_REJECTIONS = ("accepted", "status", "stale")  # decisions that are not refusals ("stale": an older presence)
REJECTIONS = tuple(r for r in rejection_reasons() if r not in NOT_REJECTIONS)
VERIFY_REASONS = ("malformed", "oversized", "bad_signature", "unsupported_version", "unknown_sender", "topic_mismatch",
                  "clock_skew")  # fmt: skip


class Stream:
    """Honest-looking traffic with the example's mutation spread over it; remembers what it sent."""

    def __init__(self, registered: list[SigningKey], stranger: SigningKey):
        self.keys, self.registered = registered + [stranger], registered
        self.next_seq = {key.node_id: 1 for key in self.keys}
        self.sent: list[tuple[str, bytes]] = []

    def messages(self, mutation: tuple, seed: int, now: float) -> list[tuple[str, bytes]]:
        rng, out = random.Random(seed), []
        for _ in range(FANOUT):
            sender = rng.choice(self.keys) if rng.random() < 0.2 else rng.choice(self.registered)
            if self.sent and rng.random() < 0.05:  # a message resent as it was (QoS 1 redelivery, outbox, attacker)
                out.append(rng.choice(self.sent[-500:]))
                continue
            kind = "status" if rng.random() < 0.15 else "report"
            seq = self.next_seq[sender.node_id] + rng.choice((0, 0, 0, 0, 0, 0, -1, -3, 1, 2))
            claimed = sender if rng.random() < 0.95 else rng.choice(self.keys)
            fields = valid_fields(kind, sender, max(1, seq), now + rng.choice((0, 0, 0, 0, 0, 0, 0, 1, -1)) *
                                  rng.choice((10, MAX_CLOCK_SKEW + 10, MAX_REPORT_AGE + 10)), claimed.node_id)  # fmt: skip
            if rng.random() < 0.02:
                fields["swarm_id"] = "nope"  # a swarm this coordinator does not have
            if rng.random() < 0.02:
                fields["protocol_version"] = rng.choice((0, 2, 99, -1, "1", 1.5, None))
            topic = self._topic(rng, kind, claimed, fields["swarm_id"])
            varied = (mutation[0], _vary(mutation[1], rng)) if rng.random() < 0.5 else ("none", None)
            out.append((topic, apply_mutation(fields, sender, rng.choice(self.keys), varied)))
        self.sent += out
        return out

    def _topic(self, rng: random.Random, kind: str, node: SigningKey, swarm_id: str) -> str:
        roll, same_kind = rng.random(), report_topic if kind == "report" else status_topic
        if roll < 0.85:
            return same_kind(swarm_id, node.node_id)
        if roll < 0.92:
            return same_kind(rng.choice((swarm_id, "spirals", "other")), rng.choice(self.keys).node_id)
        if roll < 0.96:
            return (status_topic if kind == "report" else report_topic)(swarm_id, rng.choice(self.keys).node_id)
        return rng.choice(("hearth/v1/swarms/spirals/nodes/x/reports", "hearth/v1", "", "#", "hearth/v1/swarms/" +
                           "s" * 70 + "/nodes/" + "0" * 32 + "/reports", "hearth/v2/swarms/spirals/nodes/" + "a" * 32))  # fmt: skip

    def verified(self, topic: str, verdict) -> None:
        """Keep the stream mostly in sequence: a verified report at a node's next number moves that number on."""
        if isinstance(verdict, Verified) and verdict.kind == "report":
            node_id = verdict.fields["node_id"]
            if verdict.fields["seq"] == self.next_seq.get(node_id):
                self.next_seq[node_id] += 1


def _vary(argument, rng: random.Random):
    """The same mutation at another place: positions move, values stay."""
    if isinstance(argument, int) and not isinstance(argument, bool):
        return argument + rng.randrange(10_000)
    if isinstance(argument, tuple) and argument and isinstance(argument[0], int) and not isinstance(argument[0], bool):
        return (argument[0] + rng.randrange(10_000), *argument[1:])
    return argument


@pytest.mark.timeout(900)  # ~1 min on a quiet 2-core machine; several times that while others compete for it
def test_100k_generated_messages_through_ingestion(tmp_path):
    quiet = logging.getLogger("coordinator.ingest")  # one warning per refusal: 60,000 of them, not read here
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # an internal error (logged with its traceback) still shows
    try:
        asyncio.run(_fuzz(tmp_path))
    finally:
        quiet.setLevel(level)


async def _fuzz(tmp_path) -> None:
    from protocol.envelope import open_envelope, parse_body
    from protocol.messages import VolunteerRegistration

    ledger = await make_ledger(tmp_path)
    registered = [SigningKey.generate() for _ in range(4)]
    for i, key in enumerate(registered):
        await ledger.register(parse_body(open_envelope(registration(key, f"node-{i}")), VolunteerRegistration))
    stream, verifier, loop = Stream(registered, SigningKey.generate()), Verifier(ledger), asyncio.get_running_loop()
    items, verdicts = [], Counter()

    async def verify_all(messages: list[tuple[str, bytes]]) -> None:
        for topic, payload in messages:
            try:
                verdict = await verifier.check(topic, payload)
            except Rejected as r:
                assert r.reason in rejection_reasons(), (r.reason, r.detail)
                verdict = r
            stream.verified(topic, verdict)
            verdicts[verdict.reason if isinstance(verdict, Rejected) else f"verified_{verdict.kind}"] += 1
            items.append((topic, payload, None, verdict))

    @settings(max_examples=EXAMPLES, **FUZZ_SETTINGS)
    @given(mutation=mutations, seed=st.integers(0, 2**32))
    def verify_generated(mutation, seed):
        # Phase 1, under hypothesis (in a thread; the checks run on the ledger's loop): verification must accept,
        # or refuse with a known reason, whatever comes; anything else fails and is shrunk.
        asyncio.run_coroutine_threadsafe(verify_all(stream.messages(mutation, seed, time.time())), loop).result()

    await asyncio.to_thread(verify_generated)
    assert len(items) == EXAMPLES * FANOUT
    await _ingest_all(ledger, items, verdicts)


async def _ingest_all(ledger, items: list, verdicts: Counter) -> None:
    """Phase 2: every verdict through the running ingest writer, as ingest workers hand them over."""
    broker = EmbeddedBroker("127.0.0.1", 0)
    await broker.start()
    metrics = CoordinatorMetrics()
    ingestor = Ingestor(ledger, "127.0.0.1", broker.port, metrics=metrics, hold_seconds=3600.0)
    await ingestor.start()
    try:
        await asyncio.wait_for(ingestor.subscribed.wait(), 30)
        for item in items:
            ingestor._queue.put_nowait(item)  # where the MQTT sink puts what it receives

        def decided() -> int:
            return sum(ingestor.counters[r] for r in (*REJECTIONS, *NOT_REJECTIONS))

        async def settled() -> bool:
            return decided() + len(ingestor.sequencer) == len(items)

        await wait_for(settled, timeout=600, what="every message to be decided or held")
        await wait_for(lambda: _written(ledger, ingestor), timeout=60, what="the ledger to hold every decision")
    finally:
        await ingestor.stop()
        await broker.stop()
    try:
        await _check(ledger, ingestor, metrics, items, verdicts)
    finally:
        await ledger.engine.dispose()


async def _written(ledger, ingestor: Ingestor) -> bool:
    async with ledger.engine.connect() as conn:
        reports = (await conn.execute(select(func.count()).select_from(db.reports))).scalar()
        rejected = (await conn.execute(select(func.count()).select_from(db.rejected_messages))).scalar()
    return reports == ingestor.counters["accepted"] and rejected == sum(ingestor.counters[r] for r in REJECTIONS)


async def _check(ledger, ingestor: Ingestor, metrics: CoordinatorMetrics, items: list, verdicts: Counter) -> None:
    counters = ingestor.counters
    assert counters["internal_error"] == 0 and counters["write_errors"] == 0, dict(counters)
    # Verification's refusals reach the ledger and the counters unchanged, reason by reason.
    for reason in VERIFY_REASONS:
        assert counters[reason] == verdicts[reason], (reason, counters[reason], verdicts[reason])
    # The generator reached every stage: each outcome happened, many times.
    for outcome in (*VERIFY_REASONS, "replayed", "unknown_swarm", "accepted", "status"):
        assert counters[outcome] >= 20, (outcome, dict(counters))

    async with ledger.engine.connect() as conn:
        seqs = (await conn.execute(select(db.reports.c.node_id, db.reports.c.seq))).all()
        by_reason = dict((await conn.execute(select(db.rejected_messages.c.reason, func.count())
                                             .group_by(db.rejected_messages.c.reason))).all())  # fmt: skip
        totals = (await conn.execute(select(func.sum(db.volunteer_totals.c.samples)))).scalar() or 0
        granted = (await conn.execute(select(func.sum(db.reports.c.samples)).where(db.reports.c.status == "granted"))).scalar() or 0
    assert by_reason == {r: n for r, n in counters.items() if r in REJECTIONS and n}, (by_reason, dict(counters))
    assert totals == granted
    per_node: dict[str, list[int]] = {}
    for node_id, seq in seqs:
        per_node.setdefault(node_id, []).append(seq)
    for node_id, node_seqs in per_node.items():  # in order, none skipped, none twice
        assert sorted(node_seqs) == list(range(1, len(node_seqs) + 1)), node_id

    # Prometheus counts the report topics' decisions: every one of them, by the same reasons.
    status_items = sum(1 for topic, *_ in items if (p := parse_node_topic(topic)) is not None and p.kind == "status")
    exposition = metrics.exposition(None, None).decode()
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines()
               if line.startswith("hearth_reports_")}  # fmt: skip
    rejected_total = sum(v for k, v in samples.items() if k.startswith("hearth_reports_rejected_total"))
    assert samples["hearth_reports_accepted_total"] == counters["accepted"]
    assert samples["hearth_reports_received_total"] == samples["hearth_reports_accepted_total"] + rejected_total
    assert len(items) - len(ingestor.sequencer) - samples["hearth_reports_received_total"] == status_items
