"""A node's task assets, over real HTTP from the coordinator's app: only this node's shards are downloaded, each
checked against its sha256 and cached by digest; a corrupt cached copy is fetched again; a file that does not
match the manifest is refused after one retry and never kept."""

import hashlib

import pytest
import torch

from coordinator.assets import AssetStore, configured_task
from hearth.tasks import TaskContext, load_task
from hearth.tasks.text import generate_text
from node.assets import AssetCache, AssetError, needed
from protocol.messages import SwarmManifest, TaskAsset
from tests.coordinator.live_server import OPERATOR_TOKEN, live_server

OPTIONS = {"layers": 1, "d_model": 32, "heads": 2, "seq_len": 32, "shard_kb": 4, "shards_per_node": 2}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, manifest, the coordinator's asset dir) of a tiny-lm swarm whose 40 KiB text the coordinator split into 4 KiB shards."""
    tmp_path = tmp_path_factory.mktemp("assets")
    with live_server(tmp_path) as client:
        auth = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
        uploaded = client.post("/api/v1/assets", content=generate_text(40 * 1024, seed=5), headers=auth).json()
        body = {"swarm_id": "lm", "task": "tiny-lm", "task_options": OPTIONS, "assets": {"text": uploaded["sha256"]}}
        created = client.post("/api/v1/swarms", json=body, headers=auth, timeout=120)
        assert created.status_code == 201, created.text
        yield str(client.base_url), SwarmManifest.model_validate(created.json()), tmp_path / "assets"


def tiny_lm():
    task = load_task("tiny-lm")
    task.configure(TaskContext(options=OPTIONS))
    return task


def cached(cache_dir) -> list[str]:
    return sorted(path.name for path in cache_dir.iterdir()) if cache_dir.exists() else []


def test_a_node_downloads_only_its_own_shards_and_reuses_its_cache(served, tmp_path):
    base_url, manifest, store_dir = served
    chosen = needed(tiny_lm(), manifest.assets, "node-a")
    assert len(manifest.assets) == 10 and [a.name for a in chosen] == sorted(a.name for a in chosen)
    assert len(chosen) == 2 and all(a.name.startswith("text-0") for a in chosen)  # two shards, not the held-out one
    others = {tuple(a.name for a in needed(tiny_lm(), manifest.assets, f"node-{i}")) for i in range(8)}
    assert len(others) > 1  # nodes spread over the shards
    assert needed(tiny_lm(), manifest.assets, "node-a") == chosen  # the same after a restart

    cache = AssetCache(base_url, tmp_path / "cache")
    paths = cache.fetch_all(chosen)
    assert cache.downloads == 2 and cached(cache.cache_dir) == sorted(a.sha256 for a in chosen)
    for asset in chosen:
        assert hashlib.sha256(paths[asset.name].read_bytes()).hexdigest() == asset.sha256

    again = AssetCache(base_url, tmp_path / "cache")
    assert again.fetch_all(chosen) == paths and again.downloads == 0

    # The task trains on exactly these shards: every window is a piece of them.
    task = tiny_lm()
    task.configure(TaskContext(options=OPTIONS, assets=paths))
    text = b"".join(paths[name].read_bytes() for name in sorted(paths))
    inputs, targets = next(task.data_stream(peer_seed=3, batch_size=4))
    assert inputs.shape == (4, 32) and torch_equal_shifted(inputs, targets)
    assert all(bytes(row.tolist()) in text for row in inputs)

    # The coordinator rebuilds the task as this node runs it (its shards, so its data): e.g. to check its work.
    listed = {"options": OPTIONS, "assets": [asset.model_dump() for asset in manifest.assets]}
    as_node = configured_task("tiny-lm", listed, AssetStore(store_dir), node_id="node-a")
    assert sorted(as_node.assets) == sorted(paths)
    coordinator_inputs, _ = next(as_node.data_stream(peer_seed=3, batch_size=4))
    assert torch.equal(coordinator_inputs, inputs)


def torch_equal_shifted(inputs, targets) -> bool:
    return bool((inputs[:, 1:] == targets[:, :-1]).all())


def test_a_corrupt_cached_copy_is_downloaded_again(served, tmp_path):
    base_url, manifest, _ = served
    asset = manifest.assets[0]
    cache = AssetCache(base_url, tmp_path / "cache")
    path = cache.fetch(asset)
    good = path.read_bytes()
    path.write_bytes(b"X" + good[1:])  # a flipped byte on disk
    fresh = AssetCache(base_url, tmp_path / "cache")
    assert fresh.fetch(asset).read_bytes() == good and fresh.downloads == 1


def test_a_file_that_does_not_match_the_manifest_is_refused_after_a_retry_and_never_kept(served, tmp_path):
    base_url, manifest, _ = served
    real = manifest.assets[0]
    wrong = TaskAsset(name=real.name, url=real.url, sha256="ab" * 32, size=real.size)  # the manifest lies
    cache = AssetCache(base_url, tmp_path / "cache")
    with pytest.raises(AssetError, match=f"does not match its sha256 {'ab' * 32} after 2 downloads"):
        cache.fetch(wrong)
    assert cache.downloads == 2 and cached(cache.cache_dir) == []  # no file under any name, no temporary left

    longer = TaskAsset(name=real.name, url=real.url, sha256=real.sha256, size=real.size - 1)
    with pytest.raises(AssetError, match="does not match"):
        cache.fetch(longer)
    missing = TaskAsset(name="gone", url="/api/v1/assets/" + "0" * 64, sha256="0" * 64, size=1)
    with pytest.raises(AssetError, match="answered 404"):
        cache.fetch(missing)
    assert cached(cache.cache_dir) == []


def test_a_task_that_needs_a_file_the_swarm_lacks_is_refused():
    with pytest.raises(AssetError, match="lists no checkpoint asset, which task lm-finetune needs"):
        needed(load_task("lm-finetune"), [], "node-a")
