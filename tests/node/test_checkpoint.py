"""node/checkpoint.py against a real HTTP server that plays a coordinator, honest or not: the listing is
validated (a URL to another host, a bad sha256 or epoch is refused), a download must match its sha256 and
epoch, and every failure is one CheckpointUnavailable sentence, never a crash of the join."""

import hashlib
import io
import logging
import json
import threading
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from node.checkpoint import CheckpointUnavailable, CoordinatorCheckpoints

SWARM = "spirals"


def checkpoint_bytes(epoch: int) -> bytes:
    buffer = io.BytesIO()
    torch.save({"epoch": epoch, "model": {"w": torch.ones(2)}, "optimizer": {}, "parameter_names": ["w"]}, buffer)
    return buffer.getvalue()


@pytest.fixture
def coordinator():
    """A real HTTP server; tests set `routes[path] = (status, body bytes)`."""
    routes: dict[str, tuple[int, bytes]] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            status, body = routes.get(self.path, (404, b'{"error": {"code": "not_found", "message": "not found"}}'))
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", routes
    finally:
        server.shutdown()
        server.server_close()


def listing(*entries: dict) -> tuple[int, bytes]:
    return 200, json.dumps({"swarm_id": SWARM, "checkpoints": list(entries)}).encode()


def entry(epoch: int, content: bytes, **overrides) -> dict:
    return {"epoch": epoch, "sha256": hashlib.sha256(content).hexdigest(), "size": len(content),
            "url": f"/api/v1/swarms/{SWARM}/checkpoints/{epoch}", **overrides}  # fmt: skip


def test_the_newest_listed_checkpoint_is_downloaded_and_verified(coordinator, tmp_path):
    url, routes = coordinator
    old, new = checkpoint_bytes(3), checkpoint_bytes(7)
    routes[f"/api/v1/swarms/{SWARM}/checkpoints"] = listing(entry(7, new), entry(3, old))
    routes[f"/api/v1/swarms/{SWARM}/checkpoints/7"] = (200, new)
    checkpoints = CoordinatorCheckpoints(url, SWARM, tmp_path)
    latest = checkpoints.latest()
    assert latest["epoch"] == 7
    loaded = checkpoints.download(latest)
    assert loaded["epoch"] == 7 and torch.equal(loaded["model"]["w"], torch.ones(2))
    assert list(tmp_path.iterdir()) == []  # the temporary file is gone


def test_no_checkpoint_or_no_checkpointing_coordinator_means_none(coordinator, tmp_path):
    url, routes = coordinator
    checkpoints = CoordinatorCheckpoints(url, SWARM, tmp_path)
    routes[f"/api/v1/swarms/{SWARM}/checkpoints"] = listing()
    assert checkpoints.latest() is None
    routes[f"/api/v1/swarms/{SWARM}/checkpoints"] = (503, b'{"error": {"code": "checkpoints_unavailable"}}')
    assert checkpoints.latest() is None


@pytest.mark.parametrize("bad", [
    {"url": "@evil.example.org/x.pt"}, {"url": "/api/v1/swarms/other/checkpoints/7"}, {"sha256": "abc"},
    {"epoch": "seven"}, {"epoch": None},
])  # fmt: skip
def test_a_malformed_listing_is_refused(coordinator, tmp_path, bad):
    url, routes = coordinator
    routes[f"/api/v1/swarms/{SWARM}/checkpoints"] = listing({**entry(7, b"x"), **bad})
    with pytest.raises(CheckpointUnavailable, match="malformed checkpoint listing"):
        CoordinatorCheckpoints(url, SWARM, tmp_path).latest()


def test_a_download_must_match_its_sha256_and_epoch(coordinator, tmp_path):
    url, routes = coordinator
    checkpoints = CoordinatorCheckpoints(url, SWARM, tmp_path)
    good = checkpoint_bytes(7)
    routes[f"/api/v1/swarms/{SWARM}/checkpoints/7"] = (200, good[:-1] + b"!")
    with pytest.raises(CheckpointUnavailable, match="sha256 mismatch"):
        checkpoints.download(entry(7, good))
    other_epoch = checkpoint_bytes(6)
    routes[f"/api/v1/swarms/{SWARM}/checkpoints/7"] = (200, other_epoch)
    with pytest.raises(CheckpointUnavailable, match="not the listed epoch"):
        checkpoints.download(entry(7, other_epoch))
    routes[f"/api/v1/swarms/{SWARM}/checkpoints/7"] = (200, b"not a torch file")
    with pytest.raises(CheckpointUnavailable, match="cannot read"):
        checkpoints.download(entry(7, b"not a torch file"))
    del routes[f"/api/v1/swarms/{SWARM}/checkpoints/7"]
    with pytest.raises(CheckpointUnavailable, match="HTTP 404"):
        checkpoints.download(entry(7, good))


def test_an_unreachable_coordinator_is_one_sentence(tmp_path):
    with pytest.raises(CheckpointUnavailable, match="cannot reach the coordinator"):
        CoordinatorCheckpoints("http://127.0.0.1:1", SWARM, tmp_path).latest()


def test_the_join_goes_on_from_its_own_state_when_no_checkpoint_is_newer_or_usable(coordinator, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="node.checkpoint")
    url, routes = coordinator
    at_epoch_9 = types.SimpleNamespace(local_epoch=9)  # all that is read of hivemind's Optimizer before a download
    routes[f"/api/v1/swarms/{SWARM}/checkpoints"] = listing(entry(7, checkpoint_bytes(7)))
    assert CoordinatorCheckpoints(url, SWARM, tmp_path)(at_epoch_9) is False
    assert "no checkpoint past epoch 9: training from epoch 9" in caplog.text
    assert CoordinatorCheckpoints("http://127.0.0.1:1", SWARM, tmp_path)(at_epoch_9) is False
    assert "checkpoint is unusable (cannot reach the coordinator" in caplog.text
