"""Every MQTT topic Hearth uses. Nodes publish only below their own `nodes/<node_id>/` subtree (reports,
status); the coordinator publishes each node's receipts there too."""

import functools
import re
from dataclasses import dataclass
from typing import Literal

PREFIX = "hearth/v1"
TopicKind = Literal["report", "status"]
_SUFFIX = {"report": "reports", "status": "status"}
_PATTERN = re.compile(r"^hearth/v1/swarms/([a-z0-9][a-z0-9-]{0,62})/nodes/([0-9a-f]{32})/(reports|status)$")

REPORTS_FILTER = f"{PREFIX}/swarms/+/nodes/+/reports"
STATUS_FILTER = f"{PREFIX}/swarms/+/nodes/+/status"


def node_topic(kind: TopicKind, swarm_id: str, node_id: str) -> str:
    return f"{PREFIX}/swarms/{swarm_id}/nodes/{node_id}/{_SUFFIX[kind]}"


def report_topic(swarm_id: str, node_id: str) -> str:
    return node_topic("report", swarm_id, node_id)


def status_topic(swarm_id: str, node_id: str) -> str:
    return node_topic("status", swarm_id, node_id)


def receipt_topic(swarm_id: str, node_id: str) -> str:
    """Retained, written by the coordinator: the highest report sequence number it has processed."""
    return f"{PREFIX}/swarms/{swarm_id}/nodes/{node_id}/receipts"


def audit_topic(swarm_id: str, node_id: str) -> str:
    """Written by the coordinator only: its audit requests to this node (protocol AuditRequest)."""
    return f"{PREFIX}/swarms/{swarm_id}/nodes/{node_id}/audits"


@dataclass(frozen=True)
class NodeTopic:
    kind: TopicKind
    swarm_id: str
    node_id: str


@functools.lru_cache(maxsize=65_536)  # the coordinator parses each node's few topics over and over
def parse_node_topic(topic: str) -> NodeTopic | None:
    match = _PATTERN.match(topic)
    if match is None:
        return None
    swarm_id, node_id, suffix = match.groups()
    kind: TopicKind = "report" if suffix == "reports" else "status"
    return NodeTopic(kind=kind, swarm_id=swarm_id, node_id=node_id)


def shared(topic_filter: str, group: str = "hearth-ingest") -> str:
    """An MQTT 5 shared subscription: the broker spreads matching messages over the group's workers."""
    return f"$share/{group}/{topic_filter}"
