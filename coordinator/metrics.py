"""Prometheus metrics of the coordinator, served at GET /metrics on its HTTP app.

One CollectorRegistry per coordinator (never the global one: tests run several coordinators in one process).
The Ingestor counts every report it decides and observes each grant's latency from arrival to commit.
Gauges are read at scrape time by a collector, so they never disagree with /api/v1/stats or the swarm
dashboards and no state is kept twice: nodes online from the ledger (the route reads it, async, just before
rendering) and each swarm's epoch, throughput and peers from the DHT monitor's latest reading.
"""

from typing import Any, Iterator, Optional

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from protocol.errors import ProtocolError
from protocol.topics import parse_node_topic

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
INGEST_REASONS = ("topic_mismatch", "clock_skew", "unknown_swarm", "internal_error")  # coordinator/verify.py, ingest.py
NOT_REPORTS = ("status", "stale")  # presence messages: not reports
CHECKPOINT_FAILURE_REASONS = ("no_state", "mismatch", "timeout", "disk", "error")  # see coordinator/checkpoints.py


def rejection_reasons() -> list[str]:
    """Every reason a report can be rejected for: the protocol's errors, then ingestion's own checks."""
    reasons, pending = [], [ProtocolError]
    while pending:
        cls = pending.pop(0)
        reasons.append(cls.reason)
        pending.extend(cls.__subclasses__())
    return sorted(set(reasons)) + [r for r in INGEST_REASONS if r not in reasons]


class CoordinatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.received = Counter("hearth_reports_received", "Report messages the coordinator decided.",
                                registry=self.registry)  # fmt: skip
        self.accepted = Counter("hearth_reports_accepted", "Reports granted credit.", registry=self.registry)
        self.checkpoints_saved = Counter("hearth_checkpoints_saved", "Swarm checkpoints written to disk.",
                                         registry=self.registry)  # fmt: skip
        self.checkpoint_failures = Counter("hearth_checkpoint_failures", "Checkpoints that failed, by reason.",
                                           ["reason"], registry=self.registry)  # fmt: skip
        for reason in CHECKPOINT_FAILURE_REASONS:
            self.checkpoint_failures.labels(reason)
        self.rejected = Counter("hearth_reports_rejected", "Reports rejected, by the reason written in the ledger.",
                                ["reason"], registry=self.registry)  # fmt: skip
        for reason in rejection_reasons():  # every series exists from the start, so rate() sees the first one
            self.rejected.labels(reason)
        self.latency = Histogram("hearth_ingest_latency_seconds",
                                 "From a report's arrival at the coordinator to its grant being committed.",
                                 buckets=LATENCY_BUCKETS, registry=self.registry)  # fmt: skip
        self.rate_limited = Counter("hearth_http_rate_limited", "HTTP requests refused with 429 by the per-IP rate limit.",
                                    registry=self.registry)  # fmt: skip
        self.http_errors = Counter("hearth_http_errors", "HTTP answers with an error status (4xx, 5xx), by status.",
                                   ["status"], registry=self.registry)  # fmt: skip
        self._live = _LiveCollector()
        self.registry.register(self._live)

    def count(self, topic: str, outcome: str) -> None:
        """One decided message; presence messages (on status topics, or decided as such) are not reports."""
        parsed = parse_node_topic(topic)
        if outcome in NOT_REPORTS or (parsed is not None and parsed.kind != "report"):
            return
        self.received.inc()
        if outcome == "accepted":
            self.accepted.inc()
        else:
            self.rejected.labels(outcome).inc()

    def exposition(self, nodes_online: Optional[int], monitor: Any) -> bytes:
        """The text exposition, with the scrape-time inputs (synchronous: no other scrape interleaves)."""
        self._live.nodes_online, self._live.monitor = nodes_online, monitor
        return generate_latest(self.registry)


class _LiveCollector:
    """Gauges read at scrape time; a monitor that has read nothing yet (or none at all) yields no swarm samples."""

    def __init__(self) -> None:
        self.nodes_online: Optional[int] = None
        self.monitor: Any = None  # coordinator.monitor.DHTMonitor

    def describe(self) -> list[Metric]:
        return []  # no fixed samples to describe: registration must not collect

    def collect(self) -> Iterator[Metric]:
        online = GaugeMetricFamily("hearth_nodes_online", "Nodes whose latest presence message says online.")
        if self.nodes_online is not None:
            online.add_metric([], float(self.nodes_online))
        yield online
        families = {
            key: GaugeMetricFamily(f"hearth_swarm_{key}", doc, labels=["swarm"])
            for key, doc in (("epoch", "The swarm's epoch (hivemind progress)."),
                             ("samples_per_second", "The swarm's training throughput."),
                             ("peers", "Peers publishing progress in the swarm."))  # fmt: skip
        }
        progress = getattr(self.monitor, "progress", None) or {}
        for swarm_id, snapshot in sorted(dict(progress).items()):
            p = snapshot.progress
            families["epoch"].add_metric([swarm_id], float(p.epoch))
            families["samples_per_second"].add_metric([swarm_id], float(p.samples_per_second))
            families["peers"].add_metric([swarm_id], float(len(p.peers)))
        yield from families.values()
