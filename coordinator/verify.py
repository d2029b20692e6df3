"""The CPU-heavy, order-free half of ingestion: topic, envelope, signature and topic match of one MQTT message.

It needs only node keys (a node id is the hash of its key, so a cached key never goes stale), which is why it
can run in ingest worker processes as well as in the coordinator. Sequence numbers, swarms and presence order
are decided afterwards, in one place (coordinator/ingest.py).
"""

from dataclasses import dataclass
from typing import Optional

from coordinator.ledger import Ledger
from protocol.envelope import verify_envelope
from protocol.errors import ProtocolError
from protocol.messages import ContributionReport, Message, NodeStatus
from protocol.topics import parse_node_topic

MODELS: dict[str, type[Message]] = {"report": ContributionReport, "status": NodeStatus}


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
    def __init__(self, ledger: Ledger):
        self.ledger = ledger

    async def check(self, topic: str, payload: bytes) -> Verified:
        """Raise Rejected unless `payload` is a well-formed message signed by the node its topic names."""
        parsed = parse_node_topic(topic)
        if parsed is None:
            raise Rejected("malformed", "topic is not a Hearth node topic")
        if parsed.node_id not in self.ledger.nodes:
            await self.ledger.refresh_node(parsed.node_id)  # registered since the cache was filled
        try:
            message = verify_envelope(payload, MODELS[parsed.kind], public_key_for=self._public_key_for)
        except ProtocolError as e:
            raise Rejected(e.reason, str(e), node_id=parsed.node_id) from e
        if message.node_id != parsed.node_id or message.swarm_id != parsed.swarm_id:
            raise Rejected("topic_mismatch", f"signed for {message.swarm_id}/{message.node_id}, sent on {topic}",
                           node_id=message.node_id, seq=getattr(message, "seq", None))  # fmt: skip
        return Verified(parsed.kind, dict(message.__dict__))  # the validated fields (faster than dict(message))

    def _public_key_for(self, message) -> Optional[str]:
        node = self.ledger.nodes.get(message.node_id)
        return None if node is None else node.public_key
