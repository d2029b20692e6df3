"""The DHT monitor: the coordinator's own hivemind peer. It bootstraps swarms (its addresses are every
manifest's `initial_peers`) and reads each swarm's signed progress records for the dashboards.

hivemind is imported only here (and in hearth.progress); the DHT runs in its own process, so every call
that blocks goes through a thread or an MPFuture.
"""

import asyncio
import contextlib
import ipaddress
import logging
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from hearth.progress import SwarmProgress, parse_progress, progress_key, progress_validators

logger = logging.getLogger(__name__)

GET_TIMEOUT = 10.0


@dataclass(frozen=True)
class ProgressSnapshot:
    progress: SwarmProgress
    updated_at: float


class DHTMonitor:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, interval: float = 2.0,
                 announce_host: Optional[str] = None, private_authorizer: Optional[Callable[[], Any]] = None):  # fmt: skip
        """`private_authorizer()` builds the hivemind authorizer of the private peer (coordinator/tokens.py), which
        private swarms (access: token) bootstrap from instead: it starts with the first private swarm."""
        self.host, self.port, self.interval, self.announce_host = host, port, interval, announce_host
        self.dht = None
        self.initial_peers: list[str] = []
        self.private_authorizer = private_authorizer
        self.private_dht = None
        self.private_peers: list[str] = []
        self._private_run_ids: set[str] = set()
        self._private_registered: set[str] = set()  # run_ids whose validators the private peer has
        self.progress: dict[str, ProgressSnapshot] = {}  # swarm_id → latest progress read
        self._registered: set[str] = set()
        self._task: Optional[asyncio.Task] = None

    async def start(self, swarms: Callable[[], Iterable[tuple[str, str]]], private_run_ids: Iterable[str] = ()) -> None:
        """Start the DHT peer; `swarms()` yields (swarm_id, run_id) and is re-read before every poll;
        `private_run_ids`: the private swarms among them."""
        import hivemind

        self._swarms = swarms
        private_run_ids = set(private_run_ids)
        run_ids = sorted({run_id for _, run_id in swarms()} - private_run_ids)
        validators = [v for run_id in run_ids for v in progress_validators(run_id)]
        kwargs = dict(start=True, host_maddrs=[f"/ip4/{self.host}/tcp/{self.port}"], record_validators=validators)
        if self.announce_host and self.port and _is_ipv4(self.announce_host):
            kwargs["announce_maddrs"] = [f"/ip4/{self.announce_host}/tcp/{self.port}"]
        with _signals_ignored():  # the DHT process and its p2pd inherit this: only we may stop them
            self.dht = await asyncio.to_thread(lambda: hivemind.DHT(**kwargs))
        self._registered = set(run_ids)
        maddrs = await asyncio.to_thread(self.dht.get_visible_maddrs)
        self.initial_peers = [str(m) for m in maddrs]
        logger.info("DHT monitor listening: %s", " ".join(self.initial_peers))
        for run_id in sorted(private_run_ids):
            await self.register(run_id, private=True)
        self._task = asyncio.create_task(self._poll_forever(), name="dht-monitor")

    async def register(self, run_id: str, private: bool = False) -> None:
        """Register a swarm's progress validators (needed before its signed records can be read); a private swarm's
        on the private peer, started now if it is the first."""
        if private and run_id not in self._private_run_ids and self.dht is not None:
            await self._start_private()
            self._private_run_ids.add(run_id)
        # A poll can meet a new private swarm before its creation registers it as private: then the open peer got
        # its validators first, and the private peer needs them all the same.
        dht = self.dht_for(run_id)
        done = self._private_registered if run_id in self._private_run_ids else self._registered
        if dht is None or run_id in done:
            return
        await asyncio.to_thread(dht.add_validators, progress_validators(run_id))
        done.add(run_id)
        logger.info("DHT monitor now validates progress records of %s", run_id)

    def dht_for(self, run_id: str):
        return self.private_dht if run_id in self._private_run_ids else self.dht

    def peers_for(self, access: str) -> list[str]:
        """The initial_peers of a swarm's manifest: the private peer's addresses for `access: token`."""
        return list(self.private_peers if access == "token" else self.initial_peers)

    async def _start_private(self) -> None:
        if self.private_dht is not None:
            return
        if self.private_authorizer is None:
            raise RuntimeError("this DHT monitor has no authorizer for private swarms")
        import hivemind

        port = self.port + 1 if self.port else 0  # a fixed --dht-port: the private peer listens on the next one
        kwargs = dict(start=True, host_maddrs=[f"/ip4/{self.host}/tcp/{port}"], authorizer=self.private_authorizer())
        if self.announce_host and port and _is_ipv4(self.announce_host):
            kwargs["announce_maddrs"] = [f"/ip4/{self.announce_host}/tcp/{port}"]
        with _signals_ignored():
            self.private_dht = await asyncio.to_thread(lambda: hivemind.DHT(**kwargs))
        maddrs = await asyncio.to_thread(self.private_dht.get_visible_maddrs)
        self.private_peers = [str(m) for m in maddrs]
        logger.info("Private swarms' DHT peer listening: %s", " ".join(self.private_peers))

    async def _poll_forever(self) -> None:
        while True:
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("DHT monitor poll failed; retrying")
            await asyncio.sleep(self.interval)

    async def poll(self) -> None:
        for swarm_id, run_id in list(self._swarms()):
            snapshot = self.progress.get(swarm_id)
            if snapshot is not None and time.time() - snapshot.updated_at < self.interval:
                continue  # read for the work check meanwhile: every read costs each peer storing the key
            await self.register(run_id)
            future = self.dht_for(run_id).get(progress_key(run_id), latest=True, return_future=True)
            try:
                record = await asyncio.wait_for(future, GET_TIMEOUT)
            except asyncio.TimeoutError:
                logger.warning("Reading progress of %s timed out", run_id)
                continue
            self.note_progress(swarm_id, parse_progress(record))

    def note_progress(self, swarm_id: str, progress: SwarmProgress) -> None:
        """The latest progress read of a swarm, by this monitor's poll or another reader of the same key."""
        self.progress[swarm_id] = ProgressSnapshot(progress, time.time())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.private_dht is not None:
            dht, self.private_dht = self.private_dht, None
            await asyncio.to_thread(_shutdown_dht, dht)
        if self.dht is not None:
            dht, self.dht = self.dht, None
            await asyncio.to_thread(_shutdown_dht, dht)
            logger.info("DHT monitor stopped")


@contextlib.contextmanager
def _signals_ignored():
    """Fork the DHT process with SIGINT ignored and SIGTERM at its default: otherwise it inherits asyncio's
    handlers (and wakeup fd) and a group-wide signal would reach us twice, once through the child."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
                signal.SIGTERM: signal.signal(signal.SIGTERM, signal.SIG_DFL)}  # fmt: skip
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _shutdown_dht(dht) -> None:
    """A Ctrl+C reaches p2pd too (Go re-enables SIGINT) and kills it; then the DHT's own shutdown would
    stall for its grace period, so a DHT without a live p2pd is terminated at once."""
    if dht.is_alive() and not _has_live_p2pd(dht.pid):
        dht.terminate()
        dht.join(5)
        return
    dht.shutdown()


def _has_live_p2pd(pid: int) -> bool:
    import psutil

    try:
        children = psutil.Process(pid).children()
    except psutil.Error:
        return False
    for child in children:
        try:
            if "p2pd" in child.name() and child.status() != psutil.STATUS_ZOMBIE:
                return True
        except psutil.Error:
            continue
    return False


def _is_ipv4(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 4
    except ValueError:
        return False
