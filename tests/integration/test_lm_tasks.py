"""tiny-lm and lm-finetune in a real 2-peer swarm: the operator names files with `hearth swarm create --asset`,
the coordinator serves them, each node downloads only what it needs (its own text shards), both peers average
every epoch, and the coordinator's checkpoints of the swarm are evaluated on the held-out text. In the
fine-tuned swarm the frozen layers stay exactly the pretrained ones."""

import io
import json

import pytest
import torch

from hearth.processes import stop_groups, wait_until
from hearth.tasks import TaskContext, load_task
from hearth.tasks.finetune import pretrain
from hearth.tasks.text import generate_text
from hearth.tasks.tiny_lm import LMConfig
from tests.conftest import CoordinatorProcess, run_hearth

pytestmark = [pytest.mark.swarm, pytest.mark.timeout(900)]  # ~1 min each on a quiet 2-core machine, 5+ when loaded

SHAPE = {"layers": 2, "d_model": 64, "heads": 2, "seq_len": 64}
STOP_TIMEOUT = 120  # a stop waits for the current batch and an averaging round already under way
CHECKPOINT_EPOCH = 2  # the nodes train until the coordinator holds a checkpoint of at least this epoch


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    process = CoordinatorProcess(tmp_path_factory.mktemp("lm") / "coordinator", "--checkpoint-every", "1")
    try:
        yield process
    finally:
        process.stop()


def create(coordinator, swarm_id: str, *args: str) -> dict:
    result = run_hearth("swarm", "create", swarm_id, *args, "--batch-size", "16", "--target-batch-size", "512",
                        "--learning-rate", "0.003",
                        "--matchmaking-time", "1", "--coordinator", coordinator.url,
                        "--token-file", str(coordinator.data_dir / "operator-token"), timeout=180)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return coordinator.get(f"/api/v1/swarms/{swarm_id}")


def train_until_checkpoint(coordinator, nodes, monkeypatch, tmp_path, swarm_id: str, names: tuple[str, str]) -> dict:
    """Two volunteers train together (each with a cache dir of its own) until the coordinator took a checkpoint of
    epoch ≥ CHECKPOINT_EPOCH; then they stop. Returns that checkpoint, loaded."""
    for name in names:
        monkeypatch.setenv("HEARTH_CACHE_DIR", str(tmp_path / f"cache-{name}"))
        nodes.start(coordinator.url, name, "--swarm", swarm_id, "--min-peers", "2")

    def checkpoint():
        for name, process in nodes.processes.items():
            assert process.poll() is None, nodes.log(name)
        listing = coordinator.get(f"/api/v1/swarms/{swarm_id}/checkpoints")["checkpoints"]
        return listing and listing[0]["epoch"] >= CHECKPOINT_EPOCH and listing[0]

    try:
        newest = wait_until(checkpoint, 600, what=f"a checkpoint of epoch {CHECKPOINT_EPOCH}")
    except TimeoutError as e:
        logs = "\n".join(f"--- {name}:\n{nodes.log(name)[-3000:]}" for name in names)
        raise AssertionError(f"{e}\n{logs}\n--- coordinator:\n{coordinator.log_path.read_text()[-3000:]}") from None
    # both at once, like Ctrl+C: neither waits alone for the other's round
    stopped = stop_groups(list(nodes.processes.values()), grace=STOP_TIMEOUT)
    for name, outcome in zip(nodes.processes, stopped):
        assert outcome == (0, 0), nodes.log(name)
        summary = json.loads((nodes.data_dir(name) / "last-run.json").read_text())
        averaged = {int(epoch): size for epoch, size in summary["group_sizes"].items()}
        together = range(1, newest["epoch"])  # epochs closed while both trained (the last may close alone as they stop)
        assert all(averaged.get(epoch) == 2 for epoch in together), (name, averaged)
    content = coordinator.api.get(newest["url"]).content
    saved = torch.load(io.BytesIO(content), weights_only=True)
    assert saved["evaluation"] == newest["evaluation"]
    return saved


def cached(tmp_path, name: str) -> set[str]:
    return {path.name for path in (tmp_path / f"cache-{name}" / "assets").iterdir() if not path.name.startswith(".")}


def test_tiny_lm_trains_on_served_shards_each_node_downloading_only_its_own(coordinator, nodes, monkeypatch, tmp_path):
    (tmp_path / "corpus.txt").write_bytes(generate_text(96 * 1024, seed=11))
    options = [arg for key, value in {**SHAPE, "shard_kb": 8, "shards_per_node": 2}.items()
               for arg in ("--task-option", f"{key}={value}")]  # fmt: skip
    manifest = create(coordinator, "lm", "--task", "tiny-lm", "--asset", f"text={tmp_path / 'corpus.txt'}", *options)
    shards = {a["name"]: a["sha256"] for a in manifest["assets"]}
    assert len(shards) == 12 and "text-heldout" in shards

    checkpoint = train_until_checkpoint(coordinator, nodes, monkeypatch, tmp_path, "lm", ("alice", "bob"))
    for name in ("alice", "bob"):
        mine = cached(tmp_path, name)
        assert len(mine) == 2 and mine <= set(shards.values()) - {shards["text-heldout"]}, (name, mine)

    # Held-out bits per byte fell from the initial model's (evaluated here on the same held-out shard).
    held_out = tmp_path / "heldout"
    held_out.write_bytes(coordinator.api.get(next(a["url"] for a in manifest["assets"] if a["name"] == "text-heldout")).content)
    task = load_task("tiny-lm")
    task.configure(TaskContext(options=SHAPE, assets={"text-heldout": held_out}))
    initial = task.evaluate(task.build_model())["bits_per_byte"]
    assert checkpoint["evaluation"]["bits_per_byte"] < initial - 0.3, (checkpoint["evaluation"], initial)


def test_lm_finetune_starts_from_the_operators_checkpoint_and_keeps_its_frozen_layers(coordinator, nodes, monkeypatch,
                                                                                      tmp_path):  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the nodes have the other core
    try:  # a short pretraining: what matters here is that the swarm starts from these exact weights
        pretrained = pretrain(10, LMConfig(**SHAPE), batch_size=16, text_bytes=16 * 1024)
    finally:
        torch.set_num_threads(threads)
    torch.save(pretrained, tmp_path / "pretrained.pt")
    create(coordinator, "ft", "--task", "lm-finetune", "--asset", f"checkpoint={tmp_path / 'pretrained.pt'}")

    checkpoint = train_until_checkpoint(coordinator, nodes, monkeypatch, tmp_path, "ft", ("carol", "dave"))
    model = checkpoint["model"]
    frozen = [name for name in model if name.startswith(("embed", "position", "blocks.0."))]
    assert frozen and all(torch.equal(model[name], pretrained["model"][name]) for name in frozen)
    assert not torch.equal(model["blocks.1.qkv.weight"], pretrained["model"]["blocks.1.qkv.weight"])
    assert not set(frozen) & set(checkpoint["parameter_names"])  # never averaged, never in the optimizer

    task = load_task("lm-finetune")
    task.configure(TaskContext(assets={"checkpoint": tmp_path / "pretrained.pt"}))
    before = task.evaluate(task.build_model())["loss"]
    assert checkpoint["evaluation"]["loss"] < before, (checkpoint["evaluation"], before)
