"""Report ingestion: MQTT messages → verified reports and presence → the ledger. Bad input is counted, never fatal.

One receiver task reads the broker (reconnecting with backoff); one writer task drains what arrived, decides
each message in order (topic, envelope, signature, topic match, swarm, sequence) and writes the whole batch
in one transaction. Sequence numbers make QoS-1 redeliveries and outbox replays idempotent.
"""

import asyncio
import hashlib
import logging
import time
from collections import Counter
from typing import Optional

import aiomqtt

from coordinator.ledger import Batch, Ledger, credit_for, utcnow
from coordinator.metrics import CoordinatorMetrics
from protocol.envelope import verify_envelope
from protocol.errors import ProtocolError
from protocol.encoding import canonical_bytes
from protocol.messages import ContributionReport, NodeStatus, Receipt
from protocol.topics import REPORTS_FILTER, STATUS_FILTER, parse_node_topic, receipt_topic

logger = logging.getLogger(__name__)

MAX_BATCH = 500
MAX_BACKOFF = 30.0


class Rejected(Exception):
    def __init__(self, reason: str, detail: str, node_id: Optional[str] = None, seq: Optional[int] = None):
        super().__init__(detail)
        self.reason, self.detail, self.node_id, self.seq = reason, detail, node_id, seq


class Ingestor:
    def __init__(self, ledger: Ledger, host: str, port: int, identifier: str = "hearth-coordinator-ingest",
                 metrics: Optional[CoordinatorMetrics] = None):  # fmt: skip
        self.ledger = ledger
        self.metrics = metrics or CoordinatorMetrics()
        self.host, self.port, self.identifier = host, port, identifier
        self.counters: Counter[str] = Counter()
        self.subscribed = asyncio.Event()
        self._queue: asyncio.Queue[tuple[str, bytes, float]] = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self._client: Optional[aiomqtt.Client] = None

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._receive(), name="ingest-receive"),
                       asyncio.create_task(self._write(), name="ingest-write")]  # fmt: skip

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _receive(self) -> None:
        backoff = 0.5
        while True:
            try:
                async with aiomqtt.Client(self.host, self.port, identifier=self.identifier, clean_session=False) as client:
                    await client.subscribe(REPORTS_FILTER, qos=1)
                    await client.subscribe(STATUS_FILTER, qos=1)
                    logger.info("Ingest subscribed to mqtt://%s:%s", self.host, self.port)
                    self._client = client
                    self.subscribed.set()
                    backoff = 0.5
                    async for message in client.messages:
                        payload = message.payload if isinstance(message.payload, bytes) else str(message.payload).encode()
                        self._queue.put_nowait((message.topic.value, payload, time.monotonic()))
            except aiomqtt.MqttError as e:
                self._client = None
                self.subscribed.clear()
                self.counters["broker_disconnects"] += 1
                logger.warning("Lost the MQTT broker (%s); reconnecting in %.1f s", e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def _write(self) -> None:
        while True:
            items = [await self._queue.get()]
            while len(items) < MAX_BATCH and not self._queue.empty():
                items.append(self._queue.get_nowait())
            batch, granted = Batch(), []
            for topic, payload, received in items:
                if await self.handle(topic, payload, batch, received) == "accepted":
                    granted.append(received)
            try:
                await self.ledger.write(batch)
            except Exception:
                self.counters["write_errors"] += 1
                logger.exception("Could not write %d ingested message(s) to the ledger", len(items))
                await self._reload_after_failure()
                continue
            committed = time.monotonic()
            for received in granted:
                self.metrics.latency.observe(committed - received)
            await self._send_receipts(batch)

    async def _send_receipts(self, batch: Batch) -> None:
        """Tell each node which of its reports are in the ledger (retained), so its outbox can let them go.
        Without a receipt a node re-sends, so a lost receipt only costs a duplicate, rejected as a replay."""
        client = self._client
        nodes = {(grant["node_id"], grant["swarm_id"]) for grant in batch.grants}
        for rejection in batch.rejections:
            if rejection["reason"] == "replayed":  # verified, so its topic names the node and swarm
                topic = parse_node_topic(rejection["topic"])
                nodes.add((topic.node_id, topic.swarm_id))
        if client is None or not nodes:
            return

        async def send(node_id: str, swarm_id: str) -> None:
            receipt = Receipt(node_id=node_id, swarm_id=swarm_id, last_seq=self.ledger.nodes[node_id].last_seq,
                              time=time.time())  # fmt: skip
            payload = canonical_bytes(receipt.model_dump(mode="json"))
            await client.publish(receipt_topic(swarm_id, node_id), payload, qos=1, retain=True)

        # All at once: one at a time, each waiting for its PUBACK, held up the next batch.
        outcomes = await asyncio.gather(*(send(*node) for node in nodes), return_exceptions=True)
        failed = [outcome for outcome in outcomes if isinstance(outcome, aiomqtt.MqttError)]
        if failed:
            logger.info("Could not send %d receipt(s) (%s); their nodes will re-send", len(failed), failed[0])
        for outcome in outcomes:
            if isinstance(outcome, Exception) and not isinstance(outcome, aiomqtt.MqttError):
                raise outcome

    async def _reload_after_failure(self) -> None:
        try:
            await self.ledger.load()
        except Exception:
            logger.exception("Could not reload the ledger caches")

    async def handle(self, topic: str, payload: bytes, batch: Batch, received: Optional[float] = None) -> str:
        """Decide one message into `batch`; returns 'accepted', 'status', 'stale' or the rejection reason."""
        received_at = utcnow()
        try:
            outcome = await self._decide(topic, payload, batch, received_at)
        except Rejected as r:
            outcome = r.reason
            self._reject(batch, topic, payload, r, received_at)
        except Exception as e:  # a bug must cost one message, never the loop
            logger.exception("Unexpected error while ingesting a message on %s", topic)
            outcome = "internal_error"
            self._reject(batch, topic, payload, Rejected(outcome, f"{type(e).__name__}: {e}"), received_at)
        self.counters[outcome] += 1
        self.metrics.count(topic, outcome)
        return outcome

    async def _decide(self, topic: str, payload: bytes, batch: Batch, received_at) -> str:
        parsed = parse_node_topic(topic)
        if parsed is None:
            raise Rejected("malformed", "topic is not a Hearth node topic")
        if parsed.node_id not in self.ledger.nodes:
            await self.ledger.refresh_node(parsed.node_id)
        model = ContributionReport if parsed.kind == "report" else NodeStatus
        try:
            message = verify_envelope(payload, model, public_key_for=self._public_key_for)
        except ProtocolError as e:
            raise Rejected(e.reason, str(e), node_id=parsed.node_id) from e
        seq = getattr(message, "seq", None)
        if message.node_id != parsed.node_id or message.swarm_id != parsed.swarm_id:
            raise Rejected("topic_mismatch", f"signed for {message.swarm_id}/{message.node_id}, sent on {topic}",
                           node_id=message.node_id, seq=seq)  # fmt: skip
        swarm = self.ledger.swarms.get(message.swarm_id) or await self.ledger.refresh_swarm(message.swarm_id)
        if swarm is None:
            raise Rejected("unknown_swarm", f"no swarm {message.swarm_id!r}", node_id=message.node_id, seq=seq)
        node = self.ledger.nodes[message.node_id]
        if isinstance(message, NodeStatus):
            return self._status(message, node, batch, received_at)
        if message.seq <= node.last_seq:
            raise Rejected("replayed", f"seq {message.seq} is not above the last accepted {node.last_seq}",
                           node_id=message.node_id, seq=message.seq)  # fmt: skip
        node.last_seq = message.seq
        batch.grants.append(
            dict(
                node_id=message.node_id, volunteer_id=node.volunteer_id, swarm_id=message.swarm_id, seq=message.seq,
                epoch=message.epoch, samples=message.samples, compute_seconds=message.compute_seconds,
                device=message.device, loss=message.loss, group_size=message.group_size, status="granted",
                reason=None, credit=credit_for(message.samples, swarm.flops_per_sample), received_at=received_at,
            )
        )  # fmt: skip
        return "accepted"

    def _status(self, message: NodeStatus, node, batch: Batch, received_at) -> str:
        if message.time < node.status_time:
            return "stale"  # an older presence message (e.g. a retained one redelivered after a newer one)
        node.status_time = message.time
        values = dict(online=message.state != "offline", last_seen=received_at, swarm_id=message.swarm_id,
                      status_time=message.time)  # fmt: skip
        if message.device:
            values["device"] = message.device
        batch.statuses.setdefault(message.node_id, {}).update(values)
        return "status"

    def _public_key_for(self, message) -> Optional[str]:
        node = self.ledger.nodes.get(message.node_id)
        return None if node is None else node.public_key

    def _reject(self, batch: Batch, topic: str, payload: bytes, r: Rejected, received_at) -> None:
        logger.warning("Rejected message on %s: %s (%s)", topic, r.reason, r.detail)
        batch.rejections.append(
            dict(
                reason=r.reason, detail=r.detail[:500], topic=topic[:300], node_id=r.node_id, seq=r.seq,
                payload_sha256=hashlib.sha256(payload).hexdigest(), size=len(payload), received_at=received_at,
            )
        )  # fmt: skip
