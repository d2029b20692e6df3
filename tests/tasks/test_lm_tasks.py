"""The language-model tasks: text shards, options, FLOPs counted (attention included), and transfer learning from
a pretrained checkpoint with frozen layers."""

import math

import pytest
import torch

from hearth.tasks import TaskContext, load_task, measure_flops_per_sample
from hearth.tasks.finetune import pretrain
from hearth.tasks.text import generate_text, split_text
from hearth.tasks.tiny_lm import LMConfig

SMALL = {"layers": 2, "d_model": 32, "heads": 2, "seq_len": 32}


# Models this small run fastest on one thread (a node trains with --threads 1 here too).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def configured(name: str, **options):
    task = load_task(name)
    task.configure(TaskContext(options=options))
    return task


def test_a_text_is_cut_into_shards_and_a_held_out_end(tmp_path):
    text = generate_text(50_000, seed=1)
    assert generate_text(50_000, seed=1) == text != generate_text(50_000, seed=2)
    (tmp_path / "corpus.txt").write_bytes(text)
    parts = split_text(tmp_path / "corpus.txt", tmp_path / "out", "text", 16 * 1024)
    assert [name for name, _ in parts] == ["text-0000", "text-0001", "text-0002", "text-heldout"]
    contents = [path.read_bytes() for _, path in parts]
    assert b"".join(contents) == text and len(contents[-1]) == 5000 and len(contents[0]) == 16 * 1024
    (tmp_path / "short.txt").write_bytes(b"too short")
    with pytest.raises(ValueError, match="at least 2 KiB"):
        split_text(tmp_path / "short.txt", tmp_path / "out2", "text", 1024)


@pytest.mark.parametrize("options, message", [
    ({"d_model": 30, "heads": 4}, "must be a multiple of heads"),
    ({"layers": 0}, "layers must be a whole number"),
    ({"seq_len": "long"}, "seq_len must be a whole number"),
    ({"shards_per_node": 0}, "shards_per_node must be a positive"),
    ({"lexicon": "poetry"}, "lexicon must be general or kitchen"),
    ({"depth": 3}, "has no option(s) depth"),
])  # fmt: skip
def test_wrong_options_are_refused_with_the_reason(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        configured("tiny-lm", **options)


def test_the_default_model_has_about_ten_million_parameters_and_options_shrink_it():
    default = sum(p.numel() for p in load_task("tiny-lm").build_model().parameters())
    small = sum(p.numel() for p in configured("tiny-lm", **SMALL).build_model().parameters())
    assert 9e6 < default < 12e6 and small < 50_000


def test_flops_per_sample_count_every_matmul_attention_included():
    task = configured("tiny-lm", **SMALL)
    d, t, layers = SMALL["d_model"], SMALL["seq_len"], SMALL["layers"]
    linear = layers * (3 * d * d + d * d + 8 * d * d) + 256 * d  # qkv, proj, mlp; the tied output layer
    attention = layers * 2 * t * t * d  # q·kᵀ and scores·v, multiply-adds per sample
    expected = 3 * 2 * (linear * t + attention)  # forward + backward (2× forward), 2 FLOPs per multiply-add
    assert measure_flops_per_sample(task, batch_size=4) == expected


def test_nodes_pick_a_few_shards_by_seed_and_never_the_held_out_one():
    task = configured("tiny-lm", shards_per_node=3)
    names = [f"text-{i:04d}" for i in range(10)] + ["text-heldout", "readme"]
    picks = {seed: task.assets_needed(names, seed) for seed in range(20)}
    assert all(len(p) == 4 and "readme" in p and "text-heldout" not in p for p in picks.values())
    assert task.assets_needed(names, 7) == picks[7] and len({tuple(p) for p in picks.values()}) > 5


def test_fine_tuning_starts_from_the_pretrained_model_trains_only_its_top_and_beats_training_from_scratch(tmp_path):
    torch.manual_seed(0)
    pretrained = pretrain(60, LMConfig(**SMALL), batch_size=16, text_bytes=64 * 1024)
    torch.save(pretrained, tmp_path / "pretrained.pt")
    # A tiny-lm swarm's own checkpoint works as well: the model's shape is in its state.
    torch.save({"format": "hearth-checkpoint-1", "task": "tiny-lm", "model": pretrained["model"]}, tmp_path / "swarm.pt")
    torch.save({"weights": [1, 2]}, tmp_path / "other.pt")

    for file in ("pretrained.pt", "swarm.pt"):
        task = load_task("lm-finetune")
        task.configure(TaskContext(assets={"checkpoint": tmp_path / file}))
        model = task.build_model()
        assert all(torch.equal(model.state_dict()[k], v) for k, v in pretrained["model"].items())
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {name for name, _ in model.named_parameters() if name.startswith(("embed", "position", "blocks.0."))}
    optimizer = task.make_optimizer(model.parameters(), 1e-3)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert [p for group in optimizer.param_groups for p in group["params"]] == trainable
    grouped = task.make_optimizer([{"params": list(model.parameters())}], 1e-3)  # as hivemind calls it
    assert grouped.param_groups[0]["params"] == trainable

    bad = load_task("lm-finetune")
    with pytest.raises(ValueError, match="not a tiny-lm model"):
        bad.configure(TaskContext(assets={"checkpoint": tmp_path / "other.pt"}))
    with pytest.raises(ValueError, match="freeze=5, but the model has 2 blocks"):
        bad.configure(TaskContext(options={"freeze": 5}, assets={"checkpoint": tmp_path / "pretrained.pt"}))

    scratch = configured("tiny-lm", lexicon="kitchen", **SMALL)
    scratch_model = scratch.build_model()
    start, scratch_start = task.evaluate(model)["loss"], scratch.evaluate(scratch_model)["loss"]
    assert start < scratch_start - 1.0  # the shared syntax transfers to the new words
    for t, m in ((task, model), (scratch, scratch_model)):
        opt, data = t.make_optimizer(m.parameters(), 2e-3), t.data_stream(peer_seed=1, batch_size=16)
        for _ in range(20):
            opt.zero_grad()
            t.loss(m, next(data)).backward()
            opt.step()
    tuned, from_scratch = task.evaluate(model), scratch.evaluate(scratch_model)
    assert tuned["loss"] < start and tuned["loss"] < from_scratch["loss"]
    assert tuned["bits_per_byte"] == pytest.approx(tuned["loss"] / math.log(2))
    assert all(torch.equal(model.state_dict()[k], pretrained["model"][k]) for k in ("embed.weight", "blocks.0.qkv.weight"))
