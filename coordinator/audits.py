"""Audits of real work: adaptive spot checks of nodes' gradients, BOINC's adaptive replication for training.

When a pending report is first seen (coordinator/work_check.py), its node is audited with a probability that
starts at P_START, halves with every audit passed in a row down to P_MIN, and is 1
after a failure until the node passed RECOVERY audits in a row. An audit names a batch (a random seed → the
first batch of the task's data stream with that seed) and a model state (the swarm's latest checkpoint, else the
task's seeded initial model) and asks, over the node's MQTT audits topic, for the loss and a gradient digest
(hearth/audit.py). The node answers with a signed AuditAnswer (POST /api/v1/audits/answers, audits_api.py); this
process recomputes the same in a thread and compares within float tolerance.

A failure (or no answer within ANSWER_TIMEOUT) rejects the audited report; BAN_AFTER failures ban the
volunteer (volunteers.banned_at): every later report of theirs is rejected, and access tokens stop. The
coordinator's compute per audit is kept in audits.validator_seconds, the node's in node_seconds.

MQTT delivers a request only to a node connected at that moment, so an open request is sent again every RESEND
seconds (the node answers an audit id once), and ANSWER_TIMEOUT counts only the time the node could have heard it:
while the coordinator's own broker connection is up and it heard from the node (a presence message or a report)
within the last REACHABLE seconds. A node that stays unreachable for OFFLINE_LIMIT seconds leaves it unanswered.
"""

import asyncio
import logging
import random
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Awaitable, Callable, Optional, Union

import torch
from sqlalchemy import insert, select, update

from coordinator import db
from coordinator.ledger import _seconds, utcnow
from coordinator.assets import configured_task
from hearth.audit import audit_model, compute_answer, mismatch, reference_backward
from protocol.encoding import canonical_bytes
from protocol.envelope import seal
from protocol.messages import AuditAnswer, AuditRequest
from protocol.topics import audit_topic

logger = logging.getLogger(__name__)

P_START = 0.5  # a new node's odds: its first reports are likely checked (every audit of a cheater fails)
P_MIN = 0.05
RECOVERY = 5  # passes in a row that bring a node that failed back to the halving probability
BAN_AFTER = 3  # failed audits that ban the volunteer
ANSWER_TIMEOUT = 120.0  # seconds the node was reachable (it may include a checkpoint download)
RESEND = 10.0  # seconds between two sends of an open request
REACHABLE = 45.0  # seconds since the coordinator last heard from a node (nodes announce presence every 15 s)
OFFLINE_LIMIT = 300.0  # seconds an open audit waits for its node to become reachable again
DIGEST_SIZE = 32
MAX_AUDIT_BATCH = 64  # samples: enough to tell real gradients from any others, cheap to recompute

Outcome = Union[None, bool, str]  # None: not audited; False: open; True: passed; str: why it failed


@dataclass
class Trust:
    passes_in_row: int = 0
    audits: int = 0
    failures: int = 0

    @property
    def probability(self) -> float:
        if self.failures and self.passes_in_row < RECOVERY:
            return 1.0
        return max(P_MIN, P_START * 0.5 ** (self.passes_in_row - (RECOVERY if self.failures else 0)))


@dataclass
class _Open:
    audit_id: int
    request: AuditRequest
    report_id: int
    volunteer_id: int
    task: str
    task_options: Optional[dict]  # the swarms row's column, {"options": …, "assets": …}, as configured_task takes it
    state_path: Optional[str]
    sent_at: float  # latest send
    checked_at: float  # the clock's latest advance (expire)
    waited: float = 0.0  # seconds the node was reachable since the request
    unreachable: float = 0.0  # seconds it was not


class AuditRefused(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Auditor:
    def __init__(self, engine, publish: Callable[[str, bytes], Awaitable[None]], checkpoints=None,
                 rng: Optional[random.Random] = None, clock: Callable[[], float] = time.time,
                 answer_timeout: float = ANSWER_TIMEOUT, key=None, assets=None,
                 connected: Callable[[], bool] = lambda: True, resend: float = RESEND,
                 on_ban: Optional[Callable[[int], Awaitable[object]]] = None):  # fmt: skip
        """`key`: the coordinator's protocol.signing.SigningKey that seals requests (None: sent unsigned);
        `assets`: the coordinator.assets.AssetStore, for tasks built from files (a pretrained model, text shards);
        `connected()`: whether `publish` reaches the broker now (the answer clocks stop while it does not);
        `on_ban(volunteer_id)`: called once a volunteer is banned (the embedded broker revokes their logins)."""
        self.key, self.assets, self.connected, self.on_ban = key, assets, connected, on_ban
        self.engine, self.publish, self.checkpoints = engine, publish, checkpoints
        self.rng, self.clock, self.answer_timeout = rng or random.SystemRandom(), clock, answer_timeout
        self.resend = resend
        self.trust: dict[str, Trust] = {}
        self._open: dict[int, _Open] = {}  # audit id → what it asked
        self._outcomes: dict[int, Outcome] = {}  # report id → outcome, until work_check settled the report
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="audit-validator")  # one recomputation at a time
        self._initial: dict[tuple, dict] = {}  # (task, options) → the seeded initial model's state_dict
        self._states: dict[str, dict] = {}  # checkpoint path → its model state (the latest few)

    async def trust_of(self, node_id: str) -> Trust:
        if node_id not in self.trust:
            async with self.engine.connect() as conn:
                row = (await conn.execute(select(db.node_trust).where(db.node_trust.c.node_id == node_id))).first()
            self.trust[node_id] = Trust(row.passes_in_row, row.audits, row.failures) if row else Trust()
        return self.trust[node_id]

    # --- asking -----------------------------------------------------------------------------------------------
    async def consider(self, report) -> bool:
        """Maybe audit the node of `report` (a pending reports row with node_id, volunteer_id, swarm_id, epoch,
        id); True if an audit was sent and the report's grant now waits for it."""
        if any(o.request.node_id == report.node_id for o in self._open.values()):
            return False  # one open audit per node
        trust = await self.trust_of(report.node_id)
        if self.rng.random() >= trust.probability:
            return False
        await self.request(report)
        return True

    async def request(self, report) -> int:
        async with self.engine.connect() as conn:
            swarm = (await conn.execute(select(db.swarms).where(db.swarms.c.swarm_id == report.swarm_id))).first()
        latest = self.checkpoints.latest(report.swarm_id) if self.checkpoints is not None else None
        seed = secrets.randbits(62)
        batch_size = min(int(swarm.hyperparameters["batch_size"]), MAX_AUDIT_BATCH)
        values = dict(node_id=report.node_id, swarm_id=report.swarm_id, report_id=report.id, epoch=report.epoch,
                      state_epoch=latest.epoch if latest else 0, seed=seed, batch_size=batch_size,
                      digest_size=DIGEST_SIZE, status="open", validator_seconds=0.0, node_seconds=0.0,
                      requested_at=utcnow())  # fmt: skip
        async with self.engine.begin() as conn:
            audit_id = (await conn.execute(insert(db.audits).values(**values))).inserted_primary_key[0]
        request = AuditRequest(
            audit_id=audit_id, node_id=report.node_id, swarm_id=report.swarm_id, epoch=report.epoch,
            state_epoch=values["state_epoch"], state_sha256=latest.sha256 if latest else None, seed=seed,
            batch_size=batch_size, digest_size=DIGEST_SIZE, time=self.clock(),
        )  # fmt: skip
        now = self.clock()
        pending = _Open(audit_id, request, report.id, report.volunteer_id, swarm.task, swarm.task_options,
                        str(latest.path) if latest else None, sent_at=now, checked_at=now)  # fmt: skip
        self._open[audit_id] = pending
        self._outcomes[report.id] = False
        await self._send(pending)
        logger.info("Audit %d: node %s, epoch %d (batch seed %d, state of epoch %d)",
                    audit_id, report.node_id, report.epoch, seed, request.state_epoch)  # fmt: skip
        return audit_id

    async def _send(self, pending: _Open) -> None:
        request = pending.request
        payload = seal(request, self.key) if self.key is not None else canonical_bytes(request.model_dump(mode="json"))
        pending.sent_at = self.clock()
        await self.publish(audit_topic(request.swarm_id, request.node_id), payload)

    def outcome(self, report_id: int) -> Outcome:
        """What work_check needs for a report: None (not audited), False (open), True (passed) or the reason it
        failed. A decided outcome is forgotten once read: the report is settled right after."""
        outcome = self._outcomes.get(report_id)
        if outcome is not None and outcome is not False:
            del self._outcomes[report_id]
        return outcome

    # --- answers ----------------------------------------------------------------------------------------------
    async def answer(self, answer: AuditAnswer) -> dict:
        """Judge a verified answer; raises AuditRefused when it answers no open audit of that node."""
        pending = self._open.get(answer.audit_id)
        if pending is None or pending.request.node_id != answer.node_id or pending.request.swarm_id != answer.swarm_id:
            raise AuditRefused(404, "unknown_audit", f"no open audit {answer.audit_id} of node {answer.node_id}")
        del self._open[answer.audit_id]
        expected, validator_seconds = await asyncio.get_running_loop().run_in_executor(self._executor, self._recompute,
                                                                                      pending)  # fmt: skip
        why = mismatch(expected, (answer.loss, list(answer.digest)))
        await self._record(pending, "passed" if why is None else "failed", why, answer.loss, expected[0],
                           validator_seconds, answer.compute_seconds)  # fmt: skip
        return {"audit_id": answer.audit_id, "passed": why is None, "reason": why}

    def _recompute(self, pending: _Open) -> tuple[tuple[float, list[float]], float]:
        """(loss, digest) as the validator computes them, and the seconds that took (in the validator's thread)."""
        started = time.perf_counter()
        task = configured_task(pending.task, pending.task_options, self.assets, node_id=pending.request.node_id)
        if pending.state_path is not None:
            if pending.state_path not in self._states:
                self._states = dict(list(self._states.items())[-2:])
                self._states[pending.state_path] = torch.load(pending.state_path, map_location="cpu", weights_only=True)["model"]
            state = self._states[pending.state_path]
        else:  # built once: the seeded initial model is the same for every audit of the task
            key = (pending.task, repr(pending.task_options))
            if key not in self._initial:
                self._initial[key] = audit_model(task, None).state_dict()
            state = self._initial[key]
        request = pending.request
        answer = compute_answer(task, state, request.seed, request.batch_size, request.digest_size,
                                reference_backward(task))  # fmt: skip
        return answer, time.perf_counter() - started

    async def expire(self, heard: Optional[dict[str, float]] = None) -> int:
        """Advance the open audits' clocks, send their requests again where due, and fail those whose node was
        reachable for answer_timeout without answering, or unreachable for OFFLINE_LIMIT; how many failed.
        `heard`: node id → when a report of it last arrived (POSIX seconds), besides the presence in the ledger."""
        if not self._open:
            return 0
        now, connected = self.clock(), self.connected()
        reachable = await self._reachable({o.request.node_id for o in self._open.values()}, heard or {}, now)
        late = []
        for pending in list(self._open.values()):
            elapsed, pending.checked_at = now - pending.checked_at, now
            if not connected:  # nothing reaches any node now: the clocks stop
                continue
            if pending.request.node_id not in reachable:
                pending.unreachable += elapsed
            else:
                pending.waited += elapsed
                if now - pending.sent_at >= self.resend:
                    await self._send(pending)
            if pending.waited > self.answer_timeout or pending.unreachable > OFFLINE_LIMIT:
                late.append(pending)
        for pending in late:
            del self._open[pending.audit_id]
            why = "no answer to the audit in time" if pending.waited > self.answer_timeout else "node unreachable"
            await self._record(pending, "unanswered", why, None, None, 0.0, 0.0)
        return len(late)

    async def _reachable(self, node_ids: set[str], heard: dict[str, float], now: float) -> set[str]:
        """The nodes the coordinator heard from within REACHABLE seconds: an online presence or a report."""
        n = db.nodes
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(n.c.node_id, n.c.online, n.c.last_seen).where(n.c.node_id.in_(node_ids)))
            present = {r.node_id for r in rows if r.online and now - (_seconds(r.last_seen) or 0.0) <= REACHABLE}
        return present | {node_id for node_id in node_ids if now - heard.get(node_id, -REACHABLE) <= REACHABLE}

    async def _record(self, pending: _Open, status: str, reason: Optional[str], loss, expected_loss,
                      validator_seconds: float, node_seconds: float) -> None:  # fmt: skip
        node_id = pending.request.node_id
        trust = await self.trust_of(node_id)
        trust.audits += 1
        if status == "passed":
            trust.passes_in_row += 1
        else:
            trust.passes_in_row = 0
            trust.failures += status == "failed"  # no answer raises the odds of the next audit, but never bans
        now = utcnow()
        ban = status == "failed" and trust.failures >= BAN_AFTER
        async with self.engine.begin() as conn:
            await conn.execute(update(db.audits).where(db.audits.c.id == pending.audit_id).values(
                status=status, reason=reason and reason[:200], loss=loss, expected_loss=expected_loss,
                validator_seconds=validator_seconds, node_seconds=node_seconds, answered_at=now))  # fmt: skip
            values = dict(passes_in_row=trust.passes_in_row, audits=trust.audits, failures=trust.failures)
            if status == "failed":
                values["last_failure_at"] = now
            await conn.execute(db.upsert(self.engine.dialect.name, db.node_trust).values(node_id=node_id, **values)
                               .on_conflict_do_update(index_elements=["node_id"], set_=values))  # fmt: skip
            if ban:
                await conn.execute(update(db.volunteers).where(db.volunteers.c.id == pending.volunteer_id,
                                                               db.volunteers.c.banned_at.is_(None)).values(banned_at=now))  # fmt: skip
        self._outcomes[pending.report_id] = True if status == "passed" else f"audit {status}: {reason}"[:64]
        log = logger.info if status == "passed" else logger.warning
        log("Audit %d of node %s %s%s", pending.audit_id, node_id, status, f" ({reason})" if reason else "")
        if ban:
            logger.warning("Volunteer %d banned after %d failed audits", pending.volunteer_id, trust.failures)
            if self.on_ban is not None:
                await self.on_ban(pending.volunteer_id)
