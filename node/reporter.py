"""Reporting over MQTT (aiomqtt): signed contribution reports at QoS 1 through the durable outbox, and a
retained presence message whose last will, registered at connect time, says "offline".

Delivery is end to end: a report leaves the outbox only when the coordinator's (retained) receipt covers
it; until then it is re-sent after every reconnect and every RESEND_SECONDS, and the coordinator's sequence
check turns any duplicate into a no-op."""

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, Optional
from urllib.parse import urlparse

import aiomqtt
from pydantic import ValidationError

from node.accounting import EpochContribution
from node.outbox import Outbox
from node.tls import client_context, untrusted, untrusted_message
from protocol.envelope import seal, verify_envelope
from protocol.encoding import parse_canonical
from protocol.errors import ProtocolError
from protocol.messages import ContributionReport, NodeState, NodeStatus, Receipt
from protocol.signing import SigningKey
from protocol.topics import audit_topic, receipt_topic, report_topic, status_topic

logger = logging.getLogger(__name__)

PRESENCE_INTERVAL = 15.0
RESEND_SECONDS = 20.0
RECEIPT_WAIT_ON_STOP = 5.0


@dataclass
class ReporterStats:
    connected: bool = False
    reports_queued: int = 0
    reports_sent: int = 0
    reports_acknowledged: int = 0  # receipted by the coordinator: in its ledger
    reports_waiting: int = 0  # in the outbox, without a receipt yet
    control_rejected: int = 0  # receipts not signed by the coordinator's key (forged, unsigned, malformed): ignored
    last_error: Optional[str] = None


def due_for_sending(waiting: list[int], sent_at: dict[int, float], now: float) -> list[int]:
    """The waiting reports (sequence numbers, ascending) to publish now: those never sent, and, once any is due
    again (RESEND_SECONDS without a receipt), all of them in order. The coordinator takes a report only after every
    earlier one (coordinator/sequencer.py), and a report that comes again still ahead of a gap reads as a node that
    skipped a number, so a later report must never be re-sent alone while an earlier one's timer still runs."""
    if any(now - sent_at[seq] >= RESEND_SECONDS for seq in waiting if seq in sent_at):
        return list(waiting)
    return [seq for seq in waiting if seq not in sent_at]


def parse_broker_url(url: str) -> tuple[str, int]:
    parsed = urlparse(url)
    if parsed.scheme not in ("mqtt", "tcp", "mqtts") or not parsed.hostname:
        raise ValueError(f"unsupported broker URL {url!r}: expected mqtt://host:port or mqtts://host:port (TLS)")
    return parsed.hostname, parsed.port or (8883 if parsed.scheme == "mqtts" else 1883)


class Reporter:
    def __init__(self, broker_url: str, key: SigningKey, swarm_id: str, device: str, outbox: Outbox,
                 peer_id: Optional[str] = None, coordinator_key: Optional[str] = None,
                 login: Optional[tuple[str, str]] = None):  # fmt: skip
        """`coordinator_key`: receipts must be sealed with it (the manifest's); None accepts unsigned receipts from a
        coordinator that publishes no key."""
        self.host, self.port = parse_broker_url(broker_url)
        self.tls = urlparse(broker_url).scheme == "mqtts"  # verified like the coordinator's HTTPS (node/tls.py)
        self.coordinator_key = coordinator_key
        self.login = login  # (username, password) on the broker, from registration (coordinator/broker_acl.py)
        self.key, self.swarm_id, self.device, self.peer_id, self.outbox = key, swarm_id, device, peer_id, outbox
        self.stats = ReporterStats()
        self.presence = {"epoch": None, "samples_per_second": 0.0, "pause_reason": None}
        self.epsilon_spent: Callable[[], Optional[float]] = lambda: None  # differential privacy spent (data: local)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._outbox_empty = asyncio.Event()
        self._sent_at: dict[int, float] = {}  # seq → when it was last published on this connection
        self.on_audit: Optional[Callable[[bytes], None]] = None  # node.audit.AuditResponder.receive, if it answers

    # --- called on the reporter's event loop -------------------------------------------------------------
    def submit(self, contribution: EpochContribution) -> None:
        """Sign the contribution as the next report and keep it durably until the broker acknowledges it."""
        report = ContributionReport(
            node_id=self.key.node_id, swarm_id=self.swarm_id, seq=self.outbox.next_seq(), epoch=contribution.epoch,
            samples=contribution.samples, compute_seconds=contribution.compute_seconds, device=self.device,
            loss=contribution.loss, group_size=contribution.group_size, peer_id=self.peer_id, time=time.time(),
            bytes_sent=contribution.bytes_sent, bytes_received=contribution.bytes_received,
        )  # fmt: skip
        self.outbox.add(report.seq, report_topic(self.swarm_id, self.key.node_id), seal(report, self.key))
        self.stats.reports_queued += 1
        self.stats.reports_waiting = len(self.outbox)
        self.presence["epoch"] = contribution.epoch + 1
        self._wake.set()

    def update_presence(self, epoch: Optional[int], samples_per_second: float) -> None:
        self.presence.update(epoch=epoch, samples_per_second=round(samples_per_second, 3))

    def set_pause_reason(self, reason: Optional[str]) -> None:
        """Presence says "paused" with the volunteer's reason, or "online" again when None."""
        self.presence["pause_reason"] = reason
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Stay connected (reconnecting with backoff), flush the outbox, and say goodbye when stopped."""
        delay = 0.5
        while not self._stopping.is_set():
            try:
                async with self._client() as client:
                    self.stats.connected, self.stats.last_error, delay = True, None, 0.5
                    await self._serve(client)
                    return
            except aiomqtt.MqttError as e:
                self.stats.connected, self.stats.last_error = False, str(e)
                if (failure := untrusted(e)) is not None:
                    self.stats.last_error = untrusted_message("MQTT broker", f"mqtts://{self.host}:{self.port}", failure)
                    logger.error("%s", self.stats.last_error)
                logger.warning("MQTT broker %s:%s unreachable (%s); retrying in about %.0f s", self.host, self.port, e, delay)
                try:  # jitter, so that a swarm's nodes do not all come back in the same instant
                    await asyncio.wait_for(self._stopping.wait(), timeout=delay * random.uniform(0.5, 1.5))
                except asyncio.TimeoutError:
                    pass
                delay = min(delay * 2, 30.0)
        self.stats.connected = False

    # --- internals -------------------------------------------------------------------------------------------
    def _status(self, state: NodeState, will: bool = False) -> bytes:
        reason = self.presence["pause_reason"] if state != "offline" else None
        state = "paused" if reason else state
        status = NodeStatus(
            node_id=self.key.node_id, swarm_id=self.swarm_id, state=state, time=time.time(), device=self.device,
            reason=reason[:200] if reason else None,
            epoch=self.presence["epoch"] if state != "offline" else None,
            samples_per_second=self.presence["samples_per_second"] if state != "offline" else 0.0,
            epsilon_spent=None if will else self.epsilon_spent(),  # a will, written at connect time, would be stale
        )  # fmt: skip
        return seal(status, self.key)

    def _client(self) -> aiomqtt.Client:
        will = aiomqtt.Will(status_topic(self.swarm_id, self.key.node_id), self._status("offline", will=True), qos=1,
                           retain=True)  # fmt: skip
        tls_context = client_context() if self.tls else None
        return aiomqtt.Client(self.host, self.port, identifier=f"hearth-{self.key.node_id}", will=will, keepalive=15,
                              username=self.login and self.login[0], password=self.login and self.login[1],
                              tls_context=tls_context)

    async def _publish_presence(self, client: aiomqtt.Client, state: NodeState) -> None:
        topic = status_topic(self.swarm_id, self.key.node_id)
        await client.publish(topic, self._status(state), qos=1, retain=True)

    async def _flush_outbox(self, client: aiomqtt.Client) -> None:
        now = time.monotonic()
        pending = self.outbox.pending()
        self.stats.reports_waiting = len(pending)
        due = set(due_for_sending([seq for seq, _, _ in pending], self._sent_at, now))
        for seq, topic, payload in pending:
            if seq not in due:
                continue
            self.stats.reports_sent += seq not in self._sent_at
            self._sent_at[seq] = now
            await client.publish(topic, payload, qos=1)  # returns once the broker's PUBACK arrived
        if len(self.outbox) == 0:
            self._outbox_empty.set()

    async def _listen_for_receipts(self, client: aiomqtt.Client) -> None:
        topic = receipt_topic(self.swarm_id, self.key.node_id)
        audits = audit_topic(self.swarm_id, self.key.node_id)
        async for message in client.messages:
            if self.on_audit is not None and message.topic.matches(audits):
                self.on_audit(message.payload)  # it only queues the request
                continue
            if not message.topic.matches(topic):  # amqtt also hands out other topics' retained messages
                continue
            try:
                receipt = self._open_receipt(message.payload)
            except (ProtocolError, ValidationError) as e:
                self.stats.control_rejected += 1
                logger.warning("Ignoring a receipt on %s that is not the coordinator's (%r…): %s", message.topic,
                               message.payload[:80], e)  # fmt: skip
                continue
            if receipt.node_id != self.key.node_id:
                continue
            self.stats.reports_acknowledged += self.outbox.acknowledge_through(receipt.last_seq)
            self.stats.reports_waiting = len(self.outbox)
            for seq in [seq for seq in self._sent_at if seq <= receipt.last_seq]:
                del self._sent_at[seq]
            if len(self.outbox) == 0:
                self._outbox_empty.set()

    def _open_receipt(self, payload: bytes) -> Receipt:
        if self.coordinator_key is None:
            return Receipt.model_validate(parse_canonical(payload))
        return verify_envelope(payload, Receipt, lambda receipt: self.coordinator_key)

    async def _serve(self, client: aiomqtt.Client) -> None:
        self._sent_at.clear()  # a new connection: whatever has no receipt yet is sent again
        await client.subscribe(receipt_topic(self.swarm_id, self.key.node_id), qos=1)
        if self.on_audit is not None:
            await client.subscribe(audit_topic(self.swarm_id, self.key.node_id), qos=1)
        listener = asyncio.create_task(self._listen_for_receipts(client))
        try:
            await self._publish_presence(client, "online")
            last_presence = time.monotonic()
            while True:
                self._outbox_empty.clear()
                await self._flush_outbox(client)
                if self._stopping.is_set():
                    await self._wait_for_receipts()
                    await self._publish_presence(client, "offline")
                    return
                if time.monotonic() - last_presence >= PRESENCE_INTERVAL or self._wake.is_set():
                    await self._publish_presence(client, "online")
                    last_presence = time.monotonic()
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=min(PRESENCE_INTERVAL, RESEND_SECONDS))
                except asyncio.TimeoutError:
                    pass
        finally:
            listener.cancel()

    async def _wait_for_receipts(self) -> None:
        try:
            await asyncio.wait_for(self._outbox_empty.wait(), timeout=RECEIPT_WAIT_ON_STOP)
        except asyncio.TimeoutError:
            logger.info("%d report(s) stay in the outbox for the next run", len(self.outbox))
