"""Training tasks: what a swarm trains. Both the node and the coordinator load them by name.

- base.py: the Task interface and FLOPs measurement.
- registry.py: find tasks through the `hearth.tasks` entry point group.
- spirals.py: the built-in `spirals` task (2-D spiral classification, generated data).
- assets.py: which of a swarm's assets (task files) a node needs, the same on the node and the coordinator.
- text.py: generated English-like text (a small grammar, two lexicons) and splitting a text file into shards.
- tiny_lm.py: the built-in `tiny-lm` task (byte-level transformer LM on served text shards or generated text).
- finetune.py: the built-in `lm-finetune` task (transfer learning from a pretrained tiny-lm, lower layers frozen).
- tabular.py: the built-in `tabular` task (classify rows of each node's own CSV/NPZ table: `data: local` swarms).
- housing.py: the built-in `housing` task (linear regression of house prices, known true coefficients).
- digits.py: the built-in `digits` task (handwritten digit images bundled with scikit-learn, augmented).
"""

from hearth.tasks.base import Batch, Task, TaskContext, TaskDefaults, measure_flops_per_sample
from hearth.tasks.registry import available_tasks, load_task

__all__ = ["Batch", "Task", "TaskContext", "TaskDefaults", "available_tasks", "load_task", "measure_flops_per_sample"]
