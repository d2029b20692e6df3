"""Supervision: a child that crashes in native code is started again, within limits, and Ctrl+C still stops it;
several process groups are stopped together."""

import signal
import subprocess
import sys
import textwrap

import pytest

from hearth.processes import CrashRestarts, crash_signal, spawn_group, stop_groups, wait_until


def _crashing_child(marker, crashes: int) -> list[str]:
    """A child that dies of SIGSEGV on its first `crashes` starts (counted in `marker`), then exits 0."""
    code = textwrap.dedent(f"""
        import os, pathlib, signal
        marker = pathlib.Path({str(marker)!r})
        starts = int(marker.read_text()) + 1 if marker.exists() else 1
        marker.write_text(str(starts))
        if starts <= {crashes}:
            os.kill(os.getpid(), signal.SIGSEGV)
    """)
    return [sys.executable, "-c", code]


def test_crash_signal_names_faults_only():
    assert crash_signal(-signal.SIGSEGV) is signal.SIGSEGV
    assert crash_signal(-signal.SIGABRT) is signal.SIGABRT
    for returncode in (0, 1, 130, -signal.SIGKILL, -signal.SIGINT, -signal.SIGTERM, None):
        assert crash_signal(returncode) is None


def test_restart_delays_double_and_give_up_after_the_limit_within_the_window():
    restarts = CrashRestarts(first_delay=5, limit=4, window=100)
    assert [restarts.delay_after_crash(now) for now in (0, 1, 2)] == [5, 10, 20]
    assert restarts.delay_after_crash(3) is None
    # crashes older than the window no longer count
    assert CrashRestarts(first_delay=5, limit=2, window=100).delay_after_crash(0) == 5
    spaced = CrashRestarts(first_delay=5, limit=2, window=100)
    assert [spaced.delay_after_crash(now) for now in (0, 150, 300)] == [5, 5, 5]


def _supervise(child: list[str], restarts: str) -> subprocess.CompletedProcess:
    """run_supervised in a process of its own (it makes its caller adopt orphans, which pytest should not do)."""
    code = textwrap.dedent(f"""
        import sys
        from hearth.processes import CrashRestarts, run_supervised
        sys.exit(-run_supervised({child!r}, {restarts}, what="the child"))
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_a_crashed_child_is_started_again(tmp_path):
    marker = tmp_path / "starts"
    supervisor = _supervise(_crashing_child(marker, crashes=2), "CrashRestarts(first_delay=0.05)")
    assert supervisor.returncode == 0
    assert marker.read_text() == "3"
    assert supervisor.stderr.count("the child crashed (SIGSEGV); starting it again") == 2


def test_a_child_that_keeps_crashing_is_given_up(tmp_path):
    marker = tmp_path / "starts"
    supervisor = _supervise(_crashing_child(marker, crashes=100), "CrashRestarts(first_delay=0.05, limit=3)")
    assert supervisor.returncode == signal.SIGSEGV
    assert marker.read_text() == "3"
    assert "the child crashed (SIGSEGV) 3 times within 60 min; not starting it again" in supervisor.stderr


def test_without_restarts_a_crash_is_returned(tmp_path):
    marker = tmp_path / "starts"
    supervisor = _supervise(_crashing_child(marker, crashes=1), "None")
    assert supervisor.returncode == signal.SIGSEGV
    assert marker.read_text() == "1"
    assert "starting it again" not in supervisor.stderr


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_while_waiting_to_restart_ends_the_supervisor(tmp_path, stop_signal):
    supervisor_code = textwrap.dedent(f"""
        import sys
        from hearth.processes import CrashRestarts, run_supervised
        sys.exit(-run_supervised({_crashing_child(tmp_path / "starts", crashes=100)!r}, CrashRestarts(first_delay=600)))
    """)
    log = tmp_path / "supervisor.log"
    with log.open("w") as out:  # Popen, not _supervise: the test signals it while it waits
        supervisor = subprocess.Popen([sys.executable, "-c", supervisor_code], stderr=out)
    try:
        wait_until(lambda: "starting it again in 600 s" in log.read_text(), 30, what="the first crash")
        supervisor.send_signal(stop_signal)
        assert supervisor.wait(timeout=10) == signal.SIGSEGV  # the crash it was waiting to retry, not a hang
        assert (tmp_path / "starts").read_text() == "1"
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()


def _peer_that_waits_for_the_other_to_stop(mine, other) -> list[str]:
    """On SIGINT it waits (up to 10 s) until the other one got its SIGINT too, as swarm peers ending an averaging
    round together do, then exits 0 (3 if the other never got one)."""
    code = textwrap.dedent(f"""
        import pathlib, signal, sys, time
        mine, other = pathlib.Path({str(mine)!r}), pathlib.Path({str(other)!r})
        def stop(*_):
            mine.touch()
            deadline = time.monotonic() + 10
            while not other.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            sys.exit(0 if other.exists() else 3)
        signal.signal(signal.SIGINT, stop)
        print("ready", flush=True)
        while True:
            time.sleep(1)
    """)
    return [sys.executable, "-c", code]


def test_groups_are_asked_to_stop_together(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    peers = [spawn_group(_peer_that_waits_for_the_other_to_stop(*pair), stdout=subprocess.PIPE, text=True)
             for pair in ((a, b), (b, a))]  # fmt: skip
    for peer in peers:
        assert peer.stdout.readline().strip() == "ready"
    assert stop_groups(peers, grace=30) == [(0, 0), (0, 0)]  # one at a time, the first would wait for the second
