"""The node's progress tracker (node/progress_records.py, ThrottledProgressTracker) on a real hivemind DHT: it stops cleanly,
publishes the end of an epoch's training and a new epoch at once, and its records are sparse only far from the end
of long epochs."""

import gc

import pytest
from hivemind.utils import get_dht_time

from node.progress_records import (PROGRESS_NEAR_END, PROGRESS_REPORT_INTERVAL, PROGRESS_REPORT_INTERVAL_FAR,
                                   SPARSE_EPOCH_SECONDS, ThrottledProgressTracker)


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


def published(tracker, epoch: int, samples: int, epoch_ends_in: float) -> bool:
    """Report progress with the swarm's epoch ending in `epoch_ends_in` s; True if a record was triggered."""
    tracker.global_progress.eta_next_epoch = get_dht_time() + epoch_ends_in
    tracker.should_report_progress.clear()
    tracker.report_local_progress(epoch, samples, update_global_samples=False)
    return tracker.should_report_progress.is_set()


@pytest.fixture
def tracker(dht, request):
    return ThrottledProgressTracker(dht=dht, prefix=request.node.name, target_batch_size=10**6, start=False)


def test_records_are_sparse_far_from_the_end_of_long_epochs_and_every_second_near_it(tracker):
    assert PROGRESS_REPORT_INTERVAL < PROGRESS_REPORT_INTERVAL_FAR
    tracker.last_epoch_seconds = SPARSE_EPOCH_SECONDS + 10
    far = PROGRESS_NEAR_END + 30
    assert published(tracker, 1, 100, far)  # a new epoch: at once
    assert not published(tracker, 1, 200, far)
    assert tracker.should_report_progress.min_interval == PROGRESS_REPORT_INTERVAL_FAR
    assert not published(tracker, 1, 300, PROGRESS_NEAR_END - 1)  # still within a second of the last record
    assert tracker.should_report_progress.min_interval == PROGRESS_REPORT_INTERVAL
    assert not published(tracker, 1, 400, float("inf"))  # no estimate of the end (no rate yet): every second
    assert tracker.should_report_progress.min_interval == PROGRESS_REPORT_INTERVAL


def test_records_stay_every_second_in_short_epochs_and_before_one_was_timed(tracker):
    far = PROGRESS_NEAR_END + 30
    published(tracker, 1, 100, far)  # the first epoch change seen: its start, no whole epoch timed yet
    assert tracker.should_report_progress.min_interval == PROGRESS_REPORT_INTERVAL
    published(tracker, 2, 100, far)  # an epoch of a moment
    assert 0 < tracker.last_epoch_seconds < SPARSE_EPOCH_SECONDS
    assert not published(tracker, 2, 200, far)
    assert tracker.should_report_progress.min_interval == PROGRESS_REPORT_INTERVAL
