import os
import stat
import subprocess
import sys
import threading

import pytest

from node.control import ControlError, ControlServer, request, socket_path
from node.instance import AlreadyRunning, InstanceLock


def test_one_instance_per_identity(tmp_path):
    first = InstanceLock(tmp_path)
    first.acquire()
    code = f"from node.instance import InstanceLock; from pathlib import Path; InstanceLock(Path({str(tmp_path)!r})).acquire()"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert other.returncode != 0 and f"pid {os.getpid()}" in other.stderr
    with pytest.raises(AlreadyRunning):
        InstanceLock(tmp_path).acquire()  # also within one process: flock is per open file
    first.release()
    InstanceLock(tmp_path).acquire()


def test_control_socket_is_private_and_answers_commands(tmp_path):
    paused = threading.Event()
    handlers = {
        "status": lambda request: {"state": "paused" if paused.is_set() else "training"},
        "pause": lambda request: paused.set() or {},
        "snooze": lambda request: {"until": float(request["seconds"])},
    }
    server = ControlServer(socket_path(tmp_path), handlers)
    server.start()
    try:
        assert stat.S_IMODE(socket_path(tmp_path).stat().st_mode) == 0o600
        assert request(socket_path(tmp_path), "status") == {"state": "training"}
        request(socket_path(tmp_path), "pause")
        assert request(socket_path(tmp_path), "status") == {"state": "paused"}
        with pytest.raises(ControlError, match="unknown or malformed"):
            request(socket_path(tmp_path), "self-destruct")
        with pytest.raises(ControlError, match="could not convert"):
            request(socket_path(tmp_path), "snooze", seconds="soon")
    finally:
        server.stop()
    with pytest.raises(ControlError, match="no Hearth node is running"):
        request(socket_path(tmp_path), "status")
