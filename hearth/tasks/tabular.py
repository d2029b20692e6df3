"""`tabular`: classify the rows of a table of numeric features, for `data: local` swarms where each node trains
on its owner's own dataset (which never leaves that node).

Dataset format (the file named by `hearth join --local-data PATH`):

- NPZ (`.npz`): an array `features` (rows × features, numbers) and an array `labels` (one whole number per
  row, 0 ≤ label < classes).
- CSV (`.csv`): a header line, then one row per sample; the column named `label` holds the class, every other
  column is a numeric feature (in the header's order, the same on every node).

Task options (`hearth swarm create --task tabular --task-option features=16 …`): `features` (default 16),
`classes` (4), `hidden` (64, the MLP's width). An asset named `held_out` in the same format, when the swarm has
one, is what evaluate() scores. Without local data (the coordinator measuring FLOPs) the stream is random rows
of the right shape.
"""

import csv
import math
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from hearth.tasks.base import Batch, Task, TaskContext, TaskDefaults

MODEL_SEED = 20261130
LABEL_COLUMN = "label"
OPTIONS = {"features": 16, "classes": 4, "hidden": 64}


class DatasetError(ValueError):
    """A local dataset that does not fit the task's format; the message says what is wrong and where."""


def read_table(path: Path, features: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(features float32 [rows, features], labels int64 [rows]) from an NPZ or CSV file, checked."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        if path.suffix.lower() == ".npz":
            x, y = _read_npz(path)
        elif path.suffix.lower() == ".csv":
            x, y = _read_csv(path)
        else:
            raise DatasetError(f"{path}: expected a .npz or .csv file")
    except (OSError, ValueError) as e:
        raise DatasetError(e if isinstance(e, DatasetError) else f"{path}: {e}") from None
    if x.ndim != 2 or len(x) == 0:
        raise DatasetError(f"{path}: expected a non-empty table of rows × features, got shape {tuple(x.shape)}")
    if x.shape[1] != features:
        raise DatasetError(f"{path}: rows have {x.shape[1]} features; this swarm's task expects {features}")
    if y.shape != (len(x),):
        raise DatasetError(f"{path}: {len(y)} labels for {len(x)} rows")
    if not np.isfinite(x).all():
        raise DatasetError(f"{path}: features contain NaN or infinite values")
    if not np.all(np.equal(np.mod(y, 1), 0)) or y.min() < 0 or y.max() >= classes:
        raise DatasetError(f"{path}: labels must be whole numbers from 0 to {classes - 1}")
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        missing = {"features", "labels"} - set(data.files)
        if missing:
            raise DatasetError(f"{path}: missing array(s) {', '.join(sorted(missing))} (has {', '.join(data.files)})")
        features, labels = data["features"], data["labels"]
    if not (np.issubdtype(features.dtype, np.number) and np.issubdtype(labels.dtype, np.number)):
        raise DatasetError(f"{path}: features and labels must be numbers")
    return features.astype(np.float64), labels.astype(np.float64)


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with path.open(newline="") as file:
        rows = csv.reader(file)
        header = [name.strip() for name in next(rows, [])]
        if LABEL_COLUMN not in header:
            raise DatasetError(f"{path}: the header has no {LABEL_COLUMN!r} column")
        label_at = header.index(LABEL_COLUMN)
        table = []
        for line, row in enumerate(rows, start=2):
            if len(row) != len(header):
                raise DatasetError(f"{path}, line {line}: {len(row)} values for {len(header)} columns")
            try:
                table.append([float(value) for value in row])
            except ValueError:
                raise DatasetError(f"{path}, line {line}: a value is not a number") from None
    data = np.array(table, dtype=np.float64).reshape(len(table), len(header))
    return np.delete(data, label_at, axis=1), data[:, label_at]


class TabularNet(nn.Sequential):
    def __init__(self, features: int, classes: int, hidden: int):
        super().__init__(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, classes))  # fmt: skip


class TabularTask(Task):
    name = "tabular"
    description = "Classify rows of numeric features from each node's own table (local data: CSV or NPZ)"
    defaults = TaskDefaults(batch_size=32, target_batch_size=2048, learning_rate=3e-3)
    reads_local_data = True
    option_docs = {
        "features": f"feature columns in every node's table (default {OPTIONS['features']})",
        "classes": f"classes; labels are 0 … classes − 1 (default {OPTIONS['classes']})",
        "hidden": f"width of the MLP's two hidden layers (default {OPTIONS['hidden']})",
    }  # fmt: skip

    def __init__(self) -> None:
        self.options = dict(OPTIONS)
        self.data: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        self.held_out: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    def configure(self, context: TaskContext) -> None:
        for key, value in context.options.items():
            if key not in OPTIONS:
                raise ValueError(f"task tabular has no option {key!r}; its options: {', '.join(OPTIONS)}")
            if isinstance(value, bool) or not isinstance(value, int) or value < (2 if key == "classes" else 1):
                raise ValueError(f"task option {key} must be a whole number (at least 2 classes), got {value!r}")
            self.options[key] = value
        features, classes = self.options["features"], self.options["classes"]
        if context.local_data is not None:
            self.data = read_table(context.local_data, features, classes)
        if "held_out" in context.assets:
            self.held_out = read_table(context.assets["held_out"], features, classes)

    def local_dataset(self) -> Optional[TensorDataset]:
        return None if self.data is None else TensorDataset(*self.data)

    def build_model(self) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(MODEL_SEED)
            return TabularNet(self.options["features"], self.options["classes"], self.options["hidden"])

    def data_stream(self, peer_seed: int, batch_size: int) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(peer_seed)
        if self.data is None:
            while True:
                yield (torch.randn(batch_size, self.options["features"], generator=generator),
                       torch.randint(0, self.options["classes"], (batch_size,), generator=generator))  # fmt: skip
        features, labels = self.data
        while True:  # passes over the local table, each in a new order
            order = torch.randperm(len(labels), generator=generator)
            for start in range(0, len(order) - batch_size + 1 if len(order) >= batch_size else 1, batch_size):
                rows = order[start : start + batch_size]
                yield features[rows], labels[rows]

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        features, labels = batch
        return nn.functional.cross_entropy(model(features), labels)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if self.held_out is None:
            return {}
        return score(model, *self.held_out)


@torch.no_grad()
def score(model: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Held-out mean loss and accuracy of `model` on a table."""
    logits = model(features)
    loss = nn.functional.cross_entropy(logits, labels).item()
    return {"loss": loss if math.isfinite(loss) else float("inf"),
            "accuracy": (logits.argmax(dim=1) == labels).float().mean().item()}  # fmt: skip
