"""The running node's controller: decides, batch by batch, whether to compute (the volunteer's policy plus
their pause/snooze commands) and answers the local control channel (`hearth node status|pause|…`)."""

import threading
import time
from dataclasses import asdict
from typing import Any, Callable, Optional

from node.config import NodeConfig
from node.credit import CreditTracker
from node.policy import Policy
from node.reporter import Reporter
from node.trainer import Trainer

SNOOZE_MAX_SECONDS = 7 * 24 * 3600
PRIVACY_BUDGET_SPENT = "privacy budget spent"
CREDIT_UNKNOWN = ("granted", "pending_estimate", "granted_as_of")  # the status's credit keys before tracking starts


class NodeController:
    def __init__(self, config: NodeConfig, policy: Policy, device_type: str, stop: threading.Event, swarm_id: str,
                 on_pause_change: Callable[[Optional[str]], None] = lambda reason: None):  # fmt: skip
        self.config, self.policy, self.device_type, self.stop, self.swarm_id = config, policy, device_type, stop, swarm_id
        self.on_pause_change = on_pause_change  # told the new reason (None: computing again) when it changes
        self.trainer: Optional[Trainer] = None
        self.reporter: Optional[Reporter] = None
        self.credit: Optional[CreditTracker] = None
        self.metrics_url: Optional[str] = None  # where /metrics is served, once it is
        self.reachability: Optional[object] = None  # how peers reach this node (node/reachability.py), once known
        self._pause_reason: Optional[str] = None

    def attach(self, trainer: Trainer, reporter: Reporter, credit: Optional[CreditTracker] = None) -> None:
        self.trainer, self.reporter, self.credit = trainer, reporter, credit

    def gate(self) -> Optional[str]:
        """Why the node must not compute right now, or None."""
        decision = self.policy.evaluate()
        if self.trainer is not None and self.trainer.privacy_spent:  # for good: the swarm's ε budget is used up
            reason = PRIVACY_BUDGET_SPENT
        elif not decision.run:
            reason = decision.reason
        elif self.device_type == "cuda" and not decision.gpu_allowed:
            reason = f"paused: {decision.reason}"
        else:
            reason = None
        if reason != self._pause_reason:
            self._pause_reason = reason
            self.on_pause_change(reason)
        return reason

    def handlers(self) -> dict:
        return {"status": self.status, "pause": self._pause, "resume": self._resume, "snooze": self._snooze,
                "stop": self._stop}  # fmt: skip

    def status(self, request: dict | None = None) -> dict[str, Any]:
        training = asdict(self.trainer.stats) if self.trainer else {}
        training.pop("group_sizes", None)
        reporting = asdict(self.reporter.stats) if self.reporter else {}
        credit = self.credit.snapshot() if self.credit else dict.fromkeys(CREDIT_UNKNOWN)
        return {
            "swarm": self.swarm_id, "device": self.device_type, "threads": self.config.threads,
            "coordinator": self.config.coordinator_url, "policy": asdict(self.config.policy),
            "paused": self._pause_reason is not None, "pause_reason": self._pause_reason,
            "training": training, "reporting": reporting, "credit": credit, "metrics_url": self.metrics_url,
            "privacy": asdict(self.trainer.privacy.snapshot()) if self.trainer and self.trainer.privacy else None,
            "resources": self.trainer.resources.as_dict() if self.trainer else None,
            "reachability": None if self.reachability is None else str(self.reachability),
            "time": time.time(),
        }  # fmt: skip

    def _pause(self, request: dict) -> dict:
        self.policy.pause()
        return {"message": "paused until you resume"}

    def _resume(self, request: dict) -> dict:
        self.policy.resume()
        return {"message": "resumed"}

    def _snooze(self, request: dict) -> dict:
        seconds = float(request.get("seconds", 0))
        if not 0 < seconds <= SNOOZE_MAX_SECONDS:
            raise ValueError("snooze for between 1 second and 7 days")
        until = self.policy.snooze(seconds)
        return {"message": f"snoozed until {until:%a %H:%M}", "until": until.isoformat()}

    def _stop(self, request: dict) -> dict:
        self.stop.set()
        return {"message": "stopping after the current batch"}
