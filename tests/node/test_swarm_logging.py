"""hivemind's DHT logs a dropped request from a stopped averager as an ERROR with a traceback; the node keeps it quiet."""

import logging
import sys

from node.swarm import DroppedRequestFilter


def record(function: str, error: BaseException | None) -> logging.LogRecord:
    exc_info = (type(error), error, None) if error else None
    return logging.LogRecord("hivemind.dht.dht", logging.ERROR, "dht.py", 130, str(error), None, exc_info, func=function)


def test_a_request_dropped_by_a_stopped_process_is_not_an_error():
    dropped = DroppedRequestFilter()
    assert not dropped.filter(record("_run", ConnectionResetError(104, "Connection reset by peer")))
    assert not dropped.filter(record("_run", FileNotFoundError(2, "No such file or directory")))


def test_other_records_pass():
    dropped = DroppedRequestFilter()
    assert dropped.filter(record("_run", RuntimeError("something else")))
    assert dropped.filter(record("_run_coroutine", ConnectionResetError(104, "reset")))
    assert dropped.filter(record("_run", None))


def test_the_filter_is_on_hivemind_dht_logger():
    assert any(isinstance(f, DroppedRequestFilter) for f in logging.getLogger("hivemind.dht.dht").filters)
    assert "node.swarm" in sys.modules
