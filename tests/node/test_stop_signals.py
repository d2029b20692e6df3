"""Stopping the node: the first SIGINT/SIGTERM asks for a graceful stop; the same signal arriving again at
once (sent to the whole group by a service manager) changes nothing; a later one forces the stop."""

import signal
import threading

import pytest

from node.daemon import install_stop_handlers


@pytest.fixture
def restore_signal_handlers():
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_a_duplicate_stop_signal_is_ignored_and_a_later_one_forces(restore_signal_handlers):
    stop, now = threading.Event(), [1000.0]
    install_stop_handlers(stop, clock=lambda: now[0])
    handle = signal.getsignal(signal.SIGTERM)
    handle(signal.SIGTERM, None)
    assert stop.is_set()
    now[0] += 0.2
    signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # systemd's KillMode / a group-wide kill: no force
    now[0] += 5
    with pytest.raises(KeyboardInterrupt):
        handle(signal.SIGINT, None)  # the volunteer presses Ctrl+C again
