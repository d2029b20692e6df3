"""The node process's outer loop: it runs one swarm at a time (node/daemon.run_node), and between runs it waits with
torch, hivemind and torch's compiler stack already imported, so a swarm handed to it by `hearth join` trains within
seconds (a cold start spends ~7 s of one core on imports alone).

The control channel (node/control.py) stays up for the process's life. Besides the run's own commands it takes
`join` (the next swarm's settings; a join during a run leaves that swarm first) and `stop` (ends the process);
between runs it answers `status` itself."""

import logging
import os
import sys
import threading
import time
from dataclasses import asdict, replace
from typing import Optional

from node import warmup
from node.config import NodeConfig
from node.control import ControlError, ControlServer, socket_path
from node.daemon import NodeError, run_node
from node.settings import NO_URL
from node.tls import trust_process_wide
from node.trainer import TrainingStats

logger = logging.getLogger(__name__)
WAITING = "waiting for `hearth join URL`"


class NodeHost:
    """`stay`: when a run ends by itself (its limits, an error), wait for the next join (`hearth node start`) rather
    than end the process (`hearth join`). `run`: node/daemon.run_node, or a stand-in in tests."""

    def __init__(self, config: NodeConfig, stop: threading.Event, stay: bool, run=run_node):
        self.data_dir, self.view, self.stop, self.stay, self.run = config.data_dir, config.view, stop, stay, run
        self._lock = threading.Lock()
        self._next: Optional[NodeConfig] = None if config.coordinator_url == NO_URL else config
        self._run_stop: Optional[threading.Event] = None  # set: the current run ends
        self._swarm: Optional[str] = None  # the current run's swarm as asked for
        self._wake = threading.Event()
        self.state, self.last_error = "starting", None
        self.control = ControlServer(socket_path(config.data_dir), self._handlers(), fixed=("join", "stop"))

    def serve(self) -> int:
        """Run swarms until stopped, or (without `stay`) until a run ends by itself: its exit code."""
        threading.Thread(target=self._pass_stop_on, name="hearth-host-stop", daemon=True).start()
        self.control.start()
        try:
            warmup.warm_up()
            code = 0
            while (config := self._next_swarm()) is not None:
                code = self._run(config)
                with self._lock:
                    switching = self._next is not None
                if not (self.stay or switching):
                    break
            return code
        finally:
            self.control.stop()

    def _next_swarm(self) -> Optional[NodeConfig]:
        while True:
            with self._lock:
                if self.stop.is_set():
                    return None
                config, self._next = self._next, None
                if config is not None:
                    return config
                waiting = self.state != WAITING
                self.state = WAITING
                self._wake.clear()
            if waiting and self.view != "quiet":
                print(f"Hearth node ready (pid {os.getpid()}): {WAITING}.", file=sys.stderr, flush=True)
            self._wake.wait()

    def _run(self, config: NodeConfig) -> int:
        run_stop = threading.Event()
        with self._lock:
            if self.stop.is_set():
                return 0
            self._run_stop, self._swarm = run_stop, config.swarm_id or "the coordinator's first swarm"
            self.state, self.last_error = f"joining {self._swarm} at {config.coordinator_url}", None
        try:
            if config.ca_cert:  # every HTTPS and MQTT-over-TLS client of this process trusts it too
                trust_process_wide(config.ca_cert, config.data_dir)
            summary = self.run(replace(config, view=self.view), run_stop, self.control)
        except (NodeError, ValueError) as e:
            self.last_error = str(e)
            print(f"Error: {e}", file=sys.stderr)
            return 2
        finally:
            with self._lock:
                self._run_stop = self._swarm = None
        print(f"Stopped at epoch {summary['epoch']}: contributed {summary['samples']:,} samples, "
              f"{summary['reports_acknowledged']} report(s) in the coordinator's ledger, "
              f"{summary['reports_waiting']} waiting in the outbox.", file=sys.stderr)  # fmt: skip
        return 0

    def _pass_stop_on(self) -> None:
        """A signal or `hearth node stop` ends the current run too, and the wait for the next."""
        self.stop.wait()
        with self._lock:
            if self._run_stop is not None:
                self._run_stop.set()
            self._wake.set()

    # --- the control channel ------------------------------------------------------------------------------------
    def _handlers(self) -> dict:
        return {"status": self._status, "join": self._join, "stop": self._stop,
                **dict.fromkeys(("pause", "resume", "snooze"), self._not_training)}  # fmt: skip

    def _status(self, request: dict) -> dict:
        """Between runs, or while joining: the run's status keys (nothing trained yet) and the host's state."""
        training = asdict(TrainingStats(state=self.state))
        training.pop("group_sizes")
        return {"host": {"state": self.state, "pid": os.getpid(), "last_error": self.last_error},
                "swarm": self._swarm, "training": training, "time": time.time()}  # fmt: skip

    def _join(self, request: dict) -> dict:
        try:
            config = NodeConfig.from_json_dict(request["config"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed join request ({e})") from None
        if config.coordinator_url == NO_URL:
            raise ValueError("a join needs a coordinator URL")
        with self._lock:
            if self.stop.is_set():
                raise ControlError("the node is stopping")
            left = self._swarm
            self._next = config
            if self._run_stop is not None:
                self._run_stop.set()
            self._wake.set()
        return {"pid": os.getpid(), "left": left}

    def _stop(self, request: dict) -> dict:
        self.stop.set()
        return {"message": "stopping after the current batch"}

    def _not_training(self, request: dict) -> dict:
        raise ControlError(f"the node is not training ({self.state})")
