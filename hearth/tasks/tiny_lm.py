"""`tiny-lm`: a byte-level transformer language model (~10M parameters by default) trained on text shards.

Text: the swarm's `text` asset, which the coordinator splits into shards (`text-0000`, …, `text-heldout`); each
node downloads only `shards_per_node` of them, picked from its identity, and evaluation reads the held-out one.
Without an operator file, every peer trains on generated English-like text (hearth/tasks/text.py) from its own
seed and evaluates on generated text from a fixed seed. Task options (`--task-option KEY=VALUE`) size the model
down for tests and benchmarks: layers, d_model, heads, seq_len; and shard_kb, shards_per_node for the text.
"""

import math
import random
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from hearth.tasks.base import Batch, Task, TaskContext, TaskDefaults
from hearth.tasks.text import HELD_OUT_NAME, generate_text, split_text

MODEL_SEED = 20261130
HELD_OUT_SEED = 9_000_001
GENERATED_TRAIN_BYTES = 256 * 1024  # per peer, from its own seed
GENERATED_HELD_OUT_BYTES = 32 * 1024
EVAL_WINDOWS = 32
VOCAB = 256  # bytes


@dataclass(frozen=True)
class LMConfig:
    layers: int = 6
    d_model: int = 384
    heads: int = 6
    seq_len: int = 128

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 4096:
                raise ValueError(f"tiny-lm option {f.name} must be a whole number from 1 to 4096, got {value!r}")
        if self.d_model % self.heads:
            raise ValueError(f"tiny-lm option d_model ({self.d_model}) must be a multiple of heads ({self.heads})")


class Block(nn.Module):
    """Pre-norm transformer block. Attention is spelled out in matmuls so FlopCounterMode counts it on CPU too
    (torch has no FLOP formula for the CPU flash-attention kernel)."""

    def __init__(self, config: LMConfig):
        super().__init__()
        self.heads = config.heads
        self.norm1, self.norm2 = nn.LayerNorm(config.d_model), nn.LayerNorm(config.d_model)
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.mlp = nn.Sequential(nn.Linear(config.d_model, 4 * config.d_model), nn.GELU(),
                                 nn.Linear(4 * config.d_model, config.d_model))  # fmt: skip
        mask = torch.full((config.seq_len, config.seq_len), float("-inf")).triu(1)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, length, 3, self.heads, width // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (batch, heads, length, head width)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + self.mask[:length, :length]
        attended = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, length, width)
        x = x + self.proj(attended)
        return x + self.mlp(self.norm2(x))


class ByteLM(nn.Module):
    def __init__(self, config: LMConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(VOCAB, config.d_model)
        self.position = nn.Parameter(torch.randn(config.seq_len, config.d_model) * 0.02)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.d_model)
        nn.init.normal_(self.embed.weight, std=0.02)
        # In every state_dict (so in every checkpoint): a fine-tuning task rebuilds the same model from the file.
        self.register_buffer("shape", torch.tensor([config.layers, config.d_model, config.heads, config.seq_len]))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.position[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.norm(x) @ self.embed.weight.T  # output layer tied to the embedding


def windows(text: torch.Tensor, length: int, generator: torch.Generator, count: int) -> Batch:
    """`count` random windows of `length`+1 bytes: (inputs, next-byte targets)."""
    starts = torch.randint(0, len(text) - length - 1, (count,), generator=generator)
    chunks = torch.stack([text[start:start + length + 1] for start in starts.tolist()]).long()
    return chunks[:, :-1], chunks[:, 1:]


def as_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def config_of(state: Mapping[str, torch.Tensor]) -> LMConfig:
    """The LMConfig of a ByteLM state_dict (its `shape` buffer); raises ValueError for anything else."""
    shape = state.get("shape") if isinstance(state, Mapping) else None
    if not isinstance(shape, torch.Tensor) or shape.shape != (4,):
        raise ValueError("this is not a tiny-lm model (its state has no 4-number `shape`)")
    layers, d_model, heads, seq_len = (int(value) for value in shape.tolist())
    return LMConfig(layers=layers, d_model=d_model, heads=heads, seq_len=seq_len)


class TinyLMTask(Task):
    name = "tiny-lm"
    description = "Byte-level transformer language model (~10M parameters) on text shards served by the coordinator"
    defaults = TaskDefaults(batch_size=8, target_batch_size=256, learning_rate=1e-3)
    asset_inputs = {"text": "a UTF-8 or ASCII text file; split into shards, each node downloads a few"}
    option_defaults = {"shard_kb": 64, "shards_per_node": 2, "lexicon": "general"}
    option_docs = {
        "layers": "transformer blocks (default 6)", "d_model": "width (default 384)",
        "heads": "attention heads; d_model must be a multiple (default 6)", "seq_len": "context in bytes (default 128)",
        "shard_kb": "size of the text's shards in KiB (default 64)",
        "shards_per_node": "text shards each node downloads (default 2)",
        "lexicon": "generated text without a text asset: general (default) or kitchen",
    }  # fmt: skip
    text_asset = "text"

    def __init__(self) -> None:
        self.config = LMConfig()
        self.options: dict[str, Any] = dict(self.option_defaults)
        self.assets: Mapping[str, Path] = {}

    def configure(self, context: TaskContext) -> None:
        options = dict(context.options)
        model_options = {f.name: options.pop(f.name) for f in fields(LMConfig) if f.name in options}
        unknown = set(options) - set(self.option_defaults)
        if unknown:
            known = sorted([f.name for f in fields(LMConfig)] + list(self.option_defaults))
            raise ValueError(f"{self.name} has no option(s) {', '.join(sorted(unknown))}; it knows {', '.join(known)}")
        self.config = replace(self.config, **model_options)
        self.options = {**self.option_defaults, **options}
        for key in ("shard_kb", "shards_per_node"):
            value = self.options[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{self.name} option {key} must be a positive whole number, got {value!r}")
        if self.options["lexicon"] not in ("general", "kitchen"):
            raise ValueError(f"{self.name} option lexicon must be general or kitchen, got {self.options['lexicon']!r}")
        self.assets = dict(context.assets)

    # --- assets: the coordinator splits the operator's file; a node picks its shards -----------------------------

    def split_asset(self, name: str, path: Path, out_dir: Path) -> list[tuple[str, Path]]:
        if name != self.text_asset:
            return [(name, path)]
        return split_text(path, out_dir, name, self.options["shard_kb"] * 1024)

    def assets_needed(self, names: list[str], seed: int) -> list[str]:
        """This node's shards (a few, chosen by its seed) plus every asset that is not a text shard."""
        prefix = f"{self.text_asset}-"
        shards = sorted(n for n in names if n.startswith(prefix) and n != prefix + HELD_OUT_NAME)
        chosen = random.Random(seed).sample(shards, min(len(shards), self.options["shards_per_node"]))
        return [n for n in names if not n.startswith(prefix) or n in chosen]

    def _shard_paths(self) -> list[Path]:
        prefix = f"{self.text_asset}-"
        return [path for name, path in sorted(self.assets.items())
                if name.startswith(prefix) and name != prefix + HELD_OUT_NAME]  # fmt: skip

    def train_text(self, peer_seed: int) -> torch.Tensor:
        shards = self._shard_paths()
        if shards:
            return as_tensor(b"".join(path.read_bytes() for path in shards))
        return as_tensor(generate_text(GENERATED_TRAIN_BYTES, peer_seed % 2**32, self.options["lexicon"]))

    def held_out_text(self) -> torch.Tensor:
        path = self.assets.get(f"{self.text_asset}-{HELD_OUT_NAME}")
        if path is not None:
            return as_tensor(path.read_bytes())
        return as_tensor(generate_text(GENERATED_HELD_OUT_BYTES, HELD_OUT_SEED, self.options["lexicon"]))

    # --- the Task interface ------------------------------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(MODEL_SEED)
            return ByteLM(self.config)

    def data_stream(self, peer_seed: int, batch_size: int) -> Iterator[Batch]:
        text = self.train_text(peer_seed)
        if len(text) <= self.config.seq_len + 1:
            raise ValueError(f"{self.name}: this node's text ({len(text)} bytes) is shorter than one sequence")
        generator = torch.Generator().manual_seed(peer_seed)
        while True:
            yield windows(text, self.config.seq_len, generator, batch_size)

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        inputs, targets = batch
        logits = model(inputs)
        return nn.functional.cross_entropy(logits.reshape(-1, VOCAB).float(), targets.reshape(-1))

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Mean loss per byte (nats) and bits per byte on the held-out text, over fixed non-overlapping windows."""
        text, length = self.held_out_text(), self.config.seq_len
        count = min(EVAL_WINDOWS, (len(text) - 1) // length)
        if count < 1:
            return {}
        chunks = torch.stack([text[i * length:i * length + length + 1] for i in range(count)]).long()
        loss = self.loss(model, (chunks[:, :-1], chunks[:, 1:])).item()
        return {"loss": loss, "bits_per_byte": loss / math.log(2)}
