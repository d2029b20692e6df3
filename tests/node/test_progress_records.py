"""The node's progress tracker (node/swarm.py, ThrottledProgressTracker) on a real hivemind DHT: it stops cleanly,
and publishes the end of an epoch's training at once."""

import gc

import pytest
from hivemind.dht import DHT

from node.swarm import ThrottledProgressTracker


@pytest.fixture(scope="module")
def dht():
    dht = DHT(host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
    try:
        yield dht
    finally:
        dht.shutdown()


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


def test_the_end_of_a_peers_training_is_published_at_once_at_zero_samples_per_second(dht):
    # the coordinator extrapolates a peer's last record of an epoch at its rate: a peer waiting for its averaging
    # round must not look as if it trained on, and its last batches must not sit unpublished behind the throttle
    tracker = ThrottledProgressTracker(dht=dht, prefix="stopped-test", target_batch_size=10**6, start=False)
    event = tracker.should_report_progress
    tracker.report_local_progress(0, 100, update_global_samples=False)
    tracker.report_local_progress(0, 300, update_global_samples=False)
    event.clear()
    tracker.report_local_progress(0, 500, update_global_samples=False)
    assert not event.is_set() and tracker.local_progress.samples_per_second > 0  # within the interval: throttled
    tracker.report_training_stopped()
    assert event.is_set()
    assert (tracker.local_progress.samples_accumulated, tracker.local_progress.samples_per_second) == (500, 0.0)
