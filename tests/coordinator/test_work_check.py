"""Verified work through the real ingest path and ledger (SQLite and PostgreSQL): reports wait `pending`, a second
report of an epoch is refused but keeps its sequence number, and the work check grants what the DHT evidence
supports (fed here straight into the plausibility rules, with a fake clock, instead of from a DHT) with the reason
of any cut, moving pending credit into the totals exactly once. And on a real DHT: how often it reads a swarm's
progress records."""

import asyncio
import time

from sqlalchemy import select

from coordinator import db
from coordinator.ingest import Ingestor
from coordinator.ledger import Batch, credit_for
from coordinator.monitor import DHTMonitor
from coordinator.plausibility import BORROW, CLAIM_WAIT, STALE_PEER, TOLERANCE
from coordinator.work_check import FAR_POLL, POLL, WorkChecker
from hearth.progress import PeerProgress
from protocol.envelope import open_envelope, parse_body, seal
from protocol.messages import VolunteerRegistration
from protocol.signing import SigningKey
from protocol.topics import report_topic
from tests.coordinator.helpers import FLOPS, SWARM, make_ledger, registration, report, wait_for


async def _register(ledger, key: SigningKey, name: str, peer_id: str) -> None:
    await ledger.register(parse_body(open_envelope(registration(key, name)), VolunteerRegistration))
    async with ledger.engine.begin() as conn:  # as a node that proved its libp2p key (coordinator/tokens.py) has
        await conn.execute(db.nodes.update().where(db.nodes.c.node_id == key.node_id).values(peer_id=peer_id))


def test_reports_wait_for_evidence_and_are_granted_for_what_it_supports(tmp_path, ledger_url):
    async def scenario():
        ledger = await make_ledger(tmp_path, ledger_url)
        ingestor = Ingestor(ledger, "127.0.0.1", 1)  # never started: messages go in through handle()
        ingestor.hold_for_verification = True
        honest, other, inflator = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
        await _register(ledger, honest, "honest", "peer-h")
        await _register(ledger, other, "other", "peer-o")  # honest too: the median is an honest node's ratio
        await _register(ledger, inflator, "inflator", "peer-x")
        try:
            batch = Batch()
            outcomes = [
                await ingestor.handle(report_topic("spirals", honest.node_id), seal(report(honest, 1, samples=1000, epoch=0), honest), batch),
                await ingestor.handle(report_topic("spirals", other.node_id), seal(report(other, 1, samples=1000, epoch=0), other), batch),
                await ingestor.handle(report_topic("spirals", inflator.node_id), seal(report(inflator, 1, samples=5000, epoch=0), inflator), batch),
                # the same epoch again under a new sequence number (a re-signed replay)
                await ingestor.handle(report_topic("spirals", inflator.node_id), seal(report(inflator, 2, samples=5000, epoch=0), inflator), batch),
            ]  # fmt: skip
            await ledger.write(batch)
            assert outcomes == ["accepted", "accepted", "accepted", "duplicate_epoch"]
            assert ledger.nodes[inflator.node_id].last_seq == 2  # receipted: its outbox lets it go

            checker = WorkChecker(ledger, monitor=None)
            assert await checker.run_once() == 0  # no evidence yet: both wait
            plausibility = checker.swarms["spirals"]
            now = (await _received(ledger))[0]
            # Every peer worked 1000 samples in epoch 0 (the epoch's last records, then the next epoch's first).
            peers = ("peer-h", "peer-o", "peer-x")
            plausibility.observe([PeerProgress(p, 0, 950, 1000.0, now - 0.1, False) for p in peers], now - 5)
            plausibility.observe([PeerProgress(p, 1, 0, 1000.0, now, False) for p in peers], now - 4)
            assert await checker._settle(now + CLAIM_WAIT) == 3

            async with ledger.engine.connect() as conn:
                rows = {(r.node_id, r.seq): r for r in await conn.execute(select(db.reports))}
                totals = {r.volunteer_id: r for r in await conn.execute(select(db.volunteer_totals))}
            h, x, dup = rows[(honest.node_id, 1)], rows[(inflator.node_id, 1)], rows[(inflator.node_id, 2)]
            assert (h.status, h.reason, h.credit) == ("granted", None, credit_for(1000, FLOPS))
            assert x.status == "granted" and x.reason.startswith("over observed share")
            # its observed share + the tolerance, + the float a node's first epochs may run ahead by
            assert x.credit <= credit_for(int(1000 * (1 + TOLERANCE) * (1 + BORROW)) + 1, FLOPS)
            assert (dup.status, dup.reason) == ("rejected", "duplicate_epoch: epoch 0 already reported")
            assert totals[h.volunteer_id].credit == h.credit and totals[x.volunteer_id].credit == x.credit
            assert all(t.pending_reports == 0 and abs(t.pending_credit) < 1e-9 for t in totals.values())
            assert await checker._settle(now + CLAIM_WAIT + 1) == 0  # exactly once
        finally:
            await ledger.engine.dispose()

    asyncio.run(scenario())


def test_a_report_without_evidence_is_rejected_after_the_timeout(tmp_path):
    async def scenario():
        ledger = await make_ledger(tmp_path)
        ingestor = Ingestor(ledger, "127.0.0.1", 1)
        ingestor.hold_for_verification = True
        key = SigningKey.generate()
        await _register(ledger, key, "unseen", "peer-u")
        try:
            batch = Batch()
            await ingestor.handle(report_topic("spirals", key.node_id), seal(report(key, 1, epoch=3), key), batch)
            await ledger.write(batch)
            checker = WorkChecker(ledger, monitor=None)
            now = (await _received(ledger))[0]
            assert await checker._settle(now + STALE_PEER) == 0
            assert await checker._settle(now + 61) == 1
            async with ledger.engine.connect() as conn:
                row = (await conn.execute(select(db.reports))).first()
            assert (row.status, row.reason) == ("rejected", "no progress record in the DHT for this epoch")
        finally:
            await ledger.engine.dispose()

    asyncio.run(scenario())


def test_progress_is_read_less_often_while_the_epochs_end_is_far_and_every_pass_near_it(tmp_path):
    """Each read costs every peer storing the key (on the volunteers' CPU); near an epoch's end every pass reads."""
    from hivemind.dht.crypto import RSASignatureValidator
    from hivemind.optim.progress_tracker import LocalTrainingProgress
    from hivemind.utils.timed_storage import get_dht_time

    from hearth.progress import progress_key

    async def scenario():
        ledger = await make_ledger(tmp_path)
        monitor = DHTMonitor(interval=3600)  # its own poll happens once, at start
        await monitor.start(lambda: [("spirals", SWARM["run_id"])])
        clock = [time.time()]
        checker = WorkChecker(ledger, monitor, clock=lambda: clock[0])
        owner = RSASignatureValidator().local_public_key

        async def publish(samples: int) -> None:
            progress = LocalTrainingProgress(peer_id=monitor.dht.peer_id.to_bytes(), epoch=0, samples_accumulated=samples,
                                             samples_per_second=10.0, time=get_dht_time(), client_mode=False)  # fmt: skip
            assert await monitor.dht.store(progress_key(SWARM["run_id"]), progress.dict(), get_dht_time() + 600,
                                           subkey=owner, return_future=True)  # fmt: skip

        async def read_at(seconds: float) -> bool:
            """Run the work check's reads with its clock at `seconds` from the start; True if it read the DHT."""
            clock[0] = start + seconds
            before = monitor.progress.get("spirals")
            await checker._observe()
            return monitor.progress.get("spirals") is not before

        try:
            start = clock[0]
            await wait_for(lambda: "spirals" in monitor.progress, what="the monitor's own first poll")
            await publish(0)  # 4096 samples to go at 10/s: the end is far
            assert await read_at(0)
            assert not await read_at(FAR_POLL - 0.1)
            assert await read_at(FAR_POLL)
            await publish(4090)  # under a second to go
            assert not await read_at(2 * FAR_POLL - 0.1)
            assert await read_at(2 * FAR_POLL)  # sees it: from now on every pass reads
            assert not await read_at(2 * FAR_POLL + POLL - 0.1)
            assert await read_at(2 * FAR_POLL + POLL)
        finally:
            await monitor.stop()
            await ledger.engine.dispose()

    asyncio.run(scenario())


async def _received(ledger) -> list[float]:
    from coordinator.ledger import _seconds

    async with ledger.engine.connect() as conn:
        return [_seconds(r.received_at) for r in await conn.execute(select(db.reports.c.received_at))]
