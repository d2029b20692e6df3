"""Process-level safety for the node: one running instance per identity, and dying with the supervisor."""

import ctypes
import fcntl
import os
import signal
import sys
from pathlib import Path

PR_SET_PDEATHSIG = 1


class AlreadyRunning(RuntimeError):
    pass


class InstanceLock:
    """An exclusive lock on `<data_dir>/node.lock`, held for the life of the process (released by the OS)."""

    def __init__(self, data_dir: Path):
        self.path = data_dir / "node.lock"
        self._file = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            raise AlreadyRunning(
                f"another Hearth node (pid {owner}) already runs with the identity in {self.path.parent}"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Ask Linux to send `signum` to this process when its parent (the supervisor) dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signum)
