"""`spirals`: classify points of five interleaved spiral arms. Generated data, learns in about a minute on a CPU.

The model maps each 2-D point through fixed random Fourier features (a seeded buffer, equal on every peer)
into a 3-layer MLP of ~0.66M parameters: big enough that an epoch of the swarm lasts seconds, small enough
for a laptop core.
"""

import math
from typing import Iterator

import torch
from torch import nn

from hearth.tasks.base import Batch, Task, TaskDefaults

ARMS = 5
NOISE = 0.25
HIDDEN = 512
FOURIER_FEATURES = 128
MODEL_SEED = 20261129
HELD_OUT_SEED = 7_000_001
HELD_OUT_SAMPLES = 4096


def make_spirals(count: int, generator: torch.Generator) -> Batch:
    labels = torch.randint(0, ARMS, (count,), generator=generator)
    radius = torch.rand(count, generator=generator)
    angle = radius * 3 * math.pi + labels * (2 * math.pi / ARMS)
    points = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1) * 2
    points = points + NOISE * radius[:, None] * torch.randn(count, 2, generator=generator)
    return points, labels


class SpiralNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(MODEL_SEED)
        self.register_buffer("frequencies", torch.randn(2, FOURIER_FEATURES, generator=generator) * 3)
        self.mlp = nn.Sequential(
            nn.Linear(2 * FOURIER_FEATURES, HIDDEN), nn.ReLU(),
            nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
            nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
            nn.Linear(HIDDEN, ARMS),
        )  # fmt: skip

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        projected = points @ self.frequencies
        return self.mlp(torch.cat([torch.sin(projected), torch.cos(projected)], dim=1))


class SpiralsTask(Task):
    name = "spirals"
    description = "Classify points of five interleaved spiral arms (generated data, 0.66M-parameter MLP)"
    defaults = TaskDefaults(batch_size=256, target_batch_size=32768, learning_rate=2e-3)

    def build_model(self) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(MODEL_SEED)
            return SpiralNet()

    def data_stream(self, peer_seed: int, batch_size: int) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(peer_seed)
        while True:
            yield make_spirals(batch_size, generator)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        points, labels = batch
        return nn.functional.cross_entropy(model(points), labels)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        points, labels = make_spirals(HELD_OUT_SAMPLES, torch.Generator().manual_seed(HELD_OUT_SEED))
        logits = model(points)
        return {
            "loss": nn.functional.cross_entropy(logits, labels).item(),
            "accuracy": (logits.argmax(dim=1) == labels).float().mean().item(),
        }
