"""`housing`: predict house prices from size, rooms, age, distance to the centre and garden with a linear model.

The classic first example of learning from data. The houses are generated from known true coefficients plus
noise, so what the swarm learns can be checked against the truth: evaluate() reports the held-out error and
the learned coefficients (in k€ per unit of each feature) next to the true ones. Trains in seconds anywhere.
"""

from typing import Iterator

import torch
from torch import nn

from hearth.tasks.base import Batch, Task, TaskDefaults

FEATURES = ("size_m2", "rooms", "age_years", "distance_km", "garden")
TRUE_INTERCEPT = 60.0  # k€
TRUE_COEFFICIENTS = (2.4, 12.0, -0.9, -4.5, 25.0)  # k€ per m², per room, per year, per km, for a garden
NOISE_K_EUR = 30.0  # what no feature explains: the best possible RMSE
# Feature and price scales of the generator, fixed so that every peer normalises the same way.
FEATURE_MEAN = torch.tensor([120.0, 4.5, 40.0, 6.9, 0.4])
FEATURE_STD = torch.tensor([40.0, 1.8, 23.1, 6.0, 0.49])
PRICE_MEAN, PRICE_SCALE = 345.0, 120.0
MODEL_SEED = 20261130
HELD_OUT_SEED = 7_000_002
HELD_OUT_SAMPLES = 20_000


def make_houses(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw features (count × 5) and prices in k€ (count)."""
    size = (120 + 40 * torch.randn(count, generator=generator)).clamp(30, 400)
    rooms = (size / 30 + 0.5 + 1.2 * torch.randn(count, generator=generator)).round().clamp(1, 12)
    age = 80 * torch.rand(count, generator=generator)
    distance = 20 * torch.rand(count, generator=generator) ** 2 + 0.5 * torch.rand(count, generator=generator)
    garden = (torch.rand(count, generator=generator) < 0.4).float()
    features = torch.stack([size, rooms, age, distance, garden], dim=1)
    prices = TRUE_INTERCEPT + features @ torch.tensor(TRUE_COEFFICIENTS) + NOISE_K_EUR * torch.randn(count, generator=generator)
    return features, prices


def to_model_units(features: torch.Tensor, prices: torch.Tensor) -> Batch:
    return (features - FEATURE_MEAN) / FEATURE_STD, (prices - PRICE_MEAN) / PRICE_SCALE


class HousingModel(nn.Module):
    """price = intercept + Σ coefficient × feature, fitted on standardised features (a well-conditioned problem)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(len(FEATURES), 1)

    def forward(self, standardised: torch.Tensor) -> torch.Tensor:
        return self.linear(standardised).squeeze(1)

    @torch.no_grad()
    def coefficients(self) -> tuple[float, list[float]]:
        """The fitted intercept and coefficients back in k€ and the features' own units."""
        weights = self.linear.weight[0].float().cpu() * PRICE_SCALE / FEATURE_STD
        intercept = self.linear.bias[0].float().cpu() * PRICE_SCALE + PRICE_MEAN - (weights * FEATURE_MEAN).sum()
        return intercept.item(), weights.tolist()


class HousingTask(Task):
    name = "housing"
    description = "Linear regression of house prices on 5 features, generated from known true coefficients"
    defaults = TaskDefaults(batch_size=512, target_batch_size=16384, learning_rate=0.5, warmup_epochs=3)

    def build_model(self) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(MODEL_SEED)
            return HousingModel()

    def make_optimizer(self, params, learning_rate: float) -> torch.optim.Optimizer:
        # Adam (whose moments the swarm averages) with a large ε: near the optimum, where gradients are small, it
        # moves like momentum SGD instead of by the noisy gradients' signs, so every run ends at the same loss.
        return torch.optim.Adam(params, lr=learning_rate, betas=(0.5, 0.99), eps=1.0)

    def data_stream(self, peer_seed: int, batch_size: int) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(peer_seed)
        while True:
            yield to_model_units(*make_houses(batch_size, generator))

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        features, prices = batch
        return nn.functional.mse_loss(model(features), prices)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Held-out loss (MSE in model units), R², RMSE in k€, and each coefficient learned (`coef.NAME`) next to
        its true value (`true.NAME`)."""
        features, prices = to_model_units(*make_houses(HELD_OUT_SAMPLES, torch.Generator().manual_seed(HELD_OUT_SEED)))
        parameter = next(model.parameters())
        predicted = model(features.to(parameter.device, parameter.dtype)).float().cpu()
        mse = nn.functional.mse_loss(predicted, prices).item()
        metrics = {"loss": mse, "r2": 1 - mse / prices.var().item(), "rmse_k_eur": (mse**0.5) * PRICE_SCALE}
        intercept, weights = model.coefficients()
        metrics.update({"coef.intercept": intercept, "true.intercept": TRUE_INTERCEPT})
        for feature, learned, true in zip(FEATURES, weights, TRUE_COEFFICIENTS):
            metrics.update({f"coef.{feature}": learned, f"true.{feature}": true})
        return metrics
