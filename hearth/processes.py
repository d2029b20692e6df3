"""Process-group supervision. hivemind starts helper processes (DHT, p2pd, averagers) that outlive a killed
parent (FACTS.md); running each program in its own process group lets us find and end all of them."""

import ctypes
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

import psutil

TORCH_SHM_MANAGER = "torch_shm_manager"  # torch's helper process for tensors in shared memory

logger = logging.getLogger(__name__)


def spawn_group(argv: Sequence[str], **popen_kwargs) -> subprocess.Popen:
    """Start `argv` as the leader of a new session and process group."""
    return subprocess.Popen(list(argv), start_new_session=True, **popen_kwargs)


def python_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def group_members(pgid: int) -> list[psutil.Process]:
    """Live processes of a group (zombies, already dead and waiting to be reaped, do not count)."""
    members = []
    for process in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(process.pid) == pgid and process.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(process)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def kill_group(pgid: int) -> int:
    """SIGKILL whatever is left in the group; returns how many processes were left."""
    left = [process for process in group_members(pgid) if process.pid != os.getpid()]
    if left:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        psutil.wait_procs(left, timeout=5)
    return len(left)


def groups_of_tree(pid: int) -> set[int]:
    """The process group of `pid` and of each of its descendants (a supervised child leads its own group)."""
    groups = {pid}
    try:
        for child in psutil.Process(pid).children(recursive=True):
            try:
                groups.add(os.getpgid(child.pid))
            except ProcessLookupError:
                continue
    except psutil.NoSuchProcess:
        pass
    return groups


def kill_tree(pid: int) -> int:
    """SIGKILL `pid`'s group and every group below it; returns how many processes were left."""
    return sum(kill_group(pgid) for pgid in groups_of_tree(pid))


def stop_group(process: subprocess.Popen, grace: float = 30.0) -> tuple[int, int]:
    """Ask the leader to stop (SIGINT), wait up to `grace` seconds, then kill the group.
    Returns (the leader's exit code, how many processes had to be killed)."""
    return stop_groups([process], grace)[0]


def stop_groups(processes: list[subprocess.Popen], grace: float = 30.0) -> list[tuple[int, int]]:
    """stop_group for several leaders at once: all are asked first, so they stop together (peers of one swarm
    otherwise wait for each other in turn), within one `grace`."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    deadline, outcomes = time.monotonic() + grace, []
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("pid %s did not stop within %.0f s; killing it", process.pid, grace)
        leftovers = kill_tree(process.pid)
        if process.poll() is None:
            process.wait(5)
        outcomes.append((process.returncode, leftovers))
    return outcomes


PR_SET_CHILD_SUBREAPER = 36


def adopt_orphans() -> bool:
    """Linux: processes below this one whose parent dies are re-parented to this one, not to init, so they stay
    in its tree. False where the system has no such thing."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def descendant_groups() -> set[int]:
    """The process groups of this process's descendants (adopted orphans included), its own group excepted."""
    return groups_of_tree(os.getpid()) - {os.getpid(), os.getpgrp()}


# Faults in native code (torch, hivemind's native parts) end a process with one of these; worth starting it again.
# SIGKILL is not one of them: it is how a user, or the kernel short of memory, ends a process for good.
CRASH_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE})


def crash_signal(returncode: int | None) -> signal.Signals | None:
    """The fault signal that ended a process (Popen's returncode -N), or None if it ended otherwise."""
    if returncode is not None and returncode < 0 and -returncode in CRASH_SIGNALS:
        return signal.Signals(-returncode)
    return None


@dataclass
class CrashRestarts:
    """Start a crashed child again after `first_delay` seconds, doubling each time, until it has crashed `limit`
    times within `window` seconds."""

    first_delay: float = 5.0
    limit: int = 5
    window: float = 3600.0
    crashes: list[float] = field(default_factory=list)

    def delay_after_crash(self, now: float) -> float | None:
        """Seconds to wait before the next start, or None to give up."""
        self.crashes = [at for at in self.crashes if now - at < self.window] + [now]
        if len(self.crashes) >= self.limit:
            return None
        return self.first_delay * 2 ** (len(self.crashes) - 1)


def run_supervised(argv: Sequence[str], restarts: CrashRestarts | None = None, what: str = "the program") -> int:
    """Run a child program in its own group, pass on Ctrl+C / SIGTERM, and leave nothing of it behind; with
    `restarts`, start it again when a fault in native code ended it."""
    adopting = adopt_orphans()
    stopping = threading.Event()
    child: subprocess.Popen | None = None
    interrupts = 0

    def forward(signum, frame):
        nonlocal interrupts
        interrupts += 1
        stopping.set()
        if child is None or child.poll() is not None:
            return
        if interrupts == 1:
            child.send_signal(signal.SIGINT)
        else:
            kill_tree(child.pid)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            child = spawn_group(argv)
            if stopping.is_set():  # Ctrl+C came while it was being started
                child.send_signal(signal.SIGINT)
            _wait_and_clean_up(child, adopting)
            crash = crash_signal(child.returncode)
            if crash is None or restarts is None or stopping.is_set():
                return child.returncode
            delay = restarts.delay_after_crash(time.monotonic())
            if delay is None:
                print(f"hearth: {what} crashed ({crash.name}) {restarts.limit} times within "
                      f"{restarts.window / 60:.0f} min; not starting it again", file=sys.stderr)  # fmt: skip
                return child.returncode
            print(f"hearth: {what} crashed ({crash.name}); starting it again in {delay:.0f} s", file=sys.stderr)
            if stopping.wait(delay):
                return child.returncode
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _wait_and_clean_up(child: subprocess.Popen, adopting: bool) -> None:
    groups = {child.pid}
    try:
        if adopting:
            child.wait()  # whatever its tree leaves behind is ours now: found below by walking our own tree
        else:
            groups |= _watch_groups(child)
    finally:
        groups |= groups_of_tree(child.pid) | (descendant_groups() if adopting else set())
        _let_end_by_themselves(groups)
        leftovers = sum(kill_group(group) for group in groups)
        if leftovers:
            print(f"hearth: ended {leftovers} leftover helper process(es) of pid {child.pid}", file=sys.stderr)


def _let_end_by_themselves(groups: set[int], timeout: float = 3.0) -> None:
    """torch's shared-memory manager ends within a second or two of its last client: not a leftover to report."""
    managers = [process for group in groups for process in group_members(group) if _name(process) == TORCH_SHM_MANAGER]
    psutil.wait_procs(managers, timeout=timeout)


def _name(process: psutil.Process) -> str:
    try:
        return process.name()
    except psutil.Error:
        return ""


def _watch_groups(child: subprocess.Popen) -> set[int]:
    """Every process group the child's tree used until it ended. Without adoption an orphan (p2pd runs in a session
    of its own) can no longer be found by walking the tree once its parent died, so the tree is scanned twice a
    second (~1 % of a core)."""
    groups = set()
    while child.poll() is None:
        groups |= groups_of_tree(child.pid)
        try:
            child.wait(0.5)
        except subprocess.TimeoutExpired:
            continue
    return groups


LEFTOVER_PATTERN = re.compile(r"^hearth: ended (\d+) leftover helper process", re.MULTILINE)


def leftovers_reported(log_text: str) -> int:
    """How many leftover processes a supervisor had to end, as it reported them in its output."""
    return sum(int(count) for count in LEFTOVER_PATTERN.findall(log_text))


def tree_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by a process and all its descendants still running."""
    total = 0.0
    for process in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


def wait_until(condition, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Poll `condition()` until it returns something truthy; raise TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so a script's `finally:` blocks stop the process groups it started (by
    default SIGTERM ends Python at once and leaves them running)."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
