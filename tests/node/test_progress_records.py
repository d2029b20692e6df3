"""How often a node publishes its progress record: every second near an epoch's end, every few seconds before it,
at once on a new epoch (node/swarm.py, ThrottledProgressTracker), on a real hivemind DHT; and its clean stop."""

import gc

import pytest
from hivemind.dht import DHT
from hivemind.utils import get_dht_time

from node.swarm import PROGRESS_NEAR_END, PROGRESS_REPORT_INTERVAL, PROGRESS_REPORT_INTERVAL_FAR, ThrottledProgressTracker


@pytest.fixture(scope="module")
def dht():
    dht = DHT(host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
    try:
        yield dht
    finally:
        dht.shutdown()


@pytest.fixture(scope="module")
def tracker(dht):
    return ThrottledProgressTracker(dht=dht, prefix="throttle-test", target_batch_size=10_000, start=False)


def published(tracker, epoch: int, samples: int, epoch_ends_in: float) -> bool:
    """Report progress with the swarm's epoch ending in `epoch_ends_in` s; True if a record was triggered."""
    tracker.global_progress.eta_next_epoch = get_dht_time() + epoch_ends_in
    tracker.should_report_progress.clear()
    tracker.report_local_progress(epoch, samples, update_global_samples=False)
    return tracker.should_report_progress.is_set()


def test_records_are_sparse_mid_epoch_and_every_second_near_its_end(tracker):
    assert PROGRESS_REPORT_INTERVAL < PROGRESS_REPORT_INTERVAL_FAR
    mid_epoch = PROGRESS_NEAR_END + 30
    assert published(tracker, 0, 100, mid_epoch)
    assert not published(tracker, 0, 200, mid_epoch)  # within the interval: no record
    assert tracker.should_report_progress.min_interval == PROGRESS_REPORT_INTERVAL_FAR

    assert not published(tracker, 0, 300, PROGRESS_NEAR_END - 1)  # still within a second of the last record
    assert tracker.should_report_progress.min_interval == PROGRESS_REPORT_INTERVAL


def test_a_new_epoch_is_published_at_once(tracker):
    published(tracker, 1, 100, PROGRESS_NEAR_END + 30)
    assert not published(tracker, 1, 200, PROGRESS_NEAR_END + 30)
    assert published(tracker, 2, 0, PROGRESS_NEAR_END + 30)  # the epoch changed


def test_a_stopped_tracker_leaves_no_pending_asyncio_task(dht, caplog):
    # hivemind's own run() left one about every other stop, and asyncio logged an ERROR when it was collected
    for attempt in range(10):
        tracker = ThrottledProgressTracker(dht=dht, prefix=f"stop-test-{attempt}", target_batch_size=1000, start=True)
        tracker.report_local_progress(0, 10)
        tracker.shutdown(timeout=10)
        tracker.join(timeout=10)
        del tracker
        gc.collect()
    assert not [record for record in caplog.records if "Task was destroyed" in record.getMessage()]
