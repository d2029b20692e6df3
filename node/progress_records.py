"""This peer's hivemind progress records: how often it publishes them to the DHT, where peers time the end of each
epoch from them and the coordinator takes its evidence of who did what share (coordinator/plausibility.py)."""

import asyncio
import math
import threading
import time
from typing import Optional

from hivemind.optim.progress_tracker import LocalTrainingProgress, ProgressTracker
from hivemind.utils import get_dht_time

# Seconds between this peer's progress records in the DHT (besides epoch changes and the end of an epoch's training,
# which publish at once): every second near an epoch's end, where peers time it and the coordinator takes its
# evidence of who did what share, and in short epochs; less often before (peers extrapolate each other's records at
# their samples/s). Every record is a signed store on each peer holding the key, on their DHT process and p2pd.
PROGRESS_REPORT_INTERVAL = 1.0
PROGRESS_REPORT_INTERVAL_FAR = 5.0
PROGRESS_NEAR_END = 8.0  # seconds before the swarm's estimated end of the epoch from which records are every second
SPARSE_EPOCH_SECONDS = 20.0  # records are sparse only once the last whole epoch lasted this long

class ThrottledEvent(threading.Event):
    """An Event whose set() is ignored within `min_interval` of the last one while `throttle` is on."""

    def __init__(self, min_interval: float):
        super().__init__()
        self.min_interval, self.throttle, self._last_set = min_interval, False, float("-inf")

    def set(self) -> None:
        now = time.monotonic()
        if self.throttle and now - self._last_set < self.min_interval:
            return
        self._last_set = now
        super().set()


class ThrottledProgressTracker(ProgressTracker):
    """hivemind's ProgressTracker stores a signed DHT record after *every* local step (tens per second), which
    costs the DHT process, p2pd and every peer storing it CPU time that training needs. Peers extrapolate each
    other's progress from samples/s anyway, so publish at most once per interval (a longer one far from the end of
    long epochs), and at once on a new epoch."""

    def __init__(self, *args, report_interval: float = PROGRESS_REPORT_INTERVAL,
                 far_interval: float = PROGRESS_REPORT_INTERVAL_FAR, start: bool, **kwargs):  # fmt: skip
        super().__init__(*args, start=False, **kwargs)
        self.report_interval, self.far_interval = report_interval, far_interval
        self.should_report_progress = ThrottledEvent(report_interval)  # before the reporter thread starts
        self.epoch_started_at: Optional[float] = None  # monotonic time this peer's current epoch began, once seen
        self.last_epoch_seconds = 0.0  # how long its last whole epoch lasted (0: none seen yet)
        if start:
            self.start()

    def record_interval(self) -> float:
        """The shorter interval unless the epochs are long and the swarm's end of this one is far."""
        eta = self.global_progress.eta_next_epoch - get_dht_time()
        far = math.isfinite(eta) and eta > PROGRESS_NEAR_END
        return self.far_interval if far and self.last_epoch_seconds >= SPARSE_EPOCH_SECONDS else self.report_interval

    def run(self) -> None:
        """hivemind's run(), plus a clean end: its loop stopped with the fetcher's shutdown watcher (and at times the
        last store) still pending, and when the loop was collected asyncio logged "ERROR Task was destroyed but it is
        pending!" into the volunteer's terminal at every stop."""
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(asyncio.gather(self._progress_reporter(), self._progress_fetcher()))
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*leftovers, return_exceptions=True))
        finally:
            loop.close()
            self.shutdown_complete.set()

    def report_training_stopped(self) -> None:
        """This peer's training for the epoch is over (its averaging round comes next): publish its progress now, at
        0 samples/s. The coordinator takes each peer's share of an epoch from its last record, extrapolated at the
        record's rate to the epoch's latest record of any peer; a peer that stopped a second before another used to
        be extrapolated a second past its end, and a record throttled just before the wait never went out at all
        (CI's test_spine, young swarm: a peer's 16,128 samples estimated at 34,161, and the other's credit cut)."""
        stopped = {**self.local_progress.dict(), "samples_per_second": 0.0, "time": get_dht_time()}
        self.local_progress = LocalTrainingProgress(**stopped)
        self.should_report_progress.set()  # not throttled: only report_local_progress throttles

    def report_local_progress(self, local_epoch: int, samples_accumulated: int, update_global_samples: bool = True):
        event = self.should_report_progress
        same_epoch = local_epoch == self.local_progress.epoch
        if not same_epoch:
            now = time.monotonic()
            if self.epoch_started_at is not None:
                self.last_epoch_seconds = now - self.epoch_started_at
            self.epoch_started_at = now
        event.throttle = same_epoch and samples_accumulated > 0
        event.min_interval = self.record_interval()
        try:
            super().report_local_progress(local_epoch, samples_accumulated, update_global_samples)
        finally:
            event.throttle = False  # shutdown() and epoch changes must always wake the reporter
