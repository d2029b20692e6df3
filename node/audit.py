"""Answering the coordinator's audits: loss and gradient digest of a named batch from a named model state
(hearth/audit.py), computed through the trainer's own gradient path and sent back signed.

Requests arrive on the node's MQTT audits topic (node/reporter.py hands them over); a helper thread fetches the
audited state (the coordinator's checkpoint, sha256-checked, or the task's initial model), the training thread
computes between two batches (`run_pending`), and the helper thread signs and POSTs the answer. The coordinator
sends an open request again every few seconds (one sent while this node was offline never arrives): a request
being answered, or answered, is not computed again; one that could not be answered is, when it comes again.
"""

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import httpx
from pydantic import ValidationError

from hearth.audit import compute_answer
from hearth.tasks import Task
from node.checkpoint import CheckpointUnavailable, CoordinatorCheckpoints
from protocol.encoding import parse_canonical
from protocol.envelope import seal, verify_envelope
from protocol.errors import ProtocolError
from protocol.messages import AuditAnswer, AuditRequest
from protocol.signing import SigningKey

logger = logging.getLogger(__name__)

ANSWER_WITHIN = 90.0  # seconds the helper waits for the training thread to compute an answer
DRAIN_QUIET = 2.0  # at shutdown, seconds without a request (once the last report is receipted) before leaving
DRAIN_LIMIT = 8.0  # at shutdown, seconds spent answering audits at most
POST_TIMEOUT = 60.0  # the coordinator recomputes the answer before it replies (seconds for a large model)
REMEMBERED = 256  # audit ids remembered as taken (being answered or answered)


@dataclass
class _Job:
    request: AuditRequest
    state: Optional[dict[str, Any]]
    done: threading.Event = field(default_factory=threading.Event)
    result: Optional[tuple[float, list[float], float]] = None


class AuditResponder:
    def __init__(self, task: Task, coordinator_url: str, key: SigningKey, swarm_id: str,
                 checkpoints: CoordinatorCheckpoints, coordinator_key: Optional[str] = None):  # fmt: skip
        """`coordinator_key`: requests must be sealed with it (the manifest's); None accepts unsigned ones."""
        self.coordinator_key = coordinator_key
        self.task, self.base_url, self.key, self.swarm_id = task, coordinator_url.rstrip("/"), key, swarm_id
        self.checkpoints = checkpoints
        self.answered = 0
        self._busy = 0  # requests received and not yet answered or given up
        self._last_activity = time.monotonic()
        self._activity = threading.Event()
        self._lock = threading.Lock()
        self._taken: dict[int, None] = {}  # audit ids being answered or answered, oldest first
        self._requests: queue.Queue[Optional[AuditRequest]] = queue.Queue()
        self._jobs: queue.Queue[_Job] = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name="hearth-audits", daemon=True)

    def start(self) -> "AuditResponder":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._requests.put(None)
        self._thread.join(5)

    def receive(self, payload: bytes) -> None:
        """An MQTT message on this node's audits topic (any thread); malformed or foreign ones are ignored."""
        try:
            if self.coordinator_key is None:
                request = AuditRequest.model_validate(parse_canonical(payload))
            else:
                request = verify_envelope(payload, AuditRequest, lambda _: self.coordinator_key)
        except (ProtocolError, ValidationError) as e:
            logger.warning("Ignoring a malformed audit request: %s", e)
            return
        if request.node_id != self.key.node_id or request.swarm_id != self.swarm_id:
            return
        with self._lock:
            if request.audit_id in self._taken:
                return  # the same request sent again
            self._taken[request.audit_id] = None
            while len(self._taken) > REMEMBERED:
                del self._taken[next(iter(self._taken))]
            self._busy += 1
        self._requests.put(request)
        self._activity.set()

    def run_pending(self, backward: Callable, device) -> None:
        """Compute the audits waiting (training thread, between two batches)."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            request, started = job.request, time.perf_counter()
            try:
                loss, digest = compute_answer(self.task, job.state, request.seed, request.batch_size,
                                              request.digest_size, backward, device)  # fmt: skip
                job.result = (loss, digest, time.perf_counter() - started)
            except Exception:  # a state that does not fit the model: no answer, the audit times out
                logger.exception("Could not compute audit %d", request.audit_id)
            job.done.set()

    def drain(self, backward: Callable, device, settled: Callable[[], Optional[bool]]) -> None:
        """At shutdown (training thread): the coordinator audits a report right after its receipt, so keep
        answering until the last report is receipted (`settled()` True; None: never will be, e.g. offline) and no
        request came for DRAIN_QUIET seconds, at most DRAIN_LIMIT seconds."""
        deadline, quiet_from = time.monotonic() + DRAIN_LIMIT, None
        while time.monotonic() < deadline:
            self.run_pending(backward, device)
            now, state = time.monotonic(), settled()
            if state is None and self._busy == 0:
                return
            if self._busy == 0 and state:
                quiet_from = quiet_from or now
                if now - max(quiet_from, self._last_activity) >= DRAIN_QUIET:
                    return
            else:
                quiet_from = None
            self._activity.wait(0.1)
            self._activity.clear()

    def _serve(self) -> None:
        while True:
            request = self._requests.get()
            if request is None:
                return
            answered = False
            try:
                answered = self._answer(request)
            except Exception:  # one audit must never end the helper
                logger.exception("Audit %d failed", request.audit_id)
            finally:
                with self._lock:
                    if not answered:  # when the request comes again, try again
                        self._taken.pop(request.audit_id, None)
                    self._busy -= 1
                self._last_activity = time.monotonic()
                self._activity.set()

    def _answer(self, request: AuditRequest) -> bool:
        """Compute and send the answer; False when it could not be sent (a later copy of the request retries)."""
        state = None
        if request.state_epoch > 0:
            if request.state_sha256 is None:
                logger.warning("Audit %d names checkpoint %d without its sha256; not answered", request.audit_id,
                               request.state_epoch)  # fmt: skip
                return True  # malformed: asking again changes nothing
            listing = {"epoch": request.state_epoch, "sha256": request.state_sha256,
                       "url": f"/api/v1/swarms/{self.swarm_id}/checkpoints/{request.state_epoch}"}  # fmt: skip
            try:
                state = self.checkpoints.download(listing)["model"]
            except (CheckpointUnavailable, KeyError) as e:
                logger.warning("Audit %d: cannot fetch the checkpoint of epoch %d (%s)", request.audit_id,
                               request.state_epoch, e)  # fmt: skip
                return False
        job = _Job(request, state)
        self._jobs.put(job)
        self._activity.set()
        if not job.done.wait(ANSWER_WITHIN):
            return False
        if job.result is None:  # the computation failed: it would again
            return True
        loss, digest, seconds = job.result
        answer = AuditAnswer(audit_id=request.audit_id, node_id=self.key.node_id, swarm_id=self.swarm_id, loss=loss,
                             digest=digest, compute_seconds=round(seconds, 6), time=time.time())  # fmt: skip
        try:
            response = httpx.post(f"{self.base_url}/api/v1/audits/answers", content=seal(answer, self.key),
                                  timeout=POST_TIMEOUT)  # fmt: skip
        except httpx.HTTPError as e:
            logger.warning("Could not send the answer to audit %d: %s", request.audit_id, type(e).__name__)
            return False
        self.answered += 1
        verdict = response.json() if response.status_code == 200 else {"reason": f"HTTP {response.status_code}"}
        logger.info("Audit %d answered: %s", request.audit_id,
                    "passed" if verdict.get("passed") else f"not passed ({verdict.get('reason')})")  # fmt: skip
        return True
