"""The CUDA path in a real swarm: one node trains on the GPU (bf16 autocast where the GPU supports it), one on the
CPU; they average their rounds together and end with equal parameters. Skipped where CUDA is absent.
Run with -s to see each node's device, batch and samples/s."""

import json

import pytest
import torch

from hearth.processes import group_members, leftovers_reported

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.swarm,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is false)"),
]

EPOCHS = 2
DEVICES = {"gpu-node": "cuda", "cpu-node": "cpu"}


def test_a_cuda_node_and_a_cpu_node_train_together(coordinator, swarm, nodes):
    for name, device in DEVICES.items():
        nodes.start(coordinator.url, name, "--swarm", swarm["swarm_id"], "--min-peers", "2",
                    "--max-epochs", str(EPOCHS), "--device", device)  # fmt: skip
    for name, process in nodes.processes.items():
        assert process.wait(timeout=240) == 0, nodes.log(name)
        assert group_members(process.pid) == [], f"{name} left hivemind processes behind"
        assert leftovers_reported(nodes.log(name)) == 0, nodes.log(name)

    summaries = {name: json.loads((nodes.data_dir(name) / "last-run.json").read_text()) for name in DEVICES}
    assert summaries["gpu-node"]["resources"]["device"].startswith("cuda:")
    assert summaries["cpu-node"]["resources"]["device"] == "cpu" and summaries["cpu-node"]["resources"]["amp"] == "off"
    for name, summary in summaries.items():
        resources = summary["resources"]
        print(f"\n{name}: {resources['device']}, batch {resources['batch_size']}, amp {resources['amp']}: "
              f"{summary['samples_per_second']:,.0f} samples/s, {summary['samples']:,} samples in {summary['epoch']} epochs")  # fmt: skip
        assert summary["epoch"] >= EPOCHS and summary["samples"] > 0
        averaged = {int(epoch): size for epoch, size in summary["group_sizes"].items()}
        assert any(size == 2 for size in averaged.values()), averaged

    final = [torch.load(nodes.data_dir(name) / "swarms" / swarm["swarm_id"] / "model.pt", map_location="cpu")
             for name in DEVICES]  # fmt: skip
    assert final[0]["epoch"] == final[1]["epoch"] >= EPOCHS
    for key, tensor in final[0]["model"].items():
        assert torch.allclose(tensor, final[1]["model"][key], atol=1e-5, rtol=0), key
