"""`lm-finetune`: transfer learning. Starts from a pretrained tiny-lm the operator supplies (the `checkpoint`
asset), freezes its embedding and lower blocks, and fine-tunes the rest on new text.

The checkpoint may be a file from `scripts/pretrain_lm.py` (or `pretrain()` here), or a tiny-lm swarm's own
checkpoint downloaded from a coordinator: the model's shape travels in its state (ByteLM's `shape` buffer).
The text is the `text` asset (shards, as in tiny-lm) or, without one, generated text from another lexicon
(`kitchen`) than the one the pretraining read (`general`): same syntax, new words. Only trainable parameters
go to the optimizer, so frozen ones are never averaged between peers.
"""

import logging
import math
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from hearth.tasks.base import TaskContext, TaskDefaults
from hearth.tasks.tiny_lm import MODEL_SEED, ByteLM, LMConfig, TinyLMTask, as_tensor, config_of, windows
from hearth.tasks.text import generate_text

logger = logging.getLogger(__name__)

PRETRAINED_FORMAT = "hearth-lm-pretrained-1"
MODEL_OPTIONS = ("layers", "d_model", "heads", "seq_len")


def load_pretrained(path: Path) -> dict[str, torch.Tensor]:
    """The model state_dict in a pretrained file or a coordinator checkpoint; raises ValueError."""
    try:
        with open(path, "rb") as f:
            content = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or foreign file: torch raises many kinds
        raise ValueError(f"cannot read the pretrained checkpoint ({type(e).__name__})") from None
    state = content.get("model", content) if isinstance(content, dict) else None
    if not isinstance(state, dict):
        raise ValueError("the pretrained checkpoint holds no model state")
    return state


class FinetuneLMTask(TinyLMTask):
    name = "lm-finetune"
    description = "Fine-tune a pretrained tiny-lm on new text, its embedding and lower blocks frozen"
    defaults = TaskDefaults(batch_size=8, target_batch_size=256, learning_rate=5e-4)
    asset_inputs = {
        "checkpoint": "the pretrained tiny-lm (scripts/pretrain_lm.py, or a tiny-lm swarm's checkpoint); required",
        "text": "the text to fine-tune on (default: generated kitchen text); split into shards",
    }
    required_assets = ("checkpoint",)
    option_defaults = {**TinyLMTask.option_defaults, "lexicon": "kitchen", "freeze": -1}
    option_docs = {
        "freeze": "how many of the lowest transformer blocks stay frozen (default -1: all but the top one); "
                  "the embedding (tied to the output layer) is frozen whenever this is above 0",
        "shard_kb": "size of the text's shards in KiB (default 64)",
        "shards_per_node": "text shards each node downloads (default 2)",
        "lexicon": "generated text without a text asset: kitchen (default) or general",
    }  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self.pretrained: Optional[dict[str, torch.Tensor]] = None

    def configure(self, context: TaskContext) -> None:
        given = [name for name in MODEL_OPTIONS if name in context.options]
        if given:
            raise ValueError(f"{self.name} takes the model's shape from its checkpoint; drop {', '.join(given)}")
        super().configure(context)
        freeze = self.options["freeze"]
        if not isinstance(freeze, int) or isinstance(freeze, bool) or freeze < -1:
            raise ValueError(f"{self.name} option freeze must be -1 or a number of blocks, got {freeze!r}")
        path = context.assets.get("checkpoint")
        if path is not None:
            self.pretrained = load_pretrained(path)
            self.config = config_of(self.pretrained)
            if freeze > self.config.layers:
                raise ValueError(f"{self.name}: freeze={freeze}, but the model has {self.config.layers} blocks")

    def frozen_blocks(self) -> int:
        freeze = self.options["freeze"]
        return self.config.layers - 1 if freeze == -1 else freeze

    def build_model(self) -> nn.Module:
        """The pretrained model with its lower part frozen (without a checkpoint: a fresh one, to describe it)."""
        model = super().build_model()
        if self.pretrained is not None:
            try:
                model.load_state_dict(self.pretrained)
            except RuntimeError as e:
                raise ValueError(f"the pretrained checkpoint does not fit a tiny-lm of its own shape: {e}") from None
        frozen = self.frozen_blocks()
        if frozen > 0:
            model.embed.requires_grad_(False)
            model.position.requires_grad_(False)
            for block in model.blocks[:frozen]:
                block.requires_grad_(False)
        return model

    def make_optimizer(self, params, learning_rate: float) -> torch.optim.Optimizer:
        """Adam over the trainable parameters only; `params` are tensors, or param groups (as hivemind passes them)."""
        params = list(params)
        if params and isinstance(params[0], dict):
            params = [dict(group, params=[p for p in group["params"] if p.requires_grad]) for group in params]
        else:
            params = [param for param in params if param.requires_grad]
        return torch.optim.Adam(params, lr=learning_rate)


def pretrain(steps: int, config: LMConfig = LMConfig(), batch_size: int = 16, learning_rate: float = 2e-3,
             lexicon: str = "general", seed: int = 0, text_bytes: int = 512 * 1024) -> dict[str, Any]:  # fmt: skip
    """Train a tiny-lm from scratch on generated text in this process: the pretrained checkpoint for demos and
    tests. Returns {format, model (state_dict), steps, lexicon, loss} for torch.save()."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(MODEL_SEED)
        model = ByteLM(config)
    text = as_tensor(generate_text(text_bytes, seed, lexicon))
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    loss = math.nan
    for step in range(steps):
        inputs, targets = windows(text, config.seq_len, generator, batch_size)
        loss_tensor = nn.functional.cross_entropy(model(inputs).reshape(-1, 256), targets.reshape(-1))
        optimizer.zero_grad()
        loss_tensor.backward()
        optimizer.step()
        loss = loss_tensor.item()
        if step % 50 == 0:
            logger.info("Pretraining step %d: loss %.3f", step, loss)
    return {"format": PRETRAINED_FORMAT, "model": model.state_dict(), "steps": steps, "lexicon": lexicon, "loss": loss}
