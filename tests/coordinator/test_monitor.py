"""The DHT monitor: one in-process hivemind DHT (no swarm). It validates a swarm's signed progress records,
reads them back as SwarmProgress, picks up swarms created later, and leaves no process behind."""

import asyncio
import dataclasses

import psutil
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.optim.progress_tracker import LocalTrainingProgress
from hivemind.utils.timed_storage import get_dht_time

from coordinator.monitor import DHTMonitor
from hearth.progress import SwarmProgress, progress_key
from tests.coordinator.helpers import wait_for


def test_monitor_reads_signed_progress(tmp_path):
    async def scenario():
        swarms = [("spirals", "hearth-spirals-test0001")]
        monitor = DHTMonitor(interval=0.2)
        await monitor.start(lambda: list(swarms))
        try:
            assert monitor.initial_peers and monitor.initial_peers[0].startswith("/ip4/127.0.0.1/tcp/")

            async def polled() -> bool:
                return "spirals" in monitor.progress

            await wait_for(polled, what="a first poll")
            assert monitor.progress["spirals"].progress.peers == []

            swarms.append(("later", "hearth-later-test0002"))  # created after start: registered on the next poll
            owner = RSASignatureValidator().local_public_key  # the key the progress records are signed with
            progress = LocalTrainingProgress(peer_id=monitor.dht.peer_id.to_bytes(), epoch=3, samples_accumulated=512,
                                             samples_per_second=1234.5, time=get_dht_time(), client_mode=False)  # fmt: skip
            stored = await monitor.dht.store(progress_key("hearth-later-test0002"), progress.dict(),
                                             get_dht_time() + 60, subkey=owner, return_future=True)  # fmt: skip
            assert stored

            async def seen() -> bool:
                snapshot = monitor.progress.get("later")
                return snapshot is not None and len(snapshot.progress.peers) == 1

            await wait_for(seen, what="the stored progress record")
            later = monitor.progress["later"].progress
            assert later.epoch == 3 and later.samples_per_second == 1234.5
            assert "hearth-later-test0002" in monitor._registered
            dht_process = psutil.Process(monitor.dht.pid)
            children = [dht_process, *dht_process.children(recursive=True)]  # the DHT process and its p2pd
            assert any("p2pd" in c.name() for c in children)
        finally:
            await monitor.stop()
        await wait_for(lambda: _async(not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)),
                       what="the DHT process and p2pd to exit")  # fmt: skip

    asyncio.run(scenario())


def test_monitor_skips_its_read_while_the_work_check_read_the_swarm_recently():
    """Every read of a progress key costs each peer storing it (their DHT process and p2pd, on the volunteer's
    CPU): the dashboards' poll reuses the work check's read (note_progress) when it is fresher than its interval."""

    async def scenario():
        monitor = DHTMonitor(interval=60.0)
        await monitor.start(lambda: [("spirals", "hearth-spirals-test0003")])
        try:
            await wait_for(lambda: _async("spirals" in monitor.progress), what="a first poll")
            noted = SwarmProgress(epoch=7, peers=[])
            monitor.note_progress("spirals", noted)
            await monitor.poll()
            assert monitor.progress["spirals"].progress is noted  # fresh: not read again
            snapshot = monitor.progress["spirals"]
            monitor.progress["spirals"] = dataclasses.replace(snapshot, updated_at=snapshot.updated_at - 61)
            await monitor.poll()
            assert monitor.progress["spirals"].progress.epoch == 0  # stale: read from the DHT
        finally:
            await monitor.stop()

    asyncio.run(scenario())


async def _async(value):
    return value
