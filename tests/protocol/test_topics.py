from protocol.topics import REPORTS_FILTER, parse_node_topic, report_topic, shared, status_topic

NODE = "0123456789abcdef0123456789abcdef"


def test_topics_round_trip():
    parsed = parse_node_topic(report_topic("spirals", NODE))
    assert (parsed.kind, parsed.swarm_id, parsed.node_id) == ("report", "spirals", NODE)
    assert parse_node_topic(status_topic("s-2", NODE)).kind == "status"


def test_foreign_topics_do_not_parse():
    for topic in ["hearth/v1/swarms/spirals/nodes/xyz/reports", "other/topic", report_topic("spirals", NODE) + "/x",
                  "hearth/v1/swarms/UPPER/nodes/" + NODE + "/reports"]:  # fmt: skip
        assert parse_node_topic(topic) is None


def test_shared_subscription():
    assert shared(REPORTS_FILTER) == "$share/hearth-ingest/hearth/v1/swarms/+/nodes/+/reports"
