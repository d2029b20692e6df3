"""Swarm checkpoints on disk (coordinator/checkpoints.py): atomic save, sha256 sidecars, pruning to the last K;
the scheduler's decisions and failure counting; the list/download routes in-process over a real SQLite ledger.
The download from real peers is covered by tests/integration/test_checkpoints.py."""

import asyncio
import hashlib
import os
import types

import httpx
import pytest
import torch

from coordinator.api import Services
from coordinator.app import create_app
from coordinator.checkpoints import CheckpointScheduler, CheckpointStore
from coordinator.metrics import CoordinatorMetrics
from coordinator.monitor import ProgressSnapshot
from coordinator.swarm_state import CHECKPOINT_FORMAT, build_checkpoint
from hearth.progress import PeerProgress, SwarmProgress
from hearth.tasks import load_task
from tests.coordinator.helpers import SWARM, make_ledger
from tests.coordinator.test_api import assert_error


def checkpoint(epoch: int, **extra) -> dict:
    return {"epoch": epoch, "model": {"w": torch.full((3,), float(epoch))}, **extra}


def test_save_writes_file_and_sha256_sidecar_atomically(tmp_path):
    store = CheckpointStore(tmp_path, keep=5)
    info = store.save("spirals", checkpoint(3))
    assert info.epoch == 3 and info.path == tmp_path / "spirals" / "epoch-3.pt"
    assert info.sha256 == hashlib.sha256(info.path.read_bytes()).hexdigest() and info.size == info.path.stat().st_size
    assert (tmp_path / "spirals" / "epoch-3.pt.sha256").read_text() == f"{info.sha256}  epoch-3.pt\n"
    assert torch.equal(torch.load(info.path, weights_only=True)["model"]["w"], torch.full((3,), 3.0))
    assert sorted(p.name for p in (tmp_path / "spirals").iterdir()) == ["epoch-3.pt", "epoch-3.pt.sha256"]


def test_a_failed_save_leaves_earlier_checkpoints_and_no_partial_file(tmp_path):
    store = CheckpointStore(tmp_path, keep=5)
    first = store.save("spirals", checkpoint(1))
    with pytest.raises(Exception):
        store.save("spirals", checkpoint(2, broken=lambda: None))  # torch.save cannot pickle a lambda
    assert [info.epoch for info in store.listing("spirals")] == [1]
    assert sorted(p.name for p in (tmp_path / "spirals").iterdir()) == ["epoch-1.pt", "epoch-1.pt.sha256"]
    assert store.latest("spirals").sha256 == first.sha256


def test_prune_keeps_the_last_k_and_removes_dead_writers_leftovers(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    directory = tmp_path / "spirals"
    directory.mkdir()
    (directory / ".epoch-9.pt.999999.tmp").write_bytes(b"half written by a process that died")
    for epoch in (1, 2, 10, 3):
        store.save("spirals", checkpoint(epoch))
    assert [info.epoch for info in store.listing("spirals")] == [3, 10]  # by epoch, not by order of saving
    assert sorted(p.name for p in directory.iterdir()) == ["epoch-10.pt", "epoch-10.pt.sha256", "epoch-3.pt",
                                                           "epoch-3.pt.sha256"]  # fmt: skip


def test_a_file_without_its_sidecar_is_not_listed(tmp_path):
    store = CheckpointStore(tmp_path, keep=5)
    store.save("spirals", checkpoint(1))
    (tmp_path / "spirals" / "epoch-2.pt").write_bytes(b"no sidecar")
    assert [info.epoch for info in store.listing("spirals")] == [1]
    assert store.get("spirals", 2) is None and store.listing("other") == []


def hivemind_state(epoch: int) -> tuple[dict, list[torch.Tensor]]:
    """A node's state as hivemind's TrainingStateAverager serves it: parameters, then optimizer tensors."""
    from hivemind.optim.state_averager import dump_optimizer_state

    task = load_task("spirals")
    model = task.build_model()
    optimizer = task.make_optimizer(model.parameters(), 2e-3)
    task.make_scheduler(optimizer, warmup_epochs=0)  # as on a node: its param groups carry "initial_lr"
    generator = torch.Generator().manual_seed(epoch)
    for param in model.parameters():
        param.grad = torch.randn(param.shape, generator=generator)
    optimizer.step()
    optimizer_metadata, optimizer_tensors = dump_optimizer_state(optimizer)
    params = [param.detach().clone() for param in model.parameters()]
    return {"epoch": epoch, "optimizer_metadata": optimizer_metadata}, params + optimizer_tensors


class Peers:
    """What the scheduler reads of the DHT monitor: the latest progress per swarm."""

    def __init__(self, epoch: int, peers: int = 1):
        peer = PeerProgress(peer_id="QmPeer", epoch=epoch, samples_accumulated=0, samples_per_second=100.0,
                            time=0.0, client_mode=False)  # fmt: skip
        self.progress = {"spirals": ProgressSnapshot(SwarmProgress(epoch, [peer] * peers), 0.0)}


class Downloads:
    """Stands in for the hivemind download (tests/integration/test_checkpoints.py runs the real one)."""

    def __init__(self, *answers):
        self.answers, self.calls = list(answers), 0

    async def download(self, run_id: str, timeout: float):
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def close(self) -> None:
        pass


def failures(metrics: CoordinatorMetrics, reason: str) -> float:
    return metrics.registry.get_sample_value("hearth_checkpoint_failures_total", {"reason": reason})


def test_scheduler_saves_when_the_epoch_advanced_and_counts_failures_without_raising(tmp_path):
    async def scenario():
        ledger = await make_ledger(tmp_path)
        store, metrics = CheckpointStore(tmp_path / "checkpoints", keep=5), CoordinatorMetrics()
        downloads = Downloads(TimeoutError("no answer"), None, hivemind_state(4), hivemind_state(4))
        scheduler = CheckpointScheduler(store, ledger.engine, Peers(epoch=4), 60, metrics, downloader=downloads)
        assert await scheduler.run_once() == [] and failures(metrics, "timeout") == 1
        assert await scheduler.run_once() == [] and failures(metrics, "no_state") == 1
        [saved] = await scheduler.run_once()
        assert saved.epoch == 4 and metrics.registry.get_sample_value("hearth_checkpoints_saved_total") == 1
        assert await scheduler.run_once() == [] and downloads.calls == 3  # epoch 4 already saved: not asked again
        scheduler.monitor = Peers(epoch=0, peers=0)
        assert await scheduler.run_once() == [] and downloads.calls == 3  # nobody online
        await ledger.engine.dispose()
        return saved

    saved = asyncio.run(scenario())
    loaded = torch.load(saved.path, weights_only=True)
    state = hivemind_state(4)
    assert loaded["format"] == CHECKPOINT_FORMAT and loaded["epoch"] == 4 and loaded["swarm_id"] == "spirals"
    for name, tensor in zip(loaded["parameter_names"], state[1]):
        assert torch.equal(loaded["model"][name], tensor), name
    assert set(loaded["optimizer"]["state"][0]) >= {"exp_avg", "exp_avg_sq", "step"}
    group = loaded["optimizer"]["param_groups"][0]  # every setting in its place, none shifted onto another
    assert (group["lr"], group["initial_lr"], group["weight_decay"], group["maximize"]) == (2e-3, 2e-3, 0, False)
    task = load_task("spirals")
    model = task.build_model()
    model.load_state_dict(loaded["model"])
    with torch.no_grad():
        expected = task.evaluate(model.eval())
    assert loaded["evaluation"] == pytest.approx(expected) and set(expected) == {"loss", "accuracy"}
    assert saved.evaluation == pytest.approx(expected)  # from the .eval.json sidecar, without loading the file


def test_the_evaluation_sidecar_is_listed_and_pruned_with_its_checkpoint(tmp_path):
    store = CheckpointStore(tmp_path, keep=1)
    first = store.save("spirals", checkpoint(1, evaluation={"accuracy": 0.5}))
    assert first.evaluation == {"accuracy": 0.5} and store.save("spirals", checkpoint(2)).evaluation is None
    assert sorted(p.name for p in (tmp_path / "spirals").iterdir()) == ["epoch-2.pt", "epoch-2.pt.sha256"]


def test_a_state_that_does_not_fit_the_task_is_refused(tmp_path):
    metadata, tensors = hivemind_state(2)
    row = types.SimpleNamespace(**SWARM)
    with pytest.raises(ValueError, match="shape"):
        build_checkpoint(row, metadata, [torch.zeros(2, 2)] + tensors[1:])
    with pytest.raises(ValueError, match="tensors"):
        build_checkpoint(row, metadata, tensors[:2])


def test_routes_list_and_download_with_the_error_shape(tmp_path):
    store = CheckpointStore(tmp_path / "checkpoints", keep=5)
    infos = [store.save("spirals", checkpoint(epoch, evaluation={"accuracy": epoch / 10})) for epoch in (2, 5)]

    async def scenario():
        ledger = await make_ledger(tmp_path)
        app = create_app(Services(ledger, "mqtt://127.0.0.1:1883", "token"))
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert_error(await client.get("/api/v1/swarms/spirals/checkpoints"), 503, "checkpoints_unavailable")
            app.state.checkpoints = store
            listing = (await client.get("/api/v1/swarms/spirals/checkpoints")).json()
            page = (await client.get("/swarms/spirals")).text
            latest = await client.get("/api/v1/swarms/spirals/checkpoints/latest")
            second = await client.get("/api/v1/swarms/spirals/checkpoints/2")
            errors = [
                (await client.get("/api/v1/swarms/nope/checkpoints"), 404, "unknown_swarm"),
                (await client.get("/api/v1/swarms/Not..AnId/checkpoints/1"), 404, "unknown_swarm"),
                (await client.get("/api/v1/swarms/..%2F..%2Fetc/checkpoints/1"), 404, "not_found"),
                (await client.get("/api/v1/swarms/spirals/checkpoints/3"), 404, "unknown_checkpoint"),
                (await client.get("/api/v1/swarms/spirals/checkpoints/-1"), 400, "invalid_epoch"),
                (await client.get("/api/v1/swarms/spirals/checkpoints/" + "9" * 40), 400, "invalid_epoch"),
            ]
        await ledger.engine.dispose()
        return listing, latest, second, errors, page

    listing, latest, second, errors, page = asyncio.run(scenario())
    assert "Held-out evaluation of the epoch 5 model" in page and "<strong>accuracy</strong> 0.5" in page
    assert [c["epoch"] for c in listing["checkpoints"]] == [5, 2] and listing["keep"] == 5
    newest = listing["checkpoints"][0]
    assert newest["sha256"] == infos[1].sha256 and newest["size"] == infos[1].size
    assert newest["url"] == "/api/v1/swarms/spirals/checkpoints/5" and newest["time"].endswith("+00:00")
    assert newest["evaluation"] == {"accuracy": 0.5}
    assert latest.status_code == 200 and latest.content == infos[1].path.read_bytes()
    assert latest.headers["x-checkpoint-sha256"] == infos[1].sha256 and latest.headers["x-checkpoint-epoch"] == "5"
    assert hashlib.sha256(second.content).hexdigest() == infos[0].sha256
    for response, status, code in errors:
        assert_error(response, status, code)
    assert not os.path.exists(tmp_path / "etc")


def test_a_download_from_a_swarm_without_peers_finds_no_state():
    from hivemind.dht import DHT

    from coordinator.swarm_state import StateDownloader

    dht = DHT(start=True)

    async def scenario():
        downloader = StateDownloader(dht)
        try:
            return await downloader.download("hearth-nobody-00000000", timeout=20)
        finally:
            await downloader.close()

    try:
        assert asyncio.run(scenario()) is None
    finally:
        dht.shutdown()
