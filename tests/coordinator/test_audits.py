"""Audits end to end with real parts: a SQLite ledger, the embedded MQTT broker, the coordinator's ingest connection
(which publishes the requests), its HTTP app on uvicorn (which takes the answers), and on the node side the real
reporter (MQTT) and audit responder answering through the trainer's own gradient path. A cheater's gradient path
(random gradients) fails every audit and is banned after BAN_AFTER failures."""

import asyncio
import random
import threading
import time
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from types import SimpleNamespace

import httpx
import pytest
import torch
from sqlalchemy import select

from coordinator import db
from coordinator.api import Services
from coordinator.app import _Server, create_app, listening_socket
from coordinator.audits import BAN_AFTER, OFFLINE_LIMIT, P_MIN, P_START, Auditor, Trust
from coordinator.broker import EmbeddedBroker
from coordinator.checkpoints import CheckpointStore
from coordinator.ingest import Ingestor
from coordinator.ledger import Batch, utcnow
from coordinator.work_check import WorkChecker
from hearth.tasks import load_task
from node.audit import AuditResponder
from node.checkpoint import CoordinatorCheckpoints
from node.daemon import ReporterThread
from node.outbox import Outbox
from node.reporter import Reporter
from node.trainer import Trainer
from protocol.signing import SigningKey
from protocol.topics import audit_topic
from tests.coordinator.helpers import SWARM, make_ledger, registration, wait_for
from protocol.envelope import open_envelope, parse_body
from protocol.messages import VolunteerRegistration

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_audit_probability_halves_with_passes_and_returns_to_one_after_a_failure():
    assert Trust().probability == P_START == 0.5
    assert Trust(passes_in_row=1, audits=1).probability == 0.25
    assert Trust(passes_in_row=3, audits=3).probability == 0.0625
    assert Trust(passes_in_row=50, audits=50).probability == P_MIN
    assert Trust(passes_in_row=2, audits=10, failures=1).probability == 1.0
    assert Trust(passes_in_row=6, audits=10, failures=1).probability == 0.25


class Node:
    """A node's audit side: reporter (MQTT) + responder + a training thread that answers between 'batches'."""

    def __init__(self, tmp_path, key: SigningKey, url: str, broker_url: str, backward):
        task = load_task("spirals")
        self.outbox = Outbox(tmp_path / f"outbox-{key.node_id}.sqlite")
        self.reporter = Reporter(broker_url, key, "spirals", "cpu", self.outbox)
        self.responder = AuditResponder(task, url, key, "spirals", CoordinatorCheckpoints(url, "spirals", tmp_path))
        self.reporter.on_audit = self.responder.receive
        self.thread, self.stop = ReporterThread(self.reporter), threading.Event()
        self.trainer = threading.Thread(target=self._train, args=(backward,), daemon=True)

    def _train(self, backward) -> None:
        while not self.stop.wait(0.05):
            self.responder.run_pending(backward, torch.device("cpu"))

    def __enter__(self):
        self.responder.start()
        self.thread.start()
        self.trainer.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.trainer.join(5)
        self.thread.stop(5)
        self.responder.stop()
        self.outbox.close()


def honest_backward():
    """The node's real gradient path: Trainer.compute_gradients (fp32, as audits ask)."""
    trainer = SimpleNamespace(task=load_task("spirals"), device=torch.device("cpu"))
    return lambda model, batch: Trainer.compute_gradients(trainer, model, batch)


def garbage_backward(model, batch):
    """A cheater's path: the loss is real, the gradients random."""
    loss = load_task("spirals").loss(model, batch)
    for param in model.parameters():
        param.grad = torch.randn_like(param)
    return loss.detach()


@asynccontextmanager
async def coordinator_parts(tmp_path, **auditor_options):
    """Ledger, broker, ingest (its connection publishes audit requests), auditor, HTTP app on a real socket."""
    ledger = await make_ledger(tmp_path)
    broker = EmbeddedBroker("127.0.0.1", 0)
    await broker.start()
    ingestor = Ingestor(ledger, "127.0.0.1", broker.port)
    ingestor.hold_for_verification = True
    await ingestor.start()
    await asyncio.wait_for(ingestor.subscribed.wait(), 15)
    auditor = Auditor(ledger.engine, ingestor.publish, CheckpointStore(tmp_path / "checkpoints", 2),
                      rng=random.Random(0), answer_timeout=60, connected=ingestor.subscribed.is_set,
                      **auditor_options)  # fmt: skip
    app = create_app(Services(ledger, broker.url, "operator-secret"))
    app.state.auditor = auditor
    sock = listening_socket("127.0.0.1", 0)
    import uvicorn

    server = _Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await wait_for(lambda: _true(server.started), 15, "the HTTP server")
        yield SimpleNamespace(ledger=ledger, auditor=auditor, broker_url=broker.url,
                              url=f"http://127.0.0.1:{sock.getsockname()[1]}")  # fmt: skip
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 15)
        await ingestor.stop()
        await broker.stop()
        await ledger.engine.dispose()


async def _true(value) -> bool:
    return bool(value)


async def register(ledger, key: SigningKey, name: str) -> None:
    await ledger.register(parse_body(open_envelope(registration(key, name)), VolunteerRegistration))


async def pending_report(ledger, key: SigningKey, seq: int, epoch: int, swarm_id: str = "spirals"):
    node = ledger.nodes[key.node_id]
    batch = Batch(grants=[dict(node_id=key.node_id, volunteer_id=node.volunteer_id, swarm_id=swarm_id, seq=seq,
                               epoch=epoch, samples=1000, compute_seconds=1.0, device="cpu", loss=1.0, group_size=2,
                               status="pending", reason=None, credit=1.0, received_at=utcnow())])  # fmt: skip
    await ledger.write(batch)
    async with ledger.engine.connect() as conn:
        return (await conn.execute(select(db.reports).where(db.reports.c.node_id == key.node_id,
                                                            db.reports.c.seq == seq))).first()  # fmt: skip


async def audit_status(ledger, audit_id: int) -> str:
    async with ledger.engine.connect() as conn:
        return (await conn.execute(select(db.audits.c.status).where(db.audits.c.id == audit_id))).scalar_one()


def test_an_honest_node_passes_its_audit_and_its_report_is_granted(tmp_path):
    asyncio.run(_honest_node_passes(tmp_path))


async def _honest_node_passes(tmp_path):
    key = SigningKey.generate()
    async with coordinator_parts(tmp_path) as c:
        await register(c.ledger, key, "honest")
        with Node(tmp_path, key, c.url, c.broker_url, honest_backward()):
            await wait_for(lambda: _online(c.ledger, key), 30, "the node's presence")
            report = await pending_report(c.ledger, key, 1, 0)
            audit_id = await c.auditor.request(report)
            await wait_for(lambda: _status_is(c.ledger, audit_id, "passed"), 60, "the audit to pass")
        assert c.auditor.outcome(report.id) is True
        assert (await c.auditor.trust_of(key.node_id)).passes_in_row == 1
        async with c.ledger.engine.connect() as conn:
            row = (await conn.execute(select(db.audits).where(db.audits.c.id == audit_id))).first()
        assert row.validator_seconds > 0 and row.node_seconds > 0
        assert row.loss == pytest.approx(row.expected_loss, rel=1e-3)
        async with httpx.AsyncClient(base_url=c.url) as client:  # the node's audit trail in the API
            listed = (await client.get("/api/v1/audits", params={"node_id": key.node_id})).json()
            forged = await client.post("/api/v1/audits/answers", content=b'{"body": "{}", "sig": "x"}')
        assert [(a["id"], a["status"], a["reason"]) for a in listed["audits"]] == [(audit_id, "passed", None)]
        assert forged.status_code == 400 and forged.json()["error"]["code"] == "unsupported_version"  # an empty body


def test_random_gradients_fail_every_audit_and_the_volunteer_is_banned(tmp_path):
    asyncio.run(_garbage_is_banned(tmp_path))


async def _garbage_is_banned(tmp_path):
    key = SigningKey.generate()
    async with coordinator_parts(tmp_path) as c:
        await register(c.ledger, key, "cheater")
        checker = WorkChecker(c.ledger, monitor=None, auditor=c.auditor)
        with Node(tmp_path, key, c.url, c.broker_url, garbage_backward):
            await wait_for(lambda: _online(c.ledger, key), 30, "the node's presence")
            for epoch in range(BAN_AFTER):
                report = await pending_report(c.ledger, key, epoch + 1, epoch)
                audit_id = await c.auditor.request(report)
                await wait_for(lambda: _status_is(c.ledger, audit_id, "failed"), 60, "the audit to fail")
                outcome = c.auditor.outcome(report.id)
                assert outcome.startswith("audit failed: gradient digest differs")
                await c.ledger.settle({}, {report.id: outcome})
        async with c.ledger.engine.connect() as conn:
            banned_at = (await conn.execute(select(db.volunteers.c.banned_at))).scalar_one()
            reasons = [r.reason for r in await conn.execute(select(db.reports.c.reason).order_by(db.reports.c.id))]
        assert banned_at is not None
        assert all(reason.startswith("audit failed") for reason in reasons)
        # Once banned, every report of theirs is refused without waiting for evidence.
        later = await pending_report(c.ledger, key, BAN_AFTER + 1, BAN_AFTER)
        assert await checker.run_once() == 1
        async with c.ledger.engine.connect() as conn:
            row = (await conn.execute(select(db.reports).where(db.reports.c.id == later.id))).first()
            pending = (await conn.execute(select(db.volunteer_totals.c.pending_reports))).scalar_one()
        assert (row.status, row.reason) == ("rejected", "volunteer banned after failed audits")
        assert pending == 0


def test_a_request_sent_while_the_node_was_offline_is_answered_once_it_is_back(tmp_path):
    asyncio.run(_offline_node_answers_later(tmp_path))


async def _offline_node_answers_later(tmp_path):
    key = SigningKey.generate()
    async with coordinator_parts(tmp_path, resend=0.5) as c:
        await register(c.ledger, key, "away")
        report = await pending_report(c.ledger, key, 1, 0)
        audit_id = await c.auditor.request(report)  # MQTT delivers it to no one: the node is not connected
        with Node(tmp_path, key, c.url, c.broker_url, honest_backward()) as node:

            async def passed() -> bool:  # as the work check does every pass: the open request goes again
                await c.auditor.expire()
                return await _status_is(c.ledger, audit_id, "passed")

            await wait_for(passed, 60, "the audit, sent again, to pass")
        assert node.responder.answered == 1  # sent every 0.5 s while it was being answered: computed once
        assert c.auditor.outcome(report.id) is True


def test_an_audit_fails_unanswered_only_after_its_node_could_hear_it_for_the_whole_timeout(tmp_path):
    """The answer clock runs while the coordinator hears from the node (an online presence, or reports whatever the
    presence says); a node it does not hear from is waited for up to OFFLINE_LIMIT, its request not sent meanwhile."""
    asyncio.run(_answer_clocks(tmp_path))


async def _answer_clocks(tmp_path):
    ledger = await make_ledger(tmp_path)
    now, topics = [time.time()], []

    async def publish(topic, payload):
        topics.append(topic)

    auditor = Auditor(ledger.engine, publish, None, rng=random.Random(0), clock=lambda: now[0], answer_timeout=120)
    away, silent, reporting = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    try:
        audits = {}
        for key, name in ((away, "away"), (silent, "silent"), (reporting, "reporting")):
            await register(ledger, key, name)
            audits[name] = await auditor.request(await pending_report(ledger, key, 1, 0))
        for _ in range(25):  # 250 s: `silent` announces itself, `reporting` said offline but sends reports
            now[0] += 10
            await _presence(ledger, silent, online=True, at=now[0])
            await auditor.expire(heard={reporting.node_id: now[0] - 5})
        assert {name: await audit_status(ledger, i) for name, i in audits.items()} == {
            "away": "open", "silent": "unanswered", "reporting": "unanswered"}  # fmt: skip
        assert topics.count(audit_topic("spirals", away.node_id)) == 1  # never resent to a node that cannot hear
        assert topics.count(audit_topic("spirals", silent.node_id)) >= 120 // 10  # every RESEND s while it could
        now[0] += OFFLINE_LIMIT - 240
        await auditor.expire()
        assert await audit_status(ledger, audits["away"]) == "unanswered"
        assert (await auditor.trust_of(away.node_id)).failures == 0  # unanswered never counts towards a ban
    finally:
        await ledger.engine.dispose()


async def _presence(ledger, key: SigningKey, online: bool, at: float) -> None:
    async with ledger.engine.begin() as conn:
        await conn.execute(db.nodes.update().where(db.nodes.c.node_id == key.node_id).values(
            online=online, last_seen=datetime.fromtimestamp(at, timezone.utc)))  # fmt: skip


async def _status_is(ledger, audit_id: int, status: str) -> bool:
    return await audit_status(ledger, audit_id) == status


async def _online(ledger, key: SigningKey) -> bool:
    """The node announced itself, which it does after subscribing to its topics (audits included)."""
    async with ledger.engine.connect() as conn:
        return bool((await conn.execute(select(db.nodes.c.online).where(db.nodes.c.node_id == key.node_id))).scalar())


def test_the_validator_audits_the_swarms_configured_model_not_the_tasks_default(tmp_path):
    """A swarm defined with task options (tiny-lm sized down) is audited on that model: the validator once built the
    task's default model and failed every audit of such a swarm with an error (a 500 to the node)."""
    asyncio.run(_configured_model(tmp_path))


async def _configured_model(tmp_path):
    from coordinator.assets import configured_task
    from hearth.audit import compute_answer, reference_backward
    from protocol.messages import AuditAnswer, AuditRequest

    ledger = await make_ledger(tmp_path)
    options = {"options": {"layers": 1, "d_model": 32, "heads": 2, "seq_len": 16}}
    await ledger.create_swarm({**SWARM, "swarm_id": "small-lm", "task": "tiny-lm", "task_options": options,
                               "run_id": "hearth-small-lm-00000000"})  # fmt: skip
    key = SigningKey.generate()
    await register(ledger, key, "lm")
    report = await pending_report(ledger, key, 1, 0, swarm_id="small-lm")
    published = []

    async def publish(topic, payload):
        published.append(payload)

    auditor = Auditor(ledger.engine, publish, None, rng=random.Random(0))
    try:
        audit_id = await auditor.request(report)
        request = AuditRequest.model_validate_json(published[0])  # unsealed: this auditor has no key
        node_task = configured_task("tiny-lm", options, None)  # as the node runs it, from the manifest
        loss, digest = compute_answer(node_task, None, request.seed, request.batch_size, request.digest_size,
                                      reference_backward(node_task))  # fmt: skip
        verdict = await auditor.answer(AuditAnswer(audit_id=audit_id, node_id=key.node_id, swarm_id="small-lm",
                                                   loss=loss, digest=digest, compute_seconds=0.1, time=time.time()))
        assert verdict == {"audit_id": audit_id, "passed": True, "reason": None}
        assert await audit_status(ledger, audit_id) == "passed"
    finally:
        await ledger.engine.dispose()
