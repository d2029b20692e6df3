"""Verified work (`hearth coordinator serve --verify-work`): reports wait as `pending` until their epoch's evidence
is in, then are granted for what the plausibility rules believe, held for an audit, or rejected.

Every POLL seconds this task reads each swarm's signed progress records from the DHT (the monitor's peer) into
coordinator/plausibility.py (less often while a swarm's epoch is far from its end: see READ_LEAD), decides the
pending reports it can, lets coordinator/audits.py pick some of them for a spot check (their grant waits for its
outcome) and writes the decisions through Ledger.settle.
"""

import asyncio
import logging
import time
from collections import Counter
from typing import Optional

from sqlalchemy import select

from coordinator import db
from coordinator.ledger import Ledger, credit_for
from coordinator.plausibility import Claim, SwarmPlausibility, Verdict
from hearth.progress import parse_progress, progress_key

logger = logging.getLogger(__name__)

POLL = 0.5  # seconds between passes, and between reads of a swarm's progress records near its epoch's end
# Far from it, a swarm's records are read every 1/READ_LEAD of its estimated remaining time, at most every FAR_POLL s:
# each read is a find RPC to every peer storing the key (their DHT process and p2pd, on the volunteers' CPU), and
# what the rules need most is each peer's last record of an epoch (its share), published about a second apart.
READ_LEAD = 4.0
FAR_POLL = 1.5  # under the monitor's 2 s interval, so its dashboards' poll keeps reusing these reads
GET_TIMEOUT = 5.0
MAX_PENDING = 5000  # pending reports read per pass


class WorkChecker:
    def __init__(self, ledger: Ledger, monitor, auditor=None, poll: float = POLL, clock=time.time):
        self.ledger, self.monitor, self.auditor, self.poll, self.clock = ledger, monitor, auditor, poll, clock
        self.swarms: dict[str, SwarmPlausibility] = {}
        self._decided: dict[int, Verdict] = {}  # report id → verdict, while its audit is open
        self._considered: set[int] = set()  # pending reports the auditor has seen
        self._next_read: dict[str, float] = {}  # swarm_id → when its progress records are due to be read again
        self._task: Optional[asyncio.Task] = None
        self.counters: Counter[str] = Counter()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="work-check")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Work check failed; retrying")
            await asyncio.sleep(self.poll)

    async def run_once(self) -> int:
        """One pass: read evidence, decide what can be; returns how many reports were settled."""
        await self._observe()
        return await self._settle(self.clock())

    async def _observe(self) -> None:
        if self.monitor is None or self.monitor.dht is None:
            return
        for swarm_id, info in list(self.ledger.swarms.items()):
            plausibility = await self._plausibility(swarm_id)
            if plausibility is None or self.clock() < self._next_read.get(swarm_id, 0.0):
                continue
            await self.monitor.register(info.run_id)
            dht = self.monitor.dht_for(info.run_id) if hasattr(self.monitor, "dht_for") else self.monitor.dht
            try:
                record = await asyncio.wait_for(dht.get(progress_key(info.run_id), latest=True, return_future=True),
                                                GET_TIMEOUT)  # fmt: skip
            except asyncio.TimeoutError:
                continue
            progress, now = parse_progress(record), self.clock()
            plausibility.observe(progress.peers, now)
            self.monitor.note_progress(swarm_id, progress)  # the dashboards' read too: one read serves both
            wait = min(max(plausibility.seconds_to_epoch_end(now) / READ_LEAD, self.poll), FAR_POLL)
            self._next_read[swarm_id] = now + wait

    async def _plausibility(self, swarm_id: str) -> Optional[SwarmPlausibility]:
        if swarm_id not in self.swarms:
            async with self.ledger.engine.connect() as conn:
                row = (await conn.execute(select(db.swarms.c.hyperparameters)
                                          .where(db.swarms.c.swarm_id == swarm_id))).first()  # fmt: skip
            if row is None:
                return None
            self.swarms[swarm_id] = SwarmPlausibility(int(row.hyperparameters["target_batch_size"]))
        return self.swarms[swarm_id]

    async def _pending(self) -> list:
        r, n, v = db.reports, db.nodes, db.volunteers
        async with self.ledger.engine.connect() as conn:
            return list(await conn.execute(
                select(r.c.id, r.c.node_id, r.c.volunteer_id, r.c.swarm_id, r.c.epoch, r.c.samples, r.c.received_at,
                       n.c.peer_id, v.c.banned_at)
                .join(n, n.c.node_id == r.c.node_id).join(v, v.c.id == r.c.volunteer_id)
                .where(r.c.status == "pending").order_by(r.c.id).limit(MAX_PENDING)
            ))  # fmt: skip

    async def _settle(self, now: float) -> int:
        rows = await self._pending()
        if self.auditor is not None:
            heard: dict[str, float] = {}  # a node sending reports can hear its audits, whatever its presence says
            for row in rows:
                heard[row.node_id] = max(heard.get(row.node_id, 0.0), _posix(row.received_at))
            await self.auditor.expire(heard)
        grants: dict[int, tuple[int, float, Optional[str]]] = {}
        rejections: dict[int, str] = {}
        by_swarm: dict[str, list] = {}
        for row in rows:
            if row.banned_at is not None:
                rejections[row.id] = "volunteer banned after failed audits"
                continue
            if self.auditor is not None and row.id not in self._considered:
                # at first sight, so that the request reaches a node that stops right after its last report
                self._considered.add(row.id)
                await self.auditor.consider(row)
            if row.id not in self._decided:
                by_swarm.setdefault(row.swarm_id, []).append(row)
        rows_by_id = {row.id: row for row in rows}
        for swarm_id, swarm_rows in by_swarm.items():
            plausibility = await self._plausibility(swarm_id)
            claims = [Claim(row.id, row.node_id, row.peer_id, row.epoch, row.samples, _posix(row.received_at))
                      for row in swarm_rows]  # fmt: skip
            for verdict in plausibility.decide(claims, now):
                self._decided[verdict.report_id] = verdict
        for report_id, verdict in list(self._decided.items()):
            row = rows_by_id.get(report_id)
            if row is None:  # no longer pending (settled elsewhere) or beyond this pass's page
                continue
            outcome = self.auditor.outcome(report_id) if self.auditor is not None else None
            if outcome is False:
                continue  # its audit is still open
            if verdict.rejected:
                rejections[report_id] = verdict.reason
            elif isinstance(outcome, str):
                rejections[report_id] = outcome  # the audit failed or went unanswered
            else:
                flops = self.ledger.swarms[row.swarm_id].flops_per_sample
                grants[report_id] = (verdict.samples, credit_for(verdict.samples, flops), verdict.reason)
        for reason in rejections.values():
            self.counters[reason.split(":")[0]] += 1
        settled = await self.ledger.settle(grants, rejections)
        for report_id in [*grants, *rejections]:
            self._decided.pop(report_id, None)
            self._considered.discard(report_id)
        return settled


def _posix(value) -> float:
    from coordinator.ledger import _seconds

    return _seconds(value) or 0.0
