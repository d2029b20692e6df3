"""The CPU-heavy, order-free half of ingestion: topic, envelope, signature and topic match of one MQTT message.

It needs only node keys (a node id is the hash of its key, so a cached key never goes stale), which is why it
can run in ingest worker processes as well as in the coordinator. Sequence numbers, swarms and presence order
are decided afterwards, in one place (coordinator/ingest.py).

A message's signed `time` must not be ahead of this clock by more than MAX_CLOCK_SKEW ("clock_skew"): a presence
message dated in the future would otherwise outrank every later one. A report may be old (it waits in its node's
outbox while the broker or the coordinator is away), but not older than MAX_REPORT_AGE.
"""

import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional

from coordinator.ledger import Ledger
from protocol.envelope import Unverified, read_envelope
from protocol.errors import ProtocolError
from protocol.messages import MAX_CLOCK_SKEW, ContributionReport, Message, NodeStatus, describe_seconds
from protocol.signing import verify_many
from protocol.topics import NodeTopic, parse_node_topic

logger = logging.getLogger(__name__)

MODELS: dict[str, type[Message]] = {"report": ContributionReport, "status": NodeStatus}
MAX_REPORT_AGE = 7 * 24 * 3600.0  # seconds a report may have waited in its node's outbox
CHECK_BATCH = 500  # messages a receiver hands `check_many` at most


class Rejected(Exception):
    def __init__(self, reason: str, detail: str, node_id: Optional[str] = None, seq: Optional[int] = None):
        super().__init__(detail)
        self.reason, self.detail, self.node_id, self.seq = reason, detail, node_id, seq

    def __reduce__(self):  # crosses process boundaries from ingest workers
        return Rejected, (self.reason, self.detail, self.node_id, self.seq)


@dataclass(frozen=True)
class Verified:
    kind: str  # "report" or "status"
    fields: dict  # the validated message's fields (rebuilt without validation by `message`)

    @property
    def message(self) -> Message:
        return MODELS[self.kind].model_construct(**self.fields)


class Verifier:
    def __init__(self, ledger: Ledger, clock: Callable[[], float] = time.time):
        self.ledger, self.clock = ledger, clock

    async def check(self, topic: str, payload: bytes) -> Verified:
        """Raise Rejected unless `payload` is a well-formed message signed by the node its topic names."""
        verdict = (await self.check_many([(topic, payload)]))[0]
        if isinstance(verdict, Rejected):
            raise verdict
        return verdict

    async def check_many(self, messages: list[tuple[str, bytes]]) -> list[Verified | Rejected]:
        """`check` for each (topic, payload), in order, the refusals returned rather than raised."""
        verdicts: list = [await self._read(topic, payload) for topic, payload in messages]
        signed = [(i, v) for i, v in enumerate(verdicts) if not isinstance(v, Rejected)]
        # Not in a thread, though libsodium releases the GIL: the thread must take the GIL back after every
        # signature, and while the event loop is busy that waits out the switch interval (5 ms) each time.
        errors = verify_many([(u.public_key, u.signature, u.body) for _, (_, u) in signed])
        for (i, (parsed, unverified)), error in zip(signed, errors):
            verdicts[i] = self._verdict(messages[i][0], parsed, unverified, error)
        return verdicts

    async def _read(self, topic: str, payload: bytes) -> tuple[NodeTopic, Unverified] | Rejected:
        """Everything but the signature check."""
        try:
            parsed = parse_node_topic(topic)
            if parsed is None:
                raise Rejected("malformed", "topic is not a Hearth node topic")
            if parsed.node_id not in self.ledger.nodes:
                await self.ledger.refresh_node(parsed.node_id)  # registered since the cache was filled
            try:
                return parsed, read_envelope(payload, MODELS[parsed.kind], public_key_for=self._public_key_for)
            except ProtocolError as e:
                raise Rejected(e.reason, str(e), node_id=parsed.node_id) from e
        except Rejected as r:
            return r
        except Exception as e:  # a bug must cost one message, never the loop
            return _internal_error(topic, e)

    def _verdict(self, topic: str, parsed: NodeTopic, unverified: Unverified, error: Optional[ProtocolError]):
        try:
            message = unverified.message
            if error is not None:
                raise Rejected(error.reason, str(error), node_id=parsed.node_id)
            if message.node_id != parsed.node_id or message.swarm_id != parsed.swarm_id:
                raise Rejected("topic_mismatch", f"signed for {message.swarm_id}/{message.node_id}, sent on {topic}",
                               node_id=message.node_id, seq=getattr(message, "seq", None))  # fmt: skip
            self._check_time(parsed.kind, message)
            return Verified(parsed.kind, dict(message.__dict__))  # the validated fields (faster than dict(message))
        except Rejected as r:
            return r
        except Exception as e:  # a bug must cost one message, never the loop
            return _internal_error(topic, e)

    def _check_time(self, kind: str, message) -> None:
        age, seq = self.clock() - message.time, getattr(message, "seq", None)
        if -age > MAX_CLOCK_SKEW:
            raise Rejected("clock_skew", f"dated {describe_seconds(-age)} in the future (at most "
                           f"{MAX_CLOCK_SKEW:.0f} s allowed); the node's clock is wrong", node_id=message.node_id,
                           seq=seq)  # fmt: skip
        if kind == "report" and age > MAX_REPORT_AGE:
            raise Rejected("clock_skew", f"dated {describe_seconds(age)} ago (reports older than "
                           f"{MAX_REPORT_AGE / 86400:.0f} days are refused)", node_id=message.node_id, seq=seq)  # fmt: skip

    def _public_key_for(self, message) -> Optional[str]:
        node = self.ledger.nodes.get(message.node_id)
        return None if node is None else node.public_key


def _internal_error(topic: str, error: Exception) -> Rejected:
    logger.error("Unexpected error while verifying a message on %s", topic, exc_info=error)
    return Rejected("internal_error", f"{type(error).__name__}: {error}")
