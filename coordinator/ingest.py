"""Report ingestion: MQTT messages → verified reports and presence → the ledger. Bad input is counted, never fatal.

Receiving and verifying (coordinator/verify.py) happen either in this process (one MQTT client, and a checker
task that verifies what it received in batches) or in `workers` ingest worker processes
that share the subscriptions (MQTT 5 `$share/hearth-ingest/…`) and send their verdicts here. One writer task
then puts each node's reports in sequence order (coordinator/sequencer.py), decides them (swarm, sequence) and
writes the whole batch in one transaction; receipts go out after the commit, at most one per node every
RECEIPT_INTERVAL. Sequence numbers make QoS-1 redeliveries and outbox replays idempotent, and in-order
acceptance means a receipt never covers a report the ledger does not hold.
"""

import asyncio
import gc
import hashlib
import logging
import multiprocessing
import time
from collections import Counter
from typing import NamedTuple, Optional

import aiomqtt
import paho.mqtt.client as mqtt

from coordinator.ledger import Batch, Ledger, credit_for, utcnow
from coordinator.metrics import CoordinatorMetrics
from coordinator.mqtt_sink import SinkClient, login
from coordinator.sequencer import Sequencer
from coordinator.verify import CHECK_BATCH, Rejected, Verified, Verifier
from protocol.encoding import canonical_bytes
from protocol.messages import NodeStatus
from protocol.version import PROTOCOL_VERSION
from protocol.topics import REPORTS_FILTER, STATUS_FILTER, parse_node_topic, receipt_topic, status_topic

__all__ = ["Ingestor", "Rejected"]

logger = logging.getLogger(__name__)

MAX_BATCH = 2000
MAX_BACKOFF = 30.0
WORKER_RESTART_SECONDS = 1.0
MIN_WAIT = 0.1  # seconds the writer waits for input while a held report is due
TASK_RESTART_SECONDS = 1.0
LINGER = 0.1  # seconds a batch may wait for more input: fewer, larger transactions and receipts under load
# Receipts are retained state (the latest last_seq), so they go at QoS 0: one lost on a dropped connection costs
# a re-send, refused as a replay, which brings a new receipt; the retained one is there at the next subscribe.
# A receipt says "all up to last_seq", so one per node this often covers all its reports committed meanwhile:
# under load that is a fraction of the receipts (each costs a signature) for at most this much more latency.
RECEIPT_INTERVAL = 0.25

Item = tuple  # (topic, payload, received (monotonic), Verified | Rejected | None while unchecked)


class CaughtUp(NamedTuple):
    """Ingest worker `worker` had read everything the broker sent it before `time` (monotonic)."""

    worker: int
    time: float


class Ingestor:
    def __init__(self, ledger: Ledger, host: str, port: int, identifier: str = "hearth-coordinator-ingest",
                 metrics: Optional[CoordinatorMetrics] = None, workers: int = 0, database_url: Optional[str] = None,
                 hold_seconds: float = 2.0):  # fmt: skip
        if workers and not database_url:
            raise ValueError("ingest workers need the database URL to read node keys")
        self.ledger = ledger
        self.metrics = metrics or CoordinatorMetrics()
        self.host, self.port, self.identifier = host, port, identifier
        self.workers, self.database_url = workers, database_url
        self.counters: Counter[str] = Counter()
        self.subscribed = asyncio.Event()
        self.verifier = Verifier(ledger)
        # With work verification on (coordinator/work_check.py), reports are written pending and granted later,
        # and a node may report each epoch of a swarm once.
        self.hold_for_verification = False
        self._last_epochs: dict[tuple[str, str], int] = {}
        self.sequencer = Sequencer(self._last_seq, hold_seconds)
        self._queue: asyncio.Queue[Item] = asyncio.Queue()  # the writer's input: verified (or unchecked) items
        self._unchecked: asyncio.Queue[Item] = asyncio.Queue()  # received here, for the checker task
        self._unreceipted: dict[tuple[str, str], None] = {}  # (node, swarm) committed since their last receipt
        self._receipts_sent_at = float("-inf")  # monotonic
        self._tasks: list[asyncio.Task] = []
        self.receipt_key = None  # protocol.signing.SigningKey that seals receipts (app.py sets the coordinator's)
        self.credentials: Optional[tuple[str, str]] = None  # the coordinator's broker login (app.py)
        self._client: Optional[aiomqtt.Client] = None
        self._workers_ready: set[int] = set()
        self._caught_up: dict[int, float] = {}  # per running worker

    async def start(self) -> None:
        freeze_startup_heap()
        self._tasks = [asyncio.create_task(self._keep_running(run), name=f"ingest-{name}")
                       for name, run in (("receive", self._receive), ("check", self._check_received),
                                         ("write", self._write))]  # fmt: skip
        self._tasks += [asyncio.create_task(self._supervise_worker(i), name=f"ingest-worker-{i}")
                        for i in range(self.workers)]  # fmt: skip

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _keep_running(self, run) -> None:
        """Run an ingest loop; one that fails is logged, counted and started again, so ingestion never stops
        silently. What it held in memory had no receipt, so the nodes send it again."""
        while True:
            try:
                await run()
            except Exception:
                self.counters["task_failures"] += 1
                logger.exception("Ingest's %s loop failed; starting it again in %.0f s", run.__name__.strip("_"),
                                 TASK_RESTART_SECONDS)  # fmt: skip
                if run == self._write:  # it may have advanced a node's last_seq in memory for a batch never written
                    await self._reload_after_failure()
                await asyncio.sleep(TASK_RESTART_SECONDS)

    # --- receiving --------------------------------------------------------------------------------------------
    async def _receive(self) -> None:
        """This process's MQTT client: subscribes itself without workers; with workers it only sends receipts."""
        backoff = 0.5
        while True:
            try:
                async with SinkClient(self.host, self.port, identifier=self.identifier, clean_session=False,
                                      sink=self._unchecked, **login(self.credentials)) as client:  # fmt: skip
                    if not self.workers:
                        await client.subscribe(REPORTS_FILTER, qos=1)
                        await client.subscribe(STATUS_FILTER, qos=1)
                        logger.info("Ingest subscribed to mqtt://%s:%s", self.host, self.port)
                    self._client = client
                    self._update_ready()
                    backoff = 0.5
                    await client.until_disconnected()  # messages go straight into self._unchecked
            except aiomqtt.MqttError as e:
                self._client = None
                self._update_ready()
                self.counters["broker_disconnects"] += 1
                logger.warning("Lost the MQTT broker (%s); reconnecting in %.1f s", e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish a coordinator message (QoS 1) on this process's broker connection; counted and dropped when it
        is down (audit requests then go unanswered and are failed by time, which raises the node's odds again)."""
        client = self._client
        if client is None:
            self.counters["control_unsent"] += 1
            return
        await client.publish(topic, payload, qos=1)

    async def clear_retained(self, nodes: list[tuple[str, str]]) -> None:
        """Make the broker forget the retained presence and receipt of each (swarm, node id): an erased node's."""
        client = self._client
        if client is None:
            self.counters["control_unsent"] += len(nodes)
            logger.warning("Broker down: the retained messages of %d erased node(s) stay on it", len(nodes))
            return
        for swarm_id, node_id in nodes:
            for topic in (status_topic(swarm_id, node_id), receipt_topic(swarm_id, node_id)):
                await client.publish(topic, b"", qos=1, retain=True)  # an empty retained message deletes it

    def _update_ready(self) -> None:
        if self._client is not None and len(self._workers_ready) == self.workers:
            self.subscribed.set()
        else:
            self.subscribed.clear()

    async def _supervise_worker(self, index: int) -> None:
        """Run ingest worker `index` and forward its verdicts to the writer; restart it if it dies."""
        from coordinator.ingest_worker import run_worker

        context = multiprocessing.get_context("spawn")
        while True:
            receiving, sending = context.Pipe(duplex=False)
            process = context.Process(target=run_worker, args=(index, self.database_url, self.host, self.port, sending),
                                      kwargs={"credentials": self.credentials},
                                      name=f"hearth-ingest-worker-{index}", daemon=True)  # fmt: skip
            process.start()
            sending.close()
            try:
                while True:
                    received = await asyncio.to_thread(receiving.recv)
                    if received == "subscribed":
                        self._workers_ready.add(index)
                        self._update_ready()
                        continue
                    caught_up, items = received
                    self.counters[f"worker_{index}_messages"] += len(items)
                    for item in items:
                        self._queue.put_nowait(item)
                    if caught_up is not None:
                        self._queue.put_nowait(CaughtUp(index, caught_up))
            except (EOFError, OSError):
                logger.warning("Ingest worker %d stopped (exit code %s); restarting it", index, process.exitcode)
            finally:
                self._workers_ready.discard(index)
                self._caught_up.pop(index, None)  # what it held is lost: its nodes' outboxes send it again
                self._update_ready()
                if process.is_alive():
                    process.terminate()
                    process.join(5)
                receiving.close()
            await asyncio.sleep(WORKER_RESTART_SECONDS)

    async def _check_received(self) -> None:
        """Verify what this process received, in batches, and pass it on to the writer in the order received."""
        while True:
            items = [await self._unchecked.get()]
            while len(items) < CHECK_BATCH and not self._unchecked.empty():
                items.append(self._unchecked.get_nowait())
            try:
                verdicts = await self.verifier.check_many([(topic, payload) for topic, payload, _, _ in items])
            except Exception:  # a bug must never stop ingestion: the writer checks these one by one instead
                logger.exception("Could not check a batch of %d received message(s)", len(items))
                verdicts = [None] * len(items)
            for (topic, payload, received, _), verdict in zip(items, verdicts):
                self._queue.put_nowait((topic, payload, received, verdict))

    # --- deciding and writing ---------------------------------------------------------------------------------
    async def _write(self) -> None:
        while True:
            items = await self._next_items()
            batch, granted = Batch(), []
            now, decided_at = time.monotonic(), utcnow()
            for item in items:
                if isinstance(item, CaughtUp):
                    self._caught_up[item.worker] = item.time
                    continue
                for ready in await self._route(item, now):
                    await self._decide(ready, batch, granted, decided_at)
            # Without workers, everything received is in `items` or before; with them, the slowest one counts.
            caught_up = min(self._caught_up.values(), default=now) if self.workers else now
            for ready in self.sequencer.expire(now, caught_up):
                await self._decide(ready, batch, granted, decided_at)
            self.counters["out_of_order_dropped"] = self.sequencer.dropped
            if batch and await self._commit(batch, granted):
                self._unreceipted.update(dict.fromkeys(self._receipted_nodes(batch)))
            if self._unreceipted and time.monotonic() >= self._receipts_sent_at + RECEIPT_INTERVAL:
                self._send_receipts()

    async def _commit(self, batch: Batch, granted: list[float]) -> bool:
        try:
            await self.ledger.write(batch)
        except Exception:
            self.counters["write_errors"] += 1
            logger.exception("Could not write a batch of %d ingested message(s) to the ledger",
                             len(batch.grants) + len(batch.rejections) + len(batch.statuses))  # fmt: skip
            await self._reload_after_failure()
            return False
        committed = time.monotonic()
        for received in granted:
            self.metrics.latency.observe(committed - received)
        return True

    async def _next_items(self) -> list[Item]:
        """What arrived (up to MAX_BATCH), waiting at most until the sequencer's next hold expires or receipts
        are due."""
        try:
            if not self._queue.empty():
                items = [self._queue.get_nowait()]
            else:
                items = [await asyncio.wait_for(self._queue.get(), self._idle_timeout())]
        except asyncio.TimeoutError:
            return []
        if self._queue.qsize() < MAX_BATCH:
            await asyncio.sleep(LINGER)  # one timer per batch, not one per message
        while len(items) < MAX_BATCH and not self._queue.empty():
            items.append(self._queue.get_nowait())
        return items

    def _idle_timeout(self) -> Optional[float]:
        """Seconds the writer may wait for input: until receipts are due or the sequencer's next hold expires
        (at least MIN_WAIT: if that hold waits for a slow worker, that worker's next word wakes us); None: no limit."""
        now, timeouts = time.monotonic(), []
        if self._unreceipted:
            timeouts.append(max(0.0, self._receipts_sent_at + RECEIPT_INTERVAL - now))
        deadline = self.sequencer.next_deadline()
        if deadline is not None:
            timeouts.append(max(MIN_WAIT, deadline - now))
        return min(timeouts, default=None)

    async def _route(self, item: Item, now: float) -> list[Item]:
        """Verify the item if no worker did, then hand reports to the sequencer: the items ready to decide."""
        topic, payload, received, verdict = item
        if verdict is None:
            verdict = await self._check(topic, payload)
            item = (topic, payload, received, verdict)
        if isinstance(verdict, Verified) and verdict.kind == "report":
            node_id, swarm_id = verdict.fields["node_id"], verdict.fields["swarm_id"]
            if swarm_id not in self.ledger.swarms and await self.ledger.refresh_swarm(swarm_id) is None:
                return [item]  # refused at once as unknown_swarm: no sequence to keep
            if node_id not in self.ledger.nodes:
                await self.ledger.refresh_node(node_id)
            return self.sequencer.offer(node_id, verdict.fields["seq"], item, now)
        return [item]

    async def _check(self, topic: str, payload: bytes):
        try:
            return await self.verifier.check(topic, payload)
        except Rejected as r:
            return r
        except Exception as e:  # a bug must cost one message, never the loop
            logger.exception("Unexpected error while verifying a message on %s", topic)
            return Rejected("internal_error", f"{type(e).__name__}: {e}")

    async def handle(self, topic: str, payload: bytes, batch: Batch, received: Optional[float] = None) -> str:
        """Verify and decide one message into `batch`, in the order given (no sequencing);
        returns 'accepted', 'status', 'stale' or the rejection reason."""
        return await self._decide((topic, payload, received, await self._check(topic, payload)), batch)

    async def _decide(self, item: Item, batch: Batch, granted: Optional[list] = None, received_at=None) -> str:
        topic, payload, received, verdict = item
        received_at = received_at or utcnow()  # the writer takes one time per batch
        try:
            if isinstance(verdict, Rejected):
                raise verdict
            outcome = await self._apply(verdict, batch, received_at)
        except Rejected as r:
            outcome = r.reason
            self._reject(batch, topic, payload, r, received_at)
        except Exception as e:  # a bug must cost one message, never the loop
            logger.exception("Unexpected error while ingesting a message on %s", topic)
            outcome = "internal_error"
            self._reject(batch, topic, payload, Rejected(outcome, f"{type(e).__name__}: {e}"), received_at)
        self.counters[outcome] += 1
        self.metrics.count(topic, outcome)
        if outcome == "accepted" and granted is not None and received is not None:
            granted.append(received)
        return outcome

    async def _apply(self, verified: Verified, batch: Batch, received_at) -> str:
        fields = verified.fields  # validated already; a report's fields are read as they are (no model per report)
        node_id, swarm_id, seq = fields["node_id"], fields["swarm_id"], fields.get("seq")
        swarm = self.ledger.swarms.get(swarm_id) or await self.ledger.refresh_swarm(swarm_id)
        if swarm is None:
            raise Rejected("unknown_swarm", f"no swarm {swarm_id!r}", node_id=node_id, seq=seq)
        node = self.ledger.nodes.get(node_id) or await self.ledger.refresh_node(node_id)
        if node is None:
            raise Rejected("unknown_sender", "the sender is not registered", node_id=node_id, seq=seq)
        if verified.kind == "status":
            return self._status(verified.message, node, batch, received_at)
        if seq <= node.last_seq:
            raise Rejected("replayed", f"seq {seq} is not above the last accepted {node.last_seq}",
                           node_id=node_id, seq=seq)  # fmt: skip
        node.last_seq = seq
        self.sequencer.forget_below(node_id, seq)
        status, reason, outcome = "granted", None, "accepted"
        if self.hold_for_verification:
            status, reason, outcome = await self._held_status(node_id, swarm_id, fields["epoch"])
        batch.grants.append(
            dict(
                node_id=node_id, volunteer_id=node.volunteer_id, swarm_id=swarm_id, seq=seq, epoch=fields["epoch"],
                samples=fields["samples"], compute_seconds=fields["compute_seconds"], device=fields["device"],
                loss=fields["loss"], group_size=fields["group_size"], status=status, reason=reason,
                bytes_sent=fields["bytes_sent"], bytes_received=fields["bytes_received"],
                credit=credit_for(fields["samples"], swarm.flops_per_sample) if status != "rejected" else 0.0,
                received_at=received_at,
            )
        )  # fmt: skip
        return outcome

    async def _held_status(self, node_id: str, swarm_id: str, epoch: int) -> tuple[str, Optional[str], str]:
        """Pending until verified, or rejected (keeping its sequence number) if the node reported that epoch."""
        key = (node_id, swarm_id)
        if key not in self._last_epochs:
            self._last_epochs[key] = await self.ledger.last_epoch(node_id, swarm_id)
        if epoch <= self._last_epochs[key]:
            return "rejected", f"duplicate_epoch: epoch {epoch} already reported", "duplicate_epoch"
        self._last_epochs[key] = epoch
        return "pending", None, "accepted"

    def _status(self, message: NodeStatus, node, batch: Batch, received_at) -> str:
        if message.time < node.status_time:
            return "stale"  # an older presence message (e.g. a retained one redelivered after a newer one)
        node.status_time = message.time
        values = dict(online=message.state != "offline", last_seen=received_at, swarm_id=message.swarm_id,
                      status_time=message.time)  # fmt: skip
        if message.device:
            values["device"] = message.device
        if message.epsilon_spent is not None:  # a last will carries none: keep the node's latest
            values["epsilon_spent"] = message.epsilon_spent
        batch.statuses.setdefault(message.node_id, {}).update(values)
        return "status"

    def _last_seq(self, node_id: str) -> int:
        node = self.ledger.nodes.get(node_id)
        return 0 if node is None else node.last_seq

    def _reject(self, batch: Batch, topic: str, payload: bytes, r: Rejected, received_at) -> None:
        logger.warning("Rejected message on %s: %s (%s)", topic, r.reason, r.detail)
        batch.rejections.append(
            dict(
                reason=r.reason, detail=r.detail[:500], topic=topic[:300], node_id=r.node_id, seq=r.seq,
                payload_sha256=hashlib.sha256(payload).hexdigest(), size=len(payload), received_at=received_at,
            )
        )  # fmt: skip

    async def _reload_after_failure(self) -> None:
        try:
            await self.ledger.load()
        except Exception:
            logger.exception("Could not reload the ledger caches")

    # --- receipts ---------------------------------------------------------------------------------------------
    @staticmethod
    def _receipted_nodes(batch: Batch) -> list[tuple[str, str]]:
        """The (node, swarm) pairs a committed batch owes a receipt: those with reports in it, or a replay (the
        node re-sent because it missed a receipt)."""
        nodes = [(grant["node_id"], grant["swarm_id"]) for grant in batch.grants]
        for rejection in batch.rejections:
            if rejection["reason"] == "replayed":  # verified, so its topic names the node and swarm
                topic = parse_node_topic(rejection["topic"])
                nodes.append((topic.node_id, topic.swarm_id))
        return nodes

    def _send_receipts(self) -> None:
        """Tell each node with newly committed reports which of its reports are in the ledger (retained), so its
        outbox can let them go. Without a receipt a node re-sends, so a lost receipt only costs a duplicate,
        rejected as a replay. Called only between batches: every last_seq it reads is committed."""
        nodes, self._unreceipted = list(self._unreceipted), {}
        self._receipts_sent_at = time.monotonic()
        client = self._client
        if client is None:
            return
        now = time.time()
        nodes = [(node_id, swarm_id) for node_id, swarm_id in nodes if node_id in self.ledger.nodes]  # not detached
        bodies = [receipt_body(node_id, swarm_id, self.ledger.nodes[node_id].last_seq, now) for node_id, swarm_id in nodes]
        # sealed with the coordinator's key when it has one: nodes drop reports only on a genuine receipt
        if self.receipt_key is not None:
            bodies = [canonical_bytes({"body": body.decode("utf-8"), "sig": sig})
                      for body, sig in zip(bodies, self.receipt_key.sign_many(bodies))]  # fmt: skip
        # aiomqtt's publish() costs a task, an event and a warning per receipt once many are queued, and paho's
        # a send() each; QoS 0 needs none of that: the PUBLISH packets go in one write, in call order, so a node's
        # retained receipt always ends at its latest last_seq
        paho = client._client
        if paho._sock is None:  # the connection just dropped: these nodes will re-send
            self.counters["receipts_unsent"] += len(nodes)
            return
        packets = b"".join(retained_publish(receipt_topic(swarm_id, node_id), body, paho._protocol == mqtt.MQTTv5)
                           for (node_id, swarm_id), body in zip(nodes, bodies))  # fmt: skip
        if packets and paho._packet_queue(mqtt.PUBACK, packets, 0, 0) != mqtt.MQTT_ERR_SUCCESS:
            self.counters["receipts_unsent"] += len(nodes)


def freeze_startup_heap() -> None:
    """Once per process: move every object alive now (the imports: torch, SQLAlchemy, hivemind; the ledger's caches)
    out of the garbage collector's sight. Its full passes then walk only what came since: in the coordinator
    under load they took 0.4-0.5 s each, every 6-10 s, stalling ingest (p99 latency) and the API; 0.02 s frozen."""
    global _heap_frozen
    if not _heap_frozen:
        _heap_frozen = True
        gc.collect()
        gc.freeze()


_heap_frozen = False


def receipt_body(node_id: str, swarm_id: str, last_seq: int, now: float) -> bytes:
    """The canonical bytes of Receipt(node_id=…, swarm_id=…, last_seq=…, time=now) without building the model
    (its fields come from the ledger, valid already); tests/coordinator hold it equal to the model's."""
    return canonical_bytes({"kind": "receipt", "protocol_version": PROTOCOL_VERSION, "node_id": node_id,
                            "swarm_id": swarm_id, "last_seq": last_seq, "time": now})  # fmt: skip


def retained_publish(topic: str, payload: bytes, v5: bool = False) -> bytes:
    """An MQTT PUBLISH packet, QoS 0, retained (under MQTT 5 with no properties)."""
    body = len(topic_bytes := topic.encode("utf-8")).to_bytes(2, "big") + topic_bytes + (b"\x00" if v5 else b"") + payload
    length, encoded = len(body), bytearray()
    while True:
        length, digit = divmod(length, 128)
        encoded.append(digit | (0x80 if length else 0))
        if not length:
            break
    return b"\x31" + bytes(encoded) + body
