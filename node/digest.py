"""Parameter digests: after every epoch in which peers should end identical (every epoch when gradients are averaged
every epoch; with local updates, those that averaged the state), each peer publishes a short sketch of its
parameters in the DHT (signed, like hivemind's progress records), compares it with its epoch's other peers, and
asks to reload the swarm's state when it disagrees with the majority (hivemind's averaging can partly fail and
still report success, leaving peers apart).

The digest is a count sketch: the flat parameters in SKETCH_SIZE contiguous blocks, each summed with fixed random
signs. Its distance between two peers estimates the distance between their parameters, so peers compare with a
tolerance: bitwise equality would flag the tiny differences compressed averaging leaves by design."""

import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

logger = logging.getLogger(__name__)

SKETCH_SIZE = 16
SIGN_SEED = 20261129
SETTLE_SECONDS = 2.0  # after publishing, how long peers get to publish theirs before this one compares
RECORD_LIFETIME = 600.0  # seconds a digest stays in the DHT
# Relative distance under which two peers count as equal: after an averaging round peers differ only by float
# rounding, or by the averaging's compression error (8-bit deltas leave far more than fp16 ones).
TOLERANCE = {"none": 1e-5, "fp16": 1e-3, "int8": 2e-2}


HISTORY = 8  # earlier digests a record carries: epochs can be shorter than SETTLE_SECONDS


class EpochSketch(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    epoch: int = Field(ge=0)
    sketch: list[float] = Field(min_length=SKETCH_SIZE, max_length=SKETCH_SIZE)


class DigestRecord(EpochSketch):
    """What a peer stores under `<run_id>_digest`, subkey: its signing public key (only it can write there): its
    latest digest, and its few before, so that a peer comparing after this one moved on still finds its epoch's."""

    earlier: list[EpochSketch] = Field(default_factory=list, max_length=HISTORY)


def sketch(parameters: Sequence[torch.Tensor]) -> list[float]:
    """A SKETCH_SIZE-number digest of the parameters, the same on every peer for the same values."""
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1).to("cpu", torch.float32) for p in parameters])
        signs = torch.randint(0, 2, (len(flat),), generator=torch.Generator().manual_seed(SIGN_SEED), dtype=torch.bool)
        signed = torch.where(signs, flat, -flat)
        return [float(block.sum(dtype=torch.float64)) for block in torch.tensor_split(signed, SKETCH_SIZE)]


def distance(a: Sequence[float], b: Sequence[float]) -> float:
    """Relative distance of two sketches (≈ that of the parameters they were made from)."""
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    scale = max(ta.norm().item(), tb.norm().item(), 1e-12)
    return (ta - tb).norm().item() / scale


def majority_verdict(own: Sequence[float], others: Mapping[str, Sequence[float]], tolerance: float) -> Optional[str]:
    """Why this peer should reload the swarm's state, or None. It should when its sketch is further than
    `tolerance` from a group of its epoch's peers that outnumbers those agreeing with it (itself included);
    with a tie (e.g. two peers that disagree) nobody can tell who is right, and nobody reloads."""
    sketches = list(others.values())
    agreeing = 1 + sum(distance(own, other) <= tolerance for other in sketches)
    best_support, best = 0, None
    for candidate in sketches:
        support = sum(distance(candidate, other) <= tolerance for other in sketches)  # counts itself
        if distance(candidate, own) > tolerance and support > best_support:
            best_support, best = support, candidate
    if best is None or best_support <= agreeing:
        return None
    total = 1 + len(sketches)
    return (f"{best_support} of {total} peers agree on parameters {distance(own, best):.2g} (relative) away from "
            f"this peer's; {agreeing} of {total} agree with it")  # fmt: skip


def compared_every(hyperparameters) -> int:
    """Epochs between comparisons. Averaged gradients keep peers equal at every epoch (up to the compression's
    error), so a peer left apart by a partly failed round is found at the next epoch, not at the next state round;
    with local updates peers move apart by design between state rounds."""
    return hyperparameters.average_state_every if hyperparameters.local_updates else 1


class ParameterDigests:
    """Publishes this peer's digest after every `every`-th epoch and compares it in the background; the trainer
    asks take_verdict() between batches and reloads state from peers when told to."""

    def __init__(self, run_id: str, compression: str, every: int,
                 swarm_handles: Callable[[], Optional[tuple[Any, bytes]]], settle_seconds: float = SETTLE_SECONDS):  # fmt: skip
        """`every`: 1 when gradients are averaged every epoch, else the swarm's average_state_every (see
        compared_every). `swarm_handles` returns (DHT, signing public key) while the peer is in the swarm, else None."""
        self.key = f"{run_id}_digest"
        self.tolerance = TOLERANCE.get(compression, TOLERANCE["int8"])
        self.every, self.settle_seconds = every, settle_seconds
        self.swarm_handles = swarm_handles
        self.malformed = 0  # peers' records that did not parse: counted, never fatal
        self.comparisons = 0  # epochs compared (other peers' digests found or not)
        self.checked = 0  # epochs compared with at least one other peer's digest
        self.agreed = 0  # … where every other peer's digest was within the tolerance
        self._verdict: Optional[tuple[int, str]] = None
        self._lock, self._stopped = threading.Lock(), threading.Event()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="digests")
        self._published: deque[EpochSketch] = deque(maxlen=HISTORY + 1)

    def epoch_done(self, epoch: int, parameters: Sequence[torch.Tensor]) -> None:
        """The swarm moved to `epoch`; if peers should agree at this transition, publish and compare."""
        if epoch % self.every or self._stopped.is_set():
            return
        handles = self.swarm_handles()
        if handles is None:
            return
        dht, public_key = handles
        own = sketch(parameters)
        self._published.append(EpochSketch(epoch=epoch, sketch=own))
        earlier = list(reversed(self._published))[1:]  # newest first
        record = DigestRecord(epoch=epoch, sketch=own, earlier=earlier).model_dump()
        from hivemind.utils import get_dht_time

        dht.store(self.key, subkey=public_key, value=record, expiration_time=get_dht_time() + RECORD_LIFETIME,
                  return_future=True)  # fmt: skip
        self._worker.submit(self._compare, dht, public_key, epoch, own, time.monotonic() + self.settle_seconds)

    def _compare(self, dht, public_key: bytes, epoch: int, own: list[float], due: float) -> None:
        # `due` counts from the publication: with epochs shorter than the settling time, comparisons queue up
        if not self._stopped.wait(max(0.0, due - time.monotonic())):
            self.compare(dht, public_key, epoch, own)

    def compare(self, dht, public_key: bytes, epoch: int, own: list[float]) -> None:
        """Fetch the epoch's digests and judge this peer's (epoch_done() calls it SETTLE_SECONDS later)."""
        try:
            found = dht.get(self.key, latest=True)
        except Exception as e:  # the DHT stopped (pause, shutdown) or the network failed: try next epoch
            logger.debug("Could not fetch parameter digests for epoch %d: %s", epoch, e)
            return
        others = self._peer_sketches(getattr(found, "value", None), public_key, epoch)
        self.comparisons += 1
        if others:
            self.checked += 1
            apart = [d for d in (distance(own, other) for other in others.values()) if d > self.tolerance]
            if apart:
                logger.info("Epoch %d: parameters differ from %d of %d peers (relative distance up to %.2g)",
                            epoch, len(apart), len(others), max(apart))  # fmt: skip
            else:
                self.agreed += 1
                logger.debug("Epoch %d: parameters agree with all %d peers", epoch, len(others))
        verdict = majority_verdict(own, others, self.tolerance)
        if verdict is not None:
            with self._lock:
                self._verdict = (epoch, verdict)

    def _peer_sketches(self, records: Any, public_key: bytes, epoch: int) -> dict[str, list[float]]:
        if not isinstance(records, dict):
            return {}
        sketches = {}
        for subkey, entry in records.items():
            if subkey == public_key:
                continue
            try:
                record = DigestRecord.model_validate(getattr(entry, "value", entry))
            except ValidationError:
                self.malformed += 1
                logger.debug("Ignoring a malformed parameter digest from %r", subkey)
                continue
            for published in (record, *record.earlier):
                if published.epoch == epoch:
                    sketches[repr(subkey)] = published.sketch
                    break
        return sketches

    def take_verdict(self, local_epoch: int) -> Optional[tuple[int, str]]:
        """(epoch, why) once, if this peer disagreed with its peers at its current or previous epoch."""
        with self._lock:
            verdict, self._verdict = self._verdict, None
        if verdict is not None and verdict[0] < local_epoch - 1:
            logger.info("Dropping a stale digest verdict of epoch %d: %s", *verdict)
            return None
        return verdict

    def summary(self) -> dict[str, int]:
        return {"compared": self.checked, "agreed": self.agreed, "malformed": self.malformed}

    def stop(self) -> None:
        self._stopped.set()
        self._worker.shutdown(wait=False, cancel_futures=True)
