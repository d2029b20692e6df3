"""Prometheus /metrics for the running node, off unless `metrics_port` is set; served on 127.0.0.1 only.

A custom collector reads the controller's status dict at scrape time, so the metrics never disagree with
`hearth node status` and no state is kept twice. Every metric carries the labels `swarm` and `device`.
"""

import logging
from typing import Any, Callable, Iterator, Optional

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"  # never all interfaces: the numbers describe this PC and its owner
LABELS = ["swarm", "device"]
StatusSource = Callable[[], dict[str, Any]]


class MetricsError(RuntimeError):
    """The metrics server could not start; the message is for the volunteer."""


class NodeCollector:
    """A prometheus_client collector over a status source (the controller's `status`)."""

    def __init__(self, status: StatusSource):
        self.status = status

    def collect(self) -> Iterator[Metric]:
        status = self.status()
        training, reporting, credit = status.get("training", {}), status.get("reporting", {}), status.get("credit", {})
        labels = [str(status.get("swarm") or ""), str(status.get("device") or "")]

        def gauge(name: str, doc: str, value: Optional[float]) -> Metric:
            family = GaugeMetricFamily(name, doc, labels=LABELS)
            if value is not None:  # unknown (e.g. credit not fetched yet): no sample rather than a false 0
                family.add_metric(labels, float(value))
            return family

        def counter(name: str, doc: str, value: float) -> Metric:
            family = CounterMetricFamily(name, doc, labels=LABELS)
            family.add_metric(labels, float(value))
            return family

        yield gauge("hearth_node_epoch", "The swarm's epoch as this node last saw it.", training.get("epoch", 0))
        yield counter("hearth_node_samples", "Samples this node contributed to completed epochs in this run.",
                      training.get("samples_total", 0))  # fmt: skip
        yield gauge("hearth_node_samples_per_second", "Training throughput (0 while paused).",
                    training.get("samples_per_second", 0.0))  # fmt: skip
        reason = status.get("pause_reason")
        paused = GaugeMetricFamily("hearth_node_paused", "1 while the node does not compute; `reason` says why.",
                                   labels=LABELS + ["reason"])  # fmt: skip
        paused.add_metric(labels + [reason or ""], 1.0 if reason else 0.0)
        yield paused
        yield gauge("hearth_node_last_group_size", "Peers that averaged the last epoch this node contributed to.",
                    training.get("last_group_size", 0))  # fmt: skip
        yield gauge("hearth_node_reports_waiting", "Reports in the outbox without the coordinator's receipt.",
                    reporting.get("reports_waiting", 0))  # fmt: skip
        yield counter("hearth_node_reports_acknowledged", "Reports the coordinator receipted in this run.",
                      reporting.get("reports_acknowledged", 0))  # fmt: skip
        yield gauge("hearth_node_credit_granted", "The volunteer's total credit granted by the coordinator.",
                    credit.get("granted"))  # fmt: skip
        yield gauge("hearth_node_credit_pending_estimate", "Estimated credit of the reports awaiting a receipt.",
                    credit.get("pending_estimate"))  # fmt: skip
        yield counter("hearth_node_state_downloads", "Times this node downloaded the swarm's state from peers.",
                      training.get("state_downloads", 0))  # fmt: skip
        yield counter("hearth_node_digest_reloads", "State reloads because this node's parameters differed from "
                      "the majority of its epoch's peers.", training.get("digest_reloads", 0))  # fmt: skip


class MetricsServer:
    """Serves the collector over HTTP on its own daemon thread from construction until stop()."""

    def __init__(self, status: StatusSource, port: int = 0):
        registry = CollectorRegistry(auto_describe=False)
        registry.register(NodeCollector(status))
        try:
            self._server, self._thread = start_http_server(port, addr=HOST, registry=registry)
        except OSError as e:
            raise MetricsError(f"cannot serve metrics on {HOST}:{port} ({e.strerror or e}); "
                               "choose another --metrics-port, or 0 for any free port") from None  # fmt: skip
        self.port: int = self._server.server_port
        self.url = f"http://{HOST}:{self.port}/metrics"
        logger.info("Prometheus metrics at %s", self.url)

    @classmethod
    def serve(cls, port: Optional[int], status: StatusSource) -> Optional["MetricsServer"]:
        """A running server, or None when metrics are off (port None)."""
        return None if port is None else cls(status, port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)
