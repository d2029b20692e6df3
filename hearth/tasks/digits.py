"""`digits`: recognise handwritten digits (8×8 grey images from scikit-learn's bundled dataset, no download).

The dataset is small (1,797 images), so every training batch is made of randomly transformed copies: rotated,
scaled, shifted and noised, a different variant every time, which keeps any number of peers busy on fresh
samples. A fixed 20 % of the images, never trained on, measure held-out loss and accuracy.
"""

import functools
import math
from typing import Iterator

import torch
from torch import nn

from hearth.tasks.base import Batch, Task, TaskDefaults

CLASSES = 10
HELD_OUT_FRACTION = 0.2
SPLIT_SEED = 1797
MODEL_SEED = 20261131
MAX_ROTATION = math.radians(12)
MAX_SHIFT = 0.15  # of the image's half-width: about ±0.6 pixel
SCALE_RANGE = (0.9, 1.1)
PIXEL_NOISE = 0.05


@functools.lru_cache(maxsize=1)
def dataset() -> tuple[Batch, Batch]:
    """(training images, labels), (held-out images, labels); images N×1×8×8 scaled to [0, 1]."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: nothing is downloaded

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
    held_out = round(len(labels) * HELD_OUT_FRACTION)
    test, train = order[:held_out], order[held_out:]
    return (images[train], labels[train]), (images[test], labels[test])


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random small rotation, scaling and shift of each image, plus pixel noise."""
    count = len(images)
    angle = (torch.rand(count, generator=generator) * 2 - 1) * MAX_ROTATION
    scale = SCALE_RANGE[0] + torch.rand(count, generator=generator) * (SCALE_RANGE[1] - SCALE_RANGE[0])
    shift = (torch.rand(count, 2, generator=generator) * 2 - 1) * MAX_SHIFT
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    moved = nn.functional.grid_sample(images, grid, padding_mode="zeros", align_corners=False)
    return (moved + PIXEL_NOISE * torch.randn(moved.shape, generator=generator)).clamp(0, 1)


class DigitsNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, CLASSES),
        )  # fmt: skip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)


class DigitsTask(Task):
    name = "digits"
    description = "Recognise handwritten digits (scikit-learn's 8×8 images, augmented; 0.15M-parameter CNN)"
    defaults = TaskDefaults(batch_size=128, target_batch_size=4096, learning_rate=3e-3, warmup_epochs=2)

    def build_model(self) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(MODEL_SEED)
            return DigitsNet()

    def data_stream(self, peer_seed: int, batch_size: int) -> Iterator[Batch]:
        (images, labels), _ = dataset()
        generator = torch.Generator().manual_seed(peer_seed)
        while True:
            chosen = torch.randint(0, len(labels), (batch_size,), generator=generator)
            yield augment(images[chosen], generator), labels[chosen]

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        images, labels = batch
        return nn.functional.cross_entropy(model(images), labels)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        _, (images, labels) = dataset()
        parameter = next(model.parameters())
        logits = model(images.to(parameter.device, parameter.dtype)).float().cpu()
        return {
            "loss": nn.functional.cross_entropy(logits, labels).item(),
            "accuracy": (logits.argmax(dim=1) == labels).float().mean().item(),
        }
