"""The volunteer's credit as the node sees it, for `hearth node status` and /metrics.

- granted: the volunteer's total from the coordinator (`GET /api/v1/volunteers/{name}`), fetched by a background
  thread at most every POLL_SECONDS; training never waits for it. On failure the last value stays, with the error
  and since when it has been failing.
- pending (estimate): what the reports still in the outbox (no receipt yet) should earn, by the coordinator's own
  rule (protocol/credit.py). Only the coordinator grants credit: it may still reject some of them.
"""

import logging
import threading
import time
from typing import Any, Callable, Optional
from urllib.parse import quote

import httpx

from node.outbox import Outbox
from protocol.credit import credit_for
from protocol.envelope import open_envelope
from protocol.errors import ProtocolError

logger = logging.getLogger(__name__)

POLL_SECONDS = 60.0
HTTP_TIMEOUT = 10.0


class CreditTracker:
    def __init__(self, coordinator_url: str, volunteer: str, outbox: Outbox, swarm_id: str, flops_per_sample: int,
                 poll_seconds: float = POLL_SECONDS, clock: Callable[[], float] = time.time):  # fmt: skip
        self.volunteer, self.outbox = volunteer, outbox
        self.swarm_id, self.flops_per_sample = swarm_id, flops_per_sample
        self.poll_seconds, self.clock = poll_seconds, clock
        self.granted: Optional[float] = None
        self.granted_as_of: Optional[float] = None  # wall-clock time of the last successful fetch
        self.error: Optional[str] = None  # why the latest fetch failed; None after a success
        self.failing_since: Optional[float] = None  # first failure since the last success
        self._http = httpx.Client(base_url=coordinator_url.rstrip("/"), timeout=HTTP_TIMEOUT)
        self._samples: dict[int, int] = {}  # seq → samples of a report seen in the outbox (0: another swarm's)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hearth-credit", daemon=True)

    # --- granted -----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if not self._thread.is_alive():  # a fetch stuck in a slow coordinator keeps its (daemon) thread
            self._http.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception as e:  # never let a surprise end the poller: status would freeze silently
                logger.exception("Fetching granted credit failed")
                self._failed(f"unexpected error ({type(e).__name__})")
            self._stop.wait(self.poll_seconds)

    def refresh(self) -> None:
        """Fetch the volunteer's granted total once; a failure keeps the last value and notes the error."""
        try:
            response = self._http.get(f"/api/v1/volunteers/{quote(self.volunteer, safe='')}")
        except httpx.HTTPError as e:
            return self._failed(f"the coordinator is unreachable ({type(e).__name__})")
        if response.status_code == 404:
            return self._failed(f"the coordinator knows no volunteer {self.volunteer!r}")
        if response.status_code != 200:
            return self._failed(f"the coordinator answered HTTP {response.status_code}")
        try:
            granted = float(response.json()["credit"])
        except (ValueError, KeyError, TypeError):
            return self._failed("the coordinator's answer has no credit total")
        self.granted, self.granted_as_of, self.error, self.failing_since = granted, self.clock(), None, None

    def _failed(self, error: str) -> None:
        if self.error is None:
            logger.info("Cannot fetch granted credit: %s; showing the last value", error)
            self.failing_since = self.clock()
        self.error = error

    # --- pending -----------------------------------------------------------------------------------------
    def pending_estimate(self) -> float:
        """Credit that the reports waiting in the outbox should earn; reports of other swarms (left over from
        an earlier run) are not counted: their FLOPs per sample are unknown here."""
        known, waiting = self._samples, {}
        for seq, _topic, payload in self.outbox.pending():
            waiting[seq] = known[seq] if seq in known else self._samples_in(payload)
        self._samples = waiting  # remember parsed rows; forget acknowledged ones
        return credit_for(sum(waiting.values()), self.flops_per_sample)

    def _samples_in(self, payload: bytes) -> int:
        try:
            fields = open_envelope(payload).fields
        except ProtocolError as e:
            logger.warning("Unreadable report in the outbox (%s); not counted as pending credit", e)
            return 0
        samples = fields.get("samples")
        if fields.get("swarm_id") != self.swarm_id or not isinstance(samples, int):
            return 0
        return samples

    def snapshot(self) -> dict[str, Any]:
        """The `credit` object of the node's status."""
        return {
            "volunteer": self.volunteer, "granted": self.granted, "granted_as_of": self.granted_as_of,
            "pending_estimate": self.pending_estimate(), "error": self.error, "failing_since": self.failing_since,
        }  # fmt: skip
